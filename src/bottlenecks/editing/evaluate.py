"""Edit evaluation: did an edit do what was asked, and what else did it change?

:func:`evaluate_edits` applies edits through the model's log, measures, and (unless
``keep=True``) undoes them, returning an :class:`EditEvaluation` table:

* ``efficacy`` — on the examples the edit targets (``edited=(x, wanted labels)``), the
  fraction predicted as asked;
* ``locality`` — the fraction of *other* predictions (the source split, minus the targeted
  examples) that changed; 0 is perfectly local;
* ``generalisation`` — accuracy on a shifted split (``target``), before and after;
* ``source_acc`` / ``target_acc`` — accuracy before and after.

:func:`compare_edit_batching` applies ``n`` fixes one by one (``n`` edits) and as one batch
(one edit over all ``n`` examples) and tabulates both, for several ``n``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import EvalMode, model_device
from bottlenecks.editing.edits import Edit
from bottlenecks.editing.log import edit_log

Split = tuple[Tensor, Tensor] | Mapping[str, Tensor]


def _split(data: Split | None, name: str) -> tuple[Tensor, Tensor] | None:
    if data is None:
        return None
    if isinstance(data, Mapping):
        if "x" not in data or "y" not in data:
            raise ValueError(f"{name} must be (x, y) or a mapping with 'x' and 'y', got keys {sorted(data)}")
        x, y = data["x"], data["y"]
    else:
        x, y = data
    x, y = torch.as_tensor(x).float(), torch.as_tensor(y)
    if len(x) != len(y):
        raise ValueError(f"{name}: x has {len(x)} rows but y has {len(y)}")
    return x, y


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 2048) -> Tensor:
    """Predicted classes ``(n,)`` in eval mode."""
    dev = model_device(model)
    with EvalMode(model):
        return torch.cat([model(x[s : s + batch_size].to(dev))[0].argmax(-1).cpu() for s in range(0, len(x), batch_size)])


@dataclass
class EditEvaluation:
    """One row per metric: ``{"before": float, "after": float}`` (``before`` NaN where it has no
    meaning). :meth:`table` prints it; :meth:`to_dict` gives plain numbers."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    n_edits: int = 0

    def __getitem__(self, key: str) -> dict[str, float]:
        return self.rows[key]

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.rows.items()}

    def table(self) -> str:
        lines = [f"{'metric':<16} {'before':>8} {'after':>8} {'change':>8}"]
        for k, v in self.rows.items():
            b, a = v["before"], v["after"]
            d = a - b if b == b else float("nan")
            fmt = lambda t: "       -" if t != t else f"{t:>8.4f}"  # noqa: E731
            lines.append(f"{k:<16} {fmt(b)} {fmt(a)} {fmt(d)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _acc(pred: Tensor, y: Tensor) -> float:
    return float((pred == y.to(pred.device)).float().mean()) if len(y) else float("nan")


def evaluate_edits(
    model: nn.Module,
    edits: Sequence[Edit | Mapping[str, Any]] | Edit | Mapping[str, Any],
    source: Split,
    target: Split | None = None,
    edited: Split | None = None,
    keep: bool = False,
) -> EditEvaluation:
    """Apply ``edits`` (through the model's log), measure, and undo them unless ``keep``.

    Args:
        model: a trained classification model.
        edits: one edit or several (applied in order, all or nothing).
        source: ``(x, y)`` held-out data of the training domain.
        target: ``(x, y)`` a shifted split (generalisation), optional.
        edited: ``(x, wanted)`` the examples the edits should change and the labels they should
            get (efficacy), optional. They are left out of locality when they lie in ``source``.

    Returns:
        An :class:`EditEvaluation` with rows ``source_acc``, ``target_acc``, ``efficacy``,
        ``locality`` (``after`` = fraction of other source predictions changed) and
        ``generalisation`` (``after`` = target accuracy gain).
    """
    if isinstance(edits, (Edit, Mapping)):
        edits = [edits]
    src = _split(source, "source")
    tgt = _split(target, "target")
    ed = _split(edited, "edited")
    nan = float("nan")
    before = {"src": predict(model, src[0])}
    if tgt is not None:
        before["tgt"] = predict(model, tgt[0])
    if ed is not None:
        before["ed"] = predict(model, ed[0])
    log = edit_log(model)
    redo_stack = list(log.undone)
    applied = log.apply_all(edits)
    try:
        after = {k: predict(model, {"src": src, "tgt": tgt, "ed": ed}[k][0]) for k in before}
    finally:
        if not keep:
            log.undo(len(applied))
            log.undone = redo_stack  # evaluating leaves the log as it was
    rows: dict[str, dict[str, float]] = {}
    rows["source_acc"] = {"before": _acc(before["src"], src[1]), "after": _acc(after["src"], src[1])}
    if tgt is not None:
        rows["target_acc"] = {"before": _acc(before["tgt"], tgt[1]), "after": _acc(after["tgt"], tgt[1])}
    if ed is not None:
        rows["efficacy"] = {"before": _acc(before["ed"], ed[1]), "after": _acc(after["ed"], ed[1])}
    others = torch.ones(len(src[0]), dtype=torch.bool)
    if ed is not None:
        flat_src, flat_ed = src[0].flatten(1), ed[0].flatten(1)
        for s in range(0, len(flat_src), 4096):
            d = torch.cdist(flat_src[s : s + 4096], flat_ed, compute_mode="donot_use_mm_for_euclid_dist")
            others[s : s + 4096] &= ~(d <= 1e-5).any(1)
    changed = (before["src"] != after["src"])[others]
    rows["locality"] = {"before": nan, "after": float(changed.float().mean()) if len(changed) else nan}
    if tgt is not None:
        rows["generalisation"] = {"before": nan, "after": rows["target_acc"]["after"] - rows["target_acc"]["before"]}
    return EditEvaluation(rows, len(applied))


def compare_edit_batching(
    model: nn.Module,
    make_edit: Callable[[Tensor, Tensor], Edit | Mapping[str, Any]],
    x: Tensor,
    wanted: Tensor,
    source: Split,
    sizes: Sequence[int] = (1, 4, 16, 64),
) -> list[dict[str, float]]:
    """Many edits one by one vs as one batch.

    For each ``n`` in ``sizes``: the first ``n`` examples of ``x`` with labels ``wanted`` are
    fixed (a) sequentially, one edit per example (``make_edit(x[i:i+1], wanted[i:i+1])``),
    and (b) as one batch edit (``make_edit(x[:n], wanted[:n])``). Efficacy (on the ``n``),
    locality and source accuracy after each are tabulated. The model is left unchanged.

    Returns:
        One row per ``n``: ``{"n", "seq_efficacy", "batch_efficacy", "seq_locality",
        "batch_locality", "seq_source_acc", "batch_source_acc", "source_acc_before"}``.
    """
    rows = []
    for n in sizes:
        if n > len(x):
            raise ValueError(f"batch size {n} exceeds the {len(x)} examples given")
        seq = evaluate_edits(model, [make_edit(x[i : i + 1], wanted[i : i + 1]) for i in range(n)], source,
                             edited=(x[:n], wanted[:n]))
        bat = evaluate_edits(model, [make_edit(x[:n], wanted[:n])], source, edited=(x[:n], wanted[:n]))
        rows.append({
            "n": n,
            "seq_efficacy": seq["efficacy"]["after"], "batch_efficacy": bat["efficacy"]["after"],
            "seq_locality": seq["locality"]["after"], "batch_locality": bat["locality"]["after"],
            "seq_source_acc": seq["source_acc"]["after"], "batch_source_acc": bat["source_acc"]["after"],
            "source_acc_before": seq["source_acc"]["before"],
        })
    return rows


def batching_table(rows: Sequence[Mapping[str, float]]) -> str:
    """Format :func:`compare_edit_batching` rows."""
    head = f"{'n':>4} | {'efficacy seq':>12} {'batch':>6} | {'locality seq':>12} {'batch':>6} | {'src acc seq':>11} {'batch':>6} (before)"
    lines = [head]
    for r in rows:
        lines.append(
            f"{int(r['n']):>4} | {r['seq_efficacy']:>12.3f} {r['batch_efficacy']:>6.3f} | {r['seq_locality']:>12.3f} "
            f"{r['batch_locality']:>6.3f} | {r['seq_source_acc']:>11.3f} {r['batch_source_acc']:>6.3f} "
            f"({r['source_acc_before']:.3f})"
        )
    return "\n".join(lines)


__all__ = ["EditEvaluation", "batching_table", "compare_edit_batching", "evaluate_edits", "predict"]
