"""The result document model (ocrjobs.results): rows and JSON lines in and out, reading order, word
boxes, and the text, hOCR, ALTO and searchable-PDF exporters. Pages are built by hand: no models."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pypdfium2 as pdfium
import pytest

from ocrjobs import results
from ocrjobs.jobs import bulk
from ocrjobs.jobs.bulk_udfs import LINE_TYPE, OUTPUT_SCHEMA
from ocrjobs.results import Line, Page, Word

ALTO = f"{{{results.ALTO_NAMESPACE}}}"
XHTML = "{http://www.w3.org/1999/xhtml}"


def _quad(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A flat axis-aligned quad, TL TR BR BL, as the detector stores polygons."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _line(polygon: list[float], text: str, rec: float | None = 0.75, det: float | None = 0.5) -> dict:
    return {"polygon": polygon, "text": text, "det_score": det, "rec_score": rec, "members": None}


def _rows() -> list[dict]:
    """Output rows: a page whose lines are stored out of reading order, a blank page, an error row.

    Coordinates have at most two decimals, so the JSON lines export (1/100 pixel) keeps them exactly.
    """
    lines = [
        _line(_quad(20, 60, 180, 80), "second line", rec=0.5),
        _line(_quad(250, 24, 330, 42), 'right <&> "q"', rec=0.25, det=None),
        {
            **_line(_quad(20.25, 20, 200.5, 40), "Hello world", rec=0.875),
            "members": [
                {"name": "a", "text": "Hello world", "score": 0.875},
                {"name": "b", "text": "Hallo", "score": 0.5},
            ],
        },
    ]
    base = {"pages": 1, "error": None, "error_detail": None, "detector": "det@1", "recognizer": "rec@2"}
    return [
        {
            **base,
            "uri": "s3://b/in/a.png",
            "page": 1,
            "width": 400,
            "height": 300,
            "lines": lines,
            "text": "x",
        },
        {**base, "uri": "/data/blank.png", "page": 1, "width": 50, "height": 60, "lines": [], "text": ""},
        {
            **base,
            "uri": "s3://b/in/bad.jpg",
            "page": None,
            "pages": None,
            "width": None,
            "height": None,
            "lines": None,
            "text": None,
            "error": "corrupt",
            "error_detail": "JPEG fails to decode",
        },
    ]


def _table(rows: list[dict] | None = None) -> pa.Table:
    return pa.Table.from_pylist(rows if rows is not None else _rows(), schema=OUTPUT_SCHEMA)


# ------------------------------------------------------------------------------------ rows and JSON


def test_row_round_trip_gives_the_table_back() -> None:
    table = _table()
    pages = results.pages_from_table(table)
    assert [p.readable for p in pages] == [True, True, False]
    assert pages[0].lines[2].members is not None and pages[0].lines[2].members[1]["text"] == "Hallo"
    assert pages[0].lines[1].det_score is None and pages[2].lines == []
    rows = [p.to_row() for p in pages]
    assert rows == table.to_pylist()
    assert pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA).equals(table)


def test_round_trip_keeps_float32_noise_and_unknown_fields() -> None:
    row = {**_rows()[0], "t_read": 0.125}
    row["lines"] = [
        {**_line([1.1234567, 2.7654321, 9.3, 2.7, 9.3, 7.1, 1.1, 7.1], "a b"), "char_scores": [0.5, 1.0, 0.5]}
    ]
    # A future schema: the published one plus a line field and a page column this module does not know.
    line_type = pa.struct([*LINE_TYPE, pa.field("char_scores", pa.list_(pa.float32()))])
    fields = [pa.field("lines", pa.list_(line_type)) if f.name == "lines" else f for f in OUTPUT_SCHEMA]
    schema = pa.schema([*fields, pa.field("t_read", pa.float64())])
    row = pa.Table.from_pylist([row], schema=schema).to_pylist()[0]  # float32 values, as Parquet gives them
    assert row["lines"][0]["polygon"][0] != 1.1234567
    page = Page.from_row(row)
    assert page.extra == {"t_read": 0.125} and page.lines[0].extra == {"char_scores": [0.5, 1.0, 0.5]}
    assert page.lines[0].polygon.dtype == np.float32 and page.lines[0].polygon.shape == (4, 2)
    assert page.to_row() == row
    assert Page.from_row(page.to_row()) == page


def test_equality_compares_polygons_by_value() -> None:
    page = results.pages_from_table(_table())[0]
    other = results.pages_from_table(_table())[0]
    assert page == other
    other.lines[0].polygon[0, 0] += 0.5
    assert page != other
    assert Line(polygon=[[0, 0], [1, 0], [1, 1]]) != Line(polygon=[[0, 0], [1, 0], [1, 1], [0, 1]])


def test_missing_optional_fields_read_as_none() -> None:
    page = Page.from_row(
        {"uri": "a.png", "width": 10, "height": 5, "lines": [{"polygon": _quad(0, 0, 10, 5), "text": "hi"}]}
    )
    line = page.lines[0]
    assert (line.det_score, line.rec_score, line.members, line.words) == (None, None, None, None)
    assert page.error is None and page.detector is None and (page.page, page.pages) == (1, 1)
    assert page.to_row()["text"] == "hi"  # no stored text: derived from the lines
    with pytest.raises(ValueError, match="uri"):
        Page.from_row({"lines": []})


def test_json_matches_the_bulk_jsonl_export() -> None:
    table = _table()
    pages = results.pages_from_table(table)
    assert results.to_jsonl(pages) == bulk.jsonl_text(table)
    assert pages[0].to_json()["image"] == "a.png"
    assert pages[0].to_json()["lines"][2]["polygon"][0] == [20.25, 20.0]


def test_jsonl_reads_back_equal_pages() -> None:
    table = _table()
    pages = results.pages_from_table(table)
    text = bulk.jsonl_text(table)
    back = results.pages_from_jsonl(text)
    assert back == pages
    assert results.to_jsonl(back) == text
    assert [Page.from_json(json.loads(line)) for line in text.splitlines()] == pages


def test_jsonl_round_trip_rounds_polygons_to_a_hundredth() -> None:
    page = Page(
        uri="x.png",
        width=20,
        height=10,
        lines=[Line(polygon=[[1.23456, 2.0], [9.87654, 2.0], [9.9, 7.0], [1.2, 7.0]], text="a")],
    )
    back = results.pages_from_jsonl(results.to_jsonl([page]))[0]
    assert back != page  # JSON keeps 1/100 pixel ...
    np.testing.assert_allclose(back.lines[0].polygon, page.lines[0].polygon, atol=0.005)
    back.lines[0].polygon = page.lines[0].polygon
    assert back == page  # ... and nothing else differs


def test_stored_words_round_trip_and_take_precedence() -> None:
    words = [
        Word(text="ab", polygon=[[0, 0], [4, 0], [4, 2], [0, 2]], score=0.5),
        Word(text="c", polygon=[[6, 0], [8, 0], [8, 2], [6, 2]]),
    ]
    page = Page(
        uri="w.png",
        width=10,
        height=4,
        lines=[Line(polygon=[[0, 0], [8, 0], [8, 2], [0, 2]], text="ab c", words=words)],
    )
    assert page.lines[0].word_boxes() == words
    row = page.to_row()
    assert row["lines"][0]["words"][0] == {
        "text": "ab",
        "polygon": [0.0, 0.0, 4.0, 0.0, 4.0, 2.0, 0.0, 2.0],
        "score": 0.5,
    }
    assert Page.from_row(row) == page
    assert results.pages_from_jsonl(results.to_jsonl([page])) == [page]


# ----------------------------------------------------------------------------- order and words


def _order(boxes: list[tuple[float, float, float, float]], width: float | None = None) -> list[int]:
    return results.reading_order(boxes, width)


def test_reading_order_rows_top_to_bottom_then_left_to_right() -> None:
    boxes = [
        (20, 60, 180, 80),  # 0: second row
        (250, 29, 330, 47),  # 1: first row, 7 px lower than the row's centre (half a height is 10)
        (20, 20, 200, 40),  # 2: first row
        (20, 90, 120, 110),  # 3: third row
        (140, 101, 220, 121),  # 4: 11 px below row 3's centre: a row of its own
    ]
    assert _order(boxes, 400) == [2, 1, 0, 3, 4]
    assert _order([]) == []


def test_reading_order_reads_two_columns_column_by_column() -> None:
    width = 600
    title = (40, 10, 560, 40)
    left = [(40, 60 + 30 * k, 280, 80 + 30 * k) for k in range(3)]
    right = [(320, 60 + 30 * k, 560, 80 + 30 * k) for k in range(3)]
    footer = (40, 200, 560, 220)
    boxes = [right[1], footer, left[2], title, right[0], left[0], right[2], left[1]]
    names = ["r1", "footer", "l2", "title", "r0", "l0", "r2", "l1"]
    assert [names[i] for i in _order(boxes, width)] == ["title", "l0", "l1", "l2", "r0", "r1", "r2", "footer"]


def test_reading_order_keeps_a_receipt_row_by_row() -> None:
    # Items on the left, narrow prices on the right: a gutter, but not two columns of running text.
    items = [(20, 20 + 30 * k, 250, 40 + 30 * k) for k in range(4)]
    prices = [(500, 20 + 30 * k, 560, 40 + 30 * k) for k in range(4)]
    order = _order(items + prices, 600)
    assert order == [0, 4, 1, 5, 2, 6, 3, 7]


def test_page_orders_its_lines() -> None:
    page = results.pages_from_table(_table())[0]
    assert [line.text for line in page.ordered_lines()] == ["Hello world", 'right <&> "q"', "second line"]


@pytest.mark.parametrize(
    "polygon",
    [
        [[20, 20], [200, 20], [200, 40], [20, 40]],  # axis-aligned quad
        [[20, 40], [200, 10], [204, 30], [24, 60]],  # slanted quad
        [[20, 20], [110, 15], [200, 20], [200, 40], [110, 45], [20, 40]],  # hexagon: its box is used
    ],
)
def test_split_words_lie_inside_the_line(polygon: list[list[float]]) -> None:
    line = Line(polygon=polygon, text="  a quick  brown fox ", rec_score=0.625)
    words = line.word_boxes()
    assert [w.text for w in words] == ["a", "quick", "brown", "fox"]
    assert all(w.score == 0.625 for w in words)
    x0, y0, x1, y1 = line.bbox
    for word in words:
        assert word.polygon.shape == (4, 2)
        wx0, wy0, wx1, wy1 = word.bbox
        assert x0 - 1e-3 <= wx0 < wx1 <= x1 + 1e-3 and y0 - 1e-3 <= wy0 < wy1 <= y1 + 1e-3
    # left to right, not overlapping, and sized by characters: "quick" (5) is 5x "a" (1)
    lefts = [w.polygon[0, 0] for w in words]
    assert lefts == sorted(lefts)
    assert all(a.polygon[1, 0] < b.polygon[0, 0] for a, b in itertools.pairwise(words))
    top = lambda w: float(np.hypot(*(w.polygon[1] - w.polygon[0])))  # noqa: E731
    assert top(words[1]) == pytest.approx(5 * top(words[0]), rel=1e-4)


def test_split_words_follow_the_quad_edges() -> None:
    quad = np.array([[0, 10], [100, 0], [100, 20], [0, 30]], np.float32)
    words = results.split_words("ab cd", quad)
    # "ab" is characters [0, 2) of 5: 40% along the top and the bottom edges.
    np.testing.assert_allclose(words[0].polygon, [[0, 10], [40, 6], [40, 26], [0, 30]], atol=1e-4)
    np.testing.assert_allclose(words[1].polygon[1:3], [[100, 0], [100, 20]], atol=1e-4)
    assert results.split_words("   ", quad) == []


# ----------------------------------------------------------------------------------- exporters


def _pages() -> list[Page]:
    return results.pages_from_table(_table())


def test_text_export_reading_order_and_page_breaks() -> None:
    text = results.to_text(_pages())
    assert text == 'Hello world\nright <&> "q"\nsecond line\n\f\f'
    assert text.split("\f") == ['Hello world\nright <&> "q"\nsecond line\n', "", ""]
    assert results.to_text([]) == ""


def _title_props(title: str) -> dict[str, str]:
    return {part.strip().split(" ", 1)[0]: part.strip().split(" ", 1)[1] for part in title.split(";")}


def test_hocr_structure() -> None:
    pages = _pages()
    root = ET.fromstring(results.to_hocr(pages, "shard & co").encode())
    assert root.tag == f"{XHTML}html"
    assert root.find(f"{XHTML}head/{XHTML}title").text == "shard & co"
    metas = {m.get("name"): m.get("content") for m in root.iter(f"{XHTML}meta")}
    assert metas["ocr-capabilities"] == "ocr_page ocr_line ocrx_word"
    assert metas["ocr-system"] == "ocrjobs det@1, rec@2"
    divs = root.findall(f"{XHTML}body/{XHTML}div")
    assert [d.get("class") for d in divs] == ["ocr_page", "ocr_page"]  # the error row has no page
    assert [d.get("id") for d in divs] == ["page_1", "page_2"]
    assert _title_props(divs[0].get("title")) == {
        "image": '"s3://b/in/a.png"',
        "bbox": "0 0 400 300",
        "ppageno": "0",
    }
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert len(ids) == len(set(ids))
    lines = divs[0].findall(f"{XHTML}span")
    assert [s.get("class") for s in lines] == ["ocr_line"] * 3
    assert [s.get("id") for s in lines] == ["line_1_1", "line_1_2", "line_1_3"]
    expected = [line for line in pages[0].ordered_lines()]
    for span, line in zip(lines, expected, strict=True):
        props = _title_props(span.get("title"))
        lx0, ly0, lx1, ly1 = map(int, props["bbox"].split())
        assert (lx0, ly0, lx1, ly1) == (
            math.floor(line.bbox[0]),
            math.floor(line.bbox[1]),
            math.ceil(line.bbox[2]),
            math.ceil(line.bbox[3]),
        )
        assert props["x_wconf"] == str(round(100 * line.rec_score))
        assert len(props["poly"].split()) == 8
        words = span.findall(f"{XHTML}span")
        assert words and all(w.get("class") == "ocrx_word" for w in words)
        assert " ".join(w.text for w in words) == line.text
        assert "".join(span.itertext()) == line.text
        for word in words:
            wprops = _title_props(word.get("title"))
            wx0, wy0, wx1, wy1 = map(int, wprops["bbox"].split())
            assert lx0 <= wx0 < wx1 <= lx1 and ly0 <= wy0 < wy1 <= ly1
            assert wprops["x_wconf"] == props["x_wconf"]
    assert divs[1].findall(f"{XHTML}span") == []


def test_alto_structure() -> None:
    pages = _pages()
    xml = results.to_alto(pages)
    root = ET.fromstring(xml.encode())
    assert root.tag == f"{ALTO}alto"
    description, layout = list(root)
    assert description.tag == f"{ALTO}Description" and layout.tag == f"{ALTO}Layout"
    assert description[0].tag == f"{ALTO}MeasurementUnit" and description[0].text == "pixel"
    assert description.find(f"{ALTO}sourceImageInformation") is None  # pages of several files
    processing = description.find(f"{ALTO}Processing")
    assert processing is not None and processing.get("ID")
    alto_pages = layout.findall(f"{ALTO}Page")
    assert len(alto_pages) == 2 and len(list(layout)) == 2  # the error row has no Page
    ids = [e.get("ID") for e in root.iter() if e.get("ID")]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[A-Za-z_][\w.-]*", i) for i in ids)  # xsd:ID
    first = alto_pages[0]
    assert {k: first.get(k) for k in ("ID", "PHYSICAL_IMG_NR", "WIDTH", "HEIGHT")} == {
        "ID": "page_1",
        "PHYSICAL_IMG_NR": "1",
        "WIDTH": "400",
        "HEIGHT": "300",
    }
    (space,) = list(first)
    assert space.tag == f"{ALTO}PrintSpace"
    (block,) = list(space)
    assert block.tag == f"{ALTO}TextBlock" and block.get("ID")
    text_lines = list(block)
    assert all(t.tag == f"{ALTO}TextLine" for t in text_lines)
    assert [t.get("ID") for t in text_lines] == ["line_1_1", "line_1_2", "line_1_3"]

    def box(element: ET.Element) -> tuple[float, float, float, float]:
        x, y = float(element.get("HPOS")), float(element.get("VPOS"))
        return x, y, x + float(element.get("WIDTH")), y + float(element.get("HEIGHT"))

    bx0, by0, bx1, by1 = box(block)
    for text_line, line in zip(text_lines, pages[0].ordered_lines(), strict=True):
        lx0, ly0, lx1, ly1 = box(text_line)
        assert bx0 <= lx0 and by0 <= ly0 and lx1 <= bx1 and ly1 <= by1
        children = list(text_line)
        assert children[0].tag == f"{ALTO}Shape" and len(children[0][0].get("POINTS").split()) == 4
        tags = [c.tag.removeprefix(ALTO) for c in children[1:]]
        assert tags[0::2] == ["String"] * len(tags[0::2]) and tags[1::2] == ["SP"] * len(tags[1::2])
        assert tags[-1] == "String"
        strings = [c for c in children[1:] if c.tag == f"{ALTO}String"]
        assert " ".join(s.get("CONTENT") for s in strings) == line.text
        for string in strings:
            sx0, sy0, sx1, sy1 = box(string)
            assert lx0 <= sx0 < sx1 <= lx1 and ly0 <= sy0 < sy1 <= ly1
            assert 0.0 <= float(string.get("WC")) <= 1.0
            assert float(string.get("WC")) == pytest.approx(line.rec_score)
        for sp in text_line.findall(f"{ALTO}SP"):
            assert float(sp.get("WIDTH")) >= 0
    assert alto_pages[1].find(f"{ALTO}PrintSpace/{ALTO}TextBlock") is None  # a blank page


def test_alto_names_the_file_of_a_single_document() -> None:
    page = Page(
        uri="s3://b/doc.pdf",
        page=2,
        pages=3,
        width=100,
        height=50,
        lines=[Line(polygon=[[0, 0], [50, 0], [50, 10], [0, 10]], text="")],
    )
    root = ET.fromstring(results.to_alto([page]).encode())
    assert (
        root.find(f"{ALTO}Description/{ALTO}sourceImageInformation/{ALTO}fileName").text == "s3://b/doc.pdf"
    )
    assert root.find(f"{ALTO}Layout/{ALTO}Page").get("PHYSICAL_IMG_NR") == "2"
    (string,) = root.iter(f"{ALTO}String")  # a blank line still has the String the schema requires
    assert string.get("CONTENT") == "" and string.get("WC") is None


# ----------------------------------------------------------------------------------------- PDF


def _image(width: int, height: int) -> np.ndarray:
    """Blocks of colour: survives the PDF round trip exactly, and shows any visible text."""
    image = np.full((height, width, 3), 230, np.uint8)
    image[: height // 2, : width // 2] = (200, 30, 40)
    image[height // 2 :, width // 2 :] = (20, 90, 210)
    return image


def _pdf_words(pdf_page: pdfium.PdfPage) -> tuple[str, pdfium.PdfTextPage]:
    textpage = pdf_page.get_textpage()
    return textpage.get_text_range(), textpage


def _check_word_locations(
    textpage: pdfium.PdfTextPage, text: str, page: Page, scale: float, height_pt: float
) -> None:
    """Each word's extracted characters lie in its box (in points, y up), within 1.5 points."""
    cursor = 0
    for line in page.ordered_lines():
        for word in line.word_boxes():
            start = text.index(word.text, cursor)
            cursor = start + len(word.text)
            boxes = np.array([textpage.get_charbox(i) for i in range(start, cursor)])
            x0, y0, x1, y1 = word.bbox
            expected = (x0 * scale, height_pt - y1 * scale, x1 * scale, height_pt - y0 * scale)
            tol = 1.5
            assert boxes[:, 0].min() >= expected[0] - tol and boxes[:, 2].max() <= expected[2] + tol, (
                word.text
            )
            assert boxes[:, 1].min() >= expected[1] - tol and boxes[:, 3].max() <= expected[3] + tol, (
                word.text
            )
            # ... and fill its width: the word is stretched to its box
            assert boxes[:, 0].min() <= expected[0] + tol and boxes[:, 2].max() >= expected[2] - tol, (
                word.text
            )


