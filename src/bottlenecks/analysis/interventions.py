"""Test-time concept interventions: by name or index, per example.

An *intervention* replaces some predicted concepts by given values (a person's
answers, or the ground truth in an evaluation) and recomputes the label. It works
for every concept bottleneck through the contract
``model(x, concepts=values, intervention_mask=mask)``: a CBM swaps the probabilities
the head reads, a CEM swaps the mixture of its embeddings, an ECBM re-infers the
other concepts and the label given the fixed ones.

* :func:`intervene` — set concepts by name or index, for all examples or per example.
* policies that choose which concept to ask about next: :mod:`bottlenecks.analysis.policies`;
* intervention curves: :mod:`bottlenecks.analysis.intervention_curves`;
* concept leakage: :mod:`bottlenecks.analysis.leakage`.

Example::

    res = intervene(model, x, {"red": 1.0, "circle": 0.0})      # same for every example
    res = intervene(model, x, c_true, concepts=["red", "large"])  # those two from c_true
    curve = intervention_curve(model, datamodule, ["random", "uncertainty"], budgets=range(11))
    print(curve.table()); plot_intervention_curves(curve)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import (
    EvalMode,
    check_concept_supervised,
    forward_concepts,
    model_concept_names,
    model_device,
)
from bottlenecks.layers.base import BottleneckOutput

ConceptKey = str | int


# -------------------------------------------------------------- building requests
def concept_index(names: Sequence[str], concept: ConceptKey) -> int:
    """Column of ``concept`` (a name or an index) in ``names``, with a clear error."""
    if isinstance(concept, bool):
        raise TypeError(f"a concept is a name or an index, got {concept!r}")
    if isinstance(concept, int):
        if not -len(names) <= concept < len(names):
            raise ValueError(f"concept index {concept} is out of range for {len(names)} concepts {list(names)}")
        return concept % len(names)
    if isinstance(concept, str):
        try:
            return list(names).index(concept)
        except ValueError:
            raise ValueError(f"unknown concept {concept!r}; the model's concepts are {list(names)}") from None
    raise TypeError(f"a concept is a name or an index, got {type(concept).__name__} {concept!r}")


def _check_values(values: Tensor, names: Sequence[str], mask: Tensor) -> None:
    """Values where ``mask`` is True must lie in [0, 1]; the error names the concept."""
    bad = mask & ((values < 0) | (values > 1) | torch.isinf(values))
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"intervention value {float(values[row, col]):g} for concept {names[col]!r} (example {row}) "
            "is outside [0, 1]; concept values are probabilities"
        )


def make_intervention(
    names: Sequence[str],
    batch_size: int,
    values: Mapping[ConceptKey, Any] | Tensor | Any,
    concepts: Sequence[ConceptKey] | Sequence[Sequence[ConceptKey]] | Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn an intervention request into ``(values, mask)`` tensors of shape ``(batch, num_concepts)``.

    Args:
        names: the model's concept names.
        batch_size: number of examples.
        values: either a mapping ``{concept name or index: value}`` (a number, or a
            ``(batch,)`` tensor for per-example values), or concept values as a tensor/array
            ``(batch, num_concepts)`` or ``(num_concepts,)`` (broadcast), NaN = leave alone, or a
            single number used for every selected concept.
        concepts: which concepts to set when ``values`` is a tensor or a number: None (every
            non-NaN entry), a list of names/indices (the same for every example), a list of
            such lists (one per example), or a bool mask ``(batch, num_concepts)``.

    Returns:
        ``values`` float ``(batch, num_concepts)`` (NaN where not set) and ``mask`` bool.
    """
    n = len(names)
    shape = (batch_size, n)
    if isinstance(values, Mapping):
        if concepts is not None:
            raise ValueError("give the concepts either as the keys of `values` or in `concepts`, not both")
        out = torch.full(shape, float("nan"), device=device)
        for key, v in values.items():
            j = concept_index(names, key)
            v = torch.as_tensor(v, dtype=torch.float32, device=device)
            if v.dim() > 1 or (v.dim() == 1 and v.shape[0] != batch_size):
                raise ValueError(
                    f"the value for concept {names[j]!r} must be a number or a ({batch_size},) tensor, "
                    f"got shape {tuple(v.shape)}"
                )
            out[:, j] = v
        mask = ~torch.isnan(out)
        _check_values(out, names, mask)
        return out, mask

    v = torch.as_tensor(values, dtype=torch.float32, device=device)
    if v.dim() == 0:
        v = v.expand(shape).clone()
    elif v.dim() == 1:
        if v.shape[0] != n:
            raise ValueError(
                f"intervention values have {v.shape[0]} entries but the model has {n} concepts {list(names)}"
            )
        v = v.expand(shape).clone()
    elif v.dim() == 2:
        if v.shape[1] != n:
            raise ValueError(
                f"intervention values have {v.shape[1]} columns but the model has {n} concepts {list(names)}"
            )
        if v.shape[0] != batch_size:
            raise ValueError(f"intervention values have {v.shape[0]} rows but the batch has {batch_size} examples")
    else:
        raise ValueError(
            f"intervention values must be (batch, num_concepts) = {shape}, (num_concepts,) or a number, "
            f"got shape {tuple(v.shape)}"
        )

    if concepts is None:
        mask = ~torch.isnan(v)
    elif torch.is_tensor(concepts):
        if concepts.dtype != torch.bool or tuple(concepts.shape) != shape:
            raise ValueError(
                f"a concept mask must be a bool tensor of shape {shape} (batch, num_concepts), got "
                f"{concepts.dtype} {tuple(concepts.shape)}"
            )
        mask = concepts.to(v.device).clone()
    else:
        concepts = list(concepts)
        mask = torch.zeros(shape, dtype=torch.bool, device=v.device)
        per_example = bool(concepts) and all(
            isinstance(c, Sequence) and not isinstance(c, str) for c in concepts
        )
        if per_example:
            if len(concepts) != batch_size:
                raise ValueError(
                    f"per-example concept lists: got {len(concepts)} lists for {batch_size} examples"
                )
            for i, row in enumerate(concepts):
                for c in row:
                    mask[i, concept_index(names, c)] = True
        else:
            for c in concepts:
                mask[:, concept_index(names, c)] = True
        missing = mask & torch.isnan(v)
        if missing.any():
            row, col = (int(i) for i in missing.nonzero()[0])
            raise ValueError(f"concept {names[col]!r} was selected for example {row} but its value is NaN")
    _check_values(v, names, mask)
    return v.masked_fill(~mask, float("nan")), mask


