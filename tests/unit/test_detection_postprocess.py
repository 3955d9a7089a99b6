"""DB post-processing on hand-made probability maps: edge cases, scaling, clipping, order, rotation."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from ocrjobs.detection.postprocess import DBPostProcessor
from ocrjobs.geometry import min_area_quad, polygon_area, polygon_iou


def _rotated(cx: float, cy: float, w: float, h: float, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return (local @ np.array([[c, s], [-s, c]]) + [cx, cy]).astype(np.float32)


def test_empty_map_gives_nothing() -> None:
    assert DBPostProcessor()(np.zeros((64, 64), np.float32)) == []
    assert DBPostProcessor()(np.zeros((0, 0), np.float32)) == []


def test_single_pixel_blobs_do_not_crash_and_are_dropped() -> None:
    prob = np.zeros((32, 32), np.float32)
    prob[5, 5] = prob[20, 30] = 1.0
    assert DBPostProcessor()(prob) == []
    assert DBPostProcessor(min_size=0, use_polygon=True)(prob) == []
    assert DBPostProcessor(min_size=0)(prob) == []


def test_low_scoring_regions_are_dropped() -> None:
    prob = np.zeros((64, 64), np.float32)
    prob[10:20, 10:50] = 0.5
    assert DBPostProcessor(box_thresh=0.6)(prob) == []
    [(poly, score)] = DBPostProcessor(box_thresh=0.4)(prob)
    assert score == pytest.approx(0.5) and poly.shape == (4, 2) and poly.dtype == np.float32


def test_scaling_clipping_and_reading_order() -> None:
    prob = np.zeros((100, 200), np.float32)
    prob[60:70, 20:120] = 0.9  # second line
    prob[10:20, 120:190] = 0.9  # first line, right
    prob[10:20, 0:100] = 0.9  # first line, left, touching the border
    found = DBPostProcessor()(prob, scale_x=2.0, scale_y=3.0, orig_w=400, orig_h=300)
    assert len(found) == 3
    centres = [poly.mean(axis=0) for poly, _ in found]
    assert centres[0][0] < centres[1][0] and centres[0][1] < 100 and centres[2][1] > 150
    left = found[0][0]
    assert left[:, 0].min() == 0.0  # unclipped it would reach below x = 0
    assert all(poly[:, 0].max() <= 400 and poly[:, 1].max() <= 300 for poly, _ in found)
    # Scaling is linear: the middle box maps to about x 240..380, y 30..60 in the original image.
    right = found[1][0]
    assert 225 < right[:, 0].min() < 240 and 380 < right[:, 0].max() < 395


def test_rotated_quad_keeps_its_angle() -> None:
    quad = _rotated(150, 100, 160, 30, 25)
    prob = np.zeros((200, 300), np.float32)
    cv2.fillPoly(prob, [np.round(quad).astype(np.int32)], 0.95)
    [(found, score)] = DBPostProcessor()(prob)
    edge = found[1] - found[0]
    assert math.degrees(math.atan2(edge[1], edge[0])) == pytest.approx(25, abs=1.5)
    assert score == pytest.approx(0.95)
    # The unclipped quad contains the region it grew from.
    assert polygon_iou(found, quad) == pytest.approx(polygon_area(quad) / polygon_area(found), abs=0.01)
    np.testing.assert_allclose(min_area_quad(found), found, atol=1e-3)


def test_huge_map_stays_fast() -> None:
    prob = np.zeros((4000, 4000), np.float32)
    for row in range(100, 3900, 60):
        prob[row : row + 20, 200:3800] = 0.9
    start = time.perf_counter()
    found = DBPostProcessor()(prob)
    assert len(found) == len(range(100, 3900, 60))
    assert time.perf_counter() - start < 10.0
    assert [round(float(poly[:, 1].mean())) for poly, _ in found] == sorted(
        round(float(p[:, 1].mean())) for p, _ in found
    )


def test_max_candidates_keeps_the_largest() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:90] = 0.9
    for x in range(5, 95, 10):
        prob[60:66, x : x + 6] = 0.9
    [(poly, _)] = DBPostProcessor(max_candidates=1)(prob)
    assert poly[:, 0].max() - poly[:, 0].min() > 80


def test_polygon_mode_follows_a_curved_region() -> None:
    prob = np.zeros((200, 300), np.float32)
    cv2.ellipse(prob, (150, 150), (120, 100), 0, 200, 340, 0.9, thickness=20)
    [(poly, _)] = DBPostProcessor(use_polygon=True)(prob)
    [(quad, _)] = DBPostProcessor()(prob)
    assert len(poly) > 4 and polygon_area(poly) < 0.8 * polygon_area(quad)


def test_invalid_settings_and_maps() -> None:
    with pytest.raises(ValueError):
        DBPostProcessor(thresh=1.5)
    with pytest.raises(ValueError):
        DBPostProcessor(shrink_ratio=0.0)
    with pytest.raises(ValueError):
        DBPostProcessor()(np.zeros((1, 8, 8), np.float32))
