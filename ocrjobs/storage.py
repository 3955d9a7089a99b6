"""One API over local paths and S3 (AWS or any S3-compatible endpoint).

Every function takes a URI: a local path (absolute or relative, ``file://`` accepted) or
``s3://bucket/key``. S3 calls go through boto3 with credentials from the standard AWS chain
(environment, profile, instance/pod role); the endpoint comes from a
:class:`~ocrjobs.config.StorageConfig`, else ``OCRJOBS_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL``, else AWS.
Failures raise a :class:`StorageError` subclass whose message names the URI and what to do; no message
ever contains a credential.

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> write_text(join(root, "images", "a.png"), "not really a png")
>>> [basename(u) for u in list_files(root, suffixes=IMAGE_SUFFIXES)]
['a.png']
>>> read_text(join(root, "images/a.png"))
'not really a png'

The same calls work on ``s3://bucket/prefix``; Ray Data gets a filesystem and a path from
:func:`pyarrow_filesystem`::

    fs, path = pyarrow_filesystem("s3://bucket/images/")
    ray.data.read_binary_files(path, filesystem=fs)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import posixpath
import re
import secrets
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ocrjobs.config import StorageConfig

if TYPE_CHECKING:
    import pyarrow.fs

__all__ = [
    "DOCUMENT_SUFFIXES",
    "IMAGE_SUFFIXES",
    "INPUT_SUFFIXES",
    "MANIFEST_SUFFIXES",
    "AccessDeniedError",
    "BucketNotFoundError",
    "EndpointUnreachableError",
    "InputListing",
    "ObjectNotFoundError",
    "StorageError",
    "absolute",
    "basename",
    "clear_client_cache",
    "copy",
    "delete",
    "delete_prefix",
    "exists",
    "is_s3",
    "join",
    "list_files",
    "parent",
    "pyarrow_filesystem",
    "read_bytes",
    "read_manifest",
    "read_text",
    "resolve_inputs",
    "scan_inputs",
    "size",
    "temporary_target",
    "write_bytes",
    "write_text",
]

logger = logging.getLogger(__name__)

# Every file name ending that ocrjobs.images.decode_image reads (its SUPPORTED_FORMATS, as Pillow names
# their files; a unit test keeps the two in step). Listed here, not derived, so that listing inputs
# does not import Pillow.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".mpo",
    ".png",
    ".apng",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".jp2",
    ".j2k",
    ".j2c",
    ".jpc",
    ".jpf",
    ".jpx",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
# Documents (many pages in one file) that ocrjobs.documents.open_document reads beside the images
# (multi-page TIFFs are among IMAGE_SUFFIXES already).
DOCUMENT_SUFFIXES: tuple[str, ...] = (".pdf",)
# What a bulk job lists from a folder or glob by default.
INPUT_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES + DOCUMENT_SUFFIXES
MANIFEST_SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".txt", ".lst")

URI = str | os.PathLike[str]
T = TypeVar("T")

_GLOB_CHARS = re.compile(r"[*?\[]")
# ".{name}.{12 hex}.tmp": the temporary file of an atomic local write of {name}, beside it.
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]+\.tmp$")
_S3_PAGE = 1000  # S3's maximum keys per list page and per DeleteObjects call
_MAX_POOL_CONNECTIONS = 32


# ----------------------------------------------------------------------------------------------- errors


class StorageError(Exception):
    """A storage operation failed; the message names the URI and what to do about it.

    Attributes:
        uri: the URI the operation was about (never contains credentials).
    """

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object (S3 key or local file) does not exist."""


class BucketNotFoundError(StorageError, FileNotFoundError):
    """The S3 bucket does not exist on the endpoint in use."""


class AccessDeniedError(StorageError, PermissionError):
    """Credentials are missing, invalid, or not allowed to do this (or a local permission error)."""


class EndpointUnreachableError(StorageError, ConnectionError):
    """The S3 endpoint could not be reached (refused, DNS failure, timeout)."""


# ------------------------------------------------------------------------------------------------- URIs


def _to_str(uri: URI) -> str:
    return os.fspath(uri) if not isinstance(uri, str) else uri


