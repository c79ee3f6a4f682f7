"""examples/information_plane.ipynb runs top to bottom, offline (see _notebooks.py)."""

import pytest
from _notebooks import run_notebook


@pytest.mark.slow
def test_notebook_runs(tmp_path):
    run_notebook("information_plane.ipynb", tmp_path)
