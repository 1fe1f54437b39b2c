"""Numba kernels of PAC-CRF mean-field inference on the CPU.

A mean-field step is one message pass per pairwise term, the compatibility transform and a softmax
over the labels. The generic fused ``pac_pool`` computes the same messages, but reads through
runtime strides, which keeps its channel loop from vectorizing. With the same vectorized
exponential on both paths, the generic one takes about 2x (256 x 256) to 2.2-3x (512 x 512) the
time of these kernels for ``pac_crf`` and 1.6-1.9x for ``pac_crf_vjp`` (21 labels, 5 steps, the
default term, float32, 2 threads; interleaved medians of 9-11 runs on a loaded 2-core machine). The
CRF is the one place where the same kernel meets many channels (labels) at stride 1, so it gets its
own kernels:

* :func:`mean_field_step` does a whole update in one parallel pass, one output row per task:
  each term's adaptive kernel for the row, ``(taps, W)``, is computed into a buffer that stays
  in L1/L2 and consumed by every label at once; the weighted messages of all terms, the
  compatibility transform and the softmax follow on ``(L, W)`` row buffers, so nothing per tap
  outlives a row and memory stays O(labels x pixels);
* :func:`add_messages` is the message pass of one term alone (blurred terms on their coarse
  grid, and the backward pass);
* the parallel kernels take a range ``job_start, job_stop`` of jobs (rows, or coarse rows
  per label) after their arguments, run on the CPU threads by
  :func:`pacarray._cpu._parallel.run`;
* every inner loop runs over a contiguous range of columns through slices, so indices are
  provably non-negative and LLVM vectorizes it;
* the exponential is the branch-free polynomial of :mod:`pacarray._cpu._exp`, which vectorizes
  (Numba's ``np.exp`` runs scalar without Intel SVML); weights and probabilities below
  ``exp(-69)`` (float32) or ``exp(-600)`` (float64) are exactly 0.

The message of one term is ``sum_{a != centre} G[a] exp(-1/2 |f_i - f_(i+a*d)|^2) Q[l, i+a*d]``
over in-range neighbours: exactly ``pac_pool(Q, k, guide=f, dilation=d, padding=d*(k-1)/2,
spatial_weight=G)`` with ``G``'s centre set to 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._crf_vector import (
    CROSS_TAPS,
    PALETTE_LANES,
    SQUARE_TAPS,
    fused_block0,
    fused_block2,
    fused_block4,
    fused_block8,
    fused_cross,
    fused_square,
    palette_lookup,
    window_block1,
    window_block2,
    window_block4,
    window_block8,
)
from ._exp import exp_nonpositive

# Only contraction of multiply-add into FMA; no assumption about NaN or Inf.
_FASTMATH = {"contract"}

@njit(cache=True, nogil=True)
def finite_blocks(bits, exponent, block, flags, job_start, job_stop):
    """``flags[j]`` = whether every value of block ``j`` (``block`` values) is finite, from
    ``bits``, the values viewed as integers of their size: a value is NaN or infinite when
    its exponent bits (``exponent``) are all set. An integer count vectorizes (a float sum
    would be one serial chain)."""
    for job in range(job_start, job_stop):
        chunk = bits[job * block:min(bits.shape[0], (job + 1) * block)]
        count = 0
        for i in range(chunk.shape[0]):
            count += (chunk[i] & exponent) == exponent
        flags[job] = count == 0


@njit(cache=True, fastmath=_FASTMATH)
def _kernel_rows(guide, feature_start, feature_stop, n, y, spatial, dilation_y, dilation_x,
                 kernel, tap_row, tap_offset, scratch):
    """Adaptive kernel of output row ``y``: ``kernel[t, x]`` for the active taps ``t``.

    Taps outside the image vertically or with a zero spatial weight are skipped; returns the
    number of active taps, whose source row and column offset go to ``tap_row`` and
    ``tap_offset``. ``kernel[t]`` is 0 where the neighbour falls outside horizontally.
    Features ``feature_start:feature_stop`` of ``guide`` are compared.
    """
    height, width = guide.shape[2], guide.shape[3]
    kh, kw = spatial.shape
    radius_y, radius_x = (kh - 1) // 2, (kw - 1) // 2
    minus_half = kernel.dtype.type(-0.5)
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
            distance = scratch[:span]
            distance[:] = 0.0
            for f in range(feature_start, feature_stop):
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
    return active


@njit(cache=True, fastmath=_FASTMATH)
def _row_message(q, n, label, kernel, tap_row, tap_offset, active, acc):
    """``acc[x] = sum_t kernel[t, x] q[n, label, tap_row[t], x + tap_offset[t]]``."""
    width = q.shape[3]
    acc[:] = 0.0
    for t in range(active):
        offset = tap_offset[t]
        lo = max(0, -offset)
        hi = min(width, width - offset)
        weights = kernel[t, lo:hi]
        source = q[n, label, tap_row[t], lo + offset:hi + offset]
        target = acc[lo:hi]
        for x in range(hi - lo):
            target[x] += weights[x] * source[x]


@njit(cache=True, fastmath=_FASTMATH)
def _row_messages_all(q, n, kernel, tap_row, tap_offset, active, pairwise):
    """``pairwise[l, x] = sum_t kernel[t, x] q[n, l, tap_row[t], x + tap_offset[t]]`` for every
    label, taps outer: a tap's weights stay in L1 while every label reads its source row."""
    labels, width = pairwise.shape
    pairwise[:] = 0.0
    for t in range(active):
        offset = tap_offset[t]
        lo = max(0, -offset)
        hi = min(width, width - offset)
        weights = kernel[t, lo:hi]
        row = tap_row[t]
        for label in range(labels):
            source = q[n, label, row, lo + offset:hi + offset]
            target = pairwise[label, lo:hi]
            for x in range(hi - lo):
                target[x] += weights[x] * source[x]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def add_messages(q, guide, spatial, dilation_y, dilation_x, weight, out, job_start, job_stop):
    """``out[n,l] += weight * message(q[n,l])`` for one pairwise term (see the module notes).

    ``q`` ``(N, L, H, W)``, ``guide`` ``(N, F, H, W)`` (F may be 0: the kernel is ``spatial``
    alone), ``spatial`` ``(kh, kw)`` with its centre already 0.
    """
    batch, labels, height, width = q.shape
    taps = spatial.shape[0] * spatial.shape[1]
    scale = q.dtype.type(weight)
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        kernel = np.empty((taps, width), q.dtype)
        acc = np.empty(width, q.dtype)
        tap_row = np.empty(taps, np.int64)
        tap_offset = np.empty(taps, np.int64)
        active = _kernel_rows(guide, 0, guide.shape[1], n, y, spatial, dilation_y, dilation_x,
                              kernel, tap_row, tap_offset, acc)
        for label in range(labels):
            _row_message(q, n, label, kernel, tap_row, tap_offset, active, acc)
            result = out[n, label, y]
            for x in range(width):
                result[x] += scale * acc[x]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def mean_field_step(unary, q, guides, feature_bounds, spatials, dilations, weights,
                    extra, use_extra, compatibility, use_compatibility, q_out,
                    logits_out, write_logits, job_start, job_stop):
    """One whole mean-field update, row by row: messages of every term, compatibility, softmax.

    ``unary`` ``(N, L, H, W)`` (already times the unary weight), ``q`` the current marginals.
    Term ``k`` compares features ``feature_bounds[k, 0]:feature_bounds[k, 1]`` of ``guides``
    with spatial weight ``spatials[k]`` (padded to a common size around the centre, centre 0)
    and dilation ``dilations[k]``, and has weight ``weights[k]``. ``extra`` (when
    ``use_extra``) is added to the weighted message sum ``P`` (the blurred terms). The logits
    are ``unary + P`` (Potts, up to a per-pixel constant) or ``unary - compatibility @ P``; their
    softmax goes to ``q_out`` and, when ``write_logits``, the logits to ``logits_out``.
    """
    batch, labels, height, width = q.shape
    terms = spatials.shape[0]
    taps = spatials.shape[1] * spatials.shape[2]
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        pairwise = np.zeros((labels, width), q.dtype)
        logits = np.empty((labels, width), q.dtype)
        kernel = np.empty((taps, width), q.dtype)
        acc = np.empty(width, q.dtype)
        peak = np.empty(width, q.dtype)
        tap_row = np.empty(taps, np.int64)
        tap_offset = np.empty(taps, np.int64)
        for term in range(terms):
            active = _kernel_rows(guides, feature_bounds[term, 0], feature_bounds[term, 1], n, y,
                                  spatials[term], dilations[term, 0], dilations[term, 1],
                                  kernel, tap_row, tap_offset, acc)
            scale = q.dtype.type(weights[term])
            for label in range(labels):
                _row_message(q, n, label, kernel, tap_row, tap_offset, active, acc)
                target = pairwise[label]
                for x in range(width):
                    target[x] += scale * acc[x]
        _finish_row(unary, n, y, pairwise, extra, use_extra, compatibility, use_compatibility,
                    q_out, logits_out, write_logits, logits, peak, acc)


