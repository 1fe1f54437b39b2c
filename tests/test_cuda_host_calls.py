"""What a CUDA-backend call asks of CuPy on the host, counted without a GPU.

On an H200 a one-image call cost about 0.45 ms more than its GPU work (docs/guide/benchmarks.md):
each CuPy call costs the host microseconds, each upload of a host array or read of a device value
makes the host wait for the GPU. Here a NumPy-backed stand-in for CuPy counts the calls of the
front end and of ``pacarray._cuda`` (the kernels' launches are recorded, not run; the emulation
tests run them), so a change that adds uploads, synchronizing reads or many calls shows here.
"""

from __future__ import annotations

import numpy as np
import pytest

import pacarray
from _fake_cupy import READS, FakeArray, install


@pytest.fixture
def fake(monkeypatch):
    return install(monkeypatch)


def _count(cupy, call):
    call()   # the first call uploads the constants
    cupy.counts.clear()
    cupy.uploads.clear()
    cupy.launches.clear()
    READS.clear()
    call()
    return (sum(cupy.counts.values()), list(cupy.uploads), list(cupy.launches),
            sum(READS.values()))


def test_the_stand_in_counts_uploads(fake):
    fake.asarray(np.ones(3))
    assert fake.uploads == [(3,)] and fake.counts["asarray"] == 1


@pytest.mark.parametrize("case", ["pool", "conv16", "conv_mask_inverse", "bilateral", "crf"])
def test_a_repeated_call_uploads_nothing_and_makes_few_cupy_calls(fake, case):
    rng = np.random.default_rng(0)

    def device(shape):
        return rng.random(shape, dtype=np.float32).view(FakeArray)

    x, guide = device((1, 16, 24, 24)), device((1, 3, 24, 24))
    if case == "pool":
        def call():
            return pacarray.pac_pool(x, 5, guide=guide, stride=2, padding=2, normalize="kernel")
        limit, reads = 6, 0
    elif case == "conv16":
        weight = device((16, 16, 5, 5))

        def call():
            return pacarray.pac_conv(x, weight, guide=guide, padding=2)
        limit, reads = 10, 0
    elif case == "bilateral":
        image = device((24, 24, 3))

        def call():
            return pacarray.bilateral_filter(image, sigma_spatial=2.0, sigma_color=0.1,
                                             channel_axis=-1)
        limit, reads = None, 0   # the spatial window was uploaded at every call
    elif case == "crf":
        image, unary = device((24, 24, 3)), device((4, 24, 24))

        def call():
            return pacarray.pac_crf(unary, image, num_steps=2)
        # The unary and the image are checked for NaN and Inf (one flag each); the five terms'
        # windows were uploaded at every call. The default palette term reads its strided
        # sample of the image (k-means runs on the host, the same palette on every backend)
        # and uploads what depends on it: the palette and its colour affinities.
        limit, reads = None, 3
    else:
        weight, mask = device((16, 16, 3, 3)), device((1, 1, 24, 24))

        def call():
            return pacarray.pac_conv(x, weight, guide=guide, padding=1, mask=mask,
                                     family=pacarray.InversePower(0.5, -1.0),
                                     normalize="mask_kernel", smooth="gaussian")
        # The inverse-power range check reads the guide's extremes (one transfer; it was four
        # values and a flag) and the mask check one flag: checks that need the data.
        limit, reads = None, 2
    calls, uploads, launches, read = _count(fake, call)
    assert uploads == ([(1, 16, 3), (1, 16, 16)] if case == "crf" else [])
    # The CRF: one window-term launch per step (the palette term runs on CuPy array operations)
    assert len(launches) == (2 if case == "crf" else 1)
    assert read == reads, dict(READS)
    # Before the constants were kept on the device: 15 calls with 3 uploads for the pool,
    # 18 calls with 3 uploads for the conv (counted with this stand-in).
    if limit is not None:
        assert calls <= limit, dict(fake.counts)
