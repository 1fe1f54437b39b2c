"""Numba kernels of the CPU backward passes (vector-Jacobian products).

Every kernel walks output rows ``(n, oy)``, recomputes that row's adaptive kernel into small
buffers (``(Fk, T, Wo)``: never the whole K) and pushes the row's upstream gradient back to
the inputs.

Determinism without atomics. A row's gradient lands on the input rows its taps read (and, for
the kernel, on the guide/mask rows of its taps and on its own centre row, which no other row
touches). Output rows are grouped into *bands* of ``band_height`` consecutive rows, where
``band_height`` is chosen by the driver so that two bands with one band between them never touch
the same input, guide or mask row. Even bands then run in parallel, followed by odd bands, each
band walking its rows in order, so every element receives its contributions in one fixed order
whatever the thread schedule: results are bit-identical run to run. Per-row partial sums of the
small parameters (tap weights, spatial weight, ``alpha``, ``lambda``) go to per-row slots that
the driver reduces in a fixed order.

Integer codes are those of :mod:`pacarray._cpu._numba_kernels` (family 0 constant, 1 Gaussian,
2 inverse power, 3 asymmetric inverse power; normalize 0 none, 1 kernel, 2 mask, 3 mask_kernel).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba_kernels import (
    FAMILY_CONSTANT,
    FAMILY_GAUSSIAN,
    FAMILY_INVERSE_ASYMMETRIC,
    NORMALIZE_KERNEL,
    NORMALIZE_MASK,
    NORMALIZE_MASK_KERNEL,
    NORMALIZE_NONE,
    _source_index,
    _tap_range,
)


@njit(cache=True)
def kappa_row(
    guide, centre, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw,
    family, alpha, lam, eps2, channel_wise, kap, power, base,
):
    """Raw kernel values of output row ``oy`` (no spatial weight, mask or normalizer).

    ``kap[Fk, T, Wo]`` receives kappa (0 for out-of-range taps). For the Gaussian family
    ``power`` holds kappa too; for the inverse families ``base`` holds ``d2 + eps2`` and ``power``
    holds ``base ** (lambda/2)``, the pieces the backward pass differentiates.
    """
    fk_count = kap.shape[0]
    features = guide.shape[1]
    cy = oy * ksy - kpy + dh * ((kh - 1) // 2)
    centre_dx = dw * ((kw - 1) // 2)
    for ty in range(kh):
        qy = oy * ksy - kpy + ty * dh
        row_ok = qy >= 0 and qy < guide_h
        for tx in range(kw):
            t = ty * kw + tx
            for fk in range(fk_count):
                for ox in range(out_w):
                    kap[fk, t, ox] = 0.0
            if not row_ok:
                continue
            lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
            if family == FAMILY_CONSTANT:
                for fk in range(fk_count):
                    for ox in range(lo, hi):
                        kap[fk, t, ox] = 1.0
                continue
            for fk in range(fk_count):
                for ox in range(lo, hi):
                    base[fk, t, ox] = 0.0
            centre_shift = centre_dx - kpx
            neighbour_shift = tx * dw - kpx
            for f in range(features):
                fk = f if channel_wise else 0
                for ox in range(lo, hi):
                    diff = (centre[n, f, cy, ox * ksx + centre_shift]
                            - guide[n, f, qy, ox * ksx + neighbour_shift])
                    if family == FAMILY_INVERSE_ASYMMETRIC and diff < 0.0:
                        diff = 0.0
                    base[fk, t, ox] += diff * diff
            for fk in range(fk_count):
                if family == FAMILY_GAUSSIAN:
                    for ox in range(lo, hi):
                        value = np.exp(-0.5 * base[fk, t, ox])
                        power[fk, t, ox] = value
                        kap[fk, t, ox] = value
                else:
                    a = alpha[fk]
                    half_power = 0.5 * lam[fk]
                    for ox in range(lo, hi):
                        b = base[fk, t, ox] + eps2
                        p = b ** half_power
                        base[fk, t, ox] = b
                        power[fk, t, ox] = p
                        kap[fk, t, ox] = a + p


@njit(cache=True)
def normalize_row(
    kap, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw,
    spatial, mask, has_mask, normalize, kbuf, zinv,
):
    """``kbuf = kap * G * M / Z`` for one output row; ``zinv[Fk, Wo]`` gets ``1/Z`` (0 where
    ``Z == 0``, 1 without normalization). Same operation order as the forward kernels."""
    fk_count = kap.shape[0]
    for fk in range(fk_count):
        for ox in range(out_w):
            zinv[fk, ox] = 0.0
    for ty in range(kh):
        qy = oy * ksy - kpy + ty * dh
        row_ok = qy >= 0 and qy < guide_h
        for tx in range(kw):
            t = ty * kw + tx
            for fk in range(fk_count):
                for ox in range(out_w):
                    kbuf[fk, t, ox] = 0.0
            if not row_ok:
                continue
            lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
            g = spatial[t]
            shift = tx * dw - kpx
            for fk in range(fk_count):
                for ox in range(lo, hi):
                    value = kap[fk, t, ox] * g
                    m = 1.0
                    if has_mask:
                        m = mask[n, qy, ox * ksx + shift]
                    if normalize == NORMALIZE_KERNEL:
                        zinv[fk, ox] += value
                    elif normalize == NORMALIZE_MASK:
                        zinv[fk, ox] += m
                    elif normalize == NORMALIZE_MASK_KERNEL:
                        zinv[fk, ox] += m * value
                    if has_mask:
                        value = value * m
                    kbuf[fk, t, ox] = value
    for fk in range(fk_count):
        for ox in range(out_w):
            if normalize == NORMALIZE_NONE:
                zinv[fk, ox] = 1.0
            else:
                zv = zinv[fk, ox]
                zinv[fk, ox] = 0.0 if zv == 0.0 else 1.0 / zv
        if normalize != NORMALIZE_NONE:
            for t in range(kh * kw):
                for ox in range(out_w):
                    kbuf[fk, t, ox] *= zinv[fk, ox]


@njit(cache=True)
def kernel_backward_row(
    gk, kap, power, base, kbuf, zinv, guide, centre, n, oy, out_w, guide_h, guide_w,
    kh, kw, ksy, ksx, kpy, kpx, dh, dw, family, lam, spatial, mask, has_mask, normalize,
    channel_wise, need_guide, grad_guide, grad_centre, grad_mask, grad_alpha_row, grad_lam_row,
    grad_spatial_row, gz, gd2,
):
    """Back-propagate ``gk[Fk, T, Wo]`` (gradient of one row of the normalized K).

    ``K = U / Z`` with ``U = kappa G M`` and ``Z = sum_t V``, ``V`` being ``kappa G`` (kernel),
    ``M`` (mask) or ``kappa G M`` (mask_kernel). With ``r = gk / Z`` and
    ``gz = -sum_t gk K / Z`` the gradients of ``U`` and ``V`` are ``r`` and ``gz``; where
    ``Z == 0`` both are 0. Contributions go to ``grad_guide`` (neighbour rows, band-protected),
    ``grad_centre`` (this row's centre, touched by no other row), ``grad_mask`` (neighbour rows)
    and the per-row slots ``grad_alpha_row[Fk]``, ``grad_lam_row[Fk]``,
    ``grad_spatial_row[T]``. ``gz`` and ``gd2`` are ``(Wo,)`` work buffers.
    """
    fk_count = kap.shape[0]
    features = guide.shape[1]
    cy = oy * ksy - kpy + dh * ((kh - 1) // 2)
    centre_shift = dw * ((kw - 1) // 2) - kpx
    inverse = family != FAMILY_CONSTANT and family != FAMILY_GAUSSIAN
    for fk in range(fk_count):
        for ox in range(out_w):
            gz[ox] = 0.0
        if normalize != NORMALIZE_NONE:
            for t in range(kh * kw):
                for ox in range(out_w):
                    gz[ox] += gk[fk, t, ox] * kbuf[fk, t, ox]
            for ox in range(out_w):
                gz[ox] = -gz[ox] * zinv[fk, ox]
        half_lam = 0.5 * lam[fk]
        for ty in range(kh):
            qy = oy * ksy - kpy + ty * dh
            if qy < 0 or qy >= guide_h:
                continue
            for tx in range(kw):
                t = ty * kw + tx
                lo, hi = _tap_range(tx * dw, ksx, kpx, guide_w, out_w)
                g = spatial[t]
                shift = tx * dw - kpx
                spatial_sum = 0.0
                alpha_sum = 0.0
                lam_sum = 0.0
                for ox in range(lo, hi):
                    r = gk[fk, t, ox] * zinv[fk, ox]
                    m = 1.0
                    if has_mask:
                        m = mask[n, qy, ox * ksx + shift]
                    kp = kap[fk, t, ox]
                    if normalize == NORMALIZE_KERNEL:
                        a = m * r + gz[ox]
                        g_kappa = g * a
                        spatial_sum += kp * a
                        g_mask = kp * g * r
                    elif normalize == NORMALIZE_MASK:
                        a = m * r
                        g_kappa = g * a
                        spatial_sum += kp * a
                        g_mask = kp * g * r + gz[ox]
                    elif normalize == NORMALIZE_MASK_KERNEL:
                        a = r + gz[ox]
                        g_kappa = g * m * a
                        spatial_sum += kp * m * a
                        g_mask = kp * g * a
                    else:
                        a = m * r
                        g_kappa = g * a
                        spatial_sum += kp * a
                        g_mask = kp * g * r
                    if has_mask:
                        grad_mask[n, qy, ox * ksx + shift] += g_mask
                    if family == FAMILY_GAUSSIAN:
                        gd2[ox] = -0.5 * g_kappa * power[fk, t, ox]
                    elif inverse:
                        alpha_sum += g_kappa
                        b = base[fk, t, ox]
                        if b > 0.0:
                            p = power[fk, t, ox]
                            lam_sum += g_kappa * 0.5 * np.log(b) * p
                            gd2[ox] = g_kappa * half_lam * p / b
                        else:
                            # d2 + eps^2 == 0 (eps = 0, equal features): derivative taken as 0.
                            gd2[ox] = 0.0
                grad_spatial_row[t] += spatial_sum
                if inverse:
                    grad_alpha_row[fk] += alpha_sum
                    grad_lam_row[fk] += lam_sum
                if not need_guide or family == FAMILY_CONSTANT:
                    continue
                f_first = fk if channel_wise else 0
                f_last = fk + 1 if channel_wise else features
                for f in range(f_first, f_last):
                    for ox in range(lo, hi):
                        diff = (centre[n, f, cy, ox * ksx + centre_shift]
                                - guide[n, f, qy, ox * ksx + shift])
                        if family == FAMILY_INVERSE_ASYMMETRIC and diff < 0.0:
                            # d/d(diff) of max(0, diff)^2 is 2 max(0, diff): 0 at and below 0.
                            diff = 0.0
                        g_diff = 2.0 * gd2[ox] * diff
                        grad_centre[n, f, cy, ox * ksx + centre_shift] += g_diff
                        grad_guide[n, f, qy, ox * ksx + shift] -= g_diff


@njit(cache=True)
def _load_kernel_row(
    explicit, use_explicit, guide, centre, n, oy, out_w, guide_h, guide_w, kh, kw,
    ksy, ksx, kpy, kpx, dh, dw, family, alpha, lam, eps2, spatial, mask, has_mask, normalize,
    channel_wise, kap, power, base, kbuf, zinv,
):
    """Row ``oy`` of K into ``kbuf``: copied from an explicit K, or recomputed with its parts."""
    if use_explicit:
        for fk in range(kbuf.shape[0]):
            for t in range(kbuf.shape[1]):
                for ox in range(out_w):
                    kbuf[fk, t, ox] = explicit[n, fk, t, oy, ox]
        return
    kappa_row(
        guide, centre, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw,
        family, alpha, lam, eps2, channel_wise, kap, power, base,
    )
    normalize_row(
        kap, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw,
        spatial, mask, has_mask, normalize, kbuf, zinv,
    )


@njit(cache=True)
def _band_count(rows, band_height, colour):
    """Number of bands of ``colour`` (0 even, 1 odd) among ``ceil(rows / band_height)``."""
    bands = (rows + band_height - 1) // band_height
    return (bands - colour + 1) // 2


@njit(cache=True, parallel=True)
def kernel_backward(
    grad_kernel, guide, centre, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, band_height,
    need_guide, grad_guide, grad_centre, grad_mask, grad_alpha_rows, grad_lam_rows,
    grad_spatial_rows,
):
    """VJP of ``pac_kernel``: ``grad_kernel[N, Fk, T, Ho, Wo]`` back to the kernel's inputs.

    Accumulates into zeroed ``grad_guide``/``grad_centre`` ``(N, F, H, W)``, ``grad_mask``
    ``(N, H, W)`` and per-row slots ``grad_alpha_rows``/``grad_lam_rows`` ``(N, Ho, Fk)``,
    ``grad_spatial_rows`` ``(N, Ho, T)``.
    """
    batch, fk_count, taps, out_h, out_w = grad_kernel.shape
    for colour in range(2):
        count = _band_count(out_h, band_height, colour)
        for job in prange(batch * count):
            n = job // count
            band = 2 * (job % count) + colour
            kap = np.empty((fk_count, taps, out_w), grad_kernel.dtype)
            power = np.empty_like(kap)
            base = np.empty_like(kap)
            kbuf = np.empty_like(kap)
            gk = np.empty_like(kap)
            zinv = np.empty((fk_count, out_w), grad_kernel.dtype)
            gz = np.empty(out_w, grad_kernel.dtype)
            gd2 = np.empty(out_w, grad_kernel.dtype)
            for oy in range(band * band_height, min((band + 1) * band_height, out_h)):
                kappa_row(
                    guide, centre, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx,
                    dh, dw, family, alpha, lam, eps2, channel_wise, kap, power, base,
                )
                normalize_row(
                    kap, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw,
                    spatial, mask, has_mask, normalize, kbuf, zinv,
                )
                for fk in range(fk_count):
                    for t in range(taps):
                        for ox in range(out_w):
                            gk[fk, t, ox] = grad_kernel[n, fk, t, oy, ox]
                kernel_backward_row(
                    gk, kap, power, base, kbuf, zinv, guide, centre, n, oy, out_w, guide_h,
                    guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw, family, lam, spatial, mask,
                    has_mask, normalize, channel_wise, need_guide, grad_guide, grad_centre,
                    grad_mask, grad_alpha_rows[n, oy], grad_lam_rows[n, oy],
                    grad_spatial_rows[n, oy], gz, gd2,
                )


@njit(cache=True)
def _finish_row(
    gk, use_explicit, need_kernel, need_guide, kap, power, base, kbuf, zinv, guide, centre,
    n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx, dh, dw, family, lam, spatial,
    mask, has_mask, normalize, channel_wise, grad_explicit, grad_guide, grad_centre, grad_mask,
    grad_alpha_rows, grad_lam_rows, grad_spatial_rows, gz, gd2,
):
    """Hand a row's kernel gradient ``gk`` to the explicit K or through the fused kernel."""
    if not need_kernel:
        return
    if use_explicit:
        for fk in range(gk.shape[0]):
            for t in range(gk.shape[1]):
                for ox in range(out_w):
                    grad_explicit[n, fk, t, oy, ox] = gk[fk, t, ox]
        return
    kernel_backward_row(
        gk, kap, power, base, kbuf, zinv, guide, centre, n, oy, out_w, guide_h, guide_w,
        kh, kw, ksy, ksx, kpy, kpx, dh, dw, family, lam, spatial, mask, has_mask, normalize,
        channel_wise, need_guide, grad_guide, grad_centre, grad_mask, grad_alpha_rows[n, oy],
        grad_lam_rows[n, oy], grad_spatial_rows[n, oy], gz, gd2,
    )


@njit(cache=True, parallel=True)
def direct_backward(
    grad_y, x, tap_weight, explicit, use_explicit, guide, centre, guide_h, guide_w,
    sy, sx, py, px, dh, dw, ksy, ksx, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    band_height, need_x, need_tap_weight, need_kernel, need_guide,
    grad_x, grad_tap_rows, grad_explicit, grad_guide, grad_centre, grad_mask,
    grad_alpha_rows, grad_lam_rows, grad_spatial_rows,
):
    """VJP of the direct kernel ``y[n,c,o] = sum_t w[t] K[n,(c),t,o] x[n,c,src(o,t)]``.

    Fills (accumulating into zeroed arrays) ``grad_x`` ``(N, C, H, W)``, the per-row slots
    ``grad_tap_rows`` ``(N, Ho, T)`` of the tap weights, ``grad_explicit`` ``(N, Fk, T, Ho, Wo)``
    on the explicit path, and the kernel's inputs on the fused path (see
    :func:`kernel_backward`). ``tap_weight`` is indexed by the kernel tap, as in the forward.
    """
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = grad_y.shape[2], grad_y.shape[3]
    kh, kw = tap_weight.shape[0], tap_weight.shape[1]
    taps = kh * kw
    for colour in range(2):
        count = _band_count(out_h, band_height, colour)
        for job in prange(batch * count):
            n = job // count
            band = 2 * (job % count) + colour
            kap = np.empty((fk_count, taps, out_w), grad_y.dtype)
            power = np.empty_like(kap)
            base = np.empty_like(kap)
            kbuf = np.empty_like(kap)
            gk = np.empty_like(kap)
            zinv = np.empty((fk_count, out_w), grad_y.dtype)
            gz = np.empty(out_w, grad_y.dtype)
            gd2 = np.empty(out_w, grad_y.dtype)
            for oy in range(band * band_height, min((band + 1) * band_height, out_h)):
                _load_kernel_row(
                    explicit, use_explicit, guide, centre, n, oy, out_w, guide_h, guide_w,
                    kh, kw, ksy, ksx, kpy, kpx, dh, dw, family, alpha, lam, eps2, spatial, mask,
                    has_mask, normalize, channel_wise, kap, power, base, kbuf, zinv,
                )
                gk[:] = 0.0
                for c in range(channels):
                    kc = c if fk_count > 1 else 0
                    grad_row = grad_y[n, c, oy]
                    for ty in range(kh):
                        iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                        if iy < 0:
                            continue
                        x_row = x[n, c, iy]
                        for tx in range(kw):
                            t = ty * kw + tx
                            w = tap_weight[ty, tx]
                            k_row = kbuf[kc, t]
                            if transposed:
                                # inputs ix with ox = ix*sx - px + (kw-1-tx)*dw inside the output
                                step = sx
                                lo, hi = _tap_range((kw - 1 - tx) * dw, sx, px, out_w, in_w)
                                first = lo * sx + (kw - 1 - tx) * dw - px
                                x_first, x_step = lo, 1
                            else:
                                step = 1
                                lo, hi = _tap_range(tx * dw, sx, px, in_w, out_w)
                                first = lo
                                x_first, x_step = lo * sx + tx * dw - px, sx
                            span = hi - lo
                            if need_kernel:
                                gk_row = gk[kc, t]
                                for j in range(span):
                                    ox = first + j * step
                                    gk_row[ox] += w * grad_row[ox] * x_row[x_first + j * x_step]
                            if need_tap_weight:
                                acc = 0.0
                                for j in range(span):
                                    ox = first + j * step
                                    acc += grad_row[ox] * k_row[ox] * x_row[x_first + j * x_step]
                                grad_tap_rows[n, oy, t] += acc
                            if need_x:
                                grad_x_row = grad_x[n, c, iy]
                                for j in range(span):
                                    ox = first + j * step
                                    grad_x_row[x_first + j * x_step] += w * grad_row[ox] * k_row[ox]
                _finish_row(
                    gk, use_explicit, need_kernel, need_guide, kap, power, base, kbuf, zinv,
                    guide, centre, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx,
                    dh, dw, family, lam, spatial, mask, has_mask, normalize, channel_wise,
                    grad_explicit, grad_guide, grad_centre, grad_mask, grad_alpha_rows,
                    grad_lam_rows, grad_spatial_rows, gz, gd2,
                )


@njit(cache=True, parallel=True)
def conv_backward_rows(
    grad_patch, x, n, row_start, explicit, use_explicit, guide, centre, guide_h, guide_w,
    kh, kw, sy, sx, py, px, dh, dw, ksy, ksx, kpy, kpx, transposed,
    family, alpha, lam, eps2, spatial, mask, has_mask, normalize, channel_wise, fk_count,
    out_w, band_height, need_x, need_patch, need_kernel, need_guide,
    patch, grad_x, grad_explicit, grad_guide, grad_centre, grad_mask,
    grad_alpha_rows, grad_lam_rows, grad_spatial_rows,
):
    """One chunk of output rows ``row_start ..`` of batch ``n`` of the BLAS conv's VJP.

    ``grad_patch[c*T + t, r*Wo + ox]`` is the gradient of the K-weighted patch (weight matrix
    transposed times the chunk of ``grad_y``, from BLAS). The kernel row is computed once and
    used three ways: ``patch`` (the forward's K-weighted patches, for the weight gradient
    ``grad_y @ patch.T`` the driver takes next), ``grad_x += grad_patch * K`` at the source
    positions, and the kernel gradient ``sum_c grad_patch * x``.
    """
    channels, in_h, in_w = x.shape[1], x.shape[2], x.shape[3]
    taps = kh * kw
    rows = grad_patch.shape[1] // out_w
    for colour in range(2):
        count = _band_count(rows, band_height, colour)
        for job in prange(count):
            band = 2 * job + colour
            kap = np.empty((fk_count, taps, out_w), grad_patch.dtype)
            power = np.empty_like(kap)
            base = np.empty_like(kap)
            kbuf = np.empty_like(kap)
            gk = np.empty_like(kap)
            zinv = np.empty((fk_count, out_w), grad_patch.dtype)
            gz = np.empty(out_w, grad_patch.dtype)
            gd2 = np.empty(out_w, grad_patch.dtype)
            for r in range(band * band_height, min((band + 1) * band_height, rows)):
                oy = row_start + r
                col = r * out_w
                _load_kernel_row(
                    explicit, use_explicit, guide, centre, n, oy, out_w, guide_h, guide_w,
                    kh, kw, ksy, ksx, kpy, kpx, dh, dw, family, alpha, lam, eps2, spatial, mask,
                    has_mask, normalize, channel_wise, kap, power, base, kbuf, zinv,
                )
                gk[:] = 0.0
                for c in range(channels):
                    kc = c if fk_count > 1 else 0
                    for ty in range(kh):
                        iy = _source_index(oy, ty, kh, sy, py, dh, in_h, transposed)
                        for tx in range(kw):
                            t = ty * kw + tx
                            prow = c * taps + t
                            if need_patch:
                                for ox in range(out_w):
                                    patch[prow, col + ox] = 0.0
                            if iy < 0:
                                continue
                            if transposed:
                                step = sx
                                lo, hi = _tap_range((kw - 1 - tx) * dw, sx, px, out_w, in_w)
                                first = col + lo * sx + (kw - 1 - tx) * dw - px
                                x_first, x_step = lo, 1
                            else:
                                step = 1
                                lo, hi = _tap_range(tx * dw, sx, px, in_w, out_w)
                                first = col + lo
                                x_first, x_step = lo * sx + tx * dw - px, sx
                            span = hi - lo
                            x_row = x[n, c, iy]
                            k_row = kbuf[kc, t]
                            # patch columns are col + ox; k_row is indexed by ox
                            if need_patch:
                                patch_row = patch[prow]
                                for j in range(span):
                                    o = first + j * step
                                    patch_row[o] = k_row[o - col] * x_row[x_first + j * x_step]
                            if need_kernel:
                                grad_row = grad_patch[prow]
                                gk_row = gk[kc, t]
                                for j in range(span):
                                    o = first + j * step
                                    gk_row[o - col] += grad_row[o] * x_row[x_first + j * x_step]
                            if need_x:
                                grad_row = grad_patch[prow]
                                grad_x_row = grad_x[n, c, iy]
                                for j in range(span):
                                    o = first + j * step
                                    grad_x_row[x_first + j * x_step] += grad_row[o] * k_row[o - col]
                _finish_row(
                    gk, use_explicit, need_kernel, need_guide, kap, power, base, kbuf, zinv,
                    guide, centre, n, oy, out_w, guide_h, guide_w, kh, kw, ksy, ksx, kpy, kpx,
                    dh, dw, family, lam, spatial, mask, has_mask, normalize, channel_wise,
                    grad_explicit, grad_guide, grad_centre, grad_mask, grad_alpha_rows,
                    grad_lam_rows, grad_spatial_rows, gz, gd2,
                )
