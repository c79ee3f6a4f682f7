"""Issue 15, items 3 and 7: partially labelled / single concepts in the metrics, numeric edges."""

import lightning as L
import pytest
import torch

from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.estimators.binning import BinningMI
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.layers.quantize import VectorQuantizer
from bottlenecks.models.concept_metrics import ConceptMetrics
from bottlenecks.models.module import BottleneckModel


def _trainer(**kw):
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, max_epochs=2, **kw)


def _arrays(n=300, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, k, generator=g) > 0.5).float()
    x = c @ torch.randn(k, 8, generator=g) + 0.1 * torch.randn(n, 8, generator=g)
    y = (c[:, 0] + 2 * (c[:, 1] if k > 1 else 0)).long()
    return x, c, y


def test_concept_without_labels_in_the_eval_split_is_nan_not_a_crash():
    x, c, y = _arrays()
    c_test = c[200:].clone()
    c_test[:, 1] = float("nan")  # concept b never labelled in val/test
    dm = ArrayDataModule.from_arrays(x_train=x[:200], y_train=y[:200], concepts_train=c[:200],
                                     x_val=x[200:], y_val=y[200:], concepts_val=c_test,
                                     x_test=x[200:], y_test=y[200:], concepts_test=c_test,
                                     concept_names=["a", "b", "c"], batch_size=50)
    model = BottleneckModel(ConceptBottleneck(8, concept_names=["a", "b", "c"]), num_classes=4, lr=5e-2)
    _trainer().fit(model, dm)
    res = _trainer().test(model, dm, verbose=False)[0]
    per = model.test_concept_metrics
    assert torch.isnan(per["concept_acc"][1]) and torch.isnan(per["concept_auroc"][1])
    assert torch.isfinite(per["concept_acc"][[0, 2]]).all()
    # the logged mean is over the labelled concepts only
    assert res["test/concept_acc"] == pytest.approx(float(per["concept_acc"][[0, 2]].mean()), abs=1e-6)


def test_a_single_concept_dataset_trains_and_tests():
    x, c, y = _arrays(k=1)
    dm = ArrayDataModule.from_arrays(x_train=x[:200], y_train=y[:200], concepts_train=c[:200],
                                     x_test=x[200:], y_test=y[200:], concepts_test=c[200:], batch_size=50)
    model = BottleneckModel(ConceptBottleneck(8, num_concepts=1), num_classes=2, lr=5e-2)
    _trainer(max_steps=40).fit(model, dm)
    res = _trainer().test(model, dm, verbose=False)[0]
    assert res["test/concept_acc"] > 0.9 and res["test/concept_auroc"] > 0.9


def test_concept_metrics_match_a_direct_count():
    m = ConceptMetrics(2)
    logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [1.0, 1.0], [-1.0, -2.0]])
    target = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [0.0, 1.0], [0.0, float("nan")]])
    m.update(logits[:2], target[:2])
    m.update(logits[2:], target[2:])
    out = m.compute()
    assert out["concept_acc"].tolist() == [0.75, 1.0]
    assert out["concept_auroc"][0] == 1.0  # the positive scores highest
    assert torch.isnan(out["concept_auroc"][1])  # only positives: undefined
    with pytest.raises(ValueError, match=r"must both be \(batch, 2\)"):
        m.update(logits[:, :1], target[:, :1])


# ------------------------------------------------------------------- item 7
def test_huge_finite_features_are_refused_and_the_codebook_stays_finite():
    vq = VectorQuantizer(4, codebook_size=8, ema=True, kmeans_init=False)
    vq.train()
    h = torch.randn(32, 4)
    h[:, 0] = 3e38  # finite, but every sum over it overflows float32
    with pytest.raises(ValueError, match="magnitude"):
        vq(h)
    assert torch.isfinite(vq.codes_tensor()).all()
    vq(torch.randn(32, 4) * 1e6)  # large but safe: accepted, codebook finite
    assert torch.isfinite(vq.codes_tensor()).all()


def test_binning_mi_refuses_one_sample_and_nan_labels():
    est = BinningMI(n_bins=4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        est.estimate(torch.randn(1, 2), torch.tensor([1]))
    y = torch.tensor([0.0, 1.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="y contains 1 NaN/inf"):
        BinningMI(n_bins=2, discrete_y=True).estimate(torch.randn(4, 1), y)
    with pytest.raises(ValueError, match="not whole numbers"):
        BinningMI(n_bins=2, discrete_y=True).estimate(torch.randn(4, 1), torch.tensor([0.0, 0.5, 1.0, 1.0]))
