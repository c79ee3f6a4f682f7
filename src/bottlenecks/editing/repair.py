"""Training-free test-time repair of a concept model on a shifted domain.

After "Training-free test-time improvement for explainable medical image classification"
(concept bottleneck models moved to a new domain): from a few labelled examples per class
of the shifted domain, *mask* the units that fire wrongly there — whose variation, as the
head reads it, pushes the examples towards wrong classes — and *amplify* discriminative units
that fire too weakly — whose contribution to the true class is well below that of the other
discriminative units — by scaling their deviation from the support mean up. No gradient step:
every candidate change is scored on the support set and kept only if it helps, greedily,
strongest suspect first: a mask when it lowers the support cross-entropy without making a
support example wrong, an amplification only when it corrects support examples (a lower
loss alone would reward mere sharpening, which costs accuracy on the source domain).

Both operations are changes of the linear readout (:meth:`Bottleneck.unit_readout`), so the
edit is exact to revert and to save. Masking unit ``u`` at its support mean ``m_u``:
``W[:, u] ← 0``, ``b ← b + W[:, u] m_u``. Amplifying by ``α``: ``W[:, u] ← α W[:, u]``,
``b ← b − (α − 1) W[:, u] m_u`` (the unit's mean contribution is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.analysis.model_access import EvalMode, model_device
from bottlenecks.editing.edits import Edit, EditRecord, _names, as_tensor, readout_of, register_edit


def readout_inputs(model: nn.Module, x: Tensor, lin: nn.Linear) -> Tensor:
    """The inputs ``(n, lin.in_features)`` that the readout ``lin`` sees for ``x`` (eval mode)."""
    seen: list[Tensor] = []
    handle = lin.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        with EvalMode(model):
            model(x)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("the model's forward pass never used its unit readout")
    return seen[-1]


@register_edit
@dataclass
class TestTimeRepair(Edit):
    """Mask wrongly firing units and amplify weakly firing discriminative ones, from a few
    labelled examples of the shifted domain, without gradient steps.

    Args:
        x: ``(n, ...)`` support examples of the shifted domain (about four per class).
        y: ``(n,)`` their labels.
        scales: amplification factors tried for each candidate unit.
        min_gain: the support cross-entropy (nats) a change must save to be kept.
        max_changes: at most this many units masked or amplified.
        weak: a unit aligned with the labels counts as firing too weakly when its alignment
            (mean centred contribution to the true class over the others, in logits) is below
            ``weak`` times the median alignment of the aligned units; only those are amplified.

    The record's ``info`` lists the masked units and the amplified ones with their factor.
    """

    __test__: ClassVar[bool] = False  # not a pytest class
    kind: ClassVar[str] = "repair"
    x: Any = None
    y: Any = None
    scales: list[float] = field(default_factory=lambda: [1.5, 2.0, 3.0])
    min_gain: float = 0.01
    max_changes: int = 8
    weak: float = 0.7

    def _data(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        if getattr(model, "task", "classification") != "classification":
            raise ValueError("repair scores classes; the model's task is regression")
        x = as_tensor(self.x, "repair x")
        y = as_tensor(self.y, "repair y", torch.long)
        if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) < 2:
            raise ValueError(
                f"repair needs support examples x (n, features) and labels y (n,), n >= 2, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        if not self.scales or any(float(s) <= 1.0 for s in self.scales):
            raise ValueError(f"repair scales must be factors > 1, got {self.scales!r}")
        return x, y

    def check(self, model: nn.Module) -> list[str]:
        self._data(model)
        lin, _ = readout_of(model)
        if lin.bias is None:
            raise ValueError("repair moves each masked unit's mean into the bias; the readout has no bias")
        return []

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        lin, readout = readout_of(model)
        x, y = self._data(model)
        dev = model_device(model)
        x, y = x.to(dev), y.to(dev)
        if int(y.max()) >= lin.out_features or int(y.min()) < 0:
            raise ValueError(f"repair labels must lie in [0, {lin.out_features}), got {sorted(set(y.tolist()))[:10]}")
        z = readout_inputs(model, x, lin).to(lin.weight.dtype)  # (n, F)
        W, b = lin.weight.data.clone(), lin.bias.data.clone()
        mean = z.mean(0)
        cols = [list(c) for c in readout.columns]

        def score(W_: Tensor, b_: Tensor) -> tuple[int, float]:
            logits = z @ W_.T + b_
            return int((logits.argmax(-1) != y).sum()), float(F.cross_entropy(logits, y))

        # alignment of each unit with the support labels, as the head reads it:
        # centred contribution to the true class minus its mean over the other classes
        n_cls = W.shape[0]
        other = 1.0 - F.one_hot(y, n_cls).to(W.dtype)
        align = []
        for c in cols:
            contrib = (z[:, c] - mean[c]) @ W[:, c].T  # (n, classes)
            true = contrib.gather(1, y[:, None])[:, 0]
            rest = (contrib * other).sum(1) / other.sum(1)
            align.append(float((true - rest).mean()))
        align_t = torch.tensor(align)
        masked: list[int] = []
        amplified: dict[int, float] = {}
        errors, best = score(W, b)
        # mask: the units most anti-aligned first; kept when the support loss drops and no
        # support example becomes wrong
        for u in align_t.argsort().tolist():
            if align[u] >= 0 or len(masked) >= self.max_changes:
                break
            W2, b2 = W.clone(), b.clone()
            b2 += W2[:, cols[u]] @ mean[cols[u]]
            W2[:, cols[u]] = 0
            e2, l2 = score(W2, b2)
            if e2 <= errors and best - l2 > self.min_gain:
                W, b, errors, best = W2, b2, e2, l2
                masked.append(u)
        # amplify: the most aligned units first, the best factor for each; kept only when it
        # corrects support examples (a lower loss alone would reward mere sharpening)
        positive = align_t[align_t > 0]
        weak_below = float(self.weak * positive.median()) if len(positive) else 0.0
        for u in align_t.argsort(descending=True).tolist():
            if len(masked) + len(amplified) >= self.max_changes:
                break
            if not 0 < align[u] < weak_below:  # discriminative, but firing too weakly here
                continue
            pick = None
            for s in self.scales:
                s = float(s)
                W2, b2 = W.clone(), b.clone()
                b2 -= (s - 1) * (W2[:, cols[u]] @ mean[cols[u]])
                W2[:, cols[u]] *= s
                e2, l2 = score(W2, b2)
                if e2 < errors or (pick is not None and e2 == errors and l2 < best):
                    pick, errors, best, Wb = s, e2, l2, (W2, b2)
            if pick is not None:
                W, b = Wb
                amplified[u] = pick
        lin.weight.data.copy_(W)
        lin.bias.data.copy_(b)
        names = _names(model, list(range(len(cols))))
        record.units = [names[u] for u in masked] + [names[u] for u in amplified]
        record.info.update(
            masked=[names[u] for u in masked],
            amplified={names[u]: s for u, s in amplified.items()},
            support_loss=best,
            support_errors=errors,
        )


__all__ = ["TestTimeRepair", "readout_inputs"]
