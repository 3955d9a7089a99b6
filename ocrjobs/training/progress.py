"""Progress reporting: one line per epoch, ``metrics.csv`` in the run folder, a final summary table.

The CSV is rewritten whole on every append (object stores cannot append) — it holds one row per epoch,
so this stays small. After a restart the rows of epochs newer than the checkpoint being resumed are
dropped, so every epoch appears exactly once however often the run was interrupted.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

from ocrjobs import storage
from ocrjobs.config import StorageConfig

__all__ = ["METRICS_FILE", "MetricsLog", "format_epoch_line", "summary_table"]

METRICS_FILE = "metrics.csv"

# Columns that lead the CSV and the summary table, in this order; the task's metrics follow.
_LEADING = ("epoch", "step", "train_loss")
_TRAILING = ("lr", "samples_per_s", "epoch_s", "elapsed_s")


def _ordered_columns(keys: Sequence[str]) -> list[str]:
    lead = [k for k in _LEADING if k in keys]
    trail = [k for k in _TRAILING if k in keys]
    middle = [k for k in keys if k not in _LEADING and k not in _TRAILING]
    return lead + middle + trail


def _parse(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


class MetricsLog:
    """``metrics.csv`` of a run folder (local or ``s3://``).

    Args:
        run_uri: the run folder.
        config: S3 settings.
    """

    def __init__(self, run_uri: str, config: StorageConfig | None = None) -> None:
        self.uri = storage.join(run_uri, METRICS_FILE)
        self.config = config

    def read(self) -> list[dict[str, float | str]]:
        """All rows (numbers parsed), oldest first; ``[]`` when the file does not exist yet."""
        if not storage.exists(self.uri, self.config):
            return []
        text = storage.read_text(self.uri, self.config)
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]

    def _write(self, rows: Sequence[Mapping[str, float | str]]) -> None:
        keys: list[str] = []
        for row in rows:
            keys.extend(k for k in row if k not in keys)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_ordered_columns(keys), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        storage.write_text(self.uri, out.getvalue(), self.config)

    def append(self, row: Mapping[str, float | str]) -> None:
        """Add one epoch's row (a repeated epoch replaces the old row)."""
        rows = [r for r in self.read() if r.get("epoch") != row.get("epoch")]
        self._write([*rows, row])

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (they were not checkpointed and will be redone)."""
        rows = self.read()
        kept = [r for r in rows if float(r.get("epoch", 0)) <= epoch]
        if len(kept) != len(rows):
            self._write(kept)


def _fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if math.isfinite(value) and value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def format_epoch_line(metrics: Mapping[str, float], epochs: int) -> str:
    """One progress line: ``epoch 3/10  train_loss 0.412  val_cer 0.081  ...  31.2 samples/s  95 s``.

    Args:
        metrics: what the epoch reported.
        epochs: the run's total epochs.

    Returns:
        The line (no trailing newline).
    """
    parts = [f"epoch {int(metrics['epoch'])}/{epochs}"]
    for key in _ordered_columns(list(metrics)):
        if key in ("epoch", "step", "samples_per_s", "epoch_s", "elapsed_s"):
            continue
        parts.append(f"{key} {_fmt(metrics[key])}")
    parts.append(f"{metrics.get('samples_per_s', 0.0):.1f} samples/s")
    parts.append(f"elapsed {metrics.get('elapsed_s', 0.0):.0f} s")
    return "  ".join(parts)


def summary_table(rows: Sequence[Mapping[str, float | str]]) -> str:
    """A markdown table of all epochs (the run's final summary).

    Args:
        rows: ``metrics.csv`` rows.

    Returns:
        The table text; ``"(no epochs recorded)"`` when ``rows`` is empty.
    """
    if not rows:
        return "(no epochs recorded)"
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    columns = _ordered_columns(keys)
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)
