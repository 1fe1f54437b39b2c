"""The CUDA kernels, run on the CPU through the host-emulation harness, against the oracle.

The same ``.cu`` files that CuPy compiles are compiled with g++ against
``tests/cuda_emulation/cuda_emulation.h`` (see ``docs/design.md`` §5). The public functions are then
called on NumPy arrays with the dispatch pointed at the CUDA backend's code running on the
emulator, so the launch planning of ``pacarray._cuda`` (grids, index types, argument packing,
chunking of the cuBLAS path, which NumPy's matmul stands in for) is exercised too. Sizes are
small and odd, grids have several blocks and a partial last one, and some cases shrink the
block and the grid so that the kernels' grid-stride loops go round several times.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import pacarray
import pacarray._dispatch as dispatch
from _tiers import tiered
from cuda_emulation import emulator as emu
from pacarray._cuda import _loader, launch
from reference import (
    ref_conv,
    ref_conv_transpose,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
)

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="g++ is not installed")

DTYPES = [np.float64, np.float32]


@pytest.fixture(params=["forward", "reverse"])
def order(request):
    return request.param


@pytest.fixture
def cuda_backend(emulator, order, monkeypatch):
    """Route NumPy arrays to the CUDA backend's code on the emulator; yields the emulator."""
    runtime = emu.EmulatedRuntime(emulator, reverse=order == "reverse")
    module = emu.emulated_backend(runtime)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(dispatch._BACKEND_MODULES, "numpy", module.__name__)
    emulator.launches.clear()
    return emulator


# --------------------------------------------------------------------------------------------
# Cases

# name -> (public family, oracle family keywords); "pc" families need channel_wise and F == 2.
FAMILIES = {
    "gaussian": (pacarray.Gaussian(), dict(family="gaussian")),
    "inverse": (
        pacarray.InversePower(0.5, -1.0, eps=1e-2),
        dict(family="inverse_power", alpha=0.5, lambda_=-1.0, eps=1e-2),
    ),
    "inverse_asym": (
        pacarray.InversePower(0.2, 2.0, eps=0.1, asymmetric=True),
        dict(family="inverse_power", alpha=0.2, lambda_=2.0, eps=0.1, asymmetric=True),
    ),
    "inverse_asym_pc": (
        pacarray.InversePower((0.1, 0.5), (-1.0, 0.5), eps=0.05, asymmetric=True),
        dict(family="inverse_power", alpha=np.array([0.1, 0.5]), lambda_=np.array([-1.0, 0.5]),
             eps=0.05, asymmetric=True),
    ),
    "none": (None, dict(family=None)),
}

# family, normalize, mask, smooth, spatial, channel_wise
OPTIONS = [
    ("gaussian", "kernel", False, None, "gauss", False),
    ("gaussian", None, True, "gaussian", None, False),
    ("inverse", "mask_kernel", True, ("average", 3), "disk", False),
    ("inverse_asym_pc", "kernel", False, None, None, True),
    ("gaussian", "mask", True, None, "disk", True),
    ("none", "kernel", False, None, None, False),
    ("none", "mask", True, None, "gauss", False),
    ("inverse_asym", None, False, "user", None, False),
]

# kernel_size, stride, padding, dilation, (H, W)
FORWARD_GEOMETRIES = [
    (3, 1, 1, 1, (9, 11)),
    (3, 2, 1, 1, (8, 7)),
    (5, 1, 2, 1, (7, 6)),
    ((3, 5), (2, 1), (1, 2), (1, 2), (9, 13)),
    (3, 3, 0, 2, (11, 10)),
    (1, 1, 0, 1, (5, 4)),
    ((5, 3), (1, 2), (2, 0), 1, (6, 9)),
    (3, 2, 2, 2, (7, 9)),
]

# kernel_size, stride, padding, dilation, output_padding, input (H, W)
TRANSPOSED_GEOMETRIES = [
    (3, 2, 1, 1, 1, (4, 5)),
    (5, 3, 2, 1, 2, (3, 4)),
    ((3, 5), (2, 1), (1, 2), (2, 1), (1, 0), (4, 3)),
    (3, 1, 1, 1, 0, (5, 6)),
    (3, 2, 0, 2, 1, (3, 4)),
    ((5, 3), (1, 3), (2, 1), 1, (0, 2), (5, 3)),
    (1, 2, 0, 1, 1, (3, 3)),
    (3, 3, 1, 2, 2, (3, 2)),
]

USER_SMOOTH = np.array([[0.0, 0.1, 0.0], [0.2, 0.4, 0.1], [0.0, 0.2, 0.0]])


def _pair(value):
    return (value, value) if np.ndim(value) == 0 else tuple(value)


def _spatial(kind, kernel_size, dilation):
    if kind is None:
        return None
    if kind == "gauss":
        return ref_spatial_window(kernel_size, sigma=1.3, dilation=dilation)
    if kind == "disk":
        return ref_spatial_window(kernel_size, sigma=2.0, window="disk", dilation=dilation)
    raise ValueError(kind)


def _mask(rng, shape):
    """Values in [0, 1] with a zero corner larger than any kernel footprint (so Z == 0 occurs)."""
    mask = rng.random(shape) * (rng.random(shape) > 0.3)
    mask[..., :4, :5] = 0.0
    return mask


def _rounded(array, dtype):
    """``array`` rounded to ``dtype`` and back: the oracle sees exactly the values pacarray gets."""
    return None if array is None else np.asarray(array, dtype).astype(np.float64)


def _cast(value, dtype):
    return None if value is None else np.asarray(value, dtype)


def _setup(rng, options, kernel_size, dilation, guide_shape, channels, dtype):
    """Keywords for pacarray (arrays of ``dtype``) and the oracle (the same values, float64)."""
    family_name, normalize, with_mask, smooth, spatial_kind, channel_wise = options
    family, oracle_family = FAMILIES[family_name]
    batch = 2
    features = channels if channel_wise else 2
    guide = None
    if family is not None:
        guide = _rounded(1.5 * rng.random((batch, features, *guide_shape)), dtype)
    mask = _rounded(_mask(rng, (batch, 1, *guide_shape)), dtype) if with_mask else None
    smooth = USER_SMOOTH if smooth == "user" else smooth
    spatial = _rounded(_spatial(spatial_kind, kernel_size, dilation), dtype)
    public = dict(guide=_cast(guide, dtype), family=family, smooth=smooth,
                  spatial_weight=_cast(spatial, dtype), mask=_cast(mask, dtype),
                  normalize=normalize, channel_wise=channel_wise)
    oracle = dict(oracle_family, smooth=smooth, spatial_weight=spatial, mask=mask,
                  normalize=normalize, channel_wise=channel_wise)
    oracle_guide = guide if guide is not None else np.zeros((batch, 1, *guide_shape))
    return public, oracle, oracle_guide


