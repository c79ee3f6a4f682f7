"""Plug-in (histogram) mutual information with fixed-width or adaptive equal-mass bins.

Each continuous column is discretised, every row becomes one symbol (the tuple of its bin
indices), and ``I(X;Y) = H(X) + H(Y) - H(X,Y)`` is computed from symbol frequencies;
``I(X;Y|Z) = H(X,Z) + H(Y,Z) - H(X,Y,Z) - H(Z)``. Integer inputs are used as symbols as
they are (class labels, sample indices).

* ``strategy="uniform"`` — ``n_bins`` equal-width bins over ``range`` (default: the data's
  min..max); the estimator of Shwartz-Ziv & Tishby (2017) for bounded (tanh) activations.
* ``strategy="equal_mass"`` — bin edges at quantiles, so every bin holds about the same
  number of values; the adaptive estimator of Chelombiev et al. (2019), suited to unbounded
  (ReLU) activations where fixed bins put almost everything in one bin.
  ``pooled=True`` takes the edges from all columns together (one layer-wide set of edges,
  as in the paper); otherwise per column.

Regime: the plug-in estimate of a discretised variable, so it measures I of the *binned*
variables; with ``m`` occupied joint bins it is biased upward by about ``(m_xy - m_x - m_y +
1) / (2N)`` nats (``correction="miller_madow"`` removes that first-order term). In high
dimension almost every row is its own symbol and ``I(X;T)`` saturates at ``log N`` — a
property of the estimator, not of the network (Saxe et al. 2018). Use it for
low-dimensional variables, for discrete ones, or to reproduce information-plane studies.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bottlenecks.estimators._base import ArrayLike, MIEstimator, Units, as_2d, check_lengths, is_discrete


def entropy_of_symbols(symbols: Tensor, correction: str = "none") -> float:
    """Plug-in entropy (nats) of ``(n,)`` or ``(n, d)`` integer symbols (rows of a matrix are symbols)."""
    if symbols.dim() == 1:
        _, counts = torch.unique(symbols, return_counts=True)
    else:
        _, counts = torch.unique(symbols, dim=0, return_counts=True)
    n = int(counts.sum())
    p = counts.double() / n
    h = float(-(p * p.log()).sum())
    if correction == "miller_madow":
        h += (counts.numel() - 1) / (2.0 * n)
    return h


class Discretizer:
    """Maps continuous ``(n, d)`` values to integer bin indices ``(n, d)``.

    Args:
        n_bins: bins per column.
        strategy: ``"uniform"`` (equal width) or ``"equal_mass"`` (quantile edges).
        range: ``(low, high)`` for uniform bins (e.g. ``(-1, 1)`` for tanh); default the
            data's min..max.
        pooled: one set of edges for all columns instead of per-column edges.
    """

    def __init__(
        self,
        n_bins: int = 30,
        strategy: Literal["uniform", "equal_mass"] = "uniform",
        range: tuple[float, float] | None = None,  # noqa: A002 - mirrors numpy.histogram
        pooled: bool = False,
    ) -> None:
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if strategy not in ("uniform", "equal_mass"):
            raise ValueError(f"strategy must be 'uniform' or 'equal_mass', got {strategy!r}")
        if range is not None and not (float(range[0]) < float(range[1])):
            raise ValueError(f"range must be (low, high) with low < high, got {range}")
        self.n_bins = int(n_bins)
        self.strategy = strategy
        self.range = range
        self.pooled = pooled

    def __call__(self, x: Tensor) -> Tensor:
        """``(n, d)`` float -> ``(n, d)`` int64 bin indices in ``[0, n_bins)``."""
        x = x.double()
        if self.strategy == "uniform":
            if self.range is not None:
                lo = torch.full((1, x.shape[1]), float(self.range[0]), dtype=x.dtype)
                hi = torch.full((1, x.shape[1]), float(self.range[1]), dtype=x.dtype)
            elif self.pooled:
                lo = x.min().expand(1, x.shape[1])
                hi = x.max().expand(1, x.shape[1])
            else:
                lo = x.min(0, keepdim=True).values
                hi = x.max(0, keepdim=True).values
            width = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
            idx = torch.floor((x - lo) / width * self.n_bins).long()
            return idx.clamp_(0, self.n_bins - 1)
        q = np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1]
        xn = x.numpy()
        if self.pooled:
            edges = torch.from_numpy(np.unique(np.quantile(xn.ravel(), q)))
            return torch.searchsorted(edges, x.contiguous(), right=True)
        out = torch.empty(x.shape, dtype=torch.long)
        edges_all = np.quantile(xn, q, axis=0)  # (n_bins - 1, d)
        for j in range(x.shape[1]):  # loop over columns, not samples
            edges = torch.from_numpy(np.unique(edges_all[:, j]))
            out[:, j] = torch.searchsorted(edges, x[:, j].contiguous(), right=True)
        return out


class BinningMI(MIEstimator):
    """Plug-in MI of discretised variables (see the module docstring for the regime).

    Args:
        n_bins: bins per continuous column, or ``"auto"``: ``max(2, floor((N / 10)^(1/D)))``
            with ``D`` the total number of continuous columns (about 10 samples per joint
            cell: 20 bins for a 1-D pair at N = 4000, 4 per column for a 2+2 pair).
        strategy: ``"uniform"`` or ``"equal_mass"``.
        range: fixed ``(low, high)`` for uniform bins, e.g. ``(-1, 1)`` for tanh units.
        pooled: share bin edges across the columns of a variable (layer-wide edges).
        correction: ``"none"`` or ``"miller_madow"`` (first-order bias correction).
        discrete_x, discrete_y: ``"auto"`` reads integer/bool inputs as symbols, float as
            continuous; True/False force it.
        units: ``"nats"`` or ``"bits"``.

    Example:
        >>> import torch
        >>> t = torch.tanh(torch.randn(1000, 3))
        >>> labels = (t[:, 0] > 0).long()
        >>> BinningMI(n_bins=2, range=(-1, 1)).estimate(t, labels).to("bits").value  # ~1 bit
        0.99...
    """

    supports_conditional = True
    resampling = "bootstrap"

    def __init__(
        self,
        n_bins: int | Literal["auto"] = 30,
        strategy: Literal["uniform", "equal_mass"] = "uniform",
        range: tuple[float, float] | None = None,  # noqa: A002
        pooled: bool = False,
        correction: Literal["none", "miller_madow"] = "none",
        discrete_x: bool | Literal["auto"] = "auto",
        discrete_y: bool | Literal["auto"] = "auto",
        units: Units = "nats",
    ) -> None:
        super().__init__(units)
        if correction not in ("none", "miller_madow"):
            raise ValueError(f"correction must be 'none' or 'miller_madow', got {correction!r}")
        if n_bins != "auto":
            Discretizer(int(n_bins), strategy, range, pooled)  # validates the arguments
        else:
            Discretizer(2, strategy, range, pooled)
        self.n_bins = n_bins if n_bins == "auto" else int(n_bins)
        self.strategy = strategy
        self.range = range
        self.pooled = pooled
        self.correction = correction
        self.discrete_x = discrete_x
        self.discrete_y = discrete_y

    def describe(self) -> str:
        return f"Binning({self.strategy},{self.n_bins})"

    def _is_discrete(self, a: ArrayLike, discrete: bool | str) -> bool:
        t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
        return is_discrete(t) if discrete == "auto" else bool(discrete)

    def bins_for(self, n: int, n_continuous_columns: int) -> int:
        """The number of bins per column used for ``n`` samples (resolves ``"auto"``)."""
        if self.n_bins != "auto":
            return int(self.n_bins)
        return max(2, int((n / 10.0) ** (1.0 / max(1, n_continuous_columns))))

    def symbols(self, a: ArrayLike, name: str, discrete: bool | str = "auto", n_bins: int | None = None) -> Tensor:
        """``(n,)`` int64 symbol ids of a variable (one id per distinct binned row)."""
        t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
        disc = is_discrete(t) if discrete == "auto" else bool(discrete)
        if disc:
            t2 = t.detach().cpu()
            t2 = t2.unsqueeze(1) if t2.dim() == 1 else t2
            if t2.dim() != 2:
                raise ValueError(f"{name} must be (n,) or (n, d), got shape {tuple(t.shape)}")
            if t2.is_floating_point():
                bad = ~torch.isfinite(t2)
                if bad.any():
                    raise ValueError(
                        f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at row "
                        f"{int(bad.any(1).nonzero()[0])}) but is read as discrete symbols"
                    )
                if not torch.equal(t2, t2.round()):
                    raise ValueError(
                        f"{name} is read as discrete symbols but holds values that are not whole "
                        "numbers; pass it as continuous (discrete=False) or as integer labels"
                    )
            codes = t2.long()
        else:
            t2 = as_2d(t, name).cpu()
            bins = n_bins if n_bins is not None else self.bins_for(t2.shape[0], t2.shape[1])
            codes = Discretizer(bins, self.strategy, self.range, self.pooled)(t2)
        return torch.unique(codes, dim=0, return_inverse=True)[1]

    def entropy(self, a: ArrayLike, name: str = "x", discrete: bool | str = "auto") -> float:
        """Plug-in entropy of a (binned) variable, in this estimator's units."""
        h = entropy_of_symbols(self.symbols(a, name, discrete), self.correction)
        return h / math.log(2) if self.units == "bits" else h

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        cols, n_rows = 0, None
        for a, d in ((x, self.discrete_x), (y, self.discrete_y), (z, "auto")):
            if a is not None and not self._is_discrete(a, d):
                t2 = as_2d(a, "input")
                cols += t2.shape[1]
                n_rows = t2.shape[0]
        bins = self.bins_for(n_rows or 1, cols)
        sx = self.symbols(x, "x", self.discrete_x, bins)
        sy = self.symbols(y, "y", self.discrete_y, bins)
        sz = None if z is None else self.symbols(z, "z", "auto", bins)
        n = check_lengths(x=sx, y=sy, z=sz)
        if n < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 samples, got {n}")
        H = lambda *s: entropy_of_symbols(torch.stack(s, 1), self.correction)  # noqa: E731
        if sz is None:
            hx, hy, hxy = H(sx), H(sy), H(sx, sy)
            mi = hx + hy - hxy
            details = {"H_x": hx, "H_y": hy, "H_xy": hxy, "n_symbols_x": int(sx.max()) + 1,
                       "n_symbols_y": int(sy.max()) + 1, "n_bins": bins}
        else:
            mi = H(sx, sz) + H(sy, sz) - H(sx, sy, sz) - H(sz)
            details = {"n_bins": bins}
        return mi, n, details
