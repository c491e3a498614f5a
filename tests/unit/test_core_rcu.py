"""C core: RCU read-side sections, grace periods, call_rcu batches
(csrc/rcu.c), seen through pg_synchronize_rcu and the deferred frees of
address_space records and table pages."""
from __future__ import annotations

import threading

from pygup._native import lib
from conftest import core_stats


def _blocked_call(fn):
    done = threading.Event()
    result = []

    def run():
        result.append(fn())
        done.set()

    t = threading.Thread(target=run)
    t.start()
    return t, done, result


def test_synchronize_without_readers_returns(core_machine):
    m = core_machine
    gp = core_stats(m)["rcu_grace_periods"]
    assert lib.pg_synchronize_rcu(m, 0) == 0
    assert core_stats(m)["rcu_grace_periods"] == gp + 1


def test_synchronize_waits_for_read_side_section(core_machine):
    m = core_machine
    assert lib.pg_rcu_read_lock(m, 1) == 0
    t, done, result = _blocked_call(lambda: lib.pg_synchronize_rcu(m, 0))
    try:
        assert not done.wait(0.3)
        # nesting: the inner unlock does not end the section
        lib.pg_rcu_read_lock(m, 1)
        lib.pg_rcu_read_unlock(m, 1)
        assert not done.wait(0.1)
    finally:
        lib.pg_rcu_read_unlock(m, 1)
    assert done.wait(10)
    t.join()
    assert result == [0]


def test_irqs_off_is_a_read_side_section(core_machine):
    m = core_machine
    lib.pg_local_irq_disable(m, 2)
    lib.pg_rcu_read_lock(m, 2)          # counted together with IRQs-off
    t, done, result = _blocked_call(lambda: lib.pg_synchronize_rcu(m, 0))
    try:
        lib.pg_local_irq_enable(m, 2)   # still inside rcu_read_lock
        assert not done.wait(0.3)
    finally:
        lib.pg_rcu_read_unlock(m, 2)
    assert done.wait(10)
    t.join()
    assert result == [0]


def test_caller_inside_a_section_is_refused(core_machine):
    m = core_machine
    lib.pg_rcu_read_lock(m, 0)
    assert lib.pg_synchronize_rcu(m, 0) == -lib.PG_EBUSY
    assert lib.pg_rcu_barrier(m, 0) == -lib.PG_EBUSY
    lib.pg_rcu_read_unlock(m, 0)
    lib.pg_local_irq_disable(m, 0)
    assert lib.pg_synchronize_rcu(m, 0) == -lib.PG_EBUSY
    lib.pg_local_irq_enable(m, 0)
    assert lib.pg_rcu_read_unlock(m, 0) == -lib.PG_EINVAL   # unbalanced
    assert lib.pg_rcu_read_lock(m, 9) == -lib.PG_EINVAL
    assert lib.pg_synchronize_rcu(m, -1) == -lib.PG_EINVAL


def test_as_record_freed_only_after_grace_period(core_machine):
    m = core_machine
    a = lib.pg_as_new(m, lib.PG_AS_SHMEM)
    lib.pg_rcu_read_lock(m, 1)              # a reader that may hold `a`
    assert lib.pg_as_release(m, a) == 0
    st = core_stats(m)
    assert st["as_pending"] == 1 and st["as_live"] == 0
    assert lib.pg_rcu_poll(m) == 0          # never waits, frees nothing
    assert core_stats(m)["as_pending"] == 1
    assert lib.pg_as_kind(m, a) == -lib.PG_ENOENT
    b = lib.pg_as_new(m, 0)
    assert b != a                           # not reusable during the GP
    lib.pg_rcu_read_unlock(m, 1)
    assert lib.pg_rcu_poll(m) == 1
    st = core_stats(m)
    assert st["as_pending"] == 0 and st["rcu_callbacks_run"] >= 1
    assert lib.pg_as_new(m, 0) == a         # poisoned, then reused
    assert lib.pg_as_kind(m, a) == 0


def test_release_without_readers_frees_promptly(core_machine):
    m = core_machine
    a = lib.pg_as_new(m, 0)
    lib.pg_as_release(m, a)
    assert core_stats(m)["as_pending"] == 0


def test_barrier_runs_everything_queued(core_machine):
    m = core_machine
    ids = [lib.pg_as_new(m, 0) for _ in range(20)]
    lib.pg_local_irq_disable(m, 3)
    for i in ids:
        lib.pg_as_release(m, i)
    assert core_stats(m)["as_pending"] == 20
    t, done, result = _blocked_call(lambda: lib.pg_rcu_barrier(m, 0))
    try:
        assert not done.wait(0.3)           # waits for cpu 3
    finally:
        lib.pg_local_irq_enable(m, 3)
    assert done.wait(10)
    t.join()
    assert result == [20]
    assert core_stats(m)["as_pending"] == 0
    assert lib.pg_rcu_barrier(m, 0) == 0


def test_many_batches_do_not_lose_callbacks(core_machine):
    """More batches than the closed-batch ring holds, all behind a reader."""
    m = core_machine
    lib.pg_rcu_read_lock(m, 1)
    for _ in range(30):
        a = lib.pg_as_new(m, 0)
        lib.pg_as_release(m, a)             # each release closes a batch
        lib.pg_rcu_poll(m)
    assert core_stats(m)["as_pending"] == 30
    lib.pg_rcu_read_unlock(m, 1)
    total = 0
    for _ in range(10):
        total += lib.pg_rcu_poll(m)
    assert total == 30 and core_stats(m)["as_pending"] == 0


def test_grace_period_is_per_snapshot(core_machine):
    """A reader that entered after the batch closed does not hold it."""
    m = core_machine
    a = lib.pg_as_new(m, 0)
    lib.pg_rcu_read_lock(m, 1)
    lib.pg_as_release(m, a)                 # batch closed while cpu 1 reads
    lib.pg_rcu_read_unlock(m, 1)
    lib.pg_rcu_read_lock(m, 1)              # a new section
    try:
        assert lib.pg_rcu_poll(m) == 1
    finally:
        lib.pg_rcu_read_unlock(m, 1)
