"""Sparse CBM (Semenov et al., 2024): ℓ1 / contrastive / Gumbel concept layers and the
training-free concept matrix search, on planted paired embeddings."""

import pytest
import torch
import torch.nn.functional as F

from _language_data import accuracy, planted, train
from bottlenecks.layers.sparse_cbm import SparseConceptBottleneck, activation_sparsity, concept_matrix_search
from bottlenecks.models.module import BottleneckModel


@pytest.fixture(scope="module")
def data():
    return planted(n=1500)


@pytest.fixture(scope="module")
def trained(data):
    p = data
    out = {}
    for objective in ("l1", "contrastive", "gumbel"):
        layer = SparseConceptBottleneck(32, p.names, objective=objective, concept_vectors=p.vectors)
        model = BottleneckModel(layer, num_classes=6, standardize_features=False)
        out[objective] = train(model, p.x[:1000], p.y[:1000], epochs=20, lr=1e-2)
    return out


def test_every_objective_trains_a_readable_concept_layer(data, trained):
    p = data
    for objective, model in trained.items():
        assert accuracy(model, p.x[1000:], p.y[1000:]) > 0.9, objective
        units = model.bottleneck.units()
        assert units.kind == "concept" and list(units) == p.names
        t = model.compute_losses({"y": p.y[:8]}, *model(p.x[:8]))
        assert {"l1": "cbl_l1"}.get(objective, objective) in t  # the objective's loss reaches the model


def test_gumbel_gives_sparser_concepts_than_contrastive_at_comparable_accuracy(data, trained):
    p = data
    te = slice(1000, None)
    acc = {k: accuracy(m, p.x[te], p.y[te]) for k, m in trained.items()}
    sparsity = {k: float(activation_sparsity(m.bottleneck.read_units(p.x[te]))) for k, m in trained.items()}
    assert sparsity["gumbel"] > sparsity["contrastive"] + 0.1, sparsity
    assert acc["gumbel"] > acc["contrastive"] - 0.05, acc
    # the Gumbel sample is stochastic while training and deterministic in eval
    layer = trained["gumbel"].bottleneck
    layer.train()
    a, b = layer(p.x[:16]).probs, layer(p.x[:16]).probs
    layer.eval()
    assert not torch.allclose(a, b) and torch.allclose(layer(p.x[:16]).probs, layer(p.x[:16]).probs)


def test_activation_sparsity_measure():
    one_hot = torch.eye(10)
    uniform = torch.ones(4, 10)
    assert float(activation_sparsity(one_hot)) == pytest.approx(0.9)
    assert float(activation_sparsity(uniform)) == pytest.approx(0.1)  # 9 of 10 hold 90 % of the mass


def test_concept_matrix_search_classifies_without_training(data):
    p = data
    logits = concept_matrix_search(p.x, p.vectors, p.class_vectors, concept_names=p.names)
    acc = float((logits.argmax(1) == p.y).float().mean())
    zero_shot = float(((F.normalize(p.x, dim=1) @ p.class_vectors.T).argmax(1) == p.y).float().mean())
    assert acc > 0.9 and acc >= zero_shot  # chance 1/6
    with pytest.raises(ValueError, match="class vectors are 16-dimensional"):
        concept_matrix_search(p.x, p.vectors, torch.randn(6, 16))
    with pytest.raises(ValueError, match="repeats concepts"):
        concept_matrix_search(p.x, p.vectors[:2], p.class_vectors, concept_names=["a", "a"])


def test_bad_objective():
    with pytest.raises(ValueError, match="objective must be"):
        SparseConceptBottleneck(8, ["a", "b"], objective="entropy", concept_vectors=torch.randn(2, 8))
