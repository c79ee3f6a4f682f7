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
                     "dkvb_digits.yaml", "ib_vib_diabetes.yaml", "ib_csib_diabetes.yaml",
                     "label_free_shapes.yaml", "labo_shapes.yaml", "sparse_cbm_shapes.yaml", "dn_cbm_shapes.yaml"):
        assert expected in names
