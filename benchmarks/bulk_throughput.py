"""Throughput and end-to-end accuracy of the bulk job beside RapidOCR and Tesseract, on labelled pages.

Runs, on the same N labelled pages (SROIE layout: receipts, or FUNSD forms; the first N of the split
sorted by name, or with ``--holdout-every K`` the held-out dev part, every K-th page, that training
configs leave out with the same ``holdout_every``):

* ``ocrjobs bulk``: the whole Ray Data job (listing, decoding, both actor pools, writing Parquet) on a
  local Ray with every CPU and GPU of this machine; the time includes actor start-up and model loading,
  as a real job pays them;
* RapidOCR (``rapidocr_onnxruntime``) and Tesseract (``pytesseract`` + the ``tesseract`` binary), one
  image after the other in this process, when they are importable (a row says why when not);

and prints a markdown table with images/s, CLEval detection H-mean and end-to-end H-mean compared
case-sensitively (as a user reads) and case-insensitively (``ocrjobs.metrics.evaluate_end_to_end``)::

    python benchmarks/bulk_throughput.py --data ../shared/data/sroie/dev --limit 50 \\
        --detector models/dbnet_doc --recognizer models/crnn_en
    python benchmarks/bulk_throughput.py --data ../shared/data/funsd/train --holdout-every 8 --limit 0
    python benchmarks/bulk_throughput.py --limit 50 --recognizer models/crnn_doc --backends onnxruntime,torch

The peers install with ``pip install -e '.[bench]' -c constraints.txt`` (Tesseract also needs the
``tesseract-ocr`` system package).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ocrjobs.config import load_config, parse_overrides
from ocrjobs.data.formats import load_records
from ocrjobs.images import read_image
from ocrjobs.metrics import Prediction, evaluate_end_to_end
from ocrjobs.training.config import DataSource

if TYPE_CHECKING:
    from ocrjobs.data.records import Record

__all__ = [
    "EngineResult",
    "build_parser",
    "main",
    "markdown_table",
    "run_ocrjobs",
    "run_rapidocr",
    "run_tesseract",
]


@dataclass
class EngineResult:
    """One row of the table.

    Attributes:
        engine: what ran.
        images: images processed (0 when skipped).
        seconds: wall time.
        det_hmean: CLEval detection H-mean.
        e2e_hmean: CLEval end-to-end H-mean, case-sensitive.
        e2e_hmean_ci: the same, case-insensitive.
        note: how it ran, or why it was skipped.
    """

    engine: str
    images: int = 0
    seconds: float = 0.0
    det_hmean: float | None = None
    e2e_hmean: float | None = None
    e2e_hmean_ci: float | None = None
    note: str = ""


def _scored(
    engine: str, records: Sequence[Record], preds: list[list[Prediction]], seconds: float, note: str
) -> EngineResult:
    metrics = evaluate_end_to_end(records, preds)
    folded = evaluate_end_to_end(records, preds, case_sensitive=False)
    return EngineResult(
        engine,
        len(records),
        seconds,
        metrics["cleval_hmean"],
        metrics["cleval_e2e_hmean"],
        folded["cleval_e2e_hmean"],
        note,
    )


def run_ocrjobs(records: Sequence[Record], args: argparse.Namespace) -> list[EngineResult]:
    """The bulk job over the records' images, once per ``--backends`` entry."""
    return [_run_ocrjobs(records, args, backend) for backend in args.backends.split(",")]


def _run_ocrjobs(records: Sequence[Record], args: argparse.Namespace, backend: str) -> EngineResult:
    """The bulk job with ``backend``, scored from its Parquet output; the note has per-stage seconds."""
    import pyarrow.parquet as pq
    import ray

    from ocrjobs.jobs.bulk import BulkConfig, run_bulk

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bulk-bench-") as tmp:
            manifest = os.path.join(tmp, "inputs.txt")
            with open(manifest, "w", encoding="utf-8") as f:
                f.writelines(f"{os.path.abspath(r.uri)}\n" for r in records)
            overrides: dict[str, Any] = {
                **parse_overrides(args.set),
                "input": manifest,
                "output": os.path.join(tmp, "out"),
                "detector": os.path.abspath(args.detector),
                "recognizer": os.path.abspath(args.recognizer),
                "backend": backend,
            }
            config = load_config(args.config, BulkConfig, overrides)
            start = time.perf_counter()
            summary = run_bulk(config)
            seconds = time.perf_counter() - start
            rows = {r["uri"]: r for r in pq.read_table(os.path.join(tmp, "out", "parquet")).to_pylist()}
        cluster = summary["cluster"]
    finally:
        if started_here:
            ray.shutdown()
    preds = [
        [
            Prediction(
                np.asarray(line["polygon"], np.float32).reshape(-1, 2), line["text"], line["det_score"] or 1.0
            )
            for line in rows[os.path.abspath(r.uri)]["lines"] or []
        ]
        for r in records
    ]
    # Actor-side seconds per image of each stage (summed over actors: with two actors of a stage busy at
    # once, their seconds add up to more than the wall time).
    per_image = ", ".join(
        f"{stage} {total / max(len(records), 1):.3f}" for stage, total in summary["stage_seconds"].items()
    )
    note = (
        f"Ray Data, {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; incl. actor start-up; "
        f"s/image per stage: {per_image}"
    )
    return _scored(f"ocrjobs bulk ({backend})", records, preds, seconds, note)


