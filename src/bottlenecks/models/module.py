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

from bottlenecks.layers.base import CONCEPT_LOSS, Bottleneck, BottleneckOutput, masked_concept_bce
from bottlenecks.layers.blocks import mlp

Task = Literal["classification", "regression"]

#: Version of the checkpoint layout this code writes. 1: bottlenecks 0.1 (no stamp; option
#: names before the unified vocabulary); 2: bottlenecks 0.2 (edit log, unified names).
CHECKPOINT_FORMAT = 2

__all__ = ["BottleneckModel", "FeatureNorm", "masked_concept_bce"]


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
        optimizer: ``"adamw"``, ``"adam"``, ``"sgd"`` or ``"muon"`` (Muon for the weight
            matrices of ``nn.Linear`` layers except the head's output layer, AdamW for the rest:
            :class:`~bottlenecks.models.optimizers.MuonAdamW`).
        lr, weight_decay, momentum: optimiser settings (``momentum``: SGD's and Muon's).
        lr_schedule: ``"cosine"`` (over the run's total steps) or ``"constant"``.
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
        optimizer: Literal["adamw", "adam", "sgd", "muon"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
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
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if task == "classification" and (num_classes is None or num_classes < 2):
            raise ValueError(f"classification needs num_classes >= 2, got {num_classes}")
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
        self.norm = FeatureNorm(bottleneck.in_features) if standardize_features else nn.Identity()
        self.concept_loss_weight = concept_loss_weight
        self.task_loss_weight = task_loss_weight
        self.loss_weights = dict(loss_weights or {})
        self._encoder_spec = encoder
        self._text_encoder_spec = text_encoder
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
        for name, value in out.metrics.items():
            v = torch.as_tensor(value).detach().float().reshape(()) * bs
            sums[name] = sums[name] + v if name in sums else v
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

    def _sample_train_data(self, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Up to ``n`` training rows: features ``(n, in_features)``, concepts, targets."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "split"):
            tr = dm.split("train")
            idx = torch.arange(len(tr.x))
            if len(idx) > n:
                idx = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:n]
            c = None if tr.concepts is None else torch.as_tensor(tr.concepts)[idx].float()
            return torch.as_tensor(tr.x[idx], dtype=torch.float32), c, torch.as_tensor(tr.y)[idx]
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
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params: list = [p for p in self.parameters() if p.requires_grad]
        # A bottleneck may ask for its own optimiser settings on some parameters (DKVB's
        # values: no momentum, no weight decay, so values that were not fetched stay put).
        special = [g for g in self.bottleneck.optimizer_param_groups() if any(p.requires_grad for p in g["params"])]
        if special:
            taken = {id(p) for g in special for p in g["params"]}
            params = [{"params": [p for p in params if id(p) not in taken]}, *special]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "muon":
            from bottlenecks.models.optimizers import MuonAdamW, muon_matrices, split_for_muon

            groups = params if special else [{"params": params}]
            opt = MuonAdamW(split_for_muon(groups, muon_matrices(self, self.head)), lr=hp.lr,
                            weight_decay=hp.weight_decay, momentum=hp.momentum)
        else:
            raise ValueError(f"optimizer must be 'adamw', 'adam', 'sgd' or 'muon', got {hp.optimizer!r}")
        if hp.lr_schedule == "constant":
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
