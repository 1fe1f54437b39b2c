"""Register-blocked multiply-accumulate of the forward convolution (``docs/design.md`` §4).

``acc[o:o+B, p:p+P] += weights[o:o+B, first:first+count] @ panel[0:count, p:p+P]`` with the
``B x P`` accumulator tile held in vector registers for the whole reduction. Numba cannot be
asked for this: written in Python, the accumulators live in memory (one load and one store per
multiply-add row) or, as scalars, are never packed into vectors, and the kernel stayed at about
half of the FMA peak. The tile is therefore written directly in LLVM IR, as a Numba
``intrinsic`` that is inlined into the calling kernel (and cached with it): per reduction step,
``P / V`` vector loads of the panel row, ``B`` broadcast weights and ``B * P / V`` multiply-adds.

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
#: Vectors per accumulator row of the tile.
TILE_VECTORS = 2
#: Most output channels per tile: 6 rows of 2 vectors are 12 accumulator registers of the 16
#: that AVX2 has, enough independent chains to cover the multiply-add latency on both FMA units
#: (measured 0.74-0.86 of the FMA peak against 0.59-0.83 with 4 rows).
TILE_ROWS = 6


def tile_width(itemsize: int) -> int:
    """Pixels per tile for elements of ``itemsize`` bytes (``TILE_VECTORS`` vectors)."""
    return TILE_VECTORS * VECTOR_BYTES // itemsize


def _make_tile(rows: int):
    """The ``intrinsic`` for a tile of ``rows`` output channels (1 to :data:`TILE_ROWS`)."""

    @intrinsic
    def tile(typingctx, acc, weights, panel, o, first, count, p):
        """``acc[o+b, p:p+P] += sum_j weights[o+b, first+j] * panel[j, p:p+P]``, ``j < count``,
        ``b < rows``. All three arrays 2-D and C-contiguous, of one float dtype; ``p + P`` may
        not pass the rows of ``acc`` and ``panel``."""
        for array in (acc, weights, panel):
            if not (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"):
                return None
        if not (acc.dtype == weights.dtype == panel.dtype
                and isinstance(acc.dtype, types.Float)):
            return None
        signature = types.void(acc, weights, panel, o, first, count, p)

        def codegen(context, builder, sig, args):
            acc_type, weights_type, panel_type = sig.args[:3]
            acc_array = context.make_array(acc_type)(context, builder, args[0])
            weights_array = context.make_array(weights_type)(context, builder, args[1])
            panel_array = context.make_array(panel_type)(context, builder, args[2])
            intp = context.get_value_type(types.intp)
            o_value, first_value, count_value, p_value = (
                context.cast(builder, value, from_type, types.intp)
                for value, from_type in zip(args[3:], sig.args[3:]))
            element = context.get_value_type(acc_type.dtype)
            width = VECTOR_BYTES // context.get_abi_sizeof(element)
            vector = ir.VectorType(element, width)
            align = context.get_abi_sizeof(element)
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector, vector, vector]),
                f"llvm.fmuladd.v{width}{'f32' if align == 4 else 'f64'}")

            def pointer(array, array_type, row, column):
                shape = cgutils.unpack_tuple(builder, array.shape, 2)
                strides = cgutils.unpack_tuple(builder, array.strides, 2)
                item = cgutils.get_item_pointer2(context, builder, array.data, shape, strides,
                                                 array_type.layout, [row, column])
                return item

            def vector_at(item, offset):
                moved = builder.gep(item, [ir.Constant(intp, offset * width)])
                return builder.bitcast(moved, vector.as_pointer())

            zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            slots = []
            for b in range(rows):
                row = builder.add(o_value, ir.Constant(intp, b))
                item = pointer(acc_array, acc_type, row, p_value)
                for v in range(TILE_VECTORS):
                    slot = cgutils.alloca_once(builder, vector)
                    builder.store(builder.load(vector_at(item, v), align=align), slot)
                    slots.append(slot)
            with cgutils.for_range(builder, count_value) as loop:
                j = loop.index
                panel_item = pointer(panel_array, panel_type, j, p_value)
                values = [builder.load(vector_at(panel_item, v), align=align)
                          for v in range(TILE_VECTORS)]
                column = builder.add(first_value, j)
                for b in range(rows):
                    row = builder.add(o_value, ir.Constant(intp, b))
                    w = builder.load(pointer(weights_array, weights_type, row, column))
                    splat = builder.insert_element(ir.Constant(vector, ir.Undefined), w,
                                                   ir.Constant(ir.IntType(32), 0))
                    splat = builder.shuffle_vector(splat, ir.Constant(vector, ir.Undefined),
                                                   zero_mask)
                    for v in range(TILE_VECTORS):
                        slot = slots[b * TILE_VECTORS + v]
                        builder.store(builder.call(fmuladd, [splat, values[v],
                                                             builder.load(slot)]), slot)
            for b in range(rows):
                row = builder.add(o_value, ir.Constant(intp, b))
                item = pointer(acc_array, acc_type, row, p_value)
                for v in range(TILE_VECTORS):
                    builder.store(builder.load(slots[b * TILE_VECTORS + v]), vector_at(item, v),
                                  align=align)
            return context.get_dummy_value()

        return signature, codegen

    return tile


tile1 = _make_tile(1)
tile2 = _make_tile(2)
tile3 = _make_tile(3)
tile4 = _make_tile(4)
tile5 = _make_tile(5)
tile6 = _make_tile(6)
