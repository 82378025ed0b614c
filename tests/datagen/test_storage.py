"""Storage helpers against the local disk and a real S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from core import storage
from core.storage import StorageError, check_storage


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_local_atomic_write_leaves_only_the_file(tmp_path):
    target = tmp_path / "deep" / "er" / "blob.bin"
    storage.write_bytes_atomic(str(target), b"one")
    storage.write_bytes_atomic(f"file://{target}", b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]
    assert storage.read_bytes(str(target)) == b"two" and storage.exists(str(target))
    assert storage.join("s3://bucket/prefix/", "a", "/b.tar") == "s3://bucket/prefix/a/b.tar"


def test_check_storage_local(tmp_path):
    check_storage(str(tmp_path / "new" / "folder"))
    assert (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a folder"):
        check_storage(str(tmp_path / "file"))


def test_s3_round_trip(s3_endpoint):
    bucket = s3_endpoint.make_bucket("datagen-storage")
    url = f"{bucket}/set/blob.bin"
    check_storage(f"{bucket}/set")
    storage.write_bytes_atomic(url, b"payload")
    assert storage.exists(url) and storage.read_bytes(url) == b"payload"
    storage.remove(url)
    assert not storage.exists(url)


def test_a_folder_on_s3_is_mirrored_and_kept_in_step(s3_endpoint, tmp_path):
    bucket = s3_endpoint.make_bucket("datagen-mirror")
    for name, data in {"a/1.png": b"one", "a/2.png": b"two", "b.txt": b"bee"}.items():
        storage.write_bytes_atomic(f"{bucket}/set/{name}", data)

    mirror = storage.local_copy(f"{bucket}/set", cache_root=tmp_path)
    files = {str(p.relative_to(mirror)): p.read_bytes() for p in mirror.rglob("*") if p.is_file()}
    assert files == {"a/1.png": b"one", "a/2.png": b"two", "b.txt": b"bee"}

    storage.write_bytes_atomic(f"{bucket}/set/a/1.png", b"changed")
    storage.remove(f"{bucket}/set/b.txt")
    assert storage.local_copy(f"{bucket}/set", cache_root=tmp_path) == mirror
    assert (mirror / "a" / "1.png").read_bytes() == b"changed"
    assert not (mirror / "b.txt").exists()
    assert storage.local_copy(str(tmp_path)) == tmp_path  # a local folder is used in place
    with pytest.raises(StorageError, match="no files there"):
        storage.local_copy(f"{bucket}/nothing", cache_root=tmp_path)


def test_missing_bucket_fails_in_one_line(s3_endpoint):
    with pytest.raises(StorageError) as error:
        check_storage("s3://no-such-bucket-here/prefix")
    message = str(error.value)
    assert "no-such-bucket-here" in message and "does not exist" in message and "\n" not in message


def test_unreachable_endpoint_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    started = time.monotonic()
    with pytest.raises(StorageError) as error:
        check_storage("s3://bucket/prefix")
    message = str(error.value)
    assert time.monotonic() - started < 20
    assert "cannot be reached" in message and "\n" not in message
    assert "testing-secret-value" not in message


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        ({}, "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ({"AWS_ACCESS_KEY_ID": "testing"}, "AWS_SECRET_ACCESS_KEY is missing"),
        ({"AWS_PROFILE": "nowhere"}, "AWS profile 'nowhere' (AWS_PROFILE) is not in the AWS"),
    ],
    ids=["none", "partial", "unknown profile"],
)
@pytest.mark.parametrize("write", [True, False], ids=["output", "source"])
def test_missing_credentials_fail_the_check_in_one_line(
    credentials, says, write, s3_endpoint, monkeypatch, tmp_path
):
    """On a reachable endpoint with an existing bucket: the check is an authenticated call."""
    bucket = s3_endpoint.make_bucket("datagen-credentials")
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in ("AWS_CA_BUNDLE", "AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageError) as error:
        check_storage(f"{bucket}/set", write=write)
    message = str(error.value)
    assert says in message and "\n" not in message
    assert message.startswith(f"storage {bucket}/set (endpoint {s3_endpoint.url})")
