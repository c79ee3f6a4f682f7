"""Network surgery: codebooks inserted into any network at named layers, with forward hooks.

:func:`insert_codebooks` puts a :class:`~bottlenecks.layers.codebook_features.CodebookFeatures`
after submodules named by their dotted path (``"blocks.0.mlp"``) — no hand-editing of the
network. The returned :class:`CodebookModel` records the codes of every forward pass and
can bypass the codebooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from bottlenecks.layers.codebook_features import CodebookFeatures
from bottlenecks.layers.codes import Distance
from bottlenecks.naming import accepts_renamed


def _key(name: str) -> str:
    return name.replace(".", "__")


def _infer_width(module: nn.Module, name: str) -> int:
    if isinstance(module, nn.Sequential):  # the last child that changes the width decides
        for child in reversed(list(module)):
            try:
                return _infer_width(child, name)
            except ValueError:
                continue
    for attr in ("out_features", "embedding_dim", "hidden_size", "d_model"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1])
    raise ValueError(
        f"cannot tell the output width of layer {name!r} ({type(module).__name__}); pass "
        f"widths={{{name!r}: WIDTH}}"
    )


class CodebookModel(nn.Module):
    """A network with codebooks inserted at named layers through forward hooks.

    The wrapped network is unchanged; each hooked layer's output (a tensor
    ``(..., width)`` or a tuple whose first item is one) is replaced by its codebook's
    output. After every forward pass, :attr:`codes` maps each layer name to the active
    codes ``(..., top_k)`` and :meth:`codebook_losses` gives the summed unweighted losses.

    Built by :func:`insert_codebooks`. ``bypass=True`` leaves outputs untouched (codes
    are still recorded).
    """

    def __init__(self, model: nn.Module, codebooks: dict[str, CodebookFeatures]) -> None:
        super().__init__()
        self.model = model
        self.codebooks = nn.ModuleDict({_key(n): cb for n, cb in codebooks.items()})
        self.layer_names = list(codebooks)
        self.bypass = False
        self.codes: dict[str, Tensor] = {}
        self._losses: dict[str, dict[str, Tensor]] = {}
        modules = dict(model.named_modules())
        missing = [n for n in codebooks if n not in modules]
        if missing:
            raise ValueError(f"no submodule named {missing} in {type(model).__name__}")
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in codebooks]

    def codebook(self, layer: str) -> CodebookFeatures:
        """The codebook inserted at ``layer``."""
        if _key(layer) not in self.codebooks:
            raise KeyError(f"no codebook at layer {layer!r}; layers with codebooks: {self.layer_names}")
        return self.codebooks[_key(layer)]  # type: ignore[return-value]

    def _hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            cb = self.codebooks[_key(name)]
            hidden = output[0] if isinstance(output, tuple) else output
            if not torch.is_tensor(hidden):
                raise TypeError(f"layer {name!r} returned {type(hidden).__name__}; a codebook needs a tensor")
            flat = hidden.reshape(-1, hidden.shape[-1])
            if self.bypass:
                self.codes[name] = cb.select(flat).reshape(*hidden.shape[:-1], cb.top_k)
                self._losses[name] = {}
                return None
            out = cb(flat)
            self.codes[name] = out.codes.reshape(*hidden.shape[:-1], cb.top_k)
            self._losses[name] = out.losses
            z = out.z.reshape(hidden.shape)
            return (z, *output[1:]) if isinstance(output, tuple) else z

        return hook

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.codes, self._losses = {}, {}
        return self.model(*args, **kwargs)

    def codebook_losses(self) -> dict[str, Tensor]:
        """Unweighted losses of the last forward pass, summed over layers by name."""
        total: dict[str, Tensor] = {}
        for losses in self._losses.values():
            for name, value in losses.items():
                total[name] = total[name] + value if name in total else value
        return total

    @contextmanager
    def bypassed(self) -> Iterator[CodebookModel]:
        """Context in which the codebooks leave every output untouched."""
        prev, self.bypass = self.bypass, True
        try:
            yield self
        finally:
            self.bypass = prev

    @contextmanager
    def intervene(
        self, layer: str, force: list[int] | None = None, suppress: list[int] | None = None
    ) -> Iterator[CodebookModel]:
        """Context forcing and/or suppressing codes of ``layer``; restored on exit."""
        cb = self.codebook(layer)
        saved = cb.forced.clone(), cb.suppressed.clone()
        try:
            if suppress:
                cb.suppress(suppress)
            if force:
                cb.force(force)
            yield self
        finally:
            cb.forced.copy_(saved[0])
            cb.suppressed.copy_(saved[1])

    def remove(self) -> nn.Module:
        """Remove the hooks and return the original network."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model


@accepts_renamed
def insert_codebooks(
    model: nn.Module,
    layers: list[str],
    codebook_size: int = 1024,
    top_k: int = 8,
    distance: Distance = "cosine",
    dead_code_threshold: float = 0.0,
    widths: dict[str, int] | None = None,
) -> CodebookModel:
    """Insert a :class:`CodebookFeatures` after each named layer of ``model`` (forward hooks).

    Args:
        model: any network.
        layers: dotted names of submodules (as in ``model.named_modules()``).
        codebook_size, top_k, distance, dead_code_threshold: settings of every codebook
            (see :class:`CodebookFeatures`).
        widths: output width per layer where it cannot be read from the module
            (``out_features``, ``embedding_dim``, ``normalized_shape``, ...).

    Returns:
        A :class:`CodebookModel` whose parameters are the network's plus the codebooks'.
    """
    if not layers:
        raise ValueError("insert_codebooks needs at least one layer name")
    modules = dict(model.named_modules())
    widths = dict(widths or {})
    books: dict[str, CodebookFeatures] = {}
    for name in layers:
        if name not in modules:
            close = [n for n in modules if n and name.split(".")[-1] in n][:5]
            raise ValueError(f"no submodule named {name!r} in {type(model).__name__}; similar names: {close}")
        width = widths.get(name) or _infer_width(modules[name], name)
        books[name] = CodebookFeatures(
            width, codebook_size=codebook_size, top_k=top_k, distance=distance, dead_code_threshold=dead_code_threshold
        )
    return CodebookModel(model, books)
