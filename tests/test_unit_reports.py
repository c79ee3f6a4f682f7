"""Unit reports and plots: every bottleneck of the package through units()/unit_activations,
dead-unit alarms, classes per unit, top examples, contributions, and clear errors."""

import warnings

import numpy as np
import pytest
import torch
from test_contract import ToyConcepts, ToySparse, _build, _init

from bottlenecks.analysis import plots
from bottlenecks.analysis.units import (
    DeadUnitWarning,
    example_image,
    top_example_images,
    unit_contributions,
    unit_report,
)
from bottlenecks.layers import BOTTLENECKS, IdentityBottleneck
from bottlenecks.layers.base import Bottleneck, BottleneckOutput, Units, one_hot_units
from bottlenecks.models.module import BottleneckModel

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("cls", BOTTLENECKS, ids=lambda c: c.__name__)
def test_every_bottleneck_gets_a_unit_report_with_plots(cls):
    b = _build(cls)
    h = torch.randn(60, 12)
    _init(b)
    y = torch.arange(60) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeadUnitWarning)
        rep = unit_report(b, h, y, class_names=["a", "b", "c"], top_k=5)
    units = b.units()
    n = len(units)
    assert rep.kind == units.kind and rep.names == units.names
    assert rep.activations.shape == (60, n)
    assert rep.usage.shape == rep.dead.shape == (n,) and ((rep.usage >= 0) & (rep.usage <= 1)).all()
    assert rep.top_examples.shape == (n, 5)
    assert rep.class_counts.shape == (n, 3)
    if units.kind in ("code", "key"):
        slots = b(h).codes.reshape(60, -1).shape[1]
        # every slot of every example selects one unit: the class table counts them all
        assert rep.class_counts.sum() == 60 * slots
        assert torch.equal(rep.class_counts.sum(0), torch.full((3,), 20.0 * slots))
        # the top examples of a unit are examples where it fired
        u = int(torch.argmax(rep.usage))
        assert all(rep.activations[i, u] > 0 for i in rep.top_examples_of(u))
        assert all(rep.top_examples_of(d) == [] for d in rep.dead_units())
    else:
        u = 0
        top = rep.top_examples_of(u)
        assert rep.activations[top[0], u] == rep.activations[:, u].max()
    row = rep.rows()[u]
    assert row["unit"] == units.names[u] and "classes" in row
    assert rep.table().count("\n") >= min(n, 40) + 1
    assert plots.figure_png(rep.plot_usage().figure).startswith(PNG)
    assert plots.figure_png(rep.plot_classes().figure).startswith(PNG)


def _exact_concepts(concept_arrays):
    """A concept layer that reads the 5 concepts of ``concept_arrays`` (almost) exactly."""
    x, c, _ = concept_arrays
    w = torch.linalg.lstsq(x, c - 0.5).solution  # (20, 5): features -> centred concepts
    layer = ToyConcepts(20, concept_names=list("abcde"))
    with torch.no_grad():
        layer.linear.weight.copy_(20 * w.T)
        layer.linear.bias.zero_()
    return layer


def test_classes_and_top_examples_per_concept(concept_arrays):
    x, c, y = concept_arrays  # label = 2 c0 + c1
    rep = unit_report(_exact_concepts(concept_arrays), x, y, class_names=["none", "b only", "a only", "a and b"])
    assert rep.kind == "concept" and not rep.dead.any() and rep.alarm() is None
    # "a" (c0) is on exactly for classes 2 and 3, "b" (c1) for 1 and 3
    assert {name for name, _ in rep.classes_of("a", top=2)} == {"a only", "a and b"}
    assert {name for name, _ in rep.classes_of("b", top=2)} == {"b only", "a and b"}
    assert rep.classes_of("a", top=4)[-1][1] < 0.05  # (almost) never on for the other classes
    # the units most specific to class "a only" are a (on for 2 classes) before c, d, e (on for 4)
    assert rep.units_for_class("a only")[0][0] == "a"
    assert rep.units_for_class(3)[0][0] in ("a", "b")
    assert abs(rep.usage[0] - c[:, 0].mean()) < 0.02
    top = rep.top_examples_of("a")
    assert len(top) == 8 and (c[top, 0] == 1).all()


