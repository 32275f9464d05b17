"""The one image for the steps (containers/Dockerfile): Docker's part of building it and pushing it.

Docker runs here, as a subprocess; the ECR calls (repository, login token, digest) are pipeline.aws's, and
pipeline/api.py puts the two together. The spec should name the image by the digest a push prints: a tag can
be moved, a digest cannot.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import AllpairsError

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "containers" / "Dockerfile"
LOCAL_NAME = "allpairs"


class ImageError(AllpairsError):
    """Docker is missing or failed (message names the command to run where Docker is available)."""


def default_tag() -> str:
    """<version>-<commit>: ECR tags are immutable, so each commit gets its own."""
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version('allpairs')}-{commit}" if commit else version("allpairs")


def build_command(tag: str) -> list[str]:
    # SageMaker instances are x86_64: build for that whatever the laptop is.
    return ["docker", "build", "--platform", "linux/amd64", "-f", str(DOCKERFILE.relative_to(REPO)),
            "-t", f"{LOCAL_NAME}:{tag}", "."]


def require_docker(tag: str) -> None:
    manual = " ".join(build_command(tag))
    if shutil.which("docker") is None:
        raise ImageError(f"docker is not installed here; on a machine with Docker, at the repository root, run: {manual}")
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise ImageError(f"no Docker engine is running here (`docker info` failed); start one, or on a machine "
                         f"with Docker, at the repository root, run: {manual}")


def run(command: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(list(command), cwd=REPO, input=stdin, text=True, capture_output=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        shown = " ".join(c for c in command if c != stdin)
        raise ImageError(f"`{shown}` failed (exit {done.returncode}): {last}")


def build(tag: str) -> None:
    require_docker(tag)
    run(build_command(tag))


def push(uri: str, tag: str, login: tuple[str, str, str], say: Callable[[str], None]) -> None:
    """Log in to the registry (login: registry, user, password), tag the built image as uri:tag and push it."""
    registry, user, password = login
    run(["docker", "login", "--username", user, "--password-stdin", registry], stdin=password)
    run(["docker", "tag", f"{LOCAL_NAME}:{tag}", f"{uri}:{tag}"])
    say(f"pushing {uri}:{tag}")
    run(["docker", "push", f"{uri}:{tag}"])
