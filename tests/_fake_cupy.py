"""A NumPy-backed stand-in for CuPy, for tests of the CUDA backend's host side without a GPU.

Arrays of :class:`FakeArray` (a NumPy subclass) are taken for CuPy arrays by pacarray's
dispatch; the stand-in module counts CuPy calls, uploads of host arrays and reads of device
values. Kernel launches go to ``run``: recorded only (``tests/test_cuda_host_calls.py``) or run
on the CPU emulation of the CUDA kernels (``tests/test_dask_cupy_chunks.py``).
"""

from __future__ import annotations

import collections
import sys
import types

import numpy as np

import pacarray._cuda as cuda_backend
import pacarray._dispatch as dispatch
from pacarray import _args

class Device:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


#: Values read back to the host (``bool(a)``, ``float(a)``, ``int(a)``, ``a.item()``): on a GPU
#: each waits for the stream.
READS = collections.Counter()


class FakeArray(np.ndarray):
    """A NumPy array that pacarray's dispatch takes for a CuPy array."""

    @property
    def device(self):
        return Device()

    def __bool__(self):
        READS["bool"] += 1
        return bool(np.asarray(self))

    def __float__(self):
        READS["float"] += 1
        return float(np.asarray(self))

    def __int__(self):
        READS["int"] += 1
        return int(np.asarray(self))

    def item(self, *args):
        READS["item"] += 1
        return np.asarray(self).item(*args)


def fake_cupy(zeros=True):
    module = types.ModuleType("cupy")
    module.counts = collections.Counter()
    module.uploads = []
    module.ndarray = FakeArray
    module.cuda = types.SimpleNamespace(Device=lambda *a: Device())

    def wrap(value):
        if isinstance(value, np.ndarray) and not isinstance(value, FakeArray):
            return value.view(FakeArray)
        return value

    def counted(name, function):
        def call(*args, **kwargs):
            module.counts[name] += 1
            if (name in ("asarray", "array", "ascontiguousarray") and args
                    and isinstance(args[0], np.ndarray) and not isinstance(args[0], FakeArray)):
                module.uploads.append(args[0].shape)
            return wrap(function(*args, **kwargs))
        return call

    def getattr_(name):
        # Where the kernels are not run, what they would fill is zeros, not garbage.
        target = np.zeros if zeros and name == "empty" else getattr(np, name)
        if callable(target) and not isinstance(target, type):
            return counted(name, target)
        return target

    module.__getattr__ = getattr_

    def asnumpy(array):
        READS["asnumpy"] += 1
        return np.array(array)

    module.asnumpy = asnumpy
    from scipy import ndimage

    module.ndimage = types.ModuleType("cupyx.scipy.ndimage")
    module.ndimage.correlate = counted("ndimage.correlate", ndimage.correlate)
    return module



def install(monkeypatch, run=None):
    """Put the stand-in in place of CuPy for one test; ``run(planned)`` receives the CUDA
    backend's kernel launches (default: recorded in the module's ``launches`` list)."""
    cupy = fake_cupy(zeros=run is None)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx.scipy.ndimage", cupy.ndimage)
    library = dispatch.array_library
    monkeypatch.setattr(dispatch, "array_library", lambda value, name="array": (
        "cupy" if isinstance(value, FakeArray) else library(value, name)))
    launches = []
    monkeypatch.setattr(cuda_backend._RUNTIME, "run", run or (
        lambda planned: launches.append(planned.kernel)))
    monkeypatch.setattr(_args, "_constants", collections.OrderedDict())
    cupy.launches = launches
    return cupy
