"""Argument and image helpers shared by every front end: one dtype policy, one set of checks.

The core operations (``ops``, ``kernels``, ``gradients``) take ``(N, C, *S)`` arrays and use the
array checks at the top; the image filters (``filters``, ``pooling``, ``crf``, ``features``) take
scikit-image-style images and use the image helpers below them. Every check raises ``TypeError``
or ``ValueError`` with the parameter's name and the received value (``docs/design.md`` §3).
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict

import numpy as np

# --------------------------------------------------------------------------------------------
# Scalars


def is_int(value) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is not a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def require_int(value, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int; ``TypeError`` for non-integers (bools included), ``ValueError`` below
    ``minimum``."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def require_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def int_tuple(value, name: str, ndim: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ``ndim`` ints, each ``>= minimum``, as a tuple of ``ndim`` ints;
    ``TypeError`` for non-integers (``3.0``, ``"3"``, ``True``, None), ``ValueError`` for a
    wrong count or a value below ``minimum``."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    kind = "positive" if minimum == 1 else f">= {minimum}"
    message = f"{name} must be a {kind} int or a sequence of {ndim} of them, got {value!r}"
    if not all(is_int(v) for v in values):
        raise TypeError(message)
    if len(values) != ndim or not all(v >= minimum for v in values):
        raise ValueError(message)
    return tuple(int(v) for v in values)


def finite_scalar(value, name: str) -> float:
    """``value`` as a finite float; ``TypeError`` for strings, bools, complex numbers and
    non-numbers."""
    # float() of a NumPy complex scalar drops the imaginary part with a mere warning.
    if isinstance(value, (str, bytes, bool, np.bool_)) or (
        isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


#: Range of a sigma or bandwidth: the filters compute ``1 / (2 sigma**2)`` and ``sigma**2`` in
#: float64, which must neither overflow (``OverflowError`` from Python's ``**``) nor underflow
#: to 0 (a ``0 / 0`` centre weight, NaN). Sigmas outside it have no use in any unit.
SIGMA_RANGE = (1e-150, 1e150)


def positive_scalar(value, name: str, *, allow_none: bool = False) -> float | None:
    """A finite, strictly positive float within :data:`SIGMA_RANGE` (sigmas and bandwidths)."""
    if value is None and allow_none:
        return None
    number = finite_scalar(value, name)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    low, high = SIGMA_RANGE
    if not low <= number <= high:
        raise ValueError(
            f"{name} must lie in [{low:g}, {high:g}] (its square must be a normal float64), "
            f"got {value!r}"
        )
    return number


def fits_dtype(value: float, name: str, dtype) -> float:
    """``value`` unchanged if its magnitude is representable in ``dtype``, else ``ValueError``
    (a float32 computation would turn it into inf and its results into NaN)."""
    if abs(value) > float(np.finfo(dtype).max):
        raise ValueError(
            f"{name}={value!r} does not fit {np.dtype(dtype).name}; use a smaller value or "
            "float64 data"
        )
    return value


def inverse_fits_dtype(value: float, name: str, dtype) -> float:
    """``value`` unchanged if ``1 / value`` is representable in ``dtype`` (a bandwidth the data
    is divided by), else ``ValueError``."""
    if 1.0 / abs(value) > float(np.finfo(dtype).max):
        raise ValueError(
            f"{name}={value!r} is too small for {np.dtype(dtype).name}: 1 / {name} overflows; "
            f"use a larger {name} or float64 data"
        )
    return value


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Arrays of the core operations (dtype policy in one place)


def convert(xp, value, name: str):
    """``xp.asarray(value)`` with a clear error for objects that are not numeric arrays.

    NumPy masked arrays are rejected: ``asarray`` would silently drop their mask.
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray, whose mask pacarray would ignore; pass "
            f"{name}.filled(...) or {name}.data and give the mask as mask= (certainty= for "
            "normalized_convolution)"
        )
    try:
        array = xp.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}: {error}") from None
    if array.dtype.kind not in "biuf c":
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return array


