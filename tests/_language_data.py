"""Synthetic paired image/text embeddings whose answer is known (planted concept directions).

A stand-in for CLIP: concept "texts" are unit vectors ``T`` in a ``d``-dimensional space;
an image embedding is the sum of the vectors of the concepts it shows, plus noise. Each
class shows two class concepts always; nuisance concepts appear at random in every class.
Candidate concept sets add paraphrases (near-duplicates of a class concept) and junk
(directions no image shows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Planted:
    x: Tensor  # (n, d) image embeddings
    y: Tensor  # (n,) classes
    concepts: Tensor  # (n, n_true) which true concepts each image shows
    names: list[str]  # true concept names (class concepts, then nuisance)
    vectors: Tensor  # (n_true, d) their text vectors
    class_names: list[str]
    class_vectors: Tensor  # (n_classes, d): the class name's text vector
    class_concepts: dict[str, list[str]]


def planted(n: int = 1200, d: int = 32, n_classes: int = 6, n_nuisance: int = 6, noise: float = 0.3,
            seed: int = 0) -> Planted:
    g = torch.Generator().manual_seed(seed)
    n_true = 2 * n_classes + n_nuisance
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    vectors = q[:n_true].clone()  # orthonormal concept directions
    names = [f"cls{k}_part{j}" for k in range(n_classes) for j in range(2)] + [f"nuisance{j}" for j in range(n_nuisance)]
    y = torch.arange(n) % n_classes
    y = y[torch.randperm(n, generator=g)]
    c = torch.zeros(n, n_true)
    c[torch.arange(n), 2 * y] = 1
    c[torch.arange(n), 2 * y + 1] = 1
    c[:, 2 * n_classes:] = (torch.rand(n, n_nuisance, generator=g) < 0.4).float()
    amp = 0.7 + 0.6 * torch.rand(n, n_true, generator=g)
    x = (c * amp) @ vectors + noise * torch.randn(n, d, generator=g)
    class_names = [f"class{k}" for k in range(n_classes)]
    # the class name's text: mostly its own direction, partly its concepts (a class name is
    # close to, but not the same as, its parts)
    own = q[n_true : n_true + n_classes] if n_true + n_classes <= d else torch.randn(n_classes, d, generator=g)
    class_vectors = F.normalize(own + 0.5 * (vectors[0 : 2 * n_classes : 2] + vectors[1 : 2 * n_classes : 2]), dim=1)
    class_concepts = {class_names[k]: [names[2 * k], names[2 * k + 1]] for k in range(n_classes)}
    return Planted(x, y, c, names, vectors, class_names, class_vectors, class_concepts)


def candidates(p: Planted, n_paraphrases: int = 2, n_junk: int = 12, seed: int = 1) -> tuple[list[str], Tensor]:
    """A candidate concept set: the class concepts, their paraphrases, the nuisance concepts
    and junk directions no image shows."""
    g = torch.Generator().manual_seed(seed)
    n_class_concepts = 2 * len(p.class_names)
    names, vecs = list(p.names), [p.vectors]
    d = p.vectors.shape[1]
    for r in range(n_paraphrases):
        base = p.vectors[:n_class_concepts]
        vecs.append(F.normalize(base + 0.25 * F.normalize(torch.randn(base.shape, generator=g), dim=1), dim=1))
        names += [f"{nm} (paraphrase {r + 1})" for nm in p.names[:n_class_concepts]]
    vecs.append(F.normalize(torch.randn(n_junk, d, generator=g), dim=1))
    names += [f"junk{j}" for j in range(n_junk)]
    return names, torch.cat(vecs)


def train(model, x: Tensor, y: Tensor, concepts: Tensor | None = None, epochs: int = 20, lr: float = 1e-2,
          batch_size: int = 128, text=None, seed: int = 0):
    """A plain PyTorch loop over the model's own losses (what the Lightning module does, without
    the trainer's overhead): data init, then AdamW on every trainable parameter."""
    torch.manual_seed(seed)
    if model.bottleneck.needs_data_init():
        model.bottleneck.init_from_data(model.norm(x), concepts=concepts, y=y, text=text)
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch_size):
            idx = perm[s : s + batch_size]
            batch = {"x": x[idx], "y": y[idx]}
            loss = model.compute_losses(batch, *model(batch["x"]))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x)[0].argmax(1) == y).float().mean())
