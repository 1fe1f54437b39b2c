"""Progress reports for long in-memory calls (``pacarray.progress``, ``docs/design.md`` §6).

A Numba kernel cannot call back into Python while it runs, so a call that reports progress is cut
into blocks: inside ``with pacarray.progress():``, a forward function given a large NumPy array
runs through the Dask path (:mod:`pacarray._dask`) on Dask's synchronous scheduler, one block
after the other on the calling thread (each block's kernel uses every Numba thread), and writes
each block into a preallocated result as soon as it is done. The blocks are the Dask path's: the
data cut along its longest axis, each with a halo as wide as the receptive field, so the result
equals the uncut call (bit for bit where a pixel's arithmetic does not depend on where the block
starts, which ``tests/test_progress.py`` checks), and the extra memory is a few blocks.

``pac_crf`` is not cut (its halo grows with the number of mean-field steps) and gradients are
not either: they run as usual. Small calls (fewer elements than ``min_size``) run as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import _args

__all__ = ["progress"]

#: Per-pixel arguments of each function that reports progress, the data first. The others
#: (weights, sigmas, options) go whole to every block.
PIXEL_ARGUMENTS = {
    "pac_conv": ("x", "kernel", "guide", "mask"),
    "pac_conv_transpose": ("x", "kernel", "guide", "mask"),
    "pac_pool": ("x", "kernel", "guide", "mask"),
    "bilateral_filter": ("image", "guide"),
    "joint_bilateral_upsample": ("low", "guide"),
    "normalized_convolution": ("data", "certainty", "guide"),
    "detail_preserving_pool": ("image",),
    "color_position_features": ("image",),
}

#: Elements of the largest per-pixel array from which a call is cut into blocks, by default.
DEFAULT_MIN_SIZE = 2**22
#: About this many blocks per call: a report every few percent, few enough that the halos
#: (recomputed once per block) cost little.
TARGET_BLOCKS = 16


@dataclass(frozen=True)
class _Settings:
    callback: object
    min_size: int


_ACTIVE: contextvars.ContextVar[_Settings | None] = contextvars.ContextVar(
    "pacarray_progress", default=None)


@contextlib.contextmanager
def progress(callback=None, *, min_size: int = DEFAULT_MIN_SIZE):
    """Report the progress of long in-memory calls made inside the ``with`` block.

    A forward function (``pac_conv``, ``pac_conv_transpose``, ``pac_pool``, the image filters,
    ``detail_preserving_pool``, ``color_position_features``) called with a NumPy array of at
    least ``min_size`` elements is computed in about 16 blocks of the data's longest axis, one
    after the other, and reports after each. The result equals the uncut call's (the blocks
    carry halos as wide as the receptive field); the extra memory is a few blocks. Needs Dask
    (``pip install "pacarray[dask]"``), whose blocked evaluation it reuses. Calls on Dask
    arrays report through Dask's own diagnostics instead (``dask.diagnostics.ProgressBar``, or
    the dashboard of a distributed cluster); ``pac_crf`` and the gradient functions run uncut.

    Parameters
    ----------
    callback : callable, optional
        Called as ``callback(done, total, name)`` after each block (``done`` of ``total``
        blocks of the call of the function ``name``), on the calling thread. By default a
        ``tqdm`` bar when tqdm is installed, else a line on ``sys.stderr`` updated in place.
    min_size : int, default 2**22
        Calls whose largest per-pixel array has fewer elements run uncut and report nothing.

    Examples
    --------
    >>> import numpy as np, pacarray
    >>> image = np.random.default_rng(0).random((600, 800, 3), dtype=np.float32)
    >>> done = []
    >>> with pacarray.progress(lambda d, t, name: done.append((d, t)), min_size=10**5):
    ...     smooth = pacarray.bilateral_filter(image, sigma_spatial=2, sigma_color=0.1,
    ...                                        channel_axis=-1)
    >>> done[-1][0] == done[-1][1] > 1
    True
    """
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}")
    _args.require_int(min_size, "min_size", minimum=1)
    try:
        import dask.array  # noqa: F401
    except ImportError as error:  # pragma: no cover - the test environments have Dask
        raise ImportError(
            "pacarray.progress cuts long calls into blocks with Dask, which is not installed: "
            'pip install "pacarray[dask]"'
        ) from error
    token = _ACTIVE.set(_Settings(callback, int(min_size)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def blocked_call(name: str, function, args, kwargs):
    """``function(*args, **kwargs)``, cut into blocks with progress reports when a
    ``progress`` block is active and the call is large; None to run it uncut."""
    settings = _ACTIVE.get()
    if settings is None or name not in PIXEL_ARGUMENTS:
        return None
    bound = inspect.signature(function).bind(*args, **kwargs)
    names = PIXEL_ARGUMENTS[name]
    pixels = {key: bound.arguments.get(key) for key in names}
    if not all(value is None or isinstance(value, np.ndarray) for value in pixels.values()):
        return None  # CuPy arrays, lists: run as usual (the call raises its own errors)
    data = pixels[names[0]]
    sizes = [value.size for value in pixels.values() if value is not None]
    if data is None or data.ndim == 0 or max(sizes) < settings.min_size:
        return None
    import dask.array as da

    from . import _dask

    axis = int(np.argmax(data.shape))
    step = max(1, math.ceil(data.shape[axis] / TARGET_BLOCKS))
    chunks = tuple(step if a == axis else -1 for a in range(data.ndim))
    lazy_arguments = dict(bound.arguments)
    for key, value in pixels.items():
        if value is not None:  # the others are rechunked to line up with the data's blocks
            lazy_arguments[key] = da.from_array(value, chunks=chunks if key == names[0] else -1)
    # The blocks are in-memory calls of the same public function: uncut.
    token = _ACTIVE.set(None)
    try:
        result = getattr(_dask, name)(**lazy_arguments)
        return _compute(name, result, settings.callback or _default_reporter())
    finally:
        _ACTIVE.reset(token)


def _compute(name, result, callback):
    """Evaluate the lazy ``result`` (an array or a tuple of arrays) block by block into NumPy
    arrays, calling ``callback(done, total, name)`` as the blocks finish."""
    import dask
    import dask.array as da
    from dask.callbacks import Callback

    results = result if isinstance(result, tuple) else (result,)
    outputs = tuple(np.empty(r.shape, dtype=r.dtype) for r in results)
    # One store task per output block (Dask fuses the block's computation into it).
    prefix = "store-map"
    counts = {"done": 0, "total": 0}

    def start_state(graph, state):
        counts["total"] = sum(1 for key in graph if _key_name(key).startswith(prefix))
        callback(0, counts["total"], name)

    def posttask(key, value, graph, state, worker_id):
        if _key_name(key).startswith(prefix):
            counts["done"] += 1
            callback(counts["done"], counts["total"], name)

    with Callback(start_state=start_state, posttask=posttask), \
            dask.config.set(scheduler="sync"):
        da.store(list(results), list(outputs), lock=False)
    return outputs if isinstance(result, tuple) else outputs[0]


def _key_name(key) -> str:
    return str(key[0] if isinstance(key, tuple) else key)


def _default_reporter():
    """A tqdm bar per call when tqdm is installed, else a line on stderr."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineReporter()
    bars = {}

    def report(done, total, name):
        bar = bars.get(name)
        if bar is None or bar.total != total or done == 0:
            if bar is not None:
                bar.close()
            bar = bars[name] = tqdm(total=total, desc=f"pacarray.{name}", unit="block")
        bar.update(done - bar.n)
        if done == total:
            bar.close()
            del bars[name]

    return report


class _LineReporter:
    """``pacarray.pac_conv: 5/16 blocks, 3.1 s`` on stderr, rewritten in place."""

    def __init__(self, stream=None):
        self.stream = stream
        self.start = time.perf_counter()

    def __call__(self, done, total, name):
        stream = self.stream or sys.stderr
        if done == 0:
            self.start = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        end = "\n" if done == total else ""
        print(f"\rpacarray.{name}: {done}/{total} blocks, {elapsed:.1f} s", end=end,
              file=stream, flush=True)

