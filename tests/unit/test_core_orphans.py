"""C core: waits on another CPU end when that CPU's section has no owner
any more (csrc/kernel/rcu.c pg_rcu_section_orphaned: a grace period passes
it; csrc/arch/cpu.c pg_cpu_reap_orphan: an IPI ends it), and pins never
wrap a refcount (csrc/mm/gup.c try_grab_folio, try_grab_page).  Issue 15, items 4 and 6.

A thread that ends inside an IRQs-off or RCU read-side section would hold
off every IPI acknowledgement and grace period for ever, inside C where
Ctrl-C cannot reach.  The waiter detects the cause (the owning OS thread is
gone) rather than timing out, so a merely slow target is waited for."""
from __future__ import annotations

import threading

from pygup._native import ffi, lib
from conftest import core_frame_info, core_stats

P = lib.PG_PAGE_SIZE
ADDR = 0x7f0000010000
PTE_RW = lib.PG_PTE_PRESENT | lib.PG_PTE_USER | lib.PG_PTE_WRITE
JOIN_S = 60


def _run_and_end(fn):
    """Run fn in an OS thread that then ends; wait for the end."""
    t = threading.Thread(target=fn)
    t.start()
    t.join(JOIN_S)
    assert not t.is_alive()


def _call_bounded(fn):
    """fn() in a daemon thread; its result, or None if it did not return."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(JOIN_S)
    return out[0] if out else None


def test_grace_period_passes_a_dead_threads_irqs_off_section(core_machine):
    # a reader whose thread has ended reads nothing: its CPU is quiescent
    m = core_machine
    _run_and_end(lambda: lib.pg_local_irq_disable(m, 1))
    assert lib.pg_irqs_disabled(m, 1) == 1
    assert _call_bounded(lambda: lib.pg_synchronize_rcu(m, 0)) == 0
    assert _call_bounded(lambda: lib.pg_synchronize_rcu(m, 0)) == 0   # and stays so
    # the section itself is ended by the next IPI to it (or by Python)
    assert lib.pg_ipi_sync_all(m, 0) == 0
    assert lib.pg_irqs_disabled(m, 1) == 0
    assert core_stats(m)["orphans_reaped"] == 1


def test_grace_period_passes_a_dead_threads_rcu_read_section(core_machine):
    m = core_machine
    _run_and_end(lambda: lib.pg_rcu_read_lock(m, 2))
    assert _call_bounded(lambda: lib.pg_synchronize_rcu(m, 0)) == 0
    assert _call_bounded(lambda: lib.pg_synchronize_rcu(m, 0)) == 0


def test_shootdown_ends_a_dead_threads_irqs_off_section(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    pfn = lib.pg_folio_alloc(m, 0, 0)
    assert lib.pg_pte_set(m, mm, ADDR, (pfn << lib.PG_PTE_PFN_SHIFT) | PTE_RW, 1) == 0

    def cache_then_end_with_irqs_off():
        out = ffi.new("uint64_t *")
        assert lib.pg_user_access(m, 1, mm, ADDR, 0, 0, out) == 0   # CPU 1 caches it
        lib.pg_local_irq_disable(m, 1)
    _run_and_end(cache_then_end_with_irqs_off)
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 1
    assert _call_bounded(lambda: lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P)) == 0
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 0   # the queued IPI ran
    assert core_stats(m)["orphans_reaped"] == 1


def test_a_live_threads_section_is_waited_for(core_machine):
    # never reaped, however long it lasts: the wait ends when it does
    m = core_machine
    entered, leave = threading.Event(), threading.Event()

    def hold():
        lib.pg_local_irq_disable(m, 1)
        entered.set()
        leave.wait(JOIN_S)
        lib.pg_local_irq_enable(m, 1)
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert entered.wait(JOIN_S)
    done = threading.Event()
    w = threading.Thread(target=lambda: (lib.pg_synchronize_rcu(m, 0), done.set()), daemon=True)
    w.start()
    assert not done.wait(0.5)
    leave.set()
    assert done.wait(JOIN_S)
    t.join(JOIN_S)
    assert core_stats(m)["orphans_reaped"] == 0


def _near_overflow(m, pfn, headroom):
    """Raise pfn's refcount to INT32_MAX - headroom."""
    target = 2**31 - 1 - headroom
    while core_frame_info(m, pfn).refcount < target:
        need = target - core_frame_info(m, pfn).refcount
        assert lib.pg_folio_get(m, pfn, min(need, 2**30)) > 0


def test_fast_pin_without_bias_headroom_takes_nothing(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    pfn = lib.pg_folio_alloc(m, 0, 0)
    assert lib.pg_pte_set(m, mm, ADDR, (pfn << lib.PG_PTE_PFN_SHIFT) | PTE_RW, 1) == 0
    _near_overflow(m, pfn, lib.PG_GUP_PIN_COUNTING_BIAS - 1)
    before = core_frame_info(m, pfn).refcount
    out = ffi.new("uint64_t[1]")
    got = lib.pg_gup_fast(m, 0, mm, ADDR, 1, lib.PG_FOLL_PIN, 0, out)
    assert got == 0
    assert core_frame_info(m, pfn).refcount == before         # nothing wrapped
    assert lib.pg_try_grab_page(m, pfn, 1) == -lib.PG_ENOMEM  # the slow path's answer
    assert lib.pg_try_grab_page(m, pfn, 0) == 0               # a plain get still fits
    assert lib.pg_folio_put(m, pfn, 1) > 0
    # with the headroom, the pin is one add of the whole bias
    assert lib.pg_folio_put(m, pfn, 2 * lib.PG_GUP_PIN_COUNTING_BIAS) > 0
    assert lib.pg_gup_fast(m, 0, mm, ADDR, 1, lib.PG_FOLL_PIN, 0, out) == 1
    assert core_frame_info(m, pfn).refcount == before - 2 * lib.PG_GUP_PIN_COUNTING_BIAS \
        + lib.PG_GUP_PIN_COUNTING_BIAS
    assert lib.pg_gup_put(m, pfn, 1, 1) == 0
    assert lib.pg_folio_put(m, pfn, core_frame_info(m, pfn).refcount - 1) > 0
