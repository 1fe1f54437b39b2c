"""The benchmark harness runs end to end and measures what it claims to."""

import json
import os
import sys

import numpy as np
import pytest

from _tiers import tiered
from pacarray.benchmarks import WORKLOAD_MODULES, Case, Peer, Workload, load_workloads
from pacarray.benchmarks.__main__ import main
from pacarray.benchmarks._harness import (
    Context,
    peak_extra_memory_mib,
    reset_peak_rss,
    time_case,
)


def _first_cpu_workload_of_each_module():
    chosen = []
    for module in WORKLOAD_MODULES:
        names = [w.name for w in load_workloads([module]) if "cpu" in w.devices]
        if names:
            chosen.append(names[0])
    return chosen


@pytest.mark.slow  # child processes and a cold Numba start per workload: tens of seconds
def test_quick_run_end_to_end(tmp_path, capsys):
    # The whole command line on one CPU workload of each module (each measured in two fresh
    # child processes) plus one GPU-only workload, which must be listed as not run here.
    # test_every_cpu_workload_runs covers the other workloads in this process, which is much
    # cheaper than two process start-ups each. The cold-start table is covered separately.
    chosen = _first_cpu_workload_of_each_module()
    assert {"B-conv16", "B-bilateral-512", "B-crf", "B-conv16-grad"} <= set(chosen)
    gpu_only = [w.name for w in load_workloads(WORKLOAD_MODULES) if "cpu" not in w.devices]
    results = tmp_path / "results.json"
    options = ["--quick", "--no-peers", "--no-cold", "--repeat", "2"]
    assert main([*options, "--only", *chosen, gpu_only[0], "--json", str(results)]) == 0
    text = capsys.readouterr().out
    report = json.loads(results.read_text())
    for name in chosen:
        assert name in text
        entry = report["workloads"][name]
        assert "error" not in entry, entry
        timings = {timing["name"]: timing for timing in entry["timing"]["timings"]}
        assert not any(name.startswith("torch") for name in timings)  # peers were turned off
        timing = timings["pacarray"]
        assert timing["runs"] == 2
        assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
        assert timing["q1_ms"] <= timing["q3_ms"]
        peak = entry["memory"]["peak_mib"]["pacarray"]
        assert peak is None or peak >= 0
    assert set(report["workloads"]) == set(chosen)
    assert f"GPU-only workloads not run here: {gpu_only[0]}" in text
    # the hardware line, measured in its own child (the loop's arithmetic is checked below)
    assert report["peak"]["fma_gflops"] > 0 and report["peak"]["gemm_gflops"] > 0
    assert "peak: FMA" in text and report["peak"]["line"] in text


def test_fma_peak_loop_computes_its_recurrence():
    # The peak loop must do the FMAs it counts: every lane follows x <- x*m + c, and the
    # function returns lane 0 summed over the chains. Emulated with one float32 rounding per
    # fused step (the float64 product of two float32 values is exact).
    from pacarray.benchmarks import peak

    function, width = peak._fma_function()
    assert width in (4, 8, 16)
    m, c = 1.0 - 2.0**-24, 2.0**-20
    steps = 50
    expected = np.float32(0.0)
    for chain in range(peak.CHAINS):
        value = np.float32(chain)  # lane 0 of chain k starts at k
        for _ in range(steps):
            value = np.float32(float(value) * m + c)
        expected = np.float32(expected + value)
    assert function(steps) == pytest.approx(float(expected), rel=1e-6)
    assert peak.fma_peak_gflops(1, seconds=0.01) > 0
    assert peak.flops_fraction(2e9, 0.5, 8.0) == pytest.approx(0.5)


CPU_WORKLOADS = [w for w in load_workloads(WORKLOAD_MODULES) if "cpu" in w.devices]


# The first workload of each module stays in the quick tier.
@pytest.mark.parametrize(
    "workload",
    tiered(CPU_WORKLOADS, [i for i, w in enumerate(CPU_WORKLOADS)
                           if w.name in _first_cpu_workload_of_each_module()]),
    ids=lambda w: w.name,
)
def test_every_cpu_workload_runs(workload):
    """Every CPU workload builds at quick sizes and its pacarray call returns finite numbers."""
    case = workload.build(Context(quick=True, peers=False))
    result = case.call()
    values = np.asarray(result[0] if isinstance(result, tuple) else result)
    assert values.size > 0 and np.all(np.isfinite(values)), workload.name
    assert not any(peer.name.startswith("torch") for peer in case.peers)


