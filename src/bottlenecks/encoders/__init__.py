"""Frozen pretrained encoders and the on-disk feature cache.

>>> from bottlenecks.encoders import build_encoder, FeatureCache
>>> enc = build_encoder({"name": "lite0", "image_size": 128})   # doctest: +SKIP
>>> feats = enc.encode(images)            # (batch, 3, H, W) in [0, 1] -> (batch, 1280)  # doctest: +SKIP

Heavy libraries (timm, open_clip, torchvision, sentence-transformers) are imported
only when an encoder that needs them is built.
"""

from bottlenecks.encoders.base import (
    ENCODER_FORMAT,
    FeatureTransform,
    FrozenEncoder,
    FrozenTextEncoder,
    ImageTransform,
    check_images,
    torch_threads,
)
from bottlenecks.encoders.cache import (
    FeatureCache,
    FeatureCacheWarning,
    default_cache_root,
    identity_key,
)
from bottlenecks.encoders.clip import OpenCLIPEncoder, OpenCLIPTextEncoder
from bottlenecks.encoders.identity import IdentityEncoder
from bottlenecks.encoders.lite0 import Lite0Encoder, lite0_weights_path
from bottlenecks.encoders.registry import (
    build_encoder,
    build_text_encoder,
    shared_encoder,
    shared_text_encoder,
    list_encoders,
    list_text_encoders,
    register_encoder,
    register_text_encoder,
)
from bottlenecks.encoders.text import SentenceEncoder, minilm_path
from bottlenecks.encoders.vision_models import TimmEncoder, TorchvisionEncoder

__all__ = [
    "ENCODER_FORMAT",
    "FeatureCache",
    "FeatureCacheWarning",
    "FeatureTransform",
    "FrozenEncoder",
    "FrozenTextEncoder",
    "IdentityEncoder",
    "ImageTransform",
    "Lite0Encoder",
    "OpenCLIPEncoder",
    "OpenCLIPTextEncoder",
    "SentenceEncoder",
    "TimmEncoder",
    "TorchvisionEncoder",
    "build_encoder",
    "build_text_encoder",
    "shared_encoder",
    "shared_text_encoder",
    "check_images",
    "default_cache_root",
    "identity_key",
    "lite0_weights_path",
    "list_encoders",
    "list_text_encoders",
    "minilm_path",
    "register_encoder",
    "register_text_encoder",
    "torch_threads",
]
