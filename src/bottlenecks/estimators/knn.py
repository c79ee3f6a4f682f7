"""k-nearest-neighbour mutual-information estimators: KSG (both variants), conditional KSG,
and Ross's continuous–discrete estimator.

Kraskov, Stögbauer & Grassberger (2004), "Estimating mutual information":

* **variant 1** — ``eps_i`` = max-norm distance from sample i to its k-th neighbour in the joint
  space; ``n_x(i)`` = number of other samples strictly within ``eps_i`` in the x space (same
  for y)::

      I1 = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >

* **variant 2** — ``eps_x(i)``, ``eps_y(i)`` = the largest x- and y-distances among the k
  neighbours; ``n_x(i)`` counts samples within ``eps_x(i)`` (non-strict)::

      I2 = psi(k) - 1/k + psi(N) - < psi(n_x) + psi(n_y) >

* **conditional** (Frenzel & Pompe 2007), variant 1 with the neighbour search in (x, y, z)::

      I(X;Y|Z) = psi(k) - < psi(n_xz + 1) + psi(n_yz + 1) - psi(n_z + 1) >

* **continuous–discrete** (Ross 2014), used automatically when ``y`` holds integer labels.

Regime: low bias for low-dimensional continuous variables (d_x + d_y up to ~10) and
moderate MI; the bias grows with dimension and with strong dependence (MI of several nats
needs exponentially many samples, Gao et al. 2015); variance ~ 1/N. Variant 1 has slightly
lower variance, variant 2 slightly lower bias in higher dimensions. Invariant to invertible
per-coordinate maps in principle (MI is), approximately in practice.

Pre-processing follows scikit-learn's ``mutual_info_regression``: every column is divided by
its standard deviation (no centring) and tiny Gaussian noise ``noise * max(1, mean|x|)`` is
added to break ties, drawn from ``numpy.random.RandomState(seed)`` — x's noise first, then y's
— so with ``k`` and ``seed`` equal, :class:`KSG` reproduces ``mutual_info_regression`` on a
1-D pair to rounding error (without clipping negative values to 0 unless ``clip=True``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from scipy.special import digamma

from bottlenecks.estimators import _neighbors as nb
from bottlenecks.estimators import _numba_kernels as nbk
from bottlenecks.estimators._base import (
    ArrayLike,
    MIEstimator,
    Units,
    as_2d,
    check_lengths,
    handle_constant,
    is_discrete,
)


def _prepare(t: torch.Tensor, standardize: bool, noise: float, rng: np.random.RandomState) -> np.ndarray:
    a = t.cpu().numpy().astype(np.float64, copy=True)
    if standardize:
        a /= np.nanstd(a, axis=0)
    if noise > 0:
        scale = np.maximum(1.0, np.mean(np.abs(a), axis=0))
        a += noise * scale * rng.standard_normal(size=a.shape)
    return a


class KSG(MIEstimator):
    """Kraskov–Stögbauer–Grassberger k-NN estimator of I(X;Y) (and I(X;Y|Z)).

    Args:
        k: number of neighbours (3–10 is usual; larger k = lower variance, more bias).
        variant: 1 or 2 (see the module docstring).
        standardize: divide every column by its standard deviation first (recommended: the
            max-norm mixes coordinates, so their scales matter).
        noise: relative scale of the tie-breaking Gaussian jitter (0 disables it).
        seed: seed of the jitter.
        clip: replace a negative estimate by 0 (what scikit-learn does).
        discrete_y: ``"auto"`` treats an integer/bool ``y`` as class labels and uses Ross's
            continuous–discrete estimator; True/False force the choice.
        constant: ``"raise"`` on constant columns, or ``"drop"`` them.
        backend: ``"auto"`` (neighbour search on CPU with numba/scipy, or chunked torch brute
            force when the input is on a GPU), ``"cpu"`` or ``"torch"``.
        workers: threads for the neighbour searches in more than two dimensions (numba threads;
            scipy's when numba is missing).
        units: ``"nats"`` or ``"bits"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2000, 1, generator=g)
        >>> y = 0.8 * x + 0.6 * torch.randn(2000, 1, generator=g)
        >>> r = KSG(k=3).estimate(x, y)   # true value -0.5 * log(1 - 0.64) = 0.511 nats
        >>> r.units, abs(r.value - 0.511) < 0.1
        ('nats', True)
    """

    supports_conditional = True
    resampling = "subsample"

    def __init__(
        self,
        k: int = 3,
        variant: Literal[1, 2] = 1,
        standardize: bool = True,
        noise: float = 1e-10,
        seed: int = 0,
        clip: bool = False,
        discrete_y: bool | Literal["auto"] = "auto",
        constant: Literal["raise", "drop"] = "raise",
        backend: Literal["auto", "cpu", "torch"] = "auto",
        workers: int = 1,
        units: Units = "nats",
    ) -> None:
        super().__init__(units)
        if int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if variant not in (1, 2):
            raise ValueError(f"variant must be 1 or 2, got {variant!r}")
        if backend not in ("auto", "cpu", "torch"):
            raise ValueError(f"backend must be 'auto', 'cpu' or 'torch', got {backend!r}")
        self.k = int(k)
        self.variant = variant
        self.standardize = standardize
        self.noise = float(noise)
        self.seed = seed
        self.clip = clip
        self.discrete_y = discrete_y
        self.constant = constant
        self.backend = backend
        self.workers = workers

    def describe(self) -> str:
        return f"KSG-{self.variant}(k={self.k})"

    # ------------------------------------------------------------------ search
    def _use_torch(self, *ts: torch.Tensor) -> bool:
        if self.backend == "torch":
            return True
        if self.backend == "cpu":
            return False
        return any(t.is_cuda for t in ts)

    def _knn(self, joint: np.ndarray, use_torch: bool, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        if use_torch:
            e, i = nb.knn_chebyshev_torch(torch.as_tensor(joint, device=device), self.k)
            return e.cpu().numpy(), i.cpu().numpy()
        return nb.knn_chebyshev(joint, self.k, workers=self.workers)

    def _count(self, p: np.ndarray, t: np.ndarray, use_torch: bool, device: torch.device) -> np.ndarray:
        if use_torch and p.shape[1] > 1:
            return nb.count_within_torch(torch.as_tensor(p, device=device), torch.as_tensor(t, device=device)).cpu().numpy()
        return nb.count_within(p, t, threads=self.workers)

    # ---------------------------------------------------------------- estimate
    def _check_n(self, n: int) -> None:
        if n <= self.k:
            raise ValueError(
                f"KSG needs more samples than neighbours: got {n} sample(s) with k={self.k}; "
                "lower k or provide more data"
            )

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        xt = as_2d(x, "x")
        y_raw = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
        discrete = is_discrete(y_raw) if self.discrete_y == "auto" else bool(self.discrete_y)
        yt = as_2d(y_raw, "y")
        zt = None if z is None else as_2d(z, "z")
        n = check_lengths(x=xt, y=yt, z=zt)
        self._check_n(n)
        xt = handle_constant(xt, "x", self.constant)
        device = xt.device
        use_torch = self._use_torch(xt, yt)
        rng = np.random.RandomState(self.seed)
        if discrete:
            if zt is not None:
                raise ValueError("conditional MI with a discrete y is not supported by KSG; pass float y")
            return self._mixed(xt, yt, rng, use_torch, device)
        yt = handle_constant(yt, "y", self.constant)
        if xt.shape[1] == 0 or yt.shape[1] == 0:
            return 0.0, n, {"note": "all columns of x or y were constant and dropped"}
        xa = _prepare(xt, self.standardize, self.noise, rng)
        ya = _prepare(yt, self.standardize, self.noise, rng)
        k = self.k
        if zt is not None:
            if self.variant != 1:
                raise ValueError("conditional KSG is implemented for variant=1 only")
            zt = handle_constant(zt, "z", self.constant)
            za = _prepare(zt, self.standardize, self.noise, rng)
            joint = np.hstack([xa, ya, za])
            eps, _ = self._knn(joint, use_torch, device)
            nxz = self._count(np.hstack([xa, za]), eps, use_torch, device) - 1
            nyz = self._count(np.hstack([ya, za]), eps, use_torch, device) - 1
            nz = self._count(za, eps, use_torch, device) - 1
            nxz, nyz, nz = (np.maximum(c, 0) for c in (nxz, nyz, nz))
            mi = digamma(k) - np.mean(digamma(nxz + 1)) - np.mean(digamma(nyz + 1)) + np.mean(digamma(nz + 1))
            details = {"mean_nxz": float(nxz.mean()), "mean_nyz": float(nyz.mean()), "mean_nz": float(nz.mean())}
        else:
            if self.variant == 1 and not use_torch and xa.shape[1] == 1 and ya.shape[1] == 1 and nbk.available():
                # fused numba path for 1-D pairs: one sort per variable, grid k-NN, galloping counts
                _, cx, cy = nbk.ksg_pair_counts(xa[:, 0], ya[:, 0], k)
                nx, ny = np.maximum(cx - 1.0, 0.0), np.maximum(cy - 1.0, 0.0)
                mi = digamma(n) + digamma(k) - np.mean(digamma(nx + 1)) - np.mean(digamma(ny + 1))
                if self.clip:
                    mi = max(0.0, float(mi))
                return float(mi), n, {"mean_nx": float(np.mean(nx)), "mean_ny": float(np.mean(ny))}
            joint = np.hstack([xa, ya])
            eps, idx = self._knn(joint, use_torch, device)
            if self.variant == 1:
                nx = np.maximum(self._count(xa, eps, use_torch, device) - 1.0, 0.0)
                ny = np.maximum(self._count(ya, eps, use_torch, device) - 1.0, 0.0)
                mi = digamma(n) + digamma(k) - np.mean(digamma(nx + 1)) - np.mean(digamma(ny + 1))
            else:
                ex = np.abs(xa[idx] - xa[:, None, :]).max(axis=(1, 2))
                ey = np.abs(ya[idx] - ya[:, None, :]).max(axis=(1, 2))
                # non-strict counts: d <= e  <=>  d < nextafter(e, +inf)
                nx = np.maximum(self._count(xa, np.nextafter(ex, np.inf), use_torch, device) - 1.0, 1.0)
                ny = np.maximum(self._count(ya, np.nextafter(ey, np.inf), use_torch, device) - 1.0, 1.0)
                mi = digamma(k) - 1.0 / k + digamma(n) - np.mean(digamma(nx) + digamma(ny))
            details = {"mean_nx": float(np.mean(nx)), "mean_ny": float(np.mean(ny))}
        if self.clip:
            mi = max(0.0, float(mi))
        return float(mi), n, details

    def _mixed(
        self, xt: torch.Tensor, yt: torch.Tensor, rng: np.random.RandomState, use_torch: bool, device: torch.device
    ) -> tuple[float, int, dict[str, Any]]:
        """Ross (2014): I(X;Y) for continuous x and discrete labels y."""
        labels = torch.unique(yt, dim=0, return_inverse=True)[1].cpu().numpy()
        xa = _prepare(xt, self.standardize, self.noise, rng)
        n = xa.shape[0]
        radius = np.zeros(n)
        k_all = np.zeros(n)
        label_counts = np.zeros(n)
        for lab in np.unique(labels):  # loop over classes, not samples
            mask = labels == lab
            cnt = int(mask.sum())
            label_counts[mask] = cnt
            if cnt > 1:
                kk = min(self.k, cnt - 1)
                sub = xa[mask]
                if use_torch:
                    e, _ = nb.knn_chebyshev_torch(torch.as_tensor(sub, device=device), kk)
                    e = e.cpu().numpy()
                else:
                    e, _ = nb.knn_chebyshev(sub, kk, workers=self.workers)
                radius[mask] = e
                k_all[mask] = kk
        keep = label_counts > 1
        if keep.sum() <= 1:
            raise ValueError("every class has a single sample; the continuous-discrete estimator needs repeats")
        xa, radius, k_all, label_counts = xa[keep], radius[keep], k_all[keep], label_counts[keep]
        m = self._count(xa, radius, use_torch, device)
        m = np.maximum(m, 1)
        nk = xa.shape[0]
        mi = digamma(nk) + np.mean(digamma(k_all)) - np.mean(digamma(label_counts)) - np.mean(digamma(m))
        if self.clip:
            mi = max(0.0, float(mi))
        return float(mi), n, {"estimator": "Ross continuous-discrete", "mean_m": float(m.mean())}
