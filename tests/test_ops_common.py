"""Tests that run several public ops side by side.

The parity grid's coverage of every option, the Z == 0 rule across pac_kernel, pac_pool and
pac_conv, the blocked route of many channels (conv and conv_transpose), gradients against
PyTorch's autograd, the gradient result types, NaN propagation and inputs left untouched by
every op and path. The tests of one op are in its own file (``test_pac_kernel.py``,
``test_pac_pool.py``, ``test_pac_conv.py``, ``test_pac_conv_transpose.py``).
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import pacarray
import pacarray.gradients
from _parity_cases import CASES, DTYPES, FAMILIES, NORMALIZATIONS, _pair
from _tiers import tiered
from _validation_cases import DATA_OPS, _arrays, _call_with, _explicit_shape
from pacarray import InversePower, pac_conv, pac_conv_transpose, pac_pool, spatial_window
from pacarray.gradients import pac_conv_vjp, pac_kernel_vjp, pac_pool_vjp
from reference import (
    ref_conv,
    ref_conv_transpose,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
    transposed_out_size,
)


def test_grid_covers_every_option():
    seen = {name: set() for name in ["family", "normalize", "smooth", "spatial", "cw", "dtype",
                                     "batch", "k", "s", "d", "masked_norm"]}
    for case in CASES:
        k, s, _, d, _ = case.geometry
        seen["family"].add(case.family)
        seen["normalize"].add(case.normalize)
        seen["smooth"].add(str(case.smooth))
        seen["spatial"].add(case.spatial)
        seen["cw"].add(case.channel_wise)
        seen["dtype"].add(np.dtype(case.dtype).name)
        seen["batch"].add(case.batch)
        seen["k"].add(str(k))
        seen["s"].update(_pair(s))
        seen["d"].update(_pair(d))
        seen["masked_norm"].add((case.normalize, case.mask))
    assert seen["family"] == set(FAMILIES)
    assert seen["normalize"] == {None, "kernel", "mask", "mask_kernel"}
    assert len(seen["smooth"]) == 4 and len(seen["spatial"]) == 4
    assert seen["cw"] == {False, True} and seen["batch"] == {1, 2}
    assert seen["dtype"] == {"float32", "float64"}
    assert {"1", "3", "5", "(3, 5)"} <= seen["k"]
    assert seen["s"] == {1, 2, 3} and seen["d"] == {1, 2}
    assert seen["masked_norm"] == set(NORMALIZATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["mask", "mask_kernel"])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_zero_normalizer_gives_zero_output_and_invalid(rng, dtype, normalize, channel_wise):
    guide = rng.standard_normal((2, 2, 6, 7)).astype(dtype)
    x = rng.standard_normal((2, 2, 6, 7)).astype(dtype)
    mask = np.ones((2, 1, 6, 7), dtype=dtype)
    mask[1, 0, 2:5, 3:6] = 0.0  # the whole 3x3 window of output (3, 4) for padding 1
    common = dict(padding=1, mask=mask, normalize=normalize, channel_wise=channel_wise)
    K, valid = pacarray.pac_kernel(guide, 3, return_validity=True, **common)
    expected_valid = np.ones(valid.shape, dtype=bool)
    expected_valid[1, :, 3, 4] = False
    np.testing.assert_array_equal(valid, expected_valid)
    assert np.all(np.isfinite(K))
    assert np.all(K[1, :, :, :, 3, 4] == 0.0)
    # Elsewhere the normalized weights are genuinely non-zero.
    assert np.all(K[0, :, 1, 1] > 0)
    pooled = pacarray.pac_pool(x, 3, guide=guide, **common)
    conv = pacarray.pac_conv(x, np.ones((1, 1, 3, 3), dtype), guide=guide, **common)
    for out in (pooled, conv):
        assert np.all(np.isfinite(out))
        assert np.all(out[1, :, 3, 4] == 0.0)
        assert np.all(out[0, :, 3, 4] != 0.0)
    # Without normalization there is no Z: all valid.
    _, valid = pacarray.pac_kernel(guide, 3, padding=1, mask=mask, return_validity=True)
    assert valid.all() and valid.shape == (2, 1, 6, 7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workspace", tiered([None, 1, 4096], quick=[1]))  # 1: many chunks
@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_many_channels_and_small_workspace(rng, assert_close, monkeypatch, dtype, workspace, op):
    # Large channel counts may take a blocked / BLAS route; a tiny workspace forces many chunks
    # (including a short last one) wherever the implementation bounds its temporary buffer.
    if workspace is not None:
        monkeypatch.setattr(pacarray.config, "WORKSPACE_BYTES", workspace)
    channels, out_channels = 19, 23
    stride, padding, dilation = (2, 1), (1, 2), (1, 2)
    transposed = op == "conv_transpose"
    x = rng.standard_normal((2, channels, 7, 9)).astype(dtype)
    if transposed:
        weight = rng.standard_normal((channels, out_channels, 3, 5)).astype(dtype)
        out_shape = tuple(transposed_out_size(n, k, s, p, d, 1)
                          for n, k, s, p, d in zip((7, 9), (3, 5), stride, padding, dilation))
        guide_shape = out_shape
    else:
        weight = rng.standard_normal((out_channels, channels, 3, 5)).astype(dtype)
        guide_shape = (7, 9)
    bias = rng.standard_normal(out_channels).astype(dtype)
    guide = rng.standard_normal((2, channels) + guide_shape).astype(dtype)
    mask = rng.random((2, 1) + guide_shape)
    options = dict(mask=mask, normalize="mask_kernel", channel_wise=True, smooth="gaussian",
                   spatial_weight=pacarray.spatial_window((3, 5), 1.5, dilation=dilation)
                   .astype(dtype))
    K, _ = ref_kernel(guide, (3, 5), stride, padding, dilation, transposed=transposed,
                      **{**options, "spatial_weight": ref_spatial_window((3, 5), 1.5,
                                                                         dilation=dilation)})
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    if transposed:
        geometry["output_padding"] = (1, 1)
        expected = ref_conv_transpose(x, K, weight, bias, stride, padding, dilation, (1, 1))
        function = pacarray.pac_conv_transpose
    else:
        expected = ref_conv(x, K, weight, bias, stride, padding, dilation)
        function = pacarray.pac_conv
    fused = function(x, weight, bias, guide=guide, **options, **geometry)
    assert_close(fused, expected, dtype)
    explicit = function(x, weight, bias, kernel=K.astype(dtype), **geometry)
    assert_close(explicit, expected, dtype)
    # Plain convolution (K = 1) through the same route.
    plain = function(x, weight, bias, **geometry)
    if transposed:
        plain_expected = ref_conv_transpose(x, None, weight, bias, stride, padding, dilation,
                                            (1, 1))
    else:
        plain_expected = ref_conv(x, None, weight, bias, stride, padding, dilation)
    assert_close(plain, plain_expected, dtype)


@pytest.mark.slow  # importing PyTorch takes seconds
@pytest.mark.parametrize("op, normalize, stride", [("conv", None, 1), ("conv", "kernel", 2),
                                                   ("pool", "kernel", 2), ("pool", None, 1)])
def test_gradients_match_pytorch_autograd_through_unfold(op, normalize, stride, rng):
    """An independent implementation: autograd through the benchmarks' unfold + einsum PAC."""
    torch = pytest.importorskip("torch")
    from pacarray.benchmarks.core import unfold_pac

    kernel_size, padding = 5, 2
    x = rng.standard_normal((2, 3, 11, 12))
    guide = 2.0 * rng.random((2, 4, 11, 12))
    weight = rng.standard_normal((2, 3, 5, 5)) if op == "conv" else None
    tensors = [torch.from_numpy(a).requires_grad_(True)
               for a in (x, guide, weight) if a is not None]
    y = unfold_pac(torch, tensors[0], tensors[1], tensors[2] if op == "conv" else None,
                   kernel_size, stride=stride, padding=padding, normalize=normalize)
    grad_y = rng.standard_normal(tuple(y.shape))
    expected = torch.autograd.grad(y, tensors, torch.from_numpy(grad_y))
    kw = dict(guide=guide, stride=stride, padding=padding, normalize=normalize)
    if op == "conv":
        grads = pac_conv_vjp(grad_y, x, weight, **kw)
        actual = (grads.x, grads.guide, grads.weight)
    else:
        grads = pac_pool_vjp(grad_y, x, kernel_size, **kw)
        actual = (grads.x, grads.guide)
    for mine, theirs in zip(actual, expected):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-10, atol=1e-12)


