"""Online OCR on Ray Serve: a detector and an ensemble of recognizers behind one HTTP API.

Deployments (one per model, each wrapping the same predictor classes as the bulk job):

* ``Detector``: :class:`~ocrjobs.detection.predictor.DetectionPredictor` under ``@serve.batch`` over
  images. It also cuts and rectifies every polygon (:func:`ocrjobs.geometry.crop_polygon`), as the bulk
  job's ``DetectStage`` does: the page is already in the replica, the cropping is CPU work that would
  otherwise stall the ingress's event loop, and only the crops (much smaller than the page) travel on.
* ``Recognizer_<member>``: one per ensemble member (CRNN, ASTER, SATRN..., any input size), an
  :class:`~ocrjobs.recognition.ensemble.Member` with ``propose`` and ``score``, each under
  ``@serve.batch``. A call carries one request's crops; a batch joins the crops of concurrent requests
  into one predictor call (the predictor buckets them by width).
* ``Formula_<member>``: the same ``Recognizer`` class for each formula (image -> LaTeX) member of
  ``formulas``, combined by the same ensemble for ``POST /v1/latex`` (multi-scale: one model at
  several input sizes, or SATRN + ASTER).
* ``OcrApi``: the FastAPI ingress (``@serve.ingress``). It checks and decodes the upload, awaits the
  detector, then runs the ensemble step: round 1 (every member proposes) and round 2 (every member
  scores the others' candidates) each as one ``asyncio.gather`` over the member handles
  (:func:`~ocrjobs.recognition.ensemble.run_ensemble_async`). With one member, or where all members
  agree, round 2 is skipped. The ensemble step lives in the ingress rather than in a deployment of its
  own: it only awaits handles and compares numbers, so another hop would add latency and nothing else.

Routes: ``POST /v1/ocr`` (a page, or a PDF: each page rendered and read, answered as ``pages``),
``POST /v1/recognize`` (one line crop), ``POST /v1/latex`` (one formula image; 404
``not_configured`` when the service has no formula members), ``GET /v1/models``,
``GET /v1/stats`` (request counts and the batch sizes each deployment served), ``GET /healthz``, and
FastAPI's ``/openapi.json`` and ``/docs``. Uploads are the raw image bytes with an ``image/*``
Content-Type (``application/pdf`` for a PDF; a body starting with ``%PDF-`` is taken as one whatever it
is labelled), or ``multipart/form-data`` with a ``file`` field. Nothing is ever fetched from a URL.

Errors are JSON ``{"error": <code>, "detail": <message>}``: 400 (empty, undecodable or malformed
input, an encrypted or damaged PDF), 401 (bearer token missing or wrong, when one is configured), 404
(a route whose models are not configured), 408 (a body that arrives too slowly), 413 (body, pixel
count or PDF pages over the limits), 415 (not an image or PDF content type, an image format that is
not decoded, or a PDF sent to a route that reads single images), 431 (headers over the limit), 503
(overloaded), 500 (anything else; the message never carries a traceback, the replica log does). A
client that goes away before its answer is counted as 499 in ``/v1/stats`` (nginx's "client closed
request") and logged in one line.

Slow clients: the ingress holds a request in one of Serve's ``max_ongoing_requests`` slots until it
answers, and Serve's proxy queues everything beyond them, ``/healthz`` included. So the image routes
take at most ``ingress.max_ongoing_requests - ingress.reserved_requests`` slots (503 at once beyond),
and a body must arrive within ``limits.body_timeout_s`` and, after ``limits.body_grace_s``, at
``limits.body_min_bytes_per_s`` or more (408 otherwise): stalled uploads cannot take the slots that
``/healthz`` and the stats need, and free their own slots soon.

Built from a :class:`~ocrjobs.serve.config.ServeConfig` by :func:`build_app`, the application builder
named in ``configs/serve.yaml`` (``serve run configs/serve.yaml``, ``serve deploy``, ``ocrjobs serve``).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures that Serve's
# class-based view rewrites, and string annotations there would not be resolved.
import asyncio
import contextlib
import functools
import hmac
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from ocrjobs import __version__
from ocrjobs.documents import DocumentError, is_pdf, open_document
from ocrjobs.images import ImageDecodeError, decode_image
from ocrjobs.pipeline import (
    Detection,
    assemble_lines,
    crops_to_read,
    detect_and_crop,
    page_text,
    split_counts,
)
from ocrjobs.recognition.ensemble import (
    EnsembleResult,
    Fusion,
    Proposal,
    ensemble_drop_score,
    run_ensemble_async,
)
from ocrjobs.results import Line
from ocrjobs.serve.config import DetectorConfig, LimitsConfig, MemberConfig, ServeConfig

__all__ = [
    "BatchStats",
    "Detection",
    "Detector",
    "DocumentOcrResponse",
    "OcrApi",
    "PageResult",
    "Recognizer",
    "api",
    "build_app",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")


# ------------------------------------------------------------------------------------ model replicas


class BatchStats:
    """How many requests each ``@serve.batch`` call of a replica served (the batch-size histogram)."""

    def __init__(self) -> None:
        self.sizes: Counter[int] = Counter()
        self.items = 0
        self.seconds = 0.0

    def add(self, requests: int, items: int, seconds: float) -> None:
        """Record one batch of ``requests`` calls holding ``items`` images or crops."""
        self.sizes[requests] += 1
        self.items += items
        self.seconds += seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: batches, requests, items, mean/max batch size and the histogram."""
        batches = sum(self.sizes.values())
        requests = sum(size * n for size, n in self.sizes.items())
        return {
            "batches": batches,
            "requests": requests,
            "items": self.items,
            "mean_batch_size": round(requests / batches, 3) if batches else 0.0,
            "max_batch_size": max(self.sizes, default=0),
            "batch_size_histogram": {str(k): v for k, v in sorted(self.sizes.items())},
            "busy_seconds": round(self.seconds, 3),
        }


