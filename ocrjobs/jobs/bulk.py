"""Bulk OCR on Ray Data: images and documents in object storage -> one Parquet row per page.

Examples::

    ocrjobs bulk --input s3://scans/2026/ --output s3://ocr/scans-2026/ --config configs/bulk.yaml
    ray job submit --working-dir . -- python -m ocrjobs.jobs.bulk --input s3://scans/2026/ \\
        --output s3://ocr/scans-2026/ --config configs/bulk.yaml

Data flow: the input (a prefix, glob or manifest) is listed, de-duplicated and sorted on the driver;
Ray Data then reads the files in CPU tasks and fans each out into its pages (a PDF rendered page by
page, a multi-page TIFF frame by frame, an image is one page: :mod:`ocrjobs.documents`), detects and
crops text lines in one actor pool and recognises the crops of many pages together in another
(:mod:`ocrjobs.jobs.bulk_udfs`). A file that cannot be read or opened becomes one row with ``error``
set, a page that cannot be rendered or decoded that page's row: never a failed job. That is why the
dataset starts from the URIs (``from_items``) with the reading done in our own stage, rather than from
``read_binary_files``: there a missing or unreadable object fails the read task and so the job, and the
paths come back in another form (no ``s3://``) than the one the shards were planned with.

Output (``<output>/``)::

    parquet/part-000000-1f2e3d4c.parquet   one row per page (schema: bulk_udfs.OUTPUT_SCHEMA)
    jsonl/part-000000-1f2e3d4c.jsonl       the same results as JSON lines    (exports.jsonl)
    hocr/part-000000-1f2e3d4c.hocr         the same results as hOCR pages    (exports.hocr)
    alto/part-000000-1f2e3d4c.xml          the same results as ALTO v4 XML   (exports.alto)
    txt/part-000000-1f2e3d4c.txt           the pages' text, form-feed separated (exports.txt)
    pdf/part-000000-1f2e3d4c.pdf           searchable PDF: page images + invisible text (exports.pdf)
    _config.yaml                           the resolved config of the last run (no credentials)
    _summary.json                          counts, errors by reason, pages/s, stage timings, models

Exactly once by ``(uri, page)``, resumable. Shard ``k`` is ``inputs[k * shard_size:(k + 1) * shard_size]``
of the sorted input files (all pages of a file belong to its shard), named ``part-{k:06d}-{hash}`` where the hash covers the shard's URIs, the task and the models'
``name@version``: a re-run of the same job computes the same names, and a changed input list or model
never reuses a stale shard. A shard's Parquet file is written in one atomic step (temporary file and
rename locally, a single PUT on S3) after its exports, so it exists only when the shard is complete; a
re-run skips shards whose Parquet file exists and deletes part files the current plan does not name.

Rows stream back to the driver (``iter_batches``), which writes each shard as soon as all its rows have
arrived. Rows are small there (text and polygons: pixels and crops are dropped by the model stages), so
the driver is not the bottleneck. This was chosen over writing inside the pipeline because a shard's
rows leave the pipeline in many blocks from different workers in any order: gathering them in Ray Data
needs a shuffle (which stops streaming), and ``write_parquet`` names files per block, not per shard,
with no atomic commit of a whole shard. On the driver completeness is known per file: every row
carries its file's page count, so a shard is complete once each of its files has rows for pages
``1..pages`` exactly once (or its one row without a page, for a file that could not be opened); the
rows are checked against the shard's URI list before anything is written, and a page arriving twice
stops the job instead of being written twice.

Saved as it completes. The inputs enter Ray Data in blocks of at most one recognition batch (a PDF or
TIFF alone in its block, so each document is read by a task of its own), each block is one read task, and the driver iterates without prefetching (``prefetch_batches=0``: with
prefetch, Ray Data holds a finished block back until the next one exists). So rows reach the driver
one recognition call at a time, and a shard is written as soon as the call holding its last image
returns: a crash loses only the shards in flight. A killed driver can leave a temporary
``.part-*.tmp`` beside a local output; the next run deletes it.

Sized per node, watched for progress. Tasks and actors are sized from the largest alive node
(``ray.nodes()``), never from cluster totals, and a config asking more than any node has is refused
before anything runs (:func:`resolve_resources`, :func:`check_fits`). While the job runs, a watchdog
stops it when no result row has reached the driver for ``progress_timeout_s`` (an actor that no node
can host, e.g. one restarting after its node died): the finished shards are already written, the
message says what is pending and what the cluster has, and a re-run resumes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig, StrictModel, dump_config, load_config, parse_overrides
from ocrjobs.raycluster import NodeResources, alive_nodes, describe_nodes, ensure_ray

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EXPORT_FORMATS",
    "FORMATS",
    "FORMULA_ENSEMBLE",
    "BulkConfig",
    "DecodeConfig",
    "DocumentsConfig",
    "ExportsConfig",
    "PipelineStalledError",
    "PoolConfig",
    "Shard",
    "ShardCollector",
    "add_arguments",
    "build_dataset",
    "check_fits",
    "config_from_args",
    "default_formula_members",
    "export_bytes",
    "hocr_text",
    "jsonl_text",
    "main",
    "model_id",
    "output_table",
    "plan_shards",
    "resolve_resources",
    "run",
    "run_bulk",
    "scan_output",
    "shard_name",
    "stale_temporaries",
]

log = logging.getLogger(__name__)

# Equal to ocrjobs.images.DEFAULT_MAX_PIXELS and ocrjobs.documents.DEFAULT_DPI/DEFAULT_MAX_PAGES (a
# unit test checks); not imported so that building the CLI parser does not import cv2.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_DPI = 150.0
DEFAULT_MAX_PAGES = 1000

# The recognizer of ``task: latex`` when none is given: the multi-scale formula ensemble (one SATRN at
# input heights 48 and 64), or whichever of the two folders exists (default_formula_members).
FORMULA_ENSEMBLE: tuple[str, ...] = ("models/satrn_latex", "models/satrn64_latex")
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
        # No recognizer (or null): the task's own. The line recognizer is no default for formulas.
        if isinstance(data, dict) and data.get("recognizer") is None:
            default = list(FORMULA_ENSEMBLE) if data.get("task") == "latex" else _LINE_RECOGNIZER
            data = {**data, "recognizer": default}
        return data

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
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of recognizers")
            from ocrjobs.recognition.ensemble import member_names

            member_names(value)  # the same folder twice is an error
            if len(value) == 1:
                return value[0]
        return value

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
    return config.model_copy(update={"recognizer": found[0] if len(found) == 1 else found})


# ---------------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """A fixed slice of the sorted inputs and the name its output files carry.

    Attributes:
        index: ``k`` of ``inputs[k * shard_size:(k + 1) * shard_size]``.
        name: ``part-{k:06d}-{hash}``.
        uris: the shard's inputs, in order (row ``i`` of the shard's output is ``uris[i]``).
    """

    index: int
    name: str
    uris: tuple[str, ...]


def shard_name(index: int, uris: Sequence[str], fingerprint: str = "") -> str:
    """``part-{index:06d}-{hash}``: the hash (8 hex digits of SHA-256) covers the URIs and the fingerprint.

    >>> shard_name(3, ["s3://b/a.jpg"]) == shard_name(3, ["s3://b/a.jpg"]) != shard_name(3, ["s3://b/c.jpg"])
    True
    """
    digest = hashlib.sha256(fingerprint.encode("utf-8") + b"\0")
    for uri in uris:
        digest.update(uri.encode("utf-8") + b"\n")
    return f"part-{index:06d}-{digest.hexdigest()[:8]}"


def plan_shards(uris: Sequence[str], shard_size: int, fingerprint: str = "") -> list[Shard]:
    """Cut the de-duplicated, sorted inputs into shards of ``shard_size``.

    Args:
        uris: the inputs in any order, duplicates allowed.
        shard_size: images per shard (the last shard may be smaller).
        fingerprint: what else the results depend on (task and models); it enters every shard's hash.

    Returns:
        The shards, in index order.

    Raises:
        ValueError: ``shard_size`` is below 1.

    >>> [(s.index, len(s.uris)) for s in plan_shards(["c", "a", "b", "a"], 2)]
    [(0, 2), (1, 1)]
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ordered = sorted(set(uris))
    shards = []
    for k in range(math.ceil(len(ordered) / shard_size)):
        chunk = tuple(ordered[k * shard_size : (k + 1) * shard_size])
        shards.append(Shard(k, shard_name(k, chunk, fingerprint), chunk))
    return shards


