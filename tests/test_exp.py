"""The CPU kernels' exponential: error bounds, flush thresholds, NaN, and one vector code path.

The bounds are a little above the figures measured on a 4e7-point grid (``pacarray._cpu._exp``)
and are checked here on a coarser grid so that the module runs in seconds.
"""

import numpy as np
import pytest
from numba import njit

from pacarray._cpu import _exp
from pacarray._cpu._exp import (
    FLUSH2_BELOW_FLOAT32,
    FLUSH2_BELOW_FLOAT64,
    FLUSH_BELOW_FLOAT32,
    FLUSH_BELOW_FLOAT64,
    exp2_nonpositive,
    exp_nonpositive,
)


@njit(cache=True)
def _apply(x, out):
    for j in range(x.shape[0]):
        out[j] = exp_nonpositive(x[j])


@njit(cache=True)
def _apply_for_float32(x, out):
    for j in range(x.shape[0]):
        out[j] = exp_nonpositive(x[j], np.float32)


@njit(cache=True)
def _apply_for_dtype_of(x, out):
    for j in range(x.shape[0]):
        out[j] = exp_nonpositive(np.float64(x[j]), out.dtype)


def _compiled(function, x):
    out = np.empty_like(x)
    function(x, out)
    return out


def _grid(dtype, lower):
    """Evenly spaced points of [lower, 0] plus a denser run next to 0, where r is not reduced."""
    x = np.concatenate([np.linspace(lower, 0.0, 400_001), np.linspace(-1.0, 0.0, 100_001)])
    return x.astype(dtype)


def _relative_error(values, x):
    exact = np.exp(x.astype(np.longdouble))
    return float(np.max(np.abs((values.astype(np.longdouble) - exact) / exact)))


@pytest.mark.parametrize(
    ("dtype", "lower", "bound"),
    [(np.float32, FLUSH_BELOW_FLOAT32, 2.5e-7), (np.float64, FLUSH_BELOW_FLOAT64, 9.5e-15)],
)
def test_relative_error_down_to_the_threshold(dtype, lower, bound):
    x = _grid(dtype, lower)
    values = _compiled(_apply, x)
    assert values.dtype == dtype
    assert _relative_error(values, x) < bound
    assert values[x == 0][0] == 1.0


def test_float32_precision_of_a_float64_argument():
    """The fused kernel's float32 path: float64 arithmetic, the shorter polynomial."""
    x = _grid(np.float64, FLUSH_BELOW_FLOAT64)
    values = _compiled(_apply_for_float32, x)
    assert values.dtype == np.float64
    error = _relative_error(values, x)
    assert 1e-10 < error < 7.5e-9  # truly the shorter polynomial, yet far below float32's eps
    # ``array.dtype`` names the precision as well as ``np.float32`` does
    out32 = np.empty(x.shape, np.float32)
    _apply_for_dtype_of(x, out32)
    np.testing.assert_array_equal(out32, values.astype(np.float32))
    out64 = np.empty(x.shape, np.float64)
    _apply_for_dtype_of(x, out64)
    np.testing.assert_array_equal(out64, _compiled(_apply, x))


@pytest.mark.parametrize(("dtype", "lower"), [(np.float32, -69.0), (np.float64, -600.0)])
def test_flush_threshold(dtype, lower):
    """Exactly 0 below the threshold, the smallest weight at it is normal, and the thresholds are
    the ones ``pacarray.filters`` drops its spatial taps by."""
    assert (FLUSH_BELOW_FLOAT32, FLUSH_BELOW_FLOAT64) == (-69.0, -600.0)
    below = np.array([np.nextafter(dtype(lower), dtype(-np.inf)), lower - 0.5, lower - 50.0,
                      -1e30, -np.inf], dtype)
    np.testing.assert_array_equal(_compiled(_apply, below), 0.0)
    at = _compiled(_apply, np.array([lower], dtype))[0]
    assert at > 0 and np.isclose(at, np.exp(np.float64(lower)), rtol=1e-6)
    # a weight times any value down to 1e-7 stays normal: no subnormal slow path
    assert at * dtype(1e-7) >= np.finfo(dtype).smallest_normal


def _front_end_thresholds():
    """The bilateral front end's flush exponents by dtype (wherever the front end keeps them)."""
    import importlib

    for module, name in (("pacarray._bilateral", "FLUSH_EXPONENT"),
                         ("pacarray.filters", "_flush_exponent")):
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        lookup = found.get if isinstance(found, dict) else found
        return lookup(np.dtype(np.float32)), lookup(np.dtype(np.float64))
    pytest.skip("no flush threshold found in the bilateral front end")


