"""The estimator x distribution error table of the known-MI bench, in one command.

    python benchmarks/mi_table.py                          # dev + held-out cases, n = 5000, full neural training
    python benchmarks/mi_table.py --n 2000 --fast --split held_out
    python benchmarks/mi_table.py --no-kernel              # skip the kernel-estimator tables

For each split (``dev``: ``bench.CASES``, the cases ``estimate_mi``'s rules were written
against; ``held_out``: ``bench.HELD_OUT``, which score them):

Table 1: Shannon-MI estimators and ``auto`` (:func:`bottlenecks.estimators.estimate_mi`), each
cell ``estimate (estimate - true)`` in nats, with auto's choice per case.
Table 2: mean |error| and mean seconds per case family.
Then (dev only, unless ``--no-kernel``): the kernel estimators against their *own* population
targets (CS-QMI and matrix Rényi-2 are not Shannon MI), bandwidth fixed to the Silverman value
the estimator uses, and seconds per estimate.

``rows(quick)`` gives the rows for ``benchmarks/run_all.py``: auto against every single
estimator on the held-out split (ours = auto, reference = that estimator; time is the mean
seconds per case, the note holds both MAEs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def bench_split(split: str, n: int, seed: int, fast: bool, cases=None, neural: bool = True):
    from bottlenecks.estimators import AutoMI
    from bottlenecks.estimators.bench import CASES, HELD_OUT, default_estimators, run_bench

    ests = dict(default_estimators(fast=fast))
    if not neural:
        ests = {k: v for k, v in ests.items() if k not in ("InfoNCE", "NWJ", "MINE")}
    ests["auto"] = AutoMI()
    names = cases or list(CASES if split == "dev" else HELD_OUT)
    torch.manual_seed(seed)
    return run_bench(ests, cases=names, n=n, seed=seed)


def print_split(split: str, rows, n: int, seed: int) -> None:
    from bottlenecks.estimators.bench import family_table, format_table

    print(f"\n=== {split} cases, n={n}, seed={seed} (nats; cell = estimate (error))\n")
    print(format_table(rows))
    print()
    print(family_table(rows))
    print("\nauto's choices: " + ", ".join(f"{r.case}: {r.choice}" for r in rows if r.estimator == "auto"))


def kernel_tables(cases, n: int, seed: int) -> list:
    from bottlenecks.estimators import KernelCSQMI, MatrixRenyiMI, bandwidth
    from bottlenecks.estimators.bench import BenchRow, format_table, get_case, kernel_target

    krows = []
    for name in cases:
        case = get_case(name)
        x, y = case.sample(n, seed)
        xs = (x - x.mean(0)) / x.std(0, unbiased=False)
        ys = (y - y.mean(0)) / y.std(0, unbiased=False)
        sx, sy = bandwidth(xs, "silverman"), bandwidth(ys, "silverman")
        for label, est, kind in (
            ("CS-QMI", KernelCSQMI(sigma_x=sx, sigma_y=sy), "cs_qmi"),
            ("Renyi-2", MatrixRenyiMI(alpha=2.0, sigma_x=sx, sigma_y=sy), "renyi2"),
        ):
            t1 = time.perf_counter()
            v = est.estimate(x, y).value
            krows.append(BenchRow(name, label, kernel_target(case, kind, sx, sy), v, time.perf_counter() - t1))
    print("\nKernel estimators vs their own population values (true = target of that estimator, not Shannon MI)\n")
    for label in ("CS-QMI", "Renyi-2"):
        print(format_table([r for r in krows if r.estimator == label]))
        print()
    return krows


def rows(quick: bool = False) -> list[dict]:
    """Auto vs every single estimator on the held-out split (benchmark-table convention)."""
    from bottlenecks.estimators.bench import HELD_OUT

    if quick:  # seconds: three small held-out cases, no neural critics
        res = bench_split("held_out", 500, 1, True, cases=["gauss-1+1-r0.99", "gauss-1+4-dense", "student-1+1-nu2-r0.3"],
                          neural=False)
    else:
        res = bench_split("held_out", 5000, 1, True)
    n_cases = len({r.case for r in res})
    size = f"{n_cases} held-out cases, n={500 if quick else 5000}"

    def stats(est: str) -> tuple[float, float]:
        rs = [r for r in res if r.estimator == est]
        return float(np.mean([abs(r.error) for r in rs])), float(np.mean([r.seconds for r in rs]))

    mae_auto, t_auto = stats("auto")
    out = []
    for est in dict.fromkeys(r.estimator for r in res):
        if est == "auto":
            continue
        mae, t = stats(est)
        out.append(dict(operation="MI estimate, known-MI bench (held-out)", size=size, ours="estimate_mi(method='auto')",
                        ours_s=t_auto, reference=est, reference_s=t, peak_mb=None,
                        note=f"MAE auto {mae_auto:.3f} vs {est} {mae:.3f} nats"))
    assert set(HELD_OUT) >= {r.case for r in res}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="samples per case")
    ap.add_argument("--seed", type=int, default=0, help="draw seed of the dev split; held-out uses seed + 1")
    ap.add_argument("--fast", action="store_true", help="shorter neural-critic training")
    ap.add_argument("--split", choices=["dev", "held_out", "both"], default="both")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names (with one --split)")
    ap.add_argument("--no-kernel", action="store_true", help="skip the kernel-estimator tables")
    args = ap.parse_args()

    from bottlenecks.estimators.bench import CASES, format_table

    t0 = time.perf_counter()
    allrows = []
    for split in (["dev", "held_out"] if args.split == "both" else [args.split]):
        seed = args.seed if split == "dev" else args.seed + 1
        res = bench_split(split, args.n, seed, args.fast, args.cases)
        print_split(split, res, args.n, seed)
        allrows += res
    if not args.no_kernel:
        krows = kernel_tables(args.cases or list(CASES), args.n, args.seed)
        print("Seconds per estimate\n")
        print(format_table(allrows + krows, what="seconds"))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
