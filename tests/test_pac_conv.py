"""``pac_conv``: parity with the oracle, gradients, bad input.

Parity: the curated grid of ``_parity_cases.py`` and plain convolution against SciPy.
Gradients: the conv-only properties (register-tiled channel counts, paired channel rows, the
shared filter, the Z == 0 rule, ``wrt``, mixed precision). The gradient and argument checks that
several ops share are imported from ``_gradient_cases.py`` and ``_validation_cases.py`` and run
here for ``OP`` (see ``_op_cases.py``).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import ndimage, signal

import pacarray
from _gradient_cases import (
    BATCH,
    CHANNELS,
    CONV_GEOMETRIES,
    FD_TOLERANCE,
    IN_SHAPE,
    OUT_CHANNELS,
    STEP,
    _assert_passed,
    fused_case,
    op_inputs,
)
from _parity_cases import (
    CASE_IDS,
    CASES,
    DTYPES,
    _dilate,
    _explicit_kwargs,
    _fused_kwargs,
    _pair,
    prepared,
    tiered_cases,
)
from _tiers import tiered
from pacarray import pac_conv
from pacarray.gradients import pac_conv_vjp
from pacarray.testing import check_gradients, dot_product_test
from reference import ref_conv, ref_kernel

# The tests this op shares with others: pytest collects them here and runs them for OP.
from _gradient_cases import (  # noqa: F401
    test_adjoint_of_the_oracle_forward,
    test_backward_is_bit_identical_run_to_run_and_across_thread_counts,
    test_bad_arguments_give_the_forward_errors,
    test_explicit_vjp_matches_finite_differences_and_adjoint,
    test_float32_matches_float64,
    test_fused_gradients_equal_explicit_kernel_composed_with_pac_kernel_vjp,
    test_fused_vjp_matches_finite_differences,
    test_fused_vjp_matches_finite_differences_of_the_oracle,
    test_grad_output_of_wrong_shape_or_dtype_is_rejected,
    test_inputs_are_never_modified,
    test_one_weight_accumulator_matches_many,
)
from _validation_cases import (  # noqa: F401
    test_bad_dilation,
    test_bad_padding,
    test_bad_stride,
    test_channel_wise_needs_one_guide_channel_per_data_channel,
    test_empty_arrays,
    test_even_weight_is_rejected,
    test_explicit_kernel_excludes_the_kernel_description,
    test_explicit_kernel_shape_mismatch,
    test_family_must_be_a_family_object,
    test_float16_computes_as_float32,
    test_float_arguments_reject_other_dtypes,
    test_integer_spatial_weight_and_lists_are_cast,
    test_guide_batch_and_spatial_mismatch,
    test_input_too_small_for_the_kernel,
    test_lists_are_accepted,
    test_mask_dtype_and_range,
    test_mask_normalization_requires_a_mask,
    test_mixed_float32_float64_promotes_to_float64,
    test_per_channel_parameters_of_wrong_length,
    test_per_channel_parameters_require_channel_wise,
    test_result_dtype_is_the_input_dtype,
    test_unknown_normalize,
    test_unknown_or_malformed_smooth,
    test_weight_and_bias_channel_mismatch,
    test_weight_is_required,
    test_wrong_mask_shape,
    test_wrong_ndim_of_data_and_guide,
    test_wrong_ndim_of_weight_and_bias,
    test_wrong_spatial_weight_shape,
)

#: The op of this file, given to the shared tests' ``op`` argument (see _op_cases.py).
OP = "conv"


@pytest.mark.parametrize("index", tiered_cases(range(len(CASES))), ids=CASE_IDS)
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_tiles_match_the_oracle(rng, assert_close, dtype):
    """The forward's register tiles: every block split of 1 to 29 output channels (blocks of
    16/12/8/4/2/1 with AVX-512, 6/4/2/1 with AVX2), rows narrower and wider than one tile of
    pixels, and a long reduction (C*T = 2079 steps)."""
    for out_channels, channels, shape in [(29, 2, (5, 21)), (3, 2, (4, 3)), (13, 231, (4, 5))]:
        x = rng.standard_normal((1, channels, *shape)).astype(dtype)
        guide = rng.random((1, 2, *shape)).astype(dtype)
        K, _ = ref_kernel(guide, 3, padding=1)
        for count in range(1, out_channels + 1):
            weight = rng.standard_normal((count, channels, 3, 3)).astype(dtype)
            assert_close(pac_conv(x, weight, guide=guide, padding=1), ref_conv(x, K, weight,
                                                                                padding=1),
                         dtype)


@pytest.mark.parametrize("shape, channels, dilation, padding", [
    # 64 channels of dilated rows: the window of rows the taps span (33 rows) passes
    # _ROW_CACHE_BYTES, so the padded input rows are cached one slot per tap row
    ((1, 64, 40, 43), 64, 8, 16),
    # 500-pixel rows (one per band), 5 taps 8 apart: a band of the adaptive kernel would copy
    # 33 guide rows for one output row, so the kernel is computed row by row
    ((1, 2, 12, 500), 2, 8, 16),
])
def test_dilated_forward_paths_match_the_oracle(rng, assert_close, shape, channels, dilation,
                                                padding):
    """``conv_rows``'s fallbacks for widely dilated taps (``docs/design.md`` §4): the per-tap
    row cache and the row-by-row kernel."""
    x = rng.standard_normal(shape).astype(np.float32)
    guide = rng.random((1, 2, *shape[2:])).astype(np.float32)
    weight = rng.standard_normal((3, channels, 5, 5)).astype(np.float32)
    K, _ = ref_kernel(guide, 5, padding=padding, dilation=dilation)
    assert_close(pac_conv(x, weight, guide=guide, padding=padding, dilation=dilation),
                 ref_conv(x, K, weight, padding=padding, dilation=dilation), np.float32)


def test_forward_is_bit_identical_run_to_run_and_across_thread_counts(rng):
    """Each output sums its products in a fixed order, whatever the thread count."""
    x = rng.standard_normal((2, 5, 19, 37)).astype(np.float32)
    weight = rng.standard_normal((11, 5, 3, 3)).astype(np.float32)
    guide = rng.random((2, 3, 19, 37)).astype(np.float32)
    first = pac_conv(x, weight, guide=guide, padding=1).tobytes()
    assert pac_conv(x, weight, guide=guide, padding=1).tobytes() == first
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert pac_conv(x, weight, guide=guide, padding=1).tobytes() == first
    finally:
        numba.set_num_threads(threads)


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


@pytest.mark.parametrize("out_channels", tiered([4, 8, 12, 16], quick=[2]))  # 12: fours and eights
@pytest.mark.parametrize("channels", [2, 3])
def test_conv_vjp_with_wide_channel_counts(out_channels, channels, rng):
    """The register-tiled products (output channels in fours and eights, patch rows in pairs,
    odd remainders) against finite differences and the oracle's adjoint."""
    x = rng.standard_normal((1, channels, 6, 7))
    weight = rng.standard_normal((out_channels, channels, 3, 3))
    guide = 2.0 * rng.random((1, 2, 6, 7))
    inputs = dict(x=x, weight=weight, guide=guide, padding=1, normalize="kernel")
    _assert_passed(check_gradients(pac_conv, pac_conv_vjp, inputs, step=STEP,
                                   tolerance=FD_TOLERANCE, directions=2))
    # without the weight gradient the patch gradient runs alone (another tiled kernel)
    grad_y = rng.standard_normal((1, out_channels, 6, 7))
    everything = pac_conv_vjp(grad_y, **inputs)
    for name in ("x", "guide", "weight"):
        alone = getattr(pac_conv_vjp(grad_y, **inputs, wrt=name), name)
        np.testing.assert_allclose(alone, getattr(everything, name), rtol=1e-12, atol=1e-13)
    kernel = rng.uniform(0.1, 1.0, (1, 1, 3, 3, 6, 7))
    oracle = dict(x=x, weight=weight, kernel=kernel)
    report = dot_product_test(lambda x, weight, kernel: ref_conv(x, kernel, weight, padding=1),
                              lambda g, **kw: pac_conv_vjp(g, padding=1, **kw), oracle,
                              tolerance=1e-11)
    _assert_passed(report)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_paired_channel_rows_match_one_channel_at_a_time(dtype, rng):
    """With x and kernel gradients both wanted, the conv backward interleaves the patch rows of
    two channels tap by tap (shared K loads, weight columns permuted and restored); asking for
    one gradient at a time uses the plain order. An odd channel count leaves one channel
    alone, and 5 x 5 taps put channel pairs across the blocks of patch rows."""
    channels, out_channels = 5, 4
    x = rng.standard_normal((2, channels, 9, 11)).astype(dtype)
    weight = rng.standard_normal((out_channels, channels, 5, 5)).astype(dtype)
    guide = rng.random((2, 3, 9, 11)).astype(dtype)
    grad_y = rng.standard_normal((2, out_channels, 9, 11)).astype(dtype)
    options = dict(guide=guide, padding=(2, 4), dilation=(1, 2))
    everything = pac_conv_vjp(grad_y, x, weight, **options)
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5,
                                                                                 atol=2e-5)
    for name in ("x", "weight", "guide"):
        alone = getattr(pac_conv_vjp(grad_y, x, weight, **options, wrt=name), name)
        scale = np.abs(alone).max()
        np.testing.assert_allclose(getattr(everything, name) / scale, alone / scale,
                                   **tolerance)


