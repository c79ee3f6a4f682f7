"""Learners the class-incremental harness can run, and the standard baselines.

A learner has three verbs:

* ``prepare(stream, unlabelled)`` — once, before the first task; ``unlabelled`` is an
  optional pool of features without labels (key initialisation, feature statistics);
* ``fit_task(task, on_step)`` — train on one task's examples; call ``on_step()`` after
  every optimiser step so the harness can evaluate at a fixed step interval;
* ``predict(x)`` — class scores ``(n, num_classes)``; the argmax over *all* classes is
  the prediction (no task identity).

:class:`LightningLearner` runs any :class:`~bottlenecks.models.BottleneckModel` with a
Lightning ``Trainer`` per task (so the DKVB's key initialisation and every other
stage of the model's own flow apply unchanged). The baselines are
:class:`SequentialLinearProbe` (a linear head trained task after task, no replay),
:class:`JointLinearProbe` (retrained on the union of every task seen so far — the
upper bound) and :class:`NearestClassMean` (class means of the frozen features).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import lightning as L
import torch
from torch import Tensor

from bottlenecks.continual.stream import ClassIncrementalStream, Task

OnStep = Callable[[], None]


class ContinualLearner:
    """Base class: see the module docstring for the three verbs."""

    name: str = "learner"

    def prepare(self, stream: ClassIncrementalStream, unlabelled: Tensor | None = None) -> None:
        """Called once before the first task."""

    def fit_task(self, task: Task, on_step: OnStep | None = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class NearestClassMean(ContinualLearner):
    """Nearest class mean on frozen features: each seen class is the mean of its examples.

    Args:
        metric: ``"euclidean"`` or ``"cosine"`` (features and means L2-normalised).
    """

    def __init__(self, metric: Literal["euclidean", "cosine"] = "euclidean") -> None:
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.metric = metric
        self.name = f"nearest class mean ({metric})"
        self.sums: Tensor | None = None
        self.counts: Tensor | None = None

    def _prep(self, x: Tensor) -> Tensor:
        return torch.nn.functional.normalize(x, dim=-1) if self.metric == "cosine" else x

    def prepare(self, stream: ClassIncrementalStream, unlabelled: Tensor | None = None) -> None:
        self.sums = torch.zeros(stream.num_classes, stream.feature_dim)
        self.counts = torch.zeros(stream.num_classes)

    def fit_task(self, task: Task, on_step: OnStep | None = None) -> None:
        if self.sums is None or self.counts is None:
            raise RuntimeError("NearestClassMean.prepare(stream) must run before fit_task")
        self.sums.index_add_(0, task.y_train, self._prep(task.x_train))
        self.counts += torch.bincount(task.y_train, minlength=len(self.counts)).float()
        if on_step is not None:
            on_step()

    def predict(self, x: Tensor) -> Tensor:
        if self.sums is None or self.counts is None:
            raise RuntimeError("NearestClassMean has seen no task yet")
        seen = self.counts > 0
        means = self.sums / self.counts.clamp_min(1).unsqueeze(1)
        if self.metric == "cosine":
            scores = self._prep(x) @ torch.nn.functional.normalize(means, dim=-1).t()
        else:
            scores = 2 * x @ means.t() - means.pow(2).sum(1)  # -||x - mu||^2 + ||x||^2
        return scores.masked_fill(~seen, float("-inf"))


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit banners (one fit per task would repeat them T times)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _StepHook(L.Callback):
    def __init__(self, on_step: OnStep) -> None:
        self.on_step = on_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.on_step()


class LightningLearner(ContinualLearner):
    """Trains a :class:`~bottlenecks.models.BottleneckModel` task after task (no replay).

    Each task is one ``Trainer.fit`` on that task's examples: a fresh optimiser per task,
    the model's parameters carried over. Before the first task, :meth:`prepare` fits the
    model's feature standardisation and runs ``bottleneck.init_from_data`` on the
    unlabelled pool when one is given (otherwise the model does both on task 0's data at
    its first fit).

    Args:
        model: the model (trained in place).
        epochs_per_task: epochs over each task's examples.
        batch_size: training batch size.
        seed: seed of the shuffling order.
        name: row label in result tables.
        trainer_kwargs: extra ``lightning.Trainer`` arguments.
    """

    def __init__(
        self,
        model: L.LightningModule,
        epochs_per_task: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        name: str | None = None,
        trainer_kwargs: dict | None = None,
    ) -> None:
        if epochs_per_task < 1:
            raise ValueError(f"epochs_per_task must be positive, got {epochs_per_task}")
        self.model = model
        self.epochs_per_task = epochs_per_task
        self.batch_size = batch_size
        self.seed = seed
        self.name = name or type(getattr(model, "bottleneck", model)).__name__
        self.trainer_kwargs = dict(trainer_kwargs or {})

    def prepare(self, stream: ClassIncrementalStream, unlabelled: Tensor | None = None) -> None:
        if unlabelled is None:
            return
        model = self.model
        norm = getattr(model, "norm", None)
        if norm is not None and hasattr(norm, "fit") and not bool(getattr(norm, "fitted", True)):
            norm.fit(unlabelled)
        bottleneck = getattr(model, "bottleneck", None)
        if bottleneck is not None and bottleneck.needs_data_init():
            h = norm(unlabelled) if norm is not None else unlabelled
            bottleneck.init_from_data(h)

    def fit_task(self, task: Task, on_step: OnStep | None = None) -> None:
        from bottlenecks.data.datamodule import FeatureBatches, batch_loader

        loader = batch_loader(
            FeatureBatches(task.x_train, task.y_train), self.batch_size, shuffle=True, seed=self.seed + task.index
        )
        kwargs = dict(
            max_epochs=self.epochs_per_task, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            accelerator="cpu", devices=1,
        )
        kwargs.update(self.trainer_kwargs)
        callbacks = list(kwargs.pop("callbacks", []))
        if on_step is not None:
            callbacks.append(_StepHook(on_step))
        with _quiet_lightning():
            L.Trainer(callbacks=callbacks, **kwargs).fit(self.model, train_dataloaders=loader)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(x)
            return out[0] if isinstance(out, tuple) else out
        finally:
            self.model.train(was_training)


class SequentialLinearProbe(LightningLearner):
    """Linear head on frozen features, trained on each task in turn (the forgetting baseline).

    ``name`` defaults to the class's ``default_name``.

    Args:
        feature_dim, num_classes: sizes.
        epochs_per_task, batch_size, seed: as in :class:`LightningLearner`.
        optimizer, lr, weight_decay: as in :class:`~bottlenecks.models.BottleneckModel`.
        standardize_features: standardise with the statistics of the first data seen.
    """

    default_name = "linear probe (sequential)"

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        epochs_per_task: int = 10,
        batch_size: int = 32,
        optimizer: Literal["adamw", "adam", "sgd"] = "adam",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        standardize_features: bool = False,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        from bottlenecks.layers.concept import IdentityBottleneck
        from bottlenecks.models.module import BottleneckModel

        model = BottleneckModel(
            IdentityBottleneck(feature_dim), num_classes=num_classes, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, lr_schedule="constant", standardize_features=standardize_features,
        )
        super().__init__(model, epochs_per_task=epochs_per_task, batch_size=batch_size, seed=seed,
                         name=name or self.default_name)


class JointLinearProbe(SequentialLinearProbe):
    """Upper bound: at each task, the probe trains on the union of every task seen so far.

    The same model continues from task to task (full replay of all earlier data), so
    its final state is a probe trained jointly on everything. Arguments as
    :class:`SequentialLinearProbe`.
    """

    default_name = "linear probe (joint, upper bound)"
    stream: ClassIncrementalStream | None = None  # set by prepare()

    def prepare(self, stream: ClassIncrementalStream, unlabelled: Tensor | None = None) -> None:
        self.stream = stream
        super().prepare(stream, unlabelled)

    def fit_task(self, task: Task, on_step: OnStep | None = None) -> None:
        if self.stream is None:
            raise RuntimeError("JointLinearProbe.prepare(stream) must run before fit_task")
        x, y = self.stream.seen_train(task.index)
        classes = [c for t in self.stream.task_classes[: task.index + 1] for c in t]
        super().fit_task(Task(task.index, classes, x, y, *self.stream.seen_test(task.index)), on_step)
