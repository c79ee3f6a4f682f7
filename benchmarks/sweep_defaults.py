"""Sweep of the training defaults of the gradient-trained concept bottlenecks.

    python benchmarks/sweep_defaults.py                    # every dataset, CBM + CEM + ECBM, 2 seeds
    python benchmarks/sweep_defaults.py --quick            # the toy, CBM, 4 settings, 1 seed (~1 min)
    python benchmarks/sweep_defaults.py --models cbm --datasets toy digits --seeds 0 1 2
    python benchmarks/sweep_defaults.py --table runs/sweep_*/sweep_defaults.json   # one table over every sweep file
    python benchmarks/sweep_defaults.py --leakage --seeds 0 1   # true-concept accuracy vs concept_loss_weight

Models: the joint CBM (:class:`~bottlenecks.layers.concept.ConceptBottleneck`, linear
predictor, the head reads probabilities), CEM and ECBM, all trained by
:class:`~bottlenecks.models.BottleneckModel` through a Lightning ``Trainer`` exactly as a
user would (the independent and sequential CBM modes are exact convex fits and not swept).

Grid: learning rate x schedule (constant, cosine, 5% warmup then cosine, cooldown) x budget
(epochs) at weight decay 1e-4, then weight decay {0, 1e-4, 1e-3, 1e-2} at the best of
that stage and at the package's defaults (``--lrs``, ``--schedules``, ``--epochs``,
``--weight-decays``, ``--concept-loss-weights`` narrow or widen it; docs/defaults.md lists
the grids that were run). Each setting is run with every seed; the best
setting is chosen on mean **validation** task accuracy and reported by mean **test**
accuracy. The default row uses what :class:`BottleneckModel` resolves when these options are
left unset (so the table follows the code) at ``--default-epochs`` epochs.

Datasets (features in memory, batch 256, ``ArrayDataModule``):

* ``toy`` — the issue's toy: 16 Gaussian features, concepts = signs of x0..x3 (features
  then perturbed by 5% noise), label c0 + 2 c1, 2000/500/500 rows.
* ``toy_wide`` — its variant: 64 features, 6 concepts (signs of x0..x5, 10% noise), label
  c0 + 2 c1 + 4 c2 (8 classes; c3..c5 are unrelated to the label), 1000/300/300 rows.
* ``shapes`` — the main job's data: procedural Shapes 10k/2k/2k through frozen
  EfficientNet-Lite0 at 96 px (the cache of ``configs/cbm_shapes.yaml``; encoded once).
* ``shapes_imb_noisy`` — Shapes made harder: train keeps 20% of the rows of classes 5..8
  (imbalance), 3000 rows; 15% of train and val labels replaced by another class; test clean.
* ``digits`` — sklearn's 8x8 digits (64 pixel features) with seven-segment concepts: each
  digit's class-level segments a..g of its seven-segment rendering (unique per digit).
* ``cub_layout`` — a CUB-200-2011-layout folder written here (Shapes renders as the
  images, 9 classes x 80 images (official split 3:1, a quarter of train held out for val), the 10 Shapes concepts as attributes, 10% of per-image
  attribute labels flipped and marked "guessing"), read by ``CUBDataModule`` with the
  majority filter of Koh et al. (class-level concepts) and encoded by Lite0 at 64 px.

Columns: task accuracy (test), mean per-concept accuracy (test) and, for the CBM, the test
task accuracy when every true concept is given (``all-true``; a joint model that leaks task
information through its concept probabilities loses accuracy here). The table is printed
and written with every run to ``<out>/sweep_defaults.json``; results are appended as runs
finish, so a stopped sweep keeps what ran.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _concept_data import sign_toy  # noqa: E402  (the issue's toy, shared with tests/test_defaults.py)

SCHEDULES = {  # name -> BottleneckModel options
    "constant": {"lr_schedule": "constant", "warmup_fraction": 0.0},
    "cosine": {"lr_schedule": "cosine", "warmup_fraction": 0.0},
    "warmup_cosine": {"lr_schedule": "cosine", "warmup_fraction": 0.05},
    "cooldown": {"lr_schedule": "cooldown", "warmup_fraction": 0.0},
}
LRS = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the first sweep ran these x constant/cosine/warmup_cosine
EPOCHS = (15, 40)
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
SEVEN_SEGMENTS = {  # segments a (top) b (upper right) c (lower right) d (bottom) e (lower left) f (upper left) g (middle)
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg", 5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg", 9: "abcdfg",
}


# ---------------------------------------------------------------------------- datasets
def toy() -> dict:
    return sign_toy((2000, 500, 500), dim=16, n_concepts=4, label_bits=2, noise=0.05, seed=0)


def toy_wide() -> dict:
    return sign_toy((1000, 300, 300), dim=64, n_concepts=6, label_bits=3, noise=0.10, seed=1)


def _from_datamodule(dm: Any) -> dict:
    dm.setup()
    arrays = {}
    for split in ("train", "val", "test"):
        b = dm.split(split)
        arrays.update({f"x_{split}": b.x, f"y_{split}": b.y, f"concepts_{split}": b.concepts})
    names = list(dm.concept_names or [])  # digits: none (its concepts are added by digits())
    return {"arrays": {k: v for k, v in arrays.items() if v is not None}, "concept_names": names,
            "num_classes": int(dm.num_classes)}


def shapes(cache_dir: str) -> dict:
    from bottlenecks.data.modules import ShapesDataModule

    return _from_datamodule(ShapesDataModule(encoder={"name": "lite0", "image_size": 96}, cache_dir=cache_dir))


def shapes_imb_noisy(cache_dir: str) -> dict:
    d = shapes(cache_dir)
    a = {k: torch.as_tensor(v).clone() for k, v in d["arrays"].items()}
    g = torch.Generator().manual_seed(14)
    y = a["y_train"]
    keep = (y < 5) | (torch.rand(len(y), generator=g) < 0.2)
    idx = torch.nonzero(keep).squeeze(1)[:3000]
    for p in ("x", "y", "concepts"):
        a[f"{p}_train"] = a[f"{p}_train"][idx]
    for split in ("train", "val"):
        y = a[f"y_{split}"]
        flip = torch.rand(len(y), generator=g) < 0.15
        other = (y + torch.randint(1, 9, y.shape, generator=g)) % 9  # a uniformly random *other* class
        a[f"y_{split}"] = torch.where(flip, other, y)
    return {**d, "arrays": a}


def digits() -> dict:
    from bottlenecks.data.modules import DigitsDataModule

    d = _from_datamodule(DigitsDataModule())
    table = torch.tensor([[float(s in SEVEN_SEGMENTS[k]) for s in "abcdefg"] for k in range(10)])
    for split in ("train", "val", "test"):
        d["arrays"][f"concepts_{split}"] = table[torch.as_tensor(d["arrays"][f"y_{split}"])]
    d["concept_names"] = [f"segment_{s}" for s in "abcdefg"]
    return d


def write_cub_layout(root: Path, per_class: int = 80, seed: int = 0) -> Path:
    """A CUB-200-2011-layout folder whose images are Shapes renders (9 classes)."""
    from PIL import Image

    from bottlenecks.data.shapes import ShapesDataset

    root = root / "CUB_200_2011"
    if (root / "attributes" / "image_attribute_labels.txt").is_file():
        return root
    ds = ShapesDataset(split="train", n=per_class * 12, seed=seed + 100, image_size=64, return_masks=False)
    y = ds.targets()
    c = ds.concept_table()
    picked = [i for k in range(9) for i in torch.nonzero(y == k).squeeze(1)[:per_class].tolist()]
    g = np.random.default_rng(seed)
    (root / "attributes").mkdir(parents=True, exist_ok=True)
    names = {}
    lines = []
    for image_id, i in enumerate(picked, start=1):
        k = int(y[i])
        folder = f"{k + 1:03d}.{ds.class_names[k].replace(' ', '_')}"
        names[image_id] = f"{folder}/shape_{image_id:04d}.jpg"
        path = root / "images" / names[image_id]
        path.parent.mkdir(parents=True, exist_ok=True)
        image, _ = ds.render(i)
        Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(path, quality=95)
        for a, value in enumerate(c[i].tolist(), start=1):
            flip = g.random() < 0.1
            lines.append(f"{image_id} {a} {int(value) ^ int(flip)} {2 if flip else 4} 1.0\n")
    ids = sorted(names)
    (root / "images.txt").write_text("".join(f"{i} {names[i]}\n" for i in ids))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {int(y[picked[i - 1]]) + 1}\n" for i in ids))
    (root / "train_test_split.txt").write_text("".join(f"{i} {int(i % 4 != 0)}\n" for i in ids))
    (root / "classes.txt").write_text(
        "".join(f"{k + 1} {k + 1:03d}.{n.replace(' ', '_')}\n" for k, n in enumerate(ds.class_names))
    )
    (root / "attributes" / "attributes.txt").write_text("".join(f"{a + 1} has_{n}\n" for a, n in enumerate(ds.concept_names)))
    (root / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    return root


def cub_layout(cache_dir: str) -> dict:
    from bottlenecks.data.modules import CUBDataModule

    root = write_cub_layout(Path(cache_dir).parent / "cub_layout")
    return _from_datamodule(
        CUBDataModule(str(root), image_size=64, min_class_count=2, val_fraction=0.25, encoder={"name": "lite0", "image_size": 64},
                      cache_dir=cache_dir)
    )


DATASETS = {
    "toy": lambda cache: toy(),
    "toy_wide": lambda cache: toy_wide(),
    "digits": lambda cache: digits(),
    "cub_layout": cub_layout,
    "shapes_imb_noisy": shapes_imb_noisy,
    "shapes": shapes,
}


# ------------------------------------------------------------------------------- runs
def build_bottleneck(model: str, data: dict) -> Any:
    from bottlenecks.layers.cem import ConceptEmbeddingBottleneck
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.layers.ecbm import EnergyConceptBottleneck

    d = int(data["arrays"]["x_train"].shape[1])
    names = data["concept_names"]
    if model == "cbm":
        return ConceptBottleneck(d, concept_names=names)
    if model == "cem":
        return ConceptEmbeddingBottleneck(d, concept_names=names)
    if model == "ecbm":
        return EnergyConceptBottleneck(d, num_classes=data["num_classes"], concept_names=names)
    raise ValueError(f"unknown model {model!r}; expected cbm, cem or ecbm")


def model_defaults(model: str, data: dict) -> dict[str, Any]:
    """The swept options as :class:`BottleneckModel` resolves them when left unset (its own
    defaults and the bottleneck's ``training_defaults()``)."""
    from bottlenecks.models.module import BottleneckModel

    m = BottleneckModel(build_bottleneck(model, data), num_classes=data["num_classes"])
    return {k: m.hparams[k] for k in ("lr", "weight_decay", "lr_schedule", "warmup_fraction")}


def schedule_name(options: dict[str, Any]) -> str:
    for name, opts in SCHEDULES.items():
        if all(options.get(k) == v for k, v in opts.items()):
            return name
    return f"{options['lr_schedule']}+warmup{options['warmup_fraction']}"


def train_once(model: str, data: dict, options: dict[str, Any], epochs: int, seed: int) -> dict[str, float]:
    """Fit one model through a Lightning Trainer; accuracies of the final weights."""
    import lightning as L

    from bottlenecks.data.datamodule import ArrayDataModule
    from bottlenecks.models.module import BottleneckModel

    L.seed_everything(seed, verbose=False)
    dm = ArrayDataModule.from_arrays(**data["arrays"], concept_names=data["concept_names"], seed=seed)
    m = BottleneckModel(build_bottleneck(model, data), num_classes=data["num_classes"], **options)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu")
    t0 = time.perf_counter()
    trainer.fit(m, dm)
    seconds = time.perf_counter() - t0
    m.eval()
    out = {"seconds": seconds}
    with torch.no_grad():
        for split in ("val", "test"):
            x = torch.as_tensor(data["arrays"][f"x_{split}"]).float()
            y = torch.as_tensor(data["arrays"][f"y_{split}"])
            c = torch.as_tensor(data["arrays"][f"concepts_{split}"]).float()
            y_hat, o = m(x)
            out[f"{split}_task_acc"] = float((y_hat.argmax(-1) == y).float().mean())
            labelled = ~torch.isnan(c)
            hit = ((o.concepts > 0).float() == c) & labelled
            out[f"{split}_concept_acc"] = float((hit.sum(0) / labelled.sum(0).clamp(min=1)).mean())
            if model == "cbm":  # every labelled concept given: the head on true concepts
                y_true_c, _ = m(x, concepts=c, intervention_mask=labelled)
                out[f"{split}_all_true_acc"] = float((y_true_c.argmax(-1) == y).float().mean())
    return out


def grid(quick: bool, default_epochs: int, lrs: list[float] = list(LRS), schedules: list[str] = list(SCHEDULES),
         epochs: list[int] = list(EPOCHS), concept_loss_weights: list[float] = [1.0],
         weight_decays: list[float] = list(WEIGHT_DECAYS),
         feature_scales: list[str | None] = [None]) -> tuple[list[tuple[dict, int]], list[float]]:
    """Stage-1 settings (lr x schedule x epochs [x concept_loss_weight] at weight decay 1e-4) and
    the stage-2 decays."""
    if quick:
        return [({"lr": lr, **SCHEDULES[s], "weight_decay": 1e-4}, default_epochs)
                for lr in (1e-2, 1e-1) for s in ("cosine", "cooldown")], []
    stage1 = [
        ({"lr": lr, **SCHEDULES[s], "weight_decay": 1e-4, **({} if w == 1.0 else {"concept_loss_weight": w}),
          **({} if f is None else {"feature_scale": f})}, e)
        for lr, s, e, w, f in itertools.product(lrs, schedules, epochs, concept_loss_weights, feature_scales)
    ]
    return stage1, list(weight_decays)


def key(options: dict, epochs: int) -> str:
    return json.dumps({**options, "epochs": epochs}, sort_keys=True)


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per setting key: mean of every metric over seeds, and the number of seeds."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["setting"], []).append(r)
    out = {}
    for k, rs in by.items():
        metrics = {m: statistics.fmean(r[m] for r in rs) for m in rs[0] if isinstance(rs[0][m], float)}
        out[k] = {**metrics, "seeds": len(rs)}
    return out


def sweep(model: str, name: str, data: dict, seeds: list[int], quick: bool, default_epochs: int,
          done: list[dict], record: Any, **grid_args: Any) -> dict:
    default_options = model_defaults(model, data)
    old_options = OLD_DEFAULTS
    stage1, decays = grid(quick, default_epochs, **grid_args)
    have = {(r["setting"], r["seed"]) for r in done if r["model"] == model and r["dataset"] == name}

    def run_all(settings: list[tuple[dict, int]]) -> None:
        for options, epochs in settings:
            for seed in seeds:
                k = key(options, epochs)
                if (k, seed) in have:
                    continue
                res = train_once(model, data, options, epochs, seed)
                row = {"model": model, "dataset": name, "setting": k, "seed": seed, **res}
                have.add((k, seed))
                record(row)

    base = [(default_options, default_epochs), (old_options, default_epochs)]
    run_all(base + stage1)
    mine = lambda: [r for r in done if r["model"] == model and r["dataset"] == name]  # noqa: E731
    stats = summarise(mine())
    grid_keys = {key(o, e) for o, e in stage1}
    best1 = max((k for k in stats if k in grid_keys), key=lambda k: stats[k]["val_task_acc"])
    best_options = {k: v for k, v in json.loads(best1).items() if k != "epochs"}
    stage2 = []
    for wd in decays:
        stage2.append(({**best_options, "weight_decay": wd}, json.loads(best1)["epochs"]))
        stage2.append(({**default_options, "weight_decay": wd}, default_epochs))
    run_all(stage2)
    return compare(mine(), model, name, default_options, default_epochs)


OLD_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "cosine", "warmup_fraction": 0.0}


