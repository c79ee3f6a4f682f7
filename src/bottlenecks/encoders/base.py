"""The frozen-encoder contract: a pretrained model that never trains, with its preprocessing.

A :class:`FrozenEncoder` maps a batch of images ``(batch, 3, H, W)`` (float in
``[0, 1]``, as the datasets produce them) to features ``(batch, feature_dim)``
float32. It owns the preprocessing (:attr:`FrozenEncoder.transform`: resize to the
encoder's resolution, normalise with the model's mean/std) and says, through
:meth:`FrozenEncoder.cache_identity`, everything that determines its output, so
the feature cache can key stored features on it.

Frozen means: always in ``eval()`` mode (``train()`` is overridden, so a parent
``LightningModule.train()`` cannot switch BatchNorm to batch statistics or turn on
dropout), parameters with ``requires_grad=False`` (they never receive gradients),
and :meth:`FrozenEncoder.encode` running under ``torch.inference_mode``.
:meth:`FrozenEncoder.forward` itself keeps autograd so that attribution methods
can take gradients with respect to the input pixels.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Bump when the meaning of an encoder's output changes for the same identity
#: (preprocessing semantics, pooling), so old feature-cache entries stop matching.
ENCODER_FORMAT = "1"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")


# --------------------------------------------------------------------------- transforms
class ImageTransform:
    """Dataset images ``(batch, 3, H, W)`` in ``[0, 1]`` → model input ``(batch, 3, S, S)``.

    Resizes the whole image (no crop, aspect ratio not kept) to ``image_size`` and
    normalises each channel with ``(x - mean) / std``. Runs on whatever device the
    images are on.

    Args:
        image_size: side ``S`` of the square model input.
        mean: per-channel mean (3 values) of the model's training preprocessing.
        std: per-channel standard deviation (3 values).
        interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"area"``.
        antialias: low-pass filter when downsampling (bilinear/bicubic only).
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        antialias: bool = True,
    ) -> None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.antialias = bool(antialias) and interpolation in ("bilinear", "bicubic")

    def describe(self) -> str:
        """A string that changes whenever the transform's output would."""
        return (
            f"resize={self.image_size}x{self.image_size} {self.interpolation}"
            f"{' antialias' if self.antialias else ''}; "
            f"mean={list(self.mean)}; std={list(self.std)}; input=(B,3,H,W) float in [0,1]"
        )

    def __repr__(self) -> str:
        return f"ImageTransform({self.describe()})"

    def __call__(self, images: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """``(batch, 3, H, W)`` float in ``[0, 1]`` → ``(batch, 3, image_size, image_size)`` float32.

        ``memory_format=torch.channels_last`` writes the result channels-last directly (no
        separate copy for a channels-last model).
        """
        check_images(images)
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            kwargs: dict[str, Any] = {}
            if self.interpolation in ("bilinear", "bicubic"):
                kwargs = {"align_corners": False, "antialias": self.antialias}
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=self.interpolation, **kwargs)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if x.requires_grad and torch.is_grad_enabled():  # attribution: keep the graph to the pixels
            return ((x - mean) / std).contiguous(memory_format=memory_format)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
        torch.sub(x, mean, out=out)
        return out.div_(std)


def check_images(images: Any) -> None:
    """Raise a ValueError naming the problem unless ``images`` is ``(batch, 3, H, W)`` float in [0, 1]."""
    if not isinstance(images, Tensor):
        raise ValueError(
            f"expected images as a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}"
        )
    shape = tuple(images.shape)
    if images.dim() != 4 or images.shape[1] != 3:
        hint = ""
        if images.dim() == 3 and images.shape[0] == 3:
            hint = "; this looks like a single image: add a batch dimension with images.unsqueeze(0)"
        elif images.dim() == 4 and images.shape[-1] == 3:
            hint = "; this looks channels-last (B, H, W, 3): use images.permute(0, 3, 1, 2)"
        elif images.dim() == 4 and images.shape[1] == 1:
            hint = "; this is a 1-channel image: repeat it to 3 channels with images.expand(-1, 3, -1, -1)"
        elif images.dim() == 2:
            hint = "; this looks like precomputed features: use the 'identity' encoder"
        raise ValueError(f"expected images of shape (B, 3, H, W), got shape {shape}{hint}")
    if not images.is_floating_point():
        raise ValueError(
            f"expected float images in [0, 1] of shape (B, 3, H, W), got dtype {images.dtype}"
            + ("; divide uint8 images by 255" if images.dtype == torch.uint8 else "")
        )
    if images.numel():
        lo, hi = torch.aminmax(images.detach())
        if float(lo) < -1e-3 or float(hi) > 1.0 + 1e-3:
            raise ValueError(
                f"expected images with values in [0, 1], got values in [{float(lo):.3g}, {float(hi):.3g}]"
                + ("; divide by 255" if float(hi) > 2.0 else "; pass the raw images, not normalised ones")
            )