def test_the_front_end_drops_taps_at_the_same_thresholds():
    assert _front_end_thresholds() == (FLUSH_BELOW_FLOAT32, FLUSH_BELOW_FLOAT64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_and_zero_gives_one(dtype):
    x = np.array([np.nan, -np.nan, 0.0, -0.0, -1e-30], dtype)
    values = _compiled(_apply, x)
    assert np.isnan(values[:2]).all()
    np.testing.assert_array_equal(values[2:], 1.0)
    assert np.isnan(_compiled(_apply_for_float32, x.astype(np.float64))[:2]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moderate_positive_arguments(dtype):
    """Not part of the contract, but a spatial weight above 1 gives a small positive argument."""
    x = np.linspace(0.0, 80.0, 10_001).astype(dtype)
    assert _relative_error(_compiled(_apply, x), x) < (5e-7 if dtype == np.float32 else 2e-14)


def test_python_reference_flushes_too():
    assert exp_nonpositive(np.float32(-70.0)) == 0.0
    assert exp_nonpositive(np.float32(-1.0)) == np.exp(np.float32(-1.0))
    assert exp_nonpositive(np.float64(-601.0)) == 0.0
    assert exp_nonpositive(-2.0) == np.exp(-2.0)


@njit(cache=True, fastmath=True)
def _apply_fast_caller(x, out):
    for j in range(x.shape[0]):
        out[j] = exp_nonpositive(x[j])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_callers_fast_math_flags_do_not_change_the_bits(dtype):
    """The overload compiles with its own flags (FMA contraction only), so every kernel gets the
    same bits whatever fast-math options it was compiled with."""
    x = _grid(dtype, -80.0)
    np.testing.assert_array_equal(_compiled(_apply_fast_caller, x), _compiled(_apply, x))


def test_vectorized_without_scalar_conversions():
    """The loops compile to 256-bit vector code with no scalar float-to-int conversion, which is
    what the bit construction of ``2**k`` is for (AVX2 has no packed float64 -> int64)."""
    # Fresh, uncached compilations: Numba cannot show the assembly of cached code.
    plain = njit(_apply.py_func)
    for_float32 = njit(_apply_for_float32.py_func)
    for function, dtype in ((plain, np.float32), (plain, np.float64), (for_float32, np.float64)):
        x = np.zeros(16, dtype)
        _compiled(function, x)
        signature = next(s for s in function.signatures if str(s[0].dtype) == x.dtype.name)
        assembly = function.inspect_asm(signature)
        assert assembly.count("\n") > 50, "not the assembly of the loop"
        assert "cvttsd2si" not in assembly and "cvtsd2si" not in assembly
        if "ymm" not in assembly and "zmm" not in assembly:
            pytest.skip("no AVX on this machine")


def test_rejects_an_unknown_precision():
    with pytest.raises(TypeError, match="precision"):
        _exp._result_is_float32(object())


# The base-2 exponential of the bilateral kernels.

@njit(cache=True)
def _apply2(t, out):
    for j in range(t.shape[0]):
        out[j] = exp2_nonpositive(t[j])


@njit(cache=True, fastmath=True)
def _apply2_fast_caller(t, out):
    for j in range(t.shape[0]):
        out[j] = exp2_nonpositive(t[j])


def _relative_error2(values, t, per_unit=False):
    """Largest relative error against 2**t; ``per_unit``: divided by max(1, |t|) (the float64
    path rounds t * ln 2, an error proportional to |t|)."""
    exact = np.exp2(t.astype(np.longdouble))
    error = np.abs((values.astype(np.longdouble) - exact) / exact)
    return float(np.max(error / np.maximum(np.abs(t), 1) if per_unit else error))


@pytest.mark.parametrize(
    ("dtype", "lower", "bound"),
    [(np.float32, FLUSH2_BELOW_FLOAT32, 2.3e-7), (np.float64, FLUSH2_BELOW_FLOAT64, 9.5e-15)],
)
def test_exp2_relative_error_down_to_the_threshold(dtype, lower, bound):
    t = _grid(dtype, lower)
    values = _compiled(_apply2, t)
    assert values.dtype == dtype
    error = _relative_error2(values, t, per_unit=dtype == np.float64)
    assert error < bound
    if dtype == np.float32:
        assert error > 1e-7  # truly float32 arithmetic (degree 5), not a float64 detour
    assert values[t == 0][0] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp2_flushes_the_same_weights_as_exp(dtype):
    """Exactly 0 below threshold / ln 2, and the thresholds are exp's divided by ln 2, so that
    the taps the front end keeps keep a nonzero weight in base 2 too."""
    lower = FLUSH2_BELOW_FLOAT32 if dtype == np.float32 else FLUSH2_BELOW_FLOAT64
    natural = FLUSH_BELOW_FLOAT32 if dtype == np.float32 else FLUSH_BELOW_FLOAT64
    assert abs(lower * np.log(2.0) - natural) < 1e-5
    below = np.array([np.nextafter(dtype(lower), dtype(-np.inf)), lower - 0.5, lower - 50.0,
                      -1e30, -np.inf], dtype)
    np.testing.assert_array_equal(_compiled(_apply2, below), 0.0)
    at = _compiled(_apply2, np.array([lower], dtype))[0]
    assert at > 0 and np.isclose(at, np.exp2(np.float64(lower)), rtol=1e-6)
    assert at * dtype(1e-7) >= np.finfo(dtype).smallest_normal


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp2_nan_propagates_and_fast_math_callers_get_the_same_bits(dtype):
    t = np.array([np.nan, -np.nan, 0.0, -0.0, -1e-30], dtype)
    values = _compiled(_apply2, t)
    assert np.isnan(values[:2]).all()
    np.testing.assert_array_equal(values[2:], 1.0)
    grid = _grid(dtype, -110.0)
    np.testing.assert_array_equal(_compiled(_apply2_fast_caller, grid), _compiled(_apply2, grid))


def test_exp2_python_reference_and_vector_code():
    assert exp2_nonpositive(np.float32(-100.0)) == 0.0
    assert exp2_nonpositive(np.float32(-3.0)) == np.float32(0.125)
    assert exp2_nonpositive(-866.0) == 0.0
    plain = njit(_apply2.py_func)
    t = np.zeros(16, np.float32)
    _compiled(plain, t)
    assembly = plain.inspect_asm(plain.signatures[0])
    assert assembly.count("\n") > 50, "not the assembly of the loop"
    assert "cvttss2si" not in assembly and "cvtss2si" not in assembly
    if "ymm" not in assembly and "zmm" not in assembly:
        pytest.skip("no AVX on this machine")