def scan_output(output: str, config: StorageConfig | None = None) -> dict[str, dict[str, str]]:
    """The part files already under ``output``, by shard name then format.

    Args:
        output: the job's output folder.
        config: S3 settings.

    Returns:
        ``{"part-000001-1f2e3d4c": {"parquet": uri, "jsonl": uri}, ...}``; files not named like parts
        are ignored.
    """
    found: dict[str, dict[str, str]] = {}
    for fmt in FORMATS:
        for uri in storage.list_files(storage.join(output, fmt), config, recursive=False):
            match = _PART_RE.match(storage.basename(uri))
            if match and match.group(2) == _EXTENSIONS[fmt]:
                found.setdefault(match.group(1), {})[fmt] = uri
    return found


# --------------------------------------------------------------------------------------- collecting


class ShardCollector:
    """Gathers result rows by shard and releases each shard once all of its rows have arrived.

    A shard's files fan out into pages, so how many rows a shard has is learnt as they come: every
    row carries its file's ``pages``, and a file is complete with one row for each page ``1..pages``,
    or with its one row without a page (a file that could not be opened). Rows are keyed by
    ``(position, page)``; a key arriving twice is refused (exactly once by ``(uri, page)``).

    Args:
        shards: the shards this run computes.
    """

    def __init__(self, shards: Sequence[Shard]) -> None:
        self._shards = {s.index: s for s in shards}
        self._parts: dict[int, list[pa.Table]] = {}
        self._rows: Counter[int] = Counter()
        # Per shard: the page count of each file seen so far (None: not opened, one row), and the
        # (position, page) keys received.
        self._expected: dict[int, dict[int, int | None]] = defaultdict(dict)
        self._keys: dict[int, set[tuple[int, int | None]]] = defaultdict(set)

    def add(self, batch: pa.Table) -> list[tuple[Shard, pa.Table]]:
        """Take a batch of result rows (with ``shard``, ``position``, ``page`` and ``pages`` columns).

        Args:
            batch: rows of any shards of this run, in any order.

        Returns:
            The shards completed by this batch, each with its rows sorted by position and page.

        Raises:
            RuntimeError: a row of an unknown shard, a page that arrived before, rows of one file that
                disagree on its page count, or a shard whose rows are not its files' pages once each
                (each would be a pipeline bug; nothing is written for such a shard).
        """
        import pyarrow.compute as pc

        done = []
        for index in pc.unique(batch.column("shard")).to_pylist():
            shard = self._shards.get(index)
            if shard is None:
                raise RuntimeError(
                    f"result rows for shard {index}, which this run does not compute or already wrote"
                )
            rows = batch.filter(pc.equal(batch.column("shard"), index))
            expected, keys = self._expected[index], self._keys[index]
            for position, page, pages in zip(
                rows.column("position").to_pylist(),
                rows.column("page").to_pylist(),
                rows.column("pages").to_pylist(),
                strict=True,
            ):
                if (position, page) in keys:
                    raise RuntimeError(
                        f"{shard.name}: page {page} of input {position} ({shard.uris[position]}) arrived twice; "
                        "the shard is not written"
                    )
                keys.add((position, page))
                count = None if page is None else int(pages or 0)
                if expected.setdefault(position, count) != count:
                    raise RuntimeError(
                        f"{shard.name}: rows of {shard.uris[position]} disagree on its page count; "
                        "the shard is not written"
                    )
            self._parts.setdefault(index, []).append(rows)
            self._rows[index] += rows.num_rows
            if len(expected) >= len(shard.uris) and self._rows[index] >= _rows_of(expected):
                done.append((shard, self._complete(shard)))
        return done

    def _complete(self, shard: Shard) -> pa.Table:
        import pyarrow as pa

        table = pa.concat_tables(self._parts.pop(shard.index)).sort_by(
            [("position", "ascending"), ("page", "ascending")]
        )
        expected = self._expected.pop(shard.index)
        del self._shards[shard.index], self._rows[shard.index], self._keys[shard.index]
        wanted: list[tuple[int, str, int | None]] = []
        for position, uri in enumerate(shard.uris):
            count = expected.get(position)
            numbers: list[int | None] = [None] if count is None else list(range(1, count + 1))
            wanted += [(position, uri, page) for page in numbers]
        got = list(
            zip(
                table.column("position").to_pylist(),
                table.column("uri").to_pylist(),
                table.column("page").to_pylist(),
                strict=True,
            )
        )
        if got != wanted:
            raise RuntimeError(
                f"{shard.name}: got {table.num_rows} rows for {len(shard.uris)} inputs that do not match its "
                "inputs' pages one to one; the shard is not written"
            )
        return table

    def unfinished(self) -> list[Shard]:
        """Shards that have not received all their rows."""
        return sorted(self._shards.values(), key=lambda s: s.index)

    def received(self, index: int) -> int:
        """Rows received so far for an unfinished shard (0 for one not started or already released)."""
        return self._rows[index]

    def finished_inputs(self, index: int) -> int:
        """Files of an unfinished shard whose every row has arrived (0 for one not started or released)."""
        if index not in self._expected:
            return 0
        arrived = Counter(position for position, _ in self._keys[index])
        return sum(
            1 for position, count in self._expected[index].items() if arrived[position] == (count or 1)
        )


