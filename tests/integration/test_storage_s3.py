"""ocrjobs.storage against a real S3 server (moto's, on 127.0.0.1): I/O, listing, manifests, pyarrow and
every error class. No Ray needed."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ocrjobs import storage
from ocrjobs.config import StorageConfig
from ocrjobs.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointUnreachableError,
    ObjectNotFoundError,
    StorageError,
)
from tests.conftest import S3Server

PLANTED_SECRET = "PLANTEDsecret0123456789abcdefghijklmnopqrs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _all_text(exc: BaseException) -> str:
    """Everything a log could show about an exception: message, repr, formatted chain."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


# ------------------------------------------------------------------------------------------ basic I/O


def test_write_read_exists_size_delete(s3_server: S3Server, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/a/b/blob.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00payload")
    assert storage.read_bytes(uri) == b"\x00payload"
    assert storage.size(uri) == 8
    assert storage.exists(uri)
    assert storage.exists(f"s3://{s3_bucket}/a")  # a "folder" with objects under it
    assert storage.exists(f"s3://{s3_bucket}/a/b/")
    assert not storage.exists(f"s3://{s3_bucket}/a/b/blob")  # a key prefix is not a folder
    assert storage.exists(f"s3://{s3_bucket}")
    storage.write_text(f"s3://{s3_bucket}/t.txt", "héllo")
    assert storage.read_text(f"s3://{s3_bucket}/t.txt") == "héllo"
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # idempotent, as S3 itself is


def test_explicit_config_endpoint(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    cfg = StorageConfig(endpoint_url=s3_server.endpoint_url, region="us-east-1")
    storage.write_text(f"s3://{s3_bucket}/cfg.txt", "via config", cfg)
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="cfg.txt")["Body"].read() == b"via config"
    monkeypatch.setenv("OCRJOBS_S3_ENDPOINT", s3_server.endpoint_url)
    assert storage.read_text(f"s3://{s3_bucket}/cfg.txt") == "via config"


def test_write_to_folder_uri_is_refused(s3_server: S3Server, s3_bucket: str) -> None:
    with pytest.raises(StorageError, match="names a folder"):
        storage.write_bytes(f"s3://{s3_bucket}/folder/", b"x")


def test_copy_between_s3_and_local(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    src = f"s3://{s3_bucket}/src.bin"
    storage.write_bytes(src, b"data")
    storage.copy(src, f"s3://{s3_bucket}/dst/copy.bin")
    assert storage.read_bytes(f"s3://{s3_bucket}/dst/copy.bin") == b"data"
    storage.copy(src, str(tmp_path / "local.bin"))
    assert (tmp_path / "local.bin").read_bytes() == b"data"
    storage.copy(str(tmp_path / "local.bin"), f"s3://{s3_bucket}/up.bin")
    assert storage.read_bytes(f"s3://{s3_bucket}/up.bin") == b"data"
    with pytest.raises(ObjectNotFoundError):
        storage.copy(f"s3://{s3_bucket}/missing.bin", f"s3://{s3_bucket}/x.bin")


# ------------------------------------------------------------------------------------------------ listing


@pytest.fixture
def s3_tree(s3_server: S3Server, s3_bucket: str) -> str:
    """A bucket with files at several depths plus folder markers; returns ``s3://bucket/data``."""
    client = s3_server.client()
    for key in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpg", "sub/deep/d.tif", "sub/deep/e.json", "z/f.webp"):
        client.put_object(Bucket=s3_bucket, Key=f"data/{key}", Body=key.encode())
    for marker in ("data/", "data/sub/", "data/empty/", "data/old_$folder$"):
        client.put_object(Bucket=s3_bucket, Key=marker, Body=b"")
    client.put_object(Bucket=s3_bucket, Key="data2/outside.jpg", Body=b"x")
    return f"s3://{s3_bucket}/data"


def _rel(uris: list[str], root: str) -> list[str]:
    assert all(u.startswith(root + "/") for u in uris), uris
    return [u[len(root) + 1 :] for u in uris]


def test_list_prefix(s3_tree: str) -> None:
    found = storage.list_files(s3_tree)
    assert found == sorted(found)
    assert _rel(found, s3_tree) == [
        "a.jpg",
        "b.PNG",
        "notes.txt",
        "sub/c.jpg",
        "sub/deep/d.tif",
        "sub/deep/e.json",
        "z/f.webp",
    ]
    assert storage.list_files(s3_tree + "/") == found
    assert _rel(storage.list_files(s3_tree, recursive=False), s3_tree) == ["a.jpg", "b.PNG", "notes.txt"]
    assert _rel(storage.list_files(s3_tree, suffixes=(".jpg", ".png")), s3_tree) == [
        "a.jpg",
        "b.PNG",
        "sub/c.jpg",
    ]
    assert storage.list_files(s3_tree + "/a.jpg") == [s3_tree + "/a.jpg"]
    assert storage.list_files(s3_tree + "/empty") == []
    bucket_root = storage.parent(s3_tree)
    assert len(storage.list_files(bucket_root)) == 8


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.jpg", ["a.jpg"]),
        ("[ab].*", ["a.jpg", "b.PNG"]),
        ("*/*.jpg", ["sub/c.jpg"]),
        ("**/*.jpg", ["a.jpg", "sub/c.jpg"]),
        ("sub/**", ["sub/c.jpg", "sub/deep/d.tif", "sub/deep/e.json"]),
        ("s*/d??p/?.tif", ["sub/deep/d.tif"]),
    ],
)
def test_list_glob(s3_tree: str, pattern: str, expected: list[str]) -> None:
    assert _rel(storage.list_files(f"{s3_tree}/{pattern}"), s3_tree) == expected


