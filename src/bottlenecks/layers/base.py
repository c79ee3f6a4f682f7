"""The bottleneck contract every layer in :mod:`bottlenecks.layers` follows.

A bottleneck maps encoder features ``h`` of shape ``(batch, in_features)`` to a
:class:`BottleneckOutput`: the tensor ``z`` the task head reads, named unweighted
auxiliary losses, and the *readable units* — concept logits or discrete code
indices. Analysis, metrics and editing speak to this contract only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

#: the largest feature magnitude a bottleneck accepts: its square summed over thousands of
#: dimensions and rows (distances, EMA sums, variances) still fits in float32 (max 3.4e38)
MAX_FEATURE_MAGNITUDE = 1e16


@dataclass
class BottleneckOutput:
    """What a bottleneck returns.

    Attributes:
        z: ``(batch, out_features)`` — what the head reads.
        losses: named, *unweighted* auxiliary terms (scalars), e.g. ``"commitment"``,
            ``"kl"``, ``"sparsity"``. The model multiplies each by its configured weight.
        concepts: ``(batch, n_concepts)`` concept logits, for concept bottlenecks.
        codes: ``(batch, ...)`` integer code indices, for discrete bottlenecks.
        extras: anything method-specific (probabilities after intervention,
            usage counts, the stochastic sample's mean and scale, ...).
    """

    z: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    concepts: Tensor | None = None
    codes: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Bottleneck(nn.Module):
    """Base class of every bottleneck.

    Subclasses set ``in_features`` and ``out_features`` and implement
    :meth:`forward`. Concept bottlenecks also set ``concept_names`` so that
    metrics, interventions and edits can address units by name.

    ``forward(h, concepts=None, intervention_mask=None)``:

    * ``h`` — ``(batch, in_features)`` encoder features.
    * ``concepts`` — ``(batch, n_concepts)`` ground-truth concept values in
      ``[0, 1]`` (NaN where unlabelled), given during training for methods that
      use them (CEM's random interventions, independent CBM) and at test time
      as intervention values.
    * ``intervention_mask`` — ``(batch, n_concepts)`` bool; where True, the
      predicted concept is replaced by the value in ``concepts``.
      Bottlenecks without concepts ignore both.
    """

    in_features: int
    out_features: int
    concept_names: list[str] | None = None

    def forward(  # pragma: no cover - abstract
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        raise NotImplementedError

    @property
    def n_concepts(self) -> int:
        return 0 if self.concept_names is None else len(self.concept_names)

    # ----------------------------------------------------------------- stages
    def needs_data_init(self) -> bool:
        """True when :meth:`init_from_data` must run before training (k-means keys, ...)."""
        return False

    def init_from_data(self, h: Tensor) -> None:
        """Data-dependent initialisation from a sample of training features ``(n, in_features)``.

        Called once by :class:`~bottlenecks.models.BottleneckModel` at the start of
        fitting when :meth:`needs_data_init` is True.
        """

    # ------------------------------------------------------------- validation
    def check_input(self, h: Tensor) -> None:
        """Raise a clear error when ``h`` is not ``(batch, in_features)`` or holds NaN/inf."""
        if h.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects features of shape (batch, {self.in_features}), "
                f"got a tensor of shape {tuple(h.shape)}"
            )
        if h.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_features}-dimensional features but got "
                f"{h.shape[1]}; check that the encoder's output width matches the bottleneck's "
                "in_features"
            )
        # One reduction: the largest magnitude is NaN for NaN input, inf for inf input, and
        # catches finite values so large (3e38) that sums and squared distances overflow.
        if h.numel():
            peak = float(h.detach().abs().max())
            if not math.isfinite(peak):
                raise ValueError(f"{type(self).__name__} received features containing NaN or inf")
            if peak > MAX_FEATURE_MAGNITUDE:
                raise ValueError(
                    f"{type(self).__name__} received features of magnitude {peak:.3g}, above the "
                    f"{MAX_FEATURE_MAGNITUDE:.0e} that sums and squared distances survive in float32; "
                    "rescale or standardise the features"
                )


def resolve_concept_names(
    concept_names: list[str] | None, n_concepts: int | None, owner: str
) -> list[str]:
    """The concept names of a concept layer given names, a count, or both (which must agree)."""
    if concept_names is None and n_concepts is None:
        raise ValueError(f"{owner} needs concept_names or n_concepts")
    n = len(concept_names) if concept_names is not None else int(n_concepts)  # type: ignore[arg-type]
    if n_concepts is not None and n != n_concepts:
        raise ValueError(f"{owner}: n_concepts={n_concepts} but {n} concept_names were given")
    return check_concept_names(concept_names, n)


def check_concept_names(names: list[str] | None, n: int, what: str = "concepts") -> list[str]:
    """Return concept names, generating ``c0..c{n-1}`` when none are given; check the count."""
    if names is None:
        return [f"c{i}" for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ValueError(f"{what} has {n} columns but the concept vocabulary has {len(names)} names")
    if len(set(names)) != len(names):
        dup = sorted({x for x in names if names.count(x) > 1})
        raise ValueError(f"concept names must be unique; repeated: {dup}")
    return names
