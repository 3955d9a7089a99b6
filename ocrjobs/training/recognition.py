"""The recognition task: CTC (CRNN) and attention (ASTER, SATRN) recognisers on text-line crops.

Labelled data is box-labelled pages (SROIE, ICDAR, words JSON): every labelled line is cut out with
:func:`~ocrjobs.geometry.crop_polygon`, as the detection predictor's crops are at inference, or line-crop
sets (format ``lines``) whose whole image is the line. Synthetic lines come from
:class:`~ocrjobs.data.synth.LineGenerator`. Rows follow the recognition predictor's preprocessing
(:class:`~ocrjobs.training.rows.RecognitionRows`); the tokenizer encodes texts on the training worker.
Validation decodes greedily and reports CER and exact match from :mod:`ocrjobs.metrics.text`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ocrjobs.config import ConfigError
from ocrjobs.data.augment import RECOGNITION_PRESET
from ocrjobs.data.records import Record
from ocrjobs.metrics.text import text_metrics
from ocrjobs.recognition.decode import attention_greedy_decode, ctc_greedy_decode
from ocrjobs.recognition.losses import attention_loss, case_pairs, ctc_loss
from ocrjobs.recognition.models import AttentionRecognizer, Recognizer, build_recognizer
from ocrjobs.recognition.predictor import RecognitionPredictor, ctc_batch_width
from ocrjobs.recognition.tokenizer import Charset, Tokenizer
from ocrjobs.recognition.vocab import make_tokenizer
from ocrjobs.registry import ModelSpec
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.rows import RecognitionRows
from ocrjobs.training.task import Batch, Item, PrepareFn

__all__ = ["RecognitionTask", "line_images", "line_predictor"]

# A CRNN frame covers 4 px of input width, so a row of width W has W / 4 frames for CTC.
_PIXELS_PER_FRAME = 4


def line_images(
    batch: Batch, mean: Sequence[float], std: Sequence[float], device: torch.device, trim: bool = False
) -> torch.Tensor:
    """Normalised ``[b, 3, h, w]`` images of a batch of line rows (recognition and formula tasks).

    Columns right of each row's ``valid_w`` repeat its last valid column, exactly as
    :func:`~ocrjobs.recognition.predictor.to_batch` pads at inference: a model trained on zero
    padding would see a different right margin in production. With ``trim`` (CTC models, attention
    models with ``variable_width``) the batch is
    cut to its widest row rounded up to 16 px, the width the predictor batches such crops at. Rows of
    variable-height inputs (a ``valid_h`` column) are cut to the batch's tallest and repeat their last
    valid row below it (the predictor batches one height, so it pads no rows).
    """
    images = torch.from_numpy(batch["image"])
    if trim:
        width = min(images.shape[2], ctc_batch_width(int(batch["valid_w"].max())))
        images = images[:, :, :width]
    if "valid_h" in batch:
        images = images[:, : int(batch["valid_h"].max())]
    images = images.to(device, non_blocking=True)
    images = images.permute(0, 3, 1, 2).float() / 255.0  # [b, h, w, 3] -> [b, 3, h, w]
    images = (images - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(
        std, device=device
    ).view(1, 3, 1, 1)
    if "valid_h" in batch:
        images = _repeat_last_valid(images, batch["valid_h"], 2)
    return _repeat_last_valid(images, batch["valid_w"], 3)


def _repeat_last_valid(images: torch.Tensor, valid: np.ndarray, dim: int) -> torch.Tensor:
    """``[b, c, h, w]`` images whose positions along ``dim`` from each row's ``valid[i]`` on repeat its
    last valid position (a row, ``dim=2``, or a column, ``dim=3``)."""
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    positions = torch.arange(images.shape[dim], device=images.device).view(shape)
    limit = torch.from_numpy(valid.astype(np.int64)).to(images.device).view(-1, 1, 1, 1)
    index_shape = list(images.shape)
    index_shape[dim] = 1
    last = images.gather(dim, (limit - 1).clamp_min(0).expand(index_shape))
    return torch.where(positions >= limit, last, images)


def line_predictor(task: Any, model: nn.Module, tokenizer: Tokenizer) -> RecognitionPredictor:
    """The inference predictor of a recognition or formula task: its preprocessing (``height``,
    ``width``, ``mean``, ``std``, ``max_len`` attributes), ``tokenizer`` and the configured decoder."""
    recognizer: Recognizer = model  # type: ignore[assignment]
    settings: dict[str, Any] = {"decoder": "greedy", "beam_width": 5, **task.cfg.model.postprocess}
    return RecognitionPredictor(
        recognizer,
        tokenizer,
        height=task.height,
        width=task.width,
        max_height=getattr(task, "max_height", None),
        scale=getattr(task, "scale", None),
        mean=task.mean,
        std=task.std,
        decoder=settings["decoder"],
        beam_width=int(settings["beam_width"]),
        max_len=task.max_len,
        max_repeat=settings.get("max_repeat"),
        syntax=settings.get("syntax"),
    )


class RecognitionTask:
    """Recogniser training: see the module docstring.

    Args:
        cfg: the run's config; ``model.charset`` is the vocabulary, ``model.preprocess`` may set
            ``height`` (32), ``width`` (256), ``mean`` and ``std`` (0.5); ``model.postprocess`` may set
            ``decoder``, ``beam_width``, ``max_len``, ``max_repeat`` and ``syntax`` for the exported predictor (validation decodes
            greedily, attention models up to ``max_len`` steps).
    """

    synth_kinds: tuple[str, ...] = ("lines",)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        if cfg.model.charset is None:
            raise ConfigError("model.charset is required for task 'recognition'")
        self.charset = Charset.from_dict(cfg.model.charset)
        pre, post = cfg.model.preprocess, cfg.model.postprocess
        self.height = int(pre.get("height", 32))
        self.width = int(pre.get("width", 256))
        self.mean = tuple(float(v) for v in pre.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(float(v) for v in pre.get("std", (0.5, 0.5, 0.5)))
        self.max_len = int(post.get("max_len", 32))
        # The family's decoding is a class attribute: building the (small) model once tells it.
        self.decoding = self.build_model().decoding
        self.tokenizer = make_tokenizer(self.decoding, self.charset)
        self.case_pairs = case_pairs(self.charset.chars)  # letters a case-insensitive source may fold
        # Longest label the model can emit: CTC needs a frame per character, attention stops at max_len
        # steps including EOS.
        self.max_label = self.width // _PIXELS_PER_FRAME if self.decoding == "ctc" else self.max_len - 1

    def build_model(self) -> Recognizer:
        """The recogniser of ``model.arch`` with as many classes as the tokenizer."""
        return build_recognizer(self.cfg.model.arch, len(self.charset) + 1, **self.cfg.model.arch_kwargs)

    def _usable(self, text: str) -> bool:
        text = text.strip()
        return (
            bool(text)
            and self.tokenizer.can_encode(text)
            and len(self.charset.normalize(text)) <= self.max_label
        )

    def record_items(self, records: Sequence[Record], train: bool) -> list[Item]:
        """One item per page with its usable lines (one row each); a whole-image label is one line.

        Lines are dropped when ignored, empty, holding characters outside the charset, or longer than
        the model can emit; the image is then read once for all its lines.
        """
        items = []
        for record in records:
            lines: list[dict[str, Any]] = [
                {
                    "polygon": region.polygon().tolist() if len(region.points) >= 3 else None,
                    "text": region.text.strip(),
                }
                for region in record.regions
                if not region.ignore and self._usable(region.text)
            ]
            if lines:
                items.append(Item({"uri": record.uri, "lines": lines}, rows=len(lines)))
        return items

    def prepare_fn(self, train: bool, vocabulary: Sequence[str]) -> PrepareFn:
        """Line rows of ``height`` x ``width``; training rows are augmented around each line first."""
        augmenter = None
        if train and self.cfg.data.augment:
            augmenter = dataclasses.replace(RECOGNITION_PRESET, **self.cfg.data.augment_options)
        return RecognitionRows(
            height=self.height,
            width=self.width,
            augmenter=augmenter,
            charset=self.charset.chars,
            max_label=self.max_label,
            vocabulary=tuple(vocabulary),
            storage=self.cfg.storage,
        )

    def collate(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        """Normalised ``image`` ``[b, 3, h, w]``, ``targets``, ``lengths`` and ``anycase`` (rows whose
        labels come from a case-insensitive source).

        Columns right of each row's ``valid_w`` repeat its last valid column, exactly as
        :func:`~ocrjobs.recognition.predictor.to_batch` pads at inference: a model trained on zero
        padding would see a different right margin in production.
        """
        images = line_images(batch, self.mean, self.std, device, trim=self.decoding == "ctc")
        targets, lengths = self.tokenizer.encode([str(t) for t in batch["text"]])
        anycase = torch.from_numpy(np.asarray(batch.get("anycase", np.zeros(len(batch["text"]), bool)), bool))
        return {
            "image": images,
            "targets": targets.to(device),
            "lengths": lengths.to(device),
            "anycase": anycase.to(device),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """CTC loss for CTC models, teacher-forced cross-entropy for attention models; letters of
        ``anycase`` rows are scored in either case (:func:`~ocrjobs.recognition.losses.fold_case`)."""
        return self._loss(model, batch)[0], {}

    def _loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` of a collated batch."""
        anycase = batch.get("anycase")
        if self.decoding == "ctc":
            logits = model(batch["image"])
            return ctc_loss(logits, batch["targets"], batch["lengths"], anycase, self.case_pairs), logits
        logits = model(batch["image"], batch["targets"])
        return attention_loss(logits, batch["targets"], anycase=anycase, pairs=self.case_pairs), logits

    def _predict(self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor) -> list[str]:
        if isinstance(model, AttentionRecognizer):
            hypotheses = attention_greedy_decode(model.generate(images, self.max_len), self.tokenizer)
        else:
            hypotheses = ctc_greedy_decode(logits, self.tokenizer)
        return [h.text for h in hypotheses]

    def validate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """``val_loss``, ``val_cer``, ``val_wer``, ``val_exact_match`` (greedy decoding, texts as normalised
        by the charset; rows of case-insensitive sources are compared in upper case)."""
        loss_sum, count = 0.0, 0
        preds: list[str] = []
        refs: list[str] = []
        for batch in batches:
            tensors = self.collate(batch, device)
            loss, logits = self._loss(model, tensors)
            n = len(batch["text"])
            loss_sum, count = loss_sum + float(loss) * n, count + n
            folded = tensors["anycase"].tolist()
            preds += [
                p.upper() if f else p
                for p, f in zip(self._predict(model, tensors["image"], logits), folded, strict=True)
            ]
            refs += [
                self.charset.normalize(str(t)).upper() if f else self.charset.normalize(str(t))
                for t, f in zip(batch["text"], folded, strict=True)
            ]
        scores = text_metrics(preds, refs)
        return {
            "val_loss": loss_sum / max(count, 1),
            "val_cer": scores["cer"],
            "val_wer": scores["wer"],
            "val_exact_match": scores["exact_match"],
        }

    def build_predictor(self, model: nn.Module) -> RecognitionPredictor:
        """The inference predictor with this run's preprocessing and the configured decoder."""
        return line_predictor(self, model, make_tokenizer(self.decoding, self.charset))

    def model_spec(self, model: nn.Module, name: str, version: str, metrics: dict[str, float]) -> ModelSpec:
        """The predictor's own model spec, named and versioned, with the validation metrics."""
        spec = self.build_predictor(model).model_spec(metrics)
        return spec.model_copy(update={"name": name, "version": version})
