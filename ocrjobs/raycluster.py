"""Connecting to Ray the same way from every job (bulk, train, demo, serve).

``ray job submit`` and ``RAY_ADDRESS`` name a cluster: we connect to it. Otherwise a job starts its own
local Ray without the dashboard: the dashboard agent's start-up can exceed the raylet's fixed 30 s wait
on a busy small machine (RAY_NOTES), and a job that only runs locally never needs it.
"""

from __future__ import annotations

import os

__all__ = ["ensure_ray"]


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
        )
    return True
