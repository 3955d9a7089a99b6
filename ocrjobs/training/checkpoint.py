"""Training checkpoints: what rank 0 writes, and how to find and read them in a run folder.

A checkpoint is a folder ``storage_path/<run>/epoch_NNNN/`` (Ray Train uploads it) holding:

* ``state.pt`` — ``torch.save`` of a dict of state dicts (model, optimizer, scheduler, grad scaler,
  EMA) plus ``epoch`` and ``step``; loaded with ``weights_only=True`` (no code runs on load).
* ``config.yaml`` — the resolved :class:`~ocrjobs.training.config.TrainConfig` of the run.
* ``meta.json`` — epoch, step and the metrics reported with it (read without torch).

A run with ``checkpoint.every_minutes`` also keeps a **resume point**, ``storage_path/<run>/resume.pt``: the
same state written by rank 0 every few minutes inside an epoch, plus where in the epoch it was
(``in_epoch``). One object, replaced whole (an atomic rename locally, one PUT on S3), so a crash while it
is written leaves the previous one. It is not a checkpoint: it is never validated, listed or exported; a
restarted or re-run run continues from it when it is newer than the last epoch's checkpoint.

These functions need no Ray, so ``ocrjobs export`` runs on any machine that can reach the storage.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig, dump_config
from ocrjobs.training.config import TrainConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "COMMAND_FILE",
    "CONFIG_FILE",
    "META_FILE",
    "RESUME_FILE",
    "STATE_FILE",
    "CheckpointInfo",
    "best_checkpoint",
    "checkpoint_dir_name",
    "latest_state",
    "list_checkpoints",
    "load_state",
    "model_weights",
    "read_checkpoint_config",
    "read_resume_point",
    "resolve_checkpoint",
    "write_checkpoint",
    "write_resume_point",
]

STATE_FILE = "state.pt"
COMMAND_FILE = "command.txt"  # in the run folder: the command line that started the run
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
RESUME_FILE = "resume.pt"  # in the run folder: the latest mid-epoch resume point

logger = logging.getLogger(__name__)

_DIR_PATTERN = re.compile(r"^epoch_(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint found in a run folder.

    Attributes:
        uri: the checkpoint folder.
        epoch: epochs completed when it was written (1-based).
        step: optimiser steps completed.
        metrics: the metrics reported with it.
    """

    uri: str
    epoch: int
    step: int
    metrics: dict[str, float]


def checkpoint_dir_name(epoch: int) -> str:
    """The folder name of the checkpoint written after ``epoch`` (``epoch_0003``)."""
    return f"epoch_{epoch:04d}"


