"""Bad and unusual input across every public function (issue 17, items 3 and 4).

* ``test_bad_input_raises``: one wrong argument per case (empty and zero-size arrays, wrong
  ndim, every wrong dtype, wrong types for ints and floats, None where an array is required,
  NaN/Inf and extreme values in parameters, huge sizes, mismatched shapes); each asserts the
  exact exception type and that the message names the parameter (and the value or shape where
  that says something).
* ``test_layout_gives_the_native_result``: big-endian, Fortran-ordered, negatively strided,
  non-contiguous, read-only and ``np.memmap`` inputs give the native C-contiguous result bit for
  bit, in the native byte order.
* ``test_unusual_but_valid``: inputs at the edge of the contract with a defined result.
* ``test_inputs_untouched_and_outputs_fresh``: over all the valid calls above, no input array
  is written to or has its flags changed, and no output shares memory with an input.
* ``test_defect_*``: one test per item-3 defect fixed in 918340b (each fails before it).
* ``KNOWN_HOLES``: holes outside the validation layer, ``xfail(strict=True)`` until fixed.

Arrays are tiny (6 x 7 pixels) so that the file runs in seconds with a warm Numba cache.
"""

from __future__ import annotations

import copy
import fractions
import re

import numpy as np
import pytest

from pacarray import (
    Gaussian,
    InversePower,
    PairwiseTerm,
    bilateral_filter,
    bilateral_filter_vjp,
    color_position_features,
    detail_preserving_pool,
    joint_bilateral_upsample,
    normalized_convolution,
    pac_conv,
    pac_conv_transpose,
    pac_conv_transpose_vjp,
    pac_conv_vjp,
    pac_crf,
    pac_crf_vjp,
    pac_kernel,
    pac_kernel_vjp,
    pac_pool,
    pac_pool_vjp,
    spatial_window,
    warmup,
)

# --------------------------------------------------------------------------------------------
# Inputs: small, fixed, read-only (a function that wrote into its input would raise here)


def _frozen(array):
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


_rng = np.random.default_rng(17)
X = _frozen(_rng.standard_normal((1, 2, 6, 7)))        # (N, C, H, W)
GUIDE = _frozen(_rng.random((1, 2, 6, 7)))             # (N, F, H, W)
WEIGHT = _frozen(_rng.standard_normal((3, 2, 3, 3)))   # (C_out, C, kh, kw)
WEIGHT_T = _frozen(_rng.standard_normal((2, 3, 3, 3)))  # (C, C_out, kh, kw)
BIAS = _frozen(_rng.standard_normal(3))
MASK = _frozen(_rng.random((1, 1, 6, 7)))
IMG = _frozen(_rng.random((6, 7)))
RGB = _frozen(_rng.random((6, 7, 3)))
LOW = _frozen(_rng.random((3, 4)))                     # covers IMG at factor 2
UNARY = _frozen(_rng.normal(size=(3, 6, 7)))
del _rng

F32 = np.float32
LONGDOUBLE = np.dtype(np.longdouble)
needs_extended = pytest.mark.skipif(
    LONGDOUBLE.itemsize <= 8, reason="numpy.longdouble is float64 on this platform"
)
SIGMAS = dict(sigma_spatial=1.0, sigma_color=0.3)


def _raises(exception, *texts):
    """``pytest.raises`` whose message must contain every one of ``texts``."""
    pattern = "".join(f"(?=.*{re.escape(text)})" for text in texts)
    return pytest.raises(exception, match=re.compile(pattern, re.DOTALL))


def _case(call, exception, *texts, id, marks=()):
    return pytest.param(call, exception, texts, id=id, marks=marks)


class _TorchLike:
    """Stands in for a ``torch.Tensor``: pacarray recognises foreign arrays by the module of
    their type (as it does CuPy's), and importing torch would cost seconds."""

    __module__ = "torch"
    shape = (1, 2, 6, 7)
    dtype = np.dtype(np.float32)


# --------------------------------------------------------------------------------------------
# Bad input: the exact exception, naming the parameter (and the value / shape)

