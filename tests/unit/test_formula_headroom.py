"""The exact-match projection of benchmarks/formula_headroom.py (the figures docs/benchmarks.md quotes)."""

from __future__ import annotations

import math

import pytest

from benchmarks.formula_headroom import exact_share, scale_for


def test_exact_share_is_the_mean_poisson_chance_of_no_error() -> None:
    """Each formula is exact with probability exp(-scale x errors); one read exactly now counts half an error."""
    errors = [0, 2, 10]
    expected = (math.exp(-0.5) + math.exp(-2.0) + math.exp(-10.0)) / 3
    assert exact_share(errors, 1.0) == pytest.approx(expected)
    assert exact_share(errors, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("target", [0.05, 0.15, 0.5])
def test_scale_for_inverts_exact_share(target: float) -> None:
    """The bisection finds the error scale that gives the target, and fewer errors are needed for more exact."""
    errors = [0, 1, 3, 8, 15, 40, 2, 5]
    scale = scale_for(errors, target)
    assert exact_share(errors, scale) == pytest.approx(target, abs=1e-9)
    assert scale_for(errors, target + 0.1) < scale
