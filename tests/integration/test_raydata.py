"""LoopThrottle inside a real Ray Data executor."""

from __future__ import annotations

from typing import Any

import pytest

from ocrjobs.raydata import LoopThrottle


@pytest.mark.usefixtures("ray_session")
def test_a_real_executor_steps_through_the_throttle() -> None:
    import ray
    from ray.data import DataContext

    steps: list[float] = []

    class Probe(LoopThrottle):  # runs in this process: take_all executes in the driver
        def on_execution_step(self, executor: Any) -> None:
            super().on_execution_step(executor)
            steps.append(self.slept_s)

    context = DataContext.get_current()
    saved = list(context.custom_execution_callback_classes)
    context.custom_execution_callback_classes.append(Probe)
    try:
        ds = ray.data.range(64, override_num_blocks=8).map_batches(
            lambda b: {"id": b["id"] * 2}, batch_size=8
        )
        rows = ds.take_all()
    finally:
        context.custom_execution_callback_classes[:] = saved
    assert sorted(r["id"] for r in rows) == [2 * i for i in range(64)]  # nothing lost or repeated
    assert len(steps) >= 2  # Ray called it at every scheduling step