def test_searchable_pdf_text_layer() -> None:
    pages = _pages()
    images = [_image(400, 300), _image(50, 60), None]
    dpi = 100.0
    data = results.to_searchable_pdf(pages, images, dpi=dpi)
    scale = 72.0 / dpi
    pdf = pdfium.PdfDocument(data)
    try:
        assert len(pdf) == 2  # the error row has no page
        assert pdf[0].get_size() == pytest.approx((400 * scale, 300 * scale))
        assert pdf[1].get_size() == pytest.approx((50 * scale, 60 * scale))
        text, textpage = _pdf_words(pdf[0])
        assert " ".join(text.split()) == " ".join(results.to_text(pages[:1]).split())
        _check_word_locations(textpage, text, pages[0], scale, 300 * scale)
        assert _pdf_words(pdf[1])[0].strip() == ""
        # The image covers the page and the text is invisible: rendering gives the image back.
        rendered = np.asarray(pdf[0].render(scale=dpi / 72.0).to_pil().convert("RGB"))
        assert rendered.shape == (300, 400, 3)
        changed = np.abs(rendered.astype(int) - images[0].astype(int)).max(axis=2) > 40
        assert changed.mean() < 1e-3
    finally:
        pdf.close()


def test_searchable_pdf_slanted_line() -> None:
    polygon = [[20, 60], [300, 11], [304, 35], [24, 84]]  # about 10 degrees up
    page = Page(
        uri="s.png",
        width=320,
        height=100,
        lines=[Line(polygon=polygon, text="tilted line of text", rec_score=0.9)],
    )
    data = results.to_searchable_pdf([page], [_image(320, 100)], dpi=72.0)
    pdf = pdfium.PdfDocument(data)
    try:
        text, textpage = _pdf_words(pdf[0])
        assert " ".join(text.split()) == "tilted line of text"
        _check_word_locations(textpage, text, page, 1.0, 100.0)
    finally:
        pdf.close()


