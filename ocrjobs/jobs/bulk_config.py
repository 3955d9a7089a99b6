"""The bulk job's configuration: what to read and write, the model folders, and the actor pools sized
to the cluster (:func:`resolve_resources`, :func:`check_fits`); also each model's identity
(:func:`model_id`), which names the shards. Part of :mod:`ocrjobs.jobs.bulk`, which re-exports it."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig, StrictModel
from ocrjobs.limits import DEFAULT_DPI, DEFAULT_MAX_PAGES, DEFAULT_MAX_PIXELS
from ocrjobs.raycluster import NodeResources, describe_nodes

__all__ = [
    "EXIT_STALLED",
    "EXPORT_FORMATS",
    "FORMATS",
    "FORMULA_ENSEMBLE",
    "FORMULA_ENSEMBLE_WEIGHTS",
    "BulkConfig",
    "DecodeConfig",
    "DocumentsConfig",
    "ExportsConfig",
    "PoolConfig",
    "check_fits",
    "default_formula_members",
    "model_id",
    "resolve_resources",
]

log = logging.getLogger("ocrjobs.jobs.bulk")


# The recognizer of ``task: latex`` when none is given: the multi-scale formula ensemble (one SATRN at
# input height 48, at 64, and at 0.75 of the image's size between 64 and 96 px), or whichever of the
# folders exist (default_formula_members).
FORMULA_ENSEMBLE: tuple[str, ...] = ("models/satrn_latex", "models/satrn64_latex", "models/satrn96_latex")
# Their weights in the ensemble's mean score, used whenever the recognizer is FORMULA_ENSEMBLE and the
# config gives no recognizer_weights: fitted on the held-out val part of im2latex train
# (`ocrjobs eval latex --split train --holdout-every 10 --weights ...`), never on validate. configs/serve.yaml
# gives its formula members the same weights.
FORMULA_ENSEMBLE_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 2.0)
# The recognizer of ``task: ocr`` and ``recognize`` when none is given.
_LINE_RECOGNIZER = "models/crnn_doc"

# Output formats and their file extensions: each has its own folder under the output, named like the
# format. Parquet is the completion marker of a shard; the others are ExportsConfig's switches, all
# written through the document model (ocrjobs.results).
_EXTENSIONS: dict[str, str] = {
    "parquet": "parquet",
    "jsonl": "jsonl",
    "hocr": "hocr",
    "alto": "xml",
    "txt": "txt",
    "pdf": "pdf",
}
FORMATS: tuple[str, ...] = tuple(_EXTENSIONS)
EXPORT_FORMATS: tuple[str, ...] = FORMATS[1:]
_PART_RE = re.compile(r"^(part-\d{6}-[0-9a-f]{8})\.([a-z]+)$")
_CONFIG_FILE = "_config.yaml"
_SUMMARY_FILE = "_summary.json"
_JOB_FILES = (_CONFIG_FILE, _SUMMARY_FILE)
# Exit code of a job stopped by the progress watchdog (config errors and unreachable storage give 2).
EXIT_STALLED = 3
# Skipped input files named in _summary.json (all of them are counted).
_SKIPPED_NAMED = 1000


# ------------------------------------------------------------------------------------------------ config


class DecodeConfig(StrictModel):
    """The read + decode stage (Ray tasks).

    Attributes:
        num_cpus: CPUs reserved per decode task; ``None``: 1, or 0.25 when the largest node has at
            most 4 CPUs (so decode tasks and both actor pools fit on it at the same time).
        batch_size: images per decode task, at most the recognition ``batch_size`` (the images of a
            decode task travel together to the driver, so smaller tasks reach it sooner).
        read_threads: objects each task reads concurrently.
    """

    num_cpus: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=16, ge=1)
    read_threads: int = Field(default=8, ge=1)


class PoolConfig(StrictModel):
    """One model stage's actor pool; ``None`` fields are derived from the cluster at start-up.

    Attributes:
        min_size: fewest actors (each loads the model once).
        max_size: most actors; Ray Data scales between the two with the backlog.
        batch_size: images per call of an actor.
        model_batch_size: items per forward pass: images (detection) or line crops (recognition).
        num_cpus: CPUs reserved per actor (fractions allowed).
        num_gpus: GPUs per actor (0.5 lets a detection and a recognition actor share one GPU).
    """

    min_size: int | None = Field(default=None, ge=1)
    max_size: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    model_batch_size: int | None = Field(default=None, ge=1)
    num_cpus: float | None = Field(default=None, gt=0)
    num_gpus: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _sizes_ordered(self) -> PoolConfig:
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size ({self.max_size})")
        return self


class DocumentsConfig(StrictModel):
    """Files of many pages: PDFs (rendered) and multi-page TIFFs (each frame a page).

    Attributes:
        dpi: rendering resolution of PDF pages, dots per inch (150: an A4 page is 1240x1754 pixels,
            above the detector's 1024-pixel input side, with body text about the recognizers' 32-pixel
            line height; see :mod:`ocrjobs.documents`). Each rendered page must stay within
            ``max_pixels`` (else that page's row gets ``too_many_pixels``).
        max_pages: most pages of one file; a file with more is one ``too_many_pages`` row (its
            ``pages`` says how many it has) and none of its pages is read.
        block_mib: most MiB of page pixels per block leaving the read stage (the job's Ray Data
            target block size). A read task renders a document page by page and hands the pages on
            each time they fill a block, so it never holds a whole long document, and the document's
            pages reach the detection actors in many small blocks that all the actors share, instead
            of a few large ones each filling one actor's queue. 16 MiB: two or three A4 pages at 150
            dpi (6 MiB each); the job's other blocks (crops, text) are much smaller anyway.
    """

    dpi: float = Field(default=DEFAULT_DPI, gt=0, le=1200)
    max_pages: int = Field(default=DEFAULT_MAX_PAGES, ge=1)
    block_mib: float = Field(default=16.0, gt=0)


class ExportsConfig(StrictModel):
    """Extra formats written beside the Parquet files, per shard, with the same results.

    Attributes:
        jsonl: ``jsonl/part-*.jsonl``, one JSON object per image (readable by
            ``ocrjobs eval e2e --predictions``: it has the ``image`` and ``lines`` keys).
        hocr: ``hocr/part-*.hocr``, one hOCR page per readable page, lines holding word spans
            (``ocrx_word``) in reading order (error rows are left out).
        alto: ``alto/part-*.xml``, ALTO v4 (``TextLine``/``String`` per word; error rows left out).
        txt: ``txt/part-*.txt``, each page's lines in reading order, pages separated by a form feed
            (an error row is an empty page, so page k of the text is row k of the shard).
        pdf: ``pdf/part-*.pdf``, a searchable PDF of the shard's readable pages: each page image
            (read again from the input on the driver, PDFs rendered at ``documents.dpi``) under an
            invisible text layer of its words. The most expensive export: it reads every input twice.
    """

    jsonl: bool = False
    hocr: bool = False
    alto: bool = False
    txt: bool = False
    pdf: bool = False

    def wanted(self) -> list[str]:
        """The formats switched on, in :data:`EXPORT_FORMATS` order."""
        return [fmt for fmt in EXPORT_FORMATS if getattr(self, fmt)]


class BulkConfig(StrictModel):
    """A bulk OCR job (``configs/bulk.yaml`` documents every field).

    Attributes:
        input: the images and documents (PDF, TIFF): a folder/prefix, a glob, or a manifest
            (``.parquet``/``.csv``/``.txt``/``.lst``).
        output: the output folder (local or ``s3://``); see the module docstring for its layout.
        task: ``ocr`` (detect + recognise), ``recognize`` (each input image is one line crop) or
            ``latex`` (each input image is one formula; ``text`` is its LaTeX).
        detector: detection model folder (``task: ocr``).
        recognizer: recognition model folder, or a list of them read as their propose-and-score
            ensemble (:class:`~ocrjobs.recognition.ensemble.Ensemble`, as Serve combines its members;
            the rows' ``recognizer`` is then the members' ``name@version`` joined by ``+`` and each line
            has every member's own reading in ``members``). For ``task: latex`` formula model folders;
            when the field is not given, :data:`FORMULA_ENSEMBLE` (run with whichever of its folders
            exist, :func:`default_formula_members`); ``null`` means the task's default
            (``models/crnn_doc`` for ``ocr`` and ``recognize``).
        recognizer_weights: an ensemble's members' weights in its mean score, in member order
            (``null``: equal), as Serve's ``members[].weight``. Not given with the recognizer
            :data:`FORMULA_ENSEMBLE`: :data:`FORMULA_ENSEMBLE_WEIGHTS`.
        shard_size: input files per output shard (a shard holds every page of its files).
        max_shards: process at most this many unfinished shards in this run (the next run does the rest).
        max_pixels: largest ``width * height`` of a page (an image, a TIFF frame, a PDF page at
            ``documents.dpi``); larger pages become ``too_many_pixels`` rows.
        documents: PDF rendering and the page limit of multi-page files.
        read_all_files: read every file a folder or glob lists, so a file that is neither an image
            nor a document becomes an error row (``not_an_image``); by default such files are left
            out by their name's suffix, counted in ``_summary.json`` and named in the log.
        device: ``auto`` (GPU stages when the pools have GPUs), ``cpu`` or ``cuda``.
        amp: mixed precision for the model stages on GPUs.
        backend: how the model stages run their networks: ``auto`` (ONNX Runtime for the detector and
            CTC recognizers on CPU, int8 where a folder ships ``model.int8.onnx``; PyTorch on GPUs and for
            attention models), ``torch``, ``onnxruntime`` or ``onnxruntime-int8`` (:mod:`ocrjobs.backends`).
        onnx_providers: ONNX Runtime execution providers in order of preference, e.g.
            ``[TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]``; ``None``: CPU,
            with CUDA first on GPU actors. A provider the installed ONNX Runtime lacks is an error.
        decode: the read + decode stage.
        detection: the detection actor pool.
        recognition: the recognition actor pool.
        exports: extra output formats.
        stale_shards: what to do with part files of an earlier plan (other inputs, shard size or models):
            ``delete`` them, or stop with an ``error``.
        progress_timeout_s: stop the job when no result row reaches the driver for this long (seconds;
            ``None``: wait forever). Finished shards stay written and a re-run resumes.
        storage: S3 endpoint settings for ``s3://`` URIs.
    """

    input: str
    output: str
    task: Literal["ocr", "recognize", "latex"] = "ocr"
    detector: str = "models/dbnet_doc"
    recognizer: str | list[str] = _LINE_RECOGNIZER
    recognizer_weights: list[float] | None = None
    shard_size: int = Field(default=1000, ge=1)
    max_shards: int | None = Field(default=None, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    read_all_files: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    backend: Literal["auto", "torch", "onnxruntime", "onnxruntime-int8"] = "auto"
    onnx_providers: list[str] | None = None
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    detection: PoolConfig = Field(default_factory=PoolConfig)
    recognition: PoolConfig = Field(default_factory=PoolConfig)
    exports: ExportsConfig = Field(default_factory=ExportsConfig)
    stale_shards: Literal["delete", "error"] = "delete"
    progress_timeout_s: float | None = Field(default=600.0, gt=0)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="before")
    @classmethod
    def _task_recognizer(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # No recognizer (or null): the task's own. The line recognizer is no default for formulas.
        if data.get("recognizer") is None:
            default = list(FORMULA_ENSEMBLE) if data.get("task") == "latex" else _LINE_RECOGNIZER
            data = {**data, "recognizer": default}
        # The default formula ensemble comes with its fitted weights unless the config names its own
        # (an explicit null means equal weights).
        if (
            data.get("task") == "latex"
            and data.get("recognizer") == list(FORMULA_ENSEMBLE)
            and "recognizer_weights" not in data
        ):
            data = {**data, "recognizer_weights": list(FORMULA_ENSEMBLE_WEIGHTS)}
        return data

    @model_validator(mode="after")
    def _weights_fit_members(self) -> BulkConfig:
        if self.recognizer_weights is not None:
            from ocrjobs.recognition.ensemble import member_weights

            member_weights(self.recognizer_weights, len(self.recognizers))
        return self

    @model_validator(mode="after")
    def _backend_fits_task(self) -> BulkConfig:
        if self.backend.startswith("onnxruntime") and self.task == "latex":
            raise ValueError(
                "backend onnxruntime runs detectors and CTC recognizers; formula models need torch or auto"
            )
        return self

    @field_validator("recognizer")
    @classmethod
    def _recognizer_list(cls, value: str | list[str]) -> str | list[str]:
        from ocrjobs.recognition.ensemble import folder_or_members

        return folder_or_members(value, "recognizers")

    @property
    def recognizers(self) -> list[str]:
        """The recognizer folders as a list (one item, or an ensemble's members in order)."""
        return [self.recognizer] if isinstance(self.recognizer, str) else list(self.recognizer)


def _fill(pool: PoolConfig, defaults: Mapping[str, Any]) -> PoolConfig:
    """``pool`` with its ``None`` fields taken from ``defaults`` (and max_size raised to min_size)."""
    values: dict[str, Any] = {k: v if v is not None else defaults[k] for k, v in pool.model_dump().items()}
    values["max_size"] = max(values["max_size"], values["min_size"])
    return PoolConfig(**values)


def _quarter_floor(cpus: float) -> float:
    """``cpus`` rounded down to a quarter CPU (at least a quarter): short resource numbers in configs."""
    return max(0.25, math.floor(cpus * 4) / 4)


def resolve_resources(config: BulkConfig, nodes: Sequence[NodeResources]) -> BulkConfig:
    """Fill the resource fields left ``None`` from what the cluster's nodes can host.

    Every size comes from single nodes, never from cluster totals: a task or actor runs on one node,
    and three 1-CPU nodes cannot host an actor of 1.25 CPU (Ray would wait for it forever).

    GPU rules apply with ``device: cuda``, or with ``device: auto`` when a node has GPUs or a pool sets
    ``num_gpus`` (an autoscaling cluster may have no GPU node yet): each GPU hosts one detection and one
    recognition actor (``num_gpus: 0.5`` each; pools of 1 to ``#GPUs`` actors), which with one decode
    task share their node's CPUs: 1 CPU each where a node has ``2 * GPUs + 1`` CPUs or more. Otherwise
    the largest node sets the sizes: with at most 4 CPUs, decode tasks take 0.25 CPU and actors
    ``(CPUs - 0.5) / 2``, so a decode task and one actor of each pool always fit on it (a whole CPU per
    stage deadlocks a 2-CPU machine); with more, decode tasks take 1 CPU and actors 2 (4 from 16 CPUs).
    Each node then counts the actors it can host beside its decode share (an eighth of its CPUs, at
    least one task), and the pools may grow to the cluster's sum, 60% of it detecting.

    Args:
        config: the job's config.
        nodes: the alive nodes (:func:`ocrjobs.raycluster.alive_nodes`).

    Returns:
        A copy with every resource field set.

    Raises:
        ConfigError: ``device: cpu`` with a pool that sets ``num_gpus`` above 0.
    """
    largest = max((n.cpus for n in nodes), default=0.0)
    gpu_nodes = [n for n in nodes if n.gpus >= 1]
    asked_gpus = any((p.num_gpus or 0) > 0 for p in (config.detection, config.recognition))
    if config.device == "cpu" and asked_gpus:
        raise ConfigError("device: cpu contradicts detection/recognition num_gpus > 0; drop one of them")
    if config.device == "cuda" or (config.device == "auto" and (gpu_nodes or asked_gpus)):
        if not gpu_nodes:
            log.warning("GPU stages on a cluster without GPUs (yet): the pools wait for GPU nodes to join")
        # The best GPU node's CPUs shared by its actors (two per GPU) and one decode task.
        share = max((n.cpus / (2 * int(n.gpus) + 1) for n in gpu_nodes), default=1.0)
        decode_cpus = min(1.0, _quarter_floor(share))
        gpus = sum(int(n.gpus) for n in gpu_nodes)
        pool = {"min_size": 1, "max_size": max(1, gpus), "num_cpus": decode_cpus, "num_gpus": 0.5}
        detection = {**pool, "batch_size": 16, "model_batch_size": 16}
        recognition = {**pool, "batch_size": 32, "model_batch_size": 256}
    elif largest <= 4:
        decode_cpus = 0.25
        per_actor = _quarter_floor((largest - 0.5) / 2)
        # Pairs (one actor of each pool) each node hosts beside a decode task.
        pairs = sum(int((n.cpus - decode_cpus) // (2 * per_actor)) for n in nodes)
        pool = {"min_size": 1, "max_size": max(1, pairs), "num_cpus": per_actor, "num_gpus": 0.0}
        detection = {**pool, "batch_size": 4, "model_batch_size": 4}
        recognition = {**pool, "batch_size": 8, "model_batch_size": 64}
    else:
        decode_cpus = 1.0
        per_actor = 2.0 if largest < 16 else 4.0
        actors = sum(int((n.cpus - max(1.0, n.cpus // 8)) // per_actor) for n in nodes)
        common = {"min_size": 1, "num_cpus": per_actor, "num_gpus": 0.0}
        detection = {**common, "max_size": max(1, int(actors * 0.6)), "batch_size": 4}
        recognition = {**common, "max_size": max(1, int(actors * 0.4)), "batch_size": 8}
        detection["model_batch_size"], recognition["model_batch_size"] = 4, 64
    return config.model_copy(
        update={
            "decode": config.decode.model_copy(update={"num_cpus": config.decode.num_cpus or decode_cpus}),
            "detection": _fill(config.detection, detection),
            "recognition": _fill(config.recognition, recognition),
        }
    )


def _stages(config: BulkConfig) -> list[tuple[str, str, float, float]]:
    """``(name, unit, CPUs, GPUs)`` asked per task or actor by each stage of a resolved config."""
    stages = [("decode", "task", config.decode.num_cpus or 0.0, 0.0)]
    pools = [("recognition", config.recognition)]
    if config.task == "ocr":
        pools.insert(0, ("detection", config.detection))
    stages += [(name, "actor", pool.num_cpus or 0.0, pool.num_gpus or 0.0) for name, pool in pools]
    return stages


def _asks(config: BulkConfig) -> str:
    """What the stages ask, for messages: ``decode 0.25 CPU per task; detection 1-3 actors of ...``."""
    parts = []
    for name, unit, cpus, gpus in _stages(config):
        what = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        if unit == "task":
            parts.append(f"{name} {what} per task")
        else:
            pool = config.detection if name == "detection" else config.recognition
            count = (
                f"{pool.min_size}" if pool.min_size == pool.max_size else f"{pool.min_size}-{pool.max_size}"
            )
            parts.append(f"{name} {count} actor{'s' if pool.max_size != 1 else ''} of {what}")
    return "; ".join(parts)


def check_fits(config: BulkConfig, nodes: Sequence[NodeResources]) -> None:
    """Refuse a config whose tasks or actors no alive node can host (Ray would wait for them forever).

    A resource no node has at all (GPUs before the first GPU node joins, CPUs on a head without CPUs)
    is waited for instead, with a warning: that is an autoscaling cluster that has yet to add the nodes.

    Args:
        config: a config passed through :func:`resolve_resources`.
        nodes: the alive nodes.

    Raises:
        ConfigError: a stage asks more CPUs or GPUs per task/actor than any node has; the message names
            the stage, what it asks and the largest node.
    """
    max_cpus = max((n.cpus for n in nodes), default=0.0)
    max_gpus = max((n.gpus for n in nodes), default=0.0)
    for name, unit, cpus, gpus in _stages(config):
        if any(n.cpus >= cpus and n.gpus >= gpus for n in nodes):
            continue
        if (gpus > 0 and max_gpus == 0) or (cpus > 0 and max_cpus == 0):
            log.warning(
                "%s asks %g CPU + %g GPU per %s and no node has such resources yet (%s): "
                "waiting for the autoscaler to add nodes",
                name,
                cpus,
                gpus,
                unit,
                describe_nodes(nodes),
            )
            continue
        field_names = f"{name}.num_cpus" + (f" / {name}.num_gpus" if gpus else "")
        raise ConfigError(
            f"{name} asks {cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "") + f" per {unit}, more "
            f"than any node has: the largest has {max_cpus:g} CPU and {max_gpus:g} GPU "
            f"({describe_nodes(nodes)}). Lower {field_names} (or leave it null to size it from "
            "the nodes), or add a larger node"
        )


def _stage_device(config: BulkConfig, pool: PoolConfig) -> str:
    return "cuda" if config.device != "cpu" and (pool.num_gpus or 0) > 0 else "cpu"


# ------------------------------------------------------------------------------------------ models


def model_id(
    path: str | Sequence[str],
    task: Literal["detection", "recognition", "latex"],
    config: StorageConfig | None = None,
) -> str:
    """``name@version`` of a model folder, from its ``config.yaml`` (the weights are not read).

    Args:
        path: the model folder (local or ``s3://``), or an ensemble's folders.
        task: the task the folder(s) must hold.
        config: S3 settings.

    Returns:
        The identifier written into every output row; an ensemble's is its members' joined by ``+``
        (``satrn_latex@3+satrn64_latex@1``).

    Raises:
        ConfigError: a folder has no ``config.yaml``, it is invalid, or it holds another task.
    """
    from ocrjobs.registry import CONFIG_FILE, read_model_spec

    if not isinstance(path, str):
        return "+".join(model_id(p, task, config) for p in path)
    try:
        spec = read_model_spec(path, config)
    except storage.ObjectNotFoundError:
        raise ConfigError(
            f"{task} model folder not found: {path} (no {CONFIG_FILE} there). Train and export a model into "
            f"it, or point the config's {'detector' if task == 'detection' else 'recognizer'} field at one."
        ) from None
    if spec.task != task:
        raise ConfigError(f"{path}: holds a {spec.task} model, the bulk job needs a {task} model here")
    return f"{spec.name}@{spec.version}"


def default_formula_members(config: BulkConfig) -> BulkConfig:
    """``config`` with the default formula ensemble cut down to the folders that exist.

    A ``task: latex`` config whose recognizer is :data:`FORMULA_ENSEMBLE` (the default) runs with
    whichever of its folders hold a model; if none does, it is left whole, so :func:`model_id` names
    the first missing folder. Any other recognizer is returned as given (a missing folder is an error).

    Args:
        config: the job's config.

    Returns:
        The config to run.
    """
    from ocrjobs.registry import CONFIG_FILE

    if config.task != "latex" or config.recognizers != list(FORMULA_ENSEMBLE):
        return config
    found = [p for p in FORMULA_ENSEMBLE if storage.exists(storage.join(p, CONFIG_FILE), config.storage)]
    if not found or len(found) == len(FORMULA_ENSEMBLE):
        return config
    missing = [p for p in FORMULA_ENSEMBLE if p not in found]
    log.warning("formula ensemble: %s not found, reading with %s", ", ".join(missing), ", ".join(found))
    update: dict[str, Any] = {"recognizer": found[0] if len(found) == 1 else found}
    if config.recognizer_weights is not None:
        weights = dict(zip(FORMULA_ENSEMBLE, config.recognizer_weights, strict=True))
        kept = [weights[p] for p in found]
        update["recognizer_weights"] = kept if any(kept) else None
    return config.model_copy(update=update)
