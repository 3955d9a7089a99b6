"""Bulk OCR on Ray Data: images in object storage -> one Parquet row per image.

Examples::

    ocrjobs bulk --input s3://scans/2026/ --output s3://ocr/scans-2026/ --config configs/bulk.yaml
    ray job submit --working-dir . -- python -m ocrjobs.jobs.bulk --input s3://scans/2026/ \\
        --output s3://ocr/scans-2026/ --config configs/bulk.yaml

Data flow: the input (a prefix, glob or manifest) is listed, de-duplicated and sorted on the driver;
Ray Data then reads and decodes the images in CPU tasks, detects and crops text lines in one actor pool
and recognises the crops of many images together in another (:mod:`ocrjobs.jobs.bulk_udfs`). An input
that cannot be read or decoded becomes a row with ``error`` set, never a failed job. That is why the
dataset starts from the URIs (``from_items``) with the reading done in our own stage, rather than from
``read_binary_files``: there a missing or unreadable object fails the read task and so the job, and the
paths come back in another form (no ``s3://``) than the one the shards were planned with.

Output (``<output>/``)::

    parquet/part-000000-1f2e3d4c.parquet   one row per input image (schema: bulk_udfs.OUTPUT_SCHEMA)
    jsonl/part-000000-1f2e3d4c.jsonl       the same results as JSON lines    (exports.jsonl)
    hocr/part-000000-1f2e3d4c.hocr         the same results as hOCR pages    (exports.hocr)
    _config.yaml                           the resolved config of the last run (no credentials)
    _summary.json                          counts, errors by reason, images/s, stage timings, models

Exactly once, resumable. Shard ``k`` is ``inputs[k * shard_size:(k + 1) * shard_size]`` of the sorted
inputs, named ``part-{k:06d}-{hash}`` where the hash covers the shard's URIs, the task and the models'
``name@version``: a re-run of the same job computes the same names, and a changed input list or model
never reuses a stale shard. A shard's Parquet file is written in one atomic step (temporary file and
rename locally, a single PUT on S3) after its exports, so it exists only when the shard is complete; a
re-run skips shards whose Parquet file exists and deletes part files the current plan does not name.

Rows stream back to the driver (``iter_batches``), which writes each shard as soon as all its rows have
arrived. Rows are small there (text and polygons: pixels and crops are dropped by the model stages), so
the driver is not the bottleneck. This was chosen over writing inside the pipeline because a shard's
rows leave the pipeline in many blocks from different workers in any order: gathering them in Ray Data
needs a shuffle (which stops streaming), and ``write_parquet`` names files per block, not per shard,
with no atomic commit of a whole shard. On the driver completeness is a count per shard, checked
position by position against the shard's URI list before anything is written.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import html
import io
import json
import logging
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig, StrictModel, dump_config, load_config, parse_overrides
from ocrjobs.raycluster import ensure_ray

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "BulkConfig",
    "DecodeConfig",
    "ExportsConfig",
    "PoolConfig",
    "Shard",
    "ShardCollector",
    "add_arguments",
    "build_dataset",
    "config_from_args",
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
]

log = logging.getLogger(__name__)

# Equal to ocrjobs.images.DEFAULT_MAX_PIXELS (a unit test checks); not imported so that building the
# CLI parser does not import cv2.
DEFAULT_MAX_PIXELS = 64_000_000

# Output formats: each has its own folder under the output, named like its file extension. Parquet is
# the completion marker of a shard.
FORMATS: tuple[str, ...] = ("parquet", "jsonl", "hocr")
_PART_RE = re.compile(r"^(part-\d{6}-[0-9a-f]{8})\.(parquet|jsonl|hocr)$")
_CONFIG_FILE = "_config.yaml"
_SUMMARY_FILE = "_summary.json"


# ------------------------------------------------------------------------------------------------ config


class DecodeConfig(StrictModel):
    """The read + decode stage (Ray tasks).

    Attributes:
        num_cpus: CPUs reserved per decode task; ``None``: 1, or 0.25 on clusters of at most 4 CPUs
            (so decode tasks and both actor pools fit at the same time).
        batch_size: images per decode task.
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


