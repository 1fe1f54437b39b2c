"""The image filters on signals (1-D) and volumes (3-D), against float64 oracles written from the
formulas of docs/design.md §2 in plain loops over the window's taps.

Arrays are tiny and the dtypes few: every new signature of the bilateral kernel is a compile.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pacarray.features import color_position_features
from pacarray.filters import bilateral_filter, joint_bilateral_upsample, normalized_convolution
from pacarray.filters_grad import bilateral_filter_vjp
from pacarray.pooling import detail_preserving_pool

from _examples import example_module
from _tiers import tiered

PAD_MODES = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def _extend(planar, radius, mode, cval):
    """(C, *S) extended by ``radius`` per axis; "exclude" pads with NaN (= no sample)."""
    widths = ((0, 0),) + tuple((r, r) for r in radius)
    if mode in PAD_MODES:
        return np.pad(planar, widths, mode=PAD_MODES[mode])
    return np.pad(planar, widths, mode="constant",
                  constant_values=np.nan if mode == "exclude" else cval)


def oracle_bilateral(image, guide, sigma, spacing, radius, window="disk", l1=False,
                     mode="mirror", cval=0.0, sigma_color=0.3):
    """y_p = sum_q G(p - q) R(g_p, g_q) x_q / sum_q G R over the window (design.md §2), with
    G = exp(-sum_i (o_i spacing_i / sigma_i)^2 / 2): (C, *S) image, (G, *S) guide, float64."""
    image = np.asarray(image, np.float64)
    guide = np.asarray(guide, np.float64)
    shape = image.shape[1:]
    ndim = len(shape)
    sigma = np.broadcast_to(np.asarray(sigma, float), (ndim,))
    spacing = np.broadcast_to(np.asarray(spacing, float), (ndim,))
    radius = tuple(np.broadcast_to(np.asarray(radius), (ndim,)).tolist())
    padded = _extend(image, radius, mode, cval)
    padded_guide = _extend(guide, radius, mode, cval)
    inside = ~np.isnan(_extend(np.zeros((1,) + shape), radius, mode, cval)[0])
    numerator = np.zeros_like(image)
    denominator = np.zeros(shape)
    for offset in itertools.product(*(range(-r, r + 1) for r in radius)):
        if window == "disk" and sum((o / r) ** 2 for o, r in zip(offset, radius) if r) > 1:
            continue
        window_slices = tuple(slice(r + o, r + o + n) for o, r, n in zip(offset, radius, shape))
        diff = padded_guide[(slice(None),) + window_slices] - guide
        d2 = np.abs(diff).sum(0) ** 2 if l1 else (diff**2).sum(0)
        spatial = sum((o * d / s) ** 2 for o, d, s in zip(offset, spacing, sigma))
        weight = np.exp(-spatial / 2 - d2 / (2 * sigma_color**2))
        here = inside[window_slices]
        weight = np.where(here, weight, 0.0)
        numerator += weight * np.where(here, padded[(slice(None),) + window_slices], 0.0)
        denominator += weight
    return numerator / denominator


def _planar(array, channel_axis):
    return array[None] if channel_axis is None else np.moveaxis(array, channel_axis, 0)


# ---------------------------------------------------------------------------------------------
# bilateral_filter in 1-D and 3-D


CASES = [
    # shape, channel_axis, dtype, mode, window, color_distance
    pytest.param((4, 5, 6), None, np.float32, "mirror", "disk", "l2", id="3d-grey-f32-mirror"),
    pytest.param((23,), None, np.float64, "reflect", "square", "l2", id="1d-grey-f64-reflect"),
    pytest.param((3, 6, 5, 2), -1, np.float64, "nearest", "disk", "l1", id="3d-rgb-f64-l1"),
    pytest.param((2, 19), 0, np.float32, "wrap", "disk", "l2", id="1d-2ch-f32-wrap"),
    pytest.param((5, 4, 6), None, np.float64, "constant", "square", "l2", id="3d-f64-const"),
    pytest.param((5, 4, 6), None, np.float64, "exclude", "disk", "l2", id="3d-f64-exclude"),
    pytest.param((23,), None, np.float32, "exclude", "disk", "l2", id="1d-f32-exclude"),
]


@pytest.mark.parametrize("shape, channel_axis, dtype, mode, window, distance",
                         tiered(CASES, quick={0, 1, 2}))
def test_bilateral_matches_oracle(shape, channel_axis, dtype, mode, window, distance, rng):
    image = rng.random(shape).astype(dtype)
    before = image.copy()
    radius = 2
    result = bilateral_filter(image, sigma_spatial=1.3, sigma_color=0.3,
                              radius=radius, window=window, color_distance=distance, mode=mode,
                              cval=0.25, channel_axis=channel_axis)
    planar = _planar(image, channel_axis)
    expected = oracle_bilateral(planar, planar, 1.3, 1.0, radius, window, distance == "l1",
                                mode, 0.25)
    assert result.shape == image.shape and result.dtype == dtype
    np.testing.assert_allclose(_planar(result, channel_axis), expected, rtol=0,
                               atol=TOLERANCE[dtype])
    np.testing.assert_array_equal(image, before)


def test_bilateral_joint_volume_with_guide(rng):
    image = rng.random((4, 5, 3))
    guide = rng.random((4, 5, 3, 2))    # channels last (channel_axis None)
    result = bilateral_filter(image, sigma_spatial=(0.8, 1.2, 1.0), sigma_color=0.3,
                              radius=(1, 2, 2), guide=guide, mode="reflect")
    expected = oracle_bilateral(image[None], np.moveaxis(guide, -1, 0), (0.8, 1.2, 1.0), 1.0,
                                (1, 2, 2), mode="reflect")[0]
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-10)


def test_bilateral_anisotropic_spacing_in_physical_units(rng):
    # A 0.2 x 0.1 x 0.1 um stack, sigma 0.15 um: default radius ceil(3 sigma / spacing).
    stack = rng.random((5, 7, 6)).astype(np.float32)
    spacing = (0.2, 0.1, 0.1)
    result = bilateral_filter(stack, sigma_spatial=0.15, sigma_color=0.3, spacing=spacing,
                              window="square")
    expected = oracle_bilateral(stack[None], stack[None], 0.15, spacing, (3, 5, 5),
                                window="square")[0]
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
    # The same filter in pixels: sigma per axis 0.15 / spacing.
    in_pixels = bilateral_filter(stack, sigma_spatial=(0.75, 1.5, 1.5), sigma_color=0.3,
                                 window="square")
    np.testing.assert_allclose(result, in_pixels, rtol=0, atol=1e-6)


@pytest.mark.parametrize("how", ["spacing", "radius"])
def test_volume_with_flat_window_is_the_image_filter_slice_by_slice(how, rng):
    volume = rng.random((3, 9, 8)).astype(np.float32)
    options = dict(sigma_spatial=1.5, sigma_color=0.3, mode="reflect")
    if how == "spacing":   # depth far away: its taps weigh exp(-(1000/1.5)^2/2) = 0
        result = bilateral_filter(volume, spacing=(1000.0, 1.0, 1.0), **options)
    else:
        result = bilateral_filter(volume, radius=(0, 5, 5), **options)
    for z in range(volume.shape[0]):
        np.testing.assert_allclose(result[z], bilateral_filter(volume[z], **options), rtol=0,
                                   atol=1e-6)


@pytest.mark.slow   # its strided rows are one more kernel signature (about 30 s of compile)
def test_long_signal_rows_match_the_oracle(rng):
    # More than 4 rows of 65536 samples: the signal is cut into rows for the threads.
    signal = rng.random(300_007)
    for mode in ("mirror", "exclude"):
        result = bilateral_filter(signal, sigma_spatial=3.0, sigma_color=0.3, radius=8,
                                  mode=mode)
        expected = oracle_bilateral(signal[None], signal[None], 3.0, 1.0, 8, mode=mode)[0]
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Gradient in 3-D


def test_bilateral_vjp_volume_by_finite_differences(rng):
    image = rng.random((3, 4, 4))
    guide = rng.random((3, 4, 4))
    upstream = rng.normal(size=image.shape)
    options = dict(sigma_color=0.4, radius=1, mode="reflect", spacing=(2.0, 1.0, 1.0))
    sigma = np.array([1.5, 1.0, 1.2])

    def loss(im, g, s):
        return float((bilateral_filter(im, guide=g, sigma_spatial=tuple(s), **options)
                      * upstream).sum())

    grads = bilateral_filter_vjp(upstream, image, guide=guide, sigma_spatial=tuple(sigma),
                                 **options)
    step = 1e-6
    arguments = [image, guide, sigma]
    for position, name in enumerate(("image", "guide", "sigma_spatial")):
        array = arguments[position]
        analytic = getattr(grads, name)
        assert analytic.shape == array.shape
        for index in ([(0, 0, 0), (1, 2, 3), (2, 3, 1)] if array.ndim == 3 else [(0,), (1,), (2,)]):
            plus, minus = array.copy(), array.copy()
            plus[index] += step
            minus[index] -= step
            numeric = (loss(*arguments[:position], plus, *arguments[position + 1:])
                       - loss(*arguments[:position], minus, *arguments[position + 1:])) / (2 * step)
            np.testing.assert_allclose(analytic[index], numeric, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# The other filters


def oracle_normalized_convolution(data, certainty, sigma, spacing, radius):
    """design.md §2: y = sum a c x / sum a c, c' = sum a c / sum a over in-image taps."""
    shape = data.shape
    ndim = len(shape)
    radius = tuple(np.broadcast_to(np.asarray(radius), (ndim,)).tolist())
    sigma = np.broadcast_to(np.asarray(sigma, float), (ndim,))
    spacing = np.broadcast_to(np.asarray(spacing, float), (ndim,))
    widths = tuple((r, r) for r in radius)
    padded_x = np.pad(data, widths)
    padded_c = np.pad(certainty, widths)
    inside = np.pad(np.ones(shape), widths)
    num, den, total = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for offset in itertools.product(*(range(-r, r + 1) for r in radius)):
        window = tuple(slice(r + o, r + o + n) for o, r, n in zip(offset, radius, shape))
        a = np.exp(-sum((o * d / s) ** 2 for o, d, s in zip(offset, spacing, sigma)) / 2)
        num += a * padded_c[window] * padded_x[window]
        den += a * padded_c[window]
        total += a * inside[window]
    return num / den, den / total


