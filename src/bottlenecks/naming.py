"""One vocabulary for options, and the old names that still work for one release.

The same option has the same name and meaning in every layer (see ``docs/naming.md``):
``num_*`` for counts, ``num_heads``, ``top_k``, ``distance``, ``ema_decay``, ``init`` /
``init_iters`` for data-dependent initialisation, ``code_dim`` for the width of one
head's codes or keys, ``in_features`` for a layer's input width (= the data's
``feature_dim``, linked by the CLI).

Options renamed when the vocabulary was unified are listed in :data:`RENAMED`. An old
name keeps working — from Python (:func:`accepts_renamed`), in a YAML config (the CLI
rewrites it before parsing) and in a checkpoint's saved hyperparameters (rewritten when
it loads) — with a :class:`DeprecationWarning` that names the new option.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

#: ``{class name: {old option: new option or (new option, value converter)}}``
RENAMED: dict[str, dict[str, str | tuple[str, Callable[[Any], Any]]]] = {}

_KMEANS_FLAG = ("init", lambda on: "kmeans" if on else "random")

RENAMED.update(
    {
        "VectorQuantizer": {
            "heads": "num_heads",
            "decay": "ema_decay",
            "kmeans_init": _KMEANS_FLAG,
            "kmeans_iters": "init_iters",
        },
        "ResidualVectorQuantizer": {
            "decay": "ema_decay",
            "kmeans_init": _KMEANS_FLAG,
            "kmeans_iters": "init_iters",
        },
        "CodebookFeatures": {
            "k": "top_k",
            "similarity": "distance",
            "kmeans_init": _KMEANS_FLAG,
            "kmeans_iters": "init_iters",
        },
        "insert_codebooks": {"k": "top_k", "similarity": "distance"},
        "DiscreteKeyValueBottleneck": {"key_init": "init", "key_dim": "code_dim"},
        "ConceptBottleneck": {"n_concepts": "num_concepts", "n_residual": "num_residual"},
        "ConceptEmbeddingBottleneck": {"n_concepts": "num_concepts"},
        "EnergyConceptBottleneck": {"n_concepts": "num_concepts"},
        "GaussianBottleneck": {"n_components": "num_components"},
    }
)


def upgrade_arguments(owner: str, kwargs: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """``kwargs`` with the old option names of ``owner`` (a class or function name) renamed.

    Raises ``TypeError`` when an old and a new name for the same option are both given.
    """
    table = RENAMED.get(owner)
    if not table or not any(k in table for k in kwargs):
        return kwargs
    out = dict(kwargs)
    for old, target in table.items():
        if old not in out:
            continue
        new, convert = (target, None) if isinstance(target, str) else target
        if new in out:
            raise TypeError(f"{owner} got both {old!r} (the old name) and {new!r}; give only {new!r}")
        value = out.pop(old)
        out[new] = convert(value) if convert is not None else value
        if warn:
            shown = f"{new}={out[new]!r}" if convert is not None else new
            warnings.warn(
                f"{owner}: option {old!r} is deprecated and will be removed in the next release; "
                f"use {shown}",
                DeprecationWarning,
                stacklevel=4,
            )
    return out


def accepts_renamed(func: Callable) -> Callable:
    """Let ``func`` (a layer's ``__init__`` or a function) accept its old option names.

    The visible signature stays the new one (``inspect.signature`` and jsonargparse see it).
    """
    owner = func.__qualname__.split(".")[0]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **upgrade_arguments(owner, kwargs))

    return wrapper


def accepted_options(class_path: str) -> list[str] | None:
    """The ``__init__`` options of the class a config's ``class_path`` names (without ``self``);
    None when the class cannot be imported or also takes ``**kwargs`` (anything is accepted)."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p in params if p != "self"]


def upgrade_config(node: Any) -> Any:
    """Rename old options in a config tree (``class_path`` / ``init_args`` mappings), in place."""
    if isinstance(node, dict):
        path, init_args = node.get("class_path"), node.get("init_args")
        if isinstance(path, str) and isinstance(init_args, dict):
            owner = path.rpartition(".")[2]
            renamed = upgrade_arguments(owner, init_args)
            if renamed is not init_args:
                init_args.clear()
                init_args.update(renamed)
        for value in node.values():
            upgrade_config(value)
    elif isinstance(node, list):
        for value in node:
            upgrade_config(value)
    return node


class NamedConcepts:
    """Mixin for everything that carries ``concept_names`` (bottlenecks, datasets, datamodules):
    the one definition of the concept count and its old name."""

    concept_names: list[str] | None = None

    @property
    def num_concepts(self) -> int:
        """Number of named concepts (0 without concepts)."""
        return 0 if self.concept_names is None else len(self.concept_names)

    @property
    def n_concepts(self) -> int:
        """Deprecated alias of :attr:`num_concepts`."""
        return self.num_concepts
