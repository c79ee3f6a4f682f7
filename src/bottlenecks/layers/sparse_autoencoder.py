"""Discover-then-Name concept bottlenecks (Rao et al., 2024).

1. *Discover*: a sparse autoencoder (:class:`SparseAutoencoder`) on cached encoder features,
   ``f = relu(W_enc (x - b_dec) + b_enc)``, ``x_hat = W_dec f + b_dec`` (unit-norm decoder
   columns), trained with a reconstruction loss plus ℓ1 on ``f`` or with a top-k activation;
   units that stop firing are resampled towards badly reconstructed inputs.
2. *Name*: each unit is named by the vocabulary word whose text embedding is nearest
   (cosine) to its decoder direction mapped into the text space (:func:`name_units`).
3. *Classify*: a sparse linear probe on the unit activations.

:class:`DiscoverThenNameCBM` is all three as one bottleneck: the SAE is fitted and named
at fit start (``init_from_data``: the task-agnostic step, on the training sample and the
data's text encoder), then frozen; training fits the probe (loss ``"probe_l1"`` is its
ℓ1). Its units (kind ``"sae"``) carry the names, and ``forward(h, concepts=values,
intervention_mask=mask)`` sets unit activations ``(batch, num_units)`` — the handle for
interventions by name (``units().index("red")``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.analysis.concept_selection import check_concept_set, check_widths
from bottlenecks.layers.base import (
    Bottleneck,
    BottleneckOutput,
    TextEncoder,
    UnitReadout,
    Units,
    apply_intervention,
)
from bottlenecks.layers.label_free import ImageToText, fit_image_to_text

Sparsity = Literal["l1", "topk"]

__all__ = ["DiscoverThenNameCBM", "SparseAutoencoder", "name_units"]


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder on feature vectors.

    Args:
        in_features: feature width ``d``.
        num_units: dictionary size (units).
        sparsity: ``"l1"`` (ReLU + ℓ1 penalty ``l1_coeff``) or ``"topk"`` (keep the ``top_k``
            largest ReLU activations per input, no penalty).
        l1_coeff: ℓ1 weight, relative to the normalised reconstruction error.
        top_k: active units per input for ``"topk"``.

    Shapes: ``x (n, d)`` → ``encode`` ``(n, num_units)`` → ``decode`` ``(n, d)``.
    """

    def __init__(
        self, in_features: int, num_units: int, sparsity: Sparsity = "l1", l1_coeff: float = 3e-3, top_k: int = 8
    ) -> None:
        super().__init__()
        if sparsity not in ("l1", "topk"):
            raise ValueError(f"sparsity must be 'l1' or 'topk', got {sparsity!r}")
        if num_units < 1 or in_features < 1:
            raise ValueError(f"in_features and num_units must be positive, got {in_features}, {num_units}")
        if sparsity == "topk" and not 1 <= top_k <= num_units:
            raise ValueError(f"top_k must lie in [1, num_units={num_units}], got {top_k}")
        self.in_features, self.num_units = int(in_features), int(num_units)
        self.sparsity, self.l1_coeff, self.top_k = sparsity, float(l1_coeff), int(top_k)
        dec = F.normalize(torch.randn(in_features, num_units), dim=0)
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(num_units))
        self.b_dec = nn.Parameter(torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(()))  # mean input norm, for scale-free losses

    def encode(self, x: Tensor) -> Tensor:
        """Unit activations ``(n, num_units)``, non-negative."""
        f = F.relu((x - self.b_dec) @ self.W_enc.T + self.b_enc)
        if self.sparsity == "topk":
            top = f.topk(self.top_k, dim=1)
            f = torch.zeros_like(f).scatter_(1, top.indices, top.values)
        return f

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction ``(n, d)``."""
        return f @ self.W_dec.T + self.b_dec

    def directions(self) -> Tensor:
        """Unit directions in feature space ``(num_units, d)`` (unit-norm decoder columns)."""
        return F.normalize(self.W_dec.detach(), dim=0).T

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """``"reconstruction"`` (squared error relative to ``||x||²``), ``"l1"`` and ``"loss"``."""
        f = self.encode(x)
        err = (self.decode(f) - x).pow(2).sum(1)
        rec = err.mean() / self.scale.pow(2)
        l1 = f.sum(1).mean() / self.scale
        total = rec + (self.l1_coeff * l1 if self.sparsity == "l1" else 0.0)
        return {"reconstruction": rec, "l1": l1, "loss": total, "per_sample": err.detach(), "acts": f.detach()}

    @torch.no_grad()
    def _normalise_decoder(self) -> None:
        self.W_dec.data = F.normalize(self.W_dec.data, dim=0)

    def fit(
        self,
        x: Tensor,
        epochs: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
        resample_every: int | None = 200,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Train on ``x`` ``(n, d)`` with Adam; every ``resample_every`` steps, units that did not
        fire in that window are re-initialised towards inputs sampled ∝ their squared error.

        Returns a history: final ``reconstruction`` (relative), ``l0`` (mean active units),
        ``dead`` (units that never fired in the last pass) and ``resampled`` (count).
        """
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"SparseAutoencoder expects (n, {self.in_features}) features, got {tuple(x.shape)}")
        if len(x) < 2:
            raise ValueError("SparseAutoencoder.fit needs at least two rows")
        x = x.float()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.b_dec.copy_(x.mean(0))
            self.scale.fill_(float((x - x.mean(0)).norm(dim=1).mean().clamp_min(1e-8)))
        self.requires_grad_(True)
        with torch.enable_grad():
            resampled, step = self._train(x, epochs, batch_size, lr, resample_every, g)
        self.requires_grad_(False)
        with torch.no_grad():
            stats = [self.losses(x[s : s + 4096].to(self.W_dec.device)) for s in range(0, len(x), 4096)]
            acts = torch.cat([o["acts"] for o in stats])
            rec = sum(float(o["reconstruction"]) * len(o["acts"]) for o in stats) / len(x)
        return {
            "reconstruction": rec,
            "l0": float((acts > 0).float().sum(1).mean()),
            "dead": int(((acts > 0).sum(0) == 0).sum()),
            "resampled": resampled,
            "steps": step,
        }

    def _train(
        self, x: Tensor, epochs: int, batch_size: int, lr: float, resample_every: int | None, g: torch.Generator
    ) -> tuple[int, int]:
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        fired = torch.zeros(self.num_units, dtype=torch.bool)
        step, resampled = 0, 0
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), batch_size):
                xb = x[perm[s : s + batch_size]].to(self.W_dec.device)
                out = self.losses(xb)
                opt.zero_grad()
                out["loss"].backward()
                opt.step()
                self._normalise_decoder()
                fired |= (out["acts"] > 0).any(0).cpu()
                step += 1
                if resample_every and step % resample_every == 0:
                    dead = (~fired).nonzero().flatten()
                    if len(dead):
                        self._resample(x, dead, g)
                        resampled += len(dead)
                        opt = torch.optim.Adam(self.parameters(), lr=lr)
                    fired.zero_()
        return resampled, step

    @torch.no_grad()
    def _resample(self, x: Tensor, dead: Tensor, g: torch.Generator) -> None:
        sample = x[torch.randperm(len(x), generator=g)[: min(len(x), 4096)]].to(self.W_dec.device)
        err = self.losses(sample)["per_sample"].cpu()
        pick = torch.multinomial(err.pow(2) + 1e-12, len(dead), replacement=len(dead) > len(err), generator=g)
        dirs = F.normalize(sample[pick] - self.b_dec, dim=1)  # (n_dead, d)
        alive = torch.ones(self.num_units, dtype=torch.bool)
        alive[dead] = False
        enc_norm = self.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
        self.W_dec[:, dead] = dirs.T
        self.W_enc[dead] = dirs * enc_norm * 0.2
        self.b_enc[dead] = 0.0


