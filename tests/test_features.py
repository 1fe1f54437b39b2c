"""Tests of pacarray.features: colour/position feature stacks and the filters' dtype policy."""

from __future__ import annotations

import numpy as np
import pytest

from pacarray import pac_pool
from pacarray._args import as_float_image
from pacarray.features import color_position_features
from pacarray.filters import bilateral_filter


def test_values_and_layout(rng):
    image = rng.random((4, 6, 3)).astype(np.float32)
    features = color_position_features(image, sigma_spatial=2.0, sigma_color=(0.1, 0.2, 0.5),
                                       channel_axis=-1)
    assert features.shape == (1, 5, 4, 6) and features.dtype == np.float32
    np.testing.assert_allclose(features[0, 0], image[..., 0] / 0.1, rtol=1e-6)
    np.testing.assert_allclose(features[0, 2], image[..., 2] / 0.5, rtol=1e-6)
    rows, cols = np.mgrid[:4, :6]
    np.testing.assert_array_equal(features[0, 3], rows / 2.0)
    np.testing.assert_array_equal(features[0, 4], cols / 2.0)


def test_grayscale_and_float64(rng):
    image = rng.random((3, 5))
    features = color_position_features(image, sigma_spatial=1.0, sigma_color=0.25)
    assert features.shape == (1, 3, 3, 5) and features.dtype == np.float64
    np.testing.assert_allclose(features[0, 0], image * 4.0, rtol=1e-15)


@pytest.mark.parametrize("radius", [1, 2])
def test_gaussian_pooling_on_the_features_is_a_bilateral_filter(radius, rng):
    # The "W = 1" special case: a Gaussian kernel in the joint (colour, position) space with no
    # spatial weight equals the bilateral filter with a square window, out-of-image taps dropped.
    image = rng.random((7, 8, 3))
    features = color_position_features(image, sigma_spatial=1.5, sigma_color=0.3,
                                       channel_axis=-1)
    pooled = pac_pool(np.moveaxis(image, -1, 0)[None], 2 * radius + 1, guide=features,
                      padding=radius, normalize="kernel")[0]
    expected = bilateral_filter(image, sigma_spatial=1.5, sigma_color=0.3, radius=radius,
                                window="square", mode="exclude", channel_axis=-1)
    np.testing.assert_allclose(np.moveaxis(pooled, 0, -1), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, expected", [
    (np.uint8, np.float32), (np.uint16, np.float32), (np.int64, np.float32), (bool, np.float32),
    (np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64),
])
def test_dtype_policy(dtype, expected):
    image = np.arange(6).reshape(2, 3).astype(dtype)
    converted = as_float_image(np, image)
    assert converted.dtype == expected
    np.testing.assert_array_equal(converted, image.astype(expected))  # values kept, no rescale
    if dtype in (np.float32, np.float64):
        assert converted is image  # no copy


def test_dtype_policy_rejects_complex_and_objects():
    with pytest.raises(TypeError, match="image"):
        as_float_image(np, np.zeros((2, 2), complex))
    with pytest.raises(TypeError, match="image"):
        as_float_image(np, np.array([["a", "b"]], dtype=object))


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma_spatial": 0.0}, "sigma_spatial"),
    ({"sigma_spatial": np.inf}, "sigma_spatial"),
    ({"sigma_color": -1.0}, "sigma_color"),
    ({"sigma_color": (0.1, 0.2)}, "sigma_color"),
    ({"channel_axis": 3}, "channel_axis"),
])
def test_bad_arguments(kwargs, match):
    arguments = {"sigma_spatial": 1.0, "sigma_color": 0.1, "channel_axis": -1, **kwargs}
    with pytest.raises(ValueError, match=match):
        color_position_features(np.zeros((3, 4, 3)), **arguments)
