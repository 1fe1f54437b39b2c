"""Numba kernels of PAC-CRF mean-field inference on the CPU.

A mean-field step is one message pass per pairwise term followed by a softmax over the labels.
The generic fused ``pac_pool`` computes the same messages, but it evaluates the exponential with
Numba's scalar ``np.exp`` and multiplies through runtime strides, which keeps the label loop from
vectorizing; the CRF is the one place where the same kernel meets many channels (labels) at
stride 1, so it gets its own kernels:

* one output row per task (``prange``); the row's adaptive kernel ``(taps, W)`` is computed once
  into a buffer that stays in L1/L2 and consumed by every label at once (nothing per tap is kept
  beyond the row, so memory stays O(labels x pixels));
* every inner loop runs over a contiguous range of columns with a constant offset, so LLVM
  vectorizes it;
* in float32 the exponential is a branch-free polynomial that vectorizes (Numba's ``np.exp``
  runs scalar without Intel SVML); float64 keeps ``np.exp``.

The message of one term is ``sum_{a != centre} G[a] exp(-1/2 |f_i - f_(i+a*d)|^2) Q[l, i+a*d]``
over in-range neighbours: exactly ``pac_pool(Q, k, guide=f, dilation=d, padding=d*(k-1)/2,
spatial_weight=G)`` with ``G``'s centre set to 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# Only contraction of multiply-add into FMA; no assumption about NaN or Inf.
_FASTMATH = {"contract"}

_LOG2E = 1.4426950408889634
# ln 2 = _LN2_HIGH + _LN2_LOW, the high part with few enough mantissa bits that k * _LN2_HIGH is
# exact in float32 for |k| < 2**8.
_LN2_HIGH = 0.693359375
_LN2_LOW = -2.12194440e-4
# Below this, exp underflows float32's normal range (2**-126); the result is flushed to 0.
_EXP_LOWER_32 = -87.0


def exp_nonpositive(x):
    """``exp(x)`` for ``x <= 0``; the compiled version is chosen per dtype."""
    return np.exp(x)


@overload(exp_nonpositive, inline="always")
def _exp_nonpositive_overload(x):
    if x != types.float32:
        # float64 keeps libm's accuracy; it is not the benchmarked path.
        return lambda x: np.exp(x)

    f32, i32 = np.float32, np.int32
    log2e, ln2_high, ln2_low = f32(_LOG2E), f32(_LN2_HIGH), f32(_LN2_LOW)
    lower, half, zero = f32(_EXP_LOWER_32), f32(0.5), f32(0.0)
    # Taylor coefficients 1/n!, n = 6..0: on |r| <= ln(2)/2 the truncation error is below
    # r**7/7! < 1.2e-7 relative.
    c6, c5, c4 = f32(1 / 720), f32(1 / 120), f32(1 / 24)
    c3, c2, c1, c0 = f32(1 / 6), f32(0.5), f32(1.0), f32(1.0)
    bias, shift = i32(127), i32(23)

    def impl(x):
        # exp(x) = 2**k * exp(r) with k = round(x / ln 2); 2**k is assembled from its exponent
        # bits, which vectorizes where ldexp would not.
        clamped = x if x > lower else lower
        k = np.floor(clamped * log2e + half)
        r = (clamped - k * ln2_high) - k * ln2_low
        p = ((((((c6 * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r) + c0
        scale = i32((i32(k) + bias) << shift).view(np.float32)
        return p * scale if x > lower else zero

    return impl


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def add_messages(q, guide, spatial, dilation_y, dilation_x, weight, out):
    """``out[n,l] += weight * message(q[n,l])`` for one pairwise term (see the module notes).

    ``q`` ``(N, L, H, W)``, ``guide`` ``(N, F, H, W)`` (F may be 0: the kernel is ``spatial``
    alone), ``spatial`` ``(kh, kw)`` with its centre already 0; taps with ``spatial == 0`` are
    skipped.
    """
    batch, labels, height, width = q.shape
    features = guide.shape[1]
    kh, kw = spatial.shape
    taps = kh * kw
    radius_y, radius_x = (kh - 1) // 2, (kw - 1) // 2
    minus_half = q.dtype.type(-0.5)
    scale = q.dtype.type(weight)
    for job in prange(batch * height):
        n = job // height
        y = job % height
        kernel = np.empty((taps, width), q.dtype)
        acc = np.empty(width, q.dtype)
        tap_row = np.empty(taps, np.int64)
        tap_offset = np.empty(taps, np.int64)
        active = 0
        for ty in range(kh):
            qy = y + (ty - radius_y) * dilation_y
            if qy < 0 or qy >= height:
                continue
            for tx in range(kw):
                g = spatial[ty, tx]
                if g == 0.0:
                    continue
                offset = (tx - radius_x) * dilation_x
                lo = max(0, -offset)
                hi = min(width, width - offset)
                if lo >= hi:
                    continue
                # Slices keep every index non-negative, which is what lets LLVM vectorize.
                span = hi - lo
                row = kernel[active]
                row[:lo] = 0.0
                row[hi:] = 0.0
                distance = acc[:span]
                distance[:] = 0.0
                for f in range(features):
                    centre = guide[n, f, y, lo:hi]
                    neighbour = guide[n, f, qy, lo + offset:hi + offset]
                    for x in range(span):
                        diff = centre[x] - neighbour[x]
                        distance[x] += diff * diff
                log_g = np.log(g)
                values = row[lo:hi]
                for x in range(span):
                    values[x] = exp_nonpositive(log_g + minus_half * distance[x])
                tap_row[active] = qy
                tap_offset[active] = offset
                active += 1
        for label in range(labels):
            acc[:] = 0.0
            for t in range(active):
                offset = tap_offset[t]
                lo = max(0, -offset)
                hi = min(width, width - offset)
                span = hi - lo
                weights = kernel[t, lo:hi]
                source = q[n, label, tap_row[t], lo + offset:hi + offset]
                target = acc[lo:hi]
                for x in range(span):
                    target[x] += weights[x] * source[x]
            result = out[n, label, y]
            for x in range(width):
                result[x] += scale * acc[x]


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def softmax_of_sum(first, second, sign, out):
    """``out = softmax(first + sign * second)`` over axis 1 of ``(N, L, H, W)`` arrays."""
    batch, labels, height, width = first.shape
    sign = first.dtype.type(sign)
    one = first.dtype.type(1.0)
    for job in prange(batch * height):
        n = job // height
        y = job % height
        logits = np.empty((labels, width), first.dtype)
        peak = np.full(width, -np.inf, first.dtype)
        total = np.zeros(width, first.dtype)
        for label in range(labels):
            a = first[n, label, y]
            b = second[n, label, y]
            row = logits[label]
            for x in range(width):
                value = a[x] + sign * b[x]
                row[x] = value
                peak[x] = max(peak[x], value)
        for label in range(labels):
            row = logits[label]
            for x in range(width):
                value = exp_nonpositive(row[x] - peak[x])
                row[x] = value
                total[x] += value
        for x in range(width):
            total[x] = one / total[x]
        for label in range(labels):
            row = logits[label]
            result = out[n, label, y]
            for x in range(width):
                result[x] = row[x] * total[x]