def is_s3(uri: URI) -> bool:
    """Whether ``uri`` is an ``s3://`` URI (the scheme is case-insensitive)."""
    return _to_str(uri)[:5].lower() == "s3://"


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the key keeps a trailing slash if given."""
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket; S3 URIs look like s3://bucket/key", uri)
    return bucket, key


def _local_path(uri: URI) -> str:
    """The filesystem path of a local URI (``file://`` stripped and percent-decoded)."""
    s = _to_str(uri)
    if s[:7].lower() == "file://":
        parsed = urllib.parse.urlparse(s)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{s!r}: file:// URIs on another host are not supported", s)
        return urllib.request.url2pathname(parsed.path)
    return s


def absolute(uri: URI) -> str:
    """An ``s3://`` URI as it is; a local path or ``file://`` URI as an absolute filesystem path.

    For handing a location to processes that run in another working directory (Ray workers).
    """
    s = _to_str(uri)
    return s if is_s3(s) else os.path.abspath(_local_path(s))


def join(uri: URI, *parts: str) -> str:
    """Join path parts onto a URI, without double slashes.

    Args:
        uri: base local path or ``s3://`` URI.
        *parts: path parts; leading/trailing slashes on them are ignored, empty parts skipped.

    Returns:
        ``s3://bucket/...`` for S3, else a local path (``file://`` dropped).

    >>> join("s3://bucket/pre/", "a/", "/b.txt")
    's3://bucket/pre/a/b.txt'
    """
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    if is_s3(uri):
        return "/".join([_to_str(uri).rstrip("/"), *cleaned])
    return os.path.join(_local_path(uri), *cleaned)


def parent(uri: URI) -> str:
    """The folder containing ``uri`` (``s3://b/a/c.txt`` -> ``s3://b/a``; a bucket is its own parent)."""
    if is_s3(uri):
        bucket, key = _split_s3(_to_str(uri))
        head = posixpath.dirname(key.rstrip("/"))
        return f"s3://{bucket}/{head}" if head else f"s3://{bucket}"
    path = _local_path(uri)
    stripped = path.rstrip(os.sep)
    if not stripped:
        return path[:1] or "."  # the root is its own parent
    return os.path.dirname(stripped) or "."


def basename(uri: URI) -> str:
    """The last path component of ``uri`` (a trailing slash is ignored)."""
    if is_s3(uri):
        bucket, key = _split_s3(_to_str(uri))
        return posixpath.basename(key.rstrip("/")) or bucket
    return os.path.basename(_local_path(uri).rstrip(os.sep))


# --------------------------------------------------------------------------------------- S3 connection


def _config(config: StorageConfig | None) -> StorageConfig:
    return config if config is not None else StorageConfig()


def _endpoint_and_source(config: StorageConfig) -> tuple[str | None, str]:
    """The endpoint URL and where it came from, for error messages that say what to change."""
    if config.endpoint_url:
        return config.endpoint_url, "the config's storage.endpoint_url"
    for var in ("OCRJOBS_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        value = os.environ.get(var)
        if value:
            if not value.startswith(("http://", "https://")):
                raise StorageError(f"{var}={value!r} must start with http:// or https://")
            return value, f"the {var} environment variable"
    return None, "the AWS default (no storage.endpoint_url, OCRJOBS_S3_ENDPOINT or AWS_ENDPOINT_URL set)"


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _credential_env_digest() -> str:
    """A one-way digest of the credential env vars: a cache key that holds no secret."""
    joined = "\0".join(os.environ.get(var, "") for var in _CREDENTIAL_ENV)
    return hashlib.sha256(joined.encode()).hexdigest()


def _client(config: StorageConfig) -> Any:
    """A boto3 S3 client for this config, created once per process and settings.

    A new boto3 Session per client because the default session is not thread-safe; the pid is part of
    the key because clients must not cross a fork (Ray workers, multiprocessing). A boto3 client keeps
    the credentials it was created with, so a digest of the credential environment variables is part
    of the key too: changing them (tests, a re-exported token) gets a fresh client.
    """
    endpoint, _ = _endpoint_and_source(config)
    key = (
        os.getpid(),
        _credential_env_digest(),
        endpoint,
        config.region,
        config.anonymous,
        config.connect_timeout_s,
        config.request_timeout_s,
        config.retries,
    )
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            import botocore
            from botocore.config import Config

            settings: dict[str, Any] = {
                "connect_timeout": config.connect_timeout_s,
                "read_timeout": config.request_timeout_s,
                "retries": {"max_attempts": config.retries, "mode": "standard"},
                # One client is shared by all threads of a process (Ray Data readers, thread pools);
                # botocore's default pool of 10 connections would make them queue and churn sockets.
                "max_pool_connections": _MAX_POOL_CONNECTIONS,
            }
            if endpoint:
                # S3-compatible servers (MinIO, Ceph, moto) address buckets by path, not by DNS name.
                settings["s3"] = {"addressing_style": "path"}
            if config.anonymous:
                settings["signature_version"] = botocore.UNSIGNED
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=config.region, config=Config(**settings)
            )
            _clients[key] = client
            logger.debug("created S3 client for endpoint %s", endpoint or "<AWS default>")
    return client


def clear_client_cache() -> None:
    """Forget cached S3 clients, so the next call re-reads credentials from the AWS chain."""
    with _clients_lock:
        _clients.clear()


_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)


