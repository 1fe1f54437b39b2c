"""The CPU kernels' thread pool (pacarray/_cpu/_parallel.py, docs/design.md §6)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numba
import numpy as np
import pytest

from pacarray._cpu import _parallel


@numba.njit(cache=True, nogil=True)
def _count_jobs(out, first, stop):
    for job in range(first, stop):
        out[job] += 1


def _record(calls, first, stop):
    calls.append((threading.get_ident(), first, stop))


@contextlib.contextmanager
def _threads(count):
    """``numba.set_num_threads(count)`` for the block, the previous count restored after it."""
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("jobs", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_job_runs_exactly_once(jobs, threads):
    out = np.zeros(jobs, np.int64)
    with _threads(min(threads, numba.config.NUMBA_NUM_THREADS)):
        _parallel.run(_count_jobs, jobs, out)
    assert out.tolist() == [1] * jobs


def test_no_jobs_calls_nothing():
    calls = []
    _parallel.run(_record, 0, calls)
    assert calls == []


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_chunks_are_contiguous_and_run_on_several_threads():
    calls = []
    other_started = threading.Event()

    def kernel(first, stop):
        _record(calls, first, stop)
        if first == 0:
            other_started.wait(5)   # a pool thread takes the other chunk meanwhile
        else:
            other_started.set()

    with _threads(2):
        _parallel.run(kernel, 9)
    assert sorted((first, stop) for _, first, stop in calls) == [(0, 4), (4, 9)]
    assert len({ident for ident, _, _ in calls}) == 2
    assert threading.get_ident() in {ident for ident, _, _ in calls}


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_a_chunk_no_pool_thread_has_started_runs_on_the_calling_thread():
    """With every pool thread busy (here: blocked), a call does not wait for one: the calling
    thread runs the other chunks itself. Before, this call waited until the pool was free."""
    release = threading.Event()
    pool = _parallel._pool()
    blockers = [pool.submit(release.wait, 10)
                for _ in range(numba.config.NUMBA_NUM_THREADS - 1)]
    calls = []
    done = threading.Event()

    def call():
        with _threads(2):
            _parallel.run(_record, 9, calls)
        done.set()

    caller = threading.Thread(target=call)
    try:
        caller.start()
        finished = done.wait(5)
    finally:
        release.set()
        caller.join()
        for blocker in blockers:
            blocker.result()
    assert finished
    assert sorted((first, stop) for _, first, stop in calls) == [(0, 4), (4, 9)]
    assert {ident for ident, _, _ in calls} == {caller.ident}


def test_set_num_threads_of_the_calling_thread_is_obeyed():
    calls = []
    with _threads(1):
        _parallel.run(_record, 9, calls)
    assert calls == [(threading.get_ident(), 0, 9)]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_an_error_in_a_chunk_is_raised_after_every_chunk_finished():
    finished = []
    gate = threading.Event()

    def kernel(first, stop):
        if first == 0:
            raise ValueError("chunk 0 failed")
        gate.wait(5)  # still running when chunk 0 has already failed
        finished.append((first, stop))

    timer = threading.Timer(0.2, gate.set)
    timer.start()
    try:
        with _threads(2), pytest.raises(ValueError, match="chunk 0 failed"):
            _parallel.run(kernel, 4)
    finally:
        timer.cancel()
    assert finished == [(2, 4)]


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                    reason="needs fork")
def test_a_forked_child_gets_a_working_pool():
    out = np.zeros(5, np.int64)
    _parallel.run(_count_jobs, 5, out)  # the parent's pool exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child = np.zeros(5, np.int64)
            _parallel.run(_count_jobs, 5, child)
            code = 0 if child.tolist() == [1] * 5 else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    status = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert status == bytes([0])


def test_small_work_stays_on_the_calling_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(_parallel, "SERIAL_WORK", 1000)
    _parallel.run(_record, 9, calls, work=999)
    assert calls == [(threading.get_ident(), 0, 9)]
    calls.clear()
    _parallel.run(_record, 9, calls, work=1000)
    assert len(calls) == min(_parallel.threads(), 9)
