"""Tests of pacarray.pooling.detail_preserving_pool against the float64 oracle and the
properties of Saeedan et al. (2018)."""

from __future__ import annotations

import numpy as np
import pytest
import reference

from pacarray.pooling import detail_preserving_pool


def _oracle(planar, size, stride, alpha, lambda_, eps, asymmetric, smooth):
    x = planar[None].astype(np.float64)
    kernel, _ = reference.ref_kernel(x, size, stride=stride, family="inverse_power",
                                     alpha=alpha, lambda_=lambda_, eps=eps,
                                     asymmetric=asymmetric, smooth=smooth, channel_wise=True,
                                     normalize="kernel")
    return reference.ref_pool(x, kernel, stride=stride)[0]


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("smooth", ["gaussian", None, ("average", 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_oracle(asymmetric, smooth, dtype, rng):
    image = rng.random((9, 11, 2)).astype(dtype)
    out = detail_preserving_pool(image, 3, alpha=0.3, lambda_=1.5, asymmetric=asymmetric,
                                 smooth=smooth, channel_axis=-1)
    expected = _oracle(np.moveaxis(image, -1, 0), 3, 3, 0.3, 1.5, 1e-2, asymmetric, smooth)
    assert out.shape == (3, 3, 2) and out.dtype == dtype
    np.testing.assert_allclose(np.moveaxis(out, -1, 0), expected, rtol=0,
                               atol=2e-6 if dtype == np.float32 else 1e-12)


def test_per_channel_parameters_and_stride(rng):
    image = rng.random((2, 10, 7))
    out = detail_preserving_pool(image, (3, 5), alpha=(0.1, 2.0), lambda_=(2.0, -1.0),
                                 stride=(2, 1), eps=0.05, channel_axis=0)
    expected = _oracle(image, (3, 5), (2, 1), np.array([[0.1, 2.0]]),
                       np.array([[2.0, -1.0]]), 0.05, False, "gaussian")
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_lambda_zero_is_average_pooling(rng):
    image = rng.random((12, 9))
    out = detail_preserving_pool(image, 3, alpha=0.7, lambda_=0.0)
    blocks = image.reshape(4, 3, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, rtol=0, atol=1e-14)


def _dots():
    image = np.full((9, 9), 0.5)
    image[1, 1] = 1.0  # bright dot in cell (0, 0)
    image[4, 7] = 0.0  # dark dot in cell (1, 2)
    return image


def test_symmetric_keeps_bright_and_dark_dots():
    image = _dots()
    average = detail_preserving_pool(image, 3, alpha=1.0, lambda_=0.0)
    detail = detail_preserving_pool(image, 3, alpha=0.0, lambda_=2.0)
    assert detail[0, 0] > average[0, 0] + 0.1  # the bright dot stays bright
    assert detail[1, 2] < average[1, 2] - 0.1  # the dark dot stays dark
    np.testing.assert_allclose(detail[2], 0.5)  # flat cells are unchanged


def test_asymmetric_keeps_dark_dots_only_and_negation_flips_it():
    image = _dots()
    average = detail_preserving_pool(image, 3, alpha=1.0, lambda_=0.0)
    dark = detail_preserving_pool(image, 3, alpha=0.0, lambda_=2.0, asymmetric=True)
    # max(0, smoothed centre - neighbour): darker neighbours weigh more.
    assert dark[1, 2] < average[1, 2] - 0.1
    assert dark[0, 0] < average[0, 0]  # the bright dot is pooled away, below the mean
    bright = -detail_preserving_pool(-image, 3, alpha=0.0, lambda_=2.0, asymmetric=True)
    assert bright[0, 0] > average[0, 0] + 0.1
    assert bright[1, 2] > average[1, 2]


def test_integer_image_and_input_unchanged():
    image = (np.arange(36).reshape(6, 6) % 7).astype(np.uint8)
    before = image.copy()
    out = detail_preserving_pool(image, 3, alpha=0.5, lambda_=1.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(image, before)
    expected = detail_preserving_pool(image.astype(np.float32), 3, alpha=0.5, lambda_=1.0)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"size": 2}, ValueError, "odd"),
    ({"size": 7}, ValueError, "larger than the image"),
    ({"size": 0}, ValueError, "size"),
    ({"stride": 0}, ValueError, "stride"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"alpha": np.nan}, ValueError, "alpha"),
    ({"eps": 0.0, "lambda_": -1.0}, ValueError, "eps"),
    ({"asymmetric": "yes"}, TypeError, "asymmetric"),
    ({"channel_axis": 2}, ValueError, "channel_axis"),   # out of range for a 2-D array
])
def test_bad_arguments(kwargs, error, match):
    arguments = {"size": 3, "alpha": 0.5, "lambda_": 1.0, **kwargs}
    size = arguments.pop("size")
    with pytest.raises(error, match=match):
        detail_preserving_pool(np.zeros((5, 6)), size, **arguments)
