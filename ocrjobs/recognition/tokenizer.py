"""Character sets and the tokenizers that turn text into class ids and back.

A :class:`Charset` is the recognisable vocabulary, stored in a model folder as ``ModelSpec.charset``
(``Charset.to_dict()``). Two tokenizers share it (as in parseq's ``strhub/data/utils.py``):

* :class:`CTCTokenizer` for CTC models (CRNN): id 0 is the CTC blank, characters are ``1..n``.
* :class:`AttentionTokenizer` for autoregressive models (ASTER, SATRN): id 0 is EOS, characters are
  ``1..n``; BOS (``n + 1``) and PAD (``n + 2``) are decoder *inputs* only and never predicted.

Both therefore have ``num_classes == len(charset) + 1`` output classes, and every attention model embeds
``num_classes + 2`` input tokens with ``bos_id == num_classes`` and ``pad_id == num_classes + 1``; the
losses and decoders rely on that convention (a target id ``>= num_classes`` is padding).

Characters outside the charset are never dropped silently: the ``unknown`` policy says whether encoding
raises (``"error"``), leaves them out (``"skip"``) or substitutes ``replacement`` (``"replace"``), and
every unknown character met is counted in ``unknown_counts`` (and logged once per character).

Formula recognisers use LaTeX *tokens* instead of characters: a vocabulary dict named ``latex``
(``{"name": "latex", "tokens": [...]}``, see :mod:`ocrjobs.recognition.latex`) is read by
:func:`vocabulary_from_dict` into a ``LatexVocabulary``, for which :func:`make_tokenizer` returns a
``LatexTokenizer`` (the same attention-tokenizer protocol). :meth:`Charset.from_dict` stays
character-only.

>>> tok = CTCTokenizer(Charset(chars="abc"))
>>> ids, lengths = tok.encode(["cab", "a"])
>>> ids.tolist(), lengths.tolist()
([[3, 1, 2], [1, 0, 0]], [3, 1])
>>> tok.decode(ids[0])
'cab'
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch

__all__ = [
    "CHARSETS",
    "TOKENIZERS",
    "AttentionTokenizer",
    "CTCTokenizer",
    "Charset",
    "Decoding",
    "Tokenizer",
    "UnknownCharacterError",
    "UnknownPolicy",
]

logger = logging.getLogger(__name__)

UnknownPolicy = Literal["error", "skip", "replace"]
Decoding = Literal["ctc", "attention"]

_PRINTABLE = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")

# Named presets a training config may give as ``{"name": ...}``; model folders always store the
# characters themselves so a later change of a preset cannot change a trained model.
CHARSETS: dict[str, str] = {
    "printable": _PRINTABLE,
    "printable_lower": "".join(c for c in _PRINTABLE if c not in string.ascii_uppercase),
    "alphanumeric": string.digits + string.ascii_letters,
    "alphanumeric_lower": string.digits + string.ascii_lowercase,
}


class UnknownCharacterError(ValueError):
    """A text holds a character outside the charset and the policy is ``"error"``."""


@dataclass(frozen=True)
class Charset:
    """The characters a recogniser can output.

    Attributes:
        chars: the characters, each once; their order fixes the class ids (``chars[i]`` is id ``i + 1``).
            Defaults to printable ASCII (``string.printable`` without ``\\t\\n\\r\\x0b\\x0c``: 95 chars).
        lowercase: fold texts to lower case before encoding (labels ``"TOTAL"`` and ``"total"`` become
            the same target); the charset itself must then hold no character that lower-casing changes.

    Raises:
        ValueError: ``chars`` is empty, repeats a character, or holds upper case with ``lowercase``.
    """

    chars: str = _PRINTABLE
    lowercase: bool = False

    def __post_init__(self) -> None:
        if not self.chars:
            raise ValueError("a charset needs at least one character")
        repeated = sorted(c for c, n in Counter(self.chars).items() if n > 1)
        if repeated:
            raise ValueError(f"charset repeats characters {repeated}")
        if self.lowercase:
            folded = sorted(c for c in self.chars if c.lower() != c)
            if folded:
                raise ValueError(f"lowercase charset holds characters that lower-casing changes: {folded}")

    def __len__(self) -> int:
        return len(self.chars)

    def normalize(self, text: str) -> str:
        """The text as it is encoded: lower-cased when the charset folds case."""
        return text.lower() if self.lowercase else text

    def to_dict(self) -> dict[str, Any]:
        """The charset as a plain dict for ``ModelSpec.charset`` (always the explicit characters)."""
        return {"chars": self.chars, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Charset:
        """Read ``{"chars": "..."}`` or ``{"name": "<preset>"}``, with optional ``"lowercase"``.

        Args:
            data: the dict; a key of :data:`CHARSETS` as ``name``, or the characters as ``chars``.

        Returns:
            The charset.

        Raises:
            ValueError: both or neither of ``name``/``chars``, an unknown preset or an unknown key.
        """
        unknown = set(data) - {"chars", "name", "lowercase"}
        if unknown:
            raise ValueError(f"charset: unknown keys {sorted(unknown)} (expected chars or name, lowercase)")
        if ("chars" in data) == ("name" in data):
            raise ValueError("charset: give exactly one of 'chars' or 'name'")
        lowercase = bool(data.get("lowercase", False))
        if "name" in data:
            if data["name"] == "latex":
                raise ValueError("charset: 'latex' is a token vocabulary; read it with vocabulary_from_dict")
            if data["name"] not in CHARSETS:
                raise ValueError(f"charset: unknown name {data['name']!r}; known: {sorted(CHARSETS)}")
            return cls(chars=CHARSETS[data["name"]], lowercase=lowercase)
        return cls(chars=str(data["chars"]), lowercase=lowercase)


class Tokenizer(Protocol):
    """What training, decoding and the predictor need from any tokenizer (characters or LaTeX tokens).

    Output classes are ``0..num_classes - 1``; ``encode`` pads with an id outside the real labels.
    ``decoding`` names the model family the tokenizer serves (``"ctc"`` or ``"attention"``), which a
    predictor checks against the model's own ``decoding``.
    """

    decoding: ClassVar[Decoding]

    @property
    def num_classes(self) -> int:
        """Number of output classes of a model using this tokenizer."""
        ...

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts to a padded ``[b, max_len]`` LongTensor of targets and their ``[b]`` lengths."""
        ...

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """A sequence of predicted class ids back to text (special ids are not characters)."""
        ...

    def can_encode(self, text: str) -> bool:
        """Whether every token of ``text`` is in the vocabulary (nothing would be skipped or replaced)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The vocabulary definition stored as ``ModelSpec.charset``."""
        ...


