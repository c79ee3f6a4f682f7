"""Quantisers against the reference packages: speed at three sizes, and quality of each option.

Two parts, both measured on this CPU in one process, ours and the reference interleaved
round by round (so a busy machine slows both alike), medians reported:

* **speed** — :class:`bottlenecks.layers.quantize.VectorQuantizer` vs
  ``vector_quantize_pytorch.VectorQuantize`` (EMA codebook, and learnable codebook with
  codebook + commitment losses; straight-through on both sides) in three modes: training
  forward+backward, training forward, eval forward; and
  :class:`~bottlenecks.layers.key_value.DiscreteKeyValueBottleneck` vs
  ``discrete_key_value_bottleneck_pytorch``. The note gives our time over the *floor*: the
  distance matmul alone on the same shapes (``(n, d) @ (d, K)``, what every nearest-code
  search must compute).
* **options** — a small autoencoder on the digits pixels (64 → 16 → quantiser → 64, Adam,
  batches of 256) trained with each option and with the reference's equivalent: plain VQ,
  the rotation trick, SimVQ (with the rotation trick, the reference's default) and LFQ
  (entropy loss weight 0.1). ``ours_s``/``reference_s``: median seconds per training step;
  the note: codes alive (fraction of the codebook chosen on the data after training) and the
  reconstruction error (MSE of the standardised pixels; 1.0 = predicting the mean).
* **optimisers** — ``optimizer: muon`` against ``adamw`` on the digits through a projected VQ:
  seconds per epoch and final test accuracy.

The reference packages are benchmark-only extras (``pip install .[bench]``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quantizers.py [--quick] [--threads N]

``rows(quick)`` returns the table for ``benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

VQ_SIZES = [(4096, 64, 512), (16384, 256, 1024), (16384, 128, 4096)]  # (vectors, dims, codes)
DKVB_SIZES = [(4096, 512, 64, 256), (16384, 256, 16, 512)]  # (vectors, in dims, heads, keys)
QUICK_VQ_SIZES = [(1024, 32, 256)]  # quick=True: a smoke test that finishes in seconds
QUICK_DKVB_SIZES = [(512, 64, 8, 64)]
DKVB_KEY_DIM, DKVB_VALUE_DIM = 16, 10
MODES = ("train fwd+bwd", "train fwd", "eval fwd")
REFERENCES = ("vector_quantize_pytorch", "discrete_key_value_bottleneck_pytorch")


# --------------------------------------------------------------------------- speed
def _build(kind: str, impl: str, size: tuple, mode: str = "train fwd+bwd") -> Callable[[], None]:
    """A closure running one step of ``mode`` (or the floor matmul) at ``size``."""
    backward = mode == "train fwd+bwd"
    if kind.startswith("vq"):
        n, d, K = size
        x = torch.randn(n, d)
        ema = kind == "vq-ema"
        if impl == "floor":
            c = torch.randn(K, d)
            return lambda: torch.mm(x, c.t())
        xg = x.clone().requires_grad_(backward)
        if impl == "ours":
            from bottlenecks.layers.quantize import VectorQuantizer

            ours = VectorQuantizer(d, K, ema=ema, collapse_threshold=0.0).train(mode != "eval fwd")

            def step() -> None:
                out = ours(xg)
                if backward:
                    (out.z.square().mean() + sum(out.losses.values())).backward()

            return torch.no_grad()(step) if mode == "eval fwd" else step
        from vector_quantize_pytorch import VectorQuantize

        kw = {"ema_update": True} if ema else {"ema_update": False, "learnable_codebook": True}
        ref = VectorQuantize(dim=d, codebook_size=K, decay=0.99, commitment_weight=1.0, rotation_trick=False, **kw)
        ref.train(mode != "eval fwd")
        xr = xg.view(16, n // 16, d)

        def step_ref() -> None:
            q, _, commit = ref(xr)
            if backward:
                (q.square().mean() + commit.sum()).backward()

        return torch.no_grad()(step_ref) if mode == "eval fwd" else step_ref

    n, d, C, J = size
    x = torch.randn(n, d)
    if impl == "floor":
        xp = torch.randn(C, n, DKVB_KEY_DIM)
        keys = torch.randn(C, J, DKVB_KEY_DIM)
        return lambda: torch.bmm(xp, keys.transpose(1, 2))
    if impl == "ours":
        from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck

        kv = DiscreteKeyValueBottleneck(
            d, num_heads=C, keys_per_head=J, code_dim=DKVB_KEY_DIM, projection="random",
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
    step = _build(spec["kind"], spec["impl"], tuple(spec["size"]), spec.get("mode", "train fwd+bwd"))
    step()
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return {"peak_mib": _status_mib("VmHWM") - base}


def _memory(spec: dict) -> float | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def _medians(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each closure, run round-robin so load changes hit all alike."""
    for fn in steps.values():
        fn()  # warm-up: allocations, lazy initialisation
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def speed_rows(quick: bool = False, rounds: int = 7, threads: int = 1, memory: bool = True) -> list[dict]:
    """Our VQ and DKVB against the references at every size and mode, with the floor in the note."""
    rows = []
    vq_sizes = QUICK_VQ_SIZES if quick else VQ_SIZES
    dkvb_sizes = QUICK_DKVB_SIZES if quick else DKVB_SIZES
    plan = [(kind, size, mode) for kind in ("vq-ema", "vq-learned") for size in vq_sizes for mode in MODES]
    plan += [("dkvb", size, "train fwd+bwd") for size in dkvb_sizes]
    for kind, size, mode in plan:
        torch.manual_seed(0)
        steps = {impl: _build(kind, impl, size, mode) for impl in ("floor", "ours", "reference")}
        t = _medians(steps, rounds)
        peak = _memory({"kind": kind, "impl": "ours", "size": list(size), "threads": threads, "mode": mode}) \
            if memory else None
        if kind.startswith("vq"):
            label = f"{size[0]} x {size[1]}, {size[2]} codes"
            op = f"VQ {'EMA' if kind == 'vq-ema' else 'learned'} codebook, {mode}"
            ref = "vector-quantize-pytorch VectorQuantize"
        else:
            label = f"{size[0]} x {size[1]}, {size[2]} heads x {size[3]} keys"
            op = f"DKVB, {mode}"
            ref = "discrete-key-value-bottleneck-pytorch"
        rows.append({
            "operation": op, "size": label, "ours": "bottlenecks", "ours_s": t["ours"], "reference": ref,
            "reference_s": t["reference"], "peak_mb": peak,
            "note": f"floor (distance matmul) {t['floor'] * 1e3:.2f} ms; ours/floor {t['ours'] / t['floor']:.2f}x",
        })
    return rows


