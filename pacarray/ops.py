"""Pixel-adaptive convolution, transposed convolution and pooling."""

from __future__ import annotations

import numpy as np

from . import _args
from ._dispatch import backend_module, delegate_lazy, device_of, namespace, select_backend
from ._geometry import (
    data_rank,
    kernel_geometry,
    make_geometry,
    require_nonempty,
    require_rank,
)
from ._spec import build_spec, explicit_spec

__all__ = ["pac_conv", "pac_conv_transpose", "pac_pool"]

def _prepare(
    op, x, weight, bias, kernel, guide, family, kernel_size, stride, padding, dilation,
    output_padding, options,
):
    """Validate everything once; return (backend module, x, weight, bias, spec, geometry, ...)."""
    transposed = op == "conv_transpose"
    if op != "pool" and weight is None:
        raise TypeError(
            "weight is required: an array of shape (C_out, C, kh, kw) or (1, 1, kh, kw)"
        )
    backend = select_backend(
        x=x, weight=weight, bias=bias, kernel=kernel, guide=guide,
        spatial_weight=options["spatial_weight"], mask=options["mask"],
    )
    xp = namespace(backend)
    x = _args.convert(xp, x, "x")
    _args.require_float(x, "x")
    rank = data_rank(x, "x")  # 1, 2 or 3: every other array must match (docs/design.md §7)
    arrays = {"weight": weight, "bias": bias, "kernel": kernel, "guide": guide}
    for name, value in arrays.items():
        if value is not None:
            arrays[name] = _args.convert(xp, value, name)
            _args.require_float(arrays[name], name)
    weight, bias, kernel, guide = (arrays[k] for k in ("weight", "bias", "kernel", "guide"))
    if guide is not None:
        require_rank(guide, rank, "guide", "x", x.shape)
    if options["mask"] is not None:
        mask = _args.convert(xp, options["mask"], "mask")
        require_rank(mask, rank, "mask", "x", x.shape)
        options = {**options, "mask": mask}
    spatial_weight = options["spatial_weight"]
    if spatial_weight is not None:
        spatial_weight = _args.convert(_args.host_or(xp, spatial_weight), spatial_weight,
                                       "spatial_weight")
        _args.require_real(spatial_weight, "spatial_weight")
        options = {**options, "spatial_weight": spatial_weight}
    # Small parameter arrays (spatial_weight, smooth, mask) take the data's dtype: a float64
    # window from spatial_window() keeps a float32 call in float32 (docs/design.md §1).
    dtype = _args.compute_dtype(x, weight, bias, kernel, guide)

    if weight is not None:
        if weight.ndim != rank + 2:
            layout = "(C, C_out, *k)" if transposed else "(C_out, C, *k)"
            raise ValueError(
                f"weight must be {rank + 2}-D with layout {layout} for x of shape "
                f"{tuple(x.shape)} ({rank} spatial dimension(s)), got shape "
                f"{tuple(weight.shape)}"
            )
        require_nonempty(weight, "weight")
        kernel_size = tuple(weight.shape[2:])
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(
                f"weight must have odd spatial sides (kernel_size), got shape {tuple(weight.shape)}"
            )
    geometry = make_geometry(
        kernel_size, stride, padding, dilation, output_padding, transposed=transposed, ndim=rank
    )
    batch, channels = x.shape[:2]
    out_shape = geometry.checked_output_shape(tuple(x.shape[2:]), "x")

    out_channels = channels
    if weight is not None:
        shared = weight.shape[:2] == (1, 1)
        if not shared:
            expected_in = weight.shape[0] if transposed else weight.shape[1]
            layout = "(C, C_out, *k)" if transposed else "(C_out, C, *k)"
            if expected_in != channels:
                raise ValueError(
                    f"weight shape {tuple(weight.shape)} does not match x with {channels} "
                    f"channels: expected layout {layout} or shared (1, 1, *k)"
                )
            out_channels = weight.shape[1] if transposed else weight.shape[0]
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")

    guide_shape = out_shape if transposed else tuple(x.shape[2:])
    if kernel is not None:
        given = [n for n, value in options.items() if value is not None and value is not False]
        if guide is not None:
            given.insert(0, "guide")
        if family is not None:
            given.insert(0, "family")
        if given:
            raise ValueError(
                f"kernel= (an explicit K) cannot be combined with {', '.join(given)}: those "
                "options are already part of K (pass them to pac_kernel instead)"
            )
        spec = explicit_spec(xp, kernel, dtype, batch, channels, geometry.kernel_size, out_shape)
    else:
        # On the data's device: the spec's small arrays are made there (_args.constant).
        with device_of(x):
            spec = build_spec(
                xp, dtype, geometry,
                guide=None if guide is None else _args.cast(xp, guide, dtype),
                guide_shape=guide_shape, batch=batch, channels=channels, family=family,
                **options,
            )
    x = _args.cast(xp, x, dtype)
    if weight is not None:
        weight = _args.cast(xp, weight, dtype)
    if bias is not None:
        bias = _args.cast(xp, bias, dtype)
    return backend_module(backend), xp, x, weight, bias, spec, geometry, out_shape


