"""OCR results as one document type, Page -> Line -> Word, and the formats it is written in.

A :class:`Page` is one row of the bulk job's output (``ocrjobs.jobs.bulk_udfs.OUTPUT_SCHEMA``): it
reads back from that row (:meth:`Page.from_row`, :func:`pages_from_table`) and from the JSON lines the
job writes (:meth:`Page.from_json`, :func:`pages_from_jsonl`), and writes both back unchanged. The
exporters are pure functions of a list of pages: :func:`to_text`, :func:`to_hocr`, :func:`to_alto`
and :func:`to_searchable_pdf`. The design follows docTR's ``io/elements.py`` (a document tree whose
nodes export themselves as XML), cut down to what the bulk job produces: pages of lines, no blocks.

Conventions (those of :mod:`ocrjobs.geometry`): coordinates are pixels of the page image, x to the
right and y down; a polygon is a float32 ``[n, 2]`` array; a quad is ordered clockwise as seen on
screen from its top-left corner.

Words. The recognizers read whole lines, so a line usually has no word boxes of its own; then
:meth:`Line.word_boxes` splits its text at whitespace and gives each word a slice of the line's quad
in proportion to its position in the text, counted in characters (spaces included, so the gaps
between words stay gaps). That is exact for monospaced text and off by a character or so for
proportional fonts: close enough to select, search and highlight words.

Reading order. Lines are stored in the detector's order (:func:`ocrjobs.geometry.reading_order`);
the exporters put them in the order of :func:`reading_order` below: rows top to bottom (a line joins
a row when its vertical centre is within half the row's line height of the row's centre), each row
left to right, and a page that is clearly set in two columns read column by column.

Error rows (``error`` set: the file or page could not be read or recognised) have no page in hOCR,
ALTO or PDF output; the text export gives them an empty page, so its form-feed separated pages stay
aligned with the input pages.

>>> page = Page(uri="s3://bucket/scan.png", width=200, height=50,
...             lines=[Line(polygon=[[10, 10], [190, 10], [190, 30], [10, 30]], text="Hello world")])
>>> [(w.text, [round(v) for v in w.bbox]) for w in page.lines[0].word_boxes()]
[('Hello', [10, 10, 92, 30]), ('world', [108, 10, 190, 30])]
>>> to_text([page])
'Hello world\\n'
"""

from __future__ import annotations

import ctypes
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ALTO_NAMESPACE",
    "Line",
    "Page",
    "Word",
    "pages_from_jsonl",
    "pages_from_table",
    "reading_order",
    "split_words",
    "to_alto",
    "to_hocr",
    "to_jsonl",
    "to_searchable_pdf",
    "to_text",
    "words_from_spans",
]

ALTO_NAMESPACE = "http://www.loc.gov/standards/alto/ns-v4#"
_ALTO_SCHEMA = "http://www.loc.gov/standards/alto/v4/alto-4-2.xsd"

# The row keys of OUTPUT_SCHEMA and LINE_TYPE, in schema order: rows are written back in this order
# so JSON lines match ``ocrjobs.jobs.bulk.jsonl_text`` byte for byte. Keys not named here are kept
# (``extra``) and written after them, so a column added to the schema survives a round trip.
_PAGE_KEYS = (
    "uri",
    "page",
    "pages",
    "width",
    "height",
    "lines",
    "text",
    "error",
    "error_detail",
    "detector",
    "recognizer",
)
_LINE_KEYS = ("polygon", "text", "det_score", "rec_score", "members", "words")
_WORD_KEYS = ("text", "polygon", "score")

# The resolution a page image is taken to have in the PDF: that of ocrjobs.documents.DEFAULT_DPI, at
# which the bulk job renders PDF inputs, so a page rendered from a PDF keeps its paper size.
_DEFAULT_DPI = 150.0
_POINTS_PER_INCH = 72.0
# Most a text-layer word's glyphs are widened relative to their height (see _add_word).
_MAX_STRETCH = 3.0
# Characters XML 1.0 forbids even escaped; a recogniser's vocabulary should never produce them, but
# one stray control character would make a whole hOCR/ALTO file unparseable.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_WORD = re.compile(r"\S+")


# ------------------------------------------------------------------------------------------ model


def _as_polygon(points: Any) -> np.ndarray:
    """``[n, 2]`` float32 from ``[[x, y], ...]``, a flat ``[x0, y0, x1, y1, ...]`` or an array."""
    array = np.asarray(points if points is not None else [], dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == 2:
        return array
    flat = array.reshape(-1)
    return flat[: len(flat) // 2 * 2].reshape(-1, 2)


def _bbox_of(polygon: np.ndarray) -> tuple[float, float, float, float]:
    if len(polygon) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1))


def _points_json(polygon: np.ndarray) -> list[list[float]]:
    # Rounded to 1/100 pixel exactly as bulk.jsonl_text does (float32 noise is not worth the bytes).
    return [[round(float(x), 2), round(float(y), 2)] for x, y in polygon]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    return bool(a == b)


