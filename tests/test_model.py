"""BottleneckModel + ConceptBottleneck + ArrayDataModule + CLI, on small synthetic data."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from bottlenecks.cli import main
from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers.concept import ConceptBottleneck, IdentityBottleneck
from bottlenecks.models.module import BottleneckModel


def _trainer(**kw):
    kw.setdefault("max_epochs", 15)
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, deterministic=True, **kw)


def _dm(concept_arrays, **kw):
    x, c, y = concept_arrays
    return ArrayDataModule.from_arrays(
        x_train=x[:1500], y_train=y[:1500], concepts_train=c[:1500],
        x_test=x[1500:], y_test=y[1500:], concepts_test=c[1500:],
        concept_names=["a", "b", "c", "d", "e"], batch_size=128, **kw)


def test_joint_cbm_learns_concepts_and_label(concept_arrays):
    dm = _dm(concept_arrays)
    model = BottleneckModel(ConceptBottleneck(20, concept_names=dm.concept_names), num_classes=4, lr=5e-2)
    _trainer().fit(model, dm)
    res = _trainer().test(model, dm, verbose=False)[0]
    assert res["test/task_acc"] > 0.9  # chance is ~0.25
    assert res["test/concept_acc"] > 0.9
    assert bool(model.norm.fitted)


def test_concept_loss_weight_zero_leaves_concepts_unsupervised(concept_arrays):
    dm = _dm(concept_arrays)
    model = BottleneckModel(ConceptBottleneck(20, num_concepts=5), num_classes=4, lr=5e-2, concept_loss_weight=0.0)
    _trainer().fit(model, dm)
    res = _trainer().test(model, dm, verbose=False)[0]
    assert res["test/task_acc"] > 0.9
    assert res["test/concept_acc"] < 0.85  # nothing ties units to the named concepts


def test_intervention_replaces_probabilities(concept_arrays):
    x, c, y = concept_arrays
    b = ConceptBottleneck(20, num_concepts=5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 2] = True
    out = b(x[:4], concepts=c[:4], intervention_mask=mask)
    assert torch.equal(out.probs[:, 2], c[:4, 2])
    assert torch.equal(out.z[:, 0], torch.sigmoid(out.concepts[:, 0]))
    with pytest.raises(ValueError, match="shape"):
        b(x[:4], concepts=c[:4, :3], intervention_mask=mask)


def test_bad_width_and_concepts_are_named(concept_arrays):
    x, c, y = concept_arrays
    b = ConceptBottleneck(20, num_concepts=5)
    with pytest.raises(ValueError, match="expects 20-dimensional features but got 7"):
        b(x[:4, :7])
    with pytest.raises(ValueError, match="concepts has 5 columns but the concept vocabulary has 3 names"):
        ArrayDataModule.from_arrays(x_train=x, y_train=y, concepts_train=c, concept_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"y_train row 3, label 3 is out of range for num_classes=3 \(expected 0..2\)"):
        ArrayDataModule.from_arrays(x_train=x, y_train=y, num_classes=3)
    with pytest.raises(ValueError, match="NaN or inf"):
        b(torch.full((2, 20), float("nan")))


def _write_npz(tmp_path: Path, concept_arrays) -> Path:
    x, c, y = concept_arrays
    path = tmp_path / "feats.npz"
    np.savez(path, x_train=x[:1500].numpy(), y_train=y[:1500].numpy(), concepts_train=c[:1500].numpy(),
             x_test=x[1500:].numpy(), y_test=y[1500:].numpy(), concepts_test=c[1500:].numpy())
    return path


def _config(tmp_path: Path, npz: Path, **model_args) -> Path:
    init = "\n".join(f"    {k}: {v}" for k, v in model_args.items())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
seed_everything: 0
test_after_fit: true
trainer:
  max_epochs: 10
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {tmp_path}/runs
      name: arrays
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        monitor: val/task_acc
        mode: max
        save_last: true
    - class_path: bottlenecks.analysis.report.RunReport
    - class_path: bottlenecks.analysis.report.PredictionWriter
model:
  class_path: bottlenecks.models.module.BottleneckModel
  init_args:
    lr: 0.05
{init}
    bottleneck:
      class_path: bottlenecks.layers.concept.ConceptBottleneck
data:
  class_path: bottlenecks.data.datamodule.ArrayDataModule
  init_args:
    path: {npz}
    batch_size: 128
""")
    return cfg


