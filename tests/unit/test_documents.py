"""Documents without Ray: PDFs and multi-page TIFFs opened, paged and refused; the bulk read stage's
fan-out into pages and its limits; the driver's page-by-page accounting of a shard."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from ocrjobs import documents
from ocrjobs.config import StorageConfig
from ocrjobs.documents import DocumentError, open_document, pdf_from_images
from ocrjobs.images import ImageDecodeError
from ocrjobs.jobs import bulk
from ocrjobs.jobs.bulk import BulkConfig, ShardCollector, plan_shards
from ocrjobs.jobs.bulk_udfs import DECODED_SCHEMA, INPUT_SCHEMA, RESULT_SCHEMA, read_pages

# ------------------------------------------------------------------------------------------ builders


def page_images(n: int, size: tuple[int, int] = (200, 300), start: int = 0) -> list[np.ndarray]:
    """``n`` distinct receipt-like RGB pages of ``size`` (width, height)."""
    out = []
    for i in range(start, start + n):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for j, text in enumerate([f"PAGE {i:03d}", "COFFEE  3.50", f"TOTAL  {i + 5}.75"]):
            draw.text((12, 20 + 45 * j), text, fill="black")
        out.append(np.asarray(image))
    return out


def multipage_tiff(pages: list[np.ndarray]) -> bytes:
    """A lossless multi-page TIFF, one frame per page."""
    frames = [Image.fromarray(p) for p in pages]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:], compression="tiff_deflate")
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    """A one-page PDF protected by a user password nobody knows (standard security handler, RC4 40-bit:
    /U is random, so the empty password does not open it, as a PDF encrypted with a real password)."""
    header = b"%PDF-1.4\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>"
        % (os.urandom(32).hex().encode(), os.urandom(32).hex().encode()),
    ]
    out = bytearray(header)
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    file_id = os.urandom(16).hex().encode()
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\n" % (
        len(objects) + 1,
        file_id,
        file_id,
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ documents


def test_a_pdf_renders_each_page_back_to_its_image_at_the_dpi_it_was_made_with() -> None:
    pages = page_images(3, size=(439, 1004))  # 439 px at 150 dpi = 210.72 pt: no pixel lost to rounding
    data = pdf_from_images(pages, dpi=150)
    assert documents.is_pdf(data)
    with open_document(data, dpi=150) as doc:
        assert (doc.kind, doc.pages) == ("pdf", 3)
        for number, page in enumerate(pages, start=1):
            assert np.array_equal(doc.page(number), page)
        with pytest.raises(IndexError):
            doc.page(4)
    with open_document(data, dpi=75) as doc:
        assert doc.page(1).shape == (502, 220, 3)  # half the resolution, half the pixels per side


def test_jpeg_pages_are_stored_as_they_are_and_render_at_their_size() -> None:
    samples = Path(__file__).resolve().parents[2] / "samples" / "receipts"
    jpegs = [p.read_bytes() for p in sorted(samples.glob("*.jpg"))[:2]]
    data = pdf_from_images(jpegs)
    assert len(data) < sum(len(j) for j in jpegs) + 10_000  # JPEG kept, not re-encoded as pixels
    with open_document(data) as doc:
        for number, jpeg in enumerate(jpegs, start=1):
            assert doc.page(number).shape[1::-1] == Image.open(io.BytesIO(jpeg)).size


def test_a_multipage_tiff_has_one_page_per_frame() -> None:
    pages = page_images(3)
    with open_document(multipage_tiff(pages)) as doc:
        assert (doc.kind, doc.pages) == ("tiff", 3)
        assert all(np.array_equal(doc.page(k + 1), pages[k]) for k in range(3))
    with open_document(_png(pages[0])) as doc:
        assert (doc.kind, doc.pages) == ("image", 1)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow on the cut TIFF, before it refuses it
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("encrypted", "encrypted"),
        ("truncated", "corrupt"),
        ("not a pdf", "not_an_image"),
        ("empty", "empty"),
        ("cut tiff", "corrupt"),
    ],
)
def test_files_that_cannot_be_opened_raise_a_document_error_with_a_reason(name: str, reason: str) -> None:
    pdf = pdf_from_images(page_images(2))
    data = {
        "encrypted": encrypted_pdf(),
        "truncated": pdf[: len(pdf) // 2],
        "not a pdf": b"%PDX-1.4 this is a text file about PDFs\n" * 10,
        "empty": b"",
        "cut tiff": multipage_tiff(page_images(2))[:40],
    }[name]
    with pytest.raises(DocumentError) as error:
        open_document(data)
    assert error.value.reason == reason and error.value.pages is None and str(error.value)


def test_limits_refuse_a_long_document_whole_and_a_large_page_alone() -> None:
    small, large = page_images(1)[0], page_images(1, size=(400, 600))[0]
    for data in (pdf_from_images([small, large, small], dpi=72), multipage_tiff([small, large, small])):
        with pytest.raises(DocumentError) as error:
            open_document(data, dpi=72, max_pages=2)
        assert (error.value.reason, error.value.pages) == ("too_many_pages", 3)
        with open_document(data, dpi=72, max_pixels=200 * 300) as doc:
            assert doc.page(1).shape == (300, 200, 3) and doc.page(3).shape == (300, 200, 3)
            with pytest.raises(ImageDecodeError) as page_error:
                doc.page(2)
            assert page_error.value.reason == "too_many_pixels"


def test_bulk_defaults_match_the_documents_module() -> None:
    assert (bulk.DEFAULT_DPI, bulk.DEFAULT_MAX_PAGES) == (documents.DEFAULT_DPI, documents.DEFAULT_MAX_PAGES)
    config = BulkConfig(input="in", output="out")
    assert (config.documents.dpi, config.documents.max_pages) == (150.0, 1000)


# ------------------------------------------------------------------------------- fan-out (read stage)


def _inputs(uris: list[str], shard: int = 0) -> pa.Table:
    return pa.Table.from_pydict(
        {"uri": uris, "shard": [shard] * len(uris), "position": list(range(len(uris)))}, schema=INPUT_SCHEMA
    )


def test_read_pages_fans_each_file_out_into_its_pages_in_small_tables(tmp_path: Path) -> None:
    pages = page_images(9)
    small, large = pages[0], page_images(1, size=(400, 600))[0]
    files = {
        "a.pdf": pdf_from_images(pages[:5], dpi=72),
        "b.tif": multipage_tiff(pages[5:8]),
        "c.png": _png(pages[8]),
        "huge.pdf": pdf_from_images([small, large], dpi=72),
        "long.pdf": pdf_from_images([small] * 4, dpi=72),
        "locked.pdf": encrypted_pdf(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = [str(tmp_path / n) for n in [*files, "gone.pdf"]]

    tables = list(
        read_pages(
            _inputs(uris),
            storage_config=StorageConfig(),
            max_pixels=200 * 300,
            dpi=72,
            max_pages=3,
        )
    )
    assert all(t.schema == DECODED_SCHEMA for t in tables)
    assert {t.num_rows for t in tables} == {1}  # pages leave the task one at a time
    rows = pa.concat_tables(tables).to_pylist()
    got = [(Path(r["uri"]).name, r["page"], r["pages"], r["error"]) for r in rows]
    assert got == [
        *[("a.pdf", k, 5, "too_many_pages") for k in [None]],  # over max_pages=3: one row for the file
        *[("b.tif", k, 3, None) for k in (1, 2, 3)],
        ("c.png", 1, 1, None),
        ("huge.pdf", 1, 2, None),
        ("huge.pdf", 2, 2, "too_many_pixels"),  # that page alone
        ("long.pdf", None, 4, "too_many_pages"),
        ("locked.pdf", None, None, "encrypted"),
        ("gone.pdf", None, None, "not_found"),
    ]
    by_key = {(Path(r["uri"]).name, r["page"]): r for r in rows}
    for k in (1, 2, 3):
        row = by_key[("b.tif", k)]
        pixels = np.frombuffer(row["pixels"], np.uint8).reshape(row["height"], row["width"], 3)
        assert np.array_equal(pixels, pages[4 + k])
    assert by_key[("b.tif", 1)]["t_read"] > 0 and by_key[("b.tif", 2)]["t_read"] == 0  # read once per file
    assert all(r["position"] == uris.index(r["uri"]) for r in rows)


@pytest.mark.parametrize(("read_all_files", "suffixes"), [(False, bulk.storage.INPUT_SUFFIXES), (True, None)])
def test_read_all_files_lists_every_file_instead_of_images_and_pdfs(
    monkeypatch: pytest.MonkeyPatch, read_all_files: bool, suffixes: tuple[str, ...] | None
) -> None:
    asked = []

    def scan(spec: str, config: object, wanted: tuple[str, ...] | None) -> None:
        asked.append(wanted)
        raise bulk.storage.ObjectNotFoundError("stop here", spec)

    monkeypatch.setattr(bulk, "model_id", lambda *args, **kwargs: "m@1")
    monkeypatch.setattr(bulk.storage, "scan_inputs", scan)
    with pytest.raises(bulk.storage.ObjectNotFoundError):
        bulk.run_bulk(BulkConfig(input="in", output="out", read_all_files=read_all_files))
    assert asked == [suffixes] and (suffixes is None or ".pdf" in suffixes)


def test_documents_get_input_blocks_of_their_own() -> None:
    config = bulk.resolve_resources(BulkConfig(input="in", output="out"), [])
    shards = plan_shards([f"/in/{n}" for n in ["a.jpg", "b.jpg", "c.PDF", "d.jpg", "e.tif", "f.jpg"]], 100)
    config = config.model_copy(update={"decode": config.decode.model_copy(update={"batch_size": 2})})
    blocks = bulk.input_blocks(config, shards)
    assert [[u.rsplit("/", 1)[1] for u in b.column("uri").to_pylist()] for b in blocks] == [
        ["a.jpg", "b.jpg"],
        ["c.PDF"],
        ["d.jpg"],
        ["e.tif"],
        ["f.jpg"],
    ]


# ------------------------------------------------------------------------------------- page accounting


def _page_rows(shard: int, uris: tuple[str, ...], keys: list[tuple[int, int | None, int | None]]) -> pa.Table:
    """Result rows for ``(position, page, pages)`` keys of a shard."""
    n = len(keys)
    return pa.Table.from_pydict(
        {
            "uri": [uris[p] for p, _, _ in keys],
            "shard": [shard] * n,
            "position": [p for p, _, _ in keys],
            "page": [page for _, page, _ in keys],
            "pages": [pages for _, _, pages in keys],
            "width": [10] * n,
            "height": [20] * n,
            "error": [None] * n,
            "error_detail": [None] * n,
            "lines": [[] for _ in range(n)],
            "text": [""] * n,
            **{name: [0.0] * n for name in ("t_read", "t_decode", "t_detect", "t_recognize")},
        },
        schema=RESULT_SCHEMA,
    )


def test_a_shard_is_complete_once_every_page_of_every_file_has_arrived() -> None:
    (shard,) = plan_shards(["/in/a.pdf", "/in/b.png", "/in/c.pdf"], 3)
    collector = ShardCollector([shard])
    # b.png (page 1 of 1) and the file-level error row of c.pdf, then a.pdf's 3 pages in any order.
    assert collector.add(_page_rows(0, shard.uris, [(1, 1, 1), (2, None, None), (0, 3, 3)])) == []
    assert collector.add(_page_rows(0, shard.uris, [(0, 1, 3)])) == []
    assert collector.finished_inputs(0) == 2 and collector.received(0) == 4
    ((done, table),) = collector.add(_page_rows(0, shard.uris, [(0, 2, 3)]))
    assert done == shard and collector.unfinished() == []
    got = list(zip(table.column("uri").to_pylist(), table.column("page").to_pylist(), strict=True))
    assert got == [
        ("/in/a.pdf", 1),
        ("/in/a.pdf", 2),
        ("/in/a.pdf", 3),
        ("/in/b.png", 1),
        ("/in/c.pdf", None),
    ]


def test_a_page_twice_or_a_changing_page_count_is_refused() -> None:
    (shard,) = plan_shards(["/in/a.pdf", "/in/b.pdf"], 2)
    collector = ShardCollector([shard])
    collector.add(_page_rows(0, shard.uris, [(0, 1, 2)]))
    with pytest.raises(RuntimeError, match="arrived twice; the shard is not written"):
        collector.add(_page_rows(0, shard.uris, [(0, 1, 2)]))
    collector = ShardCollector([shard])
    with pytest.raises(RuntimeError, match="disagree on its page count"):
        collector.add(_page_rows(0, shard.uris, [(0, 1, 2), (0, 2, 3)]))
    # A file both unopened and paged: never written.
    collector = ShardCollector([shard])
    with pytest.raises(RuntimeError, match="not written"):
        collector.add(_page_rows(0, shard.uris, [(0, None, None), (0, 1, 1), (1, 1, 1)]))