class ExportsConfig(StrictModel):
    """Extra formats written beside the Parquet files, per shard, with the same results.

    Attributes:
        jsonl: ``jsonl/part-*.jsonl``, one JSON object per image (readable by
            ``ocrjobs eval e2e --predictions``: it has the ``image`` and ``lines`` keys).
        hocr: ``hocr/part-*.hocr``, one hOCR page per readable image (error rows are left out).
    """

    jsonl: bool = False
    hocr: bool = False


class BulkConfig(StrictModel):
    """A bulk OCR job (``configs/bulk.yaml`` documents every field).

    Attributes:
        input: the images: a folder/prefix, a glob, or a manifest (``.parquet``/``.csv``/``.txt``/``.lst``).
        output: the output folder (local or ``s3://``); see the module docstring for its layout.
        task: ``ocr`` (detect + recognise), ``recognize`` (each input image is one line crop) or
            ``latex`` (each input image is one formula; ``text`` is its LaTeX).
        detector: detection model folder (``task: ocr``).
        recognizer: recognition model folder; for ``task: latex`` a formula model folder (default
            ``models/satrn_latex`` when the field is not given).
        shard_size: images per output shard.
        max_shards: process at most this many unfinished shards in this run (the next run does the rest).
        max_pixels: largest ``width * height`` decoded; larger images become ``too_many_pixels`` rows.
        device: ``auto`` (GPU stages when the pools have GPUs), ``cpu`` or ``cuda``.
        amp: mixed precision for the model stages on GPUs.
        decode: the read + decode stage.
        detection: the detection actor pool.
        recognition: the recognition actor pool.
        exports: extra output formats.
        stale_shards: what to do with part files of an earlier plan (other inputs, shard size or models):
            ``delete`` them, or stop with an ``error``.
        storage: S3 endpoint settings for ``s3://`` URIs.
    """

    input: str
    output: str
    task: Literal["ocr", "recognize", "latex"] = "ocr"
    detector: str = "models/dbnet_doc"
    recognizer: str = "models/crnn_en"
    shard_size: int = Field(default=1000, ge=1)
    max_shards: int | None = Field(default=None, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    detection: PoolConfig = Field(default_factory=PoolConfig)
    recognition: PoolConfig = Field(default_factory=PoolConfig)
    exports: ExportsConfig = Field(default_factory=ExportsConfig)
    stale_shards: Literal["delete", "error"] = "delete"
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="before")
    @classmethod
    def _formula_recognizer(cls, data: Any) -> Any:
        # The line recognizer is no default for formulas: without an explicit recognizer, use ours.
        if isinstance(data, dict) and data.get("task") == "latex" and data.get("recognizer") is None:
            data = {**data, "recognizer": "models/satrn_latex"}
        return data


def _fill(pool: PoolConfig, defaults: Mapping[str, Any]) -> PoolConfig:
    """``pool`` with its ``None`` fields taken from ``defaults`` (and max_size raised to min_size)."""
    values: dict[str, Any] = {k: v if v is not None else defaults[k] for k, v in pool.model_dump().items()}
    values["max_size"] = max(values["max_size"], values["min_size"])
    return PoolConfig(**values)


