"""Discrete key-value bottleneck: frozen keys, values trained only where fetched, the two-stage flow."""

import lightning as L
import pytest
import torch

from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck
from bottlenecks.models.module import BottleneckModel


def _data(n=600, d=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, d, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return centres[y] + 0.7 * torch.randn(n, d, generator=g), y


def _trainer(**kw):
    kw.setdefault("max_epochs", 1)
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def test_keys_are_frozen_buffers_initialised_at_fit_start_by_the_model():
    x, y = _data()
    dm = ArrayDataModule.from_arrays(x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:], batch_size=50)
    kv = DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=32, value_dim=4)
    assert [n for n, _ in kv.named_parameters()] == ["values"]
    assert kv.needs_data_init()
    with pytest.raises(RuntimeError, match="keys are not initialised"):
        kv(x[:4])
    model = BottleneckModel(kv, num_classes=4, optimizer="sgd", momentum=0.0, lr=4.0, lr_schedule="constant")
    assert isinstance(model.head, torch.nn.Identity)  # the non-parametric decoder is the classifier
    _trainer(max_epochs=1).fit(model, dm)
    assert not kv.needs_data_init()
    keys = kv.keys.clone()
    _trainer(max_epochs=3).fit(model, dm)  # a second fit neither re-initialises nor moves the keys
    assert torch.equal(kv.keys, keys)
    assert kv.usage.sum() == 4 * len(dm.split("train")) * 4  # heads x examples x epochs (top_k = 1)
    res = _trainer().test(model, dm, verbose=False)[0]
    assert res["test/task_acc"] > 0.9  # chance is 0.25


def test_one_training_step_changes_only_the_values_of_fetched_keys():
    x, y = _data(n=64)
    kv = DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=64, value_dim=4, top_k=2, value_init="normal")
    kv.init_from_data(_data(n=400, seed=1)[0])
    dm = ArrayDataModule.from_arrays(x_train=x, y_train=y, x_test=x, y_test=y, batch_size=64, val_fraction=0.01)
    model = BottleneckModel(kv, num_classes=4, optimizer="sgd", momentum=0.0, lr=1.0, standardize_features=False)
    batch = dm.split("train").x
    fetched = torch.zeros(4, 64, dtype=torch.bool)
    codes = kv(batch).codes  # (batch, heads, top_k)
    fetched[torch.arange(4).view(1, 4, 1).expand_as(codes), codes] = True
    before = kv.values.detach().clone()
    _trainer(max_steps=1).fit(model, dm)
    changed = (kv.values.detach() != before).any(-1)
    assert changed.any()
    assert torch.equal(kv.values.detach()[~fetched], before[~fetched])  # bit-identical elsewhere
    assert changed[fetched].float().mean() > 0.9


def test_value_param_group_keeps_unfetched_values_identical_under_adamw():
    x, y = _data(n=256)
    kv = DiscreteKeyValueBottleneck(16, num_heads=2, keys_per_head=32, value_dim=4, value_init="normal")
    kv.init_from_data(x)
    opt = torch.optim.AdamW(kv.optimizer_param_groups(), lr=0.1, weight_decay=0.1)
    for step in range(4):  # step 0 fetches from all data; later steps from one class only
        xb, yb = (x, y) if step == 0 else (x[y == 0], y[y == 0])
        before = kv.values.detach().clone()
        out = kv(xb)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(out.z, yb).backward()
        opt.step()
        fetched = torch.zeros(2, 32, dtype=torch.bool)
        fetched[torch.arange(2).view(1, 2, 1).expand_as(out.codes), out.codes] = True
        assert torch.equal(kv.values.detach()[~fetched], before[~fetched])
    # the default AdamW group (momentum, decay) would move them: the reason for the group
    plain = torch.optim.AdamW([kv.values], lr=0.1)
    for xb, yb in ((x, y), (x[y == 0], y[y == 0])):
        before = kv.values.detach().clone()
        plain.zero_grad()
        torch.nn.functional.cross_entropy(kv(xb).z, yb).backward()
        plain.step()
    assert not torch.equal(kv.values.detach()[~fetched], before[~fetched])


