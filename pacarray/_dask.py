"""Dask arrays through pacarray's public forward functions (``docs/design.md`` §6).

:func:`pacarray._dispatch.delegate_lazy` sends a call here when one of its top-level arguments is
a Dask array; the function of the same name below returns a lazy Dask array (NumPy or CuPy
chunks, whatever the data's chunks are) whose every task is one in-memory call of the public
function.

How one output block is computed, per spatial axis:

* The data's chunks are the blocks. Each per-pixel argument (data, guide, mask, certainty,
  explicit kernel, CRF features) is rechunked to blocks that line up with the data's: the same
  edges on the same grid, the edges times the factor on a finer output grid (transposed
  convolution, joint upsampling), the edges divided by the stride on a strided output grid. The
  channel (label) axis is never split: it is rechunked whole, because every output reads every
  channel. The batch axis keeps the data's chunks.
* Each block carries a halo (``dask.array.overlap.overlap`` with ``boundary="none"``) as wide as
  the receptive field: the dilated kernel radius plus the smoothing of the centre feature, the
  bilateral radius, ``num_steps`` times the largest reach of the CRF's terms (blur included).
  An argument that is ``dask.array.from_array`` of an array-like reading any region (Zarr,
  HDF5, a memory map, a lazy generator; see ``_source``) skips that step: each task reads its
  block with its halo from the array-like in one piece. That saves overlap's slicing and
  concatenation tasks and copies, and no block waits in a worker's memory for its neighbours'
  tasks, so a worker holds a few blocks at a time instead of rows of them.
* The public function runs in memory on the block with its halo and the caller's options, and
  the halo's outputs are cut away. At the image's true edges a block has no halo, so the
  function's own border rule applies there exactly as in the in-memory call; next to an interior
  edge the outputs computed from missing neighbours lie in the halo and are discarded. The
  bilateral filter's ``mode="wrap"`` takes a periodic halo instead.
* Blocks smaller than their halo are merged with a neighbour (the halo may only reach into the
  adjacent block); strided operations move block edges down to multiples of the stride and the
  CRF to multiples of its blur factors, so that every block computes its outputs on the
  in-memory call's grid. The output's chunks follow: ``data chunks / stride``, ``data chunks x
  factor``, or the data's chunks.

Mixing: the per-pixel arguments must all be Dask arrays when one is (an in-memory guide or mask
would be copied into every task of the graph, which pacarray will not decide silently); the small
arguments (``weight``, ``bias``, ``spatial_weight``, ``smooth``, ``compatibility``, family
parameters) must be in-memory (NumPy, CuPy on CuPy chunks, lists) and are sent to every task.
Unknown (NaN) chunk sizes are rejected: call ``compute_chunk_sizes()`` first.

Every call first runs the public function on a tiny all-zero copy of its arguments, on the
calling thread: that raises the in-memory call's errors at once instead of at compute time, and
gives the result's dtype and channel count for the Dask array's metadata.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

import dask.array as da
import numpy as np

from . import _args, _bilateral
from ._bilateral import effective_radius
from ._dispatch import namespace_of
from ._geometry import as_tuple, make_geometry
from ._spec import smoothing_weights

# --------------------------------------------------------------------------------------------
# Per-axis geometry: how the data's blocks map to the output's and how wide each halo is.
# Every rule describes one spatial axis. Arrays live on the input grid ("in") or on the output
# grid ("out"); ``grids(edges)`` maps block edges on the input grid to edges on both,
# ``depths()`` gives the halo (left, right) on each grid, ``window(a0, a1)`` the output-grid
# range that the in-memory call on input range [a0, a1) produces, ``proxy()`` small sizes of both
# grids that make a valid call (the dry run).


@dataclass(frozen=True)
class _Same:
    """Output on the input grid (image filters, CRF): a symmetric halo of ``depth`` pixels."""

    size: int
    depth: int
    align: int = 1
    proxy_size: int = 1

    def grids(self, edges):
        return {"in": edges, "out": edges}

    def depths(self):
        return {"in": (self.depth, self.depth), "out": (0, 0)}

    def window(self, a0, a1):
        return a0, a1

    def proxy(self):
        n = min(self.size, self.proxy_size)
        return {"in": n, "out": n}


@dataclass(frozen=True)
class _Forward:
    """A strided window (``pac_conv``, ``pac_pool``, detail-preserving pooling): output ``i``
    reads inputs ``i*s - p + a*d`` and the smoothed centre ``i*s - p + hs`` +- ``smooth``.

    Block edges are multiples of the stride, so output block ``j`` holds the outputs whose first
    tap, before padding, lies in input block ``j`` (``edges / s``), and a block starting at a
    multiple of the stride computes its outputs on the in-memory grid.
    """

    size: int
    k: int
    s: int
    p: int
    d: int
    smooth: int

    @property
    def align(self):
        return self.s

    @property
    def half(self):
        return self.d * (self.k - 1) // 2

    @property
    def out_size(self):
        return (self.size + 2 * self.p - 2 * self.half - 1) // self.s + 1

    def grids(self, edges):
        inner = tuple(min(e // self.s, self.out_size) for e in edges[:-1])
        return {"in": edges, "out": (*inner, self.out_size)}

    def depths(self):
        left = max(self.p, self.p - self.half + self.smooth)
        left = -(-left // self.s) * self.s  # keeps each block's start a multiple of s
        right = max(2 * self.half - self.p, self.half - self.p + self.smooth) - self.s + 1
        return {"in": (left, max(right, 0)), "out": (0, 0)}

    def window(self, a0, a1):
        start = a0 // self.s
        return start, start + (a1 - a0 + 2 * self.p - 2 * self.half - 1) // self.s + 1

    def proxy(self):
        n = min(self.size, 2 * self.half + 1)
        return {"in": n, "out": max((n + 2 * self.p - 2 * self.half - 1) // self.s + 1, 1)}


@dataclass(frozen=True)
class _Transposed:
    """``pac_conv_transpose``: output ``j`` gathers inputs ``i`` with ``i*s = j + p - a*d``; its
    kernel reads the guide (output grid) at ``j`` +- ``max(hs, smooth)``. Output blocks are the
    input blocks times the stride (the last one up to the output size)."""

    size: int
    k: int
    s: int
    p: int
    d: int
    output_padding: int
    smooth: int
    align: int = 1

    @property
    def half(self):
        return self.d * (self.k - 1) // 2

    def _out(self, n):
        return (n - 1) * self.s - 2 * self.p + 2 * self.half + self.output_padding + 1

    @property
    def out_size(self):
        return self._out(self.size)

    def grids(self, edges):
        return {"in": edges, "out": (*(e * self.s for e in edges[:-1]), self.out_size)}

    def depths(self):
        s, p, half = self.s, self.p, self.half
        guide = max(half, self.smooth)
        # Inputs: those the block's outputs gather, and enough that the call's output grid
        # extends ``guide`` past the block on both sides, so that the kernel's normalization and
        # the centre smoothing see the real guide there instead of the call's grid edge.
        left = max((2 * half - p) // s, -(-guide // s))
        right = max((s - 1 + p) // s,
                    1 - (-(guide + 2 * p - 2 * half - self.output_padding - 1) // s), 0)
        return {"in": (left, right), "out": (guide, guide)}

    def window(self, a0, a1):
        return a0 * self.s, a0 * self.s + self._out(a1 - a0)

    def proxy(self):
        n = min(self.size, 2)
        return {"in": n, "out": self._out(n)}


@dataclass(frozen=True)
class _Upsample:
    """``joint_bilateral_upsample``: sample ``j`` covers output pixels ``[j*f, (j+1)*f)``; an
    output reads the ``radius`` samples around its nearest one and the guide at their
    footprints. Output blocks are the input blocks times the factor."""

    size: int
    out_size: int
    factor: int
    radius: int
    align: int = 1

    def grids(self, edges):
        return {"in": edges,
                "out": (*(e * self.factor for e in edges[:-1]), self.out_size)}

    def depths(self):
        reach = self.radius + 1
        return {"in": (reach, reach), "out": (reach * self.factor, reach * self.factor)}

    def window(self, a0, a1):
        return a0 * self.factor, min(a1 * self.factor, self.out_size)

    def proxy(self):
        n = min(self.size, 2)
        return {"in": n, "out": self.out_size if n == self.size else n * self.factor}


def _plan(chunks, rule):
    """Block edges on the input grid: the data's chunk edges moved down to multiples of
    ``rule.align``, then blocks merged until every block on every grid is at least as wide as
    its halo (the halo comes from the adjacent block only), holds at least one output, and on
    the input grid spans at least ``rule.align`` (a CRF block must hold a whole blur cell)."""
    size = int(sum(chunks))
    cuts = np.cumsum(chunks)[:-1] // rule.align * rule.align
    edges = [0, *sorted({int(c) for c in cuts} - {0, size}), size]
    depths = rule.depths()
    while len(edges) > 2:
        grids = rule.grids(tuple(edges))
        short = None
        for j in range(len(edges) - 1):
            if any(grids[g][j + 1] - grids[g][j]
                   < max(1, rule.align if g == "in" else 1, *depths[g]) for g in grids):
                short = j
                break
        if short is None:
            break
        # Merge with the next block, or the last block with the previous one.
        del edges[short + 1 if short < len(edges) - 2 else short]
    return tuple(edges)


def _regions(edges, depth, periodic):
    """Global ``[start, stop)`` of each block with its halo (``start`` < 0 with a periodic halo,
    which wraps around)."""
    blocks = len(edges) - 1
    left, right = depth
    if periodic:
        return tuple((edges[j] - left, edges[j + 1] + right) for j in range(blocks))
    return tuple(
        (edges[j] - left if j > 0 else edges[0],
         edges[j + 1] + right if j < blocks - 1 else edges[-1])
        for j in range(blocks)
    )


# --------------------------------------------------------------------------------------------
# Arguments


@dataclass(frozen=True)
class _Operand:
    """A per-pixel argument: its Dask array, blockwise index and grid.

    ``index`` has one letter per axis: ``"x"``, ``"yx"`` or ``"zyx"`` the spatial axes (the
    rank's, see :func:`_spatial_letters`), ``"n"`` the batch axis (the data's chunks), any other
    letter an axis taken whole.
    """

    name: str
    array: object
    index: str
    grid: str = "in"
    halo: bool = True

    @property
    def spatial(self):
        return tuple(self.index.index(letter) for letter in _SPATIAL if letter in self.index)


#: Blockwise letters of the spatial axes, depth first; rank r uses the last r of them.
_SPATIAL = "zyx"


def _spatial_letters(rank):
    return _SPATIAL[len(_SPATIAL) - rank:]


def _letters(ndim, spatial, batch=None, fresh=None):
    """A blockwise index: the rank's spatial letters at ``spatial`` (in order), ``n`` at
    ``batch``, fresh letters elsewhere (from the iterator ``fresh``)."""
    names = dict(zip(spatial, _spatial_letters(len(spatial))))
    letters = []
    for axis in range(ndim):
        if axis in names:
            letters.append(names[axis])
        elif axis == batch:
            letters.append("n")
        else:
            letters.append(next(fresh))
    return "".join(letters)


def _fresh():
    return iter("abcdefghijklmpqrstuvw")


def _is_dask(value) -> bool:
    return isinstance(value, da.Array)


def _check_arguments(pixels: dict, small: dict):
    """Per-pixel arguments must be Dask arrays (or None), small ones must not; chunk sizes
    must be known."""
    for name, value in small.items():
        if _is_dask(value):
            raise TypeError(
                f"{name} must be an in-memory array (NumPy, CuPy, a list), got a Dask array: "
                f"it is small and sent whole to every task; pass {name}.compute()"
            )
    primary = next(name for name, value in pixels.items() if _is_dask(value))
    for name, value in pixels.items():
        if value is None or _is_dask(value):
            continue
        raise TypeError(
            f"{name} must be a Dask array like {primary}, got a {type(value).__module__}."
            f"{type(value).__name__}: every per-pixel argument of a Dask call must be a Dask "
            f"array (dask.array.from_array({name}, chunks=...)), so that its blocks travel with "
            f"the data's instead of the whole array being copied into every task"
        )
    for name, value in pixels.items():
        if _is_dask(value) and any(math.isnan(c) for axis in value.chunks for c in axis):
            raise ValueError(
                f"{name} has unknown (NaN) chunk sizes, chunks={value.chunks}; pacarray needs "
                f"them to plan the halos: call {name}.compute_chunk_sizes() first"
            )


def _proxy(operand, sizes):
    """An all-zero in-memory array like ``operand`` with spatial sizes from ``sizes``."""
    shape = list(operand.array.shape)
    letters = _spatial_letters(len(sizes))
    for axis, letter in enumerate(operand.index):
        if letter in letters:
            shape[axis] = sizes[letters.index(letter)][operand.grid]
    xp = namespace_of(operand.array._meta)
    return xp.zeros(tuple(shape), dtype=operand.array.dtype)


def _dry_run(call, operands, rules):
    """``call`` on tiny all-zero arguments: the in-memory call's errors, and its result (for
    the dtype and channel counts)."""
    sizes = [rule.proxy() for rule in rules]
    return call([_proxy(op, sizes) for op in operands], (0,) * len(rules))


def _meta(operands, ndim, dtype):
    xp = namespace_of(operands[0].array._meta)
    return xp.empty((0,) * ndim, dtype=dtype)


def _small(xp, value):
    """A small NumPy argument moved to the blocks' array library (CuPy chunks)."""
    if xp is not np and isinstance(value, np.ndarray):
        return xp.asarray(value)
    return value


# --------------------------------------------------------------------------------------------
# The block task


def _embed(block, axes, have, want):
    """``block`` (covering global ranges ``have`` along ``axes``) cut or zero-extended to the
    ranges ``want``. The zeros only ever feed outputs that are cut away afterwards."""
    if all(h == w for h, w in zip(have, want)):
        return block
    xp = namespace_of(block)
    inside = all(w[0] >= h[0] and w[1] <= h[1] for h, w in zip(have, want))
    source = [slice(None)] * block.ndim
    if inside:
        for axis, (h0, _), (w0, w1) in zip(axes, have, want):
            source[axis] = slice(w0 - h0, w1 - h0)
        return block[tuple(source)]
    shape = list(block.shape)
    target = [slice(None)] * block.ndim
    for axis, (h0, h1), (w0, w1) in zip(axes, have, want):
        shape[axis] = w1 - w0
        lo, hi = max(h0, w0), min(h1, w1)
        source[axis] = slice(lo - h0, max(hi - h0, lo - h0))
        target[axis] = slice(lo - w0, max(hi - w0, lo - w0))
    out = xp.zeros(tuple(shape), dtype=block.dtype)
    out[tuple(target)] = block[tuple(source)]
    return out


def _source(array, operand, batch):
    """``(source, getter keywords)`` when ``array`` is ``dask.array.from_array`` of an array-like
    that reads any region itself (a Zarr or HDF5 dataset, a memory map, a lazy generator) and
    nothing else, so that a task can read its block with its halo in one piece; ``source`` is a
    ``Delayed`` of the graph's one copy of the array-like. ``None`` otherwise (the halo then
    comes from ``dask.array.overlap``), and for a batch axis cut into several chunks (the task
    does not know its batch block)."""
    if "n" in operand.index and batch is not None and len(batch) > 1:
        return None
    from dask.array.core import getter
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    graph = array.__dask_graph__()
    layers = getattr(graph, "layers", None)
    original = "original-" + array.name
    if not isinstance(layers, dict) or set(layers) != {array.name, original}:
        return None
    task = getattr(layers[array.name], "task", None)
    if getattr(task, "func", None) is not getter or len(layers[original]) != 1:
        return None
    value = layers[original].get(original)
    if tuple(getattr(value, "shape", ())) != tuple(array.shape):
        return None
    keywords = dict(getattr(task, "kwargs", {}) or {})
    return Delayed(original, HighLevelGraph({original: layers[original]}, {original: set()})), \
        keywords


