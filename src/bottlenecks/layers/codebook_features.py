"""Codebook features (Tamkin et al., 2023): hidden states as sums of a few discrete codes.

:class:`CodebookFeatures` replaces a hidden vector ``h`` by the sum of the ``top_k``
codes of its codebook most similar to it (cosine similarity by default). The forward
value is the code sum; the backward pass sends the downstream gradient to the chosen
codes *and*, straight through, to ``h``. Optional unweighted losses pull codes and
inputs together (``"reconstruction"``: codes towards ``sg[h]``; ``"commitment"``:
``h`` towards ``sg[codes]``).

:func:`~bottlenecks.layers.surgery.insert_codebooks` puts codebooks into any
``nn.Module`` at submodules named by their dotted path (``"blocks.0.mlp"``) with
forward hooks; :func:`~bottlenecks.analysis.codes.find_codes` and
:func:`~bottlenecks.analysis.codes.code_purity` relate codes to conditions and labels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks import distributed
from bottlenecks.layers.base import Bottleneck, BottleneckOutput, TextEncoder, Units, one_hot_units
from bottlenecks.layers.codes import (
    Distance,
    any_set,
    code_counts,
    code_similarity,
    kmeans,
    nearest_codes,
    perplexity,
    reseed_codes,
    reseed_without_looking,
)
from bottlenecks.naming import accepts_renamed


class CodebookFeatures(Bottleneck):
    """Top-k codebook layer: ``h`` ``(batch, in_features)`` → sum of its ``top_k`` nearest codes.

    Interventions (inference-time edits, stored in buffers so they travel with the
    checkpoint): :meth:`force` makes codes always active (they take the slots of the
    weakest chosen codes), :meth:`suppress` makes codes never active,
    :meth:`clear_interventions` undoes both. These are the low-level switches
    (:meth:`unit_gates`); on a trained model prefer the logged, reversible edits
    ``force_codes`` / ``suppress_codes`` of :mod:`bottlenecks.editing`.

    Args:
        in_features: width of the hidden vectors.
        codebook_size: number of codes ``K`` (``K >= top_k``).
        top_k: codes active per vector.
        distance: ``"cosine"`` (the paper's choice) or ``"euclidean"`` nearest codes;
            the summed codes themselves are not normalised.
        init: ``"random"`` or ``"kmeans"``: the codes by k-means on a sample of hidden vectors
            (:meth:`init_from_data`).
        init_iters: Lloyd iterations of the k-means initialisation.
        dead_code_threshold: running usage (EMA of activations per batch, decay
            ``usage_decay``) below which a code is re-seeded from a random input of the
            batch during training; 0 disables replacement.
        usage_decay: decay of that running usage.

    Output: ``z`` ``(batch, in_features)``, ``codes`` ``(batch, top_k)`` (most similar first),
    losses ``"reconstruction"`` and ``"commitment"`` (unweighted), metric ``perplexity``,
    extras ``counts`` ``(1, K)``. Units: the ``K`` codes, active (1) in the examples that
    chose them.
    """

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        codebook_size: int = 1024,
        top_k: int = 8,
        distance: Distance = "cosine",
        init: Literal["random", "kmeans"] = "random",
        init_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if codebook_size < top_k:
            raise ValueError(
                f"codebook_size={codebook_size} is smaller than top_k={top_k}: top-k needs at least top_k codes"
            )
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
        if init not in ("random", "kmeans"):
            raise ValueError(f"init must be 'random' or 'kmeans', got {init!r}")
        self.in_features = self.out_features = in_features
        self.codebook_size = codebook_size
        self.top_k = top_k
        self.distance = distance
        self.init = init
        self.init_iters = init_iters
        if dead_code_threshold < 0 or not 0.0 < usage_decay < 1.0:
            raise ValueError(
                f"dead_code_threshold must be >= 0 and usage_decay in (0, 1), got {dead_code_threshold}, {usage_decay}"
            )
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = usage_decay
        self.codebook = nn.Parameter(torch.randn(codebook_size, in_features) / in_features**0.5)
        self.register_buffer("usage", torch.zeros(codebook_size))
        self.register_buffer("forced", torch.zeros(codebook_size, dtype=torch.bool))
        self.register_buffer("suppressed", torch.zeros(codebook_size, dtype=torch.bool))
        self.register_buffer("initialised", torch.tensor(init == "random"))

    # ------------------------------------------------------------------- stages
    def needs_data_init(self) -> bool:
        return self.init == "kmeans" and not bool(self.initialised)

    @torch.no_grad()
    def init_from_data(
        self, h: Tensor, concepts: Tensor | None = None, y: Tensor | None = None, text: TextEncoder | None = None
    ) -> None:
        """k-means codes from hidden vectors ``(n, in_features)``, ``n >= codebook_size``."""
        self.check_input(h)
        if h.shape[0] < self.codebook_size:
            raise ValueError(
                f"k-means initialisation of {self.codebook_size} codes needs at least "
                f"{self.codebook_size} vectors, got {h.shape[0]}"
            )
        codes = kmeans(h.float().unsqueeze(0), self.codebook_size, self.init_iters, self.distance)[0]
        if self.distance == "cosine":  # keep the scale of the data (as re-seeded codes have)
            codes = codes * h.norm(dim=-1).mean()
        self.codebook.data.copy_(codes)
        self.initialised.fill_(True)

    # ---------------------------------------------------------------- selection
    def select(self, h: Tensor) -> Tensor:
        """Indices ``(batch, top_k)`` of the active codes of ``h`` ``(batch, in_features)``, interventions applied."""
        n_forced = self.host_value("forced", self.forced, lambda t: int(t.sum()))
        if n_forced > self.top_k:
            raise ValueError(f"{n_forced} codes are forced but only top_k={self.top_k} can be active")
        x, cb = h.detach(), self.codebook.detach()
        if self.distance == "cosine":
            x, cb = F.normalize(x, dim=-1), F.normalize(cb, dim=-1)
        if n_forced == 0 and not self.host_value("suppressed", self.suppressed, any_set):
            idx = nearest_codes(x.unsqueeze(0), cb.unsqueeze(0), self.top_k, self.distance)[0]
            return idx.unsqueeze(-1) if self.top_k == 1 else idx
        with torch.no_grad():
            scores = code_similarity(x.unsqueeze(0), cb.unsqueeze(0), self.distance)[0]
            scores.masked_fill_(self.suppressed, float("-inf"))
            scores.masked_fill_(self.forced, float("inf"))
            return scores.topk(self.top_k, dim=-1).indices

    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, in_features)``, ``codes`` ``(batch, top_k)``."""
        self.check_input(h)
        idx = self.select(h)
        q = F.embedding(idx, self.codebook).sum(1)  # (batch, in_features)
        z = q + (h - h.detach())  # value: the code sum; gradient: to codes and straight through to h
        losses = {
            "reconstruction": F.mse_loss(q, h.detach()),
            "commitment": F.mse_loss(h, q.detach()),
        }
        counts = code_counts(idx, self.codebook_size).unsqueeze(0).to(h.dtype)
        if self.training:
            self._track_usage(h.detach(), counts[0])
        return BottleneckOutput(
            z=z, losses=losses, codes=idx, metrics={"perplexity": perplexity(counts)}, extras={"counts": counts}
        )

    def units(self) -> Units:
        return Units("code", tuple(f"code{k}" for k in range(self.codebook_size)))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        return one_hot_units(out.codes, self.codebook_size)

    @torch.no_grad()
    def _track_usage(self, h: Tensor, counts: Tensor) -> None:
        """Running usage and dead-code replacement (training only).

        Under several processes the counts are summed over ranks first (in place), so the
        usage and the dead codes are the same on every rank and the re-seeded codes are rank 0's.
        """
        distributed.all_reduce_sum_(counts)
        expected = counts.sum() / self.codebook_size
        # first training batch (no usage yet): start at the uniform usage
        self.usage.copy_(torch.where(self.usage.any(), self.usage, expected))
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
        if self.dead_code_threshold > 0:
            dead = self.usage < self.dead_code_threshold
            if reseed_without_looking(self) or bool(dead.any()):
                reseed_codes(self.codebook.data.unsqueeze(0), dead.unsqueeze(0), h.unsqueeze(0))
                self.usage.masked_fill_(dead, expected)

    # ------------------------------------------------------------ interventions
    def _check_codes(self, codes: list[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(codes, dtype=torch.long, device=self.forced.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got {idx.tolist()}")
        return idx

    def force(self, codes: list[int] | Tensor) -> None:
        """Make ``codes`` active for every input (at most ``k`` forced codes)."""
        idx = self._check_codes(codes)
        if int((self.forced.clone().index_fill_(0, idx, True)).sum()) > self.top_k:
            raise ValueError(f"cannot force more than top_k={self.top_k} codes")
        self.forced[idx] = True
        self.suppressed[idx] = False

    def suppress(self, codes: list[int] | Tensor) -> None:
        """Never activate ``codes``."""
        idx = self._check_codes(codes)
        if int((self.suppressed.clone().index_fill_(0, idx, True)).sum()) > self.codebook_size - self.top_k:
            raise ValueError(f"suppressing these codes would leave fewer than top_k={self.top_k} codes")
        self.suppressed[idx] = True
        self.forced[idx] = False

    def unit_gates(self) -> dict[str, Tensor]:
        """``{"forced": (K,), "suppressed": (K,)}`` — the switches of :meth:`force` / :meth:`suppress`."""
        return {"forced": self.forced.clone(), "suppressed": self.suppressed.clone()}

    def set_unit_gates(self, gates: dict[str, Tensor]) -> None:
        g = self._check_gates(gates, ("forced", "suppressed"))
        forced, suppressed = g["forced"].to(self.forced.device), g["suppressed"].to(self.forced.device)
        if bool((forced & suppressed).any()):
            both = (forced & suppressed).nonzero().flatten().tolist()
            raise ValueError(f"codes {both} cannot be both forced and suppressed")
        if int(forced.sum()) > self.top_k:
            raise ValueError(f"cannot force more than top_k={self.top_k} codes, got {int(forced.sum())}")
        if int(suppressed.sum()) > self.codebook_size - self.top_k:
            raise ValueError(f"suppressing {int(suppressed.sum())} codes would leave fewer than top_k={self.top_k} codes")
        self.forced.copy_(forced)
        self.suppressed.copy_(suppressed)

    def unit_table(self) -> Tensor:
        """The codes ``(codebook_size, in_features)`` (a view of the codebook)."""
        return self.codebook.data

    def clear_interventions(self) -> None:
        """Undo every :meth:`force` and :meth:`suppress`."""
        self.forced.zero_()
        self.suppressed.zero_()




# Network surgery and code analysis live in their own modules; imported here for old import paths.
from bottlenecks.analysis.codes import code_label_counts, code_purity, find_codes  # noqa: E402
from bottlenecks.layers.surgery import CodebookModel, insert_codebooks  # noqa: E402

__all__ = [
    "CodebookFeatures",
    "CodebookModel",
    "code_label_counts",
    "code_purity",
    "find_codes",
    "insert_codebooks",
]
