"""The information-plane callback on a small MLP trained for a few epochs."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from bottlenecks.analysis.information_plane import (
    InformationPlane,
    collect_activations,
    degree_of_ib_table,
    plot_information_plane,
)
from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.estimators import BinningMI, NoisyCompressedMI
from bottlenecks.layers.stochastic import NoisyBottleneck
from bottlenecks.models.module import BottleneckModel


def _data(n: int = 1500):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0).long())  # 3 classes
    return ArrayDataModule.from_arrays(x_train=x[:1000], y_train=y[:1000], x_val=x[1000:], y_val=y[1000:],
                                       batch_size=100)


def _model(activation: str = "tanh") -> BottleneckModel:
    torch.manual_seed(0)
    layer = NoisyBottleneck(12, 4, hidden=[16, 8], activation=activation)
    return BottleneckModel(layer, num_classes=3, lr=2e-2)


LAYERS = ["bottleneck.encoder.1", "bottleneck.encoder.3", "bottleneck"]


def test_callback_records_the_information_plane(tmp_path):
    cb = InformationPlane(LAYERS, estimator=BinningMI(n_bins=12, range=(-1.0, 1.0)), n_samples=400,
                          save_path=str(tmp_path / "plane.json"), plot_path=str(tmp_path / "plane.png"))
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], deterministic=True)
    trainer.fit(_model("tanh"), _data())
    epochs = sorted({r["epoch"] for r in cb.history})
    assert epochs == [-1, 0, 1, 2, 3]
    assert len(cb.history) == 5 * len(LAYERS)
    h_y = math.log(3)
    for r in cb.history:
        # X is the sample index: I(X;T) = H(T) <= log N, and I(T;Y) <= H(Y) <= log 3
        assert 0 <= r["I_XT"] <= math.log(400) + 1e-9
        assert -1e-9 <= r["I_TY"] <= h_y + 1e-9
        assert r["degree_of_ib"] == pytest.approx(r["I_XT"] - r["I_TY"])
    # training makes the last layer informative about the label
    last = [r for r in cb.history if r["layer"] == "bottleneck"]
    assert last[-1]["I_TY"] > last[0]["I_TY"] + 0.2
    assert json.loads((tmp_path / "plane.json").read_text()) == cb.history
    assert (tmp_path / "plane.png").stat().st_size > 5000
    assert "bottleneck.encoder.1" in degree_of_ib_table(cb.history)
    assert cb.state_dict()["history"] == cb.history


def test_conditional_degree_and_continuous_estimator():
    model = _model("relu")
    x = torch.randn(300, 12)
    y = (x[:, 0] > 0).long()
    cb = InformationPlane(["bottleneck"], estimator=BinningMI(n_bins=6, strategy="equal_mass"), degree="conditional")
    cb.set_data(x, y)
    rec = cb.measure(model, epoch=0, step=0)[0]
    # I(X;T|Y) = I(X;T) - I(T;Y) for a deterministic T; the plug-in identity holds exactly
    assert rec["degree_of_ib"] == pytest.approx(rec["I_XT"] - rec["I_TY"], abs=1e-9)
    cont = InformationPlane(["bottleneck"], estimator=NoisyCompressedMI(noise_std=0.1, n_components=3))
    cont.set_data(x, y)
    rec = cont.measure(model, epoch=0, step=0)[0]
    assert math.isfinite(rec["I_XT"]) and rec["I_XT"] > 0.1


def test_collect_activations_and_errors():
    model = _model()
    acts = collect_activations(model, torch.randn(50, 12), ["bottleneck.encoder.1", "bottleneck", "head"])
    assert acts["bottleneck.encoder.1"].shape == (50, 16)
    assert acts["bottleneck"].shape == (50, 4)  # BottleneckOutput read through z
    assert acts["head"].shape == (50, 3)
    with pytest.raises(ValueError, match="no submodule"):
        collect_activations(model, torch.randn(5, 12), ["bottleneck.nope"])
    with pytest.raises(ValueError, match="at least one layer"):
        InformationPlane([])
    with pytest.raises(RuntimeError, match="no data"):
        InformationPlane(["bottleneck"]).measure(model, 0, 0)
    with pytest.raises(ValueError, match="empty"):
        plot_information_plane([])
