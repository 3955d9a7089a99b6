"""Run folders without Ray: metrics.csv, checkpoint discovery, and export of a checkpoint to a model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ocrjobs import storage
from ocrjobs.config import ConfigError
from ocrjobs.training.checkpoint import (
    CONFIG_FILE,
    RESUME_FILE,
    STATE_FILE,
    best_checkpoint,
    checkpoint_dir_name,
    latest_state,
    list_checkpoints,
    model_weights,
    read_resume_point,
    resolve_checkpoint,
    write_checkpoint,
    write_resume_point,
)
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.progress import MetricsLog, format_epoch_line, summary_table
from ocrjobs.training.tasks import TASKS

_CONFIG = {
    "name": "unit-run",
    "task": "recognition",
    "model": {
        "arch": "crnn_small",
        "arch_kwargs": {"channels": [8, 8, 8, 8], "hidden": 8},
        "preprocess": {"height": 32, "width": 64},
        "charset": {"chars": "0123456789abc"},
    },
    "data": {
        "train": {"synthetic": [{"kind": "lines", "count": 8}]},
        "val": {"synthetic": [{"kind": "lines", "count": 2}]},
    },
    "optim": {"ema_decay": 0.9},
    "checkpoint": {"metric": "val_cer", "mode": "min"},
}


def test_metrics_log_appends_replaces_and_truncates(tmp_path: Path) -> None:
    log = MetricsLog(str(tmp_path / "run"))
    assert log.read() == []
    for epoch, loss in ((1, 2.0), (2, 1.5), (3, 1.2)):
        log.append({"epoch": epoch, "step": 10 * epoch, "train_loss": loss, "val_cer": loss / 4})
    log.append({"epoch": 2, "step": 20, "train_loss": 1.4, "val_cer": 0.3})
    assert [(r["epoch"], r["train_loss"]) for r in log.read()] == [(1.0, 2.0), (3.0, 1.2), (2.0, 1.4)]
    log.truncate_after(2)
    assert [r["epoch"] for r in log.read()] == [1.0, 2.0]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,step,train_loss,val_cer"


def test_progress_line_and_summary_table() -> None:
    metrics = {
        "epoch": 3,
        "step": 30,
        "train_loss": 0.41234,
        "val_cer": 0.081,
        "samples_per_s": 31.25,
        "elapsed_s": 95.4,
    }
    line = format_epoch_line(metrics, epochs=10)
    assert line.startswith("epoch 3/10  train_loss 0.4123  val_cer 0.081")
    assert line.endswith("31.2 samples/s  elapsed 95 s")
    table = summary_table([metrics, {**metrics, "epoch": 4}]).splitlines()
    assert table[0].split("|")[1].strip() == "epoch" and len(table) == 4
    assert summary_table([]) == "(no epochs recorded)"


def _fake_run(root: Path, cfg: TrainConfig, scores: list[float]) -> str:
    run = storage.join(str(root), cfg.name)
    storage.write_text(storage.join(run, CONFIG_FILE), "name: ignored-by-listing\n")
    for epoch, score in enumerate(scores, start=1):
        folder = root / cfg.name / checkpoint_dir_name(epoch)
        folder.mkdir(parents=True)
        write_checkpoint(str(folder), {"epoch": epoch, "step": 5 * epoch}, cfg, {"val_cer": score})
    (root / cfg.name / "epoch_0099").mkdir()  # an interrupted upload: no files, never listed
    return run


def test_best_and_latest_checkpoints(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(_CONFIG)
    run = _fake_run(tmp_path, cfg, [0.5, 0.2, 0.3])
    assert [c.epoch for c in list_checkpoints(run)] == [1, 2, 3]
    assert best_checkpoint(run, "val_cer", "min").epoch == 2
    assert best_checkpoint(run, "val_cer", "max").epoch == 1
    with pytest.raises(ValueError, match="reports 'val_hmean'"):
        best_checkpoint(run, "val_hmean", "max")
    assert best_checkpoint(str(tmp_path / "empty"), "val_cer", "min") is None


def test_resolve_takes_a_checkpoint_or_a_run_folder(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(_CONFIG)
    run = _fake_run(tmp_path, cfg, [0.5, 0.2, 0.3])
    storage.write_text(
        storage.join(run, CONFIG_FILE), (tmp_path / cfg.name / "epoch_0001" / CONFIG_FILE).read_text()
    )
    assert resolve_checkpoint(run).epoch == 2  # the run's own metric and mode
    assert resolve_checkpoint(storage.join(run, "epoch_0003")).epoch == 3
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        resolve_checkpoint(str(tmp_path))


def test_export_writes_a_model_folder_the_predictor_loads(tmp_path: Path) -> None:
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.training.export import export_checkpoint

    cfg = TrainConfig.model_validate(_CONFIG)
    task = TASKS["recognition"](cfg)
    model, ema_model = task.build_model(), task.build_model()
    folder = tmp_path / "run" / "epoch_0004"
    folder.mkdir(parents=True)
    state = {
        "model": model.state_dict(),
        "ema": {"module": ema_model.state_dict(), "updates": 3},
        "epoch": 4,
        "step": 40,
    }
    write_checkpoint(str(folder), state, cfg, {"val_cer": 0.25, "train_loss": 1.0})
    (tmp_path / "run" / "command.txt").write_text("ocrjobs train --config configs/x.yaml\n")

    result = export_checkpoint(str(folder), str(tmp_path / "models" / "crnn_unit"))
    assert result.spec.name == "crnn_unit" and result.spec.version == "unit-run-epoch4"
    assert result.spec.metrics == {"val_cer": 0.25}
    predictor = RecognitionPredictor.from_model_dir(tmp_path / "models" / "crnn_unit")
    # The EMA weights are the exported ones.
    exported = predictor.model.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in model_weights(state).items())
    reference = task.build_predictor(ema_model.eval())
    crops = [
        np.random.default_rng(i).integers(0, 255, (20, 50 + 10 * i, 3), dtype=np.uint8) for i in range(3)
    ]
    # The folder's predictor runs on ONNX Runtime ("auto" on CPU), the reference on PyTorch: the same
    # texts, scores equal to float rounding (exact equality failed 1 run in 3 on random weights).
    read, expected = predictor(crops), reference(crops)
    assert [r.text for r in read] == [r.text for r in expected]
    assert [r.score for r in read] == pytest.approx([r.score for r in expected], rel=1e-4)
    card = (tmp_path / "models" / "crnn_unit" / "CARD.md").read_text()
    assert "ocrjobs train --config configs/x.yaml" in card
    assert "epochs: 4 of 10" in card and "synthetic `lines` x 8" in card and "| val_cer | 0.2500 |" in card

    # Inference settings may differ from training's; the card says so, and nothing else may change.
    wide = export_checkpoint(
        str(folder), str(tmp_path / "models" / "wide"), overrides={"preprocess.width": 512}
    )
    assert wide.spec.preprocess["width"] == 512 and RecognitionPredictor.from_model_dir(wide.out).width == 512
    assert (
        "`preprocess.width`: 64 at training -> 512" in (tmp_path / "models" / "wide" / "CARD.md").read_text()
    )
    with pytest.raises(ConfigError, match="only preprocess"):
        export_checkpoint(str(folder), str(tmp_path / "models" / "bad"), overrides={"arch": "aster"})


def test_exported_detector_matches_checkpoint_model(tmp_path: Path) -> None:
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.training.export import export_checkpoint

    cfg = TrainConfig.model_validate(
        {
            "name": "det-unit",
            "task": "detection",
            "model": {
                "arch": "dbnet_mobilenetv3",
                "arch_kwargs": {"neck_channels": 16},
                "preprocess": {"limit_side": 96},
                "postprocess": {"thresh": 0.05, "box_thresh": 0.05},
            },
            "data": {"train": {"synthetic": [{"kind": "receipt", "count": 2}]}},
            "checkpoint": {"metric": "train_loss"},
        }
    )
    task = TASKS["detection"](cfg)
    model = task.build_model().eval()
    folder = tmp_path / "run" / "epoch_0001"
    folder.mkdir(parents=True)
    write_checkpoint(
        str(folder), {"model": model.state_dict(), "epoch": 1, "step": 3}, cfg, {"train_loss": 2.0}
    )

    result = export_checkpoint(str(folder), str(tmp_path / "models" / "dbnet_unit"))
    assert result.checkpoint.epoch == 1 and result.spec.metrics == {}
    assert result.spec.preprocess["limit_side"] == 96 and result.spec.postprocess["box_thresh"] == 0.05
    # Exact equality is a property of the weights: compare on the same backend as the reference.
    exported = DetectionPredictor.from_model_dir(tmp_path / "models" / "dbnet_unit", backend="torch")
    reference = task.build_predictor(model)
    images = [
        np.random.default_rng(i).integers(0, 255, (80 + 16 * i, 120, 3), dtype=np.uint8) for i in range(2)
    ]
    got, want = exported(images), reference(images)
    assert sum(len(regions) for regions in want) > 0  # low thresholds: the random model finds regions
    for got_regions, want_regions in zip(got, want, strict=True):
        assert [r.score for r in got_regions] == [r.score for r in want_regions]
        assert all(
            np.array_equal(a.polygon, b.polygon) for a, b in zip(got_regions, want_regions, strict=True)
        )
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(exported.model(x)["prob"], model(x)["prob"])
    assert (
        "No validation split was configured" in (tmp_path / "models" / "dbnet_unit" / "CARD.md").read_text()
    )


def test_latest_state_takes_the_newest_checkpoint_that_loads(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate(_CONFIG)
    run = _fake_run(tmp_path, cfg, [0.5, 0.2, 0.3])
    info, state = latest_state(run)
    assert (info.epoch, state["epoch"]) == (3, 3)
    # An upload cut short: the newest state.pt is truncated, so the one before is taken.
    newest = tmp_path / cfg.name / checkpoint_dir_name(3) / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:10])
    info, state = latest_state(run)
    assert (info.epoch, state["step"]) == (2, 10)
    assert latest_state(run, newer_than=2) is None
    assert latest_state(str(tmp_path / "empty")) is None


def test_a_restart_resumes_from_storage_when_ray_registered_an_older_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race behind the flaky worker-kill test: rank 0 persisted epoch 2, then a worker died before the
    Train controller registered it, so ``ray.train.get_checkpoint()`` still hands back epoch 1."""
    import ray.train

    from ocrjobs.training.loop import _resume_state

    cfg = TrainConfig.model_validate({**_CONFIG, "storage_path": str(tmp_path)})
    run = _fake_run(tmp_path, cfg, [0.5, 0.2])
    registered = ray.train.Checkpoint.from_directory(str(tmp_path / cfg.name / checkpoint_dir_name(1)))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: registered)
    assert list_checkpoints(run)[-1].epoch == 2
    assert _resume_state(cfg, 5, 1)["epoch"] == 2
    # Nothing newer in storage: Ray's checkpoint is used as it is.
    monkeypatch.setattr(
        ray.train,
        "get_checkpoint",
        lambda: ray.train.Checkpoint.from_directory(str(tmp_path / cfg.name / checkpoint_dir_name(2))),
    )
    assert _resume_state(cfg, 5, 1)["epoch"] == 2
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert _resume_state(cfg.model_copy(update={"name": "fresh"}), 5, 1) is None


