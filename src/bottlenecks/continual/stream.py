"""Class-incremental streams: a dataset's classes dealt out into tasks with disjoint class sets.

A :class:`ClassIncrementalStream` holds (features, labels) of a train and a test
split and a partition of the classes into tasks. Training on task ``i`` sees only
that task's training examples; evaluation uses the test examples of every task seen
so far, with predictions over *all* classes (no task identity at test time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor


@dataclass
class Task:
    """One task of a stream.

    Attributes:
        index: position in the stream.
        classes: the task's class indices.
        x_train: ``(n_train, feature_dim)``; y_train: ``(n_train,)``.
        x_test: ``(n_test, feature_dim)``; y_test: ``(n_test,)``.
    """

    index: int
    classes: list[int]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


class ClassIncrementalStream:
    """Tasks with disjoint class sets, built from feature tensors or a datamodule.

    Args:
        x_train: ``(n, feature_dim)`` training features; y_train: ``(n,)`` int labels.
        x_test: ``(m, feature_dim)`` evaluation features; y_test: ``(m,)``.
        classes_per_task: classes per task when ``task_classes`` is not given
            (the last task takes the remainder).
        task_classes: explicit class sets, e.g. ``[[0, 1], [2, 3]]`` (disjoint; classes
            left out are dropped from the stream).
        shuffle_classes: deal the classes in a random order (seeded) instead of 0, 1, 2, ...
        num_classes: total number of classes (default: ``max label + 1``).
        seed: seed of the class order.
    """

    def __init__(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        classes_per_task: int | None = 2,
        task_classes: list[list[int]] | None = None,
        shuffle_classes: bool = False,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        x_train, x_test = torch.as_tensor(x_train).float(), torch.as_tensor(x_test).float()
        y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
        for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if x.dim() != 2:
                raise ValueError(f"x_{name} must be (n, feature_dim), got shape {tuple(x.shape)}")
            if len(x) != len(y):
                raise ValueError(f"x_{name} has {len(x)} rows but y_{name} has {len(y)}")
        if x_train.shape[1] != x_test.shape[1]:
            raise ValueError(f"x_train has {x_train.shape[1]} features but x_test has {x_test.shape[1]}")
        self.num_classes = int(num_classes if num_classes is not None else max(int(y_train.max()), int(y_test.max())) + 1)
        if task_classes is None:
            if classes_per_task is None or classes_per_task < 1:
                raise ValueError(f"classes_per_task must be a positive integer, got {classes_per_task}")
            order = list(range(self.num_classes))
            if shuffle_classes:
                g = torch.Generator().manual_seed(seed)
                order = torch.randperm(self.num_classes, generator=g).tolist()
            task_classes = [order[i : i + classes_per_task] for i in range(0, self.num_classes, classes_per_task)]
        flat = [c for t in task_classes for c in t]
        if len(set(flat)) != len(flat):
            raise ValueError(f"task class sets must be disjoint, got {task_classes}")
        if any(not 0 <= c < self.num_classes for c in flat):
            raise ValueError(f"task classes must lie in [0, {self.num_classes}), got {task_classes}")
        if any(len(t) == 0 for t in task_classes):
            raise ValueError(f"every task needs at least one class, got {task_classes}")
        self.task_classes = [list(map(int, t)) for t in task_classes]
        self.feature_dim = int(x_train.shape[1])
        self.tasks: list[Task] = []
        for i, classes in enumerate(self.task_classes):
            cls = torch.tensor(classes)
            tr, te = torch.isin(y_train, cls), torch.isin(y_test, cls)
            if not bool(tr.any()) or not bool(te.any()):
                raise ValueError(f"task {i} (classes {classes}) has no training or no test examples")
            self.tasks.append(Task(i, classes, x_train[tr], y_train[tr], x_test[te], y_test[te]))

    @classmethod
    def from_datamodule(cls, datamodule: Any, eval_split: str = "test", **kwargs: Any) -> ClassIncrementalStream:
        """A stream from any datamodule whose batches are dicts with ``"x"`` and ``"y"``.

        Uses the feature tensors directly when the datamodule exposes ``split(name)``
        (:class:`~bottlenecks.data.datamodule.FeatureDataModule`), else iterates its
        ``train_dataloader()`` and ``{eval_split}_dataloader()``.
        """
        xtr, ytr = datamodule_split(datamodule, "train")
        xev, yev = datamodule_split(datamodule, eval_split)
        kwargs.setdefault("num_classes", getattr(datamodule, "num_classes", None))
        return cls(xtr, ytr, xev, yev, **kwargs)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def seen_test(self, upto: int) -> tuple[Tensor, Tensor]:
        """Test features and labels of tasks ``0..upto``."""
        xs = [t.x_test for t in self.tasks[: upto + 1]]
        ys = [t.y_test for t in self.tasks[: upto + 1]]
        return torch.cat(xs), torch.cat(ys)

    def seen_train(self, upto: int) -> tuple[Tensor, Tensor]:
        """Training features and labels of tasks ``0..upto`` (for the joint upper bound)."""
        xs = [t.x_train for t in self.tasks[: upto + 1]]
        ys = [t.y_train for t in self.tasks[: upto + 1]]
        return torch.cat(xs), torch.cat(ys)

    def all_train_features(self) -> Tensor:
        """Every training feature of the stream, without labels (an unlabelled pool)."""
        return torch.cat([t.x_train for t in self.tasks])


def datamodule_split(datamodule: Any, split: str) -> tuple[Tensor, Tensor]:
    """Features ``(n, feature_dim)`` and labels ``(n,)`` of one split of a datamodule.

    Reads the tensors directly from a :class:`~bottlenecks.data.datamodule.FeatureDataModule`
    (``split(name)``), else iterates ``{split}_dataloader()`` (batches: dicts with x, y).
    """
    if hasattr(datamodule, "split"):
        part = datamodule.split(split)
        return part.x.float(), part.y.long()
    datamodule.setup("fit" if split in ("train", "val") else "test")
    return _collect(getattr(datamodule, f"{split}_dataloader")())


def _collect(loader: Any) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, dict) or "x" not in batch or "y" not in batch:
            raise TypeError("a class-incremental stream needs batches that are dicts with 'x' and 'y'")
        xs.append(batch["x"].reshape(len(batch["x"]), -1).float())
        ys.append(batch["y"].long())
    return torch.cat(xs), torch.cat(ys)
