"""One compiled specialization of a kernel for every memory layout of its array arguments.

Numba compiles a new specialization for each combination of argument types, and an array's
type includes its layout (C-contiguous, Fortran, or any strides) and whether it is read-only.
A filter kernel that reads a caller's image through views (the planes of a channels-last RGB
image are strided; a NumPy image may be Fortran-ordered, read-only, or a negative-stride view)
would otherwise compile once per layout the caller happens to pass: 10-20 s each, and the
cause of most of the compilation in the test suite. :func:`call_any_layout` compiles the kernel
for the general layout ``'A'`` instead (arrays inside tuples typed read-only too) and calls that
one machine-code entry point for every layout: a C-contiguous array is a valid ``'A'`` array.
The arrays a kernel only reads are typed read-only as well (whether the caller's array is
writeable is one more bit of its Numba type), named by position or passed inside tuples.
It is meant for kernels that only copy from the caller's arrays into their own work buffers,
where the general layout costs nothing measurable.
"""

from __future__ import annotations

import threading

import numba
from numba.core import types

from ._parallel import run

_ENTRIES: dict = {}
_LOCK = threading.Lock()


def _general(numba_type, read_only: bool = False):
    """``numba_type`` with every array (also inside tuples) of layout ``'A'``; arrays inside
    tuples (inputs by this module's rule) also read-only."""
    if isinstance(numba_type, types.Array):
        return numba_type.copy(layout="A", readonly=numba_type.mutable is False or read_only)
    if isinstance(numba_type, types.BaseTuple) and any(
            isinstance(item, types.Array) for item in numba_type):
        items = [_general(item, read_only=True) for item in numba_type]
        if all(item == items[0] for item in items):
            return types.UniTuple(items[0], len(items))
        return types.Tuple(items)
    return numba_type


def call_any_layout(kernel, *args, keep=(), read_only=(), jobs=None, work=None):
    """``kernel(*args)`` through the specialization for general-layout arrays.

    Parameters
    ----------
    kernel : numba.core.registry.CPUDispatcher
        A ``@njit`` function (``cache=True`` loads and saves the specialization on disk).
    *args
        Its arguments. Arrays inside tuples must not be written by the kernel.
    keep : collection of int
        Positions whose type is kept as NumPy gives it (arrays the caller always allocates
        C-contiguous and reads in inner loops, where the general layout's stride arithmetic
        would cost).
    read_only : collection of int
        Positions of arrays the kernel never writes, typed read-only whatever the caller's
        array flags (so that a writeable and a read-only input share one specialization).
    jobs, work : int, optional
        For a kernel that takes a range ``first, stop`` of jobs after ``args``: it runs
        ``range(jobs)`` on the CPU threads (:func:`pacarray._cpu._parallel.run`, with its
        ``work`` estimate).

    Examples
    --------
    >>> import numpy as np
    >>> from numba import njit
    >>> @njit
    ... def total(a):
    ...     return a.sum()
    >>> image = np.arange(6.0).reshape(2, 3)
    >>> float(call_any_layout(total, image.T, read_only=(0,)))
    15.0
    >>> float(call_any_layout(total, image, read_only=(0,)))  # same specialization
    15.0
    >>> len(total.overloads)
    1
    """
    signature = tuple(
        numba.typeof(arg) if index in keep
        else _general(numba.typeof(arg), read_only=index in read_only)
        for index, arg in enumerate(args)
    )
    if jobs is not None:
        signature += (types.int64, types.int64)
    key = (kernel, signature)
    entry = _ENTRIES.get(key)
    if entry is None:
        with _LOCK:  # compile() is serialized by Numba; the lock keeps the table consistent
            entry = _ENTRIES.get(key)
            if entry is None:
                entry = kernel.compile(signature)
                _ENTRIES[key] = entry
    if jobs is not None:
        return run(entry, jobs, *args, work=work)
    return entry(*args)
