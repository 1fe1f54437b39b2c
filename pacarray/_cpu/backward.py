"""CPU backward passes: drivers of the Numba kernels in ``_numba_backward``.

Like the forward functions of this backend, these take already-validated, C-contiguous arrays of
one float dtype and never validate. The CUDA backend mirrors the same names, signatures and
return values:

``kernel_backward(grad_kernel, spec, kernel_size, k_stride, k_padding, dilation, need_guide)``
    VJP of ``materialize_kernel``. ``grad_kernel`` has shape ``(N, Fk, T, Ho, Wo)``.
    Returns a :class:`KernelGrads`.

``pool_backward(grad_y, x, tap_weight, spec, geometry, k_stride, k_padding,``
``need_x, need_weight, need_kernel, need_guide)``
    VJP of ``pool`` (``y[n,c,o] = sum_t tap_weight[t] K[n,(c),t,o] x[n,c,src(o,t)]``).
    Returns ``(grad_x, grad_tap_weight, grad_explicit, kernel_grads)``.

``conv_backward(grad_y, x, weight_matrix, spec, geometry, k_stride, k_padding,``
``need_x, need_weight, need_kernel, need_guide)``
    VJP of ``conv`` (``y[n,o,i] = sum_{c,t} weight_matrix[o, c*T+t] K[n,(c),t,i] x[n,c,src]``).
    Returns ``(grad_x, grad_weight_matrix, grad_explicit, kernel_grads)``.

``smooth_backward(grad_centre, guide, weights, need_weights)``
    VJP of ``smooth``: returns ``(grad_guide, grad_weights)``.

Conventions: ``grad_y`` is ``(N, C_out, Ho, Wo)``; ``grad_x`` has ``x``'s shape;
``grad_tap_weight`` is ``(kh, kw)`` and ``grad_weight_matrix`` has ``weight_matrix``'s shape,
both indexed exactly as the forward indexes them (the front end undoes any flip). The
``need_*`` flags skip work: an output that is not needed is ``None``. ``grad_explicit``
(``(N, Fk, T, Ho, Wo)``) is returned on the explicit path when ``need_kernel``;
``kernel_grads`` on the fused path when ``need_kernel`` (``need_guide`` additionally asks for
the guide and centre parts, the expensive ones).

All results are deterministic: bands of output rows with a fixed partition (see the kernels'
module docstring), per-row or per-slot partial sums reduced by NumPy in a fixed order; the
partition depends on the shapes (and :data:`pacarray.config.WORKSPACE_BYTES`), never on the
number of threads.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import config
from .._spec import KernelGrads
from . import _numba_backward as nb
from ._inputs import aligned_zeros, explicit_kernel, features, frozen, kernel_args

__all__ = ["conv_backward", "kernel_backward", "pool_backward"]

#: Upper bound of the weight-gradient accumulators of :func:`conv_backward`.
_MAX_WEIGHT_SLOTS = 32

#: :func:`conv_backward` runs its weight products over about this many output columns at once
#: (several rows side by side when the rows are narrower), where the small GEMMs measured
#: 15-20% faster than over single 128-column rows.
_GROUP_WIDTH = 512
_MAX_GROUP_ROWS = 8


def _ceil_div(a, b):
    return -(-a // b)


def _band_height(kernel_size, dilation, k_stride, stride=None, transposed=False):
    """Rows per band so that bands two apart never touch the same input/guide/mask row.

    Band rows ``[b0, b1)`` read guide rows up to ``(b1-1)*ks + reach`` and the band after next
    starts reading at ``(b1+h)*ks``: disjoint when ``h*ks >= reach``. A transposed op's input
    rows follow ``i*s = o + p - a*d``, which needs ``h >= reach``.
    """
    reach = (kernel_size[0] - 1) * dilation[0]
    height = _ceil_div(reach, k_stride[0])
    if stride is not None:
        height = max(height, reach if transposed else _ceil_div(reach, stride[0]))
    return max(1, height)


class _KernelBuffers(NamedTuple):
    guide: np.ndarray
    centre: np.ndarray
    mask: np.ndarray
    alpha_rows: np.ndarray
    lam_rows: np.ndarray
    spatial_rows: np.ndarray


def _kernel_buffers(spec, batch, out_h, taps, dtype, need_kernel, need_guide):
    """Zeroed accumulators for the fused kernel's gradients (small dummies when unused)."""
    fused = need_kernel and not spec.use_explicit
    guide_shape = spec.guide.shape if fused and need_guide else (1, 1, 1, 1)
    mask_shape = spec.mask.shape if fused and spec.has_mask else (1, 1, 1)
    rows = (batch, out_h) if fused else (1, 1)
    guide = aligned_zeros(guide_shape, dtype)
    # Without smoothing the centre gradient lands on the guide itself; a row's centre lies
    # inside the rows its own taps read, so the band partition protects those writes too.
    centre = guide if spec.centre is spec.guide else aligned_zeros(guide_shape, dtype)
    return _KernelBuffers(
        guide, centre, np.zeros(mask_shape, dtype),
        np.zeros((*rows, spec.fk_count), dtype), np.zeros((*rows, spec.fk_count), dtype),
        np.zeros((*rows, taps), dtype),
    )


