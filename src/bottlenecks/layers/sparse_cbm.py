"""Sparse concept bottlenecks on image–concept similarities (Semenov et al., 2024,
"Sparse Concept Bottleneck Models: Gumbel Tricks in Contrastive Learning").

The concept bottleneck layer (CBL) is a linear map ``num_concepts → num_concepts`` of the
image–concept similarities (standardised per concept with training statistics),
initialised to the identity; the head reads its concept activations. Three ways to train
the CBL (``objective``), each next to the head's cross-entropy:

* ``"l1"`` — activations ``sigmoid(CBL(s))``; loss ``"cbl_l1"``: the mean absolute CBL weight.
* ``"contrastive"`` — activations ``softmax(CBL(s) / tau)`` over concepts; loss
  ``"contrastive"``: a two-way InfoNCE between the batch's images and the concepts whose
  soft targets are the frozen image–text similarities (``softmax(s / target_tau)`` over
  concepts for each image, over images for each concept) — the CBL stays aligned with
  language while the head's loss shapes it.
* ``"gumbel"`` (Sparse-CBM) — the same loss on Gumbel-perturbed logits, and while training
  the head reads a Gumbel-softmax *sample* ``softmax((CBL(s) + g) / tau)``, ``g ~ Gumbel(0, 1)``
  (the mean ``softmax(CBL(s) / tau)`` at evaluation). A head that must classify from random
  samples pushes each image's concept distribution to a few confident concepts: sparser
  concept activations.

(This is our reading of the paper's objectives, written from its description; the
contrastive targets from frozen CLIP similarities are our choice.)

:func:`concept_matrix_search` is the paper's training-free classifier: compare each image's
row of image–concept similarities with each class's row of class–concept (text–text)
similarities.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.analysis.concept_selection import check_concept_set, check_widths
from bottlenecks.layers.base import BottleneckOutput, apply_intervention
from bottlenecks.layers.label_free import ImageToText, LanguageConceptLayer

Objective = Literal["l1", "contrastive", "gumbel"]

__all__ = ["SparseConceptBottleneck", "activation_sparsity", "concept_matrix_search"]


class SparseConceptBottleneck(LanguageConceptLayer):
    """Concept bottleneck layer on image–concept similarities, trained with ℓ1, contrastive
    or Gumbel-softmax objectives (see the module docstring).

    Args:
        objective: ``"l1"``, ``"contrastive"`` or ``"gumbel"``.
        tau: temperature of the concept softmax / Gumbel-softmax.
        target_tau: temperature of the soft targets from the frozen similarities (standardised).
        Others: see :class:`~bottlenecks.layers.label_free.LanguageConceptLayer`.

    Shapes: ``h (batch, in_features)`` → ``z = probs (batch, num_concepts)``.
    """

    def __init__(
        self,
        in_features: int,
        concept_names: list[str],
        objective: Objective = "gumbel",
        tau: float = 0.5,
        target_tau: float = 1.0,
        concept_vectors: Tensor | None = None,
        prompt: str = "{}",
        image_to_text: ImageToText = "identity",
        ridge: float = 1.0,
    ) -> None:
        super().__init__(in_features, concept_names, concept_vectors, prompt, image_to_text, ridge)
        if objective not in ("l1", "contrastive", "gumbel"):
            raise ValueError(f"objective must be 'l1', 'contrastive' or 'gumbel', got {objective!r}")
        if tau <= 0 or target_tau <= 0:
            raise ValueError(f"temperatures must be positive, got tau={tau}, target_tau={target_tau}")
        self.objective = objective
        self.tau = float(tau)
        self.target_tau = float(target_tau)
        self.out_features = self.num_concepts
        self.cbl = nn.Linear(self.num_concepts, self.num_concepts)
        with torch.no_grad():
            self.cbl.weight.copy_(torch.eye(self.num_concepts))
            self.cbl.bias.zero_()
        self.register_buffer("sim_mean", torch.zeros(self.num_concepts))
        self.register_buffer("sim_std", torch.ones(self.num_concepts))

    def _init_statistics(self, h: Tensor, sims: Tensor, concepts: Tensor | None, y: Tensor | None) -> None:
        self.sim_mean.copy_(sims.mean(0))
        self.sim_std.copy_(sims.std(0) + 1e-6 if len(sims) > 1 else torch.ones_like(self.sim_std))

    def scores(self, h: Tensor) -> Tensor:
        """Standardised image–concept similarities ``(batch, num_concepts)``."""
        return (self.similarities(h) - self.sim_mean) / self.sim_std

    def _contrastive(self, logits: Tensor, s: Tensor) -> Tensor:
        row = -(torch.softmax(s / self.target_tau, 1) * torch.log_softmax(logits / self.tau, 1)).sum(1).mean()
        if logits.shape[0] < 2:
            return row
        col = -(torch.softmax(s / self.target_tau, 0) * torch.log_softmax(logits / self.tau, 0)).sum(0).mean()
        return 0.5 * (row + col)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        s = self.scores(h)
        logits = self.cbl(s)
        self._count_targets(s.numel())
        losses: dict[str, Tensor] = {}
        if self.objective == "l1":
            probs = torch.sigmoid(logits)
            losses["cbl_l1"] = self.cbl.weight.abs().mean()
        else:
            if self.objective == "gumbel" and self.training:
                g = -torch.empty_like(logits).exponential_().log()
                noisy = logits + g
                probs = torch.softmax(noisy / self.tau, 1)
                losses["gumbel"] = self._contrastive(noisy, s.detach())
            else:
                probs = torch.softmax(logits / self.tau, 1)
                losses[self.objective] = self._contrastive(logits, s.detach())
        probs = apply_intervention(probs, concepts, intervention_mask)
        metrics = {"concept_sparsity": activation_sparsity(probs.detach())}
        return BottleneckOutput(z=probs, losses=losses, concepts=logits, probs=probs, metrics=metrics)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_concepts={self.num_concepts}, objective={self.objective!r}"


def activation_sparsity(acts: Tensor, mass: float = 0.9) -> Tensor:
    """Fraction of concepts *not* needed to hold ``mass`` of each row's activation mass,
    averaged over rows: ``1 - 1/num_concepts`` for one-hot rows, about ``1 - mass`` for uniform ones.

    Args:
        acts: ``(batch, num_concepts)`` non-negative concept activations.
    """
    a = acts.clamp_min(0)
    a = a / a.sum(1, keepdim=True).clamp_min(1e-12)
    cum = a.sort(1, descending=True).values.cumsum(1)
    needed = (cum < mass).sum(1) + 1
    return (1 - needed.float() / acts.shape[1]).mean()


def concept_matrix_search(
    image_features: Tensor,
    concept_vectors: Tensor,
    class_vectors: Tensor,
    concept_names: list[str] | None = None,
) -> Tensor:
    """Training-free class scores ``(n, n_classes)`` (the paper's concept matrix search).

    ``V = cos(images, concepts)`` ``(n, num_concepts)`` and ``D = cos(classes, concepts)``
    ``(n_classes, num_concepts)`` (class-name text vs concept text), each row centred over
    concepts; an image goes to the class whose concept profile its own profile matches best
    (cosine of the centred rows).

    Args:
        image_features: ``(n, d)`` image embeddings in the text space.
        concept_vectors: ``(num_concepts, d)`` concept text embeddings.
        class_vectors: ``(n_classes, d)`` class-name text embeddings.
        concept_names: checked for emptiness and duplicates when given.
    """
    if concept_names is not None:
        check_concept_set(concept_names, concept_vectors)
    check_widths(image_features.shape[1], concept_vectors.shape[1])
    if class_vectors.shape[1] != concept_vectors.shape[1]:
        raise ValueError(
            f"class vectors are {class_vectors.shape[1]}-dimensional but concept vectors are "
            f"{concept_vectors.shape[1]}-dimensional; embed both with the same text encoder"
        )
    t = F.normalize(concept_vectors.float(), dim=1)
    v = F.normalize(image_features.float(), dim=1) @ t.T
    d = F.normalize(class_vectors.float(), dim=1) @ t.T
    v = F.normalize(v - v.mean(1, keepdim=True), dim=1)
    d = F.normalize(d - d.mean(1, keepdim=True), dim=1)
    return v @ d.T
