"""The one training loop: plain PyTorch run by every Ray Train worker, for every task.

The only Ray calls are labelled ``# Ray:``. Everything model-specific goes through the task
(:class:`~ocrjobs.training.task.TrainTask`). Per epoch: train over this worker's shard (DDP averages
gradients), average the train loss over workers, validate on rank 0 over the whole val split, write the
checkpoint and the ``metrics.csv`` row on rank 0, report. A restarted or re-run worker group resumes
from the latest checkpoint Ray hands back.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ocrjobs import storage
from ocrjobs.registry import read_model_dir
from ocrjobs.training.checkpoint import (
    RESUME_FILE,
    STATE_FILE,
    checkpoint_dir_name,
    latest_state,
    read_resume_point,
    write_checkpoint,
    write_resume_point,
)
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.optim import ModelEMA, build_optimizer, build_scheduler
from ocrjobs.training.progress import MetricsLog, format_epoch_line
from ocrjobs.training.task import Batch, TrainTask
from ocrjobs.training.tasks import TASKS

log = logging.getLogger(__name__)

__all__ = [
    "CRASH_MARKER",
    "Precision",
    "group_by_width",
    "load_initial_weights",
    "seed_everything",
    "train_func",
]

CRASH_MARKER = "debug_crash_marker"

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """Mixed-precision settings for a device: autocast dtype (``None``: fp32) and a gradient scaler.

    Attributes:
        dtype: autocast dtype of training steps, or ``None`` for full precision.
        scaler: loss scaler (enabled only for fp16, where small gradients would underflow).
        validate_dtype: autocast dtype of validation (CPU validates in fp32, so a run's checkpoints
            compare with those of fp32 runs).
    """

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    validate_dtype: torch.dtype | None = None

    @classmethod
    def for_device(cls, amp: str, device: torch.device, amp_cpu: bool = False) -> Precision:
        """AMP on CUDA as configured; on CPU fp32, or bf16 training steps with ``amp_cpu``.

        Args:
            amp: ``none``, ``bf16`` or ``fp16`` (CUDA).
            device: the worker's device.
            amp_cpu: train in bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16, AMX);
                on one that does not (where bf16 would be emulated), fp32 with a warning.

        Returns:
            The settings.
        """
        if device.type == "cuda":
            dtype = _AMP_DTYPES.get(amp)
            return cls(dtype, torch.amp.GradScaler(device.type, enabled=dtype is torch.float16), dtype)
        dtype = None
        if amp_cpu:
            if cpu_has_bf16():
                dtype = torch.bfloat16
            else:
                log.warning("amp_cpu: this CPU has no native bf16 (AVX512-BF16 or AMX); training in fp32")
        return cls(dtype, torch.amp.GradScaler(device.type, enabled=False))

    def autocast(self, device: torch.device, validate: bool = False) -> AbstractContextManager[Any]:
        """The autocast context for training (or, with ``validate``, validation) forward passes."""
        dtype = self.validate_dtype if validate else self.dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=dtype)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    # torch has no public API for this; oneDNN's own check is the one its bf16 kernels follow.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model initialisation is then identical on every rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def group_by_width(pools: Iterable[Batch], batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Split each pool of rows into ``batch_size`` batches of similar ``valid_w``, in random order.

    Rows with a ``valid_h`` column (variable-height inputs) are sorted by it first: a batch then
    mostly holds one height, as the predictor batches them.

    Args:
        pools: numpy batches of a multiple of ``batch_size`` rows, each with a ``valid_w`` column.
        batch_size: rows per yielded batch.
        rng: orders the batches of each pool.

    Yields:
        Batches of ``batch_size`` rows; a pool's leftover rows (fewer than ``batch_size``) are dropped.
    """
    for pool in pools:
        # Stable sorts: rows of equal size keep the shuffled order they arrived in.
        if "valid_h" in pool:
            order = np.lexsort((pool["valid_w"], pool["valid_h"]))
        else:
            order = np.argsort(pool["valid_w"], kind="stable")
        chunks = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        for j in rng.permutation(len(chunks)):
            yield {key: np.asarray(column)[chunks[j]] for key, column in pool.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _all_reduce_mean(values: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Average sums over all workers (``values`` are this worker's sums over ``count`` batches)."""
    keys = sorted(values)
    local = torch.tensor([*(values[k] for k in keys), float(count)], dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(local)
    total = max(local[-1].item(), 1.0)
    return {k: local[i].item() / total for i, k in enumerate(keys)}


def _maybe_crash(cfg: TrainConfig, rank: int, step: int) -> None:
    """Fault injection for tests: die once, at the configured step, on the configured rank."""
    debug = cfg.debug
    if debug.crash_at_step != step or debug.crash_rank != rank:
        return
    marker = storage.join(cfg.run_uri(), CRASH_MARKER)
    if storage.exists(marker, cfg.storage):
        return
    storage.write_text(marker, f"rank {rank} exited at step {step}\n", cfg.storage)
    os._exit(1)


class _WorkerState:
    """The training objects of one worker: model (DDP-wrapped and raw), optimiser, schedule, AMP, EMA.

    Args:
        task: the run's task.
        cfg: the run's config.
        model: the prepared model (``prepare_model``'s result).
        steps_per_epoch: optimiser steps per epoch on one worker (sizes the schedule).
        device: the worker's device.
    """

    def __init__(
        self, task: TrainTask, cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, device: torch.device
    ) -> None:
        self.task, self.cfg, self.device = task, cfg, device
        self.model = model
        self.raw_model = _unwrap(model)
        # Built after the model moved to its device, so loaded optimiser state lands there too.
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, total_steps=cfg.epochs * steps_per_epoch)
        self.precision = Precision.for_device(cfg.amp, device, cfg.amp_cpu)
        self.ema = ModelEMA(self.raw_model, cfg.optim.ema_decay).to(device) if cfg.optim.ema_decay else None

    def load(self, state: dict[str, Any]) -> None:
        """Restore optimiser, schedule, scaler and EMA from a checkpoint's state (the model is loaded earlier)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])

    def state(self, epoch: int, step: int, elapsed_s: float) -> dict[str, Any]:
        """Everything a checkpoint holds."""
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch,
            "step": step,
            "elapsed_s": elapsed_s,
        }

    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.scheduler.get_last_lr()[0])

    def step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on a numpy batch; returns the loss and its parts."""
        tensors = self.task.collate(batch, self.device)
        with self.precision.autocast(self.device):
            loss, parts = self.task.loss(self.model, tensors)
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.optim.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        return {"loss": float(loss.detach()), **parts}

    def validate(self, shard: Any) -> dict[str, float]:
        """The task's validation metrics over the whole val split (the EMA weights when kept)."""
        evaluated = self.ema.module if self.ema is not None else self.raw_model
        evaluated.eval()
        batches = shard.iter_batches(batch_size=self.cfg.batch_size, batch_format="numpy", drop_last=False)
        with torch.inference_mode(), self.precision.autocast(self.device, validate=True):
            metrics = self.task.validate(evaluated, batches, self.device)
        self.model.train()
        return metrics


def _resume_state(cfg: TrainConfig, steps_per_epoch: int, world: int) -> dict[str, Any] | None:
    """The state to resume from: the newest of Ray's registered checkpoint, the run folder's newest
    checkpoint and the run's mid-epoch resume point (when it continues the epoch after that one).

    ``ray.train.get_checkpoint()`` is what the Train controller registered; when a worker dies right
    after a report, the restarted group can get the previous epoch although rank 0 already persisted
    the newer folder (seen as a restart from epoch 1 after a crash in epoch 2). Every rank reads the
    same folder, so the ranks normally agree on the epoch and the resume point's batch;
    :func:`_check_ranks_agree` makes sure.
    """
    import ray.train

    state: dict[str, Any] | None = None
    epoch = 0
    checkpoint = ray.train.get_checkpoint()  # Ray: the latest registered checkpoint, else None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
        epoch = int(state["epoch"])
    newer = latest_state(cfg.run_uri(), cfg.storage, newer_than=epoch)
    if newer is not None:
        info, state = newer
        print(
            f"[{cfg.name}] resuming from {info.uri} (newer than Ray's registered epoch {epoch})", flush=True
        )
        epoch = info.epoch
    if cfg.checkpoint.every_minutes is not None:
        point = read_resume_point(cfg.run_uri(), epoch, steps_per_epoch, world, cfg.storage)
        if point is not None:
            where = point["in_epoch"]
            print(
                f"[{cfg.name}] resuming from the resume point in epoch {where['epoch']} after batch "
                f"{where['batches']} of {steps_per_epoch} (step {point['step']})",
                flush=True,
            )
            state = point
    return state


def _check_ranks_agree(cfg: TrainConfig, where: tuple[int, ...], device: torch.device) -> None:
    """Fail the attempt unless every rank resumes from the same epoch, batch and step.

    Each rank reads the run folder itself; a read that failed on one rank only, or a local run folder
    that is not shared between nodes, would otherwise start the ranks at different points, and their
    collectives would stop matching (an error with gloo, a hang with NCCL). Failing restarts the group
    (``failure.max_failures``), which reads again.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import torch.distributed as dist

    mine = torch.tensor(where, dtype=torch.int64, device=device)
    high, low = mine.clone(), -mine
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    if not torch.equal(high, -low):
        raise RuntimeError(
            f"[{cfg.name}] the ranks would resume from different points (epoch, batch, step between "
            f"{tuple((-low).tolist())} and {tuple(high.tolist())}; this rank {where}): is the run folder "
            f"{cfg.run_uri()} storage every node reads?"
        )


def load_initial_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load ``model.init_from``'s weights: strictly, or into a deeper model of an architecture that can
    grow (``load_deeper``: SATRN), whose extra layers start as identities. Returns the added layers."""
    grow = getattr(model, "load_deeper", None)
    if grow is None:
        model.load_state_dict(weights)
        return []
    return list(grow(weights))


def train_func(config: dict[str, Any]) -> dict[str, int]:
    """Ray Train's per-worker function.

    Args:
        config: ``{"config": TrainConfig as a JSON dict, "train_rows": rows of the train split,
            "splits": names of the datasets given to the trainer}``.

    Returns:
        ``{"start_epoch", "epochs", "step"}`` of this attempt (Ray hands rank 0's to the driver).
    """
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["config"])
    task: TrainTask = TASKS[cfg.task](cfg)
    context = ray.train.get_context()  # Ray: who am I
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()  # Ray: cuda:<local rank> or cpu
    seed_everything(cfg.seed)  # the same initial weights on every rank
    raw_model = task.build_model()
    torch.manual_seed(cfg.seed + 1 + rank)  # but different dropout masks and sampling per rank
    group = cfg.data.group_by_width
    steps_per_epoch = int(config["train_rows"]) // world // (cfg.batch_size * group) * group
    state = _resume_state(cfg, steps_per_epoch, world)
    if state is not None:
        raw_model.load_state_dict(state["model"])
    elif cfg.model.init_from:
        added = load_initial_weights(raw_model, read_model_dir(cfg.model.init_from)[1])
        if added and rank == 0:
            print(f"[{cfg.name}] {cfg.model.init_from}: added {', '.join(added)} as identities", flush=True)
    model = ray.train.torch.prepare_model(raw_model)  # Ray: move to device, wrap in DDP when world > 1
    worker = _WorkerState(task, cfg, model, steps_per_epoch, device)
    start_epoch, step, elapsed_before = 1, 0, 0.0
    # A mid-epoch resume point: batches of start_epoch already trained, and their summed losses.
    start_batch, start_sums = 0, {}
    if state is not None:
        worker.load(state)
        start_epoch, step, elapsed_before = (
            int(state["epoch"]) + 1,
            int(state["step"]),
            float(state["elapsed_s"]),
        )
        if state.get("in_epoch"):
            # rank 0 wrote the sums: they stand in for every rank's first batches in the epoch's mean
            start_batch = int(state["in_epoch"]["batches"])
            start_sums = dict(state["in_epoch"]["sums"])
    _check_ranks_agree(cfg, (start_epoch, start_batch, step), device)

    log = MetricsLog(cfg.run_uri(), cfg.storage)
    if rank == 0:
        # Rows of epochs after the resumed checkpoint were never checkpointed: they are redone.
        log.truncate_after(start_epoch - 1)
        if start_epoch > 1:
            print(f"[{cfg.name}] resuming after epoch {start_epoch - 1} (step {step})", flush=True)
        if start_epoch > cfg.epochs:
            print(f"[{cfg.name}] all {cfg.epochs} epochs already done", flush=True)

    train_shard = ray.train.get_dataset_shard("train")  # Ray: this worker's share of the train rows
    val_shard = ray.train.get_dataset_shard("val") if rank == 0 and "val" in config["splits"] else None
    # Elapsed time counts every attempt of the run, not only this one.
    began = time.monotonic() - elapsed_before
    every_s = cfg.checkpoint.every_minutes * 60 if cfg.checkpoint.every_minutes is not None else None
    last_point = time.monotonic()
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        epoch_start = time.monotonic()
        skip = start_batch if epoch == start_epoch else 0
        sums: dict[str, float] = dict(start_sums) if skip else {}
        batches = skip
        shuffle_seed = (cfg.seed * 1_000_003 + epoch * 1009 + rank) % 2**31
        train_batches: Iterable[Batch] = train_shard.iter_batches(
            batch_size=cfg.batch_size * group,
            batch_format="numpy",
            drop_last=True,  # equal batch counts on every rank keep DDP's collectives in step
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=shuffle_seed,
            prefetch_batches=2,
        )
        if group > 1:
            train_batches = group_by_width(train_batches, cfg.batch_size, np.random.default_rng(shuffle_seed))
        train_batches = iter(train_batches)
        if skip:
            # Resumed mid-epoch: the stream restarts with the epoch's own shuffle seed and its first
            # ``skip`` batches (about the ones trained before; Ray Data does not fix the block order) pass
            # by untrained; the rate counts the batches trained from here.
            collections.deque(itertools.islice(train_batches, skip), maxlen=0)
            epoch_start = time.monotonic()
        for batch in train_batches:
            for key, value in worker.step(batch).items():
                sums[key] = sums.get(key, 0.0) + value
            step += 1
            batches += 1
            _maybe_crash(cfg, rank, step)
            if (
                rank == 0
                and every_s is not None
                and batches < steps_per_epoch
                and time.monotonic() - last_point >= every_s
            ):
                elapsed = time.monotonic() - began
                where = {
                    "epoch": epoch,
                    "batches": batches,
                    "steps_per_epoch": steps_per_epoch,
                    "world": world,
                    "sums": sums,
                }
                # A point that cannot be written is reported; the run goes on (epoch checkpoints count).
                try:
                    write_resume_point(
                        cfg.run_uri(), worker.state(epoch - 1, step, elapsed), where, cfg.storage
                    )
                except (storage.StorageError, OSError) as exc:
                    print(f"[{cfg.name}] resume point not written: {exc}", flush=True)
                last_point = time.monotonic()
            if rank == 0 and cfg.log_every and step % cfg.log_every == 0:
                rate = (batches - skip) * cfg.batch_size * world / max(time.monotonic() - epoch_start, 1e-9)
                print(
                    f"[{cfg.name}] epoch {epoch} step {step} loss {sums['loss'] / batches:.4f} "
                    f"lr {worker.lr():.2e} {rate:.1f} samples/s",
                    flush=True,
                )
        train_s = time.monotonic() - epoch_start
        metrics: dict[str, float] = {"epoch": epoch, "step": step}
        metrics.update({f"train_{k}": v for k, v in _all_reduce_mean(sums, batches, device).items()})

        checkpoint_out = None
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                if val_shard is not None:
                    metrics.update(worker.validate(val_shard))
                metrics.update(
                    lr=worker.lr(),
                    samples_per_s=(batches - skip) * cfg.batch_size * world / max(train_s, 1e-9),
                    epoch_s=time.monotonic() - epoch_start,
                    elapsed_s=time.monotonic() - began,
                )
                write_checkpoint(folder, worker.state(epoch, step, metrics["elapsed_s"]), cfg, metrics)
                checkpoint_out = ray.train.Checkpoint.from_directory(folder)
                # The CSV row goes first: a crash before the report leaves a row that the resumed run
                # drops (truncate_after), never a checkpoint without its row.
                log.append(metrics)
                print(f"[{cfg.name}] {format_epoch_line(metrics, cfg.epochs)}", flush=True)
            # Ray: every rank reports (a barrier); rank 0's checkpoint and metrics are kept.
            ray.train.report(
                metrics, checkpoint=checkpoint_out, checkpoint_dir_name=checkpoint_dir_name(epoch)
            )
        if rank == 0 and every_s is not None:
            # The epoch's checkpoint supersedes its resume point: drop it (model and optimiser, tens of MB)
            # rather than have every restart load it to find it stale.
            try:
                storage.delete(storage.join(cfg.run_uri(), RESUME_FILE), cfg.storage)
            except (storage.StorageError, OSError) as exc:
                print(f"[{cfg.name}] stale resume point not deleted: {exc}", flush=True)
        last_point = time.monotonic()
    return {"start_epoch": start_epoch, "start_batch": start_batch, "epochs": cfg.epochs, "step": step}
