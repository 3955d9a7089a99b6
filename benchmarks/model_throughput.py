"""Detector images/s and recognizer lines/s beside RapidOCR's (PP-OCRv4 on ONNX Runtime), in one run.

Both halves run on the same inputs held in memory (no file reading in the timed part), one engine
after the other, for ``--rounds`` rounds whose engine order alternates, so slow drift of a shared
machine's load hits every engine alike; the table reports each engine's best round and the ratio to
the first engine::

    python benchmarks/model_throughput.py --data ../shared/data/sroie/dev --images 20 --lines 600

* **Detection**: our ``DetectionPredictor`` (``--detector`` folder, one image per call, as an online
  request) and RapidOCR's ``text_det`` (its own preprocessing, limit 736 on the shorter side) on the
  first ``--images`` receipts, with CLEval detection H-mean of each on those receipts.
* **Recognition**: the ground-truth line crops of the receipts (up to ``--lines``), read by each shipped
  recognizer folder (``--recognizer``, batched by the predictor; a folder that decodes with beam search
  is also timed with greedy decoding), by each architecture at its default
  size with random weights (``--archs``: speed only; an attention decoder stops once every line of a
  batch has emitted EOS or after ``max_len`` steps, so for those the figure is a rough one) and by RapidOCR's ``text_rec`` (batches of 6, its default); CER (case-insensitive,
  as SROIE is labelled) for the trained ones.

torch uses every core (``torch.get_num_threads()``), as does ONNX Runtime by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Timing", "build_parser", "main", "markdown_table", "time_engines"]


@dataclass
class Timing:
    """One engine's rounds over the same inputs.

    Attributes:
        name: engine name.
        items: inputs per round.
        seconds: wall time of each round.
        outputs: the last round's outputs (for accuracy).
        note: what the engine is.
        metric: an accuracy figure for the table (``None``: not measured).
    """

    name: str
    items: int
    seconds: list[float] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    note: str = ""
    metric: float | None = None

    @property
    def best_rate(self) -> float:
        """Items per second of the fastest round."""
        return self.items / min(self.seconds) if self.seconds else 0.0


def time_engines(
    engines: dict[str, tuple[Callable[[], list[Any]], str]], items: int, rounds: int
) -> list[Timing]:
    """Run every engine ``rounds`` times, alternating the order each round.

    Args:
        engines: name -> (a call that processes all inputs and returns the outputs, note).
        items: inputs per call.
        rounds: how many times each engine runs.

    Returns:
        One :class:`Timing` per engine, in the dict's order.
    """
    timings = {name: Timing(name, items, note=note) for name, (_, note) in engines.items()}
    names = list(engines)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            outputs = engines[name][0]()
            timings[name].seconds.append(time.perf_counter() - start)
            timings[name].outputs = outputs
            print(f"  round {r + 1}: {name}: {timings[name].seconds[-1]:.2f} s", file=sys.stderr)
    return [timings[n] for n in names]


def markdown_table(timings: Sequence[Timing], unit: str, metric: str) -> str:
    """Engines as rows: best-round rate, ratio to the first engine, every round's seconds, metric."""
    base = timings[0].best_rate if timings and timings[0].best_rate else 0.0
    out = [
        f"| engine | {unit} | {unit}/s (best round) | ratio to first | seconds per round | {metric} | note |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for t in timings:
        ratio = f"{t.best_rate / base:.2f}" if base else "-"
        rounds = ", ".join(f"{s:.1f}" for s in t.seconds)
        value = "-" if t.metric is None else f"{t.metric:.4f}"
        out.append(f"| {t.name} | {t.items} | {t.best_rate:.2f} | {ratio} | {rounds} | {value} | {t.note} |")
    return "\n".join(out)


def _rapidocr() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None
    return RapidOCR()


def detection_section(records: Sequence[Any], images: list[np.ndarray], args: argparse.Namespace) -> str:
    """Detector images/s and CLEval H, ours beside RapidOCR's detector."""
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.metrics import Prediction, evaluate_detection

    ours = DetectionPredictor.from_model_dir(args.detector)
    engines: dict[str, tuple[Callable[[], list[Any]], str]] = {
        f"ocrjobs {ours.name}": (
            lambda: [[np.asarray(r.polygon, np.float32) for r in ours([im])[0]] for im in images],
            f"DBNet{'++' if ours.model.config.asf else ''} on {ours.model.config.backbone}, longer side "
            f"{ours.limit_side}, one image per call",
        )
    }
    rapid = _rapidocr()
    if rapid is not None:
        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]

        def rapid_det() -> list[Any]:
            out = []
            for im in bgr:
                boxes, _ = rapid.text_det(im)
                out.append(
                    [np.asarray(b, np.float32).reshape(-1, 2) for b in (boxes if boxes is not None else [])]
                )
            return out

        engines["RapidOCR det"] = (rapid_det, "PP-OCRv4 det (ONNX Runtime), shorter side >= 736")
    timings = time_engines(engines, len(images), args.rounds)
    for t in timings:
        preds = [[Prediction(p) for p in polys] for polys in t.outputs]
        t.metric = evaluate_detection(records, preds)["cleval_hmean"]
    return markdown_table(timings, "images", "CLEval det H")


