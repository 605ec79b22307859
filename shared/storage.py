"""Object storage: a local folder (embedded mode) or any S3-compatible server (MinIO, AWS, R2...).

Both stream files in and out; neither holds a whole object in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from shared.settings import Settings

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PresignedPost:
    """A browser-style upload form: POST `fields` as given, then the file as the field `file` (last)."""

    url: str
    fields: dict[str, str]


class ObjectStore(Protocol):
    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None: ...
    def download_file(self, key: str, dest: Path) -> None: ...
    def iter_bytes(self, key: str) -> Iterator[bytes]: ...
    def presigned_url(self, key: str, filename: str) -> str | None: ...
    def presigned_put_url(self, key: str, content_type: str) -> str | None: ...
    def presigned_post(self, key: str, content_type: str, max_bytes: int) -> PresignedPost | None: ...
    def object_size(self, key: str) -> int | None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def check(self) -> None: ...


def resume_state_prefix(job_id: str) -> str:
    """Where a job's resume state lives; deleted only once the job truly ended."""
    return f"jobs/{job_id}/state/"


def _safe_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"unsafe object key: {key!r}")
    return key


class LocalStore:
    """Objects as files under one folder; writes go through a temp file so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def download_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), dest)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk

    def presigned_url(self, key: str, filename: str) -> str | None:
        return None  # the API streams local objects itself

    def presigned_put_url(self, key: str, content_type: str) -> str | None:
        return None  # the API takes the PUT itself (api/direct_uploads)

    def presigned_post(self, key: str, content_type: str, max_bytes: int) -> PresignedPost | None:
        return None  # the API takes the form itself, and enforces the size (api/direct_uploads/form.py)

    def object_size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".upload-")
        )

    def check(self) -> None:
        probe = self.root / ".readyz"
        probe.write_bytes(b"ok")
        probe.unlink()


class S3Store:
    """boto3 against any S3-compatible endpoint; uploads are multipart for large files (boto3's transfer)."""

    def __init__(self, settings: Settings) -> None:
        import boto3  # local import: the embedded mode never needs botocore's start-up cost
        from botocore.config import Config

        common = {
            "region_name": settings.s3_region,
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": settings.s3_secret_access_key,
            # Bounded calls: a storage server that is down or hung is an error within seconds (the API
            # answers 503, the worker retries), not a request that waits for minutes.
            "config": Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=settings.s3_connect_timeout_seconds,
                read_timeout=settings.s3_read_timeout_seconds,
                retries={"total_max_attempts": 2, "mode": "standard"},
                max_pool_connections=max(10, settings.api_threads),
            ),
        }
        self.bucket = settings.s3_bucket
        self.expiry = settings.presign_expiry_seconds
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        # Presigned URLs must name a host the browser can reach, which inside Docker differs from ours.
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self.public_client = boto3.client("s3", endpoint_url=public, **common)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self.client.upload_file(
            str(path), self.bucket, _safe_key(key), ExtraArgs={"ContentType": content_type}
        )

    def download_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, _safe_key(key), str(dest))

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=_safe_key(key))["Body"]
        yield from body.iter_chunks(CHUNK)

    def presigned_url(self, key: str, filename: str) -> str | None:
        return self.public_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": _safe_key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=self.expiry,
        )

    def presigned_put_url(self, key: str, content_type: str) -> str | None:
        """A URL a client PUTs one object to, without our credentials; it must send this Content-Type."""
        return self.public_client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": _safe_key(key), "ContentType": content_type},
            ExpiresIn=self.expiry,
        )

    def presigned_post(self, key: str, content_type: str, max_bytes: int) -> PresignedPost | None:
        """A form a client POSTs one object with, without our credentials. Unlike a presigned PUT, its
        signed policy caps the size: S3 refuses a file outside 1..max_bytes, or under another key."""
        post = self.public_client.generate_presigned_post(
            self.bucket,
            _safe_key(key),  # an exact key: boto3 adds the {"key": ...} and {"bucket": ...} conditions
            Fields={"Content-Type": content_type},
            Conditions=[["content-length-range", 1, max_bytes], {"Content-Type": content_type}],
            ExpiresIn=self.expiry,
        )
        return PresignedPost(url=post["url"], fields=dict(post["fields"]))

    def object_size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=_safe_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def build_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "s3":
        return S3Store(settings)
    assert settings.storage_dir is not None
    return LocalStore(settings.storage_dir)
