"""Gradients of the image filters, composed from the core operations' gradients.

:func:`bilateral_filter_vjp` differentiates :func:`~pacarray.filters.bilateral_filter` with
respect to the image, the guide and both bandwidths. It runs the filter's generic formulation
(the fused ``pac_pool`` on the border-extended image and guide) backwards through
:func:`~pacarray.gradients.pac_pool_vjp`, then carries the result through the scaling of the
guide by ``1 / sigma_color``, the spatial Gaussian of ``sigma_spatial`` and the adjoint of the
border extension, and finally back to the caller's layout and dtypes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _args, _bilateral
from ._dispatch import namespace, select_backend
from .gradients import pac_pool_vjp

__all__ = ["BilateralGradients", "bilateral_filter_vjp"]


class BilateralGradients(NamedTuple):
    """Gradients returned by :func:`bilateral_filter_vjp`.

    Attributes
    ----------
    image : ndarray
        Shape of ``image``; for a plain (not joint) bilateral filter it includes the path
        through the range weights, since the image is its own guide.
    guide : ndarray or None
        Shape of ``guide``; ``None`` when no guide was given.
    sigma_spatial, sigma_color : ndarray
        0-d arrays of the computation dtype.
    """

    image: object
    guide: object = None
    sigma_spatial: object = None
    sigma_color: object = None


def _undo_layout(xp, planar_grad, axis, dtype):
    """Planar ``(C, *S)`` gradient back to the caller's layout (channel ``axis``, or None
    without one) and dtype."""
    grad = _args.channels_back(xp, planar_grad, axis)
    return xp.ascontiguousarray(grad.astype(dtype, copy=False))


def bilateral_filter_vjp(
    grad_output,
    image,
    *,
    sigma_spatial: float,
    sigma_color: float,
    radius: int | None = None,
    window: str = "disk",
    color_distance: str = "l2",
    mode: str = "mirror",
    cval: float = 0.0,
    channel_axis: int | None = None,
    guide=None,
    spacing=None,
) -> BilateralGradients:
    """Gradients of :func:`~pacarray.filters.bilateral_filter` with respect to the image, the
    guide and both sigmas.

    Parameters
    ----------
    grad_output : array_like
        Gradient of a scalar loss with respect to the filter's output: the image's shape, a
        real floating dtype (converted to the computation dtype).
    image : array_like
        As passed to :func:`~pacarray.filters.bilateral_filter`.
    sigma_spatial, sigma_color, radius, window, color_distance, mode, cval, channel_axis, guide,\
    spacing
        Exactly as passed to :func:`~pacarray.filters.bilateral_filter` (validated the same
        way, with the same errors).

    Returns
    -------
    BilateralGradients
        ``image`` (the image's shape), ``guide`` (the guide's shape, ``None`` without a
        guide), ``sigma_spatial`` and ``sigma_color`` (0-d arrays; ``sigma_spatial`` has one
        entry per spatial axis when it was given per axis). Each array gradient has its
        input's dtype after the filters' dtype policy (float32 for float32, float16, integer
        and bool inputs; float64 for float64), whatever dtype the filter computed in; the
        sigma gradients have the computation dtype.

    Raises
    ------
    ValueError
        ``grad_output`` not of the image's shape; every error of ``bilateral_filter``.
    TypeError
        ``grad_output`` not a real floating array; every error of ``bilateral_filter``.
    NotImplementedError
        ``color_distance="l1"`` with more than one guide channel (see Notes).

    See Also
    --------
    pacarray.filters.bilateral_filter
    pacarray.gradients.pac_pool_vjp : the core gradient this is built on.
    pacarray.testing.check_gradients

    Notes
    -----
    The filter is ``y = pac_pool(P(x), G, guide=P(g) / sigma_color, normalize="kernel")``
    with ``P`` the border extension of ``mode`` (none for ``"exclude"``, whose out-of-image taps
    are dropped), ``g`` the guide (the image itself without one) and the spatial weight
    ``G[d] = exp(-|d|^2 / (2 sigma_spatial^2))`` (zero outside the disk). With ``dX``, ``dF``,
    ``dG`` the gradients :func:`~pacarray.gradients.pac_pool_vjp` returns for the extended
    image, the scaled extended guide and the spatial weight, the chain rule gives

    .. math::

        \\frac{\\partial L}{\\partial x} = P^T dX \\;(+\\, P^T dF / \\sigma_c
        \\text{ without a guide}),\\qquad
        \\frac{\\partial L}{\\partial g} = P^T dF / \\sigma_c,

        \\frac{\\partial L}{\\partial \\sigma_c} = -\\frac{1}{\\sigma_c}
        \\sum dF \\cdot \\frac{P(g)}{\\sigma_c},\\qquad
        \\frac{\\partial L}{\\partial \\sigma_s} = \\sum_d dG[d]\\, G[d]\\,
        \\frac{|d|^2}{\\sigma_s^3}.

    With ``spacing`` the offsets are physical, ``|d|^2 = sum_i (d_i spacing_i)^2``; with a
    per-axis ``sigma_spatial`` the gradient of axis i has ``(d_i spacing_i)^2 / sigma_i^3``.

    ``P^T`` adds the gradient of every extended pixel onto the pixel it copies (``"reflect"``,
    ``"mirror"``, ``"nearest"``, ``"wrap"``); the ``cval`` border of ``"constant"`` depends on
    no input pixel, but as part of the scaled guide it does depend on ``sigma_color``.

    The window is held fixed: ``radius`` (by default ``ceil(3 * sigma_spatial)``, a step
    function of ``sigma_spatial``) and the taps dropped because their weight underflows are
    not differentiated, so the ``sigma_spatial`` gradient is that of the weights inside the
    window. Memory stays O(image): the adaptive kernel is never materialized.

    ``color_distance="l1"`` measures ``(sum_c |g_p,c - g_q,c|)^2``; for one guide channel that
    is ``(g_p - g_q)^2``, the same smooth function as ``"l2"``, and it is differentiated as
    such. For several guide channels the core has no L1 kernel to differentiate (its Gaussian
    family is Euclidean), so this raises ``NotImplementedError`` rather than return the
    gradient of a different function.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray.filters import bilateral_filter
    >>> from pacarray.filters_grad import bilateral_filter_vjp
    >>> rng = np.random.default_rng(0)
    >>> image = rng.random((6, 7, 3))
    >>> target = np.full(image.shape, 0.5)
    >>> options = dict(sigma_spatial=1.5, sigma_color=0.3, channel_axis=-1)
    >>> y = bilateral_filter(image, **options)
    >>> grads = bilateral_filter_vjp(2 * (y - target), image, **options)   # of sum((y - t)^2)
    >>> grads.image.shape, grads.guide, grads.sigma_color.shape
    ((6, 7, 3), None, ())

    A step along ``-grads.image`` lowers the loss:

    >>> loss = lambda im: float(((bilateral_filter(im, **options) - target) ** 2).sum())
    >>> bool(loss(image - 1e-3 * grads.image) < loss(image))
    True
    """
    xp = namespace(select_backend(grad_output=grad_output, image=image, guide=guide))
    problem = _bilateral.problem(
        xp, image, guide, sigma_spatial=sigma_spatial, sigma_color=sigma_color, radius=radius,
        window=window, color_distance=color_distance, mode=mode, cval=cval,
        channel_axis=channel_axis, spacing=spacing,
    )
    if problem.color_distance == "l1" and problem.guide_channels > 1:
        raise NotImplementedError(
            "bilateral_filter_vjp: color_distance='l1' with a multichannel guide has no "
            "gradient here: the core's Gaussian family is Euclidean, and the L1 range distance "
            f"over {problem.guide_channels} guide channels is not one of its kernels. Use "
            "color_distance='l2' (for one guide channel 'l1' and 'l2' coincide and both work)."
        )
    grad_output = _args.convert(xp, grad_output, "grad_output")
    _args.require_float(grad_output, "grad_output")
    image_shape = tuple(np.shape(image))
    if tuple(grad_output.shape) != image_shape:
        raise ValueError(
            f"grad_output must have the shape of the filter's output, which is the image's "
            f"shape {image_shape}, got grad_output of shape {tuple(grad_output.shape)}"
        )
    dtype = problem.dtype
    upstream, _ = _args.channels_first(grad_output, channel_axis, "grad_output", ranks=(1, 2, 3))
    upstream = _args.cast(xp, upstream, dtype)[None]

    x, features, keywords = problem.pool_inputs()
    grads = pac_pool_vjp(upstream, x, problem.size, **keywords)
    grad_x, grad_features = grads.x[0], grads.guide[0]
    inverse_sigma = dtype.type(1 / problem.sigma_color)

    # F = P(g) / sigma_color, the cval border included: dF / dsigma_color = -F / sigma_color.
    grad_sigma_color = -(grad_features * features).sum() * inverse_sigma
    weights = problem.spatial_weights()
    offsets = np.meshgrid(*(np.arange(-r, r + 1) for r in problem.reach), indexing="ij")
    if np.ndim(sigma_spatial) == 0:
        # One sigma scales every axis: d log G / d sigma = |d|^2 / sigma^3, |d| physical.
        squared = sum((o * d) ** 2 if d != 1.0 else o * o
                      for o, d in zip(offsets, problem.spacing))
        weight_slope = xp.asarray(weights * squared / problem.sigma_spatial[0] ** 3, dtype=dtype)
        grad_sigma_spatial = (grads.spatial_weight * weight_slope).sum()
    else:
        grad_sigma_spatial = xp.stack([
            (grads.spatial_weight * xp.asarray(weights * (o * d) ** 2 / s**3, dtype=dtype)).sum()
            for o, d, s in zip(offsets, problem.spacing, problem.sigma_spatial)
        ])

    def unpad(grad):
        return _bilateral.unpad_adjoint(xp, grad, problem.reach, problem.mode)

    grad_guide = None
    if problem.guide_planar is None:
        grad_image = unpad(grad_x + grad_features * inverse_sigma)
    else:
        grad_image = unpad(grad_x)
        grad_guide = _undo_layout(
            xp, unpad(grad_features * inverse_sigma), problem.guide_layout[1],
            problem.guide_dtype,
        )
    grad_image = _undo_layout(xp, grad_image, problem.image_axis, problem.image_dtype)
    return BilateralGradients(
        image=grad_image, guide=grad_guide,
        sigma_spatial=xp.asarray(grad_sigma_spatial, dtype=dtype),
        sigma_color=xp.asarray(grad_sigma_color, dtype=dtype),
    )
