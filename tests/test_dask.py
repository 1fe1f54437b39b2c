"""Dask arrays and xarray DataArrays through the public forward functions, and concurrency.

A Dask call must equal the in-memory call (within 1e-6 of the largest value in float32, 1e-12 in
float64) whatever the chunks: cut at odd offsets, smaller than the halo, ragged, with the
channel axis split, with guide and mask chunked differently from the data. It must stay lazy,
reject what it cannot plan, run under the threaded and the distributed schedulers, and leave
``import pacarray`` free of Dask and xarray. Concurrent in-memory calls from many threads must
give the serial result bit for bit (README, "Threads" and "Dask").
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402
import numba  # noqa: E402

import pacarray  # noqa: E402
from pacarray import InversePower, PairwiseTerm, PaletteTerm  # noqa: E402

H, W = 37, 41

#: Spatial chunks: cuts at odd offsets; rows thinner than every halo (blocks get merged);
#: ragged. (Each block is one in-memory call, ~10 ms on a busy 2-core machine even when tiny,
#: so the thin chunks are thin along one axis only.)
CHUNKINGS = {
    "odd": (7, 9),
    "thin": (2, 20),
    "ragged": ((5, 11, 3, 18), (20, 1, 13, 7)),
}

TOLERANCE = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


def _lazy(array, spatial, chunking, split=1):
    """``array`` as a Dask array chunked by ``chunking`` along the axes ``spatial`` and in
    pieces of ``split`` along every other axis (channel axes included: they get rechunked)."""
    chunks = [split] * array.ndim
    for axis, spec in zip(spatial, chunking):
        chunks[axis] = spec
    return da.from_array(array, chunks=tuple(chunks))


def _assert_equal_to_memory(lazy, expected):
    """``lazy`` is a Dask array with ``expected``'s shape and dtype, and computes to it."""
    assert isinstance(lazy, da.Array), type(lazy)
    assert lazy.shape == expected.shape and lazy.dtype == expected.dtype, (
        lazy.shape, expected.shape, lazy.dtype, expected.dtype)
    value = lazy.compute(scheduler="synchronous")
    assert type(value) is np.ndarray and value.shape == expected.shape
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(value, expected)
        return
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float64).tiny)
    error = float(np.max(np.abs(value.astype(np.float64) - expected))) / scale
    assert error <= TOLERANCE[expected.dtype], f"relative error {error:.2e}"


# --------------------------------------------------------------------------------------------
# The cases: (function, in-memory positional arguments, keywords, the per-pixel arguments'
# spatial axes). ``build(rng, dtype)`` returns them; the Dask call gets the per-pixel ones
# chunked, under the same names.


def _images(rng, dtype):
    return {
        "rgb": rng.random((H, W, 3)).astype(dtype),
        "gray": rng.random((H, W)).astype(dtype),
        "x": rng.standard_normal((2, 3, H, W)).astype(dtype),
        "guide": rng.standard_normal((2, 2, H, W)).astype(dtype),
        "mask": rng.random((2, 1, H, W)).astype(dtype),
    }


def _core_cases(rng, dtype):
    a = _images(rng, dtype)
    x, guide, mask = a["x"], a["guide"], a["mask"]
    weight = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    nchw = (2, 3)
    kernel = pacarray.pac_kernel(guide, 3, padding=1, normalize="kernel")
    transposed_shape = ((H - 1) * 2 - 2 + 2 + 1 + 1, (W - 1) * 2 - 2 + 2 + 1 + 1)
    guide_t = rng.standard_normal((2, 2, *transposed_shape)).astype(dtype)
    mask_t = rng.random((2, 1, *transposed_shape)).astype(dtype)
    kernel_t = pacarray.pac_kernel(rng.standard_normal((2, 1, 3 * H - 3 + 5, 3 * W - 3 + 5)),
                                   3, stride=3, dilation=2, transposed=True)
    return {
        "pool-guide-mask-smooth": (pacarray.pac_pool, (x, 3), dict(
            guide=guide, mask=mask, normalize="mask_kernel", padding=1, smooth="gaussian"),
            {"x": nchw, "guide": nchw, "mask": nchw}),
        "pool-stride2-dilation2": (pacarray.pac_pool, (x, 3), dict(
            guide=guide, stride=2, padding=1, dilation=2, normalize="kernel"),
            {"x": nchw, "guide": nchw}),
        "pool-stride3-no-guide": (pacarray.pac_pool, (x, (3, 5)), dict(
            stride=3, padding=(1, 2), normalize="kernel"), {"x": nchw}),
        "pool-channel-wise": (pacarray.pac_pool, (x, 5), dict(
            guide=a["x"] * 2, channel_wise=True, family=InversePower([0.1, 0.2, 0.3], 1.0),
            normalize="kernel", padding=2, smooth=("average", 5)),
            {"x": nchw, "guide": nchw}),
        "pool-explicit-kernel": (pacarray.pac_pool, (x, 3), dict(kernel=kernel, padding=1),
                                 {"x": nchw, "kernel": (4, 5)}),
        "conv-guide-bias-stride2": (pacarray.pac_conv, (x, weight, np.arange(4.0)), dict(
            guide=guide, stride=2, padding=1, mask=mask), {"x": nchw, "guide": nchw,
                                                           "mask": nchw}),
        "conv-shared-dilated": (pacarray.pac_conv, (x, weight[:1, :1]), dict(
            guide=guide, dilation=2, padding=2, family=InversePower(0.5, -1.0)),
            {"x": nchw, "guide": nchw}),
        "transpose-guide-mask": (pacarray.pac_conv_transpose, (x, weight.swapaxes(0, 1)), dict(
            guide=guide_t, mask=mask_t, stride=2, padding=1, output_padding=1,
            normalize="mask_kernel", smooth="gaussian"),
            {"x": nchw, "guide": nchw, "mask": nchw}),
        "transpose-explicit-kernel": (
            pacarray.pac_conv_transpose, (x[:, :1], np.ones((1, 2, 3, 3), dtype)),
            dict(kernel=kernel_t.astype(dtype), stride=3, dilation=2),
            {"x": nchw, "kernel": (4, 5)}),
    }