def compare(runs: list[dict], model: str, name: str, default_options: dict, default_epochs: int) -> dict:
    """Best setting (by mean validation task accuracy, among the settings run with the most
    seeds) against the default and the old default, from every run of one model on one dataset."""
    stats = summarise([r for r in runs if r["model"] == model and r["dataset"] == name])
    most = max(v["seeds"] for v in stats.values())
    best = max((k for k in stats if stats[k]["seeds"] == most), key=lambda k: stats[k]["val_task_acc"])
    d, o = stats[key(default_options, default_epochs)], stats[key(OLD_DEFAULTS, default_epochs)]
    return {
        "model": model, "dataset": name, "best": json.loads(best), "best_stats": stats[best],
        "default": {**default_options, "epochs": default_epochs}, "default_stats": d,
        "old_default_stats": o, "gap": stats[best]["test_task_acc"] - d["test_task_acc"],
        "settings": len(stats),
    }


def table_from_files(files: list[str], default_epochs: int, cache_dir: str, out: Path) -> list[dict]:
    """The table over every run in ``files``; default rows the current code would use and no
    file has are trained first (for the seeds of that model and dataset) and kept in
    ``<out>/sweep_defaults_rows.json``."""
    extra_path = out / "sweep_defaults_rows.json"
    extra = json.loads(extra_path.read_text())["runs"] if extra_path.is_file() else []
    unique = {}  # a setting and seed run by two sweeps (same data, same seed) counts once
    for r in [r for f in files for r in json.loads(Path(f).read_text())["runs"]] + extra:
        unique.setdefault((r["model"], r["dataset"], r["setting"], r["seed"]), r)
    runs = list(unique.values())
    seen = set(unique)
    rows = []
    for name in DATASETS:
        data = None
        for model in ("cbm", "cem", "ecbm"):
            group = [r for r in runs if r["model"] == model and r["dataset"] == name]
            if not group:
                continue
            data = data or DATASETS[name](cache_dir)
            options = model_defaults(model, data)
            for opts in (options, OLD_DEFAULTS):
                k = key(opts, default_epochs)
                for seed in sorted({r["seed"] for r in group}):
                    if (model, name, k, seed) not in seen:
                        row = {"model": model, "dataset": name, "setting": k, "seed": seed,
                               **train_once(model, data, opts, default_epochs, seed)}
                        runs.append(row)
                        extra.append(row)
                        seen.add((model, name, k, seed))
                        extra_path.write_text(json.dumps({"runs": extra}, indent=1))
            rows.append(compare(runs, model, name, options, default_epochs))
    (out / "sweep_defaults_table.json").write_text(json.dumps(rows, indent=1))
    return rows


