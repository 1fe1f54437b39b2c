"""The CPU backend's scratch arrays kept from call to call (``pacarray/_cpu/_scratch.py``)."""

from __future__ import annotations

import threading

import numpy as np

import pacarray._cpu._scratch as kept
from pacarray.crf import pac_crf


def test_scratch_reuses_an_array_by_name_shape_and_dtype():
    kept.release()
    first, new = kept.scratch("a", (3, 4), np.float32)
    assert new and first.shape == (3, 4) and first.dtype == np.float32
    again, new = kept.scratch("a", (3, 4), np.float32)
    assert again is first and not new
    other, new = kept.scratch("b", (3, 4), np.float32)
    assert new and not np.shares_memory(other, first)
    for shape, dtype in (((4, 3), np.float32), ((3, 4), np.float64)):
        changed, new = kept.scratch("a", shape, dtype)
        assert new and changed.shape == shape and changed.dtype == dtype
    assert kept.held_bytes() == 4 * 3 * 8 + 3 * 4 * 4
    kept.release()
    assert kept.held_bytes() == 0


def test_scratch_keeps_at_most_its_budget(monkeypatch):
    kept.release()
    monkeypatch.setattr(kept, "KEEP_BYTES", 1000)
    small, _ = kept.scratch("small", (100,), np.float64)  # 800 bytes: kept
    large, new = kept.scratch("large", (100,), np.float32)  # 400 more: not kept
    assert new and kept.held_bytes() == 800
    assert kept.scratch("large", (100,), np.float32)[0] is not large
    assert kept.scratch("small", (100,), np.float64)[0] is small
    kept.release()


def test_scratch_is_per_thread():
    kept.release()
    mine, _ = kept.scratch("shared-name", (5,), np.float32)
    theirs = []
    thread = threading.Thread(
        target=lambda: theirs.append(kept.scratch("shared-name", (5,), np.float32)))
    thread.start()
    thread.join()
    assert theirs[0][1] and not np.shares_memory(theirs[0][0], mine)
    kept.release()


def test_crf_results_never_share_the_scratch():
    """The fused CRF steps keep their marginals in scratch arrays; what a call returns is its
    own: a later call neither writes into it nor depends on it."""
    rng = np.random.default_rng(2)
    unary = rng.normal(0.0, 2.0, (4, 40, 48)).astype(np.float32)
    image = rng.random((40, 48, 3)).astype(np.float32)
    first = pac_crf(unary, image, num_steps=3)
    expected = first.copy()
    second = pac_crf(unary, image, num_steps=3)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    first[...] = np.nan
    np.testing.assert_array_equal(pac_crf(unary, image, num_steps=3), expected)
    assert kept.held_bytes() > 0