class _Equal:
    """Field-by-field equality that compares polygon arrays by value (a dataclass's own ``__eq__``
    would ask numpy for the truth of an array)."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class Word(_Equal):
    """One word of a line.

    Attributes:
        text: the word, without spaces.
        polygon: float32 ``[4, 2]`` quad (or any ``[n, 2]`` polygon) in page pixels.
        score: confidence in ``[0, 1]``, ``None`` when unknown.
    """

    text: str
    polygon: np.ndarray
    score: float | None = None

    def __post_init__(self) -> None:
        self.polygon = _as_polygon(self.polygon)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the axis-aligned box around the polygon."""
        return _bbox_of(self.polygon)

    def to_row(self) -> dict[str, Any]:
        """The word as a row struct (``polygon`` flat, as lines store theirs)."""
        return {"text": self.text, "polygon": self.polygon.reshape(-1).tolist(), "score": self.score}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Word:
        """A word from :meth:`to_row`'s dict, or the same with ``polygon`` as ``[[x, y], ...]``."""
        return cls(
            text=row.get("text") or "", polygon=_as_polygon(row.get("polygon")), score=row.get("score")
        )


@dataclass(eq=False)
class Line(_Equal):
    """One recognised text line.

    Attributes:
        polygon: float32 ``[n, 2]`` in page pixels; a quad from the detector, or the whole image
            for ``task: recognize``.
        text: the recognised text.
        det_score: detection confidence, ``None`` when nothing was detected (``task: recognize``).
        rec_score: recognition confidence in ``[0, 1]``.
        words: word boxes as a model gave them; ``None`` (the usual case) when the line has none,
            and :meth:`word_boxes` derives them from the text.
        members: each ensemble member's reading (``{"name", "text", "score"}``), ``None`` with one
            recognizer.
        extra: row fields this module does not know, kept so that a row reads back unchanged.
    """

    polygon: np.ndarray
    text: str = ""
    det_score: float | None = None
    rec_score: float | None = None
    words: list[Word] | None = None
    members: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.polygon = _as_polygon(self.polygon)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the axis-aligned box around the polygon."""
        return _bbox_of(self.polygon)

    def word_boxes(self) -> list[Word]:
        """The line's words: those stored in :attr:`words`, else the text split by :func:`split_words`."""
        if self.words is not None:
            return list(self.words)
        return split_words(self.text, self.polygon, self.rec_score)

    def to_row(self, points: bool = False) -> dict[str, Any]:
        """The line as a ``LINE_TYPE`` struct.

        Args:
            points: polygons as ``[[x, y], ...]`` rounded to 1/100 pixel (the JSON lines form)
                instead of flat float lists (the Parquet form).

        Returns:
            A dict (``words`` null when the line has no stored words).
        """
        row: dict[str, Any] = {
            "polygon": _points_json(self.polygon) if points else self.polygon.reshape(-1).tolist(),
            "text": self.text,
            "det_score": self.det_score,
            "rec_score": self.rec_score,
            "members": None if self.members is None else [dict(m) for m in self.members],
            "words": None,
        }
        if self.words is not None:
            words = [w.to_row() for w in self.words]
            if points:
                for word, out in zip(self.words, words, strict=True):
                    out["polygon"] = _points_json(word.polygon)
            row["words"] = words
        row.update(self.extra)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Line:
        """A line from a ``LINE_TYPE`` struct (flat polygon) or its JSON form (``[[x, y], ...]``).

        Missing optional fields read as ``None``; unknown fields go to :attr:`extra`.
        """
        words = row.get("words")
        members = row.get("members")
        return cls(
            polygon=_as_polygon(row.get("polygon")),
            text=row.get("text") or "",
            det_score=row.get("det_score"),
            rec_score=row.get("rec_score"),
            words=None if words is None else [Word.from_row(w) for w in words],
            members=None if members is None else [dict(m) for m in members],
            extra={k: v for k, v in row.items() if k not in _LINE_KEYS},
        )