def _cases(geometries):
    """Options crossed with geometries cyclically (two passes, shifted), dtypes alternating."""
    cases = []
    for i in range(2 * len(OPTIONS)):
        options = OPTIONS[i % len(OPTIONS)]
        geometry = geometries[(i + i // len(OPTIONS)) % len(geometries)]
        cases.append(pytest.param(i, options, geometry, DTYPES[i % 2], id=f"case{i}"))
    return cases


# Cases of each grid in the quick test tier (the others are marked slow): both dtypes, small
# grids (indices 2 and 5), the explicit-kernel path of conv (3, 7) and conv_transpose (1, 5),
# with and without bias, every normalization and smoothing, channel_wise, and no guide.
QUICK_CASES = (1, 2, 3, 4, 5, 7)


def _small_grid(index, monkeypatch):
    """Every third case: 32-thread blocks and at most 3 of them, so grid-stride loops repeat."""
    if index % 3 == 2:
        monkeypatch.setattr(launch, "BLOCK_THREADS", 32)
        monkeypatch.setattr(launch, "MAX_BLOCKS", 3)


# --------------------------------------------------------------------------------------------
# pac_kernel


@pytest.mark.parametrize("index, options, geometry, dtype",
                         tiered(_cases(FORWARD_GEOMETRIES), QUICK_CASES))
def test_kernel_fill_matches_oracle(cuda_backend, assert_close, rng, monkeypatch, index, options,
                                    geometry, dtype):
    kernel_size, stride, padding, dilation, shape = geometry
    if options[0] == "none":
        options = ("gaussian", *options[1:])
    _small_grid(index, monkeypatch)
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, shape, 2, dtype)
    public.pop("guide")
    K, valid = pacarray.pac_kernel(
        _cast(guide, dtype), kernel_size, stride=stride, padding=padding, dilation=dilation,
        return_validity=True, **public,
    )
    expected_K, expected_valid = ref_kernel(
        guide, kernel_size, stride=stride, padding=padding, dilation=dilation, **oracle
    )
    assert_close(K, expected_K, dtype)
    assert valid.dtype == np.bool_
    np.testing.assert_array_equal(valid, expected_valid)
    assert {name.split("<")[0] for name in cuda_backend.launches} == {"pac_fill"}


@pytest.mark.parametrize("index, options, geometry, dtype",
                         tiered(_cases(TRANSPOSED_GEOMETRIES)[:6], [i for i in QUICK_CASES
                                                                    if i < 6]))
def test_kernel_fill_transposed_matches_oracle(cuda_backend, assert_close, rng, index, options,
                                               geometry, dtype):
    kernel_size, stride, padding, dilation, output_padding, shape = geometry
    if options[0] == "none":
        options = ("inverse", *options[1:])
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, (7, 6), 2, dtype)
    public.pop("guide")
    K = pacarray.pac_kernel(
        _cast(guide, dtype), kernel_size, stride=stride, padding=padding, dilation=dilation,
        output_padding=output_padding, transposed=True, **public,
    )
    expected, _ = ref_kernel(guide, kernel_size, dilation=dilation, transposed=True, **oracle)
    assert_close(K, expected, dtype)


# --------------------------------------------------------------------------------------------
# pac_pool and shared filters (pac_direct, depthwise)


@pytest.mark.parametrize("explicit", [False, True], ids=["fused", "explicit"])
@pytest.mark.parametrize("index, options, geometry, dtype",
                         tiered(_cases(FORWARD_GEOMETRIES), QUICK_CASES))
def test_pool_matches_oracle(cuda_backend, assert_close, rng, monkeypatch, index, options,
                             geometry, dtype, explicit):
    kernel_size, stride, padding, dilation, shape = geometry
    _small_grid(index, monkeypatch)
    channels = 2 if options[5] else 3
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, shape, channels, dtype)
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    K, _ = ref_kernel(guide, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      **oracle)
    expected = ref_pool(x, K, stride=stride, padding=padding, dilation=dilation)
    geometry_kw = dict(stride=stride, padding=padding, dilation=dilation)
    if explicit:
        y = pacarray.pac_pool(_cast(x, dtype), kernel_size, kernel=_cast(K, dtype), **geometry_kw)
    else:
        y = pacarray.pac_pool(_cast(x, dtype), kernel_size, **geometry_kw, **public)
    assert_close(y, expected, dtype)
    assert {name.split("<")[0] for name in cuda_backend.launches} == {"pac_direct"}


@pytest.mark.parametrize("index, options, geometry, dtype",
                         tiered(_cases(FORWARD_GEOMETRIES)[:8], QUICK_CASES))
def test_shared_filter_conv_matches_oracle(cuda_backend, assert_close, rng, index, options,
                                           geometry, dtype):
    kernel_size, stride, padding, dilation, shape = geometry
    channels = 2 if options[5] else 3
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, shape, channels, dtype)
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    weight = _rounded(rng.standard_normal((1, 1, *_pair(kernel_size))), dtype)
    bias = _rounded(rng.standard_normal(channels), dtype)
    K, _ = ref_kernel(guide, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      **oracle)
    expected = ref_conv(x, K, weight, bias, stride=stride, padding=padding, dilation=dilation)
    y = pacarray.pac_conv(_cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype),
                          stride=stride, padding=padding, dilation=dilation, **public)
    assert_close(y, expected, dtype)


# --------------------------------------------------------------------------------------------
# pac_conv and pac_conv_transpose: the direct kernel and the patches x weights path

CONV_PATHS = ["direct", "patches", "patch-bands"]


def _force_path(path, monkeypatch, patch_rows, out_w, itemsize):
    """Select the conv path: the direct kernel, or patches x weights in whole images or bands."""
    if path == "direct":
        return
    monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
    if path == "patch-bands":
        # Two output rows per band: several bands per image, the last one partial when odd.
        monkeypatch.setattr(launch, "WORKSPACE_BYTES", 2 * patch_rows * out_w * itemsize)


def _check_path(path, launches):
    kernels = [name.split("<")[0] for name in launches]
    if path == "direct":
        assert set(kernels) == {"pac_direct"}
    else:
        assert set(kernels) == {"pac_patches"}


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("index, options, geometry, dtype",
                         tiered(_cases(FORWARD_GEOMETRIES), QUICK_CASES))
