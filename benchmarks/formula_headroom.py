"""How far a formula model is from an exact-match target: per-formula token errors and a projection.

Exact match counts a formula only when every token is right, so it moves far more slowly than the token
error rate (formula WER). This reads one formula model folder on im2latex formulas (by default the
held-out val part of the train split; ``--split validate`` for the reported split), and prints

* exact match and formula WER as ``ocrjobs eval latex`` computes them,
* how many formulas are 0, 1-3, 4-10 and more than 10 token edits away from their reference,
* exact match by reference length (thirds of the formulas by token count),
* a projection: if every formula's expected number of token errors shrank by the same factor, with the
  errors falling independently (Poisson; a formula now read exactly counts as half an error), at which
  formula WER would exact match reach each target? The row ``now (model)`` is the projection's own
  figure for today's errors, to show how well the simple model fits.

The projection is an estimate of the distance, not a promise: it says how much the token errors must fall
before exact match can reach a target, which is what a training plan has to buy.

    python benchmarks/formula_headroom.py --model models/satrn96_latex
    python benchmarks/formula_headroom.py --model models/satrn96_latex --split validate --targets 0.1,0.15,0.2
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch


def exact_share(errors: Sequence[int], scale: float) -> float:
    """Share of formulas expected to be exact when each formula's errors are Poisson(scale x its errors now).

    A formula read exactly now counts as 0.5 errors, so that no formula is certain to stay exact.
    """
    return sum(math.exp(-scale * max(e, 0.5)) for e in errors) / len(errors)


def scale_for(errors: Sequence[int], target: float) -> float:
    """The error scale at which :func:`exact_share` equals ``target`` (bisection; 0 < target < 1)."""
    lo, hi = 0.0, 64.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if exact_share(errors, mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main() -> None:
    """Print the per-formula error profile of one model folder and the projection to exact-match targets."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="formula model folder")
    parser.add_argument("--data", default="../shared/data/im2latex", help="im2latex root")
    parser.add_argument("--split", default="train", choices=["train", "validate"])
    parser.add_argument(
        "--holdout-every", type=int, default=10, help="train split: score its held-out 1 in N (the recipe's)"
    )
    parser.add_argument(
        "--targets", default="0.05,0.10,0.15,0.20", help="comma-separated exact-match targets"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    from ocrjobs.data.formats import read_im2latex
    from ocrjobs.images import read_image
    from ocrjobs.metrics.text import edit_distance, formula_wer, sentence_accuracy
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.training.config import DataSource

    torch.set_num_threads(args.threads)
    records = read_im2latex(args.data, split=args.split)
    if args.split == "train":
        records = DataSource(
            uri=args.data, format="im2latex", holdout_every=args.holdout_every, holdout=True
        ).select(records)
    predictor = RecognitionPredictor.from_model_dir(args.model)
    preds = [p.text for p in predictor([read_image(r.uri) for r in records])]
    refs = [r.text for r in records]
    errors = [edit_distance(p.split(), r.split()) for p, r in zip(preds, refs, strict=True)]
    lengths = [len(r.split()) for r in refs]
    wer_now = formula_wer(preds, refs)
    where = f"the held-out 1 in {args.holdout_every} of train" if args.split == "train" else "validate"
    print(f"{args.model} on {len(refs)} im2latex formulas ({where})")
    print(f"exact match {sentence_accuracy(preds, refs):.3f}, formula WER {wer_now:.4f}")

    bins = [(0, 0, "0"), (1, 3, "1-3"), (4, 10, "4-10"), (11, 10**9, ">10")]
    counts = ", ".join(f"{name}: {sum(lo <= e <= hi for e in errors)}" for lo, hi, name in bins)
    print(f"formulas by token edits from the reference: {counts}")

    order = sorted(range(len(refs)), key=lambda i: lengths[i])
    thirds = [order[k * len(order) // 3 : (k + 1) * len(order) // 3] for k in range(3)]
    for name, part in zip(("short", "middle", "long"), thirds, strict=True):
        lo, hi = lengths[part[0]], lengths[part[-1]]
        exact = sum(errors[i] == 0 for i in part)
        print(f"  {name:<6} ({lo}-{hi} tokens): exact {exact} of {len(part)}")

    print(f"\n{'exact-match target':<20} {'error scale':>11} {'formula WER':>12}")
    print(
        f"{'now (model)':<20} {1.0:>11.3f} {wer_now:>12.4f}   (projected exact {exact_share(errors, 1.0):.3f})"
    )
    for target in (float(t) for t in args.targets.split(",") if t):
        scale = scale_for(errors, target)
        # Formula WER is a mean of per-formula rates, so it scales with the error counts (to first order).
        print(f"{target:<20.3f} {scale:>11.3f} {scale * wer_now:>12.4f}")


if __name__ == "__main__":
    main()
