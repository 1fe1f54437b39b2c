"""``pac_pool``: parity with the oracle, gradients, bad input.

Parity: the curated grid of ``_parity_cases.py``, plain average pooling and the bilateral filter.
The gradient and argument checks that several ops share are imported from
``_gradient_cases.py`` and ``_validation_cases.py`` and run here for ``OP`` (see
``_op_cases.py``).
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
)
from _validation_cases import (  # noqa: F401
    test_bad_dilation,
    test_bad_kernel_size,
    test_bad_padding,
    test_bad_stride,
    test_channel_wise_needs_one_guide_channel_per_data_channel,
    test_empty_arrays,
    test_explicit_kernel_excludes_the_kernel_description,
    test_explicit_kernel_shape_mismatch,
    test_family_must_be_a_family_object,
    test_float16_computes_as_float32,
    test_float_arguments_reject_other_dtypes,
    test_integer_spatial_weight_and_lists_are_cast,
    test_guide_batch_and_spatial_mismatch,
    test_input_too_small_for_the_kernel,
    test_lists_are_accepted,
    test_malformed_kernel_size,
    test_mask_dtype_and_range,
    test_mask_normalization_requires_a_mask,
    test_mixed_float32_float64_promotes_to_float64,
    test_per_channel_parameters_of_wrong_length,
    test_per_channel_parameters_require_channel_wise,
    test_result_dtype_is_the_input_dtype,
    test_unknown_normalize,
    test_unknown_or_malformed_smooth,
    test_wrong_mask_shape,
    test_wrong_ndim_of_data_and_guide,
    test_wrong_spatial_weight_shape,
)

#: The op of this file, given to the shared tests' ``op`` argument (see _op_cases.py).
OP = "pool"


@pytest.mark.parametrize("index", tiered_cases(range(len(CASES))), ids=CASE_IDS)
def test_pac_pool(index, assert_close):
    prep = prepared(index)
    dtype = prep.case.dtype
    kernel_size = tuple(prep.K.shape[2:4])
    explicit = pacarray.pac_pool(prep.x, kernel_size, **_explicit_kwargs(prep, prep.K))
    assert_close(explicit, prep.pool, dtype)
    fused = pacarray.pac_pool(prep.x, kernel_size, **_fused_kwargs(prep))
    assert_close(fused, prep.pool, dtype)
    assert_close(fused, explicit.astype(np.float64), dtype)


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
