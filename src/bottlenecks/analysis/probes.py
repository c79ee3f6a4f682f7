"""Exact fits of the convex linear parts, and the black-box reference probes.

One solver for every linear map fitted on frozen features in this package:

* :func:`fit_logistic` — L2-regularised multinomial logistic regression;
* :func:`fit_binary_logistic` — independent L2-regularised binary logistic regressions, one per
  column of a target matrix with NaN for "unlabelled" (concept predictors), each with its own
  strength;
* :func:`fit_ridge` — ridge regression in closed form (regression heads and probes).

All optimise scikit-learn's objectives (``LogisticRegression(C=...)``: mean loss plus
``||W||² / (2 C n)``, the bias unpenalised) full-batch, by L-BFGS in torch.

:func:`fit_linear` chooses the strength ``C`` from a grid and refits: by ``folds``-fold
cross-validation over every row it is given (train + validation) when there are at most
``cv_max_rows`` of them, otherwise on the validation rows; then it refits on train +
validation with the chosen ``C``, so no row is held out for good. The criterion
(``select_by``, default :data:`SELECT_BY`) is held-out accuracy, every ``C`` within one
standard error of the best counting as tied and the held-out loss deciding among them; or
the held-out loss alone (cross-entropy, or squared error). The concept predictors and heads
of independent/sequential CBMs (:class:`~bottlenecks.models.stages.CBMTrainingMode`) and the
run report's :func:`linear_probe` use it.

:func:`sklearn_reference` is the obvious baseline the run report prints next to the
framework's numbers: scikit-learn's ``LogisticRegression`` probe and sequential CBM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: the default grid of inverse regularisation strengths (scikit-learn's ``C``)
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
#: at most this many rows (train + validation): choose ``C`` by k-fold cross-validation over all
#: of them; above it, on the validation rows (CV would cost ``folds`` times as much for little gain)
CV_MAX_ROWS = 20000
#: the number of cross-validation folds
CV_FOLDS = 5
#: the run report's scikit-learn reference column is skipped above this many rows × features
SKLEARN_REFERENCE_MAX_CELLS = 50_000_000

Kind = Literal["multiclass", "binary", "regression"]

#: how :func:`fit_linear` chooses ``C`` for classification: by held-out accuracy, every ``C``
#: within one standard error of the best counted as tied and the tie broken by held-out
#: log-loss. Measured on the image-folder table of docs/concepts.md
#: (1800 x 1280 Lite0 features, 9 concepts, a rule-defined label): choosing by log-loss alone
#: gave a sequential CBM 0.818 test accuracy, by accuracy 0.835, scikit-learn's
#: ``LogisticRegression()`` 0.830. ``"log_loss"`` is the other choice (calibrated
#: probabilities, scikit-learn's ``LogisticRegressionCV`` default from 1.11).
SELECT_BY = "accuracy"


@dataclass
class ProbeResult:
    """A fitted linear probe's scores: accuracy (classification) or R² (regression).

    ``val`` is the held-out score behind the choice of ``C``: the cross-validated score when
    ``selection`` says so, else the score on the validation rows before the refit. ``train``
    and ``test`` are the refitted probe's (fitted on train + validation)."""

    metric: str
    train: float
    val: float
    test: float
    C: float
    selection: str = ""


@dataclass
class LinearFit:
    """What :func:`fit_linear` fitted.

    Attributes:
        weight: ``(d + 1, k)`` weights, the bias in the last row (``(d + 1,)`` for regression).
        C: the chosen strength (a float), or one per column for ``kind="binary"`` (a list).
        selection: how it was chosen, in words (``"5-fold CV on 2000 rows"``, ...).
        rows: how many rows the final fit saw.
        held_out_loss: the held-out loss of each ``C`` of the grid (summed over columns for
            ``binary``), in grid order.
        select_by: the criterion ``C`` was chosen by (``"accuracy"`` or ``"log_loss"``;
            regression always by squared error).
    """

    weight: Tensor
    C: float | list[float]
    selection: str
    rows: int
    Cs: list[float] = field(default_factory=list)
    held_out_loss: list[float] = field(default_factory=list)
    select_by: str = SELECT_BY

    def summary(self) -> dict[str, object]:
        """Plain data for reports (JSON)."""
        return {"C": self.C, "selection": self.selection, "rows": self.rows, "select_by": self.select_by}


