"""A character n-gram language model for CTC beam search (shallow fusion).

Receipts, forms and invoices repeat a small vocabulary (``SUBTOTAL``, ``SDN BHD``, street names,
``THANK YOU``): a character model trained on the train transcriptions lets the beam search prefer
``STATIONERY`` over ``STATIDNERY`` when the recogniser hesitates between them, and knows where spaces
usually go. Characters, not words, so that codes, prices and unseen names stay readable.

The model is interpolated absolute discounting (the Kneser-Ney smoothing family without continuation
counts): ``p(c | h) = max(n(h c) - D, 0) / n(h) + D * N1+(h .) / n(h) * p(c | h')`` where ``h'`` drops
the oldest character of ``h``, ending at a uniform distribution over the charset plus the end of line.
Every distribution sums to one over those symbols. Texts may be case-folded (``case_fold``): the
recogniser then decides case, the language model only spelling.

It is stored as ``lm.json`` in a recognition model folder (``RecognitionPredictor`` loads it when the
folder's ``postprocess.lm`` names it) and built with ``ocrjobs lm``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ocrjobs.registry import LM_FILE

__all__ = ["LM_FILE", "CharNgramLM"]

# Line boundaries: outside every charset (printable ASCII has no control characters).
_BOS = "\x02"
_EOS = "\x03"
_FORMAT = "ocrjobs-char-ngram-1"
# Most (context, character) entries each cache keeps between calls (memory stays bounded in long jobs).
_CACHE_SIZE = 1_000_000


class CharNgramLM:
    """Character n-gram model with interpolated absolute discounting.

    Args:
        order: n (the longest context is ``order - 1`` characters).
        charset: the characters it predicts besides the end of line (the recogniser's charset).
        counts: ``counts[k][context][char]`` for contexts of ``k`` characters, ``k < order``.
        discount: the absolute discount ``D`` (0 < D < 1).
        case_fold: score texts upper-cased.

    Raises:
        ValueError: a setting is out of range.
    """

    def __init__(
        self,
        order: int,
        charset: str,
        counts: list[dict[str, dict[str, int]]],
        discount: float = 0.75,
        case_fold: bool = True,
    ) -> None:
        if order < 1 or len(counts) != order or not 0 < discount < 1 or not charset:
            raise ValueError(
                f"bad n-gram model: order {order}, {len(counts)} count tables, discount {discount}"
            )
        self.order = order
        self.charset = charset
        self.counts = counts
        self.discount = discount
        self.case_fold = case_fold
        symbols = {self._fold(c) for c in charset} | {_EOS}
        self._uniform = 1.0 / len(symbols)
        # Per context: total count and distinct followers, the two numbers every probability needs.
        self._totals = [{h: (sum(f.values()), len(f)) for h, f in table.items()} for table in counts]
        # (context, character) -> probability, and -> log-probability; each bounded by _CACHE_SIZE.
        self._prob_cache: dict[tuple[str, str], float] = {}
        self._cache: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------ building

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        charset: str,
        order: int = 6,
        discount: float = 0.75,
        case_fold: bool = True,
    ) -> CharNgramLM:
        """Count the n-grams of ``texts`` (one line each); lines with characters outside ``charset`` are skipped.

        Args:
            texts: training lines.
            charset: the recogniser's characters.
            order: n.
            discount: absolute discount.
            case_fold: count texts upper-cased.

        Returns:
            The model.

        Raises:
            ValueError: no text could be used.
        """
        known = set(charset)
        counts: list[defaultdict[str, defaultdict[str, int]]] = [
            defaultdict(lambda: defaultdict(int)) for _ in range(order)
        ]
        used = 0
        for text in texts:
            text = text.strip()
            if not text or not set(text) <= known:
                continue
            used += 1
            line = _BOS * (order - 1) + (text.upper() if case_fold else text) + _EOS
            for i in range(order - 1, len(line)):
                for k in range(order):
                    counts[k][line[i - k : i]][line[i]] += 1
        if not used:
            raise ValueError("no training line is non-empty and inside the charset")
        return cls(order, charset, [{h: dict(f) for h, f in t.items()} for t in counts], discount, case_fold)

    # ------------------------------------------------------------ scoring

    def _fold(self, text: str) -> str:
        return text.upper() if self.case_fold else text

    def _prob(self, context: str, char: str) -> float:
        key = (context, char)
        value = self._prob_cache.get(key)
        if value is not None:
            return value
        lower = self._prob(context[1:], char) if context else self._uniform
        seen = self._totals[len(context)].get(context)
        if seen is None:
            value = lower
        else:
            total, distinct = seen
            count = self.counts[len(context)][context].get(char, 0)
            value = max(count - self.discount, 0.0) / total + self.discount * distinct / total * lower
        if len(self._prob_cache) >= _CACHE_SIZE:
            self._prob_cache.clear()
        self._prob_cache[key] = value
        return value

    def _log_prob(self, context: str, char: str) -> float:
        key = (context, char)
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # bounded memory in long jobs; refills with what the lines use
            value = self._cache[key] = math.log(self._prob(context, char))
        return value

    def initial_state(self) -> str:
        """The state before a line's first character (an opaque context for :meth:`step`)."""
        return _BOS * (self.order - 1)

    def step(self, state: str, char: str) -> tuple[str, float]:
        """``(state after char, log p(char | state))``: incremental scoring for a decoder."""
        char = self._fold(char)
        return (state + char)[1:] if self.order > 1 else "", self._log_prob(state, char)

    def end_step(self, state: str) -> float:
        """``log p(end of line | state)``."""
        return self._log_prob(state, _EOS)

    def _state(self, history: str) -> str:
        padded = self.initial_state() + self._fold(history)
        return padded[len(padded) - (self.order - 1) :] if self.order > 1 else ""

    def log_prob(self, history: str, char: str) -> float:
        """``log p(char | history)``; ``history`` is the line so far (its last ``order - 1`` characters count)."""
        return self.step(self._state(history), char)[1]

    def end_log_prob(self, history: str) -> float:
        """``log p(end of line | history)``."""
        return self.end_step(self._state(history))

    def score(self, text: str) -> float:
        """Log-probability of a whole line, end of line included."""
        state, total = self.initial_state(), 0.0
        for char in text:
            state, value = self.step(state, char)
            total += value
        return total + self.end_step(state)

    # ------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back."""
        return {
            "format": _FORMAT,
            "order": self.order,
            "discount": self.discount,
            "case_fold": self.case_fold,
            "charset": self.charset,
            "counts": self.counts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharNgramLM:
        """The model of :meth:`to_dict`.

        Raises:
            ValueError: not a model of this format.
        """
        if data.get("format") != _FORMAT:
            raise ValueError(f"not an {_FORMAT} language model (format {data.get('format')!r})")
        return cls(
            int(data["order"]),
            str(data["charset"]),
            [{str(h): {str(c): int(n) for c, n in f.items()} for h, f in t.items()} for t in data["counts"]],
            float(data["discount"]),
            bool(data["case_fold"]),
        )

    def to_json(self) -> str:
        """Compact JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CharNgramLM:
        """The model of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
