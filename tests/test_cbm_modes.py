"""CBM training modes (independent / sequential / joint) as stages, soft/hard concepts,
the residual side channel and its leakage measure, on small synthetic Shapes-like data."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from _concept_data import NAMES, datamodule, shapes_like, trainer
from lightning.pytorch.callbacks import Callback

from bottlenecks.analysis import concept_leakage
from bottlenecks.cli import main
from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers.concept import ConceptBottleneck, IdentityBottleneck
from bottlenecks.models.module import BottleneckModel
from bottlenecks.models.stages import CBMTrainingMode, Stage, TrainingStages

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def data():
    x, c, y = shapes_like(n=2400, noise=1.0)
    return x, c, y


class Snapshots(Callback):
    """Copies of the predictor and head weights at the start of every training epoch, and the
    head's inputs during the last epoch."""

    def __init__(self):
        self.at_epoch = []
        self.head_inputs = []
        self.batch_concepts = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.at_epoch.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()
                              if k.startswith(("bottleneck.predictor", "head"))})
        self.head_inputs, self.batch_concepts = [], []
        if not hasattr(self, "_hook"):
            self._hook = pl_module.head.register_forward_hook(
                lambda m, args, out: self.head_inputs.append(args[0].detach().clone()) if m.training else None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_concepts.append(batch["concepts"].clone())


def _final(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(("bottleneck.predictor", "head"))}


def _same(a, b, prefix):
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


@pytest.mark.parametrize("mode", ["sequential", "independent"])
def test_two_stage_modes_freeze_the_right_parts(data, mode):
    """The gradient schedule (exact_fit=False): which parts train in which stage."""
    x, c, y = data
    dm = datamodule(x, c, y, 1800)
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9, lr=3e-2,
                            lr_schedule="constant")
    snaps = Snapshots()
    trainer(max_epochs=8, callbacks=[CBMTrainingMode(mode, concept_epochs=4, exact_fit=False), snaps]).fit(model, dm)
    start, end_concepts, end = snaps.at_epoch[0], snaps.at_epoch[4], _final(model)
    # stage "concepts": the head does not move; the predictor does
    assert _same(start, end_concepts, "head")
    assert not _same(start, end_concepts, "bottleneck.predictor")
    # stage "head": the predictor is frozen; the head moves
    assert _same(end_concepts, end, "bottleneck.predictor")
    assert not _same(end_concepts, end, "head")
    # what the head read while training the head stage
    head_in, truth = torch.cat(snaps.head_inputs), torch.cat(snaps.batch_concepts)
    if mode == "independent":
        assert torch.equal(head_in, truth)  # ground-truth concepts
    else:
        assert not torch.equal(head_in, truth) and ((head_in > 0) & (head_in < 1)).any()  # predictions
    # the model is restored after fitting: everything trainable, weights as configured
    assert all(p.requires_grad for p in model.parameters())
    assert model.concept_loss_weight == 1.0 and model.task_loss_weight == 1.0
    res = trainer().test(model, dm, verbose=False)[0]
    assert res["test/concept_acc"] > 0.9
    assert res["test/task_acc"] > 0.6  # chance is 1/9


def test_joint_mode_sets_lambda_and_trains(data):
    x, c, y = data
    dm = datamodule(x, c, y, 1800)
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9, lr=3e-2)
    seen = {}

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["lambda"] = pl_module.concept_loss_weight

    trainer(max_epochs=6, callbacks=[CBMTrainingMode("joint", concept_loss_weight=0.5), Spy()]).fit(model, dm)
    assert seen["lambda"] == 0.5 and model.concept_loss_weight == 1.0
    res = trainer().test(model, dm, verbose=False)[0]
    assert res["test/task_acc"] > 0.75 and res["test/concept_acc"] > 0.8


def test_hard_concepts_reach_the_head_as_zeros_and_ones(data):
    x, c, y = data
    b = ConceptBottleneck(16, concept_names=NAMES, hard=True)
    model = BottleneckModel(b, num_classes=9, lr=3e-2)
    # the gradient schedule (an exact fit saturates some probabilities to exactly 1 on this data)
    trainer(max_epochs=6, callbacks=[CBMTrainingMode("sequential", concept_epochs=3, exact_fit=False)]).fit(
        model, datamodule(x, c, y, 1800))
    model.eval()
    with torch.no_grad():
        out = model.bottleneck(model.norm(x[1800:]))
    assert set(out.z.unique().tolist()) <= {0.0, 1.0}
    assert ((out.probs > 0) & (out.probs < 1)).all()
    # straight-through: the thresholded z still passes gradients to the predictor
    model.train()
    out = model.bottleneck(model.norm(x[:8]))
    out.z.sum().backward()
    assert model.bottleneck.predictor.weight.grad.abs().sum() > 0


