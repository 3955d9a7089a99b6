"""Formula metrics on the rendered images: does the output compile, and does it look like the reference.

Token metrics (:func:`~ocrjobs.metrics.text.latex_metrics`) count ``{ \\frac { a } { b } }`` against
``\\frac { a } { b }`` as two errors although both draw the same formula, and cannot tell that
``\\right)`` without a ``\\left`` stops LaTeX altogether. A reader of the output cares about the drawing.
Here every prediction and reference is drawn with real LaTeX (``latex`` + ``dvipng``,
:func:`ocrjobs.data.formulas.render_latex_batch`, 100 dpi):

* ``compiles``: the share of predictions LaTeX draws.
* ``rendered_exact_match``: the share whose drawing equals the reference's, pixel for pixel once both
  are binarised (ink >= 50%) and blank columns are removed, so horizontal spacing (``\\,``, ``\\;``) does
  not count (the whitespace-insensitive image match of im2markup, Deng et al. 2017, without its
  5-pixel tolerance). A reference LaTeX cannot draw matches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rendered_latex_metrics"]

RENDER_DPI = 100


def _ink_columns(ink: np.ndarray) -> np.ndarray:
    binary = ink >= 128
    return binary[:, binary.any(axis=0)]


def rendered_latex_metrics(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """``{"compiles", "rendered_exact_match"}`` of space-separated formulas (see the module docstring).

    Args:
        preds: predicted formulas.
        refs: reference formulas, in the same order.

    Returns:
        Both shares, in ``[0, 1]``.

    Raises:
        RuntimeError: ``latex`` or ``dvipng`` is not installed.
        ValueError: lengths differ or there are no samples.
    """
    from ocrjobs.data.formulas import RenderError, latex_available, render_latex_batch

    if len(preds) != len(refs) or not preds:
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references (at least one of each)")
    if not latex_available():
        raise RuntimeError("rendered formula metrics need latex and dvipng (make latex)")
    inks = render_latex_batch([*preds, *refs], RENDER_DPI)
    drawn, matches = 0, 0
    for pred, ref in zip(inks[: len(preds)], inks[len(preds) :], strict=True):
        if isinstance(pred, RenderError):
            continue
        drawn += 1
        if not isinstance(ref, RenderError):
            a, b = _ink_columns(pred), _ink_columns(ref)
            matches += int(a.shape == b.shape and bool((a == b).all()))
    return {"compiles": drawn / len(preds), "rendered_exact_match": matches / len(preds)}