def _translate(
    exc: Exception, uri: str, config: StorageConfig, missing: Literal["object", "bucket"]
) -> StorageError:
    """Map a botocore exception to our hierarchy.

    The botocore message is deliberately not copied: auth errors can echo the access key id or the
    signed request. Only the S3 error code and HTTP status are kept.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    endpoint, source = _endpoint_and_source(config)
    where = endpoint or "the AWS default endpoint"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = _split_s3(uri)[0]
        if code == "NoSuchBucket" or (missing == "bucket" and code in ("404", "NotFound")):
            return BucketNotFoundError(
                f"bucket {bucket!r} does not exist at {where} (endpoint from {source}) while accessing "
                f"{uri}; create it or fix the bucket name/endpoint",
                uri,
            )
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFoundError(f"object not found: {uri}", uri)
        if code in _AUTH_CODES or status == 403:
            return AccessDeniedError(
                f"access denied to {uri} at {where} ({code or 'HTTP 403'}); check the AWS credential chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance/pod role) and that "
                "it may access this bucket (S3 also answers 403 for a missing key without s3:ListBucket)",
                uri,
            )
        return StorageError(f"S3 request for {uri} at {where} failed: {code} (HTTP {status})", uri)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AccessDeniedError(
            f"no usable AWS credentials for {uri}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE, run on a node with an instance/pod role, or set storage.anonymous for a public bucket",
            uri,
        )
    if isinstance(exc, (BotoConnectionError, ReadTimeoutError, ConnectionClosedError)):
        return EndpointUnreachableError(
            f"cannot reach S3 endpoint {where} (from {source}) for {uri}: {type(exc).__name__}; check that "
            "the server is running and that setting's URL, or raise storage.connect_timeout_s for a slow link",
            uri,
        )
    return StorageError(f"S3 request for {uri} at {where} failed: {type(exc).__name__}", uri)


def _s3_call(
    uri: str, config: StorageConfig, fn: Callable[[], T], missing: Literal["object", "bucket"] = "object"
) -> T:
    """Run ``fn`` (boto3 calls) and translate its errors.

    The translated error is raised outside the ``except`` block so it carries no ``__context__``:
    botocore's original exception (which may quote the signed request) never reaches a traceback.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (BotoCoreError, ClientError) as exc:
        error = _translate(exc, uri, config, missing)
    raise error


# -------------------------------------------------------------------------------------- read / write


def _local_error(exc: OSError, uri: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFoundError(f"file not found: {uri}", uri)
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"permission denied on local path {uri}; check the file's owner/mode", uri)
    return StorageError(f"local I/O error on {uri}: {exc.strerror or exc}", uri)