def _rows_of(expected: Mapping[int, int | None]) -> int:
    """Rows the files of ``expected`` give: their pages, or one for a file not opened."""
    return sum(count or 1 for count in expected.values())


# ------------------------------------------------------------------------------------------- output


def output_table(rows: pa.Table, detector: str | None, recognizer: str) -> pa.Table:
    """A shard's rows in :data:`~ocrjobs.jobs.bulk_udfs.OUTPUT_SCHEMA` (keys and timings dropped).

    Args:
        rows: result rows (``RESULT_SCHEMA``), in the shard's order.
        detector: ``name@version`` of the detector, ``None`` for ``task: recognize``.
        recognizer: ``name@version`` of the recognizer.

    Returns:
        The table that is written.
    """
    import pyarrow as pa

    from ocrjobs.jobs.bulk_udfs import OUTPUT_SCHEMA

    n = rows.num_rows
    columns = {name: rows.column(name) for name in OUTPUT_SCHEMA.names if name in rows.column_names}
    columns.update(detector=[detector] * n, recognizer=[recognizer] * n)
    return pa.Table.from_pydict({name: columns[name] for name in OUTPUT_SCHEMA.names}, schema=OUTPUT_SCHEMA)


def jsonl_text(table: pa.Table) -> str:
    """The rows of an output table as JSON lines (:func:`ocrjobs.results.to_jsonl`).

    Each object has the output columns, ``image`` (the file name, as ``ocrjobs eval --predictions``
    matches images) and ``lines`` with polygons as ``[[x, y], ...]``.

    Args:
        table: rows of ``OUTPUT_SCHEMA``.

    Returns:
        One JSON object per row, each on its own line.
    """
    from ocrjobs.results import pages_from_table, to_jsonl

    return to_jsonl(pages_from_table(table))


def hocr_text(table: pa.Table, title: str) -> str:
    """The readable rows of an output table as one hOCR document (:func:`ocrjobs.results.to_hocr`).

    Args:
        table: rows of ``OUTPUT_SCHEMA``.
        title: the document title (the shard's name).

    Returns:
        XHTML text.
    """
    from ocrjobs.results import pages_from_table, to_hocr

    return to_hocr(pages_from_table(table), title)


