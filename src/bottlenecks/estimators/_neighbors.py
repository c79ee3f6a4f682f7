"""Exact max-norm (Chebyshev) neighbour searches for the k-nearest-neighbour estimators.

KSG needs, for every sample ``i``, (a) the distance ``eps_i`` to its k-th nearest neighbour in
the joint space and (b) how many samples lie strictly (or non-strictly) within ``eps_i`` of it
in each marginal space. Both are computed exactly, with the same floating-point predicate
``|fl(a_j - a_i)| < t_i`` a KD-tree uses, so results agree with scikit-learn to rounding.

Algorithms (no Python-level loop runs over samples: the loops below are either vectorised
numpy/torch or compiled by numba when numba is installed, with a numpy/scipy fallback):

* **1-D counts** — sort once, then ``searchsorted`` for both interval ends, followed by a
  vectorised correction pass that applies the exact floating-point predicate at the boundary
  (``x_i + t`` is not exactly representable, so a plain ``searchsorted`` can be one off).
  ``O(n log n)``.
* **2-D counts** — a *wavelet matrix* over the rank sequence of the second coordinate in the
  order of the first: each box count is four rank queries of ``O(log n)`` vectorised steps.
  ``O(n log n)`` total, independent of how many points fall inside the boxes.
* **>2-D counts** — with numba, up to ``BITSET_MAX_N`` samples: the box is, in each
  coordinate, a run of consecutive ranks (two binary searches); the count is the popcount of
  the AND of those runs as bitsets over sample ids, each run the XOR of two precomputed prefix
  bitsets plus a few single-bit fix-ups (``O(n^2 d / 64)`` word operations in all, no
  dependence on how many samples fall in the boxes). Above that, a numba KD-tree counting
  whole nodes inside the box; without numba, scikit-learn's
  ``KDTree.query_radius(count_only=True)``.
* **2-D k-NN** — an equal-mass grid (cell edges at the quantiles of each coordinate, about
  two samples per cell) searched ring by ring around each sample; the search stops when the
  k-th distance found is no larger than the distance to everything outside the rings
  examined, so the result is exact. Expected ``O(n log n)`` (the sort), a few dozen distance
  evaluations per sample. Needs numba; without it, scipy's ``cKDTree``.
* **>2-D k-NN** — a numba KD-tree (median splits on the widest coordinate, queries in tree
  order so consecutive queries share nodes, blocks of queries on ``threads`` numba threads);
  without numba, scipy's ``cKDTree.query`` with ``p=inf``.
* **torch backend** — chunked brute force (``O(n^2)`` work, ``O(chunk * n)`` memory) for
  GPUs, where it is the fastest option.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from sklearn.neighbors import KDTree

from bottlenecks.estimators import _numba_kernels as _nb

# --------------------------------------------------------------------------- 1-D intervals


def _fix_upper(xs: np.ndarray, q: np.ndarray, t: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Move ``hi`` to #{j: fl(xs_j - q) < t} (a prefix of sorted xs, since fl is monotone)."""
    n = xs.shape[0]
    for _ in range(64):
        up = hi < n
        up[up] = (xs[hi[up]] - q[up]) < t[up]
        down = hi > 0
        down[down] = (xs[hi[down] - 1] - q[down]) >= t[down]
        if not (up.any() or down.any()):
            return hi
        hi = hi.copy()
        hi[up] = np.searchsorted(xs, xs[hi[up]], side="right")
        hi[down] = np.searchsorted(xs, xs[hi[down] - 1], side="left")
    raise RuntimeError("neighbour-count correction did not converge (non-finite input?)")


