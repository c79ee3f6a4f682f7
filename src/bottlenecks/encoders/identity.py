"""The identity encoder: for features that are already computed (tables, user arrays)."""

from __future__ import annotations

from torch import Tensor, nn

from bottlenecks.encoders.base import FeatureTransform, FrozenEncoder
from bottlenecks.encoders.registry import register_encoder


@register_encoder("identity", suffix="out_dim", suffix_type=int)
class IdentityEncoder(FrozenEncoder):
    """Features ``(batch, out_dim)`` in, the same features (float32) out.

    ``"identity:512"`` builds one for 512-d features. The transform checks the width.

    Args:
        out_dim: width of the features.
        num_threads: unused work-wise; kept for a uniform signature.
    """

    def __init__(self, out_dim: int, num_threads: int | None = None) -> None:
        super().__init__(
            nn.Identity(),
            name="identity",
            out_dim=out_dim,
            transform=FeatureTransform(out_dim),
            architecture="identity",
            weights="none",
            num_threads=num_threads,
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, out_dim)`` → the same tensor as float32."""
        return x.float()
