"""Run every speed benchmark, print ONE table and write it as JSON (``make bench``).

    python benchmarks/run_all.py                      # everything; JSON in benchmarks/results/
    python benchmarks/run_all.py --quick              # the small setting of each script (seconds)
    python benchmarks/run_all.py --only training_overhead streaming
    python benchmarks/run_all.py --compare benchmarks/results/OLD.json --json new.json

Each script listed in :data:`SCRIPTS` keeps its own CLI and exposes ``rows(quick=False)``:
a list of dicts with the keys of :data:`ROW_KEYS` (``ours_s`` / ``reference_s``: median
seconds measured in the same run; ``reference_s`` may be None). The runner adds
``ratio = ours_s / reference_s`` (lower is better: a target "ours at >= 0.8x the
reference's throughput" is ``ratio <= 1.25``) and, with ``--compare``, the ratio of the same
row (same script, operation, size and ``ours``) in an older JSON file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the benchmark scripts, in the order they run (file names without ``.py``)
SCRIPTS: list[str] = [
    "bench_training_overhead",
    "bench_streaming",
    "bench_data_shapes",
    "bench_encoders",
    "bench_feature_cache",
    "bench_quantizers",
    "bench_mi",
    "bench_exact_fits",
]

#: the keys every row of ``rows()`` has
ROW_KEYS = ("operation", "size", "ours", "ours_s", "reference", "reference_s", "peak_mb", "note")

COLUMNS = ("operation", "size", "ours", "reference", "ours s", "reference s", "ratio", "peak MB", "note")


def short_name(script: str) -> str:
    """``bench_training_overhead`` → ``training_overhead`` (what ``--only`` accepts)."""
    return script[len("bench_"):] if script.startswith("bench_") else script


def resolve(names: list[str] | None, scripts: list[str] = SCRIPTS) -> list[str]:
    """The scripts named by ``--only`` (full or short names); all of them for None."""
    if not names:
        return list(scripts)
    by_name = {s: s for s in scripts} | {short_name(s): s for s in scripts}
    unknown = [n for n in names if n.removesuffix(".py") not in by_name]
    if unknown:
        raise SystemExit(f"--only: unknown benchmark {unknown}; known: {[short_name(s) for s in scripts]}")
    return [by_name[n.removesuffix(".py")] for n in names]


def load_rows_function(script: str, directory: Path = HERE) -> Any:
    """The ``rows`` function of ``directory/script.py``; a clear error when it has none."""
    path = directory / f"{script}.py"
    if not path.exists():
        raise SystemExit(f"benchmark script {path} does not exist (listed in run_all.SCRIPTS)")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location(f"_bench_{script}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fn = getattr(module, "rows", None)
    if not callable(fn):
        raise SystemExit(
            f"benchmarks/{script}.py has no rows(quick=False) function; every script run by run_all.py "
            f"returns its measurements as rows (keys {list(ROW_KEYS)})"
        )
    return fn


def check_row(row: Any, script: str) -> dict[str, Any]:
    """A row with exactly the agreed keys and types; a clear error naming the script otherwise."""
    if not isinstance(row, dict):
        raise ValueError(f"{script}.rows() returned a {type(row).__name__}, expected dicts")
    missing = [k for k in ROW_KEYS if k not in row]
    extra = [k for k in row if k not in ROW_KEYS]
    if missing or extra:
        raise ValueError(f"{script}.rows(): row {row.get('operation')!r} lacks {missing} / has unknown keys {extra}")
    for key in ("ours_s", "reference_s", "peak_mb"):
        v = row[key]
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{script}.rows(): {key} of {row['operation']!r} must be seconds >= 0 or None, got {v!r}")
    if row["ours_s"] is None:
        raise ValueError(f"{script}.rows(): ours_s of {row['operation']!r} is None; every row measures ours")
    return dict(row)


def machine() -> dict[str, Any]:
    import torch

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:  # not Linux
        return None


def run(scripts: list[str], quick: bool = False, directory: Path = HERE) -> dict[str, Any]:
    """Run the scripts' ``rows(quick)`` and return the report (machine, rows with ratios)."""
    functions = {s: load_rows_function(s, directory) for s in scripts}  # fail before measuring
    report: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {**machine(), "loadavg_before": loadavg()},
        "rows": [],
    }
    for script, fn in functions.items():
        t0 = time.perf_counter()
        print(f"running {script} ...", file=sys.stderr, flush=True)
        for row in fn(quick=quick):
            row = check_row(row, script)
            ref = row["reference_s"]
            row["ratio"] = row["ours_s"] / ref if ref else None
            row["script"] = script
            report["rows"].append(row)
        print(f"  {script}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    report["machine"]["loadavg_after"] = loadavg()
    return report


def _row_key(row: dict[str, Any]) -> tuple:
    return (row.get("script"), row["operation"], row["size"], row["ours"])


def add_comparison(report: dict[str, Any], old: dict[str, Any]) -> None:
    """Each row gets ``old_ratio``: the ratio of the same row in ``old`` (None when absent)."""
    before = {_row_key(r): r.get("ratio") for r in old.get("rows", [])}
    report["compared_with"] = old.get("created")
    for row in report["rows"]:
        row["old_ratio"] = before.get(_row_key(row))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(report: dict[str, Any]) -> str:
    """The report as one Markdown table, the machine and load above it."""
    m = report["machine"]
    compare = "compared_with" in report
    cols = [*COLUMNS[:7], *(["old ratio"] if compare else []), *COLUMNS[7:]]
    lines = [
        f"{m['hostname']}: {m['cores']} cores, {m['device']}, torch {m['torch']}, {m['threads']} threads; "
        f"load {m.get('loadavg_before')} -> {m.get('loadavg_after')}" + ("  (quick)" if report["quick"] else ""),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in report["rows"]:
        cells = [r["operation"], r["size"], r["ours"], r["reference"], _fmt(r["ours_s"]), _fmt(r["reference_s"]),
                 _fmt(r["ratio"]), *([_fmt(r.get("old_ratio"))] if compare else []), _fmt(r["peak_mb"], 4), r["note"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def default_json_path() -> Path:
    day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return HERE / "results" / f"{day}-{socket.gethostname()}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small setting of each benchmark (seconds)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these scripts only (e.g. training_overhead)")
    ap.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/<date>-<host>.json)")
    ap.add_argument("--compare", type=Path, metavar="OLD.json", help="add the ratios of an earlier run as a column")
    args = ap.parse_args(argv)
    old = None
    if args.compare is not None:
        try:
            old = json.loads(args.compare.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"--compare {args.compare}: cannot read an earlier run's JSON ({e})") from e
    report = run(resolve(args.only), quick=args.quick)
    if old is not None:
        add_comparison(report, old)
    print(format_table(report))
    out = args.json or default_json_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
