"""Importing ocrjobs bounds oneDNN's primitive cache (long-lived processes grew with every crop width)."""

from __future__ import annotations

import os
import subprocess
import sys

_PROBE = "import ocrjobs, os; print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))"


def _probe(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_import_caps_the_cache_and_a_users_value_wins() -> None:
    assert _probe() == "64"
    assert _probe(ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024") == "1024"
