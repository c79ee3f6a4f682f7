"""The bottleneck contract: a new method is one class (defined here, a dozen lines) plus a YAML,
and training, units, interventions and analysis work on it without touching the package;
every bottleneck of the package enumerates its units."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from bottlenecks.analysis import intervene, intervention_curve
from bottlenecks.cli import main
from bottlenecks.layers import BOTTLENECKS
from bottlenecks.layers.base import Bottleneck, BottleneckOutput, ConceptLayer, Units, apply_intervention
from bottlenecks.models.module import BottleneckModel


class ToyConcepts(ConceptLayer):
    """A new concept method in a dozen lines: concepts from a linear map of the features."""

    def __init__(self, in_features: int, concept_names: list[str] | None = None, num_concepts: int | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = len(self._init_concepts(concept_names, num_concepts))
        self.linear = nn.Linear(in_features, self.out_features)

    def forward(self, h, concepts=None, intervention_mask=None):
        self._count_labels(concepts)
        logits = self.linear(h)
        probs = apply_intervention(torch.sigmoid(logits), concepts, intervention_mask)
        return BottleneckOutput(z=probs, concepts=logits, probs=probs)


class ToySparse(Bottleneck):
    """A new unsupervised method: ReLU units with an L1 loss and a logged metric."""

    def __init__(self, in_features: int, width: int = 6):
        super().__init__()
        self.in_features, self.out_features = in_features, width
        self.enc = nn.Linear(in_features, width)

    def forward(self, h, concepts=None, intervention_mask=None):
        z = torch.relu(self.enc(h))
        return BottleneckOutput(z=z, losses={"l1": z.abs().mean()}, metrics={"active": (z > 0).float().mean()})

    def units(self):
        return Units("sae", tuple(f"unit{i}" for i in range(self.out_features)))


def _npz(tmp_path, concept_arrays):
    x, c, y = concept_arrays
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x[:1200].numpy(), y_train=y[:1200].numpy(), concepts_train=c[:1200].numpy(),
             x_val=x[1200:1500].numpy(), y_val=y[1200:1500].numpy(), concepts_val=c[1200:1500].numpy(),
             x_test=x[1500:].numpy(), y_test=y[1500:].numpy(), concepts_test=c[1500:].numpy())
    return path


def test_a_new_bottleneck_trains_from_yaml_and_supports_interventions(tmp_path, concept_arrays):
    config = {
        "seed_everything": 0,
        "test_after_fit": True,
        "trainer": {"max_epochs": 15, "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                 "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy"}},
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"monitor": "val/loss", "save_last": True}},
                                  {"class_path": "bottlenecks.analysis.report.RunReport"}]},
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel",
                  "init_args": {"lr": 0.05, "bottleneck": {"class_path": "test_contract.ToyConcepts"}}},
        "data": {"class_path": "bottlenecks.data.datamodule.ArrayDataModule",
                 "init_args": {"path": str(_npz(tmp_path, concept_arrays)), "concept_names": list("abcde"),
                               "batch_size": 128}},
    }
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(cfg)])
    run = tmp_path / "runs" / "toy" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/concept_acc"] > 0.9 and metrics["test/task_acc"] > 0.8  # chance: 0.5 and 0.25

    model = BottleneckModel.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert isinstance(model.bottleneck, ToyConcepts)
    units = model.bottleneck.units()
    assert units.kind == "concept" and list(units) == list("abcde")
    x, c, y = concept_arrays
    acts = model.bottleneck.read_units(model.norm(x[1500:]))
    assert acts.shape == (500, 5) and ((acts > 0.5).float() == c[1500:]).float().mean() > 0.9
    # label = 2 c0 + c1: setting a and b decides the class
    res = intervene(model, x[1500:1508], {"a": 1.0, "b": 0.0})
    assert (res.y_pred == 2).all()
    curve = intervention_curve(model, {"x": x[1500:], "concepts": c[1500:], "y": y[1500:]},
                               ["random"], budgets=[0, 5])
    assert curve.values["random"][1] == 1.0 >= curve.values["random"][0]


def test_aux_losses_and_metrics_of_a_new_bottleneck_reach_the_logs(concept_arrays):
    import lightning as L

    from bottlenecks.data.datamodule import ArrayDataModule

    x, c, y = concept_arrays
    dm = ArrayDataModule.from_arrays(x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    model = BottleneckModel(ToySparse(20), num_classes=4, lr=1e-2, loss_weights={"l1": 5.0})
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    logged = trainer.callback_metrics
    assert {"train/l1", "train/active", "val/l1", "val/active"} <= set(logged)
    t = model.compute_losses({"y": y[:4]}, *model(x[:4]))
    assert torch.allclose(t["loss"], t["task_loss"] + 5.0 * t["l1"])


def _build(cls):
    """Every bottleneck class, built small with its required arguments."""
    kw = {"in_features": 12}
    name = cls.__name__
    if "Concept" in name:
        kw["concept_names"] = ["p", "q", "r"]
    if name == "EnergyConceptBottleneck":
        kw["num_classes"] = 3
    if name in ("VectorQuantizer", "CodebookFeatures"):
        kw["codebook_size"] = 16
    if name == "ResidualVectorQuantizer":
        kw.update(codebook_size=8, num_quantizers=2, init="random")
    if name == "FiniteScalarQuantizer":
        kw["levels"] = [3, 3]
    if name == "LookupFreeQuantizer":
        kw["code_dim"] = 4
    if name == "CodebookFeatures":
        kw["top_k"] = 2
    if name == "DiscreteKeyValueBottleneck":
        kw.update(num_heads=3, keys_per_head=8, top_k=2, init="random", num_classes=3)
    if name in ("LabelFreeCBM", "LaBoBottleneck", "SparseConceptBottleneck"):  # language-guided
        kw.update(concept_names=["p", "q", "r"], concept_vectors=torch.randn(3, 12))
    if name in ("LaBoBottleneck", "DiscoverThenNameCBM"):
        kw["num_classes"] = 3
    if name == "DiscoverThenNameCBM":
        kw.update(num_units=16, top_k=4, sae_epochs=2, vocabulary=["p", "q"], vocabulary_vectors=torch.randn(2, 12))
    return cls(**kw)


def _init(b, n=200):
    """Data-dependent initialisation as the model does it: a sample of features with the concept
    labels (when the layer has concepts) and targets."""
    if b.needs_data_init():
        c = (torch.rand(n, b.num_concepts) > 0.5).float() if b.num_concepts else None
        b.init_from_data(torch.randn(n, b.in_features), concepts=c, y=torch.randint(0, 3, (n,)))
    return b


@pytest.mark.parametrize("cls", BOTTLENECKS, ids=lambda c: c.__name__)
def test_every_bottleneck_enumerates_and_reads_its_units(cls):
    b = _build(cls)
    h = torch.randn(20, 12)
    fresh = b.concept_supervision()
    _init(b)
    b.eval()
    units = b.units()
    assert isinstance(units, Units) and len(units) > 0
    assert len(set(units.names)) == len(units)
    acts = b.read_units(h)
    assert acts.shape == (20, len(units))
    assert torch.isfinite(acts).all()
    # addressing by name and index agree, and a wrong name lists close matches
    assert units.index(units.names[-1]) == len(units) - 1 == units.index(-1)
    with pytest.raises(ValueError, match="close matches"):
        units.index(units.names[0] + "x")
    if units.kind in ("code", "key"):
        out = b(h)
        slots = out.codes.reshape(20, -1).shape[1]
        assert (acts.sum(1) == slots).all()  # each slot activates exactly one unit
    if units.kind == "concept":
        assert fresh == 0 and list(units) == ["p", "q", "r"]
    # the hooks are declared on the base and answer without special cases
    batch = {"y": torch.zeros(20, dtype=torch.long)}
    if b.num_concepts:
        batch["concepts"] = torch.ones(20, b.num_concepts)
    assert isinstance(b.loss_terms(b(h), batch), dict)
    assert isinstance(b.optimizer_param_groups(), list) and isinstance(b.side_channel_parameters(), list)
    assert isinstance(b.predicts_task, bool)


@pytest.mark.parametrize("cls", BOTTLENECKS, ids=lambda c: c.__name__)
def test_data_initialisation_runs_once_and_survives_the_state_dict(cls):
    """A resumed run restores the weights before fit start: a layer that was initialised must not
    ask for (and redo) its data-dependent initialisation, or resuming would overwrite what it learned."""
    b = _init(_build(cls))
    assert not b.needs_data_init(), f"{cls.__name__} still asks for data init after init_from_data"
    fresh = _build(cls)
    if fresh.needs_data_init():
        fresh.load_state_dict(b.state_dict())
        assert not fresh.needs_data_init(), f"{cls.__name__} forgets its initialisation across the state dict"