def leakage_table(seeds: list[int], out: Path) -> list[dict]:
    """The joint CBM on the two toys: task accuracy, and task accuracy given every true concept,
    at the issue's lr 1e-2 and at the defaults, for concept_loss_weight 1, 5 and 20 (15 epochs)."""
    rows = []
    for name in ("toy", "toy_wide"):
        data = DATASETS[name]("")
        for label, options in (("lr 1e-2 (issue)", {"lr": 1e-2}), ("defaults", {})):
            for weight in (1.0, 5.0, 20.0):
                res = [train_once("cbm", data, {**options, "concept_loss_weight": weight}, 15, s) for s in seeds]
                row = {"dataset": name, "setting": label, "concept_loss_weight": weight,
                       **{m: statistics.fmean(r[m] for r in res) for m in ("test_task_acc", "test_concept_acc",
                                                                           "test_all_true_acc")}}
                rows.append(row)
                print(f"| {name} | {label} | {weight:g} | {row['test_task_acc']:.3f} | {row['test_concept_acc']:.3f} "
                      f"| {row['test_all_true_acc']:.3f} |", flush=True)
    (out / "leakage.json").write_text(json.dumps(rows, indent=1))
    return rows


def fmt_setting(s: dict) -> str:
    weight = f", λ {s['concept_loss_weight']:g}" if "concept_loss_weight" in s else ""
    scale = f", {s['feature_scale']} scale" if "feature_scale" in s else ""
    return f"lr {s['lr']:g}, wd {s['weight_decay']:g}, {schedule_name(s)}, {s['epochs']} ep{weight}{scale}"