class _PageImages(Sequence[Any]):
    """The page images of a shard's rows, read again from the inputs one page at a time (for the PDF).

    A readable row whose input can no longer be read or opened (changed or deleted since the OCR
    pass) gives ``None``; :func:`export_bytes` leaves such pages out of the PDF and logs them.
    Consecutive rows of one file share one opened document.
    """

    def __init__(self, config: BulkConfig, pages: Sequence[Any]) -> None:
        self._config = config
        self._pages = pages
        self._uri: str | None = None
        self._document: Any = None
        self.missing: list[str] = []

    def __len__(self) -> int:
        return len(self._pages)

    def __getitem__(self, index: Any) -> Any:  # Sequence's signature: int or slice
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        page = self._pages[index]
        if not page.readable:
            return None
        from ocrjobs.documents import open_document

        try:
            if page.uri != self._uri:
                self.close()
                self._uri = page.uri
                docs = self._config.documents
                data = storage.read_bytes(page.uri, self._config.storage)
                self._document = open_document(
                    data, dpi=docs.dpi, max_pages=docs.max_pages, max_pixels=self._config.max_pixels
                )
            if self._document is None:
                raise ValueError("the file could not be opened")
            return self._document.page(page.page or 1)
        except Exception as exc:  # the OCR rows are written whatever the PDF gets
            self.missing.append(f"{page.uri} page {page.page or 1}: {exc}")
            return None

    def close(self) -> None:
        if self._document is not None:
            self._document.close()
        self._uri, self._document = None, None


def export_bytes(config: BulkConfig, fmt: str, table: pa.Table, title: str) -> bytes:
    """One shard's rows in export format ``fmt`` (a name of :data:`EXPORT_FORMATS`).

    Every format is an exporter of the document model (:mod:`ocrjobs.results`) fed by
    :func:`ocrjobs.results.pages_from_table`.

    Args:
        config: the job (``pdf`` reads the inputs again with its storage and document settings).
        fmt: ``jsonl``, ``hocr``, ``alto``, ``txt`` or ``pdf``.
        table: the shard's rows (``OUTPUT_SCHEMA``).
        title: the shard's name (hOCR's title).

    Returns:
        The file's bytes.
    """
    from ocrjobs import results

    pages = results.pages_from_table(table)
    if fmt == "jsonl":
        return results.to_jsonl(pages).encode()
    if fmt == "hocr":
        return results.to_hocr(pages, title).encode()
    if fmt == "alto":
        return results.to_alto(pages).encode()
    if fmt == "txt":
        return results.to_text(pages).encode()
    if fmt == "pdf":
        images = _PageImages(config, pages)
        try:
            loaded = list(images)
        finally:
            images.close()
        if images.missing:
            log.warning(
                "%s: %d pages left out of the searchable PDF, their inputs could not be read again (%s)",
                title,
                len(images.missing),
                "; ".join(images.missing[:3]),
            )
        kept = [(p, im) for p, im in zip(pages, loaded, strict=True) if not p.readable or im is not None]
        return results.to_searchable_pdf(
            [p for p, _ in kept], [im for _, im in kept], dpi=config.documents.dpi
        )
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as a Parquet file in memory (zstd-compressed)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_shard(config: BulkConfig, shard: Shard, table: pa.Table) -> None:
    """Write a complete shard: its exports first, then its Parquet file, which marks it done.

    Args:
        config: the job (output folder, exports, storage).
        shard: the shard.
        table: its rows (``OUTPUT_SCHEMA``).
    """
    for fmt in config.exports.wanted():
        uri = storage.join(config.output, fmt, f"{shard.name}.{_EXTENSIONS[fmt]}")
        storage.write_bytes(uri, export_bytes(config, fmt, table, shard.name), config.storage)
    uri = storage.join(config.output, "parquet", f"{shard.name}.parquet")
    storage.write_bytes(uri, parquet_bytes(table), config.storage)


# ------------------------------------------------------------------------------------------ pipeline


def build_dataset(config: BulkConfig, shards: Sequence[Shard]) -> ray.data.Dataset:
    """The Ray Data pipeline over the inputs of ``shards``: read into pages, (detect), recognise.

    Args:
        config: a config passed through :func:`resolve_resources`.
        shards: the shards to compute.

    Returns:
        A lazy dataset of ``RESULT_SCHEMA`` rows, one per page of the inputs of the shards (one per
        input that could not be opened).
    """
    import ray

    from ocrjobs.jobs.bulk_udfs import DetectStage, RecognizeStage, read_pages

    ds: ray.data.Dataset = ray.data.from_arrow(input_blocks(config, shards))
    # Ray Data gathers what a task yields into blocks of up to this size before handing them on (128
    # MiB by default: some 20 rendered pages, a long document's pages in few blocks, each then one
    # detection actor's work). Only the read stage's blocks of page pixels come near it.
    ds.context.target_max_block_size = max(1, int(config.documents.block_mib * 2**20))
    ds = ds.map_batches(
        functools.partial(
            read_pages,
            storage_config=config.storage,
            max_pixels=config.max_pixels,
            dpi=config.documents.dpi,
            max_pages=config.documents.max_pages,
            read_threads=config.decode.read_threads,
        ),
        # One task per input block. A batch size would make Ray Data join blocks until it is reached:
        # with 60 inputs in 4 blocks of 15 and batches of 16, two tasks of 30 images, so nothing reached
        # the driver until half of the job was done.
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=config.decode.num_cpus,
        # The fan-out: a file becomes as many rows as it has pages.
        udf_modifying_row_count=True,
    )
    stages: list[tuple[type, str | list[str], PoolConfig]] = [
        (RecognizeStage, config.recognizer, config.recognition)
    ]
    if config.task == "ocr":
        stages.insert(0, (DetectStage, config.detector, config.detection))
    for stage, model_dir, pool in stages:
        device = _stage_device(config, pool)
        ds = ds.map_batches(
            stage,
            batch_size=pool.batch_size,
            batch_format="pyarrow",
            fn_constructor_kwargs={
                "model_dir": model_dir,
                "device": device,
                "amp": config.amp and device == "cuda",
                "model_batch_size": pool.model_batch_size,
                "backend": config.backend,
                "onnx_providers": config.onnx_providers,
            },
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
            udf_modifying_row_count=False,
        )
    return ds


