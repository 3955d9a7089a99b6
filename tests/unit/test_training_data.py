"""Data planning (weights, limits, seeds), the CPU row stage and the tasks' batches, without Ray."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from ocrjobs.config import ConfigError
from ocrjobs.data.formats import write_sroie
from ocrjobs.data.records import Record
from ocrjobs.data.synth import DocumentGenerator
from ocrjobs.images import encode_jpeg
from ocrjobs.recognition.predictor import WIDTH_STEP
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.data import plan_data, plan_split, prepare_locally
from ocrjobs.training.loop import group_by_width
from ocrjobs.training.tasks import TASKS
from ocrjobs.training.trainer import dry_run

_PAGES = 3


@pytest.fixture(scope="module")
def sroie_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three rendered receipts written as an SROIE split."""
    root = tmp_path_factory.mktemp("sroie")
    generator = DocumentGenerator(seed=7, capture=None, max_side=400)
    records = []
    for i in range(_PAGES):
        image, regions = generator.sample(i)
        path = root / "img" / f"{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_jpeg(image))
        records.append(Record(str(path), tuple(regions)))
    write_sroie(records, str(root))
    return str(root)


def _config(
    task: str, sroie_dir: str, train: dict | None = None, val: dict | None = None, **top: object
) -> TrainConfig:
    recognition = task == "recognition"
    source = {"uri": sroie_dir, "format": "sroie"}
    raw = {
        "name": "unit",
        "task": task,
        "model": {
            "arch": "crnn_small" if recognition else "dbnet_mobilenetv3",
            "arch_kwargs": {"channels": [8, 8, 8, 8], "hidden": 8} if recognition else {"neck_channels": 16},
            "preprocess": {"height": 32, "width": 96} if recognition else {"limit_side": 128},
            "charset": {"name": "printable"} if recognition else None,
        },
        "data": {
            "train": {"sources": [source], **(train or {})},
            "val": {"sources": [source], "limit": 1} if val is None else val,
            "crop_size": 64,
        },
        "batch_size": 2,
        **top,
    }
    return TrainConfig.model_validate(raw)


def test_weights_repeat_and_subsample_items_reproducibly(sroie_dir: str) -> None:
    cfg = _config(
        "detection", sroie_dir, train={"sources": [{"uri": sroie_dir, "format": "sroie", "weight": 2.5}]}
    )
    task = TASKS["detection"](cfg)
    plan = plan_split(task, cfg, cfg.data.train, "train")
    uris = [item.payload["uri"] for item in plan.items]
    assert len(uris) == 2 * _PAGES + round(0.5 * _PAGES)
    assert all(uris.count(u) >= 2 for u in set(uris))
    again = plan_split(task, cfg, cfg.data.train, "train")
    assert [i.payload for i in again.items] == [i.payload for i in plan.items]


def test_limit_and_synthetic_items(sroie_dir: str) -> None:
    synth = {"synthetic": [{"kind": "lines", "count": 5}]}
    cfg = _config("recognition", sroie_dir, train={**synth, "limit": 4})
    task = TASKS["recognition"](cfg)
    assert len(plan_split(task, cfg, cfg.data.train, "train").items) == 4
    full = _config("recognition", sroie_dir, train=synth)
    plan = plan_split(task, full, full.data.train, "train")
    synthetic = [i.payload for i in plan.items if "synth" in i.payload]
    assert (
        sorted(p["index"] for p in synthetic) == list(range(5)) and len({p["seed"] for p in synthetic}) == 1
    )
    # A page item expands to one row per usable line; the plan counts rows without reading images.
    pages = [i for i in plan.items if "uri" in i.payload]
    assert len(pages) == _PAGES and all(i.rows == len(i.payload["lines"]) > 1 for i in pages)
    assert plan.rows == sum(i.rows for i in plan.items)


def test_plan_errors_name_the_problem(sroie_dir: str) -> None:
    cfg = _config("detection", sroie_dir, batch_size=64)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        plan_data(TASKS["detection"](cfg), cfg)
    cfg = _config("detection", sroie_dir, train={"synthetic": [{"kind": "lines", "count": 2}]})
    with pytest.raises(ConfigError, match=r"synthetic\[0\]\.kind: 'lines' is not a detection generator"):
        plan_data(TASKS["detection"](cfg), cfg)
    cfg = _config("detection", sroie_dir, val={})
    with pytest.raises(ConfigError, match=r"checkpoint\.metric is 'val_loss' but data\.val has no sources"):
        plan_data(TASKS["detection"](cfg), cfg)


def test_vocabulary_comes_from_train_labels_only(sroie_dir: str) -> None:
    cfg = _config("detection", sroie_dir)
    assert plan_data(TASKS["detection"](cfg), cfg).vocabulary == ()
    cfg = _config("detection", sroie_dir, train={"synthetic": [{"kind": "receipt", "count": 1}]})
    plan = plan_data(TASKS["detection"](cfg), cfg)
    words = {w for r in plan.splits["train"].records for t in r.texts for w in t.split()}
    assert plan.vocabulary and set(plan.vocabulary) <= {w.strip("\"'()[]{}<>,.;:!?*") for w in words}


