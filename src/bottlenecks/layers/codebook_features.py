"""Codebook features (Tamkin et al., 2023): hidden states as sums of a few discrete codes.

:class:`CodebookFeatures` replaces a hidden vector ``h`` by the sum of the ``k``
codes of its codebook most similar to it (cosine similarity by default). The forward
value is the code sum; the backward pass sends the downstream gradient to the chosen
codes *and*, straight through, to ``h``. Optional unweighted losses pull codes and
inputs together (``"reconstruction"``: codes towards ``sg[h]``; ``"commitment"``:
``h`` towards ``sg[codes]``).

:func:`insert_codebooks` puts codebooks into any ``nn.Module`` at submodules named
by their dotted path (``"blocks.0.mlp"``) with forward hooks — no hand-editing of
the network. The returned :class:`CodebookModel` records the codes of every forward
pass, can bypass the codebooks, and can force or suppress codes at inference.
:func:`find_codes` and :func:`code_purity` relate codes to conditions and labels.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.layers.base import Bottleneck, BottleneckOutput
from bottlenecks.layers.quantize import Distance, code_similarity, kmeans, nearest_codes, perplexity, reseed_codes


class CodebookFeatures(Bottleneck):
    """Top-k codebook layer: ``h`` ``(batch, in_features)`` → sum of its ``k`` nearest codes.

    Interventions (inference-time edits, stored in buffers so they travel with the
    checkpoint): :meth:`force` makes codes always active (they take the slots of the
    weakest chosen codes), :meth:`suppress` makes codes never active,
    :meth:`clear_interventions` undoes both.

    Args:
        in_features: width of the hidden vectors.
        codebook_size: number of codes ``K`` (``K >= k``).
        k: codes active per vector.
        similarity: ``"cosine"`` (the paper's choice) or ``"euclidean"`` nearest codes;
            the summed codes themselves are not normalised.
        kmeans_init: initialise the codes by k-means on a sample of hidden vectors
            (:meth:`init_from_data`).
        kmeans_iters: Lloyd iterations of that initialisation.
        dead_code_threshold: running usage (EMA of activations per batch, decay
            ``usage_decay``) below which a code is re-seeded from a random input of the
            batch during training; 0 disables replacement.
        usage_decay: decay of that running usage.

    Output: ``z`` ``(batch, in_features)``, ``codes`` ``(batch, k)`` (most similar first),
    losses ``"reconstruction"`` and ``"commitment"`` (unweighted), extras ``counts``
    ``(1, K)`` and ``log_perplexity``.
    """

    def __init__(
        self,
        in_features: int,
        codebook_size: int = 1024,
        k: int = 8,
        similarity: Distance = "cosine",
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if codebook_size < k:
            raise ValueError(
                f"codebook_size={codebook_size} is smaller than k={k}: top-k needs at least k codes"
            )
        if similarity not in ("cosine", "euclidean"):
            raise ValueError(f"similarity must be 'cosine' or 'euclidean', got {similarity!r}")
        self.in_features = self.out_features = in_features
        self.codebook_size = codebook_size
        self.k = k
        self.similarity = similarity
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
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
        self.register_buffer("initialised", torch.tensor(not kmeans_init))

    # ------------------------------------------------------------------- stages
    def needs_data_init(self) -> bool:
        return self.kmeans_init and not bool(self.initialised)

    @torch.no_grad()
    def init_from_data(self, h: Tensor) -> None:
        """k-means codes from hidden vectors ``(n, in_features)``, ``n >= codebook_size``."""
        self.check_input(h)
        if h.shape[0] < self.codebook_size:
            raise ValueError(
                f"k-means initialisation of {self.codebook_size} codes needs at least "
                f"{self.codebook_size} vectors, got {h.shape[0]}"
            )
        codes = kmeans(h.float().unsqueeze(0), self.codebook_size, self.kmeans_iters, self.similarity)[0]
        if self.similarity == "cosine":  # keep the scale of the data (as re-seeded codes have)
            codes = codes * h.norm(dim=-1).mean()
        self.codebook.data.copy_(codes)
        self.initialised.fill_(True)

    # ---------------------------------------------------------------- selection
    def select(self, h: Tensor) -> Tensor:
        """Indices ``(batch, k)`` of the active codes of ``h`` ``(batch, in_features)``, interventions applied."""
        n_forced = int(self.forced.sum())
        if n_forced > self.k:
            raise ValueError(f"{n_forced} codes are forced but only k={self.k} can be active")
        x, cb = h.detach(), self.codebook.detach()
        if self.similarity == "cosine":
            x, cb = F.normalize(x, dim=-1), F.normalize(cb, dim=-1)
        if n_forced == 0 and not bool(self.suppressed.any()):
            idx = nearest_codes(x.unsqueeze(0), cb.unsqueeze(0), self.k, self.similarity)[0]
            return idx.unsqueeze(-1) if self.k == 1 else idx
        with torch.no_grad():
            scores = code_similarity(x.unsqueeze(0), cb.unsqueeze(0), self.similarity)[0]
            scores.masked_fill_(self.suppressed, float("-inf"))
            scores.masked_fill_(self.forced, float("inf"))
            return scores.topk(self.k, dim=-1).indices

    def forward(
        self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None
    ) -> BottleneckOutput:
        """``h`` ``(batch, in_features)`` → ``z`` ``(batch, in_features)``, ``codes`` ``(batch, k)``."""
        self.check_input(h)
        idx = self.select(h)
        q = F.embedding(idx, self.codebook).sum(1)  # (batch, in_features)
        z = q + (h - h.detach())  # value: the code sum; gradient: to codes and straight through to h
        losses = {
            "reconstruction": F.mse_loss(q, h.detach()),
            "commitment": F.mse_loss(h, q.detach()),
        }
        counts = torch.bincount(idx.reshape(-1), minlength=self.codebook_size).unsqueeze(0).to(h.dtype)
        if self.training:
            self._track_usage(h.detach(), counts[0])
        extras = {"counts": counts, "log_perplexity": perplexity(counts)}
        return BottleneckOutput(z=z, losses=losses, codes=idx, extras=extras)

    @torch.no_grad()
    def _track_usage(self, h: Tensor, counts: Tensor) -> None:
        """Running usage and dead-code replacement (training only)."""
        expected = counts.sum() / self.codebook_size
        if not bool(self.usage.any()):  # first training batch: start at the uniform usage
            self.usage.fill_(float(expected))
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
        if self.dead_code_threshold > 0:
            dead = self.usage < self.dead_code_threshold
            if bool(dead.any()):
                reseed_codes(self.codebook.data.unsqueeze(0), dead.unsqueeze(0), h.unsqueeze(0))
                self.usage.masked_fill_(dead, float(expected))

    # ------------------------------------------------------------ interventions
    def _check_codes(self, codes: list[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(codes, dtype=torch.long, device=self.forced.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got {idx.tolist()}")
        return idx

    def force(self, codes: list[int] | Tensor) -> None:
        """Make ``codes`` active for every input (at most ``k`` forced codes)."""
        idx = self._check_codes(codes)
        if int((self.forced.clone().index_fill_(0, idx, True)).sum()) > self.k:
            raise ValueError(f"cannot force more than k={self.k} codes")
        self.forced[idx] = True
        self.suppressed[idx] = False

    def suppress(self, codes: list[int] | Tensor) -> None:
        """Never activate ``codes``."""
        idx = self._check_codes(codes)
        if int((self.suppressed.clone().index_fill_(0, idx, True)).sum()) > self.codebook_size - self.k:
            raise ValueError(f"suppressing these codes would leave fewer than k={self.k} codes")
        self.suppressed[idx] = True
        self.forced[idx] = False

    def clear_interventions(self) -> None:
        """Undo every :meth:`force` and :meth:`suppress`."""
        self.forced.zero_()
        self.suppressed.zero_()


# --------------------------------------------------------------------------- hooks
def _key(name: str) -> str:
    return name.replace(".", "__")


def _infer_width(module: nn.Module, name: str) -> int:
    if isinstance(module, nn.Sequential):  # the last child that changes the width decides
        for child in reversed(list(module)):
            try:
                return _infer_width(child, name)
            except ValueError:
                continue
    for attr in ("out_features", "embedding_dim", "hidden_size", "d_model"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1])
    raise ValueError(
        f"cannot tell the output width of layer {name!r} ({type(module).__name__}); pass "
        f"widths={{{name!r}: WIDTH}}"
    )


class CodebookModel(nn.Module):
    """A network with codebooks inserted at named layers through forward hooks.

    The wrapped network is unchanged; each hooked layer's output (a tensor
    ``(..., width)`` or a tuple whose first item is one) is replaced by its codebook's
    output. After every forward pass, :attr:`codes` maps each layer name to the active
    codes ``(..., k)`` and :meth:`codebook_losses` gives the summed unweighted losses.

    Built by :func:`insert_codebooks`. ``bypass=True`` leaves outputs untouched (codes
    are still recorded).
    """

    def __init__(self, model: nn.Module, codebooks: dict[str, CodebookFeatures]) -> None:
        super().__init__()
        self.model = model
        self.codebooks = nn.ModuleDict({_key(n): cb for n, cb in codebooks.items()})
        self.layer_names = list(codebooks)
        self.bypass = False
        self.codes: dict[str, Tensor] = {}
        self._losses: dict[str, dict[str, Tensor]] = {}
        modules = dict(model.named_modules())
        missing = [n for n in codebooks if n not in modules]
        if missing:
            raise ValueError(f"no submodule named {missing} in {type(model).__name__}")
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in codebooks]

    def codebook(self, layer: str) -> CodebookFeatures:
        """The codebook inserted at ``layer``."""
        if _key(layer) not in self.codebooks:
            raise KeyError(f"no codebook at layer {layer!r}; layers with codebooks: {self.layer_names}")
        return self.codebooks[_key(layer)]  # type: ignore[return-value]

    def _hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            cb = self.codebooks[_key(name)]
            hidden = output[0] if isinstance(output, tuple) else output
            if not torch.is_tensor(hidden):
                raise TypeError(f"layer {name!r} returned {type(hidden).__name__}; a codebook needs a tensor")
            flat = hidden.reshape(-1, hidden.shape[-1])
            if self.bypass:
                self.codes[name] = cb.select(flat).reshape(*hidden.shape[:-1], cb.k)
                self._losses[name] = {}
                return None
            out = cb(flat)
            self.codes[name] = out.codes.reshape(*hidden.shape[:-1], cb.k)
            self._losses[name] = out.losses
            z = out.z.reshape(hidden.shape)
            return (z, *output[1:]) if isinstance(output, tuple) else z

        return hook

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.codes, self._losses = {}, {}
        return self.model(*args, **kwargs)

    def codebook_losses(self) -> dict[str, Tensor]:
        """Unweighted losses of the last forward pass, summed over layers by name."""
        total: dict[str, Tensor] = {}
        for losses in self._losses.values():
            for name, value in losses.items():
                total[name] = total[name] + value if name in total else value
        return total

    @contextmanager
    def bypassed(self) -> Iterator[CodebookModel]:
        """Context in which the codebooks leave every output untouched."""
        prev, self.bypass = self.bypass, True
        try:
            yield self
        finally:
            self.bypass = prev

    @contextmanager
    def intervene(
        self, layer: str, force: list[int] | None = None, suppress: list[int] | None = None
    ) -> Iterator[CodebookModel]:
        """Context forcing and/or suppressing codes of ``layer``; restored on exit."""
        cb = self.codebook(layer)
        saved = cb.forced.clone(), cb.suppressed.clone()
        try:
            if suppress:
                cb.suppress(suppress)
            if force:
                cb.force(force)
            yield self
        finally:
            cb.forced.copy_(saved[0])
            cb.suppressed.copy_(saved[1])

    def remove(self) -> nn.Module:
        """Remove the hooks and return the original network."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model


