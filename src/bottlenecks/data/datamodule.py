"""Datamodules: raw dataset → frozen encoder → feature cache → batches of features.

:class:`BottleneckDataModule` is the base every dataset-specific datamodule
extends: a subclass says how to build the raw :class:`ConceptDataset` of each
split, and the base encodes each split once through the feature cache and serves
batch dicts ``{"x": (batch, feature_dim), "y", "concepts", "index"}`` straight
from tensors (one indexing op per batch, no per-example collation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from bottlenecks.data.base import ConceptDataset, Task, check_concepts, check_labels
from bottlenecks.data.validation import (
    as_label_list,
    check_feature_matrix,
    check_row_identity,
    check_same_rows,
    closest,
    encode_class_labels,
    regression_targets,
)
from bottlenecks.naming import NamedConcepts

SPLITS = ("train", "val", "test")

#: rows per Lightning training batch that ``steps_per_batch="auto"`` aims at: Lightning's
#: per-batch cost (about 1 ms) is then spread over ``AUTO_ROWS_PER_BATCH / batch_size`` steps
AUTO_ROWS_PER_BATCH = 8192


def batch_hooks_allow_grouping(trainer: L.Trainer) -> bool:
    """Whether grouping several optimiser steps into one Lightning batch leaves this trainer's
    behaviour unchanged: one process, no gradient accumulation, whole epochs, validation and
    checkpoints by epoch, and no callback that acts on every training batch (progress bars,
    :class:`~bottlenecks.models.stages.TrainingStages` and epoch-cadence checkpoints excepted)."""
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    from bottlenecks.models.stages import TrainingStages

    if trainer.world_size > 1 or trainer.accumulate_grad_batches != 1:
        return False
    limit = trainer.limit_train_batches  # (an int counts batches: 1 is one batch, not the whole epoch)
    if (limit is not None and (isinstance(limit, int) or limit != 1.0)) or isinstance(trainer.val_check_interval, int):
        return False
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            if cb._every_n_train_steps or cb._train_time_interval is not None:
                return False
        elif not isinstance(cb, (ProgressBar, TrainingStages)) and any(
            getattr(type(cb), h) is not getattr(L.Callback, h)
            for h in ("on_train_batch_start", "on_train_batch_end")
        ):
            return False
    return True


class FeatureBatches(Dataset):
    """Tensors indexed a whole batch at a time: ``ds[list_of_indices]`` → batch dict."""

    def __init__(self, x: Tensor, y: Tensor, concepts: Tensor | None = None) -> None:
        if len(x) != len(y):
            raise ValueError(f"features have {len(x)} rows but labels have {len(y)}")
        if concepts is not None and len(concepts) != len(x):
            raise ValueError(f"features have {len(x)} rows but concepts have {len(concepts)}")
        self.x, self.y, self.concepts = x, y, concepts

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: Tensor) -> Tensor:
        """Feature rows ``idx`` as float32 ``(len(idx), dim)`` (a sample for data initialisation)."""
        return torch.as_tensor(self.x[idx], dtype=torch.float32)

    def __getitem__(self, idx: list[int] | Tensor) -> dict[str, Tensor]:
        # EpochBatches hands over a LongTensor: no Python list of row numbers to convert per step
        idx = idx if isinstance(idx, Tensor) and idx.dtype == torch.long else torch.as_tensor(idx, dtype=torch.long)
        batch = {"x": self.x[idx].float(), "y": self.y[idx], "index": idx}
        if self.concepts is not None:
            batch["concepts"] = self.concepts[idx]
        return batch


class EpochBatches(DistributedSampler):
    """Index batches (LongTensors) over ``n`` rows; shuffled by a generator seeded with ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before each epoch, so the order of epoch ``e`` is
    the same in a run resumed from a checkpoint as in one that never stopped.

    Several processes (``world_size > 1``): every rank draws the same order and takes every
    ``world_size``-th index of it (rank ``r``: positions ``r, r + W, ...``), so the shards are
    disjoint and the batches of step ``s`` on all ranks together hold the rows of batch ``s``
    of one process at ``batch_size * world_size``. ``pad=True`` (training) repeats the first
    indices of the order until ``n`` divides by ``world_size``, as ``DistributedSampler``
    does, so every rank takes the same number of steps; ``pad=False`` (evaluation) never
    repeats a row, so metrics count each row exactly once (shards may then differ by a row).

    It is a ``DistributedSampler`` only so that Lightning sees the loader is already sharded
    and does not wrap it in a second, batch-level sampler (which would repeat whole batches).
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
        pad: bool = False,
    ) -> None:
        # (DistributedSampler.__init__ is not called: it would ask torch.distributed for the rank)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got rank={rank}")
        if world_size > 1 and n < world_size:
            raise ValueError(
                f"a split of {n} rows cannot give each of {world_size} processes a row; use fewer "
                "processes (trainer.devices) or a larger split"
            )
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.num_replicas, self.pad, self.drop_last = rank, world_size, pad, False
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self) -> int:
        """Rows of this rank's shard."""
        W = self.num_replicas
        if self.pad:
            return -(-self.n // W)
        return len(range(self.rank, self.n, W))

    def __len__(self) -> int:
        return (self._rows() + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        W = self.num_replicas
        if W > 1:
            if self.pad and self.n % W:
                order = torch.cat([order, order[: W - self.n % W]])
            order = order[self.rank :: W]
        for batch in order.split(self.batch_size):
            yield batch


def batch_loader(
    ds: FeatureBatches, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
    rank: int = 0, world_size: int = 1, pad: bool = False,
) -> DataLoader:
    """A DataLoader that yields whole batches from :class:`FeatureBatches` (this rank's shard
    of them under several processes: see :class:`EpochBatches`)."""
    return DataLoader(
        ds,
        batch_size=None,
        sampler=EpochBatches(len(ds), batch_size, shuffle, seed, rank=rank, world_size=world_size, pad=pad),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # its own generator: creating an iterator draws a worker seed, which from the global
        # generator would shift the model's random draws (VIB noise) by where loaders start
        generator=torch.Generator().manual_seed(seed),
    )


class StreamedFeatureBatches(Dataset):
    """Batches from a ``.npy`` feature file larger than memory, read in bounded blocks.

    The rows are cut into blocks of ``block_rows`` contiguous rows. An epoch visits the blocks
    in an order shuffled by a generator seeded with ``seed + epoch``; ``buffer_blocks`` blocks
    at a time are read with plain file reads into one reusable buffer, their rows are shuffled
    within the buffer, and batches are sliced from it (a batch that straddles two buffers takes
    its rows from both). Memory stays at one buffer (``buffer_blocks * block_rows`` rows) plus
    one batch, whatever the file's size: the file is never memory-mapped for training, so the
    pages it reads do not count towards the process's resident memory.

    Trade-off against a full shuffle: rows of one batch come from ``buffer_blocks`` random
    blocks, not from the whole file, so neighbouring rows of the file (one class, one source)
    share batches more often than by chance. Features cached in dataset order with the classes
    interleaved train like a full shuffle; shuffle the rows once when writing a sorted file.

    Keys are ``(epoch, batch_number)`` (from :class:`StreamedEpochs`); labels and concepts
    stay in memory. ``x`` is the file memory-mapped, for the few random rows that
    ``FeatureNorm`` and data initialisation sample.

    Args:
        path: a 2-D C-order ``.npy`` file of floats (the feature cache's ``features.npy``).
        y: ``(rows,)`` targets; ``concepts``: ``(rows, num_concepts)`` or None.
        batch_size: rows per batch.
        shuffle: shuffle blocks and rows (training); False reads the rows in order.
        block_rows / buffer_blocks: rows per contiguous read / blocks held at once.
        seed: seed of the shuffling order.
    """

    def __init__(
        self,
        path: str | Path,
        y: Tensor,
        concepts: Tensor | None = None,
        batch_size: int = 256,
        shuffle: bool = True,
        block_rows: int = 4096,
        buffer_blocks: int = 8,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or block_rows < 1 or buffer_blocks < 1:
            raise ValueError(
                f"batch_size, block_rows and buffer_blocks must be positive, got {batch_size}, {block_rows}, "
                f"{buffer_blocks}"
            )
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
            except ValueError as e:
                raise ValueError(f"{self.path} is not a .npy file: {e}") from e
            self._offset = f.tell()
        if len(shape) != 2 or fortran or dtype.kind != "f":
            raise ValueError(
                f"{self.path} holds a {'Fortran-order ' if fortran else ''}{dtype} array of shape {shape}; "
                "streaming needs a 2-D C-order float array (rows, features)"
            )
        self.n, self.dim = int(shape[0]), int(shape[1])
        self.dtype = dtype
        if len(y) != self.n:
            raise ValueError(f"{self.path} has {self.n} rows but labels have {len(y)}")
        if concepts is not None and len(concepts) != self.n:
            raise ValueError(f"{self.path} has {self.n} rows but concepts have {len(concepts)}")
        self.y, self.concepts = y, concepts
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.block_rows, self.buffer_blocks = block_rows, buffer_blocks
        self._row_bytes = self.dim * dtype.itemsize
        self._buffer = np.empty((min(self.n, block_rows * buffer_blocks), self.dim), dtype=dtype)
        self._fh: Any = None
        self._plan_epoch: int | None = None
        self._loaded: int | None = None

    def take(self, idx: Tensor) -> Tensor:
        """Feature rows ``idx`` as float32 ``(len(idx), dim)``, read row by row from the file.

        Not through the memory map: a fault on a mapped page maps its neighbours too, so 20k
        random rows of a 4 GB mapping would make most of the file resident."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        out = np.empty((len(idx), self.dim), dtype=self.dtype)
        order = torch.argsort(idx)
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            for k in order.tolist():
                r = int(idx[k])
                if not 0 <= r < self.n:
                    raise IndexError(f"row {r} is out of range: {self.path} has {self.n} rows")
                data = os.pread(fd, self._row_bytes, self._offset + r * self._row_bytes)
                if len(data) != self._row_bytes:
                    raise ValueError(f"{self.path} ended early at row {r} of {self.n}")
                out[k] = np.frombuffer(data, dtype=self.dtype)
        return torch.from_numpy(out).float()

    @property
    def x(self) -> Tensor:
        """The whole file memory-mapped (copy-on-write), for analysis that reads every row; its
        touched pages count as resident memory, so training reads through batches and :meth:`take`."""
        arr = np.load(self.path, mmap_mode="c")
        return torch.from_numpy(arr)

    def __len__(self) -> int:
        """Batches per epoch."""
        return (self.n + self.batch_size - 1) // self.batch_size

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the reusable read buffer (the bound on what streaming holds of the file)."""
        return int(self._buffer.nbytes)

    def _plan(self, epoch: int) -> None:
        """Blocks of each buffer load and the order of rows within it, for ``epoch``."""
        if self._plan_epoch == epoch:
            return
        n_blocks = (self.n + self.block_rows - 1) // self.block_rows
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n_blocks, generator=g) if self.shuffle else torch.arange(n_blocks)
        self._groups = [order[i:i + self.buffer_blocks].tolist() for i in range(0, n_blocks, self.buffer_blocks)]
        sizes = [sum(min(self.block_rows, self.n - b * self.block_rows) for b in grp) for grp in self._groups]
        self._starts = np.cumsum([0, *sizes])
        self._perms = [torch.randperm(m, generator=g) if self.shuffle else torch.arange(m) for m in sizes]
        self._plan_epoch, self._loaded = epoch, None

    def _load(self, group: int) -> None:
        """Read the blocks of buffer load ``group`` into the buffer (one read per block)."""
        if self._loaded == group:
            return
        if self._fh is None:
            self._fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open across batches
        rows, at = [], 0
        for b in self._groups[group]:
            r0, r1 = b * self.block_rows, min(self.n, (b + 1) * self.block_rows)
            view = memoryview(self._buffer[at:at + r1 - r0]).cast("B")
            self._fh.seek(self._offset + r0 * self._row_bytes)
            got = 0
            while got < len(view):
                k = self._fh.readinto(view[got:])
                if not k:
                    raise ValueError(f"{self.path} ended early at row {r0 + got // self._row_bytes} of {self.n}")
                got += k
            rows.append(torch.arange(r0, r1))
            at += r1 - r0
        self._rows = torch.cat(rows)
        self._loaded = group

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, i = key
        self._plan(epoch)
        a, b = i * self.batch_size, min(self.n, (i + 1) * self.batch_size)
        if not 0 <= a < b:
            raise IndexError(f"batch {i} is out of range: the epoch has {len(self)} batches")
        xs, idx = [], []
        g = int(np.searchsorted(self._starts, a, side="right")) - 1
        while a < b:
            self._load(g)
            lo, hi = a - self._starts[g], min(b, self._starts[g + 1]) - self._starts[g]
            local = self._perms[g][lo:hi]
            xs.append(torch.from_numpy(self._buffer[local.numpy()]))
            idx.append(self._rows[local])
            a = int(self._starts[g + 1])
            g += 1
        index = idx[0] if len(idx) == 1 else torch.cat(idx)
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        batch = {"x": x.float(), "y": self.y[index], "index": index}
        if self.concepts is not None:
            batch["concepts"] = self.concepts[index]
        return batch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fh"] = None  # a worker process opens its own file
        return state

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class StreamedEpochs(Sampler[tuple[int, int]]):
    """Keys ``(epoch, batch_number)`` for :class:`StreamedFeatureBatches`; Lightning's
    :meth:`set_epoch` makes epoch ``e`` the same in a resumed run as in one that never stopped."""

    def __init__(self, n_batches: int) -> None:
        self.n_batches, self.epoch = n_batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in range(self.n_batches))


def streamed_loader(ds: StreamedFeatureBatches) -> DataLoader:
    """A DataLoader over :class:`StreamedFeatureBatches` (in this process: one buffer)."""
    return DataLoader(ds, batch_size=None, sampler=StreamedEpochs(len(ds)), num_workers=0)


def stream_by_default(path: str | Path, share: float = 0.5) -> bool:
    """True when the file at ``path`` is larger than ``share`` of the memory available now
    (``MemAvailable`` of /proc/meminfo; False where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return False
    return Path(path).stat().st_size > share * available


class FeatureDataModule(NamedConcepts, L.LightningDataModule):
    """Shared serving logic: holds per-split feature tensors and builds loaders.

    Subclasses fill ``self._splits[split] = FeatureBatches(...)`` in :meth:`setup` and
    set ``feature_dim``, ``concept_names``, ``num_classes``, ``task`` in ``__init__``.
    """

    feature_dim: int
    concept_names: list[str] | None
    num_classes: int | None
    task: Task
    class_names: list[str] | None = None
    #: the frozen encoder that produced the features (None: the user's own features)
    encoder_spec: str | dict[str, Any] | None = None
    #: the paired text encoder (concept sentences, unit naming), linked into the model
    text_encoder_spec: str | dict[str, Any] | None = None

    def __init__(
        self, batch_size: int = 256, eval_batch_size: int = 1024, seed: int = 0,
        steps_per_batch: int | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if steps_per_batch != "auto" and (
            not isinstance(steps_per_batch, int) or isinstance(steps_per_batch, bool) or steps_per_batch < 1
        ):
            raise ValueError(f"steps_per_batch must be a positive integer or 'auto', got {steps_per_batch!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        #: optimiser steps per Lightning training batch (see :meth:`train_steps_per_batch`)
        self.steps_per_batch = steps_per_batch
        self.seed = seed
        self._splits: dict[str, FeatureBatches | StreamedFeatureBatches] = {}

    def split(self, name: str) -> FeatureBatches:
        """The feature tensors of one split (``setup`` must have run)."""
        if name not in self._splits:
            self.setup("fit" if name in ("train", "val") else "test")
        return self._splits[name]

    def train_features(self) -> Tensor:
        return self.split("train").x

    def train_steps_per_batch(self) -> int:
        """Optimiser steps per Lightning training batch under this datamodule's trainer.

        The training loader serves ``k * batch_size`` rows per batch and the model takes one step
        per ``batch_size`` of them: the same updates in the same order as ``k = 1``, with
        Lightning's per-batch hooks paid once per ``k`` steps. ``"auto"``: ``k`` such that a batch
        holds about :data:`AUTO_ROWS_PER_BATCH` rows, and 1 wherever per-batch behaviour would
        change (no trainer, several processes, gradient accumulation, ``limit_train_batches``,
        a step-interval ``val_check_interval`` or checkpoint, a callback acting on every batch)."""
        if self.steps_per_batch != "auto":
            return int(self.steps_per_batch)
        trainer = self.trainer
        if trainer is None or not batch_hooks_allow_grouping(trainer):
            return 1
        return max(1, AUTO_ROWS_PER_BATCH // self.batch_size)

    def train_rows(self) -> int:
        """Rows one training epoch serves in this process."""
        train = self.split("train")
        return train.n if isinstance(train, StreamedFeatureBatches) else len(train)

    def train_dataloader(self) -> DataLoader:
        train = self.split("train")
        if isinstance(train, StreamedFeatureBatches):
            from bottlenecks import distributed

            if distributed.is_distributed():
                raise RuntimeError(
                    "streaming the training features from disk runs in one process only; under several "
                    "processes set data.stream=false (each rank then holds the features in memory)"
                )
        k = self.train_steps_per_batch()
        if isinstance(train, StreamedFeatureBatches):
            train.batch_size = self.batch_size * k
            return streamed_loader(train)
        return batch_loader(train, self.batch_size * k, shuffle=True, seed=self.seed, **_shard(pad=True))

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.split("val"), self.eval_batch_size, shuffle=False, seed=self.seed, **_shard())

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.split("test"), self.eval_batch_size, shuffle=False, seed=self.seed, **_shard())

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def _shard(pad: bool = False) -> dict[str, Any]:
    """This process's share of a split under ``torch.distributed`` (everything in one process)."""
    from bottlenecks import distributed

    return {"rank": distributed.rank(), "world_size": distributed.world_size(), "pad": pad}


class BottleneckDataModule(FeatureDataModule):
    """Base datamodule over raw :class:`ConceptDataset` splits and a frozen encoder.

    Subclasses implement :meth:`make_dataset`. Features of each split are computed
    once per (encoder, weights, transform, dataset, split) and kept in the feature
    cache under ``cache_dir``; datasets whose items are already vectors
    (``kind == "features"``) skip the encoder.

    Args:
        encoder: encoder spec for :func:`bottlenecks.encoders.build_encoder`
            (``"lite0"``, ``"open_clip:ViT-B-32"``, ``{"name": ..., ...}``).
        text_encoder: the paired text encoder for bottlenecks that read text (concept
            sentences, naming units): a spec for :func:`bottlenecks.encoders.build_text_encoder`
            (``"minilm"``, ``"open_clip:ViT-B-32"``); None when no bottleneck needs one. It
            must embed into the same space as ``encoder`` when text and image vectors are
            compared (open_clip's two towers).
        cache_dir: folder of the feature cache.
        batch_size / eval_batch_size: training / evaluation batch sizes.
        encode_batch_size: images per encoder forward pass when filling the cache.
        num_workers: worker processes that render/load (and, for a CPU encoder, normalise)
            images while encoding; ``"auto"``: see :func:`bottlenecks.encoders.base.auto_workers`.
            Under DDP each rank encodes its shard of each split (docs/performance.md).
        seed: seed of the shuffling order.
        stream: read the training features from the cache file in bounded blocks
            (:class:`StreamedFeatureBatches`) instead of holding them in memory. None (default):
            stream when the file is larger than half the memory available at setup.
        stream_block_rows / stream_buffer_blocks: rows per contiguous read / blocks held at
            once while streaming (the buffer is ``block_rows * buffer_blocks`` rows).
        steps_per_batch: optimiser steps per Lightning training batch, or ``"auto"``: the loader
            serves ``k * batch_size`` rows, the model steps once per ``batch_size`` of them — the
            same updates as 1, with Lightning's per-batch cost paid once per ``k`` steps
            (:meth:`train_steps_per_batch`, docs/performance.md).
    """

    def __init__(
        self,
        encoder: str | dict[str, Any] = "lite0",
        text_encoder: str | dict[str, Any] | None = None,
        cache_dir: str = ".cache/features",
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        encode_batch_size: int = 128,
        num_workers: int | str = 0,
        seed: int = 0,
        stream: bool | None = None,
        stream_block_rows: int = 4096,
        stream_buffer_blocks: int = 8,
        steps_per_batch: int | Literal["auto"] = "auto",
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                         steps_per_batch=steps_per_batch)
        self.stream = stream
        self.stream_block_rows = stream_block_rows
        self.stream_buffer_blocks = stream_buffer_blocks
        self._feature_files: dict[str, Path] = {}
        self.encoder_spec = encoder
        self.text_encoder_spec = text_encoder
        self.cache_dir = cache_dir
        self.encode_batch_size = encode_batch_size
        self.num_workers = num_workers
        self._datasets: dict[str, ConceptDataset] = {}
        self._encoder = None
        self._on_demand = False
        probe = self.dataset("train")
        self.concept_names = probe.concept_names
        self.num_classes = probe.num_classes
        self.class_names = probe.class_names
        self.task = probe.task
        self.kind = probe.kind
        if probe.kind == "features":
            self.feature_dim = int(probe[0]["x"].numel())
            self.encoder_spec = f"identity:{self.feature_dim}"
        else:
            self.feature_dim = self.encoder.feature_dim

    # ------------------------------------------------------------ subclass API
    def make_dataset(self, split: str) -> ConceptDataset:  # pragma: no cover - abstract
        """The raw dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    # --------------------------------------------------------------- plumbing
    def dataset(self, split: str) -> ConceptDataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._datasets:
            self._datasets[split] = self.make_dataset(split)
        return self._datasets[split]

    @property
    def encoder(self):  # noqa: ANN201 - FrozenEncoder
        if self._encoder is None:
            from bottlenecks.encoders import shared_encoder

            self._encoder = shared_encoder(self.encoder_spec)
        return self._encoder

    def _features(self, split: str) -> Tensor:
        ds = self.dataset(split)
        if ds.kind == "features":
            return torch.stack([ds[i]["x"].float().reshape(-1) for i in range(len(ds))])
        from bottlenecks.encoders.cache import FEATURES, FeatureCache, split_identity

        cache = FeatureCache(Path(self.cache_dir))
        self._feature_files[split] = cache.entry_dir(split_identity(self.encoder, ds, split)) / FEATURES  # streaming
        # Under DDP, Lightning calls setup() on every rank: each encodes a shard of the split
        # and all read one merged cache entry. A split loaded on demand (split(), perhaps on
        # rank 0 only, e.g. by a report) must not wait for the other ranks.
        return cache.encode(
            self.encoder, ds, split, batch_size=self.encode_batch_size, num_workers=self.num_workers,
            cooperative=not self._on_demand,
        )

    def split(self, name: str) -> FeatureBatches:
        """The feature tensors of one split, loaded now if ``setup`` has not (no collectives then)."""
        if name in self._splits:
            return self._splits[name]
        self._on_demand = True
        try:
            return super().split(name)
        finally:
            self._on_demand = False

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", SPLITS):
            if split in self._splits:
                continue
            ds = self.dataset(split)
            x = self._features(split)
            if x.shape[1] != self.feature_dim:
                raise ValueError(
                    f"{split} features have width {x.shape[1]} but the encoder outputs {self.feature_dim}"
                )
            y = ds.targets()
            check_labels(y, self.num_classes, f"{type(ds).__name__}({split})")
            c = ds.concept_table()
            if c is not None:
                check_concepts(c, self.concept_names, f"{type(ds).__name__}({split})")
            file = self._feature_files.get(split)
            stream = self.stream if self.stream is not None else file is not None and stream_by_default(file)
            if split == "train" and stream:
                if file is None:
                    raise ValueError(
                        f"stream=True streams features from the feature cache, but {type(ds).__name__} holds "
                        "feature vectors in memory (kind 'features'); leave stream unset"
                    )
                self._splits[split] = StreamedFeatureBatches(
                    file, y, c, batch_size=self.batch_size, shuffle=True, block_rows=self.stream_block_rows,
                    buffer_blocks=self.stream_buffer_blocks, seed=self.seed,
                )
            else:
                self._splits[split] = FeatureBatches(x, y, c)


class ArrayDataModule(FeatureDataModule):
    """Features a user already has: arrays in, batch dicts out.

    From Python, pass tensors/arrays; from YAML, pass ``path`` to an ``.npz``,
    ``.pt`` or ``.safetensors`` file holding ``x_train``, ``y_train`` and optionally
    ``concepts_train`` and the same for ``val`` / ``test``.
    When no validation split is given, ``val_fraction`` of train is held out.

    Args:
        path: file with the arrays (alternative to the ``x_train`` ... arguments).
        task: ``"classification"`` or ``"regression"``.
        num_classes: inferred from the labels when None (classification).
        concept_names: names of the concept columns (default ``c0, c1, ...``).
        val_fraction: fraction of train held out for validation when no val split is given.
        steps_per_batch: optimiser steps per Lightning training batch (see
            :class:`BottleneckDataModule`).
    """

    def __init__(
        self,
        path: str | None = None,
        task: Task = "classification",
        num_classes: int | None = None,
        concept_names: list[str] | None = None,
        class_names: list[str] | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        seed: int = 0,
        arrays: dict[str, Any] | None = None,
        steps_per_batch: int | Literal["auto"] = "auto",
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                         steps_per_batch=steps_per_batch)
        if (path is None) == (arrays is None):
            raise ValueError("ArrayDataModule needs exactly one of `path` or arrays (use from_arrays)")
        where = str(path) if path is not None else "ArrayDataModule arrays"
        data = _load_arrays(path) if path is not None else dict(arrays)  # type: ignore[arg-type]
        data = {k: v for k, v in data.items() if v is not None}
        known = [f"{p}_{s}" for p in ("x", "y", "concepts") for s in SPLITS]
        for key in data:
            if key not in known:
                raise ValueError(f"{where}: unknown key {key!r}{closest(key, known)}; expected keys {known}")
        for key in ("x_train", "y_train"):
            if key not in data:
                raise ValueError(f"{where}: missing {key!r}; got keys {sorted(data)}")
        present = [s for s in SPLITS if f"x_{s}" in data or f"y_{s}" in data or f"concepts_{s}" in data]
        for split in present:
            for prefix in ("x", "y"):
                if f"{prefix}_{split}" not in data:
                    raise ValueError(f"{where}: {split} split has no {prefix}_{split} (got keys {sorted(data)})")
        if "concepts_train" in data and any(f"concepts_{s}" not in data for s in present):
            lacking = [f"concepts_{s}" for s in present if f"concepts_{s}" not in data]
            raise ValueError(f"{where}: concepts_train is given but {lacking} are not")
        tensors: dict[str, Tensor] = {}
        width = None
        for split in present:
            x = check_feature_matrix(data[f"x_{split}"], f"{where}: x_{split}", width)
            width = int(x.shape[1])
            tensors[f"x_{split}"] = x
            if f"concepts_{split}" in data:
                tensors[f"concepts_{split}"] = _concept_matrix(data[f"concepts_{split}"], f"{where}: concepts_{split}")
            check_same_rows(where, **{f"x_{split}": x, f"y_{split}": _rows(data[f"y_{split}"])},
                            **({f"concepts_{split}": tensors[f"concepts_{split}"]} if f"concepts_{split}" in tensors else {}))
        self.task = task
        if task == "classification":
            raw = {s: as_label_list(data[f"y_{s}"], f"{where}: y_{s}") for s in present}
            order = [(s, i) for s in present for i in range(len(raw[s]))]
            codes, names, self.num_classes = encode_class_labels(
                [v for s in present for v in raw[s]], where, class_names=class_names, num_classes=num_classes,
                position=lambda k: f"y_{order[k][0]} row {order[k][1]}", column="label",
            )
            self.class_names = names if names is not None else class_names
            start = 0
            for s in present:
                tensors[f"y_{s}"] = torch.as_tensor(codes[start : start + len(raw[s])])
                start += len(raw[s])
        else:
            if num_classes is not None:
                raise ValueError(f"{where}: num_classes={num_classes} was given but task is regression")
            self.num_classes = None
            self.class_names = class_names
            for s in present:
                tensors[f"y_{s}"] = regression_targets(data[f"y_{s}"], f"{where}: y_{s}")
        _warn_shared_rows(tensors, present, where)
        if "val" not in present:
            g = torch.Generator().manual_seed(seed)
            n = len(tensors["x_train"])
            if n < 2:
                raise ValueError(f"{where}: x_train has {n} row; holding out a validation split needs at least 2")
            perm = torch.randperm(n, generator=g)
            n_val = min(n - 1, max(1, int(round(val_fraction * n))))
            for prefix in ("x", "y", "concepts"):
                if f"{prefix}_train" in tensors:
                    full = tensors[f"{prefix}_train"]
                    tensors[f"{prefix}_val"] = full[perm[:n_val]]
                    tensors[f"{prefix}_train"] = full[perm[n_val:]]
        if "x_test" not in tensors:
            for prefix in ("x", "y", "concepts"):
                if f"{prefix}_val" in tensors:
                    tensors[f"{prefix}_test"] = tensors[f"{prefix}_val"]
        self.feature_dim = int(tensors["x_train"].shape[1])
        c_train = tensors.get("concepts_train")
        if c_train is not None:
            from bottlenecks.layers.base import check_concept_names

            self.concept_names = check_concept_names(concept_names, int(c_train.shape[1]))
        else:
            if concept_names:
                raise ValueError(f"{where}: concept_names were given but the arrays have no concepts_train")
            self.concept_names = None
        for split in SPLITS:
            y = tensors[f"y_{split}"]
            c = tensors.get(f"concepts_{split}")
            if c is not None:
                check_concepts(c, self.concept_names, f"{where}: concepts_{split}")
            self._splits[split] = FeatureBatches(tensors[f"x_{split}"], y, c)

    @classmethod
    def from_arrays(
        cls,
        x_train: Any,
        y_train: Any,
        x_val: Any = None,
        y_val: Any = None,
        x_test: Any = None,
        y_test: Any = None,
        concepts_train: Any = None,
        concepts_val: Any = None,
        concepts_test: Any = None,
        **kwargs: Any,
    ) -> ArrayDataModule:
        arrays = {k: v for k, v in locals().items() if k not in ("cls", "kwargs") and v is not None}
        return cls(arrays=arrays, **kwargs)

    def setup(self, stage: str | None = None) -> None:  # everything is in memory already
        return None


def _rows(a: Any) -> Any:
    return a if hasattr(a, "__len__") else np.asarray(a)


def _concept_matrix(arr: Any, name: str) -> Tensor:
    """Concept values ``(rows, num_concepts)`` float32; NaN (unlabelled) allowed, inf and strings not."""
    a = arr.detach().cpu().numpy() if isinstance(arr, Tensor) else np.asarray(arr)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} holds {a.dtype} values but concepts must be numbers (NaN = unlabelled)")
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape} but concepts must be (rows, num_concepts)")
    t = torch.as_tensor(np.ascontiguousarray(a)).float()
    bad = torch.isinf(t)
    if bad.any():
        r, c = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(f"{name} row {r}, column {c} is inf; concepts must lie in [0, 1] (NaN = unlabelled)")
    return t


def _warn_shared_rows(tensors: dict[str, Tensor], splits: list[str], where: str) -> None:
    """Identical feature rows: different labels in one split, or rows shared across splits."""
    keys, labels, owners, rows = [], [], [], []
    for s in splits:
        x, y = tensors[f"x_{s}"], tensors[f"y_{s}"]
        if len(x) > 200_000:  # hashing every row of a huge array is not worth the time
            return
        xb = x.contiguous().numpy()
        keys.extend(xb[i].tobytes() for i in range(len(xb)))
        labels.extend(y.tolist())
        owners.extend([s] * len(x))
        rows.extend(range(len(x)))
    # identical features with different labels may be label noise: warned, not refused
    check_row_identity(keys, labels, owners, where, describe=lambda i: f"x_{owners[i]} row {rows[i]}",
                       what="feature row", conflict="warn", show_key=False)


def _load_arrays(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"ArrayDataModule: no file at {p}")
    if p.suffix == ".npz":
        with np.load(p) as f:
            return {k: f[k] for k in f.files}
    if p.suffix == ".pt":
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise ValueError(f"{p} must hold a dict of tensors, got {type(obj).__name__}")
        return obj
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    raise ValueError(f"ArrayDataModule: unsupported file type {p.suffix!r} (use .npz, .pt or .safetensors)")
