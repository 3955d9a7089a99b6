"""Connecting to Ray the same way from every job (bulk, train, demo, serve).

``ray job submit`` and ``RAY_ADDRESS`` name a cluster: we connect to it. Otherwise a job starts its own
local Ray without the dashboard: the dashboard agent's start-up can exceed the raylet's fixed 30 s wait
on a busy small machine (RAY_NOTES), and a job that only runs locally never needs it. Without it Ray's
state API is gone, so the workers of a local Ray quiet the one Ray component that polls it
(:func:`quiet_local_workers`).

Jobs size their tasks and actors from :func:`alive_nodes` (what each node has), not from
``ray.cluster_resources()``: a total of 3 CPUs on three 1-CPU nodes cannot host one actor of 1.25 CPU,
and Ray then waits for such an actor forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NodeResources",
    "alive_nodes",
    "describe_nodes",
    "ensure_ray",
    "quiet_local_workers",
    "ray_logs_to_file",
]

# Ray Train's detached PlacementGroupCleaner asks the state API (served by the dashboard) once a second
# whether the train controller still lives, and logs a warning each time it cannot: without a dashboard
# that is one line a second on the terminal of `ocrjobs train`, for the whole run.
_STATE_API_POLLERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


@dataclass(frozen=True)
class NodeResources:
    """What one alive node offers to tasks and actors.

    Attributes:
        node_id: Ray's node id (hex).
        address: the node's IP address.
        cpus: its ``CPU`` resource.
        gpus: its ``GPU`` resource.
    """

    node_id: str
    address: str
    cpus: float
    gpus: float = 0.0


def alive_nodes(entries: Iterable[Mapping[str, Any]] | None = None) -> list[NodeResources]:
    """The alive nodes of the cluster, largest (CPUs, then GPUs) first.

    Args:
        entries: ``ray.nodes()`` entries; ``None`` asks the connected cluster.

    Returns:
        One :class:`NodeResources` per alive node (dead nodes stay in ``ray.nodes()`` for a while).
    """
    if entries is None:
        import ray

        entries = ray.nodes()
    nodes = [
        NodeResources(
            node_id=str(entry.get("NodeID", "")),
            address=str(entry.get("NodeManagerAddress", "")),
            cpus=float(entry.get("Resources", {}).get("CPU", 0.0)),
            gpus=float(entry.get("Resources", {}).get("GPU", 0.0)),
        )
        for entry in entries
        if entry.get("Alive", False)
    ]
    return sorted(nodes, key=lambda n: (n.cpus, n.gpus), reverse=True)


def describe_nodes(nodes: Sequence[NodeResources]) -> str:
    """``"3 alive nodes: 2 CPU, 1 CPU, 1 CPU + 1 GPU"`` (for logs and error messages)."""
    if not nodes:
        return "no alive nodes"
    parts = [f"{n.cpus:g} CPU" + (f" + {n.gpus:g} GPU" if n.gpus else "") for n in nodes]
    shown = ", ".join(parts[:8]) + (f", ... ({len(parts) - 8} more)" if len(parts) > 8 else "")
    return f"{len(nodes)} alive node{'s' if len(nodes) != 1 else ''}: {shown}"


def ensure_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Initialise Ray unless this process already has.

    Args:
        num_cpus: CPUs of a local Ray started here (``None``: all); ignored when connecting to a cluster.
        log_to_driver: forward worker output to this process.

    Returns:
        True when this call initialised Ray (the caller then shuts it down when done).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=log_to_driver)
    else:
        # address="local": a fresh Ray, not a `ray start` instance found by chance on this machine.
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=log_to_driver,
            runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_local_workers"},
        )
    return True


def quiet_local_workers() -> None:
    """Worker set-up of the local Ray :func:`ensure_ray` starts: silence what polls the state API.

    The local Ray has no dashboard, hence no state API, and what polls it could only log its failure
    once a second. Its job (removing a crashed train controller's placement group) has no object here:
    the local Ray ends with the process that started it.
    """
    for name in _STATE_API_POLLERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def ray_logs_to_file(path: str) -> Iterator[None]:
    """Send Ray's own console logging (loggers ``ray`` and ``ray.data``: start-up lines, Ray Data's
    execution plans and periodic progress dumps) to ``path`` while the block runs, so a command's
    terminal shows only its own progress and result; the handlers are restored afterwards.

    Call :func:`ensure_ray` inside the block: Ray's start-up lines are logged there.
    """
    import ray.data  # noqa: F401  # configures Ray Data's console handler, which is swapped here

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    swapped: list[tuple[logging.Logger, logging.Handler]] = []
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                swapped.append((logger, handler))
        logger.addHandler(to_file)
    try:
        yield
    finally:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).removeHandler(to_file)
        for logger, handler in swapped:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        to_file.close()