def _fix_lower(xs: np.ndarray, q: np.ndarray, t: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Move ``lo`` to #{j: fl(q - xs_j) >= t} (the samples too far below)."""
    n = xs.shape[0]
    for _ in range(64):
        up = lo < n
        up[up] = (q[up] - xs[lo[up]]) >= t[up]
        down = lo > 0
        down[down] = (q[down] - xs[lo[down] - 1]) < t[down]
        if not (up.any() or down.any()):
            return lo
        lo = lo.copy()
        lo[up] = np.searchsorted(xs, xs[lo[up]], side="right")
        lo[down] = np.searchsorted(xs, xs[lo[down] - 1], side="left")
    raise RuntimeError("neighbour-count correction did not converge (non-finite input?)")


def interval_1d(xs: np.ndarray, q: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[lo, hi)`` in sorted ``xs`` of the values within ``|fl(xs_j - q_i)| < t_i``.

    Args:
        xs: ``(n,)`` sorted float64 values.
        q: ``(m,)`` query values.
        t: ``(m,)`` strict thresholds (``t = 0`` gives an empty interval).
    """
    hi = np.searchsorted(xs, q + t, side="left")
    lo = np.searchsorted(xs, q - t, side="right")
    lo = _fix_lower(xs, q, t, lo)
    hi = _fix_upper(xs, q, t, hi)
    return lo, np.maximum(hi, lo)


def count_1d(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(n,)`` number of j (self included) with ``|x_j - x_i| < t_i``; ``x`` is ``(n,)``."""
    xs = np.sort(x)
    lo, hi = interval_1d(xs, x, t)
    return hi - lo


# --------------------------------------------------------------------------- wavelet matrix


class WaveletMatrix:
    """Rank/range-count structure over an integer sequence ``a`` with values in ``[0, n)``.

    ``count_less(s, e, v)`` returns #{p in [s, e): a[p] < v} for arrays of queries in
    ``O(log n)`` vectorised steps.
    """

    def __init__(self, a: np.ndarray) -> None:
        n = a.shape[0]
        self.levels = max(1, math.ceil(math.log2(max(n, 2))))
        self.zeros_prefix: list[np.ndarray] = []
        self.n_zeros: list[int] = []
        cur = a.astype(np.int64)
        for lev in range(self.levels - 1, -1, -1):
            bit = (cur >> lev) & 1
            is_zero = bit == 0
            zp = np.empty(n + 1, dtype=np.int64)
            zp[0] = 0
            np.cumsum(is_zero, out=zp[1:])
            self.zeros_prefix.append(zp)
            self.n_zeros.append(int(zp[-1]))
            cur = np.concatenate([cur[is_zero], cur[~is_zero]])

    def count_less(self, s: np.ndarray, e: np.ndarray, v: np.ndarray) -> np.ndarray:
        s = s.astype(np.int64)
        e = e.astype(np.int64)
        v = v.astype(np.int64)
        res = np.zeros(s.shape[0], dtype=np.int64)
        for i, lev in enumerate(range(self.levels - 1, -1, -1)):
            zp = self.zeros_prefix[i]
            zs, ze = zp[s], zp[e]
            one = ((v >> lev) & 1).astype(bool)
            res += np.where(one, ze - zs, 0)
            nz = self.n_zeros[i]
            s = np.where(one, nz + s - zs, zs)
            e = np.where(one, nz + e - ze, ze)
        return res


def count_2d(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(n,)`` number of j (self included) with ``max_d |p_jd - p_id| < t_i``; ``p`` is ``(n, 2)``."""
    n = p.shape[0]
    a, b = p[:, 0], p[:, 1]
    order_a = np.argsort(a, kind="stable")
    order_b = np.argsort(b, kind="stable")
    rank_b = np.empty(n, dtype=np.int64)
    rank_b[order_b] = np.arange(n)
    lo_a, hi_a = interval_1d(a[order_a], a, t)
    lo_b, hi_b = interval_1d(b[order_b], b, t)
    wm = WaveletMatrix(rank_b[order_a])
    s = np.concatenate([lo_a, lo_a])
    e = np.concatenate([hi_a, hi_a])
    v = np.concatenate([hi_b, lo_b])
    c = wm.count_less(s, e, v)
    return c[:n] - c[n:]


def count_kdtree(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Box counts by a KD-tree that counts whole inside nodes; any dimension."""
    tree = KDTree(p, metric="chebyshev")
    # KDTree counts dist <= r; dist < t  <=>  dist <= nextafter(t, 0) for doubles.
    r = np.nextafter(t, 0.0)
    counts = tree.query_radius(p, np.maximum(r, 0.0), count_only=True)
    # r = 0 would count exact duplicates; the strict predicate with t = 0 counts nothing.
    return np.where(t > 0, counts, 0).astype(np.int64)


#: above this many samples the >2-D counts use the numba KD-tree instead of bitsets
#: (the bitset count costs O(n^2 d / 64) word operations, the tree O(n (log n + count)))
BITSET_MAX_N = 300_000


def count_within(p: np.ndarray, t: np.ndarray, threads: int = 1) -> np.ndarray:
    """Number of samples j (self included) with Chebyshev distance ``< t_i`` to sample i.

    Args:
        p: ``(n, d)`` float64 points.
        t: ``(n,)`` strict thresholds.
        threads: numba threads for the >2-D counts.
    """
    d = p.shape[1]
    if d == 1:
        if _nb.available():
            return _nb.count_1d(np.ascontiguousarray(p[:, 0]), t)
        return count_1d(p[:, 0], t)
    if d == 2:
        if _nb.available():
            return _nb.count_2d(np.ascontiguousarray(p[:, 0]), np.ascontiguousarray(p[:, 1]), t)
        return count_2d(p, t)
    if _nb.available():
        if p.shape[0] <= BITSET_MAX_N:
            return _nb.count_bitset(p, t, threads=threads)
        return _nb.KDTree(p).count(t, threads=threads)
    return count_kdtree(p, t)


# --------------------------------------------------------------------------- k-NN


def _brute_knn(p: np.ndarray, rows: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact k+1 smallest Chebyshev distances (self included) for ``rows``, by brute force."""
    eps = np.empty(rows.shape[0])
    idx = np.empty((rows.shape[0], k + 1), dtype=np.int64)
    for s in range(0, rows.shape[0], chunk):
        r = rows[s : s + chunk]
        dist = np.abs(p[None, :, :] - p[r][:, None, :]).max(-1)
        part = np.argpartition(dist, k, axis=1)[:, : k + 1]
        dpart = np.take_along_axis(dist, part, 1)
        eps[s : s + chunk] = dpart.max(1)
        idx[s : s + chunk] = part
    return eps, idx


def knn_chebyshev(p: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-th neighbour Chebyshev distance ``(n,)`` and the ``(n, k+1)`` closest indices."""
    if p.shape[1] == 2 and _nb.available():
        return _nb.knn_2d(p[:, 0].copy(), p[:, 1].copy(), k)
    if p.shape[1] == 1:
        x = p[:, 0]
        order = np.argsort(x, kind="stable")
        xs = x[order]
        n = x.shape[0]
        # the k nearest in 1-D lie within k positions on either side in sorted order
        offs = np.arange(-k, k + 1)
        pos = np.arange(n)[:, None] + offs[None, :]
        ok = (pos >= 0) & (pos < n)
        d = np.where(ok, np.abs(xs[np.clip(pos, 0, n - 1)] - xs[:, None]), np.inf)
        part = np.argpartition(d, k, axis=1)[:, : k + 1]
        e_sorted = np.take_along_axis(d, part, 1).max(1)
        i_sorted = order[np.clip(np.take_along_axis(pos, part, 1), 0, n - 1)]
        eps = np.empty(n)
        idx = np.empty((n, k + 1), dtype=np.int64)
        eps[order] = e_sorted
        idx[order] = i_sorted
        return eps, idx
    if _nb.available():
        return _nb.KDTree(p).knn(k, threads=workers)
    tree = cKDTree(p)
    dist, idx = tree.query(p, k=k + 1, p=np.inf, workers=workers)
    return dist[:, k], idx


# --------------------------------------------------------------------------- torch backend


def knn_chebyshev_torch(p: torch.Tensor, k: int, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked brute-force k-NN in the max norm, for GPUs. ``p`` is ``(n, d)``."""
    n = p.shape[0]
    eps = torch.empty(n, dtype=p.dtype, device=p.device)
    idx = torch.empty(n, k + 1, dtype=torch.long, device=p.device)
    for s in range(0, n, chunk):
        d = torch.cdist(p[s : s + chunk], p, p=float("inf"))
        vals, ind = torch.topk(d, k + 1, dim=1, largest=False)
        eps[s : s + chunk] = vals[:, k]
        idx[s : s + chunk] = ind
    return eps, idx


def count_within_torch(p: torch.Tensor, t: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Chunked brute-force strict box counts (self included), for GPUs. ``p`` is ``(n, d)``."""
    n = p.shape[0]
    out = torch.empty(n, dtype=torch.long, device=p.device)
    for s in range(0, n, chunk):
        d = torch.cdist(p[s : s + chunk], p, p=float("inf"))
        out[s : s + chunk] = (d < t[s : s + chunk, None]).sum(1)
    return out
