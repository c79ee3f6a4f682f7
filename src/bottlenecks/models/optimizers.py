"""Muon for the weight matrices, AdamW for everything else, as one optimiser.

Muon (Keller Jordan, 2024) orthogonalises the momentum of a 2-D weight matrix by a few
Newton–Schulz iterations before the update, so every direction of the matrix moves at the
same rate. It is meant for the matrices of hidden layers; biases, gains, embeddings and
codebooks, and the output layer, train with AdamW — the split of the reference
implementation. Both halves are torch's own optimisers (``torch.optim.Muon``,
``torch.optim.AdamW``); :class:`MuonAdamW` runs them as one ``Optimizer`` so that Lightning's
single-optimiser loop, learning-rate schedules and checkpoints see one object.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the parameter groups marked ``use_muon=True`` (2-D matrices only), AdamW on the rest.

    Muon's step uses ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's scaling): its updates have
    the RMS of AdamW's, so one ``lr`` and ``weight_decay`` serve both halves.

    Args:
        params: parameter groups (dicts); ``use_muon`` (default False) says which half a group
            joins. A group's own keys (``lr``, ``betas``, ``momentum``, ...) are kept.
        lr: learning rate of both halves.
        weight_decay: decoupled weight decay of both halves.
        momentum: Muon's momentum (Nesterov).
        betas, eps: AdamW's.
        ns_steps: Newton–Schulz iterations of Muon.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        ns_steps: int = 5,
    ) -> None:
        super().__init__(list(params), {"lr": lr, "weight_decay": weight_decay, "use_muon": False})
        for group in self.param_groups:
            if group["use_muon"]:
                bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                if bad:
                    raise ValueError(f"Muon updates 2-D weight matrices only; got parameters of shapes {bad}")
        self._muon_options = {"momentum": momentum, "nesterov": True, "ns_steps": ns_steps,
                              "adjust_lr_fn": "match_rms_adamw"}
        self._adamw_options = {"betas": betas, "eps": eps}
        self._bind()

    def _bind(self) -> None:
        """Hand each group (the same dict objects, so schedules reach them) to its half; the
        halves share this optimiser's state, so ``state_dict`` sees all of it."""
        self._halves: list[torch.optim.Optimizer] = []
        muon = [g for g in self.param_groups if g["use_muon"]]
        adamw = [g for g in self.param_groups if not g["use_muon"]]
        if muon:
            self._halves.append(torch.optim.Muon(muon, **self._muon_options))
        if adamw:
            self._halves.append(torch.optim.AdamW(adamw, **self._adamw_options))
        for half in self._halves:
            half.param_groups = [g for g in self.param_groups if g["use_muon"] == isinstance(half, torch.optim.Muon)]
            half.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # new group dicts: bind them again
        self._bind()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for half in self._halves:
            half.step()
        return loss


def muon_matrices(model: nn.Module, head: nn.Module | None = None) -> set[int]:
    """Ids of the parameters Muon should update: the 2-D weights of every ``nn.Linear`` in
    ``model`` except the output layer (the last ``nn.Linear`` of ``head``)."""
    out = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m.weight.ndim == 2}
    if head is not None:
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if linears:
            out.discard(id(linears[-1].weight))
    return out


def split_for_muon(groups: list[dict[str, Any]], matrices: set[int]) -> list[dict[str, Any]]:
    """Each parameter group split into its Muon part (``use_muon=True``, parameters in
    ``matrices``) and its AdamW part, keeping the group's own settings; empty parts dropped."""
    out = []
    for group in groups:
        params = list(group["params"])
        for use_muon in (True, False):
            part = [p for p in params if (id(p) in matrices) == use_muon]
            if part:
                out.append({**group, "params": part, "use_muon": use_muon})
    return out
