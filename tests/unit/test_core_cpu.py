"""C core: emulated CPUs, IRQ nesting, IPIs, TLBs, shootdown and the MMU's
user access (csrc/cpu.c)."""
from __future__ import annotations

import threading

import pytest

from pygup._native import ffi, lib
from conftest import core_frame_info, core_stats

P = lib.PG_PAGE_SIZE
PMD = 1 << lib.PG_PMD_SHIFT
PTE_RW = lib.PG_PTE_PRESENT | lib.PG_PTE_USER | lib.PG_PTE_WRITE
PTE_RO = lib.PG_PTE_PRESENT | lib.PG_PTE_USER
A, D = lib.PG_PTE_ACCESSED, lib.PG_PTE_DIRTY
ADDR = 0x7f0000010000


def pte(pfn, bits=PTE_RW):
    return (pfn << lib.PG_PTE_PFN_SHIFT) | bits


def lookup(m, mm, addr):
    out = ffi.new("uint64_t *")
    lib.pg_pte_lookup(m, mm, addr, out)
    return out[0]


def access(m, cpu, mm, addr, write=False, value=0):
    out = ffi.new("uint64_t *")
    rc = lib.pg_user_access(m, cpu, mm, addr, int(write), value, out)
    return rc, out[0]


@pytest.fixture
def mapped(core_machine):
    """(m, mm, pfn): one writable page at ADDR holding content 41"""
    m = core_machine
    mm = lib.pg_mm_new(m)
    pfn = lib.pg_folio_alloc(m, 0, 0)
    lib.pg_frame_write(m, pfn, 41)
    assert lib.pg_pte_set(m, mm, ADDR, pte(pfn), 1) == 0
    return m, mm, pfn


def test_read_write_and_hardware_bits(mapped):
    m, mm, pfn = mapped
    assert access(m, 0, mm, ADDR + 8) == (lib.PG_FAULT_NONE, 41)
    assert lookup(m, mm, ADDR) == pte(pfn) | A                 # read: ACCESSED only
    assert access(m, 0, mm, ADDR, True, 77) == (lib.PG_FAULT_NONE, 77)
    assert lookup(m, mm, ADDR) == pte(pfn) | A | D
    out = ffi.new("uint64_t *")
    lib.pg_frame_read(m, pfn, out)
    assert out[0] == 77
    assert not lib.pg_irqs_disabled(m, 0)                      # IRQs back on


