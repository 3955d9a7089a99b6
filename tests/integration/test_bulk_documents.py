"""The bulk job over documents on the session's local Ray: PDFs and a multi-page TIFF fanned out into
their pages, from a folder and from an S3 prefix; unreadable documents; a driver killed mid-document.

Every page of the documents is also given as a PNG of the same pixels (the page as PDFium renders it,
the TIFF frame), so the OCR of a document's page must equal the OCR of that page as an image. The
pages have one size, so the tiny models batch them alike whatever their neighbours.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ocrjobs import storage
from ocrjobs.documents import open_document, pdf_from_images
from ocrjobs.jobs.bulk import BulkConfig, run_bulk
from ocrjobs.jobs.bulk import _report as bulk_report
from tests.conftest import S3Server
from tests.integration.test_bulk import read_rows, write_tiny_models
from tests.unit.test_documents import encrypted_pdf, multipage_tiff, page_images

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[2]
DPI = 72  # a page of 200 x 300 pt renders to the 200 x 300 pixels it was made from
DOCUMENTS = {"a.pdf": 3, "b.pdf": 5, "c.tif": 3}
UNREADABLE = {"locked.pdf": "encrypted", "cut.pdf": "corrupt"}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def document_files() -> dict[str, bytes]:
    """Two PDFs (3 and 5 pages), a 3-page TIFF, an encrypted and a truncated PDF, and every page of
    the three documents as a PNG (``<document>-p<page>.png``), by file name."""
    pages = page_images(11)
    files = {
        "a.pdf": pdf_from_images(pages[:3], dpi=DPI),
        "b.pdf": pdf_from_images(pages[3:8], dpi=DPI),
        "c.tif": multipage_tiff(pages[8:]),
    }
    files["locked.pdf"] = encrypted_pdf()
    files["cut.pdf"] = files["b.pdf"][: len(files["b.pdf"]) * 2 // 3]
    for name, count in DOCUMENTS.items():
        with open_document(files[name], dpi=DPI) as document:
            assert document.pages == count
            for page in range(1, count + 1):
                files[f"{name.split('.')[0]}-p{page}.png"] = _png(document.page(page))
    return files


def expected_keys() -> list[tuple[str, int | None, int | None]]:
    """``(file name, page, pages)`` of every row the job must write."""
    keys: list[tuple[str, int | None, int | None]] = []
    for name, count in DOCUMENTS.items():
        keys += [(name, page, count) for page in range(1, count + 1)]
        keys += [(f"{name.split('.')[0]}-p{page}.png", 1, 1) for page in range(1, count + 1)]
    keys += [(name, None, None) for name in UNREADABLE]
    return sorted(keys, key=str)


def assert_document_rows(rows: list[dict]) -> None:
    """Every page exactly once, one error row per unreadable file, pages read as their images are."""
    keys = [(storage.basename(r["uri"]), r["page"], r["pages"]) for r in rows]
    assert sorted(keys, key=str) == expected_keys()
    by_key = {(storage.basename(r["uri"]), r["page"]): r for r in rows}
    for name, reason in UNREADABLE.items():
        row = by_key[(name, None)]
        assert (row["error"], row["lines"], row["width"]) == (reason, None, None) and row["error_detail"]
    lines = 0
    for name, count in DOCUMENTS.items():
        for page in range(1, count + 1):
            got, image = by_key[(name, page)], by_key[(f"{name.split('.')[0]}-p{page}.png", 1)]
            assert got["error"] is None and image["error"] is None
            assert (got["width"], got["height"]) == (image["width"], image["height"]) == (200, 300)
            assert got["text"] == image["text"]
            assert [(ln["polygon"], ln["text"]) for ln in got["lines"]] == [
                (ln["polygon"], ln["text"]) for ln in image["lines"]
            ]
            lines += len(got["lines"])
    assert lines > 0  # the pages went through detection and recognition


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return document_files()


def _config(input: str, output: str, models: tuple[str, str], **fields: object) -> BulkConfig:
    return BulkConfig.model_validate(
        {
            "input": input,
            "output": output,
            "detector": models[0],
            "recognizer": models[1],
            "shard_size": 4,
            "documents": {"dpi": DPI},
            **fields,
        }
    )


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_documents_fan_out_into_one_row_per_page_with_one_error_row_per_unreadable_file(
    where: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tiny_models: tuple[str, str],
    files: dict[str, bytes],
) -> None:
    if where == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        client = server.client()
        for name, data in files.items():
            client.put_object(Bucket=bucket, Key=f"scans/{name}", Body=data)
        source, output = f"s3://{bucket}/scans/", f"s3://{bucket}/out"
    else:
        (tmp_path / "scans").mkdir()
        for name, data in files.items():
            (tmp_path / "scans" / name).write_bytes(data)
        source, output = str(tmp_path / "scans"), str(tmp_path / "out")

    summary = run_bulk(_config(source, output, tiny_models))

    assert_document_rows(read_rows(output))
    assert (summary["status"], summary["inputs"], summary["inputs_processed"]) == ("complete", 16, 16)
    assert (summary["processed"], summary["ok"]) == (24, 22)
    assert summary["errors"] == {"corrupt": 1, "encrypted": 1}
    assert summary["skipped_files"]["count"] == 0
    assert bulk_report(summary).startswith("24 pages of 16 files processed (22 ok, 2 errors")


def test_a_driver_killed_mid_document_leaves_whole_shards_and_the_rerun_writes_the_rest_once(
    tmp_path: Path, tiny_models: tuple[str, str], files: dict[str, bytes]
) -> None:
    import ray

    (tmp_path / "scans").mkdir()
    for name, data in files.items():
        (tmp_path / "scans" / name).write_bytes(data)
    output = tmp_path / "out"
    # One file per shard, a block per page (a page is 176 KiB): a document's pages reach the driver apart.
    settings = {"shard_size": 1, "documents": {"dpi": DPI, "block_mib": 0.1}}
    settings["detection"] = settings["recognition"] = {"batch_size": 1}
    flags = [
        f"--input={tmp_path / 'scans'}",
        f"--output={output}",
        f"--detector={tiny_models[0]}",
        f"--recognizer={tiny_models[1]}",
        "--shard-size=1",
        f"--set=documents.dpi={DPI}",
        "--set=documents.block_mib=0.1",
        "--set=detection.batch_size=1",
        "--set=recognition.batch_size=1",
    ]
    # The driver kills itself (SIGKILL: no cleanup, no summary) right after it has received some but
    # not all pages of a document, before writing anything those rows completed.
    script = (
        "import os, signal, sys\n"
        "from ocrjobs.jobs import bulk\n"
        "add = bulk.ShardCollector.add\n"
        "def add_then_die(self, batch):\n"
        "    done = add(self, batch)\n"
        "    if any(self.received(s.index) for s in self.unfinished()):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return done\n"
        "bulk.ShardCollector.add = add_then_die\n"
        "sys.exit(bulk.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.run(
        [sys.executable, "-c", script, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert driver.returncode == -signal.SIGKILL, driver.stderr[-4000:]
    parts = sorted((output / "parquet").glob("part-*.parquet")) if (output / "parquet").exists() else []
    kept = {p: p.stat().st_mtime_ns for p in parts}
    assert not (output / "_summary.json").exists()

    summary = run_bulk(_config(str(tmp_path / "scans"), str(output), tiny_models, **settings))

    assert summary["status"] == "complete"
    assert (summary["shards"]["skipped"], summary["shards"]["written"]) == (len(kept), 16 - len(kept))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # shards written before the kill stay as they were
    assert summary["processed"] == 24 - sum(pq.read_metadata(p).num_rows for p in kept)
    assert_document_rows(read_rows(str(output)))  # the union: every page exactly once
