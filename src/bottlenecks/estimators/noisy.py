"""The noisy-and-compressed estimator for high-dimensional layers (Butakov et al. 2023,
"Information Bottleneck Analysis of Deep Neural Networks via Lossy Compression").

For a deterministic network, ``I(X;T)`` of continuous X is infinite or degenerate; adding
Gaussian noise ``T + sigma * eps`` makes it finite and meaningful (the information a noisy
channel on the layer carries). High-dimensional X and T are then compressed — here by PCA
to ``n_components`` — and MI is estimated in the low-dimensional space by a k-NN estimator.

Regime: tracks ``I(X; T + noise)`` of the compressed variables, a lower bound on the
uncompressed value (data processing); the noise level sets the scale (smaller noise →
larger MI, harder to estimate). Low-dimensional inputs (``d <= n_components``) are not
compressed. Use it for information planes of wide layers, where binning saturates and plain
k-NN suffers from dimension.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from bottlenecks.estimators._base import ArrayLike, MIEstimator, Units, as_2d, check_lengths, handle_constant, is_discrete
from bottlenecks.estimators.knn import KSG


def pca_reduce(t: torch.Tensor, n_components: int) -> torch.Tensor:
    """Project ``(n, d)`` onto its top ``n_components`` principal directions (unchanged if d is small)."""
    if t.shape[1] <= n_components:
        return t
    c = t - t.mean(0)
    _, _, vh = torch.linalg.svd(c, full_matrices=False)
    return c @ vh[:n_components].T


class NoisyCompressedMI(MIEstimator):
    """Noise injection + PCA compression + a low-dimensional estimator.

    Args:
        noise_std: standard deviation of the Gaussian noise, relative to each (standardised)
            column's scale.
        noise_on: which argument gets noise: ``"y"`` (the layer, when called as
            ``estimate(x, layer)``), ``"x"``, ``"both"`` or ``"none"``.
        n_components: PCA dimension of each side.
        base: the low-dimensional estimator (default ``KSG(k=5)``).
        standardize: z-score columns before the noise is added.
        seed: seed of the noise.
        units: ``"nats"`` or ``"bits"``.
    """

    resampling = "subsample"

    def __init__(
        self,
        noise_std: float = 0.1,
        noise_on: Literal["x", "y", "both", "none"] = "y",
        n_components: int = 4,
        base: MIEstimator | None = None,
        standardize: bool = True,
        seed: int = 0,
        units: Units = "nats",
    ) -> None:
        super().__init__(units)
        if noise_on not in ("x", "y", "both", "none"):
            raise ValueError(f"noise_on must be 'x', 'y', 'both' or 'none', got {noise_on!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if int(n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.noise_std = float(noise_std)
        self.noise_on = noise_on
        self.n_components = int(n_components)
        self.base = base if base is not None else KSG(k=5, constant="drop")
        self.standardize = standardize
        self.seed = seed

    def describe(self) -> str:
        return f"Noisy+PCA(s={self.noise_std:g},d={self.n_components})+{self.base.describe()}"

    def _side(self, a: ArrayLike, name: str, noisy: bool, g: torch.Generator) -> torch.Tensor:
        raw = a if isinstance(a, torch.Tensor) else torch.as_tensor(a)
        if is_discrete(raw):
            return raw  # labels pass through untouched
        t = handle_constant(as_2d(raw, name).cpu(), name, "drop")
        if t.shape[1] == 0:
            raise ValueError(f"every column of {name} is constant; its MI with anything is 0")
        if self.standardize:
            t = (t - t.mean(0)) / t.std(0)
        if noisy and self.noise_std > 0:
            t = t + self.noise_std * torch.randn(t.shape, generator=g, dtype=t.dtype)
        return pca_reduce(t, self.n_components)

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        g = torch.Generator().manual_seed(self.seed)
        xs = self._side(x, "x", self.noise_on in ("x", "both"), g)
        ys = self._side(y, "y", self.noise_on in ("y", "both"), g)
        n = check_lengths(x=xs, y=ys)
        res = self.base.estimate(xs, ys)
        value = res.value if res.units == "nats" else res.to("nats").value
        return value, n, {"dim_x": int(xs.shape[1]) if xs.dim() > 1 else 1, "dim_y": int(ys.shape[1]) if ys.dim() > 1 else 1}
