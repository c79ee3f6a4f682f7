"""Attribution through the bottleneck: captum methods on the adapters, from raw images through the
frozen encoder, units and classes addressed through the contract, and clear errors."""

import pytest
import torch
from torch import nn

from bottlenecks.analysis import (
    METHODS,
    UnitActivations,
    attribute,
    attribution_map,
    concept_activation_maps,
    unit_contributions,
)
from bottlenecks.encoders.base import FrozenEncoder, ImageTransform
from bottlenecks.layers import ConceptBottleneck, EnergyConceptBottleneck, VectorQuantizer
from bottlenecks.models.module import BottleneckModel

NAMES = ["p", "q", "r"]


def tiny_encoder(image_size: int = 16, spatial: bool = True) -> FrozenEncoder:
    """A small conv net with BatchNorm, frozen the same way as the real encoders."""
    torch.manual_seed(0)
    if spatial:
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        # non-trivial running statistics, so train-mode BatchNorm would give different numbers
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, 16))
    return FrozenEncoder(
        net, name="tiny", feature_dim=16, transform=ImageTransform(image_size), architecture="tiny", weights="random",
        channels_last=False,
    )


def concept_model(encoder=None, head_hidden=None) -> BottleneckModel:
    torch.manual_seed(0)
    return BottleneckModel(
        ConceptBottleneck(16, concept_names=NAMES), num_classes=4, encoder=encoder or tiny_encoder(),
        head_hidden=head_hidden, standardize_features=False,
    )


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_saliency_is_the_input_gradient_through_the_frozen_encoder():
    model = concept_model()
    enc = model.frozen_encoder()
    x = images()
    attr = attribute(model, x, unit="q", method="saliency", space="activation")
    # the same gradient by hand, through encoder.forward (not encode, which cuts the graph)
    xr = x.clone().requires_grad_(True)
    _, out = model(enc(enc.transform(xr)))
    out.probs[:, 1].sum().backward()
    assert attr.shape == x.shape
    assert attr.abs().sum() > 0
    torch.testing.assert_close(attr, xr.grad.abs())
    assert all(p.grad is None for p in enc.parameters())  # frozen weights got no gradient


def test_attribution_keeps_batchnorm_in_eval_and_restores_the_model_mode():
    model = concept_model()
    enc = model.frozen_encoder()
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = []
    hooks = [bn.register_forward_hook(lambda m, i, o: seen.append(m.training)) for bn in bns]
    stats = [bn.running_mean.clone() for bn in bns]
    model.train()
    attribute(model, images(), unit=0, method="integrated_gradients", n_steps=4)
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert all(torch.equal(s, bn.running_mean) for s, bn in zip(stats, bns))
    assert model.training and model.bottleneck.training


@pytest.mark.parametrize("method", METHODS)
def test_every_method_attributes_units_and_classes_to_pixels(method):
    model = concept_model()
    x = images(3)
    kwargs = {"n_steps": 4} if method == "integrated_gradients" else {}
    unit = attribute(model, x, unit="r", method=method, **kwargs)
    cls = attribute(model, x, target=2, method=method, **kwargs)
    predicted = attribute(model, x, method=method, **kwargs)
    shape = (3, 1, 16, 16) if method == "grad_cam" else (3, 3, 16, 16)
    for a in (unit, cls, predicted):
        assert a.shape == shape and torch.isfinite(a).all()
    assert unit.abs().sum() > 0 and cls.abs().sum() > 0
    assert attribution_map(unit).shape == (3, 16, 16)


def test_unit_space_logit_avoids_saturated_sigmoids():
    model = concept_model()
    with torch.no_grad():  # a very confident concept: its probability is 1.0 in float32
        model.bottleneck.predictor.bias[0] = 60.0
    x = images(2)
    assert attribute(model, x, unit="p", space="activation").abs().sum() == 0
    assert attribute(model, x, unit="p", space="logit").abs().sum() > 0
    assert torch.equal(attribute(model, x, unit="p"), attribute(model, x, unit="p", space="logit"))
    acts = UnitActivations(model, "activation")(x)
    assert acts.shape == (2, 3) and torch.allclose(acts[:, 0], torch.ones(2))


def test_concept_activation_maps_cover_every_unit():
    maps = concept_activation_maps(concept_model(), images(2), method="grad_cam")
    assert maps.shape == (2, 3, 16, 16) and (maps >= 0).all()


def test_discrete_units_refuse_gradient_methods_and_work_with_occlusion():
    torch.manual_seed(0)
    model = BottleneckModel(VectorQuantizer(16, codebook_size=8), num_classes=4, encoder=tiny_encoder(),
                            standardize_features=False)
    x = images(2)
    for method in ("saliency", "integrated_gradients", "input_x_gradient", "grad_cam"):
        with pytest.raises(ValueError, match="discrete code unit .*use method='occlusion'"):
            attribute(model, x, unit="code3", method=method)
    attr = attribute(model, x, unit="code3", method="occlusion", sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4))
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    # the class logit is differentiable (straight-through), so gradients work for the class
    assert attribute(model, x, target=0, method="saliency").abs().sum() > 0


