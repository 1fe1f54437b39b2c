"""Numba kernels of the CPU backend.

Every kernel is written once for three spatial dimensions ``(D, H, W)``; the drivers lift 1-D
and 2-D arrays to 3-D with singleton leading axes (kernel 1, stride 1, padding 0 there), and the
depth loops are outermost, so a 2-D call runs the arithmetic of a 2-D kernel in the same order
(``docs/design.md`` §7). Taps are numbered ``t = (tz*kh + ty)*kw + tx``.

Every kernel works on one output row ``(n, oz, oy)`` at a time, which keeps the fused path's
memory at O(row) per thread: the adaptive kernel of a row is computed into a small buffer
``(Fk, T, Wo)`` and consumed at once. Options are runtime integers, not compile-time
specializations, so each public kernel compiles once per dtype.

Integer codes (defined once in :mod:`pacarray._codes`):

* family: 0 constant 1, 1 Gaussian, 2 inverse power, 3 asymmetric inverse power
* normalize: 0 none, 1 kernel, 2 mask, 3 mask_kernel
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Module globals of plain ints: Numba freezes them into the compiled kernels as constants.
from .._codes import (  # noqa: F401 (FAMILY_INVERSE: every code importable from here)
    FAMILY_CONSTANT,
    FAMILY_GAUSSIAN,
    FAMILY_INVERSE,
    FAMILY_INVERSE_ASYMMETRIC,
    NORMALIZE_KERNEL,
    NORMALIZE_MASK,
    NORMALIZE_MASK_KERNEL,
    NORMALIZE_NONE,
)
from ._exp import exp_nonpositive
from ._microkernel import (
    TILE_ROWS,
    TILE_VECTORS,
    VECTOR_BYTES,
    tile1,
    tile2,
    tile3,
    tile4,
    tile5,
    tile6,
    tile7,
    tile8,
    tile9,
    tile10,
    tile11,
    tile12,
)


#: Work buffers start on a cache line: a 64-byte (AVX-512) vector load or store that straddles
#: two lines costs about twice as much, and Numba's own arrays are only 32-byte aligned.
CACHE_LINE = 64


@njit(cache=True)
def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)``, starting on a :data:`CACHE_LINE` boundary.

    Rows of ``shape`` whose byte length is a multiple of the line stay aligned too, so unit-stride
    loops over them issue no split vector accesses. (A view of a slightly larger buffer.)
    """
    count = 1
    for extent in shape:
        count *= extent
    buffer = np.empty(count + CACHE_LINE, dtype)
    skip = (-buffer.ctypes.data) % CACHE_LINE // buffer.itemsize
    return buffer[skip:skip + count].reshape(shape)


@njit(cache=True)
def _tap_range(taps_offset, stride, padding, size_in, size_out):
    """Outputs ``[lo, hi)`` whose neighbour ``o*stride - padding + taps_offset`` is in range."""
    # smallest o with o*stride >= padding - taps_offset
    need = padding - taps_offset
    if need <= 0:
        lo = 0
    else:
        lo = (need + stride - 1) // stride
    # largest o with o*stride - padding + taps_offset <= size_in - 1
    top = size_in - 1 + padding - taps_offset
    if top < 0:
        return 0, 0
    hi = top // stride + 1
    if hi > size_out:
        hi = size_out
    if lo > hi:
        lo = hi
    return lo, hi


@njit(cache=True, fastmath={"contract"})
def _gaussian_of_d2(out_row, d2, lo, hi, g):
    """``out_row[lo:hi] = exp(-d2/2) * g``, vectorized (see :mod:`pacarray._cpu._exp`).

    Evaluated in float64 for both dtypes, so that for float32 output the product with ``g`` is
    rounded once; float32 output asks for the shorter polynomial that its precision needs. NaN
    propagates; ``d2 > 1200`` gives exactly 0.
    """
    src = d2[lo:hi]
    dst = out_row[lo:hi]
    for j in range(hi - lo):
        dst[j] = exp_nonpositive(-0.5 * np.float64(src[j]), out_row.dtype) * g


