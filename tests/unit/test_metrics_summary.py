"""Dataset summaries (Records in, P/R/H out) on a small record and on real SROIE receipts.

On SROIE: ground truth as prediction, and every third line dropped. The box files are parsed here (``x1,y1,...,x4,y4,transcription``, split on the first 8 commas) so this
test does not depend on the data readers. Receipts where two annotated lines overlap by 10% or more of
the smaller one (duplicate annotations, a stamp across lines) are left out: there CLEval, like the
official evaluator, scores even the ground truth as splits and merges (see the duplicate-annotation
case in test_metrics_cleval.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from ocrjobs.data.records import Record, Region
from ocrjobs.metrics import (
    Prediction,
    aggregate_cleval,
    aggregate_detection,
    cleval_image,
    evaluate_detection,
    evaluate_end_to_end,
    iou_detection,
)


def _read_box_file(path: Path) -> Record:
    regions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        fields = line.split(",", 8)
        xy = [float(v) for v in fields[:8]]
        regions.append(Region(points=tuple(zip(xy[0::2], xy[1::2], strict=True)), text=fields[8]))
    return Record(uri=str(path), regions=tuple(regions))


def _lines_overlap(record: Record) -> bool:
    boxes = [shapely.Polygon(p) for p in record.polygons]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a.intersection(b).area >= 0.1 * min(a.area, b.area):
                return True
    return False


@pytest.fixture(scope="module")
def receipts(shared_data: Path) -> list[Record]:
    records = [_read_box_file(p) for p in sorted((shared_data / "sroie" / "dev" / "box").glob("*.txt"))]
    kept = [r for r in records if not _lines_overlap(r)]
    assert len(kept) >= 40, "expected most dev receipts to have non-overlapping line boxes"
    return kept


def _as_predictions(record: Record, keep: list[int]) -> list[Prediction]:
    return [Prediction(record.polygons[i], record.texts[i]) for i in keep]


def test_ground_truth_as_prediction_scores_one(receipts: list[Record]) -> None:
    preds = [_as_predictions(r, list(range(len(r.regions)))) for r in receipts]
    result = evaluate_end_to_end(receipts, preds)
    assert result.pop("n_images") == len(receipts)
    assert result == {k: 1.0 for k in result}


def test_dropping_every_third_line(receipts: list[Record]) -> None:
    keeps = [[i for i in range(len(r.regions)) if i % 3 != 2] for r in receipts]
    total_lines = sum(len(r.regions) for r in receipts)
    kept_lines = sum(len(k) for k in keeps)
    total_chars = sum(len(t) for r in receipts for t in r.texts)
    kept_chars = sum(len(r.texts[i]) for r, keep in zip(receipts, keeps, strict=True) for i in keep)

    result = evaluate_detection(
        receipts, [_as_predictions(r, k) for r, k in zip(receipts, keeps, strict=True)]
    )
    assert result["iou_recall"] == pytest.approx(kept_lines / total_lines, abs=1e-12)
    assert result["iou_precision"] == 1.0
    assert result["cleval_recall"] == pytest.approx(kept_chars / total_chars, abs=1e-12)
    assert result["cleval_precision"] == 1.0

    # The per-image functions agree with the summary.
    iou_counts, cleval_counts = [], []
    for record, keep in zip(receipts, keeps, strict=True):
        polys = [record.polygons[i] for i in keep]
        iou_counts.append(iou_detection(record.polygons, record.ignore, polys))
        cleval_counts.append(cleval_image(record.polygons, record.texts, record.ignore, polys))
    assert aggregate_detection(iou_counts)["recall"] == result["iou_recall"]
    assert aggregate_cleval(cleval_counts)["det_recall"] == result["cleval_recall"]


def test_summaries_on_a_small_record() -> None:
    def quad(x0: float, x1: float) -> tuple[tuple[float, float], ...]:
        return ((x0, 0.0), (x1, 0.0), (x1, 20.0), (x0, 20.0))

    record = Record(
        uri="mem://receipt",
        regions=(
            Region(quad(0, 100), "TOTAL"),
            Region(quad(120, 220), "5.00"),
            Region(quad(300, 400), "###", ignore=True),
        ),
    )
    preds = [
        Prediction(np.array(quad(0, 100)), "TOTAL", 0.9),
        Prediction(np.array(quad(120, 220)), "5.0O", 0.8),
        Prediction(np.array(quad(300, 400)), "xx", 0.7),
    ]
    result = evaluate_end_to_end([record], [preds])
    # Both care lines are detected; only "TOTAL" is transcribed exactly (IoU end-to-end 1 of 2); CLEval
    # end-to-end finds 5 + 3 of 9 characters; the prediction on the don't-care region is not counted.
    assert result["iou_hmean"] == 1.0
    assert result["iou_e2e_recall"] == result["iou_e2e_precision"] == 0.5
    assert result["cleval_hmean"] == 1.0
    assert result["cleval_e2e_recall"] == pytest.approx(8 / 9)
    assert result["cleval_e2e_precision"] == pytest.approx(8 / 9)
    assert set(evaluate_detection([record], [preds])) == {
        "n_images",
        "iou_precision",
        "iou_recall",
        "iou_hmean",
        "cleval_precision",
        "cleval_recall",
        "cleval_hmean",
    }
    with pytest.raises(ValueError, match="1 ground-truth records but 0 prediction lists"):
        evaluate_detection([record], [])
