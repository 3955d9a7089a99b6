"""The Ray Data stages of the bulk OCR job and the row schemas they exchange.

The first stage fans each input file out into its pages; every later stage maps a ``pyarrow.Table`` to
a ``pyarrow.Table`` with exactly one row per page, in the same order. Rows are keyed by ``(uri, page)``
(and the driver's ``shard``/``position`` of the file), so the driver can tell when every page of every
file of a shard has arrived:

1. :func:`read_pages` (CPU tasks): read each URI through :mod:`ocrjobs.storage`, open it with
   :func:`ocrjobs.documents.open_document` (a PDF, a multi-page TIFF or any image) and emit one row per
   page with its raw RGB bytes (``pixels``), ``page`` (1-based) and ``pages`` (the file's page count).
   It is a generator: the pages of a long document leave the task in blocks as they are rendered, so
   a 500-page PDF is never held whole in memory, and the model pools downstream share its pages out
   among all their actors. A file that cannot be opened is one row with ``page`` null.
2. :class:`DetectStage` (actor pool): detect text polygons, then crop and rectify every polygon with
   :func:`ocrjobs.geometry.crop_polygon`; the page pixels are dropped here and only the crops travel on.
3. :class:`RecognizeStage` (actor pool): recognise the crops of all images of the batch in one call (the
   predictor buckets them by width) and assemble each image's ``lines`` and ``text``. With several
   recognizer folders the actor holds them all and reads with their propose-and-score ensemble
   (:class:`ocrjobs.recognition.ensemble.Ensemble`, the rounds Serve runs across its member
   deployments); each line then also carries every member's own reading (``members``).

For ``task: recognize`` and ``task: latex`` stage 2 is skipped and each whole image is one line crop (or formula).

A row whose ``error`` is set is never given to a model: it passes through every stage untouched, so a
bad input costs one row, never the job. Error reasons (:data:`ERROR_REASONS`):

* reading: ``not_found`` (no such object/file or bucket), ``access_denied``, ``read_failed`` (another
  error on a local path). Other S3 failures (endpoint unreachable, 5xx after the client's retries) are
  infrastructure problems, not properties of the input: they raise and stop the job (finished shards
  stay written, a re-run resumes) instead of writing error rows that a resume would never revisit.
* opening a file (one row, ``page`` null): the reasons of :class:`ocrjobs.documents.DocumentError`:
  ``empty``, ``not_an_image`` (neither a PDF nor an image format), ``corrupt`` (a truncated or damaged
  PDF, or an image whose header is invalid), ``unsupported``, ``encrypted`` (a PDF that needs a
  password) and ``too_many_pages`` (more than ``documents.max_pages``; ``pages`` says how many).
* decoding a page (that page's row): the reasons of :class:`ocrjobs.images.ImageDecodeError`
  (``corrupt``, ``too_many_pixels``: over ``max_pixels`` at the rendering resolution, ``unsupported``).
* models: ``detection_failed``, ``recognition_failed``: a batch that raises is retried one image at a
  time and only the images that still fail get these reasons. If two or more images were retried and
  all of them fail, the failure is systematic (broken model folder, device error) and is raised.

Rows also carry per-image stage seconds (``t_read`` ... ``t_recognize``: each batch's wall time split
evenly over its rows); the driver sums them for the job summary and drops them before writing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from ocrjobs import storage
from ocrjobs.config import StorageConfig
from ocrjobs.pipeline import predictor_overrides

if TYPE_CHECKING:
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.recognition.ensemble import EnsembleResult
    from ocrjobs.recognition.predictor import RecognizedText

__all__ = [
    "DECODED_SCHEMA",
    "DETECTED_SCHEMA",
    "ERROR_REASONS",
    "INPUT_SCHEMA",
    "LINE_TYPE",
    "MEMBER_TYPE",
    "OUTPUT_SCHEMA",
    "RESULT_SCHEMA",
    "TIMING_COLUMNS",
    "WORD_TYPE",
    "DetectStage",
    "RecognizeStage",
    "read_pages",
]

T = TypeVar("T")
R = TypeVar("R")

READ_ERROR_REASONS = ("not_found", "access_denied", "read_failed")
MODEL_ERROR_REASONS = ("detection_failed", "recognition_failed")
ERROR_REASONS: frozenset[str] = frozenset(
    {
        *READ_ERROR_REASONS,
        "empty",
        "not_an_image",
        "corrupt",
        "too_many_pixels",
        "unsupported",
        "encrypted",
        "too_many_pages",
        *MODEL_ERROR_REASONS,
    }
)

# One ensemble member's own reading of a line (its round-1 proposal): the member's name (its model
# folder's name), its text and its confidence in [0, 1].
MEMBER_TYPE = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("text", pa.string()),
        pa.field("score", pa.float32()),
    ]
)

# One word of a line: its text, its quad (flat, page pixels) and confidence. Lines read by a CTC model
# carry the words its alignment places (ocrjobs.results.words_from_spans); other lines have none.
WORD_TYPE = pa.struct(
    [
        pa.field("text", pa.string()),
        pa.field("polygon", pa.list_(pa.float32())),
        pa.field("score", pa.float32()),
    ]
)

# One recognised line. The polygon is flat ``[x0, y0, x1, y1, ...]`` in original image pixels;
# det_score is null for ``task: recognize`` and ``latex`` (nothing was detected: the whole image is the
# line). With an ensemble of recognizers, ``text``/``rec_score`` are the ensemble's and ``members``
# holds each member's reading in member order; with one recognizer ``members`` is null. ``words``: the
# line's WORD_TYPE words where the recognizer placed them, else null.
LINE_TYPE = pa.struct(
    [
        pa.field("polygon", pa.list_(pa.float32())),
        pa.field("text", pa.string()),
        pa.field("det_score", pa.float32()),
        pa.field("rec_score", pa.float32()),
        pa.field("members", pa.list_(MEMBER_TYPE)),
        pa.field("words", pa.list_(WORD_TYPE)),
    ]
)

# The published Parquet schema: one row per page (an image is page 1 of 1). ``page`` is 1-based and
# ``pages`` is the file's page count; both are null on the one row of a file that could not be opened
# (``pages`` is set when only the page limit was exceeded). Error rows have ``error`` set and null
# ``lines``/``text`` (and null ``width``/``height`` when the page could not be decoded).
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("page", pa.int32()),
        pa.field("pages", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("lines", pa.list_(LINE_TYPE)),
        pa.field("text", pa.string()),
        pa.field("error", pa.string()),
        pa.field("error_detail", pa.string()),
        pa.field("detector", pa.string()),
        pa.field("recognizer", pa.string()),
    ]
)

TIMING_COLUMNS = ("t_read", "t_decode", "t_detect", "t_recognize")

_KEY_FIELDS = [
    pa.field("uri", pa.string(), nullable=False),
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),
]
# Which page of its file a row is (see OUTPUT_SCHEMA); set by read_pages.
_PAGE_FIELDS = [pa.field("page", pa.int32()), pa.field("pages", pa.int32())]
_STATUS_FIELDS = [
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("error", pa.string()),
    pa.field("error_detail", pa.string()),
]


def _timing_fields(names: Sequence[str]) -> list[pa.Field]:
    return [pa.field(name, pa.float64()) for name in names]


# What the driver hands to Ray Data: which shard and position each URI belongs to.
INPUT_SCHEMA = pa.schema(_KEY_FIELDS)
# After read_pages. large_binary: one decoded page can exceed the 2 GiB offsets of a binary batch.
DECODED_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        *_PAGE_FIELDS,
        *_STATUS_FIELDS,
        pa.field("pixels", pa.large_binary()),
        *_timing_fields(TIMING_COLUMNS[:2]),
    ]
)
# After DetectStage: polygons (flat), scores and the rectified crops with their [h, w] sizes (flat).
DETECTED_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        *_PAGE_FIELDS,
        *_STATUS_FIELDS,
        pa.field("polygons", pa.list_(pa.list_(pa.float32()))),
        pa.field("det_scores", pa.list_(pa.float32())),
        pa.field("crops", pa.list_(pa.large_binary())),
        pa.field("crop_sizes", pa.list_(pa.int32())),
        *_timing_fields(TIMING_COLUMNS[:3]),
    ]
)
# After RecognizeStage: the output row (without the model columns the driver adds) plus keys/timings.
RESULT_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        *_PAGE_FIELDS,
        *_STATUS_FIELDS,
        pa.field("lines", pa.list_(LINE_TYPE)),
        pa.field("text", pa.string()),
        *_timing_fields(TIMING_COLUMNS),
    ]
)


# ------------------------------------------------------------------------------------------ read + decode


def _read_one(uri: str, config: StorageConfig) -> tuple[bytes | None, str | None, str | None]:
    """``(data, error reason, error detail)`` for one URI; S3 infrastructure errors propagate."""
    try:
        return storage.read_bytes(uri, config), None, None
    except (storage.ObjectNotFoundError, storage.BucketNotFoundError) as exc:
        return None, "not_found", str(exc)
    except storage.AccessDeniedError as exc:
        return None, "access_denied", str(exc)
    except storage.EndpointUnreachableError:
        raise
    except storage.StorageError as exc:
        if storage.is_s3(uri):
            raise
        return None, "read_failed", str(exc)


def read_pages(
    batch: pa.Table,
    *,
    storage_config: StorageConfig,
    max_pixels: int,
    dpi: float = 150.0,
    max_pages: int = 1000,
    read_threads: int = 8,
) -> Iterator[pa.Table]:
    """Read each file of a batch and emit its pages (the first stage of the bulk job: the fan-out).

    Args:
        batch: rows of :data:`INPUT_SCHEMA` (one per file).
        storage_config: S3 settings for ``s3://`` URIs.
        max_pixels: largest ``width * height`` of a page (a PDF page at ``dpi``, a TIFF frame, an
            image); larger pages get ``too_many_pixels``.
        dpi: rendering resolution of PDF pages.
        max_pages: most pages of one file; a file with more is one ``too_many_pages`` row.
        read_threads: files read concurrently (reads wait on the network, decoding uses the CPU).

    Yields:
        One row of :data:`DECODED_SCHEMA` at a time (Ray Data gathers them into blocks and hands each
        on once it is full, so the task holds a block's worth of pages at most, never a whole long
        document as a plain return would), files in input order and each file's pages in page order:
        ``pixels`` holds ``height * width * 3`` RGB bytes, or nothing when ``error`` is set. A file
        that cannot be read or opened is one row with ``page`` null.

    Raises:
        StorageError: an S3 failure that is not about the object itself (see the module docstring).
    """
    from ocrjobs.documents import DocumentError, open_document
    from ocrjobs.images import ImageDecodeError

    uris = [str(u) for u in batch.column("uri").to_pylist()]
    shards = batch.column("shard").to_pylist()
    positions = batch.column("position").to_pylist()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(read_threads, len(uris)))) as pool:
        reads = list(pool.map(lambda u: _read_one(u, storage_config), uris))
    read_seconds = (time.perf_counter() - start) / max(len(uris), 1)

    out = _PageRows()
    for k, (data, reason, detail) in enumerate(reads):
        if len(out):
            yield out.flush()
        key = (uris[k], shards[k], positions[k])
        t0 = time.perf_counter()
        if data is None:
            out.error(key, None, None, reason, detail, read_seconds, time.perf_counter() - t0)
            continue
        try:
            document = open_document(data, dpi=dpi, max_pages=max_pages, max_pixels=max_pixels)
        except DocumentError as exc:
            out.error(key, None, exc.pages, exc.reason, exc.message, read_seconds, time.perf_counter() - t0)
            continue
        with document:
            for page in range(1, document.pages + 1):
                # The file's read time goes to its first page, its opening time too.
                t_read = read_seconds if page == 1 else 0.0
                try:
                    image = document.page(page)
                except ImageDecodeError as exc:
                    out.error(
                        key, page, document.pages, exc.reason, exc.message, t_read, time.perf_counter() - t0
                    )
                else:
                    out.page(key, page, document.pages, image, t_read, time.perf_counter() - t0)
                t0 = time.perf_counter()
                yield out.flush()
    if len(out) or batch.num_rows == 0:
        yield out.flush()


class _PageRows:
    """Rows of :data:`DECODED_SCHEMA` being gathered by :func:`read_pages`."""

    def __init__(self) -> None:
        self._columns: dict[str, list[Any]] = {name: [] for name in DECODED_SCHEMA.names}

    def __len__(self) -> int:
        return len(self._columns["uri"])

    def _add(self, key: tuple[str, int, int], page: int | None, pages: int | None, **values: Any) -> None:
        values.update(uri=key[0], shard=key[1], position=key[2], page=page, pages=pages)
        for name, column in self._columns.items():
            column.append(values[name])

    def page(
        self,
        key: tuple[str, int, int],
        page: int,
        pages: int,
        image: np.ndarray,
        t_read: float,
        t_decode: float,
    ) -> None:
        height, width = image.shape[:2]
        self._add(
            key,
            page,
            pages,
            width=int(width),
            height=int(height),
            error=None,
            error_detail=None,
            pixels=image.tobytes(),
            t_read=t_read,
            t_decode=t_decode,
        )

    def error(
        self,
        key: tuple[str, int, int],
        page: int | None,
        pages: int | None,
        reason: str | None,
        detail: str | None,
        t_read: float,
        t_decode: float,
    ) -> None:
        self._add(
            key,
            page,
            pages,
            width=None,
            height=None,
            error=reason,
            error_detail=detail,
            pixels=b"",
            t_read=t_read,
            t_decode=t_decode,
        )

    def flush(self) -> pa.Table:
        """The rows gathered so far as a table; the gatherer starts empty again."""
        table = pa.Table.from_pydict(self._columns, schema=DECODED_SCHEMA)
        self._columns = {name: [] for name in DECODED_SCHEMA.names}
        return table


# ----------------------------------------------------------------------------------------- helpers


def _run_isolated(fn: Callable[[list[T]], list[R]], groups: list[list[T]]) -> list[list[R] | Exception]:
    """Run ``fn`` over the items of all groups in one call; if that raises, run each group alone.

    Args:
        fn: maps a list of items to one result per item (a predictor).
        groups: the items of each image (one page, or one image's crops).

    Returns:
        Per group, its results, or the exception it raised when run alone.

    Raises:
        Exception: two or more non-empty groups, and each failed on its own (a systematic failure).
    """
    flat = [item for group in groups for item in group]
    try:
        results = fn(flat) if flat else []
    except Exception as exc:
        filled = [k for k, group in enumerate(groups) if group]
        if len(filled) == 1:
            return [exc if group else [] for group in groups]
        isolated = [_call_or_error(fn, group) if group else [] for group in groups]
        if all(isinstance(isolated[k], Exception) for k in filled):
            raise
        return isolated
    out: list[list[R] | Exception] = []
    offset = 0
    for group in groups:
        out.append(results[offset : offset + len(group)])
        offset += len(group)
    return out


def _call_or_error(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R] | Exception:
    try:
        return fn(items)
    except Exception as exc:
        return exc


def _image(buffer: pa.Buffer, height: int, width: int) -> np.ndarray:
    """A zero-copy read-only ``[h, w, 3]`` view of a row's RGB bytes."""
    return np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)