def _torch_setup(threads: int | None) -> int:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _configure_batching(method: Any, max_batch_size: int, wait_s: float) -> None:
    """Apply the configured sizes to a ``@serve.batch`` method (the decorator's values are defaults)."""
    method.set_max_batch_size(max_batch_size)
    method.set_batch_wait_timeout_s(wait_s)


@serve.deployment(name="Detector")
class Detector:
    """Detection replica: images in, polygons and their rectified crops out.

    Args:
        settings: a :class:`~ocrjobs.serve.config.DetectorConfig` as a dict.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        from ocrjobs.detection.predictor import DetectionPredictor

        config = DetectorConfig.model_validate(settings)
        self.threads = _torch_setup(config.torch_threads)
        self.predictor = DetectionPredictor.from_model_dir(
            config.model, device=config.device, **config.predictor_overrides()
        )
        _configure_batching(self.detect, config.max_batch_size, config.batch_wait_timeout_s)
        self._stats = BatchStats()

    @serve.batch
    async def detect(self, images: list[np.ndarray]) -> list[Detection]:
        """Detect and crop a batch of RGB uint8 images (one per request)."""
        start = time.perf_counter()
        # In a thread: the replica's event loop keeps queueing the next batch meanwhile.
        out = await asyncio.to_thread(detect_and_crop, self.predictor, images)
        self._stats.add(len(images), len(images), time.perf_counter() - start)
        return out

    def info(self) -> dict[str, Any]:
        """Model name, version, input limit, device and torch threads."""
        p = self.predictor
        return {
            "name": p.name,
            "version": p.version,
            "limit_side": p.limit_side,
            "device": str(p.device),
            "torch_threads": self.threads,
        }

    def stats(self) -> dict[str, Any]:
        """Batch statistics of this replica."""
        return {"detect": self._stats.as_dict()}


@serve.deployment(name="Recognizer")
class Recognizer:
    """One ensemble member's replica: ``propose`` and ``score`` over batches of requests' crops.

    Args:
        settings: a :class:`~ocrjobs.serve.config.MemberConfig` as a dict.
        formula: whether this is a formula member (its folder must hold a LaTeX model) or a text-line
            member (its folder must hold a character model).
    """

    def __init__(self, settings: dict[str, Any], formula: bool = False) -> None:
        from ocrjobs.recognition.ensemble import Member
        from ocrjobs.recognition.predictor import check_model_kind

        config = MemberConfig.model_validate(settings)
        self.threads = _torch_setup(config.torch_threads)
        self.member = Member.from_model_dir(
            config.model, device=config.device, name=config.resolved_name, **config.predictor_overrides()
        )
        check_model_kind(self.member.predictor, formula, config.model)
        for method in (self.propose, self.score):
            _configure_batching(method, config.max_batch_size, config.batch_wait_timeout_s)
        # propose and score batch separately; one model call at a time keeps torch's threads to itself.
        self._lock = threading.Lock()
        self._stats = {"propose": BatchStats(), "score": BatchStats()}

    def _locked(self, fn: Callable[..., R], *args: Any) -> R:
        with self._lock:
            return fn(*args)

    @serve.batch
    async def propose(self, calls: list[list[np.ndarray]]) -> list[list[Proposal]]:
        """Round 1 for a batch of calls, each the crops of one request."""
        start = time.perf_counter()
        flat = [crop for call in calls for crop in call]
        proposals = await asyncio.to_thread(self._locked, self.member.propose, flat) if flat else []
        self._stats["propose"].add(len(calls), len(flat), time.perf_counter() - start)
        return split_counts(proposals, [len(call) for call in calls])

    @serve.batch
    async def score(self, calls: list[tuple[list[np.ndarray], list[list[str]]]]) -> list[list[list[float]]]:
        """Round 2 for a batch of calls, each ``(crops, the texts to score for each crop)``."""
        start = time.perf_counter()
        flat = [crop for crops, _ in calls for crop in crops]
        texts = [texts for _, candidates in calls for texts in candidates]
        scores = await asyncio.to_thread(self._locked, self.member.score, flat, texts) if flat else []
        self._stats["score"].add(len(calls), len(flat), time.perf_counter() - start)
        return split_counts(scores, [len(crops) for crops, _ in calls])

    def info(self) -> dict[str, Any]:
        """The member's model description and torch threads."""
        return {**self.member.info(), "torch_threads": self.threads}

    def fusion(self) -> dict[str, Any] | None:
        """The language model this member's beam search fuses, for the ingress's ranking
        (``{"lm": JSON text, "weight", "bonus"}``), or ``None``."""
        fusion = self.member.fusion
        if fusion is None:
            return None
        return {"lm": fusion.lm.to_json(), "weight": fusion.weight, "bonus": fusion.bonus}

    def stats(self) -> dict[str, Any]:
        """Batch statistics of this replica, per method."""
        return {name: stats.as_dict() for name, stats in self._stats.items()}