def name_units(
    directions: Tensor, vocabulary: Sequence[str], vocabulary_vectors: Tensor
) -> tuple[list[str], Tensor]:
    """Name each unit by the vocabulary entry nearest (cosine) to its direction.

    Args:
        directions: ``(num_units, d)`` unit directions in the text space.
        vocabulary: ``n_words`` names; ``vocabulary_vectors`` their ``(n_words, d)`` embeddings.

    Returns:
        ``(names, similarity)``: unique names (a word chosen by several units gets ``#2``,
        ``#3``, ... in order of decreasing similarity) and each unit's cosine ``(num_units,)``.
    """
    vocabulary = check_concept_set(vocabulary, vocabulary_vectors, "vocabulary")
    check_widths(directions.shape[1], vocabulary_vectors.shape[1], "vocabulary vectors")
    sims = F.normalize(directions.float(), dim=1) @ F.normalize(vocabulary_vectors.float(), dim=1).T
    best, arg = sims.max(1)
    names = [""] * len(best)
    used: dict[str, int] = {}
    for i in best.argsort(descending=True).tolist():
        word = vocabulary[int(arg[i])]
        used[word] = used.get(word, 0) + 1
        names[i] = word if used[word] == 1 else f"{word}#{used[word]}"
    return names, best


class DiscoverThenNameCBM(Bottleneck):
    """Discover-then-Name CBM: SAE units, named from a vocabulary, read by a sparse linear probe.

    Args:
        in_features: feature width (linked from the data).
        num_classes: number of classes (linked from the data).
        num_units: SAE dictionary size.
        sparsity, l1_coeff, top_k: see :class:`SparseAutoencoder`.
        sae_epochs, sae_lr, sae_batch_size, resample_every: SAE training at fit start.
        vocabulary: the words to name units with (encoded by the data's text encoder at fit
            start, with ``prompt``), or pass ``vocabulary_vectors`` ``(n_words, d_text)``.
            None: units keep index names ``unit0, unit1, ...``.
        image_to_text: ``"identity"`` (CLIP features) or ``"concept_labels"`` (learn a ridge map
            from the data's concept labels, whose names come in ``concept_names``: offline stand-in).
        concept_names: the data's concept columns (linked by the CLI); used only by
            ``image_to_text="concept_labels"``; the units are the SAE's, not these.
        seed: seed of the SAE's initialisation and training order.

    Shapes: ``h (batch, in_features)`` → unit activations ``(batch, num_units)`` → ``z`` class
    logits ``(batch, num_classes)``.
    """

    predicts_task = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_units: int = 64,
        sparsity: Sparsity = "topk",
        l1_coeff: float = 3e-3,
        top_k: int = 8,
        sae_epochs: int = 30,
        sae_lr: float = 1e-3,
        sae_batch_size: int = 256,
        resample_every: int | None = 200,
        vocabulary: list[str] | None = None,
        vocabulary_vectors: Tensor | None = None,
        prompt: str = "{}",
        image_to_text: ImageToText = "identity",
        ridge: float = 1.0,
        concept_names: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(f"DiscoverThenNameCBM needs num_classes >= 2, got {num_classes}")
        if vocabulary is not None:
            check_concept_set(vocabulary, vocabulary_vectors, "DiscoverThenNameCBM vocabulary")
            if any("\n" in w for w in vocabulary):
                raise ValueError("DiscoverThenNameCBM vocabulary words must be single lines")
        elif vocabulary_vectors is not None:
            raise ValueError("vocabulary_vectors were given without the vocabulary (their names)")
        if image_to_text not in ("identity", "concept_labels"):
            raise ValueError(f"image_to_text must be 'identity' or 'concept_labels', got {image_to_text!r}")
        if "{}" not in prompt:
            raise ValueError(f"prompt must contain '{{}}' where the word goes, got {prompt!r}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.out_features = self.num_classes
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.sae = SparseAutoencoder(in_features, num_units, sparsity, l1_coeff, top_k)
        self.sae.requires_grad_(False)
        self.probe = nn.Linear(num_units, num_classes)
        self.sae_epochs, self.sae_lr, self.sae_batch_size = sae_epochs, sae_lr, sae_batch_size
        self.resample_every, self.seed = resample_every, seed
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self._vocabulary_vectors = None if vocabulary_vectors is None else torch.as_tensor(vocabulary_vectors).float()
        self.prompt, self.image_to_text, self.ridge = prompt, image_to_text, float(ridge)
        self.label_concept_names = None if concept_names is None else list(concept_names)
        # unit names travel in the state dict as UTF-8 bytes (a tensor, like every other entry)
        self.register_buffer("unit_names_utf8", _encode_names([f"unit{i}" for i in range(num_units)]))
        self.register_buffer("name_similarity", torch.zeros(num_units))
        self.register_buffer("fitted", torch.tensor(False))
        self.sae_history: dict[str, Any] = {}

    # ----------------------------------------------------------- checkpoint state
    @property
    def unit_names(self) -> list[str]:
        """The units' names (vocabulary words after :meth:`init_from_data`, else ``unit<i>``)."""
        return bytes(self.unit_names_utf8.cpu().tolist()).decode("utf-8").split("\n")

    def _set_unit_names(self, names: list[str]) -> None:
        if len(names) != self.sae.num_units:
            raise ValueError(f"{len(names)} names for {self.sae.num_units} units")
        self.unit_names_utf8 = _encode_names(names).to(self.unit_names_utf8.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        key = prefix + "unit_names_utf8"
        if key in state_dict and state_dict[key].shape != self.unit_names_utf8.shape:
            self._buffers["unit_names_utf8"] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------------- units
    def units(self) -> Units:
        return Units("sae", tuple(self.unit_names))

    def unit_activations(self, out: BottleneckOutput) -> Tensor:
        return out.extras["activations"]

    def unit_readout(self) -> UnitReadout:
        """Unit ``i`` is input column ``i`` of the probe (head edits re-weight or prune it)."""
        return UnitReadout(tuple((i,) for i in range(self.sae.num_units)), linear=self.probe)

    # ------------------------------------------------------------------ discovery
    def needs_data_init(self) -> bool:
        # a fitted SAE (also one restored from a checkpoint when a run resumes) is never refitted
        return not bool(self.fitted)

    def init_from_data(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        y: Tensor | None = None,
        text: TextEncoder | None = None,
    ) -> None:
        """Fit the SAE on ``h`` (task-agnostic: ``y`` is not used), then name its units."""
        self.check_input(h)
        if len(h) < self.sae.num_units:
            warnings.warn(
                f"DiscoverThenNameCBM: {self.sae.num_units} SAE units but only {len(h)} training features; "
                "the data cannot support that many units (many will stay dead)",
                stacklevel=2,
            )
        self.sae_history = self.sae.fit(
            h, epochs=self.sae_epochs, batch_size=self.sae_batch_size, lr=self.sae_lr,
            resample_every=self.resample_every, seed=self.seed,
        )
        self.fitted.fill_(True)
        if self.vocabulary is None:
            return
        vocab = self._vocabulary_vectors
        if vocab is None:
            if text is None:
                raise ValueError(
                    "DiscoverThenNameCBM has a vocabulary but no vocabulary_vectors and no text encoder; set "
                    "the data's text_encoder (e.g. 'open_clip:<model>') to name the units"
                )
            vocab = text.encode_text([self.prompt.format(w) for w in self.vocabulary]).float()
        vocab = vocab.to(h.device)
        directions = self.sae.directions()
        if self.image_to_text == "concept_labels":
            if self.label_concept_names is None:
                raise ValueError("image_to_text='concept_labels' needs the data's concept_names")
            if text is None:
                raise ValueError("image_to_text='concept_labels' needs the data's text encoder for its concept names")
            cvec = text.encode_text([self.prompt.format(n) for n in self.label_concept_names]).float().to(h.device)
            directions = directions @ fit_image_to_text(h, concepts, cvec, self.ridge)
        else:
            check_widths(h.shape[1], vocab.shape[1], "vocabulary vectors")
        names, sim = name_units(directions, self.vocabulary, vocab)
        self._set_unit_names(names)
        self.name_similarity.copy_(sim)

    # --------------------------------------------------------------------- forward
    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        """``concepts`` / ``intervention_mask`` ``(batch, num_units)`` set unit activations."""
        self.check_input(h)
        if not bool(self.fitted) and self.training:
            raise RuntimeError("DiscoverThenNameCBM: the SAE is not fitted; init_from_data must run first")
        acts = self.sae.encode(h)
        if intervention_mask is not None:
            acts = apply_intervention(acts, concepts, intervention_mask)
        logits = self.probe(acts)
        metrics = {"active_units": (acts > 0).float().sum(1).mean().detach()}
        return BottleneckOutput(
            z=logits, losses={"probe_l1": self.probe.weight.abs().mean()}, metrics=metrics,
            extras={"activations": acts},
        )

    def probe_sparsity(self, threshold: float = 1e-3) -> float:
        """Fraction of probe weights with magnitude below ``threshold`` × the largest."""
        w = self.probe.weight.detach().abs()
        return float((w < threshold * w.max().clamp_min(1e-12)).float().mean())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_units={self.sae.num_units}, num_classes={self.num_classes}"


def _encode_names(names: Sequence[str]) -> Tensor:
    return torch.tensor(list("\n".join(names).encode("utf-8")), dtype=torch.uint8)
