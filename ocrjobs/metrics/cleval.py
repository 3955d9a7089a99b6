"""CLEval: character-level evaluation of text detection and end-to-end recognition.

After Baek et al., "CLEval: Character-Level Evaluation for Text Detection and Recognition Tasks"
(CVPR Workshops 2020), re-implemented from the paper and the official clovaai/CLEval evaluator
(``cleval/eval_functions.py``, ``box_types.py``), vectorised with shapely 2 and numpy.

Per image, with ``c`` the area-precision threshold (``area_precision_thresh``, 0.5 as in the paper and
the original release; the later release defaults to 0.3):

1. **Pseudo-character centres (PCC).** Each ground-truth box is cut into ``len(text)`` equal parts
   along its reading direction and the centre of each part stands for one character
   (:func:`pseudo_character_centers`). A don't-care box gets CLEval's pseudo length
   ``min(round(0.5 + max(r, 1/r)), 10)`` from its aspect ratio ``r``.
2. **Area precision** ``AP(g, d) = area(g ∩ d) / area(d)``; a don't-care box first loses the parts it
   shares with care boxes, as in the official code.
3. **Don't-care detections** are dropped (neither counted nor matched) when ``AP ≥ c`` against one
   don't-care box, or when the APs against the don't-care boxes having a PCC inside the detection sum
   to ``≥ c``.
4. **Matching** (unions of the three rules, as the official code):
   one-to-one when ``g`` and ``d`` each have exactly one partner with ``AP ≥ c`` and a PCC of ``g`` in
   ``d`` (these partner counts include don't-care boxes, as the official code);
   one-to-many (a split) when at least two valid detections have ``AP ≥ c`` and a PCC of ``g``;
   many-to-one (a merge) when at least two care boxes have a PCC in ``d`` and their APs sum to ``≥ c``.
5. **Detection scores.** A PCC inside a detection matched to its box is a correct character, counted
   once however many detections hold it. The granularity penalty is ``(matched detections − 1)`` per
   split box for recall and ``(matched boxes − 1)`` per merging detection for precision (times
   ``granularity_weight``). Recall ``= (correct − split penalty) / care GT characters``; precision
   ``= (correct − merge penalty) / detected characters``, where detected characters are the PCCs inside
   each matched detection (counted per detection) plus, for each unmatched detection, CLEval's estimate
   ``min(round(0.5 + 1 / (1e-5 + r)), 10)`` with ``r`` its quad aspect ratio (top/bottom over left/right
   side lengths). Note that this official formula estimates a single character for a wide box.
6. **End-to-end.** For each matched box (in index order) its detections are ordered by the first PCC
   they hold, their not-yet-used transcriptions concatenated, and the longest common subsequence (LCS)
   with the box's text is the box's correct characters; those characters are then removed from the
   detections' transcriptions (first occurrence, first detection holding it) so a merging detection's
   characters are not reused by the next box. Recall ``= (LCS chars − split penalty) / care GT chars``,
   precision ``= (LCS chars − merge penalty) / transcribed characters of valid detections``.

Dataset scores sum the counts of all images first (as the official ``calculate_rph``), then divide;
the numerators are clipped at 0 and an empty denominator gives 0.0.

Interpretations and deviations (all deliberate):

* Reading direction of a quad: ``p0 → p1`` (clockwise from the top-left) when its aspect ratio is
  ``≥ 0.5``; otherwise the box is vertical and characters run top to bottom (the official code runs
  them bottom to top; only the order used in step 6 differs).
* Polygons of ``2k ≥ 6`` points are read as a top chain (first half, left to right) and a bottom chain
  (second half, right to left), each cut into equal arc lengths; the official code interpolates on
  integer-truncated vertex indices instead. Polygons of other sizes use their axis-aligned bounding box,
  as does the aspect ratio of any non-quad (the official polygon code has a degenerate aspect ratio).
* A PCC on a detection's boundary counts as inside (shapely ``intersects``).
* In step 6 detections are sorted by (first PCC held, index); the official loop can drop a detection
  when two of them start at the same PCC.
* Case-insensitive scoring upper-cases character by character, keeping string lengths unchanged.
* Polygons are made valid with ``shapely.make_valid``; degenerate ones have no area and match nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import shapely
from numpy.typing import ArrayLike
from rapidfuzz.distance import LCSseq

from ocrjobs.metrics._common import as_points, harmonic_mean, quad_aspect_ratio, reading_quad, to_geometries

__all__ = ["CLEvalCounts", "aggregate_cleval", "cleval_image", "pseudo_character_centers"]

# Quads whose aspect ratio (along p0 -> p1 over across) is below this are read vertically.
_VERTICAL_ASPECT_RATIO = 0.5
# CLEval never estimates more characters than this for a box without a transcription.
_MAX_PSEUDO_CHARS = 10


@dataclass(frozen=True)
class CLEvalCounts:
    """Character counts of one image (or, summed with ``+``, of many).

    Attributes:
        gt_chars: characters of care ground-truth boxes (recall denominator, detection and end-to-end).
        det_chars: estimated characters of valid detections (detection precision denominator).
        det_correct: ground-truth PCCs found inside matched detections, each counted once.
        e2e_pred_chars: transcribed characters of valid detections (end-to-end precision denominator).
        e2e_correct: characters recognised correctly (LCS) in matched detections.
        split_penalty: recall granularity penalty (detections beyond one per box).
        merge_penalty: precision granularity penalty (boxes beyond one per detection).
        num_split: boxes matched to more than one detection.
        num_merge: detections matched to more than one box.
    """

    gt_chars: int = 0
    det_chars: int = 0
    det_correct: int = 0
    e2e_pred_chars: int = 0
    e2e_correct: int = 0
    split_penalty: float = 0.0
    merge_penalty: float = 0.0
    num_split: int = 0
    num_merge: int = 0

    def __add__(self, other: CLEvalCounts) -> CLEvalCounts:
        return CLEvalCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _along(chain: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Points at the given fractions of a polyline's arc length."""
    cumulative = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(chain, axis=0), axis=1))])
    if cumulative[-1] == 0:
        return np.repeat(chain[:1], len(fractions), axis=0)
    s = fractions * cumulative[-1]
    return np.stack([np.interp(s, cumulative, chain[:, 0]), np.interp(s, cumulative, chain[:, 1])], axis=1)


