"""Bulk job without Ray: the output schema and exports, the read + decode stage, failure isolation."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ocrjobs.config import StorageConfig
from ocrjobs.images import encode_jpeg, encode_png
from ocrjobs.jobs import bulk, demo
from ocrjobs.jobs.bulk_udfs import INPUT_SCHEMA, OUTPUT_SCHEMA, RESULT_SCHEMA, _run_isolated, read_pages

LINE = {
    "polygon": [1.0, 2.0, 30.0, 2.0, 30.0, 12.5, 1.0, 12.5],
    "text": "TOTAL <12.50> & tax",
    "det_score": 0.9,
    "rec_score": 0.8,
}


def _results() -> pa.Table:
    """Three result rows: two lines, no lines, and a decode error."""
    return pa.Table.from_pydict(
        {
            "uri": ["s3://b/in/a.jpg", "s3://b/in/blank.png", "s3://b/in/bad.jpg"],
            "shard": [0, 0, 0],
            "position": [0, 1, 2],
            "page": [1, 1, None],
            "pages": [1, 1, None],
            "width": [40, 50, None],
            "height": [20, 60, None],
            "error": [None, None, "corrupt"],
            "error_detail": [None, None, "JPEG image fails to decode"],
            "lines": [[LINE, {**LINE, "text": "", "det_score": None}], [], None],
            "text": ["TOTAL <12.50> & tax", "", None],
            "t_read": [0.1] * 3,
            "t_decode": [0.1] * 3,
            "t_detect": [0.1] * 3,
            "t_recognize": [0.1] * 3,
        },
        schema=RESULT_SCHEMA,
    )


def test_output_table_has_the_fixed_schema_even_when_empty() -> None:
    table = bulk.output_table(_results(), "det@1", "rec@2")
    assert table.schema == OUTPUT_SCHEMA
    assert table.column("detector").to_pylist() == ["det@1"] * 3
    assert table.column("error").to_pylist() == [None, None, "corrupt"]
    empty = bulk.output_table(_results().slice(0, 0), None, "rec@2")
    assert empty.num_rows == 0 and empty.schema == OUTPUT_SCHEMA
    # What a reader of a shard sees: the same schema from a shard of error rows only, and from Parquet.
    for t in (table, bulk.output_table(_results().slice(2, 1), None, "rec@2")):
        back = pq.read_table(io.BytesIO(bulk.parquet_bytes(t)))
        assert back.schema == OUTPUT_SCHEMA and back.to_pylist() == t.to_pylist()


def test_jsonl_export_is_readable_by_eval_predictions() -> None:
    rows = [
        json.loads(line)
        for line in bulk.jsonl_text(bulk.output_table(_results(), "det@1", "rec@2")).splitlines()
    ]
    assert [r["image"] for r in rows] == ["a.jpg", "blank.png", "bad.jpg"]
    assert rows[0]["lines"][0]["polygon"] == [[1.0, 2.0], [30.0, 2.0], [30.0, 12.5], [1.0, 12.5]]
    assert rows[0]["lines"][0]["text"] == "TOTAL <12.50> & tax"
    assert rows[1]["lines"] == [] and rows[2]["lines"] is None and rows[2]["error"] == "corrupt"


def test_hocr_export_is_xml_with_one_page_per_readable_image() -> None:
    text = bulk.hocr_text(bulk.output_table(_results(), "det@1", "rec@2"), "part-000000-0123abcd")
    root = ET.fromstring(text)
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    pages = root.findall(".//h:div[@class='ocr_page']", ns)
    assert len(pages) == 2
    assert pages[0].get("title") == 'image "s3://b/in/a.jpg"; bbox 0 0 40 20; ppageno 0'
    lines = pages[0].findall("h:span[@class='ocr_line']", ns)
    words = [[w.text for w in line.findall("h:span[@class='ocrx_word']", ns)] for line in lines]
    assert words == [["TOTAL", "<12.50>", "&", "tax"], []]
    assert lines[0].get("title") == "bbox 1 2 30 13; poly 1 2 30 2 30 12 1 12; x_wconf 80"


def test_every_export_format_goes_through_the_document_model() -> None:
    from ocrjobs import results

    table = bulk.output_table(_results(), "det@1", "rec@2")
    config = bulk.BulkConfig(input="s3://b/in", output="s3://b/out")
    pages = results.pages_from_table(table)
    expected = {
        "jsonl": results.to_jsonl(pages),
        "hocr": results.to_hocr(pages, "part-x"),
        "alto": results.to_alto(pages),
        "txt": results.to_text(pages),
    }
    for fmt, text in expected.items():
        assert bulk.export_bytes(config, fmt, table, "part-x") == text.encode()
    assert bulk.export_bytes(config, "txt", table, "part-x").decode().split("\f") == [
        "TOTAL <12.50> & tax\n",
        "",
        "",
    ]
    alto = ET.fromstring(bulk.export_bytes(config, "alto", table, "part-x"))
    ns = {"a": results.ALTO_NAMESPACE}
    assert len(alto.findall(".//a:Page", ns)) == 2
    assert [s.get("CONTENT") for s in alto.findall(".//a:TextLine", ns)[0].findall("a:String", ns)] == [
        "TOTAL",
        "<12.50>",
        "&",
        "tax",
    ]
    with pytest.raises(ValueError, match="unknown export format"):
        bulk.export_bytes(config, "docx", table, "part-x")


def test_pdf_export_reads_the_pages_again_and_leaves_out_inputs_that_are_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pypdfium2 as pdfium

    from ocrjobs.documents import pdf_from_images

    image = np.full((20, 40, 3), 255, np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(image))
    # A two-page PDF input: each row is a page; page 2 is rendered again at documents.dpi.
    (tmp_path / "doc.pdf").write_bytes(pdf_from_images([image, np.zeros((30, 50, 3), np.uint8)], dpi=150))
    rows = _results().to_pylist()
    rows[0]["uri"] = str(tmp_path / "a.png")
    rows[1].update(uri=str(tmp_path / "doc.pdf"), page=2, pages=2, width=50, height=30)
    rows.append({**rows[0], "uri": str(tmp_path / "deleted.png"), "position": 3})
    table = bulk.output_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), "det@1", "rec@2")
    config = bulk.BulkConfig(input=str(tmp_path), output=str(tmp_path / "out"))

    with caplog.at_level("WARNING", logger="ocrjobs.jobs.bulk"):
        data = bulk.export_bytes(config, "pdf", table, "part-x")
    assert "1 pages left out" in caplog.text and "deleted.png" in caplog.text
    pdf = pdfium.PdfDocument(data)
    try:
        assert len(pdf) == 2  # a.png and page 2 of doc.pdf; not the error row nor the vanished file
        scale = 72.0 / config.documents.dpi
        assert pdf[0].get_size() == pytest.approx((40 * scale, 20 * scale))
        assert pdf[1].get_size() == pytest.approx((50 * scale, 30 * scale))
        assert pdf[0].get_textpage().get_text_range().split() == ["TOTAL", "<12.50>", "&", "tax"]
        assert pdf[1].get_textpage().get_text_range().strip() == ""
    finally:
        pdf.close()


# ------------------------------------------------------------------------------------------ decoding


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_read_pages_turns_every_bad_input_into_an_error_row(tmp_path: Path) -> None:
    good = encode_png(_image(30, 20))
    jpeg = encode_jpeg(_image(40, 50))
    gray = io.BytesIO()
    Image.fromarray(_image(12, 16)[..., 0]).save(gray, format="PNG")
    files = {
        "a.png": good,
        "b.jpg": jpeg,
        "c.png": gray.getvalue(),
        "empty.jpg": b"",
        "text.jpg": b"not an image at all",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "huge.png": encode_png(_image(100, 100)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.png")]
    batch = pa.Table.from_pydict(
        {"uri": uris, "shard": [3] * len(uris), "position": list(range(len(uris)))}, schema=INPUT_SCHEMA
    )
    out = pa.concat_tables(read_pages(batch, storage_config=StorageConfig(), max_pixels=5000, read_threads=4))
    rows = {Path(r["uri"]).name: r for r in out.to_pylist()}
    assert out.column("uri").to_pylist() == uris
    assert {n: r["error"] for n, r in rows.items()} == {
        "a.png": None,
        "b.jpg": None,
        "c.png": None,
        "empty.jpg": "empty",
        "text.jpg": "not_an_image",
        "truncated.jpg": "corrupt",
        "huge.png": "too_many_pixels",
        "missing.png": "not_found",
    }
    assert (rows["a.png"]["width"], rows["a.png"]["height"]) == (20, 30)
    # Opened files are page 1 of 1 (a page that fails to decode too); files never opened have no page.
    assert {n: (r["page"], r["pages"]) for n, r in rows.items()} == {
        **{n: (1, 1) for n in ("a.png", "b.jpg", "c.png", "truncated.jpg", "huge.png")},
        **{n: (None, None) for n in ("empty.jpg", "text.jpg", "missing.png")},
    }
    assert np.array_equal(np.frombuffer(rows["a.png"]["pixels"], np.uint8).reshape(30, 20, 3), _image(30, 20))
    assert len(rows["c.png"]["pixels"]) == 12 * 16 * 3  # gray becomes RGB
    for name in ("empty.jpg", "missing.png"):
        assert rows[name]["pixels"] == b"" and rows[name]["width"] is None and rows[name]["error_detail"]


# --------------------------------------------------------------------------------------- isolation


def _square_all(items: list[int]) -> list[int]:
    if any(i < 0 for i in items):
        raise ValueError("negative")
    return [i * i for i in items]


def test_isolation_keeps_the_good_groups_of_a_failing_batch() -> None:
    assert _run_isolated(_square_all, [[1, 2], [], [3]]) == [[1, 4], [], [9]]
    result = _run_isolated(_square_all, [[1], [-2, 2], [3]])
    assert result[0] == [1] and result[2] == [9] and isinstance(result[1], ValueError)
    # One group alone that fails is that image's error; every group failing is systematic.
    alone = _run_isolated(_square_all, [[], [-1], []])
    assert alone[0] == alone[2] == [] and isinstance(alone[1], ValueError)
    with pytest.raises(ValueError):
        _run_isolated(_square_all, [[-1], [], [-2]])


# ------------------------------------------------------------------------------------------- demo


def test_demo_table_shows_lines_and_errors() -> None:
    rows = [
        {"uri": "/x/b.jpg", "lines": [LINE, LINE], "text": "\n  first words here\nsecond", "error": None},
        {"uri": "/x/a.jpg", "lines": None, "text": None, "error": "corrupt"},
        {"uri": "/x/c.jpg", "lines": [], "text": "", "error": None},
        {"uri": "/x/d.pdf", "page": 2, "pages": 2, "lines": [LINE], "text": "page two", "error": None},
        {"uri": "/x/d.pdf", "page": 1, "pages": 2, "lines": [LINE], "text": "page one", "error": None},
    ]
    assert demo.format_table(rows).splitlines() == [
        "file        lines  first line of text",
        "a.jpg           -  error: corrupt",
        "b.jpg           2  first words here",
        "c.jpg           0  ",
        "d.pdf p1/2      1  page one",
        "d.pdf p2/2      1  page two",
    ]
