"""Integer codes agree wherever they are written down: Python (``pacarray._codes``), the Numba
kernels, and the enumerators of the CUDA sources, which cannot import Python."""

import importlib
import re
from pathlib import Path

import numpy as np
import pytest

import pacarray
from pacarray import _codes
from pacarray._cpu import _numba_kernels as nk

# By module path: the package may export a function of the same name.
bilateral = importlib.import_module("pacarray._cpu.bilateral")

CUDA_DIR = Path(pacarray.__file__).parent / "_cuda"

FAMILY_NAMES = ("FAMILY_CONSTANT", "FAMILY_GAUSSIAN", "FAMILY_INVERSE", "FAMILY_INVERSE_ASYMMETRIC")
NORMALIZE_NAMES = ("NORMALIZE_NONE", "NORMALIZE_KERNEL", "NORMALIZE_MASK", "NORMALIZE_MASK_KERNEL")

# Enumerators that only the CUDA code uses (launch-shape constants of one kernel): no Python twin.
CUDA_ONLY = {"SHARED_TAPS", "SHARED_CHANNELS"}


def _without_comments(source):
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", source)


def _cuda_constants():
    """name -> (value, file) for every enumerator and integer ``#define`` under ``_cuda``."""
    found = {}

    def add(name, value, path):
        assert name not in found, f"{name} is defined twice: {found[name][1]} and {path.name}"
        found[name] = (value, path.name)

    paths = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh"))
    assert paths, f"no CUDA sources under {CUDA_DIR}"
    for path in paths:
        source = _without_comments(path.read_text())
        for body in re.findall(r"\benum\b[^{};]*\{(.*?)\}", source, flags=re.DOTALL):
            following = 0
            for entry in filter(None, (e.strip() for e in body.split(","))):
                match = re.fullmatch(r"(\w+)(?:\s*=\s*(-?\d+))?", entry)
                assert match, f"cannot parse enumerator {entry!r} in {path.name}"
                value = int(match.group(2)) if match.group(2) is not None else following
                add(match.group(1), value, path)
                following = value + 1
        for name, value in re.findall(r"^\s*#\s*define\s+(\w+)\s+\(?(-?\d+)\)?\s*$", source,
                                      flags=re.MULTILINE):
            add(name, int(value), path)
    return found


def _python_twins():
    """CUDA constant name -> its value on the Python side."""
    from pacarray import _cuda
    from pacarray._cuda import launch

    twins = {name: getattr(_codes, name) for name in FAMILY_NAMES + NORMALIZE_NAMES}
    twins.update({name: getattr(_cuda, "_" + name)
                  for name in ("UPSTREAM_KERNEL", "UPSTREAM_DEPTHWISE", "UPSTREAM_PATCHES")})
    twins["DIRECT_GROUP"] = launch.DIRECT_GROUP
    return twins


def test_python_codes():
    assert [getattr(_codes, name) for name in FAMILY_NAMES] == [0, 1, 2, 3]
    assert [getattr(_codes, name) for name in NORMALIZE_NAMES] == [0, 1, 2, 3]
    assert _codes.NORMALIZE_CODES == {None: 0, "kernel": 1, "mask": 2, "mask_kernel": 3}
    for name in FAMILY_NAMES + NORMALIZE_NAMES:
        assert type(getattr(_codes, name)) is int, name  # plain ints: Numba freezes them


def test_cuda_constants_match_python():
    constants = _cuda_constants()
    twins = _python_twins()
    assert set(constants) == set(twins) | CUDA_ONLY, (
        "a CUDA constant without a Python twin (add it to _python_twins or CUDA_ONLY), or one "
        f"that disappeared: {sorted(set(constants) ^ (set(twins) | CUDA_ONLY))}")
    for name, expected in twins.items():
        value, where = constants[name]
        assert value == expected, f"{name} is {value} in {where} but {expected} in Python"


def test_the_cuda_codes_sit_in_pac_common():
    """Every CUDA file includes pac_common.cuh, so the shared codes must live there."""
    constants = _cuda_constants()
    for name in FAMILY_NAMES + NORMALIZE_NAMES:
        assert constants[name][1] == "pac_common.cuh", name


def test_numba_kernels_use_the_same_objects():
    for name in FAMILY_NAMES + NORMALIZE_NAMES:
        assert getattr(nk, name) is getattr(_codes, name), name


def test_numba_kernels_compile_with_the_imported_codes():
    """The kernels branch on the codes as compile-time constants: a Gaussian, kernel-normalized
    kernel and an asymmetric inverse power one come out as their formulas."""
    guide = np.array([[[[0.0, 1.0, 3.0]]]])
    for family, expected in (
        (pacarray.Gaussian(), np.exp(-0.5 * np.array([1.0, 0.0, 4.0]))),
        # 0.5 + max(0, centre - neighbour)**2
        (pacarray.InversePower(alpha=0.5, lambda_=2.0, eps=0.0, asymmetric=True),
         np.array([1.5, 0.5, 0.5])),
    ):
        kernel = pacarray.pac_kernel(guide, (1, 3), padding=(0, 1), family=family,
                                     normalize="kernel")
        centre = kernel[0, 0, 0, :, 0, 1]  # the taps of the middle pixel
        np.testing.assert_allclose(centre, expected / expected.sum(), rtol=1e-12)


def _front_end_modes():
    """The border modes the bilateral front end accepts, and its numpy.pad equivalents."""
    for module in ("pacarray._args", "pacarray._filters_util"):
        try:
            found = importlib.import_module(module)
            return found.MODES, found.NUMPY_PAD_MODES
        except (ImportError, AttributeError):
            continue
    pytest.skip("no MODES / NUMPY_PAD_MODES found in the front end")


def test_bilateral_border_modes():
    """The Numba bilateral kernel's border codes cover the front end's modes, and each maps
    indices like the numpy.pad mode that the generic (padded) path uses for it."""
    modes, numpy_modes = _front_end_modes()
    codes = bilateral.MODE_CODES
    assert set(codes) == set(modes)
    assert len(set(codes.values())) == len(codes)
    for name, code in codes.items():
        assert getattr(bilateral, "MODE_" + name.upper()) == code
    reach = 12
    for n in range(1, 6):
        for name, numpy_mode in numpy_modes.items():
            if name == "constant":
                expected = [i if 0 <= i < n else -1 for i in range(-reach, n + reach)]
            else:
                expected = np.pad(np.arange(n), reach, mode=numpy_mode).tolist()
            mapped = [bilateral._map_index(i, n, codes[name]) for i in range(-reach, n + reach)]
            assert mapped == expected, (name, n)
        # "exclude" never reads outside the image
        assert bilateral._map_index(-1, n, codes["exclude"]) == -1
