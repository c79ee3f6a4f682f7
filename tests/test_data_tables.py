"""Digits and diabetes tables: shapes, deterministic stratified splits, scaling, learnability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge

from bottlenecks.data.base import ConceptDataset
from bottlenecks.data.tables import DiabetesDataset, DigitsDataset, stratified_split


def test_digits_items_and_attributes():
    ds = DigitsDataset("train")
    assert isinstance(ds, ConceptDataset)
    item = ds[0]
    assert item["x"].shape == (64,) and item["x"].dtype == torch.float32
    assert item["y"].dtype == torch.int64 and item["index"] == 0 and "concepts" not in item
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0 and float(ds.x.max()) == 1.0
    assert ds.kind == "features" and ds.task == "classification" and ds.num_classes == 10
    assert ds.concept_names is None and ds.concept_table() is None and ds.num_concepts == 0
    assert ds.class_names == [str(d) for d in range(10)] and ds.feature_dim == 64
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_digits_splits_are_disjoint_stratified_and_seeded():
    full = load_digits()
    splits = {s: DigitsDataset(s, val_fraction=0.2, test_fraction=0.1, seed=1) for s in ("train", "val", "test")}
    rows = [set(ds.rows.tolist()) for ds in splits.values()]
    assert sum(map(len, rows)) == len(full.target) and set.union(*rows) == set(range(len(full.target)))
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    class_sizes = np.bincount(full.target)
    assert np.abs(np.bincount(splits["val"].targets().numpy(), minlength=10) - 0.2 * class_sizes).max() <= 1
    assert np.abs(np.bincount(splits["test"].targets().numpy(), minlength=10) - 0.1 * class_sizes).max() <= 1
    # rows carry the right pixels and labels
    r = splits["test"].rows[3]
    assert np.allclose(splits["test"].x[3].numpy(), full.data[r] / 16.0)
    assert int(splits["test"].y[3]) == full.target[r]
    again = DigitsDataset("test", val_fraction=0.2, test_fraction=0.1, seed=1)
    assert np.array_equal(again.rows, splits["test"].rows) and again.fingerprint() == splits["test"].fingerprint()
    other = DigitsDataset("test", val_fraction=0.2, test_fraction=0.1, seed=2)
    assert not np.array_equal(other.rows, splits["test"].rows) and other.fingerprint() != again.fingerprint()
    assert splits["train"].fingerprint() != splits["test"].fingerprint()


def test_digits_are_learnable():
    train, test = DigitsDataset("train"), DigitsDataset("test")
    clf = LogisticRegression(max_iter=300).fit(train.x.numpy(), train.y.numpy())
    assert clf.score(test.x.numpy(), test.y.numpy()) > 0.9


def test_diabetes_standardised_with_train_statistics():
    raw = load_diabetes(scaled=False)
    train, val, test = (DiabetesDataset(s, seed=0) for s in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == len(raw.target)
    assert train.task == "regression" and train.num_classes is None and train.kind == "features"
    assert train.concept_table() is None and train.feature_dim == 10
    item = test[1]
    assert item["x"].shape == (10,) and item["y"].dtype == torch.float32 and item["y"].ndim == 0
    assert torch.allclose(train.x.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(train.x.std(0, unbiased=False), torch.ones(10), atol=1e-4)
    assert abs(float(train.y.mean())) < 1e-5 and abs(float(train.y.std(unbiased=False)) - 1) < 1e-4
    # val/test reuse the train statistics: undoing them recovers the raw data
    for ds in (val, test):
        assert ds.y_mean == train.y_mean and ds.y_std == train.y_std
        assert np.allclose(ds.y.numpy() * ds.y_std + ds.y_mean, raw.target[ds.rows], atol=1e-3)
        assert np.allclose(ds.x.numpy() * ds.x_std.numpy() + ds.x_mean.numpy(), raw.data[ds.rows], atol=1e-3)
    # stratified by target quintile: every quintile reaches the test split
    edges = np.quantile(raw.target, [0.2, 0.4, 0.6, 0.8])
    assert len(np.unique(np.searchsorted(edges, raw.target[test.rows], side="right"))) == 5
    model = Ridge(alpha=1.0).fit(train.x.numpy(), train.y.numpy())
    assert model.score(test.x.numpy(), test.y.numpy()) > 0.3


def test_split_errors():
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be below 1"):
        DigitsDataset("train", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction must lie in"):
        DiabetesDataset("train", test_fraction=-0.1)
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsDataset("validation")
    parts = stratified_split(np.array([0] * 10 + [1] * 20), 0.1, 0.2, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [21, 3, 6]
