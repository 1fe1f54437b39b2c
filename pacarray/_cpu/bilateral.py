"""Numba kernels for the bilateral and joint (cross) bilateral filter.

The generic fused ``pac_pool`` can express a bilateral filter; this dedicated path is the one users
time against OpenCV, so it is organised for speed:

* The weight of a pair of pixels is symmetric, ``w(p, q) = G(p - q) R(|g_p - g_q|)``, so each
  in-image pair is computed once and added to both ends: half the exponentials and distances.
  Rows are processed top to bottom inside a band, the lower end of a pair being accumulated into a
  ring of ``radius + 1`` row accumulators; bands run in parallel and recompute the pairs that cross
  their upper edge (``radius`` rows of halo).
* Each band copies its rows into a small planar buffer padded by ``radius`` rows and columns
  filled by the border mode: the input may have any layout (channels last, say), no padded or
  planar copy of the whole image is made, and every loop over columns is a contiguous run.
  Taps whose neighbour lies outside the image are one-sided: only the centre pixel accumulates.
* Channels come as tuples of 2-D planes, so their count is a compile-time constant, the channel
  loops unroll, and the loop over columns is the innermost loop and vectorizes. Column indices
  are unsigned so that Numba emits no negative-index wraparound selects.
* The spatial and the range weight share one exponential, ``exp(log G[tap] - c * d2)``, evaluated
  by the branch-free polynomial of :mod:`pacarray._cpu._exp` (Numba's ``np.exp`` runs scalar
  without Intel SVML); it is exactly 0 below -69 (float32) or -600 (float64), the thresholds
  below which the front end drops spatial taps.

NaN handling: no ``nnan``/``ninf`` fast-math flags are used and every select is written so that a
NaN stays NaN, so a NaN in the image or guide propagates to every output whose window holds it.
"""

import numpy as np
from numba import njit, prange

from ._exp import exp_nonpositive

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
def _run(value_planes, guide_planes, values, guide, acc, slot, row, row_neighbour, x0, dx, n,
         pad, acc_pad, log_weight, range_coef, l1, accumulate, weights):
    """Weights of pixels (row, x0 .. x0+n-1) with their neighbours (row_neighbour, x + dx), in
    buffer rows and image columns (buffer column = image column + pad, accumulator column =
    image column + acc_pad); stored in ``weights[:n]`` and, if ``accumulate``, added to
    ``acc[slot]``. The plane tuples only carry the channel counts as compile-time constants."""
    zero = weights.dtype.type(0.0)
    for i in range(n):
        xs = np.uintp(x0 + acc_pad + i)
        bs = np.uintp(x0 + pad + i)
        bn = np.uintp(x0 + pad + dx + i)
        d = zero
        for c in range(len(guide_planes)):
            diff = guide[c, row_neighbour, bn] - guide[c, row, bs]
            d += abs(diff) if l1 else diff * diff
        if l1:
            d = d * d
        w = exp_nonpositive(log_weight - range_coef * d)
        weights[i] = w
        if accumulate:
            acc[slot, 0, xs] += w
            for c in range(len(value_planes)):
                acc[slot, 1 + c, xs] += w * values[c, row_neighbour, bn]


@njit(cache=True, fastmath=_FASTMATH)
def _scatter(value_planes, values, acc, slot, row, x0, dx, n, pad, acc_pad, weights):
    """The other end of the pairs of ``_run``: pixel (row, x0 + i) into image column
    x0 + dx + i of ``acc[slot]``."""
    for i in range(n):
        bs = np.uintp(x0 + pad + i)
        xt = np.uintp(x0 + dx + acc_pad + i)
        w = weights[i]
        acc[slot, 0, xt] += w
        for c in range(len(value_planes)):
            acc[slot, 1 + c, xt] += w * values[c, row, bs]


