"""A checkpoint from someone else must never run code when the CLI loads it."""

import pickle

import pytest
import torch

from bottlenecks.cli import SafeTrainer, main


class _Payload:
    """Unpickling this object writes a marker file: proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _args(tmp_path, *extra):
    return ["fit", "--config", "configs/ib_vib_diabetes.yaml",
            "--trainer.max_epochs", "2",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", *extra]


def test_crafted_best_model_path_is_never_unpickled(tmp_path, capsys):
    main(_args(tmp_path))
    ckpt_dir = tmp_path / "runs" / "ib_vib_diabetes" / "version_0" / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    # The crafted last.ckpt itself is clean (loads under weights_only=True); its checkpoint
    # callback state names the pickle as the best model.
    state = torch.load(last, weights_only=True)
    for key, cb_state in state["callbacks"].items():
        if "ModelCheckpoint" in key:
            cb_state["best_model_path"] = str(evil)
            cb_state["dirpath"] = str(ckpt_dir)
    torch.save(state, last)
    torch.load(last, weights_only=True)  # still a valid, safe checkpoint

    with pytest.warns(UserWarning, match="not testing checkpoint"):
        main(_args(tmp_path, "--ckpt_path", str(last)))  # nothing left to train: the crafted best path stands
    assert not marker.exists(), "a crafted checkpoint executed code"


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_as_checkpoint_is_refused_without_running(tmp_path, capsys, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
    with pytest.raises(SystemExit) as e:
        main(["test", "--config", "configs/ib_vib_diabetes.yaml", "--ckpt_path", str(evil),
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert not marker.exists()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bottlenecks: error:")]
    assert len(lines) == 1
    assert ("refused to load a checkpoint" in lines[0] or f"checkpoint {evil} is corrupt" in lines[0])
    assert "weights_only` set to `False`" not in lines[0]


def test_safe_trainer_refuses_weights_only_false():
    with pytest.raises(ValueError, match="weights_only=True"):
        SafeTrainer(logger=False).test(None, ckpt_path="x.ckpt", weights_only=False)


def test_no_loader_in_the_package_asks_for_weights_only_false():
    import re
    from pathlib import Path

    call = re.compile(r"weights_only\s*=\s*False\s*[,)]")
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for folder in ("src", "benchmarks", "examples")
        for p in (root / folder).rglob("*.py")
        if call.search(p.read_text())
    ]
    assert offenders == []
