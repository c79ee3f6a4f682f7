"""numba-compiled neighbour kernels for the k-NN estimators (optional speed path).

Imported lazily by :mod:`bottlenecks.estimators._neighbors`; when numba is not installed,
:func:`available` is False and the numpy/scipy implementations are used instead (same results,
slower). All kernels apply the exact floating-point predicate ``fl(a_j - a_i) < t_i`` so the
two paths agree bit for bit.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised through available()
    from numba import njit

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

_FORCE_DISABLED = False


def available() -> bool:
    """True when numba is importable and the fast path is not disabled."""
    return _HAVE_NUMBA and not _FORCE_DISABLED


def set_enabled(enabled: bool) -> None:
    """Switch the numba path on or off (to compare against the numpy/scipy fallback)."""
    global _FORCE_DISABLED
    _FORCE_DISABLED = not enabled


if _HAVE_NUMBA:

    @njit(cache=True)
    def _first_not_below(xs, q, t):  # first p with fl(xs[p] - q) >= t
        lo = 0
        hi = xs.shape[0]
        while lo < hi:
            mid = (lo + hi) >> 1
            if xs[mid] - q < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @njit(cache=True)
    def _first_within(xs, q, t):  # first p with fl(q - xs[p]) < t
        lo = 0
        hi = xs.shape[0]
        while lo < hi:
            mid = (lo + hi) >> 1
            if q - xs[mid] >= t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @njit(cache=True)
    def _intervals(xs, q, t, lo_out, hi_out):
        for i in range(q.shape[0]):
            lo = _first_within(xs, q[i], t[i])
            hi = _first_not_below(xs, q[i], t[i])
            lo_out[i] = lo
            hi_out[i] = hi if hi > lo else lo

    @njit(cache=True)
    def _gallop_not_below(xs, q, t, start):
        # first p with fl(xs[p] - q) >= t, searched outward from ``start`` (exponential search)
        n = xs.shape[0]
        if start < n and xs[start] - q < t:
            lo = start + 1
            step = 1
            hi = lo
            while hi < n and xs[hi] - q < t:
                lo = hi + 1
                hi = lo + step
                step <<= 1
            if hi > n:
                hi = n
        else:
            hi = start
            step = 1
            lo = hi
            while lo > 0 and xs[lo - 1] - q >= t:
                hi = lo - 1
                lo = hi - step
                step <<= 1
                if lo < 0:
                    lo = 0
        while lo < hi:
            mid = (lo + hi) >> 1
            if xs[mid] - q < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @njit(cache=True)
    def _gallop_within(xs, q, t, start):
        # first p with fl(q - xs[p]) < t, searched outward from ``start``
        n = xs.shape[0]
        if start < n and q - xs[start] >= t:
            lo = start + 1
            step = 1
            hi = lo
            while hi < n and q - xs[hi] >= t:
                lo = hi + 1
                hi = lo + step
                step <<= 1
            if hi > n:
                hi = n
        else:
            hi = start
            step = 1
            lo = hi
            while lo > 0 and q - xs[lo - 1] < t:
                hi = lo - 1
                lo = hi - step
                step <<= 1
                if lo < 0:
                    lo = 0
        while lo < hi:
            mid = (lo + hi) >> 1
            if q - xs[mid] >= t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @njit(cache=True)
    def _count_sorted(xs, ts, out):
        # xs sorted, ts thresholds in the same order; galloping from the previous answers
        n = xs.shape[0]
        lo = 0
        hi = 0
        for p in range(n):
            lo = _gallop_within(xs, xs[p], ts[p], lo)
            hi = _gallop_not_below(xs, xs[p], ts[p], hi)
            out[p] = hi - lo if hi > lo else 0

    @njit(cache=True)
    def _count_1d(xs, ts, order):
        n = xs.shape[0]
        tmp = np.empty(n, np.int64)
        _count_sorted(xs, ts, tmp)
        out = np.empty(n, np.int64)
        for p in range(n):
            out[order[p]] = tmp[p]
        return out

    @njit(cache=True)
    def _count_2d(a, b, t, order_a, order_b):
        # offline sweep over the a-sorted order with a Fenwick tree over b-ranks:
        # count_i = F(hi_a) - F(lo_a), F(p) = #{first p samples in a-order with lo_b <= rank_b < hi_b}
        n = a.shape[0]
        rank_b = np.empty(n, np.int64)
        for p in range(n):
            rank_b[order_b[p]] = p
        a_s = a[order_a]
        b_s = b[order_b]
        lo_a = np.empty(n, np.int64)
        hi_a = np.empty(n, np.int64)
        lo_b = np.empty(n, np.int64)
        hi_b = np.empty(n, np.int64)
        for p in range(n):
            i = order_a[p]
            lo_a[i] = _first_within(a_s, a[i], t[i])
            hi_a[i] = _first_not_below(a_s, a[i], t[i])
        for p in range(n):
            i = order_b[p]
            lo_b[i] = _first_within(b_s, b[i], t[i])
            hi_b[i] = _first_not_below(b_s, b[i], t[i])
        # bucket the 2n events by sweep position (counting sort)
        head = np.zeros(n + 2, np.int64)
        for i in range(n):
            head[lo_a[i] + 1] += 1
            head[hi_a[i] + 1] += 1
        for p in range(n + 1):
            head[p + 1] += head[p]
        ev = np.empty(2 * n, np.int64)  # encoded: sample index * 2 + (1 for the upper end)
        fill = head.copy()
        for i in range(n):
            ev[fill[lo_a[i]]] = 2 * i
            fill[lo_a[i]] += 1
            ev[fill[hi_a[i]]] = 2 * i + 1
            fill[hi_a[i]] += 1
        tree = np.zeros(n + 1, np.int32)
        out = np.zeros(n, np.int64)
        for p in range(n + 1):
            for q in range(head[p], head[p + 1]):
                code = ev[q]
                i = code >> 1
                if hi_b[i] <= lo_b[i] or hi_a[i] <= lo_a[i]:
                    continue
                # prefix(hi_b) - prefix(lo_b) over the first p samples
                c = 0
                j = hi_b[i]
                while j > 0:
                    c += tree[j]
                    j -= j & (-j)
                j = lo_b[i]
                while j > 0:
                    c -= tree[j]
                    j -= j & (-j)
                if code & 1:
                    out[i] += c
                else:
                    out[i] -= c
            if p < n:
                j = rank_b[order_a[p]] + 1
                while j <= n:
                    tree[j] += 1
                    j += j & (-j)
        return out

    @njit(cache=True)
    def _cell_of(edges, x):
        # edges[0] = -inf, edges[g] = +inf; cell c holds values in [edges[c], edges[c+1])
        lo = 0
        hi = edges.shape[0] - 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if edges[mid] <= x:
                lo = mid
            else:
                hi = mid
        return lo

    @njit(cache=True, inline="always")
    def _scan_members(p0, p1, mu, mv, ui, vi, bd, bi, k):
        """Insert members p0..p1-1 into the sorted k+1 best (Chebyshev distance, index) lists."""
        for p in range(p0, p1):
            du = mu[p] - ui
            if du < 0:
                du = -du
            dv = mv[p] - vi
            if dv < 0:
                dv = -dv
            d = du if du > dv else dv
            if d < bd[k]:
                s = k
                while s > 0 and bd[s - 1] > d:
                    bd[s] = bd[s - 1]
                    bi[s] = bi[s - 1]
                    s -= 1
                bd[s] = d
                bi[s] = p

    @njit(cache=True)
    def _knn_2d(u, v, order_u, order_v, k, occupancy):
        """Grid k-NN; cells are equal-mass in each coordinate (by rank), searched ring by ring."""
        n = u.shape[0]
        g = int(np.sqrt(n / occupancy))
        if g < 1:
            g = 1
        # cut positions in sorted order: cell c holds sorted positions [cut[c], cut[c+1])
        cut = np.empty(g + 1, np.int64)
        for c in range(g + 1):
            cut[c] = (c * n) // g
        cu = np.empty(n, np.int64)
        cv = np.empty(n, np.int64)
        c = 0
        for p in range(n):
            while cut[c + 1] <= p:
                c += 1
            cu[order_u[p]] = c
        c = 0
        for p in range(n):
            while cut[c + 1] <= p:
                c += 1
            cv[order_v[p]] = c
        # lo_u[c] = smallest value in u-cell c, hi_u[c] = largest
        lo_u = np.empty(g)
        hi_u = np.empty(g)
        lo_v = np.empty(g)
        hi_v = np.empty(g)
        for c in range(g):
            lo_u[c] = u[order_u[cut[c]]]
            hi_u[c] = u[order_u[cut[c + 1] - 1]]
            lo_v[c] = v[order_v[cut[c]]]
            hi_v[c] = v[order_v[cut[c + 1] - 1]]
        start = np.zeros(g * g + 1, np.int64)
        for i in range(n):
            start[cu[i] * g + cv[i] + 1] += 1
        for c in range(g * g):
            start[c + 1] += start[c]
        members = np.empty(n, np.int64)
        fill = start[:-1].copy()
        for i in range(n):
            c = cu[i] * g + cv[i]
            members[fill[c]] = i
            fill[c] += 1
        mu = np.empty(n)
        mv = np.empty(n)
        for m in range(n):
            mu[m] = u[members[m]]
            mv[m] = v[members[m]]
        eps = np.empty(n)
        idx = np.empty((n, k + 1), np.int64)
        bd = np.empty(k + 1)
        bi = np.empty(k + 1, np.int64)
        for m in range(n):  # queries in cell order: neighbouring queries touch the same cells
            i = members[m]
            ui = mu[m]
            vi = mv[m]
            a0 = cu[i]
            b0 = cv[i]
            for s in range(k + 1):
                bd[s] = np.inf
                bi[s] = -1
            # rings 0 and 1 together: the 3x3 block is three contiguous runs of the member order
            b_lo = b0 - 1 if b0 > 0 else 0
            b_hi = b0 + 1 if b0 < g - 1 else g - 1
            a_lo = a0 - 1 if a0 > 0 else 0
            a_hi = a0 + 1 if a0 < g - 1 else g - 1
            for a in range(a_lo, a_hi + 1):
                _scan_members(start[a * g + b_lo], start[a * g + b_hi + 1], mu, mv, ui, vi, bd, bi, k)
            r = 1
            while True:
                # lower bound on the distance to every sample outside the (2r+1)^2 block:
                # cells left of the block hold values <= hi_u[a0-r-1], right of it >= lo_u[a0+r+1]
                bound = np.inf
                if a0 - r >= 1:
                    bound = min(bound, ui - hi_u[a0 - r - 1])
                if a0 + r + 1 <= g - 1:
                    bound = min(bound, lo_u[a0 + r + 1] - ui)
                if b0 - r >= 1:
                    bound = min(bound, vi - hi_v[b0 - r - 1])
                if b0 + r + 1 <= g - 1:
                    bound = min(bound, lo_v[b0 + r + 1] - vi)
                if bd[k] <= bound:
                    break
                r += 1
                # visit ring r: full rows a0 - r and a0 + r, the two end cells of the rows between
                for a in range(a0 - r, a0 + r + 1):
                    if a < 0 or a >= g:
                        continue
                    full = a == a0 - r or a == a0 + r
                    b = b0 - r
                    while b <= b0 + r:
                        if 0 <= b < g:
                            c = a * g + b
                            _scan_members(start[c], start[c + 1], mu, mv, ui, vi, bd, bi, k)
                        b += 1 if full else 2 * r
            eps[i] = bd[k]
            for s in range(k + 1):
                idx[i, s] = members[bi[s]]
        return eps, idx


    @njit(cache=True)
    def _ksg_pair(u, v, order_u, order_v, k, occupancy):
        """Fused KSG-1 search for a 1-D pair: joint k-NN radius, then both marginal counts
        (strict, self included) reusing the same sort orders."""
        n = u.shape[0]
        eps, idx = _knn_2d(u, v, order_u, order_v, k, occupancy)
        counts = np.empty((2, n), np.int64)
        tmp = np.empty(n, np.int64)
        for side in range(2):
            a = u if side == 0 else v
            order = order_u if side == 0 else order_v
            xs = np.empty(n)
            ts = np.empty(n)
            for p in range(n):
                xs[p] = a[order[p]]
                ts[p] = eps[order[p]]
            _count_sorted(xs, ts, tmp)
            for p in range(n):
                counts[side, order[p]] = tmp[p]
        return eps, counts[0], counts[1]


def count_1d(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(n,)`` number of j (self included) with ``|fl(x_j - x_i)| < t_i``."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x)
    return _count_1d(x[order], np.asarray(t, dtype=np.float64)[order], order)


def count_2d(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(n,)`` number of j (self included) with both coordinate distances ``< t_i``."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return _count_2d(a, b, np.ascontiguousarray(t, dtype=np.float64), np.argsort(a), np.argsort(b))


def knn_2d(u: np.ndarray, v: np.ndarray, k: int, occupancy: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-th-neighbour Chebyshev distance ``(n,)`` (self excluded) and ``(n, k+1)`` indices."""
    if u.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples, got {u.shape[0]}")
    u = np.ascontiguousarray(u, dtype=np.float64)
    v = np.ascontiguousarray(v, dtype=np.float64)
    return _knn_2d(u, v, np.argsort(u), np.argsort(v), int(k), float(occupancy))



def ksg_pair_counts(u: np.ndarray, v: np.ndarray, k: int, occupancy: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For 1-D ``u``, ``v`` ``(n,)``: joint k-th neighbour distance ``eps`` and the strict marginal
    counts (self included) ``#{j: |u_j - u_i| < eps_i}``, ``#{j: |v_j - v_i| < eps_i}``."""
    if u.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples, got {u.shape[0]}")
    u = np.ascontiguousarray(u, dtype=np.float64)
    v = np.ascontiguousarray(v, dtype=np.float64)
    return _ksg_pair(u, v, np.argsort(u), np.argsort(v), int(k), float(occupancy))
