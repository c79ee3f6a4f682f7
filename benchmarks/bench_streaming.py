"""Training on a feature file larger than memory: streamed in bounded blocks vs held in memory.

    python benchmarks/bench_streaming.py [--gb 4] [--dim 512] [--batch-size 1024]

Writes a float32 ``.npy`` of ``--gb`` GB to a temporary folder (removed after), then trains
one epoch of a concept bottleneck through Trainer.fit in a fresh subprocess that streams it
(:class:`~bottlenecks.data.datamodule.StreamedFeatureBatches`), and reports the epoch's
seconds and the subprocess's peak resident memory (VmHWM). A smaller file is also trained
both streamed and in memory (the reference) to show what streaming costs in time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_features(path: Path, rows: int, dim: int, chunk_rows: int = 65536) -> None:
    """A ``(rows, dim)`` float32 .npy whose first 8 columns carry the label; written in chunks
    (bounded memory). Labels are ``row % 4``; they are rebuilt by the child from the row count."""
    g = np.random.default_rng(0)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for r0 in range(0, rows, chunk_rows):
            r1 = min(rows, r0 + chunk_rows)
            x = g.standard_normal((r1 - r0, dim), dtype=np.float32)
            x[:, :8] += 2.0 * (np.arange(r0, r1) % 4)[:, None]
            f.write(x.tobytes())


def train_epoch(file: str, batch_size: int, stream: bool) -> dict:
    """Train one epoch over ``file``: seconds, VmHWM (MiB, before and after) and test accuracy."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import lightning as L
    import torch

    from bottlenecks.data.datamodule import FeatureBatches, FeatureDataModule, StreamedFeatureBatches
    from bottlenecks.layers.concept import ConceptBottleneck
    from bottlenecks.models.module import BottleneckModel

    sys.path.insert(0, str(HERE))
    from _timing import peak_rss_mb

    torch.set_num_threads(1)
    mm = np.load(file, mmap_mode="r")
    n, dim = mm.shape
    y = torch.arange(n) % 4
    c = torch.stack([(y % 2), (y // 2)], 1).float()
    del mm

    class Data(FeatureDataModule):
        def __init__(self) -> None:
            super().__init__(batch_size=batch_size)
            self.feature_dim, self.concept_names, self.num_classes, self.task = dim, ["odd", "high"], 4, "classification"
            if stream:
                self._splits["train"] = StreamedFeatureBatches(file, y, c, batch_size=batch_size)
            else:
                self._splits["train"] = FeatureBatches(torch.from_numpy(np.load(file)), y, c)
            val = torch.from_numpy(np.load(file, mmap_mode="r")[:512].copy())
            self._splits["val"] = self._splits["test"] = FeatureBatches(val, y[:512], c[:512])

        def setup(self, stage: str | None = None) -> None:
            return None

    dm = Data()
    before = peak_rss_mb()
    model = BottleneckModel(ConceptBottleneck(dim, concept_names=["odd", "high"]), num_classes=4, lr=0.02)
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
            times.append(time.perf_counter() - self.t0)

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Timer()])
    trainer.fit(model, dm)
    acc = trainer.test(model, dm, verbose=False)[0]["test/task_acc"]
    return {"seconds": times[0], "peak_mb": peak_rss_mb(), "peak_before_mb": before, "acc": acc}


def run_child(file: Path, batch_size: int, stream: bool, in_process: bool = False) -> dict:
    """:func:`train_epoch` in a fresh subprocess (its own peak memory), or here (``in_process``)."""
    if in_process:
        return train_epoch(str(file), batch_size, stream)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(file), "--batch-size", str(batch_size)]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"bench_streaming child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows(quick: bool = False, gb: float = 4.0, dim: int = 512, batch_size: int = 1024) -> list[dict]:
    out = []
    small_rows = 8_000 if quick else 200_000
    big_rows = 0 if quick else int(gb * 2**30) // (4 * dim)
    with tempfile.TemporaryDirectory(prefix="bench_streaming-") as tmp:
        small = Path(tmp) / "small.npy"
        write_features(small, small_rows, 64 if quick else dim)
        width = 64 if quick else dim
        s = run_child(small, batch_size, stream=True, in_process=quick)
        m = run_child(small, batch_size, stream=False, in_process=quick)
        mb = small.stat().st_size / 2**20
        out.append({"operation": "train one epoch, features on disk", "size": f"{small_rows // 1000}k x {width} "
                    f"({mb:.0f} MB), batch {batch_size}", "ours": "streamed (4096-row blocks, 8 in buffer)",
                    "ours_s": s["seconds"], "reference": "in memory (FeatureBatches)", "reference_s": m["seconds"],
                    "peak_mb": None if quick else s["peak_mb"],
                    "note": "" if quick else f"in-memory peak {m['peak_mb']:.0f} MB; test acc {s['acc']:.2f} "
                    f"vs {m['acc']:.2f}"})
        small.unlink()
        if big_rows:
            big = Path(tmp) / "big.npy"
            t0 = time.perf_counter()
            write_features(big, big_rows, dim)
            written = time.perf_counter() - t0
            s = run_child(big, batch_size, stream=True)
            gib = big.stat().st_size / 2**30
            out.append({"operation": "train one epoch, features on disk", "size": f"{big_rows / 1e6:.1f}M x {dim} "
                        f"({gib:.1f} GiB), batch {batch_size}", "ours": "streamed (4096-row blocks, 8 in buffer)",
                        "ours_s": s["seconds"], "reference": "-", "reference_s": None, "peak_mb": s["peak_mb"],
                        "note": f"peak RSS before fit {s['peak_before_mb']:.0f} MB; file written in {written:.0f} s; "
                                f"test acc {s['acc']:.2f}"})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=4.0)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(train_epoch(a.child, a.batch_size, a.stream)))
        return
    for r in rows(a.quick, a.gb, a.dim, a.batch_size):
        print(r)


if __name__ == "__main__":
    main()
