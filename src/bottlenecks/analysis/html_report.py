"""``bottlenecks report RUN_DIR``: one self-contained, offline HTML page for a trained run.

The page holds the run's metrics, its training curves (``metrics.csv``), the unit table
with usage and dead-unit alarms, unit usage and classes-per-unit plots, unit contributions
(head weight × activation, where defined), a confusion matrix, intervention curves for
concept models, and the top-activating examples of a few units as image grids. Every plot
is a PNG embedded as base64; the page loads nothing from anywhere.

The page is a list of *sections*; each comes from a builder ``f(ctx) -> Section | list |
None`` (None: nothing to show for this run). :data:`DEFAULT_SECTIONS` lists the built-in
ones; pass more to :func:`build_report` (``extra_sections=[my_builder]``) to add a section
— e.g. attribution maps drawn with :func:`~bottlenecks.analysis.plots.plot_attribution_overlay`
— without touching this module::

    def attribution_section(ctx):
        fig = ...                                  # any matplotlib figure
        return Section("Attribution", ctx.img(fig))

    build_report("runs/cbm_shapes/version_0", extra_sections=[attribution_section])

The model is read from the run's checkpoint with ``weights_only=True`` and the data from
the datamodule in the run's ``config.yaml`` (relative paths, e.g. ``cache_dir``, resolve
against the current directory, as they did for ``bottlenecks fit``). When the data cannot be
built, the page still shows what needs no data (metrics, curves) and says why the rest is
missing.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import importlib
import json
import os
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bottlenecks.analysis.units import UnitReport, top_example_images, unit_contributions, unit_report


@dataclass
class Section:
    """One section of the page: a title and its HTML body (use :meth:`ReportContext.img`
    for figures, :func:`html_table` for tables)."""

    title: str
    html: str


@dataclass
class ReportContext:
    """What section builders see.

    Attributes:
        run_dir: the run directory.
        checkpoint: the checkpoint the model was loaded from.
        model: the trained :class:`~bottlenecks.models.module.BottleneckModel` (eval mode, CPU).
        config: the run's ``config.yaml`` (a dict; empty when absent).
        metrics: the run's final metrics (``metrics.json``, else the ``test/`` values of
            ``metrics.csv``).
        metrics_csv: the run's ``metrics.csv`` or None.
        datamodule: the run's datamodule, or None when it could not be built (``data_error``
            says why).
        split: the split the analysis uses.
        x, y, concepts: that split's inputs, labels and concept labels (first ``max_examples``
            rows), or None.
        y_hat: the model's outputs on ``x``.
        dataset: the raw dataset of the split (its rows match ``x``), for example pictures;
            None when the data has no raw dataset.
        class_names: class names (classification).
        units: the :class:`~bottlenecks.analysis.units.UnitReport` on ``x``.
        top_k: examples per unit in the example grids.
        n_example_units: how many units get an example grid.
    """

    run_dir: Path
    checkpoint: Path
    model: Any
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_csv: Path | None = None
    datamodule: Any = None
    data_error: str | None = None
    split: str = "test"
    x: Tensor | None = None
    y: Tensor | None = None
    concepts: Tensor | None = None
    y_hat: Tensor | None = None
    dataset: Any = None
    class_names: list[str] | None = None
    units: UnitReport | None = None
    top_k: int = 8
    n_example_units: int = 6

    @property
    def task(self) -> str:
        return str(getattr(self.model, "task", "classification"))

    def img(self, fig: Any, alt: str = "", dpi: int = 100) -> str:
        """An ``<img>`` tag with the figure embedded as a base64 PNG (the figure is closed)."""
        from bottlenecks.analysis.plots import figure_png

        data = base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


SectionBuilder = Callable[[ReportContext], "Section | Sequence[Section] | None"]


# --------------------------------------------------------------------- loading
def find_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a report reads: the run's single best checkpoint when there is one,
    else ``last.ckpt``; a clear error naming the directory when there is none."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    ckdir = run / "checkpoints"
    found = sorted(ckdir.glob("*.ckpt")) if ckdir.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"run directory {str(run)!r} has no checkpoint (looked for {str(ckdir)}/*.ckpt); "
            "train with a ModelCheckpoint callback, or pass --checkpoint PATH"
        )
    best = [p for p in found if p.name != "last.ckpt" and not p.name.startswith("last-")]
    if len(best) == 1:
        return best[0]
    last = ckdir / "last.ckpt"
    return last if last.exists() else max(found, key=lambda p: p.stat().st_mtime)


def load_run_model(checkpoint: str | os.PathLike[str]) -> Any:
    """A :class:`~bottlenecks.models.module.BottleneckModel` from a checkpoint, loaded with
    ``weights_only=True`` (never unpickling code), on the CPU, in eval mode."""
    from bottlenecks.models.module import BottleneckModel

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    # (loads through bottlenecks.checkpoints: one clear error for a pickle, a truncated or a foreign file)
    model = BottleneckModel.load_from_checkpoint(str(path), weights_only=True, map_location="cpu")
    return model.eval()


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``config.yaml`` (as ``bottlenecks fit`` saved it), or ``{}`` when absent."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a mapping of config sections")
    return cfg


def build_datamodule(config: dict[str, Any]) -> Any:
    """The datamodule of a run config's ``data:`` section (a ``class_path`` of a
    :class:`~bottlenecks.data.datamodule.FeatureDataModule` subclass and its ``init_args``)."""
    from bottlenecks.data.datamodule import FeatureDataModule

    data = config.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError("the run's config.yaml has no data section with a class_path")
    path = str(data["class_path"])
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"data class_path {path!r} is not a dotted path module.Class")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, FeatureDataModule)):
        raise ValueError(f"data class_path {path!r} is not a bottlenecks FeatureDataModule")
    return cls(**dict(data.get("init_args") or {}))


def _final_metrics(run_dir: Path, metrics_csv: Path | None) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
    out: dict[str, Any] = {}
    if metrics_csv is not None:
        from bottlenecks.analysis.plots import read_metrics_csv

        for k, pts in read_metrics_csv(metrics_csv).items():
            if k.startswith("test/"):
                out[k] = pts[-1][1]
    return out


def make_context(
    run_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    split: str = "test",
    max_examples: int = 2000,
    top_k: int = 8,
    n_example_units: int = 6,
    datamodule: Any = None,
    model: Any = None,
) -> ReportContext:
    """Load a run (model, metrics, data) into a :class:`ReportContext`.

    Args:
        run_dir: the run directory (``runs/NAME/version_N``).
        checkpoint: a checkpoint to read instead of :func:`find_checkpoint`'s choice.
        split: the split to analyse (``"train"``, ``"val"``, ``"test"``).
        max_examples: analyse at most this many rows of the split (the first ones).
        datamodule: use this datamodule instead of building the one in ``config.yaml``.
        model: use this trained model instead of reading a checkpoint (a model built in
            Python, whose checkpoint cannot rebuild its bottleneck from hyperparameters).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    if model is not None:
        ckpt = Path(checkpoint) if checkpoint is not None else Path("(the model given in Python)")
        model = model.cpu().eval()
    else:
        ckpt = Path(checkpoint) if checkpoint is not None else find_checkpoint(run)
        model = load_run_model(ckpt)
    csv_path = run / "metrics.csv"
    ctx = ReportContext(
        run_dir=run,
        checkpoint=ckpt,
        model=model,
        config=read_run_config(run),
        metrics_csv=csv_path if csv_path.is_file() else None,
        split=split,
        top_k=top_k,
        n_example_units=n_example_units,
    )
    ctx.metrics = _final_metrics(run, ctx.metrics_csv)
    try:
        dm = datamodule if datamodule is not None else build_datamodule(ctx.config)
        s = dm.split(split)
        n = min(max_examples, len(s.x))
        ctx.datamodule = dm
        ctx.x, ctx.y = s.x[:n], s.y[:n]
        ctx.concepts = None if s.concepts is None else s.concepts[:n]
        ctx.class_names = list(dm.class_names) if getattr(dm, "class_names", None) else None
        from bottlenecks.data.datamodule import BottleneckDataModule

        if isinstance(dm, BottleneckDataModule):
            ctx.dataset = dm.dataset(split)
    except Exception as err:  # noqa: BLE001 - the page still shows what needs no data
        ctx.data_error = f"{type(err).__name__}: {err}"
        warnings.warn(f"the report has no data analysis: {ctx.data_error}", stacklevel=2)
        return ctx
    if ctx.task == "classification" and ctx.class_names is None and getattr(model, "num_classes", None):
        ctx.class_names = [str(i) for i in range(int(model.num_classes))]
    y_cls = ctx.y if ctx.task == "classification" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the alarm is shown on the page
        ctx.units = unit_report(model, ctx.x, y_cls, class_names=ctx.class_names, top_k=top_k)
    from bottlenecks.analysis.units import read_model_units

    _, ctx.y_hat = read_model_units(model, ctx.x)
    return ctx


