"""Real text-line crops for recognizer training, cut from box-labelled documents (SROIE, ICDAR...).

Each labelled region is cut out and rectified with :func:`ocrjobs.geometry.crop_polygon`, the same
function the detection predictor uses at inference, so training crops look like the crops the
recognizer will be given. :func:`export_line_crops` writes them as PNG files plus a manifest that
:func:`ocrjobs.data.formats.read_line_crops` reads back.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ocrjobs import storage
from ocrjobs.data.formats import write_line_crops
from ocrjobs.data.records import Record
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import encode_png, read_image

__all__ = ["cut_line_crops", "export_line_crops"]

logger = logging.getLogger(__name__)


def _labelled(record: Record) -> list[tuple[int, np.ndarray, str]]:
    """(region index, polygon, text) of the regions worth cutting: polygons with a real transcription."""
    return [
        (i, region.polygon(), region.text.strip())
        for i, region in enumerate(record.regions)
        if not region.ignore and region.text.strip() and len(region.points) >= 3
    ]


def _cut(
    records: Iterable[Record], image_reader: Callable[[str], np.ndarray], height: int | None
) -> Iterator[tuple[int, int, np.ndarray, str, str]]:
    """(record index, region index, crop, text, uri) for every non-empty crop."""
    for r, record in enumerate(records):
        regions = _labelled(record)
        if not regions:
            continue
        image = image_reader(record.uri)
        for i, polygon, text in regions:
            crop = crop_polygon(image, polygon, height=height)
            if crop.size == 0:  # a box thinner than a pixel: nothing a recognizer could read
                logger.debug("%s: region %d is thinner than a pixel, skipped", record.uri, i)
                continue
            yield r, i, crop, text, record.uri


def cut_line_crops(
    records: Iterable[Record],
    image_reader: Callable[[str], np.ndarray] = read_image,
    height: int | None = None,
) -> Iterator[tuple[np.ndarray, str, str]]:
    """Cut every labelled region of box-labelled records into an upright crop.

    Ignored regions, regions with an empty transcription and regions without a polygon are skipped;
    each image is read once, and only when it has a region to cut.

    Args:
        records: records whose regions carry polygons (``formats.read_sroie`` and the like).
        image_reader: URI -> RGB uint8 image; the default reads local paths and ``s3://``.
        height: scale every crop to this height (width follows); None keeps the region's own size.

    Yields:
        ``(crop, text, source image uri)``: an RGB uint8 ``[h, w, 3]`` crop, its stripped transcription.
    """
    for _, _, crop, text, uri in _cut(records, image_reader, height):
        yield crop, text, uri


def export_line_crops(
    records: Iterable[Record],
    out_uri: str,
    *,
    manifest_name: str = "labels.tsv",
    image_reader: Callable[[str], np.ndarray] = read_image,
    height: int | None = None,
) -> int:
    """Write the crops of :func:`cut_line_crops` as PNG files and a manifest for ``read_line_crops``.

    Crops go to ``out_uri/crops/<record index>_<image stem>_<region index>.png``: names depend only on
    the input order, so a re-run overwrites rather than duplicates.

    Args:
        records: box-labelled records.
        out_uri: output folder (local path or ``s3://``).
        manifest_name: the manifest file in ``out_uri``; ``.tsv``/``.txt`` or ``.jsonl``.
        image_reader: URI -> RGB uint8 image.
        height: scale every crop to this height; None keeps the region's own size.

    Returns:
        The number of crops written.

    Raises:
        ValueError: the manifest suffix is unknown, or a text cannot be written to a TSV manifest
            (line breaks): use ``.jsonl``.
    """
    if posixpath.splitext(manifest_name)[1].lower() not in (".tsv", ".txt", ".jsonl"):
        # Checked before cutting: the manifest is written last, after possibly hours of crops.
        raise ValueError(f"manifest_name must end in .tsv, .txt or .jsonl, got {manifest_name!r}")
    crops_dir = storage.join(out_uri, "crops")
    items: list[tuple[str, str]] = []
    for r, i, crop, text, uri in _cut(records, image_reader, height):
        stem = posixpath.splitext(storage.basename(uri))[0]
        crop_uri = storage.join(crops_dir, f"{r:06d}_{stem}_{i:04d}.png")
        storage.write_bytes(crop_uri, encode_png(crop))
        items.append((crop_uri, text))
    write_line_crops(items, storage.join(out_uri, manifest_name))
    logger.info("wrote %d line crops and %s to %s", len(items), manifest_name, out_uri)
    return len(items)
