"""Synthetic data with many grouped, correlated concepts, shaped like CUB's class-level attributes.

``groups`` attribute groups of ``group_size`` values each (``K = groups * group_size``
concepts, named ``g03::v1`` like CUB's ``has_wing_color::blue``). Every class has one value
on per group (drawn once per class, so concepts co-occur through the class); an example's
concepts are its class's, and its features are a noisy linear image of them. Used by the
ECBM / group-intervention tests and ``benchmarks/interventions_groups.py``.
"""

from __future__ import annotations

import torch


def grouped_concepts(n: int = 2000, num_classes: int = 20, groups: int = 28, group_size: int = 4,
                     d: int = 64, noise: float = 3.0, seed: int = 0):
    """``(x, concepts, y, names, groups)``: features ``(n, d)``, concepts ``(n, K)``, labels
    ``(n,)``, the concept names and ``{group name: [concept names]}``."""
    g = torch.Generator().manual_seed(seed)
    on = torch.randint(0, group_size, (num_classes, groups), generator=g)  # value per (class, group)
    proto = torch.zeros(num_classes, groups, group_size)
    proto.scatter_(2, on[..., None], 1.0)
    proto = proto.flatten(1)  # (classes, K)
    y = torch.randint(0, num_classes, (n,), generator=g)
    c = proto[y]
    w = torch.randn(c.shape[1], d, generator=g) / group_size**0.5
    x = c @ w + noise * torch.randn(n, d, generator=g) / d**0.5 * 4
    names = [f"g{i:02d}::v{j}" for i in range(groups) for j in range(group_size)]
    grouping = {f"g{i:02d}": names[i * group_size : (i + 1) * group_size] for i in range(groups)}
    return x, c, y, names, grouping
