"""Concept bottleneck layer (Koh et al., 2020): features → named concept logits → head.

The head reads concept *probabilities* (soft) or thresholded concepts (hard).
Interventions replace predicted probabilities with given values before the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bottlenecks.layers.base import Bottleneck, BottleneckOutput, check_concept_names


def mlp(in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0) -> nn.Module:
    """A plain MLP (ReLU between layers); a single Linear when ``hidden`` is empty."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def apply_intervention(probs: Tensor, concepts: Tensor | None, mask: Tensor | None) -> Tensor:
    """Replace ``probs`` by ``concepts`` where ``mask`` is True.

    Args:
        probs: ``(batch, n_concepts)`` predicted probabilities.
        concepts: ``(batch, n_concepts)`` values in ``[0, 1]``; NaN entries are never used.
        mask: ``(batch, n_concepts)`` bool, or None for no intervention.
    """
    if mask is None:
        return probs
    if concepts is None:
        raise ValueError("an intervention_mask was given without concept values to intervene with")
    if mask.shape != probs.shape or concepts.shape != probs.shape:
        raise ValueError(
            f"intervention expects mask and values of shape {tuple(probs.shape)} (batch, n_concepts), "
            f"got mask {tuple(mask.shape)} and values {tuple(concepts.shape)}"
        )
    mask = mask.bool() & ~torch.isnan(concepts)
    return torch.where(mask, torch.nan_to_num(concepts).to(probs.dtype), probs)


class ConceptBottleneck(Bottleneck):
    """Linear (or MLP) concept predictor; the head reads concept probabilities.

    Args:
        in_features: width of the encoder features.
        concept_names: names of the concepts (linked from the data by the CLI).
        n_concepts: number of concepts when no names are given.
        hidden: hidden widths of the concept predictor (empty = linear).
        dropout: dropout between hidden layers.
        hard: feed thresholded concepts (0/1) to the head instead of probabilities;
            gradients pass straight through to the probabilities.

    Shapes: ``h (batch, in_features)`` → ``z (batch, n_concepts)``, ``concepts`` logits
    ``(batch, n_concepts)``; ``extras["probs"]`` the probabilities after intervention.
    """

    def __init__(
        self,
        in_features: int,
        concept_names: list[str] | None = None,
        n_concepts: int | None = None,
        hidden: list[int] | None = None,
        dropout: float = 0.0,
        hard: bool = False,
    ) -> None:
        super().__init__()
        if concept_names is None and n_concepts is None:
            raise ValueError("ConceptBottleneck needs concept_names or n_concepts")
        n = len(concept_names) if concept_names is not None else int(n_concepts)  # type: ignore[arg-type]
        if n_concepts is not None and n != n_concepts:
            raise ValueError(f"n_concepts={n_concepts} but {n} concept_names were given")
        self.concept_names = check_concept_names(concept_names, n)
        self.in_features = int(in_features)
        self.out_features = n
        self.hard = hard
        self.predictor = mlp(in_features, hidden or [], n, dropout)

    def forward(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        self.check_input(h)
        logits = self.predictor(h)
        probs = apply_intervention(torch.sigmoid(logits), concepts, intervention_mask)
        z = probs
        if self.hard:
            z = probs + ((probs > 0.5).to(probs.dtype) - probs).detach()
        return BottleneckOutput(z=z, concepts=logits, extras={"probs": probs})


class IdentityBottleneck(Bottleneck):
    """No bottleneck: the head reads the features themselves (the black-box probe)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = self.out_features = int(in_features)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        return BottleneckOutput(z=h)