CORE_ERRORS = [
    # empty and zero-size arrays
    _case(lambda: pac_kernel(np.empty((1, 2, 0, 7)), 3), ValueError, "guide", "(1, 2, 0, 7)",
          id="pac_kernel-guide-zero-height"),
    _case(lambda: pac_pool(np.empty((0, 2, 6, 7)), 3), ValueError, "x", "(0, 2, 6, 7)",
          id="pac_pool-x-zero-batch"),
    _case(lambda: pac_conv(X, np.empty((0, 2, 3, 3))), ValueError, "weight", "(0, 2, 3, 3)",
          id="pac_conv-weight-zero-out-channels"),
    _case(lambda: pac_conv(X, WEIGHT, np.empty(0)), ValueError, "bias", "(0,)",
          id="pac_conv-bias-empty"),
    _case(lambda: pac_conv_transpose(np.empty((1, 2, 0, 3)), WEIGHT_T), ValueError, "x",
          "(1, 2, 0, 3)", id="pac_conv_transpose-x-zero-height"),
    # wrong ndim
    _case(lambda: pac_pool(1.0, 3), ValueError, "x", "()", id="pac_pool-x-scalar"),
    _case(lambda: pac_kernel(GUIDE[None, None], 3), ValueError, "guide", "(1, 1, 1, 2, 6, 7)",
          id="pac_kernel-guide-6d"),  # a 5-D guide is a volume (docs/design.md §7)
    _case(lambda: pac_conv_transpose(X[0], WEIGHT_T), ValueError, "x", "(2, 6, 7)",
          id="pac_conv_transpose-x-3d"),
    _case(lambda: pac_conv(X, WEIGHT[0]), ValueError, "weight", "(2, 3, 3)",
          id="pac_conv-weight-3d"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE[0]), ValueError, "guide", "(2, 6, 7)",
          id="pac_pool-guide-3d"),
    # every wrong dtype of a data array
    _case(lambda: pac_pool(X.astype(np.int64), 3), TypeError, "x", "int64",
          id="pac_pool-x-int64"),
    _case(lambda: pac_pool(X > 0, 3), TypeError, "x", "bool", id="pac_pool-x-bool"),
    _case(lambda: pac_conv(X, WEIGHT.astype(np.complex64)), TypeError, "weight", "complex64",
          id="pac_conv-weight-complex64"),
    _case(lambda: pac_pool(X.astype(object), 3), TypeError, "x", "object",
          id="pac_pool-x-object"),
    _case(lambda: pac_pool(X.astype(str), 3), TypeError, "x", "<U", id="pac_pool-x-str"),
    _case(lambda: pac_pool(X.astype("datetime64[s]"), 3), TypeError, "x", "datetime64",
          id="pac_pool-x-datetime64"),
    _case(lambda: pac_pool(X.astype(np.longdouble), 3), TypeError, "x", str(LONGDOUBLE),
          id="pac_pool-x-longdouble", marks=needs_extended),
    _case(lambda: pac_pool(X, 3, guide=GUIDE.astype(np.longdouble)), TypeError, "guide",
          str(LONGDOUBLE), id="pac_pool-guide-longdouble", marks=needs_extended),
    _case(lambda: pac_conv(X, WEIGHT, BIAS.astype(np.longdouble)), TypeError, "bias",
          str(LONGDOUBLE), id="pac_conv-bias-longdouble", marks=needs_extended),
    _case(lambda: pac_conv(X, WEIGHT, BIAS.astype(int)), TypeError, "bias", "int",
          id="pac_conv-bias-int"),
    _case(lambda: pac_pool(X, 3, kernel=np.ones((1, 1, 3, 3, 4, 5), int)), TypeError, "kernel",
          "int", id="pac_pool-kernel-int"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE > 0.5), TypeError, "guide", "bool",
          id="pac_pool-guide-bool"),
    _case(lambda: pac_pool(np.ma.masked_less(X, 0), 3), TypeError, "x", "MaskedArray",
          id="pac_pool-x-masked"),
    _case(lambda: pac_pool(_TorchLike(), 3), TypeError, "x", "torch", ".numpy()",
          id="pac_pool-x-torch"),
    # None and malformed objects where an array is required
    _case(lambda: pac_pool(None, 3), TypeError, "x", id="pac_pool-x-None"),
    _case(lambda: pac_conv(X, None), TypeError, "weight", id="pac_conv-weight-None"),
    _case(lambda: pac_pool([[[[1.0, 2.0], [3.0]]]], 3), TypeError, "x",
          id="pac_pool-x-ragged-list"),
    # wrong types for ints
    _case(lambda: pac_pool(X, None), TypeError, "kernel_size", "None",
          id="pac_pool-kernel_size-None"),
    _case(lambda: pac_pool(X, 3.0), TypeError, "kernel_size", "3.0",
          id="pac_pool-kernel_size-float"),
    _case(lambda: pac_pool(X, "3"), TypeError, "kernel_size", "'3'",
          id="pac_pool-kernel_size-str"),
    _case(lambda: pac_pool(X, True), TypeError, "kernel_size", "True",
          id="pac_pool-kernel_size-bool"),
    _case(lambda: pac_pool(X, 3, stride=1.0), TypeError, "stride", "1.0",
          id="pac_pool-stride-float"),
    _case(lambda: pac_kernel(GUIDE, 3, dilation=True), TypeError, "dilation", "True",
          id="pac_kernel-dilation-bool"),
    _case(lambda: pac_conv_transpose(X, WEIGHT_T, stride=2, output_padding=1.0), TypeError,
          "output_padding", "1.0", id="pac_conv_transpose-output_padding-float"),
    _case(lambda: pac_pool(X, 3, channel_wise=1, guide=GUIDE), TypeError, "channel_wise", "1",
          id="pac_pool-channel_wise-int"),
    _case(lambda: pac_kernel(GUIDE, 3, transposed=1), TypeError, "transposed", "1",
          id="pac_kernel-transposed-int"),
    # huge sizes: a clear ValueError before anything is allocated
    _case(lambda: pac_pool(X, 3, stride=2**70), ValueError, "stride", str(2**70),
          id="pac_pool-stride-2**70"),
    _case(lambda: pac_pool(X, 3, stride=10**9), ValueError, "stride", "1000000000", "28",
          id="pac_pool-stride-beyond-image"),
    _case(lambda: pac_conv_transpose(X, WEIGHT_T, stride=10**9), ValueError, "stride",
          "1000000000", id="pac_conv_transpose-stride-huge-output"),
    _case(lambda: pac_pool(X, 3, dilation=10**9), ValueError, "x", "(6, 7)", "dilation",
          id="pac_pool-dilation-beyond-image"),
    _case(lambda: pac_kernel(GUIDE, 100001, transposed=True), ValueError, "kernel_size",
          "100001", id="pac_kernel-kernel_size-10**10-taps"),
    _case(lambda: pac_kernel(GUIDE, 20001, padding=10000), ValueError, "kernel_size",
          "20001", "(6, 7)", id="pac_kernel-kernel_size-beyond-guide"),
    _case(lambda: pac_pool(X, (1, 1001), padding=(0, 500)), ValueError, "kernel_size",
          "(1, 1001)", id="pac_pool-kernel_size-beyond-x"),
    _case(lambda: pac_kernel(GUIDE, 3, smooth=("average", 100001)), ValueError, "smooth",
          "100001", id="pac_kernel-smooth-average-huge"),
    # NaN / Inf / out-of-range in parameter arrays and options
    _case(lambda: pac_pool(X, 3, spatial_weight=np.full((3, 3), np.nan)), ValueError,
          "spatial_weight", "finite", id="pac_pool-spatial_weight-nan"),
    _case(lambda: pac_conv(X, WEIGHT, spatial_weight=np.full((3, 3), np.inf)), ValueError,
          "spatial_weight", "finite", id="pac_conv-spatial_weight-inf"),
    _case(lambda: pac_kernel(GUIDE, 3, smooth=np.full((3, 3), np.inf)), ValueError, "smooth",
          "finite", id="pac_kernel-smooth-inf"),
    _case(lambda: pac_pool(X, 3, mask=np.full((1, 1, 6, 7), np.nan)), ValueError, "mask",
          "NaN", id="pac_pool-mask-nan"),
    _case(lambda: pac_pool(X, 3, mask=np.full((1, 1, 6, 7), 2.0)), ValueError, "mask", "2.0",
          id="pac_pool-mask-above-one"),
    _case(lambda: pac_pool(X, 3, spatial_weight=np.ones((3, 3), complex)), TypeError,
          "spatial_weight", "complex", id="pac_pool-spatial_weight-complex"),
    _case(lambda: pac_pool(X, 3, spatial_weight=np.ones((3, 3), object)), TypeError,
          "spatial_weight", "object", id="pac_pool-spatial_weight-object"),
    _case(lambda: pac_pool(X, 3, spatial_weight="gaussian"), TypeError, "spatial_weight",
          id="pac_pool-spatial_weight-str"),
    _case(lambda: pac_pool(X, 3, mask=np.ones((1, 1, 6, 7), complex)), TypeError, "mask",
          "complex", id="pac_pool-mask-complex"),
    _case(lambda: pac_kernel(GUIDE, 3, smooth=np.ones((3, 3), complex)), TypeError, "smooth",
          "complex", id="pac_kernel-smooth-complex"),
    _case(lambda: pac_pool(X, 3, normalize=["kernel"]), ValueError, "normalize", "['kernel']",
          id="pac_pool-normalize-list"),
    _case(lambda: pac_pool(X, 3, normalize=True), ValueError, "normalize", "True",
          id="pac_pool-normalize-bool"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE, family="gaussian"), TypeError, "family",
          "'gaussian'", id="pac_pool-family-str"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE, family=Gaussian), TypeError, "family",
          "Gaussian", id="pac_pool-family-class"),
    # extreme kernel parameters: overflow of the dtype is an error, not inf/inf = NaN
    _case(lambda: pac_pool(X.astype(F32), 3, guide=GUIDE.astype(F32),
                           family=InversePower(1e38, 1.0), normalize="kernel"),
          ValueError, "alpha", "1e+38", id="pac_pool-InversePower-alpha-1e38-float32"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE, family=InversePower(0.0, 1.0, eps=1e300)),
          ValueError, "eps", "1e+300", id="pac_pool-InversePower-eps-1e300"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE, family=InversePower(0.0, -2.0, eps=1e-200),
                           normalize="kernel"),
          ValueError, "eps", "1e-200", id="pac_pool-InversePower-eps-squared-underflows"),
    _case(lambda: pac_pool(X.astype(F32), 3, guide=GUIDE.astype(F32),
                           family=InversePower(0.0, -1.0, eps=1e-30), normalize="kernel"),
          ValueError, "eps", "float32", id="pac_pool-InversePower-eps-1e-30-float32"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE, family=InversePower(0.0, 1e308),
                           normalize="kernel"),
          ValueError, "lambda_", "1e+308", id="pac_pool-InversePower-lambda-1e308"),
    # mismatched shapes
    _case(lambda: pac_conv(X, np.ones((3, 5, 3, 3))), ValueError, "weight", "(3, 5, 3, 3)",
          id="pac_conv-weight-channels-mismatch"),
    _case(lambda: pac_conv(X, WEIGHT, np.ones((3, 1))), ValueError, "bias", "(3, 1)",
          id="pac_conv-bias-2d"),
    _case(lambda: pac_pool(X, 3, guide=np.ones((2, 2, 6, 7))), ValueError, "guide",
          "(2, 2, 6, 7)", id="pac_pool-guide-batch-mismatch"),
    _case(lambda: pac_pool(X, 3, mask=np.ones((1, 1, 7, 6))), ValueError, "mask",
          "(1, 1, 7, 6)", id="pac_pool-mask-shape"),
    _case(lambda: pac_pool(X, 3, spatial_weight=np.ones((5, 5))), ValueError,
          "spatial_weight", "(5, 5)", id="pac_pool-spatial_weight-shape"),
    _case(lambda: pac_pool(X, 3, kernel=np.ones((1, 1, 3, 3, 5, 5))), ValueError, "kernel",
          "(1, 1, 3, 3, 5, 5)", id="pac_pool-kernel-shape"),
    _case(lambda: pac_pool(X, 3, kernel=np.ones((1, 1, 3, 3, 4, 5)), guide=GUIDE), ValueError,
          "kernel=", "guide", id="pac_pool-kernel-and-guide"),
    _case(lambda: pac_pool(X, 3, guide=GUIDE[:, :1], channel_wise=True), ValueError,
          "channel_wise", id="pac_pool-channel_wise-guide-mismatch"),
    # gradients
    _case(lambda: pac_pool_vjp(np.ones((1, 2, 4, 5), int), X, 3), TypeError, "grad_output",
          "int64", id="pac_pool_vjp-grad_output-int"),
    _case(lambda: pac_pool_vjp(np.ones((1, 2, 6, 7)), X, 3), ValueError, "grad_output",
          "(1, 2, 4, 5)", "(1, 2, 6, 7)", id="pac_pool_vjp-grad_output-shape"),
    _case(lambda: pac_pool_vjp(np.ones((1, 2, 4, 5), np.longdouble), X, 3), TypeError,
          "grad_output", str(LONGDOUBLE), id="pac_pool_vjp-grad_output-longdouble",
          marks=needs_extended),
    _case(lambda: pac_kernel_vjp(np.ones((1, 1, 3, 3, 4, 5), complex), GUIDE, 3), TypeError,
          "grad_output", "complex", id="pac_kernel_vjp-grad_output-complex"),
    _case(lambda: pac_conv_vjp(np.ones((1, 3, 4, 5)), X, WEIGHT, wrt="kernel_size"),
          ValueError, "wrt", "kernel_size", id="pac_conv_vjp-wrt-unknown"),
    _case(lambda: pac_conv_vjp(np.ones((1, 2, 4, 5)), X, WEIGHT), ValueError, "grad_output",
          "(1, 3, 4, 5)", id="pac_conv_vjp-grad_output-channels"),
    _case(lambda: pac_conv_transpose_vjp(None, X, WEIGHT_T), TypeError, "grad_output",
          id="pac_conv_transpose_vjp-grad_output-None"),
]

