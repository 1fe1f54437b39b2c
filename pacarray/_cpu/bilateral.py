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
* The channel counts are runtime values (the channels come as one strided array each), so each
  kernel compiles once per dtype for every channel count and layout. To keep the loop over
  columns innermost and vectorized whatever the count, a run of pairs goes in passes over the
  row: the guide distances summed channel after channel into a row buffer, one pass of
  exponentials, then the weighted values channel after channel into both ends' accumulator
  rows. A one-channel image that is its own guide (gray images, volumes, signals) takes a
  single fused pass from one buffer. Column indices are unsigned so that Numba emits no
  negative-index wraparound selects.
* The pair taps go in groups of equal (dz, dy), which pair the same two rows. In volumes of one
  channel the groups share passes, so that each voxel is loaded, and each accumulator row
  updated, for several pairs: blocks of four pairs between two source rows (y, y + 1) and two
  target rows (groups (dz, dy - 1), (dz, dy), (dz, dy + 1), dz > 0), then any two groups with
  the same dx list (one source row, two target rows). Runs are rounded up to whole vectors
  (into slack columns that no result reads) and start at a whole vector on the target side
  (the end updated at every tap), and buffer rows are whole cache lines. On the 2-core AVX2
  machine of 2026-12-03 the 3-D loop is bound by its vector operations, loads and stores: a
  misaligned row cost about 35%, the two-group pass about 10%, and against it the blocks of
  four 8-12%, aligned targets 3-5% (see docs/design.md §4). The pairs of a band's edge
  (whose other end another band computes) and the one-sided taps take one fused pass too.
* The spatial and the range weight share one exponential, in base 2:
  ``2**(log2 G[tap] - c * d2)`` with ``c = log2(e) / (2 sigma_color**2)`` (the front end scales
  the log weights and the coefficient), evaluated by the branch-free polynomial of
  :func:`pacarray._cpu._exp.exp2_nonpositive` (Numba's ``np.exp`` runs scalar without Intel
  SVML). Base 2 spares the ``ln 2`` reduction: in float32 12 vector operations per weight
  instead of 16 (the first step, to 13, saved about 20% of the 3-D filter's time on the
  machine of 2026-12-03; the flush by the scale, one more, about 5%). It is exactly
  0 where ``exp`` of the natural-log argument is below -69 (float32) or -600 (float64), the
  thresholds below which the front end drops spatial taps.