@pytest.mark.parametrize("shape", [(17,), (4, 5, 6)])
def test_normalized_convolution_signal_and_volume(shape, rng):
    data = rng.random(shape)
    certainty = (rng.random(shape) > 0.3).astype(float)
    spacing = (2.0,) + (1.0,) * (len(shape) - 1)
    filled, confidence = normalized_convolution(data, certainty, sigma_spatial=1.5,
                                                spacing=spacing)
    radius = tuple(int(np.ceil(3 * 1.5 / s)) for s in spacing)
    expected, expected_confidence = oracle_normalized_convolution(data, certainty, 1.5, spacing,
                                                                  radius)
    np.testing.assert_allclose(filled, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(confidence, expected_confidence, rtol=0, atol=1e-10)


def test_detail_preserving_pool_volume_and_signal(rng):
    volume = rng.random((5, 6, 7))
    pooled = detail_preserving_pool(volume, 3, alpha=0.5, lambda_=1.0, smooth=None, stride=2)
    assert pooled.shape == (2, 2, 3)
    # The window (first one) from the paper's formula with the raw centre pixel.
    window = volume[:3, :3, :3]
    w = 0.5 + ((window[1, 1, 1] - window) ** 2 + 1e-2**2) ** 0.5
    np.testing.assert_allclose(pooled[0, 0, 0], (w * window).sum() / w.sum(), rtol=1e-12)
    signal = rng.random(11)
    pooled = detail_preserving_pool(signal, 3, alpha=0.5, lambda_=1.0, smooth=None)
    w = 0.5 + ((signal[4] - signal[3:6]) ** 2 + 1e-2**2) ** 0.5
    np.testing.assert_allclose(pooled[1], (w * signal[3:6]).sum() / w.sum(), rtol=1e-12)


def test_color_position_features_volume():
    volume = np.zeros((2, 3, 4, 2))
    features = color_position_features(volume, sigma_spatial=2.0, sigma_color=0.1,
                                       channel_axis=-1, spacing=(3.0, 1.0, 1.0))
    assert features.shape == (1, 5, 2, 3, 4)
    assert features[0, 2, 1, 0, 0] == 1.5          # slice 1 * 3 um / 2 um
    assert features[0, 4, 0, 0, 3] == 1.5          # column 3 / 2
    signal = color_position_features(np.arange(4.0), sigma_spatial=2.0, sigma_color=1.0)
    np.testing.assert_array_equal(signal[0, 1], [0.0, 0.5, 1.0, 1.5])


def test_joint_bilateral_upsample_signal_and_volume(rng):
    guide = np.zeros((4, 8, 8))
    guide[..., 5:] = 1.0
    low = guide[1::4, 1::4, 1::4] * 10.0
    up = joint_bilateral_upsample(low, guide, sigma_color=0.1)
    assert up.shape == guide.shape
    np.testing.assert_allclose(up[:, :, :5], 0.0, atol=1e-9)
    np.testing.assert_allclose(up[:, :, 5:], 10.0, atol=1e-9)
    signal_guide = np.repeat([0.0, 1.0], 6)
    up = joint_bilateral_upsample(signal_guide[1::3] * 4.0, signal_guide, sigma_color=0.1)
    np.testing.assert_allclose(up, signal_guide * 4.0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("keywords, error, words", [
    (dict(spacing=(1.0, 1.0)), ValueError, ["spacing", "(3, 4, 5)"]),
    (dict(spacing=(1.0, 0.0, 1.0)), ValueError, ["spacing", "> 0"]),
    (dict(spacing=(1.0, np.nan, 1.0)), ValueError, ["spacing", "nan"]),
    (dict(spacing=-1.0), ValueError, ["spacing"]),
    (dict(spacing="1"), TypeError, ["spacing"]),
    (dict(sigma_spatial=(1.0, 1.0)), ValueError, ["sigma_spatial", "(3, 4, 5)"]),
    (dict(sigma_spatial=(1.0, -1.0, 1.0)), ValueError, ["sigma_spatial"]),
    (dict(sigma_spatial=(1.0, np.nan, 1.0)), ValueError, ["sigma_spatial"]),
    (dict(radius=(1, 1)), ValueError, ["radius", "(3, 4, 5)"]),
])
def test_bad_per_axis_arguments(keywords, error, words):
    options = dict(sigma_spatial=1.0, sigma_color=0.1) | keywords
    with pytest.raises(error) as caught:
        bilateral_filter(np.zeros((3, 4, 5)), **options)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("call", [
    lambda a: bilateral_filter(a, sigma_spatial=1.0, sigma_color=0.1),
    lambda a: bilateral_filter_vjp(a, a, sigma_spatial=1.0, sigma_color=0.1),
    lambda a: normalized_convolution(a, np.ones(a.shape), sigma_spatial=1.0),
    lambda a: detail_preserving_pool(a, 1, alpha=1.0, lambda_=1.0),
    lambda a: color_position_features(a, sigma_spatial=1.0, sigma_color=1.0),
])
def test_four_spatial_axes_are_rejected(call):
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2\)") as caught:
        call(np.zeros((2, 2, 2, 2)))
    assert "3-D" in str(caught.value)
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2, 2\)"):
        call(np.zeros((2, 2, 2, 2, 2)))


def test_guide_of_the_wrong_rank_is_rejected():
    with pytest.raises(ValueError, match=r"guide.*\(3, 4\)"):
        bilateral_filter(np.zeros((2, 3, 4)), sigma_spatial=1.0, sigma_color=0.1,
                         guide=np.zeros((3, 4)))


def test_volume_slice_example_draws_and_3d_beats_slices(tmp_path):
    """docs/examples/volume_slice.py (the picture of docs/guide/volumes.md): the 3-D filter,
    which also averages across slices, is closer to the clean stack than the 2-D filter applied
    slice by slice, and both are far closer than the noisy stack."""
    pytest.importorskip("matplotlib")
    with example_module("volume_slice.py") as module:
        errors = module.main(str(tmp_path / "slice.png"))
    assert (tmp_path / "slice.png").stat().st_size > 10_000
    assert errors["3-D volume"] < errors["2-D, slice by slice"] < 0.5 * errors["noisy"]
