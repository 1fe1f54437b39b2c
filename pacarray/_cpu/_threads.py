"""The Numba threading layer of the CPU kernels, chosen so that concurrent calls are safe.

Numba's ``workqueue`` layer aborts the whole process ("Concurrent access has been detected")
when two Python threads enter parallel kernels at once; ``omp`` and ``tbb`` are thread-safe.
Numba picks ``tbb``, then ``omp``, then ``workqueue`` by default, so a machine without TBB and
OpenMP (or a user setting ``NUMBA_THREADING_LAYER=workqueue``) would run on the unsafe one.
When the CPU backend loads, :func:`configure` asks Numba for a thread-safe layer if the user left
the choice to Numba and one can be loaded; if pacarray's kernels end up on ``workqueue`` anyway
(the user asked for it, or it is the only layer available), every CPU entry point takes one
process-wide lock, so concurrent calls run one after the other instead of crashing the host
program (README, "Threads"; ``docs/design.md`` §6).
"""

from __future__ import annotations

import functools
import importlib
import threading

import numba

_LOCK = threading.RLock()


def _loadable(layer: str) -> bool:
    """Whether Numba's ``layer`` pool library can be loaded on this machine."""
    try:
        importlib.import_module(f"numba.np.ufunc.{layer}pool")
    except ImportError:
        return False
    return True


def _active_layer() -> str | None:
    """The layer Numba already launched (another library ran a parallel kernel), or None."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def configure() -> bool:
    """Choose a thread-safe layer where Numba's choice is still open; return whether the CPU
    entry points must be serialized (the layer in use is, or will be, ``workqueue``)."""
    active = _active_layer()
    if active is not None:
        return active == "workqueue"
    requested = str(numba.config.THREADING_LAYER).lower()
    if requested == "default":
        priority = list(numba.config.THREADING_LAYER_PRIORITY)
        if priority[0] != "workqueue" and (_loadable("tbb") or _loadable("omp")):
            numba.config.THREADING_LAYER = "threadsafe"
            return False
        return True
    if requested == "workqueue":
        return True
    if requested == "forksafe":  # TBB, else workqueue (GNU OpenMP is not fork-safe)
        return not _loadable("tbb")
    return False  # tbb, omp, safe, threadsafe: thread-safe, or Numba raises on first use


def serialized(function):
    """``function`` running under the process-wide lock (one parallel kernel at a time)."""

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with _LOCK:
            return function(*args, **kwargs)

    return locked
