"""Nearest-code search, k-means and code statistics shared by the discrete bottlenecks.

Distances are computed as ``||x||² - 2 x·c + ||c||²`` — one ``addmm``/``baddbmm`` per
cache-sized block of rows, the ``||x||²`` term dropped (it does not change which code is
nearest) — so no ``(n, K, d)`` tensor is ever built. Every function works on ``groups``
of independent codebooks at once (heads, stages, key–value heads).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

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
    max_scores: int = 2**20,
) -> Tensor:
    """Indices of the ``k`` nearest codes of every vector.

    Args:
        x: ``(groups, n, d)`` vectors (L2-normalised for ``"cosine"``).
        codebook: ``(groups, K, d)`` codes (L2-normalised for ``"cosine"``).
        k: how many codes per vector (``k <= K``).
        distance: ``"euclidean"`` or ``"cosine"``.
        blocked: optional ``(groups, K)`` bool; True codes are never chosen.
        max_scores: largest ``(groups, n, K)`` score block held at once (default 4 MB of
            float32); bigger problems are scored block by block — same result, bounded
            memory, and each block's argmax reads scores that are still in cache.

    Returns:
        ``(groups, n)`` int64 when ``k == 1``, else ``(groups, n, k)`` ordered nearest first.
    """
    G, n, _ = x.shape
    K = codebook.shape[1]
    if k > K:
        raise ValueError(f"top-k with k={k} needs at least k codes, but the codebook has {K}")
    with torch.no_grad():
        if G * n * K <= max_scores or n == 0:
            return _nearest(x, codebook, k, distance, blocked)
        # bounded memory: score a block of groups × rows at a time
        rows = max(1, max_scores // K)
        out = torch.empty((G, n) if k == 1 else (G, n, k), dtype=torch.long, device=x.device)
        g_step = max(1, rows // n)
        for g in range(0, G, g_step):
            gs = slice(g, g + g_step)
            b = blocked[gs] if blocked is not None else None
            r_step = max(1, rows // min(g_step, G - g))
            for r in range(0, n, r_step):
                out[gs, r : r + r_step] = _nearest(x[gs, r : r + r_step], codebook[gs], k, distance, b)
        return out


def _nearest(x: Tensor, codebook: Tensor, k: int, distance: Distance, blocked: Tensor | None) -> Tensor:
    scores = code_similarity(x, codebook, distance)
    if blocked is not None:
        scores.masked_fill_(blocked.unsqueeze(1), float("-inf"))
    if k == 1:
        return scores.argmax(-1)
    return scores.topk(k, dim=-1).indices


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
        counts = torch.bincount(flat, minlength=G * k).to(x.dtype).unsqueeze(-1)
        means = (sums / counts.clamp_min(1.0)).view(G, k, d)
        if distance == "cosine":
            means = F.normalize(means, dim=-1)
        centroids = torch.where(counts.view(G, k, 1) > 0, means, centroids)
    return centroids


@torch.no_grad()
def reseed_codes(codebook: Tensor, dead: Tensor, x: Tensor) -> Tensor:
    """Overwrite dead codes in place with random input vectors (dead-code replacement).

    Args:
        codebook: ``(groups, K, d)`` codes, modified in place where ``dead``.
        dead: ``(groups, K)`` bool.
        x: ``(groups, m, d)`` finite inputs of the current batch.

    Returns:
        the ``(groups, K, d)`` random inputs drawn (only rows where ``dead`` were used).
    """
    G, K, d = codebook.shape
    pick = torch.randint(x.shape[1], (G, K), device=x.device)
    fresh = x.gather(1, pick.unsqueeze(-1).expand(G, K, d)).to(codebook.dtype)
    codebook.copy_(torch.where(dead.unsqueeze(-1), fresh, codebook))
    return fresh


def dead_fraction(last_used: Tensor, steps: Tensor, window: int) -> Tensor:
    """Fraction of codes chosen in none of the last ``window`` training batches (scalar).

    Args:
        last_used: ``(groups, K)`` the step at which each code was last chosen (0 = never).
        steps: scalar count of training steps so far.
        window: batches without a hit after which a code counts as dead (before ``window``
            steps have passed: codes never chosen yet).
    """
    if int(steps) == 0:
        return torch.zeros((), device=last_used.device)
    stale = last_used == 0 if int(steps) < window else (steps - last_used) >= window
    return stale.float().mean()


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of each row of code counts ``(groups, K)``, averaged over groups (scalar)."""
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return ent.exp().mean()


def straight_through(x: Tensor, q: Tensor) -> Tensor:
    """The value of ``q`` with the gradient of ``x``: ``x + sg[q - x]`` (VQ-VAE)."""
    return x + (q - x).detach()


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
        ``(..., d)``, equal to ``q`` up to rounding.
    """
    x_norm = x.detach().norm(dim=-1, keepdim=True).clamp_min(eps)
    q = q.detach()
    q_norm = q.norm(dim=-1, keepdim=True)
    u = x.detach() / x_norm
    v = q / q_norm.clamp_min(eps)
    w = F.normalize(u + v, dim=-1, eps=eps)
    rotated = x - 2 * (x * w).sum(-1, keepdim=True) * w + 2 * (x * u).sum(-1, keepdim=True) * v
    return rotated * (q_norm / x_norm)


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
