"""Training targets of DBNet (Liao et al., AAAI 2020, section 3.3 "Label generation").

Built with numpy/cv2/pyclipper in the CPU data pipeline, one image at a time, never inside the model:

* ``shrink_map``: 1 inside each text polygon shrunk by ``D = A(1 - r²) / L`` (the text kernel);
  the target of the probability and binary maps.
* ``shrink_mask``: 0 over don't-care regions and polygons too small to learn from, 1 elsewhere.
* ``thresh_map``: ``thresh_min`` + (``thresh_max`` - ``thresh_min``) · (1 - d / D), where ``d`` is the
  distance to the nearest polygon edge (clipped to ``D``): high on text borders, low elsewhere.
* ``thresh_mask``: 1 inside each polygon dilated by ``D``, where the threshold loss applies.

>>> import numpy as np
>>> box = np.array([[8, 8], [56, 8], [56, 24], [8, 24]], np.float32)
>>> maps = build_db_targets(32, 64, [box])
>>> sorted(maps), maps["shrink_map"].shape
(['shrink_map', 'shrink_mask', 'thresh_map', 'thresh_mask'], (32, 64))
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ocrjobs.geometry import polygon_area, polygon_perimeter, shrink_polygon, unclip_polygon

__all__ = ["TARGET_KEYS", "build_db_targets"]

TARGET_KEYS: tuple[str, ...] = ("shrink_map", "shrink_mask", "thresh_map", "thresh_mask")


def _fill(canvas: np.ndarray, poly: np.ndarray, value: float) -> None:
    cv2.fillPoly(canvas, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], value)


def _segment_distances(xs: np.ndarray, ys: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance from every grid point ``(xs[j], ys[i])`` to the nearest edge of ``poly``: ``[len(ys), len(xs)]``."""
    px, py = xs[None, :], ys[:, None]
    nearest = np.full((len(ys), len(xs)), np.inf, dtype=np.float64)
    # One vectorised pass per edge keeps memory at one grid, whatever the vertex count.
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = (
            np.zeros_like(nearest)
            if length2 == 0
            else np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
        )
        np.minimum(nearest, np.hypot(px - ax - t * dx, py - ay - t * dy), out=nearest)
    return nearest


def _draw_border(poly: np.ndarray, distance: float, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Write ``1 - d / D`` (clipped to [0, 1]) into ``canvas`` around ``poly`` and mark the dilated polygon in ``mask``."""
    # unclip_polygon offsets by A·r/L, so r = D·L/A offsets by exactly D.
    dilated = unclip_polygon(poly, distance * polygon_perimeter(poly) / polygon_area(poly))
    if len(dilated) < 3:
        return
    _fill(mask, dilated, 1.0)
    height, width = canvas.shape
    x0 = max(int(np.floor(dilated[:, 0].min())), 0)
    x1 = min(int(np.ceil(dilated[:, 0].max())), width - 1)
    y0 = max(int(np.floor(dilated[:, 1].min())), 0)
    y1 = min(int(np.ceil(dilated[:, 1].max())), height - 1)
    if x0 > x1 or y0 > y1:
        return
    xs = np.arange(x0, x1 + 1, dtype=np.float64)
    ys = np.arange(y0, y1 + 1, dtype=np.float64)
    closeness = 1.0 - np.clip(_segment_distances(xs, ys, poly.astype(np.float64)) / distance, 0.0, 1.0)
    region = canvas[y0 : y1 + 1, x0 : x1 + 1]
    np.maximum(region, closeness.astype(np.float32), out=region)


def build_db_targets(
    height: int,
    width: int,
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool] | None = None,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_size: float = 3,
) -> dict[str, np.ndarray]:
    """Build the four DB target maps of one image.

    Args:
        height: image (and map) height.
        width: image (and map) width.
        polygons: ``[n, 2]`` text polygons in pixel coordinates; parts outside the image are cut off.
        ignore: don't-care flag per polygon (ICDAR ``###``); ``None`` means none is ignored.
        shrink_ratio: ``r`` of the kernel shrink (DBNet: 0.4).
        thresh_min: threshold-map value away from text borders.
        thresh_max: threshold-map value on text borders.
        min_size: polygons whose bounding box is narrower than this (in either direction) are
            treated as don't-care, as are those whose kernel vanishes.

    Returns:
        ``{"shrink_map", "shrink_mask", "thresh_map", "thresh_mask"}``, each float32 ``[height, width]``.

    Raises:
        ValueError: ``ignore`` and ``polygons`` differ in length, or ``thresh_min >= thresh_max``.
    """
    flags = [False] * len(polygons) if ignore is None else list(ignore)
    if len(flags) != len(polygons):
        raise ValueError(f"{len(polygons)} polygons but {len(flags)} ignore flags")
    if not thresh_min < thresh_max:
        raise ValueError(f"thresh_min ({thresh_min}) must be below thresh_max ({thresh_max})")
    shrink_map = np.zeros((height, width), dtype=np.float32)
    shrink_mask = np.ones((height, width), dtype=np.float32)
    border = np.zeros((height, width), dtype=np.float32)
    thresh_mask = np.zeros((height, width), dtype=np.float32)
    for raw, flagged in zip(polygons, flags, strict=True):
        poly = np.asarray(raw, dtype=np.float32).reshape(-1, 2)
        if len(poly) < 3:
            continue
        extent = poly.max(axis=0) - poly.min(axis=0)
        kernel = shrink_polygon(poly, shrink_ratio) if not flagged and extent.min() >= min_size else None
        if kernel is None or len(kernel) < 3:
            _fill(shrink_mask, poly, 0.0)
            continue
        _fill(shrink_map, kernel, 1.0)
        distance = polygon_area(poly) * (1.0 - shrink_ratio**2) / polygon_perimeter(poly)
        if distance > 0.0:  # shrink_ratio=1 has no border band
            _draw_border(poly, distance, border, thresh_mask)
    return {
        "shrink_map": shrink_map,
        "shrink_mask": shrink_mask,
        "thresh_map": border * (thresh_max - thresh_min) + thresh_min,
        "thresh_mask": thresh_mask,
    }
