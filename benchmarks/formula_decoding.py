"""Choose a formula model's inference settings (decoding, input width) on the held-out val part of im2latex train.

The data are the formulas a formula training config holds out for validation (``holdout_every: 10`` of
``configs/train_satrn_latex.yaml``: every 10th im2latex train image by name), never the validate split
that results are reported on. Each setting reads them all with the folder's predictor and the settings
given, and prints the formula metrics (exact match, formula WER, BLEU-4, formula score), the share of
outputs LaTeX compiles and the rendered exact match (``ocrjobs.metrics.rendered``, where ``latex`` and
``dvipng`` are installed; ``-`` otherwise) and the time.

    python benchmarks/formula_decoding.py --model models/satrn_latex --max-repeat none,3,4,5,6
    python benchmarks/formula_decoding.py --model models/satrn64_latex --beam-width 1,4,8
    python benchmarks/formula_decoding.py --model models/satrn_latex --width 480,640,800
    python benchmarks/formula_decoding.py --model models/satrn_latex --syntax none,repair
    python benchmarks/formula_decoding.py --model models/satrn96_latex --max-len 150,200,300

Put the chosen value in the folder's ``config.yaml`` (``postprocess``), add a version suffix (bulk
output shards read with other settings are then never mixed on resume), and report validate with
``ocrjobs eval latex --split validate``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch


def _values(text: str, kind: type) -> list[Any]:
    return [None if part == "none" else kind(part) for part in text.split(",") if part]


def main() -> None:
    """Sweep one decoding setting over the held-out val part."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="formula model folder")
    parser.add_argument("--data", default="../shared/data/im2latex", help="im2latex root (its train split)")
    parser.add_argument("--holdout-every", type=int, default=10, help="the training config's holdout_every")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--max-repeat", help="comma-separated values; none: no limit")
    group.add_argument("--beam-width", help="comma-separated beam widths (1: greedy)")
    group.add_argument("--width", help="comma-separated widest inputs (preprocess width; wider are squeezed)")
    group.add_argument("--syntax", help="comma-separated output syntax settings (none, repair)")
    group.add_argument("--max-len", help="comma-separated longest outputs in tokens (EOS included)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    from ocrjobs.data.formats import read_im2latex
    from ocrjobs.data.formulas import latex_available
    from ocrjobs.images import read_image
    from ocrjobs.metrics import latex_metrics, rendered_latex_metrics
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.training.config import DataSource

    torch.set_num_threads(args.threads)
    records = read_im2latex(args.data, split="train")
    held_out = DataSource(
        uri=args.data, format="im2latex", holdout_every=args.holdout_every, holdout=True
    ).select(records)
    crops = [read_image(r.uri) for r in held_out]
    refs = [r.text for r in held_out]
    if args.max_repeat is not None:
        settings = [{"max_repeat": v} for v in _values(args.max_repeat, int)]
    elif args.width is not None:
        settings = [{"width": v} for v in _values(args.width, int)]
    elif args.syntax is not None:
        settings = [{"syntax": v} for v in _values(args.syntax, str)]
    elif args.max_len is not None:
        settings = [{"max_len": v} for v in _values(args.max_len, int)]
    else:
        settings = [
            {"decoder": "greedy"} if v == 1 else {"decoder": "beam", "beam_width": v}
            for v in _values(args.beam_width, int)
        ]
    print(f"{args.model}: {len(held_out)} held-out im2latex train formulas (1 in {args.holdout_every})")
    print(
        f"{'setting':<28} {'exact':>6} {'WER':>6} {'BLEU-4':>7} {'score':>7} {'compiles':>8} {'drawn':>6} {'s':>6}"
    )
    for overrides in settings:
        predictor = RecognitionPredictor.from_model_dir(args.model, **overrides)
        start = time.perf_counter()
        texts = [r.text for r in predictor(crops)]
        seconds = time.perf_counter() - start
        m = latex_metrics(texts, refs)
        compiles, drawn = "-", "-"
        if latex_available():  # after the timing: rendering is not part of reading
            rendered = rendered_latex_metrics(texts, refs)
            compiles, drawn = f"{rendered['compiles']:.3f}", f"{rendered['rendered_exact_match']:.3f}"
        shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(
            f"{shown:<28} {m['sentence_accuracy']:>6.3f} {m['formula_wer']:>6.3f} {m['bleu4']:>7.3f} "
            f"{m['formula_score']:>7.4f} {compiles:>8} {drawn:>6} {seconds:>6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
