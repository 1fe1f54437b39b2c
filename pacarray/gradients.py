"""Analytic gradients (vector-Jacobian products) of the PAC operations.

Every forward function has a ``*_vjp`` twin that takes the upstream gradient ``grad_output``
(the gradient of a scalar loss with respect to the forward's output) followed by the forward's
own arguments and keywords, and returns a named tuple with the gradient of the loss with respect
to every differentiable input (``None`` for inputs that were not given). The fused path is
differentiated without materializing the adaptive kernel: memory stays O(input + output).

Composition is plain calculus on these results. For a bilateral filter
``pac_pool(image, k, guide=image / sigma, ...)`` the gradient with respect to ``image`` is
``g.x + g.guide / sigma``; for an explicit kernel ``K = pac_kernel(f, ...)`` fed to
``pac_conv(x, w, kernel=K)``, pass ``pac_conv_vjp(...).kernel`` to ``pac_kernel_vjp`` to reach
``f``. :mod:`pacarray.testing` checks such compositions against finite differences.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _args
from ._dispatch import backend_module, device_of, select_backend
from ._geometry import kernel_geometry
from ._spec import prepare_kernel, resolve_family, smooth_centre_backward, smoothing_weights
from .kernels import InversePower
from .ops import _prepare, backend_weight, user_weight_gradient

__all__ = [
    "PacConvGradients",
    "PacConvTransposeGradients",
    "PacKernelGradients",
    "PacPoolGradients",
    "pac_conv_transpose_vjp",
    "pac_conv_vjp",
    "pac_kernel_vjp",
    "pac_pool_vjp",
]


class PacKernelGradients(NamedTuple):
    """Gradients returned by :func:`pac_kernel_vjp` (``None`` where the input was not given).

    Attributes
    ----------
    guide : ndarray or None
        Shape of ``guide``; includes the path through the smoothing of the centre feature.
    alpha, lambda_ : ndarray or None
        Shaped like the family's ``alpha`` / ``lambda_`` (0-d for a scalar, ``(F,)`` per
        channel); ``None`` unless the family is :class:`~pacarray.InversePower`.
    smooth : ndarray or None
        Only when ``smooth`` was given as an array.
    spatial_weight : ndarray or None
        Shape ``kernel_size``.
    mask : ndarray or None
        Shape ``(N, 1, H, W)``.
    """

    guide: object = None
    alpha: object = None
    lambda_: object = None
    smooth: object = None
    spatial_weight: object = None
    mask: object = None


class PacConvGradients(NamedTuple):
    """Gradients returned by :func:`pac_conv_vjp` (``None`` where the input was not given).

    ``x``, ``weight``, ``bias`` and ``kernel`` (explicit path) have their inputs' shapes; the
    fused-kernel fields are those of :class:`PacKernelGradients`.
    """

    x: object = None
    weight: object = None
    bias: object = None
    kernel: object = None
    guide: object = None
    alpha: object = None
    lambda_: object = None
    smooth: object = None
    spatial_weight: object = None
    mask: object = None


class PacConvTransposeGradients(NamedTuple):
    """Gradients returned by :func:`pac_conv_transpose_vjp`; fields as in
    :class:`PacConvGradients` (``weight`` in the ``(C, C_out, kh, kw)`` layout)."""

    x: object = None
    weight: object = None
    bias: object = None
    kernel: object = None
    guide: object = None
    alpha: object = None
    lambda_: object = None
    smooth: object = None
    spatial_weight: object = None
    mask: object = None


class PacPoolGradients(NamedTuple):
    """Gradients returned by :func:`pac_pool_vjp`; fields as in :class:`PacConvGradients`
    (pooling has no weight or bias)."""

    x: object = None
    kernel: object = None
    guide: object = None
    alpha: object = None
    lambda_: object = None
    smooth: object = None
    spatial_weight: object = None
    mask: object = None


_KERNEL_FIELDS = ("guide", "alpha", "lambda_", "smooth", "spatial_weight", "mask")


def _wanted(wrt, fields):
    """The set of field names to compute (``wrt=None``: all of them)."""
    if wrt is None:
        return set(fields)
    if isinstance(wrt, str):
        names = {wrt}
    else:
        try:
            names = set(wrt)
        except TypeError:
            raise TypeError(
                f"wrt must be None, a field name or a sequence of them, got {wrt!r}"
            ) from None
    unknown = sorted(str(name) for name in names - set(fields))
    if unknown:
        raise ValueError(f"wrt names unknown inputs {unknown}; choose from {list(fields)}")
    return names


def _grad_output(xp, grad_output, expected_shape, dtype):
    """Convert and check the upstream gradient; it is cast to the computation dtype."""
    grad_output = _args.convert(xp, grad_output, "grad_output")
    _args.require_float(grad_output, "grad_output")
    if tuple(grad_output.shape) != tuple(expected_shape):
        raise ValueError(
            f"grad_output must have the shape of the forward's output {tuple(expected_shape)}, "
            f"got {tuple(grad_output.shape)}"
        )
    return _args.cast(xp, grad_output, dtype)


def _user_smoothing(smooth) -> bool:
    """True when ``smooth`` is an array of weights (the only differentiable form)."""
    if smooth is None or isinstance(smooth, str):
        return False
    return not (isinstance(smooth, tuple) and len(smooth) == 2 and isinstance(smooth[0], str))


def _kernel_needs(wanted, guide, family, smooth, spatial_weight, mask):
    """``(need_kernel, need_guide, needed)`` for the fused kernel's inputs given and wanted."""
    given = set()
    if guide is not None:
        given.add("guide")
        if isinstance(family, InversePower):
            given |= {"alpha", "lambda_"}
        if _user_smoothing(smooth):
            given.add("smooth")
    if spatial_weight is not None:
        given.add("spatial_weight")
    if mask is not None:
        given.add("mask")
    needed = given & wanted
    need_guide = bool(needed & {"guide", "smooth"})
    return bool(needed), need_guide, needed


