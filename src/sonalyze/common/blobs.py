"""Audio (sweeps, uploads, simulated RIRs) in one blob store every replica and worker reaches, behind one interface.

* :class:`LocalBlobStore` — a folder (the embedded default): ``ROOT/{key}``, published with fsync +
  ``os.replace``, so a key never names a half-written file.
* :class:`S3BlobStore` — the S3 API through boto3 (AWS S3, MinIO, Ceph, moto's server). A ``PUT``
  (multipart for large files) makes an object visible only once complete, so a half upload is never
  visible either.

Callers write a complete local file first (uploads stream to a temporary file while they arrive) and
publish it with :meth:`BlobStore.put_file`: no blob is ever held in memory as a whole. Readers that need a
file (the analysis, ``FileResponse`` with ``Range``) take :meth:`BlobStore.local_path`, which is the file
itself for the folder and a download into a per-replica cache for S3. All methods are blocking: call them
through ``asyncio.to_thread``.

A task in a worker process (local pool or ``sonalyze worker``) opens the service's store from its
:class:`BlobAddress` and writes its bulk output there (simulated RIRs): only keys travel through the task
queue.

``BLOB_URL``: empty or ``file:///path`` → folder; ``s3://bucket/prefix`` → S3 (endpoint from
``S3_ENDPOINT_URL``, credentials from boto3's usual environment/config chain).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from sonalyze.common.durable import fsync_dir

PARTIAL_SUFFIX = ".part"
# A half-written file nobody has written to for this long is a crash's leftover. Replicas and workers may
# share one folder, so a store never removes a partial file that may still be growing (another process's
# upload in progress writes to it with every chunk).
STALE_PARTIAL_S = 3600.0
_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def check_key(key: str) -> str:
    """``key`` if it is a relative path of plain names (no ``..``, no leading dot or slash), else ValueError."""
    if len(key) > 512 or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def commit_file(temp_path: Path, final_path: Path) -> None:
    """Make a fully written ``temp_path`` durable and visible as ``final_path`` in one step."""
    with open(temp_path, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp_path, final_path)
    fsync_dir(final_path.parent)


class BlobStore(Protocol):
    def put_file(self, key: str, path: Path) -> None:
        """Publish the complete file ``path`` under ``key`` in one step (``path`` stays the caller's)."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob (None when there is no such blob)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix/``; how many there were."""

    def temp_dir(self) -> Path:
        """Where callers write files before publishing them."""


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._temp = root / ".incoming"
        self._temp.mkdir(exist_ok=True)
        stale_before = time.time() - STALE_PARTIAL_S
        for leftover in self._temp.glob(f"*{PARTIAL_SUFFIX}"):  # a crash's half-written files
            try:
                if leftover.stat().st_mtime < stale_before:
                    leftover.unlink(missing_ok=True)
            except FileNotFoundError:  # published or removed by its writer meanwhile
                pass

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def temp_dir(self) -> Path:
        return self._temp

    def put_file(self, key: str, path: Path) -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = self._temp / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        try:
            try:
                os.link(path, temp)  # same file system: no copy
            except OSError:
                shutil.copyfile(path, temp)
            commit_file(temp, final)
        finally:
            temp.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for entry in folder.rglob("*") if entry.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count


class S3BlobStore:
    """Blobs as objects ``{prefix}{key}`` of one bucket; reads are cached under ``cache_dir`` (objects
    are written once and never changed, so a cached copy never goes stale)."""

    def __init__(self, bucket: str, prefix: str, cache_dir: Path, *, endpoint_url: str | None = None) -> None:
        import boto3  # only a deployment with S3 pays for the import

        self.bucket = bucket
        self.prefix = prefix
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None)
        self.cache_dir = cache_dir
        self._temp = cache_dir / ".incoming"
        self._temp.mkdir(parents=True, exist_ok=True)

    def temp_dir(self) -> Path:
        return self._temp

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self.prefix + check_key(key))

    def local_path(self, key: str) -> Path | None:
        from botocore.exceptions import ClientError

        cached = self.cache_dir / check_key(key)
        if cached.is_file():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        temp = self._temp / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        try:
            self.client.download_file(self.bucket, self.prefix + key, str(temp))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        else:
            os.replace(temp, cached)
        finally:
            temp.unlink(missing_ok=True)
        return cached

    def delete_prefix(self, prefix: str) -> int:
        full = self.prefix + check_key(prefix) + "/"
        count = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                count += len(keys)
        shutil.rmtree(self.cache_dir / prefix, ignore_errors=True)
        return count


def put_bytes(store: BlobStore, key: str, data: bytes) -> None:
    """Publish a small blob held in memory (a simulated RIR) through a temporary file."""
    temp = store.temp_dir() / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    try:
        temp.write_bytes(data)
        store.put_file(key, temp)
    finally:
        temp.unlink(missing_ok=True)


def blob_store(blob_url: str, data_dir: Path, *, endpoint_url: str | None = None) -> BlobStore:
    """The store ``blob_url`` names: empty → the folder ``data_dir``; ``file:///path``; ``s3://bucket/prefix``."""
    if not blob_url:
        return LocalBlobStore(data_dir)
    parts = urlsplit(blob_url)
    if parts.scheme == "file":
        return LocalBlobStore(Path(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3BlobStore(parts.netloc, prefix, data_dir / "blob-cache", endpoint_url=endpoint_url)
    raise ValueError(f"BLOB_URL must be empty, file:///path or s3://bucket[/prefix], not {blob_url!r}")


@dataclass(frozen=True)
class BlobAddress:
    """A service's blob store as a task in a worker process opens it (``BLOB_URL``, ``DATA_DIR``,
    ``S3_ENDPOINT_URL``; picklable): :meth:`open` gives one store per address and process."""

    blob_url: str
    data_dir: Path
    endpoint_url: str = ""

    def open(self) -> BlobStore:
        return _open_store(self)


@functools.lru_cache(maxsize=4)
def _open_store(address: BlobAddress) -> BlobStore:
    # S3's temporary files and read cache go to this machine's temporary folder: the service's DATA_DIR
    # may not exist where the worker runs.
    local_dir = Path(tempfile.gettempdir()) / "sonalyze-worker" if address.blob_url.startswith("s3://") else address.data_dir
    return blob_store(address.blob_url, local_dir, endpoint_url=address.endpoint_url or None)
