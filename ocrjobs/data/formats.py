"""Readers and writers of the labelled-data layouts ocrjobs trains and evaluates on.

Every reader returns ``list[Record]`` sorted by image URI (so ``limit`` picks the same images on
every run) and works on local paths and ``s3://`` URIs alike, because all I/O goes through
:mod:`ocrjobs.storage`. Images are never opened here: a record names its image by URI.

========== ===================================================================================
format     layout
========== ===================================================================================
sroie      ``root/img/NNN.jpg`` + ``root/box/NNN.txt`` (``x1,y1,...,x4,y4,transcription``)
words_json ``{"images": {file: {"words": {key: {"points", "transcription", "ignore"}}}}}``
icdar2015  ``gt_img_N.txt`` + ``img_N.jpg``, in ``root/{gt,images}`` or together in ``root``
im2latex   ``root/{train,validate,test}.lst`` + ``root/formulas[.norm].lst`` + ``root/images/``
lines      a manifest of line crops: TSV ``path<TAB>text`` or JSONL ``{"image", "text"}``
========== ===================================================================================

Malformed input raises :class:`DatasetFormatError` naming the file and the line.

>>> sorted(FORMATS)
['icdar2015', 'im2latex', 'lines', 'sroie', 'words_json']
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ocrjobs import storage
from ocrjobs.data.records import Record, Region

__all__ = [
    "FORMATS",
    "IGNORE_TEXT",
    "DatasetFormatError",
    "load_records",
    "read_icdar2015",
    "read_im2latex",
    "read_line_crops",
    "read_sroie",
    "read_words_json",
    "write_line_crops",
    "write_sroie",
    "write_words_json",
]

logger = logging.getLogger(__name__)

# The ICDAR convention for a don't-care region, shared by the txt and JSON layouts.
IGNORE_TEXT = "###"

_IM2LATEX_SPLITS = ("train", "validate", "test")
# Manifest suffix -> line-crop manifest kind.
_MANIFEST_KINDS = {".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl"}


class DatasetFormatError(ValueError):
    """A labelled-data file is malformed.

    Attributes:
        uri: the offending file.
        line: 1-based line number, or ``None`` when the problem is not on one line.
        detail: what is wrong.
    """

    def __init__(self, uri: str, line: int | None, detail: str) -> None:
        # All three go to Exception.__init__ so the error pickles (Ray ships it between processes).
        super().__init__(uri, line, detail)
        self.uri = uri
        self.line = line
        self.detail = detail

    def __str__(self) -> str:
        where = self.uri if self.line is None else f"{self.uri}:{self.line}"
        return f"{where}: {self.detail}"


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def _read_text(uri: str) -> str:
    """A UTF-8 file's text without a leading BOM."""
    data = storage.read_bytes(uri)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(uri, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line)`` for every non-blank line; callers strip the fields.

    Splits on ``\\n`` only: ``str.splitlines`` would also split on form feeds and Unicode separators
    that can occur inside transcriptions and formulas. Only the start of a line is stripped: a
    trailing tab is meaningful in TSV (``path<TAB>`` = empty text).
    """
    for number, line in enumerate(text.split("\n"), start=1):
        # A BOM in the middle of a file is left by concatenating files that each had one.
        line = line.lstrip().lstrip("\ufeff")
        if line.strip():
            yield number, line


def _canonical(uri: str) -> str:
    """Local paths made absolute and normalised (as :func:`storage.list_files` returns them)."""
    return uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(storage.join(uri))


def _stem(uri: str) -> str:
    return posixpath.splitext(storage.basename(uri))[0]


def _list_files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files directly in ``folder`` whose name ends (case-insensitively) with one of ``suffixes``."""
    return storage.list_files(folder, suffixes=suffixes, recursive=False)


def _by_stem(uris: Iterable[str], key: Callable[[str], str] = _stem) -> dict[str, str]:
    """Map ``key(uri)`` to uri; two files with the same key are an error naming both."""
    out: dict[str, str] = {}
    for uri in uris:
        name = key(uri)
        if name in out:
            raise DatasetFormatError(
                uri, None, f"same name {name!r} as {out[name]}; cannot pair labels with images"
            )
        out[name] = uri
    return out


