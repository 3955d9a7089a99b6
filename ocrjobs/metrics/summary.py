"""Dataset-level summaries: ground truth as :class:`~ocrjobs.data.records.Record`, predictions per image.

Both protocols run over the same data: the ICDAR 2015 IoU protocol (one-to-one, IoU > threshold) and
CLEval (character level). CLEval counts ground-truth characters from the transcriptions, so a dataset
without transcriptions scores 0 on it. Prediction scores are carried but not used: these are
fixed-threshold metrics, not ranking metrics such as average precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ocrjobs.data.records import Record
from ocrjobs.metrics.cleval import CLEvalCounts, aggregate_cleval, cleval_image
from ocrjobs.metrics.detection import DetectionCounts, aggregate_detection, iou_detection

__all__ = ["Prediction", "evaluate_detection", "evaluate_end_to_end"]


@dataclass(frozen=True, eq=False)
class Prediction:
    """One predicted text region.

    Attributes:
        polygon: ``[n, 2]`` float array of (x, y) pixel coordinates.
        text: recognised transcription (``""`` for detection only).
        score: detection or recognition confidence (not used by the metrics).
    """

    polygon: np.ndarray
    text: str = ""
    score: float = 1.0


def _count(
    gts: Sequence[Record],
    preds: Sequence[Sequence[Prediction]],
    iou_thresh: float,
    case_sensitive: bool,
    end_to_end: bool,
) -> tuple[list[DetectionCounts], list[CLEvalCounts]]:
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth records but {len(preds)} prediction lists")
    iou_counts, cleval_counts = [], []
    for record, image_preds in zip(gts, preds, strict=True):
        polygons = [p.polygon for p in image_preds]
        texts = [p.text for p in image_preds] if end_to_end else None
        iou_counts.append(
            iou_detection(
                record.polygons,
                record.ignore,
                polygons,
                iou_thresh,
                gt_texts=record.texts if end_to_end else None,
                pred_texts=texts,
                case_sensitive=case_sensitive,
            )
        )
        cleval_counts.append(
            cleval_image(
                record.polygons, record.texts, record.ignore, polygons, texts, case_sensitive=case_sensitive
            )
        )
    return iou_counts, cleval_counts


def evaluate_detection(
    gts: Sequence[Record], preds: Sequence[Sequence[Prediction]], iou_thresh: float = 0.5
) -> dict[str, float]:
    """Detection precision/recall/hmean of a dataset under the IoU protocol and CLEval.

    Args:
        gts: one labelled record per image (``.polygons``, ``.texts``, ``.ignore``).
        preds: the predictions of each image, in the same order.
        iou_thresh: IoU threshold of the ICDAR 2015 protocol (a match needs IoU > threshold).

    Returns:
        ``n_images``, ``iou_{precision,recall,hmean}`` and ``cleval_{precision,recall,hmean}``.

    Raises:
        ValueError: ``gts`` and ``preds`` differ in length, or a polygon is not a finite ``[n, 2]`` array.
    """
    iou_counts, cleval_counts = _count(gts, preds, iou_thresh, case_sensitive=True, end_to_end=False)
    iou = aggregate_detection(iou_counts)
    cleval = aggregate_cleval(cleval_counts)
    return {
        "n_images": len(gts),
        **{f"iou_{k}": v for k, v in iou.items()},
        "cleval_precision": cleval["det_precision"],
        "cleval_recall": cleval["det_recall"],
        "cleval_hmean": cleval["det_hmean"],
    }


def evaluate_end_to_end(
    gts: Sequence[Record],
    preds: Sequence[Sequence[Prediction]],
    iou_thresh: float = 0.5,
    case_sensitive: bool = True,
) -> dict[str, float]:
    """Detection and end-to-end (detection + recognition) scores of a dataset.

    The IoU end-to-end score counts a one-to-one IoU match as a hit only when its transcription equals
    the ground truth's (ICDAR 2015 task 4.4 matching, exact comparison); CLEval's end-to-end score
    counts correct characters.

    Args:
        gts: one labelled record per image.
        preds: the predictions (with ``text``) of each image, in the same order.
        iou_thresh: IoU threshold of the ICDAR 2015 protocol.
        case_sensitive: whether transcriptions are compared with case.

    Returns:
        Everything :func:`evaluate_detection` returns, plus ``iou_e2e_{precision,recall,hmean}`` and
        ``cleval_e2e_{precision,recall,hmean}``.

    Raises:
        ValueError: ``gts`` and ``preds`` differ in length, or a polygon is not a finite ``[n, 2]`` array.
    """
    iou_counts, cleval_counts = _count(gts, preds, iou_thresh, case_sensitive, end_to_end=True)
    cleval = aggregate_cleval(cleval_counts)
    return {
        "n_images": len(gts),
        **{f"iou_{k}": v for k, v in aggregate_detection(iou_counts).items()},
        **{f"iou_e2e_{k}": v for k, v in aggregate_detection(iou_counts, end_to_end=True).items()},
        "cleval_precision": cleval["det_precision"],
        "cleval_recall": cleval["det_recall"],
        "cleval_hmean": cleval["det_hmean"],
        "cleval_e2e_precision": cleval["e2e_precision"],
        "cleval_e2e_recall": cleval["e2e_recall"],
        "cleval_e2e_hmean": cleval["e2e_hmean"],
    }
