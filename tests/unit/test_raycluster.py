"""How jobs start or join Ray (ocrjobs.raycluster): a local Ray's workers are set up quietly."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from ocrjobs import raycluster

POLLER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def test_the_local_ray_sets_up_its_workers_with_the_quiet_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    calls: list[dict[str, Any]] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert raycluster.ensure_ray(num_cpus=1)
    (kwargs,) = calls
    assert kwargs["include_dashboard"] is False
    assert kwargs["runtime_env"] == {"worker_process_setup_hook": "ocrjobs.raycluster.quiet_local_workers"}
    # A cluster (RAY_ADDRESS, `ray job submit`) has its dashboard and state API: nothing is silenced there.
    calls.clear()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    raycluster.ensure_ray()
    assert calls == [{"log_to_driver": True}]


def test_quiet_local_workers_silences_only_the_state_api_poller() -> None:
    poller, other = logging.getLogger(POLLER), logging.getLogger("ray.train")
    saved = poller.level, other.level
    try:
        poller.setLevel(logging.NOTSET)
        raycluster.quiet_local_workers()
        assert poller.level == logging.ERROR
        assert not poller.isEnabledFor(logging.WARNING)
        assert other.level == saved[1]
    finally:
        poller.setLevel(saved[0])


def test_workers_of_a_local_ray_run_the_hook() -> None:
    # Its own process: this one may hold the integration tests' Ray.
    script = textwrap.dedent(
        f"""
        import logging, ray
        from ocrjobs.raycluster import ensure_ray
        ensure_ray(num_cpus=1, log_to_driver=False)
        level = ray.get(ray.remote(lambda: logging.getLogger({POLLER!r}).level).remote())
        ray.shutdown()
        print("LEVEL", level)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"LEVEL {logging.ERROR}" in done.stdout.splitlines(), done.stdout