def _ok_rows(batch: pa.Table) -> list[int]:
    return [i for i, error in enumerate(batch.column("error").to_pylist()) if error is None]


def _timing(batch: pa.Table, name: str) -> pa.ChunkedArray | list[float]:
    """A batch's timing column, or zeros when the stage that fills it did not run."""
    return batch.column(name) if name in batch.column_names else [0.0] * batch.num_rows


def _carried(batch: pa.Table, errors: list[Any], details: list[Any]) -> dict[str, Any]:
    """The columns a model stage passes on: the row keys, page size and (updated) error columns."""
    keep = ("uri", "shard", "position", "page", "pages", "width", "height")
    return {**{name: batch.column(name) for name in keep}, "error": errors, "error_detail": details}


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------- detection


class DetectStage:
    """Ray Data actor: text detection, then every polygon cropped and rectified.

    The model is loaded once per actor, in ``__init__``.

    Args:
        model_dir: detection model folder (local path present on every node, or ``s3://``).
        device: ``"cpu"`` or ``"cuda"``.
        amp: autocast on the GPU.
        model_batch_size: images per forward pass; ``None`` keeps the predictor's default.
        backend: ``auto``, ``torch`` or ``onnxruntime`` (:mod:`ocrjobs.backends`).
        onnx_providers: ONNX Runtime execution providers (``None``: the device's default).
    """

    def __init__(
        self,
        model_dir: str,
        device: str = "cpu",
        amp: bool = False,
        model_batch_size: int | None = None,
        backend: str = "auto",
        onnx_providers: Sequence[str] | None = None,
    ) -> None:
        from ocrjobs.detection.predictor import DetectionPredictor

        overrides = predictor_overrides(amp, backend, onnx_providers, model_batch_size)
        self.predictor: DetectionPredictor = DetectionPredictor.from_model_dir(
            model_dir, device=device, **overrides
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Detect and crop a batch of :data:`DECODED_SCHEMA` rows into :data:`DETECTED_SCHEMA` rows."""
        from ocrjobs.pipeline import Detection, detect_and_crop

        start = time.perf_counter()
        n = batch.num_rows
        errors = batch.column("error").to_pylist()
        details = batch.column("error_detail").to_pylist()
        polygons: list[list[list[float]]] = [[] for _ in range(n)]
        scores: list[list[float | None]] = [[] for _ in range(n)]
        crops: list[list[bytes]] = [[] for _ in range(n)]
        sizes: list[list[int]] = [[] for _ in range(n)]

        ok = _ok_rows(batch)
        pixels = batch.column("pixels").combine_chunks()
        widths = batch.column("width").to_pylist()
        heights = batch.column("height").to_pylist()
        images = {i: _image(pixels[i].as_buffer(), heights[i], widths[i]) for i in ok}

        def detect(items: list[int]) -> list[Detection]:
            return detect_and_crop(self.predictor, [images[i] for i in items])

        for i, result in zip(ok, _run_isolated(detect, [[i] for i in ok]), strict=True):
            if isinstance(result, Exception):
                errors[i], details[i] = "detection_failed", _failure(result)
                continue
            (found,) = result
            for polygon, score, crop in zip(found.polygons, found.scores, found.crops, strict=True):
                polygons[i].append(polygon.reshape(-1).tolist())
                scores[i].append(score)
                crops[i].append(np.ascontiguousarray(crop).tobytes())
                sizes[i].extend((int(crop.shape[0]), int(crop.shape[1])))
        seconds = (time.perf_counter() - start) / max(n, 1)
        return pa.Table.from_pydict(
            {
                **_carried(batch, errors, details),
                "polygons": polygons,
                "det_scores": scores,
                "crops": crops,
                "crop_sizes": sizes,
                "t_read": batch.column("t_read"),
                "t_decode": batch.column("t_decode"),
                "t_detect": [seconds] * n,
            },
            schema=DETECTED_SCHEMA,
        )


# -------------------------------------------------------------------------------------- recognition


class RecognizeStage:
    """Ray Data actor: recognise the crops of a whole batch together and assemble each image's lines.

    Takes :data:`DETECTED_SCHEMA` rows (``task: ocr``) or :data:`DECODED_SCHEMA` rows (``task:
    recognize`` and ``latex``: the whole image is one line or formula, its polygon the image rectangle, its
    ``det_score`` null).
    The models are loaded once per actor, in ``__init__``. Several folders make one in-process
    :class:`~ocrjobs.recognition.ensemble.Ensemble` (members named by their folders, as Serve names
    them): every member proposes for the whole batch, then scores the others' proposals.

    Args:
        model_dir: recognition model folder (local path present on every node, or ``s3://``), or a
            list of them for an ensemble, in member order.
        device: ``"cpu"`` or ``"cuda"``.
        amp: autocast on the GPU.
        model_batch_size: crops per forward pass (of each member); ``None`` keeps the predictors' default.
        backend: ``auto``, ``torch`` or ``onnxruntime`` (:mod:`ocrjobs.backends`).
        onnx_providers: ONNX Runtime execution providers (``None``: the device's default).
        weights: an ensemble's members' weights in its mean score (``None``: equal).
    """

    def __init__(
        self,
        model_dir: str | Sequence[str],
        device: str = "cpu",
        amp: bool = False,
        model_batch_size: int | None = None,
        backend: str = "auto",
        onnx_providers: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        from ocrjobs.recognition.ensemble import Ensemble
        from ocrjobs.recognition.predictor import RecognitionPredictor

        overrides = predictor_overrides(amp, backend, onnx_providers, model_batch_size)
        dirs = [model_dir] if isinstance(model_dir, str) else list(model_dir)
        self.read: Callable[[list[np.ndarray]], Sequence[RecognizedText | EnsembleResult]]
        reader: RecognitionPredictor | Ensemble
        if len(dirs) == 1:
            reader = RecognitionPredictor.from_model_dir(dirs[0], device=device, **overrides)
        else:
            reader = Ensemble.from_model_dirs(dirs, device=device, weights=weights, **overrides)
        self.read = reader
        self.drop_score = reader.drop_score

    def _lines_of(
        self, batch: pa.Table, ok: list[int]
    ) -> tuple[list[list[np.ndarray]], list[list[Any]], list[list[float | None]]]:
        """Per ok row: its crops, polygons and detection scores."""
        if "crops" not in batch.column_names:
            from ocrjobs.pipeline import Detection

            pixels = batch.column("pixels").combine_chunks()
            widths = batch.column("width").to_pylist()
            heights = batch.column("height").to_pylist()
            lines = [Detection.whole_image(_image(pixels[i].as_buffer(), heights[i], widths[i])) for i in ok]
            return [d.crops for d in lines], [list(d.polygons) for d in lines], [d.scores for d in lines]
        all_crops = batch.column("crops").to_pylist()
        all_sizes = batch.column("crop_sizes").to_pylist()
        all_polygons = batch.column("polygons").to_pylist()
        all_scores = batch.column("det_scores").to_pylist()
        crops: list[list[np.ndarray]] = []
        for i in ok:
            sizes = all_sizes[i]
            crops.append(
                [
                    np.frombuffer(data, np.uint8).reshape(sizes[2 * k], sizes[2 * k + 1], 3)
                    for k, data in enumerate(all_crops[i])
                ]
            )
        return crops, [all_polygons[i] for i in ok], [all_scores[i] for i in ok]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Recognise a batch and return :data:`RESULT_SCHEMA` rows."""
        start = time.perf_counter()
        n = batch.num_rows
        errors = batch.column("error").to_pylist()
        details = batch.column("error_detail").to_pylist()
        lines: list[list[dict[str, Any]] | None] = [None] * n
        texts: list[str | None] = [None] * n

        ok = _ok_rows(batch)
        crops, polygons, det_scores = self._lines_of(batch, ok)
        # Pages (detected lines) drop lines read under the recognizer's drop_score; an input that is
        # itself a line (recognize, latex) keeps its reading whatever its score.
        from ocrjobs.pipeline import assemble_lines, crops_to_read, page_text

        drop = self.drop_score if "crops" in batch.column_names else 0.0
        to_read = [crops_to_read(p, d, c) for p, d, c in zip(polygons, det_scores, crops, strict=True)]
        results = _run_isolated(lambda items: list(self.read(items)), to_read)
        for k, (i, result) in enumerate(zip(ok, results, strict=True)):
            if isinstance(result, Exception):
                errors[i], details[i] = "recognition_failed", _failure(result)
                continue
            kept = assemble_lines(polygons[k], det_scores[k], result, drop)
            lines[i] = [line.to_row() for line in kept]
            texts[i] = page_text(kept)
        seconds = (time.perf_counter() - start) / max(n, 1)
        return pa.Table.from_pydict(
            {
                **_carried(batch, errors, details),
                "lines": lines,
                "text": texts,
                "t_read": batch.column("t_read"),
                "t_decode": batch.column("t_decode"),
                "t_detect": _timing(batch, "t_detect"),
                "t_recognize": [seconds] * n,
            },
            schema=RESULT_SCHEMA,
        )
