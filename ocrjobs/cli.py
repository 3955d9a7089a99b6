"""The ``ocrjobs`` command.

Each subcommand lives in its own module that exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Those modules import torch/ray inside ``run`` only, so ``ocrjobs --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ocrjobs import __version__
from ocrjobs.config import ConfigError
from ocrjobs.storage import StorageError

__all__ = ["COMMANDS", "build_parser", "main"]

# name -> (module, one-line help). An explicit table: no discovery by import side effects.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ocrjobs.jobs.demo", "run the bulk OCR job on the bundled sample receipts with a local Ray"),
    "bulk": ("ocrjobs.jobs.bulk", "bulk OCR: images in object storage -> Parquet (Ray Data)"),
    "train": ("ocrjobs.jobs.train", "train or fine-tune a model (Ray Train, DDP)"),
    "eval": ("ocrjobs.jobs.evaluate", "score a model or saved predictions on a labelled dataset"),
    "serve": ("ocrjobs.serve.cli", "serve the online OCR ensemble over HTTP (Ray Serve)"),
    "export": ("ocrjobs.jobs.export", "export a training checkpoint to a model folder in models/"),
    "lm": ("ocrjobs.jobs.lm", "add a character language model to a CTC recognizer's beam search"),
    "synth": ("ocrjobs.data.synth_cli", "render synthetic documents, text lines or formulas"),
    "visualize": ("ocrjobs.jobs.visualize", "draw detected polygons and text onto an image"),
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="ocrjobs",
        description="OCR at cluster scale on Ray: bulk jobs, distributed training, online serving.",
    )
    parser.add_argument("--version", action="version", version=f"ocrjobs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocrjobs`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"ocrjobs {args.command}: {exc}", file=sys.stderr)
        return 2
    except (StorageError, ValueError, FileNotFoundError) as exc:
        # Expected user-facing failures (bad URI, credentials, malformed data): a clear line, and the
        # traceback only with --verbose.
        if args.verbose:
            logging.getLogger("ocrjobs").exception("%s failed", args.command)
        print(f"ocrjobs {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
