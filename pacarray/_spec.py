"""The validated description of an adaptive kernel: the layer between the front ends and the
backends (``docs/design.md`` §3).

Front ends (``kernels.pac_kernel``, ``ops``, ``gradients``) turn the user's keywords into a
:class:`KernelSpec` here, once; backends read its fields and never validate. The smoothing of the
centre feature and its adjoint are array code that works the same on every backend, so they live
here too, as does :class:`KernelGrads`, the shape of the gradients a backend returns for a fused
kernel's inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _args
from ._codes import (
    FAMILY_CONSTANT,
    FAMILY_GAUSSIAN,
    FAMILY_INVERSE,
    FAMILY_INVERSE_ASYMMETRIC,
    NORMALIZE_CODES,
)
from ._dispatch import device_of as _device_of
from ._dispatch import namespace, namespace_of, ndimage, select_backend
from ._geometry import (
    KERNEL_HALF_WIDTH_FLOOR,
    Geometry,
    as_tuple,
    data_rank,
    make_geometry,
    require_nonempty,
    require_rank,
)
from . import kernels as _families  # families are public; imported as a module (cycle)


def smoothing_weights(smooth, grid_shape=None, ndim=2):
    """The ``ndim``-D smoothing kernel for the centre feature, or None.

    With ``grid_shape`` (the guide's spatial shape) an ``("average", m)`` box wider than the
    largest kernel :meth:`Geometry.check_kernel_fits` accepts there raises ``ValueError``
    before the ``m^ndim`` array is allocated. An array is returned as given (its rank is checked
    by :func:`build_spec`).
    """
    if grid_shape is not None:
        ndim = len(grid_shape)
    if smooth is None:
        return None
    if isinstance(smooth, str):
        if smooth != "gaussian":
            raise ValueError(
                f"smooth must be None, 'gaussian', ('average', m) or a {ndim}-D array, got "
                f"{smooth!r}"
            )
        # outer product of [1, 2, 1] / 4 over the axes; in 2-D exactly the former
        # np.outer(taps, taps) / 16 (docs/design.md §1.3)
        taps = np.array([1.0, 2.0, 1.0])
        if ndim == 2:
            return np.outer(taps, taps) / 16.0
        weights = taps / 4.0
        for _ in range(ndim - 1):
            weights = np.multiply.outer(weights, taps / 4.0)
        return weights
    if isinstance(smooth, tuple) and len(smooth) == 2 and isinstance(smooth[0], str):
        name, size = smooth
        if name != "average":
            raise ValueError(f"smooth must be ('average', m), got {smooth!r}")
        (m,) = as_tuple(size, "smooth size", 1)
        if m < 1 or m % 2 == 0:
            raise ValueError(f"smooth size m must be positive and odd, got {size!r}")
        if grid_shape is not None:
            limit = max(_args.RADIUS_LIMIT_FACTOR * max(grid_shape), KERNEL_HALF_WIDTH_FLOOR)
            if (m - 1) // 2 > limit:
                raise ValueError(
                    f"smooth=('average', {m}) is too large for a guide of spatial shape "
                    f"{tuple(grid_shape)}: m must be at most {2 * limit + 1}"
                )
        return np.full((m,) * ndim, 1.0 / m**ndim)
    return smooth


def smooth_centre(guide, weights):
    """Zero-padded same-size correlation of every (n, f) plane of ``guide`` ``(N, F, *S)`` with
    the odd-sided ``weights`` of rank ``len(S)`` (same array library and dtype as ``guide``):
    the smoothed centre feature."""
    with _device_of(guide):
        return ndimage(guide).correlate(guide, weights[None, None], mode="constant", cval=0.0)


def smooth_centre_backward(grad_centre, guide, weights, need_weights):
    """VJP of :func:`smooth_centre`: ``(grad_guide, grad_weights)``, the latter only if asked.

    The adjoint of correlating with ``weights`` is correlating with ``weights`` flipped;
    ``grad_weights[u, v] = sum grad_centre[n,f,y,x] * guide[n,f,y+u-ry,x+v-rx]`` (likewise
    in 1-D and 3-D).
    """
    xp = namespace_of(grad_centre)
    with _device_of(grad_centre):
        flipped = xp.ascontiguousarray(weights[(slice(None, None, -1),) * weights.ndim])
        grad_guide = ndimage(grad_centre).correlate(
            grad_centre, flipped[None, None], mode="constant", cval=0.0
        )
        if not need_weights:
            return grad_guide, None
        sides = guide.shape[2:]
        radii = [(k - 1) // 2 for k in weights.shape]
        padded = xp.pad(guide, ((0, 0), (0, 0), *((r, r) for r in radii)))
        flat_grad = grad_centre.reshape(-1)
        grad_weights = xp.empty(weights.shape, grad_centre.dtype)
        for offset in np.ndindex(*weights.shape):
            region = tuple(slice(u, u + side) for u, side in zip(offset, sides))
            window = xp.ascontiguousarray(padded[(slice(None), slice(None), *region)])
            grad_weights[offset] = xp.dot(flat_grad, window.reshape(-1))
        return grad_guide, grad_weights


class KernelGrads(NamedTuple):
    """Gradients reaching the inputs of a fused adaptive kernel, as every backend returns them.

    ``guide`` and ``centre`` ``(N, F, *S)`` are the parts through the neighbour features and
    through the centre features (before smoothing; the front end applies
    :func:`smooth_centre_backward`); ``None`` unless the guide's gradient was asked for. Without
    smoothing (``spec.centre is spec.guide``) a backend may fold the centre part into ``guide``
    and return ``centre=None``. ``alpha``, ``lam`` are ``(Fk,)``, ``spatial`` has shape
    ``kernel_size``, ``mask`` is ``(N, *S)`` (``None`` without a mask).
    """

    guide: object
    centre: object
    alpha: object
    lam: object
    spatial: object
    mask: object


@dataclass
class KernelSpec:
    """Everything a backend needs to produce the adaptive kernel, already validated.

    ``explicit`` is an ``(N, Fk, *kernel_size, *out)`` array on the explicit path, else None.
    The other fields describe the fused computation: ``guide``/``centre`` ``(N, F, *S)``,
    ``spatial`` of shape ``kernel_size``, ``mask`` ``(N, *S)``, every one of the op's spatial
    rank (``guide``/``centre``/``mask`` are small dummies of that rank when absent so that
    backends see fixed types).
    """

    explicit: object
    guide: object
    centre: object
    guide_shape: tuple[int, ...]
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
        return _families.Gaussian() if have_guide else None
    if not have_guide:
        raise ValueError(
            f"family={family!r} was given without a guide; pass guide= to compute an adaptive "
            "kernel (without a guide the kernel is 1)"
        )
    if not isinstance(family, (_families.Gaussian, _families.InversePower)):
        raise TypeError(
            f"family must be a kernel family object such as pacarray.Gaussian() or "
            f"pacarray.InversePower(alpha=..., lambda_=...), got {family!r}"
        )
    return family


def _check_inverse_power_range(xp, guide, centre, family, lam, eps2, fk_count, dtype, taps):
    """``ValueError`` when ``alpha + (d2 + eps^2)^(lambda_/2)`` would overflow ``dtype`` for the
    distances this guide can produce: a normalized kernel would then be inf/inf = NaN.

    The largest distance is bounded by the spread of the guide and of the centre feature
    (``d2 <= F (max - min)^2`` for a shared kernel, one channel's for a channel-wise one); for a
    negative ``lambda_`` the largest value is at ``d2 = 0``.
    """
    name = np.dtype(dtype).name
    limit = math.log(float(np.finfo(dtype).max) / max(taps, 1)) - math.log(2.0)
    for alpha in np.asarray(family._alpha, float):
        if math.log(abs(alpha) + 1.0) > limit:
            raise ValueError(
                f"InversePower(alpha={family.alpha!r}) overflows {name}: a normalized kernel "
                f"sums {taps} taps of about {abs(alpha):.3g}; use a smaller alpha or compute "
                "in float64"
            )
    # The kernels add eps**2 in the computation dtype: what is 0 (or inf) there is 0 (or inf).
    with np.errstate(over="ignore", under="ignore"):
        eps2 = float(np.asarray(eps2, dtype=dtype))
    if eps2 == 0 and min(np.asarray(lam, float)) < 0:
        raise ValueError(
            f"InversePower(lambda_={family.lambda_!r}, eps={family.eps!r}): eps**2 is 0 in "
            f"{name}, so the kernel is infinite at zero distance; use a larger eps"
        )
    # The finite extremes of the guide and the (smoothed) centre, read back in one transfer (on
    # a GPU each read waits for the stream); inf when every value is NaN or infinite.
    finite, finite_centre = xp.isfinite(guide), xp.isfinite(centre)
    extremes = _args.to_host(xp, xp.stack([
        xp.min(xp.where(finite, guide, xp.inf)), xp.min(xp.where(finite_centre, centre, xp.inf)),
        -xp.max(xp.where(finite, guide, -xp.inf)),
        -xp.max(xp.where(finite_centre, centre, -xp.inf)),
    ]))
    low, high = float(min(extremes[0], extremes[1])), -float(min(extremes[2], extremes[3]))
    if math.isinf(low):
        return
    features = guide.shape[1] if fk_count == 1 else 1
    largest_d2 = features * (high - low) ** 2
    for lam_value in np.asarray(lam, float):
        base = largest_d2 + eps2 if lam_value > 0 else eps2
        if lam_value == 0 or base <= 0:
            continue
        exponent = 0.5 * lam_value * math.log(base)
        if exponent > limit:
            reach = "infinity" if math.isinf(exponent) else (
                f"about 10^{exponent / math.log(10):.4g}")
            raise ValueError(
                f"InversePower(lambda_={family.lambda_!r}, eps={family.eps!r}) overflows "
                f"{name} on this guide (values in [{low:.3g}, {high:.3g}]): the kernel reaches "
                f"{reach}; scale the guide, use a smaller |lambda_| or eps, or compute in "
                "float64"
            )


def _check_finite(xp, array, name):
    """``ValueError`` for NaN or Inf in a parameter array (``spatial_weight``, ``smooth``): unlike
    NaN in the data, which propagates to the outputs it reaches, a non-finite weight there would
    silently zero or poison every output (``docs/design.md`` §1)."""
    if array.dtype.kind == "f" and not bool(xp.all(xp.isfinite(array))):
        count = int(xp.count_nonzero(~xp.isfinite(array)))
        raise ValueError(
            f"{name} must be finite, got {count} NaN or Inf value(s) in an array of shape "
            f"{tuple(array.shape)}"
        )


def _small(xp, array, dtype):
    """A small parameter array in ``xp`` and ``dtype``: through :func:`_args.constant` when it
    is on the host, cast in place when it is already ``xp``'s."""
    if isinstance(array, np.ndarray) and xp is not np:
        return _args.constant(xp, array, dtype)
    return _args.cast(xp, array, dtype)


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
):
    """Validate the fused kernel description and return a :class:`KernelSpec`.

    ``guide`` (already converted to ``dtype`` or None) must have spatial shape ``guide_shape``;
    ``channels`` is the data's channel count (None for ``pac_kernel``) for the channel-wise check.
    The spatial rank is ``len(guide_shape)``.
    """
    rank = len(guide_shape)
    geometry.check_kernel_fits(
        guide_shape,
        "guide" if guide is not None else ("the output" if geometry.transposed else "x"),
    )
    if not (normalize is None or isinstance(normalize, str)) or normalize not in NORMALIZE_CODES:
        raise ValueError(
            f"normalize must be one of None, 'kernel', 'mask', 'mask_kernel', got {normalize!r}"
        )
    _args.require_bool(channel_wise, "channel_wise")
    family = resolve_family(family, guide is not None)
    if guide is not None:
        if guide.ndim - 2 != rank:
            raise ValueError(
                f"guide must have {rank} spatial dimension(s) like the data, (N, F, "
                f"{', '.join(map(str, guide_shape))}); got shape {tuple(guide.shape)}"
            )
        require_nonempty(guide, "guide")
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

    if isinstance(family, _families.InversePower):
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
        eps2 = float(family.eps) * float(family.eps)  # inf, not OverflowError, for a huge eps
    else:
        code = FAMILY_GAUSSIAN if isinstance(family, _families.Gaussian) else FAMILY_CONSTANT
        alpha = np.zeros(fk_count)
        lam = np.zeros(fk_count)
        eps2 = 0.0

    spatial = np.ones(geometry.kernel_size)
    if spatial_weight is not None:
        # A window made on the host (spatial_window() gives NumPy) is checked there and reaches
        # the device once (_args.constant); one already on the device stays there.
        spatial_weight = _args.convert(_args.host_or(xp, spatial_weight), spatial_weight,
                                       "spatial_weight")
        _args.require_real(spatial_weight, "spatial_weight")
        if tuple(spatial_weight.shape) != geometry.kernel_size:
            raise ValueError(
                f"spatial_weight must have shape kernel_size={geometry.kernel_size}, "
                f"got {tuple(spatial_weight.shape)}"
            )
        _check_finite(namespace_of(spatial_weight), spatial_weight, "spatial_weight")
        spatial = spatial_weight

    has_mask = mask is not None
    if has_mask:
        mask = _args.convert(xp, mask, "mask")
        if mask.dtype.kind == "c":
            raise TypeError(f"mask must be real, got dtype {mask.dtype}")
        expected = (batch, 1, *guide_shape)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
        if not bool(xp.all((mask >= 0) & (mask <= 1))):
            nan = xp.isnan(mask)
            if bool(nan.all()):
                received = "only NaN"
            else:
                low = float(xp.min(xp.where(nan, xp.inf, mask)))
                high = float(xp.max(xp.where(nan, -xp.inf, mask)))
                received = f"values in [{low}, {high}]" + (" and NaN" if bool(nan.any()) else "")
            raise ValueError(f"mask values must lie in [0, 1], got {received}")
        mask = _args.cast(xp, mask.reshape(batch, *guide_shape), dtype)
    elif normalize in ("mask", "mask_kernel"):
        raise ValueError(f"normalize={normalize!r} requires a mask")
    else:
        mask = _args.constant(xp, np.zeros((1,) * (rank + 1)), dtype)

    if guide is not None:
        weights = smoothing_weights(smooth, guide_shape)
        if weights is not None:
            weights = _args.convert(_args.host_or(xp, weights), weights, "smooth")
            _args.require_real(weights, "smooth")
            if weights.ndim != rank or any(s % 2 == 0 for s in weights.shape):
                raise ValueError(
                    f"a smooth array must be {rank}-D (the data's spatial rank) with odd sides, "
                    f"got shape {tuple(weights.shape)}"
                )
            _check_finite(namespace_of(weights), weights, "smooth")
            centre = smooth_centre(guide, _small(xp, weights, dtype))
        else:
            centre = guide
    else:
        guide = centre = _args.constant(xp, np.zeros((1,) * (rank + 2)), dtype)
    if code in (FAMILY_INVERSE, FAMILY_INVERSE_ASYMMETRIC):
        _check_inverse_power_range(xp, guide, centre, family, lam, eps2, fk_count, dtype,
                                   geometry.taps)

    return KernelSpec(
        explicit=None,
        guide=guide,
        centre=centre,
        guide_shape=tuple(guide_shape),
        family=code,
        alpha=_args.constant(xp, alpha, dtype),
        lam=_args.constant(xp, lam, dtype),
        eps2=eps2,
        spatial=_small(xp, spatial, dtype),
        mask=mask,
        has_mask=has_mask,
        normalize=NORMALIZE_CODES[normalize],
        channel_wise=bool(channel_wise),
        fk_count=fk_count,
    )


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
    rank = data_rank(guide, "guide", "F")
    if mask is not None:
        mask = _args.convert(xp, mask, "mask")
        require_rank(mask, rank, "mask", "guide", guide.shape)
    if spatial_weight is not None:
        spatial_weight = _args.convert(_args.host_or(xp, spatial_weight), spatial_weight,
                                       "spatial_weight")
        _args.require_real(spatial_weight, "spatial_weight")
    dtype = _args.compute_dtype(guide)  # spatial_weight takes the guide's dtype
    geometry = make_geometry(
        kernel_size, stride, padding, dilation, output_padding, transposed=transposed, ndim=rank
    )
    guide_shape = tuple(guide.shape[2:])
    if transposed:
        out_shape = guide_shape
    else:
        out_shape = geometry.checked_output_shape(guide_shape, "guide")
    with _device_of(guide):   # the spec's small arrays are made on the guide's device
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
        )
    return backend, xp, geometry, guide, spec, out_shape


