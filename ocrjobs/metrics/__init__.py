"""Metrics: text (CER, WER, exact match), formulas (sentence accuracy, BLEU-4, formula score), detection
(ICDAR 2015 IoU protocol) and character-level detection/end-to-end (CLEval).

Each submodule documents its definitions and every interpretation it makes:
:mod:`~ocrjobs.metrics.text`, :mod:`~ocrjobs.metrics.detection`, :mod:`~ocrjobs.metrics.cleval`,
:mod:`~ocrjobs.metrics.summary`, and formulas as drawn by LaTeX: :mod:`~ocrjobs.metrics.rendered`.
"""

from ocrjobs.metrics.cleval import CLEvalCounts, aggregate_cleval, cleval_image, pseudo_character_centers
from ocrjobs.metrics.detection import DetectionCounts, aggregate_detection, iou_detection
from ocrjobs.metrics.rendered import rendered_latex_metrics
from ocrjobs.metrics.summary import Prediction, evaluate_detection, evaluate_end_to_end
from ocrjobs.metrics.text import (
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

__all__ = [
    "CLEvalCounts",
    "DetectionCounts",
    "Prediction",
    "aggregate_cleval",
    "aggregate_detection",
    "bleu4",
    "cer",
    "cleval_image",
    "edit_distance",
    "evaluate_detection",
    "evaluate_end_to_end",
    "exact_match",
    "formula_score",
    "formula_wer",
    "iou_detection",
    "latex_metrics",
    "pseudo_character_centers",
    "rendered_latex_metrics",
    "sentence_accuracy",
    "text_metrics",
    "token_edit_distance",
    "wer",
]