# Most input blocks a job creates: each is an object the driver puts into the object store.
_MAX_INPUT_BLOCKS = 10_000
# Inputs that may hold many pages: each gets an input block (a read task) of its own.
_DOCUMENT_SUFFIXES = (".pdf", ".tif", ".tiff")


def input_blocks(config: BulkConfig, shards: Sequence[Shard]) -> list[pa.Table]:
    """The inputs of ``shards`` as the tables Ray Data starts from (``INPUT_SCHEMA``), in order.

    Each block holds ``min(decode.batch_size, recognition.batch_size)`` rows (the last one fewer), or
    more when that would make over 10,000 blocks. A document (``.pdf``, ``.tif``, ``.tiff``: files
    that may hold many pages) has a block of its own, so each is read by a task of its own and one
    long document never holds up the files listed after it. Images keep their block through every
    stage, so a recognition call returns whole blocks and the driver receives results a recognition
    batch at a time instead of waiting for larger bundles.

    Args:
        config: a config passed through :func:`resolve_resources`.
        shards: the shards to compute.

    Returns:
        The blocks; concatenated they list every input of the shards once.
    """
    import pyarrow as pa

    from ocrjobs.jobs.bulk_udfs import INPUT_SCHEMA

    uris = [uri for s in shards for uri in s.uris]
    table = pa.Table.from_pydict(
        {
            "uri": uris,
            "shard": [s.index for s in shards for _ in s.uris],
            "position": [p for s in shards for p in range(len(s.uris))],
        },
        schema=INPUT_SCHEMA,
    )
    rows = min(config.decode.batch_size, config.recognition.batch_size or config.decode.batch_size)
    rows = max(rows, math.ceil(len(uris) / _MAX_INPUT_BLOCKS), 1)
    # Block boundaries: before and after each document, and every `rows` images in between.
    starts, run = [0], 0
    for i, uri in enumerate(uris):
        if uri.lower().endswith(_DOCUMENT_SUFFIXES):
            starts += [i, i + 1]
            run = 0
            continue
        if run == rows:
            starts.append(i)
            run = 0
        run += 1
    starts = sorted(set(starts) | {len(uris)})
    if len(starts) - 1 > _MAX_INPUT_BLOCKS:  # too many documents to give each a block: images' sizes
        return [table.slice(start, rows) for start in range(0, max(len(uris), 1), rows)]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(starts) if b > a] or [table]


class PipelineStalledError(RuntimeError):
    """No result row reached the driver for ``progress_timeout_s``; the job was stopped.

    Shards finished before are written; the message says what is pending and what the cluster has.
    """


class _NoProgress(Exception):
    """Raised inside Ray Data's scheduling loop to stop a pipeline that has stopped delivering rows."""


class _ProgressWatch:
    """How long the driver has been waiting for the next result rows.

    The driver calls :meth:`waiting` before asking for rows and :meth:`received` when they come; the
    time it spends writing shards in between does not count against the pipeline.
    :meth:`check` runs in Ray Data's scheduling loop (each step, a few times a second): raising there
    fails the execution, which shuts down its tasks and actors and re-raises in the driver, the one way
    to stop a pipeline whose driver is blocked waiting for a block that never comes.

    Args:
        timeout_s: seconds without rows after which :meth:`check` raises; ``None`` never.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, timeout_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._since: float | None = None

    def waiting(self) -> None:
        self._since = self._clock()

    def received(self) -> None:
        self._since = None

    def waited(self) -> float:
        """Seconds the driver has been waiting (0 while it is not)."""
        since = self._since
        return 0.0 if since is None else self._clock() - since

    def check(self) -> None:
        """Raise :class:`_NoProgress` when the driver has waited longer than the timeout."""
        if self.timeout_s is not None and self.waited() > self.timeout_s:
            raise _NoProgress(f"no result rows for {self.waited():.0f} s")


def _watch(ds: ray.data.Dataset, watch: _ProgressWatch) -> None:
    """Let ``watch`` stop the execution of ``ds`` (see :class:`_ProgressWatch`).

    Ray Data calls execution callbacks from its scheduling loop; their class interface lives in
    ``ray.data._internal`` (Ray is pinned to 2.60, and the integration tests exercise this path).
    Ray Data's own no-progress guard is turned off: it counts blocks moving between stages, not rows
    reaching the driver, and would otherwise override ``progress_timeout_s: null`` after 30 minutes.
    """
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class _WatchCallback(ExecutionCallback):
        def on_execution_step(self, executor: Any) -> None:
            watch.check()

    ds.context.custom_execution_callback_classes = [
        *ds.context.custom_execution_callback_classes,
        _WatchCallback,
    ]
    ds.context.execution_no_progress_timeout_s = -1


def _cluster_now(start_nodes: Sequence[NodeResources]) -> str:
    """The cluster's alive nodes, free resources and nodes lost since the start, for a stall message."""
    import ray

    if not ray.is_initialized():
        return "unknown (not connected to Ray)"
    nodes = alive_nodes()
    free = ray.available_resources()
    text = f"{describe_nodes(nodes)}; free now {free.get('CPU', 0.0):g} CPU, {free.get('GPU', 0.0):g} GPU"
    lost = {n.node_id for n in start_nodes} - {n.node_id for n in nodes}
    if lost:
        text += f"; {len(lost)} node{'s' if len(lost) > 1 else ''} lost since the job started"
    return text