@dataclass
class _CharTokenizer:
    """Shared character mapping and unknown-character handling; ids ``1..n`` are the characters."""

    charset: Charset = field(default_factory=Charset)
    unknown: UnknownPolicy = "error"
    replacement: str = "?"
    unknown_counts: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.unknown not in ("error", "skip", "replace"):
            raise ValueError(f"unknown policy must be 'error', 'skip' or 'replace', got {self.unknown!r}")
        if self.unknown == "replace" and self.replacement not in self.charset.chars:
            raise ValueError(f"replacement {self.replacement!r} is not in the charset")
        self._index = {c: i + 1 for i, c in enumerate(self.charset.chars)}

    @property
    def num_classes(self) -> int:
        """Number of output classes: the characters plus one special (blank or EOS) at id 0."""
        return len(self.charset) + 1

    def can_encode(self, text: str) -> bool:
        """Whether every character of the normalised ``text`` is in the charset."""
        return all(c in self._index for c in self.charset.normalize(text))

    def reset_unknown_counts(self) -> None:
        """Forget the unknown characters counted so far."""
        self.unknown_counts.clear()

    def to_dict(self) -> dict[str, Any]:
        """The charset dict (``ModelSpec.charset``)."""
        return self.charset.to_dict()

    def _char_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for c in self.charset.normalize(text):
            idx = self._index.get(c)
            if idx is not None:
                ids.append(idx)
                continue
            if c not in self.unknown_counts:
                logger.warning("character %r is not in the charset (policy %r)", c, self.unknown)
            self.unknown_counts[c] += 1
            if self.unknown == "error":
                raise UnknownCharacterError(f"character {c!r} in {text!r} is not in the charset")
            if self.unknown == "replace":
                ids.append(self._index[self.replacement])
        return ids

    def _chars(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        n = len(self.charset)
        return [self.charset.chars[i - 1] for i in values if 1 <= i <= n]


@dataclass
class CTCTokenizer(_CharTokenizer):
    """Tokenizer for CTC models: blank is id 0, ``chars[i]`` is id ``i + 1``.

    Args:
        charset: the vocabulary.
        unknown: what to do with characters outside the charset (see the module docstring).
        replacement: the character substituted under ``unknown="replace"`` (must be in the charset).
    """

    decoding: ClassVar[Decoding] = "ctc"
    blank_id: int = field(default=0, init=False)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode texts as CTC targets.

        Args:
            texts: the labels.

        Returns:
            ``(targets, lengths)``: ``[b, max_len]`` LongTensor padded with blank (0), and ``[b]`` label
            lengths (at least one column, so an all-empty batch is ``[b, 1]`` of blanks).

        Raises:
            UnknownCharacterError: a character is not in the charset and the policy is ``"error"``.
        """
        seqs = [self._char_ids(t) for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.full((len(seqs), max([1, *map(len, seqs)])), self.blank_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out, lengths

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Label ids (already collapsed by a CTC decoder) to text; blanks are not characters."""
        return "".join(self._chars(ids))


@dataclass
class AttentionTokenizer(_CharTokenizer):
    """Tokenizer for autoregressive models: EOS is id 0, ``chars[i]`` is id ``i + 1``.

    BOS (``num_classes``) starts every decoder input and PAD (``num_classes + 1``) fills targets after
    EOS; neither is an output class.

    Args:
        charset: the vocabulary.
        unknown: what to do with characters outside the charset (see the module docstring).
        replacement: the character substituted under ``unknown="replace"`` (must be in the charset).
    """

    decoding: ClassVar[Decoding] = "attention"
    eos_id: int = field(default=0, init=False)

    @property
    def bos_id(self) -> int:
        """The start token fed to the decoder's first step."""
        return self.num_classes

    @property
    def pad_id(self) -> int:
        """The filler after EOS in padded targets (ignored by losses and scores)."""
        return self.num_classes + 1

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode texts as decoder targets: characters then EOS, padded with PAD.

        Args:
            texts: the labels.

        Returns:
            ``(targets, lengths)``: ``[b, max_len + 1]`` LongTensor and ``[b]`` target lengths counting
            the EOS (``len(text) + 1``).

        Raises:
            UnknownCharacterError: a character is not in the charset and the policy is ``"error"``.
        """
        seqs = [[*self._char_ids(t), self.eos_id] for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.full((len(seqs), max([1, *map(len, seqs)])), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out, lengths

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Predicted ids to text, stopping at the first EOS; BOS/PAD are not characters."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in values:
            values = values[: values.index(self.eos_id)]
        return "".join(self._chars(values))


TOKENIZERS: dict[Decoding, type[CTCTokenizer] | type[AttentionTokenizer]] = {
    "ctc": CTCTokenizer,
    "attention": AttentionTokenizer,
}
