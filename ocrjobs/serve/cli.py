"""Serve the online OCR ensemble over HTTP with Ray Serve (``ocrjobs serve``).

Reads a Ray Serve config file (``configs/serve.yaml``: ``http_options`` + the application whose
``import_path`` is ``ocrjobs.serve.app:build_app``) or a file holding only that application's ``args``,
applies ``--set`` overrides to the args and ``--host``/``--port`` to the HTTP options, and runs the
application built by the same builder ``serve run configs/serve.yaml`` uses. Blocks until Ctrl-C (or
SIGTERM), then removes the application and, if it started Ray itself, shuts Serve and Ray down.

    ocrjobs serve --config configs/serve.yaml
    ocrjobs serve --config configs/serve.yaml --port 8080 --set limits.max_pixels=20000000
    ocrjobs serve --config configs/serve.yaml --check     # validate the config and load every model
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ocrjobs import storage
from ocrjobs.config import ConfigError, parse_overrides
from ocrjobs.raycluster import NodeResources, describe_nodes
from ocrjobs.serve.config import ServeConfig, deployment_sections, size_to_cluster, start_replicas

__all__ = [
    "add_arguments",
    "check_models",
    "default_config_path",
    "local_model_paths",
    "run",
    "unplaceable",
    "wait_until_running",
]

DEFAULT_CONFIG = Path("configs") / "serve.yaml"
# Ctrl-C/SIGTERM to exit: Serve's and Ray's shutdown together get this long, then the process exits anyway.
SHUTDOWN_S = 6.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs serve``."""
    parser.add_argument(
        "--config",
        help="Serve config file or a file of the application's args (default: the shipped "
        "configs/serve.yaml, or the built-in defaults, with CPUs/GPUs sized to the cluster)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the application's args, e.g. members.0.decoder=beam (repeatable)",
    )
    parser.add_argument("--host", help="address to bind (default: http_options.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: http_options.port, 8000)")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="exit with code 2 (naming the deployment, what it asks and what the cluster has) when the "
        "application is not running within this time (default 120)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the config and load every model folder once; start nothing",
    )


def local_model_paths(config: Any, base: Path) -> None:
    """Make relative local model folders absolute against ``base`` (in place).

    Replicas of a local Ray may run in another working directory than the command; ``s3://`` URIs
    and absolute paths are left alone.
    """
    for section in [config.detector, *config.members, *config.formulas]:
        if not storage.is_s3(section.model) and not Path(section.model).is_absolute():
            section.model = str((base / section.model).resolve())


def check_models(config: Any) -> list[str]:
    """Load the detector and every member once, as the replicas will (no Ray).

    Returns:
        One line per model: deployment, model name@version, device.

    Raises:
        FileNotFoundError: a model folder is missing a file.
        ConfigError: a folder holds the wrong kind of model or unknown settings.
    """
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.recognition.ensemble import Member
    from ocrjobs.recognition.predictor import check_model_kind

    detector = DetectionPredictor.from_model_dir(
        config.detector.model, **config.detector.predictor_overrides()
    )
    lines = [f"Detector: {detector.name}@{detector.version} ({config.detector.model})"]
    sections = [("Recognizer", m, "recognition") for m in config.members]
    sections += [("Formula", m, "latex") for m in config.formulas]
    for prefix, m, task in sections:
        member = Member.from_model_dir(m.model, name=m.resolved_name, **m.predictor_overrides())
        check_model_kind(member.predictor, task == "latex", f"{prefix.lower()} entry {m.model}")
        info = member.info()
        lines.append(
            f"{prefix}_{m.resolved_name}: {info['model']}@{info['version']} {info['arch']} "
            f"({info['decoding']}, {info['decoder']}, {info['height']}x{info['width']}, "
            f"{info['charset_size']} chars) ({m.model})"
        )
    return lines


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def default_config_path() -> Path | None:
    """The shipped ``configs/serve.yaml``: in the working directory, else beside the package's checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / DEFAULT_CONFIG).is_file():
            return root / DEFAULT_CONFIG
    return None


def _describe_ask(section: Any) -> str:
    ask = f"{section.num_cpus:g} CPU" + (f" + {section.num_gpus:g} GPU" if section.num_gpus else "")
    replicas = start_replicas(section)
    return f"{ask} per replica x {replicas} replica{'s' if replicas != 1 else ''}"


def unplaceable(config: ServeConfig, nodes: Sequence[NodeResources]) -> list[str]:
    """One line per deployment whose replica no alive node can host (Ray would wait for it forever).

    A resource no node has at all (GPUs before the first GPU node joins) is left to an autoscaler.
    """
    if not nodes:
        return []
    max_cpus = max(n.cpus for n in nodes)
    max_gpus = max(n.gpus for n in nodes)
    lines = []
    for name, field, section in deployment_sections(config):
        if any(n.cpus >= section.num_cpus and n.gpus >= section.num_gpus for n in nodes):
            continue
        if (section.num_gpus > 0 and max_gpus == 0) or (section.num_cpus > 0 and max_cpus == 0):
            continue
        lines.append(
            f"deployment {name!r} ({field}) asks {_describe_ask(section)}, more than any node has: "
            f"the largest has {max_cpus:g} CPU and {max_gpus:g} GPU ({describe_nodes(nodes)})"
        )
    return lines


def _app_states(app_name: str) -> tuple[str, str, dict[str, tuple[str, dict[str, int]]]]:
    """``(application status, its message, {deployment: (status, replica states)})``."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "NOT_STARTED", "", {}
    deployments = {
        name: (
            str(d.status.value),
            {str(k.value if hasattr(k, "value") else k): v for k, v in d.replica_states.items()},
        )
        for name, d in app.deployments.items()
    }
    return str(app.status.value), app.message, deployments


