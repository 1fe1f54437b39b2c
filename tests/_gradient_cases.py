"""Gradient tests shared by the ops' test files, and the cases and helpers of all of them.

Every vjp is checked against float64 central finite differences (``pacarray.testing``) over a
grid of cases that spreads the kernel options (families, normalizations, mask, smoothing
including a user array, spatial weight, channel-wise kernels) across geometries (stride,
padding, dilation, output_padding, rectangular kernels) and weight layouts (full, shared), on
the fused, explicit and kernel-free paths. Linear inputs also get the exact dot-product test,
with the float64 oracle (tests/reference.py) as the forward. Further tests: composition
(explicit path + pac_kernel_vjp == fused path), float32 against float64, bit-identical repeats,
weight-gradient accumulators, bad input, inputs left untouched.

The ``test_*`` functions here take an ``op`` and run from the files of the ops named in their
``@ops(...)`` (see ``_op_cases.py``); the tests of one op alone (``pac_kernel_vjp``, the
conv-only properties, the Z == 0 rule) are in that op's file.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from pacarray import (
    Gaussian,
    InversePower,
    config,
    pac_conv,
    pac_conv_transpose,
    pac_kernel,
    pac_pool,
)
from pacarray.gradients import (
    pac_conv_transpose_vjp,
    pac_conv_vjp,
    pac_kernel_vjp,
    pac_pool_vjp,
)
from pacarray.testing import check_gradients, dot_product_test
from _op_cases import ops
from _tiers import tiered, tiered_values
from reference import (
    forward_out_size,
    ref_conv,
    ref_conv_transpose_gather,
    ref_kernel,
    ref_pool,
    transposed_out_size,
)

FD_TOLERANCE = 1e-6
STEP = 1e-4
BATCH, CHANNELS, OUT_CHANNELS = 2, 2, 3
IN_SHAPE = (7, 8)            # data (and guide) of the forward ops
LOW_SHAPE = (4, 5)           # data of the transposed op

# Family name -> InversePower options (None: Gaussian, no parameters).
FAMILIES = {
    "gaussian": None,
    "inverse": dict(alpha=0.3, lambda_=-0.8, eps=1e-2),
    "asym": dict(alpha=0.2, lambda_=-0.5, eps=0.1, asymmetric=True),
    "inverse_pc": dict(alpha=[0.1, 0.5], lambda_=[-1.0, 0.7], eps=0.05),
    "asym_pc": dict(alpha=[0.2, 0.4], lambda_=[-0.6, 1.2], eps=0.05, asymmetric=True),
    "inverse_eps0": dict(alpha=0.1, lambda_=1.5, eps=0.0),
}

# The kernel options of the core grid; "family": None means no guide (K = 1 * G * M / Z).
KERNEL_CASES = {
    "gaussian": dict(family="gaussian"),
    "gaussian_kernel_spatial": dict(family="gaussian", normalize="kernel", spatial=True),
    "inverse_kernel": dict(family="inverse", normalize="kernel"),
    "asym_mask_kernel": dict(family="asym", normalize="mask_kernel", mask=True, spatial=True),
    "inverse_pc_mask": dict(family="inverse_pc", channel_wise=True, normalize="mask", mask=True),
    "gaussian_cw_smooth": dict(family="gaussian", channel_wise=True, smooth="gaussian",
                               normalize="kernel"),
    "inverse_user_smooth": dict(family="inverse", smooth="user", spatial=True, mask=True),
    "gaussian_average_mask_kernel": dict(family="gaussian", smooth=("average", 3), mask=True,
                                         normalize="mask_kernel"),
    "asym_pc_user_smooth": dict(family="asym_pc", channel_wise=True, smooth="user",
                                normalize="kernel", spatial=True),
    "inverse_eps0": dict(family="inverse_eps0", normalize="kernel", mask=True),
    "no_guide": dict(family=None, spatial=True, mask=True, normalize="kernel"),
    "no_guide_mask": dict(family=None, mask=True, normalize="mask"),
}

CONV_GEOMETRIES = [
    dict(kernel_size=(3, 3), stride=1, padding=1, dilation=1),
    dict(kernel_size=(3, 3), stride=2, padding=0, dilation=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=1),
    dict(kernel_size=(3, 3), stride=1, padding=2, dilation=2),
    dict(kernel_size=(5, 3), stride=(1, 2), padding=(2, 1), dilation=(1, 2)),
]
TRANSPOSE_GEOMETRIES = [
    dict(kernel_size=(3, 3), stride=2, padding=1, dilation=1, output_padding=1),
    dict(kernel_size=(3, 3), stride=1, padding=1, dilation=1, output_padding=0),
    dict(kernel_size=(3, 5), stride=(2, 3), padding=(0, 1), dilation=1, output_padding=(1, 2)),
    dict(kernel_size=(3, 3), stride=2, padding=1, dilation=2, output_padding=1),
]
FORWARD = {"conv": pac_conv, "conv_transpose": pac_conv_transpose, "pool": pac_pool}
VJP = {"conv": pac_conv_vjp, "conv_transpose": pac_conv_transpose_vjp, "pool": pac_pool_vjp}
# The kernel cases of the quick test tier: between them every family kind (Gaussian, inverse
# power per channel, asymmetric, no guide), normalization, mask, smoothing kind, spatial weight
# and channel_wise; the other cases run in the full tier (``slow``).
QUICK_KERNEL_CASES = ("inverse_pc_mask", "inverse_user_smooth", "gaussian_average_mask_kernel",
                      "asym_pc_user_smooth", "no_guide")


def with_family(function, family_options):
    """``function`` taking ``alpha``/``lambda_`` keywords, passed on as an InversePower."""
    def call(*args, alpha=None, lambda_=None, **kwargs):
        if alpha is not None:
            kwargs["family"] = InversePower(alpha, lambda_, **family_options)
        return function(*args, **kwargs)
    return call


def _out_shape(op, geometry, size):
    k = np.broadcast_to(geometry["kernel_size"], 2)
    s, p, d = (np.broadcast_to(geometry[key], 2) for key in ("stride", "padding", "dilation"))
    if op == "conv_transpose":
        o = np.broadcast_to(geometry["output_padding"], 2)
        return tuple(transposed_out_size(size[i], k[i], s[i], p[i], d[i], o[i]) for i in (0, 1))
    return tuple(forward_out_size(size[i], k[i], s[i], p[i], d[i]) for i in (0, 1))


def kernel_inputs(rng, case, kernel_size, guide_shape, dtype=np.float64):
    """Keyword arguments for the kernel options of ``case`` plus the family wrapper options."""
    options = KERNEL_CASES[case]
    inputs = {}
    family_options = None
    name = options["family"]
    if name is not None:
        inputs["guide"] = (2.0 * rng.random((BATCH, CHANNELS, *guide_shape))).astype(dtype)
        family_options = FAMILIES[name]
        if family_options is None:
            inputs["family"] = Gaussian()
        else:
            family_options = dict(family_options)
            for key in ("alpha", "lambda_"):
                value = family_options.pop(key)
                inputs[key] = np.array(value, dtype) if isinstance(value, list) else value
    if options.get("spatial"):
        inputs["spatial_weight"] = rng.uniform(0.5, 1.5, kernel_size).astype(dtype)
    if options.get("mask"):
        inputs["mask"] = rng.uniform(0.2, 0.9, (BATCH, 1, *guide_shape)).astype(dtype)
    smooth = options.get("smooth")
    if smooth == "user":
        inputs["smooth"] = rng.uniform(0.05, 0.3, (3, 5)).astype(dtype)
    elif smooth is not None:
        inputs["smooth"] = smooth
    for key in ("normalize", "channel_wise"):
        if key in options:
            inputs[key] = options[key]
    return inputs, family_options or {}


def op_inputs(rng, op, geometry, *, weight="full", bias=False, dtype=np.float64):
    """Data, weight and geometry keywords of one op call (no kernel options)."""
    size = LOW_SHAPE if op == "conv_transpose" else IN_SHAPE
    kh, kw = geometry["kernel_size"]
    inputs = {"x": rng.standard_normal((BATCH, CHANNELS, *size)).astype(dtype)}
    if op == "pool":
        inputs["kernel_size"] = geometry["kernel_size"]
    elif weight == "shared":
        inputs["weight"] = rng.standard_normal((1, 1, kh, kw)).astype(dtype)
    elif op == "conv":
        inputs["weight"] = rng.standard_normal((OUT_CHANNELS, CHANNELS, kh, kw)).astype(dtype)
    else:
        inputs["weight"] = rng.standard_normal((CHANNELS, OUT_CHANNELS, kh, kw)).astype(dtype)
    if bias and op != "pool":
        channels_out = CHANNELS if weight == "shared" else OUT_CHANNELS
        inputs["bias"] = rng.standard_normal(channels_out).astype(dtype)
    for key in ("stride", "padding", "dilation", "output_padding"):
        if key in geometry:
            inputs[key] = geometry[key]
    return inputs, _out_shape(op, geometry, size)


def fused_case(rng, op, case, index, dtype=np.float64):
    """(forward, vjp, inputs) of ``op`` with the kernel options of ``case``."""
    geometries = TRANSPOSE_GEOMETRIES if op == "conv_transpose" else CONV_GEOMETRIES
    geometry = geometries[index % len(geometries)]
    weight = "shared" if index % 3 == 2 else "full"
    inputs, out_shape = op_inputs(rng, op, geometry, weight=weight, bias=index % 2 == 0,
                                  dtype=dtype)
    guide_shape = out_shape if op == "conv_transpose" else IN_SHAPE
    kernel_options, family_options = kernel_inputs(rng, case, geometry["kernel_size"],
                                                   guide_shape, dtype)
    inputs.update(kernel_options)
    return (with_family(FORWARD[op], family_options), with_family(VJP[op], family_options),
            inputs)


def _assert_passed(report):
    assert report.errors, "nothing was checked"
    assert report.passed, f"\n{report}\n{report.values}"


# ----------------------------------------------------------------------------------------
# finite differences over the grid


@ops("conv", "conv_transpose", "pool")
@pytest.mark.parametrize("case", tiered_values(KERNEL_CASES, QUICK_KERNEL_CASES))
def test_fused_vjp_matches_finite_differences(op, case, rng):
    forward, vjp, inputs = fused_case(rng, op, case, list(KERNEL_CASES).index(case))
    report = check_gradients(forward, vjp, inputs, step=STEP, tolerance=FD_TOLERANCE,
                             directions=2)
    _assert_passed(report)


@ops("conv", "conv_transpose", "pool")
@pytest.mark.parametrize("index", tiered(range(5), quick=[0, 3]))  # full weight; shared + bias
def test_explicit_vjp_matches_finite_differences_and_adjoint(op, index, rng):
    geometries = TRANSPOSE_GEOMETRIES if op == "conv_transpose" else CONV_GEOMETRIES
    geometry = geometries[index % len(geometries)]
    inputs, out_shape = op_inputs(rng, op, geometry, weight="shared" if index == 3 else "full",
                                  bias=index % 2 == 1)
    fk = CHANNELS if index % 2 == 0 else 1
    inputs["kernel"] = rng.uniform(0.1, 1.0, (BATCH, fk, *geometry["kernel_size"], *out_shape))
    report = check_gradients(FORWARD[op], VJP[op], inputs, step=STEP, tolerance=FD_TOLERANCE,
                             directions=2)
    assert set(report.errors) == {"x", "weight", "bias", "kernel"} & set(inputs)
    _assert_passed(report)
    # every input of an explicit-K op enters linearly (bias: affinely)
    _assert_passed(dot_product_test(FORWARD[op], VJP[op], inputs, tolerance=1e-11))


def _oracle_forward(op, geometry):
    """The float64 oracle's op as ``function(x, weight, bias, kernel)``."""
    keys = ("stride", "padding", "dilation") + (("output_padding",) if op == "conv_transpose"
                                                 else ())
    options = {key: geometry[key] for key in keys}

    def forward(x, kernel, weight=None, bias=None):
        if op == "pool":
            return ref_pool(x, kernel, **options)
        if op == "conv":
            return ref_conv(x, kernel, weight, bias, **options)
        return ref_conv_transpose_gather(x, kernel, weight, bias, **options)
    return forward


