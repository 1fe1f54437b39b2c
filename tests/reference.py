"""Slow, obviously-correct float64 NumPy oracle for the formulas of ``docs/design.md`` §1.

Written from the formulas only: nothing here imports ``pacarray``. Every function loops
explicitly over output positions and taps (vectorizing over batch and channels only), so each
line can be checked against the mathematics by eye.

Spatial rank ``r`` is 1, 2 or 3 and comes from the arrays: data ``(N, C, *S)``, guide
``(N, F, *S)``, mask ``(N, 1, *S)``, weight ``(C_out, C, *k)``, spatial weight ``k``-shaped,
explicit kernel ``(N, 1|F, *k, *out)``. An int geometry argument means the same value on every
axis; a tuple has one entry per axis. Where neither an array nor a tuple says the rank (an int
``kernel_size`` in :func:`ref_spatial_window`), it is 2.

Notation: output position ``i`` (an r-tuple), tap ``a`` (an r-tuple), neighbour
``q = i*s - p + a*d``, centre ``c = i*s - p + d*(k-1)/2``, all per axis. Positions and taps are
visited in C order (for 2-D: rows, then columns), so the 2-D sums run in the order they always
did.
"""

from __future__ import annotations

import itertools

import numpy as np

GAUSSIAN_SMOOTH = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
BINOMIAL = np.array([1.0, 2.0, 1.0]) / 4.0


def _tuple(value, rank):
    """``value`` (an int, or a sequence of ``rank`` ints) as a tuple of ``rank`` ints."""
    if np.ndim(value) == 0:
        return (int(value),) * rank
    values = tuple(int(v) for v in value)
    if len(values) != rank:
        raise ValueError(f"expected {rank} values, got {value!r}")
    return values


def _pair(value):
    return _tuple(value, 2)


def _spatial_rank(array):
    """Spatial rank of an ``(N, C, *S)`` array: 1, 2 or 3."""
    rank = np.ndim(array) - 2
    if rank not in (1, 2, 3):
        raise ValueError(f"expected an (N, C, *S) array with 1 to 3 spatial axes, got shape "
                         f"{np.shape(array)}")
    return rank


def _positions(shape):
    """Every index tuple of ``shape``, in C order."""
    return itertools.product(*(range(n) for n in shape))


def _in_range(q, shape):
    return all(0 <= qi < n for qi, n in zip(q, shape))


def _at(array, position):
    """``array[:, :, *position]`` (Python 3.10 has no starred subscripts)."""
    return array[(slice(None), slice(None)) + tuple(position)]


def _neighbour(i, a, s, p, d):
    return tuple(ii * ss - pp + aa * dd for ii, aa, ss, pp, dd in zip(i, a, s, p, d))


def forward_out_size(size, k, s, p, d):
    """``(n + 2p - d(k-1) - 1)//s + 1`` for one dimension."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def transposed_out_size(size, k, s, p, d, op):
    """``(n-1)s - 2p + d(k-1) + op + 1`` for one dimension."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def _forward_shape(shape, k, s, p, d):
    return tuple(forward_out_size(*args) for args in zip(shape, k, s, p, d))


def smoothing_array(smooth, rank=2):
    """The rank-``rank`` smoothing kernel described by ``smooth`` (None means no smoothing).

    ``"gaussian"`` is the outer product of ``[1, 2, 1] / 4`` over the axes, ``("average", m)``
    the ``m**rank`` box; an array is taken as given.
    """
    if smooth is None:
        return None
    if isinstance(smooth, str):
        if smooth != "gaussian":
            raise ValueError(smooth)
        if rank == 2:
            return GAUSSIAN_SMOOTH.copy()
        kernel = np.ones(())
        for _ in range(rank):
            kernel = np.multiply.outer(kernel, BINOMIAL)
        return kernel
    if isinstance(smooth, tuple) and len(smooth) == 2 and smooth[0] == "average":
        size = int(smooth[1])
        return np.full((size,) * rank, 1.0 / size**rank)
    return np.asarray(smooth, dtype=np.float64)