def test_gpu_workloads_build_on_the_cpu():
    """The GPU-only workloads' builders run at quick sizes with NumPy arrays (their calls and
    the host profile of G-call included), so a device session starts from code that runs; the
    CuPy parts are exercised there."""
    from pacarray.benchmarks import gpu

    for workload in gpu.WORKLOADS:
        case = workload.build(Context(quick=True, peers=False))
        result = case.call()
        values = np.asarray(result[0] if isinstance(result, tuple) else result)
        assert values.size > 0 and np.all(np.isfinite(values)), workload.name
    call = {w.name: w for w in gpu.WORKLOADS}["G-call"].build(Context(quick=True, peers=False))
    assert any(note.startswith("host time per call") and note.count(" us") >= 3
               for note in call.notes)


@pytest.mark.slow  # a fresh process that imports pacarray
def test_quick_cold_start_table(tmp_path, capsys):
    results = tmp_path / "results.json"
    assert main(["--quick", "--no-peers", "--repeat", "1", "--only", "B-pool", "cold",
                 "--json", str(results)]) == 0
    text = capsys.readouterr().out
    report = json.loads(results.read_text())
    cold = report["cold"]["Numba cache warm"]  # --quick skips the empty-cache run
    assert cold["import_pacarray_s"] > 0
    assert [call["name"] for call in cold["calls"]] == ["B-pool"]
    assert "cold start" in text and "import pacarray" in text


def test_unknown_workload_is_rejected():
    with pytest.raises(SystemExit, match="nope"):
        main(["--quick", "--only", "nope"])


def test_workload_names_must_be_unique(monkeypatch):
    import sys
    import types

    module = types.ModuleType("fake_workloads")
    module.WORKLOADS = [Workload("B-conv16", "a copy", lambda context: None)]
    monkeypatch.setitem(sys.modules, "fake_workloads", module)
    with pytest.raises(RuntimeError, match="B-conv16"):
        load_workloads([*WORKLOAD_MODULES, "fake_workloads"])


@pytest.mark.slow  # compiles a Numba function on every run
@pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_numpy_and_numba_allocations():
    import numba

    mebibytes = 48
    count = mebibytes * 2**20 // 8

    def numpy_call():
        return np.ones(count)

    @numba.njit
    def numba_allocation(n):
        out = np.empty(n)
        for i in range(n):
            out[i] = i
        return out[:1].copy()  # the big array is freed before returning

    numba_allocation(10)
    for call in (numpy_call, lambda: numba_allocation(count)):
        measured = peak_extra_memory_mib(call)
        assert mebibytes * 0.95 < measured < mebibytes * 1.5
    assert peak_extra_memory_mib(lambda: None) < 5


def test_time_case_statistics_and_reference_check():
    values = np.arange(6.0)
    case = Case(
        call=lambda: values,
        label="identity",
        peers=[Peer("same", lambda: values + 1e-9, reference=True),
               Peer("different", lambda: values + 1.0, reference=True),
               Peer("bound", lambda: values[:2])],
    )
    result = time_case(case, repeat=5, warmup=1)
    timings = {entry["name"]: entry for entry in result["timings"]}
    assert set(timings) == {"pacarray", "same", "different", "bound"}
    assert all(entry["runs"] == 5 for entry in timings.values())
    assert result["checks"]["same"]["ok"]
    assert not result["checks"]["different"]["ok"]
    assert result["checks"]["different"]["error"] == pytest.approx(1.0 / 5.0)
    assert "bound" not in result["checks"]