def _stall_message(
    config: BulkConfig,
    collector: ShardCollector,
    shards: Sequence[Shard],
    waited: float,
    cluster: str,
) -> str:
    pending = collector.unfinished()
    inputs = sum(len(s.uris) - collector.finished_inputs(s.index) for s in pending)
    started = [
        f"{s.name} ({collector.finished_inputs(s.index)}/{len(s.uris)} inputs done, "
        f"{collector.received(s.index)} rows)"
        for s in pending[:3]
    ]
    return (
        f"no result rows reached the driver for {waited:.0f} s (progress_timeout_s: "
        f"{config.progress_timeout_s:g}); the job was stopped. Pending: {len(pending)} of {len(shards)} "
        f"shards of this run, {inputs} inputs without all their rows (e.g. {', '.join(started)}). The stages ask: "
        f"{_asks(config)}. The cluster has: {cluster}. The {len(shards) - len(pending)} shards finished "
        "in this run are written; run the same command again to resume (finished shards are skipped). "
        "If the cluster is adding nodes or the models load slowly, raise progress_timeout_s"
    )


@dataclass
class _Tally:
    """What the shards written in this run held."""

    shards: int = 0
    inputs: int = 0
    images: int = 0  # rows: pages, and files that could not be opened
    ok: int = 0
    lines: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    stage_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, rows: pa.Table) -> None:
        import pyarrow.compute as pc

        from ocrjobs.jobs.bulk_udfs import TIMING_COLUMNS

        errors = [e for e in rows.column("error").to_pylist() if e is not None]
        self.shards += 1
        self.inputs += len(set(rows.column("position").to_pylist()))
        self.images += rows.num_rows
        self.ok += rows.num_rows - len(errors)
        self.errors.update(errors)
        self.lines += int(pc.sum(pc.list_value_length(rows.column("lines"))).as_py() or 0)
        for name in TIMING_COLUMNS:
            self.stage_seconds[name.removeprefix("t_")] += float(pc.sum(rows.column(name)).as_py() or 0.0)


def _remove_stale(config: BulkConfig, stale: dict[str, dict[str, str]]) -> int:
    if not stale:
        return 0
    files = [uri for formats in stale.values() for uri in formats.values()]
    if config.stale_shards == "error":
        raise ConfigError(
            f"{config.output} holds {len(stale)} shards of an earlier job with other inputs, shard size or models "
            f"(e.g. {files[0]}); use another output, delete them, or set stale_shards: delete"
        )
    log.info("deleting %d files of %d stale shards under %s", len(files), len(stale), config.output)
    for uri in files:
        storage.delete(uri, config.storage)
    return len(stale)


def _backfill_exports(
    config: BulkConfig, done: Sequence[Shard], found: Mapping[str, Mapping[str, str]]
) -> None:
    """Write the exports asked for now but missing beside shards finished by an earlier run."""
    import pyarrow.parquet as pq

    wanted = config.exports.wanted()
    for shard in done:
        missing = [fmt for fmt in wanted if fmt not in found[shard.name]]
        if not missing:
            continue
        fs, path = storage.pyarrow_filesystem(found[shard.name]["parquet"], config.storage)
        table = pq.read_table(path, filesystem=fs)
        for fmt in missing:
            uri = storage.join(config.output, fmt, f"{shard.name}.{_EXTENSIONS[fmt]}")
            storage.write_bytes(uri, export_bytes(config, fmt, table, shard.name), config.storage)


def _stream(
    config: BulkConfig,
    shards: Sequence[Shard],
    detector: str | None,
    recognizer: str,
    nodes: Sequence[NodeResources] = (),
) -> Iterator[pa.Table]:
    """Run the pipeline over ``shards``, write each shard as it completes and yield its result rows.

    Raises:
        PipelineStalledError: no rows arrived for ``config.progress_timeout_s`` (the shards yielded
            before are written).
        RuntimeError: the pipeline ended with shards incomplete (nothing incomplete is written).
    """
    collector = ShardCollector(shards)
    watch = _ProgressWatch(config.progress_timeout_s)
    ds = build_dataset(config, shards)
    _watch(ds, watch)
    # prefetch_batches=0: with prefetching, Ray Data yields a block only once the next one exists, so
    # the driver would lag a whole block behind the pipeline (and, at the end, be handed everything).
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))
    written = 0
    while True:
        watch.waiting()
        try:
            batch = next(batches)
        except StopIteration:
            break
        except _NoProgress:
            message = _stall_message(config, collector, shards, watch.waited(), _cluster_now(nodes))
            log.error("%s", message)
            raise PipelineStalledError(message) from None
        watch.received()
        for shard, rows in collector.add(batch):
            write_shard(config, shard, output_table(rows, detector, recognizer))
            written += 1
            log.info("wrote %s (%d rows) [%d/%d]", shard.name, rows.num_rows, written, len(shards))
            yield rows
    missing = collector.unfinished()
    if missing:
        raise RuntimeError(
            f"the pipeline ended with {len(missing)} shards incomplete, e.g. {missing[0].name}"
        )


