"""Edge-aware image filters built on pixel-adaptive convolution.

* :func:`bilateral_filter` — bilateral and joint (cross) bilateral filtering;
* :func:`joint_bilateral_upsample` — upsampling guided by a high-resolution image;
* :func:`normalized_convolution` — filling missing or uncertain samples, optionally edge-aware.

NumPy arrays run on dedicated Numba kernels (bilateral filter, joint upsampling) or on the fused
``pac_pool``; CuPy arrays run on the GPU through the core operations. Images follow
scikit-image's conventions: ``(H, W)`` grayscale, or a channel axis named by ``channel_axis``.
All filters share one dtype policy: bool, integer and float16 inputs are computed in float32,
float32 and float64 stay as they are; the result has the computation dtype.
"""

from __future__ import annotations


import numpy as np

from . import _args
from . import _bilateral
from ._dispatch import backend_module, delegate_lazy, namespace, select_backend
from .kernels import Gaussian
from .ops import pac_pool

__all__ = ["bilateral_filter", "joint_bilateral_upsample", "normalized_convolution"]


@delegate_lazy("bilateral_filter")
def bilateral_filter(
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
    output=None,
    spacing=None,
):
    """Bilateral filter; joint (cross) bilateral filter when a ``guide`` is given.

    Each output pixel is the weighted mean of the pixels in a window around it, weighted by
    their distance in space and by the difference of their colours (of the guide's colours in
    the joint filter): smooths flat regions while keeping edges.

    Parameters
    ----------
    image : array_like, shape (L,), (H, W) or (D, H, W), or with a channel axis
        A signal, an image or a volume (scikit-image's convention: without ``channel_axis``
        every axis is spatial). NumPy or CuPy array. bool, integer and float16 images are
        computed in float32 (values unchanged: a uint8 image keeps its 0..255 scale); float32
        and float64 stay.
    sigma_spatial : float or sequence of float
        Standard deviation of the spatial Gaussian, in the units of ``spacing`` (pixels by
        default); > 0. One value, or one per spatial axis.
    sigma_color : float
        Standard deviation of the range Gaussian, in the guide's units (in the image's when no
        guide is given); > 0.
    radius : int or sequence of int, optional
        Window radius in pixels, one value or one per spatial axis. Default
        ``ceil(3 * sigma_spatial / spacing)`` per axis, which holds 99.7 % of the spatial
        Gaussian along each axis (scikit-image's ``denoise_bilateral`` uses the same extent).
        At most 4 times the image's largest side.
    window : {"disk", "square"}, default "disk"
        ``"disk"`` keeps the taps inside the ellipse (ellipsoid) inscribed in the box of the
        radii: ``dy**2 + dx**2 <= radius**2`` for one radius in 2-D (OpenCV's window), a ball
        in 3-D, the whole segment in 1-D. ``"square"`` keeps the whole box (square, cube).
    color_distance : {"l2", "l1"}, default "l2"
        Colour difference ``d`` in the range weight ``exp(-d**2 / (2 sigma_color**2))``:
        Euclidean over the guide's channels, or the sum of absolute differences (OpenCV's).
        Identical for one channel.
    mode : {"mirror", "reflect", "nearest", "wrap", "constant", "exclude"}, default "mirror"
        Border handling, with scipy.ndimage's names: how the image (and the guide) is extended
        past its edges. ``"exclude"`` drops taps outside the image and renormalizes. The default
        ``"mirror"`` (``d c b | a b c d | c b a``) is OpenCV's ``BORDER_DEFAULT`` and does not
        count the edge pixel twice.
    cval : float, default 0.0
        Value outside the image for ``mode="constant"``, in the image and in the guide.
    channel_axis : int or None, default None
        Axis of the image's channels; ``None`` when every axis is spatial (a grey signal,
        image or volume).
    guide : array_like, optional
        Guide for the range weights (joint bilateral filter), with the image's spatial shape and
        any number of channels: the spatial shape alone (one channel), or with one more axis
        holding its channels along ``channel_axis`` (along the last axis when ``channel_axis``
        is None).
    output : dtype, optional
        Dtype of the result. Default: the computation dtype (float32, or float64 for float64
        input). An integer dtype rounds to the nearest integer and clips to its range:
        ``output=image.dtype`` gives a uint8 image back for a uint8 image.
    spacing : float or sequence of float, optional
        Physical size of a pixel (voxel) along each spatial axis, as in
        ``scipy.ndimage``/scikit-image: a 0.2 x 0.1 x 0.1 um confocal stack is filtered in
        micrometres with ``spacing=(0.2, 0.1, 0.1)`` and ``sigma_spatial`` in micrometres.
        Default 1 (pixels).

    Returns
    -------
    filtered : ndarray
        Same shape as ``image``, float32 or float64 (float64 when image or guide is float64).

    Raises
    ------
    ValueError
        Non-positive, NaN or infinite sigmas or spacing; ``sigma_spatial``, ``spacing`` or
        ``radius`` with a length other than the number of spatial axes; radius negative or too
        large; bad ``window``, ``color_distance`` or ``mode``; wrong ``channel_axis``; more
        than 3 spatial axes; guide of another spatial shape; empty image.
    TypeError
        Complex or non-numeric image or guide; radius not an int; arrays from different
        libraries.
    NotImplementedError
        ``color_distance="l1"`` with a multichannel guide on a CuPy array or with more than 8
        guide channels (the core's Gaussian family is Euclidean).

    See Also
    --------
    joint_bilateral_upsample, normalized_convolution
    pacarray.pac_pool : the general operation (Gaussian family, spatial weight,
        ``normalize="kernel"``).

    Notes
    -----
    With guide ``g`` (the image itself when none is given) and window ``N``,

    .. math::

        y_p = \\frac{\\sum_{q \\in N(p)} G(p - q) R(g_p, g_q) x_q}
                   {\\sum_{q \\in N(p)} G(p - q) R(g_p, g_q)},\\quad
        G(\\delta) = e^{-\\sum_i (\\delta_i s_i / \\sigma_{s,i})^2 / 2},\\quad
        R = e^{-d(g_p, g_q)^2 / (2\\sigma_c^2)}

    with ``s`` the ``spacing`` and ``sigma_s`` the ``sigma_spatial`` of each axis.

    [1]_, [2]_. This is ``pac_pool`` with a Gaussian family on ``g / sigma_color``, a Gaussian
    spatial weight and ``normalize="kernel"`` on the image extended by ``mode``.
    ``window="disk"``, ``color_distance="l1"`` and ``mode="mirror"`` reproduce OpenCV's
    ``cv2.bilateralFilter(image, 2 * radius + 1, sigma_color, sigma_spatial)`` for float32
    images (OpenCV interpolates its exponential in a table: differences of order 1e-6).

    On NumPy arrays a dedicated Numba kernel computes each pair of pixels once for both ends,
    with a vectorized polynomial exponential (relative error below 3e-7 in float32, 1e-15 in
    float64; weights below about 1e-30 in float32 are 0); extra memory is a few rows per
    thread plus the output. NaN in the image or guide propagates to every output pixel whose
    window holds it. A volume runs the same kernel with slabs of slices per thread and a ring
    of ``2 r_z + 1`` padded slices per thread as workspace; a long signal is cut into rows of
    65536 samples (with their true neighbours as halo) shared by the threads.

    References
    ----------
    .. [1] C. Tomasi and R. Manduchi, "Bilateral filtering for gray and color images",
       ICCV 1998, :doi:`10.1109/ICCV.1998.710815`.
    .. [2] G. Petschnigg et al., "Digital photography with flash and no-flash image pairs",
       ACM TOG 23(3), 2004, :doi:`10.1145/1015706.1015777` (joint bilateral filter).

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray.filters import bilateral_filter
    >>> step = np.repeat([[0.0] * 4 + [1.0] * 4], 3, axis=0)
    >>> noisy = step + np.random.default_rng(0).normal(0, 0.05, step.shape)
    >>> smooth = bilateral_filter(noisy, sigma_spatial=2.0, sigma_color=0.2)
    >>> bool(np.abs(smooth - step).std() < np.abs(noisy - step).std())
    True
    >>> bool(smooth[:, :4].max() < 0.2 and smooth[:, 4:].min() > 0.8)   # the edge is kept
    True

    A confocal stack with 0.2 um slices and 0.1 um pixels, filtered in micrometres:

    >>> stack = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    >>> out = bilateral_filter(stack, sigma_spatial=0.2, sigma_color=0.3,
    ...                        spacing=(0.2, 0.1, 0.1))   # radius (3, 6, 6) voxels
    >>> out.shape, out.dtype
    ((5, 16, 16), dtype('float32'))
    """
    backend = select_backend(image=image, guide=guide)
    problem = _bilateral.problem(
        namespace(backend), image, guide, sigma_spatial=sigma_spatial, sigma_color=sigma_color,
        radius=radius, window=window, color_distance=color_distance, mode=mode, cval=cval,
        channel_axis=channel_axis, spacing=spacing,
    )
    return _args.cast_output(problem.xp, backend_module(backend).bilateral(problem), output)


