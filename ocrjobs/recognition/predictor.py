"""The recognition predictor: line crops in, text out. Bulk jobs, Serve and ``eval`` wrap this class.

Preprocessing (also used by training so that both see the same pixels):

1. :func:`orient_crop`: a crop narrower than ``0.75`` of its height is taken as a text line that runs
   top to bottom and is turned 90° counter-clockwise (``np.rot90``), as PaddleOCR's
   ``get_rotate_crop_image`` does, so it reads left to right.
2. :func:`resize_crop`: resize to the model height keeping the aspect ratio, width capped at ``width``.
3. :func:`to_batch`: normalise with ``mean``/``std`` and pad on the right to a common width by
   repeating each crop's last column. For a tight text crop that column is background, so padding
   looks like a wider margin rather than a hard edge, and a crop reads the same in any batch width.

CTC models get batches of crops sorted by width, each padded to the widest crop of the batch rounded up
to 16 px; attention models get every crop padded to the fixed ``width``. Results come back in input order.
Decoding is greedy or beam search; a CTC model folder may add a character language model (``lm.json``,
:mod:`ocrjobs.recognition.lm`) that beam search fuses in.

>>> from ocrjobs.recognition.models import build_recognizer
>>> from ocrjobs.recognition.tokenizer import CTCTokenizer
>>> tokenizer = CTCTokenizer()
>>> model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(8, 8, 8, 8), hidden=8)
>>> predictor = RecognitionPredictor(model, tokenizer)
>>> [type(r).__name__ for r in predictor([np.zeros((20, 60, 3), np.uint8)])]
['RecognizedText']
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from ocrjobs import storage
from ocrjobs.backends import INT8_FILE, ONNX_FILE, export_onnx, make_forward
from ocrjobs.config import ConfigError
from ocrjobs.recognition.decode import (
    Hypothesis,
    attention_beam_search,
    attention_greedy_decode,
    attention_log_likelihood_from_logits,
    ctc_beam_search,
    ctc_greedy_decode,
    ctc_log_likelihood,
)
from ocrjobs.recognition.latex import LatexTokenizer
from ocrjobs.recognition.latex_syntax import LatexSyntax
from ocrjobs.recognition.lm import LM_FILE, CharNgramLM
from ocrjobs.recognition.models import AttentionRecognizer, Recognizer, arch_kwargs, build_recognizer
from ocrjobs.recognition.tokenizer import Tokenizer
from ocrjobs.recognition.vocab import make_tokenizer, vocabulary_from_dict
from ocrjobs.registry import ModelSpec, read_model_dir, write_model_dir

__all__ = [
    "MIN_ASPECT",
    "WIDTH_STEP",
    "RecognitionPredictor",
    "RecognizedText",
    "check_input_heights",
    "check_model_kind",
    "ctc_batch_width",
    "input_height",
    "is_tall",
    "latex_predictor_from_model_dir",
    "orient_crop",
    "resize_crop",
    "resized_width",
    "to_batch",
]

SYNTAX_MODES = ("repair",)
"""The predictor's ``syntax`` settings for formula models (see ``RecognitionPredictor``)."""

MIN_ASPECT = 0.75
# CTC batches are padded to a multiple of this width: few distinct shapes, and always a multiple of
# the 4 px a CTC frame covers.
WIDTH_STEP = 16
_PREPROCESS_KEYS = frozenset({"height", "width", "mean", "std", "max_height", "scale"})
# Variable-height inputs are multiples of this height: the SATRN CNN's stride (8 with three stages).
HEIGHT_STEP = 8
_POSTPROCESS_KEYS = frozenset(
    {
        "decoder",
        "beam_width",
        "max_len",
        "max_repeat",
        "syntax",
        "lm",
        "lm_weight",
        "length_bonus",
        "beam_confident",
        "drop_score",
    }
)


