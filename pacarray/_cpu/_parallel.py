"""The CPU kernels' threads: a pool of Python threads running ``nogil`` Numba kernels.

A parallel kernel here is an ordinary ``@njit(nogil=True)`` function that takes, as its last
two arguments, a range ``job_start:job_stop`` of independent jobs (output rows or bands, each
writing its own part of the outputs); the kernels name them so, never ``first``/``stop``,
which their bodies use for other things. :func:`run` splits ``range(jobs)`` into contiguous
chunks, one per thread, and runs them at once; the calling thread, done with its own chunk,
runs any chunk that no pool thread has started yet (all of them busy with other callers'
chunks, or one not yet scheduled on a shared machine) instead of waiting for it. A kernel
whose jobs must not overlap in time
(bands of two colours that write the same input rows) is called once per phase, each
:func:`run` a barrier.

Why not Numba's ``parallel=True`` and ``prange``: the parfor pass compiles the loop body a second
time as a "gufunc" into which LLVM inlines and optimizes the whole kernel again, which made up a
third of the first-call compile time, over half for some functions (``docs/design.md`` §8 has the
numbers). A ``nogil`` kernel is compiled once, and a thread pool costs a few tens of microseconds
per call. The jobs and their order do not depend on the number of threads, so results are
bit-identical for any thread count.

The number of threads is ``numba.get_num_threads()`` of the calling thread, so
``numba.set_num_threads(n)`` and ``NUMBA_NUM_THREADS`` keep their meaning (README, "Threads").
Calls from several Python threads share the pool: its workers are never more than
``NUMBA_NUM_THREADS - 1``, and each calling thread runs one chunk itself.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _reset_after_fork() -> None:
    """A pool inherited through ``fork`` has no threads in the child: start a new one there."""
    global _POOL, _LOCK
    _POOL = None
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pacarray")
        return _POOL


def threads() -> int:
    """Threads a kernel called from this thread may use (Numba's setting for this thread)."""
    return max(1, int(numba.get_num_threads()))


#: Below about this many multiply-adds a call runs on the calling thread alone: handing a
#: chunk to another thread and waiting for it costs some tens of microseconds, about what
#: one core needs for this much work.
SERIAL_WORK = 300_000


def run(kernel, jobs: int, *args, work: float | None = None) -> None:
    """``kernel(*args, first, stop)`` over a split of ``range(jobs)`` into contiguous chunks,
    one per thread, the calling thread running the first and then each chunk no pool thread
    has started (last first); returns when every chunk is done
    (re-raising the first exception). ``work``, an estimate of the multiply-adds of all the
    jobs, keeps small calls on one thread (:data:`SERIAL_WORK`)."""
    jobs = int(jobs)
    if jobs <= 0:
        return
    count = min(threads(), jobs)
    if work is not None and work < SERIAL_WORK:
        count = 1
    if count == 1:
        kernel(*args, 0, jobs)
        return
    bounds = [jobs * i // count for i in range(count + 1)]
    pool = _pool()
    futures = [pool.submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, count)]
    try:
        kernel(*args, bounds[0], bounds[1])
        # A chunk that no pool thread has started yet (its thread not yet scheduled: another
        # process holds the core) is run here rather than waited for, last first.
        for i in range(count - 1, 0, -1):
            if futures[i - 1].cancel():
                kernel(*args, bounds[i], bounds[i + 1])
    finally:
        # Never return (or raise) while another chunk may still write the outputs. A cancelled
        # chunk never runs; ``wait`` would count it as done only once a pool thread dequeued it.
        wait([future for future in futures if not future.cancelled()])
    for future in futures:
        if not future.cancelled():
            future.result()
