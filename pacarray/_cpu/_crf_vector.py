"""Vector blocks of the fused PAC-CRF step with a palette term (``docs/design.md`` §2 and §4).

The inner loops of the fused PAC-CRF steps do not come out of Numba's loop vectorizer in a
useful form, so they are written directly in LLVM IR, as Numba ``intrinsic``s inlined into the
kernels (and cached with them), on vectors of the host's widest register
(:data:`pacarray._cpu._microkernel.VECTOR_BYTES`). For the row kernel,
:func:`pacarray._cpu._crf_kernels.mean_field_step_palette`:

* ``window_block{1,2,4,8}``: a window term's messages plus the unary, for ``V`` pixels of a
  row and every label: ``out[l, x:x+V] = base[l, x:x+V] + sum_t kernel[t, x:x+V] *
  q[n, l, rows[t], x+offsets[t] : +V]`` (``base`` is ``out`` itself for the taps after the
  first block). The weight vectors are loaded once and stay in registers while the
  labels run, so a label costs a load of ``q`` and a multiply-add per tap, and one load and
  one store; written in Python, each tap reloads its weights for every label and each partial
  sum goes through memory. One intrinsic per tap count (1, 2, 4, 8): the kernel composes them.
* :func:`palette_lookup`: the palette term's slice for ``V`` pixels whose left coarse column
  ``c`` is the same: ``out[x:x+V] += left * table[c, owner] + right * table[c+1, owner]``,
  ``table`` ``(w + 1, PALETTE_LANES)``. Each lookup is built as a vector of
  ``extractelement``s with the owners as indices, which LLVM lowers to a variable permute
  (``vpermps`` with AVX2 and AVX-512): two instructions per ``V`` pixels, where a gather
  (measured 0.74 ns per pixel and label on Zen 4) or scalar loads (0.59-0.82 ns) cost 3-4x
  more than the permute's 0.14-0.18 ns. The palette must have at most
  :data:`PALETTE_LANES` entries; larger ones take the scalar loop.

* ``fused_block{0,2,4,8}``: a whole update of ``V`` pixels and every label for
  :func:`pacarray._cpu._crf_kernels.mean_field_step_fused`, the step that runs where the
  terms allow (Potts, no logits, at most 8 window taps, a palette of at most
  :data:`PALETTE_LANES` entries on cells of at least ``V`` pixels): the window taps (padded
  with taps of weight 0 to 2, 4 or 8) and the unary, the palette slice (the same permutes;
  a block may straddle one coarse column, whose lanes select the next pair of table rows),
  the maximum over the labels, the exponentials (:func:`pacarray._cpu._exp.exp_nonpositive`
  in float64; in float32 :func:`pacarray._cpu._exp.exp2_nonpositive` of ``(x - peak) *
  log2(e)``, 4 vector operations fewer) and the normalized marginals, with the logits in an
  ``(L, V)`` scratch that stays in L1. The marginals are ``(N, H, L, W)`` with padding
  columns, so that no block needs a scalar edge: a row's labels are neighbours in memory.
  ``fused_square`` and ``fused_cross`` are the same for the default terms' taps (a 3x3
  window, a "+") on the rows where all of them are inside the image: every tap is then a
  multiple of the row stride and a constant column from the row above, so three row pointers
  serve all of them where the general block keeps (and, with 8 taps, spills) one per tap.

``llvm.fmuladd`` is a multiply-add that LLVM fuses where the CPU has FMA, as the ``contract``
flag does in the other kernels; the sums run in a fixed order, whatever the thread count.

Numba's on-disk cache keys a kernel on its own source file only: after editing this module,
clear the cache (``NUMBA_CACHE_DIR``, or the ``__pycache__`` folders) so that the kernels that
inline it are compiled again.
"""

from __future__ import annotations

import contextlib

import llvmlite.ir as ir
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _exp
from ._microkernel import VECTOR_BYTES

#: Palette entries a lookup table row holds (the lanes of one permute source).
PALETTE_LANES = 16