def _read(source, keywords, spatial, have):
    """The region ``have`` (global ``[start, stop)`` per spatial axis at positions ``spatial``)
    of the array-like ``source``, every other axis whole, read as ``from_array`` reads."""
    from dask.array.core import getter

    region = [slice(None)] * len(source.shape)
    for axis, (start, stop) in zip(spatial, have):
        region[axis] = slice(start, stop)
    return getter(source, tuple(region), **keywords)


@dataclass(frozen=True)
class _Task:
    """One output block: the operands' blocks with their halos -> the in-memory call -> the
    block's outputs. Picklable (``dask.distributed`` ships it to the workers)."""

    call: object
    rules: tuple  # per spatial axis
    grids: tuple  # per operand: "in" or "out"
    spatial: tuple  # per operand: positions of its spatial axes
    regions: tuple  # per operand, per spatial axis, per block: (start, stop)
    outputs: tuple  # per spatial axis, per block: (start, stop) on the output grid
    out_axes: tuple  # positions of the result's spatial axes
    # per operand: None (its block with its halo comes from the graph) or the keywords of
    # ``dask.array.core.getter`` (it comes as its source, read here; see ``_source``)
    readers: tuple = ()

    def __call__(self, *blocks):
        # One block-number array per spatial axis, then the operands' blocks.
        rank = len(self.rules)
        index = tuple(int(ids[0]) for ids in blocks[:rank])
        blocks = blocks[rank:]
        # The data's block (operand 0) fixes the call's input range and thus its output range.
        windows = tuple(rule.window(*self.regions[0][axis][index[axis]])
                        for axis, rule in enumerate(self.rules))
        arrays = []
        for number, block in enumerate(blocks):
            have = tuple(self.regions[number][axis][index[axis]] for axis in range(rank))
            reader = self.readers[number] if self.readers else None
            if reader is not None:
                block = _read(block, reader, self.spatial[number], have)
            want = have if self.grids[number] == "in" else windows
            arrays.append(_embed(block, self.spatial[number], have, want))
        result = self.call(arrays, tuple(w[0] for w in windows))
        cut = [slice(None)] * result.ndim
        for axis, position in enumerate(self.out_axes):
            start, stop = self.outputs[axis][index[axis]]
            cut[position] = slice(start - windows[axis][0], stop - windows[axis][0])
        return result[tuple(cut)]


