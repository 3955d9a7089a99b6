"""The CPU stage of training: items -> fixed-shape numpy rows, run by Ray Data ``map_batches`` tasks.

Each class here is a picklable callable over a batch ``{"item": JSON strings}`` (see
:mod:`ocrjobs.training.task`). This module imports no torch: data tasks start in a fresh Ray worker
process, and torch plus the model code would add seconds to every cold start.

Randomness: augmentation draws fresh entropy on every call, so it differs every epoch; synthetic samples
come from random-access generators (sample ``i`` of seed ``s`` depends only on ``(s, i)``), so the
synthetic set itself is the same every epoch and on every worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ocrjobs.config import StorageConfig
from ocrjobs.data.augment import Augmenter
from ocrjobs.detection.targets import TARGET_KEYS, build_db_targets
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import pad_to, read_image, resize_keep_aspect

if TYPE_CHECKING:
    from ocrjobs.data.formulas import FormulaGenerator

__all__ = ["DetectionRows", "FormulaRows", "RecognitionRows", "stack_rows"]

Batch = dict[str, np.ndarray]

# Binary maps travel as uint8 and the threshold map as float16: 3.5x less memory in the object store.
_MAP_DTYPES = {
    "shrink_map": np.uint8,
    "shrink_mask": np.uint8,
    "thresh_map": np.float16,
    "thresh_mask": np.uint8,
}


def stack_rows(rows: list[dict[str, Any]]) -> Batch:
    """Row dicts -> one numpy batch (column-wise ``np.stack``)."""
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _as_polygon(points: Any) -> np.ndarray:
    return np.asarray(points, np.float32).reshape(-1, 2)


@dataclass
class DetectionRows:
    """Detection items (pages with polygons, or synthetic documents) -> DB training rows.

    Attributes:
        limit_side: pages are first scaled so their longer side is at most this (the predictor's scale).
        size: side of the square output rows.
        augmenter: training augmentation (its ``crop_size`` must be ``(size, size)``); ``None`` scales
            the page into the square instead.
        validation: add ``valid_hw`` (unpadded height, width) and ``gt`` (JSON polygons + ignore flags)
            for scoring.
        vocabulary: words for synthetic documents (most frequent first; empty: the generator's own).
        storage: S3 settings for reading images.
    """

    limit_side: int
    size: int
    augmenter: Augmenter | None
    validation: bool
    vocabulary: tuple[str, ...] = ()
    storage: StorageConfig = field(default_factory=StorageConfig)
    _generators: dict[tuple[str, int, str], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _synthetic(self, item: dict[str, Any]) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
        from ocrjobs.data.synth import DocumentGenerator

        options = item["options"]
        key = (item["synth"], item["seed"], json.dumps(options, sort_keys=True))
        if key not in self._generators:
            self._generators[key] = DocumentGenerator(
                vocab=self.vocabulary, seed=item["seed"], kind=item["synth"], **options
            )
        image, regions = self._generators[key].sample(item["index"])
        return image, [r.polygon() for r in regions], [r.ignore for r in regions]

    def _page(self, item: dict[str, Any]) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
        if "synth" in item:
            image, polygons, ignore = self._synthetic(item)
        else:
            image = read_image(item["uri"], self.storage)
            polygons, ignore = [_as_polygon(p) for p in item["polygons"]], list(item["ignore"])
        image, sx, sy = resize_keep_aspect(image, self.limit_side, multiple=1)
        scale = np.array([sx, sy], np.float32)
        return image, [p * scale for p in polygons], ignore

    def _row(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image, polygons, ignore = self._page(item)
        if self.augmenter is not None:
            image, polygons = self.augmenter(image, polygons, rng)
            valid_hw = (self.size, self.size)
        else:
            image, sx, sy = resize_keep_aspect(image, self.size, multiple=32)
            polygons = [p * np.array([sx, sy], np.float32) for p in polygons]
            valid_hw = image.shape[:2]
            image = pad_to(image, self.size, self.size)
        maps = build_db_targets(self.size, self.size, polygons, ignore)
        row: dict[str, Any] = {"image": image, **{k: maps[k].astype(_MAP_DTYPES[k]) for k in TARGET_KEYS}}
        if self.validation:
            row["valid_hw"] = np.asarray(valid_hw, np.int32)
            row["gt"] = json.dumps({"polygons": [p.tolist() for p in polygons], "ignore": ignore})
        return row

    def __call__(self, batch: Batch) -> Batch:
        """Prepare a batch of items (one row each)."""
        rng = np.random.default_rng()
        return stack_rows([self._row(json.loads(text), rng) for text in batch["item"]])


@dataclass
class RecognitionRows:
    """Recognition items (labelled lines of a page, or synthetic lines) -> line rows.

    Rows follow the recognition predictor's preprocessing (turn tall crops, resize to ``height`` keeping
    the aspect ratio, squeeze to at most ``width``) and are padded on the right to ``width`` with black;
    ``valid_w`` says where the padding starts so that collation can give it the predictor's padding value.

    Attributes:
        height: model input height.
        width: row width (widest crop).
        augmenter: training augmentation applied around each line before it is cut out; ``None`` for none.
        charset: characters synthetic lines may contain (the model's charset).
        max_label: longest text the model can emit; synthetic lines are capped to it.
        vocabulary: words for synthetic lines (most frequent first; empty: the generator's own).
        storage: S3 settings for reading images.
    """

    height: int
    width: int
    augmenter: Augmenter | None
    charset: str
    max_label: int
    vocabulary: tuple[str, ...] = ()
    storage: StorageConfig = field(default_factory=StorageConfig)
    _generators: dict[tuple[int, str], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _cut(self, image: np.ndarray, polygon: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Crop one line; with augmentation, distort a margin around it first and follow the polygon."""
        if self.augmenter is None:
            return crop_polygon(image, polygon)
        line_height = float(np.ptp(polygon[:, 1])) or 1.0
        h, w = image.shape[:2]
        x0, y0 = np.maximum(np.floor(polygon.min(axis=0) - line_height), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(polygon.max(axis=0) + line_height), [w, h]).astype(int)
        patch, (moved,) = self.augmenter(image[y0:y1, x0:x1], [polygon - [x0, y0]], rng)
        return crop_polygon(patch, moved)

    def _synthetic(self, item: dict[str, Any]) -> tuple[np.ndarray, str]:
        from ocrjobs.data.synth import LineGenerator

        options = {"max_chars": self.max_label, **item["options"]}
        options["max_chars"] = min(options["max_chars"], self.max_label)
        key = (item["seed"], json.dumps(options, sort_keys=True))
        if key not in self._generators:
            self._generators[key] = LineGenerator(
                vocab=self.vocabulary,
                charset=self.charset,
                seed=item["seed"],
                augment=self.augmenter,
                height=self.height,
                **options,
            )
        image, text = self._generators[key].sample(item["index"])
        return image, text

    def _row(self, crop: np.ndarray, text: str, anycase: bool = False) -> dict[str, Any]:
        from ocrjobs.recognition.predictor import orient_crop, resize_crop

        resized = resize_crop(orient_crop(crop), self.height, self.width)
        return {
            "image": pad_to(resized, self.height, self.width),
            "valid_w": np.int32(resized.shape[1]),
            "text": text,
            "anycase": np.bool_(anycase),  # labels of a case-insensitive source (DataSource.case)
        }

    def __call__(self, batch: Batch) -> Batch:
        """Prepare a batch of items (a page item gives one row per line; crops thinner than a pixel are
        replaced by a blank row with an empty text, so row counts stay as planned)."""
        rng = np.random.default_rng()
        rows = []
        for text_item in batch["item"]:
            item = json.loads(text_item)
            if "synth" in item:
                rows.append(self._row(*self._synthetic(item)))
                continue
            image = read_image(item["uri"], self.storage)
            h, w = image.shape[:2]
            for line in item["lines"]:
                # A whole-image label (line-crop sets) has no polygon: the line is the image.
                points = line["polygon"] if line["polygon"] is not None else [[0, 0], [w, 0], [w, h], [0, h]]
                crop = self._cut(image, _as_polygon(points), rng)
                if crop.size == 0:
                    crop, line = np.zeros((self.height, 1, 3), np.uint8), {"text": ""}
                rows.append(self._row(crop, line["text"], bool(item.get("anycase", False))))
        return stack_rows(rows)


@dataclass
class FormulaRows:
    """Formula items (im2latex records or synthetic formulas) -> fixed-size training rows.

    Items are ``{"uri": image, "text": formula}`` or ``{"synth": "formulas", "seed", "index",
    "options"}`` (options are :class:`FormulaGenerator` fields). With an ``augmenter`` the whole formula
    image is augmented (its canvas grows with rotation and shear); then, as the recognition predictor
    does, an image narrower than 0.75 of its height is turned 90° counter-clockwise, scaled to
    ``height`` keeping its aspect ratio and squeezed to at most ``width``. Rows are padded on the right
    with black to ``width``; ``valid_w`` says where the padding starts (collation repeats the last
    column there, like the predictor). With ``max_height`` and ``scale`` the height varies as the
    predictor's does (:func:`~ocrjobs.recognition.predictor.input_height`): rows are padded at the
    bottom to ``max_height`` and ``valid_h`` says where (collation cuts a batch to its tallest row).

    Attributes:
        height: model input height (the least, with ``max_height``).
        width: model input width.
        augmenter: training augmentation (``None``: none).
        formulas: train formulas synthetic samples may re-render.
        vocabulary: tokens synthetic formulas may use (empty: no restriction).
        max_tokens: longest synthetic formula (the model's ``max_len - 1``).
        storage: S3 settings for reading images.
        max_height: tallest input of a variable-height model (``None``: all are ``height`` high).
        scale: input pixels per image pixel of variable-height inputs.
    """

    height: int
    width: int
    augmenter: Augmenter | None
    formulas: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()
    max_tokens: int = 150
    storage: StorageConfig = field(default_factory=StorageConfig)
    max_height: int | None = None
    scale: float | None = None
    _generators: dict[tuple[int, str], FormulaGenerator] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def generator(self, seed: int, options: dict[str, Any]) -> FormulaGenerator:
        """The (cached) generator of a synthetic source."""
        from ocrjobs.data.formulas import FormulaGenerator

        options = {"max_tokens": self.max_tokens, **options}
        options["max_tokens"] = min(int(options["max_tokens"]), self.max_tokens)
        key = (seed, json.dumps(options, sort_keys=True))
        if key not in self._generators:
            self._generators[key] = FormulaGenerator(
                formulas=self.formulas, vocabulary=self.vocabulary or None, seed=seed, **options
            )
        return self._generators[key]

    def _row(self, image: np.ndarray, text: str, rng: np.random.Generator) -> dict[str, Any]:
        from ocrjobs.recognition.predictor import orient_crop, resize_crop

        if self.augmenter is not None:
            image, _ = self.augmenter(image, [], rng)
        resized = resize_crop(orient_crop(image), self.height, self.width, self.max_height, self.scale)
        row = {
            "image": pad_to(resized, self.max_height or self.height, self.width),
            "valid_w": np.int32(resized.shape[1]),
            "text": text,
        }
        if self.max_height is not None:
            row["valid_h"] = np.int32(resized.shape[0])
        return row

    def __call__(self, batch: Batch) -> Batch:
        """Prepare a batch of items (one row each)."""
        rng = np.random.default_rng()
        rows = []
        for text_item in batch["item"]:
            item = json.loads(text_item)
            if "synth" in item:
                image, text = self.generator(item["seed"], item["options"]).sample(item["index"])
            else:
                image, text = read_image(item["uri"], self.storage), item["text"]
            rows.append(self._row(image, text, rng))
        return stack_rows(rows)
