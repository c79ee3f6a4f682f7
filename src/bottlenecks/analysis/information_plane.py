"""The information plane: ``I(X;T)`` against ``I(T;Y)`` for chosen layers, during training.

:class:`InformationPlane` is a Lightning callback. At fit start it draws a fixed held-out
subset (``n_samples`` rows of the validation split by default), and every
``every_n_epochs`` epochs it runs the model on that subset with forward hooks on the named
submodules (``model.get_submodule(name)``, e.g. ``"bottleneck.encoder.1"``), then estimates

* ``I(X;T)`` — with ``x_source="index"`` X is the sample's identity (a discrete variable with
  ``N`` equiprobable values, the setting of Shwartz-Ziv & Tishby 2017, where for a
  deterministic layer ``I(X;T) = H(T)``); with ``"input"`` X is the input tensor itself (for
  continuous estimators such as :class:`~bottlenecks.estimators.NoisyCompressedMI`);
* ``I(T;Y)`` — Y the targets (labels or regression values);
* the **degree of IB** of Kawaguchi et al. (2023, "How Does Information Bottleneck Help Deep
  Learning?"): ``I(X;T|Y)``, the information T keeps about X beyond what it tells about Y —
  the quantity their generalisation bound grows with. For a deterministic layer
  (Markov chain ``Y - X - T``) ``I(X;T|Y) = I(X;T) - I(T;Y)``, which is what
  ``degree="difference"`` reports; ``degree="conditional"`` estimates ``I(X;T|Y)`` directly
  when the estimator supports conditioning.

Records carry ``epoch=-1`` for the measurement before the first training step. The history
(one record per epoch and layer) is logged to the trainer's logger, kept in the
callback's checkpoint state, optionally written to JSON, and drawn by
:func:`plot_information_plane`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from bottlenecks.estimators import BinningMI, MIEstimator
from bottlenecks.layers.base import BottleneckOutput


def _as_activation(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, BottleneckOutput):
        return out.z
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot read an activation from a module output of type {type(out).__name__}")


@torch.no_grad()
def collect_activations(
    model: nn.Module, x: Tensor, layers: Sequence[str], batch_size: int = 1024
) -> dict[str, Tensor]:
    """Run ``model(x)`` in eval mode and return each named layer's output, flattened.

    Args:
        model: any module; ``layers`` are names for ``model.get_submodule``.
        x: ``(n, ...)`` inputs (on the model's device or CPU).

    Returns:
        ``{name: (n, d_layer)}`` float32 CPU tensors.
    """
    mods = {}
    for name in layers:
        try:
            mods[name] = model.get_submodule(name)
        except AttributeError as e:
            names = [n for n, _ in model.named_modules() if n][:40]
            raise ValueError(f"model has no submodule {name!r}; available: {names}") from e
    store: dict[str, list[Tensor]] = {name: [] for name in layers}
    hooks = [
        mod.register_forward_hook(lambda _m, _i, out, name=name: store[name].append(_as_activation(out).detach().float().cpu()))
        for name, mod in mods.items()
    ]
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for s in range(0, x.shape[0], batch_size):
            model(x[s : s + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(chunks).reshape(x.shape[0], -1) for name, chunks in store.items()}


class InformationPlane(L.Callback):
    """Records ``I(X;T)``, ``I(T;Y)`` and the degree of IB for named layers during training.

    Args:
        layers: submodule names of the LightningModule to hook (``"bottleneck"``,
            ``"bottleneck.encoder.1"``, ``"head"``...). A module returning a
            :class:`BottleneckOutput` is read through its ``z``.
        estimator: MI estimator for both terms (default: 30 equal-width bins,
            the classic information-plane estimator; use ``strategy="equal_mass"`` for ReLU).
        estimator_ty: a different estimator for ``I(T;Y)`` (default: ``estimator``).
        n_samples: size of the held-out subset.
        split: ``"val"`` (default) or ``"train"`` — which dataloader supplies the subset.
        every_n_epochs: record every this many epochs (and once before training).
        x_source: ``"index"``, ``"input"``, or ``"auto"`` (index for binning estimators,
            input otherwise).
        degree: ``"difference"`` or ``"conditional"`` (see module docstring).
        save_path: write the history as JSON here at the end of fitting.
        plot_path: save the information-plane plot (PNG) here at the end of fitting.
        seed: seed of the subset draw.
    """

    def __init__(
        self,
        layers: list[str],
        estimator: MIEstimator | None = None,
        estimator_ty: MIEstimator | None = None,
        n_samples: int = 1000,
        split: Literal["val", "train"] = "val",
        every_n_epochs: int = 1,
        x_source: Literal["auto", "index", "input"] = "auto",
        degree: Literal["difference", "conditional"] = "difference",
        save_path: str | None = None,
        plot_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("InformationPlane needs at least one layer name")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {split!r}")
        if x_source not in ("auto", "index", "input"):
            raise ValueError(f"x_source must be 'auto', 'index' or 'input', got {x_source!r}")
        if degree not in ("difference", "conditional"):
            raise ValueError(f"degree must be 'difference' or 'conditional', got {degree!r}")
        self.layers = list(layers)
        self.estimator = estimator if estimator is not None else BinningMI(n_bins=30)
        self.estimator_ty = estimator_ty if estimator_ty is not None else self.estimator
        self.n_samples = n_samples
        self.split = split
        self.every_n_epochs = every_n_epochs
        self.x_source = x_source
        self.degree = degree
        self.save_path = save_path
        self.plot_path = plot_path
        self.seed = seed
        self.history: list[dict[str, Any]] = []
        self._x: Tensor | None = None
        self._y: Tensor | None = None

    # ---------------------------------------------------------------- subset
    def _loader(self, trainer: L.Trainer) -> Any:
        dm = trainer.datamodule
        if dm is not None:
            return dm.val_dataloader() if self.split == "val" else dm.train_dataloader()
        loaders = trainer.val_dataloaders if self.split == "val" else trainer.train_dataloader
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0]
        if loaders is None:
            raise ValueError(f"InformationPlane found no {self.split} dataloader for its held-out subset")
        return loaders

    def set_data(self, x: Tensor, y: Tensor) -> None:
        """Use these samples ``x`` ``(n, ...)``, ``y`` ``(n,)`` instead of drawing from a dataloader."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        self._x, self._y = x.detach().cpu(), y.detach().cpu()

    def _draw_subset(self, trainer: L.Trainer) -> None:
        xs, ys, seen = [], [], 0
        for batch in self._loader(trainer):
            x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])
            xs.append(x.detach().cpu())
            ys.append(y.detach().cpu())
            seen += x.shape[0]
            if seen >= 4 * self.n_samples:
                break
        x, y = torch.cat(xs), torch.cat(ys)
        if x.shape[0] > self.n_samples:
            idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))[: self.n_samples]
            x, y = x[idx], y[idx]
        self._x, self._y = x, y

    # --------------------------------------------------------------- measure
    def _x_variable(self) -> Tensor:
        assert self._x is not None
        src = self.x_source
        if src == "auto":
            src = "index" if isinstance(self.estimator, BinningMI) else "input"
        if src == "index":
            return torch.arange(self._x.shape[0])
        return self._x.reshape(self._x.shape[0], -1).float()

    def measure(self, model: nn.Module, epoch: int, step: int) -> list[dict[str, Any]]:
        """Estimate the information quantities for every layer now; append to ``history``."""
        if self._x is None or self._y is None:
            raise RuntimeError("InformationPlane has no data: call set_data() or attach it to a Trainer")
        acts = collect_activations(model, self._x, self.layers)
        xv = self._x_variable()
        y = self._y
        units = self.estimator.units
        records = []
        for name, t in acts.items():
            i_xt = self.estimator.estimate(xv, t).to(units).value
            i_ty = self.estimator_ty.estimate(t, y).to(units).value
            if self.degree == "conditional" and self.estimator.supports_conditional:
                deg = self.estimator.estimate(xv, t, y).to(units).value
            else:
                deg = i_xt - i_ty
            rec = {"epoch": epoch, "step": step, "layer": name, "I_XT": i_xt, "I_TY": i_ty, "degree_of_ib": deg, "units": units}
            records.append(rec)
        self.history.extend(records)
        return records

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the module's own fit-start stages (feature standardisation, data init)
        if self._x is None:
            self._draw_subset(trainer)
        if not any(r["epoch"] == -1 for r in self.history):
            self._log(trainer, self.measure(pl_module, -1, trainer.global_step))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == trainer.max_epochs:
            self._log(trainer, self.measure(pl_module, epoch, trainer.global_step))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_path:
            Path(self.save_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.save_path).write_text(json.dumps(self.history, indent=1))
        if self.plot_path:
            plot_information_plane(self.history, path=self.plot_path)

    def _log(self, trainer: L.Trainer, records: list[dict[str, Any]]) -> None:
        if trainer.logger is None:
            return
        metrics = {}
        for r in records:
            for key in ("I_XT", "I_TY", "degree_of_ib"):
                metrics[f"info/{r['layer']}/{key}"] = r[key]
        trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def degree_of_ib_table(history: Sequence[dict[str, Any]]) -> str:
    """A text table of the last record per layer: ``I(X;T)``, ``I(T;Y)``, degree of IB."""
    last: dict[str, dict[str, Any]] = {}
    for r in history:
        last[r["layer"]] = r
    units = next(iter(last.values()))["units"] if last else "nats"
    lines = [f"{'layer':<28} {'I(X;T)':>9} {'I(T;Y)':>9} {'I(X;T|Y)':>9}  ({units})"]
    for name, r in last.items():
        lines.append(f"{name:<28} {r['I_XT']:>9.3f} {r['I_TY']:>9.3f} {r['degree_of_ib']:>9.3f}")
    return "\n".join(lines)


