"""Feature cache: hits, misses, corruption and staleness detection, atomicity, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from bottlenecks.data.base import ConceptDataset
from bottlenecks.encoders import FeatureCache, FeatureCacheWarning, build_encoder

IDENT = {
    "encoder": "lite0",
    "weights": "sha256:abc",
    "transform": "resize=64",
    "dataset": "shapes-v1",
    "split": "train",
}


class Counter:
    """compute() that counts its calls and returns a fixed (rows, 8) array."""

    def __init__(self, rows: int = 20, seed: int = 0) -> None:
        self.calls = 0
        self.value = torch.randn(rows, 8, generator=torch.Generator().manual_seed(seed))

    def __call__(self) -> Tensor:
        self.calls += 1
        return self.value.clone()


def mapped_file(address: int) -> str | None:
    """The file whose memory mapping holds ``address`` in this process (Linux /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(a, 16) for a in parts[0].split("-"))
        if start <= address < end:
            return parts[5] if len(parts) == 6 else None
    return None


def entry_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_miss_then_hit_memory_mapped(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    compute = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FeatureCacheWarning, no "non-writable array" warning
        first = cache.get_or_compute(IDENT, compute, expected_rows=20)
        second = cache.get_or_compute(dict(reversed(list(IDENT.items()))), compute, expected_rows=20)
    assert compute.calls == 1
    assert torch.equal(first, compute.value) and torch.equal(second, compute.value)
    d = cache.entry_dir(IDENT)
    assert entry_files(d) == [".lock", "features.npy", "meta.json"]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["identity"] == IDENT and meta["shape"] == [20, 8] and meta["dtype"] == "<f4"
    assert len(meta["sha256"]) == 64 and meta["created"] and meta["library_version"]
    # the tensor is backed by a mapping of the file (copy-on-write), not a private copy
    if Path("/proc/self/maps").exists():
        assert mapped_file(second.data_ptr()) == str((d / "features.npy").resolve())
    second[0, 0] = 123.0  # private to this process: the file is unchanged
    assert cache.get_or_compute(IDENT, compute)[0, 0] == compute.value[0, 0]
    assert cache.get(IDENT) is not None and compute.calls == 1


def test_identity_changes_key(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    compute = Counter()
    cache.get_or_compute(IDENT, compute)
    for change in ({"split": "val"}, {"weights": "sha256:abd"}, {"transform": "resize=96"}):
        other = {**IDENT, **change}
        assert cache.key(other) != cache.key(IDENT)
        cache.get_or_compute(other, compute)
    assert compute.calls == 4
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 4
    with pytest.raises(ValueError, match="'bad' is not JSON-serialisable"):
        cache.key({**IDENT, "bad": object()})


def _corrupt_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the array data, after the header
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 64])


def _garble_meta(path: Path) -> None:
    path.write_text(path.read_text()[:-10])


