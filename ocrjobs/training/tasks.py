"""The table of training tasks: ``TrainConfig.task`` -> the class that implements it for a config.

An explicit table (no registration by import side effects): adding a task means adding a row here.
"""

from __future__ import annotations

from collections.abc import Callable

from ocrjobs.training.config import TrainConfig
from ocrjobs.training.detection import DetectionTask
from ocrjobs.training.latex import LatexTask
from ocrjobs.training.recognition import RecognitionTask
from ocrjobs.training.task import TrainTask

__all__ = ["TASKS"]

TASKS: dict[str, Callable[[TrainConfig], TrainTask]] = {
    "detection": DetectionTask,
    "recognition": RecognitionTask,
    "latex": LatexTask,
}
