"""The bracket penalty on hand-made formulas, and how the formula loss weights samples with it."""

from __future__ import annotations

import pytest
import torch

from ocrjobs.recognition.losses import attention_loss, bracket_penalty, formula_loss


@pytest.mark.parametrize(
    ("formula", "penalty"),
    [
        # balanced
        ("x ^ { 2 } + ( a - b )", 0.0),
        ("\\frac { a } { b } [ c ]", 0.0),
        # no brackets at all
        ("x + y = z", 0.0),
        ("", 0.0),
        # nested
        ("{ ( [ a ] ) }", 0.0),
        ("\\sqrt { \\frac { ( a + b ) } { c } }", 0.0),
        # unbalanced: one of three braces left over
        ("\\frac { a } { b", 1.0 - 2 / 3),
        ("x ^ { 2 } }", 1.0 - 2 / 3),
        # nothing matches
        (") (", 1.0),
        ("( ]", 1.0),
        ("{ { {", 1.0),
        # crossed: the inner bracket opened inside the matched pair is left open
        ("( [ ) ]", 0.5),
        # \left ... \right pairs match each other whatever the delimiters, not plain brackets
        ("\\left( \\frac { a } { b } \\right)", 0.0),
        ("\\left( x \\right]", 0.0),
        ("\\left. x \\right|", 0.0),
        ("\\left\\{ x \\right\\}", 0.0),
        ("\\left( x )", 1.0),
        ("\\left( x", 1.0),
        # arrows are not \left/\right delimiters
        ("\\leftarrow x \\rightarrow", 0.0),
        # literal braces, angle brackets and environments
        ("\\{ x \\}", 0.0),
        ("\\lbrace x \\}", 0.0),
        ("\\langle x | y \\rangle", 0.0),
        ("\\begin{array} { c } x \\end{array}", 0.0),
        ("\\begin{array} { c } x \\end{matrix}", 0.5),
    ],
)
def test_bracket_penalty_hand_made_cases(formula: str, penalty: float) -> None:
    assert bracket_penalty(formula) == pytest.approx(penalty)
    assert bracket_penalty(formula.split()) == pytest.approx(penalty)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, requires_grad=True)
    targets = torch.tensor([[1, 2, 0, 7], [3, 0, 7, 7], [4, 5, 1, 0]])  # 7 = PAD (num_classes + 1)
    return logits, targets


def test_without_penalties_the_loss_is_the_weighted_cross_entropy() -> None:
    logits, targets = _batch()
    zero = torch.zeros(3)
    with torch.no_grad():
        ce = float(attention_loss(logits, targets))
        assert float(formula_loss(logits, targets, zero)) == pytest.approx(0.8 * ce)
        assert float(formula_loss(logits, targets, zero, ce_weight=1.0)) == pytest.approx(ce)
        smoothed = float(formula_loss(logits, targets, zero, ce_weight=1.0, label_smoothing=0.1))
        assert smoothed == pytest.approx(float(attention_loss(logits, targets, label_smoothing=0.1)))


def test_penalty_scales_each_sample_and_only_its_gradient() -> None:
    logits, targets = _batch()
    penalty = torch.tensor([0.0, 1.0, 0.5])
    loss = formula_loss(logits, targets, penalty)
    loss.backward()
    assert logits.grad is not None
    grad = logits.grad.clone()
    logits.grad = None
    formula_loss(logits, targets, torch.zeros(3)).backward()
    assert logits.grad is not None
    # weight 0.8 + 0.2 * p per sample: unchanged for p = 0, x1.25 for p = 1, x1.125 for p = 0.5
    for i, factor in enumerate((1.0, 1.25, 1.125)):
        assert torch.allclose(grad[i], logits.grad[i] * factor, atol=1e-6)
    # padding positions get no gradient at all
    assert not grad[0, 3].any() and not grad[1, 2:].any()


def test_penalty_is_a_constant_weight() -> None:
    logits, targets = _batch()
    penalty = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    formula_loss(logits, targets, penalty).backward()
    assert penalty.grad is None  # detached: the decode that produced it has no gradient
    with pytest.raises(ValueError, match="penalty"):
        formula_loss(logits, targets, torch.zeros(2))
