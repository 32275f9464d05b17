"""containers/: what can be tested without a Docker engine (there is none here, so `docker build` cannot run;
../shared/tools/container-check builds the image with buildah and runs the pipeline through it).

- the image's pinned requirements and Python are the ones the tests run with; its code is read-only;
- every step runs as the image's user on a SageMaker-shaped /opt/ml tree (root-owned 0755 mount points);
- `train` on PATH runs the Similarity step against a local /opt/ml root (ALLPAIRS_OPT_ML);
- Merge accepts the training output as a model.tar.gz (CompressionType GZIP) as well as uncompressed;
- `python -m pipeline image build|push` with a stand-in `docker` (recording its commands) and ECR in moto.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
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


def test_dockerfile_base_is_this_python_and_the_code_is_read_only():
    text = (CONTAINERS / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+)\.(\d+)\.\d+-slim", text, re.M)
    assert base, "the Dockerfile must pin python:<major>.<minor>.<patch>-slim"
    if tuple(map(int, base.groups())) != sys.version_info[:2]:
        pytest.skip(f"the image runs Python {'.'.join(base.groups())}, these tests run {sys.version.split()[0]}: "
                    "run them with the image's Python to check it")
    assert "COPY containers/train /usr/local/bin/train" in text and "COPY steps/ /opt/program/steps/" in text
    assert "ENV" in text and "PYTHONPATH=/opt/program" in text and "PYTHONDONTWRITEBYTECODE=1" in text
    assert "chmod -R a-w,a+rX /opt/program" in text and "compileall" in text
    assert os.access(CONTAINERS / "train", os.X_OK)


def image_user() -> tuple[str, int]:
    """The user the image runs its jobs as: the Dockerfile's last USER (root when there is none)."""
    text = (CONTAINERS / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    name = users[-1] if users else "root"
    if name in ("root", "0"):
        return name, 0
    uid = re.search(rf"useradd[^\n]*--uid (\d+)[^\n]* {re.escape(name)}\b", text) or re.fullmatch(r"(\d+)", name)
    assert uid, f"cannot tell the uid of the image's USER {name}: give useradd --uid"
    return name, int(uid.group(1))


# A container as SageMaker starts it: /opt/ml's mount points belong to root, mode 0755, the data files 0644.
# The step runs as `uid`, the image's user. Python itself lives under /root here, which another user cannot
# reach: the step is imported first, then the process drops to `uid`, as an image's USER would run it.
AS_USER = """
import os, sys, importlib
step = importlib.import_module(sys.argv[1])
uid = int(sys.argv[2])
if uid:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
sys.exit(step.run(sys.argv[3:]))
"""


def sagemaker_tree(base: Path, dirs: list[str], files: dict[str, bytes]) -> Path:
    """Directories root-owned 0755 (what the service mounts), files root-owned 0644."""
    for d in ["", *dirs]:
        (base / d).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    for path in [base, *base.rglob("*")]:
        os.chown(path, 0, 0)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return base


def run_as(uid: int, module: str, root: Path, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALLPAIRS_OPT_ML": str(root), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", AS_USER, module, str(uid), *argv], cwd="/", env=env,
                          capture_output=True, text=True, timeout=300)


