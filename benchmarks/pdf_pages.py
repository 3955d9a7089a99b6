"""Pages per second of the bulk job on one multi-page PDF vs the same pages as JPEG files, same run.

The pages are the bundled sample receipts (``samples/receipts``, cycled to ``--pages``), or the images
of ``--images``. The JPEG files are written as they are; the PDF holds the same JPEG streams, one per
page, sized so that rendering at ``documents.dpi`` gives each page back at its JPEG's pixel size
(:func:`ocrjobs.documents.pdf_from_images`). Both inputs then go through ``run_bulk`` on one local Ray
(every CPU of this machine), alternating PDF and JPEG runs ``--repeats`` times; each run pays its own
actor start-up and model loading, as a real job does. Printed: a markdown table with pages, wall
seconds, pages/s and the read + decode (or render) seconds per page, the mean of the repeats, and how
many PDF pages read the same text as their JPEG file (PDFium and Pillow decode JPEG with different
IDCTs, so a few pixels and now and then a character may differ). Before the jobs, the decoding alone is
timed in this process, without Ray (best of 3): Pillow decoding the JPEG files vs PDFium rendering the
PDF's pages (``--decode-only`` stops there)::

    python benchmarks/pdf_pages.py --pages 20 --repeats 2
    python benchmarks/pdf_pages.py --images ../shared/data/sroie/dev/img --pages 20 --decode-only
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

__all__ = ["build_parser", "main", "make_inputs", "markdown_table", "measure_decoding"]


def make_inputs(images: Path, pages: int, folder: Path, dpi: float) -> tuple[Path, Path]:
    """Write ``pages`` JPEG files (cycling over the folder's) and the PDF of the same pages.

    Returns:
        ``(folder of JPEG files, folder holding the PDF)``.
    """
    from ocrjobs.documents import pdf_from_images

    sources = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        raise SystemExit(f"no JPEG files in {images}")
    data = [sources[k % len(sources)].read_bytes() for k in range(pages)]
    jpegs, pdf = folder / "jpeg", folder / "pdf"
    jpegs.mkdir(parents=True)
    pdf.mkdir(parents=True)
    for k, blob in enumerate(data, start=1):
        (jpegs / f"page-{k:03d}.jpg").write_bytes(blob)
    (pdf / f"scan-{pages}pages.pdf").write_bytes(pdf_from_images(data, dpi=dpi))
    return jpegs, pdf


def measure_decoding(jpegs: Path, pdf: Path, dpi: float, repeats: int = 3) -> dict[str, float]:
    """Seconds per page, best of ``repeats``: Pillow decoding each JPEG file, PDFium rendering each page."""
    from ocrjobs.documents import open_document
    from ocrjobs.images import decode_image

    files = [p.read_bytes() for p in sorted(jpegs.iterdir())]
    data = next(pdf.iterdir()).read_bytes()
    best = {"jpeg": float("inf"), "pdf": float("inf")}
    for _ in range(repeats):
        started = time.perf_counter()
        for blob in files:
            decode_image(blob)
        best["jpeg"] = min(best["jpeg"], (time.perf_counter() - started) / len(files))
        started = time.perf_counter()
        with open_document(data, dpi=dpi) as document:
            for page in range(1, document.pages + 1):
                document.page(page)
        best["pdf"] = min(best["pdf"], (time.perf_counter() - started) / len(files))
    return best


def _texts(output: str) -> dict[tuple[str, int | None], str | None]:
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(output, "parquet"), columns=["uri", "page", "text"]).to_pylist()
    return {(r["uri"], r["page"]): r["text"] for r in rows}


def markdown_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """The table of mean pages, seconds, pages/s and read + decode seconds per page per input kind."""
    lines = [
        "| input | pages | runs | wall s (mean) | pages/s (mean) | read + decode s/page |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, runs in results.items():
        pages = runs[0]["processed"]
        seconds = statistics.mean(r["seconds"] for r in runs)
        rate = statistics.mean(r["images_per_s"] for r in runs)
        decode = statistics.mean(
            (r["stage_seconds"].get("read", 0.0) + r["stage_seconds"].get("decode", 0.0)) / max(pages, 1)
            for r in runs
        )
        lines.append(f"| {kind} | {pages} | {len(runs)} | {seconds:.1f} | {rate:.2f} | {decode:.4f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=REPO / "samples" / "receipts", help="JPEG pages")
    parser.add_argument("--pages", type=int, default=20, help="pages of the PDF (and JPEG files)")
    parser.add_argument("--repeats", type=int, default=1, help="PDF and JPEG runs, alternating")
    parser.add_argument("--dpi", type=float, default=150.0, help="documents.dpi of the jobs")
    parser.add_argument("--detector", default=str(REPO / "models" / "dbnet_doc"))
    parser.add_argument("--recognizer", default=str(REPO / "models" / "crnn_en"))
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--decode-only", action="store_true", help="time the decoding only, no jobs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray

    from ocrjobs.jobs.bulk import BulkConfig, run_bulk
    from ocrjobs.raycluster import ensure_ray, ray_logs_to_file

    results: dict[str, list[dict[str, Any]]] = {"PDF, 1 file": [], "JPEG, 1 file per page": []}
    with tempfile.TemporaryDirectory(prefix="pdf_pages_") as tmp:
        root = Path(tmp)
        jpegs, pdf = make_inputs(args.images, args.pages, root / "in", args.dpi)
        decoding = measure_decoding(jpegs, pdf, args.dpi)
        print(
            f"decoding alone, s/page (best of 3, no Ray): JPEG files (Pillow) {decoding['jpeg']:.4f}, "
            f"PDF pages at {args.dpi:g} dpi (PDFium) {decoding['pdf']:.4f}"
        )
        if args.decode_only:
            return 0
        outputs: dict[str, str] = {}
        with ray_logs_to_file(str(root / "ray.log")):
            ensure_ray(num_cpus=args.num_cpus, log_to_driver=False)
            try:
                for repeat in range(args.repeats):
                    for kind, source in (("PDF, 1 file", pdf), ("JPEG, 1 file per page", jpegs)):
                        output = str(root / f"out-{repeat}-{source.name}")
                        config = BulkConfig.model_validate(
                            {
                                "input": str(source),
                                "output": output,
                                "detector": args.detector,
                                "recognizer": args.recognizer,
                                "documents": {"dpi": args.dpi},
                            }
                        )
                        started = time.perf_counter()
                        summary = run_bulk(config)
                        print(
                            f"run {repeat + 1}, {kind}: {summary['processed']} pages in "
                            f"{time.perf_counter() - started:.1f} s ({summary['images_per_s']:.2f} pages/s)"
                        )
                        results[kind].append(summary)
                        outputs[kind] = output
            finally:
                ray.shutdown()
        pdf_texts, jpeg_texts = _texts(outputs["PDF, 1 file"]), _texts(outputs["JPEG, 1 file per page"])
        jpeg_by_page = {int(Path(uri).stem.split("-")[1]): text for (uri, _), text in jpeg_texts.items()}
        same = sum(1 for (_, page), text in pdf_texts.items() if page and jpeg_by_page.get(page) == text)
    print(markdown_table(results))
    print()
    print(f"PDF pages reading the same text as their JPEG file: {same}/{len(pdf_texts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
