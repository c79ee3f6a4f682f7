"""Vector quantisers: features snapped to the nearest entry of a learned codebook.

* :class:`VectorQuantizer` — VQ-VAE (van den Oord et al., 2017): nearest code,
  straight-through gradients, codebook + commitment losses *or* EMA codebook
  updates; k-means initialisation from data; dead-code replacement; Euclidean or
  cosine codes; several heads with separate codebooks (product quantisation) or one
  shared codebook.
* :class:`ResidualVectorQuantizer` — residual VQ (SoundStream, Zeghidour et al.,
  2021): each stage quantises what the previous stages left over.
* :class:`LookupFreeQuantizer` — LFQ (Yu et al., 2023, "Language Model Beats Diffusion"):
  the sign of each of ``code_dim`` learned scalars, an implicit codebook of
  ``2 ** code_dim`` codes, and an entropy loss for confident, evenly used codes.
* :class:`FiniteScalarQuantizer` — FSQ (Mentzer et al., 2023): project to a few
  bounded scalars and round each to one of ``L_i`` levels; no codebook to learn,
  no auxiliary loss.

Nearest-code search and k-means are shared with the codebook-features and key–value
bottlenecks (:mod:`bottlenecks.layers.codes`); EMA statistics use
``index_add_``/``bincount``. Units: every code of every codebook (:meth:`units`), active
in an example when it was chosen for it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks import distributed
from bottlenecks.layers.base import Bottleneck, BottleneckOutput, TextEncoder, Units, one_hot_units
from bottlenecks.layers.codes import DISTANCES as _DISTANCES
from bottlenecks.layers.codes import (
    Distance,
    any_set,
    code_counts,
    dead_fraction,
    kmeans,
    nearest_codes,
    perplexity,
    reseed_codes,
    reseed_without_looking,
    rotate_to,
    straight_through,
    warn_collapse,
)
from bottlenecks.naming import accepts_renamed


# --------------------------------------------------------------------------- VQ
class VectorQuantizer(Bottleneck):
    """Nearest-code vector quantiser with straight-through gradients.

    The input ``(batch, in_features)`` is split into ``num_heads`` chunks of
    ``in_features // num_heads`` dims; each chunk is replaced by its nearest code. With
    ``shared_codebook=False`` (default) every head has its own codebook of
    ``codebook_size`` codes — product quantisation, ``codebook_size ** num_heads``
    distinct outputs; with ``shared_codebook=True`` all heads read one codebook.

    Training signal (VQ-VAE): the forward value is the code, the backward pass copies
    the gradient to the input (straight-through). Two unweighted losses are returned:

    * ``"codebook"`` = ``mean ||sg[x] - c||²`` moves the chosen codes to their inputs
      (absent with ``ema=True``: codes are then exponential moving averages of their
      assigned inputs, VQ-VAE appendix A.1, with Laplace-smoothed counts);
    * ``"commitment"`` = ``mean ||x - sg[c]||²`` keeps the encoder near its codes
      (weight it with ``loss_weights: {commitment: 0.25}`` on the model).

    Dead codes: every training step updates a running usage (EMA of hits per batch,
    decay ``usage_decay``); codes whose usage falls below ``dead_code_threshold`` are
    re-seeded from random inputs of the current batch (0 turns this off).

    Usage statistics go to ``metrics`` (logged by the model): ``perplexity`` (of this
    batch's code histogram) and ``dead_fraction`` (fraction of codes chosen in none of the
    last ``dead_window`` training batches); ``extras["counts"]`` ``(groups, codebook_size)``.

    Units: ``groups * codebook_size`` codes (``code{k}``, or ``head{g}/code{k}`` with one
    codebook per head), activation = how often the code was chosen for the example.

    Args:
        in_features: width of the input features.
        codebook_size: codes per codebook ``K``.
        num_heads: number of chunks the input is split into (must divide ``in_features``).
        shared_codebook: one codebook for all heads instead of one per head.
        distance: ``"euclidean"`` or ``"cosine"`` (inputs and codes L2-normalised; the
            output is the normalised code).
        ema: update codes by EMA instead of the ``"codebook"`` loss.
        ema_decay: EMA decay of the codebook statistics.
        eps: Laplace smoothing of the EMA counts.
        init: ``"random"`` (Gaussian codes) or ``"kmeans"``: codes by k-means on training
            features (:meth:`init_from_data`, called by the model at fit start; the first
            training batch otherwise).
        init_iters: Lloyd iterations of the k-means initialisation.
        dead_code_threshold: running usage (expected hits per batch) below which a code
            is re-seeded; 0 disables replacement.
        usage_decay: decay of the running usage.
        dead_window: training batches without a hit after which a code counts as dead
            in the ``dead_fraction`` metric.
        code_dim: when given, a learned ``Linear(in_features, num_heads * code_dim)`` maps the
            (frozen) features into the space that is quantised, so the representation can
            adapt to the task (the commitment loss then trains it); ``z`` is then
            ``(batch, num_heads * code_dim)``. Default: quantise the features themselves.
        gradient: how the gradient crosses the quantiser: ``"straight_through"`` copies the
            output gradient to the input; ``"rotation"`` is the rotation trick (Fifty et al.,
            2024): the output is the input rotated onto its code and rescaled, the rotation and
            scale held constant, so the gradient turns with the vector
            (:func:`~bottlenecks.layers.codes.rotate_to`).
        simvq: SimVQ (Zhu et al., 2024): the codes are a frozen random codebook times a learned
            ``(code_dim, code_dim)`` linear map per codebook (``codebook_map``), so every update
            moves all codes together and none is left behind (frozen codes start at scale
            ``1 / sqrt(code_dim)``, as in the paper). Trained by the ``"codebook"`` loss
            (not with ``ema``); ``unit_table()`` is then the frozen codebook, before the map.
        collapse_threshold: warn once (rank zero) when the fraction of codes chosen in the last
            ``dead_window`` training batches falls below this (0 disables the warning).
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        codebook_size: int = 512,
        num_heads: int = 1,
        shared_codebook: bool = False,
        distance: Distance = "euclidean",
        ema: bool = False,
        ema_decay: float = 0.99,
        eps: float = 1e-5,
        init: Literal["random", "kmeans"] = "random",
        init_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
        dead_window: int = 100,
        code_dim: int | None = None,
        gradient: Literal["straight_through", "rotation"] = "straight_through",
        simvq: bool = False,
        collapse_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        if code_dim is not None and code_dim < 1:
            raise ValueError(f"code_dim must be positive, got {code_dim}")
        if code_dim is None and (num_heads < 1 or in_features % num_heads != 0):
            raise ValueError(
                f"num_heads={num_heads} does not divide in_features={in_features}; each head quantises "
                "an equal chunk of the features, so choose a divisor (or set code_dim)"
            )
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if init not in ("random", "kmeans"):
            raise ValueError(f"init must be 'random' or 'kmeans', got {init!r}")
        if distance not in _DISTANCES:
            raise ValueError(f"distance must be one of {_DISTANCES}, got {distance!r}")
        for name, value in (("ema_decay", ema_decay), ("usage_decay", usage_decay)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
        if gradient not in ("straight_through", "rotation"):
            raise ValueError(f"gradient must be 'straight_through' or 'rotation', got {gradient!r}")
        if simvq and ema:
            raise ValueError(
                "simvq=True learns the linear map over a frozen codebook by gradient; it cannot also "
                "follow EMA updates: set ema: false"
            )
        if simvq and dead_code_threshold > 0:
            raise ValueError(
                "simvq=True keeps codes in use through the shared linear map and re-seeds none: "
                "set dead_code_threshold: 0"
            )
        if not 0.0 <= collapse_threshold < 1.0:
            raise ValueError(f"collapse_threshold must lie in [0, 1), got {collapse_threshold}")
        self.in_features = in_features
        self.codebook_size = codebook_size
        self.num_heads = num_heads
        self.code_dim = code_dim if code_dim is not None else in_features // num_heads
        self.out_features = self.num_heads * self.code_dim
        self.project_in = nn.Linear(in_features, self.out_features) if code_dim is not None else None
        self.shared_codebook = shared_codebook or num_heads == 1
        self.groups = 1 if self.shared_codebook else num_heads
        self.distance = distance
        self.ema = ema
        self.ema_decay = ema_decay
        self.eps = eps
        self.init = init
        self.init_iters = init_iters
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = usage_decay
        self.dead_window = dead_window
        self.batch_scale = 1.0  # set_batch_scale: training batch / the batch the decays were chosen for
        self.gradient = gradient
        self.simvq = simvq
        self.collapse_threshold = collapse_threshold

        G, K, d = self.groups, codebook_size, self.code_dim
        start = torch.randn(G, K, d)
        if distance == "cosine":
            start = F.normalize(start, dim=-1)
        if ema:
            self.register_buffer("codebook", start)
            self.register_buffer("ema_count", torch.ones(G, K))
            self.register_buffer("ema_sum", start.clone())
        elif simvq:  # frozen random codes of scale 1/sqrt(d) (SimVQ's); the learned map starts at the identity
            self.register_buffer("codebook", start if distance == "cosine" else start * d**-0.5)
            self.codebook_map = nn.Parameter(torch.eye(d).expand(G, d, d).clone())
        else:
            self.codebook = nn.Parameter(start)
        self.register_buffer("usage", torch.zeros(G, K))
        self.register_buffer("last_used", torch.zeros(G, K, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(init == "random"))
        self.register_buffer("blocked", torch.zeros(G, K, dtype=torch.bool))

    # ------------------------------------------------------------------ helpers
    def codes_tensor(self) -> Tensor:
        """The effective codebook ``(groups, codebook_size, code_dim)`` (unit norm for cosine;
        with ``simvq``, the frozen codes through the learned map)."""
        c = self.codebook
        if self.simvq:
            c = torch.bmm(c, self.codebook_map.transpose(1, 2))
        return F.normalize(c, dim=-1) if self.distance == "cosine" else c

    def _group(self, h: Tensor) -> Tensor:
        """``(n, in_features)`` → ``(groups, m, code_dim)`` (after ``project_in`` when present)."""
        if self.project_in is not None:
            h = self.project_in(h)
        n = h.shape[0]
        x = h.reshape(n, self.num_heads, self.code_dim)
        if self.groups == 1:
            x = x.reshape(1, n * self.num_heads, self.code_dim)
        else:
            x = x.transpose(0, 1)
        if self.distance == "cosine":
            x = F.normalize(x, dim=-1)
        return x

    def _ungroup(self, x: Tensor, n: int) -> Tensor:
        """``(groups, m, code_dim)`` → ``(n, out_features)``."""
        if self.groups == 1:
            return x.reshape(n, self.out_features)
        return x.transpose(0, 1).reshape(n, self.out_features)

    def _ungroup_codes(self, idx: Tensor, n: int) -> Tensor:
        return idx.reshape(n, self.num_heads) if self.groups == 1 else idx.t()

    # ------------------------------------------------------------------- stages
    def needs_data_init(self) -> bool:
        return self.init == "kmeans" and not bool(self.initialised)

    @torch.no_grad()
    def init_from_data(
        self, h: Tensor, concepts: Tensor | None = None, y: Tensor | None = None, text: TextEncoder | None = None
    ) -> None:
        """k-means codes from a sample of features ``(n, in_features)``; ``n`` must be at least
        ``codebook_size`` (times ``1 / num_heads`` with a shared codebook). Labels are unused."""
        self.check_input(h)
        x = self._group(h.float())
        if x.shape[1] < self.codebook_size:
            raise ValueError(
                f"k-means initialisation of {self.codebook_size} codes needs at least "
                f"{self.codebook_size} vectors per codebook, got {x.shape[1]} "
                f"({h.shape[0]} samples × {self.num_heads // self.groups} heads); pass more samples "
                "or a smaller codebook_size"
            )
        self._set_codes(kmeans(x, self.codebook_size, self.init_iters, self.distance))
        self.usage.zero_()
        self.initialised.fill_(True)

    def _set_codes(self, codes: Tensor) -> None:
        codes = codes.to(self.codebook.dtype)
        if not torch.isfinite(codes).all():
            raise ValueError("refusing to write NaN or inf into the codebook")
        self.codebook.data.copy_(codes)
        if self.simvq:  # the codes as given: the map back to the identity
            self.codebook_map.data.copy_(torch.eye(self.code_dim, dtype=codes.dtype).expand_as(self.codebook_map))
        if self.ema:
            self.ema_sum.copy_(codes)
            self.ema_count.fill_(1.0)

    # ---------------------------------------------------------------- quantise
    def quantize(self, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Quantise validated features.

        Args:
            h: ``(batch, in_features)``.

        Returns:
            ``(z, codes, losses, metrics, counts)``: ``z`` ``(batch, out_features)`` with
            straight-through gradients, ``codes`` ``(batch, num_heads)`` int64, unweighted losses,
            usage metrics and the code counts ``(groups, codebook_size)`` of the batch.
        """
        n = h.shape[0]
        if not self.host_value("initialised", self.initialised, bool):
            if self.training:
                self.init_from_data(h.detach())
                for t in (self.codebook.data, *((self.ema_sum, self.ema_count) if self.ema else ())):
                    distributed.broadcast_(t)  # every rank keeps rank 0's k-means codes
            else:
                raise RuntimeError(
                    "VectorQuantizer has init='kmeans' but was never initialised: call "
                    "init_from_data(features) or train it first"
                )
        x = self._group(h)
        codebook = self.codes_tensor()
        blocked = self.blocked if self.host_value("blocked", self.blocked, any_set) else None
        idx = nearest_codes(x.detach(), codebook.detach(), 1, self.distance, blocked)  # (G, m)
        G, K = self.groups, self.codebook_size
        flat = idx + (torch.arange(G, device=idx.device) * K).unsqueeze(1) if G > 1 else idx
        q = F.embedding(flat, codebook.reshape(G * K, self.code_dim))  # (G, m, d)

        losses: dict[str, Tensor] = {}
        if not self.ema:
            losses["codebook"] = F.mse_loss(q, x.detach())
        losses["commitment"] = F.mse_loss(x, q.detach())
        z = rotate_to(x, q) if self.gradient == "rotation" else straight_through(x, q)

        counts = code_counts(flat, G * K).view(G, K).to(h.dtype)
        if self.training:
            self._update(x.detach(), flat, counts)
        metrics = self._usage_metrics(counts)
        return self._ungroup(z, n), self._ungroup_codes(idx, n), losses, metrics, counts

    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, out_features)``, ``codes`` ``(batch, num_heads)``."""
        self.check_input(h)
        z, codes, losses, metrics, counts = self.quantize(h)
        return BottleneckOutput(z=z, losses=losses, codes=codes, metrics=metrics, extras={"counts": counts})

    def units(self) -> Units:
        if self.groups == 1:
            return Units("code", tuple(f"code{k}" for k in range(self.codebook_size)))
        return Units("code", tuple(f"head{g}/code{k}" for g in range(self.groups) for k in range(self.codebook_size)))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        offsets = None
        if self.groups > 1:
            offsets = torch.arange(self.groups, device=out.codes.device) * self.codebook_size
        return one_hot_units(out.codes, self.groups * self.codebook_size, offsets)

    def unit_gates(self) -> dict[str, Tensor]:
        """``{"suppressed": (groups * codebook_size,)}`` — the codes never chosen."""
        return {"suppressed": self.blocked.reshape(-1).clone()}

    def set_unit_gates(self, gates: dict[str, Tensor]) -> None:
        g = self._check_gates(gates, ("suppressed",))["suppressed"].view(self.groups, self.codebook_size)
        full = g.all(-1)
        if bool(full.any()):
            raise ValueError(f"cannot suppress every code of codebook {int(full.nonzero()[0])}")
        self.blocked.copy_(g)

    def unit_table(self) -> Tensor:
        """The codes ``(groups * codebook_size, code_dim)`` (a view of the codebook)."""
        return self.codebook.data.view(self.groups * self.codebook_size, self.code_dim)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def _update(self, x: Tensor, flat: Tensor, counts: Tensor) -> None:
        """EMA codebook update, usage bookkeeping and dead-code replacement (training only).

        Under several processes (``torch.distributed``) every rank calls this in every training
        step: the batch's code counts and EMA sums are summed over ranks first (one
        all-reduce; ``counts`` becomes the global batch's, in place), so the codebook, its EMA
        statistics and the usage — hence which codes are dead — are the same on every rank, and
        the codes re-seeded are rank 0's picks (:func:`~bottlenecks.layers.codes.reseed_codes`).
        Decays and the dead-code threshold are per batch; :meth:`set_batch_scale` rescales them.
        """
        G, K, d = self.groups, self.codebook_size, self.code_dim
        m = x.shape[1]
        sums = None
        if self.ema:
            sums = torch.zeros(G * K, d, device=x.device, dtype=x.dtype)
            sums.index_add_(0, flat.reshape(-1), x.reshape(G * m, d))
        if distributed.is_distributed():
            packed = counts.reshape(-1) if sums is None else torch.cat([counts.reshape(-1), sums.reshape(-1)])
            distributed.all_reduce_sum_(packed)
            counts.copy_(packed[: G * K].view(G, K))
            if sums is not None:
                sums = packed[G * K :].view(G * K, d)
            m = int(round(float(counts[0].sum())))  # rows of the global batch
        scale = self.batch_scale
        usage_decay = self.usage_decay**scale
        step = self.host_increment("steps", self.steps)
        if step == 1 and not bool(self.usage.any()):
            # k-means codes start at the uniform usage; random codes at what they won in
            # this first batch, so that those far from the data are re-seeded at once
            if self.init == "kmeans":
                self.usage.fill_(m / K)
            else:
                self.usage.copy_(counts)
        else:
            self.usage.mul_(usage_decay).add_(counts, alpha=1.0 - usage_decay)
        self.last_used.masked_fill_(counts > 0, step)

        if sums is not None:
            ema_decay = self.ema_decay**scale
            ema_count = self.ema_count.lerp(counts, 1.0 - ema_decay)
            ema_sum = self.ema_sum.lerp(sums.view(G, K, d), 1.0 - ema_decay)
            total = ema_count.sum(-1, keepdim=True)
            smoothed = (ema_count + self.eps) / (total + K * self.eps) * total
            codes = ema_sum / smoothed.unsqueeze(-1)
            if self.distance == "cosine":
                codes = F.normalize(codes, dim=-1)
            # never write inf/NaN into the codebook: raise before writing, or, under deferred
            # checks, keep the old state on the device and raise at the flush
            finite = torch.isfinite(codes).all()
            self.check_soon("ema update", finite, self._raise_on_overflow, torch.logical_and)
            if self.deferring_checks:
                ema_count = torch.where(finite, ema_count, self.ema_count)
                ema_sum = torch.where(finite, ema_sum, self.ema_sum)
                codes = torch.where(finite, codes, self.codebook)
            self.ema_count.copy_(ema_count)
            self.ema_sum.copy_(ema_sum)
            self.codebook.copy_(codes)

        if self.dead_code_threshold > 0:
            dead = self.usage < self.dead_code_threshold * scale
            # the same on every rank: the usage comes from the global counts
            if reseed_without_looking(self) or bool(dead.any()):
                fresh = reseed_codes(self.codebook.data, dead, x)
                if self.ema:
                    self.ema_sum.copy_(torch.where(dead.unsqueeze(-1), fresh, self.ema_sum))
                    self.ema_count.masked_fill_(dead, 1.0)
                self.usage.masked_fill_(dead, m / K)
                self.last_used.masked_fill_(dead, step)

    def _raise_on_overflow(self, finite: Tensor) -> None:
        if not bool(finite):
            raise ValueError(
                f"{type(self).__name__}: the EMA codebook update overflowed (features too large for float32 "
                "sums); the codebook was left unchanged"
            )

    def set_batch_scale(self, scale: float) -> None:
        """Train at ``scale`` times the batch the per-batch settings were chosen for.

        The EMA decays become ``ema_decay ** scale`` and ``usage_decay ** scale`` (the same
        memory counted in samples) and the dead-code threshold, in expected hits per batch,
        ``dead_code_threshold * scale``. The configured values stay as given; 1 undoes it.
        """
        if not scale > 0:
            raise ValueError(f"batch scale must be positive, got {scale}")
        self.batch_scale = float(scale)

    # --------------------------------------------------------------------- stats
    def _usage_metrics(self, counts: Tensor) -> dict[str, Tensor]:
        """``perplexity`` of this batch's codes, ``usage_perplexity`` of the running usage (a
        window of about ``1 / (1 - usage_decay)`` batches), ``dead_fraction``; in training, the
        collapse warning once the window of ``dead_window`` batches has filled."""
        dead = self.dead_fraction()
        metrics = {"perplexity": perplexity(counts), "usage_perplexity": perplexity(self.usage), "dead_fraction": dead}
        if self.training and self.collapse_threshold > 0 and self.host_value("steps", self.steps, int) >= self.dead_window:
            self.check_soon("collapse", dead, lambda d: warn_collapse(
                self, 1.0 - float(d), self.collapse_threshold,
                f"{self.groups * self.codebook_size} codes",
                "Try init='kmeans', ema=True with dead_code_threshold > 0, simvq=True, or a smaller codebook_size",
            ))
        return metrics

    def dead_fraction(self) -> Tensor:
        """Fraction of codes chosen in none of the last ``dead_window`` training batches (scalar)."""
        return dead_fraction(self.last_used, self.steps, self.dead_window, self.host_value("steps", self.steps, int))

    def suppress(self, codes: list[int], head: int = 0, suppressed: bool = True) -> None:
        """Never choose ``codes`` (of codebook ``head``) again, or allow them again.

        The low-level switch; on a trained model prefer the logged, reversible
        ``suppress_codes`` edit of :mod:`bottlenecks.editing`."""
        g = 0 if self.groups == 1 else head
        if not 0 <= g < self.groups:
            raise ValueError(f"head must lie in [0, {self.num_heads}), got {head}")
        idx = torch.as_tensor(codes, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got {codes}")
        self.blocked[g, idx] = suppressed
        if bool(self.blocked[g].all()):
            self.blocked[g, idx] = False
            raise ValueError("cannot suppress every code of a codebook")


# --------------------------------------------------------------------------- RVQ
class ResidualVectorQuantizer(Bottleneck):
    """Residual vector quantisation: ``num_quantizers`` stages, each quantising the residual.

    Stage ``i`` sees ``r_i = h - (q_1 + ... + q_{i-1})`` and the output is
    ``h + sg[q_1 + ... + q_S - h]`` (straight-through). Losses are summed over stages
    under the same names as :class:`VectorQuantizer`. Codes: ``(batch, num_quantizers)``.

    Args:
        in_features: width of the input features.
        num_quantizers: number of stages ``S``.
        codebook_size, distance, ema, ema_decay, eps, init, init_iters,
        dead_code_threshold, usage_decay, collapse_threshold: as in :class:`VectorQuantizer` (one
            codebook per stage).
        gradient: ``"straight_through"`` or ``"rotation"`` (the input rotated onto the sum of
            its stage codes; :func:`~bottlenecks.layers.codes.rotate_to`).
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        num_quantizers: int = 4,
        codebook_size: int = 256,
        distance: Distance = "euclidean",
        ema: bool = True,
        ema_decay: float = 0.99,
        eps: float = 1e-5,
        init: Literal["random", "kmeans"] = "kmeans",
        init_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
        gradient: Literal["straight_through", "rotation"] = "straight_through",
        collapse_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be positive, got {num_quantizers}")
        if distance == "cosine" and num_quantizers > 1:
            raise ValueError("residual quantisation needs euclidean codes (a cosine code has unit norm)")
        self.in_features = self.out_features = in_features
        self.num_quantizers = num_quantizers
        self.stages = nn.ModuleList(
            VectorQuantizer(
                in_features, codebook_size, num_heads=1, distance=distance, ema=ema, ema_decay=ema_decay, eps=eps,
                init=init, init_iters=init_iters,
                dead_code_threshold=dead_code_threshold, usage_decay=usage_decay,
                gradient=gradient, collapse_threshold=collapse_threshold,
            )
            for _ in range(num_quantizers)
        )
        self.gradient = gradient

    def needs_data_init(self) -> bool:
        return any(s.needs_data_init() for s in self.stages)

    @torch.no_grad()
    def init_from_data(
        self, h: Tensor, concepts: Tensor | None = None, y: Tensor | None = None, text: TextEncoder | None = None
    ) -> None:
        """k-means each stage in turn on the residual the previous stages leave ``(n, in_features)``."""
        self.check_input(h)
        r = h.float()
        for stage in self.stages:
            stage.init_from_data(r)
            idx = nearest_codes(stage._group(r), stage.codes_tensor(), 1, stage.distance)
            r = r - stage.codes_tensor()[0][idx[0]]

    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, in_features)``, ``codes`` ``(batch, S)``."""
        self.check_input(h)
        residual = h
        total = torch.zeros_like(h)
        codes, losses = [], {}
        metrics: dict[str, Tensor] = {}
        for i, stage in enumerate(self.stages):
            zi, ci, li, mi, _ = stage.quantize(residual)
            q = zi.detach()  # the forward value of the straight-through output is the code
            total = total + q
            residual = residual - q
            codes.append(ci[:, 0])
            for name, value in li.items():
                losses[name] = losses[name] + value if name in losses else value
            for name, value in mi.items():
                metrics[f"{name}_{i}"] = value
        S = len(self.stages)
        for name in ("perplexity", "usage_perplexity", "dead_fraction"):
            metrics[name] = torch.stack([metrics[f"{name}_{i}"] for i in range(S)]).mean()
        metrics["residual_mse"] = residual.detach().pow(2).mean()
        z = rotate_to(h, total) if self.gradient == "rotation" else straight_through(h, total)
        return BottleneckOutput(z=z, losses=losses, codes=torch.stack(codes, 1), metrics=metrics)

    def units(self) -> Units:
        K = self.stages[0].codebook_size
        return Units("code", tuple(f"stage{s}/code{k}" for s in range(self.num_quantizers) for k in range(K)))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        K = self.stages[0].codebook_size
        offsets = torch.arange(self.num_quantizers, device=out.codes.device) * K
        return one_hot_units(out.codes, self.num_quantizers * K, offsets)

    def unit_gates(self) -> dict[str, Tensor]:
        """``{"suppressed": (num_quantizers * codebook_size,)}``, stage by stage."""
        return {"suppressed": torch.cat([s.unit_gates()["suppressed"] for s in self.stages])}

    def set_unit_gates(self, gates: dict[str, Tensor]) -> None:
        g = self._check_gates(gates, ("suppressed",))["suppressed"]
        parts = g.view(self.num_quantizers, -1)
        for i, part in enumerate(parts):
            if bool(part.all()):
                raise ValueError(f"cannot suppress every code of stage {i}")
        for stage, part in zip(self.stages, parts):
            stage.set_unit_gates({"suppressed": part})


# --------------------------------------------------------------------------- FSQ
class _ImplicitCodebook(Bottleneck):
    """Units and code suppression shared by the quantisers whose codebook is implicit (FSQ's
    ``prod(levels)`` grid, LFQ's ``2 ** code_dim`` sign patterns): one unit per code, and a
    ``blocked`` buffer of ``(codebook_size,)`` codes replaced by the nearest allowed one."""

    codebook_size: int
    blocked: Tensor

    def units(self) -> Units:
        """The implicit codebook's codes."""
        return Units("code", tuple(f"code{k}" for k in range(self.codebook_size)))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        return one_hot_units(out.codes, self.codebook_size)

    def unit_gates(self) -> dict[str, Tensor]:
        """``{"suppressed": (codebook_size,)}`` — codes replaced by the nearest allowed one."""
        return {"suppressed": self.blocked.clone()}

    def set_unit_gates(self, gates: dict[str, Tensor]) -> None:
        g = self._check_gates(gates, ("suppressed",))["suppressed"]
        if bool(g.all()):
            raise ValueError("cannot suppress every code of the implicit codebook")
        self.blocked.copy_(g)


class FiniteScalarQuantizer(_ImplicitCodebook):
    """Finite scalar quantisation (Mentzer et al., 2023).

    ``h`` ``(batch, in_features)`` is projected to ``len(levels)`` scalars; scalar ``i`` is
    squashed into ``L_i`` levels (``tanh`` bound) and rounded with a straight-through
    gradient; the rounded vector, rescaled to ``[-1, 1]``, is projected back to
    ``out_features``. The implicit codebook has ``prod(levels)`` codes and the code of
    a vector is its mixed-radix index ``(batch, 1)``. No auxiliary loss.

    Args:
        in_features: width of the input features.
        levels: number of levels per scalar, e.g. ``[8, 5, 5, 5]`` (1000 codes).
        out_features: width of ``z`` (default ``in_features``).
    """

    def __init__(self, in_features: int, levels: list[int] | None = None, out_features: int | None = None) -> None:
        super().__init__()
        levels = list(levels) if levels is not None else [8, 5, 5, 5]
        if not levels or any(int(v) < 2 for v in levels):
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        self.in_features = in_features
        self.out_features = out_features or in_features
        self.levels = [int(v) for v in levels]
        self.codebook_size = math.prod(self.levels)
        lv = torch.tensor(self.levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1]), 0)
        self.register_buffer("_basis", basis, persistent=False)
        self.project_in = nn.Linear(in_features, len(self.levels))
        self.project_out = nn.Linear(len(self.levels), self.out_features)
        self.register_buffer("blocked", torch.zeros(self.codebook_size, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # checkpoints written before code suppression existed have no `blocked` buffer
        state_dict.setdefault(prefix + "blocked", torch.zeros(self.codebook_size, dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _bound(self, u: Tensor) -> Tensor:
        """Squash ``(batch, D)`` so that rounding gives ``L_i`` values per scalar."""
        half = (self._levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(u + shift) * half - offset

    def quantize_scalars(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Rounded scalars in ``[-1, 1]`` ``(batch, D)`` (straight-through) and codes ``(batch,)``."""
        b = self._bound(u)
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        if self.host_value("blocked", self.blocked, any_set):
            # suppressed codes: the nearest allowed point of the implicit codebook instead
            grid = self.codes_to_scalars(torch.arange(self.codebook_size, device=b.device)) * half_width
            dist = torch.cdist(b.detach(), grid).masked_fill(self.blocked, float("inf"))
            codes = dist.argmin(-1)
            return (b + (grid[codes] - b).detach()) / half_width, codes
        r = b + (torch.round(b) - b).detach()
        digits = (torch.round(b).detach() + half_width).long()
        codes = (digits * self._basis).sum(-1)
        return r / half_width, codes

    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, out_features)``, ``codes`` ``(batch, 1)``."""
        self.check_input(h)
        q, codes = self.quantize_scalars(self.project_in(h))
        counts = code_counts(codes, self.codebook_size).unsqueeze(0).to(h.dtype)
        return BottleneckOutput(
            z=self.project_out(q),
            codes=codes.unsqueeze(1),
            metrics={"perplexity": perplexity(counts)},
            extras={"scalars": q.detach()},
        )

    def codes_to_scalars(self, codes: Tensor) -> Tensor:
        """Code indices ``(n,)`` → their rounded scalars in ``[-1, 1]`` ``(n, D)``."""
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits - half_width) / half_width


# --------------------------------------------------------------------------- LFQ
#: the largest LFQ codebook whose usage entropy is computed exactly (above: per-bit bound)
LFQ_EXACT_ENTROPY_BITS = 12


class LookupFreeQuantizer(_ImplicitCodebook):
    """Lookup-free quantisation (LFQ; Yu et al., 2023, "Language Model Beats Diffusion").

    ``h`` ``(batch, in_features)`` is projected to ``code_dim`` scalars ``u``; each is replaced by
    its sign (``±1``, straight-through gradient), so the implicit codebook is ``{-1, 1} **
    code_dim`` — ``2 ** code_dim`` codes, no lookup and no codebook to learn; the ``±1`` vector is
    projected back to ``out_features``. The code of a vector is ``sum_i [u_i > 0] 2**i``.

    Losses (unweighted; weight them with the model's ``loss_weights``):

    * ``"entropy"`` = ``H[p(c | u)]`` averaged over the batch ``- diversity_weight * H[mean p(c | u)]``,
      with ``p(c | u) ∝ exp(2 u·c / temperature)``: the first term makes every vector confident
      of its code, the second spreads the batch over the whole codebook. ``p`` factorises over
      the bits, so the per-sample entropy is a sum of ``code_dim`` binary entropies; the
      codebook entropy is exact up to ``2 ** 12`` codes (one ``(batch, 2 ** code_dim)`` matmul)
      and above that the sum of the per-bit entropies of the batch (an upper bound).
    * ``"commitment"`` = ``mean (u - sign(u))²``.

    Metrics: ``perplexity`` (this batch), ``usage_perplexity`` (running usage),
    ``dead_fraction`` (codes unused in the last ``dead_window`` training batches),
    ``sample_entropy`` and ``codebook_entropy`` (nats); the collapse warning as in
    :class:`VectorQuantizer`.

    Units: the ``2 ** code_dim`` codes; suppressed codes are replaced by the allowed code of
    largest ``u·c`` (the nearest one).

    Args:
        in_features: width of the input features.
        code_dim: number of bits ``d`` (``1 <= d <= 16``; ``2 ** d`` codes).
        out_features: width of ``z`` (default ``in_features``).
        temperature: temperature of ``p(c | u)`` in the entropy loss.
        diversity_weight: weight of the codebook entropy inside ``"entropy"``.
        usage_decay, dead_window, collapse_threshold: as in :class:`VectorQuantizer`.
    """

    def __init__(
        self,
        in_features: int,
        code_dim: int = 10,
        out_features: int | None = None,
        temperature: float = 0.01,
        diversity_weight: float = 1.0,
        usage_decay: float = 0.99,
        dead_window: int = 100,
        collapse_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if not 1 <= code_dim <= 16:
            raise ValueError(
                f"code_dim must lie in [1, 16] (2 ** code_dim codes, each a unit), got {code_dim}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 < usage_decay < 1.0:
            raise ValueError(f"usage_decay must lie in (0, 1), got {usage_decay}")
        if not 0.0 <= collapse_threshold < 1.0:
            raise ValueError(f"collapse_threshold must lie in [0, 1), got {collapse_threshold}")
        self.in_features = in_features
        self.out_features = out_features or in_features
        self.code_dim = code_dim
        self.codebook_size = 2**code_dim
        self.temperature = temperature
        self.diversity_weight = diversity_weight
        self.usage_decay = usage_decay
        self.dead_window = dead_window
        self.collapse_threshold = collapse_threshold
        self.project_in = nn.Linear(in_features, code_dim)
        self.project_out = nn.Linear(code_dim, self.out_features)
        self.register_buffer("_basis", 2 ** torch.arange(code_dim), persistent=False)
        self.register_buffer("blocked", torch.zeros(self.codebook_size, dtype=torch.bool))
        self.register_buffer("usage", torch.zeros(1, self.codebook_size))
        self.register_buffer("last_used", torch.zeros(1, self.codebook_size, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def codes_to_bits(self, codes: Tensor) -> Tensor:
        """Code indices ``(n,)`` → their ``±1`` vectors ``(n, code_dim)``."""
        return ((codes.unsqueeze(-1) // self._basis) % 2).float() * 2 - 1

    def entropies(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Mean per-sample entropy and codebook entropy (nats) of ``p(c | u)`` for ``u`` ``(n, d)``."""
        s = 4 * u.float() / self.temperature  # logit of bit i being +1
        sp_pos, sp_neg = F.softplus(s), F.softplus(-s)
        p = torch.sigmoid(s)
        sample = (p * sp_neg + (1 - p) * sp_pos).sum(-1).mean()
        if self.code_dim <= LFQ_EXACT_ENTROPY_BITS:
            # log p(c | u) = -sum_i (softplus(s_i) + softplus(-s_i)) / 2 + (s / 2)·c
            grid = self.codes_to_bits(torch.arange(self.codebook_size, device=u.device))
            log_p = torch.addmm(-(sp_pos + sp_neg).sum(-1, keepdim=True) / 2, s / 2, grid.t())
            # clamped: exp of very negative values lands in float32's subnormal range, which
            # costs ~20x per element on CPUs; what is clamped adds below 1e-34 per code
            mean_p = log_p.clamp_min(-80.0).exp().mean(0)
            codebook = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
        else:
            q = p.mean(0).clamp(1e-6, 1 - 1e-6)
            codebook = -(q * q.log() + (1 - q) * (1 - q).log()).sum()
        return sample, codebook

    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, out_features)``, ``codes`` ``(batch, 1)``."""
        self.check_input(h)
        u = self.project_in(h)
        if self.host_value("blocked", self.blocked, any_set):
            grid = self.codes_to_bits(torch.arange(self.codebook_size, device=u.device))
            codes = (u.detach() @ grid.t()).masked_fill_(self.blocked, float("-inf")).argmax(-1)
            q = grid[codes].to(u.dtype)
        else:
            positive = u.detach() > 0
            codes = (positive.long() * self._basis).sum(-1)
            q = torch.where(positive, 1.0, -1.0).to(u.dtype)
        sample, codebook = self.entropies(u)
        losses = {
            "entropy": sample - self.diversity_weight * codebook,
            "commitment": F.mse_loss(u, q),
        }
        counts = code_counts(codes, self.codebook_size).unsqueeze(0).to(u.dtype)
        if self.training:
            with torch.no_grad():
                step = self.host_increment("steps", self.steps)
                self.usage.mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
                self.last_used.masked_fill_(counts > 0, step)
        steps = self.host_value("steps", self.steps, int)
        dead = dead_fraction(self.last_used, self.steps, self.dead_window, steps)
        metrics = {
            "perplexity": perplexity(counts),
            "usage_perplexity": perplexity(self.usage),
            "dead_fraction": dead,
            "sample_entropy": sample.detach(),
            "codebook_entropy": codebook.detach(),
        }
        if self.training and self.collapse_threshold > 0 and steps >= self.dead_window:
            self.check_soon("collapse", dead, lambda d: warn_collapse(
                self, 1.0 - float(d), self.collapse_threshold, f"{self.codebook_size} codes",
                "Raise the weight of the 'entropy' loss or its diversity_weight"))
        return BottleneckOutput(
            z=self.project_out(straight_through(u, q)), losses=losses, codes=codes.unsqueeze(1), metrics=metrics
        )