def require_float(array, name: str) -> None:
    """Reject integer, bool, complex and extended-precision arrays where real floats are
    required."""
    if array.dtype.kind != "f" or array.dtype.itemsize > 8:
        raise TypeError(
            f"{name} must have a real floating dtype (float32 or float64), got {array.dtype}; "
            f"convert it first, e.g. {name}.astype(numpy.float32)"
        )


def require_real(array, name: str) -> None:
    """Reject complex arrays where real numbers (of any kind: bool, int, float) are required."""
    if array.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got dtype {array.dtype}")


def compute_dtype(*arrays) -> np.dtype:
    """float64 if any float argument is float64, else float32 (float16 computes as float32)."""
    dtypes = [a.dtype for a in arrays if a is not None]
    result = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)
    if result.kind != "f" or result.itemsize < 4:
        return np.dtype(np.float32)
    if result.itemsize > 8:
        raise TypeError(f"extended precision {result} is not supported; use float64")
    return np.dtype(result)


def require_ndim(array, ndim: int, name: str, layout: str) -> None:
    if array.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D with layout {layout}, got shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")


def cast(xp, array, dtype):
    """C-contiguous array of ``dtype``; a copy only when needed (inputs are never written)."""
    return xp.ascontiguousarray(array, dtype=dtype)


#: Largest host array :func:`constant` keeps a device copy of, in bytes.
CONSTANT_LIMIT_BYTES = 4096
#: Device copies :func:`constant` keeps (least recently used dropped first).
CONSTANT_CACHE_SIZE = 256
_constants: OrderedDict = OrderedDict()
_constants_lock = threading.Lock()


def constant(xp, values, dtype):
    """A small host array (``values``: the family's parameters, a window, a placeholder) as a
    C-contiguous ``dtype`` array of ``xp``, which the kernels read and never write.

    NumPy gets a fresh array. Another namespace (CuPy) gets one device copy per device, dtype,
    shape and content, kept for later calls (up to :data:`CONSTANT_CACHE_SIZE` of them, each at
    most :data:`CONSTANT_LIMIT_BYTES`): a call repeated with the same parameters uploads nothing.
    An upload from pageable host memory makes the host wait until the stream has run what was
    queued before it, so three uploads per call serialized every call with the GPU
    (``docs/design.md`` §4).
    """
    host = np.ascontiguousarray(values, dtype=dtype)
    if xp is np or host.nbytes > CONSTANT_LIMIT_BYTES:
        return xp.asarray(host)
    key = (xp.__name__, xp.cuda.Device().id, host.dtype.str, host.shape, host.tobytes())
    with _constants_lock:
        array = _constants.get(key)
        if array is not None:
            _constants.move_to_end(key)
            return array
    array = xp.asarray(host)
    with _constants_lock:
        _constants[key] = array
        while len(_constants) > CONSTANT_CACHE_SIZE:
            _constants.popitem(last=False)
    return array


def to_host(xp, array) -> np.ndarray:
    """``array`` as a NumPy array (one device-to-host copy for CuPy)."""
    return array if xp is np else xp.asnumpy(array)


def host_or(xp, value):
    """``numpy`` for a value that lives on the host (a NumPy array, a list, a number), else
    ``xp``: small parameter arrays stay on the host for their checks and reach the device
    through :func:`constant`."""
    if isinstance(value, (np.ndarray, np.generic, list, tuple, numbers.Number)):
        return np
    return xp


# --------------------------------------------------------------------------------------------
# Images of the filters (scikit-image conventions)

#: Largest accepted radius, in multiples of the image's largest side: beyond it the window is
#: mostly border padding and the call would run for a very long time for no benefit.
RADIUS_LIMIT_FACTOR = 4

#: scipy.ndimage border-mode names -> numpy.pad modes (for the generic, padded path).
NUMPY_PAD_MODES = {
    "reflect": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "constant": "constant",
}
MODES = tuple(NUMPY_PAD_MODES) + ("exclude",)