def lanes(itemsize: int) -> int:
    """Pixels per vector block for elements of ``itemsize`` bytes."""
    return VECTOR_BYTES // itemsize


def _is_array(value, ndim):
    return isinstance(value, types.Array) and value.ndim == ndim and value.layout == "C"


def _float_vector(context, dtype):
    element = context.get_value_type(dtype)
    itemsize = context.get_abi_sizeof(element)
    width = lanes(itemsize)
    suffix = "f32" if itemsize == 4 else "f64"
    return element, ir.VectorType(element, width), width, itemsize, suffix


def _fmuladd(builder, vector, width, suffix):
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector, vector, vector]),
        f"llvm.fmuladd.v{width}{suffix}")


def _vector_pointer(builder, pointer, vector):
    return builder.bitcast(pointer, vector.as_pointer())


class _Loop:
    """The loop-carried values of :func:`_carried_loop`: ``values`` (their phis in the body),
    ``next`` (set by the body: their values for the next label) and ``exit`` (after the
    loop: their final values, the initial ones when there is no label)."""

    values: list
    next: list
    exit: list


@contextlib.contextmanager
def _carried_loop(builder, count, initial):
    """``for label in range(count)`` in IR carrying ``initial`` values (a :class:`_Loop`),
    marked not to be unrolled: LLVM would otherwise unroll it for Zen (whose loop buffer it
    models), give each tap's source its own pointer per copy and run out of registers
    (spilling pointers to the stack in the loop)."""
    intp = count.type
    module = builder.module
    entry = builder.basic_block
    body = builder.append_basic_block("labels.body")
    done = builder.append_basic_block("labels.done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(intp, 0)), body, done)
    builder.position_at_end(body)
    index = builder.phi(intp)
    index.add_incoming(ir.Constant(intp, 0), entry)
    loop = _Loop()
    loop.values = [builder.phi(value.type) for value in initial]
    for phi, value in zip(loop.values, initial):
        phi.add_incoming(value, entry)
    loop.next = []
    yield index, loop
    tail = builder.basic_block
    following = builder.add(index, ir.Constant(intp, 1))
    index.add_incoming(following, tail)
    for phi, value in zip(loop.values, loop.next):
        phi.add_incoming(value, tail)
    branch = builder.cbranch(builder.icmp_signed("<", following, count), body, done)
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    metadata = module.add_metadata([None, disable])
    metadata.operands = (metadata, disable)  # loop metadata refers to itself
    branch.set_metadata("llvm.loop", metadata)
    builder.position_at_end(done)
    loop.exit = []
    for start, value in zip(initial, loop.next):
        phi = builder.phi(value.type)
        phi.add_incoming(start, entry)
        phi.add_incoming(value, tail)
        loop.exit.append(phi)


@contextlib.contextmanager
def _label_loop(builder, count):
    """:func:`_carried_loop` without carried values."""
    with _carried_loop(builder, count, []) as (label, _):
        yield label


def _tap_sum(builder, fmuladd, weights, values, acc):
    """``acc + sum_t weights[t] * values[t]`` in two chains of multiply-adds (the first half
    onto ``acc``, the second from its first product), added at the end: half the latency of
    one chain."""
    half = (len(weights) + 1) // 2
    for weight, value in zip(weights[:half], values[:half]):
        acc = builder.call(fmuladd, [weight, value, acc])
    if len(weights) > 1:
        other = builder.fmul(weights[half], values[half])
        for weight, value in zip(weights[half + 1:], values[half + 1:]):
            other = builder.call(fmuladd, [weight, value, other])
        acc = builder.fadd(acc, other)
    return acc


def _make_window_block(count: int):
    """The intrinsic for ``count`` taps."""

    @intrinsic
    def block(typingctx, out, base, q, kernel, rows, offsets, first, n, x):
        """``out[l, x:x+V] = base[l, x:x+V] + sum_{t < count}
        kernel[first+t, x:x+V] * q[n, l, rows[first+t], x+offsets[first+t] : +V]`` for every
        label ``l``; ``out`` ``(L, W)``, ``base`` ``(L, W')`` with any row stride (a unary row
        ``unary[n, :, y]``, or ``out`` itself to add more taps), ``q`` ``(N, L, H, W)``
        contiguous along its rows (any other strides: C order, or a view of an
        ``(N, H, L, W)`` array), ``kernel`` ``(taps, W)``,
        ``rows``/``offsets`` 1-D integers. Every element read must exist (the caller keeps
        ``x`` where all the taps are inside the row)."""
        if not (_is_array(out, 2) and _is_array(kernel, 2)):
            return None
        if not (isinstance(q, types.Array) and q.ndim == 4):
            return None
        if not (isinstance(base, types.Array) and base.ndim == 2):
            return None
        if not (_is_array(rows, 1) and _is_array(offsets, 1)):
            return None
        if not (out.dtype == base.dtype == q.dtype == kernel.dtype
                and isinstance(out.dtype, types.Float)):
            return None
        signature = types.void(out, base, q, kernel, rows, offsets, first, n, x)

        def codegen(context, builder, sig, args):
            out_a, base_a, q_a, kernel_a, rows_a, offsets_a = (
                context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:6], args[:6]))
            intp = context.get_value_type(types.intp)
            first_v, n_v, x_v = (context.cast(builder, v, t, types.intp)
                                      for v, t in zip(args[6:], sig.args[6:]))
            element, vector, width, itemsize, suffix = _float_vector(context, out.dtype)
            fmuladd = _fmuladd(builder, vector, width, suffix)
            labels = cgutils.unpack_tuple(builder, q_a.shape, 4)[1]
            image_stride, plane, row_width = (
                builder.sdiv(stride, ir.Constant(intp, itemsize))
                for stride in cgutils.unpack_tuple(builder, q_a.strides, 4)[:3])
            image = builder.gep(q_a.data, [builder.mul(n_v, image_stride)])
            kernel_stride = builder.sdiv(cgutils.unpack_tuple(builder, kernel_a.strides, 2)[0],
                                         ir.Constant(intp, itemsize))
            out_stride = builder.sdiv(cgutils.unpack_tuple(builder, out_a.strides, 2)[0],
                                      ir.Constant(intp, itemsize))
            base_stride = builder.sdiv(cgutils.unpack_tuple(builder, base_a.strides, 2)[0],
                                       ir.Constant(intp, itemsize))
            weights, sources = [], []
            for t in range(count):
                tap = builder.add(first_v, ir.Constant(intp, t))
                row = context.cast(builder, builder.load(builder.gep(rows_a.data, [tap])),
                                   rows.dtype, types.intp)
                offset = context.cast(builder, builder.load(builder.gep(offsets_a.data, [tap])),
                                      offsets.dtype, types.intp)
                weight_at = builder.gep(kernel_a.data,
                                        [builder.add(builder.mul(tap, kernel_stride), x_v)])
                weights.append(builder.load(_vector_pointer(builder, weight_at, vector),
                                            align=itemsize))
                sources.append(builder.add(builder.mul(row, row_width),
                                           builder.add(x_v, offset)))
            with _label_loop(builder, labels) as label:
                target = _vector_pointer(builder, builder.gep(
                    out_a.data, [builder.add(builder.mul(label, out_stride), x_v)]), vector)
                start = builder.gep(base_a.data,
                                    [builder.add(builder.mul(label, base_stride), x_v)])
                acc = builder.load(_vector_pointer(builder, start, vector), align=itemsize)
                label_plane = builder.gep(image, [builder.mul(label, plane)])
                values = [builder.load(_vector_pointer(
                    builder, builder.gep(label_plane, [source]), vector), align=itemsize)
                    for source in sources]
                builder.store(_tap_sum(builder, fmuladd, weights, values, acc), target,
                              align=itemsize)
            return context.get_dummy_value()

        return signature, codegen

    return block


