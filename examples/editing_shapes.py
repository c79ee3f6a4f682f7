"""Editing a trained model on procedural Shapes: the numbers of docs/editing.md.

    python examples/editing_shapes.py                 # ~8 min on 2 shared CPU cores once the features
                                                      # are cached (encoding them: ~5 min, once)
    python examples/editing_shapes.py --parts remove repair

Features: frozen EfficientNet-Lite0 at 96 px input on 64 px images, computed once into the
feature cache (``--cache-dir``).

Parts:

* ``remove``  — Shapes ``confounded`` (``striped_background`` follows label parity with
  probability 0.9 in train/val; the sign flips in test). A CBM learns the spurious concept; one
  global edit, ``remove_concept striped_background`` (its head weights zeroed, 0.5 × weight moved
  into the bias), without retraining and without any target label, is evaluated on the flipped
  test split and on a de-confounded test split (``striped_background`` independent of the label).
* ``repair``  — training-free test-time repair from 4 labelled examples per class of the flipped
  test split (evaluated on the rest of it), for the same models.
* ``batching`` — a discrete key-value bottleneck on the same Shapes features: ``n`` counterfactual
  fixes (relabel ``n`` test images) applied one edit at a time vs as one batched
  ``retrain_values`` edit; efficacy, locality and source accuracy.
* ``cli``     — the same remove edit through ``bottlenecks edit CHECKPOINT EDITS.yaml``.

Results are printed as markdown tables and written to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from bottlenecks.data.modules import ShapesDataModule  # noqa: E402
from bottlenecks.editing import (  # noqa: E402
    TestTimeRepair,
    batching_table,
    compare_edit_batching,
    evaluate_edits,
)
from bottlenecks.layers import ConceptBottleneck, DiscreteKeyValueBottleneck  # noqa: E402
from bottlenecks.models.module import BottleneckModel  # noqa: E402
from bottlenecks.models.stages import CBMTrainingMode  # noqa: E402


def trainer(epochs: int, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, deterministic=True, callbacks=callbacks or [],
                     num_sanity_val_steps=0, limit_val_batches=0)


def shapes(args: argparse.Namespace, confounded: bool, **kw) -> ShapesDataModule:
    """Confounded Shapes; or (``confounded=False``) only a de-confounded test split of the same size
    (its train/val splits are kept tiny: they are not used)."""
    t = time.perf_counter()
    sizes = (args.n_train, args.n_val) if confounded else (64, 64)
    dm = ShapesDataModule(n_train=sizes[0], n_val=sizes[1], n_test=args.n_test, confounded=confounded,
                          encoder={"name": "lite0", "image_size": args.image_size}, cache_dir=args.cache_dir,
                          batch_size=256, **kw)
    dm.setup()
    print(f"(features of {'confounded' if confounded else 'plain'} Shapes ready in {time.perf_counter() - t:.1f} s)")
    return dm


def xy(dm: ShapesDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = dm.split(split)
    return torch.as_tensor(s.x).float(), torch.as_tensor(s.y)


def fit_cbm(dm: ShapesDataModule, mode: str, epochs: int, seed: int = 0) -> BottleneckModel:
    L.seed_everything(seed, verbose=False)
    b = ConceptBottleneck(dm.feature_dim, concept_names=dm.concept_names)
    model = BottleneckModel(b, num_classes=dm.num_classes, lr=1e-2, weight_decay=1e-4, lr_schedule="constant")
    trainer(epochs, [CBMTrainingMode(mode)] if mode != "joint" else []).fit(model, dm)
    return model.eval()


def md(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def part_remove_and_repair(args: argparse.Namespace, results: dict, parts: list[str]) -> None:
    dm = shapes(args, confounded=True)
    plain = shapes(args, confounded=False)  # same concepts and label rule; striped independent of the label
    source = xy(dm, "val")  # held-out, confounded like train
    flipped = xy(dm, "test")
    deconf = xy(plain, "test")
    x_t, y_t = flipped
    support = torch.cat([torch.nonzero(y_t == k)[:4, 0] for k in range(dm.num_classes)])
    rest = torch.ones(len(y_t), dtype=torch.bool)
    rest[support] = False
    rows = []
    for mode in ("sequential", "joint"):
        t = time.perf_counter()
        model = fit_cbm(dm, mode, args.epochs)
        fit_s = time.perf_counter() - t
        if "remove" in parts:
            edit = {"kind": "remove_concept", "units": ["striped_background"], "value": 0.5}
            t = time.perf_counter()
            ev = evaluate_edits(model, [edit], source, flipped)
            ev_d = evaluate_edits(model, [edit], source, deconf)
            rows.append({"model": f"CBM {mode}", "edit": "remove striped_background (global)",
                         "source acc": f"{ev['source_acc']['before']:.4f} → {ev['source_acc']['after']:.4f}",
                         "flipped test acc": f"{ev['target_acc']['before']:.4f} → {ev['target_acc']['after']:.4f}",
                         "de-confounded test acc": f"{ev_d['target_acc']['before']:.4f} → {ev_d['target_acc']['after']:.4f}",
                         "locality (source changed)": ev["locality"]["after"], "labels used": 0,
                         "edit+eval s": time.perf_counter() - t, "fit s": fit_s})
            results[f"remove/{mode}"] = {"flipped": ev.to_dict(), "deconfounded": ev_d.to_dict()}
            print(f"\nCBM {mode}, remove striped_background — flipped test split:\n{ev.table()}")
        if "repair" in parts:
            t = time.perf_counter()
            rep = TestTimeRepair(x=x_t[support], y=y_t[support])
            ev = evaluate_edits(model, [rep], source, (x_t[rest], y_t[rest]), keep=True)
            info = model.edits.applied[-1].record.info
            model.edits.undo()
            ev_d = evaluate_edits(model, [TestTimeRepair(x=x_t[support], y=y_t[support])], source, deconf)
            rows.append({"model": f"CBM {mode}", "edit": f"repair, 4/class (masked {info['masked']}, "
                                                          f"amplified {info['amplified']})",
                         "source acc": f"{ev['source_acc']['before']:.4f} → {ev['source_acc']['after']:.4f}",
                         "flipped test acc": f"{ev['target_acc']['before']:.4f} → {ev['target_acc']['after']:.4f}",
                         "de-confounded test acc": f"{ev_d['target_acc']['before']:.4f} → {ev_d['target_acc']['after']:.4f}",
                         "locality (source changed)": ev["locality"]["after"], "labels used": int(len(support)),
                         "edit+eval s": time.perf_counter() - t, "fit s": fit_s})
            results[f"repair/{mode}"] = {"flipped_rest": ev.to_dict(), "deconfounded": ev_d.to_dict(), "info": info}
            print(f"\nCBM {mode}, repair from {len(support)} labelled shifted examples:\n{ev.table()}")
    cols = ["model", "edit", "source acc", "flipped test acc", "de-confounded test acc", "locality (source changed)",
            "labels used", "edit+eval s", "fit s"]
    print(f"\n## Confounded Shapes (n_train={args.n_train}, val={args.n_val}, test={args.n_test})\n")
    print(md(rows, cols))


def part_batching(args: argparse.Namespace, results: dict) -> None:
    dm = shapes(args, confounded=True)
    L.seed_everything(0, verbose=False)
    b = DiscreteKeyValueBottleneck(dm.feature_dim, num_heads=8, keys_per_head=64, top_k=1,
                                   value_dim=dm.num_classes, init="kmeans")
    model = BottleneckModel(b, num_classes=dm.num_classes, optimizer="sgd", lr=8.0, lr_schedule="constant")
    t = time.perf_counter()
    trainer(args.epochs).fit(model, dm)
    model.eval()
    x, y = xy(dm, "val")
    n = max(args.batch_sizes)
    src = (x[n:], y[n:])  # the other held-out images: locality and accuracy
    wanted = (y[:n] + 1) % dm.num_classes  # counterfactual: the next class
    t = time.perf_counter()
    rows = compare_edit_batching(
        model, lambda a, c: {"kind": "retrain_values", "x": a, "y": c, "steps": 200, "lr": 0.05},
        x[:n], wanted, source=src, sizes=args.batch_sizes)
    took = time.perf_counter() - t
    print(f"\n## One by one vs batched key-value edits (DKVB 8x64 keys, top-1; {took:.0f} s)\n")
    print(batching_table(rows))
    results["batching"] = rows


def part_cli(args: argparse.Namespace, results: dict, out: Path) -> None:
    """Train through the CLI (confounded Shapes, joint CBM), then ``bottlenecks edit``."""
    import numpy as np
    import yaml

    from bottlenecks.cli import main

    run = out / "cli"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    run.mkdir(parents=True)
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": args.epochs, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(run), "num_sanity_val_steps": 0,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel",
                  "init_args": {"lr": 1e-2, "weight_decay": 1e-4, "lr_schedule": "constant",
                                "bottleneck": {"class_path": "bottlenecks.layers.ConceptBottleneck"}}},
        "data": {"class_path": "bottlenecks.data.modules.ShapesDataModule",
                 "init_args": {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
                               "confounded": True, "batch_size": 256, "cache_dir": args.cache_dir,
                               "encoder": {"name": "lite0", "image_size": args.image_size}}},
    }
    (run / "fit.yaml").write_text(yaml.safe_dump(config))
    print(f"\n$ bottlenecks fit --config {run / 'fit.yaml'}")
    main(["fit", "--config", str(run / "fit.yaml")])
    dm = shapes(args, confounded=True)
    for name, (x, y) in {"source": xy(dm, "val"), "flipped": xy(dm, "test")}.items():
        np.savez(run / f"{name}.npz", x=x.numpy(), y=y.numpy())
    (run / "edits.yaml").write_text(
        "edits:\n  - kind: remove_concept\n    units: [striped_background]\n    value: 0.5\n"
        "evaluate:\n  source: source.npz\n  target: flipped.npz\n")
    print(f"\n$ bottlenecks edit {run / 'ckpt' / 'last.ckpt'} {run / 'edits.yaml'}")
    t = time.perf_counter()
    main(["edit", str(run / "ckpt" / "last.ckpt"), str(run / "edits.yaml")])
    results["cli_edit_s"] = time.perf_counter() - t
    print(f"(bottlenecks edit took {results['cli_edit_s']:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["remove", "repair", "batching", "cli"])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--cache-dir", default=".cache/features")
    ap.add_argument("--out", default="runs/editing_shapes")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args)}
    if {"remove", "repair"} & set(args.parts):
        part_remove_and_repair(args, results, args.parts)
    if "batching" in args.parts:
        part_batching(args, results)
    if "cli" in args.parts:
        part_cli(args, results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
