"""ShapesDataset: determinism, masks, concept statistics, label rule and the three knobs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from bottlenecks.data.base import ConceptDataset
from bottlenecks.data.shapes import CLASS_NAMES, SHAPES_CONCEPTS, ShapesDataset, render_grid, shapes_vocabulary

RED, GREEN, BLUE, CIRCLE, SQUARE, TRIANGLE, LARGE, PAIR, STRIPED, OUTLINED = range(10)


def phi(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two binary vectors."""
    return float(np.corrcoef(a.astype(float), b.astype(float))[0, 1])


def test_vocabulary_asset_matches_renderer():
    vocab = shapes_vocabulary()
    assert [c["name"] for c in vocab["concepts"]] == list(SHAPES_CONCEPTS)
    assert all(len(c["description"]) > 10 for c in vocab["concepts"])
    assert vocab["class_names"] == CLASS_NAMES
    assert vocab["cooccurrence_pair"] == ["red", "circle"]
    ds = ShapesDataset("train", n=4)
    assert isinstance(ds, ConceptDataset)
    assert ds.concept_names == list(SHAPES_CONCEPTS) and ds.num_concepts == 10
    assert ds.num_classes == 9 and ds.class_names[3 * 1 + 2] == "blue square"
    assert ds.task == "classification" and ds.kind == "image"


def test_item_contract_and_defaults():
    ds = ShapesDataset("val", n=5, image_size=48)
    item = ds[2]
    assert item["x"].shape == (3, 48, 48) and item["x"].dtype == torch.float32
    assert 0.0 <= float(item["x"].min()) and float(item["x"].max()) <= 1.0
    assert item["y"].dtype == torch.int64 and item["y"].ndim == 0
    assert item["masks"].shape == (10, 48, 48) and item["masks"].dtype == torch.bool
    assert item["index"] == 2
    assert torch.equal(item["concepts"], ds.concept_table()[2])
    assert int(item["y"]) == int(ds.targets()[2])
    assert torch.equal(ds[-1]["x"], ds[4]["x"])
    with pytest.raises(IndexError, match="has 5 items, index 5"):
        ds[5]
    assert "masks" not in ShapesDataset("val", n=2, return_masks=False)[0]
    assert len(ShapesDataset("train")) == 10000 and len(ShapesDataset("test")) == 2000


def test_determinism_seeds_splits_and_prefix():
    a, b = ShapesDataset("train", n=6, seed=3), ShapesDataset("train", n=6, seed=3)
    for i in range(6):
        assert torch.equal(a[i]["x"], b[i]["x"])
        assert torch.equal(a[i]["masks"], b[i]["masks"])
    other_seed = ShapesDataset("train", n=6, seed=4)
    other_split = ShapesDataset("test", n=6, seed=3)
    def images(ds):
        return torch.stack([ds[i]["x"] for i in range(6)])

    assert not torch.equal(images(a), images(other_seed))
    assert not torch.equal(images(a), images(other_split))
    # a smaller dataset is a prefix of a larger one: item i depends on (seed, split, i) only
    big = ShapesDataset("train", n=50, seed=3)
    assert torch.equal(big.concept_table()[:6], a.concept_table())
    assert torch.equal(big[5]["x"], a[5]["x"])
    assert a.fingerprint() == b.fingerprint() != other_seed.fingerprint()
    assert a.fingerprint() != ShapesDataset("train", n=6, seed=3, label_noise=0.1).fingerprint()


