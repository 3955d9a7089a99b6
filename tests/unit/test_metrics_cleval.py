"""CLEval on hand-computed cases.

Boxes are 20 px high; a box of ``n`` characters ``w`` px wide has its pseudo-character centres at
``x0 + w * (i + 0.5) / n`` on the middle line, so the expected counts below can be checked by eye.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ocrjobs.metrics import CLEvalCounts, aggregate_cleval, cleval_image, pseudo_character_centers


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """An axis-aligned quad, clockwise from the top-left."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


HELLO, WORLD = box(0, 0, 100, 20), box(120, 0, 220, 20)


def scores(
    gts: list[np.ndarray],
    texts: list[str],
    preds: list[np.ndarray],
    pred_texts: list[str] | None = None,
    ignore: list[bool] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Dataset scores of a single image."""
    ignore = [False] * len(gts) if ignore is None else ignore
    return aggregate_cleval([cleval_image(gts, texts, ignore, preds, pred_texts, **kwargs)])


def test_pseudo_character_centres() -> None:
    assert pseudo_character_centers(box(0, 0, 40, 10), 4).tolist() == [[5, 5], [15, 5], [25, 5], [35, 5]]
    # A quad narrower than half its height reads top to bottom.
    assert pseudo_character_centers(box(0, 0, 10, 40), 2).tolist() == [[5, 10], [5, 30]]
    # A 6-point polygon: top chain (0,0)-(20,0)-(40,0), bottom chain (0,10)-(20,10)-(40,10).
    hexagon = [[0, 0], [20, 0], [40, 0], [40, 10], [20, 10], [0, 10]]
    assert pseudo_character_centers(hexagon, 2).tolist() == [[10, 5], [30, 5]]
    assert pseudo_character_centers(box(0, 0, 40, 10), 0).shape == (0, 2)
    assert pseudo_character_centers(np.zeros((0, 2)), 3).shape == (0, 2)


def test_perfect_prediction() -> None:
    result = scores([HELLO, WORLD], ["HELLO", "WORLD"], [HELLO, WORLD], ["HELLO", "WORLD"])
    assert result == {k: 1.0 for k in result}


def test_merged_prediction_pays_the_precision_granularity_penalty() -> None:
    # One detection over both words: each word has area precision 100/220 < 0.5, so neither matches
    # one-to-one, but together they cover 200/220 >= 0.5: a many-to-one match (a merge).
    # All 10 centres are found, so recall is 10/10; the merge costs (2 boxes - 1) = 1 character of
    # precision: (10 - 1) / 10 detected characters. CLEval charges merges to precision and splits to
    # recall, so a merge leaves recall untouched.
    counts = cleval_image(
        [HELLO, WORLD], ["HELLO", "WORLD"], [False, False], [box(0, 0, 220, 20)], ["HELLO WORLD"]
    )
    assert counts == CLEvalCounts(
        gt_chars=10,
        det_chars=10,
        det_correct=10,
        e2e_pred_chars=11,
        e2e_correct=10,
        merge_penalty=1.0,
        num_merge=1,
    )
    result = aggregate_cleval([counts])
    assert result["det_recall"] == 1.0
    assert result["det_precision"] == pytest.approx(9 / 10)
    # End-to-end: LCS("HELLO", "HELLO WORLD") = 5, then LCS("WORLD", " WORLD") = 5 of 11 transcribed
    # characters (the space is a false positive), minus the merge penalty.
    assert result["e2e_recall"] == 1.0
    assert result["e2e_precision"] == pytest.approx((10 - 1) / 11)


def test_split_prediction_pays_the_recall_granularity_penalty() -> None:
    # "HELLOWORLD" over [0, 200] (centres at 10, 30, ..., 190), detected as two halves.
    gt = box(0, 0, 200, 20)
    preds = [box(0, 0, 100, 20), box(100, 0, 200, 20)]
    result = scores([gt], ["HELLOWORLD"], preds, ["HELLO", "WORLD"])
    # 10 centres found, one split beyond one-to-one: recall (10 - 1) / 10; precision 10 / 10.
    assert result["det_recall"] == pytest.approx(9 / 10)
    assert result["det_precision"] == 1.0
    # The halves are read in order ("HELLO" + "WORLD"): 10 correct characters, the same penalty.
    assert result["e2e_recall"] == pytest.approx(9 / 10)
    assert result["e2e_precision"] == 1.0


def test_split_detections_are_read_in_reading_order() -> None:
    gt = box(0, 0, 200, 20)
    preds = [box(100, 0, 200, 20), box(0, 0, 100, 20)]  # listed right half first
    result = scores([gt], ["HELLOWORLD"], preds, ["WORLD", "HELLO"])
    assert result["e2e_recall"] == pytest.approx(9 / 10)


def test_dropped_boxes_lower_recall_by_their_characters() -> None:
    words = ["ABC", "DEFGH", "IJKLMNO", "PQRS"]
    gts = [box(0, 40 * i, 100, 40 * i + 20) for i in range(4)]
    kept = [0, 2]
    result = scores(gts, words, [gts[i] for i in kept], [words[i] for i in kept])
    assert result["det_recall"] == pytest.approx((3 + 7) / 19)
    assert result["det_precision"] == 1.0
    assert result["e2e_recall"] == pytest.approx((3 + 7) / 19)
    assert result["e2e_precision"] == 1.0


def test_one_wrong_character_end_to_end() -> None:
    result = scores([HELLO, WORLD], ["HELLO", "WORLD"], [HELLO, WORLD], ["HELLO", "W0RLD"])
    assert result["det_hmean"] == 1.0
    # LCS 5 + 4 of 10 ground-truth and 10 transcribed characters.
    assert result["e2e_recall"] == pytest.approx(9 / 10)
    assert result["e2e_precision"] == pytest.approx(9 / 10)


def test_case_sensitivity_of_end_to_end() -> None:
    assert scores([HELLO], ["HELLO"], [HELLO], ["hello"])["e2e_recall"] == 0.0
    assert scores([HELLO], ["HELLO"], [HELLO], ["hello"], case_sensitive=False)["e2e_recall"] == 1.0


def test_unmatched_detections_count_estimated_characters() -> None:
    # CLEval's estimate min(round(0.5 + 1 / aspect), 10): a 100x20 box (aspect 5) counts 1 character,
    # a 20x60 box (aspect 1/3) counts 3.
    wide = scores([HELLO], ["HELLO"], [HELLO, box(300, 0, 400, 20)])
    assert wide["det_precision"] == pytest.approx(5 / 6)
    tall = scores([HELLO], ["HELLO"], [HELLO, box(300, 0, 320, 60)])
    assert tall["det_precision"] == pytest.approx(5 / 8)
    assert wide["det_recall"] == tall["det_recall"] == 1.0


def test_dont_care_regions_and_their_detections_are_excluded() -> None:
    dont_care = box(300, 0, 400, 20)
    result = scores(
        [HELLO, dont_care], ["HELLO", "###"], [HELLO, dont_care], ["HELLO", "junk"], [False, True]
    )
    assert result == {k: 1.0 for k in result}
    # A detection half inside the don't-care region (area precision 0.5 >= 0.5) is excluded too.
    half = scores([HELLO, dont_care], ["HELLO", "###"], [HELLO, box(250, 0, 350, 20)], ignore=[False, True])
    assert half["det_precision"] == 1.0


def test_duplicate_annotations_split_and_merge() -> None:
    # Two identical boxes "AB" detected twice: every box matches both detections (splits) and every
    # detection both boxes (merges). 4 centres found; split penalty 2, merge penalty 2; each detection
    # holds 4 centres, so 8 detected characters: recall (4 - 2) / 4, precision (4 - 2) / 8.
    ab = box(0, 0, 40, 20)
    result = scores([ab, ab], ["AB", "AB"], [ab, ab], ["AB", "AB"])
    assert result["det_recall"] == pytest.approx(0.5)
    assert result["det_precision"] == pytest.approx(0.25)
    # End-to-end: "AB" is read from the first detection, the second "AB" from the second: 4 correct
    # of 4 transcribed, minus the penalties.
    assert result["e2e_recall"] == pytest.approx(0.5)
    assert result["e2e_precision"] == pytest.approx(0.5)


def test_counts_accumulate_over_images() -> None:
    found = cleval_image([HELLO], ["HELLO"], [False], [HELLO], ["HELLO"])
    missed = cleval_image([WORLD, HELLO], ["WORLD", "ABC"], [False, False], [], [])
    result = aggregate_cleval([found, missed])
    assert result["det_recall"] == pytest.approx(5 / 13)
    assert result["det_precision"] == 1.0
    assert aggregate_cleval([]) == {k: 0.0 for k in result}


def test_detection_only_leaves_end_to_end_at_zero() -> None:
    result = scores([HELLO], ["HELLO"], [HELLO])
    assert result["det_hmean"] == 1.0
    assert result["e2e_hmean"] == 0.0


def test_degenerate_polygons_do_not_crash() -> None:
    bow_tie = np.array([[0, 0], [100, 20], [100, 0], [0, 20]], dtype=np.float32)
    segment = np.array([[0, 0], [10, 0]], dtype=np.float32)
    counts = cleval_image(
        [HELLO, segment],
        ["HELLO", "AB"],
        [False, False],
        [bow_tie, segment, np.zeros((0, 2))],
        ["X", "Y", "Z"],
    )
    # The bow-tie is repaired into its two triangles, which meet at (50, 10) and hold all five centres
    # on the middle line y = 10: it matches "HELLO". The zero-area "AB" box cannot be matched.
    assert counts.gt_chars == 7
    assert counts.det_correct == 5
    assert counts.e2e_pred_chars == 3


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="ignore flags"):
        cleval_image([HELLO], ["HELLO"], [], [HELLO])
    with pytest.raises(ValueError, match="texts"):
        cleval_image([HELLO], ["HELLO"], [False], [HELLO], ["a", "b"])
