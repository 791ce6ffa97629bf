"""Every notebook in ``notebooks/`` runs top to bottom in a Jupyter kernel, with its tiny CI settings.

Each notebook is executed by ``nbclient`` in a fresh kernel, started in the notebook's folder, as
Jupyter would run it; a cell that raises fails the test with that cell's traceback. The kernel is
stopped at once when the last cell is done (``shutdown_kernel="immediate"``): a graceful stop
waited 2-3 s per notebook for the kernel's clean-up, for nothing a test checks. The notebooks read
``APP_NOTEBOOK_FAST`` (default ``1``, small and fast; ``0`` runs their full settings).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TIMEOUT = 600  # seconds per cell


@pytest.mark.long
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=TIMEOUT,
        kernel_name=notebook.metadata.get("kernelspec", {}).get("name", "python3"),
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(path.parent)}},
    )
    # one thread in the kernel: pytest-xdist runs another worker on the other core
    environment = dict(os.environ, MPLBACKEND="agg", OMP_NUM_THREADS="1")
    try:
        client.execute(cwd=str(path.parent), env=environment)
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name}: a cell raised\n{error}", pytrace=False)


def test_the_notebooks_are_found():
    """A moved folder or a renamed suffix must not leave the notebooks silently untested."""
    names = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert {"hyperspy_quickstart.ipynb", "py4dstem_workflow.ipynb", "app_vs_fpp.ipynb"} <= names