def _kernel_result(spec, buffers, kernel_size, need_guide):
    return KernelGrads(
        guide=buffers.guide if need_guide else None,
        centre=buffers.centre if need_guide and buffers.centre is not buffers.guide else None,
        alpha=buffers.alpha_rows.sum(axis=(0, 1)),
        lam=buffers.lam_rows.sum(axis=(0, 1)),
        spatial=buffers.spatial_rows.sum(axis=(0, 1)).reshape(kernel_size),
        mask=buffers.mask if spec.has_mask else None,
    )


def kernel_backward(grad_kernel, spec, kernel_size, k_stride, k_padding, dilation, need_guide):
    """VJP of :func:`materialize_kernel`: ``grad_kernel (N, Fk, T, Ho, Wo)`` -> KernelGrads."""
    batch, _, taps, out_h, _ = grad_kernel.shape
    dtype = grad_kernel.dtype
    buffers = _kernel_buffers(spec, batch, out_h, taps, dtype, True, need_guide)
    nb.kernel_backward(
        frozen(grad_kernel), *features(spec), *spec.guide_shape, *kernel_size, *k_stride,
        *k_padding, *dilation, *kernel_args(spec),
        _band_height(kernel_size, dilation, k_stride), need_guide, buffers.guide,
        buffers.centre, buffers.mask, buffers.alpha_rows, buffers.lam_rows,
        buffers.spatial_rows,
    )
    return _kernel_result(spec, buffers, kernel_size, need_guide)


def _explicit_grad(spec, shape, dtype, need_kernel):
    if spec.use_explicit and need_kernel:
        return np.empty(shape, dtype)
    return np.zeros((1, 1, 1, 1, 1), dtype)


def pool_backward(grad_y, x, tap_weight, spec, geometry, k_stride, k_padding, need_x,
                  need_weight, need_kernel, need_guide):
    """VJP of :func:`pool`; see the module docstring for the returned tuple."""
    batch, channels = x.shape[:2]
    out_h, out_w = grad_y.shape[2:]
    kh, kw = geometry.kernel_size
    taps = kh * kw
    dtype = x.dtype
    grad_x = aligned_zeros(x.shape if need_x else (1, 1, 1, 1), dtype)
    grad_tap_rows = np.zeros((batch, out_h, taps) if need_weight else (1, 1, 1), dtype)
    grad_explicit = _explicit_grad(spec, (batch, spec.fk_count, taps, out_h, out_w), dtype,
                                   need_kernel)
    buffers = _kernel_buffers(spec, batch, out_h, taps, dtype, need_kernel, need_guide)
    explicit, use_explicit = explicit_kernel(spec, dtype)
    nb.direct_backward(
        frozen(grad_y), frozen(x), frozen(tap_weight), explicit, use_explicit, *features(spec),
        *spec.guide_shape, *geometry.stride, *geometry.padding, *geometry.dilation, *k_stride,
        *k_padding, geometry.transposed, *kernel_args(spec), spec.fk_count,
        _band_height(geometry.kernel_size, geometry.dilation, k_stride, geometry.stride,
                     geometry.transposed),
        need_x, need_weight, need_kernel, need_guide and not use_explicit,
        grad_x, grad_tap_rows, grad_explicit, buffers.guide, buffers.centre, buffers.mask,
        buffers.alpha_rows, buffers.lam_rows, buffers.spatial_rows,
    )
    return _results(spec, buffers, geometry, need_x, need_kernel, need_guide, grad_x,
                    grad_tap_rows.sum(axis=(0, 1)).reshape(kh, kw) if need_weight else None,
                    grad_explicit)


def _results(spec, buffers, geometry, need_x, need_kernel, need_guide, grad_x, grad_weight,
             grad_explicit):
    kernel_grads = None
    if need_kernel and not spec.use_explicit:
        kernel_grads = _kernel_result(spec, buffers, geometry.kernel_size, need_guide)
    return (
        grad_x if need_x else None,
        grad_weight,
        grad_explicit if need_kernel and spec.use_explicit else None,
        kernel_grads,
    )


