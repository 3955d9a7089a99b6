"""Bulk job without Ray: sharding and naming, resume scanning, row collection, resources and config."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from ocrjobs import cli
from ocrjobs.config import ConfigError, load_config
from ocrjobs.jobs import bulk
from ocrjobs.jobs.bulk import (
    BulkConfig,
    PoolConfig,
    ShardCollector,
    check_fits,
    plan_shards,
    resolve_resources,
)
from ocrjobs.jobs.bulk_udfs import RESULT_SCHEMA
from ocrjobs.raycluster import NodeResources, alive_nodes

REPO = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"^part-(\d{6})-[0-9a-f]{8}$")


def _uris(n: int) -> list[str]:
    return [f"s3://bucket/scans/{i:04d}.jpg" for i in range(n)]


# ------------------------------------------------------------------------------------------- sharding


def test_plan_is_sorted_deduplicated_and_sliced() -> None:
    uris = _uris(25)
    shuffled = [*uris, uris[3], uris[7]]
    random.Random(0).shuffle(shuffled)
    plan = plan_shards(shuffled, 10)
    assert [len(s.uris) for s in plan] == [10, 10, 5]
    assert [u for s in plan for u in s.uris] == uris
    for k, shard in enumerate(plan):
        assert shard.index == k
        assert shard.uris == tuple(uris[k * 10 : (k + 1) * 10])
        match = NAME_RE.match(shard.name)
        assert match and int(match.group(1)) == k


def test_names_are_stable_and_change_only_with_their_inputs() -> None:
    uris = _uris(25)
    names = [s.name for s in plan_shards(uris, 10, "ocr\ndet@1\nrec@1")]
    assert names == [s.name for s in plan_shards(list(reversed(uris)), 10, "ocr\ndet@1\nrec@1")]
    # One more input sorting last changes only the last shard.
    grown = [s.name for s in plan_shards([*uris, "s3://bucket/scans/9999.jpg"], 10, "ocr\ndet@1\nrec@1")]
    assert grown[:2] == names[:2] and grown[2] != names[2]
    # An input replaced in the middle changes that shard only.
    replaced = [*uris[:12], "s3://bucket/scans/0012b.jpg", *uris[13:]]
    changed = [s.name for s in plan_shards(replaced, 10, "ocr\ndet@1\nrec@1")]
    assert changed[0] == names[0] and changed[1] != names[1] and changed[2] == names[2]
    # Another model version renames every shard: results of the old model are never reused.
    assert not set(names) & {s.name for s in plan_shards(uris, 10, "ocr\ndet@2\nrec@1")}


def test_plan_of_nothing_and_bad_size() -> None:
    assert plan_shards([], 5) == []
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(_uris(3), 0)


def test_scan_output_finds_part_files_by_shard(tmp_path: Path) -> None:
    name = bulk.shard_name(1, ["a"])
    (tmp_path / "parquet").mkdir()
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "parquet" / f"{name}.parquet").write_bytes(b"x")
    (tmp_path / "jsonl" / f"{name}.jsonl").write_text("{}\n")
    (tmp_path / "jsonl" / "part-000002-0123abcd.jsonl").write_text("{}\n")  # exports without Parquet
    (tmp_path / "parquet" / f".{name}.parquet.1a2b.tmp").write_bytes(b"")  # an interrupted write
    (tmp_path / "parquet" / "notes.parquet").write_bytes(b"x")
    (tmp_path / "parquet" / "part-000003-0123abcd.jsonl").write_bytes(b"x")  # wrong folder for its kind
    found = bulk.scan_output(str(tmp_path))
    assert found == {
        name: {
            "parquet": str(tmp_path / "parquet" / f"{name}.parquet"),
            "jsonl": str(tmp_path / "jsonl" / f"{name}.jsonl"),
        },
        "part-000002-0123abcd": {"jsonl": str(tmp_path / "jsonl" / "part-000002-0123abcd.jsonl")},
    }
    assert bulk.scan_output(str(tmp_path / "nothing-here")) == {}


def test_stale_shards_are_deleted_or_refused(tmp_path: Path) -> None:
    stale = tmp_path / "parquet" / "part-000004-0123abcd.parquet"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    found = bulk.scan_output(str(tmp_path))
    with pytest.raises(ConfigError, match="earlier job"):
        bulk._remove_stale(BulkConfig(input="in", output=str(tmp_path), stale_shards="error"), found)
    assert stale.exists()
    assert bulk._remove_stale(BulkConfig(input="in", output=str(tmp_path)), found) == 1
    assert not stale.exists()


# ----------------------------------------------------------------------------------------- collecting


def result_rows(shard: int, positions: list[int], uris: tuple[str, ...]) -> pa.Table:
    """Recognised rows (empty texts) of ``positions`` of a shard, in the bulk job's result schema."""
    n = len(positions)
    return pa.Table.from_pydict(
        {
            "uri": [uris[p] for p in positions],
            "shard": [shard] * n,
            "position": positions,
            "page": [1] * n,
            "pages": [1] * n,
            "width": [10] * n,
            "height": [20] * n,
            "error": [None] * n,
            "error_detail": [None] * n,
            "lines": [[] for _ in range(n)],
            "text": [""] * n,
            "t_read": [0.0] * n,
            "t_decode": [0.0] * n,
            "t_detect": [0.0] * n,
            "t_recognize": [0.0] * n,
        },
        schema=RESULT_SCHEMA,
    )


