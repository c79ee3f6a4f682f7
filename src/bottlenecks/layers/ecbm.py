"""Energy-based concept bottleneck models (ECBM; Xu et al., 2024).

Three energy networks score candidate (input, concepts, label) tuples; low energy
means compatible:

* **class energy** ``E_class(x, y)`` — an MLP on ``[h, u_y]`` with a learned embedding
  ``u_y`` per class; ``p(y | x) ∝ exp(−E_class(x, y))``.
* **concept energy** ``E_concept(x, c) = Σ_k E_k(x, c_k)`` — an MLP on ``[h, v_k(c_k)]``
  with a positive and a negative embedding per concept,
  ``v_k(c) = c v_k⁺ + (1 − c) v_k⁻``; ``p(c_k | x) ∝ exp(−E_k(x, c_k))``.
* **global energy** ``E_global(c, y)`` — an MLP on ``[v_1(c_1), …, v_K(c_K), u_y]``: the
  joint compatibility of a whole concept vector with a label, which is where
  concept–concept and concept–label dependencies live.

Training minimises the three negative log-likelihoods (the paper's
``L_class + λ_c L_concept + λ_g L_global``; they are returned by
:meth:`EnergyConceptBottleneck.loss_terms` and weighted by the model's
``loss_weights`` under the names ``class_nll``, ``concept_nll`` and ``global_nll``).
For ``L_global`` we normalise over *all* (concept vector, label) pairs, so the global
energy is a proper joint model ``p(c, y) ∝ exp(−E_global(c, y))`` of the training
labels; when the ``2^K · M`` pairs are too many to enumerate we use the
pseudo-likelihood ``−log p(y | c) − Σ_k log p(c_k | c_−k, y)`` instead.

Prediction combines the energies,
``E(x, c, y) = E_class(x, y) + λ_c E_concept(x, c) + λ_g E_global(c, y)``, into the
posterior ``p(c, y | x) ∝ exp(−E(x, c, y))``:

* ``inference="exact"`` enumerates every (c, y) pair (small K, e.g. 10 concepts × 9
  classes = 9216 pairs) and returns exact marginals ``p(y | x)`` and ``p(c_k | x)``.
* ``inference="mean_field"`` (chosen by ``"auto"`` when the pairs are too many, e.g.
  CUB's 112 concepts) is label-conditioned mean field: for every label ``y`` a factorised
  ``q(c | y) = Π_k q_k(c_k | y)`` is fitted by damped fixed-point updates
  ``q_k ← σ(−λ_c ΔE_k(x) − λ_g ∂E_global(q, y)/∂q_k − Δevidence_k)``, and the label
  posterior is ``q(y) ∝ exp(−F_y)`` with ``F_y`` the mean-field free energy of label ``y``.
  Because every label gets its own concept beliefs, an intervention moves the label and
  the concepts that go with it *together*: fixing ``red`` raises ``circle`` when they
  co-occur, where a single relaxed ``(q(c), q(y))`` stays stuck (below).
* ``inference="gradient"`` minimises the mean-field free energy over relaxed
  concepts ``q(c_k) ∈ [0, 1]`` and a relaxed label ``q(y)`` by gradient descent (the
  paper's energy minimisation over relaxed variables, plus the entropy terms that
  keep the outputs probabilities). It is local: it keeps fixed values but does not carry
  an intervention across the energy barrier between labels.

An **intervention** fixes some concepts and re-infers the rest, so a correction
*propagates*: fixing one concept changes the predicted probabilities of the
concepts that co-occur with it, and the label. Values of exactly 0 or 1 are hard
evidence; a value ``v`` strictly between acts as soft evidence with likelihood
``v : (1 − v)`` (exact and mean-field inference) or is held fixed at ``v`` (gradient
inference).

The head of a :class:`~bottlenecks.models.module.BottleneckModel` over this
bottleneck is the identity: ``z`` already is ``log p(y | x)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.naming import accepts_renamed
from bottlenecks.layers.base import BottleneckOutput, ConceptLayer, check_intervention, masked_concept_bce

_LOGIT_CLAMP = 50.0


def _row_mean(v: Tensor, w: Tensor | None) -> Tensor:
    """The mean of ``v`` ``(b, ...)``; with row weights ``w`` ``(b,)``, the weighted mean of its
    row means (0 when every weight is 0)."""
    if w is None:
        return v.mean()
    rows = v.reshape(v.shape[0], -1).mean(-1)
    return (rows * w).sum() / w.sum().clamp_min(1.0)


def _masked_logsumexp(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """``logsumexp`` of ``x`` over the entries where ``mask`` is True (−inf if none)."""
    return torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=dim)


class EnergyConceptBottleneck(ConceptLayer):
    """Energy-based concept bottleneck: class, concept and global energies; joint inference.

    Args:
        in_features: width of the encoder features.
        num_classes: number of classes ``M`` (the bottleneck predicts the label itself).
        concept_names: names of the ``K`` concepts (linked from the data by the CLI).
        num_concepts: number of concepts when no names are given.
        embedding_dim: width of the concept embeddings ``v_k^±`` and class embeddings ``u_y``.
        hidden: hidden width of the energy MLPs.
        concept_weight: ``λ_c``, weight of the concept energy in the total energy.
        global_weight: ``λ_g``, weight of the global energy in the total energy.
        inference: ``"exact"`` (enumerate all (c, y) pairs), ``"mean_field"``
            (label-conditioned mean field; propagates interventions at any size),
            ``"gradient"`` (relaxed free-energy minimisation, the paper's) or ``"auto"``
            (exact when ``2^K · M <= max_configs``, else mean field).
        global_objective: ``"exact"`` (normalise over all pairs), ``"pseudo_likelihood"``
            or ``"auto"`` (exact when enumerable).
        max_configs: the largest ``2^K · M`` that ``"auto"`` still enumerates.
        gradient_steps, gradient_lr: iterations and Adam step size of gradient inference.
        mean_field_steps, mean_field_damping: fixed-point iterations of mean-field inference
            and the share of each update taken (1 = undamped).
        mean_field_update: how mean field measures the global energy's pull on concept
            ``k``: ``"difference"`` evaluates ``E_global`` with ``c_k`` set to 1 and to 0 (the
            others at their means; closer to exact) or ``"gradient"`` its derivative (a
            linearisation, ``num_concepts`` times cheaper per step).
        global_activation: hidden units of the global energy MLP: ``"relu"``, ``"softplus"``
            or ``"auto"`` (softplus under the pseudo-likelihood, ReLU under the exact
            objective). Measured on grouped, class-determined concepts (10 classes, 100
            full-batch epochs, lr 3e-2): with ReLU, at 112 concepts most hidden units died
            early and the global energy could not name the label from the true concepts
            (0.18-0.59 over seeds, 1.00 with softplus); at 16 and 48 concepts ReLU named it but
            revealing half the groups raised accuracy by 0.19-0.28, against 0.26-0.55 with
            softplus. Under the exact objective every pair enters the partition function and
            ReLU learned the sharper coupling that carries interventions sooner (on the
            co-occurrence test set, fixing ``red`` raised ``circle`` by 0.67 after 6 epochs
            with ReLU, 0.09 with softplus).

    Shapes: ``h (batch, in_features)`` → ``z = log p(y | x)`` ``(batch, num_classes)``;
    ``concepts`` the logits of ``p(c_k = 1 | x)`` ``(batch, num_concepts)``;
    ``probs`` those probabilities after intervention ``(batch, num_concepts)``,
    ``extras["class_energy"]`` ``(batch, num_classes)``, ``extras["concept_energy"]``
    ``(batch, num_concepts, 2)`` (energy of ``c_k = 0`` and ``c_k = 1``).

    Example::

        b = EnergyConceptBottleneck(1280, num_classes=9, concept_names=names)
        out = b(h)                                  # out.z: (batch, 9) log-probabilities
        mask = torch.zeros(len(h), 10, dtype=torch.bool); mask[:, 0] = True
        b(h, concepts=torch.ones(len(h), 10), intervention_mask=mask)  # c_0 := 1, propagated
    """

    #: The bottleneck's ``z`` is the task output; the model's default head is the identity.
    predicts_task = True

    @accepts_renamed
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        concept_names: list[str] | None = None,
        num_concepts: int | None = None,
        embedding_dim: int = 16,
        hidden: int = 64,
        concept_weight: float = 1.0,
        global_weight: float = 1.0,
        inference: Literal["auto", "exact", "mean_field", "gradient"] = "auto",
        global_objective: Literal["auto", "exact", "pseudo_likelihood"] = "auto",
        max_configs: int = 65536,
        gradient_steps: int = 100,
        gradient_lr: float = 0.1,
        mean_field_steps: int = 30,
        mean_field_damping: float = 0.5,
        mean_field_update: Literal["difference", "gradient"] = "gradient",
        global_activation: Literal["auto", "relu", "softplus"] = "auto",
    ) -> None:
        super().__init__()
        n = len(self._init_concepts(concept_names, num_concepts))
        if num_classes is None or num_classes < 2:
            raise ValueError(f"EnergyConceptBottleneck needs num_classes >= 2, got {num_classes}")
        if inference not in ("auto", "exact", "mean_field", "gradient"):
            raise ValueError(
                f"inference must be 'auto', 'exact', 'mean_field' or 'gradient', got {inference!r}"
            )
        if mean_field_update not in ("difference", "gradient"):
            raise ValueError(f"mean_field_update must be 'difference' or 'gradient', got {mean_field_update!r}")
        if int(mean_field_steps) < 1:
            raise ValueError(f"mean_field_steps must be >= 1, got {mean_field_steps}")
        if not 0.0 < float(mean_field_damping) <= 1.0:
            raise ValueError(f"mean_field_damping must lie in (0, 1], got {mean_field_damping}")
        if global_objective not in ("auto", "exact", "pseudo_likelihood"):
            raise ValueError(
                f"global_objective must be 'auto', 'exact' or 'pseudo_likelihood', got {global_objective!r}"
            )
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.out_features = self.num_classes
        self.concept_weight = float(concept_weight)
        self.global_weight = float(global_weight)
        self.max_configs = int(max_configs)
        enumerable = (2**n) * self.num_classes <= self.max_configs
        if inference == "exact" and not enumerable:
            raise ValueError(
                f"exact inference enumerates 2^{n} * {self.num_classes} = {(2**n) * self.num_classes} "
                f"(concepts, label) pairs, more than max_configs={self.max_configs}; use "
                "inference='mean_field' or raise max_configs"
            )
        if global_objective == "exact" and not enumerable:
            raise ValueError(
                f"the exact global objective enumerates 2^{n} * {self.num_classes} pairs, more than "
                f"max_configs={self.max_configs}; use global_objective='pseudo_likelihood'"
            )
        self.inference = "exact" if inference == "auto" and enumerable else inference
        if self.inference == "auto":
            self.inference = "mean_field"
        self.global_objective = (
            ("exact" if enumerable else "pseudo_likelihood") if global_objective == "auto" else global_objective
        )
        if global_activation not in ("auto", "relu", "softplus"):
            raise ValueError(f"global_activation must be 'auto', 'relu' or 'softplus', got {global_activation!r}")
        self.global_activation = (
            ("softplus" if self.global_objective == "pseudo_likelihood" else "relu")
            if global_activation == "auto" else global_activation
        )
        self.gradient_steps = int(gradient_steps)
        self.gradient_lr = float(gradient_lr)
        self.mean_field_steps = int(mean_field_steps)
        self.mean_field_damping = float(mean_field_damping)
        self.mean_field_update = mean_field_update

        d, H, K, M = int(embedding_dim), int(hidden), n, self.num_classes
        self.concept_embeddings = nn.Parameter(torch.randn(K, 2, d) / math.sqrt(d))  # [:, 0] = v⁻, [:, 1] = v⁺
        self.class_embeddings = nn.Parameter(torch.randn(M, d) / math.sqrt(d))
        # class energy: MLP([h, u_y]) with one hidden layer
        self.class_h = nn.Linear(self.in_features, H)
        self.class_u = nn.Linear(d, H, bias=False)
        self.class_out = nn.Linear(H, 1)
        # concept energy: MLP([h, v_k(c_k)]), shared over concepts
        self.concept_h = nn.Linear(self.in_features, H)
        self.concept_v = nn.Linear(d, H, bias=False)
        self.concept_out = nn.Linear(H, 1)
        # global energy: MLP([v_1(c_1), ..., v_K(c_K), u_y]) with two hidden layers; the first
        # layer's weight is split per concept slot so relaxed/enumerated inputs stay linear.
        self.global_v = nn.Parameter(torch.randn(K, d, H) / math.sqrt(K * d))
        self.global_u = nn.Linear(d, H)
        act = {"relu": nn.ReLU, "softplus": nn.Softplus}[self.global_activation]
        self.global_mlp = nn.Sequential(act(), nn.Linear(H, H), act(), nn.Linear(H, 1))

    # ---------------------------------------------------------------- energies
    def class_energy(self, h: Tensor) -> Tensor:
        """``E_class(x, y)`` for every class: ``(batch, num_classes)``."""
        a = self.class_h(h)  # (b, H)
        u = self.class_u(self.class_embeddings)  # (M, H)
        return self.class_out(F.relu(a[:, None, :] + u[None])).squeeze(-1)

    def concept_energy(self, h: Tensor) -> Tensor:
        """``E_k(x, c_k)`` for ``c_k = 0`` and ``1``: ``(batch, num_concepts, 2)``."""
        a = self.concept_h(h)  # (b, H)
        v = self.concept_v(self.concept_embeddings)  # (K, 2, H)
        return self.concept_out(F.relu(a[:, None, None, :] + v[None])).squeeze(-1)

    def _global_slots(self) -> Tensor:
        """First-layer contribution of each concept slot in each state: ``(K, 2, H)``."""
        return torch.einsum("ksd,kdh->ksh", self.concept_embeddings, self.global_v)

    def global_energy(self, c: Tensor, y: Tensor) -> Tensor:
        """``E_global(c, y)`` for (relaxed) concepts and labels.

        Args:
            c: ``(..., num_concepts)`` concept values in ``[0, 1]``.
            y: ``(..., num_classes)`` label probabilities (one-hot for a hard label).

        Returns:
            ``(...)`` energies.
        """
        slots = self._global_slots()
        pre = slots[:, 0].sum(0) + c @ (slots[:, 1] - slots[:, 0]) + self.global_u(y @ self.class_embeddings)
        return self.global_mlp(pre).squeeze(-1)

    def global_energy_table(self) -> Tensor:
        """``E_global(c, y)`` for every binary concept vector and label: ``(2^K, num_classes)``.

        Row ``i`` is the concept vector whose bit ``k`` is ``c_k`` (see :meth:`configs`).
        """
        self._require_enumerable("the global energy table")
        slots = self._global_slots()
        pre_c = slots[:, 0].sum(0) + self.configs() @ (slots[:, 1] - slots[:, 0])  # (N, H)
        pre_y = self.global_u(self.class_embeddings)  # (M, H)
        return self.global_mlp(pre_c[:, None, :] + pre_y[None]).squeeze(-1)

    # ----------------------------------------------------------- enumeration
    @property
    def enumerable(self) -> bool:
        return (2**self.num_concepts) * self.num_classes <= self.max_configs

    def _require_enumerable(self, what: str) -> None:
        if not self.enumerable:
            raise ValueError(
                f"{what} needs all 2^{self.num_concepts} * {self.num_classes} (concepts, label) pairs, "
                f"more than max_configs={self.max_configs}"
            )

    def configs(self) -> Tensor:
        """All binary concept vectors ``(2^K, K)``; row ``i`` has bit ``k`` of ``i`` in column ``k``."""
        K = self.num_concepts
        idx = torch.arange(2**K, device=self.class_embeddings.device)
        bits = (idx[:, None] >> torch.arange(K, device=idx.device)) & 1
        return bits.to(self.class_embeddings.dtype)

    @staticmethod
    def config_index(c: Tensor) -> Tensor:
        """Row of :meth:`configs` for binary concept vectors ``(batch, K)`` → ``(batch,)``."""
        K = c.shape[-1]
        weights = 2 ** torch.arange(K, device=c.device)
        return (c.round().long() * weights).sum(-1)

    # --------------------------------------------------------------- forward
    def training_defaults(self) -> dict[str, object]:
        # Measured by benchmarks/sweep_defaults.py (docs/defaults.md).
        return {"lr": 0.01, "weight_decay": 1e-4}

    def forward(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        intervention_mask: Tensor | None = None,
    ) -> BottleneckOutput:
        self.check_input(h)
        self._count_labels(concepts)
        values, mask = check_intervention((h.shape[0], self.num_concepts), concepts, intervention_mask)
        if values is not None:
            values = values.to(h.dtype)
        e_cls = self.class_energy(h)
        e_con = self.concept_energy(h)
        extras: dict = {"class_energy": e_cls, "concept_energy": e_con}
        if self.inference == "exact":
            table = self.global_energy_table()
            log_py, logits = self._infer_exact(e_cls, e_con, table, values, mask)
            if self.training:
                extras["global_energy_table"] = table
        elif self.training:
            # Relaxed inference is an inner optimisation; while training, the prediction is the
            # class energy's and the concepts are the concept energies' (their own likelihoods).
            log_py = F.log_softmax(-e_cls, dim=-1)
            logits = e_con[..., 0] - e_con[..., 1]
        elif self.inference == "mean_field":
            log_py, logits = self._infer_mean_field(e_cls, e_con, values, mask)
        else:
            log_py, logits = self._infer_gradient(e_cls, e_con, values, mask)
        probs = torch.sigmoid(logits)
        if mask is not None:
            probs = torch.where(mask, values, probs)
        return BottleneckOutput(
            z=log_py, concepts=logits.clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP), probs=probs, extras=extras
        )

    def _infer_exact(
        self, e_cls: Tensor, e_con: Tensor, table: Tensor, values: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Exact marginals by enumeration, in batch chunks of bounded memory."""
        C = self.configs()  # (N, K)
        N, M = table.shape
        chunk = max(1, (1 << 22) // (N * M))
        log_pys, logits = [], []
        on = C.bool().T  # (K, N)
        for s in range(0, e_cls.shape[0], chunk):
            ec, ek = e_cls[s : s + chunk], e_con[s : s + chunk]
            concept_e = ek[..., 0].sum(-1, keepdim=True) + (ek[..., 1] - ek[..., 0]) @ C.T  # (b, N)
            log_joint = (
                -ec[:, None, :] - self.concept_weight * concept_e[:, :, None] - self.global_weight * table[None]
            )  # (b, N, M)
            if mask is not None:
                v, m = values[s : s + chunk], mask[s : s + chunk].to(C.dtype)
                # log-likelihood of the evidence: log v if c_k = 1 else log(1 - v), on masked concepts
                # (clamped so that hard evidence gives weight exp(-1e4) = 0 without inf * 0 = nan)
                log_v = torch.log(v).clamp_min(-1e4) * m
                log_1mv = torch.log1p(-v).clamp_min(-1e4) * m
                evidence = log_v @ C.T + log_1mv @ (1 - C).T  # (b, N)
                log_joint = log_joint + evidence[:, :, None]
            log_z = torch.logsumexp(log_joint.flatten(1), dim=-1)  # (b,)
            log_pys.append(torch.logsumexp(log_joint, dim=1) - log_z[:, None])
            log_pc = torch.logsumexp(log_joint, dim=2)  # (b, N)
            lp_on = _masked_logsumexp(log_pc[:, None, :], on[None], dim=-1)  # (b, K)
            lp_off = _masked_logsumexp(log_pc[:, None, :], ~on[None], dim=-1)
            logits.append(lp_on - lp_off)
        return torch.cat(log_pys), torch.cat(logits)

    def _infer_mean_field(
        self, e_cls: Tensor, e_con: Tensor, values: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Label-conditioned mean field: one factorised ``q(c | y)`` per label, then ``q(y)``.

        For label ``y`` the free energy of ``q(c | y) = Π_k Bern(μ_yk)`` is::

            F_y(μ) = E_class(x, y) + Σ_k [μ_yk U_k(1) + (1 − μ_yk) U_k(0)]
                     + λ_g E_global(μ_y, y) − Σ_k H(μ_yk)

        with unary energies ``U_k(c) = λ_c E_k(x, c) − log evidence_k(c)`` (an intervened
        concept with value ``v`` has evidence ``v`` for 1 and ``1 − v`` for 0, so a hard 0/1
        value clamps ``μ``). Its stationary points satisfy ``μ_yk = σ(U_k(0) − U_k(1) −
        λ_g ∂E_global/∂μ_yk)``; we iterate that map with damping. Then
        ``q(y) ∝ exp(−F_y(μ_y))`` and ``p(c_k = 1) = Σ_y q(y) μ_yk``. Batches are chunked to bound memory
        (``(chunk, num_classes, num_concepts, hidden)`` for differences).
        """
        K, M = self.num_concepts, self.num_classes
        unary = self.concept_weight * e_con  # (b, K, 2)
        if mask is not None:
            m = mask.to(unary.dtype)
            ev1 = -torch.log(values).clamp_min(-1e4).nan_to_num(0.0)  # energy of c_k = 1: −log v
            ev0 = -torch.log1p(-values).clamp_min(-1e4).nan_to_num(0.0)
            unary = unary + torch.stack([ev0.clamp_max(1e4), ev1.clamp_max(1e4)], -1) * m[..., None]
        with torch.inference_mode(False), torch.enable_grad():
            unary = unary.detach().clone()
            ec = e_cls.detach().clone()
            slots = self._global_slots().detach()
            delta = slots[:, 1] - slots[:, 0]  # (K, H)
            pre0 = slots[:, 0].sum(0)  # (H,)
            pre_u = self.global_u(self.class_embeddings).detach()  # (M, H)
            width = delta.shape[1] * (K if self.mean_field_update == "difference" else 1) + K
            chunk = max(1, (1 << 22) // (M * width))
            log_pys, logits = [], []
            for s in range(0, ec.shape[0], chunk):
                u, e = unary[s : s + chunk], ec[s : s + chunk]
                gap = u[..., 0] - u[..., 1]  # (b, K): log-odds of c_k = 1 from the unaries
                mu = torch.sigmoid(gap)[:, None, :].expand(-1, M, -1).contiguous()  # (b, M, K)
                for _ in range(self.mean_field_steps):
                    if self.mean_field_update == "difference":
                        # E_global(μ with c_k := 1, y) − E_global(μ with c_k := 0, y) for every k
                        with torch.no_grad():
                            pre = pre0 + mu @ delta + pre_u  # (b, M, H)
                            off = pre[:, :, None, :] - mu[..., None] * delta  # (b, M, K, H)
                            grad = self.global_mlp(off + delta).squeeze(-1) - self.global_mlp(off).squeeze(-1)
                    else:
                        mu_ = mu.detach().requires_grad_(True)
                        e_glob = self.global_mlp(pre0 + mu_ @ delta + pre_u).squeeze(-1)  # (b, M)
                        (grad,) = torch.autograd.grad(e_glob.sum(), mu_)
                    target = torch.sigmoid(gap[:, None, :] - self.global_weight * grad)
                    mu = (1 - self.mean_field_damping) * mu + self.mean_field_damping * target
                with torch.no_grad():
                    e_glob = self.global_mlp(pre0 + mu @ delta + pre_u).squeeze(-1)
                    ent = -(torch.xlogy(mu, mu) + torch.xlogy(1 - mu, 1 - mu)).sum(-1)  # (b, M)
                    unary_e = (mu * u[:, None, :, 1] + (1 - mu) * u[:, None, :, 0]).sum(-1)
                    free = e + unary_e + self.global_weight * e_glob - ent  # (b, M)
                    log_py = F.log_softmax(-free, dim=-1)
                    pc = (log_py.exp()[:, :, None] * mu).sum(1).clamp(1e-12, 1 - 1e-12)
                    log_pys.append(log_py)
                    logits.append(torch.log(pc) - torch.log1p(-pc))
        return torch.cat(log_pys).to(e_cls.dtype), torch.cat(logits).to(e_cls.dtype)

    def _infer_gradient(
        self, e_cls: Tensor, e_con: Tensor, values: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Minimise the mean-field free energy over relaxed concepts and label.

        ``F(q) = E_q[E_class] + λ_c E_q[E_concept] + λ_g E_global(q_c, q_y) − H(q_c) − H(q_y)``,
        with intervened concepts held at their values. Runs with gradients on the relaxed
        variables only, also under ``torch.no_grad`` / ``torch.inference_mode``.
        """
        with torch.inference_mode(False), torch.enable_grad():
            ec, ek = e_cls.detach().clone(), e_con.detach().clone()
            fixed_v = None if values is None else values.detach().clone()
            fixed_m = None if mask is None else mask.detach().clone()
            a = (ek[..., 0] - ek[..., 1]).clone().requires_grad_(True)
            t = (-ec).clone().requires_grad_(True)
            opt = torch.optim.Adam([a, t], lr=self.gradient_lr)
            for _ in range(self.gradient_steps):
                qc = torch.sigmoid(a)
                if fixed_m is not None:
                    qc = torch.where(fixed_m, fixed_v, qc)
                log_qy = F.log_softmax(t, dim=-1)
                qy = log_qy.exp()
                ent_c = -(qc * torch.log(qc.clamp_min(1e-12)) + (1 - qc) * torch.log((1 - qc).clamp_min(1e-12)))
                if fixed_m is not None:
                    ent_c = ent_c.masked_fill(fixed_m, 0.0)
                free = (
                    (qy * ec).sum(-1)
                    + self.concept_weight * (qc * ek[..., 1] + (1 - qc) * ek[..., 0]).sum(-1)
                    + self.global_weight * self.global_energy(qc, qy)
                    + (qy * log_qy).sum(-1)
                    - ent_c.sum(-1)
                )
                ga, gt = torch.autograd.grad(free.sum(), [a, t])
                a.grad, t.grad = ga, gt
                opt.step()
            log_py = F.log_softmax(t.detach(), dim=-1)
            logits = a.detach()
        return log_py.to(e_cls.dtype), logits.to(e_cls.dtype)

    # ----------------------------------------------------------------- losses
    def loss_terms(self, out: BottleneckOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The concept BCE of every concept layer plus the three ECBM negative log-likelihoods
        for a batch (unweighted).

        * ``class_nll`` — ``−log p(y | x)`` under the class energy alone.
        * ``concept_nll`` — mean over labelled entries of ``−log p(c_k | x)`` under the
          concept energies alone.
        * ``global_nll`` — ``−log p(c, y)`` under the global energy (exact normaliser or
          pseudo-likelihood), over rows whose concepts are all labelled.

        Called by :class:`~bottlenecks.models.module.BottleneckModel` at every step.
        """
        losses = super().loss_terms(out, batch)
        y = batch["y"].long()
        losses["class_nll"] = F.cross_entropy(-out.extras["class_energy"], y)
        c = batch.get("concepts")
        if c is None:
            raise ValueError(
                "EnergyConceptBottleneck needs concept labels to train (the concept and global "
                "energies are fitted to them), but the batch has no 'concepts'"
            )
        e_con = out.extras["concept_energy"]
        logits = e_con[..., 0] - e_con[..., 1]
        losses["concept_nll"] = masked_concept_bce(logits, c, self.deferring_checks)
        full = (~torch.isnan(c)).all(-1)
        if self.deferring_checks:
            # no data-dependent branch or shape (device syncs): every row, weighted by whether
            # all its concepts are labelled; the same loss as the rows selected below
            w: Tensor | None = full.to(logits.dtype)
            cf, yf = c.nan_to_num(0.0), y
        else:
            if not full.any():
                losses["global_nll"] = logits.sum() * 0.0
                return losses
            w, cf, yf = None, c[full], y[full]
        if self.global_objective == "exact":
            table = out.extras.get("global_energy_table")
            if table is None:
                table = self.global_energy_table()
            e_true = table[self.config_index(cf), yf]
            log_z = torch.logsumexp(-table.flatten(), dim=0)
            losses["global_nll"] = _row_mean(e_true, w) + (log_z if w is None else log_z * (w.sum() > 0))
        else:
            losses["global_nll"] = self._pseudo_likelihood(cf, yf, w)
        return losses

    def _pseudo_likelihood(self, c: Tensor, y: Tensor, w: Tensor | None = None) -> Tensor:
        """``−log p(y | c) − (1/K) Σ_k log p(c_k | c_−k, y)`` under the global energy, averaged over rows.

        The K per-concept conditionals are averaged, not summed: summed, they outweigh the
        single label term K to 1, and at K ≈ 100 the global energy learns the concepts'
        co-occurrence before it learns ``y``. On the 112-concept set of ``tests/test_ecbm.py``
        ``argmin_y E_global(c_true, y)`` reached 0.67-1.00 over seeds 0-3 with the sum and
        1.00 on seeds 0-7 averaged. Averaged, each conditional keeps its own optimum and the
        label term keeps its weight. ``w``: optional row weights ``(b,)`` (a weighted mean).
        """
        slots = self._global_slots()
        delta = slots[:, 1] - slots[:, 0]  # (K, H)
        pre_c = slots[:, 0].sum(0) + c @ delta  # (b, H)
        pre_u = self.global_u(self.class_embeddings)  # (M, H)
        e_all_y = self.global_mlp(pre_c[:, None, :] + pre_u[None]).squeeze(-1)  # (b, M)
        nll_y = F.cross_entropy(-e_all_y, y) if w is None else _row_mean(F.cross_entropy(-e_all_y, y, reduction="none"), w)
        pre_true = pre_c + pre_u[y]  # (b, H)
        e_true = e_all_y.gather(1, y[:, None]).squeeze(1)  # (b,)
        flipped = pre_true[:, None, :] + (1 - 2 * c)[:, :, None] * delta[None]  # (b, K, H)
        e_flip = self.global_mlp(flipped).squeeze(-1)  # (b, K)
        nll_c = _row_mean(F.softplus(e_true[:, None] - e_flip), w)
        return nll_y + nll_c

    # -------------------------------------------------- probabilistic queries
    @torch.no_grad()
    def prior(self) -> Tensor:
        """The global energy's joint ``p(c, y)`` over all pairs: ``(2^K, num_classes)``, sums to 1."""
        table = self.global_energy_table()
        return torch.softmax(-table.flatten(), dim=0).view_as(table)

    @torch.no_grad()
    def concept_given_label(self) -> Tensor:
        """``p(c_k = 1 | y)`` under the global energy: ``(num_classes, num_concepts)``."""
        joint = self.prior()  # (N, M)
        p_c_y = joint / joint.sum(0, keepdim=True)
        return p_c_y.T @ self.configs()

    @torch.no_grad()
    def concept_given_concept(self, given: int, value: float = 1.0) -> Tensor:
        """``p(c_k = 1 | c_given = value)`` under the global energy (label marginalised): ``(num_concepts,)``."""
        if not 0 <= given < self.num_concepts:
            raise ValueError(f"concept index {given} is out of range for {self.num_concepts} concepts")
        if value not in (0, 1, 0.0, 1.0):
            raise ValueError(f"the conditioning value must be 0 or 1, got {value}")
        p_c = self.prior().sum(1)  # (N,)
        C = self.configs()
        keep = C[:, given] == float(value)
        p = p_c * keep
        return (p / p.sum()) @ C