def _local_call(uri: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        error = _local_error(exc, uri)
    raise error


def read_bytes(uri: URI, config: StorageConfig | None = None) -> bytes:
    """Read a whole object or file.

    Args:
        uri: local path or ``s3://bucket/key``.
        config: S3 settings; ``None`` uses defaults and the environment.

    Returns:
        The content.

    Raises:
        ObjectNotFoundError: no such key or file.
        BucketNotFoundError: the bucket does not exist.
        AccessDeniedError: credentials are missing, wrong, or not allowed.
        EndpointUnreachableError: the S3 endpoint cannot be reached.
    """
    s = _to_str(uri)
    if is_s3(s):
        cfg = _config(config)
        bucket, key = _split_s3(s)
        client = _client(cfg)
        return _s3_call(s, cfg, lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())
    path = _local_path(s)

    def _read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return _local_call(s, _read)


def read_text(uri: URI, config: StorageConfig | None = None, encoding: str = "utf-8") -> str:
    """Read an object or file as text (see :func:`read_bytes` for errors)."""
    return read_bytes(uri, config).decode(encoding)


def _temp_path(path: str) -> str:
    """A fresh temporary name beside ``path`` (hidden, so listings by suffix never pick it up)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")


def temporary_target(name: str) -> str | None:
    """The file name whose atomic local write left the temporary file ``name``, else ``None``.

    A process killed between creating and renaming the temporary file leaves it behind; callers that
    own a folder (the bulk job's output) delete such files on their next run.

    >>> temporary_target(".part-000001-1f2e3d4c.parquet.0a1b2c3d4e5f.tmp")
    'part-000001-1f2e3d4c.parquet'
    >>> temporary_target("part-000001-1f2e3d4c.parquet") is None
    True
    """
    match = _TEMP_RE.match(name)
    return match.group("target") if match else None


def _atomic_write_local(path: str, data: bytes | bytearray | memoryview) -> None:
    """Write via a temp file in the same folder + ``os.replace``: readers never see a partial file."""
    tmp = _temp_path(path)
    # os.open with 0o666 lets the process umask decide the final mode, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(uri: URI, data: bytes | bytearray | memoryview, config: StorageConfig | None = None) -> None:
    """Write ``data``, replacing any existing object; local writes are atomic and create parent dirs.

    Args:
        uri: local path or ``s3://bucket/key``.
        data: the content.
        config: S3 settings.

    Raises:
        TypeError: ``data`` is not bytes-like.
        BucketNotFoundError: the bucket does not exist.
        AccessDeniedError: not allowed to write.
        EndpointUnreachableError: the S3 endpoint cannot be reached.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes needs bytes-like data, got {type(data).__name__}")
    s = _to_str(uri)
    if is_s3(s):
        cfg = _config(config)
        bucket, key = _split_s3(s)
        if not key or key.endswith("/"):
            raise StorageError(f"cannot write an object at {s!r}: the URI names a folder, not a key", s)
        client = _client(cfg)
        _s3_call(s, cfg, lambda: client.put_object(Bucket=bucket, Key=key, Body=data))
        return
    path = _local_path(s)
    _local_call(s, lambda: _atomic_write_local(path, data))


def write_text(uri: URI, text: str, config: StorageConfig | None = None, encoding: str = "utf-8") -> None:
    """Write text (see :func:`write_bytes`)."""
    write_bytes(uri, text.encode(encoding), config)


def exists(uri: URI, config: StorageConfig | None = None) -> bool:
    """Whether a file/object or a non-empty folder/prefix exists at ``uri``.

    ``s3://bucket`` alone asks whether the bucket exists.

    Raises:
        BucketNotFoundError: the URI names a key inside a bucket that does not exist.
        AccessDeniedError: credentials are missing, wrong, or not allowed.
        EndpointUnreachableError: the S3 endpoint cannot be reached.
    """
    s = _to_str(uri)
    if not is_s3(s):
        return os.path.exists(_local_path(s))
    cfg = _config(config)
    bucket, key = _split_s3(s)
    client = _client(cfg)
    if not key:
        try:
            _s3_call(s, cfg, lambda: client.head_bucket(Bucket=bucket), missing="bucket")
        except BucketNotFoundError:
            return False
        return True
    if not key.endswith("/"):
        try:
            _s3_call(s, cfg, lambda: client.head_object(Bucket=bucket, Key=key))
            return True
        except ObjectNotFoundError:
            pass
    # Not an object: maybe a "folder". Listing also tells a missing bucket (NoSuchBucket) apart.
    prefix = key.rstrip("/") + "/"
    page = _s3_call(s, cfg, lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1))
    return bool(page.get("KeyCount", len(page.get("Contents", []))))


def size(uri: URI, config: StorageConfig | None = None) -> int:
    """Size in bytes of a file/object.

    Raises:
        ObjectNotFoundError: no such key or file.
        BucketNotFoundError, AccessDeniedError, EndpointUnreachableError: as for :func:`read_bytes`.
    """
    s = _to_str(uri)
    if not is_s3(s):
        path = _local_path(s)
        return _local_call(s, lambda: os.stat(path).st_size)
    cfg = _config(config)
    bucket, key = _split_s3(s)
    client = _client(cfg)
    try:
        head = _s3_call(s, cfg, lambda: client.head_object(Bucket=bucket, Key=key))
    except ObjectNotFoundError:
        # HEAD has no error body, so a missing bucket also looks like a 404: tell them apart.
        _s3_call(s, cfg, lambda: client.head_bucket(Bucket=bucket), missing="bucket")
        raise
    return int(head["ContentLength"])


def delete(uri: URI, config: StorageConfig | None = None) -> None:
    """Delete one file/object; deleting something that does not exist is not an error (as on S3).

    Raises:
        BucketNotFoundError, AccessDeniedError, EndpointUnreachableError: as for :func:`read_bytes`.
        StorageError: a local ``uri`` is a folder (use :func:`delete_prefix`).
    """
    s = _to_str(uri)
    if is_s3(s):
        cfg = _config(config)
        bucket, key = _split_s3(s)
        client = _client(cfg)
        _s3_call(s, cfg, lambda: client.delete_object(Bucket=bucket, Key=key))
        return
    path = _local_path(s)
    if os.path.isdir(path) and not os.path.islink(path):
        raise StorageError(f"{s} is a folder; use delete_prefix() to delete a folder", s)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        error = _local_error(exc, s)
        raise error from None


def delete_prefix(uri: URI, config: StorageConfig | None = None) -> int:
    """Delete every file/object under a folder/prefix (the folder itself for local paths).

    Args:
        uri: a folder or ``s3://bucket/prefix`` (treated as ``prefix/``); a bucket root or ``/``
            is refused as too dangerous to do by accident.
        config: S3 settings.

    Returns:
        How many files/objects were deleted.

    Raises:
        StorageError: the URI is a bucket root or the filesystem root, or some deletions failed.
    """
    s = _to_str(uri)
    if is_s3(s):
        cfg = _config(config)
        bucket, key = _split_s3(s)
        if not key.strip("/"):
            raise StorageError(f"refusing to delete a whole bucket ({s}); delete a prefix inside it", s)
        client = _client(cfg)
        prefix = key.rstrip("/") + "/"

        def _delete_all() -> int:
            keys = list(_s3_iter_keys(client, bucket, prefix, delimiter=None, markers=True))
            for start in range(0, len(keys), _S3_PAGE):
                batch = [{"Key": k} for k in keys[start : start + _S3_PAGE]]
                out = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if out.get("Errors"):
                    first = out["Errors"][0]
                    raise StorageError(
                        f"{len(out['Errors'])} deletions under {s} failed, e.g. {first.get('Key')}: "
                        f"{first.get('Code')}",
                        s,
                    )
            return len(keys)

        return _s3_call(s, cfg, _delete_all)
    path = os.path.abspath(_local_path(s))
    if path == os.path.abspath(os.sep):
        raise StorageError("refusing to delete the filesystem root", s)
    if not os.path.isdir(path):
        return 0
    count = sum(len(files) for _, _, files in os.walk(path))
    _local_call(s, lambda: shutil.rmtree(path))
    return count


def _atomic_copy_local(src: str, dst: str) -> None:
    tmp = _temp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def copy(src: URI, dst: URI, config: StorageConfig | None = None) -> None:
    """Copy one file/object to another URI (any mix of local and S3, one ``config`` for both).

    S3-to-S3 copies stay on the server (single-request copy, objects up to 5 GB).

    Raises:
        ObjectNotFoundError: ``src`` does not exist.
        BucketNotFoundError, AccessDeniedError, EndpointUnreachableError: as for :func:`read_bytes`.
    """
    s, d = _to_str(src), _to_str(dst)
    if is_s3(s) and is_s3(d):
        cfg = _config(config)
        sb, sk = _split_s3(s)
        db, dk = _split_s3(d)
        client = _client(cfg)
        _s3_call(s, cfg, lambda: client.copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk}))
        return
    if not is_s3(s) and not is_s3(d):
        sp, dp = _local_path(s), _local_path(d)
        if not os.path.isfile(sp):
            raise ObjectNotFoundError(f"file not found: {s}", s)
        _local_call(d, lambda: _atomic_copy_local(sp, dp))
        return
    write_bytes(d, read_bytes(s, config), config)


