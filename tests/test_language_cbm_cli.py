"""End to end from YAML with a tiny random open_clip model (image and text towers of one model):
Shapes images → cached CLIP features → language-guided bottleneck → checkpoint → reload."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

from bottlenecks.cli import main
from bottlenecks.models.module import BottleneckModel
from test_encoders import tiny_clip  # noqa: F401 - fixture

@pytest.fixture(scope="module")
def clip_spec(tiny_clip):
    """The tiny random open_clip model of the encoder tests (image and text towers), as a spec."""
    _, cfg, ckpt = tiny_clip
    return {"name": "open_clip:bn-tiny-clip", "pretrained": ckpt, "model_config": cfg}


BOTTLENECKS = {
    "labo": {"class_path": "bottlenecks.layers.label_free.LaBoBottleneck",
             "init_args": {"prompt": "a photo of a {}",
                           "class_concepts": {f"{c} {s}": [c, s] for s in ("circle", "square", "triangle")
                                              for c in ("red", "green", "blue")}}},
    "dn_cbm": {"class_path": "bottlenecks.layers.sparse_autoencoder.DiscoverThenNameCBM",
               "init_args": {"num_units": 16, "top_k": 4, "sae_epochs": 3,
                             "vocabulary": ["red", "green", "blue", "circle", "square", "triangle", "dog"]}},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BOTTLENECKS))
def test_language_bottleneck_trains_from_yaml_with_a_clip_pair_and_reloads(tmp_path, clip_spec, method):
    config = {
        "seed_everything": 0,
        "test_after_fit": True,
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "runs"),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": method}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True}},
                                  {"class_path": "bottlenecks.analysis.report.RunReport"}]},
        "model": {"class_path": "bottlenecks.models.module.BottleneckModel",
                  "init_args": {"lr": 0.01, "standardize_features": False, "bottleneck": BOTTLENECKS[method]}},
        "data": {"class_path": "bottlenecks.data.modules.ShapesDataModule",
                 "init_args": {"n_train": 120, "n_val": 40, "n_test": 40, "image_size": 32, "encoder": clip_spec,
                               "text_encoder": clip_spec, "cache_dir": str(tmp_path / "cache"), "batch_size": 64}},
    }
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(cfg)])
    run = tmp_path / "runs" / method / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/task_acc" in metrics

    model = BottleneckModel.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    model.eval()
    units = model.bottleneck.units()
    x = torch.randn(5, 16)
    if method == "labo":
        assert units.kind == "concept" and "red" in units.names
        assert model.bottleneck.concept_vectors.shape == (10, 16)  # the text tower's vectors, restored
    else:
        assert units.kind == "sae"
        # units are named from the vocabulary (random CLIP: which word is arbitrary)
        assert all(u.split("#")[0] in BOTTLENECKS[method]["init_args"]["vocabulary"] for u in units.names)
    with torch.no_grad():
        y1, _ = model(x)
        y2, _ = model(x)
    assert y1.shape == (5, 9) and torch.isfinite(y1).all() and torch.equal(y1, y2)