def _point(epoch: int, batches: int, steps_per_epoch: int = 5, world: int = 1) -> dict:
    return {
        "epoch": epoch,
        "batches": batches,
        "steps_per_epoch": steps_per_epoch,
        "world": world,
        "sums": {"loss": 1.5},
    }


def test_resume_point_continues_only_the_epoch_after_the_last_checkpoint(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    assert read_resume_point(run, 0, 5, 1) is None  # none written yet
    write_resume_point(run, {"epoch": 1, "step": 8, "model": {"w": torch.ones(2)}}, _point(2, 3))
    state = read_resume_point(run, 1, 5, 1)
    assert state is not None and (state["epoch"], state["step"], state["in_epoch"]["batches"]) == (1, 8, 3)
    assert torch.equal(state["model"]["w"], torch.ones(2))
    # Stale once epoch 2 is checkpointed; never for an epoch further on than the next.
    assert read_resume_point(run, 2, 5, 1) is None
    assert read_resume_point(run, 0, 5, 1) is None
    # Batch counts of another geometry (a re-run with other --workers) are not comparable.
    assert read_resume_point(run, 1, 5, 2) is None
    assert read_resume_point(run, 1, 10, 1) is None
    # Replaced whole by the next point.
    write_resume_point(run, {"epoch": 1, "step": 9}, _point(2, 4))
    assert read_resume_point(run, 1, 5, 1)["in_epoch"]["batches"] == 4
    # A point at the epoch's end (or before any batch) is no point: the epoch checkpoint covers it.
    write_resume_point(run, {"epoch": 1, "step": 10}, _point(2, 5))
    assert read_resume_point(run, 1, 5, 1) is None
    # A truncated file is passed over, not an error.
    (tmp_path / "run" / RESUME_FILE).write_bytes(b"PK\x03\x04 cut short")
    assert read_resume_point(run, 1, 5, 1) is None


def test_a_restart_takes_the_resume_point_after_the_newest_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.train

    from ocrjobs.training.loop import _resume_state

    cfg = TrainConfig.model_validate(
        {
            **_CONFIG,
            "storage_path": str(tmp_path),
            "checkpoint": {**_CONFIG["checkpoint"], "every_minutes": 5},
        }
    )
    run = _fake_run(tmp_path, cfg, [0.5, 0.2])
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    write_resume_point(run, {"epoch": 2, "step": 13}, _point(3, 3))
    state = _resume_state(cfg, 5, 1)
    assert (state["epoch"], state["step"], state["in_epoch"]["batches"]) == (2, 13, 3)
    # Without every_minutes the point is not looked for: the epoch checkpoint as before.
    plain = cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"every_minutes": None})})
    assert "in_epoch" not in _resume_state(plain, 5, 1)
    # A point from an epoch already checkpointed is stale.
    write_resume_point(run, {"epoch": 1, "step": 7}, _point(2, 2))
    assert "in_epoch" not in _resume_state(cfg, 5, 1)


