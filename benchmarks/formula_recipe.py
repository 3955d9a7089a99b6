"""Step time of candidate formula (image -> LaTeX) recipes on this machine, before any long run.

For each candidate it builds the model, reads real im2latex train images, prepares them as training
does (:class:`~ocrjobs.training.rows.FormulaRows`: turned, scaled to the candidate's height, squeezed to
its width, collated with :func:`~ocrjobs.training.recognition.line_images`, trimmed to the widest row
for models that read any width) and times ``--steps`` optimiser steps of the formula loss (forward,
backward, AdamW) with ``--threads`` torch threads (a 1-CPU Ray Train worker has one). Batches are
drawn at random (``--group 1``) or from pools of ``--group`` batches sorted by width, as
``data.group_by_width`` trains. Prints a markdown table: parameters, mean encoder positions, seconds per
step and samples per second. The learning curves that pick between candidates come from short
``ocrjobs train`` runs (their ``metrics.csv``); see docs/benchmarks.md.

    .venv/bin/python benchmarks/formula_recipe.py
    .venv/bin/python benchmarks/formula_recipe.py --candidates satrn_h48 satrn_h64 --steps 10 --group 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "im2latex"

# name -> (arch, arch_kwargs, height, width)
CANDIDATES: dict[str, tuple[str, dict[str, Any], int, int]] = {
    # configs/train_satrn_latex.yaml before this benchmark: every formula squeezed into 128 x 256, /4.
    "satrn_128x256": (
        "satrn",
        {
            "dim": 128,
            "heads": 4,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_ff": 256,
            "decoder_ff": 256,
            "dropout": 0.0,
        },
        128,
        256,
    ),
    # About im2latex's half scale, aspect kept up to 10:1, CNN /8: 6 x 60 positions for a 48 x 480 image.
    "satrn_h48": (
        "satrn",
        {
            "dim": 128,
            "heads": 4,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_ff": 256,
            "decoder_ff": 256,
            "dropout": 0.0,
            "cnn_stages": 3,
        },
        48,
        480,
    ),
    # The same model on larger glyphs: 8 x 80 positions for a 64 x 640 image.
    "satrn_h64": (
        "satrn",
        {
            "dim": 128,
            "heads": 4,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_ff": 256,
            "decoder_ff": 256,
            "dropout": 0.0,
            "cnn_stages": 3,
        },
        64,
        640,
    ),
    # Wider and deeper: two convs per CNN block, width 192, three decoder layers.
    "satrn_h48_wide": (
        "satrn",
        {
            "dim": 192,
            "heads": 4,
            "encoder_layers": 2,
            "decoder_layers": 3,
            "encoder_ff": 384,
            "decoder_ff": 384,
            "dropout": 0.0,
            "cnn_stages": 3,
            "cnn_depth": 2,
        },
        48,
        480,
    ),
    "aster_80x320": (
        "aster",
        {
            "height": 80,
            "width": 320,
            "rectify": False,
            "channels": [32, 64, 128, 192, 256],
            "depths": [1, 1, 2, 2, 1],
            "hidden": 128,
            "lstm_layers": 2,
            "decoder_hidden": 256,
            "embed_dim": 128,
            "attn_dim": 128,
            "cell": "gru",
        },
        80,
        320,
    ),
}


def _rows(height: int, width: int, count: int, max_tokens: int) -> list[dict[str, Any]]:
    from ocrjobs.data.formats import load_records
    from ocrjobs.training.rows import FormulaRows

    records = [r for r in load_records(str(DATA), "im2latex") if len(r.regions[0].text.split()) <= max_tokens]
    prepare = FormulaRows(height, width, augmenter=None)
    rows = []
    for record in records[:count]:
        batch = prepare({"item": np.array([f'{{"uri": "{record.uri}", "text": ""}}'])})
        rows.append(
            {"image": batch["image"][0], "valid_w": batch["valid_w"][0], "text": record.regions[0].text}
        )
    return rows


def _batches(
    rows: list[dict[str, Any]], batch_size: int, group: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    order = rng.permutation(len(rows))
    batches = []
    pool = batch_size * group
    for start in range(0, len(order) - pool + 1, pool):
        chunk = sorted(order[start : start + pool], key=lambda i: rows[i]["valid_w"])
        for b in range(group):
            picked = [rows[i] for i in chunk[b * batch_size : (b + 1) * batch_size]]
            batches.append(
                {
                    "image": np.stack([r["image"] for r in picked]),
                    "valid_w": np.array([r["valid_w"] for r in picked], np.int32),
                    "text": np.array([r["text"] for r in picked]),
                }
            )
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def measure(
    name: str, steps: int, batch_size: int, group: int, threads: int, max_tokens: int
) -> dict[str, Any]:
    """Seconds per training step of one candidate."""
    import torch

    from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary, build_vocabulary
    from ocrjobs.recognition.losses import formula_loss
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.training.recognition import line_images

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    arch, kwargs, height, width = CANDIDATES[name]
    formulas = [
        line.strip() for line in (DATA / "formulas.norm.lst").read_text(encoding="utf-8").splitlines()
    ]
    vocabulary = LatexVocabulary(tuple(build_vocabulary(f for f in formulas if f)))
    tokenizer = LatexTokenizer(vocabulary)
    model = build_recognizer(arch, tokenizer.num_classes, **kwargs)
    trim = bool(getattr(model, "variable_width", False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = _rows(height, width, batch_size * group * (steps // group + 2), max_tokens)
    batches = _batches(rows, batch_size, group, np.random.default_rng(0))
    model.train()
    timings, positions = [], []
    for i, batch in enumerate(batches[: steps + 2]):
        start = time.perf_counter()
        images = line_images(batch, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), torch.device("cpu"), trim=trim)
        targets, _ = tokenizer.encode([str(t) for t in batch["text"]])
        logits = model(images, targets)
        loss = formula_loss(logits, targets, torch.zeros(len(targets)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:  # the first steps pay for allocation and kernel selection
            timings.append(time.perf_counter() - start)
            positions.append(images.shape[2] * images.shape[3] / 64 if trim else float("nan"))
    seconds = float(np.mean(timings))
    return {
        "candidate": name,
        "input": f"{height}x{width}",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch_width": float(np.mean(positions)) * 64 / height if trim else float(width),
        "s_per_step": seconds,
        "samples_per_s": batch_size / seconds,
    }


def main() -> int:
    """Run the benchmark; prints a markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=sorted(CANDIDATES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group", type=int, default=1, help="batches per width-sorted pool (1: random)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=149)
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {args.threads} torch thread(s), width pools of {args.group} batch(es)\n")
    print("| candidate | input | params (M) | mean batch width | s/step | samples/s |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.candidates:
        r = measure(name, args.steps, args.batch_size, args.group, args.threads, args.max_tokens)
        print(
            f"| {r['candidate']} | {r['input']} | {r['params_m']:.2f} | {r['batch_width']:.0f} | "
            f"{r['s_per_step']:.2f} | {r['samples_per_s']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
