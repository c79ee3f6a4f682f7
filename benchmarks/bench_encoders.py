"""Encoding throughput on this CPU: the full encode path against the raw forward, thread counts, bf16.

Four tables (also ``rows()`` for ``benchmarks/run_all.py``):

* **encode path vs raw forward** — :meth:`FrozenEncoder.encode_dataset` over a dataset of
  images already at the encoder's resolution (items read one by one, collated, normalised,
  channels-last, forward, copied out) against ``model(x)`` under inference mode on the same
  images already collated and normalised. Same thread count, interleaved, median of repeats.
  Target: ours at >= 0.9x the raw forward's images/s (ratio <= 1.11).
* **threads under load** — images/s of lite0 with 1 thread, 2 threads and ``"auto"``
  (:class:`ThreadTuner`), without and with a competing process that multiplies matrices on
  2 threads (started and stopped by this script). The machine's own load average is printed
  with every row.
* **workers** — ``encode_dataset`` over procedurally rendered images (``ShapesDataset``)
  with 0 and 1 DataLoader workers, without and with the competing process.
* **bf16** — bf16 autocast against fp32 on the same batches, with the features' agreement
  (lowest cosine, largest relative error) on :func:`calibration_images`.

    .venv/bin/python benchmarks/bench_encoders.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def tiny_encoder(num_threads=1, precision: str = "fp32"):
    """A small conv net (3 conv layers, 64-d features) at 32 px: the encoder whose overhead shows most."""
    from bottlenecks.encoders import FrozenEncoder, ImageTransform

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return FrozenEncoder(net, name="tiny_conv", feature_dim=64, transform=ImageTransform(32),
                         architecture="tiny conv", weights="seed-0", num_threads=num_threads,
                         precision=precision)


class Images(torch.utils.data.Dataset):
    """Pre-made images ``(n, 3, S, S)`` served one item dict at a time, as a ConceptDataset does."""

    kind = "image"

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.images[i], "y": 0, "index": i}


def medians(fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float] = time.perf_counter
            ) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved within every repeat.

    ``clock=time.process_time`` counts this process's CPU seconds instead of wall-clock: on a
    machine other jobs load, a one-thread comparison is then not decided by who got the core.
    """
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def path_rows(quick: bool, repeats: int) -> list[dict]:
    from bottlenecks.encoders import build_encoder, torch_threads

    cases = [("tiny conv", tiny_encoder, 32, 256, 64)]
    if not quick:
        cases += [
            ("lite0", lambda: build_encoder({"name": "lite0", "image_size": 96, "num_threads": 1}), 96, 64, 32),
            ("lite0", lambda: build_encoder({"name": "lite0", "image_size": 224, "num_threads": 1}), 224, 32, 16),
        ]
    rows = []
    for name, make, size, n, batch in cases:
        enc = make()
        images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        ds = Images(images)
        prepared = [enc.transform(b).contiguous(memory_format=torch.channels_last) for b in images.split(batch)]

        def raw(enc=enc, prepared=prepared) -> None:
            with torch_threads(enc.num_threads), torch.inference_mode():
                for x in prepared:
                    enc.model(x)

        def full(enc=enc, ds=ds, batch=batch) -> None:
            enc.encode_dataset(ds, batch_size=batch, progress=False)

        t = medians({"ours": full, "ref": raw}, repeats, clock=time.process_time)
        rows.append({
            "operation": f"encode path vs raw forward: {name} {size} px",
            "size": f"{n} images, batch {batch}, 1 thread, CPU seconds",
            "ours": "encode_dataset (items -> collate -> normalise -> forward -> rows)",
            "ours_s": t["ours"],
            "reference": "model(x) on pre-collated, normalised batches",
            "reference_s": t["ref"],
            "peak_mb": None,
            "note": f"{n / t['ours']:.0f} vs {n / t['ref']:.0f} img/s; load {load()}",
        })
    return rows


@contextlib.contextmanager
def competing_load(threads: int = 2) -> Iterator[None]:
    """A separate process multiplying 1500x1500 matrices on ``threads`` threads while the block runs."""
    code = f"import torch\ntorch.set_num_threads({threads})\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a\n"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(2.0)
        yield
    finally:
        p.kill()
        p.wait()


