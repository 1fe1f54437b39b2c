"""Backend selection from the arrays a call receives: the one place where routing is decided.

NumPy arrays (and lists / scalars, converted like ``numpy.asarray`` does) run on the CPU backend
``pacarray._cpu``; CuPy arrays run on ``pacarray._cuda``. All array arguments of one call must come
from the same library (and, for CuPy, the same device). CuPy is never imported here: an array is
recognised as CuPy's by its type's module, so ``import pacarray`` stays free of GPU libraries.

Every backend module provides the core entry points (``pool``, ``conv``, ``materialize_kernel``
and their ``*_backward``) and the specialised ones listed in
:data:`pacarray._generic.SPECIALISED` (bilateral filter, joint upsampling, CRF steps). A backend
without a dedicated kernel for a specialised entry point re-exports the generic, array-namespace
implementation from :mod:`pacarray._generic`; :func:`generic_kernels` makes every backend do so
for the duration of a ``with`` block, which is how tests and benchmarks compare the two paths
(``docs/design.md`` §3).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib

import numpy as np

_BACKEND_MODULES = {"numpy": "pacarray._cpu", "cupy": "pacarray._cuda"}


#: Array types pacarray does not take (yet), and how to turn each into a NumPy array.
_CONVERSIONS = {
    "dask": "call .compute() first",
    "xarray": "pass .values (or .data)",
    "torch": "pass .detach().cpu().numpy() (or use cupy.asarray for a CUDA tensor)",
    "jax": "pass numpy.asarray(value)",
    "tensorflow": "pass .numpy()",
}


def array_library(value, name: str = "array") -> str | None:
    """``"numpy"`` or ``"cupy"`` for array inputs, ``None`` for lists, scalars and None;
    ``TypeError`` naming ``name`` for arrays of other libraries."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return "numpy"
    module = type(value).__module__.split(".", 1)[0]
    if module == "cupy":
        return "cupy"
    if module in _CONVERSIONS:
        raise TypeError(
            f"{name} must be a NumPy or CuPy array, got a {type(value).__module__}."
            f"{type(value).__name__}; {_CONVERSIONS[module]}"
        )
    return None


#: Lazy array containers a decorated public function hands to a module of its own, by the
#: top-level package of the argument's type: ``(type name, pacarray module)``.
_LAZY_MODULES = {"xarray": ("DataArray", "pacarray._xarray"), "dask": ("Array", "pacarray._dask")}


def _lazy_module(values) -> str | None:
    """The pacarray module for the lazy containers among ``values`` (xarray's first: a
    DataArray may hold a Dask array, and is unwrapped before the Dask module sees it), or
    None when every value is an ordinary array, list, scalar or None."""
    found = None
    for value in values:
        kind = type(value)
        entry = _LAZY_MODULES.get(kind.__module__.split(".", 1)[0])
        if entry is not None and kind.__name__ == entry[0]:
            if entry[1] == "pacarray._xarray":
                return entry[1]
            found = entry[1]
    return found


def delegate_lazy(name: str):
    """Decorator of a public forward function: a call with a Dask array or an
    ``xarray.DataArray`` among its arguments goes to the function ``name`` of
    ``pacarray._dask`` or ``pacarray._xarray`` (imported then, so ``import pacarray`` never
    imports Dask or xarray); inside ``pacarray.progress`` a large in-memory call is cut into
    blocks by :func:`pacarray._progress.blocked_call`; any other call runs the decorated
    function unchanged.

    The containers are recognised by their type's module, like CuPy arrays. Only the top-level
    arguments are inspected; a lazy array nested elsewhere (a ``PairwiseTerm``'s features, say)
    reaches :func:`array_library`, which rejects it with a conversion hint.
    """

    def decorate(function):
        @functools.wraps(function)
        def dispatching(*args, **kwargs):
            module = _lazy_module((*args, *kwargs.values()))
            if module is None:
                from . import _progress

                blocked = _progress.blocked_call(name, function, args, kwargs)
                return function(*args, **kwargs) if blocked is None else blocked
            return getattr(importlib.import_module(module), name)(*args, **kwargs)

        return dispatching

    return decorate


def select_backend(**arrays) -> str:
    """Name of the backend for these keyword-named arrays; TypeError when they are mixed."""
    found: dict[str, list[str]] = {}
    for name, value in arrays.items():
        library = array_library(value, name)
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


_GENERIC_KERNELS = contextvars.ContextVar("pacarray_generic_kernels", default=False)


@contextlib.contextmanager
def generic_kernels():
    """Within the block, every backend runs its specialised entry points (bilateral filter, joint
    upsampling, CRF) through the generic implementations of :mod:`pacarray._generic`, which are
    built on the core operations. Thread- and task-local (a context variable)."""
    token = _GENERIC_KERNELS.set(True)
    try:
        yield
    finally:
        _GENERIC_KERNELS.reset(token)


def backend_module(name: str):
    """The backend module for ``name`` (imported lazily: CuPy and its kernels load on first GPU
    use only); inside :func:`generic_kernels`, a view of it whose specialised entry points are
    the generic ones."""
    module = importlib.import_module(_BACKEND_MODULES[name])
    if _GENERIC_KERNELS.get():
        from . import _generic

        return _generic.over(module)
    return module


def namespace(name: str):
    """The array namespace (``numpy`` or ``cupy``) of a backend."""
    if name == "numpy":
        return np
    return importlib.import_module("cupy")


def namespace_of(array):
    """The array namespace of one array (``numpy`` for anything that is not a CuPy array)."""
    return namespace("cupy" if array_library(array) == "cupy" else "numpy")


def ndimage(array):
    """``scipy.ndimage`` for NumPy arrays, ``cupyx.scipy.ndimage`` for CuPy arrays."""
    if array_library(array) == "cupy":
        return importlib.import_module("cupyx.scipy.ndimage")
    return importlib.import_module("scipy.ndimage")


def device_of(array):
    """Context manager making ``array``'s device current (CuPy); does nothing for NumPy arrays."""
    if array_library(array) == "cupy":
        return array.device
    return contextlib.nullcontext()
