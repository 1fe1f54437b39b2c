"""Tests of pacarray.filters: bilateral filter, joint bilateral upsampling, normalized
convolution; against a plain NumPy implementation written here, the float64 oracle in
``reference.py``, OpenCV and scipy.ndimage."""

from __future__ import annotations

import numpy as np
import pytest
import reference
import scipy.ndimage as ndi

from pacarray._dispatch import generic_kernels
from pacarray.filters import bilateral_filter, joint_bilateral_upsample, normalized_convolution

MODES = ["reflect", "mirror", "nearest", "wrap", "constant", "exclude"]
NP_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}


def _extend(planar, radius, mode, cval):
    """(C, H, W) -> (C, H + 2r, W + 2r) extended by the border mode; NaN marks "exclude"."""
    widths = ((0, 0), (radius, radius), (radius, radius))
    if mode in NP_PAD:
        return np.pad(planar, widths, mode=NP_PAD[mode])
    fill = cval if mode == "constant" else np.nan
    return np.pad(planar, widths, mode="constant", constant_values=fill)


def naive_bilateral(image, guide, sigma_spatial, sigma_color, radius, window="disk", l1=False,
                    mode="mirror", cval=0.0):
    """Straight from the definition, in float64: (C, H, W) image, (G, H, W) guide."""
    image = np.asarray(image, np.float64)
    guide = np.asarray(guide, np.float64)
    _, height, width = image.shape
    padded = _extend(image, radius, mode, cval)
    padded_guide = _extend(guide, radius, mode, cval)
    inside = ~np.isnan(_extend(np.zeros((1, height, width)), radius, mode, cval)[0])
    numerator = np.zeros_like(image)
    denominator = np.zeros((height, width))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if window == "disk" and dy * dy + dx * dx > radius * radius:
                continue
            rows = slice(radius + dy, radius + dy + height)
            cols = slice(radius + dx, radius + dx + width)
            diff = padded_guide[:, rows, cols] - guide
            d2 = np.abs(diff).sum(0) ** 2 if l1 else (diff**2).sum(0)
            weight = np.exp(-(dy * dy + dx * dx) / (2 * sigma_spatial**2)
                            - d2 / (2 * sigma_color**2))
            weight = np.where(inside[rows, cols], weight, 0.0)
            numerator += weight * np.where(inside[rows, cols], padded[:, rows, cols], 0.0)
            denominator += weight
    return numerator / denominator


def _planar(image, channel_axis):
    return image[None] if channel_axis is None else np.moveaxis(image, channel_axis, 0)


