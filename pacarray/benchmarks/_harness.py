"""Measurement machinery of ``python -m pacarray.benchmarks``.

The parent process only orchestrates. Every workload is measured in fresh child processes
(``python -m pacarray.benchmarks --child SPEC``), so that one workload's caches, allocator state
and thread pools never colour another's numbers:

* a **timing** child builds the inputs, runs every implementation (pacarray and its peers)
  ``warmup`` times, then ``repeat`` timed runs of each, in blocks of one implementation (opened
  by an untimed call, so that the previous library's spinning threads are idle again) taken in
  three alternating passes, so that a drift of the machine's load hits all of them alike; it
  reports the median, quartiles and extremes, and checks that peers marked ``reference`` agree
  with pacarray;
* a **memory** child does the same warm-up, then for each implementation resets the kernel's
  resident-set high-water mark (``/proc/self/clear_refs``), runs it once and reports
  ``VmHWM - VmRSS(before)``: the peak extra memory of the call, output included, whoever
  allocated it (NumPy, Numba's runtime, PyTorch, BLAS). glibc is told to serve every allocation
  of 64 KiB or more with ``mmap`` and to give freed memory back, so memory left resident by the
  warm-up cannot hide the call's own allocations;
* **cold** children time ``import pacarray`` and the first call of each workload in a fresh
  process, with Numba's on-disk cache warm and with it pointed at an empty folder.

Children run with 2 threads everywhere (Numba, PyTorch, BLAS) and float32 data.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

THREADS = 2
TIMING_PASSES = 3
MEMORY_MMAP_THRESHOLD = 64 * 1024


# --------------------------------------------------------------------------------------------
# What workload modules declare


@dataclass(frozen=True)
class Peer:
    """Another library's implementation measured beside pacarray in the same child process.

    ``target`` is the largest acceptable ratio ``pacarray time / peer time`` (``None``: no
    target); ``reference`` marks a peer that computes the same thing, whose output is compared
    with pacarray's.
    """

    name: str
    call: Callable[[], object]
    role: str = "lower bound"
    target: float | None = None
    reference: bool = False


@dataclass
class Case:
    """One workload made concrete: inputs allocated, calls ready to time.

    ``memory_target_mb`` is the largest acceptable peak extra memory of the pacarray call, in
    MiB (2**20 bytes), like every memory figure of the report.
    """

    call: Callable[[], object]
    label: str
    peers: list[Peer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory_target_mb: float | None = None
    tolerance: float = 1e-4
    #: Useful floating-point operations of one pacarray call (multiply-adds count 2), when the
    #: workload states them: the report then gives the fraction of the machine's FMA peak.
    flops: float | None = None


@dataclass(frozen=True)
class Context:
    """What a workload's ``build`` receives."""

    quick: bool
    device: str = "cpu"
    seed: int = 0
    peers: bool = True

    @property
    def xp(self):
        """``numpy`` on the CPU, ``cupy`` on the GPU."""
        if self.device == "gpu":
            return importlib.import_module("cupy")
        return np

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def asarray(self, array: np.ndarray):
        """Move a NumPy array to the workload's device."""
        return self.xp.asarray(array)

    def torch(self):
        """PyTorch for the peers, or ``None`` when it is missing or peers are turned off."""
        if not self.peers:
            return None
        try:
            torch = importlib.import_module("torch")
        except ImportError:
            return None
        torch.set_num_threads(THREADS)
        if self.device == "gpu" and not torch.cuda.is_available():
            return None
        return torch

    def torch_tensor(self, torch, array: np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.cuda() if self.device == "gpu" else tensor


@dataclass(frozen=True)
class Workload:
    """A named measurement: ``build(context) -> Case``."""

    name: str
    summary: str
    build: Callable[[Context], Case]
    devices: tuple[str, ...] = ("cpu",)


def load_workloads(module_names: Sequence[str]) -> list[Workload]:
    """The ``WORKLOADS`` of every registered module, in order; names must be unique."""
    workloads: list[Workload] = []
    for module_name in module_names:
        workloads.extend(importlib.import_module(module_name).WORKLOADS)
    names = [w.name for w in workloads]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"benchmark workload names must be unique, repeated: {duplicates}")
    return workloads


