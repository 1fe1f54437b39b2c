"""The CUDA backend on a real GPU: parity with the CPU backend for every op and gradient.

Marked ``gpu`` and skipped without CuPy or a CUDA device; run with ``python -m pytest -m gpu``.
The same kernels are checked without a GPU by test_cuda_emulation.py (against the oracle) and
test_cuda_nvrtc.py (compilation); this file checks what only a device shows: CuPy's launch of
the compiled modules, cuBLAS, cupyx's smoothing, streams, devices and very large arrays.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import pacarray
import pacarray.gradients as gradients


def _cupy_or_none():
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy if cupy.cuda.is_available() else None
    except Exception:  # a broken driver installation counts as no device
        return None


cp = _cupy_or_none()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(cp is None, reason="needs CuPy and a CUDA device"),
]

DTYPES = [np.float32, np.float64]


def _to_gpu(value):
    return cp.asarray(value) if isinstance(value, np.ndarray) else value


def _check(gpu_result, cpu_result, assert_close, dtype):
    assert isinstance(gpu_result, cp.ndarray)
    assert gpu_result.device.id == cp.cuda.Device().id
    assert_close(cp.asnumpy(gpu_result), cpu_result.astype(np.float64), dtype)


def _case(rng, dtype, channels=3, shape=(19, 23)):
    x = rng.standard_normal((2, channels, *shape)).astype(dtype)
    guide = (2.0 * rng.random((2, channels, *shape))).astype(dtype)
    mask = rng.random((2, 1, *shape)).astype(dtype)
    spatial = pacarray.spatial_window(5, 1.5, window="disk").astype(dtype)
    return x, guide, mask, spatial


OPTION_SETS = [
    dict(),
    dict(normalize="kernel"),
    dict(family=pacarray.Gaussian(), normalize="mask_kernel", smooth="gaussian", mask=True),
    dict(family=pacarray.InversePower(0.5, -1.0), normalize="kernel", channel_wise=True,
         spatial=True),
    dict(family=pacarray.InversePower(0.2, 1.0, asymmetric=True), mask=True),
]


def _keywords(options, guide, mask, spatial):
    keywords = {k: v for k, v in options.items() if k not in ("mask", "spatial")}
    if "family" in options:
        keywords["guide"] = guide
    if options.get("mask"):
        keywords["mask"] = mask
    if options.get("spatial"):
        keywords["spatial_weight"] = spatial
    return keywords


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTION_SETS)
def test_ops_match_the_cpu_backend(assert_close, rng, dtype, options):
    x, guide, mask, spatial = _case(rng, dtype)
    keywords = _keywords(options, guide, mask, spatial)
    gpu_keywords = {k: _to_gpu(v) for k, v in keywords.items()}
    weight = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    wide = rng.standard_normal((32, 3, 5, 5)).astype(dtype)  # the cuBLAS path
    shared = rng.standard_normal((1, 1, 5, 5)).astype(dtype)
    transposed_weight = rng.standard_normal((3, 4, 5, 5)).astype(dtype)
    geometry = dict(stride=2, padding=2)
    calls = [
        lambda xp_x, kw: pacarray.pac_pool(xp_x, 5, **geometry, **kw),
        lambda xp_x, kw: pacarray.pac_conv(xp_x, _like(xp_x, weight), **geometry, **kw),
        lambda xp_x, kw: pacarray.pac_conv(xp_x, _like(xp_x, wide), **geometry, **kw),
        lambda xp_x, kw: pacarray.pac_conv(xp_x, _like(xp_x, shared), **geometry, **kw),
    ]
    for call in calls:
        _check(call(cp.asarray(x), gpu_keywords), call(x, keywords), assert_close, dtype)
    if "guide" in keywords:
        K = pacarray.pac_kernel(guide, 5, **geometry,
                                **{k: v for k, v in keywords.items() if k != "guide"})
        K_gpu = pacarray.pac_kernel(cp.asarray(guide), 5, **geometry,
                                    **{k: v for k, v in gpu_keywords.items() if k != "guide"})
        _check(K_gpu, K, assert_close, dtype)
    # Transposed: the guide and mask live at the output resolution.
    out = (37, 45)
    _, guide_t, mask_t, _ = _case(rng, dtype, shape=out)
    keywords_t = _keywords(options, guide_t, mask_t, spatial)
    cpu = pacarray.pac_conv_transpose(x, transposed_weight, **geometry, **keywords_t)
    gpu = pacarray.pac_conv_transpose(cp.asarray(x), cp.asarray(transposed_weight), **geometry,
                                      **{k: _to_gpu(v) for k, v in keywords_t.items()})
    _check(gpu, cpu, assert_close, dtype)


def _like(reference, array):
    return cp.asarray(array) if isinstance(reference, cp.ndarray) else array


def _gradient_case(op, dtype, keywords, x, compute_dtype=None):
    """``(y, grad, vjp(...))`` of ``op`` on ``keywords`` and ``x`` (NumPy or CuPy).

    The weight and the upstream gradient are drawn in the case's ``dtype`` and cast to
    ``compute_dtype`` (default ``dtype``), like ``x`` and ``keywords``: a float64 run of a
    float32 case sees the same values.
    """
    xp = np if isinstance(x, np.ndarray) else cp
    compute_dtype = dtype if compute_dtype is None else compute_dtype

    def draw(seed, shape):
        values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
        return xp.asarray(values.astype(compute_dtype))

    kw = dict(keywords)
    if op == "kernel":
        guide_value = kw.pop("guide")
        K = pacarray.pac_kernel(guide_value, 5, **kw)
        grad = draw(3, K.shape)
        return K, grad, gradients.pac_kernel_vjp(grad, guide_value, 5, **kw)
    if op == "pool":
        y = pacarray.pac_pool(x, 5, **kw)
        grad = draw(3, y.shape)
        return y, grad, gradients.pac_pool_vjp(grad, x, 5, **kw)
    out_channels = 32 if op == "conv_wide" else 4
    if op == "conv_transpose":
        w = draw(4, (3, 4, 5, 5))
        forward, vjp = pacarray.pac_conv_transpose, gradients.pac_conv_transpose_vjp
    else:
        w = draw(4, (out_channels, 3, 5, 5))
        forward, vjp = pacarray.pac_conv, gradients.pac_conv_vjp
    y = forward(x, w, **kw)
    grad = draw(3, y.shape)
    return y, grad, vjp(grad, x, w, **kw)


def _family_parameter_scale(op, keywords, x, name):
    """Rounding scale of a family parameter's gradient: ``sum_i |g_i dy_i/dtheta|`` in float64.

    ``d(loss)/d(alpha)`` sums a contribution from every output element and tap, and those
    cancel (the test's conv case gives 0.0093 from terms of order one): float32 rounding error
    is proportional to the sum of the contributions' absolute values, not to the result. The
    derivative of each output element is taken by central differences in float64.
    """
    family = keywords["family"]
    step = 1e-6
    outputs = []
    for sign in (1.0, -1.0):
        shifted = {"alpha": family.alpha, "lambda_": family.lambda_}
        shifted[name] = shifted[name] + sign * step
        varied = dict(keywords, family=pacarray.InversePower(shifted["alpha"],
                                                             shifted["lambda_"]))
        y, grad, _ = _gradient_case(op, np.float32, varied, x, np.float64)
        outputs.append(y)
    derivative = (outputs[0] - outputs[1]) / (2 * step)
    return float(np.sum(np.abs(grad * derivative)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["pool", "conv", "conv_wide", "conv_transpose", "kernel"])
def test_gradients_match_the_cpu_backend(assert_close, rng, dtype, op):
    x, guide, mask, spatial = _case(rng, dtype)
    family = pacarray.InversePower(0.5, -1.0)
    keywords = dict(guide=guide, family=family, mask=mask, spatial_weight=spatial,
                    normalize="mask_kernel", smooth="gaussian", stride=2, padding=2)
    if op == "conv_transpose":
        _, keywords["guide"], keywords["mask"], _ = _case(rng, dtype, shape=(37, 45))

    def moved(to):
        return {k: to(v) for k, v in keywords.items()}

    gpu = _gradient_case(op, dtype, moved(_to_gpu), _to_gpu(x))[2]._asdict()
    if dtype == np.float64:
        cpu = _gradient_case(op, dtype, keywords, x)[2]._asdict()
        for name, expected in cpu.items():
            assert (gpu[name] is None) == (expected is None), name
            if expected is not None:
                _check(gpu[name], np.asarray(expected), assert_close, dtype)
        return
    # float32: the GPU accumulates in another order than the CPU (atomics), so it is compared
    # with the float64 CPU result on the same values (itself checked against the oracle), at
    # the float32 tolerance; the family parameters' gradients, sums over every
    # output element, at the scale of their terms (seen on an H200: the conv case's
    # d/d(alpha) = 0.0093385 came out as 0.0093367 on the CPU and 0.0093396 on the GPU, 2e-8
    # of the scale). A wrong formula is caught by the float64 case above, at 1e-10: both
    # dtypes are the same CUDA templates.
    as64 = lambda v: v.astype(np.float64) if isinstance(v, np.ndarray) else v  # noqa: E731
    truth = _gradient_case(op, dtype, moved(as64), as64(x), np.float64)[2]._asdict()
    for name, expected in truth.items():
        assert (gpu[name] is None) == (expected is None), name
        if expected is None:
            continue
        magnitude = None
        if name in ("alpha", "lambda_"):
            magnitude = _family_parameter_scale(op, moved(as64), as64(x), name)
        assert isinstance(gpu[name], cp.ndarray)
        assert_close(cp.asnumpy(gpu[name]), np.asarray(expected), dtype, magnitude)


# --------------------------------------------------------------------------------------------
# Spatial ranks 1 and 3 (issue 15): the same checks on signals and volumes, the calls shared
# with test_cuda_emulation.py (tests/cuda_emulation/volume_cases.py).


def _compare_volume_results(gpu_result, cpu_result, assert_close, dtype):
    from cuda_emulation.volume_cases import as_dict

    cpu, gpu = as_dict(cpu_result), as_dict(gpu_result)
    assert cpu.keys() == gpu.keys()
    for name, expected in cpu.items():
        assert (gpu[name] is None) == (expected is None), name
        if expected is not None:
            _check(gpu[name], np.asarray(expected), assert_close, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("options", ["plain", "gaussian", "mask_smooth", "inverse_cw",
                                     "asym_mask"])
@pytest.mark.parametrize("op", ["kernel", "pool", "conv", "conv_wide", "shared",
                                "conv_transpose"])
def test_volume_ops_match_the_cpu_backend(assert_close, rng, dtype, rank, options, op):
    from cuda_emulation.volume_cases import make_case

    run = make_case(rng, rank, op, options, dtype)
    _compare_volume_results(run(cp.asarray), run(lambda a: a), assert_close, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("options", ["mask_smooth", "inverse_cw", "asym_mask"])
@pytest.mark.parametrize("op", ["kernel", "pool", "conv", "conv_wide", "conv_transpose"])
def test_volume_gradients_match_the_cpu_backend(assert_close, rng, dtype, rank, options, op):
    from cuda_emulation.volume_cases import make_case

    run = make_case(rng, rank, op, options, dtype, gradient=True)
    cpu = run(lambda a: a)
    gpu = run(cp.asarray)
    if dtype == np.float32:
        # Both sides accumulate in float32 in different orders (atomics on the GPU): the
        # float32 gradient tolerance, 1e-4 of the largest entry.
        from cuda_emulation.volume_cases import as_dict

        for name, expected in as_dict(cpu).items():
            actual = as_dict(gpu)[name]
            assert (actual is None) == (expected is None), name
            if expected is not None:
                actual, expected = cp.asnumpy(actual), np.asarray(expected, np.float64)
                scale = max(float(np.abs(expected).max()), 1e-30)
                assert float(np.abs(actual - expected).max()) <= 1e-4 * scale, name
        return
    _compare_volume_results(gpu, cpu, assert_close, dtype)


def test_volume_conv_runs_on_a_64_cube(rng):
    """B-conv3d's shape: 8 -> 8 channels, 64^3, k = 3, fused Gaussian K from 4 guide channels;
    the GPU result equals the CPU backend's on the central slice."""
    x = rng.standard_normal((1, 8, 64, 64, 64)).astype(np.float32)
    guide = rng.random((1, 4, 64, 64, 64)).astype(np.float32)
    weight = (rng.standard_normal((8, 8, 3, 3, 3)) / 15).astype(np.float32)
    gpu = pacarray.pac_conv(cp.asarray(x), cp.asarray(weight), guide=cp.asarray(guide),
                            padding=1, normalize="kernel")
    cpu = pacarray.pac_conv(x, weight, guide=guide, padding=1, normalize="kernel")
    np.testing.assert_allclose(cp.asnumpy(gpu)[:, :, 32], cpu[:, :, 32], rtol=1e-4, atol=1e-5)


def test_non_contiguous_inputs(assert_close, rng):
    x, guide, mask, _ = _case(rng, np.float32, shape=(38, 46))
    x_view = cp.asarray(x)[:, :, ::2, 1::2]
    guide_view = cp.asfortranarray(cp.asarray(guide))[:, :, ::2, 1::2]
    assert not x_view.flags.c_contiguous and not guide_view.flags.c_contiguous
    gpu = pacarray.pac_pool(x_view, 3, padding=1, guide=guide_view, normalize="kernel")
    cpu = pacarray.pac_pool(x[:, :, ::2, 1::2], 3, padding=1, guide=guide[:, :, ::2, 1::2],
                            normalize="kernel")
    _check(gpu, cpu, assert_close, np.float32)


def test_second_stream(assert_close, rng):
    x, guide, _, _ = _case(rng, np.float32)
    weight = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    cpu = pacarray.pac_conv(x, weight, guide=guide, padding=1, normalize="kernel")
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x_gpu, g_gpu, w_gpu = cp.asarray(x), cp.asarray(guide), cp.asarray(weight)
        gpu = pacarray.pac_conv(x_gpu, w_gpu, guide=g_gpu, padding=1, normalize="kernel")
        done = stream.record()
    done.synchronize()
    assert stream.done
    _check(gpu, cpu, assert_close, np.float32)


def test_inputs_stay_on_their_device_and_are_not_written(rng):
    x, guide, _, _ = _case(rng, np.float64)
    x_gpu, g_gpu = cp.asarray(x), cp.asarray(guide)
    before = (x_gpu.copy(), g_gpu.copy())
    y = pacarray.pac_pool(x_gpu, 3, padding=1, guide=g_gpu, normalize="kernel")
    assert y.device.id == x_gpu.device.id
    assert cp.array_equal(x_gpu, before[0]) and cp.array_equal(g_gpu, before[1])


def test_mixing_numpy_and_cupy_raises_type_error(rng):
    x, guide, _, _ = _case(rng, np.float32)
    with pytest.raises(TypeError, match="one array library"):
        pacarray.pac_pool(cp.asarray(x), 3, padding=1, guide=guide)
    with pytest.raises(TypeError, match="one array library"):
        pacarray.pac_conv(x, cp.asarray(rng.standard_normal((2, 3, 3, 3))), padding=1)


def test_arrays_past_two_to_the_31_elements_use_64_bit_indexing():
    """A one-tap pool is the identity; with 2**31 + 65536 input elements the kernels must take
    the 64-bit instantiation and still reach the last element."""
    from pacarray._cuda import launch

    shape = (1, 2, 32768, 32769)  # 2 147 549 184 elements, 8.6 GB in float32
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 3 * 4 * np.prod(shape):
        pytest.skip("not enough GPU memory for the 2**31-element check")
    assert launch.index_dtype(int(np.prod(shape)), [int(np.prod(shape))], 256) == np.int64
    x = cp.ones(shape, cp.float32)
    x[0, 1, -1, -1] = 7.0
    y = pacarray.pac_pool(x, 1)
    assert float(y[0, 1, -1, -1]) == 7.0
    assert bool(cp.array_equal(y, x))


def test_a_repeated_call_uploads_nothing(rng, monkeypatch):
    """The family's parameters, the smoothing weights and the placeholders reach the device on
    the first call only (``_args.constant``): later calls with
    the same parameters make no host-to-device copy, which would make the host wait for the
    GPU (docs/design.md §4)."""
    x, guide, mask, spatial = _case(rng, np.float32)
    x, guide, spatial = cp.asarray(x), cp.asarray(guide), cp.asarray(spatial)
    calls = [
        lambda: pacarray.pac_pool(x, 5, guide=guide, padding=2, spatial_weight=spatial,
                                  normalize="kernel"),
        lambda: pacarray.pac_conv(x, cp.ones((4, 3, 5, 5), cp.float32), guide=guide, padding=2,
                                  family=pacarray.InversePower(0.5, -1.0), smooth="gaussian"),
    ]
    expected = [call() for call in calls]
    real_asarray = cp.asarray

    def no_upload(value, *args, **kwargs):
        # pacarray's own uploads only (CuPy's and cupyx's internals may make their own)
        caller = sys._getframe(1).f_globals.get("__name__", "")
        assert not (isinstance(value, np.ndarray) and caller.startswith("pacarray")), (
            f"{caller} uploaded {value.shape} {value.dtype}")
        return real_asarray(value, *args, **kwargs)

    monkeypatch.setattr(cp, "asarray", no_upload)
    for call, first in zip(calls, expected):
        assert bool(cp.all(call() == first))
