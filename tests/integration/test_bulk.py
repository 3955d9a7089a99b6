"""The bulk OCR job end to end on the session's local Ray: S3 and local inputs, bad inputs, resume, demo.

The models are tiny random-weight ones, so the assertions check structure (one row per input, error
reasons, sizes, polygons inside the image, text = the lines joined), which holds for trained models too.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw

from ocrjobs import cli, storage
from ocrjobs.jobs import demo
from ocrjobs.jobs.bulk import FORMULA_ENSEMBLE, BulkConfig, ExportsConfig, run_bulk
from ocrjobs.jobs.bulk import _report as bulk_report
from ocrjobs.jobs.bulk_udfs import OUTPUT_SCHEMA
from tests.conftest import S3Server

pytestmark = pytest.mark.usefixtures("ray_session")

SIZE = (200, 300)  # width, height of every readable test image
# The unreadable inputs and the reason each must get.
BAD = {
    "bad-cut.jpg": "corrupt",
    "bad-cut.png": "corrupt",
    "bad-header.jpg": "corrupt",
    "bad-zero.jpg": "empty",
}
DETECTOR_ID, RECOGNIZER_ID = "det_tiny@test", "rec_tiny@test"


def write_tiny_models(root: Path) -> tuple[str, str]:
    """Random-weight detection and recognition model folders under ``root``; returns their paths."""
    import torch

    from ocrjobs.detection.dbnet import build_detector
    from ocrjobs.detection.postprocess import DBPostProcessor
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.recognition.tokenizer import CTCTokenizer

    torch.manual_seed(0)
    # Zero thresholds make the random detector's output weight-independent: one region per image.
    detector = DetectionPredictor(
        build_detector("dbnet_mobilenetv3", neck_channels=32),
        limit_side=256,
        postprocessor=DBPostProcessor(thresh=0.0, box_thresh=0.0),
        name="det_tiny",
        version="test",
    )
    tokenizer = CTCTokenizer()
    model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(8, 8, 8, 8), hidden=8)
    recognizer = RecognitionPredictor(model, tokenizer, name="rec_tiny", version="test")
    return detector.save_model_dir(root / "det_tiny"), recognizer.save_model_dir(root / "rec_tiny")


def _page(i: int, fmt: str) -> bytes:
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    for j, text in enumerate([f"RECEIPT {i:04d}", "COFFEE  3.50", "BAGEL  2.25", f"TOTAL  {i + 5}.75"]):
        draw.text((12, 20 + 45 * j), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_images(good: int = 26) -> dict[str, bytes]:
    """``good`` rendered receipts (PNG and JPEG) plus the four files of :data:`BAD`, by file name."""
    files = {
        f"r{i:03d}.{'png' if i % 2 else 'jpg'}": _page(i, "PNG" if i % 2 else "JPEG") for i in range(good)
    }
    jpeg, png = _page(900, "JPEG"), _page(901, "PNG")
    files.update(
        {
            "bad-cut.jpg": jpeg[: len(jpeg) // 2],
            "bad-cut.png": png[: len(png) // 2],
            "bad-header.jpg": jpeg[:16] + bytes(range(256)) * 4,
            "bad-zero.jpg": b"",
        }
    )
    return files


def read_rows(output: str) -> list[dict]:
    """Every row of a job's Parquet output (checking the schema of the whole dataset)."""
    fs, path = storage.pyarrow_filesystem(storage.join(output, "parquet"))
    table = pq.read_table(path, filesystem=fs)
    assert table.schema == OUTPUT_SCHEMA
    return table.to_pylist()


def assert_results(rows: list[dict], uris: list[str], detector: str | None = DETECTOR_ID) -> None:
    """Each input exactly once, errors on exactly the :data:`BAD` files, well-formed readable rows."""
    assert sorted(r["uri"] for r in rows) == sorted(uris)
    by_name = {storage.basename(r["uri"]): r for r in rows}
    assert {n: r["error"] for n, r in by_name.items() if r["error"] is not None} == BAD
    lines_found = 0
    for name, row in by_name.items():
        assert (row["detector"], row["recognizer"]) == (detector, RECOGNIZER_ID)
        if name in BAD:
            assert row["lines"] is None and row["text"] is None and row["error_detail"]
            continue
        assert (row["width"], row["height"]) == SIZE and row["error_detail"] is None
        assert row["text"] == "\n".join(line["text"] for line in row["lines"] if line["text"])
        for line in row["lines"]:
            points = np.asarray(line["polygon"]).reshape(-1, 2)
            assert len(points) >= 4
            assert points.min() >= -1 and (points.max(axis=0) <= np.asarray(SIZE) + 1).all()
            assert 0 <= line["det_score"] <= 1 and 0 <= line["rec_score"] <= 1
        lines_found += len(row["lines"])
    assert lines_found > 0  # crops went through recognition


