"""Dask workload: the bilateral filter on an image that is never held in memory.

* B-dask: a 16384 x 16384 float32 RGB image built lazily, chunks of 2048 x 2048 x 3 (48 MiB),
  :func:`pacarray.bilateral_filter` with radius 4 (sigma_spatial 3, sigma_color 0.1, disk, L1,
  mode "mirror": exactly OpenCV's filter), computed on a ``dask.distributed.LocalCluster`` of 2
  single-threaded worker processes with one Numba thread each. The timed call computes the sum
  of every output block, so the 3 GiB result never travels to the client; both peers produce
  the same sums.

  The image is ``dask.array.from_array`` of :class:`LazyImage`, an array-like that computes
  any region it is asked for (uniform values from a hash of each element's index, about 4.5 ms
  of CPU per megapixel on the 2-core Zen 4 machine) and stores nothing: it stands for a Zarr
  or HDF5 store, which Dask also reads through ``from_array``, and both peers get the same
  Dask array. pacarray's tasks read their block with its halo from it in one piece
  (``pacarray._dask._source``); ``map_overlap`` reads the blocks and assembles the halos from
  the neighbours, as Dask does for any array. Until 2026-12-03 the image was
  ``dask.array.random`` (no region reads), on which pacarray takes the same ``overlap`` path as
  the OpenCV peer: then pacarray's workers held rows of blocks (650-760 MiB each) and spent 70
  ms of CPU per megapixel more than the in-memory call (``docs/guide/dask.md``).

Peers, measured in the same run:

* ``map_overlap + cv2.bilateralFilter``: the same data and chunks through
  ``dask.array.map_overlap(..., depth=4, boundary="none")`` around ``cv2.bilateralFilter`` (one
  OpenCV thread per worker), on a second cluster like the first: what a user writes today.
  Same result (reference). Target: pacarray at least 1.5 x its throughput, i.e. a time ratio
  <= 0.667.
* ``in-memory 4096 tile``: pacarray's in-memory call on one 4096 x 4096 tile of the same image
  with 2 Numba threads (the same two cores). It filters 16 times fewer pixels, so the time ratio
  that means "at least 80 % of the in-memory throughput" is 16 / 0.8 = 20.

The notes report both throughputs in megapixels per second, the scheduler overhead (Dask time
over 16 in-memory tiles: 1 means none) and each worker's peak resident memory during the call
(the high-water mark ``VmHWM``, reset before the call) above two bases: its resident size just
before the call (what the call's live data adds; one chunk is 48 MiB) and its resident size
when idle, after a small warm-up call (which also counts what the worker kept from earlier
calls: the allocator's free memory, Dask's and Python's own), all from the calls' own
timings, which include the harness's warm-up and untimed opening runs.

``--quick`` runs 96 x 96 pixels in chunks of 32 on Dask's threaded scheduler, without a
cluster (the smoke test builds every workload inside the test process).
"""

from __future__ import annotations

import atexit
import importlib
import os
import statistics
import time

import numpy as np

from ._harness import THREADS, Case, Context, Peer, Workload

RADIUS, SIGMA_SPATIAL, SIGMA_COLOR = 4, 3.0, 0.1
KEYWORDS = dict(sigma_spatial=SIGMA_SPATIAL, sigma_color=SIGMA_COLOR, radius=RADIUS,
                window="disk", color_distance="l1", mode="mirror", channel_axis=-1)
SIZE, CHUNK, TILE, WORKERS = 16384, 2048, 4096, 2
WORKER_MALLOC_THRESHOLD = 4 << 20
QUICK_SIZE, QUICK_CHUNK, QUICK_TILE = 96, 32, 32


_MIX1, _MIX2, _LOW32 = np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35), np.uint64(0xFFFFFFFF)


