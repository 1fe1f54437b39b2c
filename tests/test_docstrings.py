"""Every Examples section in the public modules runs and prints what it claims."""

import doctest
import importlib

import pytest

import pacarray

MODULES = sorted(
    {getattr(getattr(pacarray, name), "__module__", None) or getattr(pacarray, name).__name__
     for name in pacarray.__all__}
)


@pytest.mark.parametrize("module_name", MODULES)
def test_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, module_name) if t.examples]
    assert tests, f"{module_name} has no examples"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} example(s) failed in {module_name}"


def test_every_public_function_has_an_example():
    objects = {name: getattr(pacarray, name) for name in pacarray.__all__}
    missing = [
        name for name, obj in objects.items() if callable(obj) and ">>>" not in (obj.__doc__ or "")
    ]
    assert not missing, f"public objects without a runnable example: {missing}"