def test_worker_pool_gives_identical_items():
    ds = ShapesDataset("train", n=12, seed=1)
    serial = torch.cat([b["x"] for b in DataLoader(ds, batch_size=4)])
    pooled = torch.cat([b["x"] for b in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(serial, pooled)


def test_concept_statistics_and_linear_label_rule():
    ds = ShapesDataset("train", n=3000, seed=0)
    c = ds.concept_table().numpy()
    y = ds.targets().numpy()
    assert set(np.unique(c)) <= {0.0, 1.0}
    assert (c[:, RED:BLUE + 1].sum(1) == 1).all() and (c[:, CIRCLE:TRIANGLE + 1].sum(1) == 1).all()
    colour, shape = c[:, :3].argmax(1), c[:, 3:6].argmax(1)
    assert (y == 3 * shape + colour).all()
    assert np.allclose(c[:, :6].mean(0), 1 / 3, atol=0.04)
    assert np.allclose(c[:, 6:].mean(0), 0.5, atol=0.04)
    # the rule is linear in the concepts: score_k = [colour of k] + [shape of k]
    w = np.zeros((9, 10))
    for k in range(9):
        w[k, k % 3] = w[k, 3 + k // 3] = 1.0
    assert ((c @ w.T).argmax(1) == y).all()
    # the other concepts are independent of the label (no leakage into the rule)
    for j in (LARGE, PAIR, STRIPED, OUTLINED):
        assert abs(phi(c[:, j], y % 2)) < 0.06
    assert ds.concept_descriptions["outlined"].startswith("the object")


def test_concept_table_needs_no_rendering(monkeypatch):
    def boom(self, index):
        raise AssertionError("rendered an image")

    monkeypatch.setattr(ShapesDataset, "render", boom)
    ds = ShapesDataset("train", n=10000)
    assert ds.concept_table().shape == (10000, 10) and ds.targets().shape == (10000,)


def test_masks_cover_the_right_pixels():
    ds = ShapesDataset("test", n=60, seed=2)
    agree = total = 0
    for i in range(len(ds)):
        item = ds[i]
        x, m, c = item["x"].numpy(), item["masks"].numpy(), item["concepts"].numpy()
        obj = m[int(c[:3].argmax())]
        # masks of concepts that are off are empty; object concepts share the object mask
        for j in range(10):
            if c[j] == 0:
                assert not m[j].any(), (i, SHAPES_CONCEPTS[j])
            elif j != STRIPED:
                assert np.array_equal(m[j], obj)
        if c[STRIPED]:
            assert np.array_equal(m[STRIPED], ~obj)
        # the colour mask is exactly the pixels whose colour dominates the grey background
        k = int(c[:3].argmax())
        dominant = (x[k] - np.delete(x, k, axis=0).max(0)) > 0.3
        agree += int((dominant == obj).sum())
        total += obj.size
        # pair: two separate objects; single: one
        n_parts = ndimage.label(obj, structure=np.ones((3, 3)))[1]
        assert n_parts == (2 if c[PAIR] else 1), i
        # outlined objects have a hole, filled ones none
        filled = ndimage.binary_fill_holes(obj)
        if c[OUTLINED]:
            assert filled.sum() > 1.3 * obj.sum(), i
        else:
            assert filled.sum() == obj.sum(), i
        # stripes: the background shows two grey levels
        bg = x.mean(0)[~obj]
        assert (bg.std() > 0.07) == bool(c[STRIPED]), (i, bg.std())
    assert agree / total > 0.9995


def test_large_objects_are_larger():
    ds = ShapesDataset("train", n=200, seed=5)
    c = ds.concept_table().numpy()
    areas = {True: [], False: []}
    for i in range(len(ds)):
        if c[i, OUTLINED] or c[i, PAIR]:
            continue
        _, m = ds.render(i)
        areas[bool(c[i, LARGE])].append(m[CIRCLE:TRIANGLE + 1].any(0).sum())
    assert min(areas[True]) > max(areas[False])
    assert np.mean(areas[True]) > 2.5 * np.mean(areas[False])


def test_cooccurrence_knob():
    n = 4000
    for p in (0.0, 0.5, 1.0):
        c = ShapesDataset("train", n=n, seed=0, cooccurrence=p).concept_table().numpy()
        both = (c[:, RED] * c[:, CIRCLE]).mean()
        assert abs(both - (1 / 9 + 4 * p / 9)) < 0.03, (p, both)
        assert abs(c[:, RED].mean() - (1 / 3 + 2 * p / 9)) < 0.03
        if p == 0.0:
            assert abs(phi(c[:, RED], c[:, CIRCLE])) < 0.05
        if p == 1.0:
            assert np.array_equal(c[:, RED], c[:, CIRCLE])
    # the other colour/shape pairs are not forced together
    c = ShapesDataset("train", n=n, seed=0, cooccurrence=1.0).concept_table().numpy()
    assert (c[:, GREEN] * c[:, SQUARE]).sum() > 0 and c[:, BLUE].sum() > 0


def test_label_noise_fraction_and_clean_concepts():
    clean = ShapesDataset("train", n=4000, seed=7)
    noisy = ShapesDataset("train", n=4000, seed=7, label_noise=0.3)
    y, y0 = noisy.targets(), noisy.clean_targets()
    assert torch.equal(y0, clean.targets())
    assert torch.equal(noisy.concept_table(), clean.concept_table())
    flipped = (y != y0).float().mean().item()
    assert abs(flipped - 0.3) < 0.03
    assert torch.equal(torch.from_numpy(noisy.factors["label_noisy"]), y != y0)
    # replaced labels are spread over the 8 other classes
    offsets = ((y - y0) % 9)[y != y0]
    counts = torch.bincount(offsets, minlength=9)
    assert counts[0] == 0 and counts[1:].min() > 0.6 * counts[1:].float().mean()


def test_confounded_correlation_flips_sign_in_test():
    corr = {}
    for split in ("train", "val", "test"):
        ds = ShapesDataset(split, n=3000, seed=0, confounded=True, spurious_strength=0.9)
        c, y = ds.concept_table().numpy(), ds.targets().numpy()
        corr[split] = phi(c[:, STRIPED], y % 2)
        assert (y == 3 * c[:, 3:6].argmax(1) + c[:, :3].argmax(1)).all()  # rule unchanged
    assert corr["train"] > 0.7 and corr["val"] > 0.7 and corr["test"] < -0.7, corr
    plain = ShapesDataset("train", n=3000, seed=0)
    assert abs(phi(plain.concept_table().numpy()[:, STRIPED], plain.targets().numpy() % 2)) < 0.06


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "dev"}, "split must be one of"),
        ({"cooccurrence": 1.5}, "cooccurrence must lie in"),
        ({"label_noise": -0.1}, "label_noise must lie in"),
        ({"image_size": 8}, "image_size must be an integer >= 24"),
        ({"n": 0}, "n must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)


def test_render_grid_writes_png(tmp_path):
    ds = ShapesDataset("train", n=4)
    path = render_grid(ds, tmp_path / "grid.png", ncols=2, mask_concept="striped_background")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown mask_concept 'stripes'"):
        render_grid(ds, tmp_path / "x.png", mask_concept="stripes")
