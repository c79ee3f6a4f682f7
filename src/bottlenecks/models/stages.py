"""Training schedules as small, named stages (a Lightning callback), not forks of the model.

A :class:`Stage` says, for a run of epochs, which parameters train, how the task
and concept losses are weighted, and whether the head reads the *predicted* or
the *ground-truth* concepts. :class:`TrainingStages` applies a list of them to a
:class:`~bottlenecks.models.module.BottleneckModel` at epoch boundaries (so a
resumed run lands in the right stage) and restores the model when fitting ends.

:class:`CBMTrainingMode` builds the three training modes of Koh et al. (2020):

* ``joint`` — one stage: task loss + ``λ`` × concept loss, everything trains.
* ``sequential`` — stage ``concepts`` trains the concept predictor on the concept
  loss alone; stage ``head`` freezes it and trains the head on its *predicted*
  concepts (probabilities, or 0/1 with ``hard=True`` on the bottleneck).
* ``independent`` — stage ``concepts`` as above; stage ``head`` trains the head on
  the *ground-truth* concepts (the predictor only meets the head at test time).

From YAML::

    trainer:
      max_epochs: 40
      callbacks:
        - class_path: bottlenecks.models.stages.CBMTrainingMode
          init_args: {mode: sequential, concept_epochs: 20}

From Python::

    L.Trainer(max_epochs=40, callbacks=[CBMTrainingMode("independent", concept_epochs=20)])

**Exact fits.** On frozen features the linear parts of independent and sequential CBMs are
convex problems, and they are solved as such by default (``exact_fit``): when training starts,
a linear concept predictor is fitted by per-concept L2-regularised logistic regression (masked
labels skipped), then a linear head by multinomial logistic regression (ridge regression for
regression tasks) on the ground-truth concepts (independent) or on the fitted predictor's
outputs (sequential), all by :func:`bottlenecks.analysis.probes.fit_linear`: the strength ``C``
chosen by k-fold cross-validation over train + validation rows when there are at most
``cv_max_rows`` of them (else on the validation rows), then refitted on train + validation.
What was fitted exactly does not train again: with a linear predictor and a linear head and no
side channel nothing is left and no epoch runs (``ModelCheckpoint(save_last=True)`` saves the
fitted model as ``last.ckpt``); a residual side channel or a non-linear head trains with the
head stage by gradient, over every epoch; an MLP predictor trains by gradient as before
(and then its head too). The fitted weights are the model's ordinary parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from bottlenecks.analysis.probes import CV_FOLDS, CV_MAX_ROWS, DEFAULT_CS, SELECT_BY, fit_linear

MODES = ("independent", "sequential", "joint")


@dataclass
class Stage:
    """One named stage of a training schedule.

    Attributes:
        name: shown in logs (``stage`` metric is its index) and error messages.
        epochs: how many epochs the stage lasts; None for "until ``max_epochs``"
            (only the last stage may say so).
        train: prefixes of the parameter names that train in this stage (``"bottleneck"``,
            ``"head"``, ``"bottleneck.residual"``, ...); every other parameter is frozen
            and its modules put in eval mode.
        concept_loss_weight: the model's concept-loss weight during the stage (None: keep).
        task_loss_weight: the model's task-loss weight during the stage (None: keep).
        head_reads: ``"predicted"`` concepts, or ``"true"`` ones: every labelled concept is
            replaced by its ground truth before the head (an intervention on all concepts).
        needs_concepts: the stage cannot run without concept labels in the batches.
    """

    name: str
    epochs: int | None = None
    train: list[str] = field(default_factory=lambda: ["bottleneck", "head"])
    concept_loss_weight: float | None = None
    task_loss_weight: float | None = None
    head_reads: Literal["predicted", "true"] = "predicted"
    needs_concepts: bool = False


class TrainingStages(Callback):
    """Runs a :class:`BottleneckModel` through a list of :class:`Stage` s.

    Args:
        stages: the stages, in order; their epochs must fit in the trainer's ``max_epochs``.
        why_concepts: words for the error raised when a stage that needs concept labels
            meets data without them.
    """

    def __init__(self, stages: list[Stage], why_concepts: str | None = None) -> None:
        if not stages:
            raise ValueError("TrainingStages needs at least one stage")
        for i, s in enumerate(stages):
            if s.epochs is None and i != len(stages) - 1:
                raise ValueError(f"stage {s.name!r}: only the last stage may have epochs=None")
            if s.epochs is not None and s.epochs < 1:
                raise ValueError(f"stage {s.name!r}: epochs must be >= 1, got {s.epochs}")
            if s.head_reads not in ("predicted", "true"):
                raise ValueError(f"stage {s.name!r}: head_reads must be 'predicted' or 'true', got {s.head_reads!r}")
        self.stages = list(stages)
        self.why_concepts = why_concepts
        self._current: int | None = None
        self._saved: dict[str, Any] | None = None
        self._hook: Any = None
        self._checked_batch = False

    # ------------------------------------------------------------ schedule
    @property
    def describe(self) -> str:
        return " → ".join(f"{s.name}({s.epochs if s.epochs is not None else 'rest'})" for s in self.stages)

    def stage_at(self, epoch: int) -> int:
        """Index of the stage that runs at ``epoch`` (0-based)."""
        end = 0
        for i, s in enumerate(self.stages):
            if s.epochs is None:
                return i
            end += s.epochs
            if epoch < end:
                return i
        return len(self.stages) - 1

    # --------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_model_and_data(trainer, pl_module)
        self._check_parameters(pl_module)
        fixed = sum(s.epochs or 0 for s in self.stages)
        open_ended = self.stages[-1].epochs is None
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            if fixed > max_epochs or (open_ended and fixed >= max_epochs):
                raise ValueError(
                    f"training stages {self.describe} need more than trainer.max_epochs={max_epochs} epochs"
                )
        self._saved = {
            "concept_loss_weight": pl_module.concept_loss_weight,
            "task_loss_weight": pl_module.task_loss_weight,
        }
        self._current = None
        self._checked_batch = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        i = self.stage_at(trainer.current_epoch)
        if i != self._current:
            self._enter(i, pl_module)
        # once per epoch: a self.log call on every batch costs more than a small model's step
        pl_module.log("stage", float(i), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        stage = self.stages[self._current or 0]
        if not self._checked_batch or stage.needs_concepts:
            if stage.needs_concepts and (not isinstance(batch, dict) or batch.get("concepts") is None):
                raise ValueError(self._no_concepts_message(stage, "the training batches have no 'concepts'"))
            self._checked_batch = True
        # trained parts in train mode, frozen parts in eval mode (no dropout noise, no batch-norm
        # drift, no RandInt); Lightning keeps each submodule's mode across validation, so this
        # is set on every batch.
        self._apply_modes(pl_module, "", stage)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [s.name for s in self.stages]}

    # ------------------------------------------------------------ internals
    @staticmethod
    def _trains(name: str, stage: Stage) -> bool:
        return any(name == p or name.startswith(p + ".") for p in stage.train)

    @staticmethod
    def _any_trains_under(name: str, stage: Stage) -> bool:
        return any(p.startswith(name + ".") for p in stage.train)

    def _apply_modes(self, module: nn.Module, prefix: str, stage: Stage) -> None:
        for name, child in module.named_children():
            full = prefix + name
            if self._trains(full, stage):
                child.train()
            elif self._any_trains_under(full, stage):
                child.training = True
                self._apply_modes(child, full + ".", stage)
            else:
                child.eval()

    def _enter(self, i: int, pl_module: L.LightningModule) -> None:
        stage = self.stages[i]
        for name, p in pl_module.named_parameters():
            train = self._trains(name, stage)
            p.requires_grad_(train)
            if not train:
                p.grad = None
        saved = self._saved or {}
        for attr in ("concept_loss_weight", "task_loss_weight"):
            value = getattr(stage, attr)
            if value is None:
                value = saved.get(attr)
            if value is not None:
                setattr(pl_module, attr, value)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if stage.head_reads == "true":
            self._hook = pl_module.bottleneck.register_forward_pre_hook(
                _teacher_forcing(pl_module), with_kwargs=True
            )
        self._current = i

    def _restore(self, pl_module: L.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._saved is None:
            return
        for p in pl_module.parameters():
            p.requires_grad_(True)
        pl_module.train(pl_module.training)
        for attr, value in self._saved.items():
            if value is not None:
                setattr(pl_module, attr, value)
        self._saved = None
        self._current = None

    @staticmethod
    def _check_model(pl_module: L.LightningModule) -> None:
        from bottlenecks.models.module import BottleneckModel

        if not isinstance(pl_module, BottleneckModel):
            raise TypeError(f"TrainingStages drives a BottleneckModel, got {type(pl_module).__name__}")

    def _check_model_and_data(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_model(pl_module)
        bottleneck = pl_module.bottleneck
        needing = [s for s in self.stages if s.needs_concepts]
        if not needing:
            return
        if not bottleneck.num_concepts:
            raise ValueError(
                self._no_concepts_message(needing[0], f"the bottleneck {type(bottleneck).__name__} has no concepts")
            )
        dm = getattr(trainer, "datamodule", None)
        if dm is None:
            return  # plain dataloaders: checked on the first batch
        names = getattr(dm, "concept_names", None)
        has_table = True
        if hasattr(dm, "split"):
            try:
                has_table = dm.split("train").concepts is not None
            except (AttributeError, KeyError):
                has_table = True
        if not names or not has_table:
            raise ValueError(
                self._no_concepts_message(needing[0], f"the data {type(dm).__name__} has no concept labels")
            )

    def _check_parameters(self, pl_module: L.LightningModule) -> None:
        names = [n for n, _ in pl_module.named_parameters()]
        for s in self.stages:
            if not any(self._trains(n, s) for n in names):
                raise ValueError(
                    f"stage {s.name!r} trains {s.train} but the model has no parameters under those names "
                    f"(its parameters start with {sorted({n.split('.')[0] for n in names})})"
                )

    def _no_concepts_message(self, stage: Stage, what: str) -> str:
        why = f" ({self.why_concepts})" if self.why_concepts else ""
        return (
            f"{self._label(stage)} needs concept labels{why}, but {what}; use data with concept "
            "annotations, or a bottleneck that trains without them"
        )

    def _label(self, stage: Stage) -> str:
        return f"training stage {stage.name!r}"


def _teacher_forcing(pl_module: nn.Module):  # noqa: ANN202 - a hook
    """Forward pre-hook: while the model trains, intervene with every labelled ground-truth concept."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        concepts = kwargs.get("concepts")
        if not pl_module.training or concepts is None:
            return None
        mask = ~torch.isnan(concepts)
        given = kwargs.get("intervention_mask")
        if given is not None:
            mask = mask | given.bool()
        return args, {**kwargs, "intervention_mask": mask}

    return hook


