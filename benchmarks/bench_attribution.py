"""Seconds per image of each attribution method through the frozen lite0 encoder (CPU).

    python benchmarks/bench_attribution.py                       # 16 Shapes images, lite0 at 64 px
    python benchmarks/bench_attribution.py --image-size 96 --n 32

A joint-CBM-shaped model (lite0 → 10 Shapes concepts → 9 classes, untrained: speed does not
depend on the weights) attributes one concept unit with every method of
:func:`bottlenecks.analysis.attribute` (captum defaults of this package: IG 16 steps, occlusion
window 1/8 of the side with stride 1/16) and the class decision to the units
(:func:`bottlenecks.analysis.unit_contributions`).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bottlenecks.analysis import METHODS, attribute, unit_contributions  # noqa: E402
from bottlenecks.data.shapes import SHAPES_CONCEPTS, ShapesDataset  # noqa: E402
from bottlenecks.layers.concept import ConceptBottleneck  # noqa: E402
from bottlenecks.models.module import BottleneckModel  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64, help="lite0 input size")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = ShapesDataset(split="test", n=args.n, image_size=64)
    x = torch.stack([ds[i]["x"] for i in range(len(ds))])
    model = BottleneckModel(
        ConceptBottleneck(1280, concept_names=list(SHAPES_CONCEPTS)), num_classes=9,
        encoder={"name": "lite0", "image_size": args.image_size},
    )
    attribute(model, x[:2], unit="red")  # build the encoder, warm up
    print(f"{args.n} images (64 px) through lite0 at {args.image_size} px, {args.threads} threads\n")
    print("| method | seconds | images / s |")
    print("|---|---|---|")
    for method in METHODS:
        t = time.perf_counter()
        attribute(model, x, unit="red", method=method)
        dt = time.perf_counter() - t
        print(f"| {method} | {dt:.2f} | {args.n / dt:.1f} |", flush=True)
    t = time.perf_counter()
    unit_contributions(model, x)
    dt = time.perf_counter() - t
    print(f"| unit_contributions (linear head) | {dt:.2f} | {args.n / dt:.1f} |")


if __name__ == "__main__":
    main()
