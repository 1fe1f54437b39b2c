"""CUDA backend: CuPy arrays in, CuPy arrays out, same functions and semantics as ``_cpu``.

The front end has validated and converted every argument (contiguous arrays of one float dtype,
all on one device). Every function runs on that device and on CuPy's current stream: kernels
are launched asynchronously, nothing is copied to the host and nothing synchronizes.

Each public function is a thin wrapper around a private one that takes a *runtime* first: an
object with an array namespace ``xp`` and ``run(launch)`` that executes a
:class:`pacarray._cuda.launch.Launch`. Here the runtime is CuPy; the tests substitute a
host-emulation runtime (NumPy arrays, the same ``.cu`` files compiled with g++), so the launch
planning below is exercised without a GPU.

Every kernel works in three spatial dimensions, depth outermost. The functions here take rank
1, 2 or 3 arrays and tuples (``docs/design.md`` §3.3) and pass the kernels their sizes and
geometry lifted by :func:`pacarray._cuda.launch.lift` (singleton leading axes, one-tap kernel);
the arrays themselves are passed as they are, since a C-contiguous ``(N, C, H, W)`` array is laid
out as ``(N, C, 1, H, W)``. Results come back with the caller's rank.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# The image filters have no CUDA kernel of their own: the generic implementation on the core ops.
from .._generic.filters import bilateral, joint_upsample
from .. import _args
from .._spec import KernelGrads
from . import _loader, launch
from .launch import int32, lift

__all__ = [
    "bilateral", "conv", "conv_backward", "joint_upsample", "kernel_backward",
    "materialize_kernel", "pool", "pool_backward",
]

# pac_backward's upstream kinds (pac::UPSTREAM_* in pac_backward.cu).
_UPSTREAM_KERNEL, _UPSTREAM_DEPTHWISE, _UPSTREAM_PATCHES = 0, 1, 2


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


def materialize_kernel(spec, kernel_size, k_stride, k_padding, dilation, out_shape):
    """K of shape (N, Fk, *kernel_size, *out_shape) and validity (N, Fk, *out_shape)."""
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
            *int32(spec.fk_count, *lift(out_shape, 1)), out, valid,
            *launch.description_args(spec, kernel_size, k_stride, k_padding, dilation, dtype),
        ),
    ))
    return out.reshape(batch, spec.fk_count, *kernel_size, *out_shape), valid


def _explicit_or_placeholder(xp, spec, dtype):
    """The explicit K, or an empty array for the kernels' unused pointer argument."""
    if spec.use_explicit:
        return spec.explicit
    return _args.constant(xp, (), dtype)