@dataclass(eq=False)
class Page(_Equal):
    """One page of an input file (an image is page 1 of 1): one row of the bulk job's output.

    Attributes:
        uri: the input file.
        page: 1-based page number in the file; ``None`` for a file that could not be opened.
        pages: the file's page count; ``None`` when unknown.
        width: page image width in pixels (``None`` when the page could not be decoded).
        height: page image height in pixels.
        lines: the recognised lines in stored (detector) order; :meth:`ordered_lines` sorts them.
        text: the page text as the job wrote it; by default (``None``) the non-blank lines in stored
            order joined by newlines, as the job writes it, except on an error page.
        error: why the page has no result (``ERROR_REASONS``), ``None`` for a readable page.
        error_detail: a human-readable detail of the error.
        detector: ``name@version`` of the detector, ``None`` for ``task: recognize``.
        recognizer: ``name@version`` of the recognizer.
        extra: row fields this module does not know, kept so that a row reads back unchanged.
    """

    uri: str
    page: int | None = 1
    pages: int | None = 1
    width: int | None = None
    height: int | None = None
    lines: list[Line] = field(default_factory=list)
    text: str | None = None
    error: str | None = None
    error_detail: str | None = None
    detector: str | None = None
    recognizer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text is None and self.error is None:
            # The job's own rule (RecognizeStage): the stored lines in order, blank reads add nothing.
            self.text = "\n".join(line.text for line in self.lines if line.text)

    @property
    def readable(self) -> bool:
        """Whether the page has a result (no ``error``)."""
        return self.error is None

    def ordered_lines(self) -> list[Line]:
        """The lines in reading order (see :func:`reading_order`)."""
        order = reading_order([line.bbox for line in self.lines], self.width)
        return [self.lines[i] for i in order]

    def to_row(self) -> dict[str, Any]:
        """The page as an ``OUTPUT_SCHEMA`` row (``pa.Table.from_pylist([...], schema=...)`` takes it).

        An error page with no lines writes ``lines`` and ``text`` as null, as the job does.
        """
        return self._row(points=False)

    def to_json(self) -> dict[str, Any]:
        """The page as the JSON object the bulk job's ``jsonl`` export writes.

        That is the row with ``image`` (the file's name) first and polygons as ``[[x, y], ...]``
        rounded to 1/100 pixel; ``json.dumps(page.to_json(), ensure_ascii=False)`` is the line.
        """
        from ocrjobs import storage  # its basename() is the one jsonl_text and `eval` agree on

        return {"image": storage.basename(self.uri), **self._row(points=True)}

    def _row(self, points: bool) -> dict[str, Any]:
        blank = self.error is not None and not self.lines
        row: dict[str, Any] = {
            "uri": self.uri,
            "page": self.page,
            "pages": self.pages,
            "width": self.width,
            "height": self.height,
            "lines": None if blank else [line.to_row(points) for line in self.lines],
            "text": self.text,
            "error": self.error,
            "error_detail": self.error_detail,
            "detector": self.detector,
            "recognizer": self.recognizer,
        }
        row.update(self.extra)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Page:
        """A page from an output row as ``pa.Table.to_pylist()`` gives it.

        Only ``uri`` is required; missing fields read as ``None`` (``page``/``pages`` as 1) and
        unknown ones (timings, keys) go to :attr:`extra`.

        Raises:
            ValueError: the row has no ``uri``.
        """
        if row.get("uri") is None:
            raise ValueError(f"an output row needs a uri; got keys {sorted(row)}")
        lines = row.get("lines")
        return cls(
            uri=row["uri"],
            page=row.get("page", 1),
            pages=row.get("pages", 1),
            width=row.get("width"),
            height=row.get("height"),
            lines=[Line.from_row(line) for line in lines or []],
            text=row.get("text"),
            error=row.get("error"),
            error_detail=row.get("error_detail"),
            detector=row.get("detector"),
            recognizer=row.get("recognizer"),
            extra={k: v for k, v in row.items() if k not in _PAGE_KEYS},
        )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Page:
        """A page from one object of the ``jsonl`` export (``image`` is dropped: it derives from
        ``uri``)."""
        return cls.from_row({k: v for k, v in obj.items() if k != "image"})


def pages_from_table(table: pa.Table) -> list[Page]:
    """The pages of a bulk output table (``OUTPUT_SCHEMA``), in row order."""
    return [Page.from_row(row) for row in table.to_pylist()]


def to_jsonl(pages: Iterable[Page]) -> str:
    """Pages as JSON lines, the bulk job's ``jsonl`` export (``bulk.jsonl_text``)."""
    return "".join(json.dumps(page.to_json(), ensure_ascii=False) + "\n" for page in pages)


