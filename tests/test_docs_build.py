"""The documentation site builds with warnings as errors, and has the pages it promises.

The build runs on a copy of docs/ and notebooks/ (autosummary writes its generated pages into
the source folder) in a separate process, with ``nb_execution_mode=off``: the notebooks are
rendered from their source here, since tests/test_notebooks.py already executes every one of
them. A docstring that Sphinx or numpydoc cannot parse, a broken cross-reference or toctree, or
a failing ``pacarray --help`` fails this test.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Looked up, not imported, until all four are there: importing Sphinx alone into a process
# that then skips changes other packages' behaviour (SciPy's docstring machinery imports
# ``sphinx.ext`` when ``sphinx`` is in ``sys.modules``; an image with a partial Sphinx then
# fails to import ``scipy.signal`` in every later test of that process).
_DOCS_MODULES = ("sphinx", "numpydoc", "pydata_sphinx_theme", "myst_nb")
if any(importlib.util.find_spec(_module) is None for _module in _DOCS_MODULES):
    pytest.skip("the docs extra is not installed", allow_module_level=True)
for _module in _DOCS_MODULES:
    pytest.importorskip(_module, reason="the docs extra is not installed")

ROOT = Path(__file__).resolve().parents[1]

# An end-to-end run of about 15 s: left out of the quick tier (`-m "not slow"`).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("docs")
    ignore = shutil.ignore_patterns("_build", "generated", ".jupyter_cache", "__pycache__")
    shutil.copytree(ROOT / "docs", work / "docs", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "notebooks", work / "notebooks", ignore=ignore)
    out = work / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
               "-D", "nb_execution_mode=off", str(work / "docs"), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_front_page(site):
    page = (site / "index.html").read_text()
    assert "Pixel-adaptive convolution" in page
    assert (site / "_images" / "front.png").exists() or (site / "_static" / "front.png").exists()
    for target in ("guide/getting-started.html", "guide/theory.html", "api/index.html",
                   "guide/notebooks.html", "guide/command-line.html", "guide/benchmarks.html",
                   "porting.html", "design.html"):
        assert target in page, target


def test_every_public_name_has_an_api_page(site):
    import pacarray

    generated = site / "api" / "generated"
    for name in pacarray.__all__:
        if name == "testing":
            continue
        assert (generated / f"pacarray.{name}.html").exists(), name
    page = (generated / "pacarray.pac_conv.html").read_text()
    assert "Parameters" in page and "Examples" in page
    for name in ("viz.plot_kernel", "viz.kernel_gallery", "testing.check_gradients",
                 "data.sample_image"):
        assert (generated / f"pacarray.{name}.html").exists(), name


def test_user_guide_and_notebooks(site):
    for page in ("smoothing", "upsampling", "sparse-data", "pooling", "segmentation",
                 "gradients", "gpu"):
        assert (site / "guide" / f"{page}.html").exists(), page
    notebooks = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
    for stem in notebooks:
        assert (site / "guide" / "notebooks" / f"{stem}.html").exists(), stem


def test_command_line_page_shows_the_help(site):
    page = (site / "guide" / "command-line.html").read_text()
    assert "usage: pacarray [-h]" in page
    for command in ("bilateral", "upsample", "fill", "dpp", "crf", "info", "demo"):
        assert f"usage: pacarray {command}" in page, command
