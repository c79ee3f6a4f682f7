"""The bottleneck contract every layer in :mod:`bottlenecks.layers` follows.

A bottleneck maps encoder features ``h`` of shape ``(batch, in_features)`` to a
:class:`BottleneckOutput`. Everything else a bottleneck may do is a hook declared
here, on :class:`Bottleneck`, with a default and a docstring; the model, the training
stages, analysis and editing call these hooks and never look for attributes by name.

=============================  ==============================================================
hook                           default / meaning
=============================  ==============================================================
``forward(h, concepts, mask)`` required: features → :class:`BottleneckOutput`
``units()``                    the readable units (:class:`Units`): ``z``'s dimensions
``unit_activations(out)``      ``(batch, n_units)`` activations of the units: ``out.z``
``loss_terms(out, batch)``     every auxiliary loss, unweighted, by name: ``out.losses``
``predicts_task``              False: ``z`` is read by a head (True: ``z`` is the output)
``optimizer_param_groups()``   ``[]``: no parameters need their own optimiser settings
``needs_data_init()``          False: no data-dependent initialisation
``init_from_data(h, ...)``     nothing: k-means keys, codebooks, CAV banks, ...
``side_channel()``             None: no columns of ``z`` lie outside the readable units
``side_channel_parameters()``  ``[]``: no parameters that train with the head
``concept_supervision()``      None: the layer does not count concept labels
``feature_space``              ``"standardized"``: ``forward`` receives the model's standardised
                               features (``"encoder"``: the encoder's own coordinates)
``unit_readout()``             the head reads unit ``i`` through column ``i`` of ``z`` when the
                               units are ``z``'s dimensions; else None (:class:`UnitReadout`)
``unit_gates()``               ``{}``: no switches that force or suppress units
``set_unit_gates(gates)``      error: the layer has no gates
``unit_table()``               None: no per-unit stored vector (code, key value) to overwrite
=============================  ==============================================================

The last four (``unit_readout`` to ``unit_table``) are what :mod:`bottlenecks.editing` edits
through: head edits need a readout, code edits need gates, key–value edits need a unit table.

Concept layers derive from :class:`ConceptLayer`, which fills in the concept side
(units are the named concepts, read as probabilities after intervention; the concept
loss; label counting). A new method is one subclass plus one YAML file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.naming import NamedConcepts

#: The name under which concept layers return their concept loss; the model weights it
#: with ``concept_loss_weight`` (the joint CBM's λ), every other term with ``loss_weights``.
CONCEPT_LOSS = "concept_loss"

UnitKind = Literal["concept", "code", "key", "latent", "sae"]

#: the largest feature magnitude a bottleneck accepts: its square summed over thousands of
#: dimensions and rows (distances, EMA sums, variances) still fits in float32 (max 3.4e38)
MAX_FEATURE_MAGNITUDE = 1e16


@dataclass
class BottleneckOutput:
    """What a bottleneck returns.

    Attributes:
        z: ``(batch, out_features)`` — what the head reads (or, when the bottleneck
            :attr:`~Bottleneck.predicts_task`, the task output itself).
        losses: named, *unweighted* auxiliary terms (scalars) that need no targets, e.g.
            ``"commitment"``, ``"kl"``. Terms that need the batch's targets come from
            :meth:`Bottleneck.loss_terms`; the model weights every term by name.
        concepts: ``(batch, num_concepts)`` concept logits, for concept bottlenecks.
        probs: ``(batch, num_concepts)`` concept probabilities *after* intervention.
        codes: ``(batch, ...)`` integer code indices, for discrete bottlenecks.
        metrics: scalars to log (detached), e.g. ``"perplexity"``; the model logs each as
            ``{stage}/{name}``, averaged over the epoch.
        extras: what truly belongs to one method (energies, the stochastic sample's
            mean and scale, per-batch code counts); nothing outside the layer relies on it.
    """

    z: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    concepts: Tensor | None = None
    probs: Tensor | None = None
    codes: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Units:
    """The readable units of a bottleneck: what interventions, attribution, reports and
    edits address.

    Attributes:
        kind: ``"concept"`` (named concepts), ``"code"`` (codebook entries), ``"key"``
            (key–value pairs), ``"latent"`` (dimensions of a continuous code) or ``"sae"``
            (sparse-autoencoder units).
        names: one name per unit, unique; column ``i`` of
            :meth:`Bottleneck.unit_activations` is unit ``names[i]``.
    """

    kind: UnitKind
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"unit names must be unique; repeated: {dup[:10]}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def index(self, unit: str | int) -> int:
        """Column of ``unit`` (a name or an index); the error lists close matches."""
        if isinstance(unit, bool) or not isinstance(unit, (int, str)):
            raise TypeError(f"a unit is a name or an index, got {type(unit).__name__} {unit!r}")
        if isinstance(unit, int):
            if not -len(self.names) <= unit < len(self.names):
                raise ValueError(f"{self.kind} index {unit} is out of range for {len(self.names)} {self.kind}s")
            return unit % len(self.names)
        try:
            return self.names.index(unit)
        except ValueError:
            close = difflib.get_close_matches(unit, self.names, n=5)
            hint = f"; close matches: {close}" if close else ""
            shown = list(self.names[:12]) + (["..."] if len(self.names) > 12 else [])
            raise ValueError(f"no {self.kind} named {unit!r}{hint} (the {self.kind}s are {shown})") from None

    def indices(self, units: Iterable[str | int]) -> list[int]:
        """Columns of several units."""
        return [self.index(u) for u in units]


@dataclass(frozen=True)
class UnitReadout:
    """Which linear map reads the units, and through which of its input columns.

    Attributes:
        columns: for each unit (in :meth:`Bottleneck.units` order) the input columns of the
            reading linear map that carry it (one column for a concept probability, a block
            for a concept embedding).
        linear: the reading ``nn.Linear`` when it lies inside the bottleneck (a decoder that
            turns the units into the task output); None: the model's head reads ``z``, and
            the columns are columns of ``z``.
    """

    columns: tuple[tuple[int, ...], ...]
    linear: nn.Linear | None = None


class TextEncoder(Protocol):
    """What :meth:`Bottleneck.init_from_data` may receive as ``text``: sentences → vectors."""

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # pragma: no cover - protocol
        """``(len(texts), dim)`` embeddings."""
        ...


class Bottleneck(NamedConcepts, nn.Module):
    """Base class of every bottleneck: the contract, with a default for every hook.

    Subclasses set ``in_features`` and ``out_features`` and implement :meth:`forward`.

    ``forward(h, concepts=None, intervention_mask=None)``:

    * ``h`` — ``(batch, in_features)`` encoder features.
    * ``concepts`` — ``(batch, num_concepts)`` ground-truth concept values in ``[0, 1]``
      (NaN where unlabelled), given during training for methods that use them (CEM's
      random interventions, independent CBM) and at test time as intervention values.
    * ``intervention_mask`` — ``(batch, num_concepts)`` bool; where True, the predicted
      concept is replaced by the value in ``concepts``. Bottlenecks without concepts
      ignore both.
    """

    in_features: int
    out_features: int
    concept_names: list[str] | None = None
    #: True when ``z`` already is the task output (class logits / log-probabilities or the
    #: regression prediction): the model then uses no head of its own. A subclass may
    #: override it with a property when it depends on the configuration.
    predicts_task: bool = False
    #: Which features ``forward`` (and :meth:`init_from_data`) receives: ``"standardized"``
    #: — the model's training-set standardisation of the encoder output (the default) — or
    #: ``"encoder"`` — the encoder's own coordinates, for layers whose parameters live in the
    #: encoder's space (concept banks, text embeddings, CAVs): the model then does not
    #: standardise.
    feature_space: Literal["standardized", "encoder"] = "standardized"

    def forward(  # pragma: no cover - abstract
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        raise NotImplementedError

    # ------------------------------------------------------------------ units
    def units(self) -> Units:
        """The readable units. Default: the ``out_features`` dimensions of ``z``."""
        return Units("latent", tuple(f"z{i}" for i in range(self.out_features)))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        """``(batch, len(units()))`` activations of the units in an output. Default: ``out.z``."""
        return out.z

    @torch.no_grad()
    def read_units(self, h: Tensor, batch_size: int = 4096) -> Tensor:
        """Unit activations ``(n, n_units)`` for features ``h`` ``(n, in_features)``, in eval mode."""
        was = self.training
        self.eval()
        try:
            return torch.cat([self.unit_activations(self(h[s : s + batch_size])) for s in range(0, len(h), batch_size)])
        finally:
            self.train(was)

    # ----------------------------------------------------------------- losses
    def loss_terms(self, out: BottleneckOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every auxiliary loss of this step, unweighted, by name — the one loss channel.

        Args:
            out: this step's output.
            batch: the batch (``"y"``, ``"concepts"``, ...) for terms that need targets.

        Default: ``out.losses``. The model adds the task loss and weights each term.
        """
        return dict(out.losses)

    # -------------------------------------------------------------- optimiser
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with their own optimiser settings (each optimiser reads the keys it
        knows); every parameter not listed joins the model's default group. Default: none."""
        return []

    def training_defaults(self) -> dict[str, Any]:
        """Training settings measured for this method (``lr``, ``weight_decay``,
        ``lr_schedule``, ``warmup_fraction``, ``feature_scale``); the model uses them where its
        own option is left unset (None). Default: none (the model's lr 1e-3, no weight decay,
        cosine, per-feature z-scores)."""
        return {}

    # ------------------------------------------------------------------ stages
    def needs_data_init(self) -> bool:
        """True when :meth:`init_from_data` must run before training (k-means keys, ...)."""
        return False

    def init_from_data(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        y: Tensor | None = None,
        text: TextEncoder | None = None,
    ) -> None:
        """Data-dependent initialisation, called once by the model at the start of fitting
        when :meth:`needs_data_init` is True.

        Args:
            h: ``(n, in_features)`` a sample of training features, as the layer sees them.
            concepts: ``(n, num_concepts)`` their concept labels (NaN = unlabelled), when the
                data has them.
            y: ``(n,)`` their task targets.
            text: the paired text encoder, when the data names one (concept naming, CAV
                banks from sentences).
        """

    def side_channel(self) -> slice | None:
        """Columns of ``z`` that lie outside the readable units (a residual side channel).
        Leakage analysis ablates them. Default: None."""
        return None

    def side_channel_parameters(self) -> list[str]:
        """Names (relative to the bottleneck) of submodules that are not concept-supervised and
        train with the head in staged (sequential / independent) training. Default: none."""
        return []

    def concept_supervision(self) -> int | None:
        """How many labelled concept entries the layer saw while training; 0 means its
        concept units carry names but no meaning. None: not counted (no concepts)."""
        return None

    # ------------------------------------------------------------------ editing
    def unit_readout(self) -> UnitReadout | None:
        """How a linear map reads the units (head edits re-weight these columns), or None when
        no linear map reads them unit by unit (codes, a task output computed inside).

        Default: when the units are the default ones (``z``'s dimensions) and a head reads
        ``z``, unit ``i`` is column ``i`` of ``z``; otherwise None.
        """
        if type(self).units is Bottleneck.units and not self.predicts_task:
            return UnitReadout(tuple((i,) for i in range(self.out_features)))
        return None

    def unit_bank(self) -> Any | None:
        """The :class:`~bottlenecks.concepts.ConceptBank` the units are projections onto (post-hoc
        concept layers), or None when the units come from no bank. Bank edits
        (``replace_bank``) need it. Default: None."""
        return None

    def set_unit_bank(self, bank: Any, h: Tensor | None = None) -> None:
        """Make the units those of ``bank``.

        ``bank`` a ConceptBank: take its names and vectors (buffers resized when the number of
        units changes) and, with ``h`` (training features as the layer sees them), recompute
        what the layer derives from the vectors (unit statistics). ``bank`` a list of names:
        structure only (names, sizes; tensors kept when the size matches), for a restore that
        writes the tensors next. Default: an error (no bank)."""
        raise ValueError(
            f"{type(self).__name__} has no concept bank: its {self.units().kind}s are not projections onto "
            "named concept vectors (unit_bank() is None)"
        )

    def unit_gates(self) -> dict[str, Tensor]:
        """Switches that act on units at inference, by name (``"suppressed"``, ``"forced"``):
        bool ``(n_units,)`` copies, True where the switch is on. Default: none."""
        return {}

    def set_unit_gates(self, gates: dict[str, Tensor]) -> None:
        """Set the switches of :meth:`unit_gates` (every name it returns, same shapes); raise a
        clear error, changing nothing, when the combination is impossible."""
        raise ValueError(
            f"{type(self).__name__} has no switches to force or suppress its {self.units().kind}s "
            "(unit_gates() is empty)"
        )

    def _check_gates(self, gates: dict[str, Tensor], names: tuple[str, ...]) -> dict[str, Tensor]:
        """Validate gates for :meth:`set_unit_gates`: exactly ``names``, bool ``(n_units,)``."""
        n = len(self.units())
        if set(gates) != set(names):
            raise ValueError(f"{type(self).__name__} has gates {list(names)}, got {sorted(gates)}")
        out = {}
        for k, g in gates.items():
            g = torch.as_tensor(g)
            if g.dtype != torch.bool or tuple(g.shape) != (n,):
                raise ValueError(f"gate {k!r} must be a bool tensor of shape ({n},), got {g.dtype} {tuple(g.shape)}")
            out[k] = g
        return out

    def unit_table(self) -> Tensor | None:
        """The stored vector of every unit, ``(n_units, dim)``, as a view of the parameter or
        buffer that holds it (a key's value, a code's vector): writing into it edits the
        model. Default: None (the units store no vectors)."""
        return None

    # ------------------------------------------------------------- validation
    def check_input(self, h: Tensor) -> None:
        """Raise a clear error when ``h`` is not ``(batch, in_features)`` or holds NaN/inf."""
        if h.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects features of shape (batch, {self.in_features}), "
                f"got a tensor of shape {tuple(h.shape)}"
            )
        if h.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_features}-dimensional features but got "
                f"{h.shape[1]}; check that the encoder's output width matches the bottleneck's "
                "in_features"
            )
        # One pass, no copy (aminmax, not abs().max()): NaN or inf input gives a non-finite
        # extreme, and finite values so large (3e38) that sums and squared distances overflow
        # are caught by the larger magnitude. Under deferred checks the extremes of every
        # batch are folded into one pair on the device and read at the flush.
        if h.numel():
            self.check_soon("input range", torch.stack(torch.aminmax(h.detach())), self._raise_on_range,
                            lambda a, b: torch.stack([torch.minimum(a[0], b[0]), torch.maximum(a[1], b[1])]))

    def _raise_on_range(self, extremes: Tensor) -> None:
        lo, hi = extremes.tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{type(self).__name__} received features containing NaN or inf")
        peak = max(-lo, hi)
        if peak > MAX_FEATURE_MAGNITUDE:
            raise ValueError(
                f"{type(self).__name__} received features of magnitude {peak:.3g}, above the "
                f"{MAX_FEATURE_MAGNITUDE:.0e} that sums and squared distances survive in float32; "
                "rescale or standardise the features"
            )

    # ------------------------------------------------- host reads without a device sync
    # Reading a device value on the host (``bool(t.any())``, ``int(t)``, ``.item()``) makes the
    # host wait for the device. A training step on cached features is a few small kernels, so
    # on a GPU one such wait per step can cost as much as the step. Two tools keep them out of
    # the step: host copies of rarely changing buffers, and checks whose verdict is read later.
    @property
    def deferring_checks(self) -> bool:
        """True inside :func:`deferred_checks`: :meth:`check_soon` queues its checks, and the
        layer takes the branch-free (sync-free) path where it has one."""
        return self.__dict__.get("_defer_checks", False)

    def host_value(self, key: str, t: Tensor, read: Any) -> Any:
        """``read(t)`` (a host value: ``bool(t.any())``, ``int(t)``), read from the device only
        when ``t`` changed since the last read: the cache is keyed by ``t``'s identity and its
        version counter, which every in-place write (``copy_``, ``+=``, ``load_state_dict``)
        advances."""
        cache = self.__dict__.setdefault("_host_cache", {})
        stamp = (id(t), t.data_ptr(), t.device, t._version)
        hit = cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = read(t)
        cache[key] = (stamp, value)
        return value

    def host_increment(self, key: str, t: Tensor) -> int:
        """``t += 1`` for an integer step counter, returning the new count without reading the
        device (the host copy is kept in step with the counter)."""
        n = self.host_value(key, t, int) + 1
        t += 1
        self.__dict__["_host_cache"][key] = ((id(t), t.data_ptr(), t.device, t._version), n)
        return n

    def check_soon(self, key: str, value: Tensor, check: Any, combine: Any = None) -> None:
        """Run ``check(value)`` — a host-side check that reads ``value`` and raises (or warns) —
        now, or, inside :func:`deferred_checks`, at its end.

        Deferred, one entry per ``key`` is kept: ``combine(old, new)`` folds the values on the
        device (e.g. the running min/max of the inputs, so a bad batch is not forgotten), or the
        newest replaces it when ``combine`` is None.
        """
        if not self.deferring_checks:
            check(value)
            return
        pending = self.__dict__.setdefault("_pending_checks", {})
        if key in pending and combine is not None:
            value = combine(pending[key][0], value)
        pending[key] = (value, check)

    def flush_checks(self) -> None:
        """Run the checks queued by :meth:`check_soon` (one device sync when any are queued)."""
        pending = self.__dict__.pop("_pending_checks", None)
        for value, check in (pending or {}).values():
            check(value)


