"""Helpers shared by the detection metrics: valid shapely geometry, text-box quads, the harmonic mean."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike

__all__ = ["as_points", "harmonic_mean", "quad_aspect_ratio", "reading_quad", "to_geometries"]


def as_points(polygon: ArrayLike) -> np.ndarray:
    """A polygon as a float64 ``[n, 2]`` array.

    Raises:
        ValueError: the input is not shaped ``[n, 2]`` (an empty input is ``[0, 2]``) or has non-finite
            coordinates (a NaN box is a bug upstream, not a miss to be scored).
    """
    pts = np.asarray(polygon, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"a polygon must be an [n, 2] array of (x, y), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"a polygon has non-finite coordinates: {pts.tolist()}")
    return pts


def _to_geometry(pts: np.ndarray) -> shapely.Geometry:
    # Fewer than 3 vertices have no area: an empty polygon matches nothing.
    if len(pts) < 3:
        return shapely.Polygon()
    geom = shapely.Polygon(pts)
    if not geom.is_valid:
        # "structure" keeps both lobes of a bow-tie (buffer(0) drops one) and, with
        # keep_collapsed=False, turns zero-area input into an empty polygon instead of a line.
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return geom


def to_geometries(polygons: Sequence[ArrayLike]) -> tuple[list[np.ndarray], np.ndarray]:
    """Validated point arrays and valid polygonal shapely geometries (empty for degenerate input).

    Returns:
        ``(points, geometries)``: the ``[n, 2]`` arrays and an object array of shapely geometries.
    """
    points = [as_points(p) for p in polygons]
    geoms = np.empty(len(points), dtype=object)
    for i, pts in enumerate(points):
        geoms[i] = _to_geometry(pts)
    return points, geoms


def reading_quad(pts: np.ndarray) -> np.ndarray:
    """Four corners (top-left, top-right, bottom-right, bottom-left) standing for a polygon's text box.

    A 4-point polygon is taken as given (ICDAR/SROIE quads are clockwise from the top-left); any other
    polygon is replaced by its axis-aligned bounding box.
    """
    if len(pts) == 4:
        return pts
    if len(pts) == 0:
        return np.zeros((4, 2))
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def quad_aspect_ratio(quad: np.ndarray) -> float:
    """CLEval's quad aspect ratio: mean of top/bottom side lengths over mean of left/right side lengths."""
    top, right, bottom, left = (math.dist(quad[i], quad[(i + 1) % 4]) for i in range(4))
    return ((top + bottom) / 2 + 1e-5) / ((left + right) / 2 + 1e-5)


def harmonic_mean(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (0.0 when both are 0)."""
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
