"""Datamodules end to end: raw images → frozen encoder → feature cache → a trained CBM."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from bottlenecks.data.modules import CUBDataModule, DiabetesDataModule, DigitsDataModule, ImageFolderDataModule
from bottlenecks.layers.concept import ConceptBottleneck
from bottlenecks.models.module import BottleneckModel

TINY = {"name": "lite0", "image_size": 64}


def _fit_test(model, dm, epochs=20):
    kw = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    L.Trainer(max_epochs=epochs, **kw).fit(model, dm)
    return L.Trainer(**kw).test(model, dm, verbose=False)[0]


def _write_coloured_folder(root: Path, n: int = 120, seed: int = 0) -> Path:
    """Squares that are red or blue (concept ``red``), big or small (concept ``big``);
    the label is ``red``. Train/test split column only: val is carved from train."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = ["image,label,split,red,big"]
    for i in range(n):
        red, big = int(rng.random() < 0.5), int(rng.random() < 0.5)
        arr = np.full((32, 32, 3), 200, np.uint8)
        s = 14 if big else 6
        x0, y0 = rng.integers(0, 32 - s, size=2)
        arr[y0:y0 + s, x0:x0 + s] = (220, 30, 30) if red else (30, 30, 220)
        Image.fromarray(arr).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'red' if red else 'blue'},{'test' if i % 4 == 0 else 'train'},{red},{big}")
    (root / "concepts.csv").write_text("\n".join(rows) + "\n")
    return root


def test_image_folder_datamodule_trains_a_cbm(tmp_path):
    root = _write_coloured_folder(tmp_path / "folder")
    dm = ImageFolderDataModule(str(root), image_size=32, encoder=TINY, cache_dir=str(tmp_path / "cache"),
                               batch_size=32, val_fraction=0.2)
    assert dm.concept_names == ["red", "big"] and dm.num_classes == 2 and dm.feature_dim == 1280
    dm.setup("fit")
    dm.setup("test")
    n_train, n_val, n_test = (len(dm.split(s)) for s in ("train", "val", "test"))
    assert (n_train, n_val, n_test) == (72, 18, 30)
    model = BottleneckModel(ConceptBottleneck(dm.feature_dim, concept_names=dm.concept_names),
                            num_classes=2, lr=0.05)
    res = _fit_test(model, dm, epochs=50)
    assert res["test/concept_acc"] > 0.8
    assert res["test/task_acc"] > 0.8


def test_image_folder_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataModule(str(tmp_path / "nowhere"), encoder=TINY)


def test_cub_datamodule_reads_official_layout(tmp_path):
    from test_data_cub import write_cub

    root = write_cub(tmp_path)
    dm = CUBDataModule(str(root), image_size=32, encoder=TINY, cache_dir=str(tmp_path / "cache"),
                       concept_filter="none", val_fraction=0.25)
    dm.setup("fit")
    dm.setup("test")
    total = sum(len(dm.split(s)) for s in ("train", "val", "test"))
    assert total == 12
    assert dm.split("train").concepts.shape[1] == len(dm.concept_names)
    assert dm.split("train").x.shape[1] == 1280


def test_table_datamodules_skip_the_encoder():
    digits = DigitsDataModule()
    assert digits.feature_dim == 64 and digits.num_classes == 10 and digits.concept_names is None
    model = BottleneckModel(ConceptBottleneck(64, num_concepts=16), num_classes=10, lr=0.05,
                            concept_loss_weight=0.0)
    assert _fit_test(model, digits, epochs=15)["test/task_acc"] > 0.85
    diabetes = DiabetesDataModule()
    assert diabetes.task == "regression" and diabetes.num_classes is None
    diabetes.setup("fit")
    assert torch.isfinite(diabetes.split("train").y).all()