def _sorted(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: r.uri)


def _finite(values: list[float], uri: str, line: int | None, where: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise DatasetFormatError(uri, line, f"{where}non-finite coordinate in {values}")


def _fmt_number(value: float) -> str:
    """Integral coordinates as integers (as the datasets write them), others exactly (``repr``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check_one_line(text: str, what: str) -> None:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} {text!r} contains a line break; this format stores one item per line")


def _relative_to(folder: str, uri: str) -> str:
    """``uri`` relative to ``folder`` when it lies under it, else ``uri`` unchanged."""
    prefix = _canonical(folder) + "/"
    full = _canonical(uri)
    return full[len(prefix) :] if full.startswith(prefix) else uri


def _resolve(folder: str, path: str) -> str:
    """A manifest/JSON image path: absolute paths and ``s3://`` URIs as given, others under ``folder``."""
    if storage.is_s3(path) or path.startswith("/"):
        return _canonical(path)
    return _canonical(storage.join(folder, path))


# ---------------------------------------------------------------------------------------------------
# SROIE / ICDAR 2015 quadrilateral text files


def _parse_quad_line(line: str, uri: str, number: int) -> Region:
    """``x1,y1,...,x4,y4,transcription`` -> Region; the transcription may itself contain commas."""
    line = line.strip()
    fields = line.split(",", 8)
    if len(fields) < 8:
        raise DatasetFormatError(
            uri,
            number,
            f"expected 8 coordinates then a transcription, found {len(fields)} fields: {line[:80]!r}",
        )
    try:
        coords = [float(f) for f in fields[:8]]
    except ValueError:
        raise DatasetFormatError(uri, number, f"non-numeric coordinate in {fields[:8]}") from None
    _finite(coords, uri, number, "")
    text = fields[8].strip() if len(fields) == 9 else ""
    points = tuple(zip(coords[0::2], coords[1::2], strict=True))
    return Region(points=points, text=text, ignore=text == IGNORE_TEXT)


def _read_quad_file(uri: str) -> tuple[Region, ...]:
    return tuple(_parse_quad_line(line, uri, number) for number, line in _lines(_read_text(uri)))


def _quad_line(region: Region, where: str) -> str:
    if len(region.points) != 4:
        raise ValueError(
            f"{where}: this format stores quadrilaterals, got a region with {len(region.points)} points"
        )
    text = IGNORE_TEXT if region.ignore else region.text
    _check_one_line(text, f"{where}: transcription")
    coords = ",".join(_fmt_number(v) for point in region.points for v in point)
    return f"{coords},{text}"


def _pair_records(images: dict[str, str], labels: dict[str, str], image_dir: str) -> list[Record]:
    """Pair label files with images by stem; images without labels get no regions."""
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetFormatError(
            labels[orphans[0]],
            None,
            f"no image for this label file in {image_dir} ({len(orphans)} label files lack an image)",
        )
    records = [
        Record(uri=uri, regions=_read_quad_file(labels[stem]) if stem in labels else ())
        for stem, uri in images.items()
    ]
    return _sorted(records)


def read_sroie(root_uri: str) -> list[Record]:
    """Read an SROIE split: ``root/img/NNN.jpg`` and ``root/box/NNN.txt`` paired by file stem.

    Box lines are ``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` (split on the first 8 commas only, so the
    transcription keeps its commas); a UTF-8 BOM, blank lines and surrounding whitespace are
    tolerated; the transcription ``###`` marks an ignored region.

    Args:
        root_uri: the split folder (local path or ``s3://`` URI).

    Returns:
        One record per image (no regions when the image has no box file), sorted by image URI.

    Raises:
        FileNotFoundError: ``img/`` holds no images or ``box/`` holds no box files.
        DatasetFormatError: a malformed box line, a box file without an image, or two images with
            the same stem.
    """
    img_dir = storage.join(_canonical(root_uri), "img")
    box_dir = storage.join(_canonical(root_uri), "box")
    images = _by_stem(_list_files(img_dir, storage.IMAGE_SUFFIXES))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(storage.IMAGE_SUFFIXES)}) in {img_dir}")
    boxes = _by_stem(_list_files(box_dir, (".txt",)))
    if not boxes:
        raise FileNotFoundError(f"no box files (.txt) in {box_dir}")
    return _pair_records(images, boxes, img_dir)


