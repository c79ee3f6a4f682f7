"""Plots for trained bottleneck models (matplotlib; PNG files, inline in notebooks, embedded
in the HTML report).

Every function draws on a given Axes (a new figure when ``ax`` is None) and returns the Axes
or the Figure, so plots compose into subplot grids. Plots that exist elsewhere are re-exported
here so one import finds them all:

* :func:`plot_unit_usage`, :func:`plot_unit_classes` — a :class:`~bottlenecks.analysis.units.UnitReport`;
* :func:`plot_unit_contributions` — head weight × activation (:func:`~bottlenecks.analysis.units.unit_contributions`);
* :func:`plot_example_grid` — top-activating examples as an image grid;
* :func:`plot_attribution_overlay` — an attribution map over its image;
* :func:`plot_confusion_matrix`;
* :func:`plot_training_curves` — a run's ``metrics.csv``;
* :func:`plot_intervention_curves` (from :mod:`~bottlenecks.analysis.intervention_curves`),
  :func:`plot_information_plane` (from :mod:`~bottlenecks.analysis.information_plane`);
* :func:`figure_png` — a figure as PNG bytes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bottlenecks.analysis.information_plane import plot_information_plane
from bottlenecks.analysis.intervention_curves import plot_intervention_curves

__all__ = [
    "figure_png",
    "plot_attribution_overlay",
    "plot_confusion_matrix",
    "plot_example_grid",
    "plot_information_plane",
    "plot_intervention_curves",
    "plot_training_curves",
    "plot_unit_classes",
    "plot_unit_contributions",
    "plot_unit_usage",
    "pyplot",
    "read_metrics_csv",
]


def pyplot() -> Any:
    """``matplotlib.pyplot``, on the headless Agg backend unless pyplot was already set up
    (a notebook's inline backend is kept: switching to Agg would stop figures from showing)."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_plt = pyplot


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    _, ax = _plt().subplots(figsize=figsize)
    return ax


def figure_png(fig: Any, dpi: int = 100, close: bool = True) -> bytes:
    """A matplotlib Figure (or an Axes' figure) as PNG bytes; closes it by default."""
    fig = getattr(fig, "figure", fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        _plt().close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------- units
def _shown_units(report: Any, max_units: int) -> list[int]:
    n = len(report)
    if n <= max_units:
        return list(range(n))
    return sorted(torch.argsort(report.usage, descending=True, stable=True)[:max_units].tolist())


def plot_unit_usage(report: Any, ax: Any = None, max_units: int = 64) -> Any:
    """Bars: the fraction of examples on which each unit is active; dead units in red.

    With more than ``max_units`` units, the most used are shown and a histogram of all units'
    usage is drawn instead when ``max_units`` is 0.
    """
    ax = _axes(ax, (max(4.0, min(12.0, 0.18 * min(len(report), max_units) + 2)), 3.0))
    if max_units == 0 or len(report) > 4 * max_units:
        ax.hist(report.usage.numpy(), bins=30, color="tab:blue")
        ax.set_xlabel("usage (fraction of examples where the unit is active)")
        ax.set_ylabel(f"{report.kind} units")
        ax.set_title(f"usage of {len(report)} {report.kind} units ({report.n_dead} dead)", fontsize=10)
        return ax
    idx = _shown_units(report, max_units)
    usage = report.usage[idx].numpy()
    colors = ["tab:red" if report.dead[i] else "tab:blue" for i in idx]
    ax.bar(range(len(idx)), usage, color=colors)
    ax.set_xticks(range(len(idx)))
    ax.set_xticklabels([report.names[i] for i in idx], rotation=90, fontsize=7)
    ax.set_ylabel("usage")
    ax.set_ylim(0, max(1e-3, float(usage.max()) * 1.1) if len(usage) else 1)
    shown = "" if len(idx) == len(report) else f", {len(idx)} most used shown"
    ax.set_title(f"{report.kind} unit usage ({report.n_dead} of {len(report)} dead{shown})", fontsize=10)
    return ax


def plot_unit_classes(report: Any, ax: Any = None, max_units: int = 40) -> Any:
    """Heatmap unit × class: the share of each unit's activity that falls on each class."""
    if report.class_counts is None:
        raise ValueError("the unit report has no class labels (unit_report was called without y)")
    idx = _shown_units(report, max_units)
    counts = report.class_counts[idx]
    share = counts / counts.sum(1, keepdim=True).clamp_min(1e-12)
    n_cls = share.shape[1]
    ax = _axes(ax, (min(12.0, 0.35 * n_cls + 3), min(12.0, 0.22 * len(idx) + 1.5)))
    im = ax.imshow(share.numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    ax.set_yticks(range(len(idx)))
    ax.set_yticklabels([report.names[i] for i in idx], fontsize=7)
    ax.set_xticks(range(n_cls))
    ax.set_xticklabels(report.class_names, rotation=90, fontsize=7)
    ax.set_xlabel("class")
    ax.set_title(f"classes per {report.kind} unit (share of its activity)", fontsize=10)
    ax.figure.colorbar(im, ax=ax, fraction=0.04)
    return ax


def plot_unit_contributions(
    contributions: Tensor | np.ndarray,
    names: Sequence[str],
    ax: Any = None,
    top: int = 15,
    title: str | None = None,
) -> Any:
    """Horizontal bars of unit contributions (head weight × activation) to one logit.

    Args:
        contributions: ``(n_units,)`` for one example, or ``(n, n_units)`` (averaged).
        names: one name per unit.
        top: show the ``top`` largest in absolute value.
    """
    c = torch.as_tensor(contributions).float()
    if c.dim() == 2:
        c = c.mean(0)
    if c.shape[0] != len(names):
        raise ValueError(f"{c.shape[0]} contributions but {len(names)} unit names")
    order = torch.argsort(c.abs(), descending=True, stable=True)[:top].flip(0)
    ax = _axes(ax, (5.0, 0.28 * len(order) + 1.2))
    vals = c[order].numpy()
    ax.barh(range(len(order)), vals, color=["tab:green" if v >= 0 else "tab:red" for v in vals])
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([names[int(i)] for i in order], fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("contribution to the logit (weight x activation)")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


# --------------------------------------------------------------------- images
def _as_image(img: Any) -> np.ndarray:
    a = img.detach().cpu().float().numpy() if torch.is_tensor(img) else np.asarray(img, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"an image is (H, W), (H, W, 3) or (3, H, W), got shape {a.shape}")
    return a


def plot_example_grid(
    images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.2,
    suptitle: str | None = None,
) -> Any:
    """A grid of images (``(H, W)``, ``(H, W, 3)`` or ``(3, H, W)``, values in ``[0, 1]``).

    Returns:
        The Figure.
    """
    plt = _plt()
    if len(images) == 0:
        raise ValueError("no images to draw")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        a = _as_image(images[i])
        ax.imshow(np.clip(a, 0, 1), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def plot_attribution_overlay(
    image: Any,
    attribution: Any,
    ax: Any = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    signed: bool = False,
    title: str | None = None,
) -> Any:
    """An attribution map drawn over its image.

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(3, H, W)`` in ``[0, 1]``.
        attribution: ``(h, w)`` or ``(C, h, w)`` (channels summed) map, any scale; resized to
            the image when its size differs (bilinear).
        alpha: opacity of the map.
        signed: keep the sign (diverging map centred at 0) instead of the magnitude.

    Returns:
        The Axes.
    """
    img = _as_image(image)
    m = torch.as_tensor(np.asarray(attribution.detach().cpu() if torch.is_tensor(attribution) else attribution,
                                   dtype=np.float32))
    if m.dim() == 3:
        m = m.sum(0) if m.shape[0] <= 4 else m.sum(-1)
    if m.dim() != 2:
        raise ValueError(f"an attribution map is (H, W) or (C, H, W), got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("the attribution map contains NaN or inf")
    if tuple(m.shape) != img.shape[:2]:
        m = torch.nn.functional.interpolate(m[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    ax = _axes(ax, (3.0, 3.0))
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None)
    if signed:
        lim = float(m.abs().max()) or 1.0
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=alpha)
    else:
        a = m.abs()
        im = ax.imshow((a / (a.max() if a.max() > 0 else 1)).numpy(), cmap=cmap, vmin=0, vmax=1, alpha=alpha)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


# --------------------------------------------------------------------- task
def plot_confusion_matrix(
    y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None, ax: Any = None, normalize: bool = True,
) -> Any:
    """Confusion matrix (rows: true class, columns: predicted), row-normalised by default."""
    from sklearn.metrics import confusion_matrix

    yt = np.asarray(torch.as_tensor(y_true).cpu()).astype(int)
    yp = np.asarray(torch.as_tensor(y_pred).cpu()).astype(int)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has shape {yt.shape} but y_pred has {yp.shape}")
    n = max(int(yt.max(initial=0)), int(yp.max(initial=0))) + 1
    if class_names is not None:
        if len(class_names) < n:
            raise ValueError(f"{len(class_names)} class names but the labels reach class {n - 1}")
        n = len(class_names)
    cm = confusion_matrix(yt, yp, labels=list(range(n))).astype(float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    ax = _axes(ax, (0.45 * n + 2.5, 0.45 * n + 1.8))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=7)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}", ha="center",
                            va="center", fontsize=6, color="white" if shown[i, j] > 0.5 * (shown.max() or 1) else "k")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.3f})", fontsize=10)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


# --------------------------------------------------------------------- training curves
def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """A CSVLogger ``metrics.csv`` as ``{metric: [(epoch, value), ...]}`` (empty cells skipped).

    Epoch-level metrics (``train/…``, ``val/…``, ``test/…``) are kept; the ``epoch`` and
    ``step`` columns are not metrics.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (a run logged with CSVLogger writes metrics.csv)")
    series: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = float(row.get("epoch") or "nan")
            except ValueError:
                epoch = float("nan")
            for k, v in row.items():
                if k in ("epoch", "step") or v in (None, ""):
                    continue
                try:
                    series.setdefault(k, []).append((epoch, float(v)))
                except ValueError:
                    continue
    return series


def plot_training_curves(source: str | Path | dict[str, list[tuple[float, float]]], max_panels: int = 6) -> Any:
    """A run's curves, one panel per metric (``loss``, ``task_acc``, ...) with train and val
    together. ``source`` is a ``metrics.csv``, a run directory, or :func:`read_metrics_csv`'s dict.

    Returns:
        The Figure.
    """
    if isinstance(source, (str, Path)):
        p = Path(source)
        series = read_metrics_csv(p / "metrics.csv" if p.is_dir() else p)
    else:
        series = source
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key, pts in series.items():
        stage, _, name = key.partition("/")
        if not name or stage == "test":
            continue
        panels.setdefault(name, {})[stage] = pts
    if not panels:
        raise ValueError("the metrics file has no train/ or val/ metrics to plot")
    first = [k for k in ("loss", "task_acc", "r2", "mse", "concept_acc") if k in panels]
    names = (first + sorted(k for k in panels if k not in first))[:max_panels]
    plt = _plt()
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for stage, pts in sorted(panels[name].items()):
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=stage)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
