"""The deterministic scheduler (csrc/sched.c, pygup/sched.py): replay,
two endings of one race, no deadlock on the emulator's own waits, a real
deadlock reported, and one regression test per race-window protection
switch (pygup/mutants.py) that loses the race every time with the switch
on and never with it off.

Schedules below name only the points a test cares about (``points=``):
then a schedule entry means "this CPU runs until it reaches one of those
points (or a wait on another CPU)", and after the written entries the last
CPU runs on, then the lowest runnable one.  Picks are traced as (cpu, the
point it resumes from).
"""
from __future__ import annotations

import time

import pytest

from pygup import FOLL, MAP, PROT, InvariantError, Machine
from pygup._native import C
from pygup.kernel.sched import SchedDeadlock, ScheduleDiverged, yield_point

RW = PROT.READ | PROT.WRITE
P = 4096
HPAGE = 2 << 20
LT_WRITE = FOLL.WRITE | FOLL.LONGTERM        # + FOLL_PIN from pin_user_pages_fast


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
    """The oracle of BUGS #6/#7: GUP handed out a page that is not (any
    more) the page mapped at the address."""
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


# ---- regression tests: one per race-window protection switch --------------

def test_no_pte_recheck_gup_fast_vs_munmap():
    """GUP-fast vs zap (BUGS #6/#7; SPEC §4.4 step 8, §6.3).

    The protocol: GUP-fast (1) takes its reference, then (2) re-reads the
    PTE; munmap (1) clears the PTE, then (2) looks at the page.  One of them
    sees the other.  Switch no_pte_recheck drops GUP-fast's (2).

        CPU 0: pin_user_pages_fast(a)        CPU 1: munmap(a)
        IRQs off; read PTE -> page F
        -- parks at fast_pte_read --
                                             zap: PTE cleared (zap_cleared)
                                             flush: IPI to CPU 0, wait
        grab F (refcount still > 0)
        re-check: PTE is none -> drop         (the fix)
          / switch on: F kept, pinned
        IRQs on: acknowledge the IPI
                                             release F's mapping and reference

    Detected: the pin is on a page that is no longer mapped at a.  With the
    re-check the fast path backs off and the slow path finds no VMA.
    Schedule [0, 1] with the point fast_pte_read."""
    for mutants, buggy in (((), False), (("no_pte_recheck",), True)):
        m, p, a = anon_world(mutants)
        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                                  lambda m: p.munmap(a, P)],
                                 schedule=[0, 1], points={"fast_pte_read"})
        ret, pages = run.results[0]
        assert pinned_but_unmapped(p, a, run.results[0]) is buggy
        assert ret == (1 if buggy else -14)
        if buggy:
            assert m.folio(pages[0]).maybe_dma_pinned and m.folio(pages[0]).mapcount == 0
        m.check()


def test_no_pmd_recheck_gup_fast_vs_munmap_of_pmd_leaf():
    """GUP-fast vs a PMD change (BUGS #7, 70cbc3cc78a9; SPEC §4.5).

    A 2 MiB PMD leaf (hugetlb) is taken in one grab and re-validated by
    re-reading the PMD.  Switch no_pmd_recheck skips that re-read, as the
    pre-70cbc3cc78a9 walker did for the PMD above a PTE table.

        CPU 0: pin_user_pages_fast(a)        CPU 1: munmap(a, 2 MiB)
        IRQs off; read PMD leaf -> folio H
        -- parks at fast_pte_read --
                                             zap: PMD leaf cleared, flush:
                                             IPI to CPU 0, wait
        grab H; re-read PMD: none -> drop    (the fix)
          / switch on: H kept, pinned
        IRQs on, ack                         release H's mapping

    Detected: the pin is on a huge folio no longer mapped at a.
    Schedule [0, 1] with the point fast_pte_read."""
    for mutants, buggy in (((), False), (("no_pmd_recheck",), True)):
        m = machine(mutants)
        p = m.spawn()
        a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
        p.write(a, 0x2222)
        assert p.mm.pte(a).level == C.LEVEL_PMD
        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                                  lambda m: p.munmap(a, HPAGE)],
                                 schedule=[0, 1], points={"fast_pte_read"})
        assert pinned_but_unmapped(p, a, run.results[0]) is buggy
        m.check()


