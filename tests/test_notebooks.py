"""Every notebook in notebooks/ runs from top to bottom without an error, and is kept stripped.

The notebooks run with nbclient in one kernel of the current interpreter, one after the other:
starting a kernel and loading NumPy, SciPy, matplotlib, pacarray and its cached Numba kernels
costs about 3 s of CPU, which would otherwise be paid seven times. Before each notebook the
kernel forgets every name (``%reset -f``), closes its figures and gets Numba's full thread
count back, so a notebook that relies on a name or a setting of another one still fails.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

#: Seconds one cell may take: a cold Numba cache compiles a kernel in up to ~30 s.
CELL_TIMEOUT = 600

_RESET = """\
%reset -f
import matplotlib.pyplot as _plt
import numba as _numba
_plt.close("all")
_numba.set_num_threads(_numba.config.NUMBA_NUM_THREADS)
del _plt, _numba
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    # A "python3" kernel spec that names this interpreter: the one ipykernel installs says
    # "python", which is whatever comes first on PATH (not the test's virtual environment).
    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / "python3"
    spec_dir.mkdir()
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (pacarray tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    # The kernel imports the pacarray these tests import. Started in notebooks/, it would
    # otherwise find the installed copy (site-packages after `pip install .`, as in .ci/run)
    # rather than the checkout that pytest put first on sys.path: other source files, so
    # Numba's cache (keyed on the source path) misses and every kernel compiles again.
    import pacarray

    package_root = str(Path(pacarray.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    manager.start_kernel(cwd=str(NOTEBOOKS[0].parent) if NOTEBOOKS else None, env=env)
    try:
        yield manager
    finally:
        manager.shutdown_kernel(now=True)


def test_there_are_notebooks():
    names = [path.name for path in NOTEBOOKS]
    assert len(names) >= 7, names


def test_kernel_imports_the_pacarray_under_test(kernel):
    # Not the installed copy: the notebooks test this checkout, with the kernels the test
    # processes compiled (tests/conftest.py) already in Numba's cache.
    import pacarray

    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell("import pacarray; print(pacarray.__file__)"))
    nbclient.NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT).execute()
    printed = "".join(output.get("text", "") for output in notebook.cells[0].outputs).strip()
    assert Path(printed).resolve() == Path(pacarray.__file__).resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_stripped(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} is committed with outputs; clear them before committing"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, kernel):
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(_RESET))
    client = nbclient.NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(path.parent)}})
    # A failing cell raises CellExecutionError with the cell's source and traceback.
    client.execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    figures = sum("image/png" in output.get("data", {})
                  for cell in notebook.cells for output in cell.get("outputs", []))
    assert figures >= 1, f"{path.name} drew no figure"
