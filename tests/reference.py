"""Slow, obviously-correct float64 NumPy oracle for the formulas of ``docs/design.md`` §1.

Written from the formulas only: nothing here imports ``pacarray``. Every function loops
explicitly over output positions and taps (vectorizing over batch and channels only), so each
line can be checked against the mathematics by eye.

Notation (2-D): output position ``i`` (a pair), tap ``a`` (a pair), neighbour
``q = i*s - p + a*d``, centre ``c = i*s - p + d*(k-1)/2``.
"""

from __future__ import annotations

import numpy as np

GAUSSIAN_SMOOTH = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0


def _pair(value):
    if np.ndim(value) == 0:
        return (int(value), int(value))
    first, second = value
    return (int(first), int(second))


def _in_range(qy, qx, height, width):
    return 0 <= qy < height and 0 <= qx < width


def forward_out_size(size, k, s, p, d):
    """``(n + 2p - d(k-1) - 1)//s + 1`` for one dimension."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def transposed_out_size(size, k, s, p, d, op):
    """``(n-1)s - 2p + d(k-1) + op + 1`` for one dimension."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def smoothing_array(smooth):
    """The 2-D smoothing kernel described by ``smooth`` (None means no smoothing)."""
    if smooth is None:
        return None
    if isinstance(smooth, str):
        if smooth != "gaussian":
            raise ValueError(smooth)
        return GAUSSIAN_SMOOTH.copy()
    if isinstance(smooth, tuple) and len(smooth) == 2 and smooth[0] == "average":
        size = int(smooth[1])
        return np.full((size, size), 1.0 / size**2)
    return np.asarray(smooth, dtype=np.float64)


def ref_smooth(guide, smooth):
    """Centre features: ``guide`` correlated per channel with the smoothing kernel.

    Zero padding, same size; ``smooth=None`` returns the guide unchanged (as float64).
    """
    guide = np.asarray(guide, dtype=np.float64)
    kernel = smoothing_array(smooth)
    if kernel is None:
        return guide.copy()
    height, width = guide.shape[-2:]
    radius_y, radius_x = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    out = np.zeros_like(guide)
    for y in range(height):
        for x in range(width):
            for u in range(kernel.shape[0]):
                for v in range(kernel.shape[1]):
                    qy, qx = y + u - radius_y, x + v - radius_x
                    if _in_range(qy, qx, height, width):
                        out[..., y, x] += kernel[u, v] * guide[..., qy, qx]
    return out


def ref_spatial_window(kernel_size, sigma=None, window="square", dilation=1):
    """Spatial weight ``G``: Gaussian in the tap offset (pixels), optionally cut to a disk."""
    kh, kw = _pair(kernel_size)
    dy, dx = _pair(dilation)
    radius_y, radius_x = (kh - 1) // 2, (kw - 1) // 2
    out = np.ones((kh, kw))
    for a in range(kh):
        for b in range(kw):
            ty, tx = a - radius_y, b - radius_x
            if sigma is not None:
                dist2 = (ty * dy) ** 2 + (tx * dx) ** 2
                out[a, b] = np.exp(-dist2 / (2.0 * sigma**2))
            if window == "disk":
                # A 1-tap dimension has radius 0 and must not exclude anything.
                ry = (ty / radius_y) ** 2 if radius_y else 0.0
                rx = (tx / radius_x) ** 2 if radius_x else 0.0
                if ry + rx > 1.0:
                    out[a, b] = 0.0
            elif window != "square":
                raise ValueError(window)
    return out


