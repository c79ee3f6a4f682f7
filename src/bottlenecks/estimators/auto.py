"""``estimate_mi``: one entry point that runs a named estimator or chooses one from the data.

    >>> r = estimate_mi(x, y)                   # method="auto"
    >>> r.value, r.method, r.settings, r.reason
    >>> estimate_mi(x, y, method="ksg", k=5)    # a named estimator, its options as keywords

``method="auto"`` looks at the data and decides (the rules, in order):

1. **Discrete variables.** A variable is discrete when it holds integers/bools, or floats with
   at most ``sqrt(n)`` distinct rows (every symbol then has ``sqrt(n)`` samples on average,
   enough for a plug-in entropy). Both discrete: plug-in MI of the symbols with the
   Miller–Madow correction (``"binning"``). One discrete: Ross's continuous–discrete k-NN
   estimator (``"ksg"`` with a discrete ``y``; the variables are swapped when ``x`` is the
   discrete one — MI is symmetric).
2. **Constant columns** of a continuous variable are dropped (they carry no information); when
   nothing is left the MI is 0.
3. **Both continuous.** Every column is replaced by its normal scores (ranks mapped through the
   standard normal quantile, ties broken at random): MI is unchanged by invertible maps of each
   coordinate, while heavy tails, skew and duplicated values — which distort k-NN distances and
   covariances — are gone. Two estimates are then made on the scores:

   * the **Gaussian copula** value (``"gaussian_copula"``: Gaussian MI of the scores, with the
     exact small-sample bias correction of the log-determinants) — exact when the dependence is
     Gaussian after the marginal maps, an underestimate otherwise (for one-dimensional x and y
     it is a lower bound: the Gaussian has the largest joint entropy at a given covariance);
   * **KSG** (variant 1, ``k=3``) — consistent for any dependence, but it underestimates when
     the joint dimension or the MI is large (its bias grows with both; Gao et al. 2015).

   Both err low where they fail, so the larger is kept, and the reason says which and by how
   much. KSG is skipped when the joint dimension exceeds ``max_knn_dim`` (20: the k-NN bias
   dominates there), the copula when there are fewer than ``5 (d_x + d_y)`` samples (the
   covariance is not estimable).

The cost is one KSG on the scores plus a covariance: about the cost of running KSG.
The rules were written against the development cases of :mod:`bottlenecks.estimators.bench`
(``CASES``) and are scored on held-out cases (``HELD_OUT``) that they were not tuned on; see
``docs/information.md`` for both tables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import ndtri

from bottlenecks.estimators._base import (
    ArrayLike,
    MIEstimator,
    MIResult,
    Units,
    as_2d,
    check_lengths,
    check_units,
    constant_columns,
    nats_to,
)

#: the names ``estimate_mi`` accepts for ``method`` (besides ``"auto"``), with what they build
METHODS: dict[str, str] = {
    "ksg": "KSG (k-NN; Ross's estimator when y is discrete)",
    "binning": "BinningMI (histogram / plug-in on symbols)",
    "gaussian": "GaussianMI (parametric)",
    "gaussian_copula": "GaussianMI on normal scores (Gaussian-copula MI)",
    "kernel": "KernelCSQMI (Cauchy-Schwarz quadratic MI; not Shannon MI)",
    "renyi": "MatrixRenyiMI (matrix-based Renyi MI; not Shannon MI)",
    "neural": "NeuralMI (critic-based bound; bound='infonce'|'nwj'|'mine')",
    "noisy": "NoisyCompressedMI (noise + PCA + k-NN, wide layers)",
}


def _build(method: str, options: dict[str, Any], units: Units):
    from bottlenecks.estimators import (
        KSG,
        BinningMI,
        GaussianMI,
        KernelCSQMI,
        MatrixRenyiMI,
        NeuralMI,
        NoisyCompressedMI,
    )

    classes = {
        "ksg": KSG,
        "binning": BinningMI,
        "gaussian": GaussianMI,
        "gaussian_copula": GaussianMI,
        "kernel": KernelCSQMI,
        "renyi": MatrixRenyiMI,
        "neural": NeuralMI,
        "noisy": NoisyCompressedMI,
    }
    try:
        return classes[method](units=units, **options)
    except TypeError as e:
        raise TypeError(f"estimate_mi(method={method!r}): {e}") from None


def _raw(a: ArrayLike) -> torch.Tensor:
    return (a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))).detach()


class _Columns:
    """One stable sort per column of ``a`` ``(n, d)``, shared by everything auto reads from the
    column order: distinct counts (discreteness, duplicates) and normal scores."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        n = a.shape[0]
        self.order = np.argsort(np.ascontiguousarray(a.T), axis=1, kind="stable")  # (d, n)
        if n == 0:
            self.distinct = np.zeros(a.shape[1], dtype=np.int64)
            return
        s = np.take_along_axis(a.T, self.order, axis=1)  # (d, n) sorted columns
        self.ties = s[:, 1:] == s[:, :-1]
        self.distinct = n - self.ties.sum(1)

    def scores(self, seed: int, columns: list[int] | None = None) -> np.ndarray:
        """:func:`normal_scores` of ``columns`` (default: all), from the shared sort."""
        a, n = self.a, self.a.shape[0]
        columns = list(range(a.shape[1])) if columns is None else columns
        rng = np.random.default_rng(seed)
        table = ndtri(np.arange(1, n + 1) / (n + 1.0))  # the score of each rank
        out = np.empty((n, len(columns)), dtype=np.float64)
        for i, j in enumerate(columns):
            perm = rng.permutation(n)  # drawn for every column: the same draws as without the shared sort
            if n and self.ties[j].any():  # ties: distinct ranks in random order
                order = perm[np.argsort(a[perm, j], kind="stable")]
            else:  # no ties: the one sorting order, whatever the permutation
                order = self.order[j]
            out[order, i] = table
        return out


