"""From a config's data section to Ray Datasets of prepared training rows.

The driver lists *items* (labels only, no image is opened): each labelled source through the task's
:meth:`~ocrjobs.training.task.TrainTask.record_items`, each synthetic generator as seeded items. Weights,
``limit`` and the item order are applied here with seeded generators, so the same config gives the same
items on every run. :func:`to_dataset` then builds ``from_items -> map_batches(task.prepare_fn)``: the
decoding, augmentation and target building run as Ray Data CPU tasks, streamed into the training workers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ocrjobs.config import ConfigError
from ocrjobs.data.records import Record
from ocrjobs.training.config import DataSource, SplitConfig, TrainConfig
from ocrjobs.training.task import Batch, Item, TrainTask

if TYPE_CHECKING:
    import ray.data

__all__ = ["SPLITS", "DataPlan", "SplitPlan", "plan_data", "plan_split", "prepare_locally", "to_dataset"]

SPLITS = ("train", "val")
_SYNTH_STREAM = 1000  # seed-stream offset that keeps synthetic seeds apart from source subsets


@dataclass
class SplitPlan:
    """The items of one split and what they came from.

    Attributes:
        name: ``train`` or ``val``.
        items: items in the order they are prepared.
        rows: training rows the items expand to.
        sources: one human-readable line per source (for ``--dry-run`` and the logs).
        records: the labelled records read (the train split's feed the synthetic vocabulary).
    """

    name: str
    items: list[Item] = field(default_factory=list)
    rows: int = 0
    sources: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


@dataclass
class DataPlan:
    """The items of every split of a run.

    Attributes:
        splits: ``train`` and, when configured, ``val``.
        vocabulary: words of the train split's labels, most frequent first: what synthetic generators
            write (empty when no split has a synthetic generator).
    """

    splits: dict[str, SplitPlan]
    vocabulary: tuple[str, ...] = ()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0])


def _weighted(items: list[Item], weight: float, rng: np.random.Generator) -> list[Item]:
    """``weight`` whole copies of ``items`` plus a seeded subset for the fractional part."""
    whole = math.floor(weight)
    extra = round((weight - whole) * len(items))
    picked = sorted(rng.permutation(len(items))[:extra].tolist())
    return items * whole + [items[i] for i in picked]


def _part(source: DataSource) -> str:
    parts = []
    if source.holdout_every is not None:
        kind = "held-out" if source.holdout else "fit"
        parts.append(f"{kind} part, 1 in {source.holdout_every} held out")
    if source.val_every is not None:
        kind = "validation" if source.val else "training"
        parts.append(f"{kind} part, 1 in {source.val_every} for validation")
    return f" ({'; '.join(parts)})" if parts else ""


def plan_split(task: TrainTask, cfg: TrainConfig, split: SplitConfig, name: str) -> SplitPlan:
    """List the items of one split.

    Args:
        task: the task (turns records into items).
        cfg: the run config (seed, task settings).
        split: the split's sources and generators.
        name: ``train`` or ``val``; only ``train`` rows are augmented later.

    Returns:
        The plan (empty when the split has no sources).

    Raises:
        ConfigError: a synthetic generator the task does not know, or a source that yields no items.
    """
    from ocrjobs.data.formats import load_records

    split_index = SPLITS.index(name)
    train = name == "train"
    plan = SplitPlan(name=name)
    for i, source in enumerate(split.sources):
        records = source.select(load_records(source.uri, source.format))
        plan.records += records
        items = task.record_items(records, train)
        if not items:
            raise ConfigError(
                f"data.{name}.sources[{i}]: {source.format} data at {source.uri} gives no usable items "
                f"({len(records)} records read)"
            )
        if source.case == "insensitive":
            for item in items:
                item.payload["anycase"] = True
        kept = _weighted(items, source.weight, np.random.default_rng(_seed(cfg.seed, split_index, i)))
        plan.items += kept
        rows = sum(item.rows for item in kept)
        plan.sources.append(
            f"{source.format} {source.uri}{_part(source)}: {len(records)} records -> {len(kept)} items, {rows} rows "
            f"(weight {source.weight:g}{', case-insensitive labels' if source.case == 'insensitive' else ''})"
        )
    for g, synth in enumerate(split.synthetic):
        if synth.kind not in task.synth_kinds:
            raise ConfigError(
                f"data.{name}.synthetic[{g}].kind: {synth.kind!r} is not a {cfg.task} generator; "
                f"known: {', '.join(task.synth_kinds)}"
            )
        seed = _seed(cfg.seed, split_index, _SYNTH_STREAM + g)
        plan.items += [
            Item({"synth": synth.kind, "seed": seed, "index": n, "options": synth.options})
            for n in range(synth.count)
        ]
        plan.sources.append(f"synthetic {synth.kind}: {synth.count} rows")
    order = np.random.default_rng(_seed(cfg.seed, split_index, _SYNTH_STREAM - 1)).permutation(
        len(plan.items)
    )
    if split.limit is not None:
        order = order[: split.limit]
        plan.sources.append(f"limit: first {len(order)} items of a seeded shuffle")
    plan.items = [plan.items[i] for i in order]
    plan.rows = sum(item.rows for item in plan.items)
    return plan


def plan_data(task: TrainTask, cfg: TrainConfig) -> DataPlan:
    """Plans of the train split and, when it has sources, the val split.

    Raises:
        ConfigError: as :func:`plan_split`, a train split smaller than one batch per worker, or a
            ``val_`` checkpoint metric without a val split.
    """
    from ocrjobs.data.synth import build_vocabulary

    splits = {"train": plan_split(task, cfg, cfg.data.train, "train")}
    if cfg.data.val.sources or cfg.data.val.synthetic:
        splits["val"] = plan_split(task, cfg, cfg.data.val, "val")
    elif cfg.checkpoint.metric.startswith("val_"):
        raise ConfigError(
            f"checkpoint.metric is {cfg.checkpoint.metric!r} but data.val has no sources; add a val split "
            "or rank checkpoints by train_loss"
        )
    per_worker = splits["train"].rows // cfg.scaling.num_workers
    if per_worker < cfg.batch_size:
        raise ConfigError(
            f"data.train gives {splits['train'].rows} rows: {per_worker} per worker, fewer than one batch "
            f"(batch_size {cfg.batch_size}); add data or lower batch_size/scaling.num_workers"
        )
    vocabulary: tuple[str, ...] = ()
    if cfg.data.train.synthetic or cfg.data.val.synthetic:
        # Only train labels feed the generators: val words must not leak into training text.
        vocabulary = tuple(build_vocabulary(splits["train"].records))
    return DataPlan(splits, vocabulary)


def _payloads(items: list[Item]) -> list[dict[str, str]]:
    return [{"item": json.dumps(item.payload)} for item in items]


def to_dataset(
    task: TrainTask, cfg: TrainConfig, plan: SplitPlan, vocabulary: tuple[str, ...]
) -> ray.data.Dataset:
    """The Ray Dataset of prepared rows for a split (lazy: nothing runs until a worker iterates it).

    Args:
        task: the task (its ``prepare_fn`` runs in Ray Data CPU tasks).
        cfg: the run config (preparation batch size and CPUs).
        plan: the split's items.
        vocabulary: words for synthetic generators (:attr:`DataPlan.vocabulary`).

    Returns:
        ``from_items(items).map_batches(prepare)``.
    """
    import ray.data

    dataset = ray.data.from_items(_payloads(plan.items)).map_batches(
        task.prepare_fn(plan.name == "train", vocabulary),
        batch_size=cfg.data.prep_batch_size,
        batch_format="numpy",
        num_cpus=cfg.data.prep_num_cpus,
        compute=ray.data.TaskPoolStrategy(size=cfg.data.prep_tasks),
    )
    # The per-epoch lines are the progress report; Ray Data's bars would repeat every epoch per worker.
    dataset.context.enable_progress_bars = False
    return dataset


def prepare_locally(task: TrainTask, plan: SplitPlan, vocabulary: tuple[str, ...], count: int = 1) -> Batch:
    """Prepare the first ``count`` items in this process, without Ray (``--dry-run`` and tests).

    Returns:
        The prepared rows as one numpy batch.
    """
    payloads = _payloads(plan.items[:count])
    batch = {"item": np.array([p["item"] for p in payloads], dtype=object)}
    return task.prepare_fn(plan.name == "train", vocabulary)(batch)
