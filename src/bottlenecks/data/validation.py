"""One validation layer for the data every datamodule reads.

Each concern has one function, and every datamodule calls the same one:

* :func:`read_csv_table` — a CSV as a normalised header and rows: BOM removed (Excel's
  "CSV UTF-8"), spaces after separators ignored, header names stripped, blank lines dropped,
  ragged rows refused by line.
* :func:`encode_class_labels` — class labels are integer indices in range, or names; never a
  mix. Whole floats (``1.0``) are indices, other floats are refused, never truncated. The
  class count comes from the config (``num_classes`` / ``class_names``) or from the data, and
  a disagreement is reported: a label outside the stated classes is an error, a class count
  inferred from the largest label with classes that never occur is an error (one stray
  ``99`` would otherwise make a 100-class model); a few empty classes are a warning.
* :func:`check_feature_matrix` / :func:`check_same_rows` — feature arrays are numeric,
  ``(rows, features)`` and finite; errors name the file, the key and the row.
* :func:`check_row_identity` — the same example listed twice: conflicting labels are an
  error, exact duplicates and train/test leakage are warned about.
"""

from __future__ import annotations

import csv
import difflib
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


class DataWarning(UserWarning):
    """Data that loads but is probably not what was meant (duplicates, leakage, unused rows)."""


