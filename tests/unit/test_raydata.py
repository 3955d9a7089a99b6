"""LoopThrottle: a Ray Data scheduling loop that does not block is held to one step per interval."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray.data import DataContext

from ocrjobs import raydata
from ocrjobs.raydata import MIN_STEP_INTERVAL_S, LoopThrottle, use_loop_throttle


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(raydata.time, "sleep", calls.append)
    return calls


def _clock(monkeypatch: pytest.MonkeyPatch, times: list[float]) -> Iterator[float]:
    ticks = iter(times)
    monkeypatch.setattr(raydata.time, "perf_counter", lambda: next(ticks))
    return ticks


def test_back_to_back_steps_sleep_the_rest_of_the_interval(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steps 1 ms apart (a loop with nothing to wait on); after each sleep the clock has moved on.
    _clock(monkeypatch, [0.0, 0.001, 0.1, 0.101, 0.2])
    throttle = LoopThrottle()
    for _ in range(3):
        throttle.on_execution_step(object())
    assert slept == pytest.approx([MIN_STEP_INTERVAL_S - 0.001] * 2)
    assert throttle.slept_s == pytest.approx(2 * (MIN_STEP_INTERVAL_S - 0.001))


def test_steps_that_blocked_in_ray_wait_do_not_sleep(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(monkeypatch, [0.0, 0.1, 0.25, 1.0])  # each step waited (up to Ray's 0.1 s) for its tasks
    throttle = LoopThrottle()
    for _ in range(4):
        throttle.on_execution_step(object())
    assert slept == [] and throttle.slept_s == 0.0


def test_a_slow_step_counts_toward_the_interval(slept: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    _clock(monkeypatch, [0.0, 0.06, 0.1])
    throttle = LoopThrottle()
    throttle.on_execution_step(object())
    throttle.on_execution_step(object())
    assert slept == pytest.approx([MIN_STEP_INTERVAL_S - 0.06])


def test_use_loop_throttle_registers_once_in_that_context_only() -> None:
    context = DataContext.get_current().copy()
    shared = context.custom_execution_callback_classes  # e.g. the list of a context it was copied from
    assert use_loop_throttle(context) is context
    use_loop_throttle(context)
    assert context.custom_execution_callback_classes.count(LoopThrottle) == 1
    assert LoopThrottle in context.execution_callback_classes  # what Ray's planner instantiates
    assert LoopThrottle not in shared
    assert LoopThrottle not in DataContext.get_current().custom_execution_callback_classes
