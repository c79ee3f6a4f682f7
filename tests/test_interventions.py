"""Test-time interventions: by name/index/per example, bad input, policies and curves."""

import lightning as L
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from _concept_data import NAMES, datamodule, shapes_like, trainer  # noqa: E402

from bottlenecks.analysis import (  # noqa: E402
    ExpectedChangePolicy,
    InterventionPolicy,
    intervene,
    intervention_curve,
    make_intervention,
    plot_intervention_curves,
)
from bottlenecks.layers.cem import ConceptEmbeddingBottleneck  # noqa: E402
from bottlenecks.layers.concept import ConceptBottleneck, IdentityBottleneck  # noqa: E402
from bottlenecks.models.module import BottleneckModel  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """A joint CBM on noisy Shapes-like data: concepts ~90% right, so interventions can help."""
    L.seed_everything(0)
    x, c, y = shapes_like(n=3000, noise=1.3)
    dm = datamodule(x, c, y, 2000)
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9, lr=3e-2)
    trainer(max_epochs=8).fit(model, dm)
    return model, dm, (x[2000:], c[2000:], y[2000:])


def test_intervene_by_name_index_and_per_example(trained):
    model, _, (x, c, y) = trained
    xb = x[:6]
    was_training = model.training
    res = intervene(model, xb, {"red": 1.0, 3: 0.0})
    assert torch.equal(res.probs[:, 0], torch.ones(6)) and torch.equal(res.probs[:, 3], torch.zeros(6))
    assert res.mask[:, [0, 3]].all() and res.mask.sum() == 12
    # untouched concepts keep their predicted probabilities
    base = intervene(model, xb, {}, None)
    assert torch.allclose(res.probs[:, 1], base.probs[:, 1])
    # a tensor of values with a subset of columns, the same for all examples
    res = intervene(model, xb, c[:6], concepts=["blue", "big"])
    assert torch.equal(res.probs[:, 2], c[:6, 2]) and torch.equal(res.probs[:, 6], c[:6, 6])
    # per example: a list of concept lists
    res = intervene(model, xb, c[:6], concepts=[["red"], [], ["circle", "square"], [], [], [7]])
    assert res.mask.sum() == 4 and res.mask[2, 3] and res.mask[2, 4] and res.mask[5, 7]
    # per-example values in a mapping
    res = intervene(model, xb, {"green": torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.25])})
    assert torch.equal(res.probs[:, 1], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.25]))
    # setting the true colour and shape fixes the label (the label rule is linear in them)
    res = intervene(model, x, c, concepts=NAMES[:6])
    assert (res.y_pred == y).float().mean() > 0.99
    assert model.training == was_training  # intervene evaluates in eval mode and restores the mode


def test_intervention_changes_the_label_as_the_rule_says(trained):
    model, _, (x, c, y) = trained
    # force every example to "blue triangle" (class 8) through its concepts
    forced = {"red": 0.0, "green": 0.0, "blue": 1.0, "circle": 0.0, "square": 0.0, "triangle": 1.0}
    res = intervene(model, x[:50], forced)
    assert (res.y_pred == 8).all()


def test_bad_interventions_name_what_is_wrong(trained):
    model, _, (x, c, _) = trained
    with pytest.raises(ValueError, match=r"unknown concept 'purple'; the model's concepts are \['red'"):
        intervene(model, x[:4], {"purple": 1.0})
    with pytest.raises(ValueError, match=r"intervention value 1.5 for concept 'circle' .* outside \[0, 1\]"):
        intervene(model, x[:4], {"circle": 1.5})
    with pytest.raises(ValueError, match=r"value -0.2 for concept 'big' \(example 2\)"):
        intervene(model, x[:4], torch.tensor([0.0, 0.0, -0.2, 1.0]).unsqueeze(1).expand(4, 8).contiguous(),
                  concepts=["big"])
    with pytest.raises(ValueError, match="intervention values have 7 columns but the model has 8 concepts"):
        intervene(model, x[:4], c[:4, :7])
    with pytest.raises(ValueError, match="concept index 8 is out of range for 8 concepts"):
        intervene(model, x[:4], {8: 1.0})
    with pytest.raises(ValueError, match="per-example concept lists: got 2 lists for 4 examples"):
        intervene(model, x[:4], c[:4], concepts=[["red"], ["blue"]])
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(4, 8\)"):
        intervene(model, x[:4], c[:4], concepts=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="'green' was selected for example 0 but its value is NaN"):
        v = c[:4].clone()
        v[0, 1] = float("nan")
        intervene(model, x[:4], v, concepts=["green"])


