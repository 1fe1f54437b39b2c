"""Build and drive the host emulation of pacarray's CUDA kernels (``docs/design.md`` §5).

:func:`build` compiles one translation unit with g++: ``cuda_emulation.h``, every ``.cu`` file
of ``pacarray/_cuda`` unmodified, ``launcher.h`` and a generated registry holding every
template instantiation that the CuPy loader compiles (``_loader.name_expressions``), into a
shared library. :class:`Emulator` calls its C entry point through ctypes with arguments packed
like ``cuLaunchKernel``'s ``void**``. :class:`EmulatedRuntime` plugs it into the backend's
private functions in place of CuPy, and :func:`emulated_backend` is a module with the backend's
public interface that the dispatch can route NumPy arrays to.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CUDA_DIR = HERE.parent.parent / "pacarray" / "_cuda"
FLAGS = ("-std=c++20", "-O2", "-mfma", "-fno-extern-tls-init", "-U_FORTIFY_SOURCE")

#: The harness's own test kernels (selftest.cu): (registry name, function, synchronizing). The
#: last one registers a synchronizing kernel as barrier-free, which the launcher must reject.
SELFTEST_SOURCE = HERE / "selftest.cu"
SELFTEST_KERNELS = (
    ("selftest_block_sum<float>", "selftest_block_sum<float>", True),
    ("selftest_block_sum<double>", "selftest_block_sum<double>", True),
    ("selftest_rotate", "selftest_rotate", True),
    ("selftest_rotate_missing_barrier", "selftest_rotate_missing_barrier", True),
    ("selftest_warp_allreduce", "selftest_warp_allreduce", True),
    ("selftest_divergent_barrier", "selftest_divergent_barrier", True),
    ("selftest_divergent_shuffle", "selftest_divergent_shuffle", True),
    ("selftest_rotate as barrier-free", "selftest_rotate", False),
)

_KINDS = {
    np.dtype(np.float32): "f",
    np.dtype(np.float64): "d",
    np.dtype(np.int32): "i",
    np.dtype(np.int64): "q",
    np.dtype(np.bool_): "?",
}


def compiler() -> str | None:
    """Path of g++, or None."""
    return shutil.which("g++")


def package_kernels() -> list[tuple[str, str, bool]]:
    """(registry name, function, synchronizing) of every instantiation the CuPy loader compiles."""
    from pacarray._cuda import _loader

    return [
        (expression, expression, kernel in _loader.SYNCHRONIZING)
        for filename, names in _loader.KERNELS.items()
        for kernel in names
        for expression in _loader.name_expressions(filename)
        if expression.split("<", 1)[0] == kernel
    ]


def translation_unit(extra_sources=(), extra_kernels=()) -> str:
    """The C++ text compiled into the emulation library.

    ``extra_sources`` are further ``.cu`` paths (the harness's own self-test kernels) and
    ``extra_kernels`` their ``(registry name, function, synchronizing)`` triples.
    """
    from pacarray._cuda import _loader

    lines = ['#include "cuda_emulation.h"']
    lines += [f'#include "{CUDA_DIR / filename}"' for filename in _loader.KERNELS]
    lines += [f'#include "{Path(path).resolve()}"' for path in extra_sources]
    lines += ['#include "launcher.h"', "", "static const pac_emu::Entry registry[] = {"]
    for name, function, synchronizing in [*package_kernels(), *extra_kernels]:
        flag = "true" if synchronizing else "false"
        lines.append(f'    pac_emu::entry<&{function}>("{name}", {flag}),')
    lines += [
        "};",
        "",
        'extern "C" int pac_emu_launch(const char* name, const unsigned* grid,',
        "                              const unsigned* block, std::size_t shared_bytes,",
        "                              void** args, const char* kinds, int reverse,",
        "                              int workers, char* error, std::size_t error_size) {",
        "    return pac_emu::launch(registry, sizeof registry / sizeof registry[0], name, grid,",
        "                           block, shared_bytes, args, kinds, reverse, workers, error,",
        "                           error_size);",
        "}",
        "",
        'extern "C" int pac_emu_kernel_count() {',
        "    return (int)(sizeof registry / sizeof registry[0]);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def build(directory: Path, extra_sources=(), extra_kernels=()) -> Path:
    """Compile the emulation library into ``directory`` (reused when the inputs are unchanged)."""
    text = translation_unit(extra_sources, extra_kernels)
    inputs = [text, *FLAGS]
    for path in [*sorted(CUDA_DIR.glob("*.cu*")), *sorted(HERE.glob("*.h")), *extra_sources]:
        inputs.append(Path(path).read_text())
    digest = hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:16]
    library = Path(directory) / f"pacemu-{digest}.so"
    if library.exists():
        return library
    unit = Path(directory) / f"pacemu-{digest}.cpp"
    unit.write_text(text)
    command = [
        compiler(), *FLAGS, "-fPIC", "-shared", "-pthread", "-Wall", "-Wno-unused-function",
        "-I", str(HERE), "-I", str(CUDA_DIR), str(unit), "-o", str(library),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ failed ({' '.join(command)}):\n{result.stderr}")
    return library


class EmulationError(RuntimeError):
    """A launch the emulator refused or a kernel that misused synchronization."""


class Emulator:
    """ctypes front of one built emulation library."""

    def __init__(self, library: Path, workers: int = 2):
        self.library = ctypes.CDLL(str(library))
        self.library.pac_emu_launch.restype = ctypes.c_int
        self.library.pac_emu_kernel_count.restype = ctypes.c_int
        self.workers = workers
        self.launches: list[str] = []

    @property
    def kernel_count(self) -> int:
        return self.library.pac_emu_kernel_count()

    def launch(self, name: str, grid, block, args, shared_bytes: int = 0, reverse=False):
        """Run kernel ``name`` (a name expression) like ``kernel(grid, block, args)`` in CuPy.

        Arrays are passed as their data pointers; scalars must be NumPy scalars, whose dtype
        fixes the C type (as the CuPy runtime needs too).
        """
        storage = []
        kinds = []
        pointers = (ctypes.c_void_p * max(1, len(args)))()
        for i, value in enumerate(args):
            if isinstance(value, np.ndarray):
                holder = ctypes.c_void_p(value.ctypes.data)
                pointers[i] = ctypes.addressof(holder)
                kinds.append("p")
            elif isinstance(value, np.generic):
                holder = np.array(value)
                pointers[i] = holder.ctypes.data
                kinds.append(_KINDS.get(holder.dtype, "?" + str(holder.dtype)))
            else:
                raise TypeError(
                    f"argument {i} of {name} is a {type(value).__name__}: pass arrays or NumPy "
                    "scalars with an explicit dtype"
                )
            storage.append(holder)
        grid3 = (ctypes.c_uint * 3)(*_triple(grid))
        block3 = (ctypes.c_uint * 3)(*_triple(block))
        error = ctypes.create_string_buffer(1024)
        status = self.library.pac_emu_launch(
            name.encode(), grid3, block3, ctypes.c_size_t(shared_bytes), pointers,
            "".join(kinds).encode(), int(bool(reverse)), self.workers, error,
            ctypes.c_size_t(len(error)),
        )
        if status != 0:
            raise EmulationError(error.value.decode())
        self.launches.append(name)


def _triple(value) -> tuple[int, int, int]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return (*values, *(1,) * (3 - len(values)))


class EmulatedRuntime:
    """The backend's runtime interface on NumPy arrays and the emulator."""

    xp = np

    def __init__(self, emulator: Emulator, reverse: bool = False):
        self.emulator = emulator
        self.reverse = reverse

    def run(self, planned) -> None:
        from pacarray._cuda import _loader

        name = _loader.name_expression(planned.kernel, planned.dtype, planned.index_dtype)
        self.emulator.launch(name, (planned.grid,), (planned.block,), planned.args,
                             reverse=self.reverse)


def emulated_backend(runtime: EmulatedRuntime) -> types.ModuleType:
    """A module with ``pacarray._cuda``'s public functions running on ``runtime``.

    The smoothing of the centre feature is not a backend function (``pacarray._spec.smooth``
    runs ``scipy.ndimage`` or ``cupyx.scipy.ndimage`` by the array's type).
    """
    import pacarray._cuda as cuda

    module = types.ModuleType("pacarray_emulated_cuda_backend")

    def materialize_kernel(spec, kernel_size, k_stride, k_padding, dilation, out_shape):
        return cuda._materialize_kernel(
            runtime, spec, kernel_size, k_stride, k_padding, dilation, out_shape
        )

    def pool(x, tap_weight, spec, geometry, k_stride, k_padding, out_shape):
        return cuda._pool(runtime, x, tap_weight, spec, geometry, k_stride, k_padding, out_shape)

    def conv(x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape):
        return cuda._conv(
            runtime, x, weight_matrix, spec, geometry, k_stride, k_padding, out_shape
        )

    def kernel_backward(grad_kernel, spec, kernel_size, k_stride, k_padding, dilation,
                        need_guide):
        return cuda._kernel_backward(runtime, grad_kernel, spec, kernel_size, k_stride,
                                     k_padding, dilation, need_guide)

    def pool_backward(grad_y, x, tap_weight, spec, geometry, k_stride, k_padding, need_x,
                      need_weight, need_kernel, need_guide):
        return cuda._pool_backward(runtime, grad_y, x, tap_weight, spec, geometry, k_stride,
                                   k_padding, need_x, need_weight, need_kernel, need_guide)

    def conv_backward(grad_y, x, weight_matrix, spec, geometry, k_stride, k_padding, need_x,
                      need_weight, need_kernel, need_guide):
        return cuda._conv_backward(runtime, grad_y, x, weight_matrix, spec, geometry, k_stride,
                                   k_padding, need_x, need_weight, need_kernel, need_guide)

    module.materialize_kernel = materialize_kernel
    module.pool = pool
    module.conv = conv
    module.kernel_backward = kernel_backward
    module.pool_backward = pool_backward
    module.conv_backward = conv_backward
    module.bilateral = cuda.bilateral
    module.joint_upsample = cuda.joint_upsample
    # The CRF entry points are the generic ones (pac_pool and its gradient), as on the GPU.
    module.crf_add_messages = cuda.crf_add_messages
    module.crf_add_adjoint = cuda.crf_add_adjoint
    module.crf_step = cuda.crf_step
    module.crf_softmax = cuda.crf_softmax
    return module