def _kappa(family, centre, neighbour, channel_wise, alpha, lambda_, eps, asymmetric):
    """Kernel values for one tap: (N, F) features in, (N, 1) or (N, F) out."""
    diff = centre - neighbour
    if family is None:
        shape = diff.shape if channel_wise else (diff.shape[0], 1)
        return np.ones(shape)
    if family == "gaussian":
        sq = diff**2
        if not channel_wise:
            sq = sq.sum(axis=1, keepdims=True)
        return np.exp(-0.5 * sq)
    if family == "inverse_power":
        if asymmetric:
            diff = np.maximum(0.0, diff)
        sq = diff**2
        if not channel_wise:
            sq = sq.sum(axis=1, keepdims=True)
        alpha = np.asarray(alpha, dtype=np.float64)
        lambda_ = np.asarray(lambda_, dtype=np.float64)
        return alpha + (sq + eps**2) ** (lambda_ / 2.0)
    raise ValueError(family)


def ref_kernel(
    guide,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    family="gaussian",
    alpha=0.0,
    lambda_=-1.0,
    eps=1e-2,
    asymmetric=False,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    channel_wise=False,
    transposed=False,
):
    """Explicit adaptive kernel and validity.

    ``family`` is ``"gaussian"``, ``"inverse_power"`` or ``None`` (kappa = 1, the no-kernel
    path; then only the guide's shape matters). Returns ``(K, valid)``, ``K`` of shape
    ``(N, 1|F, kh, kw, Ho, Wo)``, ``valid`` ``(N, 1|F, Ho, Wo)`` (``Z != 0``).
    """
    guide = np.asarray(guide, dtype=np.float64)
    n, f, height, width = guide.shape
    kh, kw = _pair(kernel_size)
    dy, dx = _pair(dilation)
    if transposed:
        # The guide is at the transposed op's output resolution: stride 1, centred padding.
        sy, sx = 1, 1
        py, px = dy * (kh - 1) // 2, dx * (kw - 1) // 2
    else:
        sy, sx = _pair(stride)
        py, px = _pair(padding)
    out_h = forward_out_size(height, kh, sy, py, dy)
    out_w = forward_out_size(width, kw, sx, px, dx)
    centre_features = ref_smooth(guide, smooth)
    g = np.ones((kh, kw)) if spatial_weight is None else np.asarray(spatial_weight, np.float64)
    m = None if mask is None else np.asarray(mask, dtype=np.float64)
    channels = f if channel_wise else 1

    numerator = np.zeros((n, channels, kh, kw, out_h, out_w))
    z_kernel = np.zeros((n, channels, out_h, out_w))
    z_mask = np.zeros((n, 1, out_h, out_w))
    z_mask_kernel = np.zeros((n, channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            cy = i * sy - py + dy * (kh - 1) // 2
            cx = j * sx - px + dx * (kw - 1) // 2
            fc = centre_features[:, :, cy, cx]
            for a in range(kh):
                for b in range(kw):
                    qy, qx = i * sy - py + a * dy, j * sx - px + b * dx
                    if not _in_range(qy, qx, height, width):
                        continue  # K = 0 and the tap is not counted in Z
                    kappa = _kappa(
                        family,
                        fc,
                        guide[:, :, qy, qx],
                        channel_wise,
                        alpha,
                        lambda_,
                        eps,
                        asymmetric,
                    )
                    kg = kappa * g[a, b]
                    mq = np.ones((n, 1)) if m is None else m[:, 0:1, qy, qx]
                    numerator[:, :, a, b, i, j] = kg * mq
                    z_kernel[:, :, i, j] += kg
                    z_mask[:, :, i, j] += mq
                    z_mask_kernel[:, :, i, j] += kg * mq

    if normalize is None:
        return numerator, np.ones((n, channels, out_h, out_w), dtype=bool)
    if normalize == "kernel":
        z = z_kernel
    elif normalize == "mask":
        z = np.broadcast_to(z_mask, z_kernel.shape)
    elif normalize == "mask_kernel":
        z = z_mask_kernel
    else:
        raise ValueError(normalize)
    valid = z != 0
    safe_z = np.where(valid, z, 1.0)
    kernel = np.where(valid[:, :, None, None], numerator / safe_z[:, :, None, None], 0.0)
    return kernel, valid


def _is_shared(weight, channels):
    """A (1, 1, kh, kw) filter applied to each of ``channels`` > 1 channels separately."""
    return weight.shape[:2] == (1, 1) and channels != 1


def ref_conv(x, K, weight, bias=None, stride=1, padding=0, dilation=1):
    """``y[n,o,i] = sum_{c,a} W[o,c,a] K[n,(c),a,i] x[n,c,i*s-p+a*d] + b[o]``.

    ``K=None`` means K = 1. ``weight`` is ``(C_out, C, kh, kw)`` or shared ``(1, 1, kh, kw)``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, channels, height, width = x.shape
    weight = np.asarray(weight, dtype=np.float64)
    shared = _is_shared(weight, channels)
    c_out = channels if shared else weight.shape[0]
    kh, kw = weight.shape[2:]
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    dy, dx = _pair(dilation)
    out_h = forward_out_size(height, kh, sy, py, dy)
    out_w = forward_out_size(width, kw, sx, px, dx)
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        assert K.shape[2:] == (kh, kw, out_h, out_w), (K.shape, (kh, kw, out_h, out_w))
    y = np.zeros((n, c_out, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(kh):
                for b in range(kw):
                    qy, qx = i * sy - py + a * dy, j * sx - px + b * dx
                    if not _in_range(qy, qx, height, width):
                        continue
                    tap = x[:, :, qy, qx]
                    if K is not None:
                        tap = K[:, :, a, b, i, j] * tap  # (N,1) or (N,C) broadcast
                    if shared:  # per channel: no 0 * NaN leaking across channels
                        y[:, :, i, j] += weight[0, 0, a, b] * tap
                    else:
                        y[:, :, i, j] += tap @ weight[:, :, a, b].T
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def ref_conv_transpose(x, K, weight, bias=None, stride=1, padding=0, dilation=1,
                       output_padding=0):
    """Transposed PAC as ``docs/design.md`` §1.2 defines it: PAC on the zero-inserted input with
    flipped weights.

    ``x`` ``(N, C, H, W)``, ``weight`` ``(C, C_out, kh, kw)`` or shared ``(1, 1, kh, kw)``,
    ``K`` ``(N, 1|C, kh, kw, Ho, Wo)`` at the output resolution (or None for K = 1).

    Derivation. Insert ``s-1`` zeros between samples, pad ``P = d(k-1) - p`` on each side and
    ``output_padding`` more on the bottom/right, then correlate with stride 1, no padding,
    dilation d and weight ``W'[o,c,b] = W[c,o,k-1-b]``. Tap ``b`` of output ``j`` reads the
    zero-inserted image at ``j + b*d``, i.e. ``x[i]`` with ``i*s = j + b*d - P``; with
    ``a = k-1-b`` that is ``i*s = j + p - a*d``, the contract's gather. The zero-inserted
    image has size ``Ho + d(k-1)``, so its index ``j + b*d`` is output position
    ``j - d(k-1)/2 + b*d``: exactly where tap ``b`` of the transposed-mode kernel (stride 1,
    padding ``d(k-1)/2``) looks, so K is used as ``K[..., b, j]`` = ``K[..., k-1-a, j]``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, channels, height, width = x.shape
    weight = np.asarray(weight, dtype=np.float64)
    kh, kw = weight.shape[2:]
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    dy, dx = _pair(dilation)
    opy, opx = _pair(output_padding)
    pad_y, pad_x = dy * (kh - 1) - py, dx * (kw - 1) - px
    zh = (height - 1) * sy + 1 + 2 * pad_y + opy
    zw = (width - 1) * sx + 1 + 2 * pad_x + opx
    zero_inserted = np.zeros((n, channels, zh, zw))
    zero_inserted[:, :, pad_y:pad_y + (height - 1) * sy + 1:sy,
                  pad_x:pad_x + (width - 1) * sx + 1:sx] = x
    flipped = np.ascontiguousarray(np.swapaxes(weight, 0, 1)[:, :, ::-1, ::-1])
    y = ref_conv(zero_inserted, K, flipped, bias, stride=1, padding=0, dilation=(dy, dx))
    assert y.shape[2:] == (
        transposed_out_size(height, kh, sy, py, dy, opy),
        transposed_out_size(width, kw, sx, px, dx, opx),
    )
    return y


def ref_conv_transpose_gather(x, K, weight, bias=None, stride=1, padding=0, dilation=1,
                              output_padding=0):
    """The contract's gather form, literally:
    ``y[n,o,j] = sum_{c,a} W[c,o,a] K[n,(c),k-1-a,j] x[n,c,i]`` over ``i*s = j + p - a*d``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, channels, height, width = x.shape
    weight = np.asarray(weight, dtype=np.float64)
    shared = _is_shared(weight, channels)
    c_out = channels if shared else weight.shape[1]
    kh, kw = weight.shape[2:]
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    dy, dx = _pair(dilation)
    opy, opx = _pair(output_padding)
    out_h = transposed_out_size(height, kh, sy, py, dy, opy)
    out_w = transposed_out_size(width, kw, sx, px, dx, opx)
    y = np.zeros((n, c_out, out_h, out_w))
    for j in range(out_h):
        for jj in range(out_w):
            for a in range(kh):
                for b in range(kw):
                    ty, tx = j + py - a * dy, jj + px - b * dx
                    if ty % sy or tx % sx:
                        continue
                    iy, ix = ty // sy, tx // sx
                    if not _in_range(iy, ix, height, width):
                        continue
                    tap = x[:, :, iy, ix]
                    if K is not None:
                        tap = K[:, :, kh - 1 - a, kw - 1 - b, j, jj] * tap
                    if shared:
                        y[:, :, j, jj] += weight[0, 0, a, b] * tap
                    else:
                        y[:, :, j, jj] += tap @ weight[:, :, a, b]
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def ref_conv_transpose_scatter(x, weight, bias=None, stride=1, padding=0, dilation=1,
                               output_padding=0):
    """K = 1 transposed convolution as a scatter: ``y[o, i*s - p + a*d] += W[c, o, a] x[c, i]``.

    ``weight`` is ``(C, C_out, kh, kw)`` (full weights only).
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, channels, height, width = x.shape
    c_out, kh, kw = weight.shape[1:]
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    dy, dx = _pair(dilation)
    opy, opx = _pair(output_padding)
    out_h = transposed_out_size(height, kh, sy, py, dy, opy)
    out_w = transposed_out_size(width, kw, sx, px, dx, opx)
    y = np.zeros((n, c_out, out_h, out_w))
    for c in range(channels):
        for o in range(c_out):
            for iy in range(height):
                for ix in range(width):
                    for a in range(kh):
                        for b in range(kw):
                            jy, jx = iy * sy - py + a * dy, ix * sx - px + b * dx
                            if _in_range(jy, jx, out_h, out_w):
                                y[:, o, jy, jx] += weight[c, o, a, b] * x[:, c, iy, ix]
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def ref_pool(x, K, kernel_size=None, stride=1, padding=0, dilation=1):
    """``y[n,c,i] = sum_a K[n,(c),a,i] x[n,c,i*s-p+a*d]`` (``K=None``: plain sum pooling)."""
    x = np.asarray(x, dtype=np.float64)
    n, channels, height, width = x.shape
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        kh, kw = K.shape[2:4]
    else:
        kh, kw = _pair(kernel_size)
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    dy, dx = _pair(dilation)
    out_h = forward_out_size(height, kh, sy, py, dy)
    out_w = forward_out_size(width, kw, sx, px, dx)
    y = np.zeros((n, channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(kh):
                for b in range(kw):
                    qy, qx = i * sy - py + a * dy, j * sx - px + b * dx
                    if not _in_range(qy, qx, height, width):
                        continue
                    tap = x[:, :, qy, qx]
                    if K is not None:
                        tap = K[:, :, a, b, i, j] * tap
                    y[:, :, i, j] += tap
    return y
