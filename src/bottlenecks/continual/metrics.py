"""Continual-learning metrics from an accuracy matrix and periodic evaluations.

Notation: ``R[i, j]`` is the test accuracy on task ``j`` after training on task ``i``
(``T`` tasks, rows ``i``, columns ``j``; entries with ``j > i`` are not used).

* average accuracy (Lopez-Paz & Ranzato, 2017): ``A = mean_j R[T-1, j]``;
* average incremental accuracy: ``mean_i mean_{j<=i} R[i, j]``;
* forgetting (Chaudhry et al., 2018): ``mean_{j<T-1} max_{i<T-1} (R[i, j] - R[T-1, j])``
  over ``i >= j``;
* backward transfer: ``BWT = mean_{j<T-1} (R[T-1, j] - R[j, j])`` (negative = forgetting);
* worst-case accuracy (De Lange et al., 2023, *the stability gap*):
  ``min-ACC = mean_{j<T-1} min_{n > end(j)} acc_n(j)`` — the lowest accuracy of each
  earlier task at *any* evaluation after it was learned, periodic ones included — and
  ``WC-ACC = R[T-1, T-1] / T + (1 - 1/T) min-ACC``.
"""

from __future__ import annotations

import math

from torch import Tensor


def average_accuracy(R: Tensor) -> float:
    """Mean accuracy over all tasks after the last task."""
    return float(R[-1].mean())


def average_incremental_accuracy(R: Tensor) -> float:
    """Mean over steps ``i`` of the mean accuracy on tasks ``0..i``."""
    T = R.shape[0]
    return float(sum(R[i, : i + 1].mean() for i in range(T)) / T)


def forgetting(R: Tensor) -> float:
    """Mean drop from each earlier task's best accuracy to its final accuracy (0 with one task)."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    drops = [float(R[j : T - 1, j].max() - R[T - 1, j]) for j in range(T - 1)]
    return sum(drops) / len(drops)


def backward_transfer(R: Tensor) -> float:
    """Mean change of each earlier task's accuracy from just after learning it to the end."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(sum(R[T - 1, j] - R[j, j] for j in range(T - 1)) / (T - 1))


def min_accuracy(R: Tensor, evaluations: list[tuple[int, int, Tensor]] | None = None) -> float:
    """De Lange et al.'s min-ACC: mean over earlier tasks of their lowest accuracy after learning.

    Args:
        R: ``(T, T)`` accuracy matrix (end-of-task evaluations).
        evaluations: periodic evaluations ``(step, task being trained, (T,) accuracies)``
            (NaN for unseen tasks). Those made while training task ``i > j`` count for
            task ``j``.
    """
    T = R.shape[0]
    if T < 2:
        return math.nan
    mins = []
    for j in range(T - 1):
        vals = [float(R[i, j]) for i in range(j + 1, T)]
        for _, task, accs in evaluations or []:
            if task > j and not math.isnan(float(accs[j])):
                vals.append(float(accs[j]))
        mins.append(min(vals))
    return sum(mins) / len(mins)


def worst_case_accuracy(R: Tensor, evaluations: list[tuple[int, int, Tensor]] | None = None) -> float:
    """WC-ACC: current-task accuracy weighted ``1/T``, min-ACC of earlier tasks ``1 - 1/T``."""
    T = R.shape[0]
    if T < 2:
        return float(R[0, 0])
    return float(R[-1, -1]) / T + (1 - 1 / T) * min_accuracy(R, evaluations)


def summarize(R: Tensor, evaluations: list[tuple[int, int, Tensor]] | None = None) -> dict[str, float]:
    """All metrics of this module in one dict."""
    return {
        "avg_acc": average_accuracy(R),
        "avg_inc_acc": average_incremental_accuracy(R),
        "forgetting": forgetting(R),
        "bwt": backward_transfer(R),
        "min_acc": min_accuracy(R, evaluations),
        "wc_acc": worst_case_accuracy(R, evaluations),
    }
