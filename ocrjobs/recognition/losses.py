"""Training losses for recognisers; they live beside the models, not inside them.

>>> logits = torch.zeros(2, 3, 5)  # uniform over 5 classes
>>> targets = torch.tensor([[1, 0, 6], [2, 3, 0]])  # 6 is PAD (num_classes + 1): not scored
>>> f"{attention_loss(logits, targets):.4f}"  # log(5)
'1.6094'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_loss", "ctc_loss"]


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """CTC loss (blank = 0) of per-frame logits, averaged over the batch.

    Each sample's negative log-likelihood is divided by its label length (at least 1) before the
    batch mean, as ``F.ctc_loss(reduction="mean")`` does. A label that cannot fit in the frames (longer
    than ``T`` counting the blanks its repeats need) contributes zero instead of ``inf``, so one bad
    label cannot wreck a run; the data pipeline should filter such labels.

    Args:
        logits: ``[b, T, num_classes]`` model output (every frame is valid).
        targets: ``[b, S]`` padded label ids from ``CTCTokenizer.encode``.
        lengths: ``[b]`` label lengths.

    Returns:
        The scalar loss (float32, also under autocast).
    """
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # [b, T, C] -> [T, b, C]
    frames = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    return F.ctc_loss(log_probs, targets, frames, lengths, blank=0, reduction="mean", zero_infinity=True)


def attention_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token cross-entropy of teacher-forced logits, padding ignored.

    Target ids ``>= num_classes`` (the tokenizer's PAD) are not scored; EOS is.

    Args:
        logits: ``[b, L, num_classes]`` from ``model(images, targets)``.
        targets: ``[b, L]`` from ``AttentionTokenizer.encode``.
        label_smoothing: probability mass spread over all classes (0 disables).

    Returns:
        The scalar loss, averaged over the scored tokens (float32, also under autocast).
    """
    num_classes = logits.shape[-1]
    flat_targets = targets.masked_fill(targets >= num_classes, -100).reshape(-1)
    return F.cross_entropy(
        logits.float().reshape(-1, num_classes),  # [b, L, C] -> [b*L, C]
        flat_targets,
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )
