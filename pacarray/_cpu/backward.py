"""CPU backward passes: drivers of the Numba kernels in ``_numba_backward``.

Like the forward functions of this backend, these take already-validated, C-contiguous arrays of
one float dtype and never validate. The CUDA backend mirrors the same names, signatures and
return values:

``kernel_backward(grad_kernel, spec, kernel_size, k_stride, k_padding, dilation, need_guide)``
    VJP of ``materialize_kernel``. ``grad_kernel`` has shape ``(N, Fk, T, *out)``.
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

Conventions: arrays have the op's spatial rank r (1-3) and are lifted here to the kernels' 3
spatial axes (reshaped views; ``docs/design.md`` §7). ``grad_y`` is ``(N, C_out, *out)``;
``grad_x`` has ``x``'s shape; ``grad_tap_weight`` has shape ``kernel_size`` and
``grad_weight_matrix`` has ``weight_matrix``'s shape, both indexed exactly as the forward
indexes them (the front end undoes any flip). The ``need_*`` flags skip work: an output that is
not needed is ``None``. ``grad_explicit`` is returned on the explicit path when ``need_kernel``;
``kernel_grads`` on the fused path when ``need_kernel`` (``need_guide`` additionally asks for
the guide and centre parts, the expensive ones). ``grad_explicit`` is ``(N, Fk, T, *out)``
(3 output axes; the front end reshapes it).

All results are deterministic: bands of output rows with a fixed partition (see the kernels'
module docstring; in 3-D tiles of planes x rows, coloured by the parity of both), per-row or
per-slot partial sums reduced by NumPy in a fixed order; the partition depends on the shapes
(and :data:`pacarray.config.WORKSPACE_BYTES`), never on the number of threads.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import config
from .._spec import KernelGrads
from . import _numba_backward as nb
from ._parallel import run
from ._inputs import (
    aligned_zeros,
    explicit_kernel,
    features,
    frozen,
    guide_shape3,
    kernel_args,
    kernel_work,
    lift_tuple,
    lifted,
)

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


def _band_height(kernel_size, dilation, k_stride, stride=None, transposed=False, axis=1):
    """Rows (planes for ``axis=0``) per band so that bands two apart never touch the same
    input/guide/mask row (plane). Arguments are 3-axis tuples.

    Band rows ``[b0, b1)`` read guide rows up to ``(b1-1)*ks + reach`` and the band after next
    starts reading at ``(b1+h)*ks``: disjoint when ``h*ks >= reach``. A transposed op's input
    rows follow ``i*s = o + p - a*d``, which needs ``h >= reach``.
    """
    reach = (kernel_size[axis] - 1) * dilation[axis]
    height = _ceil_div(reach, k_stride[axis])
    if stride is not None:
        height = max(height, reach if transposed else _ceil_div(reach, stride[axis]))
    return max(1, height)


def _depth_bands(kernel_size, dilation, k_stride, stride=None, transposed=False):
    """``(band_depth, z_colours)``: planes per band and the number of plane colours. With one
    depth tap no two output planes share an input, guide or mask plane: one colour."""
    if kernel_size[0] == 1:
        return 1, 1
    return _band_height(kernel_size, dilation, k_stride, stride, transposed, axis=0), 2


def _z_jobs(out_d, band_depth, z_colours):
    """Most plane bands of one colour."""
    bands = _ceil_div(out_d, band_depth)
    return bands if z_colours == 1 else _ceil_div(bands, 2)


class _KernelBuffers(NamedTuple):
    guide: np.ndarray
    centre: np.ndarray
    mask: np.ndarray
    alpha_rows: np.ndarray
    lam_rows: np.ndarray
    spatial_rows: np.ndarray


def _kernel_buffers(spec, batch, out_rows, taps, dtype, need_kernel, need_guide):
    """Zeroed accumulators for the fused kernel's gradients, on 3 spatial axes (small dummies
    when unused); ``out_rows`` is ``Do*Ho``."""
    fused = need_kernel and not spec.use_explicit
    shape3 = guide_shape3(spec)
    guide_shape = (*spec.guide.shape[:2], *shape3) if fused and need_guide else (1,) * 5
    mask_shape = (spec.mask.shape[0], *shape3) if fused and spec.has_mask else (1,) * 4
    rows = (batch, out_rows) if fused else (1, 1)
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
    """The accumulators as a :class:`KernelGrads` of the op's spatial rank."""
    guide_shape = spec.guide.shape
    mask_shape = spec.mask.shape
    return KernelGrads(
        guide=buffers.guide.reshape(guide_shape) if need_guide else None,
        centre=(buffers.centre.reshape(guide_shape)
                if need_guide and buffers.centre is not buffers.guide else None),
        alpha=buffers.alpha_rows.sum(axis=(0, 1)),
        lam=buffers.lam_rows.sum(axis=(0, 1)),
        spatial=buffers.spatial_rows.sum(axis=(0, 1)).reshape(kernel_size),
        mask=buffers.mask.reshape(mask_shape) if spec.has_mask else None,
    )


