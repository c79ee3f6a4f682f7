"""Encoding throughput of the frozen encoders on this CPU (images per second).

For each encoder input resolution and CPU thread count, encodes batches of random
images ``(batch, 3, 64, 64)`` with :meth:`FrozenEncoder.encode` (resize + normalise +
forward under inference mode) and reports the best of ``--repeats`` timed batches
after one warm-up batch, in three settings: plain (contiguous memory, whole batch per
forward), channels-last memory format, and the default (channels-last and, on CPU,
chunks of at most ``cpu_chunk_pixels`` input pixels per forward).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_encoders.py [--quick]
        [--encoder lite0] [--sizes 64 96 128 224] [--threads 1 2] [--batch 64]

Other processes on the machine slow the numbers down; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def time_encode(encoder, images: torch.Tensor, repeats: int) -> float:
    """Best seconds per ``encoder.encode(images)`` over ``repeats`` runs after a warm-up."""
    encoder.encode(images)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(images)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 224])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one size, one thread count, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.threads, args.repeats = [64], [1], 1

    from bottlenecks.encoders import build_encoder

    images = torch.rand(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    print(f"encoder={args.encoder} batch={args.batch} input images 64x64 resized to the encoder size")
    print(f"torch {torch.__version__}, load average before: {os.getloadavg()[0]:.2f}")
    variants = [("plain", False, None), ("channels_last", True, None), ("default", True, "default")]
    header = f"{'size':>5} {'threads':>7} " + " ".join(f"{v[0] + ' img/s':>20}" for v in variants)
    header += f" {'default ms/batch':>17}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for threads in args.threads:
            enc = build_encoder({"name": args.encoder, "image_size": size, "num_threads": threads})
            default_chunk = enc.cpu_chunk_pixels
            rates, t = [], 0.0
            for _, channels_last, chunk in variants:
                enc.channels_last = channels_last
                enc.cpu_chunk_pixels = default_chunk if chunk == "default" else chunk
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                enc.model.to(memory_format=fmt)
                t = time_encode(enc, images, args.repeats)
                rates.append(args.batch / t)
            print(f"{size:>5} {threads:>7} " + " ".join(f"{r:>20.1f}" for r in rates) + f" {1000 * t:>17.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
