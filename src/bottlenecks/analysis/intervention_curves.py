"""Intervention curves: task accuracy as the ground truth of more and more concepts (or
groups of concepts) is revealed, one curve per policy, against the number revealed or the
cumulative cost of asking; with a table and a plot."""

from __future__ import annotations

import math
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
from bottlenecks.analysis.policies import (
    InterventionGroups,
    InterventionPolicy,
    PolicyState,
    RandomPolicy,
    make_groups,
    make_policy,
)


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
        budgets: the budgets: concepts (or groups) revealed per example, or the cumulative
            cost allowed (``budget_by="cost"``).
        metric: ``"accuracy"`` (classification) or ``"mse"`` (regression).
        values: ``{policy name: [metric at each budget]}``.
        concept_accuracy: ``{policy name: [mean concept accuracy after intervention]}``.
        cost: ``{policy name: [mean cumulative cost spent at each budget]}`` (the number of
            groups revealed when no costs were given).
        n_examples: how many examples the curve averages over.
        unit: what one step reveals: ``"concepts"`` or ``"groups"``.
        budget_by: ``"count"`` (budgets count steps) or ``"cost"`` (budgets bound the
            cumulative cost; the prediction after the longest prefix of the policy's choices
            that fits).
    """

    budgets: list[Any]
    metric: str
    values: dict[str, list[float]] = field(default_factory=dict)
    concept_accuracy: dict[str, list[float]] = field(default_factory=dict)
    cost: dict[str, list[float]] = field(default_factory=dict)
    n_examples: int = 0
    unit: str = "concepts"
    budget_by: str = "count"

    @property
    def axis_label(self) -> str:
        if self.budget_by == "cost":
            return "cumulative cost of the interventions"
        return f"{self.unit} intervened on (ground truth)"

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (policy, budget)."""
        return [
            {"policy": p, "budget": b, self.metric: v, "concept_accuracy": self.concept_accuracy[p][i],
             "cost": self.cost[p][i] if p in self.cost else None}
            for p, vs in self.values.items()
            for i, (b, v) in enumerate(zip(self.budgets, vs))
        ]

    def table(self, digits: int = 4) -> str:
        """A markdown table: one row per budget, one column per policy."""
        pols = list(self.values)
        head = "cost budget" if self.budget_by == "cost" else ("groups" if self.unit == "groups" else "budget")
        lines = [f"| {head} | " + " | ".join(pols) + " |", "|---:|" + "---:|" * len(pols)]
        for i, b in enumerate(self.budgets):
            lines.append(f"| {b:g} | " + " | ".join(f"{self.values[p][i]:.{digits}f}" for p in pols) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "budgets": self.budgets,
            "metric": self.metric,
            "values": self.values,
            "concept_accuracy": self.concept_accuracy,
            "cost": self.cost,
            "n_examples": self.n_examples,
            "unit": self.unit,
            "budget_by": self.budget_by,
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
    groups: Mapping[str, Sequence[str | int]] | str | None = None,
    costs: Mapping[str, float] | Sequence[float] | Tensor | str | None = None,
    budget_by: str = "count",
) -> InterventionCurve:
    """Task accuracy as the ground truth of more and more concepts is revealed.

    For each example, the policy picks concepts one at a time (greedily, re-scored after
    each reveal) among those with a ground-truth label; after ``b`` reveals the model's
    prediction is scored. Budgets beyond the number of labelled concepts reveal them all.

    With ``groups``, each pick is a whole group and reveals all its labelled members;
    budgets count groups. With ``budget_by="cost"``, budgets are cumulative costs: each
    example's score is taken after the longest prefix of its policy's picks whose total
    cost is within the budget.

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
        groups: ``{group name: [concept names]}`` revealed together (see
            :func:`~bottlenecks.analysis.policies.make_groups`), or ``"data"`` for the data's
            own ``concept_groups`` (CUB's attribute groups), or None (one concept at a time).
        costs: cost per group and/or concept (a mapping, or one number per concept), or
            ``"data"`` for the data's ``concept_costs``; None: every pick costs 1.
        budget_by: ``"count"`` (budgets count picks) or ``"cost"`` (budgets bound the
            cumulative cost; needs ``costs``).

    Returns:
        An :class:`InterventionCurve`.
    """
    names = model_concept_names(model)
    check_concept_supervised(model)
    x, c, y = _as_tensors(data, split)
    if c.shape[1] != len(names):
        raise ValueError(f"the data's concepts have {c.shape[1]} columns but the model has {len(names)} concepts")
    if budget_by not in ("count", "cost"):
        raise ValueError(f"budget_by must be 'count' or 'cost', got {budget_by!r}")
    grouping = make_groups(names, _from_data(data, groups, "concept_groups", "groups"),
                           _from_data(data, costs, "concept_costs", "costs"))
    if budget_by == "cost":
        if not grouping.has_costs:
            raise ValueError("budget_by='cost' needs costs (per group or per concept)")
        budgets = sorted({float(b) for b in budgets})
        if not budgets or budgets[0] < 0 or any(math.isnan(b) for b in budgets):
            raise ValueError(f"cost budgets must be non-negative numbers, got {budgets}")
    else:
        budgets = sorted({int(b) for b in budgets})
        if not budgets or budgets[0] < 0:
            raise ValueError(f"budgets must be non-negative integers, got {budgets}")
    policies = [policy] if isinstance(policy, (str, InterventionPolicy)) else list(policy)
    if not policies:
        raise ValueError("give at least one intervention policy")
    task = model_task(model)
    metric = "accuracy" if task == "classification" else "mse"
    curve = InterventionCurve(budgets=budgets, metric=metric, n_examples=len(x),
                              unit="groups" if grouping.grouped else "concepts", budget_by=budget_by)
    state_groups = grouping if (grouping.grouped or grouping.has_costs) else None
    dev = model_device(model)
    with EvalMode(model):
        for pol in policies:
            repeats = random_repeats if (pol == "random" or isinstance(pol, RandomPolicy)) else 1
            totals = torch.zeros(3, len(budgets), dtype=torch.float64)
            name = None
            for r in range(repeats):
                p = make_policy(pol, seed=seed + r)
                name = p.name
                p.reset()
                totals += _curve_one_policy(model, p, x, c, y, budgets, batch_size, dev, task, state_groups,
                                            budget_by)
            assert name is not None
            if name in curve.values:
                name = f"{name}_{len(curve.values)}"
            totals /= repeats * len(x)
            curve.values[name] = totals[0].tolist()
            curve.concept_accuracy[name] = totals[1].tolist()
            curve.cost[name] = totals[2].tolist()
    return curve


