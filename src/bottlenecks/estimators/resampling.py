"""Confidence intervals for any estimator: bootstrap, subsampling, or repeated runs."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Literal

import numpy as np
import torch

from bottlenecks.estimators._base import ArrayLike, MIEstimator, MIResult, as_2d


def _rows(a: ArrayLike, idx: torch.Tensor) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t[idx.to(t.device)]


def confidence_interval(
    estimator: MIEstimator,
    x: ArrayLike,
    y: ArrayLike,
    z: ArrayLike | None = None,
    *,
    method: Literal["auto", "bootstrap", "subsample", "repeat"] = "auto",
    n_resamples: int = 50,
    level: float = 0.95,
    subsample_fraction: float = 0.5,
    seed: int = 0,
) -> MIResult:
    """Point estimate on all data plus a ``level`` confidence interval.

    Methods:
        * ``"bootstrap"`` — resample rows with replacement; percentile interval. Right for
          plug-in, kernel and neural estimators; *wrong* for k-NN estimators (duplicated rows
          are each other's nearest neighbours and inflate the estimate).
        * ``"subsample"`` — draw ``m = subsample_fraction * n`` rows without replacement;
          the spread of ``sqrt(m) (theta_m - theta_n)`` estimates that of
          ``sqrt(n) (theta_n - theta)`` (Politis & Romano), giving
          ``[theta_n - q_hi / sqrt(n), theta_n - q_lo / sqrt(n)]``. The default for k-NN.
        * ``"repeat"`` — rerun a stochastic estimator (neural critics, noise injection) with
          seeds ``seed + i`` on the same data; percentile interval of the runs. Captures
          optimisation noise, not sampling noise.
        * ``"auto"`` — the estimator's ``resampling`` attribute.

    The interval covers sampling variability around the estimator's *own* expectation; it says
    nothing about the estimator's bias (see the bench in :mod:`bottlenecks.estimators.bench`).

    Returns:
        The full-data :class:`MIResult` with ``ci_low``, ``ci_high`` and ``std`` filled in.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    method = estimator.resampling if method == "auto" else method
    if method not in ("bootstrap", "subsample", "repeat"):
        raise ValueError(f"method must be 'auto', 'bootstrap', 'subsample' or 'repeat', got {method!r}")
    full = estimator.estimate(x, y, z)
    n = as_2d(x, "x").shape[0]
    g = torch.Generator().manual_seed(seed)
    vals = []
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if method == "repeat":
        if not hasattr(estimator, "seed"):
            raise ValueError(f"{type(estimator).__name__} has no seed; 'repeat' needs a stochastic estimator")
        for i in range(n_resamples):
            est = copy.deepcopy(estimator)
            est.seed = seed + i + 1
            if hasattr(est, "trainer"):
                est.trainer.seed = seed + i + 1
            vals.append(est.estimate(x, y, z).value)
        v = np.asarray(vals)
        return replace(full, ci_low=float(np.quantile(v, lo_q)), ci_high=float(np.quantile(v, hi_q)), std=float(v.std(ddof=1)))
    m = n if method == "bootstrap" else max(2, int(round(subsample_fraction * n)))
    for _ in range(n_resamples):
        if method == "bootstrap":
            idx = torch.randint(0, n, (n,), generator=g)
        else:
            idx = torch.randperm(n, generator=g)[:m]
        vals.append(estimator.estimate(_rows(x, idx), _rows(y, idx), None if z is None else _rows(z, idx)).value)
    v = np.asarray(vals)
    if method == "bootstrap":
        return replace(full, ci_low=float(np.quantile(v, lo_q)), ci_high=float(np.quantile(v, hi_q)), std=float(v.std(ddof=1)))
    root = math.sqrt(m) * (v - full.value)
    q_lo, q_hi = np.quantile(root, lo_q), np.quantile(root, hi_q)
    return replace(
        full,
        ci_low=float(full.value - q_hi / math.sqrt(n)),
        ci_high=float(full.value - q_lo / math.sqrt(n)),
        std=float(root.std(ddof=1) / math.sqrt(n)),
    )
