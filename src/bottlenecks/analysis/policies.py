"""Intervention policies: which concept (or group of concepts) to ask about next, one per
example at a time.

* :class:`RandomPolicy` — a random labelled concept (group);
* :class:`UncertaintyPolicy` — the most uncertain concept (group): largest entropy of the
  predicted probabilities, summed over a group's members;
* :class:`ExpectedChangePolicy` — the largest expected change of the predicted label
  distribution if the concept were revealed (summed over a group's members);
* :class:`CostAwarePolicy` — another policy's gain divided by the cost of asking.

**Groups.** Interventions may reveal whole groups of concepts at once — CUB's attribute
groups (``has_wing_color::*``, from the dataset's ``concept_groups``) or any grouping a user
gives as ``{group name: [concept names]}``; :func:`make_groups` checks a grouping and its
costs. Without groups every concept is its own group, and everything reads as before.

**Costs.** A cost per concept or per group (e.g. annotation seconds); a group without its
own cost costs the sum of its members'. Curves can be drawn against cumulative cost
(:func:`~bottlenecks.analysis.intervention_curves.intervention_curve`, ``budget_by="cost"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bottlenecks.analysis.interventions import concept_index
from bottlenecks.analysis.model_access import forward_concepts, model_task


@dataclass
class InterventionGroups:
    """Which concepts are revealed together and what asking costs.

    Attributes:
        names: group names ``(n_groups,)``.
        members: ``(n_groups, num_concepts)`` bool; every concept is in exactly one group.
        costs: ``(n_groups,)`` float, the cost of revealing each group (1 each when no costs
            were given: budgets then count groups).
        has_costs: whether costs were given.
    """

    names: list[str]
    members: Tensor
    costs: Tensor
    has_costs: bool = False

    def __len__(self) -> int:
        return len(self.names)

    @property
    def grouped(self) -> bool:
        """True when some group has more than one concept."""
        return bool((self.members.sum(1) > 1).any())


def _check_cost(value: object, what: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"the cost of {what} must be a number, got {value!r}") from None
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ValueError(f"the cost of {what} is {v:g}; costs must be finite and non-negative")
    return v


def make_groups(
    concept_names: Sequence[str],
    groups: Mapping[str, Sequence[str | int]] | None = None,
    costs: Mapping[str, float] | Sequence[float] | Tensor | None = None,
) -> InterventionGroups:
    """Check a grouping of concepts and their costs.

    Args:
        concept_names: the model's concept names.
        groups: ``{group name: [concept names or indices]}``; groups must not overlap and
            must not be empty; concepts in no group form groups of their own (named by the
            concept). None: every concept is its own group.
        costs: the cost of asking, per group and/or per concept: a mapping whose keys are
            group names or concept names, or a sequence with one cost per concept. A group
            without its own cost costs the sum of its members' costs. None: every group costs 1.

    Returns:
        An :class:`InterventionGroups`.

    Raises:
        ValueError: an unknown concept or cost key, an empty or overlapping group, a
            concept without a cost, or a negative / non-finite cost, each named.
    """
    names = list(concept_names)
    k = len(names)
    group_names: list[str] = []
    rows: list[list[int]] = []
    owner: dict[int, str] = {}
    for g, concepts in (groups or {}).items():
        if not isinstance(g, str):
            raise ValueError(f"group names must be strings, got {g!r}")
        if isinstance(concepts, (str, int)) or not isinstance(concepts, Sequence):
            raise ValueError(f"group {g!r} must list its concepts (a list of names or indices), got {concepts!r}")
        if not concepts:
            raise ValueError(f"group {g!r} is empty; every group needs at least one concept")
        idx = []
        for c in concepts:
            try:
                j = concept_index(names, c)
            except (ValueError, TypeError) as err:
                raise ValueError(f"group {g!r}: {err}") from None
            if j in owner:
                raise ValueError(
                    f"concept {names[j]!r} is in groups {owner[j]!r} and {g!r}; groups must not overlap"
                )
            owner[j] = g
            idx.append(j)
        group_names.append(g)
        rows.append(idx)
    for j in range(k):
        if j not in owner:
            if names[j] in group_names:
                raise ValueError(
                    f"concept {names[j]!r} is in no group and a group has its name; put it in a group"
                )
            group_names.append(names[j])
            rows.append([j])
    members = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, idx in enumerate(rows):
        members[i, idx] = True

    if costs is None:
        return InterventionGroups(group_names, members, torch.ones(len(rows), dtype=torch.float64), False)
    concept_cost: dict[int, float] = {}
    group_cost: dict[int, float] = {}
    if isinstance(costs, Mapping):
        gpos = {g: i for i, g in enumerate(group_names)}
        for key, value in costs.items():
            if isinstance(key, str) and key in gpos and (key not in names or members[gpos[key]].sum() > 1):
                group_cost[gpos[key]] = _check_cost(value, f"group {key!r}")
            elif isinstance(key, str) and key in names:
                concept_cost[names.index(key)] = _check_cost(value, f"concept {key!r}")
            else:
                raise ValueError(
                    f"cost given for {key!r}, which is neither a group nor a concept; groups are "
                    f"{group_names[:10]}{' ...' if len(group_names) > 10 else ''}"
                )
    else:
        values = torch.as_tensor(costs, dtype=torch.float64).flatten().tolist()
        if len(values) != k:
            raise ValueError(f"costs have {len(values)} entries but the model has {k} concepts (one cost per concept)")
        concept_cost = {j: _check_cost(v, f"concept {names[j]!r}") for j, v in enumerate(values)}
    out = torch.zeros(len(rows), dtype=torch.float64)
    for i, idx in enumerate(rows):
        if i in group_cost:
            out[i] = group_cost[i]
            continue
        missing = [names[j] for j in idx if j not in concept_cost]
        if missing:
            raise ValueError(
                f"no cost for concept {missing[0]!r} (group {group_names[i]!r}); give a cost for the "
                "group or for each of its concepts"
            )
        out[i] = sum(concept_cost[j] for j in idx)
    return InterventionGroups(group_names, members, out, True)


@dataclass
class PolicyState:
    """What a policy sees when choosing the next concept for each example.

    Attributes:
        model: the concept model (in eval mode, under ``torch.no_grad``).
        x: ``(batch, in_features)`` inputs.
        probs: ``(batch, num_concepts)`` concept probabilities after the interventions so far.
        y_hat: task output after the interventions so far.
        values: ``(batch, num_concepts)`` the values revealed so far (NaN elsewhere).
        mask: ``(batch, num_concepts)`` concepts already intervened on.
        available: ``(batch, num_concepts)`` concepts that may still be chosen.
        groups: the groups a choice reveals and their costs (None: one group per concept,
            cost 1).
    """

    model: nn.Module
    x: Tensor
    probs: Tensor
    y_hat: Tensor
    values: Tensor
    mask: Tensor
    available: Tensor
    groups: InterventionGroups | None = None

    @property
    def members(self) -> Tensor:
        """``(n_groups, num_concepts)`` bool (the identity without groups)."""
        if self.groups is None:
            return torch.eye(self.probs.shape[1], dtype=torch.bool, device=self.probs.device)
        return self.groups.members.to(self.probs.device)

    @property
    def costs(self) -> Tensor:
        """``(n_groups,)`` cost of each group (ones without costs)."""
        if self.groups is None:
            return torch.ones(self.probs.shape[1], dtype=torch.float64, device=self.probs.device)
        return self.groups.costs.to(self.probs.device)

    @property
    def group_available(self) -> Tensor:
        """``(batch, n_groups)``: groups with at least one member that may still be revealed."""
        return (self.available.float() @ self.members.float().T) > 0


class InterventionPolicy:
    """Chooses which concept (group) to reveal next: :meth:`scores` ranks the available ones.

    Subclasses implement :meth:`scores` (per concept, higher = ask first);
    :meth:`group_scores` sums them over each group's still-available members (override it
    when a group's value is not the sum of its members'); :meth:`select` masks the
    unavailable groups and takes the best one per example.
    """

    name = "policy"

    def reset(self) -> None:
        """Called once before a curve is computed (restart random streams)."""

    def scores(self, state: PolicyState) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def group_scores(self, state: PolicyState) -> Tensor:
        """``(batch, n_groups)``: the concept scores summed over each group's available members."""
        s = self.scores(state).float()
        if state.groups is None:
            return s
        return s.masked_fill(~state.available, 0.0) @ state.members.float().T

    def select(self, state: PolicyState) -> Tensor:
        """The next group (concept, without groups) per example ``(batch,)``; −1 where none
        is available."""
        avail = state.group_available
        s = self.group_scores(state).float().masked_fill(~avail, float("-inf"))
        choice = s.argmax(-1)
        return torch.where(avail.any(-1), choice, torch.full_like(choice, -1))


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

    def group_scores(self, state: PolicyState) -> Tensor:
        if state.groups is None:
            return self.scores(state)
        shape = (state.probs.shape[0], len(state.groups))
        return torch.rand(shape, generator=self._gen).to(state.probs.device)


