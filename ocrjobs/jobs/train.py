"""Train or fine-tune a model with Ray Train (DDP on CPU or GPU workers).

The config (``configs/train_*.yaml``, every field documented in :mod:`ocrjobs.training.config`) names the
task, model, data, workers and the run folder ``storage_path/name`` (local or ``s3://``) where
checkpoints, ``metrics.csv`` and the resolved ``config.yaml`` go. Re-running the same name resumes from
its latest checkpoint; a lost worker restarts the group from it (``failure.max_failures``).

Examples::

    ocrjobs train --config configs/train_crnn.yaml --dry-run
    ocrjobs train --config configs/train_crnn.yaml --workers 2 --set optim.lr=5e-4
    ray job submit --working-dir . -- python -m ocrjobs.jobs.train --config configs/train_dbnet.yaml \\
        --storage-path s3://my-bucket/ocr-runs --set scaling.use_gpu=true
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from ocrjobs.config import ConfigError, load_config, parse_overrides
from ocrjobs.training.config import TrainConfig

__all__ = ["TrainConfig", "add_arguments", "command_line", "load_train_config", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs train``."""
    parser.add_argument("--config", required=True, help="training YAML (configs/train_*.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set optim.lr=5e-4 (repeatable)",
    )
    parser.add_argument("--name", help="run name (the run folder; an existing run resumes)")
    parser.add_argument("--storage-path", help="where run folders live: a local folder or s3://bucket/prefix")
    parser.add_argument("--workers", type=int, help="number of training workers (scaling.num_workers)")
    parser.add_argument("--epochs", type=int, help="total epochs of the run")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, open the data, build the model once and print a summary; no training",
    )


def load_train_config(args: argparse.Namespace) -> TrainConfig:
    """The config from ``--config``, with ``--set`` and the shortcut flags applied (flags win).

    Raises:
        ConfigError: the file or an override is invalid.
    """
    overrides = parse_overrides(args.set)
    flags = {
        "name": args.name,
        "storage_path": args.storage_path,
        "scaling.num_workers": args.workers,
        "epochs": args.epochs,
    }
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return load_config(args.config, TrainConfig, overrides)


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs train``; returns the exit code."""
    cfg = load_train_config(args)
    if args.dry_run:
        from ocrjobs.training.trainer import dry_run

        print(dry_run(cfg))
        return 0
    from ocrjobs.training.trainer import fit

    fit(cfg, command=command_line(args))
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The ``ocrjobs train`` command equivalent to ``args`` (recorded in the run folder and model card)."""
    parts = ["ocrjobs", "train", "--config", args.config]
    for item in args.set:
        parts += ["--set", item]
    for flag, value in (
        ("--name", args.name),
        ("--storage-path", args.storage_path),
        ("--workers", args.workers),
        ("--epochs", args.epochs),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ocrjobs.jobs.train ...`` (the ``ray job submit`` entry point)."""
    parser = argparse.ArgumentParser(prog="python -m ocrjobs.jobs.train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(
        ["python", "-m", "ocrjobs.jobs.train", *(sys.argv[1:] if argv is None else argv)]
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
