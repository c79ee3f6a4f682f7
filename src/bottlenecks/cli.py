"""The ``bottlenecks`` command: ``bottlenecks fit|validate|test|predict --config X.yaml``,
and ``bottlenecks report RUN_DIR`` (an offline HTML page of a trained run,
:mod:`bottlenecks.analysis.html_report`).

A LightningCLI in subclass mode: ``model:`` and ``data:`` take any class path,
and the data's feature width, concept names, number of classes and task are
linked into the model and its bottleneck, so a config never repeats them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bottlenecks.checkpoints import first_line, is_code_refusal, load_checkpoint_file, unpickler_reason
from bottlenecks.data.datamodule import FeatureDataModule
from bottlenecks.models.module import BottleneckModel


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written crash-safely: a temporary file in the checkpoint's own folder,
    fsync'ed, then renamed over the final name; on any error the temporary file is removed
    and the final name is untouched.

    Lightning 2.6's ``_atomic_save`` writes to ``tempfile.mkstemp()`` in the *system* temp
    folder and ``shutil.move``s it: a rename when both lie on one filesystem, but a plain
    copy onto the final name when they do not (a full disk then leaves a truncated file under
    a valid-looking name), without fsync, and a killed process leaves its temp file behind.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed run
            with contextlib.suppress(OSError):
                stale.unlink()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            # torch.save reports a failed write (full disk) as a RuntimeError over the OSError
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from err
            raise
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class RandomState(L.Callback):
    """Saves the global random generators (torch, numpy, random) in every checkpoint and
    restores them when the resumed run starts training, so that stochastic bottlenecks (VIB
    sampling, noise) draw after a resume what an uninterrupted run draws.

    The state is restored at ``on_train_start``, after the sanity check (whose data loader
    draws a seed an uninterrupted run does not) and before the next epoch's training data
    loader draws its own (which both runs do, after the checkpoint was written).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        import random

        import numpy as np
        import torch

        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Write ``trainer``'s checkpoints with :class:`AtomicCheckpointIO` unless a custom CheckpointIO was given."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def use_last_checkpoint_every_epoch(trainer: L.Trainer) -> None:
    """Make ``save_last=True`` mean "the last epoch" again, and keep the best-model ranking
    across a resume (:func:`_keep_best_across_resume`).

    Lightning 2.6's ``ModelCheckpoint`` with a ``monitor`` writes ``last.ckpt`` only in a step
    where it also saved a top-k checkpoint: once the monitored metric stops improving,
    ``last.ckpt`` stays at the best epoch, and a crashed run "resumed from last.ckpt" silently
    repeats the epochs since. Each such callback's save hook (end of validation, or end of the
    training epoch when no validation runs, as Lightning decides) is wrapped to write the last
    checkpoint whenever the callback itself did not.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.states import TrainerFn

    def wrap(cb: ModelCheckpoint, hook: str, at_train_epoch_end: bool) -> None:
        original = getattr(cb, hook)

        def hooked(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            original(trainer, pl_module)
            if (
                trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking
                or trainer.fast_dev_run
                or cb._should_save_on_train_epoch_end(trainer) != at_train_epoch_end
                or cb._last_global_step_saved == trainer.global_step
            ):
                return
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))

        setattr(cb, hook, hooked)

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last is True and cb.monitor is not None:
            wrap(cb, "on_validation_end", at_train_epoch_end=False)
            wrap(cb, "on_train_epoch_end", at_train_epoch_end=True)
        if isinstance(cb, ModelCheckpoint):
            _keep_best_across_resume(cb)


def _keep_best_across_resume(cb: Any) -> None:
    """A run resumed from a checkpoint writes into a new version folder, and Lightning then
    restores only ``best_model_path``, not the score it was chosen by: the first epoch after
    resuming becomes "best" whatever its score, and ``--test_after_fit`` tests another model
    than an uninterrupted run would. Restore the ranking too (the files stay where they are;
    Lightning removes displaced checkpoints only inside its own folder)."""
    original = cb.load_state_dict

    def load_state_dict(state_dict: dict[str, Any]) -> None:
        original(state_dict)
        if state_dict.get("dirpath", cb.dirpath) != cb.dirpath and state_dict.get("best_model_score") is not None:
            cb.best_model_score = state_dict["best_model_score"]
            cb.kth_best_model_path = state_dict.get("kth_best_model_path", cb.kth_best_model_path)
            cb.kth_value = state_dict.get("kth_value", cb.kth_value)
            cb.best_k_models = dict(state_dict.get("best_k_models", cb.best_k_models))

    cb.load_state_dict = load_state_dict


class SafeTrainer(L.Trainer):
    """A Lightning ``Trainer`` that never unpickles arbitrary objects from a checkpoint.

    Every entry point that reads a checkpoint (``fit``/``validate``/``test``/``predict`` with
    ``ckpt_path``) loads it with ``weights_only=True``: a checkpoint from someone else can hold
    tensors and plain containers, never code. Asking for ``weights_only=False`` is an error.
    The CLI writes its checkpoints with :class:`AtomicCheckpointIO` (:func:`use_atomic_checkpoints`).
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