FILTER_ERRORS = [
    # bilateral_filter: arrays
    _case(lambda: bilateral_filter(np.empty((0, 5)), **SIGMAS), ValueError, "image", "(0, 5)",
          id="bilateral-image-empty"),
    # 1-D signals and 3-D volumes are valid (issue 15); four spatial axes are not.
    _case(lambda: bilateral_filter(np.ones((2, 3, 4, 5)), **SIGMAS), ValueError, "image",
          "(2, 3, 4, 5)", id="bilateral-image-4d-spatial"),
    _case(lambda: bilateral_filter(np.ones((2, 3, 4, 5, 6)), channel_axis=0, **SIGMAS),
          ValueError, "image", "(2, 3, 4, 5, 6)", id="bilateral-image-5d"),
    _case(lambda: bilateral_filter(IMG.astype(complex), **SIGMAS), TypeError, "image",
          "complex128", id="bilateral-image-complex"),
    _case(lambda: bilateral_filter(IMG.astype(object), **SIGMAS), TypeError, "image", "object",
          id="bilateral-image-object"),
    _case(lambda: bilateral_filter(np.full((4, 5), "a"), **SIGMAS), TypeError, "image", "<U1",
          id="bilateral-image-str"),
    _case(lambda: bilateral_filter(IMG.astype(np.longdouble), **SIGMAS), TypeError, "image",
          str(LONGDOUBLE), id="bilateral-image-longdouble", marks=needs_extended),
    _case(lambda: bilateral_filter(None, **SIGMAS), TypeError, "image",
          id="bilateral-image-None"),
    _case(lambda: bilateral_filter(IMG, guide=np.ones((5, 5)), **SIGMAS), ValueError, "guide",
          "(5, 5)", id="bilateral-guide-shape"),
    _case(lambda: bilateral_filter(IMG, guide=IMG.astype(complex), **SIGMAS), TypeError,
          "guide", "complex", id="bilateral-guide-complex"),
    # bilateral_filter: scalars
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=1e-170), ValueError,
          "sigma_color", "1e-170", id="bilateral-sigma_color-1e-170"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=1e300), ValueError,
          "sigma_color", "1e+300", id="bilateral-sigma_color-1e300"),
    _case(lambda: bilateral_filter(IMG.astype(F32), sigma_spatial=1.0, sigma_color=1e-40),
          ValueError, "sigma_color", "1e-40", "float32", id="bilateral-sigma_color-1e-40-f32"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1e-300, sigma_color=0.3), ValueError,
          "sigma_spatial", "1e-300", id="bilateral-sigma_spatial-1e-300"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=np.inf, sigma_color=0.3), ValueError,
          "sigma_spatial", "inf", id="bilateral-sigma_spatial-inf"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=np.nan), ValueError,
          "sigma_color", "nan", id="bilateral-sigma_color-nan"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=None), TypeError,
          "sigma_color", "None", id="bilateral-sigma_color-None"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=1 + 0j), TypeError,
          "sigma_color", "(1+0j)", id="bilateral-sigma_color-complex"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=np.complex128(1)),
          TypeError, "sigma_color", id="bilateral-sigma_color-numpy-complex"),
    _case(lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=np.array([1.0, 2.0])),
          TypeError, "sigma_color", "array([1., 2.])", id="bilateral-sigma_color-array"),
    _case(lambda: bilateral_filter(IMG, cval=np.nan, mode="constant", **SIGMAS), ValueError,
          "cval", "nan", id="bilateral-cval-nan"),
    _case(lambda: bilateral_filter(IMG, cval=-np.inf, mode="constant", **SIGMAS), ValueError,
          "cval", "inf", id="bilateral-cval-inf"),
    _case(lambda: bilateral_filter(IMG, radius=3.0, **SIGMAS), TypeError, "radius", "3.0",
          id="bilateral-radius-float"),
    _case(lambda: bilateral_filter(IMG, radius="3", **SIGMAS), TypeError, "radius", "'3'",
          id="bilateral-radius-str"),
    _case(lambda: bilateral_filter(IMG, radius=True, **SIGMAS), TypeError, "radius", "True",
          id="bilateral-radius-bool"),
    _case(lambda: bilateral_filter(IMG, radius=10**6, **SIGMAS), ValueError, "radius",
          "1000000", id="bilateral-radius-huge"),
    _case(lambda: bilateral_filter(IMG, mode="MIRROR", **SIGMAS), ValueError, "mode",
          "'MIRROR'", id="bilateral-mode-case"),
    _case(lambda: bilateral_filter(IMG, window=None, **SIGMAS), ValueError, "window", "None",
          id="bilateral-window-None"),
    _case(lambda: bilateral_filter(RGB, channel_axis=3, **SIGMAS), ValueError, "channel_axis",
          "3", id="bilateral-channel_axis-out-of-range"),
    _case(lambda: bilateral_filter(RGB, channel_axis=1.0, **SIGMAS), TypeError,
          "channel_axis", "1.0", id="bilateral-channel_axis-float"),
    _case(lambda: bilateral_filter(IMG, output=bool, **SIGMAS), TypeError, "output", "bool",
          id="bilateral-output-bool"),
    _case(lambda: bilateral_filter(IMG, output="no such dtype", **SIGMAS), TypeError, "output",
          "'no such dtype'", id="bilateral-output-unknown"),
    _case(lambda: bilateral_filter(np.where(IMG > 0.9, np.nan, IMG), output=np.uint8,
                                   **SIGMAS),
          ValueError, "output", "NaN", id="bilateral-output-uint8-of-nan"),
    # bilateral_filter_vjp
    _case(lambda: bilateral_filter_vjp(np.ones((7, 6)), IMG, **SIGMAS), ValueError,
          "grad_output", "(7, 6)", id="bilateral_vjp-grad_output-shape"),
    _case(lambda: bilateral_filter_vjp(np.ones((6, 7), int), IMG, **SIGMAS), TypeError,
          "grad_output", "int64", id="bilateral_vjp-grad_output-int"),
    _case(lambda: bilateral_filter_vjp(np.ones((6, 7)), IMG, sigma_spatial=1e-300,
                                       sigma_color=0.3),
          ValueError, "sigma_spatial", id="bilateral_vjp-sigma_spatial-1e-300"),
    _case(lambda: bilateral_filter_vjp(np.ones((6, 7, 3)), RGB, color_distance="l1",
                                       channel_axis=-1, **SIGMAS),
          NotImplementedError, "color_distance", id="bilateral_vjp-l1-multichannel"),
    # joint_bilateral_upsample
    _case(lambda: joint_bilateral_upsample(LOW, IMG, factor=2.0, sigma_color=0.3), TypeError,
          "factor", "2.0", id="upsample-factor-float"),
    _case(lambda: joint_bilateral_upsample(LOW, IMG, factor=(2, 2, 2), sigma_color=0.3),
          ValueError, "factor", "(2, 2, 2)", id="upsample-factor-three-values"),
    _case(lambda: joint_bilateral_upsample(LOW, IMG, factor=0, sigma_color=0.3), ValueError,
          "factor", "0", id="upsample-factor-zero"),
    _case(lambda: joint_bilateral_upsample(LOW, IMG, factor=3, sigma_color=0.3), ValueError,
          "factor 3", "(3, 4)", id="upsample-factor-does-not-cover"),
    _case(lambda: joint_bilateral_upsample(LOW, None, sigma_color=0.3), TypeError, "guide",
          id="upsample-guide-None"),
    _case(lambda: joint_bilateral_upsample(LOW, np.ones(7), sigma_color=0.3), ValueError,
          "guide", "(7,)", id="upsample-guide-1d"),
    _case(lambda: joint_bilateral_upsample(LOW, IMG, sigma_color=1e-170), ValueError,
          "sigma_color", "1e-170", id="upsample-sigma_color-1e-170"),
    _case(lambda: joint_bilateral_upsample(LOW, IMG, sigma_spatial=1e300, sigma_color=0.3),
          ValueError, "sigma_spatial", "1e+300", id="upsample-sigma_spatial-1e300"),
    _case(lambda: joint_bilateral_upsample(LOW, IMG, sigma_color=0.3, radius=10**9),
          ValueError, "radius", "1000000000", id="upsample-radius-huge"),
    # normalized_convolution
    _case(lambda: normalized_convolution(IMG, None, sigma_spatial=1.0), TypeError,
          "certainty", id="normconv-certainty-None"),
    _case(lambda: normalized_convolution(IMG, np.full((6, 7), np.nan), sigma_spatial=1.0),
          ValueError, "certainty", "nan", id="normconv-certainty-nan"),
    _case(lambda: normalized_convolution(IMG, np.full((6, 7), 2.0), sigma_spatial=1.0),
          ValueError, "certainty", "2.0", id="normconv-certainty-two"),
    _case(lambda: normalized_convolution(IMG, np.ones((6, 7), complex), sigma_spatial=1.0),
          TypeError, "certainty", "complex", id="normconv-certainty-complex"),
    _case(lambda: normalized_convolution(IMG, np.ones((7, 6)), sigma_spatial=1.0), ValueError,
          "certainty", "(7, 6)", id="normconv-certainty-shape"),
    _case(lambda: normalized_convolution(IMG, np.ones((6, 7)), sigma_spatial=1.0,
                                         sigma_color=0.3),
          ValueError, "sigma_color", "0.3", id="normconv-sigma_color-without-guide"),
    _case(lambda: normalized_convolution(IMG, np.ones((6, 7)), sigma_spatial=1.0, guide=IMG),
          ValueError, "sigma_color", "None", id="normconv-guide-without-sigma_color"),
    _case(lambda: normalized_convolution(IMG, np.ones((6, 7)), sigma_spatial=1e-300),
          ValueError, "sigma_spatial", "1e-300", id="normconv-sigma_spatial-1e-300"),
    # detail_preserving_pool
    _case(lambda: detail_preserving_pool(IMG, alpha=np.nan, lambda_=1.0), ValueError, "alpha",
          "nan", id="dpp-alpha-nan"),
    _case(lambda: detail_preserving_pool(IMG, alpha=-1.0, lambda_=1.0), ValueError, "alpha",
          "-1.0", id="dpp-alpha-negative"),
    _case(lambda: detail_preserving_pool(IMG, alpha="1", lambda_=1.0), TypeError, "alpha",
          "'1'", id="dpp-alpha-str"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=np.inf), ValueError,
          "lambda_", "inf", id="dpp-lambda-inf"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=None), TypeError, "lambda_",
          "None", id="dpp-lambda-None"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=1.0, eps=-1.0), ValueError,
          "eps", "-1.0", id="dpp-eps-negative"),
    _case(lambda: detail_preserving_pool(IMG, 2, alpha=0.5, lambda_=1.0), ValueError, "size",
          "(2, 2)", id="dpp-size-even"),
    _case(lambda: detail_preserving_pool(IMG, 99, alpha=0.5, lambda_=1.0), ValueError, "size",
          "(99, 99)", id="dpp-size-beyond-image"),
    _case(lambda: detail_preserving_pool(IMG, 3.0, alpha=0.5, lambda_=1.0), TypeError, "size",
          "3.0", id="dpp-size-float"),
    _case(lambda: detail_preserving_pool(IMG, "3", alpha=0.5, lambda_=1.0), TypeError, "size",
          "'3'", id="dpp-size-str"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=1.0, stride=True), TypeError,
          "stride", "True", id="dpp-stride-bool"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=1.0, stride=0), ValueError,
          "stride", "0", id="dpp-stride-zero"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=1.0, asymmetric=1),
          TypeError, "asymmetric", "1", id="dpp-asymmetric-int"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=1.0, smooth="box"),
          ValueError, "smooth", "'box'", id="dpp-smooth-unknown"),
    _case(lambda: detail_preserving_pool(IMG, alpha=0.5, lambda_=1.0,
                                         smooth=np.full((3, 3), np.nan)),
          ValueError, "smooth", "finite", id="dpp-smooth-nan"),
    _case(lambda: detail_preserving_pool((IMG * 100).astype(F32), alpha=0.0, lambda_=40.0),
          ValueError, "lambda_", "float32", id="dpp-lambda-40-overflows-float32"),
    # color_position_features
    _case(lambda: color_position_features(RGB, sigma_spatial=0.0, sigma_color=0.1,
                                          channel_axis=-1),
          ValueError, "sigma_spatial", "0.0", id="features-sigma_spatial-zero"),
    _case(lambda: color_position_features(RGB, sigma_spatial=True, sigma_color=0.1,
                                          channel_axis=-1),
          TypeError, "sigma_spatial", "True", id="features-sigma_spatial-bool"),
    _case(lambda: color_position_features(RGB, sigma_spatial=1.0, sigma_color=[0.1, 0.2],
                                          channel_axis=-1),
          ValueError, "sigma_color", "[0.1, 0.2]", id="features-sigma_color-length"),
    _case(lambda: color_position_features(RGB[None, None], sigma_spatial=1.0, sigma_color=0.1,
                                          channel_axis=-1),
          ValueError, "image", "(1, 1, 6, 7, 3)", id="features-image-5d"),
]

