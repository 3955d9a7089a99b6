"""The bulk job on a simulated multi-node cluster: 1-CPU nodes, a killed driver, a lost worker node.

The cluster (``ray.cluster_utils.Cluster``: a head and two workers of 1 CPU each, all on this machine)
lives in a helper process of its own, not in the test process: the test process already holds the
session's local Ray, and a process that created a Cluster is terminated by Ray once that cluster's GCS
is gone. The helper takes commands on stdin (``remove``, ``quit``) and removes its nodes by process
when it ends. Each job runs as ``python -m ocrjobs.jobs.bulk`` with ``RAY_ADDRESS`` pointing at the
cluster, the way ``ray job submit`` runs it, so exit codes and a killed driver are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.integration.test_bulk import assert_results, make_images, read_rows, write_tiny_models

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
_PREFIX = "CLUSTER "
_ADDRESS_FILE = "/tmp/ray/ray_current_cluster"


def _run_cluster() -> None:
    """The helper process: start the cluster, print its address, obey stdin, then remove every node."""
    from ray.cluster_utils import Cluster

    # Cluster writes its address into Ray's shared address file; give it back to whoever had it.
    previous = Path(_ADDRESS_FILE).read_text() if os.path.exists(_ADDRESS_FILE) else None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes(timeout=300)
    print(_PREFIX + json.dumps({"address": cluster.address}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "remove":
                # Killed without a graceful stop, as a node that crashes or is pre-empted.
                cluster.remove_node(workers.pop(), allow_graceful=False)
                # Answer once the GCS has marked the node dead: a job started after the reply must see
                # two nodes (the health check takes seconds to notice, longer on a loaded machine).
                cluster.wait_for_nodes(timeout=300)
                print(_PREFIX + json.dumps({"removed": True}), flush=True)
            elif line.strip() == "quit":
                break
    finally:
        for node in workers:
            cluster.remove_node(node, allow_graceful=False)
        cluster.remove_node(cluster.head_node, allow_graceful=False)
        if previous is None:
            Path(_ADDRESS_FILE).unlink(missing_ok=True)
        else:
            Path(_ADDRESS_FILE).write_text(previous)
        # Exit now: Ray ends a process whose cluster's GCS has gone, after a minute of retries.
        os._exit(0)


class SimulatedCluster:
    """The helper process and the address of its cluster.

    Args:
        log: where the helper's stderr goes (read back when it fails).
    """

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from tests.integration.test_bulk_multinode import _run_cluster; _run_cluster()",
                ],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.address = str(self._reply("address", timeout=420))

    def _reply(self, key: str, timeout: float) -> Any:
        stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        deadline = time.monotonic() + timeout
        for line in stdout:  # the helper answers one line per command; other output is Ray's
            if line.startswith(_PREFIX):
                return json.loads(line[len(_PREFIX) :])[key]
            assert time.monotonic() < deadline, f"no {key} from the cluster helper"
        raise RuntimeError(
            f"the cluster helper exited with {self.process.wait()} before saying {key}:\n"
            + self.log.read_text(errors="replace")[-3000:]
        )

    def remove_worker(self) -> None:
        """Kill one worker node (its raylet, object store and workers); returns once Ray counts it dead."""
        assert self.process.stdin is not None
        self.process.stdin.write("remove\n")
        self.process.stdin.flush()
        self._reply("removed", timeout=120)

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its nodes' reapers then stop the nodes
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedCluster]:
    simulated = SimulatedCluster(tmp_path_factory.mktemp("cluster") / "helper.log")
    try:
        yield simulated
    finally:
        simulated.close()


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, dict[str, bytes]]:
    """60 images (4 unreadable, as in the fault report) in a folder, and the tiny models' folders."""
    root = tmp_path_factory.mktemp("multinode")
    detector, recognizer = write_tiny_models(root)
    images = make_images(good=56)
    (root / "in").mkdir()
    for name, data in images.items():
        (root / "in" / name).write_bytes(data)
    return root / "in", detector, recognizer, images


def _command(inputs: tuple[Path, str, str, dict[str, bytes]], output: Path, *options: str) -> list[str]:
    folder, detector, recognizer, _ = inputs
    return [
        sys.executable,
        "-m",
        "ocrjobs.jobs.bulk",
        f"--input={folder}",
        f"--output={output}",
        f"--detector={detector}",
        f"--recognizer={recognizer}",
        *options,
    ]


def _env(cluster: SimulatedCluster) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled"}