@dataclass
class InterventionResult:
    """The model's outputs after an intervention.

    Attributes:
        y_hat: task output ``(batch, num_classes)`` (logits / log-probabilities) or ``(batch,)``.
        probs: concept probabilities after the intervention ``(batch, num_concepts)``.
        values, mask: the intervention that was applied ``(batch, num_concepts)``.
        out: the bottleneck's full output.
    """

    y_hat: Tensor
    probs: Tensor
    values: Tensor
    mask: Tensor
    out: BottleneckOutput

    @property
    def y_pred(self) -> Tensor:
        """Predicted class ``(batch,)`` (classification) or the prediction itself (regression)."""
        return self.y_hat.argmax(-1) if self.y_hat.dim() == 2 else self.y_hat


def intervene(
    model: nn.Module,
    x: Tensor,
    values: Mapping[ConceptKey, Any] | Tensor | Any,
    concepts: Sequence[ConceptKey] | Sequence[Sequence[ConceptKey]] | Tensor | None = None,
) -> InterventionResult:
    """Set concepts of a trained concept model and recompute its prediction.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` (or any module called as
            ``model(x, concepts=, intervention_mask=) -> (y_hat, BottleneckOutput)`` with
            ``concept_names``) over a concept bottleneck trained with concept labels.
        x: features ``(batch, in_features)`` or images the model can encode.
        values, concepts: what to set; see :func:`make_intervention`.

    Returns:
        An :class:`InterventionResult`; the model is evaluated in eval mode without gradients.
    """
    names = model_concept_names(model)
    check_concept_supervised(model)
    dev = model_device(model)
    x = x.to(dev)
    v, mask = make_intervention(names, x.shape[0], values, concepts, device=dev)
    with EvalMode(model):
        y_hat, probs, out = forward_concepts(model, x, v, mask)
    return InterventionResult(y_hat=y_hat, probs=probs, values=v, mask=mask, out=out)


__all__ = ["ConceptKey", "InterventionResult", "concept_index", "intervene", "make_intervention"]
