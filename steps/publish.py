"""Putting finished files where a registry entry will point, and proving they arrived whole.

Merge publishes the artifact itself instead of leaving it to the processing job's output upload, because that
upload happens only after the container exits (docs: "How Amazon SageMaker Processing Configures Input and
Output For Your Processing Container"), while the model package is created from inside the container: with the
upload left to the service, the registry would point at objects that may never arrive. So every file is
written to the artifact URI and verified there (size and SHA-256) before anything is registered.

- s3://: each request carries the SHA-256 of its bytes (x-amz-checksum-sha256), so S3 refuses to store
  anything else; files over PART_BYTES go up in parts, each with its own checksum. Afterwards HeadObject
  (ChecksumMode ENABLED) must show the size and the checksum (the checksum of the parts' checksums for a
  multipart object, S3 user guide "Checking object integrity"). A store that returns no checksum (moto, some
  S3-compatible stores) gets the object read back and hashed instead: verification never silently weakens.
  With a KMS key (security.output_kms_key) objects are written SSE-KMS, as the job's own outputs are.
- a path or file:// (local runs): a rename when on the same filesystem (the bytes already hashed), otherwise a
  copy that is hashed again, each file appearing under its name only complete (temp + rename).
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import StepError
from .io import atomic_path, sha256_file

PART_BYTES = 64 << 20  # multipart part size: bounds memory, and the composite checksum depends on it
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Published:
    name: str
    uri: str
    bytes: int
    sha256: str


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def publish(files: Sequence[Path], uri: str, kms_key: str | None = None) -> list[Published]:
    """Put `files` (in this order) under `uri` and verify each; StepError names the first that fails, and
    then (or on any interruption) the files this call already put are taken back."""
    out: list[Published] = []
    store = _S3(kms_key) if is_s3(uri) else None
    try:
        for path in files:
            size, digest = path.stat().st_size, sha256_file(path)
            target = join(uri, path.name)
            out.append(Published(path.name, target, size, digest))  # listed first: a half-put object is removed too
            if store:
                store.put(path, target, size, digest)
            else:
                _put_local(path, _local(target), size, digest)
    except BaseException:
        remove(out)
        raise
    return out


def remove(published: Sequence[Published]) -> None:
    """Best effort: take back what a failed publish put in place (never raises)."""
    for item in published:
        try:
            if is_s3(item.uri):
                bucket, key = split(item.uri)
                _client().delete_object(Bucket=bucket, Key=key)
            else:
                _local(item.uri).unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - cleanup of a failure must not hide that failure
            pass


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _put_local(source: Path, dest: Path, size: int, digest: str) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, dest)  # same filesystem: the very bytes that were hashed
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another filesystem: copy instead
                raise
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
            if os.path.getsize(tmp) != size or sha256_file(tmp) != digest:
                raise StepError(f"{dest}: the copy differs from {source} (the disk lost bytes); check the "
                                "output location's filesystem and rerun the Merge step")
    except OSError as exc:
        raise StepError(f"{dest}: cannot write the artifact file ({exc}); check that OutputPrefix is a "
                        "writable location with free space, then rerun the Merge step") from exc


def _client():
    import boto3  # in the image; locally boto3 honours AWS_ENDPOINT_URL (moto in tests)

    return boto3.client("s3")


class _S3:
    def __init__(self, kms_key: str | None):
        self.client = _client()
        self.extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key} if kms_key else {}

    def put(self, path: Path, uri: str, size: int, digest: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split(uri)
        try:
            expected = self._upload(path, bucket, key, size)
            self._verify(uri, bucket, key, size, digest, expected)
        except (BotoCoreError, ClientError) as exc:
            raise StepError(f"{uri}: cannot upload the artifact file ({_one_line(exc)}); the execution role needs "
                            "s3:PutObject and s3:GetObject on OutputPrefix (and kms:GenerateDataKey on "
                            "security.output_kms_key if set); rerun the Merge step") from exc

    def _upload(self, path: Path, bucket: str, key: str, size: int) -> str:
        """Upload with per-request checksums; returns the checksum S3 should report for the object."""
        if size <= PART_BYTES:
            with open(path, "rb") as f:
                data = f.read()
            checksum = _b64(hashlib.sha256(data).digest())
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumSHA256=checksum, **self.extra)
            return checksum
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                                                     **self.extra)["UploadId"]
        parts, digests = [], []
        try:
            with open(path, "rb") as f:
                number = 1
                while data := f.read(PART_BYTES):
                    digests.append(hashlib.sha256(data).digest())
                    response = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                                       Body=data, ChecksumSHA256=_b64(digests[-1]))
                    parts.append({"PartNumber": number, "ETag": response["ETag"],
                                  "ChecksumSHA256": _b64(digests[-1])})
                    number += 1
            self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except Exception:  # noqa: BLE001 - the upload's own failure is the one to report
                pass
            raise
        return f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"

    def _verify(self, uri: str, bucket: str, key: str, size: int, digest: str, expected: str) -> None:
        head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("ContentLength") != size:
            raise StepError(f"{uri}: S3 holds {head.get('ContentLength')} bytes, {size} were uploaded; rerun the "
                            "Merge step")
        reported = head.get("ChecksumSHA256")
        if reported:
            if reported.split("-")[0] != expected.split("-")[0]:
                raise StepError(f"{uri}: S3 reports checksum {reported}, the file uploaded has {expected}; "
                                "rerun the Merge step")
            return
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        h = hashlib.sha256()
        while block := body.read(READ_BYTES):
            h.update(block)
        if h.hexdigest() != digest:
            raise StepError(f"{uri}: the object read back differs from the file uploaded (sha256 "
                            f"{h.hexdigest()[:12]} != {digest[:12]}); rerun the Merge step")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
