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


def _embedding_like(n, seed, d_info=8, d_noise=300, k=4):
    """Encoder-like features: a few high-variance directions carry the class, many low-variance
    ones are noise (pooled CNN features look like this; per-dimension z-scores blow the noise up)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d_info, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    info = 2.0 * (centers[y] + 0.8 * torch.randn(n, d_info, generator=g))
    noise = 0.05 * torch.randn(n, d_noise, generator=g)
    return torch.cat([info, noise], 1)[:, torch.randperm(d_info + d_noise, generator=g)], y


def test_probe_keeps_the_features_relative_scales_by_default():
    x, y = _embedding_like(1400, seed=0)
    args = (x[:300], y[:300], x[300:400], y[300:400], x[400:], y[400:])
    default = linear_probe(*args).test
    z = linear_probe(*args, feature_scale="per_feature").test
    assert default == linear_probe(*args, feature_scale="shared").test
    # measured: 0.896 vs 0.793 (seeds 1, 2: 0.961 vs 0.889, 0.945 vs 0.868)
    assert default > z + 0.05
    with pytest.raises(ValueError, match="feature_scale must be one of"):
        linear_probe(*args, feature_scale="zscore")


def test_feature_norm_scales():
    from bottlenecks.models import FeatureNorm

    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 3, generator=g) * torch.tensor([4.0, 1.0, 0.0]) + 7.0
    shared = FeatureNorm(3, "shared")
    shared.fit(h)
    out = shared(h)
    assert out.mean(0).abs().max() < 1e-4
    # one scale for every dimension: the relative scales survive, the total variance is d
    ratio = out.std(0)[0] / out.std(0)[1]
    assert abs(ratio - h.std(0)[0] / h.std(0)[1]) < 1e-3 and abs(out.var(0).sum() - 3) < 0.05
    per = FeatureNorm(3, "per_feature")
    per.fit(h)
    z = per(h)
    assert torch.allclose(z.std(0)[:2], torch.ones(2), atol=0.05) and z[:, 2].abs().max() == 0  # constant: floored, not inf
    with pytest.raises(ValueError, match="feature scale must be one of"):
        FeatureNorm(3, "minmax")


def test_model_feature_scale_follows_the_bottleneck_defaults():
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.layers.quantize import VectorQuantizer
    from bottlenecks.models import BottleneckModel

    cbm = BottleneckModel(ConceptBottleneck(8, num_concepts=3), num_classes=2)
    assert cbm.hparams.feature_scale == "shared" and cbm.norm.scale == "shared"
    vq = BottleneckModel(VectorQuantizer(8, codebook_size=4), num_classes=2)
    assert vq.hparams.feature_scale == "per_feature" and vq.norm.scale == "per_feature"
    given = BottleneckModel(ConceptBottleneck(8, num_concepts=3), num_classes=2, feature_scale="per_feature")
    assert given.norm.scale == "per_feature"
    with pytest.raises(ValueError, match="feature_scale must be one of"):
        BottleneckModel(ConceptBottleneck(8, num_concepts=3), num_classes=2, feature_scale="zscore",
                        standardize_features=False)


def test_checkpoints_from_before_feature_scale_reload_as_per_feature(tmp_path):
    import lightning as L

    from bottlenecks.data.datamodule import ArrayDataModule
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.models import BottleneckModel

    x, y = _data(n=200, d=8, k=2)
    dm = ArrayDataModule.from_arrays(x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:], batch_size=50)
    model = BottleneckModel(ConceptBottleneck(8, num_concepts=3), num_classes=2)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    path = tmp_path / "new.ckpt"
    trainer.save_checkpoint(path)
    fresh = lambda: ConceptBottleneck(8, num_concepts=3)  # noqa: E731 - built from Python: not a hyperparameter
    assert BottleneckModel.load_from_checkpoint(path, bottleneck=fresh()).norm.scale == "shared"
    old = torch.load(path, weights_only=True)
    del old["hyper_parameters"]["feature_scale"]  # what a checkpoint written before the option holds
    torch.save(old, tmp_path / "old.ckpt")
    loaded = BottleneckModel.load_from_checkpoint(tmp_path / "old.ckpt", bottleneck=fresh())
    assert loaded.hparams.feature_scale == "per_feature" and loaded.norm.scale == "per_feature"
    assert torch.equal(loaded.norm.std, model.norm.std)  # the saved statistics, whatever their kind
