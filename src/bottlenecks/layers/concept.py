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

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bottlenecks.layers.base import Bottleneck, BottleneckOutput, resolve_concept_names


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


class ConceptLabelCounter(nn.Module):
    """Mixin-style helper: a persistent ``concept_labels_seen`` counter.

    Concept bottlenecks count the labelled concept entries they receive while
    training (``concepts`` given in train mode). A model whose counter is 0 never saw
    a concept label, so its units carry names but no supervision; the intervention
    API refuses such models (:func:`bottlenecks.analysis.interventions.intervene`).
    """

    def _init_label_counter(self) -> None:
        self.register_buffer("concept_labels_seen", torch.zeros((), dtype=torch.long))

    def _count_labels(self, concepts: Tensor | None) -> None:
        if self.training and concepts is not None and int(self.concept_labels_seen) >= 0:
            self.concept_labels_seen += (~torch.isnan(concepts)).sum().to(self.concept_labels_seen.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # Checkpoints written before the counter existed load with -1 ("unknown"), which the
        # intervention API does not refuse.
        key = prefix + "concept_labels_seen"
        if key not in state_dict:
            state_dict[key] = torch.tensor(-1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConceptBottleneck(Bottleneck, ConceptLabelCounter):
    """Linear (or MLP) concept predictor; the head reads concept probabilities.

    Args:
        in_features: width of the encoder features.
        concept_names: names of the concepts (linked from the data by the CLI).
        n_concepts: number of concepts when no names are given.
        hidden: hidden widths of the concept predictor (empty = linear).
        dropout: dropout between hidden layers.
        hard: feed thresholded concepts (0/1) to the head instead of probabilities;
            gradients pass straight through to the probabilities.
        n_residual: width of an optional residual side channel: unsupervised units
            (a linear map of the features) that the head reads next to the concepts,
            for when the concepts are incomplete. Interventions never touch them;
            :func:`bottlenecks.analysis.interventions.concept_leakage` measures how much
            label information the head takes from them.

    Shapes: ``h (batch, in_features)`` → ``z (batch, n_concepts + n_residual)`` laid out
    as ``[concepts | residual]``; ``concepts`` logits ``(batch, n_concepts)``;
    ``extras["probs"]`` the probabilities after intervention ``(batch, n_concepts)``;
    ``extras["residual"]`` the side channel ``(batch, n_residual)`` when there is one.

    Example::

        b = ConceptBottleneck(1280, concept_names=["red", "circle"], n_residual=4)
        out = b(torch.randn(8, 1280))        # out.z: (8, 6), out.concepts: (8, 2)
    """

    def __init__(
        self,
        in_features: int,
        concept_names: list[str] | None = None,
        n_concepts: int | None = None,
        hidden: list[int] | None = None,
        dropout: float = 0.0,
        hard: bool = False,
        n_residual: int = 0,
    ) -> None:
        super().__init__()
        names = resolve_concept_names(concept_names, n_concepts, "ConceptBottleneck")
        n = len(names)
        if n_residual < 0:
            raise ValueError(f"n_residual must be >= 0, got {n_residual}")
        self.concept_names = names
        self.in_features = int(in_features)
        self.n_residual = int(n_residual)
        self.out_features = n + self.n_residual
        self.hard = hard
        self.predictor = mlp(in_features, hidden or [], n, dropout)
        self.residual = nn.Linear(in_features, self.n_residual) if self.n_residual > 0 else None
        self._init_label_counter()

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
        extras = {"probs": probs}
        if self.residual is not None:
            r = self.residual(h)
            extras["residual"] = r
            z = torch.cat([z, r], dim=-1)
        return BottleneckOutput(z=z, concepts=logits, extras=extras)


class IdentityBottleneck(Bottleneck):
    """No bottleneck: the head reads the features themselves (the black-box probe)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = self.out_features = int(in_features)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        return BottleneckOutput(z=h)
