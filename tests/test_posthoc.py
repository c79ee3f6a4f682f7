"""Post-hoc CBM (PCBM / PCBM-h) and the knowledge-prior head on small synthetic features:
the sparse head against the linear probe, the residual closing the gap of an incomplete bank,
the prior on a confounded split, interventions, YAML, and the errors."""

import json

import numpy as np
import pytest
import torch
import yaml

from bottlenecks.analysis.concept_share import concept_share
from bottlenecks.analysis.interventions import intervene
from bottlenecks.analysis.probes import linear_probe
from bottlenecks.cli import main
from bottlenecks.concepts import ConceptBank
from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers.posthoc import PosthocConceptBottleneck
from bottlenecks.models.module import BottleneckModel
from bottlenecks.models.posthoc import fit_posthoc_cbm, fit_sparse_head
from test_encoders import tiny_clip  # noqa: F401 - fixture

NAMES = list("abcde")


@pytest.fixture
def dm(concept_arrays):
    x, c, y = concept_arrays
    return ArrayDataModule.from_arrays(x_train=x[:1200], y_train=y[:1200], concepts_train=c[:1200],
                                       x_val=x[1200:1500], y_val=y[1200:1500], concepts_val=c[1200:1500],
                                       x_test=x[1500:], y_test=y[1500:], concepts_test=c[1500:], concept_names=NAMES)


@pytest.fixture
def bank(concept_arrays):
    x, c, _ = concept_arrays
    return ConceptBank.from_cavs(x[:1200], c[:1200], NAMES)


def _probe(dm):
    s = [dm.split(k) for k in ("train", "val", "test")]
    return linear_probe(s[0].x, s[0].y, s[1].x, s[1].y, s[2].x, s[2].y).test


def test_pcbm_matches_the_probe_and_pcbm_h_closes_the_gap_of_an_incomplete_bank(dm, bank):
    probe = _probe(dm)
    full = BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4)
    fit = fit_posthoc_cbm(full, dm, lam=1e-3)
    assert fit.accuracy["test"] > probe - 0.03 and fit.accuracy["test"] > 0.9  # chance 0.25
    assert fit.nonzero_weights < fit.n_weights  # the elastic net zeroes weights of c2..c4
    # y = 2 c0 + c1: a bank without "b" (c1) cannot tell half the classes apart
    partial = bank.select(["a", "c", "d", "e"])
    pcbm = BottleneckModel(PosthocConceptBottleneck.from_bank(partial), num_classes=4)
    gap = fit_posthoc_cbm(pcbm, dm).accuracy["test"]
    hybrid = BottleneckModel(PosthocConceptBottleneck.from_bank(partial, residual=True, num_classes=4), num_classes=4)
    h = fit_posthoc_cbm(hybrid, dm)
    assert gap < 0.65 and h.accuracy["test"] > probe - 0.03
    assert h.concept_accuracy["test"] == pytest.approx(gap, abs=0.01)  # the concept head stayed frozen
    share = concept_share(hybrid, dm)
    assert share["acc_concepts"] < 0.65 and 0.0 < share["explained"] < 0.9
    assert concept_share(pcbm, dm)["explained"] == pytest.approx(1.0)


def test_pcbm_units_read_as_concept_probabilities_and_interventions_set_them(dm, bank, concept_arrays):
    x, c, _ = concept_arrays
    model = BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4)
    fit_posthoc_cbm(model, dm)
    b = model.bottleneck
    assert b.units().kind == "concept" and list(b.units()) == NAMES
    acts = b.read_units(x[1500:])
    assert acts.shape == (500, 5) and ((acts > 0.5).float() == c[1500:]).float().mean() > 0.95
    assert b.concept_supervision() > 0  # the CAVs were fitted on labelled examples
    res = intervene(model, x[1500:1540], {"a": 1.0, "b": 0.0})
    assert (res.y_pred == 2).all()
    res = intervene(model, x[1500:1540], {"a": 0.0, "b": 1.0})
    assert (res.y_pred == 1).all()


