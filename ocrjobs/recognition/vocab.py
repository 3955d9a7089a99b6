"""Tokenizers by vocabulary kind: characters (CTC or attention) and LaTeX tokens (attention).

The character tokenizers live in :mod:`ocrjobs.recognition.tokenizer` and the LaTeX one in
:mod:`ocrjobs.recognition.latex`, which builds on them; this module sits above both, so neither
imports the other's dependants and model folders of either kind load through one function.
"""

from __future__ import annotations

from typing import Any

from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary
from ocrjobs.recognition.tokenizer import (
    TOKENIZERS,
    AttentionTokenizer,
    Charset,
    CTCTokenizer,
    Decoding,
    UnknownPolicy,
)

__all__ = ["make_tokenizer", "vocabulary_from_dict"]


def make_tokenizer(
    decoding: Decoding, charset: Charset | LatexVocabulary, unknown: UnknownPolicy = "error"
) -> CTCTokenizer | AttentionTokenizer | LatexTokenizer:
    """The tokenizer a model of the given decoding kind uses.

    Args:
        decoding: ``"ctc"`` or ``"attention"`` (a recogniser's ``decoding`` attribute).
        charset: the vocabulary: a :class:`Charset`, or a ``LatexVocabulary`` (attention models only).
        unknown: the unknown-character (or unknown-token) policy.

    Returns:
        A :class:`CTCTokenizer` or :class:`AttentionTokenizer`; a ``LatexTokenizer`` for a LaTeX
        vocabulary.

    Raises:
        ValueError: an unknown decoding kind, or a LaTeX vocabulary for a CTC model.
    """
    if decoding not in TOKENIZERS:
        raise ValueError(f"unknown decoding {decoding!r}; known: {sorted(TOKENIZERS)}")
    if not isinstance(charset, Charset):
        if decoding != "attention":
            raise ValueError(f"a LaTeX vocabulary needs an attention model, not {decoding!r}")
        return LatexTokenizer(charset, unknown=unknown)
    return TOKENIZERS[decoding](charset=charset, unknown=unknown)


def vocabulary_from_dict(data: dict[str, Any]) -> Charset | LatexVocabulary:
    """Read any vocabulary dict: a LaTeX token vocabulary when ``name`` is ``latex``, else a charset.

    Args:
        data: ``ModelSpec.charset`` or a config's ``model.charset``.

    Returns:
        A ``LatexVocabulary`` (see ``LatexVocabulary.from_dict``) or a :class:`Charset`.

    Raises:
        ValueError: the dict is not a valid vocabulary of either kind.

    >>> vocabulary_from_dict({"name": "latex", "tokens": ["x", "^"]}).tokens
    ('x', '^')
    """
    if data.get("name") == "latex":
        return LatexVocabulary.from_dict(data)
    return Charset.from_dict(data)
