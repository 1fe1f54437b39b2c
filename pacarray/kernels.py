"""Adaptive kernel families, smoothing of the centre feature, spatial windows and ``pac_kernel``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _args
from ._dispatch import backend_module, namespace, select_backend
from ._geometry import Geometry, as_tuple, kernel_geometry, make_geometry

__all__ = ["Gaussian", "InversePower", "spatial_window", "pac_kernel"]

FAMILY_CONSTANT, FAMILY_GAUSSIAN, FAMILY_INVERSE, FAMILY_INVERSE_ASYMMETRIC = 0, 1, 2, 3
NORMALIZE_CODES = {None: 0, "kernel": 1, "mask": 2, "mask_kernel": 3}


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
        Odd number of taps per dimension.
    sigma : float or None, default None
        Standard deviation in pixels (tap offsets are multiplied by ``dilation``). ``None`` gives
        a flat window (all ones inside the window).
    window : {"square", "disk"}, default "square"
        ``"disk"`` zeroes taps outside the inscribed ellipse
        ``(ty/ry)**2 + (tx/rx)**2 <= 1`` (tap index offsets ``ty, tx``, radii ``(k-1)/2``).
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
    """
    geometry = make_geometry(kernel_size, dilation=dilation)
    if window not in ("square", "disk"):
        raise ValueError(f"window must be 'square' or 'disk', got {window!r}")
    offsets = [np.arange(k) - (k - 1) // 2 for k in geometry.kernel_size]
    ty, tx = np.meshgrid(*offsets, indexing="ij")
    weights = np.ones(geometry.kernel_size)
    if sigma is not None:
        sigma = _args.finite_scalar(sigma, "sigma")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        dy = ty * geometry.dilation[0]
        dx = tx * geometry.dilation[1]
        weights = np.exp(-(dy * dy + dx * dx) / (2.0 * sigma * sigma))
    if window == "disk":
        ry, rx = ((k - 1) / 2 for k in geometry.kernel_size)
        inside = (np.divide(ty, ry, out=np.zeros(ty.shape), where=ry > 0) ** 2
                  + np.divide(tx, rx, out=np.zeros(tx.shape), where=rx > 0) ** 2) <= 1.0
        weights = np.where(inside, weights, 0.0)
    return weights


def smoothing_weights(smooth):
    """The 2-D smoothing kernel for the centre feature, or None."""
    if smooth is None:
        return None
    if isinstance(smooth, str):
        if smooth != "gaussian":
            raise ValueError(
                f"smooth must be None, 'gaussian', ('average', m) or a 2-D array, got {smooth!r}"
            )
        taps = np.array([1.0, 2.0, 1.0])
        return np.outer(taps, taps) / 16.0
    if isinstance(smooth, tuple) and len(smooth) == 2 and isinstance(smooth[0], str):
        name, size = smooth
        if name != "average":
            raise ValueError(f"smooth must be ('average', m), got {smooth!r}")
        (m,) = as_tuple(size, "smooth size", 1)
        if m < 1 or m % 2 == 0:
            raise ValueError(f"smooth size m must be positive and odd, got {size!r}")
        return np.full((m, m), 1.0 / (m * m))
    return smooth


@dataclass
class KernelSpec:
    """Everything a backend needs to produce the adaptive kernel, already validated.

    ``explicit`` is an ``(N, Fk, T, Ho, Wo)`` array on the explicit path, else None. The other
    fields describe the fused computation (``guide``/``centre``/``mask`` are small dummies when
    absent so that backends see fixed types).
    """

    explicit: object
    guide: object
    centre: object
    guide_shape: tuple[int, int]
    family: int
    alpha: object
    lam: object
    eps2: float
    spatial: object
    mask: object
    has_mask: bool
    normalize: int
    channel_wise: bool
    fk_count: int

    @property
    def use_explicit(self) -> bool:
        return self.explicit is not None


def resolve_family(family, have_guide: bool):
    """Integer family code; ``family=None`` means Gaussian when a guide is given."""
    if family is None:
        return Gaussian() if have_guide else None
    if not have_guide:
        raise ValueError(
            f"family={family!r} was given without a guide; pass guide= to compute an adaptive "
            "kernel (without a guide the kernel is 1)"
        )
    if not isinstance(family, (Gaussian, InversePower)):
        raise TypeError(
            f"family must be a kernel family object such as pacarray.Gaussian() or "
            f"pacarray.InversePower(alpha=..., lambda_=...), got {family!r}"
        )
    return family


def build_spec(
    xp,
    dtype,
    geometry: Geometry,
    *,
    guide,
    guide_shape,
    batch,
    channels,
    family,
    smooth,
    spatial_weight,
    mask,
    normalize,
    channel_wise,
    backend,
):
    """Validate the fused kernel description and return a :class:`KernelSpec`.

    ``guide`` (already converted to ``dtype`` or None) must have spatial shape ``guide_shape``;
    ``channels`` is the data's channel count (None for ``pac_kernel``) for the channel-wise check.
    """
    if normalize not in NORMALIZE_CODES:
        raise ValueError(
            f"normalize must be one of None, 'kernel', 'mask', 'mask_kernel', got {normalize!r}"
        )
    _args.require_bool(channel_wise, "channel_wise")
    family = resolve_family(family, guide is not None)
    if guide is not None:
        _args.require_ndim(guide, 4, "guide", "(N, F, H, W)")
        if guide.shape[0] != batch:
            raise ValueError(
                f"guide batch size {guide.shape[0]} does not match the data's batch size {batch} "
                f"(guide shape {tuple(guide.shape)})"
            )
        if tuple(guide.shape[2:]) != tuple(guide_shape):
            raise ValueError(
                f"guide spatial shape {tuple(guide.shape[2:])} must be {tuple(guide_shape)} "
                f"(guide shape {tuple(guide.shape)})"
            )
        features = guide.shape[1]
    else:
        if channel_wise:
            raise ValueError("channel_wise=True requires a guide (without one the kernel is 1)")
        if smooth is not None:
            raise ValueError(f"smooth={smooth!r} was given without a guide")
        features = 1
    if channel_wise and channels is not None and features != channels:
        raise ValueError(
            f"channel_wise=True needs one guide channel per data channel: guide has {features} "
            f"channels, the data has {channels}"
        )
    fk_count = features if channel_wise else 1

    if isinstance(family, InversePower):
        code = FAMILY_INVERSE_ASYMMETRIC if family.asymmetric else FAMILY_INVERSE
        alpha, lam = family._alpha, family._lambda
        for name, values in (("alpha", alpha), ("lambda_", lam)):
            if len(values) > 1 and not channel_wise:
                raise ValueError(
                    f"per-channel {name} ({len(values)} values) requires channel_wise=True; "
                    "a shared kernel takes a scalar"
                )
            if len(values) > 1 and len(values) != features:
                raise ValueError(
                    f"{name} has {len(values)} values but the guide has {features} channels"
                )
        alpha = np.broadcast_to(np.asarray(alpha), (fk_count,))
        lam = np.broadcast_to(np.asarray(lam), (fk_count,))
        eps2 = float(family.eps) ** 2
    else:
        code = FAMILY_GAUSSIAN if isinstance(family, Gaussian) else FAMILY_CONSTANT
        alpha = np.zeros(fk_count)
        lam = np.zeros(fk_count)
        eps2 = 0.0

    spatial = np.ones(geometry.kernel_size)
    if spatial_weight is not None:
        spatial_weight = _args.convert(xp, spatial_weight, "spatial_weight")
        _args.require_float(spatial_weight, "spatial_weight")
        if tuple(spatial_weight.shape) != geometry.kernel_size:
            raise ValueError(
                f"spatial_weight must have shape kernel_size={geometry.kernel_size}, "
                f"got {tuple(spatial_weight.shape)}"
            )
        spatial = spatial_weight

    has_mask = mask is not None
    if has_mask:
        mask = _args.convert(xp, mask, "mask")
        if mask.dtype.kind == "c":
            raise TypeError(f"mask must be real, got dtype {mask.dtype}")
        expected = (batch, 1, *guide_shape)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
        if xp is np and not bool(np.all((mask >= 0) & (mask <= 1))):
            raise ValueError("mask values must lie in [0, 1] (and not be NaN)")
        mask = _args.cast(xp, mask.reshape(batch, *guide_shape), dtype)
    elif normalize in ("mask", "mask_kernel"):
        raise ValueError(f"normalize={normalize!r} requires a mask")
    else:
        mask = xp.zeros((1, 1, 1), dtype)

    module = backend_module(backend)
    if guide is not None:
        weights = smoothing_weights(smooth)
        if weights is not None:
            weights = _args.convert(xp, weights, "smooth")
            _args.require_float(weights, "smooth")
            if weights.ndim != 2 or any(s % 2 == 0 for s in weights.shape):
                raise ValueError(
                    f"a smooth array must be 2-D with odd sides, got shape {tuple(weights.shape)}"
                )
            centre = module.smooth(guide, _args.cast(xp, weights, dtype))
        else:
            centre = guide
    else:
        guide = centre = xp.zeros((1, 1, 1, 1), dtype)

    return KernelSpec(
        explicit=None,
        guide=guide,
        centre=centre,
        guide_shape=tuple(guide_shape),
        family=code,
        alpha=_args.cast(xp, xp.asarray(alpha), dtype),
        lam=_args.cast(xp, xp.asarray(lam), dtype),
        eps2=eps2,
        spatial=_args.cast(xp, xp.asarray(spatial), dtype),
        mask=mask,
        has_mask=has_mask,
        normalize=NORMALIZE_CODES[normalize],
        channel_wise=bool(channel_wise),
        fk_count=fk_count,
    )


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
    guide : array_like, shape (N, F, H, W)
        Guide features (float32 or float64), at the data's resolution, or at the output's for
        ``transposed=True``.
    kernel_size : int or tuple of int
        Odd number of taps per spatial dimension.
    stride, padding, dilation : int or tuple of int
        Geometry of the operation the kernel is for. ``padding <= dilation*(kernel_size-1)/2``.
    family : Gaussian or InversePower, default Gaussian()
        Kernel family.
    smooth : None, "gaussian", ("average", m) or 2-D array
        Smoothing of the centre feature (zero-padded correlation, same size).
    spatial_weight : array_like, shape kernel_size, optional
        Multiplies the kernel and takes part in the normalization (see :func:`spatial_window`).
    mask : array_like, shape (N, 1, H, W), optional
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
        Also return ``valid = Z != 0`` of shape ``(N, 1|F, Ho, Wo)``.

    Returns
    -------
    K : ndarray, shape (N, 1|F, kh, kw, Ho, Wo)
        ``M[q] * G[a] * kappa(fc, fq) / Z``; 0 for out-of-range taps and where ``Z == 0``.
    valid : ndarray of bool, only with ``return_validity=True``

    Raises
    ------
    ValueError, TypeError
        For invalid geometry, shapes, dtypes or options (the message names the parameter).

    Notes
    -----
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
    if return_validity:
        return K, valid
    return K


def prepare_kernel(
    guide, kernel_size, *, stride, padding, dilation, family, smooth, spatial_weight, mask,
    normalize, channel_wise, transposed, output_padding, other_arrays=None,
):
    """Validate :func:`pac_kernel`'s arguments once (shared with its gradient).

    ``other_arrays`` (name -> array) take part in the backend choice only. Returns
    ``(backend, xp, geometry, guide, spec, out_shape)`` with ``guide`` converted.
    """
    backend = select_backend(
        **(other_arrays or {}), guide=guide, spatial_weight=spatial_weight, mask=mask
    )
    xp = namespace(backend)
    guide = _args.convert(xp, guide, "guide")
    _args.require_float(guide, "guide")
    _args.require_ndim(guide, 4, "guide", "(N, F, H, W)")
    if spatial_weight is not None:
        spatial_weight = _args.convert(xp, spatial_weight, "spatial_weight")
        _args.require_float(spatial_weight, "spatial_weight")
    dtype = _args.compute_dtype(guide, spatial_weight)
    geometry = make_geometry(
        kernel_size, stride, padding, dilation, output_padding, transposed=transposed
    )
    guide_shape = tuple(guide.shape[2:])
    if transposed:
        out_shape = guide_shape
    else:
        out_shape = geometry.checked_output_shape(guide_shape, "guide")
    spec = build_spec(
        xp,
        dtype,
        geometry,
        guide=_args.cast(xp, guide, dtype),
        guide_shape=guide_shape,
        batch=guide.shape[0],
        channels=None,
        family=family,
        smooth=smooth,
        spatial_weight=spatial_weight,
        mask=mask,
        normalize=normalize,
        channel_wise=channel_wise,
        backend=backend,
    )
    return backend, xp, geometry, guide, spec, out_shape


def explicit_spec(xp, kernel, dtype, batch, channels, kernel_size, out_shape):
    """Validate an explicit ``K`` array for an operation and wrap it in a :class:`KernelSpec`."""
    _args.require_ndim(kernel, 6, "kernel", "(N, 1|C, kh, kw, Ho, Wo)")
    n, fk, kh, kw, ho, wo = kernel.shape
    expected_tail = (*kernel_size, *out_shape)
    if n != batch or fk not in (1, channels) or (kh, kw, ho, wo) != expected_tail:
        raise ValueError(
            f"kernel must have shape ({batch}, 1 or {channels}, "
            f"{', '.join(map(str, expected_tail))}) for this operation, got {tuple(kernel.shape)}"
        )
    explicit = _args.cast(xp, kernel, dtype).reshape(n, fk, kh * kw, ho, wo)
    dummy4 = xp.zeros((1, 1, 1, 1), dtype)
    zeros = xp.zeros(1, dtype)
    return KernelSpec(
        explicit=explicit,
        guide=dummy4,
        centre=dummy4,
        guide_shape=(1, 1),
        family=FAMILY_CONSTANT,
        alpha=zeros,
        lam=zeros,
        eps2=0.0,
        spatial=xp.ones(kernel_size, dtype),
        mask=xp.zeros((1, 1, 1), dtype),
        has_mask=False,
        normalize=0,
        channel_wise=fk > 1,
        fk_count=fk,
    )
