"""LaTeX formula tokens: the im2latex tokenisation, token vocabularies and the formula tokenizer.

Formula recognisers (image -> LaTeX) predict *tokens*, not characters, in the style of the normalised
im2latex-100k formulas (Deng et al., ICML 2017, ``formulas.norm.lst``): a command is one token
(``\\frac``, ``\\alpha``, ``\\{``), as are a brace, a script mark, a symbol, a single digit and a single
letter (``\\sin`` is one token, ``sin`` written as plain letters is three). A few constructs are glued
into one token the way the im2latex normaliser writes them: ``\\begin{array}``, ``\\left(``,
``\\right\\rangle``, ``\\operatorname*``. A label is its tokens joined by single spaces; the control
space ``\\ `` is the lone-backslash token ``\\`` (what splitting a normalised line on whitespace gives).

* :func:`tokenize_latex` splits LaTeX as people write it into such tokens (:func:`normalize_latex`
  joins them), so user-supplied formulas can be compared with and encoded like im2latex labels.
* :class:`LatexVocabulary` is the token inventory (the formula counterpart of ``tokenizer.Charset``),
  read from a vocabulary file (one token per line, :func:`read_vocabulary`), an inline list, or built
  from the train formulas of an im2latex folder (:func:`build_vocabulary`). Model folders store the
  tokens themselves (``{"name": "latex", "tokens": [...]}``).
* :class:`LatexTokenizer` implements the attention-tokenizer protocol of ``tokenizer.py`` (EOS = 0,
  tokens ``1..n``, BOS ``n + 1`` and PAD ``n + 2`` as decoder inputs only), so ASTER/SATRN, the
  decoders, :class:`~ocrjobs.recognition.predictor.RecognitionPredictor` and the ensemble's
  teacher-forced scoring use it unchanged; ``decode`` joins tokens with spaces.

Unknown tokens are never dropped silently: the ``unknown`` policy raises (``"error"``), leaves them out
(``"skip"``) or substitutes :data:`UNK` (``"replace"``; built vocabularies contain it), and every unknown
token met is counted in ``unknown_counts``.

>>> tokenize_latex(r"\\frac{a^2}{\\left(b\\right)}\\,dx")
['\\\\frac', '{', 'a', '^', '2', '}', '{', '\\\\left(', 'b', '\\\\right)', '}', '\\\\,', 'd', 'x']
>>> tok = LatexTokenizer(LatexVocabulary(("x", "^", "{", "}", "2")))
>>> ids, lengths = tok.encode(["x ^ { 2 }"])
>>> ids.tolist(), tok.decode(ids[0])
([[1, 2, 3, 5, 4, 0]], 'x ^ { 2 }')
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ocrjobs.recognition.tokenizer import Decoding, UnknownCharacterError, UnknownPolicy

__all__ = [
    "LATEX",
    "UNK",
    "LatexTokenizer",
    "LatexVocabulary",
    "UnknownTokenError",
    "build_vocabulary",
    "normalize_latex",
    "read_vocabulary",
    "tokenize_latex",
    "write_vocabulary",
]

logger = logging.getLogger(__name__)

LATEX = "latex"
"""The ``name`` of a LaTeX vocabulary dict (``ModelSpec.charset`` / ``model.charset``)."""

UNK = "<unk>"
"""The token substituted for unknown tokens under ``unknown="replace"``."""

# Delimiters the im2latex normaliser glues to \left / \right (``\left(``, ``\right\rangle``).
_DELIMITER_CHARS = frozenset("()[].|<>/")
_DELIMITER_COMMANDS = frozenset(
    {
        "\\{",
        "\\}",
        "\\|",
        "\\langle",
        "\\rangle",
        "\\vert",
        "\\Vert",
        "\\lbrace",
        "\\rbrace",
        "\\lbrack",
        "\\rbrack",
        "\\lfloor",
        "\\rfloor",
        "\\lceil",
        "\\rceil",
        "\\uparrow",
        "\\downarrow",
        "\\updownarrow",
        "\\Uparrow",
        "\\Downarrow",
        "\\backslash",
    }
)
DELIMITERS = _DELIMITER_CHARS | _DELIMITER_COMMANDS
"""Every delimiter the normaliser glues to ``\\left`` / ``\\right`` (``\\left`` + one of them is one token)."""
# Commands whose starred form is one token in im2latex (``\operatorname*``).
_STARRED = frozenset({"\\operatorname"})
_ENVIRONMENT = re.compile(r"\s*\{\s*([A-Za-z]+\*?)\s*\}")


class UnknownTokenError(UnknownCharacterError):
    """A formula holds a token outside the vocabulary and the policy is ``"error"``."""


# ---------------------------------------------------------------------------------------------------
# tokenisation


def _command_end(text: str, start: int) -> int:
    """End of the ASCII-letter run starting at ``start``."""
    end = start
    while end < len(text) and text[end].isascii() and text[end].isalpha():
        end += 1
    return end


def _delimiter(text: str, start: int) -> str | None:
    """The delimiter written at ``start`` (after optional spaces) as im2latex glues it, or None."""
    while start < len(text) and text[start].isspace():
        start += 1
    if start >= len(text):
        return None
    if text[start] in _DELIMITER_CHARS:
        return text[start]
    if text[start] == "\\" and start + 1 < len(text):
        end = _command_end(text, start + 1)
        name = text[start:end] if end > start + 1 else text[start : start + 2]
        if name in _DELIMITER_COMMANDS:
            return name
    return None


def tokenize_latex(text: str) -> list[str]:
    """Split LaTeX math into im2latex-style tokens.

    Rules: whitespace separates and is dropped; ``%`` starts a comment to the end of the line; a
    backslash and the letters after it are one command (``\\operatorname*`` keeps its star); a backslash
    and one other character are one token (``\\{``, ``\\,``, ``\\\\``), except the control space
    ``\\ ``, which is the lone-backslash token ``\\``; ``\\begin{env}``/``\\end{env}`` are one token;
    ``\\left``/``\\right`` absorb the delimiter after them (``\\left(``, ``\\right.``, ``\\left\\{``);
    every other character (letter, digit, symbol) is its own token.

    On an im2latex normalised formula this gives back its own space-separated tokens, except the rare
    multi-character tokens the normaliser left in (``0.25``, ``--``), which come out split.

    Args:
        text: LaTeX math (without ``$`` delimiters).

    Returns:
        The tokens.

    >>> tokenize_latex(r"\\sum_{i=1}^N x_i \\ \\mathrm{d}t")
    ['\\\\sum', '_', '{', 'i', '=', '1', '}', '^', 'N', 'x', '_', 'i', '\\\\', '\\\\mathrm', '{', 'd', '}', 't']
    """
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "%":
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif c != "\\":
            tokens.append(c)
            i += 1
        elif i + 1 >= n or text[i + 1].isspace():
            tokens.append("\\")  # control space (or a trailing backslash)
            i += 2
        elif not (text[i + 1].isascii() and text[i + 1].isalpha()):
            tokens.append(text[i : i + 2])
            i += 2
        else:
            end = _command_end(text, i + 1)
            name = text[i:end]
            if name in ("\\begin", "\\end") and (env := _ENVIRONMENT.match(text, end)):
                tokens.append(f"{name}{{{env.group(1)}}}")
                i = env.end()
            elif name in ("\\left", "\\right") and (delim := _delimiter(text, end)) is not None:
                tokens.append(name + delim)
                i = text.index(delim, end) + len(delim)
            elif name in _STARRED and text.startswith("*", end):
                tokens.append(name + "*")
                i = end + 1
            else:
                tokens.append(name)
                i = end
    return tokens


def normalize_latex(text: str) -> str:
    """LaTeX as an im2latex-style label: :func:`tokenize_latex`'s tokens joined by single spaces.

    >>> normalize_latex(r"x^{2}+\\alpha")
    'x ^ { 2 } + \\\\alpha'
    """
    return " ".join(tokenize_latex(text))


# ---------------------------------------------------------------------------------------------------
# vocabularies


def build_vocabulary(formulas: Iterable[str], min_count: int = 1, unk: bool = True) -> list[str]:
    """The tokens of normalised formulas, most frequent first (build it from a **train** split only).

    Args:
        formulas: space-separated token strings (im2latex ``formulas.norm.lst`` lines).
        min_count: least number of occurrences for a token to be kept.
        unk: put :data:`UNK` first, so ``unknown="replace"`` can stand in for rarer tokens.

    Returns:
        Unique tokens sorted by descending count, then by text (deterministic).

    >>> build_vocabulary(["x ^ { 2 }", "x + y"])
    ['<unk>', 'x', '+', '2', '^', 'y', '{', '}']
    """
    counts = Counter(token for formula in formulas for token in formula.split())
    ranked = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
    return [UNK, *(t for t in ranked if t != UNK)] if unk else ranked


def read_vocabulary(uri: str | Path) -> list[str]:
    """Read a vocabulary file: UTF-8, one token per line in id order; blank lines are ignored.

    Args:
        uri: local path or ``s3://`` URI.

    Returns:
        The tokens.
    """
    from ocrjobs import storage

    return [line.strip() for line in storage.read_text(str(uri)).split("\n") if line.strip()]


def write_vocabulary(uri: str | Path, tokens: Sequence[str]) -> None:
    """Write tokens as a vocabulary file that :func:`read_vocabulary` reads back.

    Raises:
        ValueError: the tokens are not a valid vocabulary (see :class:`LatexVocabulary`).
    """
    from ocrjobs import storage

    LatexVocabulary(tuple(tokens))  # validate before writing
    storage.write_text(str(uri), "".join(f"{t}\n" for t in tokens))


@dataclass(frozen=True)
class LatexVocabulary:
    """The tokens a formula recogniser can output; ``tokens[i]`` is class id ``i + 1``.

    Attributes:
        tokens: unique, non-empty tokens without whitespace.

    Raises:
        ValueError: no tokens, a repeated token, or a token that is empty or holds whitespace.
    """

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        if not self.tokens:
            raise ValueError("a LaTeX vocabulary needs at least one token")
        bad = [t for t in self.tokens if not t or any(c.isspace() for c in t)]
        if bad:
            raise ValueError(f"LaTeX tokens must be non-empty and hold no whitespace, got {bad[:5]}")
        repeated = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
        if repeated:
            raise ValueError(f"LaTeX vocabulary repeats tokens {repeated[:10]}")

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._set

    @functools.cached_property
    def _set(self) -> frozenset[str]:
        # cached_property writes the instance __dict__ directly, which a frozen dataclass allows.
        return frozenset(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": "latex", "tokens": [...]}``: what model folders store (always the tokens)."""
        return {"name": LATEX, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatexVocabulary:
        """Read a vocabulary dict: ``name: latex`` and exactly one source of tokens.

        * ``tokens``: the tokens inline (model folders);
        * ``vocab``: a vocabulary file (:func:`read_vocabulary`; local path or ``s3://``);
        * ``build_from``: an im2latex folder whose **train** split's normalised formulas give the tokens
          (:func:`build_vocabulary`, with optional ``min_count``).

        Args:
            data: the dict.

        Returns:
            The vocabulary.

        Raises:
            ValueError: a wrong ``name``, not exactly one source, or an unknown key.
        """
        allowed = {"name", "tokens", "vocab", "build_from", "min_count"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"latex vocabulary: unknown keys {sorted(unknown)}; expected {sorted(allowed)}")
        if data.get("name") != LATEX:
            raise ValueError(f"latex vocabulary: 'name' must be {LATEX!r}, got {data.get('name')!r}")
        sources = [k for k in ("tokens", "vocab", "build_from") if k in data]
        if len(sources) != 1:
            raise ValueError("latex vocabulary: give exactly one of 'tokens', 'vocab' or 'build_from'")
        if "min_count" in data and "build_from" not in data:
            raise ValueError("latex vocabulary: 'min_count' only applies to 'build_from'")
        if "tokens" in data:
            return cls(tuple(str(t) for t in data["tokens"]))
        if "vocab" in data:
            return cls(tuple(read_vocabulary(str(data["vocab"]))))
        from ocrjobs.data.formats import read_im2latex

        records = read_im2latex(str(data["build_from"]), split="train")
        tokens = build_vocabulary((r.text for r in records), min_count=int(data.get("min_count", 1)))
        logger.info("latex vocabulary: %d tokens from %d train formulas", len(tokens), len(records))
        return cls(tuple(tokens))


# ---------------------------------------------------------------------------------------------------
# tokenizer


@dataclass
class LatexTokenizer:
    """Attention tokenizer over LaTeX tokens: EOS is id 0, ``vocabulary.tokens[i]`` is id ``i + 1``.

    Labels are space-separated token strings (``"x ^ { 2 }"``; :func:`normalize_latex` turns written
    LaTeX into one). BOS (``num_classes``) and PAD (``num_classes + 1``) are decoder inputs only.

    Args:
        vocabulary: the tokens.
        unknown: what to do with tokens outside the vocabulary (see the module docstring).
        replacement: the token substituted under ``unknown="replace"`` (must be in the vocabulary).

    Raises:
        ValueError: a bad policy, or a replacement outside the vocabulary.
    """

    vocabulary: LatexVocabulary
    unknown: UnknownPolicy = "error"
    replacement: str = UNK
    unknown_counts: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    decoding: ClassVar[Decoding] = "attention"
    eos_id: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.unknown not in ("error", "skip", "replace"):
            raise ValueError(f"unknown policy must be 'error', 'skip' or 'replace', got {self.unknown!r}")
        if self.unknown == "replace" and self.replacement not in self.vocabulary:
            raise ValueError(f"replacement {self.replacement!r} is not in the vocabulary")
        self._index = {t: i + 1 for i, t in enumerate(self.vocabulary.tokens)}

    @property
    def num_classes(self) -> int:
        """Output classes: the tokens plus EOS at id 0."""
        return len(self.vocabulary) + 1

    @property
    def bos_id(self) -> int:
        """The start token fed to the decoder's first step."""
        return self.num_classes

    @property
    def pad_id(self) -> int:
        """The filler after EOS in padded targets (ignored by losses and scores)."""
        return self.num_classes + 1

    def can_encode(self, text: str) -> bool:
        """Whether every token of ``text`` is in the vocabulary."""
        return all(t in self._index for t in text.split())

    def unknown_tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` outside the vocabulary (in order, with repeats)."""
        return [t for t in text.split() if t not in self._index]

    def reset_unknown_counts(self) -> None:
        """Forget the unknown tokens counted so far."""
        self.unknown_counts.clear()

    def to_dict(self) -> dict[str, Any]:
        """The vocabulary dict (``ModelSpec.charset``)."""
        return self.vocabulary.to_dict()

    def token_ids(self, text: str) -> list[int]:
        """Ids of the tokens of ``text`` under the unknown policy (no EOS).

        Raises:
            UnknownTokenError: a token is unknown and the policy is ``"error"``.
        """
        ids: list[int] = []
        for token in text.split():
            idx = self._index.get(token)
            if idx is not None:
                ids.append(idx)
                continue
            if token not in self.unknown_counts:
                logger.warning("token %r is not in the LaTeX vocabulary (policy %r)", token, self.unknown)
            self.unknown_counts[token] += 1
            if self.unknown == "error":
                raise UnknownTokenError(f"token {token!r} in {text[:80]!r} is not in the vocabulary")
            if self.unknown == "replace":
                ids.append(self._index[self.replacement])
        return ids

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode formulas as decoder targets: tokens then EOS, padded with PAD.

        Args:
            texts: space-separated token strings.

        Returns:
            ``(targets, lengths)``: ``[b, max_tokens + 1]`` LongTensor and ``[b]`` lengths counting EOS.

        Raises:
            UnknownTokenError: a token is unknown and the policy is ``"error"``.
        """
        seqs = [[*self.token_ids(t), self.eos_id] for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.full((len(seqs), max([1, *map(len, seqs)])), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out, lengths

    def tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Predicted ids to tokens, stopping at the first EOS; BOS/PAD are not tokens."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in values:
            values = values[: values.index(self.eos_id)]
        n = len(self.vocabulary)
        return [self.vocabulary.tokens[i - 1] for i in values if 1 <= i <= n]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Predicted ids to a space-separated formula, stopping at the first EOS."""
        return " ".join(self.tokens(ids))