def _like(xp, grad, value):
    """Reduce a per-kernel-channel gradient ``(Fk,)`` to the shape of the family's value."""
    shape = np.shape(value)
    if tuple(grad.shape) == shape:
        return grad
    return xp.reshape(grad.sum(), shape)


def _kernel_fields(xp, spec, parts, needed, family, smooth, guide_given):
    """Turn the backend's :class:`KernelGrads` into the public kernel fields."""
    fields = dict.fromkeys(_KERNEL_FIELDS)
    if parts is None:
        return fields
    if "guide" in needed or "smooth" in needed:
        weights = smoothing_weights(smooth, ndim=len(spec.guide_shape)) if guide_given else None
        if parts.centre is None:  # the backend already added the centre part
            fields["guide"] = parts.guide
        elif weights is None:
            fields["guide"] = parts.guide + parts.centre
        else:
            weights = _args.cast(xp, _args.convert(xp, weights, "smooth"), spec.guide.dtype)
            through_centre, grad_weights = smooth_centre_backward(
                parts.centre, spec.guide, weights, "smooth" in needed
            )
            fields["guide"] = parts.guide + through_centre
            fields["smooth"] = grad_weights
        if "guide" not in needed:
            fields["guide"] = None
    if "alpha" in needed:
        fields["alpha"] = _like(xp, parts.alpha, family.alpha)
    if "lambda_" in needed:
        fields["lambda_"] = _like(xp, parts.lam, family.lambda_)
    if "spatial_weight" in needed:
        fields["spatial_weight"] = parts.spatial
    if "mask" in needed:
        fields["mask"] = parts.mask.reshape(parts.mask.shape[0], 1, *parts.mask.shape[1:])
    return fields


