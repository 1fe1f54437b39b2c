"""Numba kernels of the CPU backward passes (vector-Jacobian products).

Like the forward kernels these work on 3 spatial axes (1-D and 2-D lifted by the drivers).
Every kernel walks output rows ``(n, oz, oy)``, recomputes that row's adaptive kernel into small
buffers (``(Fk, T, Wo)``: never the whole K) and pushes the row's upstream gradient back to
the inputs. The convolution's products with the weight matrix are formed here too, a block of
patch rows at a time (several narrow output rows side by side, up to ``group_rows``), so no
BLAS call competes with the kernels' threads and nothing larger than a few rows is materialized.

Determinism without atomics. A row's gradient lands on the input rows its taps read (and, for
the kernel, on the guide/mask rows of its taps and on its own centre row, which no other row
touches). Output rows are grouped into *bands* of ``band_height`` consecutive rows, where
``band_height`` is chosen by the driver so that two bands with one band between them never touch
the same input, guide or mask row. Even bands run in parallel, then odd bands, each band
walking its rows in order, so every element receives its contributions in one fixed order
whatever the thread schedule: results are bit-identical run to run. Partial sums of the small
parameters go to per-row slots (tap weights, spatial weight, ``alpha``, ``lambda``) or, for
the weight matrix, to ``slots`` accumulators: bands run in waves of at most ``slots`` bands and
band ``i`` of a wave owns slot ``i``. The driver reduces the slots in a fixed order.

In 3-D a band is a tile: ``band_depth`` consecutive output planes times ``band_height`` rows,
walked plane by plane. Tiles are coloured by the parity of their plane band and of their row
band; two tiles of one colour differ by at least two bands along one axis, so they never touch
the same input, guide or mask row. With one depth tap (``z_colours == 1``, every 2-D call) no
two planes share an input plane, and the plane bands need no colour: a 2-D call keeps exactly
its former partition and order.

Integer codes are those of :mod:`pacarray._cpu._numba_kernels` (family 0 constant, 1 Gaussian,
2 inverse power, 3 asymmetric inverse power; normalize 0 none, 1 kernel, 2 mask, 3 mask_kernel).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._numba_kernels import (
    FAMILY_CONSTANT,
    FAMILY_GAUSSIAN,
    FAMILY_INVERSE_ASYMMETRIC,
    NORMALIZE_KERNEL,
    NORMALIZE_MASK,
    NORMALIZE_MASK_KERNEL,
    NORMALIZE_NONE,
    _deinterleave,
    _gaussian_of_d2,
    _source_index,
    _tap_range,
    aligned_empty,
)

_FAST = {"reassoc", "contract"}


@njit(cache=True, inline='always')
def _add_squared_difference(d2, centre_row, c_first, guide_row, q_first, count, asymmetric):
    """``d2[j] += max?(centre_row[c_first + j] - guide_row[q_first + j])**2`` (vectorized)."""
    zero = d2.dtype.type(0.0)
    c_part = centre_row[c_first:c_first + count]
    q_part = guide_row[q_first:q_first + count]
    for j in range(count):
        diff = c_part[j] - q_part[j]
        if asymmetric:
            diff = max(diff, zero)
        d2[j] += diff * diff


@njit(cache=True)
def _centre_rows(centre, n, cz, cy, centre_shift, ksx, phases):
    """For a strided kernel, ``phases[0, f, 0, j] = centre[n, f, cz, cy, j*ksx + phase]``: the
    centre features of one output row, made contiguous (``phase = centre_shift % ksx``)."""
    if ksx == 1:
        return
    phase = centre_shift % ksx
    width = centre.shape[4]
    for f in range(centre.shape[1]):
        row = centre[n, f, cz, cy]
        dst = phases[0, f, 0]
        for j in range((width - phase + ksx - 1) // ksx):
            dst[j] = row[j * ksx + phase]


@njit(cache=True)
def _guide_rows(guide, n, qz, qy, ksx, f_first, f_last, phases):
    """For a strided kernel, ``phases[1, f] = `` guide row ``qy`` of feature ``f`` split by
    phase (``_deinterleave``)."""
    if ksx == 1:
        return
    for f in range(f_first, f_last):
        _deinterleave(guide[n, f, qz, qy], ksx, phases[1, f])


@njit(cache=True, inline='always')
def _feature_rows(centre, guide, n, cz, cy, qz, qy, f, lo, centre_shift, neighbour_shift, ksx,
                  phases):
    """Centre and neighbour feature rows of tap column ``neighbour_shift`` as unit-stride arrays:
    ``(centre_row, c_first, guide_row, q_first)`` with output ``lo + j`` reading
    ``centre_row[c_first + j]`` and ``guide_row[q_first + j]``."""
    if ksx == 1:
        return centre[n, f, cz, cy], lo + centre_shift, guide[n, f, qz, qy], lo + neighbour_shift
    c_phase = centre_shift % ksx
    q_phase = neighbour_shift % ksx
    return (phases[0, f, 0], lo + (centre_shift - c_phase) // ksx, phases[1, f, q_phase],
            lo + (neighbour_shift - q_phase) // ksx)


@njit(cache=True, inline='always')
def _add_squared_feature(base, fk, t, first, count, centre, guide, n, f, cz, cy, qz, qy, c0, q0,
                         asymmetric):
    """``base[fk, t, first + j] += max?(centre[n, f, cz, cy, c0 + j]
    - guide[n, f, qz, qy, q0 + j])**2`` for ``j < count`` (unsigned offsets)."""
    zero = base.dtype.type(0.0)
    for j in range(count):
        diff = centre[n, f, cz, cy, c0 + j] - guide[n, f, qz, qy, q0 + j]
        if asymmetric:
            diff = max(diff, zero)
        base[fk, t, first + j] += diff * diff


@njit(cache=True, inline='always')
def _squared_distances(base, t, centre, guide, n, cz, cy, qz, qy, lo, count, c_first, q_first,
                       channel_wise, asymmetric):
    """``base[fk, t, lo + j] = sum_f max?(centre[n, f, cz, cy, c_first + j]
    - guide[n, f, qz, qy, q_first + j])**2`` for ``j < count`` (unit kernel stride), with
    ``fk = f`` when ``channel_wise`` and 0 otherwise.

    The features are added one after another in order (the forward's rounding), two per pass
    for a shared kernel; whole arrays indexed with unsigned offsets (see :func:`_set_patch_row`).
    """
    zero = base.dtype.type(0.0)
    first = np.uint64(lo)
    size = np.uint64(count)
    c0 = np.uint64(c_first)
    q0 = np.uint64(q_first)
    features = guide.shape[1]
    for fk in range(features if channel_wise else 1):
        for j in range(size):
            base[fk, t, first + j] = zero
    if channel_wise:
        for f in range(features):
            _add_squared_feature(base, f, t, first, size, centre, guide, n, f, cz, cy, qz, qy,
                                 c0, q0, asymmetric)
        return
    for f in range(0, features - 1, 2):
        for j in range(size):
            diff = centre[n, f, cz, cy, c0 + j] - guide[n, f, qz, qy, q0 + j]
            other = centre[n, f + 1, cz, cy, c0 + j] - guide[n, f + 1, qz, qy, q0 + j]
            if asymmetric:
                diff = max(diff, zero)
                other = max(other, zero)
            total = base[0, t, first + j] + diff * diff
            base[0, t, first + j] = total + other * other
    if features % 2 == 1:
        _add_squared_feature(base, 0, t, first, size, centre, guide, n, features - 1, cz, cy,
                             qz, qy, c0, q0, asymmetric)


@njit(cache=True)
def kappa_row(
    guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy,
    kpx, dd, dh, dw, family, alpha, lam, eps2, channel_wise, kap, power, base, phases,
):
    """Raw kernel values of output row ``oy`` (no spatial weight, mask or normalizer).

    ``kap[Fk, T, Wo]`` receives kappa (0 for out-of-range taps). For the inverse families
    ``base`` holds ``d2 + eps2`` and ``power`` holds ``base ** (lambda/2)``, the pieces the
    backward pass differentiates (the Gaussian's derivative needs kappa only). ``phases``
    ``(2, F, ksx, ceil(W/ksx))`` is work space for strided kernels (see :func:`_feature_rows`).
    """
    fk_count = kap.shape[0]
    features = guide.shape[1]
    asymmetric = family == FAMILY_INVERSE_ASYMMETRIC
    one = kap.dtype.type(1.0)
    eps2_typed = kap.dtype.type(eps2)
    cz = oz * ksz - kpz + dd * ((kd - 1) // 2)
    cy = oy * ksy - kpy + dh * ((kh - 1) // 2)
    centre_shift = dw * ((kw - 1) // 2) - kpx
    kap[:] = 0.0
    if family != FAMILY_CONSTANT:
        _centre_rows(centre, n, cz, cy, centre_shift, ksx, phases)
    for tz in range(kd):
        qz = oz * ksz - kpz + tz * dd
        if qz < 0 or qz >= guide_d:
            continue
        for ty in range(kh):
            qy = oy * ksy - kpy + ty * dh
            if qy < 0 or qy >= guide_h:
                continue
            if family != FAMILY_CONSTANT:
                _guide_rows(guide, n, qz, qy, ksx, 0, features, phases)
            for tx in range(kw):
                t = (tz * kh + ty) * kw + tx
                lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                count = hi - lo
                if family == FAMILY_CONSTANT:
                    for fk in range(fk_count):
                        kap[fk, t, lo:hi] = 1.0
                    continue
                if ksx == 1 and lo + centre_shift >= 0 and count > 0:
                    _squared_distances(base, t, centre, guide, n, cz, cy, qz, qy, lo, count,
                                       lo + centre_shift, lo + tx * dw - kpx, channel_wise,
                                       asymmetric)
                else:
                    for fk in range(fk_count):
                        base[fk, t, lo:hi] = 0.0
                    for f in range(features):
                        centre_row, c_first, guide_row, q_first = _feature_rows(
                            centre, guide, n, cz, cy, qz, qy, f, lo, centre_shift, tx * dw - kpx,
                            ksx, phases)
                        _add_squared_difference(base[f if channel_wise else 0, t, lo:hi],
                                                centre_row, c_first, guide_row, q_first, count,
                                                asymmetric)
                for fk in range(fk_count):
                    b_part = base[fk, t, lo:hi]
                    k_part = kap[fk, t, lo:hi]
                    if family == FAMILY_GAUSSIAN:
                        _gaussian_of_d2(kap[fk, t], base[fk, t], lo, hi, one)
                    else:
                        p_part = power[fk, t, lo:hi]
                        a = alpha[fk]
                        half_power = kap.dtype.type(0.5) * lam[fk]
                        for j in range(count):
                            b = b_part[j] + eps2_typed
                            p = b ** half_power
                            b_part[j] = b
                            p_part[j] = p
                            k_part[j] = a + p


@njit(cache=True)
def normalize_row(
    kap, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd,
    dh, dw, spatial, mask, has_mask, normalize, kbuf, zinv,
):
    """``kbuf = kap * G * M / Z`` for one output row; ``zinv[Fk, Wo]`` gets ``1/Z`` (0 where
    ``Z == 0``, 1 without normalization). Same operation order as the forward kernels.

    Loops index the whole arrays with unsigned offsets (no row views; see
    :func:`_set_patch_row`), and without normalization the exact multiplication by 1 is skipped.
    """
    fk_count = kap.shape[0]
    zinv[:] = 0.0
    kbuf[:] = 0.0
    add_kernel = normalize == NORMALIZE_KERNEL
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
                if hi <= lo:
                    continue
                g = spatial[t]
                first = np.uint64(lo)
                count = np.uint64(hi - lo)
                # mask column of output lo + j: m_first + j * ksx (>= 0 for a tap in range)
                m_first = np.uint64(lo * ksx + tx * dw - kpx)
                m_step = np.uint64(ksx)
                for fk in range(fk_count):
                    if not has_mask:
                        for j in range(count):
                            o = first + j
                            k_value = kap[fk, t, o] * g
                            if add_kernel:
                                zinv[fk, o] += k_value
                            kbuf[fk, t, o] = k_value
                        continue
                    for j in range(count):
                        o = first + j
                        k_value = kap[fk, t, o] * g
                        m = mask[n, qz, qy, m_first + j * m_step]
                        if add_kernel:
                            zinv[fk, o] += k_value
                        elif normalize == NORMALIZE_MASK:
                            zinv[fk, o] += m
                        elif normalize == NORMALIZE_MASK_KERNEL:
                            zinv[fk, o] += m * k_value
                        kbuf[fk, t, o] = k_value * m
    for fk in range(fk_count):
        if normalize == NORMALIZE_NONE:
            zinv[fk] = 1.0
            continue
        for ox in range(out_w):
            zv = zinv[fk, ox]
            zinv[fk, ox] = 0.0 if zv == 0.0 else 1.0 / zv
        for t in range(kd * kh * kw):
            for ox in range(out_w):
                kbuf[fk, t, ox] *= zinv[fk, ox]


@njit(cache=True, fastmath=_FAST)
def _sum_product(a, b):
    """``sum_j a[j] * b[j]`` (vectorized; one fixed order per build)."""
    total = a.dtype.type(0.0)
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


@njit(cache=True, inline='always')
def _scatter_difference_gradient(gd2, centre_row, c_first, centre_grad, guide_row, q_first,
                                 guide_grad, count, asymmetric):
    """``g = 2 gd2 max?(fc - fq)``: ``+g`` to the centre feature, ``-g`` to the neighbour's.

    Output ``j`` reads ``centre_row[c_first + j]`` and ``guide_row[q_first + j]`` and adds to
    ``centre_grad[j]`` (a per-row accumulator) and ``guide_grad[q_first + j]``.
    """
    zero = gd2.dtype.type(0.0)
    two = gd2.dtype.type(2.0)
    c_part = centre_row[c_first:c_first + count]
    q_part = guide_row[q_first:q_first + count]
    q_grad = guide_grad[q_first:q_first + count]
    for j in range(count):
        diff = c_part[j] - q_part[j]
        if asymmetric:
            # d/d(diff) of max(0, diff)^2 is 2 max(0, diff): 0 at and below the kink
            diff = max(diff, zero)
        g_diff = two * gd2[j] * diff
        centre_grad[j] += g_diff
        q_grad[j] -= g_diff


@njit(cache=True)
def kernel_backward_row(
    gk, kap, power, base, kbuf, zinv, guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w,
    kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, lam, spatial, mask, has_mask,
    normalize, channel_wise, need_guide, grad_guide, grad_centre, grad_mask, grad_alpha_row,
    grad_lam_row, grad_spatial_row, gz, gd2, rr, u, phases, grad_phases,
):
    """Back-propagate ``gk[Fk, T, Wo]`` (gradient of one row of the normalized K).

    ``K = U / Z`` with ``U = kappa G M`` and ``Z = sum_t V``, ``V`` being ``kappa G`` (kernel),
    ``M`` (mask) or ``kappa G M`` (mask_kernel). With ``r = gk / Z`` and
    ``gz = -sum_t gk K / Z`` the gradients of ``U`` and ``V`` are ``r`` and ``gz``; where
    ``Z == 0`` both are 0. Writing ``rr = r + [mask_kernel] gz`` and
    ``u = M rr + [kernel] gz``: ``dkappa = G u``, ``dG = kappa u``,
    ``dM = kappa G rr + [mask] gz``. Contributions go to ``grad_guide`` (neighbour rows,
    band-protected), ``grad_centre`` (this row's centre, touched by no other row), ``grad_mask``
    (neighbour rows) and the per-row slots ``grad_alpha_row[Fk]``, ``grad_lam_row[Fk]``,
    ``grad_spatial_row[T]``. ``gz``, ``gd2``, ``rr`` and ``u`` are ``(Wo,)`` work buffers;
    ``phases`` and ``grad_phases`` ``(2, F, ksx, ceil(W/ksx))`` hold a strided kernel's feature
    rows and their gradients split by phase, so that those loops run at unit stride;
    ``grad_phases[0, :, 0, :Wo]`` accumulates the row's centre gradients by output column.
    """
    fk_count = kap.shape[0]
    features = guide.shape[1]
    dtype = kap.dtype.type
    zero, one = dtype(0.0), dtype(1.0)
    half, minus_half = dtype(0.5), dtype(-0.5)
    in_rr = one if normalize == NORMALIZE_MASK_KERNEL else zero
    in_u = one if normalize == NORMALIZE_KERNEL else zero
    in_mask = one if normalize == NORMALIZE_MASK else zero
    asymmetric = family == FAMILY_INVERSE_ASYMMETRIC
    cz = oz * ksz - kpz + dd * ((kd - 1) // 2)
    cy = oy * ksy - kpy + dh * ((kh - 1) // 2)
    centre_shift = dw * ((kw - 1) // 2) - kpx
    scatter = need_guide and family != FAMILY_CONSTANT
    split = scatter and ksx > 1
    if split:
        _centre_rows(centre, n, cz, cy, centre_shift, ksx, phases)
    if scatter:
        # centre gradients of this row, indexed by output column (added to the guide at the end)
        grad_phases[0] = 0.0
    for fk in range(fk_count):
        z_row = zinv[fk]
        f_first = fk if channel_wise else 0
        f_last = fk + 1 if channel_wise else features
        gz[:] = 0.0
        if normalize != NORMALIZE_NONE:
            for t in range(kd * kh * kw):
                g_row = gk[fk, t]
                k_row = kbuf[fk, t]
                for ox in range(out_w):
                    gz[ox] += g_row[ox] * k_row[ox]
            for ox in range(out_w):
                gz[ox] = -gz[ox] * z_row[ox]
        half_lam = half * lam[fk]
        for tz in range(kd):
            qz = oz * ksz - kpz + tz * dd
            if qz < 0 or qz >= guide_d:
                continue
            for ty in range(kh):
                qy = oy * ksy - kpy + ty * dh
                if qy < 0 or qy >= guide_h:
                    continue
                if split:
                    _guide_rows(guide, n, qz, qy, ksx, f_first, f_last, phases)
                    for f in range(f_first, f_last):
                        grad_phases[1, f] = 0.0
                for tx in range(kw):
                    t = (tz * kh + ty) * kw + tx
                    lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                    count = hi - lo
                    g = spatial[t]
                    shift = tx * dw - kpx
                    g_part = gk[fk, t, lo:hi]
                    z_part = zinv[fk, lo:hi]
                    gz_part = gz[lo:hi]
                    kap_part = kap[fk, t, lo:hi]
                    rr_part = rr[:count]
                    u_part = u[:count]
                    for j in range(count):
                        rr_part[j] = g_part[j] * z_part[j] + in_rr * gz_part[j]
                    if has_mask:
                        mask_row = mask[n, qz, qy]
                        mask_grad = grad_mask[n, qz, qy]
                        for j in range(count):
                            m_index = (lo + j) * ksx + shift
                            u_part[j] = mask_row[m_index] * rr_part[j] + in_u * gz_part[j]
                            mask_grad[m_index] += (kap_part[j] * g * rr_part[j]
                                                   + in_mask * gz_part[j])
                    else:
                        for j in range(count):
                            u_part[j] = rr_part[j] + in_u * gz_part[j]
                    grad_spatial_row[t] += _sum_product(kap_part, u_part)
                    if family == FAMILY_CONSTANT:
                        continue
                    gd2_part = gd2[:count]
                    if family == FAMILY_GAUSSIAN:
                        scale = minus_half * g
                        for j in range(count):
                            gd2_part[j] = scale * u_part[j] * kap_part[j]
                    else:
                        p_part = power[fk, t, lo:hi]
                        b_part = base[fk, t, lo:hi]
                        alpha_sum = zero
                        lam_sum = zero
                        for j in range(count):
                            g_kappa = g * u_part[j]
                            alpha_sum += g_kappa
                            b = b_part[j]
                            if b > zero:
                                p = p_part[j]
                                lam_sum += g_kappa * half * np.log(b) * p
                                gd2_part[j] = g_kappa * half_lam * p / b
                            else:
                                # d2 + eps^2 == 0 (eps = 0, equal features): derivative taken as 0
                                gd2_part[j] = zero
                        grad_alpha_row[fk] += alpha_sum
                        grad_lam_row[fk] += lam_sum
                    if not need_guide:
                        continue
                    for f in range(f_first, f_last):
                        centre_row, c_first, guide_row, q_first = _feature_rows(
                            centre, guide, n, cz, cy, qz, qy, f, lo, centre_shift, shift, ksx,
                            phases)
                        if split:
                            guide_grad = grad_phases[1, f, shift % ksx]
                        else:
                            guide_grad = grad_guide[n, f, qz, qy]
                        _scatter_difference_gradient(
                            gd2_part, centre_row, c_first, grad_phases[0, f, 0, lo:hi], guide_row,
                            q_first, guide_grad, count, asymmetric,
                        )
                if split:
                    for f in range(f_first, f_last):
                        _interleave_add(grad_guide[n, f, qz, qy], grad_phases[1, f], ksx)
    if scatter:
        for f in range(features):
            row = grad_centre[n, f, cz, cy]
            source = grad_phases[0, f, 0]
            if ksx == 1 and centre_shift >= 0:
                # unit stride, unsigned offsets: the loop vectorizes
                shift = np.uint64(centre_shift)
                for ox in range(np.uint64(out_w)):
                    row[ox + shift] += source[ox]
                continue
            for ox in range(out_w):
                row[ox * ksx + centre_shift] += source[ox]


@njit(cache=True)
def _load_kernel_row(
    explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw,
    ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask,
    normalize, channel_wise, kap, power, base, kbuf, zinv, phases,
):
    """Row ``oy`` of K into ``kbuf``: copied from an explicit K, or recomputed with its parts."""
    if use_explicit:
        for fk in range(kbuf.shape[0]):
            for t in range(kbuf.shape[1]):
                kbuf[fk, t] = explicit[n, fk, t, oz, oy]
        return
    kappa_row(
        guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz,
        kpy, kpx, dd, dh, dw, family, alpha, lam, eps2, channel_wise, kap, power, base, phases,
    )
    normalize_row(
        kap, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx,
        dd, dh, dw, spatial, mask, has_mask, normalize, kbuf, zinv,
    )


@njit(cache=True)
def _finish_row(
    gk, use_explicit, need_kernel, need_guide, kap, power, base, kbuf, zinv, guide, centre, n, oz,
    oy, slot, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh,
    dw, family, lam, spatial, mask, has_mask, normalize, channel_wise, grad_explicit, grad_guide,
    grad_centre, grad_mask, grad_alpha_rows, grad_lam_rows, grad_spatial_rows, gz, gd2, rr, u,
    phases, grad_phases,
):
    """Hand a row's kernel gradient ``gk`` to the explicit K or through the fused kernel
    (per-row slots ``slot = oz*Ho + oy``)."""
    if not need_kernel:
        return
    if use_explicit:
        for fk in range(gk.shape[0]):
            for t in range(gk.shape[1]):
                grad_explicit[n, fk, t, oz, oy] = gk[fk, t]
        return
    kernel_backward_row(
        gk, kap, power, base, kbuf, zinv, guide, centre, n, oz, oy, out_w, guide_d, guide_h,
        guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, lam, spatial, mask,
        has_mask, normalize, channel_wise, need_guide, grad_guide, grad_centre, grad_mask,
        grad_alpha_rows[n, slot], grad_lam_rows[n, slot], grad_spatial_rows[n, slot], gz, gd2, rr,
        u, phases, grad_phases,
    )


@njit(cache=True)
def _band_count(rows, band_height, colour):
    """Number of bands of ``colour`` (0 even, 1 odd) among ``ceil(rows / band_height)``."""
    bands = (rows + band_height - 1) // band_height
    return (bands - colour + 1) // 2


@njit(cache=True)
def _bands(rows, band_height, colour, colours):
    """:func:`_band_count` for ``colours`` 2; with one colour (bands that never share an input
    plane, a depth kernel of one tap) every band."""
    if colours == 1:
        return (rows + band_height - 1) // band_height
    return _band_count(rows, band_height, colour)


@njit(cache=True)
def _band_index(i, colour, colours):
    """The ``i``-th band of ``colour`` (see :func:`_bands`)."""
    if colours == 1:
        return i
    return 2 * i + colour


@njit(cache=True)
def _band_of_job(job, out_d, out_h, band_depth, band_height, colour_z, colour, z_colours):
    """Job ``job`` of one colour phase as ``(n, z_band, band)``: the jobs run over the batch,
    then the depth bands of ``colour_z``, then the row bands of ``colour``."""
    count = _band_count(out_h, band_height, colour)
    per_batch = _bands(out_d, band_depth, colour_z, z_colours) * count
    rest = job % per_batch
    z_band = _band_index(rest // count, colour_z, z_colours)
    return job // per_batch, z_band, 2 * (rest % count) + colour


@njit(cache=True)
def _span(transposed, tx, kw, sx, px, dw, in_w, out_w):
    """Pairs (output ox, input ix) of kernel column ``tx`` as arithmetic progressions.

    Returns ``(count, o_first, o_step, i_first, i_step)``: output ``o_first + j*o_step`` reads
    input ``i_first + j*i_step`` for ``j < count``.
    """
    if transposed:
        # inputs ix with ox = ix*sx - px + (kw-1-tx)*dw inside the output
        offset = (kw - 1 - tx) * dw
        lo, hi = _tap_range(offset, sx, px, out_w, in_w)
        # An empty span's o_first still bounds the zero fill of _set_patch_row; clipped, it
        # can fall outside [0, out_w] and the fill would write into the neighbouring patch rows.
        return hi - lo, lo * sx + offset - px if hi > lo else 0, sx, lo, 1
    lo, hi = _tap_range(tx * dw, sx, px, in_w, out_w)
    return hi - lo, lo, 1, lo * sx + tx * dw - px, sx


@njit(cache=True, inline='always')
def _add_product(out, o_first, o_step, a, a_first, a_step, b, b_first, b_step, count, scale):
    """``out[o_first + j*o_step] += scale * a[a_first + j*a_step] * b[b_first + j*b_step]``."""
    if o_step == 1 and a_step == 1 and b_step == 1:
        out_part = out[o_first:o_first + count]
        a_part = a[a_first:a_first + count]
        b_part = b[b_first:b_first + count]
        for j in range(count):
            out_part[j] += scale * a_part[j] * b_part[j]
    else:
        for j in range(count):
            out[o_first + j * o_step] += scale * a[a_first + j * a_step] * b[b_first + j * b_step]


@njit(cache=True, inline='always')
def _set_patch_row(patch_rows, i, base, kbuf, r, kc, t, x, n, c, iz, iy, o_first, i_first, count,
                   width):
    """``patch_rows[i, base + o] = kbuf[r, kc, t, o] * x[n, c, iz, iy, o - o_first + i_first]`` for
    ``o`` in ``[o_first, o_first + count)``, 0 for the other ``o < width`` (one write).

    Indexes the whole arrays with unsigned offsets instead of slicing rows: no view per patch
    row, and no negative-index wraparound in the loop, which therefore vectorizes.
    """
    zero = patch_rows.dtype.type(0.0)
    start = np.uint64(base)
    first = np.uint64(o_first)
    source = np.uint64(i_first)
    for o in range(first):
        patch_rows[i, start + o] = zero
    for j in range(np.uint64(count)):
        patch_rows[i, start + first + j] = kbuf[r, kc, t, first + j] * x[n, c, iz, iy, source + j]
    for o in range(first + np.uint64(count), np.uint64(width)):
        patch_rows[i, start + o] = zero


@njit(cache=True, inline='always')
def _set_patch_rows_pair(patch_rows, i, base, kbuf, r, t, x, n, c, iz, iy, o_first, i_first, count,
                         width):
    """:func:`_set_patch_row` for channels ``c``, ``c + 1`` at one tap of a shared kernel
    (rows ``i``, ``i + 1``), loading each K value once for both."""
    zero = patch_rows.dtype.type(0.0)
    start = np.uint64(base)
    first = np.uint64(o_first)
    source = np.uint64(i_first)
    for o in range(first):
        patch_rows[i, start + o] = zero
        patch_rows[i + 1, start + o] = zero
    for j in range(np.uint64(count)):
        k = kbuf[r, 0, t, first + j]
        patch_rows[i, start + first + j] = k * x[n, c, iz, iy, source + j]
        patch_rows[i + 1, start + first + j] = k * x[n, c + 1, iz, iy, source + j]
    for o in range(first + np.uint64(count), np.uint64(width)):
        patch_rows[i, start + o] = zero
        patch_rows[i + 1, start + o] = zero


@njit(cache=True, inline='always')
def _add_gradients_at(gk, r, kc, t, grad_x, n, c, iz, iy, patch_grads, i, base, x, kbuf, o_first,
                      i_first, count):
    """:func:`_add_kernel_and_input_gradient` on whole arrays (no row views, see
    :func:`_set_patch_row`): ``gk[r, kc, t, o] += pg * x[n, c, iz, iy, s]`` and
    ``grad_x[n, c, iz, iy, s] += pg * kbuf[r, kc, t, o]`` with ``pg = patch_grads[i, base + o]``,
    ``o = o_first + j``, ``s = i_first + j``, ``j < count``."""
    start = np.uint64(base)
    first = np.uint64(o_first)
    source = np.uint64(i_first)
    for j in range(np.uint64(count)):
        o = first + j
        s = source + j
        p = patch_grads[i, start + o]
        gk[r, kc, t, o] += p * x[n, c, iz, iy, s]
        grad_x[n, c, iz, iy, s] += p * kbuf[r, kc, t, o]


@njit(cache=True, inline='always')
def _add_kernel_and_input_gradient(grad_k, grad_x, patch_grad, x, k, o_first, i_first, count):
    """One patch row's two updates in one pass (unit strides): ``grad_k[o] += pg[o] x[i]`` and
    ``grad_x[i] += pg[o] k[o]`` for ``o = o_first + j``, ``i = i_first + j``, ``j < count``.

    The same products, in the same order, as two :func:`_add_product` calls; ``pg`` is read
    once.
    """
    gk_part = grad_k[o_first:o_first + count]
    pg_part = patch_grad[o_first:o_first + count]
    k_part = k[o_first:o_first + count]
    x_part = x[i_first:i_first + count]
    gx_part = grad_x[i_first:i_first + count]
    for j in range(count):
        p = pg_part[j]
        gk_part[j] += p * x_part[j]
        gx_part[j] += p * k_part[j]


@njit(cache=True, fastmath=_FAST)
def _dot3(a, a_first, a_step, b, b_first, b_step, c, c_first, c_step, count):
    """``sum_j a[a_first + j*a_step] * b[..] * c[..]`` (vectorized; fixed order per build)."""
    total = a.dtype.type(0.0)
    if a_step == 1 and b_step == 1 and c_step == 1:
        a_part = a[a_first:a_first + count]
        b_part = b[b_first:b_first + count]
        c_part = c[c_first:c_first + count]
        for j in range(count):
            total += a_part[j] * b_part[j] * c_part[j]
    else:
        for j in range(count):
            total += a[a_first + j * a_step] * b[b_first + j * b_step] * c[c_first + j * c_step]
    return total


@njit(cache=True)
def _kernel_row_buffers(rows, fk_count, taps, out_w, features, ksx, guide_w, dtype):
    """Cache-line aligned work rows for recomputing ``rows`` kernel rows and back-propagating
    them: ``(kap, power, base, kbuf, gk)`` ``(rows, Fk, T, Wo)``, ``zinv`` ``(rows, Fk, Wo)``,
    ``(gz, gd2, rr, u)`` ``(Wo,)`` and ``(phases, grad_phases)`` ``(2, F, ksx, ceil(W/ksx))``."""
    shape = (rows, fk_count, taps, out_w)
    phase_shape = (2, features, ksx, (guide_w + ksx - 1) // ksx)
    return (
        aligned_empty(shape, dtype), aligned_empty(shape, dtype), aligned_empty(shape, dtype),
        aligned_empty(shape, dtype), aligned_empty(shape, dtype),
        aligned_empty((rows, fk_count, out_w), dtype),
        aligned_empty((out_w,), dtype), aligned_empty((out_w,), dtype),
        aligned_empty((out_w,), dtype), aligned_empty((out_w,), dtype),
        aligned_empty(phase_shape, dtype), aligned_empty(phase_shape, dtype),
    )


@njit(cache=True, nogil=True)
def kernel_backward(
    grad_kernel, guide, centre, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy,
    kpx, dd, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask, normalize,
    channel_wise, band_depth, z_colours, band_height, need_guide, grad_guide, grad_centre,
    grad_mask, grad_alpha_rows, grad_lam_rows, grad_spatial_rows, colour_z, colour, job_start,
    job_stop,
):
    """VJP of ``pac_kernel``: ``grad_kernel[N, Fk, T, Do, Ho, Wo]`` back to the kernel's inputs.

    Accumulates into zeroed ``grad_guide``/``grad_centre`` ``(N, F, D, H, W)``, ``grad_mask``
    ``(N, D, H, W)`` and per-row slots ``grad_alpha_rows``/``grad_lam_rows``
    ``(N, Do*Ho, Fk)``, ``grad_spatial_rows`` ``(N, Do*Ho, T)``.
    """
    batch, fk_count, taps, out_d, out_h, out_w = grad_kernel.shape
    for job in range(job_start, job_stop):
        n, z_band, band = _band_of_job(job, out_d, out_h, band_depth, band_height, colour_z,
                                       colour, z_colours)
        (kaps, powers, bases, kbufs, gks, zinvs, gz, gd2, rr, u, phases,
         grad_phases) = _kernel_row_buffers(1, fk_count, taps, out_w, guide.shape[1],
                                            ksx, guide_w, grad_kernel.dtype)
        kap, power, base, kbuf, gk, zinv = (kaps[0], powers[0], bases[0], kbufs[0],
                                            gks[0], zinvs[0])
        for oz in range(z_band * band_depth, min((z_band + 1) * band_depth, out_d)):
            for oy in range(band * band_height, min((band + 1) * band_height, out_h)):
                slot = oz * out_h + oy
                kappa_row(
                    guide, centre, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh,
                    kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha, lam,
                    eps2, channel_wise, kap, power, base, phases,
                )
                normalize_row(
                    kap, n, oz, oy, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz,
                    ksy, ksx, kpz, kpy, kpx, dd, dh, dw, spatial, mask, has_mask,
                    normalize, kbuf, zinv,
                )
                for fk in range(fk_count):
                    for t in range(taps):
                        gk[fk, t] = grad_kernel[n, fk, t, oz, oy]
                kernel_backward_row(
                    gk, kap, power, base, kbuf, zinv, guide, centre, n, oz, oy, out_w,
                    guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx,
                    dd, dh, dw, family, lam, spatial, mask, has_mask, normalize,
                    channel_wise, need_guide, grad_guide, grad_centre, grad_mask,
                    grad_alpha_rows[n, slot], grad_lam_rows[n, slot],
                    grad_spatial_rows[n, slot], gz, gd2, rr, u, phases, grad_phases,
                )


@njit(cache=True)
def _interleave_add(row, phases, stride):
    """``row[j*stride + r] += phases[r, j]``: the inverse of ``_deinterleave``, accumulating."""
    width = row.shape[0]
    for r in range(stride):
        source = phases[r]
        for j in range((width - r + stride - 1) // stride):
            row[j * stride + r] += source[j]


@njit(cache=True, nogil=True)
def direct_backward(
    grad_y, x, tap_weight, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    band_depth, z_colours, band_height, need_x, need_tap_weight, need_kernel, need_guide,
    grad_x, grad_tap_rows, grad_explicit, grad_guide, grad_centre, grad_mask,
    grad_alpha_rows, grad_lam_rows, grad_spatial_rows, colour_z, colour, job_start, job_stop,
):
    """VJP of the direct kernel ``y[n,c,o] = sum_t w[t] K[n,(c),t,o] x[n,c,src(o,t)]``.

    Fills (accumulating into zeroed arrays) ``grad_x`` ``(N, C, D, H, W)``, the per-row slots
    ``grad_tap_rows`` ``(N, Do*Ho, T)`` of the tap weights, ``grad_explicit``
    ``(N, Fk, T, Do, Ho, Wo)`` on the explicit path, and the kernel's inputs on the fused path
    (see :func:`kernel_backward`). ``tap_weight`` ``(kd, kh, kw)`` is indexed by the kernel tap,
    as in the forward.
    """
    batch, channels, in_d, in_h, in_w = x.shape
    out_d, out_h = grad_y.shape[2], grad_y.shape[3]
    kd, kh, kw = tap_weight.shape[0], tap_weight.shape[1], tap_weight.shape[2]
    taps = kd * kh * kw
    split = sx > 1 and not transposed
    for job in range(job_start, job_stop):
        n, z_band, band = _band_of_job(job, out_d, out_h, band_depth, band_height, colour_z,
                                       colour, z_colours)
        _direct_band(
            grad_y, x, tap_weight, explicit, use_explicit, guide, centre, guide_d,
            guide_h, guide_w, sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz,
            kpy, kpx, transposed, family, alpha, lam, eps2, spatial, mask, has_mask,
            normalize, channel_wise, fk_count, need_x, need_tap_weight, need_kernel,
            need_guide, grad_x, grad_tap_rows, grad_explicit, grad_guide, grad_centre,
            grad_mask, grad_alpha_rows, grad_lam_rows, grad_spatial_rows, n,
            z_band * band_depth, min((z_band + 1) * band_depth, out_d),
            band * band_height, min((band + 1) * band_height, out_h), kd, kh, kw, taps,
            split,
        )


@njit(cache=True)
def _direct_band(
    grad_y, x, tap_weight, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    need_x, need_tap_weight, need_kernel, need_guide, grad_x, grad_tap_rows, grad_explicit,
    grad_guide, grad_centre, grad_mask, grad_alpha_rows, grad_lam_rows, grad_spatial_rows, n,
    z_first, z_stop, y_first, y_stop, kd, kh, kw, taps, split,
):
    """The rows ``[z_first, z_stop) x [y_first, y_stop)`` of batch ``n`` for
    :func:`direct_backward` (one band, rows in order)."""
    channels, in_d, in_h, in_w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    out_h, out_w = grad_y.shape[3], grad_y.shape[4]
    (kaps, powers, bases, kbufs, gks, zinvs, gz, gd2, rr, u, phases,
     grad_phases) = _kernel_row_buffers(1, fk_count, taps, out_w, guide.shape[1], ksx,
                                        guide_w, grad_y.dtype)
    kap, power, base, kbuf, gk, zinv = (kaps[0], powers[0], bases[0], kbufs[0], gks[0],
                                        zinvs[0])
    x_phases = np.empty((sx, (in_w + sx - 1) // sx), grad_y.dtype)
    gx_phases = np.empty_like(x_phases)
    for oz in range(z_first, z_stop):
        for oy in range(y_first, y_stop):
            slot = oz * out_h + oy
            _load_kernel_row(
                explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h,
                guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha,
                lam, eps2, spatial, mask, has_mask, normalize, channel_wise, kap, power, base,
                kbuf, zinv, phases,
            )
            gk[:] = 0.0
            for c in range(channels):
                kc = c if fk_count > 1 else 0
                grad_row = grad_y[n, c, oz, oy]
                for tz in range(kd):
                        iz = _source_index(oz, tz, kd, sz, pz, dd, in_d, transposed)
                        if iz < 0:
                            continue
                        for ty in range(kh):
                            iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                            if iy < 0:
                                continue
                            x_row = x[n, c, iz, iy]
                            if split:
                                # strided reads and writes become contiguous ones per phase
                                _deinterleave(x_row, sx, x_phases)
                                gx_phases[:] = 0.0
                            for tx in range(kw):
                                t = (tz * kh + ty) * kw + tx
                                w = tap_weight[tz, ty, tx]
                                if split:
                                    lo, hi = _tap_range(tx * dw, sx, px, in_w, out_w)
                                    phase = (tx * dw - px) % sx
                                    span, o_first, o_step = hi - lo, lo, 1
                                    i_first, i_step = lo + (tx * dw - px - phase) // sx, 1
                                    source = x_phases[phase]
                                else:
                                    span, o_first, o_step, i_first, i_step = _span(
                                        transposed, tx, kw, sx, px, dw, in_w, out_w)
                                    phase = 0
                                    source = x_row
                                if need_kernel:
                                    _add_product(gk[kc, t], o_first, o_step, grad_row, o_first,
                                                 o_step, source, i_first, i_step, span, w)
                                if need_tap_weight:
                                    grad_tap_rows[n, slot, t] += _dot3(
                                        grad_row, o_first, o_step, kbuf[kc, t], o_first, o_step,
                                        source, i_first, i_step, span)
                                if need_x:
                                    target = gx_phases[phase] if split else grad_x[n, c, iz, iy]
                                    _add_product(target, i_first, i_step, grad_row, o_first,
                                                 o_step, kbuf[kc, t], o_first, o_step, span, w)
                            if split and need_x:
                                _interleave_add(grad_x[n, c, iz, iy], gx_phases, sx)
            _finish_row(
                gk, use_explicit, need_kernel, need_guide, kap, power, base, kbuf, zinv,
                guide, centre, n, oz, oy, slot, out_w, guide_d, guide_h, guide_w, kd, kh, kw,
                ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, lam, spatial, mask, has_mask,
                normalize, channel_wise, grad_explicit, grad_guide, grad_centre, grad_mask,
                grad_alpha_rows, grad_lam_rows, grad_spatial_rows, gz, gd2, rr, u, phases,
                grad_phases,
            )


_PATCH_BLOCK = 16


@njit(cache=True, fastmath=_FAST)
def _patch_gradient_block(block, weight_t, first, count, grad_rows):
    """``block[i, :] = sum_o weight_t[first + i, o] * grad_rows[o, :]`` for ``i < count``.

    Rows of ``W^T g`` two at a time and output channels eight at a time, so each load of
    ``grad_rows`` feeds two rows (a register-tiled small GEMM).
    """
    out_channels, width = grad_rows.shape
    i = 0
    while i < count:
        r = block[i]
        j = first + i
        r[:] = 0.0
        if i + 1 < count:
            q = block[i + 1]
            q[:] = 0.0
            o = 0
            while o + 8 <= out_channels:
                rows, wj, wk = grad_rows, weight_t[j], weight_t[j + 1]
                g0, g1, g2, g3 = rows[o], rows[o + 1], rows[o + 2], rows[o + 3]
                g4, g5, g6, g7 = rows[o + 4], rows[o + 5], rows[o + 6], rows[o + 7]
                w0, w1, w2, w3 = wj[o], wj[o + 1], wj[o + 2], wj[o + 3]
                w4, w5, w6, w7 = wj[o + 4], wj[o + 5], wj[o + 6], wj[o + 7]
                v0, v1, v2, v3 = wk[o], wk[o + 1], wk[o + 2], wk[o + 3]
                v4, v5, v6, v7 = wk[o + 4], wk[o + 5], wk[o + 6], wk[o + 7]
                for ox in range(width):
                    a0, a1, a2, a3 = g0[ox], g1[ox], g2[ox], g3[ox]
                    a4, a5, a6, a7 = g4[ox], g5[ox], g6[ox], g7[ox]
                    r[ox] += (w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3
                              + w4 * a4 + w5 * a5 + w6 * a6 + w7 * a7)
                    q[ox] += (v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
                              + v4 * a4 + v5 * a5 + v6 * a6 + v7 * a7)
                o += 8
            while o < out_channels:
                g0 = grad_rows[o]
                w0 = weight_t[j, o]
                v0 = weight_t[j + 1, o]
                for ox in range(width):
                    r[ox] += w0 * g0[ox]
                    q[ox] += v0 * g0[ox]
                o += 1
            i += 2
        else:
            for o in range(out_channels):
                g0 = grad_rows[o]
                w0 = weight_t[j, o]
                for ox in range(width):
                    r[ox] += w0 * g0[ox]
            i += 1


@njit(cache=True, fastmath=_FAST)
def _weight_gradient_block(grad_w, first, count, grad_rows, block):
    """``grad_w[o, first + i] += sum_ox grad_rows[o, ox] * block[i, ox]`` for ``i < count``.

    Tiles of two patch rows by four output channels: eight dot products share their loads.
    """
    out_channels, width = grad_rows.shape
    zero = block.dtype.type(0.0)
    i = 0
    while i < count:
        j = first + i
        p = block[i]
        if i + 1 < count:
            q = block[i + 1]
            o = 0
            while o + 4 <= out_channels:
                g0, g1, g2, g3 = grad_rows[o], grad_rows[o + 1], grad_rows[o + 2], grad_rows[o + 3]
                s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = zero
                for ox in range(width):
                    a0, a1, a2, a3 = g0[ox], g1[ox], g2[ox], g3[ox]
                    v = p[ox]
                    u = q[ox]
                    s0 += a0 * v
                    s1 += a1 * v
                    s2 += a2 * v
                    s3 += a3 * v
                    t0 += a0 * u
                    t1 += a1 * u
                    t2 += a2 * u
                    t3 += a3 * u
                grad_w[o, j] += s0
                grad_w[o + 1, j] += s1
                grad_w[o + 2, j] += s2
                grad_w[o + 3, j] += s3
                grad_w[o, j + 1] += t0
                grad_w[o + 1, j + 1] += t1
                grad_w[o + 2, j + 1] += t2
                grad_w[o + 3, j + 1] += t3
                o += 4
            while o < out_channels:
                g0 = grad_rows[o]
                s0 = t0 = zero
                for ox in range(width):
                    s0 += g0[ox] * p[ox]
                    t0 += g0[ox] * q[ox]
                grad_w[o, j] += s0
                grad_w[o, j + 1] += t0
                o += 1
            i += 2
        else:
            for o in range(out_channels):
                g0 = grad_rows[o]
                s0 = zero
                for ox in range(width):
                    s0 += g0[ox] * p[ox]
                grad_w[o, j] += s0
            i += 1


@njit(cache=True, fastmath=_FAST)
def _patch_and_weight_gradient_block(block, grad_w, weight_t, first, count, grad_rows,
                                     patch_rows):
    """:func:`_patch_gradient_block` and :func:`_weight_gradient_block` in one sweep.

    Both products read the same rows of ``g``; tiles of two patch rows by four output channels
    load each ``g`` vector once for sixteen multiply-adds.
    """
    out_channels, width = grad_rows.shape
    zero = block.dtype.type(0.0)
    if count % 2 == 1 or out_channels % 4 != 0:
        _patch_gradient_block(block, weight_t, first, count, grad_rows)
        _weight_gradient_block(grad_w, first, count, grad_rows, patch_rows)
        return
    for i in range(0, count, 2):
        j = first + i
        r = block[i]
        q = block[i + 1]
        r[:] = 0.0
        q[:] = 0.0
        p = patch_rows[i]
        pp = patch_rows[i + 1]
        wj = weight_t[j]
        wk = weight_t[j + 1]
        for o in range(0, out_channels, 4):
            g0, g1, g2, g3 = grad_rows[o], grad_rows[o + 1], grad_rows[o + 2], grad_rows[o + 3]
            w0, w1, w2, w3 = wj[o], wj[o + 1], wj[o + 2], wj[o + 3]
            v0, v1, v2, v3 = wk[o], wk[o + 1], wk[o + 2], wk[o + 3]
            s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = zero
            for ox in range(width):
                a0, a1, a2, a3 = g0[ox], g1[ox], g2[ox], g3[ox]
                r[ox] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3
                q[ox] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
                u = p[ox]
                z = pp[ox]
                s0 += a0 * u
                s1 += a1 * u
                s2 += a2 * u
                s3 += a3 * u
                t0 += a0 * z
                t1 += a1 * z
                t2 += a2 * z
                t3 += a3 * z
            grad_w[o, j] += s0
            grad_w[o + 1, j] += s1
            grad_w[o + 2, j] += s2
            grad_w[o + 3, j] += s3
            grad_w[o, j + 1] += t0
            grad_w[o + 1, j + 1] += t1
            grad_w[o + 2, j + 1] += t2
            grad_w[o + 3, j + 1] += t3


@njit(cache=True)
def patch_row_tap(j, channels, taps, paired):
    """``(c, t)`` of patch row ``j``: ``j = c*T + t``, or with ``paired`` channels taken two at
    a time and interleaved tap by tap, ``j = 2*T*(c//2) + 2*t + c%2`` (an odd last channel
    alone at the end), so that one tap of two channels sits in rows ``j, j + 1``."""
    if not paired:
        return j // taps, j % taps
    pairs = channels // 2
    if j >= 2 * taps * pairs:
        return channels - 1, j - 2 * taps * pairs
    pair, rest = j // (2 * taps), j % (2 * taps)
    return 2 * pair + rest % 2, rest // 2


@njit(cache=True, inline='always')
def _pair_starts(paired, c, channels, o_step, i_step):
    """Whether patch row ``(c, t)`` and the next one are channels ``c``, ``c + 1`` at one tap,
    read at unit strides: the two-channel fill and scatter apply. (The driver pairs rows only
    for a shared kernel, an unsplit read and both ``x`` and kernel gradients wanted.)"""
    return paired and c % 2 == 0 and c + 1 < channels and o_step == 1 and i_step == 1


@njit(cache=True, inline='always')
def _add_gradients_pair_at(gk, r, t, grad_x, n, c, iz, iy, patch_grads, i, base, x, kbuf, o_first,
                           i_first, count):
    """:func:`_add_gradients_at` for channels ``c`` and ``c + 1`` at one tap of a shared
    kernel (patch rows ``i``, ``i + 1``): the K row and the kernel-gradient row are loaded and
    stored once for both, ``gk += pg_c x_c + pg_c1 x_c1`` (fewer memory operations, which bound
    this loop)."""
    start = np.uint64(base)
    first = np.uint64(o_first)
    source = np.uint64(i_first)
    for j in range(np.uint64(count)):
        o = first + j
        s = source + j
        p = patch_grads[i, start + o]
        q = patch_grads[i + 1, start + o]
        k = kbuf[r, 0, t, o]
        gk[r, 0, t, o] += p * x[n, c, iz, iy, s] + q * x[n, c + 1, iz, iy, s]
        grad_x[n, c, iz, iy, s] += p * k
        grad_x[n, c + 1, iz, iy, s] += q * k


@njit(cache=True)
def _conv_band(
    grad_y, x, weight_t, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    kd, kh, kw, sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    band_height, group_rows, paired, need_x, need_weight, need_kernel, need_guide,
    grad_x, grad_w, grad_explicit, grad_guide, grad_centre, grad_mask,
    grad_alpha_rows, grad_lam_rows, grad_spatial_rows, n, z_first, z_stop, band,
):
    """Rows of band ``band`` of batch ``n``, in the planes ``[z_first, z_stop)``, for
    :func:`conv_backward` (weight slot ``grad_w``).

    The band's rows go in groups of ``group_rows`` (1 for a split, strided read): a group's
    rows sit side by side in the patch blocks, so the two products with the weight matrix run
    over ``group_rows * Wo`` columns at once (longer rows keep the small GEMMs nearer the FMA
    peak), while kernel rows, patch rows and their gradients are formed row by row. A separate,
    serial function: the parallel driver stays small, which keeps Numba's compile time down.
    """
    channels, in_d, in_h, in_w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    out_channels, out_h, out_w = grad_y.shape[1], grad_y.shape[3], grad_y.shape[4]
    taps = kd * kh * kw
    total = channels * taps
    one = x.dtype.type(1.0)
    need_patch_grad = need_x or need_kernel
    split = sx > 1 and not transposed
    kap, power, base, kbuf, gk, zinv, gz, gd2, rr, u, phases, grad_phases = _kernel_row_buffers(
        group_rows, fk_count, taps, out_w, guide.shape[1], ksx, guide_w, x.dtype)
    # flat work space, viewed as C-contiguous (rows, group width) blocks per group
    grad_flat = aligned_empty((out_channels * group_rows * out_w,), x.dtype)
    patch_grad_flat = aligned_empty((_PATCH_BLOCK * group_rows * out_w,), x.dtype)
    patch_flat = aligned_empty((_PATCH_BLOCK * group_rows * out_w,), x.dtype)
    x_phases = np.empty((sx, (in_w + sx - 1) // sx), x.dtype)
    gx_phases = np.empty_like(x_phases)
    # Column geometry of each tap column, once per band: span, o_first, o_step, i_first,
    # i_step (as _span), and for a split (strided) read the phase and its first index.
    columns = np.empty((kw, 7), np.int64)
    for tx in range(kw):
        span, o_first, o_step, i_first, i_step = _span(transposed, tx, kw, sx, px, dw, in_w,
                                                       out_w)
        phase = (tx * dw - px) % sx
        columns[tx, 0] = span
        columns[tx, 1] = o_first
        columns[tx, 2] = o_step
        columns[tx, 3] = i_first
        columns[tx, 4] = i_step
        columns[tx, 5] = phase
        columns[tx, 6] = o_first + (tx * dw - px - phase) // sx
    # source row of (output row r of the group, tap row tz*kh + ty); -1 where none
    source_rows = np.empty((group_rows, kd * kh), np.int64)
    source_planes = np.empty(kd, np.int64)
    band_stop = min((band + 1) * band_height, out_h)
    for oz in range(z_first, z_stop):
        for tz in range(kd):
                source_planes[tz] = _source_index(oz, tz, kd, sz, pz, dd, in_d, transposed)
        for group_first in range(band * band_height, band_stop, group_rows):
            rows = min(group_rows, band_stop - group_first)
            width = rows * out_w
            grad_rows = grad_flat[:out_channels * width].reshape((out_channels, width))
            patch_grads = patch_grad_flat[:_PATCH_BLOCK * width].reshape((_PATCH_BLOCK, width))
            patch_rows = patch_flat[:_PATCH_BLOCK * width].reshape((_PATCH_BLOCK, width))
            for r in range(rows):
                oy = group_first + r
                _load_kernel_row(
                        explicit, use_explicit, guide, centre, n, oz, oy, out_w, guide_d, guide_h,
                    guide_w, kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw, family, alpha,
                    lam, eps2, spatial, mask, has_mask, normalize, channel_wise, kap[r], power[r],
                    base[r], kbuf[r], zinv[r], phases,
                )
                for o in range(out_channels):
                    grad_rows[o, r * out_w:(r + 1) * out_w] = grad_y[n, o, oz, oy]
                for tz in range(kd):
                        for ty in range(kh):
                            iy = -1
                            if source_planes[tz] >= 0:
                                iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                            source_rows[r, tz * kh + ty] = iy
                gk[r] = 0.0
            group = -1          # (c, tz, ty) whose source row sits in x_phases (split: one row)
            group_c = group_iz = group_iy = -1
            for first in range(0, total, _PATCH_BLOCK):
                count = min(_PATCH_BLOCK, total - first)
                if need_weight:
                    # the block's K-weighted patch rows P[j] (0 where no source)
                    i = 0
                    while i < count:
                        c, t = patch_row_tap(first + i, channels, taps, paired)
                        tzy, tx = t // kw, t % kw
                        iz = source_planes[tzy // kh]
                        kc = c if fk_count > 1 else 0
                        span, o_first, o_step = columns[tx, 0], columns[tx, 1], columns[tx, 2]
                        if _pair_starts(paired, c, channels, o_step, columns[tx, 4]):
                            # rows i, i + 1 are channels c, c + 1 at tap t
                            for r in range(rows):
                                iy = source_rows[r, tzy]
                                if iy >= 0:
                                    _set_patch_rows_pair(patch_rows, i, r * out_w, kbuf, r, t, x,
                                                         n, c, iz, iy, o_first, columns[tx, 3],
                                                         span, out_w)
                                else:
                                    patch_rows[i:i + 2, r * out_w:(r + 1) * out_w] = 0.0
                            i += 2
                            continue
                        for r in range(rows):
                            iy = source_rows[r, tzy]
                            if iy >= 0 and o_step == 1 and columns[tx, 4] == 1:
                                _set_patch_row(patch_rows, i, r * out_w, kbuf, r, kc, t, x, n,
                                               c, iz, iy, o_first, columns[tx, 3], span, out_w)
                                continue
                            row = patch_rows[i, r * out_w:(r + 1) * out_w]
                            row[:] = 0.0
                            if iy >= 0:
                                _add_product(row, o_first, o_step, kbuf[r, kc, t], o_first,
                                             o_step, x[n, c, iz, iy], columns[tx, 3],
                                             columns[tx, 4], span, one)
                        i += 1
                if need_patch_grad and need_weight:
                    _patch_and_weight_gradient_block(patch_grads, grad_w, weight_t, first,
                                                     count, grad_rows, patch_rows)
                elif need_patch_grad:
                    _patch_gradient_block(patch_grads, weight_t, first, count, grad_rows)
                elif need_weight:
                    _weight_gradient_block(grad_w, first, count, grad_rows, patch_rows)
                if not need_patch_grad:
                    continue
                i = 0
                while i < count:
                    c, t = patch_row_tap(first + i, channels, taps, paired)
                    tzy, tx = t // kw, t % kw
                    iz = source_planes[tzy // kh]
                    kc = c if fk_count > 1 else 0
                    span, o_first, o_step = columns[tx, 0], columns[tx, 1], columns[tx, 2]
                    if _pair_starts(paired, c, channels, o_step, columns[tx, 4]):
                        # rows i, i + 1 are channels c, c + 1 at tap t
                        for r in range(rows):
                            iy = source_rows[r, tzy]
                            if iy >= 0:
                                _add_gradients_pair_at(gk, r, t, grad_x, n, c, iz, iy,
                                                       patch_grads, i, r * out_w, x, kbuf,
                                                       o_first, columns[tx, 3], span)
                        i += 2
                        continue
                    for r in range(rows):
                        iy = source_rows[r, tzy]
                        if iy < 0:
                            continue  # P[j] is 0 on this row
                        if (need_kernel and need_x and not split and o_step == 1
                                and columns[tx, 4] == 1):
                            _add_gradients_at(gk, r, kc, t, grad_x, n, c, iz, iy, patch_grads,
                                              i, r * out_w, x, kbuf, o_first, columns[tx, 3],
                                              span)
                            continue
                        patch_grad = patch_grads[i, r * out_w:(r + 1) * out_w]
                        if split:
                            if group != c * kd * kh + tzy:
                                if need_x and group >= 0:
                                    _interleave_add(grad_x[n, group_c, group_iz, group_iy],
                                                    gx_phases, sx)
                                # strided reads and writes become contiguous per phase
                                _deinterleave(x[n, c, iz, iy], sx, x_phases)
                                gx_phases[:] = 0.0
                                group = c * kd * kh + tzy
                                group_c = c
                                group_iz = iz
                                group_iy = iy
                            phase = columns[tx, 5]
                            i_first, i_step = columns[tx, 6], 1
                            source = x_phases[phase]
                        else:
                            phase = 0
                            i_first, i_step = columns[tx, 3], columns[tx, 4]
                            source = x[n, c, iz, iy]
                        if need_kernel and need_x and o_step == 1 and i_step == 1:
                            _add_kernel_and_input_gradient(
                                gk[r, kc, t],
                                gx_phases[phase] if split else grad_x[n, c, iz, iy],
                                patch_grad, source, kbuf[r, kc, t], o_first, i_first, span)
                            continue
                        if need_kernel:
                            _add_product(gk[r, kc, t], o_first, o_step, patch_grad, o_first,
                                         o_step, source, i_first, i_step, span, one)
                        if need_x:
                            target = gx_phases[phase] if split else grad_x[n, c, iz, iy]
                            _add_product(target, i_first, i_step, patch_grad, o_first, o_step,
                                         kbuf[r, kc, t], o_first, o_step, span, one)
                    i += 1
            if split and need_x and group >= 0:
                _interleave_add(grad_x[n, group_c, group_iz, group_iy], gx_phases, sx)
            for r in range(rows):
                _finish_row(
                    gk[r], use_explicit, need_kernel, need_guide, kap[r], power[r], base[r],
                    kbuf[r], zinv[r], guide, centre, n, oz, group_first + r, oz * out_h +
                    group_first + r, out_w, guide_d, guide_h, guide_w, kd, kh, kw, ksz, ksy, ksx,
                    kpz, kpy, kpx, dd, dh, dw, family, lam, spatial, mask, has_mask, normalize,
                    channel_wise, grad_explicit, grad_guide, grad_centre, grad_mask,
                    grad_alpha_rows, grad_lam_rows, grad_spatial_rows, gz, gd2, rr, u, phases,
                    grad_phases,
                )


@njit(cache=True, nogil=True)
def conv_backward(
    grad_y, x, weight_t, explicit, use_explicit, guide, centre, guide_d, guide_h, guide_w,
    kd, kh, kw, sz, sy, sx, pz, py, px, dd, dh, dw, ksz, ksy, ksx, kpz, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    band_depth, z_colours, band_height, group_rows, paired, need_x, need_weight,
    need_kernel, need_guide,
    grad_x, grad_w_slots, grad_explicit, grad_guide, grad_centre, grad_mask,
    grad_alpha_rows, grad_lam_rows, grad_spatial_rows, colour_z, colour, first_job, job_start,
    job_stop,
):
    """VJP of ``y[n,o,i] = sum_j W[o, j] P[n, j, i]``, ``P[j, i] = K[(c),t,i] x[c,src]``.

    Patch row ``j`` is ``(c, t) = patch_row_tap(j, C, T, paired)``: ``c*T + t``, or with
    ``paired`` two channels interleaved tap by tap (their rows then share the loads of K and of
    the kernel gradient). ``weight_t`` is ``W^T`` ``(C*T, C_out)`` with its rows in that order,
    and so are the columns of the weight gradient. Per output row, blocks of patch rows ``j``: the
    kernel forms ``(W^T g)[j]`` from the row's upstream gradient, adds it times K to ``grad_x``
    at the source positions and times ``x`` to the kernel gradient, and adds ``g P[j]^T`` to the
    weight gradient slot of its band (``grad_w_slots`` ``(slots, C_out, C*T)``, zeroed; see the
    module docstring). Other outputs as in :func:`direct_backward`.
    """
    out_d, out_h = grad_y.shape[2], grad_y.shape[3]
    for slot in range(job_start, job_stop):
        n, z_band, band = _band_of_job(first_job + slot, out_d, out_h, band_depth, band_height,
                                       colour_z, colour, z_colours)
        _conv_band(
            grad_y, x, weight_t, explicit, use_explicit, guide, centre, guide_d,
            guide_h, guide_w, kd, kh, kw, sz, sy, sx, pz, py, px, dd, dh, dw, ksz,
            ksy, ksx, kpz, kpy, kpx, transposed, family, alpha, lam, eps2, spatial,
            mask, has_mask, normalize, channel_wise, fk_count, band_height,
            group_rows, paired, need_x, need_weight, need_kernel, need_guide,
            grad_x, grad_w_slots[slot], grad_explicit, grad_guide, grad_centre,
            grad_mask, grad_alpha_rows, grad_lam_rows, grad_spatial_rows, n,
            z_band * band_depth, min((z_band + 1) * band_depth, out_d), band,
        )