def _filter_cases(rng, dtype):
    a = _images(rng, dtype)
    rgb, gray = a["rgb"], a["gray"]
    hw, hwc = (0, 1), (0, 1)
    low = rng.random((13, 14, 2)).astype(dtype)
    certainty = (rng.random((H, W)) * (rng.random((H, W)) > 0.3)).astype(dtype)
    cases = {
        f"bilateral-{mode}": (pacarray.bilateral_filter, (rgb,), dict(
            sigma_spatial=2.0, sigma_color=0.2, mode=mode, cval=0.3, channel_axis=-1),
            {"image": hwc})
        for mode in ("mirror", "reflect", "nearest", "wrap", "constant", "exclude")
    }
    cases.update({
        "bilateral-joint-gray": (pacarray.bilateral_filter, (gray,), dict(
            sigma_spatial=1.5, sigma_color=0.3, guide=rgb), {"image": hw, "guide": hwc}),
        "bilateral-square-l1-axis0": (pacarray.bilateral_filter, (np.moveaxis(rgb, -1, 0),),
                                      dict(sigma_spatial=1.5, sigma_color=0.3, channel_axis=0,
                                           window="square", color_distance="l1"),
                                      {"image": (1, 2)}),
        "bilateral-large-radius": (pacarray.bilateral_filter, (gray,), dict(
            sigma_spatial=0.4, sigma_color=0.2, radius=60), {"image": hw}),
        "upsample": (pacarray.joint_bilateral_upsample, (low, rgb), dict(
            factor=3, sigma_color=0.2, channel_axis=-1), {"low": hwc, "guide": hwc}),
        "normalized": (pacarray.normalized_convolution, (rgb, certainty), dict(
            sigma_spatial=1.5, channel_axis=-1), {"data": hwc, "certainty": hw}),
        "normalized-per-channel-guided": (
            pacarray.normalized_convolution, (rgb, (rgb > 0.3).astype(dtype)),
            dict(sigma_spatial=1.0, guide=gray, sigma_color=0.3, channel_axis=-1),
            {"data": hwc, "certainty": hwc, "guide": hw}),
        "detail-preserving": (pacarray.detail_preserving_pool, (rgb,), dict(
            alpha=0.5, lambda_=1.0, channel_axis=-1), {"image": hwc}),
        "detail-preserving-5-stride2": (pacarray.detail_preserving_pool, (rgb, 5), dict(
            stride=2, alpha=0.2, lambda_=2.0, asymmetric=True, smooth=("average", 5),
            channel_axis=-1), {"image": hwc}),
        "features": (pacarray.color_position_features, (rgb,), dict(
            sigma_spatial=3.0, sigma_color=0.1, channel_axis=-1), {"image": hwc}),
    })
    return cases


def _crf_cases(rng, dtype):
    rgb = rng.random((H, W, 3)).astype(dtype)
    unary = rng.standard_normal((4, H, W)).astype(dtype)
    batched = rng.standard_normal((2, H, W, 3)).astype(dtype)
    depth = rng.standard_normal((2, H, W)).astype(dtype)
    probabilities = rng.random((4, H, W)).astype(dtype)
    lhw = (1, 2)
    return {
        "crf": (pacarray.pac_crf, (unary, rgb), dict(num_steps=3),
                {"unary": lhw, "image": (0, 1)}),
        "crf-blur-smoothness-log": (pacarray.pac_crf, (unary, rgb), dict(
            num_steps=2, output="log", pairwise=[
                PairwiseTerm(blur=2, kernel_size=3, dilation=1),
                PairwiseTerm(weight=1.0, kernel_size=3, dilation=2, features="smoothness")]),
            {"unary": lhw, "image": (0, 1)}),
        "crf-batched-labels": (pacarray.pac_crf, (batched, np.stack([rgb, rgb[::-1]])), dict(
            num_steps=2, label_axis=-1, output="labels"),
            {"unary": (1, 2), "image": (1, 2)}),
        # Palette terms with a reach shorter than the image (a real halo: one step of a
        # 1.5-pixel Gaussian on 4-pixel cells reads 12 pixels, senders every second pixel),
        # with a window term; batched (each image's own palette); a palette of depth features.
        "crf-palette": (pacarray.pac_crf, (unary, rgb), dict(num_steps=1, pairwise=[
            PaletteTerm(weight=3.0, sigma_spatial=1.5, cell=4, colors=5),
            PairwiseTerm(weight=1.0, kernel_size=3, dilation=1, sigma_spatial=None)]),
            {"unary": lhw, "image": (0, 1)}),
        "crf-palette-batched": (pacarray.pac_crf, (batched, np.stack([rgb, rgb[::-1]])),
            dict(num_steps=2, label_axis=-1, pairwise=[
                PaletteTerm(weight=2.0, sigma_spatial=2.0, cell=3, colors=4),
                PaletteTerm(weight=2.0, sigma_spatial=4.0, cell=4, colors=3)]),
            {"unary": (1, 2), "image": (1, 2)}),
        "crf-palette-features": (pacarray.pac_crf, (unary,), dict(
            num_steps=2, pairwise=PaletteTerm(weight=3.0, sigma_spatial=3.0, cell=4, colors=4,
                                              features=depth)),
            {"unary": lhw}),
        "crf-features-compatibility": (pacarray.pac_crf, (probabilities,), dict(
            num_steps=2, input="probabilities", compatibility=np.ones((4, 4)) - np.eye(4),
            pairwise=PairwiseTerm(features=depth, kernel_size=3, dilation=1)),
            {"unary": lhw}),
    }


