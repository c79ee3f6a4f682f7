"""Forward + backward throughput of our quantisers against the reference packages.

Compares, at equal settings and on this CPU:

* :class:`bottlenecks.layers.quantize.VectorQuantizer` vs ``vector_quantize_pytorch.VectorQuantize``
  (EMA codebook, and learnable codebook with codebook + commitment losses; plain
  straight-through gradients on both sides — the reference's rotation trick is off);
* :class:`bottlenecks.layers.key_value.DiscreteKeyValueBottleneck` vs
  ``discrete_key_value_bottleneck_pytorch.DiscreteKeyValueBottleneck`` (random
  projection into heads, frozen keys, averaged values);

and prints, side by side: milliseconds per forward+backward, vectors per second,
our speed-up, our time over the *floor* (one ``(n, d) @ (d, K)`` matmul, the
distance computation every nearest-code lookup needs), and the peak extra memory
of one step (maximum resident set size, in a fresh subprocess per cell). Times are
the best of several rounds that run the three implementations in turn, so that a
busy machine slows all of them alike.

The reference packages are benchmark-only extras (``pip install .[bench]``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quantizers.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Callable

import torch

VQ_SIZES = [(4096, 64, 512), (16384, 256, 1024), (16384, 128, 4096)]  # (vectors, dims, codes)
DKVB_SIZES = [(4096, 512, 64, 256), (16384, 256, 16, 512)]  # (vectors, in dims, heads, keys)
DKVB_KEY_DIM, DKVB_VALUE_DIM = 16, 10
IMPLS = ("floor", "ours", "reference")


def _build(kind: str, impl: str, size: tuple) -> Callable[[], None]:
    """A closure running one forward + backward (or the floor matmul) at ``size``."""
    if kind.startswith("vq"):
        n, d, K = size
        x = torch.randn(n, d)
        ema = kind == "vq-ema"
        if impl == "floor":
            c = torch.randn(K, d)
            return lambda: torch.mm(x, c.t())
        if impl == "ours":
            from bottlenecks.layers.quantize import VectorQuantizer

            ours = VectorQuantizer(d, K, ema=ema).train()
            xg = x.clone().requires_grad_(True)

            def step() -> None:
                out = ours(xg)
                (out.z.square().mean() + sum(out.losses.values())).backward()

            return step
        from vector_quantize_pytorch import VectorQuantize

        kw = {"ema_update": True} if ema else {"ema_update": False, "learnable_codebook": True}
        ref = VectorQuantize(dim=d, codebook_size=K, decay=0.99, commitment_weight=1.0, rotation_trick=False, **kw)
        ref.train()
        xr = x.view(16, n // 16, d).clone().requires_grad_(True)

        def step_ref() -> None:
            q, _, commit = ref(xr)
            (q.square().mean() + commit.sum()).backward()

        return step_ref

    n, d, C, J = size
    x = torch.randn(n, d)
    if impl == "floor":
        xp = torch.randn(C, n, DKVB_KEY_DIM)
        keys = torch.randn(C, J, DKVB_KEY_DIM)
        return lambda: torch.bmm(xp, keys.transpose(1, 2))
    if impl == "ours":
        from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck

        kv = DiscreteKeyValueBottleneck(
            d, num_heads=C, keys_per_head=J, key_dim=DKVB_KEY_DIM, projection="random",
            value_dim=DKVB_VALUE_DIM, init="random",
        ).train()
        return lambda: kv(x).z.square().mean().backward()
    from discrete_key_value_bottleneck_pytorch import DiscreteKeyValueBottleneck as Ref

    ref_kv = Ref(
        dim=DKVB_KEY_DIM, num_memories=J, dim_embed=d, num_memory_codebooks=C,
        dim_memory=DKVB_VALUE_DIM, decay=0.99, freeze_codebook=True, rotation_trick=False,
    ).train()
    xr = x.view(1, n, d)  # one "sequence": the reference expands its values over the batch axis
    return lambda: ref_kv(xr).square().mean().backward()


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_case(spec: dict) -> dict:
    """Peak extra resident memory of one step, warm-up excluded (run in a fresh process).

    Linux: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS.
    """
    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    step = _build(spec["kind"], spec["impl"], tuple(spec["size"]))
    step()
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return {"peak_mib": _status_mib("VmHWM") - base}


def _memory(spec: dict) -> float | str:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return "error: " + (lines[-1] if lines else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def _timings(kind: str, size: tuple, rounds: int) -> dict[str, float]:
    """Best time of each implementation, measured round-robin so load changes hit all alike."""
    torch.manual_seed(0)
    steps = {impl: _build(kind, impl, size) for impl in IMPLS}
    for fn in steps.values():
        fn()  # warm-up: allocations, lazy initialisation
    best = {impl: float("inf") for impl in IMPLS}
    for _ in range(rounds):
        for impl, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            best[impl] = min(best[impl], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smallest size of each benchmark only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is stable on a shared machine; 2 = every core here)")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (best of)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_memory_case(json.loads(args.case))))
        return

    missing = [m for m in ("vector_quantize_pytorch", "discrete_key_value_bottleneck_pytorch")
               if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"bench_quantizers: the reference packages {missing} are not installed; "
                 "install the benchmark extras: pip install -e '.[bench]'")
    torch.set_num_threads(args.threads)
    rows = []
    vq_sizes = VQ_SIZES[:1] if args.quick else VQ_SIZES
    dkvb_sizes = DKVB_SIZES[:1] if args.quick else DKVB_SIZES
    plan = [(kind, size) for kind in ("vq-ema", "vq-learned") for size in vq_sizes]
    plan += [("dkvb", size) for size in dkvb_sizes]
    for kind, size in plan:
        times = _timings(kind, size, args.repeats)
        mem = {impl: _memory({"kind": kind, "impl": impl, "size": list(size), "threads": args.threads})
               for impl in ("ours", "reference")}
        rows.append((kind, size, times, mem))

    header = (
        f"{'benchmark':<11} {'size':<22} {'floor ms':>9} {'ours ms':>9} {'ref ms':>9} "
        f"{'ours vec/s':>11} {'ref vec/s':>11} {'speed-up':>9} {'ours/floor':>10} "
        f"{'ours MiB':>9} {'ref MiB':>9}"
    )
    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats} interleaved rounds; "
          "forward+backward")
    print(header)
    print("-" * len(header))
    for kind, size, times, mem in rows:
        n = size[0]
        label = "x".join(str(v) for v in size)
        f, o, r = times["floor"], times["ours"], times["reference"]
        mem_cells = "".join(f"{m:9.0f}" if isinstance(m, float) else f"{m:>9}" for m in mem.values())
        print(
            f"{kind:<11} {label:<22} {f * 1e3:9.1f} {o * 1e3:9.1f} {r * 1e3:9.1f} "
            f"{n / o:11.0f} {n / r:11.0f} {r / o:8.2f}x {o / f:9.2f}x " + mem_cells
        )
    print(
        "\nsize: vq = vectors x dims x codes; dkvb = vectors x input dims x heads x keys per head "
        f"(key dim {DKVB_KEY_DIM}, value dim {DKVB_VALUE_DIM}).\n"
        "floor: one distance matmul (dkvb: the batched per-head matmul) — forward only.\n"
        "MiB: peak resident memory of one step above the memory held before it (after a warm-up\n"
        "step), in a fresh process per cell."
    )


if __name__ == "__main__":
    main()
