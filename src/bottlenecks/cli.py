"""The ``bottlenecks`` command: ``bottlenecks fit|validate|test|predict --config X.yaml``.

A LightningCLI in subclass mode: ``model:`` and ``data:`` take any class path,
and the data's feature width, concept names, number of classes and task are
linked into the model and its bottleneck, so a config never repeats them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI

from bottlenecks.data.datamodule import FeatureDataModule
from bottlenecks.models.module import BottleneckModel


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
        ]
        for source, target in links:
            parser.link_arguments(source, target, apply_on="instantiate")

    def _dump_config(self) -> None:
        # Lightning writes linked values into the saved hyperparameters and expects every
        # nested `class_path` entry to carry an `init_args` mapping, which YAML files may omit.
        super()._dump_config()
        _ensure_init_args(self.config_dump)

    def after_fit(self) -> None:
        sub = self.config[self.subcommand]
        if not sub.get("test_after_fit") or self.trainer.interrupted:
            return
        ckpt = None
        cb = self.trainer.checkpoint_callback
        if cb is not None:
            ckpt = cb.best_model_path or cb.last_model_path or None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, weights_only=False, verbose=False)


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
            save_config_kwargs={"overwrite": False},
            args=args,
            auto_configure_optimizers=False,
        )
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
