"""Gradients of the bilateral filter (pacarray.filters_grad.bilateral_filter_vjp).

The forward in every finite-difference check is the public ``bilateral_filter`` itself (its
Numba fast path on these arrays), so the checks also cover the claim that the composition the
vjp differentiates is the filter; that claim is asserted directly as well.
"""

from __future__ import annotations

import numpy as np
import pytest

from pacarray._bilateral import unpad_adjoint
from pacarray._dispatch import generic_kernels
from pacarray.filters import bilateral_filter
from pacarray.filters_grad import BilateralGradients, bilateral_filter_vjp
from pacarray.testing import check_gradients, dot_product_test

from _tiers import tiered, tiered_values

MODES = ["reflect", "mirror", "nearest", "wrap", "constant", "exclude"]
NP_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}
FD_TOLERANCE = 1e-6
SHAPE = (7, 9)


def _check(inputs, wrt):
    """Finite differences through ``bilateral_filter``; returns the report after asserting."""
    report = check_gradients(bilateral_filter, bilateral_filter_vjp, inputs, wrt=wrt,
                             tolerance=FD_TOLERANCE)
    assert sorted(report.errors) == sorted(wrt)
    assert report.passed, str(report)
    # Every checked gradient is non-trivial: a vjp returning zeros cannot pass by accident.
    for name in wrt:
        assert any(abs(analytic) > 1e-8 for analytic, _ in report.values[name]), name
    return report


