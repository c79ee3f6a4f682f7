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


@pytest.mark.parametrize("config", sorted(CONTINUAL), ids=str)
def test_continual_config_parses_with_the_data_linked_into_every_learner(config, capsys):
    import yaml

    from bottlenecks.continual.__main__ import main as continual_main

    path = Path(__file__).resolve().parents[1] / "configs" / config
    raw = path.read_text()
    assert "num_classes" not in raw and "in_features" not in raw  # nothing the data states is repeated
    with pytest.raises(SystemExit) as e:
        continual_main(["--config", str(path), "--print_config"])
    assert e.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    dkvb = printed["learners"][0]["init_args"]["model"]["init_args"]
    width = 64 if "digits" in config else 1280
    classes = 10 if "digits" in config else 9
    assert dkvb["num_classes"] == classes
    assert dkvb["bottleneck"]["init_args"]["in_features"] == width
    assert dkvb["bottleneck"]["init_args"]["num_classes"] == classes
    probe = printed["learners"][1]["init_args"]
    assert (probe["feature_dim"], probe["num_classes"]) == (width, classes)
