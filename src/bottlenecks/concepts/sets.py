"""Concept-set files in the formats users already have, and class–concept priors.

* **LaBo** ``class2concepts.json``: ``{"class name": ["concept sentence", ...], ...}``.
  The concepts are the distinct sentences in order of first appearance; the file also
  says which concepts each class has (a binary class–concept prior, :meth:`ConceptSet.prior`).
* **Label-free CBM** ``.txt``: one concept per line (blank lines and ``#`` comments skipped).
* **CSV** with a header: a ``concept`` column (required), optional ``text`` (the sentence
  to embed, default the concept itself) and ``class`` (one row per class–concept pair;
  gives the prior) and ``weight`` (the prior's value for that pair, default 1).

Every reader names the file and line of a problem: a line that is not UTF-8, a CSV row
with the wrong number of fields, an empty or duplicated concept list.

Example::

    cs = load_concept_set("class2concepts.json")
    cs.concepts                 # ['red', 'circle', ...]
    P = cs.prior(class_names, concept_names)   # (n_classes, num_concepts) for KnoBo's head
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from bottlenecks.concepts.bank import check_concept_list

__all__ = ["ConceptSet", "load_concept_set", "load_prior", "shapes_concept_set"]


@dataclass
class ConceptSet:
    """A list of concepts, the text to embed for each, and (optionally) which classes have which.

    Attributes:
        concepts: unique concept names, in file order.
        texts: the sentence to embed per concept (default the name itself).
        class_concepts: ``{class: {concept: weight}}`` when the file says which classes have
            which concepts (LaBo's class2concepts, a CSV with a ``class`` column).
        source: the file it came from.
    """

    concepts: list[str]
    texts: list[str] = field(default_factory=list)
    class_concepts: dict[str, dict[str, float]] | None = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.concepts = check_concept_list(self.concepts, f"the concept set {self.source}")
        if not self.texts:
            self.texts = list(self.concepts)
        if len(self.texts) != len(self.concepts):
            raise ValueError(f"{self.source}: {len(self.texts)} texts for {len(self.concepts)} concepts")

    def __len__(self) -> int:
        return len(self.concepts)

    def prior(self, class_names: Sequence[str], concept_names: Sequence[str] | None = None) -> Tensor:
        """The class–concept prior ``(n_classes, num_concepts)``: the weight the file gives each
        (class, concept) pair, 0 for pairs it does not list.

        Args:
            class_names: the data's classes, in label order; every one must be in the file.
            concept_names: the columns (the model's concepts); default :attr:`concepts`.
                Concepts the file never names get an all-zero column.
        """
        if self.class_concepts is None:
            raise ValueError(
                f"{self.source} lists concepts without classes, so it gives no class–concept prior; use a "
                "class2concepts JSON or a CSV with a 'class' column"
            )
        concept_names = list(self.concepts if concept_names is None else concept_names)
        class_names = list(class_names)
        missing = [c for c in class_names if c not in self.class_concepts]
        if missing:
            hint = difflib.get_close_matches(missing[0], list(self.class_concepts), n=3)
            raise ValueError(
                f"{self.source} has no concepts for classes {missing[:5]}"
                + (f" (close to {missing[0]!r}: {hint})" if hint else "")
                + f"; its classes are {list(self.class_concepts)[:10]}"
            )
        col = {n: j for j, n in enumerate(concept_names)}
        P = torch.zeros(len(class_names), len(concept_names))
        unused = set()
        for i, cls in enumerate(class_names):
            for concept, w in self.class_concepts[cls].items():
                if concept in col:
                    P[i, col[concept]] = float(w)
                else:
                    unused.add(concept)
        if not P.any():
            raise ValueError(
                f"the prior from {self.source} is all zeros: none of its concepts {sorted(unused)[:5]} is among the "
                f"model's concepts {concept_names[:10]}"
            )
        return P


def _lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; a line that does not decode is an error naming it."""
    out = []
    for i, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            out.append((i, raw.decode("utf-8-sig" if i == 1 else "utf-8")))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}, line {i}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    return out


def _no_duplicates(items: list[tuple[int, str]], path: Path, what: str = "concept") -> None:
    first: dict[str, int] = {}
    for line, name in items:
        if name in first:
            raise ValueError(f"{path}, line {line}: {what} {name!r} repeats line {first[name]}; concepts must be unique")
        first[name] = line


def _read_txt(path: Path) -> ConceptSet:
    items = []
    for i, text in _lines(path):
        t = text.strip()
        if not t or t.startswith("#"):
            continue
        if any(ord(ch) < 32 and ch != "\t" for ch in t):
            raise ValueError(f"{path}, line {i}: unreadable concept {t!r} (control characters)")
        items.append((i, t))
    if not items:
        raise ValueError(f"{path} lists no concepts (one concept per line expected)")
    _no_duplicates(items, path)
    return ConceptSet([t for _, t in items], source=str(path))


def _read_json(path: Path) -> ConceptSet:
    _lines(path)  # names the line of any non-UTF-8 bytes
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, list):  # a plain JSON list of concepts
        return ConceptSet(check_concept_list(data, str(path)), source=str(path))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected LaBo's class2concepts format {{class: [concept, ...]}}, got {type(data).__name__}")
    concepts: list[str] = []
    seen: set[str] = set()
    per_class: dict[str, dict[str, float]] = {}
    for cls, items in data.items():
        if not isinstance(items, list) or not items:
            raise ValueError(f"{path}: class {cls!r} must map to a non-empty list of concepts, got {items!r}")
        bad = [x for x in items if not isinstance(x, str) or not x.strip()]
        if bad:
            raise ValueError(f"{path}: class {cls!r} lists entries that are not concept sentences: {bad[:3]}")
        items = [x.strip() for x in items]
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise ValueError(f"{path}: class {cls!r} lists concepts more than once: {dup[:5]}")
        per_class[str(cls)] = {x: 1.0 for x in items}
        for x in items:
            if x not in seen:
                seen.add(x)
                concepts.append(x)
    return ConceptSet(concepts, class_concepts=per_class, source=str(path))


def _read_csv(path: Path) -> ConceptSet:
    lines = _lines(path)
    text = "\n".join(t for _, t in lines)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"{path} is empty (a header with a 'concept' column expected)")
    header = [h.strip().lower() for h in rows[0]]
    if "concept" not in header:
        raise ValueError(f"{path}, line 1: the header {rows[0]} has no 'concept' column")
    unknown = [h for h in header if h not in ("concept", "text", "class", "weight")]
    if unknown:
        raise ValueError(f"{path}, line 1: unknown columns {unknown}; expected concept[, text][, class][, weight]")
    ix = {h: header.index(h) for h in header}
    concepts: list[tuple[int, str]] = []
    texts: dict[str, str] = {}
    per_class: dict[str, dict[str, float]] | None = {} if "class" in ix else None
    # csv.reader joins quoted multi-line fields; map rows back to file lines by counting
    line_of = [n for n, _ in lines]
    for r, row in enumerate(rows[1:], start=1):
        line = line_of[r] if r < len(line_of) else r + 1
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields but the header has {len(header)} ({rows[0]})")
        name = row[ix["concept"]].strip()
        if not name:
            raise ValueError(f"{path}, line {line}: empty concept")
        if per_class is None:
            concepts.append((line, name))
        elif name not in texts:
            concepts.append((line, name))
        if "text" in ix and row[ix["text"]].strip():
            texts[name] = row[ix["text"]].strip()
        if per_class is not None:
            cls = row[ix["class"]].strip()
            if not cls:
                raise ValueError(f"{path}, line {line}: empty class")
            w = 1.0
            if "weight" in ix:
                try:
                    w = float(row[ix["weight"]])
                except ValueError:
                    raise ValueError(f"{path}, line {line}: weight {row[ix['weight']]!r} is not a number") from None
            if name in per_class.setdefault(cls, {}):
                raise ValueError(f"{path}, line {line}: class {cls!r} lists concept {name!r} twice")
            per_class[cls][name] = w
        texts.setdefault(name, name)
    if not concepts:
        raise ValueError(f"{path} lists no concepts")
    if per_class is None:
        _no_duplicates(concepts, path)
    names = [n for _, n in concepts]
    return ConceptSet(names, texts=[texts[n] for n in names], class_concepts=per_class, source=str(path))


def load_concept_set(path: str | Path) -> ConceptSet:
    """Read a concept-set file: ``.json`` (LaBo's class2concepts, or a list), ``.txt``
    (Label-free CBM, one per line) or ``.csv`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no concept-set file at {path}")
    readers = {".json": _read_json, ".txt": _read_txt, ".csv": _read_csv}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unknown concept-set format {path.suffix!r}; use .json (class2concepts), .txt or .csv")
    return reader(path)


def load_prior(
    source: str | Path | ConceptSet | Mapping[str, Sequence[str]] | Tensor,
    class_names: Sequence[str] | None,
    concept_names: Sequence[str],
) -> Tensor:
    """A class–concept prior ``(n_classes, num_concepts)`` from a concept-set file, a
    :class:`ConceptSet`, a ``{class: [concepts]}`` mapping, a ``.pt``/``.safetensors``
    /``.npy`` matrix file, or a tensor (checked for shape)."""
    n_c = len(concept_names)
    if isinstance(source, Tensor):
        P = source.float()
    elif isinstance(source, ConceptSet):
        return source.prior(_need_classes(class_names, "a concept set"), concept_names)
    elif isinstance(source, Mapping):
        cs = ConceptSet(list(dict.fromkeys(c for v in source.values() for c in v)),
                        class_concepts={str(k): {c: 1.0 for c in v} for k, v in source.items()})
        return cs.prior(_need_classes(class_names, "a class-to-concepts mapping"), concept_names)
    else:
        path = Path(source)
        if path.suffix.lower() in (".json", ".csv", ".txt"):
            return load_concept_set(path).prior(_need_classes(class_names, str(path)), concept_names)
        if not path.is_file():
            raise FileNotFoundError(f"no prior file at {path}")
        if path.suffix == ".npy":
            import numpy as np

            P = torch.as_tensor(np.load(path, allow_pickle=False)).float()
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            t = load_file(str(path))
            if len(t) != 1:
                raise ValueError(f"{path}: a prior file holds one matrix, found {sorted(t)}")
            P = next(iter(t.values())).float()
        elif path.suffix == ".pt":
            P = torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True)).float()
        else:
            raise ValueError(f"{path}: unknown prior format; use .json/.csv (class–concept lists) or .npy/.pt/.safetensors")
    n_k = len(class_names) if class_names is not None else P.shape[0]
    if P.dim() != 2 or tuple(P.shape) != (n_k, n_c):
        raise ValueError(f"the prior matrix has shape {tuple(P.shape)} but ({n_k}, {n_c}) (classes, concepts) is needed")
    if not torch.isfinite(P).all():
        raise ValueError("the prior matrix contains NaN or inf")
    return P


def _need_classes(class_names: Sequence[str] | None, what: str) -> list[str]:
    if class_names is None:
        raise ValueError(f"a prior from {what} maps class names to concepts; the data has no class_names")
    return list(class_names)


def shapes_concept_set() -> ConceptSet:
    """The Shapes vocabulary as a concept set: the ten concepts, their descriptions as text,
    and the classes' concepts from the shipped ``shapes_class2concepts.json`` (LaBo format)."""
    from bottlenecks.data.assets import asset_path, load_json

    vocab = load_json("shapes_concepts.json")
    per_class = _read_json(asset_path("shapes_class2concepts.json")).class_concepts
    return ConceptSet(
        [c["name"] for c in vocab["concepts"]],
        texts=[c["description"] for c in vocab["concepts"]],
        class_concepts=per_class,
        source="shapes_concepts.json",
    )