def _summary(deployments: dict[str, tuple[str, dict[str, int]]]) -> str:
    parts = []
    for name, (status, replicas) in deployments.items():
        shown = ", ".join(f"{k} {v}" for k, v in sorted(replicas.items()))
        parts.append(f"{name} {status}" + (f" ({shown})" if shown and status != "HEALTHY" else ""))
    return "; ".join(parts) or "no deployments yet"


def _unplaced_deployments(app_name: str) -> set[str]:
    """Deployments with a replica actor that waits for resources (Serve only says ``STARTING``)."""
    try:
        from ray._private.state import actors  # Ray's actor table (a debugging API, no dashboard needed)

        prefix = f"SERVE_REPLICA::{app_name}#"
        table = actors(actor_state_name="PENDING_CREATION")
        names = [str(a.get("Name", "")) for a in (table.values() if isinstance(table, dict) else table)]
    except Exception:  # an older or newer Ray without it: say "not ready" only
        return set()
    return {n[len(prefix) :].split("#")[0] for n in names if n.startswith(prefix)}


def wait_until_running(app_name: str, config: ServeConfig, timeout_s: float) -> str | None:
    """Poll ``serve.status()`` until the application runs, printing each change of its deployments' states.

    Returns:
        ``None`` once every deployment is healthy, else why not (the deployments not ready, what each asks
        and what the cluster has): the deploy failed, or ``timeout_s`` passed.
    """
    import ray

    from ocrjobs.raycluster import alive_nodes

    start = time.monotonic()
    shown = ""
    status, message = "NOT_STARTED", ""
    deployments: dict[str, tuple[str, dict[str, int]]] = {}
    while time.monotonic() - start < timeout_s:
        status, message, deployments = _app_states(app_name)
        if status == "RUNNING":
            return None
        if status == "DEPLOY_FAILED":
            break
        summary = _summary(deployments)
        if summary != shown:
            print(f"serve: starting ({time.monotonic() - start:.0f} s): {summary}", flush=True)
            shown = summary
        time.sleep(0.5)
    sections = {name: (field, section) for name, field, section in deployment_sections(config)}
    nodes = alive_nodes()
    free = ray.available_resources()
    pending = _unplaced_deployments(app_name)
    lines = []
    for name, (state, replicas) in deployments.items():
        if state == "HEALTHY" or name not in sections:
            continue
        field, section = sections[name]
        placed = "not placed" if name in pending else "not ready (placed, still starting)"
        lines.append(
            f"deployment {name!r} ({field}) {placed}: {state}, replicas "
            f"{dict(sorted(replicas.items()))}, asks {_describe_ask(section)}"
        )
    if not lines:
        lines.append(f"application {app_name!r} {status}")
    why = (
        "deploy failed"
        if status == "DEPLOY_FAILED"
        else f"not running within {timeout_s:g} s (--start-timeout)"
    )
    return (
        f"{why}:\n  "
        + "\n  ".join(lines)
        + f"\n  the cluster has {describe_nodes(nodes)}; free now: {free.get('CPU', 0.0):g} CPU, "
        f"{free.get('GPU', 0.0):g} GPU"
        + (f"\n  Serve says: {message.strip()}" if message.strip() else "")
        + "\n  Lower the deployments' num_cpus/num_gpus (or run without --config to size them from the "
        "cluster), add nodes, or raise --start-timeout if the models only load slowly."
    )