# ---------------------------------------------------------------------------------------------- listing


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a ``/``-separated glob to a regex: ``*``, ``?``, ``[...]`` stay inside one segment;
    a whole ``**`` segment matches zero or more segments."""
    segments = pattern.split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        j, buf = 0, []
        while j < len(seg):
            c = seg[j]
            if c == "*":
                buf.append("[^/]*")
            elif c == "?":
                buf.append("[^/]")
            elif c == "[":
                end = seg.find("]", j + 2 if seg[j + 1 : j + 2] in ("!", "]") else j + 1)
                if end == -1:
                    buf.append(re.escape(c))
                else:
                    body = seg[j + 1 : end]
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    buf.append("[" + body.replace("\\", "\\\\") + "]")
                    j = end
            else:
                buf.append(re.escape(c))
            j += 1
        out.append("".join(buf) + ("" if last else "/"))
    return re.compile("".join(out), re.DOTALL)


def _split_glob(path: str) -> tuple[str, str | None]:
    """Split ``a/b/*/c*.jpg`` into the literal folder ``a/b/`` and the pattern ``*/c*.jpg``."""
    if not _GLOB_CHARS.search(path):
        return path, None
    segments = path.split("/")
    first = next(i for i, seg in enumerate(segments) if _GLOB_CHARS.search(seg))
    # first == 1 with an empty first segment is an absolute path globbing at the root ("/*/x").
    base = "/".join(segments[:first]) + "/" if first else ""
    return base, "/".join(segments[first:])


def _is_marker(key: str) -> bool:
    """Zero-byte "folder" placeholders written by consoles and Hadoop tools are not files."""
    return key.endswith("/") or key.endswith("_$folder$")


def _s3_iter_keys(
    client: Any, bucket: str, prefix: str, delimiter: str | None, markers: bool = False
) -> Iterator[str]:
    """All keys under ``prefix`` across pages (S3 returns at most 1000 per page)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        for obj in page.get("Contents", []):
            if markers or not _is_marker(obj["Key"]):
                yield obj["Key"]


