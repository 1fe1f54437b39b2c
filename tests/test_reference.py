"""Tests of the oracle itself against SciPy and hand-written special cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, signal

from _tiers import tiered_values

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
    transposed_out_size,
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


# ----------------------------------------------------------------------------------------
# spatial rank 1 and 3 (issue 15): the same formulas on (N, C, L) and (N, C, D, H, W)


def dilate_weights_nd(w, dilation):
    """Insert ``d-1`` zeros between the taps of an N-D filter."""
    out = np.zeros(tuple(d * (k - 1) + 1 for k, d in zip(w.shape, dilation)))
    out[tuple(slice(None, None, d) for d in dilation)] = w
    return out


def scipy_conv(x, w, bias, stride, padding, dilation):
    """K = 1 correlation with stride, zero padding and dilation, from scipy.signal."""
    n, channels = x.shape[:2]
    result = None
    for b in range(n):
        for o in range(w.shape[0]):
            total = 0.0
            for c in range(channels):
                padded = np.pad(x[b, c], [(p, p) for p in padding])
                full = signal.correlate(padded, dilate_weights_nd(w[o, c], dilation),
                                        mode="valid")
                total = total + full[tuple(slice(None, None, s) for s in stride)]
            if result is None:
                result = np.zeros((n, w.shape[0]) + total.shape)
            result[b, o] = total + (0.0 if bias is None else bias[o])
    return result


GEOMETRIES_1D = [
    # kernel_size, stride, padding, dilation
    ((1,), (1,), (0,), (1,)),
    ((3,), (1,), (1,), (1,)),
    ((5,), (2,), (3,), (2,)),
    ((3,), (3,), (0,), (3,)),
]
GEOMETRIES_3D = [
    ((1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((1, 3, 5), (1, 2, 1), (0, 1, 2), (1, 1, 2)),
    ((3, 1, 3), (2, 1, 3), (2, 0, 1), (2, 1, 1)),
]
SHAPE_1D, SHAPE_3D = (13,), (5, 6, 7)


@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation",
    [pytest.param(*g, id=f"1d-{i}") for i, g in enumerate(GEOMETRIES_1D)]
    + [pytest.param(*g, id=f"3d-{i}") for i, g in enumerate(GEOMETRIES_3D)],
)
def test_nd_conv_k1_is_scipy_correlation(rng, assert_close, kernel_size, stride, padding,
                                         dilation):
    shape = SHAPE_1D if len(kernel_size) == 1 else SHAPE_3D
    x = rng.standard_normal((2, 2) + shape)
    w = rng.standard_normal((3, 2) + kernel_size)
    bias = rng.standard_normal(3)
    expected = scipy_conv(x, w, bias, stride, padding, dilation)
    assert_close(ref_conv(x, None, w, bias, stride, padding, dilation), expected, np.float64)
    # An all-ones kernel K is the same as no kernel.
    out_shape = expected.shape[2:]
    ones = np.ones((2, 1) + kernel_size + out_shape)
    assert_close(ref_conv(x, ones, w, bias, stride, padding, dilation), expected, np.float64)
    # Pooling without a kernel is the sum over the in-range taps (one filter of ones per channel).
    box = np.ones((1, 1) + kernel_size)
    expected_pool = np.concatenate(
        [scipy_conv(x[:, c:c + 1], box, None, stride, padding, dilation) for c in range(2)],
        axis=1)
    assert_close(ref_pool(x, None, kernel_size, stride, padding, dilation), expected_pool,
                 np.float64)


@pytest.mark.parametrize(
    "kernel_size, dilation",
    [((3,), (1,)), ((5,), (2,)), ((3, 3, 3), (1, 1, 1)), ((1, 3, 5), (1, 2, 1)),
     ((5, 1, 3), (2, 1, 2))],
)
def test_nd_shared_k1_same_size_is_ndimage_correlate(rng, assert_close, kernel_size, dilation):
    shape = SHAPE_1D if len(kernel_size) == 1 else SHAPE_3D
    x = rng.standard_normal((2, 2) + shape)
    w = rng.standard_normal((1, 1) + kernel_size)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    actual = ref_conv(x, None, w, None, 1, padding, dilation)
    kernel = dilate_weights_nd(w[0, 0], dilation)
    expected = np.stack([np.stack([ndimage.correlate(x[n, c], kernel, mode="constant")
                                   for c in range(2)]) for n in range(2)])
    assert actual.shape == x.shape
    assert_close(actual, expected, np.float64)
    # The same through a shared-kernel pool with K = W broadcast over every output position.
    K = np.broadcast_to(w[0, 0][(None, None) + (Ellipsis,) + (None,) * len(shape)],
                        (2, 1) + kernel_size + shape)
    assert_close(ref_pool(x, K, None, 1, padding, dilation), expected, np.float64)


@pytest.mark.parametrize("rank", [1, 3])
def test_nd_pool_k1_kernel_normalized_is_average_over_in_range_taps(rng, assert_close, rank):
    kernel_size, stride, padding, dilation = (GEOMETRIES_1D if rank == 1 else GEOMETRIES_3D)[2]
    shape = SHAPE_1D if rank == 1 else SHAPE_3D
    x = rng.standard_normal((1, 2) + shape)
    K, valid = ref_kernel(np.zeros((1, 1) + shape), kernel_size, stride, padding, dilation,
                          family=None, normalize="kernel")
    assert valid.all()
    box = np.ones((1, 1) + kernel_size)
    count = scipy_conv(np.ones((1, 1) + shape), box, None, stride, padding, dilation)
    total = np.concatenate(
        [scipy_conv(x[:, c:c + 1], box, None, stride, padding, dilation) for c in range(2)],
        axis=1)
    assert_close(ref_pool(x, K, None, stride, padding, dilation), total / count, np.float64)


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("smooth", ["gaussian", ("average", 3), "user"])
def test_nd_smoothing_is_zero_padded_correlation(rng, assert_close, rank, smooth):
    shape = SHAPE_1D if rank == 1 else (4, 5, 6)
    guide = rng.standard_normal((1, 2) + shape)
    if smooth == "gaussian":
        kernel = np.array([1.0, 2.0, 1.0]) / 4.0
        if rank == 3:
            kernel = kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :]
    elif smooth == "user":
        smooth = kernel = rng.standard_normal((5,) if rank == 1 else (1, 3, 5))
    else:
        kernel = np.full((3,) * rank, 1.0 / 3**rank)
    expected = np.stack([[ndimage.correlate(guide[0, c], kernel, mode="constant")
                          for c in range(2)]])
    assert_close(ref_smooth(guide, smooth), expected, np.float64)


def test_nd_spatial_window_literal(assert_close):
    # 1-D: the "disk" is the whole segment; a Gaussian of the dilated offset.
    assert_close(ref_spatial_window((7,), window="disk"), np.ones(7), np.float64)
    offsets = 2.0 * np.arange(-2, 3)
    assert_close(ref_spatial_window((5,), 1.5, dilation=2), np.exp(-offsets**2 / 4.5),
                 np.float64)
    # 3-D: the inscribed ellipsoid, with a per-axis sigma and dilation.
    tz, ty, tx = np.meshgrid(np.arange(-1, 2), np.arange(-2, 3), np.arange(-3, 4),
                             indexing="ij")
    ball = ((tz / 1) ** 2 + (ty / 2) ** 2 + (tx / 3) ** 2 <= 1).astype(float)
    assert ball.sum() < ball.size and ball[1, 2, 3] == 1 and ball[0, 0, 0] == 0
    assert_close(ref_spatial_window((3, 5, 7), window="disk"), ball, np.float64)
    sigma, dilation = (1.0, 2.0, 0.5), (2, 1, 1)
    gauss = np.exp(-((2 * tz) ** 2 / 2.0 + ty**2 / 8.0 + tx**2 / 0.5))
    assert_close(ref_spatial_window((3, 5, 7), sigma, "disk", dilation), gauss * ball,
                 np.float64)
    # An isotropic sigma given per axis is the scalar sigma.
    assert_close(ref_spatial_window((3, 5, 7), (1.2,) * 3, dilation=dilation),
                 ref_spatial_window((3, 5, 7), 1.2, dilation=dilation), np.float64)
    # A 1-tap depth axis excludes nothing: (1, k, k) is the 2-D window.
    for window in ("square", "disk"):
        assert_close(ref_spatial_window((1, 5, 3), 1.1, window, (3, 1, 2))[0],
                     ref_spatial_window((5, 3), 1.1, window, (1, 2)), np.float64)
    # 5x5x5 ball: the 2-D disk in the middle slice, a single tap at the poles.
    ball5 = ref_spatial_window((5, 5, 5), window="disk")
    assert_close(ball5[2], ref_spatial_window(5, window="disk"), np.float64)
    assert ball5[0].sum() == 1 and ball5[0, 2, 2] == 1


def test_nd_inverse_power_and_normalizations_literal(assert_close):
    # The 2-D literal cases of test_inverse_power_literal_values and test_normalizations_literal
    # on a 1-D guide [0, 1, 3], k = 3, padding 1.
    guide = np.array([0.0, 1.0, 3.0]).reshape(1, 1, 3)
    K, _ = ref_kernel(guide, 3, 1, 1, family="inverse_power", alpha=0.5, lambda_=-1.0,
                      eps=0.1)
    assert K.shape == (1, 1, 3, 3)
    assert_close(K[0, 0, :, 1], [0.5 + 1.01**-0.5, 0.5 + 10.0, 0.5 + 4.01**-0.5], np.float64)
    assert_close(K[0, 0, :, 0], [0.0, 10.5, 0.5 + 1.01**-0.5], np.float64)
    mask = np.array([1.0, 0.5, 0.0]).reshape(1, 1, 3)
    weight = np.array([0.5, 1.0, 2.0])
    kappa = np.exp([-0.5, 0.0, -2.0])
    numerator = kappa * weight * mask[0, 0]
    for normalize, z in [(None, 1.0), ("kernel", np.sum(kappa * weight)),
                         ("mask", np.sum(mask)), ("mask_kernel", np.sum(numerator))]:
        K, valid = ref_kernel(guide, (3,), padding=(1,), spatial_weight=weight, mask=mask,
                              normalize=normalize)
        assert valid.shape == (1, 1, 3) and valid.all()
        assert_close(K[0, 0, :, 1], numerator / z, np.float64)
    # 3-D: one output at the centre of a 3x3x3 guide reads every voxel against the centre.
    guide = np.random.default_rng(1).standard_normal((1, 2, 3, 3, 3))
    K, _ = ref_kernel(guide, 3)
    d2 = np.sum((guide[0, :, 1, 1, 1][:, None, None, None] - guide[0]) ** 2, axis=0)
    assert K.shape == (1, 1, 3, 3, 3, 1, 1, 1)
    assert_close(K[0, 0, ..., 0, 0, 0], np.exp(-0.5 * d2), np.float64)


@pytest.mark.parametrize("rank", [1, 3])
def test_nd_zero_normalizer_gives_zero_and_invalid(rank):
    shape = (6,) if rank == 1 else (3, 4, 5)
    guide = np.random.default_rng(0).standard_normal((2, 2) + shape)
    mask = np.ones((2, 1) + shape)
    mask[(1, 0) + (slice(0, 3),) * rank] = 0.0  # the whole window of output 0 of image 1
    first = (0,) * rank
    for normalize in ["mask", "mask_kernel"]:
        K, valid = ref_kernel(guide, 3, mask=mask, normalize=normalize, channel_wise=True)
        assert np.all(np.isfinite(K)) and valid.shape == (2, 2) + tuple(n - 2 for n in shape)
        assert not valid[(1, slice(None)) + first].any()
        assert np.all(K[(1, slice(None), Ellipsis) + first] == 0.0)
        assert valid.sum() == valid.size - 2


def test_nd_joint_colour_position_gaussian_equals_spatial_gaussian(rng, assert_close):
    # 3-D version of the "W = 1" identity: features (colour, z, y, x) scaled by 1/sigma.
    sigma_spatial, sigma_colour = (1.7, 1.1, 0.9), 0.3
    colour = rng.random((1, 2, 4, 5, 5))
    grids = np.meshgrid(*(np.arange(float(n)) for n in colour.shape[2:]), indexing="ij")
    positions = np.stack([g / s for g, s in zip(grids, sigma_spatial)])[None]
    joint = np.concatenate([colour / sigma_colour, positions], axis=1)
    geometry = dict(stride=(1, 2, 1), padding=(1, 1, 2), dilation=(1, 1, 2))
    with_positions, _ = ref_kernel(joint, 3, **geometry, normalize="kernel")
    with_window, _ = ref_kernel(
        colour / sigma_colour, 3, **geometry, normalize="kernel",
        spatial_weight=ref_spatial_window((3, 3, 3), sigma_spatial,
                                          dilation=geometry["dilation"]))
    assert_close(with_positions, with_window, np.float64)


# Kernel options for the identities below, with N-D arrays drawn by the tests.
IDENTITY_OPTIONS = [
    dict(family="gaussian", normalize="kernel", spatial=True, smooth="user"),
    dict(family="inverse_power", alpha=[0.2, 0.5], lambda_=[-0.7, 1.3], eps=0.1,
         asymmetric=True, channel_wise=True, normalize="mask_kernel", mask=True),
    dict(family=None, normalize="mask", mask=True, spatial=True),
]


def _identity_kernel_args(rng, options, kernel_size, guide_shape, lift):
    """ref_kernel keywords of ``options`` for the N-D shapes and their lifted (+1 axis) twins."""
    args = {key: value for key, value in options.items() if key not in ("spatial", "mask")}
    lifted = dict(args)
    if options.get("spatial"):
        args["spatial_weight"] = rng.uniform(0.5, 1.5, kernel_size)
        lifted["spatial_weight"] = lift(args["spatial_weight"], 0)
    if options.get("mask"):
        args["mask"] = rng.uniform(0.0, 1.0, (2, 1) + guide_shape)
        lifted["mask"] = lift(args["mask"], 2)
    if options.get("smooth") == "user":
        args["smooth"] = rng.uniform(0.1, 0.3, (3,) * len(kernel_size))
        lifted["smooth"] = lift(args["smooth"], 0)
    return args, lifted


@pytest.mark.parametrize("options", IDENTITY_OPTIONS)
def test_one_d_equals_two_d_with_one_row(rng, assert_close, options):
    # (N, C, L) with k, s, p, d is (N, C, 1, L) with (1, k), (1, s), (0, p), (1, d).
    def lift(array, axis):
        return np.expand_dims(array, axis)

    def squeeze(array, axes):
        return np.squeeze(array, axis=axes)

    k, s, p, d = 3, 2, 2, 2
    geometry = dict(stride=s, padding=p, dilation=d)
    geometry2 = dict(stride=(1, s), padding=(0, p), dilation=(1, d))
    guide = rng.standard_normal((2, 2, 11))
    args, lifted = _identity_kernel_args(rng, options, (k,), (11,), lift)
    K, valid = ref_kernel(guide, k, **geometry, **args)
    K2, valid2 = ref_kernel(lift(guide, 2), (1, k), **geometry2, **lifted)
    assert_close(K, squeeze(K2, (2, 4)), np.float64)
    assert np.array_equal(valid, squeeze(valid2, 2))
    x = rng.standard_normal((2, 2, 11))
    w = rng.standard_normal((3, 2, k))
    bias = rng.standard_normal(3)
    assert_close(ref_conv(x, K, w, bias, **geometry),
                 squeeze(ref_conv(lift(x, 2), K2, lift(w, 2), bias, **geometry2), 2), np.float64)
    assert_close(ref_conv(x, K, w[:1, :1], None, **geometry),
                 squeeze(ref_conv(lift(x, 2), K2, lift(w[:1, :1], 2), None, **geometry2), 2),
                 np.float64)
    assert_close(ref_pool(x, K, None, **geometry),
                 squeeze(ref_pool(lift(x, 2), K2, None, **geometry2), 2), np.float64)
    # Transposed: x (N, C, 4) -> 11 outputs with s = 2, p = 2, d = 3, op = 2.
    xt = rng.standard_normal((2, 2, 4))
    wt = rng.standard_normal((2, 3, k))
    geometry_t = dict(stride=s, padding=p, dilation=3, output_padding=2)
    geometry_t2 = dict(stride=(1, s), padding=(0, p), dilation=(1, 3), output_padding=(0, 2))
    Kt, _ = ref_kernel(guide, k, dilation=3, transposed=True, **args)
    Kt2, _ = ref_kernel(lift(guide, 2), (1, k), dilation=(1, 3), transposed=True, **lifted)
    assert_close(Kt, squeeze(Kt2, (2, 4)), np.float64)
    for function in (ref_conv_transpose, ref_conv_transpose_gather):
        actual = function(xt, Kt, wt, bias, **geometry_t)
        assert actual.shape == (2, 3, 11)
        assert_close(actual, squeeze(function(lift(xt, 2), Kt2, lift(wt, 2), bias,
                                              **geometry_t2), 2), np.float64)
    assert_close(ref_conv_transpose_scatter(xt, wt, bias, **geometry_t),
                 squeeze(ref_conv_transpose_scatter(lift(xt, 2), lift(wt, 2), bias,
                                                    **geometry_t2), 2), np.float64)


@pytest.mark.parametrize("options", IDENTITY_OPTIONS)
@pytest.mark.parametrize("depth_stride", tiered_values([1, 2], [2]))
def test_one_by_k_by_k_volume_kernel_is_the_two_d_oracle_slice_by_slice(
    rng, assert_close, options, depth_stride
):
    # A (1, kh, kw) kernel never mixes slices: slice z of the output is the 2-D op on input
    # slice z * depth_stride, with the 2-D options' arrays and the slice's guide and mask.
    depth = 5
    kernel_size = (3, 5)
    geometry2 = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    geometry3 = {key: (depth_stride if key == "stride" else (1 if key == "dilation" else 0),)
                 + value for key, value in geometry2.items()}
    guide = rng.standard_normal((2, 2, depth, 5, 9))
    args2, _ = _identity_kernel_args(rng, options, kernel_size, (5, 9), lambda a, axis: a)
    # the 3-D arrays: spatial weight and smoothing get a depth axis of 1; the mask a depth axis
    args3 = dict(args2)
    for key in ("spatial_weight", "smooth"):
        if key in args2:
            args3[key] = args2[key][None]
    masks = None
    if "mask" in args2:
        masks = rng.uniform(0.0, 1.0, (2, 1, depth, 5, 9))
        args3["mask"] = masks
    K3, valid3 = ref_kernel(guide, (1,) + kernel_size, **geometry3, **args3)
    x = rng.standard_normal((2, 2, depth, 5, 9))
    w = rng.standard_normal((3, 2, 1) + kernel_size)
    bias = rng.standard_normal(3)
    y3 = ref_conv(x, K3, w, bias, **geometry3)
    p3 = ref_pool(x, K3, None, **geometry3)
    out_depth = (depth - 1) // depth_stride + 1
    assert K3.shape[2] == 1 and K3.shape[5] == out_depth == y3.shape[2]
    for z in range(out_depth):
        source = z * depth_stride
        slice_args = dict(args2)
        if masks is not None:
            slice_args["mask"] = masks[:, :, source]
        K2, valid2 = ref_kernel(guide[:, :, source], kernel_size, **geometry2, **slice_args)
        assert_close(K3[:, :, 0, :, :, z], K2, np.float64)
        assert np.array_equal(valid3[:, :, z], valid2)
        assert_close(y3[:, :, z], ref_conv(x[:, :, source], K2, w[:, :, 0], bias, **geometry2),
                     np.float64)
        assert_close(p3[:, :, z], ref_pool(x[:, :, source], K2, None, **geometry2), np.float64)

    # Transposed, (1, 3, 5) with depth stride 1 (output_padding 0 on the depth axis).
    xt = rng.standard_normal((2, 2, depth, 3, 4))
    wt = rng.standard_normal((2, 3, 1) + kernel_size)
    geometry_t2 = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), output_padding=(1, 0))
    geometry_t3 = dict(stride=(1, 2, 1), padding=(0, 1, 2), dilation=(1, 1, 2),
                       output_padding=(0, 1, 0))
    yt_shape = ref_conv_transpose_scatter(xt, wt, None, **geometry_t3).shape
    assert yt_shape == (2, 3, depth, 6, 8)
    guide_t = rng.standard_normal((2, 2) + yt_shape[2:])
    args_t3 = dict(args3)
    if masks is not None:
        args_t3["mask"] = rng.uniform(0.0, 1.0, (2, 1) + yt_shape[2:])
    Kt3, _ = ref_kernel(guide_t, (1,) + kernel_size, **geometry3, transposed=True, **args_t3)
    yt3 = ref_conv_transpose(xt, Kt3, wt, bias, **geometry_t3)
    for z in range(depth):
        slice_args = dict(args2)
        if masks is not None:
            slice_args["mask"] = args_t3["mask"][:, :, z]
        Kt2, _ = ref_kernel(guide_t[:, :, z], kernel_size, **geometry2, transposed=True,
                            **slice_args)
        assert_close(Kt3[:, :, 0, :, :, z], Kt2, np.float64)
        assert_close(yt3[:, :, z], ref_conv_transpose(xt[:, :, z], Kt2, wt[:, :, 0], bias,
                                                      **geometry_t2), np.float64)


TRANSPOSED_GEOMETRIES_ND = [
    # kernel_size, stride, padding, dilation, output_padding
    ((3,), (2,), (1,), (1,), (1,)),
    ((5,), (3,), (3,), (2,), (1,)),
    ((3, 3, 3), (2, 1, 1), (1, 1, 0), (1, 1, 1), (1, 0, 0)),
    ((1, 3, 5), (1, 2, 3), (0, 2, 1), (1, 2, 1), (0, 1, 2)),
]


@pytest.mark.parametrize("kernel_size, stride, padding, dilation, output_padding",
                         TRANSPOSED_GEOMETRIES_ND)
def test_nd_transposed_zero_insertion_equals_gather_and_scatter(
    rng, assert_close, kernel_size, stride, padding, dilation, output_padding
):
    shape = (5,) if len(kernel_size) == 1 else (2, 3, 3)
    x = rng.standard_normal((2, 2) + shape)
    w = rng.standard_normal((2, 3) + kernel_size)
    bias = rng.standard_normal(3)
    geometry = (stride, padding, dilation, output_padding)
    plain = ref_conv_transpose(x, None, w, bias, *geometry)
    assert plain.shape[2:] == tuple(transposed_out_size(*a) for a in zip(shape, *[
        kernel_size, stride, padding, dilation, output_padding]))
    assert_close(plain, ref_conv_transpose_scatter(x, w, bias, *geometry), np.float64)
    assert_close(ref_conv_transpose_gather(x, None, w, bias, *geometry), plain, np.float64)
    guide = rng.standard_normal((2, 2) + plain.shape[2:])
    K, _ = ref_kernel(guide, kernel_size, stride, padding, dilation, transposed=True,
                      channel_wise=True, normalize="kernel")
    assert K.shape == (2, 2) + kernel_size + plain.shape[2:]
    zero_inserted = ref_conv_transpose(x, K, w, bias, *geometry)
    assert_close(zero_inserted, ref_conv_transpose_gather(x, K, w, bias, *geometry), np.float64)
    assert not np.allclose(zero_inserted, plain)
    shared = rng.standard_normal((1, 1) + kernel_size)
    assert_close(ref_conv_transpose(x, K, shared, None, *geometry),
                 ref_conv_transpose_gather(x, K, shared, None, *geometry), np.float64)


@pytest.mark.slow  # importing PyTorch takes seconds
@pytest.mark.parametrize("rank", [1, 3])
def test_nd_no_guide_conv_and_transpose_are_torch(rng, assert_close, rank):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    conv = functional.conv1d if rank == 1 else functional.conv3d
    conv_transpose = functional.conv_transpose1d if rank == 1 else functional.conv_transpose3d
    if rank == 1:
        shape, kernel_size = (12,), (5,)
        geometry = dict(stride=(2,), padding=(3,), dilation=(2,))
        geometry_t = dict(stride=(3,), padding=(2,), dilation=(2,), output_padding=(1,))
    else:
        shape, kernel_size = (4, 5, 6), (1, 3, 5)
        geometry = dict(stride=(2, 1, 3), padding=(0, 1, 2), dilation=(1, 2, 1))
        geometry_t = dict(stride=(2, 3, 1), padding=(0, 2, 1), dilation=(1, 2, 1),
                          output_padding=(1, 1, 0))
    x = rng.standard_normal((2, 3) + shape)
    w = rng.standard_normal((4, 3) + kernel_size)
    bias = rng.standard_normal(4)
    expected = conv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias),
                    **geometry).numpy()
    assert_close(ref_conv(x, None, w, bias, **geometry), expected, np.float64)
    xt = rng.standard_normal((2, 3) + tuple(max(2, n // 2) for n in shape))
    wt = rng.standard_normal((3, 4) + kernel_size)
    expected = conv_transpose(torch.from_numpy(xt), torch.from_numpy(wt),
                              torch.from_numpy(bias), **geometry_t).numpy()
    assert_close(ref_conv_transpose(xt, None, wt, bias, **geometry_t), expected, np.float64)
    assert_close(ref_conv_transpose_gather(xt, None, wt, bias, **geometry_t), expected,
                 np.float64)