@njit(cache=True)
def _finish_kernel(out_row, d2, lo, hi, family, alpha, lam, eps2, g):
    """``out_row[lo:hi] = kappa(d2) * g`` for the Gaussian or inverse-power family."""
    if family == FAMILY_GAUSSIAN:
        _gaussian_of_d2(out_row, d2, lo, hi, g)
    else:
        half_power = d2.dtype.type(0.5) * lam
        eps2_typed = d2.dtype.type(eps2)
        for ox in range(lo, hi):
            out_row[ox] = (alpha + (d2[ox] + eps2_typed) ** half_power) * g


@njit(cache=True)
def kernel_row(
    guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx,
    kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask, normalize,
    channel_wise, out, z, scratch,
):
    """Normalized adaptive kernel of output row ``(oz, oy)`` of batch ``n`` into
    ``out[Fk, T, Wo]``.

    ``z[Fk, Wo]`` receives the normalizer (1 when ``normalize == 0``); taps whose neighbour is out
    of range are 0. ``scratch`` is a ``(Wo,)`` work buffer.
    """
    fk_count = out.shape[0]
    features = guide.shape[1]
    zero = out.dtype.type(0.0)
    cz = oz * ksz - kpz + dd * ((kd - 1) // 2)
    cy = oy * ksy - kpy + dh * ((kh - 1) // 2)
    centre_off = dw * ((kw - 1) // 2) - kpx
    for tz in range(kd):
        qz = oz * ksz - kpz + tz * dd
        plane_ok = qz >= 0 and qz < guide_d
        for ty in range(kh):
            qy = oy * ksy - kpy + ty * dh
            row_ok = plane_ok and qy >= 0 and qy < guide_h
            for tx in range(kw):
                t = (tz * kh + ty) * kw + tx
                for fk in range(fk_count):
                    for ox in range(out_w):
                        out[fk, t, ox] = 0.0
                if not row_ok:
                    continue
                lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                g = spatial[t]
                if family == FAMILY_CONSTANT:
                    for fk in range(fk_count):
                        for ox in range(lo, hi):
                            out[fk, t, ox] = g
                elif channel_wise:
                    for fk in range(fk_count):
                        centre_row = centre[n, fk, cz, cy]
                        guide_row = guide[n, fk, qz, qy]
                        for ox in range(lo, hi):
                            diff = (centre_row[ox * ksx + centre_off]
                                    - guide_row[ox * ksx + tx * dw - kpx])
                            if family == FAMILY_INVERSE_ASYMMETRIC:
                                diff = zero if diff < zero else diff
                            scratch[ox] = diff * diff
                        _finish_kernel(out[fk, t], scratch, lo, hi, family, alpha[fk], lam[fk],
                                       eps2, g)
                else:
                    for ox in range(lo, hi):
                        scratch[ox] = 0.0
                    for f in range(features):
                        centre_row = centre[n, f, cz, cy]
                        guide_row = guide[n, f, qz, qy]
                        if ksx == 1:
                            # unit stride: contiguous rows, so the loop vectorizes
                            c_row = centre_row[centre_off + lo:]
                            g_row = guide_row[tx * dw - kpx + lo:]
                            d2_row = scratch[lo:]
                            for j in range(hi - lo):
                                diff = c_row[j] - g_row[j]
                                if family == FAMILY_INVERSE_ASYMMETRIC and diff < zero:
                                    diff = zero
                                d2_row[j] += diff * diff
                        else:
                            for ox in range(lo, hi):
                                diff = (centre_row[ox * ksx + centre_off]
                                        - guide_row[ox * ksx + tx * dw - kpx])
                                if family == FAMILY_INVERSE_ASYMMETRIC:
                                    diff = zero if diff < zero else diff
                                scratch[ox] += diff * diff
                    _finish_kernel(out[0, t], scratch, lo, hi, family, alpha[0], lam[0], eps2, g)

    if normalize == NORMALIZE_NONE:
        for fk in range(fk_count):
            for ox in range(out_w):
                z[fk, ox] = 1.0
        if has_mask:
            _apply_mask(out, mask, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw,
                        ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw)
        return

    for fk in range(fk_count):
        for ox in range(out_w):
            z[fk, ox] = 0.0
    for tz in range(kd):
        qz = oz * ksz - kpz + tz * dd
        if qz < 0 or qz >= guide_d:
            continue
        for ty in range(kh):
            qy = oy * ksy - kpy + ty * dh
            if qy < 0 or qy >= guide_h:
                continue
            for tx in range(kw):
                t = (tz * kh + ty) * kw + tx
                lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                for fk in range(fk_count):
                    for ox in range(lo, hi):
                        k_value = out[fk, t, ox]
                        m = 1.0
                        if has_mask:
                            m = mask[n, qz, qy, ox * ksx - kpx + tx * dw]
                        if normalize == NORMALIZE_KERNEL:
                            z[fk, ox] += k_value
                        elif normalize == NORMALIZE_MASK:
                            z[fk, ox] += m
                        else:
                            z[fk, ox] += m * k_value
                        if has_mask:
                            out[fk, t, ox] = k_value * m
    for fk in range(fk_count):
        for ox in range(out_w):
            zv = z[fk, ox]
            scratch[ox] = 0.0 if zv == 0.0 else 1.0 / zv
        for t in range(kd * kh * kw):
            for ox in range(out_w):
                out[fk, t, ox] *= scratch[ox]


@njit(cache=True)
def _apply_mask(out, mask, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy,
                ksx, kpz, kpy, kpx, dd, dh, dw):
    for tz in range(kd):
        qz = oz * ksz - kpz + tz * dd
        if qz < 0 or qz >= guide_d:
            continue
        for ty in range(kh):
            qy = oy * ksy - kpy + ty * dh
            if qy < 0 or qy >= guide_h:
                continue
            for tx in range(kw):
                t = (tz * kh + ty) * kw + tx
                lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                for fk in range(out.shape[0]):
                    for ox in range(lo, hi):
                        out[fk, t, ox] *= mask[n, qz, qy, ox * ksx - kpx + tx * dw]


@njit(cache=True)
def _row_kernel(
    explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw,
    ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask,
    normalize, channel_wise, kbuf, z, scratch,
):
    """Fill ``kbuf`` with row ``(oz, oy)`` of the adaptive kernel: copied (explicit) or
    computed."""
    if use_explicit:
        for fk in range(kbuf.shape[0]):
            for t in range(kbuf.shape[1]):
                for ox in range(out_w):
                    kbuf[fk, t, ox] = explicit[n, fk, t, oz, oy, ox]
    else:
        kernel_row(
            guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy,
            ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask,
            normalize, channel_wise, kbuf, z, scratch,
        )


@njit(cache=True, nogil=True)
def fill_kernel(
    guide, centre, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh,
    dw, family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, out, valid,
    job_start, job_stop,
):
    """Materialize K: ``out[N, Fk, T, Do, Ho, Wo]`` and ``valid[N, Fk, Do, Ho, Wo]``
    (Z != 0), for the output rows ``job_start:job_stop`` of the ``N*Do*Ho`` (jobs of
    :func:`pacarray._cpu._parallel.run`)."""
    batch, fk_count, taps, out_d, out_h, out_w = out.shape
    rows = out_d * out_h
    for job in range(job_start, job_stop):
        n = job // rows
        oz = job % rows // out_h
        oy = job % out_h
        kbuf = aligned_empty((fk_count, taps, out_w), out.dtype)
        z = aligned_empty((fk_count, out_w), out.dtype)
        scratch = aligned_empty((out_w,), out.dtype)
        kernel_row(
            guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy,
            ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask,
            normalize, channel_wise, kbuf, z, scratch,
        )
        for fk in range(fk_count):
            for t in range(taps):
                for ox in range(out_w):
                    out[n, fk, t, oz, oy, ox] = kbuf[fk, t, ox]
            for ox in range(out_w):
                valid[n, fk, oz, oy, ox] = z[fk, ox] != 0.0


@njit(cache=True)
def _source_index(o, tap, k, stride, padding, dilation, size_in, transposed):
    """Input index read by output ``o`` at kernel tap ``tap``, or -1 when none.

    Forward: ``o*stride - padding + tap*dilation``. Transposed: the weight tap is ``k-1-tap`` and
    the input ``i`` satisfies ``i*stride = o + padding - (k-1-tap)*dilation``.
    """
    if transposed:
        num = o + padding - (k - 1 - tap) * dilation
        if num < 0 or num % stride != 0:
            return -1
        i = num // stride
    else:
        i = o * stride - padding + tap * dilation
    if i < 0 or i >= size_in:
        return -1
    return i


@njit(cache=True, nogil=True)
def direct(
    x, tap_weight, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    y, job_start, job_stop,
):
    """``y[n,c,o] = sum_t tap_weight[t] K[n,(c),t,o] x[n,c,src(o,t)]`` (pooling, shared filters).

    ``tap_weight`` ``(kd, kh, kw)`` is indexed by the kernel tap; for transposed ops the caller
    flips the weights.
    """
    batch, channels, in_d, in_h, in_w = x.shape
    out_d, out_h, out_w = y.shape[2], y.shape[3], y.shape[4]
    kd, kh, kw = tap_weight.shape[0], tap_weight.shape[1], tap_weight.shape[2]
    taps = kd * kh * kw
    rows = out_d * out_h
    for job in range(job_start, job_stop):
        n = job // rows
        oz = job % rows // out_h
        oy = job % out_h
        kbuf = aligned_empty((fk_count, taps, out_w), y.dtype)
        z = aligned_empty((fk_count, out_w), y.dtype)
        scratch = aligned_empty((out_w,), y.dtype)
        _row_kernel(
            explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w,
            kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2,
            spatial, mask, has_mask, normalize, channel_wise, kbuf, z, scratch,
        )
        phases = np.empty((sx, (in_w + sx - 1) // sx), y.dtype)
        for c in range(channels):
            kc = c if fk_count > 1 else 0
            for ox in range(out_w):
                scratch[ox] = 0.0
            for tz in range(kd):
                    iz = _source_index(oz, tz, kd, sz, pz, dd, in_d, transposed)
                    if iz < 0:
                        continue
                    for ty in range(kh):
                        iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                        if iy < 0:
                            continue
                        x_row = x[n, c, iz, iy]
                        if sx > 1 and not transposed:
                            _deinterleave(x_row, sx, phases)
                        for tx in range(kw):
                            t = (tz * kh + ty) * kw + tx
                            w = tap_weight[tz, ty, tx]
                            if transposed:
                                for ox in range(out_w):
                                    ix = _source_index(ox, tx, kw, sx, px, dw, in_w, True)
                                    if ix >= 0:
                                        scratch[ox] += w * kbuf[kc, t, ox] * x_row[ix]
                            else:
                                _accumulate_forward(scratch, w, kbuf[kc, t], x_row, phases,
                                                    tx * dw - px, sx, in_w)
            for ox in range(out_w):
                y[n, c, oz, oy, ox] = scratch[ox]


#: Output rows per parallel job (their buffers are allocated once).
_BAND = 4


@njit(cache=True)
def _deinterleave(x_row, stride, phases):
    """``phases[r, j] = x_row[j*stride + r]``: strided reads become contiguous ones."""
    width = x_row.shape[0]
    for r in range(stride):
        count = (width - r + stride - 1) // stride
        dst = phases[r]
        for j in range(count):
            dst[j] = x_row[j * stride + r]


@njit(cache=True)
def _row_source(x_row, phases, stride, base):
    """A contiguous array ``a`` and offset ``s`` with ``x_row[o*stride + base] == a[o + s]``."""
    if stride == 1:
        return x_row, base
    phase = base % stride
    return phases[phase], (base - phase) // stride


@njit(cache=True)
def _accumulate_forward(acc, weight, k_row, x_row, phases, base, stride, in_w):
    """``acc[o] += weight * k_row[o] * x_row[o*stride + base]`` where that index is in range."""
    lo, hi = _tap_range(base, stride, 0, in_w, acc.shape[0])
    src, offset = _row_source(x_row, phases, stride, base)
    x_part = src[lo + offset:]
    acc_part = acc[lo:]
    k_part = k_row[lo:]
    for j in range(hi - lo):
        acc_part[j] += weight * k_part[j] * x_part[j]


@njit(cache=True)
def _tile_blocks(out_channels):
    """Start of each block of output channels, and the end: blocks of :data:`TILE_ROWS` and
    the rest (every tile size from 1 row to 12 measured at 85-100 % of one core's FMA peak with
    16 input channels and k = 5, except 1 and 2, which are bound by the loads of K and x)."""
    blocks = (out_channels + TILE_ROWS - 1) // TILE_ROWS
    starts = np.empty(blocks + 1, np.intp)
    for block in range(blocks):
        starts[block] = block * TILE_ROWS
    starts[blocks] = out_channels
    return starts


@njit(cache=True)
def _pack_weights(weight_matrix, starts, packed):
    """``packed[starts[b]*J + j*rows + r] = weight_matrix[starts[b] + r, j]`` (``rows`` of block
    ``b``): each block's weights in the order its tile reads them."""
    total = weight_matrix.shape[1]
    for block in range(starts.shape[0] - 1):
        o = starts[block]
        rows = starts[block + 1] - o
        for j in range(total):
            for r in range(rows):
                packed[o * total + j * rows + r] = weight_matrix[o + r, j]


@njit(cache=True)
def _accumulate_tiles(acc, packed, starts, kflat, xflat, k_off, x_off):
    """``acc[o, p] = sum_j weight_matrix[o, j] * kflat[k_off[j] + p] * xflat[x_off[j] + p]``,
    register-blocked (:mod:`pacarray._cpu._microkernel`), with the weights packed by
    :func:`_pack_weights` for the blocks ``starts`` of :func:`_tile_blocks`.

    Each block of output channels is swept over tiles of ``TILE_VECTORS`` vectors of pixels
    (``acc`` rows are a whole number of tiles wide); each output sums its products in order.
    """
    width = acc.shape[1]
    count = k_off.shape[0]
    step = TILE_VECTORS * VECTOR_BYTES // acc.itemsize
    for block in range(starts.shape[0] - 1):
        o = starts[block]
        rows = starts[block + 1] - o
        w = o * count
        for p in range(0, width, step):
            if rows == 1:
                tile1(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 2:
                tile2(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 3:
                tile3(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 4:
                tile4(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 5:
                tile5(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 6 or TILE_ROWS == 6:
                tile6(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 7:
                tile7(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 8:
                tile8(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 9:
                tile9(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 10:
                tile10(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 11:
                tile11(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            else:
                tile12(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)


@njit(cache=True)
def _pad_row(x, n, c, iz, iy, dst, start, row_len, phases, stride, shift, transposed):
    """Input row ``x[n, c, iz, iy]`` laid out for the tiles in ``dst[start:start +
    phases*row_len]``: zero-padded, so that tap reads never leave it, and unit stride in the
    output pixel; all zero when ``iy < 0`` (no source row).

    Forward (``phases == stride``): ``dst[start + r*row_len + m] = x[..., m*stride + r -
    shift]``. Transposed (one phase): the row with ``stride - 1`` zeros between its elements,
    ``dst[start + m] = x[..., i]`` where ``m == i*stride + shift``. Zero where no element
    falls. Indexed directly, with unsigned offsets in the common case (no row views, whose
    reference counts cost more than the copy; no negative-index wraparound, which keeps loops
    from vectorizing).
    """
    width = x.shape[4]
    base = np.uint64(start)
    if iy >= 0 and stride == 1 and not transposed:
        lo = min(max(shift, 0), row_len)
        hi = max(min(width + shift, row_len), lo)
        for m in range(lo):
            dst[base + np.uint64(m)] = 0.0
        into = base + np.uint64(lo)
        source = np.uint64(lo - shift)
        for j in range(hi - lo):
            u = np.uint64(j)
            dst[into + u] = x[n, c, iz, iy, source + u]
        for m in range(hi, row_len):
            dst[base + np.uint64(m)] = 0.0
        return
    for m in range(phases * row_len):
        dst[base + np.uint64(m)] = 0.0
    if iy < 0:
        return
    if transposed:
        for i in range(width):
            m = i * stride + shift
            if m >= 0 and m < row_len:
                dst[base + np.uint64(m)] = x[n, c, iz, iy, np.uint64(i)]
    else:
        for r in range(stride):
            for m in range(row_len):
                i = m * stride + r - shift
                if i >= 0 and i < width:
                    dst[base + np.uint64(r * row_len + m)] = x[n, c, iz, iy, np.uint64(i)]


def conv_jobs(rows: int) -> int:
    """Jobs of :func:`conv_rows` for ``rows`` output rows in all (``N*Do*Ho``)."""
    return -(-rows // _BAND)


@njit(cache=True, nogil=True)
def conv_rows(
    x, weight_matrix, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    kd, kh, kw, sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    y, job_start, job_stop,
):
    """``y[n,o,row] = sum_{c,t} weight_matrix[o, c*T+t] K[n,(c),t,row] x[n,c,src]``, row by row.

    Per output row: its adaptive kernel K into ``kbuf`` (``(Fk, T, width)``), the ``C*kd*kh``
    input rows it reads into ``xrows``, zero-padded and de-interleaved by the stride (zero rows
    where the source row is out of range; for transposed ops the rows with ``stride - 1`` zeros
    inserted), and a table of where reduction step ``j = c*T + t`` finds its K row and its
    input row. The register-blocked tiles of :mod:`pacarray._cpu._microkernel` then form each
    K-weighted patch row ``K * x`` in registers and fold it into the ``(C_out, width)``
    accumulator: nothing of the size of the patch matrix is ever stored, and no BLAS call
    competes with the kernels' threads (``docs/design.md`` §4). Each job takes :data:`_BAND`
    consecutive rows, so that its buffers are allocated once for them; this call runs the jobs
    ``job_start:job_stop`` of :func:`conv_jobs`.
    """
    batch, channels, in_d, in_h, in_w = x.shape
    out_channels, out_d, out_h, out_w = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    taps = kd * kh * kw
    total = channels * taps
    rows = out_d * out_h
    step = TILE_VECTORS * VECTOR_BYTES // y.itemsize
    width = (out_w + step - 1) // step * step
    # the padded input rows: the tile for tap tx at output pixel o reads phase (tx*dw) % phases
    # at o + (tx*dw) // phases
    if transposed:
        phases = 1
        shift = (kw - 1) * dw - px
    else:
        phases = sx
        shift = px
    row_len = width + ((kw - 1) * dw) // phases
    block = phases * row_len
    for band in range(job_start, job_stop):
        kflat = aligned_empty((fk_count * taps * width,), y.dtype)
        kflat[:] = 0.0  # pixels past the row: the tiles read them, the outputs skip them
        kbuf = kflat.reshape((fk_count, taps, width))
        z = aligned_empty((fk_count, out_w), y.dtype)
        scratch = aligned_empty((out_w,), y.dtype)
        acc = aligned_empty((out_channels, width), y.dtype)
        xflat = aligned_empty((channels * kd * kh * block,), y.dtype)
        starts = _tile_blocks(out_channels)
        packed = np.empty(out_channels * total, y.dtype)
        _pack_weights(weight_matrix, starts, packed)
        k_off = np.empty(total, np.intp)
        x_off = np.empty(total, np.intp)
        for c in range(channels):
            kc = c if fk_count > 1 else 0
            for t in range(taps):
                k_off[c * taps + t] = (kc * taps + t) * width
                tx = t % kw
                x_off[c * taps + t] = ((c * kd * kh + t // kw) * block
                                       + (tx * dw) % phases * row_len + (tx * dw) // phases)
        for job in range(band * _BAND, min(batch * rows, (band + 1) * _BAND)):
            n = job // rows
            oz = job % rows // out_h
            oy = job % out_h
            _row_kernel(
                explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h,
                guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha,
                lam, eps2, spatial, mask, has_mask, normalize, channel_wise, kbuf, z, scratch,
            )
            for c in range(channels):
                for tz in range(kd):
                    iz = _source_index(oz, tz, kd, sz, pz, dd, in_d, transposed)
                    for ty in range(kh):
                        iy = -1
                        if iz >= 0:
                            iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                        _pad_row(x, n, c, iz, iy, xflat, (c * kd * kh + tz * kh + ty) * block,
                                 row_len, phases, sx, shift, transposed)
            _accumulate_tiles(acc, packed, starts, kflat, xflat, k_off, x_off)
            for o in range(out_channels):
                for ox in range(out_w):
                    y[n, o, oz, oy, ox] = acc[o, ox]
