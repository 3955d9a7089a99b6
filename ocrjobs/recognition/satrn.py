"""SATRN: a shallow CNN, a 2-D self-attention encoder and a transformer decoder.

Paper: J. Lee, S. Park, J. Baek, S. J. Oh, S. Kim, H. Lee, "On Recognizing Texts of Arbitrary Shapes
with 2D Self-Attention", CVPR Workshops 2020. The decoder is the standard transformer decoder
(Vaswani et al., NeurIPS 2017) with sinusoidal positions.

Stages: ``features`` (conv + 2x2 max-pool blocks, two by default: ``[b, 3, H, W] -> [b, d, H/4, W/4]``) ->
``sequence`` (adaptive 2-D positional encoding, then encoder layers of self-attention over all ``h*w``
positions and a locality-aware feed-forward, a depthwise 3x3 conv between two 1x1 convs) ->
``prediction`` (transformer decoder over the flattened memory).

The encoder output stays a 2-D feature map ``[b, d, h, w]`` (:meth:`SATRN.encode`): positions keep
their rows and columns, which multi-line inputs such as formulas rely on. Any input size whose sides are
multiples of the CNN stride (4, or 8 with ``cnn_stages=3``) works (positions are computed for the actual ``h, w``); the predictor's ``height`` and
``width`` choose it.

>>> model = satrn(num_classes=96).eval()
>>> model.encode(torch.zeros(2, 3, 32, 100)).shape
torch.Size([2, 256, 8, 25])
>>> model(torch.zeros(2, 3, 32, 100), torch.zeros(2, 7, dtype=torch.long)).shape
torch.Size([2, 7, 96])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ocrjobs.recognition.aster import AttentionRecognizer, State

__all__ = [
    "SATRN",
    "AdaptivePositionalEncoding2D",
    "LocalityAwareFeedForward",
    "SATRNConfig",
    "SATRNEncoder",
    "SATRNEncoderLayer",
    "ShallowCNN",
    "TransformerDecoderHead",
    "satrn",
    "sinusoidal_positions",
]


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Transformer sinusoidal encodings ``[length, dim]`` (sin on even features, cos on odd ones).

    Args:
        length: number of positions.
        dim: features per position (even).
        device: where to build them.

    Returns:
        ``[length, dim]`` float32 encodings.
    """
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(position * freq)
    out[:, 1::2] = torch.cos(position * freq)
    return out


