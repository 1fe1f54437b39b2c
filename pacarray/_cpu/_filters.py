"""CPU entry points of the image filters: the dedicated Numba kernels of ``bilateral.py``.

Each takes the validated problem from :mod:`pacarray._bilateral` and returns the result in the
caller's layout (channels-last images are written in place by the kernels, without a transpose).
The kernels hold at most ``MAX_GUIDE_PLANES`` guide channels; beyond that, the generic
implementation on the fused ``pac_pool`` runs instead.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _args
from .._bilateral import nearest_sample
from .._generic import filters as generic
from . import bilateral as kernels


def bilateral(problem):
    """The bilateral filter of a :class:`pacarray._bilateral.BilateralProblem`."""
    if problem.guide_channels > kernels.MAX_GUIDE_PLANES:
        return generic.bilateral(problem)
    planar, guide_planar = problem.planar, problem.guide_planar
    channels, height, width = planar.shape
    dtype = planar.dtype
    dy, dx, log_weight = problem.taps()
    centre = (dy == 0) & (dx == 0)
    forward = (dy > 0) | ((dy == 0) & (dx > 0))
    pair = (dy[forward], dx[forward], log_weight[forward].astype(dtype))
    side = (dy[~centre], dx[~centre], log_weight[~centre].astype(dtype))
    # A tiny sigma_color would make the coefficient inf in float32, and inf * 0 (the centre tap)
    # NaN: the largest finite coefficient gives the same weights (exactly 0 off the centre).
    range_coef = min(0.5 / problem.sigma_color**2, float(np.finfo(dtype).max))
    params = np.array([range_coef, problem.cval], dtype=dtype)
    channels_last = problem.image_axis == 2
    out = np.empty((height, width, channels) if channels_last else (channels, height, width),
                   dtype=dtype)
    threads = numba.get_num_threads()
    band_height = max(1, min(max(64, 8 * problem.radius), -(-height // threads)))
    same_guide = guide_planar is None and channels <= kernels.MAX_VALUE_PLANES
    guide_planes = tuple(planar if guide_planar is None else guide_planar)
    for start in range(0, channels, kernels.MAX_VALUE_PLANES):
        value_planes = tuple(planar[start:start + kernels.MAX_VALUE_PLANES])
        kernels.bilateral_planes(
            value_planes, value_planes if same_guide else guide_planes, same_guide, out,
            channels_last, start, *pair, *side, params, problem.color_distance == "l1",
            kernels.MODE_CODES[problem.mode], band_height,
        )
    if channels_last:
        return out
    return _args.channels_back(np, out, problem.image_axis)


def joint_upsample(problem):
    """Joint bilateral upsampling of a :class:`pacarray._bilateral.UpsampleProblem`."""
    if problem.guide_planar.shape[0] > kernels.MAX_GUIDE_PLANES:
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
    for start in range(0, channels, kernels.MAX_VALUE_PLANES):
        kernels.joint_upsample_rows(
            tuple(low_expanded[start:start + kernels.MAX_VALUE_PLANES]), guide_expanded,
            tuple(guide_planar), out, channels_last, start,
            nearest_sample(np.arange(height), factors[0]), factor_x, pad_x,
            rows[1].astype(dtype), cols[1].astype(dtype), cols[2], cols[3],
            np.array([problem.range_coef], dtype=dtype),
        )
    if channels_last:
        return out
    return _args.channels_back(np, out, problem.channel_axis)
