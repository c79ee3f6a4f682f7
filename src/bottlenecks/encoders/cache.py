"""On-disk cache of encoder outputs, keyed by everything that determines them.

Layout: ``<root>/<key>/features.npy`` (the array) and ``<root>/<key>/meta.json``
(identity, shape, dtype, sha256 of the array bytes, creation time, library
version), where ``key`` is a hash of the identity dict the caller gives — normally
``{**encoder.cache_identity(), "dataset": dataset.fingerprint(), "split": split}``.

Guarantees:

* **Atomic writes.** Each file is written to a temporary name in the entry's folder,
  fsync'ed, and moved into place with ``os.replace``; ``features.npy`` goes first,
  ``meta.json`` (which carries the checksum) last, so an entry is complete exactly
  when its meta matches its array. Writers of one key take an exclusive lock file
  (``fcntl.flock`` where available): a second process waits for the first and then
  reads its result instead of computing again.
* **Verified reads.** On every read: meta present and parseable, identity equal to
  the requested one, array header matching meta's shape/dtype, file size equal to
  header + data, optional row count, and the sha256 of the array bytes (about 25 ms
  for 10k x 1280 float32 on one core; see ``benchmarks/bench_feature_cache.py``).
* **No leftovers.** A writer killed mid-write leaves ``.features.npy.tmp-*`` behind; the next
  access to the entry removes such files once it holds the entry's lock (no live writer
  can own them then).
* **Never trusted, never silently deleted.** A corrupt, truncated or stale entry
  raises a :class:`FeatureCacheWarning` naming the reason; its files are renamed
  ``*.corrupt-<timestamp>`` and the features are computed again.
* **Several processes, one entry.** Under ``torch.distributed`` with several ranks (Lightning
  DDP), :meth:`FeatureCache.encode` / :meth:`FeatureCache.get_or_compute_rows` are collectives:
  rank 0 takes the entry's lock, every rank computes one contiguous shard of the rows and
  writes it atomically as ``.shard-<rank>-of-<world>.npy`` in the entry's folder, rank 0
  streams the shards into the normal entry (same atomic write and checksum; no concatenated
  copy in memory), deletes them and releases the lock, and every rank then reads the merged
  entry with the usual verification. An error on any rank is raised on every rank (no rank is
  left waiting). Shards left by a killed job are stale files like the temporaries above. The
  cache folder must be on a filesystem all ranks share (a clear error says so otherwise).
* **Memory-mapped results.** The returned tensor shares memory with a copy-on-write
  mapping of the file (``np.load(mmap_mode="c")``): no copy is made, pages are read
  on demand, and in-place writes to the tensor stay private to the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FEATURES = "features.npy"
META = "meta.json"
LOCK = ".lock"
#: file-name prefix of the per-rank partial arrays of a cooperative write (see get_or_compute_rows)
SHARD_PREFIX = ".shard-"
CACHE_FORMAT = 1


class FeatureCacheWarning(UserWarning):
    """A cache entry was found corrupt or stale and is being rebuilt."""


class _Broken(Exception):
    """Internal: why an entry cannot be trusted."""


def default_cache_root() -> Path:
    """``$BOTTLENECKS_CACHE/features`` if set, else ``~/.cache/bottlenecks/features``."""
    base = os.environ.get("BOTTLENECKS_CACHE")
    return Path(base).expanduser() / "features" if base else Path.home() / ".cache" / "bottlenecks" / "features"


def canonical_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity as it is stored: JSON types only, keys sorted (tuples become lists)."""
    if not isinstance(identity, Mapping) or not identity:
        raise ValueError(f"a feature-cache identity must be a non-empty dict, got {identity!r}")
    bad_keys = [k for k in identity if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"feature-cache identity keys must be strings, got {bad_keys}")
    for k, v in identity.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"feature-cache identity entry {k!r} is not JSON-serialisable ({type(v).__name__}): {e}"
            ) from e
    return json.loads(json.dumps(dict(identity), sort_keys=True))