def test_searchable_pdf_spaces_words_that_touch() -> None:
    # Word boxes from a model can nearly touch: the space between them must still extract.
    words = [
        Word(text="tight", polygon=_quad(10, 10, 60, 30)),
        Word(text="words", polygon=_quad(61, 10, 111, 30)),
    ]
    line = Line(polygon=_quad(10, 10, 111, 30), text="tight words", words=words)
    page = Page(uri="t.png", width=120, height=40, lines=[line])
    pdf = pdfium.PdfDocument(results.to_searchable_pdf([page], [_image(120, 40)], dpi=72.0))
    try:
        text, textpage = _pdf_words(pdf[0])
        assert text.split() == ["tight", "words"]
        _check_word_locations(textpage, text, page, 1.0, 40.0)
    finally:
        pdf.close()


def test_searchable_pdf_separates_lines_that_overlap() -> None:
    # Two lines of a real receipt whose boxes overlap: without a space after "GST" the PDF's text
    # extraction ran them together as "GSTReg".
    lines = [
        Line(polygon=_quad(168, 139, 215, 153), text="GST"),
        Line(polygon=_quad(207, 133, 447, 157), text="Reg No 000184401920"),
    ]
    page = Page(uri="r.jpg", width=500, height=200, lines=lines)
    pdf = pdfium.PdfDocument(results.to_searchable_pdf([page], [_image(500, 200)], dpi=72.0))
    try:
        assert _pdf_words(pdf[0])[0].split() == ["GST", "Reg", "No", "000184401920"]
    finally:
        pdf.close()


