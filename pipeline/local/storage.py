"""Where step data lives locally: plain paths and file:// (linked or moved), s3:// (through boto3)."""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from pipeline.errors import LocalRunError


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """A plain path or file:// URI as an absolute path; relative paths are taken from the current directory."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return Path(os.path.abspath(path))


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def s3_client():
    import boto3  # boto3 honours AWS_ENDPOINT_URL, which is how tests point it at moto

    return boto3.client("s3")


# ---- inputs -------------------------------------------------------------------------------------------------


def stage_input(uri: str, dest: Path, where: str, fix: str) -> None:
    """Make `dest` (which must not exist) hold the data at `uri`, as SageMaker's File mode would."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        download_prefix(uri, dest, where, fix)
    else:
        link_local(uri, dest, where, fix)


def link_local(uri: str, dest: Path, where: str, fix: str) -> None:
    """A file shows up under its own name inside `dest`; a directory becomes `dest` (a link: no copy)."""
    source = local_path(uri)
    if source.is_file():
        dest.mkdir()
        (dest / source.name).symlink_to(source)
    elif source.is_dir():
        if not any(source.iterdir()):
            raise LocalRunError(f"{where}: {uri} is an empty directory (SageMaker fails on an empty prefix); {fix}")
        dest.symlink_to(source, target_is_directory=True)
    else:
        shown = uri if str(source) == uri else f"{uri} ({source})"
        raise LocalRunError(f"{where}: {shown} does not exist; {fix}")


def download_prefix(uri: str, dest: Path, where: str, fix: str, allow_empty: bool = False) -> None:
    """Download the object `uri`, or every object under `uri/`, keeping keys relative to it."""
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        client = s3_client()
        for key in list_keys(client, bucket, prefix):
            relative = relative_key(key, prefix)
            if relative is None:
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
            count += 1
    except Exception as exc:
        raise LocalRunError(f"{where}: cannot read {uri}: {one_line(exc)}; check the URI and your AWS credentials") from exc
    if count == 0 and not allow_empty:
        raise LocalRunError(f"{where}: no objects under {uri}; {fix}")


def relative_key(key: str, prefix: str) -> str | None:
    """Directory semantics: `prefix-old/x` is not under `prefix` (S3's raw prefix match would include it)."""
    if not prefix:
        return key
    if key == prefix:
        return os.path.basename(key)
    if key.startswith(prefix + "/"):
        return key[len(prefix) + 1:].lstrip("/")
    return None


def list_keys(client, bucket: str, prefix: str):
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):  # "folder" marker objects hold no data
                yield obj["Key"]


# ---- outputs ------------------------------------------------------------------------------------------------


def deliver_tree(source: Path, uri: str, where: str) -> None:
    """Publish the files under `source` at `uri`: moved (locally) or uploaded (s3); `source` is consumed."""
    source.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        upload_tree(source, uri, where)
    else:
        move_tree(source, local_path(uri), where)


def move_tree(source: Path, dest: Path, where: str) -> None:
    """A new destination appears whole (moved beside it, then renamed); an existing one is updated file by file,
    each file replaced atomically, as S3 replaces objects."""
    if dest.exists() and not dest.is_dir():
        raise LocalRunError(f"{where}: {dest} exists and is not a directory; remove it or choose another output location")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        move_into_place(source, dest)
        return
    for file in files_under(source):
        deliver_file(file, str(dest / file.relative_to(source)), where)


def deliver_file(source: Path, uri: str, where: str) -> None:
    if is_s3(uri):
        upload_file(source, uri, where)
        return
    dest = local_path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    move_into_place(source, dest)


def move_into_place(source: Path, dest: Path) -> None:
    """Move beside `dest` first (a copy, across filesystems), then rename: `dest` never appears half there."""
    staged = temp_sibling(dest)
    try:
        move(source, staged)
        os.replace(staged, dest)
    except BaseException:  # a copy cut short (a full disk, a stop) leaves nothing half there
        shutil.rmtree(staged, ignore_errors=True) if staged.is_dir() else staged.unlink(missing_ok=True)
        raise


def temp_sibling(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.partial"


def move(source: Path, dest: Path) -> None:
    """os.replace when on the same filesystem; otherwise copy (the caller renames the copy into place)."""
    try:
        os.replace(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True)
            shutil.rmtree(source)
        else:
            shutil.copy2(source, dest)
            source.unlink()


def files_under(root: Path) -> list[Path]:
    """Files (and links to files) under `root`, in a stable order; linked directories are not followed."""
    found = []
    for directory, _, files in os.walk(root):
        found += [Path(directory) / name for name in files]
    return sorted(found)


def upload_tree(source: Path, uri: str, where: str) -> None:
    client = None  # one client (and connection pool) for the whole tree
    for file in files_under(source):
        client = upload_file(file, join_uri(uri, file.relative_to(source).as_posix()), where, client)


def upload_file(source: Path, uri: str, where: str, client=None):
    """Upload one file; returns the client used, for the next upload."""
    bucket, key = split_s3(uri)
    try:
        client = client or s3_client()
        client.upload_file(str(source), bucket, key)
        return client
    except Exception as exc:
        raise LocalRunError(f"{where}: cannot write {uri}: {one_line(exc)}; check the URI and your AWS credentials") from exc


# ---- what a published output holds -------------------------------------------------------------------------


def tree_signature(uri: str, where: str) -> dict[str, list]:
    """Each file under `uri` (or the file itself) by relative name: [size, modification time in ns] locally,
    [size, ETag] in S3. Cheap (no file is read), and it changes when a file is deleted, replaced or edited."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/")
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            found = {relative_key(o["Key"], prefix): [o["Size"], o.get("ETag")] for page in pages
                     for o in page.get("Contents", []) if not o["Key"].endswith("/")}
        except Exception as exc:
            raise LocalRunError(f"{where}: cannot list {uri}: {one_line(exc)}; check the URI and your AWS credentials") from exc
        return {key: value for key, value in found.items() if key is not None}
    path = local_path(uri)
    files = [path] if path.is_file() else files_under(path)
    out = {}
    for file in files:
        try:
            info = file.stat()
        except OSError:
            continue  # a dangling link: it holds nothing
        out[file.name if file == path else file.relative_to(path).as_posix()] = [info.st_size, info.st_mtime_ns]
    return out


def signature_change(recorded: dict[str, list], now: dict[str, list]) -> str | None:
    """How a published output differs from what was published (files added since do not count), or None."""
    for name, value in sorted(recorded.items()):
        if name not in now:
            return f"{name} is missing"
        if list(now[name]) != list(value):
            return f"{name} was replaced or edited"
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
