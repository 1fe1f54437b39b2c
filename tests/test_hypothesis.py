"""Property tests: random valid geometry and options, pacarray against the float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pacarray
from reference import (
    forward_out_size,
    ref_conv,
    ref_conv_transpose,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
    transposed_out_size,
)

SETTINGS = settings(max_examples=25, deadline=None)

# Random searches add little to the quick tier beyond the curated parity grid (test_pac_*.py)
# and cost a second or two each; they run in the full tier.
pytestmark = pytest.mark.slow


@st.composite
def geometries(draw, transposed):
    """Per-dimension (k, s, p, d, op, input size) with an output of at least one pixel."""
    dims = []
    for _ in range(2):
        k = draw(st.sampled_from([1, 3, 5]))
        d = draw(st.integers(1, 2))
        s = draw(st.integers(1, 3))
        p = draw(st.integers(0, d * (k - 1) // 2))
        if transposed:
            op = draw(st.integers(0, max(s, d) - 1))
            size = draw(st.integers(1, 4))
        else:
            op = 0
            smallest = max(1, d * (k - 1) + 1 - 2 * p)
            size = draw(st.integers(smallest, min(smallest + 6, 9)))
        dims.append((k, s, p, d, op, size))
    return tuple(zip(*dims))  # k, s, p, d, op, size as pairs


FAMILY_NAMES = ["gaussian", "inverse", "inverse_asym", "inverse_pc", "inverse_asym_pc", "none"]


@st.composite
def configurations(draw, op):
    transposed = op == "conv_transpose"
    k, s, p, d, op_pad, size = draw(geometries(transposed))
    family = draw(st.sampled_from(FAMILY_NAMES if op != "kernel" else FAMILY_NAMES[:-1]))
    channels = draw(st.integers(1, 3))
    channel_wise = family.endswith("_pc") or (family != "none" and draw(st.booleans()))
    features = channels if channel_wise else draw(st.integers(1, 3))
    normalize = draw(st.sampled_from([None, "kernel", "mask", "mask_kernel"]))
    has_mask = normalize in ("mask", "mask_kernel") or draw(st.booleans())
    smooth = None if family == "none" else draw(
        st.sampled_from([None, "gaussian", ("average", 3), ("average", 1), "user"])
    )
    spatial = draw(st.sampled_from([None, "square", "disk", "gauss"]))
    return dict(
        op=op, k=k, s=s, p=p, d=d, output_padding=op_pad, size=size, family=family,
        batch=draw(st.integers(1, 2)), channels=channels, features=features,
        out_channels=draw(st.integers(1, 4)), shared=draw(st.booleans()),
        channel_wise=channel_wise, normalize=normalize, has_mask=has_mask, smooth=smooth,
        spatial=spatial, dtype=draw(st.sampled_from([np.float32, np.float64])),
        explicit=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)), bias=draw(st.booleans()),
    )


def _family(name, features):
    if name == "gaussian":
        return pacarray.Gaussian(), dict(family="gaussian")
    if name == "none":
        return None, dict(family=None)
    if name.endswith("_pc"):
        alpha = tuple(np.linspace(0.1, 1.0, features))
        lambda_ = tuple(np.linspace(-1.0, 1.5, features))
    else:
        alpha, lambda_ = 0.3, -1.0
    asymmetric = "asym" in name
    family = pacarray.InversePower(alpha, lambda_, eps=0.05, asymmetric=asymmetric)
    return family, dict(family="inverse_power", alpha=np.asarray(alpha),
                        lambda_=np.asarray(lambda_), eps=0.05, asymmetric=asymmetric)


def _run(config, assert_close):
    rng = np.random.default_rng(config["seed"])
    dtype = config["dtype"]
    transposed = config["op"] == "conv_transpose"
    k, s, p, d = config["k"], config["s"], config["p"], config["d"]
    n, c, f = config["batch"], config["channels"], config["features"]
    size = config["size"]
    if transposed:
        out_size = tuple(
            transposed_out_size(size[i], k[i], s[i], p[i], d[i], config["output_padding"][i])
            for i in range(2)
        )
        guide_size = out_size
    else:
        out_size = tuple(forward_out_size(size[i], k[i], s[i], p[i], d[i]) for i in range(2))
        guide_size = size
    assert min(out_size) >= 1

    family, oracle_family = _family(config["family"], f)
    scale = 0.7 if config["family"] == "gaussian" else 1.0
    guide = (scale * rng.standard_normal((n, f) + guide_size)).astype(dtype)
    mask = rng.random((n, 1) + guide_size) if config["has_mask"] else None
    if mask is not None:
        mask[mask < 0.3] = 0.0
    smooth = config["smooth"]
    if smooth == "user":
        smooth = rng.random((3, 3)).astype(dtype)
    spatial = {
        None: None,
        "square": ref_spatial_window(k, 1.3, "square", d),
        "disk": ref_spatial_window(k, None, "disk", d),
        "gauss": ref_spatial_window(k, 0.8, "disk", d),
    }[config["spatial"]]
    spatial = None if spatial is None else spatial.astype(dtype)
    options = dict(spatial_weight=spatial, mask=mask, normalize=config["normalize"])
    K, valid = ref_kernel(
        guide if family is not None else np.zeros((n, 1) + guide_size), k, s, p, d,
        smooth=None if smooth is None else (smooth.astype(np.float64)
                                            if isinstance(smooth, np.ndarray) else smooth),
        channel_wise=config["channel_wise"], transposed=transposed, **options, **oracle_family,
    )
    geometry = dict(stride=s, padding=p, dilation=d)
    if transposed:
        geometry["output_padding"] = config["output_padding"]
    fused = dict(options, **geometry)
    if family is not None:
        fused.update(guide=guide, family=family, smooth=smooth,
                     channel_wise=config["channel_wise"])

    if config["op"] == "kernel":
        actual, actual_valid = pacarray.pac_kernel(
            guide, k, return_validity=True, **{key: v for key, v in fused.items()
                                               if key not in ("guide",)}
        )
        assert_close(actual, K, dtype)
        np.testing.assert_array_equal(actual_valid, valid)
        return
    kwargs = dict(geometry, kernel=K.astype(dtype)) if config["explicit"] else fused
    x = rng.standard_normal((n, c) + size).astype(dtype)
    if config["op"] == "pool":
        actual = pacarray.pac_pool(x, k, **kwargs)
        expected = ref_pool(x, K, None, s, p, d)
        magnitude = np.max(ref_pool(np.abs(x), np.abs(K), None, s, p, d))
        assert_close(actual, expected, dtype, magnitude=magnitude)
        return
    c_out = config["out_channels"]
    if config["shared"]:
        weight, bias = rng.standard_normal((1, 1) + k), None
        c_out = c
    elif transposed:
        weight = rng.standard_normal((c, c_out) + k)
    else:
        weight = rng.standard_normal((c_out, c) + k)
    bias = rng.standard_normal(c_out) if config["bias"] else None
    weight = weight.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    # rounding error scales with the sum of |terms| (random signed data cancels)
    absolute = (np.abs(x), np.abs(K), np.abs(weight), None if bias is None else np.abs(bias))
    if transposed:
        actual = pacarray.pac_conv_transpose(x, weight, bias, **kwargs)
        expected = ref_conv_transpose(x, K, weight, bias, s, p, d, config["output_padding"])
        magnitude = np.max(ref_conv_transpose(*absolute, s, p, d, config["output_padding"]))
    else:
        actual = pacarray.pac_conv(x, weight, bias, **kwargs)
        expected = ref_conv(x, K, weight, bias, s, p, d)
        magnitude = np.max(ref_conv(*absolute, s, p, d))
    assert actual.shape == (n, c_out) + out_size
    assert_close(actual, expected, dtype, magnitude=magnitude)


@pytest.mark.parametrize("op", ["kernel", "conv", "conv_transpose", "pool"])
@SETTINGS
@given(data=st.data())
def test_random_configuration_matches_oracle(op, assert_close, data):
    _run(data.draw(configurations(op), label="configuration"), assert_close)


@SETTINGS
@given(
    geometry=geometries(transposed=False),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_equals_explicit_from_pac_kernel(geometry, batch, channels, seed):
    k, s, p, d, _, size = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels) + size)
    guide = rng.standard_normal((batch, channels) + size)
    options = dict(stride=s, padding=p, dilation=d, normalize="kernel", channel_wise=True,
                   family=pacarray.InversePower(0.2, -0.5, asymmetric=True), smooth="gaussian")
    K = pacarray.pac_kernel(guide, k, **options)
    geometry_only = dict(stride=s, padding=p, dilation=d)
    fused = pacarray.pac_pool(x, k, guide=guide, **options)
    explicit = pacarray.pac_pool(x, k, kernel=K, **geometry_only)
    np.testing.assert_allclose(fused, explicit, rtol=1e-12, atol=1e-12)
    # K is normalized: every output is a convex combination of its in-range inputs.
    assert np.all(K >= 0)
    np.testing.assert_allclose(K.sum(axis=(2, 3)), 1.0, rtol=1e-12)


@SETTINGS
@given(geometry=geometries(transposed=True), seed=st.integers(0, 2**32 - 1))
def test_conv_transpose_is_adjoint_of_conv(geometry, seed):
    # With K = 1: <conv_transpose(x), y> == <x, conv(y)> using the same weights.
    k, s, p, d, op, size = geometry
    # output_padding >= stride would add rows the forward conv never reaches back from.
    op = tuple(min(o, si - 1) for o, si in zip(op, s))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2) + size)
    w = rng.standard_normal((2, 3) + k)
    up = pacarray.pac_conv_transpose(x, w, stride=s, padding=p, dilation=d, output_padding=op)
    y = rng.standard_normal(up.shape)
    down = pacarray.pac_conv(y, w, stride=s, padding=p, dilation=d)
    # The forward conv of the upsampled grid lands back on the input grid.
    assert down.shape == x.shape
    np.testing.assert_allclose(np.vdot(up, y), np.vdot(x, down), rtol=1e-10, atol=1e-10)
