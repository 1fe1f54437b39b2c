"""``xarray.DataArray`` arguments of the public forward functions.

:func:`pacarray._dispatch.delegate_lazy` sends a call here when one of its top-level arguments is
a DataArray. Each function below passes the DataArrays' ``.data`` (NumPy, CuPy or Dask: a Dask
array then goes on to :mod:`pacarray._dask` and the result stays lazy) to the public function
and wraps the result like its main argument: the same dimension names, attributes and name, and
the coordinates that still apply. Coordinates along a dimension whose length the operation
changes are those of the window centres (strided pooling and convolution), of the guide (joint
upsampling, transposed convolution), or dropped.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._geometry import as_tuple


def _data(value):
    return value.data if isinstance(value, xr.DataArray) else value


def _unwrapped(arguments: dict) -> dict:
    return {key: _data(value) for key, value in arguments.items()}


def _wrap(data, template, *, dims=None, coords_from=()):
    """``data`` as a DataArray named and described like ``template`` (returned as is when the
    template is not a DataArray). ``dims`` defaults to the template's; a coordinate is kept when
    every dimension it spans has the same length in the result, taken from the template or from
    the DataArrays in ``coords_from`` (searched first)."""
    if not isinstance(template, xr.DataArray):
        return data
    dims = tuple(template.dims if dims is None else dims)
    sizes = dict(zip(dims, data.shape))
    coords = {}
    for source in (template, *coords_from):
        if not isinstance(source, xr.DataArray):
            continue
        for name, coord in source.coords.items():
            if name in coords or not all(sizes.get(d) == source.sizes[d] for d in coord.dims):
                continue
            coords[name] = coord
    return xr.DataArray(data, dims=dims, coords=coords, attrs=dict(template.attrs),
                        name=template.name)


def _centres(template, axes, sizes, starts, steps):
    """The template restricted to the window centres along ``axes`` (its coordinates there)."""
    if not isinstance(template, xr.DataArray):
        return template
    return template.isel({
        template.dims[axis]: slice(start, start + step * (size - 1) + 1, step)
        for axis, size, start, step in zip(axes, sizes, starts, steps)
    })


def _spatial_axes(ndim, channel_axis):
    if channel_axis is None:  # a signal, image or volume: every axis is spatial
        return tuple(range(ndim))
    channel = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != channel)


# --------------------------------------------------------------------------------------------
# Image filters


def bilateral_filter(image, **keywords):
    from . import filters

    result = filters.bilateral_filter(_data(image), **_unwrapped(keywords))
    return _wrap(result, image)


def joint_bilateral_upsample(low, guide, **keywords):
    from . import filters

    result = filters.joint_bilateral_upsample(_data(low), _data(guide), **_unwrapped(keywords))
    if not isinstance(low, xr.DataArray):
        return result
    channel_axis = keywords.get("channel_axis")
    dims = list(low.dims)
    if isinstance(guide, xr.DataArray):
        # Spatial dimensions (and their coordinates) from the guide, channels from ``low``.
        rank = low.ndim - (channel_axis is not None)
        guide_axes = tuple(range(rank)) if guide.ndim == rank else _spatial_axes(
            guide.ndim, -1 if channel_axis is None else channel_axis)
        for axis, guide_axis in zip(_spatial_axes(low.ndim, channel_axis), guide_axes):
            dims[axis] = guide.dims[guide_axis]
    return _wrap(result, low, dims=dims, coords_from=(guide,))


def normalized_convolution(data, certainty, **keywords):
    from . import filters

    result, confidence = filters.normalized_convolution(_data(data), _data(certainty),
                                                        **_unwrapped(keywords))
    if isinstance(certainty, xr.DataArray):
        confidence = _wrap(confidence, certainty, coords_from=(data,))
    elif isinstance(data, xr.DataArray):
        channel_axis = keywords.get("channel_axis")
        if confidence.ndim == data.ndim:
            confidence = _wrap(confidence, data)
        else:
            template = data.isel({data.dims[channel_axis]: 0}, drop=True)
            confidence = _wrap(confidence, template)
    return _wrap(result, data), confidence


def detail_preserving_pool(image, size=3, **keywords):
    from . import pooling

    result = pooling.detail_preserving_pool(_data(image), size, **_unwrapped(keywords))
    axes = _spatial_axes(image.ndim, keywords.get("channel_axis"))
    sizes = as_tuple(size, "size", len(axes))
    stride = keywords.get("stride")
    strides = sizes if stride is None else as_tuple(stride, "stride", len(axes))
    out = [result.shape[a] for a in axes]
    centres = _centres(image, axes, out, [(k - 1) // 2 for k in sizes], strides)
    return _wrap(result, centres)


def color_position_features(image, **keywords):
    from . import features

    result = features.color_position_features(_data(image), **_unwrapped(keywords))
    if not isinstance(image, xr.DataArray):
        return result
    axes = _spatial_axes(image.ndim, keywords.get("channel_axis"))
    dims = ("batch", "feature", *(image.dims[a] for a in axes))
    return _wrap(result, image, dims=dims)


def pac_crf(unary, image=None, **keywords):
    from . import crf

    result = crf.pac_crf(_data(unary), _data(image), **_unwrapped(keywords))
    if not isinstance(unary, xr.DataArray):
        return result
    if keywords.get("output", "probabilities") == "labels":
        label_axis = keywords.get("label_axis", -3) % unary.ndim
        return _wrap(result, unary.isel({unary.dims[label_axis]: 0}, drop=True))
    return _wrap(result, unary)


# --------------------------------------------------------------------------------------------
# Core operations: x is (N, C, H, W); a strided output keeps the coordinates of its window
# centres, a transposed one those of a DataArray guide (which lives on the output grid).


def _core(function, x, positional, keywords, kernel_size):
    result = function(_data(x), *map(_data, positional), **_unwrapped(keywords))
    if not isinstance(x, xr.DataArray):
        return result
    guide = keywords.get("guide")
    if kernel_size is None:  # transposed: the output grid is the guide's
        return _wrap(result, x, coords_from=(guide,) if isinstance(guide, xr.DataArray) else ())
    sizes = as_tuple(kernel_size, "kernel_size")
    strides = as_tuple(keywords.get("stride", 1), "stride")
    paddings = as_tuple(keywords.get("padding", 0), "padding")
    dilations = as_tuple(keywords.get("dilation", 1), "dilation")
    starts = [d * (k - 1) // 2 - p for k, p, d in zip(sizes, paddings, dilations)]
    centres = _centres(x, (2, 3), result.shape[2:], starts, strides)
    return _wrap(result, centres)


def pac_conv(x, weight, bias=None, **keywords):
    from . import ops

    return _core(ops.pac_conv, x, (weight, bias), keywords,
                 np.shape(_data(weight))[2:])


def pac_conv_transpose(x, weight, bias=None, **keywords):
    from . import ops

    return _core(ops.pac_conv_transpose, x, (weight, bias), keywords, None)


def pac_pool(x, kernel_size, **keywords):
    from . import ops

    return _core(ops.pac_pool, x, (kernel_size,), keywords, kernel_size)
