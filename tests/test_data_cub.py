"""CUB200 on a tiny fixture written in the official CUB-200-2011 layout."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bottlenecks.data.base import ConceptDataset
from bottlenecks.data.cub import CUB200

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
ATTRS = [
    "has_bill_shape::curved_(up_or_down)",
    "has_wing_color::blue",
    "has_wing_color::brown",
    "has_size::small_(5_-_9_in)",
    "has_eye_color::black",
]
PARTS = ["back", "beak", "left eye"]
W, H = 40, 30


def klass(image_id: int) -> int:
    return (image_id - 1) // 4  # 0-based class, 4 images per class


def is_train(image_id: int) -> bool:
    return image_id % 4 != 0  # the 4th image of each class is a test image


def labels(image_id: int) -> list[tuple[int, int]]:
    """(is_present, certainty_id) of the 5 attributes for one image."""
    c, train = klass(image_id), is_train(image_id)
    a1 = (1, 4) if c in (0, 1) else (0, 4)  # present in classes 0 and 1
    a2 = (1, 3) if c == 0 else (0, 3)  # present in class 0 only
    # class 2 train images: present (3), absent (4), absent-not-visible (1) -> a 1:1 tie once the
    # not-visible label is skipped -> present at class level; other classes absent
    a3 = {1: (1, 3), 2: (0, 4), 3: (0, 1)}[(image_id - 1) % 4 + 1] if c == 2 and train else (0, 4)
    a4 = (0, 4) if train else (1, 4)  # present only in test images: must not leak
    a5 = (1, 2) if image_id % 2 else (1, 4)  # present everywhere; guessing on odd ids
    return [a1, a2, a3, a4, a5]


def part(image_id: int, p: int) -> tuple[float, float, int]:
    if p == 3 and image_id % 2:
        return (0.0, 0.0, 0)
    return (10.0 * p + image_id, 5.0 * p + 0.5, 1)


def write_cub(base: Path, attributes_at_parent: bool = True) -> Path:
    root = base / "CUB_200_2011"
    (root / "attributes").mkdir(parents=True)
    (root / "parts").mkdir()
    ids = range(1, 13)
    names = {i: f"{CLASSES[klass(i)]}/{CLASSES[klass(i)].split('.')[1]}_{i:04d}.jpg" for i in ids}
    rng = np.random.default_rng(0)
    for i in ids:
        path = root / "images" / names[i]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, quality=90)
    # images.txt deliberately out of order; the dataset sorts by id
    (root / "images.txt").write_text("".join(f"{i} {names[i]}\n" for i in reversed(ids)))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {klass(i) + 1}\n" for i in ids))
    (root / "train_test_split.txt").write_text("".join(f"{i} {int(is_train(i))}\n" for i in ids))
    (root / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(CLASSES)))
    (root / "bounding_boxes.txt").write_text("".join(f"{i} 2.0 3.0 20.0 10.0\n" for i in ids))
    attr_file = (base if attributes_at_parent else root / "attributes") / "attributes.txt"
    attr_file.write_text("".join(f"{k + 1} {a}\n" for k, a in enumerate(ATTRS)))
    lines = []
    for i in ids:
        for a, (present, certainty) in enumerate(labels(i), start=1):
            extra = " 0" if (i + a) % 7 == 0 else ""  # some official lines carry an extra column
            lines.append(f"{i} {a} {present} {certainty}{extra} {3.5 + a}\n")
    (root / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    (root / "parts" / "parts.txt").write_text("".join(f"{p} {n}\n" for p, n in enumerate(PARTS, start=1)))
    (root / "parts" / "part_locs.txt").write_text(
        "".join(f"{i} {p} {part(i, p)[0]} {part(i, p)[1]} {part(i, p)[2]}\n" for i in ids for p in (1, 2, 3))
    )
    return root


@pytest.fixture
def cub(tmp_path: Path) -> Path:
    return write_cub(tmp_path)


def test_parses_the_official_layout(cub):
    ds = CUB200(cub, split="test", concept_filter="none")
    assert isinstance(ds, ConceptDataset) and len(ds) == 3
    assert ds.image_ids == [4, 8, 12] and ds.targets().tolist() == [0, 1, 2]
    assert ds.num_classes == 3 and ds.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert ds.concept_names == ATTRS
    expected = torch.tensor([[float(p) for p, _ in labels(i)] for i in (4, 8, 12)])
    assert torch.equal(ds.concept_table(), expected)
    assert ds.certainties[:, 4].tolist() == [4, 4, 4]
    item = ds[1]
    assert item["x"].shape == (3, H, W) and item["x"].dtype == torch.float32
    assert int(item["y"]) == 1 and torch.equal(item["concepts"], expected[1]) and item["index"] == 1
    # the parent folder works as root too
    assert CUB200(cub.parent, split="test", concept_filter="none").image_ids == [4, 8, 12]


def test_attributes_txt_inside_attributes_folder(tmp_path):
    root = write_cub(tmp_path, attributes_at_parent=False)
    assert CUB200(root, split="train", concept_filter="none", val_fraction=0.0).concept_names == ATTRS


def test_splits_are_disjoint_stratified_and_seeded(cub):
    kw = {"val_fraction": 1 / 3, "seed": 0, "concept_filter": "none"}
    splits = {s: CUB200(cub, split=s, **kw) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    ids = [set(splits[s].image_ids) for s in ("train", "val", "test")]
    assert set.union(*ids) == set(range(1, 13)) and sum(map(len, ids)) == 12
    assert all(is_train(i) for i in ids[0] | ids[1]) and not any(is_train(i) for i in ids[2])
    assert sorted(splits["val"].targets().tolist()) == [0, 1, 2]  # one per class
    assert CUB200(cub, split="val", **kw).image_ids == splits["val"].image_ids
    others = {
        tuple(CUB200(cub, split="val", val_fraction=1 / 3, seed=s, concept_filter="none").image_ids) for s in range(6)
    }
    assert len(others) > 1
    with pytest.raises(ValueError, match=r"split 'val' is empty \(val_fraction=0.0"):
        CUB200(cub, split="val", val_fraction=0.0, concept_filter="none")


def test_certainty_filter_makes_unsure_labels_nan(cub):
    ds = CUB200(cub, split="train", val_fraction=0.0, concept_filter="none", certainty_min=3)
    table = ds.concept_table()
    for row, image_id in enumerate(ds.image_ids):
        for a, (present, certainty) in enumerate(labels(image_id)):
            value = table[row, a].item()
            assert math.isnan(value) if certainty < 3 else value == present


def test_majority_filter_follows_koh_et_al(cub):
    ds = CUB200(cub, split="test", val_fraction=0.0, concept_filter="majority", min_class_count=2)
    assert ds.concept_names == [ATTRS[0], ATTRS[4]]
    assert ds.class_concepts.tolist() == [[1, 1], [1, 1], [0, 1]]
    assert ds.kept_attribute_ids == [1, 5]
    assert ds.concept_table().tolist() == [[1, 1], [1, 1], [0, 1]]  # class-level labels
    loose = CUB200(cub, split="test", val_fraction=0.0, min_class_count=1)
    # attribute 3 is kept: class 2's 1:1 tie (the absent-not-visible label is skipped) counts as present;
    # attribute 4 is present only in test images and is dropped: statistics come from train only
    assert loose.concept_names == [ATTRS[0], ATTRS[1], ATTRS[2], ATTRS[4]]
    assert loose.class_concepts[:, 2].tolist() == [0, 0, 1]
    # class-level labels replace the image's own (test image 12 marks attribute 3 absent)
    assert loose.concept_table()[2].tolist() == [0, 0, 1, 1]
    inst = CUB200(cub, split="test", val_fraction=0.0, min_class_count=1, instance_labels=True)
    assert inst.concept_table()[2].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="kept no attribute: none is present in at least min_class_count=4 classes"):
        CUB200(cub, split="train", val_fraction=0.0, min_class_count=4)


def test_parts_and_boxes_follow_resizing(cub):
    ds = CUB200(cub, split="train", val_fraction=0.0, concept_filter="none")
    assert ds.part_names == PARTS
    item = ds[0]  # image id 1
    assert item["parts"].shape == (3, 3)
    assert item["parts"].tolist() == [list(part(1, p)) for p in (1, 2, 3)]
    assert item["bbox"].tolist() == [2.0, 3.0, 20.0, 10.0]
    big = CUB200(cub, split="train", val_fraction=0.0, concept_filter="none", image_size=(2 * H, 2 * W))[0]
    assert big["x"].shape == (3, 2 * H, 2 * W)
    assert torch.allclose(big["parts"][:, :2], item["parts"][:, :2] * 2)
    assert torch.equal(big["parts"][:, 2], item["parts"][:, 2])
    assert big["bbox"].tolist() == [4.0, 6.0, 40.0, 20.0]
    bare = CUB200(cub, split="train", val_fraction=0.0, concept_filter="none", return_parts=False, return_bbox=False)
    assert "parts" not in bare[0] and "bbox" not in bare[0]


def test_fingerprint_tracks_arguments_and_files(cub):
    a = CUB200(cub, split="test", concept_filter="none")
    assert a.fingerprint() == CUB200(cub, split="test", concept_filter="none").fingerprint()
    assert a.fingerprint() != CUB200(cub, split="test", concept_filter="none", certainty_min=2).fingerprint()
    assert a.fingerprint() != CUB200(cub, split="test", concept_filter="none", image_size=32).fingerprint()
    img = a.image_paths[0]
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert CUB200(cub, split="test", concept_filter="none").fingerprint() != a.fingerprint()


def test_missing_files_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder .*nope does not exist"):
        CUB200(tmp_path / "nope")
    root = write_cub(tmp_path)
    (tmp_path / "attributes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="attributes.txt not found; looked in .*attributes"):
        CUB200(root)
    root.joinpath("images.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"images.txt does not exist; root must be the extracted CUB_200_2011"):
        CUB200(root)


def test_missing_and_corrupt_images(cub):
    victim = sorted((cub / "images").rglob("*_0008.jpg"))[0]
    victim.write_bytes(b"\xff\xd8 truncated jpeg")
    ds = CUB200(cub, split="test", concept_filter="none")
    with pytest.raises(ValueError, match="image id 8.*cannot read image .*_0008.jpg"):
        ds[1]
    with pytest.raises(ValueError, match=r"1 of 3 images cannot be read: .*_0008.jpg"):
        ds.verify()
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) listed in images.txt do not exist: .*_0008.jpg"):
        CUB200(cub, split="test", concept_filter="none")


def test_malformed_metadata(cub):
    (cub / "classes.txt").write_text("1 001.A\nx 002.B\n")
    with pytest.raises(ValueError, match=r"classes.txt, line 2: expected '<class id> \.\.\.', got 'x 002.B'"):
        CUB200(cub)
    (cub / "classes.txt").write_text("1 001.A\n2 002.B\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt uses class ids \[3\] that classes.txt does not list"):
        CUB200(cub)
    (cub / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(CLASSES)))
    with open(cub / "attributes" / "image_attribute_labels.txt", "a") as fh:
        fh.write("3 9 1 4 2.0\n")
    with pytest.raises(ValueError, match="refers to attribute id 9, not listed in attributes.txt"):
        CUB200(cub)