def test_fault_codes(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    p = lib.pg_folio_alloc(m, 0, 0)
    assert access(m, 0, mm, ADDR)[0] == lib.PG_FAULT_NOT_PRESENT
    lib.pg_pte_set(m, mm, ADDR, pte(p, PTE_RO), 1)
    assert access(m, 0, mm, ADDR, True, 1)[0] == lib.PG_FAULT_WRITE_PROTECT
    assert lookup(m, mm, ADDR) == pte(p, PTE_RO)               # no DIRTY on a fault
    lib.pg_pte_set(m, mm, ADDR + P, pte(p, lib.PG_PTE_USER | lib.PG_PTE_PROTNONE), 1)
    assert access(m, 0, mm, ADDR + P)[0] == lib.PG_FAULT_PROTNONE
    lib.pg_pte_set(m, mm, ADDR + 2 * P, pte(p, lib.PG_PTE_PRESENT), 1)   # kernel page
    assert access(m, 0, mm, ADDR + 2 * P)[0] == lib.PG_FAULT_NOT_PRESENT
    lib.pg_pte_set(m, mm, ADDR + 3 * P, pte(p, lib.PG_PTE_USER), 1)      # swap-like
    assert access(m, 0, mm, ADDR + 3 * P)[0] == lib.PG_FAULT_NOT_PRESENT
    assert access(m, 0, mm, 1 << 47)[0] == -lib.PG_EFAULT
    assert access(m, 4, mm, ADDR)[0] == -lib.PG_EINVAL
    assert access(m, 0, mm + 12345, ADDR)[0] == -lib.PG_EINVAL
    assert not lib.pg_irqs_disabled(m, 0)


def test_pmd_leaf_access(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    head = lib.pg_folio_alloc(m, 9, 0)
    lib.pg_frame_write(m, head + 5, 555)
    lib.pg_pte_set(m, mm, PMD, pte(head), 2)
    assert access(m, 0, mm, PMD + 5 * P + 16) == (0, 555)
    assert access(m, 0, mm, PMD + 6 * P, True, 666)[0] == 0
    assert core_frame_info(m, head + 6).content == 666
    assert lookup(m, mm, PMD) & D


def test_zero_page_write_through_writable_pte_is_a_bug(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    lib.pg_pte_set(m, mm, ADDR, pte(0), 1)
    assert access(m, 0, mm, ADDR) == (0, 0)
    assert access(m, 0, mm, ADDR, True, 5)[0] == -lib.PG_EFAULT
    from conftest import core_pop_violations
    assert "zero page" in core_pop_violations(m)[0]
    assert core_frame_info(m, 0).content == 0


def test_tlb_fill_and_flush(mapped):
    m, mm, pfn = mapped
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 0
    access(m, 1, mm, ADDR)
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 1
    assert lib.pg_tlb_probe(m, 0, mm, ADDR) == 0
    assert lib.pg_tlb_probe(m, 1, mm, ADDR + P) == 0
    before = core_stats(m)
    assert lib.pg_flush_tlb_range(m, 0, mm, ADDR + P, ADDR + 2 * P) == 0   # elsewhere
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 1
    assert lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P) == 0
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 0
    after = core_stats(m)
    assert after["tlb_flushed_entries"] == before["tlb_flushed_entries"] + 1
    assert after["tlb_shootdowns"] == before["tlb_shootdowns"] + 2
    assert after["ipis_sent"] >= before["ipis_sent"] + 2      # cpu 1 is in the mask


def test_tlb_hit_skips_the_walk(mapped):
    """A read hit is served from the TLB even when the PTE changed."""
    m, mm, pfn = mapped
    access(m, 0, mm, ADDR)
    lib.pg_pte_modify(m, mm, ADDR, -1, lib.PG_PTE_ACCESSED, 0, ffi.NULL)
    access(m, 0, mm, ADDR)
    assert not lookup(m, mm, ADDR) & A            # no walk happened
    lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P)
    access(m, 0, mm, ADDR)
    assert lookup(m, mm, ADDR) & A                # the walk set it again


def test_write_hit_needs_cached_dirty(mapped):
    m, mm, pfn = mapped
    access(m, 0, mm, ADDR)                        # cached writable, clean
    lib.pg_pte_modify(m, mm, ADDR, -1, lib.PG_PTE_WRITE, 0, ffi.NULL)   # no flush
    # x86 re-walks to set DIRTY: the write-protect is seen
    assert access(m, 0, mm, ADDR, True, 1)[0] == lib.PG_FAULT_WRITE_PROTECT


def test_stale_tlb_write_only_without_shootdown(mapped):
    m, mm, pfn = mapped
    old = ffi.new("uint64_t *")
    # cpu 1 caches a writable, dirty translation
    assert access(m, 1, mm, ADDR, True, 1)[0] == 0
    # clear WITHOUT flush: the stale entry still lets cpu 1 write
    assert lib.pg_pte_clear(m, mm, ADDR, old) == 1
    assert access(m, 1, mm, ADDR, True, 2) == (0, 2)
    assert core_frame_info(m, pfn).content == 2
    assert access(m, 0, mm, ADDR)[0] == lib.PG_FAULT_NOT_PRESENT   # cpu 0 walks
    # re-install, re-cache, then clear WITH flush: no CPU can write
    lib.pg_pte_set(m, mm, ADDR, old[0], 1)
    assert access(m, 1, mm, ADDR, True, 3)[0] == 0
    lib.pg_pte_clear(m, mm, ADDR, old)
    assert lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P) == 0
    for cpu in range(4):
        assert access(m, cpu, mm, ADDR, True, 4)[0] == lib.PG_FAULT_NOT_PRESENT
    assert core_frame_info(m, pfn).content == 3


def test_mkclean_shoots_down_other_cpus(mapped):
    m, mm, pfn = mapped
    assert access(m, 2, mm, ADDR, True, 5)[0] == 0
    dirty = ffi.new("int *")
    assert lib.pg_pte_mkclean(m, 0, mm, ADDR, pfn, dirty) == 1 and dirty[0] == 1
    assert lib.pg_tlb_probe(m, 2, mm, ADDR) == 0
    assert access(m, 2, mm, ADDR, True, 6)[0] == lib.PG_FAULT_WRITE_PROTECT
    assert core_frame_info(m, pfn).content == 5


def test_irq_nesting(core_machine):
    m = core_machine
    assert lib.pg_irqs_disabled(m, 0) == 0
    lib.pg_local_irq_disable(m, 0)
    lib.pg_local_irq_disable(m, 0)
    lib.pg_local_irq_enable(m, 0)
    assert lib.pg_irqs_disabled(m, 0) == 1
    lib.pg_local_irq_enable(m, 0)
    assert lib.pg_irqs_disabled(m, 0) == 0
    assert lib.pg_local_irq_enable(m, 0) == -lib.PG_EINVAL
    for bad in (-1, 4, 64):
        assert lib.pg_local_irq_disable(m, bad) == -lib.PG_EINVAL
        assert lib.pg_irqs_disabled(m, bad) == -lib.PG_EINVAL
        assert lib.pg_ipi_sync_all(m, bad) == -lib.PG_EINVAL
        assert lib.pg_tlb_probe(m, bad, 0, 0) == -lib.PG_EINVAL


