"""Training throughput of ocrjobs' Ray Train loop, and its overhead against a plain PyTorch loop.

For CRNN (``configs/train_crnn.yaml``) and DBNet (``configs/train_dbnet.yaml``), on a slice of their
train data (no validation), it measures samples/s over all workers of:

* ``plain``: one process, no Ray: the same task prepares the same items (same preparation function,
  run inline as a simple loader would) and the same model, optimiser and schedule train on them, with
  the torch threads of a 1-worker Ray run (its CPU reservation);
* ``ray xN``: ``ocrjobs.training.trainer.fit`` with N workers (DDP over gloo), rows prepared by Ray
  Data tasks.

Each setup runs ``--epochs`` epochs and the last one is measured (the first pays for start-up: Ray
workers, imports, cold caches). Ratios are against ``plain`` of the same model in the same run.
Prints a markdown table::

    .venv/bin/python benchmarks/train_throughput.py                 # both models, 1 and 2 workers
    .venv/bin/python benchmarks/train_throughput.py --models crnn --items 8 --workers 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"crnn": REPO / "configs" / "train_crnn.yaml", "dbnet": REPO / "configs" / "train_dbnet.yaml"}
# Per-model batch size and crop sizes small enough for a 2-core machine to finish in minutes.
SETTINGS: dict[str, dict[str, Any]] = {
    "crnn": {"batch_size": 32, "model.preprocess.width": 256},
    "dbnet": {"batch_size": 2, "data.crop_size": 384},
}


def _config(model: str, items: int, epochs: int, workers: int, storage_path: str) -> Any:
    from ocrjobs.config import load_config
    from ocrjobs.training.config import TrainConfig

    cpus = os.cpu_count() or 2
    # Leave a CPU share for the Ray Data preparation tasks, or workers and tasks wait for each other.
    per_worker = min(1.0, (cpus - 0.5) / workers)
    overrides = {
        **SETTINGS[model],
        "name": f"bench-{model}-{workers}",
        "storage_path": storage_path,
        "epochs": epochs,
        "data.train.synthetic": [],
        "data.train.limit": items,
        "data.val": {},
        "data.prep_num_cpus": 0.5,
        "data.shuffle_buffer": 0,
        "scaling.num_workers": workers,
        "scaling.cpus_per_worker": per_worker,
        "checkpoint.metric": "train_loss",
        "optim.ema_decay": None,
        "log_every": 0,
        "export_to": None,
    }
    return load_config(RECIPES[model], TrainConfig, overrides)


def _batches(task: Any, plan: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Items prepared inline, one at a time, regrouped into batches (what a simple loader does)."""
    from ocrjobs.training.data import SplitPlan, prepare_locally

    pending: list[dict[str, np.ndarray]] = []
    for i in range(len(plan.items)):
        one = SplitPlan(plan.name, plan.items[i : i + 1])
        pending.append(prepare_locally(task, one, ()))
        rows = sum(len(p["image"]) for p in pending)
        while rows >= batch_size:
            merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in merged.items()}
            pending = [{k: v[batch_size:] for k, v in merged.items()}]
            rows -= batch_size


def plain_loop(cfg: Any) -> float:
    """Samples/s of the last epoch of a single-process PyTorch loop over the same task, data and model."""
    import torch

    from ocrjobs.training.data import plan_data
    from ocrjobs.training.loop import seed_everything
    from ocrjobs.training.optim import build_optimizer, build_scheduler
    from ocrjobs.training.tasks import TASKS

    task = TASKS[cfg.task](cfg)
    plan = plan_data(task, cfg).splits["train"]
    # The CPU budget of one Ray worker (Ray sets a worker's torch threads from its CPU reservation).
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    seed_everything(cfg.seed)
    model = task.build_model().train()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.epochs * (plan.rows // cfg.batch_size))
    device = torch.device("cpu")
    rate = 0.0
    for _ in range(cfg.epochs):
        start, seen = time.perf_counter(), 0
        for batch in _batches(task, plan, cfg.batch_size):
            loss, _ = task.loss(model, task.collate(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
            optimizer.step()
            scheduler.step()
            seen += cfg.batch_size
        rate = seen / (time.perf_counter() - start)
    return rate


def ray_loop(cfg: Any) -> float:
    """Samples/s (all workers) of the last epoch of ``fit``, from its ``metrics.csv``."""
    from ocrjobs.training.trainer import fit

    outcome = fit(cfg)
    return float(outcome.rows[-1]["samples_per_s"])


def main() -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="crnn,dbnet", help="comma-separated: crnn, dbnet")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts for the Ray loop")
    parser.add_argument("--items", type=int, default=16, help="train items (receipts) per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setup; the last one is measured")
    args = parser.parse_args()

    import ray
    import torch

    # address="local": never join a stale `ray start` cluster recorded in /tmp/ray.
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    lines = [
        f"Training throughput on {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}; "
        f"{args.items} receipts per epoch, last of {args.epochs} epochs measured.",
        "",
        "| model | setup | batch/worker | samples/s | vs plain |",
        "|---|---|---|---|---|",
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="ocrjobs-bench-") as runs:
            for model in args.models.split(","):
                plain_cfg = _config(model, args.items, args.epochs, 1, runs)
                plain = plain_loop(plain_cfg)
                lines.append(f"| {model} | plain (1 process) | {plain_cfg.batch_size} | {plain:.1f} | 1.00 |")
                for workers in (int(w) for w in args.workers.split(",")):
                    cfg = _config(model, args.items, args.epochs, workers, runs)
                    rate = ray_loop(cfg)
                    lines.append(
                        f"| {model} | ray x{workers} (gloo, {cfg.scaling.cpus_per_worker:g} CPU each) "
                        f"| {cfg.batch_size} | {rate:.1f} | {rate / plain:.2f} |"
                    )
    finally:
        ray.shutdown()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
