"""Language-guided concept bottlenecks: Label-free CBM and LaBo.

Both score images against concept *sentences* in a joint image–text space instead of
learning concepts from labels:

* :class:`LanguageConceptLayer` — the shared part: the concept texts' vectors (given, or
  encoded at fit start by the paired text encoder) and the image embedding in the text
  space, ``sims(h) = cos(image(h), t_c)`` ``(batch, num_concepts)``.
* :class:`LabelFreeCBM` (Oikarinen et al., 2023) — a linear concept layer ``W_c h``
  trained so that each concept's activations over a batch match the image–text
  similarities under the cos³ similarity (the projection loss); the head reads the
  standardised concept activations.
* :class:`LaBoBottleneck` (Yang et al., 2023) — fixed image–concept scores and a
  class–concept weight matrix initialised from the language prior (which concepts the
  language model listed for which class); it predicts the classes itself.

Concept selection (Label-free's filters, LaBo's submodular selection) is in
:mod:`bottlenecks.analysis.concept_selection`; few-shot splits and the linear probe at
the same k in :mod:`bottlenecks.analysis.few_shot`.

Image and text must share a space (open_clip's two towers: ``image_to_text="identity"``;
give the data ``text_encoder: open_clip:<same model>`` and switch the model's
``standardize_features`` off so the layer sees the raw CLIP embedding). Without a CLIP
pair, ``image_to_text="concept_labels"`` learns a ridge map from the (standardised) image
features to the text space from concept labels — an offline *stand-in*, not CLIP: each
image's target is the normalised sum of the text vectors of its labelled concepts.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks.analysis.concept_selection import check_concept_set, check_widths
from bottlenecks.layers.base import BottleneckOutput, ConceptLayer, TextEncoder, apply_intervention

ImageToText = Literal["identity", "concept_labels"]

__all__ = [
    "LaBoBottleneck",
    "LabelFreeCBM",
    "LanguageConceptLayer",
    "cos3_similarity",
    "fit_image_to_text",
]


def fit_image_to_text(h: Tensor, concepts: Tensor, concept_vectors: Tensor, ridge: float = 1.0) -> Tensor:
    """Ridge map ``(in_features, d_text)`` from image features to the text space, learned from
    concept labels: the target of image ``i`` is ``normalize(sum_c concepts[i, c] * t_c)``
    (rows without any positive labelled concept are skipped; NaN = unlabelled = 0).

    An offline stand-in for a CLIP image tower when only a text encoder exists.
    """
    if concepts is None:
        raise ValueError(
            "image_to_text='concept_labels' learns the image→text map from concept labels, but the "
            "data has none; use a paired image/text encoder (image_to_text='identity')"
        )
    if concepts.shape != (h.shape[0], concept_vectors.shape[0]):
        raise ValueError(
            f"concept labels have shape {tuple(concepts.shape)} but there are {h.shape[0]} features and "
            f"{concept_vectors.shape[0]} concept vectors"
        )
    c = torch.nan_to_num(concepts.float()).clamp(0, 1)
    rows = c.sum(1) > 0
    if int(rows.sum()) < 2:
        raise ValueError("image_to_text='concept_labels' needs at least two images with a positive concept label")
    target = F.normalize(c[rows] @ F.normalize(concept_vectors.float(), dim=1), dim=1)
    x = h[rows].float()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], device=x.device)
    return torch.linalg.solve(gram, x.T @ target)


def cos3_similarity(q: Tensor, p: Tensor, eps: float = 1e-8) -> Tensor:
    """Label-free CBM's cos³ similarity of each column of ``q`` and ``p`` ``(batch, num_concepts)``:
    standardise each column over the batch, cube it, take the cosine. ``(num_concepts,)``.

    Cubing emphasises the images that activate a concept most, which is what a concept's
    name describes."""
    def prep(x: Tensor) -> Tensor:
        x = (x - x.mean(0)) / (x.std(0) + eps)
        return x.pow(3)

    a, b = prep(q), prep(p)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0) + eps)


class LanguageConceptLayer(ConceptLayer):
    """Base of the concept layers that score images against concept texts.

    Args:
        in_features: image feature width.
        concept_names: the concept texts (linked from the data when it has concept labels).
        concept_vectors: ``(num_concepts, d_text)`` their text embeddings (e.g. a concept bank's
            vectors); None: encoded at fit start by the data's text encoder.
        prompt: template the text encoder reads for each concept (``"a photo of {}"``).
        image_to_text: ``"identity"`` (image and text share a space: CLIP) or
            ``"concept_labels"`` (learn a ridge map from concept labels; offline stand-in).
        ridge: ridge strength of that map.

    Subclasses implement :meth:`forward` using :meth:`similarities` and may extend
    :meth:`_init_statistics`. The concept units are tied to their names by language, not by
    labels: :meth:`concept_supervision` counts the image–text similarity targets seen while
    training.
    """

    #: buffers whose shape is only known once the text space is (loaded from checkpoints as saved)
    _LAZY = ("concept_vectors", "image_proj")
    #: True when a concept layer is *learned* from the images (one column per concept), so that
    #: more concepts than training images cannot be supported
    learns_concept_layer = True

    def __init__(
        self,
        in_features: int,
        concept_names: list[str],
        concept_vectors: Tensor | None = None,
        prompt: str = "{}",
        image_to_text: ImageToText = "identity",
        ridge: float = 1.0,
    ) -> None:
        super().__init__()
        if concept_names is None:
            raise ValueError(f"{type(self).__name__} needs concept_names (the concept texts)")
        names = check_concept_set(concept_names, concept_vectors, f"{type(self).__name__} concept_names")
        self._init_concepts(names, None)
        if "{}" not in prompt:
            raise ValueError(f"prompt must contain '{{}}' where the concept goes, got {prompt!r}")
        if image_to_text not in ("identity", "concept_labels"):
            raise ValueError(f"image_to_text must be 'identity' or 'concept_labels', got {image_to_text!r}")
        self.in_features = int(in_features)
        self.prompt = prompt
        self.image_to_text = image_to_text
        self.ridge = float(ridge)
        vec = torch.empty(0) if concept_vectors is None else torch.as_tensor(concept_vectors).float().clone()
        if image_to_text == "identity" and vec.numel():
            check_widths(self.in_features, vec.shape[1])
        self.register_buffer("concept_vectors", vec)
        self.register_buffer("image_proj", torch.empty(0))
        self.register_buffer("initialised", torch.tensor(False))

    # ----------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name in self._LAZY:
            key = prefix + name
            if key in state_dict and self._buffers[name].shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ text space
    def needs_data_init(self) -> bool:
        # once initialised (or restored from a checkpoint) the text space and statistics stay
        return not bool(self.initialised)

    def init_from_data(
        self,
        h: Tensor,
        concepts: Tensor | None = None,
        y: Tensor | None = None,
        text: TextEncoder | None = None,
    ) -> None:
        """Concept vectors (from ``text`` when not given), the image→text map, then the
        subclass's statistics (:meth:`_init_statistics`)."""
        self.check_input(h)
        if not self.concept_vectors.numel():
            if text is None:
                raise ValueError(
                    f"{type(self).__name__} needs concept_vectors or a paired text encoder (set the data's "
                    "text_encoder, e.g. 'open_clip:<model>' or 'minilm') to embed its concepts"
                )
            vec = text.encode_text([self.prompt.format(n) for n in self.concept_names])
            check_concept_set(self.concept_names, vec, f"{type(self).__name__} concepts")
            self.concept_vectors = vec.float().to(h.device)
        vec = self.concept_vectors
        if self.image_to_text == "identity":
            check_widths(h.shape[1], vec.shape[1])
            self.image_proj = torch.empty(0, device=h.device)
        else:
            self.image_proj = fit_image_to_text(h, concepts, vec, self.ridge).to(h.device)
        if self.num_concepts > self.in_features:
            warnings.warn(
                f"{type(self).__name__}: {self.num_concepts} concepts but only {self.in_features}-dimensional "
                f"features: at most {self.in_features} concept activations are linearly independent",
                stacklevel=2,
            )
        if self.learns_concept_layer and self.num_concepts > h.shape[0]:
            warnings.warn(
                f"{type(self).__name__}: {self.num_concepts} concepts but only {h.shape[0]} training images; "
                "the data cannot support that many concepts (filter or select a smaller set)",
                stacklevel=2,
            )
        self.initialised.fill_(True)
        with torch.no_grad():
            self._init_statistics(h, self.similarities(h), concepts, y)

    def _init_statistics(self, h: Tensor, sims: Tensor, concepts: Tensor | None, y: Tensor | None) -> None:
        """Subclass hook: statistics from the training sample's similarities ``(n, num_concepts)``."""

    def image_embedding(self, h: Tensor) -> Tensor:
        """Image features in the text space ``(batch, d_text)``."""
        return h if self.image_to_text == "identity" else h @ self.image_proj

    def similarities(self, h: Tensor) -> Tensor:
        """Image–concept cosine similarities ``(batch, num_concepts)``."""
        if not bool(self.initialised):
            raise RuntimeError(
                f"{type(self).__name__} has no text space yet: init_from_data must run first (the model "
                "calls it at fit start with the data's text encoder)"
            )
        return F.normalize(self.image_embedding(h), dim=1) @ F.normalize(self.concept_vectors, dim=1).T

    def _count_targets(self, n: int) -> None:
        if self.training and int(self.concept_labels_seen) >= 0:
            self.concept_labels_seen += n

    def loss_terms(self, out: BottleneckOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # Concepts come from language: concept labels in the batch are for evaluation only.
        return dict(out.losses)


class LabelFreeCBM(LanguageConceptLayer):
    """Label-free CBM (Oikarinen et al., 2023): a concept layer aligned to image–text similarities.

    ``q = W_c h`` ``(batch, num_concepts)`` is trained with the cos³ projection loss
    ``-mean_c cos³(q[:, c], sims[:, c])`` (loss name ``"projection"``); the head reads
    ``sigmoid(BatchNorm(q))`` — the concept activations standardised with running
    statistics, as probabilities, so interventions set them like any concept unit.
    With ``detach=True`` (default) the task loss does not reach ``W_c``: concepts are
    learned from language only, the head from labels (Label-free's two steps in one run).

    After training, :meth:`interpretability` gives each concept's cos³ similarity on held-out
    features; Label-free drops concepts below a cutoff (0.45 with CLIP) and retrains.

    Args: see :class:`LanguageConceptLayer`; ``detach`` as above.
    """

    def __init__(
        self,
        in_features: int,
        concept_names: list[str],
        concept_vectors: Tensor | None = None,
        prompt: str = "{}",
        image_to_text: ImageToText = "identity",
        ridge: float = 1.0,
        detach: bool = True,
    ) -> None:
        super().__init__(in_features, concept_names, concept_vectors, prompt, image_to_text, ridge)
        self.out_features = self.num_concepts
        self.detach = detach
        self.projection = nn.Linear(self.in_features, self.num_concepts, bias=False)
        self.norm = nn.BatchNorm1d(self.num_concepts, affine=False)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        q = self.projection(h)
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        if h.shape[0] > 1:
            with torch.no_grad():
                target = self.similarities(h)
            sim = cos3_similarity(q, target)
            losses["projection"] = -sim.mean()
            metrics["projection_cos3"] = sim.mean().detach()
            self._count_targets(target.numel())
        q_head = q.detach() if self.detach else q
        if self.training and h.shape[0] == 1:  # batch statistics need two rows: use the running ones
            logits = F.batch_norm(q_head, self.norm.running_mean, self.norm.running_var, training=False)
        else:
            logits = self.norm(q_head)
        probs = apply_intervention(torch.sigmoid(logits), concepts, intervention_mask)
        return BottleneckOutput(z=probs, losses=losses, concepts=logits, probs=probs, metrics=metrics)

    @torch.no_grad()
    def interpretability(self, h: Tensor) -> dict[str, float]:
        """Each concept's cos³ similarity between its activations and its image–text
        similarities on features ``h`` ``(n, in_features)`` (held-out data)."""
        sim = cos3_similarity(self.projection(h), self.similarities(h))
        return dict(zip(self.concept_names, sim.tolist()))


class LaBoBottleneck(LanguageConceptLayer):
    """LaBo (Yang et al., 2023): fixed image–concept scores, class–concept weights from the
    language prior; predicts the classes itself.

    Concept probabilities are ``sigmoid`` of the image–concept similarities standardised with
    the training sample's statistics; class logits are
    ``scale * probs @ softmax(W, dim=1).T`` with ``W`` ``(num_classes, num_concepts)``
    initialised to ``prior_strength`` where the language model listed a concept for a class
    (``class_concepts``) and 0 elsewhere — at step 0 the model already classifies by
    "which of my concepts are present"; training (few shots suffice) re-weights.

    Args:
        num_classes: number of classes (linked from the data).
        class_concepts: class name → its concepts (LaBo's class2concepts, after selection);
            None: a flat prior.
        class_names: the class order of the labels (default: the order of ``class_concepts``).
        prior_strength: initial weight of a listed concept.
        Others: see :class:`LanguageConceptLayer`.
    """

    predicts_task = True
    learns_concept_layer = False  # fixed image–concept scores: made for few shots

    def __init__(
        self,
        in_features: int,
        concept_names: list[str],
        num_classes: int,
        class_concepts: dict[str, list[str]] | None = None,
        class_names: list[str] | None = None,
        concept_vectors: Tensor | None = None,
        prompt: str = "{}",
        image_to_text: ImageToText = "identity",
        ridge: float = 1.0,
        prior_strength: float = 3.0,
    ) -> None:
        super().__init__(in_features, concept_names, concept_vectors, prompt, image_to_text, ridge)
        if num_classes is None or num_classes < 2:
            raise ValueError(f"LaBoBottleneck needs num_classes >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.out_features = self.num_classes
        prior = torch.zeros(self.num_classes, self.num_concepts)
        if class_concepts:
            order = list(class_names) if class_names is not None else list(class_concepts)
            if len(order) != self.num_classes:
                raise ValueError(
                    f"LaBoBottleneck: {len(order)} class names {order[:10]} but num_classes={self.num_classes}"
                )
            pos = {n: i for i, n in enumerate(self.concept_names)}
            for cls, names in class_concepts.items():
                if cls not in order:
                    raise ValueError(f"LaBoBottleneck: class_concepts names class {cls!r}, not one of {order}")
                missing = [n for n in names if n not in pos]
                if missing:
                    raise ValueError(
                        f"LaBoBottleneck: class {cls!r} lists concepts not in concept_names: {missing[:10]}"
                    )
                for n in names:
                    prior[order.index(cls), pos[n]] = 1.0
        self.weight = nn.Parameter(prior * prior_strength)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("sim_mean", torch.zeros(self.num_concepts))
        self.register_buffer("sim_std", torch.ones(self.num_concepts))

    def _init_statistics(self, h: Tensor, sims: Tensor, concepts: Tensor | None, y: Tensor | None) -> None:
        self.sim_mean.copy_(sims.mean(0))
        self.sim_std.copy_(sims.std(0) + 1e-6 if len(sims) > 1 else torch.ones_like(self.sim_std))

    def class_concept_weights(self) -> Tensor:
        """``(num_classes, num_concepts)``: each class's distribution over concepts."""
        return torch.softmax(self.weight, dim=1)

    def forward(self, h: Tensor, concepts: Tensor | None = None, intervention_mask: Tensor | None = None) -> BottleneckOutput:
        self.check_input(h)
        logits = (self.similarities(h) - self.sim_mean) / self.sim_std
        self._count_targets(logits.numel())
        probs = apply_intervention(torch.sigmoid(logits), concepts, intervention_mask)
        y = self.log_scale.exp() * probs @ self.class_concept_weights().T
        return BottleneckOutput(z=y, concepts=logits, probs=probs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_concepts={self.num_concepts}, num_classes={self.num_classes}"