# --------------------------------------------------------------------------------------------
# Inside a child process


def set_threads() -> None:
    import numba

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))


def _synchronizer(device: str) -> Callable[[], None]:
    if device != "gpu":
        return lambda: None
    cupy = importlib.import_module("cupy")

    def synchronize() -> None:
        cupy.cuda.get_current_stream().synchronize()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()

    return synchronize


def _implementations(case: Case) -> list[tuple[str, Callable[[], object]]]:
    return [("pacarray", case.call)] + [(peer.name, peer.call) for peer in case.peers]


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "get"):  # a CuPy array
        value = value.get()
    return np.asarray(value)


def time_case(case: Case, *, repeat: int, warmup: int, device: str = "cpu") -> dict:
    """Warm up, then time ``repeat`` runs of each implementation; compare reference peers."""
    synchronize = _synchronizer(device)
    implementations = _implementations(case)
    first_ms: dict[str, float] = {}
    outputs: dict[str, object] = {}
    for round_index in range(max(warmup, 1)):
        for name, call in implementations:
            start = time.perf_counter()
            result = call()
            synchronize()
            if round_index == 0:
                first_ms[name] = (time.perf_counter() - start) * 1e3
                outputs[name] = result
    # Timed runs come in blocks, one implementation at a time, in alternating passes: PyTorch's
    # and Numba's OpenMP thread pools keep spinning for a while after a call and, on a 2-core
    # machine, a call interleaved right after the other library's ran up to 2x slow. An untimed
    # call opens each block to let the other pool go idle; the passes spread slow drifts of the
    # machine's load over all implementations alike.
    runs: dict[str, list[float]] = {name: [] for name, _ in implementations}
    passes = min(TIMING_PASSES, repeat)
    for pass_index in range(passes):
        count = repeat // passes + (1 if pass_index < repeat % passes else 0)
        for name, call in implementations:
            call()
            synchronize()
            for _ in range(count):
                start = time.perf_counter()
                call()
                synchronize()
                runs[name].append((time.perf_counter() - start) * 1e3)

    checks = {}
    mine = _to_numpy(outputs["pacarray"]).astype(np.float64)
    scale = float(np.max(np.abs(mine))) or 1.0
    for peer in case.peers:
        if peer.reference:
            theirs = _to_numpy(outputs[peer.name]).astype(np.float64)
            if theirs.shape != mine.shape:
                checks[peer.name] = {"ok": False, "error": f"shape {theirs.shape} != {mine.shape}"}
                continue
            error = float(np.max(np.abs(theirs - mine))) / scale
            checks[peer.name] = {"ok": bool(error <= case.tolerance), "error": error}

    results = []
    for name, _ in implementations:
        values = sorted(runs[name])
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        results.append({
            "name": name,
            "median_ms": statistics.median(values),
            "q1_ms": quartiles[0],
            "q3_ms": quartiles[2],
            "min_ms": values[0],
            "max_ms": values[-1],
            "first_ms": first_ms[name],
            "runs": len(values),
        })
    return {"timings": results, "checks": checks}


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_extra_memory_mib(call: Callable[[], object],
                         synchronize: Callable[[], None] = lambda: None) -> float | None:
    """Peak resident memory a call adds above the level before it, in MiB (2**20 bytes).

    ``None`` where the operating system cannot reset the high-water mark.
    """
    gc.collect()
    before = _proc_status_kib("VmRSS")
    if not reset_peak_rss():
        return None
    result = call()
    synchronize()
    peak = _proc_status_kib("VmHWM")
    del result
    return max(peak - before, 0) / 1024


