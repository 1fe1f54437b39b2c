"""CPU backend: Numba kernels plus BLAS, with fixed explicit signatures and no validation.

The front end (``pacarray.kernels`` / ``pacarray.ops``) has already checked and converted every
argument: arrays are C-contiguous and share one float dtype.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from . import _numba_kernels as nk
from ._inputs import explicit_kernel, features, frozen, kernel_args
from .backward import conv_backward, kernel_backward, pool_backward, smooth_backward  # noqa: F401


def smooth(guide, weights):
    """Zero-padded same-size correlation of every (n, f) plane of ``guide`` with ``weights``."""
    return scipy.ndimage.correlate(guide, weights[None, None], mode="constant", cval=0.0)


def materialize_kernel(spec, kernel_size, k_stride, k_padding, dilation, out_shape):
    """K of shape (N, Fk, kh, kw, Ho, Wo) and validity (N, Fk, Ho, Wo) from a fused spec."""
    kh, kw = kernel_size
    batch = spec.guide.shape[0]
    dtype = spec.guide.dtype
    out = np.empty((batch, spec.fk_count, kh * kw, *out_shape), dtype)
    valid = np.empty((batch, spec.fk_count, *out_shape), np.bool_)
    nk.fill_kernel(
        *features(spec), *spec.guide_shape, kh, kw, *k_stride, *k_padding, *dilation,
        *kernel_args(spec), out, valid,
    )
    return out.reshape(batch, spec.fk_count, kh, kw, *out_shape), valid


def pool(x, tap_weight, spec, geometry, k_stride, k_padding, out_shape):
    """Direct kernel: ``y[n,c,o] = sum_t tap_weight[t] K[n,(c),t,o] x[n,c,src(o,t)]``."""
    explicit, use_explicit = explicit_kernel(spec, x.dtype)
    y = np.empty((x.shape[0], x.shape[1], *out_shape), x.dtype)
    nk.direct(
        frozen(x), frozen(tap_weight), explicit, use_explicit, *features(spec), *spec.guide_shape,
        *geometry.stride, *geometry.padding, *geometry.dilation, *k_stride, *k_padding,
        geometry.transposed, *kernel_args(spec), spec.fk_count, y,
    )
    return y


def conv(x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape):
    """``y[n,o,i] = sum_{c,t} weight_matrix[o, c*T+t] K[n,(c),t,i] x[n,c,src(i,t)]``."""
    kh, kw = geometry.kernel_size
    explicit, use_explicit = explicit_kernel(spec, x.dtype)
    y = np.empty((x.shape[0], weight_matrix.shape[0], *out_shape), x.dtype)
    nk.conv_rows(
        frozen(x), frozen(weight_matrix), explicit, use_explicit, *features(spec),
        *spec.guide_shape, kh, kw, *geometry.stride, *geometry.padding, *geometry.dilation,
        *k_stride, *k_padding, geometry.transposed, *kernel_args(spec), spec.fk_count, y,
    )
    return y