def _weight_slots(matrix_shape, itemsize, jobs):
    """Number of weight-gradient accumulators: from the shapes only, never the thread count."""
    per_slot = max(1, matrix_shape[0] * matrix_shape[1] * itemsize)
    return int(max(1, min(_MAX_WEIGHT_SLOTS, jobs, config.WORKSPACE_BYTES // per_slot)))


def _patch_row_order(channels, taps, paired):
    """Column ``c*T + t`` of the weight matrix for each patch row of :func:`conv_backward`
    (the order of ``nb.patch_row_tap``)."""
    rows = np.arange(channels * taps)
    if not paired:
        return rows
    pairs = channels // 2
    paired_rows = rows[:2 * taps * pairs]
    pair, rest = paired_rows // (2 * taps), paired_rows % (2 * taps)
    order = rows.copy()
    order[:2 * taps * pairs] = (2 * pair + rest % 2) * taps + rest // 2
    return order


def _group_rows(out_w, split):
    """Output rows whose products with the weight matrix :func:`conv_backward` forms together:
    enough for about :data:`_GROUP_WIDTH` columns, at most :data:`_MAX_GROUP_ROWS`; 1 for a
    strided read split by phase."""
    if split:
        return 1
    return max(1, min(_MAX_GROUP_ROWS, _GROUP_WIDTH // max(1, out_w)))


def conv_backward(grad_y, x, weight_matrix, spec, geometry, k_stride, k_padding, need_x,
                  need_weight, need_kernel, need_guide):
    """VJP of :func:`conv`; see the module docstring for the returned tuple.

    One Numba pass over bands of output rows recomputes each kernel row and forms the patch
    gradient ``W^T g`` for groups of :func:`_group_rows` rows at once, feeding ``grad_x``, the
    kernel gradient and the weight gradient; the weight gradient's per-band partial sums live
    in at most :data:`_MAX_WEIGHT_SLOTS` accumulators (within
    :data:`pacarray.config.WORKSPACE_BYTES`) summed in a fixed order at the end.
    """
    batch = x.shape[0]
    out_h, out_w = grad_y.shape[2:]
    kh, kw = geometry.kernel_size
    taps = kh * kw
    dtype = x.dtype
    band_height = _band_height(geometry.kernel_size, geometry.dilation, k_stride,
                               geometry.stride, geometry.transposed)
    group_rows = _group_rows(out_w, geometry.stride[1] > 1 and not geometry.transposed)
    band_height = _ceil_div(band_height, group_rows) * group_rows
    jobs = batch * _ceil_div(_ceil_div(out_h, band_height), 2)
    # without a weight gradient there is nothing to accumulate: one wave of all bands
    slots = _weight_slots(weight_matrix.shape, x.itemsize, jobs) if need_weight else jobs
    grad_x = aligned_zeros(x.shape if need_x else (1, 1, 1, 1), dtype)
    grad_w_slots = np.zeros((slots, *weight_matrix.shape) if need_weight else (slots, 1, 1),
                            dtype)
    grad_explicit = _explicit_grad(spec, (batch, spec.fk_count, taps, out_h, out_w), dtype,
                                   need_kernel)
    buffers = _kernel_buffers(spec, batch, out_h, taps, dtype, need_kernel, need_guide)
    explicit, use_explicit = explicit_kernel(spec, dtype)
    # Two channels' rows of one tap side by side let the scatter share its K and kernel-gradient
    # loads (see nb.patch_row_tap); the weight matrix's columns follow that order.
    paired = (need_x and need_kernel and spec.fk_count == 1 and x.shape[1] > 1
              and not (geometry.stride[1] > 1 and not geometry.transposed))
    order = _patch_row_order(x.shape[1], taps, paired)
    nb.conv_backward(
        frozen(grad_y), frozen(x), frozen(np.ascontiguousarray(weight_matrix.T[order])),
        explicit, use_explicit, *features(spec), *spec.guide_shape, kh, kw, *geometry.stride,
        *geometry.padding, *geometry.dilation, *k_stride, *k_padding, geometry.transposed,
        *kernel_args(spec), spec.fk_count, band_height, group_rows, slots, paired, need_x,
        need_weight, need_kernel, need_guide and not use_explicit, grad_x, grad_w_slots,
        grad_explicit, buffers.guide, buffers.centre, buffers.mask, buffers.alpha_rows,
        buffers.lam_rows, buffers.spatial_rows,
    )
    grad_matrix = None
    if need_weight:
        grad_matrix = np.empty(weight_matrix.shape, dtype)
        grad_matrix[:, order] = grad_w_slots.sum(axis=0)
    return _results(spec, buffers, geometry, need_x, need_kernel, need_guide, grad_x,
                    grad_matrix, grad_explicit)
