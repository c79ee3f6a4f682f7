"""Few-shot splits and the linear probe at the same k (LaBo's comparison).

>>> idx = few_shot_indices(y_train, k=2, seed=0)          # doctest: +SKIP
>>> acc = linear_probe_accuracy(x[idx], y[idx], x_test, y_test)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["few_shot_indices", "linear_probe_accuracy"]


def few_shot_indices(y: Tensor, k: int, seed: int = 0, num_classes: int | None = None) -> Tensor:
    """Indices of ``k`` examples per class (drawn without replacement, seeded), sorted.

    Raises when a class has fewer than ``k`` examples (naming the class and its count).
    """
    if k < 1:
        raise ValueError(f"few_shot_indices: k must be at least 1, got {k}")
    y = torch.as_tensor(y).long()
    n_classes = int(y.max()) + 1 if num_classes is None else num_classes
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(n_classes):
        members = (y == c).nonzero().flatten()
        if len(members) < k:
            raise ValueError(f"few_shot_indices: class {c} has {len(members)} examples, fewer than k={k}")
        out.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(out).sort().values


def linear_probe_accuracy(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, C: float = 1.0, standardize: bool = True
) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression (scikit-learn),
    the black-box baseline of a concept bottleneck at the same training data."""
    from sklearn.linear_model import LogisticRegression

    xtr = np.asarray(x_train, dtype=np.float64)
    xte = np.asarray(x_test, dtype=np.float64)
    if standardize:
        mu = xtr.mean(0)
        if len(xtr) <= len(np.unique(np.asarray(y_train))):
            # one example per class: per-feature spreads are noise; use one pooled scale
            sd = np.full(xtr.shape[1], xtr.std() + 1e-6)
        else:
            sd = xtr.std(0) + 1e-6
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(xtr, np.asarray(y_train))
    return float((clf.predict(xte) == np.asarray(y_test)).mean())
