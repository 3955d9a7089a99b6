"""Serve soak: replica memory (RSS) and latency over a long run of OCR requests at fixed concurrency.

Sends ``--requests`` pages (default 1,000) to ``POST /v1/ocr`` with ``--concurrency`` workers (default
16) that each send their next request as soon as the previous one answers, and every ``--every``
answered requests (default 50) reads the resident memory of every Serve replica process from
``/proc`` (one column per replica, named by its deployment). Memory that keeps growing
after warm-up is a leak or allocator growth; memory that levels off is the working set. The verdict
looks at the second half of the run: each replica's RSS samples there must stay within ``--flat``
(10%: max/min <= 1.10).

Pages are the top ``--lines`` text lines of flat receipts rendered by
:func:`ocrjobs.data.synth.render_document` (``--pages`` different ones, a whole receipt's longer side
``--side`` px, sent as JPEG), so the run needs no data set and 1,000 requests finish in minutes on 2 CPU
cores; ``--images`` sends a folder's files instead. Either starts the service itself (a local Ray with
``--num-cpus`` CPUs, the application of ``--config``, bound to 127.0.0.1; only that Ray's replicas are
sampled) or loads a running one on this machine (``--url``; every replica process on the machine is
sampled then)::

    python benchmarks/serve_soak.py --config configs/serve.yaml --num-cpus 2 --json out/serve_soak.json
    python benchmarks/serve_soak.py --url http://127.0.0.1:8000 --requests 200

Replica processes are found by the title Ray gives actor workers (``ray::ServeReplica:<app>:<deployment>``)
rather than through ``ray.util.state.list_actors``: the state API needs the dashboard, which the local
Ray started here (and by ``ocrjobs serve``) runs without, and RSS has to be read from ``/proc`` anyway.
Linux only. Prints the table of samples and the verdict, writes everything to ``--json``; exits 0
unless the run itself failed (the service did not start, no replica was found, no request succeeded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# Helpers of the load benchmark beside this file (run as a script, its folder is on sys.path).
from serve_load import REPO, _images, _percentile, _start_service, batch_delta

__all__ = [
    "Replica",
    "build_parser",
    "deployment_names",
    "find_replicas",
    "flatness",
    "main",
    "markdown_table",
    "render_pages",
]

_TITLE_PREFIX = "ray::ServeReplica:"


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", help="base URL of a running service on this machine (default: start one)")
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"), help="Serve config to start")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override an app arg")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here")
    p.add_argument("--requests", type=int, default=1000, help="requests to send")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--every", type=int, default=50, help="sample replica memory every this many answers")
    p.add_argument("--flat", type=float, default=0.10, help="max/min - 1 allowed over the second half")
    p.add_argument("--pages", type=int, default=32, help="different rendered receipts to cycle through")
    p.add_argument("--side", type=int, default=512, help="longer side of a whole rendered receipt (px)")
    p.add_argument("--lines", type=int, default=10, help="text lines kept from the top of each receipt")
    p.add_argument("--images", help="send this folder's .jpg/.png files instead of rendered receipts")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as an error")
    p.add_argument("--token-env", default="OCRJOBS_SERVE_TOKEN", help="env var with the bearer token")
    p.add_argument("--json", help="write every sample and the verdict here")
    return p


# ------------------------------------------------------------------------------------ inputs


def render_pages(count: int, side: int, lines: int) -> list[bytes]:
    """The top ``lines`` text lines of ``count`` flat receipts (seeds 0..count-1) rendered with longer
    side ``side``, as JPEG bytes. Receipts differ in width and text, so crop widths vary as in real
    traffic (every new tensor shape is a chance for an allocator or a kernel cache to grow)."""
    from ocrjobs.data.synth import render_document
    from ocrjobs.images import encode_jpeg

    pages = []
    for seed in range(count):
        image, regions = render_document(np.random.default_rng(seed), "receipt", capture=None, max_side=side)
        if len(regions) > lines:  # cut halfway between the last kept line and the next one
            bottom = max(y for _, y in regions[lines - 1].points)
            top = min(y for _, y in regions[lines].points)
            image = image[: round((bottom + top) / 2)]
        pages.append(encode_jpeg(np.ascontiguousarray(image)))
    return pages


# ------------------------------------------------------------------------------------ replica memory


@dataclass(frozen=True)
class Replica:
    """One Serve replica process on this machine.

    Attributes:
        pid: its process id.
        app: the Serve application.
        deployment: its deployment (``OcrApi``, ``Detector``, ``Recognizer_<member>``...).
    """

    pid: int
    app: str
    deployment: str


def _proc_title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode("utf-8", "replace")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])  # after "pid (comm)": state, ppid


def _descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            pid = _parent(pid)
        except OSError:
            return False
    return False


def find_replicas(deployments: Collection[str] = (), root: int | None = None) -> list[Replica]:
    """Serve replica processes on this machine, by their Ray process title, sorted by deployment.

    Args:
        deployments: the application's deployment names. While a replica runs a request its title
            ends in ``.<method>``, and a deployment name may hold dots itself, so a title is matched
            against these names first; one that matches none is cut at its first dot.
        root: only descendants of this process (the local Ray started here runs its raylet, and so its
            workers, below this process: another Serve app on a shared machine is left out).
    """
    known = sorted(deployments, key=len, reverse=True)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = _proc_title(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if title.startswith(_TITLE_PREFIX) and (root is None or _descends_from(int(entry), root)):
            # "ray::ServeReplica:ocr:Detector", "ray::ServeReplica:ocr:OcrApi.handle_request_with_rejection"
            app, _, rest = title[len(_TITLE_PREFIX) :].partition(":")
            name = next((d for d in known if rest == d or rest.startswith(d + ".")), rest.split(".")[0])
            found.append(Replica(int(entry), app, name))
    return sorted(found, key=lambda r: (r.app, r.deployment, r.pid))


def deployment_names(models: dict[str, Any]) -> list[str]:
    """The deployments of the application, from its ``GET /v1/models`` answer."""
    names = ["OcrApi", models["detector"]["deployment"]]
    return names + [m["deployment"] for m in [*models["members"], *models["formulas"]]]


def _memory_mb(pid: int) -> dict[str, float] | None:
    """``{"rss", "anon"}`` of a process in MB (anon: RSS less file-backed pages such as mapped
    weights); ``None`` once it has gone."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon"}
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, *value = line.split()
                if key in fields:
                    out[fields[key]] = round(int(value[0]) / 1024, 1)  # kB
    except OSError:
        return None
    return out