def test_cards_show_local_paths_below_the_working_directory_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocrjobs.training.export import _shown

    monkeypatch.chdir(tmp_path)
    assert _shown(str(tmp_path / "runs" / "r3" / "epoch_0004")) == "runs/r3/epoch_0004"
    assert _shown("/elsewhere/models/x") == "/elsewhere/models/x"
    assert _shown("s3://bucket/runs/r3") == "s3://bucket/runs/r3"
    assert _shown("models/x") == "models/x"


def _agree_worker(rank: int, port: int, wheres: list[tuple[int, int, int]], out: str) -> None:
    import torch.distributed as dist

    from ocrjobs.training.loop import _check_ranks_agree

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cfg = TrainConfig.model_validate(_CONFIG)
    try:
        _check_ranks_agree(cfg, wheres[rank], torch.device("cpu"))
        result = "ok"
    except RuntimeError as exc:
        result = str(exc)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}").write_text(result)


@pytest.mark.parametrize("second", [(2, 3, 13), (2, 0, 10)])
def test_ranks_that_would_resume_from_different_points_fail_the_attempt(
    tmp_path: Path, second: tuple[int, int, int]
) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wheres = [(2, 3, 13), second]
    mp.spawn(_agree_worker, args=(port, wheres, str(tmp_path)), nprocs=2, join=True)
    results = [(tmp_path / f"rank{r}").read_text() for r in range(2)]
    if second == wheres[0]:
        assert results == ["ok", "ok"]
    else:  # every rank fails, not only the odd one out
        assert all("resume from different points" in r for r in results)
        assert "(2, 0, 10) and (2, 3, 13)" in results[0]


