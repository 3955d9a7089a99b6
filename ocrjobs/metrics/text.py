"""Text metrics: CER, WER, exact match (line recognition) and sentence accuracy, edit distances, BLEU-4
and the formula score (LaTeX recognition).

Conventions used by every function here:

* ``preds`` and ``refs`` are equally long sequences of samples; a length mismatch or no samples at all
  is a :class:`ValueError` (a score of nothing is a bug in the caller, not 0 or 1).
* Rates are corpus level (total edits / total reference units) unless the name says "mean".
* Empty references: a corpus whose references hold no units at all (every reference empty) has a rate
  of 0.0 when every prediction is empty too and 1.0 otherwise, so the result stays in a sane range
  instead of dividing by zero. Individual empty references inside a non-empty corpus need no rule.
* Token sequences (LaTeX) are either strings, split on whitespace, or already-split token lists.

>>> cer(["abd"], ["abc"])
0.3333333333333333
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TypeAlias

from rapidfuzz.distance import Levenshtein

__all__ = [
    "bleu4",
    "cer",
    "edit_distance",
    "exact_match",
    "formula_score",
    "formula_wer",
    "latex_metrics",
    "sentence_accuracy",
    "text_metrics",
    "token_edit_distance",
    "wer",
]

# A LaTeX sample: a whitespace-separated token string or an already split token list.
Tokens: TypeAlias = str | Sequence[str]


def _check(preds: Sequence[object], refs: Sequence[object]) -> int:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no samples to score")
    return len(preds)


def _tokens(sample: Tokens) -> list[str]:
    return sample.split() if isinstance(sample, str) else list(sample)


def _rate(edits: int, total_ref: int) -> float:
    if total_ref == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / total_ref


def edit_distance(a: Tokens, b: Tokens) -> int:
    """Levenshtein distance (unit cost insert/delete/substitute) between two strings or token lists.

    Args:
        a: a string (compared by characters) or a list of tokens.
        b: same kind as ``a``.

    Returns:
        The number of edits turning ``a`` into ``b``.
    """
    return int(Levenshtein.distance(a, b))


def cer(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Character error rate: total character edit distance / total reference characters.

    Args:
        preds: predicted strings.
        refs: reference strings, one per prediction.

    Returns:
        The corpus CER (can exceed 1 when predictions are longer than references).

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    _check(preds, refs)
    edits = sum(edit_distance(p, r) for p, r in zip(preds, refs, strict=True))
    return _rate(edits, sum(len(r) for r in refs))


def wer(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Word error rate on whitespace tokens: total word edit distance / total reference words.

    Args:
        preds: predicted strings.
        refs: reference strings, one per prediction.

    Returns:
        The corpus WER.

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    _check(preds, refs)
    pairs = [(p.split(), r.split()) for p, r in zip(preds, refs, strict=True)]
    edits = sum(edit_distance(p, r) for p, r in pairs)
    return _rate(edits, sum(len(r) for _, r in pairs))


def exact_match(preds: Sequence[str], refs: Sequence[str], case_sensitive: bool = True) -> float:
    """Fraction of predictions equal to their reference (line/word accuracy).

    Args:
        preds: predicted strings.
        refs: reference strings, one per prediction.
        case_sensitive: ``False`` compares ``str.casefold()`` forms.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    n = _check(preds, refs)
    if case_sensitive:
        return sum(p == r for p, r in zip(preds, refs, strict=True)) / n
    return sum(p.casefold() == r.casefold() for p, r in zip(preds, refs, strict=True)) / n


