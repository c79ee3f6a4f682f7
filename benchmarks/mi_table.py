"""The estimator x distribution error table of the known-MI bench, in one command.

    python benchmarks/mi_table.py              # n = 5000, all cases, full neural training
    python benchmarks/mi_table.py --n 2000 --fast

Table 1: Shannon-MI estimators, each cell ``estimate (estimate - true)`` in nats.
Table 2: the kernel estimators against their *own* population targets (CS-QMI and matrix
Rényi-2 are not Shannon MI), bandwidth fixed to the Silverman value the estimator uses.
Table 3: seconds per estimate.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="samples per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true", help="shorter neural-critic training")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    from bottlenecks.estimators import KernelCSQMI, MatrixRenyiMI, bandwidth
    from bottlenecks.estimators.bench import CASES, BenchRow, default_estimators, format_table, kernel_target, run_bench

    t0 = time.perf_counter()
    rows = run_bench(default_estimators(fast=args.fast), cases=args.cases, n=args.n, seed=args.seed)
    print(f"Shannon MI estimators, n={args.n}, seed={args.seed} (nats; cell = estimate (error))\n")
    print(format_table(rows))

    krows = []
    for name in args.cases or list(CASES):
        case = CASES[name]
        x, y = case.sample(args.n, args.seed)
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
    print("Seconds per estimate\n")
    print(format_table(rows + krows, what="seconds"))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
