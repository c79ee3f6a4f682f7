"""Small tabular datasets bundled with scikit-learn, as :class:`ConceptDataset` splits.

Both are ``kind="features"`` (``x`` is already a vector, no encoder needed) and
have no concepts. They are useful for quick end-to-end runs (identity encoder)
and for the information-bottleneck regression methods.

Splits are deterministic: the data are divided into train / val / test by a
stratified shuffle seeded by ``seed`` (classes for digits, quintiles of the
target for diabetes), so the three splits built with the same arguments are
disjoint and cover every row.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bottlenecks.data.base import ConceptDataset, check_labels, stable_hash

SPLITS = ("train", "val", "test")


def stratified_split(
    strata: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of a deterministic stratified train/val/test split.

    Within each stratum the rows are shuffled by ``seed`` and the first
    ``round(test_fraction * size)`` go to test, the next ``round(val_fraction * size)``
    to val and the rest to train.

    Args:
        strata: ``(n,)`` integer stratum of each row (class, or target bin).
        val_fraction / test_fraction: fractions in ``[0, 1)`` with a sum below 1.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, each sorted ``(n_split,)`` int64.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave a training set, got "
            f"{val_fraction} + {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        rows = rows[rng.permutation(len(rows))]
        n_test = int(round(test_fraction * len(rows)))
        n_val = int(round(val_fraction * len(rows)))
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


class _TableDataset(ConceptDataset):
    """Shared item/targets/fingerprint logic for in-memory feature tables."""

    kind = "features"
    concept_names = None

    x: Tensor  # (n, d) float32
    y: Tensor  # (n,) int64 or float32
    _args: dict[str, Any]
    _data_digest: str

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.check_index(index)
        return {"x": self.x[index], "y": self.y[index], "index": index}

    def targets(self) -> Tensor:
        return self.y.clone()

    def concept_table(self) -> None:
        return None

    def fingerprint(self) -> str:
        return stable_hash({"dataset": type(self).__name__, "data": self._data_digest, **self._args})

    @property
    def feature_dim(self) -> int:
        return int(self.x.shape[1])

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be one of {list(SPLITS)}, got {split!r}")


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class DigitsDataset(_TableDataset):
    """scikit-learn's bundled handwritten digits (1797 images of 8x8 pixels) as feature vectors.

    Items: ``{"x": (64,) float32 in [0, 1] (pixel value / 16), "y": int64 in [0, 10),
    "index": int}``; no concepts. The split is stratified by class.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        val_fraction / test_fraction: share of each class placed in val / test.
        seed: seed of the split.
    """

    task = "classification"
    image_shape = (8, 8)

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits

        self._check_split(split)
        data = load_digits()
        x_all = data.data.astype(np.float32) / 16.0
        y_all = data.target.astype(np.int64)
        idx = stratified_split(y_all, val_fraction, test_fraction, seed)[split]
        self.split = split
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]
        self.rows = idx
        self.x = torch.from_numpy(x_all[idx])
        self.y = torch.from_numpy(y_all[idx])
        self._args = {"split": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
        self._data_digest = _digest(x_all, y_all)
        check_labels(self.y, self.num_classes, f"DigitsDataset[{split}]")


class DiabetesDataset(_TableDataset):
    """scikit-learn's bundled diabetes regression table (442 patients, 10 features).

    Features and target are standardised with the mean and standard deviation of the
    **training** split (the same statistics for every split, so nothing leaks from
    val/test); ``y_mean`` and ``y_std`` undo it: ``y_raw = y * y_std + y_mean``.
    The split is stratified by quintile of the target.

    Items: ``{"x": (10,) float32, "y": float32 scalar, "index": int}``; no concepts.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        val_fraction / test_fraction: share of each target quintile placed in val / test.
        seed: seed of the split.
    """

    task = "regression"
    num_classes = None
    class_names = None

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_diabetes

        self._check_split(split)
        data = load_diabetes(scaled=False)
        x_all = data.data.astype(np.float64)
        y_all = data.target.astype(np.float64)
        edges = np.quantile(y_all, [0.2, 0.4, 0.6, 0.8])
        strata = np.searchsorted(edges, y_all, side="right")
        splits = stratified_split(strata, val_fraction, test_fraction, seed)
        train = splits["train"]
        x_mean, x_std = x_all[train].mean(0), x_all[train].std(0)
        x_std[x_std == 0] = 1.0
        self.x_mean = torch.from_numpy(x_mean.astype(np.float32))
        self.x_std = torch.from_numpy(x_std.astype(np.float32))
        self.y_mean = float(y_all[train].mean())
        self.y_std = float(y_all[train].std())
        idx = splits[split]
        self.split = split
        self.feature_names = list(data.feature_names)
        self.rows = idx
        self.x = torch.from_numpy(((x_all[idx] - x_mean) / x_std).astype(np.float32))
        self.y = torch.from_numpy(((y_all[idx] - self.y_mean) / self.y_std).astype(np.float32))
        self._args = {"split": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
        self._data_digest = _digest(x_all, y_all)
        check_labels(self.y, None, f"DiabetesDataset[{split}]")
