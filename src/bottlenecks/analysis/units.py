"""Unit reports: how every readable unit of a bottleneck is used on a set of examples.

Works for any bottleneck through its contract (:mod:`bottlenecks.layers.base`): the units
come from ``units()`` and their activations from ``unit_activations`` (``read_units`` for a
bare bottleneck), so concepts, codes, keys, SAE units and latent dimensions get the same
report — usage, dead-unit alarms, top-activating examples, the classes each unit fires
for — and a new bottleneck gets it without changes here.

What *active* and *dead* mean depends only on the units' kind:

==========  =========================================  =====================================
kind        active (default ``threshold``)              dead
==========  =========================================  =====================================
concept     probability ``> 0.5``                       constant over the examples (std ≈ 0)
code, key   selected (``> 0``; activation = slots)      never selected
sae         ``> 0``                                     never active
latent      ``> 0``                                     constant over the examples (std ≈ 0)
==========  =========================================  =====================================

Example::

    rep = unit_report(model, x_test, y_test, class_names=dm.class_names)
    print(rep.table())                 # one row per unit
    rep.alarm()                        # a sentence when too many units are dead, else None
    rep.top_examples_of("red")         # rows of x_test that activate "red" most
    rep.units_for_class("red_circle")  # units that fire most for a class
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import EvalMode, bottleneck_of, model_device
from bottlenecks.layers.base import Bottleneck, Units

#: default activation threshold of each unit kind (see the module docstring)
DEFAULT_THRESHOLDS = {"concept": 0.5, "code": 0.0, "key": 0.0, "sae": 0.0, "latent": 0.0}
#: kinds whose dead units are the never-active ones (the others: constant ones)
_FIRING_KINDS = ("code", "key", "sae")


class DeadUnitWarning(UserWarning):
    """Raised (as a warning) by :func:`unit_report` when too many units are dead."""


@torch.no_grad()
def read_model_units(model: nn.Module, x: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor | None]:
    """Unit activations of a model (or a bare bottleneck) on inputs ``x``.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` (``x`` are its inputs:
            features or images) or a :class:`~bottlenecks.layers.base.Bottleneck` (``x`` are
            the features it reads).
        x: ``(n, ...)`` inputs.

    Returns:
        ``(activations, y_hat)``: ``(n, n_units)`` on the CPU, and the model's task outputs
        ``(n, n_out)`` (``(n,)`` for regression), or None for a bare bottleneck.
    """
    if isinstance(model, Bottleneck):
        return model.read_units(x.float(), batch_size=batch_size).cpu(), None
    b = bottleneck_of(model)
    dev = model_device(model)
    acts, outs = [], []
    with EvalMode(model):
        for s in range(0, len(x), batch_size):
            y_hat, out = model(x[s : s + batch_size].to(dev).float())
            acts.append(b.unit_activations(out).detach().cpu())
            outs.append(y_hat.detach().cpu())
    if not acts:
        raise ValueError("no examples given: x has 0 rows")
    return torch.cat(acts), torch.cat(outs)


def _check_class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(n_classes)]
    names = [str(c) for c in class_names]
    if len(names) < n_classes:
        raise ValueError(f"{len(names)} class names were given but the labels reach class {n_classes - 1}")
    return names


@dataclass
class UnitReport:
    """Per-unit statistics of one bottleneck on ``n`` examples (see :func:`unit_report`).

    Attributes:
        kind: the units' kind (``"concept"``, ``"code"``, ``"key"``, ``"sae"``, ``"latent"``).
        names: one name per unit.
        activations: ``(n, n_units)`` the activations the statistics come from.
        threshold: a unit is *active* on an example when its activation exceeds this.
        usage: ``(n_units,)`` fraction of examples on which each unit is active.
        mean, std, max: ``(n_units,)`` activation statistics.
        dead: ``(n_units,)`` bool, see the module docstring.
        top_examples: ``(n_units, top_k)`` rows of the examples with the highest activation
            (for code/key/sae units, only examples where the unit is active; -1 pads).
        class_counts: ``(n_units, n_classes)`` how often each unit is active on each class
            (for codes and keys: how many slots selected it), or None without labels.
        class_names: one name per class (None without labels).
        dead_alarm: the dead fraction above which :meth:`alarm` speaks.
    """

    kind: str
    names: tuple[str, ...]
    activations: Tensor
    threshold: float
    usage: Tensor
    mean: Tensor
    std: Tensor
    max: Tensor
    dead: Tensor
    top_examples: Tensor
    class_counts: Tensor | None = None
    class_names: list[str] | None = None
    dead_alarm: float = 0.5
    _units: Units = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._units = Units(self.kind, tuple(self.names))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ addressing
    def __len__(self) -> int:
        return len(self.names)

    def index(self, unit: str | int) -> int:
        """Column of a unit (name or index); a clear error naming close matches otherwise."""
        return self._units.index(unit)

    def class_index(self, cls: str | int) -> int:
        """Index of a class given by name or index; a clear error otherwise."""
        if self.class_names is None:
            raise ValueError("this unit report has no class labels (unit_report was called without y)")
        n = len(self.class_names)
        if isinstance(cls, bool) or not isinstance(cls, (int, str)):
            raise TypeError(f"a class is a name or an index, got {type(cls).__name__} {cls!r}")
        if isinstance(cls, int):
            if not 0 <= cls < n:
                raise ValueError(f"class {cls} does not exist: there are {n} classes (0..{n - 1})")
            return cls
        if cls in self.class_names:
            return self.class_names.index(cls)
        import difflib

        close = difflib.get_close_matches(cls, self.class_names, n=5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(f"no class named {cls!r}{hint} (the classes are {self.class_names[:12]})")

    # ------------------------------------------------------------------ summaries
    @property
    def n_dead(self) -> int:
        return int(self.dead.sum())

    @property
    def dead_fraction(self) -> float:
        return self.n_dead / max(1, len(self))

    def dead_units(self) -> list[str]:
        """Names of the dead units."""
        return [n for n, d in zip(self.names, self.dead.tolist()) if d]

    def alarm(self) -> str | None:
        """A sentence when more than ``dead_alarm`` of the units are dead, else None."""
        if len(self) == 0 or self.dead_fraction <= self.dead_alarm:
            return None
        shown = self.dead_units()[:8]
        more = "" if self.n_dead <= 8 else f" and {self.n_dead - 8} more"
        return (
            f"{self.n_dead} of {len(self)} {self.kind} units ({self.dead_fraction:.0%}) are dead on these "
            f"{self.activations.shape[0]} examples (alarm above {self.dead_alarm:.0%}): {shown}{more}"
        )

    def perplexity(self) -> float:
        """``exp`` of the entropy of the units' share of all activity (``n_units`` when every
        unit is used equally, 1 when one unit takes everything)."""
        w = self._weights().sum(0)
        total = float(w.sum())
        if total <= 0:
            return 0.0
        p = w[w > 0] / total
        return float(torch.exp(-(p * p.log()).sum()))

    def majority_class(self) -> Tensor:
        """``(n_units,)`` the class each unit is most active on (-1: never active)."""
        if self.class_counts is None:
            raise ValueError("this unit report has no class labels (unit_report was called without y)")
        best = self.class_counts.argmax(1)
        return torch.where(self.class_counts.sum(1) > 0, best, torch.full_like(best, -1))

    def purity(self) -> float:
        """Share of all unit activity that falls on each unit's majority class (1.0 when every
        unit fires for one class only); for codes this is
        :func:`~bottlenecks.analysis.codes.code_purity`."""
        if self.class_counts is None:
            raise ValueError("this unit report has no class labels (unit_report was called without y)")
        total = float(self.class_counts.sum())
        return float(self.class_counts.max(1).values.sum()) / total if total > 0 else float("nan")

    def classes_of(self, unit: str | int, top: int = 3) -> list[tuple[str, float]]:
        """The classes a unit is most active on, with their share of its activity."""
        if self.class_counts is None:
            raise ValueError("this unit report has no class labels (unit_report was called without y)")
        row = self.class_counts[self.index(unit)]
        total = float(row.sum())
        if total <= 0:
            return []
        order = torch.argsort(row, descending=True, stable=True)[:top]
        assert self.class_names is not None
        return [(self.class_names[int(c)], float(row[c]) / total) for c in order if row[c] > 0]

    def units_for_class(self, cls: str | int, top: int = 5) -> list[tuple[str, float]]:
        """The units most specific to a class: ``(name, share of the unit's activity on it)``,
        highest first, among units active on that class."""
        c = self.class_index(cls)
        assert self.class_counts is not None
        totals = self.class_counts.sum(1)
        share = torch.where(totals > 0, self.class_counts[:, c] / totals.clamp_min(1e-12), torch.zeros_like(totals))
        order = torch.argsort(share, descending=True, stable=True)[:top]
        return [(self.names[int(u)], float(share[u])) for u in order if share[u] > 0]

    def top_examples_of(self, unit: str | int) -> list[int]:
        """Rows of the examples that activate ``unit`` most, highest first."""
        return [int(i) for i in self.top_examples[self.index(unit)] if i >= 0]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per unit: name, usage, mean, std, max, dead, top classes."""
        out = []
        for i, name in enumerate(self.names):
            r: dict[str, Any] = {
                "unit": name,
                "usage": float(self.usage[i]),
                "mean": float(self.mean[i]),
                "std": float(self.std[i]),
                "max": float(self.max[i]),
                "dead": bool(self.dead[i]),
            }
            if self.class_counts is not None:
                r["classes"] = self.classes_of(i)
            out.append(r)
        return out

    def table(self, max_rows: int | None = 40, digits: int = 3) -> str:
        """A markdown table of :meth:`rows` (most used first when there are more than
        ``max_rows``)."""
        rows = self.rows()
        if max_rows is not None and len(rows) > max_rows:
            order = torch.argsort(self.usage, descending=True, stable=True)[:max_rows].tolist()
            rows = [rows[i] for i in order]
        head = "| unit | usage | mean | std | max | dead |" + (" classes |" if self.class_counts is not None else "")
        lines = [head, "|---|---:|---:|---:|---:|:---:|" + ("---|" if self.class_counts is not None else "")]
        for r in rows:
            line = (
                f"| {r['unit']} | {r['usage']:.{digits}f} | {r['mean']:.{digits}f} | {r['std']:.{digits}f} "
                f"| {r['max']:.{digits}f} | {'DEAD' if r['dead'] else ''} |"
            )
            if "classes" in r:
                line += " " + ", ".join(f"{c} {s:.0%}" for c, s in r["classes"]) + " |"
            lines.append(line)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_units": len(self),
            "n_examples": int(self.activations.shape[0]),
            "threshold": self.threshold,
            "dead_fraction": self.dead_fraction,
            "perplexity": self.perplexity(),
            "purity": self.purity() if self.class_counts is not None else None,
            "units": self.rows(),
        }

    # ------------------------------------------------------------------ plots
    def plot_usage(self, ax: Any = None, max_units: int = 64) -> Any:
        """Bar chart of each unit's usage; see :func:`bottlenecks.analysis.plots.plot_unit_usage`."""
        from bottlenecks.analysis.plots import plot_unit_usage

        return plot_unit_usage(self, ax=ax, max_units=max_units)

    def plot_classes(self, ax: Any = None, max_units: int = 40) -> Any:
        """Heatmap unit × class; see :func:`bottlenecks.analysis.plots.plot_unit_classes`."""
        from bottlenecks.analysis.plots import plot_unit_classes

        return plot_unit_classes(self, ax=ax, max_units=max_units)

    # ------------------------------------------------------------------ internals
    def _weights(self) -> Tensor:
        """``(n, n_units)`` how much each unit counts on each example: the activation for codes
        and keys (slots that selected it), the active indicator otherwise."""
        if self.kind in ("code", "key"):
            return self.activations.clamp_min(0).float()
        return (self.activations > self.threshold).float()


def unit_report(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    top_k: int = 8,
    threshold: float | None = None,
    dead_alarm: float = 0.5,
    dead_std: float = 1e-6,
    batch_size: int = 1024,
    warn: bool = True,
) -> UnitReport:
    """Usage, dead units, top-activating examples and classes of every unit.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` (``x``: its inputs) or a
            bare :class:`~bottlenecks.layers.base.Bottleneck` (``x``: the features it reads).
        x: ``(n, ...)`` examples.
        y: ``(n,)`` integer class labels, for the classes per unit (None: skipped).
        class_names: names of the classes (default ``"0", "1", ...``).
        top_k: how many top-activating examples to keep per unit.
        threshold: activation above which a unit counts as active (default by kind, see the
            module docstring).
        dead_alarm: warn (:class:`DeadUnitWarning`) when more than this fraction of the units
            is dead.
        dead_std: concept and latent units whose activation varies less than this are dead.
        warn: emit the warning (the alarm is always available as :meth:`UnitReport.alarm`).

    Returns:
        A :class:`UnitReport`.
    """
    units = bottleneck_of(model).units()
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if not 0.0 <= dead_alarm <= 1.0:
        raise ValueError(f"dead_alarm is a fraction of the units in [0, 1], got {dead_alarm}")
    if len(x) == 0:
        raise ValueError("no examples given: x has 0 rows")
    acts, _ = read_model_units(model, torch.as_tensor(x), batch_size=batch_size)
    acts = acts.float()
    if acts.shape[1] != len(units):
        raise ValueError(
            f"{type(bottleneck_of(model)).__name__}.unit_activations returned {acts.shape[1]} columns but "
            f"units() lists {len(units)} {units.kind} units"
        )
    thr = DEFAULT_THRESHOLDS.get(units.kind, 0.0) if threshold is None else float(threshold)
    active = acts > thr
    usage = active.float().mean(0)
    std = acts.std(0, unbiased=False)
    dead = (usage == 0) if units.kind in _FIRING_KINDS else (std <= dead_std)
    k = min(top_k, len(acts))
    order = torch.argsort(acts, dim=0, descending=True, stable=True)[:k].T.contiguous()  # (n_units, k)
    if units.kind in _FIRING_KINDS:
        fired = torch.gather(active.T, 1, order)
        order = torch.where(fired, order, torch.full_like(order, -1))
    rep = UnitReport(
        kind=units.kind,
        names=tuple(units.names),
        activations=acts,
        threshold=thr,
        usage=usage,
        mean=acts.mean(0),
        std=std,
        max=acts.max(0).values,
        dead=dead,
        top_examples=order,
        dead_alarm=dead_alarm,
    )
    if y is not None:
        y = torch.as_tensor(y).reshape(-1)
        if len(y) != len(acts):
            raise ValueError(f"x has {len(acts)} rows but y has {len(y)}")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ValueError("classes per unit need integer class labels; y holds non-integer values (regression?)")
        y = y.long()
        if (y < 0).any():
            raise ValueError(f"class labels must be non-negative, got {int(y.min())}")
        n_classes = max(int(y.max()) + 1, len(class_names) if class_names is not None else 0)
        rep.class_names = _check_class_names(class_names, n_classes)
        onehot = torch.nn.functional.one_hot(y, n_classes).float()
        rep.class_counts = rep._weights().T @ onehot
    elif class_names is not None:
        rep.class_names = list(class_names)
    if warn and (msg := rep.alarm()):
        warnings.warn(msg, DeadUnitWarning, stacklevel=2)
    return rep


# --------------------------------------------------------------------- contributions
def _linear_head(model: nn.Module) -> nn.Linear | None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) == 1 and isinstance(head[0], nn.Linear):
        return head[0]
    return None


@torch.no_grad()
def unit_contributions(
    model: nn.Module, x: Tensor, target: Tensor | int | None = None, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Each unit's contribution to a class logit: head weight × activation.

    Exact for a linear head that reads the units directly (concept bottlenecks, SAE units,
    latent dimensions): ``logit[c] = bias[c] + Σ_u W[c, u] · a_u``, so the contributions plus
    the bias add up to the logit. Whether the units are columns of ``z`` is checked
    numerically through the contract (``unit_activations`` against ``z``, minus the
    ``side_channel()`` columns); for codes or keys (``z`` is a looked-up vector, not the
    units) use attribution instead.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` with a linear head.
        x: ``(n, ...)`` inputs.
        target: the class whose logit is explained: an int, ``(n,)`` per example, or None for
            each example's predicted class (for regression: the single output).

    Returns:
        ``(contributions, target)``: ``(n, n_units)`` and the ``(n,)`` classes explained.
    """
    b = bottleneck_of(model)
    head = _linear_head(model)
    if head is None:
        raise ValueError(
            f"unit contributions (head weight x activation) need a linear head; this model's head is "
            f"{type(getattr(model, 'head', None)).__name__} (use the attribution module for other heads)"
        )
    dev = model_device(model)
    contribs, targets = [], []
    with EvalMode(model):
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size].to(dev).float()
            y_hat, out = model(xb)
            acts = b.unit_activations(out)
            cols = _unit_columns(b, out.z, acts)
            if y_hat.dim() == 1:
                t = torch.zeros(len(xb), dtype=torch.long, device=dev)
            elif target is None:
                t = y_hat.argmax(-1)
            else:
                t = torch.as_tensor(target, device=dev).long().expand(len(xb)) if torch.as_tensor(target).dim() == 0 \
                    else torch.as_tensor(target, device=dev).long()[s : s + batch_size]
                if (t < 0).any() or (t >= y_hat.shape[-1]).any():
                    raise ValueError(f"target class out of range: the model has {y_hat.shape[-1]} classes")
            w = head.weight[t][:, cols]  # (batch, n_units)
            contribs.append((w * acts).cpu())
            targets.append(t.cpu())
    return torch.cat(contribs), torch.cat(targets)


