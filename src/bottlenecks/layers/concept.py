"""Concept bottleneck layer (Koh et al., 2020): features → named concept logits → head.

The head reads concept *probabilities* (soft) or thresholded concepts (hard),
optionally next to a residual side channel of unsupervised units for when the
concepts do not carry all the label information. Interventions replace predicted
probabilities with given values before the head.

The training modes of Koh et al. (independent / sequential / joint) are stages
in :mod:`bottlenecks.models.stages`; test-time intervention policies and curves
are in :mod:`bottlenecks.analysis.interventions`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bottlenecks.naming import accepts_renamed
from bottlenecks.layers.base import (
    Bottleneck,
    BottleneckOutput,
    ConceptLayer,
    apply_intervention,
)
from bottlenecks.layers.blocks import mlp


class ConceptBottleneck(ConceptLayer):
    """Linear (or MLP) concept predictor; the head reads concept probabilities.

    Args:
        in_features: width of the encoder features.
        concept_names: names of the concepts (linked from the data by the CLI).
        num_concepts: number of concepts when no names are given.
        hidden: hidden widths of the concept predictor (empty = linear).
        dropout: dropout between hidden layers.
        hard: feed thresholded concepts (0/1) to the head instead of probabilities;
            gradients pass straight through to the probabilities.
        num_residual: width of an optional residual side channel: unsupervised units
            (a linear map of the features) that the head reads next to the concepts,
            for when the concepts are incomplete. Interventions never touch them;
            :func:`bottlenecks.analysis.leakage.concept_leakage` measures how much
            label information the head takes from them (:meth:`side_channel`).

    Shapes: ``h (batch, in_features)`` → ``z (batch, num_concepts + n_residual)`` laid out
    as ``[concepts | residual]``; ``concepts`` logits ``(batch, num_concepts)``;
    ``probs`` the probabilities after intervention ``(batch, num_concepts)``.

    Example::

        b = ConceptBottleneck(1280, concept_names=["red", "circle"], num_residual=4)
        out = b(torch.randn(8, 1280))        # out.z: (8, 6), out.concepts: (8, 2)
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        concept_names: list[str] | None = None,
        num_concepts: int | None = None,
        hidden: list[int] | None = None,
        dropout: float = 0.0,
        hard: bool = False,
        num_residual: int = 0,
    ) -> None:
        super().__init__()
        n = len(self._init_concepts(concept_names, num_concepts))
        if num_residual < 0:
            raise ValueError(f"num_residual must be >= 0, got {num_residual}")
        self.in_features = int(in_features)
        self.num_residual = int(num_residual)
        self.out_features = n + self.num_residual
        self.hard = hard
        self.predictor = mlp(in_features, hidden or [], n, dropout=dropout)
        self.residual = nn.Linear(in_features, self.num_residual) if self.num_residual > 0 else None

    def forward(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        self.check_input(h)
        self._count_labels(concepts)
        logits = self.predictor(h)
        probs = apply_intervention(torch.sigmoid(logits), concepts, intervention_mask)
        z = probs
        if self.hard:
            z = probs + ((probs > 0.5).to(probs.dtype) - probs).detach()
        if self.residual is not None:
            z = torch.cat([z, self.residual(h)], dim=-1)
        return BottleneckOutput(z=z, concepts=logits, probs=probs)

    def training_defaults(self) -> dict[str, object]:
        # Measured by benchmarks/sweep_defaults.py (docs/defaults.md): the joint CBM's linear
        # predictor and the head on probabilities need a large step to converge in few epochs.
        # One shared feature scale (not z-scores): +0.2 to +3.2 points of test accuracy on the
        # image-feature datasets of the sweep, the same on the toys (docs/defaults.md).
        return {"lr": 0.1, "weight_decay": 1e-4, "feature_scale": "shared"}

    def side_channel(self) -> slice | None:
        return slice(self.num_concepts, self.out_features) if self.residual is not None else None

    def side_channel_parameters(self) -> list[str]:
        return ["residual"] if self.residual is not None else []


class IdentityBottleneck(Bottleneck):
    """No bottleneck: the head reads the features themselves (the black-box probe)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = self.out_features = int(in_features)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        return BottleneckOutput(z=h)
