"""Export a training checkpoint to a model folder (``models/<name>``) with a generated model card.

The model is rebuilt from the checkpoint's own config, its weights (the EMA average when the run kept
one) are loaded strictly, and the task's predictor describes the folder's ``config.yaml`` — so the
folder loads with ``DetectionPredictor.from_model_dir`` / ``RecognitionPredictor.from_model_dir``
exactly as any other model. No Ray is needed.

:func:`export_folder_onnx` adds ``model.onnx`` (detectors, CTC recognizers) to a folder, checked against
the PyTorch model (``ocrjobs export --onnx``; :mod:`ocrjobs.backends` runs it).

:func:`export_weight_average` writes one folder from several checkpoints of one architecture: their
weights averaged (a "model soup", Wortsman et al. 2022). Sibling fine-tunes of one model folder (the
same start, different data subsets or seeds) land in one basin, and their average often reads better
than each of them (``ocrjobs export --checkpoint A --checkpoint B --out M``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig
from ocrjobs.registry import WEIGHTS_FILE, ModelSpec, read_model_spec, write_model_dir
from ocrjobs.training.checkpoint import (
    COMMAND_FILE,
    META_FILE,
    CheckpointInfo,
    load_state,
    model_weights,
    read_checkpoint_config,
    resolve_checkpoint,
)
from ocrjobs.training.config import TrainConfig

if TYPE_CHECKING:
    import torch

    from ocrjobs.data.records import Record

__all__ = [
    "ExportResult",
    "average_state_dicts",
    "export_checkpoint",
    "export_weight_average",
    "is_model_folder",
    "load_checkpoint_model",
    "model_card",
]


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    Attributes:
        out: the model folder.
        checkpoint: the checkpoint it came from.
        spec: the folder's ``config.yaml``.
    """

    out: str
    checkpoint: CheckpointInfo
    spec: ModelSpec


def load_checkpoint_model(
    uri: str, config: StorageConfig | None = None
) -> tuple[TrainConfig, Any, CheckpointInfo]:
    """Rebuild a checkpoint's model with the weights that get exported.

    Args:
        uri: a checkpoint folder, or a run folder (its best checkpoint by the run's metric).
        config: S3 settings.

    Returns:
        ``(train config, model in eval mode on the CPU, checkpoint)``.
    """
    from ocrjobs.training.tasks import TASKS

    info = resolve_checkpoint(uri, config)
    cfg = read_checkpoint_config(info.uri, config)
    model = TASKS[cfg.task](cfg).build_model()
    model.load_state_dict(model_weights(load_state(info.uri, config)))
    return cfg, model.eval(), info


def _run_command(checkpoint_uri: str, config: StorageConfig | None) -> str | None:
    uri = storage.join(storage.parent(checkpoint_uri), COMMAND_FILE)
    return storage.read_text(uri, config).strip() if storage.exists(uri, config) else None


def _shown(uri: str) -> str:
    """``uri`` relative to the working directory when it is a local path below it (cards travel with the repo)."""
    if "://" in uri or not os.path.isabs(uri):
        return uri
    relative = os.path.relpath(uri)
    return uri if relative.startswith("..") else relative


def _apply_overrides(spec: ModelSpec, overrides: dict[str, Any] | None) -> tuple[ModelSpec, list[str]]:
    """``spec`` with inference settings changed at export, and the card's lines describing the changes."""
    changed: list[str] = []
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in ("preprocess", "postprocess") or not key or "." in key:
            raise ConfigError(
                f"export override {dotted!r}: only preprocess.<key> and postprocess.<key> are allowed"
            )
        settings = dict(getattr(spec, section))
        changed.append(f"`{dotted}`: {settings.get(key, 'unset')} at training -> {value}")
        settings[key] = value
        spec = spec.model_copy(update={section: settings})
    return spec, changed


def _changed_section(changed: list[str]) -> str:
    return (
        "\n## Inference settings changed at export\n\n" + "".join(f"- {c}\n" for c in changed)
        if changed
        else ""
    )


