"""Kernel (Gram-matrix) information measures: Cauchy–Schwarz divergence and quadratic MI,
the conditional CS divergence, and matrix-based Rényi entropy / MI.

All quantities are functions of Gaussian Gram matrices ``K_ij = exp(-|x_i - x_j|^2 / (2 s^2))``.
Two families:

* **Cauchy–Schwarz (CS)** — ``D_CS(p||q) = -log( (∫pq)^2 / (∫p^2 ∫q^2) )`` with Parzen
  densities. Sample estimators (Principe 2010; Yu et al. 2023, 2024)::

      D_CS(p||q)   = log mean(K_pp) + log mean(K_qq) - 2 log mean(K_pq)
      I_CS(X;Y)    = log(V_J) + log(V_M) - 2 log(V_C),
         V_J = 1/N^2 sum_ij K_ij L_ij,  V_M = (1/N^2 sum K)(1/N^2 sum L),
         V_C = 1/N^3 sum_i (sum_j K_ij)(sum_j L_ij)

  ``I_CS`` is the CS divergence between ``p(x,y)`` and ``p(x)p(y)``: zero iff independent
  (for characteristic kernels), but *not* Shannon MI — its value depends on the bandwidth.
  As ``N`` grows the estimator converges to the same expression evaluated on the densities
  smoothed by the kernel (``p * G``), which is what the tests and the bench compare against.

* **Matrix-based Rényi alpha-entropy** (Sanchez Giraldo, Rao & Principe 2015): with
  ``A = K / tr(K)``, ``S_a(A) = 1/(1-a) log sum_i lambda_i(A)^a``; joint entropy from the
  normalised Hadamard product ``A∘B / tr(A∘B)``; ``I_a = S_a(A) + S_a(B) - S_a(A∘B)``.
  ``alpha=2`` needs no eigendecomposition (``sum lambda^2 = ||A||_F^2``) and is computed in
  row chunks with O(chunk * N) memory; other ``alpha`` need an ``N x N`` eigendecomposition and
  are limited to ``max_samples``.

Bandwidth rules (:func:`bandwidth`), applied per variable after optional standardisation:

* ``"silverman"`` (default): ``s = mean_std * (4 / (d + 2))^(1 / (d + 4)) * N^(-1 / (d + 4))``
* ``"scott"``: ``s = mean_std * N^(-1 / (d + 4))``
* ``"median"``: ``s = sqrt(median_{i<j} |x_i - x_j|^2 / 2)`` on at most 1000 rows
* ``"output"``: ``s = 2 * mean_std`` — the width of a kernel that compares predictions with
  targets (CS-IB's prediction term): residuals up to two standard deviations of the target
  stay in the kernel's near-quadratic range, so the term behaves like a squared error there
  instead of ignoring large residuals as a density-estimation width (Silverman, ~0.5 sd on a
  batch of 64) does
* a positive float: that value.

Units: natural logarithms (nats); the estimator classes convert with ``units="bits"``.
Regime: smooth, low-variance, differentiable (usable as training losses), consistent for
their *own* targets; slow (O(N^2) time). Good for comparing layers or training runs with a
fixed bandwidth, not for absolute Shannon-MI values.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bottlenecks.estimators._base import (
    ArrayLike,
    MIEstimator,
    Units,
    as_2d,
    check_lengths,
    handle_constant,
    is_discrete,
)

BandwidthRule = Literal["silverman", "scott", "median", "output"]


def bandwidth(x: Tensor, rule: BandwidthRule | float = "silverman", seed: int = 0) -> float:
    """Gaussian-kernel width for samples ``x`` of shape ``(n, d)`` by ``rule`` (see module doc).

    Returns a Python float (never carries gradient).
    """
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not rule > 0:
            raise ValueError(f"a fixed bandwidth must be positive, got {rule}")
        return float(rule)
    x = x.detach()
    if x.dim() == 1:
        x = x.unsqueeze(1)
    n, d = x.shape
    if rule in ("silverman", "scott", "output"):
        s = float(x.double().std(0, unbiased=n > 1).mean()) if n > 1 else 1.0
        s = s if s > 0 else 1.0
        if rule == "output":
            return 2.0 * s
        factor = (4.0 / (d + 2.0)) ** (1.0 / (d + 4.0)) if rule == "silverman" else 1.0
        return s * factor * n ** (-1.0 / (d + 4.0))
    if rule == "median":
        m = min(n, 1000)
        g = torch.Generator().manual_seed(seed)
        sub = x[torch.randperm(n, generator=g)[:m].to(x.device)].double()
        d2 = torch.cdist(sub, sub).pow(2)
        iu = torch.triu_indices(m, m, 1, device=x.device)
        med = float(d2[iu[0], iu[1]].median()) if m > 1 else 1.0
        return math.sqrt(med / 2.0) if med > 0 else 1.0
    raise ValueError(f"bandwidth rule must be 'silverman', 'scott', 'median', 'output' or a positive float, got {rule!r}")


def gaussian_gram(a: Tensor, b: Tensor | None = None, sigma: float = 1.0) -> Tensor:
    """``(n, m)`` Gram matrix ``exp(-|a_i - b_j|^2 / (2 sigma^2))``; ``a`` is ``(n, d)``, ``b`` ``(m, d)``."""
    b = a if b is None else b
    d2 = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T).clamp_min(0.0)
    return torch.exp(-d2 / (2.0 * sigma * sigma))


def delta_gram(a: Tensor, b: Tensor | None = None) -> Tensor:
    """``(n, m)`` Gram matrix of a discrete variable: 1 where the labels (rows) agree."""
    b = a if b is None else b
    a2 = a.reshape(a.shape[0], -1)
    b2 = b.reshape(b.shape[0], -1)
    return (a2[:, None, :] == b2[None, :, :]).all(-1).to(torch.get_default_dtype() if not a.is_floating_point() else a.dtype)


# ----------------------------------------------------------------------- CS measures (differentiable)


def cs_divergence(p: Tensor, q: Tensor, sigma: float) -> Tensor:
    """Cauchy–Schwarz divergence between samples ``p`` ``(n, d)`` and ``q`` ``(m, d)`` (nats, >= 0).

    ``log mean K_pp + log mean K_qq - 2 log mean K_pq`` with a Gaussian kernel of width
    ``sigma``; converges to ``D_CS(p * G_s || q * G_s)`` (densities smoothed by the kernel).
    """
    p = p.reshape(p.shape[0], -1)
    q = q.reshape(q.shape[0], -1)
    kpp = gaussian_gram(p, None, sigma).mean()
    kqq = gaussian_gram(q, None, sigma).mean()
    kpq = gaussian_gram(p, q, sigma).mean()
    return torch.log(kpp) + torch.log(kqq) - 2.0 * torch.log(kpq)


def cs_qmi(x: Tensor, y: Tensor, sigma_x: float, sigma_y: float | None = None, discrete_y: bool = False) -> Tensor:
    """Cauchy–Schwarz quadratic mutual information ``I_CS(X;Y)`` (nats), differentiable.

    Args:
        x: ``(n, d_x)`` samples; y: ``(n, d_y)`` samples (or ``(n,)`` labels with ``discrete_y``).
        sigma_x, sigma_y: kernel widths.
    """
    x = x.reshape(x.shape[0], -1)
    n = x.shape[0]
    K = gaussian_gram(x, None, sigma_x)
    L = delta_gram(y).to(K.dtype) if discrete_y else gaussian_gram(y.reshape(n, -1), None, sigma_y or sigma_x)
    vj = (K * L).mean()
    vm = K.mean() * L.mean()
    vc = (K.mean(1) * L.mean(1)).mean()
    return torch.log(vj) + torch.log(vm) - 2.0 * torch.log(vc)


def conditional_cs_divergence(
    x: Tensor, y: Tensor, y_hat: Tensor, sigma_x: float, sigma_y: float, symmetric: bool = True
) -> Tensor:
    """``D_CS(p(y|x) || q(y_hat|x))`` from paired samples sharing the same ``x`` (nats), differentiable.

    With ``K`` the Gram matrix of ``x``, ``L`` of ``y``, ``M`` of ``y_hat`` and ``C_ij = k(y_i, y_hat_j)``,
    Parzen plug-in of ``∫∫ p(y|x)^2``, ``∫∫ q(y|x)^2`` and ``∫∫ p(y|x) q(y|x)`` (the shared
    kernel normalisation constants cancel)::

        D = log sum_j (sum_i K_ji L_ji)/(sum_i K_ji)^2 + log sum_j (sum_i K_ji M_ji)/(sum_i K_ji)^2
            - 2 log sum_j (sum_i K_ji C_ji)/(sum_i K_ji)^2

    The cross term is an expectation under ``p``; with ``symmetric=True`` it is averaged (in
    log space) with the same expectation under ``q`` (``C`` transposed), which makes the
    estimate symmetric in ``y`` and ``y_hat``.

    Args:
        x: ``(n, d_x)``; y, y_hat: ``(n, d_y)`` or ``(n,)``.
        sigma_x, sigma_y: kernel widths for x and for the outputs.
    """
    n = x.shape[0]
    x = x.reshape(n, -1)
    y = y.reshape(n, -1)
    y_hat = y_hat.reshape(n, -1)
    K = gaussian_gram(x, None, sigma_x)
    L = gaussian_gram(y, None, sigma_y)
    M = gaussian_gram(y_hat, None, sigma_y)
    C = gaussian_gram(y, y_hat, sigma_y)  # C[i, j] = k(y_i - y_hat_j)
    denom = K.sum(1).pow(2)  # (sum_i K_ji)^2 for each j (K symmetric)
    t_p = ((K * L).sum(1) / denom).sum()
    t_q = ((K * M).sum(1) / denom).sum()
    # expectation under p: for each anchor j (a sample of p), sum_i K_ji k(y_j - y_hat_i) = (K * C).sum(1)
    cross_p = ((K * C).sum(1) / denom).sum()
    if symmetric:
        cross_q = ((K * C.T).sum(1) / denom).sum()
        cross_log = 0.5 * (torch.log(cross_p) + torch.log(cross_q))
    else:
        cross_log = torch.log(cross_p)
    return torch.log(t_p) + torch.log(t_q) - 2.0 * cross_log


# ----------------------------------------------------------------------- chunked sums (estimators)


def _auto_chunk(n: int, max_bytes: int, n_mats: int = 6) -> int:
    return int(max(1, min(n, max_bytes // max(1, n * 8 * n_mats))))


def kernel_sums(
    x: Tensor,
    y: Tensor,
    sigma_x: float,
    sigma_y: float,
    discrete_y: bool = False,
    max_bytes: int = 64 * 2**20,
) -> dict[str, float]:
    """Row-chunked sums of Gram products, never holding an ``n x n`` matrix.

    Returns ``sum_KL, sum_K, sum_L, sum_rowprod (= sum_i rowK_i rowL_i), sum_K2, sum_L2,
    sum_K2L2`` as floats (float64 accumulation); peak extra memory about ``max_bytes``.
    """
    n = x.shape[0]
    chunk = _auto_chunk(n, max_bytes)
    x = x.double()
    y = y if discrete_y else y.double()
    sq_x = x.pow(2).sum(1)
    sq_y = None if discrete_y else y.pow(2).sum(1)
    acc = dict.fromkeys(["sum_KL", "sum_K", "sum_L", "sum_rowprod", "sum_K2", "sum_L2", "sum_K2L2"], 0.0)

    def gram_rows(a: Tensor, sq: Tensor, s: int, sigma: float) -> Tensor:
        # exp(-(|a_i|^2 + |a_j|^2 - 2 a_i.a_j) / (2 sigma^2)), built in place in one (chunk, n) buffer
        g = torch.addmm(sq[s : s + chunk, None] + sq[None, :], a[s : s + chunk], a.T, alpha=-2.0)
        return g.clamp_min_(0.0).mul_(-0.5 / (sigma * sigma)).exp_()

    with torch.no_grad():
        for s in range(0, n, chunk):
            K = gram_rows(x, sq_x, s, sigma_x)
            L = delta_gram(y[s : s + chunk], y).double() if discrete_y else gram_rows(y, sq_y, s, sigma_y)
            rk, rl = K.sum(1), L.sum(1)
            acc["sum_K"] += float(rk.sum())
            acc["sum_L"] += float(rl.sum())
            acc["sum_rowprod"] += float((rk * rl).sum())
            acc["sum_K2"] += float(torch.linalg.vector_norm(K) ** 2)
            acc["sum_L2"] += float(torch.linalg.vector_norm(L) ** 2)
            K.mul_(L)  # K now holds K∘L
            del L
            acc["sum_KL"] += float(K.sum())
            acc["sum_K2L2"] += float(torch.linalg.vector_norm(K) ** 2)
            del K
    return acc


def _prep(t: Tensor, standardize: bool) -> Tensor:
    if standardize:
        t = (t - t.mean(0)) / t.std(0, unbiased=False)
    return t


class KernelCSQMI(MIEstimator):
    """Cauchy–Schwarz quadratic MI ``I_CS(X;Y)`` from Gram matrices (see module docstring).

    Not Shannon MI: it depends on the kernel widths; compare values computed with the same
    bandwidth rule. Memory is bounded by row chunking (``max_bytes``), so ``N = 20000`` runs
    in tens of MB.

    Args:
        sigma_x, sigma_y: a bandwidth rule (``"silverman"``, ``"scott"``, ``"median"``) or a float.
        standardize: z-score every column before the kernel (recommended).
        discrete_y: ``"auto"`` uses a label kernel (1 where labels agree) for integer ``y``.
        max_bytes: memory budget of one row chunk.
        constant: ``"raise"`` or ``"drop"`` constant columns.
        units: ``"nats"`` or ``"bits"``.
    """

    supports_conditional = False
    resampling = "bootstrap"

    def __init__(
        self,
        sigma_x: BandwidthRule | float = "silverman",
        sigma_y: BandwidthRule | float = "silverman",
        standardize: bool = True,
        discrete_y: bool | Literal["auto"] = "auto",
        max_bytes: int = 64 * 2**20,
        constant: Literal["raise", "drop"] = "raise",
        units: Units = "nats",
    ) -> None:
        super().__init__(units)
        self.sigma_x = sigma_x
        self.sigma_y = sigma_y
        self.standardize = standardize
        self.discrete_y = discrete_y
        self.max_bytes = int(max_bytes)
        self.constant = constant

    def describe(self) -> str:
        return f"CS-QMI({self.sigma_x})"

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        y_raw = y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
        disc = is_discrete(y_raw) if self.discrete_y == "auto" else bool(self.discrete_y)
        xt = handle_constant(as_2d(x, "x"), "x", self.constant)
        yt = (y_raw.reshape(y_raw.shape[0], -1).long() if disc else handle_constant(as_2d(y_raw, "y"), "y", self.constant))
        n = check_lengths(x=xt, y=yt)
        if n < 2:
            raise ValueError(f"kernel estimators need at least 2 samples, got {n}")
        xt = _prep(xt, self.standardize)
        sx = bandwidth(xt, self.sigma_x)
        if disc:
            sy = float("nan")
        else:
            yt = _prep(yt, self.standardize)
            sy = bandwidth(yt, self.sigma_y)
        s = kernel_sums(xt, yt, sx, sy, disc, self.max_bytes)
        vj = s["sum_KL"] / n**2
        vm = (s["sum_K"] / n**2) * (s["sum_L"] / n**2)
        vc = s["sum_rowprod"] / n**3
        value = math.log(vj) + math.log(vm) - 2.0 * math.log(vc)
        return value, n, {"sigma_x": sx, "sigma_y": sy, "V_J": vj, "V_M": vm, "V_C": vc}


class MatrixRenyiMI(MIEstimator):
    """Matrix-based Rényi alpha-order MI (Sanchez Giraldo et al. 2015; Yu et al. 2019).

    ``I_a(X;Y) = S_a(A) + S_a(B) - S_a(A∘B / tr(A∘B))`` with ``A = K_x / N``, ``B = K_y / N``.
    ``I(X;Y|Z) = S(A∘C) + S(B∘C) - S(A∘B∘C) - S(C)`` (each product trace-normalised).

    Args:
        alpha: Rényi order (> 0, != 1 handled as the limit von Neumann entropy when 1).
            ``alpha=2`` is computed by chunked sums in O(N) memory; other orders use an
            eigendecomposition and refuse ``N > max_samples``.
        sigma_x, sigma_y, sigma_z: bandwidth rules or floats.
        standardize: z-score columns first.
        max_samples: the largest N for the eigendecomposition path.
        max_bytes: chunk budget for ``alpha=2``.
        units: ``"nats"`` or ``"bits"``.

    Not Shannon MI; its scale depends on alpha and the bandwidths. Low variance, useful to
    compare layers (Yu et al. use it for information planes of CNNs).
    """

    supports_conditional = True
    resampling = "bootstrap"

    def __init__(
        self,
        alpha: float = 2.0,
        sigma_x: BandwidthRule | float = "silverman",
        sigma_y: BandwidthRule | float = "silverman",
        sigma_z: BandwidthRule | float = "silverman",
        standardize: bool = True,
        discrete_y: bool | Literal["auto"] = "auto",
        max_samples: int = 4000,
        max_bytes: int = 64 * 2**20,
        constant: Literal["raise", "drop"] = "raise",
        units: Units = "nats",
    ) -> None:
        super().__init__(units)
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        self.sigma_x = sigma_x
        self.sigma_y = sigma_y
        self.sigma_z = sigma_z
        self.standardize = standardize
        self.discrete_y = discrete_y
        self.max_samples = int(max_samples)
        self.max_bytes = int(max_bytes)
        self.constant = constant

    def describe(self) -> str:
        return f"Renyi-matrix(a={self.alpha:g})"

    def _entropy(self, A: Tensor) -> float:
        A = A / torch.trace(A)
        lam = torch.linalg.eigvalsh(A).clamp_min(0.0)
        if abs(self.alpha - 1.0) < 1e-12:
            lam = lam[lam > 0]
            return float(-(lam * lam.log()).sum())
        return float(torch.log(lam.pow(self.alpha).sum()) / (1.0 - self.alpha))

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        y_raw = y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
        disc = is_discrete(y_raw) if self.discrete_y == "auto" else bool(self.discrete_y)
        xt = _prep(handle_constant(as_2d(x, "x"), "x", self.constant), self.standardize)
        yt = (y_raw.reshape(y_raw.shape[0], -1).long() if disc else
              _prep(handle_constant(as_2d(y_raw, "y"), "y", self.constant), self.standardize))
        zt = None if z is None else _prep(handle_constant(as_2d(z, "z"), "z", self.constant), self.standardize)
        n = check_lengths(x=xt, y=yt, z=zt)
        if n < 2:
            raise ValueError(f"kernel estimators need at least 2 samples, got {n}")
        sx = bandwidth(xt, self.sigma_x)
        sy = float("nan") if disc else bandwidth(yt, self.sigma_y)
        details: dict[str, Any] = {"sigma_x": sx, "sigma_y": sy}
        if zt is None and self.alpha == 2.0:
            s = kernel_sums(xt, yt, sx, sy, disc, self.max_bytes)
            # S_2(A) = -log sum_ij A_ij^2 with A = K / n; joint: (K∘L)/n (diag of K∘L is 1)
            h_x = -math.log(s["sum_K2"] / n**2)
            h_y = -math.log(s["sum_L2"] / n**2)
            h_xy = -math.log(s["sum_K2L2"] / n**2)
            details.update(S_x=h_x, S_y=h_y, S_xy=h_xy)
            return h_x + h_y - h_xy, n, details
        if n > self.max_samples:
            raise ValueError(
                f"matrix-based Rényi entropy with alpha={self.alpha:g} needs an N x N eigendecomposition; "
                f"N={n} exceeds max_samples={self.max_samples}. Use alpha=2 (chunked, O(N) memory), "
                "subsample, or raise max_samples"
            )
        A = gaussian_gram(xt.double(), None, sx)
        B = delta_gram(yt).double() if disc else gaussian_gram(yt.double(), None, sy)
        if zt is None:
            value = self._entropy(A) + self._entropy(B) - self._entropy(A * B)
        else:
            sz = bandwidth(zt, self.sigma_z)
            C = gaussian_gram(zt.double(), None, sz)
            details["sigma_z"] = sz
            value = self._entropy(A * C) + self._entropy(B * C) - self._entropy(A * B * C) - self._entropy(C)
        return value, n, details