CRF_ERRORS = [
    _case(lambda: pac_crf(np.where(UNARY > 1, np.nan, UNARY), RGB), ValueError, "unary",
          "NaN", id="crf-unary-nan"),
    _case(lambda: pac_crf(UNARY[0], RGB), ValueError, "unary", "(6, 7)", id="crf-unary-2d"),
    _case(lambda: pac_crf(UNARY[:1], RGB), ValueError, "unary", "(1, 6, 7)",
          id="crf-unary-one-label"),
    _case(lambda: pac_crf(UNARY[:, :0], RGB), ValueError, "unary", "(3, 0, 7)",
          id="crf-unary-empty"),
    _case(lambda: pac_crf(UNARY.astype(complex), RGB), TypeError, "unary", "complex",
          id="crf-unary-complex"),
    _case(lambda: pac_crf(UNARY, RGB[:5]), ValueError, "image", "(5, 7, 3)",
          id="crf-image-shape"),
    _case(lambda: pac_crf(UNARY, np.where(RGB > 0.9, np.inf, RGB)), ValueError, "image",
          "Inf", id="crf-image-inf"),
    _case(lambda: pac_crf(UNARY, RGB, num_steps=-1), ValueError, "num_steps", "-1",
          id="crf-num_steps-negative"),
    _case(lambda: pac_crf(UNARY, RGB, num_steps=2.0), TypeError, "num_steps", "2.0",
          id="crf-num_steps-float"),
    _case(lambda: pac_crf(UNARY, RGB, num_steps=True), TypeError, "num_steps", "True",
          id="crf-num_steps-bool"),
    _case(lambda: pac_crf(UNARY, RGB, unary_weight=np.nan), ValueError, "unary_weight", "nan",
          id="crf-unary_weight-nan"),
    _case(lambda: pac_crf(UNARY, RGB, compatibility=np.ones((2, 2))), ValueError,
          "compatibility", "(2, 2)", id="crf-compatibility-shape"),
    _case(lambda: pac_crf(UNARY, RGB, compatibility=np.full((3, 3), np.nan)), ValueError,
          "compatibility", "finite", id="crf-compatibility-nan"),
    _case(lambda: pac_crf(UNARY, RGB, label_axis=5), ValueError, "label_axis", "5",
          id="crf-label_axis-out-of-range"),
    _case(lambda: pac_crf(UNARY, RGB, input="probs"), ValueError, "input", "'probs'",
          id="crf-input-unknown"),
    _case(lambda: pac_crf(UNARY, RGB, input="probabilities"), ValueError, "probabilities",
          "[0, 1]", id="crf-probabilities-out-of-range"),
    _case(lambda: pac_crf(UNARY, RGB, pairwise=["appearance"]), TypeError, "pairwise",
          "'appearance'", id="crf-pairwise-str"),
    _case(lambda: pac_crf(UNARY, RGB, pairwise=PairwiseTerm(features=np.full((1, 6, 7),
                                                                             np.nan))),
          ValueError, "features", "finite", id="crf-features-nan"),
    _case(lambda: pac_crf(UNARY, RGB, pairwise=PairwiseTerm(kernel_size=10**5 + 1)),
          ValueError, "kernel_size", "100001", id="crf-kernel_size-huge"),
    _case(lambda: pac_crf_vjp(np.ones((6, 7)), UNARY, RGB), ValueError, "grad_output",
          "(6, 7)", id="crf_vjp-grad_output-shape"),
    _case(lambda: pac_crf_vjp(np.ones((3, 6, 7)), UNARY, RGB, output="labels"), ValueError,
          "output", "'labels'", id="crf_vjp-output-labels"),
]

