"""Attribution through the bottleneck with captum: pixels → units, pixels → class, units → class.

A :class:`~bottlenecks.models.module.BottleneckModel` returns ``(y_hat, BottleneckOutput)``;
captum wants a plain ``inputs -> tensor`` function. The adapters here are small modules:

* :class:`UnitActivations` — images ``(batch, 3, H, W)`` (or features ``(batch, d)``) →
  the bottleneck's unit activations ``(batch, n_units)`` (:meth:`Bottleneck.unit_activations`);
* :class:`ClassLogits` — images (or features) → the model's task output ``(batch, n_classes)``.

Both run the frozen encoder *with autograd on* (``encoder(encoder.transform(images))``; the
model's own :meth:`encode` runs under ``inference_mode`` and cuts the graph). The encoder's
weights never require gradients and it stays in eval mode (BatchNorm uses its running
statistics), but gradients with respect to the input pixels flow. Captum's own classes do
the attributing (:func:`attribute` picks one by name); nothing of captum is re-implemented.

Units are addressed by name or index through :meth:`Bottleneck.units`, classes by index
(or by name when ``class_names`` are given). Discrete units (one-hot codes, keys) have no
gradient: gradient methods refuse them with a message that points to occlusion.

The class decision is decomposed onto the head's input by :func:`unit_contributions`:
``weight × activation`` for a linear head (exact: the contributions plus the bias give the
logit), Integrated Gradients over ``z`` for a nonlinear head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from torch import Tensor, nn

from bottlenecks.analysis.model_access import bottleneck_of, model_device, model_task

Method = Literal["saliency", "integrated_gradients", "input_x_gradient", "occlusion", "grad_cam"]
#: the attribution methods :func:`attribute` knows, by name
METHODS: tuple[str, ...] = ("saliency", "integrated_gradients", "input_x_gradient", "occlusion", "grad_cam")
GRADIENT_METHODS = ("saliency", "integrated_gradients", "input_x_gradient", "grad_cam")

__all__ = [
    "METHODS",
    "ClassLogits",
    "Contributions",
    "UnitActivations",
    "attribute",
    "attribution_map",
    "concept_activation_maps",
    "frozen_encoder_of",
    "spatial_layer",
    "unit_contributions",
]


# ----------------------------------------------------------------------------- access
def frozen_encoder_of(model: nn.Module) -> Any:
    """The model's frozen image encoder (a :class:`~bottlenecks.encoders.base.FrozenEncoder`),
    or None when the model only sees features."""
    get = getattr(model, "frozen_encoder", None)
    return get() if callable(get) else None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics, no dropout) *with* autograd; restores the mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class _Forward(nn.Module):
    """Images or features → ``(y_hat, BottleneckOutput)`` with autograd through the frozen encoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.encoder = frozen_encoder_of(model)

    def features(self, x: Tensor) -> Tensor:
        """Encoder features ``(batch, d)`` of images ``(batch, 3, H, W)``; features pass through."""
        if x.dim() == 2:
            return x
        if x.dim() != 4:
            raise ValueError(
                f"expected images (batch, 3, H, W) or features (batch, d), got shape {tuple(x.shape)}"
            )
        if self.encoder is None:
            raise ValueError(
                f"{type(self.model).__name__} was given images of shape {tuple(x.shape)} but has no image "
                "encoder (its encoder spec is None); attribute on features (batch, d) or build the model "
                "with encoder=..."
            )
        enc = self.encoder
        if enc.device is not None and enc.device != x.device:
            enc.to(x.device)
        h = enc(enc.transform(x))  # autograd on: FrozenEncoder.forward, not .encode
        if h.dim() != 2 or h.shape[0] != x.shape[0]:
            raise ValueError(
                f"the encoder {enc.name!r} turned images of shape {tuple(x.shape)} into a tensor of shape "
                f"{tuple(h.shape)}, not (batch, {enc.feature_dim}); check the image size it expects "
                f"({enc.transform!r})"
            )
        return h.float()

    def forward(self, x: Tensor) -> tuple[Tensor, Any]:
        return self.model(self.features(x))


