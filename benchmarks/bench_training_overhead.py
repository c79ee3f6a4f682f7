"""Cost of training a bottleneck through BottleneckModel + Lightning vs a plain PyTorch loop
over the same cached feature tensors (DESIGN.md: "about what a plain loop costs").

    python benchmarks/bench_training_overhead.py [--n 10000] [--dim 1280] [--epochs 3] [--batch-size 256]

Seconds per epoch (median over epochs and repeats, the loops interleaved) of: the plain loop
(randperm, ``x[idx]``, Linear → sigmoid → Linear, cross-entropy + concept BCE, AdamW),
BottleneckModel driven by hand (no Trainer), and Lightning's Trainer.fit with the model's
logging and metrics (no validation, no checkpointing, no progress bar), with the datamodule's
default ``steps_per_batch="auto"`` (several optimiser steps per Lightning batch) and with 1. ``rows(quick)`` gives
the same as rows of the run_all.py table (10k x 1280 at batch 256 and 4096; 1M x 512 at 256).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from bottlenecks.data.datamodule import AUTO_ROWS_PER_BATCH, ArrayDataModule, FeatureBatches, batch_loader
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel

try:
    from _timing import interleaved_medians, peak_rss_mb
except ImportError:  # imported as benchmarks.bench_training_overhead
    from benchmarks._timing import interleaved_medians, peak_rss_mb


def data(n: int, d: int, k: int = 10, classes: int = 9):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    c = (torch.rand(n, k, generator=g) > 0.5).float()
    y = torch.randint(0, classes, (n,), generator=g)
    return x, c, y


def plain(x, c, y, epochs: int, bs: int) -> float:
    """Median seconds per epoch of the plain loop."""
    lin, head = torch.nn.Linear(x.shape[1], c.shape[1]), torch.nn.Linear(c.shape[1], 9)
    opt = torch.optim.AdamW([*lin.parameters(), *head.parameters()], lr=1e-3)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            logits = lin(x[idx])
            loss = F.cross_entropy(head(torch.sigmoid(logits)), y[idx]) + F.binary_cross_entropy_with_logits(logits, c[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_by_hand(x, c, y, epochs: int, bs: int) -> float:
    """Median seconds per epoch of BottleneckModel's forward and losses in a hand-written loop."""
    model = BottleneckModel(ConceptBottleneck(x.shape[1], num_concepts=c.shape[1]), num_classes=9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = batch_loader(FeatureBatches(x, y, c), bs, shuffle=True, seed=0)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for batch in loader:
            y_hat, out = model(batch["x"])
            loss = model.compute_losses(batch, y_hat, out)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.times.append(time.perf_counter() - self._t0)


def lightning_fit(x, c, y, epochs: int, bs: int, steps_per_batch: int | str = "auto") -> float:
    """Median seconds per epoch of Trainer.fit (the epoch's own time: setup excluded)."""
    dm = ArrayDataModule.from_arrays(x_train=x, y_train=y, concepts_train=c, x_val=x[:bs], y_val=y[:bs],
                                     concepts_val=c[:bs], num_classes=9, batch_size=bs,
                                     steps_per_batch=steps_per_batch)
    model = BottleneckModel(ConceptBottleneck(x.shape[1], num_concepts=c.shape[1]), num_classes=9)
    timer = _EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[timer])
    trainer.fit(model, dm)
    return statistics.median(timer.times)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def measure(n: int, dim: int, bs: int, epochs: int, repeats: int, hand: bool = True) -> dict[str, float]:
    x, c, y = data(n, dim)
    fns = {"plain": lambda: plain(x, c, y, epochs, bs), "fit": lambda: lightning_fit(x, c, y, epochs, bs),
           "fit1": lambda: lightning_fit(x, c, y, epochs, bs, steps_per_batch=1)}
    if hand:
        fns["hand"] = lambda: model_by_hand(x, c, y, epochs, bs)
    return interleaved_medians(fns, repeats)


def rows(quick: bool = False) -> list[dict]:
    _quiet()
    settings = [(2000, 64, 256, 2, 1)] if quick else [
        (10_000, 1280, 256, 3, 3), (10_000, 1280, 4096, 3, 3), (1_000_000, 512, 256, 1, 2)]
    out = []
    for n, dim, bs, epochs, repeats in settings:
        m = measure(n, dim, bs, epochs, repeats, hand=n <= 10_000)
        size = f"{n // 1000}k x {dim}, batch {bs}" if n < 1_000_000 else f"{n // 1_000_000}M x {dim}, batch {bs}"
        note = f"s/epoch; {torch.get_num_threads()} threads"
        k = max(1, AUTO_ROWS_PER_BATCH // bs)
        out.append({"operation": "train one epoch on cached features", "size": size,
                    "ours": f"BottleneckModel, Trainer.fit (steps_per_batch auto = {k})", "ours_s": m["fit"],
                    "reference": "plain PyTorch loop", "reference_s": m["plain"],
                    "peak_mb": peak_rss_mb(), "note": note})
        out.append({"operation": "train one epoch on cached features", "size": size,
                    "ours": "BottleneckModel, Trainer.fit (steps_per_batch 1)", "ours_s": m["fit1"],
                    "reference": "plain PyTorch loop", "reference_s": m["plain"],
                    "peak_mb": None, "note": note})
        if "hand" in m:
            out.append({"operation": "train one epoch on cached features", "size": size,
                        "ours": "BottleneckModel, hand loop", "ours_s": m["hand"],
                        "reference": "plain PyTorch loop", "reference_s": m["plain"],
                        "peak_mb": None, "note": note})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    _quiet()
    m = measure(a.n, a.dim, a.batch_size, a.epochs, a.repeats)
    print(f"\n{a.n} x {a.dim} features, batch {a.batch_size}, {torch.get_num_threads()} threads")
    print(f"{'loop':38s} {'s/epoch':>9s} {'vs plain':>9s}")
    k = max(1, AUTO_ROWS_PER_BATCH // a.batch_size)
    for name, key in [("plain PyTorch loop", "plain"), ("BottleneckModel, hand loop", "hand"),
                      (f"Trainer.fit, steps_per_batch {k} (auto)", "fit"), ("Trainer.fit, steps_per_batch 1", "fit1")]:
        print(f"{name:38s} {m[key]:9.3f} {m[key] / m['plain']:8.2f}x")


if __name__ == "__main__":
    main()