def _t(x: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu().clone()


#: problems with fewer cells (rows × features × outputs) run on one thread: L-BFGS makes many
#: tiny steps, and on a busy machine thread hand-offs cost more than the arithmetic (a 2000 × 16
#: fit ran 6 times faster on one thread than on two at load 10)
SINGLE_THREAD_CELLS = 4_000_000


class _threads:
    def __init__(self, cells: int) -> None:
        self.one = cells < SINGLE_THREAD_CELLS and torch.get_num_threads() > 1

    def __enter__(self) -> None:
        if self.one:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.one:
            torch.set_num_threads(self.saved)


def _lbfgs(w: Tensor, objective, max_iter: int, cells: int = 0) -> Tensor:  # noqa: ANN001
    """Minimise ``objective(w)`` from ``w`` by full-batch L-BFGS (strong Wolfe line search)."""
    with torch.inference_mode(False), torch.enable_grad(), _threads(cells):
        w = w.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = objective(w)
            loss.backward()
            return loss

        opt.step(closure)
    return w.detach()


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, C: float, w0: Tensor | None = None,
                 max_iter: int = 200) -> Tensor:
    """Multinomial logistic regression by full-batch L-BFGS.

    Minimises ``mean CE(x W[:-1] + W[-1], y) + ||W[:-1]||² / (2 C n)``.

    Args:
        x: ``(n, d)`` float features; y: ``(n,)`` int64 labels.
        w0: ``(d + 1, n_classes)`` warm start.

    Returns:
        ``(d + 1, n_classes)`` weights, the bias in the last row.
    """
    rows = torch.ones(len(x), 1, dtype=torch.bool)
    return fit_logistic_rows(x, y, n_classes, C, rows, None if w0 is None else w0[:, None], max_iter)[:, 0]


def fit_logistic_rows(x: Tensor, y: Tensor, n_classes: int, C: float, rows: Tensor, w0: Tensor | None = None,
                      max_iter: int = 200) -> Tensor:
    """Several multinomial logistic regressions on subsets of the same rows, solved together
    (the k fits of k-fold cross-validation share one matrix product per step).

    Fit ``f`` minimises ``mean over its rows CE + ||W_f||² / (2 C n_f)``; the fits do not
    interact, so one L-BFGS run on their sum solves them all.

    Args:
        rows: ``(n, F)`` bool, the rows of each fit. w0: ``(d + 1, F, n_classes)``.

    Returns:
        ``(d + 1, F, n_classes)`` weights.
    """
    n, d = x.shape
    F_ = rows.shape[1]
    mask = rows.to(x.dtype)
    inv = 1.0 / mask.sum(0).clamp_min(1.0)
    reg = inv / (2.0 * float(C))
    w = w0 if w0 is not None else torch.zeros(d + 1, F_, n_classes, dtype=x.dtype)
    idx = y.reshape(n, 1, 1).expand(n, F_, 1)

    def objective(w: Tensor) -> Tensor:
        logits = torch.addmm(w[-1].reshape(-1), x, w[:-1].reshape(d, -1)).reshape(n, F_, n_classes)
        ce = torch.logsumexp(logits, -1) - logits.gather(-1, idx).squeeze(-1)
        return ((ce * mask).sum(0) * inv).sum() + (reg * w[:-1].pow(2).sum((0, 2))).sum()

    return _lbfgs(w, objective, max_iter, cells=x.numel() * F_ * n_classes)


