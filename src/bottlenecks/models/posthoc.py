"""Fitting post-hoc concept bottlenecks: the sparse concept head, the knowledge prior, the
PCBM-h residual.

Post-hoc CBM (Yuksekgonul et al., 2023) keeps the encoder and the concept projection
fixed and fits only the head:

* :func:`fit_sparse_head` — PCBM's interpretable predictor: multinomial logistic
  regression with an elastic-net penalty on the cached concept units, by
  scikit-learn's ``SGDClassifier(loss="log_loss", penalty="elasticnet")`` (PCBM's own
  choice) or ``LogisticRegression(solver="saga")``;
* :func:`fit_prior_head` — KnoBo's knowledge prior (Yang et al., 2024) as we read it: the
  head's weights are pulled toward a class–concept prior matrix ``P`` instead of toward 0,
  ``mean CE + (prior_weight / 2) ||W − prior_scale · P||²``, fitted by full-batch L-BFGS.
  ``prior=None`` gives the same head with plain L2 (the comparison without the prior);
* :func:`load_concept_head` writes the coefficients into the model's linear head (and the
  identity on a residual side channel of class logits);
* :func:`fit_residual` — PCBM-h: with the concept head frozen, fit the bottleneck's side
  channel (a linear predictor of residual logits on the features) by L-BFGS;
* :func:`fit_posthoc_cbm` — all of it on a feature datamodule, from Python;
* a list of strengths (``lam`` for the elastic net, ``prior_weight`` for the prior head) is
  settled by :func:`select_concept_head`: ``folds``-fold cross-validation over train +
  validation rows when there are at most ``cv_max_rows`` (else on the validation rows),
  ties going to the stronger penalty, then one refit on train + validation;
* :class:`PosthocCBMFit` — the same from YAML: a callback that fits the head when training
  starts; the epochs then train only the side channel (PCBM-h), or none run (PCBM).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from bottlenecks.analysis.probes import CV_FOLDS, CV_MAX_ROWS, _folds

#: The elastic-net strengths a post-hoc head chooses from by default. On Shapes (Lite0 at 64 px,
#: benchmarks/posthoc_experiments.py) choosing by 5-fold CV reached 0.864 test accuracy where
#: PCBM's fixed 1e-3 reached 0.855 (linear probe 0.867), at 17 s instead of 0.8 s on 2 cores.
LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)

__all__ = [
    "HeadSelection",
    "PosthocCBMFit",
    "PosthocFit",
    "concept_inputs",
    "fit_posthoc_cbm",
    "fit_prior_head",
    "fit_residual",
    "fit_sparse_head",
    "load_concept_head",
    "select_concept_head",
]


# --------------------------------------------------------------------- data access
def split_rows(data: Any, split: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, y, concepts or None)`` of one split of a feature datamodule (``.split``), a dict or a tuple."""
    if hasattr(data, "split") and callable(data.split):
        s = data.split(split)
        return torch.as_tensor(s.x).float(), torch.as_tensor(s.y), s.concepts
    if isinstance(data, dict):
        return torch.as_tensor(data["x"]).float(), torch.as_tensor(data["y"]), data.get("concepts")
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return torch.as_tensor(data[0]).float(), torch.as_tensor(data[1]), data[2] if len(data) == 3 else None
    raise TypeError(f"data must be a feature datamodule (with .split), a dict or a tuple (x, y[, concepts]); "
                    f"got {type(data).__name__}")


def _side_and_concept_columns(model: nn.Module) -> tuple[Tensor, slice | None]:
    b = model.bottleneck
    side = b.side_channel()
    keep = torch.ones(b.out_features, dtype=torch.bool)
    if side is not None:
        keep[side] = False
    return keep, side