def kernel_backward(grad_kernel, spec, kernel_size, k_stride, k_padding, dilation, need_guide):
    """VJP of :func:`materialize_kernel`: ``grad_kernel (N, Fk, T, *out)`` -> KernelGrads."""
    rank = len(kernel_size)
    grad_kernel = lifted(grad_kernel, 3, rank)
    batch, _, taps, out_d, out_h, _ = grad_kernel.shape
    dtype = grad_kernel.dtype
    kernel3, stride3 = lift_tuple(kernel_size, 1), lift_tuple(k_stride, 1)
    dilation3 = lift_tuple(dilation, 1)
    buffers = _kernel_buffers(spec, batch, out_d * out_h, taps, dtype, True, need_guide)
    band_depth, z_colours = _depth_bands(kernel3, dilation3, stride3)
    band_height = _band_height(kernel3, dilation3, stride3)
    args = (
        frozen(grad_kernel), *features(spec), *guide_shape3(spec), *kernel3, *stride3,
        *lift_tuple(k_padding, 0), *dilation3, *kernel_args(spec), band_depth, z_colours,
        band_height, need_guide, buffers.guide, buffers.centre, buffers.mask,
        buffers.alpha_rows, buffers.lam_rows, buffers.spatial_rows,
    )
    for colour_z, colour, jobs in _phases(batch, out_d, band_depth, z_colours, out_h,
                                          band_height):
        run(nb.kernel_backward, jobs, *args, colour_z, colour,
            work=3 * kernel_work(spec, grad_kernel.size // taps, taps))
    return _kernel_result(spec, buffers, kernel_size, need_guide)


def _explicit_grad(spec, shape, dtype, need_kernel):
    if spec.use_explicit and need_kernel:
        return np.empty(shape, dtype)
    return np.zeros((1,) * 6, dtype)


def _lifted_geometry(geometry, k_stride, k_padding):
    """``(kernel_size, stride, padding, dilation, k_stride, k_padding)`` on 3 axes."""
    return (lift_tuple(geometry.kernel_size, 1), lift_tuple(geometry.stride, 1),
            lift_tuple(geometry.padding, 0), lift_tuple(geometry.dilation, 1),
            lift_tuple(k_stride, 1), lift_tuple(k_padding, 0))


def pool_backward(grad_y, x, tap_weight, spec, geometry, k_stride, k_padding, need_x,
                  need_weight, need_kernel, need_guide):
    """VJP of :func:`pool`; see the module docstring for the returned tuple."""
    rank = len(geometry.kernel_size)
    grad_y = lifted(grad_y, 2, rank)
    x_shape = x.shape
    x = lifted(x, 2, rank)
    batch, channels = x.shape[:2]
    out_d, out_h, out_w = grad_y.shape[2:]
    kernel3, stride3, padding3, dilation3, kstride3, kpadding3 = _lifted_geometry(
        geometry, k_stride, k_padding)
    taps = geometry.taps
    dtype = x.dtype
    grad_x = aligned_zeros(x.shape if need_x else (1,) * 5, dtype)
    grad_tap_rows = np.zeros((batch, out_d * out_h, taps) if need_weight else (1, 1, 1), dtype)
    grad_explicit = _explicit_grad(spec, (batch, spec.fk_count, taps, out_d, out_h, out_w),
                                   dtype, need_kernel)
    buffers = _kernel_buffers(spec, batch, out_d * out_h, taps, dtype, need_kernel, need_guide)
    explicit, use_explicit = explicit_kernel(spec, dtype)
    band_depth, z_colours = _depth_bands(kernel3, dilation3, kstride3, stride3,
                                         geometry.transposed)
    band_height = _band_height(kernel3, dilation3, kstride3, stride3, geometry.transposed)
    args = (
        frozen(grad_y), frozen(x), frozen(lifted(tap_weight, 0, rank)), explicit, use_explicit,
        *features(spec), *guide_shape3(spec), *stride3, *padding3, *dilation3, *kstride3,
        *kpadding3, geometry.transposed, *kernel_args(spec), spec.fk_count, band_depth,
        z_colours, band_height, need_x, need_weight, need_kernel,
        need_guide and not use_explicit, grad_x, grad_tap_rows, grad_explicit, buffers.guide,
        buffers.centre, buffers.mask, buffers.alpha_rows, buffers.lam_rows,
        buffers.spatial_rows,
    )
    for colour_z, colour, jobs in _phases(batch, out_d, band_depth, z_colours, out_h,
                                          band_height):
        run(nb.direct_backward, jobs, *args, colour_z, colour,
            work=3 * (grad_y.size * taps + kernel_work(spec, grad_y.size // channels, taps)))
    return _results(spec, buffers, geometry, need_x, need_kernel, need_guide,
                    grad_x.reshape(x_shape) if need_x else grad_x,
                    grad_tap_rows.sum(axis=(0, 1)).reshape(geometry.kernel_size)
                    if need_weight else None,
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


def _phases(batch, out_d, band_depth, z_colours, out_h, band_height):
    """``(colour_z, colour, jobs)`` of the banded backward kernels, in order: bands of one
    colour never write the same input rows, so a phase runs its jobs at once
    (:func:`pacarray._cpu._parallel.run`) and the phases run one after the other."""
    for colour_z in range(z_colours):
        count_z = nb._bands(out_d, band_depth, colour_z, z_colours)
        for colour in range(2):
            yield colour_z, colour, batch * count_z * nb._band_count(out_h, band_height, colour)


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
    rank = len(geometry.kernel_size)
    grad_y = lifted(grad_y, 2, rank)
    x_shape = x.shape
    x = lifted(x, 2, rank)
    batch = x.shape[0]
    out_d, out_h, out_w = grad_y.shape[2:]
    kernel3, stride3, padding3, dilation3, kstride3, kpadding3 = _lifted_geometry(
        geometry, k_stride, k_padding)
    taps = geometry.taps
    dtype = x.dtype
    band_depth, z_colours = _depth_bands(kernel3, dilation3, kstride3, stride3,
                                         geometry.transposed)
    band_height = _band_height(kernel3, dilation3, kstride3, stride3, geometry.transposed)
    split = stride3[2] > 1 and not geometry.transposed
    group_rows = _group_rows(out_w, split)
    band_height = _ceil_div(band_height, group_rows) * group_rows
    jobs = (batch * _z_jobs(out_d, band_depth, z_colours)
            * _ceil_div(_ceil_div(out_h, band_height), 2))
    # without a weight gradient there is nothing to accumulate: one wave of all bands
    slots = _weight_slots(weight_matrix.shape, x.itemsize, jobs) if need_weight else jobs
    grad_x = aligned_zeros(x.shape if need_x else (1,) * 5, dtype)
    grad_w_slots = np.zeros((slots, *weight_matrix.shape) if need_weight else (slots, 1, 1),
                            dtype)
    grad_explicit = _explicit_grad(spec, (batch, spec.fk_count, taps, out_d, out_h, out_w),
                                   dtype, need_kernel)
    buffers = _kernel_buffers(spec, batch, out_d * out_h, taps, dtype, need_kernel, need_guide)
    explicit, use_explicit = explicit_kernel(spec, dtype)
    # Two channels' rows of one tap side by side let the scatter share its K and kernel-gradient
    # loads (see nb.patch_row_tap); the weight matrix's columns follow that order.
    paired = (need_x and need_kernel and spec.fk_count == 1 and x.shape[1] > 1 and not split)
    order = _patch_row_order(x.shape[1], taps, paired)
    args = (
        frozen(grad_y), frozen(x), frozen(np.ascontiguousarray(weight_matrix.T[order])),
        explicit, use_explicit, *features(spec), *guide_shape3(spec), *kernel3, *stride3,
        *padding3, *dilation3, *kstride3, *kpadding3, geometry.transposed, *kernel_args(spec),
        spec.fk_count, band_depth, z_colours, band_height, group_rows, paired, need_x,
        need_weight, need_kernel, need_guide and not use_explicit, grad_x, grad_w_slots,
        grad_explicit, buffers.guide, buffers.centre, buffers.mask, buffers.alpha_rows,
        buffers.lam_rows, buffers.spatial_rows,
    )
    work = 3 * (grad_y.size * weight_matrix.shape[1]
                + kernel_work(spec, grad_y.size // grad_y.shape[1], taps))
    # waves of at most `slots` bands, band i of a wave adding to weight-gradient slot i
    for colour_z, colour, jobs in _phases(batch, out_d, band_depth, z_colours, out_h,
                                          band_height):
        for first_job in range(0, jobs, slots):
            run(nb.conv_backward, min(slots, jobs - first_job), *args, colour_z, colour,
                first_job, work=work)
    grad_matrix = None
    if need_weight:
        grad_matrix = np.empty(weight_matrix.shape, dtype)
        grad_matrix[:, order] = grad_w_slots.sum(axis=0)
    return _results(spec, buffers, geometry, need_x, need_kernel, need_guide,
                    grad_x.reshape(x_shape) if need_x else grad_x, grad_matrix, grad_explicit)