def test_modes_refuse_data_without_concept_labels(data):
    x, c, y = data
    dm = ArrayDataModule.from_arrays(x_train=x[:500], y_train=y[:500], num_classes=9)
    for mode, why in [("sequential", "concept predictor is trained on them"),
                      ("independent", "head reads them"), ("joint", "joint loss includes the concept loss")]:
        model = BottleneckModel(ConceptBottleneck(16, num_concepts=8), num_classes=9)
        with pytest.raises(ValueError, match=rf"{mode} CBM training .*needs concept labels \(.*{why}.*\).*"
                                             "ArrayDataModule has no concept labels"):
            trainer(max_epochs=2, callbacks=[CBMTrainingMode(mode)]).fit(model, dm)
    model = BottleneckModel(IdentityBottleneck(16), num_classes=9)
    with pytest.raises(ValueError, match="IdentityBottleneck has no concepts"):
        trainer(max_epochs=2, callbacks=[CBMTrainingMode("sequential")]).fit(model, datamodule(x, c, y, 1800))


def test_stage_schedule_is_checked():
    with pytest.raises(ValueError, match="only the last stage may have epochs=None"):
        TrainingStages([Stage("a"), Stage("b", epochs=2)])
    with pytest.raises(ValueError, match="mode must be one of"):
        CBMTrainingMode("alternating")
    with pytest.raises(ValueError, match="concept_epochs applies to sequential and independent"):
        CBMTrainingMode("joint", concept_epochs=3)
    x, c, y = shapes_like(n=300)
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9)
    with pytest.raises(ValueError, match=r"need more than trainer.max_epochs=3"):
        trainer(max_epochs=3, callbacks=[CBMTrainingMode("sequential", concept_epochs=3)]).fit(
            model, datamodule(x, c, y, 200))
    stages = TrainingStages([Stage("a", epochs=2), Stage("b", epochs=3), Stage("c")])
    assert [stages.stage_at(e) for e in range(7)] == [0, 0, 1, 1, 1, 2, 2]


def test_residual_side_channel_recovers_missing_concepts_and_leakage_is_measured():
    # only the colour concepts are annotated: the shape half of the label is not in the concepts
    x, c, y = shapes_like(n=2400, noise=0.6)
    dm = ArrayDataModule.from_arrays(
        x_train=x[:1800], y_train=y[:1800], concepts_train=c[:1800, :3],
        x_test=x[1800:], y_test=y[1800:], concepts_test=c[1800:, :3],
        concept_names=NAMES[:3], batch_size=128)
    results = {}
    for num_residual in (0, 6):
        L.seed_everything(0)
        model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES[:3], num_residual=num_residual),
                                num_classes=9, lr=3e-2)
        trainer(max_epochs=8).fit(model, dm)
        results[num_residual] = concept_leakage(model, dm)
    plain, side = results[0], results[6]
    assert plain["task_acc"] < 0.45  # colour alone: about 1/3 of the classes
    assert side["task_acc"] > plain["task_acc"] + 0.3
    assert "residual_leakage" not in plain
    # with true colours the side channel still carries the shape: large leakage, large reliance
    assert side["residual_leakage"] > 0.3 and side["residual_reliance"] > 0.3
    assert side["task_acc_true_residual_ablated"] < 0.5


def test_cli_runs_a_training_mode_from_yaml(tmp_path, data):
    x, c, y = data
    npz = tmp_path / "f.npz"
    np.savez(npz, x_train=x[:1500].numpy(), y_train=y[:1500].numpy(), concepts_train=c[:1500].numpy(),
             x_test=x[1500:1800].numpy(), y_test=y[1500:1800].numpy(), concepts_test=c[1500:1800].numpy())
    text = (CONFIGS / "cbm_sequential_shapes.yaml").read_text()
    data_block = text[text.index("data:"):]
    text = text.replace(data_block, f"data:\n  class_path: bottlenecks.data.datamodule.ArrayDataModule\n"
                                    f"  init_args:\n    path: {npz}\n    batch_size: 128\n")
    text = text.replace("max_epochs: 40", "max_epochs: 6").replace("concept_epochs: 20", "concept_epochs: 3")
    text = text.replace("save_dir: runs", f"save_dir: {tmp_path}/runs").replace(
        "default_root_dir: runs", f"default_root_dir: {tmp_path}")
    text = text.replace("  log_every_n_steps: 10\n", "  log_every_n_steps: 10\n  enable_progress_bar: false\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    main(["fit", "--config", str(cfg)])
    import json

    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["test/concept_acc"] > 0.9 and metrics["test/task_acc"] > 0.5


@pytest.mark.parametrize("name", ["cbm_joint_shapes", "cbm_sequential_shapes", "cbm_independent_shapes",
                                  "cem_shapes", "ecbm_shapes"])
def test_shipped_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ShapesDataModule" in out