def _unit_columns(b: Bottleneck, z: Tensor, acts: Tensor) -> Tensor:
    """Columns of ``z`` that hold the units, verified numerically; a clear error otherwise."""
    cols = torch.arange(z.shape[1], device=z.device)
    side = b.side_channel()
    if side is not None:
        keep = torch.ones(z.shape[1], dtype=torch.bool, device=z.device)
        keep[side] = False
        cols = cols[keep]
    if len(cols) == acts.shape[1] and torch.allclose(z[:, cols].float(), acts.float(), atol=1e-5):
        return cols
    kind = b.units().kind
    raise ValueError(
        f"{type(b).__name__}'s {kind} units are not the columns the head reads (z has {z.shape[1]} columns, "
        f"the units {acts.shape[1]}), so head weight x activation is not defined for them; use attribution "
        "through the bottleneck instead"
    )


# --------------------------------------------------------------------- images
def example_image(dataset: Any, index: int) -> np.ndarray | None:
    """Example ``index`` of a raw dataset as an ``(H, W, 3)`` or ``(H, W)`` float array in
    ``[0, 1]``, or None when its items are not pictures.

    Image datasets (``kind == "image"``) give their ``(3, H, W)`` item; feature datasets give
    their vector reshaped to ``image_shape`` when they declare one (sklearn digits: 8×8).
    """
    kind = getattr(dataset, "kind", None)
    shape = getattr(dataset, "image_shape", None)
    if kind != "image" and shape is None:
        return None
    x = dataset[int(index)]["x"]
    x = torch.as_tensor(x).detach().float().cpu()
    if kind != "image":
        x = x.reshape(shape)
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0)
        if x.shape[-1] == 1:
            x = x[..., 0]
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # not already in [0, 1]: stretch for display
        x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return x.numpy()


def top_example_images(report: UnitReport, dataset: Any, unit: str | int) -> list[np.ndarray]:
    """Pictures of a unit's top-activating examples (empty when the data has no pictures).

    ``dataset`` must be the raw dataset whose rows ``x`` came from (same order)."""
    rows = report.top_examples_of(unit)
    if not rows:
        return []
    first = example_image(dataset, rows[0])
    if first is None:
        return []
    return [first] + [example_image(dataset, i) for i in rows[1:]]  # type: ignore[misc]
