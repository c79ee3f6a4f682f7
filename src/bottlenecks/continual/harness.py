"""The class-incremental harness: train task after task, evaluate on everything seen.

After every task the learner is evaluated on the test examples of *every* task
(accuracy matrix ``R``); with ``eval_every=N`` it is also evaluated every ``N``
optimiser steps during training, which exposes the *stability gap* (De Lange et al.,
2023): the transient drop of earlier tasks' accuracy right after a new task starts.
Predictions are the argmax over all classes — no task identity, no replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from bottlenecks.continual.learners import ContinualLearner
from bottlenecks.continual.metrics import summarize
from bottlenecks.continual.stream import ClassIncrementalStream, datamodule_split


@dataclass
class ContinualResult:
    """What one learner did on one stream.

    Attributes:
        name: the learner's name.
        accuracy: ``(T, T)`` — ``accuracy[i, j]`` on task ``j``'s test set after task ``i``
            (also filled for ``j > i``: accuracy on classes not yet seen, normally 0).
        seen_accuracy: ``(T,)`` — accuracy on the pooled test examples of tasks ``0..i``.
        evaluations: periodic evaluations ``(step, task being trained, (T,) per-task
            accuracy with NaN for unseen tasks)``.
        metrics: :func:`~bottlenecks.continual.metrics.summarize` of the above.
        steps_per_task: optimiser steps spent on each task.
    """

    name: str
    accuracy: Tensor
    seen_accuracy: Tensor
    evaluations: list[tuple[int, int, Tensor]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    steps_per_task: list[int] = field(default_factory=list)


def per_task_accuracy(learner: ContinualLearner, stream: ClassIncrementalStream) -> Tensor:
    """Accuracy ``(T,)`` of the learner on each task's test examples (argmax over all classes)."""
    x = torch.cat([t.x_test for t in stream])
    y = torch.cat([t.y_test for t in stream])
    scores = learner.predict(x)
    if scores.shape != (len(x), stream.num_classes):
        raise ValueError(
            f"{learner.name}.predict returned shape {tuple(scores.shape)}, expected "
            f"({len(x)}, {stream.num_classes}) class scores"
        )
    correct = (scores.argmax(-1) == y).float()
    sizes = [len(t.y_test) for t in stream]
    return torch.stack([c.mean() for c in correct.split(sizes)])


def run_class_incremental(
    learner: ContinualLearner,
    stream: ClassIncrementalStream,
    eval_every: int | None = None,
    unlabelled: Tensor | None = None,
) -> ContinualResult:
    """Train ``learner`` on the stream's tasks in order and evaluate it.

    Args:
        learner: any :class:`~bottlenecks.continual.learners.ContinualLearner`.
        stream: the tasks.
        eval_every: also evaluate every this many optimiser steps (None: after tasks only).
        unlabelled: optional unlabelled feature pool handed to ``learner.prepare``.
    """
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be a positive number of steps, got {eval_every}")
    T = len(stream)
    sizes = torch.tensor([len(t.y_test) for t in stream], dtype=torch.float32)
    evaluations: list[tuple[int, int, Tensor]] = []
    rows, seen_acc, steps_per_task = [], [], []
    step = 0
    current = 0

    def on_step() -> None:
        nonlocal step
        step += 1
        if eval_every is not None and step % eval_every == 0:
            accs = per_task_accuracy(learner, stream)
            accs[current + 1 :] = math.nan
            evaluations.append((step, current, accs))

    learner.prepare(stream, unlabelled)
    for task in stream:
        current = task.index
        start = step
        learner.fit_task(task, on_step)
        steps_per_task.append(step - start)
        accs = per_task_accuracy(learner, stream)
        rows.append(accs)
        w = sizes[: current + 1]
        seen_acc.append(float((accs[: current + 1] * w).sum() / w.sum()))
    R = torch.stack(rows)
    return ContinualResult(
        name=learner.name,
        accuracy=R,
        seen_accuracy=torch.tensor(seen_acc),
        evaluations=evaluations,
        metrics=summarize(R, evaluations),
        steps_per_task=steps_per_task,
    )


METRIC_LABELS = {
    "avg_acc": "avg acc",
    "avg_inc_acc": "avg inc acc",
    "forgetting": "forgetting",
    "bwt": "BWT",
    "min_acc": "min-ACC",
    "wc_acc": "WC-ACC",
}


def format_table(results: list[ContinualResult]) -> str:
    """A plain-text table: one row per learner, one column per metric (accuracies in %)."""
    width = max(len(r.name) for r in results) + 2
    head = f"{'learner':<{width}}" + "".join(f"{v:>12}" for v in METRIC_LABELS.values())
    lines = [head, "-" * len(head)]
    for r in results:
        cells = "".join(f"{100 * r.metrics[k]:12.1f}" for k in METRIC_LABELS)
        lines.append(f"{r.name:<{width}}" + cells)
    return "\n".join(lines)


def run_experiment(
    data: Any,
    learners: list[ContinualLearner],
    classes_per_task: int = 2,
    task_classes: list[list[int]] | None = None,
    shuffle_classes: bool = False,
    eval_every: int | None = None,
    unlabelled: Literal["none", "train", "val"] = "train",
    seed: int = 0,
    output: str | None = None,
) -> list[ContinualResult]:
    """Run every learner on one class-incremental stream and print the table.

    Runnable from YAML: ``python -m bottlenecks.continual --config configs/dkvb_continual_digits.yaml``.

    Args:
        data: a datamodule (``class_path`` in YAML) whose batches are dicts with ``x``/``y``.
        learners: the learners to compare (each starts from ``seed``).
        classes_per_task, task_classes, shuffle_classes: how classes are dealt into tasks
            (see :class:`~bottlenecks.continual.stream.ClassIncrementalStream`).
        eval_every: evaluate every this many optimiser steps too (stability gap).
        unlabelled: unlabelled pool handed to ``learner.prepare`` (key initialisation):
            ``"train"`` — every task's training features, labels unused; ``"val"`` — the
            datamodule's validation features; ``"none"`` — nothing (a model then
            initialises from its first task's data).
        seed: seed set before each learner.
        output: optional path of a JSON file with every accuracy matrix and evaluation.
    """
    import json

    import lightning as L

    stream = ClassIncrementalStream.from_datamodule(
        data, classes_per_task=classes_per_task, task_classes=task_classes,
        shuffle_classes=shuffle_classes, seed=seed,
    )
    pool = None
    if unlabelled == "train":
        pool = stream.all_train_features()
    elif unlabelled == "val":
        pool = datamodule_split(data, "val")[0]
    results = []
    for learner in learners:
        L.seed_everything(seed, verbose=False)
        results.append(run_class_incremental(learner, stream, eval_every=eval_every, unlabelled=pool))
    print(f"{len(stream)} tasks {stream.task_classes}; unlabelled pool: {unlabelled}")
    print(format_table(results))
    if output is not None:
        blob = [
            {
                "name": r.name,
                "metrics": r.metrics,
                "accuracy": r.accuracy.tolist(),
                "seen_accuracy": r.seen_accuracy.tolist(),
                "steps_per_task": r.steps_per_task,
                "evaluations": [(s, t, [None if math.isnan(a) else a for a in acc.tolist()]) for s, t, acc in r.evaluations],
            }
            for r in results
        ]
        with open(output, "w") as f:
            json.dump({"task_classes": stream.task_classes, "results": blob}, f, indent=1)
    return results