def test_searchable_pdf_with_an_embedded_font_keeps_other_scripts() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    font = (Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf").read_bytes()
    page = Page(
        uri="r.png",
        width=300,
        height=60,
        lines=[Line(polygon=_quad(10, 10, 290, 40), text="Привет мир café")],
    )
    data = results.to_searchable_pdf([page], [_image(300, 60)], dpi=72.0, font=font)
    pdf = pdfium.PdfDocument(io.BytesIO(data))
    try:
        text, textpage = _pdf_words(pdf[0])
        assert " ".join(text.split()) == "Привет мир café"
        _check_word_locations(textpage, text, page, 1.0, 60.0)
    finally:
        pdf.close()


def test_searchable_pdf_checks_its_images() -> None:
    pages = _pages()
    with pytest.raises(ValueError, match="images for"):
        results.to_searchable_pdf(pages, [_image(400, 300)])
    with pytest.raises(ValueError, match="no image"):
        results.to_searchable_pdf(pages, [None, None, None])
    with pytest.raises(ValueError, match="uint8"):
        results.to_searchable_pdf(pages[:1], [np.zeros((300, 400, 3), np.float32)])
    gray = np.full((300, 400), 128, np.uint8)  # gray images are accepted
    assert results.to_searchable_pdf(pages[:1], [gray]).startswith(b"%PDF-")