def test_the_prior_head_beats_the_same_head_without_it_on_a_confounded_split():
    """Concepts: colour (a0/a1) and shape (b0/b1) one-hot, y = 2 A + B; "stripes" copies B in train
    (95 %) and its opposite in test. Features show the shape weakly, the stripes clearly."""
    g = torch.Generator().manual_seed(0)

    def split(n, flip):
        A = (torch.rand(n, generator=g) > 0.5).long()
        B = (torch.rand(n, generator=g) > 0.5).long()
        agree = (torch.rand(n, generator=g) < 0.95).long()
        s = torch.where(agree.bool(), B, 1 - B)
        if flip:
            s = 1 - s
        c = torch.stack([1 - A, A, 1 - B, B, s], 1).float()
        x = c * torch.tensor([2.0, 2.0, 0.5, 0.5, 2.0]) + torch.randn(n, 5, generator=g)
        return x, c, 2 * A + B

    (xt, ct, yt), (xv, cv, yv), (xs, cs, ys) = split(1500, False), split(300, False), split(600, True)
    names = ["a0", "a1", "b0", "b1", "stripes"]
    dm = ArrayDataModule.from_arrays(x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys,
                                     class_names=["a0 b0", "a0 b1", "a1 b0", "a1 b1"])
    bank = ConceptBank(names, torch.eye(5))  # plain (names, vectors): a bank other modules hand around
    prior = {"a0 b0": ["a0", "b0"], "a0 b1": ["a0", "b1"], "a1 b0": ["a1", "b0"], "a1 b1": ["a1", "b1"]}
    acc = {}
    for label, p in (("without", None), ("with", prior)):
        model = BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4)
        acc[label] = fit_posthoc_cbm(model, dm, head="prior", prior=p, prior_weight=1.0, prior_scale=3.0).accuracy
        stripes = model.head.weight[:, 4].abs().mean()
        acc[label]["stripes"] = float(stripes)
    assert acc["with"]["test"] > acc["without"]["test"] + 0.15
    assert acc["with"]["stripes"] < acc["without"]["stripes"]


def test_bad_inputs_to_the_posthoc_layer_and_head(dm, bank, tmp_path):
    with pytest.raises(ValueError, match="leave standardize_features unset"):
        BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4, standardize_features=True)
    with pytest.raises(ValueError, match=r"bank's concepts differ from the data's concept labels: \['z'\]"):
        PosthocConceptBottleneck.from_bank(ConceptBank(["a", "z"], torch.randn(2, 20)), concept_names=NAMES)
    with pytest.raises(ValueError, match="the concept bank is 20-dimensional but the encoder features are 7"):
        PosthocConceptBottleneck(7, bank=str(bank.save(tmp_path / "b.safetensors")))
    with pytest.raises(ValueError, match="needs a bank file, a concept_set file, or data with concept labels"):
        PosthocConceptBottleneck(20)
    layer = PosthocConceptBottleneck(20, concept_set=str(_txt(tmp_path)))
    with pytest.raises(ValueError, match="set data.init_args.text_encoder"):
        layer.init_from_data(torch.randn(50, 20))
    with pytest.raises(RuntimeError, match="fit the model"):
        layer(torch.randn(3, 20))
    with pytest.warns(UserWarning, match="more concepts than the data can support"):
        fit_sparse_head(torch.randn(4, 5), torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match="residual=True"):
        from bottlenecks.models.posthoc import fit_residual

        fit_residual(BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4),
                     torch.randn(4, 20), torch.zeros(4))


def _txt(tmp_path):
    p = tmp_path / "concepts.txt"
    p.write_text("red\nround\n")
    return p


def test_a_text_bank_is_built_from_the_data_text_encoder_when_fitting_starts(tmp_path):
    from test_concept_banks import FakeText

    layer = PosthocConceptBottleneck(16, concept_set=str(_txt(tmp_path)))
    layer.init_from_data(torch.randn(100, 16), text=FakeText(16))
    assert layer.concept_bank().source == "text" and layer.concept_supervision() == -1  # named by text, not labels
    assert layer(torch.randn(3, 16)).probs.shape == (3, 2)
    narrow = PosthocConceptBottleneck(16, concept_set=str(_txt(tmp_path)))
    with pytest.raises(ValueError, match="fake-text text embeddings"):
        narrow.init_from_data(torch.randn(100, 16), text=FakeText(8))


