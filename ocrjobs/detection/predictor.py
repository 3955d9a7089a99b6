"""The detection predictor: images in, text polygons out (the unit every host wraps).

Preprocessing (resize to a side limit, sides multiples of 32, normalise, pad into batches of similar
sizes), a detector under ``torch.inference_mode()``, and :class:`~ocrjobs.detection.postprocess.DBPostProcessor`
per image, after docTR's ``DetectionPredictor``. Ray Data actors, Serve replicas and ``ocrjobs eval``
build one of these (usually with :meth:`DetectionPredictor.from_model_dir`) and call it; nothing else
runs detection. A GPU is configuration only: ``device="cuda"`` (and ``amp=True``) with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ocrjobs import storage
from ocrjobs.backends import INT8_FILE, ONNX_FILE, export_onnx, make_forward
from ocrjobs.config import ConfigError
from ocrjobs.detection.dbnet import DBNet, build_detector
from ocrjobs.detection.postprocess import DBPostProcessor
from ocrjobs.images import pad_to, resize_keep_aspect
from ocrjobs.registry import ModelSpec, read_model_dir, write_model_dir

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DetectedRegion", "DetectionPredictor"]

# The normalisation timm backbones are trained with (RGB, on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREPROCESS_KEYS = frozenset({"limit_side", "mean", "std"})
_POSTPROCESS_KEYS = frozenset(f.name for f in fields(DBPostProcessor))


class _ProbMap(nn.Module):
    """The detector as one tensor in, one out (the probability map): the form ONNX export takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)["prob"]


@dataclass
class DetectedRegion:
    """One detected text region.

    Attributes:
        polygon: float32 ``[n, 2]`` (a ``[4, 2]`` quad unless the post-processor returns polygons), in
            the original image's pixel coordinates, clockwise from the top-left.
        score: mean text probability inside the region, in [0, 1].
    """

    polygon: np.ndarray
    score: float


