"""The public ops on 1-D signals and 3-D volumes (issue 15): parity, gradients, identities.

* Parity: ``pac_kernel``, ``pac_pool``, ``pac_conv`` and ``pac_conv_transpose`` against the
  float64 oracle (``tests/reference.py``) over the grid of ``_volume_cases.py`` (explicit and
  fused paths, full and shared weights), and over random ranks and geometries (Hypothesis).
* Gradients: every ``*_vjp`` against central finite differences (``pacarray.testing``), of
  pacarray's forward and of the oracle's, and the exact dot-product test for the linear inputs,
  in 1-D and 3-D.
* Identities on pacarray itself: a ``(1, kh, kw)`` kernel on a volume is the 2-D op slice by
  slice, a 1-D call is the 2-D op on one row, K = 1 is ``scipy.ndimage.correlate``.
* Bad input: mixed ranks, geometry tuples of the wrong length, 4-D spatial arrays and arrays
  without a spatial axis raise ``ValueError``/``TypeError`` naming the parameter.

The 2-D grids stay in ``test_pac_*.py``; ``docs/design.md`` §1 is the contract.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import pacarray
from _gradient_cases import (
    FAMILIES as GRADIENT_FAMILIES,
    FD_TOLERANCE,
    KERNEL_CASES,
    STEP,
    _assert_passed,
    with_family,
)
from _tiers import tiered, tiered_values
from _volume_cases import (
    CASES,
    case_params,
    explicit_kwargs,
    fused_kwargs,
    oracle_family,
    prepared,
    spatial_array,
    user_smoothing,
)
from pacarray import Gaussian, InversePower, pac_conv, pac_conv_transpose, pac_kernel, pac_pool
from pacarray.gradients import (
    pac_conv_transpose_vjp,
    pac_conv_vjp,
    pac_kernel_vjp,
    pac_pool_vjp,
)
from pacarray.testing import check_gradients, dot_product_test
from reference import (
    forward_out_size,
    ref_conv,
    ref_conv_transpose,
    ref_conv_transpose_gather,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
    transposed_out_size,
)
from test_reference import dilate_weights_nd, scipy_conv

# A tenth of the 2-D tests' step: an asymmetric kernel's smoothed centre often lies near the
# kink of max(0, fc - fq)**2 (continuous slope, jumping curvature), where the extrapolated
# central difference is only O(step) accurate; float64 rounding at this step stays ~1e-9.
ND_STEP = STEP / 10
FORWARD = {"conv": pac_conv, "conv_transpose": pac_conv_transpose, "pool": pac_pool}
VJP = {"conv": pac_conv_vjp, "conv_transpose": pac_conv_transpose_vjp, "pool": pac_pool_vjp}
OPS = ("conv", "conv_transpose", "pool")


def _kernel_size_argument(kernel_size):
    """An int when every axis has the same size (the rank then comes from the arrays)."""
    return kernel_size[0] if len(set(kernel_size)) == 1 else kernel_size


# ----------------------------------------------------------------------------------------
# parity with the oracle over the grid of _volume_cases.py


@pytest.mark.parametrize("rank, index", case_params(guided_only=True))
def test_pac_kernel(rank, index, assert_close):
    prep = prepared(rank, index)
    dtype = prep.case.dtype
    kwargs = fused_kwargs(prep)
    guide = kwargs.pop("guide")
    K, valid = pac_kernel(guide, _kernel_size_argument(prep.kernel_size), return_validity=True,
                          **kwargs)
    assert_close(K, prep.K, dtype)
    assert valid.dtype == np.bool_
    np.testing.assert_array_equal(valid, prep.valid)
    kwargs = fused_kwargs(prep, transposed=True)
    guide = kwargs.pop("guide")
    K_t, valid_t = pac_kernel(guide, prep.kernel_size, transposed=True, return_validity=True,
                              **kwargs)
    assert_close(K_t, prep.K_t, dtype)
    np.testing.assert_array_equal(valid_t, prep.valid_t)


@pytest.mark.parametrize("rank, index", case_params())
def test_pac_pool(rank, index, assert_close):
    prep = prepared(rank, index)
    dtype = prep.case.dtype
    k = _kernel_size_argument(prep.kernel_size)
    magnitude = prep.magnitude["pool"]
    explicit = pac_pool(prep.x, k, **explicit_kwargs(prep, prep.K))
    assert_close(explicit, prep.pool, dtype, magnitude)
    fused = pac_pool(prep.x, k, **fused_kwargs(prep))
    assert_close(fused, prep.pool, dtype, magnitude)


@pytest.mark.parametrize("rank, index", case_params())
def test_pac_conv(rank, index, assert_close):
    prep = prepared(rank, index)
    dtype = prep.case.dtype
    magnitude, magnitude_shared = prep.magnitude["conv"], prep.magnitude["conv_shared"]
    explicit = pac_conv(prep.x, prep.weight, prep.bias, **explicit_kwargs(prep, prep.K))
    assert_close(explicit, prep.conv, dtype, magnitude)
    fused = pac_conv(prep.x, prep.weight, prep.bias, **fused_kwargs(prep))
    assert_close(fused, prep.conv, dtype, magnitude)
    shared = pac_conv(prep.x, prep.shared_weight, **fused_kwargs(prep))
    assert_close(shared, prep.conv_shared, dtype, magnitude_shared)
    shared_explicit = pac_conv(prep.x, prep.shared_weight, **explicit_kwargs(prep, prep.K))
    assert_close(shared_explicit, prep.conv_shared, dtype, magnitude_shared)


@pytest.mark.parametrize("rank, index", case_params())
def test_pac_conv_transpose(rank, index, assert_close):
    prep = prepared(rank, index)
    dtype = prep.case.dtype
    magnitude, magnitude_shared = prep.magnitude["conv_t"], prep.magnitude["conv_t_shared"]
    explicit = pac_conv_transpose(prep.xt, prep.weight_t, prep.bias,
                                  **explicit_kwargs(prep, prep.K_t, True))
    assert_close(explicit, prep.conv_t, dtype, magnitude)
    fused = pac_conv_transpose(prep.xt, prep.weight_t, prep.bias, **fused_kwargs(prep, True))
    assert_close(fused, prep.conv_t, dtype, magnitude)
    shared = pac_conv_transpose(prep.xt, prep.shared_weight_t, **fused_kwargs(prep, True))
    assert_close(shared, prep.conv_t_shared, dtype, magnitude_shared)
    shared_explicit = pac_conv_transpose(prep.xt, prep.shared_weight_t,
                                         **explicit_kwargs(prep, prep.K_t, True))
    assert_close(shared_explicit, prep.conv_t_shared, dtype, magnitude_shared)


def test_grid_covers_every_option():
    """The grid above spreads every option over both ranks (a guard for future edits)."""
    for rank, cases in CASES.items():
        assert {case.family for case in cases} >= {"gaussian", "inverse_asym_pc", "none"}
        assert {(case.normalize, case.mask) for case in cases} >= {
            (None, False), ("kernel", False), ("mask", True), ("mask_kernel", True)}
        assert {str(case.smooth) for case in cases} >= {"None", "gaussian", "user",
                                                        "('average', 3)"}
        assert {case.spatial for case in cases} >= {None, "square", "disk", "disk_gauss"}
        assert {case.channel_wise for case in cases} == {False, True}
        assert {np.dtype(case.dtype).name for case in cases} == {"float32", "float64"}
    assert any(case.geometry[0] == (1, 3, 5) for case in CASES[3])


@pytest.mark.parametrize("rank", [1, 3])
def test_spatial_window_matches_oracle(rank, assert_close):
    sizes = {1: [(1,), (3,), (7,)], 3: [(1, 1, 1), (3, 3, 3), (1, 3, 5), (5, 3, 1)]}[rank]
    dilations = {1: [1, (2,)], 3: [1, (2, 1, 3)]}[rank]
    sigmas = [None, 0.7, (2.0,) * rank, (1.0, 0.5, 2.0)[:rank]]
    for kernel_size in sizes:
        for sigma in sigmas:
            for window in ("square", "disk"):
                for dilation in dilations:
                    actual = pacarray.spatial_window(kernel_size, sigma, window=window,
                                                     dilation=dilation)
                    expected = ref_spatial_window(kernel_size, sigma, window, dilation)
                    assert_close(actual, expected, np.float64)


# ----------------------------------------------------------------------------------------
# random rank and geometry (Hypothesis; full tier, as tests/test_hypothesis.py)

HYPOTHESIS_SETTINGS = settings(max_examples=20, deadline=None)
FAMILY_NAMES = ["gaussian", "inverse", "inverse_asym", "inverse_pc", "inverse_asym_pc", "none"]


@st.composite
def nd_configurations(draw, op):
    transposed = op == "conv_transpose"
    rank = draw(st.integers(1, 3))
    dims = []
    for _ in range(rank):
        # 3-D volumes stay tiny: the oracle loops over every voxel and tap in Python.
        k = draw(st.sampled_from([1, 3, 5] if rank < 3 else [1, 3]))
        d = draw(st.integers(1, 2))
        s = draw(st.integers(1, 3))
        p = draw(st.integers(0, d * (k - 1) // 2))
        if transposed:
            op_pad = draw(st.integers(0, max(s, d) - 1))
            size = draw(st.integers(1, 4 if rank < 3 else 2))
        else:
            op_pad = 0
            smallest = max(1, d * (k - 1) + 1 - 2 * p)
            size = draw(st.integers(smallest, smallest + (5 if rank < 3 else 2)))
        dims.append((k, s, p, d, op_pad, size))
    k, s, p, d, op_pad, size = (tuple(values) for values in zip(*dims))
    family = draw(st.sampled_from(FAMILY_NAMES if op != "kernel" else FAMILY_NAMES[:-1]))
    channels = draw(st.integers(1, 3))
    channel_wise = family.endswith("_pc") or (family != "none" and draw(st.booleans()))
    normalize = draw(st.sampled_from([None, "kernel", "mask", "mask_kernel"]))
    return dict(
        op=op, rank=rank, k=k, s=s, p=p, d=d, output_padding=op_pad, size=size, family=family,
        batch=draw(st.integers(1, 2)), channels=channels,
        features=channels if channel_wise else draw(st.integers(1, 3)),
        out_channels=draw(st.integers(1, 3)), shared=draw(st.booleans()),
        channel_wise=channel_wise, normalize=normalize,
        has_mask=normalize in ("mask", "mask_kernel") or draw(st.booleans()),
        smooth=None if family == "none" else draw(
            st.sampled_from([None, "gaussian", ("average", 3), ("average", 1), "user"])),
        spatial=draw(st.sampled_from([None, "square", "disk", "disk_gauss"])),
        dtype=draw(st.sampled_from([np.float32, np.float64])), explicit=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)), bias=draw(st.booleans()),
        int_geometry=draw(st.booleans()),
    )


def _maybe_int(values, as_int):
    return values[0] if as_int and len(set(values)) == 1 else values


def _run_configuration(config, assert_close):
    rng = np.random.default_rng(config["seed"])
    dtype, rank = config["dtype"], config["rank"]
    transposed = config["op"] == "conv_transpose"
    k, s, p, d, size = (config[key] for key in ("k", "s", "p", "d", "size"))
    n, c, f = config["batch"], config["channels"], config["features"]
    if transposed:
        out_size = tuple(transposed_out_size(*args)
                         for args in zip(size, k, s, p, d, config["output_padding"]))
        guide_size = out_size
    else:
        out_size = tuple(forward_out_size(*args) for args in zip(size, k, s, p, d))
        guide_size = size
    assert min(out_size) >= 1
    family, oracle_keywords = oracle_family(config["family"], f)
    scale = 0.7 if config["family"] == "gaussian" else 1.0
    guide = (scale * rng.standard_normal((n, f) + guide_size)).astype(dtype)
    mask = rng.random((n, 1) + guide_size) if config["has_mask"] else None
    if mask is not None:
        mask[mask < 0.3] = 0.0
    smooth = config["smooth"]
    if smooth == "user":
        smooth = user_smoothing(rng, rank, dtype)
    spatial = spatial_array(config["spatial"], k, d)
    spatial = None if spatial is None else spatial.astype(dtype)
    options = dict(spatial_weight=spatial, mask=mask, normalize=config["normalize"])
    K, valid = ref_kernel(
        guide if family is not None else np.zeros((n, 1) + guide_size), k, s, p, d,
        smooth=smooth.astype(np.float64) if isinstance(smooth, np.ndarray) else smooth,
        channel_wise=config["channel_wise"], transposed=transposed, **options,
        **oracle_keywords)
    as_int = config["int_geometry"]
    geometry = dict(stride=_maybe_int(s, as_int), padding=_maybe_int(p, as_int),
                    dilation=_maybe_int(d, as_int))
    if transposed:
        geometry["output_padding"] = _maybe_int(config["output_padding"], as_int)
    fused = dict(options, **geometry)
    if family is not None:
        fused.update(guide=guide, family=family, smooth=smooth,
                     channel_wise=config["channel_wise"])
    kernel_size = _maybe_int(k, as_int)
    if config["op"] == "kernel":
        del fused["guide"]
        actual, actual_valid = pac_kernel(guide, kernel_size, return_validity=True, **fused)
        assert_close(actual, K, dtype)
        np.testing.assert_array_equal(actual_valid, valid)
        return
    kwargs = dict(geometry, kernel=K.astype(dtype)) if config["explicit"] else fused
    x = rng.standard_normal((n, c) + size).astype(dtype)
    if config["op"] == "pool":
        actual = pac_pool(x, kernel_size, **kwargs)
        magnitude = np.max(ref_pool(np.abs(x), np.abs(K), None, s, p, d))
        assert_close(actual, ref_pool(x, K, None, s, p, d), dtype, magnitude=magnitude)
        return
    c_out = config["out_channels"]
    if config["shared"]:
        weight, c_out = rng.standard_normal((1, 1) + k), c
    elif transposed:
        weight = rng.standard_normal((c, c_out) + k)
    else:
        weight = rng.standard_normal((c_out, c) + k)
    weight = weight.astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if config["bias"] else None
    absolute = (np.abs(x), np.abs(K), np.abs(weight), None if bias is None else np.abs(bias))
    if transposed:
        op_pad = config["output_padding"]
        actual = pac_conv_transpose(x, weight, bias, **kwargs)
        expected = ref_conv_transpose(x, K, weight, bias, s, p, d, op_pad)
        magnitude = np.max(ref_conv_transpose(*absolute, s, p, d, op_pad))
    else:
        actual = pac_conv(x, weight, bias, **kwargs)
        expected = ref_conv(x, K, weight, bias, s, p, d)
        magnitude = np.max(ref_conv(*absolute, s, p, d))
    assert actual.shape == (n, c_out) + out_size
    assert_close(actual, expected, dtype, magnitude=magnitude)


@pytest.mark.slow  # random searches: full tier only, like tests/test_hypothesis.py
@pytest.mark.parametrize("op", ["kernel", "conv", "conv_transpose", "pool"])
@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_random_rank_and_geometry_match_the_oracle(op, assert_close, data):
    _run_configuration(data.draw(nd_configurations(op), label="configuration"), assert_close)


# ----------------------------------------------------------------------------------------
# gradients: finite differences and adjoints in 1-D and 3-D

BATCH, CHANNELS, OUT_CHANNELS = 2, 2, 3
IN_SHAPES = {1: (9,), 3: (3, 4, 5)}       # data (and guide) of the forward ops
LOW_SHAPES = {1: (4,), 3: (2, 2, 3)}      # data of the transposed op
GRADIENT_GEOMETRIES = {
    1: [dict(kernel_size=(3,), stride=2, padding=1, dilation=1),
        dict(kernel_size=(5,), stride=1, padding=4, dilation=2)],
    3: [dict(kernel_size=(1, 3, 3), stride=(1, 2, 1), padding=(0, 1, 1), dilation=1),
        dict(kernel_size=(3, 1, 3), stride=1, padding=(2, 0, 1), dilation=(2, 1, 1))],
}
GRADIENT_TRANSPOSE_GEOMETRIES = {
    1: [dict(kernel_size=(3,), stride=2, padding=1, dilation=1, output_padding=1),
        dict(kernel_size=(5,), stride=3, padding=2, dilation=2, output_padding=2)],
    3: [dict(kernel_size=(3, 1, 3), stride=(2, 1, 2), padding=(1, 0, 0), dilation=1,
             output_padding=(1, 0, 1)),
        dict(kernel_size=(1, 3, 3), stride=(1, 2, 1), padding=(0, 1, 2), dilation=(1, 1, 2),
             output_padding=(0, 1, 1))],
}
# The kernel cases of the quick tier, per rank: between the two ranks every family kind,
# normalization, mask, smoothing kind (user N-D array, box), spatial weight and channel_wise.
QUICK_KERNEL_CASES = {1: ("asym_pc_user_smooth", "no_guide"),
                      3: ("gaussian_average_mask_kernel", "inverse_pc_mask")}


def rank_params(names, values, quick):
    """``(rank, *value)`` parameters for ranks 1 and 3; ``quick(rank, value)`` picks the quick
    tier, the others are marked slow."""
    params = [(rank,) + (value if isinstance(value, tuple) else (value,))
              for rank in (1, 3) for value in values]
    ids = ["-".join(map(str, param)) for param in params]
    return tiered([pytest.param(*param, id=i) for param, i in zip(params, ids)],
                  [i for i, param in enumerate(params) if quick(param[0], param[1:])])


def _geometry(op, rank, index):
    table = GRADIENT_TRANSPOSE_GEOMETRIES if op == "conv_transpose" else GRADIENT_GEOMETRIES
    return table[rank][index % 2]


def _out_shape(op, rank, geometry):
    size = LOW_SHAPES[rank] if op == "conv_transpose" else IN_SHAPES[rank]
    k = geometry["kernel_size"]
    s, p, d = (np.broadcast_to(geometry[key], rank) for key in ("stride", "padding",
                                                                 "dilation"))
    if op == "conv_transpose":
        o = np.broadcast_to(geometry["output_padding"], rank)
        return tuple(transposed_out_size(size[i], k[i], s[i], p[i], d[i], o[i])
                     for i in range(rank))
    return tuple(forward_out_size(size[i], k[i], s[i], p[i], d[i]) for i in range(rank))


def nd_op_inputs(rng, op, rank, geometry, *, weight="full", bias=False):
    """Data, weight and geometry keywords of one op call (no kernel options)."""
    size = LOW_SHAPES[rank] if op == "conv_transpose" else IN_SHAPES[rank]
    k = geometry["kernel_size"]
    inputs = {"x": rng.standard_normal((BATCH, CHANNELS) + size)}
    if op == "pool":
        inputs["kernel_size"] = k
    elif weight == "shared":
        inputs["weight"] = rng.standard_normal((1, 1) + k)
    elif op == "conv":
        inputs["weight"] = rng.standard_normal((OUT_CHANNELS, CHANNELS) + k)
    else:
        inputs["weight"] = rng.standard_normal((CHANNELS, OUT_CHANNELS) + k)
    if bias and op != "pool":
        inputs["bias"] = rng.standard_normal(CHANNELS if weight == "shared" else OUT_CHANNELS)
    for key in ("stride", "padding", "dilation", "output_padding"):
        if key in geometry:
            inputs[key] = geometry[key]
    return inputs, _out_shape(op, rank, geometry)


def nd_kernel_inputs(rng, case, rank, kernel_size, guide_shape):
    """Kernel keywords of a ``_gradient_cases.KERNEL_CASES`` case on rank-``rank`` arrays."""
    options = KERNEL_CASES[case]
    inputs, family_options = {}, {}
    name = options["family"]
    if name is not None:
        inputs["guide"] = 2.0 * rng.random((BATCH, CHANNELS) + guide_shape)
        family_options = GRADIENT_FAMILIES[name]
        if family_options is None:
            inputs["family"], family_options = Gaussian(), {}
        else:
            family_options = dict(family_options)
            for key in ("alpha", "lambda_"):
                value = family_options.pop(key)
                inputs[key] = np.array(value) if isinstance(value, list) else value
    if options.get("spatial"):
        inputs["spatial_weight"] = rng.uniform(0.5, 1.5, kernel_size)
    if options.get("mask"):
        inputs["mask"] = rng.uniform(0.2, 0.9, (BATCH, 1) + guide_shape)
    smooth = options.get("smooth")
    if smooth == "user":
        inputs["smooth"] = 0.05 + user_smoothing(rng, rank, np.float64)
    elif smooth is not None:
        inputs["smooth"] = smooth
    for key in ("normalize", "channel_wise"):
        if key in options:
            inputs[key] = options[key]
    return inputs, family_options


@pytest.mark.parametrize("rank, op, case", rank_params(
    "op, case", [(op, case) for op in OPS for case in KERNEL_CASES],
    lambda rank, value: value[1] in QUICK_KERNEL_CASES[rank]))
def test_fused_vjp_matches_finite_differences(rank, op, case, rng):
    index = list(KERNEL_CASES).index(case)
    geometry = _geometry(op, rank, index)
    inputs, out_shape = nd_op_inputs(rng, op, rank, geometry,
                                     weight="shared" if index % 3 == 2 else "full",
                                     bias=index % 2 == 0)
    guide_shape = out_shape if op == "conv_transpose" else IN_SHAPES[rank]
    kernel_options, family_options = nd_kernel_inputs(rng, case, rank,
                                                      geometry["kernel_size"], guide_shape)
    inputs.update(kernel_options)
    report = check_gradients(with_family(FORWARD[op], family_options),
                             with_family(VJP[op], family_options), inputs, step=ND_STEP,
                             tolerance=FD_TOLERANCE, directions=2)
    _assert_passed(report)


@pytest.mark.parametrize("rank, case, transposed", rank_params(
    "case, transposed", [(case, transposed) for case in KERNEL_CASES
                         if KERNEL_CASES[case]["family"] is not None
                         for transposed in (False, True)],
    lambda rank, value: value == (("asym_pc_user_smooth", False) if rank == 1 else
                                  ("gaussian_average_mask_kernel", True))))
def test_pac_kernel_vjp_matches_finite_differences(rank, case, transposed, rng):
    op = "conv_transpose" if transposed else "conv"
    geometry = dict(_geometry(op, rank, 1))
    _, out_shape = nd_op_inputs(rng, op, rank, geometry)
    guide_shape = out_shape if transposed else IN_SHAPES[rank]
    inputs, family_options = nd_kernel_inputs(rng, case, rank, geometry["kernel_size"],
                                              guide_shape)
    inputs.update(geometry, transposed=transposed)
    report = check_gradients(with_family(pac_kernel, family_options),
                             with_family(pac_kernel_vjp, family_options), inputs, step=ND_STEP,
                             tolerance=FD_TOLERANCE, directions=2)
    _assert_passed(report)


@pytest.mark.parametrize("rank, op, weight", rank_params(
    "op, weight", [("conv", "full"), ("conv", "shared"), ("conv_transpose", "full"),
                   ("conv_transpose", "shared"), ("pool", "full")],
    lambda rank, value: value in (("conv", "full"), ("conv_transpose", "shared"),
                                  ("pool", "full"))))
def test_explicit_vjp_matches_finite_differences_and_adjoint(rank, op, weight, rng):
    geometry = _geometry(op, rank, 0 if weight == "full" else 1)
    inputs, out_shape = nd_op_inputs(rng, op, rank, geometry, weight=weight,
                                     bias=weight == "shared")
    fk = CHANNELS if weight == "full" else 1
    inputs["kernel"] = rng.uniform(0.1, 1.0, (BATCH, fk) + geometry["kernel_size"] + out_shape)
    report = check_gradients(FORWARD[op], VJP[op], inputs, step=ND_STEP, tolerance=FD_TOLERANCE,
                             directions=2)
    assert set(report.errors) == {"x", "weight", "bias", "kernel"} & set(inputs)
    _assert_passed(report)
    # every input of an explicit-K op enters linearly (bias: affinely)
    _assert_passed(dot_product_test(FORWARD[op], VJP[op], inputs, tolerance=1e-11))


def _oracle_op(op, geometry):
    keys = ("stride", "padding", "dilation") + (
        ("output_padding",) if op == "conv_transpose" else ())
    options = {key: geometry[key] for key in keys}

    def forward(x, kernel, weight=None, bias=None):
        if op == "pool":
            return ref_pool(x, kernel, **options)
        if op == "conv":
            return ref_conv(x, kernel, weight, bias, **options)
        return ref_conv_transpose_gather(x, kernel, weight, bias, **options)
    return forward


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("op", OPS)
def test_adjoint_of_the_oracle_forward(rank, op, rng):
    """<v, J u> with J the oracle's op, J^T v from pacarray: independent of pacarray's forward."""
    geometry = _geometry(op, rank, 1)
    inputs, out_shape = nd_op_inputs(rng, op, rank, geometry, bias=op != "pool")
    inputs["kernel"] = rng.uniform(0.1, 1.0, (BATCH, CHANNELS) + geometry["kernel_size"]
                                   + out_shape)
    oracle = _oracle_op(op, geometry)
    wrt = [name for name in ("x", "weight", "bias", "kernel") if name in inputs]

    def forward(**kw):
        return oracle(kw["x"], kw["kernel"], kw.get("weight"), kw.get("bias"))

    _assert_passed(dot_product_test(forward, lambda g, **kw: VJP[op](g, **kw), inputs, wrt=wrt,
                                    tolerance=1e-11))


# op -> kernel options of its case (every family kind and normalization between them)
ORACLE_GRADIENT_CASES = {
    "conv": dict(family="inverse_power", alpha=0.3, lambda_=-0.8, eps=0.05, smooth="user",
                 normalize="mask_kernel", mask=True, spatial=True),
    "conv_transpose": dict(family="gaussian", smooth="gaussian", normalize="kernel",
                           spatial=True, channel_wise=True),
    "pool": dict(family="inverse_power", alpha=0.2, lambda_=-0.5, eps=0.1, asymmetric=True,
                 normalize="mask", mask=True, channel_wise=True),
}


@pytest.mark.parametrize("rank", tiered_values([1, 3], [1]))  # the 3-D oracle is slow to vary
@pytest.mark.parametrize("op", OPS)
def test_fused_vjp_matches_finite_differences_of_the_oracle(rank, op, rng):
    """Finite differences of the oracle (ref_kernel + ref op) against pacarray's fused vjp."""
    options = ORACLE_GRADIENT_CASES[op]
    geometry = _geometry(op, rank, 0)
    inputs, out_shape = nd_op_inputs(rng, op, rank, geometry)
    guide_shape = out_shape if op == "conv_transpose" else IN_SHAPES[rank]
    kernel_size = geometry["kernel_size"]
    inputs["guide"] = 2.0 * rng.random((BATCH, CHANNELS) + guide_shape)
    if options.get("spatial"):
        inputs["spatial_weight"] = rng.uniform(0.5, 1.5, kernel_size)
    if options.get("mask"):
        inputs["mask"] = rng.uniform(0.2, 0.9, (BATCH, 1) + guide_shape)
    inputs["smooth"] = (0.05 + user_smoothing(rng, rank, np.float64)
                        if options.get("smooth") == "user" else options.get("smooth"))
    inverse = options["family"] == "inverse_power"
    if inverse:
        inputs["alpha"], inputs["lambda_"] = options["alpha"], options["lambda_"]
    flags = dict(normalize=options["normalize"], channel_wise=options.get("channel_wise", False))
    oracle = _oracle_op(op, geometry)

    def forward(x, guide, weight=None, alpha=0.0, lambda_=-1.0, smooth=None,
                spatial_weight=None, mask=None, **geometry_keywords):
        K, _ = ref_kernel(
            guide, kernel_size, stride=geometry["stride"], padding=geometry["padding"],
            dilation=geometry["dilation"], family=options["family"], alpha=alpha,
            lambda_=lambda_, eps=options.get("eps", 1e-2),
            asymmetric=options.get("asymmetric", False), smooth=smooth,
            spatial_weight=spatial_weight, mask=mask, transposed=op == "conv_transpose",
            **flags)
        return oracle(x, K, weight)

    family_options = {key: options[key] for key in ("eps", "asymmetric") if key in options}
    vjp = with_family(VJP[op], family_options)

    def vjp_call(g, **kw):
        if not inverse:
            kw["family"] = Gaussian()
        return vjp(g, **kw, **flags)

    wrt = [name for name in ("x", "weight", "guide", "alpha", "lambda_", "spatial_weight",
                             "mask", "smooth") if isinstance(inputs.get(name), (np.ndarray, float))]
    _assert_passed(check_gradients(forward, vjp_call, inputs, wrt=wrt, step=ND_STEP,
                                   tolerance=FD_TOLERANCE, directions=2))


