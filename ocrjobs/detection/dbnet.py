"""DBNet and DBNet++ text detectors on timm backbones.

Papers:
    * DBNet: Liao, Wan, Yao, Chen, Bai. "Real-time Scene Text Detection with Differentiable
      Binarization." AAAI 2020.
    * DBNet++: Liao, Zou, Wan, Yao, Bai. "Real-Time Scene Text Detection with Differentiable
      Binarization and Adaptive Scale Fusion." IEEE TPAMI 2022 (the Adaptive Scale Fusion module with
      spatial attention, as in the authors' ``ScaleFeatureSelection`` / ``ScaleSpatialAttention``).

Layout follows docTR's ``differentiable_binarization/pytorch.py``: a timm ``features_only`` backbone,
a feature pyramid neck sized from ``feature_info`` (never from a dummy forward pass), and a head with
a probability branch and a threshold branch. The model only maps images to maps; targets, loss and
post-processing live in :mod:`ocrjobs.detection.targets`, :mod:`~ocrjobs.detection.loss` and
:mod:`~ocrjobs.detection.postprocess`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "AdaptiveScaleFusion",
    "DBHead",
    "DBNet",
    "DBNetConfig",
    "FeaturePyramid",
    "build_detector",
    "dbnet_convnext_tiny",
    "dbnet_efficientnet_b0",
    "dbnet_mobilenetv3",
    "dbnet_resnet18",
    "dbnet_resnet50",
    "dbnetpp_convnext_tiny",
    "dbnetpp_efficientnet_b0",
    "dbnetpp_mobilenetv3",
    "dbnetpp_resnet18",
    "dbnetpp_resnet50",
]

# The head upsamples by 4 with two stride-2 transposed convolutions, so the finest feature map
# handed to the neck must be at 1/4 of the input resolution.
_HEAD_UPSAMPLING = 4


@dataclass(frozen=True)
class DBNetConfig:
    """Hyper-parameters of a DBNet/DBNet++ model.

    Attributes:
        backbone: timm model name (created with ``features_only=True, pretrained=False``).
        out_indices: backbone feature levels fed to the neck; the first must have reduction 4.
        neck_channels: channels of the pyramid (``C``); each level contributes ``C / 4`` to the fused map.
        asf: use DBNet++'s Adaptive Scale Fusion instead of plain concatenation.
        k: amplification factor of the differentiable binarization ``sigmoid(k (P - T))``.
    """

    backbone: str
    out_indices: tuple[int, ...] = (1, 2, 3, 4)
    neck_channels: int = 256
    asf: bool = False
    k: float = 50.0


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FeaturePyramid(nn.Module):
    """DBNet's FPN: lateral 1x1 convs, a top-down pathway, and per-level 3x3 convs upsampled to the finest level.

    Args:
        in_channels: channels of each backbone level, finest first.
        channels: pyramid width ``C``; the output has ``C // 4`` channels per level.
    """

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        if channels < 4 or channels % 4:
            raise ValueError(f"neck channels must be a positive multiple of 4, got {channels}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels // 4, 3) for _ in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Fuse the levels top-down.

        Args:
            features: backbone maps, finest first.

        Returns:
            One ``[b, C/4, h, w]`` map per level, all at the finest level's size.
        """
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        size = laterals[0].shape[-2:]
        return [
            F.interpolate(conv(p), size=size, mode="nearest")
            for conv, p in zip(self.smooth, laterals, strict=True)
        ]


