"""Ray Data execution settings for the training input.

Ray 2.60's streaming executor blocks in ``ray.wait`` (up to 0.1 s) only while a task it can take output
from is still running. When its consumer is slow (a training worker that takes seconds per batch, so the
train split's queue is full) the scheduling loop runs back to back: finished tasks wait behind output
backpressure, or nothing runs at all. Profiled on the SplitCoordinator of a formula training run on 2
cores, that loop took about a third of a core of resource bookkeeping, beside a training worker that had
one core. :class:`LoopThrottle` holds the loop to one step per :data:`MIN_STEP_INTERVAL_S`.
"""

from __future__ import annotations

import time
from typing import Any

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback

__all__ = ["MIN_STEP_INTERVAL_S", "LoopThrottle", "use_loop_throttle"]

# Ray's own ray.wait timeout in the loop: a step never comes sooner than a blocked wait would have let it.
# Consumers' requests are served by the coordinator's other threads meanwhile, so this only delays
# launching the next preparation task (each takes seconds) by up to this much.
MIN_STEP_INTERVAL_S = 0.1


class LoopThrottle(ExecutionCallback):
    """Sleep away what is left of :data:`MIN_STEP_INTERVAL_S` after a scheduling step that came sooner."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.slept_s = 0.0

    def on_execution_step(self, executor: Any) -> None:
        now = time.perf_counter()
        if self._last is not None:
            wait = MIN_STEP_INTERVAL_S - (now - self._last)
            if wait > 0:
                time.sleep(wait)
                self.slept_s += wait
                now = time.perf_counter()
        self._last = now


def use_loop_throttle(context: DataContext) -> DataContext:
    """Register :class:`LoopThrottle` in ``context``: a dataset's own (``ds.context``, which it carries to
    wherever it executes, e.g. a training run's SplitCoordinator), so the process's DataContext and other
    datasets are left as they are."""
    if LoopThrottle not in context.custom_execution_callback_classes:
        # A new list: a context copied shallowly elsewhere must not gain the callback too.
        context.custom_execution_callback_classes = [*context.custom_execution_callback_classes, LoopThrottle]
    return context
