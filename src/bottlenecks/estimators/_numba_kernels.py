"""numba-compiled neighbour kernels for the k-NN estimators (optional speed path).

Imported lazily by :mod:`bottlenecks.estimators._neighbors`; when numba is not installed,
:func:`available` is False and the numpy/scipy implementations are used instead (same results,
slower). All kernels apply the exact floating-point predicate ``fl(a_j - a_i) < t_i`` so the
two paths agree bit for bit.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised through available()
    import numba
    from numba import njit, prange

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


    # ------------------------------------------------------------------ KD-tree (any dimension)
    # Nodes are stored in arrays: node m covers tree-ordered positions [start[m], end[m]) of the
    # permuted points ``pts``, has bounding box lo[m], hi[m] and children left[m], right[m]
    # (-1 for a leaf). Queries walk the tree with an explicit stack (no recursion), one query per
    # point, points taken in tree order so consecutive queries touch the same nodes; the outer
    # loop over blocks of queries is a numba ``prange`` (threads = numba.get_num_threads()).

    @njit(cache=True)
    def _tree_build(p, leaf_size):
        n, d = p.shape
        perm = np.arange(n)
        cap = 2 * (n // max(1, leaf_size // 2) + 1) + 1
        start = np.empty(cap, np.int64)
        end = np.empty(cap, np.int64)
        left = np.full(cap, -1, np.int64)
        right = np.full(cap, -1, np.int64)
        lo = np.empty((cap, d))
        hi = np.empty((cap, d))
        stack = np.empty(128, np.int64)
        start[0] = 0
        end[0] = n
        n_nodes = 1
        top = 0
        stack[0] = 0
        top = 1
        vals = np.empty(n)
        while top > 0:
            top -= 1
            m = stack[top]
            s = start[m]
            e = end[m]
            for dd in range(d):
                a = p[perm[s], dd]
                b = a
                for q in range(s + 1, e):
                    v = p[perm[q], dd]
                    if v < a:
                        a = v
                    elif v > b:
                        b = v
                lo[m, dd] = a
                hi[m, dd] = b
            if e - s <= leaf_size:
                continue
            split = 0
            width = -1.0
            for dd in range(d):
                w = hi[m, dd] - lo[m, dd]
                if w > width:
                    width = w
                    split = dd
            if width <= 0.0:  # all points identical: keep as one (large) leaf
                continue
            for q in range(s, e):
                vals[q] = p[perm[q], split]
            o = np.argsort(vals[s:e])
            seg = perm[s:e].copy()
            for q in range(e - s):
                perm[s + q] = seg[o[q]]
            mid = (s + e) // 2
            left[m] = n_nodes
            right[m] = n_nodes + 1
            start[n_nodes] = s
            end[n_nodes] = mid
            start[n_nodes + 1] = mid
            end[n_nodes + 1] = e
            stack[top] = n_nodes
            stack[top + 1] = n_nodes + 1
            top += 2
            n_nodes += 2
        pts = np.empty((n, d))
        for q in range(n):
            for dd in range(d):
                pts[q, dd] = p[perm[q], dd]
        return perm, pts, start[:n_nodes], end[:n_nodes], left[:n_nodes], right[:n_nodes], lo[:n_nodes], hi[:n_nodes]

    @njit(cache=True, inline="always")
    def _box_gap(q, lo_m, hi_m, d):
        # Chebyshev distance from q to the box (0 inside), with the same fl(a - b) as the points
        g = 0.0
        for dd in range(d):
            a = lo_m[dd] - q[dd]
            if a > g:
                g = a
            b = q[dd] - hi_m[dd]
            if b > g:
                g = b
        return g

    @njit(cache=True, parallel=True)
    def _tree_knn(pts, start, end, left, right, lo, hi, k, block):
        """k+1 smallest Chebyshev distances (self included) of every point, in tree order."""
        n, d = pts.shape
        eps = np.empty(n)
        idx = np.empty((n, k + 1), np.int64)
        n_blocks = (n + block - 1) // block
        for b in prange(n_blocks):
            bd = np.empty(k + 1)
            bi = np.empty(k + 1, np.int64)
            stack = np.empty(256, np.int64)
            sgap = np.empty(256)
            for i in range(b * block, min(n, (b + 1) * block)):
                q = pts[i]
                for s in range(k + 1):
                    bd[s] = np.inf
                    bi[s] = -1
                stack[0] = 0
                sgap[0] = 0.0
                top = 1
                while top > 0:
                    top -= 1
                    m = stack[top]
                    if sgap[top] >= bd[k]:
                        continue
                    if left[m] < 0:
                        for j in range(start[m], end[m]):
                            dist = 0.0
                            worst = bd[k]
                            for dd in range(d):
                                v = pts[j, dd] - q[dd]
                                if v < 0:
                                    v = -v
                                if v > dist:
                                    dist = v
                                    if dist >= worst:
                                        break
                            if dist < worst:
                                s = k
                                while s > 0 and bd[s - 1] > dist:
                                    bd[s] = bd[s - 1]
                                    bi[s] = bi[s - 1]
                                    s -= 1
                                bd[s] = dist
                                bi[s] = j
                        continue
                    l = left[m]
                    r = right[m]
                    gl = _box_gap(q, lo[l], hi[l], d)
                    gr = _box_gap(q, lo[r], hi[r], d)
                    # push the farther child first so the nearer one is searched first
                    if gl <= gr:
                        if gr < bd[k]:
                            stack[top] = r
                            sgap[top] = gr
                            top += 1
                        if gl < bd[k]:
                            stack[top] = l
                            sgap[top] = gl
                            top += 1
                    else:
                        if gl < bd[k]:
                            stack[top] = l
                            sgap[top] = gl
                            top += 1
                        if gr < bd[k]:
                            stack[top] = r
                            sgap[top] = gr
                            top += 1
                eps[i] = bd[k]
                for s in range(k + 1):
                    idx[i, s] = bi[s]
        return eps, idx

    @njit(cache=True)
    def _node_t_range(start, end, left, right, t):
        # children are numbered after their parent, so a reverse sweep is bottom-up
        m_count = start.shape[0]
        tmin = np.empty(m_count)
        tmax = np.empty(m_count)
        for m in range(m_count - 1, -1, -1):
            if left[m] < 0:
                a = np.inf
                b = -np.inf
                for i in range(start[m], end[m]):
                    if t[i] < a:
                        a = t[i]
                    if t[i] > b:
                        b = t[i]
                tmin[m] = a
                tmax[m] = b
            else:
                tmin[m] = min(tmin[left[m]], tmin[right[m]])
                tmax[m] = max(tmax[left[m]], tmax[right[m]])
        return tmin, tmax

    @njit(cache=True, parallel=True)
    def _tree_count_dual(pts, start, end, left, right, lo, hi, t, depth):
        """Dual-tree box counts: ``#{j: max_d |fl(pts_j - pts_i)| < t_i}`` (self included), in
        tree order. A (query node, reference node) pair is settled at once when the reference
        box lies inside every query's box (count added to the query node) or outside all of them;
        otherwise the larger node is split. Threads take disjoint query subtrees."""
        n, d = pts.shape
        m_count = start.shape[0]
        tmin, tmax = _node_t_range(start, end, left, right, t)
        acc = np.zeros(m_count, np.int64)
        out = np.zeros(n, np.int64)
        # the query subtrees handed to threads: the nodes at ``depth`` (or leaves above it)
        n_sel = 0
        sel = np.empty(m_count, np.int64)
        stack0 = np.empty(256, np.int64)
        stack0[0] = 0
        top0 = 1
        lv = np.zeros(m_count, np.int64)
        while top0 > 0:
            top0 -= 1
            m = stack0[top0]
            if lv[m] == depth or left[m] < 0:
                sel[n_sel] = m
                n_sel += 1
                continue
            lv[left[m]] = lv[m] + 1
            lv[right[m]] = lv[m] + 1
            stack0[top0] = left[m]
            stack0[top0 + 1] = right[m]
            top0 += 2
        for r_i in prange(n_sel):
            qs = np.empty(4096, np.int64)
            rs = np.empty(4096, np.int64)
            qs[0] = sel[r_i]
            rs[0] = 0
            top = 1
            while top > 0:
                top -= 1
                qm = qs[top]
                rm = rs[top]
                t_lo = tmin[qm]
                t_hi = tmax[qm]
                if not t_hi > 0.0:
                    continue
                gap = 0.0
                far = 0.0
                for dd in range(d):
                    a = lo[rm, dd] - hi[qm, dd]
                    if a > gap:
                        gap = a
                    a = lo[qm, dd] - hi[rm, dd]
                    if a > gap:
                        gap = a
                    a = hi[rm, dd] - lo[qm, dd]
                    if a > far:
                        far = a
                    a = hi[qm, dd] - lo[rm, dd]
                    if a > far:
                        far = a
                if gap >= t_hi:
                    continue
                if far < t_lo:
                    acc[qm] += end[rm] - start[rm]
                    continue
                q_leaf = left[qm] < 0
                r_leaf = left[rm] < 0
                if q_leaf and r_leaf:
                    for i in range(start[qm], end[qm]):
                        ti = t[i]
                        if not ti > 0.0:
                            continue
                        q = pts[i]
                        # this query against the reference box first
                        outside = False
                        inside = True
                        for dd in range(d):
                            if lo[rm, dd] - q[dd] >= ti or q[dd] - hi[rm, dd] >= ti:
                                outside = True
                                break
                            if q[dd] - lo[rm, dd] >= ti or hi[rm, dd] - q[dd] >= ti:
                                inside = False
                        if outside:
                            continue
                        if inside:
                            out[i] += end[rm] - start[rm]
                            continue
                        c = 0
                        for j in range(start[rm], end[rm]):
                            ok = True
                            for dd in range(d):
                                v = pts[j, dd] - q[dd]
                                if v < 0:
                                    v = -v
                                if v >= ti:
                                    ok = False
                                    break
                            if ok:
                                c += 1
                        out[i] += c
                    continue
                if q_leaf or (not r_leaf and end[rm] - start[rm] >= end[qm] - start[qm]):
                    qs[top] = qm
                    rs[top] = left[rm]
                    qs[top + 1] = qm
                    rs[top + 1] = right[rm]
                else:
                    qs[top] = left[qm]
                    rs[top] = rm
                    qs[top + 1] = right[qm]
                    rs[top + 1] = rm
                top += 2
        # push the node-level counts down to the points
        for m in range(m_count):
            if acc[m] == 0:
                continue
            if left[m] >= 0:
                acc[left[m]] += acc[m]
                acc[right[m]] += acc[m]
            else:
                for i in range(start[m], end[m]):
                    out[i] += acc[m]
        for i in range(n):
            if not t[i] > 0.0:
                out[i] = 0
        return out


    # ------------------------------------------------------------------ bitset box counts
    # The box |fl(x_jd - q_d)| < t in one coordinate is a contiguous run of ranks in that
    # coordinate's sorted order; a box count is the popcount of the AND over coordinates of the
    # runs as bitsets over sample ids. Each run is the XOR of two precomputed prefix bitsets
    # (every ``block``-th rank) plus at most 2 * block single-bit fix-ups. O(n^2 d / 64) words
    # in all: for n up to a few 1e5 this beats any tree when the boxes hold many points.

    @njit(cache=True, parallel=True)
    def _prefix_bitsets(orders, block):
        # prefs[c, b] = bitset of the samples whose rank in coordinate c is < b * block
        d, n = orders.shape
        w = (n + 63) // 64
        pref = np.zeros((d, n // block + 1, w), np.uint64)
        one = np.uint64(1)
        for c in prange(d):
            cur = np.zeros(w, np.uint64)
            for r in range(n):
                if r % block == 0:
                    pref[c, r // block, :] = cur
                i = orders[c, r]
                cur[i >> 6] |= one << np.uint64(i & 63)
            if n % block == 0:
                pref[c, n // block, :] = cur
        return pref

    @njit(cache=True, inline="always")
    def _popcount64(v):
        v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
        v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
        v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (v * np.uint64(0x0101010101010101)) >> np.uint64(56)

    @njit(cache=True, parallel=True)
    def _bitset_count(sorted_vals, orders, prefs, p, t, block, qblock):
        """``#{j: max_d |fl(p_jd - p_id)| < t_i}`` (self included) for every i."""
        d, n = sorted_vals.shape
        w = (n + 63) // 64
        out = np.zeros(n, np.int64)
        one = np.uint64(1)
        full = ~np.uint64(0)
        tail = n & 63
        last = full if tail == 0 else (one << np.uint64(tail)) - one
        n_blocks = (n + qblock - 1) // qblock
        for b in prange(n_blocks):
            acc = np.empty(w, np.uint64)
            saved = np.empty(block, np.uint64)
            for i in range(b * qblock, min(n, (b + 1) * qblock)):
                ti = t[i]
                if not ti > 0.0:
                    continue
                for u in range(w):
                    acc[u] = full
                acc[w - 1] = last
                for dd in range(d):
                    xs = sorted_vals[dd]
                    q = p[i, dd]
                    lo = _first_within(xs, q, ti)
                    hi = _first_not_below(xs, q, ti)
                    if hi < lo:
                        hi = lo
                    lb = lo // block
                    hb = hi // block
                    order = orders[dd]
                    # the bits of ranks [hb * block, hi) survive as they are: remember them
                    for r in range(hb * block, hi):
                        j = order[r]
                        saved[r - hb * block] = acc[j >> 6] & (one << np.uint64(j & 63))
                    ph = prefs[dd, hb]
                    pl = prefs[dd, lb]
                    for u in range(w):
                        acc[u] &= ph[u] ^ pl[u]
                    for r in range(hb * block, hi):
                        j = order[r]
                        acc[j >> 6] |= saved[r - hb * block]
                    for r in range(lb * block, lo):
                        j = order[r]
                        acc[j >> 6] &= ~(one << np.uint64(j & 63))
                c = np.uint64(0)
                for u in range(w):
                    c += _popcount64(acc[u])
                out[i] = np.int64(c)
        return out


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


