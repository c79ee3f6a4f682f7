"""Issue 13: several optimiser steps per Lightning batch (``data.steps_per_batch``) take the
same updates in the same order as one step per batch, and resume like it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel


def _data(k: int, n: int = 1000, batch_size: int = 64) -> ArrayDataModule:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 24, generator=g)
    c = (x[:, :4] > 0).float()
    c[::7, 2] = float("nan")  # some concept labels missing
    y = ((x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
    return ArrayDataModule.from_arrays(x_train=x, y_train=y, concepts_train=c, x_val=x[:100], y_val=y[:100],
                                       concepts_val=c[:100], num_classes=4, batch_size=batch_size,
                                       steps_per_batch=k)


def _model(dropout: float = 0.0, **kw) -> BottleneckModel:
    torch.manual_seed(0)
    return BottleneckModel(ConceptBottleneck(24, num_concepts=4, hidden=[16], dropout=dropout), num_classes=4,
                           lr=1e-2, **kw)


def _trainer(**kw) -> L.Trainer:
    kw.setdefault("max_epochs", 3)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kw)


def _fit(k: int, model_kw: dict | None = None, **trainer_kw):
    model, trainer = _model(**(model_kw or {})), _trainer(**trainer_kw)
    trainer.fit(model, _data(k))
    return model, trainer


def _assert_same(a: BottleneckModel, b: BottleneckModel) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("k", [3, 16])  # 1000 rows / 64: 16 steps an epoch, the last Lightning batch short for 3
def test_k_steps_per_batch_make_the_updates_of_one(k):
    # (dropout: the random draws too come in the same order)
    kw = dict(model_kw={"lr_schedule": "cosine", "warmup_fraction": 0.1, "dropout": 0.2}, gradient_clip_val=0.02)
    one, t1 = _fit(1, **kw)
    many, tk = _fit(k, **kw)
    assert not many.automatic_optimization
    assert t1.global_step == tk.global_step == 3 * 16
    _assert_same(one, many)
    for key in ("train/loss", "train/concept_loss", "train/task_acc", "val/task_acc", "val/concept_auroc"):
        assert torch.equal(t1.callback_metrics[key], tk.callback_metrics[key]), key
    # the schedule ran its whole length: the last step's lr is cosine's end
    assert tk.optimizers[0].param_groups[0]["lr"] == pytest.approx(t1.optimizers[0].param_groups[0]["lr"], abs=0)


class _CountBackward(L.Callback):
    def __init__(self) -> None:
        self.backward = self.optimizer_steps = 0

    def on_after_backward(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.backward += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        self.optimizer_steps += 1


def test_callbacks_hooking_backward_and_the_step_see_every_step():
    # such a callback takes the steps through Lightning's wrappers; the updates are the same
    direct, _ = _fit(4)
    assert direct._direct_steps
    counter = _CountBackward()
    wrapped, t = _fit(4, callbacks=[counter])
    assert not wrapped._direct_steps
    assert counter.backward == counter.optimizer_steps == t.global_step == 3 * 16
    _assert_same(direct, wrapped)


def test_max_steps_stops_inside_a_batch():
    one, t1 = _fit(1, max_steps=21, max_epochs=-1)
    many, tk = _fit(8, max_steps=21, max_epochs=-1)
    assert t1.global_step == tk.global_step == 21
    _assert_same(one, many)


class _StopAfterEpoch(L.Callback):
    """The run stops (as if killed) after this epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.parametrize("first,then", [(1, 4), (4, 4), (4, 1)])
def test_resume_with_any_steps_per_batch_continues_the_run(tmp_path, first, then):
    # (no dropout here: a checkpoint does not hold torch's random state, so a resumed run draws
    # other dropout masks whatever steps_per_batch is)
    straight, ts = _fit(1, max_epochs=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    _trainer(max_epochs=4, enable_checkpointing=True, callbacks=[_StopAfterEpoch(1), ckpt]).fit(_model(), _data(first))
    resumed = _model()
    tr = _trainer(max_epochs=4)
    tr.fit(resumed, _data(then), ckpt_path=str(tmp_path / "last.ckpt"))
    assert tr.global_step == ts.global_step == 4 * 16
    _assert_same(straight, resumed)


def test_settings_that_cannot_combine_are_named(tmp_path):
    with pytest.raises(ValueError, match="steps_per_batch must be a positive integer"):
        _data(0)
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        _fit(4, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match=r"every_n_train_steps=10\) is not a multiple of data.steps_per_batch=4"):
        _fit(4, enable_checkpointing=True, callbacks=[ModelCheckpoint(every_n_train_steps=10, save_top_k=-1)],
             default_root_dir=str(tmp_path))


class _EveryBatch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        pass


@pytest.mark.parametrize("trainer_kw,expected", [
    ({}, 8192 // 64),  # the default: about 8192 rows per Lightning batch
    ({"enable_checkpointing": True}, 8192 // 64),  # an epoch-cadence checkpoint does not mind
    ({"callbacks": [_EveryBatch()]}, 1),  # a callback acting on every batch keeps one step per batch
    ({"limit_train_batches": 5}, 1),
    ({"limit_train_batches": 1}, 1),  # one batch (an int), not the whole epoch
    ({"val_check_interval": 4}, 1),
    ({"accumulate_grad_batches": 2}, 1),
])
def test_auto_groups_steps_only_where_nothing_per_batch_changes(tmp_path, trainer_kw, expected):
    dm = _data("auto")
    model, trainer = _model(), _trainer(max_epochs=1, default_root_dir=str(tmp_path), **trainer_kw)
    trainer.fit(model, dm)
    assert dm.train_steps_per_batch() == expected
    assert model.automatic_optimization is (expected == 1)
    if expected > 1:
        one, _ = _fit(1, max_epochs=1)
        _assert_same(one, model)


def test_without_a_trainer_the_loader_serves_single_steps():
    dm = _data("auto")
    assert dm.train_steps_per_batch() == 1
    assert next(iter(dm.train_dataloader()))["x"].shape[0] == 64
