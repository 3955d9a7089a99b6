"""Augmentations: shapes, determinism, and polygons that follow the pixels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest

from ocrjobs.data import augment as A

# Distinct saturated colours: after a transform each polygon is found again by its colour.
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 20), (200, 20, 200), (20, 190, 190)]


def _scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 300x400 white image with six filled polygons (axis-aligned, rotated, a triangle) of known colours."""
    polys = [
        np.array([[20, 20], [180, 20], [180, 60], [20, 60]], np.float32),
        np.array([[230, 30], [380, 50], [372, 100], [222, 80]], np.float32),
        np.array([[40, 120], [150, 110], [160, 170], [50, 180]], np.float32),
        np.array([[220, 150], [370, 140], [300, 260]], np.float32),
        np.array([[30, 220], [190, 210.5], [191.5, 270], [31, 280]], np.float32),
        np.array([[330.5, 270.5], [390, 270.5], [390, 292], [330.5, 292]], np.float32),
    ]
    image = np.full((300, 400, 3), 255, np.uint8)
    for poly, colour in zip(polys, COLOURS, strict=True):
        cv2.fillPoly(image, [_fixed(poly)], colour, lineType=cv2.LINE_8, shift=4)
    return image, polys


def _fixed(poly: np.ndarray) -> np.ndarray:
    # Continuous coordinates put pixel centres at +0.5; cv2 puts them at integers (4 fractional bits).
    return np.round((poly - 0.5) * 16).astype(np.int32)