@delegate_lazy("joint_bilateral_upsample")
def joint_bilateral_upsample(
    low,
    guide,
    *,
    factor=None,
    sigma_spatial: float = 1.0,
    sigma_color: float,
    radius: int | None = None,
    channel_axis: int | None = None,
    output=None,
):
    """Joint bilateral upsampling: a low-resolution image brought to a guide's resolution.

    Each output pixel is a weighted mean of the nearby low-resolution samples, weighted by
    their distance and by how much the guide at the output pixel resembles the guide at the
    sample's position, so that edges of the result follow the guide's edges (Kopf et al.).

    Parameters
    ----------
    low : array_like, shape (l,), (h, w) or (d, h, w), or with a channel axis
        Low-resolution signal, image or volume (depth, flow, labels' scores, a filter's
        output...); without ``channel_axis`` every axis is spatial.
    guide : array_like, shape (H, W) or (H, W, G), or alike in 1-D and 3-D
        High-resolution guide with low's spatial rank: without a channel axis, or with its
        channels along ``channel_axis`` (along the last axis when ``channel_axis`` is None).
        ``ceil(H / factor) == h`` and alike along every axis.
    factor : int or tuple of int, optional
        Upsampling factor per axis; default ``ceil(H / h)``, ``ceil(W / w)``... Sizes need not
        be divisible: the last sample may cover the guide only in part.
    sigma_spatial : float, default 1.0
        Spatial standard deviation in low-resolution pixels; > 0.
    sigma_color : float
        Range standard deviation in the guide's units; > 0.
    radius : int, optional
        The ``2 * radius + 1`` samples nearest to the output pixel along each axis take part.
        Default ``ceil(2 * sigma_spatial)``.
    channel_axis : int or None, default None
        Axis of ``low``'s channels (and of the guide's, when 3-D).
    output : dtype, optional
        Dtype of the result. Default: the computation dtype (float32, or float64 for float64
        input). An integer dtype rounds to the nearest integer and clips to its range:
        ``output=image.dtype`` gives a uint8 image back for a uint8 image.

    Returns
    -------
    upsampled : ndarray
        The guide's spatial shape with ``low``'s channels at ``channel_axis``; float32 unless
        ``low`` or ``guide`` is float64.

    Raises
    ------
    ValueError
        Bad sigmas, radius, factor, shapes or ``channel_axis``.
    TypeError
        Complex or non-numeric arrays; arrays from different libraries.

    See Also
    --------
    bilateral_filter, normalized_convolution

    Notes
    -----
    With low-resolution samples ``L_j`` at output-pixel positions
    ``c_j = (j + 1/2) * factor - 1/2`` and the guide ``I``,

    .. math::

        U_p = \\frac{\\sum_j G((p - c_j) / \\mathrm{factor}) R(I_p - I_{\\lfloor c_j \\rfloor})
                     L_j}{\\sum_j G(\\cdot) R(\\cdot)},\\quad
        G(\\delta) = e^{-|\\delta|^2 / (2\\sigma_s^2)},\\quad
        R(\\delta) = e^{-|\\delta|^2 / (2\\sigma_c^2)}

    over the window of the ``(2 radius + 1)^2`` nearest samples [1]_. The guide is read at the pixel
    ``floor(c_j)`` (clamped to the guide), the centre of the sample's footprint (its upper-left
    of the four central pixels for even factors). Samples outside the low-resolution image do
    not take part (the weights are renormalized). Where every weight underflows, the result is
    the limit of the formula (weights relative to the largest), not 0/0.

    On NumPy arrays a Numba kernel computes this directly for signals and images; volumes, and
    CuPy arrays, run the same sum as a loop over the window's taps of whole-array operations.

    References
    ----------
    .. [1] J. Kopf, M. F. Cohen, D. Lischinski and M. Uyttendaele, "Joint bilateral
       upsampling", ACM TOG 26(3), 2007, :doi:`10.1145/1276377.1276497`.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray.filters import joint_bilateral_upsample
    >>> guide = np.zeros((8, 8)); guide[:, 5:] = 1.0        # an edge between columns 4 and 5
    >>> low = guide[1::4, 1::4] * 10.0                     # samples at columns 1 and 5
    >>> up = joint_bilateral_upsample(low, guide, sigma_color=0.1)
    >>> up.shape
    (8, 8)
    >>> np.round(up[0], 3)                                 # the edge is where the guide's is
    array([ 0.,  0.,  0.,  0.,  0., 10., 10., 10.])
    """
    backend = select_backend(low=low, guide=guide)
    xp = namespace(backend)
    low = _args.as_float_image(xp, low, "low")
    low_planar, axis = _args.channels_first(low, channel_axis, "low", ranks=(1, 2, 3))
    ndim = low_planar.ndim - 1
    guide_arr = _args.as_float_image(xp, guide, "guide")
    if guide_arr.ndim not in (ndim, ndim + 1):
        raise ValueError(
            f"guide must be {ndim}-D or {ndim + 1}-D (low's {ndim} spatial axes, with or without "
            f"a channel axis), got guide of shape {tuple(guide_arr.shape)} and low of shape "
            f"{tuple(low.shape)}"
        )
    if guide_arr.ndim == ndim:
        guide_spatial = tuple(guide_arr.shape)
    else:
        guide_axis = (-1 if channel_axis is None else channel_axis) % guide_arr.ndim
        guide_spatial = tuple(s for a, s in enumerate(guide_arr.shape) if a != guide_axis)
    guide_planar = _args.guide_planar(guide_arr, channel_axis, guide_spatial)
    out_shape = list(guide_spatial)
    if axis is not None:
        out_shape.insert(axis, low_planar.shape[0])
    if ndim == 1:
        # A signal is an image of one row (factor 1 along it: the row's only sample has
        # spatial weight exp(0) = 1), so the image kernels serve it.
        low_planar, guide_planar = low_planar[:, None], guide_planar[:, None]
        factor = None if factor is None else (1, *_args.int_tuple(factor, "factor", 1))
        axis = None if axis is None else (0 if axis == 0 else 2)
    high_shape = tuple(guide_planar.shape[1:])
    low_shape = tuple(low_planar.shape[1:])
    factors = _args.upsample_factors(factor, low_shape, high_shape)
    sigma_spatial = _args.positive_scalar(sigma_spatial, "sigma_spatial")
    sigma_color = _args.positive_scalar(sigma_color, "sigma_color")
    radius = _args.radius_value(radius, sigma_spatial, 2.0, low_shape)
    dtype = _args.float_result_dtype(low, guide_planar)
    low_planar = low_planar.astype(dtype, copy=False)
    guide_planar = guide_planar.astype(dtype, copy=False)

    taps = tuple(
        _bilateral.axis_taps(size, low_size, f, radius, sigma_spatial)
        for size, low_size, f in zip(high_shape, low_shape, factors)
    )
    # The guide at each sample's position, floor((j + 1/2) * factor - 1/2) clamped.
    guide_samples = guide_planar
    for position, (size, low_size, f) in enumerate(zip(high_shape, low_shape, factors)):
        samples = np.minimum(np.arange(low_size) * f + (f - 1) // 2, size - 1)
        guide_samples = xp.take(guide_samples, xp.asarray(samples), axis=position + 1)
    problem = _bilateral.UpsampleProblem(
        xp=xp, low_planar=low_planar, guide_planar=guide_planar, guide_samples=guide_samples,
        factors=factors, radius=radius, taps=taps,
        # Clamped: beyond float32's range the coefficient would be inf and inf * 0 NaN; the
        # largest finite value gives the same weights (relative to the largest, see Notes).
        range_coef=min(0.5 / (sigma_color * sigma_color), float(np.finfo(dtype).max)),
        channel_axis=axis,
    )
    result = backend_module(backend).joint_upsample(problem)
    if ndim == 1:
        result = result.reshape(out_shape)
    return _args.cast_output(xp, result, output)


@delegate_lazy("normalized_convolution")
def normalized_convolution(
    data,
    certainty,
    *,
    sigma_spatial: float,
    radius: int | None = None,
    guide=None,
    sigma_color: float | None = None,
    channel_axis: int | None = None,
    output=None,
    spacing=None,
):
    """Normalized convolution: missing or uncertain samples filled from their neighbours.

    Parameters
    ----------
    data : array_like, shape (L,), (H, W) or (D, H, W), or with a channel axis
        Samples of a signal, an image or a volume (without ``channel_axis`` every axis is
        spatial); values where the certainty is 0 are ignored. NaN and Inf mark missing samples:
        they get certainty 0 (with one certainty map for all channels, a pixel with a NaN in any
        channel is missing in all of them).
    certainty : array_like, the data's spatial shape or ``data.shape``
        Confidence of each sample in [0, 1] (bool accepted): 0 missing, 1 fully trusted. One map
        for every channel, or one per channel.
    sigma_spatial : float or sequence of float
        Standard deviation of the Gaussian applicability, in the units of ``spacing`` (pixels
        by default); > 0; one value or one per spatial axis.
    radius : int or sequence of int, optional
        Window radius in pixels; default ``ceil(3 * sigma_spatial / spacing)`` per axis.
    guide : array_like, optional
        Makes the applicability edge-aware: a range weight on the guide, as in the joint
        bilateral filter. The data's spatial shape, or with one more axis holding its channels
        along ``channel_axis`` (the last axis when ``channel_axis`` is None).
    sigma_color : float, optional
        Range standard deviation in the guide's units; required with ``guide``.
    channel_axis : int or None, default None
        Axis of the data's channels.
    output : dtype, optional
        Dtype of the result. Default: the computation dtype (float32, or float64 for float64
        input). An integer dtype rounds to the nearest integer and clips to its range:
        ``output=image.dtype`` gives a uint8 image back for a uint8 image.
    spacing : float or sequence of float, optional
        Physical size of a pixel (voxel) per spatial axis, as in ``scipy.ndimage``; default 1.

    Returns
    -------
    filtered : ndarray
        ``data``'s shape: the certainty-weighted mean of the window. 0 where no sample in the
        window has positive certainty.
    output_certainty : ndarray
        The spatial shape (or ``data``'s shape with per-channel certainty): the
        applicability-weighted mean certainty of the window, in [0, 1].

    Raises
    ------
    ValueError
        Bad sigmas, spacing or radius (values or lengths); certainty outside [0, 1],
        non-finite or of the wrong shape; guide of the wrong shape; ``guide`` without
        ``sigma_color``; more than 3 spatial axes.
    TypeError
        Complex or non-numeric arrays; arrays from different libraries.

    See Also
    --------
    bilateral_filter, joint_bilateral_upsample

    Notes
    -----
    With applicability ``a_pq = G(p - q) R(g_p, g_q)`` (``R = 1`` without a guide) and
    certainty ``c`` [1]_,

    .. math::

        y_p = \\frac{\\sum_q a_{pq} c_q x_q}{\\sum_q a_{pq} c_q},\\qquad
        c'_p = \\frac{\\sum_q a_{pq} c_q}{\\sum_q a_{pq}}

    over the in-image taps of the window: outside the image there is no data (certainty 0),
    and those taps count in neither sum. This is ``pac_pool`` with the certainty as ``mask``
    and ``normalize="mask_kernel"`` (the result) and ``pac_pool`` of the certainty with
    ``normalize="kernel"`` (the output certainty), so it runs on every backend of the core.

    References
    ----------
    .. [1] H. Knutsson and C.-F. Westin, "Normalized and differential convolution", CVPR 1993,
       :doi:`10.1109/CVPR.1993.341081`.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray.filters import normalized_convolution
    >>> data = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    >>> certainty = np.array([[1.0, 1.0, 0.0, 1.0, 1.0]])   # the 3 is missing
    >>> filled, confidence = normalized_convolution(data, certainty, sigma_spatial=1.0,
    ...                                             radius=1)
    >>> float(filled[0, 2])
    3.0
    >>> bool(confidence[0, 2] < 1.0)
    True
    """
    xp = namespace(select_backend(data=data, certainty=certainty, guide=guide))
    data = _args.as_float_image(xp, data, "data")
    planar, axis = _args.channels_first(data, channel_axis, "data", ranks=(1, 2, 3))
    spatial_shape = tuple(planar.shape[1:])
    certainty_arr = _args.convert(xp, certainty, "certainty")
    if certainty_arr.dtype.kind == "c":
        raise TypeError(f"certainty must be real, got dtype {certainty_arr.dtype}")
    if tuple(certainty_arr.shape) == spatial_shape:
        per_channel = False
        certainty_planar = certainty_arr[None]
    elif tuple(certainty_arr.shape) == tuple(data.shape) and axis is not None:
        per_channel = True
        certainty_planar, _ = _args.channels_first(certainty_arr, channel_axis, "certainty",
                                                   ranks=(1, 2, 3))
    else:
        raise ValueError(
            f"certainty must have shape {spatial_shape} or the data's shape "
            f"{tuple(data.shape)}, got {tuple(certainty_arr.shape)}"
        )
    low, high = float(certainty_arr.min()), float(certainty_arr.max())
    if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low and high <= 1.0):
        raise ValueError(f"certainty must lie in [0, 1], got values in [{low}, {high}]")
    ndim = len(spatial_shape)
    sigmas = _bilateral.per_axis(sigma_spatial, "sigma_spatial", ndim, spatial_shape)
    spacing = _bilateral.per_axis(spacing, "spacing", ndim, spatial_shape, default=1.0)
    pixel_sigma = tuple(s / d for s, d in zip(sigmas, spacing))
    radius = _bilateral.radius_per_axis(radius, pixel_sigma, 3.0, spatial_shape)
    features = None
    if guide is not None:
        if sigma_color is None:
            raise ValueError("sigma_color is required with a guide, got sigma_color=None")
        sigma_color = _args.positive_scalar(sigma_color, "sigma_color")
        features = _args.guide_planar(_args.as_float_image(xp, guide, "guide"), channel_axis,
                                         spatial_shape)
    elif sigma_color is not None:
        raise ValueError(f"sigma_color needs a guide, got sigma_color={sigma_color!r} and no "
                         "guide")
    dtype = _args.float_result_dtype(data, features)
    planar = planar.astype(dtype, copy=False)
    certainty_planar = certainty_planar.astype(dtype)
    missing = ~xp.isfinite(planar)
    if bool(missing.any()):
        # NaN (or Inf) is the usual marker of a missing sample: certainty 0 there, and a finite
        # stand-in value that the zero certainty then ignores.
        if per_channel:
            certainty_planar = xp.where(missing, 0, certainty_planar).astype(dtype)
        else:
            certainty_planar = xp.where(missing.any(axis=0), 0, certainty_planar).astype(dtype)
        planar = xp.where(missing, 0, planar).astype(dtype)
    if features is not None:
        _args.inverse_fits_dtype(sigma_color, "sigma_color", dtype)
        features = (features.astype(dtype) * dtype.type(1.0 / sigma_color))[None]
    size = tuple(2 * r + 1 for r in radius)
    options = dict(
        guide=features, family=Gaussian() if features is not None else None, padding=radius,
        spatial_weight=xp.asarray(_bilateral.gaussian_window(radius, pixel_sigma), dtype=dtype),
    )
    if per_channel:
        result = xp.concatenate([
            pac_pool(planar[None, c:c + 1], size, mask=certainty_planar[None, c:c + 1],
                     normalize="mask_kernel", **options)[0]
            for c in range(planar.shape[0])
        ])
    else:
        result = pac_pool(planar[None], size, mask=certainty_planar[None],
                          normalize="mask_kernel", **options)[0]
    confidence = pac_pool(certainty_planar[None], size, normalize="kernel", **options)[0]
    result = _args.channels_back(xp, result, axis)
    confidence = _args.channels_back(xp, confidence, axis) if per_channel else confidence[0]
    return _args.cast_output(xp, result, output), confidence
