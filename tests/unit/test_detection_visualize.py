"""``ocrjobs visualize``: drawing regions, from a JSON document and from a detection model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ocrjobs.cli import main
from ocrjobs.detection.dbnet import build_detector
from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.images import decode_image, encode_png
from ocrjobs.jobs.visualize import draw_regions, parse_regions

RED = np.array([230, 25, 75])


def _is_red(pixels: np.ndarray) -> np.ndarray:
    return np.abs(pixels.astype(int) - RED).sum(axis=-1) < 60


def test_draw_regions_outlines_and_labels() -> None:
    image = np.full((200, 300, 3), 255, np.uint8)
    box = np.array([[50, 80], [250, 80], [250, 120], [50, 120]], np.float32)
    out = draw_regions(image, [box], [0.93], ["Total 12.50"])
    assert out.shape == image.shape and image.min() == 255  # the input is left untouched
    assert _is_red(out[80, 60:240]).all() and _is_red(out[85:115, 250]).all()
    assert not _is_red(out[100, 100])
    assert _is_red(out[60:80, 50:120]).mean() > 0.3  # label background above the box
    with pytest.raises(ValueError):
        draw_regions(image, [box], [0.9, 0.8])


def test_parse_regions_accepts_lists_and_bulk_rows() -> None:
    polygons, scores, texts = parse_regions(
        {"lines": [{"polygon": [0, 0, 10, 0, 10, 5, 0, 5], "det_score": 0.8, "text": "a"}]}
    )
    assert polygons[0].shape == (4, 2) and scores == [0.8] and texts == ["a"]
    polygons, scores, texts = parse_regions([{"polygon": [[0, 0], [4, 0], [4, 4]]}])
    assert polygons[0].shape == (3, 2) and scores == [None] and texts == [None]
    with pytest.raises(ValueError):
        parse_regions([{"polygon": [0, 0, 1, 1]}])
    with pytest.raises(ValueError):
        parse_regions({"images": {}})


def test_cli_draws_regions_from_json(tmp_path: Path) -> None:
    (tmp_path / "page.png").write_bytes(encode_png(np.full((100, 160, 3), 255, np.uint8)))
    regions = [{"polygon": [10, 20, 150, 20, 150, 50, 10, 50], "score": 0.9, "text": "héllo"}]
    (tmp_path / "regions.json").write_text(json.dumps(regions))
    out = tmp_path / "out" / "page_regions.png"
    code = main(
        [
            "visualize",
            "--input",
            str(tmp_path / "page.png"),
            "--regions",
            str(tmp_path / "regions.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    drawn = decode_image(out.read_bytes())
    assert drawn.shape == (100, 160, 3) and _is_red(drawn[20, 20:140]).all()
    (tmp_path / "bad.json").write_text("{not json")
    bad = [
        "visualize",
        "--input",
        str(tmp_path / "page.png"),
        "--regions",
        str(tmp_path / "bad.json"),
        "--out",
        str(out),
    ]
    assert main(bad) == 2


def test_cli_runs_a_detection_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    predictor = DetectionPredictor(build_detector("dbnet_mobilenetv3", neck_channels=16), limit_side=64)
    folder = predictor.save_model_dir(tmp_path / "det_tiny")
    (tmp_path / "page.png").write_bytes(encode_png(np.full((48, 80, 3), 200, np.uint8)))
    out = tmp_path / "page_det.png"
    assert (
        main(["visualize", "--input", str(tmp_path / "page.png"), "--model", folder, "--out", str(out)]) == 0
    )
    assert decode_image(out.read_bytes()).shape == (48, 80, 3)