def _all_cases(rng, dtype):
    return {**_core_cases(rng, dtype), **_filter_cases(rng, dtype), **_crf_cases(rng, dtype)}


CASE_NAMES = list(_all_cases(np.random.default_rng(0), np.float32))

#: The positional parameters' names of each function, to chunk them by name.
_POSITIONAL = {
    pacarray.pac_pool: ("x", "kernel_size"),
    pacarray.pac_conv: ("x", "weight", "bias"),
    pacarray.pac_conv_transpose: ("x", "weight", "bias"),
    pacarray.bilateral_filter: ("image",),
    pacarray.joint_bilateral_upsample: ("low", "guide"),
    pacarray.normalized_convolution: ("data", "certainty"),
    pacarray.detail_preserving_pool: ("image", "size"),
    pacarray.color_position_features: ("image",),
    pacarray.pac_crf: ("unary", "image"),
}


def _dask_call(function, args, keywords, pixels, chunking, split=1):
    """The same call with every per-pixel argument as a Dask array (the guide, mask and CRF
    features chunked differently from the data: they get rechunked)."""
    named = dict(zip(_POSITIONAL[function], args))
    named.update(keywords)
    for number, (name, spatial) in enumerate(pixels.items()):
        array = np.asarray(named[name])
        own = tuple(
            (c if number == 0 else c + 2) if isinstance(c, int)
            else c if sum(c) == array.shape[a] else 5
            for c, a in zip(chunking, spatial))
        named[name] = _lazy(array, spatial, own, split)
    term = keywords.get("pairwise")
    if isinstance(term, (PairwiseTerm, PaletteTerm)) and not isinstance(term.features, str):
        named["pairwise"] = dataclasses.replace(
            term, features=_lazy(term.features, (1, 2), chunking))
    return function(**named)


#: Every case in both dtypes with the odd chunks, and in float32 with the others.
RUNS = [(case, chunking, dtype) for case in CASE_NAMES
        for chunking, dtype in (("odd", np.float32), ("odd", np.float64),
                                ("thin", np.float32), ("ragged", np.float32))]


@pytest.mark.parametrize("case, chunking, dtype", RUNS,
                         ids=[f"{c}-{k}-{np.dtype(d).name}" for c, k, d in RUNS])
def test_dask_equals_in_memory(case, chunking, dtype):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    function, args, keywords, pixels = _all_cases(rng, dtype)[case]
    expected = function(*args, **keywords)
    spatial_chunks = CHUNKINGS[chunking]
    if "kernel" in pixels:  # an explicit kernel has many taps: chunk it less finely
        spatial_chunks = (12, 10) if chunking == "ragged" else tuple(
            c * 3 for c in spatial_chunks)
    result = _dask_call(function, args, keywords, pixels, spatial_chunks)
    if isinstance(expected, tuple):
        for lazy, value in zip(result, expected):
            _assert_equal_to_memory(lazy, value)
    else:
        _assert_equal_to_memory(result, expected)


# --------------------------------------------------------------------------------------------
# Signals and volumes (docs/design.md §7): the same planning per spatial axis, any rank.


def _nd_case(rng, dtype, op, shape, guided):
    """(function, x, keywords, per-pixel arrays) for one op on ``shape`` = (N, C, *spatial)."""
    rank = len(shape) - 2
    spatial = shape[2:]
    x = rng.standard_normal(shape).astype(dtype)
    pixels = {"x": x}
    if guided:
        pixels["guide"] = rng.standard_normal((shape[0], 2, *spatial)).astype(dtype)
    if op == "conv":
        # stride 2 on the first axis, 1 elsewhere: per-axis alignment; dilation 2 on the last
        stride = (2,) + (1,) * (rank - 1)
        dilation = (1,) * (rank - 1) + (2,)
        pixels["mask"] = rng.random((shape[0], 1, *spatial)).astype(dtype)
        weight = rng.standard_normal((2, shape[1]) + (3,) * rank).astype(dtype)
        return pacarray.pac_conv, (weight,), dict(stride=stride, padding=1, dilation=dilation,
                                                  smooth="gaussian"), pixels
    if op == "transpose":
        weight = rng.standard_normal((shape[1], 2) + (3,) * rank).astype(dtype)
        stride = (2,) + (1,) * (rank - 1)
        output_padding = (1,) + (0,) * (rank - 1)
        if guided:  # on the output grid: (n - 1) * s - 2 * padding + k + output_padding
            out = tuple((n - 1) * s - 2 + 3 + q
                        for n, s, q in zip(spatial, stride, output_padding))
            pixels["guide"] = rng.standard_normal((shape[0], 2, *out)).astype(dtype)
        return pacarray.pac_conv_transpose, (weight,), dict(
            stride=stride, padding=1, output_padding=output_padding), pixels
    return pacarray.pac_pool, (3,), dict(stride=2, padding=1), pixels


#: (op, data shape, spatial chunks, dtype, guided): 1-D and 3-D, odd cuts and chunks thinner
#: than the halo (2 with a dilated 3-tap kernel and smoothing), both dtypes.
ND_RUNS = [
    ("conv", (2, 3, 29), (5,), np.float32, True),
    ("conv", (2, 3, 29), (2,), np.float64, True),
    ("transpose", (1, 2, 23), (3,), np.float32, True),
    ("pool", (1, 2, 31), (7,), np.float64, False),
    ("conv", (1, 2, 7, 9, 11), (3, 4, 5), np.float32, True),
    ("conv", (1, 2, 7, 9, 11), (2, 9, 3), np.float64, True),
    ("transpose", (1, 2, 5, 6, 7), (2, 4, 3), np.float32, True),
    ("pool", (1, 2, 7, 8, 9), (3, 5, 2), np.float32, False),
]


