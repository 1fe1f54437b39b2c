"""The bilateral filter's formulation, written once for the forward filter on every backend, its
gradient and the demo (``docs/design.md`` §2).

:func:`problem` validates a :func:`pacarray.bilateral_filter` call and returns a
:class:`BilateralProblem`: the image (and guide) as ``(C, H, W)`` planes in the computation dtype
plus every option, checked. Backends compute the filter from it (``backend.bilateral(problem)``:
a dedicated Numba kernel on the CPU, :meth:`BilateralProblem.pool_inputs` through the fused
``pac_pool`` elsewhere); :func:`pacarray.bilateral_filter_vjp` differentiates the same
``pac_pool`` formulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _args
from .kernels import Gaussian, spatial_window

#: Exponent below which the CPU kernels' exponential returns exactly 0, per dtype.
FLUSH_EXPONENT = {np.dtype(np.float32): -69.0, np.dtype(np.float64): -600.0}


def effective_radius(radius: int, sigma_spatial: float, dtype) -> int:
    """The radius beyond which every spatial weight is below the kernels' flush threshold (so
    exactly 0): a large explicit radius with a small sigma costs nothing extra."""
    reach = math.sqrt(-2.0 * FLUSH_EXPONENT[np.dtype(dtype)]) * sigma_spatial
    return min(radius, int(math.floor(reach)))


def pad_spatial(xp, planar, reach: int, mode: str, cval: float):
    """``planar`` ``(C, H, W)`` extended by ``reach`` pixels on each side with ``mode``
    (unchanged for ``"exclude"``, whose out-of-image taps are dropped instead)."""
    if mode == "exclude" or reach == 0:
        return planar
    widths = ((0, 0), (reach, reach), (reach, reach))
    if mode == "constant":
        return xp.pad(planar, widths, mode="constant", constant_values=cval)
    return xp.pad(planar, widths, mode=_args.NUMPY_PAD_MODES[mode])


def unpad_adjoint(xp, padded_grad, reach: int, mode: str):
    """Adjoint of :func:`pad_spatial` on the last two axes: the gradient of every padded pixel is
    added onto the source pixel it was copied from (nothing for ``"constant"``, whose padding
    holds ``cval``)."""
    if mode == "exclude" or reach == 0:
        return padded_grad
    grad = padded_grad
    for axis in (-2, -1):
        n = grad.shape[axis] - 2 * reach
        if mode == "constant":
            sources = np.pad(np.arange(n), reach, mode="constant", constant_values=-1)
        else:
            sources = np.pad(np.arange(n), reach, mode=_args.NUMPY_PAD_MODES[mode])
        moved = xp.moveaxis(grad, axis, 0)
        folded = moved[reach:reach + n].copy()
        # The border is a few rows or columns wide: a loop of slice additions is cheap and
        # accumulates correctly where several padded positions share a source (wrap, nearest).
        for position in (*range(reach), *range(reach + n, n + 2 * reach)):
            source = int(sources[position])
            if source >= 0:
                folded[source] += moved[position]
        grad = xp.moveaxis(folded, 0, axis)
    return grad


@dataclass(frozen=True)
class BilateralProblem:
    """A validated :func:`pacarray.bilateral_filter` call, in the planar layout."""

    xp: object
    planar: object                # (C, H, W) image in the computation dtype
    guide_planar: object          # (G, H, W) guide in the computation dtype, or None
    image_dtype: np.dtype         # the image's dtype after the filters' dtype policy
    guide_dtype: np.dtype | None
    image_axis: int | None        # normalized channel axis of the image
    guide_layout: tuple | None    # (ndim, normalized channel axis) of the guide
    sigma_spatial: float
    sigma_color: float
    radius: int                   # the window's radius (the disk's extent)
    window: str
    color_distance: str
    mode: str
    cval: float

    @property
    def dtype(self):
        return self.planar.dtype

    @property
    def reach(self) -> int:
        """Taps actually used: weights beyond it underflow to 0."""
        return effective_radius(self.radius, self.sigma_spatial, self.dtype)

    @property
    def size(self) -> int:
        return 2 * self.reach + 1

    @property
    def guide_channels(self) -> int:
        return (self.planar if self.guide_planar is None else self.guide_planar).shape[0]

    def squared_offsets(self):
        offsets = np.arange(-self.reach, self.reach + 1)
        return offsets[:, None] ** 2 + offsets[None, :] ** 2

    def spatial_weights(self):
        """The float64 spatial weight (Gaussian, zero outside the disk) over ``size x size``."""
        weights = spatial_window(self.size, self.sigma_spatial)
        if self.window == "disk":
            weights = weights * (self.squared_offsets() <= self.radius * self.radius)
        return weights

    def taps(self):
        """Offsets ``dy, dx`` and log spatial weights of the window's taps, without the taps
        whose weight the CPU kernels' exponential flushes to zero anyway."""
        offsets = np.arange(-self.reach, self.reach + 1)
        dy, dx = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
        if self.window == "disk":
            keep = dy * dy + dx * dx <= self.radius * self.radius
        else:
            keep = np.ones(dy.shape, dtype=bool)
        log_weight = -(dy * dy + dx * dx) / (2.0 * self.sigma_spatial * self.sigma_spatial)
        keep &= log_weight >= FLUSH_EXPONENT[self.dtype]
        return dy[keep], dx[keep], log_weight[keep]

    def pool_inputs(self):
        """``(x, features, keywords)``: the filter is ``pac_pool(x, size, **keywords)[0]``, a
        Gaussian family on the border-extended guide divided by ``sigma_color``, the spatial
        weight and ``normalize="kernel"``; ``features`` is that scaled guide ``(G, H', W')``."""
        xp, dtype = self.xp, self.dtype
        source = self.planar if self.guide_planar is None else self.guide_planar
        x = pad_spatial(xp, self.planar, self.reach, self.mode, self.cval)
        features = (pad_spatial(xp, source, self.reach, self.mode, self.cval)
                    * dtype.type(1 / self.sigma_color))
        keywords = dict(
            guide=features[None], family=Gaussian(),
            padding=self.reach if self.mode == "exclude" else 0,
            spatial_weight=xp.asarray(self.spatial_weights(), dtype=dtype),
            normalize="kernel",
        )
        return x[None], features, keywords


