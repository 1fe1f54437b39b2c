"""1-D and 3-D calls of every op and gradient through the public functions (issue 15).

Shared by the emulation tests (the CUDA backend's code on the host emulator against the CPU
backend) and the GPU tests (CuPy on a device against the CPU backend): each case is a function
of ``to``, which moves a NumPy array to the array library under test, so both sides make the
very same call. Shapes are small and odd, kernels anisotropic (a one-tap axis included).
"""

from __future__ import annotations

import numpy as np

import pacarray
import pacarray.gradients as gradients

#: spatial shape of the data, kernel size, stride, padding, dilation per rank.
GEOMETRY = {
    1: dict(shape=(23,), kernel_size=5, stride=2, padding=2, dilation=1),
    3: dict(shape=(5, 7, 6), kernel_size=(3, 1, 3), stride=(1, 2, 1), padding=(1, 0, 2),
            dilation=(1, 1, 2)),
}

#: Options of the kernel: family, normalization, mask, smoothing, spatial window, channel_wise.
OPTION_SETS = {
    "plain": dict(),
    "gaussian": dict(family=pacarray.Gaussian(), normalize="kernel", spatial="gauss"),
    "mask_smooth": dict(family=pacarray.Gaussian(), normalize="mask_kernel", smooth="gaussian",
                        mask=True),
    "inverse_cw": dict(family=pacarray.InversePower(0.5, -1.0), normalize="kernel",
                       channel_wise=True, spatial="disk"),
    "asym_mask": dict(family=pacarray.InversePower(0.2, 1.0, asymmetric=True), mask=True,
                      normalize="mask"),
}

OPS = ("kernel", "pool", "conv", "conv_wide", "shared", "conv_transpose")


def _spatial(kind, kernel_size, dilation, dtype):
    if kind is None:
        return None
    sigma = 1.5 if kind == "gauss" else None
    window = "disk" if kind == "disk" else "square"
    return pacarray.spatial_window(kernel_size, sigma, window=window,
                                   dilation=dilation).astype(dtype)


def _kernel_tuple(value, rank):
    return (value,) * rank if np.ndim(value) == 0 else tuple(value)


def transposed_out_shape(rank):
    g = GEOMETRY[rank]
    values = (_kernel_tuple(g[k], rank) for k in ("kernel_size", "stride", "padding", "dilation"))
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + 1
                 for n, k, s, p, d in zip(g["shape"], *values))


def make_case(rng, rank, op, option_name, dtype, gradient=False):
    """``run(to)``: the call of ``op`` (``_vjp`` when ``gradient``) with ``to`` applied to every
    array argument; returns an array, a tuple or a NamedTuple of arrays."""
    g = GEOMETRY[rank]
    options = dict(OPTION_SETS[option_name])
    channels = 3
    transposed = op == "conv_transpose"
    grid = transposed_out_shape(rank) if transposed else g["shape"]
    x = rng.standard_normal((2, channels, *g["shape"])).astype(dtype)
    keywords = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])
    if "family" in options:
        keywords["guide"] = (1.5 * rng.random((2, channels, *grid))).astype(dtype)
        keywords["family"] = options["family"]
    if options.get("mask"):
        keywords["mask"] = rng.random((2, 1, *grid)).astype(dtype)
    spatial = _spatial(options.get("spatial"), _kernel_tuple(g["kernel_size"], rank),
                       _kernel_tuple(g["dilation"], rank), dtype)
    if spatial is not None:
        keywords["spatial_weight"] = spatial
    for name in ("normalize", "smooth", "channel_wise"):
        if name in options:
            keywords[name] = options[name]
    k = _kernel_tuple(g["kernel_size"], rank)
    out_channels = {"conv": 4, "conv_wide": 24, "shared": 1, "conv_transpose": 4}.get(op)
    weight = None
    if op == "shared":
        weight = rng.standard_normal((1, 1, *k)).astype(dtype)
    elif op == "conv_transpose":
        weight = rng.standard_normal((channels, out_channels, *k)).astype(dtype)
    elif op in ("conv", "conv_wide"):
        weight = rng.standard_normal((out_channels, channels, *k)).astype(dtype)
    grad_seed = int(rng.integers(2**31))

    def run(to):
        kw = {name: to(v) if isinstance(v, np.ndarray) else v for name, v in keywords.items()}
        if op == "kernel":
            if "guide" not in kw:
                return None
            guide = kw.pop("guide")
            K = pacarray.pac_kernel(guide, g["kernel_size"], **kw)
            if not gradient:
                return K
            grad = to(np.random.default_rng(grad_seed).standard_normal(K.shape).astype(dtype))
            return gradients.pac_kernel_vjp(grad, guide, g["kernel_size"], **kw)
        if op == "pool":
            forward = lambda: pacarray.pac_pool(to(x), g["kernel_size"], **kw)  # noqa: E731
            vjp = lambda gy: gradients.pac_pool_vjp(gy, to(x), g["kernel_size"], **kw)  # noqa
        else:
            function = pacarray.pac_conv_transpose if transposed else pacarray.pac_conv
            vjp_function = (gradients.pac_conv_transpose_vjp if transposed
                            else gradients.pac_conv_vjp)
            forward = lambda: function(to(x), to(weight), **kw)  # noqa: E731
            vjp = lambda gy: vjp_function(gy, to(x), to(weight), **kw)  # noqa: E731
        y = forward()
        if not gradient:
            return y
        grad = to(np.random.default_rng(grad_seed).standard_normal(y.shape).astype(dtype))
        return vjp(grad)

    return run


def as_dict(result):
    """Name -> array (or None) of a case's result, for comparisons."""
    if result is None:
        return {}
    if hasattr(result, "_asdict"):
        return dict(result._asdict())
    if isinstance(result, tuple):
        return {str(i): value for i, value in enumerate(result)}
    return {"y": result}
