"""How analysis reaches a trained model: its bottleneck, units, task and device.

Analysis functions take a :class:`~bottlenecks.models.module.BottleneckModel` (or any
module called as ``model(x, concepts=, intervention_mask=) -> (y_hat, BottleneckOutput)``
with a ``bottleneck`` and a ``task``) and speak to the bottleneck only through the
contract's hooks (:mod:`bottlenecks.layers.base`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.layers.base import Bottleneck, BottleneckOutput


def bottleneck_of(model: nn.Module) -> Bottleneck:
    """The bottleneck of a model (or the model itself when it is one)."""
    if isinstance(model, Bottleneck):
        return model
    b = getattr(model, "bottleneck", None)
    if not isinstance(b, Bottleneck):
        raise TypeError(
            f"expected a BottleneckModel (a module with a `bottleneck`), got {type(model).__name__}"
        )
    return b


def model_concept_names(model: nn.Module) -> list[str]:
    """The concept names of a model (or of its bottleneck); a clear error when it has none."""
    b = bottleneck_of(model)
    units = b.units()
    if units.kind != "concept" or not len(units):
        raise ValueError(
            f"the model's bottleneck {type(b).__name__} has no concepts to intervene on (its units are "
            f"{units.kind}s); interventions need a concept bottleneck (ConceptBottleneck, "
            "ConceptEmbeddingBottleneck, EnergyConceptBottleneck, ...)"
        )
    return list(units.names)


def check_concept_supervised(model: nn.Module) -> None:
    """Refuse models whose concept units never saw a concept label while training.

    Concept layers count the labelled entries they are trained with
    (:meth:`~bottlenecks.layers.base.Bottleneck.concept_supervision`); at 0 the units have
    names but no meaning, so intervening on "red" would set an arbitrary unit.
    """
    b = bottleneck_of(model)
    if b.concept_supervision() == 0:
        raise ValueError(
            f"this {type(b).__name__} was trained without concept labels (it saw none), so its "
            "units are not tied to the named concepts and interventions by name would set arbitrary "
            "units; train it with concept labels (joint, sequential or independent mode) first"
        )


def model_task(model: nn.Module) -> str:
    """``"classification"`` or ``"regression"``."""
    return str(getattr(model, "task", "classification"))


def forward_concepts(
    model: nn.Module, x: Tensor, values: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor, BottleneckOutput]:
    """``(y_hat, probs, out)``; ``probs`` are the concept probabilities after intervention."""
    y_hat, out = model(x, concepts=values, intervention_mask=mask)
    if out.probs is None:
        raise ValueError(f"the bottleneck {type(bottleneck_of(model)).__name__} returned no concept probabilities")
    return y_hat, out.probs, out


class EvalMode:
    """Puts a model in eval mode under ``torch.no_grad`` and restores its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
