"""Three failure modes on forms, counted: vertical lines, marks read into lines, noise read as text.

ocrjobs beside RapidOCR.

On labelled pages (SROIE layout; by default the FUNSD dev part, every 8th form of ``funsd/train``
that the training configs leave out), for each engine:

* vertical lines: labelled lines more than 1.5 times taller than wide with at least 3 characters (the
  document numbers printed in form margins); *found* when a predicted line overlaps one with IoU >=
  0.5, *read* when that line's text is also the label's (case-sensitive, spaces ignored);
* marked lines: a predicted line that reads its label's text with one to three characters more at its
  start or end (``X FAIR``, ``- Budget Code``, ``LSTORAGE``): a checkbox, a rule's end or a bracket of
  the form read into the line (matched by IoU >= 0.3);
* noise lines: predicted lines with text that cover no labelled text (under 10% of their area
  overlaps any label): punch holes, specks, scanner bands and signatures read as text.

ocrjobs runs the pipeline every host runs (:func:`ocrjobs.pipeline.ocr_images`, as the bulk job's
stages do) one page at a time; RapidOCR (``rapidocr_onnxruntime``, benchmark extra) when installed::

    python benchmarks/form_lines.py
    python benchmarks/form_lines.py --detector models/dbnet_doc --recognizer models/crnn_doc
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ocrjobs.data.records import Record
from ocrjobs.geometry import is_turned, polygon_iou, shapely_polygon
from ocrjobs.images import read_image
from ocrjobs.training.config import DataSource

__all__ = ["Tally", "main", "score_page", "vertical_labels"]

Line = tuple[np.ndarray, str]
"""A predicted line: polygon ``[n, 2]`` and text."""


@dataclass
class Tally:
    """What one engine did on the pages."""

    vertical: int = 0
    found: int = 0
    read: int = 0
    lines: int = 0
    marked: int = 0
    noise: int = 0
    misread: list[str] = field(default_factory=list)


def _is_vertical(points: np.ndarray, text: str) -> bool:
    return is_turned(points) and len(text.replace(" ", "")) >= 3


def vertical_labels(record: Record) -> list[tuple[np.ndarray, str]]:
    """The record's labelled lines printed along the page's height."""
    out = []
    for region in record.regions:
        points = np.asarray(region.points, np.float64)
        if not region.ignore and _is_vertical(points, region.text):
            out.append((points, region.text))
    return out


def _marked(read: str, label: str) -> bool:
    """``read`` is ``label`` with one to three characters more before or after it."""
    extra = len(read) - len(label)
    return bool(label) and 0 < extra <= 3 and (read.endswith(label) or read.startswith(label))


def score_page(record: Record, lines: Sequence[Line], tally: Tally) -> None:
    """Add one page's vertical, marked and noise counts to ``tally``."""
    for points, text in vertical_labels(record):
        tally.vertical += 1
        ious = [polygon_iou(line[0], points) for line in lines]
        if not ious or max(ious) < 0.5:
            tally.misread.append(f"{text!r}: not found")
            continue
        best = lines[int(np.argmax(ious))]
        tally.found += 1
        if best[1].replace(" ", "") == text.replace(" ", ""):
            tally.read += 1
        else:
            tally.misread.append(f"{text!r} -> {best[1]!r}")
    labels = [shapely_polygon(r.points) for r in record.regions]
    for points, text in lines:
        if not text.strip():
            continue
        tally.lines += 1
        ious = [polygon_iou(points, r.points) for r in record.regions]
        label = record.regions[int(np.argmax(ious))].text if ious and max(ious) >= 0.3 else ""
        if _marked(text, label):
            tally.marked += 1
            tally.misread.append(f"marked: {label!r} -> {text!r}")
        shape = shapely_polygon(points)
        covered = sum(shape.intersection(label).area for label in labels if shape.intersects(label))
        if covered < 0.1 * max(shape.area, 1e-6):
            tally.noise += 1


def _ocrjobs(args: argparse.Namespace) -> Callable[[np.ndarray], list[Line]]:
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.pipeline import ocr_images
    from ocrjobs.recognition.predictor import RecognitionPredictor

    detector = DetectionPredictor.from_model_dir(args.detector, backend=args.backend)
    reader = RecognitionPredictor.from_model_dir(args.recognizer, backend=args.backend)

    def run(image: np.ndarray) -> list[Line]:
        return [
            (np.asarray(ln.polygon, np.float32).reshape(-1, 2), ln.text)
            for ln in ocr_images([image], detector, reader)[0]
        ]

    return run


def _rapidocr(args: argparse.Namespace) -> Callable[[np.ndarray], list[Line]] | None:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None
    engine = RapidOCR()

    def run(image: np.ndarray) -> list[Line]:
        result, _ = engine(np.ascontiguousarray(image[..., ::-1]))
        return [(np.asarray(box, np.float32).reshape(-1, 2), str(text)) for box, text, _ in result or []]

    return run


def main(argv: Sequence[str] | None = None) -> None:
    """Print a markdown table: vertical lines found/read and noise lines per engine."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/funsd/train", help="pages in SROIE layout")
    parser.add_argument("--holdout-every", type=int, default=8, help="the held-out dev part (0: every page)")
    parser.add_argument("--detector", default="models/dbnet_doc")
    parser.add_argument("--recognizer", default="models/crnn_doc")
    parser.add_argument("--backend", default="auto", help="ocrjobs backend (auto, torch, onnxruntime, ...)")
    parser.add_argument("--show", action="store_true", help="list the misread vertical and marked lines")
    args = parser.parse_args(argv)
    source = DataSource(uri=args.data, format="sroie", holdout_every=args.holdout_every or None, holdout=True)
    from ocrjobs.data.formats import load_records

    records = source.select(load_records(args.data, "sroie"))
    engines: dict[str, Callable[[np.ndarray], list[Line]] | None] = {
        f"ocrjobs ({args.detector} + {args.recognizer})": _ocrjobs(args),
        "RapidOCR": _rapidocr(args),
    }
    print(
        f"{len(records)} pages of {args.data}"
        + (f" (every {args.holdout_every}th)" if args.holdout_every else "")
    )
    print(
        "\n| engine | vertical lines found | read exactly | lines | marked lines | noise lines (cover no text) |"
    )
    print("|---|---|---|---|---|---|")
    for name, engine in engines.items():
        if engine is None:
            print(f"| {name} | skipped: not installed | | | | |")
            continue
        tally = Tally()
        for record in records:
            score_page(record, engine(read_image(record.uri)), tally)
        print(
            f"| {name} | {tally.found}/{tally.vertical} | {tally.read}/{tally.vertical} | {tally.lines} "
            f"| {tally.marked} | {tally.noise} ({tally.noise / max(tally.lines, 1):.1%}) |"
        )
        if args.show:
            for item in tally.misread:
                print(f"  {name}: {item}")


if __name__ == "__main__":
    main()
