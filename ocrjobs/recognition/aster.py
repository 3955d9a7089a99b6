"""ASTER: thin-plate-spline rectification, a ResNet + BiLSTM encoder and an attention decoder.

Paper: B. Shi, M. Yang, X. Wang, P. Lyu, C. Yao, X. Bai, "ASTER: An Attentional Scene Text Recognizer
with Flexible Rectification", TPAMI 2019. The TPS grid follows the formulation of clovaai's
deep-text-recognition-benchmark (``modules/transformation.py``); the attention is Bahdanau's additive
attention (Bahdanau, Cho, Bengio, ICLR 2015).

Stages: ``rectification`` (optional TPS: a small localisation net predicts control points on the input
and the image is resampled to ``height x width``) -> ``features`` (ResNet-style CNN from ``crnn.py``,
stages 0-1 halve both axes, later ones the height only) -> ``sequence`` (BiLSTM) -> ``prediction``
(attention GRU/LSTM decoder).

This module also defines :class:`AttentionRecognizer`, the contract every autoregressive recogniser
(ASTER, SATRN) implements: ``forward(images, targets)`` is teacher-forced training, ``generate`` is greedy
inference, and ``encode``/``init_state``/``step`` let decoders (beam search, scoring) drive the model
one token at a time. Token ids follow ``tokenizer.AttentionTokenizer``: EOS = 0, BOS = ``num_classes``,
PAD = ``num_classes + 1``.

>>> model = aster(num_classes=96).eval()
>>> targets = torch.zeros(2, 7, dtype=torch.long)
>>> model(torch.zeros(2, 3, 32, 100), targets).shape
torch.Size([2, 7, 96])
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ocrjobs.recognition.crnn import BiLSTM, ConvFeatures

__all__ = [
    "ASTER",
    "ASTERConfig",
    "AttentionDecoder",
    "AttentionRecognizer",
    "State",
    "TPSRectifier",
    "aster",
]

# Decoder state between steps: a tuple of tensors whose first axis is the batch, so beam search can
# reorder every part of it with one ``index_select``.
State = tuple[torch.Tensor, ...]


class AttentionRecognizer(nn.Module, abc.ABC):
    """Base of autoregressive recognisers: one training method, explicit inference methods.

    Subclasses implement :meth:`encode`, :meth:`decode`, :meth:`init_state` and :meth:`step`.
    """

    decoding: ClassVar[Literal["attention"]] = "attention"

    @property
    def variable_width(self) -> bool:
        """Whether inputs may be any width (batches trimmed to their widest image) rather than the
        fixed ``width`` the model was built for."""
        return False

    @property
    def variable_height(self) -> bool:
        """Whether inputs may be any height that is a multiple of the CNN stride (batches of one height)
        rather than the ``height`` the model was trained at."""
        return False

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Output classes (EOS = 0 and the characters)."""

    @property
    def eos_id(self) -> int:
        """The end token (class 0)."""
        return 0

    @property
    def bos_id(self) -> int:
        """The start token (an input only)."""
        return self.num_classes

    @property
    def pad_id(self) -> int:
        """The padding token (an input only; its embedding is zero)."""
        return self.num_classes + 1

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[b, c, h, w]`` to the decoder's memory (batch first)."""

    @abc.abstractmethod
    def decode(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[b, L, num_classes]`` for targets ``[b, L]`` given the memory."""

    @abc.abstractmethod
    def init_state(self, memory: torch.Tensor) -> State:
        """The decoder state before the first step (BOS is fed to that step)."""

    @abc.abstractmethod
    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Feed the previous tokens ``[b]``; return the next token's logits ``[b, num_classes]``."""

    def init_beam_state(self, memory: torch.Tensor, beams: int) -> State:
        """The decoder state of ``beams`` rows per image (image ``i``'s are rows ``i * beams`` to
        ``(i + 1) * beams - 1``), for beam search over a batch. This default copies the memory per row."""
        return self.init_state(memory.repeat_interleave(beams, dim=0))

    def reorder_state(self, state: State, rows: torch.Tensor, groups: torch.Tensor | None = None) -> State:
        """The state of the beams ``rows`` (indices into the state's first axis), as beam search keeps them.

        ``groups`` names the images still decoding when some leave the batch (``None``: all). Rows always
        stay with their image; a model that stores something once per image (:meth:`init_beam_state`)
        selects it by ``groups``. This default keeps everything per row and needs ``rows`` only.
        """
        return tuple(part.index_select(0, rows) for part in state)

    def decoder_inputs(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets shifted right behind BOS: ``[b, L] -> [b, L]`` (the last target is never an input)."""
        bos = torch.full_like(targets[:, :1], self.bos_id)
        return torch.cat([bos, targets[:, :-1]], dim=1)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for training and scoring.

        Args:
            images: ``[b, c, h, w]`` normalised images.
            targets: ``[b, L]`` targets from ``AttentionTokenizer.encode`` (characters, EOS, PAD).

        Returns:
            ``[b, L, num_classes]`` logits; position ``t`` predicts ``targets[:, t]``.
        """
        return self.decode(self.encode(images), targets)

    def generate(self, images: torch.Tensor, max_len: int) -> torch.Tensor:
        """Greedy autoregressive logits.

        Args:
            images: ``[b, c, h, w]`` normalised images.
            max_len: most steps (EOS included); generation stops earlier once every sample chose EOS.

        Returns:
            ``[b, t, num_classes]`` logits of the generated steps, ``1 <= t <= max_len``.

        Raises:
            ValueError: ``max_len < 1``.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        state = self.init_state(self.encode(images))
        tokens = torch.full((images.shape[0],), self.bos_id, dtype=torch.long, device=images.device)
        done = torch.zeros_like(tokens, dtype=torch.bool)
        steps: list[torch.Tensor] = []
        for _ in range(max_len):
            logits, state = self.step(state, tokens)
            steps.append(logits)
            tokens = logits.argmax(dim=-1)
            done |= tokens == self.eos_id
            if bool(done.all()):
                break
        return torch.stack(steps, dim=1)


class TPSRectifier(nn.Module):
    """Thin-plate-spline rectification (ASTER's STN).

    A localisation CNN looks at a small copy of the input and predicts ``num_points`` source control
    points; the TPS through them maps the fixed target points (two rows along the output's top and
    bottom edges) back into the input, and the input is resampled on that grid. The last layer starts
    at zero weight with the target points as bias, so an untrained rectifier is the identity (a resize).

    Args:
        out_size: ``(height, width)`` of the rectified image.
        num_points: control points (even; half on each edge).
        input_size: ``(height, width)`` the localisation net sees.
        channels: localisation CNN channels (one conv + 2x2 max-pool each).
    """

    inv_delta: torch.Tensor
    grid_basis: torch.Tensor

    def __init__(
        self,
        out_size: tuple[int, int],
        num_points: int = 20,
        input_size: tuple[int, int] = (32, 64),
        channels: tuple[int, ...] = (32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if num_points < 4 or num_points % 2:
            raise ValueError(f"num_points must be even and >= 4, got {num_points}")
        self.out_size = out_size
        self.input_size = input_size
        layers: list[nn.Module] = []
        prev = 3
        for width in channels:
            layers += [nn.Conv2d(prev, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2, 2))
            prev = width
        self.localization = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        points = nn.Linear(prev, 2 * num_points)
        target = self._target_points(num_points)
        nn.init.zeros_(points.weight)
        with torch.no_grad():
            points.bias.copy_(target.flatten())
        self.head = nn.Sequential(nn.Linear(prev, prev), nn.ReLU(True), points)
        # Fixed by the config, hence not saved: a checkpoint only holds learned weights.
        self.register_buffer("inv_delta", self._inverse_kernel(target), persistent=False)
        self.register_buffer("grid_basis", self._grid_basis(target, out_size), persistent=False)

    @staticmethod
    def _target_points(num_points: int) -> torch.Tensor:
        x = torch.linspace(-1.0, 1.0, num_points // 2, dtype=torch.float64)
        top = torch.stack([x, torch.full_like(x, -1.0)], dim=1)
        bottom = torch.stack([x, torch.full_like(x, 1.0)], dim=1)
        return torch.cat([top, bottom]).float()  # [k, 2] as (x, y) in grid_sample coordinates

    @staticmethod
    def _rbf(sq_dist: torch.Tensor) -> torch.Tensor:
        # U(r) = r^2 log r^2 with U(0) = 0.
        return sq_dist * torch.log(sq_dist.clamp_min(1e-12))

    @classmethod
    def _inverse_kernel(cls, target: torch.Tensor) -> torch.Tensor:
        c = target.double()
        k = c.shape[0]
        kernel = cls._rbf(torch.cdist(c, c) ** 2)
        delta = torch.zeros(k + 3, k + 3, dtype=torch.float64)
        delta[:k, 0] = 1.0
        delta[:k, 1:3] = c
        delta[:k, 3:] = kernel
        delta[k : k + 2, 3:] = c.T
        delta[k + 2, 3:] = 1.0
        return torch.linalg.inv(delta).float()  # [k + 3, k + 3]

    @classmethod
    def _grid_basis(cls, target: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        h, w = out_size
        # Pixel centres in [-1, 1], matching grid_sample(align_corners=False).
        ys = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1
        xs = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # [h*w, 2] (x, y)
        rbf = cls._rbf(torch.cdist(grid, target.double()) ** 2)
        return torch.cat([torch.ones(h * w, 1, dtype=torch.float64), grid, rbf], dim=1).float()  # [h*w, k+3]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, h, w]`` images of any size -> ``[b, 3, out_h, out_w]`` rectified images."""
        b = images.shape[0]
        small = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        source = self.head(self.localization(small)).view(b, -1, 2)  # [b, 2k] -> [b, k, 2]
        # The grid stays float32 under autocast: bfloat16 would misplace samples by up to ~0.4 px.
        with torch.autocast(images.device.type, enabled=False):
            padded = torch.cat([source.float(), source.new_zeros(b, 3, 2, dtype=torch.float32)], dim=1)
            coeffs = self.inv_delta @ padded  # [k + 3, k + 3] @ [b, k + 3, 2] -> [b, k + 3, 2]
            grid = self.grid_basis @ coeffs  # [h*w, k + 3] @ [b, k + 3, 2] -> [b, h*w, 2]
            grid = grid.view(b, *self.out_size, 2)  # [b, h*w, 2] -> [b, h, w, 2]
            return F.grid_sample(images.float(), grid, padding_mode="border", align_corners=False)


class AttentionDecoder(nn.Module):
    """Bahdanau-attention RNN decoder over a 1-D memory (ASTER's prediction stage).

    Each step attends with the previous state, feeds ``[embedding(previous token); context]`` to the
    GRU/LSTM cell and classifies the new state.

    Args:
        num_classes: output classes (EOS + characters); ``num_classes + 2`` tokens are embedded.
        memory_dim: features per memory step.
        hidden: RNN cell size.
        embed_dim: token embedding size.
        attn_dim: attention projection size.
        cell: ``"gru"`` or ``"lstm"``.
    """

    def __init__(
        self,
        num_classes: int,
        memory_dim: int,
        hidden: int = 256,
        embed_dim: int = 256,
        attn_dim: int = 256,
        cell: Literal["gru", "lstm"] = "gru",
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.hidden = hidden
        self.cell_kind = cell
        self.embedding = nn.Embedding(num_classes + 2, embed_dim, padding_idx=num_classes + 1)
        self.memory_proj = nn.Linear(memory_dim, attn_dim)
        self.state_proj = nn.Linear(hidden, attn_dim, bias=False)
        self.attn_score = nn.Linear(attn_dim, 1, bias=False)
        rnn_cell = nn.GRUCell if cell == "gru" else nn.LSTMCell
        self.cell = rnn_cell(embed_dim + memory_dim, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def init_state(self, memory: torch.Tensor) -> State:
        """``(memory, projected memory, h[, c])`` with zero RNN state; memory is ``[b, t, d]``."""
        h = memory.new_zeros(memory.shape[0], self.hidden)
        rnn_state = (h, torch.zeros_like(h)) if self.cell_kind == "lstm" else (h,)
        # The memory projection does not depend on the step: compute it once and carry it along.
        return (memory, self.memory_proj(memory), *rnn_state)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """One decoding step: ``tokens [b]`` -> ``(logits [b, num_classes], new state)``."""
        memory, projected, *rnn_state = state
        h = rnn_state[0]
        energy = self.attn_score(torch.tanh(projected + self.state_proj(h).unsqueeze(1))).squeeze(2)  # [b, t]
        alpha = energy.softmax(dim=1)
        context = torch.bmm(alpha.unsqueeze(1), memory).squeeze(1)  # [b, 1, t] @ [b, t, d] -> [b, d]
        x = torch.cat([self.embedding(tokens), context], dim=1)
        if self.cell_kind == "lstm":
            h, c = self.cell(x, (rnn_state[0], rnn_state[1]))
            new_rnn: tuple[torch.Tensor, ...] = (h, c)
        else:
            h = self.cell(x, h)
            new_rnn = (h,)
        return self.classifier(h), (memory, projected, *new_rnn)


@dataclass(frozen=True)
class ASTERConfig:
    """ASTER hyper-parameters; the defaults are the ``aster`` preset (~9.4 M parameters).

    Attributes:
        num_classes: output classes (``AttentionTokenizer.num_classes``: EOS + characters).
        arch: the ``ARCHS`` key this config started from (written to model folders).
        height: rectified image height (the encoder input).
        width: rectified image width.
        rectify: use the TPS rectification stage (otherwise images go to the encoder unchanged).
        tps_points: TPS control points.
        tps_input: ``(height, width)`` the localisation net sees.
        tps_channels: localisation CNN channels.
        channels: ResNet channels per stage (5 stages take a 32-px height to 1).
        depths: basic blocks per stage.
        hidden: BiLSTM hidden units per direction.
        lstm_layers: BiLSTM layers.
        decoder_hidden: decoder RNN size.
        embed_dim: token embedding size.
        attn_dim: attention projection size.
        cell: decoder cell, ``"gru"`` or ``"lstm"``.
    """

    num_classes: int
    arch: str = "aster"
    height: int = 32
    width: int = 100
    rectify: bool = True
    tps_points: int = 20
    tps_input: tuple[int, int] = (32, 64)
    tps_channels: tuple[int, ...] = (32, 64, 128, 256)
    channels: tuple[int, ...] = (32, 64, 128, 256, 384)
    depths: tuple[int, ...] = (1, 2, 2, 2, 1)
    hidden: int = 256
    lstm_layers: int = 2
    decoder_hidden: int = 256
    embed_dim: int = 128
    attn_dim: int = 256
    cell: Literal["gru", "lstm"] = "gru"

    def __post_init__(self) -> None:
        # YAML gives lists; tuples keep the frozen config hashable and comparable.
        for name in ("tps_input", "tps_channels", "channels", "depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


class ASTER(AttentionRecognizer):
    """TPS rectification + ResNet/BiLSTM encoder + attention decoder.

    Args:
        config: hyper-parameters.
    """

    def __init__(self, config: ASTERConfig) -> None:
        super().__init__()
        self.config = config
        self.rectification: nn.Module = nn.Identity()
        if config.rectify:
            self.rectification = TPSRectifier(
                (config.height, config.width), config.tps_points, config.tps_input, config.tps_channels
            )
        self.features = ConvFeatures("resnet", 3, config.channels, config.depths)
        self.sequence = BiLSTM(self.features.out_channels, config.hidden, config.lstm_layers)
        self.prediction = AttentionDecoder(
            config.num_classes,
            self.sequence.out_features,
            config.decoder_hidden,
            config.embed_dim,
            config.attn_dim,
            config.cell,
        )

    @property
    def num_classes(self) -> int:
        """Output classes (EOS + characters)."""
        return self.config.num_classes

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, h, w]`` -> memory ``[b, t, 2 * hidden]`` (``t = width / 4`` with rectification)."""
        x = self.features(self.rectification(images))
        # Average what height is left so taller inputs (e.g. 80-px formula crops) also become 1-D.
        x = x.mean(dim=2)  # [b, c, h', t] -> [b, c, t]
        x = x.transpose(1, 2)  # [b, c, t] -> [b, t, c]
        return self.sequence(x)

    def init_state(self, memory: torch.Tensor) -> State:
        """The decoder's initial state for ``memory [b, t, d]``."""
        return self.prediction.init_state(memory)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """One decoding step (see :class:`AttentionDecoder`)."""
        return self.prediction.step(state, tokens)

    def decode(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[b, L, num_classes]`` (the RNN runs step by step)."""
        inputs = self.decoder_inputs(targets)
        state = self.init_state(memory)
        steps: list[torch.Tensor] = []
        for t in range(inputs.shape[1]):
            logits, state = self.step(state, inputs[:, t])
            steps.append(logits)
        return torch.stack(steps, dim=1)


def aster(num_classes: int, **kwargs: Any) -> ASTER:
    """ASTER at 32x100 with TPS, a 5-stage ResNet (1-2-2-2-1 blocks), BiLSTM 256 and a GRU decoder.

    Args:
        num_classes: output classes (EOS + characters).
        **kwargs: :class:`ASTERConfig` fields to override (e.g. ``height=80, width=320``).

    Returns:
        The model.

    >>> sum(p.numel() for p in aster(96).parameters()) // 10**5 / 10
    9.3
    """
    return ASTER(ASTERConfig(num_classes=num_classes, arch="aster", **kwargs))