def fit_binary_logistic(x: Tensor, y: Tensor, C: float | Tensor, w0: Tensor | None = None,
                        max_iter: int = 200) -> Tensor:
    """Independent binary logistic regressions, one per column of ``y``, solved together.

    For each column ``j`` minimises ``mean over its labelled rows BCE(x w_j + b_j, y_j) +
    ||w_j||² / (2 C_j n_j)`` (``n_j`` labelled rows), scikit-learn's objective; the columns do
    not interact, so one L-BFGS run on their sum solves them all.

    Args:
        x: ``(n, d)`` features; y: ``(n, k)`` targets in {0, 1}, NaN where unlabelled.
        C: one strength, or ``(k,)`` strengths.
        w0: ``(d + 1, k)`` warm start.

    Returns:
        ``(d + 1, k)`` weights, the biases in the last row (a column without labels stays 0).
    """
    n, d = x.shape
    k = y.shape[1]
    labelled = ~torch.isnan(y)
    target = torch.nan_to_num(y, nan=0.0)
    counts = labelled.sum(0).to(x.dtype)
    inv = 1.0 / counts.clamp_min(1.0)
    Cv = torch.as_tensor(C, dtype=x.dtype).expand(k)
    reg = inv / (2.0 * Cv)
    mask = labelled.to(x.dtype)
    w = w0 if w0 is not None else torch.zeros(d + 1, k, dtype=x.dtype)

    def objective(w: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(torch.addmm(w[-1], x, w[:-1]), target, reduction="none")
        return ((bce * mask).sum(0) * inv).sum() + (reg * w[:-1].pow(2).sum(0)).sum()

    return _lbfgs(w, objective, max_iter, cells=x.numel() * k)


def fit_ridge(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    """Ridge regression ``min ||x W + b - y||² + alpha ||W||²`` in closed form; returns ``(d + 1,)``."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    a = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(a, xc.T @ yc)
    return torch.cat([w, (ym - xm @ w).reshape(1)])


def predict_linear(w: Tensor, x: Tensor) -> Tensor:
    """``x W[:-1] + W[-1]``: logits ``(n, k)`` or predictions ``(n,)`` (ridge weights ``(d + 1,)``)."""
    return x @ w[:-1] + w[-1]


def _loss(kind: Kind, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Held-out loss: the mean cross-entropy (multiclass), one mean BCE per column over its
    labelled rows (binary, ``(k,)``), or the mean squared error (regression)."""
    out = predict_linear(w, x)
    if kind == "multiclass":
        return F.cross_entropy(out, y)
    if kind == "regression":
        return (out - y).pow(2).mean()
    labelled = ~torch.isnan(y)
    bce = F.binary_cross_entropy_with_logits(out, torch.nan_to_num(y, nan=0.0), reduction="none")
    return (bce * labelled).sum(0) / labelled.sum(0).clamp_min(1)


def _fit(kind: Kind, x: Tensor, y: Tensor, C: float | Tensor, w0: Tensor | None, n_classes: int | None,
         max_iter: int) -> Tensor:
    if kind == "multiclass":
        assert n_classes is not None
        return fit_logistic(x, y, n_classes, float(C), w0=w0, max_iter=max_iter)
    if kind == "binary":
        return fit_binary_logistic(x, y, C, w0=w0, max_iter=max_iter)
    return fit_ridge(x, y, 1.0 / float(C))


def _fit_folds(kind: Kind, x: Tensor, y: Tensor, C: float, train_rows: Tensor, w0: Tensor | None,
               n_classes: int | None, max_iter: int) -> Tensor:
    """The fits of every fold at once: ``(d + 1, F, k)`` weights (``(d + 1, F)`` for ridge)."""
    F_ = train_rows.shape[1]
    if kind == "multiclass":
        assert n_classes is not None
        return fit_logistic_rows(x, y, n_classes, C, train_rows, w0, max_iter)
    if kind == "binary":
        k = y.shape[1]
        # fold f's copy of the targets, NaN on its held-out rows: one column block per fold
        y_f = y[:, None, :].expand(-1, F_, -1).clone()
        y_f[~train_rows] = float("nan")
        w = fit_binary_logistic(x, y_f.reshape(len(y), F_ * k), C,
                                None if w0 is None else w0.reshape(x.shape[1] + 1, F_ * k), max_iter)
        return w.reshape(x.shape[1] + 1, F_, k)
    return torch.stack([fit_ridge(x[train_rows[:, f]], y[train_rows[:, f]], 1.0 / C) for f in range(F_)], 1)


def _errors(kind: Kind, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Held-out error rate: multiclass (a scalar), one per column over its labelled rows
    (binary, ``(k,)``); the squared error for regression (no accuracy to count)."""
    if kind == "regression":
        return _loss(kind, w, x, y)
    out = predict_linear(w, x)
    if kind == "multiclass":
        return (out.argmax(-1) != y).float().mean()
    labelled = ~torch.isnan(y)
    wrong = ((out > 0).float() != torch.nan_to_num(y, nan=0.0)) & labelled
    return wrong.sum(0) / labelled.sum(0).clamp_min(1)


def _held_out(measure, kind: Kind, w: Tensor, x: Tensor, y: Tensor, held: Tensor) -> Tensor:  # noqa: ANN001
    """``measure`` (:func:`_loss` or :func:`_errors`) of the fold fits ``w`` on their held-out
    rows, weighted by the rows and divided by their number (per column for ``binary``)."""
    total = 0.0
    for f in range(held.shape[1]):
        rows = held[:, f]
        total = total + measure(kind, w[:, f], x[rows], y[rows]) * int(rows.sum())
    return torch.as_tensor(total) / len(x)


def _held_out_loss(kind: Kind, w: Tensor, x: Tensor, y: Tensor, held: Tensor) -> Tensor:
    """The summed held-out loss of the fold fits ``w``, divided by the number of rows (per column
    for ``binary``, ``(k,)``)."""
    return _held_out(_loss, kind, w, x, y, held)


def _choose(losses: Tensor, errors: Tensor | None, scored: Tensor | int = 1) -> Tensor:
    """Index of the chosen ``C`` (per column for ``binary``): among the strengths whose held-out
    error is within one standard error (``sqrt(e (1 - e) / scored)``, ``scored`` held-out rows)
    of the lowest, the one with the lowest loss; the lowest loss when ``errors`` is None. The
    tolerance keeps accuracy's noise from choosing: on labels unrelated to the features every
    error is about 0.5 and the loss picks the strongest regularisation."""
    if errors is None:
        return losses.argmin(0)
    best = errors.min(0).values
    se = (best * (1 - best) / torch.as_tensor(scored).clamp_min(1)).sqrt()
    return losses.masked_fill(errors > best + se + 1e-9, float("inf")).argmin(0)


def _past_the_minimum(losses: list[Tensor]) -> bool:
    """The held-out loss rose at each of the last two grid steps (in every column)."""
    if len(losses) < 3:
        return False
    a, b, c = losses[-3], losses[-2], losses[-1]
    return bool(((b > a) & (c > b)).all())


def _folds(n: int, folds: int, seed: int) -> list[Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[i::folds] for i in range(folds)]


def fit_linear(
    x: Tensor,
    y: Tensor,
    kind: Kind,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    Cs: tuple[float, ...] | list[float] = DEFAULT_CS,
    folds: int = CV_FOLDS,
    cv_max_rows: int = CV_MAX_ROWS,
    n_classes: int | None = None,
    max_iter: int = 200,
    seed: int = 0,
    select_by: Literal["accuracy", "log_loss"] = SELECT_BY,
) -> LinearFit:
    """Choose ``C`` from ``Cs``, then refit on every row (train + validation) with it.

    Args:
        x, y: training rows ``(n, d)`` and targets: class indices ``(n,)`` (``multiclass``),
            ``(n, k)`` in {0, 1} with NaN where unlabelled (``binary``), or values ``(n,)``
            (``regression``). Features are used as given (standardise them first).
        x_val, y_val: validation rows, or None.
        Cs: the grid of inverse regularisation strengths (ridge uses ``alpha = 1 / C``).
        folds, cv_max_rows: with at most ``cv_max_rows`` rows in all, ``C`` is chosen by
            ``folds``-fold cross-validation over train + validation; above, on the validation
            rows (train alone when there are none).
        n_classes: the number of classes (``multiclass``; default ``max(y) + 1``).
        select_by: ``"accuracy"`` (held-out accuracy, ties to the lower log-loss; see
            :data:`SELECT_BY`) or ``"log_loss"``; regression is chosen by squared error.

    Returns:
        A :class:`LinearFit`; for ``binary`` each column gets its own ``C``.
    """
    if kind not in ("multiclass", "binary", "regression"):
        raise ValueError(f"kind must be 'multiclass', 'binary' or 'regression', got {kind!r}")
    if select_by not in ("accuracy", "log_loss"):
        raise ValueError(f"select_by must be 'accuracy' or 'log_loss', got {select_by!r}")
    shape = tuple(y.shape) if torch.is_tensor(y) else np.shape(y)
    outputs = int(n_classes or 0) if kind == "multiclass" else (shape[1] if kind == "binary" and len(shape) == 2 else 1)
    # callers may sit inside Lightning's test loop (inference mode): the fits need autograd, and
    # tensors made here (copies, not inference tensors) can be saved for backward
    with torch.inference_mode(False), torch.enable_grad():
        x = _t(x).float()
        with _threads(x.numel() * max(outputs, 2)):
            return _fit_linear(x, y, kind, x_val, y_val, Cs, folds, cv_max_rows, n_classes, max_iter, seed,
                               select_by)


def _fit_linear(x, y, kind, x_val, y_val, Cs, folds, cv_max_rows, n_classes, max_iter, seed,  # noqa: ANN001
                select_by=SELECT_BY) -> LinearFit:  # noqa: ANN001
    Cs = sorted(float(c) for c in Cs)
    if not Cs or min(Cs) <= 0:
        raise ValueError(f"Cs must be positive inverse regularisation strengths, got {Cs}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    y = _t(y).long() if kind == "multiclass" else _t(y).float()
    if kind == "binary" and y.dim() != 2:
        raise ValueError(f"binary targets must be (rows, columns), got shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} targets")
    if x_val is not None and y_val is not None and len(x_val):
        xv = _t(x_val).float()
        yv = _t(y_val).long() if kind == "multiclass" else _t(y_val).float()
        if xv.shape[1] != x.shape[1]:
            raise ValueError(f"x_val has {xv.shape[1]} features but x has {x.shape[1]}")
        x_all, y_all = torch.cat([x, xv]), torch.cat([y, yv])
    else:
        xv = yv = None
        x_all, y_all = x, y
    if kind == "multiclass" and n_classes is None:
        n_classes = int(y_all.max()) + 1
    n = len(x_all)
    use_cv = len(Cs) > 1 and (n <= cv_max_rows or xv is None)
    by_accuracy = select_by == "accuracy" and kind != "regression"
    errors = None
    if len(Cs) == 1:
        losses = torch.zeros(1, y_all.shape[1]) if kind == "binary" else torch.zeros(1)
        selection = f"C given ({Cs[0]:g})"
    elif use_cv:
        k = min(folds, n)
        parts = _folds(n, k, seed)
        train_rows = torch.ones(n, k, dtype=torch.bool)
        for f, held in enumerate(parts):
            train_rows[held, f] = False
        warm = None
        per_C, err_C = [], []
        for C in Cs:  # strongest regularisation first, each warm-started from the previous C
            warm = _fit_folds(kind, x_all, y_all, C, train_rows, warm, n_classes, max_iter)
            per_C.append(_held_out_loss(kind, warm, x_all, y_all, ~train_rows))
            if by_accuracy:
                err_C.append(_held_out(_errors, kind, warm, x_all, y_all, ~train_rows))
            if _past_the_minimum(per_C):
                break  # weaker regularisation only overfits more, and its fits are the slow ones
        losses = torch.stack(per_C)
        errors = torch.stack(err_C) if by_accuracy else None
        if len(per_C) < len(Cs):
            Cs = Cs[: len(per_C)]
        selection = f"{k}-fold CV on {n} rows"
    else:
        fit_x, fit_y = x, y
        w = None
        per_C, err_C = [], []
        for C in Cs:
            w = _fit(kind, fit_x, fit_y, C, w, n_classes, max_iter)
            per_C.append(_loss(kind, w, xv, yv) if xv is not None else torch.as_tensor(0.0))
            if by_accuracy and xv is not None:
                err_C.append(_errors(kind, w, xv, yv))
        losses = torch.stack(per_C)
        errors = torch.stack(err_C) if err_C else None
        selection = f"validation split ({len(xv)} rows), refit on {n} rows"
    if errors is None:
        scored = 1
    elif kind == "binary":  # labelled rows per column: every row is held out once (CV) or the validation rows
        scored = (~torch.isnan(y_all if use_cv else yv)).sum(0)
    else:
        scored = n if use_cv else len(yv)
    best = _choose(losses, errors, scored)
    grid = torch.tensor(Cs)
    if kind == "binary":
        C_chosen: float | list[float] = ([Cs[i] for i in best.tolist()] if best.dim()
                                         else [Cs[int(best)]] * y_all.shape[1])
        C_fit: float | Tensor = grid[best] if best.dim() else Cs[int(best)]
    else:
        C_chosen = C_fit = Cs[int(best)]
    weight = _fit(kind, x_all, y_all, C_fit, None, n_classes, max(max_iter, 200))
    held = losses.sum(-1) if losses.dim() > 1 else losses
    return LinearFit(weight=weight, C=C_chosen, selection=selection, rows=n, Cs=Cs,
                     held_out_loss=[float(v) for v in held], select_by=select_by if kind != "regression" else "mse")


def _score(w: Tensor, x: Tensor, y: Tensor, task: str) -> float:
    if task == "classification":
        return float((predict_linear(w, x).argmax(-1) == y).double().mean())
    pred = predict_linear(w, x)
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12))


def linear_probe(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    x_val: Tensor | np.ndarray,
    y_val: Tensor | np.ndarray,
    x_test: Tensor | np.ndarray,
    y_test: Tensor | np.ndarray,
    task: str = "classification",
    Cs: tuple[float, ...] = DEFAULT_CS,
    max_iter: int = 100,
    folds: int = CV_FOLDS,
    cv_max_rows: int = CV_MAX_ROWS,
    feature_scale: str = "shared",
) -> ProbeResult:
    """The black-box linear probe: ``C`` chosen by :func:`fit_linear` (k-fold CV on train + val
    when small, else on val), refitted on train + val, scored on test.

    Args:
        x_*: ``(n, d)`` features; y_*: ``(n,)`` class labels or regression targets.
        task: ``"classification"`` (accuracy) or ``"regression"`` (R²).
        Cs: grid of inverse regularisation strengths (ridge uses ``alpha = 1 / C``).
        feature_scale: how the features are scaled after centring on train + val — as
            :class:`~bottlenecks.models.module.FeatureNorm` does for the model: ``"shared"``
            (one scale for every dimension, the default) or ``"per_feature"`` (z-scores).
    """
    from bottlenecks.models.module import FEATURE_SCALES

    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if feature_scale not in FEATURE_SCALES:
        raise ValueError(f"feature_scale must be one of {FEATURE_SCALES}, got {feature_scale!r}")
    with torch.inference_mode(False), torch.enable_grad():
        return _linear_probe(x_train, y_train, x_val, y_val, x_test, y_test, task, Cs, max_iter, folds, cv_max_rows,
                             feature_scale)


def _linear_probe(x_train, y_train, x_val, y_val, x_test, y_test, task, Cs, max_iter, folds, cv_max_rows,  # noqa: ANN001
                  feature_scale) -> ProbeResult:  # noqa: ANN001
    from bottlenecks.models.module import FeatureNorm

    xs = [_t(x).float() for x in (x_train, x_val, x_test)]
    for name, x in zip(("x_val", "x_test"), xs[1:]):
        if x.shape[1] != xs[0].shape[1]:
            raise ValueError(f"{name} has {x.shape[1]} features but x_train has {xs[0].shape[1]}")
    norm = FeatureNorm(xs[0].shape[1], feature_scale)
    norm.fit(torch.cat(xs[:2]))
    xs = [norm(x) for x in xs]
    if task == "classification":
        ys = [_t(y).long() for y in (y_train, y_val, y_test)]
        n_classes = int(max(int(y.max()) for y in ys if len(y))) + 1
    else:
        ys = [_t(y).float() for y in (y_train, y_val, y_test)]
        n_classes = None
    kind: Kind = "multiclass" if task == "classification" else "regression"
    fit = fit_linear(xs[0], ys[0], kind, xs[1], ys[1], Cs=Cs, folds=folds, cv_max_rows=cv_max_rows,
                     n_classes=n_classes, max_iter=max_iter)
    held = _held_out_score(fit, xs[:2], ys[:2], kind, n_classes, folds, max_iter)
    return ProbeResult(
        metric="accuracy" if task == "classification" else "r2",
        train=_score(fit.weight, xs[0], ys[0], task),
        val=held,
        test=_score(fit.weight, xs[2], ys[2], task),
        C=float(fit.C),  # type: ignore[arg-type]
        selection=fit.selection,
    )


def _held_out_score(fit: LinearFit, xs: list[Tensor], ys: list[Tensor], kind: Kind, n_classes: int | None,
                    folds: int, max_iter: int) -> float:
    """The score behind the choice: out-of-fold (CV) or on the validation rows (fitted on train)."""
    task = "classification" if kind == "multiclass" else "regression"
    if "CV" not in fit.selection:
        if not len(xs[1]):
            return float("nan")
        w = _fit(kind, xs[0], ys[0], fit.C, None, n_classes, max_iter)  # type: ignore[arg-type]
        return _score(w, xs[1], ys[1], task)
    x, y = torch.cat(xs), torch.cat(ys)
    parts = _folds(len(x), min(folds, len(x)), 0)
    scores = []
    for held in parts:
        keep = torch.ones(len(x), dtype=torch.bool)
        keep[held] = False
        w = _fit(kind, x[keep], y[keep], fit.C, None, n_classes, max_iter)  # type: ignore[arg-type]
        scores.append(_score(w, x[held], y[held], task) * len(held))
    return float(sum(scores) / len(x))


def sklearn_reference(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    c_train: Tensor | np.ndarray | None,
    x_test: Tensor | np.ndarray,
    y_test: Tensor | np.ndarray,
    c_test: Tensor | np.ndarray | None,
    task: str = "classification",
) -> dict[str, float]:
    """The obvious baseline: scikit-learn on the same features and rows, default settings.

    ``LogisticRegression(max_iter=1000)`` (``Ridge()`` for regression) as the black-box probe; with
    concepts, a sequential CBM — one ``LogisticRegression`` per concept (on its labelled rows),
    then one on the predicted concept probabilities of the training rows — and an independent
    one (the head fitted on the true concepts, applied to the predicted probabilities).

    Returns:
        ``probe`` (accuracy, or R² for regression) and, with concepts, ``concept_acc`` (mean over
        concepts), ``per_concept_acc`` (NaN where the test rows have no label),
        ``task_sequential``, ``task_independent`` and ``task_all_concepts_given`` (the independent
        head on the true test concepts).
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    xtr, xte = np.asarray(_t(x_train).double()), np.asarray(_t(x_test).double())
    ytr, yte = np.asarray(_t(y_train)), np.asarray(_t(y_test))
    classification = task == "classification"

    def head() -> LogisticRegression | Ridge:
        return LogisticRegression(max_iter=1000) if classification else Ridge()

    def score(model, x: np.ndarray, y: np.ndarray) -> float:  # noqa: ANN001
        return float(model.score(x, y))  # accuracy or R²

    out = {"probe": score(head().fit(xtr, ytr), xte, yte)}
    if c_train is None or c_test is None:
        return out
    ctr, cte = np.asarray(_t(c_train).double()), np.asarray(_t(c_test).double())
    p_tr, p_te, accs = np.zeros_like(ctr), np.zeros_like(cte), []
    for j in range(ctr.shape[1]):
        rows = ~np.isnan(ctr[:, j])
        if len(np.unique(ctr[rows, j])) < 2:  # one class only: predict it
            p_tr[:, j] = p_te[:, j] = ctr[rows, j][0] if rows.any() else 0.5
        else:
            m = LogisticRegression(max_iter=1000).fit(xtr[rows], ctr[rows, j])
            p_tr[:, j], p_te[:, j] = m.predict_proba(xtr)[:, 1], m.predict_proba(xte)[:, 1]
        test_rows = ~np.isnan(cte[:, j])
        accs.append(float(((p_te[test_rows, j] > 0.5) == (cte[test_rows, j] > 0.5)).mean()) if test_rows.any()
                    else float("nan"))
    out["per_concept_acc"] = accs  # NaN: no test label
    out["concept_acc"] = float(np.nanmean(accs)) if not np.isnan(accs).all() else float("nan")
    out["task_sequential"] = score(head().fit(p_tr, ytr), p_te, yte)
    true_tr = np.where(np.isnan(ctr), p_tr, ctr)
    independent = head().fit(true_tr, ytr)
    out["task_independent"] = score(independent, p_te, yte)
    out["task_all_concepts_given"] = score(independent, np.where(np.isnan(cte), p_te, cte), yte)
    return out
