"""Issue 15, items 5 and 6: one error boundary (one line, exit 2) and commands that would do nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bottlenecks.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "ib_vib_diabetes.yaml")


def _args(tmp: Path, sub: str = "fit", *extra: str) -> list[str]:
    return [sub, "--config", CONFIG, "--trainer.max_epochs", "2",
            "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
            "--trainer.default_root_dir", str(tmp / "runs"),
            "--trainer.enable_progress_bar", "false", *extra]


def _error_line(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr that starts with the prefix."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bottlenecks: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "usage:" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    main(_args(tmp, "fit", "--test_after_fit", "false"))
    return tmp / "runs" / "ib_vib_diabetes" / "version_0" / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------ config mistakes
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--trainer.max_epochz", "3"], "unknown option --trainer.max_epochz (did you mean '--trainer.max_epochs'?)"),
        (["--model.init_args.lrr", "0.1"], "model: option 'lrr' is not accepted by BottleneckModel (did you mean 'lr'?)"),
        (["--model.init_args.bottleneck.class_path", "bottlenecks.layers.stochastic.GausianBottleneck"],
         "class bottlenecks.layers.stochastic.GausianBottleneck does not exist (did you mean 'GaussianBottleneck'?)"),
        (["--trainer.max_epochs", "many"], "trainer.max_epochs: expected int, got 'many'"),
    ],
)
def test_config_mistakes_are_one_line_with_the_closest_option(tmp_path, capsys, extra, expected):
    assert expected in _error_line(capsys, _args(tmp_path, "fit", *extra))


def test_misspelled_subcommand_names_every_command(capsys):
    line = _error_line(capsys, ["reprot", "runs/x"])
    assert "unknown subcommand 'reprot' (did you mean 'report'?)" in line
    assert all(f"'{c}'" in line for c in ("fit", "validate", "test", "predict", "edit", "report"))


def test_misspelled_key_in_a_yaml_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(CONFIG).read_text().replace("    weight_decay:", "    weight_decai:"))
    line = _error_line(capsys, ["fit", "--config", str(bad)])
    assert "option 'weight_decai' is not accepted by BottleneckModel (did you mean 'weight_decay'?)" in line


def test_unexpected_exceptions_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import bottlenecks.cli as cli

    def boom(self):
        raise RuntimeError("something\nspread over lines")

    monkeypatch.setattr(cli.BottlenecksCLI, "before_fit", boom)
    line = _error_line(capsys, _args(tmp_path))
    assert "RuntimeError: something spread over lines (set BOTTLENECKS_DEBUG=1" in line
    monkeypatch.setenv("BOTTLENECKS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something"):
        main(_args(tmp_path))


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "missing"])
def test_unreadable_checkpoints_are_one_line(tmp_path, capsys, trained, kind):
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        bad.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    elif kind == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "empty":
        bad.write_bytes(b"\n")
    line = _error_line(capsys, _args(tmp_path, "test", "--ckpt_path", str(bad)))
    assert str(bad) in line
    assert ("does not exist" if kind == "missing" else "corrupt or not a PyTorch checkpoint") in line
    assert "weights_only` set to `False`" not in line and "weights_only=False will" not in line


def test_checkpoint_with_a_config_for_another_bottleneck_is_refused(tmp_path, capsys, trained):
    line = _error_line(capsys, _args(tmp_path, "test", "--ckpt_path", str(trained),
                                     "--model.init_args.bottleneck", "bottlenecks.layers.concept.IdentityBottleneck"))
    assert "holds a GaussianBottleneck bottleneck but the config asks for IdentityBottleneck" in line


def test_checkpoint_from_other_data_is_refused(tmp_path, capsys, trained):
    g = torch.Generator().manual_seed(0)
    npz = tmp_path / "other.npz"
    np.savez(npz, x_train=torch.randn(60, 7, generator=g).numpy(), y_train=torch.randn(60, generator=g).numpy())
    line = _error_line(capsys, _args(tmp_path, "test", "--ckpt_path", str(trained),
                                     "--data", "bottlenecks.data.datamodule.ArrayDataModule",
                                     "--data.init_args.path", str(npz), "--data.init_args.task", "regression"))
    assert f"checkpoint {trained} does not fit this data" in line and "7) here" in line


# ------------------------------------------------------------------ commands that do nothing
@pytest.mark.parametrize(
    "sub, extra, expected",
    [
        ("fit", ["--trainer.max_epochs", "0"], "trainer.max_epochs=0: `fit` would train nothing"),
        ("fit", ["--model.init_args.lr", "0"], "model.lr=0.0: the optimiser would not move the weights"),
        ("test", [], "`bottlenecks test` needs --ckpt_path"),
        ("validate", [], "`bottlenecks validate` needs --ckpt_path"),
        ("predict", ["--ckpt_path", "TRAINED"], "`bottlenecks predict` has no prediction writer"),
    ],
)
def test_commands_that_would_do_nothing_are_refused(tmp_path, capsys, trained, sub, extra, expected):
    extra = [str(trained) if a == "TRAINED" else a for a in extra]
    assert expected in _error_line(capsys, _args(tmp_path, sub, *extra))
    assert not list((tmp_path / "runs").rglob("*.ckpt")) if (tmp_path / "runs").exists() else True


# ------------------------------------------------------------------ disk and run directories
def test_a_full_disk_leaves_no_checkpoint_and_no_temporary_file(tmp_path):
    """RLIMIT_FSIZE makes every write past 40 kB fail as a full disk would (the checkpoint is larger)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))\n"
        "from bottlenecks.cli import main\n"
        f"main({_args(tmp_path, 'fit', '--test_after_fit', 'false')!r})\n"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("bottlenecks: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot write" in lines[0] and ".ckpt" in lines[0] and "too large" in lines[0]
    files = [p.name for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(".ckpt")], files  # nothing under a valid-looking name
    assert not [f for f in files if ".tmp" in f], files


def test_two_runs_that_pick_the_same_version_get_different_directories(tmp_path, monkeypatch):
    """The race: a second run lists the versions before the first creates version_0."""
    from lightning.pytorch.loggers import CSVLogger

    taken = tmp_path / "runs" / "ib_vib_diabetes" / "version_0"
    taken.mkdir(parents=True)
    (taken / "config.yaml").write_text("# written by a run started a moment earlier\n")
    monkeypatch.setattr(CSVLogger, "_get_next_version", lambda self: 0)
    main(_args(tmp_path, "fit", "--test_after_fit", "false", "--trainer.max_epochs", "1"))
    assert (taken / "config.yaml").read_text().startswith("# written by a run")
    assert (tmp_path / "runs" / "ib_vib_diabetes" / "version_1" / "checkpoints" / "last.ckpt").is_file()


def test_checkpoint_settings_that_override_the_config_are_warned_about(tmp_path, trained):
    with pytest.warns(UserWarning, match=r"the checkpoint's are used: out_features=16 \(config: 32\)"):
        main(_args(tmp_path, "test", "--ckpt_path", str(trained), "--trainer.logger", "false",
                   "--model.init_args.bottleneck.init_args.out_features", "32"))


@pytest.mark.parametrize(
    "error, expected",
    [
        (PermissionError(13, "Permission denied", "/ro/runs/version_0"),
         "cannot write /ro/runs/version_0: permission denied (Permission denied)"),
        (OSError(30, "Read-only file system", "/ro/runs/version_0"),
         "cannot write /ro/runs/version_0: the filesystem is read-only"),
        (OSError(28, "No space left on device", "/full/last.ckpt"),
         "cannot write /full/last.ckpt: the disk is full"),
    ],
)
def test_disk_errors_are_one_line(tmp_path, capsys, monkeypatch, error, expected):
    import bottlenecks.cli as cli

    def refuse(trainer):
        raise error

    monkeypatch.setattr(cli, "_claim_run_dir", refuse)
    assert expected in _error_line(capsys, _args(tmp_path))


def test_a_file_where_the_run_folder_should_be_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    line = _error_line(capsys, _args(tmp_path))
    assert "runs" in line and "Not a directory" in line