class AdaptiveScaleFusion(nn.Module):
    """DBNet++'s Adaptive Scale Fusion: per-pixel weights for each pyramid level.

    The concatenated levels go through a 3x3 conv; spatial attention (channel mean -> conv -> ReLU ->
    conv -> sigmoid) is added back onto those features, and a 1x1 conv with a sigmoid gives one weight
    map per level, which scales that level before concatenation.

    Args:
        channels: channels of the concatenated levels (``C``).
        num_levels: number of pyramid levels ``N``.
    """

    def __init__(self, channels: int, num_levels: int) -> None:
        super().__init__()
        self.num_levels = num_levels
        inner = channels // 4
        self.conv = nn.Conv2d(channels, inner, 3, padding=1)
        self.spatial = nn.Sequential(
            nn.Conv2d(1, 1, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(1, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.level_weights = nn.Sequential(nn.Conv2d(inner, num_levels, 1, bias=False), nn.Sigmoid())

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """Weight and concatenate the levels.

        Args:
            levels: ``N`` maps of ``C / N`` channels each, ``[b, C/N, h, w]``.

        Returns:
            ``[b, C, h, w]``.
        """
        x = self.conv(torch.cat(list(levels), dim=1))
        # [b, C/4, h, w] + [b, 1, h, w] (broadcast over channels)
        x = x + self.spatial(x.mean(dim=1, keepdim=True))
        weights = self.level_weights(x)  # [b, N, h, w]
        return torch.cat([weights[:, i : i + 1] * level for i, level in enumerate(levels)], dim=1)


class _MapBranch(nn.Module):
    """One output map: conv-bn-relu, then two stride-2 transposed convs back to the input resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = channels // 4
        self.conv = nn.Conv2d(channels, inner, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(inner)
        self.up1 = nn.ConvTranspose2d(inner, inner, 2, stride=2)
        self.up_norm = nn.BatchNorm2d(inner)
        self.up2 = nn.ConvTranspose2d(inner, 1, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """``[b, C, h, w]`` -> logits ``[b, 1, 4h, 4w]``."""
        x = F.relu(self.norm(self.conv(x)), inplace=True)
        x = F.relu(self.up_norm(self.up1(x)), inplace=True)
        return self.up2(x)


class DBHead(nn.Module):
    """The probability and threshold branches of DBNet.

    Args:
        channels: channels of the fused neck output.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.prob_head = _MapBranch(channels)
        self.thresh_head = _MapBranch(channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[b, C, h, w]`` -> (probability logits, threshold logits), each ``[b, 1, 4h, 4w]``."""
        return self.prob_head(x), self.thresh_head(x)


class _Neck(nn.Module):
    """Pyramid, then fusion of its levels (plain concatenation or Adaptive Scale Fusion)."""

    def __init__(self, in_channels: Sequence[int], channels: int, asf: bool) -> None:
        super().__init__()
        self.fpn = FeaturePyramid(in_channels, channels)
        self.out_channels = len(in_channels) * (channels // 4)
        self.asf = AdaptiveScaleFusion(self.out_channels, len(in_channels)) if asf else None

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone levels -> ``[b, N * C/4, h/4, w/4]`` (``C`` for the usual 4 levels)."""
        levels = self.fpn(features)
        return self.asf(levels) if self.asf is not None else torch.cat(levels, dim=1)


class DBNet(nn.Module):
    """DBNet (``asf=False``) or DBNet++ (``asf=True``) with stages ``backbone``, ``neck``, ``head``.

    Args:
        config: the architecture's hyper-parameters.
        arch: the :data:`ARCHS` key that builds this model ("" for a hand-made config); with
            ``arch_kwargs`` it is what a model folder records to rebuild the model.
        arch_kwargs: the keyword arguments given to that builder.

    Raises:
        ValueError: the first backbone level is not at 1/4 resolution, or the neck width is not
            a positive multiple of 4.
    """

    def __init__(
        self, config: DBNetConfig, arch: str = "", arch_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.backbone = timm.create_model(
            config.backbone, pretrained=False, features_only=True, out_indices=config.out_indices
        )
        # Every timm features_only model carries a FeatureInfo (nn.Module attribute access is untyped).
        info = cast(FeatureInfo, self.backbone.feature_info)
        reductions = info.reduction()
        if reductions[0] != _HEAD_UPSAMPLING:
            raise ValueError(
                f"{config.backbone} out_indices={config.out_indices} start at reduction {reductions[0]}, "
                f"the DB head needs {_HEAD_UPSAMPLING}"
            )
        self.neck = _Neck(info.channels(), config.neck_channels, config.asf)
        self.head = DBHead(self.neck.out_channels)
        self._init_neck_and_head()

    def _init_neck_and_head(self) -> None:
        # Kaiming init for the new layers (timm initialises the backbone); BN starts as identity.
        for module in (*self.neck.modules(), *self.head.modules()):
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predict the DB maps.

        Args:
            x: normalised images ``[b, 3, H, W]`` (H and W multiples of 32 avoid any resampling).

        Returns:
            ``{"prob": P, "thresh": T, "binary": sigmoid(k (P - T))}``, each ``[b, 1, H, W]`` in [0, 1].
        """
        features = self.backbone(x)
        prob_logits, thresh_logits = self.head(self.neck(features))
        if prob_logits.shape[-2:] != x.shape[-2:]:
            # Sides that are not multiples of the backbone stride lose a few pixels to flooring.
            prob_logits = F.interpolate(prob_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            thresh_logits = F.interpolate(
                thresh_logits, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        prob = torch.sigmoid(prob_logits)
        thresh = torch.sigmoid(thresh_logits)
        binary = torch.sigmoid(self.config.k * (prob - thresh))
        return {"prob": prob, "thresh": thresh, "binary": binary}


def _dbnet(arch: str, backbone: str, out_indices: tuple[int, ...], asf: bool, **kwargs: Any) -> DBNet:
    config = dataclasses.replace(DBNetConfig(backbone=backbone, out_indices=out_indices, asf=asf), **kwargs)
    return DBNet(config, arch=arch, arch_kwargs=kwargs)


def dbnet_resnet18(**kwargs: Any) -> DBNet:
    """DBNet on a ResNet-18 backbone.

    Args:
        **kwargs: overrides of :class:`DBNetConfig` fields (``neck_channels``, ``k``...).

    Returns:
        The model with random weights.

    >>> model = dbnet_resnet18(neck_channels=32)
    >>> sorted(model(torch.zeros(1, 3, 64, 64)))
    ['binary', 'prob', 'thresh']
    """
    return _dbnet("dbnet_resnet18", "resnet18", (1, 2, 3, 4), False, **kwargs)


def dbnet_resnet50(**kwargs: Any) -> DBNet:
    """DBNet on a ResNet-50 backbone (the papers' main setting, without deformable convs)."""
    return _dbnet("dbnet_resnet50", "resnet50", (1, 2, 3, 4), False, **kwargs)


def dbnet_efficientnet_b0(**kwargs: Any) -> DBNet:
    """DBNet on an EfficientNet-B0 backbone."""
    return _dbnet("dbnet_efficientnet_b0", "efficientnet_b0", (1, 2, 3, 4), False, **kwargs)


def dbnet_convnext_tiny(**kwargs: Any) -> DBNet:
    """DBNet on a ConvNeXt-Tiny backbone (its stem already reduces by 4, so levels 0-3)."""
    return _dbnet("dbnet_convnext_tiny", "convnext_tiny", (0, 1, 2, 3), False, **kwargs)


def dbnet_mobilenetv3(**kwargs: Any) -> DBNet:
    """DBNet on a MobileNetV3-Large (``mobilenetv3_large_100``) backbone: the fast CPU option."""
    return _dbnet("dbnet_mobilenetv3", "mobilenetv3_large_100", (1, 2, 3, 4), False, **kwargs)


def dbnetpp_resnet18(**kwargs: Any) -> DBNet:
    """DBNet++ (Adaptive Scale Fusion) on a ResNet-18 backbone.

    Args:
        **kwargs: overrides of :class:`DBNetConfig` fields.

    Returns:
        The model with random weights.

    >>> model = dbnetpp_resnet18(neck_channels=32)
    >>> model(torch.zeros(1, 3, 64, 64))["binary"].shape
    torch.Size([1, 1, 64, 64])
    """
    return _dbnet("dbnetpp_resnet18", "resnet18", (1, 2, 3, 4), True, **kwargs)


def dbnetpp_resnet50(**kwargs: Any) -> DBNet:
    """DBNet++ on a ResNet-50 backbone."""
    return _dbnet("dbnetpp_resnet50", "resnet50", (1, 2, 3, 4), True, **kwargs)


def dbnetpp_efficientnet_b0(**kwargs: Any) -> DBNet:
    """DBNet++ on an EfficientNet-B0 backbone."""
    return _dbnet("dbnetpp_efficientnet_b0", "efficientnet_b0", (1, 2, 3, 4), True, **kwargs)


def dbnetpp_convnext_tiny(**kwargs: Any) -> DBNet:
    """DBNet++ on a ConvNeXt-Tiny backbone."""
    return _dbnet("dbnetpp_convnext_tiny", "convnext_tiny", (0, 1, 2, 3), True, **kwargs)


def dbnetpp_mobilenetv3(**kwargs: Any) -> DBNet:
    """DBNet++ on a MobileNetV3-Large backbone."""
    return _dbnet("dbnetpp_mobilenetv3", "mobilenetv3_large_100", (1, 2, 3, 4), True, **kwargs)


ARCHS: dict[str, Callable[..., DBNet]] = {
    "dbnet_resnet18": dbnet_resnet18,
    "dbnet_resnet50": dbnet_resnet50,
    "dbnet_efficientnet_b0": dbnet_efficientnet_b0,
    "dbnet_convnext_tiny": dbnet_convnext_tiny,
    "dbnet_mobilenetv3": dbnet_mobilenetv3,
    "dbnetpp_resnet18": dbnetpp_resnet18,
    "dbnetpp_resnet50": dbnetpp_resnet50,
    "dbnetpp_efficientnet_b0": dbnetpp_efficientnet_b0,
    "dbnetpp_convnext_tiny": dbnetpp_convnext_tiny,
    "dbnetpp_mobilenetv3": dbnetpp_mobilenetv3,
}


def build_detector(arch: str, **kwargs: Any) -> DBNet:
    """Build a detector from the :data:`ARCHS` table.

    Args:
        arch: a key of :data:`ARCHS`.
        **kwargs: overrides of :class:`DBNetConfig` fields.

    Returns:
        The model with random weights.

    Raises:
        ValueError: ``arch`` is not in the table.

    >>> build_detector("dbnet_mobilenetv3", neck_channels=32).arch
    'dbnet_mobilenetv3'
    """
    try:
        builder = ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown detection arch {arch!r}; choose one of {sorted(ARCHS)}") from None
    return builder(**kwargs)
