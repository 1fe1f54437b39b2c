"""Checking gradients: finite differences and the dot-product (adjoint) test.

Point these at pacarray's ``*_vjp`` functions or at your own compositions of them. Both take

* ``function(**inputs) -> array``: the forward computation,
* ``vjp(grad_output, **inputs) -> gradients``: its vector-Jacobian product, returning a mapping
  or an object with one attribute per input name (pacarray's named tuples qualify),
* ``inputs``: a dict of keyword arguments. The inputs to check (``wrt``, default: every float
  array and every float scalar in ``inputs``) are converted to float64 copies first; the
  others are passed through unchanged.

and return a :class:`GradientReport` with the largest relative error per input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GradientReport", "check_gradients", "dot_product_test"]


@dataclass(frozen=True)
class GradientReport:
    """Largest relative error per checked input.

    Attributes
    ----------
    errors : dict of str to float
        ``max |analytic - numeric| / max(|analytic|, |numeric|)`` over the directions tried,
        per input name (0 when both are exactly 0).
    tolerance : float
        The threshold :attr:`passed` compares against.
    values : dict of str to list of (float, float)
        ``(analytic, numeric)`` directional derivatives (or inner products) behind each error.
    """

    errors: dict[str, float]
    tolerance: float
    values: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        """The largest error over all inputs (0 when nothing was checked)."""
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """``True`` when every input's error is at most :attr:`tolerance`."""
        return self.max_error <= self.tolerance

    def __str__(self) -> str:
        width = max([len(name) for name in self.errors] + [5])
        lines = [f"{'input'.ljust(width)}  max relative error  (tolerance {self.tolerance:.1e})"]
        for name, error in self.errors.items():
            verdict = "ok" if error <= self.tolerance else "FAILED"
            lines.append(f"{name.ljust(width)}  {error:18.3e}  {verdict}")
        return "\n".join(lines)


def _is_float_scalar(value) -> bool:
    return isinstance(value, (float, np.floating))


def _is_float_array(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _checked_names(inputs: Mapping, wrt) -> list[str]:
    if wrt is None:
        names = [n for n, v in inputs.items() if _is_float_array(v) or _is_float_scalar(v)]
        if not names:
            raise ValueError("inputs holds no float array or float scalar to check; pass wrt=")
        return names
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"wrt names {missing} that are not in inputs {sorted(inputs)}")
    return names


def _as_float64(value, name: str):
    if _is_float_scalar(value) or isinstance(value, (int, np.integer)):
        return float(value)
    array = np.array(value, dtype=np.float64)  # a copy: the caller's input is never touched
    if array.ndim == 0:
        return float(array)
    return array


def _gradient_of(gradients, name: str, like):
    if isinstance(gradients, Mapping):
        value = gradients.get(name)
    else:
        value = getattr(gradients, name, None)
    if value is None:
        raise ValueError(f"vjp returned no gradient for input {name!r}")
    value = np.asarray(value, dtype=np.float64)
    if value.shape != np.shape(like):
        raise ValueError(
            f"vjp's gradient for {name!r} has shape {value.shape}, the input has shape "
            f"{np.shape(like)}"
        )
    return value


def _direction(rng, like):
    if isinstance(like, float):
        return float(rng.choice([-1.0, 1.0]))
    return rng.standard_normal(np.shape(like))


def _relative(analytic: float, numeric: float) -> float:
    scale = max(abs(analytic), abs(numeric))
    return 0.0 if scale == 0.0 else abs(analytic - numeric) / scale


