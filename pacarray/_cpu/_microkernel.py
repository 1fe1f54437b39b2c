"""Register-blocked multiply-accumulate of the forward convolution (``docs/design.md`` §4).

``acc[o+b, p:p+P] = sum_j w[o+b, j] * (kflat[k_off[j]+p : +P] * xflat[x_off[j]+p : +P])``
with the ``B x P`` accumulator tile held in vector registers for the whole reduction: the
K-weighted patch row ``j`` (a row of the adaptive kernel K times a zero-padded input row, found
through the offset tables) is formed in registers, never stored. Numba cannot be asked for
this: written in Python, the accumulators live in memory (one load and one store per multiply-add
row) or, as scalars, are never packed into vectors, and the kernel stayed at about half of the
FMA peak. The tile is therefore written directly in LLVM IR, as a Numba ``intrinsic`` that is
inlined into the calling kernel (and cached with it): per reduction step, two offset loads,
``P / V`` vector loads each of K and of the input, ``P / V`` multiplies, ``B`` broadcast
weights (packed so that one pointer walks them) and ``B * P / V`` multiply-adds.

``llvm.fmuladd`` is a multiply-add that LLVM fuses where the CPU has FMA (the ``contract``
fast-math flag the other kernels use); each output sums its ``count`` products in order,
whatever the thread count, so results are the same run to run.

Numba's on-disk cache keys a kernel on its own source file only: after editing this module,
clear the cache (``NUMBA_CACHE_DIR``, or the ``__pycache__`` folders) so that ``conv_rows`` is
compiled again with the new tiles.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_bytes() -> int:
    """Widest vector register of the host CPU in bytes (64 with AVX-512F, 32 with AVX, else
    16). Numba's cache is keyed by the host CPU, so a cached kernel never runs on another."""
    try:
        features = llvm_binding.get_host_cpu_features()
    except RuntimeError:  # pragma: no cover - platforms where LLVM cannot tell
        return 16
    if features.get("avx512f"):
        return 64
    if features.get("avx"):
        return 32
    return 16


#: Bytes of one vector of the tile (the widest vector register of the host).
VECTOR_BYTES = _vector_bytes()
#: Vectors per accumulator row of the tile, and the row counts of the tiles (output channels):
#: with AVX-512's 32 vector registers, one vector by up to 16 rows (16 accumulators, the product
#: and the broadcast weight; a multiply per 16 multiply-adds, measured 102-108 GFLOP/s on one
#: Zen 4 core against 99-105 for 12 rows by 2 vectors); with AVX2's 16, two vectors by up to 6
#: rows (12 accumulators, enough independent chains to cover the multiply-add latency on both FMA
#: units). Output channels are split greedily into blocks of these sizes.
TILE_VECTORS = 1 if VECTOR_BYTES == 64 else 2
TILE_SIZES = (16, 12, 8, 4, 2, 1) if VECTOR_BYTES == 64 else (6, 4, 2, 1)
#: Most output channels per tile.
TILE_ROWS = TILE_SIZES[0]


def tile_width(itemsize: int) -> int:
    """Pixels per tile for elements of ``itemsize`` bytes (``TILE_VECTORS`` vectors)."""
    return TILE_VECTORS * VECTOR_BYTES // itemsize


