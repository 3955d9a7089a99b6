"""CRNN: a CNN over the line image, a BiLSTM over its columns and a CTC classifier per column.

Paper: B. Shi, X. Bai, C. Yao, "An End-to-End Trainable Neural Network for Image-based Sequence
Recognition and Its Application to Scene Text Recognition", TPAMI 2017.

Stages: ``features`` (VGG- or ResNet-style CNN that halves height and width twice, then height only,
and averages what height is left) -> ``sequence`` (2-layer BiLSTM) -> ``prediction`` (linear, CTC).
A 32-pixel-high input of width ``W`` gives ``T = W / 4`` frames; any width that is a multiple of 4
works. The CNN stages and the BiLSTM are public because ASTER (``aster.py``) reuses them.

>>> model = crnn_small(num_classes=96)
>>> model(torch.zeros(2, 3, 32, 128)).shape
torch.Size([2, 32, 96])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

__all__ = [
    "CRNN",
    "BasicBlock",
    "BiLSTM",
    "CRNNConfig",
    "ConvFeatures",
    "crnn_resnet",
    "crnn_small",
    "crnn_vgg",
]

Backbone = Literal["vgg", "resnet"]


def _stage_stride(index: int) -> tuple[int, int]:
    # The first two stages halve both axes (4 px of width per frame, enough for narrow glyphs such as
    # "l1"); later stages halve the height only, as in CRNN and ASTER.
    return (2, 2) if index < 2 else (2, 1)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a projection shortcut when the shape changes.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: ``(sh, sw)`` of the first conv and the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1) or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, in, h, w] -> [b, out, h / sh, w / sw]``."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(True),
    ]


class ConvFeatures(nn.Module):
    """A recognition CNN: stage ``i`` has ``depths[i]`` layers of ``channels[i]`` channels.

    Stages 0 and 1 halve height and width, later stages halve the height only. ``"vgg"`` stacks
    3x3 conv-BN-ReLU layers and max-pools at the end of each stage; ``"resnet"`` starts with a 3x3 stem
    and stacks :class:`BasicBlock` s whose first block strides.

    Args:
        backbone: ``"vgg"`` or ``"resnet"``.
        in_channels: image channels.
        channels: output channels per stage.
        depths: layers (vgg) or blocks (resnet) per stage.

    Raises:
        ValueError: ``channels`` and ``depths`` differ in length, or fewer than two stages.
    """

    def __init__(
        self, backbone: Backbone, in_channels: int, channels: Sequence[int], depths: Sequence[int]
    ) -> None:
        super().__init__()
        if len(channels) != len(depths) or len(channels) < 2:
            raise ValueError(f"need >= 2 stages with one depth each, got channels={channels} depths={depths}")
        if backbone not in ("vgg", "resnet"):
            raise ValueError(f"backbone must be 'vgg' or 'resnet', got {backbone!r}")
        self.out_channels = int(channels[-1])
        self.stem: nn.Module = nn.Identity()
        prev = in_channels
        if backbone == "resnet":
            self.stem = nn.Sequential(*_conv_bn_relu(in_channels, channels[0]))
            prev = channels[0]
        stages: list[nn.Module] = []
        for i, (width, depth) in enumerate(zip(channels, depths, strict=True)):
            stride = _stage_stride(i)
            layers: list[nn.Module] = []
            for j in range(depth):
                if backbone == "vgg":
                    layers += _conv_bn_relu(prev, width)
                else:
                    layers.append(BasicBlock(prev, width, stride if j == 0 else (1, 1)))
                prev = width
            if backbone == "vgg":
                layers.append(nn.MaxPool2d(stride, stride))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, in_channels, h, w] -> [b, channels[-1], h / 2**len(channels), w / 4]``."""
        return self.stages(self.stem(images))


