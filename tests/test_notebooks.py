"""The notebooks in examples/ are committed without outputs; each runs top to bottom in its own
test file (test_notebook_*.py), so it cannot rot."""

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
TESTS = Path(__file__).resolve().parent


def test_every_notebook_has_a_test_that_runs_it():
    names = {p.name for p in NOTEBOOKS}
    assert {"cbm_walkthrough.ipynb", "information_plane.ipynb", "codebook_dkvb_continual.ipynb"} <= names
    runners = " ".join(p.read_text() for p in TESTS.glob("test_notebook_*.py"))
    for name in names:
        assert f'run_notebook("{name}"' in runners, f"no test runs examples/{name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{path.name} cell {i} has outputs; clear them before committing "
                "(jupyter nbconvert --clear-output --inplace examples/*.ipynb)"
            )