def write_sroie(records: Iterable[Record], root_uri: str) -> None:
    """Write ``root/box/<image stem>.txt`` for every record (the images are not copied).

    Ignored regions are written with the transcription ``###``; coordinates keep their exact value.

    Args:
        records: records whose regions are quadrilaterals.
        root_uri: the split folder; its ``img/`` should hold the images for :func:`read_sroie`.

    Raises:
        ValueError: a region is not a quadrilateral, a transcription has a line break, or two
            records share an image stem.
    """
    box_dir = storage.join(root_uri, "box")
    seen: dict[str, str] = {}
    for record in records:
        stem = _stem(record.uri)
        if stem in seen:
            raise ValueError(f"{record.uri}: same stem {stem!r} as {seen[stem]}; box files would collide")
        seen[stem] = record.uri
        lines = [_quad_line(region, record.uri) for region in record.regions]
        body = "".join(line + "\n" for line in lines)
        storage.write_bytes(storage.join(box_dir, f"{stem}.txt"), body.encode("utf-8"))


def _icdar_gt_stem(uri: str) -> str:
    """``gt_img_12.txt`` -> ``img_12`` (the stem of the image it labels)."""
    return _stem(uri).removeprefix("gt_")


def _is_icdar_gt(uri: str) -> bool:
    name = storage.basename(uri)
    return name.startswith("gt_") and name.lower().endswith(".txt")


def read_icdar2015(root_uri: str) -> list[Record]:
    """Read an ICDAR 2015 incidental-text split: ``gt_img_N.txt`` files labelling ``img_N.jpg``.

    Two layouts are accepted: ``root/images`` + ``root/gt``, or images and gt files together in
    ``root``. Lines are ``x1,y1,...,x4,y4,transcription`` (UTF-8 with BOM in the official files);
    ``###`` marks an ignored region.

    Args:
        root_uri: the split folder (local path or ``s3://`` URI).

    Returns:
        One record per image (no regions when it has no gt file), sorted by image URI.

    Raises:
        FileNotFoundError: no ``gt_*.txt`` files in ``root`` or ``root/gt``.
        DatasetFormatError: a malformed line, or a gt file without its image.
    """
    root_uri = _canonical(root_uri)
    flat = storage.list_files(root_uri, recursive=False)
    gt_files = [u for u in flat if _is_icdar_gt(u)]
    image_dir = root_uri
    if gt_files:
        image_files = [u for u in flat if storage.basename(u).lower().endswith(storage.IMAGE_SUFFIXES)]
    else:
        gt_dir = storage.join(root_uri, "gt")
        image_dir = storage.join(root_uri, "images")
        gt_files = [u for u in storage.list_files(gt_dir, recursive=False) if _is_icdar_gt(u)]
        if not gt_files:
            raise FileNotFoundError(f"no gt_*.txt files in {root_uri} or {gt_dir}")
        image_files = _list_files(image_dir, storage.IMAGE_SUFFIXES)
    return _pair_records(_by_stem(image_files), _by_stem(gt_files, key=_icdar_gt_stem), image_dir)


# ---------------------------------------------------------------------------------------------------
# {"images": {name: {"words": {key: {...}}}}} JSON