def test_local_paths_become_absolute_for_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ocrjobs.training.trainer import absolute_local_paths

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig.model_validate({**_CONFIG, "storage_path": "runs"})
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": "models/x"})})
    out = absolute_local_paths(cfg)
    assert (out.storage_path, out.model.init_from) == (str(tmp_path / "runs"), str(tmp_path / "models" / "x"))
    assert absolute_local_paths(
        cfg.model_copy(update={"storage_path": f"file://{tmp_path}/r"})
    ).storage_path == str(tmp_path / "r")
    s3 = cfg.model_copy(update={"storage_path": "s3://bucket/runs"})
    assert absolute_local_paths(s3).storage_path == "s3://bucket/runs"


def _write_run(root: Path, name: str, cfg_dict: dict, seed: int) -> tuple[Path, dict]:
    """A run folder with one checkpoint of a freshly initialised model (seeded) and its command."""
    torch.manual_seed(seed)
    cfg = TrainConfig.model_validate({**cfg_dict, "name": name, "seed": seed})
    task = TASKS[cfg.task](cfg)
    model, ema_model = task.build_model(), task.build_model()
    folder = root / name / "epoch_0001"
    folder.mkdir(parents=True)
    state = {"model": model.state_dict(), "ema": {"module": ema_model.state_dict(), "updates": 3}}
    write_checkpoint(str(folder), {**state, "epoch": 1, "step": 10}, cfg, {"val_cer": 0.5 + seed / 100})
    (root / name / "command.txt").write_text(f"ocrjobs train --name {name}\n")
    return folder, model_weights(state)