def _local_iter_files(root: str, recursive: bool) -> Iterator[str]:
    """Files under ``root`` as ``/``-separated paths relative to it."""
    if not recursive:
        with os.scandir(root) as it:
            for entry in it:
                if entry.is_file():
                    yield entry.name
        return
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in files:
            yield name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"


def _has_suffix(uri: str, suffixes: Sequence[str] | None) -> bool:
    return suffixes is None or uri.lower().endswith(tuple(s.lower() for s in suffixes))


def list_files(
    uri: URI,
    config: StorageConfig | None = None,
    suffixes: Sequence[str] | None = None,
    recursive: bool = True,
) -> list[str]:
    """List files under a folder/prefix, or those matching a glob.

    Args:
        uri: a folder (``s3://b/images`` means the prefix ``images/``), a single file (listed as
            itself), or a glob: ``*``, ``?`` and ``[...]`` match within one path segment, a ``**``
            segment matches any depth (``s3://b/data/**/*.png``).
        config: S3 settings.
        suffixes: keep only names ending with one of these (case-insensitive); ``None`` keeps all.
        recursive: for a folder, include sub-folders; a glob's depth is given by the glob itself.

    Returns:
        Sorted full URIs: ``s3://bucket/key`` for S3, absolute paths for local files. Folder
        marker objects (keys ending in ``/``) are skipped. A missing local folder gives ``[]``.

    Raises:
        BucketNotFoundError, AccessDeniedError, EndpointUnreachableError: as for :func:`read_bytes`.
    """
    s = _to_str(uri)
    if is_s3(s):
        cfg = _config(config)
        bucket, key = _split_s3(s)
        client = _client(cfg)
        base, pattern = _split_glob(key)
        if pattern is None:
            prefix = key.rstrip("/") + "/" if key.strip("/") else ""
            delimiter = None if recursive else "/"
            keys = _s3_call(s, cfg, lambda: list(_s3_iter_keys(client, bucket, prefix, delimiter)))
            if not keys and key and not key.endswith("/"):
                keys = [key] if not _is_marker(key) and _is_file(s, cfg) else []
        else:
            regex = _glob_to_regex(pattern)
            # The literal start of the first glob segment narrows the server-side listing.
            literal = _GLOB_CHARS.split(pattern, maxsplit=1)[0]
            deep = "/" in pattern or "**" in pattern
            delimiter = None if deep else "/"
            listed = _s3_call(s, cfg, lambda: list(_s3_iter_keys(client, bucket, base + literal, delimiter)))
            keys = [k for k in listed if regex.fullmatch(k[len(base) :])]
        found = [f"s3://{bucket}/{k}" for k in keys]
    else:
        path = _local_path(s)
        base, pattern = _split_glob(path)
        if pattern is None:
            root = os.path.abspath(path)
            if os.path.isfile(root):
                found = [root]
            elif os.path.isdir(root):
                found = [os.path.join(root, rel) for rel in _local_iter_files(root, recursive)]
            else:
                found = []
        else:
            root = os.path.abspath(base or ".")
            regex = _glob_to_regex(pattern)
            deep = "/" in pattern or "**" in pattern
            rels = _local_iter_files(root, deep) if os.path.isdir(root) else iter(())
            found = [os.path.join(root, rel) for rel in rels if regex.fullmatch(rel)]
    return sorted(u for u in found if _has_suffix(u, suffixes))


