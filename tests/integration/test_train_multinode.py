"""Ray Train on a simulated multi-node cluster: a training node lost mid-run, the run resumes.

The cluster (``ray.cluster_utils.Cluster``, all on this machine) is a head of 1 CPU and two worker
nodes of 1 CPU that each carry one unit of a custom ``trainer`` resource; each of the two DDP workers
asks for one unit, so they land on different worker nodes and never on the head. It lives in a helper
process, as in ``test_bulk_multinode`` (whose :class:`SimulatedCluster` it extends with an ``add``
command). The run is ``python -m ocrjobs.jobs.train`` with ``RAY_ADDRESS`` at the cluster, the way
``ray job submit`` runs it. Once the Train controller has registered epoch 1's checkpoint, one worker
node is killed and a replacement joins; the run must finish with each epoch once in ``metrics.csv``,
after restarting from the last reported checkpoint rather than from scratch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ocrjobs.training.checkpoint import STATE_FILE, list_checkpoints
from ocrjobs.training.progress import MetricsLog
from tests.integration.test_bulk_multinode import _ADDRESS_FILE, _PREFIX, REPO, SimulatedCluster

pytestmark = pytest.mark.slow

_RESOURCE = "trainer"
_EPOCHS = 3
# Written by Ray Train's controller whenever it registers a reported checkpoint (Train V2's
# CHECKPOINT_MANAGER_SNAPSHOT_FILENAME): the run folder's record of what ``report`` has returned for.
_SNAPSHOT = "checkpoint_manager_snapshot.json"

_CONFIG = f"""\
name: multinode-rec
task: recognition
model:
  arch: crnn_small
  arch_kwargs: {{channels: [16, 32, 48, 64], hidden: 32}}
  preprocess: {{height: 32, width: 128}}
  charset: {{name: printable}}
data:
  # 64 synthetic lines, no val split, no augmentation, one preparation task at a time: the run costs
  # little beyond Ray's own start-up, and still each epoch takes seconds (its data is prepared again),
  # so the node is lost well inside epoch 2.
  train: {{synthetic: [{{kind: lines, count: 64}}]}}
  augment: false
  prep_batch_size: 64
  prep_num_cpus: 0.5
  prep_tasks: 1
scaling: {{num_workers: 2, resources_per_worker: {{CPU: 0.5, {_RESOURCE}: 1}}}}
optim: {{lr: 0.003, warmup_steps: 2}}
batch_size: 16
epochs: {_EPOCHS}
log_every: 0
checkpoint: {{metric: train_loss, mode: min, num_to_keep: null}}
failure: {{max_failures: 3}}
"""


def _run_cluster() -> None:
    """The helper process: head + two ``trainer`` nodes; stdin commands ``remove``, ``add``, ``quit``."""
    from ray.cluster_utils import Cluster

    previous = Path(_ADDRESS_FILE).read_text() if os.path.exists(_ADDRESS_FILE) else None
    node_args: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 256 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    workers = [cluster.add_node(**node_args, resources={_RESOURCE: 1}) for _ in range(2)]
    cluster.wait_for_nodes(timeout=300)
    print(_PREFIX + json.dumps({"address": cluster.address}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "remove":
                # No graceful stop: a node that crashes or is pre-empted.
                cluster.remove_node(workers.pop(0), allow_graceful=False)
                cluster.wait_for_nodes(timeout=300)  # until the GCS counts it dead
                print(_PREFIX + json.dumps({"removed": True}), flush=True)
            elif command == "add":
                workers.append(cluster.add_node(**node_args, resources={_RESOURCE: 1}))
                cluster.wait_for_nodes(timeout=300)
                print(_PREFIX + json.dumps({"added": True}), flush=True)
            elif command == "quit":
                break
    finally:
        for node in workers:
            cluster.remove_node(node, allow_graceful=False)
        if cluster.head_node is not None:
            cluster.remove_node(cluster.head_node, allow_graceful=False)
        if previous is None:
            Path(_ADDRESS_FILE).unlink(missing_ok=True)
        else:
            Path(_ADDRESS_FILE).write_text(previous)
        os._exit(0)  # Ray ends a process whose cluster's GCS has gone, after a minute of retries


class TrainingCluster(SimulatedCluster):
    """:class:`SimulatedCluster` with ``trainer`` worker nodes, and a way to add one."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from tests.integration.test_train_multinode import _run_cluster; _run_cluster()",
                ],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.address = str(self._reply("address", timeout=420))

    def add_worker(self) -> None:
        """Start one more ``trainer`` node; returns once Ray counts it alive."""
        assert self.process.stdin is not None
        self.process.stdin.write("add\n")
        self.process.stdin.flush()
        self._reply("added", timeout=300)


def _registered_epochs(run: Path) -> set[int]:
    """Epochs whose checkpoints the Train controller has registered (from its snapshot file)."""
    try:
        text = (run / _SNAPSHOT).read_text()
    except OSError:
        return set()
    return {int(n) for n in re.findall(r"epoch_(\d{4})", text)}


def _wait_for_registered_checkpoint(run: Path, driver: subprocess.Popen[str], log: Path) -> set[int]:
    deadline = time.monotonic() + 420
    while not (registered := _registered_epochs(run)):
        assert driver.poll() is None, f"training ended before a checkpoint:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint registered"
        time.sleep(0.1)
    return registered


def test_losing_a_training_node_resumes_from_the_last_reported_checkpoint(tmp_path: Path) -> None:
    cluster = TrainingCluster(tmp_path / "helper.log")
    try:
        config = tmp_path / "train.yaml"
        config.write_text(_CONFIG)
        run = tmp_path / "runs" / "multinode-rec"
        log = tmp_path / "driver.log"
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled"}
        command = [sys.executable, "-m", "ocrjobs.jobs.train", f"--config={config}"]
        with open(log, "w") as out:
            driver = subprocess.Popen(
                [*command, f"--storage-path={run.parent}"],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            registered = _wait_for_registered_checkpoint(run, driver, log)
            written = {
                c.epoch: os.stat(Path(c.uri, STATE_FILE)).st_mtime_ns for c in list_checkpoints(str(run))
            }
            cluster.remove_worker()  # one DDP worker goes with it; the group fails
            # What the restart may pick: anything persisted until the survivors were stopped.
            persisted = max(c.epoch for c in list_checkpoints(str(run)))
            cluster.add_worker()  # the restarted group needs a second trainer node
            driver.wait(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
        output = log.read_text(errors="replace")
        assert driver.returncode == 0, output[-4000:]
    finally:
        cluster.close()

    rows = MetricsLog(str(run)).read()
    assert [row["epoch"] for row in rows] == [float(e) for e in range(1, _EPOCHS + 1)]
    steps = [int(row["step"]) for row in rows]
    assert steps == [steps[0] * e for e in range(1, _EPOCHS + 1)] and steps[0] > 0
    # The restarted group's rank 0 says where it resumed (the first attempt had nothing to resume).
    resumed = [int(k) for k in re.findall(r"resuming after epoch (\d+) \(step", output)]
    assert resumed, "the worker group never restarted: the node was lost after the run ended?"
    assert max(registered) <= resumed[-1] <= persisted < _EPOCHS
    # Epochs up to the resumed one were not trained again: their checkpoints are the first attempt's.
    for epoch, mtime in written.items():
        if epoch <= resumed[-1]:
            path = run / f"epoch_{epoch:04d}" / STATE_FILE
            assert os.stat(path).st_mtime_ns == mtime, f"epoch {epoch} was redone"
    assert [c.epoch for c in list_checkpoints(str(run))] == list(range(1, _EPOCHS + 1))