def _gpu_peak_tracker(cupy):
    """A CuPy memory hook that records the peak of the bytes taken from the pool."""

    class PeakTracker(cupy.cuda.MemoryHook):
        name = "PacarrayBenchmarkPeakTracker"

        def __init__(self):
            self.current = 0
            self.peak = 0

        def malloc_postprocess(self, **kwargs):
            self.current += kwargs["mem_size"]
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kwargs):
            self.current -= kwargs["mem_size"]

    return PeakTracker()


def memory_case(case: Case, *, device: str = "cpu") -> dict:
    synchronize = _synchronizer(device)
    implementations = _implementations(case)
    for _, call in implementations:
        call()
        synchronize()
    peaks: dict[str, float | None] = {}
    if device == "gpu":
        cupy = importlib.import_module("cupy")
        for name, call in implementations:
            if name != "pacarray":
                peaks[name] = None  # PyTorch's caching allocator is not seen by CuPy's hooks
                continue
            gc.collect()
            tracker = _gpu_peak_tracker(cupy)
            with tracker:
                result = call()
                synchronize()
                del result
            peaks[name] = tracker.peak / 2**20
        return {"peak_mib": peaks, "method": "bytes taken from CuPy's memory pool"}
    for name, call in implementations:
        peaks[name] = peak_extra_memory_mib(call, synchronize)
    return {"peak_mib": peaks, "method": "VmHWM - VmRSS"}


def run_child(spec: dict) -> int:
    """Entry point of a child process (``python -m pacarray.benchmarks --child SPEC``)."""
    set_threads()
    if spec["mode"] == "peak":
        from .peak import peak_line

        line, numbers = peak_line(THREADS, quick=spec["quick"])
        with open(spec["result"], "w") as handle:
            json.dump(dict(numbers, line=line), handle)
        return 0
    workloads = {w.name: w for w in load_workloads(spec["modules"])}
    workload = workloads[spec["workload"]]
    context = Context(quick=spec["quick"], device=spec["device"], peers=spec["peers"])
    case = workload.build(context)
    if spec["mode"] == "time":
        result = time_case(case, repeat=spec["repeat"], warmup=spec["warmup"],
                           device=spec["device"])
    else:
        result = memory_case(case, device=spec["device"])
    result.update(
        label=case.label,
        notes=case.notes,
        memory_target_mb=case.memory_target_mb,
        flops=case.flops,
        peers=[{"name": peer.name, "role": peer.role, "target": peer.target,
                "reference": peer.reference} for peer in case.peers],
    )
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)
    return 0


_COLD_CHILD = """\
import time
start = time.perf_counter()
import numpy
numpy_s = time.perf_counter() - start
start = time.perf_counter()
import pacarray
pacarray_s = time.perf_counter() - start
from pacarray.benchmarks import _harness
_harness.cold_child({spec!r}, numpy_s, pacarray_s)
"""


def cold_child(spec: dict, numpy_s: float, pacarray_s: float) -> None:
    """Time the first and second call of each workload, right after ``import pacarray``."""
    set_threads()
    workloads = {w.name: w for w in load_workloads(spec["modules"])}
    calls = []
    for name in spec["workloads"]:
        case = workloads[name].build(Context(quick=spec["quick"], peers=False))
        start = time.perf_counter()
        case.call()
        first = time.perf_counter() - start
        start = time.perf_counter()
        case.call()
        calls.append({"name": name, "label": case.label, "first_s": first,
                      "second_s": time.perf_counter() - start})
    with open(spec["result"], "w") as handle:
        json.dump({"import_numpy_s": numpy_s, "import_pacarray_s": pacarray_s,
                   "calls": calls}, handle)


# --------------------------------------------------------------------------------------------
# In the parent process


def _child_environment(memory: bool = False, numba_cache: str | None = None) -> dict:
    environment = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS"):
        environment[variable] = str(THREADS)
    # The children must import the same pacarray as this process, installed or not.
    import pacarray

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pacarray.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    if memory:
        environment["MALLOC_MMAP_THRESHOLD_"] = str(MEMORY_MMAP_THRESHOLD)
        environment["MALLOC_TRIM_THRESHOLD_"] = str(MEMORY_MMAP_THRESHOLD)
        environment["MALLOC_TOP_PAD_"] = "0"
    if numba_cache is not None:
        environment["NUMBA_CACHE_DIR"] = numba_cache
    return environment