def as_float_image(xp, image, name: str = "image"):
    """The image filters' dtype policy, in one place for every filter and backend.

    bool, integer and float16 arrays are computed in float32; float32 and float64 stay as they
    are (no copy, unless the byte order is not native). Complex and non-numeric arrays raise
    ``TypeError`` naming ``name``. Integer images keep their values (a uint8 image stays in
    [0, 255]; choose ``sigma_color`` accordingly): no rescaling, unlike
    ``skimage.img_as_float``.
    """
    array = convert(xp, image, name)
    if array.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got dtype {array.dtype}")
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        raise TypeError(f"{name}: extended precision {array.dtype} is not supported; use float64")
    if array.dtype.kind != "f" or array.dtype.itemsize < 4:
        return array.astype(np.float32)
    if not array.dtype.isnative:
        # A big-endian float image computes (and returns) in the native byte order.
        return array.astype(array.dtype.newbyteorder("="))
    return array


def float_result_dtype(*arrays):
    """Computation dtype of several policy-converted arrays: float64 if any is float64."""
    return np.result_type(*[a.dtype for a in arrays if a is not None])


#: Names of the spatial ranks, for messages.
_RANK_NAMES = {1: "1-D (L)", 2: "2-D (H, W)", 3: "3-D (D, H, W)"}


def channels_first(image, channel_axis, name: str = "image", ranks=(2,)):
    """``(C, *S)`` view of an image with ``len(S)`` in ``ranks`` spatial axes: without
    ``channel_axis`` every axis is spatial (scikit-image's convention: 1-D signal, 2-D image,
    3-D volume), with it the channels are along ``channel_axis``. Returns the view and the
    normalized axis. ``ranks=(2,)`` is the 2-D-only filters' rule."""
    allowed = " or ".join(_RANK_NAMES[r] for r in ranks)
    if channel_axis is None:
        if image.ndim not in ranks:
            if ranks == (2,):
                hint = (
                    "; pass channel_axis for a multichannel (H, W, C) or (C, H, W) image (this "
                    "function takes 2-D images only, not volumes)" if image.ndim == 3 else ""
                )
            else:
                hint = (f"; a multichannel image with {image.ndim - 1} spatial axes needs "
                        "channel_axis" if image.ndim - 1 in ranks else "")
            raise ValueError(
                f"{name} must be {allowed} when channel_axis is None, got shape "
                f"{tuple(image.shape)}{hint}"
            )
        planar = image[None]
    else:
        if image.ndim - 1 not in ranks:
            spatial = " or ".join(str(r + 1) for r in ranks)
            raise ValueError(
                f"{name} must be {spatial}-D when channel_axis is given ({allowed} spatial "
                f"axes plus the channels), got shape {tuple(image.shape)}"
            )
        if not is_int(channel_axis):
            raise TypeError(f"channel_axis must be an int or None, got {channel_axis!r}")
        ndim = image.ndim
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"channel_axis must be in [{-ndim}, {ndim - 1}] for a {ndim}-D {name}, got "
                f"{channel_axis}"
            )
        channel_axis = int(channel_axis) % ndim
        planar = image.transpose([channel_axis] + [a for a in range(ndim) if a != channel_axis])
    if 0 in planar.shape:
        raise ValueError(f"{name} must not be empty, got shape {tuple(image.shape)}")
    return planar, channel_axis


def channels_back(xp, planar, channel_axis):
    """Inverse of :func:`channels_first` for a result computed as ``(C, *S)``."""
    if channel_axis is None:
        return planar[0]
    return xp.moveaxis(planar, 0, channel_axis)


