"""Contrastive VIB (CVIB; "Reducing Spurious Correlations for Aspect-Based Sentiment Analysis
with Variational Information Bottleneck and Contrastive Learning", 2023).

Two branches see the same input: the *full* representation and a *compressed* one obtained
by a VIB that prunes units (Dai et al. 2018, "Compressing neural networks using the
variational information bottleneck": each unit is multiplied by a learned Gaussian gate
``mu_i + s_i eps``, with the compression term ``sum_i log(1 + mu_i^2 / s_i^2)``). A contrastive
(InfoNCE) loss pulls the full and compressed views of the same example together and pushes
other examples apart, so the compressed branch keeps what distinguishes examples — and, with
``labels``, what distinguishes classes — while the VIB drops units that carry little of it,
which is where spurious, weakly-predictive features end up. The layer is
:class:`bottlenecks.layers.stochastic.ContrastiveVIBBottleneck`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.1, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between two views ``a``, ``b`` ``(batch, d)`` (cosine similarity).

    Positives are the same index (``labels`` None) or every pair with the same label
    (supervised contrastive, averaged over positives). Returns a scalar (nats).
    """
    if a.shape != b.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.T / temperature  # (batch, batch)
    if labels is None:
        target = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    pos = (labels.reshape(-1, 1) == labels.reshape(1, -1)).to(logits.dtype)
    loss_ab = -(pos * F.log_softmax(logits, 1)).sum(1) / pos.sum(1)
    loss_ba = -(pos * F.log_softmax(logits.T, 1)).sum(1) / pos.sum(1)
    return 0.5 * (loss_ab.mean() + loss_ba.mean())


def gate_compression(mu: Tensor, log_std: Tensor) -> Tensor:
    """Dai et al.'s per-unit bound ``sum_i log(1 + mu_i^2 / s_i^2)`` for gates ``(d,)`` (nats)."""
    return torch.log1p(mu.pow(2) * torch.exp(-2.0 * log_std)).sum()


class ContrastiveVIBLoss(nn.Module):
    """``contrastive_weight * InfoNCE(full, compressed) + beta * gate_compression`` for custom loops.

    Args:
        beta: weight of the compression (gate) term.
        contrastive_weight: weight of the InfoNCE term.
        temperature: InfoNCE temperature.

    ``forward(z_full, z_comp, mu, log_std, labels=None)`` returns
    ``{"loss", "contrastive", "compression"}``.
    """

    def __init__(self, beta: float = 1e-3, contrastive_weight: float = 1.0, temperature: float = 0.1) -> None:
        super().__init__()
        self.beta = beta
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature

    def forward(
        self, z_full: Tensor, z_comp: Tensor, mu: Tensor, log_std: Tensor, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        con = info_nce(z_full, z_comp, self.temperature, labels)
        comp = gate_compression(mu, log_std)
        return {"loss": self.contrastive_weight * con + self.beta * comp, "contrastive": con, "compression": comp}
