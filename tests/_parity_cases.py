"""pacarray against the float64 oracle (tests/reference.py) over a curated grid of cases.

Each case fixes the geometry, the kernel family, the normalization (with or without mask), the
smoothing, the spatial weight, ``channel_wise``, the dtype and the batch size. The values of
every factor are spread over the cases by a seeded shuffle (each value appears several times,
combinations vary) rather than a cartesian product, so the file stays fast. Every case checks
``pac_kernel`` and all three ops on the explicit-K path, the fused (``guide=``) path or the
no-kernel path, and fused == explicit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage, signal

import pacarray
from reference import (
    forward_out_size,
    ref_conv,
    ref_conv_transpose,
    ref_conv_transpose_scatter,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
    transposed_out_size,
)

# kernel_size, stride, padding, dilation, (H, W)
GEOMETRIES = [
    (1, 1, 0, 1, (1, 1)),
    (1, 2, 0, 1, (5, 4)),
    (3, 1, 1, 1, (1, 1)),
    (3, 1, 0, 1, (5, 7)),
    (3, 2, 1, 1, (7, 6)),
    (3, 3, 1, 2, (9, 11)),
    (5, 1, 2, 1, (6, 9)),
    (5, 2, 4, 2, (3, 5)),
    ((3, 5), (1, 2), (0, 2), 1, (4, 9)),
    ((3, 5), (2, 1), (1, 1), (2, 1), (7, 5)),
    (5, 3, 0, 1, (9, 11)),
    ((5, 3), (1, 3), (2, 1), (1, 2), (5, 8)),
    (3, 2, 0, 2, (5, 5)),
    (1, 1, 0, 2, (2, 3)),
]
# name -> (kind, alpha, lambda_, eps, asymmetric); alpha/lambda_ "pc" means per channel.
FAMILIES = {
    "gaussian": ("gaussian", None, None, None, False),
    "inverse": ("inverse_power", 0.5, -1.0, 1e-2, False),
    "inverse_asym": ("inverse_power", 0.2, -0.5, 0.1, True),
    "inverse_pos": ("inverse_power", 0.0, 2.0, 0.0, False),
    "inverse_pc": ("inverse_power", "pc", "pc", 0.05, False),
    "inverse_asym_pc": ("inverse_power", "pc", "pc", 1e-2, True),
    "none": (None, None, None, None, False),
}
PER_CHANNEL_ALPHA = (0.1, 0.5, 1.0)
PER_CHANNEL_LAMBDA = (-1.0, -0.5, 1.0)
NORMALIZATIONS = [
    (None, False),
    (None, True),
    ("kernel", False),
    ("kernel", True),
    ("mask", True),
    ("mask_kernel", True),
]
SMOOTHS = [None, "gaussian", ("average", 3), "user"]
SPATIALS = [None, "square", "disk", "disk_gauss"]
DTYPES = [np.float64, np.float32]


@dataclass(frozen=True)
class Case:
    index: int
    geometry: tuple
    family: str
    normalize: str | None
    mask: bool
    smooth: object
    spatial: str | None
    channel_wise: bool
    dtype: type
    batch: int
    channels: int

    @property
    def id(self):
        k, s, p, d, size = self.geometry
        smooth = self.smooth[0] if isinstance(self.smooth, tuple) else self.smooth
        return (
            f"{self.index}-k{k}s{s}p{p}d{d}-{size[0]}x{size[1]}-{self.family}-"
            f"{self.normalize}{'+mask' if self.mask else ''}-sm{smooth}-sw{self.spatial}-"
            f"{'cw' if self.channel_wise else 'sh'}-{np.dtype(self.dtype).name}-n{self.batch}"
        )


def _spread(values, count, seed):
    """``values`` repeated to ``count`` entries and shuffled with a fixed seed."""
    repeated = [values[i % len(values)] for i in range(count)]
    order = np.random.default_rng(seed).permutation(count)
    return [repeated[i] for i in order]


def _make_cases(count=48):
    geometries = _spread(GEOMETRIES, count, 1)
    families = _spread(list(FAMILIES), count, 2)
    normalizations = _spread(NORMALIZATIONS, count, 3)
    smooths = _spread(SMOOTHS, count, 4)
    spatials = _spread(SPATIALS, count, 5)
    channel_wise = _spread([False, True], count, 6)
    dtypes = _spread(DTYPES, count, 7)
    batches = _spread([1, 2], count, 8)
    channels = _spread([1, 2, 3], count, 9)
    cases = []
    for i in range(count):
        family = families[i]
        cw = channel_wise[i] or family.endswith("_pc")
        smooth = smooths[i]
        if family == "none":  # no guide: no channel-wise kernel, nothing to smooth
            cw, smooth = False, None
        normalize, mask = normalizations[i]
        cases.append(
            Case(i, geometries[i], family, normalize, mask, smooth, spatials[i], cw, dtypes[i],
                 batches[i], channels[i])
        )
    return cases


CASES = _make_cases()
CASE_IDS = [case.id for case in CASES]


def _pair(value):
    return (value, value) if np.ndim(value) == 0 else tuple(value)


@dataclass
class Prepared:
    """Inputs (at the case's dtype) and the oracle's outputs (float64) of one case."""

    case: Case
    x: np.ndarray
    guide: np.ndarray | None
    weight: np.ndarray
    shared_weight: np.ndarray
    bias: np.ndarray
    family_object: object
    options: dict  # smooth / spatial_weight / mask / normalize / channel_wise for the fused path
    geometry: dict
    K: np.ndarray
    valid: np.ndarray
    conv: np.ndarray
    conv_shared: np.ndarray
    pool: np.ndarray
    # transposed op
    xt: np.ndarray
    guide_t: np.ndarray | None
    weight_t: np.ndarray
    shared_weight_t: np.ndarray
    options_t: dict
    geometry_t: dict
    K_t: np.ndarray
    valid_t: np.ndarray
    conv_t: np.ndarray
    conv_t_shared: np.ndarray


def _as(dtype, array):
    return None if array is None else np.asarray(array, dtype=dtype)


def _oracle_family(case, features):
    kind, alpha, lambda_, eps, asymmetric = FAMILIES[case.family]
    if alpha == "pc":
        alpha, lambda_ = PER_CHANNEL_ALPHA[:features], PER_CHANNEL_LAMBDA[:features]
    if kind == "gaussian":
        return pacarray.Gaussian(), dict(family="gaussian")
    if kind is None:
        return None, dict(family=None)
    obj = pacarray.InversePower(alpha, lambda_, eps=eps, asymmetric=asymmetric)
    return obj, dict(family="inverse_power", alpha=np.asarray(alpha), lambda_=np.asarray(lambda_),
                     eps=eps, asymmetric=asymmetric)


def _spatial(kind, kernel_size, dilation):
    if kind is None:
        return None
    if kind == "square":
        return ref_spatial_window(kernel_size, 1.2, "square", dilation)
    if kind == "disk":
        return ref_spatial_window(kernel_size, None, "disk", dilation)
    return ref_spatial_window(kernel_size, 2.0, "disk", dilation)


def _mask(rng, batch, shape):
    mask = rng.random((batch, 1) + shape)
    mask[mask < 0.25] = 0.0
    return mask


@functools.lru_cache(maxsize=None)
def prepared(index):
    case = CASES[index]
    rng = np.random.default_rng(1000 + index)
    dtype = case.dtype
    kernel_size, stride, padding, dilation, (height, width) = case.geometry
    kh, kw = _pair(kernel_size)
    n, c = case.batch, case.channels
    features = c if case.channel_wise else 1 + index % 3
    family_object, oracle_family = _oracle_family(case, features)
    has_guide = case.family != "none"
    scale = 0.8 if oracle_family["family"] == "gaussian" else 1.0

    smooth = case.smooth
    if smooth == "user":
        smooth = _as(dtype, rng.random((3, 5)) / 7.0)
    spatial = _as(dtype, _spatial(case.spatial, (kh, kw), dilation))
    geometry = dict(stride=stride, padding=padding, dilation=dilation)

    def options(mask):
        out = dict(spatial_weight=spatial, mask=mask, normalize=case.normalize)
        if has_guide:
            out.update(smooth=smooth, channel_wise=case.channel_wise)
        return out

    def oracle_options(mask):
        oracle_smooth = _as(np.float64, smooth) if isinstance(smooth, np.ndarray) else smooth
        return dict(smooth=oracle_smooth, spatial_weight=_as(np.float64, spatial), mask=mask,
                    normalize=case.normalize, channel_wise=case.channel_wise, **oracle_family)

    x = _as(dtype, rng.standard_normal((n, c, height, width)))
    guide = _as(dtype, scale * rng.standard_normal((n, features, height, width)))
    mask = _mask(rng, n, (height, width)) if case.mask else None
    weight = _as(dtype, rng.standard_normal((2, c, kh, kw)))
    shared_weight = _as(dtype, rng.standard_normal((1, 1, kh, kw)))
    bias = _as(dtype, rng.standard_normal(2))
    K, valid = ref_kernel(guide, (kh, kw), stride, padding, dilation, **oracle_options(mask))
    conv = ref_conv(x, K, weight, bias, stride, padding, dilation)
    conv_shared = ref_conv(x, K, shared_weight, None, stride, padding, dilation)
    pool = ref_pool(x, K, None, stride, padding, dilation)

    # Transposed: the largest legal output_padding on odd cases, 0 on even ones.
    sy, sx = _pair(stride)
    dy, dx = _pair(dilation)
    output_padding = (
        (max(sy, dy) - 1, max(sx, dx) - 1) if index % 2 else (0, 0)
    )
    in_h, in_w = max(1, height // sy), max(1, width // sx)
    py, px = _pair(padding)
    out_h = transposed_out_size(in_h, kh, sy, py, dy, output_padding[0])
    out_w = transposed_out_size(in_w, kw, sx, px, dx, output_padding[1])
    geometry_t = dict(geometry, output_padding=output_padding)
    xt = _as(dtype, rng.standard_normal((n, c, in_h, in_w)))
    guide_t = _as(dtype, scale * rng.standard_normal((n, features, out_h, out_w)))
    mask_t = _mask(rng, n, (out_h, out_w)) if case.mask else None
    weight_t = _as(dtype, rng.standard_normal((c, 2, kh, kw)))
    shared_weight_t = _as(dtype, rng.standard_normal((1, 1, kh, kw)))
    K_t, valid_t = ref_kernel(guide_t, (kh, kw), stride, padding, dilation, transposed=True,
                              **oracle_options(mask_t))
    conv_t = ref_conv_transpose(xt, K_t, weight_t, bias, stride, padding, dilation,
                                output_padding)
    conv_t_shared = ref_conv_transpose(xt, K_t, shared_weight_t, None, stride, padding,
                                       dilation, output_padding)
    return Prepared(
        case, x, guide if has_guide else None, weight, shared_weight, bias, family_object,
        options(mask), geometry, K, valid, conv, conv_shared, pool,
        xt, guide_t if has_guide else None, weight_t, shared_weight_t, options(mask_t),
        geometry_t, K_t, valid_t, conv_t, conv_t_shared,
    )


def _fused_kwargs(prep, transposed=False):
    guide = prep.guide_t if transposed else prep.guide
    kwargs = dict(prep.options_t if transposed else prep.options)
    kwargs.update(prep.geometry_t if transposed else prep.geometry)
    if guide is not None:
        kwargs.update(guide=guide, family=prep.family_object)
    return kwargs


def _explicit_kwargs(prep, K, transposed=False):
    kwargs = dict(prep.geometry_t if transposed else prep.geometry)
    kwargs["kernel"] = np.asarray(K, dtype=prep.case.dtype)
    return kwargs


def test_grid_covers_every_option():
    seen = {name: set() for name in ["family", "normalize", "smooth", "spatial", "cw", "dtype",
                                     "batch", "k", "s", "d", "masked_norm"]}
    for case in CASES:
        k, s, _, d, _ = case.geometry
        seen["family"].add(case.family)
        seen["normalize"].add(case.normalize)
        seen["smooth"].add(str(case.smooth))
        seen["spatial"].add(case.spatial)
        seen["cw"].add(case.channel_wise)
        seen["dtype"].add(np.dtype(case.dtype).name)
        seen["batch"].add(case.batch)
        seen["k"].add(str(k))
        seen["s"].update(_pair(s))
        seen["d"].update(_pair(d))
        seen["masked_norm"].add((case.normalize, case.mask))
    assert seen["family"] == set(FAMILIES)
    assert seen["normalize"] == {None, "kernel", "mask", "mask_kernel"}
    assert len(seen["smooth"]) == 4 and len(seen["spatial"]) == 4
    assert seen["cw"] == {False, True} and seen["batch"] == {1, 2}
    assert seen["dtype"] == {"float32", "float64"}
    assert {"1", "3", "5", "(3, 5)"} <= seen["k"]
    assert seen["s"] == {1, 2, 3} and seen["d"] == {1, 2}
    assert seen["masked_norm"] == set(NORMALIZATIONS)


GUIDED = [case.index for case in CASES if case.family != "none"]  # pac_kernel needs a guide


@pytest.mark.parametrize("index", GUIDED, ids=[CASE_IDS[i] for i in GUIDED])
def test_pac_kernel(index, assert_close):
    prep = prepared(index)
    dtype = prep.case.dtype
    kh, kw = prep.K.shape[2:4]
    kwargs = _fused_kwargs(prep)
    guide = kwargs.pop("guide")
    K, valid = pacarray.pac_kernel(guide, (kh, kw), return_validity=True, **kwargs)
    assert_close(K, prep.K, dtype)
    assert valid.dtype == np.bool_
    np.testing.assert_array_equal(valid, prep.valid)
    assert np.all(K[~np.broadcast_to(prep.valid[:, :, None, None], K.shape)] == 0)

    kwargs = _fused_kwargs(prep, transposed=True)
    guide = kwargs.pop("guide")
    K_t, valid_t = pacarray.pac_kernel(guide, (kh, kw), transposed=True, return_validity=True,
                                       **kwargs)
    assert_close(K_t, prep.K_t, dtype)
    np.testing.assert_array_equal(valid_t, prep.valid_t)
    # Without return_validity just K comes back.
    assert_close(pacarray.pac_kernel(guide, (kh, kw), transposed=True, **kwargs), prep.K_t,
                 dtype)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_pac_conv(index, assert_close):
    prep = prepared(index)
    dtype = prep.case.dtype
    explicit = pacarray.pac_conv(prep.x, prep.weight, prep.bias, **_explicit_kwargs(prep, prep.K))
    assert_close(explicit, prep.conv, dtype)
    fused = pacarray.pac_conv(prep.x, prep.weight, prep.bias, **_fused_kwargs(prep))
    assert_close(fused, prep.conv, dtype)
    assert_close(fused, explicit.astype(np.float64), dtype)
    shared = pacarray.pac_conv(prep.x, prep.shared_weight, **_fused_kwargs(prep))
    assert_close(shared, prep.conv_shared, dtype)
    shared_explicit = pacarray.pac_conv(prep.x, prep.shared_weight,
                                        **_explicit_kwargs(prep, prep.K))
    assert_close(shared_explicit, prep.conv_shared, dtype)
    if prep.guide is not None:
        # Explicit K from pac_kernel itself: the two public paths agree.
        kwargs = _fused_kwargs(prep)
        guide = kwargs.pop("guide")
        K = pacarray.pac_kernel(guide, prep.K.shape[2:4], **kwargs)
        via_kernel = pacarray.pac_conv(prep.x, prep.weight, prep.bias,
                                       **_explicit_kwargs(prep, K))
        assert_close(via_kernel, fused.astype(np.float64), dtype)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_pac_pool(index, assert_close):
    prep = prepared(index)
    dtype = prep.case.dtype
    kernel_size = tuple(prep.K.shape[2:4])
    explicit = pacarray.pac_pool(prep.x, kernel_size, **_explicit_kwargs(prep, prep.K))
    assert_close(explicit, prep.pool, dtype)
    fused = pacarray.pac_pool(prep.x, kernel_size, **_fused_kwargs(prep))
    assert_close(fused, prep.pool, dtype)
    assert_close(fused, explicit.astype(np.float64), dtype)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_pac_conv_transpose(index, assert_close):
    prep = prepared(index)
    dtype = prep.case.dtype
    explicit = pacarray.pac_conv_transpose(prep.xt, prep.weight_t, prep.bias,
                                           **_explicit_kwargs(prep, prep.K_t, True))
    assert_close(explicit, prep.conv_t, dtype)
    fused = pacarray.pac_conv_transpose(prep.xt, prep.weight_t, prep.bias,
                                        **_fused_kwargs(prep, True))
    assert_close(fused, prep.conv_t, dtype)
    assert_close(fused, explicit.astype(np.float64), dtype)
    shared = pacarray.pac_conv_transpose(prep.xt, prep.shared_weight_t,
                                         **_fused_kwargs(prep, True))
    assert_close(shared, prep.conv_t_shared, dtype)
    shared_explicit = pacarray.pac_conv_transpose(prep.xt, prep.shared_weight_t,
                                                  **_explicit_kwargs(prep, prep.K_t, True))
    assert_close(shared_explicit, prep.conv_t_shared, dtype)


# --- special cases through the public API --------------------------------------------------


def _dilate(w, dilation):
    dy, dx = dilation
    out = np.zeros((dy * (w.shape[0] - 1) + 1, dx * (w.shape[1] - 1) + 1))
    out[::dy, ::dx] = w
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size, dilation", [(1, 1), (3, 1), (5, 2), ((3, 5), (2, 1))])
def test_plain_conv_is_ndimage_correlate(rng, assert_close, dtype, kernel_size, dilation):
    kh, kw = _pair(kernel_size)
    dy, dx = _pair(dilation)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    w = rng.standard_normal((1, 1, kh, kw)).astype(dtype)
    padding = (dy * (kh - 1) // 2, dx * (kw - 1) // 2)
    actual = pacarray.pac_conv(x, w, padding=padding, dilation=dilation)
    taps = _dilate(w[0, 0].astype(np.float64), (dy, dx))
    expected = np.array(
        [[ndimage.correlate(x[n, c].astype(np.float64), taps, mode="constant") for c in range(3)]
         for n in range(2)]
    )
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation",
    [(3, 2, 0, 1), (3, (1, 3), 1, 2), ((5, 3), 2, (2, 1), 1), (1, 3, 0, 1)],
)
def test_plain_full_conv_is_signal_correlate(rng, assert_close, dtype, kernel_size, stride,
                                             padding, dilation):
    kh, kw = _pair(kernel_size)
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    x = rng.standard_normal((2, 3, 9, 10)).astype(dtype)
    w = rng.standard_normal((4, 3, kh, kw)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    actual = pacarray.pac_conv(x, w, b, stride=stride, padding=padding, dilation=dilation)
    x64 = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (py, py), (px, px)])
    expected = np.zeros(actual.shape)
    for n in range(2):
        for o in range(4):
            for c in range(3):
                full = signal.correlate(x64[n, c], _dilate(w[o, c].astype(np.float64),
                                                           _pair(dilation)), mode="valid")
                expected[n, o] += full[::sy, ::sx]
            expected[n, o] += b[o]
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 2),
                                               ((3, 5), (1, 2), (1, 2), 1)]
)
def test_plain_pool_kernel_normalized_is_average(rng, assert_close, dtype, kernel_size, stride,
                                                 padding, dilation):
    kh, kw = _pair(kernel_size)
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    x = rng.standard_normal((2, 2, 7, 9)).astype(dtype)
    actual = pacarray.pac_pool(x, kernel_size, stride=stride, padding=padding,
                               dilation=dilation, normalize="kernel")
    expected = np.zeros(actual.shape)
    for i in range(actual.shape[2]):
        for j in range(actual.shape[3]):
            rows = [i * sy - py + a * _pair(dilation)[0] for a in range(kh)]
            cols = [j * sx - px + b * _pair(dilation)[1] for b in range(kw)]
            rows = [r for r in rows if 0 <= r < 7]
            cols = [q for q in cols if 0 <= q < 9]
            window = x[:, :, rows][:, :, :, cols].astype(np.float64)
            expected[:, :, i, j] = window.mean(axis=(2, 3))
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation, output_padding",
    [(3, 1, 1, 1, 0), (3, 2, 1, 1, 1), ((3, 5), (2, 3), (0, 2), (2, 1), (1, 2)),
     (5, 3, 4, 2, 2), (1, 2, 0, 1, 1)],
)
def test_plain_conv_transpose_is_scatter(rng, assert_close, dtype, kernel_size, stride, padding,
                                         dilation, output_padding):
    kh, kw = _pair(kernel_size)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    w = rng.standard_normal((3, 2, kh, kw)).astype(dtype)
    b = rng.standard_normal(2).astype(dtype)
    geometry = dict(stride=stride, padding=padding, dilation=dilation,
                    output_padding=output_padding)
    actual = pacarray.pac_conv_transpose(x, w, b, **geometry)
    expected = ref_conv_transpose_scatter(x, w, b, **geometry)
    assert_close(actual, expected, dtype)


def test_plain_conv_transpose_is_torch(rng, assert_close):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((3, 4, 3, 5))
    b = rng.standard_normal(4)
    geometry = dict(stride=(3, 2), padding=(1, 2), dilation=(1, 2), output_padding=(2, 1))
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **geometry
    ).numpy()
    assert_close(pacarray.pac_conv_transpose(x, w, b, **geometry), expected, np.float64)


def test_spatial_window_matches_oracle(assert_close):
    for kernel_size in [1, 3, 5, (3, 5), (1, 5)]:
        for sigma in [None, 0.7, 2.0]:
            for window in ["square", "disk"]:
                for dilation in [1, 2, (2, 1)]:
                    actual = pacarray.spatial_window(kernel_size, sigma, window=window,
                                                     dilation=dilation)
                    expected = ref_spatial_window(kernel_size, sigma, window, dilation)
                    assert_close(actual, expected, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["mask", "mask_kernel"])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_zero_normalizer_gives_zero_output_and_invalid(rng, dtype, normalize, channel_wise):
    guide = rng.standard_normal((2, 2, 6, 7)).astype(dtype)
    x = rng.standard_normal((2, 2, 6, 7)).astype(dtype)
    mask = np.ones((2, 1, 6, 7), dtype=dtype)
    mask[1, 0, 2:5, 3:6] = 0.0  # the whole 3x3 window of output (3, 4) for padding 1
    common = dict(padding=1, mask=mask, normalize=normalize, channel_wise=channel_wise)
    K, valid = pacarray.pac_kernel(guide, 3, return_validity=True, **common)
    expected_valid = np.ones(valid.shape, dtype=bool)
    expected_valid[1, :, 3, 4] = False
    np.testing.assert_array_equal(valid, expected_valid)
    assert np.all(np.isfinite(K))
    assert np.all(K[1, :, :, :, 3, 4] == 0.0)
    # Elsewhere the normalized weights are genuinely non-zero.
    assert np.all(K[0, :, 1, 1] > 0)
    pooled = pacarray.pac_pool(x, 3, guide=guide, **common)
    conv = pacarray.pac_conv(x, np.ones((1, 1, 3, 3), dtype), guide=guide, **common)
    for out in (pooled, conv):
        assert np.all(np.isfinite(out))
        assert np.all(out[1, :, 3, 4] == 0.0)
        assert np.all(out[0, :, 3, 4] != 0.0)
    # Without normalization there is no Z: all valid.
    _, valid = pacarray.pac_kernel(guide, 3, padding=1, mask=mask, return_validity=True)
    assert valid.all() and valid.shape == (2, 1, 6, 7)


def test_validity_shape_and_dtype_channel_wise(rng):
    guide = rng.standard_normal((1, 3, 5, 6))
    K, valid = pacarray.pac_kernel(guide, 3, stride=2, normalize="kernel", channel_wise=True,
                                   return_validity=True)
    assert K.shape == (1, 3, 3, 3, 2, 2)
    assert valid.shape == (1, 3, 2, 2) and valid.dtype == np.bool_ and valid.all()
    assert forward_out_size(5, 3, 2, 0, 1) == 2


def test_bilateral_through_the_public_api(rng, assert_close):
    # Gaussian K on colour/sigma_r + Gaussian spatial weight + "kernel" == bilateral filter.
    sigma_spatial, sigma_colour, radius = 1.5, 0.3, 2
    image = rng.random((1, 3, 8, 9))
    size = 2 * radius + 1
    actual = pacarray.pac_pool(
        image, size, guide=image / sigma_colour, padding=radius, normalize="kernel",
        spatial_weight=pacarray.spatial_window(size, sigma_spatial),
    )
    expected = np.zeros_like(image)
    for y in range(8):
        for x in range(9):
            total, norm = 0.0, 0.0
            for qy in range(max(0, y - radius), min(8, y + radius + 1)):
                for qx in range(max(0, x - radius), min(9, x + radius + 1)):
                    colour = np.sum((image[0, :, y, x] - image[0, :, qy, qx]) ** 2)
                    weight = np.exp(-((y - qy) ** 2 + (x - qx) ** 2) / (2 * sigma_spatial**2)
                                    - colour / (2 * sigma_colour**2))
                    total = total + weight * image[0, :, qy, qx]
                    norm += weight
            expected[0, :, y, x] = total / norm
    assert_close(actual, expected, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workspace", [None, 1, 4096])
@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_many_channels_and_small_workspace(rng, assert_close, monkeypatch, dtype, workspace, op):
    # Large channel counts may take a blocked / BLAS route; a tiny workspace forces many chunks
    # (including a short last one) wherever the implementation bounds its temporary buffer.
    if workspace is not None:
        monkeypatch.setattr(pacarray.config, "WORKSPACE_BYTES", workspace)
    channels, out_channels = 19, 23
    stride, padding, dilation = (2, 1), (1, 2), (1, 2)
    transposed = op == "conv_transpose"
    x = rng.standard_normal((2, channels, 7, 9)).astype(dtype)
    if transposed:
        weight = rng.standard_normal((channels, out_channels, 3, 5)).astype(dtype)
        out_shape = tuple(transposed_out_size(n, k, s, p, d, 1)
                          for n, k, s, p, d in zip((7, 9), (3, 5), stride, padding, dilation))
        guide_shape = out_shape
    else:
        weight = rng.standard_normal((out_channels, channels, 3, 5)).astype(dtype)
        guide_shape = (7, 9)
    bias = rng.standard_normal(out_channels).astype(dtype)
    guide = rng.standard_normal((2, channels) + guide_shape).astype(dtype)
    mask = rng.random((2, 1) + guide_shape)
    options = dict(mask=mask, normalize="mask_kernel", channel_wise=True, smooth="gaussian",
                   spatial_weight=pacarray.spatial_window((3, 5), 1.5, dilation=dilation)
                   .astype(dtype))
    K, _ = ref_kernel(guide, (3, 5), stride, padding, dilation, transposed=transposed,
                      **{**options, "spatial_weight": ref_spatial_window((3, 5), 1.5,
                                                                         dilation=dilation)})
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    if transposed:
        geometry["output_padding"] = (1, 1)
        expected = ref_conv_transpose(x, K, weight, bias, stride, padding, dilation, (1, 1))
        function = pacarray.pac_conv_transpose
    else:
        expected = ref_conv(x, K, weight, bias, stride, padding, dilation)
        function = pacarray.pac_conv
    fused = function(x, weight, bias, guide=guide, **options, **geometry)
    assert_close(fused, expected, dtype)
    explicit = function(x, weight, bias, kernel=K.astype(dtype), **geometry)
    assert_close(explicit, expected, dtype)
    # Plain convolution (K = 1) through the same route.
    plain = function(x, weight, bias, **geometry)
    if transposed:
        plain_expected = ref_conv_transpose(x, None, weight, bias, stride, padding, dilation,
                                            (1, 1))
    else:
        plain_expected = ref_conv(x, None, weight, bias, stride, padding, dilation)
    assert_close(plain, plain_expected, dtype)


def test_negative_normalizer_still_divides(assert_close):
    """Z < 0 (negative spatial weights) is not Z == 0: K is divided by it and stays valid."""
    guide = np.zeros((1, 1, 1, 3))
    spatial = np.array([[-1.0, -2.0, -1.0]])
    K, valid = pacarray.pac_kernel(
        guide, (1, 3), padding=(0, 1), spatial_weight=spatial, normalize="kernel",
        return_validity=True,
    )
    ref_K, ref_valid = ref_kernel(
        guide, (1, 3), padding=(0, 1), spatial_weight=spatial, normalize="kernel"
    )
    assert valid.all() and ref_valid.all()
    assert_close(K, ref_K, np.float64)
    # every window sums to 1, including the border ones with two in-range taps
    assert np.allclose(K.sum(axis=(2, 3)), 1.0)