def _hash_fill(out, row0, col0, width, seed):
    """``out[i, j, c]`` = a uniform float32 in [0, 1) from a 32-bit hash (MurmurHash3's
    finalizer) of the element's flat index ``((row0 + i) * width + col0 + j) * C + c`` plus
    ``seed``: the same value whichever region holds the element. The arithmetic is in uint64
    with the low 32 bits kept, because Numba widens uint32 arithmetic."""
    rows, cols, channels = out.shape
    scale = np.float32(1.0 / (1 << 24))
    for i in range(rows):
        for j in range(cols):
            base = np.uint64(((row0 + i) * width + col0 + j) * channels)
            for c in range(channels):
                h = (base + np.uint64(c) + seed) & _LOW32
                h ^= h >> np.uint64(16)
                h = (h * _MIX1) & _LOW32
                h ^= h >> np.uint64(13)
                h = (h * _MIX2) & _LOW32
                h ^= h >> np.uint64(16)
                out[i, j, c] = np.float32(h >> np.uint64(8)) * scale


_compiled_fill = None


class LazyImage:
    """A ``(H, W, C)`` float32 array-like whose values are computed on each read, never stored:
    uniform in [0, 1), a hash of each element's index and ``seed`` (so any region reads the same
    values as the whole). ``dask.array.from_array`` reads it like a Zarr or HDF5 dataset."""

    def __init__(self, shape, seed=0):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.seed = int(seed)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        bounds = []
        for axis, (item, size) in enumerate(zip(key, self.shape)):
            if not isinstance(item, slice):
                raise TypeError(f"LazyImage reads slices only, got {item!r} on axis {axis}")
            start, stop, step = item.indices(size)
            if step != 1:
                raise ValueError(f"LazyImage reads slices of step 1, got {item!r}")
            bounds.append((start, max(start, stop)))
        (r0, r1), (c0, c1), (k0, k1) = bounds
        out = np.empty((r1 - r0, c1 - c0, self.shape[2]), dtype=np.float32)
        global _compiled_fill
        if _compiled_fill is None:
            import numba

            _compiled_fill = numba.njit(cache=True, nogil=True)(_hash_fill)
        _compiled_fill(out, r0, c0, self.shape[1], np.uint64(self.seed))
        return out[:, :, k0:k1] if (k0, k1) != (0, self.shape[2]) else out


def _block_sum(block):
    """One float64 sum per block (keeps the block's rank)."""
    return np.full((1,) * block.ndim, block.sum(dtype=np.float64))


def _cv2_bilateral(block):
    import cv2

    return cv2.bilateralFilter(block, 2 * RADIUS + 1, SIGMA_COLOR, SIGMA_SPATIAL)


def _worker_setup():
    """One OpenCV thread per worker (Numba's comes from the workers' environment)."""
    import cv2

    cv2.setNumThreads(1)


def _status_kib(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _before_call():
    """On a worker: reset the resident high-water mark; ``(VmRSS KiB or 0 where the mark cannot
    be reset, CPU seconds so far)``."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        resident = _status_kib("VmRSS")
    except OSError:
        resident = 0
    return resident, time.process_time()


def _idle_resident():
    """On a worker: its resident KiB once a small filter call has loaded the kernels and the
    call's arrays are freed: the base that the peak memory notes count from."""
    import gc

    from pacarray.filters import bilateral_filter

    bilateral_filter(LazyImage((64, 64, 3))[:, :], **KEYWORDS)
    gc.collect()
    return _status_kib("VmRSS")


def _after_call():
    """On a worker: ``(VmHWM KiB, CPU seconds so far)``."""
    return _status_kib("VmHWM"), time.process_time()


def _block_sums(lazy):
    import dask.array as da

    return da.map_blocks(_block_sum, lazy, dtype=np.float64,
                         chunks=tuple((1,) * len(c) for c in lazy.chunks))


def _cluster():
    """A LocalCluster of single-threaded worker processes, one Numba thread each, on loopback;
    closed when the process exits. ``None`` when dask.distributed is missing."""
    try:
        distributed = importlib.import_module("distributed")
    except ImportError:
        return None
    import dask

    environment = {name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # glibc's allocator, set where glibc reads it: when the process starts. LocalCluster's
    # ``env=`` is applied later, so these go through the nanny's pre-spawn environment, whose
    # default, MALLOC_TRIM_THRESHOLD_=65536, gives the heap back after every block; its pages
    # then fault in again on the next: 3900 faults and 8-10 ms of system CPU per megapixel.
    # Here blocks of 4 MiB and more come from mmap and go back to the system when freed, so a
    # worker holds its live chunks; 570 faults and 2-4 ms per megapixel. Thresholds of 64 MiB
    # save those but left 110-120 MiB per worker (measured, docs/guide/dask.md).
    environment.update({name: str(WORKER_MALLOC_THRESHOLD) for name in (
        "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")})
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}):
            cluster = distributed.LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=40,
            )
    finally:
        # The nanny writes the pre-spawn variables into this process's environment too (to
        # pass them on); the in-memory peer and later clusters must not see them.
        os.environ.clear()
        os.environ.update(saved)
    client = distributed.Client(cluster, set_as_default=False)

    def close():
        client.close()
        cluster.close()

    atexit.register(close)
    return client


