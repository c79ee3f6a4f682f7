"""The notebooks in examples/ run top to bottom, offline, so they cannot rot; and they are
committed without outputs."""

import json
import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="install the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="install the test extra: pip install -e '.[test]'")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"cbm_walkthrough.ipynb", "information_plane.ipynb", "codebook_dkvb_continual.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{path.name} cell {i} has outputs; clear them before committing "
                "(jupyter nbconvert --clear-output --inplace examples/*.ipynb)"
            )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    """Executes every cell in a fresh kernel (cwd: a temporary folder, so runs/ and .cache/
    land there); a failing cell fails the test with its traceback."""
    nb = nbformat.read(path, as_version=4)
    env_keep = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MPLBACKEND")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.pop("MPLBACKEND", None)  # the notebooks draw inline
    shared_cache = EXAMPLES.parent / ".cache" / "features"
    if shared_cache.is_dir():  # reuse features encoded earlier (same key, same bytes)
        (tmp_path / ".cache").mkdir()
        os.symlink(shared_cache, tmp_path / ".cache" / "features")
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        for k, v in env_keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 2, f"{path.name} drew {images} inline figures"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
