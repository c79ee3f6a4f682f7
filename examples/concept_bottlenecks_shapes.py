"""Concept bottleneck variants on procedural Shapes: the numbers of docs/concepts.md.

    python examples/concept_bottlenecks_shapes.py              # everything (~15-30 min on 2 CPU cores
                                                               #  once the lite0 features are cached)
    python examples/concept_bottlenecks_shapes.py --parts modes curves

Features: frozen EfficientNet-Lite0 at 96 px input (``--image-size``), as in the configs; they are
computed once into the shared feature cache.

Parts:

* ``modes``   — concept and task accuracy (test) of CBM joint / sequential / independent (soft and
  hard), CEM and ECBM, next to a black-box linear probe on the same frozen lite0 features.
* ``curves``  — intervention curves (random / uncertainty / expected change, budgets 0..10) for the
  joint CBM, CEM and ECBM; a PNG per model.
* ``low_data`` — the same curves when the models see only 300 training images (concept
  predictions are then imperfect, so the policies differ).
* ``propagation`` — Shapes with ``cooccurrence=1`` (red ⇔ circle): fixing ``red := 1`` on images
  that are not red; how much the predicted probability of ``circle`` moves in ECBM and in a CBM.
* ``confounded`` — Shapes ``confounded`` split (``striped_background`` follows label parity in
  train/val, the sign flips in test): the label head's weights on ``striped_background`` and the
  accuracy drop train → test, for sequential, independent and joint CBMs.

Results are printed as markdown tables and written to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from bottlenecks.analysis import (  # noqa: E402
    concept_leakage,
    intervene,
    intervention_curve,
    plot_intervention_curves,
)
from bottlenecks.analysis.probes import linear_probe  # noqa: E402
from bottlenecks.data.modules import ShapesDataModule  # noqa: E402
from bottlenecks.layers.cem import ConceptEmbeddingBottleneck  # noqa: E402
from bottlenecks.layers.concept import ConceptBottleneck  # noqa: E402
from bottlenecks.layers.ecbm import EnergyConceptBottleneck  # noqa: E402
from bottlenecks.models.module import BottleneckModel  # noqa: E402
from bottlenecks.models.stages import CBMTrainingMode  # noqa: E402


def encoder_spec(args: argparse.Namespace) -> dict:
    """Frozen EfficientNet-Lite0; 96 px input as in configs/*_shapes.yaml (the 64 px images upsampled)."""
    return {"name": "lite0", "image_size": args.image_size}


def make_trainer(epochs: int, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True, callbacks=callbacks or [],
        num_sanity_val_steps=0, limit_val_batches=0,
    )


def build(kind: str, dm: ShapesDataModule, hard: bool = False) -> BottleneckModel:
    d, names, m = dm.feature_dim, dm.concept_names, dm.num_classes
    if kind in ("cbm", "cbm+residual"):
        b = ConceptBottleneck(d, concept_names=names, hard=hard, num_residual=8 if kind == "cbm+residual" else 0)
        return BottleneckModel(b, num_classes=m, lr=1e-2, weight_decay=1e-4, lr_schedule="constant")
    if kind == "cem":
        return BottleneckModel(ConceptEmbeddingBottleneck(d, concept_names=names, embedding_dim=16), num_classes=m,
                               lr=3e-3, weight_decay=1e-4)
    if kind == "ecbm":
        return BottleneckModel(EnergyConceptBottleneck(d, num_classes=m, concept_names=names), num_classes=m,
                               lr=3e-3, weight_decay=1e-4)
    raise ValueError(kind)


def fit(kind: str, dm: ShapesDataModule, epochs: int, mode: str | None = None, hard: bool = False,
        seed: int = 0) -> tuple[BottleneckModel, float]:
    L.seed_everything(seed, verbose=False)
    model = build(kind, dm, hard=hard)
    callbacks = [CBMTrainingMode(mode)] if mode else []
    t = time.perf_counter()
    make_trainer(epochs, callbacks).fit(model, dm)
    return model.eval(), time.perf_counter() - t


@torch.no_grad()
def evaluate(model: BottleneckModel, dm: ShapesDataModule, split: str) -> dict[str, float]:
    s = dm.split(split)
    y_hat, out = model(s.x.float())
    probs = torch.sigmoid(out.concepts) if out.concepts is not None else None
    res = {"task_acc": float((y_hat.argmax(-1) == s.y).float().mean())}
    if probs is not None and s.concepts is not None:
        per = ((probs > 0.5).float() == s.concepts).float().mean(0)
        res["concept_acc"] = float(per.mean())
        res["per_concept_acc"] = {n: float(v) for n, v in zip(dm.concept_names, per)}
    return res


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def part_modes(dm: ShapesDataModule, epochs: int, results: dict, models: dict) -> None:
    tr, va, te = dm.split("train"), dm.split("val"), dm.split("test")
    probe = linear_probe(tr.x, tr.y, va.x, va.y, te.x, te.y)
    rows = [{"model": "linear probe (black box)", "concept_acc": "-", "task_acc": probe.test, "fit_s": "-"}]
    for name, kind, mode, hard in [
        ("CBM joint (soft)", "cbm", "joint", False),
        ("CBM joint (hard)", "cbm", "joint", True),
        ("CBM sequential (soft)", "cbm", "sequential", False),
        ("CBM sequential (hard)", "cbm", "sequential", True),
        ("CBM independent (soft)", "cbm", "independent", False),
        ("CBM independent (hard)", "cbm", "independent", True),
        ("CBM joint + 8 residual units", "cbm+residual", "joint", False),
        ("CEM", "cem", None, False),
        ("ECBM", "ecbm", None, False),
    ]:
        model, secs = fit(kind, dm, epochs, mode, hard)
        ev = evaluate(model, dm, "test")
        rows.append({"model": name, "concept_acc": ev["concept_acc"], "task_acc": ev["task_acc"], "fit_s": round(secs, 1)})
        results.setdefault("modes", {})[name] = {**ev, "fit_seconds": secs}
        models[name] = model
        print(f"  {name}: concept {ev['concept_acc']:.4f} task {ev['task_acc']:.4f} ({secs:.0f}s)", flush=True)
    results["linear_probe"] = {"test": probe.test, "val": probe.val, "C": probe.C}
    leak = {name: concept_leakage(models[name], dm) for name in ("CBM joint (soft)", "CBM joint + 8 residual units")}
    results["leakage"] = leak
    print("\n## Modes on Shapes (test)\n")
    print(table(rows, ["model", "concept_acc", "task_acc", "fit_s"]))
    for name, m in leak.items():
        print(f"\nleakage, {name}: {json.dumps({k: round(v, 4) for k, v in m.items()})}")


def part_curves(dm: ShapesDataModule, epochs: int, results: dict, models: dict, out: Path) -> None:
    for name, kind, mode in [("CBM joint (soft)", "cbm", "joint"), ("CBM independent (soft)", "cbm", "independent"),
                             ("CEM", "cem", None), ("ECBM", "ecbm", None)]:
        model = models.get(name) or fit(kind, dm, epochs, mode)[0]
        t = time.perf_counter()
        curve = intervention_curve(model, dm, ["random", "uncertainty", "expected_change"], budgets=range(11),
                                   random_repeats=5)
        secs = time.perf_counter() - t
        results.setdefault("curves", {})[name] = {**curve.as_dict(), "seconds": secs}
        print(f"\n## Intervention curve: {name} (test task accuracy; random = mean of 5 seeds; {secs:.0f}s)\n")
        print(curve.table())
        ax = plot_intervention_curves(curve, title=f"{name} on Shapes")
        slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "")
        ax.figure.savefig(out / f"curve_{slug}.png", dpi=120, bbox_inches="tight")


def part_curves_low_data(dm: ShapesDataModule, args: argparse.Namespace, results: dict, out: Path) -> None:
    """The same curves when the concept predictor sees only ``--low-data-train`` training images.

    Shapes is a prefix-stable dataset: the first n rows of the cached 10k-image train split are
    the images of a train split of size n.
    """
    from bottlenecks.data.datamodule import ArrayDataModule

    n = args.low_data_train
    tr, va, te = dm.split("train"), dm.split("val"), dm.split("test")
    small = ArrayDataModule.from_arrays(
        x_train=tr.x[:n], y_train=tr.y[:n], concepts_train=tr.concepts[:n],
        x_val=va.x, y_val=va.y, concepts_val=va.concepts,
        x_test=te.x, y_test=te.y, concepts_test=te.concepts,
        concept_names=dm.concept_names, num_classes=dm.num_classes, batch_size=64)
    probe = linear_probe(tr.x[:n], tr.y[:n], va.x, va.y, te.x, te.y)
    summary = {"linear_probe_test": probe.test}
    print(f"\n## Low-data regime: {n} training images (linear probe test accuracy {probe.test:.4f})")
    for name, kind, mode in [("CBM joint (soft)", "cbm", "joint"), ("CBM independent (soft)", "cbm", "independent"),
                             ("CEM", "cem", None), ("ECBM", "ecbm", None)]:
        model, secs = fit(kind, small, args.epochs, mode)
        ev = evaluate(model, small, "test")
        t = time.perf_counter()
        curve = intervention_curve(model, small, ["random", "uncertainty", "expected_change"], budgets=range(11),
                                   random_repeats=5)
        summary[name] = {**curve.as_dict(), "concept_acc": ev["concept_acc"], "task_acc": ev["task_acc"],
                         "fit_seconds": secs, "curve_seconds": time.perf_counter() - t}
        print(f"\n### {name}: concept acc {ev['concept_acc']:.4f}, task acc {ev['task_acc']:.4f}\n")
        print(curve.table())
        ax = plot_intervention_curves(curve, title=f"{name}, {n} training images")
        slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "")
        ax.figure.savefig(out / f"curve_low_data_{slug}.png", dpi=120, bbox_inches="tight")
    results["curves_low_data"] = summary


def part_propagation(args: argparse.Namespace, results: dict) -> None:
    dm = ShapesDataModule(n_train=args.n_small_train, n_val=500, n_test=args.n_small_test, cooccurrence=1.0,
                          encoder=encoder_spec(args))
    dm.setup()
    te = dm.split("test")
    names = dm.concept_names
    red, circle = names.index("red"), names.index("circle")
    assert torch.equal(te.concepts[:, red], te.concepts[:, circle])
    rows, res = [], {}
    trained = {}
    for label, kind in [("CBM joint", "cbm"), ("ECBM", "ecbm")]:
        trained[label] = fit(kind, dm, args.epochs, "joint" if kind == "cbm" else None)[0]
    settings = [("CBM joint", trained["CBM joint"], None), ("ECBM", trained["ECBM"], 1.0),
                ("ECBM, λ_g = 4 at inference", trained["ECBM"], 4.0)]
    for label, model, global_weight in settings:
        if global_weight is not None:
            model.bottleneck.global_weight = global_weight
        ev = evaluate(model, dm, "test")
        for fixed, watched in [("red", "circle"), ("circle", "red")]:
            not_fixed = te.concepts[:, names.index(fixed)] == 0
            x = te.x[not_fixed].float()
            before = intervene(model, x, {}).probs[:, names.index(watched)]
            after_on = intervene(model, x, {fixed: 1.0}).probs[:, names.index(watched)]
            delta = float((after_on - before).mean())
            others = [i for i in range(len(names)) if names[i] not in (fixed, watched)]
            other_delta = float((intervene(model, x, {fixed: 1.0}).probs[:, others]
                                 - intervene(model, x, {}).probs[:, others]).abs().mean())
            row = {"model": label, "intervention": f"{fixed} := 1", "watched": watched,
                   "p_before": float(before.mean()), "p_after": float(after_on.mean()), "mean_change": delta,
                   "frac_above_half": float((after_on > 0.5).float().mean()),
                   "other_concepts_abs_change": other_delta, "task_acc": ev["task_acc"]}
            rows.append(row)
            res[f"{label}: {fixed}:=1 -> {watched}"] = row
    trained["ECBM"].bottleneck.global_weight = 1.0
    b = trained["ECBM"].bottleneck
    res["ecbm_p_circle_given_red"] = float(b.concept_given_concept(red, 1.0)[circle])
    res["ecbm_p_circle_given_not_red"] = float(b.concept_given_concept(red, 0.0)[circle])
    results["propagation"] = res
    print(f"\n## Propagation on Shapes cooccurrence=1.0 (test images whose fixed concept is 0, n_test={len(te.x)})\n")
    print(table(rows, ["model", "intervention", "watched", "p_before", "p_after", "mean_change",
                       "frac_above_half", "other_concepts_abs_change", "task_acc"]))
    print(f"\nECBM global energy: p(circle | red) = {res['ecbm_p_circle_given_red']:.4f}, "
          f"p(circle | not red) = {res['ecbm_p_circle_given_not_red']:.4f}")


def part_confounded(args: argparse.Namespace, results: dict) -> None:
    dm = ShapesDataModule(n_train=args.n_small_train, n_val=500, n_test=args.n_small_test, confounded=True,
                          encoder=encoder_spec(args))
    dm.setup()
    names = dm.concept_names
    s = names.index("striped_background")
    rows, res = [], {}
    odd = torch.arange(dm.num_classes) % 2 == 1
    for mode, hard in [("sequential", False), ("independent", False), ("joint", False),
                       ("sequential", True), ("independent", True)]:
        model, _ = fit("cbm", dm, args.epochs, mode, hard=hard)
        w = model.head.weight.detach()  # (classes, concepts): the label head on concept probabilities
        ev_tr, ev_te = evaluate(model, dm, "train"), evaluate(model, dm, "test")
        true_tr = intervene(model, dm.split("train").x.float(), dm.split("train").concepts)
        true_te = intervene(model, dm.split("test").x.float(), dm.split("test").concepts)
        acc_true_tr = float((true_tr.y_pred == dm.split("train").y).float().mean())
        acc_true_te = float((true_te.y_pred == dm.split("test").y).float().mean())
        others = [n for n in names if n != "striped_background"]
        x_te, y_te = dm.split("test").x.float(), dm.split("test").y
        p_striped = float(dm.split("train").concepts[:, s].mean())
        ablated = intervene(model, x_te, {"striped_background": p_striped})
        acc_ablated = float((ablated.y_pred == y_te).float().mean())
        row = {
            "mode": f"{mode} ({'hard' if hard else 'soft'})",
            "w_striped_odd_minus_even": float(w[odd, s].mean() - w[~odd, s].mean()),
            "mean_abs_w_striped": float(w[:, s].abs().mean()),
            "mean_abs_w_other": float(torch.cat([w[:, :s], w[:, s + 1:]], 1).abs().mean()),
            "train_acc": ev_tr["task_acc"], "test_acc": ev_te["task_acc"],
            "drop": ev_tr["task_acc"] - ev_te["task_acc"],
            "test_acc_striped_set_to_train_mean": acc_ablated,
            "train_acc_true_concepts": acc_true_tr, "test_acc_true_concepts": acc_true_te,
            "striped_concept_acc_test": ev_te["per_concept_acc"]["striped_background"],
            "other_concept_acc_train": sum(ev_tr["per_concept_acc"][n] for n in others) / len(others),
            "other_concept_acc_test": sum(ev_te["per_concept_acc"][n] for n in others) / len(others),
        }
        rows.append(row)
        res[row["mode"]] = {**row, "head_weights_striped": w[:, s].tolist()}
    results["confounded"] = res
    print(f"\n## Confounded Shapes (spurious_strength 0.9; n_train={args.n_small_train}, n_test={args.n_small_test})\n")
    print(table(rows, ["mode", "w_striped_odd_minus_even", "mean_abs_w_striped", "mean_abs_w_other",
                       "train_acc", "test_acc", "drop", "test_acc_striped_set_to_train_mean", "train_acc_true_concepts", "test_acc_true_concepts",
                       "striped_concept_acc_test", "other_concept_acc_train", "other_concept_acc_test"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["modes", "curves", "low_data", "propagation", "confounded"])
    ap.add_argument("--low-data-train", type=int, default=300, help="training images of the low-data curves")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=96, help="lite0 input size (features are cached per size)")
    ap.add_argument("--n-small-train", type=int, default=3000, help="train size of the cooccurrence/confounded runs")
    ap.add_argument("--n-small-test", type=int, default=1000)
    ap.add_argument("--out", default="runs/examples/concept_bottlenecks_shapes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args)}
    models: dict = {}
    if {"modes", "curves", "low_data"} & set(args.parts):
        dm = ShapesDataModule(encoder=encoder_spec(args))
        dm.setup()
        if "modes" in args.parts:
            part_modes(dm, args.epochs, results, models)
        if "curves" in args.parts:
            part_curves(dm, args.epochs, results, models, out)
        if "low_data" in args.parts:
            part_curves_low_data(dm, args, results, out)
    if "propagation" in args.parts:
        part_propagation(args, results)
    if "confounded" in args.parts:
        part_confounded(args, results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
