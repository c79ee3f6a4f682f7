"""Neural (variational) lower bounds on MI — MINE, NWJ, InfoNCE — with one shared trainer.

A critic ``f(x, y)`` scores pairs; over a batch of ``b`` pairs the score matrix
``S_ij = f(x_i, y_j)`` holds joint samples on its diagonal and product-of-marginal samples
off it. The bounds (Poole et al. 2019, "On variational bounds of mutual information"):

* **InfoNCE** (van den Oord et al. 2018): ``mean_i [S_ii - logsumexp_j S_ij] + log b``.
  Low variance, but can never exceed ``log b`` (biased low when the true MI is large).
* **NWJ** (Nguyen, Wainwright & Jordan 2010): ``mean_i S_ii - e^{-1} mean_{i!=j} exp(S_ij)``.
  Unbiased in expectation for a fixed critic, high variance at large MI.
* **MINE** (Belghazi et al. 2018): Donsker–Varadhan ``mean_i S_ii - log mean_{i!=j} exp(S_ij)``
  trained with the moving-average gradient correction of the denominator.

The critic is trained on a training split and the bound is *reported on the held-out split*
(``eval_fraction``), so an over-fitted critic cannot inflate the estimate. Regime:
the only estimators here that scale to high-dimensional inputs, at the price of optimisation
noise (seed-dependent results: use :func:`~bottlenecks.estimators.confidence_interval` with
``method="repeat"``) and bound-specific bias (InfoNCE <= log b; NWJ/MINE variance grows like
``e^MI``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from bottlenecks.estimators._base import ArrayLike, MIEstimator, Units, as_2d, check_lengths, handle_constant

Bound = Literal["infonce", "nwj", "mine"]


def _mlp(d_in: int, hidden: int, layers: int, d_out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class Critic(nn.Module):
    """Pair critic producing the ``(b, b)`` score matrix ``S_ij = f(x_i, y_j)``.

    Args:
        dim_x, dim_y: input widths.
        kind: ``"concat"`` — an MLP on ``[x_i, y_j]`` for every pair (expressive, O(b^2)
            forward passes); ``"separable"`` — ``g(x_i) . h(y_j)`` (cheap).
        hidden, layers: MLP width and depth.
        embed_dim: embedding width of the separable critic.
        clip: scores are squashed to ``(-clip, clip)`` by ``clip * tanh(s / clip)`` (None: no
            squashing). Every critic yields a valid bound, and a bounded one keeps the
            exponentials of NWJ/MINE finite on heavy-tailed data.
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        kind: Literal["concat", "separable"] = "concat",
        hidden: int = 64,
        layers: int = 2,
        embed_dim: int = 32,
        clip: float | None = 20.0,
    ) -> None:
        super().__init__()
        self.clip = clip
        if kind not in ("concat", "separable"):
            raise ValueError(f"critic kind must be 'concat' or 'separable', got {kind!r}")
        self.kind = kind
        if kind == "concat":
            self.net = _mlp(dim_x + dim_y, hidden, layers, 1)
        else:
            self.g = _mlp(dim_x, hidden, layers, embed_dim)
            self.h = _mlp(dim_y, hidden, layers, embed_dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x`` ``(b, d_x)``, ``y`` ``(b, d_y)`` -> scores ``(b, b)``, soft-clipped to ``±clip``."""
        if self.kind == "separable":
            s = self.g(x) @ self.h(y).T
        else:
            b = x.shape[0]
            pairs = torch.cat([x[:, None, :].expand(b, b, -1), y[None, :, :].expand(b, b, -1)], -1)
            s = self.net(pairs).squeeze(-1)
        # any critic gives a valid lower bound, so bounding it is safe; it keeps exp(S) finite
        return self.clip * torch.tanh(s / self.clip) if self.clip else s


def _normal_scores(t: Tensor) -> Tensor:
    """Per column: ranks -> standard-normal quantiles, ``(n, d) -> (n, d)``."""
    n = t.shape[0]
    ranks = t.argsort(0).argsort(0).to(torch.float64)
    u = (ranks + 0.5) / n
    return (math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)).to(t.dtype)


def _offdiag(s: Tensor) -> Tensor:
    b = s.shape[0]
    return s.masked_select(~torch.eye(b, dtype=torch.bool, device=s.device))


def infonce_bound(scores: Tensor) -> Tensor:
    """InfoNCE lower bound (nats) from a ``(b, b)`` score matrix."""
    b = scores.shape[0]
    return (scores.diagonal() - torch.logsumexp(scores, dim=1)).mean() + math.log(b)


def nwj_bound(scores: Tensor) -> Tensor:
    """NWJ lower bound (nats): ``E_p[S] - e^{-1} E_q[exp S]``."""
    return scores.diagonal().mean() - torch.exp(_offdiag(scores) - 1.0).mean()


def dv_bound(scores: Tensor) -> Tensor:
    """Donsker–Varadhan lower bound (nats): ``E_p[S] - log E_q[exp S]``."""
    off = _offdiag(scores)
    return scores.diagonal().mean() - (torch.logsumexp(off, 0) - math.log(off.numel()))


BOUNDS = {"infonce": infonce_bound, "nwj": nwj_bound, "mine": dv_bound}


class CriticTrainer:
    """Trains a :class:`Critic` to maximise one of the bounds; shared by all neural estimators.

    Args:
        bound: ``"infonce"``, ``"nwj"`` or ``"mine"``.
        steps: optimisation steps.
        batch_size: pairs per step (the score matrix is ``batch_size^2``).
        lr: Adam learning rate.
        ema: MINE's moving-average rate for the denominator of the gradient.
        seed: seed of batch sampling (the critic's init is seeded by the caller).
    """

    def __init__(
        self,
        bound: Bound = "infonce",
        steps: int = 600,
        batch_size: int = 128,
        lr: float = 2e-3,
        ema: float = 0.01,
        seed: int = 0,
    ) -> None:
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {sorted(BOUNDS)}, got {bound!r}")
        self.bound = bound
        self.steps = int(steps)
        self.batch_size = int(batch_size)
        self.lr = lr
        self.ema = ema
        self.seed = seed

    def loss(self, scores: Tensor, state: dict[str, Tensor]) -> Tensor:
        """Training loss (negative bound; for MINE the bias-corrected surrogate)."""
        if self.bound != "mine":
            return -BOUNDS[self.bound](scores)
        off = _offdiag(scores)
        log_mean_exp = torch.logsumexp(off, 0) - math.log(off.numel())
        # moving average of E_q[e^S], kept in log space (no overflow for large scores)
        log_ma = state.get("log_ma")
        lme = log_mean_exp.detach()
        if log_ma is None:
            log_ma = lme
        else:
            log_ma = torch.logaddexp(log_ma + math.log(1 - self.ema), lme + math.log(self.ema))
        state["log_ma"] = log_ma
        # d/dθ log E_q[e^S] estimated as E_q[e^S dS] / MA: the surrogate E_q[e^S] / MA
        return -(scores.diagonal().mean() - torch.exp(log_mean_exp - log_ma))

    def fit(self, critic: Critic, x: Tensor, y: Tensor) -> list[float]:
        """Train ``critic`` on ``x`` ``(n, d_x)``, ``y`` ``(n, d_y)``; return the bound per step."""
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        opt = torch.optim.Adam(critic.parameters(), lr=self.lr)
        n = x.shape[0]
        b = min(self.batch_size, n)
        state: dict[str, Tensor] = {}
        history: list[float] = []
        critic.train()
        for _ in range(self.steps):  # loop over optimisation steps, not samples
            idx = torch.randperm(n, generator=g)[:b].to(x.device)
            scores = critic(x[idx], y[idx])
            loss = self.loss(scores, state)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                history.append(float(BOUNDS[self.bound](scores)))
        critic.eval()
        return history


class NeuralMI(MIEstimator):
    """MI lower bound from a trained critic (MINE / NWJ / InfoNCE), reported on held-out data.

    Args:
        bound: ``"infonce"``, ``"nwj"`` or ``"mine"``.
        critic: ``"separable"`` (default; ``g(x) . h(y)``, one forward pass per sample) or
            ``"concat"`` (an MLP on every pair: more expressive, ``batch_size`` times slower).
        hidden, layers, embed_dim: critic size.
        steps, batch_size, lr, ema: trainer settings (:class:`CriticTrainer`).
        eval_fraction: share of samples held out for the reported value.
        eval_batch: pairs per evaluation block (the held-out bound is averaged over blocks of
            this size, so InfoNCE's ``log b`` ceiling is ``log eval_batch``).
        standardize: ``True``/``"standardize"`` z-scores the inputs; ``"rank"`` maps every
            column to normal scores of its ranks (MI is invariant to invertible per-coordinate
            maps, and heavy tails stop dominating the critic); ``False`` uses them as given.
        seed: seeds the critic initialisation, the split and the batches.
        device: where to train (default: the input's device).
        units: ``"nats"`` or ``"bits"``.
    """

    resampling = "bootstrap"

    def __init__(
        self,
        bound: Bound = "infonce",
        critic: Literal["concat", "separable"] = "separable",
        hidden: int = 64,
        layers: int = 2,
        embed_dim: int = 32,
        steps: int = 600,
        batch_size: int = 128,
        lr: float = 2e-3,
        ema: float = 0.01,
        eval_fraction: float = 0.3,
        eval_batch: int = 512,
        standardize: bool | Literal["standardize", "rank"] = True,
        seed: int = 0,
        device: str | None = None,
        units: Units = "nats",
    ) -> None:
        super().__init__(units)
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
        self.trainer = CriticTrainer(bound, steps, batch_size, lr, ema, seed)
        self.bound = bound
        self.critic = critic
        self.hidden = hidden
        self.layers = layers
        self.embed_dim = embed_dim
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.ema = ema
        self.eval_fraction = eval_fraction
        self.eval_batch = eval_batch
        self.standardize = standardize
        self.seed = seed
        self.device = device

    def describe(self) -> str:
        return {"infonce": "InfoNCE", "nwj": "NWJ", "mine": "MINE"}[self.bound]

    def _estimate_nats(self, x: ArrayLike, y: ArrayLike, z: ArrayLike | None) -> tuple[float, int, dict[str, Any]]:
        xt = handle_constant(as_2d(x, "x", dtype=torch.float32), "x", "raise")
        yt = handle_constant(as_2d(y, "y", dtype=torch.float32), "y", "raise")
        n = check_lengths(x=xt, y=yt)
        n_eval = int(round(n * self.eval_fraction))
        if n - n_eval < 8 or n_eval < 8:
            raise ValueError(f"NeuralMI needs at least 8 training and 8 held-out samples; got n={n}")
        device = torch.device(self.device) if self.device else xt.device
        xt, yt = xt.to(device), yt.to(device)
        if self.standardize == "rank":
            xt, yt = _normal_scores(xt), _normal_scores(yt)
        elif self.standardize:
            xt = (xt - xt.mean(0)) / xt.std(0)
            yt = (yt - yt.mean(0)) / yt.std(0)
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=g).to(device)
        tr, ev = perm[n_eval:], perm[:n_eval]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            critic = Critic(xt.shape[1], yt.shape[1], self.critic, self.hidden, self.layers, self.embed_dim).to(device)
        history = self.trainer.fit(critic, xt[tr], yt[tr])
        with torch.no_grad():
            xe, ye = xt[ev], yt[ev]
            b = min(self.eval_batch, n_eval)
            n_blocks = max(1, n_eval // b)
            vals = [float(BOUNDS[self.bound](critic(xe[i * b : (i + 1) * b], ye[i * b : (i + 1) * b]))) for i in range(n_blocks)]
        value = float(np.mean(vals))
        return value, n, {"train_curve": history, "n_eval": n_eval, "eval_blocks": vals}