def _quad(box: Any) -> np.ndarray:
    return np.asarray(box, np.float32).reshape(-1, 2)


def run_rapidocr(records: Sequence[Record], args: argparse.Namespace) -> list[EngineResult]:
    """RapidOCR (PP-OCR models on ONNX Runtime), one image at a time."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return [EngineResult("RapidOCR", note="skipped: rapidocr_onnxruntime is not installed")]
    engine = RapidOCR()
    preds = []
    start = time.perf_counter()
    for record in records:
        bgr = np.ascontiguousarray(read_image(record.uri)[..., ::-1])
        result, _ = engine(bgr)
        preds.append([Prediction(_quad(box), str(text), float(score)) for box, text, score in result or []])
    return [
        _scored("RapidOCR", records, preds, time.perf_counter() - start, "rapidocr_onnxruntime, in-process")
    ]


def run_tesseract(records: Sequence[Record], args: argparse.Namespace) -> list[EngineResult]:
    """Tesseract, lines assembled from its words (block, paragraph, line), one image at a time."""
    try:
        import pytesseract

        version = pytesseract.get_tesseract_version()
    except ImportError:
        return [EngineResult("Tesseract", note="skipped: pytesseract is not installed")]
    except pytesseract.TesseractNotFoundError:
        return [EngineResult("Tesseract", note="skipped: the tesseract binary is not on PATH")]
    preds = []
    start = time.perf_counter()
    for record in records:
        data = pytesseract.image_to_data(read_image(record.uri), output_type=pytesseract.Output.DICT)
        lines: dict[tuple[int, int, int], list[int]] = {}
        for i, word in enumerate(data["text"]):
            if word.strip() and float(data["conf"][i]) >= 0:
                lines.setdefault((data["block_num"][i], data["par_num"][i], data["line_num"][i]), []).append(
                    i
                )
        image_preds = []
        for words in lines.values():
            x0 = min(data["left"][i] for i in words)
            y0 = min(data["top"][i] for i in words)
            x1 = max(data["left"][i] + data["width"][i] for i in words)
            y1 = max(data["top"][i] + data["height"][i] for i in words)
            text = " ".join(data["text"][i].strip() for i in words)
            quad = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
            image_preds.append(
                Prediction(quad, text, float(np.mean([float(data["conf"][i]) for i in words])) / 100)
            )
        preds.append(image_preds)
    return [
        _scored("Tesseract", records, preds, time.perf_counter() - start, f"tesseract {version}, in-process")
    ]


ENGINES: dict[str, Callable[[Sequence[Any], argparse.Namespace], list[EngineResult]]] = {
    "ocrjobs": run_ocrjobs,
    "rapidocr": run_rapidocr,
    "tesseract": run_tesseract,
}


def markdown_table(results: Sequence[EngineResult]) -> str:
    """The results as a markdown table (skipped engines keep a row with the reason)."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    out = [
        "| engine | images | seconds | images/s | CLEval det H | CLEval e2e H (case-sensitive) "
        "| CLEval e2e H (case-insensitive) | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        rate = r.images / r.seconds if r.images and r.seconds > 0 else None
        seconds = f"{r.seconds:.1f}" if r.images else "-"
        out.append(
            f"| {r.engine} | {r.images} | {seconds} | {fmt(rate)} | {fmt(r.det_hmean)} | {fmt(r.e2e_hmean)} "
            f"| {fmt(r.e2e_hmean_ci)} | {r.note} |"
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--data", default="../shared/data/sroie/dev", help="split folder in SROIE layout (img/, box/)"
    )
    parser.add_argument("--limit", type=int, default=20, help="number of pages (the first N by name; 0: all)")
    parser.add_argument(
        "--holdout-every",
        type=int,
        default=None,
        metavar="K",
        help="use only every K-th page sorted by name: the dev part a training config holds out "
        "with holdout_every K (e.g. 8 for FUNSD)",
    )
    parser.add_argument("--detector", default="models/dbnet_doc", help="detection model folder")
    parser.add_argument("--recognizer", default="models/crnn_en", help="recognition model folder")
    parser.add_argument("--config", help="bulk job config (BulkConfig); input/output/models are set here")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="bulk config override"
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}"
    )
    parser.add_argument(
        "--backends",
        default="auto",
        help="comma-separated bulk backends to run ocrjobs with, one row each (auto, torch, onnxruntime)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    records = load_records(args.data, "sroie")
    part = ""
    if args.holdout_every:
        records = DataSource(
            uri=args.data, format="sroie", holdout_every=args.holdout_every, holdout=True
        ).select(records)
        part = f" (held-out part: every {args.holdout_every}th page)"
    records = sorted(records, key=lambda r: r.uri)[: args.limit or None]
    if not records:
        parser.error(f"no labelled pages found in {args.data}")
    results = [row for name in args.engines.split(",") for row in ENGINES[name](records, args)]
    print(f"pages from {args.data}{part}: {len(records)}\n")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
