"""Scratch arrays that one thread keeps from one call to the next (``docs/design.md`` §4).

A ``pac_crf`` call at 512 x 512 with 21 labels fills about 60 MB of arrays that do not outlive
it: the marginals between the steps, the window terms' weights. Freshly allocated, each page
of them is a page fault on its first write (the kernel zeroes it): about 20 ms of a 60 ms
call, measured, as the allocator hands such large blocks back to the system when they are
freed. :func:`scratch` keeps them instead, by name, for the calling thread: the next call of
that thread with the same shapes writes into memory that is already mapped.

Only what a call uses and drops goes through here, never an array it returns; a thread
keeps at most :data:`KEEP_BYTES` (larger arrays are allocated every time), and
:func:`release` drops what the calling thread keeps. Arrays held by a thread go away with it.
"""

from __future__ import annotations

import threading

import numpy as np

#: The most bytes of scratch arrays one thread keeps between calls.
KEEP_BYTES = 256 * 2**20

_local = threading.local()


def _held() -> dict:
    held = getattr(_local, "arrays", None)
    if held is None:
        held = _local.arrays = {}
    return held


def scratch(name: str, shape, dtype) -> tuple[np.ndarray, bool]:
    """An array of ``shape`` and ``dtype`` for the calling thread, and whether it is new:
    the one it last got under ``name`` when that has the same shape and dtype (its contents
    are whatever that use left), else a new one (uninitialized), kept for next time if the
    thread's arrays stay within :data:`KEEP_BYTES`. One use of a name at a time: the
    array must not be returned to a caller or held past the call that asked for it.

    >>> a, new = scratch("example", (2, 3), np.float32)
    >>> b, again = scratch("example", (2, 3), np.float32)
    >>> new, again, a is b
    (True, False, True)
    >>> release()
    """
    held = _held()
    shape = tuple(int(size) for size in shape)
    dtype = np.dtype(dtype)
    array = held.pop(name, None)
    if array is not None and array.shape == shape and array.dtype == dtype:
        held[name] = array
        return array, False
    array = np.empty(shape, dtype)
    if array.nbytes + sum(kept.nbytes for kept in held.values()) <= KEEP_BYTES:
        held[name] = array
    return array, True


def release() -> None:
    """Drop the scratch arrays the calling thread keeps."""
    _held().clear()


def held_bytes() -> int:
    """The bytes of scratch arrays the calling thread keeps."""
    return sum(array.nbytes for array in _held().values())