@pytest.mark.slow  # importing PyTorch takes seconds
@pytest.mark.parametrize("stride, weighted", [(1, True), (2, False), (1, False)])
def test_unfold_baseline_matches_pacarray(stride, weighted):
    torch = pytest.importorskip("torch")
    import pacarray
    from pacarray.benchmarks.core import unfold_pac

    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 3, 9, 8))
    guide = rng.standard_normal((2, 4, 9, 8))
    weight = rng.standard_normal((5, 3, 3, 3))
    normalize = None if weighted else "kernel"
    geometry = dict(stride=stride, padding=1)
    if weighted:
        expected = pacarray.pac_conv(x, weight, guide=guide, family=pacarray.Gaussian(),
                                     **geometry)
    else:
        expected = pacarray.pac_pool(x, 3, guide=guide, family=pacarray.Gaussian(),
                                     normalize=normalize, **geometry)
    result = unfold_pac(torch, torch.from_numpy(x), torch.from_numpy(guide),
                        torch.from_numpy(weight) if weighted else None, 3,
                        normalize=normalize, **geometry).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # importing PyTorch takes seconds
def test_unfold_peers_keep_their_inputs_device():
    """The PyTorch peers create no tensor on the default device: with inputs on PyTorch's
    ``meta`` device (shapes only), a tensor made on the CPU stops them as a CUDA input would
    (the GPU run of B-crf on an H200 failed so, before the CRF peer's offsets took the
    unary's device). The default window term only: a palette term's palette is k-means of
    the image's values, on the host, which a ``meta`` tensor does not have."""
    torch = pytest.importorskip("torch")
    from pacarray.benchmarks.core import unfold_pac
    from pacarray.benchmarks.crf import unfold_crf
    from pacarray.crf import DEFAULT_PAIRWISE

    meta = dict(device="meta")
    q = unfold_crf(torch, torch.empty(1, 4, 12, 13, **meta), torch.empty(1, 3, 12, 13, **meta),
                   steps=2, terms=DEFAULT_PAIRWISE[:1])
    assert q.device.type == "meta" and q.shape == (1, 4, 12, 13)
    y = unfold_pac(torch, torch.empty(1, 3, 9, 8, **meta), torch.empty(1, 4, 9, 8, **meta),
                   torch.empty(5, 3, 3, 3, **meta), 3, padding=1, normalize="kernel")
    assert y.device.type == "meta" and y.shape == (1, 5, 9, 8)


@pytest.mark.slow  # importing PyTorch takes seconds
@pytest.mark.parametrize("size, output_padding", [(7, 1), (6, 0)])
def test_unfold_transposed_baseline_matches_pacarray(size, output_padding):
    torch = pytest.importorskip("torch")
    import pacarray
    from pacarray.benchmarks.core import unfold_pac_transpose

    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, 3, size, size + 1))
    weight = rng.standard_normal((3, 4, 5, 5))
    geometry = dict(stride=2, padding=2, output_padding=output_padding)
    out = [(s - 1) * 2 - 4 + 5 + output_padding for s in x.shape[2:]]
    guide = rng.standard_normal((1, 2, *out))
    expected = pacarray.pac_conv_transpose(x, weight, guide=guide, family=pacarray.Gaussian(),
                                           **geometry)
    result = unfold_pac_transpose(torch, torch.from_numpy(x), torch.from_numpy(guide),
                                  torch.from_numpy(weight), 5, **geometry).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


def _start_environment():
    """On a worker: the environment its process started with (what glibc read)."""
    with open("/proc/self/environ", "rb") as environ:
        items = environ.read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/environ")
def test_dask_benchmark_workers_start_with_its_allocator_settings():
    """glibc reads MALLOC_* when a process starts: B-dask's workers must have them from the
    start (the nanny's pre-spawn environment), not set later as ``LocalCluster(env=...)`` does,
    which left the nanny's MALLOC_TRIM_THRESHOLD_=65536 in force (docs/guide/dask.md). The
    benchmark's own process keeps its environment."""
    pytest.importorskip("distributed")
    from pacarray.benchmarks import dask as bench

    before = dict(os.environ)
    client = bench._cluster()
    cluster = client.cluster
    try:
        assert dict(os.environ) == before
        started = client.run(_start_environment)
    finally:
        client.close()
        cluster.close()
    assert len(started) == bench.WORKERS
    threshold = str(bench.WORKER_MALLOC_THRESHOLD)
    for environment in started.values():
        assert environment.get("MALLOC_TRIM_THRESHOLD_") == threshold
        assert environment.get("MALLOC_MMAP_THRESHOLD_") == threshold
        assert environment.get("NUMBA_NUM_THREADS") == "1"
