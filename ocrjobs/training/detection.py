"""The detection task: DBNet on pages with text polygons.

Rows (built in the Ray Data CPU stage): the page scaled so its longer side is ``limit_side`` (what the
predictor sees), then, for training, :data:`~ocrjobs.data.augment.DETECTION_PRESET` with square crops of
``data.crop_size`` that never cut a line (or the page scaled into that square without augmentation), and
the four DB target maps from :func:`~ocrjobs.detection.targets.build_db_targets`. Validation rows are
pages scaled to ``limit_side`` and padded to a square, with their ground-truth polygons, scored by the
predictor's post-processing and the ICDAR 2015 IoU-0.5 protocol.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ocrjobs.data.augment import DETECTION_PRESET
from ocrjobs.data.records import Record
from ocrjobs.data.synth import DOCUMENT_KINDS
from ocrjobs.detection.dbnet import build_detector
from ocrjobs.detection.loss import DBLoss
from ocrjobs.detection.postprocess import DBPostProcessor
from ocrjobs.detection.predictor import IMAGENET_MEAN, IMAGENET_STD, DetectionPredictor
from ocrjobs.detection.targets import TARGET_KEYS
from ocrjobs.metrics.detection import aggregate_detection, iou_detection
from ocrjobs.registry import ModelSpec
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.rows import DetectionRows
from ocrjobs.training.task import Batch, Item, PrepareFn

__all__ = ["DetectionTask"]


class DetectionTask:
    """DBNet training: see the module docstring.

    Args:
        cfg: the run's config; ``model.preprocess`` may set ``limit_side`` (1024), ``mean`` and ``std``
            (ImageNet); ``model.postprocess`` holds :class:`~ocrjobs.detection.postprocess.DBPostProcessor`
            fields used for validation and export.
    """

    synth_kinds: tuple[str, ...] = DOCUMENT_KINDS

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        pre = cfg.model.preprocess
        self.limit_side = int(pre.get("limit_side", 1024))
        self.mean = tuple(float(v) for v in pre.get("mean", IMAGENET_MEAN))
        self.std = tuple(float(v) for v in pre.get("std", IMAGENET_STD))
        self.postprocessor = DBPostProcessor(**cfg.model.postprocess)
        self.loss_fn = DBLoss()

    def build_model(self) -> nn.Module:
        """The DBNet of ``model.arch`` with ``model.arch_kwargs``."""
        return build_detector(self.cfg.model.arch, **self.cfg.model.arch_kwargs)

    def record_items(self, records: Sequence[Record], train: bool) -> list[Item]:
        """One item per page (pages without text stay: they teach the background)."""
        return [
            Item({"uri": r.uri, "polygons": [p.tolist() for p in r.polygons], "ignore": r.ignore})
            for r in records
        ]

    def prepare_fn(self, train: bool, vocabulary: Sequence[str]) -> PrepareFn:
        """Rows of ``crop_size`` squares for training, ``limit_side`` squares with ground truth for val."""
        augmenter = None
        if train and self.cfg.data.augment:
            size = self.cfg.data.crop_size
            augmenter = dataclasses.replace(
                DETECTION_PRESET, crop_size=(size, size), **self.cfg.data.augment_options
            )
        return DetectionRows(
            limit_side=self.limit_side,
            size=self.cfg.data.crop_size if train else self.limit_side,
            augmenter=augmenter,
            validation=not train,
            vocabulary=tuple(vocabulary),
            storage=self.cfg.storage,
        )

    def collate(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        """``image`` normalised ``[b, 3, H, W]`` and the four target maps ``[b, H, W]`` as float32."""
        images = torch.from_numpy(batch["image"]).to(device, non_blocking=True)
        images = images.permute(0, 3, 1, 2).float() / 255.0  # [b, h, w, 3] -> [b, 3, h, w]
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        out = {"image": (images - mean) / std}
        for key in TARGET_KEYS:
            out[key] = torch.from_numpy(batch[key].astype(np.float32)).to(device, non_blocking=True)
        return out

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """DB loss (balanced BCE + dice + L1) and its three parts."""
        total, parts = self.loss_fn(model(batch["image"]), batch)
        return total, {k: float(v) for k, v in parts.items()}

    def validate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """``val_loss`` and IoU-0.5 ``val_precision``/``val_recall``/``val_hmean`` with the predictor's post-processing."""
        loss_sum, count, counts = 0.0, 0, []
        for batch in batches:
            tensors = self.collate(batch, device)
            outputs = model(tensors["image"])
            loss, _ = self.loss_fn(outputs, tensors)
            n = len(batch["image"])
            loss_sum, count = loss_sum + float(loss) * n, count + n
            probs = outputs["prob"][:, 0].float().cpu().numpy()
            for prob, (h, w), gt_text in zip(probs, batch["valid_hw"], batch["gt"], strict=True):
                gt = json.loads(gt_text)
                found = self.postprocessor(prob[:h, :w])
                gt_polygons = [np.asarray(p, np.float32).reshape(-1, 2) for p in gt["polygons"]]
                counts.append(iou_detection(gt_polygons, gt["ignore"], [poly for poly, _ in found]))
        scores = aggregate_detection(counts)
        return {"val_loss": loss_sum / max(count, 1), **{f"val_{k}": v for k, v in scores.items()}}

    def build_predictor(self, model: nn.Module) -> DetectionPredictor:
        """The inference predictor with this run's pre- and post-processing."""
        return DetectionPredictor(
            model, limit_side=self.limit_side, mean=self.mean, std=self.std, postprocessor=self.postprocessor
        )

    def model_spec(self, model: nn.Module, name: str, version: str, metrics: dict[str, float]) -> ModelSpec:
        """The predictor's own model spec, with the validation metrics."""
        spec = self.build_predictor(model).to_model_spec(name, version)
        return spec.model_copy(update={"metrics": metrics})