def _forward_matches(inputs, atol=1e-12):
    """The pac_pool composition the vjp differentiates (the generic entry point) equals
    bilateral_filter's dedicated CPU kernel."""
    expected = bilateral_filter(**inputs)
    with generic_kernels():
        actual = bilateral_filter(**inputs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


_MODE_WINDOW_GUIDE = [(mode, window, with_guide) for mode in MODES
                      for window in ("disk", "square") for with_guide in (False, True)]


@pytest.mark.parametrize(
    "mode, window, with_guide",
    tiered([pytest.param(*case, id="-".join(map(str, case))) for case in _MODE_WINDOW_GUIDE],
           quick=[_MODE_WINDOW_GUIDE.index(case) for case in
                  (("reflect", "disk", True), ("wrap", "square", False),
                   ("exclude", "disk", False))]),
)
def test_finite_differences_every_mode_window_guide(mode, window, with_guide):
    rng = np.random.default_rng([MODES.index(mode), window == "disk", with_guide])
    inputs = dict(image=rng.random(SHAPE + (3,)), sigma_spatial=1.3, sigma_color=0.4, radius=2,
                  window=window, mode=mode, cval=0.3, channel_axis=-1)
    wrt = ["image", "sigma_spatial", "sigma_color"]
    if with_guide:
        inputs["guide"] = rng.random(SHAPE + (2,))   # fewer channels than the image
        wrt.append("guide")
    _forward_matches(inputs)
    _check(inputs, wrt)


@pytest.mark.parametrize(
    "image_shape, channel_axis, guide_shape",
    tiered([pytest.param(*case) for case in [
        (SHAPE, None, None),                 # grayscale
        (SHAPE, None, SHAPE),                # grayscale, 2-D guide
        (SHAPE, None, SHAPE + (3,)),         # grayscale, guide channels last
        ((2,) + SHAPE, 0, (4,) + SHAPE),     # channels first, guide too
        ((7, 2, 9), 1, (7, 3, 9)),           # channels in the middle
        (SHAPE + (2,), -1, SHAPE),           # channels last, 2-D guide
    ]], quick=[2, 4]),
)
def test_finite_differences_channel_axis(image_shape, channel_axis, guide_shape):
    rng = np.random.default_rng(len(image_shape) * 10 + (channel_axis or 0))
    inputs = dict(image=rng.random(image_shape), sigma_spatial=0.9, sigma_color=0.5,
                  mode="wrap", channel_axis=channel_axis)   # default radius ceil(2.7) = 3
    wrt = ["image", "sigma_spatial", "sigma_color"]
    if guide_shape is not None:
        inputs["guide"] = rng.random(guide_shape)
        wrt.append("guide")
    _forward_matches(inputs)
    _check(inputs, wrt)
    grads = bilateral_filter_vjp(np.ones(image_shape), **inputs)
    assert grads.image.shape == image_shape
    if guide_shape is None:
        assert grads.guide is None
    else:
        assert grads.guide.shape == guide_shape


def test_channel_axis_moves_the_gradient_with_it():
    rng = np.random.default_rng(3)
    image, guide = rng.random(SHAPE + (3,)), rng.random(SHAPE + (2,))
    upstream = rng.standard_normal(SHAPE + (3,))
    options = dict(sigma_spatial=1.1, sigma_color=0.3, radius=2, mode="reflect")
    last = bilateral_filter_vjp(upstream, image, channel_axis=-1, guide=guide, **options)
    first = bilateral_filter_vjp(np.moveaxis(upstream, -1, 0), np.moveaxis(image, -1, 0),
                                 channel_axis=0, guide=np.moveaxis(guide, -1, 0), **options)
    np.testing.assert_allclose(np.moveaxis(first.image, 0, -1), last.image, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.moveaxis(first.guide, 0, -1), last.guide, rtol=0, atol=1e-13)
    np.testing.assert_allclose(first.sigma_spatial, last.sigma_spatial, rtol=1e-12)
    np.testing.assert_allclose(first.sigma_color, last.sigma_color, rtol=1e-12)


@pytest.mark.parametrize("mode", tiered_values(MODES, ["wrap", "mirror"]))
@pytest.mark.parametrize("shape", [(3, 4), (1, 6)])
def test_window_wider_than_the_image(mode, shape):
    # radius 5 > the image's sides: padded pixels wrap or reflect onto a source several times.
    rng = np.random.default_rng(shape[0])
    inputs = dict(image=rng.random(shape), sigma_spatial=2.0, sigma_color=0.6, radius=5,
                  window="square", mode=mode, cval=-0.2, guide=rng.random(shape))
    _forward_matches(inputs)
    _check(inputs, ["image", "guide", "sigma_spatial", "sigma_color"])


@pytest.mark.parametrize("mode", MODES)
def test_dot_product_in_the_image_with_a_fixed_guide(mode):
    # With a guide the filter is linear in the image: the adjoint must hold to rounding.
    rng = np.random.default_rng(MODES.index(mode))
    inputs = dict(image=rng.random(SHAPE + (2,)), guide=rng.random(SHAPE + (3,)),
                  sigma_spatial=1.5, sigma_color=0.5, radius=3, mode=mode, cval=0.0,
                  channel_axis=-1)
    report = dot_product_test(bilateral_filter, bilateral_filter_vjp, inputs, wrt="image",
                              tolerance=1e-12)
    assert report.passed, str(report)


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
@pytest.mark.parametrize("reach, size", [(2, 5), (4, 3), (6, 1)])
def test_border_adjoint_against_numpy_pad(mode, reach, size):
    rng = np.random.default_rng(reach * 7 + size)
    source = rng.standard_normal((2, size, size + 1))
    widths = ((0, 0), (reach, reach), (reach, reach))
    if mode == "constant":
        padded = np.pad(source, widths, mode="constant", constant_values=0.0)
    else:
        padded = np.pad(source, widths, mode=NP_PAD[mode])
    upstream = rng.standard_normal(padded.shape)
    adjoint = unpad_adjoint(np, upstream, reach, mode)
    assert adjoint.shape == source.shape
    np.testing.assert_allclose(np.vdot(adjoint, source), np.vdot(upstream, padded), rtol=1e-12)


def test_zero_radius_is_the_identity():
    rng = np.random.default_rng(5)
    image, guide = rng.random(SHAPE), rng.random(SHAPE)
    upstream = rng.standard_normal(SHAPE)
    grads = bilateral_filter_vjp(upstream, image, sigma_spatial=1.0, sigma_color=0.2, radius=0,
                                 guide=guide)
    np.testing.assert_array_equal(grads.image, upstream)
    assert not np.any(grads.guide)
    assert float(grads.sigma_spatial) == 0.0 and float(grads.sigma_color) == 0.0


def test_l1_single_channel_equals_l2_and_multichannel_raises():
    rng = np.random.default_rng(6)
    image = rng.random(SHAPE)
    upstream = rng.standard_normal(SHAPE)
    options = dict(sigma_spatial=1.2, sigma_color=0.3, radius=2, mode="mirror")
    l1 = bilateral_filter_vjp(upstream, image, color_distance="l1", **options)
    l2 = bilateral_filter_vjp(upstream, image, color_distance="l2", **options)
    for field in BilateralGradients._fields:
        if getattr(l2, field) is not None:
            np.testing.assert_allclose(getattr(l1, field), getattr(l2, field), rtol=1e-12,
                                       atol=1e-15)
    _check(dict(image=image, color_distance="l1", **options),
           ["image", "sigma_spatial", "sigma_color"])
    with pytest.raises(NotImplementedError, match="color_distance='l1'.*3 guide channels"):
        bilateral_filter_vjp(rng.random(SHAPE), image, color_distance="l1",
                             guide=rng.random(SHAPE + (3,)), **options)
    with pytest.raises(NotImplementedError, match="l2"):
        bilateral_filter_vjp(rng.random(SHAPE + (2,)), rng.random(SHAPE + (2,)),
                             color_distance="l1", channel_axis=-1, **options)


def _relative_difference(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected))) / float(np.max(np.abs(expected)))


