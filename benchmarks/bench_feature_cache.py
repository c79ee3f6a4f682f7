"""Cost of the feature cache: write, verified read, unverified read, and the checksum alone.

Stores an ``(rows, dim)`` float32 array (default 10k x 1280, the Lite0 features of
a 10k-image split, 51 MB) with :class:`FeatureCache`, then times reads. Reads are
from the page cache (the file was just written); a cold read adds the disk's time,
which the first epoch of training would pay anyway. Also times one epoch of a
plain PyTorch loop over the returned memory-mapped tensor against the same loop
over an in-memory copy (shuffled batches of 256 rows, a linear layer, backward).

    .venv/bin/python benchmarks/bench_feature_cache.py [--rows 10000] [--dim 1280] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import torch


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def epoch(x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for idx in torch.randperm(len(x)).split(batch):
        loss = torch.nn.functional.cross_entropy(layer(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from bottlenecks.encoders import FeatureCache

    x = torch.randn(args.rows, args.dim, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (args.rows,), generator=torch.Generator().manual_seed(1))
    mb = x.numel() * 4 / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as root:
        ident = {"encoder": "bench", "dataset": "random", "split": "train"}
        counter = iter(range(10**6))

        def write() -> None:
            FeatureCache(root).put({**ident, "n": next(counter)}, x)

        rows.append(("write (npy + fsync + meta)", best_of(write, args.repeats)))
        FeatureCache(root).get_or_compute(ident, lambda: x)
        verified = FeatureCache(root, verify_checksum=True)
        unverified = FeatureCache(root, verify_checksum=False)
        arr = x.numpy()
        timed = {
            "read, checks + sha256": lambda: verified.get_or_compute(ident, lambda: x),
            "read, checks, no sha256": lambda: unverified.get_or_compute(ident, lambda: x),
            "sha256 of the bytes alone": lambda: hashlib.sha256(arr.data).hexdigest(),
        }
        rows += [(name, best_of(fn, args.repeats)) for name, fn in timed.items()]
        mapped = verified.get_or_compute(ident, lambda: x)
        t_mem = best_of(lambda: epoch(x, y), args.repeats)
        t_map = best_of(lambda: epoch(mapped, y), args.repeats)

    print(
        f"array {args.rows} x {args.dim} float32 = {mb:.1f} MB; best of {args.repeats}; "
        f"load average {os.getloadavg()[0]:.2f}; threads {torch.get_num_threads()}"
    )
    print(f"{'operation':<30} {'ms':>8} {'MB/s':>8}")
    print("-" * 48)
    for name, t in rows:
        print(f"{name:<30} {1000 * t:>8.1f} {mb / t:>8.0f}")
    print(f"{'epoch on in-memory tensor':<30} {1000 * t_mem:>8.1f}")
    print(f"{'epoch on memory-mapped tensor':<30} {1000 * t_map:>8.1f}  ({t_map / t_mem:.2f}x)")


if __name__ == "__main__":
    main()
