"""k-NN, binning, Gaussian estimators: exactness against references, invariance, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

from bottlenecks.estimators import KSG, BinningMI, GaussianMI, MIResult, confidence_interval
from bottlenecks.estimators import _neighbors as nbr
from bottlenecks.estimators import _numba_kernels as nbk
from bottlenecks.estimators.bench import CASES


def gauss_pair(n: int, rho: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)


# ------------------------------------------------------------------ KSG exactness


@pytest.mark.parametrize("n,k", [(50, 3), (700, 3), (3000, 5)])
def test_ksg_equals_sklearn_on_1d_pairs(n, k):
    x, y = gauss_pair(n, 0.7, seed=n)
    ref = mutual_info_regression(x[:, None], y, n_neighbors=k, random_state=0)[0]
    ours = KSG(k=k, seed=0).estimate(x, y).value
    assert abs(ours - ref) < 1e-9


def test_ksg_continuous_discrete_equals_sklearn_classif():
    x, y = gauss_pair(1500, 0.8, seed=3)
    labels = np.digitize(y, [-0.5, 0.5])
    ref = mutual_info_classif(x[:, None], labels, n_neighbors=3, random_state=0)[0]
    ours = KSG(k=3).estimate(x, torch.as_tensor(labels)).value
    assert abs(ours - ref) < 1e-9


@pytest.mark.parametrize("variant", [1, 2])
def test_ksg_numba_fallback_and_torch_backends_agree(variant):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 2))
    y = x @ np.array([[0.6, 0.1], [0.2, 0.5]]) + rng.standard_normal((600, 2))
    fast = KSG(variant=variant).estimate(x, y).value
    nbk.set_enabled(False)
    try:
        slow = KSG(variant=variant).estimate(x, y).value
    finally:
        nbk.set_enabled(True)
    brute = KSG(variant=variant, backend="torch").estimate(x, y).value
    assert fast == pytest.approx(slow, abs=1e-12)
    assert fast == pytest.approx(brute, abs=1e-12)


def test_neighbour_kernels_match_kdtree_with_ties():
    """Grid k-NN and the exact box counts agree with KD-trees, including tied values."""
    rng = np.random.default_rng(2)
    p = np.round(rng.standard_normal((3000, 2)), 1)  # many exact ties
    eps, idx = nbr.knn_chebyshev(p, 3)
    from scipy.spatial import cKDTree

    ref, _ = cKDTree(p).query(p, k=4, p=np.inf)
    assert np.array_equal(eps, ref[:, 3])
    # the returned neighbours really are at distance <= eps
    assert np.all(np.abs(p[idx] - p[:, None, :]).max(-1).max(1) <= eps)
    t = np.abs(rng.standard_normal(3000)) * 0.3
    ref_counts = nbr.count_kdtree(p, t)
    assert np.array_equal(nbr.count_within(p, t), ref_counts)
    assert np.array_equal(nbr.count_2d(p, t), ref_counts)  # numpy wavelet-matrix fallback
    assert np.array_equal(nbr.count_within(p[:, :1], t), nbr.count_kdtree(p[:, :1], t))


@pytest.mark.parametrize("d", [3, 5])
def test_kdtree_knn_and_box_counts_match_scipy_sklearn_in_more_dimensions(d):
    """The numba KD-tree k-NN and the bitset / dual-tree box counts (>2-D) reproduce scipy's
    cKDTree and scikit-learn's counts exactly, with ties, zero thresholds and two threads."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(d)
    p = np.round(rng.standard_normal((1500, d)), 1)  # many exact ties
    ref, _ = cKDTree(p).query(p, k=5, p=np.inf)
    for threads in (1, 2):
        eps, idx = nbk.KDTree(p, leaf_size=4).knn(4, threads=threads)
        assert np.array_equal(eps, ref[:, 4])
        assert np.all(np.abs(p[idx] - p[:, None, :]).max(-1).max(1) <= eps)
    t = np.abs(rng.standard_normal(1500)) * 0.8
    t[:20] = 0.0
    ref_counts = nbr.count_kdtree(p, t)
    assert np.array_equal(nbr.count_within(p, t), ref_counts)  # bitsets
    assert np.array_equal(nbk.count_bitset(p, t, threads=2, block=256), ref_counts)  # wider prefix stride
    assert np.array_equal(nbk.KDTree(p, leaf_size=4).count(t, threads=2), ref_counts)  # dual tree