class UncertaintyPolicy(InterventionPolicy):
    """The concept whose predicted probability is closest to 0.5: the largest binary entropy
    (nats); a group scores the sum of its available members' entropies.

    For models whose interventions propagate (ECBM) the probabilities are those after
    the interventions so far, so the ranking adapts.
    """

    name = "uncertainty"

    def scores(self, state: PolicyState) -> Tensor:
        p = state.probs.double().clamp(0.0, 1.0)
        return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


class ExpectedChangePolicy(InterventionPolicy):
    """The concept whose answer is expected to change the prediction most.

    For each candidate concept ``j`` with predicted probability ``p_j``::

        score_j = p_j · D(do(c_j = 1)) + (1 − p_j) · D(do(c_j = 0))

    where ``D`` is the total-variation distance between the label distributions after
    and before the hypothetical intervention (classification) or the absolute change of
    the prediction (regression). Costs ``2 · num_concepts`` forward passes per step.
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
        y_hat, _, _ = forward_concepts(state.model, x_rep, torch.cat(vals), torch.cat(masks))
        dist = _label_distribution(state.model, y_hat).view(len(cand), 2, b, -1)
        change = _distance(state.model, dist, base[None, None])  # (n_cand, 2, b)
        p = state.probs[:, cand].T  # (n_cand, b)
        expected = p * change[:, 0] + (1 - p) * change[:, 1]
        scores[:, cand] = expected.T
        return scores


class CostAwarePolicy(InterventionPolicy):
    """The largest expected gain per unit of cost: another policy's group score divided by
    the group's cost (:class:`InterventionGroups`).

    Args:
        gain: the policy whose scores are the gain, by name or instance: ``"uncertainty"``
            (entropy removed, the default) or ``"expected_change"`` (expected change of the
            label distribution); its scores must be non-negative.
        min_cost: costs below this count as this (free concepts are asked first, best
            gain first).
    """

    name = "cost_aware"

    def __init__(self, gain: str | InterventionPolicy = "uncertainty", min_cost: float = 1e-6) -> None:
        self.gain = make_policy(gain)
        if isinstance(self.gain, (RandomPolicy, CostAwarePolicy)):
            raise ValueError(
                f"a cost-aware policy divides an expected gain by the cost; {self.gain.name!r} is "
                "not a gain (use 'uncertainty' or 'expected_change')"
            )
        self.min_cost = float(min_cost)

    def reset(self) -> None:
        self.gain.reset()

    def scores(self, state: PolicyState) -> Tensor:
        return self.gain.scores(state)

    def group_scores(self, state: PolicyState) -> Tensor:
        gain = self.gain.group_scores(state).double()
        return gain / state.costs.clamp_min(self.min_cost)[None]


def _label_distribution(model: nn.Module, y_hat: Tensor) -> Tensor:
    if model_task(model) == "classification":
        return torch.softmax(y_hat, dim=-1)
    return y_hat.unsqueeze(-1)


def _distance(model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    if model_task(model) == "classification":
        return 0.5 * (a - b).abs().sum(-1)
    return (a - b).abs().sum(-1)


POLICIES: dict[str, type[InterventionPolicy]] = {
    "random": RandomPolicy,
    "uncertainty": UncertaintyPolicy,
    "expected_change": ExpectedChangePolicy,
    "cost_aware": CostAwarePolicy,
}


def make_policy(policy: str | InterventionPolicy, seed: int = 0) -> InterventionPolicy:
    """A policy from its name (``"random"``, ``"uncertainty"``, ``"expected_change"``,
    ``"cost_aware"`` — entropy per cost) or itself."""
    if isinstance(policy, InterventionPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown intervention policy {policy!r}; choose from {sorted(POLICIES)}")
    cls = POLICIES[policy]
    return cls(seed=seed) if cls is RandomPolicy else cls()
