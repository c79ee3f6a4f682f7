"""One rank of a multi-process (DDP, gloo, CPU) training run, started by tests/test_ddp.py.

Usage: ``python tests/_ddp_worker.py SCENARIO OUT_DIR`` with the environment of a launched
rank (``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; what torchrun or
Lightning's own launcher sets). Writes ``OUT_DIR/rank{r}.pt``. ``WORLD_SIZE=1`` without
``LOCAL_RANK`` runs the same thing in one process.

Scenarios:

* ``identical``: VQ (EMA, k-means init, dead codes), residual VQ, DKVB and codebook
  features each trained a few epochs; every rank is seeded *differently*, DDP does not
  broadcast buffers, so only the library's own synchronisation keeps the codebooks equal.
* ``equivalence``: an EMA-VQ model at global batch 64 (``64 // WORLD_SIZE`` per rank) and
  its metrics, including test metrics on an odd-sized test set.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

import bottlenecks.layers.codes as codes  # noqa: E402
from bottlenecks.data.datamodule import ArrayDataModule  # noqa: E402
from bottlenecks.layers.base import Bottleneck, BottleneckOutput  # noqa: E402
from bottlenecks.layers.codebook_features import CodebookFeatures  # noqa: E402
from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck  # noqa: E402
from bottlenecks.layers.quantize import ResidualVectorQuantizer, VectorQuantizer  # noqa: E402
from bottlenecks.models import BottleneckModel  # noqa: E402

torch.set_num_threads(1)
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("LOCAL_RANK", "0"))

# count dead-code replacements, so the test knows they happened
RESEEDS = [0]
_reseed = codes.reseed_codes


def _counting_reseed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    RESEEDS[0] += 1
    return _reseed(*args, **kwargs)


for module in ("bottlenecks.layers.quantize", "bottlenecks.layers.codebook_features"):
    sys.modules[module].reseed_codes = _counting_reseed


def data(n_train: int, n_test: int, batch_size: int) -> ArrayDataModule:
    """Four noisy clusters in 8 dimensions, one class each (fixed, the same on every rank)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 3

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=g)
        return centres[y] + torch.randn(n, 8, generator=g), y

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(40), split(n_test)
    return ArrayDataModule.from_arrays(xt, yt, xv, yv, xs, ys, batch_size=batch_size, eval_batch_size=16)


def trainer(epochs: int, broadcast_buffers: bool = True) -> L.Trainer:
    strategy = (
        DDPStrategy(process_group_backend="gloo", broadcast_buffers=broadcast_buffers) if WORLD > 1 else "auto"
    )
    return L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=strategy, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )


class RankNamedMetric(Bottleneck):
    """Identity, with a metric whose name differs between ranks (a broken layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features = self.out_features = 8
        self.scale = torch.nn.Parameter(torch.ones(8))

    def forward(self, h, concepts=None, intervention_mask=None):  # noqa: ANN001, ANN201
        return BottleneckOutput(z=h * self.scale, metrics={f"rank{RANK}_only": h.mean()})


def identical() -> dict:
    layers = {
        "vq": lambda: VectorQuantizer(8, codebook_size=16, num_heads=2, ema=True, init="kmeans",
                                      dead_code_threshold=1.5, usage_decay=0.5),
        "rvq": lambda: ResidualVectorQuantizer(8, num_quantizers=2, codebook_size=16, ema=True, init="kmeans",
                                               dead_code_threshold=1.5, usage_decay=0.5),
        "dkvb": lambda: DiscreteKeyValueBottleneck(8, num_heads=2, keys_per_head=16, num_classes=4),
        "codebook_features": lambda: CodebookFeatures(8, codebook_size=16, top_k=2, init="kmeans",
                                                      dead_code_threshold=3.0, usage_decay=0.5),
    }
    out = {}
    # each layer also with its host-side checks deferred to the end of every batch (what the
    # model does on GPUs): the sync-free paths must keep the ranks identical too
    for (name, make), defer in ((item, d) for item in layers.items() for d in (False, True)):
        L.seed_everything(100 + RANK, verbose=False)  # different on every rank on purpose
        RESEEDS[0] = 0
        model = BottleneckModel(make(), num_classes=4, lr=1e-2)
        model.defer_host_checks = defer
        trainer(epochs=3, broadcast_buffers=False).fit(model, datamodule=data(96, 40, 16))
        out[name + ("-deferred" if defer else "")] = {
            "state": {k: v.detach().clone() for k, v in model.bottleneck.state_dict().items()},
            "reseeds": RESEEDS[0]}
    # the helpers themselves, while the process group is still up: rows of unequal counts
    from bottlenecks import distributed

    distributed.barrier()
    out["gathered"] = distributed.all_gather_cat(torch.full((RANK + 1, 2), float(RANK)))
    out["summed"] = distributed.all_reduce_sum_(torch.tensor([float(RANK + 1)]))
    out["broadcast"] = distributed.broadcast_(torch.tensor([float(RANK + 10)]), src=1)
    # a layer that logs a metric under another name on each rank: a clear error, not a hang
    model = BottleneckModel(RankNamedMetric(), num_classes=4)
    try:
        trainer(epochs=1).fit(model, datamodule=data(96, 40, 16))
    except RuntimeError as err:
        out["names_error"] = str(err)
    return out


def equivalence() -> dict:
    L.seed_everything(0, verbose=False)
    dm = data(256, 101, 64 // WORLD)
    model = BottleneckModel(VectorQuantizer(8, codebook_size=8, ema=True, init="kmeans"), num_classes=4, lr=1e-2)
    # Lightning's DDP setup re-seeds every rank with the global seed (reset_seed); do the same
    # here so that the k-means initialisation draws the same numbers in one process
    L.seed_everything(0, verbose=False)
    tr = trainer(epochs=3)
    tr.fit(model, datamodule=dm)
    fit_metrics = {k: float(v) for k, v in tr.callback_metrics.items()}
    tr.test(model, datamodule=dm, verbose=False)
    test_metrics = {k: float(v) for k, v in tr.callback_metrics.items() if k.startswith("test/")}
    # the same test metrics computed directly over the whole test set, in this process
    ts = dm.split("test")
    model.eval()
    with torch.no_grad():
        y_hat, _ = model(ts.x)
    direct = {"acc": float((y_hat.argmax(-1) == ts.y).float().mean()),
              "task_loss": float(torch.nn.functional.cross_entropy(y_hat, ts.y)), "n": len(ts.y)}
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "fit": fit_metrics, "test": test_metrics, "direct": direct}


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], sys.argv[2]
    result = {"identical": identical, "equivalence": equivalence}[scenario]()
    torch.save(result, os.path.join(out_dir, f"rank{RANK}.pt"))
    # Tear the process group down while every rank is still here: under load, gloo's threads
    # otherwise meet interpreter shutdown and abort ("terminate called without an active exception").
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
