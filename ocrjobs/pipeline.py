"""The OCR chain every host runs: detect -> crop -> recognise -> assemble lines.

The bulk job (:mod:`ocrjobs.jobs.bulk_udfs`), the Serve deployments (:mod:`ocrjobs.serve.app`) and
``ocrjobs eval`` call these functions; the hosts only move batches between them (Ray Data blocks,
Serve requests and handles, a loop over a dataset):

1. :func:`detect_and_crop`: detect text regions in a batch of images and cut each out, rectified and
   upright (:func:`ocrjobs.geometry.crop_polygon`); regions thinner than a pixel are left out.
2. recognition: a reader reads all crops of the batch in one call (a
   :class:`~ocrjobs.recognition.predictor.RecognitionPredictor`, an in-process
   :class:`~ocrjobs.recognition.ensemble.Ensemble`, or Serve's ensemble over member deployments).
   The crops to read are :func:`crops_to_read`'s: every region's crop, then the crop of each line
   printed along the page's height turned 180° (such a line may read either way up; the reading the
   recognizer is surer of wins in step 3).
3. :func:`assemble_lines`: each region with its reading becomes a :class:`ocrjobs.results.Line`
   (ensemble members' own readings included, and word boxes where a CTC recognizer's alignment
   places its characters: :func:`ocrjobs.results.words_from_spans`; a turned line read without one is
   split in proportion to its text along its reading direction); lines read under the reader's
   ``drop_score`` leave the page (:func:`keep_line`). :func:`page_text` joins a page's lines.

:func:`read_detections` is steps 2-3 for a batch of pages and :func:`ocr_images` the whole chain. A
page's lines stay in the detector's reading order.

Results depend a little on how inputs are batched (the detector pads the images of a batch to one
size, CTC recognizers pad crops to the widest crop of their batch), so two hosts agree exactly when
they batch alike; ``tests/integration/test_serve.py`` checks that the three hosts do on the same
receipts one page at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ocrjobs.geometry import crop_polygon, crop_quad, is_turned
from ocrjobs.results import Line, Word, split_words, words_from_spans

if TYPE_CHECKING:
    from ocrjobs.detection.predictor import DetectedRegion

__all__ = [
    "Detection",
    "Reader",
    "Reading",
    "assemble_lines",
    "crops_to_read",
    "detect_and_crop",
    "keep_line",
    "ocr_images",
    "page_text",
    "predictor_overrides",
    "read_detections",
    "split_counts",
    "turned_regions",
]


class Reading(Protocol):
    """What a reader returns per crop: a ``RecognizedText`` or an ``EnsembleResult``."""

    text: str
    score: float


class Reader(Protocol):
    """Reads line crops in one call: a recognition predictor or an ensemble."""

    @property
    def drop_score(self) -> float:
        """Page lines read with a lower confidence are left out."""
        ...

    def __call__(self, crops: Sequence[np.ndarray]) -> Sequence[Any]: ...


@dataclass
class Detection:
    """The detected regions of one image, each with its rectified crop.

    Attributes:
        polygons: float32 ``[n, 2]`` regions in image pixels, in reading order.
        scores: detection score of each region (``None`` where nothing was detected: a whole-image line).
        crops: the rectified ``[h, w, 3]`` crop of each region.
    """

    polygons: list[np.ndarray] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def whole_image(cls, image: np.ndarray) -> Detection:
        """An image that is itself one line (``task: recognize``/``latex``): its rectangle, no score."""
        h, w = float(image.shape[0]), float(image.shape[1])
        box = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], np.float32)
        return cls([box], [None], [image])


def keep_line(text: str, rec_score: float, drop_score: float) -> bool:
    """Whether a page keeps a line it read: not when its recognition confidence is under the
    recognizer's ``drop_score`` (noise read as text: specks, punch holes, scanner bands).

    Blank readings stay: they carry their box, and add no text.

    >>> keep_line("0", 0.21, 0.4), keep_line("Total", 0.93, 0.4), keep_line("", 0.1, 0.4)
    (False, True, True)
    """
    return not text or rec_score >= drop_score


def detect_and_crop(
    detector: Callable[[list[np.ndarray]], Sequence[Sequence[DetectedRegion]]], images: list[np.ndarray]
) -> list[Detection]:
    """Detect regions in a batch of images and rectify each into a crop (step 1).

    Args:
        detector: a :class:`~ocrjobs.detection.predictor.DetectionPredictor` (or any callable
            returning regions with ``polygon`` and ``score`` per image).
        images: ``[h, w, 3]`` uint8 RGB images.

    Returns:
        One :class:`Detection` per image; regions thinner than a pixel (nothing to read) are left out.
    """
    out = []
    for image, regions in zip(images, detector(images), strict=True):
        detection = Detection()
        for region in regions:
            crop = crop_polygon(image, region.polygon)
            if crop.size == 0:
                continue
            detection.polygons.append(np.asarray(region.polygon, np.float32))
            detection.scores.append(float(region.score))
            detection.crops.append(crop)
        out.append(detection)
    return out


def turned_regions(polygons: Sequence[Any], det_scores: Sequence[float | None]) -> list[int]:
    """The detected regions whose crops :func:`~ocrjobs.geometry.crop_polygon` turned a quarter turn
    (lines printed along the page's height, :func:`~ocrjobs.geometry.is_turned`): they may read
    either way up. A whole-image line (no detection score) is read as it is given."""
    return [
        i
        for i, (polygon, det) in enumerate(zip(polygons, det_scores, strict=True))
        if det is not None and is_turned(polygon)
    ]


def crops_to_read(
    polygons: Sequence[Any], det_scores: Sequence[float | None], crops: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """What a reader reads for one page: every region's crop, then each :func:`turned_regions` crop
    turned 180° (:func:`assemble_lines` keeps the surer of its two readings).

    >>> crop = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    >>> tall, wide = [[0, 0], [10, 0], [10, 40], [0, 40]], [[0, 0], [40, 0], [40, 10], [0, 10]]
    >>> [c[0, :, 0].tolist() for c in crops_to_read([tall, wide], [0.9, 0.9], [crop, crop])]
    [[0, 3], [0, 3], [3, 0]]
    """
    extra = [np.ascontiguousarray(np.rot90(crops[i], 2)) for i in turned_regions(polygons, det_scores)]
    return [*crops, *extra]


def _members(reading: Any) -> list[dict[str, Any]] | None:
    """Each ensemble member's own reading (``{"name", "text", "score"}``), ``None`` for one recognizer."""
    members = getattr(reading, "members", None)
    if members is None:
        return None
    return [{"name": m.name, "text": m.text, "score": float(m.score)} for m in members]


def _words(reading: Any, polygon: Any, turned: bool, upside_down: bool) -> list[Word] | None:
    """A line's word boxes from where its recognizer read each character (CTC models). Without that
    alignment (attention models, ensembles), a turned line's words are split in proportion to its
    text along its reading direction here, because the exporters' split (``Line.word_boxes``) only
    knows the page's x axis; other lines get ``None`` and are split by the exporters."""
    spans = getattr(reading, "char_spans", None)
    if spans is None or len(spans) != len(reading.text):
        if not turned:
            return None
        return split_words(reading.text, crop_quad(polygon, upside_down=upside_down), float(reading.score))
    scores = getattr(reading, "char_scores", None)
    if scores is not None and len(scores) != len(reading.text):
        scores = None
    return words_from_spans(reading.text, polygon, spans, scores, float(reading.score), upside_down)


def assemble_lines(
    polygons: Sequence[Any],
    det_scores: Sequence[float | None],
    readings: Sequence[Any],
    drop_score: float,
) -> list[Line]:
    """A page's lines from its regions and their readings (step 3), in the regions' order.

    Args:
        polygons: each region's polygon (``[n, 2]`` or flat ``[x0, y0, ...]``) in page pixels.
        det_scores: each region's detection score (``None`` for a whole-image line).
        readings: the reader's readings of :func:`crops_to_read` (``RecognizedText`` or
            ``EnsembleResult``): one per region, then one per turned region read upside down; of a
            turned region's two readings the higher-scored one is kept (the first on a tie).
        drop_score: lines read with a lower confidence leave the page (:func:`keep_line`; 0 keeps all).

    Returns:
        The kept lines.

    Raises:
        ValueError: ``readings`` is not one per crop of :func:`crops_to_read`.
    """
    turned = turned_regions(polygons, det_scores)
    if len(readings) != len(polygons) + len(turned):
        raise ValueError(
            f"{len(readings)} readings for {len(polygons)} regions of which {len(turned)} are turned: "
            "read the crops of crops_to_read"
        )
    chosen = list(readings[: len(polygons)])
    flipped = [False] * len(polygons)
    turned_set = set(turned)
    for i, other in zip(turned, readings[len(polygons) :], strict=True):
        if float(other.score) > float(chosen[i].score):
            chosen[i], flipped[i] = other, True
    lines = []
    for i, (polygon, det, reading, upside_down) in enumerate(
        zip(polygons, det_scores, chosen, flipped, strict=True)
    ):
        score = float(reading.score)
        if not keep_line(reading.text, score, drop_score):
            continue
        lines.append(
            Line(
                polygon=polygon,
                text=reading.text,
                det_score=None if det is None else float(det),
                rec_score=score,
                members=_members(reading),
                words=_words(reading, polygon, i in turned_set, upside_down),
            )
        )
    return lines


def predictor_overrides(
    amp: bool, backend: str, onnx_providers: Sequence[str] | None, model_batch_size: int | None
) -> dict[str, Any]:
    """The ``from_model_dir`` overrides a host passes to a detection or recognition predictor: the
    bulk stages and the Serve deployments (and ``ocrjobs serve``'s preflight, which loads the models
    as the replicas will) all build them here. Settings left ``None`` keep the model folder's.

    >>> predictor_overrides(False, "auto", None, 8)
    {'amp': False, 'backend': 'auto', 'batch_size': 8}
    """
    overrides: dict[str, Any] = {"amp": amp, "backend": backend}
    if onnx_providers is not None:
        overrides["onnx_providers"] = list(onnx_providers)
    if model_batch_size is not None:
        overrides["batch_size"] = model_batch_size
    return overrides


def split_counts(flat: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    """Cut ``flat`` back into consecutive pieces of the given lengths.

    >>> split_counts("abcde", [2, 0, 3])
    [['a', 'b'], [], ['c', 'd', 'e']]
    """
    out, start = [], 0
    for n in counts:
        out.append(list(flat[start : start + n]))
        start += n
    return out


def read_detections(
    reader: Reader, detections: Sequence[Detection], drop_score: float | None = None
) -> list[list[Line]]:
    """Read the crops of a batch of pages in one call and assemble each page's lines (steps 2-3).

    Args:
        reader: the recognizer or ensemble.
        detections: one :class:`Detection` per page.
        drop_score: the page-line floor; ``None`` takes the reader's ``drop_score``.

    Returns:
        One list of lines per page.
    """
    pages = [crops_to_read(d.polygons, d.scores, d.crops) for d in detections]
    crops = [crop for page in pages for crop in page]
    readings = split_counts(reader(crops) if crops else [], [len(page) for page in pages])
    floor = reader.drop_score if drop_score is None else drop_score
    return [
        assemble_lines(d.polygons, d.scores, page, floor)
        for d, page in zip(detections, readings, strict=True)
    ]


def ocr_images(
    images: list[np.ndarray],
    detector: Callable[[list[np.ndarray]], Sequence[Sequence[DetectedRegion]]],
    reader: Reader,
    drop_score: float | None = None,
) -> list[list[Line]]:
    """The whole chain over a batch of in-memory images; all crops are recognised as one batch.

    Args:
        images: ``[h, w, 3]`` uint8 RGB images.
        detector: the detection predictor.
        reader: the recognizer or ensemble.
        drop_score: the page-line floor; ``None`` takes the reader's ``drop_score``.

    Returns:
        One list of lines per input image, in the detector's reading order.
    """
    return read_detections(reader, detect_and_crop(detector, images), drop_score)


def page_text(lines: Sequence[Line]) -> str:
    """The full text of a page: its lines (already in reading order), one per line; blank reads add
    nothing."""
    return "\n".join(line.text for line in lines if line.text)
