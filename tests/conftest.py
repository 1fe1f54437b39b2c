"""Shared fixtures and the tolerance helper for the pacarray tests."""

from __future__ import annotations

import os
import sys

try:
    import fcntl
except ImportError:
    fcntl = None
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI (``.ci/run``) replays the same examples every run, so that whether a commit lands does not
# depend on a random draw; a developer's plain ``pytest`` keeps exploring new ones.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("PACARRAY_HYPOTHESIS_PROFILE", "default"))

# The oracle lives next to the tests; make ``import reference`` work under any import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from _op_cases import parametrize_op  # noqa: E402 (needs the path above)


@pytest.fixture(autouse=True, scope="session")
def _every_call_splits_its_jobs():
    """Small calls normally run on one thread (``pacarray._cpu._parallel.SERIAL_WORK``); the
    tests' arrays are small, so that rule is lifted here: every call with two or more jobs runs
    them on several threads, and every parity test checks the split as well."""
    from pacarray._cpu import _parallel

    saved = _parallel.SERIAL_WORK
    _parallel.SERIAL_WORK = 0
    yield
    _parallel.SERIAL_WORK = saved


def pytest_configure(config):
    """With several xdist workers (``-n 2``), compile the common kernels once before they start.

    Every worker process would otherwise compile the kernels its first tests need, and two
    workers starting on the same kernel both compile it (Numba's cache keeps one copy): on a
    cold cache that duplicate work is most of a parallel run's time. The controller runs
    :func:`pacarray.warmup` (both dtypes, one task per process and CPU) before the workers start,
    so they load the machine code from the cache. The compilation itself is still measured as
    part of the run: nothing is skipped. ``PACARRAY_TEST_WARMUP=0`` turns it off.
    """
    if os.environ.get("PACARRAY_TEST_WARMUP", "1") == "0" or hasattr(config, "workerinput"):
        return
    workers = getattr(config.option, "numprocesses", None)
    if not workers or config.option.collectonly:
        return
    from pacarray import warmup

    warmup(dtypes=("float32", "float64"), processes=min(os.cpu_count() or 1, 4))


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc):
    """A test shared by several ops' files runs for the op of the file (see _op_cases.py)."""
    parametrize_op(metafunc)


#: Largest accepted ``max|actual - expected| / max|expected|`` per computation dtype.
RELATIVE_TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def _assert_close(actual, expected, dtype, magnitude=None):
    """Compare ``actual`` with ``expected`` (float64 oracle) at ``dtype``'s tolerance.

    The error is ``max|a - e| / max(max|e|, magnitude, tiny)`` over the finite entries of
    ``expected``; shapes and the dtype must agree, and NaN / +-Inf must sit in the same places.

    ``magnitude`` is for sums that cancel: rounding error is proportional to the sum of the
    terms' absolute values, not to the (possibly tiny) result, so a test that draws random
    signed data passes the largest entry of the oracle evaluated on absolute values (the
    standard bound ``|fl(sum) - sum| <= gamma_n sum|terms|``). A wrong tap or weight still
    shows as an error of order one on that scale.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype} != expected {np.dtype(dtype)}"
    tolerance = RELATIVE_TOLERANCE[np.dtype(dtype)]
    actual64 = actual.astype(np.float64)
    finite = np.isfinite(expected)
    # NaN and +-Inf must sit in the same places with the same values (IEEE propagation).
    assert np.array_equal(actual64[~finite], expected[~finite], equal_nan=True) and np.all(
        np.isfinite(actual64[finite])
    ), (
        f"non-finite values differ: actual at {np.argwhere(~np.isfinite(actual64)).tolist()}, "
        f"expected at {np.argwhere(~finite).tolist()}"
    )
    if not finite.any():
        return
    scale = max(float(np.max(np.abs(expected[finite]))), np.finfo(np.float64).tiny)
    if magnitude is not None:
        scale = max(scale, float(magnitude))
    error = float(np.max(np.abs(actual64[finite] - expected[finite]))) / scale
    assert error <= tolerance, (
        f"max relative error {error:.3e} > {tolerance:.0e} (dtype {np.dtype(dtype)}, "
        f"scale {scale:.3e})"
    )


@pytest.fixture(scope="session")
def assert_close():
    """The tolerance helper ``assert_close(actual, expected, dtype)``."""
    return _assert_close


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name, so every test gets its own stable stream."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.name)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def emulator(request, tmp_path_factory):
    """The CPU emulation of the CUDA kernels (``tests/cuda_emulation``), built once per session;
    tests that use it skip where g++ is missing (``cuda_emulation.emulator.compiler()``)."""
    from cuda_emulation import emulator as emu

    if emu.compiler() is None:
        pytest.skip("g++ is not installed")
    # The g++ build takes about 10 s. pytest's cache folder (.pytest_cache) keeps the library
    # between runs; its name is a digest of the sources, so an edit rebuilds it. A lock file
    # keeps two concurrent sessions from loading a library the other is still writing.
    cache = getattr(request.config, "cache", None)
    if cache is None:  # -p no:cacheprovider
        return emu.Emulator(emu.build(tmp_path_factory.mktemp("cuda_emulation"),
                                      [emu.SELFTEST_SOURCE], emu.SELFTEST_KERNELS))
    directory = cache.mkdir("cuda_emulation")
    with open(directory / "build.lock", "w") as lock:
        if fcntl is not None:  # Windows: no lock (and rarely g++)
            fcntl.flock(lock, fcntl.LOCK_EX)
        library = emu.build(directory, [emu.SELFTEST_SOURCE], emu.SELFTEST_KERNELS)
        loaded = emu.Emulator(library)  # before another session may remove it as stale
        for stale in directory.glob("pacemu-*"):  # builds of earlier sources
            if stale.stem != library.stem:
                stale.unlink(missing_ok=True)
    return loaded
