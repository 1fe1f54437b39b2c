"""The exponential of the CPU kernels: ``exp(x)`` for ``x <= 0``, branch-free so that it vectorizes.

Numba's ``np.exp`` is a scalar libm call unless Intel SVML is installed (the PyPI llvmlite has no
vector ``exp``), and the kernels evaluate one exponential per tap and pixel: the fused adaptive
kernel (``exp(-d2/2)``), the bilateral filters (spatial times range weight) and the CRF (its
messages and its softmax). All of them call :func:`exp_nonpositive`.

Method: ``exp(x) = 2**k * exp(r)`` with ``k = floor(x / ln 2 + 1/2)``, ``|r| <= ln(2)/2`` by a
two-part (Cody-Waite) reduction, ``exp(r)`` by its Taylor polynomial in Horner form (every
multiply-add contracted into an FMA) and ``2**k`` assembled in the exponent bits with integer
adds and shifts, which AVX2 has for 32 and 64-bit lanes (it has no packed float64-to-int64
conversion, which a plain ``int64(k)`` would need).

Accuracy: the largest relative error against ``exp`` in extended precision, measured on 4e7
evenly spaced points of ``[threshold, 0]`` plus every multiple of ``2**-20`` in ``[-1, 0]``
(``tests/test_exp.py`` checks bounds just above these on a coarser grid):

========================  ======  ====================  ==================
arithmetic (``x`` dtype)  degree  largest error         flushed to 0 below
========================  ======  ====================  ==================
float32                   6       2.3e-7 (1.9 eps)      ``x < -69``
float64                   11      8.8e-15 (39 eps)      ``x < -600``
float64, ``np.float32``   7       7.0e-9 (0.06 f32 eps) ``x < -600``
========================  ======  ====================  ==================

The last row is a float32 result evaluated in float64 (with the degree that float32 output
needs), so that a factor applied afterwards meets a single rounding to float32; the fused
adaptive kernel used it until it moved to :func:`gaussian_weight`, whose float32 path runs in
float32 (by :func:`exp2_nonpositive`) at about a third of the time.

The flush thresholds are part of the contract: ``pacarray.filters`` drops the taps whose spatial
weight lies below them, as the kernels would give them exactly 0. They are high enough that no
weight, and no weight times an O(1) value, is subnormal (subnormal operands cost about 100 cycles
each on x86): ``exp(-69) = 1.0e-30`` against float32's smallest normal ``1.2e-38``, and
``exp(-600) = 2.7e-261`` against float64's ``2.2e-308``.

NaN stays NaN (no ``nnan`` fast-math flag, and the selects are written so that a NaN argument
keeps its value). Positive arguments are not flushed and stay accurate up to about 88 (float32)
or 709 (float64); nothing larger reaches the kernels.

Base 2: :func:`exp2_nonpositive` (``2**t``) serves the bilateral kernels, whose argument is
``log2 G - c * d2`` with both parts scaled by ``1/ln 2`` beforehand: the reduction is then
``t = k + f`` with ``k = round(t)`` (a round to nearest, and an add of a shifter that also
carries the exponent bias for the scale ``2**k``) and ``|f| <= 1/2``, with no ``ln 2``
products, and in float32 a degree-5 minimax polynomial of ``2**f`` replaces the degree-6 Taylor
one: 12 vector operations per value (a compare and a blend that send the flushed arguments to
-127, whose scale is 0; the round, two adds, five FMAs, a shift and the multiply by the scale)
instead of 16, besides the argument's own multiply-add. Largest relative error against
``2**t`` (same grids in ``t``, thresholds divided by ``ln 2``): float32 2.2e-7 (1.8 eps; and
``2**0`` is 1); float64 is :func:`exp_nonpositive` of ``t * ln 2``, whose rounding makes it
8.8e-15 times ``max(1, |t|)`` (7.7e-14 at the threshold; the rounding of the argument
``log2 G - c * d2`` itself is as large). Flushed to 0 below
``FLUSH_BELOW_FLOAT32 / ln 2`` (``FLUSH_BELOW_FLOAT64 / ln 2``), the same weights.

Numba's on-disk cache keys a compiled function on its own source file only: after editing this
module, clear the cache (``NUMBA_CACHE_DIR``, or the ``__pycache__`` folders) so that the kernels
that inline it are recompiled.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

#: ``exp_nonpositive(x)`` is exactly 0 for ``x`` below these (by the dtype of ``x``).
FLUSH_BELOW_FLOAT32 = -69.0
FLUSH_BELOW_FLOAT64 = -600.0

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453

#: ``exp2_nonpositive(t)`` is exactly 0 for ``t`` below these (the same weights as above).
FLUSH2_BELOW_FLOAT32 = float(np.float32(FLUSH_BELOW_FLOAT32 * _LOG2E))
FLUSH2_BELOW_FLOAT64 = FLUSH_BELOW_FLOAT64 * _LOG2E

# Minimax polynomial (relative error) of 2**f on [-1/2, 1/2], degree 5, Horner order, by the
# Remez exchange in float64 then rounded to float32 (the constant term to exactly 1): 7.5e-8
# before the rounding, 2.2e-7 with the float32 evaluation (degree 4: 2.6e-6, above float32's
# eps).
_EXP2_FLOAT32 = (1.3276472e-3, 9.675541e-3, 5.5507131e-2, 0.2402212, 0.69314694, 1.0)

# ln 2 = high + low per arithmetic dtype. The high part has so few mantissa bits that k * high is
# exact for every k the thresholds allow (|k| <= 100 in float32, <= 866 in float64), so the
# first step of the reduction is exact.
_LN2_FLOAT32 = (0.693145751953125, 1.428606765330187e-06)
_LN2_FLOAT64 = (0.6931471803691238, 1.9082149292705877e-10)

# Taylor degree by the precision the result is for. The truncation error relative to exp(r),
# |r|**(d+1) / (d+1)! / exp(r) at r = -ln(2)/2, is 1.7e-7 at degree 6 (the float32 roundings add
# the rest of its 2.3e-7), 7.0e-9 at degree 7 (well under half a float32 eps, for float32 results
# evaluated in float64) and 8.9e-15 at degree 11 (float64 results; one more degree would cost a
# multiply-add per exponential for an accuracy that no test or tolerance needs).
_DEGREE_FLOAT32_ARITHMETIC = 6
_DEGREE_FLOAT32_RESULT = 7
_DEGREE_FLOAT64 = 11


@intrinsic
def _bits_of(typingctx, value):
    """The bits of a float32 (float64) as an int32 (int64)."""
    if value == types.float32:
        result, llvm_type = types.int32, ir.IntType(32)
    elif value == types.float64:
        result, llvm_type = types.int64, ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return result(value), codegen


@intrinsic
def _float_of(typingctx, bits):
    """An int32 (int64) read as the bits of a float32 (float64)."""
    if bits == types.int32:
        result, llvm_type = types.float32, ir.FloatType()
    elif bits == types.int64:
        result, llvm_type = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return result(bits), codegen


def _taylor(dtype, degree):
    """Coefficients ``1/degree!, ..., 1/1!, 1/0!`` (Horner order), rounded to ``dtype``."""
    factorials = np.cumprod(np.arange(1, degree + 1, dtype=np.float64))
    return tuple(dtype(c) for c in (1.0 / factorials[::-1]).tolist() + [1.0])


def _result_is_float32(precision):
    """Whether the ``precision`` argument of :func:`exp_nonpositive` asks for float32 accuracy."""
    if precision is None or isinstance(precision, (types.Omitted, types.NoneType)):
        return False
    if isinstance(precision, types.NumberClass):  # np.float32 as a global
        return precision.instance_type == types.float32
    if isinstance(precision, types.DType):  # array.dtype
        return precision.dtype == types.float32
    raise TypeError(f"precision must be None, np.float32/np.float64 or an array's dtype, "
                    f"got {precision}")


def exp_nonpositive(x, precision=None):
    """``exp(x)`` for ``x <= 0``, exactly 0 below the flush threshold of the dtype of ``x``.

    Parameters
    ----------
    x : float32 or float64
        The argument; its dtype is that of the arithmetic and of the result.
    precision : None, np.float32 or an array's dtype, optional
        Only with a float64 ``x`` (ignored otherwise): ``np.float32`` stops the polynomial at
        the degree that a result rounded to float32 needs (7.0e-9 relative instead of 8.8e-15).

    Returns
    -------
    float32 or float64
        As ``x``. This Python version is for reference; compiled code gets the overload.
    """
    x = np.asarray(x)
    lower = FLUSH_BELOW_FLOAT32 if x.dtype == np.float32 else FLUSH_BELOW_FLOAT64
    return np.where(x < lower, x.dtype.type(0.0), np.exp(x))[()]


@overload(exp_nonpositive, jit_options={"fastmath": {"contract"}})
def _exp_nonpositive_overload(x, precision=None):
    # Own fast-math flags, whatever the caller's: contraction into FMA only, so that the result
    # is the same in every kernel (and NaN and Inf keep their IEEE meaning).
    if x == types.float32:
        dtype, int_type, mantissa_bits, bias = np.float32, np.int32, 23, 127
        (ln2_high, ln2_low), lower = _LN2_FLOAT32, FLUSH_BELOW_FLOAT32
        degree = _DEGREE_FLOAT32_ARITHMETIC
    elif x == types.float64:
        dtype, int_type, mantissa_bits, bias = np.float64, np.int64, 52, 1023
        (ln2_high, ln2_low), lower = _LN2_FLOAT64, FLUSH_BELOW_FLOAT64
        degree = _DEGREE_FLOAT32_RESULT if _result_is_float32(precision) else _DEGREE_FLOAT64
    else:
        return None
    coefficients = _taylor(dtype, degree)
    count = len(coefficients)
    log2e, ln2_high, ln2_low = dtype(_LOG2E), dtype(ln2_high), dtype(ln2_low)
    lower, half, zero = dtype(lower), dtype(0.5), dtype(0.0)
    # k + 1.5 * 2**mantissa_bits holds k in its low mantissa bits (k is an integer far below
    # 2**(mantissa_bits - 1)); adding the bias and shifting left by mantissa_bits moves k + bias
    # into the exponent field and pushes every other bit out.
    shifter = dtype(1.5 * 2.0**mantissa_bits)
    bias, shift = int_type(bias), int_type(mantissa_bits)

    def impl(x, precision=None):
        # "not (x < lower)" rather than "x >= lower": a NaN keeps its value, and so gives NaN.
        clamped = x if not (x < lower) else lower
        k = np.floor(clamped * log2e + half)
        r = (clamped - k * ln2_high) - k * ln2_low
        p = coefficients[0]
        for i in range(1, count):
            p = p * r + coefficients[i]
        # For a NaN k the scale is some float, and p (NaN) carries the NaN.
        # (Numba widens int32 arithmetic to int64; the cast keeps the low 32 bits, the same.)
        scale = _float_of(int_type((_bits_of(k + shifter) + bias) << shift))
        value = p * scale
        return zero if x < lower else value

    return impl


def exp2_nonpositive(t):
    """``2**t`` for ``t <= 0``, exactly 0 below the flush threshold of the dtype of ``t``.

    Parameters
    ----------
    t : float32 or float64
        The argument; its dtype is that of the arithmetic and of the result.

    Returns
    -------
    float32 or float64
        As ``t``. This Python version is for reference; compiled code gets the overload.

    Examples
    --------
    >>> float(exp2_nonpositive(np.float32(-3.0)))
    0.125
    >>> float(exp2_nonpositive(np.float32(-200.0)))
    0.0
    """
    t = np.asarray(t)
    lower = FLUSH2_BELOW_FLOAT32 if t.dtype == np.float32 else FLUSH2_BELOW_FLOAT64
    return np.where(t < lower, t.dtype.type(0.0), np.exp2(t))[()]


@overload(exp2_nonpositive, jit_options={"fastmath": {"contract"}})
def _exp2_nonpositive_overload(t):
    if t == types.float64:
        lower, ln2 = np.float64(FLUSH2_BELOW_FLOAT64), np.float64(_LN2)

        def impl64(t):
            # The flush in t: the same set of arguments whatever the rounding of t * ln 2.
            return 0.0 if t < lower else exp_nonpositive(t * ln2)

        return impl64
    if t != types.float32:
        return None
    c5, c4, c3, c2, c1, c0 = (np.float32(c) for c in _EXP2_FLOAT32)
    lower, bottom = np.float32(FLUSH2_BELOW_FLOAT32), np.float32(-127.0)
    # t + 1.5 * 2**23 rounds t to the integer k (|t| < 2**22) and holds it in the low mantissa
    # bits; with the bias 127 added to the shifter they hold k + 127, which a shift left by 23
    # moves into the exponent field (k + 127 is in [27, 127] above the threshold, and 0 for
    # t = -127: the scale is then +0.0).
    shifter = np.float32(1.5 * 2.0**23 + 127)

    def impl32(t):
        # Arguments below the threshold become -127, whose scale 2**k has the exponent field 0:
        # the bits of +0.0, so that p * 0 is the flushed 0 without a select after the
        # polynomial (one compare and one blend instead of a clamp, a compare and a mask: one
        # vector operation less per weight, about 5% of the 3-D filter's pair loops). Every
        # argument left is at least the threshold, so 2**k and p * 2**k stay normal (subnormal
        # products cost a microcode assist each: the 2-D L1 filter of B-bilateral-512 ran 1.7x
        # slower with arguments near -126). "not (t < lower)": a NaN keeps its value, and
        # propagates through f and p.
        t = t if not (t < lower) else bottom
        k = np.rint(t)
        s = k + shifter
        f = t - k
        p = ((((c5 * f + c4) * f + c3) * f + c2) * f + c1) * f + c0
        # (Numba widens int32 arithmetic to int64; the cast keeps the low 32 bits.)
        return p * _float_of(np.int32(_bits_of(s) << 23))

    return impl32


def gaussian_weight(d2, g):
    """``exp(-d2 / 2) * g``: the Gaussian family's tap weight (``d2 >= 0``, ``g`` the spatial
    weight), in the dtype of ``d2``.

    float32: ``2**(-d2 * log2(e) / 2)`` by :func:`exp2_nonpositive` in float32 (16 values per
    AVX-512 vector, 12 vector operations each, about a third of the time of the float64
    evaluation that it replaced; largest relative error about 2 float32 eps plus the rounding of
    the argument, ``|x| * 6e-8`` at ``x = -d2/2``); exactly 0 for ``d2 > 138``. float64:
    :func:`exp_nonpositive`, exactly 0 for ``d2 > 1200``. NaN propagates.

    Examples
    --------
    >>> float(gaussian_weight(np.float32(0.0), np.float32(0.5)))
    0.5
    """
    d2 = np.asarray(d2)
    return (exp_nonpositive(-0.5 * d2) * g)[()]


@overload(gaussian_weight, jit_options={"fastmath": {"contract"}})
def _gaussian_weight_overload(d2, g):
    if d2 == types.float32:
        scale = np.float32(-0.5 * _LOG2E)

        def impl32(d2, g):
            return exp2_nonpositive(scale * d2) * g

        return impl32
    if d2 != types.float64:
        return None

    def impl64(d2, g):
        return exp_nonpositive(-0.5 * d2) * g

    return impl64
