"""The typed training config: one YAML file per run, loaded into :class:`TrainConfig`.

Every field is documented here; ``configs/train_*.yaml`` are the shipped recipes. The resolved config is
written into the run folder (``storage_path/name/config.yaml``) and into every checkpoint, so a run can be
resumed, audited and exported from its storage alone.

>>> cfg = TrainConfig(
...     name="demo",
...     task="detection",
...     model=ModelConfig(arch="dbnet_mobilenetv3"),
...     data=DataConfig(train=SplitConfig(synthetic=[SynthSource(kind="documents", count=64)])),
... )
>>> cfg.run_uri()
'runs/demo'
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ocrjobs.config import StorageConfig, StrictModel

__all__ = [
    "CheckpointSettings",
    "DataConfig",
    "DataSource",
    "DebugConfig",
    "FailureSettings",
    "ModelConfig",
    "OptimConfig",
    "ScalingSettings",
    "SplitConfig",
    "SynthSource",
    "TrainConfig",
]


class ModelConfig(StrictModel):
    """The network and its pre/post-processing; copied into the exported ``ModelSpec``.

    Attributes:
        arch: key of the task's ``ARCHS`` table (e.g. ``crnn_small``, ``dbnet_mobilenetv3``).
        arch_kwargs: keyword arguments for that builder (the recognizer's class count is filled in
            from the charset, so it need not be given).
        preprocess: input settings shared by training rows and the exported predictor: recognition
            ``height``/``width``; detection ``size`` (square training crop) and ``limit_side``.
        postprocess: predictor output settings (detection ``thresh``, ``box_thresh``, ``unclip_ratio``).
        charset: recognition vocabulary (``{"name": ...}`` or ``{"chars": "..."}``, as the tokenizer
            reads it); ``None`` for detection.
        init_from: optional model folder (``models/<name>`` or ``s3://``) whose weights initialise the
            network before training (fine-tuning). Ignored when the run resumes from a checkpoint.
    """

    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    preprocess: dict[str, Any] = Field(default_factory=dict)
    postprocess: dict[str, Any] = Field(default_factory=dict)
    charset: dict[str, Any] | None = None
    init_from: str | None = None


class DataSource(StrictModel):
    """A labelled dataset read with ``ocrjobs.data.formats.load_records``.

    Attributes:
        uri: folder or file (local path or ``s3://``) in the given format.
        format: format name understood by ``load_records`` (e.g. ``sroie``, ``icdar``, ``json``).
        weight: how often this source's items appear per epoch relative to once: ``2.0`` repeats every
            item twice, ``0.5`` keeps a fixed, seeded half.
        holdout_every: split the source's records (sorted by URI) into a fit part and a held-out part:
            every ``holdout_every``-th record is held out. ``None`` uses every record.
        holdout: with ``holdout_every``, keep the held-out records (``true``, for ``val``) or the rest
            (``false``, for ``train``). The same two numbers in ``train`` and ``val`` never overlap.
        val_every: a second split inside the records kept by ``holdout_every``: every ``val_every``-th
            of them is the validation part. With ``holdout_every`` keeping a dev part for reporting,
            checkpoints are then chosen on the ``val`` part and never on the reported dev part.
        val: with ``val_every``, keep the validation part (``true``) or the rest (``false``).
        case: ``sensitive`` (labels keep the case printed) or ``insensitive`` (labels were transcribed in
            one case whatever the print, e.g. SROIE's capitals): recognition losses then accept either
            case of each letter and validation compares case-folded, so the model learns case only from
            the cased sources.
    """

    uri: str
    format: str
    weight: float = Field(default=1.0, gt=0)
    holdout_every: int | None = Field(default=None, ge=2)
    holdout: bool = False
    case: Literal["sensitive", "insensitive"] = "sensitive"
    val_every: int | None = Field(default=None, ge=2)
    val: bool = False

    def select(self, records: list[Any]) -> list[Any]:
        """The records this source contributes (all, the fit part or the held-out part; then, with
        ``val_every``, the validation part of those or the rest)."""
        return _every(_every(records, self.holdout_every, self.holdout), self.val_every, self.val)


def _every(records: list[Any], every: int | None, part: bool) -> list[Any]:
    """Records sorted by URI: every ``every``-th (``part``) or the others (not ``part``); all without ``every``."""
    if every is None:
        return records
    ordered = sorted(records, key=lambda r: r.uri)
    return [r for k, r in enumerate(ordered) if (k % every == every - 1) == part]


class SynthSource(StrictModel):
    """Synthetic samples rendered on the fly by the data pipeline (``ocrjobs.data.synth``).

    Attributes:
        kind: generator name (``lines`` for text-line crops, ``documents`` for pages with polygons).
        count: samples per epoch. Sample ``i`` is rendered from seed ``(run seed, i)``, so the set is
            the same every epoch and on every worker; augmentation still varies.
        options: keyword arguments for the generator (font sizes, alphabet, page size...).
    """

    kind: str
    count: int = Field(gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class SplitConfig(StrictModel):
    """One split (train or val): labelled sources plus synthetic generators.

    Attributes:
        sources: labelled datasets.
        synthetic: synthetic generators.
        limit: keep at most this many items of the split (a seeded subset); ``None`` keeps all.
    """

    sources: list[DataSource] = Field(default_factory=list)
    synthetic: list[SynthSource] = Field(default_factory=list)
    limit: int | None = Field(default=None, gt=0)


class DataConfig(StrictModel):
    """Training and validation data.

    Attributes:
        train: the split the model learns from.
        val: the split validated after every epoch (on rank 0, over the whole split, so corpus-level
            metrics such as CER and H-mean are exact).
        augment: apply the task's augmentation preset (``ocrjobs.data.augment.DETECTION_PRESET`` or
            ``RECOGNITION_PRESET``) to train rows in the data pipeline. Validation rows are never augmented.
        augment_options: fields of ``ocrjobs.data.augment.Augmenter`` that replace the preset's
            (e.g. ``{rotate_p: 0.2, jpeg_p: 0.0}``).
        crop_size: detection only: side of the square training rows (random crops that never cut a
            line when augmenting, else the page scaled to fit). Pages are first scaled so their longer side
            is ``model.preprocess.limit_side``, as the predictor sees them.
        shuffle_buffer: rows in each worker's local shuffle buffer (reseeded every epoch).
        prep_batch_size: items per ``map_batches`` call of the CPU preparation stage.
        prep_num_cpus: CPUs reserved by each preparation task (fractional on small machines).
        prep_tasks: most preparation tasks running at once for a split (``None``: as many as free CPUs
            allow). Caps memory, and leaves CPUs to other runs sharing the cluster.
        cache_val: prepare the val split once, before training, and keep its rows in the object store
            (validation then costs no data preparation per epoch; turn off when val rows do not fit).
        group_by_width: recognition and latex: pool this many shuffled batches, sort their rows by width
            and train on the resulting batches in random order. CTC batches (and those of attention models
            with ``variable_width``, e.g. SATRN) are trimmed to their widest row, so a wide
            ``preprocess.width`` costs what the lines need rather than the widest line (1: off).
    """

    train: SplitConfig
    val: SplitConfig = Field(default_factory=SplitConfig)
    augment: bool = True
    augment_options: dict[str, Any] = Field(default_factory=dict)
    crop_size: int = Field(default=640, ge=32, multiple_of=32)
    shuffle_buffer: int = Field(default=256, ge=0)
    prep_batch_size: int = Field(default=16, gt=0)
    prep_num_cpus: float = Field(default=1.0, gt=0)
    prep_tasks: int | None = Field(default=None, gt=0)
    cache_val: bool = True
    group_by_width: int = Field(default=1, ge=1)


class ScalingSettings(StrictModel):
    """How many training workers and what each reserves.

    Attributes:
        num_workers: data-parallel workers (DDP ranks).
        use_gpu: one GPU per worker, NCCL and AMP; CPU workers use gloo and fp32.
        cpus_per_worker: CPUs each worker reserves (fractional values let Ray Data tasks share a
            small machine with the workers).
        resources_per_worker: full per-worker resource dict (``{"CPU": 4, "GPU": 1, "memory": ...}``);
            overrides ``cpus_per_worker`` when set.
    """

    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    resources_per_worker: dict[str, float] | None = None


class OptimConfig(StrictModel):
    """Optimiser, learning-rate schedule and weight averaging.

    Attributes:
        name: ``adamw``, ``adam`` or ``adadelta``.
        lr: peak learning rate (reached at the end of warm-up).
        weight_decay: decoupled for AdamW, L2 for Adam/Adadelta. Norm and bias parameters get none.
        schedule: ``cosine`` (decay to ``min_lr_ratio`` × lr), ``onecycle`` (warm-up from lr/25, then
            cosine to ~0) or ``constant``; all are per optimiser step.
        warmup_steps: linear warm-up steps (``onecycle`` uses 30% of all steps when this is 0).
        min_lr_ratio: final learning rate of ``cosine`` as a fraction of ``lr``.
        grad_clip: clip the global gradient norm to this value; ``None`` disables clipping.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999); it
            is what gets validated and exported. ``None`` disables it.
    """

    name: Literal["adamw", "adam", "adadelta"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1)
    grad_clip: float | None = Field(default=5.0, gt=0)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)


class CheckpointSettings(StrictModel):
    """What is kept in the run folder.

    Attributes:
        num_to_keep: checkpoints kept by ``metric`` (the latest one is always kept as well, so a run
            can resume); ``None`` keeps every epoch's checkpoint.
        metric: reported metric that ranks checkpoints (``val_loss``, ``val_cer``, ``val_hmean``...).
        mode: ``min`` or ``max`` for ``metric``.
        every_minutes: also write a resume point (``<run>/resume.pt``, rank 0) every this many minutes
            inside an epoch, so that a run stopped or restarted mid-epoch continues from there instead of
            the epoch's start (long epochs on CPUs); ``None``: only the epoch checkpoints.
    """

    num_to_keep: int | None = Field(default=2, ge=1)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    every_minutes: float | None = Field(default=None, gt=0)


class FailureSettings(StrictModel):
    """Fault tolerance.

    Attributes:
        max_failures: worker-group failures to recover from by restarting from the latest checkpoint
            (``-1``: unlimited, ``0``: fail on the first error).
    """

    max_failures: int = Field(default=3, ge=-1)


class DebugConfig(StrictModel):
    """Fault injection for tests; leave unset in real configs.

    Attributes:
        crash_at_step: optimiser step at which ``crash_rank`` kills its process with ``os._exit(1)``,
            on the first attempt only (a marker file in the run folder records that it happened).
        crash_rank: the rank that crashes.
    """

    crash_at_step: int | None = Field(default=None, ge=1)
    crash_rank: int = Field(default=1, ge=0)


class TrainConfig(StrictModel):
    """A training run.

    Attributes:
        name: run name: the run folder is ``storage_path/name``; re-running the same name resumes
            from its latest checkpoint.
        storage_path: where run folders live (local folder or ``s3://bucket/prefix``).
        storage: S3 endpoint settings for ``s3://`` paths (credentials come from the AWS chain).
        task: ``detection``, ``recognition`` or ``latex`` (a key of ``ocrjobs.training.tasks.TASKS``).
        model: the network and its pre/post-processing.
        data: training and validation data.
        scaling: workers and their resources.
        optim: optimiser and schedule.
        epochs: total epochs of the run (raising it and re-running the same name trains further).
        batch_size: rows per optimiser step per worker.
        seed: seeds model initialisation, data order, synthetic samples and subsets.
        amp: mixed precision on GPU (``bf16`` or ``fp16`` with a gradient scaler); ignored on CPU.
        amp_cpu: on CPU, training steps in bf16 autocast (validation stays fp32) where the CPU computes
            bf16 natively (AVX512-BF16 or AMX; elsewhere fp32 with a warning): a SATRN formula run
            trained 1.24x as many samples/s at the same validation loss on this project's AMD EPYC
            (docs/benchmarks.md, session 22).
        log_every: print a progress line every this many steps on rank 0 (0: only per epoch).
        checkpoint: checkpoint retention.
        failure: fault tolerance.
        export_to: model folder (``models/<name>``) that receives the best checkpoint at the end.
        loss: the task's loss settings (``latex``: ``ocrjobs.training.latex.FormulaLossConfig`` fields);
            the detection and recognition losses take none.
        debug: fault injection for tests.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    storage_path: str = "runs"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    task: Literal["detection", "recognition", "latex"]
    model: ModelConfig
    data: DataConfig
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    amp_cpu: bool = False
    log_every: int = Field(default=50, ge=0)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    failure: FailureSettings = Field(default_factory=FailureSettings)
    export_to: str | None = None
    loss: dict[str, Any] = Field(default_factory=dict)
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @model_validator(mode="after")
    def _check_task_and_data(self) -> TrainConfig:
        if self.task == "recognition" and self.model.charset is None:
            raise ValueError("model.charset is required for task 'recognition'")
        if self.task == "latex" and (self.model.charset or {}).get("name") != "latex":
            raise ValueError("task 'latex' needs model.charset: {name: latex, tokens|vocab|build_from: ...}")
        if self.loss and self.task != "latex":
            raise ValueError(f"loss settings are not used by task {self.task!r}; remove the loss section")
        if self.data.group_by_width > 1 and self.task not in ("recognition", "latex"):
            raise ValueError(f"data.group_by_width is for tasks 'recognition' and 'latex', not {self.task!r}")
        if not self.data.train.sources and not self.data.train.synthetic:
            raise ValueError("data.train needs at least one source or synthetic generator")
        return self

    def run_uri(self) -> str:
        """The run folder: ``storage_path/name`` (a local path or an ``s3://`` URI)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"
