"""Bounded HTTP load on the online OCR service: throughput, latency percentiles, errors, batch sizes.

Sends SROIE receipts (raw JPEG bytes, ``Content-Type: image/jpeg``) to ``POST /v1/ocr`` on 127.0.0.1,
at each concurrency level in turn (``c`` workers, each sending its next request when the previous one
has answered, until the level's request count is reached). Before and after each level it reads
``GET /v1/stats``, so the report shows how many requests each deployment's ``@serve.batch`` calls
combined at that level. Either starts the service itself (a local Ray with ``--num-cpus`` CPUs, the
application of ``--config``) or loads a running one (``--url``)::

    python benchmarks/serve_load.py --config configs/serve.yaml --num-cpus 2 \\
        --concurrency 1 8 32 --requests 50 500 500 --json out/serve_load.json
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --concurrency 8 --requests 500

A token configured for the service is read from the environment variable ``--token-env`` names.
Prints a markdown table (the one in docs) and writes every number to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

__all__ = ["batch_delta", "build_parser", "main", "markdown_table", "run_level"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = [REPO.parent / "shared" / "data" / "sroie" / "dev" / "img", REPO / "samples" / "receipts"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", help="base URL of a running service (default: start one from --config)")
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"), help="Serve config to start")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override an app arg")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here")
    p.add_argument("--images", help="folder of receipt images (default: SROIE dev, else samples/receipts)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="levels, in order")
    p.add_argument("--requests", type=int, nargs="+", default=[50, 500, 500], help="requests per level")
    p.add_argument("--warmup", type=int, default=4, help="requests before the first level (not counted)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as an error")
    p.add_argument("--token-env", default="OCRJOBS_SERVE_TOKEN", help="env var with the bearer token")
    p.add_argument("--json", help="write the results here")
    return p


def _images(folder: str | None) -> list[bytes]:
    candidates = [Path(folder)] if folder else DEFAULT_IMAGES
    for path in candidates:
        files = sorted(f for f in path.glob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if files:
            return [f.read_bytes() for f in files]
    raise SystemExit(f"no .jpg/.png images in {', '.join(str(c) for c in candidates)}")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per ``deployment.method``: the batches served between two ``/v1/stats`` answers.

    Returns:
        ``{name: {"batches", "requests", "mean_batch_size", "max_batch_size", "histogram"}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for deployment, methods in after.get("deployments", {}).items():
        for method, stats in methods.items():
            old = before.get("deployments", {}).get(deployment, {}).get(method, {})
            hist = Counter({int(k): v for k, v in stats.get("batch_size_histogram", {}).items()})
            hist.subtract({int(k): v for k, v in old.get("batch_size_histogram", {}).items()})
            hist = Counter({k: v for k, v in hist.items() if v > 0})
            batches = sum(hist.values())
            requests = sum(k * v for k, v in hist.items())
            out[f"{deployment}.{method}"] = {
                "batches": batches,
                "requests": requests,
                "mean_batch_size": round(requests / batches, 2) if batches else 0.0,
                "max_batch_size": max(hist, default=0),
                "histogram": {str(k): hist[k] for k in sorted(hist)},
            }
    return out


async def run_level(
    client: httpx.AsyncClient, images: list[bytes], concurrency: int, requests: int, timeout: float
) -> dict[str, Any]:
    """Send ``requests`` receipts with ``concurrency`` workers; latency and error statistics."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lines = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, lines
        while next_index < requests:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/ocr",
                    content=images[i % len(images)],
                    headers={"Content-Type": "image/jpeg"},
                    timeout=timeout,
                )
                status = str(response.status_code)
                if response.status_code == 200:
                    lines += len(response.json()["lines"])
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1

    before = (await client.get("/v1/stats")).json()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    after = (await client.get("/v1/stats")).json()
    errors = {k: v for k, v in statuses.items() if k != "200"}
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": statuses.get("200", 0),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 3),
        "lines_per_s": round(lines / seconds, 1),
        "p50_s": round(_percentile(latencies, 50), 3),
        "p95_s": round(_percentile(latencies, 95), 3),
        "p99_s": round(_percentile(latencies, 99), 3),
        "max_s": round(max(latencies), 3),
        "batches": batch_delta(before, after),
    }


def markdown_table(levels: list[dict[str, Any]]) -> str:
    """The results as the markdown tables of docs/serving.md."""
    rows = [
        "| concurrency | requests | errors | req/s | lines/s | p50 s | p95 s | p99 s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in levels:
        rows.append(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.2f} | "
            f"{r['lines_per_s']:.0f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} |"
        )
    rows += [
        "",
        "| concurrency | deployment.method | batches | mean batch | max batch | histogram (size: batches) |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in levels:
        for name, b in r["batches"].items():
            hist = ", ".join(f"{k}: {v}" for k, v in b["histogram"].items())
            rows.append(
                f"| {r['concurrency']} | {name} | {b['batches']} | {b['mean_batch_size']:.2f} | "
                f"{b['max_batch_size']} | {hist} |"
            )
    return "\n".join(rows)


def _start_service(args: argparse.Namespace) -> tuple[str, bool]:
    """Start the application of ``--config`` on a local Ray; returns (base URL, whether Ray was started)."""
    from ray import serve

    from ocrjobs.config import parse_overrides
    from ocrjobs.raycluster import ensure_ray
    from ocrjobs.serve.app import build_app
    from ocrjobs.serve.cli import local_model_paths
    from ocrjobs.serve.config import read_serve_file

    _, app, config = read_serve_file(args.config, parse_overrides(args.set))
    local_model_paths(config, Path.cwd())
    started = ensure_ray(num_cpus=args.num_cpus, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=app.name, route_prefix="/")
    return f"http://127.0.0.1:{port}", started


async def _run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    images = _images(args.images)
    token = os.environ.get(args.token_env, "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    counts = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    if len(counts) != len(args.concurrency):
        raise SystemExit("give one --requests value, or one per --concurrency level")
    levels = list(zip(args.concurrency, counts, strict=True))
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=args.timeout
    ) as client:
        models = (await client.get("/v1/models")).json()
        if args.warmup:
            await run_level(client, images, 1, args.warmup, args.timeout)
        results = []
        for concurrency, requests in levels:
            result = await run_level(client, images, concurrency, requests, args.timeout)
            print(
                f"c={concurrency}: {result['requests_per_s']:.2f} req/s, p50 {result['p50_s']:.2f} s, "
                f"p99 {result['p99_s']:.2f} s, {result['errors']} errors",
                file=sys.stderr,
            )
            results.append(result)
    return {
        "url": url,
        "images": len(images),
        "cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "models": models,
        "levels": results,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (1 when any request failed)."""
    args = build_parser().parse_args(argv)
    started = False
    url = args.url
    if url is None:
        url, started = _start_service(args)
    try:
        report = asyncio.run(_run(args, url.rstrip("/")))
    finally:
        if args.url is None:
            from ray import serve

            serve.shutdown()
            if started:
                import ray

                ray.shutdown()
    if args.json:  # before printing, so a closed stdout cannot lose the numbers
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown_table(report["levels"]))
    return 1 if any(level["errors"] for level in report["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