class BiLSTM(nn.Module):
    """Stacked bidirectional LSTM over a batch-first sequence.

    Args:
        input_size: features per step.
        hidden: hidden units per direction (the output has ``2 * hidden`` features).
        num_layers: stacked layers.
        dropout: dropout between layers.
    """

    def __init__(self, input_size: int, hidden: int, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_features = 2 * hidden
        self.rnn = nn.LSTM(
            input_size,
            hidden,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, t, input_size] -> [b, t, 2 * hidden]``."""
        return self.rnn(x)[0]


@dataclass(frozen=True)
class CRNNConfig:
    """CRNN hyper-parameters; the defaults are ``crnn_small``.

    Attributes:
        num_classes: output classes (``CTCTokenizer.num_classes``; class 0 is the blank).
        arch: the ``ARCHS`` key this config started from (written to model folders).
        in_channels: image channels.
        backbone: ``"vgg"`` or ``"resnet"`` CNN.
        channels: CNN channels per stage.
        depths: conv layers (vgg) or basic blocks (resnet) per stage.
        hidden: BiLSTM hidden units per direction.
        lstm_layers: stacked BiLSTM layers.
        dropout: dropout between BiLSTM layers and before the classifier.
    """

    num_classes: int
    arch: str = "crnn_small"
    in_channels: int = 3
    backbone: Backbone = "vgg"
    channels: tuple[int, ...] = (48, 96, 160, 256)
    depths: tuple[int, ...] = (1, 1, 2, 2)
    hidden: int = 160
    lstm_layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # YAML gives lists; tuples keep the frozen config hashable and comparable.
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))


class CRNN(nn.Module):
    """CNN + BiLSTM + CTC classifier.

    Args:
        config: hyper-parameters.
    """

    decoding: ClassVar[Literal["ctc"]] = "ctc"

    def __init__(self, config: CRNNConfig) -> None:
        super().__init__()
        self.config = config
        self.features = ConvFeatures(config.backbone, config.in_channels, config.channels, config.depths)
        self.sequence = BiLSTM(self.features.out_channels, config.hidden, config.lstm_layers, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.prediction = nn.Linear(self.sequence.out_features, config.num_classes)

    @property
    def num_classes(self) -> int:
        """Output classes (blank included)."""
        return self.config.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-frame class logits.

        Args:
            images: ``[b, in_channels, h, w]`` normalised images (``w`` a multiple of 4).

        Returns:
            ``[b, w / 4, num_classes]`` logits (CTC, blank = 0).
        """
        x = self.features(images)
        # Average what height is left so inputs taller than 32 px also collapse to one row.
        x = x.mean(dim=2)  # [b, c, h', t] -> [b, c, t]
        x = x.transpose(1, 2)  # [b, c, t] -> [b, t, c]
        x = self.sequence(x)
        return self.prediction(self.dropout(x))


def _crnn(arch: str, num_classes: int, preset: dict[str, Any], overrides: dict[str, Any]) -> CRNN:
    return CRNN(CRNNConfig(num_classes=num_classes, arch=arch, **{**preset, **overrides}))


def crnn_small(num_classes: int, **kwargs: Any) -> CRNN:
    """A small VGG-style CRNN (~2.5 M parameters with 96 classes), fast enough to train on CPU.

    Args:
        num_classes: output classes including the blank.
        **kwargs: :class:`CRNNConfig` fields to override.

    Returns:
        The model.

    >>> sum(p.numel() for p in crnn_small(96).parameters()) // 10**5 / 10
    2.5
    """
    return _crnn("crnn_small", num_classes, {}, kwargs)


def crnn_vgg(num_classes: int, **kwargs: Any) -> CRNN:
    """The paper's VGG-style CRNN width (64..512 channels, BiLSTM 256; ~7.7 M parameters).

    Args:
        num_classes: output classes including the blank.
        **kwargs: :class:`CRNNConfig` fields to override.

    Returns:
        The model.

    >>> sum(p.numel() for p in crnn_vgg(96).parameters()) // 10**5 / 10
    7.7
    """
    return _crnn("crnn_vgg", num_classes, {"channels": (64, 128, 256, 512), "hidden": 256}, kwargs)


def crnn_resnet(num_classes: int, **kwargs: Any) -> CRNN:
    """A small ResNet-style CRNN (basic blocks 1-2-2-2, ~3.6 M parameters).

    Args:
        num_classes: output classes including the blank.
        **kwargs: :class:`CRNNConfig` fields to override.

    Returns:
        The model.

    >>> sum(p.numel() for p in crnn_resnet(96).parameters()) // 10**5 / 10
    3.5
    """
    preset = {"backbone": "resnet", "channels": (32, 64, 128, 256), "depths": (1, 2, 2, 2), "hidden": 128}
    return _crnn("crnn_resnet", num_classes, preset, kwargs)
