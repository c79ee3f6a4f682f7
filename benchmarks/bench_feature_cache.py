"""Cost of the feature cache: write, verified read, unverified read, and the checksum alone.

Stores an ``(rows, dim)`` float32 array (default 10k x 1280, the Lite0 features of
a 10k-image split, 51 MB) with :class:`FeatureCache`, then times reads. Reads are
from the page cache (the file was just written); a cold read adds the disk's time,
which the first epoch of training would pay anyway. Also times one epoch of a
plain PyTorch loop over the returned memory-mapped tensor against the same loop
over an in-memory copy (shuffled batches of 256 rows, a linear layer, backward), and
filling one entry cooperatively from 2 gloo ranks (each encodes half, rank 0 merges)
against one process (lite0, 1 thread per process). Medians; the load average is in
every row's note.

    .venv/bin/python benchmarks/bench_feature_cache.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def epoch(x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for idx in torch.randperm(len(x)).split(batch):
        loss = torch.nn.functional.cross_entropy(layer(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def median_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def cache_rows(n_rows: int, dim: int, repeats: int) -> list[dict]:
    """Write, verified and unverified reads, and one epoch over the mapped tensor vs an in-memory one."""
    from bottlenecks.encoders import FeatureCache, torch_threads

    x = torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (n_rows,), generator=torch.Generator().manual_seed(1))
    mb = x.numel() * 4 / 1e6
    size = f"{n_rows} x {dim} float32 ({mb:.0f} MB)"
    out = []
    with tempfile.TemporaryDirectory() as root:
        ident = {"encoder": "bench", "dataset": "random", "split": "train"}
        counter = iter(range(10**6))
        arr = x.numpy()
        t_write = median_of(lambda: FeatureCache(root).put({**ident, "n": next(counter)}, x), repeats)
        t_sha = median_of(lambda: hashlib.sha256(arr.data).hexdigest(), repeats)
        FeatureCache(root).get_or_compute(ident, lambda: x)
        verified = FeatureCache(root, verify_checksum=True)
        unverified = FeatureCache(root, verify_checksum=False)
        t_ver = median_of(lambda: verified.get_or_compute(ident, lambda: x), repeats)
        t_unv = median_of(lambda: unverified.get_or_compute(ident, lambda: x), repeats)
        mapped = verified.get_or_compute(ident, lambda: x)
        t_mem, t_map = [], []
        with torch_threads(1):  # 2 threads on a shared 2-core machine measure the load, not the cache
            epoch(mapped, y)  # warm-up: first touch of the mapped pages, allocator
            epoch(x, y)
            for _ in range(repeats):  # interleaved
                t_map.append(median_of(lambda: epoch(mapped, y), 1))
                t_mem.append(median_of(lambda: epoch(x, y), 1))
        t_mem_s, t_map_s = statistics.median(t_mem), statistics.median(t_map)
    machine = load()
    out.append({"operation": "feature cache write (npy + fsync + meta + sha256)", "size": size,
                "ours": "FeatureCache.put", "ours_s": t_write, "reference": "sha256 of the bytes alone",
                "reference_s": t_sha, "peak_mb": None, "note": f"{mb / t_write:.0f} MB/s; load {machine}"})
    out.append({"operation": "feature cache read, verified (checks + sha256)", "size": size,
                "ours": "get_or_compute, verify_checksum=True", "ours_s": t_ver,
                "reference": "sha256 of the bytes alone", "reference_s": t_sha, "peak_mb": None,
                "note": f"{mb / t_ver:.0f} MB/s; load {machine}"})
    out.append({"operation": "feature cache read, unverified (checks, no sha256)", "size": size,
                "ours": "get_or_compute, verify_checksum=False", "ours_s": t_unv,
                "reference": "sha256 of the bytes alone", "reference_s": t_sha, "peak_mb": None,
                "note": f"load {machine}"})
    out.append({"operation": "one epoch over cached features (linear layer, batch 256, 1 thread)", "size": size,
                "ours": "memory-mapped tensor from the cache", "ours_s": t_map_s,
                "reference": "the same loop over an in-memory tensor", "reference_s": t_mem_s, "peak_mb": None,
                "note": f"load {machine}"})
    return out


def _rank(rank: int, world: int, port: int, root: str, n: int, size: int, out: str) -> None:
    import torch.distributed as dist

    from bottlenecks.encoders import FeatureCache

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        enc, ds = _encoder_and_data(n, size)
        dist.barrier()
        t0 = time.perf_counter()
        FeatureCache(root).encode(enc, ds, "train", batch_size=16, progress=False)
        dist.barrier()
        if rank == 0:
            Path(out).write_text(str(time.perf_counter() - t0))
    finally:
        dist.destroy_process_group()


def _encoder_and_data(n: int, size: int):
    from bottlenecks.encoders import build_encoder

    enc = build_encoder({"name": "lite0", "image_size": size, "num_threads": 1})
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict:
            return {"x": images[i], "y": 0}

        def fingerprint(self) -> str:
            return f"bench-random-{n}-{size}"

    return enc, Images()


def cooperative_rows(n: int, size: int, repeats: int) -> list[dict]:
    """Filling one cache entry with 2 gloo ranks (1 thread each) against one process with 1 thread."""
    import multiprocessing as mp
    import socket

    ts_coop, ts_one = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            out = Path(root) / "seconds"
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=_rank, args=(r, 2, port, str(Path(root) / "coop"), n, size, str(out)))
                     for r in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(600)
            if any(p.exitcode != 0 for p in procs):
                raise RuntimeError("a rank of the cooperative encode failed")
            ts_coop.append(float(out.read_text()))
            from bottlenecks.encoders import FeatureCache, torch_threads

            enc, ds = _encoder_and_data(n, size)
            with torch_threads(1):
                t0 = time.perf_counter()
                FeatureCache(Path(root) / "one").encode(enc, ds, "train", batch_size=16, progress=False)
                ts_one.append(time.perf_counter() - t0)
    coop, one = statistics.median(ts_coop), statistics.median(ts_one)
    return [{
        "operation": f"fill a cache entry: lite0 {size} px, 2 ranks",
        "size": f"{n} images, {os.cpu_count()} cores",
        "ours": "FeatureCache.encode under 2 gloo ranks x 1 thread (shards, merge)",
        "ours_s": coop,
        "reference": "one process, 1 thread",
        "reference_s": one,
        "peak_mb": None,
        "note": f"{n / coop:.0f} vs {n / one:.0f} img/s; load {load()}",
    }]


def rows(quick: bool = False, repeats: int | None = None) -> list[dict]:
    """Benchmark rows (see benchmarks/run_all.py); ``quick``: a 2000 x 256 array, no cooperative row."""
    r = repeats or (2 if quick else 5)
    out = cache_rows(2000, 256, r) if quick else cache_rows(10_000, 1280, r)
    if not quick:
        out += cooperative_rows(64, 96, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load before: {load()}")
    print("| operation | size | ours | s | reference | s | ratio | note |\n|---|---|---|---|---|---|---|---|")
    for row in rows(args.quick, args.repeats):
        ref = row["reference_s"]
        ratio = f"{row['ours_s'] / ref:.2f}" if ref else "-"
        print(f"| {row['operation']} | {row['size']} | {row['ours']} | {row['ours_s']:.4f} | {row['reference']} | "
              f"{ref:.4f} | {ratio} | {row['note']} |")


if __name__ == "__main__":
    main()
