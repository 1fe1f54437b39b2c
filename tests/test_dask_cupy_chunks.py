"""Dask arrays with CuPy chunks, without a GPU: the chunks are the NumPy-backed CuPy stand-in
(``tests/_fake_cupy.py``) and the CUDA backend's kernels run on their CPU emulation
(``tests/cuda_emulation``), so the Dask layer's handling of device chunks (the result's meta,
halos assembled from device blocks, small arguments moved to the device, the per-block calls
into the CUDA backend) runs end to end. The GPU test ``test_dask.py::
test_cupy_chunks_stay_on_the_device`` checks the same on hardware.
"""

from __future__ import annotations

import numpy as np
import pytest

import pacarray
from _fake_cupy import FakeArray, install

da = pytest.importorskip("dask.array")


@pytest.fixture
def device(emulator, monkeypatch):
    """The CuPy stand-in, its launches run on the emulator."""
    from cuda_emulation import emulator as emu

    from dask.array.dispatch import concatenate_lookup

    runtime = emu.EmulatedRuntime(emulator)
    cupy = install(monkeypatch, run=runtime.run)
    # Dask joins the blocks of a result with the concatenate registered for the chunks' type;
    # CuPy registers its own, the stand-in gets one that keeps the type.
    monkeypatch.setitem(concatenate_lookup._lookup, FakeArray,
                        lambda arrays, axis=0: np.concatenate(arrays, axis=axis).view(FakeArray))
    return cupy


def _on_device(array):
    return np.ascontiguousarray(array).view(FakeArray)


def _lazy(array, chunks):
    return da.from_array(_on_device(array), chunks=chunks, asarray=False)


def _check(lazy_result, in_memory, cpu, dtype):
    """The lazy result keeps device chunks, equals the in-memory device call (same kernels on
    the same values, so within rounding of the blocks' different sums) and the CPU backend."""
    assert isinstance(lazy_result._meta, FakeArray)
    blocks = [block.compute(scheduler="sync") for block in lazy_result.to_delayed().ravel()]
    assert all(isinstance(block, FakeArray) for block in blocks)
    value = lazy_result.compute(scheduler="sync")
    assert isinstance(value, FakeArray)
    assert isinstance(in_memory, FakeArray)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    scale = max(1.0, float(np.max(np.abs(np.asarray(cpu)))))
    assert value.shape == cpu.shape and value.dtype == cpu.dtype
    assert np.max(np.abs(np.asarray(value) - np.asarray(in_memory))) <= tolerance * scale
    assert np.max(np.abs(np.asarray(value) - cpu)) <= 10 * tolerance * scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilateral_filter_on_device_chunks(device, dtype):
    rng = np.random.default_rng(3)
    image = rng.random((29, 35, 3)).astype(dtype)
    keywords = dict(sigma_spatial=1.5, sigma_color=0.2, channel_axis=-1)
    lazy = pacarray.bilateral_filter(_lazy(image, (11, 13, 3)), **keywords)
    _check(lazy, pacarray.bilateral_filter(_on_device(image), **keywords),
           pacarray.bilateral_filter(image, **keywords), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pac_conv_with_guide_mask_and_stride_on_device_chunks(device, dtype):
    """Guide and mask chunks travel with the data; the weight, a NumPy array, goes to every
    task and is moved to the device there."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 23, 27)).astype(dtype)
    guide = rng.random((1, 2, 23, 27)).astype(dtype)
    mask = (rng.random((1, 1, 23, 27)) > 0.3).astype(dtype)
    weight = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
    keywords = dict(padding=1, stride=2, dilation=1, normalize="mask_kernel")
    chunks = (1, 4, 9, 10)
    lazy = pacarray.pac_conv(_lazy(x, chunks), weight, guide=_lazy(guide, (1, 2, 9, 10)),
                             mask=_lazy(mask, (1, 1, 9, 10)), **keywords)
    in_memory = pacarray.pac_conv(_on_device(x), _on_device(weight), guide=_on_device(guide),
                                  mask=_on_device(mask), **keywords)
    _check(lazy, in_memory, pacarray.pac_conv(x, weight, guide=guide, mask=mask, **keywords),
           dtype)


def test_pac_pool_and_transpose_on_device_chunks(device):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 17, 19)).astype(np.float32)
    guide = rng.random((1, 2, 17, 19)).astype(np.float32)
    pooled = pacarray.pac_pool(_lazy(x, (1, 3, 6, 7)), 3, guide=_lazy(guide, (1, 2, 6, 7)),
                               stride=2, padding=1)
    _check(pooled, pacarray.pac_pool(_on_device(x), 3, guide=_on_device(guide), stride=2,
                                     padding=1),
           pacarray.pac_pool(x, 3, guide=guide, stride=2, padding=1), np.float32)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    big_guide = rng.random((1, 2, 34, 38)).astype(np.float32)
    up = pacarray.pac_conv_transpose(_lazy(x, (1, 3, 6, 7)), weight,
                                     guide=_lazy(big_guide, (1, 2, 12, 14)), stride=2,
                                     padding=1, output_padding=1)
    _check(up, pacarray.pac_conv_transpose(_on_device(x), _on_device(weight),
                                           guide=_on_device(big_guide), stride=2, padding=1,
                                           output_padding=1),
           pacarray.pac_conv_transpose(x, weight, guide=big_guide, stride=2, padding=1,
                                       output_padding=1), np.float32)


def test_pac_crf_on_device_chunks(device):
    rng = np.random.default_rng(9)
    unary = rng.standard_normal((3, 21, 25)).astype(np.float32)
    image = rng.random((21, 25, 3)).astype(np.float32)
    terms = [pacarray.PairwiseTerm(weight=1.0, kernel_size=3, sigma_spatial=1.5,
                                   sigma_color=0.2)]
    lazy = pacarray.pac_crf(_lazy(unary, (3, 8, 9)), _lazy(image, (8, 9, 3)), num_steps=2,
                            pairwise=terms)
    _check(lazy, pacarray.pac_crf(_on_device(unary), _on_device(image), num_steps=2,
                                  pairwise=terms),
           pacarray.pac_crf(unary, image, num_steps=2, pairwise=terms), np.float32)


def test_device_and_host_chunks_are_not_mixed(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 12, 12)).astype(np.float32)
    with pytest.raises(TypeError):
        pacarray.pac_pool(_lazy(x, (1, 2, 6, 6)), 3, guide=da.from_array(x, chunks=(1, 2, 6, 6)),
                          padding=1)
