"""Speed and memory of the MI estimators.

    python benchmarks/bench_mi.py            # full: n = 10k and 100k, Gram memory at n = 20k
    python benchmarks/bench_mi.py --quick    # n = 10k only, Gram memory at n = 5k

Prints three tables:

1. KSG on 1-D pairs against scikit-learn's ``mutual_info_regression`` (same k, same
   random_state: the values must agree to 1e-6);
2. KSG on multivariate pairs (2+2 and 5+5 dimensions) against a plain scipy ``cKDTree``
   implementation (joint k-NN query + ``query_ball_point(return_length=True)`` in each
   marginal), on the same jittered data, values compared; the reference on one thread, ours
   with ``workers=1`` and ``workers=2`` (numba threads);
3. peak resident memory and time of the Gram-matrix estimators (CS-QMI, matrix Rényi-2) at
   n = 20k, measured in a fresh subprocess each (Linux: the peak-RSS counter is reset after
   imports and data, so the figure is the estimator's own peak).

Timings are medians over ``--repeats`` runs, interleaving the implementations in the same
process (the machine may be shared: the ratio is what matters). numba's one-off JIT
compilation happens in a warm-up call that is not timed; its cost is printed separately.

``rows(quick)`` gives the KSG rows in the benchmark-table convention of
``benchmarks/run_all.py`` (the 1-D and multivariate comparisons above).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma


def ksg_scipy_plain(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """The textbook KSG-1 with scipy KD-trees (the multivariate baseline)."""
    n = x.shape[0]
    xy = np.hstack([x, y])
    d, _ = cKDTree(xy).query(xy, k=k + 1, p=np.inf)
    r = np.nextafter(d[:, -1], 0)
    nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True) - 1.0
    ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True) - 1.0
    return float(digamma(n) + digamma(k) - np.mean(digamma(nx + 1)) - np.mean(digamma(ny + 1)))


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls, and the last result."""
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def interleaved(fa, fb, repeats: int) -> tuple[float, float, object, object]:
    """Median seconds of ``fa`` and ``fb`` called alternately ``repeats`` times each."""
    ta, tb = [], []
    a = b = None
    for _ in range(repeats):
        t, a = timed(fa, 1)
        ta.append(t)
        t, b = timed(fb, 1)
        tb.append(t)
    return float(np.median(ta)), float(np.median(tb)), a, b