def _config(tmp_path, concept_arrays, residual, extra_bottleneck=None):
    x, c, y = concept_arrays
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x[:1200].numpy(), y_train=y[:1200].numpy(), concepts_train=c[:1200].numpy(),
             x_val=x[1200:1500].numpy(), y_val=y[1200:1500].numpy(), concepts_val=c[1200:1500].numpy(),
             x_test=x[1500:].numpy(), y_test=y[1500:].numpy(), concepts_test=c[1500:].numpy())
    name = "pcbm_h" if residual else "pcbm"
    return {
        "seed_everything": 0,
        "test_after_fit": True,
        "trainer": {"max_epochs": 5, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "runs"),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": name}},
                    "callbacks": [{"class_path": "bottlenecks.models.posthoc.PosthocCBMFit",
                                   "init_args": {"lam": 0.001}},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"monitor": "val/task_acc", "mode": "max", "save_last": True}},
                                  {"class_path": "bottlenecks.analysis.report.RunReport"}]},
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel",
                  "init_args": {"lr": 0.01, "bottleneck": {
                      "class_path": "bottlenecks.layers.posthoc.PosthocConceptBottleneck",
                      "init_args": {"residual": residual, **(extra_bottleneck or {})}}}},
        "data": {"class_path": "bottlenecks.data.datamodule.ArrayDataModule",
                 "init_args": {"path": str(path), "concept_names": NAMES, "batch_size": 128}},
    }, tmp_path / "runs" / name / "version_0"


@pytest.mark.parametrize("residual", [False, True], ids=["pcbm", "pcbm_h"])
def test_pcbm_and_pcbm_h_train_from_yaml_and_reload(tmp_path, concept_arrays, residual):
    config, run = _config(tmp_path, concept_arrays, residual)
    cfg = tmp_path / "pcbm.yaml"
    cfg.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(cfg)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/task_acc"] > 0.9 and metrics["test/concept_acc"] > 0.9
    model = BottleneckModel.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    x, c, y = concept_arrays
    model.eval()
    with torch.no_grad():
        y_hat, out = model(x[1500:])
    assert (y_hat.argmax(-1) == y[1500:]).float().mean() > 0.9
    assert isinstance(model.norm, torch.nn.Identity)  # the layer reads the encoder's coordinates
    if residual:
        assert model.bottleneck.side_channel() == slice(5, 9)
        assert out.z.shape == (500, 9)


@pytest.mark.slow
def test_a_concept_set_file_becomes_a_text_bank_from_yaml_with_paired_clip_towers(tmp_path, tiny_clip, capsys):
    """open_clip's image and text towers share one space: data.text_encoder embeds the concept
    set's sentences when fitting starts (random tiny weights: the route, not the accuracy)."""
    from bottlenecks.data.assets import asset_path

    _, cfg_path, ckpt = tiny_clip
    spec = {"name": "open_clip:bn-tiny-clip", "pretrained": ckpt, "model_config": cfg_path}
    config = {
        "seed_everything": 0, "test_after_fit": True,
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "logger": False,
                    "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": "bottlenecks.models.posthoc.PosthocCBMFit"},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel", "init_args": {"bottleneck": {
            "class_path": "bottlenecks.layers.posthoc.PosthocConceptBottleneck",
            "init_args": {"concept_set": str(asset_path("shapes_concepts.txt"))}}}},
        "data": {"class_path": "bottlenecks.data.modules.ShapesDataModule",
                 "init_args": {"n_train": 200, "n_val": 50, "n_test": 50, "image_size": 32, "encoder": spec,
                               "text_encoder": spec, "cache_dir": str(tmp_path / "cache")}},
    }
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "text.yaml")])
    model = BottleneckModel.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    b = model.bottleneck
    assert list(b.units())[:3] == ["red", "green", "blue"] and b.concept_bank().source == "text"
    assert b.concept_supervision() == -1 and b.vectors.shape == (10, 16)
    # the same concept set with a text encoder of another width is refused, naming both widths
    config["data"]["init_args"]["text_encoder"] = "minilm"
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs_bad")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "bad.yaml")])
    assert "384-dimensional (the vectors are minilm text embeddings" in capsys.readouterr().err


