"""Nearest-code search, k-means and code statistics shared by the discrete bottlenecks.

Distances are computed as ``||x||² - 2 x·c + ||c||²`` — one ``addmm``/``baddbmm`` per
cache-sized block of rows, the ``||x||²`` term dropped (it does not change which code is
nearest) — so no ``(n, K, d)`` tensor is ever built. Every function works on ``groups``
of independent codebooks at once (heads, stages, key–value heads).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bottlenecks import distributed

Distance = Literal["euclidean", "cosine"]
DISTANCES = ("euclidean", "cosine")


def code_similarity(x: Tensor, codebook: Tensor, distance: Distance = "euclidean") -> Tensor:
    """Scores that are larger for nearer codes, in one batched matmul.

    Args:
        x: ``(groups, n, d)`` vectors (already L2-normalised for ``"cosine"``).
        codebook: ``(groups, K, d)`` codes (already L2-normalised for ``"cosine"``).
        distance: ``"euclidean"`` gives ``2 x·c - ||c||²`` (= ``||x||² - ||x - c||²``);
            ``"cosine"`` gives ``x·c``.

    Returns:
        ``(groups, n, K)`` scores.
    """
    ct = codebook.transpose(1, 2)
    if distance == "cosine":
        return torch.bmm(x, ct) if x.shape[0] > 1 else torch.mm(x[0], ct[0]).unsqueeze(0)
    neg_sq = codebook.pow(2).sum(-1).neg_()  # (G, K)
    if x.shape[0] == 1:
        return torch.addmm(neg_sq[0], x[0], ct[0], alpha=2.0).unsqueeze(0)
    return torch.baddbmm(neg_sq.unsqueeze(1), x, ct, alpha=2.0)


def nearest_codes(
    x: Tensor,
    codebook: Tensor,
    k: int = 1,
    distance: Distance = "euclidean",
    blocked: Tensor | None = None,
    max_scores: int = 2**19,
) -> Tensor:
    """Indices of the ``k`` nearest codes of every vector.

    The nearest code maximises ``x·c - ||c||²/2`` (euclidean) or ``x·c`` (cosine): one
    ``addmm``/``baddbmm`` per block of rows with the per-code term as its bias, computed once
    (blocked codes get a bias of ``-inf``, so masking costs nothing per row), then the index of
    the row maximum.
    Blocks of at most ``max_scores`` scores (default 2 MB of float32) go into one reused
    buffer: each block's maximum reads scores that are still in cache, which on a CPU makes
    the search cheaper than a single matmul writing all ``n × K`` scores to memory.

    Args:
        x: ``(groups, n, d)`` vectors (L2-normalised for ``"cosine"``).
        codebook: ``(groups, K, d)`` codes (L2-normalised for ``"cosine"``).
        k: how many codes per vector (``k <= K``).
        distance: ``"euclidean"`` or ``"cosine"``.
        blocked: optional ``(groups, K)`` bool; True codes are never chosen.
        max_scores: largest ``(groups, rows, K)`` score block held at once.

    Returns:
        ``(groups, n)`` int64 when ``k == 1``, else ``(groups, n, k)`` ordered nearest first.
    """
    G, n, _ = x.shape
    K = codebook.shape[1]
    if k > K:
        raise ValueError(f"top-k with k={k} needs at least k codes, but the codebook has {K}")
    with torch.no_grad():
        x = x.detach()
        codebook = codebook.detach().to(x.dtype)
        bias = None if distance == "cosine" else codebook.pow(2).sum(-1).mul_(-0.5)  # (G, K)
        if blocked is not None:
            base = bias if bias is not None else x.new_zeros(G, K)
            bias = base.masked_fill(blocked.to(base.device), float("-inf"))
        ct = codebook.transpose(1, 2)
        out = torch.empty((G, n) if k == 1 else (G, n, k), dtype=torch.long, device=x.device)
        if n == 0:
            return out
        g_step = max(1, min(G, max_scores // (K * n) if K * n <= max_scores else 1))
        rows = max(1, min(n, max_scores // (K * g_step)))
        buf = x.new_empty(g_step, rows, K)
        for g in range(0, G, g_step):
            gs = slice(g, min(G, g + g_step))
            gn = gs.stop - gs.start
            for r in range(0, n, rows):
                xb = x[gs, r : r + rows]
                scores = buf[:gn, : xb.shape[1]]
                if gn == 1:
                    s2 = scores[0]
                    if bias is None:
                        torch.mm(xb[0], ct[g], out=s2)
                    else:
                        torch.addmm(bias[g], xb[0], ct[g], out=s2)
                elif bias is None:
                    torch.bmm(xb, ct[gs], out=scores)
                else:
                    torch.baddbmm(bias[gs].unsqueeze(1), xb, ct[gs], out=scores)
                if k == 1:
                    # max's indices, not argmax: the same first-maximum index, and on CPUs
                    # torch's max(dim) kernel is 2.5x faster than its argmax (measured on
                    # (1024, 512) float32 blocks: 0.29 vs 0.75 ms, one thread)
                    out[gs, r : r + rows] = scores.max(-1).indices
                else:
                    out[gs, r : r + rows] = scores.topk(k, dim=-1).indices
        return out


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 10,
    distance: Distance = "euclidean",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Lloyd's k-means run independently in every group, batched over groups.

    Centroids start at ``k`` distinct random samples; a centroid that loses all its
    points keeps its previous position.

    Args:
        x: ``(groups, n, d)`` finite samples, ``n >= k``.
        k: number of centroids.
        iters: Lloyd iterations.
        distance: ``"cosine"`` runs spherical k-means (unit-norm centroids).
        generator: random source for the initial choice (default: torch's global RNG).

    Returns:
        ``(groups, k, d)`` centroids.
    """
    if x.dim() != 3:
        raise ValueError(f"kmeans expects samples of shape (groups, n, d), got {tuple(x.shape)}")
    G, n, d = x.shape
    if n < k:
        raise ValueError(f"k-means with {k} centroids needs at least {k} samples, got {n}")
    if not torch.isfinite(x).all():
        raise ValueError("k-means samples contain NaN or inf; refusing to write them into a codebook")
    x = x.detach().float()
    if distance == "cosine":
        x = F.normalize(x, dim=-1)
    start = torch.rand(G, n, generator=generator, device=x.device).topk(k, dim=1).indices  # distinct
    centroids = x.gather(1, start.unsqueeze(-1).expand(G, k, d)).clone()
    offsets = (torch.arange(G, device=x.device) * k).unsqueeze(1)
    flat_x = x.reshape(G * n, d)
    for _ in range(iters):
        assign = nearest_codes(x, centroids, 1, distance)  # (G, n)
        flat = (assign + offsets).reshape(-1)
        sums = torch.zeros(G * k, d, device=x.device).index_add_(0, flat, flat_x)
        counts = code_counts(flat, G * k).to(x.dtype).unsqueeze(-1)
        means = (sums / counts.clamp_min(1.0)).view(G, k, d)
        if distance == "cosine":
            means = F.normalize(means, dim=-1)
        centroids = torch.where(counts.view(G, k, 1) > 0, means, centroids)
    return centroids


