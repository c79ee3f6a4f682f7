"""Procedural shapes: a concept dataset whose ground truth is known exactly.

Each image shows one object (or a *pair* of identical objects) on a grey
background. Ten binary concepts describe it (vocabulary and one-line
descriptions in ``src/data/shapes_concepts.json``):

==========  ================================================================
group       concepts
==========  ================================================================
colour      ``red``, ``green``, ``blue`` (exactly one)
shape       ``circle``, ``square``, ``triangle`` (exactly one)
size        ``large`` (radius about 1.7 times that of a small object)
count       ``pair`` (two objects sharing colour, shape, size and style)
background  ``striped_background`` (stripes of a second grey level)
style       ``outlined`` (object drawn as an outline instead of filled)
==========  ================================================================

**Label rule.** ``label = 3 * shape_index + colour_index`` with
``shape_index`` over (circle, square, triangle) and ``colour_index`` over
(red, green, blue): 9 classes named ``"red circle"``, ``"green circle"``, ...,
``"blue triangle"``. A linear head on the concept vector represents it exactly
(class score = indicator of its colour + indicator of its shape; the argmax picks
the class whose colour *and* shape are on).

**Nuisances.** Position, rotation of squares and triangles, radius within its
size class, per-channel colour jitter, background grey level, stripe angle and
phase, and pixel noise (uniform, standard deviation 0.03) are all random, so an
encoder has to generalise; every concept stays clearly visible at 64 px.

**Determinism.** All latent factors of a split are drawn at construction from one
stream seeded by ``(seed, split)``, ``n`` rows of uniforms at a time, so item
``i`` does not depend on ``n`` (a smaller dataset is a prefix of a larger one).
Only pixel noise is drawn at render time, from a generator seeded by
``(seed, split, index)``. An item is therefore rendered on demand, identically in
any process or worker, and :meth:`ShapesDataset.targets` /
:meth:`ShapesDataset.concept_table` never render an image.

**Knobs** (all default off):

* ``cooccurrence`` — with this probability per image the designated pair
  **red ↔ circle** is forced to co-occur: a red object becomes a circle and a
  circle becomes red. At 1.0, ``red`` holds exactly when ``circle`` does. This
  shifts the marginals: ``P(red) = P(circle) = 1/3 + 2p/9``.
* ``label_noise`` — with this probability per image the label is replaced by a
  uniformly random *other* class (concepts stay clean). :meth:`clean_targets`
  gives the labels before noise.
* ``confounded`` — ``striped_background`` is drawn from
  ``Bernoulli(spurious_strength)`` when the (observed) label is odd and
  ``Bernoulli(1 - spurious_strength)`` when it is even, in train and val; in
  test the roles swap, so the correlation changes sign. The label rule is
  unchanged. Without ``confounded``, ``striped_background ~ Bernoulli(0.5)``
  independently of everything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from bottlenecks.data.assets import load_json
from bottlenecks.data.base import ConceptDataset, check_concepts, check_labels, stable_hash

#: Order of the concepts the renderer draws; must equal the names in shapes_concepts.json.
SHAPES_CONCEPTS: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "triangle",
    "large",
    "pair",
    "striped_background",
    "outlined",
)
COLOURS = ("red", "green", "blue")
SHAPES = ("circle", "square", "triangle")
CLASS_NAMES = [f"{c} {s}" for s in SHAPES for c in COLOURS]
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 10000, "val": 2000, "test": 2000}

# Bumped whenever rendering or sampling changes, so feature caches keyed on the
# fingerprint are rebuilt.
RENDER_VERSION = 2

# Base RGB of each colour (jittered per image by up to +-COLOUR_JITTER per channel).
_BASE_RGB = np.array([[0.85, 0.12, 0.12], [0.12, 0.75, 0.15], [0.15, 0.25, 0.90]], np.float32)
COLOUR_JITTER = 0.08
# Radius (fraction of the image side) of small and large objects.
SMALL_RADIUS = (0.095, 0.115)
LARGE_RADIUS = (0.165, 0.185)
# Half-extent of each shape relative to its radius: circle radius, square
# apothem (half side), triangle circumradius. Chosen so the three look equally big.
_SHAPE_SCALE = np.array([1.0, 0.86, 1.3], np.float32)
# Radius of the circle that encloses each shape, relative to the radius (used for placement).
_SHAPE_EXTENT = np.array([1.0, 0.86 * math.sqrt(2.0), 1.3], np.float32)
OUTLINE_WIDTH = 0.03  # fraction of the image side
STRIPE_PERIOD = 0.125  # fraction of the image side (stripe + gap)
STRIPE_CONTRAST = 0.2
BACKGROUND_GREY = (0.35, 0.65)
PIXEL_NOISE = 0.03

# Columns of the uniform table drawn per image (order fixed: changing it changes the data).
_U_COLOUR, _U_SHAPE, _U_LARGE, _U_PAIR, _U_OUTLINED, _U_STRIPED = range(6)
_U_COUPLE, _U_NOISY, _U_NOISE_OFFSET, _U_RADIUS, _U_GREY = range(6, 11)
_U_JITTER = slice(11, 14)
_U_STRIPE_ANGLE, _U_STRIPE_PHASE, _U_LAYOUT = 14, 15, 16
_U_POS1, _U_POS2 = slice(17, 19), slice(19, 21)
_U_ROT1, _U_ROT2 = 21, 22
_N_UNIFORMS = 23


def shapes_vocabulary() -> dict[str, Any]:
    """The shipped vocabulary (``shapes_concepts.json``), checked against the renderer."""
    vocab = load_json("shapes_concepts.json")
    names = [c["name"] for c in vocab["concepts"]]
    if tuple(names) != SHAPES_CONCEPTS:
        raise ValueError(
            f"shapes_concepts.json lists concepts {names} but the renderer draws "
            f"{list(SHAPES_CONCEPTS)} (same names, same order expected)"
        )
    if vocab["class_names"] != CLASS_NAMES:
        raise ValueError(
            f"shapes_concepts.json lists classes {vocab['class_names']} but the label rule "
            f"gives {CLASS_NAMES}"
        )
    return vocab


class ShapesDataset(ConceptDataset):
    """Procedural coloured shapes with 10 binary concepts, pixel masks and a linear label rule.

    See the module docstring for the concepts, the label rule
    (``label = 3 * shape_index + colour_index``) and the knobs.

    Items::

        {"x": (3, image_size, image_size) float32 in [0, 1],
         "y": int64 class index in [0, 9),
         "concepts": (10,) float32 in {0, 1},
         "masks": (10, image_size, image_size) bool,   # when return_masks
         "index": int}

    ``masks[k]`` marks where concept ``k`` is visible: the drawn object pixels (both
    objects of a pair; only the outline when outlined) for the colour, shape,
    ``large``, ``pair`` and ``outlined`` concepts, the remaining (background) pixels
    for ``striped_background``, and nothing for a concept that is off.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split has its own random stream.
        n: number of images; None gives 10000 for train and 2000 for val/test.
        seed: the one seed all randomness flows from.
        image_size: side of the square images in pixels (at least 24).
        cooccurrence: probability per image that red and circle are forced to co-occur.
        label_noise: probability per image that the label is replaced by a random other class.
        confounded: make ``striped_background`` follow the label parity (sign flips in test).
        spurious_strength: ``P(striped | odd label)`` in train/val when confounded.
        return_masks: include the ``"masks"`` entry in items.

    Example::

        ds = ShapesDataset("train", n=100)
        item = ds[0]            # item["x"]: (3, 64, 64)
        ds.concept_table()      # (100, 10), no image rendered
    """

    task = "classification"
    kind = "image"

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        n: int | None = None,
        seed: int = 0,
        image_size: int = 64,
        cooccurrence: float = 0.0,
        label_noise: float = 0.0,
        confounded: bool = False,
        spurious_strength: float = 0.9,
        return_masks: bool = True,
    ) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"ShapesDataset: split must be one of {list(SPLIT_IDS)}, got {split!r}")
        if n is None:
            n = DEFAULT_SIZES[split]
        if int(n) != n or n < 1:
            raise ValueError(f"ShapesDataset: n must be a positive integer, got {n!r}")
        if int(image_size) != image_size or image_size < 24:
            raise ValueError(
                f"ShapesDataset: image_size must be an integer >= 24 pixels (objects must stay "
                f"visible), got {image_size!r}"
            )
        if int(seed) != seed or seed < 0:
            raise ValueError(f"ShapesDataset: seed must be a non-negative integer, got {seed!r}")
        for name, value in (
            ("cooccurrence", cooccurrence),
            ("label_noise", label_noise),
            ("spurious_strength", spurious_strength),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"ShapesDataset: {name} must lie in [0, 1], got {value!r}")

        vocab = shapes_vocabulary()
        self.split = split
        self.n = int(n)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.cooccurrence = float(cooccurrence)
        self.label_noise = float(label_noise)
        self.confounded = bool(confounded)
        self.spurious_strength = float(spurious_strength)
        self.return_masks = bool(return_masks)
        self.concept_names = list(SHAPES_CONCEPTS)
        self.concept_descriptions = {c["name"]: c["description"] for c in vocab["concepts"]}
        self.class_names = list(CLASS_NAMES)
        self.num_classes = len(CLASS_NAMES)

        self._sample_scenes()
        check_labels(self._y, self.num_classes, f"ShapesDataset[{split}]")
        check_concepts(self._concepts, self.concept_names, f"ShapesDataset[{split}]")

    # ------------------------------------------------------------ sampling
    def _sample_scenes(self) -> None:
        """Draw every latent factor of the split at once (vectorised, no rendering)."""
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], 0])
        u = rng.random((self.n, _N_UNIFORMS))
        s = float(self.image_size)

        colour = np.minimum((u[:, _U_COLOUR] * 3).astype(np.int64), 2)
        shape = np.minimum((u[:, _U_SHAPE] * 3).astype(np.int64), 2)
        couple = (u[:, _U_COUPLE] < self.cooccurrence) & ((colour == 0) | (shape == 0))
        colour[couple] = 0
        shape[couple] = 0
        large = u[:, _U_LARGE] < 0.5
        pair = u[:, _U_PAIR] < 0.5
        outlined = u[:, _U_OUTLINED] < 0.5

        y_clean = 3 * shape + colour
        noisy = u[:, _U_NOISY] < self.label_noise
        offset = 1 + np.minimum((u[:, _U_NOISE_OFFSET] * 8).astype(np.int64), 7)
        y = np.where(noisy, (y_clean + offset) % 9, y_clean)

        if self.confounded:
            odd = (y % 2) == 1
            if self.split == "test":
                odd = ~odd
            p_striped = np.where(odd, self.spurious_strength, 1.0 - self.spurious_strength)
        else:
            p_striped = np.full(self.n, 0.5)
        striped = u[:, _U_STRIPED] < p_striped

        lo = np.where(large, LARGE_RADIUS[0], SMALL_RADIUS[0])
        hi = np.where(large, LARGE_RADIUS[1], SMALL_RADIUS[1])
        radius = (lo + (hi - lo) * u[:, _U_RADIUS]) * s
        extent = radius * _SHAPE_EXTENT[shape]

        # Placement: one object anywhere; a pair splits the canvas into two halves
        # (side by side or one above the other) and puts one object in each.
        margin = 1.0
        vertical = u[:, _U_LAYOUT] < 0.5
        centres = np.empty((self.n, 2, 2))  # (n, object, (x, y))
        for obj, cols in enumerate((_U_POS1, _U_POS2)):
            uv = u[:, cols]
            # extent of the region along x and y for each image
            x0 = np.zeros(self.n)
            y0 = np.zeros(self.n)
            wx = np.full(self.n, s)
            wy = np.full(self.n, s)
            half = s / 2.0
            side_by_side = pair & ~vertical
            stacked = pair & vertical
            wx[side_by_side] = half
            x0[side_by_side] = obj * half
            wy[stacked] = half
            y0[stacked] = obj * half
            for axis, (start, width) in enumerate(((x0, wx), (y0, wy))):
                span = np.maximum(width - 2 * (extent + margin), 0.0)
                centres[:, obj, axis] = start + extent + margin + span * uv[:, axis]
                tight = width - 2 * (extent + margin) < 0
                centres[tight, obj, axis] = start[tight] + width[tight] / 2
        period = np.array([2 * math.pi, 2 * math.pi / 4, 2 * math.pi / 3])[shape]
        rotation = np.stack([u[:, _U_ROT1], u[:, _U_ROT2]], axis=1) * period[:, None]

        self.factors: dict[str, np.ndarray] = {
            "colour": colour,
            "shape": shape,
            "large": large,
            "pair": pair,
            "striped_background": striped,
            "outlined": outlined,
            "label_clean": y_clean,
            "label_noisy": noisy,
            "radius": radius.astype(np.float32),
            "centres": centres.astype(np.float32),
            "rotation": rotation.astype(np.float32),
            "rgb": np.clip(
                _BASE_RGB[colour] + (u[:, _U_JITTER] - 0.5) * 2 * COLOUR_JITTER, 0, 1
            ).astype(np.float32),
            "grey": (BACKGROUND_GREY[0] + (BACKGROUND_GREY[1] - BACKGROUND_GREY[0]) * u[:, _U_GREY]).astype(
                np.float32
            ),
            "stripe_angle": (u[:, _U_STRIPE_ANGLE] * math.pi).astype(np.float32),
            "stripe_phase": u[:, _U_STRIPE_PHASE].astype(np.float32),
        }
        concepts = np.zeros((self.n, len(SHAPES_CONCEPTS)), np.float32)
        rows = np.arange(self.n)
        concepts[rows, colour] = 1
        concepts[rows, 3 + shape] = 1
        concepts[:, 6] = large
        concepts[:, 7] = pair
        concepts[:, 8] = striped
        concepts[:, 9] = outlined
        self._concepts = torch.from_numpy(concepts)
        self._y = torch.from_numpy(y.astype(np.int64))
        self._y_clean = torch.from_numpy(y_clean.astype(np.int64))
        self._grid = None

    # ------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return self.n

    def targets(self) -> Tensor:
        """Observed labels ``(n,)`` int64 (after label noise, if any)."""
        return self._y.clone()

    def clean_targets(self) -> Tensor:
        """Labels given by the rule before label noise, ``(n,)`` int64."""
        return self._y_clean.clone()

    def concept_table(self) -> Tensor:
        """Concepts of all images ``(n, 10)`` float32 in {0, 1}; nothing is rendered."""
        return self._concepts.clone()

    def fingerprint(self) -> str:
        return stable_hash(
            {
                "dataset": "ShapesDataset",
                "version": RENDER_VERSION,
                "split": self.split,
                "n": self.n,
                "seed": self.seed,
                "image_size": self.image_size,
                "cooccurrence": self.cooccurrence,
                "label_noise": self.label_noise,
                "confounded": self.confounded,
                "spurious_strength": self.spurious_strength,
            }
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.check_index(index)
        image, masks = self.render(index)
        item: dict[str, Any] = {
            "x": torch.from_numpy(image),
            "y": self._y[index].clone(),
            "concepts": self._concepts[index].clone(),
            "index": index,
        }
        if self.return_masks:
            item["masks"] = torch.from_numpy(masks)
        return item

    # ------------------------------------------------------------ rendering
    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render one image and its concept masks.

        Returns:
            image: ``(3, H, W)`` float32 in [0, 1].
            masks: ``(10, H, W)`` bool, see the class docstring.
        """
        index = self.check_index(index)
        f = self.factors
        s = self.image_size
        if self._grid is None:
            yy, xx = np.ogrid[0:s, 0:s]
            self._grid = (xx.astype(np.float32) + 0.5, yy.astype(np.float32) + 0.5)
        xx, yy = self._grid

        shape = int(f["shape"][index])
        radius = float(f["radius"][index]) * float(_SHAPE_SCALE[shape])
        width = OUTLINE_WIDTH * s if f["outlined"][index] else None
        n_obj = 2 if f["pair"][index] else 1
        obj = np.zeros((s, s), bool)
        for k in range(n_obj):
            cx, cy = f["centres"][index, k]
            obj |= _shape_mask(xx - cx, yy - cy, shape, radius, float(f["rotation"][index, k]), width)

        grey = float(f["grey"][index])
        if f["striped_background"][index]:
            angle = float(f["stripe_angle"][index])
            period = STRIPE_PERIOD * s
            proj = xx * math.cos(angle) + yy * math.sin(angle)
            band = np.floor(proj / (period / 2) + 2 * float(f["stripe_phase"][index])) % 2 == 1
            other = grey - STRIPE_CONTRAST if grey > 0.5 else grey + STRIPE_CONTRAST
            background = np.where(band, np.float32(other), np.float32(grey))
        else:
            background = np.full((s, s), grey, np.float32)

        rgb = f["rgb"][index]
        image = np.where(obj[None], rgb[:, None, None], background[None]).astype(np.float32)
        noise_rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], 1, index])
        # uniform noise with standard deviation PIXEL_NOISE (7x cheaper to draw than Gaussian)
        half_width = np.float32(PIXEL_NOISE * math.sqrt(3.0))
        image += (noise_rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * (2 * half_width)
        np.clip(image, 0.0, 1.0, out=image)

        masks = np.zeros((len(SHAPES_CONCEPTS), s, s), bool)
        masks[int(f["colour"][index])] = obj
        masks[3 + shape] = obj
        if f["large"][index]:
            masks[6] = obj
        if f["pair"][index]:
            masks[7] = obj
        if f["striped_background"][index]:
            masks[8] = ~obj
        if f["outlined"][index]:
            masks[9] = obj
        return image, masks

    def __repr__(self) -> str:
        knobs = []
        if self.cooccurrence:
            knobs.append(f"cooccurrence={self.cooccurrence}")
        if self.label_noise:
            knobs.append(f"label_noise={self.label_noise}")
        if self.confounded:
            knobs.append(f"confounded, spurious_strength={self.spurious_strength}")
        extra = (", " + ", ".join(knobs)) if knobs else ""
        return f"ShapesDataset(split={self.split!r}, n={self.n}, seed={self.seed}, image_size={self.image_size}{extra})"


def _shape_mask(
    dx: np.ndarray, dy: np.ndarray, shape: int, radius: float, rotation: float, width: float | None
) -> np.ndarray:
    """Pixels of one shape centred at the origin of ``(dx, dy)`` (broadcast ``(1, W)``, ``(H, 1)``).

    Circle: ``dx² + dy² <= r²``. Square and triangle: regular polygons with ``m`` sides
    written as the intersection of half-planes, ``max_k <(dx, dy), n_k> <= apothem``, with
    unit normals ``n_k`` at angles ``rotation + 2πk/m``. ``radius`` is the circle radius,
    the square's apothem, or the triangle's circumradius. With ``width`` only a band of
    that width inside the boundary is kept (the outline).
    """
    if shape == 0:
        dist = np.sqrt(dx * dx + dy * dy)
        inside = dist <= radius
        if width is not None:
            inside &= dist > radius - width
        return inside
    m = 4 if shape == 1 else 3
    apothem = radius if shape == 1 else radius * math.cos(math.pi / m)
    support = None
    for k in range(m):
        a = rotation + 2 * math.pi * k / m
        proj = dx * np.float32(math.cos(a)) + dy * np.float32(math.sin(a))
        support = proj if support is None else np.maximum(support, proj)
    inside = support <= apothem
    if width is not None:
        inside &= support > apothem - width
    return inside


def render_grid(
    dataset: ConceptDataset,
    path: str | Path,
    indices: Sequence[int] | None = None,
    ncols: int = 4,
    mask_concept: str | None = None,
) -> Path:
    """Save a PNG grid of images with their label and active concepts as captions.

    Args:
        dataset: an image :class:`ConceptDataset` (``kind == "image"``).
        path: where to write the PNG.
        indices: which items to show; default the first 16.
        ncols: images per row.
        mask_concept: when given (a concept name), tint that concept's mask in magenta,
            to check that ground-truth masks sit where the concept is visible.

    Returns:
        The path of the PNG.
    """
    from bottlenecks.analysis.plots import pyplot

    plt = pyplot()  # Agg, unless pyplot is already set up (a notebook's inline backend)

    if dataset.kind != "image":
        raise ValueError(f"render_grid needs an image dataset, got kind={dataset.kind!r}")
    names = dataset.concept_names or []
    if mask_concept is not None and mask_concept not in names:
        raise ValueError(f"render_grid: unknown mask_concept {mask_concept!r}; concepts are {names}")
    if indices is None:
        indices = list(range(min(16, len(dataset))))
    indices = list(indices)
    if not indices:
        raise ValueError("render_grid: no indices to show")
    nrows = math.ceil(len(indices) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, idx in zip(axes.flat, indices):
        item = dataset[idx]
        img = item["x"].permute(1, 2, 0).numpy().copy()
        if mask_concept is not None and "masks" in item:
            m = item["masks"][names.index(mask_concept)].numpy()
            img[m] = 0.5 * img[m] + 0.5 * np.array([1.0, 0.0, 1.0], np.float32)
        ax.imshow(img, interpolation="nearest")
        label = int(item["y"])
        title = dataset.class_names[label] if dataset.class_names else str(label)
        active = []
        if "concepts" in item:
            c = item["concepts"]
            active = [names[j] for j in range(len(names)) if not torch.isnan(c[j]) and c[j] >= 0.5]
        caption = f"#{idx}: {title}\n" + "\n".join(
            ", ".join(active[i : i + 3]) for i in range(0, len(active), 3)
        )
        ax.set_title(caption, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
