"""open_clip models: the image tower as a frozen encoder, the text tower for concept texts.

Label-free and language-guided concept bottlenecks (LF-CBM, LaBo) score images
against concept sentences in CLIP's joint space: :class:`OpenCLIPEncoder` gives the
image embeddings, :meth:`OpenCLIPEncoder.encode_text` (or the standalone
:class:`OpenCLIPTextEncoder`) the unit-norm text embeddings of the same model.

Weights: ``pretrained`` is an open_clip tag (``"laion2b_s34b_b79k"``, downloaded on
first use, so it needs network once) or a local checkpoint file. Without weights the
model is randomly initialised (a warning says so; only useful for tests).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bottlenecks.encoders.base import (
    FrozenEncoder,
    FrozenTextEncoder,
    ImageTransform,
    check_texts,
    file_sha256,
    state_sha256,
    torch_threads,
)
from bottlenecks.encoders.registry import register_encoder, register_text_encoder


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith(".") or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def _register_config(model_name: str, model_config: str | None) -> None:
    import open_clip

    if model_config is None:
        return
    p = Path(model_config).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"open_clip model_config: no JSON file at {p}")
    if p.stem != model_name:
        raise ValueError(
            f"open_clip registers a config file under its file name: {p.name} defines {p.stem!r}, "
            f"but model_name is {model_name!r}; rename the file or set model_name={p.stem!r}"
        )
    cfg = json.loads(p.read_text())
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"open_clip model_config {p} lacks {missing}")
    if open_clip.get_model_config(model_name) != cfg:  # register once (add_model_config rescans every path)
        open_clip.add_model_config(p)


def _create_clip(
    model_name: str, pretrained: str | None, model_config: str | None, image_size: int | None, cache_dir: str | None
) -> tuple[Any, str]:
    """Build the open_clip model; return it and the weights' identity string."""
    import open_clip

    _register_config(model_name, model_config)
    cfg = open_clip.get_model_config(model_name) if ":" not in model_name else None
    if cfg is None and ":" not in model_name:
        raise ValueError(
            f"open_clip has no architecture {model_name!r}; known include {open_clip.list_models()[:15]}... "
            "(or pass model_config=<path to a JSON config>)"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name) if cfg is not None else []
    kwargs: dict[str, Any] = {"precision": "fp32", "device": "cpu", "cache_dir": cache_dir}
    if image_size is not None:
        kwargs["force_image_size"] = int(image_size)
    if pretrained is None:
        if ":" not in model_name:
            warnings.warn(
                f"open_clip:{model_name} has no pretrained weights (pretrained=None): its features are random. "
                f"Pass a tag ({tags[:5]}) or a local checkpoint file.",
                UserWarning,
                stacklevel=3,
            )
        model = open_clip.create_model(model_name, pretrained=None, **kwargs)
        weights = "random-init:sha256:" + state_sha256(model) if ":" not in model_name else f"hub:{model_name}"
        return model, weights
    if os.path.isfile(pretrained):
        model = open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
        return model, f"sha256:{file_sha256(pretrained)}"
    if _looks_like_path(pretrained) and pretrained not in tags:
        raise FileNotFoundError(f"open_clip pretrained: no checkpoint file at {Path(pretrained).expanduser()}")
    if pretrained not in tags:
        raise ValueError(f"open_clip:{model_name} has no pretrained tag {pretrained!r}; tags: {tags}")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"could not get open_clip weights {model_name}/{pretrained} ({type(e).__name__}: {e}); "
            "without network, pass pretrained=<local checkpoint file>"
        ) from e
    pcfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    source = pcfg.get("hf_hub") or pcfg.get("url") or ""
    return model, f"open_clip-tag:{model_name}/{pretrained}:{source}"


def _architecture(model_name: str) -> str:
    import open_clip

    cfg = open_clip.get_model_config(model_name) if ":" not in model_name else None
    if cfg is None:
        return f"open_clip/{model_name}"
    from bottlenecks.data.base import stable_hash

    return f"open_clip/{model_name} cfg={stable_hash(cfg)}"