def _poly_mask(poly: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fixed(poly)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _colour_mask(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(image.astype(np.int32) - colour).sum(axis=-1) < 120


def _ious(image: np.ndarray, polys: list[np.ndarray]) -> list[float]:
    """IoU of each polygon with its colour's pixels; a dropped (empty) polygon scores 1 if its colour is gone."""
    out = []
    for poly, colour in zip(polys, COLOURS, strict=True):
        b = _colour_mask(image, colour)
        if len(poly) == 0:
            out.append(1.0 if b.sum() < 10 else 0.0)
            continue
        a = _poly_mask(poly, image.shape)
        out.append(float((a & b).sum() / max(1, (a | b).sum())))
    return out


def test_scene_masks_match_their_polygons() -> None:
    # Guards the test itself: the mask convention must agree with the drawing convention.
    image, polys = _scene()
    assert min(_ious(image, polys)) > 0.97


GEOMETRIC: dict[str, Callable[[np.ndarray, list[np.ndarray], np.random.Generator], tuple]] = {
    "rotate": lambda im, ps, rng: A.random_rotate(im, ps, 30.0, rng),
    "scale": lambda im, ps, rng: A.random_scale(im, ps, (0.5, 1.8), rng, aspect_jitter=0.3),
    "perspective": lambda im, ps, rng: A.random_perspective(im, ps, 0.15, rng),
    "crop": lambda im, ps, rng: A.random_crop_keep_text(im, ps, 500, 450, rng),
    "quarter_turn": lambda im, ps, rng: A.quarter_turn(im, ps, clockwise=bool(rng.integers(2))),
    "augmenter_turned": lambda im, ps, rng: dataclasses.replace(
        A.DETECTION_PRESET,
        crop_size=(400, 480),
        quarter_turn_p=1.0,
        color_p=0.0,
        lighting_p=0.0,
        thermal_p=0.0,
        jpeg_p=0.0,
    )(im, ps, rng),
    "augmenter": lambda im, ps, rng: dataclasses.replace(
        A.DETECTION_PRESET, crop_size=(400, 480), color_p=0.0, lighting_p=0.0, thermal_p=0.0, jpeg_p=0.0
    )(im, ps, rng),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_transforms_move_polygons_with_pixels(name: str, seed: int) -> None:
    image, polys = _scene()
    out, moved = GEOMETRIC[name](image, polys, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert len(moved) == len(polys)
    assert all(
        m.dtype == np.float32 and m.shape in (p.shape, (0, 2)) for m, p in zip(moved, polys, strict=True)
    )
    assert any(len(m) for m in moved)
    assert min(_ious(out, moved)) > 0.9


def test_quarter_turns_are_exact_and_either_way() -> None:
    image, polys = _scene()
    for clockwise in (True, False):
        turned, moved = A.quarter_turn(image, polys, clockwise)
        assert turned.shape == (400, 300, 3)
        # Pixels move exactly (the round trip below is lossless); cv2 rasterises the polygons with a rule
        # that is not symmetric under turning, which costs a few boundary pixels of IoU.
        assert min(_ious(turned, moved)) > 0.94
        back, restored = A.quarter_turn(turned, moved, not clockwise)
        np.testing.assert_array_equal(back, image)
        for a, b in zip(restored, polys, strict=True):
            np.testing.assert_allclose(a, b)
    # Off by default: the presets draw no number for it, so their samples are unchanged.
    assert A.DETECTION_PRESET.quarter_turn_p == 0.0


def test_rotate_and_perspective_grow_the_canvas_so_nothing_leaves_it() -> None:
    image, polys = _scene()
    rng = np.random.default_rng(5)
    for fn in (GEOMETRIC["rotate"], GEOMETRIC["perspective"]):
        out, moved = fn(image, polys, rng)
        h, w = out.shape[:2]
        for m in moved:
            assert (m >= 0).all() and (m[:, 0] <= w).all() and (m[:, 1] <= h).all()


def _rows_scene(rng: np.random.Generator, dense: bool) -> tuple[tuple[int, int], list[np.ndarray]]:
    """Line boxes in rows on a 400x300 page: receipt-like (item left, price right) or dense (many per row)."""
    polys = []
    for row in range(16):
        y = 10.0 + row * 48 + float(rng.integers(0, 8))
        if dense:
            x = float(rng.integers(5, 40))
            while True:
                w = float(rng.integers(30, 160))
                if x + w > 595:
                    break
                polys.append(np.array([[x, y], [x + w, y], [x + w, y + 30], [x, y + 30]], np.float32))
                x += w + float(rng.integers(8, 40))
        else:
            left = float(rng.integers(80, 330))
            price = float(rng.integers(40, 120))
            polys.append(np.array([[20, y], [20 + left, y], [20 + left, y + 30], [20, y + 30]], np.float32))
            polys.append(
                np.array([[580 - price, y], [580, y], [580, y + 30], [580 - price, y + 30]], np.float32)
            )
    return (800, 600), polys


@pytest.mark.parametrize("dense", [False, True], ids=["receipt", "dense"])
@pytest.mark.parametrize("seed", range(4))
def test_random_crop_never_cuts_a_polygon(seed: int, dense: bool) -> None:
    (h, w), polys = _rows_scene(np.random.default_rng(seed), dense)
    # The crop's geometry depends on the polygons and the seed, not on pixels: crop one image per
    # polygon, with only that polygon inked, and see exactly what became of it.
    results = []
    for k, poly in enumerate(polys):
        image = np.full((h, w, 3), 255, np.uint8)
        cv2.fillPoly(image, [_fixed(poly)], (0, 0, 0), lineType=cv2.LINE_8, shift=4)
        out, all_moved = A.random_crop_keep_text(
            image, polys, 128, 160, np.random.default_rng(seed), fill=(255, 255, 255)
        )
        results.append((image, out, all_moved[k], all_moved))
    first_moved = results[0][3]
    n_kept = 0
    for poly, (image, out, moved, all_moved) in zip(polys, results, strict=True):
        assert out.shape == (128, 160, 3) and out.dtype == np.uint8
        for p, q in zip(all_moved, first_moved, strict=True):
            np.testing.assert_array_equal(p, q)
        ink = out.min(axis=-1) < 128
        if len(moved) == 0:
            assert out.min() >= 250, "a dropped polygon is partly visible: the crop cut it"
            continue
        n_kept += 1
        assert moved.min() >= 0 and (moved[:, 0] <= 160).all() and (moved[:, 1] <= 128).all()
        if np.allclose(np.ptp(moved, axis=0), np.ptp(poly, axis=0)):  # cropped without scaling: exact
            assert int(ink.sum()) == int((image.min(axis=-1) < 128).sum()), "a kept polygon lost pixels"
        else:
            mask = _poly_mask(moved, out.shape)
            assert (mask & ink).sum() / (mask | ink).sum() > 0.85
    assert n_kept >= 1


def test_random_crop_falls_back_to_resize_when_lines_are_wider_than_the_crop() -> None:
    image = np.full((200, 1000, 3), 255, np.uint8)
    polys = [np.array([[10, 50], [990, 50], [990, 90], [10, 90]], np.float32)]
    image[50:90, 10:990] = (0, 0, 0)
    out, (moved,) = A.random_crop_keep_text(image, polys, 128, 256, np.random.default_rng(0))
    assert out.shape == (128, 256, 3)
    assert len(moved) == 4 and moved[:, 0].max() <= 256 and moved[:, 1].max() <= 128
    np.testing.assert_allclose(np.ptp(moved[:, 0]), 980 * 256 / 1000, rtol=1e-3)


def test_random_crop_without_polygons_returns_a_window() -> None:
    image = np.random.default_rng(0).integers(0, 255, (500, 700, 3), dtype=np.uint8)
    out, polys = A.random_crop_keep_text(image, [], 100, 120, np.random.default_rng(1))
    assert out.shape == (100, 120, 3) and polys == []
    # A window of the image itself, not a resized copy.
    _, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(image, out, cv2.TM_SQDIFF))
    np.testing.assert_array_equal(image[y : y + 100, x : x + 120], out)


PHOTOMETRIC: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "color_jitter": lambda im, rng: A.color_jitter(im, rng, 0.4, 0.4, 0.4),
    "gaussian_blur": lambda im, rng: A.gaussian_blur(im, rng, (1.0, 2.0)),
    "motion_blur": lambda im, rng: A.motion_blur(im, rng, (5, 9)),
    "gaussian_noise": lambda im, rng: A.gaussian_noise(im, rng, (5.0, 10.0)),
    "jpeg_artifacts": lambda im, rng: A.jpeg_artifacts(im, rng, (10, 30)),
    "thermal_fade": lambda im, rng: A.thermal_fade(im, rng, (0.4, 0.8)),
    "lighting_gradient": lambda im, rng: A.lighting_gradient(im, rng, (0.3, 0.6)),
}


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC))
def test_photometric_keeps_shape_and_is_reproducible(name: str) -> None:
    image, _ = _scene()
    fn = PHOTOMETRIC[name]
    a = fn(image, np.random.default_rng(3))
    b = fn(image, np.random.default_rng(3))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image)


