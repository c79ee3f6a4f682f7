"""Code analysis: how the codes of a discrete bottleneck relate to labels and conditions."""

from __future__ import annotations

import torch
from torch import Tensor


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
