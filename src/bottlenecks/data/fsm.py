"""Finite-state-machine token sequences, for codebook experiments (Tamkin et al., 2023).

A random machine has ``n_states`` states; each state has ``out_degree`` distinct
successors, chosen uniformly at random once per ``seed``. A sequence is a random walk
(uniform over the successors), written token by token: state ``s`` becomes ``digits``
tokens, its base-``base`` digits, most significant first. A model trained on
next-token prediction must therefore track the hidden state — with ``n_states``
larger than its hidden width it cannot give every state its own unit, which is the
setting in which codebook features were shown to recover the states as codes.

Items (one sequence each)::

    {"x": (seq_tokens - 1,) int64 tokens,
     "y": (seq_tokens - 1,) int64 next tokens,
     "state": (seq_tokens - 1,) int64 state being written at each position of x,
     "digit": (seq_tokens - 1,) int64 which digit of that state x is (0 = first),
     "index": int}
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bottlenecks.data.base import stable_hash


class FSMDataset(Dataset):
    """Random walks on a random finite-state machine, as next-token prediction data.

    Args:
        n_states: number of states.
        out_degree: successors per state (``1 <= out_degree <= n_states``).
        digits: tokens per state.
        base: token vocabulary size; default the smallest base with
            ``base ** digits >= n_states``.
        walk_length: states per sequence (sequence length ``walk_length * digits`` tokens).
        n_sequences: number of sequences.
        split: ``"train"``, ``"val"`` or ``"test"`` — same machine, independent walks.
        seed: seed of the machine (and, with ``split``, of the walks).

    Attributes:
        transitions: ``(n_states, out_degree)`` successor table.
        num_classes: vocabulary size (next-token classes).
    """

    task = "classification"
    concept_names = None

    def __init__(
        self,
        n_states: int = 100,
        out_degree: int = 4,
        digits: int = 1,
        base: int | None = None,
        walk_length: int = 32,
        n_sequences: int = 1000,
        split: Literal["train", "val", "test"] = "train",
        seed: int = 0,
    ) -> None:
        if n_states < 2:
            raise ValueError(f"n_states must be at least 2, got {n_states}")
        if not 1 <= out_degree <= n_states:
            raise ValueError(f"out_degree must lie in [1, n_states={n_states}], got {out_degree}")
        if digits < 1 or walk_length < 2 or n_sequences < 1:
            raise ValueError(
                f"digits, n_sequences must be >= 1 and walk_length >= 2, got {digits}, {n_sequences}, {walk_length}"
            )
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if base is None:
            base = 2
            while base**digits < n_states:
                base += 1
        if base**digits < n_states:
            raise ValueError(f"{digits} base-{base} digits write {base ** digits} states, fewer than n_states={n_states}")
        self.n_states, self.out_degree, self.digits, self.base = n_states, out_degree, digits, base
        self.walk_length, self.n_sequences, self.split, self.seed = walk_length, n_sequences, split, seed
        self.num_classes = base

        g = torch.Generator().manual_seed(seed)
        self.transitions = torch.rand(n_states, n_states, generator=g).topk(out_degree, dim=1).indices
        self.transitions = self.transitions.sort(dim=1).values

        gw = torch.Generator().manual_seed(seed * 1000 + 1 + ("train", "val", "test").index(split))
        states = torch.empty(n_sequences, walk_length, dtype=torch.long)
        states[:, 0] = torch.randint(n_states, (n_sequences,), generator=gw)
        choice = torch.randint(out_degree, (n_sequences, walk_length), generator=gw)
        for t in range(1, walk_length):  # a walk is sequential; vectorised over sequences
            states[:, t] = self.transitions[states[:, t - 1], choice[:, t]]
        self.states = states  # (n_sequences, walk_length)
        tokens = self.encode_states(states)  # (n, walk_length * digits)
        self.tokens = tokens
        self.token_state = states.repeat_interleave(digits, dim=1)
        self.token_digit = torch.arange(digits).repeat(walk_length).expand(n_sequences, -1)

    # ------------------------------------------------------------------ codec
    def encode_states(self, states: Tensor) -> Tensor:
        """States ``(..., L)`` → tokens ``(..., L * digits)`` (base-``base`` digits, most significant first)."""
        powers = self.base ** torch.arange(self.digits - 1, -1, -1)
        digits = (states.unsqueeze(-1) // powers) % self.base
        return digits.reshape(*states.shape[:-1], states.shape[-1] * self.digits)

    def successors(self, state: int | Tensor) -> Tensor:
        """Successor states of ``state`` (``(out_degree,)``, or ``(n, out_degree)`` for a tensor)."""
        return self.transitions[state]

    def next_token_sets(self) -> Tensor:
        """``(n_states, base)`` bool: which first tokens a successor of each state can start with."""
        first = self.encode_states(self.transitions.reshape(-1, 1))[:, 0].view(self.n_states, self.out_degree)
        out = torch.zeros(self.n_states, self.base, dtype=torch.bool)
        return out.scatter_(1, first, True)

    # ---------------------------------------------------------------- dataset
    def __len__(self) -> int:
        return self.n_sequences

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"FSMDataset[{self.split}] has {len(self)} sequences, index {index} is out of range")
        t = self.tokens[index]
        return {
            "x": t[:-1],
            "y": t[1:],
            "state": self.token_state[index, :-1],
            "digit": self.token_digit[index, :-1],
            "index": int(index) % len(self),
        }

    def targets(self) -> Tensor:
        """Next tokens of every sequence ``(n_sequences, seq_tokens - 1)``."""
        return self.tokens[:, 1:].clone()

    def fingerprint(self) -> str:
        return stable_hash(
            {"dataset": "FSMDataset", "n_states": self.n_states, "out_degree": self.out_degree,
             "digits": self.digits, "base": self.base, "walk_length": self.walk_length,
             "n_sequences": self.n_sequences, "split": self.split, "seed": self.seed}
        )


# ------------------------------------------------------------------ reference model
class FSMWindowModel(nn.Module):
    """A small causal next-token model for :class:`FSMDataset` (the network codebooks go into).

    Each position reads the embeddings of its last ``window`` tokens and of its digit
    position, through an MLP whose output, the submodule ``hidden`` ``(..., width)``,
    is the representation a codebook is inserted at; ``readout`` maps it to next-token
    logits. ``window = digits + 1`` tokens suffice to know the current state.

    Args:
        vocab: token vocabulary size (``dataset.base``).
        digits: tokens per state (``dataset.digits``).
        width: width of ``hidden`` (choose ``width < n_states``).
        embed_dim, mlp_dim: sizes of the embeddings and the MLP layers.
        window: tokens each position reads (default ``digits + 1``).
    """

    def __init__(
        self, vocab: int, digits: int = 1, width: int = 16, embed_dim: int = 16, mlp_dim: int = 128,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab, self.digits, self.window = vocab, digits, window or digits + 1
        self.embed = nn.Embedding(vocab + 1, embed_dim)  # last id pads the left edge
        self.phase = nn.Embedding(digits, embed_dim)
        self.hidden = nn.Sequential(
            nn.Linear((self.window + 1) * embed_dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, width)
        )
        self.readout = nn.Sequential(nn.Linear(width, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, vocab))

    def forward(self, x: Tensor, digit: Tensor) -> Tensor:
        """Tokens ``(batch, L)`` and digit positions ``(batch, L)`` → logits ``(batch, L, vocab)``."""
        padded = torch.nn.functional.pad(x, (self.window - 1, 0), value=self.vocab)
        windows = padded.unfold(1, self.window, 1)  # (batch, L, window)
        e = torch.cat([self.embed(windows).flatten(2), self.phase(digit)], dim=-1)
        return self.readout(self.hidden(e))


def train_fsm_model(
    model: nn.Module,
    dataset: FSMDataset,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    aux_weight: float = 0.0,
) -> list[float]:
    """Train a next-token model on ``dataset`` with Adam; returns the loss of every step.

    ``model(x, digit)`` must return logits ``(batch, L, vocab)``. If ``model`` is a
    :class:`~bottlenecks.layers.codebook_features.CodebookModel`, its codebook losses are
    added with weight ``aux_weight``. Batches are drawn with torch's global RNG.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all, d_all = dataset.tokens[:, :-1], dataset.token_digit[:, :-1]
    y_all = dataset.tokens[:, 1:]
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(dataset), (batch_size,))
        logits = model(x_all[idx], d_all[idx])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_all[idx].reshape(-1))
        if aux_weight > 0 and hasattr(model, "codebook_losses"):
            loss = loss + aux_weight * sum(model.codebook_losses().values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
