"""Per-concept accuracy and AUROC over partially labelled concepts.

torchmetrics' multilabel metrics cannot serve here: they refuse ``num_labels=1`` (a
dataset with one concept) and their AUROC fails with an IndexError when a concept has no
label at all in the split, though partially labelled concepts (NaN = unlabelled) are a
documented feature. This metric keeps the labelled entries and scores each concept on its
own: a concept without labels gets NaN accuracy and AUROC, one whose labels are all one
class gets NaN AUROC (it is undefined), and the caller averages with ``nanmean``.
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat


class ConceptMetrics(torchmetrics.Metric):
    """``update(logits, target)`` over batches, ``compute()`` → ``{"concept_acc", "concept_auroc"}``.

    Args:
        num_concepts: number of concepts (>= 1).

    ``update`` takes logits ``(batch, num_concepts)`` and targets ``(batch, num_concepts)`` in
    ``{0, 1}`` with NaN (or -1) where unlabelled. ``compute`` returns two ``(num_concepts,)``
    tensors, NaN where a concept's metric is undefined in the data seen.
    """

    full_state_update = False

    def __init__(self, num_concepts: int) -> None:
        super().__init__()
        if int(num_concepts) < 1:
            raise ValueError(f"ConceptMetrics needs at least one concept, got num_concepts={num_concepts}")
        self.num_concepts = int(num_concepts)
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor) -> None:
        if logits.dim() != 2 or logits.shape != target.shape or logits.shape[1] != self.num_concepts:
            raise ValueError(
                f"concept logits {tuple(logits.shape)} and targets {tuple(target.shape)} must both be "
                f"(batch, {self.num_concepts})"
            )
        target = target.float()
        target = torch.where(target < 0, torch.full_like(target, float("nan")), target)
        self.logits.append(logits.detach().float())
        self.target.append(target)

    def compute(self) -> dict[str, Tensor]:
        n = self.num_concepts
        acc = torch.full((n,), float("nan"))
        auroc = torch.full((n,), float("nan"))
        if not self.logits:
            return {"concept_acc": acc, "concept_auroc": auroc}
        logits, target = dim_zero_cat(self.logits).cpu(), dim_zero_cat(self.target).cpu()
        labelled = ~torch.isnan(target)
        correct = ((logits > 0).float() == target) & labelled
        counts = labelled.sum(0)
        has = counts > 0
        acc[has] = correct.sum(0)[has].float() / counts[has].float()
        for j in range(n):
            t = target[labelled[:, j], j]
            if t.numel() and 0 < int(t.sum()) < t.numel():  # both classes present
                auroc[j] = binary_auroc(logits[labelled[:, j], j], t.long())
        return {"concept_acc": acc, "concept_auroc": auroc}
