"""How the CPU backend hands its inputs to the Numba kernels.

Numba compiles one specialization per argument type, and a read-only array is a different type
from a writeable one. Callers' arrays come either way (a read-only ``x``, a per-channel
``alpha`` from a read-only buffer, ...), which used to cost one more compilation of a large
kernel per combination of flags. Every input therefore goes to the kernels as a read-only view
(no copy): each kernel is compiled once per dtype, and a kernel that wrote to one of its inputs
would not compile.

The kernels are written for three spatial dimensions: :func:`lifted` and :func:`lift_tuple`
give 1-D and 2-D arrays and geometry singleton leading spatial axes (reshaped views, no copies;
``docs/design.md`` §7).
"""

from __future__ import annotations

import numpy as np

from ._numba_kernels import CACHE_LINE


def frozen(array):
    """A read-only view of ``array`` (no copy; ``array`` itself is unchanged)."""
    view = array.view()
    view.flags.writeable = False
    return view


#: The kernels' spatial rank.
DIMS = 3


def lifted(array, lead, rank):
    """``array`` of shape ``(*lead axes, *S)`` with ``len(S) == rank``, reshaped to 3 spatial
    axes by inserting singleton axes after the ``lead`` leading ones (a view)."""
    shape = array.shape
    return array.reshape(shape[:lead] + (1,) * (DIMS - rank) + shape[lead:])


def lift_tuple(values, fill):
    """A per-axis tuple of length 1-3 padded at the front with ``fill`` to length 3."""
    return (fill,) * (DIMS - len(values)) + tuple(values)


def spatial_rank(spec):
    return len(spec.guide_shape)


def guide_shape3(spec):
    """The guide's spatial shape ``(D, H, W)`` for the kernels."""
    return lift_tuple(spec.guide_shape, 1)


def kernel_args(spec):
    """The fused kernel's parameters, in the kernels' argument order, inputs read-only (the
    mask lifted to ``(N, D, H, W)``)."""
    return (
        spec.family, frozen(spec.alpha), frozen(spec.lam), spec.eps2,
        frozen(spec.spatial.reshape(-1)), frozen(lifted(spec.mask, 1, spatial_rank(spec))),
        spec.has_mask, spec.normalize, spec.channel_wise,
    )


def features(spec):
    """``(guide, centre)`` ``(N, F, D, H, W)`` read-only (one view when they are the same
    array)."""
    rank = spatial_rank(spec)
    guide = frozen(lifted(spec.guide, 2, rank))
    if spec.centre is spec.guide:
        return guide, guide
    return guide, frozen(lifted(spec.centre, 2, rank))


def kernel_work(spec, pixels, taps):
    """Multiply-adds of the adaptive kernel at ``pixels`` outputs (for ``_parallel.run``)."""
    features = 0 if spec.guide is None else spec.guide.shape[1]
    return pixels * taps * (1 + features)


def explicit_kernel(spec, dtype):
    """``(explicit K (N, Fk, T, Do, Ho, Wo) or a small dummy, use_explicit)``, read-only."""
    if spec.explicit is not None:
        rank = spatial_rank(spec)
        explicit = spec.explicit
        taps = int(np.prod(explicit.shape[2:2 + rank]))
        out = lift_tuple(explicit.shape[2 + rank:], 1)
        return frozen(explicit.reshape(explicit.shape[:2] + (taps,) + out)), True
    return frozen(np.zeros((1, 1, 1, 1, 1, 1), dtype)), False


def aligned_zeros(shape, dtype):
    """``np.zeros(shape, dtype)`` starting on a cache line (see
    :func:`pacarray._cpu._numba_kernels.aligned_empty`; NumPy aligns to 16 bytes only)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buffer = np.zeros(count + CACHE_LINE // dtype.itemsize, dtype)
    skip = (-buffer.ctypes.data) % CACHE_LINE // dtype.itemsize
    return buffer[skip:skip + count].reshape(shape)