def test_lite0_from_raw_images():
    """The real frozen encoder: gradients reach 64 px pixels, Grad-CAM reads its last conv layer."""
    model = BottleneckModel(ConceptBottleneck(1280, concept_names=NAMES), num_classes=4,
                            encoder={"name": "lite0", "image_size": 64})
    x = images(2, 64)
    sal = attribute(model, x, unit="p", method="saliency")
    cam = attribute(model, x, unit="p", method="grad_cam")
    assert sal.shape == (2, 3, 64, 64) and sal.abs().sum() > 0
    assert cam.shape == (2, 1, 64, 64) and cam.std() > 0  # 2x2 map upsampled, not constant
    assert all(not p.requires_grad for p in model.frozen_encoder().parameters())


def test_contributions_of_a_linear_head_add_up_to_the_logits():
    model = concept_model()
    x = images(5)
    c = unit_contributions(model, x)
    logits, out = model(x)
    assert c.method == "linear" and c.names == NAMES
    torch.testing.assert_close(c.values.sum(-1) + c.bias, logits.detach())
    w = model.head.weight.detach()
    torch.testing.assert_close(c.values[:, 1, 2], w[1, 2] * out.z[:, 2].detach())
    assert c.for_class().shape == (5, 3)
    per_class = c.per_class()
    assert per_class.shape == (4, 3)
    for k in range(4):
        rows = c.predicted == k
        assert torch.isnan(per_class[k]).all() if not rows.any() else torch.allclose(per_class[k], c.values[rows, k].mean(0))


def test_contributions_of_a_nonlinear_head_use_integrated_gradients():
    model = concept_model(head_hidden=[8])
    x = images(5)
    c = unit_contributions(model, x, n_steps=64)
    logits, _ = model(x)
    assert c.method == "integrated_gradients"
    # IG completeness: contributions add up to logit(z) - logit(baseline)
    torch.testing.assert_close(c.values.sum(-1) + c.bias, logits.detach(), atol=2e-3, rtol=1e-3)


def test_clear_errors():
    model = concept_model()
    x = images(2)
    with pytest.raises(ValueError, match="no concept named 'qq'; close matches: \\['q'\\]"):
        attribute(model, x, unit="qq")
    with pytest.raises(ValueError, match="concept index 7 is out of range for 3 concepts"):
        attribute(model, x, unit=7)
    with pytest.raises(ValueError, match=r"class 9 is out of range: the model has 4 classes \(0..3\)"):
        attribute(model, x, target=9)
    with pytest.raises(ValueError, match="no class named 'cat'; close matches: \\['cats'\\]"):
        attribute(model, x, target="cat", class_names=["cats", "dogs", "a", "b"])
    with pytest.raises(ValueError, match="unknown attribution method 'gradcam'"):
        attribute(model, x, unit=0, method="gradcam")
    with pytest.raises(ValueError, match="1-channel image"):
        attribute(model, torch.rand(2, 1, 16, 16), unit=0)
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        attribute(model, x * 255, unit=0)
    # a spatial method without a spatial layer
    features_only = BottleneckModel(ConceptBottleneck(16, concept_names=NAMES), num_classes=4)
    with pytest.raises(ValueError, match="has no image encoder"):
        attribute(features_only, x, unit=0, method="grad_cam")
    with pytest.raises(ValueError, match="grad_cam needs images"):
        attribute(features_only, torch.randn(2, 16), unit=0, method="grad_cam")
    assert attribute(features_only, torch.randn(2, 16), unit=0, method="saliency").shape == (2, 16)
    flat = concept_model(encoder=tiny_encoder(spatial=False))
    with pytest.raises(ValueError, match="needs a spatial \\(Conv2d\\) layer, but the encoder 'tiny' has none"):
        attribute(flat, x, unit=0, method="grad_cam")
    with pytest.raises(ValueError, match="has no layer 'blocks.9'"):
        attribute(model, x, unit=0, method="grad_cam", layer="blocks.9")
    # images too small for the encoder: its last conv layer would be 1x1
    small = concept_model(encoder=tiny_encoder(image_size=4))
    with pytest.raises(ValueError, match="1x1 output for images of size \\(16, 16\\).*larger"):
        attribute(small, x, unit=0, method="grad_cam")
    ecbm = BottleneckModel(EnergyConceptBottleneck(16, concept_names=NAMES, num_classes=4), num_classes=4)
    with pytest.raises(ValueError, match="produces the task output itself"):
        unit_contributions(ecbm, torch.randn(3, 16))