def plot_information_plane(
    history: Sequence[dict[str, Any]], ax: Any = None, path: str | None = None, title: str | None = None
) -> Any:
    """Draw each layer's trajectory in the (I(X;T), I(T;Y)) plane, coloured by epoch.

    Args:
        history: :attr:`InformationPlane.history` records.
        ax: a matplotlib Axes to draw on (a new figure when None).
        path: save the figure here (PNG) when given.
        title: plot title.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib

    from bottlenecks.analysis.plots import pyplot

    plt = pyplot()  # Agg, unless pyplot is already set up (a notebook's inline backend)

    if not history:
        raise ValueError("the information-plane history is empty; nothing to plot")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    else:
        fig = ax.figure
    layers = list(dict.fromkeys(r["layer"] for r in history))
    epochs = [r["epoch"] for r in history]
    lo, hi = min(epochs), max(epochs)
    norm = matplotlib.colors.Normalize(vmin=lo, vmax=max(hi, lo + 1))
    markers = "osD^v<>ph*"
    for i, layer in enumerate(layers):
        recs = [r for r in history if r["layer"] == layer]
        xs = [r["I_XT"] for r in recs]
        ys = [r["I_TY"] for r in recs]
        ax.plot(xs, ys, "-", color="0.7", lw=0.8, zorder=1)
        sc = ax.scatter(xs, ys, c=[r["epoch"] for r in recs], cmap="viridis", norm=norm,
                        marker=markers[i % len(markers)], s=28, zorder=2, label=layer, edgecolors="k", linewidths=0.3)
    units = history[0].get("units", "nats")
    ax.set_xlabel(f"I(X;T) [{units}]")
    ax.set_ylabel(f"I(T;Y) [{units}]")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.colorbar(sc, ax=ax, label="epoch")
    if not all(math.isfinite(r["I_XT"]) for r in history):
        ax.text(0.02, 0.98, "some estimates are not finite", transform=ax.transAxes, va="top", fontsize=7)
    fig.tight_layout()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
