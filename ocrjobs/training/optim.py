"""Optimisers, learning-rate schedules with warm-up, and an exponential moving average of weights.

Plain PyTorch, no Ray: the training loop builds these from :class:`~ocrjobs.training.config.OptimConfig`.

>>> round(lr_factor(0, total_steps=100, warmup_steps=10, schedule="cosine"), 3)
0.1
>>> lr_factor(10, total_steps=100, warmup_steps=10, schedule="cosine")
1.0
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ocrjobs.training.config import OptimConfig

__all__ = ["OPTIMIZERS", "ModelEMA", "build_optimizer", "build_scheduler", "lr_factor", "param_groups"]

# OneCycle's start and end as fractions of the peak, as in torch.optim.lr_scheduler.OneCycleLR.
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4
_ONECYCLE_WARMUP_FRACTION = 0.3


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed group and an undecayed one (biases, norm layers, 1-d tensors).

    Args:
        model: the (unwrapped) network.
        weight_decay: decay of the first group.

    Returns:
        Parameter groups for a ``torch.optim`` optimiser.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # Decaying norm scales and biases only shrinks them towards 0 and hurts accuracy.
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _adamw(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _adam(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr)


def _adadelta(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(groups, lr=cfg.lr)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], OptimConfig], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "adadelta": _adadelta,
}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over ``model``'s trainable parameters.

    Args:
        model: the unwrapped network (build the optimiser before or after DDP wrapping: the
            parameters are the same objects).
        cfg: optimiser settings.

    Returns:
        The optimiser.
    """
    return OPTIMIZERS[cfg.name](param_groups(model, cfg.weight_decay), cfg)


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Args:
        step: steps taken so far.
        total_steps: steps of the whole run (progress is clamped at 1 beyond it).
        warmup_steps: linear warm-up length; ``onecycle`` uses 30% of ``total_steps`` when 0.
        schedule: ``cosine``, ``onecycle`` or ``constant``.
        min_lr_ratio: the floor ``cosine`` decays to.

    Returns:
        The factor (1.0 at the peak).

    Raises:
        ValueError: unknown schedule.
    """
    total_steps = max(total_steps, 1)
    if schedule == "onecycle":
        warmup = warmup_steps or max(1, int(_ONECYCLE_WARMUP_FRACTION * total_steps))
        start, floor = 1.0 / _ONECYCLE_DIV, 1.0 / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)
    elif schedule in ("cosine", "constant"):
        warmup = warmup_steps
        start, floor = 0.0, min_lr_ratio
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected cosine, onecycle or constant")
    if step < warmup:
        # (step + 1) so the very first step already moves the weights.
        return start + (1.0 - start) * (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler following :func:`lr_factor`.

    Args:
        optimizer: the optimiser (its groups' ``lr`` are the peaks).
        cfg: schedule settings.
        total_steps: optimiser steps of the whole run on one worker.

    Returns:
        A ``LambdaLR``; call ``step()`` after every ``optimizer.step()``.
    """

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEMA:
    """Exponential moving average of a model's weights (buffers are copied, not averaged).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so early
    averages are not dominated by the random initialisation.

    Args:
        model: the unwrapped network to track.
        decay: the long-run decay (e.g. 0.999).

    >>> ema = ModelEMA(nn.Linear(2, 2), decay=0.99)
    >>> ema.updates
    0
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights.

        Args:
            model: the unwrapped network being trained (same architecture).
        """
        d = self.current_decay()
        self.updates += 1
        live = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = live[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(value.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and the update count (for checkpoints)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    def to(self, device: torch.device) -> ModelEMA:
        """Move the averaged weights to ``device``; returns ``self``."""
        self.module.to(device)
        return self