@contextmanager
def deferred_checks(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every :class:`Bottleneck` in ``module`` queues its host-side checks
    (:meth:`Bottleneck.check_soon`) and takes its sync-free path; at the end the checks run,
    so a bad batch still raises, once per block instead of once per call. ``enabled=False``:
    nothing changes. :class:`~bottlenecks.models.module.BottleneckModel` wraps each Lightning
    batch in this on accelerators (one device sync per batch of ``steps_per_batch`` steps).
    """
    layers = [m for m in module.modules() if isinstance(m, Bottleneck)] if enabled else []
    before = [m.__dict__.get("_defer_checks", False) for m in layers]
    outermost = not any(before)
    for m in layers:
        m.__dict__["_defer_checks"] = True
    try:
        yield
    except BaseException:
        if outermost:  # the block's own error is the one to report: drop the queued checks
            for m in layers:
                m.__dict__.pop("_pending_checks", None)
        raise
    finally:
        for m, b in zip(layers, before):
            m.__dict__["_defer_checks"] = b
    if outermost:
        for m in layers:
            m.flush_checks()


# --------------------------------------------------------------------- concept layers
def masked_concept_bce(logits: Tensor, target: Tensor, sync_free: bool = False) -> Tensor:
    """Binary cross-entropy over labelled concept entries only (NaN = unlabelled); 0 when none is.

    Args:
        logits: ``(batch, num_concepts)``.
        target: ``(batch, num_concepts)`` in ``[0, 1]`` or NaN.
        sync_free: weight unlabelled entries by 0 and divide the sum by the number labelled
            (no data-dependent branch or boolean index, so no device sync; the same value up
            to float rounding). Layers pass ``deferring_checks``.
    """
    labelled = ~torch.isnan(target)
    if sync_free:
        w = labelled.to(logits.dtype)
        total = F.binary_cross_entropy_with_logits(logits, target.nan_to_num(0.0), weight=w, reduction="sum")
        return total / w.sum().clamp_min(1.0)
    if labelled.all():  # the common case: no masked copies of logits and targets
        return F.binary_cross_entropy_with_logits(logits, target)
    if not labelled.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[labelled], target[labelled])


def check_intervention(
    shape: tuple[int, int], concepts: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor] | tuple[None, None]:
    """Validate an intervention and return ``(values, mask)`` ready to apply.

    Args:
        shape: ``(batch, num_concepts)`` of the layer's concept predictions.
        concepts: ``(batch, num_concepts)`` values in ``[0, 1]``; NaN entries are never used.
        mask: ``(batch, num_concepts)`` bool, or None for no intervention.

    Returns:
        ``(values, mask)`` with NaN values zeroed and masked out, or ``(None, None)``.
    """
    if mask is None:
        return None, None
    if concepts is None:
        raise ValueError("an intervention_mask was given without concept values to intervene with")
    if tuple(mask.shape) != tuple(shape) or tuple(concepts.shape) != tuple(shape):
        raise ValueError(
            f"intervention expects mask and values of shape {tuple(shape)} (batch, num_concepts), "
            f"got mask {tuple(mask.shape)} and values {tuple(concepts.shape)}"
        )
    return torch.nan_to_num(concepts), mask.bool() & ~torch.isnan(concepts)


def apply_intervention(probs: Tensor, concepts: Tensor | None, mask: Tensor | None) -> Tensor:
    """Replace ``probs`` ``(batch, num_concepts)`` by ``concepts`` where ``mask`` is True."""
    values, mask = check_intervention(tuple(probs.shape), concepts, mask)
    if mask is None:
        return probs
    return torch.where(mask, values.to(probs.dtype), probs)


class ConceptLayer(Bottleneck):
    """Base of the concept bottlenecks: named concept units and their supervision.

    * units: the named concepts, read as probabilities after intervention (``out.probs``);
    * :meth:`loss_terms` adds the concept BCE under :data:`CONCEPT_LOSS` when the batch has
      concept labels (NaN entries are skipped);
    * a persistent ``concept_labels_seen`` counter of the labelled entries seen while
      training (:meth:`concept_supervision`); interventions refuse a layer that saw none.

    Subclasses call :meth:`_init_concepts` in ``__init__`` and :meth:`_count_labels` in
    ``forward``, and return ``concepts`` (logits) and ``probs`` in their output.
    """

    def _init_concepts(self, concept_names: list[str] | None, num_concepts: int | None) -> list[str]:
        self.concept_names = resolve_concept_names(concept_names, num_concepts, type(self).__name__)
        self.register_buffer("concept_labels_seen", torch.zeros((), dtype=torch.long))
        return self.concept_names

    def _count_labels(self, concepts: Tensor | None) -> None:
        if self.training and concepts is not None:
            # (-1: "unknown", from an old checkpoint, stays -1; no host sync on the training step)
            seen = self.concept_labels_seen
            seen.add_((~torch.isnan(concepts)).sum().to(seen.device) * (seen >= 0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # Checkpoints written before the counter existed load with -1 ("unknown"), which the
        # intervention API does not refuse.
        key = prefix + "concept_labels_seen"
        if key not in state_dict:
            state_dict[key] = torch.tensor(-1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def units(self) -> Units:
        return Units("concept", tuple(self.concept_names or ()))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        if out.probs is None:
            raise ValueError(f"{type(self).__name__} returned no concept probabilities")
        return out.probs

    def loss_terms(self, out: BottleneckOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().loss_terms(out, batch)
        target = batch.get("concepts")
        if out.concepts is not None and target is not None:
            if tuple(target.shape) != tuple(out.concepts.shape):
                raise ValueError(
                    f"the batch's concepts have shape {tuple(target.shape)} but {type(self).__name__} "
                    f"predicts {tuple(out.concepts.shape)} (batch, num_concepts)"
                )
            terms[CONCEPT_LOSS] = masked_concept_bce(out.concepts, target, self.deferring_checks)
        return terms

    def concept_supervision(self) -> int | None:
        return int(self.concept_labels_seen)

    def unit_readout(self) -> UnitReadout | None:
        """Concept ``i`` is column ``i`` of ``z`` (``[concepts | residual]``) when a head reads it."""
        if self.predicts_task:
            return None
        return UnitReadout(tuple((i,) for i in range(self.n_concepts)))


def resolve_concept_names(
    concept_names: list[str] | None, num_concepts: int | None, owner: str
) -> list[str]:
    """The concept names of a concept layer given names, a count, or both (which must agree)."""
    if concept_names is None and num_concepts is None:
        raise ValueError(f"{owner} needs concept_names or num_concepts")
    n = len(concept_names) if concept_names is not None else int(num_concepts)  # type: ignore[arg-type]
    if num_concepts is not None and n != num_concepts:
        raise ValueError(f"{owner}: num_concepts={num_concepts} but {n} concept_names were given")
    return check_concept_names(concept_names, n)


def check_concept_list(names: Sequence[str], where: str = "the concept list") -> list[str]:
    """``names`` as a list of non-empty, unique strings, or a ValueError naming the problem.

    Two names count as the same concept when they differ only in case and spacing (``"Red"``
    and ``"red "``): concept lists from files and language models repeat concepts that way.
    """
    if isinstance(names, str):
        raise ValueError(f"{where} must be a list of concept names, got a single string {names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{where} is empty: it needs at least one concept")
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{where}: entries {bad[:5]} are empty or not strings ({[names[i] for i in bad[:5]]})")
    seen: dict[str, int] = {}
    dups = []
    for i, n in enumerate(names):
        key = " ".join(n.lower().split())
        if key in seen:
            dups.append(f"{names[seen[key]]!r} and {n!r} (entries {seen[key]} and {i})")
        seen.setdefault(key, i)
    if dups:
        raise ValueError(f"{where} repeats concepts: {', '.join(dups[:5])}; concept names must be unique")
    return names


def check_concept_names(names: list[str] | None, n: int, what: str = "concepts") -> list[str]:
    """Return concept names, generating ``c0..c{n-1}`` when none are given; check the count."""
    if names is None:
        return [f"c{i}" for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ValueError(f"{what} has {n} columns but the concept vocabulary has {len(names)} names")
    if len(set(names)) != len(names):
        dup = sorted({x for x in names if names.count(x) > 1})
        raise ValueError(f"concept names must be unique; repeated: {dup}")
    return names


def one_hot_units(codes: Tensor, n_units: int, offsets: Tensor | None = None) -> Tensor:
    """Activation table of discrete units: ``(batch, n_units)`` counts of each unit's index in
    ``codes`` ``(batch, slots)`` (plus a per-slot ``offsets`` ``(slots,)`` when each slot
    indexes its own block of units)."""
    idx = codes.reshape(codes.shape[0], -1)
    if offsets is not None:
        idx = idx + offsets.reshape(1, -1).to(idx.device)
    act = torch.zeros(idx.shape[0], n_units, device=idx.device)
    return act.scatter_add_(1, idx, torch.ones_like(idx, dtype=act.dtype))