def _flipped(array, spatial_dims):
    """``array`` reversed along its last ``spatial_dims`` axes (the taps)."""
    return array[(Ellipsis,) + (slice(None, None, -1),) * spatial_dims]


def backend_weight(xp, weight, geometry, dtype):
    """The filter as the backends take it, ``(shared, array)``.

    Shared (no weight, or a ``(1, 1, *k)`` filter applied to every channel): the taps ``k``,
    flipped for a transposed op; the backend's ``pool`` runs it. Otherwise the matrix
    ``(C_out, C*T)`` for the backend's ``conv``: ``weight`` itself, or for a transposed op
    ``(C, C_out, *k)`` reordered to ``(C_out, C, *k)`` and indexed by the flipped tap.
    """
    dims = len(geometry.kernel_size)
    if weight is None:
        # Pooling's taps are ones; made on the current device, which the callers set to the
        # data's.
        return True, _args.constant(xp, np.ones(geometry.kernel_size), dtype)
    if weight.shape[:2] == (1, 1):
        taps = weight[0, 0]
        if geometry.transposed:
            taps = xp.ascontiguousarray(_flipped(taps, dims))
        return True, taps
    matrix = _flipped(weight, dims).swapaxes(0, 1) if geometry.transposed else weight
    return False, xp.ascontiguousarray(matrix.reshape(matrix.shape[0], -1))


def user_weight_gradient(xp, grad, shared, geometry, out_channels, in_channels):
    """Inverse of :func:`backend_weight` for a gradient: back to the caller's weight layout."""
    dims = len(geometry.kernel_size)
    if shared:
        if geometry.transposed:
            grad = _flipped(grad, dims)
        return xp.ascontiguousarray(grad).reshape(1, 1, *geometry.kernel_size)
    grad = grad.reshape(out_channels, in_channels, *geometry.kernel_size)
    if geometry.transposed:
        grad = _flipped(grad.swapaxes(0, 1), dims)
    return xp.ascontiguousarray(grad)


def _run(op, x, weight, bias, kernel, guide, family, kernel_size, stride, padding, dilation,
         output_padding, options):
    module, xp, x, weight, bias, spec, geometry, out_shape = _prepare(
        op, x, weight, bias, kernel, guide, family, kernel_size, stride, padding, dilation,
        output_padding, options,
    )
    k_stride, k_padding = kernel_geometry(geometry)
    with device_of(x):
        shared, layout = backend_weight(xp, weight, geometry, x.dtype)
    run = module.pool if shared else module.conv
    y = run(x, layout, spec, geometry, k_stride, k_padding, out_shape)
    if bias is not None:
        y += bias[(None, slice(None)) + (None,) * len(out_shape)]
    return y


@delegate_lazy("pac_conv")
def pac_conv(
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
):
    """Pixel-adaptive convolution (cross-correlation, like ``conv2d``).

    ``y[n,o,i] = sum_{c,a} W[o,c,a] K[n,(c),a,i] x[n,c,i*s - p + a*d] + b[o]``

    Parameters
    ----------
    x : array_like, shape (N, C, H, W), or (N, C, L) / (N, C, D, H, W)
        Input (float32 or float64).
    weight : array_like, shape (C_out, C, kh, kw) or (1, 1, kh, kw)
        Filter weights; a ``(1, 1, kh, kw)`` filter is shared by every channel separately
        (output has C channels).
    bias : array_like, shape (C_out,), optional
    kernel : array_like, shape ``(N, 1|C, *kernel_size, *out)``, optional
        An explicit adaptive kernel from :func:`pac_kernel`.
    guide : array_like, shape ``(N, F, *S)``, optional
        Guide features: the kernel is computed on the fly (fused, never materialized), exactly as
        ``pac_kernel(guide, ...)`` with the same keywords. Without ``kernel`` and ``guide`` the
        adaptive kernel is 1 (times spatial weight / mask / normalization if given): ordinary
        convolution.
    family : Gaussian or InversePower, default Gaussian()
        Kernel family (fused path).
    stride, padding, dilation : int or tuple of int
        As in ``conv2d``; ``padding <= dilation*(kh-1)/2``.
    smooth, spatial_weight, mask, normalize, channel_wise
        Fused-path options, as in :func:`pac_kernel`.

    Returns
    -------
    ndarray, shape (N, C_out, Ho, Wo)
        ``Ho = (H + 2p - d(kh-1) - 1)//s + 1``; float64 if any float input is float64, else
        float32.

    Raises
    ------
    ValueError, TypeError
        Invalid geometry, shapes, dtypes or option combinations; the message names the argument.

    See Also
    --------
    pac_kernel, pac_conv_transpose, pac_pool

    Notes
    -----
    NaN and Inf in the data propagate as IEEE arithmetic does. On the CPU every output row forms
    its K-weighted input rows in a small block and folds them into a ``(C_out, Wo)``
    accumulator, so memory stays O(input + output) whatever the channel counts.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_conv
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((1, 3, 16, 16), dtype=np.float32)
    >>> w = rng.random((4, 3, 3, 3), dtype=np.float32)
    >>> y = pac_conv(x, w, padding=1, guide=x / 0.2)   # Gaussian kernel from the colours
    >>> y.shape, y.dtype
    ((1, 4, 16, 16), dtype('float32'))
    """
    return _run(
        "conv", x, weight, bias, kernel, guide, family, None, stride, padding, dilation, 0,
        dict(smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
             channel_wise=channel_wise),
    )