def check_gradients(
    function: Callable,
    vjp: Callable,
    inputs: Mapping,
    *,
    wrt=None,
    directions: int = 3,
    step: float = 1e-3,
    tolerance: float = 1e-6,
    seed: int = 0,
) -> GradientReport:
    """Compare a vector-Jacobian product with central finite differences in float64.

    For a random upstream gradient ``v`` and directions ``u`` the analytic value
    ``<vjp(v), u>`` is compared with the numeric derivative of ``<v, function(x + h u)>``
    at ``h = 0``. The first direction is the analytic gradient itself (rescaled), which
    exposes wrong magnitudes; the others are random Gaussian.

    Parameters
    ----------
    function : callable
        ``function(**inputs)`` returns an array.
    vjp : callable
        ``vjp(grad_output, **inputs)`` returns the gradients by input name (mapping or
        attributes).
    inputs : dict
        Keyword arguments of both. Float arrays, float scalars and numeric sequences named in
        ``wrt`` are converted to float64 copies.
    wrt : str or sequence of str, optional
        Inputs to check; default every float array and float scalar in ``inputs``.
    directions : int, default 3
        Directions per input.
    step : float, default 1e-3
        Step ``h`` relative to ``max(1, max|x|)`` (directions are scaled to ``max|u| = 1``).
        The derivative is Richardson-extrapolated from steps ``h`` and ``h/2``, so its
        truncation error is O(h^4). Inputs must stay valid within ``x +- h u`` (for example a
        mask in [0, 1] needs values at least ``h`` away from 0 and 1).
    tolerance : float, default 1e-6
        Threshold for :attr:`GradientReport.passed`.
    seed : int, default 0
        Seed of the random upstream gradient and directions.

    Returns
    -------
    GradientReport
        Largest relative error per input.

    Raises
    ------
    ValueError
        When ``wrt`` names a missing input, the vjp returns no gradient or a wrongly shaped
        one for a checked input.

    See Also
    --------
    dot_product_test : exact check of the adjoint for inputs the function is linear in.

    Notes
    -----
    Near kinks (``max(0, .)``) or jumps (``Z == 0`` in a normalized kernel) finite differences
    are meaningless; keep test points away from them.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_conv
    >>> from pacarray.gradients import pac_conv_vjp
    >>> from pacarray.testing import check_gradients
    >>> rng = np.random.default_rng(0)
    >>> inputs = dict(x=rng.random((1, 2, 6, 6)), weight=rng.random((3, 2, 3, 3)),
    ...               guide=rng.random((1, 2, 6, 6)), padding=1, normalize="kernel")
    >>> report = check_gradients(pac_conv, pac_conv_vjp, inputs)
    >>> sorted(report.errors), report.passed
    (['guide', 'weight', 'x'], True)
    """
    names = _checked_names(inputs, wrt)
    point = dict(inputs)
    for name in names:
        point[name] = _as_float64(point[name], name)
    rng = np.random.default_rng(seed)
    output = np.asarray(function(**point), dtype=np.float64)
    upstream = rng.standard_normal(output.shape)
    gradients = vjp(upstream, **point)

    def objective(name, value):
        return float(np.vdot(upstream, np.asarray(function(**{**point, name: value}),
                                                   dtype=np.float64)))

    errors, values = {}, {}
    for name in names:
        x = point[name]
        grad = _gradient_of(gradients, name, x)
        h = step * max(1.0, float(np.max(np.abs(x))))
        pairs = []
        for index in range(directions):
            u = _direction(rng, x)
            if index == 0 and np.any(grad != 0):
                u = grad if isinstance(x, np.ndarray) else float(grad)
            u = u / float(np.max(np.abs(u)))

            def central(step_size, name=name, x=x, u=u):
                return (objective(name, x + step_size * u)
                        - objective(name, x - step_size * u)) / (2.0 * step_size)

            numeric = (4.0 * central(h / 2) - central(h)) / 3.0
            analytic = float(np.vdot(grad, u))
            pairs.append((analytic, numeric))
        values[name] = pairs
        errors[name] = max(_relative(a, b) for a, b in pairs)
    return GradientReport(errors, tolerance, values)


def dot_product_test(
    function: Callable,
    vjp: Callable,
    inputs: Mapping,
    *,
    wrt=None,
    trials: int = 2,
    tolerance: float = 1e-10,
    seed: int = 0,
) -> GradientReport:
    """Check ``<v, J u> == <J^T v, u>`` for inputs the function is linear (or affine) in.

    For each input named in ``wrt``, ``J u = function(input=u) - function(input=0)`` with the
    other inputs fixed, ``J^T v = vjp(v)[input]``. Up to rounding both sides are equal exactly,
    so this is a much sharper test than finite differences, for linear maps only (for example
    ``pac_conv`` in ``x``, ``weight``, ``bias`` or an explicit ``kernel``).

    Parameters
    ----------
    function, vjp, inputs, wrt
        As in :func:`check_gradients`.
    trials : int, default 2
        Random ``(u, v)`` pairs per input.
    tolerance : float, default 1e-10
        Threshold for :attr:`GradientReport.passed`.
    seed : int, default 0

    Returns
    -------
    GradientReport
        ``errors[name] = max |<v, J u> - <J^T v, u>| / max(|<v, J u>|, |<J^T v, u>|)``.

    Raises
    ------
    ValueError
        As :func:`check_gradients`.

    See Also
    --------
    check_gradients

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_pool
    >>> from pacarray.gradients import pac_pool_vjp
    >>> from pacarray.testing import dot_product_test
    >>> rng = np.random.default_rng(0)
    >>> inputs = dict(x=rng.random((1, 2, 7, 7)), kernel_size=3, stride=2,
    ...               guide=rng.random((1, 3, 7, 7)), normalize="kernel")
    >>> dot_product_test(pac_pool, pac_pool_vjp, inputs, wrt="x").passed
    True
    """
    names = _checked_names(inputs, wrt)
    point = dict(inputs)
    for name in names:
        point[name] = _as_float64(point[name], name)
    rng = np.random.default_rng(seed)
    output_shape = np.shape(function(**point))
    errors, values = {}, {}
    for name in names:
        x = point[name]
        zero = 0.0 if isinstance(x, float) else np.zeros_like(x)
        offset = np.asarray(function(**{**point, name: zero}), dtype=np.float64)
        pairs = []
        for _ in range(trials):
            u = _direction(rng, x)
            v = rng.standard_normal(output_shape)
            image = np.asarray(function(**{**point, name: u}), dtype=np.float64) - offset
            adjoint = _gradient_of(vjp(v, **point), name, x)
            pairs.append((float(np.vdot(adjoint, u)), float(np.vdot(v, image))))
        values[name] = pairs
        errors[name] = max(_relative(a, b) for a, b in pairs)
    return GradientReport(errors, tolerance, values)