@njit(cache=True, fastmath=_FASTMATH)
def _finish_row(unary, n, y, pairwise, extra, use_extra, compatibility, use_compatibility,
                q_out, logits_out, write_logits, logits, peak, total):
    """Row ``y`` of a step after the messages: ``pairwise (L, W)`` (the full-resolution terms'
    weighted sum) plus ``extra``, the compatibility, the logits and their softmax over the
    labels, written to ``q_out``.

    The softmax takes three passes over the labels: the running maximum (``np.maximum``: a
    loop over ``max()`` runs about 5x slower, 15 against 3 ns per pixel for 21 labels), then
    :func:`_softmax_to` (the exponentials and their sum, and the normalized values written
    straight to ``q_out``).
    """
    labels = pairwise.shape[0]
    width = pairwise.shape[1]
    if use_extra:
        for label in range(labels):
            source = extra[n, label, y]
            target = pairwise[label]
            for x in range(width):
                target[x] += source[x]
    for label in range(labels):
        source = unary[n, label, y]
        target = logits[label]
        if use_compatibility:
            target[:] = source
            for other in range(labels):
                mu = compatibility[label, other]
                message = pairwise[other]
                for x in range(width):
                    target[x] -= mu * message[x]
        else:
            message = pairwise[label]
            for x in range(width):
                target[x] = source[x] + message[x]
    if write_logits:
        for label in range(labels):
            logits_out[n, label, y] = logits[label]
    peak[:] = logits[0]
    for label in range(1, labels):
        np.maximum(peak, logits[label], peak)
    _softmax_to(logits, peak, total, q_out, n, y)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def pairwise_weights(guides, feature_bounds, spatials, dilations, weights, cache, tap_rows,
                     tap_offsets, actives, job_start, job_stop):
    """The weighted adaptive kernels of every term, once for all the steps of a call.

    Terms as in :func:`mean_field_step`. Row ``y`` of image ``n`` gets its active taps, of all
    terms one after the other, in ``cache[n, y, :actives[n, y]]`` (``(taps, W)``, each times its
    term's weight), their source rows in ``tap_rows[n, y]`` and column offsets in
    ``tap_offsets[n, y]``. ``cache`` needs room for every non-zero spatial weight of every term.
    """
    height, width = cache.shape[1], cache.shape[3]
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        scratch = np.empty(width, cache.dtype)
        kernel = cache[n, y]
        rows = tap_rows[n, y]
        offsets = tap_offsets[n, y]
        active = 0
        for term in range(spatials.shape[0]):
            count = _kernel_rows(guides, feature_bounds[term, 0], feature_bounds[term, 1], n, y,
                                 spatials[term], dilations[term, 0], dilations[term, 1],
                                 kernel[active:], rows[active:], offsets[active:], scratch)
            scale = cache.dtype.type(weights[term])
            for t in range(active, active + count):
                values = kernel[t]
                for x in range(width):
                    values[x] *= scale
            active += count
        actives[n, y] = active
        # taps past the active ones (rows near the top and bottom), for the fused step that
        # runs a fixed number: weight 0 on the row itself
        for t in range(active, kernel.shape[0]):
            kernel[t] = 0.0
            rows[t] = y
            offsets[t] = 0


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def mean_field_step_cached(unary, q, cache, tap_rows, tap_offsets, actives, extra, use_extra,
                           compatibility, use_compatibility, q_out, logits_out, write_logits,
                           job_start, job_stop):
    """:func:`mean_field_step` with the weighted kernels of :func:`pairwise_weights`: per row,
    each label's message is one sum over the cached taps of all the terms."""
    batch, labels, height, width = q.shape
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        pairwise = np.empty((labels, width), q.dtype)
        logits = np.empty((labels, width), q.dtype)
        acc = np.empty(width, q.dtype)
        peak = np.empty(width, q.dtype)
        kernel = cache[n, y]
        rows = tap_rows[n, y]
        offsets = tap_offsets[n, y]
        active = actives[n, y]
        _row_messages_all(q, n, kernel, rows, offsets, active, pairwise)
        _finish_row(unary, n, y, pairwise, extra, use_extra, compatibility, use_compatibility,
                    q_out, logits_out, write_logits, logits, peak, acc)


