"""The CUDA sources shipped with the package, and their lazy compilation with CuPy.

Each ``.cu`` file is compiled once per device, on first use, as a ``cupy.RawModule`` holding
every instantiation of its kernel templates (``name_expressions``): float and double, 32- and
64-bit indexing. Nothing here imports CuPy at import time; ``import pacarray`` compiles
nothing. The tests use :func:`source` and :func:`name_expressions` to compile the very same
text with NVRTC for several architectures and with g++ in the host-emulation harness.
"""

from __future__ import annotations

import re
import threading
from importlib import resources

import numpy as np

#: Kernel templates of each source file. Every one is instantiated as ``name<T, I>``.
KERNELS: dict[str, tuple[str, ...]] = {
    "pac_forward.cu": ("pac_fill", "pac_direct", "pac_patches"),
    "pac_backward.cu": ("pac_backward",),
}

#: Kernels that synchronize the threads of a block (``__syncthreads``, warp shuffles). The
#: host-emulation harness runs these as cooperative fibers, the others as plain loops.
SYNCHRONIZING: frozenset[str] = frozenset({"pac_backward"})

#: C++ names of the template arguments.
FLOAT_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
INDEX_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}

#: Options added to CuPy's own (CuPy adds the architecture, ``-ftz=true``, its include paths
#: and ``--std=c++17``).
COMPILE_OPTIONS: tuple[str, ...] = ("--std=c++17",)

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_lock = threading.Lock()
_modules: dict[tuple[int, str], object] = {}


def kernel_file(kernel: str) -> str:
    """The source file that defines ``kernel``."""
    for filename, kernels in KERNELS.items():
        if kernel in kernels:
            return filename
    raise KeyError(f"no CUDA source defines a kernel named {kernel!r}")


def name_expression(kernel: str, dtype, index_dtype) -> str:
    """``"kernel<float, int>"``: the instantiation for a float dtype and an index dtype."""
    return f"{kernel}<{FLOAT_TYPES[np.dtype(dtype)]}, {INDEX_TYPES[np.dtype(index_dtype)]}>"


def name_expressions(filename: str) -> list[str]:
    """Every instantiation compiled from ``filename``."""
    return [
        name_expression(kernel, dtype, index_dtype)
        for kernel in KERNELS[filename]
        for dtype in FLOAT_TYPES
        for index_dtype in INDEX_TYPES
    ]


def read_text(filename: str) -> str:
    """The text of a packaged ``.cu`` / ``.cuh`` file."""
    return resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


def source(filename: str) -> str:
    """``filename`` with its local ``#include "..."`` files expanded in place.

    Inlining keeps the compilation independent of include paths and makes CuPy's on-disk cache
    key (which hashes the source text) change whenever a header changes. A header included
    twice is expanded once, as its ``#pragma once`` asks.
    """
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        return _INCLUDE.sub(lambda match: expand(match.group(1)), read_text(name))

    return expand(filename)


def _module(filename: str):
    import cupy

    device = cupy.cuda.runtime.getDevice()
    key = (device, filename)
    module = _modules.get(key)
    if module is None:
        with _lock:
            module = _modules.get(key)
            if module is None:
                module = cupy.RawModule(
                    code=source(filename),
                    options=COMPILE_OPTIONS,
                    name_expressions=name_expressions(filename),
                )
                _modules[key] = module
    return module


def get_function(kernel: str, dtype, index_dtype):
    """The compiled kernel (a ``cupy.RawKernel``) for the current device."""
    return _module(kernel_file(kernel)).get_function(name_expression(kernel, dtype, index_dtype))
