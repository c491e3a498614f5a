"""Nothing hangs (issue 15, items 6-7): a CPU left with IRQs disabled —
by a thread that leaves it, or by one that ends without leaving — never
makes a shootdown or grace period wait for ever, and a native stress run
that needs the machine alone says EBUSY at the start instead of fighting
another thread for it.  Every wait here is bounded by a join timeout, so a
regression fails instead of hanging the suite."""
from __future__ import annotations

import errno
import threading
import warnings

import pytest

from pygup import MAP, PROT, GupError, IrqsDisabledError, Machine
from pygup.flags import PAGE_SIZE
from pygup.tools.stress import run_stress

RW = PROT.READ | PROT.WRITE
JOIN_S = 60     # a bound for the test, not a speed claim: the work takes milliseconds


def _in_thread(fn):
    """Run fn in a daemon thread; (thread, result list)."""
    out: list = []

    def body():
        try:
            out.append(fn())
        except BaseException as e:  # the test inspects it
            out.append(e)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def _world(cpus=2):
    m = Machine(memory="64MiB", movable="0MiB", cpus=cpus)
    p = m.spawn()
    a = p.mmap(PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    return m, p, a


def test_leaving_a_cpu_with_irqs_off_is_repaired_with_a_warning():
    m, p, a = _world()

    def leave_with_irqs_off():
        with m.cpu(1):
            p.read(a)                   # CPU 1 caches the translation
            m.local_irq_disable()
    with pytest.warns(RuntimeWarning, match="cpu 1 was left with IRQs disabled") as seen:
        t, out = _in_thread(leave_with_irqs_off)
        t.join(JOIN_S)
    assert out == [None]
    # the warning names the block that left the CPU, not the model's insides
    assert [w.filename for w in seen if "left with IRQs" in str(w.message)] == [__file__]
    assert not m._core.irqs_disabled(1)
    t, out = _in_thread(lambda: p.munmap(a, PAGE_SIZE))     # shoots down CPU 1
    t.join(JOIN_S)
    assert not t.is_alive() and out == [None]


def test_a_thread_that_ends_with_irqs_off_does_not_stall_the_next_munmap():
    m, p, a = _world()

    def end_with_irqs_off():            # never leaves its CPU: it just ends
        p.read(a)
        m.local_irq_disable()
    t, _ = _in_thread(end_with_irqs_off)
    t.join(JOIN_S)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t, out = _in_thread(lambda: p.munmap(a, PAGE_SIZE))
        t.join(JOIN_S)
    assert not t.is_alive() and out == [None]
    assert any("by a thread that ended" in str(x.message) for x in w)


@pytest.mark.filterwarnings("ignore:cpu 1 was left with IRQs disabled:RuntimeWarning")
def test_a_thread_that_ends_while_a_shootdown_waits_for_it():
    # the shootdown is already waiting in C when the IRQs-off thread ends:
    # the waiter finds that thread gone and ends its section
    # (pg_cpu_reap_orphan).  Either order of the two threads is fine.
    m, p, a = _world(cpus=3)           # main, holder, unmapper: one CPU each
    ready, go = threading.Event(), threading.Event()

    def hold_irqs_then_end():
        p.read(a)
        m.local_irq_disable()
        ready.set()
        go.wait(JOIN_S)
    holder, _ = _in_thread(hold_irqs_then_end)
    assert ready.wait(JOIN_S)
    unmapper, out = _in_thread(lambda: p.munmap(a, PAGE_SIZE))
    go.set()
    holder.join(JOIN_S)
    unmapper.join(JOIN_S)
    assert not unmapper.is_alive() and out == [None]


def test_irqs_off_then_a_sleeping_call_is_an_error_not_a_hang():
    m, p, a = _world()
    with m.irqs_off():
        with pytest.raises(IrqsDisabledError) as e:
            p.munmap(a, PAGE_SIZE)
    assert e.value.errno == errno.EDEADLK and isinstance(e.value, OSError)
    p.munmap(a, PAGE_SIZE)


def test_run_stress_with_irqs_off_is_ebusy_at_the_start():
    m = Machine(memory="128MiB", movable="0MiB", cpus=4)
    t, out = _in_thread(lambda: _stress_with_irqs_off(m))
    t.join(JOIN_S)
    assert not t.is_alive()
    assert isinstance(out[0], GupError) and out[0].errno == errno.EBUSY
    assert "IRQs" in str(out[0])


def _stress_with_irqs_off(m):
    with m.irqs_off():
        return run_stress(m, seconds=0.1, threads=2)


def test_run_stress_on_a_machine_another_thread_uses_is_ebusy():
    m = Machine(memory="128MiB", movable="0MiB", cpus=4)
    bound, release = threading.Event(), threading.Event()
    errors: list = []

    def user():
        p = m.spawn()
        a = p.mmap(PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        p.write(a, 1)                    # this thread now holds a CPU
        bound.set()
        while not release.is_set():
            try:
                p.write(a, 2)
            except Exception as e:        # noqa: BLE001 - counted below
                errors.append(e)
    t, _ = _in_thread(user)
    assert bound.wait(JOIN_S)
    try:
        with pytest.raises(GupError) as e:
            run_stress(m, seconds=0.1, threads=2)
        assert e.value.errno == errno.EBUSY and "alone" in str(e.value)
    finally:
        release.set()
        t.join(JOIN_S)
    assert errors == []
    # once the other thread is gone, the campaign runs and is clean
    assert run_stress(m, seconds=0.05, threads=2, seed=1).clean