def test_a_grid_of_head_strengths_is_chosen_by_cross_validation_and_refitted_on_train_and_val(dm, bank):
    probe = _probe(dm)
    model = BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4)
    fit = fit_posthoc_cbm(model, dm, lam=[3.0, 1e-3, 0.03])  # 3.0 zeroes every weight
    sel = fit.selection
    assert sel.param == "lam" and sel.value != 3.0 and sel.refit_rows == 1500
    assert sel.by == "5-fold cross-validation over train + validation (1500 rows)"
    assert sel.scores[3.0] < 0.5 < 0.9 < sel.scores[sel.value]
    assert fit.accuracy["test"] > probe - 0.03
    assert "chosen by 5-fold" in fit.table() and "not held out" in fit.table()
    # the loaded head is the refit on train + validation with the chosen strength
    from bottlenecks.models.posthoc import concept_inputs

    x = torch.cat([dm.split("train").x, dm.split("val").x])
    y = torch.cat([dm.split("train").y, dm.split("val").y])
    W, b = fit_sparse_head(concept_inputs(model, x)[0], y, 4, lam=sel.value)
    assert torch.allclose(model.head.weight, W, atol=1e-5) and torch.allclose(model.head.bias, b, atol=1e-5)
    # above cv_max_rows: fitted on train, scored on the validation split, then refitted on both
    big = fit_posthoc_cbm(BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4), dm,
                          lam=[3.0, 1e-3], cv_max_rows=1000).selection
    assert big.by == "validation split (300 rows)" and big.value == 1e-3 and big.refit_rows == 1500
    # the knowledge-prior head's strength is chosen the same way
    prior = fit_posthoc_cbm(BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4), dm,
                            head="prior", prior_weight=[100.0, 1e-3]).selection
    assert prior.param == "prior_weight" and prior.value == 1e-3 and prior.scores[100.0] < prior.scores[1e-3]
    # one value: no selection, the head fits the training split as before
    assert fit_posthoc_cbm(BottleneckModel(PosthocConceptBottleneck.from_bank(bank), num_classes=4), dm,
                           lam=1e-3).selection is None


def test_the_strongest_penalty_among_the_best_held_out_scores_wins():
    from bottlenecks.models.posthoc import select_concept_head

    u, y = torch.randn(60, 3), torch.arange(60) % 2
    tried = []

    def fit(uu, yy, v):  # the same head whatever the strength: every score ties
        tried.append(v)
        return torch.zeros(2, 3), torch.tensor([1.0, 0.0])

    W, b, sel = select_concept_head(fit, "lam", [1e-3, 1.0, 0.1], u, y, folds=3)
    assert sel.value == 1.0 and len(set(sel.scores.values())) == 1 and sel.refit_rows == 60
    assert len(tried) == 3 * 3 + 1  # three strengths x three folds, then the refit
    with pytest.raises(ValueError, match="folds must be >= 2, got 1"):
        select_concept_head(fit, "lam", [1.0], u, y, folds=1)
    # the strongest penalty among the best, not the strongest overall: 1.0 predicts one class
    u[:, 0] = 2.0 * y - 1

    def fit2(uu, yy, v):
        W = torch.zeros(2, 3)
        if v < 1.0:
            W[1, 0] = 1.0  # reads the column that is the label
        return W, torch.tensor([0.0, 0.5])

    assert select_concept_head(fit2, "lam", [1.0, 0.1, 1e-3], u, y, folds=3)[2].value == 0.1


def test_yaml_head_strength_grid_is_logged_and_kept_in_the_checkpoint(tmp_path, concept_arrays):
    config, run = _config(tmp_path, concept_arrays, residual=False)
    config["trainer"]["callbacks"][0]["init_args"] = {"lam": [3.0, 0.001]}
    cfg = tmp_path / "pcbm.yaml"
    cfg.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(cfg)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/task_acc"] > 0.9
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "PosthocCBMFit" in k)
    sel = state["summary"]["selection"]
    assert sel["param"] == "lam" and sel["value"] == 0.001 and sel["refit_rows"] == 1500
    with pytest.raises(ValueError, match=r"lam must be a number or a list of numbers, got 'big'"):
        from bottlenecks.models.posthoc import PosthocCBMFit

        PosthocCBMFit(lam="big")
