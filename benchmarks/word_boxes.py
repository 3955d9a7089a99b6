"""How well word boxes fit the words: the recognizer's CTC alignment against splitting lines by text.

Renders pages of mixed-case lines (words, numbers, prices) in the fonts matplotlib ships, at several
sizes, where every word's ink box is known; reads them with the shipped detector and recognizer
through :func:`ocrjobs.pipeline.ocr_images`; and for every detected line that matches one rendered
line and has its number of words, compares each word box with the true one (IoU of axis-aligned
boxes). Two word boxes per word:

* ``ctc``: ``Line.words``, placed by the recognizer's alignment (:func:`ocrjobs.results.words_from_spans`);
* ``proportional``: the line split in proportion to its characters (:func:`ocrjobs.results.split_words`),
  what hOCR/ALTO exporters did before lines carried words.

    python benchmarks/word_boxes.py --pages 12 --detector models/dbnet_doc --recognizer models/crnn_doc
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.font_manager as fm
import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FONTS = ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono", "STIXGeneral")
WORDS = [
    "Total",
    "Amount",
    "due",
    "Invoice",
    "Date",
    "Page",
    "of",
    "the",
    "and",
    "for",
    "Customer",
    "Name",
    "Address",
    "Phone",
    "Fax",
    "Tax",
    "Cash",
    "Change",
    "Subtotal",
    "Discount",
    "Item",
    "Qty",
    "Price",
    "Receipt",
    "Thank",
    "you",
    "Please",
    "Signature",
    "Approved",
    "Received",
    "Department",
    "Report",
    "Company",
    "Limited",
    "Street",
    "Road",
    "Number",
    "Account",
    "Balance",
    "Payment",
    "Order",
    "Reference",
    "Manager",
    "Sales",
]


@dataclass
class TrueLine:
    """A rendered line: its text, its ink box and each word's ink box (page pixels)."""

    text: str
    box: tuple[float, float, float, float]
    words: list[tuple[str, tuple[float, float, float, float]]]


def _word(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
    if kind < 0.25:
        return str(rng.randint(1, 99999))
    word = rng.choice(WORDS)
    return word.upper() if rng.random() < 0.15 else word


def render_page(rng: random.Random, lines: int = 8) -> tuple[np.ndarray, list[TrueLine]]:
    """A white page with ``lines`` rows of 2-6 words in one font and size, and their true boxes."""
    font_name = rng.choice(FONTS)
    size = rng.randint(18, 30)
    font = ImageFont.truetype(fm.findfont(fm.FontProperties(family=font_name)), size)
    step = int(size * 2.0)
    page = Image.new("RGB", (900, step * lines + 2 * size), "white")
    draw = ImageDraw.Draw(page)
    truth = []
    for k in range(lines):
        words = [_word(rng) for _ in range(rng.randint(2, 6))]
        text = " ".join(words)
        x, y = size + rng.randint(0, 80), size + k * step
        draw.text((x, y), text, font=font, fill="black")
        boxes = []
        cursor = 0
        for word in words:
            start = text.index(word, cursor)
            cursor = start + len(word)
            left = x + draw.textlength(text[:start], font=font)
            box = draw.textbbox((left, y), word, font=font)
            boxes.append((word, tuple(float(v) for v in box)))
        line_box = draw.textbbox((x, y), text, font=font)
        truth.append(TrueLine(text, tuple(float(v) for v in line_box), boxes))  # type: ignore[arg-type]
    return np.asarray(page), truth


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def x_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """IoU of the horizontal extents only (a word's height is its line's, whichever the method)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    union = max(a[2], b[2]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def score_page(lines: list, truth: list[TrueLine]) -> dict[str, list[float]]:
    """Per-word IoUs of the CTC and proportional word boxes on one page (see the module docstring)."""
    from ocrjobs.results import split_words

    out: dict[str, list[float]] = {"ctc": [], "proportional": [], "ctc x": [], "proportional x": []}
    for line in lines:
        best = max(truth, key=lambda t: box_iou(line.bbox, t.box))
        if box_iou(line.bbox, best.box) < 0.5 or line.words is None:
            continue
        ctc, proportional = line.words, split_words(line.text, line.polygon, line.rec_score)
        if not (len(ctc) == len(proportional) == len(best.words)):
            continue
        for (_, box), a, b in zip(best.words, ctc, proportional, strict=True):
            out["ctc"].append(box_iou(a.bbox, box))
            out["proportional"].append(box_iou(b.bbox, box))
            out["ctc x"].append(x_iou(a.bbox, box))
            out["proportional x"].append(x_iou(b.bbox, box))
    return out


def main() -> None:
    """Render, read and print the comparison table."""
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.pipeline import ocr_images
    from ocrjobs.recognition.predictor import RecognitionPredictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", default=str(REPO / "models" / "dbnet_doc"))
    parser.add_argument("--recognizer", default=str(REPO / "models" / "crnn_doc"))
    args = parser.parse_args()
    detector = DetectionPredictor.from_model_dir(args.detector)
    recognizer = RecognitionPredictor.from_model_dir(args.recognizer)
    rng = random.Random(args.seed)
    scores: dict[str, list[float]] = {}
    rendered = 0
    start = time.perf_counter()
    for k in range(args.pages):
        image, truth = render_page(rng)
        rendered += sum(len(t.words) for t in truth)
        for key, values in score_page(ocr_images([image], detector, recognizer)[0], truth).items():
            scores.setdefault(key, []).extend(values)
        print(f"\rpages {k + 1}/{args.pages}", end="", file=sys.stderr)
    print(file=sys.stderr)
    n = len(scores["ctc"])
    print(
        f"{n} of {rendered} rendered words scored ({time.perf_counter() - start:.0f} s); {args.recognizer}\n"
    )
    print("| word boxes (IoU of boxes; 'x': of horizontal extents) | mean IoU | IoU >= 0.5 | IoU >= 0.7 |")
    print("|---|---:|---:|---:|")
    for key, values in scores.items():
        v = np.asarray(values)
        print(f"| {key} | {v.mean():.3f} | {(v >= 0.5).mean():.3f} | {(v >= 0.7).mean():.3f} |")


if __name__ == "__main__":
    main()
