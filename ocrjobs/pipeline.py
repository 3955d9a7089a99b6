"""Detection then recognition over a handful of in-memory images (eval and Serve hosts).

The bulk job runs the same two predictors in separate actor pools; here both run in one process,
with the crops of all given images recognised as one batch so width bucketing pays off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ocrjobs.geometry import crop_polygon

if TYPE_CHECKING:
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.recognition.predictor import RecognitionPredictor

__all__ = ["OcrLine", "join_text", "keep_line", "ocr_images"]


@dataclass
class OcrLine:
    """One detected and recognised text line, in original image coordinates."""

    polygon: np.ndarray
    text: str
    det_score: float
    rec_score: float


def keep_line(text: str, rec_score: float, drop_score: float) -> bool:
    """Whether a page keeps a line it read: not when its recognition confidence is under the
    recognizer's ``drop_score`` (noise read as text: specks, punch holes, scanner bands).

    Every host assembling pages uses it (this module, the bulk job's recognition stage, Serve's ingress).
    Blank readings stay: they carry their box, and add no text.

    >>> keep_line("0", 0.21, 0.4), keep_line("Total", 0.93, 0.4), keep_line("", 0.1, 0.4)
    (False, True, True)
    """
    return not text or rec_score >= drop_score


def ocr_images(
    images: list[np.ndarray],
    detector: DetectionPredictor,
    recognizer: RecognitionPredictor,
) -> list[list[OcrLine]]:
    """Detect lines in each image, rectify every polygon and recognise all crops in one batch.

    Returns:
        One list of lines per input image, in the detector's reading order.
    """
    detections = detector(images)
    crops: list[np.ndarray] = []
    owners: list[tuple[int, int]] = []
    for i, (image, regions) in enumerate(zip(images, detections, strict=True)):
        for j, region in enumerate(regions):
            crop = crop_polygon(image, region.polygon)
            if crop.size == 0:
                continue
            crops.append(crop)
            owners.append((i, j))
    texts = recognizer(crops) if crops else []
    out: list[list[OcrLine]] = [[] for _ in images]
    drop = recognizer.drop_score
    for (i, j), rec in zip(owners, texts, strict=True):
        region = detections[i][j]
        if keep_line(rec.text, float(rec.score), drop):
            out[i].append(OcrLine(region.polygon, rec.text, float(region.score), float(rec.score)))
    return out


def join_text(lines: list[OcrLine]) -> str:
    """The full text of an image: its lines (already in reading order), one per line."""
    return "\n".join(line.text for line in lines if line.text)
