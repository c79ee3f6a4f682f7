"""Concept-quality metrics: does a concept model use the concepts it names, where they are?

Every metric is a function with a documented range and a known answer on an oracle.

From "Concept-based explainable AI: metrics and benchmarks" (attribution-based):

* :func:`global_importance` — share of the decision each unit carries, ``[0, 1]``, sums to 1.
* :func:`existence_score` — are the top-``k`` units a decision relies on present in the image?
  ``[0, 1]``; an oracle scores 1, random units score the base rate of present concepts.
* :func:`location_scores` — does a concept's attribution fall inside its ground-truth mask
  (pointing game; attribution mass inside the mask)? ``[0, 1]``; an oracle map scores 1, a
  random map scores the mask's area fraction (reported as ``chance``).
  :func:`concept_location` runs it on a model (Shapes masks; CUB part locations through
  :func:`concept_part_masks`).

From the concept-bottleneck literature:

* :func:`concept_alignment_score` (CAS, Espinosa Zarlenga et al. 2022) — homogeneity of
  clusters of each concept's representation w.r.t. its label, ``[0, 1]``.
* :func:`oracle_impurity_score` (OIS) and :func:`niche_impurity_score` (NIS), as defined by
  Espinosa Zarlenga et al. 2023, "Towards robust metrics for concept representation evaluation".
* :func:`completeness_score` (Yeh et al. 2020) — how much of the model's accuracy above
  chance the concepts alone recover, ``≈[0, 1]``.
* :func:`causal_concept_effect` (CaCE) — change in the class probabilities when a concept is
  intervened from 0 to 1 through the contract's interventions, ``[-1, 1]``.
* :func:`cooccurrence_matrix` — ``P(concept j | concept i)`` in a dataset, ``[0, 1]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bottlenecks.analysis.model_access import (
    EvalMode,
    bottleneck_of,
    check_concept_supervised,
    forward_concepts,
    model_concept_names,
    model_device,
    model_task,
)

__all__ = [
    "CUB_ATTRIBUTE_PARTS",
    "LocationScores",
    "causal_concept_effect",
    "completeness_score",
    "concept_alignment_score",
    "concept_location",
    "concept_part_masks",
    "concept_purity_matrix",
    "cooccurrence_matrix",
    "existence_score",
    "global_importance",
    "keypoint_masks",
    "location_scores",
    "niche_impurity_score",
    "oracle_impurity_score",
]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _t(x: Any) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


# ============================================================================ location
@dataclass
class LocationScores:
    """Location of attribution maps w.r.t. ground-truth masks, over examples with a non-empty mask.

    Attributes:
        pointing_game: fraction of examples whose map's maximum lies inside the mask, ``[0, 1]``.
        mass_inside: mean fraction of the (non-negative) attribution mass inside the mask, ``[0, 1]``.
        chance: mean area fraction of the masks — what a uniformly random map scores on both.
        n: examples scored (those with a non-empty mask and a non-zero map).
        n_zero_maps: examples skipped because their map was all zero (no attribution at all:
            e.g. a ReLU'd Grad-CAM map with only negative evidence).
        per_example_hit, per_example_mass: ``(n,)`` the per-example values.
    """

    pointing_game: float
    mass_inside: float
    chance: float
    n: int
    n_zero_maps: int
    per_example_hit: Tensor = field(repr=False)
    per_example_mass: Tensor = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "pointing_game": self.pointing_game,
            "mass_inside": self.mass_inside,
            "chance": self.chance,
            "n": self.n,
            "n_zero_maps": self.n_zero_maps,
        }


def location_scores(maps: Tensor, masks: Tensor, tolerance: int = 0) -> LocationScores:
    """Pointing game and attribution mass inside the mask.

    Args:
        maps: ``(n, H, W)`` attribution maps; negative values count as 0 (reduce signed
            attributions with :func:`~bottlenecks.analysis.attribution.attribution_map` first).
        masks: ``(n, H, W)`` bool ground-truth locations, same size as the maps.
        tolerance: pixels by which the mask is dilated for the pointing game (the usual
            15 px at 224 px scales to 4 px at 64 px); 0 = exact.

    Returns:
        :class:`LocationScores`; examples with an empty mask or an all-zero map are skipped
        (scores are NaN when every map is zero). Range ``[0, 1]`` for both scores; an oracle
        map (the mask itself) scores 1 and a random map scores about ``chance`` (the mask's
        area fraction).
    """
    maps, masks = _t(maps).float(), _t(masks).bool()
    if maps.dim() != 3 or masks.dim() != 3:
        raise ValueError(f"expected maps and masks of shape (n, H, W), got {tuple(maps.shape)} and {tuple(masks.shape)}")
    if maps.shape != masks.shape:
        raise ValueError(
            f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape; attribute images of the "
            "masks' size (the maps are upsampled to the input images' size)"
        )
    if not torch.isfinite(maps).all():
        raise ValueError("attribution maps contain NaN or inf")
    pos = maps.clamp_min(0)
    flat, fm = pos.flatten(1), masks.flatten(1)
    has_mask = fm.any(1)
    if not has_mask.any():
        raise ValueError("every mask is empty: score only examples where the concept is present (visible)")
    nonzero = flat.sum(1) > 0
    keep = has_mask & nonzero
    n_zero = int((has_mask & ~nonzero).sum())
    chance = float(fm[has_mask].float().mean(1).mean())
    flat, fm = flat[keep], fm[keep]
    if not len(flat):
        empty = torch.zeros(0)
        return LocationScores(float("nan"), float("nan"), chance, 0, n_zero, empty, empty)
    hit_mask = fm
    if tolerance > 0:
        m = masks[keep].float()[:, None]
        k = 2 * tolerance + 1
        hit_mask = (torch.nn.functional.max_pool2d(m, k, stride=1, padding=tolerance)[:, 0] > 0).flatten(1)
    # ties: the maximum counts as a hit when any maximal pixel lies in the mask
    top = flat == flat.max(1, keepdim=True).values
    hit = (top & hit_mask).any(1).float()
    mass = (flat * fm).sum(1) / flat.sum(1)
    return LocationScores(
        pointing_game=float(hit.mean()),
        mass_inside=float(mass.mean()),
        chance=chance,
        n=int(len(flat)),
        n_zero_maps=n_zero,
        per_example_hit=hit,
        per_example_mass=mass,
    )


def keypoint_masks(parts: Tensor, size: tuple[int, int] | int, radius: float) -> Tensor:
    """Disks around part locations: ``(n, n_parts, 3)`` ``(x, y, visible)`` in pixels →
    ``(n, n_parts, H, W)`` bool (all False for invisible parts)."""
    parts = _t(parts).float()
    if parts.dim() != 3 or parts.shape[-1] != 3:
        raise ValueError(f"expected part locations of shape (n, n_parts, 3) = (x, y, visible), got {tuple(parts.shape)}")
    h, w = (size, size) if isinstance(size, int) else size
    yy = torch.arange(h).float().view(1, 1, h, 1) + 0.5
    xx = torch.arange(w).float().view(1, 1, 1, w) + 0.5
    x, y, vis = (parts[..., i, None, None] for i in range(3))
    return ((xx - x) ** 2 + (yy - y) ** 2 <= radius**2) & (vis > 0)


#: Which CUB parts (``parts/parts.txt`` names) each CUB attribute group describes; groups
#: absent here (size, shape, primary colour) describe the whole bird and have no part mask.
CUB_ATTRIBUTE_PARTS: dict[str, tuple[str, ...]] = {
    "bill": ("beak",),
    "wing": ("left wing", "right wing"),
    "upperparts": ("back", "nape", "crown"),
    "underparts": ("breast", "belly", "throat"),
    "breast": ("breast",),
    "back": ("back",),
    "upper_tail": ("tail",),
    "under_tail": ("tail",),
    "tail": ("tail",),
    "head": ("crown", "forehead", "nape", "left eye", "right eye", "beak"),
    "throat": ("throat",),
    "eye": ("left eye", "right eye"),
    "forehead": ("forehead",),
    "nape": ("nape",),
    "belly": ("belly",),
    "leg": ("left leg", "right leg"),
    "crown": ("crown",),
}


def _attribute_parts(concept: str) -> tuple[str, ...]:
    name = concept.split("::")[0].removeprefix("has_")
    for group in sorted(CUB_ATTRIBUTE_PARTS, key=len, reverse=True):  # "upper_tail" before "tail"
        if name.startswith(group + "_") or name == group:
            return CUB_ATTRIBUTE_PARTS[group]
    return ()


def concept_part_masks(
    parts: Tensor,
    part_names: Sequence[str],
    concept_names: Sequence[str],
    size: tuple[int, int] | int,
    radius: float,
) -> Tensor:
    """Ground-truth masks of CUB concepts from part locations.

    Args:
        parts: ``(n, n_parts, 3)`` ``(x, y, visible)`` in pixels of the images (as
            :class:`~bottlenecks.data.cub.CUB200` returns them under ``"parts"``).
        part_names: the dataset's part names (``CUB200.part_names``).
        concept_names: CUB attribute names (``has_wing_color::blue``); each maps to the parts
            of its group (:data:`CUB_ATTRIBUTE_PARTS`); whole-bird attributes get empty masks.
        size: image ``(H, W)``.
        radius: disk radius in pixels around each part.

    Returns:
        ``(n, n_concepts, H, W)`` bool.
    """
    disks = keypoint_masks(parts, size, radius)
    index = {p: i for i, p in enumerate(part_names)}
    out = torch.zeros(disks.shape[0], len(concept_names), *disks.shape[-2:], dtype=torch.bool)
    for k, c in enumerate(concept_names):
        cols = [index[p] for p in _attribute_parts(c) if p in index]
        if cols:
            out[:, k] = disks[:, cols].any(1)
    return out


def concept_location(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    units: Sequence[str | int] | None = None,
    method: str = "grad_cam",
    tolerance: int = 0,
    batch_size: int = 32,
    **kwargs: Any,
) -> dict[str, LocationScores]:
    """Location metrics of a model's concept attributions: for each concept unit, the
    pointing game and mass inside its ground-truth mask, over the images where the mask is
    non-empty (the concept is present / visible).

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` with an image encoder.
        images: ``(n, 3, H, W)`` in ``[0, 1]``.
        masks: ``(n, n_units, H, W)`` bool, column ``k`` the mask of unit ``k``
            (Shapes' ``"masks"``; :func:`concept_part_masks` for CUB).
        units: which units (names or indices; default all with a non-empty mask somewhere).
        method, **kwargs: the attribution method, see :func:`~bottlenecks.analysis.attribution.attribute`.

    Returns:
        ``{unit name: LocationScores}``.
    """
    from bottlenecks.analysis.attribution import attribute, attribution_map

    all_units = bottleneck_of(model).units()
    masks = _t(masks).bool()
    if masks.dim() != 4 or masks.shape[1] != len(all_units) or masks.shape[0] != images.shape[0]:
        raise ValueError(
            f"masks must be (n_images={images.shape[0]}, n_units={len(all_units)}, H, W), one per "
            f"{all_units.kind}, got {tuple(masks.shape)}"
        )
    if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
        raise ValueError(
            f"masks are {tuple(masks.shape[-2:])} pixels but the images {tuple(images.shape[-2:])}; they must match"
        )
    chosen = all_units.indices(units) if units is not None else [k for k in range(len(all_units)) if masks[:, k].any()]
    out: dict[str, LocationScores] = {}
    for k in chosen:
        rows = masks[:, k].flatten(1).any(1).nonzero().flatten()
        if not len(rows):
            continue
        maps = torch.cat(
            [
                attribution_map(attribute(model, images[rows[s : s + batch_size]], unit=k, method=method, **dict(kwargs))).cpu()
                for s in range(0, len(rows), batch_size)
            ]
        )
        out[all_units.names[k]] = location_scores(maps, masks[rows, k], tolerance)
    return out


# ============================================================================ decision
def global_importance(contributions: Tensor) -> Tensor:
    """Global importance of each unit: mean ``|contribution|`` over examples, normalised to sum 1.

    Args:
        contributions: ``(n, n_units)`` contribution of each unit to each example's decision
            (:meth:`~bottlenecks.analysis.attribution.Contributions.for_class`).

    Returns:
        ``(n_units,)`` in ``[0, 1]``, summing to 1 (all zeros when nothing contributes).
    """
    c = _t(contributions).float()
    if c.dim() != 2:
        raise ValueError(f"expected contributions of shape (n, n_units), got {tuple(c.shape)}")
    g = c.abs().mean(0)
    total = g.sum()
    return g / total if total > 0 else g


def existence_score(contributions: Tensor, present: Tensor, k: int = 3) -> float:
    """Existence: are the ``k`` units a decision relies on most present in the input?

    Args:
        contributions: ``(n, n_units)`` contribution of each unit to each example's decision.
        present: ``(n, n_units)`` ground truth, 1 where the concept is present (NaN = unknown:
            such units are left out of the ranking).
        k: how many top units (by positive contribution) to check.

    Returns:
        Mean fraction of each example's top-``k`` units that are present, ``[0, 1]``. A model
        that decides from present concepts scores 1 (on examples with at least ``k`` present
        concepts); random rankings score the base rate of present concepts.
    """
    c, p = _t(contributions).float(), _t(present).float()
    if c.shape != p.shape or c.dim() != 2:
        raise ValueError(f"contributions {tuple(c.shape)} and present {tuple(p.shape)} must both be (n, n_units)")
    if not 1 <= k <= c.shape[1]:
        raise ValueError(f"k must be between 1 and the number of units ({c.shape[1]}), got {k}")
    c = torch.where(torch.isnan(p), torch.full_like(c, -float("inf")), c)
    top = c.topk(k, dim=1).indices
    return float(torch.nan_to_num(p.gather(1, top), nan=0.0).mean())


# ============================================================================ representation
def _cluster_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)


def concept_alignment_score(
    representations: Tensor | np.ndarray,
    concepts: Tensor | np.ndarray,
    ks: Sequence[int] = (2, 3, 4, 5),
    seed: int = 0,
) -> float:
    """Concept alignment score (CAS): how well clusters of each concept's representation agree
    with its label — the homogeneity (sklearn ``homogeneity_score``) of k-means clusters of
    concept ``i``'s representation w.r.t. concept ``i``'s labels, averaged over ``ks`` and
    concepts.

    Args:
        representations: ``(n, n_concepts)`` scalar representations (probabilities) or
            ``(n, n_concepts, d)`` per-concept embeddings (CEM).
        concepts: ``(n, n_concepts)`` binary labels (NaN rows of a concept are skipped).
        ks: cluster counts.

    Returns:
        ``[0, 1]``: 1 when every cluster holds one label value (an oracle), near 0 for
        representations unrelated to the labels.
    """
    from sklearn.metrics import homogeneity_score

    r, c = _np(representations).astype(np.float64), _np(concepts).astype(np.float64)
    if r.ndim == 2:
        r = r[..., None]
    if r.ndim != 3 or c.ndim != 2 or r.shape[:2] != c.shape:
        raise ValueError(
            f"representations {r.shape} must be (n, n_concepts[, d]) matching concepts {c.shape} (n, n_concepts)"
        )
    scores = []
    for i in range(c.shape[1]):
        ok = ~np.isnan(c[:, i])
        for k in ks:
            if ok.sum() <= k:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores.append(homogeneity_score(c[ok, i].astype(int), _cluster_labels(r[ok, i], int(k), seed)))
    if not scores:
        raise ValueError("too few labelled examples to cluster")
    return float(np.mean(scores))


def _default_predictor(seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier((32,), max_iter=200, random_state=seed)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def _fit_predict(predictor_fn: Callable[[], Any], x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    if len(np.unique(y_tr)) < 2:  # a constant concept: predict its value
        return np.full(len(x_te), float(y_tr[0]) if len(y_tr) else 0.5)
    est = predictor_fn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x_tr, y_tr)
    return est.predict_proba(x_te)[:, 1]


def _split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_size)))
    return perm[n_test:], perm[:n_test]


def _as_concept_inputs(c_soft: Any, n_concepts: int) -> list[np.ndarray]:
    r = _np(c_soft).astype(np.float64)
    if r.ndim == 2:
        r = r[..., None]
    if r.ndim != 3 or r.shape[1] != n_concepts:
        raise ValueError(
            f"concept representations must be (n, n_concepts={n_concepts}) or (n, n_concepts, d), got {r.shape}"
        )
    return [r[:, i] for i in range(n_concepts)]


def concept_purity_matrix(
    c_soft: Tensor | np.ndarray,
    c_true: Tensor | np.ndarray,
    predictor: Callable[[], Any] | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    oracle: bool = False,
) -> np.ndarray:
    """Purity matrix ``π``: entry ``(i, j)`` is the test ROC-AUC of a small classifier (an MLP with
    32 hidden units by default) predicting true concept ``j`` from representation ``i`` alone.

    Args:
        c_soft: ``(n, k)`` or ``(n, k, d)`` representations.
        c_true: ``(n, k)`` binary concept labels.
        predictor: a factory of sklearn classifiers (``fit`` / ``predict_proba``).
        oracle: the oracle matrix (``c_soft`` are the labels): its diagonal is set to 1.

    Returns:
        ``(k, k)`` AUCs in ``[0, 1]`` (NaN where a test split holds one class only).
    """
    y = _np(c_true).astype(np.float64)
    if y.ndim != 2 or np.isnan(y).any():
        raise ValueError(f"c_true must be (n, n_concepts) fully labelled binary values, got shape {y.shape}")
    xs = _as_concept_inputs(c_soft, y.shape[1])
    tr, te = _split(len(y), test_size, seed)
    fn = predictor or (lambda: _default_predictor(seed))
    k = y.shape[1]
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if oracle and i == j:
                out[i, j] = 1.0
                continue
            p = _fit_predict(fn, xs[i][tr], y[tr, j].astype(int), xs[i][te])
            out[i, j] = _auc(y[te, j], p)
    return out


def oracle_impurity_score(
    c_soft: Tensor | np.ndarray,
    c_true: Tensor | np.ndarray,
    predictor: Callable[[], Any] | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    oracle_matrix: np.ndarray | None = None,
) -> float:
    """Oracle impurity score (OIS, Espinosa Zarlenga et al. 2023):
    ``OIS = ||π(ĉ, c) − π(c, c)||_F / (k / 2)``, where ``π(ĉ, c)`` is the
    :func:`concept_purity_matrix` of the representations and ``π(c, c)`` that of the true
    concepts (the oracle: how much each concept already tells about the others).

    Returns:
        ``[0, 1]`` (AUCs in ``[0.5, 1]`` differ by at most 0.5 per entry): 0 when each
        representation holds exactly what its concept tells about the others (an oracle
        representation scores ≈0), higher when it also encodes other concepts.
    """
    pred = concept_purity_matrix(c_soft, c_true, predictor, test_size, seed)
    orc = oracle_matrix if oracle_matrix is not None else concept_purity_matrix(c_true, c_true, predictor, test_size, seed, oracle=True)
    k = pred.shape[0]
    diff = np.nan_to_num(np.abs(orc - pred), nan=0.0)
    return float(np.linalg.norm(diff, ord="fro") / (k / 2))


def niche_impurity_score(
    c_soft: Tensor | np.ndarray,
    c_true: Tensor | np.ndarray,
    predictor: Callable[[], Any] | None = None,
    delta_beta: float = 0.05,
    test_size: float = 0.2,
    seed: int = 0,
) -> float:
    """Niche impurity score (NIS, Espinosa Zarlenga et al. 2023).

    One classifier per concept ``j`` is trained on *all* representations; the niche of ``j``
    at threshold ``β`` are the representations whose absolute correlation with concept ``j``
    (on the training split) exceeds ``β``. ``NI_j(β)`` is the test ROC-AUC of that
    classifier when the niche is zeroed out (only the representations *outside* the niche
    speak). ``NIS = ∫_0^1 mean_j NI_j(β) dβ`` (trapezoid rule over ``β = 0, δ, ..., 1 − δ``,
    as in the authors' code).

    Args:
        c_soft: ``(n, k)`` scalar representations (one per concept; or ``(n, m)`` with any
            ``m`` representation dimensions).
        c_true: ``(n, k)`` binary labels.

    Returns:
        ``[0, 1]``. Lower is purer: when each concept lives only in its niche, the rest tells
        nothing and ``NI ≈ 0.5`` (chance AUC) for every β, so NIS ≈ 0.5 × (1 − δ); information
        about a concept spread outside its niche raises it toward 1 − δ.
    """
    y = _np(c_true).astype(np.float64)
    x = _np(c_soft).astype(np.float64)
    if x.ndim == 3:
        x = x.reshape(len(x), -1)
    if y.ndim != 2 or x.ndim != 2 or len(x) != len(y) or np.isnan(y).any():
        raise ValueError(f"c_soft {x.shape} and c_true {y.shape} must be (n, m) and (n, k) with labelled c_true")
    tr, te = _split(len(y), test_size, seed)
    fn = predictor or (lambda: _default_predictor(seed))
    models = []
    for j in range(y.shape[1]):
        est = None
        if len(np.unique(y[tr, j])) > 1:
            est = fn()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(x[tr], y[tr, j].astype(int))
        models.append(est)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = x[tr] - x[tr].mean(0)
        yc = y[tr] - y[tr].mean(0)
        corr = (xc.T @ yc) / np.sqrt(np.outer((xc**2).sum(0), (yc**2).sum(0)))
    corr = np.nan_to_num(np.abs(corr))  # (m, k)
    betas = np.arange(0.0, 1.0, delta_beta)
    curve = []
    for beta in betas:
        aucs = []
        for j, est in enumerate(models):
            if est is None:
                continue
            outside = x[te].copy()
            outside[:, corr[:, j] > beta] = 0.0
            aucs.append(_auc(y[te, j], est.predict_proba(outside)[:, 1]))
        curve.append(np.nanmean(aucs) if aucs else np.nan)
    curve_a = np.asarray(curve)
    return float(np.sum((curve_a[1:] + curve_a[:-1]) * (delta_beta / 2)))


def completeness_score(
    concepts_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    concepts_test: Tensor | np.ndarray,
    y_test: Tensor | np.ndarray,
    model_accuracy: float,
    predictor: Any | None = None,
) -> float:
    """Completeness (Yeh et al. 2020): ``(acc_g − a_r) / (acc_model − a_r)``, where ``acc_g``
    is the test accuracy of the best predictor ``g`` from the concept activations to the label
    (an MLP by default, fitted on the training split), ``acc_model`` the model's own accuracy
    and ``a_r`` the accuracy of always guessing the most frequent training class.

    Returns:
        ``≈[0, 1]``: 1 when the concepts recover all of the model's accuracy above chance,
        0 when they recover none (it exceeds 1 when ``g`` beats the model).
    """
    from sklearn.neural_network import MLPClassifier

    ctr, cte = _np(concepts_train).astype(np.float64), _np(concepts_test).astype(np.float64)
    ytr, yte = _np(y_train).astype(int), _np(y_test).astype(int)
    if ctr.ndim != 2 or cte.ndim != 2 or len(ctr) != len(ytr) or len(cte) != len(yte):
        raise ValueError(
            f"expected concepts (n, k) with one label each: train {ctr.shape} / {ytr.shape}, test {cte.shape} / {yte.shape}"
        )
    counts = np.bincount(ytr)
    a_r = float(np.mean(yte == counts.argmax()))
    if model_accuracy <= a_r:
        raise ValueError(
            f"model_accuracy {model_accuracy:.3f} is not above the majority-class accuracy {a_r:.3f}; "
            "completeness is undefined"
        )
    g = predictor if predictor is not None else MLPClassifier((64,), max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g.fit(np.nan_to_num(ctr), ytr)
    acc_g = float(np.mean(g.predict(np.nan_to_num(cte)) == yte))
    return (acc_g - a_r) / (model_accuracy - a_r)


# ============================================================================ interventions
@torch.no_grad()
def causal_concept_effect(
    model: nn.Module, inputs: Tensor, concepts: Sequence[str | int] | None = None, batch_size: int = 1024
) -> tuple[Tensor, list[str]]:
    """Causal concept effect (CaCE): the mean change of the class probabilities (softmax; the
    prediction for regression) when a concept is intervened from 0 to 1, through the
    contract's interventions (``model(x, concepts=values, intervention_mask=mask)``):
    ``CaCE[i, c] = mean_x [p(c | x, do(concept_i = 1)) − p(c | x, do(concept_i = 0))]``.

    Args:
        model: a :class:`~bottlenecks.models.module.BottleneckModel` with a concept
            bottleneck trained with concept labels.
        inputs: features ``(n, d)`` or images ``(n, 3, H, W)``.
        concepts: which concepts (names or indices; default all).

    Returns:
        ``(cace, names)``: ``(n_selected, n_classes)`` (``(n_selected, 1)`` for regression)
        in ``[-1, 1]``, and the concept names.
    """
    names = model_concept_names(model)
    check_concept_supervised(model)
    units = bottleneck_of(model).units()
    chosen = list(range(len(names))) if concepts is None else units.indices(concepts)
    device = model_device(model)
    regression = model_task(model) == "regression"
    sums: Tensor | None = None
    n = 0
    with EvalMode(model):
        for s in range(0, len(inputs), batch_size):
            x = inputs[s : s + batch_size].to(device)
            b = len(x)
            rows = []
            for i in chosen:
                mask = torch.zeros(b, len(names), dtype=torch.bool, device=device)
                mask[:, i] = True
                outs = []
                for v in (1.0, 0.0):
                    values = torch.full((b, len(names)), float("nan"), device=device)
                    values[:, i] = v
                    y_hat, _, _ = forward_concepts(model, x, values, mask)
                    outs.append(y_hat.float().unsqueeze(-1) if regression else y_hat.float().softmax(-1))
                rows.append((outs[0] - outs[1]).sum(0))
            batch_sum = torch.stack(rows)
            sums = batch_sum if sums is None else sums + batch_sum
            n += b
    if sums is None:
        raise ValueError("inputs are empty")
    return (sums / n).cpu(), [names[i] for i in chosen]


def cooccurrence_matrix(concepts: Tensor | np.ndarray) -> Tensor:
    """Co-occurrence of binary concepts in a dataset: entry ``(i, j)`` is
    ``P(concept j = 1 | concept i = 1)`` over rows where both are labelled (NaN = unlabelled).

    Args:
        concepts: ``(n, k)`` values in ``{0, 1}`` (NaN allowed).

    Returns:
        ``(k, k)`` in ``[0, 1]``; the diagonal is 1 for concepts that occur; a row is NaN for a
        concept that never occurs. Two concepts that always co-occur have 1 both ways.
    """
    c = _t(concepts).float()
    if c.dim() != 2:
        raise ValueError(f"expected concepts of shape (n, n_concepts), got {tuple(c.shape)}")
    known = ~torch.isnan(c)
    on = torch.nan_to_num(c) > 0.5
    both = (on.float().T @ (on & known).float())  # (i on) & (j on)
    labelled = on.float().T @ known.float()  # (i on) & (j labelled)
    return torch.where(labelled > 0, both / labelled.clamp_min(1), torch.full_like(both, float("nan")))