@pytest.mark.parametrize("table_free", ["rcu", "ipi"])
def test_table_free_no_sync_walker_reads_freed_table(table_free):
    """Page-table freeing vs lockless walkers (BUGS #6; SPEC §6.2).

    A table unlinked by free_pgtables may still be read by a walker that
    loaded the entry pointing at it with IRQs off.  The fix: free it only
    after tlb_remove_table_sync_one (IPI mode: CPU 0 cannot acknowledge
    until it leaves its walk) or an RCU grace period (IRQs-off is a
    read-side section).  Switch table_free_no_sync frees it at once.

    The PTE table must be empty when munmap runs, or the zap's TLB flush
    would wait for CPU 0 anyway: the file was truncated first, which zaps
    the PTE and leaves the (empty) tables linked.

        CPU 0: get_user_pages_fast(a)        CPU 1: munmap(a)
        IRQs off; read PGD, PUD, PMD entries
        -- parks after the PMD read --
                                             zap: nothing present, no flush
                                             free_pgtables: unlink PMD+PTE
                                             tables; free them (switch on)
                                             / queue them for RCU or IPI
                                             sync (the fix: waits for CPU 0)
        read the next level: the table is poisoned -> use-after-free

    Detected: the walker's table-liveness check records a violation
    (pygup.InvariantError from the fast path).
    Schedule [0, 0, 0, 1] with the point walk_entry_read (PGD, PUD, PMD)."""
    for mutants, buggy in (((), False), (("table_free_no_sync",), True)):
        m = machine(mutants, table_free=table_free)
        p = m.spawn()
        f = m.mount("ext4").create("f", P)
        a = p.mmap(P, RW, MAP.SHARED, file=f)
        p.write(a, 5)
        f.truncate(0)
        run = m.run_concurrently([lambda m: p.mm.get_user_pages_fast(a, 1, 0),
                                  lambda m: p.munmap(a, P)],
                                 schedule=[0, 0, 0, 1], points={"walk_entry_read"})
        err = run.raised(0)
        if buggy:
            assert isinstance(err, InvariantError) and "use-after-free of table" in str(err)
        else:
            assert err is None and run.results[0][0] == -14
        m.check()


def test_as_free_no_rcu_gup_fast_reads_freed_address_space():
    """The seed's RCU argument (folio_fast_pin_allowed; SPEC §4.6).

    GUP-fast reads folio->mapping and then looks at the address_space it
    names, holding no reference: only IRQs-off (an RCU read-side section)
    and the inode being freed by RCU keep it there.  Switch as_free_no_rcu
    frees the record at once.  With IPI TLB flushes the unmap would wait
    for CPU 0 anyway, so this runs with broadcast flushes (arm64), where
    RCU is the only protection.

        CPU 0: pin_user_pages_fast(a,        CPU 1: munmap(a) of the last
               WRITE|LONGTERM), memfd page          mapping of a memfd
        walk, grab, re-check ok
        mapping = READ_ONCE(folio->mapping)
        -- parks at fast_mapping_read --
                                             zap + broadcast flush (no wait)
                                             inode gone: truncate, release
                                             the address_space: RCU-deferred
                                             (the fix) / freed (switch on)
        look up the record: shmem? -> poisoned record: use-after-free

    Detected: pg_as_lookup_rcu records the use-after-free.
    Schedule [0, 1] with the point fast_mapping_read."""
    for mutants, buggy in (((), False), (("as_free_no_rcu",), True)):
        m = machine(mutants, tlb_flush="broadcast")
        p = m.spawn()
        a = p.mmap(P, RW, MAP.SHARED, file=m.memfd_create("buf", P))
        p.write(a, 3)
        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, LT_WRITE),
                                  lambda m: p.munmap(a, P)],
                                 schedule=[0, 1], points={"fast_mapping_read"})
        err = run.raised(0)
        if buggy:
            assert isinstance(err, InvariantError) and "use-after-free of address_space" in str(err)
        else:
            ret, pages = run.results[0]
            assert ret == 1                 # pinned before the unmap: legal
            p.mm.unpin_user_pages(pages)
        m.check()