def _backward(module, xp, grad_y, x, weight, spec, geometry, shared, out_channels, need_x,
              need_weight, need_kernel, need_guide):
    """The backend pass of an op: ``(grad_x, grad_weight, grad_explicit, kernel_grads)``.

    Weights are laid out exactly as the forward lays them out for the backend (shared and
    transposed filters flipped), and the weight gradient is brought back to the user's layout.
    """
    k_stride, k_padding = kernel_geometry(geometry)
    with device_of(x):
        _, layout = backend_weight(xp, weight, geometry, x.dtype)
    run = module.pool_backward if shared else module.conv_backward
    grad_x, grad_layout, grad_explicit, parts = run(
        grad_y, x, layout, spec, geometry, k_stride, k_padding, need_x, need_weight,
        need_kernel, need_guide,
    )
    grad_weight = None
    if need_weight:
        grad_weight = user_weight_gradient(xp, grad_layout, shared, geometry, out_channels,
                                           x.shape[1])
    return grad_x, grad_weight, grad_explicit, parts


def _op_vjp(op, grad_output, x, weight, bias, kernel, guide, family, kernel_size, stride,
            padding, dilation, output_padding, options, wrt, fields):
    select_backend(
        grad_output=grad_output, x=x, weight=weight, bias=bias, kernel=kernel, guide=guide,
        spatial_weight=options["spatial_weight"], mask=options["mask"],
    )
    module, xp, x, weight, bias, spec, geometry, out_shape = _prepare(
        op, x, weight, bias, kernel, guide, family, kernel_size, stride, padding, dilation,
        output_padding, options,
    )
    transposed = geometry.transposed
    shared = weight is None or weight.shape[:2] == (1, 1)
    if shared:
        out_channels = x.shape[1]
    else:
        out_channels = weight.shape[1] if transposed else weight.shape[0]
    grad_y = _grad_output(xp, grad_output, (x.shape[0], out_channels, *out_shape), x.dtype)
    wanted = _wanted(wrt, fields)
    need_x = "x" in wanted
    need_weight = weight is not None and "weight" in wanted
    family = resolve_family(family, guide is not None)
    if spec.use_explicit:
        need_kernel, need_guide, needed = "kernel" in wanted, False, set()
    else:
        need_kernel, need_guide, needed = _kernel_needs(
            wanted, guide, family, options["smooth"], options["spatial_weight"], options["mask"]
        )
    grad_x = grad_weight = grad_explicit = parts = None
    if need_x or need_weight or need_kernel:  # else only the bias is wanted: no pass over rows
        grad_x, grad_weight, grad_explicit, parts = _backward(
            module, xp, grad_y, x, weight, spec, geometry, shared, out_channels, need_x,
            need_weight, need_kernel, need_guide,
        )

    result = dict.fromkeys(fields)
    result["x"] = grad_x
    if "weight" in fields:
        result["weight"] = grad_weight
    if "bias" in fields and bias is not None and "bias" in wanted:
        result["bias"] = grad_y.sum(axis=(0, *range(2, grad_y.ndim)))
    if grad_explicit is not None:
        result["kernel"] = grad_explicit.reshape(spec.explicit.shape)
    result.update(_kernel_fields(xp, spec, parts, needed, family, options["smooth"],
                                 guide is not None))
    return result