def test_gaussian_noise_has_the_requested_spread() -> None:
    image = np.full((200, 200, 3), 128, np.uint8)
    out = A.gaussian_noise(image, np.random.default_rng(0), (6.0, 6.0))
    diff = out.astype(np.float64) - 128
    assert abs(diff.mean()) < 0.2 and 5.5 < diff.std() < 6.5


def test_thermal_fade_lightens_ink_and_keeps_paper() -> None:
    image = np.full((200, 300, 3), 245, np.uint8)
    image[80:120, 50:250] = 20
    out = A.thermal_fade(image, np.random.default_rng(0), (0.5, 0.5))
    assert out[80:120, 50:250].mean() > 40
    assert np.abs(out[:60].astype(int) - 245).max() <= 1


def test_augmenter_is_deterministic_for_a_seed() -> None:
    always: dict[str, Any] = {f.name: 1.0 for f in dataclasses.fields(A.Augmenter) if f.name.endswith("_p")}
    everything = dataclasses.replace(A.DETECTION_PRESET, **always)
    image, polys = _scene()
    a_img, a_polys = everything(image, polys, np.random.default_rng(11))
    b_img, b_polys = everything(image, polys, np.random.default_rng(11))
    c_img, _ = everything(image, polys, np.random.default_rng(12))
    np.testing.assert_array_equal(a_img, b_img)
    for p, q in zip(a_polys, b_polys, strict=True):
        np.testing.assert_array_equal(p, q)
    assert a_img.shape == (640, 640, 3)
    assert not np.array_equal(a_img, c_img)


def test_presets_keep_image_contract() -> None:
    image, polys = _scene()
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, moved = A.DETECTION_PRESET(image, polys, rng)
        assert out.shape == (640, 640, 3) and out.dtype == np.uint8 and len(moved) == len(polys)
        line, (box,) = A.RECOGNITION_PRESET(image[:60], [polys[0]], rng)
        assert line.dtype == np.uint8 and line.ndim == 3 and box.shape == (4, 2)


@pytest.mark.parametrize(
    "bad",
    [{"rotate_p": 1.5}, {"noise_p": -0.1}, {"scale_range": (2.0, 1.0)}, {"crop_size": (0, 10)}],
)
def test_augmenter_rejects_bad_config(bad: dict) -> None:
    with pytest.raises(ValueError):
        A.Augmenter(**bad)