CONSTRUCTOR_ERRORS = [
    _case(lambda: Gaussian(1.0), TypeError, "Gaussian", id="Gaussian-positional-argument"),
    _case(lambda: InversePower(), TypeError, "alpha", "lambda_", id="InversePower-no-arguments"),
    _case(lambda: InversePower(None, 1.0), TypeError, "alpha", "None",
          id="InversePower-alpha-None"),
    _case(lambda: InversePower(0.0, 1j), TypeError, "lambda_", "1j",
          id="InversePower-lambda-complex"),
    _case(lambda: InversePower(0.0, True), TypeError, "lambda_", "True",
          id="InversePower-lambda-bool"),
    _case(lambda: InversePower(0.0, [[1.0]]), ValueError, "lambda_", "[[1.0]]",
          id="InversePower-lambda-2d"),
    _case(lambda: InversePower(0.0, []), ValueError, "lambda_", "[]",
          id="InversePower-lambda-empty"),
    _case(lambda: InversePower(np.nan, 1.0), ValueError, "alpha", "nan",
          id="InversePower-alpha-nan"),
    _case(lambda: InversePower(0.0, 1.0, eps=-1.0), ValueError, "eps", "-1.0",
          id="InversePower-eps-negative"),
    _case(lambda: InversePower(0.0, 1.0, eps=np.inf), ValueError, "eps", "inf",
          id="InversePower-eps-inf"),
    _case(lambda: InversePower(0.0, -1.0, eps=0.0), ValueError, "eps", "lambda_",
          id="InversePower-eps-zero-negative-lambda"),
    _case(lambda: InversePower(0.0, 1.0, asymmetric="yes"), TypeError, "asymmetric", "'yes'",
          id="InversePower-asymmetric-str"),
    _case(lambda: PairwiseTerm(weight=-1.0), ValueError, "weight", "-1.0",
          id="PairwiseTerm-weight-negative"),
    _case(lambda: PairwiseTerm(weight=True), TypeError, "weight", "True",
          id="PairwiseTerm-weight-bool"),
    _case(lambda: PairwiseTerm(kernel_size=4), ValueError, "kernel_size", "4",
          id="PairwiseTerm-kernel_size-even"),
    _case(lambda: PairwiseTerm(kernel_size=1), ValueError, "kernel_size", "1",
          id="PairwiseTerm-kernel_size-one"),
    _case(lambda: PairwiseTerm(dilation=0), ValueError, "dilation", "0",
          id="PairwiseTerm-dilation-zero"),
    _case(lambda: PairwiseTerm(sigma_spatial="1"), TypeError, "sigma_spatial", "'1'",
          id="PairwiseTerm-sigma_spatial-str"),
    _case(lambda: PairwiseTerm(sigma_color=0.0), ValueError, "sigma_color", "0.0",
          id="PairwiseTerm-sigma_color-zero"),
    _case(lambda: PairwiseTerm(features="rgb"), ValueError, "features", "'rgb'",
          id="PairwiseTerm-features-unknown"),
    _case(lambda: PairwiseTerm(features=np.ones(5)), ValueError, "features", "(5,)",
          id="PairwiseTerm-features-1d"),
    _case(lambda: PairwiseTerm(blur=2.0), ValueError, "blur", "2.0",
          id="PairwiseTerm-blur-float"),
    _case(lambda: spatial_window(3, np.nan), ValueError, "sigma", "nan",
          id="spatial_window-sigma-nan"),
    _case(lambda: spatial_window(3, "1"), TypeError, "sigma", "'1'",
          id="spatial_window-sigma-str"),
    _case(lambda: spatial_window(3, window=None), ValueError, "window", "None",
          id="spatial_window-window-None"),
    _case(lambda: spatial_window(3.0), TypeError, "kernel_size", "3.0",
          id="spatial_window-kernel_size-float"),
    _case(lambda: spatial_window(4), ValueError, "kernel_size", "(4, 4)",
          id="spatial_window-kernel_size-even"),
    _case(lambda: spatial_window(200001), ValueError, "kernel_size", "200001",
          id="spatial_window-kernel_size-4*10**10-taps"),
    _case(lambda: warmup(["pac_knl"], progress=False), ValueError, "functions", "pac_knl",
          id="warmup-functions-unknown"),
    _case(lambda: warmup(["pac_kernel"], dtypes=["float16"], progress=False), ValueError,
          "dtypes", "float16", id="warmup-dtypes-float16"),
]


@pytest.mark.parametrize("call, exception, texts",
                         CORE_ERRORS + FILTER_ERRORS + CRF_ERRORS + CONSTRUCTOR_ERRORS)
def test_bad_input_raises(call, exception, texts):
    with _raises(exception, *texts):
        call()


def test_at_least_sixty_distinct_bad_inputs():
    ids = [case.id for case in CORE_ERRORS + FILTER_ERRORS + CRF_ERRORS + CONSTRUCTOR_ERRORS]
    assert len(ids) == len(set(ids)) >= 60


# --------------------------------------------------------------------------------------------
# Holes this suite found outside the validation layer, fixed; each reason says what they did


def _finite_or_raises(call, name):
    """A silent NaN or Inf is the hole; a result without them, or a ValueError naming ``name``,
    is the fix."""
    try:
        result = call()
    except ValueError as error:
        assert name in str(error)
        return
    values = result[0] if isinstance(result, tuple) else result
    assert np.all(np.isfinite(values)), f"{np.count_nonzero(~np.isfinite(values))} NaN/Inf"


def _hole(call, name, reason, id):
    """A hole the suite found (``reason`` says where it was), kept as a regression test."""
    return pytest.param(call, name, id=id)