# The block sizes the kernel composes a row's taps of (8 + 4 + 2 + 1 covers any count).
window_block1 = _make_window_block(1)
window_block2 = _make_window_block(2)
window_block4 = _make_window_block(4)
window_block8 = _make_window_block(8)


@intrinsic
def palette_lookup(typingctx, out, table, column, owner, left, right, x):
    """``out[x:x+V] += left[x:x+V] * table[column, owner[x:x+V]] + right[x:x+V] *
    table[column + 1, owner[x:x+V]]``: ``out``, ``left``, ``right`` 1-D floats, ``table``
    ``(w + 1, PALETTE_LANES)`` C-contiguous, ``owner`` 1-D int32 (every entry below
    ``PALETTE_LANES``)."""
    if not (isinstance(out, types.Array) and out.ndim == 1 and _is_array(table, 2)):
        return None
    if not (isinstance(owner, types.Array) and owner.ndim == 1 and owner.dtype == types.int32):
        return None
    if not (isinstance(left, types.Array) and isinstance(right, types.Array)):
        return None
    if not (out.dtype == table.dtype == left.dtype == right.dtype
            and isinstance(out.dtype, types.Float)):
        return None
    signature = types.void(out, table, column, owner, left, right, x)

    def codegen(context, builder, sig, args):
        out_a, table_a, _, owner_a, left_a, right_a = (
            None if i == 2 else context.make_array(t)(context, builder, v)
            for i, (t, v) in enumerate(zip(sig.args[:6], args[:6])))
        intp = context.get_value_type(types.intp)
        column_v = context.cast(builder, args[2], sig.args[2], types.intp)
        x_v = context.cast(builder, args[6], sig.args[6], types.intp)
        element, vector, width, itemsize, suffix = _float_vector(context, out.dtype)
        fmuladd = _fmuladd(builder, vector, width, suffix)
        i32 = ir.IntType(32)
        entries = ir.VectorType(element, PALETTE_LANES)
        index_vector = ir.VectorType(i32, width)

        def load(array, vector_type, align):
            return builder.load(_vector_pointer(builder, builder.gep(array.data, [x_v]),
                                                vector_type), align=align)

        index = load(owner_a, index_vector, 4)
        row_at = builder.gep(table_a.data,
                             [builder.mul(column_v, ir.Constant(intp, PALETTE_LANES))])
        lower = builder.load(_vector_pointer(builder, row_at, entries), align=itemsize)
        upper = builder.load(_vector_pointer(
            builder, builder.gep(row_at, [ir.Constant(intp, PALETTE_LANES)]), entries),
            align=itemsize)

        def lookup(row):
            return _permute(builder, index, row, vector, width)

        target = _vector_pointer(builder, builder.gep(out_a.data, [x_v]), vector)
        acc = builder.load(target, align=itemsize)
        acc = builder.call(fmuladd, [load(left_a, vector, itemsize), lookup(lower), acc])
        acc = builder.call(fmuladd, [load(right_a, vector, itemsize), lookup(upper), acc])
        builder.store(acc, target, align=itemsize)
        return context.get_dummy_value()

    return signature, codegen