# --------------------------------------------------------------------------------------------
# Grid changes of the blurred terms (pacarray._mean_field.block_mean and upsample_add)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def block_mean(q, factor, out, job_start, job_stop):
    """``out[n, l]`` = means of ``q[n, l]`` over ``factor x factor`` blocks (partial blocks at
    the bottom and right: the mean of the pixels they hold), one coarse row per task: the
    block's rows are summed over whole rows first (vectorized), then within each block."""
    batch, labels, height, width = q.shape
    low_h, low_w = out.shape[2], out.shape[3]
    for job in range(job_start, job_stop):
        n = job // (labels * low_h)
        label = (job // low_h) % labels
        cy = job % low_h
        top = cy * factor
        bottom = min(height, top + factor)
        rows = np.empty(width, q.dtype)
        rows[:] = q[n, label, top]
        for y in range(top + 1, bottom):
            source = q[n, label, y]
            for x in range(width):
                rows[x] += source[x]
        target = out[n, label, cy]
        for cx in range(low_w):
            left = cx * factor
            right = min(width, left + factor)
            total = rows[left]
            for x in range(left + 1, right):
                total += rows[x]
            target[cx] = total / ((bottom - top) * (right - left))


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def upsample_add(coarse, weights, rows, cols, out, job_start, job_stop):
    """``out[n, l, y, x] += sum_k weights[n, k, y, x] coarse[n, l, rows[k // 2, y],
    cols[k % 2, x]]``: the (joint-bilateral) upsampling of the blurred terms, one output row
    per task, every label of the row against the same four weight rows."""
    batch, labels, height, width = out.shape
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        top, bottom = rows[0, y], rows[1, y]
        left, right = cols[0], cols[1]
        w00, w01 = weights[n, 0, y], weights[n, 1, y]
        w10, w11 = weights[n, 2, y], weights[n, 3, y]
        for label in range(labels):
            upper = coarse[n, label, top]
            lower = coarse[n, label, bottom]
            target = out[n, label, y]
            for x in range(width):
                target[x] += (w00[x] * upper[left[x]] + w01[x] * upper[right[x]]
                              + w10[x] * lower[left[x]] + w11[x] * lower[right[x]])


# --------------------------------------------------------------------------------------------
# The palette term's grid (pacarray._palette): the splat and the slice of 2-D marginals


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def palette_splat(q, senders, index, out, job_start, job_stop):
    """``out[n, l, index[n, s]] += q[n, l, senders[s]]`` over the sending pixels, one image
    and label per task (``q`` ``(N, L, pixels)``, ``out`` ``(N, L, grid)`` zeroed here)."""
    labels = q.shape[1]
    for job in range(job_start, job_stop):
        n = job // labels
        label = job % labels
        target = out[n, label]
        target[:] = 0
        source = q[n, label]
        where = index[n]
        for s in range(senders.shape[0]):
            target[where[s]] += source[senders[s]]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def palette_slice_add(coarse, owner, rows_lo, rows_hi, ty, cols_lo, cols_hi, tx, inv_norm,
                      scale, out, job_start, job_stop):
    """``out[n, l, y, x] += scale * inv_norm[n, y, x] * (bilinear of coarse[n, l, owner[n, y,
    x]] at the pixel)``, one output row per task: for each label, the row of every palette
    entry is interpolated between its two coarse rows first (``(P, w)``), then each pixel reads
    two cells of its own entry's row."""
    batch, labels, height, width = out.shape
    palette, low_w = coarse.shape[2], coarse.shape[4]
    row = np.empty((palette, low_w), coarse.dtype)
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        top, bottom = rows_lo[y], rows_hi[y]
        down = ty[y]
        up = 1 - down
        entries = owner[n, y]
        factor = np.empty(width, out.dtype)
        for x in range(width):
            factor[x] = scale * inv_norm[n, y, x]
        for label in range(labels):
            for p in range(palette):
                upper = coarse[n, label, p, top]
                lower = coarse[n, label, p, bottom]
                for cx in range(low_w):
                    row[p, cx] = up * upper[cx] + down * lower[cx]
            target = out[n, label, y]
            for x in range(width):
                right = tx[x]
                cells = row[entries[x]]
                target[x] += factor[x] * ((1 - right) * cells[cols_lo[x]]
                                          + right * cells[cols_hi[x]])


@njit(cache=True, nogil=True)
def palette_assign(features, palette, owner, job_start, job_stop):
    """``owner[n, i]`` = the palette entry nearest to pixel ``i``'s features (squared
    distance in float64, the first on ties), one block of 4096 pixels per task: ``features``
    ``(N, F, pixels)``, ``palette`` ``(N, P, F)`` float64, ``owner`` ``(N, pixels)`` int32.
    Without multiply-add contraction: each square rounded, then the sum, as the generic
    NumPy assignment (``pacarray._palette.assign``) computes it, so that both break exact
    ties (quantized colours) alike."""
    pixels = features.shape[2]
    blocks = -(-pixels // 4096)
    for job in range(job_start, job_stop):
        n = job // blocks
        start = (job % blocks) * 4096
        stop = min(pixels, start + 4096)
        best = np.full(stop - start, np.inf)
        where = owner[n, start:stop]
        where[:] = 0
        if features.shape[1] == 3:
            # colour features: the three terms in one pass (the same operations in the same
            # order as the loop below), over pieces of 512 pixels whose features (in
            # float64), best distances and owners stay in the first-level cache while the
            # palette entries run
            colours = np.empty((3, 512))
            for piece in range(start, stop, 512):
                size = min(stop, piece + 512) - piece
                for f in range(3):
                    values = features[n, f, piece:piece + size]
                    for i in range(size):
                        colours[f, i] = values[i]
                red, green, blue = colours[0], colours[1], colours[2]
                closest = best[piece - start:piece - start + size]
                owners = where[piece - start:piece - start + size]
                for p in range(palette.shape[1]):
                    r, g, b = palette[n, p, 0], palette[n, p, 1], palette[n, p, 2]
                    for i in range(size):
                        dr = red[i] - r
                        dg = green[i] - g
                        db = blue[i] - b
                        distance = dr * dr
                        distance += dg * dg
                        distance += db * db
                        closer = distance < closest[i]
                        closest[i] = distance if closer else closest[i]
                        owners[i] = p if closer else owners[i]
            continue
        for p in range(palette.shape[1]):
            distance = np.zeros(stop - start)
            for f in range(features.shape[1]):
                centre = palette[n, p, f]
                values = features[n, f, start:stop]
                for i in range(stop - start):
                    difference = np.float64(values[i]) - centre
                    distance[i] += difference * difference
            for i in range(stop - start):
                if distance[i] < best[i]:
                    best[i] = distance[i]
                    where[i] = p


@njit(cache=True, fastmath=_FASTMATH)
def _window_vectors(out, base, q, kernel, rows, offsets, active, n, start, count, block):
    """``out[:, x:x+block] = base[:, x:x+block] +`` the ``active`` taps for ``count`` blocks
    from column ``start``: the taps in blocks of 8, 4, 2 and 1 (one pass over the columns
    each, the later ones onto ``out`` itself), each a :mod:`pacarray._cpu._crf_vector`
    intrinsic. The loops over the columns are here, inside one call per row, since a call per
    block (16 array arguments) costs more than the block. ``base`` is typed like
    ``out[:, ::1]`` (any strides), so that each block size is compiled once."""
    again = out[:, ::1]
    t = 0
    while t < active:
        left = active - t
        source = base if t == 0 else again
        x = start
        if left >= 8:
            for _ in range(count):
                window_block8(out, source, q, kernel, rows, offsets, t, n, x)
                x += block
            t += 8
        elif left >= 4:
            for _ in range(count):
                window_block4(out, source, q, kernel, rows, offsets, t, n, x)
                x += block
            t += 4
        elif left >= 2:
            for _ in range(count):
                window_block2(out, source, q, kernel, rows, offsets, t, n, x)
                x += block
            t += 2
        else:
            for _ in range(count):
                window_block1(out, source, q, kernel, rows, offsets, t, n, x)
                x += block
            t += 1


@njit(cache=True, fastmath=_FASTMATH)
def _window_columns(out, unary, use_unary, q, kernel, rows, offsets, active, n, y, start, stop):
    """``out[:, start:stop] = unary[n, :, y, start:stop] (or 0) +`` the ``active`` taps, one
    column at a time (the few columns where some tap falls outside the row)."""
    labels, width = out.shape
    zero = out.dtype.type(0.0)
    for label in range(labels):
        source = unary[n, label, y]
        target = out[label]
        for x in range(start, stop):
            total = source[x] if use_unary else zero
            for t in range(active):
                column = x + offsets[t]
                if 0 <= column < width:
                    total += kernel[t, x] * q[n, label, rows[t], column]
            target[x] = total


@njit(cache=True, fastmath=_FASTMATH)
def _window_row(out, unary, use_unary, zeros, q, kernel, rows, offsets, active, n, y, block):
    """``out (L, W) = unary[n, :, y]`` (``zeros`` without ``use_unary``) ``+`` the window
    terms' messages of row ``y``: vector blocks of ``block`` pixels where every tap is inside
    the row, single columns at the edges. With at most 8 taps (one pass, which writes rather
    than adds) a last block that overlaps the one before it reaches the right edge."""
    labels, width = out.shape
    if active == 0:
        for label in range(labels):
            if use_unary:
                out[label] = unary[n, label, y]
            else:
                out[label] = 0.0
        return
    lo, hi = 0, width
    for t in range(active):
        lo = max(lo, -offsets[t])
        hi = min(hi, width - offsets[t])
    lo = min(lo, width)
    count = max(0, hi - lo) // block
    stop = lo
    if count > 0:
        base = unary[n, :, y] if use_unary else zeros
        _window_vectors(out, base, q, kernel, rows, offsets, active, n, lo, count, block)
        if active <= 8 and lo + count * block < hi:
            _window_vectors(out, base, q, kernel, rows, offsets, active, n, hi - block, 1,
                            block)
        stop = hi if active <= 8 else lo + count * block
    _window_columns(out, unary, use_unary, q, kernel, rows, offsets, active, n, y, 0, lo)
    _window_columns(out, unary, use_unary, q, kernel, rows, offsets, active, n, y, stop, width)


@njit(cache=True, fastmath=_FASTMATH)
def _palette_row(coarse, n, label, top, bottom, down, owner, cols_lo, left, right, table,
                 target, block):
    """``target +=`` the palette term's slice of one label's row: ``table`` ``(w + 1, lanes)``
    gets the coarse rows interpolated to the row (its last row stays 0), then each pixel reads
    its own entry at its two columns: :func:`palette_lookup` for blocks of ``block`` pixels
    between the same two columns when the palette fits in a permute, else one pixel at a
    time."""
    width = target.shape[0]
    low_w = coarse.shape[3]
    up = 1 - down
    upper = coarse[n, label, top].reshape(coarse.shape[3] * coarse.shape[4])
    lower = coarse[n, label, bottom].reshape(coarse.shape[3] * coarse.shape[4])
    flat = table[:low_w].reshape(low_w * table.shape[1])
    for i in range(flat.shape[0]):
        flat[i] = up * upper[i] + down * lower[i]
    x = 0
    if table.shape[1] == PALETTE_LANES:
        while x + block <= width:
            column = cols_lo[x]
            if cols_lo[x + block - 1] == column:
                palette_lookup(target, table, column, owner, left, right, x)
            else:
                _palette_columns(target, table, owner, cols_lo, left, right, x, x + block)
            x += block
    _palette_columns(target, table, owner, cols_lo, left, right, x, width)


@njit(cache=True, fastmath=_FASTMATH)
def _palette_columns(target, table, owner, cols_lo, left, right, start, stop):
    """Pixels ``start:stop`` of :func:`_palette_row`, one at a time."""
    for x in range(start, stop):
        c = cols_lo[x]
        p = owner[x]
        target[x] += left[x] * table[c, p] + right[x] * table[c + 1, p]


@njit(cache=True, fastmath=_FASTMATH)
def _softmax_to(logits, peak, total, q_out, n, y):
    """``q_out[n, :, y]`` = the softmax over the labels of ``logits`` ``(L, W)``, whose
    maximum over the labels is ``peak`` (``logits`` is overwritten)."""
    labels, width = logits.shape
    total[:] = 0.0
    for label in range(labels):
        row = logits[label]
        for x in range(width):
            value = exp_nonpositive(row[x] - peak[x])
            row[x] = value
            total[x] += value
    one = logits.dtype.type(1.0)
    for x in range(width):
        total[x] = one / total[x]
    for label in range(labels):
        row = logits[label]
        target = q_out[n, label, y]
        for x in range(width):
            target[x] = row[x] * total[x]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def mean_field_step_palette(unary, q, cache, tap_rows, tap_offsets, actives, use_cache,
                            coarse, rows_lo, rows_hi, ty, owner, cols_lo, slice_weights,
                            use_slice, cell, send, splat_index, grid_out, splat, compatibility,
                            use_compatibility, q_out, logits_out, write_logits, block,
                            job_start, job_stop):
    """A mean-field update with one palette term fused in, one row of grid cells per task.

    Per row, for each label: the unary plus the window terms' messages from their cached
    kernels (:func:`pairwise_weights`, when ``use_cache``; :func:`_window_row`), plus the
    palette term's slice of ``coarse`` ``(N, L, h, w, lanes)`` (its smoothed grid, palette
    entries last and padded with zeros to ``lanes``, at least
    :data:`pacarray._cpu._crf_vector.PALETTE_LANES`; :func:`_palette_row`) with
    ``slice_weights[n, :, y, x]`` (the term's weight / the normalization, times the two
    linear weights), when ``use_slice``; then the softmax. Without ``use_slice`` and
    ``use_cache`` this is the softmax of the unary (the marginals before the first step).
    With a compatibility matrix the messages go to their own buffer and
    :func:`_finish_row` applies it. With ``splat`` the new marginals of the row are added
    into ``grid_out[n, l, cy]`` ``(P * w)`` at ``splat_index[n, y, x]`` (entry ``* w`` +
    cell), the next step's grid, for the sending pixels (rows and columns that are multiples
    of ``send``): the task owns that row of cells, so no two tasks write one cell. ``block``
    is the vector length of :mod:`pacarray._cpu._crf_vector` for the dtype.
    """
    batch, labels, height, width = q.shape
    low_h, low_w, lanes = coarse.shape[2], coarse.shape[3], coarse.shape[4]
    for job in range(job_start, job_stop):
        n = job // low_h
        cy = job % low_h
        logits = np.empty((labels, width), q.dtype)
        pairwise = np.empty((labels, width), q.dtype) if use_compatibility else logits
        # zeros: the base of the messages with a compatibility matrix, typed as a unary row
        # (any strides)
        zeros = np.zeros((labels, 1, width) if use_compatibility else (1, 1, 1), q.dtype)[:, 0]
        total = np.empty(width, q.dtype)
        peak = np.empty(width, q.dtype)
        table = np.zeros((low_w + 1, lanes), q.dtype)
        copies = np.zeros((4, labels, grid_out.shape[3]) if splat else (1, 1, 1), q.dtype)
        for y in range(cy * cell, min(height, (cy + 1) * cell)):
            at = y if use_cache else 0  # without window terms the placeholders are 1 x 1
            _window_row(pairwise, unary, not use_compatibility, zeros, q,
                        cache[n * use_cache, at], tap_rows[n * use_cache, at],
                        tap_offsets[n * use_cache, at], actives[n, y] if use_cache else 0, n,
                        y, block)
            for label in range(labels):
                target = pairwise[label]
                if use_slice:
                    _palette_row(coarse, n, label, rows_lo[y], rows_hi[y], ty[y], owner[n, y],
                                 cols_lo, slice_weights[n, 0, y], slice_weights[n, 1, y],
                                 table, target, block)
                if not use_compatibility:
                    if label == 0:
                        peak[:] = target
                    else:
                        np.maximum(peak, target, peak)
            if use_compatibility:
                _finish_row(unary, n, y, pairwise, unary, False, compatibility, True,
                            q_out, logits_out, write_logits, logits, peak, total)
            else:
                if write_logits:
                    for label in range(labels):
                        logits_out[n, label, y] = logits[label]
                _softmax_to(logits, peak, total, q_out, n, y)
            if splat and y % send == 0:
                _splat_rows(q_out[n, :, y], splat_index[n, y], send, copies)
        if splat:
            _sum_copies(copies, grid_out[n, :, cy])


@njit(cache=True)
def _follows(rows, offsets, y, pattern):
    """Whether the taps of row ``y`` are exactly ``pattern``'s ``(dy, dx)``, in its order."""
    for t in range(len(pattern)):
        if rows[t] != y + pattern[t][0] or offsets[t] != pattern[t][1]:
            return False
    return True


@njit(cache=True, fastmath=_FASTMATH)
def _sum_copies(copies, cells):
    """``cells (L, P * w) = ``the sum of the four ``copies`` of :func:`_splat_rows`."""
    for label in range(cells.shape[0]):
        for i in range(cells.shape[1]):
            cells[label, i] = (copies[0, label, i] + copies[1, label, i]) + (
                copies[2, label, i] + copies[3, label, i])


@njit(cache=True, fastmath=_FASTMATH)
def _splat_rows(rows, where, send, copies):
    """``copies[k, l, where[x]] += rows[l, x]`` (the new marginals of one row, ``(L, W)``,
    any row stride) for the columns ``x`` that are multiples of ``send``, the ``k``-th of
    every four senders into copy ``k``: the adds into one cell form a chain (each waits for
    the store before it), and neighbouring senders mostly hit the same cell, so four copies
    make four chains that overlap. The caller sums the copies."""
    labels, width = rows.shape
    # unsigned indices: Numba wraps negative signed ones around, a few instructions per index
    one = np.uint64(send)
    two, three, step = one + one, one + one + one, np.uint64(4 * send)
    rounds = np.uint64(max(0, width - 3 * send + step - 1) // step)
    rest = np.uint64(width)
    for label in range(labels):
        source = rows[label]
        c0 = copies[0, label]
        c1 = copies[1, label]
        c2 = copies[2, label]
        c3 = copies[3, label]
        x = np.uint64(0)
        for _ in range(rounds):
            c0[np.uint64(where[x])] += source[x]
            c1[np.uint64(where[x + one])] += source[x + one]
            c2[np.uint64(where[x + two])] += source[x + two]
            c3[np.uint64(where[x + three])] += source[x + three]
            x += step
        while x < rest:
            c0[np.uint64(where[x])] += source[x]
            x += one


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def mean_field_step_fused(unary, q, cache, tap_rows, tap_offsets, use_cache, coarse, rows_lo,
                          rows_hi, ty, owner, cols_lo, slice_weights, use_slice, cell, send,
                          splat_index, grid_out, splat, q_out, block, job_start, job_stop):
    """:func:`mean_field_step_palette` for Potts, without logits, one block of ``block``
    pixels and every label at a time (:mod:`pacarray._cpu._crf_vector`'s ``fused_block``):
    the taps, the slice, the softmax and the store of a block run on registers and a
    scratch in L1, where the row-at-a-time kernel passes over its rows of logits four times.

    ``q`` and ``q_out`` are ``(N, H, L, W)`` (a row's labels next to each other in memory:
    the taps of a block read 3 rows of every label, a few streams instead of one per label
    and row), with columns of padding around ``q``'s rows as far as the taps reach (finite;
    their weights are 0). ``cache`` ``(N, H, T, W)`` with ``T`` in 2, 4, 8 (the window terms'
    cached kernels, unused taps with weight 0; :func:`pairwise_weights`), when
    ``use_cache``. ``coarse`` ``(N, L, h, w, PALETTE_LANES)``; cells of at least ``block``
    pixels, at least ``block`` columns (the last block overlaps the one before it).
    """
    batch, labels, height, width = unary.shape
    low_h, low_w = coarse.shape[2], coarse.shape[3]
    taps = cache.shape[2] if use_cache else 0
    last = width - block
    base_row = unary.strides[2] // unary.itemsize
    for job in range(job_start, job_stop):
        n = job // low_h
        cy = job % low_h
        scratch = np.empty((labels, block), q.dtype)
        tables = np.zeros((labels, low_w + 2, PALETTE_LANES), q.dtype)
        copies = np.zeros((4, labels, grid_out.shape[3]) if splat else (1, 1, 1), q.dtype)
        for y in range(cy * cell, min(height, (cy + 1) * cell)):
            if use_slice:
                # the coarse rows interpolated to row y, in the dtype of the data
                top, bottom = rows_lo[y], rows_hi[y]
                down = q.dtype.type(ty[y])
                up = q.dtype.type(1.0) - down
                for label in range(labels):
                    upper = coarse[n, label, top].reshape(low_w * PALETTE_LANES)
                    lower = coarse[n, label, bottom].reshape(low_w * PALETTE_LANES)
                    target = tables[label, :low_w].reshape(low_w * PALETTE_LANES)
                    for i in range(target.shape[0]):
                        target[i] = up * upper[i] + down * lower[i]
            at = y if use_cache else 0  # without window terms the placeholders are 1 x 1
            kernel = cache[n * use_cache, at]
            rows = tap_rows[n * use_cache, at]
            offsets = tap_offsets[n * use_cache, at]
            base = unary[n, :, y]
            where = owner[n, y]
            left = slice_weights[n, 0, y]
            right = slice_weights[n, 1, y]
            # rows whose taps are the default square's or cross's (all but the first and
            # last rows) read them from one pointer
            square = taps == 8 and _follows(rows, offsets, y, SQUARE_TAPS)
            cross = taps == 4 and _follows(rows, offsets, y, CROSS_TAPS)
            x = 0
            while True:
                at_x = min(x, last)
                if square:
                    fused_square(scratch, base, base_row, q, kernel, rows, offsets, n, y, at_x,
                                 tables, cols_lo, where, left, right, use_slice, q_out)
                elif cross:
                    fused_cross(scratch, base, base_row, q, kernel, rows, offsets, n, y, at_x,
                                tables, cols_lo, where, left, right, use_slice, q_out)
                elif taps == 8:
                    fused_block8(scratch, base, base_row, q, kernel, rows, offsets, n, y, at_x,
                                 tables, cols_lo, where, left, right, use_slice, q_out)
                elif taps == 4:
                    fused_block4(scratch, base, base_row, q, kernel, rows, offsets, n, y, at_x,
                                 tables, cols_lo, where, left, right, use_slice, q_out)
                elif taps == 2:
                    fused_block2(scratch, base, base_row, q, kernel, rows, offsets, n, y, at_x,
                                 tables, cols_lo, where, left, right, use_slice, q_out)
                else:
                    fused_block0(scratch, base, base_row, q, kernel, rows, offsets, n, y, at_x,
                                 tables, cols_lo, where, left, right, use_slice, q_out)
                if at_x == last:
                    break
                x += block
            if splat and y % send == 0:
                _splat_rows(q_out[n, y], splat_index[n, y], send, copies)
        if splat:
            _sum_copies(copies, grid_out[n, :, cy])


@njit(cache=True, nogil=True)
def _squared_distances(columns, centre, out):
    """``out[i] = sum_f (columns[f, i] - centre[f])**2``, summed over the features in order
    (no multiply-add contraction: the same rounding as NumPy's ``((x - c)**2).sum(axis=1)``)."""
    out[:] = 0.0
    for f in range(columns.shape[0]):
        values = columns[f]
        value = centre[f]
        for i in range(out.shape[0]):
            difference = values[i] - value
            out[i] += difference * difference


@njit(cache=True, nogil=True)
def palette_kmeans(points, first, uniforms, iterations):
    """The k-means palette of ``pacarray._palette.palette_colors``: ``(P, F)`` float64 centres
    of ``points`` ``(n, F)``.

    Seeding (k-means++): the first centre is ``points[first]``; centre ``k`` is the point
    where the cumulative sum of the squared distances to the nearest centre so far, over the
    total, first exceeds ``uniforms[k - 1]`` (what ``Generator.choice(n, p=...)`` does with
    that draw); seeding stops early once every point is a centre (the total is 0). Then
    ``iterations`` Lloyd steps: each point to its nearest centre (the first on ties), each
    centre that got points to their mean. All in float64 without multiply-add contraction.
    """
    count, features = points.shape
    columns = np.ascontiguousarray(points.T)
    centres = np.empty((uniforms.shape[0] + 1, features))
    centres[0] = points[first]
    nearest = np.empty(count)
    distance = np.empty(count)
    _squared_distances(columns, centres[0], nearest)
    cdf = np.empty(count)
    size = 1
    for draw in range(uniforms.shape[0]):
        total = 0.0
        for i in range(count):
            total += nearest[i]
        if not total > 0:
            break
        running = 0.0
        for i in range(count):
            running += nearest[i] / total
            cdf[i] = running
        target = uniforms[draw] * cdf[count - 1]
        pick = count - 1
        for i in range(count):
            if cdf[i] > target:
                pick = i
                break
        centres[size] = points[pick]
        size += 1
        _squared_distances(columns, points[pick], distance)
        for i in range(count):
            nearest[i] = min(nearest[i], distance[i])
    centres = centres[:size].copy()
    best = np.empty(count)
    owner = np.empty(count, np.int64)
    sums = np.empty((size, features))
    counts = np.empty(size, np.int64)
    for _ in range(iterations):
        best[:] = np.inf
        owner[:] = 0
        for p in range(size):
            _squared_distances(columns, centres[p], distance)
            for i in range(count):
                closer = distance[i] < best[i]
                best[i] = distance[i] if closer else best[i]
                owner[i] = p if closer else owner[i]
        sums[:] = 0.0
        counts[:] = 0
        for i in range(count):
            counts[owner[i]] += 1
            for f in range(features):
                sums[owner[i], f] += points[i, f]
        for p in range(size):
            if counts[p] > 0:
                for f in range(features):
                    centres[p, f] = sums[p, f] / counts[p]
    return centres


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def palette_step_indices(owner, inv_norm, weight, tx, cell, low_w, slice_weights, splat_index,
                         job_start, job_stop):
    """What :func:`mean_field_step_palette` reads per pixel, one row per task: the slice's
    weights (``weight / norm`` times the two linear weights) and the splat's cell
    (``owner * w + x // cell``)."""
    height, width = owner.shape[1], owner.shape[2]
    for job in range(job_start, job_stop):
        n = job // height
        y = job % height
        for x in range(width):
            scale = weight * inv_norm[n, y, x]
            right = tx[x]
            slice_weights[n, 0, y, x] = scale * (1 - right)
            slice_weights[n, 1, y, x] = scale * right
            splat_index[n, y, x] = owner[n, y, x] * low_w + x // cell


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def palette_adjoint(grad, owner, rows_lo, rows_hi, ty, cols_lo, cols_hi, tx, inv_norm, coarse,
                    job_start, job_stop):
    """The adjoint of :func:`palette_slice_add` (scale 1): ``coarse[n, l]`` ``(P, h, w)`` gets
    each pixel's ``grad / norm`` spread over its four cells with the linear weights, one image
    and label per task (the task owns ``coarse[n, l]``): per row into a ``(P, w)`` table
    first, then the table onto the row's two coarse rows."""
    labels, height, width = grad.shape[1], grad.shape[2], grad.shape[3]
    palette, low_w = coarse.shape[2], coarse.shape[4]
    table = np.empty((palette, low_w), coarse.dtype)
    for job in range(job_start, job_stop):
        n = job // labels
        label = job % labels
        coarse[n, label] = 0
        for y in range(height):
            table[:] = 0
            entries = owner[n, y]
            source = grad[n, label, y]
            scale = inv_norm[n, y]
            for x in range(width):
                value = source[x] * scale[x]
                right = tx[x]
                row = table[entries[x]]
                row[cols_lo[x]] += (1 - right) * value
                row[cols_hi[x]] += right * value
            down = ty[y]
            up = 1 - down
            for p in range(palette):
                upper = coarse[n, label, p, rows_lo[y]]
                lower = coarse[n, label, p, rows_hi[y]]
                row = table[p]
                for cx in range(low_w):
                    upper[cx] += up * row[cx]
                    lower[cx] += down * row[cx]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def palette_gather_add(coarse, senders, index, scale, out, job_start, job_stop):
    """``out[n, l, senders[s]] += scale * coarse[n, l, index[n, s]]`` (the adjoint of the
    splat), one image and label per task (``coarse`` ``(N, L, grid)``, ``out`` ``(N, L,
    pixels)``)."""
    labels = out.shape[1]
    for job in range(job_start, job_stop):
        n = job // labels
        label = job % labels
        source = coarse[n, label]
        target = out[n, label]
        where = index[n]
        for s in range(senders.shape[0]):
            target[senders[s]] += scale * source[where[s]]
