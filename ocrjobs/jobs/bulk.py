"""Bulk OCR on Ray Data: images in object storage -> Parquet."""

from __future__ import annotations

import argparse

from ocrjobs.jobs._pending import not_available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this subcommand."""
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    return not_available(args, "bulk OCR issue")
