"""The latex training task without Ray: items from im2latex and synthetic formulas, rows, loss, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ocrjobs.config import ConfigError
from ocrjobs.recognition.latex import LatexTokenizer
from ocrjobs.recognition.predictor import RecognitionPredictor, ctc_batch_width, resize_crop, to_batch
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.data import plan_data, prepare_locally
from ocrjobs.training.latex import FormulaLossConfig, LatexTask
from ocrjobs.training.tasks import TASKS
from ocrjobs.training.trainer import dry_run, worker_config

TINY_SATRN = {
    "dim": 32,
    "heads": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_ff": 64,
    "decoder_ff": 64,
}


def _config(shared_data: Path, **overrides: Any) -> TrainConfig:
    root = str(shared_data / "im2latex")
    raw: dict[str, Any] = {
        "name": "unit-latex",
        "task": "latex",
        "model": {
            "arch": "satrn",
            "arch_kwargs": TINY_SATRN,
            "preprocess": {"height": 32, "width": 128},
            "postprocess": {"max_len": 48},
            "charset": {"name": "latex", "build_from": root},
        },
        "data": {
            "train": {
                "sources": [{"uri": root, "format": "im2latex", "holdout_every": 10}],
                "synthetic": [{"kind": "formulas", "count": 3, "options": {"renderer": "mathtext"}}],
            },
            "val": {"sources": [{"uri": root, "format": "im2latex", "holdout_every": 10, "holdout": True}]},
        },
        "batch_size": 2,
        "checkpoint": {"metric": "val_formula_score", "mode": "max"},
    }
    raw.update(overrides)
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def task_and_plan(shared_data: Path) -> tuple[LatexTask, Any]:
    cfg = _config(shared_data)
    task = TASKS["latex"](cfg)
    assert isinstance(task, LatexTask)
    return task, plan_data(task, cfg)


def test_items_hold_out_validation_and_drop_what_the_model_cannot_emit(
    task_and_plan: tuple[LatexTask, Any],
) -> None:
    task, plan = task_and_plan
    train, val = plan.splits["train"], plan.splits["val"]
    train_uris = {i.payload["uri"] for i in train.items if "uri" in i.payload}
    val_uris = {i.payload["uri"] for i in val.items}
    assert train_uris and val_uris and not train_uris & val_uris
    assert sum("synth" in i.payload for i in train.items) == 3
    texts = [i.payload["text"] for i in [*train.items, *val.items] if "text" in i.payload]
    assert all(len(t.split()) <= 47 and task.tokenizer.can_encode(t) for t in texts)
    # Only the train (fit) formulas may be re-rendered as synthetic samples.
    assert set(task.train_formulas) == {i.payload["text"] for i in train.items if "text" in i.payload}
    assert len(train.records) > 2 * len(train_uris)  # most formulas are longer than 47 tokens


def test_rows_collate_loss_and_validation(task_and_plan: tuple[LatexTask, Any]) -> None:
    task, plan = task_and_plan
    synthetic = [i for i in plan.splits["train"].items if "synth" in i.payload][:1]
    real = [i for i in plan.splits["train"].items if "uri" in i.payload][:3]
    plan.splits["train"].items = synthetic + real
    rows = prepare_locally(task, plan.splits["train"], plan.vocabulary, count=4)
    assert rows["image"].shape == (4, 32, 128, 3) and rows["image"].dtype == np.uint8
    assert all(0 < w <= 128 for w in rows["valid_w"])
    assert all(task.tokenizer.can_encode(str(t)) for t in rows["text"])
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.collate(rows, torch.device("cpu"))
    assert batch["image"].shape == (4, 3, 32, 128)
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and set(parts) == {"ce", "bracket_penalty"}
    assert loss.item() >= 0.8 * parts["ce"] - 1e-5 and 0 <= parts["bracket_penalty"] <= 1
    loss.backward()
    val = prepare_locally(task, plan.splits["val"], (), count=3)
    model.eval()
    with torch.inference_mode():
        metrics = task.validate(model, [val], torch.device("cpu"))
    assert set(metrics) == {
        "val_loss",
        "val_sentence_accuracy",
        "val_token_edit_distance",
        "val_formula_wer",
        "val_bleu4",
        "val_formula_score",
        "val_bracket_penalty",
    }
    assert metrics["val_loss"] > 0 and 0 <= metrics["val_formula_score"] <= 1


def test_collate_pads_like_the_predictor(task_and_plan: tuple[LatexTask, Any]) -> None:
    task, plan = task_and_plan
    rows = prepare_locally(task, plan.splits["val"], (), count=8)
    narrow = [i for i in range(8) if rows["valid_w"][i] <= 112]
    assert narrow, "every formula fills the width: the padding would go untested"
    batch = task.collate({k: v[narrow] for k, v in rows.items()}, torch.device("cpu"))
    crops = [rows["image"][i, :, : rows["valid_w"][i]] for i in narrow]
    # SATRN reads any width: the batch is trimmed to its widest formula, as the predictor batches it.
    assert task.trim
    width = ctc_batch_width(max(int(rows["valid_w"][i]) for i in narrow))
    assert batch["image"].shape[-1] == width < 128
    assert torch.allclose(
        batch["image"], to_batch([resize_crop(c, 32, 128) for c in crops], width), atol=1e-6
    )
    predictor = task.build_predictor(task.build_model())
    (_, predicted), *_ = list(predictor._batches(crops))
    assert predicted.shape[-1] == width


def test_workers_get_the_vocabulary_tokens_not_the_folder_it_was_built_from(
    task_and_plan: tuple[LatexTask, Any],
) -> None:
    task, _ = task_and_plan
    assert "build_from" in (task.cfg.model.charset or {})
    cfg = worker_config(task.cfg, task)
    assert cfg.model.charset == {"name": "latex", "tokens": list(task.vocabulary.tokens)}
    assert TASKS["latex"](cfg).vocabulary == task.vocabulary


def test_greedy_penalty_decode_and_loss_settings(
    task_and_plan: tuple[LatexTask, Any], shared_data: Path
) -> None:
    task, plan = task_and_plan
    greedy = LatexTask(task.cfg, loss=FormulaLossConfig(penalty_decode="greedy", label_smoothing=0.1))
    rows = prepare_locally(greedy, plan.splits["val"], (), count=2)
    model = greedy.build_model().train()
    loss, _ = greedy.loss(model, greedy.collate(rows, torch.device("cpu")))
    assert torch.isfinite(loss) and model.training  # the decode ran in eval mode and switched back
    off = LatexTask(task.cfg, loss=FormulaLossConfig(penalty_weight=0.0))
    assert not off.penalties(model, torch.zeros(2, 3, 32, 128), torch.zeros(2, 4, 5)).any()
    with pytest.raises(ConfigError, match="unknown keys"):
        FormulaLossConfig.from_dict({"weight": 1})
    with pytest.raises(ConfigError, match="label_smoothing"):
        FormulaLossConfig(label_smoothing=1.0)


def test_predictor_and_model_spec(task_and_plan: tuple[LatexTask, Any]) -> None:
    task, _ = task_and_plan
    model = task.build_model()
    predictor = task.build_predictor(model)
    assert isinstance(predictor.tokenizer, LatexTokenizer) and (predictor.height, predictor.width) == (
        32,
        128,
    )
    spec = task.model_spec(model, "satrn_latex", "v1", {"val_formula_score": 0.5})
    assert spec.task == "latex" and spec.name == "satrn_latex" and spec.version == "v1"
    assert spec.charset == task.vocabulary.to_dict() and spec.postprocess["max_len"] == 48
    image = np.full((40, 200, 3), 255, np.uint8)
    assert isinstance(predictor([image])[0].text, str)


def test_config_errors(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="name: latex"):
        _config(shared_data, model={"arch": "satrn", "charset": {"name": "printable"}})
    with pytest.raises(ValueError, match="loss settings are not used by task 'recognition'"):
        _config(shared_data, task="recognition", loss={"penalty_weight": 0.5})
    with pytest.raises(ConfigError, match="unknown keys"):
        LatexTask(_config(shared_data, loss={"penalty_wieght": 0.5}))
    tuned = LatexTask(_config(shared_data, loss={"penalty_weight": 0.0, "label_smoothing": 0.1}))
    assert (tuned.loss_config.penalty_weight, tuned.loss_config.label_smoothing) == (0.0, 0.1)
    ctc = {"arch": "crnn_small", "charset": {"name": "latex", "tokens": ["x", "y"]}}
    with pytest.raises(ConfigError, match="attention model"):
        LatexTask(_config(shared_data, model=ctc))
    cfg = _config(shared_data)
    cfg.data.train.synthetic[0].options = {"train_fractoin": 0.5}
    with pytest.raises(ConfigError, match="train_fractoin"):
        LatexTask(cfg)


def test_dry_run_summarises_without_ray(shared_data: Path) -> None:
    cfg = _config(shared_data)
    cfg.data.train.limit = 4
    text = dry_run(cfg)
    assert "run unit-latex: latex satrn" in text
    assert "prepared row: image uint8[32, 128, 3]" in text


def test_variable_height_rows_collate_and_predictor_batch_alike(shared_data: Path, tmp_path: Path) -> None:
    preprocess = {"height": 32, "width": 128, "max_height": 64, "scale": 0.5}
    cfg = _config(shared_data)
    cfg.model.preprocess = preprocess
    task = LatexTask(cfg)
    plan = plan_data(task, cfg)
    rows = prepare_locally(task, plan.splits["val"], (), count=12)
    # Rows are padded to max_height; valid_h is the predictor's height for each image.
    assert rows["image"].shape == (12, 64, 128, 3)
    heights = sorted(set(int(h) for h in rows["valid_h"]))
    assert len(heights) > 1 and all(h % 8 == 0 and 32 <= h <= 64 for h in heights), heights
    one = [i for i in range(12) if rows["valid_h"][i] == heights[-1]]
    crops = [rows["image"][i, : heights[-1], : rows["valid_w"][i]] for i in one]
    batch = task.collate({k: v[one] for k, v in rows.items()}, torch.device("cpu"))
    width = ctc_batch_width(max(int(rows["valid_w"][i]) for i in one))
    # A batch of one height is cut to it and equals the predictor's batch of the same crops.
    assert batch["image"].shape == (len(one), 3, heights[-1], width)
    assert torch.allclose(batch["image"], to_batch(crops, width), atol=1e-6)
    # A batch of mixed heights is cut to its tallest; shorter rows repeat their last valid row below it.
    mixed = task.collate(rows, torch.device("cpu"))["image"]
    short = int(np.argmin(rows["valid_h"]))
    h = int(rows["valid_h"][short])
    assert mixed.shape[2] == max(heights)
    assert torch.equal(mixed[short, :, h:], mixed[short, :, h - 1 : h].expand_as(mixed[short, :, h:]))
    model = task.build_model()
    loss, _ = task.loss(model, task.collate(rows, torch.device("cpu")))
    assert torch.isfinite(loss)
    # The predictor batches one height at a time, at the heights the rows were made at.
    predictor = task.build_predictor(model)
    images = [np.full((hh, 150, 3), 255, np.uint8) for hh in (40, 90, 100, 300, 60)]
    batches = list(predictor._batches(images))
    assert sorted(b.shape[2] for _, b in batches) == [32, 48, 56, 64]
    assert len(predictor(images)) == 5
    spec = task.model_spec(model, "satrn_latex", "v1", {})
    assert {k: spec.preprocess[k] for k in ("height", "width", "max_height", "scale")} == preprocess
    predictor.save_model_dir(tmp_path / "folder")
    loaded = RecognitionPredictor.from_model_dir(tmp_path / "folder")
    assert (loaded.height, loaded.max_height, loaded.scale) == (32, 64, 0.5)
    # Both settings or neither; only models that read any height.
    for bad in ({"max_height": 64}, {"max_height": 60, "scale": 0.5}, {"max_height": 16, "scale": 0.5}):
        cfg = _config(shared_data)
        cfg.model.preprocess = {"height": 32, "width": 128, **bad}
        with pytest.raises(ConfigError, match="max_height"):
            LatexTask(cfg)
    aster = _config(shared_data)
    aster.model.arch, aster.model.arch_kwargs = "aster", {}
    aster.model.preprocess = preprocess
    with pytest.raises(ConfigError, match="any height"):
        LatexTask(aster)


def test_group_by_width_sorts_variable_heights_first() -> None:
    from ocrjobs.training.loop import group_by_width

    pool = {"valid_h": np.array([64, 32, 64, 32]), "valid_w": np.array([10, 90, 20, 80]), "i": np.arange(4)}
    batches = list(group_by_width([pool], 2, np.random.default_rng(0)))
    assert sorted(tuple(b["i"]) for b in batches) == [(0, 2), (3, 1)]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_training_steps_on_cpu_learn_and_validation_stays_fp32(
    task_and_plan: tuple[LatexTask, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native_bf16: bool,
) -> None:
    from ocrjobs.training import loop

    task, plan = task_and_plan
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native_bf16)
    real = [i for i in plan.splits["train"].items if "uri" in i.payload][:4]
    rows = prepare_locally(
        task, dataclasses.replace(plan.splits["train"], items=real), plan.vocabulary, count=4
    )
    optim = task.cfg.optim.model_copy(update={"lr": 3e-3, "warmup_steps": 0})
    cfg = task.cfg.model_copy(update={"amp_cpu": True, "optim": optim})
    torch.manual_seed(0)
    model = task.build_model()
    worker = loop._WorkerState(task, cfg, model, steps_per_epoch=10, device=torch.device("cpu"))
    assert worker.precision.dtype == (torch.bfloat16 if native_bf16 else None)
    assert native_bf16 or "no native bf16" in caplog.text
    seen: list[torch.dtype] = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    losses = [worker.step(rows)["loss"] for _ in range(20)]
    assert seen[0] == (torch.bfloat16 if native_bf16 else torch.float32)
    assert all(np.isfinite(losses)) and losses[-1] < 0.75 * losses[0]
    # The weights stay fp32; validation runs in fp32 (comparable with fp32 runs' checkpoints).
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()

    class Shard:
        def iter_batches(self, **_: Any) -> list[dict[str, Any]]:
            return [prepare_locally(task, plan.splits["val"], (), count=2)]

    worker.ema = None
    assert worker.validate(Shard())["val_loss"] > 0 and seen and set(seen) == {torch.float32}
