"""CPU backend: Numba kernels plus BLAS, with fixed explicit signatures and no validation.

The front ends (through ``pacarray._spec``) have already checked and converted every argument:
arrays are C-contiguous and share one float dtype. The entry points are the backend contract of
``docs/design.md`` §3: the core operations and their gradients, and the specialised entry points
(image filters in ``_filters.py``, CRF steps below).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _palette
from . import _crf_kernels, _crf_vector
from . import _numba_kernels as nk
from ._filters import bilateral, joint_upsample  # noqa: F401
from ._inputs import (
    explicit_kernel,
    features,
    frozen,
    guide_shape3,
    kernel_work,
    kernel_args,
    lift_tuple,
    lifted,
)
from ._parallel import run
from ._scratch import scratch
from .backward import conv_backward, kernel_backward, pool_backward  # noqa: F401


def _geometry3(geometry):
    """The op's geometry on 3 spatial axes: ``(stride, padding, dilation)`` lifted."""
    return (lift_tuple(geometry.stride, 1), lift_tuple(geometry.padding, 0),
            lift_tuple(geometry.dilation, 1))


def materialize_kernel(spec, kernel_size, k_stride, k_padding, dilation, out_shape):
    """K of shape (N, Fk, *kernel_size, *out) and validity (N, Fk, *out) from a fused spec.

    Rank 1-3: the kernels run on 3 spatial axes (``_inputs.lifted``; docs/design.md §7).
    """
    batch = spec.guide.shape[0]
    dtype = spec.guide.dtype
    taps = int(np.prod(kernel_size))
    out3 = lift_tuple(out_shape, 1)
    out = np.empty((batch, spec.fk_count, taps, *out3), dtype)
    valid = np.empty((batch, spec.fk_count, *out3), np.bool_)
    run(
        nk.fill_kernel, batch * out3[0] * out3[1], *features(spec), *guide_shape3(spec),
        *lift_tuple(kernel_size, 1), *lift_tuple(k_stride, 1), *lift_tuple(k_padding, 0),
        *lift_tuple(dilation, 1), *kernel_args(spec), out, valid,
        work=kernel_work(spec, out.size // taps, taps),
    )
    shape = (batch, spec.fk_count)
    return (out.reshape(*shape, *kernel_size, *out_shape),
            valid.reshape(*shape, *out_shape))


def pool(x, tap_weight, spec, geometry, k_stride, k_padding, out_shape):
    """Direct kernel: ``y[n,c,o] = sum_t tap_weight[t] K[n,(c),t,o] x[n,c,src(o,t)]``."""
    rank = len(out_shape)
    explicit, use_explicit = explicit_kernel(spec, x.dtype)
    y = np.empty((x.shape[0], x.shape[1], *lift_tuple(out_shape, 1)), x.dtype)
    stride, padding, dilation = _geometry3(geometry)
    run(
        nk.direct, x.shape[0] * y.shape[2] * y.shape[3], frozen(lifted(x, 2, rank)),
        frozen(lifted(tap_weight, 0, rank)), explicit, use_explicit,
        *features(spec), *guide_shape3(spec), *stride, *padding, *dilation,
        *lift_tuple(k_stride, 1), *lift_tuple(k_padding, 0), geometry.transposed,
        *kernel_args(spec), spec.fk_count, y,
        work=y.size * geometry.taps + kernel_work(spec, y.size // y.shape[1], geometry.taps),
    )
    return y.reshape(y.shape[:2] + tuple(out_shape))


def conv(x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape):
    """``y[n,o,i] = sum_{c,t} weight_matrix[o, c*T+t] K[n,(c),t,i] x[n,c,src(i,t)]``."""
    rank = len(out_shape)
    explicit, use_explicit = explicit_kernel(spec, x.dtype)
    y = np.empty((x.shape[0], weight_matrix.shape[0], *lift_tuple(out_shape, 1)), x.dtype)
    stride, padding, dilation = _geometry3(geometry)
    run(
        nk.conv_rows, nk.conv_jobs(x.shape[0] * y.shape[2] * y.shape[3]),
        frozen(lifted(x, 2, rank)), *nk.pack_weights(weight_matrix), explicit, use_explicit,
        *features(spec), *guide_shape3(spec), *lift_tuple(geometry.kernel_size, 1), *stride,
        *padding, *dilation, *lift_tuple(k_stride, 1), *lift_tuple(k_padding, 0),
        geometry.transposed, *kernel_args(spec), spec.fk_count, y,
        work=y.size * weight_matrix.shape[1]
        + kernel_work(spec, y.size // y.shape[1], geometry.taps),
    )
    return y.reshape(y.shape[:2] + tuple(out_shape))


# CRF entry points
# (Numba kernels of pacarray._cpu._crf_kernels; signatures in pacarray._mean_field's docstring)



def _crf_guide(guide, q):
    """The message kernels read a term without features as an ``(N, 0, H, W)`` guide."""
    if guide is None:
        return np.zeros((q.shape[0], 0, *q.shape[2:]), q.dtype)
    return guide


def crf_add_messages(q, guide, spatial, dilation, scale, out):
    """``out += scale * M q``: the messages of one pairwise term, on the term's own grid.

    ``q`` and ``out`` ``(N, L, h, w)``; ``guide`` ``(N, F, h, w)`` the features the kernel
    compares (unit bandwidth) or None; ``spatial`` ``(kh, kw)`` odd, the spatial weights with
    the centre already 0; ``dilation`` ``(dy, dx)``; ``scale`` a Python float. ``M`` is
    ``pac_pool`` with that guide, spatial weight, dilation and "same" padding.
    """
    run(_crf_kernels.add_messages, q.shape[0] * q.shape[2], q, _crf_guide(guide, q), spatial,
        *dilation, scale, out, work=q.size * spatial.size)


def crf_add_adjoint(grad, q, guide, spatial, dilation, scale, out):
    """``out += scale * M^T grad`` for the operator ``M`` of :func:`crf_add_messages` (``q`` is
    its input in the forward pass). ``M`` is symmetric (``pacarray.pac_crf_vjp``'s notes), so
    this is the message kernel applied to ``grad``; ``q`` is not needed."""
    crf_add_messages(grad, guide, spatial, dilation, scale, out)


def _crf_step_terms(terms, dtype):
    """``(spatials, feature_bounds, dilations, weights)`` arrays of ``mean_field_step``: every
    window centred in a common ``(kh, kw)`` frame (the padding taps are 0 and skipped)."""
    kh = max([spatial.shape[0] for _, spatial, _, _ in terms], default=1)
    kw = max([spatial.shape[1] for _, spatial, _, _ in terms], default=1)
    spatials = np.zeros((len(terms), kh, kw), dtype)
    bounds = np.zeros((len(terms), 2), np.int64)
    dilations = np.zeros((len(terms), 2), np.int64)
    weights = np.zeros(len(terms), np.float64)
    start = 0
    for index, (weight, spatial, dilation, feature_range) in enumerate(terms):
        th, tw = spatial.shape
        top, left = (kh - th) // 2, (kw - tw) // 2
        spatials[index, top:top + th, left:left + tw] = spatial
        if feature_range is not None:
            start = feature_range[1]
        bounds[index] = feature_range if feature_range is not None else (start, start)
        dilations[index] = dilation
        weights[index] = weight
    return spatials, bounds, dilations, weights


#: Most bytes the weights of the taps of one ``pac_crf`` call may take to be computed once and
#: reused by every step (:func:`crf_prepare`), unless :data:`CRF_WEIGHT_CACHE_UNARIES` times the
#: unary's size is larger. Beyond both each step recomputes them row by row, in O(labels x
#: pixels) memory. The cache costs one tap array per non-zero spatial weight of the
#: full-resolution terms: 56 taps (the default terms) x 512 x 512 x 4 bytes is 59 MB.
CRF_WEIGHT_CACHE_BYTES = 256 * 2**20
#: The cache may always take this many times the unary's size (a call already holds several
#: arrays of that size: the marginals, their history in ``pac_crf_vjp``).
CRF_WEIGHT_CACHE_UNARIES = 2


class CRFWeights(NamedTuple):
    """The full-resolution terms' weighted kernels of one call (``pairwise_weights``)."""

    cache: np.ndarray  # (N, H, taps, W)
    tap_rows: np.ndarray  # (N, H, taps) source row of each active tap
    tap_offsets: np.ndarray  # (N, H, taps) its column offset
    actives: np.ndarray  # (N, H) the number of active taps of each row


def crf_prepare(unary, guide, terms):
    """The terms as every ``crf_step`` of one call takes them: their weighted kernels computed
    once (a :class:`CRFWeights`) when they fit in :data:`CRF_WEIGHT_CACHE_BYTES` or
    :data:`CRF_WEIGHT_CACHE_UNARIES` times the unary's size, whichever is larger; else
    ``terms`` unchanged (each step recomputes them). The weights do not depend on the
    marginals, and computing them (a distance and an exponential per tap and pixel) took a
    quarter of a step's time with the default terms (256 x 256, 21 labels)."""
    if not terms:
        return terms
    dtype = unary.dtype
    spatials, bounds, dilations, weights = _crf_step_terms(terms, dtype)
    taps = _fused_taps(int(np.count_nonzero(spatials)))
    batch, _, height, width = unary.shape
    size = taps * batch * height * width * dtype.itemsize
    if size > max(CRF_WEIGHT_CACHE_BYTES, CRF_WEIGHT_CACHE_UNARIES * unary.nbytes):
        return terms
    # scratch arrays (kept for the next call of this thread): they live until the call ends
    weights_of = CRFWeights(
        scratch("crf-weights", (batch, height, taps, width), dtype)[0],
        scratch("crf-tap-rows", (batch, height, taps), np.int64)[0],
        scratch("crf-tap-offsets", (batch, height, taps), np.int64)[0],
        scratch("crf-active-taps", (batch, height), np.int64)[0],
    )
    run(_crf_kernels.pairwise_weights, batch * height, _crf_guide(guide, unary), bounds,
        spatials, dilations, weights, *weights_of, work=size // dtype.itemsize * 8)
    return weights_of


def _fused_taps(taps):
    """The taps a row of the weight cache holds: 2, 4 or 8 when that many are enough (the
    fused palette step's blocks, ``_crf_kernels.mean_field_step_fused``, run a fixed count;
    the rest get weight 0), else ``taps``."""
    return next((size for size in (2, 4, 8) if taps <= size), taps)


def crf_step(unary, q, guide, terms, extra, compatibility, want_logits):
    """One mean-field update in one fused parallel pass: returns ``(new Q, logits or None)``.

    ``unary`` ``(N, L, H, W)`` the log-potentials times the unary weight; ``q`` the current
    marginals; ``guide`` ``(N, F, H, W)`` the features of all the terms stacked, or None;
    ``terms`` a sequence of ``(weight, spatial, dilation, features)`` for the full-resolution
    terms (as in :func:`crf_add_messages`, ``features`` the ``(start, stop)`` range of the
    term's features in ``guide`` or None), or what :func:`crf_prepare` made of them; ``extra``
    ``(N, L, H, W)`` added to the weighted message sum ``P`` (the blurred terms), or None;
    ``compatibility`` ``(L, L)``, or None for Potts. The logits are ``unary + P`` (Potts, up to
    a per-pixel constant) or ``unary - compatibility @ P``; they are returned (a new array)
    when ``want_logits``.
    """
    dtype = unary.dtype
    use_compatibility = compatibility is not None
    if not use_compatibility:
        compatibility = np.zeros((1, 1), dtype)
    new_q = np.empty_like(unary)
    rows = unary.shape[0] * unary.shape[2]
    logits = np.empty_like(unary) if want_logits else unary  # not written unless wanted
    tail = (unary if extra is None else extra, extra is not None, compatibility,
            use_compatibility, new_q, logits, bool(want_logits))
    if isinstance(terms, CRFWeights):
        run(_crf_kernels.mean_field_step_cached, rows, unary, q, *terms, *tail,
            work=unary.size * terms.cache.shape[2])
    else:
        spatials, bounds, dilations, weights = _crf_step_terms(terms, dtype)
        run(_crf_kernels.mean_field_step, rows, unary, q, _crf_guide(guide, unary), bounds,
            spatials, dilations, weights, *tail, work=unary.size * (spatials.size + 8))
    return new_q, (logits if want_logits else None)


def crf_block_mean(q, factor):
    """Block means of ``(N, L, H, W)`` marginals over ``factor x factor`` blocks, a new
    ``(N, L, ceil(H / factor), ceil(W / factor))`` array (``pacarray._mean_field.block_mean``)."""
    batch, labels, height, width = q.shape
    out = np.empty((batch, labels, -(-height // factor), -(-width // factor)), q.dtype)
    run(_crf_kernels.block_mean, batch * labels * out.shape[2], q, int(factor), out,
        work=q.size)
    return out


def crf_upsample_add(coarse, weights, rows, cols, out):
    """``out +=`` the upsampling of ``coarse`` with the weights and indices of
    ``pacarray._mean_field.upsample_weights``."""
    run(_crf_kernels.upsample_add, out.shape[0] * out.shape[2], coarse, weights, rows, cols,
        out, work=4 * out.size)


def crf_palette_splat(grid, q):
    """The palette term's splat of 2-D marginals ``(N, L, H, W)``: ``(N, L, P, h, w)``
    (``pacarray._palette.splat``)."""
    batch, labels = q.shape[:2]
    out = np.empty((batch, labels, grid.palette_size * grid.grid_size), q.dtype)
    run(_crf_kernels.palette_splat, batch * labels, q.reshape(batch, labels, -1),
        grid.senders, grid.splat_index, out, work=q.size // grid.send**2)
    return out.reshape(batch, labels, grid.palette_size, *grid.cells)


def crf_palette_slice_add(grid, coarse, scale, out):
    """``out +=`` the palette term's slice of ``coarse`` (``pacarray._palette.slice_add``)."""
    run(_crf_kernels.palette_slice_add, out.shape[0] * out.shape[2], coarse, grid.owner,
        grid.lo[0], grid.hi[0], grid.t[0], grid.lo[1], grid.hi[1], grid.t[1], grid.inv_norm,
        out.dtype.type(scale), out, work=4 * out.size)


def crf_palette_assign(features, palette):
    """Nearest palette entry of each pixel (``pacarray._palette.assign``): ``(N, *spatial)``
    int32 from ``features`` ``(N, F, *spatial)`` and ``palette`` ``(N, P, F)`` float64."""
    batch = features.shape[0]
    flat = np.ascontiguousarray(features.reshape(batch, features.shape[1], -1))
    owner = np.empty((batch, flat.shape[2]), np.int32)
    run(_crf_kernels.palette_assign, batch * -(-flat.shape[2] // 4096), flat,
        np.ascontiguousarray(palette, dtype=np.float64), owner, work=flat.size * palette.shape[1])
    return owner.reshape(batch, *features.shape[2:])


def crf_palette_add_adjoint(grid, grad, scale, out):
    """``out += scale * m^T(grad)`` for a 2-D palette term (``pacarray._palette.add_adjoint``):
    the slice's adjoint, the smoothing (symmetric) and the splat's adjoint."""
    batch, labels = grad.shape[:2]
    coarse = np.empty((batch, labels, grid.palette_size, *grid.cells), grad.dtype)
    run(_crf_kernels.palette_adjoint, batch * labels, grad, grid.owner, grid.lo[0], grid.hi[0],
        grid.t[0], grid.lo[1], grid.hi[1], grid.t[1], grid.inv_norm, coarse, work=4 * grad.size)
    coarse = _palette.smooth(np, grid, coarse)
    run(_crf_kernels.palette_gather_add, batch * labels,
        coarse.reshape(batch, labels, -1), grid.senders, grid.splat_index,
        grad.dtype.type(scale), out.reshape(batch, labels, -1),
        work=grad.size // grid.send**2)
    return out


class PaletteState(NamedTuple):
    """What the fused palette steps pass on (:func:`crf_palette_step`)."""

    grid: np.ndarray  # (N, L, P, h, w): the splat of the current marginals
    slice_weights: np.ndarray  # (N, 2, H, W)
    splat_index: np.ndarray  # (N, H, W) int32
    # the block-fused steps (``_crf_kernels.mean_field_step_fused``): their two (N, H, L,
    # W + 2 pad) buffers of marginals, the current one first; None for the row kernel
    buffers: tuple | None = None
    pad: int = 0


def crf_palette_start(grid, unary, terms=(), compatibility=None, keep=True):
    """The marginals before the first update, ``softmax(unary)`` (``(N, L, H, W)``, 2-D), and
    the state of the fused palette steps for them (their splat comes out of the same pass):
    ``(Q, state)``. ``terms`` and ``compatibility`` are those the steps will take. Unless
    ``keep`` (the caller keeps each step's marginals, or wants the logits of the last) and
    when :func:`_fused_blocks` takes them, the steps run on blocks of pixels and their
    marginals live in two buffers of the state, the ``Q`` returned being views of them
    (valid until the second step after)."""
    batch, height, width = grid.owner.shape
    dtype = unary.dtype
    slice_weights = scratch("crf-slice-weights", (batch, 2, height, width), dtype)[0]
    splat_index = scratch("crf-splat-index", (batch, height, width), np.int32)[0]
    run(_crf_kernels.palette_step_indices, batch * height, grid.owner, grid.inv_norm,
        dtype.type(grid.weight), grid.t[1], grid.cell, grid.cells[1], slice_weights,
        splat_index, work=8 * batch * height * width)
    state = PaletteState(None, slice_weights, splat_index)
    pad = None if keep else _fused_blocks(grid, unary, terms, compatibility)
    if pad is None:
        q, _, state = _palette_pass(unary, unary, (), grid, state, None, False, True, None,
                                    False)
        return q, state
    batch, labels, height, width = unary.shape
    buffers = []
    for i in range(2):
        buffer, new = scratch(f"crf-marginals-{i}", (batch, height, labels, width + 2 * pad),
                              dtype)
        if new:  # the kernels write only between the padding columns
            buffer[..., :pad] = 0.0
            buffer[..., pad + width:] = 0.0
        buffers.append(buffer)
    state = state._replace(buffers=tuple(buffers), pad=pad)
    q, _, state = _fused_pass(unary, (), grid, state, True, False)
    return q, state


def _fused_blocks(grid, unary, terms, compatibility):
    """The columns of padding the block-fused steps need around the marginals' rows (a
    multiple of the vector length, as far as the taps reach), or None where they do not
    apply: Potts only, at most ``PALETTE_LANES`` palette entries, cells and rows of at least
    one vector block, and no window terms or cached ones of 2, 4 or 8 taps."""
    block = _crf_vector.lanes(unary.dtype.itemsize)
    if compatibility is not None or grid.palette_size > _crf_vector.PALETTE_LANES:
        return None
    if unary.ndim != 4 or grid.cell < block or unary.shape[3] < block:
        return None
    reach = 0
    if isinstance(terms, CRFWeights):
        if terms.cache.shape[2] not in (2, 4, 8):
            return None
        reach = int(np.abs(terms.tap_offsets).max(initial=0))
    elif len(terms):
        return None
    return block * max(1, -(-reach // block))


def _fused_pass(unary, terms, grid, state, splat, use_slice):
    """One pass of ``_crf_kernels.mean_field_step_fused`` from ``state.buffers[0]``: into
    ``state.buffers[1]`` when ``splat`` (returning them swapped), else into a new ``(N, L,
    H, W)`` array (the last step); without ``use_slice`` (nor window terms) the softmax of
    ``unary``, into ``state.buffers[0]``. Returns ``(Q, None, state)``."""
    dtype = unary.dtype
    batch, labels, height, width = unary.shape
    pad = state.pad
    low_h, low_w = grid.cells
    coarse = _coarse(grid, state, use_slice, dtype, batch, labels)
    current, following = state.buffers
    if not use_slice:
        current, following = following, current
    q = current[..., pad:pad + width]
    if splat:
        q_out = following[..., pad:pad + width]
    else:
        result = np.empty_like(unary)
        q_out = result.transpose(0, 2, 1, 3)
    grid_out = np.empty((batch, labels, low_h, grid.palette_size * low_w), dtype) if splat \
        else np.empty((1, 1, 1, 1), dtype)
    if isinstance(terms, CRFWeights):
        windows = (terms.cache, terms.tap_rows, terms.tap_offsets, True)
    else:
        windows = (np.empty((1, 1, 1, 1), dtype), np.empty((1, 1, 1), np.int64),
                   np.empty((1, 1, 1), np.int64), False)
    run(_crf_kernels.mean_field_step_fused, batch * low_h, unary, q, *windows, coarse,
        grid.lo[0], grid.hi[0], grid.t[0], grid.owner, grid.lo[1], state.slice_weights,
        bool(use_slice), grid.cell, grid.send, state.splat_index, grid_out, bool(splat), q_out,
        _crf_vector.lanes(dtype.itemsize),
        work=unary.size * (8 + (terms.cache.shape[2] if isinstance(terms, CRFWeights) else 0)))
    if not splat:
        return result, None, state
    state = state._replace(grid=_moved_grid(grid_out, grid), buffers=(following, current))
    return q_out.transpose(0, 2, 1, 3), None, state


def _coarse(grid, state, use_slice, dtype, batch, labels):
    """The palette term's smoothed grid as the fused kernels read it: ``(N, L, h, w,
    lanes)``, palette entries last, padded with zeros to at least ``PALETTE_LANES``."""
    low_h, low_w = grid.cells
    palette = grid.palette_size
    lanes = max(_crf_vector.PALETTE_LANES, palette)
    coarse = np.zeros((batch, labels, low_h, low_w, lanes), dtype)  # its shape sets the tasks
    if use_slice:
        smoothed = _palette.smooth(np, grid, state.grid)
        coarse[..., :palette] = smoothed.transpose(0, 1, 3, 4, 2)
    return coarse


def _moved_grid(grid_out, grid):
    """The splat the kernels wrote, ``(N, L, h, P * w)``, as ``(N, L, P, h, w)``."""
    batch, labels, low_h = grid_out.shape[:3]
    moved = grid_out.reshape(batch, labels, low_h, grid.palette_size, grid.cells[1])
    return np.ascontiguousarray(moved.transpose(0, 1, 3, 2, 4))


def crf_palette_fusable(terms):
    """Whether :func:`crf_palette_step` takes these prepared window terms (none, or their
    cached kernels)."""
    return isinstance(terms, CRFWeights) or len(terms) == 0


def crf_palette_step(unary, q, guide, terms, grid, state, compatibility, want_logits, splat,
                     out=None):
    """:func:`crf_step` with one palette term fused in (``_crf_kernels.mean_field_step_palette``,
    or ``mean_field_step_fused`` when :func:`crf_palette_start` chose it, whose buffers hold
    ``q``): returns ``(new Q, logits or None, state for the next step)``; without ``splat``
    (the last step) the next state's grid is not computed, and the new ``Q`` is a new array.
    ``terms`` are what :func:`crf_prepare` returned: the window terms' cached kernels, or
    ``()`` without window terms. ``out``, when given, an array like ``unary`` that is not
    ``q``, receives the new marginals of the row kernel."""
    if state.buffers is not None:
        return _fused_pass(unary, terms, grid, state, splat, True)
    return _palette_pass(unary, q, terms, grid, state, compatibility, want_logits, splat, out,
                         True)


def _palette_pass(unary, q, terms, grid, state, compatibility, want_logits, splat, out,
                  use_slice):
    """One pass of ``_crf_kernels.mean_field_step_palette``: an update (``use_slice``; the
    palette term's smoothed grid is ``state.grid``'s), or the softmax of ``unary`` with its
    splat (neither windows nor slice)."""
    dtype = unary.dtype
    batch, labels, height, width = unary.shape
    low_h, low_w = grid.cells
    palette = grid.palette_size
    coarse = _coarse(grid, state, use_slice, dtype, batch, labels)
    use_compatibility = compatibility is not None
    if not use_compatibility:
        compatibility = np.zeros((1, 1), dtype)
    new_q = np.empty_like(unary) if out is None else out
    logits = np.empty_like(unary) if want_logits else unary
    grid_out = np.empty((batch, labels, low_h, palette * low_w), dtype) if splat else \
        np.empty((1, 1, 1, 1), dtype)
    if not isinstance(terms, CRFWeights):
        empty = np.empty((1, 1, 1, 1), dtype)
        index = np.empty((1, 1, 1), np.int64)
        windows = (empty, index, index, np.empty((1, 1), np.int64), False)
    else:
        windows = (*terms, True)
    run(_crf_kernels.mean_field_step_palette, batch * low_h, unary, q, *windows, coarse,
        grid.lo[0], grid.hi[0], grid.t[0], grid.owner, grid.lo[1], state.slice_weights,
        bool(use_slice), grid.cell, grid.send, state.splat_index, grid_out, bool(splat),
        compatibility, use_compatibility, new_q, logits, bool(want_logits),
        _crf_vector.lanes(dtype.itemsize),
        work=unary.size * (8 + (terms.cache.shape[2] if isinstance(terms, CRFWeights) else 0)))
    if splat:
        state = state._replace(grid=_moved_grid(grid_out, grid))
    return new_q, (logits if want_logits else None), state


def all_finite(array):
    """Whether every value of a C-contiguous float32 or float64 array is finite (one
    parallel pass). Optional entry point: ``pacarray.crf`` checks the unary with it when the
    backend has it (the others take the extremes)."""
    if array.dtype == np.float32:
        bits, exponent = array.reshape(-1).view(np.int32), np.int32(0x7F800000)
    else:
        bits, exponent = array.reshape(-1).view(np.int64), np.int64(0x7FF0000000000000)
    block = 1 << 16
    flags = np.empty(-(-bits.size // block), np.bool_)
    run(_crf_kernels.finite_blocks, flags.size, bits, exponent, block, flags, work=bits.size)
    return bool(flags.all())


def crf_softmax(logits):
    """Softmax over the labels (axis 1) of ``(N, L, H, W)`` logits, in a new array."""
    # An update without pairwise terms is exactly the softmax of its unary; reusing the step
    # kernel saves compiling a separate parallel kernel per dtype.
    return crf_step(logits, logits, None, (), None, None, False)[0]


# --------------------------------------------------------------------------------------------