@dataclass
class RecognizedText:
    """One recognised crop.

    Attributes:
        text: the recognised text (``""`` for an empty crop or when nothing was read).
        score: line confidence in ``[0, 1]``: ``exp`` of the length-normalised log-likelihood of
            ``text`` (see ``ocrjobs.recognition.decode``); 0 for an empty crop.
        char_scores: one confidence per character of ``text``.
        char_spans: CTC models: where each character of ``text`` lies along the crop, as
            ``(start, end)`` fractions of the crop's width (from its frames on the most probable
            alignment; a character's frames cover only part of its ink); ``None`` from attention
            models, for crops turned upright by :func:`orient_crop`, or when ``text`` has a
            character per several labels.
    """

    text: str
    score: float
    char_scores: list[float]
    char_spans: list[tuple[float, float]] | None = None


def orient_crop(crop: np.ndarray, min_aspect: float = MIN_ASPECT) -> np.ndarray:
    """Turn a tall crop 90° counter-clockwise so top-to-bottom text reads left to right.

    Args:
        crop: ``[h, w, 3]`` image.
        min_aspect: crops with ``w / h`` below this are turned.

    Returns:
        The crop, turned or as given.
    """
    if is_tall(crop, min_aspect):
        return np.ascontiguousarray(np.rot90(crop))
    return crop


def is_tall(crop: np.ndarray, min_aspect: float = MIN_ASPECT) -> bool:
    """Whether :func:`orient_crop` turns this crop (its ``w / h`` is below ``min_aspect``)."""
    h, w = crop.shape[:2]
    return bool(w < min_aspect * h)


def resized_width(height_px: int, width_px: int, height: int, max_width: int) -> int:
    """The width :func:`resize_crop` gives a ``height_px x width_px`` crop."""
    return min(max_width, max(1, round(width_px * height / height_px)))


def input_height(
    height_px: int, height: int, max_height: int | None = None, scale: float | None = None
) -> int:
    """The input height of a ``height_px`` high crop: ``height``, or with ``max_height`` and ``scale``
    (attention models that read any height) the crop at ``scale`` rounded up to a multiple of
    :data:`HEIGHT_STEP`, kept between ``height`` and ``max_height``.

    A fixed height squeezes a tall formula (an array, stacked fractions) to a fraction of the glyph
    size the short ones are read at; a constant ``scale`` keeps glyphs of crops up to
    ``max_height / scale`` px at one size, and short crops are still enlarged to ``height``.

    >>> input_height(85, 64, 128, 0.75), input_height(120, 64, 128, 0.75), input_height(400, 64, 128, 0.75)
    (64, 96, 128)
    """
    if max_height is None or scale is None:
        return height
    stepped = HEIGHT_STEP * math.ceil(height_px * scale / HEIGHT_STEP)
    return int(min(max_height, max(height, stepped)))


def check_input_heights(model: Recognizer, height: int, max_height: int | None, scale: float | None) -> None:
    """Check a variable-height setting (``max_height`` with ``scale``) against the model.

    Raises:
        ValueError: one of the two is given without the other, the model reads one height only, or the
            heights are not multiples of :data:`HEIGHT_STEP` with ``max_height >= height`` and ``scale > 0``.
    """
    if (max_height is None) != (scale is None):
        raise ValueError(f"max_height and scale go together, got {max_height} and {scale}")
    if max_height is None or scale is None:
        return
    if not getattr(model, "variable_height", False):
        raise ValueError(f"max_height is for models that read any height (satrn), not {model.config.arch}")
    if max_height < height or max_height % HEIGHT_STEP or height % HEIGHT_STEP or not scale > 0:
        raise ValueError(
            f"max_height ({max_height}) must be >= height ({height}), both multiples of "
            f"{HEIGHT_STEP}, and scale ({scale}) > 0"
        )