def test_conv_matches_oracle(cuda_backend, assert_close, rng, monkeypatch, index, options,
                             geometry, dtype, path):
    kernel_size, stride, padding, dilation, shape = geometry
    _small_grid(index, monkeypatch)
    channels = 2 if options[5] else 3
    out_channels = 5
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, shape, channels, dtype)
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    weight = _rounded(rng.standard_normal((out_channels, channels, *_pair(kernel_size))), dtype)
    bias = _rounded(rng.standard_normal(out_channels), dtype) if index % 2 else None
    K, _ = ref_kernel(guide, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      **oracle)
    expected = ref_conv(x, K, weight, bias, stride=stride, padding=padding, dilation=dilation)
    out_w = expected.shape[-1]
    _force_path(path, monkeypatch, channels * weight[0, 0].size, out_w, np.dtype(dtype).itemsize)
    geometry_kw = dict(stride=stride, padding=padding, dilation=dilation)
    if index % 4 == 3:
        y = pacarray.pac_conv(_cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype),
                              kernel=_cast(K, dtype), **geometry_kw)
    else:
        y = pacarray.pac_conv(_cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype),
                              **geometry_kw, **public)
    assert_close(y, expected, dtype)
    _check_path(path, cuda_backend.launches)
    if path == "patch-bands":
        out_h = expected.shape[2]
        assert len(cuda_backend.launches) == (2 * -(-out_h // 2) if out_h > 2 else 1)


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("index, options, geometry, dtype",
                         tiered(_cases(TRANSPOSED_GEOMETRIES), QUICK_CASES))
def test_conv_transpose_matches_oracle(cuda_backend, assert_close, rng, monkeypatch, index,
                                       options, geometry, dtype, path):
    kernel_size, stride, padding, dilation, output_padding, shape = geometry
    _small_grid(index, monkeypatch)
    channels = 2 if options[5] else 3
    out_channels = 4
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    weight = _rounded(rng.standard_normal((channels, out_channels, *_pair(kernel_size))), dtype)
    bias = _rounded(rng.standard_normal(out_channels), dtype) if index % 2 == 0 else None
    out_shape = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, p, d, op in zip(shape, _pair(kernel_size), _pair(stride), _pair(padding),
                                     _pair(dilation), _pair(output_padding))
    )
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, out_shape, channels,
                                   dtype)
    K, _ = ref_kernel(guide, kernel_size, dilation=dilation, transposed=True, **oracle)
    expected = ref_conv_transpose(x, K, weight, bias, stride=stride, padding=padding,
                                  dilation=dilation, output_padding=output_padding)
    _force_path(path, monkeypatch, channels * weight[0, 0].size, out_shape[1],
                np.dtype(dtype).itemsize)
    geometry_kw = dict(stride=stride, padding=padding, dilation=dilation,
                       output_padding=output_padding)
    if index % 4 == 1:
        y = pacarray.pac_conv_transpose(_cast(x, dtype), _cast(weight, dtype),
                                        _cast(bias, dtype), kernel=_cast(K, dtype),
                                        **geometry_kw)
    else:
        y = pacarray.pac_conv_transpose(_cast(x, dtype), _cast(weight, dtype),
                                        _cast(bias, dtype), **geometry_kw, **public)
    assert_close(y, expected, dtype)
    _check_path(path, cuda_backend.launches)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_groups_whole_images_per_product(cuda_backend, assert_close, rng, monkeypatch,
                                              dtype):
    """Five images, two per chunk: three pac_patches launches, the last chunk partial."""
    x = rng.standard_normal((5, 3, 6, 7))
    guide = rng.random((5, 2, 6, 7))
    weight = rng.standard_normal((6, 3, 3, 3))
    itemsize = np.dtype(dtype).itemsize
    monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
    monkeypatch.setattr(launch, "WORKSPACE_BYTES", 2 * 27 * 6 * 7 * itemsize)
    y = pacarray.pac_conv(_cast(x, dtype), _cast(weight, dtype), guide=_cast(guide, dtype),
                          padding=1, normalize="kernel")
    K, _ = ref_kernel(guide, 3, padding=1, normalize="kernel")
    assert_close(y, ref_conv(x, K, weight, padding=1), dtype)
    assert [name.split("<")[0] for name in cuda_backend.launches] == ["pac_patches"] * 3


# --------------------------------------------------------------------------------------------
# Index types, special values


@pytest.mark.parametrize("dtype", DTYPES)
def test_64_bit_instantiations_give_the_same_numbers(cuda_backend, assert_close, rng,
                                                     monkeypatch, dtype):
    """With the 32-bit limit lowered to 0 every launch takes the ``long long`` kernels."""
    x = rng.standard_normal((2, 3, 7, 9))
    guide = rng.random((2, 3, 7, 9))
    weight = rng.standard_normal((4, 3, 3, 3))
    results = {}
    for limit in (launch.INT32_MAX, 0):
        monkeypatch.setattr(launch, "INT32_MAX", limit)
        cuda_backend.launches.clear()
        K = pacarray.pac_kernel(_cast(guide, dtype), 3, padding=1, normalize="kernel")
        pool = pacarray.pac_pool(_cast(x, dtype), 3, guide=_cast(guide, dtype), padding=1,
                                 normalize="kernel", channel_wise=True)
        direct = pacarray.pac_conv(_cast(x, dtype), _cast(weight, dtype), kernel=K, padding=1)
        monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
        patches = pacarray.pac_conv(_cast(x, dtype), _cast(weight, dtype), kernel=K, padding=1)
        monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 64)
        index = "long long" if limit == 0 else "int"
        assert all(name.endswith(f", {index}>") for name in cuda_backend.launches)
        results[limit] = (K, pool, direct, patches)
    expected_K, _ = ref_kernel(guide, 3, padding=1, normalize="kernel")
    expected_pool = ref_pool(
        x, ref_kernel(guide, 3, padding=1, normalize="kernel", channel_wise=True)[0], padding=1
    )
    expected_conv = ref_conv(x, expected_K, weight, padding=1)
    for K, pool, direct, patches in results.values():
        assert_close(K, expected_K, dtype)
        assert_close(pool, expected_pool, dtype)
        assert_close(direct, expected_conv, dtype)
        assert_close(patches, expected_conv, dtype)


def test_nan_propagates_and_zero_normalizer_gives_zero(cuda_backend, rng):
    x = rng.standard_normal((1, 1, 8, 8))
    x[0, 0, 6, 6] = np.nan
    mask = np.ones((1, 1, 8, 8))
    mask[..., :4, :4] = 0.0
    y = pacarray.pac_pool(x, 3, padding=1, mask=mask, normalize="mask")
    expected = ref_pool(x, ref_kernel(np.zeros((1, 1, 8, 8)), 3, padding=1, family=None,
                                      mask=mask, normalize="mask")[0], padding=1)
    assert np.array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, 0, 5:8, 5:8]).all() and np.isnan(y).sum() == 9
    assert (y[0, 0, :3, :3] == 0.0).all()


# --------------------------------------------------------------------------------------------
# The harness itself


@pytest.mark.parametrize("dtype", DTYPES)
def test_harness_block_reduction_with_barriers_and_shuffles(emulator, order, rng, dtype):
    x = rng.random(1000).astype(dtype)
    out = np.zeros(4, dtype)
    emulator.launch(f"selftest_block_sum<{'float' if dtype == np.float32 else 'double'}>",
                    4, 256, (x, np.int32(1000), out), reverse=order == "reverse")
    expected = np.add.reduceat(x.astype(np.float64), [0, 256, 512, 768])
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_harness_exposes_a_missing_barrier(emulator, rng):
    """The rotation through shared memory is right with the barrier in both resume orders, and
    wrong without it in at least one."""
    x = rng.random(384)
    expected = np.roll(x.reshape(3, 128), -1, axis=1).ravel()
    wrong_orders = 0
    for reverse in (False, True):
        out = np.zeros_like(x)
        emulator.launch("selftest_rotate", 3, 128, (x, out), reverse=reverse)
        np.testing.assert_array_equal(out, expected)
        out = np.zeros_like(x)
        emulator.launch("selftest_rotate_missing_barrier", 3, 128, (x, out), reverse=reverse)
        wrong_orders += not np.array_equal(out, expected)
    assert wrong_orders >= 1


def test_harness_warp_allreduce(emulator, order, rng):
    x = rng.random(96)
    out = np.zeros_like(x)
    emulator.launch("selftest_warp_allreduce", 1, 96, (x, out), reverse=order == "reverse")
    np.testing.assert_allclose(out, np.repeat(x.reshape(3, 32).sum(axis=1), 32), rtol=1e-13)


