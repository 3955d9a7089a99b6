"""What a wide recognizer input costs in training: width 256 vs 768, batches grouped by line width or not.

The CRNN recipe (``configs/train_crnn.yaml``) prepares rows of its first ``--items`` SROIE train
receipts once (no augmentation), then times optimiser steps (forward, CTC loss, backward, AdamW) on the
same rows for each setup, in one process:

* ``width 256, random batches``: lines wider than 256 px (at height 32) squeezed, every batch 256 wide;
* ``width 768, random batches``: batches of shuffled rows, trimmed to their widest row;
* ``width 768, grouped``: ``group_by_width`` pools of ``--group`` batches sorted by line width, then trimmed.

Setups alternate for ``--rounds`` rounds (a shared machine's drift hits all alike) and the best round
counts; the table also gives the mean batch width the model saw. Prints a markdown table::

    .venv/bin/python benchmarks/recognition_width.py --items 40 --steps 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rows(width: int, items: int) -> tuple[Any, dict[str, np.ndarray]]:
    from ocrjobs.config import load_config
    from ocrjobs.training.config import TrainConfig
    from ocrjobs.training.data import plan_data, prepare_locally
    from ocrjobs.training.tasks import TASKS

    cfg = load_config(
        REPO / "configs" / "train_crnn.yaml",
        TrainConfig,
        {
            "model.preprocess.width": width,
            "data.train.synthetic": [],
            "data.train.limit": items,
            "data.augment": False,
            "data.val": {},
            "checkpoint.metric": "train_loss",
        },
    )
    task = TASKS["recognition"](cfg)
    plan = plan_data(task, cfg)
    return task, prepare_locally(task, plan.splits["train"], plan.vocabulary, count=items)


def _batches(
    rows: dict[str, np.ndarray], batch: int, group: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    from ocrjobs.training.loop import group_by_width

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows["text"]))
    pool = batch * group
    pools = (
        {k: v[order[i : i + pool]] for k, v in rows.items()} for i in range(0, len(order) - pool + 1, pool)
    )
    if group > 1:
        yield from group_by_width(pools, batch, rng)
    else:
        yield from pools


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit code."""
    import torch

    from ocrjobs.training.optim import build_optimizer

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40, help="SROIE train receipts whose lines are used")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps timed per setup and round")
    parser.add_argument("--batch", type=int, default=64, help="rows per batch (the recipe's)")
    parser.add_argument("--group", type=int, default=8, help="batches per width-sorted pool")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (setups alternate)")
    args = parser.parse_args(argv)

    setups = {
        "width 256, random batches": (256, 1),
        "width 768, random batches": (768, 1),
        f"width 768, grouped ({args.group} batches per pool)": (768, args.group),
    }
    prepared = {w: _rows(w, args.items) for w in {w for w, _ in setups.values()}}
    n_rows = len(prepared[256][1]["text"])
    needed = args.steps * args.batch
    if n_rows < needed:
        raise SystemExit(f"{n_rows} rows from {args.items} receipts; --steps x --batch needs {needed}")
    best: dict[str, float] = {}
    widths: dict[str, float] = {}
    for r in range(args.rounds):
        names = list(setups) if r % 2 == 0 else list(reversed(setups))
        for name in names:
            width, group = setups[name]
            task, rows = prepared[width]
            torch.manual_seed(0)
            model = task.build_model()
            optimizer = build_optimizer(model, task.cfg.optim)
            batches = list(_batches(rows, args.batch, group, seed=r))[: args.steps]
            seen = []
            start = time.perf_counter()
            for batch in batches:
                tensors = task.collate(batch, torch.device("cpu"))
                seen.append(tensors["image"].shape[-1])
                loss, _ = task.loss(model, tensors)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            rate = len(batches) * args.batch / (time.perf_counter() - start)
            best[name] = max(best.get(name, 0.0), rate)
            widths[name] = float(np.mean(seen))
            print(f"  round {r + 1}: {name}: {rate:.1f} samples/s (mean batch width {widths[name]:.0f})")
    first = next(iter(setups))
    print(
        f"\n{n_rows} line rows of {args.items} receipts, {args.steps} steps of {args.batch} per setup, best of {args.rounds}\n"
    )
    print("| setup | samples/s | ratio to first | mean batch width (px) |")
    print("| --- | ---: | ---: | ---: |")
    for name in setups:
        print(f"| {name} | {best[name]:.1f} | {best[name] / best[first]:.2f} | {widths[name]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
