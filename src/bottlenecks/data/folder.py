"""Your own images with concept annotations: a folder of images plus a CSV.

Layout::

    root/
      concepts.csv          # one row per image
      images/0001.jpg ...   # any paths, relative to root (or absolute)

``concepts.csv``::

    image,label,split,has_wings,is_red,...
    images/0001.jpg,sparrow,train,1,0
    images/0002.jpg,robin,test,1,
    ...

* ``image`` — path of the image, relative to ``root``.
* ``label`` — an integer class index, or a class name; names are mapped to
  indices in sorted order (or in the order of ``class_names`` when given).
* ``split`` (optional) — which split the row belongs to, selected with ``split=``.
* every other column (or those named in ``concept_columns``) — a binary concept:
  ``0``, ``1``, or an empty cell for "not labelled" (NaN).

Class indices are derived from *all* rows of the CSV, whatever the split, so
train and test agree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from bottlenecks.data.base import ConceptDataset, check_concepts, check_labels, stable_hash
from bottlenecks.data.validation import (
    closest,
    check_row_identity,
    encode_class_labels,
    read_csv_table,
    require_column,
)

def _size_hw(image_size: int | tuple[int, int] | None, where: str) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    else:
        hw = tuple(int(v) for v in image_size)  # type: ignore[assignment]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"{where}: image_size must be a positive int or (height, width), got {image_size!r}")
    return hw  # type: ignore[return-value]


def load_image(path: Path, size_hw: tuple[int, int] | None, where: str) -> tuple[Tensor, tuple[int, int]]:
    """Read an image with PIL as RGB and return it as ``(3, H, W)`` float32 in [0, 1].

    Args:
        path: the image file.
        size_hw: ``(height, width)`` to resize to (bilinear), or None to keep the size.
        where: context for the error message (dataset, CSV row).

    Returns:
        The image tensor and the original ``(width, height)`` of the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: PIL cannot decode the file.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{where}: cannot read image {path} ({type(err).__name__}: {err})") from err
    original = img.size
    if size_hw is not None and (img.height, img.width) != size_hw:
        img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return x, original