def bench_1d(sizes: list[int], repeats: int, k: int = 3) -> list[dict]:
    from sklearn.feature_selection import mutual_info_regression

    from bottlenecks.estimators import KSG
    from bottlenecks.estimators import _numba_kernels as nbk

    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        x = rng.standard_normal(n)
        y = 0.6 * x + 0.8 * rng.standard_normal(n)
        est = KSG(k=k, seed=0)
        t_sk, t_ours, v_sk, v_ours = interleaved(
            lambda: float(mutual_info_regression(x[:, None], y, n_neighbors=k, random_state=0)[0]),
            lambda: est.estimate(x, y).value,
            repeats,
        )
        nbk.set_enabled(False)
        t_fallback, v_fb = timed(lambda: est.estimate(x, y).value, max(1, repeats // 2))
        nbk.set_enabled(True)
        rows.append(dict(n=n, sklearn_s=t_sk, ours_s=t_ours, speedup=t_sk / t_ours, fallback_s=t_fallback,
                         sklearn=v_sk, ours=v_ours, abs_diff=abs(v_sk - v_ours), fallback_diff=abs(v_fb - v_sk)))
    return rows


def bench_multi(sizes: list[int], dims: list[int], repeats: int, k: int = 3) -> list[dict]:
    from bottlenecks.estimators import KSG

    rows = []
    rng = np.random.default_rng(1)
    for d in dims:
        for n in sizes:
            x = rng.standard_normal((n, d))
            y = 0.5 * x + rng.standard_normal((n, d))
            # jitter once so both implementations see the same tie-free data
            x = x + 1e-10 * rng.standard_normal(x.shape)
            y = y + 1e-10 * rng.standard_normal(y.shape)
            est = KSG(k=k, standardize=False, noise=0.0)
            est2 = KSG(k=k, standardize=False, noise=0.0, workers=2)
            reps = repeats if n <= 20000 else max(1, repeats // 2)
            t_plain, t_ours, t_par = [], [], []
            for _ in range(reps):  # the three interleaved, so load changes hit them alike
                t, v_plain = timed(lambda: ksg_scipy_plain(x, y, k), 1)
                t_plain.append(t)
                t, v_ours = timed(lambda: est.estimate(x, y).value, 1)
                t_ours.append(t)
                t, v_par = timed(lambda: est2.estimate(x, y).value, 1)
                t_par.append(t)
            tp, to, t2 = (float(np.median(v)) for v in (t_plain, t_ours, t_par))
            rows.append(dict(dim=f"{d}+{d}", n=n, scipy_plain_s=tp, ours_s=to, speedup=tp / to,
                             ours_workers2_s=t2, speedup_workers2=tp / t2,
                             scipy_plain=v_plain, ours=v_ours, abs_diff=abs(v_plain - v_ours),
                             abs_diff_workers2=abs(v_plain - v_par)))
    return rows


def rows(quick: bool = False) -> list[dict]:
    """KSG rows for ``benchmarks/run_all.py``: 1-D vs scikit-learn, 5+5 vs plain scipy cKDTree."""
    from bottlenecks.estimators import KSG

    KSG().estimate(np.arange(50.0), np.arange(50.0) ** 2)  # numba JIT / cache load, not timed
    KSG().estimate(np.random.rand(50, 5), np.random.rand(50, 5))
    sizes = [2000] if quick else [10_000, 100_000]
    repeats = 1 if quick else 3
    out = []
    for r in bench_1d(sizes, repeats):
        out.append(dict(operation="KSG-1 MI, 1+1 dims", size=f"n={r['n']}, k=3", ours="KSG (numba grid + galloping counts)",
                        ours_s=r["ours_s"], reference="sklearn mutual_info_regression", reference_s=r["sklearn_s"],
                        peak_mb=None, note=f"|ours - ref| = {r['abs_diff']:.1e} nats"))
    for r in bench_multi(sizes, [5], repeats):
        for label, key, dkey in (("1 thread", "ours_s", "abs_diff"), ("2 threads", "ours_workers2_s", "abs_diff_workers2")):
            out.append(dict(operation=f"KSG-1 MI, {r['dim']} dims", size=f"n={r['n']}, k=3",
                            ours=f"KSG (numba KD-tree k-NN + bitset counts, {label})", ours_s=r[key],
                            reference="scipy cKDTree KSG (1 thread)", reference_s=r["scipy_plain_s"], peak_mb=None,
                            note=f"|ours - ref| = {r[dkey]:.1e} nats"))
    return out


_MEM_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from bottlenecks.estimators import KernelCSQMI, MatrixRenyiMI
from bottlenecks.estimators.bench import CASES

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])  # kB

n, which = int(sys.argv[1]), sys.argv[2]
x, y = CASES["gauss-2+2-dense"].sample(n, 0)
# warm-up on 500 rows: loads BLAS/linear-algebra workspaces once, so they are not counted
KernelCSQMI().estimate(x[:500], y[:500]); MatrixRenyiMI(alpha=2.0).estimate(x[:500], y[:500])
with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS counter (VmHWM)
    f.write("5")
base = status("VmRSS")
t0 = time.perf_counter()
if which == "cs_qmi":
    v = KernelCSQMI().estimate(x, y).value
elif which == "renyi2":
    v = MatrixRenyiMI(alpha=2.0).estimate(x, y).value
else:
    v = float("nan")
dt = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({"value": v, "seconds": dt, "extra_peak_mib": (peak - base) / 1024.0, "baseline_mib": base / 1024.0}))
"""


def bench_memory(n: int) -> list[dict]:
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for which in ("cs_qmi", "renyi2"):
        out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(n), which],
                             capture_output=True, text=True, env=env, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        dense = n * n * 8 / 2**20
        rows.append(dict(estimator=which, n=n, seconds=r["seconds"], extra_peak_mib=r["extra_peak_mib"],
                         dense_gram_mib=dense, value=r["value"]))
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = list(rows[0])
    def fmt(v: object) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:.3g}" if (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.4f}"

    cells = [[fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(" | ".join(k.rjust(w) for k, w in zip(keys, widths)))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.rjust(w) for v, w in zip(c, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = 10k only; Gram memory at n = 5k")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]

    from bottlenecks.estimators import KSG

    t0 = time.perf_counter()
    KSG().estimate(np.arange(50.0), np.arange(50.0) ** 2)  # numba JIT / cache load
    KSG().estimate(np.random.rand(50, 2), np.random.rand(50, 2))
    print(f"warm-up (numba compile or cache load): {time.perf_counter() - t0:.2f} s")

    print_table("KSG-1 on 1-D pairs vs sklearn.feature_selection.mutual_info_regression (k=3, random_state=0)",
                bench_1d(sizes, args.repeats))
    print_table("KSG-1 multivariate vs plain scipy cKDTree implementation (k=3)",
                bench_multi(sizes, [2, 5], args.repeats))
    if not args.skip_memory:
        print_table("Gram-matrix estimators: peak extra RSS in a fresh process (row-chunked, 64 MiB budget)",
                    bench_memory(5_000 if args.quick else 20_000))


if __name__ == "__main__":
    main()