class ShallowCNN(nn.Module):
    """``stages`` blocks of ``depth`` conv-BN-ReLU then a 2x2 max-pool: ``[b, in, H, W] -> [b, dim, H/2^s, W/2^s]``.

    The paper's CNN is two blocks of one conv (``/4``). Three blocks (``/8``) leave a quarter of the
    positions for the self-attention encoder, whose cost grows with their square: what makes wide
    formula images affordable on CPUs.

    Args:
        in_channels: image channels.
        dim: output channels (the model width); each earlier block has half the channels of the next.
        stages: conv + pool blocks (each halves height and width).
        depth: convolutions per block.
    """

    def __init__(self, in_channels: int, dim: int, stages: int = 2, depth: int = 1) -> None:
        super().__init__()
        if stages < 1 or depth < 1:
            raise ValueError(f"stages and depth must be >= 1, got {stages} and {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            out = max(dim >> (stages - 1 - stage), 16)
            for _ in range(depth):
                layers += [nn.Conv2d(channels, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
                channels = out
            layers.append(nn.MaxPool2d(2, 2))
        self.stride = 2**stages
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, in, H, W] -> [b, dim, H/stride, W/stride]``."""
        return self.layers(images)


class AdaptivePositionalEncoding2D(nn.Module):
    """A2DPE: ``x + alpha(x) * p_h + beta(x) * p_w`` with sinusoidal row/column encodings.

    The gates ``alpha`` and ``beta`` (per channel, in ``(0, 1)``) come from two-layer MLPs on the
    globally average-pooled feature map, so the model can weigh vertical against horizontal position
    per image (more for rotated or multi-line text).

    Args:
        dim: channels of the feature map.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.height_gate = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(True), nn.Linear(dim, dim), nn.Sigmoid()
        )
        self.width_gate = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(True), nn.Linear(dim, dim), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, d, h, w] -> [b, d, h, w]`` with positions added."""
        _, d, h, w = x.shape
        pooled = x.mean(dim=(2, 3))  # [b, d, h, w] -> [b, d]
        alpha = self.height_gate(pooled)[:, :, None, None]  # [b, d] -> [b, d, 1, 1]
        beta = self.width_gate(pooled)[:, :, None, None]
        p_h = sinusoidal_positions(h, d, x.device).to(x.dtype).T[None, :, :, None]  # [h, d] -> [1, d, h, 1]
        p_w = sinusoidal_positions(w, d, x.device).to(x.dtype).T[None, :, None, :]  # [w, d] -> [1, d, 1, w]
        return x + alpha * p_h + beta * p_w


class LocalityAwareFeedForward(nn.Module):
    """SATRN's feed-forward: 1x1 conv, depthwise 3x3 conv, 1x1 conv (ReLU between) on the 2-D map.

    Args:
        dim: model width.
        hidden: inner width.
        dropout: dropout on the output.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden),
            nn.ReLU(True),
            nn.Conv2d(hidden, dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, d, h, w] -> [b, d, h, w]``."""
        return self.layers(x)


class SATRNEncoderLayer(nn.Module):
    """Pre-norm encoder layer: 2-D self-attention then the locality-aware feed-forward.

    Args:
        dim: model width.
        heads: attention heads.
        ff: feed-forward inner width.
        dropout: dropout rate.
    """

    def __init__(self, dim: int, heads: int, ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.feed_forward = LocalityAwareFeedForward(dim, ff, dropout)

    def forward(self, seq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``seq [b, h*w, d]`` of a ``size = (h, w)`` map -> ``[b, h*w, d]``."""
        y = self.attn_norm(seq)
        seq = seq + self.attn_dropout(self.attn(y, y, y, need_weights=False)[0])
        b, _, d = seq.shape
        y = self.ff_norm(seq).transpose(1, 2).reshape(b, d, *size)  # [b, h*w, d] -> [b, d, h, w]
        return seq + self.feed_forward(y).flatten(2).transpose(1, 2)  # [b, d, h, w] -> [b, h*w, d]