# -------------------------------------------------------------------------------------------- manifests


def _resolve_entry(entry: str, folder: str) -> str:
    """Resolve a manifest entry against the manifest's folder (``../`` allowed, not above a bucket)."""
    if is_s3(entry) or "://" in entry:
        return _local_path(entry) if entry[:7].lower() == "file://" else entry
    if os.path.isabs(entry):
        return entry
    if is_s3(folder):
        bucket, key = _split_s3(folder)
        joined = posixpath.normpath(posixpath.join(key, entry))
        if joined == ".." or joined.startswith("../"):
            raise StorageError(f"manifest entry {entry!r} points above bucket {bucket!r}", folder)
        return f"s3://{bucket}" if joined == "." else f"s3://{bucket}/{joined}"
    return os.path.normpath(os.path.join(os.path.abspath(folder), entry))


def _parquet_entries(data: bytes, uri: str, column: str | None) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    names = table.column_names
    if column is None:
        strings = [
            f.name
            for f in table.schema
            if pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)
            or pa.types.is_string_view(f.type)
        ]
        column = next((c for c in ("uri", "path") if c in names), None)
        if column is None and len(strings) == 1:
            column = strings[0]
    if column is None or column not in names:
        raise StorageError(
            f"manifest {uri}: cannot tell which column holds the URIs (columns: {names}); name it 'uri' "
            "or 'path', keep a single string column, or pass column=",
            uri,
        )
    return [v for v in table.column(column).to_pylist() if v]


def _csv_entries(text: str, uri: str, column: str | None) -> list[str]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0]]
    lowered = [h.lower() for h in header]
    if column is not None:
        if column not in header:
            raise StorageError(f"manifest {uri}: no column {column!r} in header {header}", uri)
        idx, body = header.index(column), rows[1:]
    elif "uri" in lowered or "path" in lowered:
        idx, body = lowered.index("uri" if "uri" in lowered else "path"), rows[1:]
    elif len(header) == 1:
        # A single column: its first cell is a header only if it cannot be a file name/URI.
        first = header[0]
        is_header = not any(ch in first for ch in "./\\:")
        idx, body = 0, rows[1:] if is_header else rows
    else:
        raise StorageError(
            f"manifest {uri}: CSV has columns {header} but none named 'uri' or 'path'; add such a "
            "header or pass column=",
            uri,
        )
    return [r[idx].strip() for r in body if len(r) > idx and r[idx].strip()]