class DetectionPredictor:
    """Detect text regions in RGB images with a DB model.

    Args:
        model: a module mapping ``[b, 3, H, W]`` normalised images to a dict with a ``"prob"`` map
            ``[b, 1, H, W]`` (a :class:`~ocrjobs.detection.dbnet.DBNet`); it is put in eval mode and
            moved to ``device``.
        limit_side: images whose longer side exceeds this are scaled down to it; smaller ones keep
            their scale. Both sides are then rounded to multiples of 32.
        mean: per-channel RGB mean of the normalisation (on [0, 1] pixels).
        std: per-channel RGB standard deviation.
        postprocessor: maps -> polygons; ``None`` uses the defaults of :class:`DBPostProcessor`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        batch_size: images per forward pass (images of similar size are batched together).
        amp: run the model under autocast (float16 on CUDA, bfloat16 on CPU).
        name: model name reported with results (the model folder's name).
        version: model version reported with results.
        backend: ``torch``, ``onnxruntime``, ``onnxruntime-int8`` or ``auto`` (ONNX Runtime on CPU); see
            :mod:`ocrjobs.backends`.
        onnx_path: a ``model.onnx`` exported from these weights (else one is exported to the local cache).
        onnx_int8_path: a ``model.int8.onnx`` quantised from these weights (``auto`` runs it on CPU).
        onnx_providers: ONNX Runtime execution providers, in order of preference.

    >>> from ocrjobs.detection.dbnet import dbnet_mobilenetv3
    >>> predictor = DetectionPredictor(dbnet_mobilenetv3(neck_channels=32), limit_side=64)
    >>> regions = predictor([np.zeros((40, 100, 3), np.uint8)])
    >>> len(regions)
    1
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        limit_side: int = 1024,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        postprocessor: DBPostProcessor | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        amp: bool = False,
        name: str = "",
        version: str = "",
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        onnx_int8_path: str | Path | None = None,
        onnx_providers: Sequence[str] | None = None,
    ) -> None:
        if limit_side < 32 or batch_size < 1:
            raise ValueError(f"limit_side must be >= 32 and batch_size >= 1, got {limit_side}, {batch_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.limit_side = int(limit_side)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.postprocessor = postprocessor or DBPostProcessor()
        self.batch_size = int(batch_size)
        self.amp = amp
        self.name = name
        self.version = version
        self._mean = torch.tensor(self.mean, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(3, 1, 1)
        self.backend, self._onnx = make_forward(
            _ProbMap(self.model),
            torch.zeros(1, 3, 64, 64),
            (0, 2, 3),
            backend=backend,
            device=self.device,
            amp=amp,
            onnx_path=onnx_path,
            int8_path=onnx_int8_path,
            providers=onnx_providers,
            name=name,
        )

    def _forward(self, resized: list[np.ndarray]) -> np.ndarray:
        """A padded batch through the model -> probability maps ``[b, H, W]`` (float32, padded size)."""
        height = max(image.shape[0] for image in resized)
        width = max(image.shape[1] for image in resized)
        # uint8 crosses to the device and is normalised there (on the GPU when there is one).
        batch = torch.stack([torch.from_numpy(pad_to(image, height, width)) for image in resized])
        batch = batch.to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float()  # [b, h, w, 3] -> [b, 3, h, w]
        batch = (batch / 255.0 - self._mean) / self._std
        # Padding (bottom/right, so coordinates are unchanged) becomes 0, the mean colour.
        for i, image in enumerate(resized):
            batch[i, :, image.shape[0] :, :] = 0.0
            batch[i, :, :, image.shape[1] :] = 0.0
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp):
            prob = self._onnx(batch) if self._onnx is not None else self.model(batch)["prob"]
        return prob[:, 0].float().cpu().numpy()

    def __call__(self, images: list[np.ndarray]) -> list[list[DetectedRegion]]:
        """Detect text in each image.

        Args:
            images: uint8 ``[h, w, 3]`` RGB arrays of any sizes.

        Returns:
            One list of regions per image, in reading order, in that image's pixel coordinates.

        Raises:
            ValueError: an image is not a non-empty uint8 ``[h, w, 3]`` array.
        """
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(
                    f"expected non-empty uint8 [h, w, 3] RGB images, got {image.dtype} {image.shape}"
                )
        resized = [resize_keep_aspect(image, self.limit_side, 32)[0] for image in images]
        # Sorting by size makes each batch's images alike, so little compute goes to padding.
        order = sorted(range(len(images)), key=lambda i: resized[i].shape[:2])
        results: list[list[DetectedRegion]] = [[] for _ in images]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            probs = self._forward([resized[i] for i in chunk])
            for prob, i in zip(probs, chunk, strict=True):
                h, w = resized[i].shape[:2]
                orig_h, orig_w = images[i].shape[:2]
                found = self.postprocessor(prob[:h, :w], orig_w / w, orig_h / h, orig_w, orig_h)
                results[i] = [DetectedRegion(polygon, score) for polygon, score in found]
        return results

    @classmethod
    def from_model_dir(
        cls, path: str | Path, device: str | torch.device = "cpu", **overrides: Any
    ) -> DetectionPredictor:
        """Load a predictor from a detection model folder (local path or ``s3://`` URI).

        Args:
            path: the folder written by :meth:`save_model_dir` / :func:`~ocrjobs.registry.write_model_dir`.
            device: where the model runs.
            **overrides: post-processor fields (``box_thresh=0.5``...) or predictor arguments
                (``limit_side``, ``batch_size``, ``amp``...) that win over the folder's config.

        Returns:
            The predictor, named and versioned after the folder's spec.

        Raises:
            ConfigError: the folder is not a detection model or its config has unknown settings.
            FileNotFoundError: the folder lacks its config or weights.
        """
        spec, weights = read_model_dir(path)
        if spec.task != "detection":
            raise ConfigError(f"{path}: a {spec.task!r} model, not a detection model")
        unknown = (set(spec.preprocess) - _PREPROCESS_KEYS) | (set(spec.postprocess) - _POSTPROCESS_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown pre/post-processing settings {sorted(unknown)}")
        model = build_detector(spec.arch, **spec.arch_kwargs)
        model.load_state_dict(weights)
        post = {**spec.postprocess, **{k: v for k, v in overrides.items() if k in _POSTPROCESS_KEYS}}
        kwargs: dict[str, Any] = {
            **spec.preprocess,
            **{k: v for k, v in overrides.items() if k not in _POSTPROCESS_KEYS},
        }
        kwargs.setdefault("name", spec.name)
        kwargs.setdefault("version", spec.version)
        # Model folders run on ONNX Runtime on CPU unless told otherwise (see ocrjobs.backends).
        kwargs.setdefault("backend", "auto")
        if not storage.is_s3(str(path)):
            kwargs.setdefault("onnx_path", Path(path) / ONNX_FILE)
            kwargs.setdefault("onnx_int8_path", Path(path) / INT8_FILE)
        return cls(model, postprocessor=DBPostProcessor(**post), device=device, **kwargs)

    def export_onnx(self, path: str | Path) -> Path:
        """Write the detector as an ONNX graph (dynamic batch, height and width) to ``path``."""
        return export_onnx(_ProbMap(self.model), torch.zeros(1, 3, 64, 64), path, (0, 2, 3))

    def to_model_spec(self, name: str, version: str) -> ModelSpec:
        """The ``config.yaml`` content that rebuilds this predictor.

        Args:
            name: model name (the folder's name in ``models/``).
            version: model version.

        Returns:
            A detection :class:`~ocrjobs.registry.ModelSpec`.

        Raises:
            ValueError: the model is not a :class:`DBNet` built from the ``ARCHS`` table.
        """
        if not isinstance(self.model, DBNet) or not self.model.arch:
            raise ValueError("only DBNet models built from detection ARCHS can be described by a model spec")
        return ModelSpec(
            name=name,
            task="detection",
            arch=self.model.arch,
            arch_kwargs=self.model.arch_kwargs,
            preprocess={"limit_side": self.limit_side, "mean": list(self.mean), "std": list(self.std)},
            postprocess=asdict(self.postprocessor),
            version=version,
        )

    def save_model_dir(self, path: str | Path, card: str | None = None) -> str:
        """Write this predictor as a model folder (``config.yaml``, ``model.safetensors``, ``CARD.md``).

        Args:
            path: destination folder, local or ``s3://``.
            card: model card text; ``None`` keeps an existing card.

        Returns:
            The folder URI.

        Raises:
            ValueError: see :meth:`to_model_spec`.
        """
        spec = self.to_model_spec(self.name or storage.basename(path), self.version or "0")
        return write_model_dir(path, spec, self.model.state_dict(), card)
