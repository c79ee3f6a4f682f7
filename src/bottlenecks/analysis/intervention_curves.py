"""Intervention curves: task accuracy as the ground truth of more and more concepts is
revealed, one curve per policy, with a table and a plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import (
    EvalMode,
    check_concept_supervised,
    forward_concepts,
    model_concept_names,
    model_device,
    model_task,
)
from bottlenecks.analysis.policies import InterventionPolicy, PolicyState, RandomPolicy, make_policy


def _as_tensors(data: Any, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, concepts, y)`` from a feature datamodule, a dict or a tuple."""
    if hasattr(data, "split") and callable(data.split):
        s = data.split(split)
        x, c, y = s.x, s.concepts, s.y
    elif isinstance(data, Mapping):
        x, c, y = data.get("x"), data.get("concepts"), data.get("y")
    elif isinstance(data, (tuple, list)) and len(data) == 3:
        x, c, y = data
    else:
        raise TypeError(
            "data must be a feature datamodule (with .split), a dict with 'x', 'concepts', 'y', "
            f"or a tuple (x, concepts, y); got {type(data).__name__}"
        )
    if x is None or y is None:
        raise ValueError("intervention curves need inputs 'x' and labels 'y'")
    if c is None:
        raise ValueError(
            "intervention curves reveal ground-truth concepts, but the data has no concept labels"
        )
    x, c, y = torch.as_tensor(x), torch.as_tensor(c).float(), torch.as_tensor(y)
    if not (len(x) == len(c) == len(y)):
        raise ValueError(f"x, concepts and y have {len(x)}, {len(c)} and {len(y)} rows")
    return x, c, y