def pac_kernel_vjp(
    grad_output,
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
    wrt=None,
) -> PacKernelGradients:
    """Gradients of :func:`~pacarray.pac_kernel` with respect to its inputs.

    Parameters
    ----------
    grad_output : array_like, shape (N, 1|F, kh, kw, Ho, Wo)
        Gradient of a scalar loss with respect to ``K``, the shape ``pac_kernel`` returns.
        Converted to the forward's computation dtype.
    guide, kernel_size, stride, padding, dilation, family
        Exactly as passed to :func:`~pacarray.pac_kernel` (validated the same way, with the
        same errors).
    smooth, spatial_weight, mask, normalize, channel_wise, transposed, output_padding
        Likewise.
    return_validity : bool
        Accepted so the forward's keywords can be passed unchanged; the validity mask is
        piecewise constant and has no gradient.
    wrt : str or iterable of str, optional
        Names of the fields to compute (default: every input that was given); the others are
        ``None``. Skipping ``guide`` avoids the most expensive part.

    Returns
    -------
    PacKernelGradients
        ``guide``, ``alpha``, ``lambda_``, ``smooth`` (only for an array), ``spatial_weight``,
        ``mask``; ``None`` for inputs that were not given. Arrays have the computation dtype
        (float64 if any float input is float64, else float32).

    Raises
    ------
    ValueError, TypeError
        The forward's errors for the forward's arguments; ``grad_output`` of the wrong shape or
        a non-float dtype; unknown names in ``wrt``.

    See Also
    --------
    pac_conv_vjp, pacarray.testing.check_gradients

    Notes
    -----
    ``K = U / Z`` with ``U = kappa * G * M`` and ``Z`` the sum over in-range taps of
    ``kappa * G`` (``"kernel"``), ``M`` (``"mask"``) or ``U`` (``"mask_kernel"``). The quotient
    rule gives ``dL/dU = g / Z`` and ``dL/dZ = -sum_t g K / Z``; where ``Z == 0`` the forward
    output is 0 and both are taken as 0. For the inverse-power family
    ``d kappa / d lambda = 1/2 log(d2 + eps^2) (d2 + eps^2)^(lambda/2)`` and
    ``d kappa / d d2 = lambda/2 (d2 + eps^2)^(lambda/2 - 1)``; where ``d2 + eps^2 == 0``
    (``eps = 0`` and equal features) both are taken as 0. The asymmetric form uses
    ``max(0, fc - fq)^2``, whose derivative ``2 max(0, fc - fq)`` is 0 at and below the kink.
    The centre feature's gradient flows back through the smoothing (a correlation, whose adjoint
    is the correlation with the flipped weights).

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_kernel
    >>> from pacarray.gradients import pac_kernel_vjp
    >>> guide = np.random.default_rng(0).random((1, 2, 6, 6))
    >>> K = pac_kernel(guide, 3, padding=1, normalize="kernel")
    >>> grads = pac_kernel_vjp(np.ones_like(K), guide, 3, padding=1, normalize="kernel")
    >>> grads.guide.shape
    (1, 2, 6, 6)
    >>> float(np.abs(grads.guide).max()) < 1e-12  # normalized K sums to 1 over the taps
    True
    """
    backend, xp, geometry, guide, spec, out_shape = prepare_kernel(
        guide, kernel_size, stride=stride, padding=padding, dilation=dilation, family=family,
        smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
        channel_wise=channel_wise, transposed=transposed, output_padding=output_padding,
        other_arrays={"grad_output": grad_output},
    )
    dtype = spec.guide.dtype
    grad_kernel = _grad_output(
        xp, grad_output, (guide.shape[0], spec.fk_count, *geometry.kernel_size, *out_shape),
        dtype,
    )
    family = resolve_family(family, True)
    _, need_guide, needed = _kernel_needs(
        _wanted(wrt, _KERNEL_FIELDS), guide, family, smooth, spatial_weight, mask
    )
    if not needed:
        return PacKernelGradients()
    module = backend_module(backend)
    k_stride, k_padding = kernel_geometry(geometry)
    parts = module.kernel_backward(
        grad_kernel.reshape(guide.shape[0], spec.fk_count, geometry.taps, *out_shape), spec,
        geometry.kernel_size, k_stride, k_padding, geometry.dilation, need_guide,
    )
    return PacKernelGradients(
        **_kernel_fields(xp, spec, parts, needed, family, smooth, True)
    )


