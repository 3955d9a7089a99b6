"""DBNet post-processing: a probability map -> text polygons with scores (numpy/cv2/pyclipper/shapely).

As in the DBNet paper (Liao et al., AAAI 2020, section 3.5) and docTR's ``DBPostProcessor``: binarize
the probability map at ``thresh``, trace the connected regions, score each by its mean probability,
grow each kept kernel back to the text's extent, and map it to original image coordinates. No torch:
this runs on plain arrays, in a predictor or as a separate CPU stage.

>>> import numpy as np
>>> prob = np.zeros((64, 64), np.float32)
>>> prob[20:30, 10:50] = 0.9
>>> [(poly.shape, round(score, 2)) for poly, score in DBPostProcessor()(prob)]
[((4, 2), 0.9)]
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ocrjobs.geometry import (
    clip_polygon,
    expand_shrunk_polygon,
    min_area_quad,
    polygon_area,
    reading_order,
    unclip_polygon,
)

__all__ = ["DBPostProcessor"]


@dataclass(frozen=True)
class DBPostProcessor:
    """Turn a DB probability map into polygons in original image coordinates.

    Its fields are the ``postprocess`` section of a detection model folder's ``config.yaml``.

    Attributes:
        thresh: probability above which a pixel belongs to a text kernel.
        box_thresh: minimum mean probability inside a region's contour to keep it.
        unclip_ratio: DB's expansion ``D = A·r / L`` of each kernel (1.5 in the paper; larger gives
            looser boxes). Ignored when ``shrink_ratio`` is set.
        use_polygon: return the expanded contour polygon (curved text) instead of a rotated quad.
        max_candidates: at most this many regions (the largest) are examined per map.
        min_size: regions whose shorter side is below this many map pixels are dropped.
        shrink_ratio: if set, expand kernels with the exact inverse of the training shrink
            (:func:`~ocrjobs.geometry.expand_shrunk_polygon`) instead of ``unclip_ratio``; suits maps
            that match their targets closely (e.g. the targets themselves). That inverse multiplies
            errors in a kernel's thickness by about ``1 / r²`` (6x at 0.4), so in this mode a quad
            kernel is the contour's min-area rectangle thinned to the contour's own area: the
            rectangle around a rotated pixel staircase is up to 2 px too thick.

    Raises:
        ValueError: a threshold lies outside [0, 1] or a size/ratio is not positive.
    """

    thresh: float = 0.3
    box_thresh: float = 0.6
    unclip_ratio: float = 1.5
    use_polygon: bool = False
    max_candidates: int = 1000
    min_size: float = 3
    shrink_ratio: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.thresh <= 1.0 and 0.0 <= self.box_thresh <= 1.0):
            raise ValueError(f"thresh and box_thresh must be in [0, 1], got {self.thresh}, {self.box_thresh}")
        if self.unclip_ratio <= 0 or self.max_candidates < 1 or self.min_size < 0:
            raise ValueError("unclip_ratio and max_candidates must be positive and min_size non-negative")
        if self.shrink_ratio is not None and not 0.0 < self.shrink_ratio <= 1.0:
            raise ValueError(f"shrink_ratio must be in (0, 1], got {self.shrink_ratio}")

    def _expand(self, poly: np.ndarray) -> np.ndarray:
        if self.shrink_ratio is not None:
            return expand_shrunk_polygon(poly, self.shrink_ratio)
        return unclip_polygon(poly, self.unclip_ratio)

    @staticmethod
    def _mean_inside(prob_map: np.ndarray, contour: np.ndarray) -> float:
        """Mean probability over the pixels inside a contour (computed on its bounding box only)."""
        x0, y0 = contour.min(axis=0)
        x1, y1 = contour.max(axis=0)
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
        cv2.fillPoly(mask, [(contour - [x0, y0]).reshape(-1, 1, 2).astype(np.int32)], 1)
        return float(cv2.mean(prob_map[y0 : y1 + 1, x0 : x1 + 1], mask=mask)[0])

    @staticmethod
    def _short_side(poly: np.ndarray) -> float:
        quad = min_area_quad(poly)
        return float(min(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[1])))

    def _kernel_quad(self, contour: np.ndarray) -> np.ndarray:
        """The contour's min-area rectangle, thinned to the contour's area in exact-inverse mode."""
        (cx, cy), (w, h), angle = cv2.minAreaRect(contour.astype(np.float32))
        if self.shrink_ratio is not None and min(w, h) > 0:
            area = polygon_area(contour)
            w, h = (w, area / w) if w >= h else (area / h, h)
        return min_area_quad(cv2.boxPoints(((cx, cy), (w, h), angle)))

    def _region(self, prob_map: np.ndarray, contour: np.ndarray) -> tuple[np.ndarray, float] | None:
        """One traced region -> (expanded polygon in map coordinates, score), or None if rejected."""
        if self.use_polygon:
            # A small tolerance keeps curved outlines while dropping the pixel staircase.
            kernel = cv2.approxPolyDP(contour.reshape(-1, 1, 2), 0.002 * cv2.arcLength(contour, True), True)
            kernel = kernel.reshape(-1, 2).astype(np.float32)
            if len(kernel) < 4:
                return None
        else:
            kernel = self._kernel_quad(contour)
        if self._short_side(kernel) < self.min_size:
            return None
        score = self._mean_inside(prob_map, contour)
        if score < self.box_thresh:
            return None
        expanded = self._expand(kernel)
        # As in DB's reference code, an expanded region must clear min_size by a 2-pixel margin.
        if len(expanded) < 3 or self._short_side(expanded) < self.min_size + 2:
            return None
        return (expanded if self.use_polygon else min_area_quad(expanded)), score

    def __call__(
        self,
        prob_map: np.ndarray,
        scale_x: float = 1.0,
        scale_y: float = 1.0,
        orig_w: int | None = None,
        orig_h: int | None = None,
    ) -> list[tuple[np.ndarray, float]]:
        """Extract text regions from one probability map.

        Args:
            prob_map: ``[H, W]`` probabilities (float), for the image as the model saw it (unpadded).
            scale_x: original-image pixels per map pixel horizontally (``orig_w / W``).
            scale_y: original-image pixels per map pixel vertically.
            orig_w: original image width for clipping; ``None`` uses ``W * scale_x``.
            orig_h: original image height for clipping; ``None`` uses ``H * scale_y``.

        Returns:
            ``(polygon, score)`` pairs in reading order: float32 ``[4, 2]`` quads (``[n, 2]`` with
            ``use_polygon``) in original image coordinates, clipped to the image, and the mean
            probability inside the region.

        Raises:
            ValueError: ``prob_map`` is not two-dimensional.
        """
        if prob_map.ndim != 2:
            raise ValueError(f"prob_map must be [H, W], got shape {prob_map.shape}")
        height, width = prob_map.shape
        orig_w = round(width * scale_x) if orig_w is None else orig_w
        orig_h = round(height * scale_y) if orig_h is None else orig_h
        prob = prob_map.astype(np.float32, copy=False)
        bitmap = (prob > self.thresh).astype(np.uint8)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        if len(contours) > self.max_candidates:
            contours = sorted(contours, key=cv2.contourArea, reverse=True)[: self.max_candidates]
        results: list[tuple[np.ndarray, float]] = []
        for contour in contours:
            region = self._region(prob, contour.reshape(-1, 2))
            if region is None:
                continue
            poly, score = region
            poly = poly * np.array([scale_x, scale_y], dtype=np.float32)
            results.append((clip_polygon(poly, orig_w, orig_h), score))
        return [results[i] for i in reading_order([poly for poly, _ in results])]
