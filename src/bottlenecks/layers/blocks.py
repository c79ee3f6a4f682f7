"""Building blocks shared by the bottleneck layers: MLPs and their activations.

(Intervention masking and the concept-label bookkeeping are part of the concept
contract in :mod:`bottlenecks.layers.base`; nearest-code search and k-means are in
:mod:`bottlenecks.layers.codes`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

Activation = Literal["relu", "tanh", "gelu", "leaky_relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (``"relu"``, ``"tanh"``, ``"gelu"``, ``"leaky_relu"``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def hidden_layers(
    in_features: int, hidden: Sequence[int], act: Activation = "relu", dropout: float = 0.0
) -> list[nn.Module]:
    """``[Linear, act, (Dropout), Linear, act, ...]`` through the ``hidden`` widths."""
    if dropout < 0 or dropout >= 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        if int(h) < 1:
            raise ValueError(f"hidden widths must be positive, got {list(hidden)}")
        layers += [nn.Linear(width, int(h)), activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    return layers


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    act: Activation = "relu",
    dropout: float = 0.0,
    sequential: bool = False,
) -> nn.Module:
    """A plain MLP ``Linear → act → ... → Linear``.

    Args:
        in_features, hidden, out_features: widths (empty ``hidden`` = one Linear).
        act: the hidden activation.
        dropout: dropout after each hidden activation.
        sequential: always return an ``nn.Sequential`` (its submodules are then addressable
            by index, ``encoder.0``, ``encoder.1``, ..., e.g. for the information-plane
            callback); otherwise a single Linear is returned as itself.
    """
    layers = hidden_layers(in_features, hidden, act, dropout)
    width = int(hidden[-1]) if len(hidden) else in_features
    layers.append(nn.Linear(width, out_features))
    if len(layers) == 1 and not sequential:
        return layers[0]
    return nn.Sequential(*layers)
