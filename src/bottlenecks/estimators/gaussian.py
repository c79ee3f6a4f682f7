"""Parametric Gaussian MI: ``I = 1/2 (log det S_x + log det S_y - log det S_xy)``.

Exact for jointly Gaussian data; for anything else it measures only the linear (second-order)
dependence — a lower bound on the MI of any distribution with the same covariance. Cheap
(O(N d^2)), low variance, high bias off the Gaussian family. Useful as a baseline and as the
low-dimensional estimator inside :class:`~bottlenecks.estimators.NoisyCompressedMI`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from scipy.special import digamma

from bottlenecks.estimators._base import ArrayLike, MIEstimator, Units, as_2d, check_lengths, handle_constant


def logdet_bias(n: int, d: int) -> float:
    """``E[log det S] - log det Sigma`` for the unbiased sample covariance ``S`` of ``n`` Gaussian
    samples in ``d`` dimensions: ``sum_{i=1..d} psi((n - i) / 2) + d log(2 / (n - 1))``."""
    return float(sum(digamma((n - i) / 2.0) for i in range(1, d + 1)) + d * math.log(2.0 / (n - 1)))


def _logdet_cov(t: torch.Tensor, shrinkage: float, bias_correction: bool = False) -> float:
    c = torch.cov(t.T).reshape(t.shape[1], t.shape[1])
    if shrinkage > 0:
        c = (1 - shrinkage) * c + shrinkage * torch.diag(torch.diagonal(c))
    sign, logdet = torch.linalg.slogdet(c)
    if sign <= 0:
        raise ValueError("the sample covariance is singular; add samples, drop collinear columns or use shrinkage")
    return float(logdet) - (logdet_bias(t.shape[0], t.shape[1]) if bias_correction else 0.0)


class GaussianMI(MIEstimator):
    """MI of the Gaussian with the samples' covariance (exact for Gaussian data).

    Args:
        shrinkage: shrink the covariance towards its diagonal by this weight in [0, 1).
        bias_correction: subtract the expected small-sample bias of each log-determinant
            (exact for Gaussian samples; matters when n is not much larger than the dimension).
        constant: ``"raise"`` or ``"drop"`` constant columns.
        units: ``"nats"`` or ``"bits"``.
    """

    supports_conditional = True

    def __init__(
        self,
        shrinkage: float = 0.0,
        constant: Literal["raise", "drop"] = "raise",
        units: Units = "nats",
        bias_correction: bool = False,
    ) -> None:
        super().__init__(units)
        self.bias_correction = bias_correction
        if not 0.0 <= shrinkage < 1.0:
            raise ValueError(f"shrinkage must lie in [0, 1), got {shrinkage}")
        self.shrinkage = shrinkage
        self.constant = constant

    def describe(self) -> str:
        return "Gaussian"

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        xt = handle_constant(as_2d(x, "x"), "x", self.constant)
        yt = handle_constant(as_2d(y, "y"), "y", self.constant)
        zt = None if z is None else handle_constant(as_2d(z, "z"), "z", self.constant)
        n = check_lengths(x=xt, y=yt, z=zt)
        d = xt.shape[1] + yt.shape[1] + (0 if zt is None else zt.shape[1])
        if n <= d:
            raise ValueError(f"GaussianMI needs more samples than dimensions: n={n}, total dimension {d}")
        ld = lambda *ts: _logdet_cov(torch.cat(ts, 1), self.shrinkage, self.bias_correction)  # noqa: E731
        if zt is None:
            value = 0.5 * (ld(xt) + ld(yt) - ld(xt, yt))
        else:
            value = 0.5 * (ld(xt, zt) + ld(yt, zt) - ld(xt, yt, zt) - ld(zt))
        return value, n, {}
