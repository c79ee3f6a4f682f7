"""The one LightningModule: (frozen encoder) → bottleneck → head, with weighted losses.

Training on cached features is the normal case: the datamodule hands the model
``batch["x"]`` of shape ``(batch, in_features)``. When the model is given raw
images ``(batch, 3, H, W)`` instead (prediction on new data), it runs the frozen
encoder named by ``encoder`` first.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from bottlenecks import distributed
from bottlenecks.layers.base import CONCEPT_LOSS, Bottleneck, BottleneckOutput, deferred_checks, masked_concept_bce
from bottlenecks.layers.blocks import mlp

Task = Literal["classification", "regression"]

#: Version of the checkpoint layout this code writes. 1: bottlenecks 0.1 (no stamp; option
#: names before the unified vocabulary); 2: bottlenecks 0.2 (edit log, unified names).
CHECKPOINT_FORMAT = 2

__all__ = ["BottleneckModel", "FeatureNorm", "OPTIMIZER_DEFAULTS", "TRAINING_DEFAULTS", "masked_concept_bce"]

#: The model's optimiser settings where neither the model's options nor the bottleneck's
#: ``training_defaults()`` say otherwise.
OPTIMIZER_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "cosine", "warmup_fraction": 0.0}
#: everything a bottleneck's ``training_defaults()`` may set, with the model's own fallback
TRAINING_DEFAULTS: dict[str, Any] = {**OPTIMIZER_DEFAULTS, "feature_scale": "per_feature"}


#: How :class:`FeatureNorm` scales centred features (``BottleneckModel(feature_scale=...)``).
FEATURE_SCALES = ("shared", "per_feature")


class FeatureNorm(nn.Module):
    """Centres features and scales them with statistics of the training set (set once at fit start).

    ``scale="per_feature"`` z-scores each dimension (variance floored at 1 % of the mean
    variance): right for features in unrelated units. ``scale="shared"`` divides every
    dimension by one number, the root mean variance, so the features keep their relative
    scales: an encoder's high-variance, informative directions are not put on a par with its
    low-variance, noisy ones. On the main job's Lite0 features a linear probe scores 0.973
    with the shared scale and 0.964 with z-scores (docs/defaults.md, "Feature scaling").
    """

    def __init__(self, dim: int, scale: str = "per_feature") -> None:
        super().__init__()
        if scale not in FEATURE_SCALES:
            raise ValueError(f"feature scale must be one of {FEATURE_SCALES}, got {scale!r}")
        self.scale = scale
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, h: Tensor) -> None:
        var = h.var(0)
        self.mean.copy_(h.mean(0))
        if self.scale == "shared":
            self.std.fill_(float((var.mean() + 1e-12).sqrt()))
        else:
            # Dimensions that (nearly) never vary in the training sample must not turn tiny
            # differences at test time into huge values: floor the variance relative to the mean.
            self.std.copy_((var + 1e-2 * var.mean() + 1e-12).sqrt())
        self.fitted.fill_(True)

    def forward(self, h: Tensor) -> Tensor:
        return torch.sub(h, self.mean).div_(self.std)  # one temporary, the same numbers


class BottleneckModel(L.LightningModule):
    """Encoder features → bottleneck → head, trained with task + concept + auxiliary losses.

    Args:
        bottleneck: any :class:`~bottlenecks.layers.base.Bottleneck`.
        head: the task head; default a Linear (or an MLP with ``head_hidden``)
            from ``bottleneck.out_features`` to the number of outputs.
        task: ``"classification"`` or ``"regression"`` (linked from the data by the CLI).
        num_classes: number of classes for classification (linked from the data).
        head_hidden: hidden widths of the default head (empty = linear).
        concept_loss_weight: weight of the concept BCE that concept layers return under
            ``"concept_loss"`` (joint CBM's λ). Ignored when the bottleneck has no concepts or
            the batch has no concept labels.
        task_loss_weight: weight of the task loss (0 trains the concepts alone).
        loss_weights: weight of each auxiliary loss the bottleneck returns
            (:meth:`~bottlenecks.layers.base.Bottleneck.loss_terms`), by name; a name not
            listed gets weight 1.
        standardize_features: standardise features with training-set statistics,
            computed once at fit start and kept in the checkpoint. None (default): yes,
            unless the bottleneck reads the encoder's own coordinates
            (``bottleneck.feature_space == "encoder"``: concept banks), where True is an error.
        feature_scale: how :class:`FeatureNorm` scales the centred features: ``"per_feature"``
            (z-scores) or ``"shared"`` (one scale for all dimensions, keeping their relative
            scales). None (default): the bottleneck's measured ``training_defaults()`` (shared for
            ``ConceptBottleneck``: docs/defaults.md), else ``"per_feature"``.
        optimizer: ``"adamw"``, ``"adam"``, ``"sgd"`` or ``"muon"`` (Muon for the weight
            matrices of ``nn.Linear`` layers except the head's output layer, AdamW for the rest:
            :class:`~bottlenecks.models.optimizers.MuonAdamW`).
        lr, weight_decay, momentum: optimiser settings (``momentum``: SGD's and Muon's).
        lr_schedule: ``"cosine"`` (over the run's total steps), ``"constant"``, or
            ``"cooldown"``: constant, then linear to 0 over the last 20% of the steps.
        warmup_fraction: fraction of the run's total steps over which the learning rate
            rises linearly from ~0 to ``lr`` before the schedule (0 = no warmup).
            ``lr``, ``weight_decay``, ``lr_schedule`` and ``warmup_fraction`` left unset (None)
            take the bottleneck's measured :meth:`~bottlenecks.layers.base.Bottleneck.training_defaults`
            (the gradient-trained concept bottlenecks: docs/defaults.md), else
            :data:`OPTIMIZER_DEFAULTS`; the resolved values are the model's hyperparameters.
        reference_batch_size: the global batch ``lr`` and the EMA decays were chosen for. When
            set, training at another effective batch (batch size × processes × gradient
            accumulation) scales ``lr`` by ``lr_scaling`` and the EMA codebooks' decays to the
            batch each update sees (``ema_scaling``); logged once at fit start. None: nothing is scaled.
        lr_scaling: ``"linear"`` (lr × B / B_ref), ``"sqrt"`` (lr × sqrt(B / B_ref)), ``"none"``, or
            ``"auto"``: linear for SGD, square root for Adam and AdamW.
        ema_scaling: with ``reference_batch_size``, EMA codebooks (:class:`~bottlenecks.layers.quantize.VectorQuantizer`
            with ``ema``, residual VQ stages) use ``ema_decay ** (B / B_ref)`` (the same memory in samples).
        data_init_samples: how many training features ``bottleneck.init_from_data`` sees.
        encoder: the frozen encoder spec (linked from the data) used when the model is
            given raw images rather than features.
        text_encoder: the paired text encoder spec (linked from the data), handed to
            ``bottleneck.init_from_data`` for bottlenecks that read text.
    """

    def __init__(
        self,
        bottleneck: Bottleneck,
        head: nn.Module | None = None,
        task: Task = "classification",
        num_classes: int | None = None,
        head_hidden: list[int] | None = None,
        concept_loss_weight: float = 1.0,
        task_loss_weight: float = 1.0,
        loss_weights: dict[str, float] | None = None,
        standardize_features: bool | None = None,
        feature_scale: Literal["shared", "per_feature"] | None = None,
        optimizer: Literal["adamw", "adam", "sgd", "muon"] = "adamw",
        lr: float | None = None,
        weight_decay: float | None = None,
        momentum: float = 0.9,
        lr_schedule: Literal["cosine", "constant", "cooldown"] | None = None,
        warmup_fraction: float | None = None,
        reference_batch_size: int | None = None,
        lr_scaling: Literal["none", "linear", "sqrt", "auto"] = "auto",
        ema_scaling: bool = True,
        data_init_samples: int = 20000,
        encoder: str | dict[str, Any] | None = None,
        text_encoder: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Built by the CLI, the hyperparameters are the config's plain class_path/init_args
        # mappings (checkpoints then reload with weights_only=True and rebuild the bottleneck);
        # built from Python, the modules themselves are not hyperparameters.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        for key in ("bottleneck", "head"):
            if isinstance(self.hparams.get(key), nn.Module):
                del self.hparams[key]
        if not isinstance(bottleneck, Bottleneck):
            raise TypeError(f"bottleneck must be a bottlenecks Bottleneck, got {type(bottleneck).__name__}")
        if reference_batch_size is not None and reference_batch_size < 1:
            raise ValueError(f"reference_batch_size must be a positive batch size, got {reference_batch_size}")
        if lr_scaling not in ("none", "linear", "sqrt", "auto"):
            raise ValueError(f"lr_scaling must be 'none', 'linear', 'sqrt' or 'auto', got {lr_scaling!r}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if task == "classification" and (num_classes is None or num_classes < 2):
            raise ValueError(f"classification needs num_classes >= 2, got {num_classes}")
        self._resolve_optimizer_defaults(bottleneck)
        self.bottleneck = bottleneck
        self.task = task
        self.num_classes = num_classes
        n_out = num_classes if task == "classification" else 1
        if head is None and bottleneck.predicts_task:
            # The bottleneck's z already is the task output (e.g. ECBM's log p(y | x)).
            if bottleneck.out_features != n_out:
                raise ValueError(
                    f"{type(bottleneck).__name__} predicts {bottleneck.out_features} outputs but the "
                    f"task has {n_out}"
                )
            head = nn.Identity()
        self.head = head if head is not None else mlp(bottleneck.out_features, head_hidden or [], n_out)
        reads_encoder_space = bottleneck.feature_space == "encoder"
        if standardize_features and reads_encoder_space:
            raise ValueError(
                f"standardize_features=True, but {type(bottleneck).__name__} reads features in the encoder's own "
                "coordinates (its vectors live there); leave standardize_features unset"
            )
        if standardize_features is None:
            standardize_features = not reads_encoder_space
        self.norm = FeatureNorm(bottleneck.in_features, self.hparams.feature_scale) if standardize_features else nn.Identity()
        self.concept_loss_weight = concept_loss_weight
        self.task_loss_weight = task_loss_weight
        self.loss_weights = dict(loss_weights or {})
        self._encoder_spec = encoder
        self._text_encoder_spec = text_encoder
        self._loss_sums: dict[str, dict[str, Tensor]] = {}
        self._loss_counts: dict[str, int] = {}
        self._minibatch: int | None = None  # rows per optimiser step when a batch carries several
        self._direct_steps = False  # those steps call backward and the optimiser without Lightning's wrappers
        self._build_metrics()

    def _resolve_optimizer_defaults(self, bottleneck: Bottleneck) -> None:
        """Fill the optimiser options left unset from the bottleneck's measured defaults, then
        :data:`TRAINING_DEFAULTS`; check them."""
        measured = dict(bottleneck.training_defaults())
        known = TRAINING_DEFAULTS
        unknown = sorted(set(measured) - set(known))
        if unknown:
            raise ValueError(
                f"{type(bottleneck).__name__}.training_defaults() names {unknown}; known: {sorted(known)}"
            )
        for name, fallback in known.items():
            if self.hparams.get(name) is None:
                self.hparams[name] = measured.get(name, fallback)
        hp = self.hparams
        if hp.feature_scale not in FEATURE_SCALES:
            raise ValueError(f"feature_scale must be one of {FEATURE_SCALES}, got {hp.feature_scale!r}")
        if hp.lr_schedule not in ("cosine", "constant", "cooldown"):
            raise ValueError(f"lr_schedule must be 'cosine', 'constant' or 'cooldown', got {hp.lr_schedule!r}")
        if not 0.0 <= hp.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {hp.warmup_fraction!r}")

    # ------------------------------------------------------------------ metrics
    @property
    def concept_names(self) -> list[str] | None:
        return self.bottleneck.concept_names

    def _build_metrics(self) -> None:
        def task_metrics() -> torchmetrics.MetricCollection:
            if self.task == "classification":
                return torchmetrics.MetricCollection(
                    # labels are checked once when the data loads (check_labels): validating them
                    # again on every step costs a unique() and host syncs per batch
                    {"task_acc": torchmetrics.classification.MulticlassAccuracy(
                        self.num_classes, average="micro", validate_args=False)}
                )
            return torchmetrics.MetricCollection(
                {"mse": torchmetrics.MeanSquaredError(), "r2": torchmetrics.R2Score()}
            )

        self.task_metrics = nn.ModuleDict({s: task_metrics() for s in ("train_", "val_", "test_")})
        n = self.bottleneck.num_concepts
        self.concept_metrics = nn.ModuleDict()
        if n > 0:
            from bottlenecks.models.concept_metrics import ConceptMetrics

            for s in ("val_", "test_"):
                self.concept_metrics[s] = ConceptMetrics(n)

    # ------------------------------------------------------------------ forward
    def encode(self, x: Tensor) -> Tensor:
        """Features from raw images ``(batch, 3, H, W)`` with the frozen encoder, or ``x`` itself."""
        if x.dim() == 2:
            if x.shape[1] != self.bottleneck.in_features:  # before FeatureNorm broadcasts it
                raise ValueError(
                    f"expected features (batch, {self.bottleneck.in_features}), got shape {tuple(x.shape)}"
                )
            return x
        if x.dim() != 4:
            raise ValueError(
                f"expected features (batch, {self.bottleneck.in_features}) or images (batch, 3, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        encoder = self.frozen_encoder()
        if encoder is None:
            raise ValueError("this model was given images but has no encoder; pass features instead")
        return encoder.to(x.device).encode(x)

    def frozen_encoder(self) -> Any:
        """The frozen encoder (:class:`~bottlenecks.encoders.base.FrozenEncoder`) that turns raw
        images into this model's features, or None when the model only sees features.

        It is the data side's shared instance, never a submodule: frozen weights are not part
        of the checkpoint. Attribution runs it with autograd on (gradients reach the pixels).
        """
        if self._encoder_spec is None:
            return None
        from bottlenecks.encoders import shared_encoder

        return shared_encoder(self._encoder_spec)

    def forward(
        self,
        x: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> tuple[Tensor, BottleneckOutput]:
        """Task output and the bottleneck's output.

        Args:
            x: features ``(batch, in_features)`` or images ``(batch, 3, H, W)``.
            concepts, intervention_mask: passed to the bottleneck (interventions).

        Returns:
            ``(y_hat, out)``: logits ``(batch, num_classes)`` or predictions ``(batch,)``.
        """
        h = self.norm(self.encode(x))
        out = self.bottleneck(h, concepts=concepts, intervention_mask=intervention_mask)
        y_hat = self.head(out.z)
        if self.task == "regression":
            y_hat = y_hat.squeeze(-1)
        return y_hat, out

    # ------------------------------------------------------------------- losses
    def task_loss(self, y_hat: Tensor, y: Tensor) -> Tensor:
        if self.task == "classification":
            return F.cross_entropy(y_hat, y.long())
        return F.mse_loss(y_hat, y.float())

    def loss_weight(self, name: str) -> float:
        """The weight of an auxiliary loss term: ``concept_loss_weight`` for the concept loss,
        ``loss_weights[name]`` (default 1) for every other term."""
        return self.concept_loss_weight if name == CONCEPT_LOSS else self.loss_weights.get(name, 1.0)

    def compute_losses(self, batch: dict[str, Tensor], y_hat: Tensor, out: BottleneckOutput) -> dict[str, Tensor]:
        """The task loss, every term of ``bottleneck.loss_terms`` (unweighted, by name) and
        their weighted sum under ``"loss"``."""
        terms: dict[str, Tensor] = {"task_loss": self.task_loss(y_hat, batch["y"])}
        total = self.task_loss_weight * terms["task_loss"]
        for name, value in self.bottleneck.loss_terms(out, batch).items():
            if name in ("task_loss", "loss"):
                raise ValueError(f"{type(self.bottleneck).__name__} returned a loss named {name!r}, a reserved name")
            terms[name] = value
            weight = self.loss_weight(name)
            if weight != 0:
                total = total + weight * value
        terms["loss"] = total
        return terms

    def _step(self, batch: dict[str, Tensor], stage: str, outputs: list | None = None) -> Tensor:
        """The loss of one batch; its loss sums and metric updates for the epoch's log. With
        ``outputs``, the (detached) predictions are appended there for one metric update later."""
        training = stage == "train"
        y_hat, out = self(batch["x"], concepts=batch.get("concepts") if training else None)
        terms = self.compute_losses(batch, y_hat, out)
        bs = batch["x"].shape[0]
        # Loss terms are summed here and logged once per epoch (see _epoch_end): a
        # self.log call per term and step costs more than the step itself on cached features.
        sums = self._loss_sums.setdefault(stage, {})
        for name, value in terms.items():
            v = value.detach() * bs
            sums[name] = sums[name] + v if name in sums else v
        self._loss_counts[stage] = self._loss_counts.get(stage, 0) + bs
        for name, value in out.metrics.items():
            v = torch.as_tensor(value).detach().float().reshape(()) * bs
            sums[name] = sums[name] + v if name in sums else v
        labelled = out.concepts is not None and batch.get("concepts") is not None
        pair = (y_hat.detach(), out.concepts.detach().float() if labelled else None)
        if outputs is None:
            self._update_metrics(stage, batch, *pair)
        else:
            outputs.append(pair)
        return terms["loss"]

    def _update_metrics(self, stage: str, batch: dict[str, Tensor], y_hat: Tensor, concepts: Tensor | None) -> None:
        self.task_metrics[f"{stage}_"].update(y_hat, batch["y"])
        if concepts is not None and f"{stage}_" in self.concept_metrics:
            self.concept_metrics[f"{stage}_"].update(concepts, batch["concepts"])

    #: Whether the bottleneck's host-side checks (input range, EMA overflow, codebook collapse)
    #: are read once per Lightning batch instead of at every call, and its layers take their
    #: sync-free paths (:func:`~bottlenecks.layers.base.deferred_checks`): None — on
    #: accelerators, where each read makes the host wait for the device; True/False — always/never.
    defer_host_checks: bool | None = None

    def _batch_checks(self) -> Any:
        defer = self.defer_host_checks
        return deferred_checks(self.bottleneck, self.device.type != "cpu" if defer is None else defer)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        with self._batch_checks():
            if self._minibatch is None:
                return self._step(batch, "train")
            self._steps_over(batch, self._minibatch)
        return None

    # --------------------------------------------- several optimiser steps per batch
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._configure_steps_per_batch()

    def _configure_steps_per_batch(self) -> None:
        """Manual optimisation when the datamodule serves ``steps_per_batch`` > 1 minibatches per
        Lightning batch: Lightning's per-batch hooks, closure and wrappers then run once per K
        optimiser steps instead of once per step (docs/performance.md)."""
        dm = getattr(self.trainer, "datamodule", None)
        k = dm.train_steps_per_batch() if hasattr(dm, "train_steps_per_batch") else 1
        self._minibatch = int(dm.batch_size) if k > 1 else None
        self.automatic_optimization = k == 1
        if k == 1:
            return
        t = self.trainer
        if t.world_size > 1:
            raise ValueError(
                f"data.steps_per_batch={k} runs in one process only (DDP reduces gradients once per "
                "Lightning batch); under several processes leave it at 1"
            )
        if t.accumulate_grad_batches != 1:
            raise ValueError(
                f"data.steps_per_batch={k} takes one optimiser step per minibatch; it cannot be combined with "
                f"trainer.accumulate_grad_batches={t.accumulate_grad_batches} (raise data.batch_size instead)"
            )
        self._direct_steps = self._nothing_hooks_the_step()
        # step-counting callbacks look at global_step after each Lightning batch, i.e. every k steps
        from lightning.pytorch.callbacks import ModelCheckpoint

        for cb in t.callbacks:
            every = getattr(cb, "_every_n_train_steps", 0) if isinstance(cb, ModelCheckpoint) else 0
            if every and every % k:
                raise ValueError(
                    f"ModelCheckpoint(every_n_train_steps={every}) is not a multiple of data.steps_per_batch={k}: "
                    f"the step count advances by {k} per Lightning batch, so most of these checkpoints would "
                    "never be written; use a multiple of it"
                )

    _STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")

    def _nothing_hooks_the_step(self) -> bool:
        """Whether the minibatch steps may call ``backward`` and the optimiser directly: full precision
        (no gradient scaler) and no callback or override of this module hooking into backward or
        the optimiser step. Lightning's wrappers otherwise cost about half a millisecond a step,
        as much as a small model's whole step on cached features; with any of those, every step
        goes through them."""
        from lightning.pytorch.plugins.precision import Precision

        t = self.trainer
        if type(t.precision_plugin) is not Precision:
            return False
        hooked = [cb for cb in t.callbacks
                  if any(getattr(type(cb), h) is not getattr(L.Callback, h) for h in self._STEP_HOOKS)]
        own = any(getattr(type(self), h) is not getattr(L.LightningModule, h) for h in self._STEP_HOOKS)
        return not hooked and not own

    def _steps_over(self, batch: dict[str, Tensor], rows: int) -> None:
        """One optimiser step per ``rows`` rows of ``batch``, in order — the updates automatic
        optimisation makes over the same minibatches (clipping and the per-step schedule included)."""
        t = self.trainer
        opt = self.optimizers()
        sched = self.lr_schedulers()
        n = batch["x"].shape[0]

        def rows_of(a: int, b: int) -> dict[str, Tensor]:
            return {k: v[a:b] if isinstance(v, Tensor) and v.ndim and v.shape[0] == n else v for k, v in batch.items()}

        # the metrics are updated once for the whole batch (a torchmetrics update per minibatch
        # cost about a tenth of a small model's step), on the rows trained on, in order
        outputs: list = []
        done = 0
        for start in range(0, n, rows):
            if t.max_steps != -1 and t.global_step >= t.max_steps:
                break
            loss = self._step(rows_of(start, start + rows), "train", outputs)
            done = min(n, start + rows)
            if self._direct_steps:
                opt.optimizer.zero_grad()
                loss.backward()
            else:
                opt.zero_grad()
                self.manual_backward(loss)
            if t.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=t.gradient_clip_val,
                                    gradient_clip_algorithm=t.gradient_clip_algorithm)
            if self._direct_steps:
                progress = t.fit_loop.epoch_loop.manual_optimization.optim_step_progress
                progress.increment_ready()
                opt.optimizer.step()
                progress.increment_completed()
            else:
                opt.step()
            if sched is not None:
                sched.step()
        if outputs:
            concepts = None if outputs[0][1] is None else torch.cat([c for _, c in outputs])
            self._update_metrics("train", rows_of(0, done), torch.cat([y for y, _ in outputs]), concepts)

    def on_train_start(self) -> None:
        # A run resumed with another steps_per_batch: Lightning counts automatic and manual
        # optimiser steps apart; carry the count over so global_step (and max_steps) continue.
        loop = self.trainer.fit_loop.epoch_loop
        auto = loop.automatic_optimization.optim_progress.optimizer.step.total
        manual = loop.manual_optimization.optim_step_progress.total
        src, dst = (auto, manual) if self._minibatch is not None else (manual, auto)
        if dst.completed < src.completed:
            dst.ready = dst.completed = src.completed

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        with self._batch_checks():
            self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        with self._batch_checks():
            self._step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        with self._batch_checks():
            y_hat, out = self(batch["x"])
        pred: dict[str, Tensor] = {"y_hat": y_hat}
        if self.task == "classification":
            pred["y_pred"] = y_hat.argmax(-1)
        if out.probs is not None:
            pred["concept_probs"] = out.probs
        if out.codes is not None:
            pred["codes"] = out.codes
        if "index" in batch:
            pred["index"] = batch["index"]
        return pred

    def _epoch_end(self, stage: str) -> None:
        key = f"{stage}_"
        count = self._loss_counts.pop(stage, 0)
        sums = self._loss_sums.pop(stage, {})
        if distributed.is_distributed():
            sums, count = self._reduce_sums(stage, sums, count)
        # (values already global: sync_dist only tells Lightning so; the mean of equal values)
        for name, total in sums.items():
            self.log(f"{stage}/{name}", total / max(count, 1), sync_dist=True,
                     prog_bar=stage == "train" and name == "loss")
        for name, value in self.task_metrics[key].compute().items():  # torchmetrics syncs its states
            self.log(f"{stage}/{name}", value, sync_dist=True)
        self.task_metrics[key].reset()
        concept_metrics = self.concept_metrics[key] if key in self.concept_metrics else None
        # (no update: the data of this stage has no concept labels)
        if concept_metrics is not None and concept_metrics.update_count:
            per_concept = self.concept_metrics[key].compute()
            for name, value in per_concept.items():
                # NaN: a concept without labels (or, for AUROC, with one class) in this split
                if not torch.isnan(value).all():
                    self.log(f"{stage}/{name}", value.nanmean(), sync_dist=True)
            if stage == "test":
                self.test_concept_metrics = {k: v.detach().cpu() for k, v in per_concept.items()}
            self.concept_metrics[key].reset()

    def _reduce_sums(self, stage: str, sums: dict[str, Tensor], count: int) -> tuple[dict[str, Tensor], float]:
        """Sums and row count over every process (exact epoch means; several processes only)."""
        import zlib

        names = sorted(sums)
        # every rank must reduce the same names (a mismatch would hang or mix up the sums): the
        # sums of h and h² over ranks equal W·h and W·h² on every rank only when all h are equal
        h = zlib.crc32("\0".join(names).encode()) & 0xFFFFF
        own = torch.tensor([len(names), h, h * h])
        check = distributed.all_reduce_sum_(own.clone().to(self.device))
        if not torch.equal(check.cpu(), distributed.world_size() * own):
            raise RuntimeError(
                f"the processes logged different {stage} loss/metric names this epoch (this rank: {names}); "
                "every rank must return the same loss terms and metrics"
            )
        if not names:
            return {}, float(count)
        packed = torch.stack([*(sums[n] for n in names), torch.tensor(float(count), device=self.device)])
        distributed.all_reduce_sum_(packed)
        return dict(zip(names, packed[:-1])), float(packed[-1])

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # -------------------------------------------------------------- checkpoints
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> BottleneckModel:
        """Load a model from a checkpoint, safely (``weights_only=True``, nothing else).

        A checkpoint from bottlenecks 0.1 loads too: options renamed since are rewritten
        (:mod:`bottlenecks.naming`); one from a newer release fails with a message naming
        both versions.
        """
        import io

        if kwargs.pop("weights_only", True) is False:
            raise ValueError("checkpoints load with weights_only=True only; a pickle could run code")
        from bottlenecks.checkpoints import load_checkpoint_file

        checkpoint = load_checkpoint_file(checkpoint_path)
        check_checkpoint_format(checkpoint, str(checkpoint_path))
        if "hyper_parameters" in checkpoint:
            from bottlenecks.naming import upgrade_config

            upgrade_config(checkpoint["hyper_parameters"])
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(
            buffer, map_location=map_location, hparams_file=hparams_file, strict=strict, weights_only=True, **kwargs
        )

    # ------------------------------------------------------------------- stages
    def on_fit_start(self) -> None:
        """Named stages that need training data before the first step.

        * ``standardize``: feature statistics for :class:`FeatureNorm`.
        * ``data_init``: ``bottleneck.init_from_data`` (k-means keys, codebooks, ...) with the
          sample's concept labels and targets where the data has them, and the paired text
          encoder where the data names one.
        """
        need_norm = isinstance(self.norm, FeatureNorm) and not bool(self.norm.fitted)
        need_init = self.bottleneck.needs_data_init()
        if not (need_norm or need_init):
            return
        h, c, y = self._sample_train_data(self.hparams.data_init_samples)
        h = h.to(self.device)
        if need_norm:
            self.norm.fit(h)
        if need_init:
            text = None
            if self._text_encoder_spec is not None:
                from bottlenecks.encoders import shared_text_encoder

                text = shared_text_encoder(self._text_encoder_spec)
            self.bottleneck.init_from_data(
                self.norm(h),
                concepts=None if c is None else c.to(self.device),
                y=None if y is None else y.to(self.device),
                text=text,
            )
        if distributed.is_distributed():
            # every rank saw the same sample, but k-means, SAE warm starts, ... draw random
            # numbers: keep rank 0's initialisation everywhere (after DDP's own broadcast)
            for t in (*self.parameters(), *self.buffers()):
                distributed.broadcast_(t.data)

    def _sample_train_data(self, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Up to ``n`` training rows: features ``(n, in_features)``, concepts, targets."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "split"):
            tr = dm.split("train")
            idx = torch.arange(len(tr.y))
            if len(idx) > n:
                idx = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:n]
            c = None if tr.concepts is None else torch.as_tensor(tr.concepts)[idx].float()
            return tr.take(idx), c, torch.as_tensor(tr.y)[idx]
        if dm is not None:
            loader = dm.train_dataloader()
        else:
            self.trainer.fit_loop.setup_data()
            loader = self.trainer.train_dataloader
        xs: list[Tensor] = []
        cs: list[Tensor] = []
        ys: list[Tensor] = []
        seen = 0
        for batch in loader:
            if not isinstance(batch, dict):
                batch = {"x": batch[0], "y": batch[1] if len(batch) > 1 else None}
            xs.append(self.encode(batch["x"].to(self.device)).float().cpu())
            if batch.get("concepts") is not None:
                cs.append(batch["concepts"].float().cpu())
            if batch.get("y") is not None:
                ys.append(batch["y"].cpu())
            seen += len(xs[-1])
            if seen >= n:
                break
        c = torch.cat(cs)[:n] if len(cs) == len(xs) else None
        y = torch.cat(ys)[:n] if len(ys) == len(xs) else None
        return torch.cat(xs)[:n], c, y

    # ------------------------------------------------------------------ editing
    @property
    def edits(self) -> Any:
        """The model's :class:`~bottlenecks.editing.EditLog`: apply, undo, redo, list, diff."""
        from bottlenecks.editing.log import edit_log

        return edit_log(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp the checkpoint's format and store the edit log as plain data (both load with
        ``weights_only=True``)."""
        from bottlenecks import __version__

        checkpoint["bottlenecks"] = {"version": __version__, "format": CHECKPOINT_FORMAT}
        log = self.__dict__.get("_edit_log")
        if log is not None and (log.applied or log.undone):
            checkpoint["edit_log"] = log.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_format(checkpoint)
        # Checkpoints from before feature_scale existed z-scored every model's features: their
        # saved statistics (buffers) are per-feature, so say so rather than the new default.
        if "feature_scale" not in checkpoint.get("hyper_parameters", {"feature_scale": None}):
            self.hparams["feature_scale"] = "per_feature"
            if isinstance(self.norm, FeatureNorm):
                self.norm.scale = "per_feature"
        # the parameters are loaded after this hook: the log is attached in load_state_dict
        self.__dict__["_pending_edit_log"] = checkpoint.get("edit_log", {})

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        pending = self.__dict__.pop("_pending_edit_log", None)
        if pending:  # edits that reshaped the model (a bank extended) reshape it first
            from bottlenecks.editing.log import prepare_for_log

            prepare_for_log(self, pending)
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if pending is not None:  # loading a checkpoint: its edit log replaces the current one
            from bottlenecks.editing.log import EditLog

            log = EditLog(self)
            if pending:
                log.load_state(pending)
            old = self.__dict__.get("_edit_log")
            for edit in old.applied if old is not None else []:
                edit._detach()
            self.__dict__["_edit_log"] = log
        return result

    # -------------------------------------------------------------- optimisers
    def batch_scaling(self) -> float:
        """The lr factor for this run's effective batch (1 without ``reference_batch_size``).

        Also sets the EMA codebooks' batch scale (``ema_scaling``) to the batch one update sees,
        batch size × processes (gradient accumulation does not change it), and logs both once.
        """
        hp = self.hparams
        ref = hp.get("reference_batch_size")
        if ref is None:
            return 1.0
        local = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        if not isinstance(local, int):
            raise ValueError(
                f"reference_batch_size={ref} is set but the training batch size is unknown: scaling needs a "
                "datamodule with a `batch_size` (pass datamodule= to fit)"
            )
        world, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
        effective = local * world * accumulate
        rule = hp.get("lr_scaling", "auto")
        if rule == "auto":
            rule = "linear" if hp.optimizer == "sgd" else "sqrt"
        ratio = effective / ref
        factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]
        note = ""
        if hp.get("ema_scaling", True):
            from bottlenecks.layers.quantize import VectorQuantizer

            ema = [m for m in self.bottleneck.modules() if isinstance(m, VectorQuantizer) and m.ema]
            for m in ema:
                m.set_batch_scale(local * world / ref)
            if ema:
                note = f"; EMA decays ** {local * world / ref:g} (batch per update {local * world})"
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(
            f"effective batch {effective} = {local} x {world} processes x {accumulate} accumulated, reference "
            f"{ref}: lr {hp.lr:g} -> {hp.lr * factor:g} ({rule}){note}"
        )
        return factor

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        lr = hp.lr * self.batch_scaling()
        params: list = [p for p in self.parameters() if p.requires_grad]
        # A bottleneck may ask for its own optimiser settings on some parameters (DKVB's
        # values: no momentum, no weight decay, so values that were not fetched stay put).
        special = [g for g in self.bottleneck.optimizer_param_groups() if any(p.requires_grad for p in g["params"])]
        if special:
            taken = {id(p) for g in special for p in g["params"]}
            params = [{"params": [p for p in params if id(p) not in taken]}, *special]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "muon":
            from bottlenecks.models.optimizers import MuonAdamW, muon_matrices, split_for_muon

            groups = params if special else [{"params": params}]
            opt = MuonAdamW(split_for_muon(groups, muon_matrices(self, self.head)), lr=lr,
                            weight_decay=hp.weight_decay, momentum=hp.momentum)
        else:
            raise ValueError(f"optimizer must be 'adamw', 'adam', 'sgd' or 'muon', got {hp.optimizer!r}")
        warmup = float(hp.get("warmup_fraction") or 0.0)
        if hp.lr_schedule == "constant" and warmup == 0:
            return opt
        total = self._optimizer_steps_total()
        if not math.isfinite(total) or total <= 0:
            return opt
        if warmup == 0 and hp.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        else:
            warm = max(1, round(warmup * total)) if warmup > 0 else 0
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _LRFactor(int(total), warm, hp.lr_schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _optimizer_steps_total(self) -> float:
        """Optimiser steps this fit will take (the schedule's length)."""
        t = self.trainer
        total = t.estimated_stepping_batches
        if self._minibatch is None or not math.isfinite(total) or t.max_epochs in (None, -1):
            return total
        # Lightning counts batches of K minibatches; an epoch takes ceil(rows / B) steps (the last
        # Lightning batch may hold fewer than K), or K per batch when limit_train_batches cuts it short
        k = t.datamodule.train_steps_per_batch()
        per_epoch = -(-t.datamodule.train_rows() // self._minibatch)
        per_epoch = min(per_epoch, int(t.num_training_batches) * k)
        steps = per_epoch * t.max_epochs
        return min(steps, t.max_steps) if t.max_steps != -1 else steps


class _LRFactor:
    """LR factor at a step: linear warmup over ``warmup`` steps, then ``schedule`` until ``total``:
    constant; cosine to 0; or constant and a linear cooldown to 0 over the last 20% of the steps."""

    COOLDOWN = 0.2

    def __init__(self, total: int, warmup: int, schedule: str) -> None:
        self.total, self.warmup, self.schedule = total, warmup, schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "cooldown":
            left = self.total - step  # steps left, this one included
            return min(1.0, left / max(1.0, self.COOLDOWN * self.total))
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_checkpoint_format(checkpoint: dict[str, Any], where: str = "the checkpoint") -> int:
    """The checkpoint's layout version; a clear error when this code cannot read it."""
    from bottlenecks import __version__

    stamp = checkpoint.get("bottlenecks")
    if stamp is None:
        return 1  # bottlenecks 0.1 wrote no stamp; renamed options are upgraded on load
    fmt = int(stamp.get("format", 0)) if isinstance(stamp, dict) else 0
    if fmt > CHECKPOINT_FORMAT or fmt < 1:
        raise ValueError(
            f"{where} was written by bottlenecks {stamp.get('version', '?') if isinstance(stamp, dict) else '?'} "
            f"(checkpoint format {fmt}); this is bottlenecks {__version__}, which reads formats 1 to "
            f"{CHECKPOINT_FORMAT}: upgrade bottlenecks to load it"
        )
    return fmt