def _input_folder(tmp_path: Path, images: dict[str, bytes]) -> Path:
    """``tmp_path/in`` holding the module's input files."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data in images.items():
        (inputs / name).write_bytes(data)
    return inputs


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return make_images()


def test_s3_input_gives_one_row_per_image_and_error_rows_for_bad_ones(
    s3_server: S3Server, s3_bucket: str, tiny_models: tuple[str, str], images: dict[str, bytes]
) -> None:
    client = s3_server.client()
    for name, data in images.items():
        client.put_object(Bucket=s3_bucket, Key=f"in/{name}", Body=data)
    detector, recognizer = tiny_models
    config = BulkConfig(
        input=f"s3://{s3_bucket}/in/",
        output=f"s3://{s3_bucket}/out",
        detector=detector,
        recognizer=recognizer,
        shard_size=8,
        exports=ExportsConfig(jsonl=True, hocr=True, alto=True, txt=True, pdf=True),
    )
    summary = run_bulk(config)

    assert_results(read_rows(config.output), [f"s3://{s3_bucket}/in/{n}" for n in images])
    assert (summary["status"], summary["inputs"], summary["processed"], summary["ok"]) == (
        "complete",
        30,
        30,
        26,
    )
    assert summary["errors"] == {"corrupt": 3, "empty": 1}
    assert summary["shards"] == {"total": 4, "written": 4, "skipped": 0, "pending": 0, "stale_removed": 0}
    assert summary["models"] == {"detector": DETECTOR_ID, "recognizer": RECOGNIZER_ID}
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"])
    parts = [k.split("/")[1] + "/" + k.rsplit(".", 1)[-1] for k in keys if "/part-" in k]
    assert parts == [
        f"{fmt}/{ext}"
        for fmt, ext in [
            ("alto", "xml"),
            ("hocr", "hocr"),
            ("jsonl", "jsonl"),
            ("parquet", "parquet"),
            ("pdf", "pdf"),
            ("txt", "txt"),
        ]
        for _ in range(4)
    ]
    assert {"out/_summary.json", "out/_config.yaml"} <= set(keys)
    jsonl = "".join(storage.read_text(f"s3://{s3_bucket}/{k}") for k in keys if k.endswith(".jsonl"))
    assert len(jsonl.splitlines()) == 30
    # Every export holds the same results: the PDFs' text layers are the recognised text (the readable
    # images' pages, read again from S3), the text export has one form-feed separated page per row.
    pdf_pages, pdf_words, txt_pages = 0, [], 0
    for key in (k for k in keys if k.endswith(".pdf")):
        pdf = pdfium.PdfDocument(storage.read_bytes(f"s3://{s3_bucket}/{key}"))
        pdf_pages += len(pdf)
        pdf_words += [w for page in pdf for w in page.get_textpage().get_text_range().split()]
        pdf.close()
    for key in (k for k in keys if k.endswith(".txt")):
        txt_pages += len(storage.read_text(f"s3://{s3_bucket}/{key}").split("\f"))
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert (pdf_pages, txt_pages) == (26, 30)
    assert sorted(pdf_words) == sorted(
        w for r in rows if not r["error"] for ln in r["lines"] for w in ln["text"].split()
    )
    resolved = storage.read_text(f"s3://{s3_bucket}/out/_config.yaml")
    assert s3_server.secret_key not in resolved and "aws_" not in resolved.lower()
    assert "num_cpus: 0.75" in resolved  # the 2-CPU defaults were resolved and recorded


def test_local_folder_run_resumes_after_interruption_without_recomputing(
    tmp_path: Path, tiny_models: tuple[str, str], images: dict[str, bytes]
) -> None:
    inputs = _input_folder(tmp_path, images)
    out = tmp_path / "out"
    detector, recognizer = tiny_models
    config = BulkConfig(
        input=str(inputs),
        output=str(out),
        detector=detector,
        recognizer=recognizer,
        shard_size=8,
        max_shards=2,
    )

    # An interrupted job: only the first two shards got written.
    first = run_bulk(config)
    assert (first["status"], first["shards"]["written"], first["shards"]["pending"]) == ("partial", 2, 2)
    parts = sorted((out / "parquet").glob("part-*.parquet"))
    assert [p.name[:11] for p in parts] == ["part-000000", "part-000001"]
    kept, lost = parts
    kept_mtime = kept.stat().st_mtime_ns
    # Shard 1's file is lost too, and a part file of some earlier plan lies in the output.
    lost.unlink()
    shutil.copy(kept, out / "parquet" / "part-000007-0123abcd.parquet")

    # The re-run also asks for JSONL: shard 0's is written from its Parquet file, the others as computed.
    second = run_bulk(config.model_copy(update={"max_shards": None, "exports": ExportsConfig(jsonl=True)}))
    assert second["status"] == "complete"
    assert second["shards"] == {"total": 4, "written": 3, "skipped": 1, "pending": 0, "stale_removed": 1}
    assert (second["skipped"], second["processed"]) == (8, 22)
    assert kept.stat().st_mtime_ns == kept_mtime  # finished shards are not recomputed
    assert not (out / "parquet" / "part-000007-0123abcd.parquet").exists()
    assert_results(read_rows(str(out)), [str(inputs / n) for n in images])
    exported = sorted((out / "jsonl").glob("part-*.jsonl"))
    assert [p.stem for p in exported] == [p.stem for p in sorted((out / "parquet").glob("part-*.parquet"))]
    assert sum(len(p.read_text().splitlines()) for p in exported) == len(images)


def test_recognize_task_reads_each_image_of_a_manifest_as_one_line(
    tmp_path: Path, tiny_models: tuple[str, str]
) -> None:
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(4):
        Image.new("RGB", (120 + 10 * i, 32), "white").save(crops / f"line{i}.png")
    (crops / "notes.png").write_bytes(b"plain text, not an image")
    manifest = tmp_path / "crops.txt"
    manifest.write_text(
        "".join(
            f"crops/{n}\n"
            for n in ["line0.png", "line1.png", "line2.png", "line3.png", "notes.png", "gone.png"]
        )
    )
    out = tmp_path / "out"
    summary = run_bulk(
        BulkConfig(input=str(manifest), output=str(out), task="recognize", recognizer=tiny_models[1])
    )

    rows = {storage.basename(r["uri"]): r for r in read_rows(str(out))}
    assert summary["errors"] == {"not_an_image": 1, "not_found": 1}
    assert (rows["notes.png"]["error"], rows["gone.png"]["error"]) == ("not_an_image", "not_found")
    for i in range(4):
        row = rows[f"line{i}.png"]
        w = 120 + 10 * i
        assert row["error"] is None and row["detector"] is None and len(row["lines"]) == 1
        (line,) = row["lines"]
        assert line["polygon"] == [0, 0, w, 0, w, 32, 0, 32] and line["det_score"] is None
        assert row["text"] == line["text"]


def test_latex_task_reads_each_formula_image_with_a_formula_model(
    tmp_path: Path, tiny_models: tuple[str, str]
) -> None:
    import torch

    from ocrjobs.config import ConfigError
    from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor

    torch.manual_seed(0)
    tokenizer = LatexTokenizer(LatexVocabulary(("x", "^", "{", "}", "2", "\\frac", "+")))
    model = build_recognizer(
        "satrn",
        tokenizer.num_classes,
        dim=16,
        heads=2,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ff=16,
        decoder_ff=16,
    )
    predictor = RecognitionPredictor(
        model, tokenizer, height=32, width=64, max_len=8, name="latex_tiny", version="test"
    )
    model_dir = predictor.save_model_dir(tmp_path / "latex_tiny")
    images = tmp_path / "formulas"
    images.mkdir()
    pixels: dict[str, np.ndarray] = {}
    for i in range(3):
        image = Image.new("RGB", (90 + 20 * i, 30), "white")
        ImageDraw.Draw(image).text((4, 8), f"x^{i} + {i}", fill="black")
        image.save(images / f"f{i}.png")
        pixels[f"f{i}.png"] = np.asarray(image)
    (images / "f9.png").write_bytes(b"")
    out = tmp_path / "out"

    with pytest.raises(ConfigError, match="needs a latex model"):
        run_bulk(BulkConfig(input=str(images), output=str(out), task="latex", recognizer=tiny_models[1]))
    summary = run_bulk(BulkConfig(input=str(images), output=str(out), task="latex", recognizer=model_dir))

    rows = {storage.basename(r["uri"]): r for r in read_rows(str(out))}
    assert summary["errors"] == {"empty": 1} and rows["f9.png"]["error"] == "empty"
    assert summary["models"] == {"detector": None, "recognizer": "latex_tiny@test"}
    expected = predictor([pixels[f"f{i}.png"] for i in range(3)])
    for i in range(3):
        row = rows[f"f{i}.png"]
        assert row["error"] is None and len(row["lines"]) == 1
        # The job's answer is the formula model's own reading of the image: tokens of its vocabulary.
        assert row["text"] == row["lines"][0]["text"] == expected[i].text
        assert set(row["text"].split()) <= set(tokenizer.vocabulary.tokens)
    # Without a recognizer: the shipped formula ensemble (whichever of its folders exist at run time).
    assert BulkConfig(input="in", output="out", task="latex").recognizer == list(FORMULA_ENSEMBLE)


def test_latex_task_with_two_formula_members_writes_their_ensembles_reading(tmp_path: Path) -> None:
    from ocrjobs.recognition.ensemble import Ensemble
    from tests.unit.test_latex_ensemble_jobs import formula_images, write_formula_models

    models = write_formula_models(tmp_path / "models")
    inputs = tmp_path / "formulas"
    inputs.mkdir()
    images = formula_images(3)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(inputs / name)
    (inputs / "f9.png").write_bytes(b"")
    out = tmp_path / "out"
    config = BulkConfig(
        input=str(inputs), output=str(out), task="latex", recognizer=models, exports=ExportsConfig(jsonl=True)
    )
    summary = run_bulk(config)

    ensemble_id = "satrn_latex@test+satrn64_latex@test"
    assert summary["models"] == {"detector": None, "recognizer": ensemble_id}
    assert summary["errors"] == {"empty": 1} and summary["processed"] == 4
    rows = {storage.basename(r["uri"]): r for r in read_rows(str(out))}
    assert sorted(rows) == ["f0.png", "f1.png", "f2.png", "f9.png"] and rows["f9.png"]["error"] == "empty"
    expected = Ensemble.from_model_dirs(models)(list(images.values()))
    for name, want in zip(images, expected, strict=True):
        row = rows[name]
        (line,) = row["lines"]
        assert row["error"] is None and row["recognizer"] == ensemble_id
        assert row["text"] == line["text"] == want.text
        assert [(m["name"], m["text"]) for m in line["members"]] == [(m.name, m.text) for m in want.members]
    exported = [json.loads(x) for x in next((out / "jsonl").glob("*.jsonl")).read_text().splitlines()]
    assert exported[0]["lines"][0]["members"][1]["name"] == "satrn64_latex"


def test_demo_prints_a_table_of_the_bundled_receipts(
    tmp_path: Path, tiny_models: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    detector, recognizer = tiny_models
    argv = ["demo", "--output", str(tmp_path / "demo"), "--set", f"detector={detector}"]
    assert cli.main([*argv, "--set", f"recognizer={recognizer}"]) == 0
    out = capsys.readouterr().out
    samples = sorted(
        p.name for p in (Path(__file__).resolve().parents[2] / "samples" / "receipts").glob("*.jpg")
    )
    assert len(samples) >= 5
    table = out[out.index("file ") :].splitlines()
    # The samples, and a PDF made at run time from the first of them, one receipt per page.
    pages = demo.DEMO_PDF_PAGES
    listed = [
        " ".join(line.split()[: 2 if "receipts.pdf" in line else 1])
        for line in table[1 : 1 + len(samples) + pages]
    ]
    assert listed == [f"receipts.pdf p{k}/{pages}" for k in range(1, pages + 1)] + samples
    rows = len(samples) + pages
    assert f"{rows} pages of {len(samples) + 1} files, {rows} read, 0 errors" in out
    assert str(tmp_path / "demo" / "parquet") in out


def test_results_reach_the_driver_a_recognition_batch_at_a_time(
    tmp_path: Path, tiny_models: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, 24 inputs in two blocks of 12 were joined into one decode task of 24 images (and the
    # driver's prefetch held each block back until the next one existed): every shard was written in
    # the last moments of the job, and a crash before that lost all the work.
    from ocrjobs.jobs import bulk

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data in make_images(good=20).items():
        (inputs / name).write_bytes(data)
    events: list[tuple[str, int]] = []
    add, write = bulk.ShardCollector.add, bulk.write_shard

    def record_add(self: bulk.ShardCollector, batch: Any) -> Any:
        events.append(("rows", batch.num_rows))
        return add(self, batch)

    def record_write(config: BulkConfig, shard: bulk.Shard, table: Any) -> None:
        events.append(("write", table.num_rows))
        write(config, shard, table)

    monkeypatch.setattr(bulk.ShardCollector, "add", record_add)
    monkeypatch.setattr(bulk, "write_shard", record_write)
    detector, recognizer = tiny_models
    config = BulkConfig(
        input=str(inputs),
        output=str(tmp_path / "out"),
        detector=detector,
        recognizer=recognizer,
        shard_size=4,
    )
    summary = run_bulk(config)

    assert summary["config"]["recognition"]["batch_size"] == 8
    arrivals = [n for kind, n in events if kind == "rows"]
    assert sum(arrivals) == 24 and max(arrivals) <= 8
    # Shards are written while later rows are still being recognised.
    assert events.index(("write", 4)) < max(i for i, (kind, _) in enumerate(events) if kind == "rows")
    assert summary["shards"]["written"] == 6


def test_folder_input_keeps_every_decodable_format_and_names_the_files_it_skips(
    tmp_path: Path, tiny_models: tuple[str, str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, fmt in (("a.png", "PNG"), ("b.gif", "GIF"), ("c.ppm", "PPM"), ("d.jp2", "JPEG2000")):
        Image.new("RGB", (96, 32), "white").save(inputs / name, format=fmt)
    (inputs / "scan.pdf").write_bytes(b"%PDF-1.4\n")
    (inputs / "README").write_text("not an image\n")
    out = tmp_path / "out"
    # A driver killed while writing left temporary files; nothing would ever rename them.
    (out / "parquet").mkdir(parents=True)
    leftovers = [
        out / "parquet" / ".part-000000-0123abcd.parquet.0a1b2c3d4e5f.tmp",
        out / "._summary.json.ab.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")

    summary = run_bulk(
        BulkConfig(input=str(inputs), output=str(out), task="recognize", recognizer=tiny_models[1])
    )

    rows = {storage.basename(r["uri"]): r for r in read_rows(str(out))}
    assert sorted(rows) == ["a.png", "b.gif", "c.ppm", "d.jp2", "scan.pdf"]
    assert all(r["error"] is None and r["width"] == 96 for n, r in rows.items() if n != "scan.pdf")
    # PDFs are inputs now: this one is only a header, so it is one error row.
    assert (rows["scan.pdf"]["error"], rows["scan.pdf"]["page"]) == ("corrupt", None)
    assert summary["inputs"] == 5
    assert summary["skipped_files"] == {
        "count": 1,
        "by_suffix": {"(none)": 1},
        "names": [str(inputs / "README")],
    }
    assert summary["temporaries_removed"] == 2 and not any(p.exists() for p in leftovers)
    assert "1 files skipped as neither images nor documents (README)" in bulk_report(summary)


def test_watchdog_stops_a_deadlocked_pipeline_and_frees_the_cluster(
    tmp_path: Path, tiny_models: tuple[str, str], images: dict[str, bytes]
) -> None:
    # Two actors of 1 CPU hold both CPUs, so no decode task (0.5 CPU) can ever run: before the
    # watchdog, such a job waited forever.
    import ray

    from ocrjobs.jobs.bulk import PipelineStalledError

    inputs = _input_folder(tmp_path, images)
    detector, recognizer = tiny_models
    config = BulkConfig.model_validate(
        {
            "input": str(inputs),
            "output": str(tmp_path / "out"),
            "detector": detector,
            "recognizer": recognizer,
            "progress_timeout_s": 5,
            "decode": {"num_cpus": 0.5},
            "detection": {"num_cpus": 1},
            "recognition": {"num_cpus": 1},
        }
    )
    with pytest.raises(PipelineStalledError) as error:
        run_bulk(config)

    message = str(error.value)
    assert "no result rows reached the driver for" in message and "(progress_timeout_s: 5)" in message
    assert "Pending: 1 of 1 shards of this run, 30 inputs without all their rows" in message
    assert "detection 1 actor of 1 CPU" in message and "1 alive node: 2 CPU" in message
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["status"] == "stalled" and summary["error"] == message
    # The stopped pipeline's actors are gone: the next tests get the whole local Ray.
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0.0) < 2.0:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.5)


def test_every_format_of_the_shipped_models_on_bundled_receipts(tmp_path: Path) -> None:
    """Parquet, JSONL, hOCR, ALTO, text and searchable PDF of one run hold the same reading."""
    import xml.etree.ElementTree as ET

    from ocrjobs import results

    repo = Path(__file__).resolve().parents[2]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for sample in sorted((repo / "samples" / "receipts").glob("*.jpg"))[:3]:
        shutil.copy(sample, inputs / sample.name)
    config = BulkConfig(
        input=str(inputs),
        output=str(tmp_path / "out"),
        detector=str(repo / "models" / "dbnet_doc"),
        recognizer=str(repo / "models" / "crnn_doc"),
        exports=ExportsConfig(jsonl=True, hocr=True, alto=True, txt=True, pdf=True),
    )
    assert run_bulk(config)["ok"] == 3
    out = tmp_path / "out"
    (part,) = [p.stem for p in (out / "parquet").glob("part-*.parquet")]
    pages = results.pages_from_table(pq.read_table(out / "parquet" / f"{part}.parquet"))
    jsonl = (out / "jsonl" / f"{part}.jsonl").read_text()
    assert results.to_jsonl(pages) == jsonl  # JSONL keeps polygons to 1/100 px, all else exactly
    assert [[ln.text for ln in p.lines] for p in results.pages_from_jsonl(jsonl)] == [
        [ln.text for ln in p.lines] for p in pages
    ]
    ordered = [[line.text for line in page.ordered_lines() if line.text] for page in pages]
    assert all(len(texts) > 10 for texts in ordered)  # real receipts, real readings

    # hOCR: XHTML whose words, line by line, are the lines' text; each word box lies inside its line.
    xhtml = "{http://www.w3.org/1999/xhtml}"
    hocr = ET.fromstring((out / "hocr" / f"{part}.hocr").read_text())
    for page, div in zip(pages, hocr.iter(f"{xhtml}div"), strict=True):
        spans = [s for s in div if s.get("class") == "ocr_line"]
        lines = page.ordered_lines()
        assert len(spans) == len(lines)
        for line, span in zip(lines, spans, strict=True):
            assert [w.text for w in span] == line.text.split()
            lx0, ly0, lx1, ly1 = (int(v) for v in span.get("title").split(";")[0].split()[1:])
            for word in span:
                wx0, wy0, wx1, wy1 = (int(v) for v in word.get("title").split(";")[0].split()[1:])
                assert lx0 <= wx0 <= wx1 <= lx1 and ly0 <= wy0 <= wy1 <= ly1

    # ALTO v4: one Page per image, its Strings in order are the words of the text export.
    alto = ET.fromstring((out / "alto" / f"{part}.xml").read_text())
    a = f"{{{results.ALTO_NAMESPACE}}}"
    alto_pages = alto.findall(f"{a}Layout/{a}Page")
    assert len(alto_pages) == 3
    text_pages = (out / "txt" / f"{part}.txt").read_text().split("\f")
    for alto_page, texts, text_page in zip(alto_pages, ordered, text_pages, strict=True):
        strings = [s.get("CONTENT") for s in alto_page.iter(f"{a}String") if s.get("CONTENT")]
        assert strings == " ".join(texts).split() == text_page.split()

    # Searchable PDF: a reader's text extraction gives the recognised text back, page by page. Runs of
    # dots compare as one dot: PDF readers drop a glyph drawn within a fraction of an em of the same
    # glyph (PDFium's fake-bold test), which the dotted leaders of receipts ("ADJ. . . . .") are.
    def leaders(words: list[str]) -> list[str]:
        return re.sub(r"\.(\s*\.)+", ".", " ".join(words)).split()

    pdf = pdfium.PdfDocument((out / "pdf" / f"{part}.pdf").read_bytes())
    try:
        assert len(pdf) == 3
        for page, texts in zip(pdf, ordered, strict=True):
            extracted = page.get_textpage().get_text_range().split()
            assert leaders(extracted) == leaders(" ".join(texts).split())
    finally:
        pdf.close()