def pseudo_character_centers(polygon: ArrayLike, num_chars: int) -> np.ndarray:
    """CLEval's pseudo-character centres: the box cut into ``num_chars`` equal parts along its text.

    Args:
        polygon: ``[n, 2]`` (x, y) vertices; quads clockwise from the top-left.
        num_chars: number of characters (the transcription's length).

    Returns:
        ``[num_chars, 2]`` centres in reading order (``[0, 2]`` for no characters or no vertices).

    Raises:
        ValueError: the polygon is not ``[n, 2]`` or has non-finite coordinates.

    >>> pseudo_character_centers([[0, 0], [40, 0], [40, 10], [0, 10]], 2).tolist()
    [[10.0, 5.0], [30.0, 5.0]]
    """
    pts = as_points(polygon)
    if num_chars <= 0 or len(pts) == 0:
        return np.zeros((0, 2))
    if len(pts) >= 6 and len(pts) % 2 == 0:
        half = len(pts) // 2
        cuts = np.linspace(0.0, 1.0, num_chars + 1)
        top, bottom = _along(pts[:half], cuts), _along(pts[half:][::-1], cuts)
        return (top[:-1] + top[1:] + bottom[:-1] + bottom[1:]) / 4
    quad = reading_quad(pts)
    if quad_aspect_ratio(quad) >= _VERTICAL_ASPECT_RATIO:
        start, end = (quad[0] + quad[3]) / 2, (quad[1] + quad[2]) / 2
    else:
        start, end = (quad[0] + quad[1]) / 2, (quad[3] + quad[2]) / 2
    fractions = (np.arange(num_chars) + 0.5) / num_chars
    return start + fractions[:, None] * (end - start)


def _dont_care_length(pts: np.ndarray) -> int:
    ratio = quad_aspect_ratio(reading_quad(pts))
    return min(round(0.5 + max(ratio, 1 / ratio)), _MAX_PSEUDO_CHARS)


def _false_positive_chars(pts: np.ndarray) -> int:
    return min(round(0.5 + 1 / (1e-5 + quad_aspect_ratio(reading_quad(pts)))), _MAX_PSEUDO_CHARS)