def test_models_without_concept_supervision_are_refused(trained):
    _, _, (x, c, _) = trained
    black_box = BottleneckModel(IdentityBottleneck(16), num_classes=9)
    with pytest.raises(ValueError, match="IdentityBottleneck has no concepts to intervene on"):
        intervene(black_box, x[:4], {"red": 1.0})
    untrained = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9)
    with pytest.raises(ValueError, match="trained without concept labels"):
        intervene(untrained, x[:4], {"red": 1.0})
    with pytest.raises(ValueError, match="trained without concept labels"):
        intervention_curve(untrained, (x, c, c[:, 0].long()), "random", budgets=[0, 1])
    # a checkpoint written before the counter existed loads as "unknown" (-1) and is not refused
    model, _, _ = trained
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("concept_labels_seen")}
    untrained.load_state_dict(old)
    assert int(untrained.bottleneck.concept_labels_seen) == -1
    assert torch.equal(intervene(untrained, x[:4], {"red": 1.0}).y_pred, intervene(model, x[:4], {"red": 1.0}).y_pred)


def test_curves_rise_monotonically_and_uncertainty_beats_random(trained):
    model, dm, _ = trained
    curve = intervention_curve(model, dm, ["random", "uncertainty", "expected_change"],
                               budgets=range(9), random_repeats=3)
    for name in ("random", "uncertainty"):
        acc = curve.values[name]
        assert all(b >= a - 0.005 for a, b in zip(acc, acc[1:])), (name, acc)
        assert acc[-1] > acc[0] + 0.1
    assert curve.values["random"][0] == curve.values["uncertainty"][0]
    for b in (1, 2, 3):
        assert curve.values["uncertainty"][b] > curve.values["random"][b] + 0.01
        assert curve.values["expected_change"][b] >= curve.values["random"][b]
    # every concept revealed: concepts are all right and the label follows
    assert curve.concept_accuracy["random"][-1] == pytest.approx(1.0)
    assert curve.values["random"][-1] > 0.97
    rows = curve.rows()
    assert len(rows) == 3 * 9 and {"policy", "budget", "accuracy", "concept_accuracy"} <= set(rows[0])
    assert curve.table().count("\n") == 9 + 1
    ax = plot_intervention_curves(curve, title="test")
    assert len(ax.get_lines()) == 3 and ax.get_title() == "test"


def test_unlabelled_concepts_are_never_revealed_and_budgets_saturate(trained):
    model, _, (x, c, y) = trained
    c = c[:200].clone()
    c[:, 6:] = float("nan")  # big and striped unlabelled
    seen = []

    class Spy(InterventionPolicy):
        name = "spy"

        def scores(self, state):
            seen.append(state.available.clone())
            return torch.arange(8.0).expand_as(state.probs)  # prefer the last (unlabelled) columns

    curve = intervention_curve(model, (x[:200], c, y[:200]), [Spy(), ExpectedChangePolicy()], budgets=[0, 6, 10])
    assert all(not a[:, 6:].any() for a in seen)
    assert curve.values["spy"][1] == curve.values["spy"][2]  # nothing left to reveal after 6
    assert curve.values["spy"][1] > 0.99


def test_cem_interventions_use_the_same_api():
    L.seed_everything(0)
    x, c, y = shapes_like(n=2400, noise=1.3)
    dm = datamodule(x, c, y, 1800)
    model = BottleneckModel(ConceptEmbeddingBottleneck(16, concept_names=NAMES, embedding_dim=8),
                            num_classes=9, lr=1e-2)
    trainer(max_epochs=8).fit(model, dm)
    res = intervene(model, x[1800:], c[1800:])
    assert torch.equal(res.probs, c[1800:])
    curve = intervention_curve(model, dm, ["random", "uncertainty"], budgets=[0, 2, 8])
    assert curve.values["uncertainty"][1] > curve.values["random"][1]
    assert curve.values["random"][2] > curve.values["random"][0] + 0.03
    assert curve.values["random"][2] > 0.93


def test_make_intervention_broadcasts_numbers_and_rows():
    v, m = make_intervention(NAMES, 3, 1.0, concepts=["red"])
    assert m.sum() == 3 and torch.isnan(v[:, 1:]).all() and (v[:, 0] == 1).all()
    v, m = make_intervention(NAMES, 2, torch.tensor([0.0, 1.0, float("nan"), 0, 0, 0, 0, 0]))
    assert m.sum() == 14 and not m[:, 2].any()
    with pytest.raises(ValueError, match="either as the keys of `values` or in `concepts`"):
        make_intervention(NAMES, 2, {"red": 1.0}, concepts=["red"])
    with pytest.raises(ValueError, match="intervention values have 3 entries but the model has 8 concepts"):
        make_intervention(NAMES, 2, torch.zeros(3))


def test_label_counter_counts_labelled_entries_and_keeps_unknown():
    layer = ConceptBottleneck(4, num_concepts=3).train()
    c = torch.tensor([[1.0, 0.0, float("nan")], [0.0, float("nan"), float("nan")]])
    layer(torch.randn(2, 4), concepts=c)
    layer(torch.randn(2, 4), concepts=c)
    assert int(layer.concept_labels_seen) == 6  # NaN entries are not labels
    layer.concept_labels_seen.fill_(-1)  # "unknown": a checkpoint from before the counter
    layer(torch.randn(2, 4), concepts=c)
    assert int(layer.concept_labels_seen) == -1
    layer.eval()(torch.randn(2, 4), concepts=c)  # evaluation never counts
    assert int(layer.concept_labels_seen) == -1