def test_export_averages_the_weights_of_several_checkpoints(tmp_path: Path) -> None:
    from ocrjobs.cli import main
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.training.export import average_state_dicts, export_weight_average

    a, weights_a = _write_run(tmp_path / "runs", "run-a", _CONFIG, seed=1)
    b, weights_b = _write_run(tmp_path / "runs", "run-b", _CONFIG, seed=2)
    out = tmp_path / "models" / "crnn_avg"
    result = export_weight_average([str(a), str(b)], str(out))
    assert result.spec.version == "avg(run-a-epoch1+run-b-epoch1)" and result.spec.metrics == {}

    exported = RecognitionPredictor.from_model_dir(out, backend="torch").model.state_dict()
    floats = [k for k, v in weights_a.items() if v.is_floating_point()]
    assert floats and not torch.equal(weights_a[floats[0]], weights_b[floats[0]])
    for key in floats:  # each weight is the mean of the two EMA weights (not the raw model weights)
        assert torch.allclose(exported[key], (weights_a[key] + weights_b[key]) / 2, atol=1e-6)
    card = (out / "CARD.md").read_text()
    assert "## Weight average" in card and "ocrjobs train --name run-b" in card and "seed 2" in card
    assert "not validated by a training run" in card and "No validation split" not in card
    assert "exported from the average of 2 ingredients" in card

    # A model folder (here the average just written) joins a later average as it is, after a checkpoint:
    # the parent folder of sibling runs, whose own source checkpoints may be gone.
    soup = tmp_path / "models" / "soup"
    nested = export_weight_average([str(a), str(out)], str(soup))
    assert nested.spec.version.startswith("avg(run-a-epoch1+crnn_avg#")
    nested_weights = RecognitionPredictor.from_model_dir(soup, backend="torch").model.state_dict()
    for key in floats:  # (a + (a + b) / 2) / 2
        assert torch.allclose(nested_weights[key], (3 * weights_a[key] + weights_b[key]) / 4, atol=1e-6)
    soup_card = (soup / "CARD.md").read_text()
    assert f"the model folder `{out}`" in soup_card and "avg(run-a-epoch1+run-b-epoch1)" in soup_card
    with pytest.raises(ConfigError, match="first --checkpoint must be a training checkpoint"):
        export_weight_average([str(out), str(a)], str(tmp_path / "models" / "folder-first"))

    # The CLI takes --checkpoint twice.
    cli_out = tmp_path / "models" / "crnn_cli"
    assert main(["export", "--checkpoint", str(a), "--checkpoint", str(b), "--out", str(cli_out)]) == 0
    again = RecognitionPredictor.from_model_dir(cli_out, backend="torch").model.state_dict()
    assert all(torch.equal(again[k], exported[k]) for k in floats)

    # Integer buffers are taken from the first; one state dict or different architectures are refused.
    counters = average_state_dicts(
        [{"n": torch.tensor(3), "w": torch.ones(2)}, {"n": torch.tensor(5), "w": torch.zeros(2)}]
    )
    assert counters["n"].item() == 3 and counters["w"].tolist() == [0.5, 0.5]
    with pytest.raises(ConfigError, match="at least two"):
        export_weight_average([str(a)], str(tmp_path / "models" / "one"))
    with pytest.raises(ConfigError, match="shape of w"):
        average_state_dicts([{"w": torch.ones(2)}, {"w": torch.ones(3)}])
    wider = {
        **_CONFIG,
        "model": {**_CONFIG["model"], "arch_kwargs": {"channels": [8, 8, 8, 8], "hidden": 16}},
    }
    c, _ = _write_run(tmp_path / "runs", "run-c", wider, seed=3)
    with pytest.raises(ConfigError, match="arch_kwargs differ"):
        export_weight_average([str(a), str(c)], str(tmp_path / "models" / "mixed"))
    with pytest.raises(ConfigError, match="arch_kwargs differ"):
        export_weight_average([str(c), str(out)], str(tmp_path / "models" / "mixed"))
    assert not (tmp_path / "models" / "mixed").exists()
