"""How one test is shared by the test files of several public ops.

The tests of each public op live in its own file (``test_pac_kernel.py``, ``test_pac_pool.py``,
``test_pac_conv.py``, ``test_pac_conv_transpose.py``): the parity against the oracle
(``reference.py``), the gradients and the argument checks. Many checks are the same for every
op (a bad ``stride`` is rejected, the vjp matches finite differences, ...). Such a test is
written once, in ``_gradient_cases.py`` or ``_validation_cases.py``, with an ``op`` argument and
the :func:`ops` decorator naming the ops it applies to. Each op's file sets ``OP`` and imports
the shared tests that apply to that op; pytest collects an imported test function like one
defined in the file, and :func:`parametrize_op` (called from ``conftest.py``) gives ``op`` the
file's value. So ``pytest tests/test_pac_pool.py`` runs everything about ``pac_pool``.

Tests that compare several ops within one test stay in ``test_ops_common.py``.
"""

from __future__ import annotations

#: The public ops, by the names the shared tests use.
ALL_OPS = ("kernel", "conv", "conv_transpose", "pool")


def ops(*names):
    """Declare the ops a shared test applies to (the files that import it must match).

    Parameters
    ----------
    *names : str
        Op names from :data:`ALL_OPS`.

    Returns
    -------
    callable
        A decorator that records ``names`` on the test function and returns it unchanged.
    """
    unknown = [name for name in names if name not in ALL_OPS]
    if not names or unknown:
        raise ValueError(f"ops: expected names from {ALL_OPS}, got {names!r}")

    def record(function):
        function.ops = names
        return function

    return record


def _parametrized_names(metafunc):
    """Argument names that ``@pytest.mark.parametrize`` already sets on the test."""
    names = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs["argnames"]
        if isinstance(argnames, str):
            argnames = argnames.split(",")
        names.update(name.strip() for name in argnames)
    return names


def parametrize_op(metafunc):
    """Give a shared test's ``op`` argument the ``OP`` of the file that imported it.

    Runs after pytest's own parametrization (the hook in ``conftest.py`` is ``trylast``), so the
    op's id comes last, as it did when ``op`` was the outermost ``parametrize`` of the test: the
    test names, and with them the seeds of the ``rng`` fixture, stay as they were.

    Parameters
    ----------
    metafunc : pytest.Metafunc
        The test being parametrized.

    Raises
    ------
    ValueError
        When a file imports a shared test that is not declared for the file's op.
    """
    module_op = getattr(metafunc.module, "OP", None)
    if module_op is None or "op" not in metafunc.fixturenames:
        return
    if "op" in _parametrized_names(metafunc):
        return
    declared = getattr(metafunc.function, "ops", None)
    if declared is None or module_op not in declared:
        raise ValueError(
            f"{metafunc.module.__name__}: {metafunc.function.__name__} is declared for ops "
            f"{declared!r}, not for OP={module_op!r}"
        )
    metafunc.parametrize("op", [module_op])