def test_sender_with_irqs_off_is_refused(mapped):
    m, mm, pfn = mapped
    lib.pg_local_irq_disable(m, 0)
    try:
        assert lib.pg_flush_tlb_range(m, 0, mm, 0, P) == -lib.PG_EBUSY
        assert lib.pg_ipi_sync_all(m, 0) == -lib.PG_EBUSY
        assert lib.pg_pte_mkclean(m, 0, mm, ADDR, pfn, ffi.NULL) == -lib.PG_EBUSY
        assert lib.pg_mm_destroy(m, 0, mm) == -lib.PG_EBUSY
    finally:
        lib.pg_local_irq_enable(m, 0)


def _blocked_call(fn):
    """Run fn in a thread; returns (thread, done_event, result_list)."""
    done = threading.Event()
    result = []

    def run():
        result.append(fn())
        done.set()

    t = threading.Thread(target=run)
    t.start()
    return t, done, result


def test_flush_waits_for_cpu_with_irqs_off(mapped):
    """Thread A (cpu 0) flushes; thread B (cpu 1) has IRQs off.  A must not
    return until B enables IRQs, and B's TLB is flushed by then."""
    m, mm, pfn = mapped
    assert access(m, 1, mm, ADDR, True, 1)[0] == 0      # cpu 1 in the mm's mask
    b_irqs_off = threading.Event()
    b_release = threading.Event()
    b_states = []

    def thread_b():
        lib.pg_local_irq_disable(m, 1)
        b_irqs_off.set()
        b_release.wait(10)
        b_states.append(lib.pg_tlb_probe(m, 1, mm, ADDR))   # not yet flushed
        lib.pg_local_irq_enable(m, 1)                        # runs the IPI

    tb = threading.Thread(target=thread_b)
    tb.start()
    try:
        assert b_irqs_off.wait(10)
        ta, a_done, a_result = _blocked_call(
            lambda: lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P))
        # A is stuck waiting for B's acknowledgement
        assert not a_done.wait(0.3)
        assert ta.is_alive()
    finally:
        b_release.set()
    assert a_done.wait(10)
    ta.join()
    tb.join()
    assert a_result == [0]
    assert b_states == [1]
    assert lib.pg_tlb_probe(m, 1, mm, ADDR) == 0


def test_flush_does_not_wait_for_cpu_outside_mask(mapped):
    m, mm, pfn = mapped
    lib.pg_local_irq_disable(m, 3)          # cpu 3 never touched mm
    try:
        assert lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P) == 0
    finally:
        lib.pg_local_irq_enable(m, 3)


def test_ipi_sync_all_waits_for_every_cpu(core_machine):
    m = core_machine
    lib.pg_local_irq_disable(m, 3)
    t, done, result = _blocked_call(lambda: lib.pg_ipi_sync_all(m, 0))
    try:
        assert not done.wait(0.3)
    finally:
        lib.pg_local_irq_enable(m, 3)
    assert done.wait(10)
    t.join()
    assert result == [0]


def test_concurrent_access_and_shootdown_threads(core_machine):
    """cpu 1..3 read and write in a loop while cpu 0 write-protects and
    flushes: after each flush returns, no CPU writes through the old entry."""
    m = core_machine
    mm = lib.pg_mm_new(m)
    pfn = lib.pg_folio_alloc(m, 0, 0)
    lib.pg_pte_set(m, mm, ADDR, pte(pfn), 1)
    stop = threading.Event()
    errors = []

    def user(cpu):
        out = ffi.new("uint64_t *")
        while not stop.is_set():
            rc = lib.pg_user_access(m, cpu, mm, ADDR, 1, cpu, out)
            if rc not in (0, lib.PG_FAULT_WRITE_PROTECT):
                errors.append(rc)

    users = [threading.Thread(target=user, args=(c,)) for c in (1, 2, 3)]
    for t in users:
        t.start()
    try:
        for _ in range(200):
            lib.pg_pte_modify(m, mm, ADDR, -1, lib.PG_PTE_WRITE, 0, ffi.NULL)
            lib.pg_flush_tlb_range(m, 0, mm, ADDR, ADDR + P)
            lib.pg_frame_write(m, pfn, 1000)
            # write-protected and shot down: the content must stay
            out = ffi.new("uint64_t *")
            lib.pg_frame_read(m, pfn, out)
            if out[0] != 1000:
                errors.append(("stale write", out[0]))
            lib.pg_pte_modify(m, mm, ADDR, -1, 0, lib.PG_PTE_WRITE, ffi.NULL)
    finally:
        stop.set()
        for t in users:
            t.join()
    assert not errors