def test_null_mapping_ok_gup_fast_vs_truncate():
    """A truncated folio passes the 6.5 fast whitelist (BUGS #2, v8 review).

    folio_fast_pin_allowed() must refuse a folio whose mapping is NULL: it
    was truncated, and the fast path cannot tell what it was; the slow
    path, which sees the VMA, decides.  Switch null_mapping_ok accepts it.
    Broadcast TLB flushes: with IPIs the truncate's unmap would wait for
    CPU 0 and never clear the mapping under it.

        CPU 0: pin_user_pages_fast(a,        CPU 1: ftruncate(f, 0)
               WRITE|LONGTERM), ext4 page
        walk, grab, re-check ok
        -- parks at fast_rechecked --
                                             unmap: zap + flush (no wait)
                                             delete from the page cache:
                                             folio->mapping = NULL
        read mapping: NULL -> refuse, fall back (the fix): the slow path
          refuses a long-term writable pin of ext4 / faults past EOF
          / switch on: pinned

    Detected: GUP-fast granted a FOLL_LONGTERM|FOLL_WRITE pin on an ext4
    page, which the 6.5 rule forbids; the folio is truncated and unmapped.
    Schedule [0, 1] with the point fast_rechecked."""
    for mutants, buggy in (((), False), (("null_mapping_ok",), True)):
        m = machine(mutants, tlb_flush="broadcast")
        p = m.spawn()
        f = m.mount("ext4").create("f", P)
        a = p.mmap(P, RW, MAP.SHARED, file=f)
        p.write(a, 3)
        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, LT_WRITE),
                                  lambda m: f.truncate(0)],
                                 schedule=[0, 1], points={"fast_rechecked"})
        ret, pages = run.results[0]
        assert (ret == 1) is buggy
        if buggy:
            assert m.folio(pages[0]).mapping == "none" and pinned_but_unmapped(p, a, (ret, pages))
        else:
            assert ret < 0
        m.check()


def test_whitelist_before_recheck_reads_reused_folio():
    """folio_fast_pin_allowed() before the re-check (BUGS #2, v8 review).

    Between GUP-fast's PTE read and its grab, the page may be unmapped,
    freed and reused (nothing holds it off once TLB flushes do not wait for
    IRQs-off CPUs).  "Add unless zero" succeeds on the reused folio; only
    the re-check proves it is still the page mapped there.  Reading
    ->mapping before that reads whatever the new owner keeps there - for a
    slab page, not a mapping at all.  Switch whitelist_before_recheck runs
    the whitelist first, as v8 of the seed did.

        CPU 0: pin_user_pages_fast(a,        CPU 1: munmap(a); then a kernel
               WRITE|LONGTERM), anon page           allocation reuses the frame
        IRQs off; read PTE -> F                     as a slab page
        -- parks at fast_pte_read --
                                             zap + broadcast flush; F freed;
                                             F allocated again, PG_slab
        grab F (refcount 1: succeeds)
        re-check: PTE none -> drop (the fix)
          / switch on: whitelist reads F->mapping of a slab page

    Detected: the whitelist's "GUP-fast found slab folio" warning.
    Schedule [0, 1] with the point fast_pte_read."""
    for mutants, buggy in (((), False), (("whitelist_before_recheck",), True)):
        m, p, a = anon_world(mutants, tlb_flush="broadcast")
        pfn = p.mm.pte(a).pfn

        def munmap_and_reuse(m):
            p.munmap(a, P)
            new = m.alloc_folio(0, movable=False)
            m._core.flags_update(new, C.F_SLAB, 0)
            return new

        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, LT_WRITE),
                                  munmap_and_reuse],
                                 schedule=[0, 1], points={"fast_pte_read"})
        assert run.results[1] == pfn                   # the frame was reused
        err = run.raised(0)
        if buggy:
            assert isinstance(err, InvariantError) and "slab folio" in str(err)
        else:
            assert err is None and run.results[0][0] == -14
        m._core.flags_update(pfn, 0, C.F_SLAB)
        m._core.folio_put(pfn)
        m.check()


