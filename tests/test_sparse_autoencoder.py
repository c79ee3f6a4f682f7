"""Discover-then-Name: the SAE recovers a planted sparse dictionary, names its atoms against a
known vocabulary, revives dead units; the named units are the bottleneck one intervenes on."""

import pytest
import torch
import torch.nn.functional as F

from _language_data import accuracy, train
from bottlenecks.layers.sparse_autoencoder import DiscoverThenNameCBM, SparseAutoencoder, name_units
from bottlenecks.models.module import BottleneckModel


def planted_dictionary(n=4000, d=32, n_atoms=24, active=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n_atoms, d, generator=g), dim=1)
    codes = torch.zeros(n, n_atoms)
    for i in range(n):
        idx = torch.randperm(n_atoms, generator=g)[:active]
        codes[i, idx] = 0.5 + torch.rand(active, generator=g)
    return codes @ atoms + 0.02 * torch.randn(n, d, generator=g), atoms


@pytest.fixture(scope="module")
def dictionary():
    return planted_dictionary()


@pytest.mark.parametrize("sparsity,coeff", [("topk", 0.0), ("l1", 0.2)])
def test_sae_recovers_the_planted_atoms_and_names_them(dictionary, sparsity, coeff):
    x, atoms = dictionary
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 48, sparsity=sparsity, top_k=3, l1_coeff=coeff)
    hist = sae.fit(x, epochs=25, lr=3e-3, resample_every=100)
    assert hist["reconstruction"] < 0.1 and hist["l0"] < 6
    cos, unit = (atoms @ sae.directions().T).max(1)
    assert (cos >= 0.9).float().mean() >= 0.9, cos

    # the vocabulary: one word per atom (vectors known) plus distractors
    g = torch.Generator().manual_seed(5)
    words = [f"atom{j}" for j in range(len(atoms))] + [f"distractor{j}" for j in range(40)]
    vectors = torch.cat([atoms, F.normalize(torch.randn(40, 32, generator=g), dim=1)])
    names, sim = name_units(sae.directions(), words, vectors)
    assert len(set(names)) == len(names)
    for j in (cos >= 0.9).nonzero().flatten().tolist():
        assert names[int(unit[j])] == f"atom{j}" and sim[int(unit[j])] >= 0.9


def test_dead_units_are_resampled(dictionary):
    x, _ = dictionary

    def fit(resample_every):
        torch.manual_seed(0)
        sae = SparseAutoencoder(32, 24, sparsity="l1", l1_coeff=0.2)
        with torch.no_grad():
            sae.b_enc[:12] = -100.0  # half the units start dead
        return sae.fit(x, epochs=10, lr=3e-3, resample_every=resample_every)

    assert fit(None)["dead"] == 12
    revived = fit(50)
    assert revived["resampled"] >= 12 and revived["dead"] < 4


def test_discover_then_name_cbm_names_units_and_intervenes_by_name():
    # 18 orthogonal concept directions: image i shows its class's concept (6 classes) and two of
    # 12 other concepts at random
    g = torch.Generator().manual_seed(1)
    vectors = torch.linalg.qr(torch.randn(32, 32, generator=g))[0][:18]
    names = [f"class_concept{k}" for k in range(6)] + [f"other{j}" for j in range(12)]
    n = 1500
    y = torch.arange(n) % 6
    codes = torch.zeros(n, 18)
    codes[torch.arange(n), y] = 0.5 + torch.rand(n, generator=g)
    for i in range(n):
        codes[i, 6 + torch.randperm(12, generator=g)[:2]] = 0.5 + torch.rand(2, generator=g)
    x = codes @ vectors + 0.03 * torch.randn(n, 32, generator=g)
    vocab = names + [f"distractor{j}" for j in range(20)]
    vocab_vectors = torch.cat([vectors, F.normalize(torch.randn(20, 32, generator=g), dim=1)])
    layer = DiscoverThenNameCBM(32, 6, num_units=36, sparsity="topk", top_k=3, sae_epochs=40, sae_lr=3e-3, sae_batch_size=128,
                                resample_every=100, vocabulary=vocab, vocabulary_vectors=vocab_vectors)
    model = BottleneckModel(layer, num_classes=6, standardize_features=False, loss_weights={"probe_l1": 1e-2})
    train(model, x[:1000], y[:1000], epochs=30, lr=1e-2)
    assert accuracy(model, x[1000:], y[1000:]) > 0.9
    units = layer.units()
    assert units.kind == "sae"
    # every concept got a unit named after it (the vocabulary vector nearest to its direction)
    named = {u for u, s in zip(units.names, layer.name_similarity) if s > 0.9}
    assert set(names) <= named, sorted(named)
    # intervene by name: class 3's concept off, class 0's on moves class-3 images to class 0
    x3 = x[1000:][y[1000:] == 3][:20]
    acts = layer.read_units(x3)
    mask = torch.zeros_like(acts, dtype=torch.bool)
    values = torch.zeros_like(acts)
    for name, value in (("class_concept3", 0.0), ("class_concept0", 1.0)):
        mask[:, units.index(name)] = True
        values[:, units.index(name)] = value
    with torch.no_grad():
        y_int, out = model(x3, concepts=values, intervention_mask=mask)
        y_plain, _ = model(x3)
    assert (y_plain.argmax(1) == 3).float().mean() > 0.9
    assert (y_int.argmax(1) == 0).float().mean() > 0.8
    assert torch.equal(layer.unit_activations(out)[:, units.index("class_concept0")], torch.ones(len(x3)))
    x_check = x[:10]

    # names and the fitted SAE survive a checkpoint's state dict
    fresh = DiscoverThenNameCBM(32, 6, num_units=36, sparsity="topk", top_k=3, vocabulary=vocab)
    fresh.load_state_dict(layer.state_dict())
    fresh.eval()
    assert fresh.units() == units
    assert torch.allclose(fresh(x_check).z, layer(x_check).z)


def test_bad_vocabulary_and_too_many_units():
    with pytest.raises(ValueError, match="vocabulary.*repeats concepts"):
        DiscoverThenNameCBM(8, 2, num_units=4, vocabulary=["a", "a"])
    layer = DiscoverThenNameCBM(8, 2, num_units=4, top_k=2, sae_epochs=1, vocabulary=["a", "b"],
                                vocabulary_vectors=torch.randn(2, 16))
    with pytest.raises(ValueError, match="16-dimensional but the image features are 8"):
        layer.init_from_data(torch.randn(50, 8))
    with pytest.warns(UserWarning, match="64 SAE units but only 20 training features"):
        DiscoverThenNameCBM(8, 2, num_units=64, top_k=2, sae_epochs=1).init_from_data(torch.randn(20, 8))
    with pytest.raises(ValueError, match="no text encoder"):
        DiscoverThenNameCBM(8, 2, num_units=4, top_k=2, sae_epochs=1, vocabulary=["a"]).init_from_data(torch.randn(50, 8))
