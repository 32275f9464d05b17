"""containers/: what can be tested without a Docker engine (there is none here, so `docker build` cannot run).

- the image's pinned requirements and Python are the ones the tests run with;
- `train` on PATH runs the Similarity step against a local /opt/ml root (ALLPAIRS_OPT_ML);
- Merge accepts the training output as a model.tar.gz (CompressionType GZIP) as well as uncompressed;
- `python -m pipeline image build|push` with a stand-in `docker` (recording its commands) and ECR in moto.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from tests.brute import brute_force, normalize
from tests.test_steps import run_merge, run_preprocess

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"


def test_pinned_requirements_are_the_versions_the_tests_run_with():
    pins = {}
    for line in (CONTAINERS / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"{line}: pin an exact version (name==x.y.z)"
            pins[name.strip().lower()] = pinned.strip()
    assert {"numpy", "scipy", "pandas", "pyarrow", "boto3"} <= set(pins)
    assert {name: version(name) for name in pins} == pins


def test_dockerfile_base_is_this_python_and_the_image_runs_as_non_root():
    text = (CONTAINERS / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+)\.(\d+)\.\d+-slim", text, re.M)
    assert base, "the Dockerfile must pin python:<major>.<minor>.<patch>-slim"
    if tuple(map(int, base.groups())) != sys.version_info[:2]:
        pytest.skip(f"the image runs Python {'.'.join(base.groups())}, these tests run {sys.version.split()[0]}: "
                    "run them with the image's Python to check it")
    assert re.search(r"^USER allpairs$", text, re.M)
    assert "COPY containers/train /usr/local/bin/train" in text and "COPY steps/ /opt/program/steps/" in text
    assert "ENV" in text and "PYTHONPATH=/opt/program" in text
    assert os.access(CONTAINERS / "train", os.X_OK)


def train_host(tmp_path: Path, normalized: Path, host: str, hosts: list[str], model: Path, k: int) -> subprocess.CompletedProcess:
    """One host's /opt/ml as SageMaker lays it out, then `train` from PATH, as `docker run <image> train` would."""
    root = tmp_path / "opt-ml" / host
    (root / "input/config").mkdir(parents=True)
    (root / "input/data").mkdir(parents=True)
    (root / "input/data/normalized").symlink_to(normalized)
    model.mkdir(exist_ok=True)
    (root / "model").symlink_to(model)
    (root / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": hosts}))
    (root / "input/config/hyperparameters.json").write_text(json.dumps(
        {"top_k": str(k), "min_score": "-1.0", "memory_budget_mb": "16", "threads": "1"}))
    env = {**os.environ, "ALLPAIRS_OPT_ML": str(root), "PYTHONPATH": str(REPO),
           "PATH": os.pathsep.join([str(CONTAINERS), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    return subprocess.run(["train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def trained(monkeypatch, tmp_path):
    X = np.random.default_rng(11).standard_normal((50, 8)).astype(np.float32)
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    model = tmp_path / "model"
    hosts = ["algo-1", "algo-2"]
    for host in hosts:
        done = train_host(tmp_path, normalized, host, hosts, model, k=3)
        assert done.returncode == 0, done.stderr
    return X, normalized, model


def test_train_on_path_runs_the_similarity_step(trained):
    _, _, model = trained
    assert sorted(p.name for p in model.iterdir() if not p.name.startswith(".")) == [
        "shard-algo-1.json", "shard-algo-1.neighbors.npy", "shard-algo-1.scores.npy",
        "shard-algo-2.json", "shard-algo-2.neighbors.npy", "shard-algo-2.scores.npy",
    ]


def test_merge_accepts_the_shards_as_a_model_tar_gz(trained, monkeypatch, tmp_path):
    X, normalized, model = trained
    gz = tmp_path / "gz"
    gz.mkdir()
    with tarfile.open(gz / "model.tar.gz", "w:gz") as tar:  # what CompressionType GZIP uploads
        for path in sorted(model.glob("shard-*")):
            tar.add(path, arcname=path.name)
    code, root = run_merge(monkeypatch, tmp_path, normalized, gz, "gzip")
    assert code == 0, (root / "output/failure").read_text()
    out = root / "processing/output/artifact"
    neighbors, scores = brute_force(normalize(X), 3)
    assert np.array_equal(np.load(out / "neighbors.npy"), neighbors)
    assert np.array_equal(np.load(out / "scores.npy"), scores, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------
# image build | push, with a stand-in docker

FAKE_DOCKER = """#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = info ]; then exit {info}; fi
exit 0
"""


def fake_docker(tmp_path: Path, info_exit: int) -> tuple[dict, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.log"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(log=log, info=info_exit))
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])}, log


def cli(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args, "--spec", str(REPO / "pipeline.yaml")],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_image_build_without_a_docker_engine_says_what_to_run(tmp_path):
    env, log = fake_docker(tmp_path, info_exit=1)
    done = cli(["image", "build", "--tag", "t1"], env, tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "error: no Docker engine is running here (`docker info` failed); start one, or on a machine with Docker, at "
        "the repository root, run: docker build --platform linux/amd64 -f containers/Dockerfile -t allpairs:t1 .\n")
    (tmp_path / "bin" / "docker").unlink()
    done = cli(["image", "build", "--tag", "t1"], env, tmp_path)
    assert done.stderr == ("error: docker is not installed here; on a machine with Docker, at the repository root, "
                           "run: docker build --platform linux/amd64 -f containers/Dockerfile -t allpairs:t1 .\n")


def test_image_build_runs_docker_build_from_the_repository_root(tmp_path):
    env, log = fake_docker(tmp_path, info_exit=0)
    done = cli(["image", "build", "--tag", "t2"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "built allpairs:t2; push it with: python -m pipeline image push --tag t2 --repository allpairs\n"
    assert log.read_text().splitlines() == [
        "info", "build --platform linux/amd64 -f containers/Dockerfile -t allpairs:t2 ."]


def test_image_push_creates_the_repository_and_prints_the_digest(tmp_path, monkeypatch):
    from pipeline import aws, image
    from pipeline.spec import load_spec

    env, log = fake_docker(tmp_path, info_exit=0)
    monkeypatch.setenv("PATH", env["PATH"])
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    for var in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        target = aws.connect(load_spec(REPO / "pipeline.yaml"))
        ecr = boto3.client("ecr", region_name="us-east-1")
        real_push = image.run

        def run(command, stdin=None):  # the stand-in docker cannot upload: put the manifest into moto instead
            real_push(command, stdin)
            if command[:2] == ["docker", "push"]:
                manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                            "config": {}, "layers": []}
                ecr.put_image(repositoryName="allpairs", imageTag="t3", imageManifest=json.dumps(manifest))

        monkeypatch.setattr(image, "run", run)
        line = image.push(target, "allpairs", "t3", lambda s: None)
        uri = ecr.describe_repositories(repositoryNames=["allpairs"])["repositories"][0]["repositoryUri"]
        digest = ecr.describe_images(repositoryName="allpairs")["imageDetails"][0]["imageDigest"]
    assert line == f"image: {uri}@{digest}    # put this line in pipeline.yaml"
    registry = uri.split("/")[0]
    assert log.read_text().splitlines() == [
        "info", f"login --username AWS --password-stdin {registry}", f"tag allpairs:t3 {uri}:t3", f"push {uri}:t3"]


def test_a_regular_install_ships_every_module(tmp_path):
    """What `pip install .` copies (build_py on a clean tree, unlike the tests' editable install) holds every
    module we have. A clean copy: a left-over *.egg-info would make setuptools ship files the config forgets."""
    import shutil

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("pipeline", "steps"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = tmp_path / "built"
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                    "--build-lib", str(built)], cwd=source, check=True, capture_output=True, timeout=300)
    shipped = {str(p.relative_to(built)) for p in built.rglob("*.py")}
    ours = {str(p.relative_to(source)) for package in ("pipeline", "steps") for p in (source / package).rglob("*.py")}
    assert ours <= shipped, sorted(ours - shipped)