@ops("conv", "conv_transpose", "pool")
@pytest.mark.parametrize("weight", ["full", "shared"])
def test_adjoint_of_the_oracle_forward(op, weight, rng):
    """<v, J u> with J the oracle's op, J^T v from pacarray: independent of pacarray's forward."""
    geometries = TRANSPOSE_GEOMETRIES if op == "conv_transpose" else CONV_GEOMETRIES
    geometry = geometries[2]
    inputs, out_shape = op_inputs(rng, op, geometry, weight=weight, bias=op != "pool")
    fk = CHANNELS if weight == "full" else 1
    inputs["kernel"] = rng.uniform(0.1, 1.0, (BATCH, fk, *geometry["kernel_size"], *out_shape))
    oracle = _oracle_forward(op, geometry)
    wrt = [name for name in ("x", "weight", "bias", "kernel") if name in inputs]

    def forward(**kw):
        return oracle(kw["x"], kw["kernel"], kw.get("weight"), kw.get("bias"))

    report = dot_product_test(forward, lambda g, **kw: VJP[op](g, **kw), inputs, wrt=wrt,
                              tolerance=1e-11)
    _assert_passed(report)


# op -> (geometry, kernel options) of its case
ORACLE_CASES = {
    "conv": (dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=1),
             dict(family="inverse_power", alpha=0.3, lambda_=-0.8, eps=0.05, smooth="user",
                  normalize="mask_kernel", mask=True, spatial=True)),
    "conv_transpose": (TRANSPOSE_GEOMETRIES[0],
                       dict(family="gaussian", smooth="gaussian", normalize="kernel",
                            spatial=True, channel_wise=True)),
    "pool": (dict(kernel_size=(3, 3), stride=2, padding=1, dilation=1),
             dict(family="inverse_power", alpha=0.2, lambda_=-0.5, eps=0.1, asymmetric=True,
                  normalize="mask", mask=True, channel_wise=True)),
}


