"""The interface between the one training loop and a task (detection, recognition).

A task knows its network, how a labelled record or a synthetic sample becomes training rows, how a batch
becomes tensors and a loss, how to validate, and what model folder it exports. The loop
(:mod:`ocrjobs.training.loop`) and the data pipeline (:mod:`ocrjobs.training.data`) know nothing else
about models.

Data flows in three stages:

1. **Items** (driver, cheap): labels only, as JSON-able dicts. :meth:`TrainTask.record_items` turns
   labelled records into items; synthetic items are
   ``{"synth": kind, "seed": generator seed, "index": sample index, "options": {...}}``.
2. **Rows** (Ray Data CPU tasks): the function from :meth:`TrainTask.prepare_fn` decodes, crops, augments
   and builds targets, returning fixed-shape numpy columns. Nothing of this runs in the training loop.
3. **Tensors** (training worker): :meth:`TrainTask.collate` moves a numpy batch to the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ocrjobs.data.records import Record
    from ocrjobs.registry import ModelSpec

__all__ = ["Batch", "Item", "PrepareFn", "TrainTask"]

Batch = dict[str, "np.ndarray"]
"""A numpy batch as Ray Data yields it: column name -> array with a leading batch dimension."""

PrepareFn = Callable[[Batch], Batch]
"""A Ray Data ``map_batches`` function: ``{"item": json strings}`` -> training rows."""


@dataclass(frozen=True)
class Item:
    """One unit of work for the preparation stage.

    Attributes:
        payload: JSON-able description the task's :meth:`TrainTask.prepare_fn` reads (an image URI with its
            labels, or a synthetic generator with a seed).
        rows: training rows the item expands to (a receipt gives one recognition row per line); the
            driver sums them to size the learning-rate schedule without decoding any image.
    """

    payload: dict[str, Any]
    rows: int = 1


class TrainTask(Protocol):
    """What the training loop needs from a task.

    A task is built from the run's config (``TASKS[cfg.task](cfg)``) and holds what it derives from it
    (tokenizer, loss, normalisation); it is cheap to build, so every worker builds its own.

    Attributes:
        synth_kinds: synthetic generators the task can train on; each synthetic item is one row.
    """

    synth_kinds: tuple[str, ...]

    def build_model(self) -> nn.Module:
        """The network of ``cfg.model`` with random weights."""
        ...

    def record_items(self, records: Sequence[Record], train: bool) -> list[Item]:
        """Items for labelled records; unusable labels (empty, untokenizable) are dropped here."""
        ...

    def prepare_fn(self, train: bool, vocabulary: Sequence[str]) -> PrepareFn:
        """A picklable function for ``map_batches``: items -> fixed-shape rows (augmented if ``train``).

        It must not pull torch into the data workers (see :mod:`ocrjobs.training.rows`); ``vocabulary``
        is what synthetic generators write.
        """
        ...

    def collate(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        """Numpy rows -> tensors on ``device`` (normalisation happens here, on the device)."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch and its named parts (for logging)."""
        ...

    def validate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Validation metrics (``val_``-prefixed, including ``val_loss``) over numpy batches."""
        ...

    def build_predictor(self, model: nn.Module) -> Any:
        """The task's inference predictor (``DetectionPredictor``/``RecognitionPredictor``) around ``model``."""
        ...

    def model_spec(self, model: nn.Module, name: str, version: str, metrics: dict[str, float]) -> ModelSpec:
        """The exported model folder's ``config.yaml``, as the task's predictor describes ``model``."""
        ...
