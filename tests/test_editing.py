"""The editing API: every edit kind reverts bit for bit, the log survives save/load, key–value
edits stay local, test-time repair helps on a shifted split, bad input leaves the model alone."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml

from _concept_data import NAMES, datamodule, shapes_like, trainer
from test_contract import _build, _init

from bottlenecks.editing import (
    EDIT_KINDS,
    Edit,
    EditLog,
    TestTimeRepair,
    compare_edit_batching,
    edit_from_dict,
    edit_log,
    evaluate_edits,
    predict,
    register_edit,
)
from bottlenecks.layers import BOTTLENECKS, ConceptBottleneck, DiscreteKeyValueBottleneck
from bottlenecks.models.module import BottleneckModel


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, state):
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        y_hat, out = model(x)
    return y_hat.clone(), out.z.clone()


def _equal(a, b):
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def _model_for(b):
    """A BottleneckModel around any bottleneck: its own output when it predicts the task."""
    if b.predicts_task:
        task = "regression" if b.out_features == 1 else "classification"
        return BottleneckModel(b, task=task, num_classes=None if task == "regression" else b.out_features)
    return BottleneckModel(b, num_classes=3)


def _edits_for(model, x):
    """Every edit kind the model's bottleneck supports, found through the contract's hooks only."""
    b = model.bottleneck
    units = b.units()
    edits = []
    if units.kind == "concept":
        edits.append({"kind": "intervene", "values": {units.names[0]: 1.0, units.names[1]: 0.0}})
        edits.append({"kind": "intervene", "values": {units.names[0]: 1.0}, "examples": x[:3]})
    if b.unit_readout() is not None:
        edits.append({"kind": "head_weight", "units": [units.names[0]], "op": "scale", "value": 3.0})
        edits.append({"kind": "head_weight", "units": [0], "classes": [0], "op": "add", "value": 1.0})
        edits.append({"kind": "remove_concept", "units": [units.names[-1]]})
    gates = b.unit_gates()
    if gates:
        used = int(b.unit_activations(model(x)[1]).sum(0).argmax())  # the busiest unit
        if "suppressed" in gates:
            edits.append({"kind": "suppress_codes", "units": [units.names[used]]})
        if "forced" in gates:
            edits.append({"kind": "force_codes", "units": [int(b.unit_activations(model(x)[1]).sum(0).argmin())]})
    table = b.unit_table()
    if table is not None:
        edits.append({"kind": "set_values", "units": [0, units.names[1]], "values": [0.5] * table.shape[1]})
        if model.task == "classification":
            edits.append({"kind": "retrain_values", "x": x[:4], "y": torch.ones(4, dtype=torch.long), "steps": 5,
                          "until_fixed": False})
    return edits


@pytest.mark.parametrize("cls", BOTTLENECKS, ids=lambda c: c.__name__)
def test_every_bottleneck_takes_an_edit_and_reverts_bit_identically(cls):
    b = _build(cls)
    _init(b)
    model = _model_for(b)
    x = torch.randn(40, 12)
    if b.num_concepts:  # concept layers count the labels they see; interventions need some
        model.train()
        model(x, concepts=torch.ones(40, b.num_concepts))
    model.eval()
    edits = _edits_for(model, x)
    assert edits, f"{cls.__name__} supports no edit kind"
    state, (y0, z0) = _state(model), _outputs(model, x)
    log = edit_log(model)
    for spec in list(edits):
        try:
            edit = log.apply(spec)
        except ValueError as err:  # a unit table that no gradient reaches (straight-through codes)
            assert spec["kind"] == "retrain_values" and "set_values instead" in str(err), err
            _assert_same_state(model, state)
            edits.remove(spec)
            continue
        y1, z1 = _outputs(model, x)
        changed = not torch.equal(y1, y0) or not torch.equal(z1, z0) or bool(log.diff(-1)[0].changed)
        assert changed, f"{spec['kind']} changed nothing on {cls.__name__}"
        if spec["kind"] in ("suppress_codes", "force_codes"):  # the switch does what it says
            acts = b.unit_activations(model(x)[1])[:, b.units().index(spec["units"][0])]
            assert bool((acts == 0).all()) if spec["kind"] == "suppress_codes" else bool((acts > 0).all())
        log.undo()
        _assert_same_state(model, state)
        y2, z2 = _outputs(model, x)
        assert torch.equal(y2, y0) and torch.equal(z2, z0), spec["kind"]
        assert _equal(edit_from_dict(edit.to_dict()).to_dict(), edit.to_dict())  # plain data round trip
    # all at once, then undo everything
    log.apply_all(edits)
    assert len(log) == len(edits)
    log.undo(len(edits))
    _assert_same_state(model, state)
    assert torch.equal(_outputs(model, x)[0], y0)


def _trained_cbm(n=1500, epochs=6, noise=0.8, seed=0, **kw):
    x, c, y = shapes_like(n, noise=noise, seed=seed, **kw)
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9, lr=0.05)
    trainer(max_epochs=epochs).fit(model, datamodule(x, c, y, int(0.8 * n)))
    return model.eval(), (x, c, y)


def test_save_load_keeps_the_log_and_the_predictions(tmp_path):
    model, (x, c, y) = _trained_cbm(n=800, epochs=3)
    xt = x[600:]
    y0 = _outputs(model, xt)[0]
    model.edits.apply_all([
        {"kind": "intervene", "values": {"red": 1.0}, "examples": xt[:5]},
        {"kind": "head_weight", "units": ["striped"], "op": "zero"},
        {"kind": "remove_concept", "units": ["big"], "value": 0.5},
        {"kind": "intervene", "values": {"circle": 0.0}},
    ])
    model.edits.undo()  # an undone edit travels too (redo after loading)
    y1 = _outputs(model, xt)[0]
    assert not torch.equal(y0, y1)
    t = trainer(max_epochs=1)
    t.strategy.connect(model)
    path = tmp_path / "edited.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert [e["edit"]["kind"] for e in ckpt["edit_log"]["applied"]] == ["intervene", "head_weight", "remove_concept"]

    loaded = BottleneckModel.load_from_checkpoint(
        path, weights_only=True, bottleneck=ConceptBottleneck(16, concept_names=NAMES)).eval()
    assert torch.equal(_outputs(loaded, xt)[0], y1)  # identical predictions, local edit included
    assert [r["summary"] for r in loaded.edits.list()] == [r["summary"] for r in model.edits.list()]
    loaded.edits.redo()
    model.edits.redo()
    assert torch.equal(_outputs(loaded, xt)[0], _outputs(model, xt)[0])
    loaded.edits.undo(4)
    assert torch.equal(_outputs(loaded, xt)[0], y0)


def test_a_local_intervention_touches_only_its_examples():
    b = ConceptBottleneck(16, concept_names=NAMES)
    model = BottleneckModel(b, num_classes=9)
    x = torch.randn(30, 16)
    model(x, concepts=torch.zeros(30, len(NAMES)))  # (training mode) the layer has seen labels
    model.eval()
    probs0 = model(x)[1].probs.detach().clone()
    model.edits.apply({"kind": "intervene", "values": {"red": 1.0, "circle": 0.0}, "examples": x[4:7]})
    probs = model(x)[1].probs
    assert bool((probs[4:7, 0] == 1).all() and (probs[4:7, 3] == 0).all())
    assert torch.equal(torch.cat([probs[:4], probs[7:]]), torch.cat([probs0[:4], probs0[7:]]))
    # an intervention passed to the call wins where it is set
    values = torch.full((30, len(NAMES)), float("nan"))
    values[:, 0] = 0.25
    out = model(x, concepts=values, intervention_mask=~torch.isnan(values))[1]
    assert bool((out.probs[:, 0] == 0.25).all() and (out.probs[4:7, 3] == 0).all())
    model.edits.undo()
    assert torch.equal(model(x)[1].probs, probs0)


def _dkvb_model():
    torch.manual_seed(0)
    b = DiscreteKeyValueBottleneck(16, num_heads=4, keys_per_head=32, top_k=1, value_dim=9, init="kmeans")
    x, c, y = shapes_like(1200, noise=0.6)
    model = BottleneckModel(b, num_classes=9, lr=4.0, optimizer="sgd", standardize_features=False)
    b.init_from_data(x[:1000])
    trainer(max_epochs=4).fit(model, datamodule(x, c, y, 1000))
    return model.eval(), (x, y)


def test_key_value_edits_change_only_the_selected_keys():
    model, (x, y) = _dkvb_model()
    b = model.bottleneck
    before = b.unit_table().clone()
    # relabel a handful of examples: retrain only the values their keys fetch
    xs, wanted = x[1000:1006], (y[1000:1006] + 1) % 9
    edit = model.edits.apply({"kind": "retrain_values", "x": xs, "y": wanted, "steps": 200, "lr": 0.5})
    fetched = torch.zeros(len(before), dtype=torch.bool)
    fetched[b.units().indices(edit.record.units)] = True
    after = b.unit_table()
    assert torch.equal(after[~fetched], before[~fetched])  # bit-identical outside the selection
    assert not torch.equal(after[fetched], before[fetched])
    assert 0 < fetched.sum() <= 4 * 6
    assert (predict(model, xs) == wanted).float().mean() >= 5 / 6
    model.edits.undo()
    assert torch.equal(b.unit_table(), before)
    # overwrite: exactly the named keys
    model.edits.apply({"kind": "set_values", "units": ["head0/key3", "head2/key7"], "values": [0.0] * 9})
    diff = (b.unit_table() != before).any(1).nonzero().flatten().tolist()
    assert set(diff) <= {3, 2 * 32 + 7}
    model.edits.undo()
    assert torch.equal(b.unit_table(), before)


def test_codebook_edits_replace_the_in_place_methods():
    from bottlenecks.layers import CodebookFeatures

    b = CodebookFeatures(12, codebook_size=16, k=2)
    model = BottleneckModel(b, num_classes=3).eval()
    x = torch.randn(30, 12)
    state = _state(model)
    model.edits.apply({"kind": "force_codes", "units": ["code5"]})
    assert (model(x)[1].codes == 5).any(1).all()
    model.edits.apply({"kind": "suppress_codes", "units": ["code5", 7]})  # suppressing un-forces
    codes = model(x)[1].codes
    assert not ((codes == 5) | (codes == 7)).any()
    with pytest.raises(ValueError, match="cannot force more than top_k=2"):
        model.edits.apply({"kind": "force_codes", "units": [0, 1, 2]})
    assert len(model.edits) == 2
    model.edits.undo(2)
    _assert_same_state(model, state)


def _shifted_split(n=3000, noise=0.8):
    """Source: `striped` follows label parity (p=0.95); shifted: the correlation flips."""
    x, c, y = shapes_like(n, noise=noise, spurious=0.95)
    half = n // 2
    return (x[:half], c[:half], y[:half]), (x[half:], c[half:], y[half:])


def test_repair_improves_the_shifted_split_without_hurting_the_source():
    (xs, cs, ys), (xt, _, yt) = _shifted_split()
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9, lr=0.05)
    trainer(max_epochs=8).fit(model, datamodule(xs, cs, ys, 1100))
    model.eval()
    support = torch.cat([torch.nonzero(yt == k)[:4, 0] for k in range(9)])  # 4 per class
    rest = torch.ones(len(yt), dtype=torch.bool)
    rest[support] = False
    source, target = (xs[1100:], ys[1100:]), (xt[rest], yt[rest])
    ev = evaluate_edits(model, [TestTimeRepair(x=xt[support], y=yt[support])], source, target, keep=True)
    assert ev["target_acc"]["after"] >= ev["target_acc"]["before"] + 0.02, ev.table()
    assert ev["source_acc"]["after"] >= ev["source_acc"]["before"] - 0.01, ev.table()
    assert "striped" in model.edits.applied[0].record.info["masked"]
    # no gradient step: only the readout (head) changed
    assert {r.tensor for r in model.edits.diff()} <= {"head.weight", "head.bias"}


def test_evaluation_and_batching_leave_the_model_unchanged():
    model, (x, y) = _dkvb_model()
    state = _state(model)
    xs, wanted = x[1000:1016], (y[1000:1016] + 1) % 9
    rows = compare_edit_batching(
        model, lambda a, b: {"kind": "retrain_values", "x": a, "y": b, "steps": 60, "lr": 0.5},
        xs, wanted, source=(x[1016:], y[1016:]), sizes=(1, 8))
    assert [r["n"] for r in rows] == [1, 8]
    for r in rows:
        assert 0 <= r["batch_locality"] <= 1 and 0 <= r["seq_efficacy"] <= 1
    assert rows[0]["seq_efficacy"] == rows[0]["batch_efficacy"] == 1.0  # one edit either way
    assert len(model.edits) == 0 and not model.edits.undone
    _assert_same_state(model, state)


# ----------------------------------------------------------------------------- bad input
@register_edit
@dataclass
class _HalfDoneEdit(Edit):
    """A new kind is one class; this one fails after changing the head."""

    kind: ClassVar[str] = "test_half_done"
    value: float = 1.0

    def mutate(self, model, record):
        model.head.weight.data += self.value
        raise ValueError("failed half way")


def test_bad_edits_are_refused_and_leave_the_model_unchanged():
    model, (x, c, y) = _trained_cbm(n=600, epochs=2)
    model.edits.apply({"kind": "head_weight", "units": ["red"], "op": "scale", "value": 2.0})
    state, y0 = _state(model), _outputs(model, x[:50])[0]
    bad = [
        ({"kind": "intervene", "values": {"stripd": 1.0}}, r"no concept named 'stripd'; close matches: \['striped'\]"),
        ({"kind": "head_weight", "units": ["circel"]}, "close matches"),
        ({"kind": "intervention", "values": {"red": 1.0}}, r"unknown edit kind 'intervention'; did you mean \['intervene'\]"),
        ({"kind": "intervene", "values": {"red": 1.5}}, r"probabilities in \[0, 1\]"),
        ({"kind": "intervene", "values": {"red": "high"}}, "must be a number"),
        ({"kind": "head_weight", "units": "red", "op": "scale", "value": 2.0}, "field 'units' must be"),
        ({"kind": "head_weight", "units": ["red"], "op": "double"}, "op must be one of"),
        ({"kind": "head_weight", "units": ["red"], "classes": [12]}, "not a class index"),
        ({"kind": "remove_concept", "units": ["red"], "valu": 0.5}, r"has no field\(s\) \['valu'\]"),
        ({"kind": "suppress_codes", "units": ["red"]}, "cannot suppress its concepts"),
        ({"kind": "set_values", "units": ["red"], "values": [1.0]}, "stores no vector per concept"),
        ({"kind": "test_half_done"}, "failed half way"),
        ("remove red", "an edit is a mapping"),
    ]
    for spec, message in bad:
        with pytest.raises(ValueError, match=message):
            model.edits.apply(spec)
        _assert_same_state(model, state)
        assert len(model.edits) == 1
    # all or nothing: the first edit of a failing batch is reverted
    with pytest.raises(ValueError, match="edit #2"):
        model.edits.apply_all([{"kind": "head_weight", "units": ["blue"], "op": "zero"},
                               {"kind": "head_weight", "units": ["bleu"], "op": "zero"}])
    _assert_same_state(model, state)
    with pytest.raises(ValueError, match="cannot undo 2 edits: the log has 1 applied edit"):
        model.edits.undo(2)
    with pytest.raises(ValueError, match="cannot redo 1 edit"):
        model.edits.redo()
    assert torch.equal(_outputs(model, x[:50])[0], y0)
    assert "test_half_done" in EDIT_KINDS


def test_a_log_that_does_not_fit_the_model_is_refused():
    model, _ = _trained_cbm(n=600, epochs=2)
    model.edits.apply({"kind": "head_weight", "units": ["red"], "op": "zero"})
    state = model.edits.state()
    other_names = NAMES[:-1] + ["stripes"]
    other = BottleneckModel(ConceptBottleneck(16, concept_names=other_names), num_classes=9)
    before = _state(other)
    with pytest.raises(ValueError, match=r"does not fit this model.*stripes"):
        EditLog(other).load_state(state)
    _assert_same_state(other, before)
    same_units = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9)
    with pytest.raises(ValueError, match="do not belong together"):
        EditLog(same_units).load_state(state)  # its head is not what the log wrote
    fresh = copy.deepcopy(model)
    fresh.__dict__.pop("_edit_log")
    EditLog(fresh).load_state(state)  # the model it was written for accepts it


def test_cli_edit_writes_a_new_checkpoint_and_prints_the_evaluation(tmp_path, capsys):
    from bottlenecks.cli import main

    (xs, cs, ys), (xt, _, yt) = _shifted_split(n=1600, noise=0.8)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=xs[:600].numpy(), y_train=ys[:600].numpy(), concepts_train=cs[:600].numpy(),
             x_val=xs[600:700].numpy(), y_val=ys[600:700].numpy(), concepts_val=cs[600:700].numpy(),
             x_test=xs[700:].numpy(), y_test=ys[700:].numpy(), concepts_test=cs[700:].numpy())
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 4, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel",
                  "init_args": {"lr": 0.05, "bottleneck": {"class_path": "bottlenecks.layers.ConceptBottleneck"}}},
        "data": {"class_path": "bottlenecks.data.datamodule.ArrayDataModule",
                 "init_args": {"path": str(npz), "concept_names": NAMES, "batch_size": 128}},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "fit.yaml")])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    original = ckpt.read_bytes()
    np.savez(tmp_path / "source.npz", x=xs[700:].numpy(), y=ys[700:].numpy())
    np.savez(tmp_path / "shifted.npz", x=xt.numpy(), y=yt.numpy())
    edits = {"edits": [{"kind": "remove_concept", "units": ["striped"], "value": 0.5}],
             "evaluate": {"source": "source.npz", "target": "shifted.npz"}}
    (tmp_path / "edits.yaml").write_text(yaml.safe_dump(edits))
    capsys.readouterr()
    main(["edit", str(ckpt), str(tmp_path / "edits.yaml")])
    printed = capsys.readouterr().out
    assert "target_acc" in printed and "locality" in printed and "remove_concept" in printed
    out = tmp_path / "ckpt" / "last.edited.ckpt"
    assert out.is_file() and ckpt.read_bytes() == original  # the original is untouched
    edited = BottleneckModel.load_from_checkpoint(out, weights_only=True).eval()
    assert edited.edits.list()[0]["units"] == ["striped"]
    assert bool((edited.head.weight[:, NAMES.index("striped")] == 0).all())
    # a second run never overwrites the first
    main(["edit", str(ckpt), str(tmp_path / "edits.yaml")])
    assert (tmp_path / "ckpt" / "last.edited-1.ckpt").is_file()
    # bad edit file: one line, exit 2, nothing written
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"edits": [{"kind": "remove_concepts", "units": ["striped"]}]}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(ckpt), str(tmp_path / "bad.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bottlenecks: error:") and "unknown edit kind 'remove_concepts'" in err
    assert not (tmp_path / "ckpt" / "last.edited-2.ckpt").exists()
