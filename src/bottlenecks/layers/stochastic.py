"""Stochastic bottlenecks for information-bottleneck training.

* :class:`GaussianBottleneck` — the variational IB layer (Alemi et al. 2017): features →
  Gaussian ``q(z|h)`` → reparameterised sample; ``losses["kl"]`` = KL to the prior.
* :class:`CSIBBottleneck` — Cauchy–Schwarz IB for regression (Yu et al. 2024): encoder →
  representation ``t`` (+ optional noise) → decoder → prediction; ``losses["cs_qmi"]`` =
  ``I_CS(h; t)`` and, through ``loss_terms``, ``"cs_prediction"`` =
  ``D_CS(p(y|h) || q(y_hat|h))``. Its ``z`` *is* the prediction (``predicts_task = True``).
* :class:`ContrastiveVIBBottleneck` — CVIB: a full branch and a unit-pruned compressed
  branch (Dai et al. 2018 gates) tied by InfoNCE; ``losses["kl"]`` (gate compression) and
  ``losses["contrastive"]``.

All follow the :class:`~bottlenecks.layers.base.Bottleneck` contract, so
:class:`~bottlenecks.models.BottleneckModel` trains them with
``loss_weights={"kl": beta}`` (or ``{"cs_qmi": beta}``) and the information-plane callback
can hook them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.estimators.kernel import BandwidthRule
from bottlenecks.layers.base import Bottleneck, BottleneckOutput, UnitReadout, Units
from bottlenecks.naming import accepts_renamed
from bottlenecks.layers.blocks import activation as make_activation
from bottlenecks.layers.blocks import mlp
from bottlenecks.losses.contrastive_vib import gate_compression, info_nce
from bottlenecks.losses.cs_ib import CSIBLoss
from bottlenecks.losses.vib import gaussian_kl, gaussian_log_prob, mixture_log_prob

Activation = Literal["relu", "tanh", "gelu"]


class GaussianBottleneck(Bottleneck):
    """Variational information bottleneck layer (Alemi et al. 2017).

    ``h`` ``(batch, in_features)`` → MLP → ``mu``, ``std`` ``(batch, out_features)``;
    training: ``z = mu + std * eps``; evaluation: ``z = mu`` (or a sample with
    ``sample_eval=True``). ``std = softplus(raw - std_offset) + min_std`` (Alemi's
    ``softplus(x - 5)`` starts nearly deterministic).

    Args:
        in_features: encoder feature width (linked from the data by the CLI).
        out_features: dimension of ``z``.
        hidden: hidden widths of the encoder MLP (empty = linear).
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        prior: ``"standard"`` N(0, I); ``"learned"`` diagonal Gaussian with learned mean and
            scale (analytic KL); ``"mixture"`` a learned mixture of ``num_components`` diagonal
            Gaussians (KL estimated with the reparameterised sample).
        num_components: mixture size for ``prior="mixture"``.
        std_offset, min_std: see above.
        sample_eval: sample ``z`` at evaluation too.

    Output: ``z`` ``(batch, out_features)``; ``losses["kl"]`` scalar (batch mean, nats);
    ``extras``: ``mu``, ``std`` ``(batch, out_features)``, ``kl_per_sample`` ``(batch,)``;
    metric ``std_mean``. Units: the ``out_features`` latent dimensions, read as ``mu``.
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        out_features: int = 16,
        hidden: list[int] | None = None,
        activation: Activation = "relu",
        prior: Literal["standard", "learned", "mixture"] = "standard",
        num_components: int = 8,
        std_offset: float = 5.0,
        min_std: float = 1e-4,
        sample_eval: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        if prior not in ("standard", "learned", "mixture"):
            raise ValueError(f"prior must be 'standard', 'learned' or 'mixture', got {prior!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.prior = prior
        self.std_offset = std_offset
        self.min_std = min_std
        self.sample_eval = sample_eval
        self.encoder = mlp(in_features, list(hidden or []), 2 * out_features, activation, sequential=True)
        if prior == "learned":
            self.prior_mu = nn.Parameter(torch.zeros(out_features))
            self.prior_log_std = nn.Parameter(torch.zeros(out_features))
        elif prior == "mixture":
            if num_components < 1:
                raise ValueError(f"num_components must be >= 1, got {num_components}")
            g = torch.Generator().manual_seed(0)
            self.prior_means = nn.Parameter(torch.randn(num_components, out_features, generator=g))
            self.prior_log_stds = nn.Parameter(torch.zeros(num_components, out_features))
            self.prior_logits = nn.Parameter(torch.zeros(num_components))

    def encode(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, std)``, each ``(batch, out_features)``."""
        mu, raw = self.encoder(h).chunk(2, dim=-1)
        std = F.softplus(raw - self.std_offset) + self.min_std
        return mu, std

    def kl(self, z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """``(batch,)`` KL(q(z|h) || prior) (analytic, or single-sample for the mixture)."""
        if self.prior == "standard":
            return gaussian_kl(mu, std)
        if self.prior == "learned":
            return gaussian_kl(mu, std, self.prior_mu, self.prior_log_std.exp())
        return gaussian_log_prob(z, mu, std) - mixture_log_prob(z, self.prior_means, self.prior_log_stds, self.prior_logits)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        mu, std = self.encode(h)
        if self.training or self.sample_eval:
            z = mu + std * torch.randn_like(std)
        else:
            z = mu
        # the mixture KL needs a sample even at evaluation
        z_kl = z if (self.training or self.sample_eval or self.prior != "mixture") else mu + std * torch.randn_like(std)
        kl = self.kl(z_kl, mu, std)
        return BottleneckOutput(
            z=z,
            losses={"kl": kl.mean()},
            metrics={"std_mean": std.mean().detach()},
            extras={"mu": mu, "std": std, "kl_per_sample": kl},
        )

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        """The posterior means ``(batch, out_features)`` (the sample is noise around them)."""
        return out.extras["mu"]


class CSIBBottleneck(Bottleneck):
    """Cauchy–Schwarz IB regressor (Yu et al. 2024) as a bottleneck whose ``z`` is the prediction.

    ``h`` → encoder MLP → ``t`` ``(batch, latent_dim)`` (+ ``noise_std`` Gaussian noise while
    training) → decoder MLP → ``y_hat`` ``(batch, out_features)``.

    Losses (nats, unweighted, computed by :class:`bottlenecks.losses.CSIBLoss`):
    ``losses["cs_qmi"] = I_CS(h; t)`` (compression) and, from :meth:`loss_terms` (which the
    model calls with the batch),
    ``"cs_prediction" = D_CS(p(y|h) || q(y_hat|h))``. Train with the model's
    ``task_loss_weight: 0`` to use the CS prediction term instead of MSE (the paper's
    objective), ``loss_weights: {cs_qmi: beta}``.

    Args:
        in_features: input width. out_features: prediction width (1 for scalar regression).
        latent_dim: width of ``t``. hidden / decoder_hidden: MLP widths.
        activation: hidden activation.
        noise_std: std of Gaussian noise added to ``t`` in training (0 = deterministic).
        sigma_x, sigma_t, sigma_y, sigma_cond: kernel-width rules or floats (see
            :func:`bottlenecks.estimators.bandwidth` and :class:`bottlenecks.losses.CSIBLoss`;
            the defaults are explained in :mod:`bottlenecks.losses.cs_ib`).

    Units: the ``latent_dim`` dimensions of ``t`` (``z`` is the prediction).
    """

    predicts_task = True

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        latent_dim: int = 16,
        hidden: list[int] | None = None,
        decoder_hidden: list[int] | None = None,
        activation: Activation = "relu",
        noise_std: float = 0.0,
        sigma_x: BandwidthRule | float = "median",
        sigma_t: BandwidthRule | float = "median",
        sigma_y: BandwidthRule | float = "output",
        sigma_cond: BandwidthRule | float = "silverman",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.latent_dim = latent_dim
        self.noise_std = noise_std
        self.sigma_x, self.sigma_t, self.sigma_y, self.sigma_cond = sigma_x, sigma_t, sigma_y, sigma_cond
        self.objective = CSIBLoss(sigma_x=sigma_x, sigma_t=sigma_t, sigma_y=sigma_y, sigma_cond=sigma_cond)
        self.encoder = mlp(in_features, list(hidden if hidden is not None else [64]), latent_dim, activation, sequential=True)
        self.act = make_activation(activation)
        self.decoder = mlp(latent_dim, list(decoder_hidden or []), out_features, activation, sequential=True)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        t = self.act(self.encoder(h))
        if self.training and self.noise_std > 0:
            t = t + self.noise_std * torch.randn_like(t)
        y_hat = self.decoder(t)
        losses = {}
        if h.shape[0] > 1:
            losses["cs_qmi"] = self.objective.compression(h, t)
        return BottleneckOutput(z=y_hat, losses=losses, extras={"t": t, "h": h})

    def loss_terms(self, out: BottleneckOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``cs_qmi`` and ``cs_prediction = D_CS(p(y|h) || q(y_hat|h))`` for a batch with targets ``y``."""
        terms = super().loss_terms(out, batch)
        h = out.extras["h"]
        if h.shape[0] >= 2:
            terms["cs_prediction"] = self.objective.prediction(h, batch["y"], out.z)
        return terms

    def units(self) -> Units:
        return Units("latent", tuple(f"t{i}" for i in range(self.latent_dim)))

    def unit_readout(self) -> UnitReadout | None:
        """Unit ``t{i}`` is input column ``i`` of the decoder, when the decoder is one Linear
        (no ``decoder_hidden``)."""
        layers = list(self.decoder) if isinstance(self.decoder, nn.Sequential) else [self.decoder]
        if len(layers) == 1 and isinstance(layers[0], nn.Linear):
            return UnitReadout(tuple((i,) for i in range(self.latent_dim)), linear=layers[0])
        return None

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        return out.extras["t"]


class ContrastiveVIBBottleneck(Bottleneck):
    """CVIB: full branch + VIB-pruned compressed branch, tied by InfoNCE.

    ``z_full = MLP(h)`` ``(batch, out_features)``; the compressed branch multiplies each unit
    by a Gaussian gate ``g_i ~ N(mu_i, s_i^2)`` (reparameterised in training; at evaluation
    ``mu_i`` where ``log alpha_i = log(mu_i^2 / s_i^2) > prune_threshold``, else 0). ``z`` (what
    the head reads) is the compressed branch.

    Losses: ``"kl"`` = ``sum_i log(1 + mu_i^2 / s_i^2)`` (Dai et al.'s compression bound);
    ``"contrastive"`` = InfoNCE between ``z_full`` and ``z`` (same example = positive; with
    ``supervised_contrast=True`` same *label* = positive, computed in
    :meth:`loss_terms`).

    Args:
        in_features, out_features: widths. hidden: MLP widths of the full branch.
        activation: hidden activation. temperature: InfoNCE temperature.
        prune_threshold: ``log alpha`` below which a unit is pruned at evaluation.
        supervised_contrast: use labels to define positives.

    ``extras``: ``z_full``, ``gate_mu``, ``log_alpha`` ``(out_features,)``; metric
    ``active_units``. Units: the ``out_features`` gated dimensions of ``z``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 32,
        hidden: list[int] | None = None,
        activation: Activation = "relu",
        temperature: float = 0.1,
        prune_threshold: float = 0.0,
        supervised_contrast: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.temperature = temperature
        self.prune_threshold = prune_threshold
        self.supervised_contrast = supervised_contrast
        self.full = mlp(in_features, list(hidden or []), out_features, activation, sequential=True)
        self.gate_mu = nn.Parameter(torch.ones(out_features))
        self.gate_log_std = nn.Parameter(torch.full((out_features,), math.log(0.1)))

    def log_alpha(self) -> Tensor:
        """``(out_features,)`` ``log(mu^2 / s^2)`` of each gate (high = unit kept)."""
        return torch.log(self.gate_mu.pow(2) + 1e-12) - 2.0 * self.gate_log_std

    def active_units(self) -> Tensor:
        """``(out_features,)`` bool: units kept at evaluation."""
        return self.log_alpha() > self.prune_threshold

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        z_full = self.full(h)
        if self.training:
            gate = self.gate_mu + self.gate_log_std.exp() * torch.randn_like(z_full)
        else:
            gate = self.gate_mu * self.active_units().to(z_full.dtype)
        z = z_full * gate
        losses = {"kl": gate_compression(self.gate_mu, self.gate_log_std)}
        if not self.supervised_contrast and h.shape[0] > 1:
            losses["contrastive"] = info_nce(z_full, z, self.temperature)
        return BottleneckOutput(
            z=z,
            losses=losses,
            metrics={"active_units": self.active_units().sum().float().detach()},
            extras={"z_full": z_full, "gate_mu": self.gate_mu.detach(), "log_alpha": self.log_alpha().detach()},
        )

    def loss_terms(self, out: BottleneckOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().loss_terms(out, batch)
        if self.supervised_contrast and out.z.shape[0] >= 2:
            terms["contrastive"] = info_nce(out.extras["z_full"], out.z, self.temperature, batch["y"])
        return terms


class NoisyBottleneck(Bottleneck):
    """A deterministic MLP bottleneck with optional additive Gaussian noise on its output.

    ``z = MLP(h) (+ noise_std * eps while training)``. With ``noise_std=0`` it is the plain
    (no-IB) baseline of the regression experiments; its hidden layers are named
    ``encoder.0``, ``encoder.1``, ... for the information-plane callback (``encoder.1`` is
    the first activation). ``final_activation`` applies the hidden activation to ``z`` too.

    Args:
        in_features, out_features: widths. hidden: hidden widths.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        final_activation: apply ``activation`` to the output as well.
        noise_std: training-time noise on ``z`` (a noisy channel bounds ``I(h; z)``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 16,
        hidden: list[int] | None = None,
        activation: Activation = "relu",
        final_activation: bool = True,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.in_features = in_features
        self.out_features = out_features
        self.noise_std = noise_std
        self.encoder = mlp(in_features, list(hidden or []), out_features, activation, sequential=True)
        if final_activation:
            self.encoder.append(make_activation(activation))

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        z = self.encoder(h)
        if self.training and self.noise_std > 0:
            z = z + self.noise_std * torch.randn_like(z)
        return BottleneckOutput(z=z)