class HandleMember:
    """An ensemble member seen from the ingress: its deployment handle behind ``async`` methods."""

    def __init__(self, name: str, handle: DeploymentHandle, weight: float = 1.0) -> None:
        self.name = name
        self.handle = handle
        self.weight = weight
        # The member's language model (ocrjobs.recognition.ensemble.Fusion), asked once by the ingress.
        self.fusion: Fusion | None = None

    async def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        """Round 1 on the member's deployment."""
        return await self.handle.propose.remote(list(crops))

    async def score(
        self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Round 2 on the member's deployment."""
        return await self.handle.score.remote((list(crops), [list(c) for c in candidates]))


# ------------------------------------------------------------------------------------ HTTP schema


class MemberReading(BaseModel):
    """One member's own reading of a line."""

    name: str = Field(description="the member (its model folder's name unless configured)")
    text: str
    score: float = Field(description="the member's confidence in its text, in [0, 1]")


class CandidateScore(BaseModel):
    """A candidate text with the ensemble's and each member's confidence in it."""

    text: str
    score: float = Field(description="exp of the mean length-normalised log-likelihood, in [0, 1]")
    member_scores: list[float] = Field(description="each member's confidence in this text, member order")


class WordOut(BaseModel):
    """One word of a line, where the recognizer read it."""

    text: str
    polygon: list[list[float]] = Field(description="[[x, y], ...] quad in image pixels")
    score: float | None = Field(default=None, description="mean confidence of the word's characters")


class LineOut(BaseModel):
    """One detected and recognised text line."""

    polygon: list[list[float]] = Field(description="[[x, y], ...] in image pixels, clockwise from top-left")
    text: str
    score: float = Field(description="recognition confidence of the ensemble's text, in [0, 1]")
    det_score: float = Field(description="detection score of the region, in [0, 1]")
    members: list[MemberReading]
    words: list[WordOut] | None = Field(
        default=None,
        description="the line's words where a CTC member's alignment places them (null otherwise)",
    )


class ModelVersions(BaseModel):
    """Which models answered (``name@version``)."""

    detector: str | None = Field(default=None, description="the detector (null on single-image routes)")
    members: list[str] = Field(description="the ensemble members that read the text, in member order")


class OcrResponse(BaseModel):
    """The text of a page."""

    text: str = Field(description="every line's text in reading order, one line per row")
    lines: list[LineOut]
    width: int
    height: int
    models: ModelVersions


class PageResult(BaseModel):
    """One page of a PDF: its lines and text as ``OcrResponse`` has them, or why it was not read."""

    page: int = Field(description="1-based page number")
    text: str | None = Field(description="every line's text in reading order (null when error is set)")
    lines: list[LineOut] | None = Field(description="null when error is set")
    width: int | None = Field(description="rendered page width in pixels (null when error is set)")
    height: int | None = Field(description="rendered page height in pixels (null when error is set)")
    error: str | None = Field(
        default=None, description="why this page was not read (too_many_pixels, corrupt), else null"
    )
    detail: str | None = Field(default=None, description="what was wrong with the page, for people")


class DocumentOcrResponse(BaseModel):
    """The text of a PDF, page by page (the answer of ``POST /v1/ocr`` to a PDF upload)."""

    pages: list[PageResult] = Field(description="every page of the PDF, in page order")
    page_count: int = Field(description="how many pages the PDF has")
    text: str = Field(description="the pages' texts in page order, separated by a form feed (\\f)")
    models: ModelVersions


class RecognizeResponse(BaseModel):
    """The text of one line crop."""

    text: str
    score: float = Field(description="ensemble confidence, in [0, 1]")
    members: list[MemberReading]
    candidates: list[CandidateScore] = Field(description="every candidate, best first")
    width: int
    height: int
    models: ModelVersions


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the ``/v1`` routes."""

    error: str = Field(description="a machine-readable code, e.g. body_too_large, not_an_image")
    detail: str = Field(description="what was wrong, for people")


class Health(BaseModel):
    """Readiness: ``ok`` (200, alone) when every deployment of the application is healthy, else
    ``starting`` or ``degraded`` (503) with ``deployments`` mapping each deployment to its Serve status."""

    status: str
    deployments: dict[str, str] = Field(default_factory=dict)


def _deployment_states(app_name: str) -> tuple[str, dict[str, str]]:
    """``(application status, {deployment: status})`` from the Serve controller (a blocking call)."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return "NOT_STARTED", {}
    return str(app.status.value), {name: str(d.status.value) for name, d in app.deployments.items()}


class ApiError(Exception):
    """An error answer: HTTP status, a code and a message for the client."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(status, error, detail)
        self.status = status
        self.error = error
        self.detail = detail


# Which decode failures are the client's content type vs. its bytes vs. its size.
_DECODE_STATUS = {
    "empty": 400,
    "not_an_image": 400,
    "corrupt": 400,
    "too_many_pixels": 413,
    "unsupported": 415,
}
_FILE_FIELD = "file"
_PDF_MEDIA = "application/pdf"
# Pages of one PDF upload rendered and being read at once (each a decoded page in memory).
_PDF_PAGES_IN_FLIGHT = 4
# What a route sees when its client has gone, whichever comes first: Starlette's disconnect message,
# or Serve cancelling the request and with it the pending call for the next body chunk or a model.
_CLIENT_GONE = (ClientDisconnect, RequestCancelledError, TaskCancelledError)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "empty, undecodable or malformed upload",
        401: "bearer token missing or wrong (only when a token is configured)",
        408: "body not complete within limits.body_timeout_s, or slower than limits.body_min_bytes_per_s",
        413: "body larger than limits.max_body_bytes, image larger than limits.max_pixels, or a PDF of "
        "more than limits.max_pdf_pages pages",
        415: "not an image/*, application/pdf or multipart/form-data upload, an image format that is "
        "not decoded, or a PDF sent to a single-image route",
        431: "request headers larger than limits.max_header_bytes",
        503: "overloaded (every image-request slot of the ingress is taken) or a model deployment is "
        "unavailable",
    }.items()
}
# GET /v1/ocr?format=...: the answer as JSON (the default) or as a file written by the document model's
# exporters (ocrjobs.results), the same ones `ocrjobs bulk --formats` writes.
_OCR_FORMATS: dict[str, str] = {
    "json": "application/json",
    "hocr": "application/xhtml+xml; charset=utf-8",
    "alto": "application/xml; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "pdf": "application/pdf",
}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: its raw bytes with an image/* Content-Type (image/png, image/jpeg, "
        "image/tiff, image/webp, image/bmp, image/gif...), or multipart/form-data with a 'file' field. "
        "POST /v1/ocr also takes a PDF (application/pdf) and answers with its pages.",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {_FILE_FIELD: {"type": "string", "format": "binary"}},
                    "required": [_FILE_FIELD],
                }
            },
        },
    }
}

api = FastAPI(
    title="ocrjobs online OCR",
    version=__version__,
    description="Text detection and an ensemble of text recognizers on Ray Serve. Upload an image as raw "
    "bytes (image/* Content-Type) or multipart/form-data ('file'); no URLs are fetched.",
)
# Declares the optional bearer token in the OpenAPI schema; the check itself is OcrApi._authorize.
_bearer = HTTPBearer(auto_error=False, description="required when the service has a token configured")
_STATUS_COUNTS: Counter[str] = Counter()  # per ingress replica process: "<path> <status>" -> responses


_ERROR_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    # The rest of the body is never read, so the connection cannot carry another request.
    408: {"Connection": "close"},
    413: {"Connection": "close"},
    431: {"Connection": "close"},
    503: {"Retry-After": "1"},
}
# Set by each ingress replica from its config (_use_limits): middleware runs outside the routes and
# cannot reach the replica's config otherwise.
_MIDDLEWARE_LIMITS = {"max_header_bytes": LimitsConfig().max_header_bytes}


def _use_limits(limits: LimitsConfig) -> None:
    # A module function, so that Serve's by-value copy of the ingress class sets this module's dict
    # (see _response_counts).
    _MIDDLEWARE_LIMITS["max_header_bytes"] = limits.max_header_bytes


def _error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": detail}, status_code=status, headers=_ERROR_HEADERS.get(status)
    )


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status, exc.error, exc.detail)


class _HeaderLimit:
    """ASGI middleware answering 431 on any route when the header lines exceed
    ``limits.max_header_bytes`` (Serve's proxy, uvicorn with httptools, takes headers of any size)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            limit = _MIDDLEWARE_LIMITS["max_header_bytes"]
            # Each header line is "name: value\r\n" on the wire.
            size = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
            if size > limit:
                logger.info("refused %d bytes of request headers (limit %d)", size, limit)
                response = _error_response(
                    431, "headers_too_large", f"request headers of {size} bytes exceed {limit} bytes"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _StatusCounter:
    """ASGI middleware counting responses per route and status (unknown paths count as ``other``, so a
    scanner cannot grow the table)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # under a route prefix
            path = path[len(root) :]
        key = path if path in _COUNTED_PATHS else "other"
        started = False

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                _STATUS_COUNTS[f"{key} {message['status']}"] += 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except asyncio.CancelledError:
            # Serve cancels the request when its client disconnects (and logs that in one line):
            # counted as nginx's 499 "client closed request", not as an error of the service.
            if not started:
                _STATUS_COUNTS[f"{key} 499"] += 1
            raise


_COUNTED_PATHS = frozenset({"/healthz", "/v1/ocr", "/v1/recognize", "/v1/latex", "/v1/models", "/v1/stats"})
# The last added runs first: the counter also sees the 431 answers.
api.add_middleware(_HeaderLimit)
api.add_middleware(_StatusCounter)


def _response_counts() -> dict[str, int]:
    # Routes read the counts through this module function: Serve pickles the ingress's methods by
    # value, with a copy of the module globals they name, so naming _STATUS_COUNTS there would read a
    # copy that the middleware never updates.
    return dict(sorted(_STATUS_COUNTS.items()))


def _guarded(route: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Turn unexpected exceptions of a route into 503/500 answers without internals (logged here)."""

    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return await route(*args, **kwargs)
        except ApiError:
            raise
        except _CLIENT_GONE as exc:
            logger.info("%s: the client disconnected (%s)", route.__name__, type(exc).__name__)
            raise ApiError(499, "client_disconnected", "the client closed the connection") from None
        except (BackPressureError, DeploymentUnavailableError) as exc:
            logger.warning("%s: %s", route.__name__, type(exc).__name__)
            raise ApiError(503, "overloaded", "the service is overloaded; retry later") from None
        except Exception:
            logger.exception("%s failed", route.__name__)
            raise ApiError(500, "internal", "internal error; the service log has the details") from None

    return wrapper


class _Slots:
    """The image requests one ingress replica holds; beyond ``size`` they are refused, not queued."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        """Hold a slot for the ``with`` block (503 ``overloaded`` at once when none is free)."""
        if self.used >= self.size:
            raise ApiError(503, "overloaded", f"{self.size} image requests are in progress; retry later")
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1


def _image_route(route: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Hold one of the ingress's image-request slots from the first byte read to the answer."""

    @functools.wraps(route)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> R:
        # ``self`` by name: FastAPI passes every parameter of the (rewritten) route as a keyword.
        with self._slots.take():
            return await route(self, *args, **kwargs)

    return wrapper


def _result_pages(result: OcrResponse | DocumentOcrResponse) -> list[Any]:
    """An answer of ``/v1/ocr`` as the document model's pages (:mod:`ocrjobs.results`)."""
    from ocrjobs.results import Page, Word

    def lines(out: Sequence[LineOut]) -> list[Line]:
        return [
            Line(
                polygon=np.asarray(ln.polygon, np.float32),
                text=ln.text,
                det_score=ln.det_score,
                rec_score=ln.score,
                words=None
                if ln.words is None
                else [
                    Word(text=w.text, polygon=np.asarray(w.polygon, np.float32), score=w.score)
                    for w in ln.words
                ],
            )
            for ln in out
        ]

    # hOCR and ALTO name the models that read the page.
    models: dict[str, Any] = {
        "detector": result.models.detector,
        "recognizer": "+".join(result.models.members) or None,
    }
    if isinstance(result, OcrResponse):
        return [
            Page(
                uri="upload",
                page=1,
                pages=1,
                width=result.width,
                height=result.height,
                lines=lines(result.lines),
                **models,
            )
        ]
    return [
        Page(
            uri="upload",
            page=p.page,
            pages=result.page_count,
            width=p.width,
            height=p.height,
            lines=lines(p.lines) if p.lines is not None else [],
            error=p.error,
            error_detail=p.detail,
            **models,
        )
        for p in result.pages
    ]


def _export(
    fmt: str,
    result: OcrResponse | DocumentOcrResponse,
    images: Sequence[np.ndarray | None] | None,
    dpi: float,
) -> bytes:
    """The answer in ``fmt`` (hocr, alto, txt or pdf), by the exporters ``ocrjobs bulk`` writes with."""
    from ocrjobs import results

    pages = _result_pages(result)
    if fmt == "hocr":
        return results.to_hocr(pages, "upload").encode()
    if fmt == "alto":
        return results.to_alto(pages).encode()
    if fmt == "txt":
        return results.to_text(pages).encode()
    # pdf: a PDF upload keeps its size (its pages were rendered at limits.pdf_dpi); an image is placed at
    # that resolution too.
    return results.to_searchable_pdf(pages, list(images or []), dpi=dpi)


def _version(info: dict[str, Any]) -> str:
    return f"{info.get('name')}@{info.get('version')}"


def _ensemble_info(members: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "members": len(members),
        "rounds": 2 if len(members) > 1 else 1,
        "shared_charset": len({m["charset_sha1"] for m in members}) <= 1,
    }


def _line_out(line: Line) -> LineOut:
    """A page line as the HTTP schema writes it (polygon rounded to 1/100 pixel)."""
    return LineOut(
        polygon=np.asarray(line.polygon, np.float64).round(2).tolist(),
        text=line.text,
        score=float(line.rec_score or 0.0),
        det_score=float(line.det_score or 0.0),
        members=[MemberReading(**m) for m in line.members or []],
        words=None
        if line.words is None
        else [
            WordOut(text=w.text, polygon=np.asarray(w.polygon, np.float64).round(2).tolist(), score=w.score)
            for w in line.words
        ],
    )


def _members_out(result: EnsembleResult) -> list[MemberReading]:
    return [MemberReading(name=m.name, text=m.text, score=m.score) for m in result.members]


@serve.deployment(name="OcrApi")
@serve.ingress(api)
class OcrApi:
    """The HTTP ingress: input checks, detection, the ensemble rounds, JSON out.

    Args:
        detector: handle of the ``Detector`` deployment.
        members: handles of the ``Recognizer`` deployments, in ``config.members`` order.
        settings: the whole :class:`~ocrjobs.serve.config.ServeConfig` as a dict.
        formulas: handles of the ``Formula`` deployments, in ``config.formulas`` order.
    """

    def __init__(
        self,
        detector: DeploymentHandle,
        members: list[DeploymentHandle],
        settings: dict[str, Any],
        formulas: list[DeploymentHandle] | None = None,
    ) -> None:
        self.config = ServeConfig.model_validate(settings)
        formulas = formulas or []
        if len(members) != len(self.config.members) or len(formulas) != len(self.config.formulas):
            raise ValueError(
                f"{len(members)} member and {len(formulas)} formula handles for "
                f"{len(self.config.members)} members and {len(self.config.formulas)} formulas"
            )
        self.detector = detector
        self.members = [
            HandleMember(m.resolved_name, handle, m.weight)
            for m, handle in zip(self.config.members, members, strict=True)
        ]
        self.formulas = [
            HandleMember(m.resolved_name, handle, m.weight)
            for m, handle in zip(self.config.formulas, formulas, strict=True)
        ]
        env = self.config.auth.token_env
        # Read once from this replica's environment; the token never enters configs or responses.
        self._token = (os.environ.get(env) or "") if env else ""
        self._versions: ModelVersions | None = None
        self._formula_versions: ModelVersions | None = None
        self._drop_score = 0.0
        # Why a cap below max_ongoing_requests rather than a longer queue: Serve's proxy routes every
        # request of this app, /healthz included, through the same max_ongoing_requests slots and
        # queues the rest. Uploads hold a slot for as long as their client takes to send the body, so
        # without a cap a few hundred stalled uploads stop the whole app (66 did at the old 64). With
        # it, reserved_requests slots stay free for /healthz and the stats, a full house is a 503 at
        # once (the client can retry elsewhere), and the body deadline and minimum rate free the slots
        # of stalled clients within limits.body_grace_s.
        self._slots = _Slots(self.config.ingress.max_image_requests)
        self._health: tuple[float, Health] | None = None  # (when, the last healthy answer)
        _use_limits(self.config.limits)

    # ---------------------------------------------------------------- input

    def _authorize(self, request: Request) -> None:
        if not self._token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self._token.encode("utf-8")
        ):
            raise ApiError(401, "unauthorized", "send the service token as 'Authorization: Bearer <token>'")

    async def _read_body(self, request: Request) -> tuple[str, bytes]:
        """(media type, body) after the content-type and size checks, read within the time limits."""
        limits = self.config.limits
        limit = limits.max_body_bytes
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media.startswith("image/") or media in ("multipart/form-data", _PDF_MEDIA)):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media or '(none)'!r} is not accepted: send the image bytes with an image/* "
                "Content-Type (a PDF with application/pdf), or multipart/form-data with a 'file' field",
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(declared) > limit:
                raise ApiError(413, "body_too_large", f"body of {int(declared)} bytes exceeds {limit} bytes")
        chunks, size = [], 0
        start = time.monotonic()
        stream = request.stream()
        try:
            while True:
                # A client that stalls sends nothing to react to: each wait ends where the body
                # would become too slow (the deadline, or the mean rate falling below the minimum).
                wait = limits.body_wait_s(size, time.monotonic() - start)
                try:
                    if wait <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(wait):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._too_slow(size, declared, time.monotonic() - start) from None
                size += len(chunk)
                if size > limit:  # also bounds bodies sent without Content-Length
                    raise ApiError(413, "body_too_large", f"body exceeds {limit} bytes")
                chunks.append(chunk)
        except _CLIENT_GONE:
            # Routine on mobile networks: one line, no traceback, and a 499 in /v1/stats, not a 500.
            logger.info("the client disconnected after %d of %s body bytes", size, declared or "?")
            raise ApiError(499, "client_disconnected", "the client closed the connection") from None
        finally:
            await stream.aclose()
        return media, b"".join(chunks)

    def _too_slow(self, size: int, declared: str | None, elapsed: float) -> ApiError:
        """The 408 for a body that broke the deadline or the minimum rate after ``size`` bytes."""
        limits = self.config.limits
        rate = (
            f", and at least {limits.body_min_bytes_per_s:g} bytes/s after {limits.body_grace_s:g} s"
            if limits.body_min_bytes_per_s > 0
            else ""
        )
        detail = (
            f"the body was not complete after {elapsed:.1f} s ({size} of {declared or '?'} bytes); "
            f"it must arrive within {limits.body_timeout_s:g} s{rate}"
        )
        logger.info("408: %s", detail)
        return ApiError(408, "body_timeout", detail)

    async def _file_part(self, request: Request, body: bytes) -> bytes:
        """The ``file`` part of a multipart body that has already passed the size limit."""
        try:
            import python_multipart  # noqa: F401  (starlette's multipart backend)
            from starlette.datastructures import UploadFile
            from starlette.formparsers import MultiPartException, MultiPartParser
        except ImportError:
            raise ApiError(
                415,
                "unsupported_media_type",
                "multipart uploads are not available on this server; send the image bytes with an "
                "image/* Content-Type",
            ) from None

        async def stream() -> AsyncGenerator[bytes, None]:
            yield body
            yield b""

        try:
            form = await MultiPartParser(
                request.headers, stream(), max_files=1, max_fields=16, max_part_size=len(body) + 1
            ).parse()
        except MultiPartException as exc:
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc.message}") from None
        try:
            part = form.get(_FILE_FIELD)
            if not isinstance(part, UploadFile):
                raise ApiError(400, "missing_file", f"multipart body has no file field {_FILE_FIELD!r}")
            media = (part.content_type or "").split(";")[0].strip().lower()
            if media and not (
                media.startswith("image/") or media in ("application/octet-stream", _PDF_MEDIA)
            ):
                raise ApiError(415, "unsupported_media_type", f"file part has Content-Type {media!r}")
            return await part.read()
        finally:
            await form.close()

    async def _upload(self, request: Request) -> bytes:
        """The uploaded file's bytes (the body, or its multipart ``file`` part), after auth and limits."""
        self._authorize(request)
        media, body = await self._read_body(request)
        if media == "multipart/form-data":
            body = await self._file_part(request, body)
        return body

    async def _image(self, request: Request, body: bytes | None = None) -> np.ndarray:
        """The request's image, checked and decoded (pixel limit from the header, before decoding)."""
        if body is None:
            body = await self._upload(request)
        if is_pdf(body):
            raise ApiError(
                415, "unsupported_media_type", "a PDF: this route reads one image; POST /v1/ocr reads PDFs"
            )
        try:
            return await asyncio.to_thread(decode_image, body, self.config.limits.max_pixels)
        except ImageDecodeError as exc:
            raise ApiError(_DECODE_STATUS.get(exc.reason, 400), exc.reason, exc.message) from None

    @staticmethod
    async def _fetch_fusion(members: list[HandleMember], infos: Sequence[dict[str, Any]]) -> None:
        from ocrjobs.recognition.lm import CharNgramLM

        for member, info in zip(members, infos, strict=True):
            if info.get("decoder") != "beam":
                continue
            settings = await member.handle.fusion.remote()
            if settings is not None:
                lm = await asyncio.to_thread(CharNgramLM.from_json, settings["lm"])
                member.fusion = Fusion(lm, float(settings["weight"]), float(settings["bonus"]))
                return

    async def _model_versions(self) -> ModelVersions:
        if self._versions is None:
            infos = await asyncio.gather(
                self.detector.info.remote(),
                *(m.handle.info.remote() for m in [*self.members, *self.formulas]),
            )
            n = 1 + len(self.members)
            # Lines read under the members' drop_score leave a page (ocrjobs.pipeline.keep_line).
            self._drop_score = ensemble_drop_score(infos[1:n])
            # The ensemble ranks with the first fusing member's language model (ensemble_fusion); only
            # an ensemble asks, and only the first member with a beam decoder is fetched.
            if len(self.members) > 1:
                await self._fetch_fusion(self.members, infos[1:n])
            self._versions = ModelVersions(
                detector=_version(infos[0]), members=[_version(i) for i in infos[1:n]]
            )
            self._formula_versions = ModelVersions(members=[_version(i) for i in infos[n:]])
        return self._versions

    # ---------------------------------------------------------------- routes

    @api.get(
        "/healthz",
        response_model=Health,
        response_model_exclude_defaults=True,
        responses={503: {"model": Health}},
    )
    async def healthz(self) -> Health | JSONResponse:
        """Readiness (no auth, for load balancers and probes): 200 when every deployment is healthy,
        503 with each deployment's state while the application starts or when one is degraded."""
        # No body is read and no image slot taken: uploads, however slow, leave
        # ingress.reserved_requests slots for this route (see _Slots in __init__). A healthy answer is
        # reused for a second, so probes do not load the Serve controller.
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < 1.0:
            return self._health[1]
        try:
            app_status, states = await asyncio.wait_for(
                asyncio.to_thread(_deployment_states, serve.get_replica_context().app_name), timeout=2.0
            )
        except Exception:  # the controller is busy or gone: not ready, whatever the reason
            logger.warning("healthz: no status from the Serve controller", exc_info=True)
            app_status, states = "UNKNOWN", {}
        if app_status == "RUNNING" and all(v == "HEALTHY" for v in states.values()):
            self._health = (now, Health(status="ok"))  # {"status": "ok"}, as before
            return self._health[1]
        self._health = None
        status = "starting" if app_status in ("DEPLOYING", "NOT_STARTED") else "degraded"
        return JSONResponse(Health(status=status, deployments=states).model_dump(), status_code=503)

    @api.post(
        "/v1/ocr",
        response_model=OcrResponse | DocumentOcrResponse,
        responses={
            **_ERRORS,
            200: {
                "description": "JSON (format=json, the default), or the file of format=hocr|alto|txt|pdf",
                "content": {media.split(";")[0]: {} for media in _OCR_FORMATS.values()},
            },
        },
        openapi_extra={
            **_IMAGE_BODY,
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "description": "json (default), hocr, alto (ALTO v4 XML), txt (pages separated by a form "
                    "feed) or pdf (the upload's pages under an invisible text layer): the exporters of "
                    "`ocrjobs bulk --formats`",
                    "schema": {"type": "string", "enum": list(_OCR_FORMATS), "default": "json"},
                }
            ],
        },
        dependencies=[Depends(_bearer)],
    )
    @_guarded
    @_image_route
    async def ocr(self, request: Request) -> OcrResponse | DocumentOcrResponse | Response:
        """Detect the text lines of a page and read each with the recognizer ensemble. A PDF is read page
        by page (at most ``limits.max_pdf_pages``) and answered as ``pages``. ``?format=`` asks for
        hOCR, ALTO, text or a searchable PDF instead of JSON."""
        fmt = request.query_params.get("format", "json").lower()
        if fmt not in _OCR_FORMATS:
            # Before the body is read: a wrong query costs the client no upload.
            raise ApiError(400, "bad_format", f"format {fmt!r} is not one of {', '.join(_OCR_FORMATS)}")
        body = await self._upload(request)
        images: list[np.ndarray | None] | None = [] if fmt == "pdf" else None
        # By its bytes, whatever its label: a body labelled application/pdf that is not one is read
        # as the image it may be (or refused as not_an_image).
        result: OcrResponse | DocumentOcrResponse
        if is_pdf(body):
            result = await self._ocr_pdf(body, images)
        else:
            image = await self._image(request, body)
            result = await self._ocr_page(image)
            if images is not None:
                images.append(image)
        if fmt == "json":
            return result
        data = await asyncio.to_thread(_export, fmt, result, images, self.config.limits.pdf_dpi)
        return Response(content=data, media_type=_OCR_FORMATS[fmt])

    async def _ocr_pdf(
        self, body: bytes, images: list[np.ndarray | None] | None = None
    ) -> DocumentOcrResponse:
        """Every page of a PDF through :meth:`_ocr_page`, a few pages in flight at a time."""
        limits = self.config.limits
        try:
            document = await asyncio.to_thread(
                open_document,
                body,
                dpi=limits.pdf_dpi,
                max_pages=limits.max_pdf_pages,
                max_pixels=limits.max_pixels,
            )
        except DocumentError as exc:
            status = 413 if exc.reason == "too_many_pages" else _DECODE_STATUS.get(exc.reason, 400)
            raise ApiError(status, exc.reason, exc.message) from None
        # Pages are rendered one at a time (PDFium takes one lock) and a few are read at once: the
        # detector batches them with other requests' pages, and the rest wait unrendered.
        in_flight = asyncio.Semaphore(_PDF_PAGES_IN_FLIGHT)

        async def read(number: int) -> PageResult:
            async with in_flight:
                try:
                    image = await asyncio.to_thread(document.page, number)
                except ImageDecodeError as exc:
                    if images is not None:
                        page_images[number] = None
                    return PageResult(
                        page=number,
                        text=None,
                        lines=None,
                        width=None,
                        height=None,
                        error=exc.reason,
                        detail=exc.message,
                    )
                result = await self._ocr_page(image)
                if images is not None:
                    page_images[number] = image
                return PageResult(
                    page=number,
                    text=result.text,
                    lines=result.lines,
                    width=result.width,
                    height=result.height,
                )

        page_images: dict[int, np.ndarray | None] = {}
        try:
            pages = await asyncio.gather(*(read(k) for k in range(1, document.pages + 1)))
        finally:
            await asyncio.to_thread(document.close)
        if images is not None:
            images.extend(page_images.get(k) for k in range(1, document.pages + 1))
        return DocumentOcrResponse(
            pages=list(pages),
            page_count=document.pages,
            text="\f".join(p.text or "" for p in pages),
            models=await self._model_versions(),
        )

    async def _ocr_page(self, image: np.ndarray) -> OcrResponse:
        """Detection, then the ensemble over the page's crops."""
        detection: Detection = await self.detector.detect.remote(image)
        crops = crops_to_read(detection.polygons, detection.scores, detection.crops)
        await self._model_versions()  # the members' drop_score and language model, asked once
        results = await run_ensemble_async(self.members, crops) if crops else []
        lines = assemble_lines(detection.polygons, detection.scores, results, self._drop_score)
        return OcrResponse(
            text=page_text(lines),
            lines=[_line_out(line) for line in lines],
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            models=await self._model_versions(),
        )

    @api.post(
        "/v1/recognize",
        response_model=RecognizeResponse,
        responses=_ERRORS,
        openapi_extra=_IMAGE_BODY,
        dependencies=[Depends(_bearer)],
    )
    @_guarded
    @_image_route
    async def recognize(self, request: Request) -> RecognizeResponse:
        """Read one text-line crop with the ensemble; every member's reading and score is included."""
        crop = await self._image(request)
        versions = await self._model_versions()
        return await self._read_one(self.members, crop, ModelVersions(members=versions.members))

    @api.post(
        "/v1/latex",
        response_model=RecognizeResponse,
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "no formula models configured"}},
        openapi_extra=_IMAGE_BODY,
        dependencies=[Depends(_bearer)],
    )
    @_guarded
    @_image_route
    async def latex(self, request: Request) -> RecognizeResponse:
        """Read one formula image as LaTeX (im2latex-style tokens separated by spaces) with the formula
        ensemble; every member's reading and score is included."""
        self._authorize(request)
        if not self.formulas:
            raise ApiError(404, "not_configured", "this service has no formula models (config: formulas)")
        image = await self._image(request)
        await self._model_versions()
        assert self._formula_versions is not None
        return await self._read_one(self.formulas, image, self._formula_versions)

    async def _read_one(
        self, members: list[HandleMember], crop: np.ndarray, models: ModelVersions
    ) -> RecognizeResponse:
        (result,) = await run_ensemble_async(members, [crop])
        return RecognizeResponse(
            text=result.text,
            score=result.score,
            members=_members_out(result),
            candidates=[
                CandidateScore(
                    text=c.text,
                    score=float(np.exp(c.mean)),
                    member_scores=[float(np.exp(s)) for s in c.member_scores],
                )
                for c in result.candidates
            ],
            width=int(crop.shape[1]),
            height=int(crop.shape[0]),
            models=models,
        )

    @api.get("/v1/models", responses=_ERRORS, dependencies=[Depends(_bearer)])
    @_guarded
    async def models(self, request: Request) -> dict[str, Any]:
        """The detector and the ensemble members: names, versions, architectures, input sizes; limits."""
        self._authorize(request)
        detector, *infos = await asyncio.gather(
            self.detector.info.remote(),
            *(m.handle.info.remote() for m in [*self.members, *self.formulas]),
        )
        members, formulas = infos[: len(self.members)], infos[len(self.members) :]
        for prefix, group in (("Recognizer", members), ("Formula", formulas)):
            for info in group:
                info["deployment"] = f"{prefix}_{info['name']}"
        return {
            "detector": {**detector, "deployment": "Detector"},
            "members": members,
            "ensemble": _ensemble_info(members),
            "formulas": formulas,
            "formula_ensemble": _ensemble_info(formulas),
            "limits": self.config.limits.model_dump(),
        }

    @api.get("/v1/stats", responses=_ERRORS, dependencies=[Depends(_bearer)])
    @_guarded
    async def stats(self, request: Request) -> dict[str, Any]:
        """Responses by route and status (499: the client went away), the image requests in progress
        (this ingress replica) and batch-size histograms (one replica of each model deployment: with
        several replicas, each call may reach a different one)."""
        self._authorize(request)
        named = [(f"Recognizer_{m.name}", m) for m in self.members]
        named += [(f"Formula_{m.name}", m) for m in self.formulas]
        detector, *stats = await asyncio.gather(
            self.detector.stats.remote(), *(m.handle.stats.remote() for _, m in named)
        )
        deployments = {"Detector": detector}
        for (name, _), member_stats in zip(named, stats, strict=True):
            deployments[name] = member_stats
        return {
            "responses": _response_counts(),
            "image_requests": {"in_progress": self._slots.used, "limit": self._slots.size},
            "deployments": deployments,
        }


# ------------------------------------------------------------------------------------ builder


def build_app(args: dict[str, Any] | ServeConfig) -> Application:
    """The application builder named in ``configs/serve.yaml`` (``import_path``).

    Args:
        args: the application's ``args`` (a :class:`~ocrjobs.serve.config.ServeConfig` as a dict; a
            ``ServeConfig`` is accepted too).

    Returns:
        The bound application: ``OcrApi`` over ``Detector``, one ``Recognizer_<member>`` per member and
        one ``Formula_<member>`` per formula member.

    Raises:
        ConfigError: invalid args (the message names the field).

    >>> app = build_app({"members": [{"model": "models/crnn_en"}, {"model": "models/aster_en"}]})
    >>> type(app).__name__
    'Application'
    """
    config = ServeConfig.from_args(args)
    detector = Detector.options(  # type: ignore[attr-defined]  # a Deployment at run time
        name="Detector", **config.detector.deployment_options()
    ).bind(config.detector.model_dump(mode="json"))
    members = [
        Recognizer.options(  # type: ignore[attr-defined]
            name=f"Recognizer_{m.resolved_name}", **m.deployment_options()
        ).bind(m.model_dump(mode="json"))
        for m in config.members
    ]
    formulas = [
        Recognizer.options(  # type: ignore[attr-defined]
            name=f"Formula_{m.resolved_name}", **m.deployment_options()
        ).bind(m.model_dump(mode="json"), formula=True)
        for m in config.formulas
    ]
    return OcrApi.options(  # type: ignore[attr-defined]
        name="OcrApi", **config.ingress.deployment_options()
    ).bind(detector, members, config.model_dump(mode="json"), formulas)
