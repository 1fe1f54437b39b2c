"""Argument normalization, output shapes and validation, in one place.

Front-end functions call these once; the backends receive plain ints and
contiguous arrays and never validate again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._args import RADIUS_LIMIT_FACTOR, is_int, require_bool

SPATIAL_DIMS = 2

#: Spatial ranks the core operations accept: signals, images and volumes (docs/design.md §7).
SPATIAL_RANKS = (1, 2, 3)

#: Largest accepted geometry integer, and the most taps a kernel may have: the kernels compute
#: indices such as ``o*stride - padding + tap*dilation`` in int64, and a kernel beyond this
#: could not be allocated anyway (a clear ValueError instead of an overflow or a MemoryError).
GEOMETRY_INT_LIMIT = 2**31 - 1

#: A kernel may always reach this many taps either side of its centre, whatever the grid (a
#: CRF term on a coarse, blurred grid may be wider than the grid).
KERNEL_HALF_WIDTH_FLOOR = 64


def as_tuple(value, name: str, ndim: int = SPATIAL_DIMS) -> tuple[int, ...]:
    """Turn an int or a per-dimension sequence into a tuple of ``ndim`` ints."""
    if is_int(value):
        return (int(value),) * ndim
    if isinstance(value, (str, bytes)):  # iterable, but never a size: "3" is not 3
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int or a sequence of {ndim} ints, got {value!r}"
        ) from None
    if len(items) != ndim or not all(is_int(v) for v in items):
        raise ValueError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class Geometry:
    """Validated geometry of one PAC operation: tuples of one int per spatial axis (rank 1-3)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    transposed: bool

    @property
    def taps(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def half_span(self) -> tuple[int, ...]:
        """``d*(k-1)/2`` per dimension: the centre tap's offset."""
        return tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape (no validation of the result)."""
        out = []
        for n, k, s, p, d, op in zip(
            input_shape,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.output_padding,
        ):
            if self.transposed:
                out.append((n - 1) * s - 2 * p + d * (k - 1) + op + 1)
            else:
                out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        return tuple(out)

    def checked_output_shape(self, input_shape: tuple[int, ...], name: str = "x"):
        out = self.output_shape(input_shape)
        described = (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}"
        )
        if any(o < 1 for o in out):
            raise ValueError(
                f"{name} spatial shape {tuple(input_shape)} is too small for {described}: the "
                f"output would be {out}"
            )
        if self.transposed:
            if any(o > GEOMETRY_INT_LIMIT for o in out):
                raise ValueError(
                    f"the transposed output for {name} of spatial shape {tuple(input_shape)} "
                    f"with {described}, output_padding={self.output_padding} would be {out}, "
                    f"beyond {GEOMETRY_INT_LIMIT} along an axis; pass a smaller stride or "
                    "dilation"
                )
        else:
            # Past the input every output is the first window; the CPU kernels' work and
            # scratch memory grow with the stride, so a huge one would run for minutes.
            limit = RADIUS_LIMIT_FACTOR * max(input_shape)
            if max(self.stride) > limit:
                raise ValueError(
                    f"stride={self.stride} exceeds {RADIUS_LIMIT_FACTOR} times the largest side "
                    f"of {name} (spatial shape {tuple(input_shape)}): pass stride <= {limit} "
                    "(any stride past the input gives one output along that axis)"
                )
        return out

    def check_kernel_fits(self, grid_shape: tuple[int, ...], name: str = "guide") -> None:
        """``ValueError`` for a kernel whose half-width in taps exceeds both
        ``RADIUS_LIMIT_FACTOR`` times the largest side of the grid it is evaluated on and
        :data:`KERNEL_HALF_WIDTH_FLOOR`: taps that far out are always out of range, and the
        kernel's buffers (taps x output row) would be allocated for nothing."""
        limit = max(RADIUS_LIMIT_FACTOR * max(grid_shape), KERNEL_HALF_WIDTH_FLOOR)
        half = tuple((k - 1) // 2 for k in self.kernel_size)
        if max(half) > limit:
            raise ValueError(
                f"kernel_size={self.kernel_size} is too large for {name} of spatial shape "
                f"{tuple(grid_shape)}: its half-width {max(half)} exceeds {RADIUS_LIMIT_FACTOR} "
                f"times the largest side (at most {limit} taps either side of the centre)"
            )


def check_rank(ndim, name="x", shape=None) -> int:
    """``ndim`` (the spatial rank) if the core operations accept it, else ``ValueError``."""
    if ndim not in SPATIAL_RANKS:
        shown = "" if shape is None else f" (shape {tuple(shape)})"
        raise ValueError(
            f"{name} must have 1, 2 or 3 spatial dimensions after (N, C): (N, C, L), "
            f"(N, C, H, W) or (N, C, D, H, W); got {ndim} spatial dimension(s){shown}"
        )
    return ndim


def data_rank(array, name: str, layout: str = "C") -> int:
    """Spatial rank ``array.ndim - 2`` of a data-like array ``(N, C, *S)``, checked."""
    rank = array.ndim - 2
    if rank not in SPATIAL_RANKS:
        raise ValueError(
            f"{name} must be 3-D, 4-D or 5-D with layout (N, {layout}, L), (N, {layout}, H, W) "
            f"or (N, {layout}, D, H, W), got shape {tuple(array.shape)}"
        )
    require_nonempty(array, name)
    return rank


def require_nonempty(array, name: str) -> None:
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")


def require_rank(array, rank: int, name: str, reference: str, reference_shape) -> None:
    """``ValueError`` when ``array`` (``(N, C, *S)``-like) does not have spatial rank ``rank``,
    the rank of ``reference`` (of shape ``reference_shape``)."""
    if array.ndim - 2 != rank:
        raise ValueError(
            f"{name} must have as many spatial dimensions as {reference} ({rank}): {name} has "
            f"shape {tuple(array.shape)}, {reference} has shape {tuple(reference_shape)}"
        )
    require_nonempty(array, name)


def make_geometry(
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    output_padding=0,
    transposed=False,
    ndim=SPATIAL_DIMS,
) -> Geometry:
    """Validate the geometry arguments and return a :class:`Geometry` of ``ndim`` spatial axes.

    Raises
    ------
    ValueError, TypeError
        With the parameter's name and the received value.
    """
    require_bool(transposed, "transposed")
    check_rank(ndim)
    k = as_tuple(kernel_size, "kernel_size", ndim)
    s = as_tuple(stride, "stride", ndim)
    p = as_tuple(padding, "padding", ndim)
    d = as_tuple(dilation, "dilation", ndim)
    op = as_tuple(output_padding, "output_padding", ndim)
    for name, values in (("kernel_size", k), ("stride", s), ("padding", p), ("dilation", d),
                         ("output_padding", op)):
        if any(v > GEOMETRY_INT_LIMIT for v in values):
            raise ValueError(
                f"{name} must be at most {GEOMETRY_INT_LIMIT} in every dimension, got {values}"
            )
    if math.prod(k) > GEOMETRY_INT_LIMIT:
        raise ValueError(
            f"kernel_size={k} has {math.prod(k)} taps, more than {GEOMETRY_INT_LIMIT}"
        )
    if any(v < 1 or v % 2 == 0 for v in k):
        raise ValueError(f"kernel_size must be positive and odd in every dimension, got {k}")
    if any(v < 1 for v in s):
        raise ValueError(f"stride must be >= 1, got {s}")
    if any(v < 1 for v in d):
        raise ValueError(f"dilation must be >= 1, got {d}")
    limit = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
    if any(v < 0 or v > lim for v, lim in zip(p, limit)):
        raise ValueError(
            f"padding must be between 0 and dilation*(kernel_size-1)/2 = {limit} "
            f"(so that the centre tap stays inside the image), got {p}"
        )
    if not transposed:
        if any(v != 0 for v in op):
            raise ValueError(
                f"output_padding is only meaningful for transposed operations, got {op}"
            )
    elif any(v < 0 or v >= max(ss, dd) for v, ss, dd in zip(op, s, d)):
        raise ValueError(
            f"output_padding must be >= 0 and smaller than max(stride, dilation) "
            f"per dimension, got {op} with stride={s}, dilation={d}"
        )
    return Geometry(k, s, p, d, op, bool(transposed))


def kernel_geometry(geometry: Geometry) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stride and padding used to evaluate the adaptive kernel on the guide.

    Forward ops evaluate K with the op's own stride and padding; transposed ops evaluate it on the
    output grid with stride 1 and centred padding ``d*(k-1)/2``.
    """
    if geometry.transposed:
        return (1,) * len(geometry.kernel_size), geometry.half_span
    return geometry.stride, geometry.padding