def floor_table(sizes: list[tuple[int, int, int]], rounds: int) -> None:
    """Print our VQ against the distance-matmul floor alone, at every size and mode."""
    print("| codebook | size | mode | ours ms | floor ms | ours / floor |\n|---|---|---|---:|---:|---:|")
    for kind in ("vq-ema", "vq-learned"):
        for size in sizes:
            for mode in MODES:
                torch.manual_seed(0)
                t = _medians({impl: _build(kind, impl, size, mode) for impl in ("floor", "ours")}, rounds)
                print(f"| {kind[3:]} | {size[0]} x {size[1]}, {size[2]} codes | {mode} | {t['ours'] * 1e3:.2f} | "
                      f"{t['floor'] * 1e3:.2f} | {t['ours'] / t['floor']:.2f}x |", flush=True)


# ------------------------------------------------------------------------ options
def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-3)


class _Ours(nn.Module):
    """Encoder → one of our quantisers → decoder; ``loss`` weights its terms as a user would."""

    def __init__(self, quantizer: nn.Module, weights: dict[str, float], width: int = 16) -> None:
        super().__init__()
        self.enc, self.q, self.dec, self.weights = nn.Linear(64, width), quantizer, nn.Linear(width, 64), weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.q(self.enc(x))
        aux = sum(self.weights.get(k, 1.0) * v for k, v in out.losses.items())
        return self.dec(out.z), out.codes[:, 0], aux


