"""Bulk job reliability without Ray: input blocks, the progress watchdog, temporaries, input listing.

The Ray side of these pieces (a real pipeline stopped by the watchdog, a killed driver, a lost node)
is in tests/integration/test_bulk.py and tests/integration/test_bulk_multinode.py.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from ocrjobs import storage
from ocrjobs.images import SUPPORTED_FORMATS, decode_image
from ocrjobs.jobs import bulk
from ocrjobs.jobs.bulk import BulkConfig, PipelineStalledError, plan_shards, resolve_resources
from ocrjobs.raycluster import NodeResources
from tests.unit.test_bulk_plan import result_rows

ONE_NODE = [NodeResources("n0", "10.0.0.1", 2.0)]


def _config(tmp_path: Path, **fields: Any) -> BulkConfig:
    config = BulkConfig(input="in", output=str(tmp_path / "out"), **fields)
    return resolve_resources(config, ONE_NODE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------- input blocks


def test_input_blocks_hold_one_recognition_batch(tmp_path: Path) -> None:
    # 60 inputs with decode batches of 16 once made 4 blocks of 15 that Ray Data joined into two tasks
    # of 30 images: no row reached the driver before half of the job was done.
    config = _config(tmp_path)
    assert (config.decode.batch_size, config.recognition.batch_size) == (16, 8)
    plan = plan_shards([f"/in/{i:03d}.png" for i in range(60)], 7)
    blocks = bulk.input_blocks(config, plan)
    assert [b.num_rows for b in blocks] == [8] * 7 + [4]
    table = pa.concat_tables(blocks)
    assert table.column("uri").to_pylist() == [u for s in plan for u in s.uris]
    assert table.column("shard").to_pylist() == [s.index for s in plan for _ in s.uris]
    assert table.column("position").to_pylist() == [p for s in plan for p in range(len(s.uris))]
    smaller = config.model_copy(update={"decode": config.decode.model_copy(update={"batch_size": 5})})
    assert [b.num_rows for b in bulk.input_blocks(smaller, plan)][:2] == [5, 5]


def test_input_blocks_are_capped_in_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "_MAX_INPUT_BLOCKS", 4)
    plan = plan_shards([f"/in/{i:03d}.png" for i in range(60)], 10)
    assert [b.num_rows for b in bulk.input_blocks(_config(tmp_path), plan)] == [15, 15, 15, 15]


# ------------------------------------------------------------------------------------------ watchdog


def test_progress_watch_counts_only_the_time_spent_waiting() -> None:
    clock = FakeClock()
    watch = bulk._ProgressWatch(30.0, clock=clock)
    clock.now += 1000  # not waiting yet (e.g. writing a shard): never a stall
    watch.check()
    watch.waiting()
    clock.now += 30
    watch.check()
    watch.received()
    watch.waiting()
    clock.now += 29
    watch.check()
    clock.now += 2
    with pytest.raises(bulk._NoProgress, match="no result rows for 31 s"):
        watch.check()
    never = bulk._ProgressWatch(None, clock=clock)
    never.waiting()
    clock.now += 10**6
    never.check()


class _Context:
    def __init__(self) -> None:
        self.custom_execution_callback_classes: list[type] = []
        self.execution_no_progress_timeout_s = 1800.0


class FakeDataset:
    """Yields ``batches``, then, like a stuck pipeline, only runs its scheduling loop (the callbacks)."""

    def __init__(self, batches: list[pa.Table], clock: FakeClock) -> None:
        self.context = _Context()
        self.batches = batches
        self.clock = clock
        self.kwargs: dict[str, Any] = {}

    def iter_batches(self, **kwargs: Any) -> Iterator[pa.Table]:
        self.kwargs = kwargs
        yield from self.batches
        callbacks = [cls() for cls in self.context.custom_execution_callback_classes]
        for _ in range(10_000):
            self.clock.now += 1.0
            for callback in callbacks:
                callback.on_execution_step(None)
        raise AssertionError("the watchdog never fired")


def test_a_stuck_pipeline_is_stopped_after_the_timeout_with_finished_shards_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, progress_timeout_s=60)
    first, second = plan = plan_shards([f"/in/{i}.png" for i in range(8)], 4)
    clock = FakeClock()
    dataset = FakeDataset(
        [result_rows(0, [0, 1, 2, 3], first.uris), result_rows(1, [1, 3], second.uris)], clock
    )
    monkeypatch.setattr(bulk, "build_dataset", lambda config, shards: dataset)
    monkeypatch.setattr(bulk, "_ProgressWatch", functools.partial(bulk._ProgressWatch, clock=clock))

    written = []
    with pytest.raises(PipelineStalledError) as error:
        for rows in bulk._stream(config, plan, "det@1", "rec@1", ONE_NODE):
            written.append(rows.num_rows)

    assert written == [4]
    parts = sorted(p.name for p in (tmp_path / "out" / "parquet").iterdir())
    assert parts == [f"{first.name}.parquet"]
    message = str(error.value)
    assert "no result rows reached the driver for 61 s (progress_timeout_s: 60)" in message
    assert (
        f"Pending: 1 of 2 shards of this run, 2 inputs without all their rows (e.g. {second.name} "
        "(2/4 inputs done, 2 rows))" in (message)
    )
    assert (
        "decode 0.25 CPU per task; detection 1 actor of 0.75 CPU; recognition 1 actor of 0.75 CPU" in message
    )
    assert "The 1 shards finished in this run are written; run the same command again to resume" in message
    # No prefetching (the driver would lag a block behind), and Ray Data's own guard left to ours.
    assert dataset.kwargs == {"batch_size": None, "batch_format": "pyarrow", "prefetch_batches": 0}
    assert dataset.context.execution_no_progress_timeout_s == -1


def test_a_stalled_job_exits_with_code_3_and_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stalled(config: BulkConfig) -> dict[str, Any]:
        raise PipelineStalledError("no result rows reached the driver for 61 s")

    monkeypatch.setattr(bulk, "run_bulk", stalled)
    assert bulk.main(["--input", str(tmp_path), "--output", str(tmp_path / "out")]) == bulk.EXIT_STALLED == 3
    assert "bulk: no result rows reached the driver for 61 s" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- temporaries


def test_stale_temporaries_are_the_interrupted_writes_of_job_files(tmp_path: Path) -> None:
    name = bulk.shard_name(0, ["a"])
    files = {
        f"parquet/.{name}.parquet.0a1b2c3d4e5f.tmp": True,
        f"jsonl/.{name}.jsonl.0a1b2c3d4e5f.tmp": True,
        "._summary.json.0a1b2c3d4e5f.tmp": True,
        f"parquet/{name}.parquet": False,  # a finished shard
        f"parquet/.{name}.jsonl.0a1b2c3d4e5f.tmp": False,  # not a file the job writes there
        ".notes.txt.0a1b2c3d4e5f.tmp": False,  # someone else's
        "parquet/.part-x.parquet.tmp": False,  # not an atomic write's name
    }
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = bulk.stale_temporaries(str(tmp_path))
    assert sorted(found) == sorted(str(tmp_path / rel) for rel, stale in files.items() if stale)
    assert name in bulk.scan_output(str(tmp_path))  # temporaries are no shards
    assert bulk.scan_output(str(tmp_path))[name] == {"parquet": str(tmp_path / f"parquet/{name}.parquet")}
    assert bulk.stale_temporaries("s3://bucket/out") == []  # one PUT per object: nothing half-written


# ------------------------------------------------------------------------------------ input listing


def test_every_suffix_listed_as_an_image_decodes() -> None:
    formats = Image.registered_extensions()
    for suffix in storage.IMAGE_SUFFIXES:
        buffer = io.BytesIO()
        # .mpo files are JPEGs with extra frames; Pillow registers no extension for them.
        Image.new("RGB", (8, 6), "red").save(buffer, format=formats.get(suffix, "JPEG"))
        assert decode_image(buffer.getvalue()).shape == (6, 8, 3), suffix


def test_every_format_the_decoder_reads_is_listed() -> None:
    # Before, .gif/.jp2/.ppm/... files were dropped from folder inputs without a word.
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in SUPPORTED_FORMATS}
    # .pfm holds floating-point samples, which decode_image refuses (no defined 8-bit scale).
    assert readable - set(storage.IMAGE_SUFFIXES) == {".pfm"}


def test_skipped_files_are_counted_by_suffix_and_named() -> None:
    skipped = ["/in/a.pdf", "/in/b.PDF", "/in/notes.txt", "/in/README"]
    assert bulk._skipped_summary(skipped) == {
        "count": 4,
        "by_suffix": {"(none)": 1, ".pdf": 2, ".txt": 1},
        "names": skipped,
    }


def test_ray_console_logging_goes_to_a_file_and_comes_back(tmp_path) -> None:
    import logging

    import ray.data  # noqa: F401  # Ray Data's logger has its console handler once imported

    from ocrjobs.raycluster import ray_logs_to_file

    logger = logging.getLogger("ray.data")
    before = list(logger.handlers)
    path = tmp_path / "logs" / "ray.log"
    with ray_logs_to_file(str(path)):
        consoles = [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        assert consoles == []
        logger.warning("execution plan of dataset_x")
        logging.getLogger("ray").warning("Started a local Ray instance.")
    text = path.read_text()
    assert "execution plan of dataset_x" in text and "Started a local Ray instance." in text
    assert logger.handlers == before