def normal_scores(a: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each column of ``a`` ``(n, d)`` replaced by ``Phi^-1(rank / (n + 1))``; ties get distinct
    ranks in random order (``seed``)."""
    return _Columns(np.asarray(a)).scores(seed)


def _discrete(t: torch.Tensor, n: int, cols: _Columns | None) -> tuple[bool, str]:
    """Whether ``t`` is discrete; ``cols``: its columns' shared sort (None for integer/bool ``t``)."""
    if cols is None:
        return True, "integer/bool values"
    if int(cols.distinct.max(initial=0)) > math.sqrt(n):
        return False, ""  # rows are at least as varied as their most varied column: no row sort needed
    m = int(np.unique(cols.a, axis=0).shape[0])
    if m <= math.sqrt(n):
        return True, f"only {m} distinct values in {n} samples"
    return False, ""


def _excess_kurtosis(a: np.ndarray) -> float:
    c = a - a.mean(0)
    c2 = c * c
    v = c2.mean(0)
    k = (c2 * c2).mean(0) / np.where(v > 0, v**2, 1.0) - 3.0
    return float(np.max(k))




def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    method: str = "auto",
    *,
    units: Units = "nats",
    seed: int = 0,
    k: int | None = None,
    max_knn_dim: int = 20,
    **options: Any,
) -> MIResult:
    """Estimate I(X;Y) with a named estimator, or let ``method="auto"`` choose (module doc).

    Args:
        x: ``(n, d_x)`` samples (``(n,)`` is one column); integer/bool = discrete symbols.
        y: ``(n, d_y)`` samples.
        method: ``"auto"`` or one of :data:`METHODS` (``"ksg"``, ``"binning"``, ``"gaussian"``,
            ``"gaussian_copula"``, ``"kernel"``, ``"renyi"``, ``"neural"``, ``"noisy"``).
        units: ``"nats"`` or ``"bits"``.
        seed: seed of the tie-breaking in the normal scores and of KSG's jitter (auto).
        k: neighbours of the k-NN estimators (auto: 3; with a named method, passed on as ``k``).
        max_knn_dim: auto skips KSG above this joint dimension.
        **options: constructor options of the named estimator (not accepted with ``"auto"``).

    Returns:
        :class:`MIResult` with ``method`` (what ran), ``settings`` and a one-line ``reason``.
    """
    check_units(units)
    if method != "auto":
        if k is not None:
            options["k"] = k
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected 'auto' or one of {sorted(METHODS)}")
        if method == "gaussian_copula":
            xs = normal_scores(as_2d(x, "x").cpu().numpy(), seed)
            ys = normal_scores(as_2d(y, "y").cpu().numpy(), seed + 1)
            options.setdefault("bias_correction", True)
            res = _build("gaussian", options, units).estimate(xs, ys)
        else:
            res = _build(method, options, units).estimate(x, y)
        return MIResult(**{**res.__dict__, "method": method, "settings": dict(options), "reason": "requested by name"})
    if options:
        raise ValueError(f"method='auto' chooses its own settings; got options {sorted(options)} (name a method to pass them)")
    return _auto(x, y, units, seed, 3 if k is None else int(k), int(max_knn_dim))


