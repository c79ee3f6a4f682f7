"""Concept embedding models: shapes, mixing, RandInt, training and interventions."""

import lightning as L
import pytest
import torch
from _concept_data import NAMES, datamodule, shapes_like, trainer

from bottlenecks.layers.cem import ConceptEmbeddingBottleneck
from bottlenecks.models.module import BottleneckModel


def test_embeddings_are_mixed_by_the_probability():
    torch.manual_seed(0)
    b = ConceptEmbeddingBottleneck(6, num_concepts=3, embedding_dim=4, hidden=[8]).eval()
    h = torch.randn(5, 6)
    out = b(h)
    assert out.z.shape == (5, 12) and out.concepts.shape == (5, 3)
    pos, neg, logits = b.embeddings(h)
    p = torch.sigmoid(logits)
    assert torch.allclose(out.z.view(5, 3, 4), p[..., None] * pos + (1 - p[..., None]) * neg)
    # an intervention sets the probability, i.e. picks the positive or negative embedding
    mask = torch.zeros(5, 3, dtype=torch.bool)
    mask[:, 1] = True
    on = b(h, concepts=torch.ones(5, 3), intervention_mask=mask)
    off = b(h, concepts=torch.zeros(5, 3), intervention_mask=mask)
    assert torch.allclose(on.z.view(5, 3, 4)[:, 1], pos[:, 1])
    assert torch.allclose(off.z.view(5, 3, 4)[:, 1], neg[:, 1])
    assert torch.allclose(on.z.view(5, 3, 4)[:, 0], out.z.view(5, 3, 4)[:, 0])


def test_random_interventions_only_while_training():
    torch.manual_seed(0)
    b = ConceptEmbeddingBottleneck(6, num_concepts=3, embedding_dim=4, training_intervention_prob=1.0)
    h, c = torch.randn(16, 6), (torch.rand(16, 3) > 0.5).float()
    c[0, 2] = float("nan")
    out = b(h, concepts=c)  # training mode: every labelled concept replaced by its truth
    labelled = ~torch.isnan(c)
    assert torch.equal(out.probs[labelled], c[labelled])
    assert out.probs[0, 2] == torch.sigmoid(out.concepts[0, 2])
    assert int(b.concept_labels_seen) == int(labelled.sum())
    b.eval()
    out = b(h, concepts=c)  # eval: concepts alone do not intervene
    assert torch.allclose(out.probs, torch.sigmoid(out.concepts))
    b.train()
    b.training_intervention_prob = 0.3
    torch.manual_seed(1)
    hits = (b(h.repeat(50, 1), concepts=c.nan_to_num().repeat(50, 1)).probs == c.nan_to_num().repeat(50, 1))
    assert 0.2 < hits.float().mean() < 0.4


def test_cem_trains_and_intervention_with_truth_helps():
    L.seed_everything(0)
    x, c, y = shapes_like(n=2400, noise=1.3)
    dm = datamodule(x, c, y, 1800)
    model = BottleneckModel(ConceptEmbeddingBottleneck(16, concept_names=NAMES, embedding_dim=8),
                            num_classes=9, lr=1e-2)
    trainer(max_epochs=8).fit(model, dm)
    res = trainer().test(model, dm, verbose=False)[0]
    assert res["test/task_acc"] > 0.75 and res["test/concept_acc"] > 0.85
    model.eval()
    with torch.no_grad():
        plain = model(x[1800:])[0].argmax(-1)
        fixed = model(x[1800:], concepts=c[1800:], intervention_mask=torch.ones_like(c, dtype=torch.bool)[1800:])[0]
    acc_plain = (plain == y[1800:]).float().mean()
    acc_fixed = (fixed.argmax(-1) == y[1800:]).float().mean()
    assert acc_fixed > acc_plain + 0.03


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="needs concept_names or num_concepts"):
        ConceptEmbeddingBottleneck(4)
    with pytest.raises(ValueError, match=r"training_intervention_prob must lie in \[0, 1\]"):
        ConceptEmbeddingBottleneck(4, num_concepts=2, training_intervention_prob=1.5)
    with pytest.raises(ValueError, match="num_concepts=3 but 2 concept_names were given"):
        ConceptEmbeddingBottleneck(4, concept_names=["a", "b"], num_concepts=3)
    b = ConceptEmbeddingBottleneck(4, num_concepts=2)
    with pytest.raises(ValueError, match=r"concepts has shape \(3, 5\) but the bottleneck predicts \(3, 2\)"):
        b(torch.randn(3, 4), concepts=torch.ones(3, 5))
    with pytest.raises(ValueError, match="expects 4-dimensional features but got 6"):
        b(torch.randn(3, 6))


def test_cem_keeps_the_features_relative_scales_by_default():
    # Encoder-like features: 8 high-variance directions carry the concepts, 300 low-variance ones
    # are noise. Per-dimension z-scores blow the noise up to the signal's size; CEM's default
    # (one shared scale) keeps it small. Measured on seeds 0-2: 0.83-0.88 vs 0.36-0.40.
    from bottlenecks.data.datamodule import ArrayDataModule

    g = torch.Generator().manual_seed(0)
    info = 2 * torch.randn(1400, 8, generator=g)
    c = (info[:, :4] > 0).float()
    y = (c[:, 0] + 2 * c[:, 1]).long()
    x = torch.cat([info, 0.05 * torch.randn(1400, 300, generator=g)], 1)[:, torch.randperm(308, generator=g)]
    acc = {}
    for scale in (None, "per_feature"):
        L.seed_everything(0, verbose=False)
        dm = ArrayDataModule.from_arrays(x_train=x[:300], y_train=y[:300], concepts_train=c[:300], x_val=x[300:400],
                                         y_val=y[300:400], concepts_val=c[300:400], x_test=x[400:], y_test=y[400:],
                                         concepts_test=c[400:], batch_size=64)
        model = BottleneckModel(ConceptEmbeddingBottleneck(308, num_concepts=4, embedding_dim=8), num_classes=4,
                                feature_scale=scale)
        t = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
        t.fit(model, dm)
        acc[scale] = t.test(model, dm, verbose=False)[0]["test/task_acc"]
    assert model.hparams.feature_scale == "per_feature"
    assert acc[None] > acc["per_feature"] + 0.2, acc
