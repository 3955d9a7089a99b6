"""Image augmentations for OCR training: geometric ones move text polygons with the pixels.

Everything here is numpy/cv2 on RGB ``uint8`` images of shape ``[h, w, 3]``; randomness comes only from
the ``np.random.Generator`` passed in, so a seed reproduces an augmented sample exactly.

Polygons are float32 ``[n, 2]`` arrays of ``(x, y)`` in continuous pixel coordinates (pixel ``(0, 0)``
covers ``[0, 1) x [0, 1)``). Geometric functions return the polygons in the same order as given; a
polygon that :func:`random_crop_keep_text` leaves out of its crop comes back empty (shape ``[0, 2]``)
so that labels stay aligned with their polygons by index.

:class:`Augmenter` composes the functions with probabilities and ranges; :data:`DETECTION_PRESET`
(full pages -> 640x640 crops that never cut a line), :data:`RECOGNITION_PRESET` (mild distortions of
a text line before it is cropped) and :data:`FORMULA_PRESET` (the formula-recognition seed's recipe:
adaptive-threshold binarisation, rotation, shear, brightness/contrast) are the starting points. Receipt-specific effects
(:func:`thermal_fade`) follow how thermal printers fail: whole areas fade unevenly and dead heating
dots leave light streaks along the paper feed.

>>> rng = np.random.default_rng(0)
>>> image = np.full((480, 360, 3), 255, np.uint8)
>>> out, polys = DETECTION_PRESET(image, [np.array([[10, 10], [90, 10], [90, 30], [10, 30]], np.float32)], rng)
>>> out.shape
(640, 640, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "DETECTION_PRESET",
    "FORMULA_PRESET",
    "RECOGNITION_PRESET",
    "Augmenter",
    "Polygons",
    "adaptive_binarize",
    "color_jitter",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg_artifacts",
    "lighting_gradient",
    "motion_blur",
    "quarter_turn",
    "random_crop_keep_text",
    "random_perspective",
    "random_rotate",
    "random_scale",
    "thermal_fade",
    "warp_perspective",
]

Polygons = list[np.ndarray]
Colour = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------------------
# geometry helpers


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    if len(points) == 0:
        return np.zeros((0, 2), np.float32)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    homog = pts @ matrix[:, :2].T + matrix[:, 2]
    return (homog[:, :2] / homog[:, 2:3]).astype(np.float32)


def _expand_canvas(matrix: np.ndarray, w: int, h: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Shift ``matrix`` so the whole transformed image lands at the origin; returns it and (w, h)."""
    corners = _transform_points(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), matrix)
    lo = np.floor(corners.min(axis=0))
    hi = np.ceil(corners.max(axis=0))
    size = (max(1, int(hi[0] - lo[0])), max(1, int(hi[1] - lo[1])))
    return _translation(-lo[0], -lo[1]) @ matrix, size


