"""What the machine can do at best: the ``peak`` line of ``python -m pacarray.benchmarks``.

Ratios against a peer depend on the machine (one CPU runs ``F.conv2d`` twice as fast as
another), so the report also reads every time against the hardware:

* **FMA peak**: a loop whose fused multiply-adds never touch memory: twelve independent vector
  accumulators per thread, as wide as the CPU's widest float32 vector (AVX-512, AVX or SSE),
  enough chains to cover the FMA latency on both FMA units. Run on the benchmark's thread
  count, it is the arithmetic ceiling of any kernel Numba (LLVM) can generate here.
* **GEMM**: float32 ``A @ B`` through the BLAS NumPy ships (OpenBLAS), the best dense product
  available without a deep-learning framework.

:func:`flops_fraction` turns a workload's useful flops and median time into a fraction of the
FMA peak.
"""

from __future__ import annotations

import time

import numpy as np

#: Independent vector accumulator chains per thread: FMA latency (4 cycles) times FMA units (2)
#: is 8 in flight; 12 leaves margin on any current x86 core.
CHAINS = 12


def _fma_ir(width: int, chains: int) -> str:
    """LLVM IR of ``float fma_loop(i64 steps)``: ``chains`` ``<width x float>`` accumulators
    (SSA values, hence registers) each updated by one ``llvm.fma`` per step."""
    vector = f"<{width} x float>"

    def splat(value: str) -> str:
        return f"{vector} <" + ", ".join([f"float {value}"] * width) + ">"

    def ramp(first: int) -> str:
        return "<" + ", ".join(f"float {float(first + j):e}" for j in range(width)) + ">"

    fma = f"@llvm.fma.v{width}f32"
    lines = [f"declare {vector} {fma}({vector}, {vector}, {vector})",
             "define float @fma_loop(i64 %steps) {", "entry:", "  br label %loop", "loop:",
             "  %i = phi i64 [0, %entry], [%next, %loop]"]
    lines += [f"  %a{k} = phi {vector} [{ramp(k)}, %entry], [%b{k}, %loop]"
              for k in range(chains)]
    # x * (1 - 2^-24) + 2^-20: stays finite and normal for any step count
    lines += [f"  %b{k} = call {vector} {fma}({vector} %a{k}, "
              f"{splat('0x3FEFFFFFE0000000')}, {splat('0x3EB0000000000000')})"
              for k in range(chains)]
    lines += ["  %next = add i64 %i, 1", "  %done = icmp uge i64 %next, %steps",
              "  br i1 %done, label %exit, label %loop", "exit:"]
    total = "%b0"
    for k in range(1, chains):
        lines.append(f"  %s{k} = fadd {vector} {total}, %b{k}")
        total = f"%s{k}"
    lines += [f"  %r = extractelement {vector} {total}, i32 0", "  ret float %r", "}"]
    return "\n".join(lines)


_KERNELS: dict = {}


def _fma_function():
    """``(callable(steps) -> float, vector width)``, compiled once for the host CPU by llvmlite
    (Numba's own backend). Numba cannot be asked for a loop whose accumulators stay in vector
    registers (it neither packs independent scalar chains nor keeps array elements in registers),
    so the loop is written in LLVM IR; ctypes releases the GIL while it runs, so Python threads
    run it in parallel."""
    if not _KERNELS:
        import ctypes

        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        features = llvm.get_host_cpu_features()
        width = 16 if features.get("avx512f") else 8 if features.get("avx") else 4
        module = llvm.parse_assembly(_fma_ir(width, CHAINS))
        module.verify()
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=features.flatten(), opt=3)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        address = engine.get_function_address("fma_loop")
        function = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(address)
        _KERNELS.update(function=function, width=width, engine=engine)
    return _KERNELS["function"], _KERNELS["width"]


def _run_threads(function, threads: int, steps: int) -> float:
    import threading

    workers = [threading.Thread(target=function, args=(steps,)) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def fma_peak_gflops(threads: int, seconds: float = 0.3) -> float:
    """Measured float32 FMA throughput of ``threads`` threads, in GFLOP/s (2 flops per FMA).

    The best of four runs of about ``seconds`` each.
    """
    function, width = _fma_function()
    steps = 10_000
    while True:  # grow until one run takes a measurable time
        elapsed = _run_threads(function, threads, steps)
        if elapsed > seconds / 4 or steps > 10**10:
            break
        steps *= 4
    best = min(_run_threads(function, threads, steps) for _ in range(4))
    return 2.0 * CHAINS * width * steps * threads / best / 1e9


def gemm_gflops(size: int = 1024, repeat: int = 5) -> float:
    """float32 ``(size, size) @ (size, size)`` through NumPy's BLAS, in GFLOP/s (best run)."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def flops_fraction(flops: float, seconds: float, peak_gflops: float) -> float:
    """Fraction of the FMA peak that ``flops`` useful operations in ``seconds`` reach."""
    return flops / seconds / 1e9 / peak_gflops


def peak_line(threads: int, quick: bool = False) -> tuple[str, dict]:
    """The report's ``peak`` line and its numbers (GFLOP/s)."""
    fma = fma_peak_gflops(threads, seconds=0.05 if quick else 0.3)
    gemm = gemm_gflops(256 if quick else 1024, repeat=2 if quick else 5)
    numbers = {"fma_gflops": fma, "gemm_gflops": gemm, "threads": threads}
    line = (f"peak: FMA {fma:.0f} GFLOP/s ({threads} threads, float32, register-resident "
            f"LLVM loop), GEMM {gemm:.0f} GFLOP/s (NumPy BLAS sgemm, "
            f"{256 if quick else 1024}^3)")
    return line, numbers


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as handle:
            for text in handle:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