@pytest.mark.parametrize("op, shape, chunks, dtype, guided", ND_RUNS,
                         ids=[f"{o}-{len(s) - 2}d-{'x'.join(map(str, c))}-{np.dtype(d).name}"
                              for o, s, c, d, _ in ND_RUNS])
def test_signals_and_volumes_equal_in_memory(op, shape, chunks, dtype, guided):
    rng = np.random.default_rng(len(shape) * 10 + len(ND_RUNS))
    function, args, keywords, pixels = _nd_case(rng, dtype, op, shape, guided)
    expected = function(pixels["x"], *args, **keywords,
                        **{k: v for k, v in pixels.items() if k != "x"})
    rank = len(shape) - 2
    # The guide and the mask chunked unlike the data (one more pixel per chunk).
    lazy = {name: _lazy(value, range(2, 2 + rank),
                        chunks if name == "x" else tuple(c + 1 for c in chunks))
            for name, value in pixels.items()}
    result = function(lazy.pop("x"), *args, **keywords, **lazy)
    assert len(result.chunks[2]) > 1  # the planning kept more than one block
    _assert_equal_to_memory(result, expected)


def _nd_filter_case(rng, dtype, op, shape):
    """``(function, args, keywords, pixels)`` of a filter on a signal or volume of spatial
    ``shape``: ``pixels`` maps each per-pixel argument's name to (array, spatial axes)."""
    rank = len(shape)
    grey = rng.random(shape).astype(dtype)
    colour = rng.random((*shape, 2)).astype(dtype)
    spatial = tuple(range(rank))
    spacing = (2.0, 1.0, 1.5)[-rank:]
    if op == "bilateral":  # per-axis sigma and spacing: radius ceil(3 sigma / spacing)
        return pacarray.bilateral_filter, dict(
            sigma_spatial=(1.2, 0.9, 1.0)[-rank:], sigma_color=0.3, spacing=spacing), {
            "image": (grey, spatial)}
    if op == "bilateral-colour":  # a disk turned into its square of reach by the flush rule
        return pacarray.bilateral_filter, dict(
            sigma_spatial=0.25, sigma_color=0.4, radius=3, channel_axis=-1, spacing=spacing,
            mode="wrap"), {"image": (colour, (*spatial, rank))}
    if op == "normalized":
        certainty = (rng.random(shape) > 0.4).astype(dtype)
        return pacarray.normalized_convolution, dict(
            sigma_spatial=1.0, radius=(1, 2, 1)[-rank:], spacing=(1.0, 0.8, 1.0)[-rank:],
            sigma_color=0.5, channel_axis=-1), {
            "data": (colour, (*spatial, rank)), "certainty": (certainty, spatial),
            "guide": (grey, spatial)}
    if op == "upsample":  # the guide on the output grid, the last sample half covered
        guide = rng.random(tuple(2 * n - 1 for n in shape)).astype(dtype)
        return pacarray.joint_bilateral_upsample, dict(sigma_color=0.3, radius=1), {
            "low": (grey, spatial), "guide": (guide, spatial)}
    if op == "detail":
        return pacarray.detail_preserving_pool, dict(size=3, stride=2, alpha=0.5,
                                                     lambda_=1.0), {"image": (grey, spatial)}
    return pacarray.color_position_features, dict(
        sigma_spatial=(2.0, 1.5, 3.0)[-rank:], sigma_color=0.2, channel_axis=-1,
        spacing=spacing), {"image": (colour, (*spatial, rank))}


#: (op, spatial shape, spatial chunks, dtype): odd cuts and chunks thinner than the halo.
ND_FILTER_RUNS = [
    ("bilateral", (29,), (4,), np.float64),
    ("bilateral", (7, 9, 8), (3, 2, 5), np.float32),
    ("bilateral-colour", (6, 7, 9), (2, 3, 4), np.float32),
    ("normalized", (31,), (3,), np.float32),
    ("normalized", (7, 8, 9), (4, 1, 5), np.float64),
    ("detail", (23,), (5,), np.float32),
    ("detail", (7, 9, 8), (3, 4, 3), np.float32),
    ("features", (5, 6, 7), (2, 3, 4), np.float32),
    ("features", (13,), (4,), np.float64),
    ("upsample", (3, 4, 5), (2, 3, 2), np.float32),
    ("upsample", (7,), (3,), np.float32),
]


@pytest.mark.parametrize("op, shape, chunks, dtype", ND_FILTER_RUNS,
                         ids=[f"{o}-{len(s)}d-{'x'.join(map(str, c))}-{np.dtype(d).name}"
                              for o, s, c, d in ND_FILTER_RUNS])
