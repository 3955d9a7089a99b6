"""Optimisers, warm-up schedules and the weight EMA of the training loop."""

from __future__ import annotations

import itertools
import math
import typing

import pytest
import torch
from torch import nn

from ocrjobs.training.config import OptimConfig
from ocrjobs.training.optim import (
    OPTIMIZERS,
    ModelEMA,
    build_optimizer,
    build_scheduler,
    lr_factor,
    param_groups,
)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_warmup_is_linear_up_to_the_peak(schedule: str) -> None:
    factors = [lr_factor(s, total_steps=100, warmup_steps=4, schedule=schedule) for s in range(5)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_cosine_decays_to_the_floor_and_stays() -> None:
    def f(step: int) -> float:
        return lr_factor(step, total_steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)

    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    decay = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_constant_stays_at_the_peak_after_warmup() -> None:
    assert {lr_factor(s, 50, 0, "constant") for s in range(0, 200, 7)} == {1.0}


def test_onecycle_starts_low_peaks_after_30_percent_and_ends_near_zero() -> None:
    factors = [lr_factor(s, total_steps=100, warmup_steps=0, schedule="onecycle") for s in range(101)]
    assert factors[0] == pytest.approx(1 / 25 + (1 - 1 / 25) / 30)
    assert factors[28] < factors[29] == pytest.approx(1.0) == factors[30]
    assert factors[-1] == pytest.approx(1 / (25 * 1e4))


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, 10, 0, "linear")


def test_scheduler_follows_lr_factor_per_step() -> None:
    cfg = OptimConfig(name="adamw", lr=0.1, schedule="cosine", warmup_steps=3, min_lr_ratio=0.0)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * lr_factor(s, 10, 3, "cosine") for s in range(10)])


def test_scheduler_state_resumes_mid_run() -> None:
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=2)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=20)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    resumed_optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    resumed = build_scheduler(resumed_optimizer, cfg, total_steps=20)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert resumed.get_last_lr()[0] == pytest.approx(lr_factor(7, 20, 2, "cosine", cfg.min_lr_ratio))


def test_every_configurable_optimizer_is_in_the_table() -> None:
    names = typing.get_args(OptimConfig.model_fields["name"].annotation)
    assert set(names) == set(OPTIMIZERS)
    for name in names:
        optimizer = build_optimizer(nn.Linear(2, 2), OptimConfig(name=name, lr=0.5))
        assert optimizer.param_groups[0]["lr"] == 0.5


def test_biases_and_norms_get_no_weight_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decayed, plain = param_groups(model, weight_decay=0.05)
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2, 4}
    assert {p.ndim for p in plain["params"]} == {1}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_ema_averages_with_warmed_up_decay() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    expected = 0.0
    for value in (1.0, 2.0, 3.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        d = min(0.9, (1 + ema.updates) / (10 + ema.updates))
        expected = d * expected + (1 - d) * value
        ema.update(model)
    assert ema.module.weight.item() == pytest.approx(expected)
    assert ema.updates == 4


def test_ema_copies_buffers_and_leaves_the_model_alone() -> None:
    model = nn.BatchNorm1d(3)
    ema = ModelEMA(model, decay=0.99)
    model.train()(torch.randn(8, 3))
    ema.update(model)
    assert torch.equal(ema.module.num_batches_tracked, model.num_batches_tracked)
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not ema.module.training


def test_ema_converges_to_a_fixed_model_and_round_trips() -> None:
    model = nn.Linear(4, 4)
    ema = ModelEMA(nn.Linear(4, 4), decay=0.9)
    for _ in range(300):
        ema.update(model)
    for avg, live in zip(ema.module.parameters(), model.parameters(), strict=True):
        assert torch.allclose(avg, live, atol=1e-6)
    restored = ModelEMA(nn.Linear(4, 4), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 300
    assert math.isclose(restored.current_decay(), ema.current_decay())
    assert all(
        torch.equal(a, b) for a, b in zip(restored.module.parameters(), ema.module.parameters(), strict=True)
    )