def _upper(text: str) -> str:
    # str.upper() may change the length ("ß" -> "SS"); characters are the unit here, so keep each one.
    return "".join(u if len(u := ch.upper()) == 1 else ch for ch in text)


def _lcs(a: str, b: str) -> str:
    deleted = {op.src_pos for op in LCSseq.editops(a, b) if op.tag == "delete"}
    return "".join(ch for i, ch in enumerate(a) if i not in deleted)


def cleval_image(
    gt_polys: Sequence[ArrayLike],
    gt_texts: Sequence[str],
    gt_ignore: Sequence[bool],
    pred_polys: Sequence[ArrayLike],
    pred_texts: Sequence[str] | None = None,
    *,
    area_precision_thresh: float = 0.5,
    granularity_weight: float = 1.0,
    case_sensitive: bool = True,
) -> CLEvalCounts:
    """CLEval counts of one image (see the module docstring for the rules).

    Args:
        gt_polys: ground-truth polygons, ``[n, 2]`` arrays of (x, y) pixels.
        gt_texts: ground-truth transcriptions (their lengths are the character counts).
        gt_ignore: don't-care flags (ICDAR ``###``).
        pred_polys: predicted polygons.
        pred_texts: predicted transcriptions; ``None`` scores detection only and leaves the end-to-end
            counts at zero correct characters.
        area_precision_thresh: the area-precision threshold ``c``.
        granularity_weight: weight of the split/merge penalty.
        case_sensitive: whether end-to-end matching compares case.

    Returns:
        The image's :class:`CLEvalCounts`.

    Raises:
        ValueError: a length mismatch, or a polygon not shaped ``[n, 2]`` or with non-finite coordinates.
    """
    if not len(gt_polys) == len(gt_texts) == len(gt_ignore):
        raise ValueError(
            f"{len(gt_polys)} ground-truth polygons, {len(gt_texts)} texts, {len(gt_ignore)} ignore flags"
        )
    if pred_texts is not None and len(pred_texts) != len(pred_polys):
        raise ValueError(f"{len(pred_polys)} predicted polygons but {len(pred_texts)} texts")
    gt_pts, gts = to_geometries(gt_polys)
    pred_pts, preds = to_geometries(pred_polys)
    care = ~np.asarray(gt_ignore, dtype=bool).reshape(-1)
    dont_care = ~care
    pred_strs = list(pred_texts) if pred_texts is not None else [""] * len(preds)
    gt_chars = sum(len(t) for t, keep in zip(gt_texts, care, strict=True) if keep)
    if len(preds) == 0:
        return CLEvalCounts(gt_chars=gt_chars)

    # 1. Pseudo-character centres, flattened: owner[k] is the box of centre k, char_pos[k] its position.
    lengths = [
        len(t) if keep else _dont_care_length(p) for t, keep, p in zip(gt_texts, care, gt_pts, strict=True)
    ]
    centres = [pseudo_character_centers(p, n) for p, n in zip(gt_pts, lengths, strict=True)]
    counts = np.array([len(c) for c in centres], dtype=np.int64)
    owner = np.repeat(np.arange(len(gts)), counts)
    char_pos = np.concatenate([np.arange(n) for n in counts]) if len(counts) else np.zeros(0, np.int64)
    points = np.concatenate(centres) if len(centres) else np.zeros((0, 2))
    tree = shapely.STRtree(preds)
    inside = np.zeros((len(points), len(preds)), dtype=bool)
    pt_idx, det_idx = tree.query(shapely.points(points), predicate="intersects")
    inside[pt_idx, det_idx] = True
    pcc_count = np.zeros((len(gts), len(preds)), dtype=np.int64)
    np.add.at(pcc_count, (owner[pt_idx], det_idx), 1)
    has_pcc = pcc_count > 0

    # 2. Area precision, with don't-care boxes minus what they share with care boxes.
    ap_geoms = gts.copy()
    for g in np.flatnonzero(dont_care).tolist():
        overlapping = gts[care][shapely.intersects(gts[care], gts[g])]
        if len(overlapping):
            ap_geoms[g] = shapely.difference(gts[g], shapely.union_all(overlapping))
    pred_area = shapely.area(preds)
    gt_idx, det_idx = tree.query(ap_geoms, predicate="intersects")
    inter = shapely.area(shapely.intersection(ap_geoms[gt_idx], preds[det_idx]))
    ap = np.zeros((len(gts), len(preds)))
    denom = pred_area[det_idx]
    ap[gt_idx, det_idx] = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
    ap_ok = ap >= area_precision_thresh

    # 3. Detections inside don't-care regions.
    det_valid = np.ones(len(preds), dtype=bool)
    if dont_care.any():
        dc_ap_sum = (ap[dont_care] * has_pcc[dont_care]).sum(axis=0)
        det_valid = ~(ap_ok[dont_care].any(axis=0) | (dc_ap_sum >= area_precision_thresh))

    # 4. Matching.
    valid_pair = care[:, None] & det_valid[None, :]
    candidate = ap_ok & has_pcc
    one_to_one = (
        candidate & valid_pair & (candidate.sum(axis=1) == 1)[:, None] & (candidate.sum(axis=0) == 1)[None, :]
    )
    split_pair = candidate & valid_pair
    one_to_many = split_pair & (split_pair.sum(axis=1) >= 2)[:, None]
    merge_pair = has_pcc & valid_pair
    merges = (merge_pair.sum(axis=0) >= 2) & ((ap * merge_pair).sum(axis=0) >= area_precision_thresh)
    match = one_to_one | one_to_many | (merge_pair & merges[None, :])

    # 5. Detection counts: centres count only inside detections matched to their own box.
    inside &= match[owner]
    dets_per_gt = match.sum(axis=1)
    gts_per_det = match.sum(axis=0)
    unmatched = np.flatnonzero(det_valid & (gts_per_det == 0))
    det_chars = int(inside.sum()) + sum(_false_positive_chars(pred_pts[d]) for d in unmatched)

    # 6. End-to-end: LCS over each box's detections in reading order, consuming detected characters.
    fold = (lambda s: s) if case_sensitive else _upper
    remaining = [fold(t) for t in pred_strs]
    e2e_correct = 0
    for g in np.flatnonzero(dets_per_gt).tolist():
        held = inside[owner == g]
        first = char_pos[owner == g]
        order = sorted(np.flatnonzero(match[g]).tolist(), key=lambda d: (first[held[:, d]].min(), d))
        common = _lcs(fold(gt_texts[g]), "".join(remaining[d] for d in order))
        e2e_correct += len(common)
        for ch in common:
            holder = next(d for d in order if ch in remaining[d])
            remaining[holder] = remaining[holder].replace(ch, "", 1)

    return CLEvalCounts(
        gt_chars=gt_chars,
        det_chars=det_chars,
        det_correct=int(inside.any(axis=1).sum()),
        e2e_pred_chars=sum(len(pred_strs[d]) for d in np.flatnonzero(det_valid)),
        e2e_correct=e2e_correct,
        split_penalty=granularity_weight * float(np.maximum(dets_per_gt - 1, 0).sum()),
        merge_penalty=granularity_weight * float(np.maximum(gts_per_det - 1, 0).sum()),
        num_split=int((dets_per_gt > 1).sum()),
        num_merge=int((gts_per_det > 1).sum()),
    )


def _ratio(numerator: float, denominator: int) -> float:
    return 0.0 if denominator == 0 else max(0.0, numerator) / denominator


def aggregate_cleval(counts: Iterable[CLEvalCounts]) -> dict[str, float]:
    """Dataset CLEval scores from per-image counts (summed first, then divided).

    Args:
        counts: per-image counts from :func:`cleval_image`.

    Returns:
        ``{"det_precision", "det_recall", "det_hmean", "e2e_precision", "e2e_recall", "e2e_hmean"}``.
    """
    t = sum(counts, CLEvalCounts())
    det_recall = _ratio(t.det_correct - t.split_penalty, t.gt_chars)
    det_precision = _ratio(t.det_correct - t.merge_penalty, t.det_chars)
    e2e_recall = _ratio(t.e2e_correct - t.split_penalty, t.gt_chars)
    e2e_precision = _ratio(t.e2e_correct - t.merge_penalty, t.e2e_pred_chars)
    return {
        "det_precision": det_precision,
        "det_recall": det_recall,
        "det_hmean": harmonic_mean(det_precision, det_recall),
        "e2e_precision": e2e_precision,
        "e2e_recall": e2e_recall,
        "e2e_hmean": harmonic_mean(e2e_precision, e2e_recall),
    }
