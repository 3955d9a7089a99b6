"""Polygon geometry: offsets against their formulas, IoU by hand, rectified crops, reading order."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from ocrjobs.geometry import (
    clip_polygon,
    crop_polygon,
    expand_shrunk_polygon,
    min_area_quad,
    order_quad,
    polygon_area,
    polygon_iou,
    polygon_perimeter,
    reading_order,
    shrink_polygon,
    unclip_polygon,
)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def rotated_rect(cx: float, cy: float, w: float, h: float, degrees: float) -> np.ndarray:
    """Corners tl, tr, br, bl of a w x h rectangle turned clockwise on screen by ``degrees``."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return (local @ np.array([[c, s], [-s, c]]) + [cx, cy]).astype(np.float32)


def test_area_and_perimeter() -> None:
    assert polygon_area(rect(0, 0, 10, 4)) == pytest.approx(40.0)
    assert polygon_area(rect(0, 0, 10, 4)[::-1]) == pytest.approx(40.0)  # orientation-free
    assert polygon_perimeter(rect(0, 0, 10, 4)) == pytest.approx(28.0)
    assert polygon_area(np.array([[0, 0], [5, 5]])) == 0.0


@pytest.mark.parametrize(("w", "h", "ratio"), [(100, 20, 0.4), (60, 60, 0.4), (200, 30, 0.6)])
def test_shrink_matches_formula(w: float, h: float, ratio: float) -> None:
    d = w * h * (1 - ratio**2) / (2 * (w + h))
    shrunk = shrink_polygon(rect(10, 10, 10 + w, 10 + h), ratio)
    assert polygon_area(shrunk) == pytest.approx((w - 2 * d) * (h - 2 * d), rel=1e-3)


def test_shrink_vanishing_polygon_is_empty() -> None:
    assert shrink_polygon(np.array([[0, 0], [1, 1]], np.float32), 0.4).shape == (0, 2)


@pytest.mark.parametrize(("w", "h", "ratio"), [(100, 20, 1.5), (40, 40, 2.0)])
def test_unclip_matches_formula(w: float, h: float, ratio: float) -> None:
    d = w * h * ratio / (2 * (w + h))
    grown = unclip_polygon(rect(0, 0, w, h), ratio)
    # Round joins: a rectangle grows by its sides times D plus a disc of radius D at the corners.
    assert polygon_area(grown) == pytest.approx(w * h + 2 * (w + h) * d + math.pi * d * d, rel=5e-3)


@pytest.mark.parametrize(
    "poly", [rect(0, 0, 300, 24), rect(5, 5, 45, 45), rotated_rect(200, 200, 150, 30, 25)]
)
def test_expand_shrunk_inverts_shrink(poly: np.ndarray) -> None:
    restored = expand_shrunk_polygon(shrink_polygon(poly, 0.4), 0.4)
    assert polygon_iou(restored, poly) > 0.99


def test_iou_hand_cases() -> None:
    a = rect(0, 0, 10, 10)
    assert polygon_iou(a, a) == pytest.approx(1.0)
    assert polygon_iou(a, rect(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert polygon_iou(a, rect(20, 20, 30, 30)) == 0.0
    assert polygon_iou(a, rect(2, 2, 4, 4)) == pytest.approx(4 / 100)
    assert polygon_iou(a, np.zeros((0, 2))) == 0.0


def test_order_quad_and_min_area_quad() -> None:
    expected = rect(10, 20, 50, 30)
    shuffled = expected[[2, 0, 3, 1]]
    np.testing.assert_allclose(order_quad(shuffled), expected)
    turned = rotated_rect(100, 100, 80, 20, 30)
    np.testing.assert_allclose(order_quad(turned[[3, 1, 0, 2]]), turned, atol=1e-4)
    points = np.concatenate([turned, turned.mean(axis=0, keepdims=True)])
    np.testing.assert_allclose(min_area_quad(points), turned, atol=1e-2)


def test_clip_polygon() -> None:
    clipped = clip_polygon(rect(-5, -5, 120, 40), 100, 50)
    np.testing.assert_array_equal(clipped, rect(0, 0, 100, 40))


def _two_tone_line_image(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """A 120x40 image region (dark left half, bright right half) rotated by ``angle`` inside a 300x300 image."""
    upright = np.full((300, 300, 3), 128, np.uint8)
    upright[130:170, 90:150] = 20
    upright[130:170, 150:210] = 230
    # OpenCV's positive angle turns counter-clockwise on screen, rotated_rect's clockwise.
    turn = cv2.getRotationMatrix2D((150.0, 150.0), -angle, 1.0)
    image = cv2.warpAffine(upright, turn, (300, 300), flags=cv2.INTER_NEAREST, borderValue=(128, 128, 128))
    return np.asarray(image, dtype=np.uint8), rotated_rect(150, 150, 120, 40, angle)


@pytest.mark.parametrize("angle", [0.0, 30.0, -30.0, 70.0, -70.0])
def test_crop_polygon_rectifies_rotated_text(angle: float) -> None:
    image, quad = _two_tone_line_image(angle)
    # A shuffled corner order and a 5-point polygon must give the same upright crop.
    for poly in (quad[[1, 3, 0, 2]], np.concatenate([quad, quad[:1] * 0.5 + quad[1:2] * 0.5])):
        crop = crop_polygon(image, poly)
        assert abs(crop.shape[1] - 120) <= 1 and abs(crop.shape[0] - 40) <= 1
        left, right = crop[4:-4, 5:55].mean(), crop[4:-4, 65:-5].mean()
        assert left < 40 and right > 210, (angle, left, right)


def test_crop_polygon_fixed_height_and_degenerate() -> None:
    image, quad = _two_tone_line_image(10.0)
    assert crop_polygon(image, quad, height=20).shape == (20, 60, 3)
    assert crop_polygon(image, rect(5, 5, 50, 5.2)).shape == (0, 0, 3)
    with pytest.raises(ValueError):
        crop_polygon(image, np.array([[0, 0], [1, 1]], np.float32))


def test_reading_order_grid() -> None:
    # 2 rows x 3 columns, given in a scrambled order.
    boxes = {
        (r, c): rect(10 + 100 * c, 10 + 50 * r, 90 + 100 * c, 40 + 50 * r) for r in range(2) for c in range(3)
    }
    keys = [(1, 2), (0, 1), (1, 0), (0, 2), (0, 0), (1, 1)]
    order = reading_order([boxes[k] for k in keys])
    assert [keys[i] for i in order] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_reading_order_skewed_lines() -> None:
    # Each line drifts down by 7 px per word (a third of the word height); lines are 40 px apart.
    words = {
        (r, c): rect(10 + 70 * c, 100 + 40 * r + 7 * c, 70 + 70 * c, 120 + 40 * r + 7 * c)
        for r in range(2)
        for c in range(4)
    }
    keys = [(1, 3), (0, 3), (1, 0), (0, 0), (1, 2), (0, 2), (0, 1), (1, 1)]
    order = reading_order([words[k] for k in keys])
    assert [keys[i] for i in order] == [(r, c) for r in range(2) for c in range(4)]
    assert reading_order([]) == []