def pages_from_jsonl(text: str) -> list[Page]:
    """The pages of a ``jsonl`` export (blank lines are skipped)."""
    return [Page.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- geometry


def split_words(text: str, polygon: np.ndarray | Sequence[Any], score: float | None = None) -> list[Word]:
    """Word boxes for a line that has none: its text split at whitespace, each word given the part
    of the line in proportion to its character span.

    A 4-point polygon is taken as the quad top-left, top-right, bottom-right, bottom-left: a word
    spanning characters ``[a, b)`` of ``n`` gets the quad between fractions ``a/n`` and ``b/n`` of
    its top and bottom edges, so words of a slanted line are slanted too. Any other polygon is
    replaced by its axis-aligned box. Either way each word lies inside the line's bounding box.

    Args:
        text: the line's text; leading and trailing whitespace take no room.
        polygon: the line's polygon (``[n, 2]`` or flat).
        score: the confidence given to every word (the line's).

    Returns:
        One :class:`Word` per whitespace-separated token, left to right.
    """
    poly = _as_polygon(polygon)
    stripped = text.strip()
    if not stripped:
        return []
    if len(poly) == 4:
        tl, tr, br, bl = (poly[i].astype(np.float64) for i in range(4))
    else:
        x0, y0, x1, y1 = _bbox_of(poly)
        tl, tr, br, bl = (np.array(p, np.float64) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
    n = len(stripped)
    words = []
    for match in _WORD.finditer(stripped):
        a, b = match.start() / n, match.end() / n
        quad = np.stack([tl + (tr - tl) * a, tl + (tr - tl) * b, bl + (br - bl) * b, bl + (br - bl) * a])
        words.append(Word(text=match.group(), polygon=quad.astype(np.float32), score=score))
    return words


def words_from_spans(
    text: str,
    polygon: np.ndarray | Sequence[Any],
    spans: Sequence[tuple[float, float]],
    char_scores: Sequence[float] | None = None,
    score: float | None = None,
    upside_down: bool = False,
) -> list[Word]:
    """Word boxes from where the recognizer read each character (a CTC model's alignment).

    ``spans[k]`` is where character ``k`` of ``text`` lies along the line's crop, as fractions of the
    crop's width (``RecognizedText.char_spans``). A CTC model emits each character on a frame or two
    in the left part of its ink, and emits the space between two words inside the gap between them,
    so a word reaches from the end of the whitespace before it (the line's start for the first word)
    to the start of the whitespace after it (the line's end for the last), but no further than half
    the line's character pitch before its first character and one pitch after its last (a word
    before a wide gap, or at a line's end, stops near its ink). The crop's orientation is
    that of :func:`ocrjobs.geometry.crop_quad`, so words of slanted and vertical lines follow them.

    Args:
        text: the line's text.
        polygon: the line's polygon in page pixels (the detected region the crop was cut from).
        spans: one ``(start, end)`` per character of ``text``.
        char_scores: one confidence per character; a word's score is their mean.
        score: the score of every word when ``char_scores`` is not given.
        upside_down: the spans are along the crop turned 180° (a vertical line read the other way).

    Returns:
        One :class:`Word` per whitespace-separated token, in reading order.

    Raises:
        ValueError: ``spans`` (or ``char_scores``) and ``text`` differ in length.

    >>> quad = [[0, 0], [100, 0], [100, 10], [0, 10]]
    >>> spans = [(0.09, 0.11), (0.19, 0.21), (0.29, 0.31), (0.39, 0.41), (0.49, 0.51)]  # pitch 0.1
    >>> [(w.text, [round(v) for v in w.bbox]) for w in words_from_spans("ab cd", quad, spans)]
    [('ab', [5, 0, 29, 10]), ('cd', [35, 0, 60, 10])]
    """
    from ocrjobs.geometry import crop_quad, span_quad

    if len(spans) != len(text) or (char_scores is not None and len(char_scores) != len(text)):
        raise ValueError(f"{len(text)} characters but {len(spans)} spans / {len(char_scores or [])} scores")
    quad = crop_quad(_as_polygon(polygon), upside_down=upside_down)
    centres = [(s + e) / 2.0 for s, e in spans]
    # The line's character pitch: how far a word may reach past its first and last characters' frames
    # (emissions sit in the left part of a glyph: half a pitch to the left, a whole one to the right).
    pitch = float(np.median(np.diff(centres))) if len(centres) > 1 else math.inf
    words = []
    for match in _WORD.finditer(text):
        a, b = match.start(), match.end()
        start = max(spans[a - 1][1] if a > 0 else 0.0, centres[a] - 0.5 * pitch)
        end = min(spans[b][0] if b < len(text) else 1.0, centres[b - 1] + pitch)
        if end <= start:  # crowded frames: fall back to the word's own characters
            start, end = spans[a][0], spans[b - 1][1]
        start, end = min(max(start, 0.0), 1.0), min(max(end, 0.0), 1.0)
        word_score = float(np.mean(char_scores[a:b])) if char_scores is not None else score
        words.append(Word(text=match.group(), polygon=span_quad(quad, start, end), score=word_score))
    return words


def _rows(indices: Sequence[int], boxes: np.ndarray) -> list[int]:
    """``indices`` row by row, top to bottom, each row left to right."""
    centers = (boxes[:, 1] + boxes[:, 3]) / 2.0
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    rows: list[list[int]] = []
    for i in sorted(indices, key=lambda j: (centers[j], boxes[j, 0])):
        # Visited by centre, so only the last row can still take this line; comparing with the
        # row's mean centre and height keeps a gently skewed line together without chaining rows.
        if rows and abs(centers[i] - centers[rows[-1]].mean()) <= 0.5 * heights[rows[-1]].mean():
            rows[-1].append(i)
        else:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda j: (boxes[j, 0], boxes[j, 1]))]


