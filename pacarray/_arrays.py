"""Array conversion and checks shared by the front-end functions (dtype policy in one place)."""

from __future__ import annotations

import numpy as np


def convert(xp, value, name: str):
    """``xp.asarray(value)`` with a clear error for objects that are not numeric arrays."""
    try:
        array = xp.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}: {error}") from None
    if array.dtype.kind not in "biuf c":
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return array


def require_float(array, name: str) -> None:
    """Reject integer, bool and complex arrays where real floats are required."""
    if array.dtype.kind != "f":
        raise TypeError(
            f"{name} must have a real floating dtype (float32 or float64), got {array.dtype}; "
            f"convert it first, e.g. {name}.astype(numpy.float32)"
        )


def compute_dtype(*arrays) -> np.dtype:
    """float64 if any float argument is float64, else float32 (float16 computes as float32)."""
    dtypes = [a.dtype for a in arrays if a is not None]
    result = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)
    if result.kind != "f" or result.itemsize < 4:
        return np.dtype(np.float32)
    if result.itemsize > 8:
        raise TypeError(f"extended precision {result} is not supported; use float64")
    return np.dtype(result)


def require_ndim(array, ndim: int, name: str, layout: str) -> None:
    if array.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D with layout {layout}, got shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")


def cast(xp, array, dtype):
    """C-contiguous array of ``dtype``; a copy only when needed (inputs are never written)."""
    return xp.ascontiguousarray(array, dtype=dtype)


def finite_scalar(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number