KNOWN_HOLES = [
    _hole(lambda: bilateral_filter(IMG.astype(F32), cval=1e300, mode="constant", **SIGMAS),
          "cval", "_bilateral.problem: cval overflows float32 to inf, every output is NaN",
          id="bilateral-cval-1e300-float32"),
    _hole(lambda: joint_bilateral_upsample(LOW.astype(F32), IMG.astype(F32), sigma_color=1e-30),
          "sigma_color", "filters.joint_bilateral_upsample: 1/(2 sigma_color^2) overflows "
          "float32 (the check 918340b added to bilateral_filter is missing here): all NaN",
          id="upsample-sigma_color-1e-30-float32"),
    _hole(lambda: normalized_convolution(IMG.astype(F32), np.ones((6, 7)), sigma_spatial=1.0,
                                         guide=IMG.astype(F32), sigma_color=1e-45),
          "sigma_color", "filters.normalized_convolution: 1/sigma_color overflows float32, "
          "the scaled guide is inf, every output NaN", id="normconv-sigma_color-1e-45-float32"),
    _hole(lambda: color_position_features(RGB.astype(F32), sigma_spatial=1e-50, sigma_color=0.1,
                                          channel_axis=-1),
          "sigma_spatial", "features.color_position_features: float32(sigma_spatial) is 0, "
          "the coordinates become 0/0 = NaN and inf", id="features-sigma_spatial-1e-50-float32"),
    _hole(lambda: spatial_window(3, 1e-300), "sigma",
          "kernels.spatial_window: sigma**2 underflows, the centre weight is 0/0 = NaN "
          "(positive_scalar's range is not used there)", id="spatial_window-sigma-1e-300"),
    _hole(lambda: pac_crf(UNARY.astype(F32), RGB.astype(F32), num_steps=2,
                          pairwise=PairwiseTerm(sigma_color=1e-45)),
          "sigma_color", "crf._term_guide: image / float32(1e-45) is inf, the marginals NaN",
          id="crf-sigma_color-1e-45-float32"),
    _hole(lambda: pac_crf(UNARY.astype(F32), RGB.astype(F32), num_steps=2,
                          pairwise=PairwiseTerm(weight=1e300)),
          "weight", "crf/_mean_field: a term weight beyond float32 gives inf messages and NaN "
          "marginals", id="crf-weight-1e300-float32"),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes the NaN
@pytest.mark.parametrize("call, name", KNOWN_HOLES)
def test_no_silent_nan(call, name):
    _finite_or_raises(call, name)


MESSAGE_HOLES = [
    _case(lambda: color_position_features(RGB, sigma_spatial=1.0, sigma_color="0.1",
                                          channel_axis=-1),
          TypeError, "sigma_color", "'0.1'", id="features-sigma_color-str"),
    _case(lambda: color_position_features(RGB, sigma_spatial=1.0, sigma_color=True,
                                          channel_axis=-1),
          TypeError, "sigma_color", "True", id="features-sigma_color-bool"),
    _case(lambda: color_position_features(RGB, sigma_spatial=1.0, sigma_color=1j,
                                          channel_axis=-1),
          TypeError, "sigma_color", id="features-sigma_color-complex"),
    _case(lambda: detail_preserving_pool(IMG, alpha=1j, lambda_=1.0), TypeError, "alpha",
          id="dpp-alpha-complex"),
    _case(lambda: pac_crf(UNARY, RGB, num_steps=2, pairwise=PairwiseTerm(blur=10**9)),
          ValueError, "blur", id="crf-blur-huge"),
    _case(lambda: pac_crf(UNARY, RGB, channel_axis=1.0), TypeError, "channel_axis",
          id="crf-channel_axis-float"),
    _case(lambda: pac_crf_vjp(np.ones((3, 6, 7), complex), UNARY, RGB, num_steps=1), TypeError,
          "grad_output", id="crf_vjp-grad_output-complex"),
    _case(lambda: pac_pool_vjp(np.ones((1, 2, 4, 5)), X, 3, wrt=3), TypeError, "wrt",
          id="pac_pool_vjp-wrt-int"),
    _case(lambda: pac_kernel(GUIDE, 3, return_validity=1), TypeError, "return_validity",
          id="pac_kernel-return_validity-int"),
    _case(lambda: pac_crf(UNARY, RGB.astype(np.longdouble)), TypeError, "image",
          id="crf-image-longdouble",
          marks=needs_extended),
    _case(lambda: pac_crf(UNARY.astype(np.longdouble), RGB), TypeError, "unary",
          id="crf-unary-longdouble",
          marks=needs_extended),
    _case(lambda: warmup("pac_kernel", progress=False), TypeError, "functions",
          id="warmup-functions-str"),
    _case(lambda: warmup(3, progress=False), TypeError, "functions", id="warmup-functions-int"),
]


@pytest.mark.filterwarnings("ignore:Casting complex values")
@pytest.mark.parametrize("call, exception, texts", MESSAGE_HOLES)
def test_bad_input_message_holes(call, exception, texts):
    with _raises(exception, *texts):
        call()


# --------------------------------------------------------------------------------------------
# Valid calls, each with its arrays in float32 (the dtype warmup compiles)


def _f32(array):
    return np.array(array, dtype=F32)


def _valid_calls():
    """``{name: (function, args, kwargs)}``: one ordinary call of every public function."""
    x, guide, image, rgb = _f32(X), _f32(GUIDE), _f32(IMG), _f32(RGB)
    mask = _f32(MASK)
    up_guide = _f32(np.repeat(np.repeat(LOW, 2, 0), 2, 1)[:6, :7])
    return {
        "pac_kernel": (pac_kernel, (guide, 3), dict(padding=1, normalize="mask_kernel",
                                                    mask=mask, spatial_weight=spatial_window(3))),
        "pac_pool": (pac_pool, (x, 3), dict(guide=guide, padding=1, normalize="kernel",
                                            mask=mask)),
        "pac_conv": (pac_conv, (x, _f32(WEIGHT), _f32(BIAS)), dict(guide=guide, padding=1,
                                                                    stride=2)),
        "pac_conv_transpose": (pac_conv_transpose, (x[..., :3, :4], _f32(WEIGHT_T)),
                               dict(guide=guide, stride=2, padding=1, output_padding=(1, 0))),
        "pac_kernel_vjp": (pac_kernel_vjp, (_f32(np.ones((1, 1, 3, 3, 6, 7))), guide, 3),
                           dict(padding=1, normalize="kernel")),
        "pac_pool_vjp": (pac_pool_vjp, (_f32(np.ones((1, 2, 6, 7))), x, 3),
                         dict(guide=guide, padding=1, normalize="kernel")),
        "pac_conv_vjp": (pac_conv_vjp, (_f32(np.ones((1, 3, 6, 7))), x, _f32(WEIGHT)),
                         dict(guide=guide, padding=1)),
        "pac_conv_transpose_vjp": (pac_conv_transpose_vjp,
                                   (_f32(np.ones((1, 3, 6, 7))), x[..., :3, :4],
                                    _f32(WEIGHT_T)),
                                   dict(stride=2, padding=1, output_padding=(1, 0))),
        "bilateral_filter": (bilateral_filter, (rgb,), dict(guide=image, channel_axis=-1,
                                                            **SIGMAS)),
        "bilateral_filter_vjp": (bilateral_filter_vjp, (_f32(np.ones((6, 7))), image),
                                 dict(mode="constant", cval=0.5, **SIGMAS)),
        "joint_bilateral_upsample": (joint_bilateral_upsample, (_f32(LOW), up_guide),
                                     dict(sigma_color=0.3)),
        "normalized_convolution": (normalized_convolution, (image, mask[0, 0]),
                                   dict(sigma_spatial=1.0, guide=image, sigma_color=0.3)),
        "detail_preserving_pool": (detail_preserving_pool, (image,),
                                   dict(alpha=0.5, lambda_=1.0, stride=2)),
        "color_position_features": (color_position_features, (rgb,),
                                    dict(sigma_spatial=2.0, sigma_color=0.1, channel_axis=-1)),
        "pac_crf": (pac_crf, (_f32(UNARY), rgb), dict(num_steps=2)),
        "pac_crf_vjp": (pac_crf_vjp, (_f32(np.ones((3, 6, 7))), _f32(UNARY), rgb),
                        dict(num_steps=2)),
    }


def _map_arrays(value, transform):
    if isinstance(value, np.ndarray):
        return transform(value)
    if isinstance(value, tuple):
        return tuple(_map_arrays(v, transform) for v in value)
    if isinstance(value, dict):
        return {k: _map_arrays(v, transform) for k, v in value.items()}
    return value


def _big_endian(array):
    return array.astype(array.dtype.newbyteorder(">"))


def _fortran(array):
    return np.asfortranarray(array)


def _negative_strides(array):
    """The same values in a view whose strides are all negative."""
    return np.flip(np.flip(array).copy())


def _every_other(array):
    """The same values in a non-contiguous view (every other element of a larger array)."""
    base = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
    base[..., ::2] = array
    return base[..., ::2]


def _read_only(array):
    array = array.copy()
    array.flags.writeable = False
    return array


def _memmap(directory):
    counter = iter(range(10**6))

    def transform(array):
        path = directory / f"input{next(counter)}.dat"
        written = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape)
        written[...] = array
        written.flush()
        del written
        return np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)

    return transform


LAYOUTS = {
    "big-endian": lambda directory: _big_endian,
    "fortran": lambda directory: _fortran,
    "negative-strides": lambda directory: _negative_strides,
    "non-contiguous": lambda directory: _every_other,
    "read-only": lambda directory: _read_only,
    "memmap": _memmap,
}


