"""Export a training checkpoint to a model folder in models/ (config.yaml, model.safetensors, CARD.md).

``--checkpoint`` takes a checkpoint folder (``<storage_path>/<run>/epoch_0007``) or a whole run folder,
whose best checkpoint by the run's ``checkpoint.metric`` is exported. The EMA weights are exported when
the run kept them. The folder loads with the task's predictor (``from_model_dir``) like any other model.
``--onnx`` also writes ``model.onnx`` (detectors and CTC recognizers), checked against PyTorch; with
``--model`` it adds one to an existing folder. Predictors on ONNX Runtime use a folder's ``model.onnx``
while it matches the weights, and otherwise export one to a local cache on first use
(:mod:`ocrjobs.backends`), so the file only saves that first export.

Examples::

    ocrjobs export --checkpoint runs/crnn_sroie --out models/crnn_sroie
    ocrjobs export --checkpoint s3://bucket/ocr-runs/dbnet_sroie/epoch_0012 --out models/dbnet_sroie
    ocrjobs export --model models/crnn_doc --onnx
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
    parser.add_argument("--checkpoint", help="checkpoint folder, or a run folder (its best checkpoint)")
    parser.add_argument("--out", help="model folder to write, e.g. models/crnn_sroie (with --checkpoint)")
    parser.add_argument("--model", help="an existing local model folder to add model.onnx to (with --onnx)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (detectors, CTC recognizers), checked against PyTorch",
    )
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
    from ocrjobs.training.export import export_checkpoint, export_folder_onnx

    if (args.checkpoint is None) == (args.model is None):
        raise ConfigError("give --checkpoint (with --out) or --model (with --onnx)")
    if args.model is not None and not args.onnx:
        raise ConfigError("--model adds model.onnx to a folder: give --onnx too")
    if args.checkpoint is not None and not args.out:
        raise ConfigError("--checkpoint needs --out (the model folder to write)")
    folder = args.model
    try:
        if args.checkpoint is not None:
            result = export_checkpoint(args.checkpoint, args.out, overrides=parse_overrides(args.set))
            metrics = (
                ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.spec.metrics.items())) or "no metrics"
            )
            print(
                f"exported {result.checkpoint.uri} (epoch {result.checkpoint.epoch}; {metrics}) -> {result.out}"
            )
            folder = args.out
        if args.onnx:
            onnx = export_folder_onnx(folder)
            print(
                f"wrote {onnx.path}: max |onnx - torch| {onnx.max_abs_diff:.2e}; one check forward "
                f"{onnx.seconds_torch:.3f} s torch, {onnx.seconds_onnx:.3f} s onnxruntime"
            )
    except FileNotFoundError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
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