def stale_temporaries(output: str, config: StorageConfig | None = None) -> list[str]:
    """Temporary files that interrupted writes of this job's files left under a local ``output``.

    A driver killed while writing a part file (or ``_summary.json``) leaves ``.{name}.{hex}.tmp`` beside
    it; nothing ever renames it later. S3 outputs have none: each object is one PUT.

    Args:
        output: the job's output folder.
        config: S3 settings.

    Returns:
        Their paths.
    """
    if storage.is_s3(output):
        return []
    found = []
    for folder, pattern in [(output, None), *((storage.join(output, fmt), fmt) for fmt in FORMATS)]:
        for uri in storage.list_files(folder, config, recursive=False):
            target = storage.temporary_target(storage.basename(uri))
            if target is None:
                continue
            match = _PART_RE.match(target)
            if (match and pattern is not None and match.group(2) == _EXTENSIONS[pattern]) or (
                pattern is None and target in _JOB_FILES
            ):
                found.append(uri)
    return found


def _skipped_summary(skipped: Sequence[str]) -> dict[str, Any]:
    suffixes = Counter(
        (storage.basename(u).rpartition(".")[2].lower() if "." in storage.basename(u) else "")
        for u in skipped
    )
    return {
        "count": len(skipped),
        "by_suffix": {f".{k}" if k else "(none)": v for k, v in sorted(suffixes.items())},
        "names": list(skipped[:_SKIPPED_NAMED]),
    }


def _log_skipped(spec: str, skipped: Sequence[str]) -> None:
    if not skipped:
        return
    by_suffix = ", ".join(f"{k} {v}" for k, v in _skipped_summary(skipped)["by_suffix"].items())
    names = ", ".join(storage.basename(u) for u in skipped[:20])
    more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    log.warning(
        "skipped %d files under %s that are neither images nor documents by their names (%s): %s%s "
        "(listed in _summary.json; read_all_files: true reads them, as error rows where unreadable)",
        len(skipped),
        spec,
        by_suffix,
        names,
        more,
    )