class FeatureTransform:
    """The transform of the identity encoder: checks ``(batch, dim)`` features, casts to float32."""

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)

    def describe(self) -> str:
        return f"identity; input=(B,{self.dim}) features"

    def __repr__(self) -> str:
        return f"FeatureTransform(dim={self.dim})"

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"the identity encoder expects features of shape (B, {self.dim}), got {got}")
        return x.float()


# --------------------------------------------------------------------------- helpers
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, memoised per (path, size, mtime) in this process."""
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    if memo_key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_HASHES[memo_key] = h.hexdigest()
    return _FILE_HASHES[memo_key]


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_weights_file(path: str | os.PathLike[str], what: str = "weights_path") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no weights file at {p} (resolved: {p.resolve()})")
    return p


def load_state_dict_file(path: str | os.PathLike[str], what: str = "weights_path") -> dict[str, Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file may hold the state dict itself or a dict with a ``"state_dict"`` or
    ``"model"`` entry (Lightning / training-script checkpoints); a ``"module."``
    prefix (DataParallel) is removed.
    """
    p = check_weights_file(path, what)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping):
            for key in ("state_dict", "model"):
                if key in sd and isinstance(sd[key], Mapping):
                    sd = sd[key]
                    break
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{what}: {p} does not hold a state dict (a mapping of names to tensors)")
    out = dict(sd)
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block and restore the previous number after.

    ``None`` leaves the current setting alone.
    """
    if n is None:
        yield
        return
    if n == "auto" or n < 1:
        raise ValueError(f"torch_threads needs a positive integer or None, got {n!r}")
    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask, lowered by a cgroup CPU quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def auto_workers(device: torch.device | None = None) -> int:
    """DataLoader workers for ``num_workers="auto"`` while encoding.

    One core stays with the encoder's forward pass: ``min(4, cores - 2)`` on CPU
    (none on 2 cores or fewer, where workers would only take time from the forward),
    ``min(4, cores - 1)`` when the encoder runs on a GPU.
    """
    cores = available_cores()
    keep = 1 if device is not None and device.type != "cpu" else 2
    return max(0, min(4, cores - keep))


class ThreadTuner:
    """Chooses the intra-op thread count of each :meth:`FrozenEncoder.encode` call (``num_threads="auto"``).

    On a machine whose cores other jobs also use, more threads than free cores make OpenMP
    threads wait for each other at every parallel region: lite0 encoding fell to a few
    img/s with 2 threads on 2 shared cores while 1 thread kept ~100 img/s
    (docs/performance.md, "Encoding"). So the count is measured, not guessed: the first
    call warms up on 1 thread (untimed), then each candidate (1, 2, 4, ... up to
    ``max_threads``) is timed on real batches and the fastest per image (median of its
    last three calls) is used. A losing candidate is timed again after ``reprobe_every``
    calls, then after twice as many each time it loses again, so the choice follows the
    machine's load while a candidate that is much slower costs little.

    Args:
        max_threads: largest count tried (default: :func:`available_cores`).
        reprobe_every: calls before a losing candidate is first timed again.
    """

    def __init__(self, max_threads: int | None = None, reprobe_every: int = 16) -> None:
        top = max(1, int(max_threads or available_cores()))
        cands = {1, top}
        k = 2
        while k < top:
            cands.add(k)
            k *= 2
        self.candidates = sorted(cands)
        self.reprobe_every = max(1, int(reprobe_every))
        self.samples: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.calls = 0
        self._interval = {c: self.reprobe_every for c in self.candidates}
        self._last = {c: 0 for c in self.candidates}

    @property
    def best(self) -> int:
        """The candidate with the lowest median seconds per image so far (1 before anything is timed)."""
        timed = {c: sorted(v)[len(v) // 2] for c, v in self.samples.items() if v}
        return min(timed, key=timed.__getitem__) if timed else self.candidates[0]

    def next(self) -> int:
        """Thread count for the next call."""
        if self.calls == 0:
            return self.candidates[0]
        for c in self.candidates:
            if not self.samples[c]:
                return c
        best = self.best
        due = [c for c in self.candidates if c != best and self.calls - self._last[c] >= self._interval[c]]
        return due[0] if due else best

    def record(self, threads: int, seconds: float, items: int) -> None:
        """Report that a call with ``threads`` threads took ``seconds`` for ``items`` images."""
        if self.calls > 0 and items > 0 and threads in self.samples:
            before = self.best
            v = self.samples[threads]
            v.append(seconds / items)
            del v[:-3]  # the last three measurements: the machine's load changes
            if threads != before and self.calls - self._last[threads] >= self._interval[threads]:
                # a re-measurement of a losing candidate: back off further if it still loses
                lost = self.best != threads
                self._interval[threads] = min(4096, self._interval[threads] * 2) if lost else self.reprobe_every
            self._last[threads] = self.calls
        self.calls += 1


def calibration_images(size: int) -> Tensor:
    """Four fixed images ``(4, 3, size, size)`` in [0, 1]: a colour ramp, a checkerboard, a red disk, noise.

    Smooth images show bf16's rounding more than noise does (lite0 at 64 px: cosine 0.98
    to fp32 on the ramp, 0.999 on noise), so the precision check looks at all four.
    """
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ramp = torch.stack([xx / size, yy / size, torch.full((size, size), 0.5)]).float()
    cell = max(1, size // 8)
    checker = (((yy // cell) + (xx // cell)) % 2).float().expand(3, size, size)
    disk = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).float()
    red = torch.stack([disk, torch.zeros_like(disk), torch.zeros_like(disk)])
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    return torch.stack([ramp, checker, red, noise])


PRECISIONS = ("fp32", "bf16", "auto")
#: bf16 features must stay this close to fp32 ones for ``precision="auto"`` to use bf16 on a CPU
BF16_TOLERANCE = {"min_cosine": 0.995, "max_relative_error": 0.1}


def bf16_supported(device: torch.device | None) -> bool:
    """Whether ``device`` runs bf16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device is None or device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
            return False
    return False


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _PrepareBatch:
    """Collate function run in DataLoader workers: stack the items' ``"x"`` and apply the encoder's transform."""

    def __init__(self, encoder: FrozenEncoder) -> None:
        self.transform = encoder.transform
        self.channels_last = encoder.channels_last

    def __call__(self, items: list[Any]) -> Tensor:
        return _prepare(self.transform, self.channels_last, _stack_x(items))


