"""Exact fits of the linear parts (``analysis.probes.fit_linear``) against scikit-learn's
cross-validated logistic regression on the same rows and the same grid of ``C``.

The independent / sequential CBMs fit their linear concept predictors and heads, and the
run report its probe, by choosing ``C`` by 5-fold cross-validation and refitting on every
row (docs/concepts.md). The reference does the same with ``LogisticRegressionCV`` (one
concept at a time, lbfgs, ``C`` chosen by held-out log-loss like ours). Features are synthetic and shaped like cached Lite0 features
(``n x 1280``, standardised): concepts and the label are noisy linear functions of a
low-dimensional part of them, so the problems are neither trivial nor separable.

    python benchmarks/bench_exact_fits.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

#: (rows, features, binary concepts, classes): the full setting mirrors 2000 Shapes images
#: through Lite0 (1280-d) with 10 concepts; quick is a smoke run of a few seconds
FULL = (2000, 1280, 10, 9)
QUICK = (300, 48, 3, 4)


def problem(n: int, d: int, k: int, m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Standardised features, ``k`` binary concepts, ``m`` classes; ``n`` training + ``n // 2`` test rows."""
    g = torch.Generator().manual_seed(seed)
    rows = n + n // 2
    latent = torch.randn(rows, 16, generator=g)
    x = latent @ torch.randn(16, d, generator=g) / 4 + torch.randn(rows, d, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    logits = latent @ torch.randn(16, k, generator=g) + torch.randn(rows, k, generator=g)
    c = (logits > 0).float()
    y = (latent @ torch.randn(16, m, generator=g) + 0.5 * torch.randn(rows, m, generator=g)).argmax(-1)
    return {"x": x[:n], "c": c[:n], "y": y[:n], "x_test": x[n:], "c_test": c[n:], "y_test": y[n:]}


def ours(p: dict[str, torch.Tensor], kind: str, select_by: str = "log_loss") -> tuple[float, float]:
    """Seconds and mean test accuracy of ``fit_linear`` (5-fold CV over DEFAULT_CS, refit); by
    log-loss here, the reference's criterion (the default, ``"accuracy"``, in docs/performance.md)."""
    from bottlenecks.analysis.probes import fit_linear, predict_linear

    t = time.perf_counter()
    if kind == "binary":
        fit = fit_linear(p["x"], p["c"], "binary", select_by=select_by)
        dt = time.perf_counter() - t
        acc = ((predict_linear(fit.weight, p["x_test"]) > 0).float() == p["c_test"]).float().mean()
    else:
        fit = fit_linear(p["x"], p["y"], "multiclass", select_by=select_by)
        dt = time.perf_counter() - t
        acc = (predict_linear(fit.weight, p["x_test"]).argmax(-1) == p["y_test"]).float().mean()
    return dt, float(acc)


def sklearn_cv(p: dict[str, torch.Tensor], kind: str) -> tuple[float, float]:
    """Seconds and mean test accuracy of ``LogisticRegressionCV`` on the same rows and grid, choosing
    ``C`` by held-out log-loss as ``fit_linear`` does (scikit-learn's default from 1.11; before,
    it scores accuracy, which can choose another ``C``: docs/concepts.md)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV

    from bottlenecks.analysis.probes import CV_FOLDS, DEFAULT_CS

    x, xt = p["x"].numpy().astype(np.float64), p["x_test"].numpy().astype(np.float64)
    targets = [(p["c"][:, j], p["c_test"][:, j]) for j in range(p["c"].shape[1])] if kind == "binary" \
        else [(p["y"], p["y_test"])]
    accs = []
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8's notices about 1.10 defaults
        for tr, te in targets:
            clf = LogisticRegressionCV(Cs=list(DEFAULT_CS), cv=CV_FOLDS, max_iter=1000,
                                       scoring="neg_log_loss").fit(x, tr.numpy())
            accs.append(float((clf.predict(xt) == te.numpy()).mean()))  # .score would be the log-loss
    return time.perf_counter() - t, float(np.mean(accs))


def rows(quick: bool = False) -> list[dict]:
    """Rows for ``benchmarks/run_all.py``: the concept predictors (binary) and the probe (multiclass)."""
    n, d, k, m = QUICK if quick else FULL
    p = problem(n, d, k, m)
    ours(problem(60, 8, 2, 3), "binary")  # first-call costs (imports, thread pools), not timed
    out = []
    for kind, what in (("binary", f"{k} binary concepts"), ("multiclass", f"{m}-class probe")):
        ours_s, ours_acc = ours(p, kind)
        ref_s, ref_acc = sklearn_cv(p, kind)
        out.append(dict(operation=f"exact fit, {what}", size=f"n={n}, d={d}",
                        ours="fit_linear (5-fold CV over 7 C by log-loss, warm starts, one refit)", ours_s=ours_s,
                        reference="sklearn LogisticRegressionCV (5 folds, same grid, log-loss)", reference_s=ref_s,
                        peak_mb=None, note=f"test accuracy {ours_acc:.3f} vs {ref_acc:.3f}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for r in rows(args.quick):
        ratio = r["ours_s"] / r["reference_s"]
        print(f"{r['operation']:<32} {r['size']:<16} ours {r['ours_s']:7.2f} s  sklearn {r['reference_s']:7.2f} s  "
              f"ratio {ratio:5.2f}  {r['note']}")


if __name__ == "__main__":
    main()
