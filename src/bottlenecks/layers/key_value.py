"""Discrete key–value bottleneck (Träuble et al., 2023).

A frozen encoder's features ``(batch, in_features)`` are split (or randomly
projected) into ``C`` heads. Head ``c`` owns ``J`` *keys* — fixed after they are
initialised on unlabelled data — and ``J`` learnable *values*. Each head fetches
the values of its ``top_k`` nearest keys; a decoder reads the fetched values.

Only fetched values receive gradient, so learning a new class changes the values
of the keys that class's inputs fetch and nothing else: the property that makes
the model resist forgetting in class-incremental learning.

The two-stage recipe lives in the LightningModule flow through the bottleneck
contract: :meth:`DiscreteKeyValueBottleneck.needs_data_init` is True until the keys
are set, and :class:`~bottlenecks.models.BottleneckModel` calls
:meth:`~DiscreteKeyValueBottleneck.init_from_data` with a sample of training
features at fit start (k-means or EMA on those features, labels unused). Keys are
buffers, so no optimiser ever sees them; values are the only parameters.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks import distributed
from bottlenecks.layers.base import Bottleneck, BottleneckOutput, TextEncoder, Units, one_hot_units
from bottlenecks.layers.codes import Distance, code_counts, kmeans, nearest_codes
from bottlenecks.naming import accepts_renamed


class DiscreteKeyValueBottleneck(Bottleneck):
    """Discrete key–value bottleneck.

    Args:
        in_features: width of the (frozen) encoder features.
        num_heads: number of heads ``C`` (codebooks).
        keys_per_head: keys (and values) per head ``J``.
        code_dim: width of a head's keys. With ``projection="split"`` it is
            ``in_features // num_heads`` (``num_heads`` must divide ``in_features``);
            with ``projection="random"`` it defaults to ``max(1, in_features // num_heads)``.
        projection: ``"split"`` cuts the features into ``C`` contiguous chunks;
            ``"random"`` projects them with ``C`` fixed Gaussian matrices (a buffer).
        value_dim: width of a value. Default: ``num_classes`` — for the non-parametric
            decoder it must be, since the averaged fetched values are the class logits.
        num_classes: number of classes (linked from the data by the CLI).
        top_k: keys fetched per head.
        decoder: ``"nonparametric"`` — ``z`` ``(batch, value_dim)`` is the mean of all
            fetched values: ``z`` are the class logits, and
            the model then adds no head (:attr:`predicts_task`); ``"concat"`` — ``z`` ``(batch, num_heads * value_dim)`` concatenates each
            head's (top-k averaged) values for a small learned decoder, which is the
            model's ``head`` (a Linear by default, an MLP with ``head_hidden``).
        init: ``"kmeans"`` (Lloyd, batched over heads), ``"ema"`` (online
            mini-batch EMA updates from random samples, as in the paper), or
            ``"random"`` (Gaussian keys, no data needed).
        init_iters: k-means iterations, or EMA passes over the sample.
        ema_decay: decay of the EMA key initialisation.
        init_batch_size: mini-batch size of the EMA key initialisation.
        distance: ``"euclidean"`` or ``"cosine"`` nearest keys.
        value_init: ``"zeros"`` (un-fetched classes start neutral) or ``"normal"``.

    The non-parametric decoder averages over ``num_heads * top_k`` values, so each value
    receives ``1 / (num_heads * top_k)`` of the gradient: scale the learning rate with
    the number of heads (``lr ≈ num_heads`` with plain SGD works on the digits stream).

    Extras: ``counts`` ``(num_heads, keys_per_head)`` key usage in this batch; the
    buffer ``usage`` accumulates the counts of every training batch; metric
    ``keys_used_fraction``. Codes: ``(batch, num_heads, top_k)`` indices of the fetched
    keys, nearest first. Units: the ``num_heads * keys_per_head`` key–value pairs
    (``head{c}/key{j}``), active (1) in the examples that fetch them.
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        num_heads: int = 8,
        keys_per_head: int = 64,
        code_dim: int | None = None,
        projection: Literal["split", "random"] = "split",
        value_dim: int | None = None,
        top_k: int = 1,
        decoder: Literal["nonparametric", "concat"] = "nonparametric",
        init: Literal["kmeans", "ema", "random"] = "kmeans",
        init_iters: int = 10,
        ema_decay: float = 0.95,
        init_batch_size: int = 256,
        distance: Distance = "euclidean",
        value_init: Literal["zeros", "normal"] = "zeros",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if value_dim is None:
            if num_classes is None:
                raise ValueError(
                    "DiscreteKeyValueBottleneck needs value_dim or num_classes (the non-parametric "
                    "decoder's values are class logits)"
                )
            value_dim = num_classes
        if decoder == "nonparametric" and num_classes is not None and value_dim != num_classes:
            raise ValueError(
                f"the non-parametric decoder's values are class logits, so value_dim={value_dim} must "
                f"equal num_classes={num_classes}"
            )
        if in_features < 1 or num_heads < 1 or keys_per_head < 1 or value_dim < 1:
            raise ValueError(
                "in_features, num_heads, keys_per_head and value_dim must be positive, got "
                f"{in_features}, {num_heads}, {keys_per_head}, {value_dim}"
            )
        if projection not in ("split", "random"):
            raise ValueError(f"projection must be 'split' or 'random', got {projection!r}")
        if projection == "split":
            if in_features % num_heads != 0:
                raise ValueError(
                    f"num_heads={num_heads} does not divide in_features={in_features}; with "
                    "projection='split' every head takes an equal chunk (use a divisor or "
                    "projection='random')"
                )
            if code_dim is not None and code_dim != in_features // num_heads:
                raise ValueError(
                    f"with projection='split' code_dim is in_features // num_heads = "
                    f"{in_features // num_heads}, got code_dim={code_dim}"
                )
            code_dim = in_features // num_heads
        else:
            code_dim = code_dim or max(1, in_features // num_heads)
        if not 1 <= top_k <= keys_per_head:
            raise ValueError(
                f"top_k={top_k} must lie in [1, keys_per_head={keys_per_head}]: a head cannot "
                "fetch more keys than it has"
            )
        if decoder not in ("nonparametric", "concat"):
            raise ValueError(f"decoder must be 'nonparametric' or 'concat', got {decoder!r}")
        if value_init not in ("zeros", "normal"):
            raise ValueError(f"value_init must be 'zeros' or 'normal', got {value_init!r}")
        if init not in ("kmeans", "ema", "random"):
            raise ValueError(f"init must be 'kmeans', 'ema' or 'random', got {init!r}")
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay}")
        self.in_features = in_features
        self.num_heads = num_heads
        self.keys_per_head = keys_per_head
        self.code_dim = code_dim
        self.num_classes = num_classes
        self.projection = projection
        self.value_dim = value_dim
        self.top_k = top_k
        self.decoder = decoder
        self.init = init
        self.init_iters = init_iters
        self.ema_decay = ema_decay
        self.init_batch_size = init_batch_size
        self.distance = distance
        self.out_features = value_dim if decoder == "nonparametric" else num_heads * value_dim

        C, J = num_heads, keys_per_head
        if projection == "random":
            # C Gaussian matrices (in_features, code_dim), stored side by side for one matmul
            self.register_buffer("proj", torch.randn(in_features, C * code_dim) / in_features**0.5)
        else:
            self.proj = None
        keys = torch.randn(C, J, code_dim)
        self.register_buffer("keys", F.normalize(keys, dim=-1) if distance == "cosine" else keys)
        self.register_buffer("keys_initialised", torch.tensor(init == "random"))
        self.register_buffer("usage", torch.zeros(C, J))
        start = torch.zeros(C, J, value_dim) if value_init == "zeros" else torch.randn(C, J, value_dim) * 0.02
        self.values = nn.Parameter(start)
        self.register_buffer("_offsets", (torch.arange(C) * J).view(C, 1, 1), persistent=False)

    @property
    def predicts_task(self) -> bool:
        """True for the non-parametric decoder: ``z`` already is the class logits, so
        :class:`~bottlenecks.models.BottleneckModel` uses no head of its own."""
        return self.decoder == "nonparametric"

    # ------------------------------------------------------------------ helpers
    def project(self, h: Tensor) -> Tensor:
        """Heads of the features: ``(batch, in_features)`` → ``(num_heads, batch, code_dim)``."""
        x = h if self.proj is None else h @ self.proj
        x = x.reshape(h.shape[0], self.num_heads, self.code_dim).transpose(0, 1)
        return F.normalize(x, dim=-1) if self.distance == "cosine" else x

    def fetch(self, h: Tensor) -> Tensor:
        """Indices of the fetched keys ``(num_heads, batch, top_k)`` for features ``(batch, in_features)``."""
        if not self.host_value("keys_initialised", self.keys_initialised, bool):
            raise RuntimeError(
                "DiscreteKeyValueBottleneck keys are not initialised: call init_from_data(features) "
                "first (BottleneckModel does this at fit start), or use init='random'"
            )
        idx = nearest_codes(self.project(h.detach()), self.keys, self.top_k, self.distance)
        return idx if self.top_k > 1 else idx.unsqueeze(-1)

    # ------------------------------------------------------------------- stages
    def needs_data_init(self) -> bool:
        return not bool(self.keys_initialised)

    @torch.no_grad()
    def init_from_data(
        self, h: Tensor, concepts: Tensor | None = None, y: Tensor | None = None, text: TextEncoder | None = None
    ) -> None:
        """Set the keys from unlabelled features ``(n, in_features)`` (labels unused) and freeze them.

        ``n`` must be at least ``keys_per_head``. Usage counts restart from zero.
        """
        self.check_input(h)
        n = h.shape[0]
        if n < self.keys_per_head:
            raise ValueError(
                f"key initialisation needs at least keys_per_head={self.keys_per_head} samples, "
                f"got {n}; pass more unlabelled features or use fewer keys"
            )
        x = self.project(h.float())
        if self.init == "ema":
            keys = self._ema_keys(x)
        else:
            keys = kmeans(x, self.keys_per_head, self.init_iters, self.distance)
        if not torch.isfinite(keys).all():
            raise ValueError("key initialisation produced NaN or inf keys; refusing to store them")
        self.keys.copy_(keys)
        self.keys_initialised.fill_(True)
        self.usage.zero_()

    def _ema_keys(self, x: Tensor) -> Tensor:
        """Online EMA (VQ-style) key learning: ``(C, n, code_dim)`` → ``(C, J, code_dim)``."""
        C, n, d = x.shape
        J = self.keys_per_head
        start = torch.rand(C, n, device=x.device).topk(J, dim=1).indices
        keys = x.gather(1, start.unsqueeze(-1).expand(C, J, d)).clone()
        count = torch.ones(C, J, device=x.device)
        total = keys.clone()
        offsets = (torch.arange(C, device=x.device) * J).unsqueeze(1)
        bs = min(self.init_batch_size, n)
        for _ in range(max(1, self.init_iters)):
            order = torch.randperm(n, device=x.device)
            for s in range(0, n - bs + 1, bs):
                xb = x[:, order[s : s + bs]]
                flat = (nearest_codes(xb, keys, 1, self.distance) + offsets).reshape(-1)
                sums = torch.zeros(C * J, d, device=x.device).index_add_(0, flat, xb.reshape(C * bs, d))
                counts = code_counts(flat, C * J).view(C, J).float()
                count.lerp_(counts, 1 - self.ema_decay)
                total.lerp_(sums.view(C, J, d), 1 - self.ema_decay)
                keys = total / count.clamp_min(1e-5).unsqueeze(-1)
                if self.distance == "cosine":
                    keys = F.normalize(keys, dim=-1)
        return keys

    # ------------------------------------------------------------------ forward
    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, out_features)``, codes ``(batch, num_heads, top_k)``."""
        self.check_input(h)
        n = h.shape[0]
        C, J, k = self.num_heads, self.keys_per_head, self.top_k
        idx = self.fetch(h)  # (C, n, k)
        flat = idx + self._offsets  # rows of values.view(C * J, value_dim)
        table = self.values.view(C * J, self.value_dim)
        if self.decoder == "nonparametric":
            # mean over heads and top-k of the fetched values, without building (C, n, k, v)
            z = F.embedding_bag(flat.permute(1, 0, 2).reshape(n, C * k), table, mode="mean")
        else:
            z = F.embedding_bag(flat.permute(1, 0, 2).reshape(n * C, k), table, mode="mean")
            z = z.view(n, C * self.value_dim)
        counts = code_counts(flat, C * J).view(C, J).to(h.dtype)
        if self.training:
            self.usage += distributed.all_reduce_sum_(counts)  # the global batch's usage on every rank
        return BottleneckOutput(
            z=z,
            codes=idx.permute(1, 0, 2),
            metrics={"keys_used_fraction": (counts > 0).float().mean()},
            extras={"counts": counts},
        )

    def units(self) -> Units:
        return Units(
            "key", tuple(f"head{c}/key{j}" for c in range(self.num_heads) for j in range(self.keys_per_head))
        )

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        C, J, k = self.num_heads, self.keys_per_head, self.top_k
        offsets = (torch.arange(C, device=out.codes.device) * J).repeat_interleave(k)
        return one_hot_units(out.codes, C * J, offsets)

    def unit_table(self) -> Tensor:
        """The values ``(num_heads * keys_per_head, value_dim)``, row ``c * J + j`` = unit
        ``head{c}/key{j}`` (a view of :attr:`values`)."""
        return self.values.data.view(self.num_heads * self.keys_per_head, self.value_dim)

    # -------------------------------------------------------------- optimiser
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Optimiser settings that keep un-fetched values bit-identical under any optimiser.

        A value that was not fetched in a step has zero gradient. Plain SGD then leaves
        it exactly unchanged, but momentum, Adam's first moment or (decoupled) weight
        decay would still move it. This group turns those off for the values only:
        ``momentum=0`` (SGD), ``betas=(0, 0.999)`` (Adam/AdamW: the update is
        ``g / (sqrt(v) + eps)``, exactly zero when ``g`` is zero — an RMSProp-like step)
        and ``weight_decay=0``. Keys have no parameters (they are frozen buffers).

        Returns:
            ``[{"params": [values], "momentum": 0.0, "betas": (0.0, 0.999), "weight_decay": 0.0}]``
            (each optimiser reads the keys it knows).
        """
        return [{"params": [self.values], "momentum": 0.0, "betas": (0.0, 0.999), "weight_decay": 0.0}]

    def key_usage(self) -> Tensor:
        """Accumulated training usage ``(num_heads, keys_per_head)`` (a copy)."""
        return self.usage.clone()
