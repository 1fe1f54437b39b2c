"""Argument checks shared by the image filters (private)."""

from __future__ import annotations

import math

import numpy as np

from . import _arrays

#: Largest accepted radius, in multiples of the image's largest side: beyond it the window is
#: mostly border padding and the call would run for a very long time for no benefit.
RADIUS_LIMIT_FACTOR = 4

#: scipy.ndimage border-mode names -> numpy.pad modes (for the generic, padded path).
NUMPY_PAD_MODES = {
    "reflect": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "constant": "constant",
}
MODES = tuple(NUMPY_PAD_MODES) + ("exclude",)


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def radius_value(radius, default_sigma: float, sigmas: float, shape, name: str = "radius") -> int:
    """``radius`` as a non-negative int, ``ceil(sigmas * default_sigma)`` when None; rejects a
    radius beyond ``RADIUS_LIMIT_FACTOR`` times the largest side of ``shape`` before anything is
    allocated."""
    if radius is None:
        radius = int(math.ceil(sigmas * default_sigma))
        origin = f" (the default ceil({sigmas:g} * sigma_spatial))"
    else:
        if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)):
            raise TypeError(f"{name} must be an int or None, got {radius!r}")
        radius = int(radius)
        if radius < 0:
            raise ValueError(f"{name} must be >= 0, got {radius}")
        origin = ""
    limit = RADIUS_LIMIT_FACTOR * max(shape)
    if radius > limit:
        raise ValueError(
            f"{name}={radius}{origin} exceeds {RADIUS_LIMIT_FACTOR} times the largest image side "
            f"({max(shape)}); pass a smaller {name} or sigma_spatial"
        )
    return radius


def finite_value(value, name: str) -> float:
    return _arrays.finite_scalar(value, name)