def test_cli_fit_test_writes_run_dir_and_checkpoint_reloads(tmp_path, concept_arrays, capsys):
    npz = _write_npz(tmp_path, concept_arrays)
    cfg = _config(tmp_path, npz)
    main(["fit", "--config", str(cfg)])
    run = tmp_path / "runs" / "arrays" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/task_acc"] > 0.9
    assert metrics["linear_probe"]["test"] > 0.9
    assert set(metrics["per_concept"]) == {f"c{i}" for i in range(5)}
    assert (run / "config.yaml").exists()
    assert "run directory" in capsys.readouterr().out
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain data only
    assert state["hyper_parameters"]["bottleneck"]["init_args"]["in_features"] == 20
    model = BottleneckModel.load_from_checkpoint(ckpt, weights_only=True)
    x, c, y = concept_arrays
    model.eval()
    with torch.no_grad():
        acc = (model(x[1500:])[0].argmax(-1) == y[1500:]).float().mean()
    assert acc > 0.9
    # predict from the checkpoint: predictions written next to the run's files
    main(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt)])
    from safetensors.torch import load_file

    pred_files = list((tmp_path / "runs" / "arrays").glob("version_*/predictions.safetensors"))
    assert len(pred_files) == 1
    pred = load_file(str(pred_files[0]))
    assert pred["concept_probs"].shape == (500, 5)
    assert (pred["y_pred"] == y[1500:][pred["index"]]).float().mean() > 0.9
    # a second run never overwrites the first
    main(["fit", "--config", str(cfg), "--trainer.max_epochs", "1"])
    assert (tmp_path / "runs" / "arrays" / "version_2" / "metrics.json").exists()
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_cli_bad_input_is_one_clear_line(tmp_path, concept_arrays, capsys):
    cfg = _config(tmp_path, tmp_path / "missing.npz")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(cfg)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bottlenecks: error:")]
    assert lines == [f"bottlenecks: error: ArrayDataModule: no file at {tmp_path / 'missing.npz'}"]
    assert "Traceback" not in err


def test_concept_predictor_with_hidden_layers_and_dropout():
    # (dropout was passed where the activation's name goes: every such layer failed to build)
    layer = ConceptBottleneck(8, num_concepts=3, hidden=[16], dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in layer.modules())
    layer.train()
    h = torch.ones(64, 8)
    assert not torch.equal(layer(h).concepts, layer(h).concepts)  # dropout is active while training
    layer.eval()
    assert torch.equal(layer(h).concepts, layer(h).concepts)


def test_identity_bottleneck_is_the_black_box(concept_arrays):
    dm = _dm(concept_arrays)
    model = BottleneckModel(IdentityBottleneck(20), num_classes=4, lr=5e-2)
    _trainer().fit(model, dm)
    assert _trainer().test(model, dm, verbose=False)[0]["test/task_acc"] > 0.9


def test_interrupted_fit_resumes_from_its_checkpoint(tmp_path, concept_arrays):
    """A run stopped after 3 epochs continues from last.ckpt: steps, feature statistics and
    weights carry over, and the resumed run ends where an uninterrupted one does."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Batches(L.Callback):
        """Which epochs this fit actually trained, batch by batch."""

        def __init__(self):
            self.epochs = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.epochs.append(trainer.current_epoch)

    def run(max_epochs, ckpt_path=None):
        L.seed_everything(0)
        dm = _dm(concept_arrays)
        model = BottleneckModel(ConceptBottleneck(20, num_concepts=5), num_classes=4, lr=5e-2, lr_schedule="constant")
        cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        seen = Batches()
        trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True, callbacks=[cb, seen])
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        trainer.batches_trained = seen.epochs
        return model, trainer

    first, t1 = run(3)
    resumed, t2 = run(6, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert t1.global_step > 0 and t2.global_step == 2 * t1.global_step
    # the second fit trained epochs 3..5 only: a run from scratch would train 0..5
    assert len(t2.batches_trained) == t1.global_step
    assert sorted(set(t2.batches_trained)) == [3, 4, 5]
    assert t2.train_dataloader.sampler.epoch == 5  # Lightning set each epoch's shuffling seed
    assert torch.equal(resumed.norm.mean, first.norm.mean)  # statistics restored, not refitted
    straight, _ = run(6)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