@pytest.mark.parametrize("name, message", [
    ("selftest_divergent_barrier", "__syncthreads reached by 7 of 64 threads"),
    ("selftest_divergent_shuffle", "warp shuffle reached by only some lanes"),
])
def test_harness_reports_divergent_synchronization(emulator, name, message):
    with pytest.raises(emu.EmulationError, match=message):
        emulator.launch(name, 2, 64, (np.zeros(64, np.int32),))


def test_harness_rejects_barriers_in_kernels_declared_barrier_free(emulator):
    with pytest.raises(emu.EmulationError, match="not declared synchronizing"):
        emulator.launch("selftest_rotate as barrier-free", 1, 32, (np.zeros(32), np.zeros(32)))


def test_harness_checks_argument_types(emulator):
    x = np.zeros(64)
    with pytest.raises(emu.EmulationError, match="do not match the parameters 'pip'"):
        emulator.launch("selftest_block_sum<double>", 1, 64, (x, np.int64(64), x))
    with pytest.raises(emu.EmulationError, match="do not match"):
        emulator.launch("selftest_block_sum<double>", 1, 64, (x, np.int32(64)))
    with pytest.raises(TypeError, match="NumPy scalars"):
        emulator.launch("selftest_block_sum<double>", 1, 64, (x, 64, x))


def test_every_kernel_instantiation_is_emulated(cuda_backend, rng, monkeypatch):
    """Each instantiation the CuPy loader compiles runs at least once here (both float types,
    both index types, every kernel, forward and backward)."""
    from pacarray.gradients import pac_pool_vjp

    x = rng.standard_normal((1, 2, 5, 6))
    guide = rng.random((1, 2, 5, 6))
    weight = rng.standard_normal((3, 2, 3, 3))
    for limit in (launch.INT32_MAX, 0):
        monkeypatch.setattr(launch, "INT32_MAX", limit)
        for dtype in DTYPES:
            xd, gd, wd = (_cast(a, dtype) for a in (x, guide, weight))
            pacarray.pac_kernel(gd, 3, padding=1)
            pacarray.pac_pool(xd, 3, guide=gd, padding=1)
            monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
            pacarray.pac_conv(xd, wd, guide=gd, padding=1)
            monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 64)
            pac_pool_vjp(_cast(rng.standard_normal((1, 2, 5, 6)), dtype), xd, 3, guide=gd,
                         padding=1)
    compiled = {expression for filename in _loader.KERNELS
                for expression in _loader.name_expressions(filename)}
    emulated = set(cuda_backend.launches)
    assert emulated == compiled
    print(f"\nemulated {len(emulated)} kernel instantiations: {sorted(emulated)}")


# --------------------------------------------------------------------------------------------
# Backward passes (pac_backward): against finite differences of the oracle, and against the
# CPU backend's VJPs (themselves checked against finite differences in test_pac_*.py).

BACKWARD_OPS = ["pool", "shared", "conv", "conv_transpose"]


def _op_inputs(op, rng, options, geometry, dtype):
    """(call, arrays, keywords, oracle) for one op: ``call(**arrays, **keywords)`` is the public
    forward, ``oracle(**float64 arrays)`` the same computed by tests/reference.py."""
    transposed = op == "conv_transpose"
    if transposed:
        kernel_size, stride, padding, dilation, output_padding, shape = geometry
    else:
        kernel_size, stride, padding, dilation, shape = geometry
        output_padding = 0
    channels = 2 if options[5] else 3
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    if transposed:
        guide_shape = tuple(
            (n - 1) * s - 2 * p + d * (k - 1) + op_ + 1
            for n, k, s, p, d, op_ in zip(shape, _pair(kernel_size), _pair(stride),
                                          _pair(padding), _pair(dilation),
                                          _pair(output_padding)))
    else:
        guide_shape = shape
    public, oracle, guide = _setup(rng, options, kernel_size, dilation, guide_shape, channels,
                                   dtype)
    geometry_kw = dict(stride=stride, padding=padding, dilation=dilation)
    if transposed:
        geometry_kw["output_padding"] = output_padding
    arrays = dict(x=x)
    if op == "shared":
        arrays["weight"] = _rounded(rng.standard_normal((1, 1, *_pair(kernel_size))), dtype)
    elif op == "conv":
        arrays["weight"] = _rounded(rng.standard_normal((4, channels, *_pair(kernel_size))), dtype)
    elif op == "conv_transpose":
        arrays["weight"] = _rounded(rng.standard_normal((channels, 4, *_pair(kernel_size))), dtype)
    for name in ("guide", "spatial_weight", "mask"):
        if public[name] is not None:
            arrays[name] = oracle.get(name, guide)
    keywords = {k: v for k, v in public.items() if k not in arrays and k != "guide"}

    def call(module_function, grad_output=None, **values):
        values = {k: _cast(v, dtype) for k, v in values.items()}
        leading = () if grad_output is None else (_cast(grad_output, dtype),)
        if op == "pool":
            leading += (values.pop("x"), kernel_size)
        else:
            leading += (values.pop("x"), values.pop("weight"))
        return module_function(*leading, **geometry_kw, **keywords, **values)

    def evaluate(**values):
        kernel_keywords = {k: v for k, v in oracle.items() if k not in ("spatial_weight", "mask")}
        kernel_keywords["spatial_weight"] = values.get("spatial_weight")
        kernel_keywords["mask"] = values.get("mask")
        kernel_guide = values.get("guide", guide)
        if transposed:
            K, _ = ref_kernel(kernel_guide, kernel_size, dilation=dilation, transposed=True,
                              **kernel_keywords)
            return ref_conv_transpose(values["x"], K, values["weight"], **geometry_kw)
        K, _ = ref_kernel(kernel_guide, kernel_size, **geometry_kw, **kernel_keywords)
        if op == "pool":
            return ref_pool(values["x"], K, **geometry_kw)
        return ref_conv(values["x"], K, values["weight"], **geometry_kw)

    return call, arrays, evaluate


_FORWARD = {"pool": pacarray.pac_pool, "shared": pacarray.pac_conv, "conv": pacarray.pac_conv,
            "conv_transpose": pacarray.pac_conv_transpose}


def _assert_matches(assert_close, actual, expected, dtype):
    """assert_close, except that an all-zero expectation (an exactly vanishing gradient, e.g.
    of a normalized one-tap kernel) is met by values at rounding level, and that two float32
    gradients (both accumulated in float32, in different orders) are held to the float32
    backward tolerance of the gradients issue, 1e-4 relative to the largest entry."""
    if np.all(np.asarray(expected) == 0):
        tolerance = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
        assert np.asarray(actual).dtype == np.dtype(dtype)
        assert np.max(np.abs(actual)) <= tolerance
    elif np.dtype(dtype) == np.float32:
        actual, expected = np.asarray(actual), np.asarray(expected)
        assert actual.dtype == np.float32 and actual.shape == expected.shape
        scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
        error = float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale
        assert error <= 1e-4, f"max relative error {error:.3e} > 1e-4 (float32 gradients)"
    else:
        assert_close(actual, expected, dtype)


def _vjp_function(op):
    import pacarray.gradients as gradients

    return {"pool": gradients.pac_pool_vjp, "shared": gradients.pac_conv_vjp,
            "conv": gradients.pac_conv_vjp,
            "conv_transpose": gradients.pac_conv_transpose_vjp}[op]


