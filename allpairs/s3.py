"""S3 as a pyarrow filesystem, through boto3: what pyarrow reads (parquet footers, row groups, datasets) becomes
ranged GETs, so a lookup fetches a few row groups, not the artifact.

Why boto3 and not pyarrow's own S3FileSystem: one set of rules for credentials, region, profiles, SSO and
AWS_ENDPOINT_URL for every s3:// the project touches (the local runner and the steps use boto3 too), and tests
against moto in process. Read-only: the artifact is written by Merge, never through here.
"""
from __future__ import annotations

import io
import threading
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


def split(uri_or_path: str) -> tuple[str, str]:
    """'s3://bucket/key' or 'bucket/key' -> (bucket, key)."""
    bucket, _, key = uri_or_path.removeprefix("s3://").partition("/")
    return bucket, key


class Boto3S3(pafs.FileSystemHandler):
    """A read-only pyarrow FileSystemHandler on a boto3 S3 client; paths are 'bucket/key'. `requests` and
    `bytes_read` count what was fetched (a lookup's cost, as benchmarks/bench_lookup.py reports it)."""

    def __init__(self, client: Any):
        self.client = client
        self.requests = 0
        self.bytes_read = 0
        self._lock = threading.Lock()

    def counted(self, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_read += nbytes

    def get_type_name(self) -> str:
        return "allpairs-boto3-s3"

    def normalize_path(self, path: str) -> str:
        return path.removeprefix("s3://").rstrip("/")

    def equals(self, other) -> bool:
        return other is self

    def get_file_info(self, paths):
        return [self._info(path) for path in paths]

    def _info(self, path: str) -> pafs.FileInfo:
        from botocore.exceptions import ClientError

        bucket, key = split(path)
        if key:
            try:
                head = self.client.head_object(Bucket=bucket, Key=key)
                self.counted(0)
                return pafs.FileInfo(path, pafs.FileType.File, size=head["ContentLength"],
                                     mtime=head.get("LastModified"))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise _os_error(path, exc) from None
        listed = self.client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
        self.counted(0)
        kind = pafs.FileType.Directory if listed.get("KeyCount") else pafs.FileType.NotFound
        return pafs.FileInfo(path, kind)

    def get_file_info_selector(self, selector):
        bucket, key = split(selector.base_dir)
        prefix = f"{key}/" if key else ""
        infos, dirs = [], set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            self.counted(0)
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix):]
                if "/" in rest and not selector.recursive:
                    dirs.add(rest.split("/", 1)[0])
                    continue
                infos.append(pafs.FileInfo(f"{bucket}/{obj['Key']}", pafs.FileType.File, size=obj["Size"],
                                           mtime=obj.get("LastModified")))
        if not infos and not dirs and not selector.allow_not_found:
            raise FileNotFoundError(f"s3://{selector.base_dir}: no such prefix")
        return infos + [pafs.FileInfo(f"{bucket}/{prefix}{d}", pafs.FileType.Directory) for d in sorted(dirs)]

    def open_input_file(self, path: str):
        info = self._info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"s3://{path}: no such object")
        # Unbuffered: parquet asks for the footer and whole column chunks, each read one GET of just those bytes.
        return pa.PythonFile(_S3Object(self, path, info.size), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)

    def _read_only(self, *args, **kwargs):
        raise OSError("allpairs reads artifacts through this filesystem; it never writes to S3")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


class _S3Object(io.RawIOBase):
    """One S3 object as a seekable raw file: each read is one ranged GET."""

    def __init__(self, fs: Boto3S3, path: str, size: int):
        self.fs, self.size, self.position = fs, size, 0
        self.bucket, self.key = split(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        n = min(len(buffer), self.size - self.position)
        if n <= 0:
            return 0
        try:
            body = self.fs.client.get_object(Bucket=self.bucket, Key=self.key,
                                             Range=f"bytes={self.position}-{self.position + n - 1}")["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _os_error(f"{self.bucket}/{self.key}", exc) from None
        self.fs.counted(len(body))
        buffer[:len(body)] = body
        self.position += len(body)
        return len(body)


def _os_error(path: str, exc: Exception) -> OSError:
    return OSError(f"s3://{path}: {exc}")
