"""Spatial rank 1 and 3 of the core ops against their 2-D results on singleton axes.

A volume ``(N, C, 1, H, W)`` with a ``(1, kh, kw)`` kernel, and a signal ``(N, C, L)`` seen as
an image ``(N, C, 1, L)`` with a ``(1, k)`` kernel, are the 2-D operation: every op, its
gradient and the explicit kernel must agree exactly (the CPU kernels run the same arithmetic
for all ranks, ``docs/design.md`` §7). The N-D oracle comparisons are in
``test_volumes_ops.py``; here also the rank-mismatch errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from pacarray import (
    Gaussian,
    InversePower,
    pac_conv,
    pac_conv_transpose,
    pac_kernel,
    pac_pool,
    spatial_window,
)
from pacarray.gradients import (
    pac_conv_transpose_vjp,
    pac_conv_vjp,
    pac_kernel_vjp,
    pac_pool_vjp,
)

OPTIONS = {
    "gaussian-kernel": dict(family=Gaussian(), normalize="kernel", window=True),
    "inverse-mask": dict(family=InversePower(0.5, -1.0, asymmetric=True), normalize="mask_kernel",
                         mask=True, smooth=True),
    "channel-wise": dict(family=InversePower((0.2, 0.5), (-1.0, 1.0)), channel_wise=True,
                         normalize="mask", mask=True, window=True),
}


def _insert(array, axis):
    """``array`` with a singleton axis inserted at ``axis`` (a view)."""
    return np.expand_dims(array, axis)


def _arrays(rng, spatial, channels=2, features=2):
    x = rng.standard_normal((2, channels, *spatial))
    guide = rng.standard_normal((2, features, *spatial))
    mask = rng.random((2, 1, *spatial))
    return x, guide, mask


def _options(name, rng, kernel_size, guide, mask):
    spec = OPTIONS[name]
    kwargs = {"family": spec["family"], "normalize": spec.get("normalize")}
    if spec.get("channel_wise"):
        kwargs["channel_wise"] = True
    if spec.get("window"):
        kwargs["spatial_weight"] = spatial_window(kernel_size, 1.5, window="disk")
    if spec.get("mask"):
        kwargs["mask"] = mask
    if spec.get("smooth"):
        kwargs["smooth"] = rng.random((3,) * (guide.ndim - 2)) + 0.1
    return kwargs


def _lift(kwargs, axis):
    """The same keywords for the operation with a singleton spatial axis at ``axis`` of the
    data (``axis - 2`` of the spatial arrays)."""
    lifted = dict(kwargs)
    for name in ("mask", "guide"):
        if lifted.get(name) is not None:
            lifted[name] = _insert(lifted[name], axis)
    for name in ("spatial_weight", "smooth"):
        if lifted.get(name) is not None:
            lifted[name] = _insert(lifted[name], axis - 2)
    return lifted


def _same(a, b):
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def _same_grads(low, high, axis, kernel_axes=None):
    for field in low._fields:
        a, b = getattr(low, field), getattr(high, field)
        assert (a is None) == (b is None), field
        if a is None:
            continue
        a = np.asarray(a)
        if b.ndim == a.ndim + 1:
            b = np.squeeze(b, axis=axis if field not in ("spatial_weight", "smooth")
                           else axis - 2)
        elif b.ndim == a.ndim + 2:  # explicit kernel: a tap axis and an output axis
            b = np.squeeze(b, axis=kernel_axes)
        _same(a, b)


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("low_rank", [1, 2])
def test_singleton_axis_equals_lower_rank(name, low_rank):
    """Rank r+1 with a singleton leading spatial axis (1 tap) equals rank r, bit for bit."""
    rng = np.random.default_rng(low_rank)
    spatial = (9,) if low_rank == 1 else (5, 6)
    k = (3,) * low_rank
    axis = 2  # the new leading spatial axis
    x, guide, mask = _arrays(rng, spatial)
    kw_low = _options(name, rng, k, guide, mask)
    kw_low["guide"] = guide
    kw_high = _lift(kw_low, axis)
    geometry_low = dict(stride=(2,) * low_rank, padding=(1,) * low_rank, dilation=1)
    geometry_high = dict(stride=(1,) + (2,) * low_rank, padding=(0,) + (1,) * low_rank,
                         dilation=1)
    x_high = _insert(x, axis)

    y = pac_pool(x, k, **geometry_low, **kw_low)
    y_high = pac_pool(x_high, (1, *k), **geometry_high, **kw_high)
    _same(y, np.squeeze(y_high, axis))
    g = rng.standard_normal(y.shape)
    _same_grads(pac_pool_vjp(g, x, k, **geometry_low, **kw_low),
                pac_pool_vjp(_insert(g, axis), x_high, (1, *k), **geometry_high, **kw_high),
                axis)

    weight = rng.standard_normal((3, 2, *k))
    bias = rng.standard_normal(3)
    y = pac_conv(x, weight, bias, **geometry_low, **kw_low)
    y_high = pac_conv(x_high, _insert(weight, axis), bias, **geometry_high, **kw_high)
    _same(y, np.squeeze(y_high, axis))
    g = rng.standard_normal(y.shape)
    _same_grads(pac_conv_vjp(g, x, weight, bias, **geometry_low, **kw_low),
                pac_conv_vjp(_insert(g, axis), x_high, _insert(weight, axis), bias,
                             **geometry_high, **kw_high), axis)

    guide_kw = {key: value for key, value in kw_low.items() if key != "guide"}
    guide_kw_high = {key: value for key, value in kw_high.items() if key != "guide"}
    K = pac_kernel(guide, k, **geometry_low, **guide_kw)
    K_high = pac_kernel(_insert(guide, axis), (1, *k), **geometry_high, **guide_kw_high)
    kernel_axes = (2, 3 + low_rank)  # the singleton tap axis and output axis
    _same(K, np.squeeze(K_high, kernel_axes))
    gK = rng.standard_normal(K.shape)
    _same_grads(pac_kernel_vjp(gK, guide, k, **geometry_low, **guide_kw),
                pac_kernel_vjp(np.expand_dims(gK, kernel_axes), _insert(guide, axis), (1, *k),
                               **geometry_high, **guide_kw_high), axis)
    # explicit K in conv
    y = pac_conv(x, weight, kernel=K, **geometry_low)
    y_high = pac_conv(x_high, _insert(weight, axis), kernel=K_high, **geometry_high)
    _same(y, np.squeeze(y_high, axis))
    g = rng.standard_normal(y.shape)
    _same_grads(pac_conv_vjp(g, x, weight, kernel=K, **geometry_low),
                pac_conv_vjp(_insert(g, axis), x_high, _insert(weight, axis), kernel=K_high,
                             **geometry_high), axis, kernel_axes)


@pytest.mark.parametrize("low_rank", [1, 2])
def test_transposed_singleton_axis_equals_lower_rank(low_rank):
    rng = np.random.default_rng(10 + low_rank)
    small = (4,) if low_rank == 1 else (3, 4)
    k = (3,) * low_rank
    axis = 2
    x = rng.standard_normal((2, 2, *small))
    geometry_low = dict(stride=2, padding=1, output_padding=1)
    geometry_high = dict(stride=(1,) + (2,) * low_rank, padding=(0,) + (1,) * low_rank,
                         output_padding=(0,) + (1,) * low_rank)
    out = tuple(2 * s for s in small)
    guide = rng.standard_normal((2, 2, *out))
    mask = rng.random((2, 1, *out))
    kw_low = dict(guide=guide, mask=mask, normalize="mask_kernel",
                  spatial_weight=spatial_window(k, 1.0))
    kw_high = _lift(kw_low, axis)
    for weight in (rng.standard_normal((2, 3, *k)), rng.standard_normal((1, 1, *k))):
        y = pac_conv_transpose(x, weight, **geometry_low, **kw_low)
        y_high = pac_conv_transpose(_insert(x, axis), _insert(weight, axis), **geometry_high,
                                    **kw_high)
        _same(y, np.squeeze(y_high, axis))
        g = rng.standard_normal(y.shape)
        _same_grads(pac_conv_transpose_vjp(g, x, weight, **geometry_low, **kw_low),
                    pac_conv_transpose_vjp(_insert(g, axis), _insert(x, axis),
                                           _insert(weight, axis), **geometry_high, **kw_high),
                    axis)


def test_depth_kernel_is_a_sum_over_planes():
    """A flat 3-D box pooled without a guide sums its planes: checked against NumPy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 4, 5, 6))
    y = pac_pool(x, (3, 1, 1), padding=(1, 0, 0))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))
    expected = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_spatial_window_ranks():
    ball = spatial_window((5, 5, 5), window="disk")
    assert ball.shape == (5, 5, 5)
    assert ball[2, 2, 2] == 1 and ball[0, 0, 0] == 0 and ball[0, 2, 2] == 1
    assert ball.sum() == 33  # lattice points inside the radius-2 ball
    segment = spatial_window((5,), 2.0, window="disk")
    np.testing.assert_allclose(segment, np.exp(-np.arange(-2, 3) ** 2 / 8.0))
    anisotropic = spatial_window((3, 3, 3), sigma=(1.0, 2.0, 4.0), dilation=(1, 2, 1))
    assert anisotropic[0, 1, 1] == pytest.approx(np.exp(-0.5))
    assert anisotropic[1, 0, 1] == pytest.approx(np.exp(-4 / 8.0))
    assert anisotropic[1, 1, 0] == pytest.approx(np.exp(-1 / 32.0))
    np.testing.assert_array_equal(spatial_window(3, 1.0), spatial_window((3, 3), (1.0, 1.0)))
    with pytest.raises(ValueError, match="sigma"):
        spatial_window((3, 3, 3), sigma=(1.0, 2.0))
    with pytest.raises(ValueError, match="kernel_size"):
        spatial_window((3, 3, 3, 3))