def test_shared_filter_gradient_is_the_trace_of_the_full_one(rng):
    geometry = CONV_GEOMETRIES[2]
    inputs, out_shape = op_inputs(rng, "conv", geometry, weight="shared")
    inputs["guide"] = rng.random((BATCH, CHANNELS, *IN_SHAPE))
    shared = inputs["weight"]
    full = np.zeros((CHANNELS, CHANNELS, *shared.shape[2:]))
    for c in range(CHANNELS):
        full[c, c] = shared[0, 0]
    grad_y = rng.standard_normal((BATCH, CHANNELS, *out_shape))
    g_shared = pac_conv_vjp(grad_y, **inputs)
    g_full = pac_conv_vjp(grad_y, **{**inputs, "weight": full})
    np.testing.assert_allclose(g_shared.weight[0, 0],
                               sum(g_full.weight[c, c] for c in range(CHANNELS)), rtol=1e-12)
    for name in ("x", "guide"):
        np.testing.assert_allclose(getattr(g_shared, name), getattr(g_full, name), rtol=1e-10,
                                   atol=1e-12)


def test_zero_normalizer_gives_zero_output_and_zero_gradient(rng):
    """Where Z == 0 the output is 0 and nothing flows back; elsewhere gradients stay exact."""
    x = rng.standard_normal((1, CHANNELS, 9, 9))
    guide = rng.random((1, 2, 9, 9))
    mask = rng.uniform(0.2, 0.9, (1, 1, 9, 9))
    mask[..., :5, :5] = 0.0                          # outputs (0..3, 0..3) see no mask
    weight = rng.standard_normal((OUT_CHANNELS, CHANNELS, 3, 3))
    kw = dict(guide=guide, mask=mask, padding=1)
    for normalize in ("mask", "mask_kernel"):
        y = pac_conv(x, weight, normalize=normalize, **kw)
        assert np.all(y[..., :4, :4] == 0.0)
        grad_y = np.zeros_like(y)
        grad_y[..., :4, :4] = rng.standard_normal(grad_y[..., :4, :4].shape)
        grads = pac_conv_vjp(grad_y, x, weight, normalize=normalize, **kw)
        for name in ("x", "weight", "guide", "mask"):
            value = getattr(grads, name)
            assert np.all(value == 0.0), (normalize, name)
        # the other outputs still differentiate correctly (mask kept away from the jump)
        report = check_gradients(
            pac_conv, pac_conv_vjp,
            dict(x=x, weight=weight, normalize=normalize, **kw),
            wrt=("x", "weight", "guide"), step=STEP, tolerance=FD_TOLERANCE, directions=2,
        )
        _assert_passed(report)