def ref_smooth(guide, smooth):
    """Centre features: ``guide`` correlated per channel with the smoothing kernel.

    Zero padding, same size; ``smooth=None`` returns the guide unchanged (as float64).
    """
    guide = np.asarray(guide, dtype=np.float64)
    rank = _spatial_rank(guide)
    kernel = smoothing_array(smooth, rank)
    if kernel is None:
        return guide.copy()
    if kernel.ndim != rank:
        raise ValueError(f"smoothing kernel of shape {kernel.shape} for {rank} spatial axes")
    shape = guide.shape[2:]
    radius = tuple((n - 1) // 2 for n in kernel.shape)
    out = np.zeros_like(guide)
    for y in _positions(shape):
        for u in _positions(kernel.shape):
            q = tuple(yy + uu - rr for yy, uu, rr in zip(y, u, radius))
            if _in_range(q, shape):
                _at(out, y)[...] += kernel[u] * _at(guide, q)
    return out


def ref_spatial_window(kernel_size, sigma=None, window="square", dilation=1):
    """Spatial weight ``G``: Gaussian in the tap offset (pixels), optionally cut to a disk.

    The rank is ``len(kernel_size)`` (2 for an int). ``sigma`` and ``dilation`` are scalars or
    one value per axis; ``"disk"`` keeps the taps inside the inscribed ellipse (ellipsoid in
    3-D, the whole segment in 1-D): ``sum (t/radius)**2 <= 1`` over the axes with radius > 0.
    """
    rank = 2 if np.ndim(kernel_size) == 0 else len(kernel_size)
    k = _tuple(kernel_size, rank)
    d = _tuple(dilation, rank)
    sigmas = None if sigma is None else (
        (float(sigma),) * rank if np.ndim(sigma) == 0 else tuple(float(v) for v in sigma))
    if sigmas is not None and len(sigmas) != rank:
        raise ValueError(f"sigma {sigma!r} for {rank} axes")
    if window not in ("square", "disk"):
        raise ValueError(window)
    radius = tuple((n - 1) // 2 for n in k)
    out = np.ones(k)
    for a in _positions(k):
        t = tuple(aa - rr for aa, rr in zip(a, radius))
        if sigmas is not None and len(set(sigmas)) == 1:
            dist2 = sum((tt * dd) ** 2 for tt, dd in zip(t, d))
            out[a] = np.exp(-dist2 / (2.0 * sigmas[0] ** 2))
        elif sigmas is not None:  # per-axis sigma: each axis scaled by its own
            exponent = sum((tt * dd) ** 2 / (2.0 * ss**2) for tt, dd, ss in zip(t, d, sigmas))
            out[a] = np.exp(-exponent)
        if window == "disk":
            # A 1-tap axis has radius 0 and must not exclude anything.
            r2 = sum((tt / rr) ** 2 if rr else 0.0 for tt, rr in zip(t, radius))
            if r2 > 1.0:
                out[a] = 0.0
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
    path; then only the guide's shape matters). The rank ``r`` is ``guide.ndim - 2``. Returns
    ``(K, valid)``, ``K`` of shape ``(N, 1|F, *k, *out)``, ``valid`` ``(N, 1|F, *out)``
    (``Z != 0``).
    """
    guide = np.asarray(guide, dtype=np.float64)
    rank = _spatial_rank(guide)
    n, f = guide.shape[:2]
    shape = guide.shape[2:]
    k = _tuple(kernel_size, rank)
    d = _tuple(dilation, rank)
    if transposed:
        # The guide is at the transposed op's output resolution: stride 1, centred padding.
        s = (1,) * rank
        p = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
    else:
        s = _tuple(stride, rank)
        p = _tuple(padding, rank)
    out_shape = _forward_shape(shape, k, s, p, d)
    centre_features = ref_smooth(guide, smooth)
    g = np.ones(k) if spatial_weight is None else np.asarray(spatial_weight, np.float64)
    if g.shape != k:
        raise ValueError(f"spatial_weight of shape {g.shape} for kernel_size {k}")
    m = None if mask is None else np.asarray(mask, dtype=np.float64)
    if m is not None and m.shape != (n, 1) + shape:
        raise ValueError(f"mask of shape {m.shape} for guide {guide.shape}")
    channels = f if channel_wise else 1

    numerator = np.zeros((n, channels) + k + out_shape)
    z_kernel = np.zeros((n, channels) + out_shape)
    z_mask = np.zeros((n, 1) + out_shape)
    z_mask_kernel = np.zeros((n, channels) + out_shape)
    for i in _positions(out_shape):
        centre = tuple(ii * ss - pp + dd * (kk - 1) // 2
                       for ii, ss, pp, dd, kk in zip(i, s, p, d, k))
        fc = _at(centre_features, centre)
        for a in _positions(k):
            q = _neighbour(i, a, s, p, d)
            if not _in_range(q, shape):
                continue  # K = 0 and the tap is not counted in Z
            kappa = _kappa(family, fc, _at(guide, q), channel_wise, alpha, lambda_, eps,
                           asymmetric)
            kg = kappa * g[a]
            mq = np.ones((n, 1)) if m is None else _at(m, q)
            _at(numerator, a + i)[...] = kg * mq
            _at(z_kernel, i)[...] += kg
            _at(z_mask, i)[...] += mq
            _at(z_mask_kernel, i)[...] += kg * mq

    if normalize is None:
        return numerator, np.ones((n, channels) + out_shape, dtype=bool)
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
    taps = (slice(None), slice(None)) + (None,) * rank  # broadcast Z over the tap axes
    kernel = np.where(valid[taps], numerator / safe_z[taps], 0.0)
    return kernel, valid


def _is_shared(weight, channels):
    """A (1, 1, *k) filter applied to each of ``channels`` > 1 channels separately."""
    return weight.shape[:2] == (1, 1) and channels != 1


def _check_rank(name, array, rank):
    if np.ndim(array) != rank + 2:
        raise ValueError(f"{name} of shape {np.shape(array)} for {rank} spatial axes")


def ref_conv(x, K, weight, bias=None, stride=1, padding=0, dilation=1):
    """``y[n,o,i] = sum_{c,a} W[o,c,a] K[n,(c),a,i] x[n,c,i*s-p+a*d] + b[o]``.

    ``K=None`` means K = 1. ``weight`` is ``(C_out, C, *k)`` or shared ``(1, 1, *k)``.
    """
    x = np.asarray(x, dtype=np.float64)
    rank = _spatial_rank(x)
    n, channels = x.shape[:2]
    shape = x.shape[2:]
    weight = np.asarray(weight, dtype=np.float64)
    _check_rank("weight", weight, rank)
    shared = _is_shared(weight, channels)
    c_out = channels if shared else weight.shape[0]
    k = weight.shape[2:]
    s, p, d = (_tuple(v, rank) for v in (stride, padding, dilation))
    out_shape = _forward_shape(shape, k, s, p, d)
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        assert K.shape[2:] == k + out_shape, (K.shape, k + out_shape)
    y = np.zeros((n, c_out) + out_shape)
    for i in _positions(out_shape):
        for a in _positions(k):
            q = _neighbour(i, a, s, p, d)
            if not _in_range(q, shape):
                continue
            tap = _at(x, q)
            if K is not None:
                tap = _at(K, a + i) * tap  # (N,1) or (N,C) broadcast
            w = weight[(slice(None), slice(None)) + a]
            if shared:  # per channel: no 0 * NaN leaking across channels
                _at(y, i)[...] += w[0, 0] * tap
            else:
                _at(y, i)[...] += tap @ w.T
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[(None, slice(None)) + (None,) * rank]
    return y


def ref_conv_transpose(x, K, weight, bias=None, stride=1, padding=0, dilation=1,
                       output_padding=0):
    """Transposed PAC as ``docs/design.md`` §1.2 defines it: PAC on the zero-inserted input with
    flipped weights.

    ``x`` ``(N, C, *S)``, ``weight`` ``(C, C_out, *k)`` or shared ``(1, 1, *k)``,
    ``K`` ``(N, 1|C, *k, *out)`` at the output resolution (or None for K = 1).

    Derivation (per axis). Insert ``s-1`` zeros between samples, pad ``P = d(k-1) - p`` on each
    side and ``output_padding`` more at the end, then correlate with stride 1, no padding,
    dilation d and weight ``W'[o,c,b] = W[c,o,k-1-b]``. Tap ``b`` of output ``j`` reads the
    zero-inserted image at ``j + b*d``, i.e. ``x[i]`` with ``i*s = j + b*d - P``; with
    ``a = k-1-b`` that is ``i*s = j + p - a*d``, the contract's gather. The zero-inserted
    image has size ``Ho + d(k-1)``, so its index ``j + b*d`` is output position
    ``j - d(k-1)/2 + b*d``: exactly where tap ``b`` of the transposed-mode kernel (stride 1,
    padding ``d(k-1)/2``) looks, so K is used as ``K[..., b, j]`` = ``K[..., k-1-a, j]``.
    """
    x = np.asarray(x, dtype=np.float64)
    rank = _spatial_rank(x)
    n, channels = x.shape[:2]
    shape = x.shape[2:]
    weight = np.asarray(weight, dtype=np.float64)
    _check_rank("weight", weight, rank)
    k = weight.shape[2:]
    s, p, d, op = (_tuple(v, rank) for v in (stride, padding, dilation, output_padding))
    pad = tuple(dd * (kk - 1) - pp for kk, pp, dd in zip(k, p, d))
    zero_shape = tuple((size - 1) * ss + 1 + 2 * pp + oo
                       for size, ss, pp, oo in zip(shape, s, pad, op))
    zero_inserted = np.zeros((n, channels) + zero_shape)
    inserted = tuple(slice(pp, pp + (size - 1) * ss + 1, ss)
                     for size, ss, pp in zip(shape, s, pad))
    _at(zero_inserted, inserted)[...] = x
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * rank
    flipped = np.ascontiguousarray(np.swapaxes(weight, 0, 1)[flip])
    y = ref_conv(zero_inserted, K, flipped, bias, stride=1, padding=0, dilation=d)
    assert y.shape[2:] == tuple(transposed_out_size(*args) for args in zip(shape, k, s, p, d, op))
    return y


def ref_conv_transpose_gather(x, K, weight, bias=None, stride=1, padding=0, dilation=1,
                              output_padding=0):
    """The contract's gather form, literally:
    ``y[n,o,j] = sum_{c,a} W[c,o,a] K[n,(c),k-1-a,j] x[n,c,i]`` over ``i*s = j + p - a*d``.
    """
    x = np.asarray(x, dtype=np.float64)
    rank = _spatial_rank(x)
    n, channels = x.shape[:2]
    shape = x.shape[2:]
    weight = np.asarray(weight, dtype=np.float64)
    _check_rank("weight", weight, rank)
    shared = _is_shared(weight, channels)
    c_out = channels if shared else weight.shape[1]
    k = weight.shape[2:]
    s, p, d, op = (_tuple(v, rank) for v in (stride, padding, dilation, output_padding))
    out_shape = tuple(transposed_out_size(*args) for args in zip(shape, k, s, p, d, op))
    y = np.zeros((n, c_out) + out_shape)
    for j in _positions(out_shape):
        for a in _positions(k):
            t = tuple(jj + pp - aa * dd for jj, pp, aa, dd in zip(j, p, a, d))
            if any(tt % ss for tt, ss in zip(t, s)):
                continue
            i = tuple(tt // ss for tt, ss in zip(t, s))
            if not _in_range(i, shape):
                continue
            tap = _at(x, i)
            if K is not None:
                flipped = tuple(kk - 1 - aa for kk, aa in zip(k, a))
                tap = _at(K, flipped + j) * tap
            w = weight[(slice(None), slice(None)) + a]
            if shared:
                _at(y, j)[...] += w[0, 0] * tap
            else:
                _at(y, j)[...] += tap @ w
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[(None, slice(None)) + (None,) * rank]
    return y


def ref_conv_transpose_scatter(x, weight, bias=None, stride=1, padding=0, dilation=1,
                               output_padding=0):
    """K = 1 transposed convolution as a scatter: ``y[o, i*s - p + a*d] += W[c, o, a] x[c, i]``.

    ``weight`` is ``(C, C_out, *k)`` (full weights only).
    """
    x = np.asarray(x, dtype=np.float64)
    rank = _spatial_rank(x)
    weight = np.asarray(weight, dtype=np.float64)
    _check_rank("weight", weight, rank)
    n, channels = x.shape[:2]
    shape = x.shape[2:]
    c_out = weight.shape[1]
    k = weight.shape[2:]
    s, p, d, op = (_tuple(v, rank) for v in (stride, padding, dilation, output_padding))
    out_shape = tuple(transposed_out_size(*args) for args in zip(shape, k, s, p, d, op))
    y = np.zeros((n, c_out) + out_shape)
    for c in range(channels):
        for o in range(c_out):
            for i in _positions(shape):
                for a in _positions(k):
                    j = _neighbour(i, a, s, p, d)
                    if _in_range(j, out_shape):
                        y[(slice(None), o) + j] += weight[(c, o) + a] * x[(slice(None), c) + i]
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[(None, slice(None)) + (None,) * rank]
    return y


def ref_pool(x, K, kernel_size=None, stride=1, padding=0, dilation=1):
    """``y[n,c,i] = sum_a K[n,(c),a,i] x[n,c,i*s-p+a*d]`` (``K=None``: plain sum pooling)."""
    x = np.asarray(x, dtype=np.float64)
    rank = _spatial_rank(x)
    n, channels = x.shape[:2]
    shape = x.shape[2:]
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        if K.ndim != 2 + 2 * rank:
            raise ValueError(f"K of shape {K.shape} for {rank} spatial axes")
        k = K.shape[2:2 + rank]
    else:
        k = _tuple(kernel_size, rank)
    s, p, d = (_tuple(v, rank) for v in (stride, padding, dilation))
    out_shape = _forward_shape(shape, k, s, p, d)
    if K is not None:
        assert K.shape[2 + rank:] == out_shape, (K.shape, out_shape)
    y = np.zeros((n, channels) + out_shape)
    for i in _positions(out_shape):
        for a in _positions(k):
            q = _neighbour(i, a, s, p, d)
            if not _in_range(q, shape):
                continue
            tap = _at(x, q)
            if K is not None:
                tap = _at(K, a + i) * tap
            _at(y, i)[...] += tap
    return y


def oracle_palette_message(q, features, palette, sigma, cell):
    """The normalized message of a PAC-CRF palette term, from its definition (one image).

    ``q`` ``(L, *S)`` marginals, ``features`` ``(F, *S)`` and ``palette`` ``(P, F)`` in unit
    bandwidth, ``sigma`` the spatial standard deviation and ``cell`` the grid spacing in pixels.
    Returns ``m[l, i] = sum_j K(i, j) q[l, j] / sum_j K(i, j)`` ``(L, *S)`` with

    * ``a_i = argmin_p |f_i - c_p|**2`` (the first on ties);
    * a grid of ``ceil(n / cell)`` cells per axis, pixel coordinate ``y`` in cell ``y // cell``;
    * senders ``j``: the pixels all of whose coordinates are multiples of ``send`` (2 for
      cells of 4 pixels or more, else 1); ``K(i, j) = 0`` for the others;
    * per axis ``G(c, c') = exp(-((c - c') cell)**2 / (2 sigma**2))`` where
      ``|c - c'| cell <= max(cell, 3 sigma)``, else 0;
    * the receiver's corners: per axis ``pos = clip((y + 0.5) / cell - 0.5, 0, cells - 1)``,
      ``lo = floor(pos)``, ``hi = min(lo + 1, cells - 1)``, ``t = pos - lo``, weight ``1 - t``
      for ``lo`` and ``t`` for ``hi``, multiplied over the axes;
    * ``S[p, p'] = exp(-1/2 |c_p - c_p'|**2)``;
    * ``K(i, j) = S[a_i, a_j] sum_corners b_ik prod_axes G(corner_k, cell of j)``.

    Loops over receivers and corners; the sum over senders is vectorized.
    """
    q = np.asarray(q, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    palette = np.asarray(palette, dtype=np.float64)
    shape = q.shape[1:]
    rank = len(shape)
    assert features.shape[1:] == shape and palette.shape[1] == features.shape[0]

    owner = np.zeros(shape, dtype=np.int64)
    for i in _positions(shape):
        f = features[(slice(None),) + i]
        distances = [float(np.sum((f - c) ** 2)) for c in palette]
        owner[i] = int(np.argmin(distances))  # the first minimum

    mix = np.zeros((len(palette), len(palette)))
    for p in range(len(palette)):
        for r in range(len(palette)):
            mix[p, r] = np.exp(-0.5 * float(np.sum((palette[p] - palette[r]) ** 2)))

    cells = tuple(-(-n // cell) for n in shape)
    send = 2 if cell >= 4 else 1
    reach = max(cell, 3 * sigma)

    def gaussian(c, c_other):
        """Per axis, between cell indices (arrays)."""
        offset = (np.asarray(c) - np.asarray(c_other)) * cell
        return np.where(np.abs(offset) <= reach, np.exp(-offset**2 / (2 * sigma**2)), 0.0)

    senders = [j for j in _positions(shape) if all(jj % send == 0 for jj in j)]
    sender_cells = np.array([[jj // cell for jj in j] for j in senders]).reshape(-1, rank)
    sender_owner = np.array([owner[j] for j in senders])
    sender_q = np.stack([q[(slice(None),) + j] for j in senders], axis=1)  # (L, senders)

    def axis_corners(y, count):
        position = min(max((y + 0.5) / cell - 0.5, 0.0), count - 1)
        lo = int(np.floor(position))
        hi = min(lo + 1, count - 1)
        t = position - lo
        return ((lo, 1.0 - t), (hi, t))

    out = np.zeros_like(q)
    for i in _positions(shape):
        per_axis = [axis_corners(y, count) for y, count in zip(i, cells)]
        spatial = np.zeros(len(senders))
        for corner in itertools.product(*per_axis):  # 2**rank corners
            weight = 1.0
            blur = np.ones(len(senders))
            for axis, (c, share) in enumerate(corner):
                weight *= share
                blur = blur * gaussian(c, sender_cells[:, axis])
            spatial += weight * blur
        kernel = mix[owner[i], sender_owner] * spatial  # K(i, j) over the senders
        out[(slice(None),) + i] = (sender_q @ kernel) / kernel.sum()
    return out
