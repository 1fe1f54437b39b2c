"""PAC-CRF: mean-field inference of a locally connected CRF with pixel-adaptive messages.

A fully connected CRF (Krähenbühl & Koltun 2011) passes messages between all pairs of pixels
through Gaussian kernels on position and colour. PAC-CRF (Su et al. 2019) keeps the same
mean-field update but lets each pixel talk only to the taps of a (possibly dilated) window, so a
message is one pixel-adaptive pooling of the label marginals: memory O(labels x pixels), time
O(labels x pixels x taps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from . import _args
from ._dispatch import namespace, select_backend
from ._geometry import as_tuple
from .kernels import spatial_window
from .gradients import pac_pool_vjp
from .ops import pac_pool

__all__ = ["PairwiseTerm", "DEFAULT_PAIRWISE", "CRFGradients", "pac_crf", "pac_crf_vjp"]

#: Probabilities are clipped to at least this before the logarithm (``input="probabilities"``),
#: so that a label the classifier ruled out can still win where the image evidence is strong.
PROBABILITY_FLOOR = 1e-5

# Tests switch this off to run the generic ``pac_pool`` path on NumPy arrays as well.
_USE_CPU_KERNELS = True


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
    kernel_size : int or (int, int), default 5
        Odd window size in taps. The centre tap is always excluded, as in a dense CRF.
    dilation : int or (int, int), default 3
        Spacing between taps in pixels (of the grid the term runs on, see ``blur``).
    sigma_spatial : float or None, default 6.0
        Standard deviation of the spatial Gaussian in pixels of the full-resolution image.
        ``None`` gives a flat window.
    sigma_color : float, default 0.08
        Colour bandwidth in intensity units, for ``features="appearance"``: images are compared
        on a [0, 1] scale (integer images are divided by their dtype's maximum, so ``0.08`` is
        about 20 grey levels of a uint8 image). Ignored by the other feature choices.
    features : {"appearance", "smoothness"} or array, default "appearance"
        What the kernel compares besides position: ``"appearance"`` the image's channels
        divided by ``sigma_color`` (an edge-aware term); ``"smoothness"`` nothing (position
        only, label smoothing that ignores the image); or an array of shape ``(F, H, W)`` or
        ``(N, F, H, W)`` of features already scaled to unit bandwidth (the kernel is
        ``exp(-1/2 |f_i - f_j|**2)``), for example depth or a second modality. With
        ``features=pacarray.features.color_position_features(image, sigma_spatial=s,
        sigma_color=c, channel_axis=-1)`` and ``sigma_spatial=None`` the term equals the
        appearance term with those bandwidths (for a float image; that helper keeps integer
        images in their own units), only slower: the appearance term puts the position part
        into the spatial window instead of comparing two more features per tap.
    blur : int, default 1
        Run the term on a grid coarser by this factor: the label marginals and the features are
        averaged over ``blur x blur`` blocks, the message is computed there (kernel size and
        dilation count coarse cells), upsampled bilinearly and multiplied by ``blur**2`` (each
        cell stands for that many pixels). Large ranges stay cheap.

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
        kernel_size = as_tuple(self.kernel_size, "kernel_size")
        if any(k < 1 or k % 2 == 0 for k in kernel_size) or kernel_size == (1, 1):
            raise ValueError(
                f"PairwiseTerm kernel_size must be odd in each dimension and larger than 1 "
                f"(the centre tap is excluded), got {self.kernel_size!r}"
            )
        dilation = as_tuple(self.dilation, "dilation")
        if any(d < 1 for d in dilation):
            raise ValueError(f"PairwiseTerm dilation must be >= 1, got {self.dilation!r}")
        if self.sigma_spatial is not None:
            sigma = _args.finite_scalar(self.sigma_spatial, "sigma_spatial")
            if sigma <= 0:
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
        elif np.ndim(self.features) not in (3, 4):
            raise ValueError(
                f"PairwiseTerm features array must have shape (F, H, W) or (N, F, H, W), got "
                f"shape {np.shape(self.features)}"
            )
        if not _args.is_int(self.blur) or self.blur < 1:
            raise ValueError(f"PairwiseTerm blur must be an integer >= 1, got {self.blur!r}")


#: The pairwise terms :func:`pac_crf` uses when ``pairwise`` is not given: one edge-aware
#: appearance term, ``PairwiseTerm()`` (5x5 taps 3 pixels apart, ``sigma_spatial=6`` pixels,
#: ``sigma_color=0.08``, weight 2). Chosen on k-means labellings of photographs with unaries
#: degraded by 8x downsampling, blur and noise (log-probability scale); a smoothness term
#: added nothing there.
DEFAULT_PAIRWISE = (PairwiseTerm(),)


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
# Argument handling


@dataclass
class _Term:
    """A pairwise term resolved against the inputs: arrays on the right device and dtype."""

    weight: float
    guide: object  # (N, F, h, w) on the term's grid, or None
    spatial: object  # (kh, kw), centre 0
    dilation: tuple[int, int]
    blur: int


@dataclass
class _Problem:
    xp: object
    scaled_unary: object  # unary_weight * log-potentials, (N, L, H, W)
    log_potentials: object  # the unary as logits (before unary_weight), (N, L, H, W)
    probability_mask: object  # where the probability input was not clipped, or None
    terms: list
    compatibility: object  # (L, L) or None for Potts
    num_steps: int
    unary_weight: float
    restore: object  # callable: (N, L, H, W) result -> the caller's layout
    restore_labels: object
    unary_shape: tuple
    batched: bool
    label_axis: int


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


def _unary_layout(unary_shape, label_axis):
    """(batched, normalized label axis) for a 3-D (unbatched) or 4-D (batched) unary."""
    ndim = len(unary_shape)
    if ndim not in (3, 4):
        raise ValueError(
            f"unary must be (L, H, W) / (H, W, L) or batched (N, ...) with 4 dimensions, got "
            f"shape {tuple(unary_shape)}"
        )
    _args.require_int(label_axis, "label_axis")
    if not -ndim <= label_axis < ndim:
        raise ValueError(f"label_axis={label_axis} is out of range for unary shape {unary_shape}")
    axis = int(label_axis) % ndim
    batched = ndim == 4
    if batched and axis == 0:
        raise ValueError(
            f"label_axis={label_axis} points at the batch axis of the 4-D unary {unary_shape}; "
            "the batch axis is always first"
        )
    return batched, axis


def _prepare(unary, image, num_steps, pairwise, unary_weight, input, compatibility,
             label_axis, channel_axis):
    features_arrays = {}
    if pairwise is None:
        pairwise = DEFAULT_PAIRWISE
    if isinstance(pairwise, PairwiseTerm):
        pairwise = (pairwise,)
    if not isinstance(pairwise, Sequence) or not all(
        isinstance(t, PairwiseTerm) for t in pairwise
    ):
        raise TypeError(
            f"pairwise must be a PairwiseTerm or a sequence of them, got {pairwise!r}"
        )
    for index, term in enumerate(pairwise):
        if not isinstance(term.features, str):
            features_arrays[f"pairwise[{index}].features"] = term.features
    backend = select_backend(
        unary=unary, image=image,
        compatibility=None if isinstance(compatibility, str) else compatibility,
        **features_arrays,
    )
    xp = namespace(backend)

    _args.require_int(num_steps, "num_steps", minimum=0)
    unary_weight = _args.finite_scalar(unary_weight, "unary_weight")
    if unary_weight < 0:
        raise ValueError(f"unary_weight must be >= 0, got {unary_weight!r}")
    if input not in ("logits", "probabilities"):
        raise ValueError(f"input must be 'logits' or 'probabilities', got {input!r}")

    unary = _args.convert(xp, unary, "unary")
    if unary.dtype.kind == "c":
        raise TypeError(f"unary must be real, got dtype {unary.dtype}")
    batched, axis = _unary_layout(tuple(unary.shape), label_axis)
    unary_shape = tuple(unary.shape)
    if unary.size == 0:
        raise ValueError(f"unary must not be empty, got shape {unary_shape}")
    planar = xp.moveaxis(unary, axis, 1 if batched else 0)
    if not batched:
        planar = planar[None]
    batch, labels, height, width = planar.shape
    if labels < 2:
        raise ValueError(
            f"unary must have at least 2 labels along label_axis={label_axis}, got shape "
            f"{unary_shape}"
        )

    planes = None
    if image is not None:
        image = _image_to_float(xp, image, "image")
        expected_ndim = (2 if channel_axis is None else 3) + int(batched)
        if image.ndim != expected_ndim:
            layout = "(H, W)" if channel_axis is None else "(H, W, C) with channel_axis"
            raise ValueError(
                f"image must be {layout}{' with a leading batch axis' if batched else ''} "
                f"({expected_ndim}-D) to match the {'batched ' if batched else ''}unary, got "
                f"shape {tuple(image.shape)}"
            )
        if channel_axis is None:
            planes = image[:, None] if batched else image[None, None]
        else:
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
        if tuple(planes.shape[2:]) != (height, width) or planes.shape[0] != batch:
            raise ValueError(
                f"image spatial shape {tuple(planes.shape[2:])} (batch {planes.shape[0]}) does "
                f"not match the unary's {(height, width)} (batch {batch}); unary shape "
                f"{unary_shape}, image shape {tuple(image.shape)}"
            )
        if not bool(xp.all(xp.isfinite(planes))):
            raise ValueError("image must be finite (it contains NaN or Inf)")

    float_unary = unary if unary.dtype.kind == "f" else unary.astype(np.float32)
    dtype = _args.compute_dtype(float_unary, planes)
    planar = _args.cast(xp, planar, dtype)
    if not bool(xp.all(xp.isfinite(planar))):
        raise ValueError("unary must be finite (it contains NaN or Inf)")
    probability_mask = None
    if input == "probabilities":
        if bool(xp.any(planar < 0)) or bool(xp.any(planar > 1)):
            raise ValueError("unary probabilities must lie in [0, 1] with input='probabilities'")
        probability_mask = planar >= PROBABILITY_FLOOR
        log_potentials = xp.log(xp.maximum(planar, dtype.type(PROBABILITY_FLOOR)))
    else:
        log_potentials = planar
    if planes is not None:
        planes = _args.cast(xp, planes, dtype)

    if isinstance(compatibility, str):
        if compatibility != "potts":
            raise ValueError(
                f"compatibility must be 'potts' or an (L, L) array, got {compatibility!r}"
            )
        compat = None
    else:
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

    terms = [
        _resolve_term(xp, term, index, planes, batch, batched, (height, width), dtype)
        for index, term in enumerate(pairwise)
    ]

    def restore(result):
        if not batched:
            result = result[0]
        return xp.moveaxis(result, 1 if batched else 0, axis)

    def restore_labels(labels_map):
        return labels_map if batched else labels_map[0]

    return _Problem(
        xp=xp,
        scaled_unary=xp.ascontiguousarray(dtype.type(unary_weight) * log_potentials),
        log_potentials=log_potentials,
        probability_mask=probability_mask,
        terms=terms,
        compatibility=compat,
        num_steps=int(num_steps),
        unary_weight=unary_weight,
        restore=restore,
        restore_labels=restore_labels,
        unary_shape=unary_shape,
        batched=batched,
        label_axis=axis,
    )


def _resolve_term(xp, term, index, planes, batch, batched, shape, dtype):
    name = f"pairwise[{index}]"
    if isinstance(term.features, str):
        if term.features == "smoothness":
            guide = None
        else:
            if planes is None:
                raise ValueError(
                    f"{name} is an appearance term (features='appearance'), which needs the "
                    "image; pass image= or use features='smoothness'"
                )
            guide = planes / dtype.type(term.sigma_color)
    else:
        guide = _args.convert(xp, term.features, f"{name}.features")
        _args.require_float(guide, f"{name}.features")
        if guide.ndim == 3:
            guide = xp.broadcast_to(guide[None], (batch, *guide.shape))
        if tuple(guide.shape[2:]) != shape or guide.shape[0] != batch:
            raise ValueError(
                f"{name}.features must have shape (F, H, W) or (N, F, H, W) with (H, W) = "
                f"{shape} and N = {batch}, got shape {tuple(term.features.shape)}"
            )
        guide = _args.cast(xp, guide, dtype)
        if not bool(xp.all(xp.isfinite(guide))):
            raise ValueError(f"{name}.features must be finite")
    if guide is not None and term.blur > 1:
        guide = _block_mean(xp, guide, term.blur)
    if guide is not None:
        guide = xp.ascontiguousarray(guide)
    sigma = None if term.sigma_spatial is None else term.sigma_spatial / term.blur
    kernel_size = as_tuple(term.kernel_size, "kernel_size")
    dilation = as_tuple(term.dilation, "dilation")
    spatial = spatial_window(kernel_size, sigma, dilation=dilation)
    spatial[kernel_size[0] // 2, kernel_size[1] // 2] = 0.0
    return _Term(
        weight=float(term.weight),
        guide=guide,
        spatial=_args.cast(xp, xp.asarray(spatial), dtype),
        dilation=dilation,
        blur=int(term.blur),
    )


# --------------------------------------------------------------------------------------------
# Building blocks (every one works in the array namespace of its inputs)


def _block_mean(xp, array, factor):
    """Mean over ``factor x factor`` blocks of the last two axes (partial blocks: their pixels)."""
    *lead, height, width = array.shape
    low_h, low_w = -(-height // factor), -(-width // factor)
    padded = xp.zeros((*lead, low_h * factor, low_w * factor), array.dtype)
    padded[..., :height, :width] = array
    sums = padded.reshape(*lead, low_h, factor, low_w, factor).sum(axis=(-3, -1))
    return sums / _block_counts(xp, height, width, factor, array.dtype)


def _block_counts(xp, height, width, factor, dtype):
    rows = np.minimum(factor, height - factor * np.arange(-(-height // factor)))
    cols = np.minimum(factor, width - factor * np.arange(-(-width // factor)))
    return xp.asarray(np.outer(rows, cols).astype(dtype))


def _block_mean_adjoint(xp, grad_low, height, width, factor):
    """Adjoint of :func:`_block_mean`: each pixel gets its block's gradient / block size."""
    scaled = grad_low / _block_counts(xp, height, width, factor, grad_low.dtype)
    spread = xp.repeat(xp.repeat(scaled, factor, axis=-2), factor, axis=-1)
    return xp.ascontiguousarray(spread[..., :height, :width])