@torch.no_grad()
def concept_inputs(model: nn.Module, x: Tensor, batch_size: int = 4096) -> tuple[Tensor, Tensor | None]:
    """What the head reads, split: concept columns ``(n, n_units)`` and side-channel columns
    ``(n, side)`` (None without a side channel), for features ``x``, in eval mode."""
    was = model.training
    model.eval()
    try:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        z = torch.cat([model.bottleneck(model.norm(x[i : i + batch_size].to(dev))).z.cpu()
                       for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)
    keep, side = _side_and_concept_columns(model)
    return z[:, keep], (None if side is None else z[:, side])


# --------------------------------------------------------------------- heads
def _check_fit_inputs(u: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    u = torch.as_tensor(u).float().cpu()
    y = torch.as_tensor(y).long().cpu()
    if u.dim() != 2 or len(u) != len(y):
        raise ValueError(f"concept units (n, num_concepts) and labels (n,) disagree: {tuple(u.shape)} vs {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); got [{int(y.min())}, {int(y.max())}]")
    if u.shape[1] >= len(u):
        warnings.warn(f"{u.shape[1]} concepts for {len(u)} training examples: more concepts than the data can "
                      "support; the head will overfit", stacklevel=3)
    return u, y


def fit_sparse_head(
    u: Tensor,
    y: Tensor,
    n_classes: int,
    lam: float = 1e-3,
    l1_ratio: float = 0.99,
    solver: Literal["sgd", "saga"] = "sgd",
    max_iter: int = 1000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """PCBM's sparse interpretable predictor on concept units ``u (n, num_concepts)``.

    Args:
        lam: overall penalty strength (scikit-learn's ``alpha`` for ``"sgd"``; ``C = 1 / (lam n)``
            for ``"saga"``, the same objective).
        l1_ratio: share of L1 in the elastic net (PCBM: 0.99).
        solver: ``"sgd"`` — ``SGDClassifier(loss="log_loss", penalty="elasticnet")`` as in
            PCBM; ``"saga"`` — ``LogisticRegression(l1_ratio=..., solver="saga")`` (slower, exact).

    Returns:
        ``(W (n_classes, num_concepts), b (n_classes,))``; a class absent from ``y`` gets
        zero weights and a bias of -30.
    """
    u, y = _check_fit_inputs(u, y, n_classes)
    with warnings.catch_warnings():
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        if solver == "sgd":
            from sklearn.linear_model import SGDClassifier

            clf = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=lam, l1_ratio=l1_ratio,
                                max_iter=max_iter, tol=1e-5, random_state=seed)
        elif solver == "saga":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(l1_ratio=l1_ratio, C=1.0 / (lam * len(y)), solver="saga", max_iter=max_iter,
                                     random_state=seed, **_elasticnet_kw())
        else:
            raise ValueError(f"solver must be 'sgd' or 'saga', got {solver!r}")
        clf.fit(u.numpy().astype(np.float64), y.numpy())
    coef = torch.as_tensor(clf.coef_, dtype=torch.float32)
    icpt = torch.as_tensor(np.atleast_1d(clf.intercept_), dtype=torch.float32)
    classes = [int(c) for c in clf.classes_]
    W = torch.zeros(n_classes, u.shape[1])
    b = torch.full((n_classes,), -30.0)
    if len(classes) == 2 and coef.shape[0] == 1:  # sklearn's binary form: one score for classes[1]
        W[classes[1]], b[classes[1]] = coef[0], icpt[0]
        b[classes[0]] = 0.0
    else:
        for row, c in enumerate(classes):
            W[c], b[c] = coef[row], icpt[row]
    return W, b


def _elasticnet_kw() -> dict[str, Any]:
    """scikit-learn >= 1.8 infers the elastic net from ``l1_ratio``; older versions need ``penalty``."""
    import sklearn

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    return {} if (major, minor) >= (1, 8) else {"penalty": "elasticnet"}


def fit_prior_head(
    u: Tensor,
    y: Tensor,
    n_classes: int,
    prior: Tensor | None = None,
    prior_weight: float = 1e-2,
    prior_scale: float = 1.0,
    max_iter: int = 500,
) -> tuple[Tensor, Tensor]:
    """A linear head on concept units pulled toward a class–concept prior (KnoBo).

    Minimises ``mean CE(u Wᵀ + b, y) + (prior_weight / 2) ||W − prior_scale · P||²`` by
    full-batch L-BFGS; ``prior=None`` means ``P = 0`` (the same head without the prior).

    Args:
        u: ``(n, num_concepts)`` concept units; y: ``(n,)`` labels.
        prior: ``(n_classes, num_concepts)`` — e.g. 1 where the class has the concept, 0 elsewhere
            (:meth:`~bottlenecks.concepts.ConceptSet.prior`).
        prior_weight: strength of the pull; prior_scale: the weight a prior entry of 1 asks for.

    Returns:
        ``(W (n_classes, num_concepts), b (n_classes,))``.
    """
    u, y = _check_fit_inputs(u, y, n_classes)
    k = u.shape[1]
    target = torch.zeros(n_classes, k)
    if prior is not None:
        P = torch.as_tensor(prior).float()
        if tuple(P.shape) != (n_classes, k):
            raise ValueError(f"the prior has shape {tuple(P.shape)} but the head is ({n_classes}, {k}) (classes, concepts)")
        target = prior_scale * P
    with torch.inference_mode(False), torch.enable_grad():
        W = target.clone().requires_grad_(True)
        b = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(u @ W.T + b, y) + 0.5 * prior_weight * (W - target).pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return W.detach(), b.detach()


def load_concept_head(model: nn.Module, W: Tensor, b: Tensor) -> None:
    """Write a concept head into the model's linear head.

    The head's columns on the concept units get ``W``, its bias ``b``. Columns on a side
    channel of class logits (PCBM-h's residual) get the identity, so the side channel adds
    to the concept logits; a side channel of another width is an error.
    """
    head = model.head
    n_out = int(b.numel())
    if not isinstance(head, nn.Linear):
        raise TypeError(f"a post-hoc concept head is loaded into a linear head; the model's head is "
                        f"{type(head).__name__} (leave head and head_hidden unset)")
    keep, side = _side_and_concept_columns(model)
    if head.in_features != len(keep) or head.out_features != n_out or W.shape != (n_out, int(keep.sum())):
        raise ValueError(f"the head is Linear({head.in_features}, {head.out_features}) but the fitted concept head is "
                         f"{tuple(W.shape)} on {int(keep.sum())} concept units")
    with torch.no_grad():
        weight = torch.zeros_like(head.weight)
        weight[:, keep] = W.to(weight)
        if side is not None:
            width = len(range(*side.indices(len(keep))))
            if width != n_out:
                raise ValueError(f"a hybrid post-hoc head needs a side channel of {n_out} class logits; the bottleneck's "
                                 f"side channel has {width} columns")
            weight[:, side] = torch.eye(n_out, dtype=weight.dtype, device=weight.device)
        head.weight.copy_(weight)
        head.bias.copy_(b.to(head.bias))


def _side_modules(model: nn.Module) -> list[nn.Parameter]:
    b = model.bottleneck
    params = []
    for name in b.side_channel_parameters():
        params += list(b.get_submodule(name).parameters())
    return params


def fit_residual(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    l2: float | Sequence[float] = (1e-2, 1e-1, 1.0, 10.0),
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    max_iter: int = 200,
) -> float:
    """PCBM-h: fit the bottleneck's side channel (:meth:`side_channel_parameters`) on ``(x, y)`` with
    everything else — concept projection and head — frozen.

    Minimises mean cross-entropy plus ``l2 / 2 ||θ||²`` by full-batch L-BFGS (the residual is
    linear, so this is convex). With several ``l2`` values and a validation split, each is
    fitted (warm-started from the previous, strongest first) and the best on validation kept.

    Returns:
        The ``l2`` kept.
    """
    params = _side_modules(model)
    if not params:
        raise ValueError(f"{type(model.bottleneck).__name__} has no side channel to fit (construct it with residual=True)")
    grid = sorted([float(l2)] if isinstance(l2, (int, float)) else [float(v) for v in l2], reverse=True)
    if len(grid) > 1 and (x_val is None or y_val is None):
        raise ValueError("choosing the residual's l2 among several values needs a validation split (x_val, y_val)")
    dev = params[0].device
    x = torch.as_tensor(x).float().to(dev)
    y = torch.as_tensor(y).long().to(dev)
    was = model.training
    model.eval()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    best: tuple[float, float, list[Tensor]] | None = None
    try:
        with torch.inference_mode(False), torch.enable_grad():
            h = model.norm(x)
            for reg in grid:
                opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                                        history_size=20, line_search_fn="strong_wolfe")

                def closure() -> Tensor:
                    opt.zero_grad()
                    logits = model.head(model.bottleneck(h).z)
                    loss = F.cross_entropy(logits, y) + 0.5 * reg * sum(p.pow(2).sum() for p in params)
                    loss.backward()
                    return loss

                opt.step(closure)
                if len(grid) > 1:
                    acc, _ = _accuracy(model, torch.as_tensor(x_val).float(), y_val)
                    if best is None or acc > best[0]:
                        best = (acc, reg, [p.detach().clone() for p in params])
    finally:
        for p, rg in frozen:
            p.requires_grad_(rg)
        model.train(was)
    if best is None:
        return grid[0]
    with torch.no_grad():
        for p, v in zip(params, best[2]):
            p.copy_(v)
    return best[1]


# --------------------------------------------------------------------- whole fits
@dataclass
class PosthocFit:
    """What :func:`fit_posthoc_cbm` did: accuracies per split of the concept head alone and of
    the model (hybrid when there is a residual), and the head's sparsity."""

    accuracy: dict[str, float] = field(default_factory=dict)
    concept_accuracy: dict[str, float] = field(default_factory=dict)
    nonzero_weights: int = 0
    n_weights: int = 0
    residual_l2: float | None = None
    selection: HeadSelection | None = None

    def table(self) -> str:
        rows = [f"{'split':<8}{'concept head':>14}{'model':>10}"]
        for s in self.accuracy:
            rows.append(f"{s:<8}{self.concept_accuracy.get(s, float('nan')):>14.3f}{self.accuracy[s]:>10.3f}")
        rows.append(f"nonzero concept weights: {self.nonzero_weights}/{self.n_weights}")
        if self.selection is not None:
            sel = self.selection
            tried = ", ".join(f"{k:g}: {v:.3f}" for k, v in sel.scores.items())
            rows.append(f"{sel.param} = {sel.value:g}, chosen by {sel.by} (held-out accuracy {tried}); "
                        f"refitted on {sel.refit_rows} rows")
            if "validation" in sel.by and "val" in self.accuracy:
                rows.append("the validation rows were part of the final fit: their accuracy is not held out")
        return "\n".join(rows)


def _val_rows(data: Any) -> tuple[Tensor | None, Tensor | None]:
    """The validation split's ``(x, y)``, or ``(None, None)`` when the data has none."""
    if not (hasattr(data, "split") and callable(data.split)):
        return None, None  # a dict or tuple is one set of rows
    try:
        xv, yv, _ = split_rows(data, "val")
    except (KeyError, ValueError, TypeError):
        return None, None
    return (xv, yv) if len(yv) else (None, None)


def _prepare(model: nn.Module, data: Any) -> tuple[Tensor, Tensor]:
    """Standardisation and the bottleneck's data-dependent init, as the model does at fit start."""
    from bottlenecks.models.module import FeatureNorm

    x, y, c = split_rows(data, "train")
    if isinstance(model.norm, FeatureNorm) and not bool(model.norm.fitted):
        model.norm.fit(x)
    b = model.bottleneck
    if b.needs_data_init():
        text = None
        spec = getattr(data, "text_encoder_spec", None)
        if spec is not None:
            from bottlenecks.encoders import shared_text_encoder

            text = shared_text_encoder(spec)
        b.init_from_data(model.norm(x), concepts=None if c is None else torch.as_tensor(c).float(), y=y, text=text)
    return x, y


def _prior_matrix(prior: Any, model: nn.Module, class_names: list[str] | None) -> Tensor:
    from bottlenecks.concepts import load_prior

    names = list(model.bottleneck.units().names)
    return load_prior(prior, class_names, names)


def _strengths(name: str, value: float | Sequence[float]) -> list[float] | None:
    """``None`` for one strength, the list (strongest first) for a grid to choose from."""
    if isinstance(value, (int, float)):
        return None
    try:
        vals = sorted({float(v) for v in value}, reverse=True)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if not vals or min(vals) < 0:
        raise ValueError(f"{name} must be a non-negative number or a non-empty list of them, got {value!r}")
    return vals


@dataclass
class HeadSelection:
    """How :func:`select_concept_head` settled a grid of head strengths.

    ``param`` (``"lam"`` or ``"prior_weight"``) took ``value``; ``scores`` holds the mean held-out
    accuracy of the concept head for every value tried; ``by`` says on which rows; the head
    was then refitted on ``refit_rows`` rows (train + validation)."""

    param: str
    value: float
    scores: dict[float, float]
    by: str
    refit_rows: int

    def summary(self) -> dict[str, Any]:
        return {"param": self.param, "value": self.value, "by": self.by, "refit_rows": self.refit_rows,
                "scores": {str(k): round(v, 4) for k, v in self.scores.items()}}


def _head_fitter(head: str, n_classes: int, lam: float | Sequence[float], l1_ratio: float, solver: str,
                 P: Tensor | None, prior_weight: float | Sequence[float], prior_scale: float, seed: int):  # noqa: ANN202
    """``(name of the strength, its grid or None, fit(u, y, strength) -> (W, b))`` for one head."""
    if head == "elasticnet":
        def fit(u: Tensor, y: Tensor, v: float) -> tuple[Tensor, Tensor]:
            return fit_sparse_head(u, y, n_classes, lam=v, l1_ratio=l1_ratio, solver=solver, seed=seed)

        return "lam", _strengths("lam", lam), fit
    if head == "prior":
        def fit(u: Tensor, y: Tensor, v: float) -> tuple[Tensor, Tensor]:
            return fit_prior_head(u, y, n_classes, prior=P, prior_weight=v, prior_scale=prior_scale)

        return "prior_weight", _strengths("prior_weight", prior_weight), fit
    raise ValueError(f"head must be 'elasticnet' or 'prior', got {head!r}")


def select_concept_head(
    fit: Any,
    param: str,
    grid: Sequence[float],
    u: Tensor,
    y: Tensor,
    u_val: Tensor | None = None,
    y_val: Tensor | None = None,
    folds: int = CV_FOLDS,
    cv_max_rows: int = CV_MAX_ROWS,
    seed: int = 0,
) -> tuple[Tensor, Tensor, HeadSelection]:
    """Choose a head strength from ``grid`` by held-out accuracy, then refit on every row.

    Args:
        fit: ``fit(u, y, strength) -> (W, b)`` (:func:`fit_sparse_head` or
            :func:`fit_prior_head` with the other settings bound).
        param: the strength's name, for the report.
        grid: the strengths to try; on equal scores the stronger one (larger) wins.
        u, y: training concept units and labels; u_val, y_val: validation ones (optional).
        folds, cv_max_rows: with at most ``cv_max_rows`` rows in all (or no validation rows),
            ``folds``-fold cross-validation over train + validation; above, train on the
            training rows and score on the validation rows.

    Returns:
        ``(W, b, HeadSelection)``; ``W, b`` refitted on train + validation.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    grid = sorted({float(v) for v in grid}, reverse=True)
    has_val = u_val is not None and y_val is not None and len(y_val) > 0
    u_all = torch.cat([u, u_val]) if has_val else u
    y_all = torch.cat([torch.as_tensor(y), torch.as_tensor(y_val)]) if has_val else torch.as_tensor(y)
    n = len(y_all)

    def acc(W: Tensor, b: Tensor, uu: Tensor, yy: Tensor) -> float:
        return float(((uu.float() @ W.T + b).argmax(-1) == yy).float().mean())

    scores: dict[float, float] = {}
    if has_val and n > cv_max_rows:
        by = f"validation split ({len(y_val)} rows)"
        for v in grid:
            scores[v] = acc(*fit(u, y, v), u_val, y_val)
    else:
        k = min(folds, n)
        parts = _folds(n, k, seed)
        by = f"{k}-fold cross-validation over {'train + validation' if has_val else 'train'} ({n} rows)"
        for v in grid:
            fold_acc = []
            for held in parts:
                keep = torch.ones(n, dtype=torch.bool)
                keep[held] = False
                fold_acc.append(acc(*fit(u_all[keep], y_all[keep], v), u_all[held], y_all[held]))
            scores[v] = sum(fold_acc) / len(fold_acc)
    best = max(grid, key=lambda v: (round(scores[v], 9), v))  # ties: the stronger penalty
    W, b = fit(u_all, y_all, best)
    return W, b, HeadSelection(param, best, scores, by, n)


def fit_concept_head(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    head: Literal["elasticnet", "prior"] = "elasticnet",
    lam: float | Sequence[float] = LAMS,
    l1_ratio: float = 0.99,
    solver: Literal["sgd", "saga"] = "sgd",
    prior: Any = None,
    prior_weight: float | Sequence[float] = 1e-2,
    prior_scale: float = 1.0,
    class_names: list[str] | None = None,
    seed: int = 0,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    folds: int = CV_FOLDS,
    cv_max_rows: int = CV_MAX_ROWS,
) -> tuple[Tensor, Tensor, HeadSelection | None]:
    """Fit the concept head on the model's concept units of ``x`` and load it (see the module
    docstring). A list for the head's strength (``lam`` / ``prior_weight``) is settled by
    :func:`select_concept_head` (on ``x_val, y_val`` too when given) and the head refitted on
    train + validation; one value fits on ``x`` alone. Returns ``(W, b, selection or None)``."""
    n_classes = model.head.out_features if isinstance(model.head, nn.Linear) else int(model.num_classes)
    if head == "elasticnet" and prior is not None:
        raise ValueError("a prior regularises the 'prior' head; the elastic-net head pulls toward 0")
    P = None if head != "prior" or prior is None else _prior_matrix(prior, model, class_names)
    param, grid, fit = _head_fitter(head, n_classes, lam, l1_ratio, solver, P, prior_weight, prior_scale, seed)
    u, _ = concept_inputs(model, x)
    selection = None
    if grid is None:
        W, b = fit(u, y, float(lam if param == "lam" else prior_weight))
    else:
        u_val = None if x_val is None else concept_inputs(model, x_val)[0]
        W, b, selection = select_concept_head(fit, param, grid, u, y, u_val, y_val, folds=folds,
                                              cv_max_rows=cv_max_rows, seed=seed)
    load_concept_head(model, W, b)
    return W, b, selection


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(model accuracy, concept-head-only accuracy) on ``(x, y)``."""
    u, side = concept_inputs(model, x)
    W = model.head.weight.detach().cpu()
    keep, _ = _side_and_concept_columns(model)
    concept_logits = u @ W[:, keep].T + model.head.bias.detach().cpu()
    full = concept_logits if side is None else concept_logits + side @ W[:, ~keep].T
    y = torch.as_tensor(y).cpu()
    return float((full.argmax(-1) == y).float().mean()), float((concept_logits.argmax(-1) == y).float().mean())


