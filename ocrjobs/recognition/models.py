"""The recognition architecture table: every name a config or model folder may give as ``arch``.

A builder takes ``num_classes`` (the tokenizer's) and keyword overrides of its family's config
dataclass. Every built model has ``.config`` (that dataclass, whose ``arch`` is the table key),
``.num_classes`` and ``.decoding`` (``"ctc"`` or ``"attention"``: which tokenizer and decoders fit it).

>>> model = build_recognizer("crnn_small", num_classes=96, hidden=64)
>>> model.decoding, model.config.arch
('ctc', 'crnn_small')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from ocrjobs.recognition.aster import ASTER, AttentionRecognizer, aster
from ocrjobs.recognition.crnn import CRNN, crnn_resnet, crnn_small, crnn_vgg
from ocrjobs.recognition.satrn import SATRN, satrn

__all__ = ["ARCHS", "AttentionRecognizer", "Recognizer", "arch_kwargs", "build_recognizer"]

Recognizer = CRNN | ASTER | SATRN

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "crnn_small": crnn_small,
    "crnn_vgg": crnn_vgg,
    "crnn_resnet": crnn_resnet,
    "aster": aster,
    "satrn": satrn,
}


def build_recognizer(arch: str, num_classes: int, **kwargs: Any) -> Recognizer:
    """Build a recogniser from the :data:`ARCHS` table.

    Args:
        arch: a key of :data:`ARCHS`.
        num_classes: output classes (``tokenizer.num_classes``).
        **kwargs: config fields to override (``ModelSpec.arch_kwargs``).

    Returns:
        The model (in training mode, randomly initialised).

    Raises:
        ValueError: unknown ``arch``.
        TypeError: a keyword is not a field of the family's config.

    >>> build_recognizer("satrn", 96, dim=64, heads=4).decoding
    'attention'
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown recognition arch {arch!r}; known: {sorted(ARCHS)}")
    model = ARCHS[arch](num_classes, **kwargs)
    if not isinstance(model, CRNN | ASTER | SATRN):
        raise TypeError(f"ARCHS[{arch!r}] built a {type(model).__name__}, not a recogniser")
    return model


def arch_kwargs(model: Recognizer) -> dict[str, Any]:
    """The keyword arguments that rebuild ``model`` with ``build_recognizer(model.config.arch, **kw)``.

    Every config field is included (``num_classes`` too), so a model folder does not depend on a
    preset's defaults staying the same.

    Args:
        model: a model built from :data:`ARCHS`.

    Returns:
        The config as a plain dict without ``arch``.
    """
    kwargs = dataclasses.asdict(model.config)
    kwargs.pop("arch")
    return kwargs