class CBMTrainingMode(TrainingStages):
    """The training modes of concept bottleneck models (Koh et al., 2020) as stages.

    Args:
        mode: ``"joint"``, ``"sequential"`` or ``"independent"`` (see the module docstring).
        concept_epochs: epochs of the ``concepts`` stage of sequential/independent training;
            the ``head`` stage gets the rest of ``max_epochs``. Default: half of ``max_epochs``.
        concept_loss_weight: joint mode's ``λ`` (None keeps the model's ``concept_loss_weight``).
        exact_fit: fit the convex linear parts exactly when training starts (see the module
            docstring). None (default): on for independent and sequential, off for joint;
            True with joint starts joint training from the exact sequential fit.
        Cs: grid of inverse regularisation strengths the exact fits choose from (scikit-learn's
            ``C``; None: :data:`~bottlenecks.analysis.probes.DEFAULT_CS`).
        cv_folds, cv_max_rows: ``C`` is chosen by ``cv_folds``-fold cross-validation over train +
            validation rows when there are at most ``cv_max_rows``, else on the validation rows.
        select_by: ``"accuracy"`` (default: held-out accuracy, log-loss deciding between
            strengths within a standard error) or ``"log_loss"`` (better-calibrated concept
            probabilities; see :data:`~bottlenecks.analysis.probes.SELECT_BY`).

    After fitting, :attr:`exact_fit_summary` says what was fitted exactly, on how many rows,
    with which ``C`` and how it was chosen (the run report prints it).

    All three modes need concept labels; on data without them, fitting stops with an
    error naming the mode.
    """

    _WHY = {
        "joint": "the joint loss includes the concept loss",
        "sequential": "the concept predictor is trained on them before the head",
        "independent": "the concept predictor is trained on them and the head reads them",
    }

    def __init__(
        self,
        mode: Literal["independent", "sequential", "joint"] = "joint",
        concept_epochs: int | None = None,
        concept_loss_weight: float | None = None,
        exact_fit: bool | None = None,
        Cs: list[float] | None = None,
        cv_folds: int = CV_FOLDS,
        cv_max_rows: int = CV_MAX_ROWS,
        select_by: Literal["accuracy", "log_loss"] = SELECT_BY,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if concept_epochs is not None and concept_epochs < 1:
            raise ValueError(f"concept_epochs must be >= 1, got {concept_epochs}")
        if mode == "joint" and concept_epochs is not None:
            raise ValueError("concept_epochs applies to sequential and independent training, not joint")
        if concept_loss_weight is not None and mode != "joint":
            raise ValueError(
                f"concept_loss_weight is joint training's λ; {mode} training trains concepts and head separately"
            )
        if cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {cv_folds}")
        if select_by not in ("accuracy", "log_loss"):
            raise ValueError(f"select_by must be 'accuracy' or 'log_loss', got {select_by!r}")
        if Cs is not None and (not Cs or min(Cs) <= 0):
            raise ValueError(f"Cs must be positive inverse regularisation strengths, got {Cs}")
        self.mode = mode
        self.concept_epochs = concept_epochs
        self.concept_loss_weight = concept_loss_weight
        self.exact_fit = (mode != "joint") if exact_fit is None else bool(exact_fit)
        self.Cs = tuple(Cs) if Cs is not None else DEFAULT_CS
        self.cv_folds = int(cv_folds)
        self.cv_max_rows = int(cv_max_rows)
        self.select_by = select_by
        self.exact_fit_summary: dict[str, Any] = {}
        super().__init__(self._build(concept_epochs or 1), why_concepts=self._WHY[mode])

    def _build(self, concept_epochs: int, head_train: list[str] | None = None) -> list[Stage]:
        if self.mode == "joint":
            return [Stage("joint", concept_loss_weight=self.concept_loss_weight, needs_concepts=True)]
        head_train = head_train or ["head"]
        concepts = Stage(
            "concepts", epochs=concept_epochs, train=["bottleneck"], task_loss_weight=0.0, needs_concepts=True
        )
        head = Stage(
            "head",
            epochs=None,
            train=head_train,
            concept_loss_weight=0.0,
            head_reads="true" if self.mode == "independent" else "predicted",
            needs_concepts=self.mode == "independent",
        )
        return [concepts, head]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.mode != "joint":
            concept_epochs = self.concept_epochs
            if concept_epochs is None:
                if trainer.max_epochs is None or trainer.max_epochs < 2:
                    raise ValueError(
                        f"{self.mode} training needs trainer.max_epochs >= 2 (a concepts stage and a head stage), "
                        f"got {trainer.max_epochs}"
                    )
                concept_epochs = trainer.max_epochs // 2
            # the side channel of a concept bottleneck is unsupervised: it trains with the head
            self._check_model(pl_module)
            side = pl_module.bottleneck.side_channel_parameters()
            self.stages = self._build(concept_epochs, ["head", *(f"bottleneck.{p}" for p in side)])
        super().on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The exact fits, after the model standardised its features (``on_fit_start``)."""
        if not self.exact_fit:
            return
        predictor, head = exact_parts(pl_module)
        if predictor is None:
            rank_zero_info(f"{self.mode} CBM: the concept predictor is not linear; it trains by gradient")
            return
        resumed = trainer.ckpt_path is not None
        if not resumed:
            self.exact_fit_summary = fit_cbm_exactly(
                pl_module, _exact_fit_data(trainer, pl_module), self.mode, Cs=self.Cs, folds=self.cv_folds,
                cv_max_rows=self.cv_max_rows, fit_head=head is not None, select_by=self.select_by)
            rank_zero_info(f"{self.mode} CBM, exact fit: {self.exact_fit_summary}")
        if self.mode == "joint":
            return  # joint training goes on from the exact fit
        if head is not None:
            trainer.should_stop = True  # nothing left to train: no epoch runs
            return
        # a side channel or a non-linear head: the head stage trains it, over every epoch
        self.stages = [self.stages[-1]]
        self._current = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "exact_fit": self.exact_fit_summary}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.exact_fit_summary = dict(state_dict.get("exact_fit") or {})

    def _label(self, stage: Stage) -> str:
        return f"{self.mode} CBM training (stage {stage.name!r})"


# ------------------------------------------------------------------ exact fits
def exact_parts(model: nn.Module) -> tuple[nn.Linear | None, nn.Linear | None]:
    """The parts of a CBM that exact fits solve: its linear concept predictor (None when the
    bottleneck is not a :class:`~bottlenecks.layers.concept.ConceptBottleneck` with a linear
    predictor) and its linear head (None when the head is not linear or the bottleneck has a
    side channel, whose training with the head is not convex)."""
    from bottlenecks.layers.concept import ConceptBottleneck

    b = model.bottleneck
    if type(b) is not ConceptBottleneck or not isinstance(b.predictor, nn.Linear):
        return None, None
    head = model.head if isinstance(model.head, nn.Linear) and b.side_channel() is None else None
    return b.predictor, head


def _exact_fit_data(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor | None]:
    """Training rows (and validation rows, when the datamodule has them): raw features, concepts, targets."""
    from bottlenecks.models.posthoc import split_rows

    dm = getattr(trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "split"):
        x, y, c = split_rows(dm, "train")
        data: dict[str, Tensor | None] = {"x": x, "y": y, "concepts": None if c is None else torch.as_tensor(c).float()}
        try:
            xv, yv, cv = split_rows(dm, "val")
        except (KeyError, ValueError, TypeError, AttributeError):
            xv = None
        if xv is not None and len(xv):
            data.update(x_val=xv, y_val=yv, concepts_val=None if cv is None else torch.as_tensor(cv).float())
        return data
    x, c, y = pl_module._sample_train_data(2**62)
    return {"x": x, "y": y, "concepts": c}


@torch.no_grad()
def _head_inputs(model: nn.Module, h: Tensor, concepts: Tensor | None, mode: str) -> Tensor:
    """What the head reads: ``z`` on the predicted concepts (sequential, joint), or with every
    labelled concept replaced by its ground truth (independent, as its head stage trains)."""
    if mode == "independent" and concepts is not None:
        return model.bottleneck(h, concepts=concepts, intervention_mask=~torch.isnan(concepts)).z
    return model.bottleneck(h).z


def fit_cbm_exactly(
    model: nn.Module,
    data: dict[str, Tensor | None],
    mode: str,
    Cs: tuple[float, ...] | list[float] = DEFAULT_CS,
    folds: int = CV_FOLDS,
    cv_max_rows: int = CV_MAX_ROWS,
    fit_head: bool = True,
    select_by: str = SELECT_BY,
) -> dict[str, Any]:
    """Fit a CBM's linear concept predictor and (``fit_head``) its linear head exactly, in place.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` whose standardisation is
            fitted (the model does that at fit start).
        data: ``x``, ``y``, ``concepts`` (raw features, targets, concepts with NaN where
            unlabelled) and optionally ``x_val``, ``y_val``, ``concepts_val``.
        mode: ``"independent"`` (the head on ground-truth concepts), ``"sequential"`` or
            ``"joint"`` (the head on the fitted predictor's outputs).
        Cs, folds, cv_max_rows, select_by: see :func:`~bottlenecks.analysis.probes.fit_linear`.

    Returns:
        ``{"concepts": {...}, "head": {...}}``: per part the chosen ``C`` (one per concept for the
        predictor), how it was chosen and how many rows the final fit saw.
    """
    predictor, head = exact_parts(model)
    if predictor is None:
        raise ValueError(f"exact fits need a ConceptBottleneck with a linear concept predictor, got "
                         f"{type(model.bottleneck).__name__}")
    if data.get("concepts") is None:
        raise ValueError(f"the exact fit of a {mode} CBM needs concept labels; the data has none")
    was = model.training
    model.eval()
    dev = predictor.weight.device
    try:
        with torch.no_grad():
            h = model.norm(torch.as_tensor(data["x"]).float().to(dev)).cpu()
            hv = None if data.get("x_val") is None else model.norm(torch.as_tensor(data["x_val"]).float().to(dev)).cpu()
        c, cv = data["concepts"], data.get("concepts_val")
        has_val = hv is not None and cv is not None
        kw = dict(Cs=Cs, folds=folds, cv_max_rows=cv_max_rows, select_by=select_by)
        fit = fit_linear(h, c, "binary", hv if has_val else None, cv if has_val else None, **kw)
        with torch.no_grad():
            predictor.weight.copy_(fit.weight[:-1].T.to(predictor.weight))
            predictor.bias.copy_(fit.weight[-1].to(predictor.bias))
        summary: dict[str, Any] = {"concepts": fit.summary()}
        if fit_head and head is not None:
            z = _head_inputs(model, h.to(dev), c.to(dev), mode).cpu()
            zv = _head_inputs(model, hv.to(dev), cv.to(dev), mode).cpu() if has_val else None
            y, yv = torch.as_tensor(data["y"]), (torch.as_tensor(data["y_val"]) if has_val else None)
            if model.task == "classification":
                fit = fit_linear(z, y, "multiclass", zv, yv, n_classes=head.out_features, **kw)
                w = fit.weight
            else:
                fit = fit_linear(z, y.float(), "regression", zv, None if yv is None else yv.float(), **kw)
                w = fit.weight[:, None]
            with torch.no_grad():
                head.weight.copy_(w[:-1].T.to(head.weight))
                head.bias.copy_(w[-1].to(head.bias))
            summary["head"] = fit.summary()
    finally:
        model.train(was)
    return summary