@register_encoder("open_clip", suffix="model_name")
class OpenCLIPEncoder(FrozenEncoder):
    """The image tower of an open_clip model: ``(batch, 3, H, W)`` in ``[0, 1]`` → ``(batch, embed_dim)``.

    Args:
        model_name: open_clip architecture (``"ViT-B-32"``, ``"RN50"``...; ``open_clip.list_models()``).
        pretrained: a pretrained tag (needs network on first use) or a local checkpoint file;
            ``None`` gives random weights (with a warning).
        model_config: path to an open_clip JSON config to register first; its file
            name (without ``.json``) must equal ``model_name``.
        image_size: input side; default the architecture's. Other sizes resample a
            ViT's position embeddings.
        normalize: return unit-norm image embeddings (as CLIP's similarity uses).
        cache_dir: where open_clip keeps downloaded weights.
        num_threads: CPU threads while encoding: a number, ``"auto"`` (measured, see
            :class:`~bottlenecks.encoders.base.ThreadTuner`) or ``None`` (torch's setting).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see :class:`FrozenEncoder`).

    The transform resizes the whole image (no centre crop) and normalises with the
    model's mean/std.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        model_config: str | None = None,
        image_size: int | None = None,
        normalize: bool = False,
        cache_dir: str | None = None,
        num_threads: int | str | None = None,
        precision: str = "fp32",
    ) -> None:
        import open_clip

        model, weights = _create_clip(model_name, pretrained, model_config, image_size, cache_dir)
        pre = open_clip.get_model_preprocess_cfg(model)
        size = pre.get("size", 224)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        interpolation = pre.get("interpolation", "bicubic")
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            interpolation = "bicubic"
        feature_dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
        super().__init__(
            model,
            name=f"open_clip:{model_name}",
            feature_dim=feature_dim,
            transform=ImageTransform(size, pre.get("mean"), pre.get("std"), interpolation),
            architecture=_architecture(model_name),
            weights=weights,
            num_threads=num_threads,
            precision=precision,
            extra_identity={"normalize": str(bool(normalize))},
        )
        self.model_name = model_name
        self.normalize = bool(normalize)
        self._tokenizer = open_clip.get_tokenizer(model_name)

    def forward(self, x: Tensor) -> Tensor:
        """Model input ``(batch, 3, S, S)`` → image embeddings ``(batch, embed_dim)``."""
        return self.model.encode_image(x, normalize=self.normalize)

    def text_encoder(self, batch_size: int = 256) -> OpenCLIPTextEncoder:
        """The text tower of the same model, as a :class:`OpenCLIPTextEncoder` (shares weights)."""
        return OpenCLIPTextEncoder.from_image_encoder(self, batch_size=batch_size)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """``n`` strings → unit-norm text embeddings ``(n, embed_dim)`` float32 (CPU)."""
        texts = check_texts(texts, type(self).__name__)
        return _encode_text(self.model, self._tokenizer, texts, batch_size, self.num_threads)


def _encode_text(model: Any, tokenizer: Any, texts: list[str], batch_size: int, num_threads: int | None) -> Tensor:
    device = next(model.parameters()).device
    dim = int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None else None
    chunks: list[Tensor] = []
    with torch_threads(num_threads), torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[i : i + batch_size]).to(device)
            chunks.append(model.encode_text(tokens, normalize=True).float().cpu())
    if not chunks:
        return torch.empty(0, dim or 0)
    return torch.cat(chunks).clone()


@register_text_encoder("open_clip", suffix="model_name")
class OpenCLIPTextEncoder(FrozenTextEncoder):
    """The text tower of an open_clip model: ``n`` strings → unit-norm ``(n, embed_dim)`` float32.

    Args: as :class:`OpenCLIPEncoder` (``model_name``, ``pretrained``, ``model_config``,
    ``cache_dir``, ``num_threads``), plus ``batch_size`` (texts per forward pass).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        model_config: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 256,
        num_threads: int | None = None,
    ) -> None:
        image = OpenCLIPEncoder(
            model_name, pretrained=pretrained, model_config=model_config, cache_dir=cache_dir, num_threads=num_threads
        )
        super().__init__()
        self._setup(image, batch_size)

    @classmethod
    def from_image_encoder(cls, image: OpenCLIPEncoder, batch_size: int = 256) -> OpenCLIPTextEncoder:
        """The text tower sharing ``image``'s model (no copy of the weights)."""
        obj = cls.__new__(cls)
        FrozenTextEncoder.__init__(obj)
        obj._setup(image, batch_size)
        return obj

    def _setup(self, image: OpenCLIPEncoder, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = image.model
        self._tokenizer = image._tokenizer
        self.name = image.name
        self.feature_dim = int(self.model.text_projection.shape[-1])
        self.batch_size = batch_size
        self.num_threads = image.num_threads
        self._identity = {
            "encoder": f"{image.name} (text tower)",
            "architecture": image.architecture,
            "weights": image.weights_id,
            "tokenizer": f"{type(self._tokenizer).__name__} context={getattr(self._tokenizer, 'context_length', '?')}",
            "normalize": "True",
        }
        self.requires_grad_(False)
        self.eval()

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``n`` strings → unit-norm text embeddings ``(n, feature_dim)`` float32 (CPU)."""
        return _encode_text(
            self.model, self._tokenizer, check_texts(texts, type(self).__name__), self.batch_size, self.num_threads
        )

    def cache_identity(self) -> dict[str, str]:
        return dict(self._identity)