def test_wrt_selects_fields_without_changing_values(rng):
    forward, vjp, inputs = fused_case(rng, "conv", "inverse_user_smooth", 0)
    grad_y = rng.standard_normal(forward(**inputs).shape)
    everything = vjp(grad_y, **inputs)
    some = vjp(grad_y, **inputs, wrt=("guide", "alpha"))
    for name in everything._fields:
        if name in ("guide", "alpha"):
            np.testing.assert_array_equal(getattr(some, name), getattr(everything, name))
        else:
            assert getattr(some, name) is None
    only_x = vjp(grad_y, **inputs, wrt="x")
    np.testing.assert_array_equal(only_x.x, everything.x)
    only_bias = vjp(grad_y, **inputs, wrt="bias")
    np.testing.assert_array_equal(only_bias.bias, grad_y.sum(axis=(0, 2, 3)))
    assert all(getattr(only_bias, n) is None for n in everything._fields if n != "bias")


def test_unknown_wrt_name_is_rejected(rng):
    x = rng.random((1, 1, 5, 5))
    with pytest.raises(ValueError, match="wrt.*'weights'"):
        pac_conv_vjp(np.ones((1, 1, 5, 5)), x, np.ones((1, 1, 3, 3)), padding=1,
                     wrt=["weights"])


