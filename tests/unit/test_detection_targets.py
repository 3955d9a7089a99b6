"""DB targets: map contents, don't-care handling, and targets -> post-processing recovering the polygons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ocrjobs.detection.postprocess import DBPostProcessor
from ocrjobs.detection.targets import build_db_targets
from ocrjobs.geometry import polygon_iou


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def _rotated(cx: float, cy: float, w: float, h: float, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return (local @ np.array([[c, s], [-s, c]]) + [cx, cy]).astype(np.float32)


def test_maps_have_the_db_structure() -> None:
    box = _rect(20, 20, 120, 40)  # 100 x 20: D = 2000 * 0.84 / 240 = 7
    maps = build_db_targets(64, 160, [box])
    assert all(m.shape == (64, 160) and m.dtype == np.float32 for m in maps.values())
    kernel = np.argwhere(maps["shrink_map"] > 0)
    assert kernel[:, 0].min() == 27 and kernel[:, 0].max() == 33  # rows 20 + 7 .. 40 - 7
    assert kernel[:, 1].min() == 27 and kernel[:, 1].max() == 113
    assert maps["shrink_mask"].min() == 1.0
    thresh, mask = maps["thresh_map"], maps["thresh_mask"]
    assert thresh.min() == pytest.approx(0.3) and thresh.max() == pytest.approx(0.7)
    assert thresh[20, 70] == pytest.approx(0.7)  # on the top edge
    assert thresh[30, 70] == pytest.approx(0.3)  # 10 px from every edge, beyond D
    assert thresh[16, 70] == pytest.approx(0.3 + 0.4 * (1 - 4 / 7), abs=1e-5)  # 4 px outside
    assert mask[14, 70] == 1.0 and mask[10, 70] == 0.0  # dilated by D = 7
    assert mask[5, 5] == 0.0 and thresh[5, 5] == pytest.approx(0.3)


def test_ignored_tiny_and_outside_polygons() -> None:
    keep, dont_care, tiny = _rect(10, 10, 90, 30), _rect(10, 40, 90, 60), _rect(100, 10, 102, 50)
    maps = build_db_targets(64, 128, [keep, dont_care, tiny], ignore=[False, True, False])
    assert maps["shrink_mask"][50, 50] == 0.0 and maps["shrink_map"][50, 50] == 0.0
    assert maps["shrink_mask"][30, 101] == 0.0 and maps["shrink_map"][:, 95:].max() == 0.0
    assert maps["shrink_mask"][20, 50] == 1.0 and maps["shrink_map"][20, 50] == 1.0
    assert maps["thresh_mask"][50, 50] == 0.0  # no threshold supervision on don't-care text
    partly_outside = build_db_targets(32, 32, [_rect(-20, 5, 20, 25)])
    assert partly_outside["shrink_map"].max() == 1.0
    with pytest.raises(ValueError):
        build_db_targets(32, 32, [keep], ignore=[False, True])


@pytest.mark.parametrize("use_polygon", [False, True])
def test_targets_then_postprocessing_recover_the_polygons(use_polygon: bool) -> None:
    polygons = [
        _rect(20, 20, 220, 44),
        _rect(20, 70, 120, 100),
        _rect(250, 20, 300, 60),
        _rotated(200, 200, 180, 36, 20),
        _rotated(80, 220, 90, 30, -35),
    ]
    maps = build_db_targets(300, 320, polygons)
    # The kernel map stands in for a perfect probability map; shrink_ratio inverts the target shrink.
    post = DBPostProcessor(box_thresh=0.5, shrink_ratio=0.4, use_polygon=use_polygon)
    found = post(maps["shrink_map"])
    assert len(found) == len(polygons)
    for expected in polygons:
        best = max(polygon_iou(expected, poly) for poly, _ in found)
        assert best > 0.9, (expected, best)
    assert all(score == pytest.approx(1.0) for _, score in found)


def test_targets_of_many_vertices_stay_fast_and_bounded() -> None:
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([200 + 150 * np.cos(angles), 200 + 150 * np.sin(angles)], axis=1).astype(np.float32)
    maps = build_db_targets(400, 400, [circle])
    assert maps["shrink_map"][200, 200] == 1.0 and maps["thresh_map"][200, 200] == pytest.approx(0.3)
    assert maps["thresh_map"].min() >= 0.3 and maps["thresh_map"].max() <= 0.7 + 1e-6
