"""The black-box linear probe: agrees with scikit-learn, and its cached result is reused."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bottlenecks.analysis.probes import DEFAULT_CS, fit_logistic, linear_probe
from bottlenecks.analysis.report import cached_probe


def _data(n=900, d=30, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 1.2 * torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def test_logistic_matches_sklearn_objective():
    x, y = _data()
    xs = torch.as_tensor(StandardScaler().fit_transform(x.numpy()))
    for C in (0.01, 1.0):
        w = fit_logistic(xs, y, 4, C, max_iter=500)
        ref = LogisticRegression(C=C, max_iter=2000, tol=1e-8).fit(xs.numpy(), y.numpy())
        ours = torch.addmm(w[-1], xs, w[:-1])
        theirs = torch.as_tensor(ref.decision_function(xs.numpy()))
        # multinomial logits are defined up to a per-row constant
        diff = (ours - ours.mean(1, keepdim=True)) - (theirs - theirs.mean(1, keepdim=True))
        assert diff.abs().max() < 1e-2


def test_probe_picks_C_by_cv_and_scores_test():
    x, y = _data(n=1200)
    r = linear_probe(x[:800], y[:800], x[800:1000], y[800:1000], x[1000:], y[1000:])
    assert r.metric == "accuracy" and r.C in DEFAULT_CS and r.selection == "5-fold CV on 1000 rows"
    assert r.test > 0.8  # chance is 0.25
    # regression: ridge on a linear target explains most of the variance
    t = x @ torch.randn(30) + 0.1 * torch.randn(len(x))
    rr = linear_probe(x[:800], t[:800], x[800:1000], t[800:1000], x[1000:], t[1000:], task="regression")
    assert rr.metric == "r2" and rr.test > 0.95


def test_probe_result_is_cached(tmp_path, monkeypatch):
    x, y = _data(n=600)
    args = (x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])
    first = cached_probe(tmp_path, args, "classification")
    assert len(list((tmp_path / "probes").glob("*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("the probe was fitted again")

    monkeypatch.setattr("bottlenecks.analysis.probes.linear_probe", boom)
    assert cached_probe(tmp_path, args, "classification") == first
    # different data → a different entry (and here: a refit, which the patched function forbids)
    args2 = (x[:400] + 1, *args[1:])
    with pytest.raises(AssertionError, match="fitted again"):
        cached_probe(tmp_path, args2, "classification")
    np.testing.assert_allclose(first["test"], cached_probe(tmp_path, args, "classification")["test"])