def _label(replicas: list[Replica]) -> dict[int, str]:
    """Column names: the deployment, with ``#pid`` when it has several replicas."""
    counts = Counter(r.deployment for r in replicas)
    return {r.pid: r.deployment if counts[r.deployment] == 1 else f"{r.deployment}#{r.pid}" for r in replicas}


# ------------------------------------------------------------------------------------ the run


class Soak:
    """The request loop and its samples.

    Args:
        client: HTTP client on the service.
        pages: request bodies (JPEG), sent in turn.
        args: the command-line arguments.
    """

    def __init__(self, client: httpx.AsyncClient, pages: list[bytes], args: argparse.Namespace) -> None:
        self.client, self.pages, self.args = client, pages, args
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.labels: dict[int, str] = {}
        self.deployments: list[str] = []
        # A service started here: only its own replicas (see find_replicas).
        self.root = None if args.url else os.getpid()
        self.sent = 0
        self.start = time.perf_counter()

    def sample(self) -> dict[str, Any]:
        """Memory of every replica now, with the latency and errors so far."""
        replicas = find_replicas(self.deployments, self.root)
        self.labels.update(_label(replicas))
        memory = {self.labels[r.pid]: _memory_mb(r.pid) for r in replicas}
        done = len(self.latencies)
        row = {
            "requests": done,
            "seconds": round(time.perf_counter() - self.start, 1),
            "rss_mb": {name: m["rss"] for name, m in memory.items() if m},
            "anon_mb": {name: m.get("anon") for name, m in memory.items() if m},
            "p50_s": round(_percentile(self.latencies, 50), 3) if done else None,
            "p95_s": round(_percentile(self.latencies, 95), 3) if done else None,
            "errors": done - self.statuses.get("200", 0),
        }
        self.samples.append(row)
        return row

    async def _worker(self) -> None:
        while self.sent < self.args.requests:
            body = self.pages[self.sent % len(self.pages)]
            self.sent += 1
            began = time.perf_counter()
            try:
                response = await self.client.post(
                    "/v1/ocr", content=body, headers={"Content-Type": "image/jpeg"}, timeout=self.args.timeout
                )
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.latencies.append(time.perf_counter() - began)
            self.statuses[status] += 1
            if len(self.latencies) % self.args.every == 0 or len(self.latencies) == self.args.requests:
                # /proc reads take milliseconds: sampled inline, the workers keep the load steady.
                row = self.sample()
                print(_progress(row), file=sys.stderr, flush=True)

    async def run(self) -> None:
        """Sample once before the first request, then send them all."""
        self.sample()
        self.start = time.perf_counter()
        await asyncio.gather(*(self._worker() for _ in range(self.args.concurrency)))


def _progress(row: dict[str, Any]) -> str:
    memory = ", ".join(f"{name} {mb:.0f} MB" for name, mb in row["rss_mb"].items())
    return f"{row['requests']} requests ({row['seconds']:.0f} s): {memory}; p50 {row['p50_s']} s, {row['errors']} errors"