@ops("conv", "conv_transpose", "pool")
def test_fused_vjp_matches_finite_differences_of_the_oracle(op, rng):
    """Finite differences of the oracle (ref_kernel + ref op) against pacarray's fused vjp."""
    geometry, options = ORACLE_CASES[op]
    inputs, out_shape = op_inputs(rng, op, geometry, weight="full", bias=False)
    guide_shape = out_shape if op == "conv_transpose" else IN_SHAPE
    kernel_size = geometry["kernel_size"]
    inputs["guide"] = 2.0 * rng.random((BATCH, CHANNELS, *guide_shape))
    if options.get("spatial"):
        inputs["spatial_weight"] = rng.uniform(0.5, 1.5, kernel_size)
    if options.get("mask"):
        inputs["mask"] = rng.uniform(0.2, 0.9, (BATCH, 1, *guide_shape))
    inputs["smooth"] = (rng.uniform(0.05, 0.3, (3, 3)) if options.get("smooth") == "user"
                        else options.get("smooth"))
    inverse = options["family"] == "inverse_power"
    if inverse:
        inputs["alpha"], inputs["lambda_"] = options["alpha"], options["lambda_"]
    flags = dict(normalize=options["normalize"], channel_wise=options.get("channel_wise", False))
    oracle = _oracle_forward(op, geometry)

    def forward(x, guide, weight=None, alpha=0.0, lambda_=-1.0, smooth=None,
                spatial_weight=None, mask=None, **geometry_keywords):
        K, _ = ref_kernel(
            guide, kernel_size, stride=geometry["stride"], padding=geometry["padding"],
            dilation=geometry["dilation"], family=options["family"], alpha=alpha,
            lambda_=lambda_, eps=options.get("eps", 1e-2),
            asymmetric=options.get("asymmetric", False), smooth=smooth,
            spatial_weight=spatial_weight, mask=mask, transposed=op == "conv_transpose",
            **flags,
        )
        return oracle(x, K, weight)

    family_options = {k: options[k] for k in ("eps", "asymmetric") if k in options}
    vjp = with_family(VJP[op], family_options)

    def vjp_call(g, **kw):
        if not inverse:
            kw["family"] = Gaussian()
        return vjp(g, **kw, **flags)

    wrt = [n for n in ("x", "weight", "guide", "alpha", "lambda_", "spatial_weight", "mask",
                       "smooth") if isinstance(inputs.get(n), (np.ndarray, float))]
    report = check_gradients(forward, vjp_call, inputs, wrt=wrt, step=STEP,
                             tolerance=FD_TOLERANCE, directions=2)
    _assert_passed(report)


