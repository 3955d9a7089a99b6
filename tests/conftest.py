"""Fixtures shared by unit and integration tests: repository paths and a real S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; CI clones elsewhere, so an env var may point at it too.
SHARED_DATA = Path(os.environ.get("OCRJOBS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: its endpoint and the fake credentials it accepts."""

    endpoint_url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this server (test setup only)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in its own process on 127.0.0.1, with AWS_* env vars pointing at it.

    A separate process (not moto's in-process thread) so Ray workers and a busy test process cannot
    starve it. The env vars are set for the whole session so Ray workers started later inherit them.
    """
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto S3 server did not start") from None
            time.sleep(0.2)
    server = S3Server(endpoint_url=endpoint)
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION=server.region,
    )
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket on the session's S3 server; returns its name."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{name}-{time.monotonic_ns() % 10**8}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real SROIE and im2latex samples); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