def flatness(samples: list[dict[str, Any]], total: int, allowed: float) -> dict[str, dict[str, Any]]:
    """Per replica: RSS max/min over the samples of the second half of the run (``requests >= total/2``).

    A busy replica's RSS also swings with the batch it is running when sampled, so ``trend`` sets the
    median of the window's last third against that of its first third: growth moves it, swings
    within a bounded range do not.

    Returns:
        ``{replica: {"samples", "min_mb", "max_mb", "first_mb", "last_mb", "ratio", "trend", "flat"}}``;
        ``flat`` is ``ratio <= 1 + allowed``; a replica sampled fewer than twice there (restarted,
        or the run was short) is not flat.
    """
    window = [s for s in samples if s["requests"] >= total / 2]
    names = sorted({name for s in window for name in s["rss_mb"]})
    out = {}
    for name in names:
        values = [s["rss_mb"][name] for s in window if name in s["rss_mb"]]
        ratio = max(values) / min(values)
        third = max(1, len(values) // 3)
        trend = float(np.median(values[-third:]) / np.median(values[:third]))
        out[name] = {
            "samples": len(values),
            "min_mb": min(values),
            "max_mb": max(values),
            "first_mb": values[0],
            "last_mb": values[-1],
            "ratio": round(ratio, 4),
            "trend": round(trend, 4),
            "flat": len(values) >= 2 and ratio <= 1 + allowed,
        }
    return out


def markdown_table(samples: list[dict[str, Any]]) -> str:
    """The samples as a markdown table: requests, RSS per replica (MB), p50/p95 so far, errors."""
    names = sorted({name for s in samples for name in s["rss_mb"]})
    rows = [
        "| requests | seconds | " + " | ".join(f"{n} RSS MB" for n in names) + " | p50 s | p95 s | errors |",
        "| ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: | ---: |",
    ]
    for s in samples:
        memory = " | ".join(f"{s['rss_mb'][n]:.0f}" if n in s["rss_mb"] else "-" for n in names)
        p50 = "-" if s["p50_s"] is None else f"{s['p50_s']:.2f}"
        p95 = "-" if s["p95_s"] is None else f"{s['p95_s']:.2f}"
        rows.append(f"| {s['requests']} | {s['seconds']:.0f} | {memory} | {p50} | {p95} | {s['errors']} |")
    return "\n".join(rows)


async def _run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    pages = _images(args.images) if args.images else render_pages(args.pages, args.side, args.lines)
    token = os.environ.get(args.token_env, "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=args.timeout
    ) as client:
        models = (await client.get("/v1/models")).json()
        before = (await client.get("/v1/stats")).json()
        soak = Soak(client, pages, args)
        if not find_replicas(root=soak.root):
            raise SystemExit("no Serve replica process found on this machine (is --url a remote service?)")
        soak.deployments = deployment_names(models)
        await soak.run()
        seconds = time.perf_counter() - soak.start
        after = (await client.get("/v1/stats")).json()
    errors = {k: v for k, v in soak.statuses.items() if k != "200"}
    return {
        "url": url,
        "pages": {"count": len(pages), "side": None if args.images else args.side, "folder": args.images},
        "mean_body_bytes": round(sum(map(len, pages)) / len(pages)),
        "concurrency": args.concurrency,
        "requests": args.requests,
        "ok": soak.statuses.get("200", 0),
        "errors_by_status": errors,
        "seconds": round(seconds, 1),
        "requests_per_s": round(args.requests / seconds, 3),
        "p50_s": round(_percentile(soak.latencies, 50), 3),
        "p95_s": round(_percentile(soak.latencies, 95), 3),
        "cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "models": models,
        "batches": batch_delta(before, after),
        "samples": soak.samples,
        "flat_within": args.flat,
        "second_half": flatness(soak.samples, args.requests, args.flat),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns the exit code (0 unless the run itself failed)."""
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
    print(markdown_table(report["samples"]))
    print()
    print(
        f"{report['requests']} requests at concurrency {report['concurrency']} in {report['seconds']:.0f} s "
        f"({report['requests_per_s']:.2f} req/s), p50 {report['p50_s']:.2f} s, p95 {report['p95_s']:.2f} s, "
        f"errors {report['errors_by_status'] or 0}"
    )
    verdicts = report["second_half"]
    for name, v in verdicts.items():
        print(
            f"{name}: RSS {v['first_mb']:.0f} -> {v['last_mb']:.0f} MB over the second half "
            f"(min {v['min_mb']:.0f}, max {v['max_mb']:.0f}, max/min {v['ratio']:.3f}, "
            f"trend {v['trend']:.3f}): "
            f"{'flat' if v['flat'] else 'NOT flat'}"
        )
    flat = bool(verdicts) and all(v["flat"] for v in verdicts.values())
    print(
        f"verdict: replica RSS {'flat' if flat else 'NOT flat'} within {args.flat:.0%} over the second half"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
