"""Feature stacks for pixel-adaptive filtering.

Gaussian filtering in the joint colour/position space (the "W = 1" special case of PAC) is a
``pac_pool`` whose guide stacks the colours divided by a colour bandwidth and the pixel
coordinates divided by a spatial bandwidth: the Gaussian kernel on that guide is
``exp(-|colour difference|^2 / (2 sigma_color^2) - |offset|^2 / (2 sigma_spatial^2))``, the
bilateral weight. :func:`color_position_features` builds that guide; CRF pairwise kernels reuse it.
"""

from __future__ import annotations

import numpy as np

from . import _args, _bilateral
from ._dispatch import delegate_lazy, namespace, select_backend

__all__ = ["color_position_features"]


@delegate_lazy("color_position_features")
def color_position_features(image, *, sigma_spatial, sigma_color, channel_axis=None,
                            spacing=None):
    """Guide features for Gaussian filtering in the joint colour/position space.

    Stacks the image's channels divided by ``sigma_color`` and the pixel coordinates (times
    ``spacing``) divided by ``sigma_spatial``. A Gaussian kernel on these features
    (``pacarray.Gaussian``, ``pac_kernel``/``pac_pool`` with ``guide=``) is the bilateral weight
    ``exp(-|I_p - I_q|^2 / (2 sigma_color^2) - |p - q|^2 / (2 sigma_spatial^2))`` with no
    separate spatial weight (the "W = 1" special case of PAC), and the appearance kernel of a
    dense CRF.

    Parameters
    ----------
    image : array_like, shape (L,), (H, W) or (D, H, W), or with a channel axis
        Colours of a signal, an image or a volume (NumPy or CuPy); without ``channel_axis``
        every axis is spatial. Integer and float16 images are converted to float32 first.
    sigma_spatial : float or sequence of float
        Spatial bandwidth in the units of ``spacing`` (pixels by default), > 0; one value, or
        one per spatial axis.
    sigma_color : float or sequence of float
        Colour bandwidth in image units, > 0; one value, or one per channel.
    channel_axis : int or None, default None
        Axis of the colour channels; ``None`` for a grayscale signal, image or volume.
    spacing : float or sequence of float, optional
        Physical size of a pixel along each spatial axis (scipy's meaning); default 1.

    Returns
    -------
    features : ndarray, shape ``(1, C + r, *S)``
        A batch of one, ready to pass as ``guide``: channels ``0 .. C-1`` are the colours,
        ``C .. C + r - 1`` the coordinates along the ``r`` spatial axes (row and column for an
        image), each scaled. float32 unless the image is float64.

    Raises
    ------
    ValueError
        Non-positive or non-finite bandwidths or spacing, ``sigma_spatial`` or ``spacing`` of
        the wrong length, wrong ``channel_axis``, more than 3 spatial axes, empty image.
    TypeError
        Complex or non-numeric image.

    See Also
    --------
    pacarray.pac_pool, pacarray.filters.bilateral_filter

    Notes
    -----
    Filtering with this guide, ``pac_pool(x, k, guide=features, normalize="kernel")``, equals a
    bilateral filter with a square window of ``k`` taps and a Gaussian spatial weight of standard
    deviation ``sigma_spatial``, because
    ``exp(-1/2 |f_p - f_q|^2)`` factorizes into the colour and the position terms [1]_.

    References
    ----------
    .. [1] P. Krähenbühl and V. Koltun, "Efficient inference in fully connected CRFs with
       Gaussian edge potentials", NIPS 2011. (Appearance kernel on (position, colour) features.)
    .. [2] C. Tomasi and R. Manduchi, "Bilateral filtering for gray and color images",
       ICCV 1998, :doi:`10.1109/ICCV.1998.710815`.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray.features import color_position_features
    >>> rgb = np.zeros((4, 5, 3), dtype=np.float32)
    >>> f = color_position_features(rgb, sigma_spatial=2.0, sigma_color=0.1, channel_axis=-1)
    >>> f.shape, f.dtype
    ((1, 5, 4, 5), dtype('float32'))
    >>> float(f[0, 3, 2, 0]), float(f[0, 4, 0, 4])   # row 2 / 2.0, column 4 / 2.0
    (1.0, 2.0)
    """
    xp = namespace(select_backend(image=image))
    image = _args.as_float_image(xp, image)
    planar, _ = _args.channels_first(image, channel_axis, ranks=(1, 2, 3))
    channels, spatial = planar.shape[0], tuple(planar.shape[1:])
    ndim = len(spatial)
    sigmas = _bilateral.per_axis(sigma_spatial, "sigma_spatial", ndim, spatial)
    spacing = _bilateral.per_axis(spacing, "spacing", ndim, spatial, default=1.0)
    entries = np.atleast_1d(np.asarray(sigma_color, dtype=object))
    if entries.ndim != 1 or entries.size not in (1, channels):
        raise ValueError(
            f"sigma_color must be a scalar or have one entry per channel ({channels}), got "
            f"{sigma_color!r}"
        )
    colour_scale = np.array([_args.positive_scalar(v, "sigma_color") for v in entries])
    dtype = image.dtype
    for value in colour_scale:
        _args.inverse_fits_dtype(float(value), "sigma_color", dtype)
    for sigma, step in zip(sigmas, spacing):
        _args.inverse_fits_dtype(sigma / step, "sigma_spatial", dtype)
    features = xp.empty((1, channels + ndim, *spatial), dtype=dtype)
    scale = xp.asarray(np.broadcast_to(1.0 / colour_scale, (channels,)), dtype=dtype)
    features[0, :channels] = planar * scale[(slice(None),) + (None,) * ndim]
    for axis, (size, sigma, step) in enumerate(zip(spatial, sigmas, spacing)):
        # Pixel units as before volumes (index / sigma); physical ones when spacing is given.
        coordinate = (xp.arange(size, dtype=dtype) / dtype.type(sigma) if step == 1.0 else
                      xp.asarray(np.arange(size) * step / sigma, dtype=dtype))
        shape = [1] * ndim
        shape[axis] = size
        features[0, channels + axis] = coordinate.reshape(shape)
    return features
