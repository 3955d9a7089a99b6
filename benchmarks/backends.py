"""Each model on each backend, in one run: forward-pass speed and dev accuracy (issue 18's tables).

For every model folder given, and every backend it can run (``torch``, ``onnxruntime`` = the float
ONNX graph, ``onnxruntime-int8`` where the folder ships ``model.int8.onnx``):

* speed: one forward pass of a fixed input (a 1024 x 736 page for a detector; 64 line crops 320 px wide
  for a recognizer), median of ``--repeats`` after a warm-up, on ``--threads`` threads;
* accuracy on the labelled dev pages: CLEval detection H-mean (detector), or CER and exact match of the
  labelled line crops, case-sensitive and case-insensitive (recognizer, with the folder's decoder).

::

    python benchmarks/backends.py --model models/dbnet_doc --model models/crnn_doc --model models/crnn_en

Dev data: SROIE dev (54 receipts) and the FUNSD dev part (every 8th training form), as elsewhere in
docs/benchmarks.md; the int8 graphs were calibrated on other (training) pages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ocrjobs.backends import INT8_FILE
from ocrjobs.data.formats import load_records
from ocrjobs.data.records import Record
from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import read_image
from ocrjobs.metrics import Prediction, evaluate_detection
from ocrjobs.metrics.text import text_metrics
from ocrjobs.recognition.predictor import RecognitionPredictor
from ocrjobs.registry import read_model_spec
from ocrjobs.training.config import DataSource


def dev_sets(shared: str) -> dict[str, list[Record]]:
    """The labelled dev pages: SROIE dev and FUNSD's held-out part (every 8th form)."""
    sroie = sorted(load_records(f"{shared}/sroie/dev", "sroie"), key=lambda r: r.uri)
    funsd = f"{shared}/funsd/train"
    held_out = DataSource(uri=funsd, format="sroie", holdout_every=8, holdout=True)
    return {"SROIE dev": sroie, "FUNSD dev": held_out.select(load_records(funsd, "sroie"))}


def _timed(call: Any, repeats: int) -> float:
    call()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def backends_of(folder: str) -> list[str]:
    """The backends a folder runs on: attention models only on torch; int8 where the folder ships it."""
    spec = read_model_spec(folder)
    if spec.task == "latex" or spec.arch.startswith(("aster", "satrn")):
        return ["torch"]
    out = ["torch", "onnxruntime"]
    import os

    if os.path.exists(os.path.join(folder, INT8_FILE)):
        out.append("onnxruntime-int8")
    return out


def detector_rows(folder: str, sets: dict[str, list[Record]], repeats: int) -> list[dict[str, Any]]:
    """Speed and CLEval detection H-mean of one detector on each backend."""
    rows = []
    images = {name: [read_image(r.uri) for r in records] for name, records in sets.items()}
    page = torch.randn(1, 3, 1024, 736, generator=torch.Generator().manual_seed(0))
    for backend in backends_of(folder):
        det = DetectionPredictor.from_model_dir(folder, backend=backend)
        with torch.inference_mode():
            seconds = _timed(lambda d=det: d._onnx(page) if d._onnx else d.model(page)["prob"], repeats)
        row: dict[str, Any] = {"model": folder, "backend": backend, "forward_s": seconds}
        for name, records in sets.items():
            found = [det([image])[0] for image in images[name]]
            preds = [[Prediction(r.polygon) for r in regions] for regions in found]
            row[name] = {"det_hmean": evaluate_detection(records, preds)["cleval_hmean"]}
        rows.append(row)
    return rows


def recognizer_rows(folder: str, sets: dict[str, list[Record]], repeats: int) -> list[dict[str, Any]]:
    """Speed and line CER of one recognizer on each backend (labelled crops of the dev pages)."""
    lines: dict[str, tuple[list[np.ndarray], list[str]]] = {}
    for name, records in sets.items():
        crops, texts = [], []
        for record in records:
            image = read_image(record.uri)
            for region in record.regions:
                if region.text.strip():
                    crops.append(crop_polygon(image, region.polygon()))
                    texts.append(region.text.strip())
        lines[name] = (crops, texts)
    rows = []
    for backend in backends_of(folder):
        rec = RecognitionPredictor.from_model_dir(folder, backend=backend)
        batch = torch.randn(64, 3, rec.height, 320, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            seconds = _timed(lambda r=rec, b=batch: r._logits(b), repeats)
        row: dict[str, Any] = {"model": folder, "backend": backend, "forward_s": seconds}
        for name, (crops, texts) in lines.items():
            got = [r.text for r in rec(crops)]
            cs, ci = text_metrics(got, texts), text_metrics(got, texts, case_sensitive=False)
            row[name] = {
                "cer": cs["cer"],
                "cer_ci": ci["cer"],
                "exact": cs["exact_match"],
                "lines": len(texts),
            }
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]], sets: Sequence[str]) -> str:
    """One table: a row per model and backend."""
    head = "| model | backend | forward s | " + " | ".join(sets) + " |"
    out = [head, "|" + "---|" * (3 + len(sets))]
    for row in rows:
        cells = []
        for name in sets:
            m = row[name]
            if "det_hmean" in m:
                cells.append(f"det H {m['det_hmean']:.4f}")
            else:
                cells.append(f"CER {m['cer']:.4f} (ci {m['cer_ci']:.4f}), exact {m['exact']:.3f}")
        out.append(
            f"| {row['model']} | {row['backend']} | {row['forward_s']:.4f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--shared", default="../shared/data", help="the shared data folder")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per backend")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (torch and ONNX Runtime)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = dev_sets(args.shared)
    rows: list[dict[str, Any]] = []
    for folder in args.model:
        task = read_model_spec(folder).task
        rows += (detector_rows if task == "detection" else recognizer_rows)(folder, sets, args.repeats)
        print(markdown(rows[-len(backends_of(folder)) :], list(sets)), file=sys.stderr)
    print(f"threads {args.threads}; dev pages: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    print(markdown(rows, list(sets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