@delegate_lazy("pac_conv_transpose")
def pac_conv_transpose(
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
):
    """Pixel-adaptive transposed convolution (with K = 1 it equals ``conv_transpose2d``).

    ``y[n,o,j] = sum_{c,a} W[c,o,a] K[n,(c),k-1-a,j] x[n,c,i] + b[o]`` over the inputs ``i``
    with ``i*s = j + p - a*d``: PAC on the zero-inserted input with flipped weights, computed
    directly by gathering the contributing inputs (the zero-inserted image is never built).

    Parameters
    ----------
    x : array_like, shape (N, C, H, W), or (N, C, L) / (N, C, D, H, W)
    weight : array_like, shape (C, C_out, kh, kw) or (1, 1, kh, kw)
    bias : array_like, shape (C_out,), optional
    kernel : array_like, shape ``(N, 1|C, *kernel_size, *out)``, optional
        Explicit kernel from ``pac_kernel(guide, ..., transposed=True)``.
    guide : array_like, shape ``(N, F, *out)``, optional
        Guide at the output resolution (fused path).
    family, smooth, spatial_weight, mask, normalize, channel_wise
        As in :func:`pac_kernel`; the mask lives at the output resolution.
    stride, padding, dilation, output_padding : int or tuple of int
        ``Ho = (H-1)*s - 2p + d(kh-1) + output_padding + 1``.

    Returns
    -------
    ndarray, shape (N, C_out, Ho, Wo)

    Raises
    ------
    ValueError, TypeError

    See Also
    --------
    pac_conv, pac_kernel

    Notes
    -----
    The original PAC code applies the weights unflipped; a weight ported from it is
    ``w[..., ::-1, ::-1]``.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_conv_transpose
    >>> low = np.ones((1, 1, 4, 4))
    >>> guide = np.ones((1, 3, 8, 8))
    >>> y = pac_conv_transpose(low, np.ones((1, 1, 3, 3)), guide=guide, stride=2, padding=1,
    ...                        output_padding=1)
    >>> y.shape
    (1, 1, 8, 8)
    """
    return _run(
        "conv_transpose", x, weight, bias, kernel, guide, family, None, stride, padding,
        dilation, output_padding,
        dict(smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
             channel_wise=channel_wise),
    )


@delegate_lazy("pac_pool")
def pac_pool(
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
):
    """Pixel-adaptive pooling: ``y[n,c,i] = sum_a K[n,(c),a,i] x[n,c,i*s - p + a*d]``.

    With ``normalize="kernel"`` and a Gaussian kernel on colour plus a Gaussian
    ``spatial_weight`` this is the (joint) bilateral filter; with no guide it is average pooling
    over the in-range taps.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W), or (N, C, L) / (N, C, D, H, W)
    kernel_size : int or tuple of int
        Odd number of taps per dimension.
    kernel : array_like, shape ``(N, 1|C, *kernel_size, *out)``, optional
        Explicit kernel from :func:`pac_kernel`.
    guide : array_like, shape ``(N, F, *S)``, optional
        Guide features for the fused path.
    family, smooth, spatial_weight, mask, normalize, channel_wise
        As in :func:`pac_kernel`.
    stride, padding, dilation : int or tuple of int
        Default stride is 1 (unlike ``avg_pool2d``).

    Returns
    -------
    ndarray, shape (N, C, Ho, Wo)

    Raises
    ------
    ValueError, TypeError

    See Also
    --------
    pac_kernel, pac_conv

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_pool
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> pac_pool(x, 3, stride=2, padding=1, normalize="kernel")[0, 0]
    array([[ 2.5,  4. ],
           [ 8.5, 10. ]])
    """
    return _run(
        "pool", x, None, None, kernel, guide, family, kernel_size, stride, padding, dilation, 0,
        dict(smooth=smooth, spatial_weight=spatial_weight, mask=mask, normalize=normalize,
             channel_wise=channel_wise),
    )
