"""Backend selection from the arrays a call receives.

NumPy arrays (and lists / scalars, converted like ``numpy.asarray`` does) run on the CPU backend
``pacarray._cpu``; CuPy arrays run on ``pacarray._cuda``. All array arguments of one call must come
from the same library (and, for CuPy, the same device). CuPy is never imported here: an array is
recognised as CuPy's by its type's module, so ``import pacarray`` stays free of GPU libraries.
"""

from __future__ import annotations

import importlib

import numpy as np

_BACKEND_MODULES = {"numpy": "pacarray._cpu", "cupy": "pacarray._cuda"}


def array_library(value) -> str | None:
    """``"numpy"`` or ``"cupy"`` for array inputs, ``None`` for lists, scalars and None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return "numpy"
    module = type(value).__module__.split(".", 1)[0]
    if module == "cupy":
        return "cupy"
    if module in ("dask", "torch", "jax", "tensorflow", "xarray"):
        raise TypeError(
            f"pacarray functions take NumPy or CuPy arrays, got a {type(value).__module__}."
            f"{type(value).__name__}; convert it first (dask arrays: use pacarray's dask wrappers)"
        )
    return None


def select_backend(**arrays) -> str:
    """Name of the backend for these keyword-named arrays; TypeError when they are mixed."""
    found: dict[str, list[str]] = {}
    for name, value in arrays.items():
        library = array_library(value)
        if library is not None:
            found.setdefault(library, []).append(name)
    if len(found) > 1:
        described = "; ".join(
            f"{library}: {', '.join(names)}" for library, names in sorted(found.items())
        )
        raise TypeError(
            f"all array arguments must come from one array library, got a mix ({described}); "
            "move them to one device first (cupy.asarray / cupy.asnumpy)"
        )
    if "cupy" in found:
        _check_same_device({n: arrays[n] for n in found["cupy"]})
        return "cupy"
    return "numpy"


def _check_same_device(arrays: dict) -> None:
    devices = {name: getattr(value, "device", None) for name, value in arrays.items()}
    ids = {getattr(d, "id", d) for d in devices.values()}
    if len(ids) > 1:
        described = ", ".join(f"{n} on {getattr(d, 'id', d)}" for n, d in devices.items())
        raise ValueError(f"all CuPy arrays must be on the same device, got {described}")


def backend_module(name: str):
    """Import the backend module lazily (CuPy and its kernels load on first GPU use only)."""
    return importlib.import_module(_BACKEND_MODULES[name])


def namespace(name: str):
    """The array namespace (``numpy`` or ``cupy``) of a backend."""
    if name == "numpy":
        return np
    return importlib.import_module("cupy")