def insert_codebooks(
    model: nn.Module,
    layers: list[str],
    codebook_size: int = 1024,
    k: int = 8,
    similarity: Distance = "cosine",
    dead_code_threshold: float = 0.0,
    widths: dict[str, int] | None = None,
) -> CodebookModel:
    """Insert a :class:`CodebookFeatures` after each named layer of ``model`` (forward hooks).

    Args:
        model: any network.
        layers: dotted names of submodules (as in ``model.named_modules()``).
        codebook_size, k, similarity, dead_code_threshold: settings of every codebook
            (see :class:`CodebookFeatures`).
        widths: output width per layer where it cannot be read from the module
            (``out_features``, ``embedding_dim``, ``normalized_shape``, ...).

    Returns:
        A :class:`CodebookModel` whose parameters are the network's plus the codebooks'.
    """
    if not layers:
        raise ValueError("insert_codebooks needs at least one layer name")
    modules = dict(model.named_modules())
    widths = dict(widths or {})
    books: dict[str, CodebookFeatures] = {}
    for name in layers:
        if name not in modules:
            close = [n for n in modules if n and name.split(".")[-1] in n][:5]
            raise ValueError(f"no submodule named {name!r} in {type(model).__name__}; similar names: {close}")
        width = widths.get(name) or _infer_width(modules[name], name)
        books[name] = CodebookFeatures(
            width, codebook_size=codebook_size, k=k, similarity=similarity, dead_code_threshold=dead_code_threshold
        )
    return CodebookModel(model, books)


