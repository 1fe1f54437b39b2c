"""Sphinx configuration of pacarray's documentation.

Build (the ``docs`` extra installs Sphinx, numpydoc, the PyData theme and myst-nb)::

    pip install ".[docs]"
    sphinx-build -W -b html docs build/docs

Pages are Markdown (MyST) and reStructuredText; the notebooks of ``notebooks/`` are rendered
through the ``docs/guide/notebooks`` link and executed during the build (``nb_execution_mode``
"cache": outputs are kept in ``build/.jupyter_cache`` and recomputed only when a notebook
changes; ``-D nb_execution_mode=off`` renders them without outputs, as the test suite does,
since tests/test_notebooks.py executes them already). The API pages are generated from the
docstrings by autosummary into ``docs/api/generated`` (ignored by git).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

import pacarray

project = "pacarray"
author = "pacarray developers"
copyright = "pacarray developers"
version = release = pacarray.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.extlinks",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
]

exclude_patterns = ["_build", "examples", "**/.ipynb_checkpoints"]
templates_path = []
html_static_path = ["_static"]

# --- HTML -------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"pacarray {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
# Pages without sub-pages get no (empty) section navigation on the left.
html_sidebars = {page: [] for page in (
    "index", "guide/getting-started", "guide/theory", "guide/command-line", "guide/benchmarks",
    "porting", "design", "architecture",
)}

# The docstrings cite papers with :doi:`...`.
extlinks = {"doi": ("https://doi.org/%s", "doi:%s")}

# --- API pages --------------------------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"          # numpydoc's Parameters sections say the types
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- Markdown and notebooks -------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
# design.md and architecture.md link to each other's sections by their GitHub anchors.
myst_heading_anchors = 3
nb_execution_mode = "cache"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_excludepatterns = []
nb_merge_streams = True


# --- `pacarray --help` in the pages -----------------------------------------------------------
def _help_text(words):
    # A fixed width, so that the page does not depend on the terminal the build runs in.
    environment = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run([sys.executable, "-m", "pacarray", *words, "--help"],
                            capture_output=True, text=True, env=environment, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"'pacarray {' '.join(words)} --help' failed:\n{result.stderr}")
    return f"$ pacarray {' '.join([*words, '--help'])}\n{result.stdout.rstrip()}"


def _command_names():
    from pacarray.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    return list(commands.choices)


class CommandHelp(SphinxDirective):
    """``{pacarray-help} [COMMAND | all]``: the help the installed command line prints.

    ``all`` gives the top-level help and then every command's under a heading of its name, so
    the page lists a new command without being edited.
    """

    optional_arguments = 1
    has_content = False

    def _block(self, words):
        try:
            text = _help_text(words)
        except RuntimeError as error:
            raise self.error(str(error)) from None
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return block

    def run(self):
        words = self.arguments[0].split() if self.arguments else []
        if words != ["all"]:
            return [self._block(words)]
        result = [self._block([])]
        for name in _command_names():
            result.append(nodes.rubric(text=f"pacarray {name}"))
            result.append(self._block([name]))
        return result


def setup(app):
    app.add_directive("pacarray-help", CommandHelp)
    return {"parallel_read_safe": True}