class _Recorder:
    """Wall and CPU times of the calls, and the workers' peak extra memory, written into the
    notes. CPU time (the workers' for a cluster call, this process's for the in-memory one)
    depends much less than wall time on what else runs on a shared machine."""

    def __init__(self, notes, pixels, tile_pixels):
        self.notes, self.pixels, self.tile_pixels = notes, pixels, tile_pixels
        self.seconds: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        # per worker: (peak above the size before the call, peak above the idle size), MiB
        self.memory: dict[str, list[tuple[float, float]]] = {}
        self.fixed = list(notes)

    def timed(self, name, call, client):
        """``call`` timed; ``client`` is the cluster it runs on (None: in this process)."""
        on_cluster = client is not None
        idle = client.run(_idle_resident) if on_cluster else {}

        def run():
            if on_cluster:
                before = client.run(_before_call)
            else:
                before = {"": (0, time.process_time())}
            start = time.perf_counter()
            result = call()
            self.seconds.setdefault(name, []).append(time.perf_counter() - start)
            after = client.run(_after_call) if on_cluster else {"": (0, time.process_time())}
            self.cpu.setdefault(name, []).append(
                sum(after[w][1] - before[w][1] for w in after if w in before))
            if on_cluster:
                self.memory[name] = [
                    ((after[w][0] - before[w][0]) / 1024,
                     (after[w][0] - idle.get(w, before[w][0])) / 1024)
                    for w in sorted(after) if w in before and before[w][0]]
            self._write()
            return result

        return run

    @staticmethod
    def _median(values):
        return statistics.median(values[1:] if len(values) > 1 else values) if values else None

    def _write(self):
        lines = list(self.fixed)
        rates = {}
        cpu = {}
        for name, pixels in (("pacarray", self.pixels), ("cv2", self.pixels),
                             ("tile", self.tile_pixels)):
            seconds = self._median(self.seconds.get(name, []))
            if seconds:
                rates[name] = pixels / seconds / 1e6
            seconds = self._median(self.cpu.get(name, []))
            if seconds:
                cpu[name] = seconds / (pixels / 1e6)
        if rates:
            lines.append("throughput (median of the calls after the first): " + ", ".join(
                f"{name} {rate:.1f} MP/s" for name, rate in rates.items()))
        if cpu:
            lines.append("CPU time per megapixel (all threads, workers' for the cluster "
                         "calls): " + ", ".join(f"{name} {ms * 1e3:.0f} ms"
                                                for name, ms in cpu.items()))
        if "pacarray" in rates and "tile" in rates:
            lines.append(f"scheduler overhead: {rates['tile'] / rates['pacarray']:.2f} "
                         f"(Dask time / in-memory time for the same pixels; 1 = none); Dask "
                         f"reaches {100 * rates['pacarray'] / rates['tile']:.0f} % of the "
                         "in-memory throughput (goal >= 80 %)")
        if "pacarray" in rates and "cv2" in rates:
            lines.append(f"pacarray / map_overlap+OpenCV throughput: "
                         f"{rates['pacarray'] / rates['cv2']:.2f} x (goal >= 1.5 x)")
        for name, peaks in self.memory.items():
            lines.append(f"peak memory per worker, {name}, above its resident size before the "
                         "call / when idle: " + ", ".join(f"{during:.0f} / {idle:.0f} MiB"
                                                          for during, idle in peaks))
        self.notes[:] = lines