def resize_crop(
    crop: np.ndarray, height: int, max_width: int, max_height: int | None = None, scale: float | None = None
) -> np.ndarray:
    """Resize to ``height`` keeping the aspect ratio; wider results are squeezed to ``max_width``.

    Args:
        crop: ``[h, w, 3]`` uint8 image (``h, w >= 1``).
        height: output height (the least, with ``max_height`` and ``scale``).
        max_width: widest output.
        max_height: tallest output of a variable-height input (see :func:`input_height`).
        scale: input pixels per crop pixel of a variable-height input.

    Returns:
        ``[h', w', 3]`` uint8 with ``h' = input_height(h, height, max_height, scale)`` and
        ``1 <= w' <= max_width``.
    """
    h, w = crop.shape[:2]
    height = input_height(h, height, max_height, scale)
    new_w = resized_width(h, w, height, max_width)
    # INTER_AREA averages when shrinking (no aliasing of thin strokes); linear when enlarging.
    interpolation = cv2.INTER_AREA if h > height else cv2.INTER_LINEAR
    return cv2.resize(crop, (new_w, height), interpolation=interpolation)


def ctc_batch_width(widest: int) -> int:
    """The width a CTC batch is padded to: its widest crop rounded up to :data:`WIDTH_STEP`."""
    return WIDTH_STEP * math.ceil(widest / WIDTH_STEP)