class UnitActivations(nn.Module):
    """Adapter for captum: images ``(batch, 3, H, W)`` in ``[0, 1]`` (or features
    ``(batch, d)``) → unit activations ``(batch, n_units)``; pick a unit with captum's
    ``target=`` (its column, :meth:`Units.index`).

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel`.
        space: ``"activation"`` — :meth:`Bottleneck.unit_activations` (concept probabilities,
            one-hot codes, ...); ``"logit"`` — the concept logits (``BottleneckOutput.concepts``),
            whose gradients do not vanish when a sigmoid saturates (a confident concept has
            probability 1.0 in float32 beyond a logit of about 17 and then no gradient at all);
            ``"auto"`` — logits when the output has one per unit, activations otherwise.
    """

    def __init__(self, model: nn.Module, space: Literal["auto", "activation", "logit"] = "auto") -> None:
        super().__init__()
        if space not in ("auto", "activation", "logit"):
            raise ValueError(f"space must be 'auto', 'activation' or 'logit', got {space!r}")
        self.fwd = _Forward(model)
        self.bottleneck = bottleneck_of(model)
        self.space = space

    def forward(self, x: Tensor) -> Tensor:
        _, out = self.fwd(x)
        acts = self.bottleneck.unit_activations(out)
        if self.space == "activation":
            return acts
        logits = out.concepts
        if logits is not None and logits.dim() == 2 and logits.shape == acts.shape:
            return logits
        if self.space == "logit":
            raise ValueError(
                f"space='logit' needs concept logits, one per unit, but {type(self.bottleneck).__name__} "
                f"returned {None if logits is None else tuple(logits.shape)} for {acts.shape[1]} "
                f"{self.bottleneck.units().kind} units; use space='activation'"
            )
        return acts


class ClassLogits(nn.Module):
    """Adapter for captum: images (or features) → the task output ``(batch, n_classes)``
    (``(batch, 1)`` for regression)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.fwd = _Forward(model)
        self.regression = model_task(model) == "regression"

    def forward(self, x: Tensor) -> Tensor:
        y_hat, _ = self.fwd(x)
        return y_hat.unsqueeze(-1) if self.regression else y_hat


# ----------------------------------------------------------------------------- targets
def _class_index(model: nn.Module, target: int | str, n_classes: int, class_names: Sequence[str] | None) -> int:
    if isinstance(target, str):
        if class_names is None:
            raise ValueError(f"class {target!r} given by name but no class_names were passed")
        names = list(class_names)
        if target not in names:
            import difflib

            close = difflib.get_close_matches(target, names, n=5)
            raise ValueError(
                f"no class named {target!r}" + (f"; close matches: {close}" if close else "") + f" (classes: {names})"
            )
        return names.index(target)
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"a class is an index or a name, got {type(target).__name__} {target!r}")
    if not 0 <= target < n_classes:
        raise ValueError(f"class {target} is out of range: the model has {n_classes} classes (0..{n_classes - 1})")
    return target


def spatial_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The encoder layer a Grad-CAM style method reads: ``layer`` by name inside the encoder's
    network (e.g. ``"conv_head"``, ``"blocks.5"``), or by default its last ``Conv2d``.

    Raises ValueError when the model has no image encoder or the encoder no spatial layer.
    """
    if isinstance(layer, nn.Module):
        return layer
    enc = frozen_encoder_of(model)
    if enc is None:
        raise ValueError(
            "grad_cam needs a spatial layer, but this model has no image encoder (it sees features only); "
            "use saliency, integrated_gradients, input_x_gradient or occlusion on features instead"
        )
    modules = dict(enc.model.named_modules())
    if layer is not None:
        if layer not in modules:
            import difflib

            close = difflib.get_close_matches(layer, list(modules), n=5)
            raise ValueError(f"the encoder {enc.name!r} has no layer {layer!r}" + (f"; close matches: {close}" if close else ""))
        return modules[layer]
    convs = [m for m in modules.values() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"grad_cam needs a spatial (Conv2d) layer, but the encoder {enc.name!r} has none "
            f"({type(enc.model).__name__}); pass layer= a module whose output is (batch, channels, h, w), "
            "or use a pixel method (saliency, integrated_gradients, input_x_gradient, occlusion)"
        )
    return convs[-1]


