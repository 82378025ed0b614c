"""Storage URLs through fsspec: a local path, `file://...` or `s3://bucket/prefix`.

S3 (and MinIO) endpoints come from the standard `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`
variables, credentials from the standard AWS chain (environment, profile, instance role).
Credentials are never read from config files and never logged.

Writes are atomic: a reader sees a whole object or none. Locally that is a temporary file in
the same folder, flushed, then `os.replace`; on S3 a single PUT (or a multipart upload, which
also becomes visible only when completed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.cli import one_line

__all__ = [
    "StorageError",
    "check_storage",
    "exists",
    "filesystem",
    "is_local",
    "join",
    "local_copy",
    "local_path",
    "read_bytes",
    "remove",
    "s3_endpoint",
    "write_bytes_atomic",
]


class StorageError(RuntimeError):
    """A storage URL that cannot be used; the message is one line saying what and where."""


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (the service-specific variable wins), or None."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def is_local(url: str) -> bool:
    """True for a plain path or a `file://` URL."""
    scheme = urlparse(str(url)).scheme
    return scheme in ("", "file", "local") or (len(scheme) == 1 and os.name == "nt")


def local_path(url: str) -> str:
    """The absolute local path of a plain path or `file://` URL."""
    text = str(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("local://"):
        text = text[len("local://") :]
    return os.path.abspath(os.path.expanduser(text))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it.

    fsspec caches instances per process and drops its cache in a forked child, so calling this
    inside a DataLoader worker gives that worker its own S3 client (s3fs is not fork-safe).
    """
    if is_local(url):
        return LocalFileSystem(), local_path(url)
    scheme = urlparse(url).scheme
    options: dict = {}
    if scheme in ("s3", "s3a"):
        endpoint = s3_endpoint()
        if endpoint:
            options["endpoint_url"] = endpoint
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def join(url: str, *names: str) -> str:
    """`url` with `names` appended as path components (works for paths and URLs)."""
    base = str(url).rstrip("/")
    for name in names:
        base = f"{base}/{str(name).strip('/')}"
    return base


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def remove(url: str) -> None:
    """Delete one object if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm_file(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write `data` so that readers see either the old object, nothing, or all of `data`."""
    if is_local(url):
        target = Path(local_path(url))
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(handle, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def local_copy(url: str, cache_root: str | Path | None = None) -> Path:
    """A local folder with the contents of the folder at `url`: the folder itself when `url`
    is local, else a mirror under `cache_root` (default `$VOS_CACHE` or ~/.cache/vos).

    Repeated calls download only the files that are new or changed in size, and delete the
    files that are gone, so a fixed evaluation set on S3 is fetched once per machine."""
    if is_local(url):
        return Path(local_path(url))
    fs, root = filesystem(url)
    listing = fs.find(root, detail=True)
    if not listing:
        raise StorageError(f"{url}: no files there (or it does not exist)")
    cache_root = Path(cache_root or os.environ.get("VOS_CACHE") or Path.home() / ".cache" / "vos")
    mirror = cache_root / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    wanted = {}
    for remote, info in listing.items():
        relative = remote[len(root) :].lstrip("/")
        local = mirror / relative
        wanted[local] = info
        if not (local.is_file() and local.stat().st_size == info["size"]):
            write_bytes_atomic(str(local), fs.cat_file(remote))
    for stale in [path for path in mirror.rglob("*") if path.is_file() and path not in wanted]:
        stale.unlink()
    return mirror


def check_storage(url: str, *, write: bool = True) -> None:
    """Fail at once, in one line, if `url` cannot be used for output; do nothing otherwise.

    Checks what would otherwise fail after hours of work: an unreachable endpoint, missing
    credentials, a missing bucket, no permission to write (a small object is written and
    deleted when `write` is true).
    """
    if is_local(url):
        _check_local(local_path(url), write)
        return
    scheme = urlparse(url).scheme
    if scheme in ("s3", "s3a"):
        _check_s3(url, write)
        return
    try:  # any other fsspec protocol: a listing of the parent is the cheapest real check
        fs, path = filesystem(url)
        fs.exists(path)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line
        raise StorageError(f"storage {url}: cannot be reached: {one_line(err)}") from None


def _check_local(path: str, write: bool) -> None:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"storage {path}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"storage {path}: cannot create the folder: {err.strerror}") from None
    if write and not os.access(folder, os.W_OK):
        raise StorageError(f"storage {path}: the folder is not writable")


_SET_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the machine an "
    "instance role"
)
_REJECTED_CODES = (
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
)


def _check_s3(url: str, write: bool) -> None:
    """An authenticated call (HEAD on the bucket, and a PUT and DELETE when `write`): what every
    later read and write needs, so missing credentials fail here and not in every task."""
    import boto3
    import botocore.exceptions as boto_errors
    from botocore.config import Config

    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    endpoint = s3_endpoint()
    where = f"storage {url} (endpoint {endpoint or 'AWS default'})"
    if not bucket:
        raise StorageError(f"storage {url}: no bucket in the URL (expected s3://bucket/prefix)")
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
        )
        client.head_bucket(Bucket=bucket)
        if write:
            probe = f"{prefix}/.vos-write-check-{uuid.uuid4().hex}".lstrip("/")
            client.put_object(Bucket=bucket, Key=probe, Body=b"")
            client.delete_object(Bucket=bucket, Key=probe)
    except boto_errors.NoCredentialsError:
        raise StorageError(f"{where}: no AWS credentials found ({_SET_CREDENTIALS})") from None
    except boto_errors.PartialCredentialsError as err:
        missing = err.kwargs.get("cred_var", "a credential")
        raise StorageError(
            f"{where}: partial AWS credentials ({err.kwargs.get('provider', 'env')}): "
            f"{missing} is missing (set it too)"
        ) from None
    except boto_errors.ProfileNotFound as err:
        raise StorageError(
            f"{where}: AWS profile {err.kwargs.get('profile')!r} (AWS_PROFILE) is not in the AWS "
            "config or credentials file"
        ) from None
    except (boto_errors.CredentialRetrievalError, boto_errors.TokenRetrievalError) as err:
        raise StorageError(f"{where}: cannot get AWS credentials: {one_line(err)}") from None
    except boto_errors.ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"{where}: bucket {bucket!r} does not exist") from None
        if code in _REJECTED_CODES:
            raise StorageError(f"{where}: access denied ({code}); check the credentials") from None
        raise StorageError(f"{where}: {code or one_line(err)}") from None
    except boto_errors.BotoCoreError as err:
        raise StorageError(f"{where}: cannot be reached: {one_line(err)}") from None
