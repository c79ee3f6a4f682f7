"""The raw-dataset protocol every datamodule builds on.

A :class:`ConceptDataset` is a map-style torch dataset whose items are the batch
dicts of DESIGN.md, one example at a time::

    {"x": Tensor,              # image (3, H, W) float in [0, 1], or a feature vector (d,)
     "y": Tensor,              # int64 class index (classification) or float (regression)
     "concepts": Tensor,       # (num_concepts,) float in [0, 1], NaN where unlabelled (optional)
     "masks": Tensor,          # (num_concepts, H, W) bool ground-truth locations (optional)
     "index": int}

Besides items, it exposes the labels and concepts of *all* examples as tensors
(``targets``, ``concept_table``) so that datamodules can pair them with cached
features without decoding any image, and a ``fingerprint`` that changes whenever
the content would (used in feature-cache keys).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from bottlenecks.naming import NamedConcepts

Task = Literal["classification", "regression"]


class ConceptDataset(NamedConcepts, Dataset):
    """Base class of raw datasets. Subclasses set the attributes and implement ``__getitem__``.

    Attributes:
        concept_names: names of the concept columns, or None when the data has no concepts.
        num_classes: number of classes (classification) or None (regression).
        task: ``"classification"`` or ``"regression"``.
        kind: ``"image"`` when ``x`` is a ``(3, H, W)`` image in ``[0, 1]``,
            ``"features"`` when ``x`` is already a vector.
        class_names: optional readable class names.
        image_shape: for ``kind == "features"`` data whose vector is a flattened picture
            (sklearn digits: ``(8, 8)``), its ``(H, W)`` or ``(C, H, W)`` shape, so reports can
            show examples as images; None otherwise.
    """

    concept_names: list[str] | None = None
    num_classes: int | None = None
    task: Task = "classification"
    kind: Literal["image", "features"] = "image"
    class_names: list[str] | None = None
    image_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def targets(self) -> Tensor:
        """All labels, ``(n,)`` int64 for classification or float32 for regression."""
        raise NotImplementedError

    def concept_table(self) -> Tensor | None:
        """All concept values ``(n, num_concepts)`` float32 (NaN = unlabelled), or None."""
        return None

    def fingerprint(self) -> str:
        """A short string that changes whenever the dataset's content would change."""
        raise NotImplementedError

    # -------------------------------------------------------------- helpers
    def check_index(self, index: int) -> int:
        """``index`` as a non-negative int (negative counts from the end); IndexError if out of range."""
        index = int(index)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            split = getattr(self, "split", None)
            where = type(self).__name__ + (f"[{split}]" if split else "")
            raise IndexError(f"{where} has {n} items, index {index} is out of range")
        return index


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def check_labels(y: Tensor, num_classes: int | None, where: str) -> None:
    """Raise a clear error if class labels fall outside ``[0, num_classes)``."""
    if num_classes is None:
        if not torch.isfinite(y).all():
            raise ValueError(f"{where}: regression targets contain NaN or inf")
        return
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)].unique()[:5].tolist()
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes}) but found {bad}"
        )


def check_concepts(c: Tensor, names: list[str] | None, where: str) -> None:
    """Raise a clear error if a concept table has the wrong width or values outside [0, 1]."""
    if names is not None and c.shape[1] != len(names):
        raise ValueError(
            f"{where}: concepts has {c.shape[1]} columns but the concept vocabulary has "
            f"{len(names)} names"
        )
    finite = c[~torch.isnan(c)]
    if finite.numel() and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"{where}: concept values must lie in [0, 1] (NaN for unlabelled)")


class ConceptSubset(ConceptDataset):
    """The rows ``indices`` of a :class:`ConceptDataset`, keeping its protocol."""

    def __init__(self, dataset: ConceptDataset, indices: Tensor | list[int], tag: str = "subset") -> None:
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.tag = tag
        for attr in ("concept_names", "num_classes", "task", "kind", "class_names", "image_shape"):
            setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[int(self.indices[index])])
        item["index"] = index
        return item

    def targets(self) -> Tensor:
        return self.dataset.targets()[self.indices]

    def concept_table(self) -> Tensor | None:
        table = self.dataset.concept_table()
        return None if table is None else table[self.indices]

    def fingerprint(self) -> str:
        return stable_hash([self.dataset.fingerprint(), self.tag, self.indices.tolist()])


def holdout_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Random (keep, held_out) index tensors with ``round(fraction * n)`` rows held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a held-out fraction must lie in (0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = max(1, int(round(fraction * n)))
    return perm[n_out:].sort().values, perm[:n_out].sort().values