def test_bad_units_and_classes_are_named(concept_arrays):
    x, _, y = concept_arrays
    rep = unit_report(_exact_concepts(concept_arrays), x[:100], y[:100], class_names=["w", "x", "y", "z"])
    with pytest.raises(ValueError, match=r"no concept named 'aa'.*close matches: \['a'\]"):
        rep.top_examples_of("aa")
    with pytest.raises(ValueError, match="concept index 9 is out of range for 5 concepts"):
        rep.classes_of(9)
    with pytest.raises(ValueError, match=r"no class named 'zz'.*close matches: \['z'\]"):
        rep.units_for_class("zz")
    with pytest.raises(ValueError, match=r"class 4 does not exist: there are 4 classes \(0..3\)"):
        rep.units_for_class(4)
    no_labels = unit_report(_exact_concepts(concept_arrays), x[:10])
    with pytest.raises(ValueError, match="no class labels"):
        no_labels.units_for_class(0)
    with pytest.raises(ValueError, match="x has 10 rows but y has 9"):
        unit_report(_exact_concepts(concept_arrays), x[:10], y[:9])
    with pytest.raises(ValueError, match="2 class names were given but the labels reach class 3"):
        unit_report(_exact_concepts(concept_arrays), x[:100], y[:100], class_names=["p", "q"])
    with pytest.raises(ValueError, match="no examples"):
        unit_report(_exact_concepts(concept_arrays), x[:0])


def test_dead_units_raise_the_alarm():
    # a sparse layer whose first 4 of 6 units can never fire on positive inputs
    layer = ToySparse(5, width=6)
    with torch.no_grad():
        layer.enc.weight[:4] = -1.0
        layer.enc.bias[:4] = -0.1
        layer.enc.weight[4:] = 1.0  # the other two fire on every positive input
    h = torch.rand(50, 5)
    with pytest.warns(DeadUnitWarning, match=r"4 of 6 sae units \(67%\) are dead"):
        rep = unit_report(layer, h)
    assert rep.dead_units() == ["unit0", "unit1", "unit2", "unit3"]
    assert rep.alarm() is not None and "unit3" in rep.alarm()
    # below the alarm fraction: dead units are reported, no alarm
    quiet = unit_report(layer, h, dead_alarm=0.7)
    assert quiet.n_dead == 4 and quiet.alarm() is None

    # a codebook whose inputs all land on one code: every other code is dead
    vq = _build(next(c for c in BOTTLENECKS if c.__name__ == "VectorQuantizer"))
    vq.eval()
    with pytest.warns(DeadUnitWarning, match="15 of 16 code units"):
        rep = unit_report(vq, torch.zeros(30, 12) + 0.5)
    assert rep.usage.max() == 1.0 and rep.perplexity() == pytest.approx(1.0)


class SharedCodes(Bottleneck):
    """Two slots that pick from one shared codebook of 4 codes: a code can fire twice per example."""

    def __init__(self):
        super().__init__()
        self.in_features, self.out_features = 2, 2

    def forward(self, h, concepts=None, intervention_mask=None):
        codes = h.long().clamp(0, 3)  # (batch, 2) code of each slot
        return BottleneckOutput(z=h, codes=codes)

    def units(self):
        return Units("code", ("c0", "c1", "c2", "c3"))

    def unit_activations(self, out):
        return one_hot_units(out.codes, 4)


def test_what_dead_means_depends_on_the_kind():
    # latent units: one always negative but varying (alive), one constant (dead)
    h = torch.stack([-1 - torch.rand(40), torch.full((40,), 0.3), torch.rand(40)], 1)
    rep = unit_report(IdentityBottleneck(3), h, warn=False)
    assert rep.kind == "latent" and rep.dead.tolist() == [False, True, False]
    assert rep.usage[0] == 0  # never positive, yet not dead
    # codes: a code counts once per slot that selects it
    codes = torch.tensor([[0, 0], [0, 1], [2, 2], [2, 2]]).float()
    rep = unit_report(SharedCodes(), codes, torch.tensor([0, 0, 1, 1]), warn=False)
    assert rep.dead_units() == ["c3"] and rep.dead.tolist() == [False, False, False, True]
    assert rep.class_counts.tolist() == [[3, 0], [1, 0], [0, 4], [0, 0]]
    assert rep.purity() == 1.0 and rep.top_examples_of("c0")[0] == 0  # selected twice there


