"""The blob store: a folder and a real S3-compatible server (moto) behind one interface."""

from __future__ import annotations

import os
import time

import pytest

from sonalyze.common.blobs import STALE_PARTIAL_S, LocalBlobStore, blob_store, check_key
from tests.support.s3 import make_bucket, s3_server, set_credentials


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "folder":
        yield blob_store("", tmp_path / "data")
        return
    set_credentials(monkeypatch)
    with s3_server() as endpoint_url:
        make_bucket(endpoint_url, "audio")
        yield blob_store("s3://audio/sonalyze", tmp_path / "data", endpoint_url=endpoint_url)


def test_put_then_read_back_byte_for_byte_and_delete_by_prefix(store, tmp_path):
    payload = os.urandom(9 * 1024 * 1024 + 17)  # past boto3's 8 MiB multipart threshold
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    assert store.local_path("jobs/a/uploads/mic-1") is None
    store.put_file("jobs/a/uploads/mic-1", source)
    store.put_file("jobs/a/sweep.wav", source)
    store.put_file("jobs/b/sweep.wav", source)
    assert source.read_bytes() == payload  # the caller's file is left alone
    assert store.local_path("jobs/a/uploads/mic-1").read_bytes() == payload
    assert store.delete_prefix("jobs/a") == 2
    assert store.local_path("jobs/a/uploads/mic-1") is None and store.local_path("jobs/a/sweep.wav") is None
    assert store.local_path("jobs/b/sweep.wav").read_bytes() == payload
    assert store.delete_prefix("jobs/nothing") == 0


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", ".hidden", "a//b", "a/.b", "", "a\\b"])
def test_keys_that_leave_the_store_are_refused(key, tmp_path):
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        LocalBlobStore(tmp_path).put_file(key, tmp_path)


def test_a_crash_leftover_is_removed_and_never_visible(tmp_path):
    store = LocalBlobStore(tmp_path)
    dead = store.temp_dir() / "dead.part"
    dead.write_bytes(b"half")
    hour_ago = time.time() - STALE_PARTIAL_S - 1
    os.utime(dead, (hour_ago, hour_ago))
    again = LocalBlobStore(tmp_path)
    assert list(again.temp_dir().iterdir()) == []


def test_a_second_process_opening_the_folder_keeps_an_upload_in_progress(tmp_path):
    """Replicas and workers share one folder: opening it must not remove a file still being written."""
    store = LocalBlobStore(tmp_path)
    growing = store.temp_dir() / "upload.part"
    growing.write_bytes(b"first chunk")
    LocalBlobStore(tmp_path)
    assert growing.read_bytes() == b"first chunk"


def test_unknown_blob_urls_are_refused(tmp_path):
    for url in ("http://x", "s3://", "ftp://a/b"):
        with pytest.raises(ValueError, match="BLOB_URL"):
            blob_store(url, tmp_path)
