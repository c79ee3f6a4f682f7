"""Shared pieces of every mutual-information estimator: the result object, units, input checks.

Every estimator in :mod:`bottlenecks.estimators` is a class whose constructor stores its
parameters (so it is configurable from YAML) and whose one verb is
``estimate(x, y, z=None) -> MIResult``; ``__call__`` is an alias. ``x`` is ``(n, d_x)``,
``y`` is ``(n, d_y)`` (1-D inputs are read as one column), ``z`` an optional conditioning
variable ``(n, d_z)`` for the estimators that support conditional MI. Values are in nats
unless the estimator was built with ``units="bits"``; the result says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Units = Literal["nats", "bits"]
LN2 = math.log(2.0)
ArrayLike = Any  # torch.Tensor, numpy.ndarray or a nested list


@dataclass(frozen=True)
class MIResult:
    """A mutual-information (or entropy) estimate.

    Attributes:
        value: the estimate, in ``units``.
        units: ``"nats"`` (natural log) or ``"bits"`` (log base 2).
        estimator: a short name of the estimator and its main setting, e.g. ``"KSG-1(k=3)"``.
        n_samples: how many samples the estimate used.
        ci_low, ci_high: a confidence interval when one was computed
            (:func:`~bottlenecks.estimators.confidence_interval`), else None.
        std: standard deviation over resamples / repeated runs, when computed.
        details: estimator-specific diagnostics (bandwidths, bin counts, training curve, ...).
        method, settings, reason: set by :func:`~bottlenecks.estimators.estimate_mi` — the
            method name it ran (``"ksg"``, ``"gaussian_copula"``, ...), that method's settings and
            a one-line reason for the choice.

    ``float(result)`` gives ``value``; ``result.to("bits")`` converts.
    """

    value: float
    units: Units
    estimator: str
    n_samples: int
    ci_low: float | None = None
    ci_high: float | None = None
    std: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def __float__(self) -> float:
        return float(self.value)

    def to(self, units: Units) -> MIResult:
        """The same estimate expressed in ``units``."""
        check_units(units)
        if units == self.units:
            return self
        f = 1.0 / LN2 if units == "bits" else LN2

        def conv(v: float | None) -> float | None:
            return None if v is None else v * f

        return replace(
            self,
            value=self.value * f,
            units=units,
            ci_low=conv(self.ci_low),
            ci_high=conv(self.ci_high),
            std=conv(self.std),
        )

    def __str__(self) -> str:
        ci = "" if self.ci_low is None else f" [{self.ci_low:.4f}, {self.ci_high:.4f}]"
        return f"{self.value:.4f} {self.units}{ci} ({self.estimator}, n={self.n_samples})"


def check_units(units: str) -> None:
    if units not in ("nats", "bits"):
        raise ValueError(f"units must be 'nats' or 'bits', got {units!r}")


def nats_to(value: float, units: Units) -> float:
    """Convert a value in nats to ``units``."""
    return value / LN2 if units == "bits" else value


def as_2d(a: ArrayLike, name: str, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """``a`` as a ``(n, d)`` tensor; 1-D input becomes one column. Raises on NaN/inf or bad rank."""
    t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
    if t.dim() == 1:
        t = t.unsqueeze(1)
    elif t.dim() != 2:
        raise ValueError(
            f"{name} must be a vector (n,) or a matrix (n, d), got a tensor of shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); need at least one sample and column")
    t = t.detach()
    if t.is_floating_point() or t.is_complex():
        if t.device.type == "cpu" and not t.is_complex():
            # numpy's check: torch's elementwise CPU kernels pay a thread-pool start-up that
            # dominates a fast estimate on a loaded machine (0.2 s for 50k values at load 10)
            bad = ~np.isfinite(t.to(torch.float64).numpy())
        else:
            bad = (~torch.isfinite(t)).cpu().numpy()
        if bad.any():
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at row "
                f"{int(bad.any(1).nonzero()[0][0])}); remove or impute them before estimating MI"
            )
    return t.to(dtype)


def check_lengths(**arrays: Tensor | None) -> int:
    """All given arrays have the same number of rows; return it."""
    sizes = {k: v.shape[0] for k, v in arrays.items() if v is not None}
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in sizes.items())
        raise ValueError(f"inputs must have the same number of samples (rows), but {desc}")
    return next(iter(sizes.values()))


def constant_columns(t: Tensor) -> list[int]:
    """Indices of columns whose values are all equal."""
    if t.shape[0] == 0:
        return []
    if t.device.type == "cpu":  # numpy: see as_2d
        a = t.numpy()
        return np.flatnonzero((a == a[:1]).all(0)).tolist()
    return (t == t[:1]).all(0).nonzero().flatten().tolist()


def handle_constant(t: Tensor, name: str, policy: str) -> Tensor:
    """Raise (``policy="raise"``) or drop (``"drop"``) constant columns of a continuous variable."""
    if policy not in ("raise", "drop"):
        raise ValueError(f"constant must be 'raise' or 'drop', got {policy!r}")
    const = constant_columns(t)
    if not const:
        return t
    if policy == "raise":
        raise ValueError(
            f"{name} has constant column(s) {const[:10]}: a constant carries no information and "
            "breaks the estimator's scaling; drop those columns or pass constant='drop'"
        )
    keep = [i for i in range(t.shape[1]) if i not in set(const)]
    return t[:, keep]


def is_discrete(t: Tensor) -> bool:
    """True for integer or bool tensors (read as class labels / discrete symbols)."""
    return not (t.is_floating_point() or t.is_complex())


def as_labels(a: ArrayLike, name: str) -> Tensor:
    """A discrete variable as ``(n,)`` int64 symbol ids (rows of a matrix are symbols)."""
    t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
    t = t.detach()
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() == 2:
        return torch.unique(t, dim=0, return_inverse=True)[1]
    if t.dim() != 1:
        raise ValueError(f"{name} must be (n,) or (n, d), got shape {tuple(t.shape)}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return torch.unique(t, return_inverse=True)[1]


class MIEstimator:
    """Base class: stores ``units`` and routes ``__call__`` to :meth:`estimate`.

    Subclasses implement :meth:`_estimate_nats` returning ``(value_in_nats, details)``.
    ``supports_conditional`` says whether ``z`` is accepted; ``resampling`` is the
    confidence-interval scheme that suits the estimator (``"bootstrap"`` resamples with
    replacement; ``"subsample"`` draws without replacement, for estimators that duplicate
    points would break, such as k-nearest-neighbour ones).
    """

    supports_conditional: bool = False
    resampling: Literal["bootstrap", "subsample"] = "bootstrap"
    name: str = "MI"

    def __init__(self, units: Units = "nats") -> None:
        check_units(units)
        self.units = units

    def _estimate_nats(
        self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None
    ) -> tuple[float, int, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def estimate(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None = None) -> MIResult:
        """Estimate I(X;Y) (or I(X;Y|Z) when ``z`` is given) from paired samples.

        Args:
            x: ``(n, d_x)`` samples of X (``(n,)`` is read as one column).
            y: ``(n, d_y)`` samples of Y.
            z: optional ``(n, d_z)`` conditioning samples.

        Returns:
            :class:`MIResult` in this estimator's ``units``.
        """
        if z is not None and not self.supports_conditional:
            raise ValueError(f"{type(self).__name__} does not estimate conditional MI (z was given)")
        value, n, details = self._estimate_nats(x, y, z)
        return MIResult(
            value=nats_to(float(value), self.units),
            units=self.units,
            estimator=self.describe(),
            n_samples=int(n),
            details=details,
        )

    __call__ = estimate