def test_contributions_add_up_to_the_logit(concept_arrays):
    x, _, y = concept_arrays
    model = BottleneckModel(_exact_concepts(concept_arrays), num_classes=4, standardize_features=False).eval()
    contrib, target = unit_contributions(model, x[:50])
    logits, _ = model(x[:50])
    assert torch.equal(target, logits.argmax(-1))
    recon = contrib.sum(1) + model.head.bias[target]
    assert torch.allclose(recon, logits.gather(1, target[:, None])[:, 0], atol=1e-4)
    fixed, t2 = unit_contributions(model, x[:50], target=2)
    assert (t2 == 2).all() and fixed.shape == (50, 5)
    with pytest.raises(ValueError, match="target class out of range: the model has 4 classes"):
        unit_contributions(model, x[:5], target=7)
    assert plots.figure_png(plots.plot_unit_contributions(contrib, list("abcde")).figure).startswith(PNG)

    vq = _build(next(c for c in BOTTLENECKS if c.__name__ == "VectorQuantizer"))
    coded = BottleneckModel(vq, num_classes=3, standardize_features=False).eval()
    with pytest.raises(ValueError, match="code units are not the columns the head reads"):
        unit_contributions(coded, torch.randn(4, 12))


def test_example_images_from_image_and_digit_data():
    from bottlenecks.data.shapes import ShapesDataset
    from bottlenecks.data.tables import DiabetesDataset, DigitsDataset

    shapes = ShapesDataset("test", n=12, image_size=32, return_masks=False)
    img = example_image(shapes, 3)
    assert img.shape == (32, 32, 3) and 0 <= img.min() and img.max() <= 1
    digit = example_image(DigitsDataset("test"), 0)
    assert digit.shape == (8, 8)
    assert example_image(DiabetesDataset("test"), 0) is None

    layer = ToySparse(3, width=4)
    rep = unit_report(layer, torch.rand(12, 3), warn=False)
    u = int(torch.argmax(rep.usage))
    images = top_example_images(rep, shapes, u)
    assert len(images) == len(rep.top_examples_of(u)) > 0
    assert np.allclose(images[0], example_image(shapes, rep.top_examples_of(u)[0]))
    fig = plots.plot_example_grid(images, titles=[str(i) for i in range(len(images))], ncols=4)
    assert plots.figure_png(fig).startswith(PNG)


def test_attribution_overlay_and_confusion_matrix():
    img = torch.rand(3, 32, 32)
    attr = torch.zeros(8, 8)
    attr[2:4, 2:4] = 1.0
    ax = plots.plot_attribution_overlay(img, attr)  # resized to the image
    assert ax.images[-1].get_array().shape == (32, 32)
    assert plots.figure_png(ax.figure).startswith(PNG)
    ax = plots.plot_attribution_overlay(img.permute(1, 2, 0).numpy(), torch.randn(3, 32, 32), signed=True)
    assert plots.figure_png(ax.figure).startswith(PNG)
    with pytest.raises(ValueError, match="NaN or inf"):
        plots.plot_attribution_overlay(img, torch.full((8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"attribution map is \(H, W\) or \(C, H, W\)"):
        plots.plot_attribution_overlay(img, torch.zeros(8))

    y = torch.tensor([0, 1, 2, 2, 1, 0])
    p = torch.tensor([0, 1, 2, 1, 1, 0])
    ax = plots.plot_confusion_matrix(y, p, class_names=["r", "g", "b"])
    assert "accuracy 0.833" in ax.get_title()
    assert ax.images[0].get_array()[2, 1] == pytest.approx(0.5)
    plots.figure_png(ax.figure)
    with pytest.raises(ValueError, match="2 class names but the labels reach class 2"):
        plots.plot_confusion_matrix(y, p, class_names=["r", "g"])


def test_training_curves_from_metrics_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train/loss,val/loss,val/task_acc,test/task_acc\n"
        "0,9,,1.5,0.4,\n0,9,2.0,,,\n1,19,,1.0,0.7,\n1,19,1.2,,,\n1,19,,,,0.69\n"
    )
    series = plots.read_metrics_csv(csv)
    assert series["val/loss"] == [(0.0, 1.5), (1.0, 1.0)] and series["test/task_acc"] == [(1.0, 0.69)]
    fig = plots.plot_training_curves(tmp_path)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == ["loss", "task_acc"]
    assert {ln.get_label() for ln in fig.axes[0].lines} == {"train", "val"}
    plots.figure_png(fig)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plots.read_metrics_csv(tmp_path / "nope.csv")
