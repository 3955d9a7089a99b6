"""Formula metrics on LaTeX drawings (ocrjobs.metrics.rendered)."""

from __future__ import annotations

import pytest

from ocrjobs.data.formulas import latex_available
from ocrjobs.metrics import rendered_latex_metrics

needs_latex = pytest.mark.skipif(not latex_available(), reason="latex and dvipng are not installed")


@needs_latex
def test_rendered_match_ignores_invisible_tokens_and_counts_what_does_not_compile() -> None:
    ref = "\\frac { a } { b } + x ^ { 2 }"
    preds = [
        ref,  # the same tokens
        "{ \\frac { a } { b } } + x ^ 2",  # other tokens, the same drawing
        "\\frac { a } { b } + x ^ { 3 }",  # compiles, another drawing
        "\\frac { a } { b } + x ^ { 2 } \\right)",  # LaTeX refuses it
    ]
    metrics = rendered_latex_metrics(preds, [ref] * len(preds))
    assert metrics == {"compiles": 0.75, "rendered_exact_match": 0.5}


def test_rendered_metrics_need_as_many_predictions_as_references() -> None:
    with pytest.raises(ValueError, match="predictions"):
        rendered_latex_metrics(["x"], [])
