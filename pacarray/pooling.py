"""Detail-preserving pooling (Saeedan et al. 2018) on the fused ``pac_pool``."""

from __future__ import annotations

import numpy as np

from . import _args
from ._dispatch import delegate_lazy, namespace, select_backend
from .kernels import InversePower
from .ops import pac_pool

__all__ = ["detail_preserving_pool"]


@delegate_lazy("detail_preserving_pool")
def detail_preserving_pool(
    image,
    size=3,
    *,
    alpha,
    lambda_,
    asymmetric: bool = False,
    smooth="gaussian",
    eps: float = 1e-2,
    stride=None,
    channel_axis: int | None = None,
    output=None,
):
    """Detail-preserving pooling: downscaling that keeps small structures visible.

    A weighted average over each pooling window whose weights grow (for ``lambda_ > 0``) with
    each pixel's difference from the smoothed window centre, so that details (a thin line, a
    dot) survive that plain average pooling would wash out.

    Parameters
    ----------
    image : array_like, shape (L,), (H, W) or (D, H, W), or with a channel axis
        A signal, an image or a volume (without ``channel_axis`` every axis is spatial); NumPy
        or CuPy array; bool, integer and float16 are computed in float32.
    size : int or tuple of int, default 3
        Odd pooling window, one value or one per spatial axis; not larger than the image.
    alpha : float or sequence of float
        Weight offset ``>= 0`` (a sequence: one per channel). Large ``alpha`` tends to average
        pooling.
    lambda_ : float or sequence of float
        Power of the difference (``lambda`` in the paper). 0 gives average pooling; > 0
        favours pixels that differ from the centre; < 0 favours similar ones.
    asymmetric : bool, default False
        Count only neighbours darker than the smoothed centre (see Notes for the sign).
    smooth : {"gaussian"}, ("average", m), array or None, default "gaussian"
        Smoothing of the centre feature: ``"gaussian"`` is the outer product of ``[1,2,1]/4``
        over the spatial axes (``outer([1,2,1],[1,2,1])/16`` in 2-D, the paper's choice),
        ``("average", m)`` an m x m (x m) box, an array a custom odd-sided kernel of the
        image's spatial rank, ``None`` the raw pixel.
    eps : float, default 1e-2
        Keeps ``(d2 + eps**2)**(lambda_/2)`` finite at zero difference; > 0 when ``lambda_ < 0``.
    stride : int or tuple of int, optional
        Step between windows; default ``size`` (non-overlapping windows).
    channel_axis : int or None, default None
        Axis of the channels; each channel is pooled with its own weights.
    output : dtype, optional
        Dtype of the result. Default: the computation dtype (float32, or float64 for float64
        input). An integer dtype rounds to the nearest integer and clips to its range:
        ``output=image.dtype`` gives a uint8 image back for a uint8 image.

    Returns
    -------
    pooled : ndarray
        Spatial shape ``(n - size) // stride + 1`` along each spatial axis of length ``n``,
        channels where they were; float32 unless the image is float64.

    Raises
    ------
    ValueError
        Even or too large ``size``; bad ``stride``, ``alpha``, ``lambda_`` or ``eps``; wrong
        ``channel_axis``; more than 3 spatial axes; ``size`` or ``stride`` of the wrong length;
        empty image.
    TypeError
        Complex or non-numeric image.

    See Also
    --------
    pacarray.pac_pool, pacarray.InversePower

    Notes
    -----
    For the window :math:`\\Omega_p` of output pixel ``p``, with :math:`\\tilde I` the image
    smoothed by ``smooth`` and read at the window's centre [1]_:

    .. math::

        D_p = \\frac{\\sum_{q \\in \\Omega_p} w_{pq} I_q}{\\sum_{q \\in \\Omega_p} w_{pq}},
        \\qquad w_{pq} = \\alpha + \\left(\\delta_{pq}^2 + \\varepsilon^2\\right)^{\\lambda/2}

    with :math:`\\delta_{pq} = \\tilde I_p - I_q` (symmetric) or
    :math:`\\delta_{pq} = \\max(0, \\tilde I_p - I_q)` (asymmetric), per channel.
    This is ``pac_pool(x, size, stride=stride, guide=x, family=InversePower(alpha, lambda_,
    eps, asymmetric), smooth=smooth, channel_wise=True, normalize="kernel")``.

    Sign convention: pacarray's asymmetric weight uses :math:`\\max(0, \\tilde I_p - I_q)`,
    so with ``lambda_ > 0`` it emphasizes pixels *darker* than their surroundings (dark dots
    and lines survive). The paper's asymmetric variant rewards brighter pixels,
    :math:`\\max(0, I_q - \\tilde I_p)`; to get it, negate the image and the result:
    ``-detail_preserving_pool(-image, ...)`` (the weights see negated features, and pooling is
    linear in the values).

    References
    ----------
    .. [1] F. Saeedan, N. Weber, M. Goesele and S. Roth, "Detail-preserving pooling in deep
       networks", CVPR 2018, :doi:`10.1109/CVPR.2018.00949`.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray.pooling import detail_preserving_pool
    >>> image = np.full((6, 6), 0.5); image[1, 1] = 0.0     # a dark dot
    >>> average = detail_preserving_pool(image, 3, alpha=1.0, lambda_=0.0)
    >>> detail = detail_preserving_pool(image, 3, alpha=0.0, lambda_=2.0)
    >>> average.shape, float(np.round(average[0, 0], 4))
    ((2, 2), 0.4444)
    >>> bool(detail[0, 0] < average[0, 0])                   # the dot stays darker
    True
    """
    xp = namespace(select_backend(image=image))
    image = _args.as_float_image(xp, image)
    planar, axis = _args.channels_first(image, channel_axis, ranks=(1, 2, 3))
    ndim = planar.ndim - 1
    size = _args.int_tuple(size, "size", ndim)
    if any(k % 2 == 0 for k in size):
        raise ValueError(f"size must be odd (the window has a centre pixel), got {size}")
    if any(k > n for k, n in zip(size, planar.shape[1:])):
        raise ValueError(
            f"size {size} is larger than the image's spatial shape {tuple(planar.shape[1:])}"
        )
    stride = size if stride is None else _args.int_tuple(stride, "stride", ndim)
    alphas = np.array([_args.finite_scalar(value, "alpha")
                       for value in np.atleast_1d(np.asarray(alpha, dtype=object)).ravel()])
    if not np.all(np.isfinite(alphas)) or np.any(alphas < 0):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
    asymmetric = _args.require_bool(asymmetric, "asymmetric")
    family = InversePower(alpha=alpha, lambda_=lambda_, eps=eps, asymmetric=asymmetric)
    x = planar[None]
    pooled = pac_pool(x, size, stride=stride, guide=x, family=family, smooth=smooth,
                      channel_wise=True, normalize="kernel")
    return _args.cast_output(xp, _args.channels_back(xp, pooled[0], axis), output)
