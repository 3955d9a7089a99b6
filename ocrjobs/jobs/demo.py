"""Run the bulk OCR job on the sample receipts bundled in ``samples/`` and print what it read.

``make demo`` runs ``ocrjobs demo``: the job of ``configs/demo.yaml`` (a :class:`~ocrjobs.jobs.bulk.BulkConfig`)
on a local Ray with every CPU of this machine (or on the cluster ``RAY_ADDRESS`` names), writing to
``out/demo/``; then a table of file (and page), lines found and first line of text. Beside the sample
images the demo reads one multi-page PDF, made at run time from the first samples
(``<output>/inputs/receipts.pdf``, one receipt per page, the JPEG files stored as they are): the
job's input becomes a manifest of the samples and that PDF (``<output>/inputs/inputs.txt``). Relative paths of the demo
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

__all__ = [
    "DEFAULT_CONFIG",
    "DEMO_PDF_PAGES",
    "REPO_ROOT",
    "add_arguments",
    "demo_inputs",
    "format_table",
    "run",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
_PATH_FIELDS = ("input", "output", "detector", "recognizer")
# Pages of the demo's PDF (the first samples, one per page).
DEMO_PDF_PAGES = 3
_JPEG_SUFFIXES = (".jpg", ".jpeg")


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


def _name(row: dict[str, Any]) -> str:
    """The row's file name, with ``p<page>/<pages>`` for a page of a multi-page file."""
    name = storage.basename(row["uri"])
    pages = row.get("pages")
    return f"{name} p{row['page']}/{pages}" if pages and pages > 1 and row.get("page") else name


def format_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table: one line per page with its file name (and page), lines found and first line.

    Args:
        rows: output rows (``uri``, ``page``, ``pages``, ``lines``, ``text``, ``error``), in any order.

    Returns:
        The table text (no trailing newline).
    """
    body = []
    for row in sorted(rows, key=lambda r: (storage.basename(r["uri"]), r.get("page") or 0)):
        if row["error"] is not None:
            body.append((_name(row), "-", f"error: {row['error']}"))
        else:
            body.append((_name(row), str(len(row["lines"] or [])), _first_line(row["text"])))
    header = ("file", "lines", "first line of text")
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(2)]
    out = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]}"]
    out += [f"{f:<{widths[0]}}  {n:>{widths[1]}}  {t}" for f, n, t in body]
    return "\n".join(out)


def _read_rows(output: str, config: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(storage.join(output, "parquet"), config)
    columns = ["uri", "page", "pages", "lines", "text", "error"]
    return pq.read_table(path, filesystem=fs, columns=columns).to_pylist()


def demo_inputs(config: Any) -> str:
    """The demo's input: the config's folder plus a multi-page PDF made from its first JPEG samples.

    The PDF holds the first :data:`DEMO_PDF_PAGES` JPEG files of the folder, one per page, stored as
    they are at ``config.documents.dpi`` (so each page renders back to its sample's size). It and a
    manifest listing the folder's files and the PDF are written under ``<output>/inputs/``; the same
    files each run, so a second run finds every shard done.

    Args:
        config: the demo's :class:`~ocrjobs.jobs.bulk.BulkConfig`.

    Returns:
        The manifest's URI, or ``config.input`` as it is when it is not a folder of JPEG samples.
    """
    from ocrjobs.documents import pdf_from_images

    if config.input.lower().endswith(storage.MANIFEST_SUFFIXES):
        return str(config.input)
    listed = storage.scan_inputs(config.input, config.storage, storage.INPUT_SUFFIXES).uris
    jpegs = [u for u in listed if u.lower().endswith(_JPEG_SUFFIXES)][:DEMO_PDF_PAGES]
    if len(jpegs) < 2:
        return str(config.input)
    folder = storage.join(config.output, "inputs")
    pdf = storage.join(folder, "receipts.pdf")
    pages = [storage.read_bytes(u, config.storage) for u in jpegs]
    storage.write_bytes(pdf, pdf_from_images(pages, dpi=config.documents.dpi), config.storage)
    manifest = storage.join(folder, "inputs.txt")
    storage.write_text(manifest, "".join(f"{u}\n" for u in [*listed, pdf]), config.storage)
    return manifest


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs demo``; 0 when every receipt was read without error."""
    import ray

    from ocrjobs.jobs.bulk import BulkConfig, model_id, run_bulk

    overrides = parse_overrides(args.set)
    if args.output:
        overrides["output"] = os.path.abspath(args.output)
    config = load_config(args.config or DEFAULT_CONFIG, BulkConfig, overrides)
    config = config.model_copy(update={name: _anchor(getattr(config, name)) for name in _PATH_FIELDS})
    config = config.model_copy(update={"input": demo_inputs(config)})

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
    files = len({r["uri"] for r in rows})
    line = f"{len(rows)} pages of {files} files, {len(rows) - errors} read, {errors} errors, {lines} lines"
    if summary["processed"]:
        line += f"; {summary['processed']} processed in {summary['seconds']:.1f} s ({summary['images_per_s']:.2f} pages/s)"
    if summary["skipped"]:
        line += f"; {summary['skipped']} already done earlier (delete {config.output} to recompute)"
    print(
        f"{line}. Results: {storage.join(config.output, 'parquet')} (summary: _summary.json; Ray's log: {ray_log})"
    )
    return 0 if errors == 0 else 1
