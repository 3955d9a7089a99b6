"""The formula task: image -> LaTeX with attention recognisers (SATRN, ASTER) on formula images.

Labelled data is whole-image formula labels in the im2latex normalised token style (format ``im2latex``:
``read_im2latex`` gives one region per image whose text is the space-separated tokens); synthetic
formulas (kind ``formulas``) re-render the run's own train formulas and grammar formulas
(:class:`~ocrjobs.data.formulas.FormulaGenerator`). Rows (:class:`~ocrjobs.training.rows.FormulaRows`)
follow the recognition predictor's preprocessing at ``model.preprocess`` height x width, tall images
(aspect below 0.75) turned 90°, with :data:`~ocrjobs.data.augment.FORMULA_PRESET` on train rows.

The vocabulary is ``model.charset: {name: latex, ...}`` (``tokens``, a ``vocab`` file or ``build_from``
an im2latex folder; see :class:`~ocrjobs.recognition.latex.LatexVocabulary`). Formulas with tokens
outside it, or longer than ``max_len - 1`` tokens, are left out and counted.

The loss is the seed recipe's ``0.8 x cross-entropy + 0.2 x bracket penalty``
(:func:`~ocrjobs.recognition.losses.formula_loss`: the penalty of each sample's decode weights that
sample's cross-entropy), with optional label smoothing. Validation decodes greedily and reports the
formula metrics of :func:`~ocrjobs.metrics.text.latex_metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ocrjobs.config import ConfigError
from ocrjobs.data.augment import FORMULA_PRESET
from ocrjobs.data.formulas import FormulaGenerator
from ocrjobs.data.records import Record
from ocrjobs.metrics.text import latex_metrics
from ocrjobs.recognition.decode import attention_greedy_decode
from ocrjobs.recognition.latex import LATEX, LatexTokenizer, LatexVocabulary
from ocrjobs.recognition.losses import attention_loss, bracket_penalty, formula_loss
from ocrjobs.recognition.models import AttentionRecognizer, Recognizer, build_recognizer
from ocrjobs.recognition.predictor import RecognitionPredictor, check_input_heights
from ocrjobs.recognition.vocab import vocabulary_from_dict
from ocrjobs.registry import ModelSpec
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.recognition import line_images, line_predictor
from ocrjobs.training.rows import FormulaRows
from ocrjobs.training.task import Batch, Item, PrepareFn

__all__ = ["FormulaLossConfig", "LatexTask"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FormulaLossConfig:
    """Settings of the formula loss (:func:`~ocrjobs.recognition.losses.formula_loss`).

    Attributes:
        ce_weight: weight of the cross-entropy.
        penalty_weight: weight of the bracket penalty (0 turns the penalty and its decode off).
        label_smoothing: probability mass spread over all classes (0 disables).
        penalty_decode: where the penalised decode comes from: ``teacher_forced`` takes the argmax of the
            training logits (free: no extra forward pass); ``greedy`` runs the model's own greedy
            decoding without gradients (what inference produces, at the cost of a decode per step).
    """

    ce_weight: float = 0.8
    penalty_weight: float = 0.2
    label_smoothing: float = 0.0
    penalty_decode: Literal["teacher_forced", "greedy"] = "teacher_forced"

    def __post_init__(self) -> None:
        if self.ce_weight <= 0 or self.penalty_weight < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                "loss: ce_weight must be > 0, penalty_weight >= 0 and label_smoothing in [0, 1), got "
                f"{self.ce_weight}, {self.penalty_weight}, {self.label_smoothing}"
            )
        if self.penalty_decode not in ("teacher_forced", "greedy"):
            raise ConfigError(
                f"loss.penalty_decode must be teacher_forced or greedy, got {self.penalty_decode!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FormulaLossConfig:
        """Read the settings from a dict (``None`` or ``{}`` gives the defaults).

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        data = dict(data or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ConfigError(f"loss: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**data)


class LatexTask:
    """Formula recogniser training: see the module docstring.

    Args:
        cfg: the run's config. ``model.preprocess`` may set ``height`` (128), ``width`` (256), ``mean`` and
            ``std`` (0.5); ``model.postprocess`` may set ``decoder``, ``beam_width`` and ``max_len`` (160)
            for the exported predictor (validation decodes greedily up to ``max_len`` steps). Loss settings
            (:class:`FormulaLossConfig`) come from the config's ``loss`` section.
        loss: loss settings that win over the config's (tests, notebooks).

    Raises:
        ConfigError: no LaTeX vocabulary in ``model.charset``, or a CTC architecture.
    """

    synth_kinds: tuple[str, ...] = ("formulas",)

    def __init__(self, cfg: TrainConfig, loss: FormulaLossConfig | None = None) -> None:
        self.cfg = cfg
        charset = cfg.model.charset
        if charset is None or charset.get("name") != LATEX:
            raise ConfigError(
                "task 'latex' needs model.charset: {name: latex, tokens|vocab|build_from: ...}, "
                f"got {charset!r}"
            )
        try:
            vocabulary = vocabulary_from_dict(charset)
        except ValueError as exc:
            raise ConfigError(f"model.charset: {exc}") from None
        assert isinstance(vocabulary, LatexVocabulary)
        self.vocabulary = vocabulary
        self.tokenizer = LatexTokenizer(vocabulary)
        pre, post = cfg.model.preprocess, cfg.model.postprocess
        self.height = int(pre.get("height", 128))
        self.width = int(pre.get("width", 256))
        # Variable-height inputs (SATRN): both or neither (RecognitionPredictor checks them).
        self.max_height = None if pre.get("max_height") is None else int(pre["max_height"])
        self.scale = None if pre.get("scale") is None else float(pre["scale"])
        self.mean = tuple(float(v) for v in pre.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(float(v) for v in pre.get("std", (0.5, 0.5, 0.5)))
        self.max_len = int(post.get("max_len", 160))
        self.max_tokens = self.max_len - 1  # the decoder's last step is EOS
        self.loss_config = loss or FormulaLossConfig.from_dict(cfg.loss)
        self.trim = False  # build_model sets it from the model
        model = self.build_model()
        if model.decoding != "attention":
            raise ConfigError(f"task 'latex' needs an attention model (aster, satrn), got {cfg.model.arch!r}")
        try:  # the predictor's check, at start-up
            check_input_heights(model, self.height, self.max_height, self.scale)
        except ValueError as exc:
            raise ConfigError(f"model.preprocess: {exc}") from None
        for split in (cfg.data.train, cfg.data.val):
            for synth in split.synthetic:
                try:  # fail at start-up, not in a data task an hour into the run
                    FormulaGenerator(**synth.options)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"synthetic {synth.kind} options {synth.options}: {exc}") from None
        # Formulas of the train split (fit part only): what synthetic samples may re-render. Filled by
        # record_items(train=True), which the data plan calls before prepare_fn on the same task.
        self.train_formulas: list[str] = []

    def build_model(self) -> Recognizer:
        """The recogniser of ``model.arch`` with one class per token plus EOS."""
        model = build_recognizer(self.cfg.model.arch, len(self.vocabulary) + 1, **self.cfg.model.arch_kwargs)
        # Models that read any width train on batches trimmed to their widest row, as the predictor
        # batches them at inference.
        self.trim = bool(getattr(model, "variable_width", False))
        return model

    def _problem(self, text: str) -> str | None:
        if not text:
            return "empty"
        if not self.tokenizer.can_encode(text):
            return "unknown tokens"
        if len(text.split()) > self.max_tokens:
            return f"longer than {self.max_tokens} tokens"
        return None

    def record_items(self, records: Sequence[Record], train: bool) -> list[Item]:
        """One item per formula image with a usable whole-image label (drops are counted and logged)."""
        items: list[Item] = []
        dropped: Counter[str] = Counter()
        for record in records:
            labels = [r for r in record.regions if not r.ignore and not r.points]
            if len(labels) != 1:
                dropped["not one whole-image label"] += 1
                continue
            text = " ".join(labels[0].text.split())
            problem = self._problem(text)
            if problem is not None:
                dropped[problem] += 1
                continue
            items.append(Item({"uri": record.uri, "text": text}))
            if train:
                self.train_formulas.append(text)
        if dropped:
            causes = ", ".join(f"{n} {cause}" for cause, n in sorted(dropped.items()))
            logger.warning("latex: kept %d of %d formulas (left out: %s)", len(items), len(records), causes)
        return items

    def prepare_fn(self, train: bool, vocabulary: Sequence[str]) -> PrepareFn:
        """Formula rows of ``height`` x ``width``; train rows augmented with the formula preset.

        ``vocabulary`` (the data plan's words) is not used: synthetic formulas draw on the train formulas
        kept by :meth:`record_items` and on the model's token vocabulary. Val synthetic formulas come from
        the grammar only, so they never repeat a train formula.
        """
        augmenter = None
        if train and self.cfg.data.augment:
            augmenter = dataclasses.replace(FORMULA_PRESET, **self.cfg.data.augment_options)
        return FormulaRows(
            height=self.height,
            width=self.width,
            augmenter=augmenter,
            formulas=tuple(self.train_formulas) if train else (),
            vocabulary=self.vocabulary.tokens,
            max_tokens=self.max_tokens,
            storage=self.cfg.storage,
            max_height=self.max_height,
            scale=self.scale,
        )

    def collate(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        """Normalised ``image`` ``[b, 3, h, w]`` (padding repeats each row's last valid column, as the
        predictor pads), ``targets`` and ``lengths`` from the LaTeX tokenizer."""
        images = line_images(batch, self.mean, self.std, device, trim=self.trim)
        targets, lengths = self.tokenizer.encode([str(t) for t in batch["text"]])
        return {"image": images, "targets": targets.to(device), "lengths": lengths.to(device)}

    def penalties(self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``[b]`` bracket penalties of this batch's decodes (see :class:`FormulaLossConfig`)."""
        if self.loss_config.penalty_weight == 0:
            return torch.zeros(logits.shape[0], device=logits.device)
        if self.loss_config.penalty_decode == "greedy":
            module = getattr(model, "module", model)  # DDP wraps the model
            assert isinstance(module, AttentionRecognizer)
            was_training = module.training
            module.eval()
            with torch.no_grad():
                ids = module.generate(images, self.max_len).argmax(dim=-1)
            module.train(was_training)
        else:
            ids = logits.detach().argmax(dim=-1)
        values = [bracket_penalty(self.tokenizer.tokens(row)) for row in ids.cpu()]
        return torch.tensor(values, dtype=torch.float32, device=logits.device)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The formula loss; parts are the plain cross-entropy and the mean bracket penalty."""
        targets = batch["targets"]
        logits = model(batch["image"], targets)
        penalty = self.penalties(model, batch["image"], logits)
        settings = self.loss_config
        loss = formula_loss(
            logits,
            targets,
            penalty,
            ce_weight=settings.ce_weight,
            penalty_weight=settings.penalty_weight,
            label_smoothing=settings.label_smoothing,
        )
        with torch.no_grad():
            ce = float(attention_loss(logits.detach(), targets))
        return loss, {"ce": ce, "bracket_penalty": float(penalty.mean())}

    def validate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Greedy-decoding formula metrics over the val rows.

        Returns:
            ``val_loss`` (token cross-entropy, no smoothing or penalty), ``val_sentence_accuracy``
            (exact match), ``val_token_edit_distance``, ``val_formula_wer``, ``val_bleu4``,
            ``val_formula_score`` (0.9 x SA + 0.1 x (1 - WER)) and ``val_bracket_penalty`` (mean over
            the greedy decodes).
        """
        recognizer: AttentionRecognizer = model  # type: ignore[assignment]
        loss_sum, count = 0.0, 0
        preds: list[str] = []
        refs: list[str] = []
        for batch in batches:
            tensors = self.collate(batch, device)
            logits = recognizer(tensors["image"], tensors["targets"])
            n = len(batch["text"])
            loss_sum, count = loss_sum + float(attention_loss(logits, tensors["targets"])) * n, count + n
            generated = recognizer.generate(tensors["image"], self.max_len)
            preds += [h.text for h in attention_greedy_decode(generated, self.tokenizer)]
            refs += [" ".join(str(t).split()) for t in batch["text"]]
        scores = latex_metrics(preds, refs)
        return {
            "val_loss": loss_sum / max(count, 1),
            "val_sentence_accuracy": scores["sentence_accuracy"],
            "val_token_edit_distance": scores["token_edit_distance"],
            "val_formula_wer": scores["formula_wer"],
            "val_bleu4": scores["bleu4"],
            "val_formula_score": scores["formula_score"],
            "val_bracket_penalty": float(np.mean([bracket_penalty(p) for p in preds])),
        }

    def build_predictor(self, model: nn.Module) -> RecognitionPredictor:
        """The inference predictor with this run's preprocessing, vocabulary and configured decoder."""
        return line_predictor(self, model, LatexTokenizer(self.vocabulary))

    def model_spec(self, model: nn.Module, name: str, version: str, metrics: dict[str, float]) -> ModelSpec:
        """The predictor's model spec (task ``latex``: its tokenizer is a LaTeX one), named and versioned,
        with metrics."""
        spec = self.build_predictor(model).model_spec(metrics)
        return spec.model_copy(update={"name": name, "version": version})