class _Reference(nn.Module):
    """The same around a vector-quantize-pytorch quantiser returning ``(z, codes, aux loss)``."""

    def __init__(self, quantizer: nn.Module, width: int = 16) -> None:
        super().__init__()
        self.enc, self.q, self.dec = nn.Linear(64, width), quantizer, nn.Linear(width, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, codes, aux = self.q(self.enc(x).unsqueeze(1))
        return self.dec(z[:, 0]), codes.reshape(len(x)), aux.sum()


def _option_pairs(K: int = 256) -> list[tuple[str, str, Callable[[], nn.Module], str, Callable[[], nn.Module]]]:
    from vector_quantize_pytorch import LFQ, SimVQ, VectorQuantize

    from bottlenecks.layers.quantize import LookupFreeQuantizer, VectorQuantizer

    vq_w = {"commitment": 0.25}
    bits = K.bit_length() - 1
    return [
        ("VQ straight-through", "VectorQuantizer", lambda: _Ours(VectorQuantizer(16, K), vq_w),
         "VectorQuantize(rotation_trick=False)",
         lambda: _Reference(VectorQuantize(16, K, ema_update=False, learnable_codebook=True, rotation_trick=False,
                                           commitment_weight=0.25))),
        ("VQ rotation trick", "VectorQuantizer(gradient='rotation')",
         lambda: _Ours(VectorQuantizer(16, K, gradient="rotation"), vq_w),
         "VectorQuantize(rotation_trick=True)",
         lambda: _Reference(VectorQuantize(16, K, ema_update=False, learnable_codebook=True, rotation_trick=True,
                                           commitment_weight=0.25))),
        ("SimVQ (rotation trick)", "VectorQuantizer(simvq=True, gradient='rotation')",
         lambda: _Ours(VectorQuantizer(16, K, simvq=True, gradient="rotation"), vq_w),
         "SimVQ(rotation_trick=True)", lambda: _Reference(SimVQ(16, K, rotation_trick=True))),
        ("LFQ", f"LookupFreeQuantizer(code_dim={bits})",
         lambda: _Ours(LookupFreeQuantizer(16, code_dim=bits), {"entropy": 0.1, "commitment": 0.0}),
         "LFQ(entropy_loss_weight=0.1)",
         lambda: _Reference(LFQ(dim=16, codebook_size=K, entropy_loss_weight=0.1))),
    ]


def _train(model: nn.Module, x: torch.Tensor, steps: int, batch: int = 256) -> tuple[list[float], float, int]:
    """Train; return per-step seconds, codes alive, reconstruction MSE and the codebook size seen."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    times = []
    model.train()
    for _ in range(steps):
        xb = x[torch.randint(len(x), (batch,), generator=g)]
        t0 = time.perf_counter()
        recon, _, aux = model(xb)
        loss = F.mse_loss(recon, xb) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        recon, codes, _ = model(x)
    return times, F.mse_loss(recon, x).item(), codes.unique().numel()


def option_rows(quick: bool = False, steps: int = 600) -> list[dict]:
    """Each option and the reference's equivalent trained alike on the digits autoencoder."""
    x = _digits()
    steps = 30 if quick else steps
    K = 256
    rows = []
    for operation, ours_name, make_ours, ref_name, make_ref in _option_pairs(K):
        torch.manual_seed(0)
        ours = make_ours()
        torch.manual_seed(0)
        ref = make_ref()
        ours_t, ours_mse, ours_alive = _train(ours, x, steps)
        ref_t, ref_mse, ref_alive = _train(ref, x, steps)
        rows.append({
            "operation": f"{operation}, digits autoencoder, {steps} steps",
            "size": f"1797 x 64 -> 16, {K} codes, batch 256",
            "ours": ours_name, "ours_s": statistics.median(ours_t[1:]),
            "reference": f"vector-quantize-pytorch {ref_name}", "reference_s": statistics.median(ref_t[1:]),
            "peak_mb": None,
            "note": f"codes alive ours {ours_alive / K:.0%} / ref {ref_alive / K:.0%}; "
                    f"reconstruction MSE ours {ours_mse:.3f} / ref {ref_mse:.3f}",
        })
    return rows


# ---------------------------------------------------------------------- optimisers
def optimizer_rows(quick: bool = False, epochs: int = 30) -> list[dict]:
    """Muon against AdamW: the digits pixels through a VQ with a learned projection (4 heads of
    8 dims, 64 codes each, EMA codebook) and a one-hidden-layer head, trained by Lightning at the
    same lr (Muon's updates are scaled to AdamW's RMS): median seconds per epoch, final test accuracy."""
    import lightning as L

    from bottlenecks.data.modules import DigitsDataModule
    from bottlenecks.layers.quantize import VectorQuantizer
    from bottlenecks.models.module import BottleneckModel

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.times.append(time.perf_counter() - self.t0)

    epochs = 2 if quick else epochs
    result = {}
    for optimizer in ("adamw", "muon"):
        L.seed_everything(0, verbose=False)
        vq = VectorQuantizer(64, codebook_size=64, num_heads=4, code_dim=8, ema=True, collapse_threshold=0.0)
        model = BottleneckModel(vq, num_classes=10, head_hidden=[64], optimizer=optimizer, lr=0.01,
                                standardize_features=False, loss_weights={"commitment": 0.25})
        timer = EpochTimer()
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[timer], accelerator="cpu", devices=1)
        dm = DigitsDataModule(batch_size=64)
        trainer.fit(model, dm)
        acc = trainer.test(model, dm, verbose=False)[0]["test/task_acc"]
        result[optimizer] = (statistics.median(timer.times), acc)
    return [{
        "operation": f"optimizer: digits through VQ (projected, 4 heads x 64 codes), {epochs} epochs",
        "size": "1797 x 64 pixels, batch 64", "ours": "muon (Muon matrices + AdamW rest)",
        "ours_s": result["muon"][0], "reference": "adamw", "reference_s": result["adamw"][0], "peak_mb": None,
        "note": f"seconds per epoch; test accuracy muon {result['muon'][1]:.3f} / adamw {result['adamw'][1]:.3f}",
    }]