def _gutter(boxes: np.ndarray, width: float) -> float | None:
    """The x of the gap between two text columns, or ``None`` when the page is not in two columns.

    A gutter is a vertical strip in the middle third of the page that no column line crosses
    (lines at least half the page wide are headings across both columns and are ignored here), at
    least a median line height wide, with two or more lines on each side that are side by side
    (their vertical extents overlap) and typical of running text: a median width of at least 30% of
    the page. The width rule keeps a receipt's or form's narrow right-hand values read row by row.
    """
    if len(boxes) < 4 or width <= 0:
        return None
    widths = boxes[:, 2] - boxes[:, 0]
    narrow = boxes[widths < 0.5 * width]
    if len(narrow) < 4:
        return None
    min_gap = float(np.median(narrow[:, 3] - narrow[:, 1]))
    best: tuple[float, float] | None = None  # (gap width, gap centre)
    reach = -math.inf
    for x0, x1 in sorted(zip(narrow[:, 0].tolist(), narrow[:, 2].tolist(), strict=True)):
        if reach > -math.inf and x0 - reach >= min_gap:
            centre = (reach + x0) / 2.0
            if width / 3.0 <= centre <= 2.0 * width / 3.0 and (best is None or x0 - reach > best[0]):
                best = (x0 - reach, centre)
        reach = max(reach, x1)
    if best is None:
        return None
    g = best[1]
    left, right = boxes[boxes[:, 2] <= g], boxes[boxes[:, 0] >= g]
    if len(left) < 2 or len(right) < 2:
        return None
    side_by_side = min(left[:, 3].max(), right[:, 3].max()) > max(left[:, 1].min(), right[:, 1].min())
    texty = min(np.median(left[:, 2] - left[:, 0]), np.median(right[:, 2] - right[:, 0])) >= 0.3 * width
    return g if side_by_side and texty else None


def reading_order(
    boxes: Sequence[tuple[float, float, float, float]] | np.ndarray, width: float | None = None
) -> list[int]:
    """Indices that put line boxes in reading order.

    Rows top to bottom, each left to right; a line joins the row above-or-level with it when its
    vertical centre is within half the row's mean line height of the row's mean centre. When the
    page is set in two columns (a clear vertical gutter near the middle, see ``_gutter``), lines
    that cross the gutter (titles, full-width paragraphs) cut the page into bands, and each band is
    read left column first, then right column.

    Args:
        boxes: ``(x0, y0, x1, y1)`` per line, in pixels.
        width: the page width; ``None`` takes the rightmost line edge.

    Returns:
        A permutation of ``range(len(boxes))``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return []
    page_width = float(width) if width else float(b[:, 2].max())
    g = _gutter(b, page_width)
    if g is None:
        return _rows(range(len(b)), b)
    centers = (b[:, 1] + b[:, 3]) / 2.0
    spanning = sorted((i for i in range(len(b)) if b[i, 0] < g < b[i, 2]), key=lambda i: centers[i])
    cuts = [centers[i] for i in spanning]
    bands: list[list[int]] = [[] for _ in range(len(spanning) + 1)]
    for i in range(len(b)):
        if not b[i, 0] < g < b[i, 2]:
            bands[int(np.searchsorted(cuts, centers[i]))].append(i)
    order: list[int] = []
    for k, band in enumerate(bands):
        order += _rows([i for i in band if b[i, 2] <= g], b) + _rows([i for i in band if b[i, 0] >= g], b)
        if k < len(spanning):
            order.append(spanning[k])
    return order


# ------------------------------------------------------------------------------------- exporters


def _xml(value: str) -> str:
    """Text or attribute value, escaped for XML (quotes too) and stripped of forbidden characters."""
    return html.escape(_XML_INVALID.sub("", value), quote=True)


def _int_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Integer pixel box that covers ``box``."""
    return (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))


def _system(pages: Sequence[Page]) -> str:
    return ", ".join(sorted({m for p in pages for m in (p.detector, p.recognizer) if m}))


def _percent(score: float | None) -> int:
    return round(100 * min(max(score or 0.0, 0.0), 1.0))


def to_text(pages: Iterable[Page]) -> str:
    """Plain text: each page's non-blank lines in reading order, one per line, pages separated by a
    form feed (``\\f``).

    An error page is an empty page (nothing between its form feeds), so the k-th page of the text
    is the k-th page given.
    """
    texts = []
    for page in pages:
        lines = [line.text for line in page.ordered_lines() if line.text] if page.readable else []
        texts.append("".join(text + "\n" for text in lines))
    return "\f".join(texts)