def closest(name: str, options: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for the option closest to ``name``, or ``""``."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------- CSV
def read_csv_table(path: str | Path, where: str) -> tuple[list[str], list[list[str]], list[int]]:
    """A CSV file as ``(header, rows, line_numbers)`` with every cell stripped.

    Handles a UTF-8 byte-order mark and ``", "``-separated files; drops blank lines;
    raises ValueError for an empty file, duplicate column names, or a row whose cell count
    differs from the header's (naming the line).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = [(reader_line, row) for reader_line, row in _numbered(csv.reader(fh, skipinitialspace=True))]
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise ValueError(f"{where}: {path} is not a readable CSV ({err})") from None
    if not records:
        raise ValueError(f"{where}: {path} is empty (expected a header row)")
    header = [h.strip() for h in records[0][1]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate column names {dupes} in the header")
    rows, lines = [], []
    for line, row in records[1:]:
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != len(header):
            raise ValueError(f"{where}: line {line} has {len(cells)} cells but the header has {len(header)} columns")
        rows.append(cells)
        lines.append(line)
    return header, rows, lines


def _numbered(reader: Any) -> Any:
    for row in reader:
        # the reader's line_num is the line a record ends on (records may span lines)
        yield reader.line_num, row


def require_column(header: list[str], column: str, role: str, where: str) -> int:
    """Index of ``column`` in ``header``; ValueError naming the closest column otherwise."""
    if column not in header:
        raise ValueError(
            f"{where}: {role} {column!r} is not a column{closest(column, header)}; the header has {header}"
        )
    return header.index(column)


# ------------------------------------------------------------------------- labels
def _label_kind(value: Any) -> tuple[str, Any]:
    """``("int", k)``, ``("name", s)`` or ``("bad", reason)`` for one raw label."""
    if isinstance(value, (bool, np.bool_)):
        return "int", int(value)
    if isinstance(value, (int, np.integer)):
        return "int", int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "bad", "is not finite"
        if v != int(v):
            return "bad", "is not a whole number (class labels are indices or names, never truncated)"
        return "int", int(v)
    if isinstance(value, (str, np.str_, bytes)):
        s = value.decode() if isinstance(value, bytes) else str(value)
        s = s.strip()
        if s == "":
            return "bad", "is empty"
        try:
            return "int", int(s)
        except ValueError:
            pass
        try:
            v = float(s)
        except ValueError:
            return "name", s
        if math.isfinite(v) and v == int(v):
            return "int", int(v)
        if not math.isfinite(v):
            return "bad", "is not finite"
        return "bad", "is not a whole number (class labels are indices or names, never truncated)"
    return "bad", f"has type {type(value).__name__}"


def encode_class_labels(
    raw: Sequence[Any],
    where: str,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    position: Callable[[int], str] = lambda i: f"row {i}",
    column: str = "label",
) -> tuple[np.ndarray, list[str] | None, int]:
    """Class indices of raw labels, the class names (None for plain indices) and the class count.

    Args:
        raw: one label per example: ints, whole floats, or strings (digits or names).
        where: the file or array the labels come from (starts every message).
        class_names: the classes in index order, when the config states them.
        num_classes: the class count, when the config states it.
        position: how to name example ``i`` in a message (``"line 7"``, ``"y_test row 3"``).
        column: what the labels are called in messages.

    Raises:
        ValueError: a label that is neither an index nor a name; indices mixed with names;
            an index outside the stated classes or negative; a name not in ``class_names``;
            ``class_names`` and ``num_classes`` disagreeing; a class count inferred from the
            data with classes that never occur.
    """
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(set(class_names)) != len(class_names):
            dup = sorted({c for c in class_names if class_names.count(c) > 1})
            raise ValueError(f"{where}: class_names repeats {dup}")
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"{where}: num_classes={num_classes} but {len(class_names)} class_names were given"
            )
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"{where}: num_classes must be positive, got {num_classes}")
    kinds: list[str] = []
    values: list[Any] = []
    first: dict[str, int] = {}
    for i, v in enumerate(raw):
        kind, val = _label_kind(v)
        if kind == "bad":
            raise ValueError(f"{where}: {position(i)}, {column} {v!r} {val}")
        first.setdefault(kind, i)
        kinds.append(kind)
        values.append(val)
    if not values:
        raise ValueError(f"{where}: there are no labels")
    if "int" in first and "name" in first:
        i, j = first["int"], first["name"]
        raise ValueError(
            f"{where}: the {column} values mix class indices and class names ({values[i]} at {position(i)}, "
            f"{values[j]!r} at {position(j)}); use one or the other"
        )
    if "name" in first:
        names = list(class_names) if class_names is not None else sorted(set(values))
        if num_classes is not None and class_names is None and num_classes != len(names):
            raise ValueError(
                f"{where}: num_classes={num_classes} but the {column} values name {len(names)} classes "
                f"{names[:10]}"
            )
        lookup = {c: k for k, c in enumerate(names)}
        out = np.empty(len(values), np.int64)
        for i, v in enumerate(values):
            if v not in lookup:
                raise ValueError(
                    f"{where}: {position(i)}, {column} {v!r} is not one of the class_names {names}{closest(v, names)}"
                )
            out[i] = lookup[v]
        return out, names, len(names)
    out = np.asarray(values, dtype=np.int64)
    for i in np.flatnonzero(out < 0)[:1]:
        raise ValueError(f"{where}: {position(int(i))}, {column} {out[i]} is negative (expected a class index >= 0)")
    stated = len(class_names) if class_names is not None else num_classes
    if stated is not None:
        for i in np.flatnonzero(out >= stated)[:1]:
            what = f"the {stated} class_names" if class_names is not None else f"num_classes={stated}"
            raise ValueError(
                f"{where}: {position(int(i))}, {column} {out[i]} is out of range for {what} "
                f"(expected 0..{stated - 1})"
            )
        unused = stated - len(np.unique(out))
        if unused > 0 and stated > 1:
            warnings.warn(
                f"{where}: {unused} of the {stated} stated classes never occur in the {column} values",
                DataWarning,
                stacklevel=2,
            )
        return out, (list(class_names) if class_names is not None else None), stated
    n = int(out.max()) + 1
    missing = np.setdiff1d(np.arange(n), out)
    if len(missing):
        i = int(np.argmax(out))
        msg = (
            f"{where}: the largest {column}, {n - 1} at {position(i)}, implies {n} classes but "
            f"{len(missing)} of them never occur (e.g. {missing[:5].tolist()})"
        )
        if len(missing) > n - len(missing):  # most implied classes empty: a stray label
            raise ValueError(f"{msg}; state the classes with num_classes or class_names if that is intended")
        warnings.warn(f"{msg}; the model gets {n} outputs", DataWarning, stacklevel=2)
    return out, None, n


def as_label_list(arr: Any, name: str) -> list[Any]:
    """A label array as a Python list, refusing 2-D (one-hot) and empty arrays with a hint."""
    a = arr.detach().cpu().numpy() if isinstance(arr, Tensor) else np.asarray(arr)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        hint = (
            "; it looks one-hot: pass class indices, e.g. y.argmax(1)"
            if a.dtype.kind in "biuf" and np.isin(a, (0, 1)).all() and (a.sum(1) == 1).all()
            else ""
        )
        raise ValueError(f"{name} has shape {a.shape} but labels must be one per row, shape (n,){hint}")
    if a.ndim != 1:
        raise ValueError(f"{name} has shape {a.shape} but labels must be one per row, shape (n,)")
    return a.tolist() if a.dtype.kind in "biuf" else list(a)


def regression_targets(arr: Any, name: str) -> Tensor:
    """Finite float regression targets ``(n,)`` from an array; ValueError naming the row otherwise."""
    a = arr.detach().cpu().numpy() if isinstance(arr, Tensor) else np.asarray(arr)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} has shape {a.shape} but regression targets must be shape (n,)")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} holds {a.dtype} values but regression targets must be numbers")
    t = torch.as_tensor(a.astype(np.float32))
    bad = torch.nonzero(~torch.isfinite(t)).flatten()
    if len(bad):
        raise ValueError(f"{name} row {int(bad[0])} is {float(t[bad[0]])}; regression targets must be finite")
    return t


# ----------------------------------------------------------------------- features
def check_feature_matrix(arr: Any, name: str, width: int | None = None) -> Tensor:
    """A numeric, finite ``(rows, features)`` float32 tensor, or a ValueError naming ``name`` and the row."""
    a = arr.detach().cpu().numpy() if isinstance(arr, Tensor) else np.asarray(arr)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} holds {a.dtype} values ({a.dtype.kind!r} kind) but features must be numbers")
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape} but features must be (rows, features)")
    if width is not None and a.shape[1] != width:
        raise ValueError(f"{name} has {a.shape[1]} features per row but x_train has {width}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    t = torch.as_tensor(np.ascontiguousarray(a)).float()
    bad = ~torch.isfinite(t)
    if bad.any():
        r, c = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} row {r}, column {c} is {float(t[r, c])} ({int(bad.any(1).sum())} rows have NaN or "
            "inf, or values beyond float32); features must be finite"
        )
    return t


def check_same_rows(where: str, **arrays: Any) -> int:
    """All given arrays have the same number of rows; ValueError naming each otherwise."""
    sizes = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(sizes.values())) > 1:
        (k0, n0), *rest = sizes.items()
        other = ", ".join(f"{k} has {n}" for k, n in rest if n != n0)
        raise ValueError(f"{where}: {k0} has {n0} rows but {other}")
    return next(iter(sizes.values()))


# ------------------------------------------------------------ duplicates / leakage
def check_row_identity(
    keys: Sequence[Any],
    payload: Sequence[Any],
    splits: Sequence[str] | None,
    where: str,
    describe: Callable[[int], str],
    what: str = "example",
    conflict: str = "error",
    show_key: bool = True,
) -> None:
    """The same example (equal ``keys``) listed more than once.

    Conflicting ``payload`` (label, concepts) for one key is a ValueError naming both places
    (``conflict="warn"``: a :class:`DataWarning`); exact duplicates within a split and a key
    shared by train and val/test are warned about.
    """
    seen: dict[Any, int] = {}
    dup_within: list[tuple[int, int]] = []
    leaks: list[tuple[int, int]] = []
    conflicts: list[tuple[int, int]] = []
    for i, k in enumerate(keys):
        j = seen.setdefault(k, i)
        if j == i:
            continue
        if payload[i] != payload[j]:
            conflicts.append((j, i))
        elif splits is not None and splits[i] != splits[j]:
            leaks.append((j, i))
        else:
            dup_within.append((j, i))

    def name(i: int) -> str:
        return f"{what} {keys[i]!r}" if show_key else f"the same {what}"

    if conflicts:
        j, i = conflicts[0]
        msg = (
            f"{where}: {name(i)} is listed at {describe(j)} and at {describe(i)} with different "
            f"labels ({payload[j]} and {payload[i]})"
            + (f"; {len(conflicts)} such conflicts" if len(conflicts) > 1 else "")
        )
        if conflict == "error":
            raise ValueError(msg)
        warnings.warn(msg, DataWarning, stacklevel=3)
    if dup_within:
        j, i = dup_within[0]
        warnings.warn(
            f"{where}: {len(dup_within)} {what}(s) are listed more than once (e.g. {name(i)} at "
            f"{describe(j)} and {describe(i)})",
            DataWarning,
            stacklevel=3,
        )
    if leaks:
        j, i = leaks[0]
        warnings.warn(
            f"{where}: {len(leaks)} {what}(s) appear in more than one split (e.g. {name(i)} in "
            f"{splits[j]} at {describe(j)} and in {splits[i]} at {describe(i)}): evaluation on them "
            "measures memorisation",
            DataWarning,
            stacklevel=3,
        )