def _prepare(transform: Callable[..., Tensor], channels_last: bool, images: Any) -> Tensor:
    """``transform(images)``, channels-last for a 4-d result when ``channels_last`` (written so directly when it can)."""
    cl = channels_last and isinstance(images, Tensor) and images.dim() == 4
    if cl and isinstance(transform, ImageTransform):
        return transform(images, memory_format=torch.channels_last)
    x = transform(images)
    return x.contiguous(memory_format=torch.channels_last) if cl and x.dim() == 4 else x


def _stack_x(items: list[Any]) -> Tensor:
    """Collate only the ``"x"`` entries of dataset items (labels, masks are not needed to encode)."""
    try:
        return torch.stack([item["x"] for item in items])
    except (TypeError, KeyError, IndexError) as e:
        first = items[0]
        got = sorted(first) if isinstance(first, Mapping) else type(first).__name__
        raise ValueError(
            f"encode_dataset expects dataset items to be dicts with an 'x' tensor; got {got}"
        ) from e


# --------------------------------------------------------------------------- encoder
class FrozenEncoder(nn.Module):
    """A pretrained model that is never trained, plus the preprocessing it expects.

    Subclasses build the wrapped model and call this constructor; users normally get
    one from :func:`bottlenecks.encoders.build_encoder`.

    Args:
        model: the network; ``model(transform(images))`` must return ``(batch, feature_dim)``.
        name: registry name (``"lite0"``, ``"timm:resnet18"``...), used in progress bars.
        feature_dim: width of the features.
        transform: callable ``(batch, 3, H, W)`` in ``[0, 1]`` → model input; it must
            have a ``describe()`` method returning a string that identifies it.
        architecture: what was built (e.g. ``"timm/tf_efficientnet_lite0, num_classes=0"``).
        weights: identity of the weights (``"sha256:<hex>"`` of a file, or a pretrained tag).
        num_threads: intra-op CPU threads while encoding: a number, ``"auto"`` (measured per
            call by a :class:`ThreadTuner` among 1, 2, 4, ... up to the available cores, so a
            machine shared with other jobs is not oversubscribed) or ``None`` (torch's setting).
        precision: ``"fp32"`` (default), ``"bf16"`` (bf16 autocast around the model) or
            ``"auto"``: bf16 where the device runs it natively (CUDA with bf16; a CPU with
            AVX512-BF16 or AMX) and this encoder's bf16 features on a fixed calibration batch
            stay within :data:`BF16_TOLERANCE` of fp32, else fp32. bf16 is part of
            :meth:`cache_identity`, so fp32 and bf16 features never share a cache entry.
        extra_identity: further strings that change the output (e.g. normalisation).
        channels_last: keep 4-d weights and inputs in channels-last memory format
            (1.4-2.5x faster convolutions on CPU, see ``benchmarks/bench_encoders.py``).
        cpu_chunk_pixels: on CPU, :meth:`encode` runs a batch in chunks of at most this
            many input pixels (default 16 images of 224x224, 200 of 64x64): large
            batches of large images overflow the CPU caches and run slower per image.
            ``None`` runs every batch whole.

    Attributes:
        name, feature_dim, transform, architecture, weights_id, num_threads, precision,
        channels_last, cpu_chunk_pixels.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        feature_dim: int,
        transform: Callable[[Tensor], Tensor],
        architecture: str,
        weights: str,
        num_threads: int | str | None = None,
        extra_identity: Mapping[str, str] | None = None,
        precision: str = "fp32",
        channels_last: bool = True,
        cpu_chunk_pixels: int | None = 16 * 224 * 224,
    ) -> None:
        super().__init__()
        if int(feature_dim) < 1:
            raise ValueError(f"{name}: feature_dim must be positive, got {feature_dim}")
        if num_threads is not None and num_threads != "auto" and (
            isinstance(num_threads, (str, bool)) or int(num_threads) != num_threads or num_threads < 1
        ):
            raise ValueError(f"{name}: num_threads must be a positive integer, 'auto' or None, got {num_threads!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"{name}: precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model
        self.name = name
        self.feature_dim = int(feature_dim)
        self.transform = transform
        self.architecture = architecture
        self.weights_id = weights
        self.num_threads = num_threads
        self.precision = precision
        self._tuner: ThreadTuner | None = None
        self._resolved_precision: dict[str, str] = {}
        self._extra_identity = {str(k): str(v) for k, v in (extra_identity or {}).items()}
        self.channels_last = bool(channels_last)
        self.cpu_chunk_pixels = cpu_chunk_pixels
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    # ----------------------------------------------------------------- frozen
    @property
    def out_dim(self) -> int:
        """Deprecated alias of :attr:`feature_dim`."""
        return self.feature_dim

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always stays in eval mode: ``train(True)`` is ignored (no BatchNorm drift, no dropout)."""
        return super().train(False)

    @property
    def device(self) -> torch.device | None:
        """Device of the weights; None for a weightless encoder (inputs then stay where they are)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return None

    # ---------------------------------------------------------------- compute
    def forward(self, x: Tensor) -> Tensor:
        """Model input ``(batch, 3, S, S)`` (already transformed) → features ``(batch, feature_dim)``.

        Autograd stays on (gradients can reach the input for attribution); the
        parameters never require gradients.
        """
        return self.model(x)

    def encode(self, images: Tensor) -> Tensor:
        """Images ``(batch, 3, H, W)`` float in ``[0, 1]`` → features ``(batch, feature_dim)`` float32.

        Moves the images to the encoder's device, applies :attr:`transform` and the
        model under ``torch.inference_mode``. The result is an ordinary tensor (usable
        as input to a trainable layer), on the encoder's device (for a weightless
        encoder such as identity, on the input's device).
        """
        device = self.device
        if device is not None and isinstance(images, Tensor):
            images = images.to(device, non_blocking=True)
        return self._encode_prepared(self.prepare(images), device)

    def prepare(self, images: Tensor) -> Tensor:
        """Images → model input: :attr:`transform`, written channels-last when the model is channels-last.

        Runs wherever the images are (in a DataLoader worker while encoding a dataset on CPU).
        """
        return _prepare(self.transform, self.channels_last, images)

    def _encode_prepared(self, x: Tensor, device: torch.device | None) -> Tensor:
        """Model input (from :meth:`prepare`) → features float32, with the thread count and precision.

        ``device`` is :attr:`device`, looked up once by the caller (it walks the modules).
        """
        if device is not None:
            x = x.to(device, non_blocking=True)
        on_cpu = device is None or device.type == "cpu"
        threads = self.num_threads
        if threads == "auto":
            if self._tuner is None:
                self._tuner = ThreadTuner()
            threads = self._tuner.next() if on_cpu else None
        precision = self.precision if self.precision != "auto" else self.resolved_precision()
        t0 = time.perf_counter()
        with torch_threads(threads):
            with torch.inference_mode(), _autocast(x.device, precision):
                per = len(x)
                if x.device.type == "cpu" and self.cpu_chunk_pixels and x.dim() == 4:
                    per = max(1, self.cpu_chunk_pixels // (x.shape[-2] * x.shape[-1]))
                h = self(x) if per >= len(x) else torch.cat([self(c) for c in x.split(per)])
        if self._tuner is not None and threads is not None:
            self._tuner.record(threads, time.perf_counter() - t0, len(x))
        if h.dim() != 2 or h.shape[1] != self.feature_dim or h.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"{self.name}: the model returned shape {tuple(h.shape)} but ({x.shape[0]}, {self.feature_dim}) "
                "was expected; the architecture's feature width differs from feature_dim"
            )
        # Outside inference mode, clone() turns the inference tensor into a normal one.
        return h.float().clone() if torch.is_inference(h) and not torch.is_inference_mode_enabled() else h.float()

    def resolved_precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: what :attr:`precision` means on the encoder's current device."""
        if self.precision != "auto":
            return self.precision
        device = self.device
        key = str(device)
        if key not in self._resolved_precision:
            self._resolved_precision[key] = "bf16" if self._bf16_within_tolerance(device) else "fp32"
        return self._resolved_precision[key]

    def _bf16_within_tolerance(self, device: torch.device | None) -> bool:
        """bf16 is native on ``device`` and, on a seeded calibration batch, close to fp32 (:data:`BF16_TOLERANCE`)."""
        size = getattr(self.transform, "image_size", None)
        if size is None or not bf16_supported(device):
            return False
        x = self.prepare(calibration_images(int(size)).to(device or "cpu"))
        with torch.inference_mode(), torch_threads(None if self.num_threads == "auto" else self.num_threads):
            ref = self(x).float()
            with _autocast(x.device, "bf16"):
                low = self(x).float()
        cos = float(F.cosine_similarity(ref, low, dim=1).min())
        rel = float(((ref - low).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).max())
        return cos >= BF16_TOLERANCE["min_cosine"] and rel <= BF16_TOLERANCE["max_relative_error"]

    def encode_dataset(
        self,
        dataset: Any,
        batch_size: int = 64,
        num_workers: int | str = 0,
        progress: bool = True,
        desc: str | None = None,
        indices: Sequence[int] | None = None,
    ) -> Tensor:
        """Encode every item of a dataset (or the items at ``indices``), in index order.

        Args:
            dataset: a map-style dataset (e.g. a ``ConceptDataset``) whose items are
                dicts with ``"x"``: an image ``(3, H, W)`` in ``[0, 1]`` (or a feature
                vector for the identity encoder).
            batch_size: images per forward pass.
            num_workers: DataLoader worker processes that produce (decode, render, augment)
                and collate the items while the encoder runs, each keeping two batches
                ready; ``"auto"``: :func:`auto_workers` (none on a 2-core machine). With a
                GPU encoder the batches come in pinned memory and are copied asynchronously.
            progress: show a tqdm bar (``"encoding train with lite0"``).
            desc: what is being encoded, e.g. ``"encoding train"``; the bar adds
                ``" with <encoder name>"``.
            indices: encode only these items (e.g. ``range(start, stop)``, one rank's shard).

        Returns:
            ``(len(dataset), feature_dim)`` float32 CPU tensor; row ``i`` is item ``i``
            (with ``indices``: ``(len(indices), feature_dim)``, row ``j`` is item ``indices[j]``).
        """
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        kind = getattr(dataset, "kind", None)
        if kind == "features" and not isinstance(self.transform, FeatureTransform):
            raise ValueError(
                f"{type(dataset).__name__} holds precomputed feature vectors (kind='features'); "
                f"encode it with the 'identity' encoder, not {self.name!r}"
            )
        source = dataset
        if indices is not None:
            from torch.utils.data import Subset

            total = len(dataset)
            bad = [i for i in indices if not 0 <= int(i) < total]
            if bad:
                raise IndexError(f"indices {bad[:5]} are outside {type(dataset).__name__} of length {total}")
            source = Subset(dataset, list(indices))
        n = len(source)
        out = torch.empty(n, self.feature_dim, dtype=torch.float32)
        device = self.device
        if num_workers == "auto":
            num_workers = auto_workers(device)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer or 'auto', got {num_workers!r}")
        prepare_in_workers = num_workers > 0 and (device is None or device.type == "cpu")
        loader = DataLoader(
            source,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            # on CPU with workers, the workers also run the transform, so the encoder only runs the model
            collate_fn=_PrepareBatch(self) if prepare_in_workers else _stack_x,
            pin_memory=device is not None and device.type == "cuda",
            prefetch_factor=2 if num_workers > 0 else None,
        )
        label = f"{desc or 'encoding'} with {self.name}"
        done = 0
        # One thread setting for the whole loop: switching torch's count around every batch (and
        # collating with the process's default count on a busy machine) cost up to 10x here.
        outer = 1 if self.num_threads == "auto" else self.num_threads
        with tqdm(total=n, desc=label, unit="img", disable=not progress, leave=False) as bar, torch_threads(outer):
            for x in loader:
                if not prepare_in_workers:  # transform where the model runs (a GPU resizes fast)
                    x = self.prepare(x.to(device, non_blocking=True) if device is not None else x)
                h = self._encode_prepared(x, device)
                if done + len(h) > n:
                    raise RuntimeError(f"{type(dataset).__name__} yielded more than its length {n} items")
                out[done : done + len(h)] = h.cpu()
                done += len(h)
                bar.update(len(h))
        if done != n:
            raise RuntimeError(f"{type(dataset).__name__} has length {n} but yielded {done} items")
        return out

    # --------------------------------------------------------------- identity
    def cache_identity(self) -> dict[str, str]:
        """Strings that together determine the encoder's output (feature-cache key material).

        Keys: ``encoder``, ``architecture``, ``weights``, ``transform``, ``feature_dim``,
        ``format``, plus encoder-specific entries.
        """
        ident = {
            "encoder": self.name,
            "architecture": self.architecture,
            "weights": self.weights_id,
            "transform": self.transform.describe() if hasattr(self.transform, "describe") else repr(self.transform),
            "out_dim": str(self.feature_dim),  # key name kept: existing caches stay valid
            "format": ENCODER_FORMAT,
        }
        if self.resolved_precision() != "fp32":  # fp32 entries keep the keys they had before precision existed
            ident["precision"] = f"{self.resolved_precision()} autocast"
        ident.update(self._extra_identity)
        return ident

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, weights={self.weights_id[:24]!r}"


class FrozenTextEncoder(nn.Module):
    """Base of text encoders: ``encode_text(list of n strings)`` → ``(n, feature_dim)`` unit-norm float32.

    Frozen the same way as :class:`FrozenEncoder` (eval forever, no gradients).
    """

    name: str
    feature_dim: int

    @property
    def out_dim(self) -> int:
        """Deprecated alias of :attr:`feature_dim`."""
        return self.feature_dim

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Always stays in eval mode."""
        return super().train(False)

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def cache_identity(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_texts(texts: Any, who: str) -> list[str]:
    """Return ``texts`` as a list of strings or raise a ValueError naming the problem."""
    if isinstance(texts, str):
        raise ValueError(f"{who}.encode_text expects a list of strings, got a single string; wrap it: [text]")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(
            f"{who}.encode_text expects strings; items {bad[:5]} are "
            f"{sorted({type(texts[i]).__name__ for i in bad})}"
        )
    return texts
