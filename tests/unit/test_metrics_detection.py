"""ICDAR 2015 IoU protocol on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from ocrjobs.metrics import DetectionCounts, aggregate_detection, iou_detection


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """An axis-aligned quad, clockwise from the top-left."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


GTS = [box(0, 0, 100, 20), box(0, 40, 100, 60), box(0, 80, 100, 100)]


def test_perfect_prediction() -> None:
    counts = iou_detection(GTS, [False] * 3, GTS)
    assert counts == DetectionCounts(matched=3, num_gt_care=3, num_pred_care=3)
    assert aggregate_detection([counts]) == {"precision": 1.0, "recall": 1.0, "hmean": 1.0}


def test_missed_box_lowers_recall_exactly() -> None:
    result = aggregate_detection([iou_detection(GTS, [False] * 3, GTS[:2])])
    assert result == {"precision": 1.0, "recall": pytest.approx(2 / 3), "hmean": pytest.approx(0.8)}


def test_false_positive_lowers_precision_exactly() -> None:
    preds = [*GTS, box(200, 0, 300, 20)]
    result = aggregate_detection([iou_detection(GTS, [False] * 3, preds)])
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == 1.0


def test_prediction_over_dont_care_is_ignored() -> None:
    # The second ground truth is don't-care: neither it nor the prediction on it is counted.
    counts = iou_detection(GTS[:2], [False, True], GTS[:2])
    assert counts == DetectionCounts(matched=1, num_gt_care=1, num_pred_care=1)
    assert aggregate_detection([counts]) == {"precision": 1.0, "recall": 1.0, "hmean": 1.0}


def test_dont_care_overlap_must_exceed_half_of_the_prediction() -> None:
    dont_care = box(10, 0, 100, 10)
    # Exactly 50% of the prediction's area inside don't-care: kept (strict >), an unmatched prediction.
    assert iou_detection([dont_care], [True], [box(0, 0, 20, 10)]).num_pred_care == 1
    # 60% inside: discarded.
    assert iou_detection([dont_care], [True], [box(4, 0, 24, 10)]).num_pred_care == 0


def test_two_predictions_on_one_box_match_once() -> None:
    preds = [box(0, 0, 100, 20), box(2, 0, 102, 20)]  # both with IoU > 0.5
    counts = iou_detection(GTS[:1], [False], preds)
    assert counts == DetectionCounts(matched=1, num_gt_care=1, num_pred_care=2)
    assert aggregate_detection([counts])["precision"] == 0.5


def test_one_prediction_cannot_match_two_boxes() -> None:
    # Two identical ground-truth boxes and one prediction on them: one match, one miss.
    counts = iou_detection([GTS[0], GTS[0]], [False, False], [GTS[0]])
    assert counts.matched == 1
    assert counts.recall == 0.5


@pytest.mark.parametrize(
    ("shift", "matched"),
    [
        (10, 0),  # intersection 20x10 = 200, union 400: IoU exactly 0.5, not > 0.5
        (9, 1),  # 210 / 390 = 0.538
        (11, 0),  # 190 / 410 = 0.463
    ],
)
def test_iou_threshold_is_strict(shift: float, matched: int) -> None:
    gt = box(0, 0, 30, 10)
    counts = iou_detection([gt], [False], [box(shift, 0, shift + 30, 10)])
    assert counts.matched == matched


def test_iou_threshold_parameter() -> None:
    gt, pred = box(0, 0, 30, 10), box(11, 0, 41, 10)  # IoU 0.463
    assert iou_detection([gt], [False], [pred], iou_thresh=0.45).matched == 1


def test_greedy_order_follows_the_official_script() -> None:
    # GT 0 = [0, 30], GT 1 = [12, 42]. Prediction [9, 39] has IoU 0.538 with GT 0 and 0.818 with GT 1;
    # prediction [0, 30] has IoU 1.0 with GT 0 and 0.43 with GT 1. The script gives GT 0 the first
    # prediction above the threshold in index order, not the best one.
    gts = [box(0, 0, 30, 10), box(12, 0, 42, 10)]
    assert iou_detection(gts, [False, False], [box(0, 0, 30, 10), box(9, 0, 39, 10)]).matched == 2
    # Listed the other way round, GT 0 takes [9, 39] and GT 1 is left with a partner of IoU 0.43.
    assert iou_detection(gts, [False, False], [box(9, 0, 39, 10), box(0, 0, 30, 10)]).matched == 1


def test_per_image_rules_without_care_ground_truth() -> None:
    nothing = iou_detection([], [], [])
    assert (nothing.precision, nothing.recall, nothing.hmean) == (1.0, 1.0, 1.0)
    only_fp = iou_detection([], [], [box(0, 0, 10, 10)])
    assert (only_fp.precision, only_fp.recall) == (0.0, 1.0)
    no_preds = iou_detection(GTS, [False] * 3, [])
    assert (no_preds.precision, no_preds.recall) == (0.0, 0.0)


def test_dataset_scores_are_micro_averaged() -> None:
    a = iou_detection(GTS, [False] * 3, GTS)  # 3/3
    b = iou_detection(GTS[:1], [False], [box(200, 0, 300, 20)])  # 0/1, one false positive
    result = aggregate_detection([a, b])
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["precision"] == pytest.approx(3 / 4)
    assert aggregate_detection([]) == {"precision": 0.0, "recall": 0.0, "hmean": 0.0}


def test_end_to_end_counts_equal_transcriptions() -> None:
    counts = iou_detection(
        GTS, [False] * 3, GTS, gt_texts=["TOTAL", "CASH", "5.00"], pred_texts=["Total", "CASH", "5.0"]
    )
    assert (counts.matched, counts.correct) == (3, 1)
    assert aggregate_detection([counts], end_to_end=True)["recall"] == pytest.approx(1 / 3)
    insensitive = iou_detection(
        GTS,
        [False] * 3,
        GTS,
        gt_texts=["TOTAL", "CASH", "5.00"],
        pred_texts=["Total", "CASH", "5.0"],
        case_sensitive=False,
    )
    assert insensitive.correct == 2


def test_degenerate_polygons_do_not_crash() -> None:
    bow_tie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=np.float32)
    segment = np.array([[0, 0], [10, 0]], dtype=np.float32)
    flat = box(0, 0, 10, 0)
    empty = np.zeros((0, 2), dtype=np.float32)
    counts = iou_detection([bow_tie, flat], [False, False], [bow_tie, segment, flat, empty])
    # The bow-tie is repaired into its two triangles and matches itself; zero-area shapes match nothing.
    assert counts == DetectionCounts(matched=1, num_gt_care=2, num_pred_care=4)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="ignore flags"):
        iou_detection(GTS, [False], GTS)
    with pytest.raises(ValueError, match="both gt_texts and pred_texts"):
        iou_detection(GTS, [False] * 3, GTS, gt_texts=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        iou_detection([np.zeros((4, 3))], [False], [])
    with pytest.raises(ValueError, match="non-finite"):
        iou_detection(GTS, [False] * 3, [box(0, 0, np.nan, 20)])