def _build(context: Context) -> Case:
    from pacarray.filters import bilateral_filter

    size, chunk, tile = ((QUICK_SIZE, QUICK_CHUNK, QUICK_TILE) if context.quick
                         else (SIZE, CHUNK, TILE))
    try:
        da = importlib.import_module("dask.array")
    except ImportError:
        image = context.rng().random((tile, tile, 3), dtype=np.float32)
        return Case(call=lambda: bilateral_filter(image, **KEYWORDS),
                    label=f"bilateral_filter RGB {tile}x{tile} in memory (Dask missing)",
                    notes=["Dask not installed (pip install 'pacarray[dask]'): only the "
                           "in-memory tile was timed"])
    image = da.from_array(LazyImage((size, size, 3), context.seed), chunks=(chunk, chunk, 3))
    # Each peer has a cluster of its own, alike, so that neither inherits what the other's
    # calls left in the workers' memory.
    client = None if context.quick else _cluster()
    notes = [f"{size}x{size} RGB float32 built lazily, chunks {chunk}x{chunk}x3, radius "
             f"{RADIUS}; the call computes one sum per output block"]
    if client is None:
        notes.append("threaded scheduler (no cluster: --quick, or dask.distributed missing)")

        def compute(lazy, client):
            return lazy.compute(scheduler="threads", num_workers=WORKERS)
    else:
        notes.append(f"LocalCluster per peer: {WORKERS} worker processes x 1 thread, 1 Numba "
                     "thread each; the machine may be shared and noisy")

        def compute(lazy, client):
            return client.compute(lazy).result()
    sums = _block_sums(bilateral_filter(image, **KEYWORDS))
    tile_image = image[:tile, :tile].compute(scheduler="sync")
    recorder = _Recorder(notes, size * size, tile * tile)
    case = Case(
        call=recorder.timed("pacarray", lambda: compute(sums, client), client),
        label=f"bilateral_filter on Dask, {size}x{size} RGB, r={RADIUS}",
        notes=notes,
    )
    cv2 = importlib.import_module("cv2") if context.peers and _has("cv2") else None
    if cv2 is not None:
        peer_client = None if client is None else _cluster()
        if peer_client is not None:
            peer_client.run(_worker_setup)
        peer = _block_sums(da.map_overlap(_cv2_bilateral, image, depth={0: RADIUS, 1: RADIUS},
                                          boundary="none", dtype=np.float32))
        case.peers.append(Peer(
            "map_overlap + cv2.bilateralFilter",
            recorder.timed("cv2", lambda: compute(peer, peer_client), peer_client),
            role="same result", target=round(1 / 1.5, 3), reference=True,
        ))
    else:
        notes.append("OpenCV peer skipped (turned off, or pip install opencv-python-headless)")
    case.peers.append(Peer(
        f"in-memory {tile} tile",
        recorder.timed("tile", lambda: bilateral_filter(tile_image, **KEYWORDS), None),
        role=f"{(size // tile) ** 2}x fewer pixels, {THREADS} Numba threads",
        target=(size // tile) ** 2 / 0.8,
    ))
    recorder.fixed = list(notes)
    return case


def _has(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


WORKLOADS = [
    Workload("B-dask", "bilateral_filter r=4 on a lazy 16384x16384 RGB Dask array, LocalCluster "
             "of 2 workers, vs map_overlap + OpenCV and the in-memory call",
             _build),
]