def _check_differentiable(fn: nn.Module, x: Tensor, target: int | None, what: str, method: str, kind: str) -> None:
    """Refuse gradient methods on outputs that have no gradient (one-hot codes, keys)."""
    probe = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(probe)
        y = y[:, target] if target is not None else y
    if not y.requires_grad and kind == "class":
        raise ValueError(f"{what} has no gradient with respect to the input: {method} cannot run; use method='occlusion'")
    if not y.requires_grad:
        raise ValueError(
            f"{what} is a discrete {kind} unit (a one-hot selection, not differentiable): {method} gets no "
            "gradient through it; use method='occlusion' (perturbation-based) for discrete units"
        )
    (grad,) = torch.autograd.grad(y.sum(), probe, allow_unused=True)
    if grad is None:
        raise ValueError(
            f"{what} is not connected to the input by autograd (the graph is cut between input and output, "
            f"e.g. by inference_mode or a detach): {method} needs that gradient; use method='occlusion'"
        )


def attribute(
    model: nn.Module,
    inputs: Tensor,
    *,
    unit: str | int | None = None,
    target: int | str | None = None,
    method: Method = "saliency",
    class_names: Sequence[str] | None = None,
    layer: str | nn.Module | None = None,
    space: Literal["auto", "activation", "logit"] = "auto",
    **kwargs: Any,
) -> Tensor:
    """Attribute one unit's activation (``unit=``) or one class's logit (``target=``) to the input.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel`.
        inputs: images ``(batch, 3, H, W)`` float in ``[0, 1]`` (through the frozen encoder) or
            features ``(batch, d)``.
        unit: a unit of the bottleneck by name or index (:meth:`Bottleneck.units`).
        target: a class index (or name, with ``class_names``), or None for each example's
            predicted class; ignored when ``unit`` is given.
        method: ``"saliency"`` (captum Saliency, absolute gradient), ``"integrated_gradients"``,
            ``"input_x_gradient"`` (captum InputXGradient), ``"occlusion"`` or ``"grad_cam"``
            (captum LayerGradCam on the encoder's last spatial layer, or ``layer``, upsampled with
            ``LayerAttribution.interpolate`` to the input size).
        layer: the encoder layer for ``grad_cam`` (name or module); default its last Conv2d.
        space: for units, what is attributed: ``"auto"`` (concept logits where the bottleneck
            returns them, else the unit activations), ``"activation"`` or ``"logit"``
            (see :class:`UnitActivations`).
        **kwargs: passed to captum's ``attribute`` (``n_steps``, ``baselines``,
            ``sliding_window_shapes``, ``strides``, ...). Defaults here: ``n_steps=16`` for
            integrated gradients; for occlusion on images a window of 1/8 of the side with
            stride 1/16, baseline 0.5 (mid grey); ``relu_attributions=True`` for grad_cam.

    Returns:
        ``(batch, 3, H, W)`` for pixel methods on images (``(batch, d)`` on features);
        ``(batch, 1, H, W)`` for ``grad_cam``. Reduce to ``(batch, H, W)`` maps with
        :func:`attribution_map`.
    """
    import captum.attr as ca

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(METHODS)}")
    if not isinstance(inputs, Tensor) or inputs.dim() not in (2, 4):
        got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"expected images (batch, 3, H, W) or features (batch, d), got {got}")
    if inputs.dim() == 4:
        from bottlenecks.encoders.base import check_images

        if frozen_encoder_of(model) is None:
            raise ValueError(
                f"{type(model).__name__} was given images of shape {tuple(inputs.shape)} but has no image "
                "encoder (its encoder spec is None); attribute on features (batch, d) or build the model "
                "with encoder=..."
            )
        check_images(inputs)
    device = model_device(model)
    # requires_grad on a copy: captum would otherwise warn that it turns it on itself
    x = inputs.detach().to(device).float().clone().requires_grad_(method in GRADIENT_METHODS)

    if unit is not None:
        fn: nn.Module = UnitActivations(model, space)
        units = fn.bottleneck.units()
        tgt: Any = units.index(unit)
        what = f"unit {unit!r} ({units.kind} {units.names[tgt]!r})"
        kind = units.kind
    else:
        fn = ClassLogits(model)
        kind = "class"
        with eval_mode(model), torch.no_grad():
            logits = fn(x)
        if model_task(model) == "regression":
            tgt, what = 0, "the regression output"
        elif target is None:
            tgt, what = logits.argmax(1), "the predicted class"
        else:
            tgt = _class_index(model, target, logits.shape[1], class_names)
            what = f"class {target!r}"

    with eval_mode(model):
        if method in GRADIENT_METHODS:
            _check_differentiable(fn, x, tgt if isinstance(tgt, int) else None, what, method, kind)
        if method == "saliency":
            attr = ca.Saliency(fn).attribute(x, target=tgt, **kwargs)
        elif method == "integrated_gradients":
            kwargs.setdefault("n_steps", 16)
            kwargs.setdefault("internal_batch_size", max(len(x), 1) * 4)
            attr = ca.IntegratedGradients(fn).attribute(x, target=tgt, **kwargs)
        elif method == "input_x_gradient":
            attr = ca.InputXGradient(fn).attribute(x, target=tgt, **kwargs)
        elif method == "occlusion":
            if x.dim() == 4:
                side = max(1, x.shape[-1] // 8)
                kwargs.setdefault("sliding_window_shapes", (3, side, side))
                kwargs.setdefault("strides", (3, max(1, side // 2), max(1, side // 2)))
                kwargs.setdefault("baselines", 0.5)
            else:
                kwargs.setdefault("sliding_window_shapes", (1,))
            attr = ca.Occlusion(fn).attribute(x, target=tgt, **kwargs)
        else:  # grad_cam
            if x.dim() != 4:
                raise ValueError(
                    "grad_cam needs images (batch, 3, H, W): a spatial layer exists only inside the image "
                    f"encoder, but the inputs are features of shape {tuple(x.shape)}"
                )
            module = spatial_layer(model, layer)
            kwargs.setdefault("relu_attributions", True)
            cam = ca.LayerGradCam(fn, module).attribute(x, target=tgt, **kwargs)
            if cam.dim() != 4:
                raise ValueError(
                    f"grad_cam: the layer {type(module).__name__} gave an output of shape {tuple(cam.shape)}, "
                    "not a spatial map (batch, 1, h, w); pass layer= a convolutional layer of the encoder"
                )
            if cam.shape[-2] * cam.shape[-1] < 2:
                enc = frozen_encoder_of(model)
                raise ValueError(
                    f"grad_cam: the layer {type(module).__name__} has a 1x1 output for images of size "
                    f"{tuple(x.shape[-2:])} (the encoder {enc.name!r} resizes them with {enc.transform!r}), so "
                    "the map would be constant; use larger images / a larger encoder image_size, or pass "
                    "layer= an earlier layer"
                )
            attr = ca.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return attr.detach()


def attribution_map(attr: Tensor, reduce: Literal["abs", "positive", "sum"] = "abs") -> Tensor:
    """``(batch, C, H, W)`` attributions → ``(batch, H, W)`` maps, summing channels of
    ``|attr|`` (``"abs"``), of ``max(attr, 0)`` (``"positive"``) or of ``attr`` (``"sum"``)."""
    if attr.dim() == 3:
        attr = attr.unsqueeze(1)
    if attr.dim() != 4:
        raise ValueError(f"expected attributions of shape (batch, C, H, W), got {tuple(attr.shape)}")
    if reduce == "abs":
        return attr.abs().sum(1)
    if reduce == "positive":
        return attr.clamp_min(0).sum(1)
    if reduce == "sum":
        return attr.sum(1)
    raise ValueError(f"reduce must be 'abs', 'positive' or 'sum', got {reduce!r}")


def concept_activation_maps(
    model: nn.Module,
    images: Tensor,
    units: Sequence[str | int] | None = None,
    method: Method = "grad_cam",
    reduce: Literal["abs", "positive", "sum"] = "abs",
    **kwargs: Any,
) -> Tensor:
    """Concept (unit) activation maps: where in each image each unit's activation comes from.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` with an image encoder.
        images: ``(batch, 3, H, W)`` in ``[0, 1]``.
        units: units by name or index (default: all of them).
        method, **kwargs: see :func:`attribute`.

    Returns:
        ``(batch, n_selected_units, H, W)`` non-negative maps (for ``reduce="abs"``/``"positive"``).
    """
    all_units = bottleneck_of(model).units()
    chosen = list(range(len(all_units))) if units is None else all_units.indices(units)
    maps = [attribution_map(attribute(model, images, unit=u, method=method, **dict(kwargs)), reduce) for u in chosen]
    return torch.stack(maps, 1)


# ----------------------------------------------------------------------------- units → class
@dataclass
class Contributions:
    """How much each column of the head's input contributed to each class logit.

    Attributes:
        values: ``(n, n_classes, n_columns)`` contribution of column ``j`` of ``z`` to logit
            ``c`` of example ``i``. For a linear head ``values.sum(-1) + bias`` is the logit.
        names: ``n_columns`` names: the unit names where ``z``'s columns are the units'
            activations, ``side{j}`` for a side channel, ``z{j}`` otherwise.
        bias: ``(n_classes,)`` for a linear head (logit = contributions + bias); for a
            nonlinear head the logit at the baseline (IG's completeness: logit ≈ sum + baseline logit).
        predicted: ``(n,)`` predicted classes.
        method: ``"linear"`` or ``"integrated_gradients"``.
    """

    values: Tensor
    names: list[str]
    bias: Tensor
    predicted: Tensor
    method: str

    def for_class(self, target: Tensor | int | None = None) -> Tensor:
        """``(n, n_columns)`` contributions to one class per example (default: the predicted one)."""
        t = self.predicted if target is None else torch.as_tensor(target)
        t = t.expand(self.values.shape[0]) if t.dim() == 0 else t
        return self.values[torch.arange(self.values.shape[0]), t.long()]

    def per_class(self, y: Tensor | None = None) -> Tensor:
        """``(n_classes, n_columns)`` mean contribution to class ``c`` over the examples of class
        ``c`` (``y``, default the predicted classes); NaN rows for classes with no example."""
        y = self.predicted if y is None else y.long()
        n_classes = self.values.shape[1]
        out = torch.full((n_classes, self.values.shape[2]), float("nan"))
        for c in range(n_classes):
            rows = y == c
            if rows.any():
                out[c] = self.values[rows, c].mean(0)
        return out


def _column_names(model: nn.Module, z: Tensor, acts: Tensor) -> list[str]:
    b = bottleneck_of(model)
    units = b.units()
    names = [f"z{j}" for j in range(z.shape[1])]
    n = acts.shape[1]
    if n <= z.shape[1] and torch.equal(z[:, :n], acts):
        names[:n] = list(units.names)
    side = b.side_channel()
    if side is not None:
        for j in range(z.shape[1])[side]:
            names[j] = f"side{j}"
    return names


def unit_contributions(
    model: nn.Module, inputs: Tensor, n_steps: int = 32, baseline: Tensor | None = None, batch_size: int = 256
) -> Contributions:
    """Decompose each class logit onto the head's input ``z``: ``weight × activation`` for a
    linear head, captum Integrated Gradients over ``z`` (from ``baseline``, default zeros)
    for a nonlinear head.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` (a regression model's one
            output is decomposed as "class 0").
        inputs: features ``(n, d)`` or images ``(n, 3, H, W)``.
        n_steps: IG steps for a nonlinear head.
        baseline: ``(z_width,)`` IG baseline for a nonlinear head.

    Returns:
        :class:`Contributions`.
    """
    import captum.attr as ca

    b = bottleneck_of(model)
    if b.predicts_task:
        raise ValueError(
            f"{type(b).__name__} produces the task output itself (predicts_task): there is no head whose "
            "input could be decomposed onto units; attribute the class to the input with attribute(target=...)"
        )
    regression = model_task(model) != "classification"  # one output, explained as "class 0"
    head = model.head
    fwd = _Forward(model)
    device = model_device(model)
    zs, acts, logits = [], [], []
    with eval_mode(model), torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            x = inputs[s : s + batch_size].to(device).float()
            y_hat, out = fwd(x)
            if regression:
                y_hat = y_hat.reshape(len(x), 1)
            zs.append(out.z.float())
            acts.append(b.unit_activations(out).float())
            logits.append(y_hat.float())
    z, a, y_hat = torch.cat(zs), torch.cat(acts), torch.cat(logits)
    names = _column_names(model, z, a)
    linear = head if isinstance(head, nn.Linear) else None
    if isinstance(head, nn.Sequential) and len(head) == 1 and isinstance(head[0], nn.Linear):
        linear = head[0]
    if linear is not None:
        w = linear.weight.detach().float()
        values = z[:, None, :] * w[None]
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(w.shape[0], device=w.device)
        method = "linear"
    else:
        base = torch.zeros(z.shape[1], device=z.device) if baseline is None else baseline.to(z.device).float()
        ig = ca.IntegratedGradients(head)
        per_class = []
        with eval_mode(model):
            for c in range(y_hat.shape[1]):
                per_class.append(ig.attribute(z, baselines=base.expand_as(z), target=c, n_steps=n_steps).detach())
            bias = head(base[None]).detach().float()[0]
        values = torch.stack(per_class, 1)
        method = "integrated_gradients"
    return Contributions(values.cpu(), names, bias.cpu(), y_hat.argmax(1).cpu(), method)
