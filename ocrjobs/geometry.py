"""Polygon geometry shared by detection, bulk jobs, evaluation and data preparation.

Conventions: a polygon is a float32 array ``[n, 2]`` of ``(x, y)`` pixel coordinates (x to the right,
y down); quads are ordered clockwise *as seen on screen* starting at the top-left corner. Images are
uint8 ``[h, w, 3]`` RGB arrays (or ``[h, w]`` gray).

Polygon offsetting (:func:`shrink_polygon`, :func:`unclip_polygon`) is Vatti clipping with pyclipper,
with the offset distances of DBNet (Liao et al., "Real-time Scene Text Detection with Differentiable
Binarization", AAAI 2020). Only numpy, cv2, pyclipper and shapely are used, so everything here runs in
CPU data pipelines without torch.

>>> import numpy as np
>>> box = np.array([[0, 0], [100, 0], [100, 20], [0, 20]], np.float32)
>>> round(polygon_area(shrink_polygon(box, 0.4)))
516
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

__all__ = [
    "VERTICAL_RATIO",
    "clip_polygon",
    "crop_polygon",
    "crop_quad",
    "expand_shrunk_polygon",
    "is_turned",
    "min_area_quad",
    "order_quad",
    "polygon_area",
    "polygon_iou",
    "polygon_perimeter",
    "reading_order",
    "shapely_polygon",
    "shrink_polygon",
    "span_quad",
    "unclip_polygon",
]

# pyclipper works on integers: coordinates are scaled by this factor so offsets keep sub-pixel precision.
_CLIPPER_SCALE = 256.0
_MAX_MITRE_TURN = 2.0 * math.pi / 3.0


def _as_points(poly: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(poly, dtype=np.float64).reshape(-1, 2)


def polygon_area(poly: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Unsigned area of a simple polygon (shoelace formula).

    Args:
        poly: ``[n, 2]`` vertices; fewer than 3 give 0.

    Returns:
        The area in square pixels.
    """
    p = _as_points(poly)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_perimeter(poly: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Length of the closed boundary of a polygon.

    Args:
        poly: ``[n, 2]`` vertices.

    Returns:
        The perimeter in pixels (0 for fewer than 2 vertices).
    """
    p = _as_points(poly)
    if len(p) < 2:
        return 0.0
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def _offset(poly: np.ndarray, distance: float, join: int) -> np.ndarray:
    """Offset a polygon by ``distance`` pixels (negative shrinks); the largest resulting piece or ``[0, 2]``."""
    p = _as_points(poly)
    empty = np.zeros((0, 2), dtype=np.float32)
    if len(p) < 3:
        return empty
    offsetter = pyclipper.PyclipperOffset()
    # Round joins are approximated by arcs whose deviation is at most a quarter pixel.
    offsetter.ArcTolerance = 0.25 * _CLIPPER_SCALE
    offsetter.AddPath(
        np.round(p * _CLIPPER_SCALE).astype(np.int64).tolist(), join, pyclipper.ET_CLOSEDPOLYGON
    )
    pieces = offsetter.Execute(distance * _CLIPPER_SCALE)
    if not pieces:
        return empty
    best = max(pieces, key=lambda piece: polygon_area(piece))
    return (np.asarray(best, dtype=np.float64) / _CLIPPER_SCALE).astype(np.float32)


def shrink_polygon(poly: np.ndarray, ratio: float) -> np.ndarray:
    """Shrink a polygon inwards by ``D = A(1 - r²) / L`` (DBNet's text-kernel shrink).

    Args:
        poly: ``[n, 2]`` vertices.
        ratio: shrink ratio ``r`` in ``(0, 1]``; DBNet uses 0.4 (smaller means thinner kernels).

    Returns:
        The shrunk polygon ``[m, 2]`` float32 (the largest piece if it splits), or an empty ``[0, 2]``
        array when it vanishes.

    Raises:
        ValueError: ``ratio`` is outside ``(0, 1]``.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"shrink ratio must be in (0, 1], got {ratio}")
    perimeter = polygon_perimeter(poly)
    if perimeter == 0.0:
        return np.zeros((0, 2), dtype=np.float32)
    distance = polygon_area(poly) * (1.0 - ratio**2) / perimeter
    return _offset(np.asarray(poly), -distance, pyclipper.JT_MITER)


def unclip_polygon(poly: np.ndarray, ratio: float) -> np.ndarray:
    """Expand a polygon outwards by ``D = A·r / L`` with rounded corners (DBNet's unclip).

    Args:
        poly: ``[n, 2]`` vertices.
        ratio: unclip ratio ``r`` (> 0); DBNet uses 1.5.

    Returns:
        The expanded polygon ``[m, 2]`` float32, or ``[0, 2]`` for a degenerate input.

    Raises:
        ValueError: ``ratio`` is not positive.
    """
    if ratio <= 0.0:
        raise ValueError(f"unclip ratio must be > 0, got {ratio}")
    perimeter = polygon_perimeter(poly)
    if perimeter == 0.0:
        return np.zeros((0, 2), dtype=np.float32)
    distance = polygon_area(poly) * ratio / perimeter
    return _offset(np.asarray(poly), distance, pyclipper.JT_ROUND)


def expand_shrunk_polygon(poly: np.ndarray, shrink_ratio: float) -> np.ndarray:
    """Invert :func:`shrink_polygon`: grow a kernel back to the polygon it was shrunk from.

    DBNet's ``unclip_polygon(kernel, 1.5)`` is an empirical inverse: for long text lines it gives
    polygons thinner than the originals (the kernel of a ``w x h`` line is ``0.16 h`` high with
    ``r = 0.4``, and ``A·1.5/L`` grows it back to only ``0.4 h``). This solves for the distance ``D`` whose
    mitred offset ``P`` satisfies ``D = A(P)(1 - r²) / L(P)``, using the mitred-offset identities
    ``A(P) = A' + L'D + cD²`` and ``L(P) = L' + 2cD`` with ``c = Σ tan(θᵢ / 2)`` over the exterior turning
    angles ``θᵢ`` (4 for a rectangle). It is exact for convex polygons whose edges all survived the
    shrink, and close for the pixel-traced contours of a probability map.

    Args:
        poly: the shrunk polygon ``[n, 2]`` (a kernel).
        shrink_ratio: the ``ratio`` given to :func:`shrink_polygon` when the kernel was made.

    Returns:
        The expanded polygon ``[m, 2]`` float32 with mitred corners, or ``[0, 2]`` for a degenerate input.

    Raises:
        ValueError: ``shrink_ratio`` is outside ``(0, 1]``.
    """
    if not 0.0 < shrink_ratio <= 1.0:
        raise ValueError(f"shrink ratio must be in (0, 1], got {shrink_ratio}")
    p = _as_points(poly)
    area, perimeter = polygon_area(p), polygon_perimeter(p)
    if area == 0.0 or perimeter == 0.0:
        return np.zeros((0, 2), dtype=np.float32)
    edges = np.roll(p, -1, axis=0) - p
    headings = np.arctan2(edges[:, 1], edges[:, 0])
    turns = (headings - np.roll(headings, 1) + np.pi) % (2.0 * np.pi) - np.pi
    # Orientation-independent: a counter-clockwise polygon has negative turns that sum to -2π.
    turns *= np.sign(turns.sum()) or 1.0
    # pyclipper squares off mitres longer than 2·D (MiterLimit 2), i.e. turns sharper than 120°.
    corner = float(np.tan(np.clip(turns, -_MAX_MITRE_TURN, _MAX_MITRE_TURN) / 2.0).sum())
    # Traced contours have many tiny turns; c can never be below π (the limit of round corners).
    corner = max(corner, math.pi)
    r2 = shrink_ratio**2
    # Positive root of c(1 + r²)D² + r²L'D - A'(1 - r²) = 0.
    a, b, c = corner * (1.0 + r2), r2 * perimeter, -area * (1.0 - r2)
    distance = (-b + math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
    return _offset(p, distance, pyclipper.JT_MITER)


def shapely_polygon(poly: np.ndarray | Sequence[Sequence[float]]) -> Polygon:
    """The polygon as a shapely ``Polygon`` (``[n, 2]`` or flat ``[x0, y0, ...]`` points)."""
    shape = Polygon(_as_points(poly))
    # A self-intersecting polygon (e.g. a traced contour) is repaired rather than rejected.
    return shape if shape.is_valid else shape.buffer(0)


def polygon_iou(
    a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]
) -> float:
    """Intersection over union of two polygons.

    Args:
        a: ``[n, 2]`` vertices.
        b: ``[m, 2]`` vertices.

    Returns:
        IoU in ``[0, 1]``; 0 when either polygon has no area.
    """
    if len(_as_points(a)) < 3 or len(_as_points(b)) < 3:
        return 0.0
    pa, pb = shapely_polygon(a), shapely_polygon(b)
    union = pa.union(pb).area
    if union <= 0.0:
        return 0.0
    return float(pa.intersection(pb).area / union)


def order_quad(pts: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Order 4 corners clockwise (on screen) starting at the top-left.

    The corners are sorted by angle around their centroid; the top-left corner is the start of the
    edge pointing most nearly to the right (+x), so the order is stable under rotations below 45°.

    Args:
        pts: ``[4, 2]`` corners in any order.

    Returns:
        ``[4, 2]`` float32 as top-left, top-right, bottom-right, bottom-left.

    Raises:
        ValueError: ``pts`` does not hold exactly 4 points.
    """
    p = _as_points(pts)
    if len(p) != 4:
        raise ValueError(f"a quad needs 4 points, got {len(p)}")
    center = p.mean(axis=0)
    # With y pointing down, increasing atan2 angle runs clockwise on screen.
    p = p[np.argsort(np.arctan2(p[:, 1] - center[1], p[:, 0] - center[0]), kind="stable")]
    edges = np.roll(p, -1, axis=0) - p
    rightward = edges[:, 0] / np.maximum(np.linalg.norm(edges, axis=1), 1e-12)
    start = int(np.argmax(rightward))
    return np.roll(p, -start, axis=0).astype(np.float32)


def min_area_quad(poly: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """The minimum-area rotated rectangle around a polygon or point set.

    Args:
        poly: ``[n, 2]`` points (n >= 1).

    Returns:
        ``[4, 2]`` float32 corners ordered by :func:`order_quad`.

    Raises:
        ValueError: ``poly`` is empty.
    """
    p = _as_points(poly)
    if len(p) == 0:
        raise ValueError("min_area_quad needs at least one point")
    # boxPoints' own corner order changed between OpenCV 4 and 5; order_quad makes it version-proof.
    return order_quad(cv2.boxPoints(cv2.minAreaRect(p.astype(np.float32))))


def clip_polygon(poly: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clamp polygon vertices into the image rectangle ``[0, width] x [0, height]``.

    Vertices are clamped rather than the shape intersected with the image, so the vertex count (and a
    quad's corner order) is kept; a polygon far outside the image collapses onto the border.

    Args:
        poly: ``[n, 2]`` vertices.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        ``[n, 2]`` float32.
    """
    p = np.asarray(poly, dtype=np.float32).reshape(-1, 2).copy()
    np.clip(p[:, 0], 0.0, float(width), out=p[:, 0])
    np.clip(p[:, 1], 0.0, float(height), out=p[:, 1])
    return p


VERTICAL_RATIO = 1.5
"""A region more than this many times taller than wide is a line printed along the page's height."""


def is_turned(polygon: np.ndarray | Sequence[Sequence[float]]) -> bool:
    """Whether :func:`crop_polygon` turns this region a quarter turn (it is taller than
    :data:`VERTICAL_RATIO` times its width): a line printed along the page's height, whose crop may then
    read upside down (:func:`ocrjobs.pipeline.crops_to_read` reads such crops both ways).

    >>> is_turned([[0, 0], [20, 0], [20, 100], [0, 100]]), is_turned([[0, 0], [100, 0], [100, 20], [0, 20]])
    (True, False)

    Raises:
        ValueError: ``polygon`` has fewer than 3 points.
    """
    _, width_px, height_px = _quad_and_size(polygon)
    return bool(height_px > VERTICAL_RATIO * width_px)


def _quad_and_size(polygon: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, float, float]:
    """The region's quad (tl, tr, br, bl) and its mean width and height along its sides."""
    p = _as_points(polygon)
    if len(p) < 3:
        raise ValueError(f"crop_polygon needs at least 3 points, got {len(p)}")
    quad = order_quad(p) if len(p) == 4 else min_area_quad(p)
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)  # top, right, bottom, left
    return quad, float(sides[0] + sides[2]) / 2.0, float(sides[1] + sides[3]) / 2.0


def crop_quad(
    polygon: np.ndarray | Sequence[Sequence[float]],
    vertical_ratio: float | None = VERTICAL_RATIO,
    upside_down: bool = False,
) -> np.ndarray:
    """The quad :func:`crop_polygon` maps onto its crop, corners in the crop's order: its top-left,
    top-right, bottom-right and bottom-left (see the orientation rule there); ``upside_down`` gives
    the quad of that crop turned 180°.

    Raises:
        ValueError: ``polygon`` has fewer than 3 points.
    """
    quad, width_px, height_px = _quad_and_size(polygon)
    if vertical_ratio is not None and height_px > vertical_ratio * width_px:
        # The long edges are right (tr -> br, start 1) and left (bl -> tl, start 3): the one with the
        # larger rightward component becomes the top edge.
        start = 1 if quad[2, 0] - quad[1, 0] >= quad[0, 0] - quad[3, 0] else 3
        quad = np.roll(quad, -start, axis=0)
    return np.roll(quad, 2, axis=0) if upside_down else quad


def span_quad(quad: np.ndarray, start: float, end: float) -> np.ndarray:
    """The part of a crop's quad (:func:`crop_quad`) between fractions ``start`` and ``end`` of the
    crop's width, in image coordinates (perspective-correct, as :func:`crop_polygon` warps).

    >>> span_quad(np.array([[0, 0], [100, 0], [100, 20], [0, 20]], np.float32), 0.25, 0.5).tolist()
    [[25.0, 0.0], [50.0, 0.0], [50.0, 20.0], [25.0, 20.0]]
    """
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    transform = cv2.getPerspectiveTransform(unit, np.asarray(quad, np.float32))
    points = np.array([[[start, 0.0], [end, 0.0], [end, 1.0], [start, 1.0]]], dtype=np.float32)
    return cv2.perspectiveTransform(points, transform)[0].astype(np.float32)


def crop_polygon(
    image: np.ndarray,
    polygon: np.ndarray,
    height: int | None = None,
    vertical_ratio: float | None = VERTICAL_RATIO,
) -> np.ndarray:
    """Cut a text region out of an image, rectified to an upright axis-aligned crop.

    A quad is warped by the perspective transform that maps its corners to a rectangle; any other
    polygon uses its :func:`min_area_quad`. Orientation rule: the crop's top edge is the quad edge
    pointing most nearly to the right, i.e. text is assumed to be rotated by less than 45°. A region
    that then comes out more than ``vertical_ratio`` times taller than wide is taken as horizontal text
    rotated towards the vertical, and its long side becomes the width instead (the long edge pointing
    more to the right becomes the top), so text lines read left to right with ``width >= height``.

    Args:
        image: ``[h, w, 3]`` (or ``[h, w]``) uint8 image.
        polygon: ``[n, 2]`` region in the image's pixel coordinates (n >= 3).
        height: output height; the width follows the region's aspect ratio. ``None`` keeps the
            region's own size.
        vertical_ratio: height/width above which a crop is turned to lie horizontally; ``None``
            never turns crops (for scripts written in vertical columns).

    Returns:
        The crop, ``[out_h, out_w(, 3)]`` with the image's dtype; an empty ``[0, 0(, 3)]`` array
        when the region is thinner than a pixel.

    Raises:
        ValueError: ``polygon`` has fewer than 3 points or ``height`` is below 1.
    """
    if height is not None and height < 1:
        raise ValueError(f"crop height must be >= 1, got {height}")
    quad = crop_quad(polygon, vertical_ratio)
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)  # top, right, bottom, left
    width_px, height_px = (sides[0] + sides[2]) / 2.0, (sides[1] + sides[3]) / 2.0
    out_w, out_h = round(width_px), round(height_px)
    if height is not None and out_w >= 1 and out_h >= 1:
        out_w, out_h = max(1, round(width_px * height / height_px)), height
    if out_w < 1 or out_h < 1:
        return np.zeros((0, 0, *image.shape[2:]), dtype=image.dtype)
    # The quad's corners map onto the crop's outer pixel edges (pixel i spans [i, i + 1)).
    target = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], dtype=np.float32)
    transform = cv2.getPerspectiveTransform(quad.astype(np.float32), target)
    return cv2.warpPerspective(
        image, transform, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def reading_order(polygons: Sequence[np.ndarray]) -> list[int]:
    """Indices that put text regions in reading order: lines top to bottom, each left to right.

    Rule: regions are visited by the vertical centre of their bounding box. A region joins the
    existing line whose vertical extent (the mean top and mean bottom of its members) overlaps the
    region's own extent by at least half of the smaller of the two heights, choosing the line with the
    largest overlap; otherwise it starts a new line. Lines are ordered by the mean vertical centre of
    their members, and regions within a line by their left edge. Because a line's extent is an average
    of its members, gently skewed lines stay together while the next line down stays separate.

    Args:
        polygons: ``[n, 2]`` arrays in pixel coordinates.

    Returns:
        A permutation of ``range(len(polygons))``.
    """
    if len(polygons) == 0:
        return []
    boxes = np.array(
        [
            [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] if len(p) else [0.0, 0.0, 0.0, 0.0]
            for p in (_as_points(poly) for poly in polygons)
        ],
        dtype=np.float64,
    )
    tops, bottoms = boxes[:, 1], boxes[:, 3]
    centers = (tops + bottoms) / 2.0
    lines: list[list[int]] = []
    line_tops: list[float] = []
    line_bottoms: list[float] = []
    for i in np.argsort(centers, kind="stable"):
        best, best_overlap = -1, 0.0
        for k in range(len(lines)):
            overlap = min(bottoms[i], line_bottoms[k]) - max(tops[i], line_tops[k])
            smaller = min(bottoms[i] - tops[i], line_bottoms[k] - line_tops[k])
            if overlap >= 0.5 * smaller and overlap > best_overlap:
                best, best_overlap = k, overlap
        if best < 0:
            lines.append([int(i)])
            line_tops.append(float(tops[i]))
            line_bottoms.append(float(bottoms[i]))
        else:
            lines[best].append(int(i))
            line_tops[best] = float(tops[lines[best]].mean())
            line_bottoms[best] = float(bottoms[lines[best]].mean())
    lines.sort(key=lambda members: float(centers[members].mean()))
    return [i for members in lines for i in sorted(members, key=lambda j: (boxes[j, 0], boxes[j, 1]))]
