"""The two tiers of the test suite: quick (``python -m pytest -m "not slow"``) and full.

A large parameter grid keeps a few of its cases in the quick tier, chosen so that the quick tier
still runs every op, option and backend path once; the others carry the ``slow`` marker and run
in the full tier only (plain ``python -m pytest``, as CI does). ``--durations=25`` shows where
the time goes.
"""

from __future__ import annotations

import pytest

SLOW = pytest.mark.slow
_PARAMETER_SET = type(pytest.param(None))  # what pytest.param returns (no public name)


def tiered(params, quick):
    """``params`` for ``pytest.mark.parametrize``, all but the ``quick`` positions marked slow.

    Parameters
    ----------
    params : iterable
        The values of one argument, or ``pytest.param`` objects (any number of arguments; their
        ids and marks are kept).
    quick : collection of int
        Positions in ``params`` that stay in the quick tier.

    Returns
    -------
    list
        ``pytest.param`` objects in the order of ``params``.

    Raises
    ------
    ValueError
        When ``quick`` is empty or names a position outside ``params``.
    """
    params = list(params)
    quick = set(quick)
    if not quick or not quick <= set(range(len(params))):
        raise ValueError(f"quick must name positions in 0..{len(params) - 1}, got {sorted(quick)}")
    tiered_params = []
    for position, param in enumerate(params):
        marks = () if position in quick else (SLOW,)
        if isinstance(param, _PARAMETER_SET):
            tiered_params.append(
                pytest.param(*param.values, id=param.id, marks=(*param.marks, *marks))
            )
        else:
            tiered_params.append(pytest.param(param, marks=marks))
    return tiered_params


def tiered_values(values, quick_values):
    """``values`` for ``pytest.mark.parametrize``, all but ``quick_values`` marked slow.

    Parameters
    ----------
    values : sequence
        The values of one argument.
    quick_values : iterable
        Values from ``values`` that stay in the quick tier.

    Returns
    -------
    list
        ``pytest.param`` objects in the order of ``values``.
    """
    values = list(values)
    return tiered(values, [values.index(value) for value in quick_values])

