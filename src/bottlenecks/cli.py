"""The ``bottlenecks`` command: ``bottlenecks fit|validate|test|predict --config X.yaml``.

A LightningCLI in subclass mode: ``model:`` and ``data:`` take any class path,
and the data's feature width, concept names, number of classes and task are
linked into the model and its bottleneck, so a config never repeats them.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from bottlenecks.data.datamodule import FeatureDataModule
from bottlenecks.models.module import BottleneckModel


class SafeTrainer(L.Trainer):
    """A Lightning ``Trainer`` that never unpickles arbitrary objects from a checkpoint.

    Every entry point that reads a checkpoint (``fit``/``validate``/``test``/``predict`` with
    ``ckpt_path``) loads it with ``weights_only=True``: a checkpoint from someone else can hold
    tensors and plain containers, never code. Asking for ``weights_only=False`` is an error.
    """

    def _safe(self, weights_only: bool | None) -> bool:
        if weights_only is False:
            raise ValueError(
                "bottlenecks loads checkpoints with weights_only=True only: a checkpoint that needs "
                "weights_only=False can run code when it is loaded"
            )
        return True

    def fit(self, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> None:
        return super().fit(*args, weights_only=self._safe(weights_only), **kwargs)

    def validate(self, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        return super().validate(*args, weights_only=self._safe(weights_only), **kwargs)

    def test(self, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        return super().test(*args, weights_only=self._safe(weights_only), **kwargs)

    def predict(self, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        return super().predict(*args, weights_only=self._safe(weights_only), **kwargs)


def checkpoint_to_test(trainer: L.Trainer) -> str | None:
    """The checkpoint ``--test_after_fit`` evaluates: the best one, else the last one.

    Only a file inside the checkpoint callback's own directory qualifies. The callback's
    ``best_model_path`` is restored from a resumed checkpoint, which may come from anyone:
    a path pointing elsewhere is ignored with a warning, never loaded.
    """
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    root = Path(cb.dirpath).resolve() if cb.dirpath else None
    for path in (cb.best_model_path, cb.last_model_path):
        if not path:
            continue
        p = Path(path).resolve()
        if root is None or root not in p.parents or not p.is_file():
            warnings.warn(
                f"not testing checkpoint {path!r}: it is not a file in this run's checkpoint "
                f"directory {str(root)!r} (a resumed checkpoint named it)",
                stacklevel=2,
            )
            continue
        return str(p)
    return None


class BottlenecksCLI(LightningCLI):
    """LightningCLI with the data → model links and an optional test after fitting."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after `fit`, test the best (or last) checkpoint and print the run report",
        )
        # (a link to a parameter the chosen class does not have is skipped)
        links = [
            ("data.feature_dim", "model.init_args.bottleneck.init_args.in_features"),
            ("data.concept_names", "model.init_args.bottleneck.init_args.concept_names"),
            ("data.num_classes", "model.init_args.num_classes"),
            # bottlenecks that score the classes themselves (ECBM, DKVB's non-parametric decoder)
            ("data.num_classes", "model.init_args.bottleneck.init_args.num_classes"),
            ("data.task", "model.init_args.task"),
            ("data.encoder_spec", "model.init_args.encoder"),
            # bottlenecks whose vectors live in one encoder's space (concept banks) check it
            ("data.encoder_spec", "model.init_args.bottleneck.init_args.encoder"),
            ("data.text_encoder_spec", "model.init_args.text_encoder"),
        ]
        for source, target in links:
            parser.link_arguments(source, target, apply_on="instantiate")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The CLI links the data's values (e.g. ``num_classes``) into every bottleneck that
        # takes them; for one that does not, the link is skipped when the class is built, but
        # the value is still recorded in the saved hyperparameters, which would then fail to
        # rebuild the model from its checkpoint.
        bottleneck = getattr(self.model, "hparams", {}).get("bottleneck")
        if isinstance(bottleneck, dict):
            _drop_unaccepted_init_args(bottleneck)

    def _dump_config(self) -> None:
        # Lightning writes linked values into the saved hyperparameters and expects every
        # nested `class_path` entry to carry an `init_args` mapping, which YAML files may omit.
        super()._dump_config()
        _ensure_init_args(self.config_dump)

    def after_fit(self) -> None:
        sub = self.config[self.subcommand]
        if not sub.get("test_after_fit") or self.trainer.interrupted:
            return
        ckpt = checkpoint_to_test(self.trainer)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)


def _drop_unaccepted_init_args(config: dict[str, Any]) -> None:
    """Remove ``init_args`` entries the ``class_path`` class does not accept."""
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


def _ensure_init_args(node: Any) -> None:
    if isinstance(node, dict):
        if "class_path" in node and "init_args" not in node:
            node["init_args"] = {}
        for value in node.values():
            _ensure_init_args(value)
    elif isinstance(node, list):
        for value in node:
            _ensure_init_args(value)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``bottlenecks`` console script.

    Errors raised by our own validation (bad config values, missing files, mismatched
    widths) end with one line naming the problem; set ``BOTTLENECKS_DEBUG=1`` for
    the full traceback.
    """
    try:
        BottlenecksCLI(
            BottleneckModel,
            FeatureDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_class=SafeTrainer,
            save_config_kwargs={"overwrite": False},
            args=args,
            auto_configure_optimizers=False,
        )
    except pickle.UnpicklingError as err:
        if os.environ.get("BOTTLENECKS_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(
            "bottlenecks: error: refused to load a checkpoint: it holds objects other than tensors and "
            "plain data, and loading those could run code (bottlenecks only loads with "
            f"weights_only=True). Details: {first.split('. In PyTorch')[0]}",
            file=sys.stderr,
        )
        sys.exit(2)
    except (ValueError, FileNotFoundError, TypeError, KeyError) as err:
        if os.environ.get("BOTTLENECKS_DEBUG"):
            raise
        root = _root_cause(err)
        print(f"bottlenecks: error: {root}", file=sys.stderr)
        sys.exit(2)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception (jsonargparse wraps errors raised in constructors)."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


if __name__ == "__main__":
    main()
