"""Concept leakage: how much label information the head takes from outside the
concepts' on/off values (soft probabilities, a residual side channel)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.analysis.intervention_curves import _as_tensors
from bottlenecks.analysis.model_access import (
    bottleneck_of,
    EvalMode,
    check_concept_supervised,
    forward_concepts,
    model_concept_names,
    model_device,
    model_task,
)


def concept_leakage(model: nn.Module, data: Any, split: str = "test", batch_size: int = 1024) -> dict[str, float]:
    """How much label information the head takes from outside the concepts' on/off values.

    Task accuracy of the model under four conditions, and the differences:

    * ``task_acc`` — as predicted.
    * ``task_acc_hard`` — every concept replaced by its thresholded prediction (0/1).
      ``soft_leakage = task_acc − task_acc_hard``: what the head gains from the soft
      probabilities beyond the concepts' values (Mahinpei et al., 2021; Havasi et al., 2022).
    * ``task_acc_true`` — every labelled concept replaced by its ground truth.
    * with a side channel (columns of ``z`` outside the concept units, declared by the
      bottleneck's ``side_channel()``; ``ConceptBottleneck(n_residual=...)``):
      ``task_acc_residual_ablated`` — predicted concepts, the residual units replaced by
      their mean over the data; ``residual_reliance = task_acc − task_acc_residual_ablated``.
      ``task_acc_true_residual_ablated`` — ground-truth concepts and mean residual;
      ``residual_leakage = task_acc_true − task_acc_true_residual_ablated``: label
      information the head takes from the side channel that the true concepts do not give.

    Args:
        model: a trained classification concept model.
        data: as for :func:`intervention_curve`.

    Returns:
        A dict of floats.
    """
    model_concept_names(model)  # a clear error for a model without concepts
    check_concept_supervised(model)
    if model_task(model) != "classification":
        raise ValueError("concept_leakage measures task accuracy; the model's task is regression")
    x, c, y = _as_tensors(data, split)
    dev = model_device(model)
    side = bottleneck_of(model).side_channel()
    residual = side is not None
    hits: dict[str, float] = {}

    def add(key: str, y_hat: Tensor, yb: Tensor) -> None:
        hits[key] = hits.get(key, 0.0) + float((y_hat.argmax(-1) == yb).sum())

    with EvalMode(model):
        res_mean = None
        if residual:
            sums, count = None, 0
            for s in range(0, len(x), batch_size):
                _, _, out = forward_concepts(model, x[s : s + batch_size].to(dev).float(), None, None)
                r = out.z[:, side]
                sums = r.sum(0) if sums is None else sums + r.sum(0)
                count += len(r)
            res_mean = sums / count
        for s in range(0, len(x), batch_size):
            xb, cb, yb = x[s : s + batch_size].to(dev).float(), c[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)
            y_hat, probs, out = forward_concepts(model, xb, None, None)
            add("task_acc", y_hat, yb)
            full = torch.ones_like(probs, dtype=torch.bool)
            add("task_acc_hard", forward_concepts(model, xb, (probs > 0.5).float(), full)[0], yb)
            labelled = ~torch.isnan(cb)
            add("task_acc_true", forward_concepts(model, xb, cb, labelled)[0], yb)
            if residual:
                for key, (vals, m) in {
                    "task_acc_residual_ablated": (None, None),
                    "task_acc_true_residual_ablated": (cb, labelled),
                }.items():
                    _, _, o = forward_concepts(model, xb, vals, m)
                    z = o.z.clone()
                    z[:, side] = res_mean
                    add(key, model.head(z), yb)
    m = {k: v / len(x) for k, v in hits.items()}
    m["soft_leakage"] = m["task_acc"] - m["task_acc_hard"]
    if residual:
        m["residual_reliance"] = m["task_acc"] - m["task_acc_residual_ablated"]
        m["residual_leakage"] = m["task_acc_true"] - m["task_acc_true_residual_ablated"]
    return m
