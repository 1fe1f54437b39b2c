"""Mean-field machinery of PAC-CRF: the update loop, its backward pass and their building blocks.

:mod:`pacarray.crf` validates the arguments and builds a :class:`MeanField`; everything here
works on the validated ``(N, L, H, W)`` arrays in their array namespace. The per-pixel work goes
to the CRF entry points of the backend module that the front end picked (``docs/design.md`` §3):

* ``crf_softmax(logits)``: softmax over the labels;
* ``crf_step(unary, q, guide, terms, extra, compatibility, want_logits)``: one whole update for
  the full-resolution terms (their messages, the blurred terms' sum ``extra``, the compatibility
  and the softmax);
* ``crf_add_messages(q, guide, spatial, dilation, scale, out)``: ``out += scale * M q`` for one
  term on its own grid (blurred terms, the backward pass);
* ``crf_add_adjoint(grad, q, guide, spatial, dilation, scale, out)``: ``out += scale * M^T
  grad``;
* ``crf_prepare(unary, guide, terms)``: what every ``crf_step`` of one call then takes as its
  ``terms`` (the CPU backend computes the terms' weights there once, when they fit its memory
  budget, rather than at every step; the generic implementation returns ``terms``).

The blurred terms change grids through two more entry points (the generic ones are this
module's array-namespace functions):

* ``crf_block_mean(q, factor)``: :func:`block_mean` of ``(N, L, H, W)`` marginals;
* ``crf_upsample_add(coarse, weights, rows, cols, out)``: :func:`upsample_add`.

The CPU backend runs them with the Numba kernels of ``pacarray._cpu._crf_kernels``; the others
with the generic implementation of ``pacarray._generic.crf`` on ``pac_pool`` and its gradient.
This module decides what is computed (blur, upsampling, the order of the sums, the chain rule),
never how a backend computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _palette


@dataclass
class Term:
    """A pairwise term resolved against the inputs: arrays on the right device and dtype."""

    weight: float
    guide: object  # (N, F, h, w) C-contiguous on the term's grid, or None (no features)
    spatial: object  # (kh, kw) spatial weights, centre 0
    dilation: tuple[int, int]
    blur: int
    # Blurred terms only: the full-resolution features that guide the upsampling (None: plain
    # bilinear) and a hashable key; terms of one blur with equal keys share their upsampling.
    fine_guide: object = None
    group: object = None


@dataclass
class MeanField:
    """The inference problem as the updates see it."""

    module: object  # backend module: the CRF entry points
    xp: object  # its array namespace
    unary: object  # unary_weight * log-potentials, C-contiguous (N, L, H, W)
    terms: list  # of Term
    compatibility: object  # (L, L), or None for Potts
    num_steps: int
    upsampling: dict = field(default_factory=dict)  # (blur, group) -> upsample_weights(...)


# --------------------------------------------------------------------------------------------
# Coarse grids of the blurred terms


def block_mean(xp, array, factor):
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


def block_mean_adjoint(xp, grad_low, height, width, factor):
    """Adjoint of :func:`block_mean`: each pixel gets its block's gradient / block size."""
    scaled = grad_low / _block_counts(xp, height, width, factor, grad_low.dtype)
    spread = xp.repeat(xp.repeat(scaled, factor, axis=-2), factor, axis=-1)
    return xp.ascontiguousarray(spread[..., :height, :width])


def upsample(xp, array, shape, factor):
    """Bilinear upsampling of the last two axes to ``shape`` (coarse cells at block centres)."""
    for axis, size_out in ((-2, shape[0]), (-1, shape[1])):
        lo, hi, t = _palette.interpolation(size_out, array.shape[axis], factor)
        t = xp.asarray(t.astype(array.dtype))
        if axis == -2:
            t = t[:, None]
        low = xp.take(array, xp.asarray(lo), axis=axis)
        high = xp.take(array, xp.asarray(hi), axis=axis)
        array = low + t * (high - low)
    return array


#: Added to each coarse cell's colour affinity in :func:`upsample_weights`, so that a pixel
#: unlike all four of its cells falls back to plain bilinear interpolation.
UPSAMPLE_FLOOR = 1e-3


