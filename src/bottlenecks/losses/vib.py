"""Variational information bottleneck (Alemi et al. 2017, "Deep Variational Information Bottleneck").

The encoder outputs a Gaussian ``q(z|x) = N(mu(x), diag std(x)^2)``; the objective is::

    L = E[ -log q(y|z) ] + beta * KL( q(z|x) || r(z) )

where ``r(z)`` is a prior (standard normal, a learned diagonal Gaussian, or a learned mixture).
The KL term upper-bounds the compression ``I(X;Z)`` (for the optimal prior it is tight); the
task term lower-bounds ``I(Z;Y)`` up to ``H(Y)``. For regression, ``-log q(y|z)`` with a
fixed-variance Gaussian decoder is the MSE up to a constant. The stochastic layer is
:class:`bottlenecks.layers.stochastic.GaussianBottleneck`, which returns the KL under
``losses["kl"]``; :class:`~bottlenecks.models.BottleneckModel` weights it with
``loss_weights={"kl": beta}``. This module holds the KL functions and a loss for custom loops.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: Tensor, std: Tensor, prior_mu: Tensor | float = 0.0, prior_std: Tensor | float = 1.0) -> Tensor:
    """``KL(N(mu, std^2) || N(prior_mu, prior_std^2))`` summed over the last dim, in nats.

    Args:
        mu, std: ``(batch, d)``.
        prior_mu, prior_std: scalars or tensors broadcastable to ``(batch, d)``.

    Returns:
        ``(batch,)``.
    """
    prior_mu = torch.as_tensor(prior_mu, dtype=mu.dtype, device=mu.device)
    prior_std = torch.as_tensor(prior_std, dtype=mu.dtype, device=mu.device)
    var_ratio = (std / prior_std).pow(2)
    t = (mu - prior_mu) / prior_std
    return 0.5 * (var_ratio + t.pow(2) - 1.0 - var_ratio.log()).sum(-1)


def gaussian_log_prob(z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """``log N(z; mu, diag std^2)`` summed over the last dim: ``(..., d) -> (...)``."""
    return (-0.5 * ((z - mu) / std).pow(2) - std.log() - 0.5 * LOG_2PI).sum(-1)


def mixture_log_prob(z: Tensor, means: Tensor, log_stds: Tensor, logits: Tensor) -> Tensor:
    """``log sum_k pi_k N(z; m_k, diag s_k^2)`` for ``z`` ``(batch, d)``, ``means`` ``(K, d)`` -> ``(batch,)``."""
    comp = gaussian_log_prob(z[:, None, :], means[None], log_stds.exp()[None])  # (batch, K)
    return torch.logsumexp(comp + F.log_softmax(logits, -1)[None], dim=-1)


class VIBLoss(nn.Module):
    """``task + beta * KL`` for training loops outside :class:`~bottlenecks.models.BottleneckModel`.

    Args:
        beta: weight of the KL (compression) term.
        task: ``"classification"`` (cross-entropy on logits) or ``"regression"`` (MSE).

    ``forward(y_hat, y, kl)`` with ``y_hat`` ``(batch, n_classes)`` or ``(batch,)``, ``kl``
    the layer's ``losses["kl"]``; returns ``{"loss", "task", "kl"}``.
    """

    def __init__(self, beta: float = 1e-3, task: Literal["classification", "regression"] = "classification") -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        self.beta = beta
        self.task = task

    def forward(self, y_hat: Tensor, y: Tensor, kl: Tensor) -> dict[str, Tensor]:
        if self.task == "classification":
            task = F.cross_entropy(y_hat, y.long())
        else:
            task = F.mse_loss(y_hat.reshape(y.shape), y.float())
        return {"loss": task + self.beta * kl, "task": task, "kl": kl}
