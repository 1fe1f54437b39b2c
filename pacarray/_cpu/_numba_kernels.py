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


#: Most bytes of K-weighted patch rows (the panel) per accumulation: large enough that the
#: accumulator tiles are loaded and stored once per 100-250 rows (16 rows per tile reached
#: 0.59-0.76 of the FMA peak, 128 and more 0.73-0.86), small enough to stay in L2 with the rest.
_PANEL_BYTES = 128 * 1024
#: Fewest panel rows, whatever the width.
_PANEL_MIN_ROWS = 16
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
def _fill_forward(panel, f, kbuf, kc, t, x, n, c, iz, iy, phases, base, stride, in_w, out_w):
    """``panel[f, o] = kbuf[kc, t, o] * x[n, c, iz, iy, o*stride + base]`` for ``o < out_w``
    where that index is in range, else 0 (``phases``: the row deinterleaved when
    ``stride > 1``).

    Indexed directly rather than through row views, each of which updates a reference count
    (B-conv16's 402 k rows: 4.5 ms instead of 5.8 ms on one core). The column offsets are
    unsigned so that Numba emits no negative-index wraparound, which kept the loop from
    vectorizing (about 10x slower).
    """
    lo, hi = _tap_range(base, stride, 0, in_w, out_w)
    for j in range(lo):
        panel[f, np.uint64(j)] = 0.0
    first = np.uint64(lo)
    if stride == 1:
        source = np.uint64(lo + base)
        for j in range(hi - lo):
            u = np.uint64(j)
            panel[f, first + u] = kbuf[kc, t, first + u] * x[n, c, iz, iy, source + u]
    else:
        phase = base % stride
        source = np.uint64(lo + (base - phase) // stride)
        for j in range(hi - lo):
            u = np.uint64(j)
            panel[f, first + u] = kbuf[kc, t, first + u] * phases[phase, source + u]
    for j in range(hi, out_w):
        panel[f, np.uint64(j)] = 0.0


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
def _accumulate_panel(acc, weight_matrix, panel, first, count):
    """``acc += weight_matrix[:, first:first + count] @ panel[:count]``, register-blocked.

    Tiles of :data:`TILE_ROWS` output channels by :func:`tile_width` pixels (``acc`` and
    ``panel`` rows are a whole number of tiles wide); each output sums its products in order.
    """
    out_channels, width = acc.shape
    step = TILE_VECTORS * VECTOR_BYTES // acc.itemsize
    o = 0
    while o + TILE_ROWS <= out_channels:
        for p in range(0, width, step):
            tile6(acc, weight_matrix, panel, o, first, count, p)
        o += TILE_ROWS
    rest = out_channels - o
    if rest == 0:
        return
    for p in range(0, width, step):
        if rest == 1:
            tile1(acc, weight_matrix, panel, o, first, count, p)
        elif rest == 2:
            tile2(acc, weight_matrix, panel, o, first, count, p)
        elif rest == 3:
            tile3(acc, weight_matrix, panel, o, first, count, p)
        elif rest == 4:
            tile4(acc, weight_matrix, panel, o, first, count, p)
        else:
            tile5(acc, weight_matrix, panel, o, first, count, p)


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

    The K-weighted patch rows of one output row are formed in a panel of up to
    :data:`_PANEL_BYTES` and folded into a ``(C_out, Wo)`` accumulator by the register-blocked
    tiles of :mod:`pacarray._cpu._microkernel`, so nothing larger than a few rows is ever
    materialized and no BLAS call competes with the kernels' threads (``docs/design.md`` §4). Each
    job takes :data:`_BAND` consecutive rows, so that its buffers are allocated once for them;
    this call runs the jobs ``job_start:job_stop`` of :func:`conv_jobs`.
    """
    batch, channels, in_d, in_h, in_w = x.shape
    out_channels, out_d, out_h, out_w = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    taps = kd * kh * kw
    total = channels * taps
    rows = out_d * out_h
    step = TILE_VECTORS * VECTOR_BYTES // y.itemsize
    width = (out_w + step - 1) // step * step
    # equal chunks of the reduction (400 rows as 4 x 100, not 3 x 128 + 16: a short chunk
    # loads and stores the accumulators as often for a fraction of the multiply-adds)
    chunks = -(-total // max(_PANEL_MIN_ROWS, _PANEL_BYTES // (width * y.itemsize)))
    panel_rows = -(-total // chunks)
    for band in range(job_start, job_stop):
        kbuf = aligned_empty((fk_count, taps, out_w), y.dtype)
        z = aligned_empty((fk_count, out_w), y.dtype)
        scratch = aligned_empty((out_w,), y.dtype)
        acc = aligned_empty((out_channels, width), y.dtype)
        panel = aligned_empty((panel_rows, width), y.dtype)
        panel[:, out_w:] = 0.0  # pixels past the row: the tiles read them, outputs skip them
        phases = np.empty((sx, (in_w + sx - 1) // sx), y.dtype)
        for job in range(band * _BAND, min(batch * rows, (band + 1) * _BAND)):
            n = job // rows
            oz = job % rows // out_h
            oy = job % out_h
            _row_kernel(
                explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h,
                guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha,
                lam, eps2, spatial, mask, has_mask, normalize, channel_wise, kbuf, z, scratch,
            )
            acc[:] = 0.0
            filled = 0
            first = 0
            for c in range(channels):
                kc = c if fk_count > 1 else 0
                for tz in range(kd):
                    iz = _source_index(oz, tz, kd, sz, pz, dd, in_d, transposed)
                    for ty in range(kh):
                        iy = -1
                        if iz >= 0:
                            iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                        if iy >= 0 and sx > 1 and not transposed:
                            _deinterleave(x[n, c, iz, iy], sx, phases)
                        for tx in range(kw):
                            t = (tz * kh + ty) * kw + tx
                            if iy < 0:
                                for ox in range(out_w):
                                    panel[filled, ox] = 0.0
                            elif transposed:
                                for ox in range(out_w):
                                    ix = _source_index(ox, tx, kw, sx, px, dw, in_w, True)
                                    panel[filled, ox] = (kbuf[kc, t, ox] * x[n, c, iz, iy, ix]
                                                         if ix >= 0 else 0.0)
                            else:
                                _fill_forward(panel, filled, kbuf, kc, t, x, n, c, iz, iy,
                                              phases, tx * dw - px, sx, in_w, out_w)
                            filled += 1
                            if filled == panel_rows or first + filled == total:
                                _accumulate_panel(acc, weight_matrix, panel, first, filled)
                                first += filled
                                filled = 0
            for o in range(out_channels):
                for ox in range(out_w):
                    y[n, o, oz, oy, ox] = acc[o, ox]
