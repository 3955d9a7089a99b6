"""The driver side of a training run: config -> Ray Datasets -> ``TorchTrainer`` -> summary and export.

This is where Ray Train is configured (``ScalingConfig``, ``RunConfig`` with storage, checkpoint
retention and failure handling); the per-worker loop is :func:`ocrjobs.training.loop.train_func`.
:func:`dry_run` checks a config end to end without Ray: data sources are listed, one item of each split is
prepared in-process, and the model computes a loss on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ocrjobs import storage
from ocrjobs.config import dump_config
from ocrjobs.raycluster import ensure_ray
from ocrjobs.raydata import use_loop_throttle
from ocrjobs.training.checkpoint import (
    COMMAND_FILE,
    CONFIG_FILE,
    CheckpointInfo,
    best_checkpoint,
    list_checkpoints,
)
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.progress import MetricsLog, summary_table

if TYPE_CHECKING:
    import ray.train

__all__ = [
    "TrainingOutcome",
    "absolute_local_paths",
    "dry_run",
    "fit",
    "ray_run_config",
    "scaling_config",
    "worker_config",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    """What a finished run left behind.

    Attributes:
        run_uri: the run folder.
        start_epoch: first epoch trained by the final attempt (``epochs + 1`` when there was nothing
            left to do; larger than 1 when the run resumed).
        start_batch: batches of ``start_epoch`` trained before the final attempt (it continued from a
            mid-epoch resume point, ``checkpoint.every_minutes``); 0 when it began at the epoch's start.
        rows: ``metrics.csv`` rows, one per epoch.
        best: the best checkpoint by the configured metric (``None`` if no checkpoint exists).
        latest: the latest checkpoint.
        exported_to: the model folder written from ``best`` when ``export_to`` is set.
    """

    run_uri: str
    start_epoch: int
    rows: list[dict[str, float | str]]
    best: CheckpointInfo | None
    latest: CheckpointInfo | None
    exported_to: str | None = None
    start_batch: int = 0


def scaling_config(cfg: TrainConfig) -> ray.train.ScalingConfig:
    """Ray Train's ``ScalingConfig`` from the ``scaling`` section."""
    import ray.train

    resources = cfg.scaling.resources_per_worker or {"CPU": cfg.scaling.cpus_per_worker}
    return ray.train.ScalingConfig(
        num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=dict(resources)
    )


def ray_run_config(cfg: TrainConfig) -> ray.train.RunConfig:
    """Ray Train's ``RunConfig``: the run folder, checkpoint retention and failure handling.

    The storage is handed over as a pyarrow filesystem built by :mod:`ocrjobs.storage`, so Ray uses the
    same endpoint settings (``storage`` section, ``OCRJOBS_S3_ENDPOINT``, ``AWS_ENDPOINT_URL``) as the
    rest of ocrjobs; with ``storage_filesystem`` the path is ``bucket/prefix`` without ``s3://``.
    """
    import ray.train

    fs, path = storage.pyarrow_filesystem(cfg.storage_path, cfg.storage)
    return ray.train.RunConfig(
        name=cfg.name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.checkpoint.num_to_keep,
            checkpoint_score_attribute=cfg.checkpoint.metric,
            checkpoint_score_order=cfg.checkpoint.mode,
        ),
    )


def _ingest_options(cfg: TrainConfig) -> Any:
    """Ray Data execution options for the training input.

    With ``data.prep_tasks`` set, the preparation's CPU budget is capped explicitly. Without a cap each
    run's executor budgets against the whole cluster, and two runs sharing one small cluster starved
    each other ("Cluster resources are not enough to run any task").
    """
    import ray.train
    from ray.data import ExecutionResources

    options = ray.train.DataConfig.default_ingest_options()
    if cfg.data.prep_tasks is not None:
        options.resource_limits = ExecutionResources(cpu=cfg.data.prep_tasks * cfg.data.prep_num_cpus)
    return options


def worker_config(cfg: TrainConfig, task: Any) -> TrainConfig:
    """The config the workers get: a formula vocabulary the driver built (e.g. ``build_from`` a local
    im2latex folder, which workers in their own working directory or on other nodes cannot read) is
    passed as its tokens."""
    vocabulary = getattr(task, "vocabulary", None)
    if cfg.task != "latex" or vocabulary is None:
        return cfg
    model = cfg.model.model_copy(update={"charset": vocabulary.to_dict()})
    return cfg.model_copy(update={"model": model})


