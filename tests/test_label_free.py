"""Label-free CBM and LaBo on planted paired embeddings: alignment to image–text similarities,
the language prior, few shots against a linear probe at the same k, bad input, checkpoints."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from _language_data import accuracy, planted, train
from bottlenecks.analysis.few_shot import few_shot_indices, linear_probe_accuracy
from bottlenecks.layers.label_free import LaBoBottleneck, LabelFreeCBM, cos3_similarity, fit_image_to_text
from bottlenecks.models.module import BottleneckModel


class FakeText:
    """A text encoder whose answers are known: name → planted vector."""

    def __init__(self, names, vectors):
        self.table = dict(zip(names, vectors))
        self.calls = []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        return torch.stack([self.table[t.replace("a photo of ", "")] for t in texts])


@pytest.fixture(scope="module")
def data():
    return planted(n=1500)


def _auroc(acts, labels):
    return [roc_auc_score(labels[:, j].numpy(), acts[:, j].numpy()) for j in range(labels.shape[1])]


def test_label_free_concepts_align_with_language_without_concept_labels(data):
    p = data
    tr, te = slice(0, 1000), slice(1000, None)

    def fit(projection_weight):
        torch.manual_seed(0)
        layer = LabelFreeCBM(32, p.names, prompt="a photo of {}")
        model = BottleneckModel(layer, num_classes=6, standardize_features=False, loss_weights={"projection": projection_weight})
        train(model, p.x[tr], p.y[tr], epochs=25, lr=1e-2, text=FakeText(p.names, p.vectors))
        return model

    model = fit(1.0)
    layer = model.bottleneck
    acts = layer.read_units(p.x[te])
    auroc = _auroc(acts, p.concepts[te])
    assert min(auroc) > 0.9, auroc  # every concept unit tracks its planted concept; no label was used
    assert layer.concept_supervision() > 0  # supervised by image–text similarities
    assert accuracy(model, p.x[te], p.y[te]) > 0.8
    layer.train()
    assert layer(p.x[:1]).z.shape == (1, len(p.names))  # a last batch of one row still trains
    layer.eval()
    inter = layer.interpretability(p.x[te])
    assert list(inter) == p.names and min(inter.values()) > 0.6
    # without the cos³ projection loss the units are random projections: no alignment
    unaligned = _auroc(fit(0.0).bottleneck.read_units(p.x[te]), p.concepts[te])
    assert sum(unaligned) / len(unaligned) < 0.7


def test_cos3_similarity():
    q = torch.randn(200, 3)
    assert torch.allclose(cos3_similarity(q, 2 * q + 1), torch.ones(3), atol=1e-5)
    assert torch.allclose(cos3_similarity(q, -q), -torch.ones(3), atol=1e-5)


def test_image_to_text_map_learned_from_concept_labels_when_spaces_differ(data):
    """The offline stand-in for CLIP: image features in another space (48-d, rotated) mapped to
    the text space by ridge regression on concept labels."""
    p = data
    g = torch.Generator().manual_seed(3)
    rot = torch.linalg.qr(torch.randn(48, 48, generator=g))[0][:32]
    x = p.x @ rot  # (n, 48): not the text space
    layer = LaBoBottleneck(48, p.names, 6, class_concepts=p.class_concepts, concept_vectors=p.vectors,
                           image_to_text="concept_labels")
    layer.init_from_data(x[:1000], concepts=p.concepts[:1000])
    model = BottleneckModel(layer, num_classes=6, standardize_features=False)
    assert accuracy(model, x[1000:], p.y[1000:]) > 0.85  # language prior only, through the learned map
    with pytest.raises(ValueError, match="learns the image→text map from concept labels, but the data has none"):
        LaBoBottleneck(48, p.names, 6, concept_vectors=p.vectors, image_to_text="concept_labels").init_from_data(x[:100])
    m = fit_image_to_text(x[:1000], p.concepts[:1000], p.vectors)
    assert m.shape == (48, 32)


def test_labo_language_prior_classifies_before_training_and_beats_a_probe_at_one_shot(data):
    p = data
    te = slice(1000, None)
    prior = LaBoBottleneck(32, p.names, 6, class_concepts=p.class_concepts, concept_vectors=p.vectors)
    prior.init_from_data(p.x[:1000])
    flat = LaBoBottleneck(32, p.names, 6, concept_vectors=p.vectors)
    flat.init_from_data(p.x[:1000])
    acc_prior = accuracy(BottleneckModel(prior, num_classes=6, standardize_features=False), p.x[te], p.y[te])
    acc_flat = accuracy(BottleneckModel(flat, num_classes=6, standardize_features=False), p.x[te], p.y[te])
    assert acc_prior > 0.85 and acc_flat < 0.35  # chance 1/6
    w = prior.class_concept_weights()
    assert torch.allclose(w.sum(1), torch.ones(6)) and w[0, :2].sum() > 0.5  # class0 → its own two concepts

    labo, probe = [], []
    for seed in range(2):
        idx = few_shot_indices(p.y[:1000], 1, seed=seed)
        model = BottleneckModel(LaBoBottleneck(32, p.names, 6, class_concepts=p.class_concepts,
                                               concept_vectors=p.vectors), num_classes=6, standardize_features=False)
        train(model, p.x[idx], p.y[idx], epochs=40, lr=1e-2)
        labo.append(accuracy(model, p.x[te], p.y[te]))
        probe.append(linear_probe_accuracy(p.x[idx], p.y[idx], p.x[te], p.y[te]))
    assert sum(labo) / 2 > sum(probe) / 2 + 0.2, (labo, probe)


def test_bad_input_is_refused_clearly(data):
    p = data
    with pytest.raises(ValueError, match="empty"):
        LabelFreeCBM(32, [])
    with pytest.raises(ValueError, match="repeats concepts"):
        LabelFreeCBM(32, ["red", "blue", "red"])
    with pytest.raises(ValueError, match="16-dimensional but the image features are 32-dimensional"):
        LabelFreeCBM(32, ["a", "b"], concept_vectors=torch.randn(2, 16))
    layer = LabelFreeCBM(32, ["a", "b"])
    with pytest.raises(ValueError, match="16-dimensional but the image features are 32-dimensional"):
        layer.init_from_data(p.x[:50], text=FakeText(["a", "b"], torch.randn(2, 16)))
    with pytest.raises(ValueError, match="needs concept_vectors or a paired text encoder"):
        LabelFreeCBM(32, ["a", "b"]).init_from_data(p.x[:50])
    with pytest.raises(RuntimeError, match="init_from_data must run first"):
        LabelFreeCBM(32, ["a", "b"], concept_vectors=torch.randn(2, 32))(p.x[:4])
    with pytest.warns(UserWarning, match="40 concepts but only 32-dimensional features"):
        LabelFreeCBM(32, [f"c{i}" for i in range(40)], concept_vectors=torch.randn(40, 32)).init_from_data(p.x[:100])
    with pytest.warns(UserWarning, match="18 concepts but only 10 training images"):
        LabelFreeCBM(32, p.names, concept_vectors=p.vectors).init_from_data(p.x[:10])
    with pytest.raises(ValueError, match="not in concept_names"):
        LaBoBottleneck(32, ["a", "b"], 2, class_concepts={"x": ["a"], "y": ["zebra"]})
    with pytest.raises(ValueError, match="2 class names"):
        LaBoBottleneck(32, ["a", "b"], 3, class_concepts={"x": ["a"], "y": ["b"]})


def test_checkpoint_round_trip_restores_the_text_space(data):
    p = data
    rot = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(0)))[0][:32]
    x = p.x @ rot
    a = LabelFreeCBM(40, p.names, image_to_text="concept_labels")
    a.init_from_data(x[:500], concepts=p.concepts[:500], text=FakeText(p.names, p.vectors))
    a.eval()
    b = LabelFreeCBM(40, p.names, image_to_text="concept_labels")  # as rebuilt from a checkpoint's config
    b.load_state_dict(a.state_dict())
    b.eval()
    assert b.image_proj.shape == (40, 32) and torch.equal(b.concept_vectors, a.concept_vectors)
    assert torch.allclose(a(x[:20]).z, b(x[:20]).z)


def test_adopts_a_concept_bank_and_a_labo_class2concepts_file(data, tmp_path):
    """The layers take plain (names, vectors); a ConceptBank and a LaBo class2concepts.json read by
    bottlenecks.concepts pass straight in."""
    import json

    from bottlenecks.analysis.concept_selection import concept_similarities, select_per_class
    from bottlenecks.concepts.bank import ConceptBank
    from bottlenecks.concepts.sets import load_concept_set

    p = data
    path = tmp_path / "class2concepts.json"
    path.write_text(json.dumps({c: p.class_concepts[c] + ["nuisance0", "nuisance1"] for c in p.class_names}))
    cs = load_concept_set(path)
    bank = ConceptBank(p.names, p.vectors, encoder_id="planted")
    class_concepts = {c: list(w) for c, w in cs.class_concepts.items()}
    chosen = select_per_class(class_concepts, bank.names, bank.vectors, 2,
                              sims=concept_similarities(p.x[:1000], bank.vectors), y=p.y[:1000], class_names=p.class_names)
    assert {c: sorted(v) for c, v in chosen.items()} == p.class_concepts  # its own two, not the nuisance ones
    layer = LaBoBottleneck(32, bank.names, 6, class_concepts=chosen, class_names=p.class_names,
                           concept_vectors=bank.vectors)
    layer.init_from_data(p.x[:1000])
    model = BottleneckModel(layer, num_classes=6, standardize_features=False)
    assert accuracy(model, p.x[1000:], p.y[1000:]) > 0.85
