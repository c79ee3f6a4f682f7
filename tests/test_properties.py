"""Issue 15: property tests for every bottleneck layer, and fuzzing of what users feed in
(batches, CSVs, feature files, checkpoints): a clean error every time, never a crash."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottlenecks.layers.cem import ConceptEmbeddingBottleneck
from bottlenecks.layers.codebook_features import CodebookFeatures
from bottlenecks.layers.concept import ConceptBottleneck, IdentityBottleneck
from bottlenecks.layers.ecbm import EnergyConceptBottleneck
from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck
from bottlenecks.layers.quantize import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from bottlenecks.layers.stochastic import (
    ContrastiveVIBBottleneck,
    CSIBBottleneck,
    GaussianBottleneck,
    NoisyBottleneck,
)

D = 8
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _dkvb():
    kv = DiscreteKeyValueBottleneck(D, num_heads=2, keys_per_head=8, value_dim=3)
    kv.init_from_data(torch.randn(64, D, generator=torch.Generator().manual_seed(1)))
    return kv


LAYERS = {
    "concept": lambda: ConceptBottleneck(D, n_concepts=3),
    "identity": lambda: IdentityBottleneck(D),
    "cem": lambda: ConceptEmbeddingBottleneck(D, n_concepts=3, embedding_dim=4),
    "ecbm": lambda: EnergyConceptBottleneck(D, num_classes=3, n_concepts=3, embedding_dim=4, hidden=8),
    "dkvb": _dkvb,
    "vq": lambda: VectorQuantizer(D, codebook_size=16),
    "vq_ema": lambda: VectorQuantizer(D, codebook_size=16, ema=True, heads=2),
    "rvq": lambda: ResidualVectorQuantizer(D, codebook_size=8, kmeans_init=False),
    "fsq": lambda: FiniteScalarQuantizer(D, levels=[5, 4, 3]),
    "lfq": lambda: LookupFreeQuantizer(D, code_dim=4),
    "vq_simvq_rotation": lambda: VectorQuantizer(D, codebook_size=16, simvq=True, gradient="rotation"),
    "codebook_features": lambda: CodebookFeatures(D, codebook_size=16, k=2),
    "gaussian": lambda: GaussianBottleneck(D, out_features=4, hidden=[8]),
    "csib": lambda: CSIBBottleneck(D, latent_dim=4, hidden=[8]),
    "contrastive_vib": lambda: ContrastiveVIBBottleneck(D, out_features=4, hidden=[8]),
    "noisy": lambda: NoisyBottleneck(D, out_features=4, hidden=[8]),
}


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return LAYERS[name]()


def _finite(out) -> bool:
    tensors = [out.z, *(v for v in out.losses.values())]
    if out.concepts is not None:
        tensors.append(out.concepts)
    return all(torch.isfinite(t).all() for t in tensors)


rows = st.integers(1, 6)
moderate = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@pytest.mark.parametrize("name", sorted(LAYERS))
@FAST
@given(data=st.data())
def test_shapes_and_finite_output_for_finite_input(name, data):
    n = data.draw(rows)
    h = torch.tensor(data.draw(st.lists(moderate, min_size=n * D, max_size=n * D)), dtype=torch.float32).view(n, D)
    layer = _build(name)
    for mode in (True, False):
        layer.train(mode)
        out = layer(h)
        assert out.z.shape == (n, layer.out_features)
        assert _finite(out), f"{name} ({'train' if mode else 'eval'}) gave NaN/inf for |h| <= 1e3"
        if out.concepts is not None:
            assert out.concepts.shape == (n, layer.n_concepts)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("value", [3e38, -3e38, 1e20, float("nan"), float("inf")])
def test_extreme_input_is_a_clean_error_or_finite(name, value):
    layer = _build(name).train()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    h = torch.randn(4, D)
    h[1, 2] = value
    try:
        out = layer(h)
    except ValueError as err:
        assert "NaN or inf" in str(err) or "magnitude" in str(err)
        # a refused batch leaves the layer as it was (no inf written into a codebook)
        after = layer.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
        return
    assert _finite(out)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_same_seed_same_layer_and_output(name):
    h = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    outs = []
    for _ in range(2):
        layer = _build(name, seed=7).train()
        torch.manual_seed(11)  # the sampling noise of stochastic layers
        outs.append(layer(h).z.detach())
    assert torch.equal(outs[0], outs[1])


@FAST
@given(seed=st.integers(0, 2**16), n=rows)
def test_vector_quantizer_is_idempotent_on_its_own_codes(seed, n):
    torch.manual_seed(seed)
    vq = VectorQuantizer(D, codebook_size=16).eval()
    h = torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 3
    first = vq(h)
    again = vq(first.z.detach())
    assert torch.equal(again.codes, first.codes)
    # z = h + (q - h).detach() (straight-through) equals q up to float rounding
    assert torch.allclose(again.z, first.z, atol=1e-5)
    assert torch.allclose(first.z, vq.codes_tensor()[0][first.codes[:, 0]], atol=1e-5)


@FAST
@given(seed=st.integers(0, 2**16), n=rows)
def test_finite_scalar_quantizer_codes_round_trip(seed, n):
    fsq = FiniteScalarQuantizer(D, levels=[5, 4, 3]).eval()
    h = torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 3
    out = fsq(h)
    assert (out.codes >= 0).all() and (out.codes < fsq.codebook_size).all()
    assert torch.allclose(fsq.codes_to_scalars(out.codes[:, 0]), out.extras["scalars"], atol=1e-6)


# ------------------------------------------------------------------ fuzz: batches to the model
def _model():
    from bottlenecks.models.module import BottleneckModel

    return BottleneckModel(ConceptBottleneck(D, n_concepts=3), num_classes=3)


@FAST
@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=4),
    fill=st.sampled_from([0.0, 1.0, float("nan"), float("inf"), 3e38]),
)
def test_malformed_batches_give_a_clean_error(shape, fill):
    model = _model()
    x = torch.full(shape, fill)
    try:
        y_hat, out = model(x)
    except ValueError as err:
        assert str(err)
        return
    assert y_hat.shape[0] == x.shape[0] and torch.isfinite(y_hat).all()


# ------------------------------------------------------------------ fuzz: CSVs
CELLS = st.sampled_from(["", "0", "1", "2", "-1", "1.5", "cat", "img/0.png", "img/1.png", "val", "train",
                         "test", " ", "nan", '"', "a,b", "\ufeff", "9" * 30])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(["image", "label", "split", "c1", "c2", " image", "label "]),
                       min_size=0, max_size=5),
       body=st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=5),
       sep=st.sampled_from([",", ", "]), bom=st.booleans())
def test_fuzzed_csv_is_loaded_or_refused_cleanly(tmp_path_factory, header, body, sep, bom):
    from bottlenecks.data.folder import ConceptImageFolder

    root = tmp_path_factory.mktemp("csv")
    (root / "img").mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "img" / f"{i}.png")
    text = "\n".join(sep.join(r) for r in [header, *body])
    (root / "concepts.csv").write_bytes((("\ufeff" if bom else "") + text).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = ConceptImageFolder(root)
        except (ValueError, FileNotFoundError) as err:
            assert str(err).startswith("ConceptImageFolder(")
            return
    assert len(ds) >= 1 and ds.num_classes >= 1
    assert (ds.targets() >= 0).all() and (ds.targets() < ds.num_classes).all()


# ------------------------------------------------------------------ fuzz: feature files
ARRAYS = st.sampled_from([
    np.zeros((6, 3), np.float32), np.ones((6, 3)) * np.nan, np.array([["a"] * 3] * 6), np.zeros((6,)),
    np.zeros((5, 3)), np.arange(6), np.array([0, 1] * 3, np.float32), np.array([0.5] * 6), np.zeros((6, 2)),
    np.array(["x", "y"] * 3), np.zeros((0, 3)), np.array([0, 1, 2, 99, 0, 1]),
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.dictionaries(st.sampled_from(["x_train", "y_train", "x_test", "y_test", "concepts_train",
                                                "x_val", "z_train"]), ARRAYS, max_size=5),
       suffix=st.sampled_from([".npz", ".pt"]))
def test_fuzzed_feature_files_are_loaded_or_refused_cleanly(tmp_path_factory, content, suffix):
    from bottlenecks.data.datamodule import ArrayDataModule

    path = tmp_path_factory.mktemp("arrays") / f"f{suffix}"
    if suffix == ".npz":
        np.savez(path, **content)
    else:
        if any(a.dtype.kind == "U" for a in content.values()):
            return  # .pt holds tensors only
        torch.save({k: torch.as_tensor(v) for k, v in content.items()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dm = ArrayDataModule(path=str(path))
        except ValueError as err:
            assert str(err)
            return
    for split in ("train", "val", "test"):
        b = dm.split(split)
        assert torch.isfinite(b.x).all() and b.x.shape[1] == dm.feature_dim
        assert (b.y >= 0).all() and (b.y < dm.num_classes).all()


# ------------------------------------------------------------------ fuzz: checkpoints
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["bytes", "truncate", "flip", "pickle", "no_state_dict", "list"]),
       cut=st.floats(0.0, 1.0), data=st.binary(max_size=200))
def test_fuzzed_checkpoints_are_refused_cleanly(tmp_path_factory, kind, cut, data):
    from bottlenecks.checkpoints import CheckpointError, load_checkpoint_file

    good = io.BytesIO()
    torch.save({"state_dict": {"w": torch.randn(3, 3)}, "epoch": 1}, good)
    blob = good.getvalue()
    if kind == "bytes":
        blob = data
    elif kind == "truncate":
        blob = blob[: int(cut * (len(blob) - 1))]
    elif kind == "flip":
        i = int(cut * (len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:]
    elif kind == "pickle":
        blob = pickle.dumps(Path("/etc/passwd"))
    elif kind in ("no_state_dict", "list"):
        buf = io.BytesIO()
        torch.save({"epoch": 1} if kind == "no_state_dict" else [1, 2], buf)
        blob = buf.getvalue()
    path = tmp_path_factory.mktemp("ckpt") / "x.ckpt"
    path.write_bytes(blob)
    try:
        ckpt = load_checkpoint_file(path)
    except (CheckpointError, pickle.UnpicklingError) as err:
        assert str(path) in str(err) or "Unsupported global" in str(err)
        return
    assert isinstance(ckpt["state_dict"], dict)  # a flipped byte in padding can leave it valid
