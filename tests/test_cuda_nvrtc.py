"""Every CUDA source compiles with NVRTC, as CuPy compiles it, to cubin for sm_80 and sm_90.

No GPU is needed: NVRTC is a library, and CuPy imports without a device. The options are
CuPy's own for ``cupy.RawModule`` (``assemble_cupy_compiler_options`` plus ``-ftz=true``, the
``-arch=sm_XX`` that makes NVRTC emit cubin, ``--device-as-default-execution-space`` and, where
CuPy uses it, ``--pch``); the source text and the name expressions are the loader's. Building
cubin runs ptxas, so register and shared-memory limits of the architecture are checked; the log
must be free of warnings, and the kernels must not spill.
"""

from __future__ import annotations

import re

import pytest

from pacarray._cuda import _loader

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
from cupy.cuda import nvrtc  # noqa: E402  (after the skip: needs CuPy)

ARCHITECTURES = ("80", "90")
SELFTEST_KERNELS = [
    "selftest_block_sum<float>", "selftest_block_sum<double>", "selftest_rotate",
    "selftest_rotate_missing_barrier", "selftest_warp_allreduce", "selftest_divergent_barrier",
    "selftest_divergent_shuffle",
]


def _nvrtc_version():
    try:
        return nvrtc.getVersion()
    except Exception as error:  # the NVRTC shared library is missing or unloadable
        pytest.skip(f"NVRTC is not available: {error}")


def cupy_options(arch: str) -> tuple[str, ...]:
    """The NVRTC options CuPy's RawModule uses for the loader's options on ``sm_<arch>``."""
    from cupy._core import core
    from cupy.cuda import compiler

    options = core.assemble_cupy_compiler_options(_loader.COMPILE_OPTIONS)
    options += ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    if getattr(compiler, "_use_pch", False) and _nvrtc_version() >= (12, 8):
        options += ("--pch",)
    return options


def compile_cubin(text: str, filename: str, expressions, options):
    """(cubin bytes, lowered names, log) of one NVRTC compilation."""
    program = nvrtc.createProgram(text, filename, (), ())
    try:
        for expression in expressions:
            nvrtc.addNameExpression(program, expression)
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError:
            pytest.fail(f"NVRTC failed on {filename}:\n{nvrtc.getProgramLog(program)}")
        lowered = {e: nvrtc.getLoweredName(program, e) for e in expressions}
        return nvrtc.getCUBIN(program), lowered, nvrtc.getProgramLog(program)
    finally:
        nvrtc.destroyProgram(program)


@pytest.fixture(scope="module")
def compiled_kernels():
    """Counts the instantiations compiled, reported at the end of the module."""
    counts: dict[str, int] = {}
    yield counts
    total = sum(counts.values())
    print(f"\nNVRTC compiled {total} kernel instantiations: "
          + ", ".join(f"{key}: {value}" for key, value in sorted(counts.items())))


# 10-20 s per source and architecture: the full tier only. In the quick tier NVRTC compiles one
# kernel in test_options_are_cupys_without_the_verbose_flag.
@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("filename", sorted(_loader.KERNELS))
def test_source_compiles_to_cubin(compiled_kernels, filename, arch):
    _nvrtc_version()
    expressions = _loader.name_expressions(filename)
    verbose = (*cupy_options(arch), "-Xptxas=-v")
    cubin, lowered, log = compile_cubin(_loader.source(filename), filename, expressions, verbose)
    assert cubin[:4] == b"\x7fELF", "NVRTC did not produce a cubin"
    assert set(lowered) == set(expressions)
    assert all(name.startswith("_Z") for name in lowered.values())
    assert "warning" not in log.lower(), log
    spills = re.findall(r"(\d+) bytes spill stores", log)
    assert spills and all(int(count) == 0 for count in spills), log
    compiled_kernels[f"{filename} sm_{arch}"] = len(expressions)


def test_options_are_cupys_without_the_verbose_flag():
    """The ``-Xptxas=-v`` added above only adds ptxas's report; without it the same options
    compile too (this is the exact option set CuPy passes)."""
    _nvrtc_version()
    filename = sorted(_loader.KERNELS)[0]
    expressions = _loader.name_expressions(filename)[:1]
    cubin, _, _ = compile_cubin(_loader.source(filename), filename, expressions,
                                cupy_options("90"))
    assert cubin[:4] == b"\x7fELF"


def test_every_packaged_source_is_compiled():
    """No ``.cu`` file ships without being listed in the loader (and so tested)."""
    from importlib import resources

    shipped = {p.name for p in resources.files("pacarray._cuda").iterdir()
               if p.name.endswith(".cu")}
    assert shipped == set(_loader.KERNELS)


def test_sources_are_self_contained():
    """The loader inlines local headers, so NVRTC needs no include path of ours."""
    for filename in _loader.KERNELS:
        assert '#include "' not in _loader.source(filename)


def test_harness_selftest_kernels_are_valid_cuda(compiled_kernels):
    """The emulation harness's own test kernels compile as real CUDA too."""
    _nvrtc_version()
    from cuda_emulation.emulator import SELFTEST_SOURCE

    cubin, lowered, log = compile_cubin(SELFTEST_SOURCE.read_text(), "selftest.cu",
                                        SELFTEST_KERNELS, cupy_options("80"))
    assert cubin[:4] == b"\x7fELF"
    assert "warning" not in log.lower(), log
    assert len(lowered) == len(SELFTEST_KERNELS)