def print_table(rows: list[dict]) -> None:
    head = ("| model | dataset | best (by val) | test acc | concept acc | default: test acc | concept acc "
            "| gap | old default (lr 1e-3, wd 0, cosine) | all-true: default / old |")
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        b, d, o = r["best_stats"], r["default_stats"], r["old_default_stats"]
        at = f"{d['test_all_true_acc']:.3f} / {o['test_all_true_acc']:.3f}" if "test_all_true_acc" in d else "-"
        print(f"| {r['model']} | {r['dataset']} | {fmt_setting(r['best'])} | {b['test_task_acc']:.3f} | "
              f"{b['test_concept_acc']:.3f} | {d['test_task_acc']:.3f} | {d['test_concept_acc']:.3f} | "
              f"{100 * r['gap']:+.1f} pt | {o['test_task_acc']:.3f} | {at} |")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the toy, CBM, 2 learning rates x 2 schedules, 1 seed")
    ap.add_argument("--models", nargs="+", default=["cbm", "cem", "ecbm"], choices=["cbm", "cem", "ecbm"])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--lrs", nargs="+", type=float, default=list(LRS), help="learning rates of the grid")
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--epochs", nargs="+", type=int, default=list(EPOCHS), help="budgets of the grid")
    ap.add_argument("--concept-loss-weights", nargs="+", type=float, default=[1.0],
                    help="concept_loss_weight values of the grid (1 = the model's default, not in the setting's key)")
    ap.add_argument("--feature-scales", nargs="+", default=[None], choices=["shared", "per_feature"],
                    help="also sweep BottleneckModel's feature_scale (default: the bottleneck's own)")
    ap.add_argument("--weight-decays", nargs="+", type=float, default=list(WEIGHT_DECAYS), help="stage-2 decays")
    ap.add_argument("--default-epochs", type=int, default=15, help="budget of the default row (the shipped configs')")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "features"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "sweep_defaults"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--leakage", action="store_true",
                    help="only the all-true-concepts table of the joint CBM on the toys (concept_loss_weight 1/5/20)")
    ap.add_argument("--table", nargs="+", metavar="JSON",
                    help="the table over every run of these sweep files (missing default rows are trained)")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.datasets, args.seeds = ["cbm"], ["toy"], [0]
    torch.set_num_threads(args.threads)
    import lightning  # noqa: F401  (configures its loggers; quieted below)

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    for logger in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        rows = table_from_files(args.table, args.default_epochs, args.cache_dir, out)
        print(f"load {open('/proc/loadavg').read().split()[:3]}, torch threads {args.threads}")
        print_table(rows)
        return rows
    path = out / ("sweep_defaults_quick.json" if args.quick else "sweep_defaults.json")
    if args.leakage:
        print("| dataset | setting | concept_loss_weight | task acc | concept acc | task acc, every true concept given |")
        print("|---|---|---|---|---|---|")
        return leakage_table(args.seeds, out)
    saved = json.loads(path.read_text()) if path.is_file() else {"runs": [], "summary": []}
    runs: list[dict] = saved["runs"]

    def record(row: dict) -> None:
        runs.append(row)
        print(f"  {row['model']:4s} {row['dataset']:16s} seed {row['seed']} {row['setting']}: val {row['val_task_acc']:.3f} "
              f"test {row['test_task_acc']:.3f} concepts {row['test_concept_acc']:.3f} ({row['seconds']:.1f} s)",
              flush=True)
        path.write_text(json.dumps({"runs": runs, "summary": saved["summary"]}, indent=1))

    summary = [s for s in saved["summary"] if (s["model"], s["dataset"]) not in
               {(m, d) for m in args.models for d in args.datasets}]
    for name in args.datasets:
        data = DATASETS[name](args.cache_dir)
        for model in args.models:
            summary.append(sweep(model, name, data, args.seeds, args.quick, args.default_epochs, runs, record,
                                 lrs=args.lrs, schedules=args.schedules, epochs=args.epochs,
                                 concept_loss_weights=args.concept_loss_weights, weight_decays=args.weight_decays,
                                 feature_scales=args.feature_scales))
            saved["summary"] = summary
            path.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    print(f"\nload {open('/proc/loadavg').read().split()[:3]}, torch threads {args.threads}; {path}")
    print_table(summary)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
