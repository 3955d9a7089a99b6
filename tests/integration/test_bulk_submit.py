"""``ray job submit --working-dir . -- python -m ocrjobs.jobs.bulk ...`` against a real Ray head.

The head is a second, separate Ray started here with ``ray start --head --block`` from the venv (so a
job's ``python`` is the venv's): its own temp dir (which also holds its ``ray_current_cluster`` file)
and its own ports, so the session's ``ray_session`` Ray and other local Rays are neither found nor
touched. It is stopped by process id, never with ``ray stop``: that command kills every Ray process of
the user on the machine, the session's Ray included.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocrjobs import storage
from tests.conftest import S3Server
from tests.integration.test_bulk import BAD, assert_results, make_images, read_rows, write_tiny_models

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
_PORT_FLAGS = (
    "port",
    "dashboard-port",
    "node-manager-port",
    "object-manager-port",
    "ray-client-server-port",
    "dashboard-agent-grpc-port",
    "dashboard-agent-listen-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (this test's unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _stop(head: subprocess.Popen[bytes], temp_dir: str) -> None:
    """Stop the head started by this test and every process it left, by process id."""
    head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(timeout=20)
    # Leftovers: the head's process group, and processes that left it but run in this head's temp dir.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    for pid in _pids_using(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    head.wait(timeout=10)


def _own_group_and_die_with_parent() -> None:
    """In the child before exec: its own process group, and SIGTERM when the test process dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed test run does not leave a Ray head behind."""
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


_START_ATTEMPTS = 3


def _start_head(env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes], Any, str]:
    """Start a head in its own temp dir on free ports; returns (temp dir, process, log file, address)."""
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths live under it
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={256 * 1024**2}",
        "--disable-usage-stats",
        *(f"--{flag}={port}" for flag, port in ports.items()),
    ]
    log = open(os.path.join(temp_dir, "ray-start.log"), "wb")  # noqa: SIM115 (closed by the fixture)
    head = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_own_group_and_die_with_parent
    )
    return temp_dir, head, log, f"http://127.0.0.1:{ports['dashboard-port']}"


def _wait_for_dashboard(head: subprocess.Popen[bytes], address: str) -> bool:
    """True once the job API answers; False if the head exits or 300 s pass."""
    deadline = time.monotonic() + 300  # ~10 s on an idle 2-core machine; much more on a busy one
    while time.monotonic() < deadline and head.poll() is None:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
            return True
        except OSError:
            time.sleep(1)
    return False


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A separate Ray head with a dashboard on 127.0.0.1; yields its job address and the CLI env."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled")
    # On a busy machine the head can die at start-up (the raylet waits a fixed 30 s for the dashboard
    # agent, whose imports are slow under load): that is the machine, not the job, so start again.
    for attempt in range(_START_ATTEMPTS):
        temp_dir, head, log, address = _start_head(env)
        if _wait_for_dashboard(head, address):
            break
        failure = Path(temp_dir, "ray-start.log").read_text()[-3000:]
        _stop(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if attempt == _START_ATTEMPTS - 1:
            pytest.fail(f"ray start failed {_START_ATTEMPTS} times; last log:\n{failure}")
    try:
        yield address, env
    finally:
        _stop(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_runs_the_bulk_module(
    ray_head: tuple[str, dict[str, str]], s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    address, env = ray_head
    client = s3_server.client()
    # Models on S3 too: the job's actors load them from there, as on a real cluster.
    detector, recognizer = write_tiny_models(tmp_path)
    for folder in (detector, recognizer):
        for file in Path(folder).iterdir():
            client.upload_file(str(file), s3_bucket, f"models/{Path(folder).name}/{file.name}")
    images = {n: d for n, d in make_images(good=4).items() if n in BAD or n.startswith("r")}
    for name, data in images.items():
        client.put_object(Bucket=s3_bucket, Key=f"scans/{name}", Body=data)
    output = f"s3://{s3_bucket}/ocr"

    submit = [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--"]
    bulk = ["python", "-m", "ocrjobs.jobs.bulk", "--input", f"s3://{s3_bucket}/scans/", "--output", output]
    models = [
        f"--detector=s3://{s3_bucket}/models/det_tiny",
        f"--recognizer=s3://{s3_bucket}/models/rec_tiny",
    ]
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(
            [*submit, *bulk, *models, "--shard-size", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        # The dashboard answers before the head's job agent has registered; such a submit created no job.
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    # `ray job submit` follows the job's log and exits non-zero unless the job succeeded.
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "bulk: 8 images processed (4 ok, 4 errors" in result.stdout

    assert_results(read_rows(output), [f"s3://{s3_bucket}/scans/{n}" for n in images])
    summary = json.loads(storage.read_text(f"{output}/_summary.json"))
    assert (summary["processed"], summary["shards"]["written"], summary["cluster"]["CPU"]) == (8, 3, 2.0)
