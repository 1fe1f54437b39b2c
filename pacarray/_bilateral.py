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
    exactly 0): a large explicit radius with a small sigma costs nothing extra. Per axis, with
    ``sigma_spatial`` in pixels along that axis."""
    reach = math.sqrt(-2.0 * FLUSH_EXPONENT[np.dtype(dtype)]) * sigma_spatial
    return min(radius, int(math.floor(reach)))


def _spatial_axes(reach):
    """The spatial axes that ``reach`` (an int: the last two, as before volumes; a tuple: one
    per trailing axis) pads."""
    return (-2, -1) if isinstance(reach, int) else tuple(range(-len(reach), 0))


def pad_spatial(xp, planar, reach, mode: str, cval: float):
    """``planar`` ``(C, *S)`` extended by ``reach`` pixels on each side of each spatial axis with
    ``mode`` (unchanged for ``"exclude"``, whose out-of-image taps are dropped instead).
    ``reach``: one int for the last two axes, or a tuple, one per spatial axis."""
    axes = _spatial_axes(reach)
    reaches = (reach,) * 2 if isinstance(reach, int) else tuple(reach)
    if mode == "exclude" or not any(reaches):
        return planar
    widths = ((0, 0),) * (planar.ndim - len(axes)) + tuple((r, r) for r in reaches)
    if mode == "constant":
        return xp.pad(planar, widths, mode="constant", constant_values=cval)
    return xp.pad(planar, widths, mode=_args.NUMPY_PAD_MODES[mode])


def unpad_adjoint(xp, padded_grad, reach, mode: str):
    """Adjoint of :func:`pad_spatial`: the gradient of every padded pixel is added onto the
    source pixel it was copied from (nothing for ``"constant"``, whose padding holds
    ``cval``)."""
    axes = _spatial_axes(reach)
    reaches = (reach,) * 2 if isinstance(reach, int) else tuple(reach)
    if mode == "exclude":
        return padded_grad
    grad = padded_grad
    for axis, reach in zip(axes, reaches):
        if reach == 0:
            continue
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
    """A validated :func:`pacarray.bilateral_filter` call, in the planar layout.

    The spatial rank ``r`` (1, 2 or 3) is that of the planes; every per-axis field has ``r``
    entries. Distances are physical: the offset of a tap along axis i is ``o_i * spacing[i]``,
    and its spatial weight ``exp(-sum((o_i spacing_i / sigma_i)^2) / 2)``
    (``docs/design.md`` §2).
    """

    xp: object
    planar: object                # (C, *S) image in the computation dtype
    guide_planar: object          # (G, *S) guide in the computation dtype, or None
    image_dtype: np.dtype         # the image's dtype after the filters' dtype policy
    guide_dtype: np.dtype | None
    image_axis: int | None        # normalized channel axis of the image
    guide_layout: tuple | None    # (ndim, normalized channel axis or None) of the guide
    sigma_spatial: tuple          # per spatial axis, physical units
    spacing: tuple                # per spatial axis: physical size of a pixel
    sigma_color: float
    radius: tuple                 # the window's radius per axis, in pixels (the disk's extent)
    window: str
    color_distance: str
    mode: str
    cval: float

    @property
    def dtype(self):
        return self.planar.dtype

    @property
    def ndim(self) -> int:
        """Spatial rank."""
        return self.planar.ndim - 1

    @property
    def pixel_sigma(self) -> tuple:
        """Spatial standard deviation per axis in pixels of that axis."""
        return tuple(s / d for s, d in zip(self.sigma_spatial, self.spacing))

    @property
    def reach(self) -> tuple:
        """Taps actually used per axis: weights beyond it underflow to 0."""
        return tuple(effective_radius(r, s, self.dtype)
                     for r, s in zip(self.radius, self.pixel_sigma))

    @property
    def size(self) -> tuple:
        return tuple(2 * r + 1 for r in self.reach)

    @property
    def guide_channels(self) -> int:
        return (self.planar if self.guide_planar is None else self.guide_planar).shape[0]

    def _offsets(self):
        """Offsets of every tap of the ``size`` box, one array per axis, in C order."""
        return np.meshgrid(*(np.arange(-r, r + 1) for r in self.reach), indexing="ij")

    def _log_weights(self, offsets):
        sigmas = self.pixel_sigma
        if len(set(sigmas)) == 1:
            # Isotropic in pixels: the 2-D formula as it always was (bit for bit).
            return -sum(o * o for o in offsets) / (2.0 * sigmas[0] * sigmas[0])
        return -0.5 * sum((o / s) ** 2 for o, s in zip(offsets, sigmas))

    def _inside(self, offsets):
        """The window: the box, or for ``"disk"`` the inscribed ellipse / ellipsoid of the
        radii (axes of radius 0 hold only the offset 0)."""
        if self.window != "disk":
            return np.ones(offsets[0].shape, dtype=bool)
        if len(set(self.radius)) == 1:
            radius = self.radius[0]
            return sum(o * o for o in offsets) <= radius * radius
        return sum(np.divide(o, r, out=np.zeros(o.shape), where=r > 0) ** 2
                   for o, r in zip(offsets, self.radius)) <= 1.0

    def log_weight_slopes(self):
        """``d log G / d sigma_i`` per axis i and tap of the ``size`` box:
        ``(o_i spacing_i)^2 / sigma_i^3``, an array ``(r, *size)``."""
        offsets = self._offsets()
        return np.stack([(o * d) ** 2 / s**3 for o, d, s in
                         zip(offsets, self.spacing, self.sigma_spatial)])

    def spatial_weights(self):
        """The float64 spatial weight (Gaussian, zero outside the disk) over the ``size`` box."""
        return gaussian_window(self.reach, self.pixel_sigma) * self._inside(self._offsets())

    def taps(self):
        """Offsets (one array per axis, C order) and log spatial weights of the window's taps,
        without the taps whose weight the CPU kernels' exponential flushes to zero anyway."""
        offsets = self._offsets()
        log_weight = self._log_weights(offsets)
        keep = self._inside(offsets) & (log_weight >= FLUSH_EXPONENT[self.dtype])
        return tuple(o[keep] for o in offsets), log_weight[keep]

    def pool_inputs(self):
        """``(x, features, keywords)``: the filter is ``pac_pool(x, size, **keywords)[0]``, a
        Gaussian family on the border-extended guide divided by ``sigma_color``, the spatial
        weight and ``normalize="kernel"``; ``features`` is that scaled guide ``(G, *S')``."""
        xp, dtype = self.xp, self.dtype
        source = self.planar if self.guide_planar is None else self.guide_planar
        reach = self.reach
        x = pad_spatial(xp, self.planar, reach, self.mode, self.cval)
        features = (pad_spatial(xp, source, reach, self.mode, self.cval)
                    * dtype.type(1 / self.sigma_color))
        keywords = dict(
            guide=features[None], family=Gaussian(),
            padding=reach if self.mode == "exclude" else 0,
            spatial_weight=_args.constant(xp, self.spatial_weights(), dtype),
            normalize="kernel",
        )
        return x[None], features, keywords


