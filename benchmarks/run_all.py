"""Run every speed benchmark in turn and print their tables (``make bench``).

    python benchmarks/run_all.py [--quick]

Each script is also runnable alone; see its docstring for its options.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: script, arguments always passed, extra arguments for --quick
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("bench_data_shapes.py", [], ["--n", "2000"]),
    ("bench_encoders.py", [], ["--quick"]),
    ("bench_feature_cache.py", [], ["--repeats", "2"]),
    ("bench_training_overhead.py", [], ["--epochs", "2"]),
    ("bench_quantizers.py", [], ["--quick"]),
    ("bench_mi.py", [], ["--quick"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the smaller setting of each benchmark")
    args = ap.parse_args()
    failed = []
    for script, base, quick in BENCHMARKS:
        cmd = [sys.executable, str(HERE / script), *base, *(quick if args.quick else [])]
        print(f"\n=== {script} {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        if subprocess.call(cmd) != 0:
            failed.append(script)
        print(f"--- {script}: {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        sys.exit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
