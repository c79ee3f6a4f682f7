"""Runs a notebook of examples/ top to bottom in a fresh kernel (used by test_notebook_*.py:
one file per notebook, so `pytest -n 2 --dist loadfile` spreads them over the workers)."""

import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_notebook(name: str, tmp_path: Path) -> None:
    """Executes every cell of ``examples/<name>`` (cwd: ``tmp_path``, so runs/ and .cache/ land
    there); a failing cell fails the test with its traceback. The notebook must draw inline
    figures and raise no error."""
    nbformat = pytest.importorskip("nbformat", reason="install the test extra: pip install -e '.[test]'")
    nbclient = pytest.importorskip("nbclient", reason="install the test extra: pip install -e '.[test]'")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    keep = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MPLBACKEND", "OMP_NUM_THREADS")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")  # 2 workers, 2 cores
    os.environ.pop("MPLBACKEND", None)  # the notebooks draw inline
    shared_cache = EXAMPLES.parent / ".cache" / "features"
    if shared_cache.is_dir():  # reuse features encoded earlier (the cache key makes this safe)
        (tmp_path / ".cache").mkdir()
        os.symlink(shared_cache, tmp_path / ".cache" / "features")
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 3, f"{name} drew {images} inline figures (a plot switched pyplot off the inline backend?)"
    assert not [o for o in outputs if o.get("output_type") == "error"]
