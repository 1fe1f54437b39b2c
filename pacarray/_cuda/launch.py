"""Launch configuration of the CUDA kernels: grid sizes, index type, argument packing, chunking.

Pure Python on shapes and dtypes (no CuPy), so it is unit-tested on any machine and shared by
the CuPy runtime and the host-emulation harness of the tests. The settings below are module
attributes read at call time; tests and benchmarks may patch them.

Attributes
----------
BLOCK_THREADS : int
    Threads per block of every kernel; a multiple of the warp size (32), which the backward
    kernel's block-wide sums need.
MAX_BLOCKS : int
    Upper bound of the grid; larger problems are covered by the kernels' grid-stride loops.
DIRECT_CONV_MAX_CHANNEL_PRODUCT : int
    ``pac_conv`` runs the direct kernel when ``C * C_out`` is at most this, and the K-weighted
    patches x weight matrix product (cuBLAS) above it. The direct kernel reads each input value
    once per group of :data:`DIRECT_GROUP` output channels; the product pays for building the
    patches. The crossover has not been measured yet.
WORKSPACE_BYTES : int
    Upper bound of the patch buffer of the cuBLAS path, per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK_THREADS = 256
MAX_BLOCKS = 1 << 20
DIRECT_CONV_MAX_CHANNEL_PRODUCT = 64
WORKSPACE_BYTES = 32 * 2**20

#: Spatial rank of every kernel: 1-D and 2-D calls are lifted to it (:func:`lift`).
KERNEL_DIMS = 3
#: Output channels one thread of ``pac_direct`` accumulates (``pac::DIRECT_GROUP`` in CUDA).
DIRECT_GROUP = 4
WARP_SIZE = 32
#: Largest value of a signed 32-bit index.
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Launch:
    """One kernel launch: template name, its ``T`` and ``I``, a 1-D grid and the arguments."""

    kernel: str
    dtype: np.dtype
    index_dtype: np.dtype
    grid: int
    block: int
    args: tuple


def grid_size(total: int, block: int | None = None, max_blocks: int | None = None) -> int:
    """Blocks for ``total`` threads' worth of work: ``ceil(total / block)``, at least 1, capped."""
    block = BLOCK_THREADS if block is None else block
    max_blocks = MAX_BLOCKS if max_blocks is None else max_blocks
    if total < 0 or block < 1 or max_blocks < 1:
        raise ValueError(f"invalid launch: total={total}, block={block}, max_blocks={max_blocks}")
    return max(1, min(-(-total // block), max_blocks))


def index_dtype(total: int, element_counts, launched_threads: int) -> np.dtype:
    """``int32`` when every index a kernel forms fits, else ``int64``.

    A kernel forms offsets below the element count of each array it touches and grid-stride
    indices below ``total + launched_threads - 1``; all must stay <= ``2**31 - 1``.
    """
    largest = max([total + launched_threads - 1, *element_counts])
    return np.dtype(np.int32) if largest <= INT32_MAX else np.dtype(np.int64)


def plan(kernel: str, dtype, total: int, element_counts, args: tuple) -> Launch:
    """A grid-stride launch over ``total`` items; the kernel's first argument is ``total``."""
    block = BLOCK_THREADS
    if block % WARP_SIZE or not 0 < block <= 1024:
        raise ValueError(f"BLOCK_THREADS must be a multiple of {WARP_SIZE} up to 1024, got {block}")
    grid = grid_size(total, block)
    index = index_dtype(total, element_counts, grid * block)
    return Launch(kernel, np.dtype(dtype), index, grid, block, (index.type(total), *args))


def int32(*values) -> tuple:
    """Scalars for ``int`` kernel parameters (CuPy would pass a Python int as 64-bit)."""
    return tuple(np.int32(v) for v in values)


def lift(values, fill: int) -> tuple[int, ...]:
    """Per-dimension ``values`` of a rank 1-3 call as the kernels' three (depth, rows, columns).

    The missing leading dimensions get ``fill``: 1 for sizes, kernel sizes, strides and
    dilations, 0 for paddings. A singleton axis with a one-tap kernel adds no arithmetic, so a
    2-D call computes exactly what a 2-D kernel would (``docs/design.md`` §3.3).

    Examples
    --------
    >>> lift((5, 7), 1)
    (1, 5, 7)
    >>> lift([9], 0)
    (0, 0, 9)
    """
    values = tuple(int(v) for v in values)
    if not 1 <= len(values) <= KERNEL_DIMS:
        raise ValueError(f"expected 1 to {KERNEL_DIMS} spatial values, got {values}")
    return (fill,) * (KERNEL_DIMS - len(values)) + values


def lines(shape) -> int:
    """Output lines of a spatial ``shape``: the product of all sizes but the last (columns)."""
    return math.prod(shape[:-1])


def description_args(spec, kernel_size, k_stride, k_padding, dilation, dtype) -> tuple:
    """The fused-kernel parameters (``PAC_DESCRIPTION_PARAMS`` in ``pac_common.cuh``), in order.

    ``spec`` is a :class:`pacarray.kernels.KernelSpec` whose arrays are contiguous, of ``dtype``
    and on the launch's device. The geometry is lifted to three spatial dimensions.
    """
    scalar = np.dtype(dtype).type
    features = spec.guide.shape[1]
    return (
        spec.guide, spec.centre, spec.alpha, spec.lam, spec.spatial.reshape(-1), spec.mask,
        scalar(spec.eps2),
        *int32(
            features, *lift(spec.guide_shape, 1), spec.family, spec.has_mask, spec.normalize,
            spec.channel_wise, *lift(kernel_size, 1), *lift(k_stride, 1), *lift(k_padding, 0),
            *lift(dilation, 1),
        ),
    )


def description_sizes(spec) -> list[int]:
    """Element counts of the fused-kernel arrays (for the index-type choice)."""
    return [spec.guide.size, spec.centre.size, spec.mask.size]


def direct_group(out_channels: int, dense: bool, fk_count: int) -> int:
    """Output channels per thread of ``pac_direct``.

    A depthwise op with a channel-wise kernel needs one channel per thread (each has its own K).
    """
    if not dense and fk_count > 1:
        return 1
    return min(DIRECT_GROUP, out_channels)


def use_direct_conv(channels: int, out_channels: int) -> bool:
    """Whether ``pac_conv`` takes the direct kernel rather than patches x weights (cuBLAS)."""
    return channels * out_channels <= DIRECT_CONV_MAX_CHANNEL_PRODUCT


@dataclass(frozen=True)
class Chunk:
    """Output rows ``[row_start, row_start + rows)`` of images ``[n0, n0 + images)``.

    A row is one output line along the last axis: in 3-D the lines of all depth slices, in C
    order (line ``oz*Ho + oy``); in 1-D the single line.
    """

    n0: int
    images: int
    row_start: int
    rows: int


def conv_chunks(batch: int, out_h: int, out_w: int, patch_rows: int, itemsize: int,
                workspace_bytes: int | None = None) -> list[Chunk]:
    """Split the output into chunks whose patch buffer ``(images, patch_rows, rows*out_w)`` fits.

    ``out_h`` counts the output lines of one image (:func:`lines`), ``out_w`` their length.
    Whole images are grouped while one image fits the workspace (one batched product per
    chunk); otherwise each image is cut into bands of rows. A single output row is the smallest
    chunk, whatever the workspace.
    """
    workspace_bytes = WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
    row_bytes = patch_rows * out_w * itemsize
    image_bytes = row_bytes * out_h
    if image_bytes <= workspace_bytes:
        per_chunk = max(1, workspace_bytes // image_bytes)
        return [
            Chunk(n0, min(per_chunk, batch - n0), 0, out_h) for n0 in range(0, batch, per_chunk)
        ]
    rows = max(1, workspace_bytes // row_bytes)
    return [
        Chunk(n, 1, row_start, min(rows, out_h - row_start))
        for n in range(batch)
        for row_start in range(0, out_h, rows)
    ]