def _exp_vector_float64(builder, value, vector, width):
    """:func:`pacarray._cpu._exp.exp_nonpositive` of each lane of the float64 ``value``: the
    same reduction, polynomial and flush, operation for operation (multiply-adds as
    ``llvm.fmuladd``, which the scalar version's contraction also makes)."""
    integer = ir.VectorType(ir.IntType(64), width)
    fmuladd = _fmuladd(builder, vector, width, "f64")
    floor = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector]),
                                           f"llvm.floor.v{width}f64")

    def splat(number):
        return ir.Constant(vector, [float(number)] * width)

    lower = _exp.FLUSH_BELOW_FLOAT64
    below = builder.fcmp_ordered("<", value, splat(lower))
    clamped = builder.select(below, splat(lower), value)
    k = builder.call(floor, [builder.call(fmuladd, [clamped, splat(_exp._LOG2E), splat(0.5)])])
    minus_k = builder.fneg(k)
    ln2_high, ln2_low = _exp._LN2_FLOAT64
    r = builder.call(fmuladd, [minus_k, splat(ln2_high), clamped])
    r = builder.call(fmuladd, [minus_k, splat(ln2_low), r])
    coefficients = _exp._taylor(np.float64, _exp._DEGREE_FLOAT64)
    p = splat(coefficients[0])
    for coefficient in coefficients[1:]:
        p = builder.call(fmuladd, [p, r, splat(coefficient)])
    # k + 1.5 * 2**52 holds k in its low mantissa bits; k + 1023 shifted left by 52 is 2**k
    bits = builder.bitcast(builder.fadd(k, splat(1.5 * 2.0**52)), integer)
    bits = builder.shl(builder.add(bits, ir.Constant(integer, [1023] * width)),
                       ir.Constant(integer, [52] * width))
    result = builder.fmul(p, builder.bitcast(bits, vector))
    return builder.select(below, ir.Constant(vector, [0.0] * width), result)


