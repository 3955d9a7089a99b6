"""Run the bulk OCR job on the sample receipts bundled in ``samples/`` and print what it read.

``make demo`` runs ``ocrjobs demo``: the job of ``configs/demo.yaml`` (a :class:`~ocrjobs.jobs.bulk.BulkConfig`)
on a local Ray with every CPU of this machine (or on the cluster ``RAY_ADDRESS`` names), writing to
``out/demo/``; then a table of file, lines found and first line of text. Relative paths of the demo
config are taken from the checkout, so the demo runs from any folder. A second run finds every shard
done and only prints the table again (delete ``out/demo`` to recompute).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ocrjobs import storage
from ocrjobs.config import load_config, parse_overrides
from ocrjobs.raycluster import ensure_ray, ray_logs_to_file

__all__ = ["DEFAULT_CONFIG", "REPO_ROOT", "add_arguments", "format_table", "run"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
_PATH_FIELDS = ("input", "output", "detector", "recognizer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs demo``."""
    parser.add_argument("--config", help=f"demo config (a bulk job config; default {DEFAULT_CONFIG})")
    parser.add_argument("--output", help="output folder (default from the config: out/demo in the checkout)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field (repeatable)",
    )


def _anchor(path: str) -> str:
    """A relative local path taken from the checkout; absolute paths and ``s3://`` URIs as given."""
    if storage.is_s3(path) or os.path.isabs(path):
        return path
    return str(REPO_ROOT / path)


def _first_line(text: str | None, width: int = 48) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table: one line per image with its file name, lines found and first line of text.

    Args:
        rows: output rows (``uri``, ``lines``, ``text``, ``error``), in any order.

    Returns:
        The table text (no trailing newline).
    """
    body = []
    for row in sorted(rows, key=lambda r: r["uri"]):
        if row["error"] is not None:
            body.append((storage.basename(row["uri"]), "-", f"error: {row['error']}"))
        else:
            body.append(
                (storage.basename(row["uri"]), str(len(row["lines"] or [])), _first_line(row["text"]))
            )
    header = ("file", "lines", "first line of text")
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(2)]
    out = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]}"]
    out += [f"{f:<{widths[0]}}  {n:>{widths[1]}}  {t}" for f, n, t in body]
    return "\n".join(out)


def _read_rows(output: str, config: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(storage.join(output, "parquet"), config)
    return pq.read_table(path, filesystem=fs, columns=["uri", "lines", "text", "error"]).to_pylist()


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs demo``; 0 when every receipt was read without error."""
    import ray

    from ocrjobs.jobs.bulk import BulkConfig, model_id, run_bulk

    overrides = parse_overrides(args.set)
    if args.output:
        overrides["output"] = os.path.abspath(args.output)
    config = load_config(args.config or DEFAULT_CONFIG, BulkConfig, overrides)
    config = config.model_copy(update={name: _anchor(getattr(config, name)) for name in _PATH_FIELDS})

    # Missing model folders are reported before a Ray is started for nothing.
    if config.task == "ocr":
        model_id(config.detector, "detection", config.storage)
    model_id(config.recognizer, "recognition", config.storage)

    # Ray's own INFO lines (start-up, execution plans, progress dumps) go to a file beside the results:
    # the terminal keeps the job's progress lines and the table.
    ray_log = (
        os.path.join(config.output, "ray.log") if not storage.is_s3(config.output) else "ocrjobs-demo-ray.log"
    )
    with ray_logs_to_file(ray_log):
        started_here = ensure_ray(log_to_driver=False)
        try:
            summary = run_bulk(config)
        finally:
            if started_here:
                ray.shutdown()
    rows = _read_rows(config.output, config.storage)
    print()
    print(format_table(rows))
    print()
    errors = sum(1 for r in rows if r["error"] is not None)
    lines = sum(len(r["lines"] or []) for r in rows)
    line = f"{len(rows)} images, {len(rows) - errors} read, {errors} errors, {lines} lines"
    if summary["processed"]:
        line += f"; {summary['processed']} processed in {summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s)"
    if summary["skipped"]:
        line += f"; {summary['skipped']} already done earlier (delete {config.output} to recompute)"
    print(
        f"{line}. Results: {storage.join(config.output, 'parquet')} (summary: _summary.json; Ray's log: {ray_log})"
    )
    return 0 if errors == 0 else 1