def _interpolation(size_out, size_in, factor):
    """Bilinear sample positions: ``(lo, hi, t)`` for output pixel centres on a coarse grid."""
    position = (np.arange(size_out) + 0.5) / factor - 0.5
    position = np.clip(position, 0.0, size_in - 1)
    lo = np.floor(position).astype(np.intp)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, position - lo


def _upsample(xp, array, shape, factor):
    """Bilinear upsampling of the last two axes to ``shape`` (coarse cells at block centres)."""
    for axis, size_out in ((-2, shape[0]), (-1, shape[1])):
        lo, hi, t = _interpolation(size_out, array.shape[axis], factor)
        t = xp.asarray(t.astype(array.dtype))
        if axis == -2:
            t = t[:, None]
        low = xp.take(array, xp.asarray(lo), axis=axis)
        high = xp.take(array, xp.asarray(hi), axis=axis)
        array = low + t * (high - low)
    return array


def _upsample_adjoint(xp, grad, low_shape, factor):
    """Adjoint of :func:`_upsample` (the transpose of the interpolation, axis by axis)."""
    for axis, size_in in ((-1, low_shape[1]), (-2, low_shape[0])):
        lo, hi, t = _interpolation(grad.shape[axis], size_in, factor)
        t = xp.asarray(t.astype(grad.dtype))
        if axis == -2:
            t = t[:, None]
        moved_shape = list(grad.shape)
        moved_shape[axis] = size_in
        out = xp.zeros(moved_shape, grad.dtype)
        index = [slice(None)] * grad.ndim
        index[axis] = xp.asarray(lo)
        xp.add.at(out, tuple(index), grad * (1 - t))
        index[axis] = xp.asarray(hi)
        xp.add.at(out, tuple(index), grad * t)
        grad = out
    return grad