def _exp2_vector_float32(builder, value, vector, width):
    """:func:`pacarray._cpu._exp.exp2_nonpositive` of each lane of the float32 ``value``,
    operation for operation (multiply-adds as ``llvm.fmuladd``)."""
    integer = ir.VectorType(ir.IntType(32), width)
    fmuladd = _fmuladd(builder, vector, width, "f32")
    rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector]),
                                          f"llvm.rint.v{width}f32")

    def splat(number):
        return ir.Constant(vector, [float(np.float32(number))] * width)

    below = builder.fcmp_ordered("<", value, splat(_exp.FLUSH2_BELOW_FLOAT32))
    t = builder.select(below, splat(-127.0), value)
    k = builder.call(rint, [t])
    scale = builder.bitcast(builder.fadd(k, splat(1.5 * 2.0**23 + 127)), integer)
    scale = builder.bitcast(builder.shl(scale, ir.Constant(integer, [23] * width)), vector)
    f = builder.fsub(t, k)
    coefficients = _exp._EXP2_FLOAT32
    p = splat(coefficients[0])
    for coefficient in coefficients[1:]:
        p = builder.call(fmuladd, [p, f, splat(coefficient)])
    return builder.fmul(p, scale)


def _splat(builder, scalar, vector_type, width):
    """A vector of ``width`` copies of ``scalar``."""
    single = builder.insert_element(ir.Constant(vector_type, None), scalar,
                                    ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, ir.Constant(vector_type, None),
                                  ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))


def _permute(builder, index, row, vector, width):
    """``row[index[lane]]`` per lane: LLVM turns this pattern into one variable permute
    (``vpermps`` on x86), when ``index`` is loaded in the same block (see
    :func:`palette_lookup`)."""
    i32 = ir.IntType(32)
    result = ir.Constant(vector, None)
    for lane in range(width):
        which = builder.extract_element(index, ir.Constant(i32, lane))
        result = builder.insert_element(result, builder.extract_element(row, which),
                                        ir.Constant(i32, lane))
    return result