class ChildError(RuntimeError):
    pass


def _spawn(arguments: list[str], environment: dict, result_path: str, timeout: float) -> dict:
    completed = subprocess.run(
        [sys.executable, *arguments], env=environment, capture_output=True, text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-6:])
        raise ChildError(f"child exited with status {completed.returncode}:\n{tail}")
    with open(result_path) as handle:
        return json.load(handle)


def spawn_measurement(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="pacarray-bench-") as folder:
        spec = dict(spec, result=os.path.join(folder, "result.json"))
        return _spawn(["-m", "pacarray.benchmarks", "--child", json.dumps(spec)],
                      _child_environment(memory=spec["mode"] == "memory"), spec["result"],
                      timeout)


def spawn_cold(spec: dict, numba_cache: str | None, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="pacarray-bench-") as folder:
        spec = dict(spec, result=os.path.join(folder, "result.json"))
        return _spawn(["-c", _COLD_CHILD.format(spec=spec)],
                      _child_environment(numba_cache=numba_cache), spec["result"], timeout)


def machine_summary() -> str:
    import numba

    from .peak import cpu_model

    parts = [cpu_model(), f"{platform.system()} {platform.machine()}", f"{os.cpu_count()} CPUs",
             f"Python {platform.python_version()}", f"numpy {np.__version__}",
             f"numba {numba.__version__}"]
    if hasattr(os, "getloadavg"):
        # Other processes on the machine skew the timings; say how busy it was.
        parts.append("load average %.1f" % os.getloadavg()[0])
    try:
        from importlib.metadata import version

        parts.append(f"torch {version('torch')}")
    except Exception:
        parts.append("torch not installed")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Orchestration and report


@dataclass
class Options:
    modules: Sequence[str]
    only: Sequence[str] = ()
    repeat: int | None = None
    warmup: int | None = None
    quick: bool = False
    gpu: bool = False
    cold: bool = True
    peers: bool = True
    json_path: str | None = None


def _gpu_unavailable_reason() -> str | None:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return "CuPy is not installed (pip install 'pacarray[cuda12]' or '[cuda13]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as error:  # the driver's errors come in several types
        return f"no usable CUDA device ({error})"
    return None


def _format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _format_mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


_NUMERIC_COLUMNS = (("median ms", 10), ("min ms", 8), ("IQR ms", 8), ("ratio", 7),
                    ("target", 16), ("peak MiB", 9))