def _lazy(call, operands, rules, out_index, dtype, new_axes=None, periodic=False):
    """The lazy result of ``call`` block by block (see the module's docstring).

    ``operands[0]`` is the data, whose chunks decide the blocks; ``out_index`` is the result's
    blockwise index (the rank's spatial letters for its spatial axes, ``n`` for the batch, the
    letter of an operand's whole axis to keep that axis, or letters of ``new_axes``).
    """
    data = operands[0]
    letters = _spatial_letters(len(rules))
    edges = tuple(_plan(data.array.chunks[data.index.index(letter)], rule)
                  for letter, rule in zip(letters, rules))
    grids = tuple(rule.grids(e) for rule, e in zip(rules, edges))
    batch = data.array.chunks[data.index.index("n")] if "n" in data.index else None
    arrays, regions, readers = [], [], []
    for op in operands:
        chunks, depth, boundary, own = {}, {}, {}, []
        for axis, letter in enumerate(op.index):
            if letter in letters:
                chunks[axis] = tuple(np.diff(grids[letters.index(letter)][op.grid]).tolist())
            elif letter == "n":
                chunks[axis] = batch
            else:
                chunks[axis] = -1
        for number, (letter, rule) in enumerate(zip(letters, rules)):
            bounds = grids[number][op.grid]
            single = len(bounds) == 2
            halo = (0, 0) if single or not op.halo else rule.depths()[op.grid]
            if halo != (0, 0):
                position = op.index.index(letter)
                depth[position] = halo if not periodic else halo[0]
                boundary[position] = "periodic" if periodic else "none"
            own.append(_regions(bounds, halo, periodic and not single))
        regions.append(tuple(own))
        source = _source(op.array, op, batch) if depth and not periodic else None
        if source is not None:
            # Each task reads its own block with its halo from the source: no halo tasks, no
            # concatenation, and no block held for its neighbours (docs/design.md §6).
            arrays.append(source[0])
            readers.append(source[1])
            continue
        readers.append(None)
        array = op.array.rechunk(chunks)
        if depth:
            array = da.overlap.overlap(array, depth=depth, boundary=boundary,
                                       allow_rechunk=False)
        arrays.append(array)
    outputs = tuple(
        tuple((g["out"][j], g["out"][j + 1]) for j in range(len(g["out"]) - 1)) for g in grids
    )
    task = _Task(
        call=call, rules=tuple(rules), grids=tuple(op.grid for op in operands),
        spatial=tuple(op.spatial for op in operands), regions=tuple(regions), outputs=outputs,
        out_axes=tuple(out_index.index(letter) for letter in letters),
        readers=tuple(readers) if any(r is not None for r in readers) else (),
    )
    arguments = []
    for letter, e in zip(letters, edges):
        arguments += [da.from_array(np.arange(len(e) - 1), chunks=1), letter]
    for array, op, reader in zip(arrays, operands, readers):
        arguments += [array, None if reader is not None else op.index]
    out_chunks = {letter: tuple(np.diff(g["out"]).tolist()) for letter, g in zip(letters, grids)}
    new_axes = dict(new_axes or {})
    indexed = set(letters).union(*(op.index for op, r in zip(operands, readers) if r is None))
    for op, reader in zip(operands, readers):
        if reader is not None:  # its whole (and single-chunk batch) axes, now unindexed
            new_axes.update({letter: int(op.array.shape[axis])
                             for axis, letter in enumerate(op.index)
                             if letter in out_index and letter not in indexed})
    return da.blockwise(
        task, out_index, *arguments, new_axes=new_axes, adjust_chunks=out_chunks,
        align_arrays=False, concatenate=True, dtype=dtype,
        meta=_meta(operands, len(out_index), dtype), token=f"pacarray-{call.name}",
    )


# --------------------------------------------------------------------------------------------
# Calls of the public functions on one block


@dataclass(frozen=True)
class _Call:
    """``function(**keywords, **{names[i]: arrays[i]})``: the in-memory call of one block."""

    function: object
    names: tuple
    keywords: dict

    @property
    def name(self):
        return self.function.__name__

    def __call__(self, arrays, starts):
        xp = namespace_of(arrays[0])
        keywords = {key: _small(xp, value) for key, value in self.keywords.items()}
        keywords.update(zip(self.names, arrays))
        return self.function(**keywords)


# --------------------------------------------------------------------------------------------
# Arguments by name


def _arguments(function, args, kwargs):
    """Every parameter of the public ``function`` by name, its defaults filled in (its own
    ``TypeError`` for a missing or unknown one). Options this module does not read pass
    through to every block unchanged."""
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _without(arguments, *names):
    return {key: value for key, value in arguments.items() if key not in names}


# --------------------------------------------------------------------------------------------
# Core operations


