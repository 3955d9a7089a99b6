"""Every detection arch: map shapes, finite and decreasing loss, identical outputs after a weights round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from ocrjobs.detection.dbnet import ARCHS, DBNet, DBNetConfig, build_detector
from ocrjobs.detection.loss import DBLoss
from ocrjobs.detection.targets import TARGET_KEYS, build_db_targets

# Tiny models keep all ten archs within a few seconds each on 2 shared CPU cores.
TINY = {"neck_channels": 16}


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


@pytest.fixture(scope="module")
def synthetic_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Two 64x64 white images with black rectangles as text, and their DB targets."""
    layouts = [[_rect(8, 8, 56, 20), _rect(8, 36, 40, 52)], [_rect(12, 10, 50, 26), _rect(20, 40, 60, 56)]]
    images, maps = [], []
    for boxes in layouts:
        image = np.full((64, 64, 3), 255, np.uint8)
        for box in boxes:
            image[int(box[0, 1]) : int(box[2, 1]), int(box[0, 0]) : int(box[2, 0])] = 0
        images.append(image)
        maps.append(build_db_targets(64, 64, boxes))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    targets = {k: torch.from_numpy(np.stack([m[k] for m in maps])) for k in TARGET_KEYS}
    return x, targets


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_output_maps_match_input_size_and_loss_is_finite(arch: str, synthetic_batch) -> None:
    torch.manual_seed(0)
    model = build_detector(arch, **TINY)
    x, targets = synthetic_batch
    out = model(x)
    assert set(out) == {"prob", "thresh", "binary"}
    for name, value in out.items():
        assert value.shape == (2, 1, 64, 64), name
        assert float(value.detach().min()) >= 0.0 and float(value.detach().max()) <= 1.0
    total, parts = DBLoss()(out, targets)
    assert torch.isfinite(total)
    assert set(parts) == {"loss_prob", "loss_thresh", "loss_binary"}
    assert all(torch.isfinite(v) for v in parts.values())
    total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_loss_decreases_on_a_tiny_batch(arch: str, synthetic_batch) -> None:
    torch.manual_seed(0)
    model = build_detector(arch, **TINY).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DBLoss()
    x, targets = synthetic_batch
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss, _ = loss_fn(model(x), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses


@pytest.mark.parametrize("arch", ["dbnet_mobilenetv3", "dbnetpp_resnet18", "dbnetpp_convnext_tiny"])
def test_state_dict_round_trip_gives_identical_outputs(arch: str, synthetic_batch) -> None:
    x, _ = synthetic_batch
    torch.manual_seed(0)
    source = build_detector(arch, **TINY)
    source.train()
    source(x)  # moves the BatchNorm running statistics away from their initial values
    source.eval()
    torch.manual_seed(1)
    restored = build_detector(arch, **TINY).eval()
    restored.load_state_dict(load(save(source.state_dict())))
    with torch.inference_mode():
        expected, actual = source(x), restored(x)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_builders_record_how_to_rebuild_and_reject_bad_configs() -> None:
    model = build_detector("dbnetpp_mobilenetv3", neck_channels=16, k=25.0)
    assert (model.arch, model.arch_kwargs) == ("dbnetpp_mobilenetv3", {"neck_channels": 16, "k": 25.0})
    assert model.config.asf and model.config.k == 25.0
    assert [name for name, _ in model.named_children()] == ["backbone", "neck", "head"]
    assert "head.prob_head.up2.weight" in model.state_dict()
    with pytest.raises(ValueError, match="unknown detection arch"):
        build_detector("dbnet_nope")
    with pytest.raises(TypeError):
        build_detector("dbnet_resnet18", neck_chanels=16)
    with pytest.raises(ValueError, match="reduction"):
        DBNet(DBNetConfig("resnet18", out_indices=(2, 3, 4), neck_channels=16))
    with pytest.raises(ValueError, match="multiple of 4"):
        DBNet(DBNetConfig("resnet18", neck_channels=18))


def test_odd_input_size_still_gives_full_resolution_maps() -> None:
    model = build_detector("dbnet_mobilenetv3", **TINY).eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 50, 70))
    assert all(v.shape == (1, 1, 50, 70) for v in out.values())


def test_loss_ignores_masked_pixels_and_empty_batches() -> None:
    maps = {"prob": torch.full((1, 1, 8, 8), 0.2), "thresh": torch.full((1, 1, 8, 8), 0.5)}
    maps["binary"] = torch.sigmoid(50 * (maps["prob"] - maps["thresh"]))
    empty = {k: torch.zeros(1, 8, 8) for k in TARGET_KEYS}
    total, parts = DBLoss()(maps, empty)
    assert parts["loss_prob"] == 0 and parts["loss_thresh"] == 0 and torch.isfinite(total)
    # Threshold predictions outside thresh_mask do not count.
    targets = {
        "shrink_map": torch.zeros(1, 8, 8),
        "shrink_mask": torch.ones(1, 8, 8),
        "thresh_map": torch.full((1, 8, 8), 0.5),
        "thresh_mask": torch.zeros(1, 8, 8),
    }
    targets["shrink_map"][0, 2:4, 2:6] = 1.0
    targets["thresh_mask"][0, :4] = 1.0
    _, before = DBLoss()(maps, targets)
    corrupted = {k: v.clone() for k, v in maps.items()}
    corrupted["thresh"][0, 0, 4:] = 0.99
    _, after = DBLoss()(corrupted, targets)
    assert torch.equal(before["loss_thresh"], after["loss_thresh"])
