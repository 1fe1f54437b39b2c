"""Compile the common CPU kernels ahead of time, in parallel processes (``pacarray warmup``).

Numba compiles a kernel on its first call in a new environment and caches the machine code on
disk (``docs/design.md`` §8). :func:`warmup` makes those first calls on tiny inputs in a pool of
fresh processes, so that a script, a CI job or a notebook started afterwards loads every kernel
from the cache instead of compiling it. The tasks are independent, heaviest first; two tasks that
need the same kernel may both compile it (the cache keeps one copy).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import time

__all__ = ["WARMUP_FUNCTIONS", "warmup"]


def _inputs(dtype):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 9, 10)).astype(dtype)
    guide = rng.random((1, 2, 9, 10)).astype(dtype)
    weight = rng.random((4, 3, 3, 3)).astype(dtype)
    image = rng.random((9, 10, 3)).astype(dtype)
    return np, rng, x, guide, weight, image


def _pac_kernel(dtype):
    import pacarray

    np, _, _, guide, _, _ = _inputs(dtype)
    kernel = pacarray.pac_kernel(guide, 3, padding=1, normalize="kernel")
    pacarray.pac_kernel_vjp(np.ones_like(kernel), guide, 3, padding=1, normalize="kernel")


def _pac_pool(dtype):
    import pacarray

    _, _, x, guide, _, _ = _inputs(dtype)
    pacarray.pac_pool(x, 3, guide=guide, padding=1, normalize="kernel")
    kernel = pacarray.pac_kernel(guide, 3, padding=1)
    pacarray.pac_pool(x, 3, kernel=kernel, padding=1)


def _pac_conv(dtype):
    import pacarray

    _, _, x, guide, weight, _ = _inputs(dtype)
    pacarray.pac_conv(x, weight, guide=guide, padding=1)
    pacarray.pac_conv_transpose(x, weight.transpose(1, 0, 2, 3), stride=2, padding=1,
                                output_padding=1)


def _pac_pool_vjp(dtype):
    import pacarray

    np, _, x, guide, _, _ = _inputs(dtype)
    pacarray.pac_pool_vjp(np.ones_like(x), x, 3, guide=guide, padding=1, normalize="kernel")


def _pac_conv_vjp(dtype):
    import pacarray

    np, _, x, guide, weight, _ = _inputs(dtype)
    pacarray.pac_conv_vjp(np.ones((1, 4, 9, 10), dtype), x, weight, guide=guide, padding=1)


def _bilateral(dtype):
    import pacarray

    _, _, _, _, _, image = _inputs(dtype)
    layouts = ((-1, image), (None, image[..., 0]), (0, image.transpose(2, 0, 1)))
    for channel_axis, picture in layouts:
        pacarray.bilateral_filter(picture, sigma_spatial=1.0, sigma_color=0.2,
                                  channel_axis=channel_axis)
    pacarray.bilateral_filter(image, sigma_spatial=1.0, sigma_color=0.2, channel_axis=-1,
                              guide=image[..., 0])
    pacarray.joint_bilateral_upsample(image[::3, ::3], image, sigma_color=0.2, channel_axis=-1)


def _bilateral_vjp(dtype):
    import pacarray

    np, _, _, _, _, image = _inputs(dtype)
    pacarray.bilateral_filter_vjp(np.ones_like(image), image, sigma_spatial=1.0, sigma_color=0.2,
                                  channel_axis=-1)


def _image_filters(dtype):
    import pacarray

    np, _, _, _, _, image = _inputs(dtype)
    pacarray.normalized_convolution(image, np.ones(image.shape[:2], dtype), sigma_spatial=1.0,
                                    channel_axis=-1)
    pacarray.detail_preserving_pool(image, 3, alpha=0.5, lambda_=1.0, channel_axis=-1)


def _pac_crf(dtype):
    import pacarray

    np, rng, _, _, _, image = _inputs(dtype)
    unary = rng.random((3, 9, 10)).astype(dtype)
    pacarray.pac_crf(unary, image)
    pacarray.pac_crf_vjp(np.ones_like(unary), unary, image)


#: Public function groups :func:`warmup` compiles, heaviest first (measured cold-start order).
WARMUP_FUNCTIONS = {
    "pac_conv_vjp": _pac_conv_vjp,
    "pac_pool_vjp": _pac_pool_vjp,
    "bilateral_filter_vjp": _bilateral_vjp,
    "pac_conv": _pac_conv,
    "pac_pool": _pac_pool,
    "bilateral_filter": _bilateral,
    "pac_kernel": _pac_kernel,
    "pac_crf": _pac_crf,
    "image_filters": _image_filters,
}


#: Seconds of compilation of each task on an empty cache, alone in a process (quiet 2-core AMD
#: EPYC, float32; float64 within 15 %). Only the ratios matter: they balance the processes.
_COST = {"pac_conv_vjp": 85, "pac_pool_vjp": 62, "bilateral_filter_vjp": 65, "pac_conv": 36,
         "pac_pool": 31, "bilateral_filter": 31, "pac_kernel": 26, "pac_crf": 22,
         "image_filters": 20}


def _plan(tasks: list, processes: int) -> list:
    """The tasks of each worker process, in the order it runs them.

    Tasks of one dtype share some kernels (``bilateral_filter_vjp`` compiles those of
    ``pac_pool_vjp``, ``image_filters`` those of the pools), and a kernel compiled in a process
    serves that process's later tasks, whereas two processes needing it both compile it. So
    each dtype gets its own processes (an equal share), and within a dtype's share the tasks
    go, heaviest first, to the process with the least work so far. The gain is small: the
    forward and backward kernels are distinct (``pac_conv`` still compiles for 36 s after
    ``pac_conv_vjp``), and the test suite's warm-up (both dtypes, two processes) took 296 s in
    CI against 300 s with a shared dynamic pool (2026-12-03). The plan is deterministic and
    balanced, and keeps a per-task progress line.
    """
    dtypes = list(dict.fromkeys(dtype for _, dtype in tasks))
    if processes < len(dtypes):
        groups = [[] for _ in range(processes)]
        for index, task in enumerate(tasks):
            groups[index % processes].append(task)
        return groups
    groups = []
    for index, dtype in enumerate(dtypes):
        share = processes // len(dtypes) + (index < processes % len(dtypes))
        own = [[] for _ in range(share)]
        work = [0.0] * share
        for task in sorted((t for t in tasks if t[1] == dtype), key=lambda t: -_COST[t[0]]):
            least = work.index(min(work))
            own[least].append(task)
            work[least] += _COST[task[0]]
        groups.extend(own)
    return groups


def _run(name: str, dtype: str) -> float:
    start = time.perf_counter()
    WARMUP_FUNCTIONS[name](dtype)
    return time.perf_counter() - start


def warmup(functions=None, *, dtypes=("float32",), processes=None, progress=True,
           file=None) -> dict:
    """Compile the CPU kernels of pacarray's public functions ahead of their first use.

    Parameters
    ----------
    functions : sequence of str, optional
        Names from :data:`WARMUP_FUNCTIONS` (default: all of them).
    dtypes : sequence of {"float32", "float64"}, default ("float32",)
    processes : int, optional
        Worker processes (default: the number of CPUs, at most the number of tasks).
    progress : bool, default True
        Print a progress line to ``file`` (default ``sys.stderr``).

    Returns
    -------
    dict
        ``{(name, dtype): seconds}``, the time of each task in its worker process.

    Raises
    ------
    ValueError
        Unknown function names or dtypes.

    Notes
    -----
    The compiled code goes to Numba's cache (``NUMBA_CACHE_DIR``, or ``__pycache__`` beside
    pacarray's sources), which must be writable; the workers inherit the environment. On a
    machine with C cores the wall time is about the cold-start time of all functions divided
    by C. Workers are started with ``spawn`` (forking a process whose OpenMP threads are running
    is unsafe).

    Examples
    --------
    >>> import pacarray
    >>> timings = pacarray.warmup(["pac_kernel"], progress=False)   # doctest: +SKIP
    """
    if isinstance(functions, str) or not (functions is None or hasattr(functions, "__iter__")):
        raise TypeError(
            f"functions must be None or a sequence of names, got {functions!r} (for one "
            "function pass a list: ['pac_kernel'])"
        )
    names = list(WARMUP_FUNCTIONS) if functions is None else list(functions)
    unknown = [name for name in names if name not in WARMUP_FUNCTIONS]
    if unknown:
        raise ValueError(
            f"functions names unknown warm-up tasks {unknown}; choose from "
            f"{list(WARMUP_FUNCTIONS)}"
        )
    dtypes = list(dtypes)
    bad = [d for d in dtypes if d not in ("float32", "float64")]
    if bad:
        raise ValueError(f"dtypes must be 'float32' and/or 'float64', got {bad}")
    tasks = [(name, dtype) for dtype in dtypes for name in names]
    if processes is None:
        processes = os.cpu_count() or 1
    processes = max(1, min(int(processes), len(tasks)))
    out = sys.stderr if file is None else file
    start = time.perf_counter()
    timings = {}
    context = multiprocessing.get_context("spawn")
    pools = [concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
             for _ in range(processes)]
    try:
        futures = {pool.submit(_run, name, dtype): (name, dtype)
                   for pool, group in zip(pools, _plan(tasks, processes)) for name, dtype in group}
        for future in concurrent.futures.as_completed(futures):
            task = futures[future]
            timings[task] = future.result()
            if progress:
                print(f"\rpacarray warmup: {len(timings)}/{len(tasks)} compiled "
                      f"({task[0]}, {task[1]}, {timings[task]:.1f} s), "
                      f"{time.perf_counter() - start:.0f} s elapsed", end="", file=out,
                      flush=True)
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)
    if progress:
        print(file=out)
    return timings
