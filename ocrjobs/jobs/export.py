"""Export a training checkpoint to a model folder in models/ (config.yaml, model.safetensors, CARD.md).

``--checkpoint`` takes a checkpoint folder (``<storage_path>/<run>/epoch_0007``) or a whole run folder,
whose best checkpoint by the run's ``checkpoint.metric`` is exported. The EMA weights are exported when
the run kept them. The folder loads with the task's predictor (``from_model_dir``) like any other model.
ONNX export is not offered: no ONNX runtime is available to check an exported graph against PyTorch.

Examples::

    ocrjobs export --checkpoint runs/crnn_sroie --out models/crnn_sroie
    ocrjobs export --checkpoint s3://bucket/ocr-runs/dbnet_sroie/epoch_0012 --out models/dbnet_sroie
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ocrjobs.config import ConfigError

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs export``."""
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint folder, or a run folder (its best checkpoint)"
    )
    parser.add_argument("--out", required=True, help="model folder to write, e.g. models/crnn_sroie")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="an inference setting that differs from training, e.g. preprocess.width=1024 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs export``; returns the exit code (1 when no checkpoint is found)."""
    from ocrjobs.config import parse_overrides
    from ocrjobs.training.export import export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.out, overrides=parse_overrides(args.set))
    except FileNotFoundError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.spec.metrics.items())) or "no metrics"
    print(f"exported {result.checkpoint.uri} (epoch {result.checkpoint.epoch}; {metrics}) -> {result.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ocrjobs.jobs.export ...``."""
    parser = argparse.ArgumentParser(prog="python -m ocrjobs.jobs.export", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
