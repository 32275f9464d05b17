"""Where an artifact is: a path, file://, s3://, or a registry entry naming one of those."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow.fs as pafs

from steps.contract import LOCAL_REGISTRY_ENV, MANIFEST
from steps.formats.artifact import Artifact, ArtifactError, NotFound
from steps.formats.registry import LOCAL_ARN_PREFIX, find_local

DEFAULT_REGISTRY = Path(".allpairs") / "registry.sqlite"  # pipeline.yaml's local.workdir, by default
SAGEMAKER_MODEL_PACKAGE = re.compile(r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]+:\d{12}:model-package/[^/]+/\d+")


def open(location: str | os.PathLike, *, registry: str | os.PathLike | None = None,  # noqa: A001
         session=None) -> Artifact:
    """Open an artifact for reading.

    `location`: the artifact folder (a path, `file://...` or `s3://bucket/prefix/<execution id>/artifact`; the
    execution's output prefix works too), a local registry entry (`local:model-package/<group>/<version>`, looked
    up in `registry`, else ALLPAIRS_LOCAL_REGISTRY, else ./.allpairs/registry.sqlite), or a SageMaker model
    package ARN. `session`: the boto3.Session for S3 and SageMaker (default: boto3's usual chain).
    Raises NotFound when nothing is there, ArtifactError when it cannot be read."""
    text = os.fspath(location)
    uri = resolve_entry(text, registry, session)
    if uri.startswith("s3://"):
        return _open_in(*_s3(uri, session), uri)
    path = Path(uri.removeprefix("file://")).expanduser().absolute()
    return _open_in(pafs.LocalFileSystem(), str(path), str(path))


def resolve_entry(location: str, registry: str | os.PathLike | None = None, session=None) -> str:
    """The artifact URI a registry entry names; any other location as it is."""
    if location.startswith(LOCAL_ARN_PREFIX):
        path = Path(registry or os.environ.get(LOCAL_REGISTRY_ENV) or DEFAULT_REGISTRY).absolute()
        entry = find_local(path, location)
        if entry is None:
            raise NotFound(f"{location}: no such entry in the local registry {path}; list them with `python -m "
                           "pipeline registry list` (or pass the registry.sqlite of the run directory)")
        return _artifact_uri(entry, location)
    if SAGEMAKER_MODEL_PACKAGE.fullmatch(location):
        from pipeline import aws
        from pipeline.errors import AllpairsError

        try:
            return _artifact_uri(aws.model_package_by_arn(location, session), location)
        except AllpairsError as exc:
            raise ArtifactError(str(exc)) from None
    return location


def _artifact_uri(entry: dict, location: str) -> str:
    uri = (entry.get("metadata") or {}).get("artifact_uri")
    if not uri or uri == "none":
        raise ArtifactError(f"{location}: its metadata names no artifact_uri: not registered by allpairs")
    return uri


def _s3(uri: str, session) -> tuple[pafs.FileSystem, str]:
    import boto3

    from .s3 import Boto3S3

    client = (session or boto3.Session()).client("s3")
    return pafs.PyFileSystem(Boto3S3(client)), uri.removeprefix("s3://").rstrip("/")


def _open_in(filesystem: pafs.FileSystem, root: str, location: str) -> Artifact:
    """The artifact at `root`, or in its `artifact/` folder (an execution's output prefix was given)."""
    root = root.rstrip("/")
    try:
        inside = filesystem.get_file_info([f"{root}/{MANIFEST}", f"{root}/artifact/{MANIFEST}"])
    except OSError as exc:
        raise ArtifactError(f"{location}: cannot look there ({exc})") from None
    if inside[0].type != pafs.FileType.File and inside[1].type == pafs.FileType.File:
        root, location = f"{root}/artifact", f"{location.rstrip('/')}/artifact"
    elif inside[0].type != pafs.FileType.File:
        raise NotFound(f"{location}: no artifact there (no {MANIFEST}); pass an artifact folder, as a run prints "
                       "it (`artifact: ...`), or a registry entry")
    return Artifact(filesystem, root, location)
