"""Issue 15, items 2 and 4: one validation layer for CSVs, labels and feature files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.data.folder import ConceptImageFolder
from bottlenecks.data.modules import ImageFolderDataModule
from bottlenecks.data.validation import DataWarning, encode_class_labels


def _images(root: Path, n: int) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(root / "img" / f"{i}.png")


# ------------------------------------------------------------------- item 2: CSVs
@pytest.mark.parametrize("style", ["comma-space", "excel-bom"])
def test_val_rows_are_found_in_comma_space_and_bom_csvs(tmp_path, style):
    _images(tmp_path, 8)
    splits = ["train", "train", "train", "train", "val", "val", "test", "test"]
    sep = ", " if style == "comma-space" else ","
    # ", ": the split column must not come first to lose its name; BOM: it must come first
    order = [1, 2, 0, 3] if style == "comma-space" else [0, 1, 2, 3]
    lines = [sep.join(["split", "image", "label", "red"][k] for k in order)]
    lines += [sep.join([s, f"img/{i}.png", str(i % 2), str(i % 2)][k] for k in order) for i, s in enumerate(splits)]
    text = "\r\n".join(lines) + "\r\n"
    data = ("\ufeff" + text).encode("utf-8") if style == "excel-bom" else text.encode()
    (tmp_path / "concepts.csv").write_bytes(data)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=4, encoder="identity:48",
                               cache_dir=str(tmp_path / "cache"))
    # the two val rows are the validation split, not a random slice of train
    assert dm.dataset("val").lines == [6, 7]
    assert len(dm.dataset("train")) == 4


def test_rows_of_an_unknown_split_are_warned_about(tmp_path):
    _images(tmp_path, 4)
    rows = ["image,label,split", "img/0.png,0,train", "img/1.png,1,train", "img/2.png,1,validation",
            "img/3.png,0,test"]
    (tmp_path / "concepts.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(DataWarning, match=r"1 rows have a split that is none of .*'validation'.*line 4"):
        ImageFolderDataModule(root=str(tmp_path), image_size=4, encoder="identity:48",
                              cache_dir=str(tmp_path / "cache"), val_fraction=0.5)


def test_csv_duplicates_conflicts_and_leakage(tmp_path):
    _images(tmp_path, 3)
    base = ["image,label,split,red", "img/0.png,a,train,1", "img/1.png,b,train,0"]
    (tmp_path / "concepts.csv").write_text("\n".join(base + ["img/0.png,b,test,1"]) + "\n")
    with pytest.raises(ValueError, match=r"image 'img/0.png' is listed at line 2 and at line 4 with different labels"):
        ConceptImageFolder(tmp_path)
    (tmp_path / "concepts.csv").write_text("\n".join(base + ["img/0.png,a,train,0"]) + "\n")
    with pytest.raises(ValueError, match="different labels"):  # same label, different concept
        ConceptImageFolder(tmp_path)
    (tmp_path / "concepts.csv").write_text("\n".join(base + ["img/0.png,a,test,1"]) + "\n")
    with pytest.warns(DataWarning, match=r"appear in more than one split .*'img/0.png' in train at line 2 and in test at line 4"):
        ConceptImageFolder(tmp_path)
    (tmp_path / "concepts.csv").write_text("\n".join(base + ["img/0.png,a,train,1"]) + "\n")
    with pytest.warns(DataWarning, match=r"listed more than once"):
        ConceptImageFolder(tmp_path)


# ----------------------------------------------------------------- item 4: labels
@pytest.mark.parametrize(
    "raw, kwargs, match",
    [
        ([0, 1, 99], {}, r"the largest label, 99 at row 2, implies 100 classes but 97 of them never occur"),
        (["1", "0", "cat"], {}, r"mix class indices and class names \(1 at row 0, 'cat' at row 2\)"),
        ([0.0, 1.5, 1.0], {}, r"row 1, label 1.5 is not a whole number"),
        (["0", "2.7"], {}, r"row 1, label '2.7' is not a whole number"),
        ([0, 1, 2], {"num_classes": 2}, r"row 2, label 2 is out of range for num_classes=2"),
        ([0, -1], {}, r"row 1, label -1 is negative"),
        (["a", "b"], {"num_classes": 3}, r"num_classes=3 but the label values name 2 classes"),
        ([0, 1], {"num_classes": 3, "class_names": ["a", "b"]}, r"num_classes=3 but 2 class_names"),
        (["dgo"], {"class_names": ["cat", "dog"]}, r"'dgo' is not one of the class_names .*did you mean 'dog'"),
        ([0, float("nan")], {}, r"row 1, label nan is not finite"),
    ],
)
def test_label_rules(raw, kwargs, match):
    with pytest.raises(ValueError, match=match):
        encode_class_labels(raw, "labels", **kwargs)


def test_label_good_cases_and_reported_disagreements():
    assert encode_class_labels([1.0, 0.0], "w")[0].tolist() == [1, 0]  # whole floats are indices
    codes, names, n = encode_class_labels(["dog", "cat", "dog"], "w")
    assert codes.tolist() == [1, 0, 1] and names == ["cat", "dog"] and n == 2
    with pytest.warns(DataWarning, match="2 of the 4 stated classes never occur"):
        assert encode_class_labels([0, 1], "w", num_classes=4)[2] == 4
    with pytest.warns(DataWarning, match="implies 3 classes but 1 of them never occur"):
        assert encode_class_labels([0, 2, 2], "w")[2] == 3


def _arrays(n=40, d=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.arange(n) % 2


def test_array_labels_are_names_or_indices_never_truncated(tmp_path):
    x, y = _arrays()
    dm = ArrayDataModule.from_arrays(x_train=x, y_train=np.array(["cat", "dog"] * 20))
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"y_train row 3, label 1.5 is not a whole number"):
        ArrayDataModule.from_arrays(x_train=x, y_train=np.array([0, 1, 0, 1.5] * 10))
    mixed = np.array(["0", "1"] * 19 + ["1", "cat"], dtype=object)
    with pytest.raises(ValueError, match="mix class indices and class names"):
        ArrayDataModule.from_arrays(x_train=x, y_train=mixed)
    with pytest.raises(ValueError, match=r"y_train row 1, label 99 is out of range|implies 100 classes"):
        ArrayDataModule.from_arrays(x_train=x, y_train=np.array([0, 99] + [0, 1] * 19))


def test_one_hot_y_is_refused_up_front():
    x, y = _arrays()
    onehot = torch.nn.functional.one_hot(y, 2)
    with pytest.raises(ValueError, match=r"y_train has shape \(40, 2\) .* looks one-hot: pass class indices"):
        ArrayDataModule.from_arrays(x_train=x, y_train=onehot)


def test_feature_files_name_the_file_key_and_row(tmp_path):
    x, y = _arrays()
    p = tmp_path / "f.npz"
    np.savez(p, x_train=x.numpy(), y_train=y.numpy()[:30])
    with pytest.raises(ValueError, match=r"f.npz: x_train has 40 rows but y_train has 30"):
        ArrayDataModule(path=str(p))
    np.savez(p, x_train=np.array([["a", "b"]] * 40), y_train=y.numpy())
    with pytest.raises(ValueError, match=r"f.npz: x_train holds <U1 values .* features must be numbers"):
        ArrayDataModule(path=str(p))
    bad = x.numpy().copy()
    bad[7, 2] = np.inf
    np.savez(p, x_train=bad, y_train=y.numpy())
    with pytest.raises(ValueError, match=r"f.npz: x_train row 7, column 2 is inf"):
        ArrayDataModule(path=str(p))
    np.savez(p, x_train=x.numpy(), y_trian=y.numpy())
    with pytest.raises(ValueError, match=r"unknown key 'y_trian' \(did you mean 'y_train'\?\)"):
        ArrayDataModule(path=str(p))
    np.savez(p, x_train=x.numpy(), y_train=y.numpy(), x_test=x.numpy()[:, :2], y_test=y.numpy())
    with pytest.raises(ValueError, match=r"x_test has 2 features per row but x_train has 3"):
        ArrayDataModule(path=str(p))
    np.savez(p, x_train=x.numpy(), y_train=y.numpy(), x_test=x.numpy())
    with pytest.raises(ValueError, match=r"test split has no y_test"):
        ArrayDataModule(path=str(p))


def test_array_leakage_and_conflicts_are_warned():
    x, y = _arrays()
    with pytest.warns(DataWarning, match=r"appear in more than one split .*x_train row 0 and in test at x_test row 0"):
        ArrayDataModule.from_arrays(x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    x2 = x.clone()
    x2[1] = x2[0]
    with pytest.warns(DataWarning, match=r"listed at x_train row 0 and at x_train row 1 with different labels"):
        ArrayDataModule.from_arrays(x_train=x2, y_train=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ArrayDataModule.from_arrays(x_train=x, y_train=y)  # clean data: no warning