def test_collector_releases_each_shard_once_complete_and_in_order() -> None:
    plan = plan_shards(_uris(8), 4)
    a, b = plan
    collector = ShardCollector(plan)
    assert (
        collector.add(pa.concat_tables([result_rows(0, [3, 1], a.uris), result_rows(1, [2], b.uris)])) == []
    )
    done = collector.add(pa.concat_tables([result_rows(1, [0, 1], b.uris), result_rows(0, [0, 2], a.uris)]))
    assert [(s.name, t.column("position").to_pylist()) for s, t in done] == [(a.name, [0, 1, 2, 3])]
    assert done[0][1].column("uri").to_pylist() == list(a.uris)
    assert collector.unfinished() == [b]
    with pytest.raises(RuntimeError, match="already wrote"):
        collector.add(result_rows(0, [0], a.uris))


def test_collector_refuses_a_shard_with_a_duplicate_row() -> None:
    (shard,) = plan_shards(_uris(3), 3)
    collector = ShardCollector([shard])
    with pytest.raises(RuntimeError, match="not written"):
        collector.add(result_rows(0, [0, 1, 1], shard.uris))


# ------------------------------------------------------------------------------------------ resources


def _config(**fields: object) -> BulkConfig:
    return BulkConfig(input="in", output="out", **fields)  # type: ignore[arg-type]


def _nodes(*sizes: float | tuple[float, float]) -> list[NodeResources]:
    """Alive nodes of these CPUs (or (CPUs, GPUs))."""
    out = []
    for k, size in enumerate(sizes):
        cpus, gpus = size if isinstance(size, tuple) else (size, 0.0)
        out.append(NodeResources(node_id=f"n{k}", address="10.0.0.1", cpus=cpus, gpus=gpus))
    return out


def _reserved_cpus(config: BulkConfig) -> float:
    pools = (config.detection, config.recognition)
    return config.decode.num_cpus + sum(p.max_size * p.num_cpus for p in pools)  # type: ignore[operator]


def test_two_cpus_get_fractional_stages_that_fit_together() -> None:
    config = resolve_resources(_config(), _nodes(2))
    assert config.decode.num_cpus == 0.25
    for pool in (config.detection, config.recognition):
        assert (pool.min_size, pool.max_size, pool.num_gpus) == (1, 1, 0.0)
        assert pool.num_cpus == 0.75
    # A decode task and both pools fit in 2 CPUs at once: the read stage never starves the actors.
    assert _reserved_cpus(config) <= 2.0
    assert bulk._stage_device(config, config.detection) == "cpu"


def test_many_cpus_split_between_pools_within_the_cluster() -> None:
    config = resolve_resources(_config(), _nodes(64))
    assert config.detection.max_size > config.recognition.max_size >= 1
    assert _reserved_cpus(config) <= 64.0


def test_gpus_put_both_model_stages_on_gpus() -> None:
    config = resolve_resources(_config(), _nodes((32, 4)))
    for pool in (config.detection, config.recognition):
        assert (pool.num_gpus, pool.max_size) == (0.5, 4)
        assert bulk._stage_device(config, pool) == "cuda"
    cpu_only = resolve_resources(_config(device="cpu"), _nodes((32, 4)))
    assert cpu_only.detection.num_gpus == 0.0 and bulk._stage_device(cpu_only, cpu_only.detection) == "cpu"


def test_explicit_resource_fields_are_kept() -> None:
    config = resolve_resources(
        _config(detection=PoolConfig(min_size=3, batch_size=2), decode={"num_cpus": 0.5}), _nodes(2)
    )
    assert (config.detection.min_size, config.detection.max_size, config.detection.batch_size) == (3, 3, 2)
    assert config.decode.num_cpus == 0.5