def test_gradient_shapes_and_none_fields(rng):
    x = rng.random((1, 2, 6, 6))
    w = rng.random((3, 2, 3, 3))
    g = pac_conv_vjp(np.ones((1, 3, 6, 6)), x, w, padding=1)
    assert g.x.shape == x.shape and g.weight.shape == w.shape
    assert all(getattr(g, n) is None for n in ("bias", "kernel", "guide", "alpha", "lambda_",
                                               "smooth", "spatial_weight", "mask"))
    family = InversePower(alpha=[0.1, 0.2], lambda_=-1.0)
    g = pac_pool_vjp(np.ones((1, 2, 6, 6)), x, 3, padding=1, guide=x, family=family,
                     channel_wise=True, smooth="gaussian")
    assert g.alpha.shape == (2,) and g.lambda_.shape == ()
    assert g.smooth is None, "only a user-given smoothing array has a gradient"
    g = pac_kernel_vjp(np.ones((1, 1, 3, 3, 6, 6)), x, 3, padding=1, wrt=["spatial_weight"])
    assert g == pacarray.gradients.PacKernelGradients()  # not given: nothing computed


def test_docstring_examples_run():
    result = doctest.testmod(pacarray.gradients, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _inputs_for(op, path):
    """All array inputs of a call of ``op`` on ``path`` (float64 C-contiguous: no copies)."""
    rng = np.random.default_rng(11)
    args = _arrays(op)
    if path == "explicit":
        del args["guide"]
        args["kernel"] = rng.random(_explicit_shape(op))
        return args
    spatial = (8, 10) if op == "conv_transpose" else (6, 7)
    args.update(
        mask=rng.random((2, 1) + spatial), normalize="mask_kernel",
        spatial_weight=spatial_window(3, 1.0),
    )
    if path == "fused":
        args.update(smooth=rng.random((3, 3)), channel_wise=True,
                    family=InversePower([0.1, 0.2, 0.3], [-1.0, -0.5, 0.5]))
    else:
        del args["guide"]
    return args


@pytest.mark.parametrize(
    "op, path",
    [("kernel", "fused")]
    + [(op, path) for op in DATA_OPS for path in ["explicit", "fused", "none"]],
)
def test_inputs_are_never_modified(op, path):
    args = _inputs_for(op, path)
    copies = {name: value.copy() for name, value in args.items()
              if isinstance(value, np.ndarray)}
    assert copies
    out = _call_with(op, args)
    for name, original in copies.items():
        np.testing.assert_array_equal(args[name], original, err_msg=name)
    # The result does not alias any input.
    for name, value in args.items():
        if isinstance(value, np.ndarray):
            assert not np.shares_memory(out, value), name


def _touched(out_shape, kernel_size, stride, padding, dilation, spot, transposed):
    """Output positions whose taps read input position ``spot``."""
    kh, kw = kernel_size
    hit = np.zeros(out_shape, dtype=bool)
    for i in range(out_shape[0]):
        for j in range(out_shape[1]):
            for a in range(kh):
                for b in range(kw):
                    if transposed:  # y[j] gathers x[i] with i*s = j + p - a*d
                        ty, tx = i + padding - a * dilation, j + padding - b * dilation
                        reads = ty == spot[0] * stride and tx == spot[1] * stride
                    else:
                        reads = (i * stride - padding + a * dilation == spot[0]
                                 and j * stride - padding + b * dilation == spot[1])
                    hit[i, j] |= reads
    return hit


@pytest.mark.parametrize("bad", tiered([np.nan, np.inf], quick=[0]))
@pytest.mark.parametrize("path", ["explicit", "fused", "none"])
@pytest.mark.parametrize("op", ["conv", "conv_shared", "conv_transpose", "pool"])
def test_nan_in_data_propagates_to_its_windows_only(op, path, bad, assert_close):
    rng = np.random.default_rng(5)
    stride, padding, dilation = 2, 1, 2
    transposed = op == "conv_transpose"
    x = rng.standard_normal((2, 3, 7, 9))
    spot = (3, 5)
    x[1, 1, spot[0], spot[1]] = bad
    if transposed:
        out_shape = tuple((n - 1) * stride - 2 * padding + dilation * 2 + 1 for n in (7, 9))
        weight = rng.standard_normal((3, 2, 3, 3))
    else:
        out_shape = tuple((n + 2 * padding - dilation * 2 - 1) // stride + 1 for n in (7, 9))
        weight = rng.standard_normal((2, 3, 3, 3))
    if op == "conv_shared":
        weight = weight[:1, :1]
    guide_shape = out_shape if transposed else (7, 9)
    guide = rng.standard_normal((2, 2) + guide_shape)
    mask = rng.random((2, 1) + guide_shape)
    options = dict(spatial_weight=spatial_window(3, window="disk"), mask=mask,
                   normalize="kernel")
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    K, _ = ref_kernel(guide if path != "none" else np.zeros((2, 1) + guide_shape), 3, stride,
                      padding, dilation, family=None if path == "none" else "gaussian",
                      transposed=transposed, **options)
    if path == "explicit":
        kwargs = dict(kernel=K, **geometry)
    elif path == "fused":
        kwargs = dict(guide=guide, **options, **geometry)
    else:
        kwargs = dict(options, **geometry)
    with np.errstate(invalid="ignore"):  # the oracle's own 0 * inf
        if op == "pool":
            expected = ref_pool(x, K, None, stride, padding, dilation)
        elif transposed:
            expected = ref_conv_transpose(x, K, weight, None, stride, padding, dilation)
        else:
            expected = ref_conv(x, K, weight, None, stride, padding, dilation)
    if op == "pool":
        actual = pac_pool(x, 3, **kwargs)
    elif transposed:
        actual = pac_conv_transpose(x, weight, **kwargs)
    else:
        actual = pac_conv(x, weight, **kwargs)
    assert_close(actual, expected, np.float64)  # also checks the non-finite positions
    hit = _touched(out_shape, (3, 3), stride, padding, dilation, spot, transposed)
    assert hit.any() and not hit.all()
    nan = ~np.isfinite(actual)
    assert not nan[0].any()
    mixes_channels = op in ("conv", "conv_transpose")
    for channel in range(actual.shape[1]):
        expected_nan = hit if (mixes_channels or channel == 1) else np.zeros_like(hit)
        np.testing.assert_array_equal(nan[1, channel], expected_nan)


def test_public_names():
    for name in ["Gaussian", "InversePower", "pac_conv", "pac_conv_transpose", "pac_kernel",
                 "pac_pool", "spatial_window"]:
        assert hasattr(pacarray, name), name
