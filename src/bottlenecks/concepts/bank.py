"""Concept banks: named vectors in a frozen encoder's feature space, saved as one file.

A :class:`ConceptBank` is ``names`` (one per concept, unique) and ``vectors``
``(num_concepts, dim)`` in the space of the encoder that produced the features, plus
what is known about how they were made: an ``encoder_id`` (which encoder's space;
:func:`encoder_id` of a spec), per-concept ``intercepts`` (a concept activation
vector's bias) and held-out ``accuracy`` (how well each CAV separates its positives
from its negatives on examples it was not fitted on).

Three ways to build one:

* :meth:`ConceptBank.from_cavs` / :meth:`ConceptBank.from_examples` — concept
  activation vectors (Kim et al., 2018; PCBM's route for labelled concept examples):
  one L2-regularised logistic direction per concept, **all concepts in one batched
  L-BFGS solve** (``(dim, num_concepts)`` weights, a masked, class-balanced BCE over
  the labelled entries of each column), each scored on held-out examples so that
  useless concepts are flagged (:meth:`ConceptBank.useless`).
* :meth:`ConceptBank.from_text` — embeddings of concept sentences by any text encoder
  with ``encode_text`` (PCBM's multimodal route: CLIP's text tower).
* :meth:`ConceptBank.load` — a file written by :meth:`ConceptBank.save`
  (safetensors: ``vectors`` and optional ``intercepts`` / ``accuracy`` tensors; names,
  encoder identity and provenance as JSON in the header metadata).

Example::

    bank = ConceptBank.from_cavs(x_train, c_train, names, encoder_id=encoder_id("lite0"))
    print(bank.useless())            # concepts whose CAV is near chance on held-out data
    bank.save("shapes_cavs.safetensors")
    bank = ConceptBank.load("shapes_cavs.safetensors")
    scores = bank.project(x)         # (n, num_concepts) signed distances to each CAV's hyperplane
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from bottlenecks.layers.base import check_concept_list

__all__ = ["BANK_FORMAT", "ConceptBank", "encoder_id", "learn_cavs", "check_concept_list"]


#: format tag written into every bank file's metadata
BANK_FORMAT = "bottlenecks.concept_bank/1"


def encoder_id(encoder: Any) -> str:
    """A short identity of an image encoder's feature space: ``"<name>@<digest>"``.

    ``encoder`` is a spec (``"lite0"``, ``{"name": "lite0", "image_size": 64}``,
    ``"identity:512"``) or a built :class:`~bottlenecks.encoders.FrozenEncoder`. The digest
    hashes :meth:`~bottlenecks.encoders.FrozenEncoder.cache_identity` (architecture, weights,
    transform, width), so two specs that give the same features give the same id and a
    different image size gives a different one.
    """
    from bottlenecks.encoders import shared_encoder

    enc = shared_encoder(encoder)
    ident = json.dumps(enc.cache_identity(), sort_keys=True)
    return f"{enc.name}@{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _t(x: Any) -> Tensor:
    return (x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))).detach().cpu()


def learn_cavs(
    x: Tensor,
    concepts: Tensor,
    l2: float = 1e-2,
    heldout: float = 0.2,
    min_examples: int = 5,
    seed: int = 0,
    max_iter: int = 300,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Concept activation vectors for every column of ``concepts`` in one batched solve.

    Minimises, over ``W (dim, k)`` and ``b (k,)``, the sum over concepts of a
    class-balanced binary cross-entropy on each concept's labelled rows (positives and
    negatives weigh half each) plus ``l2 / 2 * ||W||²``, by full-batch L-BFGS on
    standardised features; the result is mapped back to the features' own coordinates.
    The objective separates by column, so the batched solve gives each concept the CAV it
    would get alone.

    Args:
        x: ``(n, dim)`` features.
        concepts: ``(n, k)`` 1 (positive), 0 (negative), NaN (not an example of that concept).
        l2: ridge strength on standardised features.
        heldout: fraction of the rows kept out of the fit to score each CAV.
        min_examples: fewest positives and negatives per concept in the fit split.
        names: concept names, for error messages.

    Returns:
        ``(vectors (k, dim), intercepts (k,), accuracy (k,), n_labels)``: accuracy is the
        held-out *balanced* accuracy (chance 0.5; NaN when a concept has no held-out
        positive or negative); ``n_labels`` the labelled entries the fit used.
    """
    x = _t(x).float()
    c = _t(concepts).float()
    if x.dim() != 2 or c.dim() != 2 or len(x) != len(c):
        raise ValueError(
            f"CAVs need features (n, dim) and concept labels (n, k) with the same n; got {tuple(x.shape)} "
            f"and {tuple(c.shape)}"
        )
    n, d = x.shape
    k = c.shape[1]
    names = list(names) if names is not None else [f"c{j}" for j in range(k)]
    if len(names) != k:
        raise ValueError(f"concept labels have {k} columns but {len(names)} names were given")
    if not torch.isfinite(x).all():
        raise ValueError("CAV features contain NaN or inf")
    vals = c[~torch.isnan(c)]
    if ((vals != 0) & (vals != 1)).any():
        raise ValueError("CAV concept labels must be 0, 1 or NaN (unlabelled)")
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout must be in [0, 1), got {heldout}")
    g = torch.Generator().manual_seed(seed)
    is_held = torch.zeros(n, dtype=torch.bool)
    is_held[torch.randperm(n, generator=g)[: int(round(heldout * n))]] = True
    fit = ~torch.isnan(c) & ~is_held[:, None]
    pos = ((c == 1) & fit).sum(0)
    neg = ((c == 0) & fit).sum(0)
    thin = [j for j in range(k) if pos[j] < min_examples or neg[j] < min_examples]
    if thin:
        shown = ", ".join(f"{names[j]!r} ({int(pos[j])} positive, {int(neg[j])} negative)" for j in thin[:8])
        more = f" and {len(thin) - 8} more" if len(thin) > 8 else ""
        raise ValueError(
            f"the data cannot support {len(thin)} of {k} concepts: {shown}{more} in the fit split; a CAV needs "
            f"at least {min_examples} positive and {min_examples} negative examples (min_examples). Give more "
            "examples or drop those concepts"
        )
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    target = torch.nan_to_num(c)
    # class-balanced weights: each concept's positives and negatives weigh 1/2 in total
    weight = torch.where(c == 1, 0.5 / pos.clamp_min(1), 0.5 / neg.clamp_min(1)) * fit
    with torch.inference_mode(False), torch.enable_grad():
        w = torch.zeros(d + 1, k, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            logits = torch.addmm(w[-1], xs, w[:-1])
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            # a sum over concepts, not a mean: each column is its own problem, whatever k is
            loss = (bce * weight).sum() + 0.5 * l2 * w[:-1].pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    w = w.detach()
    with torch.no_grad():
        pred = torch.addmm(w[-1], xs, w[:-1]) > 0
        held = ~torch.isnan(c) & is_held[:, None]
        tp = ((c == 1) & held & pred).sum(0).float()
        tn = ((c == 0) & held & ~pred).sum(0).float()
        hp, hn = ((c == 1) & held).sum(0).float(), ((c == 0) & held).sum(0).float()
        acc = 0.5 * (tp / hp + tn / hn)
        acc = torch.where((hp > 0) & (hn > 0), acc, torch.full_like(acc, float("nan")))
    vectors = (w[:-1] / std[:, None]).T.contiguous()  # (k, d) in the features' coordinates
    intercepts = w[-1] - (mean / std) @ w[:-1]
    return vectors, intercepts, acc, int(fit.sum())


class ConceptBank:
    """Named concept vectors in one encoder's feature space.

    Args:
        names: one unique, non-empty name per concept.
        vectors: ``(num_concepts, dim)``.
        encoder_id: the feature space the vectors live in (:func:`encoder_id`); None when
            unknown (then nothing checks that the bank matches a model's encoder).
        intercepts: ``(num_concepts,)`` biases (a CAV's hyperplane offset); None: zero.
        accuracy: ``(num_concepts,)`` held-out balanced accuracy of each vector as a classifier
            of its concept (NaN: unknown).
        source: how the bank was made (``"cav"``, ``"text"``, ``"vectors"``, ...).
        info: further JSON-able provenance (text encoder, sentences, fit settings).

    Attributes:
        names, vectors, intercepts, accuracy, encoder_id, source, info.
    """

    def __init__(
        self,
        names: Sequence[str],
        vectors: Tensor | np.ndarray,
        encoder_id: str | None = None,
        intercepts: Tensor | np.ndarray | None = None,
        accuracy: Tensor | np.ndarray | None = None,
        source: str = "vectors",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.names = check_concept_list(names, "the concept bank's names")
        v = _t(vectors).float()
        if v.dim() != 2 or v.shape[0] != len(self.names):
            raise ValueError(
                f"concept vectors must have shape ({len(self.names)}, dim) — one row per name — got {tuple(v.shape)}"
            )
        if not torch.isfinite(v).all():
            raise ValueError("concept vectors contain NaN or inf")
        norms = v.norm(dim=1)
        if (norms == 0).any():
            zero = [self.names[i] for i in (norms == 0).nonzero().flatten().tolist()]
            raise ValueError(f"concept vectors of {zero[:5]} are all zeros: they point nowhere")
        self.vectors = v.contiguous()
        self.intercepts = None if intercepts is None else self._column(intercepts, "intercepts")
        self.accuracy = None if accuracy is None else self._column(accuracy, "accuracy", allow_nan=True)
        self.encoder_id = encoder_id
        self.source = str(source)
        self.info = dict(info or {})

    def _column(self, t: Any, what: str, allow_nan: bool = False) -> Tensor:
        t = _t(t).float().reshape(-1)
        if len(t) != len(self.names):
            raise ValueError(f"{what} has {len(t)} entries but the bank has {len(self.names)} concepts")
        if not allow_nan and not torch.isfinite(t).all():
            raise ValueError(f"{what} contains NaN or inf")
        return t

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        """Width of the feature space."""
        return int(self.vectors.shape[1])

    def __repr__(self) -> str:
        return f"ConceptBank({len(self)} concepts, dim={self.dim}, source={self.source!r}, encoder_id={self.encoder_id!r})"

    def project(self, h: Tensor) -> Tensor:
        """PCBM's concept scores: ``(h · v + b) / ||v||`` — the signed distance of each
        feature row ``h (n, dim)`` to each concept's hyperplane, ``(n, num_concepts)``."""
        h = _t(h).float() if not torch.is_tensor(h) else h.float()
        self.check_dim(h.shape[-1])
        v = self.vectors.to(h.device)
        s = h @ v.T
        if self.intercepts is not None:
            s = s + self.intercepts.to(h.device)
        return s / v.norm(dim=1)

    def check_dim(self, dim: int, what: str = "the features") -> None:
        """Raise when ``dim`` differs from the bank's width, saying where the vectors came from."""
        if int(dim) != self.dim:
            origin = ""
            if self.source == "text":
                te = self.info.get("text_encoder", "a text encoder")
                origin = (f" (the vectors are {te} text embeddings; text and image vectors are only comparable "
                          "when both towers embed into one space, e.g. open_clip's image and text towers)")
            raise ValueError(f"the concept bank is {self.dim}-dimensional{origin} but {what} are {dim}-dimensional")

    def check_encoder(self, expected: str | None, what: str = "the model's encoder") -> None:
        """Raise when the bank was built on another encoder than ``expected`` (an :func:`encoder_id`);
        warn when the bank does not say which encoder it belongs to."""
        if expected is None:
            return
        if self.encoder_id is None:
            warnings.warn(
                f"the concept bank does not record its encoder; assuming it matches {what} ({expected})",
                stacklevel=2,
            )
            return
        if self.encoder_id != expected:
            raise ValueError(
                f"the concept bank was built on encoder {self.encoder_id!r} but {what} is {expected!r}: its "
                "vectors live in another feature space. Rebuild the bank from features of this encoder"
            )

    def useless(self, min_accuracy: float = 0.6) -> list[str]:
        """Names of concepts whose vector is near chance on held-out examples (balanced accuracy
        below ``min_accuracy``); empty when accuracy is unknown."""
        if self.accuracy is None:
            return []
        return [n for n, a in zip(self.names, self.accuracy.tolist()) if not math.isnan(a) and a < min_accuracy]

    def select(self, names: Sequence[str]) -> ConceptBank:
        """A bank of the given concepts, in the given order (unknown names: an error with close matches)."""
        import difflib

        names = check_concept_list(names, "the selected concepts")
        idx = []
        for n in names:
            if n not in self.names:
                close = difflib.get_close_matches(n, self.names, n=3)
                raise ValueError(f"the concept bank has no concept {n!r}" + (f"; close matches: {close}" if close else ""))
            idx.append(self.names.index(n))
        ix = torch.tensor(idx, dtype=torch.long)
        return ConceptBank(
            names, self.vectors[ix], encoder_id=self.encoder_id,
            intercepts=None if self.intercepts is None else self.intercepts[ix],
            accuracy=None if self.accuracy is None else self.accuracy[ix],
            source=self.source, info=self.info,
        )

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_cavs(
        cls,
        x: Tensor,
        concepts: Tensor,
        names: Sequence[str],
        encoder_id: str | None = None,
        l2: float = 1e-2,
        heldout: float = 0.2,
        min_examples: int = 5,
        min_accuracy: float = 0.6,
        seed: int = 0,
    ) -> ConceptBank:
        """Concept activation vectors from cached features and a concept-label table.

        Args:
            x: ``(n, dim)`` features (as the encoder gives them).
            concepts: ``(n, k)`` labels: 1 positive, 0 negative, NaN not an example.
            names: ``k`` concept names.
            min_accuracy: concepts whose held-out balanced accuracy is below this are
                named in a warning (:meth:`useless`).
            l2, heldout, min_examples, seed: see :func:`learn_cavs`.
        """
        names = check_concept_list(names, "the CAV concept names")
        v, b, acc, n_labels = learn_cavs(x, concepts, l2=l2, heldout=heldout, min_examples=min_examples,
                                         seed=seed, names=names)
        bank = cls(names, v, encoder_id=encoder_id, intercepts=b, accuracy=acc, source="cav",
                   info={"l2": l2, "heldout": heldout, "n_labels": n_labels, "n_examples": int(_t(x).shape[0])})
        bad = bank.useless(min_accuracy)
        if bad:
            warnings.warn(
                f"{len(bad)} of {len(bank)} concepts are near chance on held-out examples (balanced accuracy < "
                f"{min_accuracy}): {bad[:10]}; their scores carry little of the concept",
                stacklevel=2,
            )
        return bank

    @classmethod
    def from_examples(
        cls,
        positives: Mapping[str, Tensor],
        negatives: Mapping[str, Tensor] | Tensor,
        encoder_id: str | None = None,
        **kwargs: Any,
    ) -> ConceptBank:
        """CAVs from example features per concept: ``positives[name]`` ``(n_pos, dim)``, and
        either ``negatives[name]`` per concept or one shared pool ``(n_neg, dim)`` (random
        images, as in PCBM). One batched solve over all concepts (:meth:`from_cavs`)."""
        names = check_concept_list(list(positives), "the positive examples' concepts")
        if isinstance(negatives, Mapping):
            missing = [n for n in names if n not in negatives]
            if missing:
                raise ValueError(f"no negative examples for concepts {missing[:5]}")
            extra = [n for n in negatives if n not in positives]
            if extra:
                raise ValueError(f"negative examples for concepts without positives: {extra[:5]}")
        blocks: list[Tensor] = []
        labels: list[Tensor] = []
        k = len(names)
        for j, n in enumerate(names):
            p = _t(positives[n]).float()
            lab = torch.full((len(p), k), float("nan"))
            lab[:, j] = 1.0
            blocks.append(p)
            labels.append(lab)
            if isinstance(negatives, Mapping):
                q = _t(negatives[n]).float()
                lab = torch.full((len(q), k), float("nan"))
                lab[:, j] = 0.0
                blocks.append(q)
                labels.append(lab)
        if not isinstance(negatives, Mapping):
            q = _t(negatives).float()
            blocks.append(q)
            labels.append(torch.zeros(len(q), k))
        dims = {b.shape[-1] for b in blocks if b.dim() == 2}
        if len(dims) != 1 or any(b.dim() != 2 for b in blocks):
            raise ValueError(f"example features must all be (n, dim) with one dim; got widths {sorted(dims)}")
        return cls.from_cavs(torch.cat(blocks), torch.cat(labels), names, encoder_id=encoder_id, **kwargs)

    @classmethod
    def from_text(
        cls,
        names: Sequence[str],
        text_encoder: Any,
        sentences: Sequence[str] | None = None,
        encoder_id: str | None = None,
        dim: int | None = None,
    ) -> ConceptBank:
        """Concept vectors from text: ``text_encoder.encode_text(sentences)`` ``(n, dim)``.

        Args:
            names: concept names (also the sentences when ``sentences`` is None).
            text_encoder: anything with ``encode_text(list[str]) -> (n, dim)``; a spec string
                (``"minilm"``, ``"open_clip:..."``) is built with the text-encoder registry.
            sentences: the text to embed per concept (a description or prompt).
            encoder_id: the *image* encoder whose space the text tower shares.
            dim: the image features' width; a text encoder of another width is an error.
        """
        names = check_concept_list(names, "the concept names")
        sentences = list(names) if sentences is None else list(sentences)
        if len(sentences) != len(names):
            raise ValueError(f"{len(sentences)} sentences for {len(names)} concept names")
        if isinstance(text_encoder, (str, Mapping)):
            from bottlenecks.encoders import shared_text_encoder

            text_encoder = shared_text_encoder(text_encoder)
        v = torch.as_tensor(text_encoder.encode_text(sentences)).float().cpu()
        te = getattr(text_encoder, "name", type(text_encoder).__name__)
        bank = cls(names, v, encoder_id=encoder_id, source="text",
                   info={"text_encoder": str(te), "sentences": sentences})
        if dim is not None:
            bank.check_dim(dim, "the image encoder's features")
        return bank

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the bank as one safetensors file (tensors + JSON metadata)."""
        from safetensors.torch import save_file

        tensors = {"vectors": self.vectors.contiguous()}
        if self.intercepts is not None:
            tensors["intercepts"] = self.intercepts.contiguous()
        if self.accuracy is not None:
            tensors["accuracy"] = self.accuracy.contiguous()
        meta = {
            "format": BANK_FORMAT,
            "names": json.dumps(self.names),
            "encoder_id": json.dumps(self.encoder_id),
            "source": self.source,
            "info": json.dumps(self.info, default=str),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConceptBank:
        """Read a bank written by :meth:`save`; errors name the file and what is wrong."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no concept bank file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors concept bank: {e}") from None
        if meta.get("format") != BANK_FORMAT:
            raise ValueError(f"{path} is not a concept bank (metadata format {meta.get('format')!r}, expected {BANK_FORMAT!r})")
        if "vectors" not in tensors or "names" not in meta:
            raise ValueError(f"{path}: a concept bank file needs 'vectors' and metadata 'names'")
        try:
            names = json.loads(meta["names"])
            enc = json.loads(meta.get("encoder_id", "null"))
            info = json.loads(meta.get("info", "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: corrupt metadata ({e})") from None
        return cls(names, tensors["vectors"], encoder_id=enc, intercepts=tensors.get("intercepts"),
                   accuracy=tensors.get("accuracy"), source=meta.get("source", "file"), info=info)