def to_hocr(pages: Iterable[Page], title: str) -> str:
    """hOCR: one XHTML document, one ``ocr_page`` per readable page, ``ocr_line`` spans in reading
    order holding ``ocrx_word`` spans.

    Conventions of ``bulk.hocr_text``: pages are numbered among the readable pages (``page_1``,
    ``ppageno 0``), lines carry ``bbox``, ``poly`` and ``x_wconf`` (recognition score in percent);
    words (``word_{page}_{line}_{word}``) carry ``bbox`` and ``x_wconf``. Error pages have no
    ``ocr_page``.

    Args:
        pages: the pages, in document order.
        title: the document title (a shard's or file's name).

    Returns:
        XHTML text.
    """
    readable = [p for p in pages if p.readable]
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">',
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">',
        "<head>",
        f"<title>{_xml(title)}</title>",
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>',
        f'<meta name="ocr-system" content="ocrjobs {_xml(_system(readable))}"/>',
        '<meta name="ocr-capabilities" content="ocr_page ocr_line ocrx_word"/>',
        "</head>",
        "<body>",
    ]
    for p, page in enumerate(readable, start=1):
        image = page.uri.replace("\\", "\\\\").replace('"', '\\"')
        page_title = f'image "{image}"; bbox 0 0 {page.width or 0} {page.height or 0}; ppageno {p - 1}'
        parts.append(f'<div class="ocr_page" id="page_{p}" title="{_xml(page_title)}">')
        for n, line in enumerate(page.ordered_lines(), start=1):
            x0, y0, x1, y1 = _int_box(line.bbox)
            poly = " ".join(str(round(float(v))) for v in line.polygon.reshape(-1))
            props = f"bbox {x0} {y0} {x1} {y1}; poly {poly}; x_wconf {_percent(line.rec_score)}"
            spans = []
            for k, word in enumerate(line.word_boxes(), start=1):
                wx0, wy0, wx1, wy1 = _int_box(word.bbox)
                word_props = f"bbox {wx0} {wy0} {wx1} {wy1}; x_wconf {_percent(word.score)}"
                spans.append(
                    f'<span class="ocrx_word" id="word_{p}_{n}_{k}" title="{word_props}">{_xml(word.text)}</span>'
                )
            parts.append(f'<span class="ocr_line" id="line_{p}_{n}" title="{props}">{" ".join(spans)}</span>')
        parts.append("</div>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _position(box: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = _int_box(box)
    return f'HPOS="{x0}" VPOS="{y0}" WIDTH="{x1 - x0}" HEIGHT="{y1 - y0}"'


def to_alto(pages: Iterable[Page]) -> str:
    """ALTO v4 XML (``MeasurementUnit`` pixel): one ``Page`` per readable page.

    Structure: ``Layout/Page/PrintSpace/TextBlock/TextLine/String`` with ``SP`` between strings;
    one ``TextBlock`` per page holds its lines in reading order. Each ``TextLine`` has its polygon
    as ``Shape/Polygon`` and one ``String`` per word (``CONTENT``, position, ``WC`` in ``[0, 1]``);
    a line with no text gets one empty ``String`` (the schema needs one). ``PHYSICAL_IMG_NR`` is
    the page's number in its file. IDs (``page_1``, ``block_1``, ``line_1_2``, ``string_1_2_3``)
    number pages among the readable ones, as :func:`to_hocr` does. ``sourceImageInformation``
    names the input file when all pages come from one. Error pages have no ``Page``; ALTO needs at
    least one, so a list with no readable page gives a file that parses but does not validate.

    Args:
        pages: the pages, in document order.

    Returns:
        XML text.
    """
    readable = [p for p in pages if p.readable]
    uris = {p.uri for p in readable}
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<alto xmlns="{ALTO_NAMESPACE}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{ALTO_NAMESPACE} {_ALTO_SCHEMA}">',
        "<Description>",
        "<MeasurementUnit>pixel</MeasurementUnit>",
    ]
    if len(uris) == 1:
        parts.append(
            f"<sourceImageInformation><fileName>{_xml(uris.pop())}</fileName></sourceImageInformation>"
        )
    parts += [
        '<Processing ID="processing_1">',
        "<processingCategory>contentGeneration</processingCategory>",
        "<processingSoftware><softwareName>ocrjobs</softwareName>"
        f"<applicationDescription>{_xml(_system(readable))}</applicationDescription></processingSoftware>",
        "</Processing>",
        "</Description>",
        "<Layout>",
    ]
    for p, page in enumerate(readable, start=1):
        width, height = page.width or 0, page.height or 0
        parts.append(
            f'<Page ID="page_{p}" PHYSICAL_IMG_NR="{page.page or p}" WIDTH="{width}" HEIGHT="{height}">'
        )
        parts.append(f'<PrintSpace HPOS="0" VPOS="0" WIDTH="{width}" HEIGHT="{height}">')
        lines = page.ordered_lines()
        if lines:
            boxes = np.array([line.bbox for line in lines])
            block = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
            parts.append(f'<TextBlock ID="block_{p}" {_position(block)}>')
            for n, line in enumerate(lines, start=1):
                parts.append(f'<TextLine ID="line_{p}_{n}" {_position(line.bbox)}>')
                points = " ".join(f"{round(float(x))},{round(float(y))}" for x, y in line.polygon)
                parts.append(f'<Shape><Polygon POINTS="{points}"/></Shape>')
                words = line.word_boxes() or [Word(text="", polygon=line.polygon, score=line.rec_score)]
                for k, word in enumerate(words, start=1):
                    if k > 1:
                        gap_x0 = math.ceil(words[k - 2].bbox[2])
                        gap_x1 = max(gap_x0, math.floor(word.bbox[0]))
                        vpos = math.floor(line.bbox[1])
                        parts.append(f'<SP HPOS="{gap_x0}" VPOS="{vpos}" WIDTH="{gap_x1 - gap_x0}"/>')
                    conf = "" if word.score is None else f' WC="{min(max(word.score, 0.0), 1.0):.4f}"'
                    parts.append(
                        f'<String ID="string_{p}_{n}_{k}" CONTENT="{_xml(word.text)}" {_position(word.bbox)}{conf}/>'
                    )
                parts.append("</TextLine>")
            parts.append("</TextBlock>")
        parts += ["</PrintSpace>", "</Page>"]
    parts += ["</Layout>", "</alto>"]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------- PDF