def test_mixed_precision_follows_the_forward_dtype(rng):
    x = rng.random((1, 2, 6, 6)).astype(np.float32)
    w = rng.random((2, 2, 3, 3))                       # float64 weight: float64 computation
    grads = pac_conv_vjp(np.ones((1, 2, 6, 6), np.float32), x, w, padding=1)
    assert grads.x.dtype == np.float64 and grads.weight.dtype == np.float64
    grads = pac_conv_vjp(np.ones((1, 2, 6, 6)), x, w.astype(np.float32), padding=1)
    assert grads.x.dtype == np.float32                 # grad_output follows the forward


_WIDE_TILES = """
import sys
import llvmlite.binding as binding
import numba
numba.njit(lambda a: a + 1)(1)        # Numba's code generator made for the real CPU first
host = binding.get_host_cpu_features


def reports_avx512():                 # then pacarray's tile width sees AVX-512, or not
    features = host()
    features["avx512f"] = sys.argv[2] == "avx512"
    return features


binding.get_host_cpu_features = reports_avx512
import numpy as np
sys.path.insert(0, sys.argv[1])
from reference import ref_conv, ref_kernel
import pacarray
from pacarray._cpu import _microkernel
if sys.argv[2] == "avx512":
    assert _microkernel.VECTOR_BYTES == 64 and _microkernel.TILE_SIZES[0] == 16
else:
    assert _microkernel.VECTOR_BYTES == 32 and _microkernel.TILE_SIZES[0] == 6
assert _microkernel.tile_width(4) == 16
rng = np.random.default_rng(5)
worst = 0.0
for out_channels, channels, shape in [(7, 2, (5, 71)), (3, 2, (4, 3)), (13, 231, (4, 37))]:
    x = rng.standard_normal((1, channels, *shape)).astype(np.float32)
    guide = rng.random((1, 2, *shape)).astype(np.float32)
    K, _ = ref_kernel(guide, 3, padding=1)
    for count in (1, 5, 6, 16, 29, out_channels):
        weight = rng.standard_normal((count, channels, 3, 3)).astype(np.float32)
        want = ref_conv(x, K, weight, padding=1)
        got = pacarray.pac_conv(x, weight, guide=guide, padding=1)
        worst = max(worst, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
print(worst)
"""


@pytest.mark.slow
@pytest.mark.parametrize("vectors", ["avx512", "avx2"])
def test_forward_tiles_of_avx512_width_match_the_oracle(tmp_path, vectors):
    """The tiles follow the host's widest vectors (pacarray/_cpu/_microkernel.py): AVX-512 gets
    64-byte vectors and blocks of up to 16 output channels, AVX2 32-byte vectors and blocks of
    up to 6. Each is forced here in a fresh process (own Numba cache, which is keyed by the host
    CPU, not by this width); LLVM splits or joins them into the vectors this CPU has, so the
    tile arithmetic of both kinds of machine is checked on any x86 machine."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    done = subprocess.run(
        [sys.executable, "-c", _WIDE_TILES, str(Path(__file__).resolve().parent), vectors],
        capture_output=True, text=True, env=environment, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5
