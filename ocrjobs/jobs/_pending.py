"""Shared answer of subcommands whose capability has not landed yet."""

from __future__ import annotations

import argparse
import sys


def not_available(args: argparse.Namespace, issue: str) -> int:
    """Say clearly that a subcommand is not built yet, and fail (exit code 2)."""
    print(f"ocrjobs {args.command}: not available in this version yet ({issue}).", file=sys.stderr)
    return 2