def explicit_spec(xp, kernel, dtype, batch, channels, kernel_size, out_shape):
    """Validate an explicit ``K`` array for an operation and wrap it in a :class:`KernelSpec`."""
    rank = len(kernel_size)
    expected_tail = (*kernel_size, *out_shape)
    described = (
        f"({batch}, 1 or {channels}, {', '.join(map(str, expected_tail))}) for this operation"
    )
    if kernel.ndim != 2 + 2 * rank:
        raise ValueError(
            f"kernel must be {2 + 2 * rank}-D with layout (N, 1|C, *kernel_size, *out) for "
            f"{rank}-D data, shape {described}, got shape {tuple(kernel.shape)}"
        )
    n, fk = kernel.shape[:2]
    if n != batch or fk not in (1, channels) or tuple(kernel.shape[2:]) != expected_tail:
        raise ValueError(f"kernel must have shape {described}, got {tuple(kernel.shape)}")
    explicit = _args.cast(xp, kernel, dtype)
    dummy = _args.constant(xp, np.zeros((1,) * (rank + 2)), dtype)
    zeros = _args.constant(xp, np.zeros(1), dtype)
    return KernelSpec(
        explicit=explicit,
        guide=dummy,
        centre=dummy,
        guide_shape=(1,) * rank,
        family=FAMILY_CONSTANT,
        alpha=zeros,
        lam=zeros,
        eps2=0.0,
        spatial=_args.constant(xp, np.ones(kernel_size), dtype),
        mask=_args.constant(xp, np.zeros((1,) * (rank + 1)), dtype),
        has_mask=False,
        normalize=0,
        channel_wise=fk > 1,
        fk_count=fk,
    )
