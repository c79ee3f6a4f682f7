"""Issue 13: `make bench` prints one table and writes JSON that later runs compare with."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_all)


#: smoke-run here: the others need the [bench] extra (quantisers' peers), or compile numba
#: kernels / load lite0 weights for minutes on a cold cache (estimators, encoders)
SMOKE = ["bench_training_overhead", "bench_streaming", "bench_data_shapes", "bench_feature_cache", "bench_exact_fits"]


def _with_rows() -> list[str]:
    """The smoke-run scripts (every listed script must expose rows())."""
    for s in run_all.SCRIPTS:
        assert "def rows(" in (ROOT / "benchmarks" / f"{s}.py").read_text(), f"{s} has no rows()"
    return [s for s in run_all.SCRIPTS if s in SMOKE]


def test_quick_run_prints_one_table_and_writes_comparable_json(tmp_path, capsys):
    names = [run_all.short_name(s) for s in _with_rows()]
    assert {"training_overhead", "streaming", "data_shapes"} <= set(names)
    out = tmp_path / "run.json"
    report = run_all.main(["--quick", "--only", *names, "--json", str(out)])
    table = capsys.readouterr().out
    header = "| operation | size | ours | reference | ours s | reference s | ratio | peak MB | note |"
    assert table.count(header) == 1
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    m = saved["machine"]
    assert {"cores", "torch", "device", "threads", "loadavg_before", "loadavg_after", "hostname"} <= set(m)
    assert {r["script"] for r in saved["rows"]} == set(_with_rows())
    for row in saved["rows"]:
        assert set(run_all.ROW_KEYS) | {"ratio", "script"} == set(row)
        assert row["ours_s"] > 0
        if row["reference_s"]:
            assert row["ratio"] == pytest.approx(row["ours_s"] / row["reference_s"])
        assert f"| {row['operation']} | {row['size']} | {row['ours']} |" in table
    # a later run compares with this one: the old ratio sits next to the new one
    old = dict(saved, rows=[dict(r, ratio=9.5) for r in saved["rows"]])
    (tmp_path / "old.json").write_text(json.dumps(old))
    run_all.main(["--quick", "--only", "data_shapes", "--json", str(tmp_path / "new.json"),
                  "--compare", str(tmp_path / "old.json")])
    table = capsys.readouterr().out
    assert "| ratio | old ratio |" in table
    new = json.loads((tmp_path / "new.json").read_text())
    assert all(r["old_ratio"] == 9.5 for r in new["rows"])


def test_a_script_without_rows_is_named(tmp_path):
    (tmp_path / "bench_old.py").write_text("def main():\n    print('a table')\n")
    with pytest.raises(SystemExit, match=r"benchmarks/bench_old.py has no rows\(quick=False\) function"):
        run_all.run(["bench_old"], quick=True, directory=tmp_path)
    (tmp_path / "bench_bad.py").write_text("def rows(quick=False):\n    return [{'operation': 'x'}]\n")
    with pytest.raises(ValueError, match=r"bench_bad.rows\(\): row 'x' lacks \['size'"):
        run_all.run(["bench_bad"], quick=True, directory=tmp_path)
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.resolve(["no_such"])
    sys.path.remove(str(tmp_path))