@pytest.mark.parametrize("mode", ["mirror", "constant", "exclude"])
def test_float32_agrees_with_float64(mode):
    rng = np.random.default_rng(MODES.index(mode))
    image, guide = rng.random(SHAPE + (3,)), rng.random(SHAPE + (2,))
    upstream = rng.standard_normal(SHAPE + (3,))
    options = dict(sigma_spatial=1.3, sigma_color=0.4, radius=3, mode=mode, cval=0.3,
                   channel_axis=-1)
    for guide64 in (None, guide):
        guide32 = None if guide64 is None else guide64.astype(np.float32)
        single = bilateral_filter_vjp(upstream.astype(np.float32), image.astype(np.float32),
                                      guide=guide32, **options)
        double = bilateral_filter_vjp(upstream, image, guide=guide64, **options)
        for field in BilateralGradients._fields:
            if guide64 is None and field == "guide":
                assert single.guide is None and double.guide is None
                continue
            assert getattr(single, field).dtype == np.float32, field
            assert getattr(double, field).dtype == np.float64, field
            error = _relative_difference(getattr(single, field), getattr(double, field))
            assert error <= 1e-4, (field, error)
        _forward_matches(dict(image=image.astype(np.float32), guide=guide32, **options),
                         atol=1e-6)


def test_gradient_dtypes_follow_each_input():
    rng = np.random.default_rng(8)
    options = dict(sigma_spatial=1.0, sigma_color=30.0, radius=2)
    image8 = rng.integers(0, 256, SHAPE).astype(np.uint8)
    guide64 = rng.random(SHAPE) * 255
    upstream = rng.standard_normal(SHAPE)
    grads = bilateral_filter_vjp(upstream, image8, guide=guide64, **options)
    # uint8 is computed in float32; with a float64 guide the computation is float64.
    assert grads.image.dtype == np.float32 and grads.guide.dtype == np.float64
    assert grads.sigma_color.dtype == np.float64 and grads.sigma_color.shape == ()
    reference = bilateral_filter_vjp(upstream, image8.astype(np.float64), guide=guide64,
                                     **options)
    np.testing.assert_allclose(grads.image, reference.image, rtol=1e-6)
    np.testing.assert_array_equal(grads.guide, reference.guide)
    half = bilateral_filter_vjp(upstream.astype(np.float16), image8.astype(np.float16),
                                **options)
    assert half.image.dtype == np.float32 and half.sigma_spatial.dtype == np.float32


def test_inputs_are_never_modified():
    rng = np.random.default_rng(9)
    image, guide = rng.random(SHAPE + (2,)), rng.random(SHAPE + (3,))
    upstream = rng.standard_normal(SHAPE + (2,))
    copies = [a.copy() for a in (image, guide, upstream)]
    for array in (image, guide, upstream):
        array.setflags(write=False)   # a write would raise
    for mode in ("exclude", "wrap", "constant"):
        grads = bilateral_filter_vjp(upstream, image, sigma_spatial=1.0, sigma_color=0.5,
                                     mode=mode, channel_axis=-1, guide=guide)
        assert grads.image is not upstream and not np.shares_memory(grads.image, upstream)
    for array, copy in zip((image, guide, upstream), copies):
        np.testing.assert_array_equal(array, copy)


def test_bad_grad_output():
    rng = np.random.default_rng(10)
    image = rng.random(SHAPE + (3,))
    options = dict(sigma_spatial=1.0, sigma_color=0.5, channel_axis=-1)
    with pytest.raises(ValueError, match=r"grad_output.*\(7, 9, 3\).*\(3, 7, 9\)"):
        bilateral_filter_vjp(np.ones((3,) + SHAPE), image, **options)
    with pytest.raises(ValueError, match="grad_output"):
        bilateral_filter_vjp(np.ones(SHAPE), image, **options)
    with pytest.raises(TypeError, match="grad_output"):
        bilateral_filter_vjp(np.ones(image.shape, dtype=np.int64), image, **options)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(sigma_color=0.0), ValueError, "sigma_color"),
        (dict(sigma_spatial=np.nan), ValueError, "sigma_spatial"),
        (dict(mode="clamp"), ValueError, "mode"),
        (dict(window="round"), ValueError, "window"),
        (dict(radius=1000), ValueError, "radius"),
        (dict(channel_axis=3), ValueError, "channel_axis"),
        (dict(guide=np.ones((5, 5))), ValueError, "guide"),
    ],
)
def test_forward_errors_are_the_filters(change, error, match):
    image = np.random.default_rng(11).random(SHAPE + (3,))
    options = dict(sigma_spatial=1.0, sigma_color=0.5, channel_axis=-1) | change
    with pytest.raises(error, match=match):
        bilateral_filter(image, **options)
    with pytest.raises(error, match=match):
        bilateral_filter_vjp(np.ones(image.shape), image, **options)
