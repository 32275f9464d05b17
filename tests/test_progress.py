"""Progress lines: one shape for every step, written at a cadence, parsed by the runner, and turned into Studio
charts by the training step's MetricDefinitions, tested here on the lines real hosts printed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.compile import compile_definition
from pipeline.spec import load_spec
from steps.contract import METRIC_DEFINITIONS, PROGRESS_LINE, progress_line
from steps.progress import Progress, tracked

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Every step's job.log of one local run: 3 hosts, small score blocks, a progress line per tile."""
    tmp = tmp_path_factory.mktemp("progress")
    rng = np.random.default_rng(3)
    np.save(tmp / "X.npy", rng.standard_normal((4000, 16)).astype(np.float32))
    spec = tmp / "pipeline.yaml"
    spec.write_text((REPO / "pipeline.yaml").read_text().replace("memory_budget_mb: 1024", "memory_budget_mb: 16"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLPAIRS_PROGRESS_SECONDS", "0")
        assert main(["run", "--spec", str(spec), "--workdir", str(tmp / "w"), "--param", f"InputData={tmp / 'X.npy'}",
                     "--param", f"OutputPrefix={tmp / 'out'}", "--param", "InstanceCount=3"]) == 0
    (execution,) = (tmp / "w" / "executions").iterdir()
    record = json.loads((execution / "execution.json").read_text())
    return {step["name"]: {host: Path(info["log"]).read_text().splitlines() for host, info in step["hosts"].items()}
            for step in record["steps"]}, record


def test_every_step_prints_progress_lines_of_the_one_shape(logs):
    lines, _ = logs
    for step in ("Preprocess", "Similarity", "Merge"):
        for host, log in lines[step].items():
            progress = [PROGRESS_LINE.search(line) for line in log if " progress " in line]
            assert progress and all(progress), (step, host, log)
            last = progress[-1]
            assert last["percent"] == "100.0" and last["done"] == last["total"], (step, host)
            assert (last["gflops"] is not None) == (step == "Similarity")  # GFLOP/s only for the kernel's work
    assert len([l for l in lines["Similarity"]["algo-2"] if " progress " in l]) > 1  # one per tile, cadence 0


def test_the_compiled_metric_definitions_match_the_lines_the_hosts_printed(logs):
    lines, _ = logs
    definition = json.loads(compile_definition(load_spec(REPO / "pipeline.yaml")))
    (similarity,) = [s for s in definition["Steps"] if s["Name"] == "Similarity"]
    metrics = similarity["Arguments"]["AlgorithmSpecification"]["MetricDefinitions"]
    assert 0 < len(metrics) <= 40 and [m["Name"] for m in metrics] == [name for name, _ in METRIC_DEFINITIONS]
    group = {"progress_percent": "percent", "rows_done": "done", "rows_per_second": "rate", "gflops": "gflops",
             "eta_seconds": "eta"}
    seen = 0
    for log in lines["Similarity"].values():
        for line in log:
            parsed = PROGRESS_LINE.search(line)
            for metric in metrics:
                found = re.search(metric["Regex"], line)  # SageMaker: the first group of the first match
                if parsed is None:
                    assert found is None, (metric["Name"], line)  # other lines chart nothing
                    continue
                assert found is not None, (metric["Name"], line)
                assert found.group(1) == parsed[group[metric["Name"]]]
                float(found.group(1))  # a number SageMaker can chart
                seen += 1
    assert seen >= 5 * 6


def test_an_unknown_eta_is_no_datapoint_and_an_estimated_total_never_claims_100_percent():
    line = progress_line(0, 100, 0.0, None, 0.0)
    assert line == "progress 0.0% rows 0/100 rows/s 0 GFLOP/s 0.0 eta ? s"
    assert PROGRESS_LINE.search(line)["eta"] == "?"
    eta = dict(METRIC_DEFINITIONS)["eta_seconds"]
    assert re.search(eta, line) is None
    assert progress_line(120, 100, 5.0, 0.0, estimated=True) == "progress 99.9% rows 120/~100 rows/s 5 eta 0 s"


def test_progress_cadence_estimates_and_finish():
    said, now = [], [0.0]
    progress = Progress(1000, None, said.append, every=5.0, clock=lambda: now[0], estimated=True)
    for t, rows in ((1.0, 100), (2.0, 100), (6.5, 300), (8.0, 700)):
        now[0] = t
        progress.computed_rows(rows)
    assert said == ["progress 10.0% rows 100/~1000 rows/s 100 eta 9 s",  # the first unit
                    "progress 50.0% rows 500/~1000 rows/s 77 eta 6 s",  # 5 s after it
                    ]  # the estimate passed: no 100% yet
    progress.finish()
    assert said[-1] == "progress 100.0% rows 1200/1200 rows/s 150 eta 0 s"
    clock = iter([0.0, 1.0, 2.0]).__next__  # began, then one batch a second
    batches = list(tracked(iter([[1, 2], [3]]), Progress(3, 1e9, said.append, every=0.0, clock=clock), len))
    assert batches == [[1, 2], [3]]  # handed on unchanged, counted as they pass
    assert said[-2:] == ["progress 66.7% rows 2/3 rows/s 2 GFLOP/s 2.0 eta 0 s",
                         "progress 100.0% rows 3/3 rows/s 2 GFLOP/s 1.5 eta 0 s"]
