"""Generic CRF entry points: mean-field messages and updates on ``pac_pool`` and its gradient.

Same signatures and results as the CPU backend's entry points (``pacarray._cpu``, listed in
:mod:`pacarray._mean_field`): the message of a term is one fused :func:`~pacarray.pac_pool` of
the marginals (the labels are its channels, the adaptive kernel is shared by them), so memory
stays O(labels x pixels) on any backend that runs the core operations. The arrays arrive
validated, C-contiguous and of one float dtype.
"""

from __future__ import annotations

from .._dispatch import namespace_of
from ..gradients import pac_pool_vjp
from ..ops import pac_pool


def _pool_arguments(guide, spatial, dilation):
    """``pac_pool``'s kernel size and options for a term's message ("same" padding)."""
    kernel_size = tuple(spatial.shape)
    padding = tuple(d * (k // 2) for k, d in zip(kernel_size, dilation))
    return kernel_size, dict(guide=guide, padding=padding, dilation=tuple(dilation),
                             spatial_weight=spatial)


def crf_add_messages(q, guide, spatial, dilation, scale, out):
    """``out += scale * M q``, ``M`` the message operator of one term: ``pac_pool`` of ``q``
    with ``guide`` (or None), ``spatial`` (centre 0) and ``dilation``."""
    kernel_size, options = _pool_arguments(guide, spatial, dilation)
    out += q.dtype.type(scale) * pac_pool(q, kernel_size, **options)


def crf_add_adjoint(grad, q, guide, spatial, dilation, scale, out):
    """``out += scale * M^T grad`` through the core gradient of ``pac_pool`` (``q`` is the
    forward input of ``M``)."""
    kernel_size, options = _pool_arguments(guide, spatial, dilation)
    adjoint = pac_pool_vjp(grad, q, kernel_size, **options, wrt="x").x
    out += grad.dtype.type(scale) * adjoint


def crf_prepare(unary, guide, terms):
    """What every ``crf_step`` of one call takes as its terms: here the terms themselves (each
    step's ``pac_pool`` computes the adaptive kernel it needs)."""
    return terms


def crf_block_mean(q, factor):
    """Block means of ``(N, L, H, W)`` marginals over ``factor x factor`` blocks (partial blocks:
    their pixels), a new C-contiguous ``(N, L, ceil(H / factor), ceil(W / factor))`` array."""
    from .._mean_field import block_mean

    xp = namespace_of(q)
    return xp.ascontiguousarray(block_mean(xp, q, factor))


def crf_upsample_add(coarse, weights, rows, cols, out):
    """``out +=`` the guided upsampling of ``coarse`` with the weights and indices of
    ``pacarray._mean_field.upsample_weights``."""
    from .._mean_field import upsample_add

    upsample_add(namespace_of(coarse), coarse, weights, rows, cols, out)


def crf_softmax(logits):
    """Softmax over the labels (axis 1) of ``(N, L, H, W)`` logits, in a new array."""
    xp = namespace_of(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    out = xp.exp(shifted)
    out /= out.sum(axis=1, keepdims=True)
    return out


def crf_step(unary, q, guide, terms, extra, compatibility, want_logits):
    """One mean-field update: returns ``(new Q, logits or None)``.

    ``terms`` are the full-resolution terms as ``(weight, spatial, dilation, features)``,
    ``features`` the ``(start, stop)`` range of the term's features in ``guide`` or None;
    ``extra`` is added to the weighted message sum ``P`` after them (or None). The logits are
    ``unary + P`` for Potts (``compatibility`` None) and ``unary - compatibility @ P`` otherwise.
    """
    xp = namespace_of(unary)
    pairwise = xp.zeros_like(unary)
    for weight, spatial, dilation, feature_range in terms:
        features = None if feature_range is None else guide[:, feature_range[0]:feature_range[1]]
        crf_add_messages(q, features, spatial, dilation, weight, pairwise)
    if extra is not None:
        pairwise += extra
    if compatibility is None:
        logits = unary + pairwise
    else:
        batch, labels = pairwise.shape[:2]
        messages = xp.matmul(compatibility, pairwise.reshape(batch, labels, -1))
        logits = unary - messages.reshape(pairwise.shape)
    return crf_softmax(logits), (logits if want_logits else None)