def _text_entries(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_manifest(uri: URI, config: StorageConfig | None = None, column: str | None = None) -> list[str]:
    """Read a list of input URIs from a manifest file.

    Formats by extension: ``.parquet`` (column ``uri``, else ``path``, else the only string column),
    ``.csv`` (a header with a ``uri``/``path`` column, or a single column with or without a header),
    anything else is plain text with one URI per line (blank lines and ``#`` comments skipped).

    Args:
        uri: the manifest (local or S3).
        config: S3 settings.
        column: the column holding URIs, overriding the rules above (Parquet/CSV).

    Returns:
        The entries in manifest order; relative entries are resolved against the manifest's folder.

    Raises:
        StorageError: the URI column cannot be determined (and the errors of :func:`read_bytes`).
    """
    s = _to_str(uri)
    data = read_bytes(s, config)
    lower = s.lower()
    if lower.endswith((".parquet", ".pq")):
        entries = _parquet_entries(data, s, column)
    elif lower.endswith(".csv"):
        entries = _csv_entries(data.decode("utf-8-sig"), s, column)
    else:
        entries = _text_entries(data.decode("utf-8-sig"))
    folder = parent(s) if is_s3(s) else os.path.dirname(os.path.abspath(_local_path(s)))
    return [_resolve_entry(e, folder) for e in entries]


@dataclass(frozen=True)
class InputListing:
    """What an input spec names: the files to process and the listed files left out.

    Attributes:
        uris: the inputs (sorted for listings, in manifest order for manifests).
        skipped: files a folder or glob listed whose name does not end in one of the suffixes asked
            for (sorted); a manifest's entries are never skipped.
    """

    uris: list[str]
    skipped: list[str] = field(default_factory=list)


def scan_inputs(
    spec: URI,
    config: StorageConfig | None = None,
    suffixes: Sequence[str] | None = IMAGE_SUFFIXES,
) -> InputListing:
    """Turn what a user passed as input into the files to process, and say what was left out.

    Args:
        spec: a manifest (a file ending in ``.parquet``/``.csv``/``.txt``/``.lst``), a glob, or a
            folder/prefix.
        config: S3 settings.
        suffixes: for globs and folders, keep only these extensions (case-insensitive); ``None`` keeps
            everything. Manifest entries are taken as they are.

    Returns:
        The inputs and the skipped files.

    Raises:
        ObjectNotFoundError: nothing matched (the message says what was found and what to pass).
    """
    s = _to_str(spec)
    if s.lower().endswith(MANIFEST_SUFFIXES) and not _GLOB_CHARS.search(s) and _is_file(s, config):
        entries = read_manifest(s, config)
        if not entries:
            raise ObjectNotFoundError(f"manifest {s} lists no inputs", s)
        return InputListing(entries)
    listed = list_files(s, config)
    kept = [u for u in listed if _has_suffix(u, suffixes)]
    if not kept:
        detail = (
            f"{len(listed)} files found, none ending in {', '.join(suffixes or ())}"
            if listed
            else "no files found there"
        )
        raise ObjectNotFoundError(
            f"no inputs matched {s} ({detail}); pass a folder/prefix, a glob such as "
            f"'s3://bucket/images/**/*.jpg', or a manifest ({', '.join(MANIFEST_SUFFIXES)})",
            s,
        )
    return InputListing(kept, [u for u in listed if not _has_suffix(u, suffixes)])


def resolve_inputs(
    spec: URI,
    config: StorageConfig | None = None,
    suffixes: Sequence[str] | None = IMAGE_SUFFIXES,
) -> list[str]:
    """The files to process for an input spec: :func:`scan_inputs` without the skipped files.

    Returns:
        Sorted URIs for listings, manifest order for manifests.

    Raises:
        ObjectNotFoundError: nothing matched (the message says what was found and what to pass).
    """
    return scan_inputs(spec, config, suffixes).uris


def _is_file(uri: str, config: StorageConfig | None) -> bool:
    if not is_s3(uri):
        return os.path.isfile(_local_path(uri))
    try:
        size(uri, config)
    except ObjectNotFoundError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- pyarrow


def pyarrow_filesystem(uri: URI, config: StorageConfig | None = None) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow FileSystem and the path inside it, for Ray Data readers and writers.

    Credentials are not passed: pyarrow's AWS SDK reads the same chain as boto3.

    Args:
        uri: local path or ``s3://bucket/prefix``.
        config: S3 settings (endpoint, region, anonymous, timeouts, retries).

    Returns:
        ``(S3FileSystem, "bucket/key")`` for S3, ``(LocalFileSystem, absolute path)`` otherwise.

    >>> fs, path = pyarrow_filesystem("/tmp/out")
    >>> type(fs).__name__, path
    ('LocalFileSystem', '/tmp/out')
    """
    import pyarrow.fs as pafs

    s = _to_str(uri)
    if not is_s3(s):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(s))
    cfg = _config(config)
    bucket, key = _split_s3(s)
    endpoint, _ = _endpoint_and_source(cfg)
    kwargs: dict[str, Any] = {
        "anonymous": cfg.anonymous,
        "connect_timeout": cfg.connect_timeout_s,
        "request_timeout": cfg.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.retries),
    }
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
    path = f"{bucket}/{key}".rstrip("/")
    return pafs.S3FileSystem(**kwargs), path
