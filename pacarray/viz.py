"""Pictures of adaptive kernels and of filter results (needs matplotlib).

Three figures that the notebooks use and that help choose a kernel for one's own data:

* :func:`plot_kernel`: the adaptive kernel ``K`` at one pixel, drawn over the image patch it
  covers and as a heatmap of its weights;
* :func:`plot_before_after`: an image before and after a filter, with a difference map;
* :func:`kernel_gallery`: kernels at several pixels (an edge, a corner, a flat area...) for
  several kernel choices side by side.

:func:`kernel_at` computes the kernel that :func:`plot_kernel` draws and needs no matplotlib.

Images are ``(H, W)`` grey, ``(H, W, C)`` channels last (as in scikit-image), or ``(1, C, H, W)``
as the core operations take them; NumPy or CuPy arrays. CuPy arrays are copied to the host for
drawing (only the window around the pixel for :func:`plot_kernel`). matplotlib is imported when
a figure is drawn, not with this module; without it the drawing functions raise ``ImportError``
saying how to install it (``pip install "pacarray[viz]"``). The figures are made with
``matplotlib.pyplot``, so they show inline in Jupyter; pass ``ax=`` to draw into your own axes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from . import _args
from ._geometry import make_geometry
from .kernels import pac_kernel

__all__ = [
    "BeforeAfterFigure",
    "GalleryFigure",
    "KernelFigure",
    "kernel_at",
    "kernel_gallery",
    "plot_before_after",
    "plot_kernel",
]

#: Keywords of :func:`kernel_at` that an entry of ``kernel_gallery(families=...)`` may override.
_KERNEL_OPTIONS = ("kernel_size", "guide", "family", "smooth", "spatial_weight", "mask",
                   "normalize", "dilation", "channel_wise")


class KernelFigure(NamedTuple):
    """Result of :func:`plot_kernel`."""

    figure: object
    """The matplotlib ``Figure``."""
    axes: list
    """The neighbourhood axes, then one heatmap axes per kernel channel."""
    kernel: np.ndarray
    """The drawn kernel, shape ``(1 or F, kh, kw)``."""


class BeforeAfterFigure(NamedTuple):
    """Result of :func:`plot_before_after`."""

    figure: object
    """The matplotlib ``Figure``."""
    axes: list
    """Axes of the before, after and difference panels."""
    difference: np.ndarray
    """The drawn difference map, shape ``(H, W)``."""


class GalleryFigure(NamedTuple):
    """Result of :func:`kernel_gallery`."""

    figure: object
    """The matplotlib ``Figure``."""
    axes: np.ndarray
    """Axes, shape ``(len(pixels), 1 + len(families))``: neighbourhood, then one per family."""
    kernels: dict
    """``(pixel label, family name) -> kernel`` of shape ``(1 or F, kh, kw)``."""


# --------------------------------------------------------------------------------------------
# Arrays


def _is_cupy(array) -> bool:
    module = type(array).__module__
    return module == "cupy" or module.startswith("cupy.")


def _to_numpy(array):
    # A CuPy array means CuPy is already imported; asking sys.modules keeps this module from
    # ever importing it.
    if _is_cupy(array):
        return sys.modules["cupy"].asnumpy(array)
    return np.asarray(array)


def _planar(array, name: str):
    """``array`` as ``(C, H, W)`` in its own array library (no copy to the host)."""
    if not hasattr(array, "ndim") or not hasattr(array, "transpose"):
        array = np.asarray(array)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array.transpose(2, 0, 1)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(
                f"{name} with 4 dimensions must be (1, C, H, W), got shape {tuple(array.shape)}"
            )
        return array[0]
    raise ValueError(
        f"{name} must be (H, W), (H, W, C) or (1, C, H, W), got shape {tuple(array.shape)}"
    )


def _float_features(planar):
    """Guide features as floats: integer and bool images on a [0, 1] scale, floats unchanged."""
    kind = planar.dtype.kind
    if kind == "b":
        return planar.astype(np.float64)
    if kind in "iu":
        return planar.astype(np.float64) / float(np.iinfo(planar.dtype).max)
    return planar


def _pixel(pixel, shape) -> tuple[int, int]:
    try:
        row, col = pixel
    except (TypeError, ValueError):
        raise TypeError(f"pixel must be a (row, column) pair of ints, got {pixel!r}") from None
    if not (_args.is_int(row) and _args.is_int(col)):
        raise TypeError(f"pixel must be a (row, column) pair of ints, got {pixel!r}")
    row, col = int(row), int(col)
    if not (0 <= row < shape[0] and 0 <= col < shape[1]):
        raise ValueError(f"pixel {pixel!r} is outside the image of shape {tuple(shape)}")
    return row, col


def _smoothing_radius(smooth) -> tuple[int, int]:
    """How far the centre-feature smoothing reaches; pac_kernel itself rejects bad values."""
    if smooth is None:
        return 0, 0
    if isinstance(smooth, str):
        return 1, 1                      # "gaussian": 3 x 3
    if isinstance(smooth, tuple) and len(smooth) == 2 and isinstance(smooth[0], str):
        size = smooth[1]
        return (size // 2, size // 2) if _args.is_int(size) else (0, 0)
    shape = np.shape(smooth)
    return (shape[0] // 2, shape[1] // 2) if len(shape) == 2 else (0, 0)


def _mask_planar(mask, shape, name: str = "mask"):
    if not hasattr(mask, "ndim"):
        mask = np.asarray(mask)
    if mask.ndim == 4 and mask.shape[:2] == (1, 1):
        mask = mask[0, 0]
    if mask.ndim != 2 or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the image's spatial shape {tuple(shape)} (or be (1, 1, H, W)), "
            f"got shape {tuple(mask.shape)}"
        )
    return mask


def kernel_at(
    image,
    kernel_size,
    pixel,
    *,
    guide=None,
    family=None,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    dilation=1,
    channel_wise=False,
):
    """Adaptive kernel ``K`` of a stride-1, same-size operation at one pixel.

    The value of ``pac_kernel(guide, kernel_size, padding=dilation*(kernel_size-1)//2, ...)``
    at ``pixel``, computed on the window around the pixel only, so it is cheap on large images.

    Parameters
    ----------
    image : array_like
        ``(H, W)``, ``(H, W, C)`` (channels last) or ``(1, C, H, W)``; NumPy or CuPy. It is the
        guide when ``guide`` is None.
    kernel_size : int or (int, int)
        Odd number of taps per dimension.
    pixel : (int, int)
        Row and column of the centre pixel.
    guide : array_like, optional
        Guide features in one of the image's layouts and with its spatial shape. By default the
        image itself, integer images divided by their dtype's maximum (values on [0, 1]).
        Scale it to set the bandwidth of a Gaussian kernel: ``guide=image / 0.1`` makes colour
        differences of 0.1 count as one standard deviation.
    family, smooth, spatial_weight
        As in :func:`pacarray.pac_kernel`.
    mask : array_like, optional
        ``(H, W)`` or ``(1, 1, H, W)``, values in [0, 1]; needed by ``normalize="mask"`` and
        ``"mask_kernel"``.
    normalize : {None, "kernel", "mask", "mask_kernel"}
        As in :func:`pacarray.pac_kernel`.
    dilation : int or (int, int), default 1
        Spacing of the taps in pixels.
    channel_wise : bool, default False
        One kernel per guide channel, as in :func:`pacarray.pac_kernel`.

    Returns
    -------
    numpy.ndarray
        Shape ``(1, kh, kw)`` for a shared kernel, ``(F, kh, kw)`` channel-wise; ``[f, ty, tx]``
        weighs the neighbour at ``pixel + (ty - (kh-1)/2, tx - (kw-1)/2) * dilation``. Taps
        outside the image are 0.

    Raises
    ------
    ValueError, TypeError
        For a pixel outside the image, layouts that do not match, and every error of
        :func:`pacarray.pac_kernel` (the message names the parameter).

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_kernel
    >>> from pacarray.viz import kernel_at
    >>> image = np.random.default_rng(0).random((16, 16, 3))
    >>> K = kernel_at(image, 5, (3, 9), guide=image / 0.2, normalize="kernel")
    >>> K.shape
    (1, 5, 5)
    >>> full = pac_kernel(image.transpose(2, 0, 1)[None] / 0.2, 5, padding=2,
    ...                   normalize="kernel")
    >>> bool(np.allclose(K, full[0, :, :, :, 3, 9]))
    True
    """
    features = _planar(image if guide is None else guide, "image" if guide is None else "guide")
    if guide is not None:
        image_shape = tuple(_planar(image, "image").shape[1:])
        if tuple(features.shape[1:]) != image_shape:
            raise ValueError(
                f"guide must have the image's spatial shape {image_shape}, got spatial shape "
                f"{tuple(features.shape[1:])}"
            )
    features = _float_features(features)
    height, width = features.shape[1:]
    row, col = _pixel(pixel, (height, width))
    geometry = make_geometry(kernel_size, dilation=dilation)
    half = geometry.half_span
    reach = _smoothing_radius(smooth)
    # The window plus the smoothing's reach: the smoothed centre and every tap see exactly the
    # values they would see in the whole image (borders included, since the crop stops there).
    top = max(0, row - half[0] - reach[0])
    bottom = min(height, row + half[0] + reach[0] + 1)
    left = max(0, col - half[1] - reach[1])
    right = min(width, col + half[1] + reach[1] + 1)
    crop = _to_numpy(features[:, top:bottom, left:right])[None]
    crop_mask = None
    if mask is not None:
        crop_mask = _to_numpy(_mask_planar(mask, (height, width))[top:bottom, left:right])
        crop_mask = crop_mask[None, None]
    K = pac_kernel(
        np.ascontiguousarray(crop), geometry.kernel_size, padding=half,
        dilation=geometry.dilation, family=family, smooth=smooth,
        spatial_weight=None if spatial_weight is None else _to_numpy(spatial_weight),
        mask=crop_mask, normalize=normalize, channel_wise=channel_wise,
    )
    return np.array(K[0, :, :, :, row - top, col - left])


# --------------------------------------------------------------------------------------------
# Drawing helpers


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            'pacarray.viz draws with matplotlib, which is not installed: '
            'pip install "pacarray[viz]" (or pip install matplotlib)'
        ) from error
    return plt


def _display(planar, value_range=None):
    """``(C, H, W)`` NumPy data as an ``imshow`` array and its keywords.

    One channel is drawn grey, three or four as RGB(A), other counts as the channel mean in grey.
    ``value_range`` fixes the grey scale (or the RGB scaling) so that two panels compare.
    """
    planar = np.asarray(planar)
    channels = planar.shape[0]
    if channels in (3, 4):
        data = planar.transpose(1, 2, 0)
        if data.dtype == np.uint8:
            return data, {}
        data = data.astype(np.float64)
        low, high = value_range if value_range is not None else _finite_range(data)
        if data.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        scale = high - low if high > low else 1.0
        return np.clip((data - low) / scale, 0.0, 1.0), {}
    data = planar[0] if channels == 1 else planar.astype(np.float64).mean(axis=0)
    low, high = value_range if value_range is not None else _finite_range(data)
    return data, {"cmap": "gray", "vmin": low, "vmax": high if high > low else low + 1.0}


def _finite_range(data) -> tuple[float, float]:
    finite = np.asarray(data, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def _kernel_limits(kernel) -> tuple[float, float]:
    low = min(0.0, float(kernel.min()))
    high = float(kernel.max())
    return low, high if high > low else low + 1.0


def _describe(family, normalize, smooth, channel_wise) -> str:
    name = "Gaussian()" if family is None else repr(family)
    parts = [name, f"normalize={normalize!r}"]
    if smooth is not None:
        parts.append(f"smooth={smooth!r}" if isinstance(smooth, (str, tuple)) else "smooth=array")
    if channel_wise:
        parts.append("channel-wise")
    return ", ".join(parts)


def _window_extent(centre, half):
    """imshow extent of the window around ``centre`` in image coordinates (pixel centres)."""
    row, col = centre
    return (col - half[1] - 0.5, col + half[1] + 0.5, row + half[0] + 0.5, row - half[0] - 0.5)


def _draw_neighbourhood(ax, display_planar, centre, half, shape):
    """The image patch under the window, in image coordinates; outside the image stays blank."""
    row, col = centre
    top, bottom = max(0, row - half[0]), min(shape[0], row + half[0] + 1)
    left, right = max(0, col - half[1]), min(shape[1], col + half[1] + 1)
    patch = _to_numpy(display_planar[:, top:bottom, left:right])
    # The grey scale of the whole image, so that a flat patch is not stretched into contrast.
    value_range = (float(display_planar.min()), float(display_planar.max()))
    if not all(np.isfinite(value_range)):
        value_range = _finite_range(patch)
    data, options = _display(patch, value_range)
    ax.imshow(data, extent=(left - 0.5, right - 0.5, bottom - 0.5, top - 0.5),
              interpolation="nearest", **options)
    extent = _window_extent(centre, half)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    # First, centre and last row and column only: tick labels are most of a figure's drawing time.
    ax.set_xticks([col - half[1], col, col + half[1]] if half[1] else [col])
    ax.set_yticks([row - half[0], row, row + half[0]] if half[0] else [row])


def _draw_taps(ax, kernel_plane, centre, dilation, cmap, limits):
    """Markers at the tap positions, area proportional to |weight|, coloured like the heatmap."""
    kh, kw = kernel_plane.shape
    rows = centre[0] + (np.arange(kh) - (kh - 1) // 2) * dilation[0]
    cols = centre[1] + (np.arange(kw) - (kw - 1) // 2) * dilation[1]
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    largest = float(np.abs(kernel_plane).max())
    sizes = (np.abs(kernel_plane) / largest if largest > 0 else np.zeros_like(kernel_plane))
    cell = 240.0 / max(kh, kw)           # marker area in points^2 at the largest weight
    ax.scatter(grid_cols.ravel(), grid_rows.ravel(), s=(cell * 4 * sizes).ravel(),
               c=kernel_plane.ravel(), cmap=cmap, vmin=limits[0], vmax=limits[1],
               edgecolors="white", linewidths=0.6)
    ax.plot(centre[1], centre[0], marker="+", color="red", markersize=8, mew=1.5)


def _draw_heatmap(ax, kernel_plane, dilation, cmap, colorbar=True):
    """Kernel weights on axes labelled in pixel offsets from the centre."""
    kh, kw = kernel_plane.shape
    half = ((kh - 1) // 2 * dilation[0], (kw - 1) // 2 * dilation[1])
    extent = (-half[1] - dilation[1] / 2, half[1] + dilation[1] / 2,
              half[0] + dilation[0] / 2, -half[0] - dilation[0] / 2)
    low, high = _kernel_limits(kernel_plane)
    image = ax.imshow(kernel_plane, cmap=cmap, vmin=low, vmax=high, extent=extent,
                      interpolation="nearest")
    ax.set_xticks([-half[1], 0, half[1]] if half[1] else [0])
    ax.set_yticks([-half[0], 0, half[0]] if half[0] else [0])
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
        bar.locator = _max_n_locator(4)
        bar.update_ticks()
    return image


def _max_n_locator(count: int):
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(count)


def _axes_list(ax, count: int, name: str = "ax"):
    if isinstance(ax, np.ndarray):
        ax = list(ax.ravel())
    elif not isinstance(ax, Sequence):
        ax = [ax]
    if len(ax) != count:
        raise ValueError(f"{name} must hold {count} Axes for this figure, got {len(ax)}")
    return list(ax)


# --------------------------------------------------------------------------------------------
# Figures


def plot_kernel(
    image,
    kernel_size,
    pixel,
    *,
    guide=None,
    family=None,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    dilation=1,
    channel_wise=False,
    ax=None,
    cmap="viridis",
) -> KernelFigure:
    """Draw the adaptive kernel at one pixel over its neighbourhood and as a heatmap.

    The first panel shows the image under the kernel's window, in image coordinates, with a
    marker on every tap: its area is proportional to the tap's weight and its colour follows
    the heatmap's scale (for a channel-wise kernel, the mean over channels); a red cross marks
    the pixel. The next panels show the weights, one per kernel channel, on axes labelled in
    pixel offsets from the centre.

    Parameters
    ----------
    image, kernel_size, pixel, guide, family, smooth, spatial_weight, mask, normalize, \
dilation, channel_wise
        As in :func:`kernel_at`.
    ax : sequence of matplotlib Axes, optional
        ``1 + (F if channel_wise else 1)`` axes to draw into; a new figure by default.
    cmap : str, default "viridis"
        Colormap of the weights.

    Returns
    -------
    KernelFigure
        ``(figure, axes, kernel)``; ``kernel`` is what :func:`kernel_at` returns.

    Raises
    ------
    ImportError
        Without matplotlib.
    ValueError, TypeError
        As :func:`kernel_at`, and for an ``ax`` of the wrong length.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from pacarray.data import sample_image
    >>> from pacarray.viz import plot_kernel
    >>> photo = sample_image()
    >>> fig, axes, K = plot_kernel(photo, 7, (200, 250), guide=photo / 255 / 0.1,
    ...                            normalize="kernel")
    >>> len(axes), K.shape
    (2, (1, 7, 7))
    """
    plt = _pyplot()
    kernel = kernel_at(image, kernel_size, pixel, guide=guide, family=family, smooth=smooth,
                       spatial_weight=spatial_weight, mask=mask, normalize=normalize,
                       dilation=dilation, channel_wise=channel_wise)
    geometry = make_geometry(kernel_size, dilation=dilation)
    planar = _planar(image, "image")
    centre = _pixel(pixel, planar.shape[1:])
    count = 1 + kernel.shape[0]
    if ax is None:
        figure, axes = plt.subplots(1, count, figsize=(3.4 * count, 3.4), layout="constrained",
                                    squeeze=False)
        axes = list(axes[0])
        figure.suptitle(_describe(family, normalize, smooth, channel_wise), fontsize="medium")
    else:
        axes = _axes_list(ax, count)
        figure = axes[0].figure
    _draw_neighbourhood(axes[0], planar, centre, geometry.half_span, planar.shape[1:])
    overlay = kernel.mean(axis=0)
    _draw_taps(axes[0], overlay, centre, geometry.dilation, cmap, _kernel_limits(overlay))
    axes[0].set_title(f"neighbourhood of {centre}")
    for channel, panel in enumerate(axes[1:]):
        _draw_heatmap(panel, kernel[channel], geometry.dilation, cmap)
        panel.set_title("K" if kernel.shape[0] == 1 else f"K, channel {channel}")
        panel.set_xlabel("column offset (px)")
        panel.set_ylabel("row offset (px)")
    return KernelFigure(figure, axes, kernel)


def plot_before_after(before, after, *, ax=None, titles=("before", "after", "difference"),
                      cmap=None) -> BeforeAfterFigure:
    """Draw an image before and after a filter, and where they differ.

    Grey images share one grey scale, so the two panels compare. The difference is
    ``after - before`` (signed, blue to red, symmetric around 0) for one channel and its
    Euclidean norm over the channels (0 upwards) for several.

    Parameters
    ----------
    before, after : array_like
        Same shape: ``(H, W)``, ``(H, W, C)`` or ``(1, C, H, W)``; NumPy or CuPy.
    ax : sequence of 3 matplotlib Axes, optional
        Axes to draw into; a new figure by default.
    titles : sequence of 3 str, default ("before", "after", "difference")
        Panel titles; the difference panel's gets the largest absolute difference appended.
    cmap : str, optional
        Colormap of the difference; "RdBu_r" (one channel) or "magma" (several) by default.

    Returns
    -------
    BeforeAfterFigure
        ``(figure, axes, difference)``; ``difference`` is the drawn ``(H, W)`` map.

    Raises
    ------
    ImportError
        Without matplotlib.
    ValueError
        When the shapes differ or are not an image layout, or ``ax``/``titles`` have the wrong
        length.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from pacarray.viz import plot_before_after
    >>> noisy = np.random.default_rng(0).random((32, 32))
    >>> fig, axes, difference = plot_before_after(noisy, np.full_like(noisy, 0.5))
    >>> [a.get_title() for a in axes][:2], difference.shape
    (['before', 'after'], (32, 32))
    """
    plt = _pyplot()
    first = _to_numpy(_planar(before, "before"))
    second = _to_numpy(_planar(after, "after"))
    if first.shape != second.shape:
        raise ValueError(
            f"before and after must have the same shape, got {tuple(np.shape(before))} and "
            f"{tuple(np.shape(after))}"
        )
    titles = tuple(titles)
    if len(titles) != 3:
        raise ValueError(f"titles must hold 3 strings, got {titles!r}")
    signed = second.astype(np.float64) - first.astype(np.float64)
    if first.shape[0] == 1:
        difference = signed[0]
        largest = float(np.nanmax(np.abs(difference))) if difference.size else 0.0
        largest = largest if largest > 0 else 1.0
        diff_options = {"cmap": cmap or "RdBu_r", "vmin": -largest, "vmax": largest}
    else:
        difference = np.sqrt((signed * signed).sum(axis=0))
        largest = float(np.nanmax(difference)) if difference.size else 0.0
        diff_options = {"cmap": cmap or "magma", "vmin": 0.0,
                        "vmax": largest if largest > 0 else 1.0}
    low_first, high_first = _finite_range(first)
    low_second, high_second = _finite_range(second)
    shared = (min(low_first, low_second), max(high_first, high_second))
    if ax is None:
        figure, axes = plt.subplots(1, 3, figsize=(11, 3.8), layout="constrained")
        axes = list(axes)
    else:
        axes = _axes_list(ax, 3)
        figure = axes[0].figure
    for panel, planar, title in zip(axes[:2], (first, second), titles[:2]):
        data, options = _display(planar, shared)
        panel.imshow(data, interpolation="nearest", **options)
        panel.set_title(title)
        panel.set_axis_off()
    image = axes[2].imshow(difference, interpolation="nearest", **diff_options)
    figure.colorbar(image, ax=axes[2], shrink=0.8)
    axes[2].set_title(f"{titles[2]} (max {float(np.nanmax(np.abs(difference))):.3g})")
    axes[2].set_axis_off()
    return BeforeAfterFigure(figure, axes, difference)


def _gallery_pixels(pixels):
    if isinstance(pixels, Mapping):
        return [(str(label), pixel) for label, pixel in pixels.items()]
    items = list(pixels)
    if items and _args.is_int(items[0]):
        raise TypeError(
            f"pixels must be a sequence of (row, column) pairs or a mapping label -> pair, "
            f"got {pixels!r}"
        )
    return [(str(tuple(pixel)), pixel) for pixel in items]


def _gallery_options(name, entry, defaults):
    options = dict(defaults)
    if isinstance(entry, Mapping):
        unknown = sorted(set(entry) - set(_KERNEL_OPTIONS))
        if unknown:
            raise ValueError(
                f"families[{name!r}] has unknown options {unknown}; allowed: "
                f"{', '.join(_KERNEL_OPTIONS)}"
            )
        options.update(entry)
    else:
        options["family"] = entry
    return options


def kernel_gallery(
    image,
    pixels,
    families,
    *,
    kernel_size=7,
    guide=None,
    smooth=None,
    spatial_weight=None,
    mask=None,
    normalize=None,
    dilation=1,
    channel_wise=False,
    cmap="viridis",
) -> GalleryFigure:
    """Draw the kernels of several kernel choices at several pixels in one grid.

    One row per pixel: the image under the window (the gallery's ``kernel_size`` and
    ``dilation``), then one heatmap per entry of ``families``, each with its own colour scale
    (the largest weight is in the cell's label). A channel-wise kernel is drawn as the mean of
    its channels.

    Parameters
    ----------
    image : array_like
        ``(H, W)``, ``(H, W, C)`` or ``(1, C, H, W)``; NumPy or CuPy.
    pixels : sequence of (int, int) or mapping of str to (int, int)
        Pixels to look at; a mapping gives each row a label (``{"edge": (120, 200)}``).
    families : mapping of str to family or to dict
        Column title to kernel choice: a family (``Gaussian()``, ``InversePower(...)``, or
        None for the default), or a dict of :func:`kernel_at` keywords (``family``, ``guide``,
        ``smooth``, ``normalize``, ``channel_wise``, ``kernel_size``, ...) that override the
        gallery's defaults for that column.
    kernel_size, guide, smooth, spatial_weight, mask, normalize, dilation, channel_wise
        Defaults of every column, as in :func:`kernel_at`.
    cmap : str, default "viridis"
        Colormap of the weights.

    Returns
    -------
    GalleryFigure
        ``(figure, axes, kernels)``; ``kernels[(label, name)]`` is the drawn kernel before the
        channel mean, as :func:`kernel_at` returns it.

    Raises
    ------
    ImportError
        Without matplotlib.
    ValueError, TypeError
        For empty ``pixels`` or ``families``, unknown options, and the errors of
        :func:`kernel_at`.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from pacarray import Gaussian, InversePower
    >>> from pacarray.viz import kernel_gallery
    >>> image = np.random.default_rng(0).random((24, 24))
    >>> gallery = kernel_gallery(image, {"a": (5, 5), "b": (12, 20)},
    ...                          {"Gaussian": {"guide": image / 0.1},
    ...                           "inverse": InversePower(0.1, -1.0)}, kernel_size=5)
    >>> gallery.axes.shape, gallery.kernels["b", "inverse"].shape
    ((2, 3), (1, 5, 5))
    """
    plt = _pyplot()
    rows = _gallery_pixels(pixels)
    if not rows:
        raise ValueError("pixels must name at least one pixel, got none")
    if not isinstance(families, Mapping) or not families:
        raise ValueError(
            f"families must be a non-empty mapping of column title to family or options, "
            f"got {families!r}"
        )
    defaults = dict(kernel_size=kernel_size, guide=guide, smooth=smooth,
                    spatial_weight=spatial_weight, mask=mask, normalize=normalize,
                    dilation=dilation, channel_wise=channel_wise, family=None)
    columns = [(str(name), _gallery_options(name, entry, defaults))
               for name, entry in families.items()]
    planar = _planar(image, "image")
    geometry = make_geometry(kernel_size, dilation=dilation)
    figure, axes = plt.subplots(len(rows), 1 + len(columns),
                                figsize=(2.3 * (1 + len(columns)), 2.4 * len(rows)),
                                layout="constrained", squeeze=False)
    kernels = {}
    for row_index, (label, pixel) in enumerate(rows):
        centre = _pixel(pixel, planar.shape[1:])
        first = axes[row_index, 0]
        _draw_neighbourhood(first, planar, centre, geometry.half_span, planar.shape[1:])
        first.plot(centre[1], centre[0], marker="+", color="red", markersize=8, mew=1.5)
        first.set_ylabel(f"{label}\n{centre}" if label != str(centre) else label)
        first.set_xticks([])
        first.set_yticks([])
        if row_index == 0:
            first.set_title("neighbourhood")
        for column_index, (name, options) in enumerate(columns, start=1):
            keywords = {k: v for k, v in options.items() if k != "kernel_size"}
            kernel = kernel_at(image, options["kernel_size"], pixel, **keywords)
            kernels[label, name] = kernel
            cell = axes[row_index, column_index]
            shown = kernel.mean(axis=0)
            spacing = make_geometry(options["kernel_size"], dilation=options["dilation"])
            _draw_heatmap(cell, shown, spacing.dilation, cmap, colorbar=False)
            note = f" (mean of {kernel.shape[0]})" if kernel.shape[0] > 1 else ""
            cell.set_xlabel(f"max {float(shown.max()):.3g}{note}", fontsize="small")
            cell.set_xticks([])
            cell.set_yticks([])
            if row_index == 0:
                cell.set_title(name, fontsize="medium")
    return GalleryFigure(figure, axes, kernels)