def _assert_identical(actual, expected, where="result"):
    """Same structure, same dtypes (native byte order), same bits (NaN where NaN)."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and type(actual) is np.ndarray, where
        assert actual.dtype == expected.dtype and actual.dtype.isnative, (where, actual.dtype)
        assert actual.shape == expected.shape, (where, actual.shape)
        assert np.array_equal(actual, expected, equal_nan=actual.dtype.kind in "fc"), where
    elif isinstance(expected, tuple):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_identical(a, e, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert actual == expected or (np.isnan(actual) and np.isnan(expected)), where
    else:
        assert actual == expected, where


VALID = _valid_calls()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(VALID))
def test_layout_gives_the_native_result(name, layout, tmp_path):
    function, args, kwargs = VALID[name]
    expected = function(*args, **kwargs)
    transform = LAYOUTS[layout](tmp_path)
    result = function(*_map_arrays(args, transform), **_map_arrays(kwargs, transform))
    _assert_identical(result, expected)


# --------------------------------------------------------------------------------------------
# Unusual but valid: a defined result


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=0))
    return shifted / shifted.sum(axis=0)


UNUSUAL = {
    # a stride past the image gives one output, like the smallest stride that does
    "pac_pool-stride-at-limit": (
        lambda: pac_pool(X, 3, stride=28), lambda: pac_pool(X, 3, stride=5)),
    # a dilation past the image leaves the centre tap only (K = 1): y = x
    "pac_pool-dilation-past-image": (
        lambda: pac_pool(X, 3, dilation=10**6, padding=10**6), lambda: np.array(X)),
    # a kernel wider than the image, within the limit: only in-range taps count
    "pac_kernel-129-taps-on-1x1": (
        lambda: pac_kernel(np.ones((1, 1, 1, 1)), 129, padding=64, normalize="kernel"),
        lambda: np.pad(np.ones((1, 1, 1, 1, 1, 1)), ((0, 0), (0, 0), (64, 64), (64, 64),
                                                      (0, 0), (0, 0)))),
    "pac_pool-float16": (
        lambda: pac_pool(X.astype(np.float16), 3),
        lambda: pac_pool(X.astype(np.float16).astype(F32), 3)),
    "pac_pool-nested-list": (lambda: pac_pool(X.tolist(), 3), lambda: pac_pool(X, 3)),
    "pac_pool-int-spatial_weight-bool-mask": (
        lambda: pac_pool(X, 3, spatial_weight=[[1, 2, 1], [2, 4, 2], [1, 2, 1]],
                         mask=MASK > 0.5, normalize="mask_kernel"),
        lambda: pac_pool(X, 3, spatial_weight=np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]),
                         mask=(MASK > 0.5).astype(float), normalize="mask_kernel")),
    "pac_conv-float32-x-float64-weight": (
        lambda: pac_conv(X.astype(F32), WEIGHT, BIAS),
        lambda: pac_conv(X.astype(F32).astype(float), WEIGHT, BIAS)),
    # a huge eps with a negative power makes every weight 0: output 0, not NaN
    "pac_pool-InversePower-zero-weights": (
        lambda: pac_pool(X, 3, guide=GUIDE, family=InversePower(0.0, -1.0, eps=1e300),
                         normalize="kernel"),
        lambda: np.zeros((1, 2, 4, 5))),
    "pac_pool_vjp-nan-grad_output": (
        lambda: pac_pool_vjp(np.full((1, 2, 4, 5), np.nan), X, 3, wrt="x").x,
        lambda: np.full(X.shape, np.nan)),
    "bilateral-radius-0": (
        lambda: bilateral_filter(IMG, radius=0, **SIGMAS), lambda: np.array(IMG)),
    "bilateral-uint8": (
        lambda: bilateral_filter((IMG * 255).astype(np.uint8), sigma_spatial=1.0,
                                 sigma_color=30.0),
        lambda: bilateral_filter((IMG * 255).astype(np.uint8).astype(F32), sigma_spatial=1.0,
                                 sigma_color=30.0)),
    "bilateral-uint8-output-uint8": (
        lambda: bilateral_filter((IMG * 255).astype(np.uint8), sigma_spatial=1.0,
                                 sigma_color=30.0, output=np.uint8),
        lambda: np.rint(bilateral_filter((IMG * 255).astype(np.uint8), sigma_spatial=1.0,
                                         sigma_color=30.0)).astype(np.uint8)),
    "bilateral-numpy-scalar-sigma-fraction-int8-radius": (
        lambda: bilateral_filter(IMG, sigma_spatial=np.float32(1.0),
                                 sigma_color=fractions.Fraction(1, 4), radius=np.int8(2)),
        lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=0.25, radius=2)),
    "bilateral-0d-array-sigma": (
        lambda: bilateral_filter(IMG, sigma_spatial=np.array(1.0), sigma_color=np.array(0.25)),
        lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=0.25)),
    "bilateral-sigma_color-upper-bound": (
        lambda: bilateral_filter(IMG, sigma_spatial=1.0, sigma_color=1e150, window="square"),
        lambda: pac_pool(np.pad(IMG, 3, mode="reflect")[None, None], 7,
                         spatial_weight=spatial_window(7, 1.0), normalize="kernel")[0, 0]),
    "normconv-bool-certainty": (
        lambda: normalized_convolution(IMG, IMG > 0.3, sigma_spatial=1.0),
        lambda: normalized_convolution(IMG, (IMG > 0.3).astype(float), sigma_spatial=1.0)),
    "normconv-all-nan-data": (
        lambda: normalized_convolution(np.full((6, 7), np.nan), np.ones((6, 7)),
                                       sigma_spatial=1.0),
        lambda: (np.zeros((6, 7)), np.zeros((6, 7)))),
    "upsample-1x1": (
        lambda: joint_bilateral_upsample(np.full((1, 1), 0.5), np.ones((1, 1)),
                                         sigma_color=0.1),
        lambda: np.full((1, 1), 0.5)),
    "dpp-size-1": (
        lambda: detail_preserving_pool(IMG, 1, alpha=0.5, lambda_=1.0, smooth=None),
        lambda: np.array(IMG)),
    "features-uint8": (
        lambda: color_position_features((RGB * 255).astype(np.uint8), sigma_spatial=2.0,
                                        sigma_color=10.0, channel_axis=-1),
        lambda: color_position_features((RGB * 255).astype(np.uint8).astype(F32),
                                        sigma_spatial=2.0, sigma_color=10.0, channel_axis=-1)),
    "crf-zero-steps": (lambda: pac_crf(UNARY, RGB, num_steps=0), lambda: _softmax(UNARY)),
    "crf-no-pairwise-terms": (lambda: pac_crf(UNARY, RGB, pairwise=[]),
                              lambda: _softmax(UNARY)),
    # an integer unary counts as float32; the float64 image makes the call float64
    "crf-int-unary": (lambda: pac_crf((UNARY * 3).astype(int), RGB, num_steps=1),
                      lambda: pac_crf((UNARY * 3).astype(int).astype(float), RGB,
                                      num_steps=1)),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_but_valid(name):
    call, expected = UNUSUAL[name]
    result, wanted = call(), expected()
    if isinstance(wanted, tuple):
        for got, want in zip(result, wanted):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
    else:
        assert result.shape == wanted.shape
        np.testing.assert_allclose(result, wanted, rtol=1e-6, atol=1e-7, err_msg=name)


# --------------------------------------------------------------------------------------------
# Over every valid call above: inputs untouched, outputs fresh


def _arrays_in(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays_in(item)


def _flags(array):
    flags = array.flags
    return (flags.writeable, flags.c_contiguous, flags.f_contiguous, flags.owndata,
            flags.aligned, array.strides, array.dtype, array.shape)


def _all_valid_calls(directory):
    """Every valid call of this file as ``(id, function, args, kwargs)``."""
    for name, (function, args, kwargs) in VALID.items():
        yield name, function, args, kwargs
        for layout, make in LAYOUTS.items():
            transform = make(directory)
            yield (f"{name}-{layout}", function, _map_arrays(args, transform),
                   _map_arrays(kwargs, transform))
    extra = {
        "pac_pool-list": (pac_pool, (X.tolist(), 3), {}),
        "pac_pool-float16": (pac_pool, (X.astype(np.float16), 3), dict(guide=GUIDE)),
        "pac_pool-int-weights": (pac_pool, (X, 3), dict(spatial_weight=np.ones((3, 3), int),
                                                        mask=MASK > 0.5)),
        "pac_pool-1x1-kernel": (pac_pool, (X, 1), {}),
        "pac_conv-mixed-dtypes": (pac_conv, (X.astype(F32), WEIGHT, BIAS), {}),
        "bilateral-radius-0": (bilateral_filter, (IMG,), dict(radius=0, **SIGMAS)),
        "bilateral-1x1": (bilateral_filter, (IMG[:1, :1],), SIGMAS),
        "bilateral-uint8-output": (bilateral_filter, ((IMG * 255).astype(np.uint8),),
                                   dict(output=np.uint8, sigma_spatial=1.0, sigma_color=30.0)),
        "bilateral-output-float64": (bilateral_filter, (IMG,), dict(output=float, **SIGMAS)),
        "normconv-bool-certainty": (normalized_convolution, (IMG, IMG > 0.3),
                                    dict(sigma_spatial=1.0)),
        "normconv-nan-data": (normalized_convolution, (np.where(IMG > 0.8, np.nan, IMG),
                                                       np.ones((6, 7))),
                              dict(sigma_spatial=1.0)),
        "normconv-per-channel-certainty": (normalized_convolution,
                                           (RGB, np.ones((6, 7, 3))),
                                           dict(sigma_spatial=1.0, channel_axis=-1)),
        "upsample-1x1": (joint_bilateral_upsample, (np.ones((1, 1)), np.ones((1, 1))),
                         dict(sigma_color=0.1)),
        "dpp-size-1": (detail_preserving_pool, (IMG, 1), dict(alpha=0.5, lambda_=1.0,
                                                             smooth=None)),
        "features-2d": (color_position_features, (IMG,), dict(sigma_spatial=1.0,
                                                               sigma_color=0.1,
                                                               channel_axis=None)),
        "crf-zero-steps": (pac_crf, (UNARY, RGB), dict(num_steps=0)),
        "crf-labels": (pac_crf, (UNARY, RGB), dict(num_steps=1, output="labels")),
        "crf-vjp-probabilities": (pac_crf_vjp, (np.ones((3, 6, 7)), _softmax(UNARY), RGB),
                                  dict(num_steps=1, input="probabilities")),
    }
    for name, (function, args, kwargs) in extra.items():
        yield name, function, args, kwargs


def test_inputs_untouched_and_outputs_fresh(tmp_path):
    checked = 0
    for name, function, args, kwargs in _all_valid_calls(tmp_path):
        inputs = list(_arrays_in((args, kwargs)))
        copies = [np.array(array, copy=True) for array in inputs]
        flags = [_flags(array) for array in inputs]
        lists = copy.deepcopy([value for value in (*args, *kwargs.values())
                               if isinstance(value, list)])
        result = function(*args, **kwargs)
        for index, (array, original, before) in enumerate(zip(inputs, copies, flags)):
            assert np.array_equal(array, original, equal_nan=array.dtype.kind == "f"), (
                f"{name}: input {index} was modified")
            assert _flags(array) == before, f"{name}: the flags of input {index} changed"
        assert lists == [value for value in (*args, *kwargs.values())
                         if isinstance(value, list)], f"{name}: a list input was modified"
        for output in _arrays_in(result):
            for index, array in enumerate(inputs):
                assert not np.shares_memory(output, array), (
                    f"{name}: an output shares memory with input {index}")
        checked += 1
    assert checked >= 100


# --------------------------------------------------------------------------------------------
# Issue 17 item 3: one test per defect fixed in 918340b (each fails on the commit before it)


def test_defect_nan_data_is_a_missing_sample_in_normalized_convolution():
    data = np.array(IMG)
    certainty = np.ones((6, 7))
    certainty[2, 3] = 0.0
    data[2, 3] = np.nan                  # missing and marked so
    data[4, 1] = np.nan                  # missing, certainty says 1
    filled, confidence = normalized_convolution(data, certainty, sigma_spatial=1.0)
    assert np.all(np.isfinite(filled)) and np.all(np.isfinite(confidence))
    zeroed = np.where(np.isnan(data), 0.0, data)
    expected = normalized_convolution(zeroed, np.where(np.isnan(data), 0.0, certainty),
                                      sigma_spatial=1.0)
    _assert_identical((filled, confidence), expected)


def test_defect_tiny_sigma_color_in_float32():
    image = IMG.astype(F32)
    # 1/sigma_color fits float32, 1/(2 sigma_color^2) does not: every pixel keeps its value.
    # Only taps that land on the pixel itself keep a weight (the reflected border taps), so the
    # result is (v + G v) / (1 + G): v up to the float32 rounding of that normalization.
    result = bilateral_filter(image, sigma_spatial=1.0, sigma_color=1e-30)
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(result, image, rtol=2.5e-7, atol=0)
    with _raises(ValueError, "sigma_color", "1e-40", "float32"):
        bilateral_filter(image, sigma_spatial=1.0, sigma_color=1e-40)


def test_defect_overflowing_inverse_power_raises():
    with _raises(ValueError, "lambda_", "10000.0", "float64"):
        pac_pool(X, 3, guide=GUIDE, family=InversePower(0.0, 1e4), normalize="kernel")


def test_defect_three_d_image_is_a_volume_and_channel_axis_a_choice():
    # Issue 17: a (48, 128, 128) array was rejected with a hint (channel_axis=0) that then
    # filtered it as a 48-channel image. Volumes exist now: without channel_axis the array is a
    # volume (filtered across depth too); with channel_axis=0 it is a multichannel image. Both
    # are defined and different.
    stack = np.random.default_rng(2).random((4, 8, 8))
    volume = bilateral_filter(stack, **SIGMAS)
    channels = bilateral_filter(stack, channel_axis=0, **SIGMAS)
    assert volume.shape == channels.shape == stack.shape
    assert np.all(np.isfinite(volume)) and not np.allclose(volume, channels)


def test_defect_masked_arrays_raise():
    masked = np.ma.masked_greater(IMG, 0.8)
    with _raises(TypeError, "image", "MaskedArray", "mask"):
        bilateral_filter(masked, **SIGMAS)
    with _raises(TypeError, "data", "MaskedArray", "certainty="):
        normalized_convolution(masked, np.ones((6, 7)), sigma_spatial=1.0)


@pytest.mark.parametrize("value", ["2", True])
def test_defect_string_and_bool_sigmas_raise(value):
    with _raises(TypeError, "sigma_spatial", repr(value)):
        bilateral_filter(IMG, sigma_spatial=value, sigma_color=0.3)


def test_defect_mask_range_message_shows_the_values():
    mask = np.full((1, 1, 6, 7), 0.5)
    mask[0, 0, 1, 1] = 1.5
    mask[0, 0, 2, 2] = -0.25
    with _raises(ValueError, "mask", "-0.25", "1.5"):
        pac_pool(X, 3, mask=mask, normalize="mask")


def test_defect_one_pixel_image_with_the_default_radius():
    pixel = np.full((1, 1), 0.75)
    np.testing.assert_array_equal(bilateral_filter(pixel, sigma_spatial=2.0, sigma_color=0.1),
                                  pixel)
    filled, confidence = normalized_convolution(pixel, np.ones((1, 1)), sigma_spatial=2.0)
    np.testing.assert_array_equal(filled, pixel)
    np.testing.assert_array_equal(confidence, np.ones((1, 1)))


def test_defect_filters_take_an_output_dtype():
    image = (IMG * 255).astype(np.uint8)
    floats = bilateral_filter(image, sigma_spatial=1.0, sigma_color=30.0)
    result = bilateral_filter(image, sigma_spatial=1.0, sigma_color=30.0, output=image.dtype)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, np.clip(np.rint(floats), 0, 255).astype(np.uint8))
    pooled = detail_preserving_pool(image, alpha=0.5, lambda_=1.0, output=np.int16)
    assert pooled.dtype == np.int16


# Item-3 defects fixed before 918340b (e058762 and the Dask/xarray commit): kept here so that
# every item has its test, named so that ``-k defect`` selects the 918340b ones only.


def test_item3_integer_list_spatial_weight_is_cast():
    as_list = pac_pool(X.astype(F32), 3, spatial_weight=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    as_window = pac_pool(X.astype(F32), 3, spatial_weight=spatial_window(3, window="disk"))
    assert as_list.dtype == F32
    _assert_identical(as_list, as_window)


def test_item3_foreign_array_names_the_parameter_and_the_conversion():
    with _raises(TypeError, "guide", "torch", ".numpy()"):
        pac_pool(X, 3, guide=_TorchLike())
    with _raises(TypeError, "image", "torch", ".numpy()"):
        bilateral_filter(_TorchLike(), **SIGMAS)