def test_nonparametric_decoder_averages_fetched_values_and_concat_keeps_heads():
    x, _ = _data(n=100)
    kv = DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=8, value_dim=3, top_k=2, value_init="normal",
                                    projection="random", code_dim=5)
    kv.init_from_data(x)
    out = kv(x[:10])
    assert out.codes.shape == (10, 4, 2)
    manual = kv.values[torch.arange(4).view(1, 4, 1), out.codes]  # (10, 4, 2, 3)
    assert torch.allclose(out.z, manual.mean((1, 2)), atol=1e-6)
    cat = DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=8, value_dim=3, decoder="concat",
                                     value_init="normal")
    cat.init_from_data(x)
    o = cat(x[:10])
    assert o.z.shape == (10, 12) and cat.out_features == 12 and not cat.predicts_task
    assert torch.allclose(o.z.view(10, 4, 3), cat.values[torch.arange(4).view(1, 4), o.codes[..., 0]], atol=1e-6)


@pytest.mark.parametrize("key_init", ["kmeans", "ema"])
def test_key_initialisation_places_keys_on_the_data(key_init):
    x, _ = _data(n=500)
    kv = DiscreteKeyValueBottleneck(16, num_heads=2, keys_per_head=16, init=key_init, value_dim=10)
    spread_random = torch.cdist(kv.project(x), kv.keys).min(-1).values.mean()
    kv.init_from_data(x)
    assert torch.isfinite(kv.keys).all()
    assert torch.cdist(kv.project(x), kv.keys).min(-1).values.mean() < 0.6 * spread_random
    assert kv.usage.sum() == 0


def test_bad_input_gives_clear_errors_and_keeps_keys():
    with pytest.raises(ValueError, match="num_heads=5 does not divide in_features=16"):
        DiscreteKeyValueBottleneck(16, num_heads=5, value_dim=10)
    with pytest.raises(ValueError, match="top_k=9 must lie in"):
        DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=8, top_k=9, value_dim=10)
    kv = DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=64, value_dim=10)
    with pytest.raises(ValueError, match="needs at least keys_per_head=64 samples, got 10"):
        kv.init_from_data(torch.randn(10, 16))
    keys = kv.keys.clone()
    bad = torch.randn(100, 16)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        kv.init_from_data(bad)
    assert torch.equal(kv.keys, keys) and kv.needs_data_init()
    kv.init_from_data(torch.randn(100, 16))
    with pytest.raises(ValueError, match="NaN or inf"):
        kv(bad)


class _ValueWatch(L.Callback):
    """Per training step: were the values of keys the step did not fetch left bit-identical?"""

    def __init__(self, kv):
        self.kv, self.codes, self.unfetched_moved, self.fetched_moved = kv, None, [], []
        kv.register_forward_hook(lambda m, i, out: setattr(self, "codes", out.codes))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = self.kv.values.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        heads, k = self.kv.values.shape[:2]
        fetched = torch.zeros(heads, k, dtype=torch.bool)
        fetched[torch.arange(heads).view(1, heads, 1).expand_as(self.codes), self.codes] = True
        moved = (self.kv.values.detach() != self.before).any(-1)
        self.unfetched_moved.append(bool(moved[~fetched].any()))
        self.fetched_moved.append(bool(moved[fetched].any()))


@pytest.mark.parametrize(
    "optimizer, kw",
    [("sgd", {"momentum": 0.9, "weight_decay": 0.01}), ("adamw", {"weight_decay": 0.1}), ("adam", {})],
)
@pytest.mark.parametrize("groups", ["bottleneck's", "none (control)"])
def test_through_the_model_only_fetched_values_change_under_every_optimizer(optimizer, kw, groups, monkeypatch):
    """Several steps of a real fit with momentum / Adam moments / weight decay: a value fetched in
    an earlier step but not in this one must stay bit-identical. The control drops the value
    group and must see unfetched values move, proving that the test can fail."""
    x, y = _data(n=256)
    kv = DiscreteKeyValueBottleneck(16, num_heads=2, keys_per_head=32, value_dim=4, value_init="normal")
    kv.init_from_data(x)
    if groups != "bottleneck's":
        monkeypatch.setattr(kv, "optimizer_param_groups", lambda: [])
    dm = ArrayDataModule.from_arrays(x_train=x, y_train=y, x_test=x, y_test=y, batch_size=16, val_fraction=0.01)
    model = BottleneckModel(kv, num_classes=4, optimizer=optimizer, lr=0.05, lr_schedule="constant",
                            standardize_features=False, **kw)
    watch = _ValueWatch(kv)
    _trainer(max_steps=8, callbacks=[watch], limit_val_batches=0).fit(model, dm)
    assert len(watch.unfetched_moved) == 8 and any(watch.fetched_moved)
    if groups == "bottleneck's":
        assert not any(watch.unfetched_moved)
    else:
        assert any(watch.unfetched_moved[1:])
