"""The palette term of PAC-CRF: long-range, colour-aware messages through a coarse grid.

:class:`pacarray.crf.PaletteTerm` gives each pixel the message

``m[l, i] = sum_j K(i, j) Q[l, j] / sum_j K(i, j)``, with
``K(i, j) = S[a_i, a_j] * sum_c b_ic G(c, cell_j)`` for the sending pixels ``j`` (every
pixel, or those on every second row and column: :func:`sender_stride`),

where ``a_i`` is the palette entry nearest to pixel ``i``'s features (a palette of a few
representative colours), ``S[p, p'] = exp(-1/2 |c_p - c_p'|**2)`` compares palette entries,
``cell_j`` is the coarse cell that holds pixel ``j``, ``b_ic`` are the (bi/tri)linear weights of
pixel ``i`` on the coarse cells around it and ``G`` a Gaussian of the distance between cell
centres, truncated at 3 standard deviations. It approximates the fully connected CRF's
bilateral kernel ``exp(-|p_i - p_j|**2 / 2 sigma_s**2 - |f_i - f_j|**2 / 2)``, over all pixels
within reach rather than a window's taps, in O(labels x pixels) work per step: one add per
label and sender into the grid (the splat), small matrix products on the grid (the Gaussian
along each axis, ``S`` along the palette), and two reads per label and pixel back (the slice).
``docs/design.md`` §2 has the derivation and the choices.

Everything here is array-namespace code (NumPy, CuPy) for any rank. A backend may add
``crf_palette_*`` entry points (``pacarray._generic.OPTIONAL_PREFIXES``): the CPU backend runs
the palette assignment, the splat and the slice of 2-D data with Numba kernels, and fuses the
term into its mean-field step (``pacarray._mean_field._fused_palette``); without them the
generic functions below run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _args

#: Pixels the palette's k-means runs on at most: a strided subsample of the image (the same
#: stride along every axis, starting at the first pixel), so that a tiled or Dask computation
#: of the same image finds the same palette.
PALETTE_SAMPLE = 4096
#: Lloyd iterations of the palette's k-means.
PALETTE_ITERATIONS = 10
#: The Gaussian of the grid is truncated at this many standard deviations.
TRUNCATE = 3.0


def sample_stride(spatial_shape):
    """The stride along every axis of the subsample :func:`palette_colors` runs on."""
    pixels = math.prod(spatial_shape)
    stride = max(1, math.ceil((pixels / PALETTE_SAMPLE) ** (1.0 / len(spatial_shape))))
    while math.prod(-(-n // stride) for n in spatial_shape) > PALETTE_SAMPLE:
        stride += 1
    return stride


def palette_colors(sample, colors):
    """k-means palette ``(P, F)`` float64 of ``sample`` ``(F, ...)`` (NumPy, unit bandwidth).

    Deterministic: k-means++ seeding with a fixed seed, then :data:`PALETTE_ITERATIONS` Lloyd
    iterations. ``P`` is ``colors``, or fewer when the sample has fewer distinct colours (the
    seeding stops once every point is a centre).
    """
    points = np.ascontiguousarray(np.asarray(sample, np.float64).reshape(sample.shape[0], -1).T)
    rng = np.random.default_rng(0)
    first = int(rng.integers(len(points)))
    # The draws of Generator.choice(n, p=...) for each further centre, in the same order.
    uniforms = rng.random(max(0, int(colors) - 1))
    # On the host for every backend (Numba is always there), so that CPU and GPU calls
    # find the same palette.
    from ._cpu._crf_kernels import palette_kmeans

    return palette_kmeans(points, first, uniforms, PALETTE_ITERATIONS)


def palettes_of(sample, colors):
    """One palette per image of ``sample`` ``(N, F, ...)`` (host, unit bandwidth), as ``(N, P,
    F)`` float64: an image whose palette came out shorter repeats its last entry (a copy that
    no pixel is nearest to sends and receives nothing). The in-memory and the Dask calls both
    take their palettes from here."""
    palettes = [palette_colors(np.asarray(image, np.float64), colors) for image in sample]
    size = max(len(p) for p in palettes)
    return np.stack([np.concatenate([p, np.repeat(p[-1:], size - len(p), axis=0)])
                     for p in palettes])


def assign(xp, features, palette):
    """Palette entry of each pixel: ``(N, *spatial)`` int32 from ``features`` ``(N, F, ...)``
    and ``palette`` ``(N, P, F)`` float64 (the first nearest on ties)."""
    features = features.astype(np.float64)
    batch = features.shape[0]
    best = xp.full((batch, *features.shape[2:]), np.inf)
    owner = xp.zeros((batch, *features.shape[2:]), np.int32)
    palette = xp.asarray(palette)
    extra = (None,) * (features.ndim - 2)
    for index in range(palette.shape[1]):
        centre = palette[:, index][(slice(None), slice(None), *extra)]
        distance = ((features - centre) ** 2).sum(axis=1)
        closer = distance < best
        owner[closer] = index
        best = xp.where(closer, distance, best)
    return owner


def sender_stride(cell):
    """Sender stride of a grid of ``cell``-pixel cells: 2 (a quarter of an image's pixels
    send) from 4-pixel cells up, else 1. A cell then still sums 4 or more pixels per axis
    pair, and the messages average over the term's reach (hundreds of pixels by default), so
    the sample changes them little while the splat, a scattered add per label and sender,
    costs a quarter."""
    return 2 if cell >= 4 else 1


def gaussian_matrix(cells, cell, sigma):
    """``(cells, cells)`` float64: ``exp(-(cell (j - j'))**2 / 2 sigma**2)`` within
    :data:`TRUNCATE` standard deviations (at least the neighbouring cells), else 0."""
    offsets = np.subtract.outer(np.arange(cells), np.arange(cells)) * float(cell)
    radius = max(float(cell), TRUNCATE * sigma)
    return np.where(np.abs(offsets) <= radius, np.exp(-0.5 * (offsets / sigma) ** 2), 0.0)


def interpolation(size, cells, cell):
    """Linear interpolation between cell centres: ``(lo, hi, t)`` for each pixel of an axis
    (also the blurred terms' upsampling in :mod:`pacarray._mean_field`)."""
    position = np.clip((np.arange(size) + 0.5) / cell - 0.5, 0.0, cells - 1)
    lo = np.floor(position).astype(np.int64)
    hi = np.minimum(lo + 1, cells - 1)
    return lo, hi, position - lo


@dataclass
class PaletteGrid:
    """A :class:`pacarray.crf.PaletteTerm` resolved against one call's inputs."""

    xp: object  # the array namespace
    weight: float
    owner: object  # (N, *spatial) int32 palette entry of each pixel
    mix: object  # (N, P, P) of dtype: S
    blurs: tuple  # per spatial axis, (cells, cells) Gaussian of dtype
    cell: int
    cells: tuple  # coarse grid shape
    lo: tuple  # per axis, int64 NumPy (size,)
    hi: tuple
    t: tuple  # per axis, (size,) of dtype (NumPy)
    send: int  # sender stride: the pixels whose coordinates are multiples of it send
    senders: object  # (senders,) int64 flat index of each sending pixel
    splat_index: object  # (N, senders) int64: owner * cells + own cell
    inv_norm: object = None  # (N, *spatial) of dtype: 1 / sum_j K(i, j)
    _corners: tuple = None  # per corner of the interpolation: (cell index, weight), (pixels,)

    @property
    def corners(self):
        """``(cell index, weight)`` per corner of the interpolation over an image's pixels,
        for the generic slice and its adjoint (computed on first use: the CPU backend's 2-D
        kernels interpolate by rows instead)."""
        if self._corners is None:
            self._corners = tuple(_corners(self.xp, self))
        return self._corners

    @property
    def palette_size(self):
        return self.mix.shape[1]

    @property
    def grid_size(self):
        return math.prod(self.cells)


def build(xp, module, weight, features, palette, cell, sigma, dtype):
    """The :class:`PaletteGrid` of features ``(N, F, *spatial)`` (unit bandwidth, of dtype),
    ``palette`` ``(N, P, F)`` float64 NumPy, ``cell`` pixels per grid cell and the spatial
    standard deviation ``sigma`` in pixels."""
    spatial = tuple(features.shape[2:])
    cells = tuple(-(-n // cell) for n in spatial)
    if hasattr(module, "crf_palette_assign"):
        owner = module.crf_palette_assign(features, palette)
    else:
        owner = assign(xp, features, palette)
    difference = palette[:, :, None, :] - palette[:, None, :, :]
    mix = np.exp(-0.5 * (difference**2).sum(axis=-1))
    # Arrays that depend on the shape only go through the constant cache: a repeated call on
    # the device uploads nothing but the palette's own two (docs/design.md §4).
    blurs = tuple(_args.constant(xp, gaussian_matrix(c, cell, sigma), dtype) for c in cells)
    axes = [interpolation(n, c, cell) for n, c in zip(spatial, cells)]
    grid_size = math.prod(cells)
    batch = features.shape[0]
    send = sender_stride(cell)
    # the senders' flat pixel indices and own cells, row-major over the strided grid of them
    # (built on that grid alone: full-size index arrays took half a millisecond at 512 x 512)
    senders = np.zeros([-(-n // send) for n in spatial], np.int64)
    own = np.zeros_like(senders)
    for axis, n in enumerate(spatial):
        shape = [1] * len(spatial)
        shape[axis] = senders.shape[axis]
        along = np.arange(0, n, send)
        senders = senders + (along * math.prod(spatial[axis + 1:])).reshape(shape)
        own = own + (along // cell * math.prod(cells[axis + 1:])).reshape(shape)
    senders = _args.constant(xp, senders.reshape(-1), np.int64)
    sampled = owner[(slice(None),) + (slice(None, None, send),) * len(spatial)]
    splat_index = xp.ascontiguousarray(
        (sampled.reshape(batch, -1).astype(np.int64) * grid_size
         + _args.constant(xp, own.reshape(1, -1), np.int64)))
    grid = PaletteGrid(
        xp=xp, weight=float(weight), owner=owner, mix=xp.asarray(mix.astype(dtype)), blurs=blurs,
        cell=int(cell), cells=cells, lo=tuple(a[0] for a in axes), hi=tuple(a[1] for a in axes),
        t=tuple(a[2].astype(dtype) for a in axes), send=send, senders=senders,
        splat_index=splat_index,
    )
    ones = xp.ones((batch, 1, *spatial), dtype)
    norm = xp.zeros_like(ones)
    grid.inv_norm = xp.ones((batch, *spatial), dtype)
    add_messages(xp, module, grid, ones, 1.0, norm)
    grid.inv_norm = xp.ascontiguousarray(1.0 / norm[:, 0])
    return grid


def smooth(xp, grid, coarse):
    """``S`` along the palette and the Gaussian along each axis of ``(N, L, P, *cells)``;
    both are symmetric, so this is also their adjoint."""
    batch, labels, size = coarse.shape[:3]
    flat = coarse.reshape(batch, labels, size, -1)
    coarse = xp.matmul(grid.mix[:, None], flat).reshape(coarse.shape)
    for axis, blur in enumerate(grid.blurs):
        moved = xp.moveaxis(coarse, 3 + axis, -1)
        moved = xp.matmul(moved, blur)  # blur is symmetric: blur.T == blur
        coarse = xp.moveaxis(moved, -1, 3 + axis)
    return xp.ascontiguousarray(coarse)


def splat(xp, grid, q):
    """``(N, L, P, *cells)``: the sum of ``q`` ``(N, L, *spatial)`` over the pixels of each
    cell and palette entry (generic: one ``bincount`` per image and label)."""
    batch, labels = q.shape[:2]
    length = grid.palette_size * grid.grid_size
    out = xp.empty((batch, labels, length), q.dtype)
    flat = q.reshape(batch, labels, -1)
    for n in range(batch):
        for label in range(labels):
            out[n, label] = xp.bincount(grid.splat_index[n],
                                        weights=flat[n, label][grid.senders],
                                        minlength=length)
    return out.reshape(batch, labels, grid.palette_size, *grid.cells)


def _corners(xp, grid):
    """Per corner of the linear interpolation: ``(cell index (pixels,), weight (pixels,))``
    over all pixels of one image (the cells' flat index within the grid)."""
    rank = len(grid.cells)
    spatial = tuple(len(lo) for lo in grid.lo)
    for corner in range(2**rank):
        index = np.zeros(spatial, np.int64)
        weight = np.ones(spatial, grid.t[0].dtype)
        for axis in range(rank):
            upper = (corner >> (rank - 1 - axis)) & 1
            shape = [1] * rank
            shape[axis] = spatial[axis]
            position = (grid.hi if upper else grid.lo)[axis]
            share = grid.t[axis] if upper else 1 - grid.t[axis]
            index = index + (position * math.prod(grid.cells[axis + 1:])).reshape(shape)
            weight = weight * share.reshape(shape)
        # int32: within the constant cache's size limit for small images (a grid index fits)
        yield (_args.constant(xp, index.reshape(-1), np.int32),
               _args.constant(xp, weight.reshape(-1), weight.dtype))


def slice_add(xp, grid, coarse, scale, out):
    """``out[n, l, i] += scale * inv_norm[n, i] * sum_c b_ic coarse[n, l, a_i, c]``."""
    batch, labels = out.shape[:2]
    flat = coarse.reshape(batch, labels, -1)
    target = out.reshape(batch, labels, -1)
    factor = (out.dtype.type(scale) * grid.inv_norm).reshape(batch, 1, -1)
    for cells, weight in grid.corners:
        for n in range(batch):
            index = grid.owner[n].reshape(-1).astype(np.int64) * grid.grid_size + cells
            target[n] += factor[n] * weight * flat[n][:, index]
    return out


def _slice_adjoint(xp, grid, grad):
    """Adjoint of :func:`slice_add` with scale 1: ``(N, L, P, *cells)``."""
    batch, labels = grad.shape[:2]
    length = grid.palette_size * grid.grid_size
    scaled = (grad * grid.inv_norm[:, None]).reshape(batch, labels, -1)
    out = xp.zeros((batch, labels, length), grad.dtype)
    for cells, weight in grid.corners:
        for n in range(batch):
            index = grid.owner[n].reshape(-1).astype(np.int64) * grid.grid_size + cells
            for label in range(labels):
                out[n, label] += xp.bincount(index, weights=scaled[n, label] * weight,
                                             minlength=length)
    return out.reshape(batch, labels, grid.palette_size, *grid.cells)


def add_messages(xp, module, grid, q, scale, out):
    """``out += scale * m(q)``, the term's normalized messages (the backend's splat and
    slice when it has them for the data's rank, else the generic ones)."""
    fast = len(grid.cells) == 2 and hasattr(module, "crf_palette_splat")
    coarse = module.crf_palette_splat(grid, q) if fast else splat(xp, grid, q)
    coarse = smooth(xp, grid, coarse)
    if fast:
        module.crf_palette_slice_add(grid, coarse, scale, out)
    else:
        slice_add(xp, grid, coarse, scale, out)
    return out


def add_adjoint(xp, module, grid, grad, scale, out):
    """``out += scale * m^T(grad)`` (the backward pass; the backend's
    ``crf_palette_add_adjoint`` for 2-D data when it has one)."""
    if len(grid.cells) == 2 and hasattr(module, "crf_palette_add_adjoint"):
        return module.crf_palette_add_adjoint(grid, grad, scale, out)
    coarse = smooth(xp, grid, _slice_adjoint(xp, grid, grad))
    batch, labels = grad.shape[:2]
    flat = coarse.reshape(batch, labels, -1)
    target = out.reshape(batch, labels, -1)
    for n in range(batch):
        target[n][:, grid.senders] += out.dtype.type(scale) * flat[n][:, grid.splat_index[n]]
    return out