def file_signature(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of each file: a cheap stand-in for its content in fingerprints."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return out


class ConceptImageFolder(ConceptDataset):
    """Images listed in a CSV with binary concept columns and a class label.

    Items::

        {"x": (3, H, W) float32 in [0, 1],
         "y": int64 class index,
         "concepts": (num_concepts,) float32 in {0, 1, NaN},   # when there are concept columns
         "index": int}

    Args:
        root: folder holding the CSV and the images.
        csv: CSV file name (relative to ``root``) or path.
        split: keep only rows whose ``split_column`` equals this value; None keeps every row.
        image_column: column with image paths (relative to ``root``).
        label_column: column with the class (integer index or name).
        concept_columns: concept columns, in order; None means every column other than
            the image, label and split columns.
        image_size: resize every image to this side (int) or ``(height, width)``; None keeps
            each file's size (batching then needs equal sizes).
        split_column: column that assigns rows to splits.
        class_names: the classes, in index order. With integer labels, labels must lie in
            ``[0, len(class_names))``; with name labels, each name must be listed. None:
            integer labels give ``max + 1`` classes, names are sorted.

    Missing files, malformed cells and unknown columns raise at construction; an
    undecodable image raises when its item is loaded (call :meth:`verify` to check every
    image up front).
    """

    task = "classification"
    kind = "image"

    def __init__(
        self,
        root: str | Path,
        csv: str = "concepts.csv",
        split: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        concept_columns: list[str] | None = None,
        image_size: int | tuple[int, int] | None = None,
        split_column: str = "split",
        class_names: list[str] | None = None,
    ) -> None:
        name = type(self).__name__
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{name}: root folder {self.root} does not exist")
        self.csv_path = Path(csv) if Path(csv).is_absolute() else self.root / csv
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"{name}: concept CSV {self.csv_path} does not exist")
        self.split = split
        self.image_size = _size_hw(image_size, name)
        self._args = {
            "csv": str(csv),
            "split": split,
            "image_column": image_column,
            "label_column": label_column,
            "concept_columns": concept_columns,
            "image_size": self.image_size,
            "split_column": split_column,
            "class_names": class_names,
        }

        where = f"{name}({self.csv_path})"
        header, rows, row_lines = read_csv_table(self.csv_path, where)
        if not rows:
            raise ValueError(f"{where}: the CSV has a header but no rows")
        col = {h: i for i, h in enumerate(header)}
        require_column(header, image_column, "image_column", where)
        require_column(header, label_column, "label_column", where)
        if split is not None:
            require_column(header, split_column, f"split={split!r} was requested but split_column", where)
        reserved = {image_column, label_column, split_column}
        if concept_columns is None:
            concept_columns = [h for h in header if h not in reserved]
        else:
            unknown = [c for c in concept_columns if c not in col]
            if unknown:
                hint = closest(unknown[0], header)
                raise ValueError(f"{where}: unknown concept columns {unknown}{hint}; the header has {header}")
            clash = [c for c in concept_columns if c in (image_column, label_column)]
            if clash:
                raise ValueError(f"{where}: concept_columns {clash} are also the image or label column")

        # Class indices come from every row, whatever the split.
        raw_labels = [row[col[label_column]] for row in rows]
        for line, value in zip(row_lines, raw_labels):
            if value == "":
                raise ValueError(f"{where}: line {line} has an empty {label_column!r} cell")
        labels_all, names, self.num_classes = encode_class_labels(
            raw_labels, where, class_names=class_names, position=lambda i: f"line {row_lines[i]}",
            column=label_column,
        )
        self.class_names = names if names is not None else [str(k) for k in range(self.num_classes)]
        labels_all = labels_all.tolist()
        # The same image listed twice: conflicting labels or concepts are an error, copies and
        # train/test leakage a warning.
        check_row_identity(
            [row[col[image_column]] for row in rows],
            [(row[col[label_column]], *(row[col[c]] for c in concept_columns)) for row in rows],
            [row[col[split_column]] for row in rows] if split_column in col else None,
            where,
            describe=lambda i: f"line {row_lines[i]}",
            what="image",
        )

        if split is not None:
            splits_present = sorted({row[col[split_column]].strip() for row in rows})
            keep = [i for i, row in enumerate(rows) if row[col[split_column]].strip() == split]
            if not keep:
                raise ValueError(
                    f"{where}: no rows with {split_column} == {split!r}; splits present: {splits_present}"
                )
        else:
            keep = list(range(len(rows)))
        if not keep:
            raise ValueError(f"{where}: the CSV has a header but no rows")
        self.lines = [row_lines[i] for i in keep]  # CSV line of each item (header is line 1)

        self.concept_names = list(concept_columns) if concept_columns else None
        concepts = np.full((len(keep), len(concept_columns)), np.nan, np.float32)
        for r, i in enumerate(keep):
            for c, column in enumerate(concept_columns):
                cell = rows[i][col[column]].strip()
                if cell == "":
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                if value not in (0.0, 1.0):
                    raise ValueError(
                        f"{where}: line {row_lines[i]}, concept column {column!r} holds {cell!r}; "
                        f"expected 0, 1 or an empty cell"
                    )
                concepts[r, c] = value
        self._concepts = torch.from_numpy(concepts) if self.concept_names else None
        self._y = torch.as_tensor([labels_all[i] for i in keep], dtype=torch.int64)

        self.image_paths: list[Path] = []
        missing = []
        for i in keep:
            rel = rows[i][col[image_column]].strip()
            if rel == "":
                raise ValueError(f"{where}: line {row_lines[i]} has an empty {image_column!r} cell")
            path = Path(rel) if Path(rel).is_absolute() else self.root / rel
            if not path.is_file():
                missing.append(f"{rel} (line {row_lines[i]})")
            self.image_paths.append(path)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"{where}: {len(missing)} image file(s) listed in the CSV do not exist under "
                f"{self.root}: {', '.join(missing[:5])}{more}"
            )
        check_labels(self._y, self.num_classes, where)
        if self._concepts is not None:
            check_concepts(self._concepts, self.concept_names, where)
        self._signature = file_signature([self.csv_path, *self.image_paths])

    # ------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.check_index(index)
        x, _ = load_image(
            self.image_paths[index],
            self.image_size,
            f"{type(self).__name__}({self.csv_path}, line {self.lines[index]})",
        )
        item: dict[str, Any] = {"x": x, "y": self._y[index].clone(), "index": index}
        if self._concepts is not None:
            item["concepts"] = self._concepts[index].clone()
        return item

    def targets(self) -> Tensor:
        """Class indices ``(n,)`` int64."""
        return self._y.clone()

    def concept_table(self) -> Tensor | None:
        """Concepts ``(n, num_concepts)`` float32 with NaN for empty cells, or None without concept columns."""
        return None if self._concepts is None else self._concepts.clone()

    def fingerprint(self) -> str:
        """Hash of the CSV and image files (path, size, mtime) and the constructor arguments."""
        return stable_hash({"dataset": type(self).__name__, "files": self._signature, **self._args})

    def verify(self) -> int:
        """Decode every image now; raise one ValueError listing every unreadable file.

        Returns:
            The number of images checked.
        """
        bad = []
        for path, line in zip(self.image_paths, self.lines):
            try:
                load_image(path, None, f"line {line}")
            except (ValueError, FileNotFoundError) as err:
                bad.append(str(err))
        if bad:
            raise ValueError(
                f"{type(self).__name__}({self.csv_path}): {len(bad)} of {len(self)} images cannot be read: "
                + "; ".join(bad[:10])
                + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
            )
        return len(self)
