"""Generic bilateral filter and joint bilateral upsampling (any backend of the core ops)."""

from __future__ import annotations

import itertools

import numpy as np

from .. import _args
from ..ops import pac_pool


def bilateral(problem):
    """The bilateral filter of a :class:`pacarray._bilateral.BilateralProblem` through the fused
    ``pac_pool``, in the image's layout."""
    if problem.color_distance == "l1" and problem.guide_channels > 1:
        raise NotImplementedError(
            "color_distance='l1' with a multichannel guide needs the NumPy kernel; got a "
            f"{type(problem.planar).__module__} array with {problem.guide_channels} guide "
            "channels. Use color_distance='l2'."
        )
    x, _, keywords = problem.pool_inputs()
    result = pac_pool(x, problem.size, **keywords)[0]
    return _args.channels_back(problem.xp, result, problem.image_axis)


def joint_upsample(problem):
    """Joint bilateral upsampling of an :class:`pacarray._bilateral.UpsampleProblem` as
    whole-array operations, one tap of the window at a time, in the caller's layout."""
    xp = problem.xp
    low_planar, guide_planar = problem.low_planar, problem.guide_planar
    guide_samples, taps = problem.guide_samples, problem.taps
    dtype = low_planar.dtype
    low_shape = low_planar.shape[1:]
    ndim = len(low_shape)
    terms = []
    for combination in itertools.product(*(zip(t[0], t[1]) for t in taps)):
        index = np.ix_(*(np.clip(samples, 0, n - 1)
                         for (samples, _), n in zip(combination, low_shape)))
        index = (slice(None),) + tuple(xp.asarray(i) for i in index)
        d2 = ((guide_samples[index] - guide_planar) ** 2).sum(0)
        log_spatial = None
        for axis, (_, log_weight) in enumerate(combination):
            shape = [1] * ndim
            shape[axis] = -1
            term = log_weight.reshape(shape)
            log_spatial = term if log_spatial is None else log_spatial + term
        log_spatial = _args.constant(xp, log_spatial, dtype)
        terms.append((log_spatial - dtype.type(problem.range_coef) * d2, low_planar[index]))
    # Weights relative to the largest per pixel: no underflow, the same ratios.
    largest = terms[0][0]
    for argument, _ in terms[1:]:
        largest = xp.fmax(largest, argument)
    numerator = xp.zeros((low_planar.shape[0],) + tuple(guide_planar.shape[1:]), dtype=dtype)
    denominator = xp.zeros(tuple(guide_planar.shape[1:]), dtype=dtype)
    for argument, values in terms:
        weight = xp.exp(argument - largest)
        numerator += weight * values
        denominator += weight
    return _args.channels_back(xp, numerator / denominator, problem.channel_axis)