def _run(
    cluster: SimulatedCluster, command: list[str], timeout: float = 420
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=_env(cluster), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _parts(output: Path) -> list[Path]:
    folder = output / "parquet"
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _wait_for_first_shard(driver: subprocess.Popen[str], output: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while not _parts(output):
        assert driver.poll() is None, f"the job ended (exit {driver.returncode}) before writing a shard"
        assert time.monotonic() < deadline, "no shard written"
        time.sleep(0.05)


def _summary(output: Path) -> dict[str, Any]:
    return json.loads((output / "_summary.json").read_text())


def _assert_exactly_once(inputs: tuple[Path, str, str, dict[str, bytes]], output: Path) -> None:
    folder, _, _, images = inputs
    assert_results(read_rows(str(output)), [str(folder / n) for n in images])


def test_bulk_job_finishes_exactly_once_on_one_cpu_nodes(
    cluster: SimulatedCluster, job_inputs: tuple[Path, str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    # Sized from the cluster's 3 CPUs, the actors asked 1.25 CPU, which no node has: 0 rows, forever.
    output = tmp_path / "out"
    result = _run(cluster, _command(job_inputs, output, "--shard-size=8", "--set=progress_timeout_s=300"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "bulk: 60 images processed (56 ok, 4 errors" in result.stdout
    _assert_exactly_once(job_inputs, output)
    summary = _summary(output)
    assert summary["nodes"] == [{"cpus": 1.0, "gpus": 0.0}] * 3
    assert (summary["status"], summary["shards"]["written"]) == ("complete", 8)
    for pool in ("detection", "recognition"):
        assert (summary["config"][pool]["num_cpus"], summary["config"][pool]["max_size"]) == (0.25, 3)


def test_a_stage_larger_than_every_node_is_refused_at_start(
    cluster: SimulatedCluster, job_inputs: tuple[Path, str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    result = _run(cluster, _command(job_inputs, output, "--set=recognition.num_cpus=1.5"), timeout=300)
    assert result.returncode == 2, result.stderr[-4000:]
    assert (
        "recognition asks 1.5 CPU per actor, more than any node has: the largest has 1 CPU" in result.stderr
    )
    assert "3 alive nodes" in result.stderr
    assert not output.exists()  # refused before anything was written


def test_killed_driver_loses_only_shards_in_flight_and_the_rerun_skips_finished_ones(
    cluster: SimulatedCluster, job_inputs: tuple[Path, str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    command = _command(job_inputs, output, "--shard-size=4", "--set=progress_timeout_s=300")
    driver = subprocess.Popen(
        command, env=_env(cluster), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    _wait_for_first_shard(driver, output)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    kept = {p: p.stat().st_mtime_ns for p in _parts(output)}
    assert 1 <= len(kept) < 15, "the driver was killed after the job had finished"
    # Whatever it was writing when killed may lie there half-done; the re-run removes it.
    leftover = output / "parquet" / ".part-000014-0123abcd.parquet.0a1b2c3d4e5f.tmp"
    leftover.write_bytes(b"partial")

    result = _run(cluster, command)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = _summary(output)
    assert summary["status"] == "complete"
    assert (summary["shards"]["skipped"], summary["shards"]["written"]) == (len(kept), 15 - len(kept))
    assert summary["processed"] == 60 - 4 * len(kept)
    assert summary["temporaries_removed"] >= 1 and not list((output / "parquet").glob(".*.tmp"))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards were not recomputed
    _assert_exactly_once(job_inputs, output)


def test_losing_a_worker_node_mid_run_finishes_or_stops_clearly_and_a_rerun_completes(
    cluster: SimulatedCluster, job_inputs: tuple[Path, str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    # Last in this module: the cluster keeps one worker fewer afterwards.
    output = tmp_path / "out"
    command = _command(job_inputs, output, "--shard-size=4", "--set=progress_timeout_s=60")
    driver = subprocess.Popen(
        command, env=_env(cluster), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_first_shard(driver, output)
    cluster.remove_worker()
    _, stderr = driver.communicate(timeout=600)

    # Actors lost with the node restart on the survivors when they fit; when one cannot, the watchdog
    # stops the job instead of letting it wait forever.
    assert driver.returncode in (0, 3), stderr[-4000:]
    if driver.returncode == 3:
        assert "no result rows reached the driver for" in stderr and "lost since the job started" in stderr
        assert _summary(output)["status"] == "stalled"
    else:
        assert _summary(output)["status"] == "complete"
    result = _run(cluster, command)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = _summary(output)
    assert summary["status"] == "complete" and len(summary["nodes"]) == 2
    assert summary["shards"]["skipped"] + summary["shards"]["written"] == 15
    _assert_exactly_once(job_inputs, output)