def model_card(
    spec: ModelSpec,
    cfg: TrainConfig,
    info: CheckpointInfo,
    command: str | None,
    no_metrics: str = "No validation split was configured; no metrics were measured.",
    origin: str | None = None,
) -> str:
    """The ``CARD.md`` text of an exported model.

    Args:
        spec: the folder's spec.
        cfg: the run's config.
        info: the exported checkpoint.
        command: the command that trained the run, when it was recorded.
        no_metrics: the metrics section's text when ``spec`` has none.
        origin: what the weights were exported from, when not only ``info`` (default: its folder).

    Returns:
        Markdown.
    """
    origin = origin or f"`{_shown(info.uri)}`"
    lines = [
        f"# {spec.name}",
        "",
        f"{cfg.task} model `{spec.arch}` trained by ocrjobs run `{cfg.name}`, exported from {origin} "
        f"on {dt.date.today().isoformat()} (version `{spec.version}`).",
        "",
        "## Training",
        "",
        f"- command: `{command}`" if command else "- command: not recorded",
        f"- epochs: {info.epoch} of {cfg.epochs} ({info.step} optimiser steps), "
        f"{cfg.scaling.num_workers} worker(s) x batch {cfg.batch_size}, seed {cfg.seed}",
        f"- optimiser: {cfg.optim.name}, lr {cfg.optim.lr:g}, {cfg.optim.schedule} schedule "
        f"({cfg.optim.warmup_steps} warm-up steps), weight decay {cfg.optim.weight_decay:g}"
        + (f", EMA {cfg.optim.ema_decay:g} (exported)" if cfg.optim.ema_decay else ""),
        "",
        "## Data",
        "",
    ]
    for split_name, split in (("train", cfg.data.train), ("val", cfg.data.val)):
        for source in split.sources:
            part = ""
            if source.holdout_every is not None:
                which = "the held-out" if source.holdout else "all but the held-out"
                part = f", {which} 1 in {source.holdout_every} records"
            if source.val_every is not None:
                which = "the validation" if source.val else "all but the validation"
                part += f"; of those, {which} 1 in {source.val_every}"
            if source.case == "insensitive":
                part += "; case-insensitive labels"
            lines.append(f"- {split_name}: `{source.uri}` ({source.format}, weight {source.weight:g}{part})")
        if cfg.model.init_from and split_name == "train":
            lines.append(f"- initialised from the model folder `{_shown(cfg.model.init_from)}`")
        for synth in split.synthetic:
            style = f" ({synth.options['style']} style)" if "style" in synth.options else ""
            lines.append(f"- {split_name}: synthetic `{synth.kind}` x {synth.count}{style}")
        if split.limit is not None:
            lines.append(f"- {split_name}: limited to {split.limit} items")
    lines += ["", "## Metrics", ""]
    if spec.metrics:
        lines += [
            f"Measured by the training run after epoch {info.epoch}, on the whole val split above "
            "(no augmentation).",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(spec.metrics.items())]
    else:
        lines.append(no_metrics)
    return "\n".join(lines) + "\n"


