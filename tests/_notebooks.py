"""Runs a notebook of examples/ top to bottom in a fresh kernel (used by test_notebook_*.py:
one file per notebook, so `pytest -n 2 --dist loadfile` spreads them over the workers)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Executed in a child process: the kernel's event loop, signals and environment stay out of the
# pytest worker.
_RUNNER = """
import sys, nbformat, nbclient
src, out, cwd = sys.argv[1:4]
nb = nbformat.read(src, as_version=4)
try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
finally:
    nbformat.write(nb, out)
"""


def run_notebook(name: str, tmp_path: Path) -> None:
    """Executes every cell of ``examples/<name>`` (cwd: ``tmp_path``, so runs/ and .cache/ land
    there); a failing cell fails the test with its traceback. The notebook must draw inline
    figures and raise no error."""
    nbformat = pytest.importorskip("nbformat", reason="install the test extra: pip install -e '.[test]'")
    pytest.importorskip("nbclient", reason="install the test extra: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="install the test extra: pip install -e '.[test]'")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")  # 2 workers, 2 cores
    env.pop("MPLBACKEND", None)  # the notebooks draw inline
    shared_cache = EXAMPLES.parent / ".cache" / "features"
    if shared_cache.is_dir():  # reuse features encoded earlier (the cache key makes this safe)
        (tmp_path / ".cache").mkdir()
        os.symlink(shared_cache, tmp_path / ".cache" / "features")
    out = tmp_path / f"executed-{name}"
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(EXAMPLES / name), str(out), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"examples/{name} failed:\n{proc.stderr[-6000:]}", pytrace=False)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 3, f"{name} drew {images} inline figures (a plot switched pyplot off the inline backend?)"
    assert not [o for o in outputs if o.get("output_type") == "error"]