def test_gpu_pools_asked_for_before_gpu_nodes_join_get_gpu_defaults() -> None:
    # An autoscaling cluster may start with CPU nodes only: explicit GPU pools are kept, not demoted.
    config = resolve_resources(_config(detection=PoolConfig(num_gpus=1, max_size=8)), _nodes(4))
    assert (config.detection.num_gpus, config.detection.max_size, config.detection.batch_size) == (1, 8, 16)
    assert config.recognition.num_gpus == 0.5
    assert bulk._stage_device(config, config.recognition) == "cuda"
    assert resolve_resources(_config(device="cuda"), _nodes(8)).detection.num_gpus == 0.5


def test_one_cpu_nodes_get_actors_one_node_can_host() -> None:
    # Sized from the totals (3 CPUs), the actors asked 1.25 CPU, which no 1-CPU node can host: no row
    # was ever produced. Sized per node, each node hosts a decode task and one actor of each pool.
    nodes = _nodes(1, 1, 1)
    config = resolve_resources(_config(), nodes)
    assert config.decode.num_cpus == 0.25
    for pool in (config.detection, config.recognition):
        assert (pool.num_cpus, pool.min_size, pool.max_size) == (0.25, 1, 3)
    check_fits(config, nodes)
    per_node = config.decode.num_cpus + config.detection.num_cpus + config.recognition.num_cpus  # type: ignore[operator]
    assert per_node <= 1.0


def test_mixed_nodes_size_actors_from_the_largest_and_count_them_per_node() -> None:
    # A 2-CPU node among 1-CPU ones: actors of 0.75 CPU fit only there, so the pools stay at one actor.
    config = resolve_resources(_config(), _nodes(1, 2, 1))
    assert (config.detection.num_cpus, config.detection.max_size, config.recognition.max_size) == (0.75, 1, 1)
    # Big nodes: 2-CPU actors, as many as each node holds beside its decode share.
    nodes = _nodes(8, 8, 1)
    config = resolve_resources(_config(), nodes)
    assert (config.decode.num_cpus, config.detection.num_cpus) == (1.0, 2.0)
    assert (config.detection.max_size, config.recognition.max_size) == (3, 2)  # 2 * 3 actors, 60% detecting
    check_fits(config, nodes)
    # GPU nodes: the actors' CPUs come from the GPU node, not from a large CPU-only node beside it.
    config = resolve_resources(_config(), _nodes(64, (2, 1)))
    assert (config.detection.num_gpus, config.detection.max_size, config.detection.num_cpus) == (0.5, 1, 0.5)
    assert config.decode.num_cpus == 0.5


def test_a_stage_larger_than_every_node_is_refused_naming_it() -> None:
    nodes = _nodes(1, 1, 1)
    config = resolve_resources(_config(recognition=PoolConfig(num_cpus=1.25)), nodes)
    with pytest.raises(ConfigError) as error:
        check_fits(config, nodes)
    message = str(error.value)
    assert "recognition asks 1.25 CPU per actor" in message
    assert "the largest has 1 CPU and 0 GPU" in message and "3 alive nodes" in message
    assert "recognition.num_cpus" in message
    gpu = resolve_resources(_config(detection=PoolConfig(num_gpus=2)), _nodes((8, 1)))
    with pytest.raises(ConfigError, match=r"detection asks 1 CPU \+ 2 GPU per actor"):
        check_fits(gpu, _nodes((8, 1)))
    # task: recognize has no detection stage: its settings are not checked.
    check_fits(resolve_resources(_config(task="recognize", detection=PoolConfig(num_cpus=9)), nodes), nodes)


def test_resources_no_node_has_yet_are_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    # An autoscaling cluster before its first GPU worker joins (a head without CPUs, or CPU nodes only).
    for nodes in ([], _nodes(0), _nodes(4)):
        config = resolve_resources(_config(device="cuda"), nodes)
        check_fits(config, nodes)
    assert "waiting for the autoscaler" in caplog.text


def test_alive_nodes_reads_ray_nodes_entries() -> None:
    entries = [
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 1.0}},
        {"NodeID": "b", "Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 64.0}},
        {
            "NodeID": "c",
            "Alive": True,
            "NodeManagerAddress": "10.0.0.3",
            "Resources": {"CPU": 8.0, "GPU": 1.0},
        },
    ]
    assert alive_nodes(entries) == [
        NodeResources("c", "10.0.0.3", 8.0, 1.0),
        NodeResources("a", "10.0.0.1", 1.0, 0.0),
    ]