def export_checkpoint(
    checkpoint_uri: str,
    out: str,
    *,
    config: StorageConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExportResult:
    """Write a model folder from a checkpoint.

    Args:
        checkpoint_uri: a checkpoint folder, or a run folder (its best checkpoint is exported).
        out: the model folder to write (local ``models/<name>`` or ``s3://``); its last path component
            is the model name.
        config: S3 settings for both locations.
        overrides: inference settings that differ from training, as dotted keys under ``preprocess.``
            or ``postprocess.`` (e.g. ``{"preprocess.width": 1024}``: a CTC recognizer trained on lines
            squeezed to 256 px reads long lines unsqueezed). They are listed in ``CARD.md``.

    Returns:
        What was written.

    Raises:
        FileNotFoundError: no checkpoint at ``checkpoint_uri``.
        ConfigError: an override outside ``preprocess``/``postprocess``.
    """
    from ocrjobs.training.tasks import TASKS

    cfg, model, info = load_checkpoint_model(checkpoint_uri, config)
    task = TASKS[cfg.task](cfg)
    name = storage.basename(out.rstrip("/"))
    metrics = {k: float(v) for k, v in info.metrics.items() if k.startswith("val_")}
    spec, changed = _apply_overrides(
        task.model_spec(model, name, f"{cfg.name}-epoch{info.epoch}", metrics), overrides
    )
    card = model_card(spec, cfg, info, _run_command(info.uri, config)) + _changed_section(changed)
    write_model_dir(out, spec, model.state_dict(), card)
    return ExportResult(out=out, checkpoint=info, spec=spec)


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of several state dicts of one architecture.

    Floating-point tensors are averaged (in float64, then cast back); integer buffers (e.g. batch-norm
    step counters) are taken from the first.

    Raises:
        ConfigError: fewer than two state dicts, or their keys or shapes differ (not one architecture).
    """
    import torch

    if len(states) < 2:
        raise ConfigError("a weight average needs at least two checkpoints")
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys():
            differing = sorted(set(first) ^ set(state))[:3]
            raise ConfigError(f"checkpoint {i} has other weights than checkpoint 1 (e.g. {differing})")
        shapes = [k for k, v in first.items() if tuple(state[k].shape) != tuple(v.shape)]
        if shapes:
            raise ConfigError(f"checkpoint {i} differs from checkpoint 1 in the shape of {shapes[0]}")
    averaged: dict[str, torch.Tensor] = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = torch.stack([state[key].to(torch.float64) for state in states]).mean(dim=0)
            averaged[key] = total.to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def is_model_folder(uri: str, config: StorageConfig | None = None) -> bool:
    """Whether ``uri`` is an exported model folder (weights file, no checkpoint metadata)."""
    return storage.exists(storage.join(uri, WEIGHTS_FILE), config) and not storage.exists(
        storage.join(uri, META_FILE), config
    )


def _read_folder_weights(uri: str, config: StorageConfig | None) -> tuple[ModelSpec, dict[str, Any], str]:
    """A model folder's spec, weights and a short digest of its weights file (names it in a version)."""
    import hashlib

    from safetensors.torch import load

    raw = storage.read_bytes(storage.join(uri, WEIGHTS_FILE), config)
    return read_model_spec(uri, config), load(raw), hashlib.sha256(raw).hexdigest()[:8]


def export_weight_average(
    checkpoint_uris: Sequence[str],
    out: str,
    *,
    config: StorageConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExportResult:
    """Write a model folder whose weights are the average of several checkpoints' (a model soup).

    Each checkpoint contributes the weights it would export (its EMA average when the run kept one).
    After the first, an ingredient may also be an exported model folder (its weights as they are): the
    parent folder a set of sibling runs started from, which is often itself an average whose source
    checkpoints are gone on a fresh machine. They must be one model: the same task, architecture,
    vocabulary and inference settings. The folder's spec and card come from the first checkpoint; the
    card lists every ingredient with its run's command and metrics. The average itself was never
    validated by a run, so the spec carries no metrics: measure it with ``ocrjobs eval``.

    Args:
        checkpoint_uris: two or more checkpoint or run folders (a run folder gives its best checkpoint);
            all but the first may be model folders.
        out: the model folder to write (it may be one of the ingredients: all are read first).
        config: S3 settings.
        overrides: inference settings that differ from training (as :func:`export_checkpoint`).

    Returns:
        What was written (``checkpoint`` is the first ingredient).

    Raises:
        FileNotFoundError: a checkpoint is missing.
        ConfigError: fewer than two ingredients, the first is a model folder, or they are not one model.
    """
    from ocrjobs.training.tasks import TASKS

    if len(checkpoint_uris) < 2:
        raise ConfigError("a weight average needs at least two --checkpoint")
    if is_model_folder(checkpoint_uris[0], config):
        raise ConfigError(
            f"{checkpoint_uris[0]} is a model folder: the first --checkpoint must be a training checkpoint "
            "or run folder (its run describes the folder written); give model folders after it"
        )
    name = storage.basename(out.rstrip("/"))

    def checkpoint_ingredient(uri: str) -> tuple[TrainConfig, Any, CheckpointInfo, ModelSpec, str | None]:
        part_cfg, part_model, part = load_checkpoint_model(uri, config)
        spec = TASKS[part_cfg.task](part_cfg).model_spec(part_model, name, "", {})
        return part_cfg, part_model, part, spec, _run_command(part.uri, config)

    head = checkpoint_ingredient(checkpoint_uris[0])
    cfg, model, info, first_spec, first_command = head
    states: list[dict[str, Any]] = []
    versions: list[str] = []
    listed: list[str] = []  # the card's ingredient lines
    for i, uri in enumerate(checkpoint_uris):
        if i > 0 and is_model_folder(uri, config):
            spec, weights, digest = _read_folder_weights(uri, config)
            versions.append(f"{spec.name}#{digest}")
            listed.append(
                f"- the model folder `{_shown(uri)}` (version `{spec.version}`, weights sha256 {digest}...; "
                "its own card lists its lineage)"
            )
        else:
            part_cfg, part_model, part, spec, command = head if i == 0 else checkpoint_ingredient(uri)
            weights = part_model.state_dict()
            versions.append(f"{part_cfg.name}-epoch{part.epoch}")
            metrics = ", ".join(
                f"{k} {v:.4f}" for k, v in sorted(part.metrics.items()) if k.startswith("val_")
            )
            listed.append(
                f"- `{_shown(part.uri)}` (run `{part_cfg.name}`, epoch {part.epoch}, {part.step} steps, "
                f"seed {part_cfg.seed}"
                + (f"; {metrics}" if metrics else "")
                + ")"
                + (f": `{command}`" if command else "")
            )
        # As written to config.yaml (tuples become lists), so a folder compares equal to its checkpoint.
        this, first = spec.model_dump(mode="json"), first_spec.model_dump(mode="json")
        differs = [
            field
            for field in ("task", "arch", "arch_kwargs", "charset", "preprocess", "postprocess")
            if this[field] != first[field]
        ]
        if differs:
            raise ConfigError(
                f"{uri} is not the same model as {checkpoint_uris[0]}: its {', '.join(differs)} differ"
            )
        states.append(weights)
    model.load_state_dict(average_state_dicts(states))
    version = "avg(" + "+".join(versions) + ")"
    spec, changed = _apply_overrides(first_spec.model_copy(update={"version": version}), overrides)
    lines = [
        "",
        "## Weight average",
        "",
        f"The weights are the uniform average of {len(states)} ingredients' weights (a model soup): each "
        "checkpoint's exported weights, each model folder's as they are; the sections above describe the "
        "first. The ingredients:",
        "",
        *listed,
    ]
    no_metrics = (
        "The averaged weights were not validated by a training run (each ingredient's own validation is "
        "listed below): measure them with `ocrjobs eval`."
    )
    origin = f"the average of {len(states)} ingredients (below; the first is `{_shown(info.uri)}`)"
    card = model_card(spec, cfg, info, first_command, no_metrics, origin)
    card += "\n".join(lines) + "\n"
    write_model_dir(out, spec, model.state_dict(), card + _changed_section(changed))
    return ExportResult(out=out, checkpoint=info, spec=spec)


@dataclass
class OnnxExport:
    """What :func:`export_folder_onnx` wrote.

    Attributes:
        path: the ``model.onnx`` file (local).
        max_abs_diff: largest difference between PyTorch's and ONNX Runtime's outputs on the check input.
        seconds_torch: one forward pass of the check input with PyTorch.
        seconds_onnx: the same with ONNX Runtime.
    """

    path: str
    max_abs_diff: float
    seconds_torch: float
    seconds_onnx: float


def export_folder_onnx(folder: str) -> OnnxExport:
    """Write ``model.onnx`` into a local model folder (detector or CTC recognizer) and check it.

    The graph has dynamic batch and spatial axes and records the weights it came from, so predictors
    use it only while ``model.safetensors`` is unchanged. It is checked against PyTorch on a fixed
    random input of a realistic size (a 640 x 480 page, or 8 lines 256 px wide).

    Raises:
        ConfigError: the folder is remote, or holds an attention model (its decoder stays in PyTorch).
        RuntimeError: the graph's outputs differ from PyTorch's by more than 1e-3.
    """
    import time

    import torch

    from ocrjobs.backends import ONNX_FILE, OnnxForward
    from ocrjobs.registry import read_model_spec

    if storage.is_s3(folder):
        raise ConfigError(f"{folder}: export --onnx writes into a local model folder")
    spec = read_model_spec(folder)
    generator = torch.Generator().manual_seed(0)
    if spec.task == "detection":
        from ocrjobs.detection.predictor import DetectionPredictor, _ProbMap

        det = DetectionPredictor.from_model_dir(folder, backend="torch")
        module: torch.nn.Module = _ProbMap(det.model)
        example = torch.randn(1, 3, 640, 480, generator=generator)
        path = det.export_onnx(os.path.join(folder, ONNX_FILE))
    else:
        from ocrjobs.recognition.predictor import RecognitionPredictor

        rec = RecognitionPredictor.from_model_dir(folder, backend="torch")
        module = rec.model
        example = torch.randn(8, 3, rec.height, 256, generator=generator)
        path = rec.export_onnx(os.path.join(folder, ONNX_FILE))
    with torch.inference_mode():
        module(example)  # warm-up: the first call allocates
        start = time.perf_counter()
        expected = module(example)
        seconds_torch = time.perf_counter() - start
    runner = OnnxForward(path)
    runner(example)
    start = time.perf_counter()
    got = runner(example)
    seconds_onnx = time.perf_counter() - start
    diff = float((expected - got).abs().max())
    if diff > 1e-3:
        os.unlink(path)
        raise RuntimeError(
            f"{folder}: the ONNX graph differs from PyTorch by {diff:.2e} (> 1e-3); not written"
        )
    return OnnxExport(str(path), diff, seconds_torch, seconds_onnx)


@dataclass
class Int8Export:
    """What :func:`export_folder_int8` wrote.

    Attributes:
        path: the ``model.int8.onnx`` file.
        calibration: the calibration data, as stored in the graph's metadata.
        max_abs_diff: largest difference between the float and the int8 graph's outputs on the first
            calibration batch (int8 rounding: expect a few hundredths to tenths of a logit).
    """

    path: str
    calibration: str
    max_abs_diff: float


def calibration_records(
    sources: Sequence[str], fmt: str, holdout_every: int | None, per_source: int
) -> list[Record]:
    """Up to ``per_source`` labelled pages of each source, spread evenly over it (sorted by name),
    leaving out the held-out dev part (every ``holdout_every``-th page) when given."""
    from ocrjobs.data.formats import load_records
    from ocrjobs.training.config import DataSource

    out: list[Record] = []
    for uri in sources:
        source = DataSource(uri=uri, format=fmt, holdout_every=holdout_every)
        records = sorted(source.select(load_records(uri, fmt)), key=lambda r: r.uri)
        step = max(1, len(records) // max(per_source, 1))
        out += records[::step][:per_source]
    if not out:
        raise ConfigError(f"no calibration pages in {list(sources)}")
    return out


def export_folder_int8(folder: str, records: Sequence[Record]) -> Int8Export:
    """Write ``model.int8.onnx`` into a local detector or CTC recognizer folder, calibrated on ``records``.

    Detectors calibrate on the pages as the predictor feeds them (scaled to ``limit_side``, one per
    batch); recognizers on the records' labelled line crops, in the predictor's batches. Use training
    pages only, and measure the int8 graph on dev data before shipping it (``ocrjobs eval ... --backend
    onnxruntime-int8`` against ``--backend onnxruntime``): ``backend: auto`` runs it wherever it ships.

    Raises:
        ConfigError: the folder is remote or holds an attention model.
    """
    import numpy as np
    import torch

    from ocrjobs.backends import INT8_FILE, OnnxForward, quantize_int8
    from ocrjobs.geometry import crop_polygon
    from ocrjobs.images import read_image, resize_keep_aspect
    from ocrjobs.registry import read_model_spec

    if storage.is_s3(folder):
        raise ConfigError(f"{folder}: export --int8 writes into a local model folder")
    spec = read_model_spec(folder)
    batches: list[np.ndarray] = []
    if spec.task == "detection":
        from ocrjobs.detection.predictor import DetectionPredictor

        det = DetectionPredictor.from_model_dir(folder, backend="onnxruntime")
        fp32 = det._onnx
        mean, std = np.asarray(det.mean, np.float32), np.asarray(det.std, np.float32)
        for record in records:
            image = resize_keep_aspect(read_image(record.uri), det.limit_side, 32)[0]
            batches.append(((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None])
        what = f"{len(batches)} pages"
    else:
        from ocrjobs.recognition.predictor import RecognitionPredictor

        rec = RecognitionPredictor.from_model_dir(folder, backend="onnxruntime")
        fp32 = rec._onnx
        crops = []
        for record in records:
            image = read_image(record.uri)
            crops += [crop_polygon(image, r.polygon()) for r in record.regions if r.text.strip()]
        batches = [batch.numpy() for _, batch in rec._batches(crops)]
        what = f"{len(crops)} line crops of {len(records)} pages"
    assert isinstance(fp32, OnnxForward)
    sources = sorted({_shown(os.path.dirname(r.uri)) for r in records})
    note = f"{what} from {', '.join(sources)}"
    path = quantize_int8(fp32.path, os.path.join(folder, INT8_FILE), batches, note)
    check = torch.from_numpy(batches[0])
    diff = float((OnnxForward(path)(check) - fp32(check)).abs().max())
    return Int8Export(str(path), note, diff)