class KDTree:
    """A max-norm KD-tree over ``p`` ``(n, d)`` for the exact k-NN and box-count queries of KSG.

    Built once per variable (median splits along the widest coordinate, ``leaf_size`` points
    per leaf); queries run on ``threads`` numba threads (``prange`` over blocks of queries).
    """

    def __init__(self, p: np.ndarray, leaf_size: int = 8) -> None:
        p = np.ascontiguousarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] == 0:
            raise ValueError(f"KDTree needs a non-empty (n, d) array, got shape {p.shape}")
        self.n = p.shape[0]
        (self.perm, self.pts, self.start, self.end, self.left, self.right, self.lo, self.hi) = _tree_build(
            p, int(leaf_size)
        )

    def _run(self, fn, threads: int, *args):
        old = numba.get_num_threads()
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        try:
            return fn(self.pts, self.start, self.end, self.left, self.right, self.lo, self.hi, *args)
        finally:
            numba.set_num_threads(old)

    def knn(self, k: int, threads: int = 1, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Every point's k-th neighbour distance ``(n,)`` (self excluded) and the ``(n, k+1)``
        indices of the closest points (self included), in the input order."""
        if self.n <= k:
            raise ValueError(f"need more than k={k} samples, got {self.n}")
        e, i = self._run(_tree_knn, threads, int(k), int(block))
        eps = np.empty(self.n)
        idx = np.empty((self.n, k + 1), np.int64)
        eps[self.perm] = e
        idx[self.perm] = self.perm[i]
        return eps, idx

    def count(self, t: np.ndarray, threads: int = 1) -> np.ndarray:
        """``(n,)`` number of points j (self included) with Chebyshev distance ``< t_i`` to point i."""
        t = np.asarray(t, dtype=np.float64)
        c = self._run(_tree_count_dual, threads, np.ascontiguousarray(t[self.perm]), 6)
        out = np.empty(self.n, np.int64)
        out[self.perm] = c
        return out


def bitset_block(n: int, d: int, budget_bytes: int = 256 * 2**20) -> int:
    """Prefix-bitset stride for :func:`count_bitset`: 64, or larger when ``d`` tables of
    ``(n / block) x (n / 64)`` words would exceed ``budget_bytes``."""
    words = (n + 63) // 64
    block = 64
    while d * (n // block + 1) * words * 8 > budget_bytes:
        block *= 2
    return block


def count_bitset(p: np.ndarray, t: np.ndarray, threads: int = 1, block: int | None = None) -> np.ndarray:
    """``(n,)`` number of j (self included) with Chebyshev distance ``< t_i`` to sample i, by
    ANDing per-coordinate rank runs as bitsets (see ``_bitset_count``). ``p`` is ``(n, d)``."""
    p = np.ascontiguousarray(p, dtype=np.float64)
    n, d = p.shape
    block = bitset_block(n, d) if block is None else int(block)
    orders = np.ascontiguousarray(np.argsort(p, axis=0, kind="stable").T)
    sorted_vals = np.ascontiguousarray(np.take_along_axis(p, orders.T, 0).T)
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        prefs = _prefix_bitsets(orders, block)
        return _bitset_count(sorted_vals, orders, prefs, p, np.ascontiguousarray(t, dtype=np.float64), block, 64)
    finally:
        numba.set_num_threads(old)
