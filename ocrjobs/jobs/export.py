"""Export a training checkpoint to a model folder in models/ (config.yaml, model.safetensors, CARD.md).

``--checkpoint`` takes a checkpoint folder (``<storage_path>/<run>/epoch_0007``) or a whole run folder,
whose best checkpoint by the run's ``checkpoint.metric`` is exported. The EMA weights are exported when
the run kept them. Several ``--checkpoint`` (one model: sibling fine-tunes of one folder) write the
average of their weights, a model soup (after the first, a model folder may be one too: the siblings'
parent); measure it with ``ocrjobs eval`` before shipping it. The folder
loads with the task's predictor (``from_model_dir``) like any other model.
``--onnx`` also writes ``model.onnx`` (detectors and CTC recognizers), checked against PyTorch; with
``--model`` it adds one to an existing folder. Predictors on ONNX Runtime use a folder's ``model.onnx``
while it matches the weights, and otherwise export one to a local cache on first use
(:mod:`ocrjobs.backends`), so the file only saves that first export.

Examples::

    ocrjobs export --checkpoint runs/crnn_sroie --out models/crnn_sroie
    ocrjobs export --checkpoint s3://bucket/ocr-runs/dbnet_sroie/epoch_0012 --out models/dbnet_sroie
    ocrjobs export --checkpoint runs/satrn96_latex_r19a --checkpoint runs/satrn96_latex_r19b \
        --out models/satrn96_latex
    ocrjobs export --model models/crnn_doc --onnx
    ocrjobs export --model models/crnn_doc --int8 --calibration ../shared/data/sroie/train \
        --calibration ../shared/data/funsd/train --calibration-holdout-every 8

``--int8`` writes ``model.int8.onnx``: the graph quantised to int8 with activation ranges calibrated on
training pages (never the dev pages you measure it on: ``--calibration-holdout-every`` leaves a source's
held-out part out). ``backend: auto`` runs it on CPU wherever it ships, so ship it only where the dev
accuracy holds (``ocrjobs eval ... --backend onnxruntime-int8`` against ``--backend onnxruntime``).
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
        "--checkpoint",
        action="append",
        default=[],
        help="checkpoint folder, or a run folder (its best checkpoint); repeat it to export the average "
        "of several checkpoints' weights (one model; after the first, model folders may join too)",
    )
    parser.add_argument("--out", help="model folder to write, e.g. models/crnn_sroie (with --checkpoint)")
    parser.add_argument("--model", help="an existing local model folder to add model.onnx to (with --onnx)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (detectors, CTC recognizers), checked against PyTorch",
    )
    parser.add_argument(
        "--int8", action="store_true", help="also write model.int8.onnx, calibrated on --calibration pages"
    )
    parser.add_argument(
        "--calibration",
        action="append",
        default=[],
        metavar="URI",
        help="labelled training pages to calibrate --int8 on (repeatable; detectors use the pages, "
        "recognizers their line crops)",
    )
    parser.add_argument("--calibration-format", default="sroie", help="format of the --calibration data")
    parser.add_argument(
        "--calibration-holdout-every",
        type=int,
        metavar="N",
        help="leave out every N-th page (the dev part a training config holds out)",
    )
    parser.add_argument(
        "--calibration-pages", type=int, default=16, help="pages per --calibration source (spread over it)"
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
    from ocrjobs.training.export import (
        calibration_records,
        export_checkpoint,
        export_folder_int8,
        export_folder_onnx,
        export_weight_average,
    )

    if bool(args.checkpoint) == (args.model is not None):
        raise ConfigError("give --checkpoint (with --out) or --model (with --onnx)")
    if args.model is not None and not (args.onnx or args.int8):
        raise ConfigError("--model adds model.onnx or model.int8.onnx to a folder: give --onnx or --int8")
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration: labelled training pages to calibrate on")
    if args.checkpoint and not args.out:
        raise ConfigError("--checkpoint needs --out (the model folder to write)")
    folder = args.model
    try:
        if len(args.checkpoint) > 1:
            result = export_weight_average(args.checkpoint, args.out, overrides=parse_overrides(args.set))
            print(
                f"exported the average of {len(args.checkpoint)} ingredients ({result.spec.version}) -> {result.out}"
            )
            folder = args.out
        elif args.checkpoint:
            result = export_checkpoint(args.checkpoint[0], args.out, overrides=parse_overrides(args.set))
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
        if args.int8:
            records = calibration_records(
                args.calibration,
                args.calibration_format,
                args.calibration_holdout_every,
                args.calibration_pages,
            )
            int8 = export_folder_int8(folder, records)
            print(
                f"wrote {int8.path}: calibrated on {int8.calibration}; max |int8 - float| on the first "
                f"calibration batch {int8.max_abs_diff:.3f}"
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