def _pool_arguments(term):
    kernel_size = tuple(term.spatial.shape)
    padding = tuple(d * (k // 2) for k, d in zip(kernel_size, term.dilation))
    return kernel_size, dict(guide=term.guide, padding=padding, dilation=term.dilation,
                             spatial_weight=term.spatial)


def _add_raw_messages(xp, q, term, scale, out):
    """``out += scale * M q`` on the term's own grid (no blur handling)."""
    if xp is np and _USE_CPU_KERNELS:
        from ._cpu import _crf_kernels

        guide = term.guide
        if guide is None:
            guide = np.zeros((q.shape[0], 0, *q.shape[2:]), q.dtype)
        _crf_kernels.add_messages(q, guide, term.spatial, *term.dilation, scale, out)
        return
    kernel_size, options = _pool_arguments(term)
    out += q.dtype.type(scale) * pac_pool(q, kernel_size, **options)


def _add_raw_adjoint(xp, grad, q, term, scale, out):
    """``out += scale * M^T grad`` for the message operator ``M`` applied to ``q``.

    ``M`` is symmetric (see :func:`pac_crf_vjp`), so the dedicated CPU kernel applies it
    directly; the generic path goes through the core gradient :func:`pac_pool_vjp`.
    """
    if xp is np and _USE_CPU_KERNELS:
        _add_raw_messages(xp, grad, term, scale, out)
        return
    kernel_size, options = _pool_arguments(term)
    adjoint = pac_pool_vjp(grad, q, kernel_size, **options, wrt="x").x
    out += grad.dtype.type(scale) * adjoint


def _pairwise_sum(xp, q, terms, weights, out):
    """``out = sum_k weights[k] * message_k(q)`` at full resolution (``out`` is overwritten).

    Blurred terms run on their coarse grid (marginals pooled once per blur factor).
    """
    out[...] = 0
    pooled = {}
    for term, weight in zip(terms, weights):
        if weight == 0:
            continue
        if term.blur == 1:
            _add_raw_messages(xp, q, term, weight, out)
            continue
        if term.blur not in pooled:
            pooled[term.blur] = xp.ascontiguousarray(_block_mean(xp, q, term.blur))
        coarse_q = pooled[term.blur]
        coarse = xp.zeros_like(coarse_q)
        _add_raw_messages(xp, coarse_q, term, weight * term.blur**2, coarse)
        out += _upsample(xp, coarse, q.shape[2:], term.blur)
    return out


def _pairwise_adjoint(xp, grad, q, terms, weights, out, weight_grads):
    """``out = sum_k weights[k] M_k^T grad``; ``weight_grads[k] += <q, M_k^T grad>``.

    ``q`` is the input of the forward messages. A blurred term is ``b**2 * Up o M o Mean``,
    whose adjoint is ``b**2 * Mean^T o M^T o Up^T``.
    """
    out[...] = 0
    single = xp.empty_like(grad)
    pooled = {}
    for index, (term, weight) in enumerate(zip(terms, weights)):
        if term.blur == 1:
            single[...] = 0
            _add_raw_adjoint(xp, grad, q, term, 1.0, single)
        else:
            if term.blur not in pooled:
                pooled[term.blur] = xp.ascontiguousarray(_block_mean(xp, q, term.blur))
            coarse_q = pooled[term.blur]
            coarse_grad = xp.ascontiguousarray(
                _upsample_adjoint(xp, grad, coarse_q.shape[2:], term.blur)
            )
            coarse = xp.zeros_like(coarse_grad)
            _add_raw_adjoint(xp, coarse_grad, coarse_q, term, float(term.blur**2), coarse)
            single[...] = _block_mean_adjoint(xp, coarse, *grad.shape[2:], term.blur)
        weight_grads[index] += float(xp.sum(q * single))
        if weight != 0:
            out += q.dtype.type(weight) * single
    return out


def _softmax(xp, logits):
    """Softmax over the label axis (axis 1), in a new array."""
    if xp is np and _USE_CPU_KERNELS:
        from ._cpu import _crf_kernels

        # A step without pairwise terms is exactly the softmax of its unary; reusing the step
        # kernel saves compiling a separate parallel kernel per dtype.
        out = np.empty_like(logits)
        no_terms = _packed_terms(logits, [])
        _crf_kernels.mean_field_step(
            logits, logits, *no_terms, logits, False, np.zeros((1, 1), logits.dtype), False,
            out, logits, False,
        )
        return out
    shifted = logits - logits.max(axis=1, keepdims=True)
    out = xp.exp(shifted)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _log_softmax(xp, logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def _compat_apply(xp, compat, pairwise):
    """``out[n, l] = sum_l' compat[l, l'] pairwise[n, l']`` (one matrix product per image)."""
    batch, labels = pairwise.shape[:2]
    flat = pairwise.reshape(batch, labels, -1)
    return xp.matmul(compat, flat).reshape(pairwise.shape)


def _logits(xp, problem, pairwise):
    """Logits of an update from the weighted message sum ``P``.

    Potts compatibility ``mu = 1 - I`` gives ``U - (sum_l' P[l'] - P[l])``; the sum over labels
    is the same for every label of a pixel and cancels in the softmax, so ``U + P`` is used.
    """
    if problem.compatibility is None:
        return problem.scaled_unary + pairwise
    return problem.scaled_unary - _compat_apply(xp, problem.compatibility, pairwise)


def _packed_terms(unary, terms):
    """The full-resolution terms as the flat arrays of the fused CPU step kernel."""
    dtype = unary.dtype
    terms = [t for t in terms if t.blur == 1 and t.weight != 0]
    kh = max([t.spatial.shape[0] for t in terms], default=1)
    kw = max([t.spatial.shape[1] for t in terms], default=1)
    # Each window centred in a common (kh, kw) frame; padding taps are 0 and skipped.
    spatials = np.zeros((len(terms), kh, kw), dtype)
    guides, bounds, start = [], np.zeros((len(terms), 2), np.int64), 0
    for index, term in enumerate(terms):
        th, tw = term.spatial.shape
        top, left = (kh - th) // 2, (kw - tw) // 2
        spatials[index, top:top + th, left:left + tw] = term.spatial
        count = 0 if term.guide is None else term.guide.shape[1]
        if count:
            guides.append(term.guide)
        bounds[index] = start, start + count
        start += count
    if guides:
        guide = np.ascontiguousarray(np.concatenate(guides, axis=1))
    else:
        guide = np.zeros((unary.shape[0], 0, *unary.shape[2:]), dtype)
    dilations = np.array([t.dilation for t in terms], np.int64).reshape(len(terms), 2)
    weights = np.array([t.weight for t in terms], np.float64)
    return guide, bounds, spatials, dilations, weights


def _mean_field(problem, keep_history=False, want_logits=False):
    """Run the updates; returns ``(Q, logits of the last update or None, history of Q)``."""
    xp = problem.xp
    unary = problem.scaled_unary
    q = _softmax(xp, unary)
    history = [q] if keep_history else None
    logits = unary if want_logits else None
    fused = xp is np and _USE_CPU_KERNELS
    if fused:
        from ._cpu import _crf_kernels

        packed = _packed_terms(unary, problem.terms)
        compat = problem.compatibility
        use_compat = compat is not None
        if compat is None:
            compat = np.zeros((1, 1), unary.dtype)
        blurred = [t.weight if t.blur > 1 else 0.0 for t in problem.terms]
        use_extra = any(blurred)
    else:
        weights = [t.weight for t in problem.terms]
    pairwise = xp.empty_like(unary)
    for step in range(problem.num_steps):
        last = step == problem.num_steps - 1
        if fused:
            if use_extra:
                _pairwise_sum(xp, q, problem.terms, blurred, pairwise)
            new_q = np.empty_like(unary)
            logits = np.empty_like(unary) if (want_logits and last) else unary
            _crf_kernels.mean_field_step(
                unary, q, *packed, pairwise, use_extra, compat, use_compat, new_q, logits,
                want_logits and last,
            )
            q = new_q
        else:
            _pairwise_sum(xp, q, problem.terms, weights, pairwise)
            logits = _logits(xp, problem, pairwise)
            q = _softmax(xp, logits)
        if keep_history:
            history.append(q)
    return q, logits, history


# --------------------------------------------------------------------------------------------
# Public functions


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
    label_axis: int = -3,
    channel_axis: int | None = -1,
):
    """Refine per-pixel class scores with the image's edges: PAC-CRF mean-field inference.

    Parameters
    ----------
    unary : array_like, shape (L, H, W) or (N, L, H, W)
        Class scores for L >= 2 labels: logits (``input="logits"``, e.g. a network's output or
        log-probabilities) or probabilities (``input="probabilities"``). The label axis is
        ``label_axis``; a 4-D array has a leading batch axis. Must be finite.
    image : array_like, shape (H, W, C) or (N, H, W, C), optional
        The picture the labels should follow, channels on ``channel_axis`` (``None``: a
        grayscale (H, W) image). Any number of channels works (RGB, multispectral, a feature
        stack). Integer images are scaled to [0, 1] by their dtype's maximum, float images are
        used as they are (use [0, 1] to match the default ``sigma_color``). Needed by
        appearance terms only.
    num_steps : int, default 5
        Mean-field updates (>= 0; 0 returns the softmax of the unary).
    pairwise : PairwiseTerm or sequence of PairwiseTerm, optional
        The pairwise kernels. Default :data:`DEFAULT_PAIRWISE`: one appearance term,
        ``PairwiseTerm()`` (5x5 taps, dilation 3, ``sigma_spatial=6`` pixels,
        ``sigma_color=0.08`` intensity, weight 2), for unaries on the scale of
        log-probabilities and images on [0, 1] (or integer images).
    unary_weight : float, default 1.0
        Multiplies the unary (>= 0).
    input : {"logits", "probabilities"}, default "logits"
        With ``"probabilities"`` the unary is ``log(max(p, 1e-5))`` (values must lie in
        [0, 1]; they need not sum to 1).
    output : {"probabilities", "log", "labels"}, default "probabilities"
        Marginals Q in the unary's layout, their logarithm (computed stably), or the argmax
        label map ``(H, W)`` / ``(N, H, W)`` of dtype intp.
    compatibility : "potts" or array_like, shape (L, L), default "potts"
        Label compatibility ``mu[l, l']``: the cost of label ``l`` at a pixel whose neighbour
        has ``l'``. Potts is ``mu = 1 - I``.
    label_axis : int, default -3
        Axis of ``unary`` holding the labels: ``-3`` for ``(L, H, W)`` / ``(N, L, H, W)``,
        ``-1`` for ``(H, W, L)`` / ``(N, H, W, L)``. The batch axis, if any, is axis 0.
    channel_axis : int or None, default -1
        Colour axis of ``image``; ``None`` for a grayscale image without one.

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
    row (vectorized exponential in float32). The kernel is unnormalized, as in a dense
    CRF, so a pixel with few similar neighbours receives a weak message.

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
                       label_axis, channel_axis)
    xp = problem.xp
    q, logits, _ = _mean_field(problem, want_logits=output == "log")
    if output == "labels":
        return problem.restore_labels(xp.argmax(q, axis=1))
    if output == "log":
        return problem.restore(_log_softmax(xp, logits))
    return problem.restore(q)


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
    label_axis: int = -3,
    channel_axis: int | None = -1,
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
channel_axis
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
    :func:`~pacarray.gradients.pac_pool_vjp`. For a step
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
                       label_axis, channel_axis)
    xp = problem.xp
    q, _, history = _mean_field(problem, keep_history=True)
    grad = _args.convert(xp, grad_output, "grad_output")
    if tuple(grad.shape) != problem.unary_shape:
        raise ValueError(
            f"grad_output must have the output's shape {problem.unary_shape}, got "
            f"{tuple(grad.shape)}"
        )
    grad = _to_planar(xp, grad, problem, q.dtype)

    if output == "log":
        grad_logits = grad - q * grad.sum(axis=1, keepdims=True)
    else:
        grad_logits = q * (grad - (grad * q).sum(axis=1, keepdims=True))

    terms = problem.terms
    weights = [t.weight for t in terms]
    weight_grads = [0.0] * len(terms)
    compat = problem.compatibility
    compat_grad = None if compat is None else xp.zeros_like(compat)
    grad_unary_scaled = xp.zeros_like(q)
    pairwise = xp.empty_like(q)
    grad_q = xp.empty_like(q)
    for step in range(problem.num_steps, 0, -1):
        grad_unary_scaled += grad_logits
        if compat is None:
            grad_pairwise = grad_logits
        else:
            previous = history[step - 1]
            _pairwise_sum(xp, previous, terms, weights, pairwise)
            batch, labels = q.shape[:2]
            compat_grad -= xp.einsum(
                "nai,nbi->ab", grad_logits.reshape(batch, labels, -1),
                pairwise.reshape(batch, labels, -1),
            )
            grad_pairwise = -_compat_apply(xp, compat.T, grad_logits)
        grad_pairwise = xp.ascontiguousarray(grad_pairwise)
        _pairwise_adjoint(xp, grad_pairwise, history[step - 1], terms, weights, grad_q,
                          weight_grads)
        previous = history[step - 1]
        grad_logits = previous * (grad_q - (grad_q * previous).sum(axis=1, keepdims=True))
    grad_unary_scaled += grad_logits

    unary_weight_grad = float(xp.sum(grad_unary_scaled * problem.log_potentials))
    grad_unary = q.dtype.type(problem.unary_weight) * grad_unary_scaled
    if problem.probability_mask is not None:
        # d log(max(p, floor)) / dp = 1/p where p >= floor, 0 where it was clipped.
        floor = q.dtype.type(PROBABILITY_FLOOR)
        probabilities = xp.exp(problem.log_potentials)
        grad_unary = xp.where(
            problem.probability_mask, grad_unary / xp.maximum(probabilities, floor), 0
        ).astype(q.dtype)
    return CRFGradients(
        unary=problem.restore(grad_unary),
        weights=tuple(weight_grads),
        unary_weight=unary_weight_grad,
        compatibility=compat_grad,
    )


def _to_planar(xp, array, problem, dtype):
    """Inverse of ``problem.restore``: the caller's layout -> contiguous (N, L, H, W)."""
    planar = xp.moveaxis(array, problem.label_axis, 1 if problem.batched else 0)
    if not problem.batched:
        planar = planar[None]
    return _args.cast(xp, planar, dtype)