def _backward_cases(with_bands=False):
    """Ops x options x geometries; with_bands adds the row-band chunking of the conv ops."""
    cases = []
    for i, op in enumerate(BACKWARD_OPS * 4):
        geometries = TRANSPOSED_GEOMETRIES if op == "conv_transpose" else FORWARD_GEOMETRIES
        options = OPTIONS[(i * 3) % len(OPTIONS)]
        geometry = geometries[i % len(geometries)]
        paths = ["whole", "bands"] if with_bands and op in ("conv", "conv_transpose") else [
            "whole"]
        for path in paths:
            cases.append(pytest.param(i, op, options, geometry, path, id=f"{op}-case{i}-{path}"))
    return cases


# quick: the first case of each op, the conv ops in whole images and in row bands
@pytest.mark.parametrize("index, op, options, geometry, path",
                         tiered(_backward_cases(True), range(6)))
def test_vjp_matches_finite_differences_of_the_oracle(cuda_backend, rng, monkeypatch, index, op,
                                                      options, geometry, path):
    """<vjp, v> for a random direction v of every input against central differences."""
    if path == "bands":
        monkeypatch.setattr(launch, "WORKSPACE_BYTES", 400)
    _small_grid(index, monkeypatch)
    call, arrays, evaluate = _op_inputs(op, rng, options, geometry, np.float64)
    reference = evaluate(**arrays)
    grad_output = rng.standard_normal(reference.shape)
    grads = call(_vjp_function(op), grad_output=grad_output, **arrays)
    assert {name.split("<")[0] for name in cuda_backend.launches} <= {
        "pac_backward", "pac_patches"}
    assert any(name.startswith("pac_backward") for name in cuda_backend.launches)
    step = 1e-6
    for name, value in arrays.items():
        direction = rng.standard_normal(value.shape)
        if name == "mask":
            direction *= (value > 0.05) & (value < 0.95)  # stay inside [0, 1]
        plus = evaluate(**{**arrays, name: value + step * direction})
        minus = evaluate(**{**arrays, name: value - step * direction})
        numeric = float(np.sum(grad_output * (plus - minus))) / (2 * step)
        analytic = float(np.sum(np.asarray(getattr(grads, name)) * direction))
        scale = max(abs(numeric), 1e-3)
        assert abs(analytic - numeric) <= 1e-6 * scale, (name, analytic, numeric)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index, op, options, geometry, path",
                         tiered(_backward_cases(), range(4)))  # quick: one case of each op
def test_vjp_matches_the_cpu_backend(emulator, assert_close, rng, monkeypatch, index, op,
                                     options, geometry, path, dtype):
    call, arrays, _ = _op_inputs(op, rng, options, geometry, dtype)
    grad_output = None
    results = {}
    for backend in ("cpu", "cuda"):
        if backend == "cuda":
            runtime = emu.EmulatedRuntime(emulator, reverse=index % 2 == 1)
            module = emu.emulated_backend(runtime)
            monkeypatch.setitem(sys.modules, module.__name__, module)
            monkeypatch.setitem(dispatch._BACKEND_MODULES, "numpy", module.__name__)
            _small_grid(index, monkeypatch)
            monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
        if grad_output is None:
            shape = call(_FORWARD[op], **arrays).shape
            grad_output = _rounded(rng.standard_normal(shape), dtype)
        grads = call(_vjp_function(op), grad_output=_cast(grad_output, dtype), **arrays)
        results[backend] = {k: None if v is None else np.array(v)
                            for k, v in grads._asdict().items()}
    assert results["cuda"].keys() == results["cpu"].keys()
    for name, expected in results["cpu"].items():
        actual = results["cuda"][name]
        assert (actual is None) == (expected is None), name
        if expected is not None:
            _assert_matches(assert_close, actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", tiered(range(len(OPTIONS)), quick=[2, 3]))
def test_pac_kernel_vjp_matches_the_cpu_backend(emulator, assert_close, rng, monkeypatch, index,
                                                dtype):
    import pacarray.gradients as gradients

    options = OPTIONS[index]
    if options[0] == "none":
        options = ("inverse", *options[1:])
    kernel_size, stride, padding, dilation, shape = FORWARD_GEOMETRIES[index]
    public, _, guide = _setup(rng, options, kernel_size, dilation, shape, 2, dtype)
    public.pop("guide")
    geometry_kw = dict(stride=stride, padding=padding, dilation=dilation)
    K = pacarray.pac_kernel(_cast(guide, dtype), kernel_size, **geometry_kw, **public)
    grad_output = _cast(rng.standard_normal(K.shape), dtype)
    results = {}
    for backend in ("cpu", "cuda"):
        if backend == "cuda":
            module = emu.emulated_backend(emu.EmulatedRuntime(emulator, reverse=index % 2 == 0))
            monkeypatch.setitem(sys.modules, module.__name__, module)
            monkeypatch.setitem(dispatch._BACKEND_MODULES, "numpy", module.__name__)
            _small_grid(index + 1, monkeypatch)
        grads = gradients.pac_kernel_vjp(grad_output, _cast(guide, dtype), kernel_size,
                                         **geometry_kw, **public)
        results[backend] = {k: None if v is None else np.array(v)
                            for k, v in grads._asdict().items()}
    for name, expected in results["cpu"].items():
        actual = results["cuda"][name]
        assert (actual is None) == (expected is None), name
        if expected is not None:
            _assert_matches(assert_close, actual, expected, dtype)


# --------------------------------------------------------------------------------------------
# Spatial ranks 1 and 3 (issue 15). The kernels work in three spatial dimensions and the backend
# lifts 1-D and 2-D calls (docs/design.md §3.3). These tests call the backend functions with a
# hand-built KernelSpec and Geometry (the front end's N-D validation is not what they test) and
# compare with the N-D oracle of tests/reference.py; test_volume_ops_match_the_cpu_backend below
# goes through the public functions.

from pacarray import _codes  # noqa: E402
from pacarray._geometry import Geometry, kernel_geometry  # noqa: E402
from pacarray._spec import KernelSpec  # noqa: E402
from reference import ref_smooth  # noqa: E402

# name -> (family code, alpha, lambda, eps, oracle keywords); alpha/lambda per kernel channel.
VOLUME_FAMILIES = {
    "none": (_codes.FAMILY_CONSTANT, 0.0, 0.0, 0.0, dict(family=None)),
    "gaussian": (_codes.FAMILY_GAUSSIAN, 0.0, 0.0, 0.0, dict(family="gaussian")),
    "inverse": (_codes.FAMILY_INVERSE, 0.5, -1.0, 1e-2,
                dict(family="inverse_power", alpha=0.5, lambda_=-1.0, eps=1e-2)),
    "inverse_asym": (_codes.FAMILY_INVERSE_ASYMMETRIC, 0.2, 2.0, 0.1,
                     dict(family="inverse_power", alpha=0.2, lambda_=2.0, eps=0.1,
                          asymmetric=True)),
}

# family, normalize, mask, smooth, spatial window, channel_wise
VOLUME_OPTIONS = [
    ("gaussian", "kernel", False, None, "gauss", False),
    ("inverse", "mask_kernel", True, "gaussian", "disk", False),
    ("inverse_asym", None, False, None, None, True),
    ("gaussian", "mask", True, ("average", 3), None, True),
    ("none", "kernel", True, None, "gauss", False),
    ("none", None, False, None, None, False),
]

# kernel_size, stride, padding, dilation, output_padding (transposed), spatial input shape
VOLUME_GEOMETRIES = {
    1: [
        ((3,), (1,), (1,), (1,), (0,), (9,)),
        ((5,), (2,), (2,), (1,), (1,), (8,)),
        ((3,), (3,), (0,), (2,), (2,), (11,)),
        ((1,), (2,), (0,), (1,), (1,), (5,)),
    ],
    3: [
        ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (0, 0, 0), (4, 5, 6)),
        ((1, 3, 5), (1, 2, 1), (0, 1, 2), (1, 1, 2), (0, 1, 0), (3, 6, 7)),
        ((3, 1, 3), (2, 1, 2), (1, 0, 0), (2, 1, 1), (1, 0, 1), (5, 3, 4)),
        ((5, 3, 1), (1, 1, 3), (2, 1, 0), (1, 2, 1), (0, 1, 2), (6, 5, 4)),
    ],
}