def _result(value_nats: float, units: Units, n: int, method: str, settings: dict, reason: str, details: dict) -> MIResult:
    label = method if not settings else method + "(" + ", ".join(f"{a}={b}" for a, b in settings.items()) + ")"
    return MIResult(
        value=nats_to(float(value_nats), units), units=units, estimator=f"auto: {label}", n_samples=int(n),
        details=details, method=method, settings=settings, reason=reason,
    )


def _auto(x: ArrayLike, y: ArrayLike, units: Units, seed: int, k: int, max_knn_dim: int) -> MIResult:
    from bottlenecks.estimators import KSG, BinningMI, GaussianMI

    xr, yr = _raw(x), _raw(y)
    xt, yt = as_2d(xr, "x"), as_2d(yr, "y")  # shape and NaN/inf checks
    n = check_lengths(x=xt, y=yt)
    if n < 2 * k + 2:
        raise ValueError(f"estimate_mi needs at least {2 * k + 2} samples for k={k}, got {n}")
    for name, t in (("x", xt), ("y", yt)):
        if len(constant_columns(t)) == t.shape[1]:
            return _result(0.0, units, n, "constant", {}, f"{name} is constant (one distinct value): no information", {})
    # integer/bool input is discrete as given (as_2d has made xt, yt float64: look at the raw dtype)
    cols = {name: _Columns(t.cpu().numpy()) if raw.is_floating_point() or raw.is_complex() else None
            for name, raw, t in (("x", xr, xt), ("y", yr, yt))}
    dx_disc, why_x = _discrete(xr, n, cols["x"])
    dy_disc, why_y = _discrete(yr, n, cols["y"])
    if dx_disc and dy_disc:
        est = BinningMI(discrete_x=True, discrete_y=True, correction="miller_madow")
        xs = xr if not xr.is_floating_point() else torch.unique(xt, dim=0, return_inverse=True)[1]
        ys = yr if not yr.is_floating_point() else torch.unique(yt, dim=0, return_inverse=True)[1]
        r = est.estimate(xs, ys)
        return _result(r.value, units, n, "binning", {"correction": "miller_madow"},
                       f"x and y are discrete (x: {why_x}; y: {why_y}): plug-in MI of the symbols", r.details)
    if dx_disc or dy_disc:
        cont, disc = (yt, xt) if dx_disc else (xt, yt)
        cont = cont[:, [j for j in range(cont.shape[1]) if j not in set(constant_columns(cont))]]
        if cont.shape[1] == 0:
            return _result(0.0, units, n, "constant", {}, "the continuous variable is constant: no information", {})
        labels = torch.unique(disc, dim=0, return_inverse=True)[1]
        scores = normal_scores(cont.cpu().numpy(), seed)
        r = KSG(k=k, discrete_y=True, seed=seed).estimate(scores, labels)
        which = "x" if dx_disc else "y"
        return _result(r.value, units, n, "ksg", {"k": k, "discrete_y": True, "normal_scores": True},
                       f"{which} is discrete ({why_x if dx_disc else why_y}), the other continuous: "
                       "Ross's continuous-discrete k-NN estimator", r.details)
    notes = []
    keep = {}
    for name, t in (("x", xt), ("y", yt)):
        const = constant_columns(t)
        if const:
            notes.append(f"dropped constant column(s) {const[:5]} of {name}")
        keep[name] = [j for j in range(t.shape[1]) if j not in set(const)]
    if not keep["x"] or not keep["y"]:
        return _result(0.0, units, n, "constant", {}, "x or y is constant: no information; " + "; ".join(notes), {})
    xa, ya = cols["x"].a[:, keep["x"]], cols["y"].a[:, keep["y"]]
    kurt = max(_excess_kurtosis(xa), _excess_kurtosis(ya))
    dup = max(float(1.0 - cols[name].distinct[keep[name]].min() / n) for name in ("x", "y"))
    if kurt > 3.0:
        notes.append(f"heavy tails (excess kurtosis up to {kurt:.1f})")
    if dup > 0.0:
        notes.append(f"{100 * dup:.0f}% duplicated values (ties broken at random)")
    xs, ys = cols["x"].scores(seed, keep["x"]), cols["y"].scores(seed + 1, keep["y"])
    d = xs.shape[1] + ys.shape[1]
    cands: dict[str, float] = {}
    details: dict[str, Any] = {"dim": d, "excess_kurtosis": kurt, "duplicate_fraction": dup}
    if n >= 5 * d:
        cands["gaussian_copula"] = GaussianMI(bias_correction=True).estimate(xs, ys).value
    if d <= max_knn_dim:
        cands["ksg"] = KSG(k=k, seed=seed).estimate(xs, ys).value
    if not cands:
        raise ValueError(
            f"too few samples for the joint dimension {d} (n={n}): the Gaussian copula needs n >= {5 * d} "
            f"and KSG d <= max_knn_dim={max_knn_dim}"
        )
    details.update({f"{m}_nats": v for m, v in cands.items()})
    method = max(cands, key=cands.get)
    pre = "normal scores of every column" + (f" ({'; '.join(notes)})" if notes else "")
    if len(cands) == 1:
        why = ("KSG skipped: joint dimension %d > %d" % (d, max_knn_dim)) if method == "gaussian_copula" else (
            f"Gaussian copula skipped: n={n} < 5 x dimension {d}")
        reason = f"{pre}; {why}"
    else:
        other = "ksg" if method == "gaussian_copula" else "gaussian_copula"
        reason = (f"{pre}; {method} {cands[method]:.3f} > {other} {cands[other]:.3f} nats: both err low where they "
                  f"fail (KSG in high dimension, the copula for non-Gaussian dependence), kept the larger")
    settings = {"k": k, "variant": 1, "normal_scores": True} if method == "ksg" else {"bias_correction": True, "normal_scores": True}
    return _result(cands[method], units, n, method, settings, reason, details)



class AutoMI(MIEstimator):
    """``estimate_mi(x, y, method="auto")`` as an estimator object (for the bench and configs)."""

    name = "auto"

    def __init__(self, seed: int = 0, k: int = 3, max_knn_dim: int = 20, units: Units = "nats") -> None:
        super().__init__(units)
        self.seed, self.k, self.max_knn_dim = seed, int(k), int(max_knn_dim)

    def estimate(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None = None) -> MIResult:
        if z is not None:
            raise ValueError("estimate_mi(method='auto') does not estimate conditional MI (z was given)")
        return _auto(x, y, self.units, self.seed, self.k, self.max_knn_dim)

    __call__ = estimate
