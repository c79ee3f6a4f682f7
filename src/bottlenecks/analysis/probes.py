"""Black-box reference probes on the same cached features a bottleneck sees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class ProbeResult:
    """A fitted linear probe's scores: accuracy (classification) or R² (regression)."""

    metric: str
    train: float
    val: float
    test: float
    C: float


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def linear_probe(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    x_val: Tensor | np.ndarray,
    y_val: Tensor | np.ndarray,
    x_test: Tensor | np.ndarray,
    y_test: Tensor | np.ndarray,
    task: str = "classification",
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0),
    max_iter: int = 300,
    seed: int = 0,
) -> ProbeResult:
    """Standardised features → logistic (or ridge) regression; the inverse regulariser
    ``C`` is chosen on the validation split and the chosen probe is scored on test.

    Args:
        x_*: ``(n, d)`` features; y_*: ``(n,)`` labels or targets.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    xs = [_np(x).astype(np.float32) for x in (x_train, x_val, x_test)]
    ys = [_np(y) for y in (y_train, y_val, y_test)]
    scaler = StandardScaler().fit(xs[0])
    xs = [scaler.transform(x) for x in xs]
    best = None
    for C in Cs:
        if task == "classification":
            model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        else:
            model = Ridge(alpha=1.0 / C, random_state=seed)
        model.fit(xs[0], ys[0])
        val = float(model.score(xs[1], ys[1]))
        if best is None or val > best[0]:
            best = (val, C, model)
    assert best is not None
    val, C, model = best
    return ProbeResult(
        metric="accuracy" if task == "classification" else "r2",
        train=float(model.score(xs[0], ys[0])),
        val=val,
        test=float(model.score(xs[2], ys[2])),
        C=C,
    )