def thread_rows(quick: bool, repeats: int) -> list[dict]:
    from bottlenecks.encoders import build_encoder

    size, n, batch = (32, 32, 16) if quick else (96, 64, 16)
    name = "tiny conv" if quick else "lite0"
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    encs = {
        f"{t} thread{'s' if t != 1 else ''}" if t != "auto" else "auto": (
            tiny_encoder(num_threads=t) if quick else build_encoder({"name": "lite0", "image_size": size, "num_threads": t})
        )
        for t in (["auto", 2] if quick else ["auto", 1, 2])
    }

    def run(enc) -> None:
        for b in images.split(batch):
            enc.encode(b)

    rows = []
    for loaded in ([False] if quick else [False, True]):
        with competing_load() if loaded else contextlib.nullcontext():
            for _ in range(1 if quick else 4):  # auto: let the tuner settle on this load
                run(encs["auto"])
            t = medians({k: (lambda e=e: run(e)) for k, e in encs.items()}, repeats)
            machine = load()
        for k in encs:
            if k == "2 threads":
                continue
            chosen = f", chose {encs[k]._tuner.best} thread(s)" if k == "auto" else ""
            rows.append({
                "operation": f"{name} {size} px encode, {'with' if loaded else 'no'} competing 2-thread matmul",
                "size": f"{n} images, batch {batch}, {os.cpu_count()} cores",
                "ours": f"num_threads={k.split()[0]!s}" if k != "auto" else "num_threads='auto'",
                "ours_s": t[k],
                "reference": "num_threads=2 (torch's default here)",
                "reference_s": t["2 threads"],
                "peak_mb": None,
                "note": f"{n / t[k]:.0f} vs {n / t['2 threads']:.0f} img/s{chosen}; load {machine}",
            })
    return rows


def worker_rows(quick: bool, repeats: int) -> list[dict]:
    """encode_dataset over procedurally rendered images with 0 and 1 DataLoader workers (start-up included)."""
    if quick:  # worker start-up alone takes longer than a quick run may
        return []
    from bottlenecks.data.shapes import ShapesDataset
    from bottlenecks.encoders import build_encoder

    n = 96
    ds = ShapesDataset("train", n=n, return_masks=False)
    enc = build_encoder({"name": "lite0", "image_size": 96, "num_threads": "auto"})
    rows = []
    for loaded in (False, True):
        with competing_load() if loaded else contextlib.nullcontext():
            t = medians({w: (lambda w=w: enc.encode_dataset(ds, batch_size=32, num_workers=w, progress=False))
                         for w in (1, 0)}, repeats)
            machine = load()
        rows.append({
            "operation": f"encode rendered shapes, lite0 96 px, {'with' if loaded else 'no'} competing 2-thread matmul",
            "size": f"{n} images, batch 32, {os.cpu_count()} cores",
            "ours": "num_workers=1 (render + normalise in a worker)",
            "ours_s": t[1],
            "reference": "num_workers=0 (what 'auto' picks on 2 cores)",
            "reference_s": t[0],
            "peak_mb": None,
            "note": f"{n / t[1]:.0f} vs {n / t[0]:.0f} img/s; load {machine}",
        })
    return rows


def precision_rows(quick: bool, repeats: int) -> list[dict]:
    from bottlenecks.encoders import build_encoder
    from bottlenecks.encoders.base import calibration_images

    rows = []
    for size, n in ([(32, 16)] if quick else [(96, 32), (224, 16)]):
        if quick:
            f32, bf, auto = tiny_encoder(), tiny_encoder(precision="bf16"), tiny_encoder(precision="auto")
        else:
            opts = {"name": "lite0", "image_size": size, "num_threads": 1}
            f32, bf = build_encoder(opts), build_encoder({**opts, "precision": "bf16"})
            auto = build_encoder({**opts, "precision": "auto"})
        images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        t = medians({"bf16": lambda: bf.encode(images), "fp32": lambda: f32.encode(images)}, repeats)
        cal = calibration_images(size)
        a, b = f32.encode(cal), bf.encode(cal)
        cos = float(torch.nn.functional.cosine_similarity(a, b).min())
        rel = float(((a - b).norm(dim=1) / a.norm(dim=1)).max())
        rows.append({
            "operation": f"{f32.name} {size} px encode, bf16 autocast",
            "size": f"{n} images, 1 thread",
            "ours": "precision='bf16'",
            "ours_s": t["bf16"],
            "reference": "precision='fp32'",
            "reference_s": t["fp32"],
            "peak_mb": None,
            "note": f"min cosine {cos:.4f}, max rel. error {rel:.3f} on calibration images; "
                    f"'auto' picks {auto.resolved_precision()}; "
                    f"load {load()}",
        })
    return rows


def rows(quick: bool = False, repeats: int | None = None) -> list[dict]:
    """Benchmark rows (see benchmarks/run_all.py); ``quick``: the tiny encoder and one small setting each."""
    r = repeats or (2 if quick else 5)
    return path_rows(quick, r) + thread_rows(quick, r) + worker_rows(quick, r) + precision_rows(quick, r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, seconds")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", choices=["path", "threads", "workers", "precision"], default=None)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load before: {load()}")
    r = args.repeats or (2 if args.quick else 5)
    parts = {"path": path_rows, "threads": thread_rows, "workers": worker_rows, "precision": precision_rows}
    out = []
    for name, fn in parts.items():
        if args.only in (None, name):
            out += fn(args.quick, r)
    print("| operation | size | ours | s | reference | s | ratio | note |\n|---|---|---|---|---|---|---|---|")
    for row in out:
        ref = row["reference_s"]
        ratio = f"{row['ours_s'] / ref:.2f}" if ref else "-"
        print(f"| {row['operation']} | {row['size']} | {row['ours']} | {row['ours_s']:.3f} | {row['reference']} | "
              f"{ref:.3f} | {ratio} | {row['note']} |")


if __name__ == "__main__":
    main()
