"""Text detection scored with the ICDAR 2015 IoU protocol (RRC "Incidental Scene Text", task 4.1).

The rules follow the RRC's official evaluation script (``script.py`` of task 4.1, and of task 4.4 for the
end-to-end variant):

* A ground-truth region flagged don't-care (ICDAR ``###``) is neither counted nor matchable. A
  prediction is discarded (neither counted nor matchable) when its intersection with any single
  don't-care region exceeds 50% of the prediction's own area (strict ``>``, as the script).
* Matching is one-to-one and greedy in the script's order: for each ground-truth region in order, the
  first still-unmatched prediction (in order) whose IoU is strictly greater than ``iou_thresh`` is taken.
  This is not an optimal assignment; it is what published ICDAR 2015 numbers use.
* Image precision/recall/hmean (properties of :class:`DetectionCounts`) follow the script's per-sample
  rules: no care ground truth means recall 1 and precision 1 if there is no care prediction, else 0.
  Dataset scores (:func:`aggregate_detection`) are micro-averaged over all images, and with no care
  ground truth (or no care prediction) in the whole set, recall (or precision) is 0, again as the script.

Deviations, on purpose: coordinates stay floats (the script truncates to int32); invalid polygons are
repaired with ``shapely.make_valid`` (the script rejects non-clockwise quads); IoU with an empty union
is 0 instead of a division error. End-to-end correctness compares transcriptions exactly (optionally
ignoring case); the RRC's stripping of leading/trailing punctuation is not applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import ArrayLike

from ocrjobs.metrics._common import harmonic_mean, to_geometries

__all__ = ["DetectionCounts", "aggregate_detection", "iou_detection"]

# The script discards a prediction lying mostly inside a don't-care region; "mostly" is this share of
# the prediction's area.
_DONT_CARE_AREA_PRECISION = 0.5


@dataclass(frozen=True)
class DetectionCounts:
    """Counts of one image (or, summed with ``+``, of many).

    Attributes:
        matched: one-to-one matches between care ground truth and care predictions.
        num_gt_care: ground-truth regions that are not don't-care.
        num_pred_care: predictions not discarded for lying inside a don't-care region.
        correct: matches whose transcriptions are equal (end-to-end); 0 when texts were not given.
    """

    matched: int = 0
    num_gt_care: int = 0
    num_pred_care: int = 0
    correct: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.matched + other.matched,
            self.num_gt_care + other.num_gt_care,
            self.num_pred_care + other.num_pred_care,
            self.correct + other.correct,
        )

    @property
    def recall(self) -> float:
        """Image recall by the script's per-sample rule (1.0 without care ground truth)."""
        return 1.0 if self.num_gt_care == 0 else self.matched / self.num_gt_care

    @property
    def precision(self) -> float:
        """Image precision by the script's per-sample rule (see the module docstring)."""
        if self.num_gt_care == 0:
            return 0.0 if self.num_pred_care > 0 else 1.0
        return 0.0 if self.num_pred_care == 0 else self.matched / self.num_pred_care

    @property
    def hmean(self) -> float:
        """Harmonic mean of the image precision and recall."""
        return harmonic_mean(self.precision, self.recall)


def _texts_equal(a: str, b: str, case_sensitive: bool) -> bool:
    return a == b if case_sensitive else a.casefold() == b.casefold()