def test_rank_mismatch_names_the_parameter():
    rng = np.random.default_rng(4)
    x3 = rng.standard_normal((1, 2, 3, 4, 5))
    x2 = x3[:, :, 0]
    with pytest.raises(ValueError, match=r"guide.*\(1, 2, 4, 5\)"):
        pac_pool(x3, 3, guide=x2)
    with pytest.raises(ValueError, match=r"mask.*\(1, 1, 4, 5\)"):
        pac_pool(x3, 3, guide=x3, mask=np.ones((1, 1, 4, 5)))
    with pytest.raises(ValueError, match=r"weight.*\(2, 2, 3, 3\)"):
        pac_conv(x3, np.ones((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="kernel_size"):
        pac_pool(x3, (3, 3))
    with pytest.raises(ValueError, match="stride"):
        pac_pool(x2[:, :, 0], 3, stride=(1, 1))
    with pytest.raises(ValueError, match=r"spatial_weight.*\(3, 3\)"):
        pac_pool(x3, 3, spatial_weight=np.ones((3, 3)))
    with pytest.raises(ValueError, match="smooth"):
        pac_pool(x3, 3, guide=x3, smooth=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"kernel.*\(1, 1, 3, 3, 4, 5\)"):
        pac_pool(x3, 3, padding=1, kernel=np.ones((1, 1, 3, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"x.*\(1, 2, 3, 4, 5, 6\)"):
        pac_pool(np.ones((1, 2, 3, 4, 5, 6)), 3)
    with pytest.raises(ValueError, match=r"guide.*\(1, 2\)"):
        pac_kernel(np.ones((1, 2)), 3)
