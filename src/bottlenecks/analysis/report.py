"""End-of-run report: concept and task metrics next to a black-box linear probe and a
scikit-learn reference column."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from bottlenecks.analysis.probes import SKLEARN_REFERENCE_MAX_CELLS
from bottlenecks.models.stages import CBMTrainingMode


def _float(v: Any) -> float:
    return float(v.item() if torch.is_tensor(v) else v)


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else v


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


class RunReport(Callback):
    """After testing: prints a table of per-concept accuracy/AUROC, the mean, the task
    metric and the same task metric for a linear probe on the same features, and
    writes it all to ``<run dir>/metrics.json``.

    Next to the framework's numbers stands a **scikit-learn reference column**
    (:func:`~bottlenecks.analysis.probes.sklearn_reference`: ``LogisticRegression`` as the
    probe and as a sequential CBM, on the same features, fitted on the same train +
    validation rows, scored on the same test rows), so a run shows at once whether it
    beats the obvious baseline; it is skipped above ``reference_max_cells`` (rows ×
    features) with a note. For concept models the report also gives the task metric with
    every true concept given (an intervention on all of them), and which regularisation
    strengths the exact fits and the probe chose, and how (k-fold CV or the validation split).

    With ``curves`` (default), the run's training curves (``metrics.csv``, one panel per
    metric, train and val together) are drawn to ``<run dir>/curves.png`` as well;
    ``bottlenecks report RUN_DIR`` shows them with everything else.

    Args:
        linear_probe: fit the black-box probe (needs a datamodule with feature splits).
        probe_max_train: at most this many training rows for the probe (random subset).
        curves: draw ``curves.png`` from the run's ``metrics.csv`` (when there is one).
        sklearn_reference: add the scikit-learn reference column.
        reference_max_cells: skip it above this many training rows × features.
    """

    def __init__(self, linear_probe: bool = True, probe_max_train: int = 20000, curves: bool = True,
                 sklearn_reference: bool = True, reference_max_cells: int = SKLEARN_REFERENCE_MAX_CELLS) -> None:
        self.linear_probe = linear_probe
        self.probe_max_train = probe_max_train
        self.curves = curves
        self.sklearn_reference = sklearn_reference
        self.reference_max_cells = int(reference_max_cells)
        self.metrics: dict[str, Any] = {}

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m: dict[str, Any] = {k: _float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        names = getattr(pl_module, "concept_names", None)
        per = getattr(pl_module, "test_concept_metrics", None)
        if names and per:
            m["per_concept"] = {
                # None: undefined (no labels, or one class for AUROC) in the test split
                n: {k: _none_if_nan(_float(per[k][i])) for k in per} for i, n in enumerate(names)
            }
        dm = trainer.datamodule
        if self.linear_probe and dm is not None and hasattr(dm, "split"):
            tr, va, te = dm.split("train"), dm.split("val"), dm.split("test")
            idx = torch.arange(len(tr))
            if len(idx) > self.probe_max_train:
                idx = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[: self.probe_max_train]
            task = getattr(pl_module, "task", "classification")
            args = (tr.x[idx], tr.y[idx], va.x, va.y, te.x, te.y)
            m["linear_probe"] = cached_probe(getattr(dm, "cache_dir", None), args, task)
        if dm is not None and hasattr(dm, "split"):
            self._concept_rows(m, dm, pl_module)
        for cb in trainer.callbacks:
            if isinstance(cb, CBMTrainingMode) and cb.exact_fit_summary:
                m["exact_fit"] = cb.exact_fit_summary
        self.metrics = m
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "metrics.json", m)
        if self.curves:
            write_curves(run_dir)
        print_report(m, run_dir)


    def _concept_rows(self, m: dict[str, Any], dm: Any, pl_module: L.LightningModule) -> None:
        """Task metric with every true concept given, and the scikit-learn reference column."""
        tr, te = dm.split("train"), dm.split("test")
        try:
            va = dm.split("val")
        except (KeyError, ValueError, AttributeError):
            va = None
        task = getattr(pl_module, "task", "classification")
        names = getattr(pl_module, "concept_names", None)
        if names and te.concepts is not None:
            m["all_concepts_given"] = _all_concepts_given(pl_module, te.x, te.concepts, te.y, task)
        if not self.sklearn_reference:
            return
        parts = [tr] + ([va] if va is not None and len(va.x) else [])
        n, d = sum(len(p.x) for p in parts), int(tr.x.shape[1])
        if n * d > self.reference_max_cells:
            m["sklearn_reference"] = {"skipped": f"{n} rows x {d} features is above reference_max_cells="
                                                 f"{self.reference_max_cells}"}
            return
        with_concepts = bool(names) and all(p.concepts is not None for p in parts) and te.concepts is not None
        cat = lambda key: torch.cat([torch.as_tensor(getattr(p, key)) for p in parts])  # noqa: E731
        args = (cat("x"), cat("y"), cat("concepts") if with_concepts else None, torch.as_tensor(te.x),
                torch.as_tensor(te.y), torch.as_tensor(te.concepts) if with_concepts else None)
        m["sklearn_reference"] = cached_reference(getattr(dm, "cache_dir", None), args, task)


@torch.no_grad()
def _all_concepts_given(model: L.LightningModule, x: Any, c: Any, y: Any, task: str) -> float:
    """Test accuracy (or R²) with every labelled true concept given to the model."""
    was = model.training
    model.eval()
    dev = model.device
    preds = []
    try:
        for i in range(0, len(x), 4096):
            cb = torch.as_tensor(c[i : i + 4096]).float().to(dev)
            y_hat, _ = model(torch.as_tensor(x[i : i + 4096]).float().to(dev), concepts=cb,
                             intervention_mask=~torch.isnan(cb))
            preds.append(y_hat.cpu())
    finally:
        model.train(was)
    p, y = torch.cat(preds), torch.as_tensor(y)
    if task == "classification":
        return float((p.argmax(-1) == y).float().mean())
    y = y.float()
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12))


def write_curves(run_dir: Path) -> Path | None:
    """Draw ``run_dir/metrics.csv`` to ``run_dir/curves.png``; None when there is nothing to
    draw. A failure to draw warns and never fails the run."""
    import warnings

    csv_path = run_dir / "metrics.csv"
    if not csv_path.is_file():
        return None
    try:
        from bottlenecks.analysis.plots import figure_png, plot_training_curves

        png = figure_png(plot_training_curves(csv_path))
    except ValueError:
        return None  # no train/val metrics logged
    except Exception as err:  # noqa: BLE001 - a plot must not fail a finished run
        warnings.warn(f"could not draw the training curves of {run_dir}: {type(err).__name__}: {err}", stacklevel=2)
        return None
    out = run_dir / "curves.png"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(png)
    os.replace(tmp, out)
    return out


#: bump when the probe's definition changes, so cached results are not reused
PROBE_VERSION = "lbfgs-logistic/ridge-v4-cv-refit-by-accuracy-shared-scale"
#: the same for the scikit-learn reference column
REFERENCE_VERSION = "sklearn-reference-v1"


def _digest(tensors: tuple[torch.Tensor, ...], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = t.contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:32]


def cached_probe(cache_dir: str | os.PathLike[str] | None, args: tuple[torch.Tensor, ...], task: str) -> dict[str, Any]:
    """The linear probe's scores on these exact tensors, read from ``<cache_dir>/probes/``
    when an earlier run already fitted it (the probe is a deterministic function of them)."""
    from bottlenecks.analysis import probes

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "probes" / f"{_digest(args, task + PROBE_VERSION)}.json"  # type: ignore[operator]
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                pass  # unreadable: fit again and overwrite it
    probe = probes.linear_probe(*args, task=task)
    result = {"metric": probe.metric, "train": probe.train, "val": probe.val, "test": probe.test, "C": probe.C,
              "selection": probe.selection}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    return result


def cached_reference(cache_dir: str | os.PathLike[str] | None, args: tuple[Any, ...], task: str) -> dict[str, Any]:
    """:func:`~bottlenecks.analysis.probes.sklearn_reference` on these tensors (train x, y, concepts,
    test x, y, concepts), read from ``<cache_dir>/probes/`` when an earlier run computed it."""
    from bottlenecks.analysis import probes

    path = None
    if cache_dir is not None:
        tensors = tuple(a for a in args if a is not None)
        key = task + REFERENCE_VERSION + str([a is None for a in args])
        path = Path(cache_dir) / "probes" / f"{_digest(tensors, key)}.json"  # type: ignore[operator]
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                pass
    result = probes.sklearn_reference(*args, task=task)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    return result


def print_report(m: dict[str, Any], run_dir: Path | None = None) -> None:
    """Print the report table with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    per = m.get("per_concept")
    if per:
        t = Table(title="concepts (test)")
        t.add_column("concept")
        t.add_column("accuracy", justify="right")
        t.add_column("AUROC", justify="right")
        for name, v in per.items():
            t.add_row(name, _fmt(v.get("concept_acc")), _fmt(v.get("concept_auroc")))
        t.add_row("[b]mean[/b]", f"[b]{_fmt(m.get('test/concept_acc'))}[/b]",
                  f"[b]{_fmt(m.get('test/concept_auroc'))}[/b]")
        console.print(t)
    ref = m.get("sklearn_reference") or {}
    skipped = ref.get("skipped")
    t = Table(title="task (test)")
    t.add_column("model")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("scikit-learn", justify="right")

    def sk(key: str) -> str:
        return "-" if key not in ref else f"{ref[key]:.4f}"

    task_metric = "accuracy" if "test/task_acc" in m else "r2"
    if per and "concept_acc" in ref:
        t.add_row("concept predictors", "mean accuracy", _fmt(m.get("test/concept_acc")), sk("concept_acc"))
    if "test/task_acc" in m:
        t.add_row("bottleneck model", "accuracy", f"{m['test/task_acc']:.4f}", sk("task_sequential"))
    for k in ("test/r2", "test/mse"):
        if k in m:
            t.add_row("bottleneck model", k.split("/")[1], f"{m[k]:.4f}", sk("task_sequential") if k == "test/r2" else "-")
    if "all_concepts_given" in m:
        t.add_row("every true concept given", task_metric, f"{m['all_concepts_given']:.4f}",
                  sk("task_all_concepts_given"))
    if "linear_probe" in m:
        lp = m["linear_probe"]
        t.add_row("linear probe (black box)", lp["metric"], f"{lp['test']:.4f}", sk("probe"))
    console.print(t)
    if ref and not skipped:
        console.print("scikit-learn: LogisticRegression(max_iter=1000) on the same features and train + val rows; "
                      "bottleneck model row: its sequential CBM (independent: "
                      f"{sk('task_independent')})")
    elif skipped:
        console.print(f"scikit-learn reference skipped: {skipped}")
    if "linear_probe" in m and m["linear_probe"].get("selection"):
        lp = m["linear_probe"]
        console.print(f"linear probe: C = {lp['C']:g} ({lp['selection']})")
    for part, fit in (m.get("exact_fit") or {}).items():
        C = fit.get("C")
        shown = ", ".join(f"{c:g}" for c in C) if isinstance(C, list) else f"{C:g}"
        console.print(f"exact fit, {part}: C = {shown} ({fit.get('selection')}, {fit.get('rows')} rows)")
    if run_dir is not None:
        console.print(f"run directory: {run_dir}")


class PredictionWriter(Callback):
    """Writes what ``bottlenecks predict`` returns to ``<run dir>/predictions.safetensors``:
    ``y_hat`` (logits or regression outputs), ``y_pred``, ``concept_probs`` and ``codes`` when
    the bottleneck has them, and ``index`` (row of the predicted split). An existing file is
    never overwritten: a numbered name is used instead.
    """

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches: list[dict[str, torch.Tensor]] = []

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and dataloader_idx == 0:
            self._batches.append({k: v.detach().cpu() for k, v in outputs.items() if torch.is_tensor(v)})

    @rank_zero_only
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file

        if not self._batches:
            return
        out = {k: torch.cat([b[k] for b in self._batches]).contiguous() for k in self._batches[0]}
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "predictions.safetensors"
        k = 1
        while path.exists():
            path = run_dir / f"predictions-{k}.safetensors"
            k += 1
        save_file(out, str(path))
        print(f"predictions ({len(next(iter(out.values())))} rows): {path}")
