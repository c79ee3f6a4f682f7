"""One vocabulary: renamed options keep working for one release — from Python, in YAML configs
and in checkpoints written by bottlenecks 0.1 — with a warning that names the new option."""

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from bottlenecks.cli import main
from bottlenecks.layers import BOTTLENECKS
from bottlenecks.layers.codebook_features import CodebookFeatures
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck
from bottlenecks.layers.quantize import VectorQuantizer
from bottlenecks.models.module import BottleneckModel
from bottlenecks.naming import RENAMED

OLD_CHECKPOINT = Path(__file__).parent / "data" / "v0.1.0_vq_digits_last.ckpt"


def test_old_names_from_python_warn_and_mean_the_same():
    with pytest.warns(DeprecationWarning, match="'heads' is deprecated.*use num_heads"):
        old = VectorQuantizer(12, codebook_size=8, heads=3, decay=0.9, kmeans_init=True)
    assert (old.num_heads, old.ema_decay, old.init) == (3, 0.9, "kmeans")
    with pytest.warns(DeprecationWarning, match="use top_k"):
        cb = CodebookFeatures(8, codebook_size=16, k=3, similarity="euclidean")
    assert (cb.top_k, cb.distance) == (3, "euclidean")
    with pytest.warns(DeprecationWarning, match="num_residual"):
        assert ConceptBottleneck(8, n_concepts=3, n_residual=2).out_features == 5
    with pytest.warns(DeprecationWarning, match="code_dim"):
        kv = DiscreteKeyValueBottleneck(8, num_heads=2, key_dim=4, key_init="random", value_dim=3)
    assert kv.code_dim == 4 and kv.init == "random"
    with pytest.raises(TypeError, match="both 'heads'.*and 'num_heads'"):
        VectorQuantizer(12, heads=3, num_heads=3)


def test_signatures_show_only_the_new_names():
    for cls in BOTTLENECKS:
        params = set(inspect.signature(cls.__init__).parameters)
        assert not params & set(RENAMED.get(cls.__name__, {})), cls.__name__


def test_a_config_with_old_names_still_runs(tmp_path):
    config = yaml.safe_load(Path("configs/vq_digits.yaml").read_text())
    args = config["model"]["init_args"]["bottleneck"]["init_args"]
    args.pop("num_heads"), args.pop("ema_decay"), args.pop("init")
    args.update(heads=4, decay=0.99, kmeans_init=True, codebook_size=16)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    before = path.read_text()
    with pytest.warns(DeprecationWarning, match="num_heads"):
        main(["fit", "--config", str(path), "--trainer.max_epochs", "1",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
              "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])
    assert path.read_text() == before  # the user's file is not rewritten
    saved = yaml.safe_load((tmp_path / "runs" / "vq_digits" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["bottleneck"]["init_args"]["num_heads"] == 4


def test_a_checkpoint_from_bottlenecks_0_1_loads_with_identical_predictions(tmp_path):
    ckpt = torch.load(OLD_CHECKPOINT, weights_only=True)
    assert "heads" in ckpt["hyper_parameters"]["bottleneck"]["init_args"]  # written with the old names
    with pytest.warns(DeprecationWarning):
        model = BottleneckModel.load_from_checkpoint(OLD_CHECKPOINT)
    assert model.bottleneck.num_heads == 4 and model.bottleneck.init == "kmeans"
    sd = ckpt["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    # its predictions are the old model's: the same codes as a nearest-code search by hand
    x = torch.rand(16, 64)
    model.eval()
    _, out = model(x)
    codebook = sd["bottleneck.codebook"]  # (4 heads, 16 codes, 16 dims)
    chunks = x.reshape(16, 4, 16).transpose(0, 1)
    expected = torch.cdist(chunks, codebook).argmin(-1).T
    assert torch.equal(out.codes, expected)


def test_a_checkpoint_from_a_newer_release_fails_naming_the_versions(tmp_path):
    ckpt = torch.load(OLD_CHECKPOINT, weights_only=True)
    ckpt["bottlenecks"] = {"version": "9.0.0", "format": 99}
    path = tmp_path / "future.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"bottlenecks 9\.0\.0 \(checkpoint format 99\).*reads formats 1 to"):
        BottleneckModel.load_from_checkpoint(path)
