"""Numba kernels for the bilateral and joint (cross) bilateral filter.

The generic fused ``pac_pool`` can express a bilateral filter; this dedicated path is the one users
time against OpenCV, so it is organised for speed:

* The weight of a pair of pixels is symmetric, ``w(p, q) = G(p - q) R(|g_p - g_q|)``, so each
  in-image pair is computed once and added to both ends: half the exponentials and distances.
  Rows are processed top to bottom inside a band, the lower end of a pair being accumulated into a
  ring of ``radius + 1`` row accumulators; bands run in parallel and recompute the pairs that cross
  their upper edge (``radius`` rows of halo).
* Taps whose neighbour lies outside the image are one-sided: the neighbour index is mapped by the
  border mode (no padded copy of the image is made) and only the centre pixel accumulates.
* Channels are passed as tuples of 2-D planes, so their count is a compile-time constant, the
  channel loops unroll, and the loop over columns is the innermost loop and vectorizes. Column
  indices are unsigned so that Numba emits no negative-index wraparound selects.
* The spatial and the range weight share one exponential, ``exp(log G[tap] - c * d2)``, evaluated
  by a branch-free polynomial (Numba's ``np.exp`` runs scalar without Intel SVML).

NaN handling: no ``nnan``/``ninf`` fast-math flags are used and every select is written so that a
NaN stays NaN, so a NaN in the image or guide propagates to every output whose window holds it.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# Border modes, as integer codes shared with the front end.
MODE_REFLECT = 0  # d c b a | a b c d | d c b a   (scipy "reflect")
MODE_MIRROR = 1  # d c b | a b c d | c b a       (scipy "mirror", OpenCV BORDER_DEFAULT)
MODE_NEAREST = 2  # a a a | a b c d | d d d
MODE_WRAP = 3  # b c d | a b c d | a b c
MODE_CONSTANT = 4  # k k k | a b c d | k k k
MODE_EXCLUDE = 5  # taps outside the image are dropped and the weights renormalized

MODE_CODES = {
    "reflect": MODE_REFLECT,
    "mirror": MODE_MIRROR,
    "nearest": MODE_NEAREST,
    "wrap": MODE_WRAP,
    "constant": MODE_CONSTANT,
    "exclude": MODE_EXCLUDE,
}

# Most guide channels the unrolled kernel is compiled for; the value channels are processed in
# groups of at most MAX_VALUE_PLANES by the caller.
MAX_GUIDE_PLANES = 8
MAX_VALUE_PLANES = 4

# Only the contraction of multiply-add into FMA: no assumptions about NaN or Inf.
_FASTMATH = {"contract"}


@intrinsic
def _bits_as_float(typingctx, bits):
    """Reinterpret the bits of an int32 (int64) as a float32 (float64)."""
    if bits == types.int32:
        result, llvm_type = types.float32, ir.FloatType()
    elif bits == types.int64:
        result, llvm_type = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return result(bits), codegen


def _taylor(dtype, degree):
    factorials = np.cumprod(np.arange(1, degree + 1, dtype=np.float64))
    return tuple(dtype(c) for c in (1.0 / factorials[::-1]).tolist() + [1.0])


def exp_nonpositive(x):
    """``exp(x)`` for ``x <= 0`` (NaN stays NaN), flushed to 0 below about 1e-30 (float32) or
    1e-260 (float64); compiled per dtype by the overload below."""
    return np.exp(x)


@overload(exp_nonpositive)
def _exp_nonpositive_overload(x):
    # exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln(2)/2, exp(r) by its Taylor polynomial
    # (degree 6 in float32: relative error < 3e-7; degree 12 in float64: < 1e-15). 2^k is built
    # directly in the exponent bits. Arguments below `lower` give exactly 0; `lower` is high enough
    # that no intermediate and no weight times an O(1) value is subnormal (subnormal arithmetic
    # costs ~100 cycles per operation on x86).
    if x == types.float32:
        dtype, int_type, mantissa_bits, bias, lower = np.float32, np.int32, 23, 127, -69.0
        ln2_hi, ln2_lo, coeffs = 0.693145751953125, 1.428606765330187e-06, _taylor(np.float32, 6)
    elif x == types.float64:
        dtype, int_type, mantissa_bits, bias, lower = np.float64, np.int64, 52, 1023, -600.0
        ln2_hi, ln2_lo = 0.6931471803691238, 1.9082149292705877e-10
        coeffs = _taylor(np.float64, 12)
    else:
        return None
    log2e, ln2_hi, ln2_lo = dtype(1.4426950408889634), dtype(ln2_hi), dtype(ln2_lo)
    lower, half, zero = dtype(lower), dtype(0.5), dtype(0.0)
    bias, exponent_unit = dtype(bias), dtype(2.0**mantissa_bits)
    n_coeffs = len(coeffs)

    def impl(x):
        # "not (x < lower)" rather than "x >= lower": a NaN must keep its value.
        clamped = x if not (x < lower) else lower
        k = np.floor(clamped * log2e + half)
        r = (clamped - k * ln2_hi) - k * ln2_lo
        p = coeffs[0]
        for i in range(1, n_coeffs):
            p = p * r + coeffs[i]
        # Float-to-int conversion of NaN is undefined: give it any finite k, p carries the NaN.
        k = k if k == k else zero
        scale = _bits_as_float(int_type((k + bias) * exponent_unit))
        value = p * scale
        return zero if x < lower else value

    return impl


@njit(cache=True, inline="always")
def _map_index(i, n, mode):
    """Map a possibly out-of-range index onto [0, n); -1 for a constant or excluded tap."""
    if 0 <= i < n:
        return i
    if mode == MODE_MIRROR:
        if n == 1:
            return 0
        period = 2 * n - 2
        i = i % period
        return i if i < n else period - i
    if mode == MODE_REFLECT:
        period = 2 * n
        i = i % period
        return i if i < n else period - 1 - i
    if mode == MODE_NEAREST:
        return 0 if i < 0 else n - 1
    if mode == MODE_WRAP:
        return i % n
    return -1


@njit(cache=True, fastmath=_FASTMATH)
def _run(values, guide, acc, slot, y, y_neighbour, x0, dx, n, log_weight, range_coef, l1,
         accumulate, weights):
    """Weights of pixels (y, x0 .. x0+n-1) with neighbours (y_neighbour, x + dx), all inside the
    image; stored in ``weights[:n]`` and, if ``accumulate``, added to row ``slot`` of ``acc``."""
    zero = weights.dtype.type(0.0)
    for i in range(n):
        xs = np.uintp(x0 + i)
        xn = np.uintp(x0 + dx + i)
        d = zero
        for c in range(len(guide)):
            diff = guide[c][y_neighbour, xn] - guide[c][y, xs]
            d += abs(diff) if l1 else diff * diff
        if l1:
            d = d * d
        w = exp_nonpositive(log_weight - range_coef * d)
        weights[i] = w
        if accumulate:
            acc[slot, 0, xs] += w
            for c in range(len(values)):
                acc[slot, 1 + c, xs] += w * values[c][y_neighbour, xn]


@njit(cache=True, fastmath=_FASTMATH)
def _scatter(values, acc, slot, y, x0, dx, n, weights):
    """The other end of the pairs of ``_run``: pixel (y, x0 + i) into column x0 + dx + i of row
    ``slot`` of ``acc``."""
    for i in range(n):
        xs = np.uintp(x0 + i)
        xt = np.uintp(x0 + dx + i)
        w = weights[i]
        acc[slot, 0, xt] += w
        for c in range(len(values)):
            acc[slot, 1 + c, xt] += w * values[c][y, xs]


@njit(cache=True, fastmath=_FASTMATH)
def _run_constant(values, guide, acc, slot, y, x0, n, log_weight, range_coef, l1, cval):
    """Pixels (y, x0 .. x0+n-1) whose neighbour is outside the image, mode "constant"."""
    zero = acc.dtype.type(0.0)
    for i in range(n):
        xs = np.uintp(x0 + i)
        d = zero
        for c in range(len(guide)):
            diff = cval - guide[c][y, xs]
            d += abs(diff) if l1 else diff * diff
        if l1:
            d = d * d
        w = exp_nonpositive(log_weight - range_coef * d)
        acc[slot, 0, xs] += w
        for c in range(len(values)):
            acc[slot, 1 + c, xs] += w * cval


@njit(cache=True, fastmath=_FASTMATH)
def _one_sided_row(values, guide, acc, slot, y, dy, dx, log_weight, range_coef, l1, mode, cval,
                   weights):
    """Every pixel of row y whose neighbour (y + dy, x + dx) lies outside the image."""
    height, width = values[0].shape
    y_neighbour = _map_index(y + dy, height, mode)
    row_outside = y_neighbour != y + dy
    if row_outside and y_neighbour < 0:
        if mode == MODE_CONSTANT:
            _run_constant(values, guide, acc, slot, y, 0, width, log_weight, range_coef, l1,
                          cval)
        return
    x0 = min(max(0, -dx), width)
    x1 = max(min(width, width - dx), x0)
    if row_outside:
        _run(values, guide, acc, slot, y, y_neighbour, x0, dx, x1 - x0, log_weight,
             range_coef, l1, True, weights)
    # Columns whose neighbour needs mapping: at most |dx| on each side, one at a time.
    for run_start, run_stop in ((0, x0), (x1, width)):
        for x in range(run_start, run_stop):
            x_neighbour = _map_index(x + dx, width, mode)
            if x_neighbour >= 0:
                _run(values, guide, acc, slot, y, y_neighbour, x, x_neighbour - x, 1,
                     log_weight, range_coef, l1, True, weights)
            elif mode == MODE_CONSTANT:
                _run_constant(values, guide, acc, slot, y, x, 1, log_weight, range_coef, l1,
                              cval)


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def bilateral_planes(values, guide, out, pair_dy, pair_dx, pair_log_weight, side_dy, side_dx,
                     side_log_weight, params, l1, mode, n_bands):
    """Bilateral filter of one image given as planes.

    values: tuple of C (H, W) C-contiguous planes; guide: tuple of G (H, W) C-contiguous planes of
    the same dtype (may be ``values`` itself); out: tuple of C (H, W) planes, any strides.
    pair_*: the taps (dy, dx) with dy > 0, or dy == 0 and dx > 0, and their log spatial weights
    (finite, <= 0); side_*: all taps but the centre. The centre tap has weight 1.
    params: [range_coef, cval] in the planes' dtype; the range weight is exp(-range_coef * d2).
    l1: d2 is (sum of |differences| over the guide channels)^2 instead of their sum of squares.
    mode: a MODE_* code. n_bands: number of row bands processed in parallel.
    """
    height, width = values[0].shape
    n_values = len(values)
    range_coef = params[0]
    cval = params[1]
    radius_y = 0
    for t in range(pair_dy.shape[0]):
        radius_y = max(radius_y, pair_dy[t])
    n_slots = radius_y + 1
    band_height = (height + n_bands - 1) // n_bands
    for band in prange(n_bands):
        b0 = band * band_height
        b1 = min(height, b0 + band_height)
        acc = np.zeros((n_slots, n_values + 1, width), dtype=values[0].dtype)
        weights = np.empty(width, dtype=values[0].dtype)
        for y in range(max(0, b0 - radius_y), b1):
            slot = y % n_slots
            in_band = y >= b0
            for t in range(pair_dy.shape[0]):
                dy = pair_dy[t]
                dx = pair_dx[t]
                y_target = y + dy
                to_target = b0 <= y_target < b1
                if y_target >= height or not (in_band or to_target):
                    continue
                x0 = max(0, -dx)
                n = min(width, width - dx) - x0
                if n <= 0:
                    continue
                _run(values, guide, acc, slot, y, y_target, x0, dx, n, pair_log_weight[t],
                     range_coef, l1, in_band, weights)
                if to_target:
                    _scatter(values, acc, y_target % n_slots, y, x0, dx, n, weights)
            if not in_band:
                continue
            for t in range(side_dy.shape[0]):
                _one_sided_row(values, guide, acc, slot, y, side_dy[t], side_dx[t],
                               side_log_weight[t], range_coef, l1, mode, cval, weights)
            for x in range(width):
                # The centre tap: weight exp(0) = 1, or NaN when the guide is not finite there.
                w = acc.dtype.type(1.0)
                for c in range(len(guide)):
                    w += 0 * guide[c][y, x]
                inverse = 1 / (acc[slot, 0, x] + w)
                for c in range(n_values):
                    out[c][y, x] = (acc[slot, 1 + c, x] + w * values[c][y, x]) * inverse
            acc[slot] = 0