# The latex task has its own version of this test (tests/unit/test_training_latex.py): it needs formula data.
@pytest.mark.parametrize("task_name", ["detection", "recognition"])
def test_rows_collate_and_loss(task_name: str, sroie_dir: str) -> None:
    cfg = _config(task_name, sroie_dir)
    task = TASKS[task_name](cfg)
    plan = plan_data(task, cfg)
    train = prepare_locally(task, plan.splits["train"], plan.vocabulary, count=2)
    val = prepare_locally(task, plan.splits["val"], plan.vocabulary)
    rows = len(train["image"])
    assert rows == sum(i.rows for i in plan.splits["train"].items[:2])
    assert train["image"].dtype == np.uint8 and train["image"].ndim == 4
    model = task.build_model()
    batch = task.collate(train, torch.device("cpu"))
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in parts.values())
    loss.backward()
    model.eval()
    with torch.inference_mode():
        metrics = task.validate(model, [val], torch.device("cpu"))
    assert metrics["val_loss"] > 0 and all(k.startswith("val_") for k in metrics)


def test_detection_rows_keep_ground_truth_for_validation(sroie_dir: str) -> None:
    cfg = _config("detection", sroie_dir)
    task = TASKS["detection"](cfg)
    plan = plan_data(task, cfg)
    val = prepare_locally(task, plan.splits["val"], ())
    assert val["image"].shape[1:] == (128, 128, 3)
    h, w = val["valid_hw"][0]
    assert max(h, w) == 128 and not val["image"][0, h:].any() and not val["image"][0, :, w:].any()
    gt = json.loads(val["gt"][0])
    assert len(gt["polygons"]) == len(gt["ignore"]) > 0
    assert np.asarray(gt["polygons"][0]).max() <= 128


def test_recognition_collate_pads_like_the_predictor(sroie_dir: str) -> None:
    from ocrjobs.recognition.predictor import resize_crop, to_batch

    cfg = _config("recognition", sroie_dir)
    cfg.model.preprocess["width"] = 384  # wider than most lines: the padding is what is compared
    task = TASKS["recognition"](cfg)
    plan = plan_data(task, cfg)
    rows = prepare_locally(task, plan.splits["val"], ())
    narrow = sorted(range(len(rows["text"])), key=lambda i: int(rows["valid_w"][i]))[:3]
    assert rows["valid_w"][narrow[0]] < rows["valid_w"][narrow[-1]] < 368, "the padding would go untested"
    batch = task.collate({k: v[narrow] for k, v in rows.items()}, torch.device("cpu"))
    crops = [rows["image"][i, :, : rows["valid_w"][i]] for i in narrow]
    # CTC batches are trimmed to the widest row rounded up to 16 px, as the predictor batches them.
    width = WIDTH_STEP * math.ceil(max(c.shape[1] for c in crops) / WIDTH_STEP)
    assert width < 384
    expected = to_batch([resize_crop(c, 32, 384) for c in crops], width)
    assert torch.allclose(batch["image"], expected, atol=1e-6)
    assert batch["lengths"].tolist() == [len(str(rows["text"][i])) for i in narrow]


def test_group_by_width_batches_similar_widths_and_keeps_every_row() -> None:
    rng = np.random.default_rng(0)
    widths = rng.integers(8, 768, size=64).astype(np.int32)
    pool = {"valid_w": widths, "text": np.array([f"row{i}" for i in range(64)], dtype=object)}
    batches = list(group_by_width([pool, pool], 16, np.random.default_rng(1)))
    assert len(batches) == 8 and all(len(b["text"]) == 16 for b in batches)
    first_pool = batches[:4]
    assert sorted(t for b in first_pool for t in b["text"]) == sorted(pool["text"])
    for b in first_pool:  # rows stay with their own width
        assert all(pool["valid_w"][int(t[3:])] == w for t, w in zip(b["text"], b["valid_w"], strict=True))
    # Sorted chunks: width ranges of the batches do not overlap, and the order is shuffled.
    spans = sorted((int(b["valid_w"].min()), int(b["valid_w"].max())) for b in first_pool)
    assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(spans))
    orders = [[int(b["valid_w"].min()) for b in batches[i : i + 4]] for i in (0, 4)]
    assert orders[0] != sorted(orders[0]) or orders[1] != sorted(orders[1])
    # A leftover smaller than a batch is dropped.
    short = {k: v[:40] for k, v in pool.items()}
    assert [len(b["text"]) for b in group_by_width([short], 16, np.random.default_rng(2))] == [16, 16]


def test_group_by_width_is_for_recognition_only(sroie_dir: str) -> None:
    assert _config("recognition", sroie_dir).data.group_by_width == 1
    cfg = _config("recognition", sroie_dir)
    raw = cfg.model_dump()
    raw["data"]["group_by_width"] = 8
    assert TrainConfig.model_validate(raw).data.group_by_width == 8
    raw = _config("detection", sroie_dir).model_dump()
    raw["data"]["group_by_width"] = 8
    with pytest.raises(ValueError, match="group_by_width"):
        TrainConfig.model_validate(raw)


def test_dry_run_summarises_without_ray(sroie_dir: str) -> None:
    cfg = _config("recognition", sroie_dir)
    text = dry_run(cfg)
    assert "run unit: recognition crnn_small" in text
    assert "prepared row: image uint8[32, 96, 3]" in text
    assert "loss on one prepared row" in text


def test_holdout_parts_are_disjoint_and_cover_the_source() -> None:
    from ocrjobs.data.records import Record
    from ocrjobs.training.config import DataSource

    records = [Record(f"img/{i:03d}.jpg", ()) for i in reversed(range(25))]
    fit = DataSource(uri="x", format="sroie", holdout_every=12).select(records)
    held = DataSource(uri="x", format="sroie", holdout_every=12, holdout=True).select(records)
    assert [r.uri for r in held] == ["img/011.jpg", "img/023.jpg"]
    assert len(fit) == 23 and not {r.uri for r in fit} & {r.uri for r in held}
    assert DataSource(uri="x", format="sroie").select(records) == records
