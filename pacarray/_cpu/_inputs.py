"""How the CPU backend hands its inputs to the Numba kernels.

Numba compiles one specialization per argument type, and a read-only array is a different type
from a writeable one. Callers' arrays come either way (a read-only ``x``, a per-channel
``alpha`` from a read-only buffer, ...), which used to cost one more compilation of a large
kernel per combination of flags. Every input therefore goes to the kernels as a read-only view
(no copy): each kernel is compiled once per dtype, and a kernel that wrote to one of its inputs
would not compile.
"""

from __future__ import annotations

import numpy as np

from ._numba_kernels import CACHE_LINE


def frozen(array):
    """A read-only view of ``array`` (no copy; ``array`` itself is unchanged)."""
    view = array.view()
    view.flags.writeable = False
    return view


def kernel_args(spec):
    """The fused kernel's parameters, in the kernels' argument order, inputs read-only."""
    return (
        spec.family, frozen(spec.alpha), frozen(spec.lam), spec.eps2,
        frozen(spec.spatial.reshape(-1)), frozen(spec.mask), spec.has_mask, spec.normalize,
        spec.channel_wise,
    )


def features(spec):
    """``(guide, centre)`` read-only (one view when they are the same array)."""
    guide = frozen(spec.guide)
    return guide, guide if spec.centre is spec.guide else frozen(spec.centre)


def explicit_kernel(spec, dtype):
    """``(explicit K or a small dummy, use_explicit)``, read-only."""
    if spec.explicit is not None:
        return frozen(spec.explicit), True
    return frozen(np.zeros((1, 1, 1, 1, 1), dtype)), False


def aligned_zeros(shape, dtype):
    """``np.zeros(shape, dtype)`` starting on a cache line (see
    :func:`pacarray._cpu._numba_kernels.aligned_empty`; NumPy aligns to 16 bytes only)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buffer = np.zeros(count + CACHE_LINE // dtype.itemsize, dtype)
    skip = (-buffer.ctypes.data) % CACHE_LINE // dtype.itemsize
    return buffer[skip:skip + count].reshape(shape)
