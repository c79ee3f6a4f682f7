"""The framework next to scikit-learn on the same frozen features and rows (issue 14).

Two measurements, printed as tables:

1. **Image folder + CSV through the CLI.** A concept-annotated image dataset that is not part
   of the repository is generated: 2400 images (64 px PNG) rendered by the procedural Shapes
   generator, 9 binary concepts — seven drawn (``red``, ``green``, ``circle``, ``square``,
   ``large``, ``pair``, ``outlined``) and two *invisible to the encoder* (``hidden_a``,
   ``hidden_b``: fair coins that are never drawn) — and a label defined by a rule over the
   concepts: ``label = 1 if red + circle + large + pair + hidden_a >= 3 else 0``. The CSV marks
   1800 rows ``train`` and 600 ``test`` (no ``val`` rows: the image-folder path picks its own
   validation rows). ``bottlenecks fit --config configs/cbm_{independent,sequential}_shapes.yaml``
   runs with only the data section changed (``ImageFolderDataModule``, Lite0 at 96 px), and
   scikit-learn's ``LogisticRegression(max_iter=1000)`` is fitted on the same cached features
   and on every training row of the CSV (a user with scikit-learn would use them all).
   Then the same images re-split ``--resplits`` times (1800 / 600 rows, seeds 100 + i), the
   exact fits run per split as ``CBMTrainingMode`` runs them: mean ± standard error, because
   one 600-row test set moves the task row by about a point (the label reads an invisible
   coin; :func:`resplit_table`).
2. **The 16-D Gaussian toy** from Python: features ``N(0, I)``, four concepts each the sign of
   one coordinate, the features then perturbed by 5 % noise, label ``c0 + 2 c1``, 2000/500/500
   rows, ``BottleneckModel(ConceptBottleneck(16, concept_names=list("abcd")), num_classes=4,
   lr=1e-2)`` with each training mode for 15 and 40 epochs.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sklearn_parity.py [--out DIR] [--skip-toy]
        [--resplits 8] [--feature-scale shared|per_feature] [--coins] [--joint-holdout]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

CONCEPTS = ["red", "green", "circle", "square", "large", "pair", "outlined", "hidden_a", "hidden_b"]
N_TRAIN, N_TEST = 1800, 600


# ------------------------------------------------------------------ the image dataset
def make_image_folder(root: Path, seed: int = 0) -> Path:
    """Write ``root/concepts.csv`` and ``root/images/*.png`` (skipped when already there)."""
    from PIL import Image

    from bottlenecks.data.shapes import ShapesDataset

    csv = root / "concepts.csv"
    if csv.is_file():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    n = N_TRAIN + N_TEST
    ds = ShapesDataset(split="train", n=n, seed=seed, image_size=64, return_masks=False)
    shapes_c = ds.concept_table().numpy()
    col = {name: i for i, name in enumerate(ds.concept_names)}
    rng = np.random.default_rng(seed + 1)
    hidden = (rng.random((n, 2)) < 0.5).astype(np.float32)
    table = np.concatenate([shapes_c[:, [col[c] for c in CONCEPTS[:7]]], hidden], axis=1)
    t = {c: table[:, i] for i, c in enumerate(CONCEPTS)}
    label = ((t["red"] + t["circle"] + t["large"] + t["pair"] + t["hidden_a"]) >= 3).astype(int)
    lines = ["image,label,split," + ",".join(CONCEPTS)]
    for i in range(n):
        image, _ = ds.render(i)
        rel = f"images/{i:05d}.png"
        Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(root / rel)
        split = "train" if i < N_TRAIN else "test"
        lines.append(f"{rel},{label[i]},{split}," + ",".join(str(int(v)) for v in table[i]))
    tmp = csv.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, csv)
    return root


def data_yaml(out: Path, root: Path) -> Path:
    path = out / "data.yaml"
    path.write_text(
        "class_path: bottlenecks.data.modules.ImageFolderDataModule\n"
        "init_args:\n"
        f"  root: {root}\n"
        "  image_size: 64\n"
        f"  cache_dir: {out / 'cache'}\n"
        "  encoder:\n"
        "    name: lite0\n"
        "    image_size: 96\n"
        "  batch_size: 256\n"
    )
    return path


def run_cli(mode: str, out: Path, data: Path) -> Path:
    """``bottlenecks fit --config configs/cbm_<mode>_shapes.yaml --data data.yaml``; the run folder."""
    from bottlenecks.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / f"cbm_{mode}_shapes.yaml"
    runs = out / "runs" / mode
    main(["fit", "--config", str(config), "--data", str(data), "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(runs), "--trainer.logger.init_args.save_dir", str(runs)])
    return max(runs.rglob("metrics.json"), key=lambda p: p.stat().st_mtime).parent


def image_datamodule(data: Path):  # noqa: ANN201
    import yaml

    from bottlenecks.data.modules import ImageFolderDataModule

    spec = yaml.safe_load(data.read_text())["init_args"]
    dm = ImageFolderDataModule(**spec)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@torch.no_grad()
def all_concepts_given(run_dir: Path, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> float:
    """Task accuracy of the tested checkpoint with every true concept given (an intervention on all)."""
    from bottlenecks.models.module import BottleneckModel

    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    best = [p for p in ckpts if p.name != "last.ckpt"] or ckpts
    model = BottleneckModel.load_from_checkpoint(best[0], map_location="cpu").eval()
    y_hat, _ = model(x, concepts=c, intervention_mask=~torch.isnan(c))
    return float((y_hat.argmax(-1) == y).float().mean())


def sklearn_columns(xtr, ctr, ytr, xte, cte, yte) -> dict[str, float]:  # noqa: ANN001
    """scikit-learn's LogisticRegression (max_iter=1000, everything else default) on the same features."""
    try:
        from bottlenecks.analysis.probes import sklearn_reference
    except ImportError:  # the checkout before issue 14 has no reference column: the same steps inline
        return _sklearn_reference_inline(xtr, ytr, ctr, xte, yte, cte)
    ref = sklearn_reference(xtr, ytr, ctr, xte, yte, cte)
    return {"concept_acc": ref["concept_acc"], "task_acc_independent": ref["task_independent"],
            "task_acc_sequential": ref["task_sequential"], "probe_acc": ref["probe"],
            "task_acc_all_concepts_given": ref["task_all_concepts_given"], "per_concept_acc": ref["per_concept_acc"]}


def _sklearn_reference_inline(xtr, ytr, ctr, xte, yte, cte) -> dict[str, float]:  # noqa: ANN001
    from sklearn.linear_model import LogisticRegression

    def lr() -> LogisticRegression:
        return LogisticRegression(max_iter=1000)

    xtr, xte, ytr, yte, ctr, cte = (np.asarray(a) for a in (xtr, xte, ytr, yte, ctr, cte))
    p_tr, p_te, accs = [], [], []
    for j in range(ctr.shape[1]):
        m = lr().fit(xtr, ctr[:, j])
        p_tr.append(m.predict_proba(xtr)[:, 1])
        p_te.append(m.predict_proba(xte)[:, 1])
        accs.append(float((m.predict(xte) == cte[:, j]).mean()))
    p_tr, p_te = np.stack(p_tr, 1), np.stack(p_te, 1)
    indep = lr().fit(ctr, ytr)
    seq = lr().fit(p_tr, ytr)
    return {
        "concept_acc": float(np.mean(accs)),
        "task_acc_independent": float((indep.predict(p_te) == yte).mean()),
        "task_acc_sequential": float((seq.predict(p_te) == yte).mean()),
        "probe_acc": float((lr().fit(xtr, ytr).predict(xte) == yte).mean()),
        "task_acc_all_concepts_given": float((indep.predict(cte) == yte).mean()),
    }


def image_table(out: Path) -> str:
    root = make_image_folder(out / "images_csv")
    data = data_yaml(out, root)
    fw: dict[str, dict] = {}
    for mode in ("independent", "sequential"):
        t0 = time.perf_counter()
        run = run_cli(mode, out, data)
        m = json.loads((run / "metrics.json").read_text())
        dm = image_datamodule(data)
        te = dm.split("test")
        x, c, y = torch.as_tensor(te.x).float(), torch.as_tensor(te.concepts).float(), torch.as_tensor(te.y)
        fw[mode] = {"concept_acc": m["test/concept_acc"], "task_acc": m["test/task_acc"],
                    "probe": m["linear_probe"]["test"], "all": all_concepts_given(run, x, c, y),
                    "seconds": time.perf_counter() - t0, "metrics": m}
    dm = image_datamodule(data)
    tr, va, te = dm.split("train"), dm.split("val"), dm.split("test")
    cat = lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)])  # noqa: E731
    sk = sklearn_columns(cat(tr.x, va.x), cat(tr.concepts, va.concepts), cat(tr.y, va.y),
                         np.asarray(te.x), np.asarray(te.concepts), np.asarray(te.y))
    i, s = fw["independent"], fw["sequential"]
    rows = [
        "| | this framework: independent | this framework: sequential | scikit-learn LogisticRegression, same features, every training row |",
        "|---|---|---|---|",
        f"| mean concept accuracy | {i['concept_acc']:.3f} | {s['concept_acc']:.3f} | {sk['concept_acc']:.3f} |",
        f"| task accuracy, CBM | {i['task_acc']:.3f} | {s['task_acc']:.3f} | "
        f"{sk['task_acc_independent']:.3f} (independent), {sk['task_acc_sequential']:.3f} (sequential) |",
        f"| linear probe (the run report's own) | {i['probe']:.3f} | {s['probe']:.3f} | {sk['probe_acc']:.3f} |",
        f"| task accuracy with every true concept given | {i['all']:.3f} | {s['all']:.3f} | "
        f"{sk['task_acc_all_concepts_given']:.3f} |",
        f"| seconds for `bottlenecks fit` (encoding cached) | {i['seconds']:.0f} | {s['seconds']:.0f} | |",
    ]
    for mode in ("independent", "sequential"):
        fit = fw[mode]["metrics"].get("exact_fit")
        if fit:
            rows.append(f"\n{mode}: exact fit {json.dumps(fit, sort_keys=True)}")
    return "\n".join(rows)


def all_rows(out: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image's cached features, concepts and label (train, val, test rows in order):
    ``(x float32, concepts float32, y int64)``, the pool the re-splits draw from."""
    dm = image_datamodule(data_yaml(out, make_image_folder(out / "images_csv")))
    dm.setup("test")
    parts = [dm.split(s) for s in ("train", "val", "test")]
    cat = lambda key: torch.cat([torch.as_tensor(getattr(p, key)) for p in parts])  # noqa: E731
    return cat("x").float(), cat("concepts").float(), cat("y").long()


def resplit(n: int, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of re-split ``split`` (seed ``100 + split``): ``N_TRAIN`` training rows, the rest test."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(100 + split))
    return perm[:N_TRAIN], perm[N_TRAIN:]


def resplit_table(out: Path, splits: int, feature_scale: str | None = None) -> str:
    """The same comparison over ``splits`` random 1800/600 re-splits of the 2400 images.

    One split's test rows decide little here: two concepts are coin flips the encoder cannot
    see, and the label reads one of them, so a 600-row test set moves the concept and task rows
    by about a point either way. Per split: a ``BottleneckModel(ConceptBottleneck)`` whose
    features are scaled as the model does at fit start, fitted by ``fit_cbm_exactly`` (what
    ``CBMTrainingMode`` runs for the CLI) on all 1800 training rows, and the run report's probe;
    scikit-learn as in :func:`sklearn_columns`. Mean and standard error over the splits.
    ``feature_scale``: the model's and the probe's feature scaling (None: the defaults).
    """
    from sklearn.linear_model import LogisticRegression

    from bottlenecks.analysis.probes import linear_probe
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.models.module import BottleneckModel
    from bottlenecks.models.stages import fit_cbm_exactly

    x_all, c_all, y_all = all_rows(out)
    names = ("concept_acc", "task_acc_independent", "task_acc_sequential", "probe_acc", "visible_concept_acc",
             "hidden_concept_acc", "hidden_majority_share")
    ours: dict[str, list[float]] = {k: [] for k in names}
    theirs: dict[str, list[float]] = {k: [] for k in names}
    majority: list[float] = []  # the invisible coins predicted by the training rows' majority
    visible = [i for i, c in enumerate(CONCEPTS) if not c.startswith("hidden")]
    hidden = [i for i, c in enumerate(CONCEPTS) if c.startswith("hidden")]
    for split in range(splits):
        tr, te = resplit(len(x_all), split)
        x, y, c, xt, yt, ct = x_all[tr], y_all[tr], c_all[tr], x_all[te], y_all[te], c_all[te]
        for mode in ("independent", "sequential"):
            model = BottleneckModel(ConceptBottleneck(x.shape[1], concept_names=CONCEPTS), num_classes=2,
                                    feature_scale=feature_scale)
            model.norm.fit(x)
            fit_cbm_exactly(model, {"x": x, "y": y, "concepts": c}, mode)
            with torch.no_grad():
                y_hat, o = model.eval()(xt)
            ours[f"task_acc_{mode}"].append(float((y_hat.argmax(-1) == yt).float().mean()))
        hits = ((o.probs > 0.5) == (ct > 0.5)).float().mean(0)
        ours["concept_acc"].append(float(hits.mean()))
        ours["visible_concept_acc"].append(float(hits[visible].mean()))
        ours["hidden_concept_acc"].append(float(hits[hidden].mean()))
        train_major = (c[:, hidden].mean(0) > 0.5).float()
        ours["hidden_majority_share"].append(float(((o.probs[:, hidden] > 0.5).float() == train_major).float().mean()))
        majority.append(float((ct[:, hidden] == train_major).float().mean()))
        n_fit = N_TRAIN * 9 // 10  # the run report's probe sees train and val rows, as the CLI splits them
        ours["probe_acc"].append(linear_probe(x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:], xt, yt,
                                              feature_scale=feature_scale or "shared").test)
        sk = sklearn_columns(x.numpy(), c.numpy(), y.numpy(), xt.numpy(), ct.numpy(), yt.numpy())
        for k in names[:4]:
            theirs[k].append(sk[k])
        theirs["visible_concept_acc"].append(float(np.mean([sk["per_concept_acc"][j] for j in visible])))
        theirs["hidden_concept_acc"].append(float(np.mean([sk["per_concept_acc"][j] for j in hidden])))
        theirs["hidden_majority_share"].append(float(np.mean([
            (LogisticRegression(max_iter=1000).fit(x.numpy(), c[:, j].numpy()).predict(xt.numpy())
             == float(c[:, j].mean() > 0.5)).mean() for j in hidden])))

    def cell(v: list[float]) -> str:
        return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
    rows = [f"mean ± standard error over {splits} re-splits (1800 train / 600 test rows each), "
            f"feature scale: {feature_scale or 'the defaults'}\n",
            "| | this framework (exact fits, the model's feature scaling) | scikit-learn LogisticRegression |",
            "|---|---|---|"]
    labels = {"concept_acc": "mean concept accuracy (9)", "visible_concept_acc": "mean concept accuracy, the 7 drawn",
              "task_acc_independent": "task accuracy, independent CBM", "task_acc_sequential": "task accuracy, sequential CBM",
              "probe_acc": "linear probe", "hidden_concept_acc": "mean concept accuracy, the 2 invisible",
              "hidden_majority_share": "invisible concepts: share of test predictions = the training majority"}
    for k, label in labels.items():
        rows.append(f"| {label} | {cell(ours[k])} | {cell(theirs[k])} |")
    rows.append(f"\nthe training rows' majority as the prediction for the 2 invisible coins scores {cell(majority)} on "
                "the test rows (a reference: with the 2400 images re-split, a split whose training rows hold more "
                "heads holds fewer in its test rows; see coin_table for how one draw of the coins moves these rows)")
    return "\n".join(rows)


def coin_table(out: Path, splits: int = 8, redraws: tuple[int, ...] = (7, 8)) -> str:
    """scikit-learn on the two invisible coins alone: the CSV's coins, the same images with the
    coins redrawn (seeds ``redraws``, fixed over the splits as the CSV's are), and fresh coins
    for every split — the same re-splits as :func:`resplit_table`. Shows how much of the
    invisible-coin accuracy above 0.5 belongs to one draw of the coins."""
    from sklearn.linear_model import LogisticRegression

    xt, ct, _ = all_rows(out)
    x = xt.double().numpy()
    hidden = [CONCEPTS.index("hidden_a"), CONCEPTS.index("hidden_b")]
    pools = {"the CSV's coins": ct[:, hidden].numpy()}
    for seed in redraws:
        pools[f"redrawn once (seed {seed})"] = (np.random.default_rng(seed).random((len(x), 2)) < 0.5).astype(float)
    pools["fresh for every split"] = None
    fresh_rng = np.random.default_rng(123)
    acc: dict[str, list[float]] = {k: [] for k in pools}
    for split in range(splits):
        tr, te = (rows.numpy() for rows in resplit(len(x), split))
        for name, coins in pools.items():
            coins = (fresh_rng.random((len(x), 2)) < 0.5).astype(float) if coins is None else coins
            acc[name].append(float(np.mean([
                (LogisticRegression(max_iter=1000).fit(x[tr], coins[tr, j]).predict(x[te]) == coins[te, j]).mean()
                for j in range(2)])))
    rows = [f"scikit-learn LogisticRegression on the 2 invisible coins, {splits} re-splits (mean ± SE)\n",
            "| coins | accuracy |", "|---|---|"]
    rows += [f"| {k} | {np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)):.4f} |" for k, v in acc.items()]
    return "\n".join(rows)


def joint_holdout_table(out: Path, splits: int = 8, epochs: int = 15) -> str:
    """What the image-folder path's validation holdout costs a joint CBM (trained by gradient).

    Per re-split (1800 train / 600 test, as :func:`resplit_table`), three joint CBMs with the
    CLI's settings (``CBMTrainingMode("joint")``, the model's defaults, batch 256, ``epochs``):
    trained on 1620 rows with the checkpoint chosen on the other 180 (what ``cbm_joint_shapes.yaml``
    does with a CSV that marks no ``val`` rows); refitted on all 1800 for the chosen number of
    epochs; and trained on all 1800 for ``epochs`` with the last epoch kept.
    """
    import tempfile

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from bottlenecks.data.datamodule import ArrayDataModule
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.models.module import BottleneckModel
    from bottlenecks.models.stages import CBMTrainingMode

    x, c, y = all_rows(out)

    def fit(tr: torch.Tensor, va: torch.Tensor, te: torch.Tensor, n_epochs: int, select: bool) -> tuple[float, int]:
        L.seed_everything(0, verbose=False)
        arrays = {f"{k}_{split}": v[rows] for split, rows in (("train", tr), ("val", va), ("test", te))
                  for k, v in (("x", x), ("y", y), ("concepts", c))}
        dm = ArrayDataModule.from_arrays(**arrays, concept_names=CONCEPTS, batch_size=256)
        model = BottleneckModel(ConceptBottleneck(x.shape[1], concept_names=CONCEPTS, hidden=[]), num_classes=2)
        with tempfile.TemporaryDirectory() as tmp:
            ck = ModelCheckpoint(dirpath=tmp, monitor="val/task_acc", mode="max") if select else None
            trainer = L.Trainer(max_epochs=n_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                                enable_checkpointing=select, deterministic=True,
                                callbacks=[CBMTrainingMode("joint")] + ([ck] if ck else []))
            trainer.fit(model, dm)
            acc = trainer.test(model, dm, ckpt_path="best" if select else None, verbose=False, weights_only=True)[0]
            chosen = int(torch.load(ck.best_model_path, weights_only=True)["epoch"]) + 1 if ck else n_epochs
        return acc["test/task_acc"], chosen

    names = ("checkpoint chosen on 180 held-out rows (1620 trained on)", "refitted on all 1800 for the chosen epochs",
             f"all 1800 rows, {epochs} epochs, last epoch")
    acc: dict[str, list[float]] = {k: [] for k in names}
    for split in range(splits):
        tr, te = resplit(len(x), split)
        a, held = tr[: N_TRAIN * 9 // 10], tr[N_TRAIN * 9 // 10 :]
        v, chosen = fit(a, held, te, epochs, True)
        acc[names[0]].append(v)
        acc[names[1]].append(fit(tr, held, te, chosen, False)[0])
        acc[names[2]].append(fit(tr, held, te, epochs, False)[0])
    rows = [f"joint CBM task accuracy, {splits} re-splits (mean ± SE)\n", "| training | task accuracy |", "|---|---|"]
    rows += [f"| {k} | {np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)):.4f} |" for k, v in acc.items()]
    return "\n".join(rows)


# ------------------------------------------------------------------ the Gaussian toy
def toy_data(seed: int = 0):  # noqa: ANN201
    g = torch.Generator().manual_seed(seed)
    n = 3000
    z = torch.randn(n, 16, generator=g)
    c = (z[:, :4] > 0).float()
    x = z + 0.05 * torch.randn(n, 16, generator=g)
    y = (c[:, 0] + 2 * c[:, 1]).long()
    return x, c, y


def toy_table(epochs=(15, 40)) -> str:  # noqa: ANN001
    import lightning as L

    from bottlenecks.data.datamodule import ArrayDataModule
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.models.module import BottleneckModel
    from bottlenecks.models.stages import CBMTrainingMode

    x, c, y = toy_data()
    parts = {"train": slice(0, 2000), "val": slice(2000, 2500), "test": slice(2500, 3000)}
    arrays = {}
    for s, sl in parts.items():
        arrays.update({f"x_{s}": x[sl], f"y_{s}": y[sl], f"concepts_{s}": c[sl]})
    rows = ["| mode | epochs | task accuracy | per-concept accuracy (a, b, c, d) | seconds |", "|---|---|---|---|---|"]
    try:  # exact fits exist from issue 14 on: a joint model may start from the exact fit
        CBMTrainingMode("joint", exact_fit=True)
        variants = [("independent", {}), ("sequential", {}), ("joint", {}), ("joint", {"exact_fit": True})]
    except TypeError:
        variants = [("independent", {}), ("sequential", {}), ("joint", {})]
    for mode, extra in variants:
        for ep in epochs:
            L.seed_everything(0, verbose=False)
            dm = ArrayDataModule.from_arrays(**arrays, concept_names=list("abcd"))
            model = BottleneckModel(ConceptBottleneck(16, concept_names=list("abcd")), num_classes=4, lr=1e-2)
            trainer = L.Trainer(max_epochs=ep, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[CBMTrainingMode(mode, **extra)])
            t0 = time.perf_counter()
            trainer.fit(model, dm)
            sec = time.perf_counter() - t0
            res = trainer.test(model, dm, verbose=False)[0]
            per = model.test_concept_metrics["concept_acc"].tolist()
            label = mode + (", starting from the exact fit" if extra else "")
            rows.append(f"| {label} | {ep} | {res['test/task_acc']:.3f} | {', '.join(f'{v:.3f}' for v in per)} | "
                        f"{sec:.1f} |")
    from sklearn.linear_model import LogisticRegression

    tr, te = slice(0, 2500), slice(2500, 3000)
    per = [LogisticRegression().fit(x[tr], c[tr, j]).score(x[te], c[te, j]) for j in range(4)]
    probe = LogisticRegression(max_iter=1000).fit(x[tr], y[tr]).score(x[te], y[te])
    rows.append(f"| scikit-learn LogisticRegression (train+val rows) | - | {probe:.3f} (probe) | "
                f"{', '.join(f'{v:.3f}' for v in per)} | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".cache/sklearn_parity", help="dataset, feature cache and runs go here")
    p.add_argument("--skip-images", action="store_true", help="only the Gaussian toy")
    p.add_argument("--skip-toy", action="store_true", help="only the image-folder table")
    p.add_argument("--resplits", type=int, default=8, help="random re-splits of the image table (0: none)")
    p.add_argument("--coins", action="store_true", help="also the invisible-coin table (coin_table), on the re-splits")
    p.add_argument("--joint-holdout", action="store_true",
                   help="also what the validation holdout costs a joint CBM (joint_holdout_table), on the re-splits")
    p.add_argument("--feature-scale", choices=["shared", "per_feature"], default=None,
                   help="the re-split table's feature scaling (default: the model's and probe's defaults)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"load: {Path('/proc/loadavg').read_text().strip() if Path('/proc/loadavg').exists() else '?'}")
    if not args.skip_toy:
        print("\n16-D Gaussian toy\n")
        print(toy_table())
    if not args.skip_images:
        print("\nimage folder + CSV, Lite0 at 96 px\n")
        print(image_table(out))
        if args.resplits:
            print("\nthe image folder, re-split\n")
            print(resplit_table(out, args.resplits, args.feature_scale))
            if args.coins:
                print("\nthe invisible coins\n")
                print(coin_table(out, args.resplits))
            if args.joint_holdout:
                print("\nthe joint CBM and the validation holdout\n")
                print(joint_holdout_table(out, args.resplits))
    print(f"load: {Path('/proc/loadavg').read_text().strip() if Path('/proc/loadavg').exists() else '?'}")


if __name__ == "__main__":
    main()