# ---------------------------------------------------------------------------------------------
# Bilateral filter: values


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 5), (1, 9), (9, 1), (6, 11)])
def test_bilateral_grayscale_matches_naive(mode, dtype, shape, rng):
    image = rng.random(shape).astype(dtype)
    image_before = image.copy()
    out = bilateral_filter(image, sigma_spatial=1.5, sigma_color=0.3, radius=2, mode=mode,
                           cval=0.25)
    expected = naive_bilateral(image[None], image[None], 1.5, 0.3, 2, mode=mode, cval=0.25)[0]
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(image, image_before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window, color_distance", [("disk", "l1"), ("square", "l2")])
def test_bilateral_rgb_matches_naive(mode, window, color_distance, rng):
    image = rng.random((8, 13, 3)).astype(np.float32)
    out = bilateral_filter(image, sigma_spatial=2.0, sigma_color=0.4, radius=3, window=window,
                           color_distance=color_distance, mode=mode, cval=0.5, channel_axis=-1)
    planar = np.moveaxis(image, -1, 0)
    expected = naive_bilateral(planar, planar, 2.0, 0.4, 3, window, color_distance == "l1",
                               mode, 0.5)
    np.testing.assert_allclose(out, np.moveaxis(expected, 0, -1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("guide_channels", [1, 3, 5])
@pytest.mark.parametrize("color_distance", ["l1", "l2"])
def test_joint_bilateral_guide_with_other_channel_count(guide_channels, color_distance, rng):
    image = rng.random((2, 9, 10))
    guide = rng.random((guide_channels, 9, 10))
    # The guide's channels sit at the image's channel_axis (0 here).
    guide_arg = guide[0] if guide_channels == 1 else guide
    out = bilateral_filter(image, sigma_spatial=1.0, sigma_color=0.5, radius=2, channel_axis=0,
                           guide=guide_arg, color_distance=color_distance, mode="reflect")
    expected = naive_bilateral(image, guide, 1.0, 0.5, 2,
                               l1=color_distance == "l1", mode="reflect")
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_bilateral_more_channels_than_one_kernel_call(rng):
    # 6 value channels (more than the 4 planes per call of earlier kernels) guided by themselves.
    image = rng.random((6, 7, 8)).astype(np.float32)
    out = bilateral_filter(image, sigma_spatial=1.0, sigma_color=0.8, radius=1, channel_axis=0)
    expected = naive_bilateral(image, image, 1.0, 0.8, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", ["mirror", "constant", "exclude"])
def test_bilateral_equals_oracle_pac_pool(mode, rng):
    # docs/design.md §1.7: Gaussian K on colour / sigma_color + Gaussian spatial weight + "kernel"
    # normalization on the extended image is the bilateral filter.
    image = rng.random((5, 6)).astype(np.float64)
    radius, sigma_spatial, sigma_color = 2, 1.2, 0.35
    size = 2 * radius + 1
    padded = _extend(image[None], radius, "constant" if mode == "exclude" else mode, 0.7)[None]
    weights = reference.ref_spatial_window(size, sigma_spatial, window="disk")
    padding = radius if mode == "exclude" else 0
    source = image[None, None] if mode == "exclude" else padded
    kernel, _ = reference.ref_kernel(source / sigma_color, size, padding=padding,
                                     spatial_weight=weights, normalize="kernel")
    expected = reference.ref_pool(source, kernel, padding=padding)[0, 0]
    out = bilateral_filter(image, sigma_spatial=sigma_spatial, sigma_color=sigma_color,
                           radius=radius, mode=mode, cval=0.7)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_generic_path_equals_numba_path(mode, rng):
    image = rng.random((3, 9, 7))
    guide = rng.random((2, 9, 7))
    fast = bilateral_filter(image, sigma_spatial=1.3, sigma_color=0.4, radius=2, mode=mode,
                            cval=0.3, channel_axis=0, guide=guide)
    with generic_kernels():
        generic = bilateral_filter(image, sigma_spatial=1.3, sigma_color=0.4, radius=2,
                                   mode=mode, cval=0.3, channel_axis=0, guide=guide)
    np.testing.assert_allclose(fast, generic, rtol=0, atol=1e-12)


def test_radius_larger_than_image_wraps_repeatedly(rng):
    image = rng.random((3, 4))
    for mode in ("mirror", "reflect", "wrap"):
        out = bilateral_filter(image, sigma_spatial=3.0, sigma_color=0.5, radius=7, mode=mode)
        expected = naive_bilateral(image[None], image[None], 3.0, 0.5, 7, mode=mode)[0]
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bilateral filter: OpenCV parity


def _photo():
    try:
        from pacarray.data import sample_image
    except ImportError:  # pragma: no cover - the sample ships with the package
        skimage_data = pytest.importorskip("skimage.data")
        return skimage_data.astronaut()
    return sample_image()


@pytest.mark.parametrize("grayscale", [False, True])
def test_opencv_parity_on_a_photograph(grayscale):
    cv2 = pytest.importorskip("cv2")
    image = _photo().astype(np.float32) / 255.0
    image = image[96:352, 128:384]
    if grayscale:
        image = np.ascontiguousarray(image[..., 1])
    ours = bilateral_filter(image, sigma_spatial=3.0, sigma_color=0.1, radius=4, window="disk",
                            color_distance="l1", mode="mirror",
                            channel_axis=None if grayscale else -1)
    theirs = cv2.bilateralFilter(image, 9, 0.1, 3.0)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours - image).max() > 0.05  # it did filter something


# ---------------------------------------------------------------------------------------------
# Bilateral filter: properties


def test_constant_image_unchanged():
    image = np.full((9, 12, 3), 0.37, dtype=np.float32)
    out = bilateral_filter(image, sigma_spatial=2.0, sigma_color=0.1, channel_axis=-1)
    np.testing.assert_allclose(out, image, rtol=0, atol=2e-6)  # float32 sums of ~28 weights


@pytest.mark.parametrize("window", ["disk", "square"])
def test_huge_sigma_color_is_a_gaussian_blur(window, rng):
    image = rng.random((16, 19))
    radius, sigma = 3, 1.7
    weights = reference.ref_spatial_window(2 * radius + 1, sigma, window=window)
    blurred = ndi.correlate(image, weights / weights.sum(), mode="mirror")
    out = bilateral_filter(image, sigma_spatial=sigma, sigma_color=1e8, radius=radius,
                           window=window, mode="mirror")
    np.testing.assert_allclose(out, blurred, rtol=0, atol=1e-12)


def test_noise_drops_and_step_edge_stays_sharp(rng):
    clean = np.zeros((40, 40))
    clean[:, 20:] = 1.0
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    out = bilateral_filter(noisy, sigma_spatial=2.0, sigma_color=0.2)
    flat = (slice(5, 35), slice(2, 14))
    assert out[flat].std() < 0.5 * noisy[flat].std()
    blurred = ndi.gaussian_filter(noisy, 2.0, mode="mirror", truncate=3.0)
    # The jump across the edge (columns 19 -> 20) stays close to 1; the blur spreads it.
    jump_ours = np.mean(out[:, 20] - out[:, 19])
    jump_blur = np.mean(blurred[:, 20] - blurred[:, 19])
    assert jump_ours > 0.85 and jump_blur < 0.4
    assert np.abs(out - clean).mean() < np.abs(blurred - clean).mean()


def test_channel_axis_positions_agree(rng):
    image = rng.random((3, 10, 11)).astype(np.float32)
    first = bilateral_filter(image, sigma_spatial=1.0, sigma_color=0.3, channel_axis=0)
    last = bilateral_filter(np.moveaxis(image, 0, -1), sigma_spatial=1.0, sigma_color=0.3,
                            channel_axis=-1)
    middle = bilateral_filter(np.moveaxis(image, 0, 1), sigma_spatial=1.0, sigma_color=0.3,
                              channel_axis=1)
    np.testing.assert_allclose(np.moveaxis(last, -1, 0), first, rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.moveaxis(middle, 1, 0), first, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype, expected", [(np.uint8, np.float32), (np.int32, np.float32),
                                             (np.float16, np.float32), (bool, np.float32),
                                             (np.float32, np.float32), (np.float64, np.float64)])
def test_dtype_policy(dtype, expected, rng):
    image = (rng.random((6, 7)) * 200).astype(dtype)
    out = bilateral_filter(image, sigma_spatial=1.0, sigma_color=30.0, radius=1)
    assert out.dtype == expected
    reference_out = bilateral_filter(image.astype(expected), sigma_spatial=1.0, sigma_color=30.0,
                                     radius=1)
    np.testing.assert_array_equal(out, reference_out)


def test_nan_propagates_to_its_window_only(rng):
    image = rng.random((9, 9))
    image[4, 4] = np.nan
    out = bilateral_filter(image, sigma_spatial=1.0, sigma_color=0.5, radius=2, window="square")
    nan_rows, nan_cols = np.nonzero(np.isnan(out))
    assert set(nan_rows) == {2, 3, 4, 5, 6} and set(nan_cols) == {2, 3, 4, 5, 6}
    assert np.isnan(out).sum() == 25


def test_default_radius_is_ceil_three_sigma(rng):
    image = rng.random((12, 12))
    out = bilateral_filter(image, sigma_spatial=0.9, sigma_color=0.5)
    np.testing.assert_array_equal(out, bilateral_filter(image, sigma_spatial=0.9,
                                                        sigma_color=0.5, radius=3))


# ---------------------------------------------------------------------------------------------
# Bilateral filter: bad input


@pytest.mark.parametrize("name", ["sigma_spatial", "sigma_color"])
@pytest.mark.parametrize("value", [0.0, -1.0, np.nan, np.inf])
def test_bad_sigmas(name, value):
    kwargs = {"sigma_spatial": 1.0, "sigma_color": 0.1, name: value}
    with pytest.raises(ValueError, match=name):
        bilateral_filter(np.zeros((4, 4)), **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"radius": 10**6}, ValueError, "radius"),
    ({"radius": -1}, ValueError, "radius"),
    ({"radius": 2.5}, TypeError, "radius"),
    ({"window": "circle"}, ValueError, "window"),
    ({"color_distance": "linf"}, ValueError, "color_distance"),
    ({"mode": "symmetric"}, ValueError, "mode"),
    ({"cval": np.nan}, ValueError, "cval"),
    ({"channel_axis": 2}, ValueError, "channel_axis"),   # (4, 4): a 1-D signal at most
    ({"guide": np.zeros((4, 5))}, ValueError, "guide"),
])
def test_bad_arguments(kwargs, error, match):
    arguments = {"sigma_spatial": 1.0, "sigma_color": 0.1, "radius": 1, **kwargs}
    with pytest.raises(error, match=match):
        bilateral_filter(np.zeros((4, 4)), **arguments)


