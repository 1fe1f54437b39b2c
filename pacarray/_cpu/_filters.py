"""CPU entry points of the image filters: the dedicated Numba kernels of ``bilateral.py``.

Each takes the validated problem from :mod:`pacarray._bilateral` and returns the result in the
caller's layout (channels-last images are written in place by the kernels, without a transpose).
The channels reach the kernels as one strided array each (views of the caller's arrays where the
front end made no copy), so any channel count and layout runs one specialization per dtype.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _args
from .._bilateral import nearest_sample
from .._generic import filters as generic
from . import bilateral as kernels
from ._layouts import call_any_layout


_LOG2E = 1.4426950408889634

#: Samples per row when a long signal is cut into rows for the threads (see _signal_rows).
SIGNAL_ROW = 1 << 16


def bilateral(problem):
    """The bilateral filter of a :class:`pacarray._bilateral.BilateralProblem`."""
    planar = problem.planar
    channels, spatial = planar.shape[0], planar.shape[1:]
    dtype = planar.dtype
    channels_last = problem.image_axis == problem.ndim
    out = np.empty((*spatial, channels) if channels_last else (channels, *spatial), dtype=dtype)
    offsets, log_weight = problem.taps()
    if problem.ndim == 1 and spatial[0] > 4 * SIGNAL_ROW and problem.reach[0] < SIGNAL_ROW:
        _signal_rows(problem, offsets, log_weight, out, channels_last)
    else:
        # Every rank runs as a volume: singleton axes in front (views, no copies).
        lift = (1,) * (3 - problem.ndim)
        guide = None if problem.guide_planar is None else problem.guide_planar
        _run_volume(problem, planar.reshape(channels, *lift, *spatial),
                    None if guide is None else guide.reshape(guide.shape[0], *lift, *spatial),
                    ((0,) * len(log_weight),) * len(lift) + tuple(offsets), log_weight,
                    out.reshape(*lift, *spatial, channels) if channels_last
                    else out.reshape(channels, *lift, *spatial), channels_last)
    if channels_last:
        return out
    return _args.channels_back(np, out, problem.image_axis)


def _run_volume(problem, planar, guide_planar, offsets, log_weight, out, channels_last):
    """The kernel on ``(C, D, H, W)`` planes (guide ``(G, D, H, W)`` or None) with the taps
    ``offsets = (dz, dy, dx)``, into ``out`` (D, H, W, C) or (C, D, H, W)."""
    channels, depth, height, _ = planar.shape
    dtype = planar.dtype
    dz, dy, dx = (np.asarray(o, dtype=np.int64) for o in offsets)
    centre = (dz == 0) & (dy == 0) & (dx == 0)
    forward = (dz > 0) | ((dz == 0) & (dy > 0)) | ((dz == 0) & (dy == 0) & (dx > 0))
    # The kernels' exponential is base 2 (module docstring of bilateral.py): log weights and the
    # range coefficient in log2 units, scaled in float64 and rounded once to the dtype.
    log2_weight = np.asarray(log_weight, dtype=np.float64) * _LOG2E
    pair = (dz[forward], dy[forward], dx[forward], log2_weight[forward].astype(dtype))
    side = (dz[~centre], dy[~centre], dx[~centre], log2_weight[~centre].astype(dtype))
    # A tiny sigma_color would make the coefficient inf in float32, and inf * 0 (the centre tap)
    # NaN: the largest finite coefficient gives the same weights (exactly 0 off the centre).
    range_coef = min(0.5 * _LOG2E / problem.sigma_color**2, float(np.finfo(dtype).max))
    params = np.array([range_coef, problem.cval], dtype=dtype)
    threads = numba.get_num_threads()
    if depth > 1:
        # Slabs of slices: one per thread keeps the recomputed halo pairs few.
        band = max(1, -(-depth // threads))
    else:
        band = max(1, min(max(64, 8 * problem.radius[-2 if problem.ndim > 1 else 0]),
                          -(-height // threads)))
    same_guide = guide_planar is None
    # One specialization per dtype, whatever the channel counts and the caller's layout.
    call_any_layout(
        kernels.bilateral_planes,
        planar, planar if same_guide else guide_planar, same_guide, out, channels_last,
        *pair, *side, params, problem.color_distance == "l1", kernels.MODE_CODES[problem.mode],
        band, read_only=(0, 1), jobs=-(-(depth if depth > 1 else height) // band),
        work=planar.size * len(log_weight) * (planar.shape[0] + 2),
    )


def _signal_rows(problem, offsets, log_weight, out, channels_last):
    """A long 1-D signal as rows of SIGNAL_ROW samples, so that the threads share it: row i is
    the view of samples [i R - r, (i + 1) R + r) (r the reach) with its true neighbours as
    halo, filtered with the x taps only; its middle R samples are the result. The first and the
    last rows hold the signal's ends, filtered with the border mode as one row each."""
    planar, guide = problem.planar, problem.guide_planar
    length = planar.shape[1]
    reach, row = problem.reach[0], SIGNAL_ROW
    zeros = (np.zeros(len(log_weight), dtype=np.int64),) * 2
    taps = (*zeros, offsets[0])
    out_planar = np.moveaxis(out, -1, 0) if channels_last else out
    n_rows = length // row
    head, tail = row, length - (n_rows - 1) * row   # samples of the end rows' results

    def strided(array):
        step = array.strides[1]
        return np.lib.stride_tricks.as_strided(
            array[:, head - reach:], shape=(array.shape[0], 1, n_rows - 2, row + 2 * reach),
            strides=(array.strides[0], 0, row * step, step), writeable=False)

    middle = np.empty((planar.shape[0], 1, n_rows - 2, row + 2 * reach), dtype=planar.dtype)
    _run_volume(problem, strided(planar), None if guide is None else strided(guide), taps,
                log_weight, middle, False)
    out_planar[:, head:length - tail] = middle[:, 0, :, reach:reach + row].reshape(
        planar.shape[0], -1)
    for start, stop, keep in ((0, head + reach, slice(0, head)),
                              (length - tail - reach, length, slice(reach, None))):
        piece = np.empty((planar.shape[0], 1, 1, stop - start), dtype=planar.dtype)
        _run_volume(problem, planar[:, None, None, start:stop],
                    None if guide is None else guide[:, None, None, start:stop], taps,
                    log_weight, piece, False)
        out_planar[:, start:stop][:, keep] = piece[:, 0, 0, keep]