def _json_points(value: Any, uri: str, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or len(value) < 3:
        raise DatasetFormatError(uri, None, f"{where}: 'points' must be a list of at least 3 [x, y] pairs")
    points = []
    for point in value:
        if (
            not isinstance(point, list)
            or len(point) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
        ):
            raise DatasetFormatError(uri, None, f"{where}: point {point!r} is not an [x, y] pair of numbers")
        points.append((float(point[0]), float(point[1])))
    _finite([v for p in points for v in p], uri, None, f"{where}: ")
    return tuple(points)


def _json_region(word: Any, uri: str, where: str) -> Region:
    if not isinstance(word, dict):
        raise DatasetFormatError(uri, None, f"{where}: expected an object, got {type(word).__name__}")
    text = word.get("transcription", "")
    ignore = word.get("ignore", False)
    if not isinstance(text, str) or not isinstance(ignore, bool):
        raise DatasetFormatError(
            uri, None, f"{where}: 'transcription' must be a string and 'ignore' a boolean"
        )
    return Region(
        points=_json_points(word.get("points"), uri, where), text=text, ignore=ignore or text == IGNORE_TEXT
    )


def read_words_json(uri: str, image_root: str | None = None) -> list[Record]:
    """Read the ``{"images": {"<file>": {"words": {"<key>": {...}}}}}`` layout.

    Each word is ``{"points": [[x, y], ...], "transcription": str, "ignore": bool}`` (``ignore``
    optional); the transcription ``###`` also marks an ignored word. Words keep file order.

    Args:
        uri: the JSON file (local path or ``s3://`` URI).
        image_root: folder the image names are relative to; defaults to the JSON file's folder.

    Returns:
        One record per image, sorted by image URI.

    Raises:
        DatasetFormatError: not JSON, or an entry of the wrong shape (the message names the image
            and word key).
    """
    try:
        doc = json.loads(_read_text(uri))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(uri, exc.lineno, f"not valid JSON: {exc.msg}") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, dict):
        raise DatasetFormatError(uri, None, 'top level must be an object with an "images" object')
    root = image_root if image_root is not None else storage.parent(uri)
    records = []
    for name, entry in images.items():
        words = entry.get("words", {}) if isinstance(entry, dict) else None
        if not isinstance(words, dict):
            raise DatasetFormatError(uri, None, f'images[{name!r}]: expected {{"words": {{...}}}}')
        regions = tuple(_json_region(w, uri, f"images[{name!r}].words[{key!r}]") for key, w in words.items())
        records.append(Record(uri=_resolve(root, name), regions=regions))
    return _sorted(records)


