"""Issue 15: a real `bottlenecks fit` process killed (SIGKILL, no cleanup) mid-epoch or in the
middle of writing a checkpoint resumes from its last checkpoint to the metrics and weights of
a run that was never interrupted; and the same config and seed give the same numbers twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bottlenecks.cli import main

ROOT = Path(__file__).resolve().parents[1]

KILLER = '''
import os, signal
import lightning as L
import torch


class KillAt(L.Callback):
    """SIGKILLs its own process: mid-epoch at (epoch, batch), or half-way through writing the
    checkpoint of the end of `epoch` (batch = -1)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and self.batch == -1:
            real = torch.save

            def half_then_die(obj, f, *args, **kwargs):
                import io
                buf = io.BytesIO()
                real(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = half_then_die
'''


def _config(tmp: Path, npz: Path) -> Path:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(f"""
seed_everything: 0
test_after_fit: true
trainer:
  max_epochs: 4
  deterministic: true
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {tmp}/runs
      name: arrays
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        monitor: val/task_acc
        mode: max
        save_last: true
    - class_path: bottlenecks.analysis.report.RunReport
      init_args:
        linear_probe: false
model:
  class_path: bottlenecks.models.module.BottleneckModel
  init_args:
    lr: 0.05
    bottleneck:
      class_path: bottlenecks.layers.concept.ConceptBottleneck
data:
  class_path: bottlenecks.data.datamodule.ArrayDataModule
  init_args:
    path: {npz}
    batch_size: 64
""")
    return cfg


@pytest.fixture
def setup(tmp_path):
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(600, 4, generator=g) > 0.5).float()
    x = c @ torch.randn(4, 12, generator=g) + 0.5 * torch.randn(600, 12, generator=g)
    y = (2 * c[:, 0] + c[:, 1]).long()
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=x[:500].numpy(), y_train=y[:500].numpy(), concepts_train=c[:500].numpy(),
             x_test=x[500:].numpy(), y_test=y[500:].numpy(), concepts_test=c[500:].numpy())
    (tmp_path / "killer.py").write_text(KILLER)
    return tmp_path, _config(tmp_path, npz)


def _run_dir(tmp: Path, version: int) -> Path:
    return tmp / "runs" / "arrays" / f"version_{version}"


def _result(run: Path) -> tuple[dict, dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return metrics, state


@pytest.mark.slow
@pytest.mark.parametrize("epoch, batch", [(2, 3), (2, -1)], ids=["mid-epoch", "mid-checkpoint-write"])
def test_killed_fit_resumes_to_the_uninterrupted_result(setup, epoch, batch):
    tmp, cfg = setup
    main(["fit", "--config", str(cfg)])  # never interrupted: version_0
    straight_metrics, straight_state = _result(_run_dir(tmp, 0))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bottlenecks.cli", "fit", "--config", str(cfg),
         "--trainer.callbacks+=killer.KillAt", f"--trainer.callbacks.init_args.epoch={epoch}",
         f"--trainer.callbacks.init_args.batch={batch}"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed, not finished
    killed = _run_dir(tmp, 1) / "checkpoints"
    assert not (killed.parent / "metrics.json").exists()
    last = torch.load(killed / "last.ckpt", weights_only=True)  # a complete checkpoint, never a torn one
    assert last["epoch"] == epoch - 1
    if batch == -1:
        assert [p.name for p in killed.iterdir() if ".tmp-" in p.name]  # the torn write, aside

    main(["fit", "--config", str(cfg), "--ckpt_path", str(killed / "last.ckpt")])
    resumed_metrics, resumed_state = _result(_run_dir(tmp, 2))
    assert resumed_metrics == straight_metrics
    assert resumed_state.keys() == straight_state.keys()
    for k in straight_state:
        assert torch.equal(resumed_state[k], straight_state[k]), k


@pytest.mark.slow
def test_killed_stochastic_fit_resumes_to_the_uninterrupted_weights(tmp_path):
    """The VIB samples from the global generator: its state travels in the checkpoint."""
    (tmp_path / "killer.py").write_text(KILLER)
    base = ["fit", "--config", str(ROOT / "configs" / "ib_vib_diabetes.yaml"), "--trainer.max_epochs", "4",
            "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    main(base)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bottlenecks.cli", *base, "--trainer.callbacks+=killer.KillAt",
                           "--trainer.callbacks.init_args.epoch=2", "--trainer.callbacks.init_args.batch=2"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr[-3000:]
    runs = tmp_path / "runs" / "ib_vib_diabetes"
    main([*base, "--ckpt_path", str(runs / "version_1" / "checkpoints" / "last.ckpt")])
    a = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(runs / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_config_and_seed_give_the_same_numbers_twice(setup):
    tmp, cfg = setup
    main(["fit", "--config", str(cfg), "--trainer.max_epochs", "2"])
    main(["fit", "--config", str(cfg), "--trainer.max_epochs", "2"])
    (m0, s0), (m1, s1) = _result(_run_dir(tmp, 0)), _result(_run_dir(tmp, 1))
    assert m0 == m1
    assert all(torch.equal(s0[k], s1[k]) for k in s0)


def test_stochastic_bottleneck_run_is_repeatable(tmp_path):
    """The VIB samples from the global generator: seed_everything must pin every draw."""
    args = ["fit", "--config", str(ROOT / "configs" / "ib_vib_diabetes.yaml"), "--trainer.max_epochs", "2",
            "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    main(args)
    main(args)
    runs = tmp_path / "runs" / "ib_vib_diabetes"
    a = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(runs / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_class_incremental_harness_is_repeatable(tmp_path, capsys):
    from bottlenecks.continual.__main__ import main as continual_main

    cfg = tmp_path / "cont.yaml"
    cfg.write_text("""
seed: 0
classes_per_task: 5
unlabelled: train
data:
  class_path: bottlenecks.data.modules.DigitsDataModule
learners:
  - class_path: bottlenecks.continual.LightningLearner
    init_args:
      name: dkvb
      epochs_per_task: 1
      model:
        class_path: bottlenecks.models.module.BottleneckModel
        init_args:
          num_classes: 10
          optimizer: sgd
          momentum: 0.0
          lr: 16.0
          lr_schedule: constant
          standardize_features: false
          bottleneck:
            class_path: bottlenecks.layers.key_value.DiscreteKeyValueBottleneck
            init_args:
              in_features: 64
              num_heads: 4
              keys_per_head: 32
              key_dim: 8
              projection: random
              value_dim: 10
              key_init: kmeans
  - class_path: bottlenecks.continual.SequentialLinearProbe
    init_args:
      feature_dim: 64
      num_classes: 10
      epochs_per_task: 1
""")
    outs = []
    for i in range(2):
        continual_main(["--config", str(cfg), "--output", str(tmp_path / f"out{i}.json")])
        outs.append(json.loads((tmp_path / f"out{i}.json").read_text()))
    assert outs[0] == outs[1]
    assert outs[0]["results"][0]["metrics"]["avg_acc"] > 0.3  # it did learn something
