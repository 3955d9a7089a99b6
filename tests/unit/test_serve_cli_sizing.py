"""`ocrjobs serve` sizing itself to the cluster: CPUs/GPUs per deployment from the alive nodes, the
refusal of a deployment no node can host, and the default config it runs without ``--config``
(no Ray is started here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ocrjobs.raycluster import NodeResources
from ocrjobs.serve.cli import add_arguments, default_config_path, unplaceable
from ocrjobs.serve.config import (
    AutoscalingConfig,
    MemberConfig,
    ServeConfig,
    deployment_sections,
    read_serve_file,
    size_to_cluster,
    start_replicas,
)
from tests.conftest import REPO_ROOT


def _node(cpus: float, gpus: float = 0.0, name: str = "n") -> NodeResources:
    return NodeResources(node_id=name, address="127.0.0.1", cpus=cpus, gpus=gpus)


def _reserved(config: ServeConfig, attr: str = "num_cpus") -> float:
    return sum(getattr(s, attr) * start_replicas(s) for _, _, s in deployment_sections(config))


def test_the_built_in_defaults_shrink_to_fit_two_cpus_keeping_their_ratios() -> None:
    config = ServeConfig()  # ingress 0.25 + detector 1 + member 1 = 2.25 CPUs
    sized, notes = size_to_cluster(config, [_node(2.0)])
    assert _reserved(sized) <= 2.0
    assert sized.detector.num_cpus == sized.members[0].num_cpus > 0
    assert sized.ingress.num_cpus == pytest.approx(sized.detector.num_cpus / 4, abs=0.01)
    assert any(n.startswith("Detector.num_cpus: 1 ->") for n in notes)
    assert config.detector.num_cpus == 1.0  # the input is not changed


def test_a_config_that_fits_is_left_alone() -> None:
    file_config = read_serve_file(REPO_ROOT / "configs" / "serve.yaml")[2]
    sized, notes = size_to_cluster(file_config, [_node(2.0)])
    assert notes == [] and sized == file_config
    assert size_to_cluster(ServeConfig(), [_node(16.0)])[1] == []


def test_one_cpu_and_replicas_count() -> None:
    config = ServeConfig(
        members=[MemberConfig(model="models/a", num_replicas=2), MemberConfig(model="models/b")],
        detector={"num_replicas": None, "autoscaling": AutoscalingConfig(min_replicas=1, max_replicas=4)},
    )
    sized, _ = size_to_cluster(config, [_node(1.0)])
    assert _reserved(sized) <= 1.0
    assert sized.members[0].num_cpus == sized.members[1].num_cpus


def test_no_replica_asks_more_than_the_largest_node() -> None:
    # 8 CPUs in all, but no node has more than 2: one replica of 3 CPUs could never be placed.
    config = ServeConfig(detector={"num_cpus": 3.0}, ingress={"num_cpus": 0.25}, members=[{"model": "m"}])
    nodes = [_node(2.0, name=str(i)) for i in range(4)]
    sized, _ = size_to_cluster(config, nodes)
    assert sized.detector.num_cpus == 2.0 and unplaceable(sized, nodes) == []


def test_gpus_are_dropped_without_gpu_nodes_and_scaled_with_them() -> None:
    config = ServeConfig(detector={"num_gpus": 1.0}, members=[{"model": "m", "num_gpus": 1.0}])
    cpu_only, notes = size_to_cluster(config, [_node(8.0)])
    assert cpu_only.detector.num_gpus == 0 and cpu_only.members[0].num_gpus == 0
    assert cpu_only.detector.device == "cpu" and "Detector.num_gpus: 1 -> 0" in notes
    one_gpu, _ = size_to_cluster(config, [_node(8.0, gpus=1.0)])
    assert _reserved(one_gpu, "num_gpus") <= 1.0 and one_gpu.detector.num_gpus > 0


def test_a_head_without_cpus_is_left_to_the_autoscaler() -> None:
    config = ServeConfig()
    assert size_to_cluster(config, [_node(0.0)]) == (config, [])
    assert unplaceable(config, [_node(0.0)]) == []


def test_unplaceable_names_the_deployment_what_it_asks_and_the_nodes() -> None:
    config = ServeConfig(detector={"num_cpus": 64.0}, members=[{"model": "models/crnn_doc", "num_cpus": 0.5}])
    (line,) = unplaceable(config, [_node(2.0)])
    assert "'Detector' (detector) asks 64 CPU per replica x 1 replica" in line
    assert "the largest has 2 CPU and 0 GPU (1 alive node: 2 CPU)" in line


def test_without_config_the_shipped_file_is_found_and_the_start_timeout_has_a_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: found beside the package
    assert default_config_path() == REPO_ROOT / "configs" / "serve.yaml"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert args.config is None and args.start_timeout == 120.0
    assert parser.parse_args(["--start-timeout", "5"]).start_timeout == 5.0
