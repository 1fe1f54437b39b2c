"""``pacarray.progress``: long in-memory calls cut into blocks that report their progress.

Inside the ``with`` block a large call runs block by block through the Dask path; its result must
equal the uncut call bit for bit (every supported function, odd sizes, guide, mask, stride,
transposed, upsampling, a volume and a signal), the callback must see every block once and in
order, small calls and calls outside the block must run uncut, and bad arguments must raise
naming the parameter.
"""

from __future__ import annotations

import io
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("dask.array")

import pacarray  # noqa: E402
from pacarray import _progress  # noqa: E402

RNG = np.random.default_rng(7)
IMAGE = RNG.random((67, 45, 3), dtype=np.float32)
GUIDE = RNG.random((67, 45, 2), dtype=np.float32)
X = RNG.random((1, 3, 43, 38)).astype(np.float32)
WEIGHT = RNG.random((4, 3, 3, 3)).astype(np.float32)


def _calls():
    """(name, thunk) pairs: every function that reports progress, with the options that
    change its blocks (stride, dilation, guide, mask, upsampling, channels first)."""
    mask = (RNG.random((1, 1, 43, 38)) > 0.3).astype(np.float32)
    certainty = (RNG.random((67, 45)) > 0.4).astype(np.float32)
    low = RNG.random((17, 12, 2), dtype=np.float32)
    volume = RNG.random((9, 11, 23), dtype=np.float32)
    signal = RNG.random(301).astype(np.float64)
    fine_guide = RNG.random((1, 2, 86, 76)).astype(np.float32)
    return {
        "pac_conv": lambda: pacarray.pac_conv(X, WEIGHT, guide=X, padding=1, stride=2,
                                              mask=mask),
        "pac_conv-dilated": lambda: pacarray.pac_conv(X, WEIGHT, guide=X[:, :2], padding=2,
                                                      dilation=2, smooth="gaussian"),
        "pac_conv_transpose": lambda: pacarray.pac_conv_transpose(
            X, WEIGHT.transpose(1, 0, 2, 3), guide=fine_guide, stride=2, padding=1,
            output_padding=1),
        "pac_pool": lambda: pacarray.pac_pool(X, 3, guide=X, padding=1, normalize="kernel"),
        "bilateral_filter": lambda: pacarray.bilateral_filter(
            IMAGE, sigma_spatial=2, sigma_color=0.1, channel_axis=-1),
        "bilateral_filter-joint": lambda: pacarray.bilateral_filter(
            IMAGE.transpose(2, 0, 1), guide=GUIDE.transpose(2, 0, 1), sigma_spatial=1.5,
            sigma_color=0.2, channel_axis=0, mode="nearest"),
        "bilateral_filter-volume": lambda: pacarray.bilateral_filter(
            volume, sigma_spatial=1, sigma_color=0.2),
        "bilateral_filter-signal": lambda: pacarray.bilateral_filter(
            signal, sigma_spatial=3, sigma_color=0.3),
        "joint_bilateral_upsample": lambda: pacarray.joint_bilateral_upsample(
            low, IMAGE, sigma_spatial=1, sigma_color=0.2, channel_axis=-1),
        "normalized_convolution": lambda: pacarray.normalized_convolution(
            IMAGE, certainty, sigma_spatial=2, channel_axis=-1),
        "detail_preserving_pool": lambda: pacarray.detail_preserving_pool(
            IMAGE, 3, alpha=0.5, lambda_=1.0, stride=2, channel_axis=-1),
        "color_position_features": lambda: pacarray.color_position_features(
            IMAGE, sigma_spatial=8, sigma_color=0.2, channel_axis=-1),
    }


CALLS = _calls()


