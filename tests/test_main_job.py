"""The main job end to end through the real CLI, on a small Shapes subset."""

import json
import warnings

import pytest
import yaml

from bottlenecks.cli import main
from bottlenecks.encoders.cache import FeatureCacheWarning

SMALL = [
    "--data.init_args.n_train", "600",
    "--data.init_args.n_val", "200",
    "--data.init_args.n_test", "200",
    "--data.init_args.encoder", '{"name": "lite0", "image_size": 64}',
    "--trainer.max_epochs", "25",
    "--model.init_args.lr", "0.03",
]


def _args(tmp_path, *extra):
    return ["fit", "--config", "configs/cbm_shapes.yaml", *SMALL,
            "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", *extra]


@pytest.mark.slow
def test_main_job_small(tmp_path, capsys):
    main(_args(tmp_path))
    run = tmp_path / "runs" / "cbm_shapes" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    out = capsys.readouterr().out
    assert "linear probe" in out and "run directory" in out
    # 600 training images at 64 px: concepts well above chance (0.5), label above chance (1/9)
    assert metrics["test/concept_acc"] > 0.85
    assert metrics["test/task_acc"] > 0.5
    assert len(metrics["per_concept"]) == 10
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["n_train"] == 600
    assert (run / "checkpoints" / "last.ckpt").exists()
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 4  # features of train, val, test + the probe results
    assert len(list((tmp_path / "cache" / "probes").glob("*.json"))) == 2  # the probe and the scikit-learn reference

    # second run: the cache is warm and read back (no new entries, no warnings), new run dir
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(_args(tmp_path, "--trainer.max_epochs", "1"))
    assert not [w for w in caught if issubclass(w.category, FeatureCacheWarning)]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()} == stamps
    assert (tmp_path / "runs" / "cbm_shapes" / "version_1" / "metrics.json").exists()
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_unknown_encoder_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "--data.init_args.encoder", "not_an_encoder"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bottlenecks: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "not_an_encoder" in lines[0] and "lite0" in lines[0]  # names the problem and what is known
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))