def _make_fused_block(count: int, pattern=None):
    """The fused block for ``count`` window taps (0: none); with a ``pattern`` of ``(dy, dx)``
    in -1, 0, 1 per tap, for rows whose taps are exactly those (read from one pointer)."""

    @intrinsic
    def block(typingctx, scratch, base, base_row, q, kernel, rows, offsets, n, y, x, tables,
              cols, owner, left, right, use_slice, q_out):
        """A whole mean-field update of ``V`` pixels ``x:x+V`` of row ``y`` of image ``n``,
        every label: ``logit[l] = base[l, x:x+V] + sum_{t < count} kernel[t, x:x+V] *
        q[n, rows[t], l, x+offsets[t] : +V]`` (``+ left * T[l, c] + right * T[l, c+1]``
        looked up at ``owner`` when ``use_slice``, ``c = cols[x:x+V]`` and ``T = tables``),
        then ``q_out[n, y, :, x:x+V] = softmax over l of logit``.

        ``scratch`` ``(L, V)`` C (the logits, then their exponentials, stay in L1); ``base``
        ``(L, W')`` any row stride (the unary row) and ``base_row`` the distance in elements
        from it to the next row; ``q`` and ``q_out`` ``(N, H, L, W)`` any strides, contiguous
        along ``W`` (every tap's elements must exist: padding columns, with weight 0, where
        a tap leaves the row); ``kernel`` ``(taps, W)`` C, ``rows``/``offsets`` 1-D
        integers; ``tables`` ``(L, w + 2, PALETTE_LANES)`` C; ``cols`` 1-D int64, the left
        coarse column of each pixel, which takes at most two neighbouring values ``c0``,
        ``c0 + 1`` in a block (cells of at least ``V`` pixels); ``owner`` int32 below
        ``PALETTE_LANES``; ``left``/``right`` 1-D floats.

        Three loops over the labels (four with the slice: the taps and the slice apart, as
        their pointers together outgrow the registers and spill): the logits and their
        maximum, the exponentials and their sum, the normalized marginals. Each label's
        unary, newest row of ``q`` (the last tap's: taps go row by row) and output are
        prefetched a row ahead into the second-level cache: the hardware prefetcher follows
        none of these streams, one per label (``docs/design.md`` §4 has the measurements)."""
        floats = (scratch, base, q, kernel, tables, left, right, q_out)
        if not all(isinstance(a, types.Array) for a in floats + (rows, offsets, cols, owner)):
            return None
        if not (_is_array(scratch, 2) and _is_array(kernel, 2) and _is_array(tables, 3)):
            return None
        if not (q.ndim == 4 and q_out.ndim == 4 and base.ndim == 2):
            return None
        if owner.dtype != types.int32 or cols.dtype != types.int64:
            return None
        if not (len({a.dtype for a in floats}) == 1 and isinstance(q.dtype, types.Float)):
            return None
        signature = types.void(scratch, base, base_row, q, kernel, rows, offsets, n, y, x,
                               tables, cols, owner, left, right, use_slice, q_out)

        def codegen(context, builder, sig, args):
            base_row_v = context.cast(builder, args[2], sig.args[2], types.intp)
            # the other arguments, numbered without base_row
            sig = types.void(*(sig.args[:2] + sig.args[3:]))
            args = args[:2] + args[3:]
            arrays = {}
            for i, (t, v) in enumerate(zip(sig.args, args)):
                if isinstance(t, types.Array):
                    arrays[i] = context.make_array(t)(context, builder, v)
            scratch_a, base_a, q_a, kernel_a, rows_a, offsets_a = (arrays[i] for i in range(6))
            tables_a, cols_a, owner_a, left_a, right_a, out_a = (
                arrays[i] for i in (9, 10, 11, 12, 13, 15))
            intp = context.get_value_type(types.intp)
            n_v, y_v, x_v = (context.cast(builder, args[i], sig.args[i], types.intp)
                             for i in (6, 7, 8))
            slice_on = context.cast(builder, args[14], sig.args[14], types.boolean)
            dtype = q.dtype
            element, vector, width, itemsize, suffix = _float_vector(context, dtype)
            fmuladd = _fmuladd(builder, vector, width, suffix)
            size = ir.Constant(intp, itemsize)

            def strides(array, ndim):
                return [builder.sdiv(s, size)
                        for s in cgutils.unpack_tuple(builder, array.strides, ndim)]

            def load(pointer, at):
                return builder.load(_vector_pointer(builder, builder.gep(pointer, [at]), vector),
                                    align=itemsize)

            def store(value, pointer, at):
                builder.store(value, _vector_pointer(builder, builder.gep(pointer, [at]),
                                                     vector), align=itemsize)

            labels = cgutils.unpack_tuple(builder, q_a.shape, 4)[2]
            q_image, q_row, q_label = strides(q_a, 4)[:3]
            o_image, o_row, o_label = strides(out_a, 4)[:3]
            q_at = builder.gep(q_a.data, [builder.add(builder.mul(n_v, q_image), x_v)])
            out_at = builder.gep(out_a.data, [builder.add(
                builder.add(builder.mul(n_v, o_image), builder.mul(y_v, o_row)), x_v)])
            base_at = builder.gep(base_a.data, [x_v])
            base_label = strides(base_a, 2)[0]
            kernel_row = strides(kernel_a, 2)[0]
            weights, sources = [], []
            for t in range(count):
                tap = ir.Constant(intp, t)
                weights.append(load(kernel_a.data, builder.add(builder.mul(tap, kernel_row),
                                                                x_v)))
                if pattern is not None:
                    continue
                row = context.cast(builder, builder.load(builder.gep(rows_a.data, [tap])),
                                   rows.dtype, types.intp)
                offset = context.cast(builder, builder.load(builder.gep(offsets_a.data, [tap])),
                                      offsets.dtype, types.intp)
                sources.append(builder.gep(q_at, [builder.add(builder.mul(row, q_row),
                                                              offset)]))
            if pattern is not None:
                # the row above, from which every tap is a multiple of the row stride and a
                # constant column away: two registers address all of them
                above = builder.gep(q_at, [builder.mul(builder.sub(y_v, ir.Constant(intp, 1)),
                                                       q_row)])
            zero = ir.Constant(vector, [0.0] * width)

            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [
                    ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(32),
                    ir.IntType(32)]), "llvm.prefetch.p0i8")

            def prefetch_at(pointer, at, row, write=0):
                # the same element a row further down, read (0) or written (1) by the next
                # row's block: to the second-level cache (locality 2), data (1)
                builder.call(prefetch, [
                    builder.bitcast(builder.gep(pointer, [builder.add(at, row)]),
                                    ir.IntType(8).as_pointer()),
                    ir.Constant(ir.IntType(32), write), ir.Constant(ir.IntType(32), 2),
                    ir.Constant(ir.IntType(32), 1)])

            def taps(label):
                at = builder.mul(label, base_label)
                prefetch_at(base_at, at, base_row_v)
                acc = load(base_at, at)
                label_at = builder.mul(label, q_label)
                if pattern is not None:
                    start = builder.gep(above, [label_at])
                    prefetch_at(start, ir.Constant(intp, 0), builder.mul(
                        q_row, ir.Constant(intp, 3)))
                    values = [load(start, builder.add(
                        builder.mul(q_row, ir.Constant(intp, dy + 1)), ir.Constant(intp, dx)))
                        for dy, dx in pattern]
                else:
                    if sources:  # the last tap reads the newest row (taps go row by row)
                        prefetch_at(sources[-1], label_at, q_row)
                    values = [load(source, label_at) for source in sources]
                return _tap_sum(builder, fmuladd, weights, values, acc)

            minus_inf = ir.Constant(vector, [float("-inf")] * width)

            def first_pass(with_slice):
                """The logits into ``scratch``; returns their maximum over the labels."""
                if with_slice:
                    i32v = ir.VectorType(ir.IntType(32), width)
                    i64v = ir.VectorType(ir.IntType(64), width)
                    columns = builder.load(_vector_pointer(
                        builder, builder.gep(cols_a.data, [x_v]), i64v), align=8)
                    first_column = builder.load(builder.gep(cols_a.data, [x_v]))
                    # the lanes past the block's first coarse column (at most one further)
                    later = builder.icmp_signed("!=", columns, _splat(builder, first_column,
                                                                      i64v, width))
                    left_v = load(left_a.data, x_v)
                    right_v = load(right_a.data, x_v)
                    entries = ir.VectorType(element, PALETTE_LANES)
                    table_label, table_column = strides(tables_a, 3)[:2]
                    table_at = builder.gep(tables_a.data,
                                           [builder.mul(first_column, table_column)])
                if not with_slice:
                    with _carried_loop(builder, labels, [minus_inf]) as (label, loop):
                        acc = taps(label)
                        store(acc, scratch_a.data,
                              builder.mul(label, ir.Constant(intp, width)))
                        prefetch_at(out_at, builder.mul(label, o_label), o_row, write=1)
                        (peak,) = loop.values
                        loop.next = [builder.select(builder.fcmp_unordered(">", acc, peak),
                                                    acc, peak)]
                    return loop.exit[0]
                # two loops: the taps, then the slice; in one, the pointers of both (a
                # dozen) outgrow the registers and spill in the loop
                with _label_loop(builder, labels) as label:
                    store(taps(label), scratch_a.data,
                          builder.mul(label, ir.Constant(intp, width)))
                    prefetch_at(out_at, builder.mul(label, o_label), o_row, write=1)
                with _carried_loop(builder, labels, [minus_inf]) as (label, loop):
                    at = builder.mul(label, ir.Constant(intp, width))
                    acc = load(scratch_a.data, at)
                    # the owners are loaded per label: once hoisted out of the loop, LLVM
                    # extracts them to scalars and the permute pattern is lost
                    index = builder.load(_vector_pointer(
                        builder, builder.gep(owner_a.data, [x_v]), i32v), align=4)
                    row_at = builder.gep(table_at, [builder.mul(label, table_label)])
                    looked = [_permute(builder, index, builder.load(_vector_pointer(
                        builder, builder.gep(row_at, [builder.mul(
                            ir.Constant(intp, k), table_column)]), entries),
                        align=itemsize), vector, width) for k in range(3)]
                    low = builder.select(later, looked[1], looked[0])
                    high = builder.select(later, looked[2], looked[1])
                    acc = builder.call(fmuladd, [left_v, low, acc])
                    acc = builder.call(fmuladd, [right_v, high, acc])
                    store(acc, scratch_a.data, at)
                    (peak,) = loop.values
                    loop.next = [builder.select(builder.fcmp_unordered(">", acc, peak), acc,
                                                peak)]
                return loop.exit[0]

            # the first pass with or without the slice (the same for a whole call)
            with builder.if_else(slice_on) as (then, otherwise):
                with then:
                    then_peak = first_pass(True)
                    then_block = builder.basic_block
                with otherwise:
                    else_peak = first_pass(False)
                    else_block = builder.basic_block
            peak = builder.phi(vector)
            peak.add_incoming(then_peak, then_block)
            peak.add_incoming(else_peak, else_block)

            if dtype == types.float32:
                # exp(x - peak) = 2**(x * log2(e) - peak * log2(e)): a multiply-add and the
                # base-2 polynomial, 4 vector operations fewer than exp's; the rounding of
                # peak * log2(e) shifts every label alike, which the normalization cancels
                log2e = ir.Constant(vector, [float(np.float32(_exp._LOG2E))] * width)
                shift = builder.fneg(builder.fmul(peak, log2e))
            with _carried_loop(builder, labels, [zero]) as (label, loop):
                at = builder.mul(label, ir.Constant(intp, width))
                if dtype == types.float32:
                    value = _exp2_vector_float32(builder, builder.call(
                        fmuladd, [load(scratch_a.data, at), log2e, shift]), vector, width)
                else:
                    value = _exp_vector_float64(
                        builder, builder.fsub(load(scratch_a.data, at), peak), vector, width)
                store(value, scratch_a.data, at)
                loop.next = [builder.fadd(loop.values[0], value)]
            inverse = builder.fdiv(ir.Constant(vector, [1.0] * width), loop.exit[0])
            with _label_loop(builder, labels) as label:
                value = load(scratch_a.data, builder.mul(label, ir.Constant(intp, width)))
                store(builder.fmul(value, inverse), out_at, builder.mul(label, o_label))
            return context.get_dummy_value()

        return signature, codegen

    return block


# The fused blocks the kernel takes (window taps padded with zero weights up to 2, 4 or 8).
fused_block0 = _make_fused_block(0)
fused_block2 = _make_fused_block(2)
fused_block4 = _make_fused_block(4)
fused_block8 = _make_fused_block(8)
#: The taps of a 3x3 window at dilation 1 (the default terms), as ``pairwise_weights`` orders
#: them, and those of a "+" (``FAST_PAIRWISE``: its 1x3 term, then its 3x1).
SQUARE_TAPS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
CROSS_TAPS = ((0, -1), (0, 1), (-1, 0), (1, 0))
fused_square = _make_fused_block(8, SQUARE_TAPS)
fused_cross = _make_fused_block(4, CROSS_TAPS)
