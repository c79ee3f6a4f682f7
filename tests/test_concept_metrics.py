"""Concept-quality metrics on cases whose answer is known: an oracle scores its best value,
random inputs score chance."""

import numpy as np
import pytest
import torch

from bottlenecks.analysis import (
    causal_concept_effect,
    completeness_score,
    concept_alignment_score,
    concept_location,
    concept_purity_matrix,
    concept_part_masks,
    cooccurrence_matrix,
    existence_score,
    global_importance,
    keypoint_masks,
    location_scores,
    niche_impurity_score,
    oracle_impurity_score,
)
from bottlenecks.data.shapes import SHAPES_CONCEPTS, ShapesDataset
from bottlenecks.layers import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel


@pytest.fixture(scope="module")
def shapes_masks():
    ds = ShapesDataset(split="test", n=150, image_size=32)
    return torch.stack([ds[i]["masks"] for i in range(len(ds))])  # (n, 10, 32, 32)


# ------------------------------------------------------------------ location
def test_location_oracle_scores_one_and_random_scores_chance(shapes_masks):
    obj = shapes_masks[:, SHAPES_CONCEPTS.index("circle")]
    obj = obj[obj.flatten(1).any(1)]
    oracle = location_scores(obj.float(), obj)
    assert oracle.pointing_game == 1.0 and oracle.mass_inside == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    rand = location_scores(torch.rand(obj.shape, generator=g), obj)
    assert 0.02 < rand.chance < 0.2  # small objects
    assert rand.mass_inside == pytest.approx(rand.chance, abs=0.01)
    assert abs(rand.pointing_game - rand.chance) < 0.1
    # the background concept covers most of the image: chance is high, an inverted map scores 0
    bg = shapes_masks[:, SHAPES_CONCEPTS.index("striped_background")]
    bg = bg[bg.flatten(1).any(1)]
    wrong = location_scores((~bg).float(), bg)
    assert wrong.pointing_game == 0.0 and wrong.mass_inside == 0.0 and wrong.chance > 0.7


def test_location_tolerance_ties_zero_maps_and_errors():
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2, 2] = True
    near = torch.zeros(2, 8, 8)
    near[:, 2, 3] = 1.0  # one pixel off
    assert location_scores(near, mask).pointing_game == 0.0
    assert location_scores(near, mask, tolerance=1).pointing_game == 1.0
    flat = torch.ones(2, 8, 8)  # every pixel is a maximum: a hit
    assert location_scores(flat, mask).pointing_game == 1.0
    zero = location_scores(torch.zeros(2, 8, 8), mask)
    assert zero.n == 0 and zero.n_zero_maps == 2 and np.isnan(zero.mass_inside)
    with pytest.raises(ValueError, match="differ in shape"):
        location_scores(torch.rand(2, 8, 8), torch.ones(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="every mask is empty"):
        location_scores(torch.rand(2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool))


def test_cub_part_masks():
    parts = torch.tensor([[[10.0, 10.0, 1.0], [30.0, 5.0, 1.0], [0.0, 0.0, 0.0]]])  # beak, left wing, right wing (invisible)
    disks = keypoint_masks(parts, (40, 40), radius=3)
    assert disks.shape == (1, 3, 40, 40)
    assert disks[0, 0, 10, 10] and not disks[0, 0, 10, 14] and not disks[0, 2].any()
    names = ["has_bill_shape::cone", "has_wing_color::blue", "has_upper_tail_color::red", "has_size::small"]
    masks = concept_part_masks(parts, ["beak", "left wing", "right wing"], names, (40, 40), radius=3)
    assert masks.shape == (1, 4, 40, 40)
    assert torch.equal(masks[0, 0], disks[0, 0]) and torch.equal(masks[0, 1], disks[0, 1])
    assert not masks[0, 2].any() and not masks[0, 3].any()  # no tail part given; size is whole-bird


def test_concept_location_on_a_model_with_an_image_encoder(shapes_masks):
    from test_attribution import tiny_encoder

    model = BottleneckModel(ConceptBottleneck(16, concept_names=list(SHAPES_CONCEPTS)), num_classes=9,
                            encoder=tiny_encoder(32), standardize_features=False)
    ds = ShapesDataset(split="test", n=12, image_size=32)
    x = torch.stack([ds[i]["x"] for i in range(12)])
    scores = concept_location(model, x, shapes_masks[:12], units=["red", "striped_background"], method="saliency")
    assert set(scores) == {"red", "striped_background"}
    assert all(0 <= s.mass_inside <= 1 and 0 <= s.pointing_game <= 1 for s in scores.values())
    with pytest.raises(ValueError, match="masks must be \\(n_images=12, n_units=10, H, W\\)"):
        concept_location(model, x, shapes_masks[:12, :3])


# ------------------------------------------------------------------ decision
def test_existence_and_global_importance():
    g = torch.Generator().manual_seed(0)
    present = (torch.rand(500, 8, generator=g) < 0.4).float()
    present[:, 5] = 1.0  # at least one concept present in every example
    w = torch.rand(8, generator=g) + 0.5
    oracle = present * w  # the decision rests on present concepts only
    assert existence_score(oracle, present, k=1) == 1.0
    assert existence_score(-oracle, present, k=1) < 0.1  # relies on absent concepts
    rand = torch.randn(500, 8, generator=g)
    assert existence_score(rand, present, k=3) == pytest.approx(float(present.mean()), abs=0.05)
    present_nan = present.clone()
    present_nan[:, 0] = float("nan")
    assert existence_score(oracle, present_nan, k=1) == 1.0
    with pytest.raises(ValueError, match="k must be between 1 and the number of units"):
        existence_score(oracle, present, k=9)
    imp = global_importance(torch.cat([oracle[:, :7], torch.zeros(500, 1)], 1))
    assert imp.sum() == pytest.approx(1.0) and imp[7] == 0 and (imp[:7] > 0).all()


# ------------------------------------------------------------------ representation
def _concepts(n=500, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, k)) < 0.5).astype(float), rng


