"""Caltech-UCSD Birds-200-2011 (CUB) read from the official release on local disk.

Nothing is downloaded: point ``root`` at the extracted ``CUB_200_2011`` folder (or
at its parent). The official layout::

    CUB_200_2011/
      images.txt                      <image_id> <relative image path>
      image_class_labels.txt          <image_id> <class_id>
      train_test_split.txt            <image_id> <is_training_image>
      classes.txt                     <class_id> <class_name>
      bounding_boxes.txt              <image_id> <x> <y> <width> <height>     (optional)
      images/<class folder>/<file>.jpg
      attributes/image_attribute_labels.txt
                                      <image_id> <attribute_id> <is_present> <certainty_id> <time>
      attributes/attributes.txt       <attribute_id> <attribute_name>
      parts/parts.txt                 <part_id> <part_name>                   (optional)
      parts/part_locs.txt             <image_id> <part_id> <x> <y> <visible>  (optional)

The official tarball puts ``attributes.txt`` next to the ``CUB_200_2011`` folder
rather than inside ``attributes/``; it is looked for in ``attributes/``, in ``root``
and in ``root``'s parent. Lines of ``image_attribute_labels.txt`` with extra columns
(a few official lines have them) are read by their first four columns. Certainty
ids: 1 not visible, 2 guessing, 3 probably, 4 definitely.

**Splits.** ``test`` is the official test set; ``val`` takes ``val_fraction`` of the
official training images of each class (seeded shuffle), ``train`` the rest.

**Concepts.** The 312 binary attributes. Per-image labels whose certainty id is
below ``certainty_min`` become NaN (unlabelled); images without a line for an
attribute are NaN too. With ``concept_filter="majority"`` the processing of Koh et
al. (2020, Concept Bottleneck Models) is applied:

1. On the **train** split (official train minus our val), count per class and
   attribute how many images mark it present and absent, skipping labels that are
   NaN (certainty filter) and "absent, not visible" labels (is_present = 0 and
   certainty id 1), as Koh et al. do.
2. The class-level label is the majority; a tie (including 0 vs 0) counts as
   present, as in Koh et al. — except that a class with no counted label at all
   for an attribute gets NaN (cannot happen with the full official data).
3. Keep the attributes whose class-level label is present in at least
   ``min_class_count`` classes (10 in Koh et al., which leaves 112 of 312).
4. Every image's concepts become its class-level labels of the kept attributes
   (every split, test included, uses the train-split statistics), unless
   ``instance_labels=True``, which keeps the per-image labels of the kept attributes.

With ``concept_filter="none"`` the concepts are the per-image labels of all 312
attributes.

**Groups and costs.** An attribute ``has_wing_color::blue`` belongs to the group
``has_wing_color`` (28 groups in the official list; 112 kept attributes still fall into 28
groups): :attr:`CUB200.concept_groups` gives ``{group: [concept names]}`` for group-level
interventions. :attr:`CUB200.concept_costs` gives each group's mean annotation time in
seconds (the last column of ``image_attribute_labels.txt``, averaged over the group's lines
and then over the training split's images) — the cost of asking that question.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bottlenecks.data.base import ConceptDataset, check_concepts, check_labels, stable_hash
from bottlenecks.data.folder import _size_hw, file_signature, load_image

SPLITS = ("train", "val", "test")
GROUP_SEPARATOR = "::"


def concept_groups_from_names(names: list[str], sep: str = GROUP_SEPARATOR) -> dict[str, list[str]]:
    """``{group: [names]}`` from names of the form ``group::value`` (CUB's attribute names);
    a name without ``sep`` is a group of its own. Groups keep the order of first appearance."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split(sep, 1)[0] if sep in name else name, []).append(name)
    return groups


@functools.lru_cache(maxsize=2)
def _annotation_seconds(path: str, size: int, mtime: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image id, attribute id, seconds)`` of every line of ``image_attribute_labels.txt``;
    the time is the last column (a few official lines carry an extra column before it)."""
    ids, attrs, secs = [], [], []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 5:
                raise ValueError(f"CUB200: {path}, line {line_no}: no annotation time (expected 5 columns)")
            try:
                ids.append(int(parts[0]))
                attrs.append(int(parts[1]))
                secs.append(float(parts[-1]))
            except ValueError:
                raise ValueError(f"CUB200: {path}, line {line_no}: cannot read {line.strip()!r}") from None
    return np.array(ids, np.int64), np.array(attrs, np.int64), np.array(secs, np.float64)
REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _read_pairs(path: Path, what: str) -> list[tuple[int, str]]:
    """Lines ``<int id> <rest of line>``; blank lines skipped; errors name file and line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            try:
                key = int(parts[0])
            except ValueError:
                raise ValueError(f"CUB200: {path}, line {line_no}: expected '<{what} id> ...', got {line!r}") from None
            if len(parts) < 2:
                raise ValueError(f"CUB200: {path}, line {line_no}: expected '<{what} id> <value>', got {line!r}")
            out.append((key, parts[1].strip()))
    return out


def _read_table(path: Path, n_cols: int, dtype: Any, what: str) -> np.ndarray:
    """The first ``n_cols`` whitespace columns of every line as a ``(lines, n_cols)`` array."""
    try:
        arr = np.loadtxt(path, usecols=tuple(range(n_cols)), dtype=dtype, ndmin=2)
    except ValueError as err:
        raise ValueError(f"CUB200: cannot parse {path} ({what}; expected {n_cols} numeric columns): {err}") from err
    return arr.reshape(-1, n_cols)


def _lookup(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row of each value in ``sorted_keys`` (vectorised), -1 where it is absent."""
    sorted_keys = np.asarray(sorted_keys, np.int64)
    values = np.asarray(values).astype(np.int64)
    if not len(sorted_keys):
        return np.full(len(values), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == values, pos, -1)


def _find_layout(root: Path) -> dict[str, Path | None]:
    if not root.is_dir():
        raise FileNotFoundError(f"CUB200: root folder {root} does not exist")
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    files: dict[str, Path | None] = {"root": root}
    for name in REQUIRED:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"CUB200: {path} does not exist; root must be the extracted CUB_200_2011 folder "
                f"holding {', '.join(REQUIRED)}, images/, attributes/ and parts/"
            )
        files[name] = path
    candidates = [root / "attributes" / "attributes.txt", root / "attributes.txt", root.parent / "attributes.txt"]
    files["attributes.txt"] = next((p for p in candidates if p.is_file()), None)
    if files["attributes.txt"] is None:
        raise FileNotFoundError(
            "CUB200: attributes.txt not found; looked in " + ", ".join(str(p) for p in candidates)
        )
    labels = root / "attributes" / "image_attribute_labels.txt"
    if not labels.is_file():
        raise FileNotFoundError(f"CUB200: {labels} does not exist (per-image attribute labels)")
    files["image_attribute_labels.txt"] = labels
    for key, path in (
        ("parts.txt", root / "parts" / "parts.txt"),
        ("part_locs.txt", root / "parts" / "part_locs.txt"),
        ("bounding_boxes.txt", root / "bounding_boxes.txt"),
    ):
        files[key] = path if path.is_file() else None
    if (files["parts.txt"] is None) != (files["part_locs.txt"] is None):
        present = "parts.txt" if files["parts.txt"] else "part_locs.txt"
        raise FileNotFoundError(f"CUB200: {root / 'parts'} holds {present} but not the other parts file")
    return files


@functools.lru_cache(maxsize=4)
def _parse(files_key: tuple[tuple[str, str, int, int], ...]) -> dict[str, Any]:
    """Parse the metadata files once per (paths, sizes, mtimes); shared by the three splits."""
    files = {name: Path(path) for name, path, _, _ in files_key}
    meta: dict[str, Any] = {}

    images = _read_pairs(files["images.txt"], "image")
    ids = np.array([i for i, _ in images], np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"CUB200: {files['images.txt']} lists some image ids more than once")
    order = np.argsort(ids)
    meta["image_ids"] = ids[order]
    meta["image_names"] = [images[k][1] for k in order]
    sorted_ids = meta["image_ids"]
    n = len(ids)

    def per_image(path: Path, n_cols: int, dtype: Any, what: str) -> np.ndarray:
        table = _read_table(path, n_cols, dtype, what)
        rows = _lookup(sorted_ids, table[:, 0])
        if (rows < 0).any():
            bad = int(table[rows < 0][0, 0])
            raise ValueError(f"CUB200: {path} refers to image id {bad}, which images.txt does not list")
        out = np.full((n, n_cols - 1), np.nan if dtype is float else -1, dtype)
        out[rows] = table[:, 1:]
        missing = np.flatnonzero((out == -1).any(1) if dtype is not float else np.isnan(out).any(1))
        if len(missing):
            raise ValueError(
                f"CUB200: {path} has no line for image id {int(meta['image_ids'][missing[0]])} "
                f"({len(missing)} images missing)"
            )
        return out

    classes = _read_pairs(files["classes.txt"], "class")
    class_ids = sorted(c for c, _ in classes)
    if len(set(class_ids)) != len(class_ids):
        raise ValueError(f"CUB200: {files['classes.txt']} lists some class ids more than once")
    names = dict(classes)
    meta["class_ids"] = class_ids
    meta["class_folders"] = [names[c] for c in class_ids]
    cls = per_image(files["image_class_labels.txt"], 2, np.int64, "image class labels")[:, 0]
    class_to_index = {c: k for k, c in enumerate(class_ids)}
    unknown = sorted(set(cls.tolist()) - set(class_to_index))
    if unknown:
        raise ValueError(
            f"CUB200: {files['image_class_labels.txt']} uses class ids {unknown[:5]} that classes.txt does not list"
        )
    meta["labels"] = np.array([class_to_index[int(c)] for c in cls], np.int64)
    is_train = per_image(files["train_test_split.txt"], 2, np.int64, "train/test split")[:, 0]
    if not np.isin(is_train, (0, 1)).all():
        raise ValueError(f"CUB200: {files['train_test_split.txt']} must hold 0 or 1 per image")
    meta["is_train"] = is_train.astype(bool)

    attrs = _read_pairs(files["attributes.txt"], "attribute")
    attr_ids = sorted(a for a, _ in attrs)
    attr_names = dict(attrs)
    meta["attribute_ids"] = attr_ids
    meta["attribute_names"] = [attr_names[a] for a in attr_ids]
    table = _read_table(files["image_attribute_labels.txt"], 4, np.int64, "image attribute labels")
    rows = _lookup(sorted_ids, table[:, 0])
    cols = _lookup(np.array(attr_ids), table[:, 1])
    path = files["image_attribute_labels.txt"]
    if (rows < 0).any():
        raise ValueError(f"CUB200: {path} refers to image id {int(table[rows < 0][0, 0])}, not listed in images.txt")
    if (cols < 0).any():
        raise ValueError(
            f"CUB200: {path} refers to attribute id {int(table[cols < 0][0, 1])}, not listed in attributes.txt"
        )
    if not np.isin(table[:, 2], (0, 1)).all():
        raise ValueError(f"CUB200: {path}: is_present must be 0 or 1")
    if not np.isin(table[:, 3], (1, 2, 3, 4)).all():
        raise ValueError(f"CUB200: {path}: certainty_id must be 1, 2, 3 or 4")
    present = np.full((n, len(attr_ids)), -1, np.int8)  # -1 = no line
    certainty = np.zeros((n, len(attr_ids)), np.int8)  # 0 = no line
    present[rows, cols] = table[:, 2]
    certainty[rows, cols] = table[:, 3]
    meta["present"], meta["certainty"] = present, certainty

    if files.get("parts.txt") is not None:
        parts = _read_pairs(files["parts.txt"], "part")
        part_ids = sorted(p for p, _ in parts)
        part_names = dict(parts)
        meta["part_names"] = [part_names[p] for p in part_ids]
        locs = _read_table(files["part_locs.txt"], 5, float, "part locations")
        prow = _lookup(sorted_ids, locs[:, 0])
        pcol = _lookup(np.array(part_ids), locs[:, 1])
        if (prow < 0).any() or (pcol < 0).any():
            raise ValueError(
                f"CUB200: {files['part_locs.txt']} refers to an image or part id not listed in "
                f"images.txt / parts.txt"
            )
        part_locs = np.zeros((n, len(part_ids), 3), np.float32)
        part_locs[prow, pcol] = locs[:, 2:5]
        meta["parts"] = part_locs
    if files.get("bounding_boxes.txt") is not None:
        meta["bbox"] = per_image(files["bounding_boxes.txt"], 5, float, "bounding boxes").astype(np.float32)
    return meta


class CUB200(ConceptDataset):
    """CUB-200-2011 birds with their 312 binary attributes as concepts.

    See the module docstring for the expected layout, the splits and exactly what
    ``concept_filter="majority"`` does (Koh et al., 2020).

    Items::

        {"x": (3, H, W) float32 in [0, 1],
         "y": int64 class index in [0, num_classes),
         "concepts": (num_concepts,) float32 in {0, 1, NaN},
         "parts": (n_parts, 3) float32 = (x, y, visible),   # when parts/ is present
         "bbox": (4,) float32 = (x, y, width, height),      # when bounding_boxes.txt is present
         "index": int}

    Part locations and boxes are in pixels of the returned image (scaled when
    ``image_size`` resizes it); invisible parts are ``(0, 0, 0)``.

    Args:
        root: the ``CUB_200_2011`` folder, or its parent.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: resize to this side (int) or ``(height, width)``; None keeps the file size.
        val_fraction: share of each class's official training images held out as val.
        seed: seed of the val split.
        certainty_min: per-image labels with a certainty id below this (1..4) become NaN.
        concept_filter: ``"majority"`` (Koh et al. filtering and class-level labels) or
            ``"none"`` (all attributes, per-image labels).
        min_class_count: with ``"majority"``, keep attributes present in at least this many classes.
        instance_labels: with ``"majority"``, keep per-image labels of the kept attributes
            instead of class-level ones.
        return_parts: add ``"parts"`` to items when the parts files exist.
        return_bbox: add ``"bbox"`` to items when bounding_boxes.txt exists.
    """

    task = "classification"
    kind = "image"

    def __init__(
        self,
        root: str | Path,
        split: Literal["train", "val", "test"] = "train",
        image_size: int | tuple[int, int] | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        certainty_min: int = 1,
        concept_filter: Literal["majority", "none"] = "majority",
        min_class_count: int = 10,
        instance_labels: bool = False,
        return_parts: bool = True,
        return_bbox: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"CUB200: split must be one of {list(SPLITS)}, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"CUB200: val_fraction must lie in [0, 1), got {val_fraction!r}")
        if certainty_min not in (1, 2, 3, 4):
            raise ValueError(f"CUB200: certainty_min must be a certainty id 1..4, got {certainty_min!r}")
        if concept_filter not in ("majority", "none"):
            raise ValueError(f"CUB200: concept_filter must be 'majority' or 'none', got {concept_filter!r}")
        if min_class_count < 1:
            raise ValueError(f"CUB200: min_class_count must be >= 1, got {min_class_count!r}")
        self.split = split
        self.image_size = _size_hw(image_size, "CUB200")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.certainty_min = int(certainty_min)
        self.concept_filter = concept_filter
        self.min_class_count = int(min_class_count)
        self.instance_labels = bool(instance_labels)

        files = _find_layout(Path(root))
        self.root = Path(files["root"])  # type: ignore[arg-type]
        key = tuple(
            (name, str(path), os.stat(path).st_size, os.stat(path).st_mtime_ns)
            for name, path in files.items()
            if name != "root" and path is not None
        )
        meta = _parse(key)

        labels_all = meta["labels"]
        self.num_classes = len(meta["class_ids"])
        self.class_folders = list(meta["class_folders"])
        self.class_names = [_readable(c) for c in meta["class_folders"]]
        rows = self._split_rows(meta["is_train"], labels_all)

        # per-image labels with the certainty filter applied: (n_all, n_attr) float, NaN unlabelled
        present, certainty = meta["present"], meta["certainty"]
        instance = present.astype(np.float32)
        instance[(present < 0) | (certainty < self.certainty_min)] = np.nan
        attr_names = list(meta["attribute_names"])
        if concept_filter == "majority":
            train_rows = self._split_rows(meta["is_train"], labels_all, which="train")
            class_labels, keep = self._majority(instance, certainty, labels_all, train_rows)
            if not keep.any():
                raise ValueError(
                    f"CUB200: concept_filter='majority' kept no attribute: none is present in at least "
                    f"min_class_count={self.min_class_count} classes (there are {self.num_classes})"
                )
            self.kept_attribute_ids = [meta["attribute_ids"][k] for k in np.flatnonzero(keep)]
            self.class_concepts = torch.from_numpy(class_labels[:, keep])
            concepts = instance[:, keep] if self.instance_labels else class_labels[labels_all][:, keep]
            attr_names = [a for a, k in zip(attr_names, keep) if k]
        else:
            self.kept_attribute_ids = list(meta["attribute_ids"])
            self.class_concepts = None
            concepts = instance
        self.concept_names = attr_names

        self.image_ids = meta["image_ids"][rows].tolist()
        self.image_paths = [self.root / "images" / meta["image_names"][r] for r in rows]
        self._y = torch.from_numpy(labels_all[rows].copy())
        self._concepts = torch.from_numpy(np.ascontiguousarray(concepts[rows], dtype=np.float32))
        self.certainties = torch.from_numpy(certainty[rows].copy())
        self.part_names = meta.get("part_names")
        self._parts = torch.from_numpy(meta["parts"][rows]) if ("parts" in meta and return_parts) else None
        self._bbox = torch.from_numpy(meta["bbox"][rows]) if ("bbox" in meta and return_bbox) else None

        if not rows.size:
            raise ValueError(
                f"CUB200: split {split!r} is empty (val_fraction={self.val_fraction}, "
                f"{int(meta['is_train'].sum())} official training images)"
            )
        missing = [str(p) for p in self.image_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"CUB200[{split}]: {len(missing)} image file(s) listed in images.txt do not exist: "
                + ", ".join(missing[:5])
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        check_labels(self._y, self.num_classes, f"CUB200[{split}]")
        check_concepts(self._concepts, self.concept_names, f"CUB200[{split}]")
        self._signature = [k[1:] for k in key] + file_signature(self.image_paths)
        self._labels_file = Path(files["image_attribute_labels.txt"])  # type: ignore[arg-type]
        self._train_image_ids = meta["image_ids"][self._split_rows(meta["is_train"], labels_all, which="train")]

    # ------------------------------------------------------------ groups and costs
    @property
    def concept_groups(self) -> dict[str, list[str]]:
        """``{attribute group: [concept names]}``, e.g. ``has_wing_color`` → its colours."""
        return concept_groups_from_names(self.concept_names)

    @property
    def concept_costs(self) -> dict[str, float]:
        """``{attribute group: mean annotation seconds}`` over the training split (see the
        module docstring); read from ``image_attribute_labels.txt`` on first use."""
        if getattr(self, "_costs", None) is None:
            st = os.stat(self._labels_file)
            img, attr, secs = _annotation_seconds(str(self._labels_file), st.st_size, st.st_mtime_ns)
            groups = list(self.concept_groups)
            gpos = {g: k for k, g in enumerate(groups)}
            group_of = np.full(int(max(attr.max(initial=0), max(self.kept_attribute_ids)) + 1), -1, np.int64)
            for a, n in zip(self.kept_attribute_ids, self.concept_names):
                group_of[a] = gpos[n.split(GROUP_SEPARATOR, 1)[0] if GROUP_SEPARATOR in n else n]
            rows = np.isin(img, self._train_image_ids) & (group_of[attr] >= 0)
            img_row = _lookup(np.sort(self._train_image_ids), img[rows])
            cell = group_of[attr[rows]] * len(self._train_image_ids) + img_row  # (group, image)
            n_cells = len(groups) * len(self._train_image_ids)
            t_sum = np.bincount(cell, weights=secs[rows], minlength=n_cells).reshape(len(groups), -1)
            t_cnt = np.bincount(cell, minlength=n_cells).reshape(len(groups), -1)
            answered = t_cnt > 0  # mean time of the group's lines per image, then over images
            per_image = np.where(answered, t_sum / np.maximum(t_cnt, 1), 0.0)
            totals = {g: per_image[k][answered[k]] for k, g in enumerate(groups) if answered[k].any()}
            missing = [g for g in self.concept_groups if g not in totals]
            if missing:
                raise ValueError(f"CUB200: no annotation time in the training split for group(s) {missing[:5]}")
            self._costs = {g: float(totals[g].mean()) for g in groups}
        return dict(self._costs)

    # ------------------------------------------------------------ processing
    def _split_rows(self, is_train: np.ndarray, labels: np.ndarray, which: str | None = None) -> np.ndarray:
        """Row indices of a split: test = official test; val = ``val_fraction`` per class of official train."""
        which = which or self.split
        if which == "test":
            return np.flatnonzero(~is_train)
        rng = np.random.default_rng(self.seed)
        val = []
        for c in range(self.num_classes):
            rows = np.flatnonzero(is_train & (labels == c))
            rows = rows[rng.permutation(len(rows))]
            val.append(rows[: int(round(self.val_fraction * len(rows)))])
        val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
        if which == "val":
            return val_rows
        return np.setdiff1d(np.flatnonzero(is_train), val_rows)

    def _majority(
        self, instance: np.ndarray, certainty: np.ndarray, labels: np.ndarray, train_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class-level majority labels ``(num_classes, n_attr)`` and the kept-attribute mask ``(n_attr,)``."""
        lab = instance[train_rows]
        counted = ~np.isnan(lab) & ~((lab == 0) & (certainty[train_rows] == 1))
        pos = np.zeros((self.num_classes, lab.shape[1]))
        neg = np.zeros_like(pos)
        np.add.at(pos, labels[train_rows], counted & (lab == 1))
        np.add.at(neg, labels[train_rows], counted & (lab == 0))
        class_labels = (pos >= neg).astype(np.float32)
        class_labels[(pos + neg) == 0] = np.nan
        keep = np.nansum(class_labels, axis=0) >= self.min_class_count
        return class_labels, keep

    # ------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.check_index(index)
        x, (w0, h0) = load_image(
            self.image_paths[index], self.image_size, f"CUB200[{self.split}] image id {self.image_ids[index]}"
        )
        sx, sy = x.shape[2] / w0, x.shape[1] / h0
        item: dict[str, Any] = {
            "x": x,
            "y": self._y[index].clone(),
            "concepts": self._concepts[index].clone(),
            "index": index,
        }
        if self._parts is not None:
            parts = self._parts[index].clone()
            parts[:, 0] *= sx
            parts[:, 1] *= sy
            item["parts"] = parts
        if self._bbox is not None:
            box = self._bbox[index].clone()
            box[[0, 2]] *= sx
            box[[1, 3]] *= sy
            item["bbox"] = box
        return item

    def targets(self) -> Tensor:
        """Class indices ``(n,)`` int64."""
        return self._y.clone()

    def concept_table(self) -> Tensor:
        """Concepts ``(n, num_concepts)`` float32 in {0, 1, NaN}."""
        return self._concepts.clone()

    def part_table(self) -> Tensor | None:
        """Part locations of every image ``(n, n_parts, 3)`` in original pixels, or None."""
        return None if self._parts is None else self._parts.clone()

    def fingerprint(self) -> str:
        """Hash of the metadata and image files (path, size, mtime) and the constructor arguments."""
        return stable_hash(
            {
                "dataset": "CUB200",
                "files": self._signature,
                "split": self.split,
                "image_size": self.image_size,
                "val_fraction": self.val_fraction,
                "seed": self.seed,
                "certainty_min": self.certainty_min,
                "concept_filter": self.concept_filter,
                "min_class_count": self.min_class_count,
                "instance_labels": self.instance_labels,
            }
        )

    def verify(self) -> int:
        """Decode every image of the split now; raise one ValueError listing every unreadable file."""
        bad = []
        for path, image_id in zip(self.image_paths, self.image_ids):
            try:
                load_image(path, None, f"image id {image_id}")
            except (ValueError, FileNotFoundError) as err:
                bad.append(str(err))
        if bad:
            raise ValueError(
                f"CUB200[{self.split}]: {len(bad)} of {len(self)} images cannot be read: " + "; ".join(bad[:10])
            )
        return len(self)


def _readable(folder: str) -> str:
    """``"001.Black_footed_Albatross"`` → ``"Black footed Albatross"``."""
    name = folder.split(".", 1)[1] if "." in folder and folder.split(".", 1)[0].isdigit() else folder
    return name.replace("_", " ")
