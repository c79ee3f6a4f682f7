"""The one LightningModule: (frozen encoder) → bottleneck → head, with weighted losses.

Training on cached features is the normal case: the datamodule hands the model
``batch["x"]`` of shape ``(batch, in_features)``. When the model is given raw
images ``(batch, 3, H, W)`` instead (prediction on new data), it runs the frozen
encoder named by ``encoder`` first.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from bottlenecks.layers.base import Bottleneck, BottleneckOutput
from bottlenecks.layers.concept import mlp

Task = Literal["classification", "regression"]


def masked_concept_bce(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy over labelled concept entries only (NaN = unlabelled).

    Args:
        logits: ``(batch, n_concepts)``.
        target: ``(batch, n_concepts)`` in ``[0, 1]`` or NaN.
    """
    labelled = ~torch.isnan(target)
    if not labelled.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[labelled], target[labelled])


def _drop_unaccepted_init_args(config: dict[str, Any]) -> None:
    """Remove ``init_args`` entries the ``class_path`` class does not accept.

    The CLI links the data's values (e.g. ``num_classes``) into every bottleneck that
    takes them; for one that does not, the link is skipped when the class is built, but
    Lightning still records the value in the saved hyperparameters, which would then
    fail to rebuild the model from its checkpoint.
    """
    import importlib
    import inspect

    path, init_args = config.get("class_path"), config.get("init_args")
    if not isinstance(path, str) or not isinstance(init_args, dict) or "." not in path:
        return
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in [k for k in init_args if k not in params]:
        del init_args[key]


