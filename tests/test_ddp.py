"""Several processes (DDP over gloo on CPU): codebooks stay identical, one process at batch 64
trains like two at 32, metrics count every row once; batch-size scaling of lr and EMA decay.

The multi-process tests start the ranks as torchrun does (``LOCAL_RANK``/``WORLD_SIZE``/
``MASTER_PORT`` in the environment; ``tests/_ddp_worker.py`` is one rank) on a free port, with a
timeout, so a collective that hangs fails the test instead of blocking the run.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from bottlenecks import distributed
from bottlenecks.data.datamodule import ArrayDataModule, EpochBatches
from bottlenecks.layers.quantize import VectorQuantizer
from bottlenecks.models import BottleneckModel

WORKER = Path(__file__).with_name("_ddp_worker.py")
TIMEOUT_S = 240  # generous: the test machine is shared; a hang still fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(scenario: str, out: Path, world: int) -> list[subprocess.Popen]:
    """Start ``world`` ranks of the worker (as torchrun would), writing to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "WORLD_SIZE": str(world), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if world > 1:
            env.update(LOCAL_RANK=str(r), NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def results(procs: list[subprocess.Popen], out: Path, deadline: float) -> list[dict]:
    """The ranks' results in rank order; a rank that fails or outlives ``deadline`` fails the test."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        pytest.fail(f"{len(procs)} ranks did not finish in {TIMEOUT_S} s (a hung collective?)")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} of {len(procs)} failed:\n{log[-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(len(procs))]


def launch(scenario: str, out: Path, world: int) -> list[dict]:
    return results(start(scenario, out, world), out, time.monotonic() + TIMEOUT_S)


def test_codebooks_bit_identical_on_every_rank(tmp_path: Path) -> None:
    """Ranks seeded differently, buffers not broadcast by DDP: k-means init, EMA statistics,
    dead-code replacement, DKVB keys and codebook features still agree bit for bit."""
    rank0, rank1 = launch("identical", tmp_path, world=2)
    layers = ("vq", "rvq", "dkvb", "codebook_features")
    for name in layers + tuple(f"{n}-deferred" for n in layers):  # and with deferred host checks
        a, b = rank0[name]["state"], rank1[name]["state"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs between ranks"
    for name in ("vq", "rvq", "codebook_features", "vq-deferred", "codebook_features-deferred"):
        # dead codes were replaced, on both ranks alike
        counts = (rank0[name]["reseeds"], rank1[name]["reseeds"])
        assert counts[0] > 0 and counts[0] == counts[1], (name, counts)
    assert bool(rank0["dkvb"]["state"]["keys_initialised"])
    for result in (rank0, rank1):  # bottlenecks.distributed across the two ranks
        assert torch.equal(result["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert float(result["summed"]) == 3.0 and float(result["broadcast"]) == 11.0
        assert "processes logged different" in result.get("names_error", "")


def test_two_processes_train_like_one_at_the_same_global_batch(tmp_path: Path) -> None:
    """1 process at batch 64 vs 2 at 32: parameters, EMA codebook and metrics agree up to float
    summation order (tolerance 1e-4); test metrics cover the 101-row test set exactly once.
    (Evaluation perplexity excepted: a per-batch statistic, it depends on how rows are batched.)"""
    deadline = time.monotonic() + TIMEOUT_S
    runs = {w: start("equivalence", tmp_path / f"world{w}", world=w) for w in (1, 2)}  # side by side
    (one,), two = (results(runs[w], tmp_path / f"world{w}", deadline) for w in (1, 2))
    for key, value in one["state"].items():
        assert torch.allclose(value.float(), two[0]["state"][key].float(), atol=1e-4, rtol=1e-4), key
        assert torch.equal(two[0]["state"][key], two[1]["state"][key]), key
    for stage in ("fit", "test"):
        assert one[stage].keys() == two[0][stage].keys()
        for name, value in one[stage].items():
            if name in ("val/perplexity", "test/perplexity"):
                # the mean over evaluation batches of each batch's code histogram: it depends on
                # how rows are batched (as it does with another eval_batch_size in one process)
                continue
            other = two[0][stage][name]
            assert math.isclose(value, other, rel_tol=1e-4, abs_tol=1e-5), (name, value, other)
            assert two[0][stage][name] == two[1][stage][name], name
    # exact test metrics: every one of the 101 rows once (a padding row would give k/102)
    for result in (one, two[0], two[1]):
        direct, test = result["direct"], result["test"]
        assert direct["n"] == 101
        assert 0.05 < direct["acc"] < 0.95  # neither all right nor all wrong: a repeated row would show
        assert abs(test["test/task_acc"] - direct["acc"]) < 1e-6
        assert abs(test["test/task_loss"] - direct["task_loss"]) < 1e-5


# ------------------------------------------------------------------ one process
def test_distributed_helpers_are_identity_in_one_process() -> None:
    t = torch.arange(6.0).view(3, 2)
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    distributed.barrier()
    assert distributed.broadcast_(t) is t and distributed.all_reduce_sum_(t) is t
    assert distributed.all_gather_cat(t) is t
    assert torch.equal(t, torch.arange(6.0).view(3, 2))


@pytest.mark.parametrize("n", [101, 100, 7])
def test_epoch_batches_shard_disjointly(n: int) -> None:
    """Each rank gets its own part of every epoch; evaluation shards cover every row exactly
    once, training shards are padded so every rank takes the same number of steps."""
    for world in (2, 3):
        ev = [[b.tolist() for b in EpochBatches(n, 16, shuffle=False, rank=r, world_size=world)] for r in range(world)]
        rows = sorted(i for shard in ev for b in shard for i in b)
        assert rows == list(range(n))
        tr = [EpochBatches(n, 16, shuffle=True, seed=3, rank=r, world_size=world, pad=True) for r in range(world)]
        for s in tr:
            s.set_epoch(2)
        batches = [[b.tolist() for b in s] for s in tr]
        assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(tr[0])
        seen = [i for shard in batches for b in shard for i in b]
        assert set(seen) == set(range(n)) and len(seen) == world * -(-n // world)
        # step s of all ranks together = step s of one process at batch 16 * world (n divisible)
        if n % world == 0:
            s1 = EpochBatches(n, 16 * world, shuffle=True, seed=3)
            s1.set_epoch(2)
            one = [b.tolist() for b in s1]
            for step, big in enumerate(one):
                assert sorted(big) == sorted(i for shard in batches for i in shard[step])
    with pytest.raises(ValueError, match="cannot give each of 4 processes a row"):
        EpochBatches(3, 16, shuffle=False, rank=0, world_size=4)


def _stream(n: int, seed: int = 0) -> torch.Tensor:
    """Four clusters whose centres drift steadily: an EMA codebook lags by its memory in samples."""
    g = torch.Generator().manual_seed(seed)
    start = torch.tensor([[-8.0, 0.0], [8.0, 0.0], [0.0, -8.0], [0.0, 8.0]])
    k = torch.randint(0, 4, (n,), generator=g)
    t = torch.arange(n, dtype=torch.float32).unsqueeze(1) / n
    return start[k] + 4.0 * t + 0.1 * torch.randn(n, 2, generator=g)


def _ema_codebook(x: torch.Tensor, batch: int, scale: float | None) -> torch.Tensor:
    vq = VectorQuantizer(2, codebook_size=4, ema=True, ema_decay=0.99)
    vq._set_codes(torch.tensor([[[-8.0, 0.0], [8.0, 0.0], [0.0, -8.0], [0.0, 8.0]]]))
    if scale is not None:
        vq.set_batch_scale(scale)
    vq.train()
    for b in x.split(batch):
        vq(b)
    return vq.codebook[0].clone()


def test_ema_decay_scaled_to_the_batch_keeps_the_memory_in_samples() -> None:
    """An EMA codebook at batch 64 with decay ** 8 tracks drifting data like the one at batch 8;
    without the scaling it remembers 8 times as many samples and lags far behind."""
    x = _stream(8192)
    small = _ema_codebook(x, 8, None)
    scaled = _ema_codebook(x, 64, 8.0)
    unscaled = _ema_codebook(x, 64, None)
    err_scaled = (scaled - small).norm(dim=-1).max()
    err_unscaled = (unscaled - small).norm(dim=-1).max()
    assert err_scaled < 0.05, err_scaled
    assert err_unscaled > 0.5, err_unscaled


@pytest.mark.parametrize(
    ("optimizer", "rule", "factor"),
    [("sgd", "auto", 8.0), ("adam", "auto", math.sqrt(8.0)), ("adamw", "auto", math.sqrt(8.0)),
     ("adamw", "linear", 8.0), ("sgd", "sqrt", math.sqrt(8.0)), ("sgd", "none", 1.0)],
)
def test_lr_scaled_to_the_effective_batch(optimizer: str, rule: str, factor: float) -> None:
    """Batch 16 × 2 accumulated steps against a reference of 4: the lr follows the rule for the
    optimiser; the EMA codebook's decay follows the batch one update sees (16, not 32)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 4, generator=g), torch.randint(0, 2, (80,), generator=g)
    dm = ArrayDataModule.from_arrays(x[:48], y[:48], x[48:], y[48:], batch_size=16)
    vq = VectorQuantizer(4, codebook_size=4, ema=True)
    model = BottleneckModel(vq, num_classes=2, optimizer=optimizer, lr=0.01, lr_schedule="constant",
                            reference_batch_size=4, lr_scaling=rule)
    tr = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=2, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0)
    tr.fit(model, datamodule=dm)
    assert tr.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    assert vq.batch_scale == pytest.approx(4.0)


