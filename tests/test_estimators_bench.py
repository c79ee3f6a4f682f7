"""The bench of known-MI distributions, and every estimator's tolerance on its easy cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from bottlenecks.estimators import (
    KSG,
    BinningMI,
    GaussianMI,
    KernelCSQMI,
    MatrixRenyiMI,
    NeuralMI,
    NoisyCompressedMI,
)
from bottlenecks.estimators.bench import CASES, format_table, kernel_target, run_bench, student_t_correction

EASY = [name for name, case in CASES.items() if case.easy]

# estimator -> (factory, tolerance in nats on each easy case). Tolerances are the stated
# accuracy of each estimator on low-dimensional Gaussians at n = 3000 (docs/information.md).
ESTIMATORS = {
    "KSG-1": (lambda: KSG(k=3, variant=1), 0.05),
    "KSG-2": (lambda: KSG(k=3, variant=2), 0.05),
    "Gaussian": (lambda: GaussianMI(), 0.04),
    "Noisy+PCA": (lambda: NoisyCompressedMI(noise_std=0.05, noise_on="both"), 0.08),
    "InfoNCE": (lambda: NeuralMI(bound="infonce", steps=600), 0.15),
    "NWJ": (lambda: NeuralMI(bound="nwj", steps=600), 0.15),
    "MINE": (lambda: NeuralMI(bound="mine", steps=600), 0.15),
}


def test_easy_cases_are_the_low_dimensional_gaussians():
    assert EASY == ["gauss-1+1-r0.6", "gauss-1+1-r0.9", "gauss-2+2-dense"]
    assert CASES["gauss-1+1-r0.6"].mi == pytest.approx(-0.5 * np.log(1 - 0.36))
    # the dense cross-correlation has the stated singular values and the formula matches det
    case = CASES["gauss-2+2-dense"]
    assert np.linalg.svd(case.cross, compute_uv=False) == pytest.approx([0.8, 0.5])
    S = case.corr
    by_det = 0.5 * np.log(np.linalg.det(S[:2, :2]) * np.linalg.det(S[2:, 2:]) / np.linalg.det(S))
    assert case.mi == pytest.approx(by_det)


@pytest.mark.parametrize("name", ["student-1+1-nu3-r0.6", "student-2+2-nu5-dense"])
def test_student_t_mi_formula_matches_monte_carlo(name):
    case = CASES[name]
    x, y = case.sample(200_000, 0)
    z = torch.cat([x, y], 1).numpy()
    dx = case.dim_x
    S = case.corr
    lj = stats.multivariate_t(loc=np.zeros(len(S)), shape=S, df=case.nu).logpdf(z)
    lx = stats.multivariate_t(loc=np.zeros(dx), shape=S[:dx, :dx], df=case.nu).logpdf(z[:, :dx])
    ly = stats.multivariate_t(loc=np.zeros(len(S) - dx), shape=S[dx:, dx:], df=case.nu).logpdf(z[:, dx:])
    assert np.mean(lj - lx - ly) == pytest.approx(case.mi, abs=0.01)
    assert student_t_correction(1e6, 1, 1) == pytest.approx(0.0, abs=1e-5)


def test_transforms_keep_the_true_mi_and_ksg_changes_little():
    plain, cubed = CASES["gauss-1+1-r0.6"], CASES["gauss-1+1-r0.6-cube"]
    assert plain.mi == cubed.mi
    x, y = plain.sample(4000, 3)
    xc, yc = cubed.sample(4000, 3)
    assert torch.allclose(xc, x**3)
    assert abs(KSG(k=5).estimate(xc, yc).value - KSG(k=5).estimate(x, y).value) < 0.05


@pytest.mark.parametrize("est_name", list(ESTIMATORS))
def test_estimator_within_tolerance_on_easy_cases(est_name):
    factory, tol = ESTIMATORS[est_name]
    est = factory()
    for name in EASY:
        case = CASES[name]
        x, y = case.sample(3000, 0)
        value = est.estimate(x, y).value
        assert value == pytest.approx(case.mi, abs=tol), f"{est_name} on {name}: {value:.3f} vs {case.mi:.3f}"


def test_binning_within_tolerance_on_easy_cases():
    # plug-in binning is coarse: 0.06 nats on 1-D pairs, 0.25 on the 2+2 case (4 bins/column)
    est = BinningMI(n_bins="auto", strategy="equal_mass", correction="miller_madow")
    for name, tol in [("gauss-1+1-r0.6", 0.06), ("gauss-1+1-r0.9", 0.06), ("gauss-2+2-dense", 0.25)]:
        case = CASES[name]
        x, y = case.sample(3000, 0)
        assert est.estimate(x, y).value == pytest.approx(case.mi, abs=tol)


def test_kernel_estimators_within_tolerance_of_their_own_targets():
    for name in EASY:
        case = CASES[name]
        x, y = case.sample(3000, 0)
        cs = KernelCSQMI(sigma_x=0.6, sigma_y=0.6).estimate(x, y).value
        r2 = MatrixRenyiMI(sigma_x=0.6, sigma_y=0.6).estimate(x, y).value
        t_cs = kernel_target(case, "cs_qmi", 0.6, 0.6)
        t_r2 = kernel_target(case, "renyi2", 0.6, 0.6)
        assert cs == pytest.approx(t_cs, abs=0.02 + 0.06 * t_cs)
        assert r2 == pytest.approx(t_r2, abs=0.02 + 0.06 * t_r2)


def test_infonce_is_capped_by_log_batch():
    case = CASES["gauss-1+1-r0.9"]
    x, y = case.sample(1200, 0)
    r = NeuralMI(bound="infonce", steps=200, batch_size=32, eval_batch=8).estimate(x, y)
    assert r.value <= np.log(8) + 1e-6


def test_run_bench_and_table():
    rows = run_bench({"KSG": KSG(), "Gauss": GaussianMI()}, cases=["gauss-1+1-r0.6", "student-1+1-nu3-r0.6"], n=1000)
    assert len(rows) == 4
    text = format_table(rows)
    assert "gauss-1+1-r0.6" in text and "student-1+1-nu3-r0.6" in text and "mean |error|" in text
    # the Gaussian estimator misses the Student-t's extra (scale-sharing) dependence
    by = {(r.case, r.estimator): r for r in rows}
    assert by[("student-1+1-nu3-r0.6", "Gauss")].error < by[("student-1+1-nu3-r0.6", "KSG")].error


def test_rank_preprocessing_rescues_neural_bounds_on_heavy_tails():
    case = CASES["student-1+1-nu3-r0.6-cube"]
    x, y = case.sample(3000, 0)
    for bound in ("infonce", "mine"):
        r = NeuralMI(bound=bound, standardize="rank").estimate(x, y)
        assert r.value == pytest.approx(case.mi, abs=0.08)


def test_noisy_compressed_reduces_dimension_and_rejects_bad_input():
    # a 6-D "layer" whose information lives in its 2 high-variance directions
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3000, 2, generator=g)
    layer = torch.cat([3 * s, 0.1 * torch.randn(3000, 4, generator=g)], 1) @ torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    y = s + torch.randn(3000, 2, generator=g)
    true = 2 * 0.5 * np.log(2.0)  # two pairs with SNR 1
    r = NoisyCompressedMI(noise_std=0.1, n_components=2).estimate(y, layer)
    assert r.details["dim_x"] == 2 and r.details["dim_y"] == 2
    assert r.value == pytest.approx(true, abs=0.08)
    with pytest.raises(ValueError, match="noise_on"):
        NoisyCompressedMI(noise_on="z")
    with pytest.raises(ValueError, match="every column of x is constant"):
        NoisyCompressedMI().estimate(torch.ones(100, 3), torch.randn(100, 2))