def _from_data(data: Any, value: Any, attr: str, what: str) -> Any:
    """``value``, or the data's own ``attr`` when ``value == "data"``."""
    if not (isinstance(value, str) and value == "data"):
        if isinstance(value, str):
            raise ValueError(f"{what} must be a mapping, None or 'data' (the data's {attr}), got {value!r}")
        return value
    found = getattr(data, attr, None)
    if found is None:
        raise ValueError(
            f"{what}='data' reads the data's {attr}, but {type(data).__name__} has none; pass the "
            f"{what} yourself"
        )
    return found


def _curve_one_policy(
    model: nn.Module,
    policy: InterventionPolicy,
    x: Tensor,
    c: Tensor,
    y: Tensor,
    budgets: list[Any],
    batch_size: int,
    dev: torch.device,
    task: str,
    groups: InterventionGroups | None = None,
    budget_by: str = "count",
) -> Tensor:
    """``(3, n_budgets)``: summed task score, summed mean concept accuracy and summed
    cumulative cost at each budget."""
    out = torch.zeros(3, len(budgets), dtype=torch.float64)
    max_steps = budgets[-1] if budget_by == "count" else None
    members = None if groups is None else groups.members.to(dev)
    costs = None if groups is None else groups.costs.to(dev)
    for s in range(0, len(x), batch_size):
        xb, cb, yb = x[s : s + batch_size].to(dev).float(), c[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)
        labelled = ~torch.isnan(cb)
        values = torch.full_like(cb, float("nan"))
        mask = torch.zeros_like(labelled)
        spent = torch.zeros(len(xb), dtype=torch.float64, device=dev)
        scores, c_scores, spents = [], [], []  # per step: (batch,)
        step = 0
        while True:
            y_hat, probs, _ = forward_concepts(model, xb, values, mask)
            if task == "classification":
                score = (y_hat.argmax(-1) == yb).double()
            else:
                score = ((y_hat - yb.float()) ** 2).double()
            correct = ((probs > 0.5).float() == cb) & labelled
            scores.append(score)
            c_scores.append((correct.sum(-1) / labelled.sum(-1).clamp_min(1)).double())
            spents.append(spent.clone())
            available = labelled & ~mask
            if (max_steps is not None and step == max_steps) or not available.any():
                break
            if budget_by == "cost" and bool((spent > budgets[-1]).all()):
                break
            state = PolicyState(model, xb, probs, y_hat, values, mask, available, groups)
            pick = policy.select(state)
            rows = (pick >= 0).nonzero().flatten()
            if members is None:
                reveal = torch.zeros_like(mask)
                reveal[rows, pick[rows]] = True
                spent[rows] += 1
            else:
                reveal = members[pick.clamp_min(0)] & (pick >= 0)[:, None]
                spent[rows] += costs[pick[rows]]
            reveal &= labelled
            mask |= reveal
            values = torch.where(reveal, cb, values)
            step += 1
        sc, cs, sp = torch.stack(scores), torch.stack(c_scores), torch.stack(spents)  # (steps, batch)
        n_steps = sc.shape[0]
        for j, b in enumerate(budgets):
            if budget_by == "count":
                at = torch.full((sc.shape[1],), min(int(b), n_steps - 1), device=sc.device)
            else:
                # the last step whose cumulative cost fits (spent is non-decreasing; step 0 costs 0)
                at = (sp <= b + 1e-9).sum(0) - 1
            cols = torch.arange(sc.shape[1], device=sc.device)
            out[0, j] += sc[at, cols].sum().cpu()
            out[1, j] += cs[at, cols].sum().cpu()
            out[2, j] += sp[at, cols].sum().cpu()
    return out


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
    ax.set_xlabel(curve.axis_label)
    ax.set_ylabel("task accuracy" if curve.metric == "accuracy" else "task MSE")
    if curve.budget_by == "count":
        ax.set_xticks(curve.budgets)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