def _volume_cases(count):
    """(index, options, dtype): the options in turn, dtypes alternating; each test picks its
    geometry of each rank from the index."""
    return [
        pytest.param(i, VOLUME_OPTIONS[i % len(VOLUME_OPTIONS)], DTYPES[i % 2], id=f"case{i}")
        for i in range(count)
    ]


def _volume_window(kind, kernel_size, dilation):
    if kind == "gauss":
        return ref_spatial_window(kernel_size, sigma=1.3, dilation=dilation)
    if kind == "disk":
        return ref_spatial_window(kernel_size, sigma=2.0, window="disk", dilation=dilation)
    return None


def _volume_setup(rng, options, geometry, channels, guide_shape, dtype):
    """(spec, oracle keywords, oracle guide, float64 arrays by name) for one fused case."""
    family_name, normalize, with_mask, smooth, window, channel_wise = options
    code, alpha, lam, eps, oracle_family = VOLUME_FAMILIES[family_name]
    kernel_size, dilation = geometry.kernel_size, geometry.dilation
    batch = 2
    features = channels if channel_wise else 2
    fk = features if channel_wise else 1
    have_guide = code != _codes.FAMILY_CONSTANT
    guide = _rounded(1.5 * rng.random((batch, features, *guide_shape)), dtype)
    mask = None
    if with_mask:
        mask = rng.random((batch, 1, *guide_shape)) * (rng.random((batch, 1, *guide_shape)) > 0.3)
        mask[(..., *(slice(0, 2),) * len(guide_shape))] = 0.0  # a corner with Z == 0
        mask = _rounded(mask, dtype)
    spatial = _rounded(_volume_window(window, kernel_size, dilation), dtype)
    centre = _rounded(ref_smooth(guide, smooth), dtype) if have_guide else guide
    spec = KernelSpec(
        explicit=None,
        guide=_cast(guide, dtype) if have_guide else np.zeros((1, 1, 1, 1, 1), dtype),
        centre=_cast(centre, dtype) if have_guide else np.zeros((1, 1, 1, 1, 1), dtype),
        guide_shape=tuple(guide_shape),
        family=code,
        alpha=np.full(fk, alpha, dtype),
        lam=np.full(fk, lam, dtype),
        eps2=eps * eps,
        spatial=np.ones(kernel_size, dtype) if spatial is None else _cast(spatial, dtype),
        mask=(np.zeros((1, 1, 1), dtype) if mask is None
              else _cast(mask.reshape(batch, *guide_shape), dtype)),
        has_mask=mask is not None,
        normalize=_codes.NORMALIZE_CODES[normalize],
        channel_wise=channel_wise,
        fk_count=fk,
    )
    oracle = dict(oracle_family, smooth=smooth, spatial_weight=spatial, mask=mask,
                  normalize=normalize, channel_wise=channel_wise)
    oracle_guide = guide if have_guide else np.zeros((batch, 1, *guide_shape))
    arrays = dict(guide=guide if have_guide else None, mask=mask, spatial=spatial)
    return spec, oracle, oracle_guide, arrays


def _volume_geometry(values, transposed=False):
    kernel_size, stride, padding, dilation, output_padding, shape = values
    geometry = Geometry(kernel_size, stride, padding, dilation,
                        output_padding if transposed else (0,) * len(kernel_size), transposed)
    return geometry, shape


def _oracle_geometry(geometry):
    keywords = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation)
    if geometry.transposed:
        keywords["output_padding"] = geometry.output_padding
    return keywords


def _weight_matrix(weight, geometry):
    """The backend's (C_out, C*T) matrix: a transposed op's weight flipped and transposed."""
    if geometry.transposed:
        spatial_axes = tuple(range(2, weight.ndim))
        weight = np.flip(weight, spatial_axes).swapaxes(0, 1)
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1))


def _explicit_spec(K, dtype):
    """A KernelSpec carrying the explicit K (N, Fk, *k, *out) as (N, Fk, T, *out)."""
    batch, fk = K.shape[:2]
    rank = (K.ndim - 2) // 2
    kernel_size = K.shape[2:2 + rank]
    return KernelSpec(
        explicit=_cast(K.reshape(batch, fk, -1, *K.shape[2 + rank:]), dtype),
        guide=np.zeros((1,) * (2 + rank), dtype), centre=np.zeros((1,) * (2 + rank), dtype),
        guide_shape=(1,) * rank, family=_codes.FAMILY_CONSTANT, alpha=np.zeros(1, dtype),
        lam=np.zeros(1, dtype), eps2=0.0, spatial=np.ones(kernel_size, dtype),
        mask=np.zeros((1,) * (1 + rank), dtype), has_mask=False, normalize=0,
        channel_wise=fk > 1, fk_count=fk,
    )


def _emulated(emulator, reverse=False):
    return emu.emulated_backend(emu.EmulatedRuntime(emulator, reverse=reverse))


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
@pytest.mark.parametrize("index, options, dtype", tiered(_volume_cases(6), [0, 1]))
def test_volume_kernel_and_pool_match_oracle(emulator, assert_close, rng, monkeypatch, rank,
                                             index, options, dtype):
    """pac_fill and pac_direct (depthwise; fused and explicit) in 1-D and 3-D."""
    geometry, shape = _volume_geometry(VOLUME_GEOMETRIES[rank][index % 4])
    backend = _emulated(emulator, reverse=index % 2 == 1)
    _small_grid(index, monkeypatch)
    channels = 2 if options[5] else 3
    spec, oracle, guide, _ = _volume_setup(rng, options, geometry, channels, shape, dtype)
    out_shape = geometry.output_shape(shape)
    k_stride, k_padding = kernel_geometry(geometry)
    expected_K, expected_valid = ref_kernel(guide, geometry.kernel_size,
                                            **_oracle_geometry(geometry), **oracle)
    if options[0] != "none":  # pac_kernel always has a guide
        K, valid = backend.materialize_kernel(spec, geometry.kernel_size, k_stride, k_padding,
                                              geometry.dilation, out_shape)
        assert_close(K, expected_K, dtype)
        np.testing.assert_array_equal(valid, expected_valid)
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    expected = ref_pool(x, expected_K, **_oracle_geometry(geometry))
    ones = np.ones(geometry.kernel_size, dtype)
    y = backend.pool(_cast(x, dtype), ones, spec, geometry, k_stride, k_padding, out_shape)
    assert_close(y, expected, dtype)
    y = backend.pool(_cast(x, dtype), ones, _explicit_spec(expected_K, dtype), geometry, k_stride,
                     k_padding, out_shape)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("rank", [1, 3], ids=["1d", "3d"])