def upsample_weights(xp, fine_guide, coarse_guide, factor, shape, dtype):
    """Joint-bilateral upsampling of a blurred term: ``(weights, rows, cols)``.

    Pixel ``i`` takes from each of the four coarse cells ``c`` that bilinear interpolation
    uses (:func:`upsample`) the share ``b_ic (exp(-1/2 |f_i - g_c|**2) + UPSAMPLE_FLOOR)``,
    normalized to sum to 1, where ``b_ic`` is the bilinear weight, ``f`` the full-resolution
    features (unit bandwidth) and ``g`` the coarse ones (block means): a pixel near an edge
    takes the message of the cells of its own colour rather than a mix across the edge
    (``docs/design.md`` §2). Without features (``fine_guide`` None) this is :func:`upsample`.

    Returns ``weights`` ``(N, 4, H, W)`` of ``dtype`` (corners in the order (top, left),
    (top, right), (bottom, left), (bottom, right)), ``rows`` ``(2, H)`` and ``cols``
    ``(2, W)`` (NumPy int64) the coarse rows / columns of the top / bottom and left / right
    cells. ``shape`` is ``(N, H, W)``.
    """
    batch, height, width = shape
    low_h, low_w = -(-height // factor), -(-width // factor)
    y_lo, y_hi, ty = _palette.interpolation(height, low_h, factor)
    x_lo, x_hi, tx = _palette.interpolation(width, low_w, factor)
    corners = []
    for rows, row_weight in ((y_lo, 1 - ty), (y_hi, ty)):
        for cols, col_weight in ((x_lo, 1 - tx), (x_hi, tx)):
            bilinear = xp.asarray(np.outer(row_weight, col_weight).astype(dtype))
            if fine_guide is None:
                corners.append(xp.broadcast_to(bilinear, (batch, height, width)))
                continue
            cell = xp.take(xp.take(coarse_guide, xp.asarray(rows), axis=2), xp.asarray(cols),
                           axis=3)
            distance = ((fine_guide - cell) ** 2).sum(axis=1)
            corners.append(bilinear * (xp.exp(dtype.type(-0.5) * distance)
                                       + dtype.type(UPSAMPLE_FLOOR)))
    weights = xp.stack(corners, axis=1)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return (xp.ascontiguousarray(weights.astype(dtype, copy=False)),
            np.stack([y_lo, y_hi]).astype(np.int64), np.stack([x_lo, x_hi]).astype(np.int64))


def upsample_add(xp, coarse, weights, rows, cols, out):
    """``out[n, l, y, x] += sum_k weights[n, k, y, x] coarse[n, l, rows[k//2, y], cols[k%2, x]]``
    (the weights and indices of :func:`upsample_weights`)."""
    for k in range(4):
        cell = xp.take(xp.take(coarse, xp.asarray(rows[k // 2]), axis=2),
                       xp.asarray(cols[k % 2]), axis=3)
        out += weights[:, k:k + 1] * cell
    return out


def upsample_add_adjoint(xp, grad, weights, rows, cols, low_shape):
    """Adjoint of :func:`upsample_add` in its ``coarse`` argument: ``(N, L, h, w)``."""
    batch, labels = grad.shape[:2]
    out = xp.zeros((batch, labels, *low_shape), grad.dtype)
    for k in range(4):
        spread = weights[:, k:k + 1] * grad
        by_row = xp.zeros((batch, labels, low_shape[0], grad.shape[3]), grad.dtype)
        xp.add.at(by_row, (slice(None), slice(None), xp.asarray(rows[k // 2])), spread)
        xp.add.at(out, (slice(None), slice(None), slice(None), xp.asarray(cols[k % 2])), by_row)
    return out


def _upsampling(field, term):
    """The :func:`upsample_weights` of a blurred term, computed once per call and group."""
    key = (term.blur, term.group)
    if key not in field.upsampling:
        unary = field.unary
        field.upsampling[key] = upsample_weights(
            field.xp, term.fine_guide, term.guide, term.blur,
            (unary.shape[0], *unary.shape[2:]), unary.dtype)
    return field.upsampling[key]


def _pool(field, q, factor):
    """Block means of the marginals (the backend's ``crf_block_mean``)."""
    return field.module.crf_block_mean(q, factor)


def _upsample_add(field, coarse, upsampling, out):
    """:func:`upsample_add` (the backend's ``crf_upsample_add``)."""
    field.module.crf_upsample_add(coarse, *upsampling, out)


# --------------------------------------------------------------------------------------------
# Messages of all terms and their adjoint


def pairwise_sum(field, q, weights, out):
    """``out = sum_k weights[k] * message_k(q)`` at full resolution (``out`` is overwritten).

    Terms of weight 0 are skipped. Blurred terms run on their coarse grid (the marginals are
    pooled once per blur factor); the coarse messages of the terms that share an upsampling
    are summed there and upsampled once (:func:`upsample_weights`).
    """
    xp, module = field.xp, field.module
    out[...] = 0
    pooled, coarse_sums = {}, {}
    for term, weight in zip(field.terms, weights):
        if weight == 0:
            continue
        if isinstance(term, _palette.PaletteGrid):
            _palette.add_messages(xp, module, term, q, weight, out)
            continue
        if term.blur == 1:
            module.crf_add_messages(q, term.guide, term.spatial, term.dilation, weight, out)
            continue
        if term.blur not in pooled:
            pooled[term.blur] = _pool(field, q, term.blur)
        coarse_q = pooled[term.blur]
        key = (term.blur, term.group)
        if key not in coarse_sums:
            coarse_sums[key] = (term, xp.zeros_like(coarse_q))
        module.crf_add_messages(coarse_q, term.guide, term.spatial, term.dilation,
                                weight * term.blur**2, coarse_sums[key][1])
    for term, coarse in coarse_sums.values():
        _upsample_add(field, coarse, _upsampling(field, term), out)
    return out


def pairwise_adjoint(field, grad, q, weights, out, weight_grads):
    """``out = sum_k weights[k] M_k^T grad``; ``weight_grads[k] += <q, M_k^T grad>``.

    ``q`` is the input of the forward messages. A blurred term is ``b**2 * Up o M o Mean``,
    whose adjoint is ``b**2 * Mean^T o M^T o Up^T`` (``Up`` the term's upsampling).
    """
    xp, module = field.xp, field.module
    out[...] = 0
    single = xp.empty_like(grad)
    pooled, coarse_grads = {}, {}
    for index, (term, weight) in enumerate(zip(field.terms, weights)):
        if isinstance(term, _palette.PaletteGrid):
            single[...] = 0
            _palette.add_adjoint(xp, module, term, grad, 1.0, single)
        elif term.blur == 1:
            single[...] = 0
            module.crf_add_adjoint(grad, q, term.guide, term.spatial, term.dilation, 1.0, single)
        else:
            if term.blur not in pooled:
                pooled[term.blur] = xp.ascontiguousarray(block_mean(xp, q, term.blur))
            coarse_q = pooled[term.blur]
            key = (term.blur, term.group)
            if key not in coarse_grads:
                coarse_grads[key] = xp.ascontiguousarray(upsample_add_adjoint(
                    xp, grad, *_upsampling(field, term), coarse_q.shape[2:]))
            coarse_grad = coarse_grads[key]
            coarse = xp.zeros_like(coarse_grad)
            module.crf_add_adjoint(coarse_grad, coarse_q, term.guide, term.spatial,
                                   term.dilation, float(term.blur**2), coarse)
            single[...] = block_mean_adjoint(xp, coarse, *grad.shape[2:], term.blur)
        weight_grads[index] += float(xp.sum(q * single))
        if weight != 0:
            out += q.dtype.type(weight) * single
    return out


def _full_resolution(term):
    """Whether ``crf_step`` computes the term's messages itself (a window term, not blurred);
    the others (blurred and palette terms) reach it summed in ``extra``."""
    return isinstance(term, Term) and term.blur == 1


def _step_terms(xp, terms):
    """The full-resolution terms as ``crf_step`` takes them: ``(guide, step_terms)``.

    ``guide`` stacks the features of every term that has some along axis 1 (``None`` when none
    has), once per call rather than once per step, each feature array once (terms that share
    one, such as appearance terms of one colour bandwidth, share its range); each step term is
    ``(weight, spatial, dilation, features)`` with ``features`` the ``(start, stop)`` range of
    its features in ``guide`` or ``None``. Terms of weight 0 are left out.
    """
    full = [t for t in terms if _full_resolution(t) and t.weight != 0]
    ranges, parts, start = {}, [], 0
    for term in full:
        if term.guide is not None and id(term.guide) not in ranges:
            ranges[id(term.guide)] = (start, start + term.guide.shape[1])
            start += term.guide.shape[1]
            parts.append(term.guide)
    if not parts:
        guide = None
    elif len(parts) == 1:
        guide = parts[0]
    else:
        guide = xp.ascontiguousarray(xp.concatenate(parts, axis=1))
    step_terms = [
        (term.weight, term.spatial, term.dilation,
         None if term.guide is None else ranges[id(term.guide)])
        for term in full
    ]
    return guide, tuple(step_terms)


# --------------------------------------------------------------------------------------------
# Forward and backward loops


def forward(field, keep_history=False, want_logits=False):
    """Run the updates; returns ``(Q, logits or None, history of Q or None)``.

    The logits are those of the last update (the scaled unary after 0 steps), when
    ``want_logits``; the history, when ``keep_history``, is ``[Q_0, ..., Q_num_steps]``.
    Per update: the blurred terms' messages on their coarse grids (``pairwise_sum``), then one
    ``crf_step`` for the full-resolution terms, the compatibility and the softmax.
    """
    xp, module, unary = field.xp, field.module, field.unary
    guide, step_terms = _step_terms(xp, field.terms)
    if field.num_steps > 0:
        step_terms = module.crf_prepare(unary, guide, step_terms)
    fused = _fused_palette(field, step_terms) if field.num_steps > 0 else None
    if fused is not None:
        # the first marginals and their splat into the palette term's grid in one pass
        q, state = module.crf_palette_start(fused, unary, step_terms, field.compatibility,
                                            keep=keep_history or want_logits)
    else:
        q = module.crf_softmax(unary)
    history = [q] if keep_history else None
    logits = unary if want_logits else None
    blurred = [0.0 if _full_resolution(t) else t.weight for t in field.terms]
    if fused is not None:
        spare = None  # the marginals of two steps back, whose memory the next step reuses
        for step in range(field.num_steps):
            last = step == field.num_steps - 1
            new_q, step_logits, state = module.crf_palette_step(
                unary, q, guide, step_terms, fused, state, field.compatibility,
                want_logits and last, not last, out=spare)
            spare = None if keep_history or step == 0 else q
            q = new_q
            if want_logits and last:
                logits = step_logits
            if keep_history:
                history.append(q)
        return q, logits, history
    extra = xp.empty_like(unary) if any(blurred) else None
    for step in range(field.num_steps):
        last = step == field.num_steps - 1
        if extra is not None:
            pairwise_sum(field, q, blurred, extra)
        q, step_logits = module.crf_step(unary, q, guide, step_terms, extra,
                                         field.compatibility, want_logits and last)
        if want_logits and last:
            logits = step_logits
        if keep_history:
            history.append(q)
    return q, logits, history


def _fused_palette(field, step_terms):
    """The one palette term that the backend's fused step takes (``crf_palette_step``), or
    None: the backend must have one, the data must be 2-D, no other term may need ``extra``
    (another palette term, a blurred term) and the window terms must be in a form it takes."""
    module = field.module
    if not hasattr(module, "crf_palette_step") or field.unary.ndim != 4:
        return None
    others = [t for t in field.terms if not _full_resolution(t) and t.weight != 0]
    if len(others) != 1 or not isinstance(others[0], _palette.PaletteGrid):
        return None
    return others[0] if module.crf_palette_fusable(step_terms) else None


def log_softmax(xp, logits):
    """Logarithm of the softmax over the label axis (axis 1), computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def _compat_apply(xp, compat, pairwise):
    """``out[n, l] = sum_l' compat[l, l'] pairwise[n, l']`` (one matrix product per image)."""
    batch, labels = pairwise.shape[:2]
    flat = pairwise.reshape(batch, labels, -1)
    return xp.matmul(compat, flat).reshape(pairwise.shape)


def backward(field, history, grad_output, log_output):
    """Pull ``grad_output`` back through the updates recorded in ``history``.

    ``grad_output`` is the gradient with respect to the last marginals (or their logarithm when
    ``log_output``), as ``(N, L, H, W)`` of their dtype. Returns ``(gradient with respect to
    the scaled unary, list of weight gradients, compatibility gradient or None)``.

    For a step ``Q_s = softmax(a_s)``, ``a_s = U - mu P_s``, ``P_s = sum_k w_k M_k Q_(s-1)``:
    ``dL/dw_k = -<mu^T dL/da_s, M_k Q_(s-1)>``, ``dL/dmu = -dL/da_s P_s^T`` and ``dL/dQ_(s-1) =
    -sum_k w_k M_k^T mu^T dL/da_s``. Potts computes ``a_s = U + P_s`` (the per-pixel constant
    cancels in the softmax), so there ``dL/dP_s = dL/da_s``.
    """
    xp = field.xp
    q = history[-1]
    if log_output:
        grad_logits = grad_output - q * grad_output.sum(axis=1, keepdims=True)
    else:
        grad_logits = q * (grad_output - (grad_output * q).sum(axis=1, keepdims=True))

    weights = [t.weight for t in field.terms]
    weight_grads = [0.0] * len(field.terms)
    compat = field.compatibility
    compat_grad = None if compat is None else xp.zeros_like(compat)
    grad_unary = xp.zeros_like(q)
    pairwise = xp.empty_like(q)
    grad_q = xp.empty_like(q)
    for step in range(field.num_steps, 0, -1):
        previous = history[step - 1]
        grad_unary += grad_logits
        if compat is None:
            grad_pairwise = grad_logits
        else:
            pairwise_sum(field, previous, weights, pairwise)
            batch, labels = q.shape[:2]
            compat_grad -= xp.einsum(
                "nai,nbi->ab", grad_logits.reshape(batch, labels, -1),
                pairwise.reshape(batch, labels, -1),
            )
            grad_pairwise = -_compat_apply(xp, compat.T, grad_logits)
        grad_pairwise = xp.ascontiguousarray(grad_pairwise)
        pairwise_adjoint(field, grad_pairwise, previous, weights, grad_q, weight_grads)
        grad_logits = previous * (grad_q - (grad_q * previous).sum(axis=1, keepdims=True))
    grad_unary += grad_logits
    return grad_unary, weight_grads, compat_grad