class FeatureNorm(nn.Module):
    """Standardises features with statistics of the training set (set once at fit start)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, h: Tensor) -> None:
        var = h.var(0)
        self.mean.copy_(h.mean(0))
        # Dimensions that (nearly) never vary in the training sample must not turn tiny
        # differences at test time into huge values: floor the variance relative to the mean.
        self.std.copy_((var + 1e-2 * var.mean() + 1e-12).sqrt())
        self.fitted.fill_(True)

    def forward(self, h: Tensor) -> Tensor:
        return (h - self.mean) / self.std


class BottleneckModel(L.LightningModule):
    """Encoder features → bottleneck → head, trained with task + concept + auxiliary losses.

    Args:
        bottleneck: any :class:`~bottlenecks.layers.base.Bottleneck`.
        head: the task head; default a Linear (or an MLP with ``head_hidden``)
            from ``bottleneck.out_features`` to the number of outputs.
        task: ``"classification"`` or ``"regression"`` (linked from the data by the CLI).
        num_classes: number of classes for classification (linked from the data).
        head_hidden: hidden widths of the default head (empty = linear).
        concept_loss_weight: weight of the concept BCE (joint CBM's λ). Ignored when
            the bottleneck has no concepts or the batch has no concept labels.
        task_loss_weight: weight of the task loss (0 trains the concepts alone).
        loss_weights: weight of each auxiliary loss the bottleneck returns, by name;
            a name not listed gets weight 1.
        standardize_features: standardise features with training-set statistics,
            computed once at fit start and kept in the checkpoint.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        lr, weight_decay, momentum: optimiser settings.
        lr_schedule: ``"cosine"`` (over the run's total steps) or ``"constant"``.
        data_init_samples: how many training features ``bottleneck.init_from_data`` sees.
        encoder: the frozen encoder spec (linked from the data) used when the model is
            given raw images rather than features.
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
        standardize_features: bool = True,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        data_init_samples: int = 20000,
        encoder: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Built by the CLI, the hyperparameters are the config's plain class_path/init_args
        # mappings (checkpoints then reload with weights_only=True and rebuild the bottleneck);
        # built from Python, the modules themselves are not hyperparameters.
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if from_config else ["bottleneck", "head"])
        if from_config and isinstance(self.hparams.get("bottleneck"), dict):
            _drop_unaccepted_init_args(self.hparams["bottleneck"])
        if not isinstance(bottleneck, Bottleneck):
            raise TypeError(f"bottleneck must be a bottlenecks Bottleneck, got {type(bottleneck).__name__}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if task == "classification" and (num_classes is None or num_classes < 2):
            raise ValueError(f"classification needs num_classes >= 2, got {num_classes}")
        self.bottleneck = bottleneck
        self.task = task
        self.num_classes = num_classes
        n_out = num_classes if task == "classification" else 1
        if head is None and getattr(bottleneck, "predicts_task", False):
            # The bottleneck's z already is the task output (e.g. ECBM's log p(y | x)).
            if bottleneck.out_features != n_out:
                raise ValueError(
                    f"{type(bottleneck).__name__} predicts {bottleneck.out_features} outputs but the "
                    f"task has {n_out}"
                )
            head = nn.Identity()
        self.head = head if head is not None else mlp(bottleneck.out_features, head_hidden or [], n_out)
        self.norm = FeatureNorm(bottleneck.in_features) if standardize_features else nn.Identity()
        self.concept_loss_weight = concept_loss_weight
        self.task_loss_weight = task_loss_weight
        self.loss_weights = dict(loss_weights or {})
        self._encoder_spec = encoder
        self.__dict__["_encoder"] = None  # built on first use, never a submodule
        self._loss_sums: dict[str, dict[str, Tensor]] = {}
        self._loss_counts: dict[str, int] = {}
        self._build_metrics()

    # ------------------------------------------------------------------ metrics
    @property
    def concept_names(self) -> list[str] | None:
        return self.bottleneck.concept_names

    def _build_metrics(self) -> None:
        def task_metrics() -> torchmetrics.MetricCollection:
            if self.task == "classification":
                return torchmetrics.MetricCollection(
                    {"task_acc": torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="micro")}
                )
            return torchmetrics.MetricCollection(
                {"mse": torchmetrics.MeanSquaredError(), "r2": torchmetrics.R2Score()}
            )

        self.task_metrics = nn.ModuleDict({s: task_metrics() for s in ("train_", "val_", "test_")})
        n = self.bottleneck.n_concepts
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
        if self._encoder is None:
            if self._encoder_spec is None:
                raise ValueError("this model was given images but has no encoder; pass features instead")
            from bottlenecks.encoders import build_encoder

            # kept out of the module tree: frozen weights are not part of the checkpoint
            self.__dict__["_encoder"] = build_encoder(self._encoder_spec).to(x.device)
        return self._encoder.encode(x)

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

    def compute_losses(self, batch: dict[str, Tensor], y_hat: Tensor, out: BottleneckOutput) -> dict[str, Tensor]:
        """All loss terms (weighted) and their sum under ``"loss"``."""
        terms: dict[str, Tensor] = {}
        terms["task_loss"] = self.task_loss(y_hat, batch["y"])
        total = self.task_loss_weight * terms["task_loss"]
        c = batch.get("concepts")
        if out.concepts is not None and c is not None and self.concept_loss_weight > 0:
            terms["concept_loss"] = masked_concept_bce(out.concepts, c)
            total = total + self.concept_loss_weight * terms["concept_loss"]
        for name, value in out.losses.items():
            terms[name] = value
            total = total + self.loss_weights.get(name, 1.0) * value
        # Auxiliary terms that need the batch's targets (e.g. ECBM's energy likelihoods).
        supervised = getattr(self.bottleneck, "supervised_losses", None)
        if supervised is not None:
            for name, value in supervised(out, batch).items():
                terms[name] = value
                total = total + self.loss_weights.get(name, 1.0) * value
        terms["loss"] = total
        return terms

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
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
        metrics = self.task_metrics[f"{stage}_"]
        metrics.update(y_hat.detach(), batch["y"])
        if f"{stage}_" in self.concept_metrics and out.concepts is not None and batch.get("concepts") is not None:
            self.concept_metrics[f"{stage}_"].update(out.concepts.detach().float(), batch["concepts"])
        for key, value in out.extras.items():
            if key.startswith("log_") and torch.is_tensor(value) and value.numel() == 1:
                v = value.detach().float() * bs
                sums[key[4:]] = sums[key[4:]] + v if key[4:] in sums else v
        return terms["loss"]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        y_hat, out = self(batch["x"])
        pred: dict[str, Tensor] = {"y_hat": y_hat}
        if self.task == "classification":
            pred["y_pred"] = y_hat.argmax(-1)
        if out.concepts is not None:
            pred["concept_probs"] = torch.sigmoid(out.concepts)
        if out.codes is not None:
            pred["codes"] = out.codes
        if "index" in batch:
            pred["index"] = batch["index"]
        return pred

    def _epoch_end(self, stage: str) -> None:
        key = f"{stage}_"
        count = self._loss_counts.pop(stage, 0)
        for name, total in self._loss_sums.pop(stage, {}).items():
            self.log(f"{stage}/{name}", total / max(count, 1), sync_dist=True,
                     prog_bar=stage == "train" and name == "loss")
        for name, value in self.task_metrics[key].compute().items():
            self.log(f"{stage}/{name}", value)
        self.task_metrics[key].reset()
        concept_metrics = self.concept_metrics[key] if key in self.concept_metrics else None
        # (no update: the data of this stage has no concept labels)
        if concept_metrics is not None and concept_metrics.update_count:
            per_concept = self.concept_metrics[key].compute()
            for name, value in per_concept.items():
                # NaN: a concept without labels (or, for AUROC, with one class) in this split
                if not torch.isnan(value).all():
                    self.log(f"{stage}/{name}", value.nanmean())
            if stage == "test":
                self.test_concept_metrics = {k: v.detach().cpu() for k, v in per_concept.items()}
            self.concept_metrics[key].reset()

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # ------------------------------------------------------------------- stages
    def on_fit_start(self) -> None:
        """Named stages that need training data before the first step.

        * ``standardize``: feature statistics for :class:`FeatureNorm`.
        * ``data_init``: ``bottleneck.init_from_data`` (k-means keys, codebooks, ...).
        """
        need_norm = isinstance(self.norm, FeatureNorm) and not bool(self.norm.fitted)
        need_init = self.bottleneck.needs_data_init()
        if not (need_norm or need_init):
            return
        h = self._sample_train_features(self.hparams.data_init_samples).to(self.device)
        if need_norm:
            self.norm.fit(h)
        if need_init:
            self.bottleneck.init_from_data(self.norm(h))

    def _sample_train_features(self, n: int) -> Tensor:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "train_features"):
            feats = dm.train_features()
            if len(feats) > n:
                g = torch.Generator().manual_seed(0)
                feats = feats[torch.randperm(len(feats), generator=g)[:n]]
            return torch.as_tensor(feats, dtype=torch.float32)
        loader = dm.train_dataloader() if dm is not None else self.trainer.fit_loop._data_source.dataloader()
        chunks, seen = [], 0
        for batch in loader:
            x = batch["x"] if isinstance(batch, dict) else batch[0]
            chunks.append(self.encode(x.to(self.device)).float().cpu())
            seen += len(chunks[-1])
            if seen >= n:
                break
        return torch.cat(chunks)[:n]

    # -------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params: list = [p for p in self.parameters() if p.requires_grad]
        # A bottleneck may ask for its own optimiser settings on some parameters (DKVB's
        # values: no momentum, no weight decay, so values that were not fetched stay put).
        groups_of = getattr(self.bottleneck, "optimizer_param_groups", None)
        if groups_of is not None:
            special = [g for g in groups_of() if any(p.requires_grad for p in g["params"])]
            taken = {id(p) for g in special for p in g["params"]}
            params = [{"params": [p for p in params if id(p) not in taken]}, *special]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {hp.optimizer!r}")
        if hp.lr_schedule == "constant":
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