def tree_files(folder: Path, under: str) -> dict[str, bytes]:
    return {f"{under}/{p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.skipif(os.geteuid() != 0, reason="building root-owned mount points needs root (as the CI machines are)")
def test_every_step_runs_as_the_image_user_on_root_owned_mounts(tmp_path):
    name, uid = image_user()
    base = Path(tempfile.mkdtemp(prefix="sagemaker-"))  # outside pytest's 0700 tmp, so any uid can reach it
    base.chmod(0o755)
    try:
        X = np.random.default_rng(5).standard_normal((60, 7)).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, X)
        pre = sagemaker_tree(base / "pre", ["processing/output/normalized"],
                             {"processing/input/matrix/x.npy": buffer.getvalue()})
        done = run_as(uid, "steps.preprocess", pre, ["--input-uri", "s3://b/x.npy", "--chunk-rows", "25"])
        assert done.returncode == 0, f"Preprocess as {name} (uid {uid}): {done.stderr}"
        normalized = pre / "processing/output/normalized"

        hosts = ["algo-1", "algo-2"]
        for host in hosts:
            config = {"input/config/resourceconfig.json": json.dumps({"current_host": host, "hosts": hosts}),
                      "input/config/hyperparameters.json": json.dumps(
                          {"top_k": "4", "min_score": "-1.0", "memory_budget_mb": "16", "threads": "1"})}
            root = sagemaker_tree(base / host, ["model", "checkpoints", "output/data"],
                                  {**{k: v.encode() for k, v in config.items()},
                                   **tree_files(normalized, "input/data/normalized")})
            done = run_as(uid, "steps.similarity", root, [], {"TRAINING_JOB_NAME": "allpairs-similarity-x1"})
            assert done.returncode == 0, f"Similarity {host} as {name} (uid {uid}): {done.stderr}"
        shards = {k: v for host in hosts for k, v in tree_files(base / host / "model", "processing/input/shards").items()}
        merge = sagemaker_tree(base / "merge", ["processing/output/artifact"],
                               {**shards, **tree_files(normalized, "processing/input/normalized")})
        uri = "s3://b/runs/x1/artifact"
        done = run_as(uid, "steps.merge", merge, ["--execution-id", "x1", "--artifact-uri", uri])
        assert done.returncode == 0, f"Merge as {name} (uid {uid}): {done.stderr}"
        artifact = merge / "processing/output/artifact"
        register = sagemaker_tree(base / "register", ["processing/output/registration"],
                                  tree_files(artifact, "processing/input/artifact"))
        done = run_as(uid, "steps.register", register, ["--execution-id", "x1", "--artifact-uri", uri,
                                                        "--model-package-group", "g"],
                      {"ALLPAIRS_LOCAL_REGISTRY": str(base / "registry.sqlite")})
        assert done.returncode == 0, f"Register as {name} (uid {uid}): {done.stderr}"
        assert (register / "processing/output/registration/registration.json").is_file()
        neighbors, scores = brute_force(normalize(X), 4)
        assert np.array_equal(np.load(artifact / "neighbors.npy"), neighbors)
        assert np.array_equal(np.load(artifact / "scores.npy"), scores, equal_nan=True)

        # The control: the same tree refuses an unprivileged user, so the run above proves the point.
        denied = sagemaker_tree(base / "denied", ["processing/output/normalized"],
                                {"processing/input/matrix/x.npy": buffer.getvalue()})
        done = run_as(1000, "steps.preprocess", denied, ["--input-uri", "s3://b/x.npy"])
        assert done.returncode != 0, done.stderr
        assert f"{denied}/processing/output/normalized/.partial: Permission denied;" in done.stderr, done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


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
    code, root, out = run_merge(monkeypatch, tmp_path, normalized, gz, "gzip", top_k=3)
    assert code == 0, (root / "output/message").read_text()
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
    from pipeline import api, image

    env, log = fake_docker(tmp_path, info_exit=0)
    monkeypatch.setenv("PATH", env["PATH"])
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    for var in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        ecr = boto3.client("ecr", region_name="us-east-1")
        real_push = image.run

        def run(command, stdin=None):  # the stand-in docker cannot upload: put the manifest into moto instead
            real_push(command, stdin)
            if command[:2] == ["docker", "push"]:
                manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                            "config": {}, "layers": []}
                ecr.put_image(repositoryName="allpairs", imageTag="t3", imageManifest=json.dumps(manifest))

        monkeypatch.setattr(image, "run", run)
        line = api.image_push(REPO / "pipeline.yaml", "allpairs", "t3", lambda s: None)
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
