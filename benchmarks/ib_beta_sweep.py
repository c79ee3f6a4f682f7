"""β sweep of the information-bottleneck regressors: CS-IB vs VIB vs plain MSE.

    python benchmarks/ib_beta_sweep.py                 # diabetes + synthetic, 6 β, 3 seeds (~12 min)
    python benchmarks/ib_beta_sweep.py --quick         # fewer epochs, 3 β, 1 seed

For each dataset (sklearn's diabetes; a synthetic non-linear regression with heavy-tailed
noise) and each β, one model is trained with :class:`~bottlenecks.models.BottleneckModel`:

* ``MSE``   — :class:`~bottlenecks.layers.stochastic.NoisyBottleneck` (deterministic MLP), MSE loss;
* ``VIB``   — :class:`~bottlenecks.layers.stochastic.GaussianBottleneck`, MSE + β KL;
* ``CS-IB`` — :class:`~bottlenecks.layers.stochastic.CSIBBottleneck`, CS prediction term
  (no MSE) + β I_CS(x; t).

Each model is tested at its best checkpoint by validation *objective* (``val/loss``, the
weighted sum being trained: early stopping on the IB objective, not on MSE alone). The
script prints a table (test RMSE in the target's standardised units, and the method's own
compression term on the test set: KL in nats for VIB, I_CS(x; t) in nats for CS-IB),
mean ± sd over ``--seeds`` seeds, and saves ``<out>/ib_beta_sweep.png`` and
``<out>/ib_beta_sweep.json``. Every run is seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch


def synthetic_regression(n: int = 3000, d: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """``y = sin(2 x0) + 0.5 x1^2 + 0.5 x2 x3 + 0.2 * Student-t(3) noise``, standardised;
    ``x`` is ``(n, 10)`` standard normal, of which x4..x9 are irrelevant distractors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    noise = torch.distributions.StudentT(3.0).sample((n,)) * 0.2
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.5 * x[:, 2] * x[:, 3] + noise
    y = (y - y[: n // 2].mean()) / y[: n // 2].std()
    a, b = int(0.6 * n), int(0.8 * n)
    return {"x_train": x[:a], "y_train": y[:a], "x_val": x[a:b], "y_val": y[a:b], "x_test": x[b:], "y_test": y[b:]}


def make_datamodule(name: str, seed: int):
    from bottlenecks.data.datamodule import ArrayDataModule
    from bottlenecks.data.modules import DiabetesDataModule

    if name == "diabetes":
        return DiabetesDataModule(batch_size=64, data_seed=seed, seed=seed)
    torch.manual_seed(seed)
    return ArrayDataModule.from_arrays(task="regression", batch_size=128, seed=seed, **synthetic_regression(seed=seed))


def make_model(method: str, beta: float, in_features: int):
    from bottlenecks.layers.stochastic import CSIBBottleneck, GaussianBottleneck, NoisyBottleneck
    from bottlenecks.models.module import BottleneckModel

    common = dict(task="regression", lr=3e-3, weight_decay=1e-4, head_hidden=[32])
    if method == "MSE":
        return BottleneckModel(NoisyBottleneck(in_features, 16, hidden=[64]), **common)
    if method == "VIB":
        return BottleneckModel(GaussianBottleneck(in_features, 16, hidden=[64], std_offset=0.0),
                               loss_weights={"kl": beta}, **common)
    if method == "CS-IB":
        common.pop("head_hidden")
        return BottleneckModel(CSIBBottleneck(in_features, latent_dim=16, hidden=[64], decoder_hidden=[32]),
                               task_loss_weight=0.0, loss_weights={"cs_qmi": beta, "cs_prediction": 1.0}, **common)
    raise ValueError(method)


def run_one(dataset: str, method: str, beta: float, epochs: int, seed: int) -> dict:
    L.seed_everything(seed, workers=True, verbose=False)
    dm = make_datamodule(dataset, seed)
    dm.setup("fit")
    model = make_model(method, beta, dm.feature_dim)
    from lightning.pytorch.callbacks import ModelCheckpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor="val/loss", mode="min")  # the objective being trained
        trainer = L.Trainer(max_epochs=epochs, logger=False, callbacks=[ckpt], enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True)
        t0 = time.perf_counter()
        trainer.fit(model, dm)
        res = trainer.test(model, dm, ckpt_path="best", verbose=False, weights_only=True)[0]
    compression = {"VIB": res.get("test/kl"), "CS-IB": res.get("test/cs_qmi")}.get(method)
    return {
        "dataset": dataset,
        "method": method,
        "beta": beta,
        "seed": seed,
        "test_rmse": math.sqrt(res["test/mse"]),
        "test_r2": res["test/r2"],
        "compression_nats": None if compression is None else float(compression),
        "seconds": time.perf_counter() - t0,
    }


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds for every (dataset, method, beta)."""
    keys = list(dict.fromkeys((r["dataset"], r["method"], r["beta"]) for r in rows))
    out = []
    for ds, m, b in keys:
        rs = [r for r in rows if (r["dataset"], r["method"], r["beta"]) == (ds, m, b)]
        agg = {"dataset": ds, "method": m, "beta": b, "n_seeds": len(rs)}
        for key in ("test_rmse", "test_r2", "compression_nats"):
            vals = [r[key] for r in rs if r[key] is not None]
            agg[key] = float(np.mean(vals)) if vals else None
            agg[key + "_sd"] = float(np.std(vals)) if vals else None
        out.append(agg)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False)
    colors = {"VIB": "tab:blue", "CS-IB": "tab:red"}
    for i, ds in enumerate(datasets):
        ax_kl, ax_cs, ax_err = axes[i]
        for method, ax, label in (("VIB", ax_kl, "KL(q(z|x) || p(z)) [nats]"), ("CS-IB", ax_cs, "I_CS(x; t) [nats]")):
            rs = sorted((r for r in rows if r["dataset"] == ds and r["method"] == method), key=lambda r: r["beta"])
            ax.errorbar([r["beta"] for r in rs], [r["compression_nats"] for r in rs],
                        yerr=[r["compression_nats_sd"] for r in rs], fmt="o-", color=colors[method], capsize=3)
            ax.set_xscale("log")
            ax.set_xlabel("β")
            ax.set_ylabel(label)
            ax.set_title(f"{ds}: {method} compression term (test)")
            ax.grid(alpha=0.3)
        for method in ("VIB", "CS-IB"):
            rs = sorted((r for r in rows if r["dataset"] == ds and r["method"] == method), key=lambda r: r["beta"])
            ax_err.errorbar([r["beta"] for r in rs], [r["test_rmse"] for r in rs], yerr=[r["test_rmse_sd"] for r in rs],
                            fmt="o-", color=colors[method], label=method, capsize=3)
        base = [r for r in rows if r["dataset"] == ds and r["method"] == "MSE"]
        if base:
            ax_err.axhline(base[0]["test_rmse"], color="k", ls="--", label="plain MSE")
        ax_err.set_xscale("log")
        ax_err.set_xlabel("β")
        ax_err.set_ylabel("test RMSE (standardised y)")
        ax_err.set_title(f"{ds}: prediction error")
        ax_err.legend(fontsize=8)
        ax_err.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/ib_beta_sweep")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..seeds-1 per setting")
    ap.add_argument("--datasets", nargs="*", default=["diabetes", "synthetic"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    betas = [1e-3, 1e-1, 10.0] if args.quick else [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    epochs = {"diabetes": 60 if args.quick else 150, "synthetic": 15 if args.quick else 40}
    seeds = [0] if args.quick else list(range(args.seeds))
    runs = []
    for ds in args.datasets:
        settings = [("MSE", 0.0)] + [(m, b) for m in ("VIB", "CS-IB") for b in betas]
        for method, beta in settings:
            for seed in seeds:
                r = run_one(ds, method, beta, epochs[ds], seed)
                runs.append(r)
                comp = "-" if r["compression_nats"] is None else f"{r['compression_nats']:.3f}"
                print(f"  {ds:<9} {method:<6} beta={beta:<7g} seed={seed} rmse={r['test_rmse']:.3f} "
                      f"compression={comp} ({r['seconds']:.1f}s)", flush=True)
    rows = aggregate(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ib_beta_sweep.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=1))
    plot(rows, out / "ib_beta_sweep.png")

    print(f"\nmean ± sd over seeds {seeds}")
    print(f"{'dataset':<10} {'method':<6} {'beta':>8} {'test RMSE':>15} {'R2':>15} {'compression [nats]':>20}")
    for r in rows:
        comp = "-" if r["compression_nats"] is None else f"{r['compression_nats']:.3f} ± {r['compression_nats_sd']:.3f}"
        print(f"{r['dataset']:<10} {r['method']:<6} {r['beta']:>8g} {r['test_rmse']:>8.3f} ± {r['test_rmse_sd']:.3f}"
              f" {r['test_r2']:>7.3f} ± {r['test_r2_sd']:.3f} {comp:>20}")
    for ds in args.datasets:
        for method in ("VIB", "CS-IB"):
            comp = [r["compression_nats"] for r in rows if r["dataset"] == ds and r["method"] == method]
            mono = all(b <= a + 1e-9 for a, b in zip(comp, comp[1:]))
            print(f"{ds} {method}: mean compression term non-increasing in beta: {mono}")
    print(f"\nsaved {out / 'ib_beta_sweep.png'} and {out / 'ib_beta_sweep.json'}")


if __name__ == "__main__":
    main()