def resolve_resources(config: BulkConfig, cluster: Mapping[str, float]) -> BulkConfig:
    """Fill the resource fields left ``None`` from the cluster's resources.

    GPU rules apply with ``device: cuda``, or with ``device: auto`` when the cluster has GPUs or a pool
    sets ``num_gpus`` (an autoscaling cluster may have no GPU node yet): each GPU hosts one detection
    and one recognition actor (``num_gpus: 0.5`` each, pools of 1 to ``#GPUs`` actors). Otherwise, on
    at most 4 CPUs the decode tasks take 0.25 CPU and each pool one actor of ``(CPUs - 0.5) / 2`` CPUs,
    so that decode tasks and both pools always fit together (a whole CPU per stage deadlocks a 2-CPU
    machine); on more CPUs an eighth is left to decoding and the rest goes to actors of 2 CPUs (4 from
    16 CPUs), 60% of them detecting.

    Args:
        config: the job's config.
        cluster: ``ray.cluster_resources()``.

    Returns:
        A copy with every resource field set.

    Raises:
        ConfigError: ``device: cpu`` with a pool that sets ``num_gpus`` above 0.
    """
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    asked_gpus = any((p.num_gpus or 0) > 0 for p in (config.detection, config.recognition))
    if config.device == "cpu" and asked_gpus:
        raise ConfigError("device: cpu contradicts detection/recognition num_gpus > 0; drop one of them")
    if config.device == "cuda" or (config.device == "auto" and (gpus >= 1 or asked_gpus)):
        if gpus < 1:
            log.warning("GPU stages on a cluster without GPUs (yet): the pools wait for GPU nodes to join")
        decode_cpus = 1.0
        pool = {"min_size": 1, "max_size": max(1, int(gpus)), "num_cpus": 1.0, "num_gpus": 0.5}
        detection = {**pool, "batch_size": 16, "model_batch_size": 16}
        recognition = {**pool, "batch_size": 32, "model_batch_size": 256}
    elif cpus <= 4:
        decode_cpus = 0.25
        pool = {"min_size": 1, "max_size": 1, "num_cpus": max(0.25, (cpus - 0.5) / 2), "num_gpus": 0.0}
        detection = {**pool, "batch_size": 4, "model_batch_size": 4}
        recognition = {**pool, "batch_size": 8, "model_batch_size": 64}
    else:
        decode_cpus = 1.0
        per_actor = 2.0 if cpus < 16 else 4.0
        model_cpus = cpus - max(1.0, cpus // 8)
        common = {"min_size": 1, "num_cpus": per_actor, "num_gpus": 0.0}
        detection = {**common, "max_size": max(1, int(model_cpus * 0.6 // per_actor)), "batch_size": 4}
        recognition = {**common, "max_size": max(1, int(model_cpus * 0.4 // per_actor)), "batch_size": 8}
        detection["model_batch_size"], recognition["model_batch_size"] = 4, 64
    return config.model_copy(
        update={
            "decode": config.decode.model_copy(update={"num_cpus": config.decode.num_cpus or decode_cpus}),
            "detection": _fill(config.detection, detection),
            "recognition": _fill(config.recognition, recognition),
        }
    )


def _stage_device(config: BulkConfig, pool: PoolConfig) -> str:
    return "cuda" if config.device != "cpu" and (pool.num_gpus or 0) > 0 else "cpu"


# ------------------------------------------------------------------------------------------ models


def model_id(
    path: str, task: Literal["detection", "recognition", "latex"], config: StorageConfig | None = None
) -> str:
    """``name@version`` of a model folder, from its ``config.yaml`` (the weights are not read).

    Args:
        path: the model folder (local or ``s3://``).
        task: the task the folder must hold.
        config: S3 settings.

    Returns:
        The identifier written into every output row.

    Raises:
        ConfigError: the folder has no ``config.yaml``, it is invalid, or it holds another task.
    """
    from ocrjobs.registry import CONFIG_FILE, read_model_spec

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
            if match and match.group(2) == fmt:
                found.setdefault(match.group(1), {})[fmt] = uri
    return found


# --------------------------------------------------------------------------------------- collecting


class ShardCollector:
    """Gathers result rows by shard and releases each shard once all of its rows have arrived.

    Args:
        shards: the shards this run computes.
    """

    def __init__(self, shards: Sequence[Shard]) -> None:
        self._shards = {s.index: s for s in shards}
        self._parts: dict[int, list[pa.Table]] = {}
        self._rows: Counter[int] = Counter()

    def add(self, batch: pa.Table) -> list[tuple[Shard, pa.Table]]:
        """Take a batch of result rows (with ``shard`` and ``position`` columns).

        Args:
            batch: rows of any shards of this run, in any order.

        Returns:
            The shards completed by this batch, each with its rows sorted by position.

        Raises:
            RuntimeError: a row of an unknown shard, or a shard whose rows are not exactly its URIs once
                each (this would be a pipeline bug; nothing is written for such a shard).
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
            self._parts.setdefault(index, []).append(rows)
            self._rows[index] += rows.num_rows
            if self._rows[index] >= len(shard.uris):
                done.append((shard, self._complete(shard)))
        return done

    def _complete(self, shard: Shard) -> pa.Table:
        import pyarrow as pa

        table = pa.concat_tables(self._parts.pop(shard.index)).sort_by("position")
        del self._shards[shard.index], self._rows[shard.index]
        positions = table.column("position").to_pylist()
        uris = table.column("uri").to_pylist()
        if positions != list(range(len(shard.uris))) or tuple(uris) != shard.uris:
            raise RuntimeError(
                f"{shard.name}: got {len(positions)} rows for {len(shard.uris)} inputs, or rows that do not match "
                "its inputs one to one; the shard is not written"
            )
        return table

    def unfinished(self) -> list[Shard]:
        """Shards that have not received all their rows."""
        return sorted(self._shards.values(), key=lambda s: s.index)


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


def _points(flat: Sequence[float]) -> list[list[float]]:
    return [[round(float(flat[i]), 2), round(float(flat[i + 1]), 2)] for i in range(0, len(flat) - 1, 2)]


def jsonl_text(table: pa.Table) -> str:
    """The rows of an output table as JSON lines.

    Each object has the output columns, ``image`` (the file name, as ``ocrjobs eval --predictions``
    matches images) and ``lines`` with polygons as ``[[x, y], ...]``.

    Args:
        table: rows of ``OUTPUT_SCHEMA``.

    Returns:
        One JSON object per row, each on its own line.
    """
    out = []
    for row in table.to_pylist():
        lines = row["lines"]
        if lines is not None:
            row["lines"] = [{**line, "polygon": _points(line["polygon"])} for line in lines]
        out.append(json.dumps({"image": storage.basename(row["uri"]), **row}, ensure_ascii=False))
    return "".join(line + "\n" for line in out)


def _bbox(flat: Sequence[float]) -> str:
    xs, ys = flat[0::2], flat[1::2]
    return f"{math.floor(min(xs))} {math.floor(min(ys))} {math.ceil(max(xs))} {math.ceil(max(ys))}"


def hocr_text(table: pa.Table, title: str) -> str:
    """The readable rows of an output table as one hOCR document (one ``ocr_page`` per image).

    Lines carry ``bbox``, ``poly`` (the detected polygon) and ``x_wconf`` (recognition score in
    percent). Rows with ``error`` set have no page.

    Args:
        table: rows of ``OUTPUT_SCHEMA``.
        title: the document title (the shard's name).

    Returns:
        XHTML text.
    """
    rows = [r for r in table.to_pylist() if r["error"] is None]
    system = ", ".join(sorted({m for r in rows for m in (r["detector"], r["recognizer"]) if m}))
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">',
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">',
        "<head>",
        f"<title>{html.escape(title)}</title>",
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>',
        f'<meta name="ocr-system" content="ocrjobs {html.escape(system)}"/>',
        '<meta name="ocr-capabilities" content="ocr_page ocr_line"/>',
        "</head>",
        "<body>",
    ]
    for p, row in enumerate(rows, start=1):
        image = row["uri"].replace("\\", "\\\\").replace('"', '\\"')
        page_title = f'image "{image}"; bbox 0 0 {row["width"]} {row["height"]}; ppageno {p - 1}'
        parts.append(f'<div class="ocr_page" id="page_{p}" title="{html.escape(page_title)}">')
        for n, line in enumerate(row["lines"] or [], start=1):
            poly = " ".join(str(round(v)) for v in line["polygon"])
            conf = round(100 * (line["rec_score"] or 0.0))
            props = f"bbox {_bbox(line['polygon'])}; poly {poly}; x_wconf {conf}"
            parts.append(
                f'<span class="ocr_line" id="line_{p}_{n}" title="{props}">{html.escape(line["text"] or "")}</span>'
            )
        parts.append("</div>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


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
    if config.exports.jsonl:
        storage.write_text(
            storage.join(config.output, "jsonl", f"{shard.name}.jsonl"), jsonl_text(table), config.storage
        )
    if config.exports.hocr:
        text = hocr_text(table, shard.name)
        storage.write_text(storage.join(config.output, "hocr", f"{shard.name}.hocr"), text, config.storage)
    uri = storage.join(config.output, "parquet", f"{shard.name}.parquet")
    storage.write_bytes(uri, parquet_bytes(table), config.storage)


# ------------------------------------------------------------------------------------------ pipeline


def build_dataset(config: BulkConfig, shards: Sequence[Shard]) -> ray.data.Dataset:
    """The Ray Data pipeline over the inputs of ``shards``: decode, (detect), recognise.

    Args:
        config: a config passed through :func:`resolve_resources`.
        shards: the shards to compute.

    Returns:
        A lazy dataset of ``RESULT_SCHEMA`` rows, one per input of the shards.
    """
    import ray

    from ocrjobs.jobs.bulk_udfs import DetectStage, RecognizeStage, read_decode

    items = [{"uri": uri, "shard": s.index, "position": p} for s in shards for p, uri in enumerate(s.uris)]
    blocks = max(1, min(math.ceil(len(items) / config.decode.batch_size), 10_000))
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        functools.partial(
            read_decode,
            storage_config=config.storage,
            max_pixels=config.max_pixels,
            read_threads=config.decode.read_threads,
        ),
        batch_size=config.decode.batch_size,
        batch_format="pyarrow",
        num_cpus=config.decode.num_cpus,
        udf_modifying_row_count=False,
    )
    stages: list[tuple[type, str, PoolConfig]] = [(RecognizeStage, config.recognizer, config.recognition)]
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
            },
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
            udf_modifying_row_count=False,
        )
    return ds


@dataclass
class _Tally:
    """What the shards written in this run held."""

    shards: int = 0
    images: int = 0
    ok: int = 0
    lines: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    stage_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, rows: pa.Table) -> None:
        import pyarrow.compute as pc

        from ocrjobs.jobs.bulk_udfs import TIMING_COLUMNS

        errors = [e for e in rows.column("error").to_pylist() if e is not None]
        self.shards += 1
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

    wanted = [fmt for fmt, on in (("jsonl", config.exports.jsonl), ("hocr", config.exports.hocr)) if on]
    for shard in done:
        missing = [fmt for fmt in wanted if fmt not in found[shard.name]]
        if not missing:
            continue
        fs, path = storage.pyarrow_filesystem(found[shard.name]["parquet"], config.storage)
        table = pq.read_table(path, filesystem=fs)
        for fmt in missing:
            text = jsonl_text(table) if fmt == "jsonl" else hocr_text(table, shard.name)
            storage.write_text(storage.join(config.output, fmt, f"{shard.name}.{fmt}"), text, config.storage)


def _stream(
    config: BulkConfig, shards: Sequence[Shard], detector: str | None, recognizer: str
) -> Iterator[pa.Table]:
    """Run the pipeline over ``shards``, write each shard as it completes and yield its result rows."""
    collector = ShardCollector(shards)
    written = 0
    for batch in build_dataset(config, shards).iter_batches(batch_size=None, batch_format="pyarrow"):
        for shard, rows in collector.add(batch):
            write_shard(config, shard, output_table(rows, detector, recognizer))
            written += 1
            log.info("wrote %s (%d images) [%d/%d]", shard.name, rows.num_rows, written, len(shards))
            yield rows
    missing = collector.unfinished()
    if missing:
        raise RuntimeError(
            f"the pipeline ended with {len(missing)} shards incomplete, e.g. {missing[0].name}"
        )


def run_bulk(config: BulkConfig) -> dict[str, Any]:
    """Run a bulk OCR job (connecting to Ray, or starting a local Ray, when none is initialised).

    Args:
        config: the job.

    Returns:
        The job summary, also written to ``<output>/_summary.json``.

    Raises:
        ConfigError: a model folder is missing or wrong, or stale shards with ``stale_shards: error``.
        StorageError: the inputs cannot be listed or the output cannot be written.
        RuntimeError: the pipeline lost rows (nothing incomplete is ever written).
    """
    import ray

    started = time.perf_counter()
    detector = model_id(config.detector, "detection", config.storage) if config.task == "ocr" else None
    rec_task: Literal["recognition", "latex"] = "latex" if config.task == "latex" else "recognition"
    recognizer = model_id(config.recognizer, rec_task, config.storage)
    inputs = storage.resolve_inputs(config.input, config.storage)
    plan = plan_shards(inputs, config.shard_size, f"{config.task}\n{detector}\n{recognizer}")
    names = {s.name for s in plan}
    found = scan_output(config.output, config.storage)
    done = [s for s in plan if "parquet" in found.get(s.name, {})]
    todo = [s for s in plan if "parquet" not in found.get(s.name, {})]
    run_now = todo[: config.max_shards] if config.max_shards else todo

    ensure_ray()
    cluster = ray.cluster_resources()
    config = resolve_resources(config, cluster)
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
    if run_now:
        for rows in _stream(config, run_now, detector, recognizer):
            tally.add(rows)
    seconds = time.perf_counter() - started
    summary = {
        "status": "complete" if len(run_now) == len(todo) else "partial",
        "input": config.input,
        "output": config.output,
        "task": config.task,
        "inputs": n_inputs,
        "duplicate_inputs": len(inputs) - n_inputs,
        "shards": {
            "total": len(plan),
            "written": tally.shards,
            "skipped": len(done),
            "pending": len(todo) - len(run_now),
            "stale_removed": stale,
        },
        "processed": tally.images,
        "ok": tally.ok,
        "errors": dict(sorted(tally.errors.items())),
        "lines": tally.lines,
        "skipped": sum(len(s.uris) for s in done),
        "seconds": round(seconds, 3),
        "images_per_s": round(tally.images / seconds, 3) if seconds > 0 else 0.0,
        "stage_seconds": {k: round(v, 3) for k, v in tally.stage_seconds.items()},
        "models": {"detector": detector, "recognizer": recognizer},
        "cluster": {k: cluster[k] for k in ("CPU", "GPU") if k in cluster},
        "config": config.model_dump(mode="json"),
    }
    storage.write_text(
        storage.join(config.output, _SUMMARY_FILE), json.dumps(summary, indent=2) + "\n", config.storage
    )
    return summary


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs bulk`` and ``python -m ocrjobs.jobs.bulk``."""
    parser.add_argument("--config", help="YAML config (BulkConfig, see configs/bulk.yaml); flags override it")
    parser.add_argument("--input", help="images: folder/prefix, glob or manifest (local path or s3://)")
    parser.add_argument("--output", help="output folder (local path or s3://)")
    parser.add_argument(
        "--task",
        choices=["ocr", "recognize", "latex"],
        help="ocr (default), recognize (line crops) or latex (formula images)",
    )
    parser.add_argument("--detector", help="detection model folder")
    parser.add_argument("--recognizer", help="recognition model folder")
    parser.add_argument("--shard-size", type=int, help="images per output shard")
    parser.add_argument("--max-shards", type=int, help="process at most N unfinished shards in this run")
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
        if value is not None:
            overrides[name] = value
    return load_config(args.config, BulkConfig, overrides)


def _report(summary: dict[str, Any]) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in summary["errors"].items())
    text = (
        f"{summary['processed']} images processed ({summary['ok']} ok, "
        f"{sum(summary['errors'].values())} errors{': ' + errors if errors else ''}), "
        f"{summary['skipped']} skipped as already done, {summary['shards']['written']} shards written in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s) -> "
        f"{storage.join(summary['output'], 'parquet')}"
    )
    if summary["status"] == "partial":
        text += f"; {summary['shards']['pending']} shards left for the next run"
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs bulk``; prints one summary line (the full summary is in ``_summary.json``).

    Returns:
        0 on success, 2 when the inputs or the output cannot be reached (the message says why).
    """
    try:
        summary = run_bulk(config_from_args(args))
    except storage.StorageError as exc:
        print(f"bulk: {exc}", file=sys.stderr)
        return 2
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
