"""DetectionPredictor: structure of results, coordinates mapped back to each original image, model folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ocrjobs.config import ConfigError
from ocrjobs.detection.dbnet import build_detector
from ocrjobs.detection.postprocess import DBPostProcessor
from ocrjobs.detection.predictor import DetectedRegion, DetectionPredictor
from ocrjobs.geometry import polygon_iou, shrink_polygon
from ocrjobs.registry import ModelSpec, read_model_dir, write_model_dir


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


class DarkIsText(nn.Module):
    """A stand-in detector whose probability map is 0.95 exactly where the input is dark.

    Padding is 0 after normalisation (mid-grey), white is about +2 and black about -2, so the map is
    a known function of the image and every coordinate transform of the predictor shows in the result.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(tuple(x.shape))
        prob = (x.mean(dim=1, keepdim=True) < -1.0).float() * 0.95
        return {"prob": prob, "thresh": torch.zeros_like(prob), "binary": prob}


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def _page(width: int, height: int, boxes: list[np.ndarray]) -> np.ndarray:
    """A white page with each box's DB kernel painted black (what a perfect model would mark)."""
    import cv2

    page = np.full((height, width, 3), 255, np.uint8)
    for box in boxes:
        cv2.fillPoly(page, [np.round(shrink_polygon(box, 0.4)).astype(np.int32)], (0, 0, 0))
    return page


def test_coordinates_map_back_to_each_original_image() -> None:
    pages = [
        (1000, 600, [_rect(100, 100, 700, 250), _rect(150, 350, 900, 500)]),  # scaled down to 256 x 160
        (200, 120, [_rect(20, 20, 180, 70)]),  # kept at its size, padded in the batch
        (300, 900, [_rect(30, 100, 270, 200)]),  # tall page, scaled down
    ]
    model = DarkIsText()
    predictor = DetectionPredictor(
        model, limit_side=256, batch_size=2, postprocessor=DBPostProcessor(shrink_ratio=0.4, box_thresh=0.5)
    )
    results = predictor([_page(w, h, boxes) for w, h, boxes in pages])
    assert len(results) == 3
    assert len(model.calls) == 2 and all(shape[2] % 32 == 0 and shape[3] % 32 == 0 for shape in model.calls)
    assert max(max(shape[2:]) for shape in model.calls) <= 256
    for (width, height, boxes), regions in zip(pages, results, strict=True):
        assert len(regions) == len(boxes)
        for box, region in zip(boxes, regions, strict=True):  # reading order = top to bottom here
            assert isinstance(region, DetectedRegion)
            assert region.polygon.dtype == np.float32 and region.polygon.shape == (4, 2)
            assert region.score == pytest.approx(0.95, abs=0.02)
            assert polygon_iou(region.polygon, box) > 0.85, (width, height, region.polygon, box)
            assert region.polygon[:, 0].max() <= width and region.polygon[:, 1].max() <= height


def test_random_weight_model_end_to_end() -> None:
    torch.manual_seed(0)
    predictor = DetectionPredictor(
        build_detector("dbnet_mobilenetv3", neck_channels=16), limit_side=96, amp=True
    )
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (70, 150, 3), dtype=np.uint8),
        rng.integers(0, 256, (120, 40, 3), dtype=np.uint8),
    ]
    results = predictor(images)
    assert len(results) == 2
    for image, regions in zip(images, results, strict=True):
        for region in regions:
            assert region.polygon.shape[1] == 2 and 0.0 <= region.score <= 1.0
            assert (
                region.polygon[:, 0].max() <= image.shape[1] and region.polygon[:, 1].max() <= image.shape[0]
            )
    assert predictor([]) == []
    with pytest.raises(ValueError, match="uint8"):
        predictor([np.zeros((10, 10), np.uint8)])


def test_model_dir_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_detector("dbnetpp_mobilenetv3", neck_channels=16)
    model.train()
    model(torch.randn(2, 3, 64, 64))  # non-trivial BatchNorm statistics must travel too
    predictor = DetectionPredictor(
        model, limit_side=128, postprocessor=DBPostProcessor(thresh=0.2, box_thresh=0.1), version="3"
    )
    folder = predictor.save_model_dir(tmp_path / "det_tiny", card="# det_tiny\n")
    assert (tmp_path / "det_tiny" / "CARD.md").read_text() == "# det_tiny\n"
    spec, _ = read_model_dir(folder)
    assert (spec.name, spec.task, spec.arch, spec.version) == (
        "det_tiny",
        "detection",
        "dbnetpp_mobilenetv3",
        "3",
    )
    assert spec.arch_kwargs == {"neck_channels": 16}
    assert spec.preprocess["limit_side"] == 128 and spec.postprocess["thresh"] == 0.2

    loaded = DetectionPredictor.from_model_dir(folder)
    assert (loaded.name, loaded.version, loaded.limit_side) == ("det_tiny", "3", 128)
    assert loaded.postprocessor == predictor.postprocessor
    image = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    with torch.inference_mode():
        x = torch.randn(1, 3, 64, 64)
        assert torch.equal(predictor.model(x)["prob"], loaded.model(x)["prob"])
    expected, actual = predictor([image])[0], loaded([image])[0]
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(a.polygon, b.polygon)

    tuned = DetectionPredictor.from_model_dir(folder, box_thresh=0.5, batch_size=1)
    assert (
        tuned.postprocessor.box_thresh == 0.5 and tuned.batch_size == 1 and tuned.postprocessor.thresh == 0.2
    )


def test_model_dir_errors(tmp_path: Path) -> None:
    model = build_detector("dbnet_mobilenetv3", neck_channels=16)
    weights = model.state_dict()
    write_model_dir(tmp_path / "rec", ModelSpec(name="rec", task="recognition", arch="crnn_small"), weights)
    with pytest.raises(ConfigError, match="not a detection model"):
        DetectionPredictor.from_model_dir(tmp_path / "rec")
    bad = ModelSpec(name="bad", task="detection", arch="dbnet_mobilenetv3", postprocess={"unclip": 2.0})
    write_model_dir(tmp_path / "bad", bad, weights)
    with pytest.raises(ConfigError, match="unclip"):
        DetectionPredictor.from_model_dir(tmp_path / "bad")
    with pytest.raises(ValueError, match="ARCHS"):
        DetectionPredictor(DarkIsText()).to_model_spec("x", "1")