def test_ksg_multivariate_equals_scipy_reference():
    """KSG-1 in 3+3 dimensions equals the textbook cKDTree implementation to rounding."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 3))
    y = 0.5 * x + rng.standard_normal((2000, 3))
    xy = np.hstack([x, y])
    d, _ = cKDTree(xy).query(xy, k=4, p=np.inf)
    r = np.nextafter(d[:, -1], 0)
    nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True) - 1.0
    ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True) - 1.0
    ref = digamma(2000) + digamma(3) - np.mean(digamma(nx + 1)) - np.mean(digamma(ny + 1))
    ours = KSG(k=3, standardize=False, noise=0.0).estimate(x, y).value
    assert ours == pytest.approx(ref, abs=1e-12)
    assert KSG(k=3, standardize=False, noise=0.0, workers=2).estimate(x, y).value == pytest.approx(ref, abs=1e-12)


# ------------------------------------------------------------------ KSG behaviour


@pytest.mark.parametrize("variant", [1, 2])
def test_ksg_close_to_truth_on_gaussians(variant):
    case = CASES["gauss-1+1-r0.9"]
    x, y = case.sample(4000, 0)
    assert KSG(variant=variant).estimate(x, y).value == pytest.approx(case.mi, abs=0.05)


def test_ksg_invariant_under_invertible_transform():
    x, y = gauss_pair(4000, 0.8, seed=5)
    base = KSG(k=5).estimate(x, y).value
    warped = KSG(k=5).estimate(np.sinh(x), np.tanh(0.5 * y) + 0.1 * y).value
    assert abs(warped - base) < 0.03


def test_ksg_independent_variables_near_zero():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((3000, 2)), rng.standard_normal((3000, 2))
    assert abs(KSG().estimate(x, y).value) < 0.03


def test_conditional_ksg():
    # x and y both depend on z only: I(X;Y) > 0 but I(X;Y|Z) = 0
    rng = np.random.default_rng(7)
    z = rng.standard_normal(3000)
    x = z + 0.5 * rng.standard_normal(3000)
    y = z + 0.5 * rng.standard_normal(3000)
    est = KSG(k=5)
    assert est.estimate(x, y).value > 0.5
    assert abs(est.estimate(x, y, z).value) < 0.04
    # y2 = x + z + noise: given z, Var(x)=0.25, Var(y2)=0.5, Cov=0.25 -> I(X;Y|Z) = 1/2 log 2
    y2 = x + z + 0.5 * rng.standard_normal(3000)
    true = 0.5 * math.log(2.0)
    assert est.estimate(x, y2, z).value == pytest.approx(true, abs=0.05)
    assert GaussianMI().estimate(x, y2, z).value == pytest.approx(true, abs=0.05)


def test_units_and_result_object():
    x, y = gauss_pair(2000, 0.6)
    nats = KSG().estimate(x, y)
    bits = KSG(units="bits").estimate(x, y)
    assert isinstance(nats, MIResult) and nats.units == "nats" and bits.units == "bits"
    assert bits.value == pytest.approx(nats.value / math.log(2))
    assert nats.to("bits").value == pytest.approx(bits.value)
    assert float(nats) == nats.value
    assert "nats" in str(nats)
    with pytest.raises(ValueError, match="units"):
        KSG(units="bans")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "x,y,match",
    [
        (np.arange(3.0), np.arange(3.0) ** 2, "more samples than neighbours"),
        (np.arange(10.0), np.arange(11.0), "same number of samples"),
        (np.array([1.0, np.nan, 2, 3, 4, 5]), np.arange(6.0), "NaN/inf"),
        (np.array([1.0, np.inf, 2, 3, 4, 5]), np.arange(6.0), "NaN/inf"),
        (np.c_[np.arange(10.0), np.ones(10)], np.arange(10.0), "constant column"),
        (np.zeros((10, 2, 2)), np.arange(10.0), "vector"),
    ],
)
def test_ksg_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        KSG(k=3).estimate(x, y)


def test_constant_columns_can_be_dropped():
    x, y = gauss_pair(500, 0.6)
    with_const = np.c_[x, np.ones(500)]
    a = KSG(constant="drop").estimate(with_const, y).value
    b = KSG().estimate(x, y).value
    assert a == pytest.approx(b, abs=0.02)
    assert KSG(constant="drop").estimate(np.ones(50), np.arange(50.0)).value == 0.0


def test_bad_parameters():
    with pytest.raises(ValueError, match="k must be"):
        KSG(k=0)
    with pytest.raises(ValueError, match="variant"):
        KSG(variant=3)
    from bottlenecks.estimators import NeuralMI

    with pytest.raises(ValueError, match="conditional"):
        NeuralMI().estimate(np.arange(20.0), np.arange(20.0), np.arange(20.0))


# ------------------------------------------------------------------ binning


def test_binning_exact_on_discrete_variables():
    rng = np.random.default_rng(8)
    a = torch.as_tensor(rng.integers(0, 4, 20000))
    b = (a + torch.as_tensor(rng.integers(0, 2, 20000))) % 4  # I = log 4 - log 2 = log 2
    r = BinningMI().estimate(a, b)
    assert r.value == pytest.approx(math.log(2), abs=0.01)
    assert BinningMI(units="bits").estimate(a, b).value == pytest.approx(1.0, abs=0.015)
    assert BinningMI().estimate(a, a).value == pytest.approx(math.log(4), abs=0.01)


def test_binning_uniform_bins_for_tanh_and_equal_mass_for_relu():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4000, 1, generator=g)
    y = (h[:, 0] > 0).long()
    # tanh: fixed bins on (-1, 1); 2 bins split exactly at 0 -> 1 bit about the sign
    r = BinningMI(n_bins=2, range=(-1.0, 1.0), units="bits").estimate(torch.tanh(h), y)
    assert r.value == pytest.approx(1.0, abs=0.01)
    # ReLU with a large outlier: uniform bins lump everything in bin 0, equal-mass bins do not
    relu = torch.relu(h)
    relu[0] = 1000.0
    uniform = BinningMI(n_bins=10).estimate(torch.arange(4000), relu).value
    adaptive = BinningMI(n_bins=10, strategy="equal_mass").estimate(torch.arange(4000), relu).value
    assert uniform < 0.8 < adaptive  # H(T) of the binned activation


def test_binning_conditional_and_miller_madow():
    rng = np.random.default_rng(9)
    z = torch.as_tensor(rng.integers(0, 3, 30000))
    x = (z + torch.as_tensor(rng.integers(0, 2, 30000))) % 3
    y = (z + torch.as_tensor(rng.integers(0, 2, 30000))) % 3
    est = BinningMI()
    assert est.estimate(x, y).value > 0.05
    assert abs(est.estimate(x, y, z).value) < 0.005
    # Miller-Madow removes most of the plug-in bias on independent variables
    a = torch.as_tensor(rng.integers(0, 10, 500))
    b = torch.as_tensor(rng.integers(0, 10, 500))
    raw = BinningMI().estimate(a, b).value
    mm = BinningMI(correction="miller_madow").estimate(a, b).value
    assert abs(mm) < raw


def test_binning_bad_parameters():
    with pytest.raises(ValueError, match="n_bins"):
        BinningMI(n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        BinningMI(strategy="kmeans")
    with pytest.raises(ValueError, match="range"):
        BinningMI(range=(1.0, -1.0))
    with pytest.raises(ValueError, match="same number of samples"):
        BinningMI().estimate(np.arange(10), np.arange(12))


# ------------------------------------------------------------------ Gaussian + CI


def test_gaussian_estimator_exact_for_gaussians():
    case = CASES["gauss-5+5-dense"]
    x, y = case.sample(20000, 1)
    assert GaussianMI().estimate(x, y).value == pytest.approx(case.mi, abs=0.02)
    with pytest.raises(ValueError, match="more samples than dimensions"):
        GaussianMI().estimate(x[:5], y[:5])


@pytest.mark.parametrize("method", ["subsample", "bootstrap"])
def test_confidence_interval_covers_truth(method):
    case = CASES["gauss-1+1-r0.6"]
    x, y = case.sample(3000, 2)
    est = KSG() if method == "subsample" else GaussianMI()
    r = confidence_interval(est, x, y, method=method, n_resamples=30, seed=0)
    assert r.ci_low < r.value < r.ci_high
    assert r.ci_low < case.mi < r.ci_high
    assert 0.005 < r.ci_high - r.ci_low < 0.2
    with pytest.raises(ValueError, match="level"):
        confidence_interval(est, x, y, level=1.5)
