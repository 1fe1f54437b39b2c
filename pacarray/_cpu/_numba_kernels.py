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
from ._exp import gaussian_weight
from ._microkernel import (
    TILE_SIZES,
    TILE_VECTORS,
    VECTOR_BYTES,
    tile1,
    tile2,
    tile4,
    tile6,
    tile8,
    tile12,
    tile16,
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
    """``out_row[lo:hi] = exp(-d2/2) * g`` by :func:`pacarray._cpu._exp.gaussian_weight`
    (vectorized; float32 in float32). NaN propagates."""
    src = d2[lo:hi]
    dst = out_row[lo:hi]
    for j in range(hi - lo):
        dst[j] = gaussian_weight(src[j], g)


@njit(cache=True, fastmath={"contract"})
def _finish_kernel(out, fk, t, d2, lo, hi, family, alpha, lam, eps2, g):
    """``out[fk, t, lo:hi] = kappa(d2[lo:hi]) * g`` for the Gaussian or inverse-power family
    (the Gaussian as :func:`_gaussian_of_d2`)."""
    first = np.uint64(lo)
    if family == FAMILY_GAUSSIAN:
        for j in range(hi - lo):
            u = first + np.uint64(j)
            out[fk, t, u] = gaussian_weight(d2[u], g)
    else:
        half_power = d2.dtype.type(0.5) * lam
        eps2_typed = d2.dtype.type(eps2)
        for j in range(hi - lo):
            u = first + np.uint64(j)
            out[fk, t, u] = (alpha + (d2[u] + eps2_typed) ** half_power) * g


@njit(cache=True, fastmath={"contract"}, inline="always")
def _tap_kernel(guide, centre, n, fk_count, features, cz, cy, centre_off, qz, qy, tx, t, lo, hi,
                limit, ksx, kpx, dw, family, alpha, lam, eps2, g, channel_wise, out, scratch):
    """Tap ``t`` of :func:`kernel_row` at the outputs ``[lo, hi)`` whose neighbour is in range
    (``hi > lo``). The shared-kernel Gaussian evaluates its exponential over ``[lo, hi)``
    widened to whole vectors within ``[0, limit)`` (zero distance on the extra pixels, which the
    caller zeroes afterwards): a short row's remainder loop ran scalar, at 2-3x the cost per
    value."""
    zero = out.dtype.type(0.0)
    first = np.uint64(lo)
    if family == FAMILY_CONSTANT:
        for fk in range(fk_count):
            for j in range(hi - lo):
                out[fk, t, first + np.uint64(j)] = g
    elif channel_wise:
        for fk in range(fk_count):
            for ox in range(lo, hi):
                diff = (centre[n, fk, cz, cy, np.uint64(ox * ksx + centre_off)]
                        - guide[n, fk, qz, qy, np.uint64(ox * ksx + tx * dw - kpx)])
                if family == FAMILY_INVERSE_ASYMMETRIC:
                    diff = zero if diff < zero else diff
                scratch[np.uint64(ox)] = diff * diff
            _finish_kernel(out, fk, t, scratch, lo, hi, family, alpha[fk], lam[fk], eps2, g)
    else:
        wide_lo, wide_hi = lo, hi
        if family == FAMILY_GAUSSIAN:
            wide_lo = lo - lo % _LANES
            wide_hi = min(hi + (-hi) % _LANES, limit)
        for j in range(wide_hi - wide_lo):
            scratch[np.uint64(wide_lo + j)] = 0.0
        for f in range(features):
            if ksx == 1:
                # unit stride: contiguous rows, so the loop vectorizes
                c_first = np.uint64(centre_off + lo)
                g_first = np.uint64(tx * dw - kpx + lo)
                for j in range(hi - lo):
                    u = np.uint64(j)
                    diff = centre[n, f, cz, cy, c_first + u] - guide[n, f, qz, qy, g_first + u]
                    if family == FAMILY_INVERSE_ASYMMETRIC and diff < zero:
                        diff = zero
                    scratch[first + u] += diff * diff
            else:
                for ox in range(lo, hi):
                    diff = (centre[n, f, cz, cy, np.uint64(ox * ksx + centre_off)]
                            - guide[n, f, qz, qy, np.uint64(ox * ksx + tx * dw - kpx)])
                    if family == FAMILY_INVERSE_ASYMMETRIC:
                        diff = zero if diff < zero else diff
                    scratch[np.uint64(ox)] += diff * diff
        _finish_kernel(out, 0, t, scratch, wide_lo, wide_hi, family, alpha[0], lam[0], eps2, g)


#: Pixels of the widest vector of float32: the unit in which the Gaussian's exponential runs.
_LANES = VECTOR_BYTES // 4


@njit(cache=True)
def _whole_vectors(count):
    """``count`` rounded up to whole :data:`_LANES` (the width of the kernels' row buffers)."""
    return (count + _LANES - 1) // _LANES * _LANES


@njit(cache=True)
def kernel_row(
    guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx,
    kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask, normalize,
    channel_wise, out, z, scratch,
):
    """Normalized adaptive kernel of output row ``(oz, oy)`` of batch ``n`` into
    ``out[Fk, T, :Wo]``.

    ``z[Fk, Wo]`` receives the normalizer (1 when ``normalize == 0``); taps whose neighbour is out
    of range are 0. ``scratch`` is a ``(Wo,)`` work buffer. Every array is indexed directly,
    the pixel with an unsigned offset: row views update reference counts, and signed indices
    bring a negative-index wraparound that keeps the loops from vectorizing (together 3-5x the
    time of the arithmetic).
    """
    fk_count = out.shape[0]
    features = guide.shape[1]
    # taps are written over [0, limit): the pixels past out_w too where the buffers have them
    limit = min(out.shape[2], scratch.shape[0])
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
                lo, hi = 0, 0
                if row_ok:
                    lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                if hi > lo:
                    _tap_kernel(guide, centre, n, fk_count, features, cz, cy, centre_off, qz,
                                qy, tx, t, lo, hi, limit, ksx, kpx, dw, family, alpha, lam,
                                eps2, spatial[t], channel_wise, out, scratch)
                for fk in range(fk_count):
                    for ox in range(min(lo, limit)):
                        out[fk, t, np.uint64(ox)] = 0.0
                    for ox in range(hi, limit):
                        out[fk, t, np.uint64(ox)] = 0.0

    if normalize == NORMALIZE_NONE:
        for fk in range(fk_count):
            for ox in range(out_w):
                z[fk, np.uint64(ox)] = 1.0
        if has_mask:
            _apply_mask(out, mask, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw,
                        ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw)
        return

    for fk in range(fk_count):
        for ox in range(out_w):
            z[fk, np.uint64(ox)] = 0.0
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
                    if not has_mask:
                        # m = 1: z += K (kernel, mask_kernel: 1*K is K) or z += 1 (mask)
                        for ox in range(lo, hi):
                            u = np.uint64(ox)
                            if normalize == NORMALIZE_MASK:
                                z[fk, u] += 1.0
                            else:
                                z[fk, u] += out[fk, t, u]
                        continue
                    for ox in range(lo, hi):
                        u = np.uint64(ox)
                        k_value = out[fk, t, u]
                        m = mask[n, qz, qy, np.uint64(ox * ksx - kpx + tx * dw)]
                        if normalize == NORMALIZE_KERNEL:
                            z[fk, u] += k_value
                        elif normalize == NORMALIZE_MASK:
                            z[fk, u] += m
                        else:
                            z[fk, u] += m * k_value
                        out[fk, t, u] = k_value * m
    for fk in range(fk_count):
        for ox in range(out_w):
            zv = z[fk, np.uint64(ox)]
            scratch[np.uint64(ox)] = 0.0 if zv == 0.0 else 1.0 / zv
        for t in range(kd * kh * kw):
            for ox in range(out_w):
                u = np.uint64(ox)
                out[fk, t, u] *= scratch[u]


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
                        out[fk, t, np.uint64(ox)] *= mask[n, qz, qy,
                                                          np.uint64(ox * ksx - kpx + tx * dw)]


@njit(cache=True)
def band_fits(use_explicit, ksy, ksx, has_mask, normalize, channel_wise):
    """Whether :func:`kernel_band` computes this kernel (else :func:`kernel_row`, row by row):
    kernel stride 1 along y and x, one kernel for all channels, no mask, normalized by its sum
    or not at all."""
    return (not use_explicit and ksy == 1 and ksx == 1 and not has_mask and not channel_wise
            and normalize != NORMALIZE_MASK)


@njit(cache=True)
def band_pitch(out_w, kw, dw):
    """Row pitch of :func:`kernel_band`'s output: a row and the ``(kw - 1) * dw`` pixels its
    taps reach past it, in whole vectors."""
    return _whole_vectors(out_w + (kw - 1) * dw)


@njit(cache=True)
def kernel_band(
    guide, centre, n, oz, oy0, band_rows, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz,
    kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, normalize, out, gbuf, cbuf,
    d2, z, skip_sy, skip_base,
):
    """The adaptive kernel of output rows ``oy0 : oy0 + band_rows`` of plane ``oz``, as
    :func:`kernel_row` computes it (the same operations in the same order, so the same bits),
    in long loops: ``out[0, t, r*P + ox]`` with the pitch ``P`` of :func:`band_pitch`; pixels
    ``ox >= out_w`` hold 0 or values no output uses.

    For :func:`band_fits` kernels only. The guide rows the band reads are copied, zero-padded by
    ``kpx`` on the left, into ``gbuf`` (per depth tap: ``F`` planes of ``band_rows + (kh-1)*dh``
    rows of pitch ``P``) and the centre rows into ``cbuf`` (``F`` planes of ``band_rows`` rows):
    output ``(r, ox)`` is then flat index ``q = r*P + ox``, its neighbour at tap ``(ty, tx)``
    ``gbuf[tz, f, q + ty*dh*P + tx*dw]`` and its centre ``cbuf[f, q + dw*((kw-1)//2)]``, so each
    tap is one loop over all ``band_rows * P`` pixels (about 3x faster than row by row for the
    64-pixel rows of a 64^3 volume, whose per-loop costs outweighed the arithmetic). Taps whose
    neighbour is out of range are zeroed afterwards, so the padding's values never count.

    ``skip_sy > 0`` (a strided transposed op without normalization) leaves out the rows ``r``
    where tap row ``ty`` has no source, ``(oy0 + r + skip_base + ty*dh) % skip_sy != 0``: their
    values are never read (the row's steps skip that tap row), so they are left as they were.
    """
    features = guide.shape[1]
    pitch = band_pitch(out_w, kw, dw)
    span = band_rows + (kh - 1) * dh
    plane = gbuf.shape[2]
    count = band_rows * pitch
    zero = out.dtype.type(0.0)
    centre_x = dw * ((kw - 1) // 2)
    # the guide rows, zero-padded
    for tz in range(kd):
        qz = oz * ksz - kpz + tz * dd
        for f in range(features):
            for q in range(plane):
                gbuf[tz, f, np.uint64(q)] = 0.0
            if qz < 0 or qz >= guide_d:
                continue
            for rr in range(span):
                qy = oy0 - kpy + rr
                if qy < 0 or qy >= guide_h:
                    continue
                row = np.uint64(rr * pitch + kpx)
                for gx in range(guide_w):
                    u = np.uint64(gx)
                    gbuf[tz, f, row + u] = guide[n, f, qz, qy, u]
    cz = oz * ksz - kpz + dd * ((kd - 1) // 2)
    for f in range(features):
        for q in range(cbuf.shape[1]):
            cbuf[f, np.uint64(q)] = 0.0
        for r in range(band_rows):
            cy = oy0 + r - kpy + dh * ((kh - 1) // 2)
            row = np.uint64(r * pitch + kpx)
            for gx in range(guide_w):
                u = np.uint64(gx)
                cbuf[f, row + u] = centre[n, f, cz, cy, u]
    for tz in range(kd):
        qz = oz * ksz - kpz + tz * dd
        plane_ok = qz >= 0 and qz < guide_d
        for ty in range(kh):
            for tx in range(kw):
                t = (tz * kh + ty) * kw + tx
                g = spatial[t]
                if not plane_ok:
                    for q in range(count):
                        out[0, t, np.uint64(q)] = 0.0
                    continue
                if family == FAMILY_CONSTANT:
                    for q in range(count):
                        out[0, t, np.uint64(q)] = g
                else:
                    # one loop over the whole band, or with skip_sy one per row that is kept
                    shift = np.uint64(ty * dh * pitch + tx * dw)
                    segments, length = (1, count) if skip_sy == 0 else (band_rows, pitch)
                    for r in range(segments):
                        if skip_sy != 0 and (oy0 + r + skip_base + ty * dh) % skip_sy != 0:
                            continue
                        first = np.uint64(r * length)
                        for q in range(length):
                            d2[first + np.uint64(q)] = 0.0
                        for f in range(features):
                            for q in range(length):
                                u = first + np.uint64(q)
                                diff = cbuf[f, u + np.uint64(centre_x)] - gbuf[tz, f, u + shift]
                                if family == FAMILY_INVERSE_ASYMMETRIC and diff < zero:
                                    diff = zero
                                d2[u] += diff * diff
                        _finish_kernel(out, 0, t, d2, r * length, (r + 1) * length, family,
                                       alpha[0], lam[0], eps2, g)
                lo, hi = _tap_range(tx * dw, 1, kpx, guide_w, out_w)
                for r in range(band_rows):
                    qy = oy0 + r - kpy + ty * dh
                    base = r * pitch
                    if qy < 0 or qy >= guide_h:
                        lo_r, hi_r = 0, 0
                    else:
                        lo_r, hi_r = lo, hi
                    for ox in range(lo_r):
                        out[0, t, np.uint64(base + ox)] = 0.0
                    for ox in range(hi_r, pitch):
                        out[0, t, np.uint64(base + ox)] = 0.0
    if normalize == NORMALIZE_NONE:
        return
    for q in range(count):
        z[np.uint64(q)] = 0.0
    for t in range(kd * kh * kw):
        for q in range(count):
            u = np.uint64(q)
            z[u] += out[0, t, u]
    for q in range(count):
        u = np.uint64(q)
        zv = z[u]
        d2[u] = 0.0 if zv == 0.0 else 1.0 / zv
    for t in range(kd * kh * kw):
        for q in range(count):
            u = np.uint64(q)
            out[0, t, u] *= d2[u]


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
                    u = np.uint64(ox)
                    kbuf[fk, t, u] = explicit[n, fk, t, oz, oy, u]
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
    kbuf = aligned_empty((fk_count, taps, _whole_vectors(out_w)), out.dtype)
    z = aligned_empty((fk_count, out_w), out.dtype)
    scratch = aligned_empty((_whole_vectors(out_w),), out.dtype)
    for job in range(job_start, job_stop):
        n = job // rows
        oz = job % rows // out_h
        oy = job % out_h
        kernel_row(
            guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy,
            ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask,
            normalize, channel_wise, kbuf, z, scratch,
        )
        for fk in range(fk_count):
            for t in range(taps):
                for ox in range(out_w):
                    u = np.uint64(ox)
                    out[n, fk, t, oz, oy, u] = kbuf[fk, t, u]
            for ox in range(out_w):
                u = np.uint64(ox)
                valid[n, fk, oz, oy, u] = z[fk, u] != 0.0


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
    wide = _whole_vectors(out_w)
    kbuf = aligned_empty((fk_count, taps, wide), y.dtype)
    z = aligned_empty((fk_count, out_w), y.dtype)
    scratch_wide = aligned_empty((wide,), y.dtype)
    scratch = scratch_wide[:out_w]  # the accumulator of a channel's output row
    phases = np.empty((sx, (in_w + sx - 1) // sx), y.dtype)
    for job in range(job_start, job_stop):
        n = job // rows
        oz = job % rows // out_h
        oy = job % out_h
        _row_kernel(
            explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w,
            kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2,
            spatial, mask, has_mask, normalize, channel_wise, kbuf, z, scratch_wide,
        )
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
                                _accumulate_forward(scratch, w, kbuf, kc, t, x, n, c, iz, iy,
                                                    phases, tx * dw - px, sx, in_w)
            for ox in range(out_w):
                y[n, c, oz, oy, ox] = scratch[ox]


@njit(cache=True)
def _deinterleave(x_row, stride, phases):
    """``phases[r, j] = x_row[j*stride + r]``: strided reads become contiguous ones."""
    width = x_row.shape[0]
    for r in range(stride):
        count = (width - r + stride - 1) // stride
        dst = phases[r]
        for j in range(count):
            dst[j] = x_row[j * stride + r]


@njit(cache=True, inline="always")
def _accumulate_forward(acc, weight, kbuf, kc, t, x, n, c, iz, iy, phases, base, stride, in_w):
    """``acc[o] += weight * kbuf[kc, t, o] * x[n, c, iz, iy, o*stride + base]`` where that
    index is in range (``phases``: the row de-interleaved when ``stride > 1``). Indexed
    directly with unsigned offsets: three row views per channel and tap cost more than the
    multiply-adds of a 128-pixel row."""
    lo, hi = _tap_range(base, stride, 0, in_w, acc.shape[0])
    first = np.uint64(lo)
    if stride == 1:
        source = np.uint64(lo + base)
        for j in range(hi - lo):
            u = np.uint64(j)
            acc[first + u] += weight * kbuf[kc, t, first + u] * x[n, c, iz, iy, source + u]
    else:
        phase = base % stride
        source = np.uint64(lo + (base - phase) // stride)
        for j in range(hi - lo):
            u = np.uint64(j)
            acc[first + u] += weight * kbuf[kc, t, first + u] * phases[phase, source + u]


@njit(cache=True)
def _accumulate_tiles(acc, packed, starts, kflat, xflat, k_off, x_off):
    """``acc[o, p] = sum_j weight_matrix[o, j] * kflat[k_off[j] + p] * xflat[x_off[j] + p]``,
    register-blocked (:mod:`pacarray._cpu._microkernel`), with the weights packed by
    :func:`pack_weights` for its blocks ``starts`` of output channels.

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
            # one branch per tile size: each tile is its own intrinsic, so Numba cannot pick
            # one by a runtime index
            if rows == 16:
                tile16(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 12:
                tile12(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 8:
                tile8(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 6:
                tile6(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 4:
                tile4(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            elif rows == 2:
                tile2(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)
            else:
                tile1(acc, packed, kflat, xflat, k_off, x_off, o, w, count, p)


@njit(cache=True, inline="always")
def _pad_row(x, n, c, iz, iy, dst, start, row_len, phases, stride, shift, transposed):
    """Input row ``x[n, c, iz, iy]`` laid out for the tiles in ``dst[start:start +
    phases*row_len]``: zero-padded, so that tap reads never leave it, and unit stride in the
    output pixel (a missing source row is the caller's shared zero row, never padded here).

    Forward (``phases == stride``): ``dst[start + r*row_len + m] = x[..., m*stride + r -
    shift]``. Transposed (one phase): the row with ``stride - 1`` zeros between its elements,
    ``dst[start + m] = x[..., i]`` where ``m == i*stride + shift``. Zero where no element
    falls. Indexed directly, with unsigned offsets in the common case (no row views, whose
    reference counts cost more than the copy; no negative-index wraparound, which keeps loops
    from vectorizing).
    """
    width = x.shape[4]
    base = np.uint64(start)
    if stride == 1 and not transposed:
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


#: Step subsets whose packed weights :func:`conv_rows` keeps (a stride-2 transposed op
#: alternates two row patterns by two column phases, plus the borders), within
#: :data:`_PATTERN_BYTES` per thread but never fewer than those four.
_PATTERNS = 8
_PATTERN_BYTES = 1 << 22


@njit(cache=True)
def _pack_steps(packed, starts, total, row_slot, tap_rows, kw, taps, channels, steps, out,
                tx_ok):
    """The weights of the steps whose tap row has a source (``row_slot[r] >= 0``) and whose
    column tap is kept (``tx_ok[tx]``), in their order, packed as :func:`pack_weights` packs
    all ``total`` of them: block ``b`` of output channels ``starts[b]:starts[b+1]`` at
    ``starts[b] * steps``, step by step."""
    for block in range(starts.shape[0] - 1):
        o = starts[block]
        rows = starts[block + 1] - o
        source = o * total
        target = o * steps
        kept = 0
        for c in range(channels):
            for r in range(tap_rows):
                if row_slot[r] < 0:
                    continue
                for tx in range(kw):
                    if not tx_ok[tx]:
                        continue
                    j = c * taps + r * kw + tx
                    for b in range(rows):
                        out[target + kept * rows + b] = packed[source + j * rows + b]
                    kept += 1


@njit(cache=True)
def _row_steps(by_phase, phase, sx, dw, shift, lead, kw, taps, tap_rows, channels, fk_count,
               out_w, row_slot, key, k_off, x_off, kflat, kphase, phase_width, tap_shift, tx_ok,
               tx_at, k_sub, x_sub, packed, starts, total, pattern_key, pattern_phase,
               pattern_packed, next_pattern):
    """The reduction steps of one output row of :func:`conv_rows` that have a source: their K
    and input offsets in ``k_sub``, ``x_sub`` and the slot of ``pattern_packed`` holding their
    weights; returns ``(slot, steps)``. The slot is ``next_pattern`` when the weights were
    packed now (a new pattern, or ``key < 0``).

    A step has a source when its tap row does (``row_slot[r] >= 0``) and, for a strided
    transposed op (``by_phase``), when its column tap reads an input pixel at column phase
    ``phase``: outputs ``phase + sx*m`` read input ``m + (phase + tx*dw - shift) / sx`` where
    that divides; those taps' K rows are de-interleaved into ``kphase`` (``phase_width`` wide)
    and their input offsets point into the row itself, padded by ``lead`` on the left.
    Without ``by_phase`` the steps keep ``k_off`` / ``x_off`` and every column tap.
    """
    for tx in range(kw):
        if by_phase:
            offset = phase + tx * dw - shift
            tx_ok[tx] = offset % sx == 0
            tx_at[tx] = offset // sx + lead
        else:
            tx_ok[tx] = True
            tx_at[tx] = tap_shift[tx]
    count = (out_w - phase + sx - 1) // sx
    steps = np.int64(0)
    for c in range(channels):
        kc = c if fk_count > 1 else 0
        for r in range(tap_rows):
            if row_slot[r] < 0:
                continue
            for tx in range(kw):
                if not tx_ok[tx]:
                    continue
                t = r * kw + tx
                if by_phase:
                    target = (kc * taps + t) * phase_width
                    if c == kc:   # the first channel that uses this K row de-interleaves it
                        source = k_off[c * taps + t] + phase
                        for m in range(count):
                            kphase[np.uint64(target + m)] = kflat[np.uint64(source + m * sx)]
                        for m in range(count, phase_width):
                            kphase[np.uint64(target + m)] = 0.0
                    k_sub[steps] = target
                else:
                    k_sub[steps] = k_off[c * taps + t]
                # x_off holds the row's start (its slot, or the zero row) plus tap_shift
                x_sub[steps] = x_off[c * taps + t] - tap_shift[tx] + tx_at[tx]
                steps += 1
    found = -1
    if key >= 0:
        for slot in range(pattern_key.shape[0]):
            if pattern_key[slot] == key and pattern_phase[slot] == phase:
                found = slot
    if found < 0:
        found = next_pattern
        _pack_steps(packed, starts, total, row_slot, tap_rows, kw, taps, channels, steps,
                    pattern_packed[found], tx_ok)
        pattern_key[found] = key
        pattern_phase[found] = phase
    return found, steps


#: Pixels of one band of :func:`kernel_band` (rows times pitch): long enough loops, small
#: enough buffers (with 27 taps, 108 KiB of K in float32).
_BAND_PIXELS = 1024

#: Most bytes of padded input rows :func:`conv_rows` keeps per thread for whole planes (above
#: this, only the rows one output row spans).
_ROW_CACHE_BYTES = 1 << 19


def conv_jobs(rows: int) -> int:
    """Jobs of :func:`conv_rows` for ``rows`` output rows in all (``N*Do*Ho``): one per row."""
    return rows


def pack_weights(weight_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(packed, starts)`` that :func:`conv_rows` takes for ``weight_matrix`` ``(C_out,
    J)``: the output channels split greedily into blocks of the tile sizes
    (:data:`pacarray._cpu._microkernel.TILE_SIZES`; 64 = 4 x 16 with AVX-512), each block's
    weights step by step, ``packed[start*J + j*rows + r] = weight_matrix[start + r, j]``, in
    the order its tile reads them."""
    out_channels = weight_matrix.shape[0]
    starts = [0]
    while starts[-1] < out_channels:
        rest = out_channels - starts[-1]
        starts.append(starts[-1] + next(size for size in TILE_SIZES if size <= rest))
    starts = np.asarray(starts, np.intp)
    packed = np.concatenate([np.ascontiguousarray(weight_matrix[lo:hi].T).reshape(-1)
                             for lo, hi in zip(starts[:-1], starts[1:])])
    return packed, starts


@njit(cache=True, nogil=True)
def conv_rows(
    x, packed, starts, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    kd, kh, kw, sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    y, job_start, job_stop,
):
    """``y[n,o,row] = sum_{c,t} W[o, c*T+t] K[n,(c),t,row] x[n,c,src]`` for the output rows
    ``job_start:job_stop`` (of ``N*Do*Ho``), the weights ``W`` packed by :func:`pack_weights`.

    Per output row: its adaptive kernel K into ``kbuf`` (``(Fk, T, width)``); the input rows it
    reads, zero-padded and de-interleaved by the stride (for transposed ops: with ``stride - 1``
    zeros inserted) into a cache of padded rows, where a row stays while later output rows read
    it too (a source row ``(iz, iy)`` has one slot, ``(iz mod Sz, iy mod Sy)`` over the
    ``Sz x Sy`` window of rows one output row spans, or over whole planes, ``Sy = H``, when
    they fit in :data:`_ROW_CACHE_BYTES`; so the rows of one output row never evict each
    other; dilated taps whose window would pass that size get one slot per tap row instead);
    and a table of where reduction step ``j = c*T + t`` finds its K row and its
    padded input row (a zero row where the source row is out of range). The register-blocked
    tiles of :mod:`pacarray._cpu._microkernel` then form each K-weighted patch row ``K * x`` in
    registers and fold it into the ``(C_out, width)`` accumulator: nothing of the size of the
    patch matrix is ever stored, the input is never copied whole, and no BLAS call competes with
    the kernels' threads (``docs/design.md`` §4). Buffers are allocated once per call.
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
    # A strided transposed op runs column phase by phase: outputs ox = phase + sx*m read the
    # input row itself (no zeros inserted) at m + (phase + tx*dw - shift) / sx, for the taps tx
    # where that divides; the row is padded on the left by `lead` so those offsets are >= 0.
    by_phase = transposed and sx > 1
    # Without normalization, K of a tap row with no source is never read: the band skips it.
    skip_sy = sy if transposed and sy > 1 and normalize == NORMALIZE_NONE else 0
    lead = (shift + sx - 1) // sx if by_phase else 0
    phase_w = (out_w + sx - 1) // sx if by_phase else 0
    phase_width = (phase_w + step - 1) // step * step
    # how _pad_row lays out a row: by phase, the row itself (stride 1, shifted by `lead`)
    pad_stride, pad_shift, pad_inserts = sx, shift, transposed
    if by_phase:
        row_len = phase_width + lead + ((sx - 1) + (kw - 1) * dw) // sx + 1
        pad_stride, pad_shift, pad_inserts = 1, lead, False
    block = phases * row_len
    window_z = (kd - 1) * dd + 1
    window_y = (kh - 1) * dh + 1
    by_tap = False
    if channels * window_z * in_h * block * y.itemsize <= _ROW_CACHE_BYTES:
        window_y = in_h  # whole planes: a row is padded once, not once per output plane
    elif (channels * window_z * window_y * block * y.itemsize > _ROW_CACHE_BYTES
          and window_z * window_y > kd * kh):
        # dilated taps: a window of every row they span would be large and mostly unused, so
        # one slot per tap row (the next output row's rows miss: each is padded per row)
        by_tap = True
        window_z, window_y = kd, kh
    plane_slots = window_z * window_y
    slots = channels * plane_slots
    # K: a band of about _BAND_PIXELS by kernel_band where it fits, else row by row into kbuf;
    # not where a band would copy more guide rows than it has taps times rows (a large
    # dilation: 5 taps 64 apart need 257 rows for one output row, which row by row are never
    # copied). One buffer, the band's part first (a tile may read up to `width` past a band
    # row: the row part).
    fits = band_fits(use_explicit, ksy, ksx, has_mask, normalize, channel_wise)
    pitch = band_pitch(out_w, kw, dw)
    band_max = max(1, min(out_h, _BAND_PIXELS // pitch))
    if kd * (band_max + (kh - 1) * dh) > taps * band_max:
        fits = False
    if not fits:
        band_max = 1
    band_size = taps * band_max * pitch if fits else 0
    span = band_max + (kh - 1) * dh
    features = guide.shape[1]
    gbuf = aligned_empty((kd if fits else 0, features, (span + 1) * pitch), y.dtype)
    cbuf = aligned_empty((features if fits else 0, (band_max + 1) * pitch), y.dtype)
    d2 = aligned_empty((band_max * pitch if fits else 0,), y.dtype)
    zband = aligned_empty((band_max * pitch if fits else 0,), y.dtype)
    kflat = aligned_empty((band_size + fk_count * taps * width,), y.dtype)
    kflat[:] = 0.0  # pixels past the row: the tiles read them, the outputs skip them
    kband = kflat[:band_size].reshape((1, taps if fits else 0, band_max * pitch))
    kbuf = kflat[band_size:].reshape((fk_count, taps, width))
    band_left = 0
    band_row = 0
    z = aligned_empty((fk_count, out_w), y.dtype)
    scratch = aligned_empty((width,), y.dtype)
    acc = aligned_empty((out_channels, width), y.dtype)
    xflat = aligned_empty(((slots + 1) * block,), y.dtype)
    zero_row = slots * block
    xflat[zero_row:] = 0.0
    held = np.full(slots, -1, np.int64)  # the source row (n, iz, iy) in each slot
    k_off = np.empty(total, np.intp)
    x_off = np.empty(total, np.intp)
    if not fits:
        for c in range(channels):
            kc = c if fk_count > 1 else 0
            for t in range(taps):
                k_off[c * taps + t] = band_size + (kc * taps + t) * width
    tap_shift = np.empty(kw, np.intp)  # where tap tx starts in a padded row
    for tx in range(kw):
        tap_shift[tx] = (tx * dw) % phases * row_len + (tx * dw) // phases
    row_slot = np.empty(kd * kh, np.intp)  # per (tz, ty): the slot within a channel, or -1
    row_z = np.empty(kd * kh, np.intp)
    row_y = np.empty(kd * kh, np.intp)
    # Rows with some tap rows out of range (every other row of a stride-2 transposed op, the
    # borders) sum only the steps that have a source row: their own step tables and weights,
    # packed like `packed` for that subset and kept for the next row of the same pattern.
    compactable = kd * kh <= 62
    # at least the interior patterns of a stride-2 op (two row patterns, by two column phases):
    # fewer and every row would pack its weights again
    patterns = max(4 if by_phase else 2,
                   min(_PATTERNS, _PATTERN_BYTES // max(1, packed.size * packed.itemsize)))
    pattern_key = np.full(patterns, -1, np.int64)
    pattern_packed = np.empty((patterns, packed.size), packed.dtype)
    full_packed = packed.copy()   # writable like the patterns': one type at the tile call
    next_pattern = np.int64(0)  # not a literal: one compilation of the callees
    k_sub = np.empty(total, np.intp)
    x_sub = np.empty(total, np.intp)
    tx_ok = np.ones(kw, np.bool_)
    tx_at = np.empty(kw, np.intp)  # by phase: where tap tx starts in a padded row
    pattern_phase = np.full(patterns, -1, np.int64)
    kphase = aligned_empty((fk_count * taps * phase_width,), y.dtype)
    acc_phase = aligned_empty((out_channels if by_phase else 0, phase_width), y.dtype)
    for job in range(job_start, job_stop):
        n = job // rows
        oz = job % rows // out_h
        oy = job % out_h
        if fits:
            if band_left == 0:
                band_left = min(band_max, out_h - oy, job_stop - job)
                band_row = 0
                kernel_band(guide, centre, n, oz, oy, band_left, out_w, guide_d, guide_h,
                            guide_w, kd, kh, kw, ksz, kpz, kpy, kpx, dd, dh, dw, family, alpha,
                            lam, eps2, spatial, normalize, kband, gbuf, cbuf, d2, zband,
                            skip_sy, py - (kh - 1) * dh)
            for c in range(channels):
                for t in range(taps):
                    k_off[c * taps + t] = (t * band_max + band_row) * pitch
            band_row += 1
            band_left -= 1
        else:
            _row_kernel(
                explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h,
                guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha,
                lam, eps2, spatial, mask, has_mask, normalize, channel_wise, kbuf, z, scratch,
            )
        for tz in range(kd):
            iz = _source_index(oz, tz, kd, sz, pz, dd, in_d, transposed)
            for ty in range(kh):
                iy = -1
                if iz >= 0:
                    iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                row_slot[tz * kh + ty] = -1
                if iy >= 0:
                    row_slot[tz * kh + ty] = (tz * kh + ty if by_tap
                                              else iz % window_z * window_y + iy % window_y)
                    row_z[tz * kh + ty] = iz
                    row_y[tz * kh + ty] = iy
        for c in range(channels):
            for r in range(kd * kh):
                start = zero_row
                if row_slot[r] >= 0:
                    slot = c * plane_slots + row_slot[r]
                    start = slot * block
                    key = (n * in_d + row_z[r]) * in_h + row_y[r]
                    if held[slot] != key:
                        _pad_row(x, n, c, row_z[r], row_y[r], xflat, start, row_len, phases,
                                 pad_stride, pad_shift, pad_inserts)
                        held[slot] = key
                first = c * taps + r * kw
                for tx in range(kw):
                    x_off[first + tx] = start + tap_shift[tx]
        # The steps with a source, their tables and their packed weights (kept per pattern of
        # tap rows with a source and column phase); one tile call site for every path, so the
        # tiles are compiled into this kernel once.
        key = np.int64(0)
        all_rows = True
        for r in range(kd * kh):
            if row_slot[r] < 0:
                all_rows = False
            elif compactable:
                key |= 1 << r
        if not compactable:
            key = np.int64(-1)   # kd*kh > 62: no key, the weights are packed again per row
        for phase in range(sx if by_phase else 1):
            if all_rows and not by_phase:
                # every step has a source: the tables and weights as they are
                weights, k_steps, x_steps = full_packed, k_off, x_off
            else:
                found, steps = _row_steps(
                    by_phase, phase, sx, dw, shift, lead, kw, taps, kd * kh, channels,
                    fk_count, out_w, row_slot, key, k_off, x_off, kflat, kphase, phase_width,
                    tap_shift, tx_ok, tx_at, k_sub, x_sub, packed, starts, total, pattern_key,
                    pattern_phase, pattern_packed, next_pattern)
                if found == next_pattern:
                    next_pattern = (next_pattern + 1) % patterns
                weights, k_steps, x_steps = pattern_packed[found], k_sub[:steps], x_sub[:steps]
            target = acc_phase if by_phase else acc
            kbase = kphase if by_phase else kflat
            _accumulate_tiles(target, weights, starts, kbase, xflat, k_steps, x_steps)
            if by_phase:
                count = (out_w - phase + sx - 1) // sx
                for o in range(out_channels):
                    row_out = y[n, o, oz, oy]
                    row_acc = acc_phase[o]
                    for m in range(count):
                        u = np.uint64(m)
                        row_out[np.uint64(phase) + u * np.uint64(sx)] = row_acc[u]
        if not by_phase:
            for o in range(out_channels):
                for ox in range(out_w):
                    u = np.uint64(ox)
                    y[n, o, oz, oy, u] = acc[o, u]