def test_bad_channel_axis_and_types():
    with pytest.raises(ValueError, match="channel_axis"):
        bilateral_filter(np.zeros((4, 4, 3)), sigma_spatial=1, sigma_color=1, channel_axis=3)
    with pytest.raises(ValueError, match="channel_axis"):   # 4-D: a multichannel volume at most
        bilateral_filter(np.zeros((4, 4, 3, 2)), sigma_spatial=1, sigma_color=1)
    with pytest.raises(TypeError, match="image"):
        bilateral_filter(np.zeros((4, 4), complex), sigma_spatial=1, sigma_color=1)
    with pytest.raises(ValueError, match="empty"):
        bilateral_filter(np.zeros((0, 4)), sigma_spatial=1, sigma_color=1)


# ---------------------------------------------------------------------------------------------
# Joint bilateral upsampling


def naive_joint_upsample(low, guide, factor, sigma_spatial, sigma_color, radius):
    """Kopf et al. from the definition, pixel by pixel: (C, h, w) low, (G, H, W) guide."""
    low = np.asarray(low, np.float64)
    guide = np.asarray(guide, np.float64)
    _, h, w = low.shape
    _, height, width = guide.shape
    fy, fx = factor
    out = np.zeros((low.shape[0], height, width))
    for y in range(height):
        for x in range(width):
            nearest_i = int(np.floor((y + 0.5) / fy))
            nearest_j = int(np.floor((x + 0.5) / fx))
            numerator = np.zeros(low.shape[0])
            denominator = 0.0
            for i in range(nearest_i - radius, nearest_i + radius + 1):
                for j in range(nearest_j - radius, nearest_j + radius + 1):
                    if not (0 <= i < h and 0 <= j < w):
                        continue
                    gy = min(i * fy + (fy - 1) // 2, height - 1)
                    gx = min(j * fx + (fx - 1) // 2, width - 1)
                    dist2 = ((y + 0.5) / fy - (i + 0.5)) ** 2 + ((x + 0.5) / fx - (j + 0.5)) ** 2
                    range2 = np.sum((guide[:, y, x] - guide[:, gy, gx]) ** 2)
                    weight = np.exp(-dist2 / (2 * sigma_spatial**2)
                                    - range2 / (2 * sigma_color**2))
                    numerator += weight * low[:, i, j]
                    denominator += weight
            out[:, y, x] = numerator / denominator
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("high_shape, factor", [((13, 10), (3, 3)), ((8, 12), (4, 2)),
                                                ((9, 9), (2, 2)), ((1, 11), (1, 4))])
def test_joint_upsample_matches_naive(dtype, high_shape, factor, rng):
    low_shape = tuple(-(-n // f) for n, f in zip(high_shape, factor))
    low = rng.random((2,) + low_shape).astype(dtype)
    guide = rng.random(high_shape + (3,)).astype(dtype)
    out = joint_bilateral_upsample(np.moveaxis(low, 0, -1), guide, factor=factor,
                                   sigma_spatial=0.8, sigma_color=0.4, radius=1,
                                   channel_axis=-1)
    expected = naive_joint_upsample(low, np.moveaxis(guide, -1, 0), factor, 0.8, 0.4, 1)
    assert out.dtype == dtype and out.shape == high_shape + (2,)
    np.testing.assert_allclose(np.moveaxis(out, -1, 0), expected, rtol=0,
                               atol=3e-6 if dtype == np.float32 else 1e-12)


def test_joint_upsample_generic_path_and_underflow(rng):
    low = rng.random((1, 4, 5)).astype(np.float32)
    guide = rng.random((1, 12, 15)).astype(np.float32)
    # sigma_color this small underflows every float32 weight of most pixels: the kernel must
    # fall back to weights relative to the largest, as the generic path does throughout.
    for sigma_color in (0.3, 0.004):
        out = joint_bilateral_upsample(low[0], guide[0], sigma_spatial=1.0,
                                       sigma_color=sigma_color, radius=2)
        with generic_kernels():
            generic = joint_bilateral_upsample(low[0], guide[0], sigma_spatial=1.0,
                                               sigma_color=sigma_color, radius=2)
        assert np.all(np.isfinite(out))
        # Where the largest weight is itself tiny (~exp(-60)), the kernel flushes the others
        # below exp(-69) while the generic path keeps them relative to it: 1e-4 apart at most.
        np.testing.assert_allclose(out, generic, rtol=0, atol=1e-5 if sigma_color > 0.1 else 1e-4)


def test_joint_upsample_default_factor_and_constant():
    low = np.full((5, 4), 2.5)
    guide = np.random.default_rng(1).random((17, 13))
    out = joint_bilateral_upsample(low, guide, sigma_color=0.1)
    assert out.shape == (17, 13)
    np.testing.assert_allclose(out, 2.5, rtol=1e-14)


def _piecewise_smooth_depth(photo):
    """A 'depth' with jumps exactly at the photograph's edges and smooth elsewhere: its
    luminance flattened by an edge-preserving filter (three bilateral passes), plus a ramp."""
    luminance = photo.mean(axis=-1)
    for _ in range(3):
        luminance = bilateral_filter(luminance, sigma_spatial=3.0, sigma_color=0.1)
    yy, xx = np.mgrid[: luminance.shape[0], : luminance.shape[1]] / luminance.shape[0]
    return 4.0 * luminance + yy + xx


def _bilinear(low, shape):
    factor = shape[0] // low.shape[0]
    coords = (np.arange(shape[0]) + 0.5) / factor - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    return ndi.map_coordinates(low, [yy, xx], order=1, mode="nearest")


def test_joint_upsampling_beats_bilinear_on_a_photograph():
    photo = _photo().astype(np.float64) / 255.0
    depth = _piecewise_smooth_depth(photo)
    table = {}
    for factor in (4, 8, 16):
        low = depth.reshape(512 // factor, factor, 512 // factor, factor).mean(axis=(1, 3))
        guided = joint_bilateral_upsample(low, photo, sigma_spatial=1.0, sigma_color=0.1,
                                          radius=2)
        rmse_guided = np.sqrt(np.mean((guided - depth) ** 2))
        rmse_bilinear = np.sqrt(np.mean((_bilinear(low, depth.shape) - depth) ** 2))
        table[factor] = (rmse_guided, rmse_bilinear)
    print("\nfactor  RMSE joint bilateral  RMSE bilinear  ratio")
    for factor, (guided, bilinear) in table.items():
        print(f"x{factor:<6} {guided:20.4f} {bilinear:14.4f} {guided / bilinear:6.3f}")
    guided, bilinear = table[8]
    assert guided <= 0.8 * bilinear


@pytest.mark.parametrize("kwargs, match", [
    ({"factor": 3}, "guide size"),
    ({"factor": 0}, "factor"),
    ({"sigma_color": 0.0}, "sigma_color"),
    ({"sigma_spatial": np.nan}, "sigma_spatial"),
    ({"radius": 1000}, "radius"),
])
def test_joint_upsample_bad_arguments(kwargs, match):
    arguments = {"sigma_color": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        joint_bilateral_upsample(np.zeros((4, 4)), np.zeros((16, 16)), **arguments)


def test_joint_upsample_shape_mismatch():
    with pytest.raises(ValueError, match="guide size"):
        joint_bilateral_upsample(np.zeros((4, 4)), np.zeros((16, 30)), factor=4,
                                 sigma_color=0.1)
    with pytest.raises(ValueError, match="guide"):
        joint_bilateral_upsample(np.zeros((4, 4)), np.zeros((16, 16, 3, 1)), sigma_color=0.1)


# ---------------------------------------------------------------------------------------------
# Normalized convolution


def naive_normalized_convolution(data, certainty, sigma_spatial, radius, guide=None,
                                 sigma_color=None):
    """(C, H, W) data, (H, W) certainty, optional (G, H, W) guide; zero padding."""
    data = np.asarray(data, np.float64)
    _, height, width = data.shape
    pad = ((radius, radius), (radius, radius))
    padded_data = np.pad(data, ((0, 0),) + pad)
    padded_certainty = np.pad(certainty.astype(np.float64), pad)
    inside = np.pad(np.ones((height, width)), pad)
    if guide is not None:
        padded_guide = np.pad(guide.astype(np.float64), ((0, 0),) + pad)
    numerator = np.zeros_like(data)
    denominator = np.zeros((height, width))
    applicability = np.zeros((height, width))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            rows = slice(radius + dy, radius + dy + height)
            cols = slice(radius + dx, radius + dx + width)
            a = np.exp(-(dy * dy + dx * dx) / (2 * sigma_spatial**2)) * inside[rows, cols]
            if guide is not None:
                d2 = ((padded_guide[:, rows, cols] - guide) ** 2).sum(0)
                a = a * np.exp(-d2 / (2 * sigma_color**2))
            numerator += a * padded_certainty[rows, cols] * padded_data[:, rows, cols]
            denominator += a * padded_certainty[rows, cols]
            applicability += a
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0), denominator / applicability


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalized_convolution_matches_naive(guided, dtype, rng):
    data = rng.random((2, 9, 11)).astype(dtype)
    certainty = rng.random((9, 11))
    certainty[certainty < 0.4] = 0.0
    guide = rng.random((9, 11)).astype(dtype) if guided else None
    out, confidence = normalized_convolution(
        data, certainty, sigma_spatial=1.2, radius=2, guide=guide,
        sigma_color=0.3 if guided else None, channel_axis=0)
    expected, expected_confidence = naive_normalized_convolution(
        data, certainty, 1.2, 2, None if guide is None else guide[None], 0.3)
    tolerance = 2e-6 if dtype == np.float32 else 1e-12
    assert out.dtype == dtype and out.shape == data.shape and confidence.shape == (9, 11)
    np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(confidence, expected_confidence, rtol=0, atol=tolerance)
    assert np.all((confidence >= 0) & (confidence <= 1 + tolerance))


def test_normalized_convolution_per_channel_certainty_and_empty_windows(rng):
    data = rng.random((7, 8, 2))
    certainty = np.ones((7, 8, 2))
    certainty[:, :, 1] = 0.0  # channel 1 has no data at all
    out, confidence = normalized_convolution(data, certainty, sigma_spatial=1.0, radius=1,
                                             channel_axis=-1)
    np.testing.assert_array_equal(out[..., 1], 0.0)
    np.testing.assert_array_equal(confidence[..., 1], 0.0)
    np.testing.assert_allclose(confidence[..., 0], 1.0, rtol=1e-12)
    expected, _ = naive_normalized_convolution(data[..., 0][None], certainty[..., 0], 1.0, 1)
    np.testing.assert_allclose(out[..., 0], expected[0], rtol=0, atol=1e-12)


def test_guided_normalized_convolution_beats_unguided_with_90_percent_missing():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96] / 96.0
    regions = (xx + 0.3 * np.sin(6 * yy) > 0.5).astype(np.float64)  # a curved edge
    field = np.where(regions > 0, 2.0 + 0.5 * yy, 0.5 * xx)      # smooth on either side
    certainty = (rng.random(field.shape) < 0.1).astype(np.float64)  # 90 % removed
    guide = regions + rng.normal(0, 0.02, field.shape)
    unguided, _ = normalized_convolution(field, certainty, sigma_spatial=3.0)
    guided, _ = normalized_convolution(field, certainty, sigma_spatial=3.0, guide=guide,
                                       sigma_color=0.1)
    rmse_unguided = np.sqrt(np.mean((unguided - field) ** 2))
    rmse_guided = np.sqrt(np.mean((guided - field) ** 2))
    assert rmse_guided < 0.5 * rmse_unguided


@pytest.mark.parametrize("certainty, match", [
    (np.full((5, 5), 1.5), r"\[0, 1\]"),
    (np.full((5, 5), -0.1), r"\[0, 1\]"),
    (np.full((5, 5), np.nan), r"\[0, 1\]"),
    (np.ones((5, 4)), "certainty must have shape"),
])
def test_normalized_convolution_bad_certainty(certainty, match):
    with pytest.raises(ValueError, match=match):
        normalized_convolution(np.zeros((5, 5)), certainty, sigma_spatial=1.0)


def test_normalized_convolution_guide_arguments():
    data, certainty = np.zeros((5, 5)), np.ones((5, 5))
    with pytest.raises(ValueError, match="sigma_color"):
        normalized_convolution(data, certainty, sigma_spatial=1.0, guide=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="sigma_color"):
        normalized_convolution(data, certainty, sigma_spatial=1.0, sigma_color=0.1)
    with pytest.raises(ValueError, match="guide"):
        normalized_convolution(data, certainty, sigma_spatial=1.0, guide=np.zeros((4, 5)),
                               sigma_color=0.1)
    with pytest.raises(ValueError, match="sigma_spatial"):
        normalized_convolution(data, certainty, sigma_spatial=-1.0)


def test_large_radius_with_small_sigma_is_exact_and_cheap(rng):
    # Taps beyond sqrt(1200) * sigma have weights below exp(-600): dropped without changing the
    # result, so a radius of 40 costs what a radius of 17 does.
    image = rng.random((12, 12))
    out = bilateral_filter(image, sigma_spatial=0.5, sigma_color=0.3, radius=40, mode="wrap")
    expected = naive_bilateral(image[None], image[None], 0.5, 0.3, 40, mode="wrap")[0]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    with generic_kernels():
        generic = bilateral_filter(image, sigma_spatial=0.5, sigma_color=0.3, radius=40,
                                   mode="wrap")
    np.testing.assert_allclose(generic, expected, rtol=0, atol=1e-12)


def test_default_radius_is_capped_not_an_error(rng):
    # The default radius ceil(3 sigma) is capped at RADIUS_LIMIT_FACTOR x the largest side: a
    # huge sigma_spatial or a 1 x 1 image works instead of raising (an explicit radius beyond
    # the cap still raises, see test_bad_arguments).
    image = rng.random((5, 6))
    out = bilateral_filter(image, sigma_spatial=1e7, sigma_color=0.3)
    capped = bilateral_filter(image, sigma_spatial=1e7, sigma_color=0.3, radius=24)
    np.testing.assert_array_equal(out, capped)
    pixel = np.array([[0.25]], np.float32)
    np.testing.assert_allclose(bilateral_filter(pixel, sigma_spatial=2.0, sigma_color=0.1),
                               pixel, rtol=1e-6)
