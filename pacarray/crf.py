"""PAC-CRF: mean-field inference of a locally connected CRF with pixel-adaptive messages.

A fully connected CRF (Krähenbühl & Koltun 2011) passes messages between all pairs of pixels
through Gaussian kernels on position and colour. PAC-CRF (Su et al. 2019) keeps the same
mean-field update but lets each pixel talk only to the taps of a (possibly dilated) window, so a
message is one pixel-adaptive pooling of the label marginals: memory O(labels x pixels), time
O(labels x pixels x taps).

This module is the public interface and its argument checks; the updates and their backward pass
live in :mod:`pacarray._mean_field` and run on the CRF entry points of the backend module that the
arrays select (``docs/design.md`` §3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from . import _args, _mean_field, _palette
from ._dispatch import backend_module, delegate_lazy, namespace, select_backend
from ._geometry import as_tuple
from .kernels import spatial_window

__all__ = ["PairwiseTerm", "PaletteTerm", "DEFAULT_PAIRWISE", "FAST_PAIRWISE", "CRFGradients",
           "pac_crf", "pac_crf_vjp"]

#: Probabilities are clipped to at least this before the logarithm (``input="probabilities"``),
#: so that a label the classifier ruled out can still win where the image evidence is strong.
PROBABILITY_FLOOR = 1e-5


@dataclass(frozen=True, eq=False)
class PairwiseTerm:
    """One pairwise kernel of :func:`pac_crf`.

    The term sends each pixel ``i`` the message
    ``m[l, i] = sum_{j in window(i), j != i} k(i, j) Q[l, j]`` with

    ``k(i, j) = exp(-|p_i - p_j|**2 / (2 sigma_spatial**2)) * exp(-1/2 |f_i - f_j|**2)``

    where ``p`` are pixel positions and ``f`` the term's features, and adds
    ``weight * compatibility(m)`` to the energy of every label.

    Parameters
    ----------
    weight : float, default 2.0
        Strength of the term, >= 0 (in units of the unary: logits, i.e. nats).
    kernel_size : int or tuple of int, default 5
        Odd window size in taps, one per spatial axis (an int: the same on every axis, so a
        cube on volumes). The centre tap is always excluded, as in a dense CRF.
    dilation : int or tuple of int, default 3
        Spacing between taps in pixels (of the grid the term runs on, see ``blur``), one per
        axis or an int for all.
    sigma_spatial : float, tuple of float or None, default 6.0
        Standard deviation of the spatial Gaussian in pixels of the full-resolution image, one
        for every axis or one per axis. ``None`` gives a flat window.
    sigma_color : float, default 0.08
        Colour bandwidth in intensity units, for ``features="appearance"``: images are compared
        on a [0, 1] scale (integer images are divided by their dtype's maximum, so ``0.08`` is
        about 20 grey levels of a uint8 image). Ignored by the other feature choices.
    features : {"appearance", "smoothness"} or array, default "appearance"
        What the kernel compares besides position: ``"appearance"`` the image's channels
        divided by ``sigma_color`` (an edge-aware term); ``"smoothness"`` nothing (position
        only, label smoothing that ignores the image); or an array of shape ``(F, H, W)`` or
        ``(N, F, H, W)`` (``(F, D, H, W)`` / ``(N, F, D, H, W)`` for volumes) of features
        already scaled to unit bandwidth (the kernel is ``exp(-1/2 |f_i - f_j|**2)``), for
        example depth or a second modality. With
        ``features=pacarray.features.color_position_features(image, sigma_spatial=s,
        sigma_color=c, channel_axis=-1)`` and ``sigma_spatial=None`` the term equals the
        appearance term with those bandwidths (for a float image; that helper keeps integer
        images in their own units), only slower: the appearance term puts the position part
        into the spatial window instead of comparing two more features per tap.
    blur : int, default 1
        Run the term on a grid coarser by this factor: the label marginals and the features are
        averaged over ``blur x blur`` blocks, the message is computed there (kernel size and
        dilation count coarse cells), upsampled and multiplied by ``blur**2`` (each cell stands
        for that many pixels). The upsampling is joint-bilateral when the term has features:
        each pixel weighs the four cells of bilinear interpolation by ``exp(-1/2 |f_pixel -
        f_cell|**2) + 0.001`` (``f_cell`` the block mean) and normalizes, so that at an edge
        it takes the message of its own side; without features it is bilinear. Large ranges
        stay cheap, at some cost in quality (a block's mean colour is no pixel's colour; the
        segmentation guide has measurements). Images only.

    Examples
    --------
    >>> from pacarray import PairwiseTerm
    >>> edges = PairwiseTerm(weight=3.0, kernel_size=7, sigma_spatial=3.0, sigma_color=0.08)
    >>> smooth = PairwiseTerm(weight=1.0, kernel_size=3, sigma_spatial=1.0,
    ...                       features="smoothness")
    >>> far = PairwiseTerm(weight=1.0, kernel_size=5, dilation=2, blur=4)
    """

    weight: float = 2.0
    kernel_size: int | tuple[int, int] = 5
    dilation: int | tuple[int, int] = 3
    sigma_spatial: float | None = 6.0
    sigma_color: float = 0.08
    features: object = "appearance"
    blur: int = 1

    def __post_init__(self):
        weight = _args.finite_scalar(self.weight, "weight")
        if weight < 0:
            raise ValueError(f"PairwiseTerm weight must be >= 0, got {self.weight!r}")
        kernel_size = _term_tuple(self.kernel_size, "kernel_size")
        if any(k < 1 or k % 2 == 0 for k in kernel_size) or all(k == 1 for k in kernel_size):
            raise ValueError(
                f"PairwiseTerm kernel_size must be odd in each dimension and larger than 1 "
                f"(the centre tap is excluded), got {self.kernel_size!r}"
            )
        dilation = _term_tuple(self.dilation, "dilation")
        if any(d < 1 for d in dilation):
            raise ValueError(f"PairwiseTerm dilation must be >= 1, got {self.dilation!r}")
        if self.sigma_spatial is not None:
            sigmas = (self.sigma_spatial if isinstance(self.sigma_spatial, (tuple, list))
                      else (self.sigma_spatial,))
            if not 1 <= len(sigmas) <= 3 or any(
                _args.finite_scalar(s, "sigma_spatial") <= 0 for s in sigmas
            ):
                raise ValueError(
                    f"PairwiseTerm sigma_spatial must be > 0 (or None), got {self.sigma_spatial!r}"
                )
        sigma_color = _args.finite_scalar(self.sigma_color, "sigma_color")
        if sigma_color <= 0:
            raise ValueError(f"PairwiseTerm sigma_color must be > 0, got {self.sigma_color!r}")
        if isinstance(self.features, str):
            if self.features not in ("appearance", "smoothness"):
                raise ValueError(
                    f"PairwiseTerm features must be 'appearance', 'smoothness' or an array, "
                    f"got {self.features!r}"
                )
        elif np.ndim(self.features) not in (3, 4, 5):
            # 3-5 dimensions: (F, H, W) / (N, F, H, W), volumes (F, D, H, W) / (N, F, D, H, W),
            # signals (N, F, W); each call checks the rank against its data.
            raise ValueError(
                f"PairwiseTerm features array must have shape (F, H, W) or (N, F, H, W) "
                f"((F, D, H, W) or (N, F, D, H, W) for volumes), got "
                f"shape {np.shape(self.features)}"
            )
        if not _args.is_int(self.blur) or self.blur < 1:
            raise ValueError(f"PairwiseTerm blur must be an integer >= 1, got {self.blur!r}")


@dataclass(frozen=True, eq=False)
class PaletteTerm:
    """A long-range appearance term of :func:`pac_crf`: messages from every pixel of similar
    colour within a Gaussian reach, through a palette and a coarse grid.

    Each pixel ``i`` gets the normalized message

    ``m[l, i] = sum_j K(i, j) Q[l, j] / sum_j K(i, j)``, with
    ``K(i, j) ~ exp(-|p_i - p_j|**2 / (2 sigma_spatial**2)) * exp(-|c_i - c_j|**2 /
    (2 sigma_color**2))``

    over *all* pixels ``j`` within reach, like the bilateral kernel of the fully connected CRF
    (Krähenbühl & Koltun 2011) (with cells of 4 pixels or more, the pixels on every second row
    and column: the message averages hundreds of them, and the sample halves the cost), and
    adds ``weight * m`` to the logits of every
    label (Potts; a compatibility matrix transforms it as it does the other terms). The kernel
    is approximated by quantizing the colours to a palette of ``colors`` entries (k-means of
    the image's colours: ``c_i`` is the palette entry nearest to pixel ``i``, entries compared
    with the Gaussian of ``sigma_color``) and the positions to a grid of ``cell``-pixel cells
    (the Gaussian of ``sigma_spatial`` between cell centres, linear interpolation to the
    pixel). A step costs about as much as a 3x3 window (8 taps) of a :class:`PairwiseTerm`,
    however far the term reaches. ``docs/design.md`` §2 has the derivation.

    Parameters
    ----------
    weight : float, default 8.0
        Strength of the term, >= 0. The message is a weighted fraction (each label's share
        of the similar pixels around), so the weight is the largest logit it can add.
    sigma_spatial : float, default 160.0
        Standard deviation of the spatial Gaussian in pixels (voxels); it is cut at three.
    sigma_color : float, default 0.05
        Colour bandwidth in intensity units (images on [0, 1]; integer images are divided by
        their dtype's maximum), for ``features="appearance"``.
    colors : int, default 16
        Palette entries (>= 1): the k-means of the image's colours on a strided subsample of
        about 4096 pixels, with a fixed seed (fewer when the image has fewer colours). More
        entries follow the colours more closely and cost more on the grid.
    cell : int, optional
        Grid spacing in pixels, >= 1. Default ``max(1, round(sigma_spatial / 5))``.
    features : "appearance" or array, default "appearance"
        ``"appearance"`` compares the image's channels divided by ``sigma_color``; an array
        ``(F, *spatial)`` or ``(N, F, *spatial)`` gives features already scaled to unit
        bandwidth.
    palette : array, optional
        The palette itself, ``(P, F)`` or ``(N, P, F)`` in the units of the features (image
        intensities for ``"appearance"``): the same palette for every call, for example over
        the frames of a video. Default: k-means of each image.

    Examples
    --------
    >>> from pacarray import PairwiseTerm, PaletteTerm
    >>> import numpy as np, pacarray
    >>> terms = (PairwiseTerm(weight=4.0, kernel_size=3, dilation=1, sigma_spatial=None,
    ...                       sigma_color=0.05),
    ...          PaletteTerm(weight=8.0, sigma_spatial=40.0, sigma_color=0.05, colors=8))
    >>> rng = np.random.default_rng(0)
    >>> image = rng.random((60, 80, 3)).astype(np.float32)
    >>> logits = rng.normal(size=(4, 60, 80)).astype(np.float32)
    >>> pacarray.pac_crf(logits, image, pairwise=terms, output="labels").shape
    (60, 80)
    """

    weight: float = 8.0
    sigma_spatial: float = 160.0
    sigma_color: float = 0.05
    colors: int = 16
    cell: int | None = None
    features: object = "appearance"
    palette: object = None

    def __post_init__(self):
        weight = _args.finite_scalar(self.weight, "weight")
        if weight < 0:
            raise ValueError(f"PaletteTerm weight must be >= 0, got {self.weight!r}")
        for name in ("sigma_spatial", "sigma_color"):
            value = getattr(self, name)
            if _args.finite_scalar(value, name) <= 0:
                raise ValueError(f"PaletteTerm {name} must be > 0, got {value!r}")
        if not _args.is_int(self.colors) or self.colors < 1:
            raise ValueError(f"PaletteTerm colors must be an integer >= 1, got {self.colors!r}")
        if self.cell is not None and (not _args.is_int(self.cell) or self.cell < 1):
            raise ValueError(f"PaletteTerm cell must be an integer >= 1 or None, got "
                             f"{self.cell!r}")
        if isinstance(self.features, str):
            if self.features != "appearance":
                raise ValueError(f"PaletteTerm features must be 'appearance' or an array, got "
                                 f"{self.features!r}")
        elif np.ndim(self.features) not in (2, 3, 4, 5):
            raise ValueError(f"PaletteTerm features array must have shape (F, *spatial) or "
                             f"(N, F, *spatial), got shape {np.shape(self.features)}")
        if self.palette is not None and np.ndim(self.palette) not in (2, 3):
            raise ValueError(f"PaletteTerm palette must have shape (P, F) or (N, P, F), got "
                             f"shape {np.shape(self.palette)}")

    @property
    def grid_cell(self) -> int:
        """The grid spacing in pixels (``cell``, or its default)."""
        if self.cell is not None:
            return int(self.cell)
        return max(1, round(float(self.sigma_spatial) / 5))


def _term_tuple(value, name):
    """A term's ``kernel_size`` or ``dilation``: an int (every axis) or 1 to 3 ints."""
    if _args.is_int(value):
        return (int(value),)
    try:
        ndim = len(value)
    except TypeError:
        raise TypeError(f"PairwiseTerm {name} must be an int or a sequence of 1 to 3 ints, "
                        f"got {value!r}") from None
    if not 1 <= ndim <= 3:
        raise ValueError(f"PairwiseTerm {name} must be an int or a sequence of 1 to 3 ints, "
                         f"got {value!r}")
    return as_tuple(value, f"PairwiseTerm {name}", ndim)


def _default_pairwise():
    # A 3x3 edge-aware window (the boundaries onto the edges) and a palette term (every pixel
    # of similar colour within ~160 pixels, as the fully connected CRF's bilateral term does
    # with sxy 80 over the whole image). docs/guide/segmentation.md has the measurements.
    near = PairwiseTerm(weight=4.0, kernel_size=3, dilation=1, sigma_spatial=None,
                        sigma_color=0.05)
    return (near, PaletteTerm(weight=8.0, sigma_spatial=160.0, sigma_color=0.05, colors=16))


#: The pairwise terms :func:`pac_crf` uses when ``pairwise`` is not given: a 3x3 edge-aware
#: :class:`PairwiseTerm` (flat window, ``sigma_color=0.05``, weight 4) and a
#: :class:`PaletteTerm` (weight 8, ``sigma_spatial=160``, ``sigma_color=0.05``, 16 colours,
#: 32-pixel cells). Chosen by measurement against pydensecrf's fully connected CRF on k-means
#: labellings of photographs with unaries degraded by 8x down/up-sampling and noise
#: (log-probability scale): protocol and numbers in the segmentation guide.
DEFAULT_PAIRWISE = _default_pairwise()


def _fast_pairwise():
    # The default with a "+" (4 taps) instead of the 3x3 window (8 taps).
    cross = tuple(PairwiseTerm(weight=4.0, kernel_size=shape, dilation=1, sigma_spatial=None,
                               sigma_color=0.05) for shape in ((1, 3), (3, 1)))
    return (*cross, DEFAULT_PAIRWISE[-1])


#: A cheaper alternative to :data:`DEFAULT_PAIRWISE` (pass it as ``pairwise=``): the same
#: palette term with the 3x3 window replaced by a "+" of 1x3 and 3x1 windows (4 taps
#: instead of 8), for a slightly lower IoU gain (the segmentation guide has the numbers).
FAST_PAIRWISE = _fast_pairwise()


class CRFGradients(NamedTuple):
    """Vector-Jacobian products returned by :func:`pac_crf_vjp`."""

    unary: object
    """Same shape and layout as the ``unary`` argument."""
    weights: tuple
    """One float per pairwise term: the gradient with respect to its ``weight``."""
    unary_weight: float
    compatibility: object
    """``(L, L)`` array, or ``None`` with ``compatibility="potts"``."""


# --------------------------------------------------------------------------------------------
# Argument handling: one validator per argument, in the order _prepare calls them (which fixes
# the error a caller sees first)


@dataclass(frozen=True)
class _Layout:
    """Where the caller's unary keeps its labels, to go to ``(N, L, H, W)`` and back."""

    shape: tuple  # the unary's shape
    batched: bool
    label_axis: int  # normalized to [0, ndim)
    spatial_ndim: int = 2

    def to_planar(self, xp, array):
        """The caller's layout -> ``(N, L, *spatial)`` (a view)."""
        planar = xp.moveaxis(array, self.label_axis, 1 if self.batched else 0)
        return planar if self.batched else planar[None]

    def restore(self, xp, result):
        """``(N, L, H, W)`` -> the caller's layout."""
        if not self.batched:
            result = result[0]
        return xp.moveaxis(result, 1 if self.batched else 0, self.label_axis)

    def restore_labels(self, labels):
        """``(N, H, W)`` label maps -> ``(H, W)`` for an unbatched unary."""
        return labels if self.batched else labels[0]


@dataclass
class _Problem:
    field: _mean_field.MeanField  # what the updates run on
    log_potentials: object  # the unary as logits (before unary_weight), (N, L, H, W)
    probability_mask: object  # where the probability input was not clipped, or None
    unary_weight: float
    layout: _Layout


def _prepare(unary, image, num_steps, pairwise, unary_weight, input, compatibility,
             label_axis, channel_axis, spatial_ndim=2):
    """Check and convert the arguments of :func:`pac_crf` / :func:`pac_crf_vjp`."""
    _args.require_int(spatial_ndim, "spatial_ndim")
    if spatial_ndim not in (1, 2, 3):
        raise ValueError(f"spatial_ndim must be 1, 2 or 3, got {spatial_ndim!r}")
    spatial_ndim = int(spatial_ndim)
    pairwise = _check_pairwise(pairwise)
    backend = _select_backend(unary, image, compatibility, pairwise)
    xp = namespace(backend)
    num_steps, unary_weight = _check_scalars(num_steps, unary_weight, input)
    layout, planar = _unary_planar(xp, unary, label_axis, spatial_ndim)
    batch, labels, *spatial_shape = planar.shape
    planes = _image_planes(xp, image, channel_axis, layout, planar.shape)
    dtype = _compute_dtype(planar, planes)
    log_potentials, probability_mask = _log_potentials(xp, backend_module(backend), planar,
                                                       input, dtype)
    if planes is not None:
        planes = _args.cast(xp, planes, dtype)
    compat = _compatibility_matrix(xp, compatibility, labels, dtype)
    # Signals and volumes run on the generic entry points, whose N-D pac_pool computes the
    # same messages; the fused CPU kernels are 2-D (docs/design.md §3).
    if spatial_ndim == 2:
        module = backend_module(backend)
    else:
        from ._generic import crf as module  # not at import time: _generic imports ops
    shared = {}  # appearance features by colour bandwidth: computed once, stacked once
    terms = [
        _resolve_palette(xp, module, term, index, planes, batch, tuple(spatial_shape), dtype,
                         shared)
        if isinstance(term, PaletteTerm) else
        _resolve_term(xp, term, index, planes, batch, tuple(spatial_shape), dtype, shared)
        for index, term in enumerate(pairwise)
    ]
    field = _mean_field.MeanField(
        module=module,
        xp=xp,
        unary=_scaled_unary(xp, log_potentials, unary_weight, dtype),
        terms=terms,
        compatibility=compat,
        num_steps=num_steps,
    )
    return _Problem(field=field, log_potentials=log_potentials,
                    probability_mask=probability_mask, unary_weight=unary_weight, layout=layout)


def _scaled_unary(xp, log_potentials, unary_weight, dtype):
    """``unary_weight * log_potentials``, C-contiguous. The updates only read it, so with
    unary_weight 1 it is the log-potentials themselves (at 512 x 512 x 21 a copy costs about
    as much as a softmax pass), unless they are read-only: the kernels take writable arrays
    (a read-only one would compile them once more)."""
    writable = getattr(getattr(log_potentials, "flags", None), "writeable", True)
    if unary_weight == 1 and writable:
        return xp.ascontiguousarray(log_potentials)
    return xp.ascontiguousarray(dtype.type(unary_weight) * log_potentials)


def _check_pairwise(pairwise):
    """``pairwise`` as a sequence of :class:`PairwiseTerm` (the default when None)."""
    if pairwise is None:
        pairwise = DEFAULT_PAIRWISE
    if isinstance(pairwise, (PairwiseTerm, PaletteTerm)):
        pairwise = (pairwise,)
    if not isinstance(pairwise, Sequence) or not all(
        isinstance(t, (PairwiseTerm, PaletteTerm)) for t in pairwise
    ):
        raise TypeError(
            f"pairwise must be a PairwiseTerm or PaletteTerm or a sequence of them, got "
            f"{pairwise!r}"
        )
    return pairwise


def _select_backend(unary, image, compatibility, pairwise):
    """The backend of every array argument, the terms' feature arrays included."""
    features = {
        f"pairwise[{index}].features": term.features
        for index, term in enumerate(pairwise)
        if not isinstance(term.features, str)
    }
    return select_backend(
        unary=unary, image=image,
        compatibility=None if isinstance(compatibility, str) else compatibility,
        **features,
    )


def _check_scalars(num_steps, unary_weight, input):
    """``(num_steps, unary_weight)`` as int and float, and the ``input`` choice."""
    _args.require_int(num_steps, "num_steps", minimum=0)
    unary_weight = _args.finite_scalar(unary_weight, "unary_weight")
    if unary_weight < 0:
        raise ValueError(f"unary_weight must be >= 0, got {unary_weight!r}")
    if input not in ("logits", "probabilities"):
        raise ValueError(f"input must be 'logits' or 'probabilities', got {input!r}")
    return int(num_steps), unary_weight


def _unary_planar(xp, unary, label_axis, spatial_ndim=2):
    """``(layout, unary as an (N, L, *spatial) view in its own dtype)``."""
    unary = _args.convert(xp, unary, "unary")
    if unary.dtype.kind == "c":
        raise TypeError(f"unary must be real, got dtype {unary.dtype}")
    layout = _unary_layout(tuple(unary.shape), label_axis, spatial_ndim)
    if unary.size == 0:
        raise ValueError(f"unary must not be empty, got shape {layout.shape}")
    planar = layout.to_planar(xp, unary)
    if planar.shape[1] < 2:
        raise ValueError(
            f"unary must have at least 2 labels along label_axis={label_axis}, got shape "
            f"{layout.shape}"
        )
    return layout, planar


def _unary_layout(unary_shape, label_axis, spatial_ndim=2):
    """The :class:`_Layout` of an unbatched (labels + ``spatial_ndim`` axes) or batched unary."""
    if label_axis is None:  # the axis before the spatial ones: -3 for images, -4 for volumes
        label_axis = -(spatial_ndim + 1)
    ndim = len(unary_shape)
    if ndim not in (spatial_ndim + 1, spatial_ndim + 2):
        if spatial_ndim == 2:
            raise ValueError(
                f"unary must be (L, H, W) / (H, W, L) or batched (N, ...) with 4 dimensions, "
                f"got shape {tuple(unary_shape)}"
            )
        raise ValueError(
            f"unary must have {spatial_ndim + 1} dimensions (labels and spatial_ndim="
            f"{spatial_ndim} spatial axes) or {spatial_ndim + 2} (batched), got shape "
            f"{tuple(unary_shape)}"
        )
    _args.require_int(label_axis, "label_axis")
    if not -ndim <= label_axis < ndim:
        raise ValueError(f"label_axis={label_axis} is out of range for unary shape {unary_shape}")
    axis = int(label_axis) % ndim
    batched = ndim == spatial_ndim + 2
    if batched and axis == 0:
        raise ValueError(
            f"label_axis={label_axis} points at the batch axis of the {ndim}-D unary "
            f"{unary_shape}; the batch axis is always first"
        )
    return _Layout(shape=tuple(unary_shape), batched=batched, label_axis=axis,
                   spatial_ndim=spatial_ndim)


def _image_to_float(xp, image, name):
    """Integers (and bool) -> float32 on [0, 1] by the dtype's maximum; float16 -> float32."""
    image = _args.convert(xp, image, name)
    if image.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got dtype {image.dtype}")
    if image.dtype.kind == "b":
        return image.astype(np.float32)
    if image.dtype.kind in "iu":
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    if image.dtype.itemsize < 4:
        return image.astype(np.float32)
    return image


def _image_planes(xp, image, channel_axis, layout, unary_planar_shape):
    """The image as float ``(N, C, *spatial)`` matching the unary, or None without an image."""
    if image is None:
        return None
    batched = layout.batched
    image = _image_to_float(xp, image, "image")
    spatial_ndim = layout.spatial_ndim
    expected_ndim = spatial_ndim + (0 if channel_axis is None else 1) + int(batched)
    if image.ndim != expected_ndim:
        names = {1: "(W,", 2: "(H, W,", 3: "(D, H, W,"}[spatial_ndim]
        shape_name = (names[:-1] + ")" if channel_axis is None
                      else names + " C) with channel_axis")
        raise ValueError(
            f"image must be {shape_name}{' with a leading batch axis' if batched else ''} "
            f"({expected_ndim}-D) to match the {'batched ' if batched else ''}unary, got "
            f"shape {tuple(image.shape)}"
        )
    if channel_axis is None:
        planes = image[:, None] if batched else image[None, None]
    else:
        _args.require_int(channel_axis, "channel_axis")
        if not -image.ndim <= channel_axis < image.ndim or (
            batched and channel_axis % image.ndim == 0
        ):
            raise ValueError(
                f"channel_axis={channel_axis} is out of range or the batch axis for image "
                f"shape {tuple(image.shape)}"
            )
        planes = xp.moveaxis(image, channel_axis, 1 if batched else 0)
        if not batched:
            planes = planes[None]
    batch, _, *spatial_shape = unary_planar_shape
    if tuple(planes.shape[2:]) != tuple(spatial_shape) or planes.shape[0] != batch:
        raise ValueError(
            f"image spatial shape {tuple(planes.shape[2:])} (batch {planes.shape[0]}) does "
            f"not match the unary's {tuple(spatial_shape)} (batch {batch}); unary shape "
            f"{layout.shape}, image shape {tuple(image.shape)}"
        )
    if not bool(xp.all(xp.isfinite(planes))):
        raise ValueError("image must be finite (it contains NaN or Inf)")
    return planes


def _compute_dtype(planar, planes):
    """float64 if the unary or the image is float64, else float32 (integer unaries count as
    float32: only their values matter)."""
    for name, array in (("unary", planar), ("image", planes)):
        if array is not None and array.dtype.kind == "f" and array.dtype.itemsize > 8:
            raise TypeError(f"{name}: extended precision {array.dtype} is not supported; use "
                            "float64")
    if planar.dtype.kind != "f":
        planar = np.empty(0, np.float32)
    return _args.compute_dtype(planar, planes)


def _all_finite(xp, module, array):
    """Whether every value is finite: the backend ``module``'s ``all_finite`` when it has one
    (the CPU's: one parallel pass) and the array is a non-empty C-contiguous float32/64 one;
    else the extremes (NaN propagates through min and max), two reductions instead of a
    boolean array as large as the unary, and one read back."""
    check = getattr(module, "all_finite", None)
    if (check is not None and array.dtype in (np.float32, np.float64)
            and array.flags.c_contiguous and array.size):
        return check(array)
    return bool(xp.all(xp.isfinite(xp.stack((array.min(), array.max())))))


def _log_potentials(xp, module, planar, input, dtype):
    """``(log-potentials of dtype, mask of the unclipped probabilities or None)``; ``module``
    is the backend's (for :func:`_all_finite`)."""
    planar = _args.cast(xp, planar, dtype)
    if not _all_finite(xp, module, planar):
        raise ValueError("unary must be finite (it contains NaN or Inf)")
    if input == "logits":
        return planar, None
    if bool(xp.any(planar < 0)) or bool(xp.any(planar > 1)):
        raise ValueError("unary probabilities must lie in [0, 1] with input='probabilities'")
    probability_mask = planar >= PROBABILITY_FLOOR
    return xp.log(xp.maximum(planar, dtype.type(PROBABILITY_FLOOR))), probability_mask


def _compatibility_matrix(xp, compatibility, labels, dtype):
    """The ``(L, L)`` matrix of dtype, or None for ``"potts"``."""
    if isinstance(compatibility, str):
        if compatibility != "potts":
            raise ValueError(
                f"compatibility must be 'potts' or an (L, L) array, got {compatibility!r}"
            )
        return None
    compat = _args.convert(xp, compatibility, "compatibility")
    if compat.dtype.kind not in "biuf":
        raise TypeError(f"compatibility must be real, got dtype {compat.dtype}")
    if tuple(compat.shape) != (labels, labels):
        raise ValueError(
            f"compatibility must have shape (L, L) = {(labels, labels)} for {labels} labels, "
            f"got shape {tuple(compat.shape)}"
        )
    compat = _args.cast(xp, compat, dtype)
    if not bool(xp.all(xp.isfinite(compat))):
        raise ValueError("compatibility must be finite")
    return compat


def _resolve_term(xp, term, index, planes, batch, shape, dtype, shared=None):
    """A :class:`PairwiseTerm` as the updates use it: guide on its grid, window with centre 0."""
    name = f"pairwise[{index}]"
    _args.fits_dtype(float(term.weight), f"{name}.weight", dtype)
    if term.blur > max(shape):
        raise ValueError(
            f"{name}.blur={term.blur} is larger than the image's largest side ({max(shape)}); "
            "a coarser grid than one cell for the whole image cannot help"
        )
    ndim = len(shape)
    if term.blur > 1 and ndim != 2:
        raise ValueError(
            f"{name}.blur={term.blur}: blurred terms run on images only, not on "
            f"{ndim}-D spatial data; use blur=1 or a larger dilation"
        )
    guide = _term_guide(xp, term, name, planes, batch, shape, dtype, shared)
    fine_guide = group = None
    if term.blur > 1:
        # The full-resolution features guide the upsampling; terms whose features are equal
        # (appearance terms of one colour bandwidth) share it (docs/design.md §2).
        fine_guide = guide
        if term.features == "smoothness":
            group = ("smoothness",)
        elif isinstance(term.features, str):
            group = ("appearance", float(term.sigma_color))
        else:
            group = ("features", index)
        if guide is not None:
            guide = _mean_field.block_mean(xp, guide, term.blur)
    if guide is not None:
        guide = xp.ascontiguousarray(guide)
    kernel_size = _rank_tuple(term.kernel_size, f"{name}.kernel_size", ndim)
    dilation = _rank_tuple(term.dilation, f"{name}.dilation", ndim)
    sigma = term.sigma_spatial
    if isinstance(sigma, (tuple, list)):
        if len(sigma) != ndim:
            raise ValueError(
                f"{name}.sigma_spatial={sigma!r} must be one float or {ndim} (one per spatial "
                f"axis of the {ndim}-D data)"
            )
        sigma = tuple(float(s) / term.blur for s in sigma)
    elif sigma is not None:
        sigma = (float(sigma) / term.blur,) * ndim
    spatial = spatial_window(kernel_size, sigma, dilation=dilation)
    spatial[tuple(k // 2 for k in kernel_size)] = 0.0
    return _mean_field.Term(
        weight=float(term.weight),
        guide=guide,
        spatial=_args.constant(xp, spatial, dtype),
        dilation=dilation,
        blur=int(term.blur),
        fine_guide=fine_guide,
        group=group,
    )


def _resolve_palette(xp, module, term, index, planes, batch, shape, dtype, shared):
    """A :class:`PaletteTerm` as the updates use it: a :class:`pacarray._palette.PaletteGrid`."""
    name = f"pairwise[{index}]"
    _args.fits_dtype(float(term.weight), f"{name}.weight", dtype)
    guide = _term_guide(xp, term, name, planes, batch, shape, dtype, shared)
    features = guide.shape[1]
    if term.palette is None:
        stride = _palette.sample_stride(shape)
        sample = guide[(slice(None), slice(None)) + (slice(None, None, stride),) * len(shape)]
        palette = _palette.palettes_of(_args.to_host(xp, sample), int(term.colors))
    else:
        palette = np.asarray(_args.to_host(_args.host_or(xp, term.palette), term.palette),
                             dtype=np.float64)
        if palette.ndim == 2:
            palette = np.broadcast_to(palette[None], (batch, *palette.shape))
        if palette.shape[0] != batch or palette.shape[2] != features or palette.shape[1] < 1:
            raise ValueError(
                f"{name}.palette must have shape (P, {features}) or ({batch}, P, {features}) "
                f"for {features} features and batch {batch}, got shape "
                f"{np.shape(term.palette)}"
            )
        if not np.all(np.isfinite(palette)):
            raise ValueError(f"{name}.palette must be finite")
        if isinstance(term.features, str):
            palette = palette / float(term.sigma_color)
    return _palette.build(xp, module, term.weight, xp.ascontiguousarray(guide), palette,
                          term.grid_cell, float(term.sigma_spatial), dtype)


def _rank_tuple(value, name, ndim):
    """A term's int-or-tuple option as ``ndim`` ints (an int: the same on every axis)."""
    if _args.is_int(value):
        return (int(value),) * ndim
    if len(value) != ndim:
        raise ValueError(
            f"{name}={value!r} must be an int or {ndim} ints (one per spatial axis of the "
            f"{ndim}-D data)"
        )
    return tuple(int(v) for v in value)


def _term_guide(xp, term, name, planes, batch, shape, dtype, shared=None):
    """The features a term compares at full resolution, ``(N, F, H, W)``, or None. Appearance
    features are taken from (and put in) ``shared``, by colour bandwidth, when given."""
    if isinstance(term.features, str):
        if term.features == "smoothness":
            return None
        if planes is None:
            raise ValueError(
                f"{name} is an appearance term (features='appearance'), which needs the "
                "image; pass image= or use features='smoothness'"
            )
        _args.inverse_fits_dtype(term.sigma_color, f"{name}.sigma_color", dtype)
        key = float(term.sigma_color)
        if shared is None:
            return planes / dtype.type(key)
        if key not in shared:
            shared[key] = planes / dtype.type(key)
        return shared[key]
    guide = _args.convert(xp, term.features, f"{name}.features")
    _args.require_float(guide, f"{name}.features")
    if guide.ndim == len(shape) + 1:
        guide = xp.broadcast_to(guide[None], (batch, *guide.shape))
    if guide.ndim != len(shape) + 2 or tuple(guide.shape[2:]) != shape or (
        guide.shape[0] != batch
    ):
        raise ValueError(
            f"{name}.features must have shape (F, *spatial) or (N, F, *spatial) with spatial "
            f"= {shape} and N = {batch}, got shape {tuple(term.features.shape)}"
        )
    guide = _args.cast(xp, guide, dtype)
    if not bool(xp.all(xp.isfinite(guide))):
        raise ValueError(f"{name}.features must be finite")
    return guide


# --------------------------------------------------------------------------------------------
# Public functions


@delegate_lazy("pac_crf")
def pac_crf(
    unary,
    image=None,
    *,
    num_steps: int = 5,
    pairwise: PairwiseTerm | Sequence[PairwiseTerm] | None = None,
    unary_weight: float = 1.0,
    input: Literal["logits", "probabilities"] = "logits",
    output: Literal["probabilities", "log", "labels"] = "probabilities",
    compatibility="potts",
    label_axis: int | None = None,
    channel_axis: int | None = -1,
    spatial_ndim: int = 2,
):
    """Refine per-pixel class scores with the image's edges: PAC-CRF mean-field inference.

    Parameters
    ----------
    unary : array_like, shape (L, H, W) or (N, L, H, W)
        Class scores for L >= 2 labels: logits (``input="logits"``, e.g. a network's output or
        log-probabilities) or probabilities (``input="probabilities"``). The label axis is
        ``label_axis``; a 4-D array has a leading batch axis. Must be finite. With
        ``spatial_ndim=3`` a volume ``(L, D, H, W)`` or ``(N, L, D, H, W)``; with
        ``spatial_ndim=1`` a signal ``(L, W)`` or ``(N, L, W)``.
    image : array_like, shape (H, W, C) or (N, H, W, C), optional
        The picture the labels should follow, channels on ``channel_axis`` (``None``: a
        grayscale (H, W) image). Any number of channels works (RGB, multispectral, a feature
        stack). Integer images are scaled to [0, 1] by their dtype's maximum, float images are
        used as they are (use [0, 1] to match the default ``sigma_color``). Needed by
        appearance terms only. For a volume ``(D, H, W, C)`` or ``(D, H, W)`` with
        ``channel_axis=None`` (a batch axis first when the unary has one).
    num_steps : int, default 5
        Mean-field updates (>= 0; 0 returns the softmax of the unary).
    pairwise : PairwiseTerm, PaletteTerm or a sequence of them, optional
        The pairwise kernels. Default :data:`DEFAULT_PAIRWISE`: a flat 3x3 appearance window
        (weight 4, ``sigma_color=0.05``) and a :class:`PaletteTerm` (weight 8, every pixel of
        similar colour within ``sigma_spatial=160`` pixels), for unaries on the scale of
        log-probabilities and images on [0, 1] (or integer images). On a volume the window is
        a 3x3x3 cube and the palette term's grid 3-D, measured on images only.
        :data:`FAST_PAIRWISE` swaps the window for a 4-tap "+".
    unary_weight : float, default 1.0
        Multiplies the unary (>= 0).
    input : {"logits", "probabilities"}, default "logits"
        With ``"probabilities"`` the unary is ``log(max(p, 1e-5))`` (values must lie in
        [0, 1]; they need not sum to 1).
    output : {"probabilities", "log", "labels"}, default "probabilities"
        Marginals Q in the unary's layout, their logarithm (computed stably), or the argmax
        label map ``(H, W)`` / ``(N, H, W)`` (the unary's spatial shape) of dtype intp.
    compatibility : "potts" or array_like, shape (L, L), default "potts"
        Label compatibility ``mu[l, l']``: the cost of label ``l`` at a pixel whose neighbour
        has ``l'``. Potts is ``mu = 1 - I``.
    label_axis : int, optional
        Axis of ``unary`` holding the labels: ``-3`` for ``(L, H, W)`` / ``(N, L, H, W)``,
        ``-1`` for ``(H, W, L)`` / ``(N, H, W, L)``. The batch axis, if any, is axis 0.
        Default: the axis before the spatial axes (``-3`` for images, ``-4`` for volumes,
        ``-2`` for signals).
    channel_axis : int or None, default -1
        Colour axis of ``image``; ``None`` for a grayscale image without one.
    spatial_ndim : {2, 3, 1}, default 2
        Spatial axes of ``unary`` and ``image``: 2 for images, 3 for volumes, 1 for signals
        (a 4-D unary is a batch of images unless this is 3). Volumes and signals run on the
        N-D :func:`pac_pool` and its gradient on every backend (the fused CPU kernels are
        2-D), and take no blurred terms (``blur > 1``).

    Returns
    -------
    ndarray
        Float marginals or log-marginals with the unary's shape, or intp labels. The dtype is
        float64 if the unary or the image is float64, else float32 (integer and float16 inputs
        compute in float32). CuPy in, CuPy out.

    Raises
    ------
    ValueError
        Unary and image of different spatial sizes or batch sizes, fewer than 2 labels,
        non-finite unary or image, probabilities outside [0, 1], ``compatibility`` of the wrong
        shape, negative ``num_steps``, ``unary_weight`` or term weights, unknown options.
    TypeError
        Wrong argument types, complex data, NumPy and CuPy arrays mixed.

    See Also
    --------
    PairwiseTerm, pac_crf_vjp, pac_pool

    Notes
    -----
    With ``U = unary_weight * unary`` (log-potentials), mean-field inference iterates

    ``Q = softmax(U)``; repeat ``num_steps`` times:
    ``P[l, i] = sum_k w_k sum_{j in N_k(i), j != i} k_k(i, j) Q[l, j]`` and
    ``Q = softmax_l(U[l] - sum_l' mu[l, l'] P[l'])``,

    where ``N_k(i)`` is term k's window around pixel ``i`` and ``k_k`` its kernel (see
    :class:`PairwiseTerm`). Each message is one fused :func:`pac_pool` of Q (the L labels are
    its channels, the adaptive kernel is shared by them), so memory stays O(L x pixels):
    no per-tap array is ever stored. On the CPU one fused Numba kernel per step computes the
    same messages for every full-resolution term, the compatibility and the softmax, row by
    row (vectorized exponential in float32). A window term's kernel is unnormalized, so a
    pixel with few similar neighbours receives a weak message. A :class:`PaletteTerm`'s
    message is normalized (each label's share among the similar pixels within reach) and
    goes through a coarse grid of palette colours: O(L x pixels) work whatever its reach; on
    the CPU it is fused into the same step kernel.

    References: P. Krähenbühl and V. Koltun, "Efficient Inference in Fully Connected CRFs with
    Gaussian Edge Potentials", NeurIPS 2011; H. Su et al., "Pixel-Adaptive Convolutional Neural
    Networks", CVPR 2019, doi:10.1109/CVPR.2019.01142.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import pac_crf
    >>> image = np.zeros((32, 32, 3)); image[:, 16:] = 1.0        # two flat halves
    >>> truth = (np.arange(32) >= 16)[None, :].repeat(32, axis=0)
    >>> rng = np.random.default_rng(0)
    >>> logits = np.stack([~truth, truth]).astype(float) + rng.normal(0, 0.8, (2, 32, 32))
    >>> before = float(np.mean(logits.argmax(axis=0) == truth))
    >>> labels = pac_crf(logits, image, output="labels")
    >>> after = float(np.mean(labels == truth))
    >>> bool(after > before), after
    (True, 1.0)
    """
    if output not in ("probabilities", "log", "labels"):
        raise ValueError(f"output must be 'probabilities', 'log' or 'labels', got {output!r}")
    problem = _prepare(unary, image, num_steps, pairwise, unary_weight, input, compatibility,
                       label_axis, channel_axis, spatial_ndim)
    field, layout = problem.field, problem.layout
    xp = field.xp
    q, logits, _ = _mean_field.forward(field, want_logits=output == "log")
    if output == "labels":
        return layout.restore_labels(xp.argmax(q, axis=1))
    if output == "log":
        return layout.restore(xp, _mean_field.log_softmax(xp, logits))
    return layout.restore(xp, q)


def pac_crf_vjp(
    grad_output,
    unary,
    image=None,
    *,
    num_steps: int = 5,
    pairwise: PairwiseTerm | Sequence[PairwiseTerm] | None = None,
    unary_weight: float = 1.0,
    input: Literal["logits", "probabilities"] = "logits",
    output: Literal["probabilities", "log"] = "probabilities",
    compatibility="potts",
    label_axis: int | None = None,
    channel_axis: int | None = -1,
    spatial_ndim: int = 2,
) -> CRFGradients:
    """Vector-Jacobian products of :func:`pac_crf` for fitting CRF parameters.

    Runs the mean-field updates forward (keeping the marginals of every step), then backwards,
    and returns ``grad_output`` pulled back to the unary, each pairwise term's weight, the unary
    weight and the compatibility matrix.

    Parameters
    ----------
    grad_output : array_like
        Gradient of a scalar loss with respect to ``pac_crf``'s output (same shape as it).
    unary, image, num_steps, pairwise, unary_weight, input, compatibility, label_axis, \
channel_axis, spatial_ndim
        As in :func:`pac_crf` (same values as the forward call).
    output : {"probabilities", "log"}, default "probabilities"
        Which output ``grad_output`` refers to (labels are not differentiable).

    Returns
    -------
    CRFGradients
        ``unary`` (the unary's shape and layout; for ``input="probabilities"`` the gradient
        with respect to the probabilities, 0 where they were clipped), ``weights`` (tuple of
        floats, one per pairwise term), ``unary_weight`` (float) and ``compatibility`` (``(L,
        L)`` array, ``None`` for Potts).

    Raises
    ------
    ValueError, TypeError
        As :func:`pac_crf`, and when ``grad_output`` has the wrong shape.

    See Also
    --------
    pac_crf

    Notes
    -----
    Memory is O(num_steps x L x pixels): the marginals of every step are kept for the backward
    pass. The message operator of a term is symmetric — ``k(i, j) = k(j, i)`` because the
    Gaussian of a feature difference and the spatial window (centre excluded) are symmetric and
    a pair is counted only when both pixels are inside the image — so on the CPU the backward
    pass applies the forward message kernel to the gradients; other backends go through
    :func:`~pacarray.gradients.pac_pool_vjp`. A :class:`PaletteTerm` is not symmetric (its
    senders are a subsample, its message normalized per receiver); its backward pass applies
    the adjoint of its splat, smoothing and slice. For a step
    ``Q_s = softmax(a_s)``, ``a_s = U - mu P_s``, ``P_s = sum_k w_k M_k Q_(s-1)``:
    ``dL/dw_k = -<mu^T dL/da_s, M_k Q_(s-1)>``, ``dL/dmu = -dL/da_s P_s^T`` and
    ``dL/dQ_(s-1) = -sum_k w_k M_k mu^T dL/da_s``.

    Examples
    --------
    >>> import numpy as np
    >>> from pacarray import PairwiseTerm, pac_crf, pac_crf_vjp
    >>> rng = np.random.default_rng(0)
    >>> unary = rng.normal(size=(3, 12, 12)); image = rng.random((12, 12, 3))
    >>> terms = [PairwiseTerm(weight=2.0, kernel_size=3)]
    >>> target = np.eye(3)[rng.integers(0, 3, (12, 12))].transpose(2, 0, 1)
    >>> log_q = pac_crf(unary, image, pairwise=terms, output="log")
    >>> loss = -np.sum(target * log_q)                       # cross-entropy
    >>> grads = pac_crf_vjp(-target, unary, image, pairwise=terms, output="log")
    >>> grads.unary.shape, len(grads.weights)
    ((3, 12, 12), 1)
    """
    if output not in ("probabilities", "log"):
        raise ValueError(
            f"output must be 'probabilities' or 'log' for gradients (labels are piecewise "
            f"constant), got {output!r}"
        )
    problem = _prepare(unary, image, num_steps, pairwise, unary_weight, input, compatibility,
                       label_axis, channel_axis, spatial_ndim)
    field, layout = problem.field, problem.layout
    xp = field.xp
    grad = _args.convert(xp, grad_output, "grad_output")
    _args.require_real(grad, "grad_output")
    if tuple(grad.shape) != layout.shape:
        raise ValueError(
            f"grad_output must have the output's shape {layout.shape}, got {tuple(grad.shape)}"
        )
    dtype = field.unary.dtype
    grad = _args.cast(xp, layout.to_planar(xp, grad), dtype)
    _, _, history = _mean_field.forward(field, keep_history=True)
    grad_unary_scaled, weight_grads, compat_grad = _mean_field.backward(
        field, history, grad, log_output=output == "log"
    )

    unary_weight_grad = float(xp.sum(grad_unary_scaled * problem.log_potentials))
    grad_unary = dtype.type(problem.unary_weight) * grad_unary_scaled
    if problem.probability_mask is not None:
        # d log(max(p, floor)) / dp = 1/p where p >= floor, 0 where it was clipped.
        floor = dtype.type(PROBABILITY_FLOOR)
        probabilities = xp.exp(problem.log_potentials)
        grad_unary = xp.where(
            problem.probability_mask, grad_unary / xp.maximum(probabilities, floor), 0
        ).astype(dtype)
    return CRFGradients(
        unary=layout.restore(xp, grad_unary),
        weights=tuple(weight_grads),
        unary_weight=unary_weight_grad,
        compatibility=compat_grad,
    )
