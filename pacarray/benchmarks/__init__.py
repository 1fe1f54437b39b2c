"""Benchmarks of pacarray against its peers: ``python -m pacarray.benchmarks``.

Usage::

    python -m pacarray.benchmarks [--only NAME ...] [--repeat N] [--gpu] [--quick] [--json PATH]

Every workload runs in float32 with 2 threads, in fresh child processes: warm-up, then the
median and interquartile range of repeated round-robin runs, the peak extra resident memory of
one call, and the ratio ``pacarray time / peer time`` against peers measured in the same child
(PyTorch, when the ``bench`` extra is installed; skipped with a note otherwise). The cold cost,
``import pacarray`` and each workload's first call in a fresh process with Numba's cache warm and
empty, closes the report. See ``_harness.py`` for how each number is measured.

Adding workloads
----------------
Workloads live in modules registered in :data:`WORKLOAD_MODULES` below; the report follows that
order. To add some (``filters.py``, ``crf.py``, ``gradients.py``, ``gpu.py``, ...):

1. write ``pacarray/benchmarks/<name>.py`` defining ``WORKLOADS``, a list of
   :class:`Workload` ``(name, summary, build, devices=("cpu",))``;
2. ``build(context)`` receives a :class:`Context` (``context.quick`` asks for tiny sizes,
   ``context.xp`` is NumPy or CuPy, ``context.rng()`` a seeded generator, ``context.torch()``
   PyTorch or ``None``) and returns a :class:`Case`: the pacarray call to time (a closure over
   inputs built in ``build``, so input creation is not timed), a short label, a list of
   :class:`Peer` (name, call, role, ``target`` = the largest acceptable pacarray / peer time ratio,
   ``reference=True`` when the peer computes the same result, which is then compared), notes,
   and an optional ``memory_target_mb`` (in MiB);
3. append ``"pacarray.benchmarks.<name>"`` to :data:`WORKLOAD_MODULES`.

Workload names must be unique across modules; ``--only`` selects by name (``--only cold`` for
the cold-start table alone). Keep the ``--quick`` sizes tiny: ``tests/test_benchmarks_smoke.py``
runs the whole registry with them.
"""

from ._harness import Case, Context, Peer, Workload, load_workloads

#: Modules whose ``WORKLOADS`` make up the benchmark suite, in report order.
WORKLOAD_MODULES: tuple[str, ...] = (
    "pacarray.benchmarks.core",
    "pacarray.benchmarks.filters",
    "pacarray.benchmarks.crf",
    "pacarray.benchmarks.gradients",
    "pacarray.benchmarks.gpu",
    "pacarray.benchmarks.dask",
)

__all__ = ["WORKLOAD_MODULES", "Case", "Context", "Peer", "Workload", "load_workloads"]
