"""Adaptive kernel families, smoothing of the centre feature, spatial windows and ``pac_kernel``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _args
from ._dispatch import backend_module
from ._geometry import kernel_geometry, make_geometry
from ._spec import prepare_kernel

__all__ = ["Gaussian", "InversePower", "spatial_window", "pac_kernel"]

@dataclass(frozen=True)
class Gaussian:
    """Gaussian adaptive kernel ``exp(-1/2 * sum_f (fc_f - fq_f)**2)``.

    ``fc`` is the centre pixel's feature vector (optionally smoothed) and ``fq`` the neighbour's.
    The kernel has no parameters: scale the guide features to set the bandwidths (divide colour
    by ``sigma_color``, positions by ``sigma_spatial``).

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import Gaussian, pac_kernel
    >>> guide = np.zeros((1, 1, 3, 3)); guide[0, 0, 1, 2] = 1.0
    >>> K = pac_kernel(guide, 3, padding=1, family=Gaussian())
    >>> round(float(K[0, 0, 1, 2, 1, 1]), 4)  # centre (1,1) vs neighbour (1,2): exp(-1/2)
    0.6065
    """


def _per_channel(value, name: str) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(value, dtype=object if value is None else None))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a number or a 1-D sequence of numbers, got {value!r}")
    return tuple(_args.finite_scalar(v, name) for v in values)


@dataclass(frozen=True)
class InversePower:
    """Inverse-power adaptive kernel ``alpha + (d2 + eps**2)**(lambda_/2)``.

    ``d2 = sum_f (fc_f - fq_f)**2``, or with ``asymmetric=True``
    ``d2 = sum_f max(0, fc_f - fq_f)**2`` (only neighbours darker than the centre count; negate
    the guide to use the other sign). This is the kernel of detail-preserving pooling
    (Saeedan et al. 2018).

    Parameters
    ----------
    alpha, lambda_ : float or sequence of float
        Offset and power. A sequence gives one value per guide channel and requires
        ``channel_wise=True`` in the operation (a shared kernel sums over the channels).
    eps : float, default 1e-2
        Keeps the power finite at ``d2 = 0``; must be > 0 when any ``lambda_`` is negative.
    asymmetric : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import InversePower, pac_kernel
    >>> guide = np.zeros((1, 1, 3, 3)); guide[0, 0, 1, 2] = 1.0
    >>> family = InversePower(alpha=0.5, lambda_=2.0, eps=0.0)
    >>> K = pac_kernel(guide, 3, padding=1, family=family)
    >>> float(K[0, 0, 1, 2, 1, 1])  # 0.5 + (1 + 0)**1
    1.5
    """

    alpha: float | tuple[float, ...]
    lambda_: float | tuple[float, ...]
    eps: float = 1e-2
    asymmetric: bool = False
    _alpha: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _lambda: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_alpha", _per_channel(self.alpha, "alpha"))
        object.__setattr__(self, "_lambda", _per_channel(self.lambda_, "lambda_"))
        eps = _args.finite_scalar(self.eps, "eps")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if eps == 0 and min(self._lambda) < 0:
            raise ValueError(
                f"eps must be > 0 when lambda_ is negative (the kernel would be infinite at "
                f"zero distance), got eps={self.eps!r}, lambda_={self.lambda_!r}"
            )
        _args.require_bool(self.asymmetric, "asymmetric")


def spatial_window(kernel_size, sigma=None, *, window="square", dilation=1):
    """Spatial weight ``G`` for a kernel: a Gaussian of the tap offset, square or disk shaped.

    Parameters
    ----------
    kernel_size : int or tuple of int
        Odd number of taps per dimension. The window's rank is the tuple's length (1, 2 or 3:
        a signal, an image or a volume); an int means 2-D.
    sigma : float, tuple of float or None, default None
        Standard deviation in pixels (tap offsets are multiplied by ``dilation``), one for every
        axis or one per axis. ``None`` gives a flat window (all ones inside the window).
    window : {"square", "disk"}, default "square"
        ``"disk"`` zeroes taps outside the inscribed ellipse
        ``(ty/ry)**2 + (tx/rx)**2 <= 1`` (tap index offsets ``ty, tx``, radii ``(k-1)/2``);
        in 3-D the inscribed ellipsoid (a ball for a cube), in 1-D the whole segment.
    dilation : int or tuple of int, default 1

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``kernel_size``, to pass as ``spatial_weight``.

    Examples
    --------
    >>> from pacarray import spatial_window
    >>> spatial_window(3, window="disk")
    array([[0., 1., 0.],
           [1., 1., 1.],
           [0., 1., 0.]])
    >>> spatial_window((3, 3, 3), 1.0, window="disk").shape  # a ball, for volumes
    (3, 3, 3)
    """
    ndim = 2 if _args.is_int(kernel_size) else None
    if ndim is None:
        try:
            ndim = len(kernel_size)
        except TypeError:
            raise TypeError(
                f"kernel_size must be an int or a sequence of 1, 2 or 3 ints, got "
                f"{kernel_size!r}"
            ) from None
        if ndim not in (1, 2, 3):
            raise ValueError(
                f"kernel_size must be an int or a sequence of 1, 2 or 3 ints (one per spatial "
                f"axis), got {kernel_size!r}"
            )
    geometry = make_geometry(kernel_size, dilation=dilation, ndim=ndim)
    if window not in ("square", "disk"):
        raise ValueError(f"window must be 'square' or 'disk', got {window!r}")
    offsets = [np.arange(k) - (k - 1) // 2 for k in geometry.kernel_size]
    grids = np.meshgrid(*offsets, indexing="ij")
    weights = np.ones(geometry.kernel_size)
    if sigma is not None:
        sigmas = _sigmas(sigma, ndim)
        steps = [grid * d for grid, d in zip(grids, geometry.dilation)]
        if len(set(sigmas)) == 1:
            # one sigma: the sum of squares over one denominator (the 2-D values as before)
            squares = steps[0] * steps[0]
            for step in steps[1:]:
                squares = squares + step * step
            weights = np.exp(-squares / (2.0 * sigmas[0] * sigmas[0]))
        else:
            exponent = np.zeros(geometry.kernel_size)
            for step, s in zip(steps, sigmas):
                exponent = exponent - step * step / (2.0 * s * s)
            weights = np.exp(exponent)
    if window == "disk":
        radius2 = np.zeros(geometry.kernel_size)
        for grid, k in zip(grids, geometry.kernel_size):
            r = (k - 1) / 2
            radius2 = radius2 + np.divide(grid, r, out=np.zeros(grid.shape), where=r > 0) ** 2
        weights = np.where(radius2 <= 1.0, weights, 0.0)
    return weights


def _sigmas(sigma, ndim):
    """``sigma`` as a tuple of ``ndim`` positive floats (a scalar or one per axis)."""
    if isinstance(sigma, (tuple, list, np.ndarray)):
        values = tuple(np.asarray(sigma, dtype=object).reshape(-1))
        if np.ndim(sigma) != 1 or len(values) != ndim:
            raise ValueError(
                f"sigma must be a number or a sequence of {ndim} numbers (one per axis of "
                f"kernel_size), got {sigma!r}"
            )
        return tuple(_args.positive_scalar(v, "sigma") for v in values)
    return (_args.positive_scalar(sigma, "sigma"),) * ndim


def pac_kernel(
    guide,
    kernel_size,
    *,
    stride=1,
    padding=0,
    dilation=1,
    family=None,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    channel_wise=False,
    transposed=False,
    output_padding=0,
    return_validity=False,
):
    """Explicit adaptive kernel ``K`` of a pixel-adaptive operation, for inspection or reuse.

    Parameters
    ----------
    guide : array_like, shape (N, F, H, W), or (N, F, L) / (N, F, D, H, W)
        Guide features (float32 or float64), at the data's resolution, or at the output's for
        ``transposed=True``.
    kernel_size : int or tuple of int
        Odd number of taps per spatial dimension.
    stride, padding, dilation : int or tuple of int
        Geometry of the operation the kernel is for. ``padding <= dilation*(kernel_size-1)/2``.
    family : Gaussian or InversePower, default Gaussian()
        Kernel family.
    smooth : None, "gaussian", ("average", m) or array
        Smoothing of the centre feature (zero-padded correlation, same size); an array has the
        guide's spatial rank.
    spatial_weight : array_like, shape kernel_size, optional
        Multiplies the kernel and takes part in the normalization (see :func:`spatial_window`).
    mask : array_like, shape ``(N, 1, *S)``, optional
        Values in [0, 1]; multiplies the kernel at the neighbour position.
    normalize : {None, "kernel", "mask", "mask_kernel"}
        Divide by the sum over in-range taps of ``K*G``, of ``M``, or of ``M*K*G``.
    channel_wise : bool
        One kernel per guide channel instead of one shared kernel.
    transposed : bool
        Kernel for :func:`pac_conv_transpose`: evaluated on the guide (the output grid) with
        stride 1 and padding ``dilation*(kernel_size-1)/2``.
    output_padding : int or tuple of int
        Validated with the transposed geometry; does not change K.
    return_validity : bool
        Also return ``valid = Z != 0`` of shape ``(N, 1|F, *out)``.

    Returns
    -------
    K : ndarray, shape ``(N, 1|F, *kernel_size, *out)``
        ``M[q] * G[a] * kappa(fc, fq) / Z``; 0 for out-of-range taps and where ``Z == 0``.
    valid : ndarray of bool, only with ``return_validity=True``

    Raises
    ------
    ValueError, TypeError
        For invalid geometry, shapes, dtypes or options (the message names the parameter).

    Notes
    -----
    Signals ``(N, F, L)`` and volumes ``(N, F, D, H, W)`` work the same way as images: every
    geometry argument is then an int or a tuple of that many ints (``docs/design.md`` §7).
    For output position ``i`` and tap ``a`` the neighbour is ``q = i*s - p + a*d`` and the centre
    ``c = i*s - p + d*(k-1)/2``; ``kappa`` is the family's formula evaluated on the centre's
    (optionally smoothed) features and the neighbour's features (Su et al., "Pixel-Adaptive
    Convolutional Neural Networks", CVPR 2019, doi:10.1109/CVPR.2019.01142).

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_kernel, spatial_window
    >>> guide = np.random.default_rng(0).random((1, 3, 8, 8))
    >>> K = pac_kernel(guide / 0.1, 5, padding=2, normalize="kernel",
    ...                spatial_weight=spatial_window(5, 2.0))
    >>> K.shape
    (1, 1, 5, 5, 8, 8)
    >>> bool(np.allclose(K.sum(axis=(2, 3)), 1.0))
    True
    """
    backend, _, geometry, _, spec, out_shape = prepare_kernel(
        guide, kernel_size, stride=stride, padding=padding, dilation=dilation, family=family,
        smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
        channel_wise=channel_wise, transposed=transposed, output_padding=output_padding,
    )
    module = backend_module(backend)
    k_stride, k_padding = kernel_geometry(geometry)
    K, valid = module.materialize_kernel(
        spec, geometry.kernel_size, k_stride, k_padding, geometry.dilation, out_shape
    )
    if _args.require_bool(return_validity, "return_validity"):
        return K, valid
    return K