# --------------------------------------------------------------------- html helpers
def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, cls: str = "") -> str:
    """An HTML table (cells escaped; floats with 4 digits)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape(str(v))

    out = [f'<table class="{cls}">']
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _note(text: str, kind: str = "note") -> str:
    return f'<p class="{kind}">{html.escape(text)}</p>'


# --------------------------------------------------------------------- sections
def section_summary(ctx: ReportContext) -> Section:
    """Run, checkpoint, model and data in a few lines."""
    b = ctx.model.bottleneck
    units = b.units()
    data = ctx.config.get("data", {}) if isinstance(ctx.config.get("data"), dict) else {}
    rows = [
        ("run directory", str(ctx.run_dir)),
        ("checkpoint", ctx.checkpoint.name),
        ("bottleneck", type(b).__name__),
        ("units", f"{len(units)} {units.kind} units"),
        ("head", type(ctx.model.head).__name__),
        ("task", ctx.task),
        ("data", str(data.get("class_path", "?")).rsplit(".", 1)[-1]),
        ("analysed", f"{len(ctx.x)} rows of the {ctx.split} split" if ctx.x is not None else "no data"),
    ]
    body = html_table(rows, cls="kv")
    if ctx.data_error:
        body += _note(f"The data could not be built, so the unit analysis is missing: {ctx.data_error}", "alarm")
    return Section("Run", body)


def section_metrics(ctx: ReportContext) -> Section | None:
    """Final metrics: task, concepts (per concept when recorded), the linear probe."""
    m = ctx.metrics
    scalars = [(k, v) for k, v in sorted(m.items()) if isinstance(v, (int, float))]
    body = ""
    if scalars:
        body += html_table([(k, float(v)) for k, v in scalars], header=("metric", "value"), cls="kv")
    lp = m.get("linear_probe")
    if isinstance(lp, dict) and "test" in lp:
        body += _note(f"Black-box linear probe on the same features: test {lp.get('metric', '')} {lp['test']:.4f}.")
    per = m.get("per_concept")
    if isinstance(per, dict) and per:
        keys = sorted({k for v in per.values() for k in v})
        body += "<h3>Per concept (test)</h3>" + html_table(
            [(name, *[float(v.get(k, float("nan"))) for k in keys]) for name, v in per.items()],
            header=("concept", *keys),
        )
    if ctx.y_hat is not None and ctx.y is not None:
        if ctx.task == "classification":
            acc = float((ctx.y_hat.argmax(-1) == ctx.y).float().mean())
            body += _note(f"Recomputed on {len(ctx.y)} {ctx.split} rows from the checkpoint: accuracy {acc:.4f}.")
        else:
            mse = float(((ctx.y_hat.reshape(-1) - ctx.y.float()) ** 2).mean())
            body += _note(f"Recomputed on {len(ctx.y)} {ctx.split} rows from the checkpoint: MSE {mse:.4f}.")
    if not body:
        return None
    return Section("Metrics", body)


def section_training_curves(ctx: ReportContext) -> Section | None:
    """The run's curves from ``metrics.csv``."""
    if ctx.metrics_csv is None:
        return None
    from bottlenecks.analysis.plots import plot_training_curves, read_metrics_csv

    series = read_metrics_csv(ctx.metrics_csv)
    if not any(k.startswith(("train/", "val/")) for k in series):
        return None
    return Section("Training curves", ctx.img(plot_training_curves(series), "training curves"))


