"""Interventions at the scale of real concept sets: ECBM mean-field inference against exact
inference, and group-level, cost-aware intervention curves on 112 grouped concepts.

Part 1 (``--part agreement``): an ECBM on the 8-concept Shapes-like set where red ⇔ circle
(enumerable: 2^8 × 9 pairs); label-conditioned mean field (difference and gradient updates)
and the relaxed gradient inference against exact inference, without and with clamped
interventions: mean / max |Δp(y)|, mean / max |Δp(c)| on the concepts not intervened on,
agreement of the predicted label, and how far fixing ``red := 1`` moves ``circle``.

Part 2 (``--part curves``): an ECBM on 112 concepts in 28 groups of 4 (CUB-like class-level
attributes, 20 classes; 2^112 · 20 pairs, so ``inference="auto"`` is mean field and the global
energy trains by pseudo-likelihood); each group gets an annotation cost (seconds, drawn once);
task accuracy against the number of groups revealed and against cumulative cost for the
random, uncertainty and cost-aware policies, and how the un-intervened concepts move.

    python benchmarks/interventions_groups.py            # both parts, prints markdown tables
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _concept_data import NAMES, datamodule, shapes_like, trainer  # noqa: E402
from _grouped_concepts import grouped_concepts  # noqa: E402

from bottlenecks.analysis import intervene, intervention_curve  # noqa: E402
from bottlenecks.data.datamodule import ArrayDataModule  # noqa: E402
from bottlenecks.layers.ecbm import EnergyConceptBottleneck  # noqa: E402
from bottlenecks.models.module import BottleneckModel  # noqa: E402


def agreement(epochs: int) -> None:
    L.seed_everything(0)
    x, c, y = shapes_like(n=2400, noise=1.3, cooccur=True)
    model = BottleneckModel(EnergyConceptBottleneck(16, num_classes=9, concept_names=NAMES, hidden=32),
                            num_classes=9, lr=1e-2)
    trainer(max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0).fit(model, datamodule(x, c, y, 1800))
    b = model.bottleneck
    xt, ct = x[1800:2000], c[1800:2000]
    rand_mask = torch.rand(ct.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    requests = {"none": ({}, None), "red := 1": ({"red": 1.0}, None), "30% of concepts := truth": (ct, rand_mask),
                "red := 0.8 (soft)": ({"red": 0.8}, None)}
    methods = [("mean field, difference", "mean_field", "difference"), ("mean field, gradient", "mean_field", "gradient"),
               ("relaxed gradient (paper)", "gradient", "gradient")]
    print("| intervention | inference | mean abs dp(y) | max abs dp(y) | mean abs dp(c) | max abs dp(c) | same label | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, (v, cc) in requests.items():
        b.inference = "exact"
        ex = intervene(model, xt, v, cc)
        for label, inf, upd in methods:
            b.inference, b.mean_field_update = inf, upd
            t = time.perf_counter()
            ap = intervene(model, xt, v, cc)
            dt = time.perf_counter() - t
            free = ~ap.mask
            dy, dc = (ap.y_hat.exp() - ex.y_hat.exp()).abs(), (ap.probs - ex.probs)[free].abs()
            print(f"| {key} | {label} | {dy.mean():.4f} | {dy.max():.3f} | {dc.mean():.4f} | {dc.max():.3f} | "
                  f"{(ap.y_pred == ex.y_pred).float().mean():.3f} | {dt:.2f} |")
    rows = c[1800:, 0] == 0
    print("\nmean change of p(circle) when red := 1 (test rows that are not red):")
    for label, inf, upd in [("exact", "exact", "gradient")] + methods:
        b.inference, b.mean_field_update = inf, upd
        d = intervene(model, x[1800:][rows], {"red": 1.0}).probs[:, 3] - intervene(model, x[1800:][rows], {}).probs[:, 3]
        print(f"- {label}: {d.mean():+.3f}")
    b.inference = "exact"


def curves(epochs: int, n_test: int, lr: float) -> None:
    L.seed_everything(0)
    x, c, y, names, groups = grouped_concepts(n=1200 + n_test, noise=4.0)
    n = 1200
    dm = ArrayDataModule.from_arrays(x_train=x[:n], y_train=y[:n], concepts_train=c[:n], x_test=x[n:],
                                     y_test=y[n:], concepts_test=c[n:], concept_names=names, batch_size=128)
    b = EnergyConceptBottleneck(64, num_classes=20, concept_names=names, hidden=32)
    model = BottleneckModel(b, num_classes=20, lr=lr)
    t = time.perf_counter()
    trainer(max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0).fit(model, dm)
    print(f"ECBM on {len(names)} concepts ({b.inference}, {b.global_objective}): trained in {time.perf_counter() - t:.0f} s")
    gen = torch.Generator().manual_seed(1)
    costs = {g: round(float(1 + 9 * torch.rand((), generator=gen)), 1) for g in groups}  # seconds per group
    xt, ct, yt = x[n:], c[n:], y[n:]
    half = [m for g in list(groups)[:14] for m in groups[g]]
    rest = [names.index(m) for g in list(groups)[14:] for m in groups[g]]
    r0, r1 = intervene(model, xt, {}), intervene(model, xt, ct, concepts=half)
    acc = lambda r: ((r.probs[:, rest] > 0.5).float() == ct[:, rest]).float().mean()  # noqa: E731
    err = lambda r: (r.probs[:, rest] - ct[:, rest]).abs().mean()  # noqa: E731
    print(f"\n14 of 28 groups := truth: task accuracy {(r0.y_pred == yt).float().mean():.3f} -> "
          f"{(r1.y_pred == yt).float().mean():.3f}; the other 56 concepts (not intervened on): accuracy "
          f"{acc(r0):.3f} -> {acc(r1):.3f}, mean |p - truth| {err(r0):.3f} -> {err(r1):.3f}\n")
    pols = ["random", "uncertainty", "cost_aware"]
    t = time.perf_counter()
    by_groups = intervention_curve(model, dm, pols, budgets=[0, 1, 2, 4, 8, 14], groups=groups, costs=costs)
    print(by_groups.table(3))
    print("\nmean cumulative cost (s) at each number of groups:")
    for p in pols:
        print(f"- {p}: " + ", ".join(f"{v:.1f}" for v in by_groups.cost[p]))
    print(f"\ngroup costs: {min(costs.values()):.1f} to {max(costs.values()):.1f} s, {sum(costs.values()):.0f} s in all")
    by_cost = intervention_curve(model, dm, pols, budgets=[0, 5, 10, 20, 40, 80], groups=groups, costs=costs,
                                 budget_by="cost")
    print()
    print(by_cost.table(3))
    print(f"\ncurves: {time.perf_counter() - t:.0f} s for {n_test} test examples")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["agreement", "curves", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the 8-concept ECBM")
    ap.add_argument("--curve-epochs", type=int, default=25, help="epochs of the 112-concept ECBM")
    ap.add_argument("--lr", type=float, default=3e-2, help="learning rate of the 112-concept ECBM")
    ap.add_argument("--n-test", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part in ("agreement", "both"):
        agreement(args.epochs)
    if args.part in ("curves", "both"):
        curves(args.curve_epochs, args.n_test, args.lr)


if __name__ == "__main__":
    main()