def _line_crops(
    records: Sequence[Any], images: list[np.ndarray], limit: int
) -> tuple[list[np.ndarray], list[str]]:
    from ocrjobs.geometry import crop_polygon

    crops: list[np.ndarray] = []
    texts: list[str] = []
    for record, image in zip(records, images, strict=True):
        for region in record.regions:
            if region.ignore or not region.points or not region.text:
                continue
            crop = crop_polygon(image, region.polygon())
            if crop.size:
                crops.append(crop)
                texts.append(region.text)
            if len(crops) >= limit:
                return crops, texts
    return crops, texts


def recognition_section(records: Sequence[Any], images: list[np.ndarray], args: argparse.Namespace) -> str:
    """Recognizer lines/s (and CER of the trained ones) on the receipts' ground-truth line crops."""
    from ocrjobs.metrics.text import cer
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.recognition.tokenizer import AttentionTokenizer, CTCTokenizer

    crops, texts = _line_crops(records, images, args.lines)
    engines: dict[str, tuple[Callable[[], list[Any]], str]] = {}
    trained: set[str] = set()
    for folder in args.recognizer:
        predictor = RecognitionPredictor.from_model_dir(folder)
        variants = [("", predictor)]
        if predictor.decoder != "greedy":
            # The folder's own decoder beside greedy decoding of the same model: the decoder's cost.
            variants.append((" greedy", RecognitionPredictor.from_model_dir(folder, decoder="greedy")))
        for suffix, p in variants:
            name = f"ocrjobs {p.name}{suffix}"
            decoder = p.decoder + (" + char LM" if p.decoder == "beam" and p.lm is not None else "")
            engines[name] = (
                lambda p=p: [r.text for r in p(crops)],
                f"{p.model.config.arch} {p.height}x{p.width}, {decoder}, trained",
            )
            trained.add(name)
    for arch in args.archs:
        model = build_recognizer(arch, 96)
        tokenizer = CTCTokenizer() if model.decoding == "ctc" else AttentionTokenizer()
        kwargs: dict[str, Any] = {}
        width = getattr(model.config, "width", None)
        if model.decoding == "attention" and width:
            kwargs["width"] = int(width)  # ASTER's fixed input width
        predictor = RecognitionPredictor(model, tokenizer, **kwargs)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        engines[f"{arch} (random weights)"] = (
            lambda p=predictor: [r.text for r in p(crops)],
            f"{predictor.height}x{predictor.width}, {params:.1f} M params, greedy"
            + (f", <= {predictor.max_len} decoder steps" if model.decoding == "attention" else ""),
        )
    rapid = _rapidocr()
    if rapid is not None:
        bgr = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
        engines["RapidOCR rec"] = (
            lambda: [str(text) for text, _ in rapid.text_rec(bgr)[0]],
            "PP-OCRv4 rec (ONNX Runtime), 48x320, batches of 6",
        )
        trained.add("RapidOCR rec")
    timings = time_engines(engines, len(crops), args.rounds)
    refs = [t.upper() for t in texts]
    for t in timings:
        if t.name in trained:
            t.metric = cer([str(o).upper() for o in t.outputs], refs)
    return markdown_table(timings, "lines", "CER (case-insens.)")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/sroie/dev", help="SROIE split folder (img/, box/)")
    p.add_argument("--images", type=int, default=20, help="receipts (the first N by name)")
    p.add_argument("--lines", type=int, default=600, help="most line crops for the recognition half")
    p.add_argument("--detector", default="models/dbnet_doc", help="detection model folder")
    p.add_argument("--recognizer", nargs="*", default=["models/crnn_en"], help="trained recognition folders")
    p.add_argument(
        "--archs",
        nargs="*",
        default=["crnn_small", "crnn_vgg", "crnn_resnet", "aster", "satrn"],
        help="architectures timed at their default size with random weights",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds per engine (order alternates)")
    p.add_argument("--skip", choices=["detection", "recognition"], help="leave one half out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns the exit code."""
    import torch

    from ocrjobs.data.formats import load_records
    from ocrjobs.images import read_image

    args = build_parser().parse_args(argv)
    records = load_records(args.data, "sroie", limit=args.images)
    if not records:
        print(f"no SROIE receipts in {args.data}", file=sys.stderr)
        return 2
    images = [read_image(r.uri) for r in records]
    print(f"{len(records)} receipts from {args.data}; torch threads {torch.get_num_threads()}\n")
    torch.set_grad_enabled(False)
    if args.skip != "detection":
        print("Detection\n\n" + detection_section(records, images, args) + "\n")
    if args.skip != "recognition":
        print("Recognition\n\n" + recognition_section(records, images, args) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
