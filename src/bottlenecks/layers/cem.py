"""Concept embedding models (CEM; Espinosa Zarlenga et al., 2022).

Each concept ``i`` has two embedding generators, one for "concept on" and one for
"concept off"::

    c_i⁺ = φ_i⁺(h),  c_i⁻ = φ_i⁻(h)                   (m-dimensional, LeakyReLU)
    p̂_i  = σ(s([c_i⁺, c_i⁻]))                          (scoring function s, shared by default)
    ĉ_i  = p̂_i c_i⁺ + (1 − p̂_i) c_i⁻                    (the mixed concept embedding)
    z    = [ĉ_1, …, ĉ_k]                               (what the head reads, k·m wide)

The probability ``p̂_i`` is supervised with the concept labels (the model's
concept BCE reads the logits ``s(·)``), and an intervention sets ``p̂_i`` to the
given value, which swaps the mixture towards ``c_i⁺`` or ``c_i⁻``. *RandInt*: while
training, each labelled concept is intervened on with its ground truth with
probability ``training_intervention_prob`` (0.25 in the paper), so the head learns to
use corrected concepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from bottlenecks.layers.base import BottleneckOutput, ConceptLayer, UnitReadout, apply_intervention
from bottlenecks.naming import accepts_renamed
from bottlenecks.layers.blocks import hidden_layers


class ConceptEmbeddingBottleneck(ConceptLayer):
    """Concept embedding bottleneck: a pair of embeddings per concept mixed by its probability.

    Args:
        in_features: width of the encoder features.
        concept_names: names of the concepts (linked from the data by the CLI).
        num_concepts: number of concepts when no names are given.
        embedding_dim: ``m``, the width of each concept's embeddings.
        hidden: hidden widths shared by the embedding generators before the per-concept
            output layer (empty = each generator is one linear layer + LeakyReLU).
        training_intervention_prob: RandInt probability of replacing a labelled concept's
            probability by its ground truth while training (0 disables).
        shared_scorer: one scoring function for all concepts (as in the paper); False
            gives each concept its own.

    Shapes: ``h (batch, in_features)`` → ``z (batch, num_concepts * embedding_dim)``;
    ``concepts`` logits ``(batch, num_concepts)``; ``probs`` the probabilities
    after intervention ``(batch, num_concepts)``; ``extras["embeddings"]`` the mixed
    embeddings ``(batch, num_concepts, embedding_dim)``.

    Example::

        b = ConceptEmbeddingBottleneck(1280, concept_names=["red", "circle"], embedding_dim=16)
        out = b(torch.randn(8, 1280))        # out.z: (8, 32), out.concepts: (8, 2)
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        concept_names: list[str] | None = None,
        num_concepts: int | None = None,
        embedding_dim: int = 16,
        hidden: list[int] | None = None,
        training_intervention_prob: float = 0.25,
        shared_scorer: bool = True,
    ) -> None:
        super().__init__()
        n = len(self._init_concepts(concept_names, num_concepts))
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if not 0.0 <= training_intervention_prob <= 1.0:
            raise ValueError(f"training_intervention_prob must lie in [0, 1], got {training_intervention_prob}")
        self.in_features = int(in_features)
        self.embedding_dim = int(embedding_dim)
        self.out_features = n * self.embedding_dim
        self.training_intervention_prob = float(training_intervention_prob)
        self.trunk = nn.Sequential(*hidden_layers(self.in_features, hidden or [], "leaky_relu"))
        width = int(hidden[-1]) if hidden else self.in_features
        # All 2·k generators as one linear map: (batch, width) → (batch, k, 2, m).
        self.generators = nn.Linear(width, n * 2 * self.embedding_dim)
        n_scorers = 1 if shared_scorer else n
        self.score_weight = nn.Parameter(torch.randn(n_scorers, 2 * self.embedding_dim) / (2 * self.embedding_dim) ** 0.5)
        self.score_bias = nn.Parameter(torch.zeros(n_scorers))

    def embeddings(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The positive and negative embeddings and the concept logits.

        Returns:
            ``(pos, neg, logits)``: ``(batch, num_concepts, embedding_dim)`` twice and
            ``(batch, num_concepts)``.
        """
        e = F.leaky_relu(self.generators(self.trunk(h)))
        e = rearrange(e, "b (k two m) -> b k two m", k=self.num_concepts, two=2)
        pos, neg = e[:, :, 0], e[:, :, 1]
        both = torch.cat([pos, neg], dim=-1)  # (b, k, 2m)
        logits = (both * self.score_weight).sum(-1) + self.score_bias
        return pos, neg, logits

    def training_defaults(self) -> dict[str, object]:
        # Measured by benchmarks/sweep_defaults.py (docs/defaults.md).
        # One shared feature scale: +0.5 and +1.1 points on Shapes and its imbalanced noisy variant,
        # within 0.2 points elsewhere (docs/defaults.md, "CEM and ECBM on image features").
        return {"lr": 0.01, "weight_decay": 1e-4, "feature_scale": "shared"}

    def forward(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        self.check_input(h)
        self._count_labels(concepts)
        pos, neg, logits = self.embeddings(h)
        probs = torch.sigmoid(logits)
        if self.training and concepts is not None and self.training_intervention_prob > 0:
            if concepts.shape != probs.shape:
                raise ValueError(
                    f"concepts has shape {tuple(concepts.shape)} but the bottleneck predicts "
                    f"{tuple(probs.shape)} (batch, num_concepts)"
                )
            rand_mask = torch.rand(probs.shape, device=probs.device) < self.training_intervention_prob
            if intervention_mask is not None:
                rand_mask = rand_mask | intervention_mask.bool()
            probs = apply_intervention(probs, concepts, rand_mask)
        else:
            probs = apply_intervention(probs, concepts, intervention_mask)
        mixed = probs.unsqueeze(-1) * pos + (1 - probs.unsqueeze(-1)) * neg
        z = rearrange(mixed, "b k m -> b (k m)")
        return BottleneckOutput(z=z, concepts=logits, probs=probs, extras={"embeddings": mixed})

    def unit_readout(self) -> UnitReadout:
        """Concept ``i`` is read through its block of ``embedding_dim`` columns of ``z``."""
        m = self.embedding_dim
        return UnitReadout(tuple(tuple(range(i * m, (i + 1) * m)) for i in range(self.n_concepts)))