def gaussian_window(reach, pixel_sigma):
    """The float64 spatial Gaussian ``exp(-sum_i (o_i / sigma_i)^2 / 2)`` over the box of
    ``reach`` (one radius per axis), ``sigma_i`` in pixels of axis i; exactly the core's
    :func:`~pacarray.kernels.spatial_window` for an isotropic 2-D window."""
    size = tuple(2 * r + 1 for r in reach)
    if len(reach) == 2 and len(set(pixel_sigma)) == 1:
        return spatial_window(size, pixel_sigma[0])
    offsets = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    if len(set(pixel_sigma)) == 1:
        return np.exp(-sum(o * o for o in offsets) / (2.0 * pixel_sigma[0] * pixel_sigma[0]))
    return np.exp(-0.5 * sum((o / s) ** 2 for o, s in zip(offsets, pixel_sigma)))


def per_axis(value, name: str, ndim: int, spatial_shape, *, default=None):
    """A positive finite scalar, or a sequence of ``ndim`` of them (one per spatial axis), as a
    tuple of ``ndim`` floats; ``None`` gives ``default``."""
    if value is None and default is not None:
        return (float(default),) * ndim
    if isinstance(value, (str, bytes)) or np.ndim(value) == 0:
        return (_args.positive_scalar(value, name),) * ndim
    if np.ndim(value) != 1 or len(value) != ndim:
        raise ValueError(
            f"{name} must be a scalar or a sequence of {ndim} values, one per spatial axis of "
            f"the image's spatial shape {tuple(spatial_shape)}; got {name}={value!r} of shape "
            f"{np.shape(value)}"
        )
    return tuple(_args.positive_scalar(v, name) for v in value)