def _tamper_identity(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["identity"]["dataset"] = "shapes-v0"
    path.write_text(json.dumps(meta))


def _tamper_shape(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["shape"] = [10, 16]
    path.write_text(json.dumps(meta))


def _drop_meta(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "target, damage, reason",
    [
        ("features.npy", _corrupt_byte, "checksum mismatch"),
        ("features.npy", _truncate, "truncated"),
        ("meta.json", _garble_meta, "not valid cache metadata"),
        ("meta.json", _tamper_identity, r"stale: .*identity differs .*\['dataset'\]"),
        ("meta.json", _tamper_shape, r"holds \(20, 8\) float32 but meta.json says \(10, 16\)"),
        ("meta.json", _drop_meta, "meta.json is missing"),
    ],
)
def test_broken_entry_is_detected_moved_aside_and_rebuilt(tmp_path: Path, target, damage, reason) -> None:
    cache = FeatureCache(tmp_path)
    compute = Counter()
    cache.get_or_compute(IDENT, compute, expected_rows=20)
    d = cache.entry_dir(IDENT)
    damage(d / target)
    with pytest.warns(FeatureCacheWarning, match=reason):
        again = cache.get_or_compute(IDENT, compute, expected_rows=20)
    assert compute.calls == 2
    assert torch.equal(again, compute.value)
    aside = [n for n in entry_files(d) if ".corrupt-" in n]
    assert aside and all(n.split(".corrupt-")[0] in ("features.npy", "meta.json") for n in aside)
    assert (d / "features.npy").exists() and (d / "meta.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.get_or_compute(IDENT, compute, expected_rows=20)  # the rebuilt entry is trusted again
    assert compute.calls == 2


def test_row_count_mismatch_is_stale(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(IDENT, Counter(rows=20), expected_rows=20)
    grown = Counter(rows=25)
    with pytest.warns(FeatureCacheWarning, match="stale: it has 20 rows but 25 were expected"):
        x = cache.get_or_compute(IDENT, grown, expected_rows=25)
    assert x.shape == (25, 8) and grown.calls == 1


def test_get_warns_and_returns_none_on_corruption(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    assert cache.get(IDENT) is None
    cache.put(IDENT, np.arange(12, dtype=np.float32).reshape(3, 4))
    _corrupt_byte(cache.entry_dir(IDENT) / "features.npy")
    with pytest.warns(FeatureCacheWarning, match="checksum"):
        assert cache.get(IDENT) is None
    assert cache.get(IDENT) is None  # moved aside: now simply missing


def test_failed_compute_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)

    def boom() -> Tensor:
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        cache.get_or_compute(IDENT, boom)
    d = cache.entry_dir(IDENT)
    assert [n for n in entry_files(d) if n != ".lock"] == []
    with pytest.raises(ValueError, match="returned 20 rows but expected_rows is 21; nothing was stored"):
        cache.get_or_compute(IDENT, Counter(rows=20), expected_rows=21)
    assert [n for n in entry_files(d) if n != ".lock"] == []
    compute = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh compute, not a "corrupt entry"
        assert torch.equal(cache.get_or_compute(IDENT, compute), compute.value)


def test_interrupted_write_leaves_previous_state(tmp_path: Path, monkeypatch) -> None:
    """A crash between writing the temp file and publishing it leaves no partial entry."""
    cache = FeatureCache(tmp_path)
    real_replace = __import__("os").replace

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("bottlenecks.encoders.cache.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.get_or_compute(IDENT, Counter())
    monkeypatch.setattr("bottlenecks.encoders.cache.os.replace", real_replace)
    assert [n for n in entry_files(cache.entry_dir(IDENT)) if n != ".lock"] == []


def _writer(root: str, marker_dir: str, seed: int, out: str) -> None:
    cache = FeatureCache(root)

    def compute() -> np.ndarray:
        Path(marker_dir, f"computed-{seed}").touch()
        time.sleep(0.3)
        return np.full((50, 16), float(seed), dtype=np.float32)

    x = cache.get_or_compute(IDENT, compute, expected_rows=50)
    np.save(out, x.numpy())


def test_concurrent_writers_do_not_corrupt(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    markers = tmp_path / "markers"
    markers.mkdir()
    root = tmp_path / "cache"
    procs = [
        ctx.Process(target=_writer, args=(str(root), str(markers), seed, str(tmp_path / f"out{seed}.npy")))
        for seed in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    outs = [np.load(tmp_path / f"out{seed}.npy") for seed in range(3)]
    assert len(list(markers.iterdir())) == 1  # one process computed; the others waited and read its entry
    assert all(np.array_equal(o, outs[0]) for o in outs)
    cache = FeatureCache(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = cache.get(IDENT, expected_rows=50)
    assert stored is not None and np.array_equal(stored.numpy(), outs[0])
    assert entry_files(cache.entry_dir(IDENT)) == [".lock", "features.npy", "meta.json"]  # no temp files


def _killed_writer(root: str) -> None:
    """Writes half of the array into the temporary file, then dies as if killed (no cleanup runs)."""
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang)
    import os
    import signal

    def write_half_and_die(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY" + b"\0" * (arr.nbytes // 2))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    np.lib.format.write_array = write_half_and_die
    FeatureCache(root).get_or_compute(IDENT, Counter(rows=5000))


@pytest.mark.parametrize("then", ["read_existing", "compute_missing"])
def test_killed_write_leaves_a_temporary_that_the_next_access_removes(tmp_path: Path, then) -> None:
    root = tmp_path / "cache"
    cache = FeatureCache(root)
    if then == "read_existing":  # the entry is complete; a later rewrite (put) was killed
        cache.get_or_compute(IDENT, Counter(rows=5000))
    p = mp.get_context("fork").Process(target=_killed_writer if then == "compute_missing" else _killed_putter,
                                       args=(str(root),))
    p.start()
    p.join(60)
    assert p.exitcode == -9
    d = cache.entry_dir(IDENT)
    assert [n for n in entry_files(d) if ".tmp-" in n]  # the killed writer's leftover
    x = cache.get_or_compute(IDENT, Counter(rows=5000))
    assert torch.equal(x, Counter(rows=5000).value)
    assert entry_files(d) == [".lock", "features.npy", "meta.json"]


def _killed_putter(root: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang)
    import os
    import signal

    def write_half_and_die(f, arr, allow_pickle=False):
        f.write(b"\0" * (arr.nbytes // 2))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    np.lib.format.write_array = write_half_and_die
    FeatureCache(root).put(IDENT, Counter(rows=5000).value)


class TinyFeatures(ConceptDataset):
    kind = "features"
    num_classes = 2

    def __init__(self, n: int = 9) -> None:
        self.x = torch.randn(n, 5, generator=torch.Generator().manual_seed(3))
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"x": self.x[i], "y": torch.tensor(i % 2), "index": i}

    def targets(self) -> Tensor:
        return torch.arange(len(self)) % 2

    def fingerprint(self) -> str:
        return "tiny-features-v1"


def test_encode_through_cache_once(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    ds = TinyFeatures()
    enc = build_encoder("identity:5")
    first = cache.encode(enc, ds, "train", batch_size=4, progress=False)
    reads = ds.reads
    second = cache.encode(enc, ds, "train", batch_size=4, progress=False)
    assert reads == 9 and ds.reads == 9  # the second call did not touch the dataset
    assert torch.equal(first, ds.x) and torch.equal(second, ds.x)
    ident = {**enc.cache_identity(), "dataset": "tiny-features-v1", "split": "train"}
    meta = json.loads((cache.entry_dir(ident) / "meta.json").read_text())
    assert meta["identity"]["encoder"] == "identity" and meta["identity"]["split"] == "train"


# --------------------------------------------------------------------------- several processes
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_encode_shards_and_share_one_merged_entry(tmp_path: Path) -> None:
    """Two gloo ranks: each encodes about half of each split, both end with the same features,
    equal to a one-process encode, stored as one normal entry; a split that rank 0 alone loads
    later does not wait for rank 1."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _ddp_cache_worker import SIZES, CountingData, run

    # forked (the children reuse this process's imports), joined with a timeout: a hang fails
    assert _fork_ranks(run, tmp_path) == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    single = CountingData(str(tmp_path / "single-process-cache"))
    single.setup("fit")
    for split in ("train", "val"):
        assert torch.equal(r0[split], r1[split])
        torch.testing.assert_close(r0[split], single.split(split).x, rtol=0, atol=1e-6)
        n = SIZES[split]
        assert r0["reads"][split] + r1["reads"][split] == n  # every row encoded once in all
        assert abs(r0["reads"][split] - n / 2) <= 1 and abs(r1["reads"][split] - n / 2) <= 1
        assert single.dataset(split).reads == n
    torch.testing.assert_close(r0["test"], single.split("test").x, rtol=0, atol=1e-6)
    cache = FeatureCache(tmp_path / "cache")
    for split in ("train", "val", "test"):
        ds = single.dataset(split)
        d = cache.entry_dir({**single.encoder.cache_identity(), "dataset": ds.fingerprint(), "split": split})
        assert entry_files(d) == [".lock", "features.npy", "meta.json"]  # shards merged and removed


def _fork_ranks(target, out: Path, world: int = 2, timeout: float = 90) -> list[int]:
    """Run ``target(rank, world, out, port)`` in ``world`` forked processes; fail if they hang."""
    ctx, port = mp.get_context("fork"), _free_port()
    procs = [ctx.Process(target=target, args=(r, world, str(out), port)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"the ranks did not finish within {timeout} s (a collective waits for a rank that never comes)"
    return [p.exitcode for p in procs]


def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _ddp_cache_worker import run_failing

    assert _fork_ranks(run_failing, tmp_path) == [0, 0]
    assert (tmp_path / "error1.txt").read_text() == "ValueError: rank 1 cannot read its images"
    assert "rank(s) [1] failed" in (tmp_path / "error0.txt").read_text()
    d = FeatureCache(tmp_path / "cache").entry_dir({"what": "failing"})
    assert entry_files(d) == [".lock"]  # no entry, and rank 0's shard removed before the lock was released


def test_distributed_helpers_in_one_and_in_two_processes(tmp_path: Path) -> None:
    import sys

    from bottlenecks import distributed

    t = torch.arange(6.0).reshape(3, 2)
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.all_gather_cat(t) is t and distributed.broadcast_(t) is t and distributed.all_reduce_sum_(t) is t
    distributed.barrier()
    assert torch.equal(t, torch.arange(6.0).reshape(3, 2))

    sys.path.insert(0, str(Path(__file__).parent))
    from _ddp_cache_worker import run_collectives

    assert _fork_ranks(run_collectives, tmp_path) == [0, 0]
    for r in range(2):
        got = torch.load(tmp_path / f"coll{r}.pt", weights_only=True)
        assert got["is"] and got["rank"] == r and got["world"] == 2
        assert torch.equal(got["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert got["summed"].item() == 3.0 and got["sent"].item() == 20.0


def test_shard_bounds_cover_rows_in_order() -> None:
    from bottlenecks.encoders.cache import shard_bounds

    for rows in (0, 1, 5, 37):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(rows, r, world) for r in range(world)]
            assert [b[0] for b in bounds[1:]] == [b[1] for b in bounds[:-1]]
            assert bounds[0][0] == 0 and bounds[-1][1] == rows
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_parts_are_streamed_into_one_verified_entry(tmp_path: Path) -> None:
    """The merge path of a cooperative write: parts in, one entry whose checksum verifies."""
    cache = FeatureCache(tmp_path)
    full = torch.randn(23, 5, generator=torch.Generator().manual_seed(4)).numpy()
    d = cache.entry_dir(IDENT)
    d.mkdir(parents=True)
    from bottlenecks.encoders.cache import canonical_identity

    cache._write(d, canonical_identity(IDENT), [full[:12], full[12:12], full[12:]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = FeatureCache(tmp_path, verify_checksum=True).get(IDENT, expected_rows=23)
    assert back is not None and np.array_equal(back.numpy(), full)
    with pytest.raises(ValueError, match="must agree beyond dim 0"):
        cache._write(d, canonical_identity(IDENT), [full[:3], full[3:, :4]])
