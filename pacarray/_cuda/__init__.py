"""CUDA backend: CuPy arrays in, CuPy arrays out, same functions and semantics as ``_cpu``.

The front end has validated and converted every argument (contiguous arrays of one float dtype,
all on one device). Every function runs on that device and on CuPy's current stream: kernels
are launched asynchronously, nothing is copied to the host and nothing synchronizes.

Each public function is a thin wrapper around a private one that takes a *runtime* first: an
object with an array namespace ``xp`` and ``run(launch)`` that executes a
:class:`pacarray._cuda.launch.Launch`. Here the runtime is CuPy; the tests substitute a
host-emulation runtime (NumPy arrays, the same ``.cu`` files compiled with g++), so the launch
planning below is exercised without a GPU.
"""

from __future__ import annotations

import math

from . import _loader, launch
from .launch import int32


class _CupyRuntime:
    """Launches compiled kernels on the current device and stream."""

    @property
    def xp(self):
        import cupy

        return cupy

    def run(self, planned: launch.Launch) -> None:
        kernel = _loader.get_function(planned.kernel, planned.dtype, planned.index_dtype)
        kernel((planned.grid,), (planned.block,), planned.args)


_RUNTIME = _CupyRuntime()


def _on_device_of(array):
    """Context manager selecting ``array``'s device (kernels and allocations go there)."""
    return array.device


def smooth(guide, weights):
    """Zero-padded same-size correlation of every (n, f) plane of ``guide`` with ``weights``."""
    import cupyx.scipy.ndimage

    with _on_device_of(guide):
        return cupyx.scipy.ndimage.correlate(
            guide, weights[None, None], mode="constant", cval=0.0
        )


def materialize_kernel(spec, kernel_size, k_stride, k_padding, dilation, out_shape):
    """K of shape (N, Fk, kh, kw, Ho, Wo) and validity (N, Fk, Ho, Wo) from a fused spec."""
    with _on_device_of(spec.guide):
        return _materialize_kernel(
            _RUNTIME, spec, kernel_size, k_stride, k_padding, dilation, out_shape
        )


def pool(x, tap_weight, spec, geometry, k_stride, k_padding, out_shape):
    """Direct kernel: ``y[n,c,o] = sum_t tap_weight[t] K[n,(c),t,o] x[n,c,src(o,t)]``."""
    with _on_device_of(x):
        return _pool(_RUNTIME, x, tap_weight, spec, geometry, k_stride, k_padding, out_shape)


def conv(x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape):
    """``y[n,o] = weight_matrix (C_out, C*T) @ K-weighted patches``: direct or through cuBLAS."""
    with _on_device_of(x):
        return _conv(_RUNTIME, x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape)


def _materialize_kernel(runtime, spec, kernel_size, k_stride, k_padding, dilation, out_shape):
    xp = runtime.xp
    batch = spec.guide.shape[0]
    dtype = spec.guide.dtype
    taps = math.prod(kernel_size)
    out = xp.empty((batch, spec.fk_count, taps, *out_shape), dtype)
    valid = xp.empty((batch, spec.fk_count, *out_shape), xp.bool_)
    runtime.run(launch.plan(
        "pac_fill", dtype, valid.size, [out.size, *launch.description_sizes(spec)],
        (
            *int32(spec.fk_count, *out_shape), out, valid,
            *launch.description_args(spec, kernel_size, k_stride, k_padding, dilation, dtype),
        ),
    ))
    return out.reshape(batch, spec.fk_count, *kernel_size, *out_shape), valid


def _explicit_or_placeholder(xp, spec, dtype):
    """The explicit K, or an empty array for the kernels' unused pointer argument."""
    if spec.use_explicit:
        return spec.explicit
    return xp.empty(0, dtype)


def _direct(runtime, x, weight, dense, y, spec, geometry, k_stride, k_padding):
    """Launch ``pac_direct`` writing ``y`` (N, C_out, Ho, Wo)."""
    xp = runtime.xp
    dtype = x.dtype
    batch, channels, in_h, in_w = x.shape
    out_channels, out_h, out_w = y.shape[1:]
    group = launch.direct_group(out_channels, dense, spec.fk_count)
    groups = -(-out_channels // group)
    explicit = _explicit_or_placeholder(xp, spec, dtype)
    runtime.run(launch.plan(
        "pac_direct", dtype, batch * groups * out_h * out_w,
        [x.size, weight.size, y.size, explicit.size, *launch.description_sizes(spec)],
        (
            x, *int32(channels, in_h, in_w), weight, *int32(dense), y,
            *int32(out_channels, out_h, out_w, group, *geometry.stride, *geometry.padding,
                   geometry.transposed),
            explicit, *int32(spec.use_explicit, spec.fk_count),
            *launch.description_args(
                spec, geometry.kernel_size, k_stride, k_padding, geometry.dilation, dtype
            ),
        ),
    ))


def _pool(runtime, x, tap_weight, spec, geometry, k_stride, k_padding, out_shape):
    xp = runtime.xp
    y = xp.empty((x.shape[0], x.shape[1], *out_shape), x.dtype)
    tap_weight = xp.ascontiguousarray(tap_weight).reshape(-1)
    _direct(runtime, x, tap_weight, False, y, spec, geometry, k_stride, k_padding)
    return y


def _conv(runtime, x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape):
    xp = runtime.xp
    dtype = x.dtype
    batch, channels, in_h, in_w = x.shape
    out_channels = weight_matrix.shape[0]
    out_h, out_w = out_shape
    y = xp.empty((batch, out_channels, out_h, out_w), dtype)
    if launch.use_direct_conv(channels, out_channels):
        _direct(runtime, x, weight_matrix, True, y, spec, geometry, k_stride, k_padding)
        return y

    patch_rows = channels * geometry.taps
    chunks = launch.conv_chunks(batch, out_h, out_w, patch_rows, x.itemsize)
    workspace = xp.empty(max(c.images * c.rows for c in chunks) * patch_rows * out_w, dtype)
    explicit = _explicit_or_placeholder(xp, spec, dtype)
    kernel_groups = channels if spec.fk_count > 1 else 1
    y_flat = y.reshape(batch, out_channels, out_h * out_w)
    for chunk in chunks:
        columns = chunk.rows * out_w
        patch = workspace[: chunk.images * patch_rows * columns].reshape(
            chunk.images, patch_rows, columns
        )
        runtime.run(launch.plan(
            "pac_patches", dtype, chunk.images * kernel_groups * columns,
            [x.size, workspace.size, explicit.size, *launch.description_sizes(spec)],
            (
                x, *int32(channels, in_h, in_w), patch,
                *int32(chunk.n0, chunk.row_start, chunk.rows, out_h, out_w, *geometry.stride,
                       *geometry.padding, geometry.transposed),
                explicit, *int32(spec.use_explicit, spec.fk_count),
                *launch.description_args(
                    spec, geometry.kernel_size, k_stride, k_padding, geometry.dilation, dtype
                ),
            ),
        ))
        if chunk.rows == out_h:
            xp.matmul(weight_matrix, patch, out=y_flat[chunk.n0:chunk.n0 + chunk.images])
        else:
            start = chunk.row_start * out_w
            y_flat[chunk.n0, :, start:start + columns] = xp.matmul(weight_matrix, patch[0])
    return y
