"""Intervention policies: which concept to ask about next, one per example at a time.

* :class:`RandomPolicy` — a random labelled concept;
* :class:`UncertaintyPolicy` — the predicted probability closest to 0.5;
* :class:`ExpectedChangePolicy` — the largest expected change of the predicted label
  distribution if the concept were revealed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import forward_concepts, model_task


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
}


def make_policy(policy: str | InterventionPolicy, seed: int = 0) -> InterventionPolicy:
    """A policy from its name (``"random"``, ``"uncertainty"``, ``"expected_change"``) or itself."""
    if isinstance(policy, InterventionPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown intervention policy {policy!r}; choose from {sorted(POLICIES)}")
    cls = POLICIES[policy]
    return cls(seed=seed) if cls is RandomPolicy else cls()
