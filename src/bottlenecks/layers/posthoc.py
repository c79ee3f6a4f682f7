"""Post-hoc concept bottleneck (PCBM / PCBM-h, Yuksekgonul et al., 2023): project frozen
features onto a :class:`~bottlenecks.concepts.ConceptBank` and let a sparse linear head
read the projections; optionally a residual linear predictor on the features (PCBM-h).

Nothing in the projection trains: the concept vectors are a bank (CAVs, text
embeddings, a file). The head is fitted in closed form by a sparse elastic-net solver
(:mod:`bottlenecks.models.posthoc`); the residual trains afterwards with that head
frozen (through :meth:`side_channel_parameters`).

Per concept ``c`` with vector ``v_c`` and intercept ``b_c``, for encoder features ``h``:

* score ``s_c = (h · v_c + b_c) / ||v_c||`` — PCBM's projection (signed distance to the
  concept's hyperplane);
* unit ``u_c = (s_c − mean_c) / std_c`` with training-set statistics — what the head
  reads (an affine map per unit, so a linear head on ``u`` is a linear head on ``s``,
  and the sparse solver sees well-scaled inputs);
* concept logit: for a bank with intercepts (CAVs, logistic by construction) the CAV's
  own logit ``h · v_c + b_c``, so ``sigmoid`` is the CAV's probability that the concept
  is present; for banks without (text, plain vectors) the standardised score ``u_c``.

An intervention sets a concept's probability ``p``; the unit the head reads becomes
``p · on_c + (1 − p) · off_c``, where ``on_c`` / ``off_c`` are the unit's mean over
training examples the layer scores as present / absent.

Shapes: ``h (batch, in_features)`` → ``z (batch, num_concepts [+ num_classes])`` laid out
``[concept units | residual logits]``; ``concepts`` logits and ``probs`` ``(batch, num_concepts)``.

The layer reads the encoder's own coordinates (``feature_space = "encoder"``: the bank's
vectors live there), so the model does not standardise features in front of it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks.layers.base import BottleneckOutput, ConceptLayer, TextEncoder, check_intervention

__all__ = ["PosthocConceptBottleneck"]


class PosthocConceptBottleneck(ConceptLayer):
    """Concept units = projections of the features onto a concept bank's named vectors.

    The bank comes from one of (exactly one, or none for CAVs):

    * ``bank`` — a file written by :meth:`ConceptBank.save`;
    * ``concept_set`` — a concept-set file (LaBo ``class2concepts.json``, Label-free CBM
      ``.txt``, CSV); its sentences are embedded by the data's text encoder when fitting
      starts (``data.text_encoder``; it must share the image encoder's space);
    * neither — concept activation vectors learned, when fitting starts, from the training
      features and the data's concept labels (one batched solve, :func:`learn_cavs`).

    Args:
        in_features: width of the encoder features (linked from the data).
        bank: path of a concept-bank file.
        concept_set: path of a concept-set file (text route).
        concept_names: the data's concept names (linked from the data). With a bank or a
            concept set that names the same concepts, the units follow the data's order;
            other names are an error (the data's concept labels would not describe the units).
        residual: PCBM-h — add a residual linear predictor of the ``num_classes`` logits on
            the features, read by the head next to the concepts (:meth:`side_channel`).
        num_classes: number of classes (linked from the data); needed with ``residual``.
        encoder: the data's image encoder spec (linked from the data); a bank built on
            another encoder is refused.
        cav_l2, cav_min_examples, min_cav_accuracy: CAV settings (:meth:`ConceptBank.from_cavs`).

    From Python, :meth:`from_bank` builds the layer around a :class:`ConceptBank`.
    """

    feature_space = "encoder"

    def __init__(
        self,
        in_features: int,
        bank: str | None = None,
        concept_set: str | None = None,
        concept_names: list[str] | None = None,
        residual: bool = False,
        num_classes: int | None = None,
        encoder: str | dict[str, Any] | None = None,
        cav_l2: float = 1e-2,
        cav_min_examples: int = 5,
        min_cav_accuracy: float = 0.6,
    ) -> None:
        super().__init__()
        from bottlenecks.concepts import ConceptBank, encoder_id, load_concept_set

        if bank is not None and concept_set is not None:
            raise ValueError("PosthocConceptBottleneck takes a bank file or a concept_set file, not both")
        self.in_features = int(in_features)
        self.cav_l2, self.cav_min_examples, self.min_cav_accuracy = cav_l2, cav_min_examples, min_cav_accuracy
        self._bank: ConceptBank | None = None
        self._texts: list[str] | None = None
        self._has_intercepts = False
        self._encoder_id = None if encoder is None else encoder_id(encoder)
        if bank is not None:
            self._bank = ConceptBank.load(bank)
            self.source = "file"
            names = self._bank.names
        elif concept_set is not None:
            cs = load_concept_set(concept_set)
            self.source = "text"
            names, self._texts = cs.concepts, cs.texts
        else:
            if not concept_names:
                raise ValueError(
                    "PosthocConceptBottleneck needs a bank file, a concept_set file, or data with concept labels "
                    "(concept_names) to learn concept activation vectors from"
                )
            self.source = "cav"
            names = list(concept_names)
        names = self._align(names, concept_names)
        self._init_concepts(names, None)
        n = len(names)
        if self._bank is not None:
            self._bank = self._bank.select(names)
        if self._texts is not None and concept_set is not None:
            order = {c: t for c, t in zip(cs.concepts, cs.texts)}
            self._texts = [order[c] for c in names]
        self.residual_logits = bool(residual)
        if residual and (num_classes is None or num_classes < 2):
            raise ValueError("PCBM-h (residual=True) needs num_classes >= 2 (linked from the data)")
        k = int(num_classes) if residual else 0
        self.out_features = n + k
        for name, size in (("vectors", (n, self.in_features)), ("intercepts", (n,)), ("score_mean", (n,)),
                           ("score_std", (n,)), ("logit_scale", (n,)), ("logit_shift", (n,)),
                           ("on_value", (n,)), ("off_value", (n,))):
            self.register_buffer(name, torch.zeros(size))
        self.register_buffer("cav_accuracy", torch.full((n,), float("nan")))
        self.register_buffer("fitted", torch.tensor(False))
        self.residual = nn.Linear(self.in_features, k) if residual else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)
            nn.init.zeros_(self.residual.bias)
            self.register_buffer("feature_mean", torch.zeros(self.in_features))
            self.register_buffer("feature_std", torch.ones(self.in_features))
        if self._bank is not None:
            self._set_bank(self._bank)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_bank(
        cls,
        bank: Any,
        residual: bool = False,
        num_classes: int | None = None,
        encoder: str | dict[str, Any] | None = None,
        concept_names: list[str] | None = None,
    ) -> PosthocConceptBottleneck:
        """The layer around a :class:`ConceptBank` (its names are the units)."""
        names = list(concept_names) if concept_names is not None else list(bank.names)
        layer = cls(bank.dim, concept_names=names, residual=residual, num_classes=num_classes, encoder=encoder)
        layer.source = "bank"
        layer._set_bank(bank.select(layer._align(bank.names, names)))
        return layer

    def _align(self, names: list[str], data_names: list[str] | None) -> list[str]:
        if data_names is None or list(names) == list(data_names):
            return list(names)
        if set(names) == set(data_names):
            return list(data_names)
        only_bank = [n for n in names if n not in data_names]
        only_data = [n for n in data_names if n not in names]
        raise ValueError(
            f"the concept bank's concepts differ from the data's concept labels: {only_bank[:5]} are only in the "
            f"bank, {only_data[:5]} only in the data. The data's labels would not describe the units; use a bank "
            "of the data's concepts, or data without concept labels"
        )

    def _set_bank(self, bank: Any) -> None:
        bank.check_dim(self.in_features, "the encoder features")
        bank.check_encoder(self._encoder_id, "the data's encoder")
        self.vectors.copy_(bank.vectors)
        self.intercepts.copy_(bank.intercepts if bank.intercepts is not None else torch.zeros(len(bank)))
        if bank.accuracy is not None:
            self.cav_accuracy.copy_(bank.accuracy)
        self._has_intercepts = bank.intercepts is not None
        n_labels = bank.info.get("n_labels")
        self.concept_labels_seen.fill_(int(n_labels) if isinstance(n_labels, (int, float)) else -1)
        self._bank = bank

    def concept_bank(self) -> Any:
        """The layer's vectors as a :class:`ConceptBank` (after fitting has built them)."""
        from bottlenecks.concepts import ConceptBank

        if not bool(self.vectors.abs().sum() > 0):
            raise ValueError("the concept vectors are not built yet: fitting builds them from the data")
        return ConceptBank(self.concept_names, self.vectors.clone(), encoder_id=self._encoder_id,
                           intercepts=self.intercepts.clone(), accuracy=self.cav_accuracy.clone(), source=self.source)

    # ------------------------------------------------------------------ bank edits
    _BANK_BUFFERS = ("vectors", "intercepts", "score_mean", "score_std", "logit_scale", "logit_shift",
                     "on_value", "off_value", "cav_accuracy")

    def unit_bank(self) -> Any:
        """The layer's concept bank (:meth:`concept_bank`)."""
        return self.concept_bank()

    @torch.no_grad()
    def set_unit_bank(self, bank: Any, h: Tensor | None = None) -> None:
        """Swap the concept vectors for ``bank``'s (see :meth:`Bottleneck.set_unit_bank`). The
        buffers change shape when the number of concepts does; the residual (PCBM-h) and its
        feature statistics are not touched."""
        from bottlenecks.concepts import ConceptBank

        from bottlenecks.layers.base import check_concept_names

        is_bank = isinstance(bank, ConceptBank)
        names = check_concept_names(list(bank.names if is_bank else bank), len(bank.names if is_bank else bank))
        if is_bank:
            bank.check_dim(self.in_features, "the encoder features")
            bank.check_encoder(self._encoder_id, "the data's encoder")
        n = len(names)
        if self.vectors.shape[0] != n:  # tensors get their new size (zeros, NaN accuracies) before being written
            for name in self._BANK_BUFFERS:
                old = getattr(self, name)
                fill = float("nan") if name == "cav_accuracy" else 0.0
                old.data = torch.full((n, *old.shape[1:]), fill, dtype=old.dtype, device=old.device)
        self.concept_names = names
        self.out_features = n + (self.residual.out_features if self.residual is not None else 0)
        if not is_bank:
            return
        self.cav_accuracy.fill_(float("nan"))
        self._set_bank(bank)
        if h is not None:
            self._unit_statistics(h.float())

    # ------------------------------------------------------------------ contract
    def needs_data_init(self) -> bool:
        return not bool(self.fitted)

    @torch.no_grad()
    def init_from_data(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        y: Tensor | None = None,
        text: TextEncoder | None = None,
    ) -> None:
        """Build the vectors (CAVs from ``concepts``, or text embeddings from ``text``) unless a
        bank gave them, then the units' training-set statistics."""
        from bottlenecks.concepts import ConceptBank

        h = h.float()
        self.check_input(h)
        if self._bank is None:
            if self.source == "cav":
                if concepts is None:
                    raise ValueError(
                        "PosthocConceptBottleneck learns concept activation vectors from concept labels, but the "
                        "training data has none; give a bank file or a concept_set file instead"
                    )
                bank = ConceptBank.from_cavs(h.cpu(), concepts.cpu(), self.concept_names, encoder_id=self._encoder_id,
                                             l2=self.cav_l2, min_examples=self.cav_min_examples,
                                             min_accuracy=self.min_cav_accuracy)
            else:
                if text is None:
                    raise ValueError(
                        "PosthocConceptBottleneck embeds its concept_set's sentences with the data's text encoder, "
                        "but the data names none: set data.init_args.text_encoder (one that shares the image "
                        "encoder's space, e.g. open_clip's text tower)"
                    )
                bank = ConceptBank.from_text(self.concept_names, text, sentences=self._texts,
                                             encoder_id=self._encoder_id, dim=self.in_features)
            self._set_bank(bank)
        n, d = h.shape
        k = self.num_concepts
        if k > d:
            warnings.warn(
                f"{k} concepts but {d}-dimensional features: the projections are linearly dependent "
                "(more concepts than the feature space can separate)", stacklevel=2)
        if k >= n:
            warnings.warn(f"{k} concepts but only {n} training examples to fit the head on: more concepts than the "
                          "data can support; expect an overfit head", stacklevel=2)
        self._unit_statistics(h)
        if self.residual is not None:
            self.feature_mean.copy_(h.mean(0))
            self.feature_std.copy_(h.std(0).clamp_min(1e-6))
        self.fitted.fill_(True)

    @torch.no_grad()
    def _unit_statistics(self, h: Tensor) -> None:
        """What the layer derives from its vectors on training features ``h``: the units'
        mean and std, the concept-logit affine map, the on/off values of interventions."""
        dev = h.device
        s = self._scores(h)
        mean, std = s.mean(0), s.std(0).clamp_min(1e-6)
        self.score_mean.copy_(mean)
        self.score_std.copy_(std)
        if self._has_intercepts:  # CAVs: the logistic classifier's own logit
            self.logit_scale.copy_(self.vectors.norm(dim=1))
            self.logit_shift.zero_()
        else:
            self.logit_scale.copy_(1.0 / std)
            self.logit_shift.copy_(-mean / std)
        u = (s - mean) / std
        present = (s * self.logit_scale + self.logit_shift) > 0
        cnt_on, cnt_off = present.sum(0), (~present).sum(0)
        on = torch.where(present, u, torch.zeros_like(u)).sum(0) / cnt_on.clamp_min(1)
        off = torch.where(~present, u, torch.zeros_like(u)).sum(0) / cnt_off.clamp_min(1)
        self.on_value.copy_(torch.where(cnt_on > 0, on, torch.ones_like(on)).to(dev))
        self.off_value.copy_(torch.where(cnt_off > 0, off, -torch.ones_like(off)).to(dev))

    def _scores(self, h: Tensor) -> Tensor:
        v = self.vectors
        return (h @ v.T + self.intercepts) / v.norm(dim=1).clamp_min(1e-12)

    def forward(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        self.check_input(h)
        if not bool(self.fitted):
            raise RuntimeError(
                "PosthocConceptBottleneck has no concept statistics yet: fit the model (or call init_from_data "
                "with training features) first"
            )
        s = self._scores(h)
        u = (s - self.score_mean) / self.score_std
        logits = s * self.logit_scale + self.logit_shift
        probs = torch.sigmoid(logits)
        values, mask = check_intervention(tuple(probs.shape), concepts, intervention_mask)
        if mask is not None:
            p = values.to(probs.dtype)
            probs = torch.where(mask, p, probs)
            u = torch.where(mask, p * self.on_value + (1 - p) * self.off_value, u)
        z = u
        if self.residual is not None:
            z = torch.cat([u, self.residual((h - self.feature_mean) / self.feature_std)], dim=-1)
        return BottleneckOutput(z=z, concepts=logits, probs=probs)

    def side_channel(self) -> slice | None:
        return slice(self.num_concepts, self.out_features) if self.residual is not None else None

    def side_channel_parameters(self) -> list[str]:
        return ["residual"] if self.residual is not None else []