def identity_key(identity: Mapping[str, Any], n: int = 32) -> str:
    """The folder name of an identity: the first ``n`` hex digits of sha256 of its canonical JSON."""
    blob = json.dumps(canonical_identity(identity), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def _stream_bytes(arr: np.ndarray, sinks: list[Callable[[memoryview], Any]]) -> None:
    """Feed the C-order bytes of ``arr`` to each sink in 16 MiB slices (a memory map is read page by page)."""
    flat = arr.reshape(-1) if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(-1)
    step = max(1, (1 << 24) // max(1, flat.itemsize))
    for i in range(0, flat.size, step):
        view = memoryview(flat[i : i + step]).cast("B")
        for sink in sinks:
            sink(view)


def _array_sha256(arr: np.ndarray) -> str:
    """sha256 of the C-order bytes of an array (reads a memory map page by page, no copy)."""
    h = hashlib.sha256()
    _stream_bytes(arr, [h.update])
    return h.hexdigest()


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("bottlenecks")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (blocking). Without fcntl, only the atomic renames protect."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _stale_files(d: Path) -> list[Path]:
    """Temporaries and shards of writers that are not running now (call with the entry's lock held)."""
    return (
        list(d.glob(f".{FEATURES}.tmp-*")) + list(d.glob(f".{META}.tmp-*")) + list(d.glob(f"{SHARD_PREFIX}*"))
    )


def _delete(paths: list[Path]) -> int:
    removed = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed


def _remove_stale_temporaries(d: Path, blocking: bool) -> int:
    """Delete the temporary files of writers that died mid-write (``.features.npy.tmp-*``, shards).

    Temporaries exist only while a writer holds the entry's lock, so with the lock held every
    one left is stale. ``blocking=False``: skip when another process holds the lock now.
    Returns the number of files removed.
    """
    if not _stale_files(d):
        return 0
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock to prove the writer is gone
        return 0
    with open(d / LOCK, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return 0
        try:
            return _delete(_stale_files(d))
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``rows`` rows are split into ``world_size`` contiguous shards.

    Shard sizes differ by at most one row; concatenating the shards in rank order gives rows ``0..rows-1``.
    """
    base, extra = divmod(rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _to_numpy(features: Any) -> np.ndarray:
    if isinstance(features, Tensor):
        return features.detach().cpu().contiguous().numpy()
    if isinstance(features, np.ndarray):
        return np.ascontiguousarray(features)
    raise TypeError(f"compute() must return a torch.Tensor or numpy array, got {type(features).__name__}")


def _all_ranks(flag: bool) -> bool:
    """True when ``flag`` is True on every rank (a collective)."""
    from bottlenecks import distributed

    t = torch.tensor([0 if flag else 1], dtype=torch.long)
    return int(distributed.all_reduce_sum_(t)) == 0


def _from_rank0(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a collective)."""
    from bottlenecks import distributed

    return bool(distributed.broadcast_(torch.tensor([int(flag)], dtype=torch.long), src=0))


def _raise_if_failed(err: BaseException | None, what: str) -> None:
    """A collective: every rank raises when any rank failed (its own error, or one naming the failed ranks)."""
    from bottlenecks import distributed

    flags = torch.zeros(distributed.world_size(), dtype=torch.long)
    flags[distributed.rank()] = int(err is not None)
    distributed.all_reduce_sum_(flags)
    if err is not None:
        raise err
    failed = [k for k, f in enumerate(flags.tolist()) if f]
    if failed:
        raise RuntimeError(f"feature cache: rank(s) {failed} failed while {what}; see their error above")


class FeatureCache:
    """Encoder outputs on disk, one folder per identity; see the module docstring.

    Args:
        root: cache folder (created on first write). ``None``: :func:`default_cache_root`.
        verify_checksum: hash the array bytes on every read (cheap next to encoding;
            set False only for very large entries on slow disks).

    Example::

        cache = FeatureCache(".cache/features")
        ident = {**encoder.cache_identity(), "dataset": ds.fingerprint(), "split": "train"}
        x = cache.get_or_compute(ident, lambda: encoder.encode_dataset(ds), expected_rows=len(ds))
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, verify_checksum: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.verify_checksum = bool(verify_checksum)

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r})"

    # ---------------------------------------------------------------- paths
    def key(self, identity: Mapping[str, Any]) -> str:
        """Folder name of ``identity`` (hash of its canonical JSON)."""
        return identity_key(identity)

    def entry_dir(self, identity: Mapping[str, Any]) -> Path:
        """``<root>/<key>``: where the entry of ``identity`` lives."""
        return self.root / self.key(identity)

    # ---------------------------------------------------------------- public API
    def get_or_compute(
        self,
        identity: Mapping[str, Any],
        compute: Callable[[], Tensor | np.ndarray],
        *,
        expected_rows: int | None = None,
    ) -> Tensor:
        """The cached array of ``identity``, computing and storing it first if needed.

        Args:
            identity: JSON-serialisable dict of everything that determines the array
                (encoder identity, dataset fingerprint, split).
            compute: called without arguments when the entry is missing or broken;
                returns the array, e.g. ``(n, feature_dim)`` float32.
            expected_rows: if given, an entry (stored or freshly computed) must have
                this many rows; a stored entry with another count is stale and rebuilt.

        Returns:
            A CPU tensor memory-mapped from ``features.npy`` (copy-on-write).

        Warns:
            FeatureCacheWarning: when a stored entry is corrupt or stale (it is moved
            aside to ``*.corrupt-<timestamp>`` and rebuilt).
        """
        ident = canonical_identity(identity)
        d = self.root / identity_key(ident)
        try:  # fast path, no lock: a complete entry is never modified in place
            out = self._read(d, ident, expected_rows)
            _remove_stale_temporaries(d, blocking=False)
            return out
        except (_Broken, FileNotFoundError):
            pass
        d.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(d, blocking=False)
        with _exclusive_lock(d / LOCK):
            try:  # another process may have written it while we waited
                return self._read(d, ident, expected_rows)
            except FileNotFoundError:
                pass
            except _Broken as e:
                stamp = self._move_aside(d)
                warnings.warn(
                    f"feature cache entry {d} is {e}; moved its files aside to *.corrupt-{stamp} "
                    "and computing the features again",
                    FeatureCacheWarning,
                    stacklevel=2,
                )
            arr = _to_numpy(compute())
            if arr.ndim == 0:
                raise ValueError("compute() returned a scalar; the feature cache stores arrays (n, ...)")
            if expected_rows is not None and arr.shape[0] != expected_rows:
                raise ValueError(
                    f"compute() returned {arr.shape[0]} rows but expected_rows is {expected_rows}; nothing was stored"
                )
            self._write(d, ident, arr)
            del arr
            return self._read(d, ident, expected_rows, verify_checksum=False)

    def get(self, identity: Mapping[str, Any], *, expected_rows: int | None = None) -> Tensor | None:
        """The cached array of ``identity`` or None when there is none.

        A broken entry warns (:class:`FeatureCacheWarning`), is moved aside, and gives None.
        """
        ident = canonical_identity(identity)
        d = self.root / identity_key(ident)
        try:
            return self._read(d, ident, expected_rows)
        except FileNotFoundError:
            return None
        except _Broken:
            pass
        with _exclusive_lock(d / LOCK):
            try:
                return self._read(d, ident, expected_rows)
            except FileNotFoundError:
                return None
            except _Broken as e:
                stamp = self._move_aside(d)
                warnings.warn(
                    f"feature cache entry {d} is {e}; moved its files aside to *.corrupt-{stamp}",
                    FeatureCacheWarning,
                    stacklevel=2,
                )
                return None

    def put(self, identity: Mapping[str, Any], features: Tensor | np.ndarray) -> Tensor:
        """Store ``features`` under ``identity`` (replacing any entry) and return the mapped copy."""
        ident = canonical_identity(identity)
        arr = _to_numpy(features)
        d = self.root / identity_key(ident)
        d.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(d / LOCK):
            self._write(d, ident, arr)
            return self._read(d, ident, None, verify_checksum=False)

    def get_or_compute_rows(
        self,
        identity: Mapping[str, Any],
        compute_rows: Callable[[int, int], Tensor | np.ndarray],
        rows: int,
        *,
        cooperative: bool = True,
    ) -> Tensor:
        """Like :meth:`get_or_compute` for an array of ``rows`` rows that can be computed in row ranges.

        ``compute_rows(start, stop)`` returns rows ``start..stop-1``.

        In one process this is ``get_or_compute(identity, lambda: compute_rows(0, rows),
        expected_rows=rows)``. When ``torch.distributed`` runs several ranks (Lightning DDP,
        torchrun) and ``cooperative`` is True, it is a collective that **every rank must
        call**: each rank computes one contiguous shard (:func:`shard_bounds`) and writes it
        next to the entry; rank 0, which holds the entry's lock from before the shards are
        written until the entry is complete, streams them into the one normal entry (atomic
        write, checksum); then every rank reads that entry (verified, memory-mapped). A
        complete entry is read without computing anything. The cache folder must be on a
        filesystem all ranks share. ``cooperative=False`` is the one-process behaviour on
        every rank (one computes under the lock, the others wait and read its entry): use it
        when not every rank makes the call.
        """
        from bottlenecks import distributed

        if rows < 0:
            raise ValueError(f"rows must be a non-negative number, got {rows}")
        if not (cooperative and distributed.is_distributed()):
            return self.get_or_compute(identity, lambda: compute_rows(0, rows), expected_rows=rows)
        return self._cooperative(identity, compute_rows, rows)

    def encode(
        self,
        encoder: Any,
        dataset: Any,
        split: str,
        *,
        batch_size: int = 64,
        num_workers: int | str = 0,
        progress: bool = True,
        cooperative: bool = True,
    ) -> Tensor:
        """Features of a whole dataset split through ``encoder``, computed once and cached.

        The key is ``{**encoder.cache_identity(), "dataset": dataset.fingerprint(), "split": split}``.
        Under several ``torch.distributed`` ranks each rank encodes a shard of the split and
        all read one merged entry (see :meth:`get_or_compute_rows`; ``cooperative=False``
        turns that off).

        Returns:
            ``(len(dataset), encoder.feature_dim)`` float32, memory-mapped.
        """
        identity = {**encoder.cache_identity(), "dataset": str(dataset.fingerprint()), "split": split}
        n = len(dataset)

        def compute_rows(start: int, stop: int) -> Tensor:
            return encoder.encode_dataset(
                dataset,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
                desc=f"encoding {split}" if (start, stop) == (0, n) else f"encoding {split}[{start}:{stop}]",
                indices=None if (start, stop) == (0, n) else range(start, stop),
            )

        return self.get_or_compute_rows(identity, compute_rows, n, cooperative=cooperative)

    def _cooperative(
        self, identity: Mapping[str, Any], compute_rows: Callable[[int, int], Tensor | np.ndarray], rows: int
    ) -> Tensor:
        """The several-ranks branch of :meth:`get_or_compute_rows` (every rank calls it)."""
        from bottlenecks import distributed

        ident = canonical_identity(identity)
        d = self.root / identity_key(ident)
        r, w = distributed.rank(), distributed.world_size()
        try:
            out: Tensor | None = self._read(d, ident, rows)
        except (_Broken, FileNotFoundError):
            out = None
        if _all_ranks(out is not None):
            return out  # type: ignore[return-value]
        with contextlib.ExitStack() as held:
            present, err = False, None
            if r == 0:  # rank 0 holds the entry's lock until the merged entry is in place
                try:
                    d.mkdir(parents=True, exist_ok=True)
                    held.enter_context(_exclusive_lock(d / LOCK))
                    _delete(_stale_files(d))
                    # whatever happens, no shard outlives the lock (runs before it is released)
                    held.callback(lambda: _delete(list(d.glob(f"{SHARD_PREFIX}*"))))
                    present = self._read_or_move_aside(d, ident, rows)
                except Exception as e:  # noqa: BLE001 - re-raised below on this rank, reported on the others
                    err = e
            _raise_if_failed(err, "preparing the entry")
            if _from_rank0(present):  # another job wrote it while rank 0 waited for the lock
                held.close()
                return self._read(d, ident, rows)
            start, stop = shard_bounds(rows, r, w)
            shard = d / f"{SHARD_PREFIX}{r:05d}-of-{w:05d}.npy"
            try:
                arr = _to_numpy(compute_rows(start, stop))
                if arr.ndim == 0 or arr.shape[0] != stop - start:
                    got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
                    raise ValueError(f"compute_rows({start}, {stop}) returned {got} but {stop - start} rows were asked")
                tmp = d / f"{shard.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, shard)
                del arr
            except Exception as e:  # noqa: BLE001
                err = e
            _raise_if_failed(err, f"computing its shard of {d}")
            if r == 0:
                try:
                    paths = [d / f"{SHARD_PREFIX}{k:05d}-of-{w:05d}.npy" for k in range(w)]
                    missing = [str(p) for p in paths if not p.is_file()]
                    if missing:
                        raise FileNotFoundError(
                            f"rank 0 cannot see the shards {missing} that the other ranks wrote; the feature "
                            f"cache folder {self.root} must be on a filesystem every rank shares"
                        )
                    self._write(d, ident, [np.load(p, mmap_mode="r") for p in paths])
                    _delete(paths)
                except Exception as e:  # noqa: BLE001
                    err = e
            _raise_if_failed(err, f"merging the shards of {d}")
        return self._read(d, ident, rows)

    def _read_or_move_aside(self, d: Path, ident: dict[str, Any], rows: int | None) -> bool:
        """With the lock held: True if the entry is complete; a broken one is moved aside with a warning."""
        try:
            self._read(d, ident, rows)
            return True
        except FileNotFoundError:
            return False
        except _Broken as e:
            stamp = self._move_aside(d)
            warnings.warn(
                f"feature cache entry {d} is {e}; moved its files aside to *.corrupt-{stamp} "
                "and computing the features again",
                FeatureCacheWarning,
                stacklevel=3,
            )
            return False

    # ---------------------------------------------------------------- internals
    def _read(
        self,
        d: Path,
        ident: dict[str, Any],
        expected_rows: int | None,
        verify_checksum: bool | None = None,
    ) -> Tensor:
        """Verified, memory-mapped read. FileNotFoundError: no entry; _Broken: an entry that is wrong."""
        fpath, mpath = d / FEATURES, d / META
        has_f, has_m = fpath.is_file(), mpath.is_file()
        if not has_f and not has_m:
            raise FileNotFoundError(d)
        if not has_m:
            raise _Broken(f"incomplete: {META} is missing")
        if not has_f:
            raise _Broken(f"incomplete: {FEATURES} is missing")
        try:
            meta = json.loads(mpath.read_text())
            shape = tuple(int(s) for s in meta["shape"])
            dtype = np.dtype(meta["dtype"])
            checksum = str(meta["sha256"])
            stored_ident = meta["identity"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _Broken(f"unreadable: {META} is not valid cache metadata ({type(e).__name__}: {e})") from e
        if stored_ident != ident:
            diff = sorted(
                k for k in set(ident) | set(stored_ident if isinstance(stored_ident, dict) else {})
                if not isinstance(stored_ident, dict) or stored_ident.get(k) != ident.get(k)
            )
            raise _Broken(f"stale: its stored identity differs from the requested one in {diff}")
        try:
            with open(fpath, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                offset = f.tell()
        except (OSError, ValueError) as e:
            raise _Broken(f"corrupt: the header of {FEATURES} is unreadable ({e})") from e
        if tuple(hshape) != shape or np.dtype(hdtype) != dtype or fortran:
            raise _Broken(
                f"corrupt: {FEATURES} holds {tuple(hshape)} {np.dtype(hdtype)} but {META} says {shape} {dtype}"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        size = fpath.stat().st_size
        if size != offset + nbytes:
            what = "truncated" if size < offset + nbytes else "corrupt"
            raise _Broken(f"{what}: {FEATURES} has {size} bytes but its header and data need {offset + nbytes}")
        if expected_rows is not None and (not shape or shape[0] != expected_rows):
            rows = shape[0] if shape else 0
            raise _Broken(f"stale: it has {rows} rows but {expected_rows} were expected")
        if nbytes == 0:
            arr = np.empty(shape, dtype=dtype)
        else:
            arr = np.memmap(fpath, dtype=dtype, mode="c", offset=offset, shape=shape, order="C")
        if verify_checksum if verify_checksum is not None else self.verify_checksum:
            actual = _array_sha256(arr)
            if actual != checksum:
                raise _Broken(
                    f"corrupt: checksum mismatch (sha256 {actual[:12]}... but {META} says {checksum[:12]}...)"
                )
        return torch.from_numpy(arr)

    def _write(self, d: Path, ident: dict[str, Any], arr: np.ndarray | list[np.ndarray]) -> None:
        """Write ``features.npy`` then ``meta.json``, each via temp file + fsync + os.replace.

        ``arr`` may be a list of parts that agree beyond dim 0 (the shards of a cooperative
        write): they are streamed into one file, in order, without concatenating them in memory.
        """
        parts = arr if isinstance(arr, list) else [arr]
        first = parts[0]
        for i, part in enumerate(parts):
            if part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
                raise ValueError(
                    f"feature-cache part {i} holds {part.shape} {part.dtype} but part 0 holds "
                    f"{first.shape} {first.dtype}; the parts of one entry must agree beyond dim 0"
                )
        shape = (sum(int(part.shape[0]) for part in parts), *first.shape[1:])
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_f = d / f".{FEATURES}.tmp-{token}"
        tmp_m = d / f".{META}.tmp-{token}"
        try:
            digest = hashlib.sha256()
            with open(tmp_f, "wb") as f:
                if len(parts) == 1:
                    np.lib.format.write_array(f, first, allow_pickle=False)
                else:
                    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
                              "shape": shape}
                    np.lib.format.write_array_header_1_0(f, header)
                    for part in parts:
                        _stream_bytes(part, [f.write, digest.update])
                f.flush()
                os.fsync(f.fileno())
            meta = {
                "format": CACHE_FORMAT,
                "key": d.name,
                "identity": ident,
                "shape": list(shape),
                "dtype": first.dtype.str,
                "sha256": _array_sha256(first) if len(parts) == 1 else digest.hexdigest(),
                "nbytes": int(math.prod(shape) * first.dtype.itemsize),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "library_version": _library_version(),
            }
            with open(tmp_m, "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_f, d / FEATURES)
            os.replace(tmp_m, d / META)
            _fsync_dir(d)
        finally:
            for p in (tmp_f, tmp_m):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    @staticmethod
    def _move_aside(d: Path) -> str:
        """Rename the entry's files to ``*.corrupt-<timestamp>``; return the timestamp."""
        stamp = time.strftime("%Y%m%dT%H%M%S") + f".{time.time_ns() % 1_000_000_000:09d}"
        for name in (FEATURES, META):
            p = d / name
            if p.exists():
                os.replace(p, d / f"{name}.corrupt-{stamp}")
        return stamp
