"""ShardedByS3Key in the local runner: each host gets its own ~1/n of the channel's objects, by count."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.local.jobs import shard_by_s3_key
from tests.test_local_runner import make_definition, run

# A training host that lists the objects of its two channels into its model file.
LIST_CODE = """
import json, os, pathlib
root = pathlib.Path(os.environ['ALLPAIRS_OPT_ML'])
host = json.loads((root / 'input/config/resourceconfig.json').read_text())['current_host']
def keys(channel):
    base = root / 'input/data' / channel
    return sorted(p.relative_to(base).as_posix() for p in base.rglob('*') if p.is_file())
config = json.loads((root / 'input/config/inputdataconfig.json').read_text())
(root / 'model' / f'{host}.json').write_text(json.dumps({'queries': keys('queries'), 'train': keys('train'),
                                                          'config': config}))
"""


def test_objects_are_split_by_count_in_key_order():
    keys = [f"q-{i:02d}" for i in range(20)]
    shares = shard_by_s3_key(keys, 6)
    assert [len(s) for s in shares] == [3, 3, 4, 3, 3, 4]  # some 3, some 4: objects, not bytes or rows
    assert [k for s in shares for k in s] == keys  # every object once, in key order
    assert [len(s) for s in shard_by_s3_key(keys[:2], 5)] == [0, 0, 1, 0, 1]  # hosts beyond the objects: none
    assert shard_by_s3_key(keys[:6], 6) == [[k] for k in keys[:6]]


@pytest.mark.parametrize("files, hosts", [(20, 6), (3, 5), (4, 4)])
def test_each_host_gets_its_own_share_linked_into_its_channel(tmp_path, files, hosts):
    queries = tmp_path / "queries"
    (queries / "sub").mkdir(parents=True)
    names = [f"sub/part-{i:03d}" if i % 2 else f"part-{i:03d}" for i in range(files)]
    for name in names:
        (queries / name).write_text(name)
    data = tmp_path / "in" / "matrix.txt"
    data.parent.mkdir()
    data.write_text("abc")
    definition = make_definition(str(data), str(tmp_path / "out"), count=hosts)
    train = definition["Steps"][0]["Arguments"]
    train["AlgorithmSpecification"]["ContainerEntrypoint"] = ["python3", "-c", LIST_CODE]
    train["InputDataConfig"].append({"ChannelName": "queries", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3DataDistributionType": "ShardedByS3Key", "S3Uri": str(queries)}}})
    execution = run(definition, tmp_path)
    assert execution.status == "Succeeded"
    model = Path(execution.steps["Train"].properties["ModelArtifacts.S3ModelArtifacts"])
    got = [json.loads((model / f"algo-{h}.json").read_text()) for h in range(1, hosts + 1)]
    expected = shard_by_s3_key(sorted(names, key=str.encode), hosts)
    assert [g["queries"] for g in got] == expected
    assert all(g["train"] == ["result.txt"] for g in got)  # FullyReplicated: the whole channel on every host
    assert got[0]["config"]["queries"]["S3DistributionType"] == "ShardedByS3Key"
    assert got[0]["config"]["train"]["S3DistributionType"] == "FullyReplicated"
    for h in range(1, hosts + 1):  # linked, not copied
        channel = execution.directory / "Train" / f"algo-{h}" / "input" / "data" / "queries"
        assert all(p.is_symlink() for p in channel.resolve().rglob("*") if p.is_file())