def absolute_local_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its local run storage and ``model.init_from`` as absolute paths.

    Ray Train workers do not run in the driver's working directory (Train V2 starts them in the run's
    artifacts folder under ``/tmp/ray``): a relative ``storage_path`` there put ``metrics.csv``, the
    resume point and the storage side of resuming into that folder, and a relative ``init_from`` was
    not found. ``s3://`` URIs are left as they are; ``file://`` ones become paths.
    """
    update: dict[str, Any] = {"storage_path": storage.absolute(cfg.storage_path)}
    if cfg.model.init_from:
        update["model"] = cfg.model.model_copy(update={"init_from": storage.absolute(cfg.model.init_from)})
    return cfg.model_copy(update=update)


def fit(cfg: TrainConfig, command: str = "") -> TrainingOutcome:
    """Train (or resume) a run on the Ray cluster this process is connected to.

    Args:
        cfg: the resolved config.
        command: the command line that started the run (kept in the run folder for the model card).

    Returns:
        The outcome; the summary table has been printed.

    Raises:
        ConfigError: the data section gives no usable data (see :func:`~ocrjobs.training.data.plan_data`).
        ray.train.TrainingFailedError: training failed more often than ``failure.max_failures``.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from ocrjobs.training.data import plan_data, to_dataset
    from ocrjobs.training.export import export_checkpoint
    from ocrjobs.training.loop import train_func
    from ocrjobs.training.tasks import TASKS

    ensure_ray()
    cfg = absolute_local_paths(cfg)
    task = TASKS[cfg.task](cfg)
    cfg = worker_config(cfg, task)
    plan = plan_data(task, cfg)
    run_uri = cfg.run_uri()
    storage.write_text(storage.join(run_uri, CONFIG_FILE), dump_config(cfg), cfg.storage)
    if command:
        storage.write_text(storage.join(run_uri, COMMAND_FILE), command + "\n", cfg.storage)
    for split in plan.splits.values():
        logger.info(
            "%s: %d items, %d rows; %s", split.name, len(split.items), split.rows, "; ".join(split.sources)
        )

    datasets: dict[str, Any] = {
        name: to_dataset(task, cfg, split, plan.vocabulary) for name, split in plan.splits.items()
    }
    for dataset in datasets.values():  # the train split's coordinator otherwise spins while the worker trains
        use_loop_throttle(dataset.context)
    if "val" in datasets and cfg.data.cache_val:
        datasets["val"] = datasets["val"].materialize()
    trainer = TorchTrainer(
        train_func,  # type: ignore[arg-type]  # Ray's annotation predates return values (Result.return_value)
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "train_rows": plan.splits["train"].rows,
            "splits": sorted(plan.splits),
        },
        scaling_config=scaling_config(cfg),
        run_config=ray_run_config(cfg),
        datasets=datasets,
        # Only train is sharded: rank 0 validates the whole val split, so corpus metrics are exact.
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=_ingest_options(cfg)
        ),
    )
    result = trainer.fit()
    # Train V2's Result; mypy resolves ray.train.Result to the V1 class, which lacks return_value.
    attempt: dict[str, Any] = result.return_value or {}  # type: ignore[attr-defined]

    rows = MetricsLog(run_uri, cfg.storage).read()
    print(summary_table(rows), flush=True)
    checkpoints = list_checkpoints(run_uri, cfg.storage)
    outcome = TrainingOutcome(
        run_uri=run_uri,
        start_epoch=int(attempt.get("start_epoch", cfg.epochs + 1)),
        rows=rows,
        best=best_checkpoint(run_uri, cfg.checkpoint.metric, cfg.checkpoint.mode, cfg.storage),
        latest=checkpoints[-1] if checkpoints else None,
        start_batch=int(attempt.get("start_batch", 0)),
    )
    if outcome.best is not None:
        score = outcome.best.metrics.get(cfg.checkpoint.metric)
        print(f"best checkpoint: {outcome.best.uri} ({cfg.checkpoint.metric} {score})")
    if cfg.export_to and outcome.best is not None:
        outcome.exported_to = export_checkpoint(outcome.best.uri, cfg.export_to, config=cfg.storage).out
        print(f"exported to {outcome.exported_to}")
    return outcome


def dry_run(cfg: TrainConfig) -> str:
    """Check a config without training: list data, prepare one item per split, run the model once.

    Args:
        cfg: the resolved config.

    Returns:
        A human-readable summary (also what ``ocrjobs train --dry-run`` prints).

    Raises:
        ConfigError: as :func:`fit`, before anything is written.
    """
    import torch

    from ocrjobs.training.data import plan_data, prepare_locally
    from ocrjobs.training.tasks import TASKS

    task = TASKS[cfg.task](cfg)
    cfg = worker_config(cfg, task)
    plan = plan_data(task, cfg)
    lines = [f"run {cfg.name}: {cfg.task} {cfg.model.arch} -> {cfg.run_uri()}"]
    checkpoints = list_checkpoints(cfg.run_uri(), cfg.storage)
    if checkpoints:
        lines.append(f"  resumes after epoch {checkpoints[-1].epoch} ({checkpoints[-1].uri})")
    steps = plan.splits["train"].rows // cfg.scaling.num_workers // cfg.batch_size
    lines.append(
        f"  {cfg.epochs} epochs x {steps} steps/worker, {cfg.scaling.num_workers} workers x batch {cfg.batch_size}"
    )
    for split in plan.splits.values():
        lines.append(f"  {split.name}: {len(split.items)} items, {split.rows} rows")
        lines += [f"    {source}" for source in split.sources]
        rows = prepare_locally(task, split, plan.vocabulary)
        lines.append(
            "    prepared row: " + ", ".join(f"{k} {v.dtype}{list(v.shape[1:])}" for k, v in rows.items())
        )
    model = task.build_model().eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        batch = task.collate(
            prepare_locally(task, plan.splits["train"], plan.vocabulary), torch.device("cpu")
        )
        loss, _ = task.loss(model, batch)
    lines.append(f"  model: {params / 1e6:.2f} M parameters; loss on one prepared row {float(loss):.4f}")
    return "\n".join(lines)
