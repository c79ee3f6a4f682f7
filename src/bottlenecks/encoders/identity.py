"""The identity encoder: for features that are already computed (tables, user arrays)."""

from __future__ import annotations

from torch import Tensor, nn

from bottlenecks.encoders.base import FeatureTransform, FrozenEncoder
from bottlenecks.encoders.registry import register_encoder


@register_encoder("identity", suffix="feature_dim", suffix_type=int)
class IdentityEncoder(FrozenEncoder):
    """Features ``(batch, feature_dim)`` in, the same features (float32) out.

    ``"identity:512"`` builds one for 512-d features. The transform checks the width.

    Args:
        feature_dim: width of the features.
        num_threads: unused work-wise; kept for a uniform signature.
    """

    def __init__(self, feature_dim: int, num_threads: int | None = None) -> None:
        super().__init__(
            nn.Identity(),
            name="identity",
            feature_dim=feature_dim,
            transform=FeatureTransform(feature_dim),
            architecture="identity",
            weights="none",
            num_threads=num_threads,
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, feature_dim)`` → the same tensor as float32."""
        return x.float()