def pac_conv_vjp(
    grad_output,
    x,
    weight,
    bias=None,
    *,
    kernel=None,
    guide=None,
    family=None,
    stride=1,
    padding=0,
    dilation=1,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    channel_wise=False,
    wrt=None,
) -> PacConvGradients:
    """Gradients of :func:`~pacarray.pac_conv` with respect to all its inputs.

    Parameters
    ----------
    grad_output : array_like, shape (N, C_out, Ho, Wo)
        Gradient of a scalar loss with respect to the output of ``pac_conv``. Converted to the
        forward's computation dtype.
    x, weight, bias, kernel, guide, family, stride, padding, dilation
        Exactly as passed to :func:`~pacarray.pac_conv` (validated the same way, with the same
        errors).
    smooth, spatial_weight, mask, normalize, channel_wise
        Likewise.
    wrt : str or iterable of str, optional
        Names of the fields to compute (default: every input that was given); the others are
        ``None``.

    Returns
    -------
    PacConvGradients
        ``x``, ``weight`` (full or shared layout, as given), ``bias``, ``kernel`` (explicit
        path), and on the fused path ``guide``, ``alpha``, ``lambda_``, ``smooth``,
        ``spatial_weight``, ``mask``.

    Raises
    ------
    ValueError, TypeError
        As :func:`~pacarray.pac_conv`; also for ``grad_output`` of the wrong shape or dtype and
        unknown names in ``wrt``.

    See Also
    --------
    pac_kernel_vjp : the kernel part and its formulas.
    pacarray.testing.check_gradients

    Notes
    -----
    With ``P[c*T+t, i] = K[(c),t,i] x[c, src(i,t)]`` the forward is ``y = W P + b``, so
    ``dW = g P^T``, ``dP = W^T g``, ``dx`` gathers ``dP * K`` back to the source positions and
    ``dK = sum_c dP * x``, which :func:`pac_kernel_vjp`'s rules carry to the guide and the
    kernel parameters. Everything runs row by row in one parallel pass: the fused kernel and
    the patch rows are recomputed and never stored, so the extra memory is O(input + output).
    Results are bit-identical from run to run and independent of the number of threads.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_conv
    >>> from pacarray.gradients import pac_conv_vjp
    >>> rng = np.random.default_rng(0)
    >>> x, guide = rng.random((1, 3, 8, 8)), rng.random((1, 2, 8, 8))
    >>> w = rng.random((4, 3, 3, 3))
    >>> y = pac_conv(x, w, guide=guide, padding=1)
    >>> g = pac_conv_vjp(np.ones_like(y), x, w, guide=guide, padding=1)
    >>> g.x.shape, g.weight.shape, g.guide.shape, g.bias is None
    ((1, 3, 8, 8), (4, 3, 3, 3), (1, 2, 8, 8), True)
    """
    result = _op_vjp(
        "conv", grad_output, x, weight, bias, kernel, guide, family, None, stride, padding,
        dilation, 0,
        dict(smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
             channel_wise=channel_wise),
        wrt, PacConvGradients._fields,
    )
    return PacConvGradients(**result)