def test_filters_on_signals_and_volumes_equal_in_memory(op, shape, chunks, dtype):
    rng = np.random.default_rng(len(shape) * 7 + len(op))
    function, keywords, pixels = _nd_filter_case(rng, dtype, op, shape)
    data = next(iter(pixels))
    expected = function(**{name: array for name, (array, _) in pixels.items()}, **keywords)
    # The other per-pixel arguments chunked unlike the data (one more pixel per chunk).
    lazy = {name: _lazy(array, axes, chunks if name == data else tuple(c + 1 for c in chunks))
            for name, (array, axes) in pixels.items()}
    result = function(**lazy, **keywords)
    results = result if isinstance(result, tuple) else (result,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for got, want in zip(results, expected, strict=True):
        assert max(map(len, got.chunks)) > 1  # the planning kept more than one block
        _assert_equal_to_memory(got, want)


def test_volume_output_chunks_line_up_per_axis():
    rng = np.random.default_rng(3)
    x = _lazy(rng.random((1, 2, 8, 12, 10)), (2, 3, 4), (4, 6, 5))
    weight = rng.random((3, 2, 3, 3, 3))
    y = pacarray.pac_conv(x, weight, padding=1, stride=(1, 2, 1))
    assert y.chunks == ((1,), (3,), (4, 4), (3, 3), (5, 5))
    up = pacarray.pac_conv_transpose(x, weight.swapaxes(0, 1), stride=(2, 1, 2), padding=1,
                                     output_padding=(1, 0, 1))
    assert up.chunks[2:] == ((8, 8), (6, 6), (10, 10))
    signal = pacarray.pac_pool(_lazy(rng.random((1, 1, 30)), (2,), (7,)), 3, stride=2,
                               padding=1)
    # cuts 7, 14, 21, 28 move down to 6, 14, 20, 28 (multiples of 2): outputs 3, 7, 10, 14 of 15
    assert signal.chunks[2] == (3, 4, 3, 4, 1)


# --------------------------------------------------------------------------------------------
# Chunks of the result


def test_output_chunks_line_up_with_the_input():
    rng = np.random.default_rng(1)
    x = _lazy(rng.random((1, 4, 64, 48)), (2, 3), (16, 12))
    weight = rng.random((5, 4, 3, 3))
    y = pacarray.pac_conv(x, weight, padding=1, stride=2)
    assert y.chunks == ((1,), (5,), (8, 8, 8, 8), (6, 6, 6, 6))  # channel axis whole
    up = pacarray.pac_conv_transpose(x, weight.swapaxes(0, 1), stride=2, padding=1,
                                     output_padding=1)
    assert up.chunks[2:] == ((32, 32, 32, 32), (24, 24, 24, 24))
    # Edges off the stride move down to a multiple of it.
    z = pacarray.pac_pool(_lazy(rng.random((1, 1, 64, 48)), (2, 3), (15, 12)), 3, stride=2,
                          padding=1)
    assert z.chunks[2] == (7, 8, 7, 8, 2)
    low = _lazy(rng.random((16, 12)), (0, 1), (4, 6))
    fine = pacarray.joint_bilateral_upsample(low, _lazy(rng.random((64, 45)), (0, 1), (8, 8)),
                                             factor=4, sigma_color=0.1, radius=1)
    assert fine.chunks == ((16, 16, 16, 16), (24, 21))


def test_crf_blocks_hold_whole_blur_cells():
    # Block edges move to multiples of the blur factor, and every block (the dry run's too)
    # spans at least one cell: pac_crf rejects a blur larger than the image.
    rng = np.random.default_rng(13)
    unary, image = rng.standard_normal((3, H, W)), rng.random((H, W, 3))
    term = PairwiseTerm(blur=9, kernel_size=3, dilation=1)
    lazy = pacarray.pac_crf(_lazy(unary, (1, 2), (7, 5)), _lazy(image, (0, 1), (4, 4)),
                            pairwise=term, num_steps=1)
    assert all(c % 9 == 0 for c in lazy.chunks[1][:-1])
    _assert_equal_to_memory(lazy, pacarray.pac_crf(unary, image, pairwise=term, num_steps=1))


class _Source:
    """An array-like that reads any region (as a Zarr or HDF5 dataset does), recording the
    regions read; ``dask.array.from_array`` of it is a region-readable Dask array."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(tuple((k.start, k.stop) for k in key))
        return self.array[key]


def test_region_readable_sources_read_each_block_with_its_halo_once():
    rng = np.random.default_rng(14)
    image, guide = rng.random((H, W, 3), dtype=np.float32), rng.random((H, W))
    source, guide_source = _Source(image), _Source(guide)
    keywords = dict(sigma_spatial=1.0, sigma_color=0.2, channel_axis=-1)  # radius 3
    lazy = pacarray.bilateral_filter(da.from_array(source, chunks=(16, 20, 3)),
                                     guide=da.from_array(guide_source, chunks=(10, 30)),
                                     **keywords)
    layers = lazy.__dask_graph__().layers
    assert not any(name.startswith(("overlap", "rechunk")) for name in layers), list(layers)
    source.reads.clear()  # from_array's own empty read for the metadata
    guide_source.reads.clear()
    _assert_equal_to_memory(lazy, pacarray.bilateral_filter(image, guide=guide, **keywords))
    # One read per block (rows 16 + 16 + 5, columns 20 + 21: the guide's chunks do not
    # matter), each reaching the radius (3) past the block's interior edges.
    rows, cols = ((0, 19), (13, 35), (29, 37)), ((0, 23), (17, 41))
    assert sorted(source.reads) == sorted((r, c, (None, None)) for r in rows for c in cols)
    assert len(guide_source.reads) == 6
    # The general path (overlap) for the same call on an in-memory array: the same values.
    general = pacarray.bilateral_filter(da.from_array(image, chunks=(16, 20, 3)),
                                        guide=da.from_array(guide, chunks=(10, 30)), **keywords)
    assert any(name.startswith("overlap") for name in general.__dask_graph__().layers)
    np.testing.assert_array_equal(general.compute(scheduler="synchronous"),
                                  lazy.compute(scheduler="synchronous"))


def test_region_readable_sources_on_other_grids_and_a_batch_axis():
    rng = np.random.default_rng(15)
    low, high = rng.random((12, 10)), rng.random((48, 40))
    lazy = pacarray.joint_bilateral_upsample(
        da.from_array(_Source(low), chunks=(5, 5)), da.from_array(_Source(high), chunks=16),
        factor=4, sigma_color=0.1, radius=1)
    _assert_equal_to_memory(lazy, pacarray.joint_bilateral_upsample(
        low, high, factor=4, sigma_color=0.1, radius=1))
    x, weight = rng.random((2, 2, 20, 18)), rng.random((3, 2, 3, 3))
    for batch in (2, 1):  # one batch chunk reads regions; two take the general path
        lazy = pacarray.pac_conv(da.from_array(_Source(x), chunks=(batch, 2, 8, 7)), weight,
                                 guide=da.from_array(_Source(x), chunks=(batch, 2, 8, 7)),
                                 padding=1, stride=2)
        _assert_equal_to_memory(lazy, pacarray.pac_conv(x, weight, guide=x, padding=1,
                                                        stride=2))


def test_chunks_smaller_than_the_halo_are_merged():
    image = _lazy(np.random.default_rng(2).random((40, 40)), (0, 1), (3, 40))
    out = pacarray.bilateral_filter(image, sigma_spatial=2.0, sigma_color=0.1)  # radius 6
    assert min(out.chunks[0]) >= 6 and sum(out.chunks[0]) == 40


# --------------------------------------------------------------------------------------------
# Laziness, metadata and bad input


def _exploding(shape, chunks):
    """A Dask array whose blocks raise when computed."""

    def explode(block):
        raise AssertionError("a block was computed")

    return da.zeros(shape, chunks=chunks, dtype=np.float32).map_blocks(explode,
                                                                       dtype=np.float32)


def test_building_the_graph_computes_nothing():
    image = _exploding((64, 64, 3), (16, 16, 3))
    out = pacarray.bilateral_filter(image, sigma_spatial=2.0, sigma_color=0.1, channel_axis=-1)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert type(out._meta) is np.ndarray
    x = _exploding((1, 2, 32, 32), (1, 2, 8, 8))
    y = pacarray.pac_conv(x, np.ones((3, 2, 3, 3)), guide=x, stride=2)
    assert y.shape == (1, 3, 15, 15) and y.dtype == np.float64  # float64 weight promotes
    with pytest.raises(AssertionError, match="a block was computed"):
        y.compute(scheduler="synchronous")


def test_invalid_options_raise_at_call_time():
    x = _exploding((1, 2, 32, 32), (1, 2, 8, 8))
    with pytest.raises(ValueError, match="normalize"):
        pacarray.pac_pool(x, 3, normalize="bogus")
    with pytest.raises(ValueError, match="kernel_size"):
        pacarray.pac_pool(x, 4)
    with pytest.raises(ValueError, match="sigma_color"):
        pacarray.bilateral_filter(_exploding((32, 32), (8, 8)), sigma_spatial=1.0,
                                  sigma_color=-1.0)
    with pytest.raises(ValueError, match="guide must have the spatial shape"):
        pacarray.pac_pool(x, 3, guide=_exploding((1, 1, 31, 32), (1, 1, 8, 8)))
    with pytest.raises(ValueError, match="mode"):
        pacarray.bilateral_filter(_exploding((32, 32), (8, 8)), sigma_spatial=1.0,
                                  sigma_color=0.1, mode="bogus")


def test_a_numpy_guide_with_dask_data_is_rejected():
    rng = np.random.default_rng(3)
    x = _lazy(rng.random((1, 2, 16, 16)), (2, 3), (8, 8))
    with pytest.raises(TypeError, match="guide must be a Dask array like x"):
        pacarray.pac_pool(x, 3, guide=rng.random((1, 2, 16, 16)))
    with pytest.raises(TypeError, match="image must be a Dask array like guide"):
        pacarray.bilateral_filter(rng.random((16, 16)), sigma_spatial=1.0, sigma_color=0.1,
                                  guide=_lazy(rng.random((16, 16)), (0, 1), (8, 8)))


def test_small_arguments_may_be_numpy_but_not_dask():
    rng = np.random.default_rng(4)
    x_memory = rng.random((1, 2, 16, 16))
    x = _lazy(x_memory, (2, 3), (5, 6))
    weight, bias = rng.random((3, 2, 3, 3)), [0.5, 1.0, 1.5]
    window = pacarray.spatial_window(3, 1.0)
    _assert_equal_to_memory(
        pacarray.pac_conv(x, weight, bias, padding=1, spatial_weight=window),
        pacarray.pac_conv(x_memory, weight, bias, padding=1, spatial_weight=window))
    with pytest.raises(TypeError, match="weight must be an in-memory array"):
        pacarray.pac_conv(x, da.from_array(weight), padding=1)
    with pytest.raises(TypeError, match="weight must be an in-memory array"):
        pacarray.pac_conv(x_memory, da.from_array(weight), padding=1)


def test_options_pass_through_to_every_block():
    # ``output=`` (a cast of the result) is not read by the Dask layer; it reaches the blocks,
    # except for normalized_convolution, whose packed blocks are cast after unpacking.
    rng = np.random.default_rng(12)
    image = (rng.random((30, 34, 3)) * 255).astype(np.uint8)
    lazy = da.from_array(image, chunks=(7, 9, 3))
    keywords = dict(sigma_spatial=1.5, sigma_color=30.0, channel_axis=-1, output=np.uint8)
    _assert_equal_to_memory(pacarray.bilateral_filter(lazy, **keywords),
                            pacarray.bilateral_filter(image, **keywords))
    certainty = rng.random((30, 34)) > 0.3
    keywords = dict(sigma_spatial=1.0, channel_axis=-1, output=np.uint8)
    result, confidence = pacarray.normalized_convolution(
        lazy, da.from_array(certainty, chunks=(8, 8)), **keywords)
    expected = pacarray.normalized_convolution(image, certainty, **keywords)
    _assert_equal_to_memory(result, expected[0])
    _assert_equal_to_memory(confidence, expected[1])
    with pytest.raises(TypeError, match="output"):
        pacarray.normalized_convolution(lazy, da.from_array(certainty), sigma_spatial=1.0,
                                        channel_axis=-1, output=np.complex64)
    with pytest.raises(TypeError, match="bogus"):
        pacarray.bilateral_filter(lazy, sigma_spatial=1.0, sigma_color=1.0, bogus=1)


def test_unknown_chunk_sizes_are_rejected():
    x = da.from_array(np.random.default_rng(5).random((1, 1, 20, 20)), chunks=(1, 1, 10, 10))
    unknown = x[x[:, 0, 0, 0] >= 0]  # a lazy boolean index: the result's chunks are NaN
    assert any(np.isnan(c) for c in unknown.chunks[0])
    with pytest.raises(ValueError, match=r"unknown \(NaN\) chunk sizes"):
        pacarray.pac_pool(unknown, 3)


def test_split_channel_axis_is_taken_whole():
    rng = np.random.default_rng(6)
    image = rng.random((20, 24, 5)).astype(np.float32)
    lazy = da.from_array(image, chunks=(10, 12, 2))
    out = pacarray.bilateral_filter(lazy, sigma_spatial=1.0, sigma_color=0.2, channel_axis=-1)
    assert out.chunks[2] == (5,)
    _assert_equal_to_memory(out, pacarray.bilateral_filter(
        image, sigma_spatial=1.0, sigma_color=0.2, channel_axis=-1))


def test_functions_without_dask_support_keep_the_conversion_hint():
    x = da.zeros((1, 1, 8, 8), chunks=4)
    with pytest.raises(TypeError, match=r"call \.compute\(\) first"):
        pacarray.pac_kernel(x, 3)


def test_import_pacarray_imports_neither_dask_nor_xarray():
    code = ("import sys, pacarray\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'xarray', 'distributed')))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# xarray


def test_dataarray_keeps_dims_coords_and_attrs():
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(7)
    image = rng.random((H, W, 3)).astype(np.float32)
    scene = xr.DataArray(image, dims=("y", "x", "band"), name="scene", attrs={"units": "dn"},
                         coords={"y": np.arange(H) * 10.0, "x": np.arange(W) * 5.0,
                                 "band": ["r", "g", "b"]})
    keywords = dict(sigma_spatial=2.0, sigma_color=0.2, channel_axis=-1)
    expected = pacarray.bilateral_filter(image, **keywords)
    out = pacarray.bilateral_filter(scene, **keywords)
    assert isinstance(out, xr.DataArray) and out.dims == scene.dims and out.name == "scene"
    assert out.attrs == {"units": "dn"} and out.coords.to_dataset().identical(
        scene.coords.to_dataset())
    np.testing.assert_array_equal(out.values, expected)
    lazy = pacarray.bilateral_filter(scene.chunk({"y": 10, "x": 13}), **keywords)
    assert isinstance(lazy.data, da.Array)
    _assert_equal_to_memory(lazy.data, expected)

    pooled = pacarray.detail_preserving_pool(scene, 3, stride=2, alpha=0.5, lambda_=1.0,
                                             channel_axis=-1)
    np.testing.assert_array_equal(pooled.y.values, scene.y.values[1:-1:2][:pooled.shape[0]])
    low = scene.isel(y=slice(None, None, 4), x=slice(None, None, 4)).rename(y="ly", x="lx")
    up = pacarray.joint_bilateral_upsample(low, scene, factor=4, sigma_color=0.2,
                                           channel_axis=-1)
    assert up.dims == ("y", "x", "band")
    np.testing.assert_array_equal(up.x.values, scene.x.values)
    labels = pacarray.pac_crf(
        xr.DataArray(rng.standard_normal((4, H, W)), dims=("label", "y", "x")), scene,
        num_steps=1, output="labels")
    assert labels.dims == ("y", "x")
    grid = xr.DataArray(rng.random((1, 2, H, W)), dims=("n", "c", "y", "x"),
                        coords={"y": np.arange(H), "x": np.arange(W)})
    strided = pacarray.pac_pool(grid, 3, stride=2, padding=1)
    np.testing.assert_array_equal(strided.y.values, np.arange(0, H, 2))


# --------------------------------------------------------------------------------------------
# Threads


def _thread_calls(rng):
    """One small call of every forward function, on fixed random inputs."""
    a = _images(rng, np.float32)
    x, guide, rgb, gray = a["x"], a["guide"], a["rgb"], a["gray"]
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    unary = rng.standard_normal((3, H, W)).astype(np.float32)
    return {
        "pac_conv": lambda: pacarray.pac_conv(x, weight, guide=guide, padding=1),
        "pac_conv_transpose": lambda: pacarray.pac_conv_transpose(
            x, weight.swapaxes(0, 1), stride=2, padding=1),
        "pac_pool": lambda: pacarray.pac_pool(x, 3, guide=guide, padding=1, normalize="kernel"),
        "bilateral_filter": lambda: pacarray.bilateral_filter(
            rgb, sigma_spatial=1.5, sigma_color=0.2, channel_axis=-1),
        "joint_bilateral_upsample": lambda: pacarray.joint_bilateral_upsample(
            rgb[::4, ::4], rgb, factor=4, sigma_color=0.2, channel_axis=-1),
        "normalized_convolution": lambda: pacarray.normalized_convolution(
            rgb, gray > 0.3, sigma_spatial=1.0, channel_axis=-1)[0],
        "detail_preserving_pool": lambda: pacarray.detail_preserving_pool(
            rgb, alpha=0.5, lambda_=1.0, channel_axis=-1),
        "pac_crf": lambda: pacarray.pac_crf(unary, rgb, num_steps=2),
        "color_position_features": lambda: pacarray.color_position_features(
            rgb, sigma_spatial=2.0, sigma_color=0.1, channel_axis=-1),
    }


def test_eight_threads_give_the_serial_results_bit_for_bit():
    calls = _thread_calls(np.random.default_rng(8))
    serial = {name: call() for name, call in calls.items()}
    threads, repeats = 8, 20
    start = threading.Barrier(threads)

    def worker(name):
        start.wait()  # every thread enters the kernels at once
        return [calls[name]() for _ in range(repeats)]

    for name in calls:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(worker, [name] * threads))
        for per_thread in results:
            for result in per_thread:
                assert np.array_equal(result, serial[name]), name


def test_threaded_scheduler_gives_the_synchronous_results_bit_for_bit():
    rng = np.random.default_rng(9)
    lazy = {}
    for case in ("pool-guide-mask-smooth", "conv-guide-bias-stride2", "transpose-guide-mask",
                 "bilateral-mirror", "upsample", "normalized", "detail-preserving", "crf",
                 "features"):
        function, args, keywords, pixels = _all_cases(rng, np.float32)[case]
        result = _dask_call(function, args, keywords, pixels, (13, 14))
        lazy[case] = result[0] if isinstance(result, tuple) else result
    serial = dask.compute(lazy, scheduler="synchronous")[0]
    # 8 Dask threads, each with Numba's own threads (oversubscribed on purpose: the worst case
    # for the threading layer), then the README's recommendation: one Numba thread per Dask
    # thread (numba.set_num_threads is per thread, hence the pool's initializer).
    pools = [None, ThreadPoolExecutor(8, initializer=numba.set_num_threads, initargs=(1,))]
    for pool in pools:
        with dask.config.set(scheduler="threads", num_workers=8, pool=pool):
            threaded = dask.compute(lazy)[0]
        for name, value in threaded.items():
            assert np.array_equal(value, serial[name]), name
    pools[1].shutdown()


# --------------------------------------------------------------------------------------------
# dask.distributed


def test_local_cluster_of_two_worker_processes():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(10)
    image = rng.random((96, 80, 3)).astype(np.float32)
    x = rng.random((1, 3, 96, 80)).astype(np.float32)
    weight = rng.random((4, 3, 3, 3)).astype(np.float32)
    keywords = dict(sigma_spatial=2.0, sigma_color=0.1, channel_axis=-1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        filtered = pacarray.bilateral_filter(da.from_array(image, chunks=(32, 40, 3)),
                                             **keywords)
        convolved = pacarray.pac_conv(da.from_array(x, chunks=(1, 3, 48, 40)), weight,
                                      guide=da.from_array(x, chunks=(1, 3, 32, 32)), padding=1)
        # Tasks that read their own halo from a region-readable source on the workers.
        read = pacarray.bilateral_filter(da.from_array(_Source(image), chunks=(32, 40, 3)),
                                         **keywords)
        values = client.gather(client.compute([filtered, convolved, read]))
        workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2
    expected = [pacarray.bilateral_filter(image, **keywords),
                pacarray.pac_conv(x, weight, guide=x, padding=1),
                pacarray.bilateral_filter(image, **keywords)]
    for value, reference in zip(values, expected):
        assert value.dtype == reference.dtype
        assert np.max(np.abs(value - reference)) <= 1e-6 * np.max(np.abs(reference))


@pytest.mark.gpu
def test_cupy_chunks_stay_on_the_device():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as error:  # the driver's errors come in several types
        pytest.skip(f"no usable CUDA device ({error})")
    rng = np.random.default_rng(11)
    image = rng.random((40, 48, 3)).astype(np.float32)
    lazy = da.from_array(cupy.asarray(image), chunks=(16, 16, 3), asarray=False)
    out = pacarray.bilateral_filter(lazy, sigma_spatial=1.5, sigma_color=0.2, channel_axis=-1)
    assert type(out._meta).__module__.startswith("cupy")
    value = out.compute(scheduler="synchronous")
    assert type(value).__module__.startswith("cupy")
    expected = pacarray.bilateral_filter(cupy.asarray(image), sigma_spatial=1.5,
                                         sigma_color=0.2, channel_axis=-1)
    assert float(abs(value - expected).max()) <= 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crf_volume_and_signal_under_dask_equal_in_memory(dtype):
    """``pac_crf(..., spatial_ndim=3)`` on a volume cut at odd offsets along all three axes
    (anisotropic terms: a depth window of 1 tap and a dilated one; a user feature volume), and
    ``spatial_ndim=1`` on a signal: the halo is ``num_steps`` times each axis's own reach."""
    rng = np.random.default_rng(31)
    unary = rng.standard_normal((3, 9, 13, 11)).astype(dtype)
    image = rng.random((9, 13, 11, 2)).astype(dtype)
    depth = rng.random((1, 9, 13, 11)).astype(dtype)
    terms = [PairwiseTerm(weight=1.2, kernel_size=3, sigma_spatial=2.0, sigma_color=0.3),
             PairwiseTerm(weight=0.7, kernel_size=(1, 3, 5), dilation=(1, 1, 2),
                          features="smoothness"),
             PairwiseTerm(weight=0.5, kernel_size=3, dilation=(2, 1, 1), features=depth)]
    options = dict(num_steps=2, output="log", spatial_ndim=3, channel_axis=-1)
    expected = pacarray.pac_crf(unary, image, pairwise=terms, **options)
    lazy_terms = terms[:2] + [dataclasses.replace(terms[2],
                                                  features=_lazy(depth, (1, 2, 3), (4, 6, 5)))]
    result = pacarray.pac_crf(_lazy(unary, (1, 2, 3), (4, 7, 5)),
                              _lazy(image, (0, 1, 2), (5, 6, 4)), pairwise=lazy_terms,
                              **options)
    _assert_equal_to_memory(result, expected)

    signal = rng.random((2, 97)).astype(dtype)
    labels = rng.standard_normal((4, 97)).astype(dtype)
    term = PairwiseTerm(weight=1.0, kernel_size=5, dilation=3, sigma_spatial=4.0,
                        sigma_color=0.2)
    options = dict(pairwise=term, num_steps=3, spatial_ndim=1, channel_axis=0)
    _assert_equal_to_memory(
        pacarray.pac_crf(_lazy(labels, (1,), (13,)), _lazy(signal, (1,), (21,)), **options),
        pacarray.pac_crf(labels, signal, **options))
