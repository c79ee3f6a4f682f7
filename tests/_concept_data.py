"""Small synthetic concept data shaped like Shapes, shared by the concept-bottleneck tests.

Eight binary concepts: three colours (one-hot), three shapes (one-hot), then
``big`` and ``striped`` (independent nuisances); label = 3 * shape + colour (9 classes).
Features are a noisy linear image of the concepts, noisy enough that concept
predictions are imperfect (so interventions have something to fix).
"""

from __future__ import annotations

import torch

NAMES = ["red", "green", "blue", "circle", "square", "triangle", "big", "striped"]


def shapes_like(n: int = 3000, d: int = 16, noise: float = 1.2, seed: int = 0, cooccur: bool = False,
                spurious: float | None = None):
    """``(x, concepts, y)``; ``cooccur`` forces red ⇔ circle; ``spurious`` makes ``striped``
    follow label parity with that probability (the sign flips on the second half)."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 3, (n,), generator=g)
    shape = torch.randint(0, 3, (n,), generator=g)
    if cooccur:
        # red <=> circle: red objects are circles, circles are red
        shape = torch.where(colour == 0, torch.zeros_like(shape), shape)
        colour = torch.where(shape == 0, torch.zeros_like(colour), colour)
    y = 3 * shape + colour
    c = torch.zeros(n, len(NAMES))
    c[torch.arange(n), colour] = 1
    c[torch.arange(n), 3 + shape] = 1
    c[:, 6] = (torch.rand(n, generator=g) < 0.5).float()
    if spurious is None:
        c[:, 7] = (torch.rand(n, generator=g) < 0.5).float()
    else:
        odd = (y % 2 == 1).float()
        half = torch.arange(n) >= n // 2
        p = torch.where(half, 1 - spurious, spurious) * odd + torch.where(half, spurious, 1 - spurious) * (1 - odd)
        c[:, 7] = (torch.rand(n, generator=g) < p).float()
    w = torch.randn(len(NAMES), d, generator=g)
    x = c @ w + noise * torch.randn(n, d, generator=g)
    return x, c, y


def datamodule(x, c, y, n_train: int, **kw):
    from bottlenecks.data.datamodule import ArrayDataModule

    return ArrayDataModule.from_arrays(
        x_train=x[:n_train], y_train=y[:n_train], concepts_train=c[:n_train],
        x_test=x[n_train:], y_test=y[n_train:], concepts_test=c[n_train:],
        concept_names=NAMES, batch_size=kw.pop("batch_size", 128), **kw)


def trainer(**kw):
    import lightning as L

    kw.setdefault("max_epochs", 10)
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, deterministic=True, **kw)


def sign_toy(n: tuple[int, int, int] = (2000, 500, 500), dim: int = 16, n_concepts: int = 4, label_bits: int = 2,
             noise: float = 0.05, seed: int = 0) -> dict:
    """The toy of issue 14 (defaults chosen by measurement): Gaussian features ``(rows, dim)``;
    concept ``j`` = ``[x_j > 0]``, the features then perturbed by ``noise``; label
    ``sum_k 2^k c_k`` over the first ``label_bits`` concepts (the others are unrelated to it).

    Returns ``{"arrays": {x_/y_/concepts_ train/val/test}, "concept_names", "num_classes"}``
    (``arrays`` fits :meth:`~bottlenecks.data.datamodule.ArrayDataModule.from_arrays`).
    """
    import numpy as np

    g = np.random.default_rng(seed)
    out = {}
    for split, rows in zip(("train", "val", "test"), n):
        x = g.normal(size=(rows, dim)).astype(np.float32)
        c = (x[:, :n_concepts] > 0).astype(np.float32)
        x = x + noise * g.normal(size=x.shape).astype(np.float32)
        y = sum((2**k) * c[:, k] for k in range(label_bits)).astype(np.int64)
        out.update({f"x_{split}": x, f"y_{split}": y, f"concepts_{split}": c})
    return {"arrays": out, "concept_names": [f"c{j}" for j in range(n_concepts)], "num_classes": 2**label_bits}


def blobs_dm():
    """Four Gaussian blobs in 8 dimensions, 600 train / 200 test rows (a task any quantiser or
    optimiser should solve well above the 0.25 chance level)."""
    from bottlenecks.data.datamodule import ArrayDataModule

    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(4, 8, generator=g)
    y = torch.randint(4, (800,), generator=g)
    x = centres[y] + 0.5 * torch.randn(800, 8, generator=g)
    return ArrayDataModule.from_arrays(x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:],
                                       batch_size=64)
