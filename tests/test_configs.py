"""Every config in configs/ parses against the classes it names (paths, argument names, types)."""

from pathlib import Path

import pytest

from bottlenecks.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
# configs run by `python -m bottlenecks.continual`, not by the Lightning CLI
CONTINUAL = {"dkvb_continual_digits.yaml", "dkvb_continual_shapes.yaml"}


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name not in CONTINUAL], ids=lambda c: c.name)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(config), "--print_config"])
    assert e.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed


def test_there_is_a_config_per_method():
    names = {c.name for c in CONFIGS}
    for expected in ("cbm_shapes.yaml", "cem_shapes.yaml", "ecbm_shapes.yaml", "vq_digits.yaml",
                     "dkvb_digits.yaml", "ib_vib_diabetes.yaml", "ib_csib_diabetes.yaml"):
        assert expected in names


@pytest.mark.parametrize("config", sorted(CONTINUAL), ids=str)
def test_continual_config_parses(config, capsys):
    """The class-incremental configs parse against run_experiment and the learners they name."""
    from bottlenecks.continual.__main__ import main as continual_main

    path = Path(__file__).resolve().parents[1] / "configs" / config
    with pytest.raises(SystemExit) as e:
        continual_main(["--config", str(path), "--print_config"])
    assert e.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "DiscreteKeyValueBottleneck" in printed and "classes_per_task" in printed
