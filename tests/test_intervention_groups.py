"""Group-level interventions and intervention costs: checked groupings, policies that pick
whole groups, a cost-aware policy, curves by groups and by cumulative cost, CUB's groups."""

from pathlib import Path

import lightning as L
import pytest
import torch
from _concept_data import NAMES, datamodule, shapes_like, trainer

from bottlenecks.analysis import (
    CostAwarePolicy,
    ExpectedChangePolicy,
    UncertaintyPolicy,
    intervention_curve,
    make_groups,
)
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel

GROUPS = {"colour": ["red", "green", "blue"], "shape": ["circle", "square", "triangle"],
          "nuisance": ["big", "striped"]}


def test_make_groups_checks_the_grouping_and_costs():
    g = make_groups(NAMES, {"colour": ["red", "green", "blue"], "shape": [3, 4, 5]},
                    {"colour": 2.0, "circle": 1.0, "square": 1.0, "triangle": 1.5, "big": 0.5, "striped": 0.0})
    # concepts in no group become groups of their own
    assert g.names == ["colour", "shape", "big", "striped"] and g.grouped and g.has_costs
    assert g.members.sum(1).tolist() == [3, 3, 1, 1] and g.members[1, 3:6].all()
    assert g.costs.tolist() == [2.0, 3.5, 0.5, 0.0]  # a group without its own cost: its members' sum
    assert make_groups(NAMES).members.equal(torch.eye(8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"group 'colour': unknown concept 'purple'"):
        make_groups(NAMES, {"colour": ["red", "purple"]})
    with pytest.raises(ValueError, match=r"concept 'circle' is in groups 'shape' and 'round'; groups must not overlap"):
        make_groups(NAMES, {"shape": ["circle", "square"], "round": ["circle"]})
    with pytest.raises(ValueError, match="group 'colour' is empty"):
        make_groups(NAMES, {"colour": []})
    with pytest.raises(ValueError, match=r"the cost of group 'colour' is -1; costs must be finite and non-negative"):
        make_groups(NAMES, GROUPS, {"colour": -1.0, "shape": 1.0, "nuisance": 1.0})
    with pytest.raises(ValueError, match=r"the cost of concept 'big' is nan"):
        make_groups(NAMES, None, [1.0] * 6 + [float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"no cost for concept 'big' \(group 'nuisance'\)"):
        make_groups(NAMES, GROUPS, {"colour": 1.0, "shape": 1.0})
    with pytest.raises(ValueError, match=r"cost given for 'colours', which is neither a group nor a concept"):
        make_groups(NAMES, GROUPS, {"colours": 1.0})
    with pytest.raises(ValueError, match="costs have 7 entries but the model has 8 concepts"):
        make_groups(NAMES, None, [1.0] * 7)


@pytest.fixture(scope="module")
def trained():
    """A joint CBM on noisy Shapes-like data (concepts imperfect, so interventions help)."""
    L.seed_everything(0)
    x, c, y = shapes_like(n=2400, noise=1.3)
    dm = datamodule(x, c, y, 2000)
    model = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=9, lr=3e-2)
    trainer(max_epochs=10, limit_val_batches=0, num_sanity_val_steps=0).fit(model, dm)
    return model, (x[2000:], c[2000:], y[2000:])


class Spy:
    """Wraps a policy and records the mask before each pick and the picks."""

    def __init__(self, policy):
        self.policy, self.masks, self.picks = policy, [], []
        self.name = policy.name

    def wrap(self):
        spy = self

        class Recorded(type(self.policy)):
            def select(self, state):
                spy.masks.append(state.mask.clone())
                pick = super().select(state)
                spy.picks.append(pick.clone())
                return pick

        obj = Recorded.__new__(Recorded)
        obj.__dict__.update(self.policy.__dict__)
        return obj


def test_a_group_intervention_reveals_every_member_and_the_curve_rises(trained):
    model, (x, c, y) = trained
    spy = Spy(UncertaintyPolicy())
    curve = intervention_curve(model, (x, c, y), [spy.wrap(), "random"], budgets=[0, 1, 2, 3], groups=GROUPS)
    assert curve.unit == "groups" and curve.table().startswith("| groups |")
    members = make_groups(NAMES, GROUPS).members
    # after the first pick, each example has exactly the members of the group it picked
    assert torch.equal(spy.masks[1], members[spy.picks[0]])
    # after two picks, two whole groups
    assert torch.equal(spy.masks[2], members[spy.picks[0]] | members[spy.picks[1]])
    for name in ("uncertainty", "random"):
        acc = curve.values[name]
        assert acc[-1] > acc[0] + 0.1 and acc[-1] > 0.97  # colour and shape fix the label
        assert curve.cost[name] == pytest.approx([0, 1, 2, 3])  # no costs: a group costs 1
    # the random policy reveals colour and shape within two picks for 1/3 of the examples only
    assert curve.values["uncertainty"][2] >= curve.values["random"][2]


def test_cost_aware_policy_prefers_the_cheap_informative_group(trained):
    model, (x, c, y) = trained
    x, c, y = x[:150], c[:150], y[:150]
    # colour and shape both decide the label; shape costs ten times more
    costs = {"colour": 2.0, "shape": 20.0, "nuisance": 20.0}
    names = make_groups(NAMES, GROUPS).names

    def share(policy, costs, group):  # share of examples whose first pick is `group`
        spy = Spy(policy)
        intervention_curve(model, (x, c, y), spy.wrap(), budgets=[1], groups=GROUPS, costs=costs)
        return (spy.picks[0] == names.index(group)).float().mean().item()

    blind = share(ExpectedChangePolicy(), costs, "colour")  # the same gain, costs ignored
    assert share(CostAwarePolicy("expected_change"), costs, "colour") > max(0.8, blind + 0.2)
    # swapping the costs swaps the choice
    swapped = {"colour": 20.0, "shape": 2.0, "nuisance": 20.0}
    assert share(CostAwarePolicy("expected_change"), swapped, "shape") > max(0.8, 1 - blind + 0.2)
    # against cumulative cost, the cost-aware policy gets further for the same budget
    curve = intervention_curve(model, (x, c, y), ["cost_aware", ExpectedChangePolicy(), "random"],
                               budgets=[0, 2, 22, 23], groups=GROUPS, costs=costs, budget_by="cost")
    assert curve.budget_by == "cost" and "cumulative cost" in curve.axis_label
    v = curve.values
    assert v["cost_aware"][0] == v["expected_change"][0] == v["random"][0]  # nothing spent yet
    # at cost 2 only colour fits: the cost-aware policy asked for it and gained; the others spent less
    assert v["cost_aware"][1] > v["cost_aware"][0] + 0.01
    assert v["cost_aware"][1] >= max(v["expected_change"][1], v["random"][1])
    assert curve.cost["cost_aware"][1] > max(curve.cost["expected_change"][1], curve.cost["random"][1])
    assert v["cost_aware"][-1] > 0.97 and v["expected_change"][-1] > 0.97  # both groups fit in 22
    assert all(s <= b + 1e-9 for b, s in zip(curve.budgets, curve.cost["cost_aware"]))


def test_bad_curve_arguments_name_the_problem(trained):
    model, data = trained
    with pytest.raises(ValueError, match="budget_by='cost' needs costs"):
        intervention_curve(model, data, "random", budgets=[1], groups=GROUPS, budget_by="cost")
    with pytest.raises(ValueError, match=r"groups='data' reads the data's concept_groups, but tuple has none"):
        intervention_curve(model, data, "random", budgets=[1], groups="data")
    with pytest.raises(ValueError, match="not a gain"):
        CostAwarePolicy("random")
    with pytest.raises(ValueError, match="budget_by must be 'count' or 'cost'"):
        intervention_curve(model, data, "random", budgets=[1], budget_by="seconds")


def test_cub_exposes_its_attribute_groups_and_annotation_costs(tmp_path: Path):
    from test_data_cub import ATTRS, write_cub

    from bottlenecks.data.cub import CUB200

    root = write_cub(tmp_path)
    ds = CUB200(root, split="test", concept_filter="none", val_fraction=0.0)
    assert ds.concept_groups == {
        "has_bill_shape": [ATTRS[0]], "has_wing_color": ATTRS[1:3], "has_size": [ATTRS[3]],
        "has_eye_color": [ATTRS[4]],
    }
    # the fixture's annotation time of attribute a is 3.5 + a seconds; a group's cost is the
    # mean time of its lines (wing colour: attributes 2 and 3)
    assert ds.concept_costs == pytest.approx({"has_bill_shape": 4.5, "has_wing_color": 6.0, "has_size": 7.5,
                                              "has_eye_color": 8.5})
    g = make_groups(ds.concept_names, ds.concept_groups, ds.concept_costs)
    assert g.names == list(ds.concept_groups) and g.members[1].tolist() == [False, True, True, False, False]


def test_report_draws_curves_by_the_datamodules_groups_and_costs(trained, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from types import SimpleNamespace

    from bottlenecks.analysis import html_report, intervention_curves, unit_report

    model, (x, c, y) = trained
    seen = {}
    real = intervention_curves.intervention_curve

    def spy(*args, **kwargs):
        seen.update(kwargs, policies=args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(intervention_curves, "intervention_curve", spy)
    costs = {"colour": 2.0, "shape": 20.0, "nuisance": 20.0}
    ctx = html_report.ReportContext(run_dir=Path("run"), checkpoint=Path("run/last.ckpt"), model=model,
                                    datamodule=SimpleNamespace(concept_groups=GROUPS, concept_costs=costs),
                                    x=x[:100], y=y[:100], concepts=c[:100], units=unit_report(model, x[:100]))
    section = html_report.section_interventions(ctx)
    assert section.title == "Intervention curves" and "<img" in section.html
    assert seen["groups"] == GROUPS and seen["costs"] == costs and "cost_aware" in seen["policies"]
    assert seen["budgets"] == [0, 1, 2, 3]  # counted in groups