def radius_per_axis(radius, pixel_sigma, sigmas: float, spatial_shape):
    """``radius`` (None, an int or one int per axis) as a tuple of ints; the default is
    ``ceil(sigmas * sigma_i)`` per axis, with ``sigma_i`` in that axis's pixels."""
    ndim = len(spatial_shape)
    if radius is None:
        return tuple(_args.radius_value(None, s, sigmas, spatial_shape) for s in pixel_sigma)
    if isinstance(radius, (tuple, list)):
        if len(radius) != ndim:
            raise ValueError(
                f"radius must be an int or a sequence of {ndim} ints, one per spatial axis of "
                f"the image's spatial shape {tuple(spatial_shape)}; got {radius!r}"
            )
        return tuple(_args.radius_value(r, s, sigmas, spatial_shape)
                     for r, s in zip(radius, pixel_sigma))
    return (_args.radius_value(radius, pixel_sigma[0], sigmas, spatial_shape),) * ndim


def problem(xp, image, guide, *, sigma_spatial, sigma_color, radius, window, color_distance,
            mode, cval, channel_axis, spacing=None) -> BilateralProblem:
    """Validate a bilateral-filter call (every check, in a fixed order) and return the problem."""
    image = _args.as_float_image(xp, image)
    planar, axis = _args.channels_first(image, channel_axis, ranks=(1, 2, 3))
    spatial_shape = tuple(planar.shape[1:])
    ndim = len(spatial_shape)
    guide_planar = guide_dtype = guide_layout = None
    if guide is not None:
        guide = _args.as_float_image(xp, guide, "guide")
        guide_planar = _args.guide_planar(guide, channel_axis, spatial_shape)
        guide_dtype = guide.dtype
        guide_axis = None if guide.ndim == ndim else (
            -1 if channel_axis is None else channel_axis)
        guide_layout = (guide.ndim, None if guide_axis is None else int(guide_axis) % guide.ndim)
    dtype = _args.float_result_dtype(image, guide_planar)
    sigma_spatial = per_axis(sigma_spatial, "sigma_spatial", ndim, spatial_shape)
    spacing = per_axis(spacing, "spacing", ndim, spatial_shape, default=1.0)
    sigma_color = _args.positive_scalar(sigma_color, "sigma_color")
    window = _args.check_choice(window, "window", ("disk", "square"))
    color_distance = _args.check_choice(color_distance, "color_distance", ("l2", "l1"))
    mode = _args.check_choice(mode, "mode", _args.MODES)
    cval = _args.finite_scalar(cval, "cval")
    pixel_sigma = tuple(s / d for s, d in zip(sigma_spatial, spacing))
    radius = radius_per_axis(radius, pixel_sigma, 3.0, spatial_shape)
    _args.inverse_fits_dtype(sigma_color, "sigma_color", dtype)
    _args.fits_dtype(cval, "cval", dtype)
    return BilateralProblem(
        xp=xp, planar=planar.astype(dtype, copy=False),
        guide_planar=None if guide_planar is None else guide_planar.astype(dtype, copy=False),
        image_dtype=image.dtype, guide_dtype=guide_dtype, image_axis=axis,
        guide_layout=guide_layout, sigma_spatial=sigma_spatial, spacing=spacing,
        sigma_color=sigma_color, radius=radius, window=window, color_distance=color_distance,
        mode=mode, cval=cval,
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
    low_planar: object       # (C, *s) in the computation dtype (s: 2 or 3 spatial axes)
    guide_planar: object     # (G, *S) in the computation dtype
    guide_samples: object    # (G, *s): the guide at each sample's position
    factors: tuple           # integer factor per axis
    radius: int
    taps: tuple              # axis_taps along each spatial axis
    range_coef: float        # 1 / (2 sigma_color**2)
    channel_axis: int | None  # normalized channel axis of the result (in the problem's rank)

    @property
    def rows(self):
        return self.taps[-2]

    @property
    def cols(self):
        return self.taps[-1]
