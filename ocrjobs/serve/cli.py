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
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ocrjobs import storage
from ocrjobs.config import ConfigError, parse_overrides

__all__ = ["add_arguments", "check_models", "local_model_paths", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs serve``."""
    parser.add_argument(
        "--config", help="Serve config file (configs/serve.yaml) or a file of the application's args"
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

    overrides: dict[str, Any] = {}
    if config.detector.limit_side is not None:
        overrides["limit_side"] = config.detector.limit_side
    detector = DetectionPredictor.from_model_dir(config.detector.model, **overrides)
    lines = [f"Detector: {detector.name}@{detector.version} ({config.detector.model})"]
    sections = [("Recognizer", m, "recognition") for m in config.members]
    sections += [("Formula", m, "latex") for m in config.formulas]
    for prefix, m, task in sections:
        member = Member.from_model_dir(m.model, name=m.resolved_name, **m.predictor_overrides())
        info = member.info()
        is_latex = info["charset_name"] == "latex"
        if is_latex != (task == "latex"):
            raise ConfigError(
                f"{m.model}: a {'formula' if is_latex else 'text-line'} model cannot be a "
                f"{'formulas' if task == 'latex' else 'members'} entry"
            )
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


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs serve``; returns the exit code (0 after a clean Ctrl-C)."""
    from ocrjobs.serve.config import read_serve_file

    file, app, config = read_serve_file(args.config, parse_overrides(args.set))
    host = args.host or file.http_options.host
    port = args.port if args.port is not None else file.http_options.port
    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote:
        local_model_paths(config, Path.cwd())
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

    from ocrjobs.raycluster import ensure_ray
    from ocrjobs.serve.app import build_app

    started = ensure_ray()
    # Both signals stop the service cleanly; SIGINT explicitly too, because a shell starts background
    # jobs with SIGINT ignored and Python then installs no KeyboardInterrupt handler of its own.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        http_options = {**file.http_options.model_dump(), "host": host, "port": port}
        serve.start(http_options=http_options)
        serve.run(build_app(config), name=app.name, route_prefix=app.route_prefix, blocking=False)
        base = f"http://{host}:{port}{app.route_prefix.rstrip('/')}"
        print(f"serve: application {app.name!r} running at {base}/ (API docs: {base}/docs); Ctrl-C stops it")
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("serve: stopping", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            serve.shutdown()
            ray.shutdown()
        else:  # someone else's cluster: remove only what this command deployed
            serve.delete(app.name)
    return 0
