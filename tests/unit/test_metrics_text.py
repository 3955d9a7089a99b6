"""Text and formula metrics on hand-computed cases."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from ocrjobs.metrics import (
    bleu4,
    cer,
    edit_distance,
    exact_match,
    formula_score,
    formula_wer,
    latex_metrics,
    sentence_accuracy,
    text_metrics,
    token_edit_distance,
    wer,
)


def test_edit_distance_on_strings_and_token_lists() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance(["\\frac", "{", "1", "}"], ["\\frac", "{", "2", "}", "}"]) == 2
    assert edit_distance("", "abc") == 3


def test_cer_is_corpus_level() -> None:
    assert cer(["abd"], ["abc"]) == pytest.approx(1 / 3)
    # Totals, not a mean of per-sample rates: (1 + 0) edits / (3 + 7) reference characters.
    assert cer(["abd", "perfect"], ["abc", "perfect"]) == pytest.approx(1 / 10)
    # A prediction longer than its reference can push the rate above 1.
    assert cer(["abcd"], ["a"]) == pytest.approx(3.0)


def test_cer_with_empty_references() -> None:
    # Empty references inside a corpus need no special rule: 2 insertions over 4 reference characters.
    assert cer(["ab", "abcd"], ["", "abcd"]) == pytest.approx(0.5)
    # A corpus without reference characters: 0.0 when nothing was predicted, else 1.0 (documented).
    assert cer(["", ""], ["", ""]) == 0.0
    assert cer(["x", ""], ["", ""]) == 1.0


def test_wer_counts_whitespace_tokens() -> None:
    # "the cat sat" vs "the cat sat down": 1 deletion; "hello world" vs "hello word": 1 substitution.
    assert wer(["the cat sat", "hello world"], ["the cat sat down", "hello word"]) == pytest.approx(2 / 6)
    assert wer(["a  b\tc"], ["a b c"]) == 0.0
    assert wer([""], [""]) == 0.0
    assert wer(["extra"], [""]) == 1.0


def test_exact_match_case_handling() -> None:
    preds, refs = ["Total", "RM 5.00", "abc"], ["TOTAL", "RM 5.00", "abd"]
    assert exact_match(preds, refs) == pytest.approx(1 / 3)
    assert exact_match(preds, refs, case_sensitive=False) == pytest.approx(2 / 3)


def test_sentence_accuracy_normalises_whitespace_and_accepts_token_lists() -> None:
    preds = ["x ^ {  2 }", ["a", "+", "b"], "a"]
    refs = ["x ^ { 2 }", "a + b", "b"]
    assert sentence_accuracy(preds, refs) == pytest.approx(2 / 3)


def test_token_edit_distance_is_a_mean_over_samples() -> None:
    # Per-sample token distances 0, 1 and 3 (three missing tokens).
    preds = ["a b", "a c", ""]
    refs = ["a b", "a b", "x y z"]
    assert token_edit_distance(preds, refs) == pytest.approx(4 / 3)


def test_formula_wer_normalises_by_the_longer_sequence() -> None:
    # 1 edit / max(3, 4) tokens = 0.25; both empty counts 0; a missing formula counts 1.
    assert formula_wer(["a b c"], ["a b c d"]) == pytest.approx(0.25)
    assert formula_wer(["a b c d e f"], ["a b"]) == pytest.approx(4 / 6)
    assert formula_wer(["", "", "a b"], ["", "q", "a b"]) == pytest.approx(1 / 3)


def test_formula_score_on_three_samples() -> None:
    preds = ["x ^ {  2 }", "a + b", "\\frac { 1 } { 2 }"]
    refs = ["x ^ { 2 }", "a - b", "\\frac { 1 } { 3 }"]
    # Sentence accuracy 1/3. Normalised errors 0, 1/3 (1 of 3 tokens), 1/7 (1 of 7 tokens).
    expected_wer = (0 + 1 / 3 + 1 / 7) / 3
    assert formula_wer(preds, refs) == pytest.approx(expected_wer)
    assert formula_score(preds, refs) == pytest.approx(0.9 * (1 / 3) + 0.1 * (1 - expected_wer))


def test_bleu4_matches_the_formula() -> None:
    # One substituted last token of six: p1..p4 = 5/6, 4/5, 3/4, 2/3; equal lengths so BP = 1.
    assert bleu4(["a b c d e f"], ["a b c d e g"]) == pytest.approx((5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25)
    # A perfect but short prediction: every p_n = 1, BP = exp(1 - r/c) = exp(1 - 6/4).
    assert bleu4(["a b c d"], ["a b c d e f"]) == pytest.approx(math.exp(-0.5))


def test_bleu4_is_corpus_level_with_clipping() -> None:
    # Clipping: "the" predicted 3 times but present twice in the reference counts twice. Sample 2 is
    # identical. Corpus sums: p1 = (2 + 5) / (3 + 5); p2 = (1 + 4) / (2 + 4) ("the the" once in the
    # reference); p3 = (0 + 3) / (1 + 3); p4 = (0 + 2) / (0 + 2). c = 8 > r = 7, so BP = 1.
    preds = ["the the the", "a b c d e"]
    refs = ["the the", "a b c d e"]
    expected = (7 / 8 * 5 / 6 * 3 / 4 * 2 / 2) ** 0.25
    assert bleu4(preds, refs) == pytest.approx(expected)


def test_bleu4_smoothing_for_tiny_sets() -> None:
    preds, refs = ["the cat sat on the mat"], ["the cat is on the mat"]
    # Matches: 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3: unsmoothed BLEU is 0.
    assert bleu4(preds, refs) == 0.0
    # Add-one on orders 2..4: 4/6, 2/5, 1/4; unigram unsmoothed; BP = 1 (equal lengths).
    assert bleu4(preds, refs, smooth=True) == pytest.approx((5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_bleu4_empty_predictions() -> None:
    assert bleu4([""], ["a b"]) == 0.0
    assert bleu4([""], [""]) == 1.0


def test_summaries() -> None:
    out = text_metrics(["Total 5", "cash"], ["TOTAL 5", "cash"])
    assert out == {
        "cer": pytest.approx(4 / 11),
        "wer": pytest.approx(1 / 3),
        "exact_match": 0.5,
        "exact_match_ci": 1.0,
        "n": 2,
    }
    assert text_metrics(["Total 5"], ["TOTAL 5"], case_sensitive=False)["cer"] == 0.0
    latex = latex_metrics(["a + b", "c"], ["a + b", "d"])
    assert latex == {
        "sentence_accuracy": 0.5,
        "token_edit_distance": 0.5,
        "formula_wer": 0.5,
        "bleu4": 0.0,
        "formula_score": pytest.approx(0.9 * 0.5 + 0.1 * 0.5),
        "n": 2,
    }


@pytest.mark.parametrize("fn", [cer, wer, exact_match, sentence_accuracy, formula_wer, bleu4, text_metrics])
def test_inputs_are_checked(fn: Callable[..., object]) -> None:
    with pytest.raises(ValueError, match="no samples"):
        fn([], [])
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        fn(["a"], ["a", "b"])