def write_checkpoint(
    directory: str,
    state: dict[str, Any],
    config: TrainConfig,
    metrics: dict[str, float],
) -> None:
    """Write a checkpoint into a local folder (Ray Train then uploads it to the run folder).

    Args:
        directory: an existing local folder.
        state: state dicts and counters; must contain ``epoch`` and ``step``.
        config: the run's resolved config.
        metrics: the metrics reported with this checkpoint.
    """
    import torch

    torch.save(state, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(dump_config(config))
    meta = {"epoch": int(state["epoch"]), "step": int(state["step"]), "metrics": metrics}
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def load_state(uri: str, config: StorageConfig | None = None) -> dict[str, Any]:
    """Load ``state.pt`` of a checkpoint folder (local or ``s3://``) onto the CPU.

    Args:
        uri: the checkpoint folder.
        config: S3 settings.

    Returns:
        The dict :func:`write_checkpoint` saved.
    """
    return _load_torch_file(storage.join(uri, STATE_FILE), config)


def _load_torch_file(uri: str, config: StorageConfig | None) -> dict[str, Any]:
    """A dict ``torch.save`` wrote, onto the CPU, with no code run on load (``weights_only``)."""
    import torch

    data = storage.read_bytes(uri, config)
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state


def read_checkpoint_config(uri: str, config: StorageConfig | None = None) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint folder.

    Raises:
        ConfigError: the stored config does not validate (e.g. written by an incompatible version).
    """
    where = storage.join(uri, CONFIG_FILE)
    raw = yaml.safe_load(storage.read_text(where, config)) or {}
    try:
        return TrainConfig.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid training config: {exc}") from None


def list_checkpoints(run_uri: str, config: StorageConfig | None = None) -> list[CheckpointInfo]:
    """Complete checkpoints in a run folder, oldest first.

    A folder counts only when it has both ``state.pt`` and ``meta.json``, so an upload cut short by a
    lost worker is never picked.

    Args:
        run_uri: ``storage_path/name``.
        config: S3 settings.

    Returns:
        The checkpoints sorted by epoch.
    """
    files = storage.list_files(run_uri, config)
    by_dir: dict[str, set[str]] = {}
    for uri in files:
        folder = storage.parent(uri)
        if _DIR_PATTERN.match(storage.basename(folder)):
            by_dir.setdefault(folder, set()).add(storage.basename(uri))
    found = []
    for folder, names in by_dir.items():
        if {STATE_FILE, META_FILE} <= names:
            meta = json.loads(storage.read_text(storage.join(folder, META_FILE), config))
            found.append(CheckpointInfo(folder, int(meta["epoch"]), int(meta["step"]), meta["metrics"]))
    return sorted(found, key=lambda c: c.epoch)


def latest_state(
    run_uri: str, config: StorageConfig | None = None, newer_than: int = 0
) -> tuple[CheckpointInfo, dict[str, Any]] | None:
    """The newest checkpoint in a run folder whose state loads, with that state.

    Ray Train hands a restarted worker group the checkpoint its controller registered; a worker that
    dies right after a report can beat that registration although rank 0 has already persisted the
    folder. Resuming from storage as well means a checkpoint that ``report`` returned for is never lost.
    A folder whose ``state.pt`` does not load (an upload cut short on a local filesystem) is passed over
    for the one before it.

    Args:
        run_uri: ``storage_path/name``.
        config: S3 settings.
        newer_than: only checkpoints after this epoch are considered.

    Returns:
        ``(checkpoint, state)``, or ``None`` when no complete checkpoint after ``newer_than`` loads.
    """
    for info in reversed(list_checkpoints(run_uri, config)):
        if info.epoch <= newer_than:
            return None
        try:
            return info, load_state(info.uri, config)
        except Exception as exc:  # a truncated or unreadable file: fall back to the previous epoch
            logger.warning("checkpoint %s does not load (%s); trying the one before", info.uri, exc)
    return None


def best_checkpoint(
    run_uri: str, metric: str, mode: str, config: StorageConfig | None = None
) -> CheckpointInfo | None:
    """The checkpoint of a run with the best ``metric`` (ties go to the later epoch).

    Args:
        run_uri: ``storage_path/name``.
        metric: a reported metric name (``val_loss``, ``val_cer``...).
        mode: ``min`` or ``max``.
        config: S3 settings.

    Returns:
        The best checkpoint, or ``None`` when the run has none.

    Raises:
        ValueError: checkpoints exist but none reported ``metric``.
    """
    checkpoints = list_checkpoints(run_uri, config)
    if not checkpoints:
        return None
    scored = [c for c in checkpoints if metric in c.metrics]
    if not scored:
        raise ValueError(
            f"no checkpoint in {run_uri} reports {metric!r} (it has {sorted(checkpoints[-1].metrics)})"
        )
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda c: (sign * float(c.metrics[metric]), c.epoch))


def resolve_checkpoint(uri: str, config: StorageConfig | None = None) -> CheckpointInfo:
    """A checkpoint folder as given, or the best checkpoint of a run folder (by the run's own metric).

    Args:
        uri: a checkpoint folder (``.../epoch_0007``) or a run folder (``storage_path/name``).
        config: S3 settings.

    Returns:
        The checkpoint.

    Raises:
        FileNotFoundError: ``uri`` is neither a checkpoint nor a run folder with checkpoints.
    """
    meta_uri = storage.join(uri, META_FILE)
    if storage.exists(meta_uri, config):
        meta = json.loads(storage.read_text(meta_uri, config))
        return CheckpointInfo(uri.rstrip("/"), int(meta["epoch"]), int(meta["step"]), meta["metrics"])
    run_config_uri = storage.join(uri, CONFIG_FILE)
    if not storage.exists(run_config_uri, config):
        raise FileNotFoundError(
            f"{uri} is neither a checkpoint folder ({META_FILE}) nor a run folder ({CONFIG_FILE})"
        )
    cfg = TrainConfig.model_validate(yaml.safe_load(storage.read_text(run_config_uri, config)) or {})
    best = best_checkpoint(uri, cfg.checkpoint.metric, cfg.checkpoint.mode, config)
    if best is None:
        raise FileNotFoundError(f"run folder {uri} has no complete checkpoint yet")
    return best


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to validate and export: the EMA average when the run kept one, else the model's."""
    ema = state.get("ema")
    weights: dict[str, torch.Tensor] = ema["module"] if ema is not None else state["model"]
    return weights


def write_resume_point(
    run_uri: str,
    state: dict[str, Any],
    in_epoch: dict[str, Any],
    config: StorageConfig | None = None,
) -> None:
    """Replace the run's resume point with ``state`` (as :func:`write_checkpoint` saves it).

    Args:
        run_uri: ``storage_path/name``.
        state: state dicts and counters; ``epoch`` is the last *completed* epoch, ``step`` the steps so far.
        in_epoch: where in the next epoch it was written: ``epoch`` (the epoch in progress), ``batches``
            (batches of it trained), ``steps_per_epoch`` and ``world`` (the geometry the count refers to)
            and ``sums`` (the epoch's summed train losses so far).
        config: S3 settings.
    """
    import torch

    buffer = io.BytesIO()
    torch.save({**state, "in_epoch": in_epoch}, buffer)
    storage.write_bytes(storage.join(run_uri, RESUME_FILE), buffer.getvalue(), config)


def read_resume_point(
    run_uri: str, completed_epoch: int, steps_per_epoch: int, world: int, config: StorageConfig | None = None
) -> dict[str, Any] | None:
    """The run's resume point when it continues the epoch after ``completed_epoch`` with this geometry.

    A point from an epoch already checkpointed is stale; one written with another world size or
    epoch length counts batches of another split of the data (a re-run with other ``--workers``), so
    the run goes back to the epoch checkpoint instead. A point that does not load is passed over.

    Args:
        run_uri: ``storage_path/name``.
        completed_epoch: the epoch of the checkpoint the run would resume from otherwise (0: none).
        steps_per_epoch: optimiser steps per epoch on one worker in this attempt.
        world: workers in this attempt.
        config: S3 settings.

    Returns:
        The saved state (with ``in_epoch``), or ``None``.
    """
    uri = storage.join(run_uri, RESUME_FILE)
    if not storage.exists(uri, config):
        return None
    try:
        state = _load_torch_file(uri, config)
        where = state["in_epoch"]
        epoch, batches = int(where["epoch"]), int(where["batches"])
        geometry = (int(where["steps_per_epoch"]), int(where["world"]))
        where["sums"] = {str(k): float(v) for k, v in where["sums"].items()}
    except Exception as exc:  # an unreadable or foreign file: the epoch checkpoint is still there
        logger.warning("resume point %s does not load (%s); ignored", uri, exc)
        return None
    if epoch != completed_epoch + 1 or not 0 < batches < steps_per_epoch:
        return None
    if geometry != (steps_per_epoch, world):
        logger.warning(
            "resume point %s counts batches of %d steps per epoch on %d workers, this run has %d on %d; "
            "resuming from the epoch checkpoint instead",
            uri,
            *geometry,
            steps_per_epoch,
            world,
        )
        return None
    return state