def checkpoint_to_test(trainer: L.Trainer, resumed_from: str | os.PathLike[str] | None = None) -> str | None:
    """The checkpoint ``--test_after_fit`` evaluates: the best one, else the last one.

    Only a file inside the checkpoint callback's own directory qualifies, or inside the
    directory of the checkpoint the user resumed from (``resumed_from``: a resumed run's best
    model may still be one its first part saved). The callback's ``best_model_path`` is
    restored from the resumed checkpoint, which may come from anyone: a path pointing
    anywhere else is ignored with a warning, never loaded.
    """
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    roots = [Path(cb.dirpath).resolve()] if cb.dirpath else []
    if resumed_from is not None and Path(resumed_from).is_file():
        roots.append(Path(resumed_from).resolve().parent)
    for path in (cb.best_model_path, cb.last_model_path):
        if not path:
            continue
        p = Path(path).resolve()
        if not roots or not any(root in p.parents for root in roots) or not p.is_file():
            warnings.warn(
                f"not testing checkpoint {path!r}: it is not a file in this run's checkpoint "
                f"directory {str(roots[0]) if roots else None!r} (a resumed checkpoint named it)",
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
    # ------------------------------------------------------------ parsing
    def parse_arguments(self, parser: Any, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except Exception as err:  # noqa: BLE001 - the parser travels with the error to main()
            err.bottlenecks_parser = parser  # type: ignore[attr-defined]
            err.bottlenecks_subcommand = next(  # type: ignore[attr-defined]
                (a for a in (args if args is not None else sys.argv[1:]) if a in ("fit", "validate", "test", "predict")),
                None,
            )
            raise

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning reads it: it exists, loads with
        ``weights_only=True``, is a Lightning checkpoint, and was trained with the bottleneck
        the config asks for (Lightning would silently rebuild the checkpoint's own)."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        self._ckpt_shapes: dict[str, tuple[int, ...]] | None = None
        if not ckpt_path:
            return
        if str(ckpt_path) in ("best", "last", "hpc", "registry") or "://" in str(ckpt_path):
            return super()._parse_ckpt_path()
        ckpt = load_checkpoint_file(ckpt_path)
        self._ckpt_shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
        hparams = ckpt.get("hyper_parameters") or {}
        wanted = _class_path(self.config[sub].get("model"), "bottleneck")
        saved = _class_path(hparams, "bottleneck")
        if wanted and saved and wanted != saved:
            raise ValueError(
                f"checkpoint {ckpt_path} holds a {saved.rsplit('.', 1)[-1]} bottleneck but the config asks "
                f"for {wanted.rsplit('.', 1)[-1]}; pass the config the checkpoint was trained with (its run "
                "directory's config.yaml)"
            )
        differ = _differing_init_args(self.config[sub].get("model"), hparams, "bottleneck")
        if differ:
            warnings.warn(
                f"checkpoint {ckpt_path} was trained with bottleneck settings that differ from the config's; "
                "the checkpoint's are used: "
                + ", ".join(f"{k}={c!r} (config: {v!r})" for k, v, c in differ[:5]),
                stacklevel=2,
            )
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        use_last_checkpoint_every_epoch(trainer)
        if trainer.checkpoint_callback is not None:
            trainer.callbacks.append(RandomState())
        return trainer

    # ------------------------------------------------------------ run checks
    def _before_run(self, subcommand: str) -> None:
        sub = self.config[subcommand]
        ckpt = sub.get("ckpt_path")
        trainer = self.trainer
        if subcommand in ("validate", "test", "predict") and not ckpt:
            raise ValueError(
                f"`bottlenecks {subcommand}` needs --ckpt_path (a trained checkpoint, e.g. "
                "runs/<name>/version_0/checkpoints/last.ckpt); without one it would score untrained weights"
            )
        if subcommand == "predict":
            from lightning.pytorch.callbacks import BasePredictionWriter

            from bottlenecks.analysis.report import PredictionWriter

            if not any(isinstance(cb, (PredictionWriter, BasePredictionWriter)) for cb in trainer.callbacks):
                raise ValueError(
                    "`bottlenecks predict` has no prediction writer, so its predictions would be discarded; "
                    "add `- class_path: bottlenecks.analysis.report.PredictionWriter` to trainer.callbacks"
                )
        if subcommand == "fit":
            if trainer.max_epochs == 0 or trainer.max_steps == 0:
                what = "max_epochs=0" if trainer.max_epochs == 0 else "max_steps=0"
                raise ValueError(f"trainer.{what}: `fit` would train nothing; give a positive value")
            lr = getattr(self.model, "hparams", {}).get("lr")
            if lr is not None and not lr > 0:
                raise ValueError(f"model.lr={lr}: the optimiser would not move the weights; give lr > 0")
        self._check_checkpoint_fits(ckpt)
        _claim_run_dir(trainer)

    def _check_checkpoint_fits(self, ckpt: Any) -> None:
        shapes = getattr(self, "_ckpt_shapes", None)
        if not shapes:
            return
        mine = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        for key, shape in shapes.items():
            if key in mine and mine[key] != shape:
                raise ValueError(
                    f"checkpoint {ckpt} does not fit this data: {key} has shape {shape} in the checkpoint but "
                    f"{mine[key]} here (feature width, concepts or classes differ: was it trained on other data?)"
                )
        missing = sorted(set(mine) - set(shapes))
        extra = sorted(set(shapes) - set(mine))
        if missing or extra:
            raise ValueError(
                f"checkpoint {ckpt} does not fit this model: "
                + "; ".join(
                    f"{what} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                    for what, keys in (("it lacks", missing), ("it has unknown", extra)) if keys
                )
            )

    def before_fit(self) -> None:
        self._before_run("fit")

    def before_validate(self) -> None:
        self._before_run("validate")

    def before_test(self) -> None:
        self._before_run("test")

    def before_predict(self) -> None:
        self._before_run("predict")

    def _dump_config(self) -> None:
        # Lightning writes linked values into the saved hyperparameters and expects every
        # nested `class_path` entry to carry an `init_args` mapping, which YAML files may omit.
        super()._dump_config()
        _ensure_init_args(self.config_dump)

    def after_fit(self) -> None:
        sub = self.config[self.subcommand]
        if not sub.get("test_after_fit") or self.trainer.interrupted:
            return
        ckpt = checkpoint_to_test(self.trainer, resumed_from=sub.get("ckpt_path"))
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)


def _drop_unaccepted_init_args(config: dict[str, Any]) -> None:
    """Remove ``init_args`` entries the ``class_path`` class does not accept."""
    from bottlenecks.naming import accepted_options

    path, init_args = config.get("class_path"), config.get("init_args")
    if not isinstance(path, str) or not isinstance(init_args, dict) or "." not in path:
        return
    accepted = accepted_options(path)
    if accepted is None:
        return
    for key in [k for k in init_args if k not in accepted]:
        del init_args[key]


def _class_path(node: Any, key: str) -> str | None:
    """``node[init_args][key][class_path]`` (or ``node[key][class_path]``) as a string, if present."""
    node = node.get("init_args", node) if hasattr(node, "get") else None
    sub = node.get(key) if hasattr(node, "get") else None
    cp = sub.get("class_path") if hasattr(sub, "get") else None
    return str(cp) if cp else None


def _differing_init_args(config_model: Any, hparams: Any, key: str) -> list[tuple[str, Any, Any]]:
    """``(name, config value, checkpoint value)`` for each ``key`` init arg both give differently."""

    def init_args(node: Any) -> dict[str, Any]:
        node = node.get("init_args", node) if hasattr(node, "get") else None
        sub = node.get(key) if hasattr(node, "get") else None
        args = sub.get("init_args") if hasattr(sub, "get") else None
        return dict(args) if hasattr(args, "items") else {}

    mine, theirs = init_args(config_model), init_args(hparams)
    # (None: a value the data links in later, not set by the config)
    shared = sorted(set(mine) & set(theirs))
    return [(k, mine[k], theirs[k]) for k in shared if mine[k] is not None and mine[k] != theirs[k]]


def _claim_run_dir(trainer: L.Trainer) -> None:
    """Give the run its own version folder by creating it (``mkdir`` is atomic): two runs
    started at once would otherwise both pick ``version_N`` and collide on its files.
    Only rank 0 claims one: the other processes of a multi-process run write no logs."""
    if trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
        if getattr(logger, "_version", "fixed") is not None or not hasattr(logger, "_get_next_version"):
            continue
        version = logger._get_next_version()
        while True:
            logger._version = version
            path = Path(logger.log_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
                break
            except FileExistsError:
                version += 1


def _ensure_init_args(node: Any) -> None:
    if isinstance(node, dict):
        if "class_path" in node and "init_args" not in node:
            node["init_args"] = {}
        for value in node.values():
            _ensure_init_args(value)
    elif isinstance(node, list):
        for value in node:
            _ensure_init_args(value)


def upgrade_config_args(args: list[str]) -> list[str]:
    """Config files that use option names from before the unified vocabulary, rewritten.

    Each ``--config FILE`` whose YAML names a renamed option (:data:`bottlenecks.naming.RENAMED`)
    is passed on as the upgraded YAML text, with a DeprecationWarning naming each new option;
    the file itself is left untouched.
    """
    import copy

    import yaml

    from bottlenecks.naming import upgrade_config

    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            j, value = i + 1, out[i + 1]
        elif arg.startswith("--config="):
            j, value = i, arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        if not path.is_file():
            continue
        try:
            original = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue  # the parser reports it with the file's name
        upgraded = upgrade_config(copy.deepcopy(original))
        if upgraded != original:
            text = yaml.safe_dump(upgraded, sort_keys=False)
            out[j] = text if j == i + 1 else f"--config={text}"
    return out


#: ``bottlenecks NAME ...`` commands besides Lightning's fit/validate/test/predict: NAME -> "module:function",
#: the function taking the remaining arguments and returning an exit code
TOOLS = {
    "edit": "bottlenecks.editing.cli:main",
    "report": "bottlenecks.analysis.html_report:report_main",
}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``bottlenecks`` console script: ``fit``/``validate``/``test``/``predict``
    (LightningCLI), ``edit CHECKPOINT EDITS.yaml`` (:mod:`bottlenecks.editing.cli`) and
    ``report RUN_DIR`` (:mod:`bottlenecks.analysis.html_report`).

    Every error ends with one line on stderr, ``bottlenecks: error: ...``, naming the file,
    option or row at fault, and exit code 2; set ``BOTTLENECKS_DEBUG=1`` for the traceback.
    """
    subcommands = ("fit", "validate", "test", "predict")
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in TOOLS:
            # commands that are not Lightning runs: thin functions behind the same error boundary
            import importlib

            module, _, name = TOOLS[argv[0]].partition(":")
            code = getattr(importlib.import_module(module), name)(argv[1:])
            if code:
                sys.exit(code)
            return
        args = upgrade_config_args(argv)
        BottlenecksCLI(
            BottleneckModel,
            FeatureDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_class=SafeTrainer,
            save_config_kwargs={"overwrite": False},
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, **{s: {"exit_on_error": False} for s in subcommands}},
        )
    except Exception as err:  # noqa: BLE001 - the one error boundary of the command
        if os.environ.get("BOTTLENECKS_DEBUG"):
            raise
        print(f"bottlenecks: error: {describe_error(err)}", file=sys.stderr)
        sys.exit(2)


def describe_error(err: BaseException) -> str:
    """One line for any exception the command can end with."""
    import argparse

    if isinstance(err, argparse.ArgumentError) or type(err).__name__ == "ArgumentError":
        from bottlenecks.config_errors import describe_config_error

        return describe_config_error(
            str(err), getattr(err, "bottlenecks_parser", None), getattr(err, "bottlenecks_subcommand", None)
        )
    root = _root_cause(err)
    if is_code_refusal(root):
        return (
            "refused to load a checkpoint: it holds objects other than tensors and plain data, and "
            "loading those could run code (bottlenecks only loads with weights_only=True). Details: "
            + unpickler_reason(root)
        )
    if isinstance(root, OSError) and not isinstance(root, FileNotFoundError):
        what = {
            errno.ENOSPC: "the disk is full",
            errno.EROFS: "the filesystem is read-only",
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file is too large for this filesystem or limit",
        }.get(root.errno or -1)
        target = f" {root.filename}" if root.filename else ""
        if what:
            return f"cannot write{target}: {what} ({root.strerror or first_line(root)})"
        return f"{type(root).__name__}{target}: {root.strerror or first_line(root)}"
    message = _one_line(root)
    if isinstance(root, (ValueError, FileNotFoundError, TypeError, KeyError)):
        return message
    return f"{type(root).__name__}: {message} (set BOTTLENECKS_DEBUG=1 for the traceback)"


def _one_line(err: BaseException, limit: int = 600) -> str:
    text = " ".join(part.strip() for part in str(err).strip().splitlines() if part.strip())
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _root_cause(err: BaseException) -> BaseException:
    """The exception worth reporting in a chain (jsonargparse and Lightning wrap errors).

    The outermost exception raised by bottlenecks' own code carries a message written for
    the user; without one, the innermost exception of the chain.
    """
    chain = [err]
    while (err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__)) and len(chain) < 50:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
        chain.append(err)
    for e in chain:
        if _raised_by_bottlenecks(e):
            return e
    return chain[-1]


def _raised_by_bottlenecks(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    parts = Path(tb.tb_frame.f_code.co_filename).parts
    return "bottlenecks" in parts[-3:-1] or (len(parts) >= 2 and parts[-2] == "bottlenecks")


if __name__ == "__main__":
    main()
