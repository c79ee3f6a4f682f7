"""Gloo ranks fill the feature cache through BottleneckDataModule.setup (test_feature_cache.py forks them).

    python tests/_ddp_cache_worker.py OUT_DIR PORT [WORLD_SIZE]   # the same, by hand

Each rank saves ``rank<r>.pt``: its train/val features, how many dataset items it read
per split, and the test features that rank 0 alone loads on demand afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bottlenecks.data.base import ConceptDataset  # noqa: E402
from bottlenecks.data.datamodule import BottleneckDataModule  # noqa: E402
from bottlenecks.encoders import FrozenEncoder, ImageTransform  # noqa: E402

SIZES = {"train": 37, "val": 11, "test": 8}


class CountingImages(ConceptDataset):
    """n random (3, 12, 12) images; ``reads`` counts the items read in this process."""

    num_classes = 2
    concept_names = ["a", "b"]

    def __init__(self, n: int, seed: int) -> None:
        self.images = torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
        self.reads = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"x": self.images[i], "y": torch.tensor(i % 2), "index": i}

    def targets(self) -> Tensor:
        return torch.arange(len(self)) % 2

    def concept_table(self) -> Tensor:
        return (self.images.mean((1, 2, 3))[:, None] > torch.tensor([0.45, 0.55])).float()

    def fingerprint(self) -> str:
        return f"counting-{len(self)}-{int(self.images.sum() * 1000)}"


class TinyConvEncoder(FrozenEncoder):
    """A seeded conv → pool → linear network, 6 features."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        super().__init__(net, name="tiny_conv", feature_dim=6, transform=ImageTransform(12),
                         architecture="tiny conv", weights="seed-0", num_threads=1)


class CountingData(BottleneckDataModule):
    def __init__(self, cache_dir: str) -> None:
        super().__init__(encoder=TinyConvEncoder(), cache_dir=cache_dir, encode_batch_size=4)

    def make_dataset(self, split: str) -> ConceptDataset:
        return CountingImages(SIZES[split], seed=list(SIZES).index(split))


def run(rank: int, world: int, out: str, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dm = CountingData(str(Path(out) / "cache"))
        dm.setup("fit")
        result = {s: dm.split(s).x.clone() for s in ("train", "val")}
        result["reads"] = {s: dm.dataset(s).reads for s in ("train", "val")}
        dist.barrier()
        if rank == 0:  # a split loaded on one rank only must not wait for the others
            result["test"] = dm.split("test").x.clone()
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_failing(rank: int, world: int, out: str, port: int) -> None:
    """Rank 1's compute raises: every rank must raise (none waits forever); the message goes to ``error<r>.txt``."""
    import torch.distributed as dist

    from bottlenecks.encoders import FeatureCache

    def compute_rows(start: int, stop: int) -> Tensor:
        if rank == 1:
            raise ValueError("rank 1 cannot read its images")
        return torch.zeros(stop - start, 3)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        FeatureCache(Path(out) / "cache").get_or_compute_rows({"what": "failing"}, compute_rows, 10)
    except Exception as e:  # noqa: BLE001 - the test reads what each rank raised
        (Path(out) / f"error{rank}.txt").write_text(f"{type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def run_collectives(rank: int, world: int, out: str, port: int) -> None:
    """bottlenecks.distributed under gloo: saves what each helper returned on this rank to ``coll<r>.pt``."""
    import torch.distributed as dist

    from bottlenecks import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mine = torch.full((rank + 1, 2), float(rank))  # unequal row counts: 1 on rank 0, 2 on rank 1
        summed = distributed.all_reduce_sum_(torch.tensor([rank + 1.0]))
        sent = distributed.broadcast_(torch.tensor([10.0 * (rank + 1)]), src=1)
        distributed.barrier()
        torch.save({"is": distributed.is_distributed(), "rank": distributed.rank(), "world": distributed.world_size(),
                    "gathered": distributed.all_gather_cat(mine), "summed": summed, "sent": sent},
                   Path(out) / f"coll{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    out_dir, port = sys.argv[1], int(sys.argv[2])
    world = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(1)
    mp.spawn(run, args=(world, out_dir, port), nprocs=world, join=True)