def to_batch(
    crops: Sequence[np.ndarray],
    width: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """Stack resized crops of one height into a normalised batch, padded on the right with each crop's
    last column repeated (more background margin, not a hard edge).

    Args:
        crops: ``[h, w_i, 3]`` uint8 RGB images with ``w_i <= width``.
        width: batch width.
        mean: per-channel mean of ``[0, 1]`` pixel values.
        std: per-channel standard deviation.

    Returns:
        ``[b, 3, h, width]`` float32.

    Raises:
        ValueError: crops differ in height or one is wider than ``width``.
    """
    heights = {c.shape[0] for c in crops}
    if len(heights) != 1 or max(c.shape[1] for c in crops) > width:
        raise ValueError(f"crops need one height and width <= {width}, got {[c.shape for c in crops]}")
    mean_arr = np.asarray(mean, np.float32) * 255.0
    scale = 1.0 / (np.asarray(std, np.float32) * 255.0)
    out = np.empty((len(crops), heights.pop(), width, 3), np.float32)
    for i, crop in enumerate(crops):
        normalised = (crop.astype(np.float32) - mean_arr) * scale
        out[i, :, : crop.shape[1]] = normalised
        out[i, :, crop.shape[1] :] = normalised[:, -1:]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # [b, h, w, 3] -> [b, 3, h, w]


def _check_crop(crop: np.ndarray, index: int) -> None:
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        shape = getattr(crop, "shape", None)
        raise ValueError(
            f"crop {index}: expected an RGB uint8 array [h, w, 3], got {type(crop).__name__} {shape}"
        )


class RecognitionPredictor:
    """Preprocess line crops, run a recogniser under ``torch.inference_mode()`` and decode.

    Every call puts the model in eval mode (a training loop that validates through a predictor must
    switch it back with ``model.train()``).

    Args:
        model: a recogniser from ``ocrjobs.recognition.models`` (CTC or attention).
        tokenizer: its tokenizer (same ``decoding`` and ``num_classes``).
        height: model input height.
        width: CTC models: widest input (wider crops are squeezed); attention models: the fixed input
            width every crop is padded to.
        decoder: ``"greedy"`` or ``"beam"``.
        beam_width: beams for ``decoder="beam"``.
        max_len: attention models: most decoding steps (EOS included).
        max_repeat: attention models: no token is written more than this many times in a row
            (``attention_beam_search``; greedy decoding then runs as a beam of one); ``None``: no limit.
        max_height: attention models that read any height (SATRN): inputs taller than ``height`` up to
            this, with ``scale`` (see :func:`input_height`); ``None``: every input is ``height`` high.
        scale: input pixels per crop pixel of variable-height inputs (with ``max_height``).
        syntax: formula models: ``"repair"`` edits each hypothesis into a formula that passes
            :class:`~ocrjobs.recognition.latex_syntax.LatexSyntax`'s rules (one LaTeX compiles);
            ``None``: outputs as the model writes them.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``...); the model is moved there.
        batch_size: crops per forward pass.
        amp: autocast (bfloat16, or float16 on GPUs without bfloat16); decoding runs in float32.
        mean: normalisation mean of ``[0, 1]`` RGB values.
        std: normalisation standard deviation.
        name: model name (for model folders and outputs); defaults to the arch.
        version: model version written beside results.
        lm: CTC models: a character language model fused into ``decoder="beam"`` (greedy decoding
            ignores it); a model folder keeps it as ``lm.json``.
        lm_weight: weight of the language model's log-probabilities in the beam search.
        length_bonus: beam-search bonus per character (offsets the language model's cost per character).
        beam_confident: CTC beam search: lines whose greedy text has at least this line score keep it and
            skip the search (``ctc_beam_search``'s ``confident``); ``None`` searches every line.
        drop_score: lines of a *page* read with a confidence below this are left out of its results
            (noise read as text: specks, punch holes, scanner bands; :func:`ocrjobs.pipeline.keep_line`).
            The predictor itself still returns every crop's reading; the ``recognize`` task keeps all.
        backend: ``torch``, ``onnxruntime``/``onnxruntime-int8`` (CTC models only) or ``auto`` (ONNX
            Runtime for CTC models on CPU); see :mod:`ocrjobs.backends`.
        onnx_path: a ``model.onnx`` exported from these weights (else one is exported to the local cache).
        onnx_int8_path: a ``model.int8.onnx`` quantised from these weights (``auto`` runs it on CPU).
        onnx_providers: ONNX Runtime execution providers, in order of preference.

    Raises:
        ValueError: tokenizer and model disagree, a setting is out of range, or ``lm`` is given to an
            attention model.
    """

    def __init__(
        self,
        model: Recognizer,
        tokenizer: Tokenizer,
        *,
        height: int = 32,
        width: int = 256,
        max_height: int | None = None,
        scale: float | None = None,
        decoder: Literal["greedy", "beam"] = "greedy",
        beam_width: int = 5,
        max_len: int = 32,
        max_repeat: int | None = None,
        syntax: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        amp: bool = False,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        name: str | None = None,
        version: str = "0",
        lm: CharNgramLM | None = None,
        lm_weight: float = 0.5,
        length_bonus: float = 0.0,
        beam_confident: float | None = None,
        drop_score: float = 0.0,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        onnx_int8_path: str | Path | None = None,
        onnx_providers: Sequence[str] | None = None,
    ) -> None:
        if tokenizer.decoding != model.decoding or tokenizer.num_classes != model.num_classes:
            raise ValueError(
                f"tokenizer ({tokenizer.decoding}, {tokenizer.num_classes} classes) does not fit the model "
                f"({model.decoding}, {model.num_classes} classes)"
            )
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        if min(height, width, beam_width, max_len, batch_size) < 1 or len(mean) != 3 or len(std) != 3:
            raise ValueError(
                "height, width, beam_width, max_len and batch_size must be >= 1; mean/std 3 values"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.height = int(height)
        self.width = int(width)
        check_input_heights(model, self.height, max_height, scale)
        self.max_height = None if max_height is None else int(max_height)
        self.scale = None if scale is None else float(scale)
        self.decoder = decoder
        self.beam_width = int(beam_width)
        self.max_len = int(max_len)
        if max_repeat is not None and (max_repeat < 1 or model.decoding != "attention"):
            raise ValueError(f"max_repeat must be >= 1 and is for attention models, got {max_repeat}")
        self.max_repeat = None if max_repeat is None else int(max_repeat)
        if syntax not in (None, *SYNTAX_MODES):
            raise ValueError(f"syntax must be one of {SYNTAX_MODES} or None, got {syntax!r}")
        if syntax is not None and not isinstance(tokenizer, LatexTokenizer):
            raise ValueError(f"syntax {syntax!r} is for formula models (a LaTeX token vocabulary)")
        self.syntax = syntax
        # The rules outputs are repaired by (syntax "repair" on a formula model).
        self._repair = (
            LatexSyntax(tokenizer.vocabulary.tokens)
            if isinstance(tokenizer, LatexTokenizer) and syntax
            else None
        )
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name or model.config.arch
        self.version = version
        if lm is not None and model.decoding != "ctc":
            raise ValueError(
                "a language model is fused into CTC beam search only; this model is attention-based"
            )
        if lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
        self.lm = lm
        self.lm_weight = float(lm_weight)
        self.length_bonus = float(length_bonus)
        if beam_confident is not None and not 0.0 < beam_confident <= 1.0:
            raise ValueError(f"beam_confident must be in (0, 1], got {beam_confident}")
        self.beam_confident = None if beam_confident is None else float(beam_confident)
        if not 0.0 <= drop_score < 1.0:
            raise ValueError(f"drop_score must be in [0, 1), got {drop_score}")
        self.drop_score = float(drop_score)
        self.backend, self._onnx = make_forward(
            self.model,
            self._example(),
            (0, 3),
            backend=backend,
            device=self.device,
            exportable=model.decoding == "ctc",
            amp=self.amp,
            onnx_path=onnx_path,
            int8_path=onnx_int8_path,
            providers=onnx_providers,
            name=self.name,
        )

    def _example(self) -> torch.Tensor:
        """An input batch of the model's shape (for ONNX export): 2 crops, 64 px wide."""
        return torch.zeros(2, 3, self.height, 64)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """A CTC model's ``[b, T, classes]`` outputs for a batch, on the configured backend."""
        return self._onnx(batch) if self._onnx is not None else self.model(batch)

    @property
    def is_formula(self) -> bool:
        """Whether this model reads formulas (LaTeX tokens) rather than text lines: the one test every
        host uses (:func:`check_model_kind`)."""
        return isinstance(self.tokenizer, LatexTokenizer)

    def export_onnx(self, path: str | Path) -> Path:
        """Write a CTC recogniser as an ONNX graph (dynamic batch and width) to ``path``.

        Raises:
            ConfigError: the model is an attention model (its decoder loop stays in PyTorch).
        """
        if self.model.decoding != "ctc":
            raise ConfigError(f"{self.name}: only CTC recognisers export to ONNX")
        return export_onnx(self.model, self._example(), path, (0, 3))

    # ------------------------------------------------------------ inference

    def __call__(self, crops: Sequence[np.ndarray]) -> list[RecognizedText]:
        """Recognise line crops.

        Args:
            crops: ``[h, w, 3]`` uint8 RGB crops; an empty one (``h`` or ``w`` = 0) reads as ``""``.

        Returns:
            One :class:`RecognizedText` per crop, in input order.

        Raises:
            ValueError: a crop is not an RGB uint8 array.
        """
        results = [RecognizedText("", 0.0, []) for _ in crops]
        for indices, batch in self._batches(crops):
            hyps, n_frames = self._decode(batch)
            for i, hyp in zip(indices, hyps, strict=True):
                spans = self._char_spans(hyp, crops[i], batch.shape[-1], n_frames)
                results[i] = RecognizedText(hyp.text, hyp.score, hyp.char_scores, spans)
        return results

    def _char_spans(
        self, hyp: Hypothesis, crop: np.ndarray, batch_width: int, n_frames: int
    ) -> list[tuple[float, float]] | None:
        """A CTC hypothesis's character frames as fractions of the crop's width (see
        :class:`RecognizedText`)."""
        if hyp.frames is None or len(hyp.frames) != len(hyp.text) or is_tall(crop):
            return None
        # The crop was resized to the model height (width squeezed to at most self.width) and padded
        # on the right to the batch width; frame t covers [t, t + 1) * batch_width / n_frames.
        resized = resized_width(crop.shape[0], crop.shape[1], self.height, self.width)
        step = batch_width / n_frames / resized
        return [(min(1.0, a * step), min(1.0, (z + 1) * step)) for a, z in hyp.frames]

    def score(self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Length-normalised log-likelihood of candidate texts under this model (ensemble scoring).

        Args:
            crops: ``[h, w, 3]`` uint8 RGB crops.
            candidates: for each crop, the texts to score.

        Returns:
            For each crop, one score per candidate: ``log p(text | crop) / (len(text) + 1)`` (CTC), or
            the mean log-probability per token with EOS (attention); ``-inf`` for a text with characters
            outside the charset, one a CTC model cannot align, or any text of an empty crop.

        Raises:
            ValueError: ``crops`` and ``candidates`` differ in length, or a crop is not RGB uint8.
        """
        if len(crops) != len(candidates):
            raise ValueError(f"{len(crops)} crops but {len(candidates)} candidate lists")
        scores = [[-math.inf] * len(texts) for texts in candidates]
        for indices, batch in self._batches(crops):
            pairs = [(k, j) for k, i in enumerate(indices) for j, text in enumerate(candidates[i])]
            pairs = [(k, j) for k, j in pairs if self.tokenizer.can_encode(candidates[indices[k]][j])]
            if not pairs:
                continue
            rows = torch.tensor([k for k, _ in pairs], dtype=torch.long, device=self.device)
            targets, lengths = self.tokenizer.encode([candidates[indices[k]][j] for k, j in pairs])
            targets, lengths = targets.to(self.device), lengths.to(self.device)
            with self._inference():
                if isinstance(self.model, AttentionRecognizer):
                    memory = self.model.encode(batch).index_select(0, rows)
                    values = attention_log_likelihood_from_logits(self.model.decode(memory, targets), targets)
                else:
                    logits = self._logits(batch).index_select(0, rows)
                    values = ctc_log_likelihood(logits, targets, lengths)
            for (k, j), value in zip(pairs, values.tolist(), strict=True):
                scores[indices[k]][j] = value
        return scores

    def ctc_logits(self, crops: Sequence[np.ndarray]) -> list[tuple[list[int], torch.Tensor]]:
        """The CTC model's raw outputs, for decoding the same crops several ways (``ocrjobs lm`` tuning).

        Args:
            crops: ``[h, w, 3]`` uint8 RGB crops; empty ones are left out.

        Returns:
            ``(crop indices, [b, T, num_classes] float32 CPU logits)`` per batch of the predictor.

        Raises:
            ValueError: the model is not a CTC model, or a crop is not an RGB uint8 array.
        """
        if self.model.decoding != "ctc":
            raise ValueError("ctc_logits needs a CTC model")
        out = []
        for indices, batch in self._batches(crops):
            with self._inference():
                out.append((indices, self._logits(batch).float().cpu()))
        return out

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        dtype = torch.bfloat16
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            dtype = torch.float16
        # The model may be shared with a training loop (validation): always infer in eval mode.
        self.model.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            yield

    def _batches(self, crops: Sequence[np.ndarray]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """``(input indices, [b, 3, height, W] batch on the device)`` for the non-empty crops."""
        resized: dict[int, np.ndarray] = {}
        for i, crop in enumerate(crops):
            _check_crop(crop, i)
            if crop.shape[0] and crop.shape[1]:
                resized[i] = resize_crop(
                    orient_crop(crop), self.height, self.width, self.max_height, self.scale
                )
        # By height, then width: a batch holds one height (variable-height inputs) and similar widths.
        order = sorted(resized, key=lambda i: resized[i].shape[:2])
        fixed = isinstance(self.model, AttentionRecognizer) and not self.model.variable_width
        for _, same_height in itertools.groupby(order, key=lambda i: resized[i].shape[0]):
            group = list(same_height)
            for start in range(0, len(group), self.batch_size):
                indices = group[start : start + self.batch_size]
                images = [resized[i] for i in indices]
                width = self.width if fixed else ctc_batch_width(images[-1].shape[1])
                yield indices, to_batch(images, width, self.mean, self.std).to(self.device)

    def _decode(self, batch: torch.Tensor) -> tuple[list[Hypothesis], int]:
        """The batch's hypotheses and its number of CTC frames (0 for attention models)."""
        with self._inference():
            if isinstance(self.model, AttentionRecognizer):
                if self.decoder == "beam" or self.max_repeat is not None:
                    width = self.beam_width if self.decoder == "beam" else 1
                    hyps = attention_beam_search(
                        self.model, batch, self.tokenizer, width, self.max_len, self.max_repeat
                    )
                else:
                    hyps = attention_greedy_decode(self.model.generate(batch, self.max_len), self.tokenizer)
                if self._repair is not None:
                    hyps = [_repaired(hyp, self._repair, self.tokenizer) for hyp in hyps]
                return hyps, 0
            logits = self._logits(batch)
            if self.decoder == "beam":
                hyps = ctc_beam_search(
                    logits,
                    self.tokenizer,
                    self.beam_width,
                    self.lm,
                    self.lm_weight,
                    self.length_bonus,
                    self.beam_confident,
                )
            else:
                hyps = ctc_greedy_decode(logits, self.tokenizer)
            return hyps, int(logits.shape[1])

    # ------------------------------------------------------------ model folders

    @classmethod
    def from_model_dir(
        cls, path: str | Path, device: str | torch.device = "cpu", **overrides: Any
    ) -> RecognitionPredictor:
        """Load a predictor from a model folder (local path or ``s3://``).

        Args:
            path: the folder (``config.yaml`` + ``model.safetensors``).
            device: torch device.
            **overrides: constructor arguments that win over the folder's settings (e.g. ``decoder``).

        Returns:
            The predictor, model in eval mode on ``device``.

        Raises:
            ConfigError: the folder is not a recognition model or its settings are unknown.
            FileNotFoundError: a file is missing.
        """
        spec, weights = read_model_dir(path)
        if spec.task not in ("recognition", "latex") or spec.charset is None:
            raise ConfigError(
                f"{path}: not a recognition or latex model folder (task {spec.task!r}, charset {spec.charset})"
            )
        unknown = (set(spec.preprocess) - _PREPROCESS_KEYS) | (set(spec.postprocess) - _POSTPROCESS_KEYS)
        if unknown:
            raise ConfigError(
                f"{path}: unknown recognition settings {sorted(unknown)}; preprocess takes "
                f"{sorted(_PREPROCESS_KEYS)}, postprocess {sorted(_POSTPROCESS_KEYS)}"
            )
        # A character charset, or the LaTeX token vocabulary of a formula model.
        charset = vocabulary_from_dict(spec.charset)
        kwargs = dict(spec.arch_kwargs)
        # Both tokenizers have len(charset) + 1 classes (blank or EOS first).
        num_classes = int(kwargs.pop("num_classes", len(charset) + 1))
        model = build_recognizer(spec.arch, num_classes, **kwargs)
        model.load_state_dict(weights)
        settings: dict[str, Any] = {
            **spec.preprocess,
            **spec.postprocess,
            "name": spec.name,
            "version": spec.version,
        }
        if settings.get("lm"):
            settings["lm"] = CharNgramLM.from_json(
                storage.read_bytes(storage.join(str(path), settings["lm"]))
            )
        # Model folders run on ONNX Runtime on CPU unless told otherwise (see ocrjobs.backends).
        settings["backend"] = "auto"
        if not storage.is_s3(str(path)):
            settings["onnx_path"] = Path(path) / ONNX_FILE
            settings["onnx_int8_path"] = Path(path) / INT8_FILE
        settings.update(overrides)
        return cls(model, make_tokenizer(model.decoding, charset), device=device, **settings)

    def model_spec(self, metrics: dict[str, float] | None = None) -> ModelSpec:
        """This predictor's model folder config (arch, full arch kwargs, pre/post-processing, charset).

        Args:
            metrics: headline metrics to record.

        Returns:
            The :class:`~ocrjobs.registry.ModelSpec`.
        """
        return ModelSpec(
            name=self.name,
            task="latex" if self.is_formula else "recognition",
            arch=self.model.config.arch,
            arch_kwargs=arch_kwargs(self.model),
            preprocess={
                "height": self.height,
                "width": self.width,
                **(
                    {"max_height": self.max_height, "scale": self.scale}
                    if self.max_height is not None
                    else {}
                ),
                "mean": list(self.mean),
                "std": list(self.std),
            },
            postprocess={
                "decoder": self.decoder,
                "beam_width": self.beam_width,
                "max_len": self.max_len,
                **({"max_repeat": self.max_repeat} if self.max_repeat is not None else {}),
                **({"syntax": self.syntax} if self.syntax is not None else {}),
                **(
                    {"lm": LM_FILE, "lm_weight": self.lm_weight, "length_bonus": self.length_bonus}
                    if self.lm is not None
                    else {}
                ),
                **({"beam_confident": self.beam_confident} if self.beam_confident is not None else {}),
                **({"drop_score": self.drop_score} if self.drop_score else {}),
            },
            charset=self.tokenizer.to_dict(),
            version=self.version,
            metrics=metrics or {},
        )

    def save_model_dir(
        self, path: str | Path, card: str | None = None, metrics: dict[str, float] | None = None
    ) -> str:
        """Write this predictor as a model folder that :meth:`from_model_dir` loads back.

        Args:
            path: destination (local path or ``s3://``).
            card: ``CARD.md`` text (``None`` leaves an existing card alone).
            metrics: headline metrics for ``config.yaml``.

        Returns:
            The folder URI.
        """
        out = write_model_dir(path, self.model_spec(metrics), self.model.state_dict(), card)
        if self.lm is not None:
            storage.write_text(storage.join(out, LM_FILE), self.lm.to_json())
        return out


def latex_predictor_from_model_dir(
    path: str | Path, device: str | torch.device = "cpu", **overrides: Any
) -> RecognitionPredictor:
    """Load a formula model folder (``charset: {name: latex, tokens: [...]}``) as a predictor.

    ``RecognitionPredictor.from_model_dir`` loads both kinds of folder; this one also refuses a folder
    that reads text lines rather than formulas (so a formula job never runs a line model by mistake).

    Args:
        path: the folder (local path or ``s3://``).
        device: torch device.
        **overrides: constructor arguments that win over the folder's settings (e.g. ``decoder``).

    Returns:
        The predictor, model in eval mode on ``device``, with a :class:`LatexTokenizer`.

    Raises:
        ConfigError: the folder is not a formula model.
    """
    predictor = RecognitionPredictor.from_model_dir(path, device=device, **overrides)
    check_model_kind(predictor, formula=True, where=str(path))
    return predictor


def check_model_kind(predictor: RecognitionPredictor, formula: bool, where: str) -> None:
    """Refuse a recognizer of the other kind: a text-line model where formulas are read, or the other
    way round (the bulk job's stages, Serve's members and preflight, and ``ocrjobs eval`` all ask here).

    Args:
        predictor: the loaded recognizer.
        formula: whether the caller reads formulas.
        where: the model folder or config entry, for the message.

    Raises:
        ConfigError: the model is of the other kind.
    """
    if predictor.is_formula != formula:
        held = "a formula model (LaTeX tokens)" if predictor.is_formula else "a text-line model (characters)"
        wanted = "formulas" if formula else "text lines"
        raise ConfigError(f"{where} holds {held}; it cannot be used to read {wanted}")


def _repaired(hyp: Hypothesis, syntax: LatexSyntax, tokenizer: Tokenizer) -> Hypothesis:
    """``hyp`` edited by :meth:`LatexSyntax.repair`; an inserted token gets the formula's score."""
    edited = syntax.repair(hyp.ids)
    ids = [token for token, _ in edited]
    if ids == hyp.ids:
        return hyp
    scores = [hyp.char_scores[source] if source >= 0 else hyp.score for _, source in edited]
    return Hypothesis(ids, tokenizer.decode(ids), scores, hyp.score)