@njit(cache=True)
def _fill_slice(planes, buffer, row0, rows, z, top, pad_x, mode, cval):
    """Buffer (c, row0 + j, pad_x + x) <- image (c, z, top + j, x) for j < rows; slices, rows and
    columns outside the image mapped by the border mode ("constant": cval; "exclude": never
    read, left as cval)."""
    depth, height, width = planes[0].shape
    z_image = _map_index(z, depth, mode)
    for j in range(rows):
        y = _map_index(top + j, height, mode) if z_image >= 0 else -1
        for c in range(len(planes)):
            if y < 0:
                buffer[c, row0 + j, :] = cval
                continue
            buffer[c, row0 + j, pad_x:pad_x + width] = planes[c][z_image, y, :]
            for b in range(pad_x):
                for x_buffer, x in ((b, b - pad_x), (pad_x + width + b, width + b)):
                    x_image = _map_index(x, width, mode)
                    buffer[c, row0 + j, x_buffer] = (
                        planes[c][z_image, y, x_image] if x_image >= 0 else cval)


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def bilateral_planes(value_planes, guide_planes, same_guide, out, channels_last, out_offset,
                     pair_dz, pair_dy, pair_dx, pair_log_weight, side_dz, side_dy, side_dx,
                     side_log_weight, params, l1, mode, band_size):
    """Bilateral filter of one volume given as planes (an image is a volume of depth 1).

    value_planes: tuple of C (D, H, W) planes; guide_planes: tuple of G (D, H, W) planes of the
    same dtype; any strides. same_guide: the guide is ``value_planes`` (then read once).
    out: (D, H, W, C_out) if ``channels_last`` else (C_out, D, H, W); value channel c goes to
    output channel out_offset + c. pair_*: the taps (dz, dy, dx) after the centre in C order
    (dz > 0, or dz == 0 and dy > 0, or dz == dy == 0 and dx > 0) and their log spatial weights
    (finite, <= 0); side_*: all taps but the centre. The centre tap has weight 1.
    params: [range_coef, cval] in the planes' dtype; the range weight is
    exp(-range_coef * d2). l1: d2 is (sum over guide channels of |differences|)^2 instead of
    the sum of squares. mode: a MODE_* code. band_size: rows (D == 1) or slices (D > 1) per
    parallel task.

    A row is the run of W voxels at (z, y). Rows are processed in C order inside a band; the
    lower end of a pair is accumulated into a ring of row accumulators, indexed by the row's
    rank in that order, and the buffer holds a ring of 2 * pad_z + 1 padded slices, so the
    workspace per task is O(pad_z * H * W), whatever the depth. For D == 1 this is the 2-D
    filter row for row (same arithmetic in the same order).
    """
    depth, height, width = value_planes[0].shape
    n_values = len(value_planes)
    dtype = value_planes[0].dtype
    range_coef = params[0]
    cval = params[1]
    pad_z = 0
    pad_y = 0
    pad_x = 0
    for t in range(side_dy.shape[0]):
        pad_z = max(pad_z, abs(side_dz[t]))
        pad_y = max(pad_y, abs(side_dy[t]))
        pad_x = max(pad_x, abs(side_dx[t]))
    # An image is cut into bands of rows, a volume into slabs of whole slices.
    by_slices = depth > 1
    extent = depth if by_slices else height
    n_bands = (extent + band_size - 1) // band_size
    n_zslots = 2 * pad_z + 1
    # Volumes run the pairs across the left and right padding too (their far end there is
    # dropped): no one-sided runs of a few voxels per tap and row at the x edges, whose calls
    # would cost more than the row's work in 3-D (hundreds of taps, short rows). Images keep the
    # one-sided runs (the summation order of the 2-D filter is part of its results).
    extend = by_slices and mode != MODE_EXCLUDE
    acc_pad = pad_x if extend else 0
    for band in prange(n_bands):
        b0 = band * band_size
        b1 = min(extent, b0 + band_size)
        z0, z1, y0, y1 = (b0, b1, 0, height) if by_slices else (0, 1, b0, b1)
        top = y0 - pad_y
        rows = y1 - y0 + 2 * pad_y
        z_start = max(0, z0 - pad_z)
        y_start = max(0, top)
        per_slice = y1 - y_start
        n_slots = pad_z * per_slice + pad_y + 1
        shape = (n_values, n_zslots * rows, width + 2 * pad_x)
        values = np.empty(shape, dtype=dtype)
        if same_guide:
            guide = values
        else:
            guide = np.empty((len(guide_planes),) + shape[1:], dtype=dtype)
        for s in range(z_start - pad_z, z_start + pad_z):
            row0 = ((s - z_start + pad_z) % n_zslots) * rows
            _fill_slice(value_planes, values, row0, rows, s, top, pad_x, mode, cval)
            if not same_guide:
                _fill_slice(guide_planes, guide, row0, rows, s, top, pad_x, mode, cval)
        acc = np.zeros((n_slots, n_values + 1, width + 2 * acc_pad), dtype=dtype)
        weights = np.empty(width, dtype=dtype)
        for z in range(z_start, z1):
            s = z + pad_z
            row0 = ((s - z_start + pad_z) % n_zslots) * rows
            _fill_slice(value_planes, values, row0, rows, s, top, pad_x, mode, cval)
            if not same_guide:
                _fill_slice(guide_planes, guide, row0, rows, s, top, pad_x, mode, cval)
            slice_row = ((z - z_start + pad_z) % n_zslots) * rows - top
            for y in range(y_start, y1):
                row = slice_row + y
                rank = (z - z_start) * per_slice + y - y_start
                slot = rank % n_slots
                in_band = z >= z0 and y >= y0
                # Pairs of voxels inside the volume, each computed once for both ends.
                for t in range(pair_dy.shape[0]):
                    dz = pair_dz[t]
                    dy = pair_dy[t]
                    dx = pair_dx[t]
                    z_target = z + dz
                    y_target = y + dy
                    if z_target >= depth or not 0 <= y_target < height:
                        continue
                    to_target = z0 <= z_target < z1 and y0 <= y_target < y1
                    if not (in_band or to_target):
                        continue
                    if extend:
                        x0 = max(-pad_x, -pad_x - dx)
                        n = min(width + pad_x, width + pad_x - dx) - x0
                    else:
                        x0 = max(0, -dx)
                        n = min(width, width - dx) - x0
                    if n <= 0:
                        continue
                    row_target = ((z_target - z_start + pad_z) % n_zslots) * rows + y_target - top
                    _run(value_planes, guide_planes, values, guide, acc, slot, row, row_target,
                         x0, dx, n, pad_x, acc_pad, pair_log_weight[t], range_coef, l1, in_band,
                         weights)
                    if to_target:
                        _scatter(value_planes, values, acc,
                                 (rank + dz * per_slice + dy) % n_slots, row, x0, dx, n, pad_x,
                                 acc_pad, weights)
                if not in_band:
                    continue
                # One-sided taps, whose neighbour is outside the volume (read from the padding).
                if extend:
                    # Only the taps whose neighbour row is outside: full rows.
                    if pad_z <= z < depth - pad_z and pad_y <= y < height - pad_y:
                        pass
                    else:
                        for t in range(side_dy.shape[0]):
                            z_neighbour = z + side_dz[t]
                            y_neighbour = y + side_dy[t]
                            if 0 <= z_neighbour < depth and 0 <= y_neighbour < height:
                                continue
                            row_neighbour = (((z_neighbour - z_start + pad_z) % n_zslots) * rows
                                             + y_neighbour - top)
                            _run(value_planes, guide_planes, values, guide, acc, slot, row,
                                 row_neighbour, 0, side_dx[t], width, pad_x, acc_pad,
                                 side_log_weight[t], range_coef, l1, True, weights)
                elif mode != MODE_EXCLUDE:
                    for t in range(side_dy.shape[0]):
                        dz = side_dz[t]
                        dy = side_dy[t]
                        dx = side_dx[t]
                        log_weight = side_log_weight[t]
                        z_neighbour = z + dz
                        y_neighbour = y + dy
                        row_neighbour = (((z_neighbour - z_start + pad_z) % n_zslots) * rows
                                         + y_neighbour - top)
                        x0 = min(max(0, -dx), width)
                        x1 = max(min(width, width - dx), x0)
                        if not (0 <= z_neighbour < depth and 0 <= y_neighbour < height):
                            _run(value_planes, guide_planes, values, guide, acc, slot, row,
                                 row_neighbour, 0, dx, width, pad_x, 0, log_weight, range_coef,
                                 l1, True, weights)
                            continue
                        _run(value_planes, guide_planes, values, guide, acc, slot, row,
                             row_neighbour, 0, dx, x0, pad_x, 0, log_weight, range_coef, l1,
                             True, weights)
                        _run(value_planes, guide_planes, values, guide, acc, slot, row,
                             row_neighbour, x1, dx, width - x1, pad_x, 0, log_weight,
                             range_coef, l1, True, weights)
                for x in range(width):
                    # The centre tap: weight exp(0) = 1, or NaN where the guide is not finite.
                    w = dtype.type(1.0)
                    for c in range(len(guide_planes)):
                        w += 0 * guide[c, row, pad_x + x]
                    inverse = 1 / (acc[slot, 0, acc_pad + x] + w)
                    for c in range(n_values):
                        value = ((acc[slot, 1 + c, acc_pad + x] + w * values[c, row, pad_x + x])
                                 * inverse)
                        if channels_last:
                            out[z, y, x, out_offset + c] = value
                        else:
                            out[out_offset + c, z, y, x] = value
                acc[slot] = 0


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def joint_upsample_rows(low_expanded, guide_expanded, guide_planes, out, channels_last,
                        out_offset, nearest_row, factor_x, pad_x, row_log_weight,
                        column_log_weight, column_start, column_stop, params):
    """Joint bilateral upsampling, one output row per task.

    low_expanded: tuple of C (h, W + 2 * pad_x) planes, column pad_x + u holds sample
    (2u + 1) // (2 factor_x) of each low-resolution row (the sample nearest to output column u),
    written to output channel out_offset + c; guide_expanded:
    (G, h, same) the guide read at the samples' positions, expanded alike; guide_planes: tuple of
    G (H, W) planes of the high-resolution guide (any strides). out: (H, W, C) if
    ``channels_last`` else (C, H, W). Tap t (of T = 2r + 1) reads sample row
    nearest_row[y] + t - r with log spatial weight row_log_weight[t, y] (-inf: no such sample),
    and sample column nearest(x) + t - r with column_log_weight[t, x], for the output columns
    column_start[t] <= x < column_stop[t] where that sample exists. params: [range_coef].
    Where every weight of a pixel underflows, the weights are recomputed relative to the largest
    one, so that the result is the limit of the exact formula instead of 0/0.
    """
    n_values = len(low_expanded)
    height, width = guide_planes[0].shape
    n_taps = row_log_weight.shape[0]
    half = (n_taps - 1) // 2
    range_coef = params[0]
    dtype = guide_expanded.dtype
    zero = dtype.type(0.0)
    for y in prange(height):
        acc = np.zeros((n_values + 1, width), dtype=dtype)
        centre = np.empty((len(guide_planes), width), dtype=dtype)
        for c in range(len(guide_planes)):
            centre[c, :] = guide_planes[c][y, :]
        for ti in range(n_taps):
            log_weight_y = row_log_weight[ti, y]
            if log_weight_y == -np.inf:
                continue
            i = nearest_row[y] + ti - half
            for tj in range(n_taps):
                x0 = column_start[tj]
                offset = pad_x + (tj - half) * factor_x
                # Unsigned indices into C-contiguous arrays: contiguous, vectorizable accesses.
                for x in range(x0, column_stop[tj]):
                    xs = np.uintp(x)
                    xn = np.uintp(x + offset)
                    d = zero
                    for c in range(len(guide_planes)):
                        diff = guide_expanded[c, i, xn] - centre[c, xs]
                        d += diff * diff
                    w = exp_nonpositive(log_weight_y + column_log_weight[tj, xs] - range_coef * d)
                    acc[0, xs] += w
                    for c in range(n_values):
                        acc[1 + c, xs] += w * low_expanded[c][i, xn]
        for x in range(width):
            total = acc[0, x]
            if total == 0:
                _rescaled_pixel(low_expanded, guide_expanded, centre, acc, y, x, nearest_row,
                                factor_x, pad_x, row_log_weight, column_log_weight,
                                column_start, column_stop, range_coef)
                total = acc[0, x]
            inverse = 1 / total
            for c in range(n_values):
                if channels_last:
                    out[y, x, out_offset + c] = acc[1 + c, x] * inverse
                else:
                    out[out_offset + c, y, x] = acc[1 + c, x] * inverse


@njit(cache=True)
def _rescaled_pixel(low_expanded, guide_expanded, centre, acc, y, x, nearest_row, factor_x,
                    pad_x, row_log_weight, column_log_weight, column_start, column_stop,
                    range_coef):
    """Weights of one pixel as exp(a - max a): the same ratios, no underflow."""
    n_taps = row_log_weight.shape[0]
    half = (n_taps - 1) // 2
    largest = -np.inf
    for pass_ in range(2):
        for ti in range(n_taps):
            if row_log_weight[ti, y] == -np.inf:
                continue
            i = nearest_row[y] + ti - half
            for tj in range(n_taps):
                if not column_start[tj] <= x < column_stop[tj]:
                    continue
                xn = x + pad_x + (tj - half) * factor_x
                d = 0.0
                for c in range(centre.shape[0]):
                    diff = guide_expanded[c, i, xn] - centre[c, x]
                    d += diff * diff
                argument = row_log_weight[ti, y] + column_log_weight[tj, x] - range_coef * d
                if pass_ == 0:
                    largest = max(largest, argument)
                    continue
                w = np.exp(argument - largest)
                acc[0, x] += w
                for c in range(len(low_expanded)):
                    acc[1 + c, x] += w * low_expanded[c][i, xn]