@pytest.mark.parametrize("rank, op", rank_params("op", OPS, lambda rank, value: rank == 3))
def test_fused_gradients_equal_explicit_kernel_composed_with_pac_kernel_vjp(rank, op, rng):
    geometry = _geometry(op, rank, 1)
    inputs, out_shape = nd_op_inputs(rng, op, rank, geometry, bias=op != "pool")
    guide_shape = out_shape if op == "conv_transpose" else IN_SHAPES[rank]
    kernel_args, family_options = nd_kernel_inputs(rng, "asym_pc_user_smooth", rank,
                                                   geometry["kernel_size"], guide_shape)
    forward = with_family(FORWARD[op], family_options)
    y = forward(**inputs, **kernel_args)
    grad_y = rng.standard_normal(y.shape)
    fused = with_family(VJP[op], family_options)(grad_y, **inputs, **kernel_args)
    geometry_args = {key: inputs[key] for key in ("stride", "padding", "dilation",
                                                  "output_padding") if key in inputs}
    transposed = op == "conv_transpose"
    kernel_size = geometry["kernel_size"]
    K = with_family(pac_kernel, family_options)(kernel_size=kernel_size, transposed=transposed,
                                                **geometry_args, **kernel_args)
    explicit = VJP[op](grad_y, kernel=K, **inputs)
    chained = with_family(pac_kernel_vjp, family_options)(
        explicit.kernel, kernel_size=kernel_size, transposed=transposed, **geometry_args,
        **kernel_args)
    np.testing.assert_allclose(FORWARD[op](kernel=K, **inputs), y, rtol=1e-12, atol=1e-12)
    for name in ("x", "weight", "bias"):
        if getattr(fused, name, None) is not None:
            np.testing.assert_allclose(getattr(fused, name), getattr(explicit, name),
                                       rtol=1e-10, atol=1e-12)
    for name in ("guide", "alpha", "lambda_", "smooth", "spatial_weight"):
        assert (getattr(fused, name) is None) == (getattr(chained, name) is None), name
        if getattr(fused, name) is not None:
            np.testing.assert_allclose(getattr(fused, name), getattr(chained, name),
                                       rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------
# identities on pacarray itself


def _lift(array, axis):
    return None if array is None else np.expand_dims(array, axis)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_by_k_by_k_volume_kernel_is_the_two_d_op_slice_by_slice(rng, assert_close, dtype):
    depth = 3
    family = InversePower([0.2, 0.5], [-0.7, 1.3], eps=0.1, asymmetric=True)
    guide = rng.standard_normal((2, 2, depth, 5, 9)).astype(dtype)
    mask = rng.uniform(0.0, 1.0, (2, 1, depth, 5, 9)).astype(dtype)
    spatial = rng.uniform(0.5, 1.5, (3, 5)).astype(dtype)
    smooth = rng.uniform(0.1, 0.3, (3, 3)).astype(dtype)
    x = rng.standard_normal((2, 2, depth, 5, 9)).astype(dtype)
    weight = rng.standard_normal((3, 2, 3, 5)).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    options2 = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), family=family,
                    channel_wise=True, normalize="mask_kernel", spatial_weight=spatial,
                    smooth=smooth)
    options3 = dict(options2, stride=(1, 2, 1), padding=(0, 1, 2), dilation=(1, 1, 2),
                    spatial_weight=spatial[None], smooth=smooth[None])

    K3 = pac_kernel(guide, (1, 3, 5), mask=mask, **options3)
    K2 = np.stack([pac_kernel(guide[:, :, z], (3, 5), mask=mask[:, :, z], **options2)
                   for z in range(depth)], axis=-3)
    assert_close(K3[:, :, 0], K2.astype(np.float64), dtype)
    y3 = pac_conv(x, weight[:, :, None], bias, guide=guide, mask=mask, **options3)
    expected = np.stack([pac_conv(x[:, :, z], weight, bias, guide=guide[:, :, z],
                                  mask=mask[:, :, z], **options2) for z in range(depth)], axis=2)
    assert_close(y3, expected.astype(np.float64), dtype)
    p3 = pac_pool(x, (1, 3, 5), guide=guide, mask=mask, **options3)
    expected = np.stack([pac_pool(x[:, :, z], (3, 5), guide=guide[:, :, z], mask=mask[:, :, z],
                                  **options2) for z in range(depth)], axis=2)
    assert_close(p3, expected.astype(np.float64), dtype)
    # Transposed: (N, C, 3, 3, 4) -> (N, 3, 3, 6, 8); guide and mask on the output grid.
    xt = rng.standard_normal((2, 2, depth, 3, 4)).astype(dtype)
    wt = rng.standard_normal((2, 3, 3, 5)).astype(dtype)
    guide_t = rng.standard_normal((2, 2, depth, 6, 8)).astype(dtype)
    mask_t = rng.uniform(0.0, 1.0, (2, 1, depth, 6, 8)).astype(dtype)
    yt3 = pac_conv_transpose(xt, wt[:, :, None], bias, guide=guide_t, mask=mask_t,
                             output_padding=(0, 1, 0), **options3)
    expected = np.stack([pac_conv_transpose(xt[:, :, z], wt, bias, guide=guide_t[:, :, z],
                                            mask=mask_t[:, :, z], output_padding=(1, 0),
                                            **options2) for z in range(depth)], axis=2)
    assert yt3.shape == (2, 3, depth, 6, 8)
    assert_close(yt3, expected.astype(np.float64), dtype)
    # Gradients too: the x and guide gradients of the volume are those of the slices.
    grad = rng.standard_normal(y3.shape).astype(dtype)
    g3 = pac_conv_vjp(grad, x, weight[:, :, None], bias, guide=guide, mask=mask, **options3)
    for z in range(depth):
        g2 = pac_conv_vjp(grad[:, :, z], x[:, :, z], weight, bias, guide=guide[:, :, z],
                          mask=mask[:, :, z], **options2)
        for name in ("x", "guide", "mask"):
            assert_close(getattr(g3, name)[:, :, z], getattr(g2, name).astype(np.float64),
                         dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_d_call_is_the_two_d_op_on_one_row(rng, assert_close, dtype):
    family = InversePower(0.3, -0.8, eps=0.05)
    guide = rng.standard_normal((2, 3, 11)).astype(dtype)
    mask = rng.uniform(0.0, 1.0, (2, 1, 11)).astype(dtype)
    spatial = rng.uniform(0.5, 1.5, (5,)).astype(dtype)
    smooth = rng.uniform(0.1, 0.3, (3,)).astype(dtype)
    x = rng.standard_normal((2, 2, 11)).astype(dtype)
    weight = rng.standard_normal((3, 2, 5)).astype(dtype)
    options1 = dict(stride=2, padding=4, dilation=2, family=family, normalize="kernel",
                    spatial_weight=spatial, smooth=smooth, mask=mask, guide=guide)
    options2 = dict(stride=(1, 2), padding=(0, 4), dilation=(1, 2), family=family,
                    normalize="kernel", spatial_weight=spatial[None], smooth=smooth[None],
                    mask=mask[:, :, None], guide=guide[:, :, None])
    y1 = pac_conv(x, weight, **options1)
    y2 = pac_conv(x[:, :, None], weight[:, :, None], **options2)
    assert_close(y1, y2[:, :, 0].astype(np.float64), dtype)
    assert_close(pac_pool(x, 5, **options1),
                 pac_pool(x[:, :, None], (1, 5), **options2)[:, :, 0].astype(np.float64), dtype)
    kernel_options1 = {key: v for key, v in options1.items() if key != "guide"}
    kernel_options2 = {key: v for key, v in options2.items() if key != "guide"}
    K1 = pac_kernel(guide, 5, **kernel_options1)
    K2 = pac_kernel(guide[:, :, None], (1, 5), **kernel_options2)
    assert_close(K1, K2[:, :, 0, :, 0].astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel_size, dilation", [((5,), (2,)), ((3, 1, 5), (1, 1, 2))])
def test_k1_is_ndimage_correlate(rng, assert_close, dtype, kernel_size, dilation):
    shape = (13,) if len(kernel_size) == 1 else (4, 5, 6)
    x = rng.standard_normal((2, 2) + shape).astype(dtype)
    w = rng.standard_normal((1, 1) + kernel_size).astype(dtype)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    actual = pac_conv(x, w, padding=padding, dilation=dilation)
    filt = dilate_weights_nd(w[0, 0].astype(np.float64), dilation)
    expected = np.stack([np.stack([ndimage.correlate(x[n, c].astype(np.float64), filt,
                                                     mode="constant") for c in range(2)])
                         for n in range(2)])
    assert_close(actual, expected, dtype)
    # Full weights, strided: scipy.signal on the padded input, subsampled.
    stride = (2,) * len(shape)
    w_full = rng.standard_normal((3, 2) + kernel_size).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    actual = pac_conv(x, w_full, bias, stride=stride, padding=padding, dilation=dilation)
    expected = scipy_conv(x.astype(np.float64), w_full.astype(np.float64),
                          bias.astype(np.float64), stride, padding, dilation)
    assert_close(actual, expected, dtype)


# ----------------------------------------------------------------------------------------
# bad input: each error names the parameter

X1, X3 = np.ones((1, 2, 6)), np.ones((1, 2, 4, 5, 6))
G1, G2, G3 = np.ones((1, 2, 6)), np.ones((1, 2, 5, 6)), np.ones((1, 2, 4, 5, 6))


def _bad_calls():
    """(id, function, args, kwargs, parameter named in the message)."""
    calls = [
        # mixed ranks between x and the other arrays
        ("guide-2d-for-3d-x", pac_conv, (X3, np.ones((2, 2, 3, 3, 3))),
         dict(guide=G2, padding=1), "guide"),
        ("guide-3d-for-1d-x", pac_pool, (X1, 3), dict(guide=G3, padding=1), "guide"),
        ("mask-2d-for-3d-x", pac_pool, (X3, 3),
         dict(guide=G3, mask=np.ones((1, 1, 5, 6)), padding=1), "mask"),
        ("mask-3d-for-1d-x", pac_conv, (X1, np.ones((2, 2, 3))),
         dict(guide=G1, mask=np.ones((1, 1, 1, 1, 6)), padding=1), "mask"),
        ("weight-2d-for-3d-x", pac_conv, (X3, np.ones((2, 2, 3, 3))), dict(padding=1),
         "weight"),
        ("weight-3d-for-1d-x", pac_conv, (X1, np.ones((2, 2, 3, 3, 3))), dict(padding=1),
         "weight"),
        ("transpose-weight-1d-for-3d-x", pac_conv_transpose, (X3, np.ones((2, 2, 3))), {},
         "weight"),
        ("kernel-2d-for-1d-x", pac_pool, (X1, 3),
         dict(kernel=np.ones((1, 1, 3, 3, 4, 4))), "kernel"),
        ("kernel-1d-for-3d-x", pac_conv, (X3, np.ones((2, 2, 3, 3, 3))),
         dict(kernel=np.ones((1, 1, 3, 2))), "kernel"),
        ("spatial-2d-for-3d-x", pac_pool, (X3, 3),
         dict(spatial_weight=np.ones((3, 3)), padding=1), "spatial_weight"),
        ("spatial-3d-for-1d-x", pac_conv, (X1, np.ones((2, 2, 3))),
         dict(spatial_weight=np.ones((3, 3, 3)), padding=1), "spatial_weight"),
        ("smooth-2d-for-3d-guide", pac_pool, (X3, 3),
         dict(guide=G3, smooth=np.ones((3, 3)) / 9, padding=1), "smooth"),
        ("kernel-guide-mask-mixed", pac_kernel, (G3, 3), dict(mask=np.ones((1, 1, 6))),
         "mask"),
        ("kernel-spatial-mixed", pac_kernel, (G1, 3), dict(spatial_weight=np.ones((3, 3))),
         "spatial_weight"),
        # geometry tuples of the wrong length
        ("kernel_size-2-for-3d", pac_pool, (X3, (3, 3)), {}, "kernel_size"),
        ("kernel_size-3-for-1d", pac_pool, (X1, (3, 3, 3)), {}, "kernel_size"),
        ("pac_kernel-kernel_size-1-for-3d", pac_kernel, (G3, (3,)), {}, "kernel_size"),
        ("stride-2-for-3d", pac_conv, (X3, np.ones((2, 2, 3, 3, 3))), dict(stride=(1, 1)),
         "stride"),
        ("padding-3-for-1d", pac_pool, (X1, 3), dict(padding=(1, 1, 1)), "padding"),
        ("dilation-2-for-1d", pac_kernel, (G1, 3), dict(dilation=(1, 1)), "dilation"),
        ("output_padding-2-for-3d", pac_conv_transpose, (X3, np.ones((2, 2, 3, 3, 3))),
         dict(stride=2, output_padding=(1, 1)), "output_padding"),
        # 4-D spatial arrays, arrays without a spatial axis
        ("x-4d-spatial", pac_pool, (np.ones((1, 2, 3, 3, 3, 3)), 1), {}, "x"),
        ("conv-x-4d-spatial", pac_conv, (np.ones((1, 2, 3, 3, 3, 3)),
                                         np.ones((2, 2, 1, 1, 1, 1))), {}, "x"),
        ("guide-4d-spatial", pac_kernel, (np.ones((1, 2, 3, 3, 3, 3)), 1), {}, "guide"),
        ("x-no-spatial", pac_pool, (np.ones((1, 2)), 1), {}, "x"),
        ("conv-x-no-spatial", pac_conv_transpose, (np.ones((2, 3)), np.ones((3, 2))), {}, "x"),
        ("guide-no-spatial", pac_kernel, (np.ones((1, 2)), 1), {}, "guide"),
        ("spatial_window-4d", pacarray.spatial_window, ((3, 3, 3, 3),), {}, "kernel_size"),
        ("spatial_window-0d", pacarray.spatial_window, ((),), {}, "kernel_size"),
        ("spatial_window-sigma", pacarray.spatial_window, ((3, 3, 3), (1.0, 1.0)), {},
         "sigma"),
        ("spatial_window-dilation", pacarray.spatial_window, ((3,),), dict(dilation=(1, 2)),
         "dilation"),
    ]
    return calls


BAD_CALLS = _bad_calls()
# the quick tier keeps one of each kind: mixed rank, wrong tuple length, 4-D, no spatial axis
QUICK_BAD = ["guide-2d-for-3d-x", "weight-3d-for-1d-x", "kernel-2d-for-1d-x",
             "spatial-2d-for-3d-x", "stride-2-for-3d", "x-4d-spatial", "x-no-spatial",
             "spatial_window-sigma"]


def _offending_value(function, args, kwargs, name):
    """What the message must show: the shape of the named array, or the named tuple."""
    positional = {pac_pool: ("x", "kernel_size"), pac_conv: ("x", "weight"),
                  pac_conv_transpose: ("x", "weight"), pac_kernel: ("guide", "kernel_size"),
                  pacarray.spatial_window: ("kernel_size", "sigma")}[function]
    value = dict(zip(positional, args), **kwargs)[name]
    return repr(tuple(value.shape)) if isinstance(value, np.ndarray) else repr(value)


@pytest.mark.parametrize("function, args, kwargs, name", tiered(
    [pytest.param(*call[1:], id=call[0]) for call in BAD_CALLS],
    [i for i, call in enumerate(BAD_CALLS) if call[0] in QUICK_BAD]))
def test_bad_rank_or_geometry_names_the_parameter(function, args, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b") as error:
        function(*args, **kwargs)
    # ... and shows the offending shape or value (docs/design.md §1.2, volumes contract)
    assert _offending_value(function, args, kwargs, name) in str(error.value)


@pytest.mark.parametrize("op", OPS)
def test_vjp_rejects_mixed_ranks_like_the_forward(op):
    args = (X3, 3) if op == "pool" else (X3, np.ones((2, 2, 3, 3, 3)))
    kwargs = dict(guide=G2 if op != "conv_transpose" else np.ones((1, 2, 6, 7)), padding=1)
    with pytest.raises(ValueError, match="guide") as forward_error:
        FORWARD[op](*args, **kwargs)
    with pytest.raises(ValueError) as vjp_error:
        VJP[op](np.ones((1, 2, 4, 5, 6)), *args, **kwargs)
    assert str(vjp_error.value) == str(forward_error.value)
    with pytest.raises(ValueError, match="mask"):
        pac_kernel_vjp(np.ones((1, 1, 3, 3, 3, 4, 5, 6)), G3, 3, padding=1,
                       mask=np.ones((1, 1, 5, 6)))


# ----------------------------------------------------------------------------------------
# regression (found by this file's finite-difference fuzzing): the weight gradient was 0 when
# stride is 1, padding d*(k-1)/2 and the output is shorter than the dilation


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kernel_size, dilation, size, output_padding",
                         [(3, 2, 1, 0), (5, 3, 2, 0)])
def test_conv_transpose_weight_gradient_on_outputs_shorter_than_the_dilation(
    rng, rank, kernel_size, dilation, size, output_padding
):
    geometry = dict(stride=1, padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                    output_padding=output_padding)
    inputs = dict(x=rng.standard_normal((1, 2) + (size,) * rank),
                  weight=rng.standard_normal((2, 2) + (kernel_size,) * rank), **geometry)

    def forward(x, weight, **keywords):
        return ref_conv_transpose(x, None, weight, None, **keywords)

    _assert_passed(dot_product_test(forward, pac_conv_transpose_vjp, inputs, wrt=["weight"],
                                    tolerance=1e-11))
