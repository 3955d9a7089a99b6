"""Tune the line filters that reject noise read as text, on training pages only (issue 14, item 3).

Scanned forms carry specks, punch holes, scanner bands and signatures that the detector finds and the
recognizer reads as ``0``, ``.`` or ``|``. Three filters can drop them, each a threshold on something
every line already has: the detection score (mean probability inside the box: the detector's
``box_thresh``), the box's short side in pixels (``min_height``), and the recognition score
(``drop_score`` of the recognizer, as PaddleOCR's ``drop_score``). This script reads a tuning set once
with permissive settings, then scores every combination of thresholds offline with CLEval end to end.

The tuning set is made of *training* pages (FUNSD train's fit part, SROIE train): the dev pages that
docs/benchmarks.md reports are never used to choose the thresholds. Receipts are in the set so a
filter that helps forms but drops receipt lines shows up.

::

    python benchmarks/tune_filters.py --forms 40 --receipts 30
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence

import numpy as np

from ocrjobs.data.formats import load_records
from ocrjobs.data.records import Record
from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import read_image
from ocrjobs.metrics import Prediction, evaluate_end_to_end
from ocrjobs.recognition.predictor import RecognitionPredictor
from ocrjobs.training.config import DataSource

# Read once with these (below every candidate threshold), then filter.
_READ_BOX_THRESH = 0.4


def tuning_sets(shared: str, forms: int, receipts: int) -> dict[str, list[Record]]:
    """Training pages: FUNSD train's fit part (not the every-8th dev part) and SROIE train, evenly spread."""
    funsd = f"{shared}/funsd/train"
    fit = DataSource(uri=funsd, format="sroie", holdout_every=8, holdout=False).select(
        load_records(funsd, "sroie")
    )
    sroie = sorted(load_records(f"{shared}/sroie/train", "sroie"), key=lambda r: r.uri)

    def spread(records: list[Record], n: int) -> list[Record]:
        return records if n <= 0 or n >= len(records) else [records[i * len(records) // n] for i in range(n)]

    return {"FUNSD train (fit part)": spread(fit, forms), "SROIE train": spread(sroie, receipts)}


def _short_side(polygon: np.ndarray) -> float:
    edges = np.linalg.norm(np.roll(polygon, -1, axis=0) - polygon, axis=1)
    return float(min((edges[0] + edges[2]) / 2, (edges[1] + edges[3]) / 2)) if len(polygon) == 4 else 0.0


def read_lines(
    records: Sequence[Record], detector: DetectionPredictor, recognizer: RecognitionPredictor
) -> list[list[tuple[np.ndarray, str, float, float, float]]]:
    """Per page: (polygon, text, det score, rec score, short side) of every line read."""
    pages = []
    for record in records:
        image = read_image(record.uri)
        regions = detector([image])[0]
        crops, kept = [], []
        for region in regions:
            crop = crop_polygon(image, region.polygon)
            if crop.size:
                crops.append(crop)
                kept.append(region)
        texts = recognizer(crops) if crops else []
        pages.append(
            [
                (r.polygon, t.text, float(r.score), float(t.score), _short_side(np.asarray(r.polygon)))
                for r, t in zip(kept, texts, strict=True)
            ]
        )
    return pages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--detector", default="models/dbnet_doc")
    parser.add_argument("--recognizer", default="models/crnn_doc")
    parser.add_argument("--forms", type=int, default=40, help="FUNSD fit-part forms (0: all)")
    parser.add_argument("--receipts", type=int, default=30, help="SROIE train receipts (0: all)")
    parser.add_argument("--box-thresh", type=float, nargs="+", default=[0.5, 0.55, 0.6, 0.65, 0.7])
    parser.add_argument("--min-height", type=float, nargs="+", default=[0, 6, 8])
    parser.add_argument("--drop-score", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4, 0.5, 0.6])
    args = parser.parse_args(argv)

    detector = DetectionPredictor.from_model_dir(args.detector, box_thresh=_READ_BOX_THRESH)
    recognizer = RecognitionPredictor.from_model_dir(args.recognizer)
    sets = tuning_sets(args.shared, args.forms, args.receipts)
    read = {}
    for name, records in sets.items():
        start = time.perf_counter()
        read[name] = read_lines(records, detector, recognizer)
        print(f"{name}: {len(records)} pages read in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    names = list(sets)
    header = " | ".join(f"{n} e2e H cs | ci" for n in names)
    print(f"| box_thresh | min_height | drop_score | {header} | lines dropped |")
    print("|" + "---:|" * (3 + 2 * len(names) + 1))
    for box, height, drop in itertools.product(args.box_thresh, args.min_height, args.drop_score):
        cells, dropped = [], 0
        for name in names:
            preds = []
            for page in read[name]:
                keep = [
                    Prediction(polygon=np.asarray(p), text=t)
                    for p, t, ds, rs, side in page
                    if ds >= box and side >= height and rs >= drop
                ]
                dropped += sum(1 for _, _, ds, _, _ in page if ds >= _READ_BOX_THRESH) - len(keep)
                preds.append(keep)
            cs = evaluate_end_to_end(sets[name], preds, case_sensitive=True)["cleval_e2e_hmean"]
            ci = evaluate_end_to_end(sets[name], preds, case_sensitive=False)["cleval_e2e_hmean"]
            cells.append(f"{cs:.4f} | {ci:.4f}")
        print(f"| {box} | {height:g} | {drop} | {' | '.join(cells)} | {dropped} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