@torch.no_grad()
def reseed_codes(codebook: Tensor, dead: Tensor, x: Tensor) -> Tensor:
    """Overwrite dead codes in place with random input vectors (dead-code replacement).

    Under several processes every rank must call this with the same ``dead`` (a collective):
    rank 0's random inputs are broadcast, so every rank writes the same codes.

    Args:
        codebook: ``(groups, K, d)`` codes, modified in place where ``dead``.
        dead: ``(groups, K)`` bool.
        x: ``(groups, m, d)`` finite inputs of the current batch.

    Returns:
        the ``(groups, K, d)`` random inputs drawn (only rows where ``dead`` were used).
    """
    G, K, d = codebook.shape
    pick = torch.randint(x.shape[1], (G, K), device=x.device)
    fresh = x.gather(1, pick.unsqueeze(-1).expand(G, K, d)).to(codebook.dtype).contiguous()
    distributed.broadcast_(fresh)
    codebook.copy_(torch.where(dead.unsqueeze(-1), fresh, codebook))
    return fresh


def any_set(t: Tensor) -> bool:
    """``bool(t.any())`` — the reader :meth:`Bottleneck.host_value` caches for gate masks."""
    return bool(t.any())


def reseed_without_looking(layer: Any) -> bool:
    """Whether ``layer``'s dead-code replacement may run without first reading whether any code
    is dead (a device sync): under deferred checks in one process — the replacement is masked,
    so with no dead code it writes nothing, at the cost of K random picks. Several processes
    look first: there the replacement broadcasts rank 0's picks (``K × d`` values), which
    would otherwise be sent every step; the ranks agree on the answer (global usage)."""
    return layer.deferring_checks and not distributed.is_distributed()


