"""Load a worked example of ``docs/examples`` as a module, for the tests that run it."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@contextlib.contextmanager
def example_module(filename: str):
    """``docs/examples/<filename>`` executed as a module, registered in ``sys.modules`` while
    it is in use (dataclasses look their module up while the file loads)."""
    name = f"{Path(filename).stem}_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