def test_no_wp_seq_gup_fast_pin_during_fork():
    """GUP-fast vs fork (BUGS #3, 57efa1fe5957).

    fork copies a pinned anon page for the child instead of sharing it
    (page_needs_cow_for_dma), but it checks "pinned?" before it
    write-protects.  A fast pin in between lands on a page fork then
    shares.  The fix: fork makes mm->write_protect_seq odd around the copy;
    a FOLL_PIN fast walk that saw it odd or changed drops its pins and
    falls back.  Switch no_wp_seq ignores the sequence.

        CPU 0: pin_user_pages_fast(a, WRITE)  CPU 1: fork()
        seq = write_protect_seq (even)
        -- parks at fast_wp_seq_read --
                                             seq odd; copy: F not pinned ->
                                             share it: child reference
                                             -- parks at copy_before_wrprotect
        walk: PTE writable; grab (pin F);
        re-check ok; seq changed -> unpin,
        fall back (the fix) / switch on: keep
                                             write-protect F, clear
                                             AnonExclusive; child maps F

    Detected: the pinned page is mapped in the child too and no longer
    exclusive to the pinner.
    Schedule [0, 1, 0] with the points fast_wp_seq_read and
    copy_before_wrprotect."""
    for mutants, buggy in (((), False), (("no_wp_seq",), True)):
        m, p, a = anon_world(mutants)
        run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                                  lambda m: p.fork()],
                                 schedule=[0, 1, 0],
                                 points={"fast_wp_seq_read", "copy_before_wrprotect"})
        (ret, pages), child = run.results
        assert ret == 1
        pinned = pages[0]
        shared = child.mm.pte(a).pfn == pinned
        assert shared is buggy
        if not buggy:
            assert p.mm.pte(a).pfn == pinned and m.folio(pinned).mapcount == 1
            assert m.folio(pinned).flags & m.folio(pinned).flags.ANON_EXCLUSIVE
        else:
            assert m.folio(pinned).mapcount == 2
        p.mm.unpin_user_pages(pages)
        m.check()


def test_mkclean_no_flush_write_through_stale_tlb():
    """folio_mkclean without its TLB shootdown (DESIGN invariants 3, 5).

    Writeback write-protects and cleans every PTE of the folio, flushing
    TLBs, so the next user write faults and calls page_mkwrite.  Switch
    mkclean_no_flush skips the flush: a CPU that cached the writable entry
    keeps writing to the now clean folio behind the file system's back.

        CPU 0: user write (fault,             CPU 1: writeback
               page_mkwrite, TLB filled)
        -- parks at between_writes --
                                             folio_mkclean: clear, flush
                                             (the fix) / no flush; clean
                                             write-protected PTE; folio clean
        user write: TLB hit on the stale
        writable entry (switch on) / miss,
        write fault, page_mkwrite (the fix)

    Detected: the MMU's write-notify check (a clean folio of a dirty-
    tracked file written without page_mkwrite) records a violation.
    Schedule [0, 1, 0] with the Python point between_writes."""
    for mutants, buggy in (((), False), (("mkclean_no_flush",), True)):
        m = machine(mutants)
        p = m.spawn()
        f = m.mount("ext4").create("f", P)
        a = p.mmap(P, RW, MAP.SHARED, file=f)

        def writer(m):
            p.write(a, 1)
            yield_point(m, "between_writes")
            p.write(a, 2)

        run = m.run_concurrently([writer, lambda m: f.writeback()],
                                 schedule=[0, 1, 0], points={"between_writes"})
        err = run.raised(0)
        assert run.results[1] == 1
        if buggy:
            assert isinstance(err, InvariantError) and "write-notify bypass" in str(err)
        else:
            assert err is None and m.folio(p.mm.pte(a).pfn).dirty
        m.check()


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