def _load_font(pdf: Any, font: bytes | None) -> tuple[Any, Any]:
    """A PDFium font handle for the text layer, and the buffer it was read from (keep it alive)."""
    import pypdfium2.raw as pdfium_c

    if font is None:
        handle = pdfium_c.FPDFText_LoadStandardFont(pdf, b"Helvetica")
        buffer = None
    else:
        buffer = (ctypes.c_uint8 * len(font)).from_buffer_copy(font)
        # cid=True: a Type0 font with a ToUnicode map, so any character of the font extracts back.
        handle = pdfium_c.FPDFText_LoadFont(pdf, buffer, len(font), pdfium_c.FPDF_FONT_TRUETYPE, True)
    if not handle:
        raise ValueError("PDFium could not load the text layer's font")
    return handle, buffer


def _add_word(pdf: Any, page: Any, font: Any, text: str, ink: str, quad: np.ndarray) -> None:
    """Put ``text`` on ``page`` as invisible text whose first ``len(ink)`` characters fill ``quad``.

    ``quad`` (PDF points, y up) is bottom-left, bottom-right, top-right, top-left. The glyphs of
    ``ink`` are stretched to the quad's width and the font's ascent-to-descent to its height, along
    the quad's slant; characters after ``ink`` (a separating space) run on past it.
    """
    import pypdfium2.raw as pdfium_c

    size = 10.0  # any size: the matrix below rescales; 10 keeps PDFium's metrics well away from 0
    obj = pdfium_c.FPDFPageObj_CreateTextObj(pdf, font, size)
    if not obj:
        raise ValueError("PDFium could not create a text object")

    def set_text(value: str) -> None:
        data = (value + "\0").encode("utf-16-le")  # FPDF_WIDESTRING: UTF-16LE, NUL-terminated
        if not pdfium_c.FPDFText_SetText(obj, (ctypes.c_ushort * (len(data) // 2)).from_buffer_copy(data)):
            raise ValueError(f"PDFium could not set the text {value!r}")

    try:
        # Measure the ink of the word alone, so the separating space does not shrink the word.
        set_text(ink)
        left, bottom, right, top = (ctypes.c_float() for _ in range(4))
        if (
            not pdfium_c.FPDFPageObj_GetBounds(obj, left, bottom, right, top)
            or right.value - left.value < 1e-3
        ):
            left.value, right.value = 0.0, size  # no ink to measure (marks only): one em
        ascent, descent = ctypes.c_float(), ctypes.c_float()
        pdfium_c.FPDFFont_GetAscent(font, size, ascent)
        pdfium_c.FPDFFont_GetDescent(font, size, descent)
        if text != ink:
            set_text(text)
        pdfium_c.FPDFTextObj_SetTextRenderMode(obj, pdfium_c.FPDF_TEXTRENDERMODE_INVISIBLE)
    except BaseException:
        pdfium_c.FPDFPageObj_Destroy(obj)  # not on a page yet: nobody else would free it
        raise

    bl, br, _, tl = (quad[i].astype(np.float64) for i in range(4))
    baseline = br - bl
    length = float(np.hypot(*baseline))
    cos, sin = baseline / length
    height = abs(cos * (tl - bl)[1] - sin * (tl - bl)[0])  # distance of top-left from the baseline
    sy = height / max(ascent.value - descent.value, 1e-6)
    # Stretch the ink to the box, but at most _MAX_STRETCH times the glyphs' own proportions. PDFium's
    # extraction drops a glyph whose origin lies within 0.07 em of the same glyph among the few before
    # it (fake-bold overprinting), the em measured along the stretched x axis: a narrow word ("I",
    # ".") stretched over a wide box took a neighbour's equal glyph with it. Such a word starts at
    # its box's left edge and ends short of its right.
    sx = min(length / (right.value - left.value), _MAX_STRETCH * sy)
    # Text space -> page: shift the ink's left edge and the descent to the origin, scale, rotate by
    # the baseline's angle, move to the quad's bottom-left corner.
    e = bl[0] - sx * left.value * cos + sy * descent.value * sin
    f = bl[1] - sx * left.value * sin - sy * descent.value * cos
    pdfium_c.FPDFPageObj_Transform(obj, sx * cos, sx * sin, -sy * sin, sy * cos, e, f)
    pdfium_c.FPDFPage_InsertObject(page, obj)  # the page owns the object from here


def _add_text_layer(pdf: Any, pdf_page: Any, font: Any, page: Page, scale: float, height_pt: float) -> None:
    """Every word of ``page`` as invisible text on ``pdf_page`` (``scale`` points per pixel)."""
    lines = page.ordered_lines()
    for n, line in enumerate(lines):
        words = [w for w in line.word_boxes() if w.text and len(w.polygon) >= 3]
        for k, word in enumerate(words):
            x0, y0, x1, y1 = word.bbox
            quad = (
                word.polygon if len(word.polygon) == 4 else np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            )
            # pixels (y down; TL TR BR BL) -> points (y up; BL BR TR TL)
            points = np.stack([quad[:, 0] * scale, height_pt - quad[:, 1] * scale], axis=1)[[3, 2, 1, 0]]
            if np.hypot(*(points[1] - points[0])) < 1e-3:
                continue  # a degenerate box has no direction to write along
            # A space after every word but the page's last: between words of a line, and between
            # lines too, since PDFium's extraction runs the words of two overlapping lines together
            # (a receipt's "GST" beside "Reg No" came out as "GSTReg").
            text = word.text + (" " if k + 1 < len(words) or n + 1 < len(lines) else "")
            _add_word(pdf, pdf_page, font, text, word.text, points)


def _rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(
            f"expected uint8 [h, w, 3] RGB (or [h, w] gray) page images, got {array.dtype} {array.shape}"
        )
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def to_searchable_pdf(
    pages: Sequence[Page],
    images: Sequence[np.ndarray | None],
    dpi: float = _DEFAULT_DPI,
    font: bytes | None = None,
) -> bytes:
    """A searchable PDF: each readable page's image, with its text as an invisible layer on top.

    One PDF page per readable page, ``width x height`` pixels at ``dpi``; the image is drawn over
    the whole page (stretched if its size differs from the page's). Each word is a text object in
    render mode 3 (invisible) placed on its box (:meth:`Line.word_boxes`), rotated with a slanted
    line and stretched to the box's width, so selecting or searching the text highlights the word
    in the image. Words of a line are separated by a space character, so text extraction gives the
    spaces back. Error pages get no PDF page (their image, if any, is ignored).

    The default font is the standard Helvetica (not embedded): only characters of its WinAnsi
    encoding (Latin-1 and a few more) extract back correctly. For other scripts pass ``font``, the
    bytes of a TrueType font covering them (e.g. matplotlib's ``DejaVuSans.ttf``); it is embedded
    whole.

    Args:
        pages: the pages, in document order.
        images: one image per page, same order: uint8 ``[h, w, 3]`` RGB (or ``[h, w]`` gray);
            ``None`` is allowed for error pages.
        dpi: the resolution the page images are taken to have.
        font: TrueType font data for the text layer; ``None`` for Helvetica.

    Returns:
        The PDF file.

    Raises:
        ValueError: ``images`` and ``pages`` differ in length, a readable page has no image or a
            malformed one, or PDFium refused the font.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    # PDFium is not thread-safe: share the one process-wide lock that guards every PDFium call.
    from ocrjobs.documents import _PDFIUM_LOCK

    if len(images) != len(pages):
        raise ValueError(f"got {len(images)} images for {len(pages)} pages")
    scale = _POINTS_PER_INCH / dpi
    with _PDFIUM_LOCK:
        pdf = pdfium.PdfDocument.new()
        font_handle = None
        try:
            font_handle, _font_buffer = _load_font(pdf.raw, font)
            for page, image in zip(pages, images, strict=True):
                if not page.readable:
                    continue
                if image is None:
                    raise ValueError(f"page {page.page} of {page.uri} is readable but has no image")
                rgb = _rgb(image)
                height_px, width_px = rgb.shape[:2]
                w_pt = (page.width or width_px) * scale
                h_pt = (page.height or height_px) * scale
                pdf_page = pdf.new_page(w_pt, h_pt)
                picture = pdfium.PdfImage.new(pdf)
                bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # PDFium's 24-bit bitmaps are BGR
                bitmap = pdfium.PdfBitmap.new_native(
                    width_px, height_px, pdfium_c.FPDFBitmap_BGR, buffer=bgr.tobytes()
                )
                picture.set_bitmap(bitmap)
                bitmap.close()
                picture.set_matrix(pdfium.PdfMatrix().scale(w_pt, h_pt))
                pdf_page.insert_obj(picture)
                _add_text_layer(pdf.raw, pdf_page.raw, font_handle, page, scale, h_pt)
                pdf_page.gen_content()
                pdf_page.close()
            buffer = io.BytesIO()
            pdf.save(buffer)
        finally:
            if font_handle is not None:
                pdfium_c.FPDFFont_Close(font_handle)
            pdf.close()
    return buffer.getvalue()