def fit_posthoc_cbm(
    model: nn.Module,
    data: Any,
    head: Literal["elasticnet", "prior"] = "elasticnet",
    lam: float | Sequence[float] = LAMS,
    l1_ratio: float = 0.99,
    solver: Literal["sgd", "saga"] = "sgd",
    prior: Any = None,
    prior_weight: float | Sequence[float] = 1e-2,
    prior_scale: float = 1.0,
    residual_l2: float | Sequence[float] = (1e-2, 1e-1, 1.0, 10.0),
    seed: int = 0,
    folds: int = CV_FOLDS,
    cv_max_rows: int = CV_MAX_ROWS,
) -> PosthocFit:
    """Fit a post-hoc CBM end to end on a feature datamodule (``data.split("train")`` ...).

    1. the model's standardisation and the bottleneck's data init (CAVs / text vectors, unit
       statistics) on the training split;
    2. the concept head (:func:`fit_sparse_head`, or :func:`fit_prior_head` with ``head="prior"``)
       on the training split's concept units, loaded into ``model.head``; with a list of
       strengths (``lam=[1e-4, 1e-3, 1e-2]``), the one with the best cross-validated accuracy
       over train + validation (:func:`select_concept_head`) and a refit on both;
    3. with a side channel (PCBM-h): :func:`fit_residual` on the training split, its ``l2``
       chosen on the validation split when several are given.

    Returns:
        A :class:`PosthocFit` with train/val/test accuracies (those the data has).
    """
    x, y = _prepare(model, data)
    xv, yv = _val_rows(data)
    W, _, selection = fit_concept_head(model, x, y, head=head, lam=lam, l1_ratio=l1_ratio, solver=solver, prior=prior,
                                       prior_weight=prior_weight, prior_scale=prior_scale,
                                       class_names=getattr(data, "class_names", None), seed=seed, x_val=xv,
                                       y_val=yv, folds=folds, cv_max_rows=cv_max_rows)
    res = PosthocFit(nonzero_weights=int((W.abs() > 1e-6).sum()), n_weights=W.numel(), selection=selection)
    if model.bottleneck.side_channel_parameters():
        if isinstance(residual_l2, (int, float)):
            xv = yv = None
        elif xv is None:
            raise ValueError("choosing the residual's l2 from a list needs a validation split; give one value")
        res.residual_l2 = fit_residual(model, x, y, l2=residual_l2, x_val=xv, y_val=yv)
    for split in ("train", "val", "test"):
        try:
            xs, ys, _ = split_rows(data, split)
        except (KeyError, ValueError, TypeError):
            continue
        res.accuracy[split], res.concept_accuracy[split] = _accuracy(model, xs, ys)
    return res


