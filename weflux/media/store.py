"""Where encrypted media files live: local disk or an S3-compatible bucket.

Both stores hold only sealed files (weflux.media.sealed): the bytes on disk or in the
bucket are ciphertext, useless without the data key, which the database holds sealed
by the key ring. Keys are `<workspace id>/<random id>`: nothing a person wrote. The
S3 store calls boto3 (synchronous) in a thread for writes and deletes; reads are
iterated by Starlette in its thread pool (`StreamingResponse` with a sync iterator).
boto3 is imported by the S3 store alone: a process on the disk store never pays for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from weflux.config import Settings
from weflux.errors import Unavailable
from weflux.media.sealed import Reader

log = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = "The media store is unavailable; try again shortly"


class MediaStore(Protocol):
    """Sealed files by key: written whole from a local file, read from an offset."""

    async def put(self, key: str, path: Path) -> None:
        """Store the sealed file at `path` under `key` (the local file is consumed)."""
        ...

    def open(self, key: str, offset: int) -> Reader:
        """The stored bytes of `key` from `offset`; FileNotFoundError when absent."""
        ...

    async def delete(self, key: str) -> None:
        """Delete `key`; nothing happens when it is already gone."""
        ...

    @property
    def scratch(self) -> Path:
        """A local directory for files being sealed before `put`."""
        ...


def new_storage_key(org_id: uuid.UUID) -> str:
    """A fresh key in the workspace's folder: each stored copy has its own, so a late
    writer (a download whose lease ran out) never overwrites another's file."""
    return f"{org_id}/{uuid.uuid4()}"


class DiskStore:
    """Sealed files under one directory (WEFLUX_MEDIA_DIR), `0600` in `0700` directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def scratch(self) -> Path:
        return self.root / ".partial"

    def _path(self, key: str) -> Path:
        org, _, name = key.partition("/")
        # Keys are built from UUIDs only; anything else is refused, never joined.
        return self.root / str(uuid.UUID(org)) / str(uuid.UUID(name))

    async def put(self, key: str, path: Path) -> None:
        target = self._path(key)

        def move() -> None:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o600)
            shutil.move(path, target)

        await asyncio.to_thread(move)

    def open(self, key: str, offset: int) -> Reader:
        handle = self._path(key).open("rb")
        handle.seek(offset)
        return handle

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)


class _Body:
    """An S3 object's streaming body as a Reader."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int, /) -> bytes:
        data: bytes = self._body.read(size)
        return data

    def close(self) -> None:
        self._body.close()


class S3Store:
    """Sealed files in an S3-compatible bucket (WEFLUX_MEDIA_S3_URL = s3://bucket/prefix)."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        assert settings.media_s3_url is not None
        parts = urlsplit(settings.media_s3_url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        secret = settings.media_s3_secret_access_key
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.media_s3_endpoint_url,
            region_name=settings.media_s3_region,
            aws_access_key_id=settings.media_s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=BotoConfig(
                connect_timeout=settings.media_s3_timeout.total_seconds(),
                read_timeout=settings.media_s3_timeout.total_seconds(),
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self._scratch = settings.media_directory / ".partial"

    @property
    def scratch(self) -> Path:
        return self._scratch

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, path: Path) -> None:
        def upload() -> None:
            try:
                self._client.upload_file(str(path), self.bucket, self._key(key))
            finally:
                path.unlink(missing_ok=True)

        await asyncio.to_thread(upload)

    def open(self, key: str, offset: int) -> Reader:
        from botocore.exceptions import ClientError

        try:
            answer = self._client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-"
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            raise
        return _Body(answer["Body"])

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=self._key(key))


def is_outage(error: BaseException | None) -> bool:
    """A failure of the store itself, not of the request: the network (refused, reset,
    timed out, cut mid-body), an S3 5xx once boto3's retries are spent, or the disk."""
    if "botocore" not in sys.modules:  # no S3 store was built, so no boto3 error exists
        return isinstance(error, OSError) and not isinstance(error, FileNotFoundError)
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(error, S3UploadFailedError):  # wraps the ClientError it was raised for
        return is_outage(error.__context__)
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500
    if isinstance(error, FileNotFoundError):
        return False  # a missing file: the callers answer 404
    return isinstance(error, HTTPClientError | BotoConnectionError | IncompleteReadError | OSError)


def store_name(store: MediaStore) -> str:
    """The store's kind for a log line (`s3`, `disk`): never its endpoint or bucket."""
    if isinstance(store, S3Store):
        return "s3"
    return "disk" if isinstance(store, DiskStore) else type(store).__name__


def unavailable(store: MediaStore, error: BaseException) -> Unavailable | None:
    """UPSTREAM_UNAVAILABLE for an outage of `store` (logged as a WARNING naming the store
    and the error's class, never its message: boto3's carry the endpoint URL), else None."""
    if not is_outage(error):
        return None
    log.warning(
        "the media store is unavailable",
        extra={"store": store_name(store), "error": type(error).__name__},
    )
    return Unavailable(UNAVAILABLE_MESSAGE)


def build_store(settings: Settings) -> MediaStore:
    """The S3 store when WEFLUX_MEDIA_S3_URL is set, else the disk store."""
    if settings.media_s3_url:
        return S3Store(settings)
    return DiskStore(settings.media_directory)