def _border_colour(image: np.ndarray) -> Colour:
    """Median colour of the image border: a fill for exposed canvas that looks like the background."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0).reshape(
        -1, image.shape[-1]
    )
    med = np.median(border, axis=0)
    return int(med[0]), int(med[1]), int(med[2])


def warp_perspective(
    image: np.ndarray,
    polys: Sequence[np.ndarray],
    matrix: np.ndarray,
    size: tuple[int, int],
    fill: Colour | None = None,
) -> tuple[np.ndarray, Polygons]:
    """Apply a 3x3 homography (continuous pixel coordinates) to an image and its polygons.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        polys: polygons ``[n, 2]`` in ``image`` pixels.
        matrix: homography mapping source to destination continuous coordinates.
        size: output ``(width, height)``.
        fill: colour of canvas not covered by the source; ``None`` uses the median border colour.

    Returns:
        The warped image and the polygons mapped by the same homography.
    """
    if fill is None:
        fill = _border_colour(image)
    # cv2 puts pixel centres at integer coordinates, ours at +0.5: conjugate by a half-pixel shift.
    index_matrix = _translation(-0.5, -0.5) @ matrix @ _translation(0.5, 0.5)
    out = cv2.warpPerspective(
        image,
        index_matrix,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    return out, [_transform_points(p, matrix) for p in polys]


def _rotation_matrix(angle_deg: float, w: int, h: int) -> np.ndarray:
    """Rotation about the image centre, counter-clockwise on screen for positive angles."""
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    rot = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return _translation(w / 2, h / 2) @ rot @ _translation(-w / 2, -h / 2)


def _shear_matrix(shear: float, w: int, h: int) -> np.ndarray:
    """Horizontal shear ``x' = x + shear * (y - h / 2)`` about the image centre (an italic-like slant)."""
    return (
        _translation(w / 2, h / 2)
        @ np.array([[1.0, shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        @ (_translation(-w / 2, -h / 2))
    )


def _perspective_matrix(strength: float, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    jitter = rng.uniform(-strength, strength, size=(4, 2)) * min(w, h)
    dst = (src + jitter).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# geometric augmentations


def random_rotate(
    image: np.ndarray,
    polys: Sequence[np.ndarray],
    max_deg: float,
    rng: np.random.Generator,
    *,
    fill: Colour | None = None,
) -> tuple[np.ndarray, Polygons]:
    """Rotate by a uniform angle in ``[-max_deg, max_deg]``, growing the canvas so nothing is cut.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        polys: polygons in ``image`` pixels.
        max_deg: largest rotation in degrees.
        rng: source of randomness.
        fill: colour of exposed corners; ``None`` uses the median border colour.

    Returns:
        The rotated image (usually larger) and the rotated polygons.
    """
    h, w = image.shape[:2]
    angle = rng.uniform(-max_deg, max_deg)
    matrix, size = _expand_canvas(_rotation_matrix(angle, w, h), w, h)
    return warp_perspective(image, polys, matrix, size, fill)


def quarter_turn(
    image: np.ndarray, polys: Sequence[np.ndarray], clockwise: bool
) -> tuple[np.ndarray, Polygons]:
    """Turn the image a quarter turn, exactly (no interpolation), with its polygons.

    >>> image = np.zeros((20, 50, 3), np.uint8)
    >>> turned, (poly,) = quarter_turn(image, [np.array([[0, 0], [50, 0], [50, 10], [0, 10]])], True)
    >>> turned.shape[:2], poly.tolist()
    ((50, 20), [[20.0, 0.0], [20.0, 50.0], [10.0, 50.0], [10.0, 0.0]])
    """
    h = image.shape[0]
    w = image.shape[1]
    out = []
    for p in polys:
        q = np.asarray(p, np.float32).reshape(-1, 2)
        # Pixel edges map exactly: clockwise (x, y) -> (h - y, x); counter-clockwise (x, y) -> (y, w - x).
        turned = np.stack([h - q[:, 1], q[:, 0]], 1) if clockwise else np.stack([q[:, 1], w - q[:, 0]], 1)
        out.append(turned.astype(np.float32))
    return np.ascontiguousarray(np.rot90(image, -1 if clockwise else 1)), out


def random_scale(
    image: np.ndarray,
    polys: Sequence[np.ndarray],
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    *,
    aspect_jitter: float = 0.0,
) -> tuple[np.ndarray, Polygons]:
    """Resize by a uniform factor from ``scale_range``, optionally stretching one axis.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        polys: polygons in ``image`` pixels.
        scale_range: ``(low, high)`` scale factors.
        rng: source of randomness.
        aspect_jitter: the x/y stretch is ``exp(u)`` with ``u`` uniform in ``[-aspect_jitter, aspect_jitter]``.

    Returns:
        The resized image and polygons scaled by the exact size ratio.
    """
    h, w = image.shape[:2]
    scale = rng.uniform(*scale_range)
    aspect = math.exp(rng.uniform(-aspect_jitter, aspect_jitter)) if aspect_jitter > 0 else 1.0
    new_w = max(1, round(w * scale * math.sqrt(aspect)))
    new_h = max(1, round(h * scale / math.sqrt(aspect)))
    return _resize(image, polys, new_w, new_h)


def _resize(
    image: np.ndarray, polys: Sequence[np.ndarray], new_w: int, new_h: int
) -> tuple[np.ndarray, Polygons]:
    h, w = image.shape[:2]
    # INTER_AREA when shrinking: bilinear alone aliases thin strokes away.
    interp = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
    out = cv2.resize(image, (new_w, new_h), interpolation=interp)
    factor = np.array([new_w / w, new_h / h], np.float32)
    return out, [np.asarray(p, np.float32).reshape(-1, 2) * factor for p in polys]


def random_perspective(
    image: np.ndarray,
    polys: Sequence[np.ndarray],
    strength: float,
    rng: np.random.Generator,
    *,
    fill: Colour | None = None,
) -> tuple[np.ndarray, Polygons]:
    """Move each image corner by up to ``strength * min(h, w)`` pixels (a camera not square to the page).

    The canvas grows to hold the whole warped image, so no text leaves it.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        polys: polygons in ``image`` pixels.
        strength: corner displacement as a fraction of the shorter side (0.05 is a mild tilt).
        rng: source of randomness.
        fill: colour of exposed canvas; ``None`` uses the median border colour.

    Returns:
        The warped image and the polygons mapped by the same homography.
    """
    h, w = image.shape[:2]
    matrix, size = _expand_canvas(_perspective_matrix(strength, w, h, rng), w, h)
    return warp_perspective(image, polys, matrix, size, fill)


def _free_boundaries(lo: np.ndarray, hi: np.ndarray, length: int) -> np.ndarray:
    """``free[b]`` for integer cut positions ``b`` in ``[0, length]``: no extent ``(lo, hi)`` strictly spans b."""
    first = np.clip(np.floor(lo).astype(np.int64) + 1, 0, length + 1)
    last = np.clip(np.ceil(hi).astype(np.int64) - 1, -1, length)
    keep = first <= last
    diff = np.zeros(length + 2, np.int64)
    np.add.at(diff, first[keep], 1)
    np.add.at(diff, last[keep] + 1, -1)
    return np.cumsum(diff[: length + 1]) == 0


def _pick_span(
    free: np.ndarray, lo: float, hi: float, out_len: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    """A cut ``(a, b)`` with ``b - a <= out_len``, both free, containing ``[lo, hi]``; None if impossible."""
    length = len(free) - 1
    if length <= out_len:
        return 0, length
    first_start = max(0, math.ceil(hi) - out_len)
    starts = np.flatnonzero(free[first_start : math.floor(lo) + 1]) + first_start
    if len(starts) == 0:
        return None
    a = int(rng.choice(starts))
    ends = np.flatnonzero(free[math.ceil(hi) : min(length, a + out_len) + 1]) + math.ceil(hi)
    if len(ends) == 0:
        return None
    return a, int(ends[-1])


def _window_around(
    boxes: np.ndarray,
    anchor: int,
    out_size: tuple[int, int],
    size: tuple[int, int],
    first_axis: int,
    rng: np.random.Generator,
) -> tuple[int, int, int, int] | None:
    """A crop (x0, y0, x1, y1) holding box ``anchor`` whose edges cut no box; None if none is found.

    The edges of ``first_axis`` (0: x, 1: y) may cross no box at all; the other pair of edges only has to
    avoid the boxes lying between the first pair, since every other box is out of the crop anyway.
    """
    a, b = first_axis, 1 - first_axis
    span_a = _pick_span(
        _free_boundaries(boxes[:, a], boxes[:, a + 2], size[a]),
        boxes[anchor, a],
        boxes[anchor, a + 2],
        out_size[a],
        rng,
    )
    if span_a is None:
        return None
    between = boxes[(boxes[:, a] >= span_a[0]) & (boxes[:, a + 2] <= span_a[1])]
    free_b = _free_boundaries(between[:, b], between[:, b + 2], size[b])
    span_b = _pick_span(free_b, boxes[anchor, b], boxes[anchor, b + 2], out_size[b], rng)
    if span_b is None:
        return None
    (x0, x1), (y0, y1) = (span_a, span_b) if a == 0 else (span_b, span_a)
    return x0, y0, x1, y1


def random_crop_keep_text(
    image: np.ndarray,
    polys: Sequence[np.ndarray],
    out_h: int,
    out_w: int,
    rng: np.random.Generator,
    *,
    max_tries: int = 10,
    fill: Colour | None = None,
) -> tuple[np.ndarray, Polygons]:
    """Crop an ``out_h x out_w`` window whose edges cut no polygon, shrinking or padding to fit.

    Crop edges are placed only where they cross no polygon's bounding box, so each polygon is either
    wholly inside the crop or wholly out of it. Each try builds the window around a random polygon;
    when no window of the output size exists (a line longer than the crop, lines overlapping in every
    column), windows up to 3x larger are tried and shrunk to fit, and in the end the whole image is
    resized to fit. Without polygons the window is placed anywhere. The result sits at a random offset
    on a canvas of ``fill``.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        polys: polygons in ``image`` pixels.
        out_h: output height.
        out_w: output width.
        rng: source of randomness.
        max_tries: polygons tried as the window's anchor at each window size.
        fill: padding colour; ``None`` uses the median border colour.

    Returns:
        The ``[out_h, out_w, 3]`` image and the polygons in its pixels, in input order; polygons outside
        the crop come back empty (``[0, 2]``).
    """
    h, w = image.shape[:2]
    if fill is None:
        fill = _border_colour(image)
    polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in polys]
    # Bounding boxes clipped to the image: the image edges are always valid cut positions.
    boxes = np.array([[*p.min(axis=0), *p.max(axis=0)] if len(p) else [0, 0, 0, 0] for p in polys]).reshape(
        -1, 4
    )
    boxes = np.clip(boxes, 0, [w, h, w, h])
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    candidates = boxes[valid]
    crop: tuple[int, int, int, int] | None = None
    if len(candidates) == 0:
        # Nothing to keep: any window will do, which keeps the scale of text-free samples.
        x = int(rng.integers(0, max(0, w - out_w) + 1))
        y = int(rng.integers(0, max(0, h - out_h) + 1))
        crop = (x, y, min(w, x + out_w), min(h, y + out_h))
    for grow in (1.0, 1.5, 2.0, 3.0):
        if crop is not None:
            break
        window = (math.ceil(out_w * grow), math.ceil(out_h * grow))
        for anchor in rng.permutation(len(candidates))[:max_tries]:
            # Either pair of edges may be placed first: rows of lines favour y, columns favour x.
            crop = _window_around(candidates, int(anchor), window, (w, h), int(rng.integers(2)), rng)
            if crop is not None:
                break
    a, b, c, d = crop if crop is not None else (0, 0, w, h)
    inside = (boxes[:, 0] >= a) & (boxes[:, 1] >= b) & (boxes[:, 2] <= c) & (boxes[:, 3] <= d)
    patch = image[b:d, a:c]
    local = [p - np.array([a, b], np.float32) for p in polys]
    scale = min(1.0, out_w / patch.shape[1], out_h / patch.shape[0])
    if scale < 1.0:
        new_w = min(out_w, max(1, round(patch.shape[1] * scale)))
        new_h = min(out_h, max(1, round(patch.shape[0] * scale)))
        patch, local = _resize(patch, local, new_w, new_h)
    ph, pw = patch.shape[:2]
    off_x = int(rng.integers(0, out_w - pw + 1))
    off_y = int(rng.integers(0, out_h - ph + 1))
    out = np.empty((out_h, out_w, 3), np.uint8)
    out[:] = fill
    out[off_y : off_y + ph, off_x : off_x + pw] = patch
    shift = np.array([off_x, off_y], np.float32)
    return out, [
        p + shift if keep else np.zeros((0, 2), np.float32)
        for p, keep in zip(local, valid & inside, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------
# photometric augmentations


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
) -> np.ndarray:
    """Scale brightness, contrast and saturation by uniform factors in ``1 ± amount``.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        brightness: largest relative brightness change.
        contrast: largest relative contrast change (about the mean grey level).
        saturation: largest relative saturation change (about the pixel's grey value).

    Returns:
        The adjusted image.
    """
    b = 1.0 + rng.uniform(-brightness, brightness)
    c = 1.0 + rng.uniform(-contrast, contrast)
    s = 1.0 + rng.uniform(-saturation, saturation)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mean = float(gray[::4, ::4].mean()) * b
    # Brightness then contrast is one affine map per grey level: a 256-entry table.
    lut = np.clip((np.arange(256, dtype=np.float32) * b - mean) * c + mean, 0, 255).astype(np.uint8)
    out = cv2.LUT(image, lut)
    if s != 1.0:
        gray3 = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, s, gray3, 1.0 - s, 0.0)
    return out


def adaptive_binarize(image: np.ndarray, block: int = 25, offset: float = 15.0) -> np.ndarray:
    """Black and white by a local (Gaussian-weighted) mean threshold, as scanned bilevel documents look.

    A pixel becomes black when it is darker than the weighted mean of its ``block x block``
    neighbourhood minus ``offset``; uneven lighting and grey paper therefore turn white, not black.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        block: neighbourhood side in pixels (odd, at least 3).
        offset: grey levels below the local mean a pixel must be to turn black.

    Returns:
        The RGB uint8 image holding only 0 and 255.

    Raises:
        ValueError: ``block`` is even or smaller than 3.
    """
    if block < 3 or block % 2 == 0:
        raise ValueError(f"block must be odd and >= 3, got {block}")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    binary = cv2.adaptiveThreshold(
        gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, block, offset
    )
    return cv2.cvtColor(binary, cv2.COLOR_GRAY2RGB)


def gaussian_blur(
    image: np.ndarray, rng: np.random.Generator, sigma: tuple[float, float] = (0.3, 1.2)
) -> np.ndarray:
    """Blur with a Gaussian of uniform random ``sigma`` (defocus).

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        sigma: ``(low, high)`` standard deviation in pixels.

    Returns:
        The blurred image.
    """
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(*sigma))


def motion_blur(image: np.ndarray, rng: np.random.Generator, length: tuple[int, int] = (3, 7)) -> np.ndarray:
    """Blur along a random direction with a line kernel (camera shake).

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        length: ``(low, high)`` kernel length in pixels, inclusive.

    Returns:
        The blurred image.
    """
    n = int(rng.integers(length[0], length[1] + 1))
    if n < 2:
        return image.copy()
    k = n | 1
    angle = rng.uniform(0, math.pi)
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    dx, dy = math.cos(angle) * (n - 1) / 2, math.sin(angle) * (n - 1) / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def gaussian_noise(
    image: np.ndarray, rng: np.random.Generator, std: tuple[float, float] = (2.0, 10.0)
) -> np.ndarray:
    """Add per-pixel, per-channel zero-mean noise of a random standard deviation (sensor noise).

    The noise is the sum of two uniform bytes (a triangular law, close to Gaussian for this purpose):
    drawing bytes is several times faster than ``standard_normal`` on a full page.

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        std: ``(low, high)`` noise standard deviation in grey levels.

    Returns:
        The noisy image.
    """
    sigma = rng.uniform(*std)
    pairs = np.frombuffer(rng.bytes(2 * image.size), np.int8).reshape(2, *image.shape)
    noise = cv2.add(pairs[0], pairs[1], dtype=cv2.CV_16S)
    # The sum of two uniform int8 values has standard deviation 256 / sqrt(6) = 104.5.
    return cv2.addWeighted(image, 1.0, noise, sigma / 104.5, 0.0, dtype=cv2.CV_8U)


def jpeg_artifacts(
    image: np.ndarray, rng: np.random.Generator, quality: tuple[int, int] = (30, 90)
) -> np.ndarray:
    """Round-trip through JPEG at a random quality (blocking and ringing around strokes).

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        quality: ``(low, high)`` JPEG quality, inclusive.

    Returns:
        The decoded image.

    Raises:
        RuntimeError: OpenCV could not encode or decode the image.
    """
    q = int(rng.integers(quality[0], quality[1] + 1))
    # JPEG's chroma planes assume BGR order from cv2: convert so colours are weighted as in real photos.
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise RuntimeError(f"OpenCV could not round-trip an image of shape {image.shape} through JPEG")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _smooth_field(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Random values in [0, 1] on a coarse grid, interpolated smoothly to ``[h, w]`` float32."""
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    grid = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def thermal_fade(
    image: np.ndarray, rng: np.random.Generator, strength: tuple[float, float] = (0.2, 0.7)
) -> np.ndarray:
    """Fade dark print towards the paper colour like an old thermal receipt.

    The fade map combines a smooth uneven field (heat and age vary over the slip), soft horizontal
    bands (uneven feed) and thin vertical streaks (dead heating dots print nothing along the feed).

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        strength: ``(low, high)`` fraction of the ink-to-paper distance removed at the faintest spots.

    Returns:
        The faded image.
    """
    h, w = image.shape[:2]
    s = rng.uniform(*strength)
    fade = _smooth_field(h, w, 6, rng) * s
    for _ in range(int(rng.integers(0, 3))):
        y = rng.uniform(0, h)
        sigma = rng.uniform(0.02, 0.1) * h
        ys = np.arange(h, dtype=np.float32)
        fade += (rng.uniform(0.3, 1.0) * s * np.exp(-(((ys - y) / sigma) ** 2)))[:, None]
    for _ in range(int(rng.integers(0, 6))):
        x = int(rng.integers(0, w))
        fade[:, x : x + int(rng.integers(1, 4))] += rng.uniform(0.4, 0.9)
    np.clip(fade, 0.0, 1.0, out=fade)
    paper = np.percentile(image[::8, ::8].reshape(-1, 3), 90, axis=0).astype(np.float32)
    out = image.astype(np.float32)
    out += (paper - out) * fade[..., None]
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def lighting_gradient(
    image: np.ndarray, rng: np.random.Generator, strength: tuple[float, float] = (0.1, 0.5)
) -> np.ndarray:
    """Darken the image along a random direction, with an optional soft spot of light (uneven lighting).

    Args:
        image: RGB uint8 ``[h, w, 3]``.
        rng: source of randomness.
        strength: ``(low, high)`` largest darkening (0.5: the darkest corner keeps half its brightness).

    Returns:
        The re-lit image.
    """
    h, w = image.shape[:2]
    s = rng.uniform(*strength)
    # The gain varies slowly, so compute it on a small grid and upsample (cheap on large pages).
    gh, gw = max(2, min(h, 64)), max(2, min(w, 64))
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    xx /= gw - 1
    yy /= gh - 1
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    gain = 1.0 - s * ramp
    if rng.random() < 0.5:
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.2, 0.6)
        gain += 0.5 * s * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r))
    gain = cv2.resize(gain.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    out = image.astype(np.float32)
    out *= gain[..., None]
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# composition


def _check_range(name: str, value: tuple[float, float]) -> None:
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")


@dataclass(frozen=True)
class Augmenter:
    """A fixed pipeline of augmentations, each applied with its probability.

    Order: binarise -> quarter turn -> scale -> rotate + shear + perspective (one warp) -> crop -> lighting -> thermal
    fade -> colour -> blur (Gaussian or motion) -> noise -> JPEG. Derive variants with
    :func:`dataclasses.replace`. A step whose probability is 0 draws no random number, so adding a step
    leaves the samples of presets that do not use it unchanged.

    Attributes:
        quarter_turn_p: probability of :func:`quarter_turn` (either way, evenly), after binarising: every
            line of the page then runs along the image's height, as document numbers printed in
            margins and table headers turned on their side do, so a detector sees many such lines.
            For detection only: a turned line crop no longer matches its label's reading direction.
        binarize_p: probability of :func:`adaptive_binarize` with ``binarize_block`` and ``binarize_offset``
            (first, so the later warp and photometric steps soften the hard edges like a scan would).
        scale_p: probability of :func:`random_scale`, with ``scale_range`` and ``aspect_jitter``.
        rotate_p: probability of a rotation up to ``max_rotate_deg``.
        shear_p: probability of a horizontal shear by a factor uniform in ``[-max_shear, max_shear]``
            (0.2 slants a vertical stroke by about 11 degrees).
        perspective_p: probability of a perspective warp of ``perspective_strength``.
        crop_size: ``(h, w)`` of a final :func:`random_crop_keep_text`, always applied; None keeps size.
        lighting_p, thermal_p, color_p, blur_p, motion_blur_p, noise_p, jpeg_p: probabilities of the
            photometric steps, with their ranges below (see each function).
    """

    scale_p: float = 0.0
    scale_range: tuple[float, float] = (0.5, 1.5)
    aspect_jitter: float = 0.0
    rotate_p: float = 0.0
    max_rotate_deg: float = 10.0
    shear_p: float = 0.0
    max_shear: float = 0.2
    perspective_p: float = 0.0
    perspective_strength: float = 0.05
    crop_size: tuple[int, int] | None = None
    lighting_p: float = 0.0
    lighting_strength: tuple[float, float] = (0.1, 0.5)
    thermal_p: float = 0.0
    thermal_strength: tuple[float, float] = (0.2, 0.7)
    color_p: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    motion_blur_p: float = 0.0
    motion_blur_length: tuple[int, int] = (3, 7)
    noise_p: float = 0.0
    noise_std: tuple[float, float] = (2.0, 10.0)
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)
    binarize_p: float = 0.0
    binarize_block: int = 25
    binarize_offset: float = 15.0
    quarter_turn_p: float = 0.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in (
            "scale_range",
            "lighting_strength",
            "thermal_strength",
            "blur_sigma",
            "motion_blur_length",
            "noise_std",
            "jpeg_quality",
        ):
            _check_range(name, getattr(self, name))
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive (h, w), got {self.crop_size!r}")
        if self.binarize_block < 3 or self.binarize_block % 2 == 0:
            raise ValueError(f"binarize_block must be odd and >= 3, got {self.binarize_block!r}")
        if self.max_shear < 0:
            raise ValueError(f"max_shear must be >= 0, got {self.max_shear!r}")

    def __call__(
        self, image: np.ndarray, polys: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, Polygons]:
        """Augment one image and its polygons.

        Args:
            image: RGB uint8 ``[h, w, 3]``.
            polys: polygons in ``image`` pixels (may be empty).
            rng: source of randomness; the same generator state gives the same output.

        Returns:
            The augmented image and polygons (same order; empty where a crop left them out).
        """
        out: Polygons = [np.asarray(p, np.float32).reshape(-1, 2) for p in polys]
        # Steps added after the first presets draw only when enabled: old presets keep their samples.
        if self.binarize_p > 0 and rng.random() < self.binarize_p:
            image = adaptive_binarize(image, self.binarize_block, self.binarize_offset)
        if self.quarter_turn_p > 0 and rng.random() < self.quarter_turn_p:
            image, out = quarter_turn(image, out, clockwise=bool(rng.random() < 0.5))
        if rng.random() < self.scale_p:
            image, out = random_scale(image, out, self.scale_range, rng, aspect_jitter=self.aspect_jitter)
        # Rotation and perspective share one warp: one interpolation blurs strokes less than two.
        h, w = image.shape[:2]
        matrix = np.eye(3)
        if rng.random() < self.rotate_p:
            matrix = _rotation_matrix(rng.uniform(-self.max_rotate_deg, self.max_rotate_deg), w, h)
        if self.shear_p > 0 and rng.random() < self.shear_p:
            matrix = _shear_matrix(rng.uniform(-self.max_shear, self.max_shear), w, h) @ matrix
        if rng.random() < self.perspective_p:
            matrix = _perspective_matrix(self.perspective_strength, w, h, rng) @ matrix
        if not np.array_equal(matrix, np.eye(3)):
            matrix, size = _expand_canvas(matrix, w, h)
            image, out = warp_perspective(image, out, matrix, size)
        if self.crop_size is not None:
            image, out = random_crop_keep_text(image, out, self.crop_size[0], self.crop_size[1], rng)
        if rng.random() < self.lighting_p:
            image = lighting_gradient(image, rng, self.lighting_strength)
        if rng.random() < self.thermal_p:
            image = thermal_fade(image, rng, self.thermal_strength)
        if rng.random() < self.color_p:
            image = color_jitter(image, rng, self.brightness, self.contrast, self.saturation)
        if rng.random() < self.blur_p:
            image = gaussian_blur(image, rng, self.blur_sigma)
        elif rng.random() < self.motion_blur_p:
            image = motion_blur(image, rng, self.motion_blur_length)
        if rng.random() < self.noise_p:
            image = gaussian_noise(image, rng, self.noise_std)
        if rng.random() < self.jpeg_p:
            image = jpeg_artifacts(image, rng, self.jpeg_quality)
        return image, out


DETECTION_PRESET = Augmenter(
    scale_p=1.0,
    scale_range=(0.5, 1.5),
    aspect_jitter=0.1,
    rotate_p=0.5,
    max_rotate_deg=10.0,
    perspective_p=0.3,
    perspective_strength=0.05,
    crop_size=(640, 640),
    lighting_p=0.3,
    thermal_p=0.2,
    color_p=0.5,
    blur_p=0.2,
    motion_blur_p=0.1,
    noise_p=0.3,
    jpeg_p=0.3,
)
"""Whole pages/receipts -> 640x640 training crops that never cut a text line."""

RECOGNITION_PRESET = Augmenter(
    rotate_p=0.5,
    max_rotate_deg=2.0,
    perspective_p=0.4,
    perspective_strength=0.03,
    lighting_p=0.2,
    lighting_strength=(0.05, 0.3),
    thermal_p=0.2,
    thermal_strength=(0.1, 0.5),
    color_p=0.5,
    blur_p=0.25,
    blur_sigma=(0.3, 1.0),
    motion_blur_p=0.1,
    motion_blur_length=(2, 4),
    noise_p=0.3,
    noise_std=(2.0, 8.0),
    jpeg_p=0.3,
    jpeg_quality=(40, 90),
)
"""Mild distortions of a rendered line, applied before it is cropped to its (moved) polygon."""

FORMULA_PRESET = Augmenter(
    binarize_p=0.2,
    binarize_block=25,
    binarize_offset=15.0,
    rotate_p=0.5,
    max_rotate_deg=3.0,
    shear_p=0.5,
    max_shear=0.15,
    color_p=0.5,
    brightness=0.3,
    contrast=0.3,
    saturation=0.0,
)
"""The formula-recognition seed's recipe on whole formula images: adaptive-threshold binarisation, a
small rotation and a horizontal shear (one warp; the canvas grows so nothing is cut, filled with the
border colour) and brightness/contrast jitter. Rendering noise comes from the synthetic generator."""
