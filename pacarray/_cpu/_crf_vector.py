"""Vector blocks of the fused PAC-CRF step with a palette term (``docs/design.md`` §2 and §4).

Two inner loops of :func:`pacarray._cpu._crf_kernels.mean_field_step_palette` do not come out
of Numba's loop vectorizer in a useful form, so each is written directly in LLVM IR, as a Numba
``intrinsic`` inlined into the kernel (and cached with it), on vectors of the host's widest
register (:data:`pacarray._cpu._microkernel.VECTOR_BYTES`):

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

``llvm.fmuladd`` is a multiply-add that LLVM fuses where the CPU has FMA, as the ``contract``
flag does in the other kernels; the sums run in a fixed order, whatever the thread count.

Numba's on-disk cache keys a kernel on its own source file only: after editing this module,
clear the cache (``NUMBA_CACHE_DIR``, or the ``__pycache__`` folders) so that the kernels that
inline it are compiled again.
"""

from __future__ import annotations

import contextlib

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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


@contextlib.contextmanager
def _label_loop(builder, count):
    """``for label in range(count)`` in IR, marked not to be unrolled: LLVM would otherwise
    unroll it for Zen (whose loop buffer it models), give each tap's source its own pointer
    per copy and run out of registers (spilling pointers to the stack in the loop)."""
    intp = count.type
    module = builder.module
    entry = builder.basic_block
    body = builder.append_basic_block("labels.body")
    done = builder.append_basic_block("labels.done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(intp, 0)), body, done)
    builder.position_at_end(body)
    index = builder.phi(intp)
    index.add_incoming(ir.Constant(intp, 0), entry)
    yield index
    following = builder.add(index, ir.Constant(intp, 1))
    index.add_incoming(following, builder.basic_block)
    branch = builder.cbranch(builder.icmp_signed("<", following, count), body, done)
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop = module.add_metadata([None, disable])
    loop.operands = (loop, disable)  # loop metadata refers to itself
    branch.set_metadata("llvm.loop", loop)
    builder.position_at_end(done)


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
                # two chains of multiply-adds (the first half onto the base, the second from
                # its first product), added at the end: half the latency of one chain
                half = (count + 1) // 2
                for weight, value in zip(weights[:half], values[:half]):
                    acc = builder.call(fmuladd, [weight, value, acc])
                if count > 1:
                    other = builder.fmul(weights[half], values[half])
                    for weight, value in zip(weights[half + 1:], values[half + 1:]):
                        other = builder.call(fmuladd, [weight, value, other])
                    acc = builder.fadd(acc, other)
                builder.store(acc, target, align=itemsize)
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
            # LLVM turns this pattern into one variable permute (vpermps on x86).
            result = ir.Constant(vector, None)
            for lane in range(width):
                which = builder.extract_element(index, ir.Constant(i32, lane))
                result = builder.insert_element(result, builder.extract_element(row, which),
                                                ir.Constant(i32, lane))
            return result

        target = _vector_pointer(builder, builder.gep(out_a.data, [x_v]), vector)
        acc = builder.load(target, align=itemsize)
        acc = builder.call(fmuladd, [load(left_a, vector, itemsize), lookup(lower), acc])
        acc = builder.call(fmuladd, [load(right_a, vector, itemsize), lookup(upper), acc])
        builder.store(acc, target, align=itemsize)
        return context.get_dummy_value()

    return signature, codegen