def iou_detection(
    gt_polys: Sequence[ArrayLike],
    gt_ignore: Sequence[bool],
    pred_polys: Sequence[ArrayLike],
    iou_thresh: float = 0.5,
    *,
    gt_texts: Sequence[str] | None = None,
    pred_texts: Sequence[str] | None = None,
    case_sensitive: bool = True,
) -> DetectionCounts:
    """Score one image with the ICDAR 2015 IoU protocol.

    Args:
        gt_polys: ground-truth polygons, ``[n, 2]`` arrays of (x, y) pixels.
        gt_ignore: one don't-care flag per ground-truth polygon.
        pred_polys: predicted polygons.
        iou_thresh: a pair matches when its IoU is strictly greater than this.
        gt_texts: ground-truth transcriptions; with ``pred_texts``, fills ``correct`` (end-to-end).
        pred_texts: predicted transcriptions.
        case_sensitive: whether ``correct`` compares case.

    Returns:
        The image's :class:`DetectionCounts`.

    Raises:
        ValueError: a length mismatch, only one of the text lists given, or a polygon not ``[n, 2]`` or
            with non-finite coordinates.
    """
    if len(gt_ignore) != len(gt_polys):
        raise ValueError(f"{len(gt_polys)} ground-truth polygons but {len(gt_ignore)} ignore flags")
    if (gt_texts is None) != (pred_texts is None):
        raise ValueError("end-to-end scoring needs both gt_texts and pred_texts")
    if gt_texts is not None and len(gt_texts) != len(gt_polys):
        raise ValueError(f"{len(gt_polys)} ground-truth polygons but {len(gt_texts)} texts")
    if pred_texts is not None and len(pred_texts) != len(pred_polys):
        raise ValueError(f"{len(pred_polys)} predicted polygons but {len(pred_texts)} texts")

    _, gts = to_geometries(gt_polys)
    _, preds = to_geometries(pred_polys)
    gt_dont_care = np.asarray(gt_ignore, dtype=bool).reshape(-1)
    pred_dont_care = np.zeros(len(preds), dtype=bool)
    num_gt_care = int((~gt_dont_care).sum())
    if len(gts) == 0 or len(preds) == 0:
        return DetectionCounts(0, num_gt_care, len(preds))

    gt_area = shapely.area(gts)
    pred_area = shapely.area(preds)
    # Only pairs whose polygons intersect can overlap a don't-care region or reach an IoU above 0.
    gt_idx, pred_idx = shapely.STRtree(preds).query(gts, predicate="intersects")
    inter = shapely.area(shapely.intersection(gts[gt_idx], preds[pred_idx]))

    for g, p, a in zip(gt_idx, pred_idx, inter, strict=True):
        if gt_dont_care[g] and pred_area[p] > 0 and a / pred_area[p] > _DONT_CARE_AREA_PRECISION:
            pred_dont_care[p] = True

    union = gt_area[gt_idx] + pred_area[pred_idx] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    gt_matched = np.zeros(len(gts), dtype=bool)
    pred_matched = np.zeros(len(preds), dtype=bool)
    matched = correct = 0
    # The script's loop order: ground truth outer, prediction inner, first match wins.
    for k in np.lexsort((pred_idx, gt_idx)):
        g, p = gt_idx[k], pred_idx[k]
        if gt_matched[g] or pred_matched[p] or gt_dont_care[g] or pred_dont_care[p]:
            continue
        if iou[k] > iou_thresh:
            gt_matched[g] = pred_matched[p] = True
            matched += 1
            if gt_texts is not None and pred_texts is not None:
                correct += _texts_equal(gt_texts[g], pred_texts[p], case_sensitive)
    return DetectionCounts(matched, num_gt_care, int((~pred_dont_care).sum()), correct)


def aggregate_detection(counts: Iterable[DetectionCounts], end_to_end: bool = False) -> dict[str, float]:
    """Micro-averaged precision, recall and hmean over a dataset.

    Args:
        counts: per-image counts from :func:`iou_detection`.
        end_to_end: count only matches with equal transcriptions (``correct``) as hits.

    Returns:
        ``{"precision", "recall", "hmean"}``; a denominator of 0 gives 0.0, as the official script.
    """
    total = sum(counts, DetectionCounts())
    hits = total.correct if end_to_end else total.matched
    recall = 0.0 if total.num_gt_care == 0 else hits / total.num_gt_care
    precision = 0.0 if total.num_pred_care == 0 else hits / total.num_pred_care
    return {"precision": precision, "recall": recall, "hmean": harmonic_mean(precision, recall)}