def test_gpus_with_device_cpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="contradicts"):
        resolve_resources(_config(device="cpu", recognition=PoolConfig(num_gpus=1)), _nodes((8, 1)))


# ---------------------------------------------------------------------------------------------- config


def _field_paths(model: type, prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            out += _field_paths(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_field_is_documented_in_configs_bulk_yaml() -> None:
    text = (REPO / "configs" / "bulk.yaml").read_text()
    data = yaml.safe_load(text)
    for path in _field_paths(BulkConfig):
        node = data
        *sections, leaf = path.split(".")
        for section in sections:
            node = node[section]
        if path in ("input", "output"):  # required: documented in comments, given as flags
            assert re.search(rf"^#\s+{leaf}:", text, re.M), path
        else:
            assert leaf in node, f"{path} is missing from configs/bulk.yaml"
    config = load_config(
        REPO / "configs" / "bulk.yaml", BulkConfig, {"input": "s3://b/in", "output": "s3://b/out"}
    )
    assert config == BulkConfig(input="s3://b/in", output="s3://b/out")


def test_demo_config_loads() -> None:
    config = load_config(REPO / "configs" / "demo.yaml", BulkConfig)
    assert config.input == "samples/receipts" and config.exports.jsonl and config.exports.hocr
    assert len(list((REPO / config.input).glob("*.jpg"))) >= 5


def test_formats_flag_replaces_the_exports() -> None:
    base = ["bulk", "--input", "s3://b/in", "--output", "s3://b/out", "--set", "exports.hocr=true"]
    args = cli.build_parser().parse_args([*base, "--formats", "parquet, JSONL,alto,pdf"])
    config = bulk.config_from_args(args)
    assert config.exports.wanted() == ["jsonl", "alto", "pdf"]  # hocr from --set is replaced
    assert (
        bulk.config_from_args(cli.build_parser().parse_args([*base, "--formats", "parquet"])).exports.wanted()
        == []
    )
    with pytest.raises(ConfigError, match="unknown format docx"):
        bulk.config_from_args(cli.build_parser().parse_args([*base, "--formats", "jsonl,docx"]))


def test_max_pixels_default_matches_the_decoder() -> None:
    from ocrjobs.images import DEFAULT_MAX_PIXELS

    assert bulk.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


def test_cli_flags_and_set_build_the_config() -> None:
    argv = [
        "bulk",
        "--input",
        "s3://b/in",
        "--output",
        "s3://b/out",
        "--task",
        "recognize",
        "--shard-size",
        "50",
    ]
    args = cli.build_parser().parse_args(
        [*argv, "--set", "detection.max_size=3", "--set", "exports.jsonl=true"]
    )
    config = bulk.config_from_args(args)
    assert (config.task, config.shard_size, config.detection.max_size, config.exports.jsonl) == (
        "recognize",
        50,
        3,
        True,
    )
    missing = cli.build_parser().parse_args(["bulk", "--input", "x"])
    with pytest.raises(ConfigError, match="output"):
        bulk.config_from_args(missing)


def test_model_id_names_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"detection model folder not found: .*nope"):
        bulk.model_id(str(tmp_path / "nope"), "detection")
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "config.yaml").write_text(
        "name: r\ntask: recognition\narch: crnn_small\nversion: '3'\n"
    )
    assert bulk.model_id(str(tmp_path / "rec"), "recognition") == "r@3"
    with pytest.raises(ConfigError, match="recognition model, the bulk job needs a detection"):
        bulk.model_id(str(tmp_path / "rec"), "detection")


def test_bulk_and_demo_fail_before_ray_on_missing_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Unit tests forbid ray.init: reaching it would raise instead of the clear message.
    missing = str(tmp_path / "models" / "absent")
    args = ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--detector", missing]
    assert bulk.main(args) == 2
    assert f"detection model folder not found: {missing}" in capsys.readouterr().err
    assert cli.main(["demo", "--output", str(tmp_path / "out"), "--set", f"detector={missing}"]) == 2
    assert f"detection model folder not found: {missing}" in capsys.readouterr().err


def test_bulk_reports_inputs_that_match_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for kind, task in (("det", "detection"), ("rec", "recognition")):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "config.yaml").write_text(f"name: {kind}\ntask: {task}\narch: a\n")
    args = ["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "out")]
    assert bulk.main([*args, "--detector", str(tmp_path / "det"), "--recognizer", str(tmp_path / "rec")]) == 2
    assert f"no inputs matched {tmp_path / 'nothing'}" in capsys.readouterr().err
