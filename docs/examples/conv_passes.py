"""Where the forward conv time of B-conv16, B-conv64 and B-conv3d goes, against the FMA peak.

Run from the repository root: ``python docs/examples/conv_passes.py`` (about two minutes; the
numbers are in docs/guide/benchmarks.md, "Where the conv time goes"). Variants of the same
call through the public API, interleaved over three rounds, medians:

* ``full``: ``pac_conv`` with ``C_out = C`` (kernel K, padded input rows and products);
* ``one``: the same with ``C_out = 1`` (K, padded rows and 1/C of the products);
* ``kernel``: ``pac_kernel`` on the guide alone (K, written out);
* ``explicit``: ``pac_conv`` with a precomputed ``kernel=K`` (padded rows and products, no K);
* ``vjp``: ``pac_conv_vjp`` with respect to x, weight and guide.

The products' time is estimated as ``(full - one) * C / (C - 1)`` (the call with one output
channel does some products too, so the estimate reads high); the rest of the call is K, the
padded input rows and the output's store.
"""

import time

import numpy as np

import pacarray
from pacarray.benchmarks.peak import fma_peak_gflops, gemm_gflops


def median_ms(call, runs=9):
    call()
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def measure(channels, size, k, guide_channels, rank=2):
    rng = np.random.default_rng(0)
    spatial = (size,) * rank
    x = rng.standard_normal((1, channels) + spatial, dtype=np.float32)
    guide = (2 * rng.random((1, guide_channels) + spatial, dtype=np.float32)).astype(np.float32)
    weight = rng.standard_normal((channels, channels) + (k,) * rank, dtype=np.float32)
    weight = (weight / np.sqrt(channels * k**rank)).astype(np.float32)
    one = np.ascontiguousarray(weight[:1])
    pad = (k - 1) // 2
    size_arg = k if rank == 2 else (k,) * rank
    family = pacarray.Gaussian()
    kernel = pacarray.pac_kernel(guide, size_arg, padding=pad, family=family)
    grad = rng.standard_normal(x.shape, dtype=np.float32)
    calls = {
        "full": lambda: pacarray.pac_conv(x, weight, guide=guide, family=family, padding=pad),
        "one": lambda: pacarray.pac_conv(x, one, guide=guide, family=family, padding=pad),
        "kernel": lambda: pacarray.pac_kernel(guide, size_arg, padding=pad, family=family),
        "explicit": lambda: pacarray.pac_conv(x, weight, kernel=kernel, padding=pad),
        "vjp": lambda: pacarray.pac_conv_vjp(grad, x, weight, guide=guide, family=family,
                                             padding=pad),
    }
    rounds = {name: [] for name in calls}
    for _ in range(3):
        for name, call in calls.items():
            rounds[name].append(median_ms(call))
    flops = 2.0 * channels * channels * k**rank * size**rank
    return {name: float(np.median(v)) for name, v in rounds.items()}, flops


def main():
    peak = fma_peak_gflops(2)
    print(f"peak: FMA {peak:.0f} GFLOP/s (2 threads, float32), "
          f"NumPy sgemm {gemm_gflops(1024):.0f} GFLOP/s")
    for name, args in [("B-conv16", (16, 256, 5, 8)), ("B-conv64", (64, 128, 3, 8)),
                       ("B-conv3d", (8, 64, 3, 4, 3))]:
        t, flops = measure(*args)
        channels = args[0]
        products = (t["full"] - t["one"]) * channels / (channels - 1)
        rest = t["full"] - products
        print(f"{name}: full {t['full']:.2f} ms ({flops / t['full'] / 1e6 / peak:.0%} of peak)"
              f" | C_out=1 {t['one']:.2f} | pac_kernel alone {t['kernel']:.2f}"
              f" | explicit K {t['explicit']:.2f} | vjp {t['vjp']:.2f} ms"
              f" (forward + backward {(t['vjp'] + t['full']) / t['full']:.2f}x forward)")
        print(f"   products ~ {products:.2f} ms = {flops / products / 1e6 / peak:.0%} of peak;"
              f" K + padded rows + rest ~ {rest:.2f} ms ({rest / t['full']:.0%} of the call);"
              f" all at peak {flops / peak / 1e6:.2f} ms")


if __name__ == "__main__":
    main()
