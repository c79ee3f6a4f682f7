"""Test-time concept interventions: by name or index, per example, with policies and curves.

An *intervention* replaces some predicted concepts by given values (a person's
answers, or the ground truth in an evaluation) and recomputes the label. It works
for every concept bottleneck through the contract
``model(x, concepts=values, intervention_mask=mask)``: a CBM swaps the probabilities
the head reads, a CEM swaps the mixture of its embeddings, an ECBM re-infers the
other concepts and the label given the fixed ones.

* :func:`intervene` — set concepts by name or index, for all examples or per example.
* Policies choose which concept to ask about next, one per example at a time:
  :class:`RandomPolicy`, :class:`UncertaintyPolicy` (the predicted probability
  closest to 0.5) and :class:`ExpectedChangePolicy` (the largest expected change of
  the predicted label distribution if the concept were revealed).
* :func:`intervention_curve` — task accuracy against the number of concepts
  intervened on with ground truth, for each policy; :func:`plot_intervention_curves`
  draws it.
* :func:`concept_leakage` — how much label information the head takes from outside
  the concepts' on/off values (soft probabilities, a residual side channel).

Example::

    res = intervene(model, x, {"red": 1.0, "circle": 0.0})      # same for every example
    res = intervene(model, x, c_true, concepts=["red", "large"])  # those two from c_true
    curve = intervention_curve(model, datamodule, ["random", "uncertainty"], budgets=range(11))
    print(curve.table()); plot_intervention_curves(curve)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.layers.base import BottleneckOutput

ConceptKey = str | int


# ----------------------------------------------------------------- the model side
def model_concept_names(model: nn.Module) -> list[str]:
    """The concept names of a model (or of its bottleneck); a clear error when it has none."""
    names = getattr(model, "concept_names", None)
    bottleneck = getattr(model, "bottleneck", model)
    if names is None:
        names = getattr(bottleneck, "concept_names", None)
    if not names:
        raise ValueError(
            f"the model's bottleneck {type(bottleneck).__name__} has no concepts to intervene on; "
            "interventions need a concept bottleneck (ConceptBottleneck, ConceptEmbeddingBottleneck, "
            "EnergyConceptBottleneck, ...)"
        )
    return list(names)


def check_concept_supervised(model: nn.Module) -> None:
    """Refuse models whose concept units never saw a concept label while training.

    Concept bottlenecks count the labelled entries they are trained with
    (``concept_labels_seen``); at 0 the units have names but no meaning, so
    intervening on "red" would set an arbitrary unit.
    """
    bottleneck = getattr(model, "bottleneck", model)
    seen = getattr(bottleneck, "concept_labels_seen", None)
    if torch.is_tensor(seen) and int(seen) == 0:
        raise ValueError(
            f"this {type(bottleneck).__name__} was trained without concept labels (it saw none), so its "
            "units are not tied to the named concepts and interventions by name would set arbitrary "
            "units; train it with concept labels (joint, sequential or independent mode) first"
        )


def _task(model: nn.Module) -> str:
    return getattr(model, "task", "classification")


def _forward(model: nn.Module, x: Tensor, values: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor, BottleneckOutput]:
    """``(y_hat, probs, out)``; ``probs`` are the concept probabilities after intervention."""
    y_hat, out = model(x, concepts=values, intervention_mask=mask)
    probs = out.extras.get("probs") if out.extras else None
    if probs is None:
        if out.concepts is None:
            raise ValueError(f"the bottleneck {type(getattr(model, 'bottleneck', model)).__name__} returned no concepts")
        probs = torch.sigmoid(out.concepts)
        if mask is not None and values is not None:
            probs = torch.where(mask & ~torch.isnan(values), torch.nan_to_num(values), probs)
    return y_hat, probs, out


class _EvalMode:
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


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


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
    """Turn an intervention request into ``(values, mask)`` tensors of shape ``(batch, n_concepts)``.

    Args:
        names: the model's concept names.
        batch_size: number of examples.
        values: either a mapping ``{concept name or index: value}`` (a number, or a
            ``(batch,)`` tensor for per-example values), or concept values as a tensor/array
            ``(batch, n_concepts)`` or ``(n_concepts,)`` (broadcast), NaN = leave alone, or a
            single number used for every selected concept.
        concepts: which concepts to set when ``values`` is a tensor or a number: None (every
            non-NaN entry), a list of names/indices (the same for every example), a list of
            such lists (one per example), or a bool mask ``(batch, n_concepts)``.

    Returns:
        ``values`` float ``(batch, n_concepts)`` (NaN where not set) and ``mask`` bool.
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
            f"intervention values must be (batch, n_concepts) = {shape}, (n_concepts,) or a number, "
            f"got shape {tuple(v.shape)}"
        )

    if concepts is None:
        mask = ~torch.isnan(v)
    elif torch.is_tensor(concepts):
        if concepts.dtype != torch.bool or tuple(concepts.shape) != shape:
            raise ValueError(
                f"a concept mask must be a bool tensor of shape {shape} (batch, n_concepts), got "
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
        probs: concept probabilities after the intervention ``(batch, n_concepts)``.
        values, mask: the intervention that was applied ``(batch, n_concepts)``.
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
    dev = _device(model)
    x = x.to(dev)
    v, mask = make_intervention(names, x.shape[0], values, concepts, device=dev)
    with _EvalMode(model):
        y_hat, probs, out = _forward(model, x, v, mask)
    return InterventionResult(y_hat=y_hat, probs=probs, values=v, mask=mask, out=out)


# --------------------------------------------------------------------- policies
@dataclass
class PolicyState:
    """What a policy sees when choosing the next concept for each example.

    Attributes:
        model: the concept model (in eval mode, under ``torch.no_grad``).
        x: ``(batch, in_features)`` inputs.
        probs: ``(batch, n_concepts)`` concept probabilities after the interventions so far.
        y_hat: task output after the interventions so far.
        values: ``(batch, n_concepts)`` the values revealed so far (NaN elsewhere).
        mask: ``(batch, n_concepts)`` concepts already intervened on.
        available: ``(batch, n_concepts)`` concepts that may still be chosen.
    """

    model: nn.Module
    x: Tensor
    probs: Tensor
    y_hat: Tensor
    values: Tensor
    mask: Tensor
    available: Tensor


class InterventionPolicy:
    """Chooses which concept to reveal next: :meth:`scores` ranks the available ones.

    Subclasses implement :meth:`scores` (higher = ask first); :meth:`select` masks the
    unavailable concepts and takes the best one per example.
    """

    name = "policy"

    def reset(self) -> None:
        """Called once before a curve is computed (restart random streams)."""

    def scores(self, state: PolicyState) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def select(self, state: PolicyState) -> Tensor:
        """The next concept per example ``(batch,)``; −1 where none is available."""
        s = self.scores(state).float().masked_fill(~state.available, float("-inf"))
        choice = s.argmax(-1)
        return torch.where(state.available.any(-1), choice, torch.full_like(choice, -1))


class RandomPolicy(InterventionPolicy):
    """A uniformly random concept among those not yet revealed.

    Args:
        seed: seed of the policy's own random stream.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)

    def scores(self, state: PolicyState) -> Tensor:
        return torch.rand(state.probs.shape, generator=self._gen).to(state.probs.device)


class UncertaintyPolicy(InterventionPolicy):
    """The concept whose predicted probability is closest to 0.5 (highest entropy).

    For models whose interventions propagate (ECBM) the probabilities are those after
    the interventions so far, so the ranking adapts.
    """

    name = "uncertainty"

    def scores(self, state: PolicyState) -> Tensor:
        return -(state.probs - 0.5).abs()


class ExpectedChangePolicy(InterventionPolicy):
    """The concept whose answer is expected to change the prediction most.

    For each candidate concept ``j`` with predicted probability ``p_j``::

        score_j = p_j · D(do(c_j = 1)) + (1 − p_j) · D(do(c_j = 0))

    where ``D`` is the total-variation distance between the label distributions after
    and before the hypothetical intervention (classification) or the absolute change of
    the prediction (regression). Costs ``2 · n_concepts`` forward passes per step.
    """

    name = "expected_change"

    def scores(self, state: PolicyState) -> Tensor:
        b, k = state.probs.shape
        cand = state.available.any(0).nonzero().flatten().tolist()
        scores = torch.zeros(b, k, device=state.probs.device)
        if not cand:
            return scores
        base = _label_distribution(state.model, state.y_hat)
        x_rep = state.x.repeat(2 * len(cand), *([1] * (state.x.dim() - 1)))
        vals, masks = [], []
        for j in cand:
            for value in (1.0, 0.0):
                v = state.values.clone()
                m = state.mask.clone()
                v[:, j] = value
                m[:, j] = True
                vals.append(v)
                masks.append(m)
        y_hat, _, _ = _forward(state.model, x_rep, torch.cat(vals), torch.cat(masks))
        dist = _label_distribution(state.model, y_hat).view(len(cand), 2, b, -1)
        change = _distance(state.model, dist, base[None, None])  # (n_cand, 2, b)
        p = state.probs[:, cand].T  # (n_cand, b)
        expected = p * change[:, 0] + (1 - p) * change[:, 1]
        scores[:, cand] = expected.T
        return scores


def _label_distribution(model: nn.Module, y_hat: Tensor) -> Tensor:
    if _task(model) == "classification":
        return torch.softmax(y_hat, dim=-1)
    return y_hat.unsqueeze(-1)


def _distance(model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    if _task(model) == "classification":
        return 0.5 * (a - b).abs().sum(-1)
    return (a - b).abs().sum(-1)


POLICIES: dict[str, type[InterventionPolicy]] = {
    "random": RandomPolicy,
    "uncertainty": UncertaintyPolicy,
    "expected_change": ExpectedChangePolicy,
}


def make_policy(policy: str | InterventionPolicy, seed: int = 0) -> InterventionPolicy:
    """A policy from its name (``"random"``, ``"uncertainty"``, ``"expected_change"``) or itself."""
    if isinstance(policy, InterventionPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown intervention policy {policy!r}; choose from {sorted(POLICIES)}")
    cls = POLICIES[policy]
    return cls(seed=seed) if cls is RandomPolicy else cls()


# ------------------------------------------------------------------------ curves
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
    task = _task(model)
    metric = "accuracy" if task == "classification" else "mse"
    curve = InterventionCurve(budgets=budgets, metric=metric, n_examples=len(x))
    dev = _device(model)
    with _EvalMode(model):
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
            y_hat, probs, _ = _forward(model, xb, values, mask)
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


# ---------------------------------------------------------------------- leakage
def concept_leakage(model: nn.Module, data: Any, split: str = "test", batch_size: int = 1024) -> dict[str, float]:
    """How much label information the head takes from outside the concepts' on/off values.

    Task accuracy of the model under four conditions, and the differences:

    * ``task_acc`` — as predicted.
    * ``task_acc_hard`` — every concept replaced by its thresholded prediction (0/1).
      ``soft_leakage = task_acc − task_acc_hard``: what the head gains from the soft
      probabilities beyond the concepts' values (Mahinpei et al., 2021; Havasi et al., 2022).
    * ``task_acc_true`` — every labelled concept replaced by its ground truth.
    * with a residual side channel (``ConceptBottleneck(n_residual=...)``):
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
    names = model_concept_names(model)
    check_concept_supervised(model)
    if _task(model) != "classification":
        raise ValueError("concept_leakage measures task accuracy; the model's task is regression")
    x, c, y = _as_tensors(data, split)
    dev = _device(model)
    bottleneck = getattr(model, "bottleneck", None)
    residual = getattr(bottleneck, "residual", None) is not None and hasattr(model, "head")
    n = len(names)
    hits: dict[str, float] = {}

    def add(key: str, y_hat: Tensor, yb: Tensor) -> None:
        hits[key] = hits.get(key, 0.0) + float((y_hat.argmax(-1) == yb).sum())

    with _EvalMode(model):
        res_mean = None
        if residual:
            sums, count = None, 0
            for s in range(0, len(x), batch_size):
                _, _, out = _forward(model, x[s : s + batch_size].to(dev).float(), None, None)
                r = out.extras["residual"]
                sums = r.sum(0) if sums is None else sums + r.sum(0)
                count += len(r)
            res_mean = sums / count
        for s in range(0, len(x), batch_size):
            xb, cb, yb = x[s : s + batch_size].to(dev).float(), c[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)
            y_hat, probs, out = _forward(model, xb, None, None)
            add("task_acc", y_hat, yb)
            full = torch.ones_like(probs, dtype=torch.bool)
            add("task_acc_hard", _forward(model, xb, (probs > 0.5).float(), full)[0], yb)
            labelled = ~torch.isnan(cb)
            add("task_acc_true", _forward(model, xb, cb, labelled)[0], yb)
            if residual:
                for key, (vals, m) in {
                    "task_acc_residual_ablated": (None, None),
                    "task_acc_true_residual_ablated": (cb, labelled),
                }.items():
                    _, _, o = _forward(model, xb, vals, m)
                    z = o.z.clone()
                    z[:, n:] = res_mean
                    add(key, model.head(z), yb)
    m = {k: v / len(x) for k, v in hits.items()}
    m["soft_leakage"] = m["task_acc"] - m["task_acc_hard"]
    if residual:
        m["residual_reliance"] = m["task_acc"] - m["task_acc_residual_ablated"]
        m["residual_leakage"] = m["task_acc_true"] - m["task_acc_true_residual_ablated"]
    return m