def test_no_reference_batch_leaves_lr_and_decay_alone() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
    dm = ArrayDataModule.from_arrays(x[:24], y[:24], x[24:], y[24:], batch_size=16)
    vq = VectorQuantizer(4, codebook_size=4, ema=True)
    model = BottleneckModel(vq, num_classes=2, optimizer="sgd", lr=0.01, lr_schedule="constant")
    tr = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0)
    tr.fit(model, datamodule=dm)
    assert tr.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)
    assert vq.batch_scale == 1.0
    with pytest.raises(ValueError, match="reference_batch_size must be a positive"):
        BottleneckModel(VectorQuantizer(4, codebook_size=4), num_classes=2, reference_batch_size=0)
    with pytest.raises(ValueError, match="lr_scaling must be"):
        BottleneckModel(VectorQuantizer(4, codebook_size=4), num_classes=2, lr_scaling="cubic")


def test_cli_runs_a_config_on_two_processes_with_lightnings_launcher(tmp_path: Path) -> None:
    """The user's path: the same YAML with ``--trainer.devices 2 --trainer.strategy ddp``;
    Lightning starts rank 1 itself. One run folder (rank 1 claims none), test metrics logged."""
    import signal

    cmd = [str(Path(sys.executable).with_name("bottlenecks")), "fit",
           "--config", str(Path(__file__).parents[1] / "configs" / "vq_digits.yaml"),
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
           "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(_free_port())}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log = proc.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's child is in the same session
        proc.wait()
        pytest.fail(f"`bottlenecks fit` on 2 processes did not finish in {TIMEOUT_S} s")
    assert proc.returncode == 0, log[-3000:]
    runs = sorted(p.name for p in (tmp_path / "runs" / "vq_digits").iterdir())
    assert runs == ["version_0"], runs
    header = (tmp_path / "runs" / "vq_digits" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "test/task_acc" in header and "train/loss" in header


def test_reference_batch_without_a_known_batch_size_is_a_clear_error() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    loader = torch.utils.data.DataLoader(
        [{"x": a, "y": b} for a, b in zip(x, y)], batch_size=8)
    model = BottleneckModel(VectorQuantizer(4, codebook_size=4, ema=True), num_classes=2, reference_batch_size=8)
    tr = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="training batch size is unknown"):
        tr.fit(model, train_dataloaders=loader)
    with pytest.raises(ValueError, match="batch scale must be positive"):
        VectorQuantizer(4, codebook_size=4, ema=True).set_batch_scale(0.0)