@ops("conv", "conv_transpose", "pool")
@pytest.mark.parametrize("case", tiered(["asym_pc_user_smooth", "inverse_user_smooth",
                                         "gaussian_average_mask_kernel"], quick=[0]))
def test_fused_gradients_equal_explicit_kernel_composed_with_pac_kernel_vjp(op, case, rng):
    forward, vjp, inputs = fused_case(rng, op, case, 2)
    y = forward(**inputs)
    grad_y = rng.standard_normal(y.shape)
    fused = vjp(grad_y, **inputs)

    kernel_keys = ("guide", "alpha", "lambda_", "smooth", "spatial_weight", "mask", "normalize",
                   "channel_wise", "family")
    kernel_args = {k: v for k, v in inputs.items() if k in kernel_keys}
    op_args = {k: v for k, v in inputs.items() if k not in kernel_keys}
    geometry = {k: op_args[k] for k in ("stride", "padding", "dilation", "output_padding")
                if k in op_args}
    kernel_size = (op_args["kernel_size"] if op == "pool"
                   else op_args["weight"].shape[2:])
    family = FAMILIES[KERNEL_CASES[case]["family"]] or {}
    family_options = {k: v for k, v in family.items() if k in ("eps", "asymmetric")}
    make_kernel = with_family(pac_kernel, family_options)
    kernel_vjp = with_family(pac_kernel_vjp, family_options)
    transposed = op == "conv_transpose"
    K = make_kernel(kernel_size=kernel_size, transposed=transposed, **geometry, **kernel_args)
    explicit = VJP[op](grad_y, kernel=K, **op_args)
    chained = kernel_vjp(explicit.kernel, kernel_size=kernel_size, transposed=transposed,
                         **geometry, **kernel_args)
    np.testing.assert_allclose(FORWARD[op](kernel=K, **op_args), y, rtol=1e-12, atol=1e-12)
    for name in ("x", "weight", "bias"):
        if getattr(fused, name, None) is not None:
            np.testing.assert_allclose(getattr(fused, name), getattr(explicit, name),
                                       rtol=1e-10, atol=1e-12)
    for name in ("guide", "alpha", "lambda_", "smooth", "spatial_weight", "mask"):
        assert (getattr(fused, name) is None) == (getattr(chained, name) is None), name
        if getattr(fused, name) is not None:
            np.testing.assert_allclose(getattr(fused, name), getattr(chained, name),
                                       rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------
# precision, determinism, accumulators


@ops("conv", "conv_transpose", "pool")
def test_float32_matches_float64(op):
    rng = np.random.default_rng(7)
    results = {}
    for dtype in (np.float64, np.float32):
        forward, vjp, inputs = fused_case(np.random.default_rng(3), op, "asym_pc_user_smooth", 0,
                                          dtype=dtype)
        grad_y = rng.standard_normal(forward(**inputs).shape).astype(dtype)
        results[dtype] = vjp(grad_y, **inputs)
        rng = np.random.default_rng(7)
    for name, g64 in results[np.float64]._asdict().items():
        if g64 is None:
            continue
        g32 = getattr(results[np.float32], name)
        assert g32.dtype == np.float32, name
        error = np.max(np.abs(g32.astype(np.float64) - g64)) / np.max(np.abs(g64))
        assert error <= 1e-4, (name, error)


def _bits(result):
    return {k: v.tobytes() for k, v in result._asdict().items() if v is not None}


@ops("conv", "conv_transpose", "pool")
def test_backward_is_bit_identical_run_to_run_and_across_thread_counts(op):
    rng = np.random.default_rng(11)
    # larger than the grid: many bands, several threads
    x_shape = (2, 4, 17, 23) if op == "conv_transpose" else (2, 4, 33, 45)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kw = dict(stride=2, padding=1, family=InversePower(0.3, -0.7), normalize="mask_kernel",
              smooth="gaussian")
    if op == "conv_transpose":
        out_shape = (33, 45)
        kw["output_padding"] = 0
        weight = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    else:
        out_shape = (17, 23)
        weight = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    guide_shape = out_shape if op == "conv_transpose" else x_shape[2:]
    kw["guide"] = rng.random((2, 3, *guide_shape)).astype(np.float32)
    kw["mask"] = rng.random((2, 1, *guide_shape)).astype(np.float32)
    args = (x, 3) if op == "pool" else (x, weight)
    y = FORWARD[op](*args, **kw)
    grad_y = rng.standard_normal(y.shape).astype(np.float32)
    first = _bits(VJP[op](grad_y, *args, **kw))
    assert first.keys() >= {"x", "guide", "alpha", "lambda_", "mask"}
    assert _bits(VJP[op](grad_y, *args, **kw)) == first
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert _bits(VJP[op](grad_y, *args, **kw)) == first
    finally:
        numba.set_num_threads(threads)


@ops("conv", "conv_transpose")
def test_one_weight_accumulator_matches_many(op, rng, monkeypatch):
    """The weight gradient's band partial sums in one slot (many waves) or several."""
    forward, vjp, inputs = fused_case(rng, op, "inverse_pc_mask", 0)
    inputs["weight"] = rng.standard_normal(
        (OUT_CHANNELS, CHANNELS, 3, 3) if op == "conv" else (CHANNELS, OUT_CHANNELS, 3, 3))
    grad_y = rng.standard_normal(forward(**inputs).shape)
    many = vjp(grad_y, **inputs)
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 1)
    one = vjp(grad_y, **inputs)
    for name, value in many._asdict().items():
        if value is not None:
            np.testing.assert_allclose(getattr(one, name), value, rtol=1e-12, atol=1e-13)
    _assert_passed(check_gradients(forward, vjp, inputs, step=STEP, tolerance=FD_TOLERANCE,
                                   directions=2))