def test_list_paginates_and_delete_prefix_batches(s3_server: S3Server, s3_bucket: str) -> None:
    n = 1100  # more than one 1000-key page, and more than one DeleteObjects batch
    uris = [f"s3://{s3_bucket}/many/{i:05d}.png" for i in range(n)]
    # Also exercises the thread-safe client cache: many threads start with no cached client.
    storage.clear_client_cache()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda u: storage.write_bytes(u, b"x"), uris))
    assert storage.list_files(f"s3://{s3_bucket}/many") == uris
    assert storage.list_files(f"s3://{s3_bucket}/many/0*.png") == uris  # a glob across pages too
    assert len(storage.list_files(f"s3://{s3_bucket}/**/01???.png")) == 100
    assert storage.delete_prefix(f"s3://{s3_bucket}/many") == n
    assert storage.list_files(f"s3://{s3_bucket}/many") == []


def test_delete_prefix_refuses_bucket_root(s3_server: S3Server, s3_bucket: str) -> None:
    with pytest.raises(StorageError, match="whole bucket"):
        storage.delete_prefix(f"s3://{s3_bucket}/")


# ---------------------------------------------------------------------------------------------- manifests


def test_manifests_on_s3(s3_server: S3Server, s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/jobs/run1"
    storage.write_text(f"{root}/in.lst", "# batch 1\nimgs/a.jpg\n\n../shared/b.png\ns3://other/c.jpg\n")
    assert storage.read_manifest(f"{root}/in.lst") == [
        f"{root}/imgs/a.jpg",
        f"s3://{s3_bucket}/jobs/shared/b.png",
        "s3://other/c.jpg",
    ]
    storage.write_text(f"{root}/in.csv", "uri,label\nimgs/a.jpg,x\n/abs/b.jpg,y\n")
    assert storage.read_manifest(f"{root}/in.csv") == [f"{root}/imgs/a.jpg", "/abs/b.jpg"]
    buf = io.BytesIO()
    pq.write_table(pa.table({"n": [1, 2], "path": ["imgs/a.jpg", "imgs/b.jpg"]}), buf)
    storage.write_bytes(f"{root}/in.parquet", buf.getvalue())
    assert storage.read_manifest(f"{root}/in.parquet") == [f"{root}/imgs/a.jpg", f"{root}/imgs/b.jpg"]
    assert storage.resolve_inputs(f"{root}/in.parquet") == [f"{root}/imgs/a.jpg", f"{root}/imgs/b.jpg"]
    storage.write_text(f"{root}/up.txt", "../../x.jpg\n../../../x.jpg\n")
    with pytest.raises(StorageError, match="above bucket"):
        storage.read_manifest(f"{root}/up.txt")


def test_resolve_inputs_on_s3(s3_tree: str) -> None:
    assert _rel(storage.resolve_inputs(s3_tree + "/sub"), s3_tree) == ["sub/c.jpg", "sub/deep/d.tif"]
    assert _rel(storage.resolve_inputs(s3_tree + "/**/*.jpg"), s3_tree) == ["a.jpg", "sub/c.jpg"]
    # A manifest-looking name that is not an object falls back to listing (and then finds nothing).
    with pytest.raises(ObjectNotFoundError, match="no inputs matched"):
        storage.resolve_inputs(s3_tree + "/missing.csv")
    with pytest.raises(ObjectNotFoundError, match="none ending in"):
        storage.resolve_inputs(s3_tree + "/sub/deep", suffixes=(".jpg",))


# ---------------------------------------------------------------------------------------------- pyarrow


def test_pyarrow_filesystem_reads_and_writes(s3_server: S3Server, s3_bucket: str) -> None:
    storage.write_bytes(f"s3://{s3_bucket}/pa/in.bin", b"written by boto3")
    fs, path = storage.pyarrow_filesystem(f"s3://{s3_bucket}/pa/in.bin")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{s3_bucket}/pa/in.bin"
    with fs.open_input_stream(path) as f:
        assert f.read() == b"written by boto3"

    fs, folder = storage.pyarrow_filesystem(f"s3://{s3_bucket}/pa/out/")
    assert folder == f"{s3_bucket}/pa/out"
    pq.write_table(pa.table({"uri": ["x"]}), f"{folder}/part-0.parquet", filesystem=fs)
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{s3_bucket}/pa/out/part-0.parquet")))
    assert table.column("uri").to_pylist() == ["x"]


def test_pyarrow_filesystem_explicit_endpoint(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.write_bytes(f"s3://{s3_bucket}/k.bin", b"abc")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    fs, path = storage.pyarrow_filesystem(
        f"s3://{s3_bucket}/k.bin", StorageConfig(endpoint_url=s3_server.endpoint_url, region="us-east-1")
    )
    assert fs.get_file_info(path).size == 3


# ----------------------------------------------------------------------------------------------- errors


def test_missing_bucket(s3_server: S3Server) -> None:
    uri = "s3://no-such-bucket-ocrjobs/k.txt"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.exists(uri),
        lambda: storage.size(uri),
        lambda: storage.list_files("s3://no-such-bucket-ocrjobs/prefix"),
    ):
        with pytest.raises(BucketNotFoundError, match="no-such-bucket-ocrjobs") as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert s3_server.endpoint_url in str(info.value)
    assert not storage.exists("s3://no-such-bucket-ocrjobs")


def test_missing_key(s3_server: S3Server, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/missing/key.bin"
    with pytest.raises(ObjectNotFoundError, match=r"missing/key\.bin") as info:
        storage.read_bytes(uri)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.uri == uri
    with pytest.raises(ObjectNotFoundError):
        storage.size(uri)
    with pytest.raises(ObjectNotFoundError):
        storage.read_manifest(f"s3://{s3_bucket}/missing.csv")


def test_unreachable_endpoint_fails_fast(s3_server: S3Server) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(EndpointUnreachableError) as info:
        storage.read_bytes("s3://bucket/key", StorageConfig(endpoint_url=closed))
    assert time.monotonic() - start < 15  # default retries with backoff, not minutes of hanging
    assert isinstance(info.value, ConnectionError)
    assert closed in str(info.value)
    assert "storage.endpoint_url" in str(info.value)


def test_unreachable_endpoint_names_env_var(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("OCRJOBS_S3_ENDPOINT", closed)
    with pytest.raises(EndpointUnreachableError, match="OCRJOBS_S3_ENDPOINT") as info:
        storage.list_files("s3://bucket/prefix", StorageConfig(retries=0))
    assert closed in str(info.value)


# ------------------------------------------------------------------ credentials, on a server that checks them


@dataclass(frozen=True)
class AuthServer:
    """A moto server with IAM auth on: ``reader`` may read ``bucket``; ``nobody`` has no policy."""

    endpoint_url: str
    bucket: str
    reader: tuple[str, str]
    nobody: tuple[str, str]


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    """A second moto server whose first few requests (the setup below) skip auth; every later request
    needs valid IAM credentials. A separate process so the session's server stays permissive."""
    import boto3

    setup_actions = 7
    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(setup_actions))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto auth server did not start") from None
                time.sleep(0.2)
        admin = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam, s3 = boto3.client("iam", **admin), boto3.client("s3", **admin)
        keys = {}
        for user in ("reader", "nobody"):
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        bucket = "auth-bucket"
        iam.put_user_policy(
            UserName="reader",
            PolicyName="read",
            PolicyDocument=(
                '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
                f'"Resource": ["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]}}]}}'
            ),
        )
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="secret-doc.txt", Body=b"for readers only")
        yield AuthServer(endpoint, bucket, keys["reader"], keys["nobody"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def use_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Set the AWS chain's env credentials for one test (no profile, no session token)."""

    def _set(access_key: str, secret_key: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)

    yield _set


def test_valid_credentials_from_the_chain(auth_server: AuthServer, use_credentials) -> None:  # type: ignore[no-untyped-def]
    use_credentials(*auth_server.reader)
    cfg = StorageConfig(endpoint_url=auth_server.endpoint_url, region="us-east-1")
    uri = f"s3://{auth_server.bucket}/secret-doc.txt"
    assert storage.read_text(uri, cfg) == "for readers only"
    # pyarrow gets no keys from us: it must find the same env credentials itself.
    fs, path = storage.pyarrow_filesystem(uri, cfg)
    with fs.open_input_stream(path) as f:
        assert f.read() == b"for readers only"


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("unknown", "InvalidAccessKeyId"),
        ("wrong_secret", "SignatureDoesNotMatch"),
        ("nobody", "AccessDenied"),
    ],
)
def test_bad_credentials(auth_server: AuthServer, use_credentials, who: str, code: str) -> None:  # type: ignore[no-untyped-def]
    access_key = {
        "unknown": "AKIAUNKNOWNKEY000000",
        "wrong_secret": auth_server.reader[0],
        "nobody": auth_server.nobody[0],
    }[who]
    secret = auth_server.nobody[1] if who == "nobody" else PLANTED_SECRET
    use_credentials(access_key, secret)
    cfg = StorageConfig(endpoint_url=auth_server.endpoint_url, region="us-east-1")
    uri = f"s3://{auth_server.bucket}/secret-doc.txt"
    errors = []
    for call in (
        lambda: storage.read_bytes(uri, cfg),
        lambda: storage.write_bytes(uri, b"x", cfg),
        lambda: storage.list_files(f"s3://{auth_server.bucket}/", cfg),
        lambda: storage.exists(uri, cfg),
    ):
        with pytest.raises(AccessDeniedError, match="AWS credential chain") as info:
            call()
        assert isinstance(info.value, PermissionError)
        errors.append(info.value)
    assert code in str(errors[0])
    for exc in errors:
        text = _all_text(exc)
        assert secret not in text
        assert access_key not in text
        assert exc.__cause__ is None and exc.__context__ is None


def test_planted_secret_never_in_any_error(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other error paths too: the permissive server accepts the key, so these fail for other reasons.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED_SECRET)
    closed = StorageConfig(endpoint_url=f"http://127.0.0.1:{_free_port()}", retries=0)
    calls = [
        lambda: storage.read_bytes(f"s3://{s3_bucket}/missing"),
        lambda: storage.read_bytes("s3://no-such-bucket-ocrjobs/x"),
        lambda: storage.write_bytes("s3://bucket/x", b"x", closed),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert PLANTED_SECRET not in _all_text(info.value)