def joint_upsample(problem):
    """Joint bilateral upsampling of a :class:`pacarray._bilateral.UpsampleProblem`."""
    if problem.low_planar.ndim != 3:
        return generic.joint_upsample(problem)
    low_planar, guide_planar, factors = problem.low_planar, problem.guide_planar, problem.factors
    rows, cols = problem.rows, problem.cols
    dtype = low_planar.dtype
    channels, height, width = low_planar.shape[0], *guide_planar.shape[1:]
    factor_x = factors[1]
    pad_x = problem.radius * factor_x
    expanded = np.clip(nearest_sample(np.arange(-pad_x, width + pad_x), factor_x), 0,
                       low_planar.shape[2] - 1)
    channels_last = problem.channel_axis == 2
    out = np.empty((height, width, channels) if channels_last else (channels, height, width),
                   dtype=dtype)
    low_expanded = np.ascontiguousarray(low_planar[:, :, expanded])
    guide_expanded = np.ascontiguousarray(problem.guide_samples[:, :, expanded])
    call_any_layout(
        kernels.joint_upsample_rows,
        low_expanded, guide_expanded, guide_planar, out, channels_last,
        nearest_sample(np.arange(height), factors[0]), factor_x, pad_x,
        rows[1].astype(dtype), cols[1].astype(dtype), cols[2], cols[3],
        np.array([problem.range_coef], dtype=dtype),
        keep=(0, 1),  # contiguous copies made above, read in the inner loop
        read_only=(2,), jobs=height,
        work=height * width * (2 * problem.radius + 1) ** 2 * (channels + 2),
    )
    if channels_last:
        return out
    return _args.channels_back(np, out, problem.channel_axis)
