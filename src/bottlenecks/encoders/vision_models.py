"""timm and torchvision classification networks as frozen feature extractors.

The classifier is removed and the encoder returns what the classifier read: the
pooled penultimate features. Weights come from the library (``pretrained=True`` for
timm, a weights enum name such as ``"DEFAULT"`` for torchvision — both download on
first use, so they need network once) or from a local state-dict file
(``weights_path``; any number of classes — the classifier's tensors are dropped).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bottlenecks.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenEncoder,
    ImageTransform,
    file_sha256,
    load_state_dict_file,
    state_sha256,
)
from bottlenecks.encoders.registry import register_encoder


def _drop_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove the tensors of the submodule ``prefix`` (the classifier) from a state dict."""
    if not prefix:
        return state
    return {k: v for k, v in state.items() if not (k == prefix or k.startswith(prefix + "."))}


def _load_backbone(model: nn.Module, state: dict[str, Tensor], classifier: str, source: str) -> None:
    """Strictly load everything but the classifier; name the keys that do not fit."""
    state = _drop_prefix(state, classifier)
    missing, unexpected = (
        sorted(set(model.state_dict()) - set(state)),
        sorted(set(state) - set(model.state_dict())),
    )
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the architecture: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    target = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in state.items() if v.shape != target[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{source}: {k!r} has shape {got} but the architecture expects {want}")
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- timm
@register_encoder("timm", suffix="arch")
class TimmEncoder(FrozenEncoder):
    """Any timm classification model, without its classifier: ``(batch, 3, H, W)`` → ``(batch, width)``.

    Args:
        arch: timm model name, e.g. ``"resnet18"``, ``"convnext_tiny"``.
        pretrained: load timm's pretrained weights (downloads once; needs network).
            Ignored when ``weights_path`` is given. ``False`` gives random weights.
        weights_path: local state-dict file (``.safetensors`` / ``.pt`` / ``.pth``).
        image_size: input side (default: the model's pretraining resolution).
        num_threads: CPU threads while encoding: a number, ``"auto"`` (measured, see
            :class:`~bottlenecks.encoders.base.ThreadTuner`) or ``None`` (torch's setting).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see :class:`FrozenEncoder`).
    """

    def __init__(
        self,
        arch: str,
        pretrained: bool = True,
        weights_path: str | None = None,
        image_size: int | None = None,
        num_threads: int | str | None = None,
        precision: str = "fp32",
    ) -> None:
        import timm
        from timm.data import resolve_data_config

        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch}*")[:10]
            raise ValueError(f"timm has no architecture {arch!r}; similar names: {close}")
        state = load_state_dict_file(weights_path) if weights_path is not None else None
        use_hub = pretrained and state is None
        try:
            model = timm.create_model(arch, pretrained=use_hub)
        except Exception as e:  # network / hub errors
            if not use_hub:
                raise
            raise RuntimeError(
                f"could not get timm's pretrained weights for {arch!r} ({type(e).__name__}: {e}); "
                "on a machine without network pass weights_path=<local file> or pretrained=False"
            ) from e
        classifier = _classifier_name(model)
        model.reset_classifier(0)  # forward now returns the pooled features
        if state is not None:
            _load_backbone(model, state, classifier, f"weights_path {weights_path}")
            weights = f"sha256:{file_sha256(weights_path)}"
        elif use_hub:
            cfg = model.pretrained_cfg
            weights = f"timm-pretrained:{cfg.get('hf_hub_id') or cfg.get('url') or arch}:{cfg.get('tag', '')}"
        else:
            weights = f"random-init:sha256:{state_sha256(model)}"
        data_cfg = resolve_data_config({}, model=model)
        native = int(data_cfg["input_size"][-1])
        size = native if image_size is None else int(image_size)
        if size != native and model.pretrained_cfg.get("fixed_input_size", False):
            raise ValueError(f"timm:{arch} accepts only {native}x{native} inputs; got image_size={image_size}")
        interpolation = data_cfg.get("interpolation", "bilinear")
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            interpolation = "bilinear"
        feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        super().__init__(
            model,
            name=f"timm:{arch}",
            feature_dim=feature_dim,
            transform=ImageTransform(size, data_cfg["mean"], data_cfg["std"], interpolation),
            architecture=f"timm/{arch} num_classes=0 (pooled features)",
            weights=weights,
            num_threads=num_threads,
            precision=precision,
        )


