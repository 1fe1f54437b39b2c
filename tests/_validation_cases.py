"""Argument checks shared by the ops' test files: bad input per the API contract, and the
dtype policy of every op.

The ``test_*`` functions here take an ``op`` and run from the files of the ops named in their
``@ops(...)`` (see ``_op_cases.py``); ``call(op, **changes)`` runs a valid call of ``op`` with
some arguments changed. Checks of one op alone (``output_padding``, the family objects,
``spatial_window``) are in that op's file; the NaN propagation and inputs-untouched tests, which
run all ops side by side, are in ``test_ops_common.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from pacarray import (
    Gaussian,
    InversePower,
    pac_conv,
    pac_conv_transpose,
    pac_kernel,
    pac_pool,
    spatial_window,
)
from _op_cases import ops
from reference import (
    ref_conv,
    ref_conv_transpose,
    ref_kernel,
    ref_pool,
)

DROP = object()  # marks an argument to leave out of the call
DATA_OPS = ["conv", "conv_transpose", "pool"]


def _arrays(op):
    """A valid call of ``op`` (fused path, Gaussian kernel) as a dict of arguments."""
    rng = np.random.default_rng(7)
    if op == "kernel":
        return dict(guide=rng.standard_normal((2, 3, 6, 7)), kernel_size=3, padding=1)
    if op == "conv":
        return dict(
            x=rng.standard_normal((2, 3, 6, 7)), weight=rng.standard_normal((4, 3, 3, 3)),
            bias=rng.standard_normal(4), padding=1, guide=rng.standard_normal((2, 3, 6, 7)),
        )
    if op == "conv_transpose":
        # Output (4-1)*2 - 2 + 2 + 1 + 1 = 8 rows, (5-1)*2 - 2 + 2 + 1 + 1 = 10 columns.
        return dict(
            x=rng.standard_normal((2, 3, 4, 5)), weight=rng.standard_normal((3, 4, 3, 3)),
            bias=rng.standard_normal(4), stride=2, padding=1, output_padding=1,
            guide=rng.standard_normal((2, 3, 8, 10)),
        )
    return dict(x=rng.standard_normal((2, 3, 6, 7)), kernel_size=3, padding=1,
                guide=rng.standard_normal((2, 3, 6, 7)))


def _explicit_shape(op):
    return (2, 1, 3, 3, 8, 10) if op == "conv_transpose" else (2, 1, 3, 3, 6, 7)


def call(op, explicit=False, **changes):
    """Run ``op`` with the default arguments, ``changes`` applied (``DROP`` removes one)."""
    args = _arrays(op)
    if explicit:
        del args["guide"]
        args["kernel"] = np.full(_explicit_shape(op), 0.1)
    args.update(changes)
    args = {name: value for name, value in args.items() if value is not DROP}
    if op == "kernel":
        return pac_kernel(args.pop("guide"), args.pop("kernel_size"), **args)
    if op == "pool":
        return pac_pool(args.pop("x"), args.pop("kernel_size"), **args)
    function = pac_conv if op == "conv" else pac_conv_transpose
    return function(args.pop("x"), args.pop("weight"), args.pop("bias", None), **args)


def _raises(exceptions, name, *shown):
    """pytest.raises matching the parameter name and, optionally, the received value/shape."""
    pattern = "".join(f"(?=.*{re.escape(text)})" for text in (name, *shown))
    return pytest.raises(exceptions, match=re.compile(pattern, re.DOTALL))


EITHER = (ValueError, TypeError)

# --- geometry ------------------------------------------------------------------------------


@ops("kernel", "pool")
@pytest.mark.parametrize("kernel_size", [2, 0, -1, -3, (3, 4), (4, 3)])
def test_bad_kernel_size(op, kernel_size):
    with _raises(ValueError, "kernel_size"):
        call(op, kernel_size=kernel_size, padding=0)


@ops("kernel", "pool")
@pytest.mark.parametrize("kernel_size", [(3, 3, 3), 3.0, "3", (3.0, 3)])
def test_malformed_kernel_size(op, kernel_size):
    with _raises(EITHER, "kernel_size"):
        call(op, kernel_size=kernel_size, padding=0)


@ops("conv", "conv_transpose")
@pytest.mark.parametrize("sides", [(2, 3), (3, 4), (4, 4)])
def test_even_weight_is_rejected(op, sides):
    args = _arrays(op)
    weight = np.ones(args["weight"].shape[:2] + sides)
    with _raises(ValueError, "weight"):
        call(op, weight=weight, padding=0, output_padding=DROP if op == "conv" else 0)


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("stride", [0, -1, (1, 0), (-2, 1)])
def test_bad_stride(op, stride):
    with _raises(ValueError, "stride"):
        call(op, stride=stride)


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("padding", [-1, 2, (0, 2), (-1, 0), 5])
def test_bad_padding(op, padding):
    # k = 3, d = 1: padding must lie in [0, 1].
    with _raises(ValueError, "padding"):
        call(op, padding=padding)


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("dilation", [0, -1, (1, 0)])
def test_bad_dilation(op, dilation):
    with _raises(ValueError, "dilation"):
        call(op, dilation=dilation, padding=0)


@ops("kernel", "conv", "pool")
def test_input_too_small_for_the_kernel(op):
    rng = np.random.default_rng(0)
    name = "guide" if op == "kernel" else "x"
    changes = {name: rng.standard_normal((2, 3, 2, 7)), "padding": 0}
    if op != "kernel":
        changes["guide"] = rng.standard_normal((2, 3, 2, 7))
    with _raises(ValueError, name, "(2, 7)"):
        call(op, **changes)


# --- shapes --------------------------------------------------------------------------------


@ops("kernel", "conv", "conv_transpose", "pool")
def test_wrong_ndim_of_data_and_guide(op):
    args = _arrays(op)
    for name in ["x", "guide"]:
        if name not in args:
            continue
        value = args[name]
        bad_values = [value[0], value[None], value[0, 0, 0]]
        if op == "kernel":
            # a lone guide of 3 or 5 dimensions is a signal or a volume (docs/design.md §7)
            bad_values = [value[0, 0], value[None, None]]
        for bad in bad_values:
            with _raises(ValueError, name, str(bad.shape)):
                call(op, **{name: bad})


@ops("conv", "conv_transpose")
def test_wrong_ndim_of_weight_and_bias(op):
    args = _arrays(op)
    with _raises(ValueError, "weight", str(args["weight"][0].shape)):
        call(op, weight=args["weight"][0])
    with _raises(ValueError, "bias"):
        call(op, bias=args["bias"][None])
    with _raises(ValueError, "bias"):
        call(op, bias=np.float64(1.0))


@ops("kernel", "conv", "conv_transpose", "pool")
def test_wrong_mask_shape(op):
    spatial = (8, 10) if op == "conv_transpose" else (6, 7)
    for shape in [(2, 1) + spatial[:1], (1, 1) + spatial, (2, 2) + spatial,
                  (2, 1, spatial[0], spatial[1] + 1), (2, 1, 1, 1)]:
        with _raises(ValueError, "mask", str(shape)):
            call(op, mask=np.ones(shape))


@ops("kernel", "conv", "conv_transpose", "pool")
def test_wrong_spatial_weight_shape(op):
    for shape in [(5, 5), (3,), (3, 1), (1, 3, 3)]:
        with _raises(ValueError, "spatial_weight", str(shape)):
            call(op, spatial_weight=np.ones(shape))


@ops("conv", "conv_transpose", "pool")
def test_guide_batch_and_spatial_mismatch(op):
    guide = _arrays(op)["guide"]
    with _raises(ValueError, "guide", str(guide[:1].shape)):
        call(op, guide=guide[:1])
    with _raises(ValueError, "guide", str(guide[:, :, :-1].shape)):
        call(op, guide=guide[:, :, :-1])
    with _raises(ValueError, "guide"):
        call(op, guide=guide[:, :, :, 1:])


@ops("conv", "conv_transpose", "pool")
def test_explicit_kernel_shape_mismatch(op):
    shape = _explicit_shape(op)
    bad_shapes = [
        (1,) + shape[1:],  # batch
        (2, 2) + shape[2:],  # neither 1 nor C channels
        shape[:2] + (5, 5) + shape[4:],  # taps
        shape[:4] + (shape[4] + 1, shape[5]),  # output rows
        shape[:5] + (shape[5] - 1,),  # output columns
    ]
    for bad in bad_shapes:
        with _raises(ValueError, "kernel", str(bad)):
            call(op, explicit=True, kernel=np.ones(bad))
    with _raises(ValueError, "kernel"):
        call(op, explicit=True, kernel=np.ones(shape[:5]))


@ops("conv", "conv_transpose")
def test_weight_and_bias_channel_mismatch(op):
    weight = _arrays(op)["weight"]
    bad = weight[:, :2] if op == "conv" else weight[:2]
    with _raises(ValueError, "weight", str(bad.shape)):
        call(op, weight=bad)
    with _raises(ValueError, "bias", "(5,)"):
        call(op, bias=np.ones(5))
    with _raises(ValueError, "bias"):
        call(op, bias=np.ones(3) if op == "conv" else np.ones(5))


@ops("conv", "conv_transpose", "pool")
def test_channel_wise_needs_one_guide_channel_per_data_channel(op):
    guide = _arrays(op)["guide"][:, :2]
    with _raises(ValueError, "channel_wise"):
        call(op, guide=guide, channel_wise=True)
    # The same guide is fine with a shared kernel.
    assert np.all(np.isfinite(call(op, guide=guide)))


# --- kernel families -----------------------------------------------------------------------


@ops("kernel", "conv", "conv_transpose", "pool")
def test_per_channel_parameters_require_channel_wise(op):
    for family, name in [
        (InversePower([0.1, 0.2, 0.3], -1.0), "alpha"),
        (InversePower(0.1, [-1.0, -0.5, 1.0]), "lambda_"),
    ]:
        with _raises(ValueError, name):
            call(op, family=family)
        # With channel_wise (guide has 3 channels, data 3 channels) it is accepted.
        assert np.all(np.isfinite(call(op, family=family, channel_wise=True)))


@ops("kernel", "conv", "conv_transpose", "pool")
def test_per_channel_parameters_of_wrong_length(op):
    for family, name in [
        (InversePower([0.1, 0.2], -1.0), "alpha"),
        (InversePower(0.1, [-1.0, -0.5, 1.0, 2.0]), "lambda_"),
    ]:
        with _raises(ValueError, name):
            call(op, family=family, channel_wise=True)


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("family", ["gaussian", Gaussian, 1.0])
def test_family_must_be_a_family_object(op, family):
    with _raises(TypeError, "family"):
        call(op, family=family)


# --- dtypes --------------------------------------------------------------------------------

BAD_DTYPES = [np.int64, np.int32, np.uint8, np.bool_, np.complex128]


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_float_arguments_reject_other_dtypes(op, dtype):
    args = _arrays(op)
    names = [n for n in ["x", "guide", "weight", "bias"] if n in args]
    for name in names:
        with _raises(TypeError, name, np.dtype(dtype).name):
            call(op, **{name: args[name].astype(dtype)})
    if np.dtype(dtype).kind == "c":
        with _raises(TypeError, "spatial_weight", np.dtype(dtype).name):
            call(op, spatial_weight=np.ones((3, 3), dtype))
    if op != "kernel":
        with _raises(TypeError, "kernel", np.dtype(dtype).name):
            call(op, explicit=True, kernel=np.ones(_explicit_shape(op), dtype))


@ops("kernel", "conv", "conv_transpose", "pool")
def test_mask_dtype_and_range(op):
    spatial = (8, 10) if op == "conv_transpose" else (6, 7)
    shape = (2, 1) + spatial
    with _raises(TypeError, "mask", "complex"):
        call(op, mask=np.ones(shape, np.complex128))
    for bad in [2.0, -0.5, np.nan]:
        mask = np.ones(shape)
        mask[1, 0, 1, 1] = bad
        with _raises(ValueError, "mask"):
            call(op, mask=mask)
    # bool and integer masks are accepted and mean the same as float ones.
    rng = np.random.default_rng(3)
    mask = rng.random(shape) > 0.5
    expected = call(op, mask=mask.astype(np.float64), normalize="mask")
    np.testing.assert_array_equal(call(op, mask=mask, normalize="mask"), expected)
    np.testing.assert_array_equal(call(op, mask=mask.astype(np.uint8), normalize="mask"),
                                  expected)


# --- options -------------------------------------------------------------------------------


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("normalize", ["sum", "Kernel", "masked", 1, True])
def test_unknown_normalize(op, normalize):
    with _raises(EITHER, "normalize"):
        call(op, normalize=normalize)


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("normalize", ["mask", "mask_kernel"])
def test_mask_normalization_requires_a_mask(op, normalize):
    with _raises(ValueError, "mask"):
        call(op, normalize=normalize)


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize(
    "smooth",
    ["box", "Gaussian", ("median", 3), ("average", 2), ("average", 0), ("average", -1),
     np.ones((2, 3)), np.ones((3, 4)), np.ones(3), np.ones((3, 3, 3))],
    ids=lambda s: repr(s) if not isinstance(s, np.ndarray) else f"array{s.shape}",
)
def test_unknown_or_malformed_smooth(op, smooth):
    with _raises(EITHER, "smooth"):
        call(op, smooth=smooth)


@ops("kernel", "conv", "conv_transpose", "pool")
def test_empty_arrays(op):
    args = _arrays(op)
    for name in [n for n in ["x", "guide", "weight"] if n in args]:
        value = args[name]
        for axis in range(value.ndim):
            empty = np.take(value, [], axis=axis)
            with _raises(ValueError, name):
                call(op, **{name: empty})


@ops("conv", "conv_transpose", "pool")
def test_explicit_kernel_excludes_the_kernel_description(op):
    guide = _arrays(op)["guide"]
    spatial = guide.shape[2:]
    for name, value in [
        ("guide", guide),
        ("normalize", "kernel"),
        ("mask", np.ones((2, 1) + spatial)),
        ("smooth", "gaussian"),
        ("spatial_weight", np.ones((3, 3))),
        ("channel_wise", True),
        ("family", Gaussian()),
    ]:
        with _raises(ValueError, name):
            call(op, explicit=True, **{name: value})
    with _raises(EITHER, "kernel"):
        call(op, explicit=True, kernel=np.ones((2, 1, 3, 3) + (1, 1)))
    with _raises(ValueError, "kernel"):
        call(op, explicit=True, kernel=np.ones((0,) + _explicit_shape(op)[1:]))


@ops("conv", "conv_transpose")
def test_weight_is_required(op):
    with _raises(TypeError, "weight"):
        call(op, weight=None)


# --- dtype policy and conversions ----------------------------------------------------------


def _call_with(op, args):
    args = dict(args)
    if op == "kernel":
        return pac_kernel(args.pop("guide"), args.pop("kernel_size"), **args)
    if op == "pool":
        return pac_pool(args.pop("x"), args.pop("kernel_size"), **args)
    function = pac_conv if op == "conv" else pac_conv_transpose
    return function(args.pop("x"), args.pop("weight"), args.pop("bias", None), **args)


def _float_inputs(op, dtype):
    args = _arrays(op)
    for name in ["x", "guide", "weight", "bias"]:
        if name in args:
            args[name] = args[name].astype(dtype)
    return args


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_result_dtype_is_the_input_dtype(op, dtype):
    out = _call_with(op, _float_inputs(op, dtype))
    assert out.dtype == dtype


@ops("kernel", "conv", "conv_transpose", "pool")
@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_], ids=lambda d: np.dtype(d).name)
def test_integer_spatial_weight_and_lists_are_cast(op, dtype):
    base = _float_inputs(op, np.float32)
    expected = _call_with(op, dict(base, spatial_weight=np.ones((3, 3), np.float32)))
    for weight in (np.ones((3, 3), dtype), np.ones((3, 3), dtype).tolist()):
        out = _call_with(op, dict(base, spatial_weight=weight))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)


@ops("kernel", "conv", "conv_transpose", "pool")
def test_mixed_float32_float64_promotes_to_float64(op, assert_close):
    base = _float_inputs(op, np.float32)
    reference = _call_with(op, {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v
                                for k, v in base.items()})
    names = [n for n in ["x", "guide", "weight", "bias"] if n in base]
    for name in names:
        args = dict(base, **{name: base[name].astype(np.float64)})
        out = _call_with(op, args)
        assert out.dtype == np.float64, name
        assert_close(out, reference, np.float64)
    # Parameter arrays take the data's dtype: a float64 spatial weight (spatial_window's) or
    # mask keeps a float32 call in float32.
    out = _call_with(op, dict(base, spatial_weight=np.ones((3, 3))))
    assert out.dtype == np.float32
    spatial = (8, 10) if op == "conv_transpose" else (6, 7)
    out = _call_with(op, dict(base, mask=np.ones((2, 1) + spatial)))
    assert out.dtype == np.float32
    if op != "kernel":
        explicit = {k: v for k, v in base.items() if k != "guide"}
        out = _call_with(op, dict(explicit, kernel=np.ones(_explicit_shape(op))))
        assert out.dtype == np.float64


@ops("kernel", "conv", "conv_transpose", "pool")
def test_float16_computes_as_float32(op, assert_close):
    half = _float_inputs(op, np.float16)
    out = _call_with(op, half)
    assert out.dtype == np.float32
    as_single = _call_with(op, {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v
                                for k, v in half.items()})
    assert_close(out, as_single.astype(np.float64), np.float32)
    # And against the oracle on the same (float16-representable) values.
    guide = half["guide"].astype(np.float64)
    if op == "kernel":
        expected, _ = ref_kernel(guide, 3, 1, 1)
    else:
        K, _ = ref_kernel(guide, 3, half.get("stride", 1), 1, transposed=op == "conv_transpose")
        x = half["x"].astype(np.float64)
        if op == "pool":
            expected = ref_pool(x, K, None, 1, 1)
        elif op == "conv":
            expected = ref_conv(x, K, half["weight"], half["bias"], 1, 1)
        else:
            expected = ref_conv_transpose(x, K, half["weight"], half["bias"], 2, 1, 1, 1)
    assert_close(out, expected, np.float32)


@ops("kernel", "conv", "conv_transpose", "pool")
def test_lists_are_accepted(op):
    args = _arrays(op)
    spatial = (8, 10) if op == "conv_transpose" else (6, 7)
    args.update(mask=np.random.default_rng(1).random((2, 1) + spatial),
                spatial_weight=spatial_window(3, 1.0), normalize="mask_kernel")
    expected = _call_with(op, args)
    as_lists = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in args.items()}
    as_lists["kernel_size"] = [3, 3] if "kernel_size" in args else None
    if as_lists["kernel_size"] is None:
        del as_lists["kernel_size"]
    as_lists["padding"] = [1, 1]
    out = _call_with(op, as_lists)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)
    if op != "kernel":
        kernel = np.random.default_rng(2).random(_explicit_shape(op))
        explicit = {k: v for k, v in args.items()
                    if k not in ("guide", "mask", "spatial_weight", "normalize")}
        np.testing.assert_array_equal(
            _call_with(op, dict(explicit, kernel=kernel.tolist())),
            _call_with(op, dict(explicit, kernel=kernel)),
        )


