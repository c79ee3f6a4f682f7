"""Access to the data assets that ship with the package.

In the repository they live in ``src/data/``; a built wheel carries them as
``bottlenecks/_assets/``. An editable install reads them straight from
``src/data/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bottlenecks

_PACKAGE_DIR = Path(bottlenecks.__file__).resolve().parent
_CANDIDATES = (_PACKAGE_DIR / "_assets", _PACKAGE_DIR.parent / "data")


def assets_dir() -> Path:
    """The folder holding the shipped data assets."""
    for folder in _CANDIDATES:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        "the bottlenecks data assets were not found; looked in "
        + ", ".join(str(c) for c in _CANDIDATES)
    )


def asset_path(name: str) -> Path:
    """Path of a shipped asset file, e.g. ``asset_path("shapes_concepts.json")``."""
    path = assets_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"no data asset named {name!r} ships with bottlenecks ({path})")
    return path


def load_json(name: str) -> Any:
    """Load a shipped JSON asset."""
    return json.loads(asset_path(name).read_text())
