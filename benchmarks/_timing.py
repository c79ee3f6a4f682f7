"""Small timing helpers shared by the benchmark scripts (see run_all.py for the row format)."""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable


def interleaved_medians(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each function ``repeats`` times, interleaved (a, b, a, b, ...), and return the median
    of the seconds each returns: a change in the machine's load hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