class SATRNEncoder(nn.Module):
    """A2DPE then ``layers`` :class:`SATRNEncoderLayer` s and a final LayerNorm; keeps the map 2-D.

    Args:
        dim: model width.
        heads: attention heads.
        ff: feed-forward inner width.
        layers: number of encoder layers.
        dropout: dropout rate.
    """

    def __init__(self, dim: int, heads: int, ff: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.positional = AdaptivePositionalEncoding2D(dim)
        self.layers = nn.ModuleList(SATRNEncoderLayer(dim, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, d, h, w] -> [b, d, h, w]``."""
        b, d, h, w = x.shape
        seq = self.positional(x).flatten(2).transpose(1, 2)  # [b, d, h, w] -> [b, h*w, d]
        for layer in self.layers:
            seq = layer(seq, (h, w))
        return self.norm(seq).transpose(1, 2).reshape(b, d, h, w)  # [b, h*w, d] -> [b, d, h, w]


class TransformerDecoderHead(nn.Module):
    """Pre-norm transformer decoder over a memory sequence, with token embeddings and a classifier.

    Args:
        num_classes: output classes (EOS + characters); ``num_classes + 2`` tokens are embedded.
        dim: model width.
        heads: attention heads.
        ff: feed-forward inner width.
        layers: decoder layers.
        dropout: dropout rate.
    """

    def __init__(
        self, num_classes: int, dim: int, heads: int, ff: int, layers: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(num_classes + 2, dim, padding_idx=num_classes + 1)
        layer = nn.TransformerDecoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, memory: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Causal decoding.

        Args:
            memory: ``[b, n, d]`` encoder output.
            inputs: ``[b, L]`` input tokens (BOS then the previous targets).

        Returns:
            ``[b, L, num_classes]`` logits; position ``t`` sees inputs ``0..t`` only.
        """
        length = inputs.shape[1]
        x = self.embedding(inputs) * math.sqrt(self.dim)
        x = x + sinusoidal_positions(length, self.dim, inputs.device).to(x.dtype)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=inputs.device, dtype=x.dtype)
        x = self.transformer(x, memory, tgt_mask=mask, tgt_is_causal=True)
        return self.classifier(x)

    def init_cache(self, memory: torch.Tensor, beams: int = 1) -> State:
        """The decoding state before the first token: each layer's memory keys and values, computed once,
        and empty self-attention keys and values.

        Args:
            memory: ``[b, n, d]`` encoder output.
            beams: decoding rows per memory (beam search): rows ``i * beams`` to ``(i + 1) * beams - 1``
                all attend to memory ``i``, whose keys and values are stored once.

        Returns:
            ``2 * layers`` memory tensors ``[b, heads, n, d / heads]`` then ``2 * layers`` self-attention
            tensors ``[b * beams, heads, 0, d / heads]`` (:meth:`reorder_cache` selects beams).
        """
        memory_kv: list[torch.Tensor] = []
        self_kv: list[torch.Tensor] = []
        for layer in self._layers():
            attn = layer.multihead_attn
            _, w_k, w_v = attn.in_proj_weight.chunk(3)
            _, b_k, b_v = attn.in_proj_bias.chunk(3)
            memory_kv += [
                self._heads(nn.functional.linear(memory, w_k, b_k), attn),
                self._heads(nn.functional.linear(memory, w_v, b_v), attn),
            ]
            empty = memory.new_zeros(memory.shape[0] * beams, attn.num_heads, 0, self.dim // attn.num_heads)
            self_kv += [empty, empty]
        return (*memory_kv, *self_kv)

    def step(self, cache: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Decode one more position with the keys and values of the earlier ones cached.

        Computes what :meth:`forward` computes for the last position of the prefix (the layers' own
        pre-norm arithmetic, in eval mode), in time linear in the prefix instead of quadratic, and
        without recomputing the memory's keys and values at every step.

        Args:
            cache: from :meth:`init_cache` or the previous step.
            tokens: ``[b]`` the input at this position (BOS first, then the previous outputs); ``b`` is
                a multiple of the memory's batch, the rows of each memory consecutive (:meth:`init_cache`).

        Returns:
            The logits ``[b, num_classes]`` of the next token and the cache with this position added.
        """
        layers = self._layers()
        memory_kv, self_kv = self._split(cache)
        position = self_kv[0].shape[2]
        x = self.embedding(tokens[:, None]) * math.sqrt(self.dim)  # [b, 1, d]
        x = x + sinusoidal_positions(position + 1, self.dim, tokens.device)[position].to(x.dtype)
        new_self_kv: list[torch.Tensor] = []
        for i, layer in enumerate(layers):
            sa, mha = layer.self_attn, layer.multihead_attn
            h = layer.norm1(x)
            q, k, v = (
                self._heads(t, sa)
                for t in nn.functional.linear(h, sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            )
            k = torch.cat([self_kv[2 * i], k], dim=2)
            v = torch.cat([self_kv[2 * i + 1], v], dim=2)
            new_self_kv += [k, v]
            x = x + layer.dropout1(
                sa.out_proj(self._merge(nn.functional.scaled_dot_product_attention(q, k, v)))
            )
            h = layer.norm2(x)
            w_q, b_q = mha.in_proj_weight.chunk(3)[0], mha.in_proj_bias.chunk(3)[0]
            q = self._heads(nn.functional.linear(h, w_q, b_q), mha)
            attended = self._cross_attention(q, *memory_kv[2 * i : 2 * i + 2])
            x = x + layer.dropout2(mha.out_proj(self._merge(attended)))
            h = layer.norm3(x)
            x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
        norm = self.transformer.norm
        assert norm is not None  # built with a final LayerNorm (__init__)
        return self.classifier(norm(x))[:, 0], (*memory_kv, *new_self_kv)

    @staticmethod
    def _cross_attention(q: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor) -> torch.Tensor:
        """Attention of the queries ``[rows, heads, 1, e]`` over memory keys/values ``[m, heads, n, e]``,
        ``rows / m`` consecutive rows per memory.

        Each memory's rows are one batch entry's queries, so the keys and values serve them all without
        being copied per beam (copying them per beam at every step cost ~13% of a formula's decoding).
        """
        rows, groups = q.shape[0], mem_k.shape[0]
        if rows == groups:
            return nn.functional.scaled_dot_product_attention(q, mem_k, mem_v)
        heads, e = q.shape[1], q.shape[3]
        grouped = q.reshape(groups, rows // groups, heads, e).transpose(1, 2)  # [m, heads, rows/m, e]
        attended = nn.functional.scaled_dot_product_attention(grouped, mem_k, mem_v)
        return attended.transpose(1, 2).reshape(rows, heads, 1, e)

    def reorder_cache(self, cache: State, rows: torch.Tensor, groups: torch.Tensor | None = None) -> State:
        """The cache of the beams ``rows``: self-attention keys/values selected; memory keys/values kept
        per memory, selected by ``groups`` (the memories still decoding) when some leave.

        Args:
            cache: from :meth:`init_cache` or :meth:`step`.
            rows: indices into the self-attention rows; new row ``j`` of memory ``g`` must come from a row of
                the same memory, ``rows / len(groups or memories)`` consecutive rows per memory.
            groups: indices of the memories kept, in order (``None``: all of them).
        """
        memory_kv, self_kv = self._split(cache)
        if groups is not None:
            memory_kv = tuple(part.index_select(0, groups) for part in memory_kv)
        return (*memory_kv, *(part.index_select(0, rows) for part in self_kv))

    def _split(self, cache: State) -> tuple[State, State]:
        """The cache's memory keys/values and self-attention keys/values (:meth:`init_cache`'s layout)."""
        layers = len(self.transformer.layers)
        return cache[: 2 * layers], cache[2 * layers :]

    def _layers(self) -> list[nn.TransformerDecoderLayer]:
        layers = list(self.transformer.layers)
        # The cached step repeats the pre-norm layer's arithmetic; a post-norm layer would differ.
        assert all(layer.norm_first for layer in layers), "cached decoding needs norm_first layers"
        return layers

    @staticmethod
    def _heads(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
        """``[b, n, d] -> [b, heads, n, d / heads]``."""
        return x.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        """``[b, heads, n, d / heads] -> [b, n, d]``."""
        return x.transpose(1, 2).flatten(2)


@dataclass(frozen=True)
class SATRNConfig:
    """SATRN hyper-parameters; the defaults are the ``satrn`` preset (~8.6 M parameters).

    Attributes:
        num_classes: output classes (``AttentionTokenizer.num_classes``: EOS + characters).
        arch: the ``ARCHS`` key this config started from (written to model folders).
        in_channels: image channels.
        dim: model width (CNN output channels, attention width).
        heads: attention heads.
        encoder_layers: encoder layers.
        decoder_layers: decoder layers.
        encoder_ff: locality-aware feed-forward inner width.
        decoder_ff: decoder feed-forward inner width.
        dropout: dropout rate.
        cnn_stages: conv + pool blocks of the CNN (2: ``/4`` as in the paper, 3: ``/8``).
        cnn_depth: convolutions per CNN block.
    """

    num_classes: int
    arch: str = "satrn"
    in_channels: int = 3
    dim: int = 256
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 3
    encoder_ff: int = 1024
    decoder_ff: int = 1024
    dropout: float = 0.1
    cnn_stages: int = 2
    cnn_depth: int = 1


class SATRN(AttentionRecognizer):
    """Shallow CNN + 2-D transformer encoder + transformer decoder.

    Args:
        config: hyper-parameters.
    """

    def __init__(self, config: SATRNConfig) -> None:
        super().__init__()
        self.config = config
        self.features = ShallowCNN(config.in_channels, config.dim, config.cnn_stages, config.cnn_depth)
        self.sequence = SATRNEncoder(
            config.dim, config.heads, config.encoder_ff, config.encoder_layers, config.dropout
        )
        self.prediction = TransformerDecoderHead(
            config.num_classes,
            config.dim,
            config.heads,
            config.decoder_ff,
            config.decoder_layers,
            config.dropout,
        )

    @property
    def num_classes(self) -> int:
        """Output classes (EOS + characters)."""
        return self.config.num_classes

    @property
    def variable_width(self) -> bool:
        """Any width that is a multiple of the CNN stride: positions are computed for the actual map."""
        return True

    @property
    def variable_height(self) -> bool:
        """Any height that is a multiple of the CNN stride, for the same reason (``preprocess.max_height``)."""
        return True

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` -> the encoded 2-D feature map ``[b, dim, H/stride, W/stride]``."""
        return self.sequence(self.features(images))

    def decode(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[b, L, num_classes]``, all positions in parallel."""
        flat = memory.flatten(2).transpose(1, 2)  # [b, d, h, w] -> [b, h*w, d]
        return self.prediction(flat, self.decoder_inputs(targets))

    def init_state(self, memory: torch.Tensor) -> State:
        """The decoder's key/value cache for this memory (:meth:`TransformerDecoderHead.init_cache`)."""
        return self.init_beam_state(memory, 1)

    def init_beam_state(self, memory: torch.Tensor, beams: int) -> State:
        """The cache of ``beams`` rows per image, each image's memory keys/values stored once."""
        flat = memory.flatten(2).transpose(1, 2)  # [b, d, h, w] -> [b, h*w, d]
        return self.prediction.init_cache(flat, beams)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Feed ``tokens [b]``; returns the next token's logits and the cache with this position added.

        Formulas run to 150 tokens: re-decoding the whole prefix at every step made decoding quadratic
        in the formula's length and recomputed the memory's keys and values each time.
        """
        return self.prediction.step(state, tokens)

    def reorder_state(self, state: State, rows: torch.Tensor, groups: torch.Tensor | None = None) -> State:
        """The beams ``rows``, each image's memory keys/values shared by its beams and selected by ``groups``
        (:meth:`TransformerDecoderHead.reorder_cache`)."""
        return self.prediction.reorder_cache(state, rows, groups)

    def load_deeper(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        """Load the weights of a SATRN like this one but with fewer encoder or decoder layers.

        The layers ``state`` lacks are the last ones of their stack and start as identities (the output
        projections of their residual branches are zero; pre-norm layers then add nothing), so the
        model computes exactly what the smaller one did and training goes on from there with more
        capacity: growing a model trained for many CPU-hours instead of starting a bigger one from
        scratch.

        Args:
            state: the smaller model's state dict.

        Returns:
            The added layers (``sequence.layers.2``, ``prediction.transformer.layers.2``...); empty when
            ``state`` has every layer (it is then loaded strictly).

        Raises:
            ValueError: ``state`` has weights this model lacks, a shape differs, or it lacks a weight
                other than a whole last layer of a stack.
        """
        own = self.state_dict()
        unexpected = sorted(k for k in state if k not in own)
        if unexpected:
            raise ValueError(f"weights this model does not have (a deeper or other model?): {unexpected[:5]}")
        added: dict[str, set[int]] = {}
        for key in own:
            if key in state:
                continue
            match = _GROWABLE.match(key)
            if match is None:
                raise ValueError(f"missing weight {key!r}: only whole encoder/decoder layers can be added")
            added.setdefault(match.group(1), set()).add(int(match.group(2)))
        stacks = {
            "sequence.layers": self.sequence.layers,
            "prediction.transformer.layers": self.prediction.transformer.layers,
        }
        for stack, indices in added.items():
            count = len(stacks[stack])
            if indices != set(range(count - len(indices), count)):
                raise ValueError(f"{stack}: only the last layers can be new, got {sorted(indices)}")
        mismatched = [k for k in state if state[k].shape != own[k].shape]
        if mismatched:
            raise ValueError(
                f"weights of another shape (width, heads or vocabulary differ): {mismatched[:5]}"
            )
        self.load_state_dict(state, strict=False)
        names = []
        with torch.no_grad():
            for stack, indices in sorted(added.items()):
                for index in sorted(indices):
                    layer = stacks[stack][index]
                    if isinstance(layer, SATRNEncoderLayer):
                        outputs: list[Any] = [layer.attn.out_proj, layer.feed_forward.layers[4]]
                    else:  # nn.TransformerDecoderLayer
                        outputs = [layer.self_attn.out_proj, layer.multihead_attn.out_proj, layer.linear2]
                    for module in outputs:
                        nn.init.zeros_(module.weight)
                        nn.init.zeros_(module.bias)
                    names.append(f"{stack}.{index}")
        return names


# Weights of one encoder or decoder layer: the only ones :meth:`SATRN.load_deeper` may find missing.
_GROWABLE = re.compile(r"^(sequence\.layers|prediction\.transformer\.layers)\.(\d+)\.")


def satrn(num_classes: int, **kwargs: Any) -> SATRN:
    """SATRN with width 256, 8 heads, 6 encoder and 3 decoder layers.

    Args:
        num_classes: output classes (EOS + characters).
        **kwargs: :class:`SATRNConfig` fields to override.

    Returns:
        The model.

    >>> sum(p.numel() for p in satrn(96).parameters()) // 10**5 / 10
    8.5
    """
    return SATRN(SATRNConfig(num_classes=num_classes, arch="satrn", **kwargs))