# ----------------------------------------------------------------------------------------
# bad input, inputs untouched


@ops("conv", "conv_transpose", "pool")
def test_grad_output_of_wrong_shape_or_dtype_is_rejected(op, rng):
    forward, vjp, inputs = fused_case(rng, op, "gaussian", 0)
    shape = forward(**inputs).shape
    with pytest.raises(ValueError, match="grad_output.*shape"):
        vjp(np.ones(shape[:-1] + (shape[-1] + 1,)), **inputs)
    with pytest.raises(ValueError, match="grad_output"):
        vjp(np.ones(shape[1:]), **inputs)
    with pytest.raises(TypeError, match="grad_output"):
        vjp(np.ones(shape, dtype=np.int64), **inputs)
    with pytest.raises(TypeError, match="grad_output"):
        vjp(np.ones(shape, dtype=np.complex128), **inputs)
    grads = vjp(np.ones(shape).tolist(), **inputs)  # nested lists convert like numpy.asarray
    assert grads.x.shape == inputs["x"].shape


FORWARD_ERRORS = [
    dict(padding=3),                                   # padding beyond d*(k-1)/2
    dict(normalize="mask"),                            # requires a mask
    dict(mask=np.full((1, 1, 6, 6), 2.0)),             # mask outside [0, 1]
    dict(family=InversePower([0.1, 0.2], -1.0)),       # per-channel without channel_wise
    dict(kernel=np.ones((1, 1, 3, 3, 6, 6)), guide=np.ones((1, 2, 6, 6))),
    dict(guide=np.ones((1, 2, 5, 6))),                 # guide of the wrong size
]


