"""Concept filtering (Label-free CBM) and LaBo's submodular selection on planted embeddings."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from _language_data import candidates, planted
from bottlenecks.analysis.concept_selection import (
    check_concept_set,
    concept_similarities,
    discriminability,
    filter_concepts,
    redundancy,
    select_per_class,
    submodular_select,
)
from bottlenecks.analysis.few_shot import few_shot_indices, linear_probe_accuracy


@pytest.fixture(scope="module")
def data():
    p = planted(n=1200)
    names, vecs = candidates(p)  # 18 true + 24 paraphrases + 12 junk
    sims = concept_similarities(p.x, vecs)
    return p, names, vecs, sims


def test_bad_concept_lists_fail_with_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        check_concept_set([])
    with pytest.raises(ValueError, match="repeats concepts: 'red' and 'Red '"):
        check_concept_set(["red", "circle", "Red "])
    with pytest.raises(ValueError, match=r"3 names but concept vectors of shape \(2, 4\)"):
        check_concept_set(["a", "b", "c"], torch.randn(2, 4))
    with pytest.raises(ValueError, match="all zeros"):
        check_concept_set(["a", "b"], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="text encoder's concept vectors are 16-dimensional but the image features are 8"):
        concept_similarities(torch.randn(5, 8), torch.randn(3, 16))
    with pytest.raises(ValueError, match="asked for 5 concepts but only 3"):
        submodular_select(torch.randn(3, 4), 5)


def test_filters_drop_class_names_duplicates_and_never_activated_concepts(data):
    p, names, vecs, _ = data
    # add the class names themselves as "concepts": they must go (they would leak the label)
    names2 = names + ["class0", "class3"]
    vecs2 = torch.cat([vecs, p.class_vectors[[0, 3]]])
    res = filter_concepts(names2, vecs2, class_names=p.class_names, class_vectors=p.class_vectors,
                          image_features=p.x, min_activation=0.55, concept_similarity=0.9)
    assert "close to class 'class0'" in res.removed["class0"] and "class3" in res.removed
    assert all(f"junk{j}" in res.removed and "never activated" in res.removed[f"junk{j}"] for j in range(12))
    # exactly one of each concept and its paraphrases survives
    kept_roots = [n.split(" (")[0] for n in res.names]
    assert sorted(kept_roots) == sorted(p.names)
    assert redundancy(vecs2, res.indices) < 0.2
    assert res.vectors(vecs2).shape == (len(p.names), vecs.shape[1])
    with pytest.raises(ValueError, match="removed all"):
        filter_concepts(names, vecs, image_features=p.x, min_activation=5.0)


def test_submodular_subsets_beat_random_subsets(data):
    """More discriminative (probe accuracy on the subset's activations, LaBo's D score) and
    less redundant (nearest-member cosine) than random subsets of the same size, over draws."""
    p, names, vecs, sims = data
    tr, te = slice(0, 600), slice(600, None)
    D = discriminability(sims[tr], p.y[tr])
    k = 12
    chosen = submodular_select(vecs, k, D, names=names)
    assert len(set(chosen)) == k

    def probe(idx):
        return linear_probe_accuracy(sims[tr][:, idx], p.y[tr], sims[te][:, idx], p.y[te])

    g = torch.Generator().manual_seed(0)
    draws = [torch.randperm(len(names), generator=g)[:k].tolist() for _ in range(6)]
    rand_acc = [probe(r) for r in draws]
    rand_red = [redundancy(vecs, r) for r in draws]
    rand_d = [float(D[r].mean()) for r in draws]
    acc, red = probe(chosen), redundancy(vecs, chosen)
    assert acc >= max(rand_acc) and acc > sum(rand_acc) / len(rand_acc) + 0.03
    assert red < min(rand_red)
    assert float(D[chosen].mean()) > max(rand_d)
    # coverage alone (no discriminability) still avoids duplicates but picks junk too
    cover_only = submodular_select(vecs, k, None)
    assert redundancy(vecs, cover_only) < sum(rand_red) / len(rand_red)


def test_greedy_is_near_the_best_subset_on_a_small_instance(data):
    p, names, vecs, sims = data
    idx = list(range(0, 54, 5))  # 11 concepts: a mix of true, paraphrases and junk
    v, D = vecs[idx], discriminability(sims, p.y)[idx]

    def score(s):
        d = D / D.abs().max()
        phi = (F.normalize(v, dim=1) @ F.normalize(v, dim=1).T).clamp_min(0)
        return float(d[list(s)].sum() + phi[:, list(s)].max(1).values.sum() / len(idx))

    greedy = submodular_select(v, 3, D)
    best = max(score(s) for s in itertools.combinations(range(len(idx)), 3))
    assert score(greedy) >= (1 - 1 / 2.718281828) * best
    assert score(greedy) >= 0.95 * best  # in practice greedy is close to optimal


def test_per_class_selection_prefers_each_class_own_concepts(data):
    p, names, vecs, sims = data
    # each class lists its two concepts, their paraphrases and four junk concepts
    class_concepts = {
        c: [n for n in names if n.startswith(f"cls{k}_")] + [f"junk{j}" for j in range(4)]
        for k, c in enumerate(p.class_names)
    }
    chosen = select_per_class(class_concepts, names, vecs, 2, sims=sims, y=p.y, class_names=p.class_names)
    for k, c in enumerate(p.class_names):
        roots = {n.split(" (")[0] for n in chosen[c]}
        assert roots == {f"cls{k}_part0", f"cls{k}_part1"}, chosen[c]  # both parts, not two paraphrases
    with pytest.warns(UserWarning, match="fewer than k_per_class"):
        select_per_class({"class0": ["junk0"]}, names, vecs, 2)
    with pytest.raises(ValueError, match="not in the concept set"):
        select_per_class({"class0": ["unicorn"]}, names, vecs, 1)


def test_few_shot_indices():
    y = torch.arange(60) % 6
    idx = few_shot_indices(y, 3, seed=1)
    assert len(idx) == 18 and torch.bincount(y[idx]).tolist() == [3] * 6
    assert torch.equal(idx, few_shot_indices(y, 3, seed=1))
    with pytest.raises(ValueError, match="class 0 has 10 examples, fewer than k=11"):
        few_shot_indices(y, 11)