def section_units(ctx: ReportContext) -> Section | None:
    """Dead-unit alarm, usage, classes per unit, and the unit table."""
    rep = ctx.units
    if rep is None:
        return None
    from bottlenecks.analysis.plots import plot_unit_classes, plot_unit_usage

    body = ""
    alarm = rep.alarm()
    if alarm:
        body += _note("Dead-unit alarm: " + alarm, "alarm")
    elif rep.n_dead:
        body += _note(f"{rep.n_dead} of {len(rep)} units are dead: {rep.dead_units()[:12]}")
    summary = [("kind", rep.kind), ("units", len(rep)), ("dead", f"{rep.n_dead} ({rep.dead_fraction:.0%})"),
               ("perplexity of usage", f"{rep.perplexity():.2f}"), ("activity threshold", rep.threshold)]
    if rep.class_counts is not None:
        summary.append(("purity (share of activity on each unit's majority class)", f"{rep.purity():.3f}"))
    body += html_table(summary, cls="kv")
    body += ctx.img(plot_unit_usage(rep).figure, "unit usage")
    if rep.class_counts is not None:
        body += ctx.img(plot_unit_classes(rep).figure, "classes per unit")
    rows = rep.rows()
    shown = rows
    if len(rows) > 40:
        order = torch.argsort(rep.usage, descending=True, stable=True)[:40].tolist()
        shown = [rows[i] for i in order]
        body += _note(f"The 40 most used of {len(rows)} units:")
    header = ["unit", "usage", "mean", "std", "max", "dead"] + (["classes"] if rep.class_counts is not None else [])
    table_rows = []
    for r in shown:
        row = [r["unit"], r["usage"], r["mean"], r["std"], r["max"], "DEAD" if r["dead"] else ""]
        if "classes" in r:
            row.append(", ".join(f"{c} {s:.0%}" for c, s in r["classes"]))
        table_rows.append(row)
    body += html_table(table_rows, header=header, cls="units")
    return Section(f"Units ({rep.kind})", body)