def run_bulk(config: BulkConfig) -> dict[str, Any]:
    """Run a bulk OCR job (connecting to Ray, or starting a local Ray, when none is initialised).

    Args:
        config: the job.

    Returns:
        The job summary, also written to ``<output>/_summary.json``.

    Raises:
        ConfigError: a model folder is missing or wrong, stale shards with ``stale_shards: error``, or a
            stage asks more per task/actor than any node has.
        StorageError: the inputs cannot be listed or the output cannot be written.
        PipelineStalledError: no rows arrived for ``progress_timeout_s`` (finished shards are written
            and ``_summary.json`` has ``status: stalled``; a re-run resumes).
        RuntimeError: the pipeline lost rows (nothing incomplete is ever written).
    """
    import ray

    started = time.perf_counter()
    config = default_formula_members(config)
    detector = model_id(config.detector, "detection", config.storage) if config.task == "ocr" else None
    rec_task: Literal["recognition", "latex"] = "latex" if config.task == "latex" else "recognition"
    recognizer = model_id(config.recognizer, rec_task, config.storage)
    suffixes = None if config.read_all_files else storage.INPUT_SUFFIXES
    listing = storage.scan_inputs(config.input, config.storage, suffixes)
    _log_skipped(config.input, listing.skipped)
    inputs = listing.uris
    plan = plan_shards(inputs, config.shard_size, f"{config.task}\n{detector}\n{recognizer}")
    names = {s.name for s in plan}
    found = scan_output(config.output, config.storage)
    done = [s for s in plan if "parquet" in found.get(s.name, {})]
    todo = [s for s in plan if "parquet" not in found.get(s.name, {})]
    run_now = todo[: config.max_shards] if config.max_shards else todo

    ensure_ray()
    cluster = ray.cluster_resources()
    nodes = alive_nodes()
    config = resolve_resources(config, nodes)
    check_fits(config, nodes)
    log.info("cluster: %s; stages: %s", describe_nodes(nodes), _asks(config))
    temporaries = stale_temporaries(config.output, config.storage)
    for uri in temporaries:
        storage.delete(uri, config.storage)
    if temporaries:
        log.info(
            "deleted %d temporary files left by an interrupted run under %s", len(temporaries), config.output
        )
    storage.write_text(storage.join(config.output, _CONFIG_FILE), dump_config(config), config.storage)
    stale = _remove_stale(config, {name: files for name, files in found.items() if name not in names})
    _backfill_exports(config, done, found)
    n_inputs = sum(len(s.uris) for s in plan)
    log.info(
        "%d inputs in %d shards: %d done earlier, %d to run now, %d left for later",
        n_inputs,
        len(plan),
        len(done),
        len(run_now),
        len(todo) - len(run_now),
    )
    tally = _Tally()
    stalled: PipelineStalledError | None = None
    if run_now:
        try:
            for rows in _stream(config, run_now, detector, recognizer, nodes):
                tally.add(rows)
        except PipelineStalledError as exc:
            stalled = exc
    seconds = time.perf_counter() - started
    status = "stalled" if stalled else "complete" if len(run_now) == len(todo) else "partial"
    summary = {
        "status": status,
        "input": config.input,
        "output": config.output,
        "task": config.task,
        "inputs": n_inputs,
        "duplicate_inputs": len(inputs) - n_inputs,
        "skipped_files": _skipped_summary(listing.skipped),
        "shards": {
            "total": len(plan),
            "written": tally.shards,
            "skipped": len(done),
            "pending": len(todo) - tally.shards,
            "stale_removed": stale,
        },
        "temporaries_removed": len(temporaries),
        "processed": tally.images,
        "inputs_processed": tally.inputs,
        "ok": tally.ok,
        "errors": dict(sorted(tally.errors.items())),
        "lines": tally.lines,
        "skipped": sum(len(s.uris) for s in done),
        "seconds": round(seconds, 3),
        # Rows (pages: an image is one page) per second.
        "images_per_s": round(tally.images / seconds, 3) if seconds > 0 else 0.0,
        "stage_seconds": {k: round(v, 3) for k, v in tally.stage_seconds.items()},
        "models": {"detector": detector, "recognizer": recognizer},
        "cluster": {k: cluster[k] for k in ("CPU", "GPU") if k in cluster},
        "nodes": [{"cpus": n.cpus, "gpus": n.gpus} for n in nodes],
        "config": config.model_dump(mode="json"),
    }
    if stalled:
        summary["error"] = str(stalled)
    storage.write_text(
        storage.join(config.output, _SUMMARY_FILE), json.dumps(summary, indent=2) + "\n", config.storage
    )
    if stalled:
        raise stalled
    return summary


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs bulk`` and ``python -m ocrjobs.jobs.bulk``."""
    parser.add_argument("--config", help="YAML config (BulkConfig, see configs/bulk.yaml); flags override it")
    parser.add_argument(
        "--input",
        help="images and documents (PDF, TIFF): folder/prefix, glob or manifest (local path or s3://)",
    )
    parser.add_argument("--output", help="output folder (local path or s3://)")
    parser.add_argument(
        "--task",
        choices=["ocr", "recognize", "latex"],
        help="ocr (default), recognize (line crops) or latex (formula images)",
    )
    parser.add_argument("--detector", help="detection model folder")
    parser.add_argument(
        "--recognizer",
        action="append",
        help="recognition model folder; repeat it to read with the members' propose-and-score ensemble "
        f"(task latex default: {' + '.join(FORMULA_ENSEMBLE)}, or whichever of them exists)",
    )
    parser.add_argument("--shard-size", type=int, help="input files per output shard")
    parser.add_argument("--max-shards", type=int, help="process at most N unfinished shards in this run")
    parser.add_argument(
        "--formats",
        help="comma-separated output formats, replacing the config's exports: parquet (always written), "
        f"{', '.join(EXPORT_FORMATS)}; e.g. --formats parquet,jsonl,alto,pdf",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> BulkConfig:
    """The job config: the ``--config`` file (or defaults), then ``--set`` overrides, then flags.

    Raises:
        ConfigError: an invalid file, field or value (the message names it).
    """
    overrides: dict[str, Any] = parse_overrides(args.set)
    for name in ("input", "output", "task", "detector", "recognizer", "shard_size", "max_shards"):
        value = getattr(args, name, None)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]  # one --recognizer: the single-model form of the config
        if value is not None:
            overrides[name] = value
    formats = getattr(args, "formats", None)
    if formats is not None:
        names = [name.strip().lower() for name in formats.split(",") if name.strip()]
        unknown = sorted(set(names) - set(FORMATS))
        if unknown:
            raise ConfigError(f"--formats: unknown format {', '.join(unknown)}; valid: {', '.join(FORMATS)}")
        overrides.update({f"exports.{fmt}": fmt in names for fmt in EXPORT_FORMATS})
    return load_config(args.config, BulkConfig, overrides)


def _report(summary: dict[str, Any]) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in summary["errors"].items())
    rows, files = summary["processed"], summary["inputs_processed"]
    # "pages" once a file had several (then the rows are not the files), else the familiar "images".
    what = f"pages of {files} files" if rows != files else "images"
    text = (
        f"{rows} {what} processed ({summary['ok']} ok, "
        f"{sum(summary['errors'].values())} errors{': ' + errors if errors else ''}), "
        f"{summary['skipped']} skipped as already done, {summary['shards']['written']} shards written in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']:.2f} {what.split()[0]}/s) -> "
        f"{storage.join(summary['output'], 'parquet')}"
    )
    if summary["status"] == "partial":
        text += f"; {summary['shards']['pending']} shards left for the next run"
    skipped = summary["skipped_files"]
    if skipped["count"]:
        names = ", ".join(storage.basename(u) for u in skipped["names"][:5])
        more = ", ..." if skipped["count"] > 5 else ""
        text += f"; {skipped['count']} files skipped as neither images nor documents ({names}{more})"
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs bulk``; prints one summary line (the full summary is in ``_summary.json``).

    Returns:
        0 on success, 2 when the inputs or the output cannot be reached (the message says why), 3 when
        the progress watchdog stopped the job (finished shards are written; run it again to resume).
    """
    try:
        summary = run_bulk(config_from_args(args))
    except storage.StorageError as exc:
        print(f"bulk: {exc}", file=sys.stderr)
        return 2
    except PipelineStalledError as exc:
        print(f"bulk: {exc}", file=sys.stderr)
        return EXIT_STALLED
    print(f"bulk: {_report(summary)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ocrjobs.jobs.bulk`` (the ``ray job submit`` entry point); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ocrjobs.jobs.bulk", description=(__doc__ or "").split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        print(f"bulk: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
