"""The cluster manifests and guide of the bulk job stay runnable: every bulk command they show parses
into a valid config, and the manifests hold the resources the guide describes."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from ocrjobs.jobs import bulk
from ocrjobs.jobs.bulk import BulkConfig, resolve_resources

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
_BULK_MODULE = ["python", "-m", "ocrjobs.jobs.bulk"]


def _bulk_config(argv: list[str]) -> BulkConfig:
    """Parse a bulk command's arguments as the job would (``/app/`` and relative configs -> checkout)."""
    parser = argparse.ArgumentParser()
    bulk.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.config:
        args.config = str(REPO / args.config.removeprefix("/app/"))
    return bulk.config_from_args(args)


def _shell_commands(text: str) -> list[list[str]]:
    """Commands of the ```bash blocks of a markdown text (comments dropped, continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _bulk_argv(words: list[str]) -> list[str] | None:
    """The job's arguments when ``words`` runs the bulk job (directly or through ``ray job submit``)."""
    if "--" in words:
        words = words[words.index("--") + 1 :]
    if words[:3] == _BULK_MODULE:
        return words[3:]
    if words[:2] == ["ocrjobs", "bulk"]:
        return words[2:]
    return None


def test_every_bulk_command_in_the_guide_parses_into_a_valid_config() -> None:
    commands = _shell_commands((CLUSTER / "BULK.md").read_text())
    configs = [_bulk_config(argv) for argv in map(_bulk_argv, commands) if argv is not None]
    assert len(configs) >= 4
    for config in configs:
        assert config.input.startswith("s3://") and config.output.startswith("s3://")
    gpu = [c for c in configs if c.detection.num_gpus]
    assert gpu and all(c.detection.max_size == 8 and c.amp for c in gpu)


def test_the_guide_benchmark_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location(
        "bulk_throughput", REPO / "benchmarks" / "bulk_throughput.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bulk_throughput", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    commands = [
        c
        for c in _shell_commands((CLUSTER / "BULK.md").read_text())
        if c[:2] == ["python", "benchmarks/bulk_throughput.py"]
    ]
    assert len(commands) == 1
    args = module.build_parser().parse_args(commands[0][2:])
    assert (args.limit, args.detector, args.recognizer) == (50, "models/dbnet_doc", "models/crnn_en")


def test_rayjob_runs_the_bulk_module_on_gpu_pools() -> None:
    job = yaml.safe_load((CLUSTER / "bulk-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == _BULK_MODULE
    config = _bulk_config(words[3:])
    # The workers autoscale from zero: before any GPU node joins, the pools still plan for GPUs.
    resolved = resolve_resources(config, [])
    for pool in (resolved.detection, resolved.recognition):
        assert (pool.num_gpus, pool.max_size) == (0.5, 8)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers["maxReplicas"] == config.detection.max_size


def test_cluster_launcher_config_and_its_submit_command() -> None:
    text = (CLUSTER / "bulk-cluster.yaml").read_text()
    launcher = yaml.safe_load(text)
    nodes = launcher["available_node_types"]
    assert nodes[launcher["head_node_type"]]["resources"] == {"CPU": 0}
    assert nodes["gpu_worker"]["max_workers"] == launcher["max_workers"] == 8
    assert all(
        "ray start" in " ".join(launcher[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands")
    )
    # The commented usage at the top of the file.
    header = "\n".join(line[2:] for line in text.splitlines() if line.startswith("#   "))
    commands = _shell_commands(f"```bash\n{header}\n```")
    argvs = [argv for argv in map(_bulk_argv, commands) if argv is not None]
    assert len(argvs) == 1
    assert _bulk_config(argvs[0]).recognition.num_gpus == 0.5
