"""Name → encoder registry.

A spec is a name (``"lite0"``, ``"identity:512"``, ``"open_clip:ViT-B-32"``,
``"timm:resnet18"``, ``"torchvision:resnet18"``) or a dict ``{"name": ..., **kwargs}``
(``{"name": "lite0", "image_size": 96}``). For a *family* registered with a
``suffix`` parameter, the text after ``:`` fills that parameter
(``"timm:resnet18"`` → ``TimmEncoder(arch="resnet18")``).

Register your own::

    @register_encoder("my_encoder")
    class MyEncoder(FrozenEncoder):
        def __init__(self, image_size: int = 128): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bottlenecks.encoders.base import FrozenEncoder, FrozenTextEncoder


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Any]
    suffix: str | None
    suffix_type: Callable[[str], Any]


_ENCODERS: dict[str, _Entry] = {}
_TEXT_ENCODERS: dict[str, _Entry] = {}


def _register(table: dict[str, _Entry], kind: str, name: str, suffix: str | None, suffix_type: Callable[[str], Any]):
    if not name or ":" in name:
        raise ValueError(f"{kind} names must be non-empty and contain no ':', got {name!r}")

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        old = table.get(name)
        if old is not None and getattr(old.factory, "__qualname__", None) != getattr(factory, "__qualname__", None):
            raise ValueError(f"a {kind} named {name!r} is already registered ({old.factory!r})")
        table[name] = _Entry(factory, suffix, suffix_type)
        return factory

    return decorator


def register_encoder(
    name: str, *, suffix: str | None = None, suffix_type: Callable[[str], Any] = str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator adding an image encoder factory under ``name``.

    Args:
        name: registry name (no ``:``).
        suffix: parameter filled by the text after ``name:`` in a spec string
            (e.g. ``"arch"`` so that ``"timm:resnet18"`` means ``arch="resnet18"``).
        suffix_type: converts that text (e.g. ``int`` for ``"identity:512"``).
    """
    return _register(_ENCODERS, "encoder", name, suffix, suffix_type)


def register_text_encoder(
    name: str, *, suffix: str | None = None, suffix_type: Callable[[str], Any] = str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like :func:`register_encoder`, for text encoders (:func:`build_text_encoder`)."""
    return _register(_TEXT_ENCODERS, "text encoder", name, suffix, suffix_type)


def list_encoders() -> list[str]:
    """Registered image-encoder names (families are listed as ``"timm:<arch>"`` etc.)."""
    return sorted(n if e.suffix is None else f"{n}:<{e.suffix}>" for n, e in _ENCODERS.items())


def list_text_encoders() -> list[str]:
    """Registered text-encoder names."""
    return sorted(n if e.suffix is None else f"{n}:<{e.suffix}>" for n, e in _TEXT_ENCODERS.items())


def _build(table: dict[str, _Entry], kind: str, known: list[str], spec: Any) -> Any:
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"a {kind} spec dict needs a 'name' key, got keys {sorted(spec)}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
        if not isinstance(name, str):
            raise ValueError(f"the {kind} 'name' must be a string, got {type(name).__name__}")
    else:
        raise ValueError(f"a {kind} spec must be a name or a dict with 'name', got {type(spec).__name__}")

    base, _, rest = name.partition(":")
    entry = table.get(name) or table.get(base)
    if entry is None:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    if entry is table.get(base) and rest:
        if entry.suffix is None:
            raise ValueError(f"{kind} {base!r} takes no ':' suffix, got {name!r}")
        if entry.suffix in kwargs:
            raise ValueError(f"{kind} {name!r}: {entry.suffix!r} given both after ':' and as an option")
        try:
            kwargs[entry.suffix] = entry.suffix_type(rest)
        except ValueError as e:
            raise ValueError(f"{kind} {name!r}: cannot read {rest!r} as {entry.suffix}: {e}") from e

    params = inspect.signature(entry.factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(
                f"{kind} {base!r} has no option(s) {unknown}; its options are "
                f"{[p for p in params if p != 'self']}"
            )
    return entry.factory(**kwargs)


def build_encoder(spec: str | Mapping[str, Any] | FrozenEncoder) -> FrozenEncoder:
    """Build a frozen image encoder from a name or ``{"name": ..., **options}``.

    An already built :class:`FrozenEncoder` is returned unchanged. An unknown name
    raises ``ValueError`` listing the known ones.
    """
    if isinstance(spec, FrozenEncoder):
        return spec
    enc = _build(_ENCODERS, "encoder", list_encoders(), spec)
    if not isinstance(enc, FrozenEncoder):
        raise TypeError(f"encoder factory for {spec!r} returned {type(enc).__name__}, not a FrozenEncoder")
    return enc


def build_text_encoder(spec: str | Mapping[str, Any] | FrozenTextEncoder = "minilm") -> FrozenTextEncoder:
    """Build a frozen text encoder (``"minilm"``, ``"open_clip:ViT-B-32"``, or a dict spec)."""
    if isinstance(spec, FrozenTextEncoder):
        return spec
    enc = _build(_TEXT_ENCODERS, "text encoder", list_text_encoders(), spec)
    if not isinstance(enc, FrozenTextEncoder):
        raise TypeError(f"text encoder factory for {spec!r} returned {type(enc).__name__}")
    return enc


_SHARED: dict[tuple[str, str], Any] = {}


def _shared(kind: str, spec: Any, build: Callable[[Any], Any]) -> Any:
    import json

    key = (kind, json.dumps(spec, sort_keys=True, default=str))
    if key not in _SHARED:
        _SHARED[key] = build(spec)
    return _SHARED[key]


def shared_encoder(spec: str | Mapping[str, Any] | FrozenEncoder) -> FrozenEncoder:
    """The one frozen encoder of a spec in this process.

    The datamodule (which encodes the data and keys the feature cache by the encoder) and
    the model (which encodes raw images at inference) both ask for it here, so a spec is
    built once and both use the same instance.
    """
    return spec if isinstance(spec, FrozenEncoder) else _shared("image", spec, build_encoder)


def shared_text_encoder(spec: str | Mapping[str, Any] | FrozenTextEncoder) -> FrozenTextEncoder:
    """The one frozen text encoder of a spec in this process (see :func:`shared_encoder`)."""
    return spec if isinstance(spec, FrozenTextEncoder) else _shared("text", spec, build_text_encoder)