# ------------------------------------------------------------------------ analysis
def code_label_counts(codes: Tensor, labels: Tensor, codebook_size: int, num_labels: int) -> Tensor:
    """Joint counts ``(codebook_size, num_labels)`` of code firings and labels.

    Args:
        codes: ``(n, k)`` (or ``(n,)``) active codes per example.
        labels: ``(n,)`` int labels.
    """
    codes = codes.reshape(codes.shape[0], -1)
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(f"codes have {codes.shape[0]} rows but labels have {labels.shape[0]}")
    pairs = codes * num_labels + labels.long().unsqueeze(1)
    return torch.bincount(pairs.reshape(-1), minlength=codebook_size * num_labels).view(codebook_size, num_labels)


def code_purity(codes: Tensor, labels: Tensor, codebook_size: int, num_labels: int) -> tuple[float, Tensor]:
    """How well codes identify labels.

    Purity = (sum over codes of the count of its most frequent label) / (all firings):
    1.0 when every code fires for one label only.

    Args:
        codes: ``(n, k)`` active codes; labels: ``(n,)``.

    Returns:
        ``(purity, majority)``: the purity and each code's majority label ``(codebook_size,)``
        (-1 for codes that never fire).
    """
    joint = code_label_counts(codes, labels, codebook_size, num_labels)
    best, majority = joint.max(1)
    majority = torch.where(joint.sum(1) > 0, majority, torch.full_like(majority, -1))
    return float(best.sum()) / max(1, int(joint.sum())), majority