class _Table:
    """Fixed-width rows, streamed as workloads finish: the free-length texts (implementation,
    check) come last so that they never push the numbers out of line."""

    def __init__(self, workload_width: int, peak_gflops: float | None = None):
        self.workload_width = max(workload_width, len("workload"))
        self.peak_gflops = peak_gflops

    def row(self, workload: str, numbers: Sequence[str] = ("",) * 6, text: str = "") -> str:
        cells = [workload.ljust(self.workload_width)]
        cells += [cell.rjust(width) for cell, (_, width) in zip(numbers, _NUMERIC_COLUMNS)]
        cells[5] = numbers[4].ljust(_NUMERIC_COLUMNS[4][1])  # the target column reads as text
        return "  ".join(cells + [text]).rstrip()

    def header(self) -> list[str]:
        titles = [title for title, _ in _NUMERIC_COLUMNS]
        rules = ["-" * width for _, width in _NUMERIC_COLUMNS]
        return [self.row("workload", titles, "implementation [role]; check"),
                self.row("-" * self.workload_width, rules, "-" * 28)]

    def workload_rows(self, name: str, timing: dict, memory: dict | None) -> list[str]:
        timings = {entry["name"]: entry for entry in timing["timings"]}
        peaks = (memory or {}).get("peak_mib", {})
        peers = {peer["name"]: peer for peer in timing["peers"]}
        mine = timings["pacarray"]
        memory_target = timing.get("memory_target_mb")
        mine_peak = peaks.get("pacarray")
        text = f"pacarray {timing['label']}"
        if timing.get("flops") and self.peak_gflops:
            gflops = timing["flops"] / (mine["median_ms"] * 1e-3) / 1e9
            text += f"; {gflops:.0f} GFLOP/s = {gflops / self.peak_gflops:.0%} of FMA peak"
        if memory_target is not None and mine_peak is not None:
            text += f"; memory <= {memory_target:.4g} MiB " + (
                "met" if mine_peak <= memory_target else "MISSED")
        rows = [self.row(name, (_format_ms(mine["median_ms"]), _format_ms(mine["min_ms"]),
                                _format_ms(mine["q3_ms"] - mine["q1_ms"]), "", "",
                                _format_mb(mine_peak)), text)]
        for peer_name, entry in timings.items():
            if peer_name == "pacarray":
                continue
            peer = peers[peer_name]
            ratio = mine["median_ms"] / entry["median_ms"]
            target = ""
            if peer["target"] is not None:
                target = f"<= {peer['target']:g} " + (
                    "met" if ratio <= peer["target"] else "MISSED")
            text = f"{peer_name} [{peer['role']}]"
            outcome = timing["checks"].get(peer_name)
            if outcome is not None:
                if isinstance(outcome.get("error"), float):
                    verdict = "agrees" if outcome["ok"] else "MISMATCH"
                    text += f"; {verdict}, max error {outcome['error']:.1e} of max |y|"
                else:
                    text += f"; MISMATCH: {outcome.get('error')}"
            rows.append(self.row("", (_format_ms(entry["median_ms"]), _format_ms(entry["min_ms"]),
                                      _format_ms(entry["q3_ms"] - entry["q1_ms"]),
                                      f"{ratio:.2f}", target, _format_mb(peaks.get(peer_name))),
                                 text))
        return rows