def _smooth_radius(smooth, have_guide, rank=2):
    """Half sides of the centre-feature smoothing kernel per spatial axis, zeros without one."""
    if smooth is None or not have_guide:
        return (0,) * rank
    weights = smoothing_weights(smooth, ndim=rank)
    shape = np.shape(weights)
    if len(shape) != rank:
        return (0,) * rank  # the dry run raises the in-memory error
    return tuple(int(n) // 2 for n in shape)


def _core(function, args, kwargs, transposed):
    arguments = _arguments(function, args, kwargs)
    x = arguments["x"]
    pixels = {name: arguments[name] for name in ("kernel", "guide", "mask")}
    small = {name: arguments[name] for name in ("weight", "bias", "spatial_weight", "smooth")
             if name in arguments}
    _check_arguments({"x": x, **pixels}, small)
    if getattr(x, "ndim", 0) not in (3, 4, 5):
        raise ValueError(
            "x must be 3-D, 4-D or 5-D with layout (N, C, L), (N, C, H, W) or (N, C, D, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    rank = x.ndim - 2
    names = ("x", *(n for n, v in pixels.items() if v is not None))
    call = _Call(function, names, _without(arguments, *names))
    kernel_size = arguments.get("kernel_size")
    if kernel_size is None:
        shape = np.shape(arguments["weight"])
        if len(shape) != x.ndim:  # the in-memory call's error, on a minimal proxy
            call([namespace_of(x._meta).zeros((*x.shape[:2], *(1,) * rank), x.dtype)],
                 (0,) * rank)
            raise ValueError(f"weight must be {x.ndim}-D (C_out, C, *kernel) for x of shape "
                             f"{tuple(x.shape)}, got shape {shape}")
        kernel_size = shape[2:]
    geometry = make_geometry(kernel_size, arguments["stride"], arguments["padding"],
                             arguments["dilation"], arguments.get("output_padding", 0),
                             transposed, ndim=rank)
    smooth = _smooth_radius(arguments["smooth"], pixels["guide"] is not None, rank)
    rules = []
    for axis in range(rank):
        parts = dict(size=int(x.shape[2 + axis]), k=geometry.kernel_size[axis],
                     s=geometry.stride[axis], p=geometry.padding[axis],
                     d=geometry.dilation[axis], smooth=smooth[axis])
        if transposed:
            rules.append(_Transposed(output_padding=geometry.output_padding[axis], **parts))
        else:
            rules.append(_Forward(**parts))
    fresh = _fresh()
    operands = [_Operand("x", x, _letters(x.ndim, tuple(range(2, x.ndim)), 0, fresh))]
    layouts = {"guide": "(N, F, *spatial)", "mask": "(N, 1, *spatial)",
               "kernel": "(N, 1|C, *kernel, *out)"}
    for name in names[1:]:
        value = pixels[name]
        _args.require_ndim(value, 2 + rank * (2 if name == "kernel" else 1), name,
                           layouts[name])
        index = _letters(value.ndim, tuple(range(value.ndim - rank, value.ndim)), 0, fresh)
        if name == "kernel":  # on the output grid, one value per output: no halo
            operands.append(_Operand(name, value, index, "out", halo=False))
        else:  # the guide's grid: the input's, or the output's for a transposed op
            operands.append(_Operand(name, value, index, "out" if transposed else "in"))
    _check_spatial(operands, rules)
    sample = _dry_run(call, operands, rules)
    return _lazy(call, operands, rules, "no" + _spatial_letters(rank), sample.dtype,
                 new_axes={"o": int(sample.shape[1])})


def _check_spatial(operands, rules):
    """Every operand's spatial shape must be its grid's (the shapes the in-memory call checks
    would be lost on the small arrays of the dry run)."""
    data = operands[0]
    for op in operands[1:]:
        if not op.spatial:  # per image, not per pixel (a palette term's palettes)
            continue
        expected = []
        for rule in rules:
            bounds = rule.grids((0, rule.size))
            expected.append(bounds[op.grid][-1])
        got = tuple(op.array.shape[axis] for axis in op.spatial)
        if got != tuple(expected):
            raise ValueError(
                f"{op.name} must have the spatial shape {tuple(expected)} for {data.name} of "
                f"shape {tuple(data.array.shape)}, got {op.name} of shape "
                f"{tuple(op.array.shape)}"
            )
    if data.array.ndim and 0 in data.array.shape:
        raise ValueError(f"{data.name} must not be empty, got shape {tuple(data.array.shape)}")


def pac_conv(*args, **kwargs):
    from . import ops

    return _core(ops.pac_conv, args, kwargs, transposed=False)


def pac_conv_transpose(*args, **kwargs):
    from . import ops

    return _core(ops.pac_conv_transpose, args, kwargs, transposed=True)


def pac_pool(*args, **kwargs):
    from . import ops

    return _core(ops.pac_pool, args, kwargs, transposed=False)


# --------------------------------------------------------------------------------------------
# Image filters


def _image_axes(image, channel_axis, name="image"):
    """``(spatial axes, channel axis or None)`` of a filter's image (a signal, image or volume,
    with or without channels), with the in-memory errors for a wrong layout."""
    _, axis = _args.channels_first(image, channel_axis, name, ranks=(1, 2, 3))
    return tuple(a for a in range(image.ndim) if a != axis), axis


def _guide_axes(guide, channel_axis, rank):
    """Spatial axes of a filter's guide for an image of ``rank`` spatial axes: ``rank``-D, or
    one more axis with channels along ``channel_axis`` (the last axis when None)."""
    if guide.ndim == rank:
        return tuple(range(rank))
    if guide.ndim == rank + 1:
        axis = (-1 if channel_axis is None else channel_axis) % guide.ndim
        return tuple(a for a in range(guide.ndim) if a != axis)
    raise ValueError(f"guide must be {rank}-D or {rank + 1}-D (the image's {rank} spatial axes, "
                     f"with or without a channel axis), got shape {tuple(guide.shape)}")


def _pixel_radius(arguments, shape):
    """``(radius, pixel sigma)`` per spatial axis by the in-memory filters' rule: ``radius``
    or ``ceil(3 sigma / spacing)`` per axis (``pacarray._bilateral.radius_per_axis``)."""
    rank = len(shape)
    sigmas = _bilateral.per_axis(arguments["sigma_spatial"], "sigma_spatial", rank, shape)
    spacing = _bilateral.per_axis(arguments.get("spacing"), "spacing", rank, shape,
                                  default=1.0)
    pixel_sigma = tuple(s / d for s, d in zip(sigmas, spacing))
    return _bilateral.radius_per_axis(arguments["radius"], pixel_sigma, 3.0, shape), pixel_sigma


def _filter_dtype(*arrays):
    """The image filters' computation dtype (``_args.as_float_image`` on each, then
    ``float_result_dtype``), from the dtypes alone."""
    dtypes = [a.dtype for a in arrays if a is not None]
    dtypes = [d if d.kind == "f" and d.itemsize >= 4 else np.dtype(np.float32) for d in dtypes]
    return np.result_type(*dtypes)


def bilateral_filter(*args, **kwargs):
    from . import filters

    arguments = _arguments(filters.bilateral_filter, args, kwargs)
    image, guide = arguments["image"], arguments["guide"]
    _check_arguments({"image": image, "guide": guide}, {})
    channel_axis, window = arguments["channel_axis"], arguments["window"]
    spatial, _ = _image_axes(image, channel_axis)
    shape = tuple(image.shape[a] for a in spatial)
    radius, pixel_sigma = _pixel_radius(arguments, shape)
    local_radius, local_window = radius, window
    dtype = _filter_dtype(image, guide)
    if dtype in (np.float32, np.float64) and window in ("disk", "square"):
        reach = tuple(effective_radius(r, s, dtype) for r, s in zip(radius, pixel_sigma))
        # Taps beyond ``reach`` weigh exactly 0: a smaller radius with the same taps keeps every
        # block's radius within its own size limit. A disk becomes the box of ``reach`` only
        # when that box lies inside it (the in-memory window test, BilateralProblem._inside).
        if len(set(radius)) == 1:
            inside = sum(r * r for r in reach) <= radius[0] * radius[0]
        else:
            inside = sum((q / r) ** 2 for q, r in zip(reach, radius) if r > 0) <= 1.0
        if reach != radius and (window == "square" or inside):
            local_radius, local_window = reach, "square"
    else:
        reach = radius
    fresh = _fresh()
    operands = [_Operand("image", image, _letters(image.ndim, spatial, None, fresh))]
    names = ("image",)
    if guide is not None:
        operands.append(_Operand("guide", guide, _letters(guide.ndim,
                                                          _guide_axes(guide, channel_axis,
                                                                      len(shape)),
                                                          None, fresh)))
        names += ("guide",)
    keywords = _without(arguments, *names)
    keywords.update(radius=local_radius, window=local_window)
    call = _Call(filters.bilateral_filter, names, keywords)
    rules = [_Same(n, q, proxy_size=2 * q + 1) for n, q in zip(shape, reach)]
    _check_spatial(operands, rules)
    sample = _dry_run(call, operands, rules)
    return _lazy(call, operands, rules, operands[0].index, sample.dtype,
                 periodic=arguments["mode"] == "wrap")


def joint_bilateral_upsample(*args, **kwargs):
    from . import filters

    arguments = _arguments(filters.joint_bilateral_upsample, args, kwargs)
    low, guide, channel_axis = arguments["low"], arguments["guide"], arguments["channel_axis"]
    _check_arguments({"low": low, "guide": guide}, {})
    spatial, _ = _image_axes(low, channel_axis, "low")
    guide_spatial = _guide_axes(guide, channel_axis, len(spatial))
    low_shape = tuple(low.shape[a] for a in spatial)
    high_shape = tuple(guide.shape[a] for a in guide_spatial)
    factors = _args.upsample_factors(arguments["factor"], low_shape, high_shape)
    sigma = _args.positive_scalar(arguments["sigma_spatial"], "sigma_spatial")
    radius = _args.radius_value(arguments["radius"], sigma, 2.0, low_shape)
    fresh = _fresh()
    operands = [
        _Operand("low", low, _letters(low.ndim, spatial, None, fresh)),
        _Operand("guide", guide, _letters(guide.ndim, guide_spatial, None, fresh), "out"),
    ]
    keywords = _without(arguments, "low", "guide")
    keywords.update(factor=factors, radius=radius)  # the whole image's, for every block
    call = _Call(filters.joint_bilateral_upsample, ("low", "guide"), keywords)
    rules = [_Upsample(n, h, f, radius) for n, h, f in zip(low_shape, high_shape, factors)]
    _check_spatial(operands, rules)
    sample = _dry_run(call, operands, rules)
    return _lazy(call, operands, rules, operands[0].index, sample.dtype)


@dataclass(frozen=True)
class _PackedNormalized(_Call):
    """``normalized_convolution`` on one block (``output=None``), both results stacked as
    ``(C + Cc, *S)``."""

    channel_axis: int | None = None
    rank: int = 2

    def __call__(self, arrays, starts):
        result, confidence = super().__call__(arrays, starts)
        xp = namespace_of(result)
        ranks = (self.rank,)
        result, _ = _args.channels_first(result, self.channel_axis, "result", ranks)
        if confidence.ndim == self.rank:
            confidence = confidence[None]
        else:
            confidence, _ = _args.channels_first(confidence, self.channel_axis, "confidence",
                                                 ranks)
        return xp.concatenate([result, confidence.astype(result.dtype, copy=False)])


def _cast_output(block, output):
    return _args.cast_output(namespace_of(block), block, output)


def normalized_convolution(*args, **kwargs):
    from . import filters

    arguments = _arguments(filters.normalized_convolution, args, kwargs)
    data, certainty, guide = arguments["data"], arguments["certainty"], arguments["guide"]
    _check_arguments({"data": data, "certainty": certainty, "guide": guide}, {})
    channel_axis = arguments["channel_axis"]
    spatial, axis = _image_axes(data, channel_axis, "data")
    shape = tuple(data.shape[a] for a in spatial)
    if tuple(certainty.shape) == shape:
        certainty_spatial = tuple(range(len(shape)))
    elif tuple(certainty.shape) == tuple(data.shape) and axis is not None:
        certainty_spatial = spatial
    else:
        raise ValueError(
            f"certainty must have shape {shape} or the data's shape {tuple(data.shape)}, got "
            f"{tuple(certainty.shape)}"
        )
    radius, _ = _pixel_radius(arguments, shape)
    fresh = _fresh()
    operands = [
        _Operand("data", data, _letters(data.ndim, spatial, None, fresh)),
        _Operand("certainty", certainty, _letters(certainty.ndim, certainty_spatial, None,
                                                  fresh)),
    ]
    names = ("data", "certainty")
    if guide is not None:
        operands.append(_Operand("guide", guide, _letters(guide.ndim,
                                                          _guide_axes(guide, channel_axis,
                                                                      len(shape)),
                                                          None, fresh)))
        names += ("guide",)
    output = arguments.get("output")
    keywords = _without(arguments, *names)
    # The blocks pack result and confidence in one float array; ``output`` (the result's cast)
    # is applied after unpacking.
    keywords.update(radius=radius, **({"output": None} if "output" in arguments else {}))
    call = _PackedNormalized(filters.normalized_convolution, names, keywords,
                             channel_axis=axis, rank=len(shape))
    rules = [_Same(n, r, proxy_size=2 * r + 1) for n, r in zip(shape, radius)]
    _check_spatial(operands, rules)
    sample = _dry_run(call, operands, rules)
    if output is not None:  # its errors now, as the in-memory call raises them
        _args.cast_output(np, np.zeros(1, sample.dtype), output)
    channels = 1 if axis is None else data.shape[axis]
    packed = _lazy(call, operands, rules, "P" + _spatial_letters(len(shape)), sample.dtype,
                   new_axes={"P": int(sample.shape[0])})
    result = packed[:channels]
    result = result[0] if axis is None else da.moveaxis(result, 0, axis)
    if output is not None:
        result = result.map_blocks(_cast_output, output,
                                   dtype=_args.cast_output(np, np.zeros(1, sample.dtype),
                                                           output).dtype)
    confidence = packed[channels:]
    if certainty.ndim == len(shape):
        confidence = confidence[0]
    else:
        confidence = da.moveaxis(confidence, 0, axis)
    return result, confidence


def detail_preserving_pool(*args, **kwargs):
    from . import pooling

    arguments = _arguments(pooling.detail_preserving_pool, args, kwargs)
    image = arguments["image"]
    _check_arguments({"image": image}, {name: arguments[name]
                                        for name in ("alpha", "lambda_", "smooth")})
    spatial, _ = _image_axes(image, arguments["channel_axis"])
    rank = len(spatial)
    sizes = _args.int_tuple(arguments["size"], "size", rank)
    stride = arguments["stride"]
    strides = sizes if stride is None else _args.int_tuple(stride, "stride", rank)
    smooth_radius = _smooth_radius(arguments["smooth"], True, rank)
    keywords = _without(arguments, "image")
    keywords.update(size=sizes, stride=strides)
    call = _Call(pooling.detail_preserving_pool, ("image",), keywords)
    shape = tuple(int(image.shape[a]) for a in spatial)
    # The in-memory call's shape errors, which its dry run on a small proxy could not see.
    if any(k % 2 == 0 for k in sizes):
        raise ValueError(f"size must be odd (the window has a centre pixel), got {sizes}")
    if any(k > n for k, n in zip(sizes, shape)):
        raise ValueError(f"size {sizes} is larger than the image's spatial shape {shape}")
    rules = [_Forward(size=n, k=k, s=s, p=0, d=1, smooth=r)
             for n, k, s, r in zip(shape, sizes, strides, smooth_radius)]
    operands = [_Operand("image", image, _letters(image.ndim, spatial, None, _fresh()))]
    sample = _dry_run(call, operands, rules)
    return _lazy(call, operands, rules, operands[0].index, sample.dtype)


@dataclass(frozen=True)
class _Features(_Call):
    """``color_position_features`` on one block, coordinates of the whole image."""

    sigma_spatial: tuple = (1.0, 1.0)  # per spatial axis
    spacing: tuple = (1.0, 1.0)

    def __call__(self, arrays, starts):
        features = super().__call__(arrays, starts)
        xp = namespace_of(features)
        dtype = features.dtype
        spatial = features.shape[2:]
        rank = len(spatial)
        # The same arithmetic as the in-memory call, on the block's global coordinates.
        for axis, (start, size, sigma, step) in enumerate(
                zip(starts, spatial, self.sigma_spatial, self.spacing)):
            if step == 1.0:
                coordinate = xp.arange(start, start + size, dtype=dtype) / dtype.type(sigma)
            else:
                coordinate = xp.asarray(np.arange(start, start + size) * step / sigma,
                                        dtype=dtype)
            shape = [1] * rank
            shape[axis] = size
            features[0, features.shape[1] - rank + axis] = coordinate.reshape(shape)
        return features


def color_position_features(*args, **kwargs):
    from . import features

    arguments = _arguments(features.color_position_features, args, kwargs)
    image = arguments["image"]
    _check_arguments({"image": image}, {"sigma_color": arguments["sigma_color"]})
    spatial, _ = _image_axes(image, arguments["channel_axis"])
    shape = tuple(int(image.shape[a]) for a in spatial)
    sigmas = _bilateral.per_axis(arguments["sigma_spatial"], "sigma_spatial", len(shape), shape)
    spacing = _bilateral.per_axis(arguments["spacing"], "spacing", len(shape), shape,
                                  default=1.0)
    call = _Features(features.color_position_features, ("image",),
                     _without(arguments, "image"), sigma_spatial=sigmas, spacing=spacing)
    rules = [_Same(image.shape[a], 0) for a in spatial]
    operands = [_Operand("image", image, _letters(image.ndim, spatial, None, _fresh()))]
    sample = _dry_run(call, operands, rules)
    return _lazy(call, operands, rules, "NF" + _spatial_letters(len(shape)), sample.dtype,
                 new_axes={"N": 1, "F": int(sample.shape[1])})


# --------------------------------------------------------------------------------------------
# PAC-CRF


def _crf_reach(term, rank=2):
    """How far (per axis of ``rank``, in pixels) one mean-field update reads for this term:
    the dilated window, and for a blurred term the window on the coarse grid plus the block
    means and the interpolation around it; for a palette term the Gaussian's cells plus the
    interpolation's and the sender's own cell."""
    from . import _palette, crf

    if isinstance(term, crf.PaletteTerm):
        cell = term.grid_cell
        cells = int(max(cell, _palette.TRUNCATE * float(term.sigma_spatial)) // cell)
        return [(cells + 2) * cell] * rank
    size = as_tuple(term.kernel_size, "kernel_size", rank)
    dilation = as_tuple(term.dilation, "dilation", rank)
    reach = []
    for k, d in zip(size, dilation):
        half = d * (k - 1) // 2
        reach.append(half if term.blur == 1 else (half + 2) * term.blur - 1)
    return reach


@dataclass(frozen=True)
class _CRFCall(_Call):
    """``pac_crf`` on one block, the terms' Dask features replaced by their blocks."""

    terms: tuple = ()
    feature_terms: tuple = ()  # indices of the terms whose features are operands
    palette_terms: tuple = ()  # indices of the palette terms whose palettes are operands

    def __call__(self, arrays, starts):
        count = len(self.feature_terms) + len(self.palette_terms)
        own = arrays[:len(arrays) - count]
        extra = arrays[len(own):]
        terms = list(self.terms)
        for number, block in zip(self.feature_terms, extra):
            terms[number] = dataclasses.replace(terms[number], features=block)
        for number, block in zip(self.palette_terms, extra[len(self.feature_terms):]):
            terms[number] = dataclasses.replace(terms[number], palette=block)
        xp = namespace_of(own[0])
        keywords = {key: _small(xp, value) for key, value in self.keywords.items()}
        keywords.update(zip(self.names, own))
        return self.function(pairwise=tuple(terms), **keywords)


def _crf_image_axes(image, channel_axis, batched, rank=2):
    """Spatial axes of the CRF's image: ``rank`` spatial axes, plus a channel axis with
    ``channel_axis`` (``(H, W)``, ``(H, W, C)``; ``(D, H, W, C)`` for a volume), with a
    leading batch axis when the unary has one."""
    ndim = rank + (0 if channel_axis is None else 1) + int(batched)
    if image.ndim != ndim:
        spatial = "(H, W)" if rank == 2 else f"{rank} spatial axes"
        raise ValueError(
            f"image must be {spatial}{'' if channel_axis is None else ' and channels'}"
            f"{' with a leading batch axis' if batched else ''} ({ndim}-D) to match the "
            f"{'batched ' if batched else ''}unary, got shape {tuple(image.shape)}"
        )
    if channel_axis is None:
        return (ndim - 2, ndim - 1)
    _args.require_int(channel_axis, "channel_axis")
    if not -ndim <= channel_axis < ndim or (batched and channel_axis % ndim == 0):
        raise ValueError(
            f"channel_axis={channel_axis} is out of range or the batch axis for image shape "
            f"{tuple(image.shape)}"
        )
    axis = channel_axis % ndim
    return tuple(a for a in range(int(batched), ndim) if a != axis)


def _crf_align(term):
    """Block edges must be multiples of this: a blurred term's block size, a palette term's
    cell and sender stride (the grid and the senders stay those of the whole image)."""
    from . import _palette, crf

    if isinstance(term, crf.PaletteTerm):
        cell = term.grid_cell
        return math.lcm(cell, _palette.sender_stride(cell))
    return int(term.blur)


def _crf_palettes(terms, unary, image, channel_axis, layout, rank):
    """The terms with each palette term's palette computed once, from the whole image (or
    features), as the in-memory call computes it: every block then quantizes its colours
    with the same palette. The palettes of a batch, ``(N, P, F)``, reach each block as an
    operand along the batch axis (:class:`_CRFCall`)."""
    from . import _palette, crf

    resolved = []
    for index, term in enumerate(terms):
        if not isinstance(term, crf.PaletteTerm) or term.palette is not None:
            resolved.append(term)
            continue
        appearance = isinstance(term.features, str)
        source = image if appearance else term.features
        if source is None:
            raise ValueError(
                f"pairwise[{index}] is an appearance term (features='appearance'), which needs "
                "the image; pass image="
            )
        if not _is_dask(source):
            resolved.append(term)  # in-memory features: every block gets the whole array
            continue
        batched = layout.batched
        if appearance:
            axes = _crf_image_axes(image, channel_axis, batched, rank)
            channels = [a for a in range(image.ndim) if a not in axes and
                        not (batched and a == 0)]
            order = ([0] if batched else []) + channels + list(axes)
            source = source.transpose(order)
            if not channels:
                source = source[:, None] if batched else source[None]
        elif source.ndim == rank + 1 and batched:
            source = source[None]
        if not batched:
            source = source[None]
        spatial = tuple(int(n) for n in source.shape[2:])
        stride = _palette.sample_stride(spatial)
        sample = np.asarray(source[(slice(None), slice(None))
                                   + (slice(None, None, stride),) * rank].compute())
        # The in-memory call's compute dtype: float64 if the unary or the image is.
        dtype = (np.float64 if any(a is not None and np.dtype(a.dtype) == np.float64
                                   for a in (unary, image)) else np.float32)
        if appearance:
            sample = crf._image_to_float(np, sample, "image").astype(dtype)
            sample = sample / dtype(term.sigma_color)
        else:
            sample = sample.astype(dtype)
        palette = _palette.palettes_of(sample, int(term.colors))
        if appearance:
            palette = palette * float(term.sigma_color)
        resolved.append(dataclasses.replace(term, palette=palette if batched else palette[0]))
    return tuple(resolved)


def pac_crf(*args, **kwargs):
    from . import crf

    arguments = _arguments(crf.pac_crf, args, kwargs)
    unary, image = arguments["unary"], arguments["image"]
    rank = arguments["spatial_ndim"]
    _args.require_int(rank, "spatial_ndim")
    if rank not in (1, 2, 3):
        raise ValueError(f"spatial_ndim must be 1, 2 or 3, got {rank!r}")
    rank = int(rank)
    terms = crf._check_pairwise(arguments["pairwise"])
    feature_terms = tuple(i for i, t in enumerate(terms) if _is_dask(t.features))
    pixels = {"unary": unary, "image": image}
    pixels.update({f"pairwise[{i}].features": t.features for i, t in enumerate(terms)
                   if not isinstance(t.features, str)})
    _check_arguments(pixels, {"compatibility": arguments["compatibility"]})
    layout = crf._unary_layout(tuple(unary.shape), arguments["label_axis"], rank)
    num_steps = arguments["num_steps"]
    _args.require_int(num_steps, "num_steps", minimum=0)
    batched = layout.batched
    spatial = tuple(a for a in range(unary.ndim)
                    if a != layout.label_axis and not (batched and a == 0))
    terms = _crf_palettes(terms, unary, image, arguments["channel_axis"], layout, rank)
    align = math.lcm(*(_crf_align(t) for t in terms)) if terms else 1
    reaches = [_crf_reach(t, rank) for t in terms]
    reach = [max([0, *(r[axis] for r in reaches)]) for axis in range(rank)]
    # ``num_steps`` updates, each reading ``reach`` further; whole blur blocks.
    depths = [-(-int(num_steps) * r // align) * align for r in reach]
    fresh = _fresh()
    batch = 0 if batched else None
    operands = [_Operand("unary", unary, _letters(unary.ndim, spatial, batch, fresh))]
    names = ("unary",)
    if image is not None:
        operands.append(_Operand("image", image, _letters(
            image.ndim, _crf_image_axes(image, arguments["channel_axis"], batched, rank),
            batch, fresh)))
        names += ("image",)
    for number in feature_terms:
        features = terms[number].features
        operands.append(_Operand(f"pairwise[{number}].features", features, _letters(
            features.ndim, tuple(range(features.ndim - rank, features.ndim)),
            0 if features.ndim == rank + 2 else None, fresh)))
    # The task keeps the terms without their Dask features (each block gets its own piece).
    kept = tuple(dataclasses.replace(t, features="appearance" if isinstance(t, crf.PaletteTerm)
                                     else "smoothness") if i in feature_terms else t
                 for i, t in enumerate(terms))
    # Batched palettes travel along the batch axis, one image's palette per image.
    palette_terms = tuple(i for i, t in enumerate(kept) if isinstance(t, crf.PaletteTerm)
                          and batched and t.palette is not None and np.ndim(t.palette) == 3)
    for number in palette_terms:
        palette = da.from_array(np.asarray(kept[number].palette),
                                chunks=(unary.chunks[0], -1, -1))
        operands.append(_Operand(f"pairwise[{number}].palette", palette,
                                 _letters(3, (), 0, fresh)))
    call = _CRFCall(crf.pac_crf, names, _without(arguments, "unary", "image", "pairwise"),
                    terms=kept, feature_terms=feature_terms, palette_terms=palette_terms)
    rules = [_Same(unary.shape[a], depth, align, proxy_size=max(8, align))
             for a, depth in zip(spatial, depths)]
    _check_spatial(operands, rules)
    sample = _dry_run(call, operands, rules)
    out_index = operands[0].index
    if arguments["output"] == "labels":
        out_index = out_index.replace(out_index[layout.label_axis], "")
    return _lazy(call, operands, rules, out_index, sample.dtype)
