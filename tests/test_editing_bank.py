"""The concept-bank edit of post-hoc models (``replace_bank``): replace or extend the bank, refit
only the head; revert is bit-exact (old shapes included), the log survives save/load, bad input
leaves the model alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _concept_data import trainer

from bottlenecks.concepts import ConceptBank
from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers import ConceptBottleneck
from bottlenecks.layers.posthoc import PosthocConceptBottleneck
from bottlenecks.models.module import BottleneckModel
from bottlenecks.models.posthoc import fit_posthoc_cbm

NAMES = list("abcde")
PARTIAL = ["a", "c", "d", "e"]  # y = 2 c0 + c1: without "b" half the classes cannot be told apart


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, state):
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k


def _pred(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)[0].clone()


def _acc(model, x, y):
    return float((_pred(model, x).argmax(-1) == y).float().mean())


@pytest.fixture
def pcbm(concept_arrays, tmp_path, request):
    residual = getattr(request, "param", False)
    x, c, y = concept_arrays
    full = ConceptBank.from_cavs(x[:1200], c[:1200], NAMES)
    partial = full.select(PARTIAL)
    dm = ArrayDataModule.from_arrays(x_train=x[:1200], y_train=y[:1200], x_val=x[1200:1500], y_val=y[1200:1500],
                                     x_test=x[1500:], y_test=y[1500:])
    model = BottleneckModel(PosthocConceptBottleneck.from_bank(partial, residual=residual, num_classes=4),
                            num_classes=4)
    fit_posthoc_cbm(model, dm)
    np.savez(tmp_path / "train.npz", x=x[:1200].numpy(), y=y[:1200].numpy())
    return model.eval(), full, partial, (x, y), tmp_path


@pytest.mark.parametrize("pcbm", [False, True], indirect=True, ids=["pcbm", "pcbm-h"])
def test_replacing_the_bank_refits_the_head_and_reverts_bit_identically(pcbm):
    model, full, _, (x, y), tmp = pcbm
    xt, yt = x[1500:], y[1500:]
    state, y0, acc0 = _state(model), _pred(model, xt), _acc(model, xt, yt)
    residual = {k: v for k, v in state.items() if ".residual." in k or "feature_" in k}
    edit = model.edits.apply({"kind": "replace_bank", "bank": str(full.save(tmp / "full.safetensors")),
                              "data": str(tmp / "train.npz")})
    assert list(model.bottleneck.units().names) == NAMES
    assert not torch.equal(_pred(model, xt), y0)
    acc1 = _acc(model, xt, yt)
    assert acc1 >= acc0 and acc1 > 0.9
    assert edit.record.info["acc_after"] >= edit.record.info["acc_before"]
    if model.bottleneck.residual is None:  # PCBM: the missing concept was the gap (PCBM-h: the residual closed it)
        assert acc1 > acc0 + 0.2
    for k, v in residual.items():  # PCBM-h's residual is not refitted
        assert torch.equal(model.state_dict()[k], v), k
    model.edits.undo()
    _assert_same_state(model, state)
    assert list(model.bottleneck.units().names) == PARTIAL
    assert torch.equal(_pred(model, xt), y0)


def test_extending_the_bank_adds_units_and_revert_restores_the_old_shapes(pcbm):
    model, full, _, (x, y), tmp = pcbm
    xt, yt = x[1500:], y[1500:]
    state, y0, acc0 = _state(model), _pred(model, xt), _acc(model, xt, yt)
    b = {"names": ["b"], "vectors": full.vectors[1:2].tolist(), "intercepts": [float(full.intercepts[1])]}
    model.edits.apply({"kind": "replace_bank", "mode": "extend", "bank": b, "x": x[:1200], "y": y[:1200]})
    layer = model.bottleneck
    assert list(layer.units().names) == PARTIAL + ["b"]
    assert layer.vectors.shape == (5, 20) and model.head.weight.shape == (4, 5) and model.head.in_features == 5
    assert torch.equal(layer.vectors[:4], state["bottleneck.vectors"])  # the old concepts are kept
    y1 = _pred(model, xt)
    assert _acc(model, xt, yt) > max(acc0, 0.9)
    assert "head.weight" in model.edits.diff_table()
    model.edits.undo()
    _assert_same_state(model, state)
    assert list(layer.units().names) == PARTIAL and model.head.in_features == 4 and layer.out_features == 4
    assert torch.equal(_pred(model, xt), y0)
    model.edits.redo()
    assert list(layer.units().names) == PARTIAL + ["b"] and torch.equal(_pred(model, xt), y1)


def test_save_load_of_an_extended_model_keeps_the_predictions_and_the_undo(pcbm):
    model, full, partial, (x, y), tmp = pcbm
    xt = x[1500:]
    y0 = _pred(model, xt)
    b = {"names": ["b"], "vectors": full.vectors[1:2].tolist()}
    model.edits.apply({"kind": "replace_bank", "mode": "extend", "bank": b, "data": str(tmp / "train.npz")})
    y1 = _pred(model, xt)
    t = trainer(max_epochs=1)
    t.strategy.connect(model)
    t.save_checkpoint(tmp / "edited.ckpt")
    loaded = BottleneckModel.load_from_checkpoint(tmp / "edited.ckpt", weights_only=True,
                                                  bottleneck=PosthocConceptBottleneck.from_bank(partial)).eval()
    assert list(loaded.bottleneck.units().names) == PARTIAL + ["b"]
    assert torch.equal(_pred(loaded, xt), y1)
    loaded.edits.undo()
    assert list(loaded.bottleneck.units().names) == PARTIAL and torch.equal(_pred(loaded, xt), y0)


def test_bad_bank_edits_are_refused_and_leave_the_model_unchanged(pcbm):
    model, full, _, (x, y), tmp = pcbm
    state, y0 = _state(model), _pred(model, x[:50])
    data = {"data": str(tmp / "train.npz")}
    v = full.vectors[:2].tolist()
    bad_y = y[:1200].clone()
    bad_y[0] = 7  # fails in the head refit, after the layer was resized
    bad = [
        ({"bank": {"names": ["p", "q", "r"], "vectors": v}, **data}, r"one row per name"),
        ({"bank": {"names": ["p", "q"], "vectors": [r[:7] for r in v]}, **data}, "7-dimensional but the encoder"),
        ({"bank": {"names": ["a"], "vectors": v[:1]}, "mode": "extend", **data}, r"\['a'\] are already units"),
        ({"bank": {"names": ["p"], "vectors": v[:1]}, "mode": "append", **data}, "mode must be one of"),
        ({"bank": {"names": ["p"], "vectors": v[:1]}}, "needs training data"),
        ({"bank": str(tmp / "missing.safetensors"), **data}, "no concept bank file"),
        ({"bank": {"names": ["p"], "vectors": v[:1]}, "mode": "extend", "x": x[:1200], "y": bad_y},
         r"labels must lie in \[0, 4\)"),
    ]
    for spec, message in bad:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            model.edits.apply({"kind": "replace_bank", **spec})
        _assert_same_state(model, state)
        assert list(model.bottleneck.units().names) == PARTIAL and model.head.in_features == 4
        assert len(model.edits) == 0
    assert torch.equal(_pred(model, x[:50]), y0)
    cbm = BottleneckModel(ConceptBottleneck(20, concept_names=NAMES), num_classes=4)
    cstate = _state(cbm)
    with pytest.raises(ValueError, match="ConceptBottleneck's concepts come from no bank"):
        cbm.edits.apply({"kind": "replace_bank", "bank": {"names": ["p"], "vectors": v[:1]}, **data})
    _assert_same_state(cbm, cstate)


def test_an_edit_file_names_the_bank_and_the_data_relative_to_itself(tmp_path):
    from bottlenecks.editing.cli import read_edit_file

    (tmp_path / "edits.yaml").write_text(
        "edits:\n  - kind: replace_bank\n    mode: extend\n    bank: banks/more.safetensors\n    data: train.npz\n")
    spec = read_edit_file(tmp_path / "edits.yaml")["edits"][0]
    assert spec["bank"] == str(tmp_path / "banks" / "more.safetensors") and spec["data"] == str(tmp_path / "train.npz")