def _make_tile(rows: int, vectors: int = TILE_VECTORS):
    """The ``intrinsic`` for a tile of ``rows`` output channels (1 to :data:`TILE_ROWS`) by
    ``vectors`` vectors of pixels."""

    @intrinsic
    def tile(typingctx, acc, weights, kflat, xflat, k_off, x_off, o, w_start, count, p):
        """``acc[o+b, p:p+P] = sum_{j<count} weights[w_start + j*rows + b] *
        (kflat[k_off[j]+p : +P] * xflat[x_off[j]+p : +P])`` for ``b < rows``: the K-weighted
        patch row ``j`` is formed in registers, never stored, and the block's weights are
        packed step by step (one pointer walks them). ``acc`` 2-D, the others 1-D, all
        C-contiguous, floats of one dtype; ``k_off``/``x_off`` integer offsets. Every
        ``kflat``/``xflat`` element read must exist (the caller pads the rows)."""
        if not (isinstance(acc, types.Array) and acc.ndim == 2 and acc.layout == "C"):
            return None
        for array in (weights, kflat, xflat, k_off, x_off):
            if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"):
                return None
        if not (acc.dtype == weights.dtype == kflat.dtype == xflat.dtype
                and isinstance(acc.dtype, types.Float)):
            return None
        if not (isinstance(k_off.dtype, types.Integer) and k_off.dtype == x_off.dtype):
            return None
        signature = types.void(acc, weights, kflat, xflat, k_off, x_off, o, w_start, count, p)

        def codegen(context, builder, sig, args):
            arrays = [context.make_array(array_type)(context, builder, value)
                      for array_type, value in zip(sig.args[:6], args[:6])]
            acc_array, weights_array, k_array, x_array, k_off_array, x_off_array = arrays
            intp = context.get_value_type(types.intp)
            o_value, w_value, count_value, p_value = (
                context.cast(builder, value, from_type, types.intp)
                for value, from_type in zip(args[6:], sig.args[6:]))
            element = context.get_value_type(acc.dtype)
            width = VECTOR_BYTES // context.get_abi_sizeof(element)
            vector = ir.VectorType(element, width)
            align = context.get_abi_sizeof(element)
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector, vector, vector]),
                f"llvm.fmuladd.v{width}{'f32' if align == 4 else 'f64'}")

            def pointer2(array, array_type, row, column):
                shape = cgutils.unpack_tuple(builder, array.shape, 2)
                strides = cgutils.unpack_tuple(builder, array.strides, 2)
                return cgutils.get_item_pointer2(context, builder, array.data, shape, strides,
                                                 array_type.layout, [row, column])

            def vector_at(item, offset):
                moved = builder.gep(item, [ir.Constant(intp, offset * width)])
                return builder.bitcast(moved, vector.as_pointer())

            def offset_at(array, index):
                value = builder.load(builder.gep(array.data, [index]))
                return context.cast(builder, value, k_off.dtype, types.intp)

            zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            slots = []
            for _ in range(rows * vectors):
                slot = cgutils.alloca_once(builder, vector)
                builder.store(ir.Constant(vector, None), slot)
                slots.append(slot)
            with cgutils.for_range(builder, count_value) as loop:
                j = loop.index
                k_item = builder.gep(k_array.data,
                                     [builder.add(offset_at(k_off_array, j), p_value)])
                x_item = builder.gep(x_array.data,
                                     [builder.add(offset_at(x_off_array, j), p_value)])
                products = [builder.fmul(builder.load(vector_at(k_item, v), align=align),
                                         builder.load(vector_at(x_item, v), align=align))
                            for v in range(vectors)]
                w_item = builder.gep(weights_array.data, [
                    builder.add(w_value, builder.mul(j, ir.Constant(intp, rows)))])
                for b in range(rows):
                    w = builder.load(builder.gep(w_item, [ir.Constant(intp, b)]))
                    splat = builder.insert_element(ir.Constant(vector, ir.Undefined), w,
                                                   ir.Constant(ir.IntType(32), 0))
                    splat = builder.shuffle_vector(splat, ir.Constant(vector, ir.Undefined),
                                                   zero_mask)
                    for v in range(vectors):
                        slot = slots[b * vectors + v]
                        builder.store(builder.call(fmuladd, [splat, products[v],
                                                             builder.load(slot)]), slot)
            for b in range(rows):
                row = builder.add(o_value, ir.Constant(intp, b))
                item = pointer2(acc_array, sig.args[0], row, p_value)
                for v in range(vectors):
                    builder.store(builder.load(slots[b * vectors + v]), vector_at(item, v),
                                  align=align)
            return context.get_dummy_value()

        return signature, codegen

    return tile


# every size either target uses (pacarray._cpu._numba_kernels.pack_weights makes blocks of
# TILE_SIZES only, so the others are never called)
tile1 = _make_tile(1)
tile2 = _make_tile(2)
tile4 = _make_tile(4)
tile6 = _make_tile(6)
tile8 = _make_tile(8)
tile12 = _make_tile(12)
tile16 = _make_tile(16)
