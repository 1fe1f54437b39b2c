"""``pac_kernel`` (and ``spatial_window``): parity with the oracle, gradients, bad input.

Parity: the curated grid of ``_parity_cases.py`` (every case with a guide), ``spatial_window``
against the oracle, the validity output. Gradients: ``pac_kernel_vjp`` against finite
differences and its errors. Bad input: the family objects, ``spatial_window``, the padding
limit. The argument checks that every op shares are imported from ``_validation_cases.py`` and
run here for ``OP`` (see ``_op_cases.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

import pacarray
from _gradient_cases import (
    CONV_GEOMETRIES,
    FD_TOLERANCE,
    IN_SHAPE,
    KERNEL_CASES,
    QUICK_KERNEL_CASES,
    STEP,
    TRANSPOSE_GEOMETRIES,
    _assert_passed,
    kernel_inputs,
    with_family,
)
from _parity_cases import CASE_IDS, GUIDED, _fused_kwargs, prepared, tiered_cases
from _tiers import tiered_values
from _validation_cases import EITHER, _raises
from pacarray import InversePower, pac_kernel, spatial_window
from pacarray.gradients import pac_kernel_vjp
from pacarray.testing import check_gradients
from reference import forward_out_size, ref_kernel, ref_spatial_window

# The tests this op shares with others: pytest collects them here and runs them for OP.
from _validation_cases import (  # noqa: F401
    test_bad_dilation,
    test_bad_kernel_size,
    test_bad_padding,
    test_bad_stride,
    test_empty_arrays,
    test_family_must_be_a_family_object,
    test_float16_computes_as_float32,
    test_float_arguments_reject_other_dtypes,
    test_integer_spatial_weight_and_lists_are_cast,
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
OP = "kernel"


@pytest.mark.parametrize("index", tiered_cases(GUIDED), ids=[CASE_IDS[i] for i in GUIDED])
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


def test_spatial_window_matches_oracle(assert_close):
    for kernel_size in [1, 3, 5, (3, 5), (1, 5)]:
        for sigma in [None, 0.7, 2.0]:
            for window in ["square", "disk"]:
                for dilation in [1, 2, (2, 1)]:
                    actual = pacarray.spatial_window(kernel_size, sigma, window=window,
                                                     dilation=dilation)
                    expected = ref_spatial_window(kernel_size, sigma, window, dilation)
                    assert_close(actual, expected, np.float64)


def test_validity_shape_and_dtype_channel_wise(rng):
    guide = rng.standard_normal((1, 3, 5, 6))
    K, valid = pacarray.pac_kernel(guide, 3, stride=2, normalize="kernel", channel_wise=True,
                                   return_validity=True)
    assert K.shape == (1, 3, 3, 3, 2, 2)
    assert valid.shape == (1, 3, 2, 2) and valid.dtype == np.bool_ and valid.all()
    assert forward_out_size(5, 3, 2, 0, 1) == 2


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


# pac_kernel needs a guide: the kernel cases with a family (the quick ones among them).
GUIDED_KERNEL_CASES = tiered_values(
    [c for c, o in KERNEL_CASES.items() if o["family"]],
    [c for c in QUICK_KERNEL_CASES if KERNEL_CASES[c]["family"]],
)


@pytest.mark.parametrize("case", GUIDED_KERNEL_CASES)
@pytest.mark.parametrize("transposed", [False, True])
def test_pac_kernel_vjp_matches_finite_differences(case, transposed, rng):
    index = list(KERNEL_CASES).index(case)
    if transposed:
        geometry = dict(TRANSPOSE_GEOMETRIES[index % len(TRANSPOSE_GEOMETRIES)])
    else:
        geometry = dict(CONV_GEOMETRIES[index % len(CONV_GEOMETRIES)])
    inputs, family_options = kernel_inputs(rng, case, geometry["kernel_size"], IN_SHAPE)
    inputs.update(geometry, transposed=transposed)
    report = check_gradients(with_family(pac_kernel, family_options),
                             with_family(pac_kernel_vjp, family_options), inputs,
                             step=STEP, tolerance=FD_TOLERANCE, directions=2)
    expected = {"guide", "alpha", "lambda_", "spatial_weight", "mask"} & set(inputs)
    if isinstance(inputs.get("smooth"), np.ndarray):
        expected.add("smooth")
    assert set(report.errors) == expected
    _assert_passed(report)


def test_unnormalized_kernel_sum_gradient_matches_closed_form(rng):
    """d/d alpha of sum(K) for the inverse-power kernel is the number of in-range taps."""
    guide = rng.random((1, 1, 6, 7))
    family = InversePower(alpha=0.4, lambda_=-1.0)
    K = pac_kernel(guide, 3, padding=1, family=family)
    grads = pac_kernel_vjp(np.ones_like(K), guide, 3, padding=1, family=family)
    in_range_taps = (6 * 3 - 2) * (7 * 3 - 2)   # per dimension: 3 taps minus the two borders
    assert grads.alpha.shape == ()
    assert float(grads.alpha) == pytest.approx(in_range_taps, rel=1e-12)


def test_pac_kernel_vjp_rejects_bad_grad_output(rng):
    guide = rng.random((1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"grad_output.*\(1, 2, 3, 3, 6, 6\)"):
        pac_kernel_vjp(np.ones((1, 1, 3, 3, 6, 6)), guide, 3, padding=1, channel_wise=True)
    with pytest.raises(TypeError, match="grad_output"):
        pac_kernel_vjp(np.ones((1, 1, 3, 3, 6, 6), bool), guide, 3, padding=1)


def test_pac_kernel_vjp_gives_the_forward_errors():
    guide = np.ones((1, 2, 6, 6))
    for bad in (dict(normalize="mask"), dict(smooth=np.ones((2, 2))), dict(stride=0)):
        with pytest.raises((ValueError, TypeError)) as forward_error:
            pac_kernel(guide, 3, padding=1, **bad)
        with pytest.raises(forward_error.type) as vjp_error:
            pac_kernel_vjp(np.ones((1, 1, 3, 3, 6, 6)), guide, 3, padding=1, **bad)
        assert str(vjp_error.value) == str(forward_error.value)


def test_padding_limit_scales_with_dilation():
    guide = np.zeros((1, 1, 9, 9))
    assert pac_kernel(guide, 3, padding=2, dilation=2).shape == (1, 1, 3, 3, 9, 9)
    with _raises(ValueError, "padding"):
        pac_kernel(guide, 3, padding=3, dilation=2)
    with _raises(ValueError, "padding"):
        pac_kernel(guide, (3, 5), padding=(1, 3), dilation=1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(alpha=np.nan, lambda_=-1.0), "alpha"),
        (dict(alpha=[0.1, np.nan], lambda_=-1.0), "alpha"),
        (dict(alpha=0.1, lambda_=np.nan), "lambda_"),
        (dict(alpha=0.1, lambda_=np.inf), "lambda_"),
        (dict(alpha=0.1, lambda_=-1.0, eps=np.nan), "eps"),
        (dict(alpha=0.1, lambda_=-1.0, eps=np.inf), "eps"),
        (dict(alpha=0.1, lambda_=-1.0, eps=-0.1), "eps"),
        (dict(alpha=0.1, lambda_=-1.0, eps=0.0), "eps"),
        (dict(alpha=[[0.1]], lambda_=-1.0), "alpha"),
        (dict(alpha=[], lambda_=-1.0), "alpha"),
        (dict(alpha="a", lambda_=-1.0), "alpha"),
    ],
)
def test_bad_inverse_power_parameters(kwargs, name):
    with _raises(EITHER, name):
        InversePower(**kwargs)


def test_eps_zero_is_fine_with_non_negative_lambda():
    family = InversePower(0.0, 2.0, eps=0.0)
    K = pac_kernel(np.arange(3.0).reshape(1, 1, 1, 3), (1, 3), padding=(0, 1), family=family)
    np.testing.assert_allclose(K[0, 0, 0, :, 0, 1], [1.0, 0.0, 1.0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(kernel_size=3, window="circle"), "window"),
        (dict(kernel_size=3, window=None), "window"),
        (dict(kernel_size=3, sigma=0.0), "sigma"),
        (dict(kernel_size=3, sigma=-1.0), "sigma"),
        (dict(kernel_size=3, sigma=np.nan), "sigma"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=3, dilation=0), "dilation"),
    ],
)
def test_bad_spatial_window(kwargs, name):
    with _raises(EITHER, name):
        spatial_window(**kwargs)
