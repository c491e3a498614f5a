"""The scheduled CPUs' OS threads (pygup/kernel/sched.py, _CpuThread): a
finished run's threads serve the next run, a run parked for good keeps
its threads out of the pool, and a forked child starts its own.  (Not in
the ThreadSanitizer stage: TSan refuses threads started after a fork.)"""
from __future__ import annotations

import os
import threading

import pytest

from pygup.kernel.sched import SchedDeadlock, yield_point
from test_sched import P, anon_world as _world


def _idents(m):
    # native ids: Linux hands thread ids out in turn, where a new thread's
    # pthread id (get_ident) is often a finished one's again
    return m.run_concurrently([lambda m: threading.get_native_id()] * 2, seed=1).results


def test_a_finished_runs_threads_serve_the_next_run():
    m, _, _ = _world()
    first = _idents(m)
    assert len(set(first)) == 2 and threading.get_native_id() not in first
    assert _idents(m) == first
    # another machine's run takes the same threads: they hold nothing of the first
    m2, p2, a2 = _world()
    run = m2.run_concurrently([lambda m: (threading.get_native_id(), p2.read(a2)),
                               lambda m: threading.get_native_id()], seed=3)
    assert [run.results[0][0], run.results[1]] == first and run.results[0][1] == 0x1111


def test_threads_parked_for_good_are_not_given_another_run():
    m, p, a = _world()
    parked = []

    def bad(m):
        parked.append(threading.get_native_id())
        p.read(a)
        with m.irqs_off():
            yield_point(m, "irqs_off")
            with m.kernel.lock:
                pass

    def unmap(m):
        parked.append(threading.get_native_id())
        p.munmap(a, P)

    with pytest.raises(SchedDeadlock):
        m.run_concurrently([bad, unmap], schedule=[0, 1], points={"irqs_off"}, spin_limit=500)
    m2, _, _ = _world()
    fresh = _idents(m2)
    assert len(parked) == 2 and not set(parked) & set(fresh)


def test_a_forked_child_runs_with_threads_of_its_own():
    m, _, _ = _world()
    _idents(m)                       # the parent's pool now holds two threads
    pid = os.fork()
    if pid == 0:                     # pragma: no cover - the child
        code = 1
        try:
            m2, p2, a2 = _world()
            run = m2.run_concurrently([lambda m: p2.read(a2), lambda m: p2.read(a2)],
                                      seed=2, timeout=20)
            code = 0 if run.results == [0x1111, 0x1111] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
