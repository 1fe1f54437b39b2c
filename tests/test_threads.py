"""Concurrent calls from several Python threads, under every Numba threading layer present.

Numba's ``workqueue`` layer aborts the process when two threads enter parallel (``prange``)
kernels at once; pacarray must never crash its host program (README, "Threads"). Its kernels
run on its own thread pool instead (pacarray/_cpu/_parallel.py), so the layer must not matter:
each runs in a fresh interpreter, because Numba fixes its layer for the life of the process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import numba
    import numpy as np

    import pacarray

    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 20, 23), dtype=np.float32)
    weight = rng.random((4, 3, 3, 3), dtype=np.float32)
    image = rng.random((21, 19, 3), dtype=np.float32)
    unary = rng.random((3, 21, 19), dtype=np.float32)
    calls = {
        "pac_pool": lambda: pacarray.pac_pool(x, 3, guide=x, padding=1, normalize="kernel"),
        "pac_conv": lambda: pacarray.pac_conv(x, weight, guide=x, padding=1),
        "pac_conv_vjp": lambda: pacarray.pac_conv_vjp(
            np.ones((1, 4, 20, 23), np.float32), x, weight, guide=x, padding=1).x,
        "bilateral_filter": lambda: pacarray.bilateral_filter(
            image, sigma_spatial=1.5, sigma_color=0.2, channel_axis=-1),
        "pac_crf": lambda: pacarray.pac_crf(unary, image),
    }
    serial = {name: call() for name, call in calls.items()}

    def run(name):
        return name, calls[name]()

    jobs = [name for name in calls for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, result in pool.map(run, jobs):
            assert np.array_equal(result, serial[name]), name
    print("layer", numba.threading_layer(), "ok", len(jobs))
    """
)


def _layers():
    layers = ["workqueue"]
    for layer in ("omp", "tbb"):
        try:
            found = importlib.util.find_spec(f"numba.np.ufunc.{layer}pool") is not None
            if found:
                importlib.import_module(f"numba.np.ufunc.{layer}pool")
        except ImportError:
            found = False
        if found:
            layers.append(layer)
    return layers


@pytest.mark.parametrize("layer", ["default", *_layers()])
def test_concurrent_calls_match_serial_results(layer):
    environment = dict(os.environ)
    if layer == "default":
        environment.pop("NUMBA_THREADING_LAYER", None)
    else:
        environment["NUMBA_THREADING_LAYER"] = layer
    environment["NUMBA_NUM_THREADS"] = "2"
    completed = subprocess.run([sys.executable, "-c", _SCRIPT], env=environment,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, (
        f"exit status {completed.returncode} under {layer}:\n{completed.stderr[-2000:]}"
    )
    expected = layer if layer != "default" else None
    reported = completed.stdout.split()
    assert reported[0] == "layer" and reported[2] == "ok", completed.stdout
    if expected is not None:
        assert reported[1] == expected
    else:
        assert reported[1] != "workqueue" or _layers() == ["workqueue"]
