"""DBNet's training loss (Liao et al., AAAI 2020, section 3.4), beside the model rather than inside it.

``L = prob_weight · L_prob + binary_weight · L_binary + thresh_weight · L_thresh`` with

* ``L_prob``: binary cross-entropy on the probability map with online hard negative mining (all
  positive pixels and at most ``ohem_ratio`` times as many of the hardest negatives);
* ``L_binary``: dice loss on the approximate binary map (the paper uses the same BCE; dice, as in
  the authors' code, is insensitive to the text/background imbalance);
* ``L_thresh``: L1 on the threshold map inside the dilated polygons.

The paper's ``alpha = 1`` and ``beta = 10`` are ``binary_weight`` and ``thresh_weight`` here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DBLoss"]


class DBLoss(nn.Module):
    """Balanced BCE + dice + L1 over the DB maps.

    Args:
        prob_weight: weight of the probability-map BCE.
        binary_weight: weight of the binary-map dice loss (paper's alpha).
        thresh_weight: weight of the threshold-map L1 loss (paper's beta).
        ohem_ratio: hard negatives kept per positive pixel in the BCE.
        eps: keeps the normalisations finite on empty masks.

    >>> loss_fn = DBLoss()
    >>> maps = {k: torch.full((1, 1, 8, 8), 0.5) for k in ("prob", "thresh", "binary")}
    >>> targets = {k: torch.ones(1, 8, 8) for k in ("shrink_map", "shrink_mask", "thresh_map", "thresh_mask")}
    >>> total, parts = loss_fn(maps, targets)
    >>> sorted(parts)
    ['loss_binary', 'loss_prob', 'loss_thresh']
    """

    def __init__(
        self,
        prob_weight: float = 1.0,
        binary_weight: float = 1.0,
        thresh_weight: float = 10.0,
        ohem_ratio: float = 3.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.prob_weight = prob_weight
        self.binary_weight = binary_weight
        self.thresh_weight = thresh_weight
        self.ohem_ratio = ohem_ratio
        self.eps = eps

    def _balanced_bce(self, prob: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
        positive = gt * mask
        negative = (1.0 - gt) * mask
        num_pos = int(positive.sum().item())
        # No text in the batch gives no BCE term (as in DB); the dice term still pushes P down.
        num_neg = min(int(negative.sum().item()), int(num_pos * self.ohem_ratio))
        bce = F.binary_cross_entropy(prob, gt, reduction="none")
        pos_loss = (bce * positive).sum()
        neg_loss = (
            torch.topk((bce * negative).flatten(), num_neg).values.sum() if num_neg > 0 else bce.new_zeros(())
        )
        return (pos_loss + neg_loss) / (num_pos + num_neg + self.eps)

    def _dice(self, pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
        intersection = (pred * gt * mask).sum()
        union = (pred * mask).sum() + (gt * mask).sum() + self.eps
        return 1.0 - 2.0 * intersection / union

    def _masked_l1(self, pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
        return ((pred - gt).abs() * mask).sum() / (mask.sum() + self.eps)

    def forward(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss of a batch.

        Args:
            outputs: the model's ``prob``, ``thresh`` and ``binary`` maps, ``[b, 1, H, W]``.
            targets: ``shrink_map``, ``shrink_mask``, ``thresh_map`` and ``thresh_mask`` from
                :func:`~ocrjobs.detection.targets.build_db_targets`, ``[b, H, W]`` or ``[b, 1, H, W]``.

        Returns:
            ``(total, {"loss_prob", "loss_thresh", "loss_binary"})``; the parts are detached.
        """
        shape = outputs["prob"].shape
        # float32 with autocast off: BCE on probabilities is not autocast-safe, and the masked sums
        # over millions of pixels lose precision in half precision.
        with torch.autocast(device_type=outputs["prob"].device.type, enabled=False):
            prob, thresh, binary = (outputs[k].float() for k in ("prob", "thresh", "binary"))
            shrink_map, shrink_mask, thresh_map, thresh_mask = (
                targets[k].float().reshape(shape)
                for k in ("shrink_map", "shrink_mask", "thresh_map", "thresh_mask")
            )
            loss_prob = self._balanced_bce(prob, shrink_map, shrink_mask)
            loss_binary = self._dice(binary, shrink_map, shrink_mask)
            loss_thresh = self._masked_l1(thresh, thresh_map, thresh_mask)
            total = (
                self.prob_weight * loss_prob
                + self.binary_weight * loss_binary
                + self.thresh_weight * loss_thresh
            )
        parts = {
            "loss_prob": loss_prob.detach(),
            "loss_thresh": loss_thresh.detach(),
            "loss_binary": loss_binary.detach(),
        }
        return total, parts