def _stop(started: bool, app_name: str, budget_s: float = SHUTDOWN_S) -> bool:
    """Remove the application (or all of Ray, if this command started it) within ``budget_s``.

    When this command started Ray, ``ray.shutdown`` alone ends the controller, proxies and replicas with
    the node's processes (about 1 s with an application running). ``serve.shutdown`` is not called
    first: it may wait up to 30 s for its controller on a busy machine, and stopping Ray under a thread
    still inside it makes that thread's next call into Ray end the process with exit status 1 (seen in
    CI), losing the exit code that says why serve stopped. The step runs in a daemon thread; returns
    False when it is still running at the end: the caller then exits at once, as a thread left running
    would hold the interpreter's exit.
    """
    import ray
    from ray import serve

    step = threading.Thread(target=ray.shutdown if started else lambda: serve.delete(app_name), daemon=True)
    step.start()
    step.join(budget_s)
    return not step.is_alive()


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs serve``; returns the exit code (0 after a clean Ctrl-C, 2 when it cannot start)."""
    from ocrjobs.serve.config import read_serve_file

    path = args.config
    sized_from_cluster = path is None
    base = Path.cwd()
    if path is None:
        found = default_config_path()
        if found is not None:
            path, base = found, found.parent.parent
    file, app, config = read_serve_file(path, parse_overrides(args.set))
    host = args.host or file.http_options.host
    port = args.port if args.port is not None else file.http_options.port
    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote:
        local_model_paths(config, base)
    if args.check:
        for line in check_models(config):
            print(f"serve: ok {line}")
        print(
            f"serve: config ok; would serve application {app.name!r} on http://{host}:{port}{app.route_prefix}"
        )
        return 0
    if not remote and not _port_free(host, port):
        raise ConfigError(f"cannot bind {host}:{port}: the address is in use (choose another with --port)")

    import ray
    from ray import serve

    from ocrjobs.raycluster import alive_nodes, ensure_ray
    from ocrjobs.serve.app import build_app

    # Both signals stop the service cleanly; SIGINT explicitly too, because a shell starts background
    # jobs with SIGINT ignored and Python then installs no KeyboardInterrupt handler of its own.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = not ray.is_initialized() and not remote  # someone else's cluster: remove only our app
    code = 0
    try:
        ensure_ray()
        for sig in previous:  # ray.init installs SIGTERM handlers of its own: ours come last
            signal.signal(sig, _raise_interrupt)
        nodes = alive_nodes()
        print(f"serve: {path or 'built-in defaults'} on {describe_nodes(nodes)}", flush=True)
        if sized_from_cluster:
            config, notes = size_to_cluster(config, nodes)
            for name, field, section in deployment_sections(config):
                print(f"serve: {name} ({field}): {_describe_ask(section)}", flush=True)
            if notes:
                print(f"serve: sized to the cluster: {', '.join(notes)}", flush=True)
        problems = unplaceable(config, nodes)
        if problems:
            print("ocrjobs serve: cannot start:\n  " + "\n  ".join(problems), file=sys.stderr, flush=True)
            code = 2
            return code
        http_options = {**file.http_options.model_dump(), "host": host, "port": port}
        serve.start(http_options=http_options)
        # serve.run always waits for the application, however long its replicas stay unplaced:
        # deploy without waiting and watch the deployments here instead.
        serve._run(build_app(config), name=app.name, route_prefix=app.route_prefix, _blocking=False)
        why = wait_until_running(app.name, config, args.start_timeout)
        if why is not None:
            print(f"ocrjobs serve: {why}", file=sys.stderr, flush=True)
            code = 2
            return code
        base_url = f"http://{host}:{port}{app.route_prefix.rstrip('/')}"
        print(
            f"serve: application {app.name!r} running at {base_url}/ (API docs: {base_url}/docs); Ctrl-C stops it"
        )
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("serve: stopping", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stopped = _stop(started, app.name) if ray.is_initialized() else True
        if not stopped:
            print(
                f"serve: shutdown did not finish within {SHUTDOWN_S:g} s; exiting anyway",
                file=sys.stderr,
                flush=True,
            )
        if started or not stopped:
            # Ray is down (or hung): the interpreter's own exit (Ray's atexit hooks, leftover threads)
            # took 4 s more on a busy 2-core machine, beyond the 10 s a SIGTERM may take.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code
