"""The deterministic scheduler (csrc/sched.c, pygup/kernel/sched.py):
replay, two endings of one race, no deadlock on the emulator's own waits,
a real deadlock reported, and seeded exploration finding a planted race.
The historic races, step by step, are in tests/regressions/.

Schedules below name only the points a test cares about (``points=``):
then a schedule entry means "this CPU runs until it reaches one of those
points (or a wait on another CPU)", and after the written entries the last
CPU runs on, then the lowest runnable one.  Picks are traced as (cpu, the
point it resumes from).
"""
from __future__ import annotations

import time

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup.kernel.sched import SchedDeadlock, ScheduleDiverged, yield_point

RW = PROT.READ | PROT.WRITE
P = 4096


def machine(mutants=(), **kw) -> Machine:
    # no ZONE_MOVABLE: long-term pins stay on the fast path
    return Machine(memory="64MiB", movable="0MiB", cpus=2, mutants=mutants, **kw)


def anon_world(mutants=(), **kw):
    m = machine(mutants, **kw)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    return m, p, a


def pinned_but_unmapped(p, addr, result) -> bool:
    """GUP handed out a page that is not (any more) the page mapped at the
    address (the no_pte_recheck race, tests/regressions/test_bug07)."""
    ret, pages = result
    pte = p.mm.pte(addr)
    return ret == 1 and (pte.level == 0 or pte.pfn != pages[0])


# ---- determinism -------------------------------------------------------------

def _race_world():
    m, p, a = anon_world()
    ops = [lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE)[0],
           lambda m: p.munmap(a, P)]
    return m, ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_seed_same_run(seed):
    m1, ops1 = _race_world()
    r1 = m1.run_concurrently(ops1, seed=seed)
    m2, ops2 = _race_world()
    r2 = m2.run_concurrently(ops2, seed=seed)
    assert r1.schedule == r2.schedule and r1.results == r2.results
    assert r1.trace == r2.trace and len(r1.schedule) > 4


def test_explicit_schedule_replays_exactly():
    m, ops = _race_world()
    r1 = m.run_concurrently(ops, seed=11)
    for _ in range(3):
        m, ops = _race_world()
        r2 = m.run_concurrently(ops, schedule=r1.schedule)      # (cpu, point) pairs
        assert r2.trace == r1.trace and r2.results == r1.results
    m, ops = _race_world()
    r3 = m.run_concurrently(ops, schedule=[c for c, _ in r1.schedule])  # bare CPU ids
    assert r3.schedule == r1.schedule


def test_seeds_explore_different_interleavings():
    seen = set()
    for seed in range(12):
        m, ops = _race_world()
        seen.add(tuple(m.run_concurrently(ops, seed=seed).schedule))
    assert len(seen) > 3


def test_replay_against_another_world_reports_divergence():
    m, ops = _race_world()
    r1 = m.run_concurrently(ops, seed=5)
    m, p, a = anon_world()
    bad = [(c, "no_such_point") for c, _ in r1.schedule]
    with pytest.raises(ScheduleDiverged):
        m.run_concurrently([lambda m: p.read(a), lambda m: p.read(a)], schedule=bad)


def test_arguments_are_checked():
    m, p, a = anon_world()
    with pytest.raises(ValueError):
        m.run_concurrently([lambda m: 1] * 3)                    # 2 CPUs
    with pytest.raises(TypeError):
        m.run_concurrently([1])
    with pytest.raises(ValueError):
        m.run_concurrently([lambda m: 1], schedule=["x"])
    assert m.run_concurrently([lambda m: 7]).results == [7]
    assert yield_point(m, "outside") is False                  # not a scheduled CPU


def test_op_exceptions_are_results_and_cpus_come_back():
    m, p, a = anon_world()
    main_cpu = m.current_cpu()

    def boom(m):
        raise KeyError("x")

    res, sched = m.run_concurrently([boom, lambda m: m.current_cpu()])
    assert isinstance(res[0], KeyError) and res[1] == 1
    assert m.current_cpu() == main_cpu                       # lent, given back
    p.write(a, 2)


# ---- one race, two endings ---------------------------------------------------
#
# GUP-fast (CPU 0, pin_user_pages_fast) against munmap of the same page
# (CPU 1).  Order A: the pin completes before munmap starts - the pin wins,
# munmap leaves the pinned page to its pinner.  Order B: CPU 0 reads the PTE,
# munmap clears it, and CPU 0's re-check sees the change: the fast path
# backs off and the slow path finds no VMA (-EFAULT).

