"""Small parameter arrays reach a device once (``pacarray._args.constant``, docs/design.md §4).

CuPy's part is stood in for by a namespace that counts its uploads; tests/test_gpu.py checks on
a device that a repeated call uploads nothing.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from pacarray import _args


class _Device:
    def __init__(self, namespace):
        self.id = namespace.device


def _namespace(name="fakecupy"):
    """A CuPy-like namespace: ``asarray`` copies (an upload) and counts; ``cuda.Device().id``
    is the current device."""
    ns = types.SimpleNamespace(__name__=name, device=0, uploads=0)

    def asarray(value):
        ns.uploads += 1
        return np.array(value, copy=True)

    ns.asarray = asarray
    ns.cuda = types.SimpleNamespace(Device=lambda: _Device(ns))
    return ns


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    monkeypatch.setattr(_args, "_constants", type(_args._constants)())


def test_numpy_gets_a_fresh_array_every_time():
    first = _args.constant(np, [1.0, 2.0], np.float32)
    second = _args.constant(np, [1.0, 2.0], np.float32)
    assert first is not second and first.dtype == np.float32
    np.testing.assert_array_equal(first, [1.0, 2.0])


def test_a_device_copy_is_made_once_per_device_dtype_shape_and_content():
    xp = _namespace()
    window = np.linspace(0.0, 1.0, 25).reshape(5, 5)
    first = _args.constant(xp, window, np.float32)
    assert xp.uploads == 1 and first.dtype == np.float32 and first.flags.c_contiguous
    np.testing.assert_array_equal(first, window.astype(np.float32))
    assert _args.constant(xp, window.copy(), np.float32) is first
    assert xp.uploads == 1
    assert _args.constant(xp, window, np.float64) is not first          # dtype
    assert _args.constant(xp, window.reshape(25), np.float32) is not first   # shape
    changed = window.copy()
    changed[2, 2] = 0.123
    assert not np.array_equal(_args.constant(xp, changed, np.float32), first)  # content
    xp.device = 1
    on_other = _args.constant(xp, window, np.float32)                   # device
    assert on_other is not first
    assert xp.uploads == 5
    other_library = _namespace("otherlib")
    assert _args.constant(other_library, window, np.float32) is not first


def test_large_arrays_are_not_kept_and_the_cache_is_bounded(monkeypatch):
    xp = _namespace()
    big = np.zeros(_args.CONSTANT_LIMIT_BYTES // 4 + 1)
    _args.constant(xp, big, np.float32)
    _args.constant(xp, big, np.float32)
    assert xp.uploads == 2 and len(_args._constants) == 0
    monkeypatch.setattr(_args, "CONSTANT_CACHE_SIZE", 3)
    for value in range(5):
        _args.constant(xp, [float(value)], np.float32)
    assert len(_args._constants) == 3
    kept = {key[-1] for key in _args._constants}
    assert kept == {np.float32(v).tobytes() for v in (2.0, 3.0, 4.0)}   # the most recent


def test_host_values_are_recognised():
    xp = _namespace()
    assert _args.host_or(xp, np.ones(3)) is np
    assert _args.host_or(xp, [1.0, 2.0]) is np
    assert _args.host_or(xp, 2.0) is np
    assert _args.host_or(xp, object()) is xp