def find_codes(
    codes: Tensor,
    condition: Tensor,
    codebook_size: int,
    min_precision: float = 0.5,
    min_count: int = 1,
) -> list[dict[str, float]]:
    """Codes that fire when ``condition`` holds.

    Args:
        codes: ``(n, k)`` active codes per example (e.g. ``CodebookModel.codes[layer]``
            flattened to rows).
        condition: ``(n,)`` bool, the property to look for.
        codebook_size: number of codes.
        min_precision: keep codes with ``P(condition | code fires) >= min_precision``.
        min_count: keep codes that fire at least this often.

    Returns:
        ``[{"code", "precision", "recall", "count"}, ...]`` sorted by precision, then recall.
    """
    codes = codes.reshape(codes.shape[0], -1)
    cond = condition.reshape(-1).bool()
    if cond.shape[0] != codes.shape[0]:
        raise ValueError(f"codes have {codes.shape[0]} rows but condition has {cond.shape[0]}")
    fired = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    hits = torch.bincount(codes[cond].reshape(-1), minlength=codebook_size).float()
    precision = hits / fired.clamp_min(1)
    recall = hits / max(1, int(cond.sum()))
    keep = (fired >= min_count) & (precision >= min_precision) & (hits > 0)
    order = sorted(keep.nonzero().flatten().tolist(), key=lambda c: (-precision[c].item(), -recall[c].item()))
    return [
        {"code": c, "precision": precision[c].item(), "recall": recall[c].item(), "count": int(fired[c])}
        for c in order
    ]


__all__ = [
    "CodebookFeatures",
    "CodebookModel",
    "code_label_counts",
    "code_purity",
    "find_codes",
    "insert_codebooks",
]
