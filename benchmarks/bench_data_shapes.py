"""How fast ShapesDataset builds its tables and renders images (one process, one thread).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_data_shapes.py [--n 10000]``. Prints a table.
"""

from __future__ import annotations

import argparse
import time

from bottlenecks.data.shapes import ShapesDataset


def measure(n: int, sizes: list[int]) -> list[tuple[int, int, float, float, float, float]]:
    """(image_size, n, build s, tables s, items s, ms per item) for each size."""
    out = []
    for size in sizes:
        t0 = time.perf_counter()
        ds = ShapesDataset("train", n=n, image_size=size)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds.concept_table(), ds.targets()
        t_table = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        t_items = time.perf_counter() - t0
        out.append((size, n, t_build, t_table, t_items, 1e3 * t_items / n))
    return out


def rows(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run_all.py: building the tables and rendering every image."""
    n, sizes = (200, [64]) if quick else (10000, [64, 128, 224])
    out = []
    for size, n, tb, tt, ti, per in measure(n, sizes):
        common = {"size": f"{n} images, {size} px", "reference": "-", "reference_s": None, "peak_mb": None}
        out.append({"operation": "ShapesDataset build + tables", "ours": "ShapesDataset", "ours_s": tb + tt,
                    "note": f"tables {tt:.4f} s", **common})
        out.append({"operation": "ShapesDataset render every item", "ours": "ShapesDataset[i]", "ours_s": ti,
                    "note": f"{per:.3f} ms/item", **common})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000, help="images per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    args = parser.parse_args()

    rows = measure(args.n, args.sizes)

    header = f"{'image_size':>10} {'n':>7} {'build s':>8} {'tables s':>9} {'items s':>8} {'ms/item':>8}"
    print(header)
    print("-" * len(header))
    for size, n, tb, tt, ti, per in rows:
        print(f"{size:>10} {n:>7} {tb:>8.3f} {tt:>9.4f} {ti:>8.2f} {per:>8.3f}")


if __name__ == "__main__":
    main()
