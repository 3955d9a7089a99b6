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
import itertools
import json
import logging
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig, dump_config, load_config, parse_overrides

# The job's parts, re-exported: configuration and model identity, shards, output writing.
from ocrjobs.jobs.bulk_config import (
    _CONFIG_FILE,
    _EXTENSIONS,
    _JOB_FILES,
    _PART_RE,
    _SKIPPED_NAMED,
    _SUMMARY_FILE,
    EXIT_STALLED,
    EXPORT_FORMATS,
    FORMATS,
    FORMULA_ENSEMBLE,
    FORMULA_ENSEMBLE_WEIGHTS,
    BulkConfig,
    DecodeConfig,
    DocumentsConfig,
    ExportsConfig,
    PoolConfig,
    _asks,
    _stage_device,
    check_fits,
    default_formula_members,
    model_id,
    resolve_resources,
)
from ocrjobs.jobs.bulk_output import (
    export_bytes,
    hocr_text,
    jsonl_text,
    output_table,
    parquet_bytes,
    write_shard,
)
from ocrjobs.jobs.bulk_shards import (
    Shard,
    ShardCollector,
    plan_shards,
    scan_output,
    shard_name,
)
from ocrjobs.limits import DEFAULT_DPI, DEFAULT_MAX_PAGES, DEFAULT_MAX_PIXELS
from ocrjobs.raycluster import NodeResources, alive_nodes, describe_nodes, ensure_ray

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_PAGES",
    "DEFAULT_MAX_PIXELS",
    "EXPORT_FORMATS",
    "FORMATS",
    "FORMULA_ENSEMBLE",
    "FORMULA_ENSEMBLE_WEIGHTS",
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
    "parquet_bytes",
    "plan_shards",
    "resolve_resources",
    "run",
    "run_bulk",
    "scan_output",
    "shard_name",
    "stale_temporaries",
]

log = logging.getLogger(__name__)


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
    stages: list[tuple[type, str | list[str], PoolConfig, dict[str, Any]]] = [
        (RecognizeStage, config.recognizer, config.recognition, {"weights": config.recognizer_weights})
    ]
    if config.task == "ocr":
        stages.insert(0, (DetectStage, config.detector, config.detection, {}))
    for stage, model_dir, pool, extra in stages:
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
                **extra,
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
    # The fingerprint names what the rows depend on; ensemble weights enter it only when set, so the
    # shards of jobs without weights keep their names.
    weights = "" if config.recognizer_weights is None else f"\n{config.recognizer_weights}"
    plan = plan_shards(inputs, config.shard_size, f"{config.task}\n{detector}\n{recognizer}{weights}")
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
        f"(task latex default: {' + '.join(FORMULA_ENSEMBLE)} weighted "
        f"{' : '.join(f'{w:g}' for w in FORMULA_ENSEMBLE_WEIGHTS)}, or whichever of them exists)",
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
