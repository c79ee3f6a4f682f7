"""Edits: small, serialisable, reversible changes to a trained model, addressed to units.

An edit is plain data (a ``kind``, the units it targets, values) with two verbs:

* :meth:`Edit.apply` — validate, change the model, and remember exactly what changed: every
  parameter or buffer the edit touched is recorded before and after (so :meth:`Edit.revert`
  restores it bit for bit); edits that act at inference (concept interventions) own a
  forward pre-hook on the model instead. An edit that fails leaves the model as it was.
* :meth:`Edit.revert` — undo it.

Every edit reaches the bottleneck only through the contract (:mod:`bottlenecks.layers.base`):
units by name or index (``units().index``, close matches in the error), interventions through
``forward(h, concepts, intervention_mask)``, head edits through ``unit_readout()``, code edits
through ``unit_gates()`` / ``set_unit_gates()``, key–value edits through ``unit_table()``. A new
bottleneck that answers these hooks is editable with no change here.

A new kind of edit is one class: subclass :class:`Edit` as a dataclass, set ``kind``,
implement :meth:`Edit.mutate` (and/or :meth:`Edit.intervention`), and decorate it with
:func:`register_edit`. :func:`edit_from_dict` builds any registered kind from plain data
(an edit file), with clear errors for an unknown kind, unknown or missing fields and
malformed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import EvalMode, bottleneck_of, check_concept_supervised, model_device
from bottlenecks.layers.base import UnitReadout, Units

Unit = str | int

#: every registered kind of edit, by its ``kind`` name
EDIT_KINDS: dict[str, type[Edit]] = {}


def register_edit(cls: type[Edit]) -> type[Edit]:
    """Class decorator: make an :class:`Edit` subclass buildable from plain data by its ``kind``."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} must set a class attribute `kind` (a non-empty string)")
    if kind in EDIT_KINDS and EDIT_KINDS[kind] is not cls:
        raise ValueError(f"an edit kind named {kind!r} is already registered ({EDIT_KINDS[kind].__name__})")
    EDIT_KINDS[kind] = cls
    return cls


