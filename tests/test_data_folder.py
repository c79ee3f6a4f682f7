"""ConceptImageFolder: parsing, splits, class mapping, images, fingerprint and every bad-input error."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bottlenecks.data.base import ConceptDataset
from bottlenecks.data.folder import ConceptImageFolder

HEADER = "image,label,split,wings,red"
ROWS = [
    "img/a.png,sparrow,train,1,0",
    "img/b.png,robin,train,1,1",
    "img/c.png,robin,test,0,",
    "img/d.png,finch,val,,1",
]


def write_folder(root: Path, rows=ROWS, header=HEADER, size=(10, 8)) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate("abcd"):
        arr = np.full((size[1], size[0], 3), 40 * k, np.uint8)
        arr[0, 0] = (255, 0, 0)
        Image.fromarray(arr).save(root / "img" / f"{name}.png")
    (root / "concepts.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_parses_labels_concepts_and_items(tmp_path):
    root = write_folder(tmp_path)
    ds = ConceptImageFolder(root)
    assert isinstance(ds, ConceptDataset) and len(ds) == 4
    assert ds.class_names == ["finch", "robin", "sparrow"] and ds.num_classes == 3
    assert ds.targets().tolist() == [2, 1, 1, 0]
    assert ds.concept_names == ["wings", "red"]
    table = ds.concept_table()
    assert table[:2].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert table[2, 0] == 0 and math.isnan(table[2, 1]) and math.isnan(table[3, 0]) and table[3, 1] == 1
    item = ds[1]
    assert item["x"].shape == (3, 8, 10) and item["x"].dtype == torch.float32
    assert item["x"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert abs(float(item["x"][0, 1, 1]) - 40 / 255) < 1e-6
    assert int(item["y"]) == 1 and item["index"] == 1 and torch.equal(item["concepts"], table[1])


def test_split_filter_resize_and_shared_class_indices(tmp_path):
    root = write_folder(tmp_path)
    train = ConceptImageFolder(root, split="train", image_size=16)
    test = ConceptImageFolder(root, split="test", image_size=(12, 6))
    assert len(train) == 2 and len(test) == 1
    assert train.class_names == test.class_names == ["finch", "robin", "sparrow"]
    assert test.targets().tolist() == [1]
    assert train[0]["x"].shape == (3, 16, 16) and test[0]["x"].shape == (3, 12, 6)
    only_red = ConceptImageFolder(root, concept_columns=["red"])
    assert only_red.concept_names == ["red"] and only_red.concept_table().shape == (4, 1)


def test_integer_labels_class_names_and_grayscale(tmp_path):
    rows = ["img/a.png,0,train,1,0", "img/b.png,4,train,0,0", "img/c.png,2,test,1,1", "img/d.png,1,val,0,1"]
    root = write_folder(tmp_path, rows=rows)
    Image.fromarray(np.full((5, 7), 128, np.uint8)).save(root / "img" / "a.png")
    # label 4 implies 5 classes, but class 3 never occurs: said, not silent
    with pytest.warns(UserWarning, match=r"the largest label, 4 at line 3, implies 5 classes but 1 of them never occur"):
        ds = ConceptImageFolder(root)
    assert ds.num_classes == 5 and ds.targets().tolist() == [0, 4, 2, 1]
    assert ds[0]["x"].shape == (3, 5, 7)
    with pytest.warns(UserWarning, match="2 of the 6 stated classes never occur"):
        named = ConceptImageFolder(root, class_names=list("abcdef"))
    assert named.num_classes == 6 and named.class_names[4] == "e"
    with pytest.raises(ValueError, match=r"line 3, label 4 is out of range for the 3 class_names"):
        ConceptImageFolder(root, class_names=["x", "y", "z"])


def test_fingerprint_tracks_files_and_arguments(tmp_path):
    root = write_folder(tmp_path)
    a = ConceptImageFolder(root)
    assert a.fingerprint() == ConceptImageFolder(root).fingerprint()
    assert a.fingerprint() != ConceptImageFolder(root, image_size=32).fingerprint()
    assert a.fingerprint() != ConceptImageFolder(root, split="train").fingerprint()
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "img" / "c.png")
    st = os.stat(root / "img" / "c.png")
    os.utime(root / "img" / "c.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ConceptImageFolder(root).fingerprint() != a.fingerprint()


def test_missing_root_csv_and_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder .*nowhere does not exist"):
        ConceptImageFolder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="concept CSV .*labels.csv does not exist"):
        ConceptImageFolder(tmp_path, csv="labels.csv")
    root = write_folder(tmp_path)
    (root / "img" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) .* img/c.png \(line 4\)"):
        ConceptImageFolder(root)
    assert len(ConceptImageFolder(root, split="train")) == 2  # other splits do not need c.png


def test_corrupt_image_raises_on_load_and_in_verify(tmp_path):
    root = write_folder(tmp_path)
    (root / "img" / "b.png").write_bytes(b"this is not a png")
    ds = ConceptImageFolder(root)  # construction only checks that files exist
    assert ds[0]["x"].shape[0] == 3
    with pytest.raises(ValueError, match=r"line 3\).*cannot read image .*b.png"):
        ds[1]
    with pytest.raises(ValueError, match=r"1 of 4 images cannot be read: line 3: cannot read image .*b.png"):
        ds.verify()
    (root / "img" / "b.png").unlink()
    write_folder(tmp_path)
    assert ConceptImageFolder(root).verify() == 4


@pytest.mark.parametrize(
    "rows, kwargs, match",
    [
        (["img/a.png,sparrow,train,2,0"], {}, r"line 2, concept column 'wings' holds '2'; expected 0, 1"),
        (["img/a.png,sparrow,train,1,yes"], {}, r"line 2, concept column 'red' holds 'yes'"),
        (["img/a.png,,train,1,0"], {}, r"line 2 has an empty 'label' cell"),
        (["img/a.png,sparrow,train,1"], {}, r"line 2 has 4 cells but the header has 5 columns"),
        (ROWS, {"concept_columns": ["wings", "blue"]}, r"unknown concept columns \['blue'\]"),
        (ROWS, {"label_column": "species"}, r"label_column 'species' is not a column; the header has"),
        (ROWS, {"image_column": "path"}, r"image_column 'path' is not a column"),
        (ROWS, {"split": "holdout"}, r"no rows with split == 'holdout'; splits present: \['test', 'train', 'val'\]"),
        (ROWS, {"split": "train", "split_column": "fold"}, r"split_column 'fold' is not a column"),
        (ROWS, {"class_names": ["robin", "sparrow"]}, r"line 5, label 'finch' is not one of the class_names"),
        ([], {}, "the CSV has a header but no rows"),
    ],
)
def test_bad_csv_errors(tmp_path, rows, kwargs, match):
    root = write_folder(tmp_path, rows=rows)
    with pytest.raises(ValueError, match=match):
        ConceptImageFolder(root, **kwargs)


def test_negative_label_and_duplicate_header(tmp_path):
    root = write_folder(tmp_path, rows=["img/a.png,-1,train,1,0"])
    with pytest.raises(ValueError, match="line 2, label -1 is negative"):
        ConceptImageFolder(root)
    root = write_folder(tmp_path, header="image,label,split,wings,wings", rows=["img/a.png,0,train,1,0"])
    with pytest.raises(ValueError, match=r"duplicate column names \['wings'\]"):
        ConceptImageFolder(root)
