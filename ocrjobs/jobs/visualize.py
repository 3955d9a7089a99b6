"""Draw detected polygons, scores and text onto an image.

Either run a detection model on the image (``--model models/NAME``) or draw regions given as JSON
(``--regions FILE``): a list of ``{"polygon": [[x, y], ...] or [x0, y0, x1, y1, ...], "score": 0.9,
"text": "..."}`` objects, or an object whose ``"lines"`` holds such a list (``det_score`` is accepted
for ``score``, as in bulk output rows). Inputs and outputs are local paths or ``s3://`` URIs.

Example::

    ocrjobs visualize --input receipt.jpg --model models/det_mobilenetv3 --out receipt_det.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["add_arguments", "draw_regions", "parse_regions", "run"]

_COLOR = (230, 25, 75)  # RGB red: visible on white paper and on most photos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this subcommand."""
    parser.add_argument("--input", required=True, help="image path or URI (local or s3://)")
    parser.add_argument("--out", required=True, help="output PNG path or URI")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="detection model folder to run on the image (e.g. models/NAME)")
    source.add_argument("--regions", help="JSON file or URI with the regions to draw (see above)")
    parser.add_argument("--device", default="cpu", help="device for --model: cpu, cuda, cuda:1 ...")


def parse_regions(data: Any) -> tuple[list[np.ndarray], list[float | None], list[str | None]]:
    """Read regions from decoded JSON (a list of region objects or ``{"lines": [...]}``).

    Args:
        data: the decoded JSON document.

    Returns:
        ``(polygons, scores, texts)``: float32 ``[n, 2]`` arrays, and a score and text per region
        (``None`` where absent).

    Raises:
        ValueError: the document does not have that shape or a polygon has fewer than 3 points.
    """
    import numpy as np

    items = data.get("lines") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError('regions JSON must be a list of regions or an object with a "lines" list')
    polygons: list[np.ndarray] = []
    scores: list[float | None] = []
    texts: list[str | None] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "polygon" not in item:
            raise ValueError(f'region {i}: expected an object with a "polygon"')
        polygon = np.asarray(item["polygon"], dtype=np.float32).reshape(-1, 2)
        if len(polygon) < 3:
            raise ValueError(f"region {i}: a polygon needs at least 3 points, got {len(polygon)}")
        score = item.get("score", item.get("det_score"))
        polygons.append(polygon)
        scores.append(None if score is None else float(score))
        texts.append(item.get("text"))
    return polygons, scores, texts


def draw_regions(
    image: np.ndarray,
    polygons: Sequence[np.ndarray],
    scores: Sequence[float | None] | None = None,
    texts: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Draw polygon outlines, each labelled with its score and text, onto a copy of an image.

    Args:
        image: uint8 ``[h, w, 3]`` RGB.
        polygons: ``[n, 2]`` regions in the image's pixel coordinates.
        scores: a score per polygon, or ``None`` entries/list for none.
        texts: a text per polygon, or ``None`` entries/list for none.

    Returns:
        A new uint8 ``[h, w, 3]`` RGB image.

    Raises:
        ValueError: ``scores`` or ``texts`` differ in length from ``polygons``.
    """
    # cv2/PIL/matplotlib/numpy are imported here so that `ocrjobs --help` does not pay for them.
    import cv2
    import matplotlib
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    scores = list(scores) if scores is not None else [None] * len(polygons)
    texts = list(texts) if texts is not None else [None] * len(polygons)
    if not len(scores) == len(texts) == len(polygons):
        raise ValueError(f"{len(polygons)} polygons, {len(scores)} scores and {len(texts)} texts")
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    canvas = np.ascontiguousarray(image).copy()
    for polygon in polygons:
        points = np.round(np.asarray(polygon, dtype=np.float32)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(
            canvas, [points], isClosed=True, color=_COLOR, thickness=thickness, lineType=cv2.LINE_AA
        )
    # Labels go through Pillow with matplotlib's DejaVu Sans (a dependency already): cv2 draws only
    # ASCII and Pillow's built-in font lacks accented letters.
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    font_file = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font = ImageFont.truetype(str(font_file), size=max(10, round(min(height, width) / 50)))
    for polygon, score, text in zip(polygons, scores, texts, strict=True):
        label = " ".join(part for part in (None if score is None else f"{score:.2f}", text) if part)
        if not label:
            continue
        x, y = np.asarray(polygon, dtype=np.float32).reshape(-1, 2).min(axis=0).tolist()
        left, top, right, bottom = draw.textbbox((x, y), label, font=font, anchor="ld")
        if top < 0:  # no room above the region: put the label just inside it
            left, top, right, bottom = draw.textbbox((x, y), label, font=font, anchor="la")
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=_COLOR)
        draw.text((left, top), label, font=font, fill=(255, 255, 255))
    return np.asarray(pil).copy()


def run(args: argparse.Namespace) -> int:
    """Draw the regions of ``--model`` or ``--regions`` onto ``--input`` and write ``--out`` as PNG.

    Returns:
        0 on success, 2 when the ``--regions`` document is invalid.
    """
    from ocrjobs import storage
    from ocrjobs.images import encode_png, read_image

    image = read_image(args.input)
    if args.model:
        from ocrjobs.detection.predictor import DetectionPredictor

        predictor = DetectionPredictor.from_model_dir(args.model, device=args.device)
        regions = predictor([image])[0]
        polygons = [region.polygon for region in regions]
        scores: list[float | None] = [region.score for region in regions]
        texts: list[str | None] = [None] * len(regions)
    else:
        try:
            polygons, scores, texts = parse_regions(json.loads(storage.read_text(args.regions)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            print(f"ocrjobs visualize: {args.regions}: {exc}", file=sys.stderr)
            return 2
    storage.write_bytes(args.out, encode_png(draw_regions(image, polygons, scores, texts)))
    print(f"{args.out}: {len(polygons)} regions drawn")
    return 0