def write_words_json(records: Iterable[Record], uri: str, image_root: str | None = None) -> None:
    """Write records in the ``{"images": {...}}`` JSON layout read by :func:`read_words_json`.

    Word keys are ``0001``, ``0002``... in region order; ``"ignore": true`` is written for ignored
    regions only.

    Args:
        records: records with polygon regions.
        uri: the JSON file to write.
        image_root: image names are written relative to this folder (default: the JSON file's
            folder); images outside it keep their full URI.

    Raises:
        ValueError: a region has fewer than 3 points, or two records name the same image.
    """
    root = image_root if image_root is not None else storage.parent(uri)
    images: dict[str, dict[str, Any]] = {}
    for record in records:
        name = _relative_to(root, record.uri)
        if name in images:
            raise ValueError(f"{record.uri}: image {name!r} appears twice")
        words: dict[str, dict[str, Any]] = {}
        for i, region in enumerate(record.regions, start=1):
            if len(region.points) < 3:
                raise ValueError(
                    f"{record.uri}: region {i} has {len(region.points)} points; polygons need 3+"
                )
            word: dict[str, Any] = {
                "points": [[x, y] for x, y in region.points],
                "transcription": region.text,
            }
            if region.ignore:
                word["ignore"] = True
            words[f"{i:04d}"] = word
        images[name] = {"words": words}
    text = json.dumps({"images": images}, ensure_ascii=False, indent=1)
    storage.write_bytes(uri, (text + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------------
# im2latex


def read_im2latex(
    root_uri: str,
    split: str = "train",
    normalized: bool = True,
    strict: bool = False,
) -> list[Record]:
    """Read an im2latex split: ``<split>.lst`` rows ``image_name formula_index``.

    Line ``N`` (0-based) of ``formulas.norm.lst`` (or ``formulas.lst``) is formula ``N``. Each
    record has one whole-image region whose text is the formula: space-separated tokens when
    ``normalized``, the raw LaTeX otherwise; ``meta["formula_index"]`` holds the index as a string.

    Rows whose formula is blank or out of range, or whose image is not in ``root/images``, are
    skipped: the count per cause is logged as a warning, or raised with ``strict=True``. The
    number of records is therefore the number of usable rows.

    Args:
        root_uri: folder with the ``.lst`` files and ``images/``.
        split: ``train``, ``validate`` or ``test``.
        normalized: read tokenised ``formulas.norm.lst`` instead of raw ``formulas.lst``.
        strict: raise instead of skipping unusable rows.

    Returns:
        The usable rows as records, sorted by image URI.

    Raises:
        ValueError: unknown ``split``.
        DatasetFormatError: a row is not ``name index``, or (``strict``) some rows are unusable.
    """
    if split not in _IM2LATEX_SPLITS:
        raise ValueError(f"unknown im2latex split {split!r}; valid: {', '.join(_IM2LATEX_SPLITS)}")
    root_uri = _canonical(root_uri)
    list_uri = storage.join(root_uri, f"{split}.lst")
    formulas_uri = storage.join(root_uri, "formulas.norm.lst" if normalized else "formulas.lst")
    formulas = _read_text(formulas_uri).split("\n")
    images_dir = storage.join(root_uri, "images")
    available = {storage.basename(u) for u in storage.list_files(images_dir, recursive=False)}

    records: list[Record] = []
    rows = 0
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    for number, line in _lines(_read_text(list_uri)):
        fields = line.split()
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise DatasetFormatError(
                list_uri, number, f"expected 'image_name formula_index', got {line[:80]!r}"
            )
        rows += 1
        name, index = fields[0], int(fields[1])
        if index >= len(formulas):
            cause = "formula index out of range"
        elif not formulas[index].strip():
            cause = "blank formula"
        elif name not in available:
            cause = "image not found"
        else:
            region = Region(points=(), text=formulas[index].strip())
            meta = {"formula_index": str(index)}
            records.append(Record(uri=storage.join(images_dir, name), regions=(region,), meta=meta))
            continue
        skipped[cause] += 1
        if len(examples) < 5:
            examples.append(f"line {number} ({name}, formula {index}): {cause}")
    if skipped:
        counts = ", ".join(f"{n} {cause}" for cause, n in sorted(skipped.items()))
        summary = (
            f"skipped {sum(skipped.values())} of {rows} rows ({counts}; formulas from "
            f"{storage.basename(formulas_uri)}), e.g. {'; '.join(examples)}"
        )
        if strict:
            raise DatasetFormatError(list_uri, None, summary)
        logger.warning("%s: %s", list_uri, summary)
    return _sorted(records)


# ---------------------------------------------------------------------------------------------------
# Line-crop manifests


def _manifest_kind(uri: str) -> str:
    suffix = posixpath.splitext(storage.basename(uri))[1].lower()
    if suffix not in _MANIFEST_KINDS:
        raise ValueError(f"{uri}: a line-crop manifest ends in one of {sorted(_MANIFEST_KINDS)}")
    return _MANIFEST_KINDS[suffix]


def _manifest_row(line: str, kind: str, uri: str, number: int) -> tuple[str, str]:
    """One manifest line -> ``(image path as written, text)``."""
    if kind == "tsv":
        path, sep, text = line.partition("\t")
        if not sep or not path.strip():
            raise DatasetFormatError(uri, number, f"expected 'image_path<TAB>text', got {line[:80]!r}")
        return path.strip(), text.strip()
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(uri, number, f"not valid JSON: {exc.msg}") from None
    if (
        not isinstance(row, dict)
        or not isinstance(row.get("image"), str)
        or not isinstance(row.get("text"), str)
    ):
        raise DatasetFormatError(uri, number, 'expected {"image": str, "text": str}')
    return row["image"], row["text"]


def read_line_crops(manifest_uri: str) -> list[Record]:
    """Read a line-crop manifest: one image and its transcription per line.

    ``.tsv``/``.txt``: ``relative/image/path<TAB>text`` (split on the first tab; both sides
    stripped). ``.jsonl``: ``{"image": path, "text": str}`` (text kept exactly; other keys are
    ignored). Paths are relative to the manifest's folder unless absolute or ``s3://``.

    Args:
        manifest_uri: the manifest (local path or ``s3://`` URI).

    Returns:
        One record per line with a single whole-image region, sorted by image URI (lines naming
        the same image keep manifest order).

    Raises:
        ValueError: the manifest suffix is not ``.tsv``, ``.txt`` or ``.jsonl``.
        DatasetFormatError: a malformed line.
    """
    kind = _manifest_kind(manifest_uri)
    folder = storage.parent(manifest_uri)
    records = []
    for number, line in _lines(_read_text(manifest_uri)):
        path, text = _manifest_row(line, kind, manifest_uri, number)
        records.append(Record(uri=_resolve(folder, path), regions=(Region(points=(), text=text),)))
    return _sorted(records)


def write_line_crops(items: Iterable[Record | tuple[str, str]], manifest_uri: str) -> None:
    """Write a line-crop manifest read by :func:`read_line_crops` (TSV or JSONL by suffix).

    Image URIs under the manifest's folder are written relative to it; other URIs as given.

    Args:
        items: records with one whole-image label, or ``(image_uri, text)`` pairs.
        manifest_uri: where to write; ``.tsv``/``.txt`` or ``.jsonl``.

    Raises:
        ValueError: unknown suffix; a record without exactly one region; for TSV, a path with a
            tab or a text with a line break or surrounding whitespace (TSV cannot keep them: use
            JSONL).
    """
    kind = _manifest_kind(manifest_uri)
    folder = storage.parent(manifest_uri)
    lines = []
    for item in items:
        image_uri, text = (item.uri, item.text) if isinstance(item, Record) else item
        path = _relative_to(folder, image_uri)
        if kind == "jsonl":
            lines.append(json.dumps({"image": path, "text": text}, ensure_ascii=False))
            continue
        _check_one_line(path, "image path")
        _check_one_line(text, f"{image_uri}: text")
        if "\t" in path or text != text.strip():
            raise ValueError(
                f"{image_uri}: TSV cannot keep a tab in the path or whitespace around the text {text!r}; use .jsonl"
            )
        lines.append(f"{path}\t{text}")
    storage.write_bytes(manifest_uri, "".join(line + "\n" for line in lines).encode("utf-8"))


# ---------------------------------------------------------------------------------------------------
# The table

FORMATS: dict[str, Callable[..., list[Record]]] = {
    "sroie": read_sroie,
    "words_json": read_words_json,
    "icdar2015": read_icdar2015,
    "im2latex": read_im2latex,
    "lines": read_line_crops,
}


def load_records(uri: str, fmt: str, limit: int | None = None, **kwargs: Any) -> list[Record]:
    """Read a labelled dataset with the reader :data:`FORMATS` names.

    Args:
        uri: what the reader takes (a split folder, a JSON file or a manifest).
        fmt: a key of :data:`FORMATS`.
        limit: keep only the first ``limit`` records (in the reader's sorted order).
        **kwargs: passed to the reader (e.g. ``split="validate"`` for im2latex).

    Returns:
        The records, sorted by image URI.

    Raises:
        ValueError: unknown ``fmt`` (the message lists the valid ones) or a negative ``limit``.

    >>> load_records("data", "pascal_voc")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset format 'pascal_voc'; valid formats: icdar2015, im2latex, lines, sroie, words_json
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; valid formats: {', '.join(sorted(FORMATS))}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records = FORMATS[fmt](uri, **kwargs)
    return records if limit is None else records[:limit]