def pac_conv_transpose_vjp(
    grad_output,
    x,
    weight,
    bias=None,
    *,
    kernel=None,
    guide=None,
    family=None,
    stride=1,
    padding=0,
    dilation=1,
    output_padding=0,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    channel_wise=False,
    wrt=None,
) -> PacConvTransposeGradients:
    """Gradients of :func:`~pacarray.pac_conv_transpose` with respect to all its inputs.

    Parameters
    ----------
    grad_output : array_like, shape (N, C_out, Ho, Wo)
        Gradient of a scalar loss with respect to the output (at the upsampled resolution).
    x, weight, bias, kernel, guide, family, stride, padding, dilation, output_padding
        Exactly as passed to :func:`~pacarray.pac_conv_transpose`.
    smooth, spatial_weight, mask, normalize, channel_wise
        Likewise.
    wrt : str or iterable of str, optional
        Names of the fields to compute (default: all given inputs).

    Returns
    -------
    PacConvTransposeGradients
        Fields as in :class:`PacConvGradients`; ``weight`` in the ``(C, C_out, kh, kw)``
        layout, ``guide`` and ``mask`` at the output resolution.

    Raises
    ------
    ValueError, TypeError
        As :func:`~pacarray.pac_conv_transpose`; also for a bad ``grad_output`` or ``wrt``.

    See Also
    --------
    pac_conv_vjp, pac_kernel_vjp

    Notes
    -----
    The gradient with respect to ``x`` gathers, for every input pixel, the output pixels it
    contributed to (those ``j`` with ``i*s = j + p - a*d``); no zero-inserted image is formed.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_conv_transpose
    >>> from pacarray.gradients import pac_conv_transpose_vjp
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.random((1, 2, 4, 4)), rng.random((2, 3, 3, 3))
    >>> guide = rng.random((1, 3, 8, 8))
    >>> kw = dict(guide=guide, stride=2, padding=1, output_padding=1)
    >>> y = pac_conv_transpose(x, w, **kw)
    >>> g = pac_conv_transpose_vjp(np.ones_like(y), x, w, **kw)
    >>> g.x.shape, g.weight.shape, g.guide.shape
    ((1, 2, 4, 4), (2, 3, 3, 3), (1, 3, 8, 8))
    """
    result = _op_vjp(
        "conv_transpose", grad_output, x, weight, bias, kernel, guide, family, None, stride,
        padding, dilation, output_padding,
        dict(smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
             channel_wise=channel_wise),
        wrt, PacConvTransposeGradients._fields,
    )
    return PacConvTransposeGradients(**result)


def pac_pool_vjp(
    grad_output,
    x,
    kernel_size,
    *,
    kernel=None,
    guide=None,
    family=None,
    stride=1,
    padding=0,
    dilation=1,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    channel_wise=False,
    wrt=None,
) -> PacPoolGradients:
    """Gradients of :func:`~pacarray.pac_pool` with respect to all its inputs.

    Parameters
    ----------
    grad_output : array_like, shape (N, C, Ho, Wo)
        Gradient of a scalar loss with respect to the pooled output.
    x, kernel_size, kernel, guide, family, stride, padding, dilation
        Exactly as passed to :func:`~pacarray.pac_pool`.
    smooth, spatial_weight, mask, normalize, channel_wise
        Likewise.
    wrt : str or iterable of str, optional
        Names of the fields to compute (default: all given inputs).

    Returns
    -------
    PacPoolGradients
        ``x``, ``kernel`` (explicit path), and on the fused path ``guide``, ``alpha``,
        ``lambda_``, ``smooth``, ``spatial_weight``, ``mask``.

    Raises
    ------
    ValueError, TypeError
        As :func:`~pacarray.pac_pool`; also for a bad ``grad_output`` or ``wrt``.

    See Also
    --------
    pac_kernel_vjp, pac_conv_vjp

    Examples
    --------
    A joint bilateral filter's gradient with respect to the guide:

    >>> import numpy as np
    >>> from pacarray import pac_pool, spatial_window
    >>> from pacarray.gradients import pac_pool_vjp
    >>> rng = np.random.default_rng(0)
    >>> image, guide = rng.random((1, 1, 8, 8)), rng.random((1, 3, 8, 8)) / 0.2
    >>> kw = dict(guide=guide, padding=2, normalize="kernel",
    ...           spatial_weight=spatial_window(5, 2.0))
    >>> y = pac_pool(image, 5, **kw)
    >>> g = pac_pool_vjp(2 * (y - image), image, 5, **kw, wrt="guide")
    >>> g.guide.shape, g.x is None
    ((1, 3, 8, 8), True)
    """
    result = _op_vjp(
        "pool", grad_output, x, None, None, kernel, guide, family, kernel_size, stride, padding,
        dilation, 0,
        dict(smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
             channel_wise=channel_wise),
        wrt, PacPoolGradients._fields,
    )
    return PacPoolGradients(**result)