@ops("conv", "pool")
@pytest.mark.parametrize("bad", FORWARD_ERRORS)
def test_bad_arguments_give_the_forward_errors(op, bad):
    x = np.ones((1, 2, 6, 6))
    args = (x, 3) if op == "pool" else (x, np.ones((2, 2, 3, 3)))
    kw = dict(padding=1, guide=np.ones((1, 2, 6, 6)))
    kw.update(bad)
    with pytest.raises((ValueError, TypeError)) as forward_error:
        FORWARD[op](*args, **kw)
    with pytest.raises(forward_error.type) as vjp_error:
        VJP[op](np.ones((1, 2, 6, 6)), *args, **kw)
    assert str(vjp_error.value) == str(forward_error.value)


@ops("conv", "conv_transpose", "pool")
@pytest.mark.parametrize("case", ["inverse_user_smooth", "explicit"])
def test_inputs_are_never_modified(op, case, rng):
    if case == "explicit":
        geometries = TRANSPOSE_GEOMETRIES if op == "conv_transpose" else CONV_GEOMETRIES
        inputs, out_shape = op_inputs(rng, op, geometries[0], bias=op != "pool")
        inputs["kernel"] = rng.random((BATCH, 1, 3, 3, *out_shape))
        vjp = VJP[op]
        shape = FORWARD[op](**inputs).shape
    else:
        forward, vjp, inputs = fused_case(rng, op, case, 0)
        shape = forward(**inputs).shape
    grad_y = rng.standard_normal(shape)
    arrays = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
    arrays["grad_output"] = grad_y
    copies = {k: v.copy() for k, v in arrays.items()}
    for value in arrays.values():
        value.flags.writeable = False   # any write would raise
    vjp(grad_y, **inputs)
    for name, value in arrays.items():
        np.testing.assert_array_equal(value, copies[name], err_msg=name)