def rows(quick: bool = False) -> list[dict]:
    """The table for ``benchmarks/run_all.py`` (quick: tiny sizes, 30 training steps, no memory
    subprocesses — a smoke test; the numbers worth reading come from the full run)."""
    if args.part == "floor":
        torch.set_num_threads(args.threads)
        floor_table(QUICK_VQ_SIZES if args.quick else VQ_SIZES, rounds=3 if args.quick else args.repeats)
        return
    missing = [m for m in REFERENCES if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"bench_quantizers needs the reference packages {missing}: pip install -e '.[bench]'")
    return speed_rows(quick, rounds=3 if quick else 7, memory=not quick) + option_rows(quick) + optimizer_rows(quick)


def _print(table: list[dict]) -> None:
    print(f"{'operation':<58} {'size':<36} {'ours ms':>9} {'ref ms':>9} {'ratio':>6} {'MiB':>6}  note")
    for r in table:
        ratio = r["ours_s"] / r["reference_s"] if r["reference_s"] else float("nan")
        mib = f"{r['peak_mb']:6.0f}" if r["peak_mb"] is not None else f"{'':>6}"
        print(f"{r['operation']:<58} {r['size']:<36} {r['ours_s'] * 1e3:9.2f} "
              f"{(r['reference_s'] or float('nan')) * 1e3:9.2f} {ratio:6.2f} {mib}  {r['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds and training steps (a smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is stable on a shared machine; 2 = every core here)")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (median of)")
    parser.add_argument("--part", choices=("all", "speed", "options", "optimizers", "floor"), default="all",
                        help="floor: our VQ against the distance matmul only (no reference package needed)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_memory_case(json.loads(args.case))))
        return
    if args.part == "floor":
        torch.set_num_threads(args.threads)
        floor_table(QUICK_VQ_SIZES if args.quick else VQ_SIZES, rounds=3 if args.quick else args.repeats)
        return
    missing = [m for m in REFERENCES if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"bench_quantizers: the reference packages {missing} are not installed; "
                 "install the benchmark extras: pip install -e '.[bench]'")
    torch.set_num_threads(args.threads)
    table = []
    if args.part in ("all", "speed"):
        table += speed_rows(args.quick, rounds=3 if args.quick else args.repeats, threads=args.threads,
                            memory=not args.quick)
    if args.part in ("all", "options"):
        table += option_rows(args.quick)
    if args.part in ("all", "optimizers"):
        table += optimizer_rows(args.quick)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, median of interleaved rounds; load {load}")
    _print(table)
    print("\nratio = ours / reference (lower is better). MiB: peak resident memory of one step of ours above\n"
          "the memory held before it (fresh process per cell).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
