"""Choosing the concepts of a language-guided concept bottleneck.

Two steps from the papers, on plain ``(names, vectors)`` concept sets (a concept bank
adopts them unchanged):

* :func:`filter_concepts` — Label-free CBM's filters (Oikarinen et al., 2023): drop
  concepts that are too long, too close to a class name (they would leak the label),
  too close to another kept concept (redundant), or never activated by the images.
* :func:`submodular_select` / :func:`select_per_class` — LaBo's submodular selection
  (Yang et al., 2023): greedily pick a subset of a given size maximising
  ``alpha * sum_{c in S} D(c) + beta * sum_{v in V} max_{c in S} phi(v, c)``, a modular
  *discriminability* term plus a facility-location *coverage* term (which rewards a
  diverse subset: a second copy of a concept covers nothing new).

Shapes: ``vectors (num_concepts, d)`` text embeddings; ``image_features (n, d)`` image
embeddings in the same space; ``sims (n, num_concepts)`` image–concept similarities.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from bottlenecks.layers.base import check_concept_list

__all__ = [
    "FilterResult",
    "check_concept_set",
    "class_affinity",
    "concept_similarities",
    "discriminability",
    "filter_concepts",
    "redundancy",
    "select_per_class",
    "submodular_select",
]


# ------------------------------------------------------------------------- validation
def check_concept_set(names: Sequence[str], vectors: Tensor | None = None, what: str = "concept set") -> list[str]:
    """Validate a concept set and return its names as a list.

    Raises a ``ValueError`` naming the problem for an empty list, repeated names (also
    after lower-casing and stripping spaces: ``"Red"`` and ``"red "`` are one concept),
    empty names, or vectors whose shape, values or norms do not fit.
    """
    names = check_concept_list([str(n) if not isinstance(n, str) else n for n in names]
                               if not isinstance(names, str) else names, what)
    if vectors is not None:
        if vectors.dim() != 2 or vectors.shape[0] != len(names):
            raise ValueError(
                f"{what}: {len(names)} names but concept vectors of shape {tuple(vectors.shape)}; "
                f"expected ({len(names)}, dim)"
            )
        if not torch.isfinite(vectors).all():
            raise ValueError(f"{what}: concept vectors contain NaN or inf")
        zero = (vectors.norm(dim=1) == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"{what}: concept vectors of {[names[i] for i in zero[:10]]} are all zeros")
    return names


def check_widths(image_dim: int, text_dim: int, what: str = "concept vectors") -> None:
    """Image and text embeddings must live in one space to be compared."""
    if image_dim != text_dim:
        raise ValueError(
            f"the text encoder's {what} are {text_dim}-dimensional but the image features are "
            f"{image_dim}-dimensional: image–text similarities need a paired image/text encoder "
            "(open_clip's two towers), or an explicit map from image to text space "
            "(image_to_text='concept_labels' learns one from concept labels)"
        )


def concept_similarities(image_features: Tensor, vectors: Tensor) -> Tensor:
    """Cosine similarities ``(n, num_concepts)`` of image embeddings and concept vectors."""
    check_widths(image_features.shape[1], vectors.shape[1])
    return F.normalize(image_features.float(), dim=1) @ F.normalize(vectors.float(), dim=1).T


# -------------------------------------------------------------------------- filtering
@dataclass
class FilterResult:
    """What :func:`filter_concepts` kept and why it dropped the rest.

    Attributes:
        names: kept concept names, in input order.
        indices: their positions in the input list.
        removed: dropped name → reason (``"too long"``, ``"close to class 'x' (0.93)"``,
            ``"never activated (0.12)"``, ``"duplicate of 'y' (0.95)"``).
    """

    names: list[str]
    indices: list[int]
    removed: dict[str, str] = field(default_factory=dict)

    def vectors(self, vectors: Tensor) -> Tensor:
        """The kept rows of ``vectors``."""
        return vectors[self.indices]


def filter_concepts(
    names: Sequence[str],
    vectors: Tensor,
    *,
    class_names: Sequence[str] | None = None,
    class_vectors: Tensor | None = None,
    image_features: Tensor | None = None,
    max_length: int | None = None,
    class_similarity: float | None = 0.85,
    concept_similarity: float | None = 0.9,
    min_activation: float | None = None,
    top_k: int = 5,
) -> FilterResult:
    """Label-free CBM's concept filters, in its order.

    Args:
        names, vectors: the candidate concepts ``(num_concepts, d)`` (text embeddings).
        class_names, class_vectors: the classes' text embeddings ``(n_classes, d)``; a concept
            whose cosine to a class exceeds ``class_similarity`` is dropped (it names the label).
        image_features: ``(n, d)`` image embeddings in the text space; a concept whose mean
            top-``top_k`` image similarity is below ``min_activation`` is dropped as never
            activated.
        max_length: drop concept texts longer than this many characters (LF-CBM: 30).
        concept_similarity: of two concepts whose cosine exceeds it, keep one (the more
            activated one when ``image_features`` are given, else the earlier one).
        min_activation: threshold of the never-activated filter (None: off).

    Returns:
        :class:`FilterResult`. Raises when nothing survives.
    """
    names = check_concept_set(names, vectors)
    v = F.normalize(vectors.float(), dim=1)
    keep = torch.ones(len(names), dtype=torch.bool)
    removed: dict[str, str] = {}

    if max_length is not None:
        for i, n in enumerate(names):
            if len(n) > max_length:
                keep[i] = False
                removed[n] = f"too long ({len(n)} > {max_length} characters)"

    if class_similarity is not None and class_vectors is not None:
        cn = list(class_names) if class_names is not None else [f"class{i}" for i in range(len(class_vectors))]
        if len(cn) != len(class_vectors):
            raise ValueError(f"{len(cn)} class names but class vectors of shape {tuple(class_vectors.shape)}")
        if class_vectors.shape[1] != v.shape[1]:
            raise ValueError(
                f"class vectors are {class_vectors.shape[1]}-dimensional but concept vectors are "
                f"{v.shape[1]}-dimensional; embed both with the same text encoder"
            )
        sim = v @ F.normalize(class_vectors.float(), dim=1).T  # (n_c, n_classes)
        best, arg = sim.max(1)
        for i in (keep & (best > class_similarity)).nonzero().flatten().tolist():
            keep[i] = False
            removed[names[i]] = f"close to class {cn[int(arg[i])]!r} ({float(best[i]):.2f})"

    activation = None
    if image_features is not None:
        sims = concept_similarities(image_features, vectors)
        k = max(1, min(top_k, len(sims)))
        activation = sims.topk(k, dim=0).values.mean(0)  # (n_c,)
        if min_activation is not None:
            for i in (keep & (activation < min_activation)).nonzero().flatten().tolist():
                keep[i] = False
                removed[names[i]] = f"never activated (top-{k} mean {float(activation[i]):.2f} < {min_activation})"

    if concept_similarity is not None:
        order = keep.nonzero().flatten().tolist()
        if activation is not None:
            order.sort(key=lambda i: -float(activation[i]))
        kept: list[int] = []
        for i in order:
            if kept:
                s, j = (v[kept] @ v[i]).max(0)
                if float(s) > concept_similarity:
                    keep[i] = False
                    removed[names[i]] = f"duplicate of {names[kept[int(j)]]!r} ({float(s):.2f})"
                    continue
            kept.append(i)

    idx = keep.nonzero().flatten().tolist()
    if not idx:
        raise ValueError(f"filter_concepts removed all {len(names)} concepts; loosen the thresholds ({removed})")
    return FilterResult([names[i] for i in idx], idx, removed)


# ------------------------------------------------------------------------- selection
def class_affinity(sims: Tensor, y: Tensor, n_classes: int | None = None, temperature: float = 1.0) -> Tensor:
    """LaBo's normalised class–concept affinity ``Sim'(y | c)``: ``(n_classes, num_concepts)``,
    each column a distribution over classes.

    The mean image similarity of each class to each concept, z-scored across classes per
    concept (raw CLIP similarities differ little), then a softmax over classes.
    """
    y = y.long()
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    counts = torch.bincount(y, minlength=n_classes).float()
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"class_affinity: classes {missing} have no images")
    means = torch.zeros(n_classes, sims.shape[1]).index_add_(0, y, sims.float()) / counts[:, None]
    z = (means - means.mean(0)) / (means.std(0, unbiased=False) + 1e-8)
    return torch.softmax(z / temperature, dim=0)


def discriminability(sims: Tensor, y: Tensor, n_classes: int | None = None, temperature: float = 1.0) -> Tensor:
    """LaBo's discriminability ``D(c) = log K - H(Sim'(. | c))`` ``(num_concepts,)``: 0 for a concept
    that scores every class alike, ``log K`` for one that points at a single class."""
    p = class_affinity(sims, y, n_classes, temperature)
    return (p * p.clamp_min(1e-12).log()).sum(0) + torch.log(torch.tensor(float(p.shape[0])))


def redundancy(vectors: Tensor, indices: Sequence[int] | None = None) -> float:
    """Mean, over a subset's concepts, of the cosine to its nearest other member: 1 when every
    concept has a duplicate in the subset, about 0 for unrelated directions."""
    v = F.normalize(vectors.float(), dim=1)
    if indices is not None:
        v = v[list(indices)]
    if len(v) < 2:
        return 0.0
    s = v @ v.T
    s.fill_diagonal_(-float("inf"))
    return float(s.max(1).values.mean())


def submodular_select(
    vectors: Tensor,
    k: int,
    scores: Tensor | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    candidates: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> list[int]:
    """Greedy maximisation of LaBo's submodular score; indices of the chosen concepts, in the
    order they were picked.

    ``F(S) = alpha * sum_{c in S} D(c) / max D + beta * sum_{v in V} max_{c in S} phi(v, c) / |V|``
    with ``phi`` the cosine of concept vectors clipped at 0 and ``V`` the candidates. ``F`` is
    monotone submodular, so greedy picking is within ``1 - 1/e`` of the best subset.

    Args:
        vectors: ``(num_concepts, d)`` concept text embeddings.
        k: subset size.
        scores: ``(num_concepts,)`` discriminability (e.g. :func:`discriminability`); None
            selects by coverage alone.
        alpha, beta: weights of discriminability and coverage.
        candidates: restrict the selection to these indices (LaBo: one class's concepts).
        names: for error messages and the duplicate check.
    """
    n = vectors.shape[0]
    if names is not None:
        check_concept_set(names, vectors)
    cand = list(range(n)) if candidates is None else sorted(set(int(i) for i in candidates))
    if not cand:
        raise ValueError("submodular_select: no candidate concepts")
    if k < 1:
        raise ValueError(f"submodular_select: k must be at least 1, got {k}")
    if k > len(cand):
        raise ValueError(f"submodular_select: asked for {k} concepts but only {len(cand)} candidates exist")
    v = F.normalize(vectors[cand].float(), dim=1)
    phi = (v @ v.T).clamp_min(0)  # (m, m): phi[v, c]
    if scores is None:
        d = torch.zeros(len(cand))
    else:
        if scores.shape != (n,):
            raise ValueError(f"submodular_select: scores must have shape ({n},), got {tuple(scores.shape)}")
        d = scores[cand].float()
        d = d / d.abs().max().clamp_min(1e-12)
    cover = torch.zeros(len(cand))
    chosen: list[int] = []
    free = torch.ones(len(cand), dtype=torch.bool)
    for _ in range(k):
        gain = alpha * d + beta * (phi - cover[:, None]).clamp_min(0).sum(0) / len(cand)
        gain[~free] = -float("inf")
        j = int(gain.argmax())
        chosen.append(j)
        free[j] = False
        cover = torch.maximum(cover, phi[:, j])
    return [cand[j] for j in chosen]


def select_per_class(
    class_concepts: dict[str, list[str]],
    names: Sequence[str],
    vectors: Tensor,
    k_per_class: int,
    sims: Tensor | None = None,
    y: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> dict[str, list[str]]:
    """LaBo's per-class selection: for each class, ``k_per_class`` concepts from that class's
    candidates (``class_concepts``, e.g. LaBo's ``class2concepts.json``), scored by how much
    the images of that class prefer them (``Sim'(y | c)``) plus coverage of the class's set.

    Args:
        class_concepts: class name → its candidate concept names (each in ``names``).
        names, vectors: the full concept set ``(num_concepts, d)``.
        sims, y: image–concept similarities ``(n, num_concepts)`` and class indices ``(n,)``
            (index ``i`` is ``class_names[i]``); without them, coverage alone decides.
        class_names: class order of ``y`` (default: the order of ``class_concepts``).

    Classes with fewer candidates than ``k_per_class`` keep all of theirs (with a warning).
    """
    names = check_concept_set(names, vectors)
    if not class_concepts:
        raise ValueError("select_per_class: class_concepts is empty")
    order = list(class_names) if class_names is not None else list(class_concepts)
    unknown = [c for c in class_concepts if c not in order]
    if unknown:
        raise ValueError(f"select_per_class: classes {unknown} are not in class_names {order}")
    pos = {n: i for i, n in enumerate(names)}
    affinity = None
    if sims is not None and y is not None:
        affinity = class_affinity(sims, y, len(order))
    out: dict[str, list[str]] = {}
    for cls, cands in class_concepts.items():
        missing = [c for c in cands if c not in pos]
        if missing:
            raise ValueError(f"select_per_class: class {cls!r} lists concepts not in the concept set: {missing[:10]}")
        idx = sorted({pos[c] for c in cands})
        if not idx:
            raise ValueError(f"select_per_class: class {cls!r} has no candidate concepts")
        if len(idx) < k_per_class:
            warnings.warn(
                f"class {cls!r} has {len(idx)} candidate concepts, fewer than k_per_class={k_per_class}; keeping all",
                stacklevel=2,
            )
            out[cls] = [names[i] for i in idx]
            continue
        scores = None if affinity is None else affinity[order.index(cls)]
        chosen = submodular_select(vectors, k_per_class, scores, alpha=alpha, beta=beta, candidates=idx)
        out[cls] = [names[i] for i in chosen]
    return out