def _direct(runtime, x, weight, dense, y, spec, geometry, k_stride, k_padding):
    """Launch ``pac_direct`` writing ``y`` (N, C_out, *out_shape)."""
    xp = runtime.xp
    dtype = x.dtype
    batch, channels, *in_shape = x.shape
    out_channels, *out_shape = y.shape[1:]
    group = launch.direct_group(out_channels, dense, spec.fk_count)
    groups = -(-out_channels // group)
    explicit = _explicit_or_placeholder(xp, spec, dtype)
    runtime.run(launch.plan(
        "pac_direct", dtype, batch * groups * math.prod(out_shape),
        [x.size, weight.size, y.size, explicit.size, *launch.description_sizes(spec)],
        (
            x, *int32(channels, *lift(in_shape, 1)), weight, *int32(dense), y,
            *int32(out_channels, *lift(out_shape, 1), group, *lift(geometry.stride, 1),
                   *lift(geometry.padding, 0), geometry.transposed),
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
    batch, channels = x.shape[:2]
    out_channels = weight_matrix.shape[0]
    y = xp.empty((batch, out_channels, *out_shape), dtype)
    if launch.use_direct_conv(channels, out_channels):
        _direct(runtime, x, weight_matrix, True, y, spec, geometry, k_stride, k_padding)
        return y

    # The patch path works on output lines (rows of every depth slice in 3-D).
    out_h, out_w = launch.lines(out_shape), out_shape[-1]
    patch_rows = channels * geometry.taps
    chunks = launch.conv_chunks(batch, out_h, out_w, patch_rows, x.itemsize)
    workspace = xp.empty(max(c.images * c.rows for c in chunks) * patch_rows * out_w, dtype)
    y_flat = y.reshape(batch, out_channels, out_h * out_w)
    for chunk in chunks:
        columns = chunk.rows * out_w
        patch = _chunk_view(workspace, chunk, patch_rows, out_w)
        _build_patches(runtime, x, patch, chunk, spec, geometry, k_stride, k_padding, out_shape)
        if chunk.rows == out_h:
            xp.matmul(weight_matrix, patch, out=y_flat[chunk.n0:chunk.n0 + chunk.images])
        else:
            start = chunk.row_start * out_w
            y_flat[chunk.n0, :, start:start + columns] = xp.matmul(weight_matrix, patch[0])
    return y


def _chunk_view(workspace, chunk, patch_rows, out_w):
    """``(images, patch_rows, rows*out_w)`` view of the start of ``workspace``."""
    columns = chunk.rows * out_w
    return workspace[: chunk.images * patch_rows * columns].reshape(
        chunk.images, patch_rows, columns
    )


def _build_patches(runtime, x, patch, chunk, spec, geometry, k_stride, k_padding, out_shape):
    """Launch ``pac_patches`` filling ``patch`` for one chunk."""
    xp = runtime.xp
    dtype = x.dtype
    channels, *in_shape = x.shape[1:]
    explicit = _explicit_or_placeholder(xp, spec, dtype)
    kernel_groups = channels if spec.fk_count > 1 else 1
    runtime.run(launch.plan(
        "pac_patches", dtype, chunk.images * kernel_groups * chunk.rows * out_shape[-1],
        [x.size, patch.size, explicit.size, *launch.description_sizes(spec)],
        (
            x, *int32(channels, *lift(in_shape, 1)), patch,
            *int32(chunk.n0, chunk.row_start, chunk.rows, *lift(out_shape, 1),
                   *lift(geometry.stride, 1), *lift(geometry.padding, 0), geometry.transposed),
            explicit, *int32(spec.use_explicit, spec.fk_count),
            *launch.description_args(
                spec, geometry.kernel_size, k_stride, k_padding, geometry.dilation, dtype
            ),
        ),
    ))


# --------------------------------------------------------------------------------------------
# Backward passes: the same names, signatures and results as ``pacarray._cpu.backward``.


def kernel_backward(grad_kernel, spec, kernel_size, k_stride, k_padding, dilation, need_guide):
    """VJP of :func:`materialize_kernel`: ``grad_kernel (N, Fk, T, *out)`` -> KernelGrads."""
    with _on_device_of(grad_kernel):
        return _kernel_backward(
            _RUNTIME, grad_kernel, spec, kernel_size, k_stride, k_padding, dilation, need_guide
        )


def pool_backward(grad_y, x, tap_weight, spec, geometry, k_stride, k_padding, need_x,
                  need_weight, need_kernel, need_guide):
    """VJP of :func:`pool`: ``(grad_x, grad_tap_weight, grad_explicit, kernel_grads)``."""
    with _on_device_of(x):
        return _pool_backward(
            _RUNTIME, grad_y, x, tap_weight, spec, geometry, k_stride, k_padding, need_x,
            need_weight, need_kernel, need_guide,
        )


def conv_backward(grad_y, x, weight_matrix, spec, geometry, k_stride, k_padding, need_x,
                  need_weight, need_kernel, need_guide):
    """VJP of :func:`conv`: ``(grad_x, grad_weight_matrix, grad_explicit, kernel_grads)``."""
    with _on_device_of(x):
        return _conv_backward(
            _RUNTIME, grad_y, x, weight_matrix, spec, geometry, k_stride, k_padding, need_x,
            need_weight, need_kernel, need_guide,
        )


class _Gradients(NamedTuple):
    """Zeroed outputs of ``pac_backward`` (placeholders where not computed)."""

    x: object
    tap_weight: object
    explicit: object
    guide: object
    centre: object
    mask: object
    alpha: object
    lam: object
    spatial: object


def _gradients(xp, spec, x_shape, taps, out_shape, dtype, need_x, need_weight, need_kernel,
               need_guide):
    placeholder = _args.constant(xp, (), dtype)

    def zeros(shape, wanted):
        return xp.zeros(shape, dtype) if wanted else placeholder

    fused = need_kernel and not spec.use_explicit
    batch = spec.explicit.shape[0] if spec.use_explicit else 0
    explicit_shape = (batch, spec.fk_count, taps, *out_shape)
    return _Gradients(
        x=zeros(x_shape, need_x),
        tap_weight=zeros(taps, need_weight),
        explicit=zeros(explicit_shape, need_kernel and spec.use_explicit),
        guide=zeros(spec.guide.shape, fused and need_guide),
        centre=zeros(spec.guide.shape, fused and need_guide),
        mask=zeros(spec.mask.shape, fused and spec.has_mask),
        alpha=zeros(spec.fk_count, fused),
        lam=zeros(spec.fk_count, fused),
        spatial=zeros(taps, fused),
    )


def _kernel_grads(spec, grads, kernel_size, need_kernel, need_guide):
    if not need_kernel or spec.use_explicit:
        return None
    return KernelGrads(
        guide=grads.guide if need_guide else None,
        centre=grads.centre if need_guide else None,
        alpha=grads.alpha,
        lam=grads.lam,
        spatial=grads.spatial.reshape(kernel_size),
        mask=grads.mask if spec.has_mask else None,
    )


def _launch_backward(runtime, kind, upstream, x, tap_weight, chunk, out_shape, stride, padding,
                     transposed, spec, kernel_size, k_stride, k_padding, dilation, needs,
                     grads):
    """Launch ``pac_backward`` over one chunk; ``needs`` = (x, weight, kernel, guide)."""
    xp = runtime.xp
    dtype = upstream.dtype
    if kind == _UPSTREAM_KERNEL:
        channels, in_shape = spec.fk_count, (1,)
    else:
        channels, *in_shape = x.shape[1:]
    kernel_groups = channels if spec.fk_count > 1 else 1
    explicit = _explicit_or_placeholder(xp, spec, dtype)
    arrays = (x, upstream, explicit, *grads)
    runtime.run(launch.plan(
        "pac_backward", dtype, chunk.images * kernel_groups * chunk.rows * out_shape[-1],
        [a.size for a in arrays] + launch.description_sizes(spec),
        (
            *int32(kind), upstream, x, *int32(channels, *lift(in_shape, 1)), tap_weight,
            *int32(chunk.n0, chunk.row_start, chunk.rows, *lift(out_shape, 1),
                   *lift(stride, 1), *lift(padding, 0), transposed),
            explicit, *int32(spec.use_explicit, spec.fk_count, *needs), *grads,
            *launch.description_args(spec, kernel_size, k_stride, k_padding, dilation, dtype),
        ),
    ))


def _kernel_backward(runtime, grad_kernel, spec, kernel_size, k_stride, k_padding, dilation,
                     need_guide):
    xp = runtime.xp
    batch, _, taps, *out_shape = grad_kernel.shape
    dtype = grad_kernel.dtype
    grads = _gradients(xp, spec, (0,), taps, out_shape, dtype, False, False, True, need_guide)
    placeholder = _args.constant(xp, (), dtype)
    _launch_backward(
        runtime, _UPSTREAM_KERNEL, grad_kernel, placeholder, placeholder,
        launch.Chunk(0, batch, 0, launch.lines(out_shape)), out_shape, (1,), (0,), False, spec,
        kernel_size, k_stride, k_padding, dilation, (False, False, True, need_guide), grads,
    )
    return _kernel_grads(spec, grads, kernel_size, True, need_guide)


def _pool_backward(runtime, grad_y, x, tap_weight, spec, geometry, k_stride, k_padding, need_x,
                   need_weight, need_kernel, need_guide):
    xp = runtime.xp
    out_shape = tuple(grad_y.shape[2:])
    taps = geometry.taps
    grads = _gradients(xp, spec, x.shape, taps, out_shape, x.dtype, need_x, need_weight,
                       need_kernel, need_guide)
    tap_weight = xp.ascontiguousarray(tap_weight).reshape(-1)
    _launch_backward(
        runtime, _UPSTREAM_DEPTHWISE, xp.ascontiguousarray(grad_y), x, tap_weight,
        launch.Chunk(0, x.shape[0], 0, launch.lines(out_shape)), out_shape, geometry.stride,
        geometry.padding, geometry.transposed, spec, geometry.kernel_size, k_stride, k_padding,
        geometry.dilation, (need_x, need_weight, need_kernel, need_guide), grads,
    )
    return (
        grads.x if need_x else None,
        grads.tap_weight.reshape(geometry.kernel_size) if need_weight else None,
        grads.explicit if need_kernel and spec.use_explicit else None,
        _kernel_grads(spec, grads, geometry.kernel_size, need_kernel, need_guide),
    )


def _conv_backward(runtime, grad_y, x, weight_matrix, spec, geometry, k_stride, k_padding,
                   need_x, need_weight, need_kernel, need_guide):
    """Chunks of whole images or row bands: cuBLAS forms the patch gradient
    ``weight_matrix.T @ grad_y``, ``pac_backward`` takes it to x and the kernel, and for the
    weight gradient the forward patches are rebuilt and multiplied with ``grad_y``."""
    xp = runtime.xp
    dtype = x.dtype
    batch, channels = x.shape[:2]
    out_channels = weight_matrix.shape[0]
    out_shape = tuple(grad_y.shape[2:])
    out_h, out_w = launch.lines(out_shape), out_shape[-1]  # output lines, as in _conv
    patch_rows = channels * geometry.taps
    grads = _gradients(xp, spec, x.shape, geometry.taps, out_shape, dtype, need_x, False,
                       need_kernel, need_guide)
    grad_matrix = xp.zeros(weight_matrix.shape, dtype) if need_weight else None
    chunks = launch.conv_chunks(batch, out_h, out_w, patch_rows, x.itemsize)
    size = max(c.images * c.rows for c in chunks) * patch_rows * out_w
    workspace = xp.empty(size, dtype)
    matrix_t = xp.ascontiguousarray(weight_matrix.T)
    grad_y_flat = xp.ascontiguousarray(grad_y).reshape(batch, out_channels, out_h * out_w)
    placeholder = _args.constant(xp, (), dtype)
    for chunk in chunks:
        start = chunk.row_start * out_w
        grad_chunk = grad_y_flat[chunk.n0:chunk.n0 + chunk.images, :,
                                 start:start + chunk.rows * out_w]
        buffer = _chunk_view(workspace, chunk, patch_rows, out_w)
        if need_x or need_kernel:
            xp.matmul(matrix_t, grad_chunk, out=buffer)
            _launch_backward(
                runtime, _UPSTREAM_PATCHES, buffer, x, placeholder, chunk, out_shape,
                geometry.stride, geometry.padding, geometry.transposed, spec,
                geometry.kernel_size, k_stride, k_padding, geometry.dilation,
                (need_x, False, need_kernel, need_guide), grads,
            )
        if need_weight:
            _build_patches(runtime, x, buffer, chunk, spec, geometry, k_stride, k_padding,
                           out_shape)
            grad_matrix += xp.matmul(grad_chunk, buffer.transpose(0, 2, 1)).sum(axis=0)
    return (
        grads.x if need_x else None,
        grad_matrix,
        grads.explicit if need_kernel and spec.use_explicit else None,
        _kernel_grads(spec, grads, geometry.kernel_size, need_kernel, need_guide),
    )


# CRF entry points: no CUDA kernel of its own; the generic implementation on the core ops
from .._generic.crf import (  # noqa: E402, F401
    crf_add_adjoint,
    crf_add_messages,
    crf_block_mean,
    crf_prepare,
    crf_softmax,
    crf_step,
    crf_upsample_add,
)