NaN handling: no ``nnan``/``ninf`` fast-math flags are used and every select is written so that a
NaN stays NaN, so a NaN in the image or guide propagates to every output whose window holds it.
"""

import numpy as np
from numba import njit

from ._exp import exp2_nonpositive, exp_nonpositive

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
def _distances(guide, row, row_neighbour, b_s, b_n, n, l1, dist):
    """``dist[i]`` = sum over the guide channels of the squared (``l1``: absolute) difference of
    buffer pixels (row_neighbour, b_n + i) and (row, b_s + i), for i < n. Channel after channel,
    so that the loop over columns is the inner one whatever the channel count."""
    for i in range(n):
        diff = guide[0, row_neighbour, np.uintp(b_n + i)] - guide[0, row, np.uintp(b_s + i)]
        dist[i] = abs(diff) if l1 else diff * diff
    for c in range(1, guide.shape[0]):
        for i in range(n):
            diff = guide[c, row_neighbour, np.uintp(b_n + i)] - guide[c, row, np.uintp(b_s + i)]
            dist[i] += abs(diff) if l1 else diff * diff


@njit(cache=True, fastmath=_FASTMATH)
def _weights(dist, n, log_weight, range_coef, l1, weights):
    """``weights[i] = 2**(log_weight - range_coef * d2)`` with d2 = ``dist[i]`` (``l1``: its
    square), for i < n (base-2 log weight and coefficient)."""
    for i in range(n):
        d = dist[i]
        if l1:
            d = d * d
        weights[i] = exp2_nonpositive(log_weight - range_coef * d)


@njit(cache=True, fastmath=_FASTMATH)
def _accumulate(acc, slot, a0, weights, values, row, b0, n):
    """Row ``slot`` of the accumulators gets, at column a0 + i (i < n), the weight ``weights[i]``
    and the weighted values of buffer pixel (row, b0 + i)."""
    for i in range(n):
        acc[slot, 0, np.uintp(a0 + i)] += weights[i]
    for c in range(values.shape[0]):
        for i in range(n):
            acc[slot, 1 + c, np.uintp(a0 + i)] += weights[i] * values[c, row, np.uintp(b0 + i)]


@njit(cache=True, fastmath=_FASTMATH)
def _pair_both(acc, slot, target_slot, a_s, a_t, weights, values, row, row_target, b_s, b_t,
               n):
    """Both ends of the pairs of weights ``weights[:n]`` (accumulator rows ``slot`` !=
    ``target_slot``): pixel (row, b_s + i) gets pixel (row_target, b_t + i), at accumulator
    column a_s + i, and the other way round at a_t + i."""
    for i in range(n):
        w = weights[i]
        acc[slot, 0, np.uintp(a_s + i)] += w
        acc[target_slot, 0, np.uintp(a_t + i)] += w
    for c in range(values.shape[0]):
        for i in range(n):
            w = weights[i]
            acc[slot, 1 + c, np.uintp(a_s + i)] += w * values[c, row_target, np.uintp(b_t + i)]
            acc[target_slot, 1 + c, np.uintp(a_t + i)] += w * values[c, row, np.uintp(b_s + i)]


@njit(cache=True, fastmath=_FASTMATH)
def _pairs_single(acc, slot, target_slot, values, row, row_target, pad_x, acc_pad, pair_dx,
                  pair_log_weight, tap_x0, tap_n, k0, k1, range_coef):
    """:func:`_pair_both` for a one-channel image that is its own guide and the taps
    k0 <= k < k1 (which share their row offset: the same two rows), the weights computed in the
    same loop (no store and reload). Tap k pairs image columns tap_x0[k] ..
    tap_x0[k] + tap_n[k] - 1 with their neighbours pair_dx[k] to the right. One buffer for
    values and guide: each pixel is loaded once."""
    for k in range(k0, k1):
        n = tap_n[k]
        dx = pair_dx[k]
        log_weight = pair_log_weight[k]
        b_s = tap_x0[k] + pad_x
        a_s = tap_x0[k] + acc_pad
        for i in range(n):
            v_s = values[0, row, np.uintp(b_s + i)]
            v_t = values[0, row_target, np.uintp(b_s + dx + i)]
            diff = v_t - v_s
            w = exp2_nonpositive(log_weight - range_coef * (diff * diff))
            x_s = np.uintp(a_s + i)
            x_t = np.uintp(a_s + dx + i)
            acc[slot, 0, x_s] += w
            acc[slot, 1, x_s] += w * v_t
            acc[target_slot, 0, x_t] += w
            acc[target_slot, 1, x_t] += w * v_s


@njit(cache=True, fastmath=_FASTMATH)
def _pairs_single_same_row(acc, slot, values, row, pad_x, acc_pad, pair_dx, pair_log_weight,
                           tap_x0, tap_n, k0, k1, range_coef, weights):
    """:func:`_pairs_single` for taps within the row (dz == dy == 0): both ends accumulate into
    row ``slot``, the lower ends first and then, from the stored weights, the upper ends (the
    order of the 2-D and 1-D filters' sums)."""
    for k in range(k0, k1):
        n = tap_n[k]
        dx = pair_dx[k]
        log_weight = pair_log_weight[k]
        b_s = tap_x0[k] + pad_x
        a_s = tap_x0[k] + acc_pad
        for i in range(n):
            v_t = values[0, row, np.uintp(b_s + dx + i)]
            diff = v_t - values[0, row, np.uintp(b_s + i)]
            w = exp2_nonpositive(log_weight - range_coef * (diff * diff))
            weights[i] = w
            x_s = np.uintp(a_s + i)
            acc[slot, 0, x_s] += w
            acc[slot, 1, x_s] += w * v_t
        for i in range(n):
            w = weights[i]
            x_t = np.uintp(a_s + dx + i)
            acc[slot, 0, x_t] += w
            acc[slot, 1, x_t] += w * values[0, row, np.uintp(b_s + i)]


@njit(cache=True, fastmath=_FASTMATH)
def _pairs_single_two_rows(acc, slot, target_slot, target_slot_2, values, row, row_target,
                           row_target_2, pad_x, acc_pad, pair_dx, pair_log_weight, tap_x0,
                           tap_n, k0, k1, k0_2, range_coef):
    """:func:`_pairs_single` for two groups of taps at once: taps k0 <= k < k1 into the rows
    ``row_target`` / ``target_slot``, taps k0_2 + k - k0 (same dx, same columns) into
    ``row_target_2`` / ``target_slot_2``. The source pixel is loaded once and its accumulators
    updated once for both (half the read-modify-writes of the source end, most of them
    misaligned). Volumes only: the sum of the source end is in another order."""
    for k in range(k0, k1):
        n = tap_n[k]
        dx = pair_dx[k]
        log_weight = pair_log_weight[k]
        log_weight_2 = pair_log_weight[k0_2 + k - k0]
        b_s = tap_x0[k] + pad_x
        a_s = tap_x0[k] + acc_pad
        for i in range(n):
            v_s = values[0, row, np.uintp(b_s + i)]
            v_t = values[0, row_target, np.uintp(b_s + dx + i)]
            v_t2 = values[0, row_target_2, np.uintp(b_s + dx + i)]
            diff = v_t - v_s
            diff_2 = v_t2 - v_s
            w = exp2_nonpositive(log_weight - range_coef * (diff * diff))
            w_2 = exp2_nonpositive(log_weight_2 - range_coef * (diff_2 * diff_2))
            x_s = np.uintp(a_s + i)
            x_t = np.uintp(a_s + dx + i)
            acc[slot, 0, x_s] += w + w_2
            acc[slot, 1, x_s] += w * v_t + w_2 * v_t2
            acc[target_slot, 0, x_t] += w
            acc[target_slot, 1, x_t] += w * v_s
            acc[target_slot_2, 0, x_t] += w_2
            acc[target_slot_2, 1, x_t] += w_2 * v_s


@njit(cache=True, fastmath=_FASTMATH)
def _pairs_single_block(acc, slot, slot_2, target_slot, target_slot_2, values, row, row_2,
                        row_target, row_target_2, lead, acc_pad, pair_dx, pair_log_weight,
                        tap_x0, tap_n, k0, k1, k_below, k_above, range_coef):
    """Four groups of pairs in one pass, between two source rows and two target rows, each the
    next row of the other: taps k0 <= k < k1 pair ``row`` with ``row_target`` and ``row_2``
    with ``row_target_2`` (offset D), taps k_above + k - k0 ``row`` with ``row_target_2``
    (D + 1 row), taps k_below + k - k0 ``row_2`` with ``row_target`` (D - 1 row), all with
    the same dx. Each of the four accumulator rows is updated once for two pairs, and each
    voxel is loaded once for two (against three updates and one and a half loads per pair
    in :func:`_pairs_single_two_rows`)."""
    for k in range(k0, k1):
        n = tap_n[k]
        dx = pair_dx[k]
        log_weight = pair_log_weight[k]
        log_weight_above = pair_log_weight[k_above + k - k0]
        log_weight_below = pair_log_weight[k_below + k - k0]
        b_s = tap_x0[k] + lead
        a_s = tap_x0[k] + acc_pad
        for i in range(n):
            b = np.uintp(b_s + i)
            b_t = np.uintp(b_s + dx + i)
            v = values[0, row, b]
            v_2 = values[0, row_2, b]
            u = values[0, row_target, b_t]
            u_2 = values[0, row_target_2, b_t]
            diff = u - v
            diff_2 = u_2 - v_2
            diff_above = u_2 - v
            diff_below = u - v_2
            w = exp2_nonpositive(log_weight - range_coef * (diff * diff))
            w_2 = exp2_nonpositive(log_weight - range_coef * (diff_2 * diff_2))
            w_above = exp2_nonpositive(log_weight_above - range_coef * (diff_above * diff_above))
            w_below = exp2_nonpositive(log_weight_below - range_coef * (diff_below * diff_below))
            x_s = np.uintp(a_s + i)
            x_t = np.uintp(a_s + dx + i)
            acc[slot, 0, x_s] += w + w_above
            acc[slot, 1, x_s] += w * u + w_above * u_2
            acc[slot_2, 0, x_s] += w_2 + w_below
            acc[slot_2, 1, x_s] += w_2 * u_2 + w_below * u
            acc[target_slot, 0, x_t] += w + w_below
            acc[target_slot, 1, x_t] += w * v + w_below * v_2
            acc[target_slot_2, 0, x_t] += w_2 + w_above
            acc[target_slot_2, 1, x_t] += w_2 * v_2 + w_above * v


@njit(cache=True, fastmath=_FASTMATH)
def _one_end_single(acc, slot, a0, values, row, b0, row_other, b_other, n, log_weight,
                    range_coef):
    """One end of n pairs of a one-channel image that is its own guide, in one pass: pixel
    (row, b0 + i) of the buffer, at accumulator column a0 + i of row ``slot``, gets its
    neighbour (row_other, b_other + i). The pair taps whose other end is outside the band, and
    the one-sided taps (neighbour outside the image, read from the padding), which the
    three passes of :func:`_one_sided` cost about twice as much per weight (two stores and
    reloads of the row buffers)."""
    for i in range(n):
        v = values[0, row, np.uintp(b0 + i)]
        u = values[0, row_other, np.uintp(b_other + i)]
        diff = u - v
        w = exp2_nonpositive(log_weight - range_coef * (diff * diff))
        x = np.uintp(a0 + i)
        acc[slot, 0, x] += w
        acc[slot, 1, x] += w * u


@njit(cache=True, fastmath=_FASTMATH)
def _one_sided(values, guide, acc, dist, weights, slot, row, row_neighbour, x0, dx, n, pad,
               acc_pad, log_weight, range_coef, l1):
    """Pixels (row, x0 .. x0+n-1) with their neighbours (row_neighbour, x + dx), in buffer rows
    and image columns (buffer column = image column + pad, accumulator column = image column +
    acc_pad), added to accumulator row ``slot`` only."""
    b_s = x0 + pad
    _distances(guide, row, row_neighbour, b_s, b_s + dx, n, l1, dist)
    _weights(dist, n, log_weight, range_coef, l1, weights)
    _accumulate(acc, slot, x0 + acc_pad, weights, values, row_neighbour, b_s + dx, n)


@njit(cache=True)
def _fill_slice(image, buffer, row0, rows, z, top, lead, pad_x, mode, cval):
    """Buffer (c, row0 + j, lead + x) <- image (c, z, top + j, x) for j < rows and
    -pad_x <= x < width + pad_x (lead >= pad_x); slices, rows and columns outside the image
    mapped by the border mode ("constant": cval; "exclude": never read, left as cval). The other
    columns of the buffer are left as they are."""
    channels, depth, height, width = image.shape
    z_image = _map_index(z, depth, mode)
    for j in range(rows):
        y = _map_index(top + j, height, mode) if z_image >= 0 else -1
        for c in range(channels):
            if y < 0:
                buffer[c, row0 + j, lead - pad_x:lead + width + pad_x] = cval
                continue
            buffer[c, row0 + j, lead:lead + width] = image[c, z_image, y, :]
            for b in range(pad_x):
                for x_buffer, x in ((lead - pad_x + b, b - pad_x), (lead + width + b, width + b)):
                    x_image = _map_index(x, width, mode)
                    buffer[c, row0 + j, x_buffer] = (
                        image[c, z_image, y, x_image] if x_image >= 0 else cval)


#: Volumes round the length of their runs up to a multiple of this (and pad the work buffers by
#: as many columns), so that no run ends in a scalar remainder loop (the vectorized loops
#: take 8 float32 lanes at a time).
RUN_QUANTUM = 8


@njit(cache=True, fastmath=_FASTMATH)
def _filter_band(band, band_size, extent, by_slices, image, guide_image, same_guide, out,
                 channels_last, pair_dz, pair_dy, pair_dx, pair_log_weight, side_dz, side_dy,
                 side_dx, side_log_weight, range_coef, cval, l1, mode, pads, extend, single,
                 tap_x0, tap_n, group_start, pair_class, block):
    """Band ``band`` of :func:`bilateral_planes` (its arguments and the values it derives from
    them), in a function of its own: the parallel loop's body stays small, and so does the
    compile time of Numba's parfor passes. pads: (pad_z, pad_y, pad_x, lead); group_start: the
    first tap of each group, then the number of pair taps; pair_class, block: see
    bilateral_planes. (Arrays rather than scalars, whose literal values would make the typing
    compile more specializations.)"""
    pad_z, pad_y, pad_x, lead = pads[0], pads[1], pads[2], pads[3]
    # Image column x is column lead + x of the buffers, and of the accumulators in volumes.
    acc_pad = lead if extend else 0
    n_groups = group_start.shape[0] - 1
    n_values, depth, height, width = image.shape
    n_guides = guide_image.shape[0]
    dtype = image.dtype
    n_zslots = 2 * pad_z + 1
    b0 = band * band_size
    b1 = min(extent, b0 + band_size)
    z0, z1, y0, y1 = (b0, b1, 0, height) if by_slices else (0, 1, b0, b1)
    top = y0 - pad_y
    rows = y1 - y0 + 2 * pad_y
    z_start = max(0, z0 - pad_z)
    y_start = max(0, top)
    per_slice = y1 - y_start
    n_slots = pad_z * per_slice + pad_y + 1
    # Rows of whole 64-byte lines (with Numba's 32-byte aligned allocations, a run that
    # starts at column 0 makes aligned vector accesses).
    if extend:
        # Runs of whole vectors from column lead - pad_x on, their sources up to pad_x
        # columns to the left (see bilateral_planes).
        buffer_width = -(-(lead + -(-(width + 2 * pad_x) // RUN_QUANTUM) * RUN_QUANTUM)
                         // 16) * 16
    else:
        buffer_width = -(-(width + 2 * pad_x) // 16) * 16
    # zeros: the slack columns must hold finite numbers (they feed only unread columns).
    values = np.zeros((n_values, n_zslots * rows, buffer_width), dtype=dtype)
    if same_guide:
        guide = values
    else:
        guide = np.zeros((n_guides, n_zslots * rows, buffer_width), dtype=dtype)
    for s in range(z_start - pad_z, z_start + pad_z):
        row0 = ((s - z_start + pad_z) % n_zslots) * rows
        _fill_slice(image, values, row0, rows, s, top, lead, pad_x, mode, cval)
        if not same_guide:
            _fill_slice(guide_image, guide, row0, rows, s, top, lead, pad_x, mode, cval)
    acc_width = buffer_width if extend else -(-width // 16) * 16
    acc = np.zeros((n_slots, n_values + 1, acc_width), dtype=dtype)
    weights = np.empty(buffer_width, dtype=dtype)
    dist = np.empty(buffer_width, dtype=dtype)
    # done[g]: the pairs of group g of this row were computed with the row above (blocks);
    # done_next: those of the next row.
    done = np.zeros(max(n_groups, 1), dtype=np.bool_)
    done_next = np.zeros(max(n_groups, 1), dtype=np.bool_)
    for z in range(z_start, z1):
        s = z + pad_z
        row0 = ((s - z_start + pad_z) % n_zslots) * rows
        _fill_slice(image, values, row0, rows, s, top, lead, pad_x, mode, cval)
        if not same_guide:
            _fill_slice(guide_image, guide, row0, rows, s, top, lead, pad_x, mode, cval)
        slice_row = ((z - z_start + pad_z) % n_zslots) * rows - top
        for y in range(y_start, y1):
            row = slice_row + y
            rank = (z - z_start) * per_slice + y - y_start
            slot = rank % n_slots
            in_band = z >= z0 and y >= y0
            leads = True
            for g in range(n_groups):
                leads = leads and not done_next[g]
                done[g] = done_next[g]
                done_next[g] = False
            # Volumes: the blocks of four groups with the next row (which are then done), if
            # this row is not itself the second row of blocks, and every end is in the band.
            if leads and in_band and y + 1 < y1:
                for g in range(n_groups):
                    if not block[g]:
                        continue
                    first = group_start[g]
                    dz = pair_dz[first]
                    z_target = z + dz
                    y_target = y + pair_dy[first]
                    if not (z_target < z1 and 0 <= y_target and y_target + 1 < height):
                        continue
                    row_target = (((z_target - z_start + pad_z) % n_zslots) * rows + y_target
                                  - top)
                    target_slot = rank + dz * per_slice + pair_dy[first]
                    _pairs_single_block(
                        acc, slot, (rank + 1) % n_slots, target_slot % n_slots,
                        (target_slot + 1) % n_slots, values, row, row + 1, row_target,
                        row_target + 1, lead, acc_pad, pair_dx, pair_log_weight, tap_x0, tap_n,
                        first, group_start[g + 1], group_start[g - 1], group_start[g + 1],
                        range_coef)
                    done[g] = True
                    done[g + 1] = True
                    done_next[g - 1] = True
                    done_next[g] = True
            # Pairs of voxels inside the volume, each computed once for both ends, in groups
            # of taps with the same (dz, dy): the same two rows.
            g = 0
            while g < n_groups:
                group = group_start[g]
                group_end = group_start[g + 1]
                g_here = g
                g += 1
                if done[g_here]:
                    continue
                dz = pair_dz[group]
                dy = pair_dy[group]
                z_target = z + dz
                y_target = y + dy
                if z_target >= depth or not 0 <= y_target < height:
                    continue
                to_target = z0 <= z_target < z1 and y0 <= y_target < y1
                if not (in_band or to_target):
                    continue
                row_target = ((z_target - z_start + pad_z) % n_zslots) * rows + y_target - top
                target_slot = (rank + dz * per_slice + dy) % n_slots
                # Both ends in one pass, unless they share an accumulator row (dz == dy == 0;
                # then the lower end first, the order of the 2-D filter's sums).
                both = in_band and to_target and target_slot != slot
                if both and single:
                    # With the next group not done yet, if it has the same dx list and both
                    # its ends are in the band too.
                    g_2 = g
                    while g_2 < n_groups and done[g_2]:
                        g_2 += 1
                    if g_2 < n_groups and pair_class[g_here] >= 0 and (
                            pair_class[g_2] == pair_class[g_here]):
                        second = group_start[g_2]
                        z_target_2 = z + pair_dz[second]
                        y_target_2 = y + pair_dy[second]
                        if (z0 <= z_target_2 < z1 and y0 <= y_target_2 < y1
                                and z_target_2 < depth and 0 <= y_target_2 < height):
                            _pairs_single_two_rows(
                                acc, slot, target_slot,
                                (rank + pair_dz[second] * per_slice + pair_dy[second])
                                % n_slots, values, row, row_target,
                                ((z_target_2 - z_start + pad_z) % n_zslots) * rows
                                + y_target_2 - top, lead, acc_pad, pair_dx, pair_log_weight,
                                tap_x0, tap_n, group, group_end, second, range_coef)
                            done[g_2] = True
                            continue
                    _pairs_single(acc, slot, target_slot, values, row, row_target, lead,
                                  acc_pad, pair_dx, pair_log_weight, tap_x0, tap_n, group,
                                  group_end, range_coef)
                    continue
                if single and in_band and to_target:
                    _pairs_single_same_row(acc, slot, values, row, lead, acc_pad, pair_dx,
                                           pair_log_weight, tap_x0, tap_n, group, group_end,
                                           range_coef, weights)
                    continue
                for k in range(group, group_end):
                    n = tap_n[k]
                    dx = pair_dx[k]
                    b_s = tap_x0[k] + lead
                    a_s = tap_x0[k] + acc_pad
                    if single:
                        # One end only (the other is outside the band; both are in it only
                        # for dz == dy == 0, taken above): one fused pass. (One call site:
                        # each one is a copy of the loop to compile.)
                        if in_band:
                            end_slot, a_end, row_end, b_end, row_other, b_other = (
                                slot, a_s, row, b_s, row_target, b_s + dx)
                        else:
                            end_slot, a_end, row_end, b_end, row_other, b_other = (
                                target_slot, a_s + dx, row_target, b_s + dx, row, b_s)
                        _one_end_single(acc, end_slot, a_end, values, row_end, b_end, row_other,
                                        b_other, n, pair_log_weight[k], range_coef)
                        continue
                    _distances(guide, row, row_target, b_s, b_s + dx, n, l1, dist)
                    _weights(dist, n, pair_log_weight[k], range_coef, l1, weights)
                    if both:
                        _pair_both(acc, slot, target_slot, a_s, a_s + dx, weights, values,
                                   row, row_target, b_s, b_s + dx, n)
                        continue
                    if in_band:
                        _accumulate(acc, slot, a_s, weights, values, row_target, b_s + dx, n)
                    if to_target:
                        _accumulate(acc, target_slot, a_s + dx, weights, values, row, b_s, n)
            if not in_band:
                continue
            # One-sided taps, whose neighbour is outside the volume (read from the padding).
            if extend:
                # Only the taps whose neighbour row is outside: full rows.
                if pad_z <= z < depth - pad_z and pad_y <= y < height - pad_y:
                    pass
                else:
                    n = -(-width // RUN_QUANTUM) * RUN_QUANTUM
                    for t in range(side_dy.shape[0]):
                        z_neighbour = z + side_dz[t]
                        y_neighbour = y + side_dy[t]
                        if 0 <= z_neighbour < depth and 0 <= y_neighbour < height:
                            continue
                        row_neighbour = (((z_neighbour - z_start + pad_z) % n_zslots) * rows
                                         + y_neighbour - top)
                        if single:
                            _one_end_single(acc, slot, acc_pad, values, row, lead,
                                            row_neighbour, lead + side_dx[t], n,
                                            side_log_weight[t], range_coef)
                            continue
                        _one_sided(values, guide, acc, dist, weights, slot, row,
                                   row_neighbour, 0, side_dx[t], n, lead, acc_pad,
                                   side_log_weight[t], range_coef, l1)
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
                        _one_sided(values, guide, acc, dist, weights, slot, row,
                                   row_neighbour, 0, dx, width, lead, 0, log_weight,
                                   range_coef, l1)
                        continue
                    _one_sided(values, guide, acc, dist, weights, slot, row, row_neighbour,
                               0, dx, x0, lead, 0, log_weight, range_coef, l1)
                    _one_sided(values, guide, acc, dist, weights, slot, row, row_neighbour,
                               x1, dx, width - x1, lead, 0, log_weight, range_coef, l1)
            # The centre tap: weight exp(0) = 1, or NaN where the guide is not finite; then
            # the normalization. Channel after channel, the loops over columns innermost.
            for x in range(width):
                weights[x] = 1
            for c in range(n_guides):
                for x in range(width):
                    weights[x] += 0 * guide[c, row, np.uintp(lead + x)]
            for x in range(width):
                dist[x] = 1 / (acc[slot, 0, np.uintp(acc_pad + x)] + weights[x])
            for c in range(n_values):
                for x in range(width):
                    value = ((acc[slot, 1 + c, np.uintp(acc_pad + x)]
                              + weights[x] * values[c, row, np.uintp(lead + x)]) * dist[x])
                    if channels_last:
                        out[z, y, x, c] = value
                    else:
                        out[c, z, y, x] = value
            acc[slot] = 0


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def bilateral_planes(image, guide_image, same_guide, out, channels_last, pair_dz, pair_dy,
                     pair_dx, pair_log_weight, side_dz, side_dy, side_dx, side_log_weight,
                     params, l1, mode, band_size, job_start, job_stop):
    """Bilateral filter of one volume given as channels (an image is a volume of depth 1).

    image: (C, D, H, W), any strides, C >= 1; guide_image: (G, D, H, W) of the same dtype, any
    strides; ``same_guide``: the guide is ``image`` (pass ``image`` for both; it is read once).
    The channel counts are runtime values: one compiled specialization per dtype serves them all.
    out: (D, H, W, C) if ``channels_last`` else (C, D, H, W). pair_*: the taps (dz, dy, dx) after
    the centre in C order (dz > 0, or dz == 0 and dy > 0, or dz == dy == 0 and dx > 0) and their
    base-2 log spatial weights (log2 G, finite, <= 0); side_*: all taps but the centre. The
    centre tap has weight 1. params: [range_coef, cval] in the image's dtype; the range weight is
    2**(-range_coef * d2), i.e. range_coef = log2(e) / (2 sigma_color**2). l1: d2 is (sum over
    guide channels of |differences|)^2 instead of the sum of squares. mode: a MODE_* code.
    band_size: rows (D == 1) or slices (D > 1) per task; this call runs the tasks (bands)
    ``job_start:job_stop`` of ``ceil(extent / band_size)``, extent D if D > 1 else H.

    A row is the run of W voxels at (z, y). Rows are processed in C order inside a band; the
    lower end of a pair is accumulated into a ring of row accumulators, indexed by the row's
    rank in that order, and the buffer holds a ring of 2 * pad_z + 1 padded slices, so the
    workspace per task is O(pad_z * H * W), whatever the depth. For D == 1 this is the 2-D
    filter row for row (same arithmetic in the same order).
    """
    n_values, depth, height, width = image.shape
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
    # Volumes run the pairs across the left and right padding too (their far end there is
    # dropped): no one-sided runs of a few voxels per tap and row at the x edges, whose calls
    # would cost more than the row's work in 3-D (hundreds of taps, short rows). Their runs are
    # also rounded up to RUN_QUANTUM voxels, into RUN_QUANTUM more columns of buffer and
    # accumulators that no result reads. Images keep exact one-sided runs (the summation order
    # of the 2-D filter is part of its results).
    extend = by_slices and mode != MODE_EXCLUDE
    # A one-channel image that is its own guide: one fused pass per run.
    single = n_values == 1 and same_guide
    # The columns x0 <= x < x0 + n that each pair tap runs over (n <= 0: none).
    n_pairs = pair_dx.shape[0]
    tap_x0 = np.empty(n_pairs, dtype=np.int64)
    tap_n = np.empty(n_pairs, dtype=np.int64)
    # Volumes: the runs of every tap start at the target column -pad_x, at a whole vector of
    # the buffers and accumulators (lead - pad_x is a multiple of RUN_QUANTUM), whose sources
    # start pad_x columns further left at most (lead >= 2 pad_x). The target end of a pair
    # is updated at every tap and row, the source end once per group (or two), so aligned
    # target-side stores and loads are the ones that count. (Pairs whose both ends are
    # outside the image only touch columns that no result reads.)
    lead = pad_x + -(-pad_x // RUN_QUANTUM) * RUN_QUANTUM if extend else pad_x
    for t in range(n_pairs):
        dx = pair_dx[t]
        if extend:
            tap_x0[t] = -pad_x - dx
            n = min(width + pad_x, width + pad_x + dx) + pad_x
            tap_n[t] = -(-n // RUN_QUANTUM) * RUN_QUANTUM if n > 0 else 0
        else:
            tap_x0[t] = max(0, -dx)
            tap_n[t] = max(0, min(width, width - dx) - tap_x0[t])
    # The pair taps in groups with the same (dz, dy), consecutive in C order: each group pairs
    # the same two rows. Volumes of one channel: two groups off the source row with the same
    # pair_class (their dx lists are equal) can share one pass (in a cube, all but the first,
    # dz == dy == 0: none is left to a pass alone); block[g]: groups g - 1, g, g + 1 are
    # (dz, dy - 1), (dz, dy), (dz, dy + 1) with dz > 0 and the same class, so that two source
    # rows and two target rows make one pass of four pairs (_pairs_single_block), at every
    # other dy (the blocks of one row and of the next one do not overlap).
    group_start = np.empty(n_pairs + 1, dtype=np.int64)
    n_groups = 0
    for t in range(n_pairs):
        if t == 0 or pair_dz[t] != pair_dz[t - 1] or pair_dy[t] != pair_dy[t - 1]:
            group_start[n_groups] = t
            n_groups += 1
    group_start[n_groups] = n_pairs
    pair_class = np.full(max(n_groups, 1), -1, dtype=np.int64)
    block = np.zeros(max(n_groups, 1), dtype=np.bool_)
    if extend and single:
        for g in range(n_groups):
            first = group_start[g]
            if pair_dz[first] == 0 and pair_dy[first] == 0:
                continue
            size = group_start[g + 1] - first
            pair_class[g] = g
            for h in range(g):
                other = group_start[h]
                if pair_class[h] != h or group_start[h + 1] - other != size:
                    continue
                same = True
                for k in range(size):
                    same = same and pair_dx[first + k] == pair_dx[other + k]
                if same:
                    pair_class[g] = h
                    break
        g = 1
        while g < n_groups - 1:
            first = group_start[g]
            if (pair_dz[first] > 0 and pair_class[g] >= 0
                    and pair_class[g - 1] == pair_class[g] == pair_class[g + 1]
                    and pair_dz[group_start[g - 1]] == pair_dz[first]
                    and pair_dz[group_start[g + 1]] == pair_dz[first]
                    and pair_dy[group_start[g - 1]] == pair_dy[first] - 1
                    and pair_dy[group_start[g + 1]] == pair_dy[first] + 1):
                block[g] = True
                g += 2
            else:
                g += 1
    pads = np.empty(4, dtype=np.int64)
    pads[0] = pad_z
    pads[1] = pad_y
    pads[2] = pad_x
    pads[3] = lead
    groups = group_start[:n_groups + 1]
    for band in range(job_start, job_stop):
        _filter_band(np.int64(band), band_size, extent, by_slices, image, guide_image,
                     same_guide, out, channels_last, pair_dz, pair_dy, pair_dx, pair_log_weight,
                     side_dz, side_dy, side_dx, side_log_weight, range_coef, cval, l1, mode, pads,
                     extend, single, tap_x0, tap_n, groups, pair_class, block)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def joint_upsample_rows(low_expanded, guide_expanded, guide_image, out, channels_last,
                        nearest_row, factor_x, pad_x, row_log_weight, column_log_weight,
                        column_start, column_stop, params, job_start, job_stop):
    """Joint bilateral upsampling, one output row per task: this call runs the rows
    ``job_start:job_stop``.

    low_expanded: (C, h, W + 2 * pad_x), C-contiguous; column pad_x + u holds sample
    (2u + 1) // (2 factor_x) of each low-resolution row (the sample nearest to output column u);
    guide_expanded: (G, h, same), C-contiguous, the guide read at the samples' positions,
    expanded alike; guide_image: (G, H, W) the high-resolution guide, any strides. The channel
    counts C and G are runtime values (one specialization per dtype). out: (H, W, C) if
    ``channels_last`` else (C, H, W). Tap t (of T = 2r + 1) reads sample row
    nearest_row[y] + t - r with log spatial weight row_log_weight[t, y] (-inf: no such sample),
    and sample column nearest(x) + t - r with column_log_weight[t, x], for the output columns
    column_start[t] <= x < column_stop[t] where that sample exists. params: [range_coef].
    Where every weight of a pixel underflows, the weights are recomputed relative to the largest
    one, so that the result is the limit of the exact formula instead of 0/0.
    """
    n_values = low_expanded.shape[0]
    n_guides, height, width = guide_image.shape
    n_taps = row_log_weight.shape[0]
    half = (n_taps - 1) // 2
    range_coef = params[0]
    dtype = guide_expanded.dtype
    for y in range(job_start, job_stop):
        acc = np.zeros((n_values + 1, width), dtype=dtype)
        centre = np.empty((n_guides, width), dtype=dtype)
        for c in range(n_guides):
            centre[c, :] = guide_image[c, y, :]
        dist = np.empty(width, dtype=dtype)
        weights = np.empty(width, dtype=dtype)
        for ti in range(n_taps):
            log_weight_y = row_log_weight[ti, y]
            if log_weight_y == -np.inf:
                continue
            i = nearest_row[y] + ti - half
            for tj in range(n_taps):
                x0 = column_start[tj]
                x1 = column_stop[tj]
                offset = pad_x + (tj - half) * factor_x
                # Channel after channel, the loop over columns innermost (it vectorizes);
                # unsigned indices into C-contiguous arrays: no wraparound selects.
                for x in range(x0, x1):
                    diff = guide_expanded[0, i, np.uintp(x + offset)] - centre[0, np.uintp(x)]
                    dist[np.uintp(x)] = diff * diff
                for c in range(1, n_guides):
                    for x in range(x0, x1):
                        diff = guide_expanded[c, i, np.uintp(x + offset)] - centre[c, np.uintp(x)]
                        dist[np.uintp(x)] += diff * diff
                for x in range(x0, x1):
                    xs = np.uintp(x)
                    w = exp_nonpositive(log_weight_y + column_log_weight[tj, xs]
                                        - range_coef * dist[xs])
                    weights[xs] = w
                    acc[0, xs] += w
                for c in range(n_values):
                    for x in range(x0, x1):
                        xs = np.uintp(x)
                        acc[1 + c, xs] += weights[xs] * low_expanded[c, i, np.uintp(x + offset)]
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
                    out[y, x, c] = acc[1 + c, x] * inverse
                else:
                    out[c, y, x] = acc[1 + c, x] * inverse


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
                for c in range(low_expanded.shape[0]):
                    acc[1 + c, x] += w * low_expanded[c, i, xn]