@pytest.mark.parametrize("case", sorted(CALLS))
def test_blocked_call_equals_the_uncut_call_and_reports_every_block(case):
    before = {name: np.array(value, copy=True) for name, value in
              (("image", IMAGE), ("x", X), ("guide", GUIDE))}
    expected = CALLS[case]()
    reports = []
    with pacarray.progress(lambda done, total, name: reports.append((done, total, name)),
                           min_size=100):
        result = CALLS[case]()
    for got, want in zip(*(r if isinstance(r, tuple) else (r,) for r in (result, expected))):
        assert type(got) is np.ndarray and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    name = case.split("-")[0]
    total = reports[0][1]
    assert total > 1, reports
    assert reports == [(done, total, name) for done in range(total + 1)]
    for key, value in (("image", IMAGE), ("x", X), ("guide", GUIDE)):
        np.testing.assert_array_equal(value, before[key])   # inputs untouched


def test_small_calls_and_calls_outside_the_block_run_uncut():
    reports = []
    with pacarray.progress(lambda *a: reports.append(a)):   # default min_size: 2**22
        small = pacarray.bilateral_filter(IMAGE, sigma_spatial=1, sigma_color=0.1,
                                          channel_axis=-1)
    assert reports == []
    with pacarray.progress(lambda *a: reports.append(a), min_size=100):
        pass
    pacarray.bilateral_filter(IMAGE, sigma_spatial=1, sigma_color=0.1, channel_axis=-1)
    assert reports == []
    np.testing.assert_array_equal(
        small, pacarray.bilateral_filter(IMAGE, sigma_spatial=1, sigma_color=0.1,
                                         channel_axis=-1))


def test_other_threads_and_the_crf_and_gradients_are_not_cut():
    reports = []
    unary = RNG.standard_normal((3, 40, 44)).astype(np.float32)
    results = {}
    with pacarray.progress(lambda *a: reports.append(a), min_size=100):
        worker = threading.Thread(target=lambda: results.update(
            thread=pacarray.bilateral_filter(IMAGE, sigma_spatial=1, sigma_color=0.1,
                                             channel_axis=-1)))
        worker.start()
        worker.join()
        labels = pacarray.pac_crf(unary, IMAGE[:40, :44], channel_axis=-1, label_axis=0,
                                  num_steps=2)
        gradient = pacarray.pac_pool_vjp(np.ones((1, 3, 43, 38), np.float32), X, 3,
                                         guide=X, padding=1)
    assert reports == []
    assert results["thread"].shape == IMAGE.shape
    np.testing.assert_array_equal(
        labels, pacarray.pac_crf(unary, IMAGE[:40, :44], channel_axis=-1, label_axis=0,
                                 num_steps=2))
    assert gradient[0].shape == X.shape


def test_default_reporter_writes_a_line_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # "import tqdm" raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pacarray.progress(min_size=100):
        pacarray.pac_pool(X, 3, guide=X, padding=1)
    err = capsys.readouterr().err
    assert "pacarray.pac_pool: 0/" in err and err.endswith("blocks, " + err.split(
        "blocks, ")[-1])
    total = int(err.split("\r")[1].split("/")[1].split()[0])
    assert f"pacarray.pac_pool: {total}/{total} blocks" in err and err.endswith("s\n")


def test_line_reporter_rewrites_one_line():
    stream = io.StringIO()
    report = _progress._LineReporter(stream)
    for done in range(4):
        report(done, 3, "pac_conv")
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1
    assert "pacarray.pac_conv: 3/3 blocks" in text


@pytest.mark.parametrize("keywords, error, words", [
    (dict(callback=3), TypeError, ("callback", "3")),
    (dict(min_size=0), ValueError, ("min_size", "0")),
    (dict(min_size=2.5), TypeError, ("min_size", "2.5")),
    (dict(min_size=True), TypeError, ("min_size", "True")),
])
def test_bad_arguments_name_the_parameter(keywords, error, words):
    with pytest.raises(error) as raised:
        with pacarray.progress(**keywords):
            pass
    assert all(word in str(raised.value) for word in words), raised.value