def _example_units(rep: UnitReport, n: int) -> list[int]:
    alive = [i for i in torch.argsort(rep.usage, descending=True, stable=True).tolist() if not rep.dead[i]]
    if rep.kind == "concept":  # concepts: in their order, they are few and named
        alive = sorted(alive)
    return alive[:n]


def section_top_examples(ctx: ReportContext) -> Section | None:
    """The top-activating examples of a few units, as image grids."""
    rep = ctx.units
    if rep is None or ctx.dataset is None:
        return None
    from bottlenecks.analysis.plots import plot_example_grid

    parts = []
    for u in _example_units(rep, ctx.n_example_units):
        images = top_example_images(rep, ctx.dataset, u)
        if not images:
            continue
        rows = rep.top_examples_of(u)
        titles = []
        for r in rows:
            t = f"{float(rep.activations[r, u]):.2f}"
            if ctx.class_names is not None and ctx.y is not None and ctx.task == "classification":
                t += f" {ctx.class_names[int(ctx.y[r])]}"
            titles.append(t)
        fig = plot_example_grid(images, titles=titles, ncols=len(images), size=1.1,
                                suptitle=f"{rep.kind} {rep.names[u]} (usage {float(rep.usage[u]):.2f})")
        parts.append(ctx.img(fig, f"top examples of {rep.names[u]}"))
    if not parts:
        return None
    return Section("Top-activating examples",
                   _note("Titles: activation and true class.") + "".join(parts))


def section_contributions(ctx: ReportContext) -> Section | None:
    """Mean unit contributions (head weight × activation) to each example's predicted class."""
    if ctx.x is None or ctx.units is None:
        return None
    from bottlenecks.analysis.plots import plot_unit_contributions

    try:
        contrib, _ = unit_contributions(ctx.model, ctx.x)
    except ValueError as err:
        return Section("Unit contributions", _note(f"Not shown: {err}."))
    ax = plot_unit_contributions(contrib, ctx.units.names,
                                 title="mean contribution to the predicted class's logit")
    return Section("Unit contributions", ctx.img(ax.figure, "unit contributions"))


def section_confusion(ctx: ReportContext) -> Section | None:
    """Confusion matrix on the analysed split (classification)."""
    if ctx.task != "classification" or ctx.y_hat is None or ctx.y is None:
        return None
    from bottlenecks.analysis.plots import plot_confusion_matrix

    ax = plot_confusion_matrix(ctx.y, ctx.y_hat.argmax(-1), class_names=ctx.class_names)
    return Section("Confusion matrix", ctx.img(ax.figure, "confusion matrix"))


