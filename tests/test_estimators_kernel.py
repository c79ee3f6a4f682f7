"""Kernel estimators (CS divergence, CS-QMI, conditional CS, matrix Rényi) against direct
numerical evaluation on small Gaussian cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bottlenecks.estimators import (
    KernelCSQMI,
    MatrixRenyiMI,
    bandwidth,
    conditional_cs_divergence,
    cs_divergence,
    cs_qmi,
    gaussian_gram,
)
from bottlenecks.estimators.bench import CASES, kernel_target
from bottlenecks.estimators.kernel import kernel_sums


def _smoothed_overlap(m1: float, s1: float, m2: float, s2: float, sigma: float) -> float:
    """E k(a - b) for a ~ N(m1, s1^2), b ~ N(m2, s2^2), k(d) = exp(-d^2 / (2 sigma^2)):
    the overlap of the two Gaussians convolved with the kernel."""
    v = s1**2 + s2**2 + sigma**2
    return sigma / math.sqrt(v) * math.exp(-((m1 - m2) ** 2) / (2 * v))


@pytest.mark.parametrize("m2,s2,sigma", [(1.0, 0.5, 0.5), (0.0, 2.0, 0.3), (2.5, 1.0, 1.0)])
def test_cs_divergence_matches_closed_form_for_1d_gaussians(m2, s2, sigma):
    true = (
        math.log(_smoothed_overlap(0, 1, 0, 1, sigma))
        + math.log(_smoothed_overlap(m2, s2, m2, s2, sigma))
        - 2 * math.log(_smoothed_overlap(0, 1, m2, s2, sigma))
    )
    vals = []
    for seed in range(4):  # the single-draw sd is ~0.02 at n = 2000; average four draws
        g = torch.Generator().manual_seed(seed)
        p = torch.randn(2000, 1, generator=g, dtype=torch.float64)
        q = m2 + s2 * torch.randn(2000, 1, generator=g, dtype=torch.float64)
        vals.append(float(cs_divergence(p, q, sigma)))
    assert np.mean(vals) == pytest.approx(true, abs=0.025 + 0.03 * true)
    assert float(cs_divergence(p, p, sigma)) == pytest.approx(0.0, abs=1e-12)


def _n2(x: np.ndarray, y: np.ndarray, S: np.ndarray) -> np.ndarray:
    det = S[0, 0] * S[1, 1] - S[0, 1] ** 2
    q = (S[1, 1] * x * x - 2 * S[0, 1] * x * y + S[0, 0] * y * y) / det
    return np.exp(-0.5 * q) / (2 * np.pi * math.sqrt(det))


def _conditional_cs_population(a, s1, b, s2, sx, sy) -> float:
    """D_CS(p(y|x) || q(y|x)) of the kernel-smoothed densities by 2-D quadrature.

    p: x ~ N(0,1), y = a x + s1 e;  q: same x, y = b x + s2 e. With f = p_x * k and
    g_p = p_xy * (k l), the estimator's terms converge to E_p[g_p / f^2], E_q[g_q / f^2],
    E_p[g_q / f^2], E_q[g_p / f^2].
    """
    Sp = np.array([[1, a], [a, a * a + s1 * s1]])
    Sq = np.array([[1, b], [b, b * b + s2 * s2]])
    D = np.diag([sx**2, sy**2])
    xs, ys = np.linspace(-8, 8, 801), np.linspace(-12, 12, 1201)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    dA = (xs[1] - xs[0]) * (ys[1] - ys[0])
    f = sx / math.sqrt(1 + sx**2) * np.exp(-(X**2) / (2 * (1 + sx**2)))
    c = 2 * np.pi * sx * sy
    gp, gq = c * _n2(X, Y, Sp + D), c * _n2(X, Y, Sq + D)
    p, q = _n2(X, Y, Sp), _n2(X, Y, Sq)
    T = lambda w, g: float((w * g / f**2).sum() * dA)  # noqa: E731
    return math.log(T(p, gp)) + math.log(T(q, gq)) - math.log(T(p, gq)) - math.log(T(q, gp))


def test_conditional_cs_divergence_matches_numerical_integration():
    a, s1, b, s2, sx, sy = 1.0, 0.5, 0.6, 0.5, 1.0, 0.5
    true = _conditional_cs_population(a, s1, b, s2, sx, sy)
    vals = []
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(2000, 1, generator=g, dtype=torch.float64)
        y = a * x + s1 * torch.randn(2000, 1, generator=g, dtype=torch.float64)
        y_hat = b * x + s2 * torch.randn(2000, 1, generator=g, dtype=torch.float64)
        vals.append(float(conditional_cs_divergence(x, y, y_hat, sx, sy)))
    assert true == pytest.approx(0.111, abs=0.005)
    assert np.mean(vals) == pytest.approx(true, abs=0.02)
    # identical conditionals: exactly zero for the same samples, ~0 for fresh ones
    assert float(conditional_cs_divergence(x, y, y, sx, sy)) == pytest.approx(0.0, abs=1e-12)
    y_same = a * x + s1 * torch.randn(2000, 1, generator=g, dtype=torch.float64)
    assert abs(float(conditional_cs_divergence(x, y, y_same, sx, sy))) < 0.03


@pytest.mark.parametrize("name,sigma", [("gauss-1+1-r0.6", 0.5), ("gauss-2+2-dense", 0.8)])
def test_cs_qmi_and_renyi2_converge_to_exact_gaussian_values(name, sigma):
    case = CASES[name]
    cs, r2 = [], []
    for seed in range(3):
        x, y = case.sample(3000, seed)
        cs.append(KernelCSQMI(sigma_x=sigma, sigma_y=sigma, standardize=False).estimate(x, y).value)
        r2.append(MatrixRenyiMI(alpha=2.0, sigma_x=sigma, sigma_y=sigma, standardize=False).estimate(x, y).value)
    t_cs = kernel_target(case, "cs_qmi", sigma, sigma)
    t_r2 = kernel_target(case, "renyi2", sigma, sigma)
    assert np.mean(cs) == pytest.approx(t_cs, abs=0.01 + 0.05 * t_cs)
    assert np.mean(r2) == pytest.approx(t_r2, abs=0.01 + 0.05 * t_r2)


def test_kernel_target_closed_form_agrees_with_monte_carlo():
    case = CASES["gauss-2+2-dense"]
    for kind in ("cs_qmi", "renyi2"):
        exact = kernel_target(case, kind, 1.0, 1.0, method="exact")
        mc = kernel_target(case, kind, 1.0, 1.0, method="mc", n_mc=400_000)
        assert mc == pytest.approx(exact, abs=0.01)


def test_chunked_sums_equal_dense_and_differentiable_cs_qmi():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    y = x[:, :2] + torch.randn(300, 2, generator=g, dtype=torch.float64)
    K, L = gaussian_gram(x, None, 0.7), gaussian_gram(y, None, 0.9)
    s = kernel_sums(x, y, 0.7, 0.9, max_bytes=20_000)  # a few rows per chunk
    assert s["sum_KL"] == pytest.approx(float((K * L).sum()), rel=1e-10)
    assert s["sum_rowprod"] == pytest.approx(float((K.sum(1) * L.sum(1)).sum()), rel=1e-10)
    assert s["sum_K2L2"] == pytest.approx(float(((K * L) ** 2).sum()), rel=1e-10)
    est = KernelCSQMI(sigma_x=0.7, sigma_y=0.9, standardize=False, max_bytes=20_000).estimate(x, y).value
    xr = x.clone().requires_grad_(True)
    val = cs_qmi(xr, y, 0.7, 0.9)
    assert float(val.detach()) == pytest.approx(est, rel=1e-9)
    val.backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_matrix_renyi_paths_agree_and_limits():
    case = CASES["gauss-1+1-r0.9"]
    x, y = case.sample(600, 0)
    chunked = MatrixRenyiMI(alpha=2.0).estimate(x, y).value
    eig = MatrixRenyiMI(alpha=2.0 + 1e-9).estimate(x, y).value
    assert chunked == pytest.approx(eig, abs=1e-5)
    # alpha -> 1 (von Neumann): much larger for dependent than for independent data (the
    # estimator is biased upward at small N, so "independent" is not exactly 0)
    dep = MatrixRenyiMI(alpha=1.0).estimate(x, y).value
    rng = np.random.default_rng(0)
    ind = MatrixRenyiMI(alpha=1.0).estimate(rng.standard_normal(600), rng.standard_normal(600)).value
    assert 0 <= ind < 0.3 * dep
    with pytest.raises(ValueError, match="max_samples"):
        MatrixRenyiMI(alpha=1.01, max_samples=100).estimate(x, y)
    # discrete y uses the label kernel: I(X;Y) for labels = sign of x is positive
    assert MatrixRenyiMI().estimate(x, (x[:, 0] > 0).long()).value > 0.1
    assert KernelCSQMI().estimate(x, (x[:, 0] > 0).long()).value > 0.05


def test_bandwidth_rules():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    s = float(x.std(0).mean())
    assert bandwidth(x, "silverman") == pytest.approx(s * (4 / 4) ** (1 / 6) * 1000 ** (-1 / 6))
    assert bandwidth(x, "scott") == pytest.approx(s * 1000 ** (-1 / 6))
    # |x - x'|^2 = 2 chi2_2 has median 4 ln 2, and sigma = sqrt(median / 2)
    assert bandwidth(x, "median") == pytest.approx(math.sqrt(2 * math.log(2)), rel=0.1)
    assert bandwidth(x, 0.25) == 0.25
    with pytest.raises(ValueError, match="bandwidth rule"):
        bandwidth(x, "magic")
    with pytest.raises(ValueError, match="positive"):
        bandwidth(x, -1.0)