@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("transposed", [False, True], ids=["forward", "transposed"])
@pytest.mark.parametrize("index, options, dtype", tiered(_volume_cases(4), [2]))
def test_volume_conv_matches_oracle(emulator, assert_close, rng, monkeypatch, rank, path,
                                    transposed, index, options, dtype):
    """pac_direct (dense) and pac_patches, in whole images and line bands, forward and
    transposed, fused and (odd cases) explicit, in 1-D and 3-D."""
    geometry, shape = _volume_geometry(VOLUME_GEOMETRIES[rank][(index + rank) % 4], transposed)
    backend = _emulated(emulator, reverse=index % 2 == 0)
    _small_grid(index + 2, monkeypatch)
    channels = 2 if options[5] else 3
    out_channels = 3
    out_shape = geometry.output_shape(shape)
    guide_shape = out_shape if transposed else shape
    spec, oracle, guide, _ = _volume_setup(rng, options, geometry, channels, guide_shape, dtype)
    x = _rounded(rng.standard_normal((2, channels, *shape)), dtype)
    weight_shape = (channels, out_channels) if transposed else (out_channels, channels)
    weight = _rounded(rng.standard_normal((*weight_shape, *geometry.kernel_size)), dtype)
    k_stride, k_padding = kernel_geometry(geometry)
    if transposed:
        K, _ = ref_kernel(guide, geometry.kernel_size, dilation=geometry.dilation,
                          transposed=True, **oracle)
        expected = ref_conv_transpose(x, K, weight, **_oracle_geometry(geometry))
    else:
        K, _ = ref_kernel(guide, geometry.kernel_size, **_oracle_geometry(geometry), **oracle)
        expected = ref_conv(x, K, weight, **_oracle_geometry(geometry))
    if index % 2:
        spec = _explicit_spec(K, dtype)
    _force_path(path, monkeypatch, channels * geometry.taps, out_shape[-1],
                np.dtype(dtype).itemsize)
    y = backend.conv(_cast(x, dtype), _cast(_weight_matrix(weight, geometry), dtype), spec,
                     geometry, k_stride, k_padding, out_shape)
    assert_close(y, expected, dtype)


def _volume_loss(op, geometry, arrays, oracle, guide_shape, grad_output, weight_shape):
    """<grad_output, op(arrays)> by the oracle, with the kernel built from ``arrays``."""
    keywords = dict(oracle, spatial_weight=arrays.get("spatial"), mask=arrays.get("mask"))
    guide = arrays.get("guide")
    if guide is None:
        guide = np.zeros((grad_output.shape[0], 1, *guide_shape))
    if geometry.transposed:
        K, _ = ref_kernel(guide, geometry.kernel_size, dilation=geometry.dilation,
                          transposed=True, **keywords)
        y = ref_conv_transpose(arrays["x"], K, arrays["weight"], **_oracle_geometry(geometry))
    else:
        K, _ = ref_kernel(guide, geometry.kernel_size, **_oracle_geometry(geometry), **keywords)
        if op == "pool":
            y = ref_pool(arrays["x"], K, **_oracle_geometry(geometry))
        else:
            y = ref_conv(arrays["x"], K, arrays["weight"], **_oracle_geometry(geometry))
    return float(np.sum(grad_output * y))


def _volume_backward_cases():
    """(rank, op, index); 1-D: every op with the four option sets, 3-D (the oracle's finite
    differences take seconds there): two each, all four among the ops. Quick: every op in 1-D,
    pooling in 3-D."""
    ops = ("pool", "conv", "conv_transpose")
    cases = [pytest.param(1, op, index, id=f"1d-{op}-case{index}")
             for op in ops for index in range(4)]
    cases += [pytest.param(3, op, index, id=f"3d-{op}-case{index}")
              for j, op in enumerate(ops) for index in (j % 4, (j + 2) % 4)]
    quick = [i for i, case in enumerate(cases)
             if case.values[:3] in {(1, op, 0) for op in ops} | {(3, "pool", 2)}]
    return tiered(cases, quick)