def section_interventions(ctx: ReportContext) -> Section | None:
    """Intervention curves (concept models trained with concept labels, data with them)."""
    rep = ctx.units
    if rep is None or rep.kind != "concept" or ctx.concepts is None or ctx.y is None:
        return None
    if ctx.model.bottleneck.concept_supervision() == 0:
        return Section("Intervention curves", _note("Not shown: the concept units never saw a concept label."))
    from bottlenecks.analysis.intervention_curves import intervention_curve

    # a datamodule that groups its concepts (CUB's attribute groups) and prices them (annotation
    # seconds) gets curves by group, with the cost-aware policy
    groups = getattr(ctx.datamodule, "concept_groups", None)
    costs = getattr(ctx.datamodule, "concept_costs", None) if groups else None
    n = len(groups) if groups else len(rep)
    budgets = sorted({0, 1, 2, n // 2, n})
    curve = intervention_curve(ctx.model, {"x": ctx.x, "concepts": ctx.concepts, "y": ctx.y},
                               ("random", "uncertainty") + (("cost_aware",) if costs else ()), budgets=budgets,
                               groups=groups, costs=costs)
    ax = curve.plot(title=f"{ctx.split}: {curve.n_examples} examples")
    return Section("Intervention curves", ctx.img(ax.figure, "intervention curves"))


#: the built-in sections, in page order
DEFAULT_SECTIONS: list[SectionBuilder] = [
    section_summary,
    section_metrics,
    section_training_curves,
    section_units,
    section_top_examples,
    section_contributions,
    section_confusion,
    section_interventions,
]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:14px} table{border-collapse:collapse;margin:8px 0;font-size:12px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f4f4f4}
table.units td:nth-child(n+2):nth-child(-n+5){text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#555} img{max-width:100%;display:block;margin:8px 0}
.alarm{background:#fde8e8;border-left:4px solid #c0392b;padding:6px 10px}
.note{color:#444} .error{background:#fff4e5;border-left:4px solid #e67e22;padding:6px 10px;white-space:pre-wrap}
nav a{margin-right:12px;font-size:13px} footer{margin-top:32px;color:#888;font-size:11px}
"""


def render_html(ctx: ReportContext, sections: Sequence[SectionBuilder]) -> str:
    """The page: each builder's sections in order; a builder that fails shows its error
    in its place (the rest of the page is kept)."""
    built: list[Section] = []
    for builder in sections:
        name = getattr(builder, "__name__", repr(builder))
        try:
            res = builder(ctx)
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the page
            if os.environ.get("BOTTLENECKS_DEBUG"):
                raise
            last = traceback.extract_tb(err.__traceback__)[-1]
            built.append(Section(name, f'<p class="error">{html.escape(f"{name} failed: {type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})")}</p>'))
            warnings.warn(f"report section {name} failed: {type(err).__name__}: {err}", stacklevel=2)
            continue
        if res is None:
            continue
        built.extend([res] if isinstance(res, Section) else list(res))
    title = f"bottlenecks report: {ctx.run_dir.parent.name}/{ctx.run_dir.name}"
    nav = "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(built))
    body = "".join(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>{s.html}</section>' for i, s in enumerate(built))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}"
        f"<footer>written by bottlenecks report, {stamp}; self-contained (no external resources)</footer>"
        "</body></html>"
    )


def build_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    split: str = "test",
    max_examples: int = 2000,
    top_k: int = 8,
    n_example_units: int = 6,
    sections: Sequence[SectionBuilder] | None = None,
    extra_sections: Sequence[SectionBuilder] = (),
    datamodule: Any = None,
    model: Any = None,
) -> Path:
    """Write the HTML report of a run and return its path (default ``RUN_DIR/report.html``).

    Args:
        run_dir: the run directory.
        out: where to write the page.
        checkpoint, split, max_examples, datamodule, model: see :func:`make_context`.
        top_k: examples per unit in the example grids.
        n_example_units: how many units get an example grid.
        sections: the builders to use (default :data:`DEFAULT_SECTIONS`).
        extra_sections: builders appended after ``sections`` (attribution, edits, ...).
    """
    ctx = make_context(run_dir, checkpoint=checkpoint, split=split, max_examples=max_examples, top_k=top_k,
                       n_example_units=n_example_units, datamodule=datamodule, model=model)
    page = render_html(ctx, list(sections if sections is not None else DEFAULT_SECTIONS) + list(extra_sections))
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def report_main(argv: Sequence[str] | None = None) -> int:
    """``bottlenecks report RUN_DIR [--out PATH] [--checkpoint CKPT] [--split test] ...``"""
    parser = argparse.ArgumentParser(
        prog="bottlenecks report",
        description="Write a self-contained offline HTML report of a trained run "
        "(metrics, curves, units, examples, plots).",
    )
    parser.add_argument("run_dir", help="the run directory, e.g. runs/cbm_shapes/version_0")
    parser.add_argument("--out", default=None, help="output HTML file (default RUN_DIR/report.html)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to read (default: the best, else last.ckpt)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--max-examples", type=int, default=2000, help="rows of the split to analyse")
    parser.add_argument("--top-k", type=int, default=8, help="examples per unit in the image grids")
    parser.add_argument("--example-units", type=int, default=6, help="units that get an example grid")
    args = parser.parse_args(list(argv) if argv is not None else None)
    # errors reach the command's one error boundary (bottlenecks.cli.main): one line, exit code 2
    path = build_report(args.run_dir, args.out, checkpoint=args.checkpoint, split=args.split,
                        max_examples=args.max_examples, top_k=args.top_k, n_example_units=args.example_units)
    print(f"report: {path}")
    return 0
