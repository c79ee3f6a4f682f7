"""Cost of training a bottleneck through BottleneckModel + Lightning vs a plain PyTorch loop
over the same cached feature tensors (DESIGN.md: "about what a plain loop costs").

    python benchmarks/bench_training_overhead.py [--n 10000] [--dim 1280] [--epochs 5]

Prints seconds per epoch for: the plain loop, BottleneckModel driven by hand (no Trainer),
and Lightning's Trainer.fit (no validation, no checkpointing, no progress bar).
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
import torch.nn.functional as F

from bottlenecks.data.datamodule import ArrayDataModule, FeatureBatches, batch_loader
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel


def data(n: int, d: int, k: int = 10, classes: int = 9):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    c = (torch.rand(n, k, generator=g) > 0.5).float()
    y = torch.randint(0, classes, (n,), generator=g)
    return x, c, y


def plain(x, c, y, epochs: int, bs: int) -> float:
    lin, head = torch.nn.Linear(x.shape[1], c.shape[1]), torch.nn.Linear(c.shape[1], 9)
    opt = torch.optim.AdamW([*lin.parameters(), *head.parameters()], lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            logits = lin(x[idx])
            loss = F.cross_entropy(head(torch.sigmoid(logits)), y[idx]) + F.binary_cross_entropy_with_logits(logits, c[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (time.perf_counter() - t0) / epochs


def model_by_hand(x, c, y, epochs: int, bs: int) -> float:
    model = BottleneckModel(ConceptBottleneck(x.shape[1], num_concepts=c.shape[1]), num_classes=9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = batch_loader(FeatureBatches(x, y, c), bs, shuffle=True, seed=0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            y_hat, out = model(batch["x"])
            loss = model.compute_losses(batch, y_hat, out)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (time.perf_counter() - t0) / epochs


def lightning_fit(x, c, y, epochs: int, bs: int) -> float:
    dm = ArrayDataModule.from_arrays(x_train=x, y_train=y, concepts_train=c, x_val=x[:bs], y_val=y[:bs],
                                     concepts_val=c[:bs], num_classes=9, batch_size=bs)
    model = BottleneckModel(ConceptBottleneck(x.shape[1], num_concepts=c.shape[1]), num_classes=9)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    x, c, y = data(a.n, a.dim)
    rows = [("plain PyTorch loop", plain(x, c, y, a.epochs, a.batch_size)),
            ("BottleneckModel, hand loop", model_by_hand(x, c, y, a.epochs, a.batch_size)),
            ("BottleneckModel, Trainer.fit", lightning_fit(x, c, y, a.epochs, a.batch_size))]
    base = rows[0][1]
    print(f"\n{a.n} x {a.dim} features, batch {a.batch_size}, {torch.get_num_threads()} threads")
    print(f"{'loop':32s} {'s/epoch':>9s} {'vs plain':>9s}")
    for name, t in rows:
        print(f"{name:32s} {t:9.3f} {t / base:8.2f}x")


if __name__ == "__main__":
    main()