def _rotated(c, rng):
    """Entangled representations: a fixed rotation of the concepts (each carries all of them)."""
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((c.shape[1], c.shape[1])))
    return c @ q + 0.05 * rng.standard_normal(c.shape)


def test_concept_alignment_score():
    c, rng = _concepts()
    oracle = c + 0.05 * rng.standard_normal(c.shape)
    assert concept_alignment_score(oracle, c) > 0.95
    assert concept_alignment_score(rng.standard_normal(c.shape), c) < 0.05
    emb = np.stack([oracle, rng.standard_normal(c.shape)], -1)  # (n, k, 2) embeddings (CEM)
    assert 0.1 < concept_alignment_score(emb, c) < 0.95


def test_oracle_impurity_score():
    c, rng = _concepts()
    orc = concept_purity_matrix(c, c, oracle=True)  # what each true concept tells about the others
    assert orc.shape == (3, 3) and np.allclose(np.diag(orc), 1) and np.abs(orc - 0.5 - np.eye(3) / 2).max() < 0.1
    assert oracle_impurity_score(c, c, oracle_matrix=orc) < 0.05
    # every representation also carries the other concepts: impure
    assert oracle_impurity_score(_rotated(c, rng), c, oracle_matrix=orc) > 0.3


def test_niche_impurity_score():
    c, rng = _concepts()
    pure = c + 0.1 * rng.standard_normal(c.shape)
    nis_pure = niche_impurity_score(pure, c, delta_beta=0.1)
    assert nis_pure == pytest.approx(0.5 * 0.9, abs=0.06)  # chance AUC over beta in [0, 0.9]
    # entangled: information about each concept lies outside its niche
    assert niche_impurity_score(_rotated(c, rng), c, delta_beta=0.1) > nis_pure + 0.1


def test_completeness_score():
    ds = ShapesDataset(split="train", n=900, image_size=32)
    c, y = ds.concept_table().numpy(), ds.targets().numpy()
    oracle = completeness_score(c[:600], y[:600], c[600:], y[600:], model_accuracy=1.0)
    assert oracle > 0.95
    rng = np.random.default_rng(0)
    rand = completeness_score(rng.random((600, 10)), y[:600], rng.random((300, 10)), y[600:], model_accuracy=1.0)
    assert abs(rand) < 0.1
    with pytest.raises(ValueError, match="not above the majority-class accuracy"):
        completeness_score(c[:600], y[:600], c[600:], y[600:], model_accuracy=0.05)


# ------------------------------------------------------------------ interventions and data
def test_causal_concept_effect_through_interventions():
    torch.manual_seed(0)
    model = BottleneckModel(ConceptBottleneck(4, concept_names=["a", "b", "c"]), num_classes=2,
                            standardize_features=False)
    x = torch.randn(64, 4)
    model.train()
    model(x, concepts=torch.ones(64, 3))  # counts concept labels: the units are supervised
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [8.0, 0.0, -8.0]]))
        model.head.bias.copy_(torch.tensor([0.0, -4.0]))
    cace, names = causal_concept_effect(model, x)
    assert names == ["a", "b", "c"] and cace.shape == (3, 2)
    assert torch.allclose(cace.sum(1), torch.zeros(3), atol=1e-6)  # probabilities move, not appear
    # the known answer: p(class 1) = sigmoid(8 a - 8 c - 4) with the other concepts as predicted
    p_c = model.bottleneck.read_units(x)[:, 2]
    expected_a = (torch.sigmoid(4 - 8 * p_c) - torch.sigmoid(-4 - 8 * p_c)).mean()
    assert cace[0, 1] == pytest.approx(float(expected_a), abs=1e-5) and cace[0, 1] > 0.3
    assert cace[2, 1] < -0.3
    assert torch.allclose(cace[1], torch.zeros(2))  # b has no weight: no effect
    one, names = causal_concept_effect(model, x, concepts=["c"])
    assert names == ["c"] and torch.allclose(one, cace[2:])
    with pytest.raises(ValueError, match="no concept named 'd'"):
        causal_concept_effect(model, x, concepts=["d"])
    fresh = BottleneckModel(ConceptBottleneck(4, concept_names=["a", "b", "c"]), num_classes=2)
    with pytest.raises(ValueError, match="trained without concept labels"):
        causal_concept_effect(fresh, x)


def test_cooccurrence_matrix_of_shapes():
    red, circle = SHAPES_CONCEPTS.index("red"), SHAPES_CONCEPTS.index("circle")
    coupled = cooccurrence_matrix(ShapesDataset(split="train", n=600, cooccurrence=1.0).concept_table())
    assert coupled[red, circle] == 1.0 and coupled[circle, red] == 1.0
    free = cooccurrence_matrix(ShapesDataset(split="train", n=3000).concept_table())
    assert free[red, circle] == pytest.approx(1 / 3, abs=0.05)
    assert torch.allclose(torch.diagonal(free), torch.ones(10))
    c = torch.tensor([[1.0, float("nan")], [1.0, 1.0], [0.0, 0.0]])
    m = cooccurrence_matrix(c)
    assert m[0, 1] == 1.0 and m[0, 0] == 1.0  # the unlabelled entry is not counted
    assert torch.isnan(cooccurrence_matrix(torch.zeros(4, 2))).all()