def problem(xp, image, guide, *, sigma_spatial, sigma_color, radius, window, color_distance,
            mode, cval, channel_axis) -> BilateralProblem:
    """Validate a bilateral-filter call (every check, in a fixed order) and return the problem."""
    image = _args.as_float_image(xp, image)
    planar, axis = _args.channels_first(image, channel_axis)
    spatial_shape = tuple(planar.shape[1:])
    guide_planar = guide_dtype = guide_layout = None
    if guide is not None:
        guide = _args.as_float_image(xp, guide, "guide")
        guide_planar = _args.guide_planar(guide, channel_axis, spatial_shape)
        guide_dtype = guide.dtype
        guide_axis = None if guide.ndim == 2 else (-1 if channel_axis is None else channel_axis)
        guide_layout = (guide.ndim, None if guide_axis is None else int(guide_axis) % 3)
    dtype = _args.float_result_dtype(image, guide_planar)
    sigma_spatial = _args.positive_scalar(sigma_spatial, "sigma_spatial")
    sigma_color = _args.positive_scalar(sigma_color, "sigma_color")
    window = _args.check_choice(window, "window", ("disk", "square"))
    color_distance = _args.check_choice(color_distance, "color_distance", ("l2", "l1"))
    mode = _args.check_choice(mode, "mode", _args.MODES)
    cval = _args.finite_scalar(cval, "cval")
    radius = _args.radius_value(radius, sigma_spatial, 3.0, spatial_shape)
    _args.inverse_fits_dtype(sigma_color, "sigma_color", dtype)
    _args.fits_dtype(cval, "cval", dtype)
    return BilateralProblem(
        xp=xp, planar=planar.astype(dtype, copy=False),
        guide_planar=None if guide_planar is None else guide_planar.astype(dtype, copy=False),
        image_dtype=image.dtype, guide_dtype=guide_dtype, image_axis=axis,
        guide_layout=guide_layout, sigma_spatial=sigma_spatial, sigma_color=sigma_color,
        radius=radius, window=window, color_distance=color_distance, mode=mode, cval=cval,
    )


# --------------------------------------------------------------------------------------------
# Joint bilateral upsampling (Kopf et al.): the sample geometry shared by every backend


def nearest_sample(positions, factor):
    """Index of the sample whose centre ``(j + 1/2) * factor - 1/2`` is nearest (ties up)."""
    return (2 * positions + 1) // (2 * factor)


def axis_taps(size, low_size, factor, radius, sigma_spatial):
    """Along one axis, for tap t of the 2r + 1 nearest samples of every output position p:
    the sample index ``nearest(p) + t - r``, its log spatial weight (-inf where the sample does
    not exist), and the contiguous range of p where it exists."""
    positions = np.arange(size)
    offsets = np.arange(-radius, radius + 1)
    samples = nearest_sample(positions, factor)[None, :] + offsets[:, None]
    distance = (positions[None, :] + 0.5) / factor - (samples + 0.5)
    exists = (samples >= 0) & (samples < low_size)
    log_weight = np.where(exists, -distance**2 / (2.0 * sigma_spatial**2), -np.inf)
    start = np.argmax(exists, axis=1)
    stop = size - np.argmax(exists[:, ::-1], axis=1)
    stop = np.where(exists.any(axis=1), stop, start)
    return samples, log_weight, start, stop


@dataclass(frozen=True)
class UpsampleProblem:
    """A validated :func:`pacarray.joint_bilateral_upsample` call, in the planar layout."""

    xp: object
    low_planar: object       # (C, h, w) in the computation dtype
    guide_planar: object     # (G, H, W) in the computation dtype
    guide_samples: object    # (G, h, w): the guide at each sample's position
    factors: tuple           # integer factor per axis
    radius: int
    rows: tuple              # axis_taps along the rows
    cols: tuple              # axis_taps along the columns
    range_coef: float        # 1 / (2 sigma_color**2)
    channel_axis: int | None  # normalized channel axis of the low-resolution image