def test_two_schedules_two_endings():
    m, p, a = anon_world()
    pfn = p.mm.pte(a).pfn
    ops = [lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE), lambda m: p.munmap(a, P)]
    results, _ = m.run_concurrently(ops, schedule=[0, 0, 1], points={"fast_pte_read"})
    ret, pages = results[0]
    assert ret == 1 and list(pages) == [pfn]
    assert m.folio(pfn).maybe_dma_pinned and m.folio(pfn).mapcount == 0
    p.mm.unpin_user_pages(pages)

    m, p, a = anon_world()
    pfn = p.mm.pte(a).pfn
    ops = [lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE), lambda m: p.munmap(a, P)]
    run = m.run_concurrently(ops, schedule=[0, 1], points={"fast_pte_read"})
    assert run.results[0][0] == -14                        # -EFAULT: backed off
    assert m.folio(pfn).refcount == 0                      # freed by the munmap
    assert (1, "ipi_wait") in run.schedule                 # munmap waited for CPU 0
    m.check()


# ---- the emulator's own waits never deadlock the scheduler -----------------
#
# CPU 0 is inside an IRQs-off walk (a user access parked after reading a
# table entry, or an explicit local_irq_disable section); CPU 1 changes a
# PTE and must wait for CPU 0's IPI acknowledgement.  CPU 1's wait is a
# spin point: the scheduler runs CPU 0 on until it enables IRQs and acks.

@pytest.mark.parametrize("seed", range(8))
def test_tlb_flush_waits_for_irqs_off_walker(seed):
    m, p, a = anon_world()

    def irqs_off_section(m):
        p.read(a)                               # this CPU has the mm active
        with m.irqs_off():
            yield_point(m, "irqs_off_1")
            yield_point(m, "irqs_off_2")
        return p.read(a)

    ops = [irqs_off_section, lambda m: p.mprotect(a, P, PROT.READ)]
    t0 = time.monotonic()
    run = m.run_concurrently(ops, seed=seed)
    assert time.monotonic() - t0 < 2
    assert run.results == [0x1111, None]
    ops = [lambda m: p.read(a), lambda m: p.mprotect(a, P, RW)]
    assert m.run_concurrently(ops, seed=seed).results == [0x1111, None]
    m.check()


def test_forced_ipi_wait_is_a_spin_point():
    m, p, a = anon_world()

    def irqs_off_section(m):
        p.read(a)
        with m.irqs_off():
            yield_point(m, "irqs_off")
        return "acked"

    run = m.run_concurrently([irqs_off_section, lambda m: p.munmap(a, P)],
                             schedule=[0, 1], points={"irqs_off"})
    assert run.results == ["acked", None]
    spins = [(c, pt) for c, pt, spun in run.trace if spun]
    assert spins and spins[0] == (1, "ipi_wait")


def test_true_deadlock_is_reported_not_hung():
    # CPU 0 holds IRQs off and wants the machine lock; CPU 1 holds the
    # machine lock (munmap) and waits for CPU 0's IPI acknowledgement.
    m, p, a = anon_world()

    def bad(m):
        p.read(a)
        with m.irqs_off():
            yield_point(m, "irqs_off")
            with m.kernel.lock:
                pass

    t0 = time.monotonic()
    with pytest.raises(SchedDeadlock, match="spins"):
        m.run_concurrently([bad, lambda m: p.munmap(a, P)], schedule=[0, 1],
                           points={"irqs_off"}, spin_limit=500)
    assert time.monotonic() - t0 < 5


# ---- seeded exploration -------------------------------------------------------
#
# The race stories themselves, one per race-window protection switch with
# its schedule written out, live in tests/regressions/ (test_bug02,
# test_bug03, test_bug06, test_bug07, test_inv5).  Here: the seeded
# scheduler finds such a race without being told the schedule.

def test_switch_tests_hit_with_seeds_too():
    """The seeded scheduler finds the no_pte_recheck race on its own; the
    seed it was found with replays it."""
    hits = []
    for seed in range(40):
        m, p, a = anon_world(("no_pte_recheck",))
        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                                  lambda m: p.munmap(a, P)], seed=seed)
        if pinned_but_unmapped(p, a, run.results[0]):
            hits.append((seed, run.schedule))
    assert hits
    seed, schedule = hits[0]
    m, p, a = anon_world(("no_pte_recheck",))
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                              lambda m: p.munmap(a, P)], schedule=schedule)
    assert pinned_but_unmapped(p, a, run.results[0])
