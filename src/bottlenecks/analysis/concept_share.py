"""How much of a hybrid model's prediction its concepts explain.

A hybrid concept model (PCBM-h; a CBM with a residual side channel) reads the concept
units and a side channel declared by the bottleneck (:meth:`Bottleneck.side_channel`).
With the side channel set to zero the head gives the *concept* logits ``g``; with it,
the model's logits ``f``. :func:`concept_share` reports

* ``acc`` and ``acc_concepts`` — accuracy of ``f`` and of ``g``;
* ``agreement`` — share of examples where ``g`` and ``f`` predict the same class;
* ``explained`` — the fraction of the variance of the model's (class-centred) logits that
  the concept logits explain, ``1 − Σ||f − g||² / Σ||f − f̄||²`` (1: the side channel adds
  nothing; 0: the concept logits explain no more than a constant).

For a model without a side channel every number says the concepts explain everything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import EvalMode, bottleneck_of, model_device

__all__ = ["concept_share"]


def concept_share(model: nn.Module, data: Any, split: str = "test", batch_size: int = 4096) -> dict[str, float]:
    """Accuracy with and without the side channel, their agreement, and the explained fraction.

    Args:
        model: a classification :class:`~bottlenecks.models.module.BottleneckModel`.
        data: a feature datamodule (its ``split``), a dict ``{"x", "y"}`` or a tuple ``(x, y)``.
    """
    from bottlenecks.models.posthoc import split_rows

    if str(getattr(model, "task", "classification")) != "classification":
        raise ValueError("concept_share compares class predictions; the model's task is regression")
    x, y, _ = split_rows(data, split)
    b = bottleneck_of(model)
    side = b.side_channel()
    dev = model_device(model)
    fs: list[Tensor] = []
    gs: list[Tensor] = []
    with EvalMode(model):
        for i in range(0, len(x), batch_size):
            out = b(model.norm(x[i : i + batch_size].to(dev)))
            f = model.head(out.z)
            z = out.z.clone()
            if side is not None:
                z[:, side] = 0
            fs.append(f.cpu())
            gs.append(model.head(z).cpu())
    f, g = torch.cat(fs), torch.cat(gs)
    y = torch.as_tensor(y).cpu()
    total = (f - f.mean(0)).pow(2).sum()
    explained = 1.0 - float((f - g).pow(2).sum() / total.clamp_min(1e-12))
    return {
        "acc": float((f.argmax(-1) == y).float().mean()),
        "acc_concepts": float((g.argmax(-1) == y).float().mean()),
        "agreement": float((f.argmax(-1) == g.argmax(-1)).float().mean()),
        "explained": explained,
    }