def sentence_accuracy(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Fraction of samples whose token sequence equals the reference's (whitespace differences ignored).

    Args:
        preds: predicted token strings or token lists.
        refs: reference token strings or token lists.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    n = _check(preds, refs)
    return sum(_tokens(p) == _tokens(r) for p, r in zip(preds, refs, strict=True)) / n


def token_edit_distance(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Mean over samples of the token-level edit distance.

    Args:
        preds: predicted token strings or token lists.
        refs: reference token strings or token lists.

    Returns:
        The mean number of token edits per sample.

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    n = _check(preds, refs)
    return sum(edit_distance(_tokens(p), _tokens(r)) for p, r in zip(preds, refs, strict=True)) / n


def formula_wer(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Mean over samples of token edit distance / max(len(pred), len(ref)); 0 for a sample when both are empty.

    Normalising by the longer sequence keeps each sample's error in [0, 1].

    Args:
        preds: predicted token strings or token lists.
        refs: reference token strings or token lists.

    Returns:
        The mean normalised token error in [0, 1].

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    n = _check(preds, refs)
    total = 0.0
    for p, r in zip(preds, refs, strict=True):
        pt, rt = _tokens(p), _tokens(r)
        longest = max(len(pt), len(rt))
        if longest:
            total += edit_distance(pt, rt) / longest
    return total / n


def formula_score(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """0.9 × sentence accuracy + 0.1 × (1 − formula WER): exact formulas dominate, near misses count a little.

    Args:
        preds: predicted token strings or token lists.
        refs: reference token strings or token lists.

    Returns:
        The score in [0, 1].

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    return 0.9 * sentence_accuracy(preds, refs) + 0.1 * (1.0 - formula_wer(preds, refs))


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(preds: Sequence[Tokens], refs: Sequence[Tokens], smooth: bool = False) -> float:
    """Corpus BLEU-4 with one reference per sample (Papineni et al., 2002).

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus for n = 1..4; the score
    is ``BP × exp(mean(log p_n))`` with brevity penalty ``BP = 1`` if the total prediction length ``c``
    exceeds the total reference length ``r``, else ``exp(1 − r/c)``. Unsmoothed, any order without a
    match gives 0 (as multi-bleu.perl); this is the default and right for real test sets.

    Args:
        preds: predicted token strings or token lists.
        refs: reference token strings or token lists.
        smooth: for tiny sets, add one to the match and total counts of orders 2..4 (Lin & Och 2004,
            "BLEU+1"; method 2 of Chen & Cherry 2014), so one missing 4-gram does not zero the score.
            Unigram precision stays unsmoothed.

    Returns:
        BLEU in [0, 1]. With no predicted tokens at all: 1.0 if the references are empty too, else 0.0.

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    _check(preds, refs)
    matches = [0, 0, 0, 0]
    totals = [0, 0, 0, 0]
    pred_len = ref_len = 0
    for p, r in zip(preds, refs, strict=True):
        pt, rt = _tokens(p), _tokens(r)
        pred_len += len(pt)
        ref_len += len(rt)
        for n in range(1, 5):
            pred_grams, ref_grams = _ngrams(pt, n), _ngrams(rt, n)
            matches[n - 1] += sum(min(count, ref_grams[g]) for g, count in pred_grams.items())
            totals[n - 1] += max(len(pt) - n + 1, 0)
    if pred_len == 0:
        return 1.0 if ref_len == 0 else 0.0
    log_precision = 0.0
    for n in range(1, 5):
        m, t = matches[n - 1], totals[n - 1]
        if smooth and n > 1:
            m, t = m + 1, t + 1
        if m == 0:
            return 0.0
        log_precision += math.log(m / t) / 4
    brevity = 1.0 if pred_len > ref_len else math.exp(1.0 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def text_metrics(preds: Sequence[str], refs: Sequence[str], case_sensitive: bool = True) -> dict[str, float]:
    """The line-recognition summary.

    Args:
        preds: predicted strings.
        refs: reference strings.
        case_sensitive: whether CER/WER/``exact_match`` compare case (``exact_match_ci`` never does).

    Returns:
        ``{"cer", "wer", "exact_match", "exact_match_ci", "n"}``.

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    if not case_sensitive:
        preds = [p.casefold() for p in preds]
        refs = [r.casefold() for r in refs]
    return {
        "cer": cer(preds, refs),
        "wer": wer(preds, refs),
        "exact_match": exact_match(preds, refs),
        "exact_match_ci": exact_match(preds, refs, case_sensitive=False),
        "n": len(preds),
    }


def latex_metrics(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> dict[str, float]:
    """The formula-recognition summary (unsmoothed BLEU-4).

    Args:
        preds: predicted token strings or token lists.
        refs: reference token strings or token lists.

    Returns:
        ``{"sentence_accuracy", "token_edit_distance", "formula_wer", "bleu4", "formula_score", "n"}``.

    Raises:
        ValueError: lengths differ or there are no samples.
    """
    accuracy = sentence_accuracy(preds, refs)
    normalised_wer = formula_wer(preds, refs)
    return {
        "sentence_accuracy": accuracy,
        "token_edit_distance": token_edit_distance(preds, refs),
        "formula_wer": normalised_wer,
        "bleu4": bleu4(preds, refs),
        "formula_score": 0.9 * accuracy + 0.1 * (1.0 - normalised_wer),
        "n": len(preds),
    }