def _classifier_name(model: Any) -> str:
    """Dotted name of a timm model's classifier submodule (its ``pretrained_cfg['classifier']``)."""
    name = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if isinstance(name, (list, tuple)):
        name = name[0]
    return name or ""


# --------------------------------------------------------------------------- torchvision
def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier of a torchvision model: its last registered ``nn.Linear``."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier to remove; use a timm model or a custom encoder"
        )
    return found[-1]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@register_encoder("torchvision", suffix="arch")
class TorchvisionEncoder(FrozenEncoder):
    """A torchvision classification model whose final ``nn.Linear`` is replaced by identity.

    ``(batch, 3, H, W)`` → ``(batch, width)`` where ``width`` is that layer's input
    (512 for resnet18, 1280 for efficientnet_b0, 4096 for vgg16...).

    Args:
        arch: torchvision model name (``torchvision.models.list_models()``).
        weights: weights enum member (``"DEFAULT"``, ``"IMAGENET1K_V1"``...; downloads once)
            or ``None`` for random weights. Ignored when ``weights_path`` is given.
        weights_path: local state-dict file.
        image_size: input side (default: the weights' crop size, 224 otherwise).
        num_threads: CPU threads while encoding: a number, ``"auto"`` (measured, see
            :class:`~bottlenecks.encoders.base.ThreadTuner`) or ``None`` (torch's setting).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see :class:`FrozenEncoder`).
    """

    def __init__(
        self,
        arch: str,
        weights: str | None = "DEFAULT",
        weights_path: str | None = None,
        image_size: int | None = None,
        num_threads: int | str | None = None,
        precision: str = "fp32",
    ) -> None:
        import torchvision

        classification = torchvision.models.list_models(module=torchvision.models)
        if arch not in classification:
            close = [m for m in classification if arch.split("_")[0] in m][:10] or classification[:10]
            raise ValueError(f"torchvision has no classification model {arch!r}; e.g. {close}")
        state = load_state_dict_file(weights_path) if weights_path is not None else None
        enum = None
        if state is None and weights is not None:
            members = torchvision.models.get_model_weights(arch)
            if weights not in members.__members__:
                raise ValueError(
                    f"torchvision:{arch} has no weights {weights!r}; choose one of {list(members.__members__)}"
                )
            enum = members[weights]
        try:
            model = torchvision.models.get_model(arch, weights=enum)
        except Exception as e:
            if enum is None:
                raise
            raise RuntimeError(
                f"could not get torchvision weights {enum} for {arch!r} ({type(e).__name__}: {e}); "
                "on a machine without network pass weights_path=<local file> or weights=None"
            ) from e
        classifier, linear = _last_linear(model)
        _set_submodule(model, classifier, nn.Identity())
        if state is not None:
            _load_backbone(model, state, classifier, f"weights_path {weights_path}")
            weights_id = f"sha256:{file_sha256(weights_path)}"
        elif enum is not None:
            weights_id = f"torchvision:{enum}:{enum.url}"
        else:
            weights_id = f"random-init:sha256:{state_sha256(model)}"
        mean, std, size, interpolation = IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear"
        if enum is not None:
            t = enum.transforms()
            mean, std = tuple(t.mean), tuple(t.std)
            size = int(t.crop_size[0])
            interpolation = str(t.interpolation.value)
            if interpolation not in ("bilinear", "bicubic", "nearest"):
                interpolation = "bilinear"
        super().__init__(
            model,
            name=f"torchvision:{arch}",
            feature_dim=int(linear.in_features),
            transform=ImageTransform(size if image_size is None else image_size, mean, std, interpolation),
            architecture=f"torchvision/{arch} with {classifier} removed",
            weights=weights_id,
            num_threads=num_threads,
            precision=precision,
        )