def run_all(options: Options, write: Callable[[str], None] | None = None) -> int:
    """Measure the selected workloads and print the report; returns the exit status."""
    if write is None:
        write = functools.partial(print, flush=True)
    workloads = load_workloads(options.modules)
    wanted = {name.lower() for name in options.only}
    known = {w.name.lower() for w in workloads} | {"cold"}
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from "
                         f"{sorted(w.name for w in workloads)} or 'cold'")
    selected = [w for w in workloads if not wanted or w.name.lower() in wanted]
    repeat = options.repeat or (3 if options.quick else 9)
    warmup = options.warmup if options.warmup is not None else (1 if options.quick else 2)
    timeout = 300 if options.quick else 1200
    device = "gpu" if options.gpu else "cpu"
    status = 0
    report: dict = {"machine": machine_summary(), "device": device, "quick": options.quick,
                    "repeat": repeat, "warmup": warmup, "workloads": {}, "cold": None}

    write(f"pacarray benchmarks: float32, {THREADS} threads, {device.upper()}, "
          f"{'quick sizes, ' if options.quick else ''}median of {repeat} runs after "
          f"{warmup} warm-up run(s), each workload in fresh processes")
    write(f"machine: {report['machine']}")
    write("ratio = pacarray median / peer median (below 1: pacarray is faster); "
          "peak MiB = resident memory the call adds, output included")
    write("on a shared machine a busy core slows every 2-thread call: the load average above "
          "and the min column tell")
    if device == "gpu":
        reason = _gpu_unavailable_reason()
        if reason is not None:
            write(f"GPU benchmarks skipped: {reason}")
            return 0
    elsewhere = [w.name for w in selected if device not in w.devices]
    selected = [w for w in selected if device in w.devices]
    peak_gflops = None
    if device == "cpu" and selected:
        # What the hardware allows, measured like the workloads (a child, THREADS threads).
        try:
            peak = spawn_measurement({"mode": "peak", "quick": options.quick}, timeout)
        except (ChildError, subprocess.TimeoutExpired) as error:
            write(f"peak: not measured ({str(error).splitlines()[-1]})")
        else:
            write(peak["line"])
            report["peak"] = peak
            peak_gflops = peak["fma_gflops"]
    write("")
    table = _Table(max((len(w.name) for w in selected), default=0), peak_gflops)
    for line in table.header():
        write(line)
    for workload in selected:
        spec = {"modules": list(options.modules), "workload": workload.name, "device": device,
                "quick": options.quick, "repeat": repeat, "warmup": warmup,
                "peers": options.peers}
        try:
            timing = spawn_measurement(dict(spec, mode="time"), timeout)
            memory = spawn_measurement(dict(spec, mode="memory"), timeout)
        except (ChildError, subprocess.TimeoutExpired) as error:
            status = 1
            write(table.row(workload.name, text="ERROR"))
            for line in str(error).splitlines():
                write(f"    {line}")
            report["workloads"][workload.name] = {"error": str(error)}
            continue
        for row in table.workload_rows(workload.name, timing, memory):
            write(row)
        for check in timing["checks"].values():
            if not check["ok"]:
                status = 1
        for note in timing["notes"]:
            write(f"    note: {note}")
        report["workloads"][workload.name] = {"timing": timing, "memory": memory}

    if elsewhere:
        other = "GPU" if device == "cpu" else "CPU"
        write(f"    ({other}-only workloads not run here: {', '.join(elsewhere)})")

    if device == "cpu" and options.cold and (not wanted or "cold" in wanted):
        cold_names = [w.name for w in selected]
        if cold_names:
            status = max(status, _cold_report(options, cold_names, timeout, report, write))

    if options.json_path:
        with open(options.json_path, "w") as handle:
            json.dump(report, handle, indent=2)
        write(f"\nresults written to {options.json_path}")
    return status


def _cold_report(options: Options, names: list[str], timeout: float, report: dict,
                 write: Callable[[str], None]) -> int:
    spec = {"modules": list(options.modules), "workloads": names, "quick": options.quick}
    states = [("Numba cache warm", None)]
    if not options.quick:
        states.append(("Numba cache empty", "empty"))
    results = {}
    try:
        if not options.quick:
            # Fills the cache with every kernel these calls need, should the timing children not
            # have (--only cold); costs one process start when it already holds them.
            spawn_cold(spec, None, timeout)
        for title, cache in states:
            if cache is None:
                results[title] = spawn_cold(spec, None, timeout)
            else:
                with tempfile.TemporaryDirectory(prefix="pacarray-numba-cache-") as folder:
                    results[title] = spawn_cold(spec, folder, timeout)
    except (ChildError, subprocess.TimeoutExpired) as error:
        write("\ncold start: ERROR")
        for line in str(error).splitlines():
            write(f"    {line}")
        return 1
    report["cold"] = results
    titles = list(results)
    write("")
    write("cold start, fresh process".ljust(46)
          + "".join(title.rjust(20) for title in titles))
    first = results[titles[0]]

    def line(label: str, values: list[float]) -> None:
        write(label.ljust(46) + "".join(f"{_format_ms(v * 1e3)} ms".rjust(20) for v in values))

    line("import numpy", [results[t]["import_numpy_s"] for t in titles])
    line("import pacarray (numpy already imported)",
         [results[t]["import_pacarray_s"] for t in titles])
    for index, call in enumerate(first["calls"]):
        line(f"first call {call['name']}",
             [results[t]["calls"][index]["first_s"] for t in titles])
        line(f"second call {call['name']}",
             [results[t]["calls"][index]["second_s"] for t in titles])
    write("(first calls run in the order listed, in one process: a later workload reuses the "
          "kernels an earlier one loaded or compiled)")
    if options.quick:
        write("(--quick: the run with an empty Numba cache is skipped; it compiles every kernel)")
    return 0