@dataclass
class InterventionCurve:
    """Task metric against intervention budget, one curve per policy.

    Attributes:
        budgets: the budgets (concepts revealed per example).
        metric: ``"accuracy"`` (classification) or ``"mse"`` (regression).
        values: ``{policy name: [metric at each budget]}``.
        concept_accuracy: ``{policy name: [mean concept accuracy after intervention]}``.
        n_examples: how many examples the curve averages over.
    """

    budgets: list[int]
    metric: str
    values: dict[str, list[float]] = field(default_factory=dict)
    concept_accuracy: dict[str, list[float]] = field(default_factory=dict)
    n_examples: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (policy, budget)."""
        return [
            {"policy": p, "budget": b, self.metric: v, "concept_accuracy": self.concept_accuracy[p][i]}
            for p, vs in self.values.items()
            for i, (b, v) in enumerate(zip(self.budgets, vs))
        ]

    def table(self, digits: int = 4) -> str:
        """A markdown table: one row per budget, one column per policy."""
        pols = list(self.values)
        lines = ["| budget | " + " | ".join(pols) + " |", "|---:|" + "---:|" * len(pols)]
        for i, b in enumerate(self.budgets):
            lines.append(f"| {b} | " + " | ".join(f"{self.values[p][i]:.{digits}f}" for p in pols) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "budgets": self.budgets,
            "metric": self.metric,
            "values": self.values,
            "concept_accuracy": self.concept_accuracy,
            "n_examples": self.n_examples,
        }

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        return plot_intervention_curves(self, ax=ax, title=title)


def intervention_curve(
    model: nn.Module,
    data: Any,
    policy: str | InterventionPolicy | Sequence[str | InterventionPolicy] = ("random", "uncertainty", "expected_change"),
    budgets: Sequence[int] = tuple(range(11)),
    split: str = "test",
    batch_size: int = 512,
    seed: int = 0,
    random_repeats: int = 1,
) -> InterventionCurve:
    """Task accuracy as the ground truth of more and more concepts is revealed.

    For each example, the policy picks concepts one at a time (greedily, re-scored after
    each reveal) among those with a ground-truth label; after ``b`` reveals the model's
    prediction is scored. Budgets beyond the number of labelled concepts reveal them all.

    Args:
        model: a trained concept model (see :func:`intervene`).
        data: a feature datamodule (its ``split`` is used), a dict ``{"x", "concepts", "y"}``
            or a tuple ``(x, concepts, y)``.
        policy: a policy or a list of them, by name or instance.
        budgets: numbers of revealed concepts at which to score.
        split: the datamodule split to use.
        batch_size: examples per forward pass.
        seed: seed of the random policy.
        random_repeats: average the random policy over this many seeds
            (``seed, seed + 1, ...``).

    Returns:
        An :class:`InterventionCurve`.
    """
    names = model_concept_names(model)
    check_concept_supervised(model)
    x, c, y = _as_tensors(data, split)
    if c.shape[1] != len(names):
        raise ValueError(f"the data's concepts have {c.shape[1]} columns but the model has {len(names)} concepts")
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 0:
        raise ValueError(f"budgets must be non-negative integers, got {budgets}")
    policies = [policy] if isinstance(policy, (str, InterventionPolicy)) else list(policy)
    if not policies:
        raise ValueError("give at least one intervention policy")
    task = model_task(model)
    metric = "accuracy" if task == "classification" else "mse"
    curve = InterventionCurve(budgets=budgets, metric=metric, n_examples=len(x))
    dev = model_device(model)
    with EvalMode(model):
        for pol in policies:
            repeats = random_repeats if (pol == "random" or isinstance(pol, RandomPolicy)) else 1
            totals = torch.zeros(len(budgets), dtype=torch.float64)
            c_totals = torch.zeros(len(budgets), dtype=torch.float64)
            name = None
            for r in range(repeats):
                p = make_policy(pol, seed=seed + r)
                name = p.name
                p.reset()
                t, ct = _curve_one_policy(model, p, x, c, y, budgets, batch_size, dev, task)
                totals += t
                c_totals += ct
            assert name is not None
            if name in curve.values:
                name = f"{name}_{len(curve.values)}"
            curve.values[name] = (totals / (repeats * len(x))).tolist()
            curve.concept_accuracy[name] = (c_totals / (repeats * len(x))).tolist()
    return curve


def _curve_one_policy(
    model: nn.Module,
    policy: InterventionPolicy,
    x: Tensor,
    c: Tensor,
    y: Tensor,
    budgets: list[int],
    batch_size: int,
    dev: torch.device,
    task: str,
) -> tuple[Tensor, Tensor]:
    """Summed task score and summed mean concept accuracy at each budget."""
    totals = torch.zeros(len(budgets), dtype=torch.float64)
    c_totals = torch.zeros(len(budgets), dtype=torch.float64)
    max_b = budgets[-1]
    for s in range(0, len(x), batch_size):
        xb, cb, yb = x[s : s + batch_size].to(dev).float(), c[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)
        labelled = ~torch.isnan(cb)
        values = torch.full_like(cb, float("nan"))
        mask = torch.zeros_like(labelled)
        for step in range(max_b + 1):
            y_hat, probs, _ = forward_concepts(model, xb, values, mask)
            if task == "classification":
                score = (y_hat.argmax(-1) == yb).double().sum().cpu()
            else:
                score = ((y_hat - yb.float()) ** 2).double().sum().cpu()
            correct = ((probs > 0.5).float() == cb) & labelled
            c_score = (correct.sum(-1) / labelled.sum(-1).clamp_min(1)).double().sum().cpu()
            if step in budgets:
                totals[budgets.index(step)] += score
                c_totals[budgets.index(step)] += c_score
            if step == max_b:
                break
            available = labelled & ~mask
            if not available.any():
                # every labelled concept is revealed: larger budgets score the same
                for j, b in enumerate(budgets):
                    if b > step:
                        totals[j] += score
                        c_totals[j] += c_score
                break
            state = PolicyState(model, xb, probs, y_hat, values, mask, available)
            pick = policy.select(state)
            rows = (pick >= 0).nonzero().flatten()
            cols = pick[rows]
            mask[rows, cols] = True
            values[rows, cols] = cb[rows, cols]
    return totals, c_totals


def plot_intervention_curves(curve: InterventionCurve, ax: Any = None, title: str | None = None) -> Any:
    """Draw an :class:`InterventionCurve` (one line per policy) on a matplotlib Axes.

    Args:
        curve: the curve to draw.
        ax: the Axes to draw on; a new figure when None.
        title: the Axes title.

    Returns:
        The Axes (``ax.figure.savefig("curve.png")`` saves it).
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, vs in curve.values.items():
        ax.plot(curve.budgets, vs, marker="o", label=name.replace("_", " "))
    ax.set_xlabel("concepts intervened on (ground truth)")
    ax.set_ylabel("task accuracy" if curve.metric == "accuracy" else "task MSE")
    ax.set_xticks(curve.budgets)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