def code_counts(codes: Tensor, n: int) -> Tensor:
    """How often each of ``n`` codes occurs in ``codes`` (any shape, int64): ``(n,)`` int64.

    ``torch.bincount``'s values, without its device sync on a GPU (it reads the largest code
    to size its output; here the size is given)."""
    flat = codes.reshape(-1)
    return torch.zeros(n, dtype=torch.long, device=codes.device).scatter_add_(0, flat, torch.ones_like(flat))


def dead_fraction(last_used: Tensor, steps: Tensor, window: int, now: int | None = None) -> Tensor:
    """Fraction of codes chosen in none of the last ``window`` training batches (scalar).

    Args:
        last_used: ``(groups, K)`` the step at which each code was last chosen (0 = never).
        steps: scalar count of training steps so far.
        window: batches without a hit after which a code counts as dead (before ``window``
            steps have passed: codes never chosen yet).
        now: ``int(steps)`` when the caller holds it on the host (no device read then).
    """
    now = int(steps) if now is None else now
    if now == 0:
        return torch.zeros((), device=last_used.device)
    stale = last_used == 0 if now < window else (steps - last_used) >= window
    return stale.float().mean()


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of each row of code counts ``(groups, K)``, averaged over groups (scalar)."""
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return ent.exp().mean()


class _StraightThrough(torch.autograd.Function):
    """Forward: ``q`` (no copy); backward: the output gradient goes to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor) -> Tensor:  # noqa: ANN001
        return q.view_as(q)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return grad, None


def straight_through(x: Tensor, q: Tensor) -> Tensor:
    """The value of ``q`` with the gradient of ``x`` — ``x + sg[q - x]`` (VQ-VAE) — without the
    two elementwise passes that formula costs; no gradient reaches ``q`` through it."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q.detach()
    return _StraightThrough.apply(x, q.detach())


def rotate_to(x: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """The rotation trick (Fifty et al., 2024): the value of ``q``, reached from ``x`` by a
    rotation and a rescaling that the backward pass treats as constants.

    With ``u = x / |x|``, ``v = q / |q|`` and ``w = (u + v) / |u + v|``, the rotation
    ``R = I - 2 w wᵀ + 2 v uᵀ`` maps ``u`` onto ``v`` (in the plane of the two, identity
    elsewhere) and ``λ = |q| / |x|``; the output is ``λ R x`` with ``λ`` and ``R`` detached.
    Its value is ``q``; its gradient to ``x`` is ``λ Rᵀ g`` for an output gradient ``g``:
    the gradient turns with the vector, so its angle to ``x`` is the angle of ``g`` to ``q``
    (the straight-through estimator copies ``g`` unchanged). Computed without building ``R``.

    Args:
        x: ``(..., d)`` inputs (encoder side; the gradient reaches them).
        q: ``(..., d)`` their codes (no gradient flows to them through this output).

    Returns:
        ``(..., d)``, equal to ``q``.
    """
    x_norm = x.detach().norm(dim=-1, keepdim=True).clamp_min(eps)
    q = q.detach()
    q_norm = q.norm(dim=-1, keepdim=True)
    u = x.detach() / x_norm
    v = q / q_norm.clamp_min(eps)
    w = F.normalize(u + v, dim=-1, eps=eps)
    rotated = (x - 2 * (x * w).sum(-1, keepdim=True) * w + 2 * (x * u).sum(-1, keepdim=True) * v) * (q_norm / x_norm)
    # the value is q exactly (also for a zero input, where the rotation is undefined)
    return rotated + (q - rotated).detach()


def warn_collapse(owner: object, alive: float, threshold: float, what: str = "codes", hint: str = "") -> bool:
    """Warn once per layer (rank zero only) when the fraction of ``what`` still in use falls
    below ``threshold``; returns True when it warned now. ``owner`` keeps a plain flag
    ``_collapse_warned``, so the warning is not repeated every step."""
    if threshold <= 0 or alive >= threshold or getattr(owner, "_collapse_warned", False):
        return False
    import warnings

    import torch.distributed as dist

    owner._collapse_warned = True  # type: ignore[attr-defined]
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return False
    warnings.warn(
        f"{type(owner).__name__}: codebook collapse: only {alive:.0%} of the {what} were used in the recent "
        f"window (threshold {threshold:.0%}){'. ' + hint if hint else ''}",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