def cast_output(xp, result, output):
    """The filters' ``output=`` keyword (scipy.ndimage's name): ``None`` keeps the computation
    dtype; a float dtype casts; an integer dtype rounds to the nearest integer (halves to even)
    and clips to the dtype's range, so ``output=image.dtype`` gives a uint8 image back for a
    uint8 input."""
    if output is None:
        return result
    try:
        dtype = np.dtype(output)
    except TypeError:
        raise TypeError(
            f"output must be None or a dtype such as numpy.uint8, got {output!r}"
        ) from None
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return result.astype(dtype)
    if dtype.kind not in "iu":
        raise TypeError(
            f"output must be a float or integer dtype, got {dtype} (bool, complex and extended "
            "precision are not supported)"
        )
    if not bool(xp.isfinite(result).all()):
        raise ValueError(
            f"output={dtype} cannot hold the result: it has NaN or Inf values (from NaN or Inf "
            "in the input); leave output=None to get floats"
        )
    info = np.iinfo(dtype)
    return xp.clip(xp.rint(result), info.min, info.max).astype(dtype)


def guide_planar(guide, channel_axis, spatial_shape, name: str = "guide"):
    """``(G, *S)`` view of a guide already converted by :func:`as_float_image`, for an image of
    spatial shape ``S = spatial_shape``: a guide with ``len(S)`` axes is one channel; one with
    an extra axis has its channels along ``channel_axis``, or along the last axis when
    ``channel_axis`` is None. Its spatial shape must be ``S``."""
    rank = len(spatial_shape)
    if guide.ndim == rank:
        planar, _ = channels_first(guide, None, name, ranks=(rank,))
    elif guide.ndim == rank + 1:
        planar, _ = channels_first(guide, -1 if channel_axis is None else channel_axis, name,
                                   ranks=(rank,))
    else:
        raise ValueError(
            f"{name} must be {rank}-D or {rank + 1}-D (the image's spatial shape "
            f"{tuple(spatial_shape)}, with or without a channel axis), got shape "
            f"{tuple(guide.shape)}"
        )
    if tuple(planar.shape[1:]) != tuple(spatial_shape):
        raise ValueError(
            f"{name} must have the spatial shape {tuple(spatial_shape)}, got {name} of shape "
            f"{tuple(guide.shape)}"
        )
    return planar


def radius_value(radius, default_sigma: float, sigmas: float, shape, name: str = "radius") -> int:
    """``radius`` as a non-negative int; when None, ``ceil(sigmas * default_sigma)`` capped at
    ``RADIUS_LIMIT_FACTOR`` times the largest side of ``shape`` (a default never fails, a 1 x 1
    image included); an explicit radius beyond that cap is rejected before anything is
    allocated."""
    limit = RADIUS_LIMIT_FACTOR * max(shape)
    if radius is None:
        # A default never fails: beyond the limit the window is all border anyway.
        return min(int(math.ceil(sigmas * default_sigma)), limit)
    if not is_int(radius):
        raise TypeError(f"{name} must be an int or None, got {radius!r}")
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"{name} must be >= 0, got {radius}")
    if radius > limit:
        raise ValueError(
            f"{name}={radius} exceeds {RADIUS_LIMIT_FACTOR} times the largest image side "
            f"({max(shape)}); pass a smaller {name} or sigma_spatial"
        )
    return radius


def upsample_factors(factor, low_shape, high_shape):
    """Integer factor per axis with ceil(high / factor) == low (the low-resolution image covers
    the guide, its last row and column possibly only in part)."""
    if factor is None:
        factors = tuple(-(-high // low) for low, high in zip(low_shape, high_shape))
    else:
        factors = int_tuple(factor, "factor", len(low_shape))
    for axis, (low, high, f) in enumerate(zip(low_shape, high_shape, factors)):
        if -(-high // f) != low:
            raise ValueError(
                f"guide size {high} along spatial axis {axis} is not covered by {low} "
                f"low-resolution samples at factor {f} (need ceil({high} / {f}) == {low}); "
                f"got low of spatial shape {tuple(low_shape)}, guide {tuple(high_shape)}"
            )
    return factors
