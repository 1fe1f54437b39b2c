"""``pac_conv_transpose``: parity with the oracle, gradients, bad input.

Parity: the curated grid of ``_parity_cases.py`` and plain transposed convolution (scatter
form, PyTorch when installed). Bad input: ``output_padding`` and the output-sized guide. The
gradient and argument checks that several ops share are imported from ``_gradient_cases.py``
and ``_validation_cases.py`` and run here for ``OP`` (see ``_op_cases.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

import pacarray
from _parity_cases import (
    CASE_IDS,
    CASES,
    DTYPES,
    _explicit_kwargs,
    _fused_kwargs,
    _pair,
    prepared,
    tiered_cases,
)
from _validation_cases import _raises, call
from pacarray import pac_conv_transpose, pac_kernel
from reference import ref_conv_transpose_scatter

# The tests this op shares with others: pytest collects them here and runs them for OP.
from _gradient_cases import (  # noqa: F401
    test_adjoint_of_the_oracle_forward,
    test_backward_is_bit_identical_run_to_run_and_across_thread_counts,
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
OP = "conv_transpose"


@pytest.mark.parametrize("index", tiered_cases(range(len(CASES))), ids=CASE_IDS)
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


@pytest.mark.slow  # importing PyTorch takes seconds
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


@pytest.mark.parametrize("output_padding", [-1, 2, (0, 2), (3, 0), (1, -1)])
def test_bad_output_padding(output_padding):
    # stride 2, dilation 1: output_padding must lie in [0, max(stride, dilation)).
    with _raises(ValueError, "output_padding"):
        call("conv_transpose", output_padding=output_padding)
    with _raises(ValueError, "output_padding"):
        pac_kernel(np.zeros((1, 1, 8, 10)), 3, stride=2, padding=1, transposed=True,
                   output_padding=output_padding)


def test_output_padding_may_reach_dilation_minus_one():
    x = np.ones((1, 1, 3, 3))
    y = pac_conv_transpose(x, np.ones((1, 1, 3, 3)), stride=1, dilation=3,
                           output_padding=(2, 1))
    assert y.shape == (1, 1, 3 - 1 + 6 + 2 + 1, 3 - 1 + 6 + 1 + 1)


def test_transposed_guide_must_have_the_output_shape():
    with _raises(ValueError, "guide", "(2, 3, 4, 5)"):
        call("conv_transpose", guide=np.ones((2, 3, 4, 5)))


@pytest.mark.parametrize("kernel_size, dilation, size", [(3, 2, 1), (5, 3, 2)])
def test_weight_gradient_on_outputs_shorter_than_the_dilation(rng, assert_close, kernel_size,
                                                              dilation, size):
    # Regression: with stride 1 and padding d*(k-1)/2 a tap whose span is empty used to zero the
    # previous patch row (an out-of-range o_first), so the weight gradient came out 0.
    from pacarray.gradients import pac_conv_transpose_vjp

    geometry = dict(stride=1, padding=dilation * (kernel_size - 1) // 2, dilation=dilation)
    x = rng.standard_normal((1, 2, size, size))
    weight = rng.standard_normal((2, 3, kernel_size, kernel_size))
    grad_y = rng.standard_normal(ref_conv_transpose_scatter(x, weight, **geometry).shape)
    # the forward is linear in the weight: the oracle gradient is <g, y(basis weight)>
    expected = np.zeros_like(weight)
    for index in np.ndindex(*weight.shape):
        basis = np.zeros_like(weight)
        basis[index] = 1.0
        expected[index] = np.sum(grad_y * ref_conv_transpose_scatter(x, basis, **geometry))
    assert np.abs(expected).max() > 0.1
    got = pac_conv_transpose_vjp(grad_y, x, weight, **geometry).weight
    assert_close(got, expected, np.float64)
