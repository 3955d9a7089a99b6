"""The training config: shipped recipes load, bad fields are named, CLI flags override the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ocrjobs.cli import main
from ocrjobs.config import ConfigError, load_config
from ocrjobs.jobs.train import add_arguments, command_line, load_train_config
from ocrjobs.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("train_*.yaml"))

_MINIMAL = """\
name: tiny
task: detection
model: {arch: dbnet_mobilenetv3}
data:
  train:
    synthetic: [{kind: receipt, count: 4}]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(recipe: Path) -> None:
    cfg = load_config(recipe, TrainConfig)
    assert cfg.data.train.sources or cfg.data.train.synthetic
    assert cfg.checkpoint.metric.startswith("val_")


def test_recipes_exist_for_both_shipped_models() -> None:
    assert {p.name for p in RECIPES} >= {"train_crnn.yaml", "train_dbnet.yaml"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("epoch: 3\n", "epoch"),
        ("optim: {lrr: 0.1}\n", "optim.lrr"),
        ("scaling: {num_worker: 2}\n", "scaling.num_worker"),
    ],
)
def test_misspelled_field_is_named(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"field '{field}': unknown field"):
        load_config(_write(tmp_path, _MINIMAL + extra), TrainConfig)


def test_wrong_value_names_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'optim.schedule'"):
        load_config(_write(tmp_path, _MINIMAL + "optim: {schedule: linear}\n"), TrainConfig)


def test_recognition_needs_a_charset(tmp_path: Path) -> None:
    text = _MINIMAL.replace("task: detection", "task: recognition").replace("kind: receipt", "kind: lines")
    with pytest.raises(ConfigError, match=r"model\.charset is required"):
        load_config(_write(tmp_path, text), TrainConfig)


def test_training_needs_data(tmp_path: Path) -> None:
    text = "name: tiny\ntask: detection\nmodel: {arch: dbnet_mobilenetv3}\ndata: {train: {}}\n"
    with pytest.raises(ConfigError, match="at least one source or synthetic"):
        load_config(_write(tmp_path, text), TrainConfig)


def test_cli_reports_bad_field_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _MINIMAL + "batchsize: 4\n")
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "batchsize" in err and str(path) in err


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_file_and_set(tmp_path: Path) -> None:
    path = _write(tmp_path, _MINIMAL + "epochs: 5\n")
    args = _args(
        [
            "--config",
            str(path),
            "--set",
            "epochs=7",
            "--set",
            "optim.lr=0.01",
            "--workers",
            "3",
            "--name",
            "other",
        ]
    )
    cfg = load_train_config(args)
    assert (cfg.epochs, cfg.optim.lr, cfg.scaling.num_workers, cfg.name) == (7, 0.01, 3, "other")
    assert load_train_config(_args(["--config", str(path), "--set", "epochs=7", "--epochs", "9"])).epochs == 9


def test_command_line_reproduces_the_flags(tmp_path: Path) -> None:
    path = _write(tmp_path, _MINIMAL)
    argv = ["--config", str(path), "--set", "optim.lr=0.01", "--storage-path", "s3://b/runs", "--epochs", "2"]
    line = command_line(_args(argv))
    assert line == f"ocrjobs train --config {path} --set optim.lr=0.01 --storage-path s3://b/runs --epochs 2"
    assert load_train_config(_args(line.split()[2:])) == load_train_config(_args(argv))


def test_run_folder_is_under_storage_path(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _MINIMAL), TrainConfig, {"storage_path": "s3://bucket/runs/"})
    assert cfg.run_uri() == "s3://bucket/runs/tiny"


def test_run_name_cannot_escape_the_storage_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'name'"):
        load_config(_write(tmp_path, _MINIMAL), TrainConfig, {"name": "../other"})


def _documented_commands() -> list[list[str]]:
    """``ocrjobs.jobs.train`` command lines of the cluster manifests and guide (``/app`` -> this checkout)."""
    import shlex

    import yaml

    rayjob = yaml.safe_load((REPO / "cluster" / "train-rayjob.yaml").read_text())
    commands = [rayjob["spec"]["entrypoint"]]
    header = (REPO / "cluster" / "train-cluster.yaml").read_text().split("\ncluster_name:")[0]
    launcher = " ".join(line.lstrip("# ").rstrip("\\") for line in header.splitlines())
    commands.append(
        "python -m ocrjobs.jobs.train"
        + launcher.split("python -m ocrjobs.jobs.train")[1].split(" ray down")[0]
    )
    return [shlex.split(command.replace("/app/", f"{REPO}/")) for command in commands]


@pytest.mark.parametrize("argv", _documented_commands(), ids=["rayjob", "cluster-launcher"])
def test_cluster_commands_give_valid_configs(argv: list[str]) -> None:
    assert argv[:3] == ["python", "-m", "ocrjobs.jobs.train"]
    args = _args(argv[3:])
    args.config = str(REPO / args.config) if not Path(args.config).is_absolute() else args.config
    cfg = load_train_config(args)
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers == 4
    assert cfg.storage_path.startswith("s3://") and (cfg.export_to or "").startswith("s3://")
    assert all(source.uri.startswith(("s3://", "../")) for source in cfg.data.train.sources)