# ------------------------------------------------------------------------ records
@dataclass
class EditRecord:
    """What an applied edit changed: the touched tensors (by state-dict name) before and after,
    the units it resolved to, and a few plain numbers (``info``)."""

    before: dict[str, Tensor] = field(default_factory=dict)
    after: dict[str, Tensor] = field(default_factory=dict)
    units: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {"before": dict(self.before), "after": dict(self.after), "units": list(self.units),
                "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EditRecord:
        return cls(dict(state["before"]), dict(state["after"]), list(state["units"]), dict(state.get("info", {})))


def _state(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters and persistent buffers, by state-dict name (live tensors)."""
    return dict(model.state_dict(keep_vars=True))


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu()) or (
        a.is_floating_point() and torch.equal(torch.nan_to_num(a.cpu()), torch.nan_to_num(b.cpu()))
        and torch.equal(torch.isnan(a.cpu()), torch.isnan(b.cpu()))))


@torch.no_grad()
def _write(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    state = _state(model)
    for name, value in tensors.items():
        if state[name].shape != value.shape:  # an edit that resized it (a bank extended): old shape back
            state[name].data = value.to(state[name].device, state[name].dtype).clone()
        else:
            state[name].data.copy_(value.to(state[name].device))


# --------------------------------------------------------------------------- base
@dataclass
class Edit:
    """Base class of every edit (a dataclass of plain fields; see the module docstring).

    Subclasses implement :meth:`mutate` (change parameters/buffers through the bottleneck's
    hooks) and/or :meth:`intervention` (values to impose at inference), and may override
    :meth:`check` (validate against the model before anything changes).
    """

    kind: ClassVar[str] = ""
    #: tensors (by their last name) where NaN is a value, not a failure (e.g. "unknown" accuracies)
    may_hold_nan: ClassVar[tuple[str, ...]] = ()

    # -- to implement
    def check(self, model: nn.Module) -> list[str]:
        """Validate against ``model`` and return the names of the units the edit targets."""
        return []

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        """Change parameters/buffers (under ``torch.no_grad``). May add to ``record.units`` /
        ``record.info``. Default: nothing (an intervention-only edit)."""

    def intervention(self, model: nn.Module) -> Callable[[Tensor], tuple[Tensor, Tensor] | None] | None:
        """For edits that act at inference: a function ``x → (values, mask)`` ``(batch, num_concepts)``
        imposed on every forward pass (or None for a batch it does not touch). Default: None."""
        return None

    # -- the verbs
    @property
    def applied(self) -> bool:
        return getattr(self, "_record", None) is not None

    @property
    def record(self) -> EditRecord:
        if not self.applied:
            raise ValueError(f"this {self.kind!r} edit has not been applied")
        return self._record

    def apply(self, model: nn.Module) -> Edit:
        """Apply the edit to ``model`` and remember what changed; on any error the model is left
        exactly as it was and the error is raised. Returns ``self``."""
        if self.applied:
            raise ValueError(f"this {self.kind!r} edit is already applied; revert it first or apply a copy")
        state = _state(model)
        before = {k: v.detach().clone() for k, v in state.items()}
        record = EditRecord()
        try:
            record.units = list(self.check(model))
            with torch.no_grad():
                self.mutate(model, record)
            state = _state(model)  # live again: an edit may have replaced or resized tensors
            changed = [k for k, v in state.items() if not _same(v.detach(), before[k])]
            for k in changed:
                v = state[k].detach()
                if k.rsplit(".", 1)[-1] in self.may_hold_nan:
                    continue
                if v.is_floating_point() and not torch.isfinite(v).all():
                    raise ValueError(f"the {self.kind!r} edit would write NaN or inf into {k!r}")
            hook = self.intervention(model)
        except BaseException:
            _write(model, before)
            raise
        record.before = {k: before[k] for k in changed}
        record.after = {k: state[k].detach().clone() for k in changed}
        self._record = record
        self._attach(model, hook)
        return self

    def revert(self, model: nn.Module) -> None:
        """Undo the edit: restore every touched tensor bit for bit and remove its hook."""
        record = self.record
        state = _state(model)
        for name, after in record.after.items():
            if name not in state or not _same(state[name].detach(), after):
                raise ValueError(
                    f"cannot revert this {self.kind!r} edit: {name!r} was changed after it was applied "
                    "(revert later edits first)"
                )
        _write(model, record.before)
        self._detach()
        self._record = None

    # -- plumbing
    def _attach(self, model: nn.Module, hook: Callable | None) -> None:
        self._handle = None if hook is None else model.register_forward_pre_hook(
            _intervention_hook(model, hook), with_kwargs=True
        )

    def _detach(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.remove()
        self._handle = None

    def _restore(self, model: nn.Module, record: EditRecord) -> None:
        """Mark as applied with a recorded ``record`` whose tensors the model already holds
        (a loaded checkpoint, a redo after writing ``record.after``)."""
        self.check(model)
        self._record = record
        self._attach(model, self.intervention(model))

    @classmethod
    def prepare_load(cls, model: nn.Module, record: EditRecord) -> None:
        """Before a checkpoint's parameters load into ``model``: give it the structure this
        applied edit left (an edit that changes tensor shapes or unit names overrides this).
        Default: nothing."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"kind": ..., field: value, ...}`` (tensors stay tensors)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.detach().cpu().clone() if torch.is_tensor(v) else _plain(v)
        return out

    def summary(self) -> str:
        """One line for listings."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if torch.is_tensor(v):
                v = f"<{'x'.join(map(str, v.shape))} tensor>"
            parts.append(f"{f.name}={v}")
        return f"{self.kind}(" + ", ".join(parts) + ")"


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _intervention_hook(model: nn.Module, fn: Callable[[Tensor], tuple[Tensor, Tensor] | None]) -> Callable:
    """A forward pre-hook that merges an edit's intervention into ``model(x, concepts, mask)``;
    an intervention passed explicitly to the call wins where its mask is set."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs = list(args), dict(kwargs)
        x = args[0] if args else kwargs["x"]
        given = fn(x)
        if given is None:
            return tuple(args), kwargs
        values, mask = given
        concepts = args[1] if len(args) > 1 else kwargs.get("concepts")
        old_mask = args[2] if len(args) > 2 else kwargs.get("intervention_mask")
        values = values.to(x.device)
        mask = mask.to(x.device)
        if old_mask is not None:
            old_mask = old_mask.bool()
            values = torch.where(old_mask, torch.nan_to_num(concepts.to(values.dtype)), values)
            mask = mask | old_mask
        elif concepts is not None:  # labels given for training: keep them where not edited
            values = torch.where(mask, values, concepts.to(values.dtype))
        for pos, key, val in ((1, "concepts", values), (2, "intervention_mask", mask)):
            if len(args) > pos:
                args[pos] = val
            else:
                kwargs[key] = val
        return tuple(args), kwargs

    return hook


# ------------------------------------------------------------------------ helpers
def model_units(model: nn.Module) -> Units:
    """The units of a model's bottleneck."""
    return bottleneck_of(model).units()


def resolve_units(model: nn.Module, units: Unit | Sequence[Unit], what: str = "edit") -> list[int]:
    """Indices of ``units`` (names or indices) in the model's units; the error names the unit and
    lists close matches."""
    if isinstance(units, (str, int)):
        units = [units]
    if not isinstance(units, Sequence) or not len(units):
        raise ValueError(f"the {what} needs at least one unit (a name or an index), got {units!r}")
    u = model_units(model)
    idx = u.indices(units)
    if len(set(idx)) != len(idx):
        raise ValueError(f"the {what} names a unit twice: {list(units)}")
    return idx


def _names(model: nn.Module, idx: Sequence[int]) -> list[str]:
    names = model_units(model).names
    return [names[i] for i in idx]


def _require_kind(model: nn.Module, kind: str, edit: str, hint: str) -> None:
    u = model_units(model)
    if u.kind != kind:
        raise ValueError(
            f"a {edit!r} edit needs {kind} units, but {type(bottleneck_of(model)).__name__}'s units are "
            f"{u.kind}s; {hint}"
        )


def readout_of(model: nn.Module) -> tuple[nn.Linear, UnitReadout]:
    """The linear map that reads the units and which of its input columns carry each unit
    (:meth:`~bottlenecks.layers.base.Bottleneck.unit_readout`)."""
    b = bottleneck_of(model)
    readout = b.unit_readout()
    if readout is None:
        raise ValueError(
            f"{type(b).__name__} has no linear readout of its {b.units().kind}s (unit_readout() is None), "
            "so its head cannot be edited unit by unit; use a code, key-value or intervention edit"
        )
    lin = readout.linear if readout.linear is not None else getattr(model, "head", None)
    if not isinstance(lin, nn.Linear):
        raise ValueError(
            f"head edits need a linear head reading the units; this model's head is "
            f"{type(lin).__name__} (an MLP head has no single weight per unit and class)"
        )
    if max((c for cols in readout.columns for c in cols), default=-1) >= lin.in_features:
        raise ValueError(
            f"the readout of {type(b).__name__} names columns beyond the head's {lin.in_features} inputs"
        )
    return lin, readout


def as_tensor(value: Any, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A field value as a tensor, with an error naming the field when it is malformed."""
    try:
        t = torch.as_tensor(value, dtype=dtype) if not torch.is_tensor(value) else value.to(dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be numbers (a number, a list or a tensor), got {value!r:.80}") from err
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _classes(model: nn.Module, lin: nn.Linear, classes: Sequence[int] | None) -> list[int]:
    n = lin.out_features
    if classes is None:
        return list(range(n))
    out = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not -n <= c < n:
            raise ValueError(f"class {c!r} is not a class index of the head's {n} outputs")
        out.append(c % n)
    return out


# ------------------------------------------------------------------- the kinds
@register_edit
@dataclass
class ConceptIntervention(Edit):
    """Set concepts to given values for every input (global) or for given examples (local).

    Args:
        values: ``{concept name or index: value in [0, 1]}``.
        examples: ``(n, ...)`` the inputs the edit applies to (features as the model receives
            them); None: every input. An input matches when it equals an example to within
            ``1e-5`` (Euclidean).

    Works on every concept bottleneck through ``forward(h, concepts, intervention_mask)`` (a
    CBM swaps the probabilities the head reads, a CEM its embedding mixture, an ECBM re-infers
    the rest); a forward pre-hook on the model owns it, so it survives save/load through the
    edit log. Values passed explicitly to a call override it where they are set.
    """

    kind: ClassVar[str] = "intervene"
    values: dict[Unit, float] = field(default_factory=dict)
    examples: Tensor | None = None

    def check(self, model: nn.Module) -> list[str]:
        _require_kind(model, "concept", self.kind,
                      "interventions set concepts; edit codes with suppress_codes/force_codes, key values "
                      "with set_values/retrain_values, or any readable unit with head_weight")
        check_concept_supervised(model)
        if not isinstance(self.values, Mapping) or not self.values:
            raise ValueError(f"an 'intervene' edit needs values: a mapping {{concept: value}}, got {self.values!r}")
        idx = resolve_units(model, list(self.values), "intervene edit")
        for key, v in self.values.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"the value for concept {key!r} must be a number in [0, 1], got {v!r}") from None
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"the value for concept {key!r} is {v:g}; concept values are probabilities in [0, 1]")
        if self.examples is not None:
            ex = as_tensor(self.examples, "examples")
            if ex.dim() < 2 or len(ex) == 0:
                raise ValueError(f"examples must be (n, features...) with n >= 1, got shape {tuple(ex.shape)}")
        return _names(model, idx)

    def intervention(self, model: nn.Module) -> Callable:
        from bottlenecks.analysis.interventions import make_intervention

        units = model_units(model)
        vals = {units.index(k): float(v) for k, v in self.values.items()}
        base_v, base_m = make_intervention(units.names, 1, vals)
        ex = None if self.examples is None else as_tensor(self.examples, "examples").flatten(1)

        def fn(x: Tensor) -> tuple[Tensor, Tensor] | None:
            n = x.shape[0]
            v = base_v.to(x.device).expand(n, -1)
            m = base_m.to(x.device).expand(n, -1)
            if ex is not None:
                flat = x.detach().flatten(1).float()
                if flat.shape[1] != ex.shape[1]:
                    return None
                d = torch.cdist(flat, ex.to(x.device), compute_mode="donot_use_mm_for_euclid_dist")
                hit = (d <= 1e-5).any(1)
                if not bool(hit.any()):
                    return None
                m = m & hit.unsqueeze(1)
            return v, m

        return fn


@register_edit
@dataclass
class HeadWeight(Edit):
    """Change the weights from units to classes in the linear map that reads them.

    Args:
        units: names or indices of the units.
        classes: class indices (None: every class).
        op: ``"zero"`` / ``"prune"`` (set to 0), ``"scale"`` (multiply by ``value``), ``"set"``
            (set to ``value``) or ``"add"`` (add ``value``: add a concept→class weight).
        value: the number ``op`` uses.
    """

    kind: ClassVar[str] = "head_weight"
    OPS: ClassVar[tuple[str, ...]] = ("zero", "prune", "scale", "set", "add")
    units: list[Unit] = field(default_factory=list)
    classes: list[int] | None = None
    op: str = "zero"
    value: float = 0.0

    def check(self, model: nn.Module) -> list[str]:
        if self.op not in self.OPS:
            raise ValueError(f"head_weight op must be one of {list(self.OPS)}, got {self.op!r}")
        try:
            float(self.value)
        except (TypeError, ValueError):
            raise ValueError(f"head_weight value must be a number, got {self.value!r}") from None
        idx = resolve_units(model, self.units, "head_weight edit")
        lin, _ = readout_of(model)
        _classes(model, lin, self.classes)
        return _names(model, idx)

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        lin, readout = readout_of(model)
        rows = torch.tensor(_classes(model, lin, self.classes))
        for u in resolve_units(model, self.units):
            cols = torch.tensor(readout.columns[u])
            w = lin.weight.data[rows[:, None], cols[None, :]]
            v = float(self.value)
            new = {"zero": 0 * w, "prune": 0 * w, "scale": w * v, "set": torch.full_like(w, v), "add": w + v}[self.op]
            lin.weight.data[rows[:, None], cols[None, :]] = new


@register_edit
@dataclass
class RemoveUnit(Edit):
    """Remove units from the model: the readout no longer reads them.

    Their weights to every class are zeroed; with ``value`` (one-column units such as
    concept probabilities), ``value × weight`` moves into the bias, so the model behaves as
    if the unit were fixed at ``value`` (e.g. 0.5, or its mean) — removing a spurious
    concept without shifting every class score.
    """

    kind: ClassVar[str] = "remove_concept"
    units: list[Unit] = field(default_factory=list)
    value: float | None = None

    def check(self, model: nn.Module) -> list[str]:
        idx = resolve_units(model, self.units, "remove_concept edit")
        lin, readout = readout_of(model)
        if self.value is not None:
            try:
                float(self.value)
            except (TypeError, ValueError):
                raise ValueError(f"remove_concept value must be a number or null, got {self.value!r}") from None
            if lin.bias is None:
                raise ValueError("remove_concept with a value needs a head with a bias to move the value into")
            wide = [model_units(model).names[i] for i in idx if len(readout.columns[i]) != 1]
            if wide:
                raise ValueError(
                    f"units {wide} are read through several columns (embeddings); a single value cannot "
                    "stand for them: give value: null"
                )
        return _names(model, idx)

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        lin, readout = readout_of(model)
        for u in resolve_units(model, self.units):
            cols = list(readout.columns[u])
            if self.value is not None:
                lin.bias.data += float(self.value) * lin.weight.data[:, cols].sum(1)
            lin.weight.data[:, cols] = 0


@dataclass
class _Gates(Edit):
    units: list[Unit] = field(default_factory=list)
    gate: ClassVar[str] = ""

    def check(self, model: nn.Module) -> list[str]:
        b = bottleneck_of(model)
        gates = b.unit_gates()
        if self.gate not in gates:
            raise ValueError(
                f"{type(b).__name__} cannot {self.kind.split('_')[0]} its {b.units().kind}s "
                f"(its unit gates: {sorted(gates) or 'none'})"
            )
        return _names(model, resolve_units(model, self.units, f"{self.kind} edit"))

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        b = bottleneck_of(model)
        gates = b.unit_gates()
        idx = torch.tensor(resolve_units(model, self.units))
        for name in gates:  # a unit is forced or suppressed, not both
            gates[name] = gates[name].clone()
            gates[name][idx] = name == self.gate
        b.set_unit_gates(gates)


@register_edit
@dataclass
class SuppressCodes(_Gates):
    """Never activate the given codes (the next-best code takes their place)."""

    kind: ClassVar[str] = "suppress_codes"
    gate: ClassVar[str] = "suppressed"


@register_edit
@dataclass
class ForceCodes(_Gates):
    """Make the given codes active for every input."""

    kind: ClassVar[str] = "force_codes"
    gate: ClassVar[str] = "forced"


def _table(model: nn.Module, edit: str) -> Tensor:
    b = bottleneck_of(model)
    t = b.unit_table()
    if t is None:
        raise ValueError(
            f"{type(b).__name__} stores no vector per {b.units().kind} (unit_table() is None), so a "
            f"{edit!r} edit has nothing to overwrite"
        )
    return t


@register_edit
@dataclass
class SetUnitValues(Edit):
    """Overwrite the stored vectors of selected units (the values of keys, the vectors of codes).

    Args:
        units: names or indices.
        values: one vector ``(dim,)`` for all of them, or one per unit ``(len(units), dim)``.
    """

    kind: ClassVar[str] = "set_values"
    units: list[Unit] = field(default_factory=list)
    values: Any = None

    def _values(self, model: nn.Module, n: int) -> Tensor:
        t = _table(model, self.kind)
        v = as_tensor(self.values, "set_values values", t.dtype)
        if v.dim() == 1:
            v = v.expand(n, -1)
        if tuple(v.shape) != (n, t.shape[1]):
            raise ValueError(
                f"set_values values must be one vector of length {t.shape[1]} or {n} of them "
                f"({n}, {t.shape[1]}), got shape {tuple(v.shape)}"
            )
        return v

    def check(self, model: nn.Module) -> list[str]:
        idx = resolve_units(model, self.units, "set_values edit")
        self._values(model, len(idx))
        return _names(model, idx)

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        idx = resolve_units(model, self.units)
        _table(model, self.kind)[torch.tensor(idx)] = self._values(model, len(idx)).to(_table(model, self.kind).device)


def _owner(model: nn.Module, table: Tensor) -> nn.Parameter:
    """The parameter whose storage holds ``table``."""
    ptr = table.untyped_storage().data_ptr()
    for p in model.parameters():
        if p.untyped_storage().data_ptr() == ptr:
            return p
    raise ValueError(
        "the bottleneck's unit table is a buffer, not a parameter (e.g. an EMA codebook), so it cannot be "
        "retrained by gradient; overwrite it with set_values instead"
    )


@register_edit
@dataclass
class RetrainValues(Edit):
    """Retrain only the stored vectors of the units that given examples activate (the values of
    the keys they fetch), towards given labels; every other unit's vector stays bit-identical.

    Args:
        x: ``(n, ...)`` the examples (as the model receives them).
        y: ``(n,)`` the labels they should get.
        steps: at most this many Adam steps on those rows only.
        lr: learning rate.
        until_fixed: stop as soon as every example gets its label (classification): the
            smallest change that does the job, which keeps other predictions (sharing the
            same keys) from moving more than needed.
    """

    kind: ClassVar[str] = "retrain_values"
    x: Any = None
    y: Any = None
    steps: int = 200
    lr: float = 0.05
    until_fixed: bool = True

    def _data(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        x = as_tensor(self.x, "retrain_values x")
        y = as_tensor(self.y, "retrain_values y", torch.long if getattr(model, "task", "") == "classification" else torch.float32)
        if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"retrain_values needs x (n, features) and y (n,) with the same n >= 1, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"retrain_values steps must be a positive integer, got {self.steps!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"retrain_values lr must be positive, got {self.lr!r}")
        return x, y

    def check(self, model: nn.Module) -> list[str]:
        self._data(model)
        _owner(model, _table(model, self.kind))
        return []

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        b = bottleneck_of(model)
        x, y = self._data(model)
        dev = model_device(model)
        x, y = x.to(dev), y.to(dev)
        with EvalMode(model):
            fetched = (b.unit_activations(model(x)[1]) > 0).any(0)
        record.units = _names(model, fetched.nonzero().flatten().tolist())
        table = _table(model, self.kind)
        param = _owner(model, table)
        keep = table[~fetched].clone()
        flags = {p: p.requires_grad for p in model.parameters()}
        was = model.training
        model.eval()
        try:
            for p in model.parameters():
                p.requires_grad_(p is param)
            opt = torch.optim.Adam([param], lr=float(self.lr))
            loss_fn = getattr(model, "task_loss", None) or (lambda yh, yy: nn.functional.cross_entropy(yh, yy))
            with torch.enable_grad():
                classify = getattr(model, "task", "classification") == "classification"
                taken = 0
                for step in range(self.steps):
                    opt.zero_grad()
                    y_hat = model(x)[0]
                    if self.until_fixed and classify and bool((y_hat.argmax(-1) == y).all()):
                        break
                    loss = loss_fn(y_hat, y)
                    if step == 0 and (not loss.requires_grad or not _reaches(loss, param)):
                        raise ValueError(
                            f"the task output of {type(b).__name__} does not depend differentiably on its "
                            f"{b.units().kind} vectors (e.g. a straight-through quantiser), so retrain_values cannot "
                            "train them; overwrite them with set_values instead"
                        )
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        table[~fetched] = keep  # untouched rows stay bit-identical
                    taken += 1
            record.info["steps"] = taken
        finally:
            for p, f in flags.items():
                p.requires_grad_(f)
                p.grad = None
            model.train(was)


def _reaches(loss: Tensor, param: Tensor) -> bool:
    """Whether ``loss`` has a gradient path to ``param``."""
    return torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)[0] is not None


def _bank_of(model: nn.Module) -> Any:
    """The model's concept bank (``unit_bank()``), or a clear error."""
    b = bottleneck_of(model)
    bank = b.unit_bank()
    if bank is None:
        raise ValueError(
            f"a 'replace_bank' edit needs a bottleneck whose units are projections onto a concept bank "
            f"(a post-hoc concept layer: unit_bank()); {type(b).__name__}'s {b.units().kind}s come from no bank"
        )
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"a 'replace_bank' edit refits a linear head over the concept units; this model's head is "
                         f"{type(head).__name__}")
    return bank


def _resize_head(model: nn.Module, width: int) -> None:
    """Give the model's linear head ``width`` inputs (new weights zero, to be written next)."""
    head = model.head
    if head.weight.shape[1] != width:
        w = head.weight
        w.data = torch.zeros(w.shape[0], width, dtype=w.dtype, device=w.device)
    head.in_features = width


@register_edit
@dataclass
class ReplaceBank(Edit):
    """Replace or extend the concept bank of a post-hoc model and refit only its head.

    Args:
        bank: the new concepts — a concept-bank file (``.safetensors``, :meth:`ConceptBank.save`)
            or inline plain data ``{"names": [...], "vectors": [[...], ...], "intercepts": [...]}``
            (intercepts optional).
        mode: ``"replace"`` (the units become the bank's concepts) or ``"extend"`` (the bank's
            concepts are added after the current ones; its names must be new).
        data: an ``.npz`` file with arrays ``x`` (features as the model receives them) and ``y``
            (labels), loaded without pickles; or give ``x`` and ``y`` inline.
        lam, l1_ratio, solver, seed: the sparse head's settings (:func:`fit_sparse_head`).

    The layer's unit statistics are recomputed on ``x``; the head over the concept units is
    refitted on ``x, y`` by :func:`~bottlenecks.models.posthoc.fit_concept_head` (the post-hoc
    CBM's own elastic-net fit; a residual side channel keeps its
    identity columns; the residual's parameters are not touched). Extending resizes the layer's
    buffers and the head's weight; the record keeps the old tensors with their old shapes and the
    names before/after, so revert, redo and loading a checkpoint restore the structure too.
    """

    kind: ClassVar[str] = "replace_bank"
    MODES: ClassVar[tuple[str, ...]] = ("replace", "extend")
    may_hold_nan: ClassVar[tuple[str, ...]] = ("cav_accuracy",)  # NaN: a concept's accuracy is unknown
    bank: Any = None
    mode: str = "replace"
    data: str | None = None
    x: Any = None
    y: Any = None
    lam: float = 1e-3
    l1_ratio: float = 0.99
    solver: str = "sgd"
    seed: int = 0

    def _new_bank(self, model: nn.Module) -> Any:
        from pathlib import Path

        from bottlenecks.concepts import ConceptBank

        if self.mode not in self.MODES:
            raise ValueError(f"replace_bank mode must be one of {list(self.MODES)}, got {self.mode!r}")
        old = _bank_of(model)
        if isinstance(self.bank, (str, Path)):
            if not str(self.bank).endswith(".safetensors"):
                raise ValueError(f"replace_bank bank is a concept-bank file (.safetensors) or a mapping, got {self.bank!r}")
            new = ConceptBank.load(self.bank)
        elif isinstance(self.bank, Mapping):
            extra = sorted(set(self.bank) - {"names", "vectors", "intercepts"})
            if extra or not {"names", "vectors"} <= set(self.bank):
                raise ValueError("replace_bank bank as plain data is {'names': [...], 'vectors': [[...]], "
                                 f"'intercepts': [...] (optional)}}, got keys {sorted(self.bank)}")
            try:
                icpt = self.bank.get("intercepts")
                new = ConceptBank(list(self.bank["names"]), as_tensor(self.bank["vectors"], "replace_bank vectors"),
                                  encoder_id=old.encoder_id,
                                  intercepts=None if icpt is None else as_tensor(icpt, "replace_bank intercepts"))
            except ValueError as err:
                raise ValueError(f"replace_bank bank: {err}") from None
        else:
            raise ValueError(f"replace_bank bank must be a .safetensors file or {{'names', 'vectors'}}, got {self.bank!r:.80}")
        b = bottleneck_of(model)
        new.check_dim(b.in_features, "the encoder features")
        if self.mode == "replace":
            return new
        dup = [n for n in new.names if n in old.names]
        if dup:
            raise ValueError(f"replace_bank mode 'extend' adds concepts, but {dup[:5]} are already units of the model")
        zeros = torch.zeros(len(new))
        icpt = None
        if old.intercepts is not None or new.intercepts is not None:
            icpt = torch.cat([old.intercepts if old.intercepts is not None else torch.zeros(len(old)),
                              new.intercepts if new.intercepts is not None else zeros])
        acc = torch.cat([old.accuracy if old.accuracy is not None else torch.full((len(old),), float("nan")),
                         new.accuracy if new.accuracy is not None else torch.full((len(new),), float("nan"))])
        return ConceptBank(old.names + new.names, torch.cat([old.vectors.cpu(), new.vectors]),
                           encoder_id=old.encoder_id, intercepts=icpt, accuracy=acc, source="edited")

    def _data(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        if self.data is not None:
            import numpy as np

            if self.x is not None or self.y is not None:
                raise ValueError("replace_bank takes its training data from `data` (an .npz) or from `x` and `y`, not both")
            if not isinstance(self.data, str) or not self.data.endswith(".npz"):
                raise ValueError(f"replace_bank data must be the path of an .npz file with arrays x and y, got {self.data!r}")
            try:
                arrays = np.load(self.data, allow_pickle=False)
            except FileNotFoundError:
                raise ValueError(f"replace_bank data: no file {self.data!r}") from None
            if "x" not in arrays.files or "y" not in arrays.files:
                raise ValueError(f"replace_bank data: {self.data} needs arrays x and y, has {arrays.files}")
            xv, yv = arrays["x"], arrays["y"]
        else:
            xv, yv = self.x, self.y
        if xv is None or yv is None:
            raise ValueError("replace_bank needs training data for the head: `data` (an .npz with x, y) or `x` and `y`")
        x = as_tensor(xv, "replace_bank x")
        y = as_tensor(yv, "replace_bank y", torch.long)
        b = bottleneck_of(model)
        if x.dim() != 2 or y.dim() != 1 or len(x) != len(y) or len(x) < 2 or x.shape[1] != b.in_features:
            raise ValueError(f"replace_bank needs x (n, {b.in_features}) and y (n,) with the same n >= 2, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        return x, y

    def check(self, model: nn.Module) -> list[str]:
        bank = self._new_bank(model)
        self._data(model)
        if self.solver not in ("sgd", "saga"):
            raise ValueError(f"replace_bank solver must be 'sgd' or 'saga', got {self.solver!r}")
        old = set(model_units(model).names)
        return [n for n in bank.names if n not in old] if self.mode == "extend" else list(bank.names)

    def mutate(self, model: nn.Module, record: EditRecord) -> None:
        from bottlenecks.models.posthoc import _accuracy, fit_concept_head

        b = bottleneck_of(model)
        bank = self._new_bank(model)
        x, y = self._data(model)
        dev = model_device(model)
        names_before = list(model_units(model).names)
        acc_before = _accuracy(model, x.to(dev), y)[0]
        with EvalMode(model):
            b.set_unit_bank(bank, model.norm(x.to(dev)) if hasattr(model, "norm") else x.to(dev))
        _resize_head(model, b.out_features)
        fit_concept_head(model, x, y, head="elasticnet", lam=float(self.lam), l1_ratio=float(self.l1_ratio),
                         solver=self.solver, seed=int(self.seed))
        record.info.update(names_before=names_before, names_after=list(model_units(model).names),
                           acc_before=acc_before, acc_after=_accuracy(model, x.to(dev), y)[0])

    # -- structure (names, shapes) follows the tensors on every path
    @staticmethod
    def _sync(model: nn.Module, names: list[str]) -> None:
        b = bottleneck_of(model)
        if list(b.units().names) != list(names):
            b.set_unit_bank(list(names))
        head = getattr(model, "head", None)
        if isinstance(head, nn.Linear):
            head.in_features = head.weight.shape[1]

    def apply(self, model: nn.Module) -> Edit:
        names = list(model_units(model).names)
        try:
            return super().apply(model)
        except BaseException:
            self._sync(model, names)  # the tensors are back (old shapes); the names follow
            raise

    def revert(self, model: nn.Module) -> None:
        names = self.record.info["names_before"]
        super().revert(model)
        self._sync(model, names)

    def _restore(self, model: nn.Module, record: EditRecord) -> None:
        self._sync(model, record.info["names_after"])
        self._record = record
        self._attach(model, None)

    @classmethod
    def prepare_load(cls, model: nn.Module, record: EditRecord) -> None:
        bottleneck_of(model).set_unit_bank(list(record.info["names_after"]))
        _resize_head(model, bottleneck_of(model).out_features)


# ------------------------------------------------------------------ from plain data
def edit_from_dict(spec: Mapping[str, Any]) -> Edit:
    """Build an edit from plain data ``{"kind": ..., field: value, ...}``.

    Raises a clear ``ValueError`` for an unknown kind (with close matches), unknown or missing
    fields, or values of the wrong type. The result is not yet applied.
    """
    if isinstance(spec, Edit):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"an edit is a mapping with a 'kind', got {type(spec).__name__} {spec!r:.80}")
    kind = spec.get("kind")
    if kind not in EDIT_KINDS:
        close = difflib.get_close_matches(str(kind), list(EDIT_KINDS), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown edit kind {kind!r}{hint} (known kinds: {sorted(EDIT_KINDS)})")
    cls = EDIT_KINDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(spec) - set(fields) - {"kind"})
    if extra:
        raise ValueError(f"a {kind!r} edit has no field(s) {extra}; its fields are {sorted(fields)}")
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    hints = typing.get_type_hints(cls)
    for name, value in kwargs.items():
        _check_type(kind, name, value, hints.get(name))
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"malformed {kind!r} edit: {err}") from None


def _check_type(kind: str, name: str, value: Any, hint: Any) -> None:
    """Light check of plain-data field types (lists where lists are expected, numbers for numbers)."""
    if hint is None or value is None:
        return
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        hint = next((a for a in args if a is not type(None)), hint)
        origin = typing.get_origin(hint)
    bad = False
    if hint is float:
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
    elif hint is int:
        bad = isinstance(value, bool) or not isinstance(value, int)
    elif hint is str:
        bad = not isinstance(value, str)
    elif origin is list:
        bad = not isinstance(value, (list, tuple))
    elif origin is dict:
        bad = not isinstance(value, Mapping)
    if bad:
        raise ValueError(f"malformed {kind!r} edit: field {name!r} must be {hint}, got {value!r:.80}")


__all__ = [
    "EDIT_KINDS",
    "ConceptIntervention",
    "Edit",
    "EditRecord",
    "ForceCodes",
    "HeadWeight",
    "RemoveUnit",
    "ReplaceBank",
    "RetrainValues",
    "SetUnitValues",
    "SuppressCodes",
    "edit_from_dict",
    "readout_of",
    "register_edit",
    "resolve_units",
]