@pytest.mark.parametrize("rank, op, index", _volume_backward_cases())
def test_volume_backward_matches_finite_differences(emulator, rng, monkeypatch, rank, op,
                                                    index):
    """pac_backward (depthwise and patch upstreams) in 1-D and 3-D: <vjp, v> of x, weight,
    guide, mask and spatial weight against central differences of the oracle (float64)."""
    transposed = op == "conv_transpose"
    options = [VOLUME_OPTIONS[i] for i in (0, 1, 2, 4)][index]
    options = (*options[:3], None, *options[4:])  # smoothing: covered by the forward tests
    geometry, shape = _volume_geometry(VOLUME_GEOMETRIES[rank][(index + 1) % 4], transposed)
    backend = _emulated(emulator, reverse=index % 2 == 1)
    _small_grid(index, monkeypatch)
    if op != "pool":
        monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
        monkeypatch.setattr(launch, "WORKSPACE_BYTES", 600)  # several line bands
    channels = 2 if options[5] else 3
    out_shape = geometry.output_shape(shape)
    guide_shape = out_shape if transposed else shape
    spec, oracle, _, arrays = _volume_setup(rng, options, geometry, channels, guide_shape,
                                            np.float64)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    arrays["x"] = rng.standard_normal((2, channels, *shape))
    weight_shape = None
    if op != "pool":
        weight_shape = (channels, 3) if transposed else (3, channels)
        arrays["weight"] = rng.standard_normal((*weight_shape, *geometry.kernel_size))
    grad_output = rng.standard_normal((2, channels if op == "pool" else 3, *out_shape))
    k_stride, k_padding = kernel_geometry(geometry)
    need_guide = "guide" in arrays
    if op == "pool":
        grad_x, _, _, parts = backend.pool_backward(
            grad_output, arrays["x"], np.ones(geometry.kernel_size), spec, geometry, k_stride,
            k_padding, True, False, True, need_guide)
        analytic = dict(x=grad_x)
    else:
        grad_x, grad_matrix, _, parts = backend.conv_backward(
            grad_output, arrays["x"], _weight_matrix(arrays["weight"], geometry), spec,
            geometry, k_stride, k_padding, True, True, True, need_guide)
        matrix_shape = weight_shape[::-1] if transposed else weight_shape
        grad_weight = grad_matrix.reshape(*matrix_shape, *geometry.kernel_size)
        if transposed:
            grad_weight = np.flip(grad_weight.swapaxes(0, 1), tuple(range(2, 2 + rank)))
        analytic = dict(x=grad_x, weight=grad_weight)
    if need_guide:
        analytic["guide"] = parts.guide + parts.centre  # no smoothing: the centre is the guide
    if "mask" in arrays:
        analytic["mask"] = parts.mask[:, None]
    if "spatial" in arrays:
        analytic["spatial"] = parts.spatial
    assert set(analytic) == set(arrays)
    step = 1e-6
    for name, value in arrays.items():
        direction = rng.standard_normal(value.shape)
        if name == "mask":
            direction *= (value > 0.05) & (value < 0.95)  # stay inside [0, 1]
        losses = [
            _volume_loss(op, geometry, {**arrays, name: value + sign * step * direction},
                         oracle, guide_shape, grad_output, weight_shape)
            for sign in (1, -1)
        ]
        numeric = (losses[0] - losses[1]) / (2 * step)
        result = float(np.sum(analytic[name] * direction))
        assert abs(result - numeric) <= 1e-6 * max(abs(numeric), 1e-3), (name, result, numeric)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lifted_ranks_give_the_2d_numbers_bit_for_bit(emulator, rng, dtype):
    """A 3-D call with a depth-1 kernel on (N, C, 1, H, W) equals the 2-D call on (N, C, H, W),
    and a 1-D call on (N, C, L) the 2-D call on (N, C, 1, L), bit for bit (the 2-D results are
    checked against the oracle above)."""
    import dataclasses

    backend = _emulated(emulator)
    options = ("inverse", "mask_kernel", True, "gaussian", "disk", False)
    cases = [  # (a 3-D or 1-D call, the 2-D call it equals)
        (((1, 3, 5), (1, 2, 1), (0, 1, 2), (1, 1, 2), (0, 0, 0), (1, 7, 9)),
         ((3, 5), (2, 1), (1, 2), (1, 2), (0, 0), (7, 9))),
        (((5,), (2,), (2,), (1,), (0,), (9,)),
         ((1, 5), (1, 2), (0, 2), (1, 1), (0, 0), (1, 9))),
    ]

    def run(geometry, spec, x, weight):
        k_stride, k_padding = kernel_geometry(geometry)
        out_shape = geometry.output_shape(x.shape[2:])
        K, valid = backend.materialize_kernel(spec, geometry.kernel_size, k_stride, k_padding,
                                              geometry.dilation, out_shape)
        pool = backend.pool(x, np.ones(geometry.kernel_size, dtype), spec, geometry, k_stride,
                            k_padding, out_shape)
        conv = backend.conv(x, weight, spec, geometry, k_stride, k_padding, out_shape)
        return [K.ravel(), valid.ravel(), pool.ravel(), conv.ravel()]

    for values, flat_values in cases:
        geometry, shape = _volume_geometry(values)
        flat, flat_shape = _volume_geometry(flat_values)
        spec, _, _, _ = _volume_setup(rng, options, geometry, 3, shape, dtype)
        flat_spec = dataclasses.replace(
            spec, guide=spec.guide.reshape(2, 2, *flat_shape),
            centre=spec.centre.reshape(2, 2, *flat_shape), guide_shape=flat_shape,
            spatial=spec.spatial.reshape(flat.kernel_size), mask=spec.mask.reshape(2, *flat_shape))
        x = _cast(rng.standard_normal((2, 3, *shape)), dtype)
        weight = _cast(rng.standard_normal((4, 3 * geometry.taps)), dtype)
        lifted = run(geometry, spec, x, weight)
        for result, expected in zip(lifted, run(flat, flat_spec, x.reshape(2, 3, *flat_shape),
                                                weight)):
            np.testing.assert_array_equal(result, expected)


def test_volume_64_bit_instantiations_give_the_same_numbers(emulator, rng, monkeypatch):
    """A 3-D forward and backward with every launch on the ``long long`` kernels (the 32-bit
    limit lowered to 0) equals the ``int`` run."""
    geometry, shape = _volume_geometry(VOLUME_GEOMETRIES[3][1])
    options = ("inverse", "mask_kernel", True, None, "disk", False)
    spec, _, _, _ = _volume_setup(rng, options, geometry, 3, shape, np.float64)
    k_stride, k_padding = kernel_geometry(geometry)
    out_shape = geometry.output_shape(shape)
    x = rng.standard_normal((2, 3, *shape))
    weight = rng.standard_normal((4, 3 * geometry.taps))
    grad_y = rng.standard_normal((2, 4, *out_shape))
    monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 0)
    results = []
    for limit in (launch.INT32_MAX, 0):
        monkeypatch.setattr(launch, "INT32_MAX", limit)
        backend = _emulated(emulator)
        emulator.launches.clear()
        K, _ = backend.materialize_kernel(spec, geometry.kernel_size, k_stride, k_padding,
                                          geometry.dilation, out_shape)
        y = backend.conv(x, weight, spec, geometry, k_stride, k_padding, out_shape)
        grad_x, grad_w, _, parts = backend.conv_backward(
            grad_y, x, weight, spec, geometry, k_stride, k_padding, True, True, True, True)
        index = "long long" if limit == 0 else "int"
        assert all(name.endswith(f", {index}>") for name in emulator.launches)
        results.append((K, y, grad_x, grad_w, parts.guide, parts.mask, parts.spatial))
    for narrow, wide in zip(*results):
        np.testing.assert_allclose(wide, narrow, rtol=1e-13, atol=1e-13)


def _public_volume_cases():
    """(rank, op, options, dtype, gradient): every op with the option sets in turn, forward and
    gradient, in 1-D and 3-D; quick: each op once, ranks and dtypes alternating."""
    from cuda_emulation.volume_cases import OPS, OPTION_SETS

    names = list(OPTION_SETS)
    cases = []
    for rank in (1, 3):
        for gradient in (False, True):
            for j, op in enumerate(OPS):
                for i in range(2):
                    options = names[(2 * j + i + rank + gradient) % len(names)]
                    if op == "kernel" and options == "plain":  # pac_kernel needs a guide
                        options = "gaussian"
                    dtype = DTYPES[(i + j) % 2]
                    mode = "vjp" if gradient else "forward"
                    cases.append(pytest.param(
                        rank, op, options, dtype, gradient,
                        id=f"{rank}d-{op}-{options}-{mode}-{np.dtype(dtype).name}"))
    quick = [k for k, case in enumerate(cases)
             if case.values[:2] in {(1, "pool"), (3, "conv"), (1, "conv_transpose"),
                                    (3, "kernel"), (1, "conv_wide"), (3, "shared")}
             and k % 2 == case.values[0] % 2]
    return tiered(cases, quick)


@pytest.mark.parametrize("rank, op, options, dtype, gradient", _public_volume_cases())
def test_volume_ops_match_the_cpu_backend(emulator, assert_close, rng, monkeypatch, rank, op,
                                          options, dtype, gradient):
    """The public functions in 1-D and 3-D, forward and _vjp, on the emulated CUDA backend
    against the CPU backend (itself checked against the oracle by test_volumes_ops.py)."""
    from cuda_emulation.volume_cases import as_dict, make_case

    run = make_case(rng, rank, op, options, dtype, gradient)
    expected = as_dict(run(np.asarray))
    module = _emulated(emulator, reverse=rank == 3)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(dispatch._BACKEND_MODULES, "numpy", module.__name__)
    _small_grid(2 if op in ("pool", "conv_wide") else 0, monkeypatch)
    emulator.launches.clear()
    actual = as_dict(run(np.asarray))
    assert emulator.launches, "the CUDA backend was not called"
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert (actual[name] is None) == (value is None), name
        if value is None:
            continue
        if gradient:
            _assert_matches(assert_close, actual[name], value, dtype)
        else:
            assert_close(actual[name], np.asarray(value, np.float64), dtype)
