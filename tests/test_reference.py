"""Tests of the oracle itself against SciPy and hand-written special cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, signal

from reference import (
    GAUSSIAN_SMOOTH,
    ref_conv,
    ref_conv_transpose,
    ref_conv_transpose_gather,
    ref_conv_transpose_scatter,
    ref_kernel,
    ref_pool,
    ref_smooth,
    ref_spatial_window,
)


def dilate_weights(w, dilation):
    """Insert ``d-1`` zeros between the taps of a 2-D filter."""
    dy, dx = dilation
    kh, kw = w.shape
    out = np.zeros((dy * (kh - 1) + 1, dx * (kw - 1) + 1))
    out[::dy, ::dx] = w
    return out


GEOMETRIES = [
    # kernel_size, stride, padding, dilation
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (0, 0), (1, 1)),
    ((3, 5), (1, 2), (1, 2), (2, 1)),
    ((5, 5), (3, 1), (4, 3), (2, 2)),
    ((5, 3), (2, 3), (0, 1), (1, 2)),
]


@pytest.mark.parametrize("kernel_size, stride, padding, dilation", GEOMETRIES)
def test_conv_k1_is_scipy_correlation(rng, assert_close, kernel_size, stride, padding, dilation):
    x = rng.standard_normal((2, 3, 9, 11))
    w = rng.standard_normal((4, 3) + kernel_size)
    bias = rng.standard_normal(4)
    expected = np.zeros((2, 4) + ref_conv(x, None, w, None, stride, padding, dilation).shape[2:])
    for n in range(2):
        for o in range(4):
            for c in range(3):
                padded = np.pad(x[n, c], [(padding[0],) * 2, (padding[1],) * 2])
                full = signal.correlate(padded, dilate_weights(w[o, c], dilation), mode="valid")
                expected[n, o] += full[:: stride[0], :: stride[1]]
            expected[n, o] += bias[o]
    actual = ref_conv(x, None, w, bias, stride, padding, dilation)
    assert_close(actual, expected, np.float64)


@pytest.mark.parametrize(
    "kernel_size, dilation", [((3, 3), (1, 1)), ((5, 3), (2, 1)), ((1, 5), (1, 2))]
)
def test_conv_shared_k1_same_size_is_ndimage_correlate(rng, assert_close, kernel_size, dilation):
    x = rng.standard_normal((2, 3, 7, 9))
    w = rng.standard_normal((1, 1) + kernel_size)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    actual = ref_conv(x, None, w, None, 1, padding, dilation)
    kernel = dilate_weights(w[0, 0], dilation)
    expected = np.stack(
        [
            np.stack([ndimage.correlate(x[n, c], kernel, mode="constant") for c in range(3)])
            for n in range(2)
        ]
    )
    assert actual.shape == x.shape
    assert_close(actual, expected, np.float64)


def test_conv_shared_weight_is_per_channel_conv(rng, assert_close):
    x = rng.standard_normal((2, 3, 6, 7))
    K, _ = ref_kernel(rng.standard_normal((2, 3, 6, 7)), 3, padding=1, channel_wise=True)
    w = rng.standard_normal((1, 1, 3, 3))
    actual = ref_conv(x, K, w, np.arange(3.0), 1, 1, 1)
    for c in range(3):
        single = ref_conv(x[:, c : c + 1], K[:, c : c + 1], w, [float(c)], 1, 1, 1)
        assert_close(actual[:, c : c + 1], single, np.float64)


@pytest.mark.parametrize("kernel_size, stride, padding, dilation", GEOMETRIES)
def test_pool_k1_kernel_normalized_is_average_over_in_range_taps(
    rng, assert_close, kernel_size, stride, padding, dilation
):
    x = rng.standard_normal((2, 3, 9, 11))
    K, valid = ref_kernel(
        np.zeros((2, 1, 9, 11)), kernel_size, stride, padding, dilation, family=None,
        normalize="kernel",
    )
    assert valid.all()
    actual = ref_pool(x, K, None, stride, padding, dilation)
    ones = dilate_weights(np.ones(kernel_size), dilation)
    pad = [(padding[0],) * 2, (padding[1],) * 2]
    count = signal.correlate(np.pad(np.ones((9, 11)), pad), ones, mode="valid")
    count = count[:: stride[0], :: stride[1]]
    expected = np.empty_like(actual)
    for n in range(2):
        for c in range(3):
            total = signal.correlate(np.pad(x[n, c], pad), ones, mode="valid")
            expected[n, c] = total[:: stride[0], :: stride[1]] / count
    assert_close(actual, expected, np.float64)
    # Interior outputs of an unpadded stride-1 pool are plain means of the window.
    assert_close(
        ref_pool(x[:, :, :3, :3], ref_kernel(np.zeros((2, 1, 3, 3)), 3, family=None,
                                             normalize="kernel")[0]),
        x[:, :, :3, :3].mean(axis=(2, 3), keepdims=True),
        np.float64,
    )


def hand_bilateral(image, colour, sigma_spatial, sigma_colour, radius):
    """Textbook (joint) bilateral filter on a square window, out-of-image taps dropped."""
    height, width = image.shape
    out = np.zeros_like(image)
    for y in range(height):
        for x in range(width):
            total, norm = 0.0, 0.0
            for qy in range(max(0, y - radius), min(height, y + radius + 1)):
                for qx in range(max(0, x - radius), min(width, x + radius + 1)):
                    spatial = ((y - qy) ** 2 + (x - qx) ** 2) / (2 * sigma_spatial**2)
                    range_ = np.sum((colour[:, y, x] - colour[:, qy, qx]) ** 2)
                    weight = np.exp(-spatial - range_ / (2 * sigma_colour**2))
                    total += weight * image[qy, qx]
                    norm += weight
            out[y, x] = total / norm
    return out


@pytest.mark.parametrize("guide_channels", [1, 3])
def test_gaussian_kernel_with_spatial_gaussian_is_bilateral(rng, assert_close, guide_channels):
    sigma_spatial, sigma_colour, radius = 1.3, 0.4, 2
    image = rng.random((7, 9))
    colour = image[None] if guide_channels == 1 else rng.random((3, 7, 9))
    size = 2 * radius + 1
    K, valid = ref_kernel(
        colour[None] / sigma_colour, size, padding=radius, family="gaussian",
        spatial_weight=ref_spatial_window(size, sigma_spatial), normalize="kernel",
    )
    assert valid.all()
    actual = ref_pool(image[None, None], K, None, 1, radius)
    expected = hand_bilateral(image, colour, sigma_spatial, sigma_colour, radius)
    assert_close(actual[0, 0], expected, np.float64)
    # Same numbers through a conv with a single all-ones shared filter.
    assert_close(ref_conv(image[None, None], K, np.ones((1, 1, size, size)), None, 1, radius),
                 actual, np.float64)


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_joint_colour_position_gaussian_equals_spatial_gaussian(rng, assert_close, stride,
                                                                dilation):
    # Features (r, g, b, y, x) scaled by 1/sigma: the position channels reproduce the spatial
    # Gaussian, since centre - neighbour positions are the tap offsets times the dilation.
    sigma_spatial, sigma_colour = 1.7, 0.3
    colour = rng.random((1, 3, 8, 9))
    yy, xx = np.meshgrid(np.arange(8.0), np.arange(9.0), indexing="ij")
    joint = np.concatenate(
        [colour / sigma_colour, np.stack([yy, xx])[None] / sigma_spatial], axis=1
    )
    with_positions, _ = ref_kernel(joint, 3, stride, 1, dilation, normalize="kernel")
    with_window, _ = ref_kernel(
        colour / sigma_colour, 3, stride, 1, dilation,
        spatial_weight=ref_spatial_window(3, sigma_spatial, dilation=dilation),
        normalize="kernel",
    )
    assert_close(with_positions, with_window, np.float64)


def test_inverse_power_literal_values(assert_close):
    # 1-D guide [0, 1, 3] (as 1x3), k = (1, 3), padding 1: the single output sits on value 1.
    guide = np.array([0.0, 1.0, 3.0]).reshape(1, 1, 1, 3)
    alpha, lambda_, eps = 0.5, -1.0, 0.1
    K, _ = ref_kernel(guide, (1, 3), 1, (0, 1), family="inverse_power", alpha=alpha,
                      lambda_=lambda_, eps=eps)
    assert K.shape == (1, 1, 1, 3, 1, 3)
    # Output 1 (centre value 1): differences fc - fq = 1, 0, -2.
    expected = [0.5 + 1.01**-0.5, 0.5 + 10.0, 0.5 + 4.01**-0.5]
    assert_close(K[0, 0, 0, :, 0, 1], expected, np.float64)
    # Output 0 (centre value 0): tap 0 out of range -> 0; differences 0 and -1.
    assert_close(K[0, 0, 0, :, 0, 0], [0.0, 10.5, 0.5 + 1.01**-0.5], np.float64)
    # Asymmetric: max(0, fc - fq) -> 1, 0, 0.
    K, _ = ref_kernel(guide, (1, 3), 1, (0, 1), family="inverse_power", alpha=alpha,
                      lambda_=lambda_, eps=eps, asymmetric=True)
    assert_close(K[0, 0, 0, :, 0, 1], [0.5 + 1.01**-0.5, 10.5, 10.5], np.float64)
    # Output 2 (centre 3): fc - fq = 2, 0 (tap 2 out of range): positive differences survive.
    assert_close(K[0, 0, 0, :, 0, 2], [0.5 + 4.01**-0.5, 10.5, 0.0], np.float64)


def test_inverse_power_shared_sums_channels_and_channel_wise_uses_per_channel_parameters(
    assert_close,
):
    # Two channels, one output at the centre of a 1x2 guide... use (1,3) with centre values.
    guide = np.zeros((1, 2, 1, 3))
    guide[0, 0] = [1.0, 0.0, 2.0]
    guide[0, 1] = [0.0, 0.0, 1.0]
    shared, _ = ref_kernel(guide, (1, 3), family="inverse_power", alpha=1.0, lambda_=2.0,
                           eps=0.0)
    # centre (0, 0); diffs ch0: -1, 0, -2; ch1: 0, 0, -1 -> d2 = 1, 0, 5 -> 1 + d2.
    assert_close(shared[0, 0, 0, :, 0, 0], [2.0, 1.0, 6.0], np.float64)
    per_channel, _ = ref_kernel(guide, (1, 3), family="inverse_power", alpha=[1.0, 2.0],
                                lambda_=[2.0, 4.0], eps=0.5, channel_wise=True)
    assert per_channel.shape == (1, 2, 1, 3, 1, 1)
    assert_close(per_channel[0, 0, 0, :, 0, 0], [1 + 1.25, 1 + 0.25, 1 + 4.25], np.float64)
    assert_close(per_channel[0, 1, 0, :, 0, 0], [2 + 0.25**2, 2 + 0.25**2, 2 + 1.25**2],
                 np.float64)


def test_gaussian_literal_and_channel_wise(assert_close):
    guide = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]]).reshape(1, 2, 1, 3)
    shared, _ = ref_kernel(guide, (1, 3), padding=(0, 1))
    # Output 1: centre (1, 2); neighbours (0,2), (1,2), (3,0): d2 = 1, 0, 8.
    assert_close(shared[0, 0, 0, :, 0, 1], np.exp([-0.5, 0.0, -4.0]), np.float64)
    per_channel, _ = ref_kernel(guide, (1, 3), padding=(0, 1), channel_wise=True)
    assert_close(per_channel[0, 0, 0, :, 0, 1], np.exp([-0.5, 0.0, -2.0]), np.float64)
    assert_close(per_channel[0, 1, 0, :, 0, 1], np.exp([0.0, 0.0, -2.0]), np.float64)


def test_normalizations_literal(assert_close):
    guide = np.array([0.0, 1.0, 3.0]).reshape(1, 1, 1, 3)
    mask = np.array([1.0, 0.5, 0.0]).reshape(1, 1, 1, 3)
    weight = np.array([[0.5, 1.0, 2.0]])
    kappa = np.exp([-0.5, 0.0, -2.0])  # output 1: differences 1, 0, -2
    common = dict(kernel_size=(1, 3), padding=(0, 1), spatial_weight=weight, mask=mask)
    numerator = kappa * weight[0] * mask[0, 0, 0]
    for normalize, z in [
        (None, 1.0),
        ("kernel", np.sum(kappa * weight[0])),
        ("mask", np.sum(mask)),
        ("mask_kernel", np.sum(kappa * weight[0] * mask[0, 0, 0])),
    ]:
        K, valid = ref_kernel(guide, normalize=normalize, **common)
        assert valid.all()
        assert_close(K[0, 0, 0, :, 0, 1], numerator / z, np.float64)


def test_zero_normalizer_gives_zero_and_invalid():
    guide = np.random.default_rng(0).standard_normal((2, 2, 5, 6))
    mask = np.ones((2, 1, 5, 6))
    mask[1, 0, :3, :3] = 0.0  # the whole window of output (0, 0) of image 1 for k=3, p=0
    for normalize in ["mask", "mask_kernel"]:
        for channel_wise in [False, True]:
            K, valid = ref_kernel(guide, 3, mask=mask, normalize=normalize,
                                  channel_wise=channel_wise)
            assert np.all(np.isfinite(K))
            assert not valid[1, :, 0, 0].any()
            assert np.all(K[1, :, :, :, 0, 0] == 0.0)
            assert valid.sum() == valid.size - valid.shape[1]
    # A zero spatial weight makes every "kernel" normalizer zero.
    K, valid = ref_kernel(guide, 3, spatial_weight=np.zeros((3, 3)), normalize="kernel")
    assert not valid.any() and np.all(K == 0.0)
    # Without normalization validity is all True even where K is all zero.
    K, valid = ref_kernel(guide, 3, mask=mask)
    assert valid.all() and np.all(K[1, :, :, :, 0, 0] == 0.0)


def test_mask_normalized_k1_is_normalized_convolution(rng, assert_close):
    x = rng.standard_normal((1, 2, 6, 7))
    mask = (rng.random((1, 1, 6, 7)) > 0.3).astype(float)
    K, valid = ref_kernel(np.zeros((1, 1, 6, 7)), 3, padding=1, family=None, mask=mask,
                          normalize="mask")
    actual = ref_pool(x, K, None, 1, 1)
    box = np.ones((3, 3))
    certainty = ndimage.correlate(mask[0, 0], box, mode="constant")
    for c in range(2):
        total = ndimage.correlate(x[0, c] * mask[0, 0], box, mode="constant")
        expected = np.where(certainty > 0, total / np.where(certainty > 0, certainty, 1), 0.0)
        assert_close(actual[0, c], expected, np.float64)
    assert np.array_equal(valid[0, 0], certainty > 0)


@pytest.mark.parametrize("smooth", ["gaussian", ("average", 3), ("average", 5), "user"])
def test_smoothing_is_zero_padded_correlation(rng, assert_close, smooth):
    guide = rng.standard_normal((2, 3, 6, 7))
    if smooth == "user":
        smooth = rng.standard_normal((3, 5))
        kernel = smooth
    elif smooth == "gaussian":
        kernel = GAUSSIAN_SMOOTH
    else:
        kernel = np.full((smooth[1],) * 2, 1.0 / smooth[1] ** 2)
    expected = np.empty_like(guide)
    for n in range(2):
        for c in range(3):
            expected[n, c] = ndimage.correlate(guide[n, c], kernel, mode="constant")
    assert_close(ref_smooth(guide, smooth), expected, np.float64)
    assert_close(GAUSSIAN_SMOOTH, np.outer([1, 2, 1], [1, 2, 1]) / 16, np.float64)
    assert_close(ref_smooth(guide, None), guide, np.float64)


def test_smoothing_changes_only_the_centre_feature(rng, assert_close):
    guide = rng.standard_normal((1, 2, 5, 5))
    K, _ = ref_kernel(guide, 3, padding=1, smooth="gaussian")
    smoothed = ref_smooth(guide, "gaussian")
    # Output (2, 2), tap (0, 1) reads neighbour (1, 2) against the smoothed centre (2, 2).
    d2 = np.sum((smoothed[0, :, 2, 2] - guide[0, :, 1, 2]) ** 2)
    assert_close(K[0, 0, 0, 1, 2, 2], np.exp(-0.5 * d2), np.float64)
    # The centre tap is no longer exactly 1.
    assert K[0, 0, 1, 1, 2, 2] < 1.0


def test_spatial_window_literal(assert_close):
    disk = ref_spatial_window(5, window="disk")
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=float,
    )
    assert_close(disk, expected, np.float64)
    assert_close(ref_spatial_window((1, 5), window="disk"), np.ones((1, 5)), np.float64)
    assert_close(ref_spatial_window((3, 5)), np.ones((3, 5)), np.float64)
    gauss = ref_spatial_window((3, 5), sigma=2.0, dilation=(2, 1))
    dy = 2.0 * np.arange(-1, 2)[:, None]
    dx = 1.0 * np.arange(-2, 3)[None, :]
    assert_close(gauss, np.exp(-(dy**2 + dx**2) / 8.0), np.float64)
    # Disk with sigma: Gaussian values inside, zeros outside.
    assert_close(ref_spatial_window(5, 1.5, window="disk"),
                 expected * ref_spatial_window(5, 1.5), np.float64)


def test_transposed_kernel_is_centred_stride_one_kernel(rng, assert_close):
    guide = rng.standard_normal((2, 2, 7, 6))
    for dilation in [1, 2]:
        transposed, _ = ref_kernel(guide, (3, 5), stride=3, padding=1, dilation=dilation,
                                   transposed=True, normalize="kernel")
        centred, _ = ref_kernel(guide, (3, 5), 1, (dilation, 2 * dilation), dilation,
                                normalize="kernel")
        assert transposed.shape[-2:] == (7, 6)
        assert_close(transposed, centred, np.float64)


TRANSPOSED_GEOMETRIES = [
    # kernel_size, stride, padding, dilation, output_padding
    ((1, 1), (1, 1), (0, 0), (1, 1), (0, 0)),
    ((3, 3), (1, 1), (1, 1), (1, 1), (0, 0)),
    ((3, 3), (2, 2), (1, 0), (1, 1), (1, 0)),
    ((3, 5), (2, 3), (0, 2), (2, 1), (1, 2)),
    ((5, 3), (3, 2), (4, 1), (2, 2), (2, 1)),
    ((5, 5), (1, 2), (2, 0), (1, 3), (0, 2)),
]


@pytest.mark.parametrize("kernel_size, stride, padding, dilation, output_padding",
                         TRANSPOSED_GEOMETRIES)
def test_transposed_zero_insertion_equals_gather_and_scatter(
    rng, assert_close, kernel_size, stride, padding, dilation, output_padding
):
    x = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((3, 2) + kernel_size)
    bias = rng.standard_normal(2)
    geometry = (stride, padding, dilation, output_padding)
    plain = ref_conv_transpose(x, None, w, bias, *geometry)
    assert_close(plain, ref_conv_transpose_scatter(x, w, bias, *geometry), np.float64)
    assert_close(ref_conv_transpose_gather(x, None, w, bias, *geometry), plain, np.float64)
    out_shape = plain.shape[2:]
    for channel_wise in [False, True]:
        guide = rng.standard_normal((2, 3) + out_shape)
        K, _ = ref_kernel(guide, kernel_size, stride, padding, dilation, transposed=True,
                          channel_wise=channel_wise, normalize="kernel")
        assert K.shape[-2:] == out_shape
        zero_inserted = ref_conv_transpose(x, K, w, bias, *geometry)
        gathered = ref_conv_transpose_gather(x, K, w, bias, *geometry)
        assert_close(zero_inserted, gathered, np.float64)
        if kernel_size != (1, 1):  # a normalized 1-tap kernel is identically 1
            assert not np.allclose(zero_inserted, plain)
    shared = rng.standard_normal((1, 1) + kernel_size)
    diagonal = np.zeros((3, 3) + kernel_size)
    for c in range(3):
        diagonal[c, c] = shared[0, 0]
    assert_close(ref_conv_transpose(x, K, shared, None, *geometry),
                 ref_conv_transpose_gather(x, K, diagonal, None, *geometry), np.float64)


@pytest.mark.slow  # importing PyTorch takes seconds
def test_transposed_k1_is_torch_conv_transpose(rng, assert_close):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((3, 2, 3, 5))
    bias = rng.standard_normal(2)
    geometry = dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1), output_padding=(1, 2))
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), **geometry
    ).numpy()
    assert_close(ref_conv_transpose(x, None, w, bias, **geometry), expected, np.float64)