class PosthocCBMFit(Callback):
    """Fit a post-hoc CBM's concept head when training starts (from YAML).

    At ``on_train_start`` (after the model standardised features and the bottleneck built its
    vectors) the head is fitted on the whole training split's concept units and loaded into
    ``model.head``. Then only the bottleneck's side channel trains (PCBM-h's residual, with the
    concept head frozen) for the trainer's epochs; without a side channel nothing is left to
    train and fitting stops there (with ``ModelCheckpoint(save_last=True)`` the fitted model is
    saved as ``last.ckpt``).

    Args: as :func:`fit_posthoc_cbm` (``head``, ``lam``, ``l1_ratio``, ``solver``, ``prior`` — a
    file path: class2concepts JSON, CSV, ``.npy``/``.pt``/``.safetensors`` — ``prior_weight``,
    ``prior_scale``, ``seed``, ``folds``, ``cv_max_rows``). A list for ``lam`` (or
    ``prior_weight``) is chosen by cross-validation over train + validation and the head
    refitted on both; the choice is logged and kept in the checkpoint (:attr:`summary`).
    """

    def __init__(
        self,
        head: Literal["elasticnet", "prior"] = "elasticnet",
        lam: float | Sequence[float] = LAMS,
        l1_ratio: float = 0.99,
        solver: Literal["sgd", "saga"] = "sgd",
        prior: str | None = None,
        prior_weight: float | Sequence[float] = 1e-2,
        prior_scale: float = 1.0,
        seed: int = 0,
        folds: int = CV_FOLDS,
        cv_max_rows: int = CV_MAX_ROWS,
    ) -> None:
        if head not in ("elasticnet", "prior"):
            raise ValueError(f"head must be 'elasticnet' or 'prior', got {head!r}")
        if prior is not None and head != "prior":
            raise ValueError("a prior regularises the 'prior' head; set head: prior")
        _strengths("lam", lam), _strengths("prior_weight", prior_weight)  # bad values fail here, not at fit time
        if int(folds) < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        self.kw = dict(head=head, lam=lam, l1_ratio=l1_ratio, solver=solver, prior=prior, prior_weight=prior_weight,
                       prior_scale=prior_scale, seed=seed, folds=int(folds), cv_max_rows=int(cv_max_rows))
        self.summary: dict[str, Any] = {}
        self._restore: list[tuple[nn.Parameter, bool]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"summary": self.summary}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.summary = dict(state_dict.get("summary") or {})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "split"):
            raise ValueError("PosthocCBMFit fits the head on a feature datamodule's training split (data with .split)")
        x, y, _ = split_rows(dm, "train")
        xv, yv = _val_rows(dm)
        W, _, selection = fit_concept_head(
            pl_module, x.to(pl_module.device), y, class_names=getattr(dm, "class_names", None),
            x_val=None if xv is None else xv.to(pl_module.device), y_val=yv, **self.kw)
        side = set()
        for name in pl_module.bottleneck.side_channel_parameters():
            side |= {id(p) for p in pl_module.bottleneck.get_submodule(name).parameters()}
        self._restore = [(p, p.requires_grad) for p in pl_module.parameters()]
        for p in pl_module.parameters():
            p.requires_grad_(id(p) in side)
        acc, concept_acc = _accuracy(pl_module, x.to(pl_module.device), y)
        self.summary = {"train_acc_concept_head": concept_acc, "nonzero_weights": float((W.abs() > 1e-6).sum()),
                        "n_weights": float(W.numel())}
        chosen = ""
        if selection is not None:
            self.summary["selection"] = selection.summary()
            chosen = f"; {selection.param} = {selection.value:g} chosen by {selection.by}, refitted on " \
                     f"{selection.refit_rows} rows"
        rank_zero_info(f"post-hoc concept head ({self.kw['head']}): train accuracy {concept_acc:.3f}, "
                       f"{int(self.summary['nonzero_weights'])}/{W.numel()} nonzero weights{chosen}")
        if not side:
            trainer.should_stop = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for p, rg in self._restore:
            p.requires_grad_(rg)
        self._restore = []
