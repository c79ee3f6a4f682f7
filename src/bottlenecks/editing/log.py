"""The edit log of a model: ordered history with undo, redo, list and diff; saved with the
checkpoint as plain data and restored on load.

Example::

    log = edit_log(model)                      # or model.edits on a BottleneckModel
    log.apply({"kind": "remove_concept", "units": ["striped_background"], "value": 0.5})
    print(log.table()); print(log.diff_table())
    log.undo(); log.redo()
    trainer.save_checkpoint("edited.ckpt")      # the log travels in checkpoint["edit_log"]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bottlenecks.analysis.model_access import bottleneck_of
from bottlenecks.editing.edits import EDIT_KINDS, Edit, EditRecord, _same, _state, _write, edit_from_dict

LOG_VERSION = 1


@dataclass
class DiffRow:
    """One tensor one edit changed."""

    edit: int
    kind: str
    tensor: str
    changed: int
    numel: int
    max_abs_change: float
    units: list[str]


class EditLog:
    """Ordered history of the edits applied to one model.

    ``applied`` holds the edits in force, oldest first; ``undone`` the edits :meth:`undo`
    took back, most recent last (:meth:`redo` re-applies them; applying a new edit clears them).
    """

    def __init__(self, model: nn.Module) -> None:
        bottleneck_of(model)  # a clear error for a model without a bottleneck
        self.model = model
        self.applied: list[Edit] = []
        self.undone: list[Edit] = []

    def __len__(self) -> int:
        return len(self.applied)

    # ------------------------------------------------------------------ verbs
    def apply(self, edit: Edit | Mapping[str, Any]) -> Edit:
        """Apply one edit (an :class:`Edit` or its plain-data form) and append it to the log; a
        failed edit leaves the model and the log as they were."""
        edit = edit_from_dict(edit)
        edit.apply(self.model)
        self.applied.append(edit)
        self.undone.clear()
        return edit

    def apply_all(self, edits: Iterable[Edit | Mapping[str, Any]]) -> list[Edit]:
        """Apply several edits in order, all or nothing: when one fails, the ones this call
        applied are reverted and the error is raised (naming which edit failed)."""
        specs = list(edits)
        built = []
        for i, spec in enumerate(specs):
            try:
                built.append(edit_from_dict(spec))
            except ValueError as err:
                raise ValueError(f"edit #{i + 1}: {err}") from None
        saved_undone = list(self.undone)
        done = 0
        try:
            for i, edit in enumerate(built):
                try:
                    self.apply(edit)
                except ValueError as err:
                    raise ValueError(f"edit #{i + 1} ({edit.kind}): {err}") from None
                done += 1
        except BaseException:
            for _ in range(done):
                self.applied.pop().revert(self.model)
            self.undone = saved_undone
            raise
        return built

    def undo(self, n: int = 1) -> list[Edit]:
        """Revert the last ``n`` edits (most recent first); they can be redone."""
        self._check_count(n, len(self.applied), "undo", "applied")
        out = []
        for _ in range(n):
            edit = self.applied[-1]
            record = edit.record
            edit.revert(self.model)
            edit._redo_record = record
            self.undone.append(self.applied.pop())
            out.append(edit)
        return out

    def redo(self, n: int = 1) -> list[Edit]:
        """Re-apply the last ``n`` undone edits exactly as they were (their recorded tensors)."""
        self._check_count(n, len(self.undone), "redo", "undone")
        out = []
        for _ in range(n):
            edit = self.undone[-1]
            record = edit._redo_record
            state = _state(self.model)
            for name, before in record.before.items():
                if name not in state or not _same(state[name].detach(), before):
                    raise ValueError(f"cannot redo the {edit.kind!r} edit: {name!r} changed since it was undone")
            _write(self.model, record.after)
            try:
                edit._restore(self.model, record)
            except BaseException:
                _write(self.model, record.before)
                raise
            self.applied.append(self.undone.pop())
            out.append(edit)
        return out

    def revert_all(self) -> None:
        """Undo every edit (they can be redone)."""
        if self.applied:
            self.undo(len(self.applied))

    @staticmethod
    def _check_count(n: int, have: int, verb: str, what: str) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{verb} takes a positive number of edits, got {n!r}")
        if n > have:
            raise ValueError(
                f"cannot {verb} {n} edit{'s' if n > 1 else ''}: the log has {have} {what} edit"
                f"{'s' if have != 1 else ''}" + (" (the start of the log)" if verb == "undo" else "")
            )

    # ------------------------------------------------------------------ views
    def list(self) -> list[dict[str, Any]]:
        """One row per applied edit: index, kind, summary, units it resolved to."""
        return [
            {"index": i, "kind": e.kind, "summary": e.summary(), "units": list(e.record.units)}
            for i, e in enumerate(self.applied)
        ]

    def table(self) -> str:
        rows = self.list()
        if not rows:
            return "(no edits)"
        return "\n".join(f"#{r['index']:<3} {r['summary']}" for r in rows)

    def diff(self, index: int | None = None) -> list[DiffRow]:
        """What changed: per edit (all, or the one at ``index``), each touched tensor with the
        number of entries changed, the largest absolute change and the units concerned.
        Intervention edits change no tensor; they appear with tensor ``"<forward hook>"``."""
        if index is not None and not -len(self.applied) <= index < len(self.applied):
            raise ValueError(f"no edit #{index}: the log has {len(self.applied)} applied edits")
        picks = range(len(self.applied)) if index is None else [index % len(self.applied)]
        rows = []
        for i in picks:
            e = self.applied[i]
            rec = e.record
            if not rec.after:
                rows.append(DiffRow(i, e.kind, "<forward hook>", 0, 0, 0.0, list(rec.units)))
            for name, after in rec.after.items():
                before = rec.before[name]
                if after.shape != before.shape:  # resized (a bank extended): every entry is new
                    changed, mx = after.numel(), float("nan")
                elif after.is_floating_point():
                    delta = (after.double() - before.double()).abs()
                    changed = int((delta > 0).sum())
                    mx = float(delta.max()) if delta.numel() else 0.0
                else:
                    changed = int((after != before).sum())
                    mx = float(changed > 0)
                rows.append(DiffRow(i, e.kind, name, changed, after.numel(), mx, list(rec.units)))
        return rows

    def diff_table(self, index: int | None = None) -> str:
        rows = self.diff(index)
        if not rows:
            return "(no edits)"
        lines = [f"{'edit':<5} {'kind':<16} {'tensor':<36} {'changed':>9} {'max |Δ|':>10}  units"]
        for r in rows:
            units = ", ".join(r.units[:6]) + (" ..." if len(r.units) > 6 else "")
            lines.append(f"#{r.edit:<4} {r.kind:<16} {r.tensor:<36} {f'{r.changed}/{r.numel}':>9} "
                         f"{r.max_abs_change:>10.4g}  {units}")
        return "\n".join(lines)

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Plain data (dicts, lists, str, numbers, tensors) that loads with ``weights_only=True``."""
        units = bottleneck_of(self.model).units()

        def entry(e: Edit, record: EditRecord) -> dict[str, Any]:
            return {"edit": e.to_dict(), "record": record.to_state()}

        return {
            "version": LOG_VERSION,
            "units": {"kind": units.kind, "names": list(units.names)},
            "applied": [entry(e, e.record) for e in self.applied],
            "undone": [entry(e, e._redo_record) for e in self.undone],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a log saved by :meth:`state` onto a model that already holds the edited
        parameters (a loaded checkpoint). Checks that the log fits the model — same units,
        the recorded tensors exist with the recorded values — before attaching anything; on
        a mismatch it raises and the model is unchanged."""
        if self.applied or self.undone:
            raise ValueError("load_state needs an empty edit log; this one has edits")
        if not isinstance(state, Mapping) or state.get("version") != LOG_VERSION:
            raise ValueError(
                f"not an edit log of version {LOG_VERSION} (got {type(state).__name__} "
                f"{state.get('version') if isinstance(state, Mapping) else ''})"
            )
        units = bottleneck_of(self.model).units()
        saved = state["units"]
        if saved["kind"] != units.kind or list(saved["names"]) != list(units.names):
            diff = sorted(set(saved["names"]) ^ set(units.names))[:8]
            raise ValueError(
                f"the edit log does not fit this model: it was written for {len(saved['names'])} "
                f"{saved['kind']}s, this model has {len(units)} {units.kind}s (names in one but not the other: {diff})"
            )
        applied = [(edit_from_dict(e["edit"]), EditRecord.from_state(e["record"])) for e in state["applied"]]
        undone = [(edit_from_dict(e["edit"]), EditRecord.from_state(e["record"])) for e in state["undone"]]
        live = _state(self.model)
        last: dict[str, tuple[int, Tensor]] = {}
        for i, (_, rec) in enumerate(applied):
            for name, after in rec.after.items():
                if name not in live or tuple(live[name].shape) != tuple(after.shape):
                    raise ValueError(f"edit #{i} of the log changed {name!r}, which this model does not have "
                                     "(with that shape); the log does not fit this model")
                last[name] = (i, after)
        for name, (i, after) in last.items():
            if not _same(live[name].detach(), after.to(live[name].device)):
                raise ValueError(
                    f"the model's {name!r} differs from what edit #{i} of its log wrote; the parameters and "
                    "the edit log do not belong together"
                )
        attached: list[Edit] = []
        try:
            for edit, rec in applied:
                edit._restore(self.model, rec)
                attached.append(edit)
        except BaseException:
            for edit in attached:
                edit._detach()
            raise
        for edit, rec in undone:
            edit._redo_record = rec
        self.applied = [e for e, _ in applied]
        self.undone = [e for e, _ in undone]


def prepare_for_log(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Before a checkpoint's parameters load: let each applied edit of its log give the model the
    structure it left (:meth:`Edit.prepare_load`: unit names and tensor shapes of a bank edit)."""
    if not isinstance(state, Mapping) or state.get("version") != LOG_VERSION:
        return  # load_state names what is wrong
    for e in state.get("applied", []):
        cls = EDIT_KINDS.get(e["edit"].get("kind"))
        if cls is not None:
            cls.prepare_load(model, EditRecord.from_state(e["record"]))


def edit_log(model: nn.Module) -> EditLog:
    """The edit log of ``model`` (created empty on first use)."""
    log = model.__dict__.get("_edit_log")
    if log is None:
        log = EditLog(model)
        model.__dict__["_edit_log"] = log
    return log


def apply_edits(model: nn.Module, edits: Sequence[Edit | Mapping[str, Any]]) -> list[Edit]:
    """Apply edits to ``model`` through its log, all or nothing."""
    return edit_log(model).apply_all(edits)


__all__ = ["DiffRow", "EditLog", "apply_edits", "edit_log"]
