"""C core: mm table, 4-level page tables, mutators, deferred table freeing
(csrc/pgtable.c)."""
from __future__ import annotations

import threading

import pytest

from pygup._native import ffi, lib
from conftest import core_frame_info, core_stats

P = lib.PG_PAGE_SIZE
PMD = 1 << lib.PG_PMD_SHIFT
VA_END = lib.PG_TASK_SIZE_MAX + P
PTE_RW = lib.PG_PTE_PRESENT | lib.PG_PTE_USER | lib.PG_PTE_WRITE
PTE_RO = lib.PG_PTE_PRESENT | lib.PG_PTE_USER


def pte(pfn, bits=PTE_RW):
    return (pfn << lib.PG_PTE_PFN_SHIFT) | bits


def lookup(m, mm, addr):
    out = ffi.new("uint64_t *")
    level = lib.pg_pte_lookup(m, mm, addr, out)
    return level, out[0]


def map_page(m, mm, addr, bits=PTE_RW, zone=0, mapping=0):
    """fault-handler style: a folio with one ref for the mapping + mapcount"""
    pfn = lib.pg_folio_alloc(m, 0, zone)
    assert pfn > 0
    if mapping:
        lib.pg_folio_set_mapping(m, pfn, mapping, addr // P)
    assert lib.pg_pte_set(m, mm, addr, pte(pfn, bits), lib.PG_LEVEL_PTE) == 0
    lib.pg_frame_mapcount_add(m, pfn, 1)
    return pfn


def map_huge(m, mm, addr, bits=PTE_RW, mapping=0):
    head = lib.pg_folio_alloc(m, 9, 0)
    assert head > 0
    if mapping:
        lib.pg_folio_set_mapping(m, head, mapping, 0)
    assert lib.pg_pte_set(m, mm, addr, pte(head, bits), lib.PG_LEVEL_PMD) == 0
    lib.pg_frame_mapcount_add(m, head, 1)
    return head


def test_mm_ids(core_machine):
    m = core_machine
    a = lib.pg_mm_new(m)
    b = lib.pg_mm_new(m)
    assert a >= 0 and b >= 0 and a != b
    assert core_stats(m)["table_pages_live"] == 2          # two PGDs
    assert lib.pg_mm_destroy(m, 0, a) == 0
    assert lib.pg_mm_destroy(m, 0, a) == -lib.PG_EINVAL    # stale
    c = lib.pg_mm_new(m)
    assert c != a                                           # slot reused, new id
    level, _ = lookup(m, c, 0)
    assert level == 0
    assert lib.pg_pte_lookup(m, a, 0, ffi.new("uint64_t *")) == -lib.PG_EINVAL
    assert lib.pg_pte_set(m, a, 0, pte(5), 1) == -lib.PG_EINVAL
    for bad in (2**64 - 1, 4096 * 1000 + 7):
        assert lib.pg_pte_lookup(m, bad, 0, ffi.new("uint64_t *")) == -lib.PG_EINVAL
        assert lib.pg_zap_range(m, 0, bad, 0, P) == -lib.PG_EINVAL
        assert lib.pg_mm_destroy(m, 0, bad) == -lib.PG_EINVAL


def test_set_lookup_pte_and_pmd(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    addr = 0x7f0000001000
    assert lib.pg_pte_set(m, mm, addr, pte(7), lib.PG_LEVEL_PTE) == 0
    assert lookup(m, mm, addr) == (1, pte(7))
    assert lookup(m, mm, addr + 123) == (1, pte(7))        # any byte in the page
    assert lookup(m, mm, addr + P) == (0, 0)
    assert lib.pg_pte_set(m, mm, addr, pte(8), 1) == -lib.PG_EEXIST
    assert core_stats(m)["table_pages_live"] == 4          # PGD PUD PMD PTE
    haddr = 0x40000000
    assert lib.pg_pte_set(m, mm, haddr, pte(512), lib.PG_LEVEL_PMD) == 0
    level, e = lookup(m, mm, haddr + 5 * P)
    assert level == 2 and e == pte(512) | lib.PG_PTE_HUGE
    assert lib.pg_pte_set(m, mm, haddr + P, pte(9), 1) == -lib.PG_EEXIST  # under a PMD leaf
    assert lib.pg_pte_set(m, mm, addr & ~(PMD - 1), pte(1024), 2) == -lib.PG_EEXIST  # PTE table there


@pytest.mark.parametrize("addr,entry,level,err", [
    (VA_END, pte(5), 1, -lib.PG_EFAULT),
    (2**64 - P, pte(5), 1, -lib.PG_EFAULT),
    (0x1001, pte(5), 1, -lib.PG_EINVAL),
    (0x1000, 0, 1, -lib.PG_EINVAL),
    (0x1000, pte(4096), 1, -lib.PG_EINVAL),               # pfn beyond memory
    (0x1000, pte(5) | lib.PG_PTE_HUGE, 1, -lib.PG_EINVAL),
    (0x1000, pte(5) | (1 << 63), 1, -lib.PG_EINVAL),
    (PMD + P, pte(512), 2, -lib.PG_EINVAL),                # unaligned PMD
    (PMD, pte(513), 2, -lib.PG_EINVAL),                    # unaligned pfn
    (PMD, pte(4096 - 256), 2, -lib.PG_EINVAL),
    (0x1000, pte(5), 3, -lib.PG_EINVAL),
])
def test_set_rejects_bad_arguments(core_machine, addr, entry, level, err):
    m = core_machine
    mm = lib.pg_mm_new(m)
    assert lib.pg_pte_set(m, mm, addr, entry, level) == err


def test_lookup_bad_address(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    assert lib.pg_pte_lookup(m, mm, VA_END, ffi.new("uint64_t *")) == -lib.PG_EFAULT
    assert lib.pg_pte_lookup(m, mm, VA_END - 1, ffi.new("uint64_t *")) == 0


def test_modify_and_clear(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    old = ffi.new("uint64_t *")
    assert lib.pg_pte_set(m, mm, 0x2000, pte(7), 1) == 0
    assert lib.pg_pte_modify(m, mm, 0x2000, 7, lib.PG_PTE_WRITE, lib.PG_PTE_SOFT_DIRTY, old) == 1
    assert old[0] == pte(7)
    assert lookup(m, mm, 0x2000)[1] == pte(7, PTE_RO | lib.PG_PTE_SOFT_DIRTY)
    assert lib.pg_pte_modify(m, mm, 0x2000, 8, 0, lib.PG_PTE_WRITE, old) == -lib.PG_ENOENT
    assert lib.pg_pte_modify(m, mm, 0x3000, -1, 0, lib.PG_PTE_WRITE, old) == -lib.PG_ENOENT
    assert lib.pg_pte_modify(m, mm, 0x2000, -1, 0, 1 << 20, old) == -lib.PG_EINVAL  # pfn bits
    assert lib.pg_pte_modify(m, mm, 0x2000, -1, lib.PG_PTE_HUGE, 0, old) == -lib.PG_EINVAL
    # PMD leaf: expect_pfn is the subpage mapped at addr
    assert lib.pg_pte_set(m, mm, PMD, pte(1024), 2) == 0
    assert lib.pg_pte_modify(m, mm, PMD + 3 * P, 1027, lib.PG_PTE_WRITE, 0, old) == 2
    assert lib.pg_pte_modify(m, mm, PMD + 3 * P, 1024, lib.PG_PTE_WRITE, 0, old) == -lib.PG_ENOENT
    assert lib.pg_pte_clear(m, mm, PMD + 5 * P, old) == 2
    assert old[0] == pte(1024, PTE_RO) | lib.PG_PTE_HUGE
    assert lib.pg_pte_clear(m, mm, 0x2000, old) == 1
    assert lookup(m, mm, 0x2000) == (0, 0)
    assert lib.pg_pte_clear(m, mm, 0x2000, old) == 0 and old[0] == 0
    assert lib.pg_pte_clear(m, mm, VA_END, old) == -lib.PG_EFAULT


def test_zap_drops_refs_mapcounts_and_transfers_dirty(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    asid = lib.pg_as_new(m, 0)
    file_mapping = asid << 2
    anon_mapping = (3 << 2) | lib.PG_MAPPING_ANON
    f = map_page(m, mm, 0x10000, PTE_RW | lib.PG_PTE_DIRTY, mapping=file_mapping)
    a = map_page(m, mm, 0x11000, PTE_RW | lib.PG_PTE_DIRTY, mapping=anon_mapping)
    c = map_page(m, mm, 0x12000, PTE_RW, mapping=file_mapping)   # clean
    lib.pg_folio_get(m, f, 1)          # someone else (page cache) holds f
    sp = lib.pg_folio_alloc(m, 0, 0)   # SPECIAL: no counts at all
    assert lib.pg_pte_set(m, mm, 0x13000, pte(sp, PTE_RW | lib.PG_PTE_SPECIAL), 1) == 0
    assert lib.pg_pte_set(m, mm, 0x14000, pte(0, PTE_RO), 1) == 0   # zero page
    h = map_huge(m, mm, PMD, mapping=file_mapping)
    lib.pg_folio_get(m, h, 1)
    free_before = core_stats(m)["nr_free"][0]
    n = lib.pg_zap_range(m, 0, mm, 0x10000, 2 * PMD)
    assert n == 5 + 512
    fi = core_frame_info(m, f)
    assert fi.refcount == 1 and fi.mapcount == 0 and fi.flags & lib.PG_F_DIRTY
    assert core_frame_info(m, a).flags == lib.PG_F_FREE         # last ref dropped
    assert core_frame_info(m, c).flags == lib.PG_F_FREE
    assert core_frame_info(m, sp).refcount == 1                 # untouched
    assert core_frame_info(m, 0).refcount == 1
    hi = core_frame_info(m, h)
    assert hi.refcount == 1 and hi.mapcount == 0 and not hi.flags & lib.PG_F_DIRTY
    assert core_stats(m)["nr_free"][0] == free_before + 2
    for addr in (0x10000, 0x13000, PMD + 7 * P):
        assert lookup(m, mm, addr) == (0, 0)
    assert lib.pg_zap_range(m, 0, mm, 0x10000, 2 * PMD) == 0


def test_zap_argument_checks(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    map_huge(m, mm, PMD)
    assert lib.pg_zap_range(m, 0, mm, PMD + P, 2 * PMD) == -lib.PG_EINVAL   # part of a PMD
    assert lib.pg_zap_range(m, 0, mm, 0, PMD + P) == -lib.PG_EINVAL
    assert lookup(m, mm, PMD)[0] == 2                                      # untouched
    assert lib.pg_zap_range(m, 0, mm, 1, P) == -lib.PG_EINVAL
    assert lib.pg_zap_range(m, 0, mm, 2 * P, P) == -lib.PG_EINVAL
    assert lib.pg_zap_range(m, 0, mm, 0, VA_END + P) == -lib.PG_EFAULT
    assert lib.pg_zap_range(m, 99, mm, 0, P) == -lib.PG_EINVAL
    lib.pg_local_irq_disable(m, 0)
    assert lib.pg_zap_range(m, 0, mm, 0, P) == -lib.PG_EBUSY
    lib.pg_local_irq_enable(m, 0)
    assert lib.pg_zap_range(m, 0, mm, 0, 4 * PMD) == 512


def test_zap_large_range_batches(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    pfns = [map_page(m, mm, 0x100000 + i * P) for i in range(600)]   # > one batch
    assert lib.pg_zap_range(m, 0, mm, 0, VA_END) == 600
    assert all(core_frame_info(m, p).flags == lib.PG_F_FREE for p in pfns)


def _tables(m):
    return core_stats(m)["table_pages_live"]


def test_free_pgtables_ipi_mode(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    map_page(m, mm, 0x200000)
    map_page(m, mm, 0x600000)          # another PTE table, same PMD table
    assert _tables(m) == 5
    # tables that still map something are kept
    assert lib.pg_free_pgtables(m, 0, mm, 0, VA_END) == 0
    lib.pg_zap_range(m, 0, mm, 0x200000, 0x201000)
    # only tables wholly inside the range go
    assert lib.pg_free_pgtables(m, 0, mm, 0x200000, 0x201000) == 0
    assert lib.pg_free_pgtables(m, 0, mm, 0x200000, 0x400000) == 1
    assert _tables(m) == 4
    lib.pg_zap_range(m, 0, mm, 0, VA_END)
    assert lib.pg_free_pgtables(m, 0, mm, 0, VA_END) == 3    # PTE, PMD, PUD
    st = core_stats(m)
    assert st["table_pages_live"] == 1 and st["table_pages_pending"] == 0
    # the tables are reused
    map_page(m, mm, 0x200000)
    assert core_stats(m)["table_bytes"] == st["table_bytes"]


def test_free_pgtables_ipi_mode_waits_for_irqs_off_cpu(core_machine):
    """In IPI mode the free waits for the sync IPI, which a CPU with IRQs
    off acknowledges only when it enables them."""
    m = core_machine
    mm = lib.pg_mm_new(m)
    map_page(m, mm, 0x200000)
    lib.pg_zap_range(m, 0, mm, 0, VA_END)
    lib.pg_local_irq_disable(m, 2)
    done = threading.Event()
    result = []
    t = threading.Thread(target=lambda: (result.append(
        lib.pg_free_pgtables(m, 0, mm, 0, VA_END)), done.set()))
    t.start()
    assert not done.wait(0.3)
    try:
        # unlinked, not yet freed
        assert _tables(m) == 4 and core_stats(m)["table_pages_pending"] == 3
    finally:
        lib.pg_local_irq_enable(m, 2)
    assert done.wait(10)
    t.join()
    assert result == [3] and _tables(m) == 1
    assert core_stats(m)["table_pages_pending"] == 0


def test_free_pgtables_rcu_mode_pending_while_irqs_off(make_core_machine):
    m = make_core_machine(mode=lib.PG_TABLE_FREE_RCU)
    mm = lib.pg_mm_new(m)
    map_page(m, mm, 0x200000)
    lib.pg_zap_range(m, 0, mm, 0, VA_END)
    lib.pg_local_irq_disable(m, 1)      # a walker could hold the old tables
    assert lib.pg_free_pgtables(m, 0, mm, 0, VA_END) == 3   # does not wait
    st = core_stats(m)
    assert st["table_pages_pending"] == 3 and st["table_pages_live"] == 4
    assert lib.pg_rcu_poll(m) == 0
    assert core_stats(m)["table_pages_pending"] == 3
    assert lookup(m, mm, 0x200000) == (0, 0)   # unlinked: new walks miss them
    lib.pg_local_irq_enable(m, 1)
    assert lib.pg_rcu_poll(m) == 3
    st = core_stats(m)
    assert st["table_pages_pending"] == 0 and st["table_pages_live"] == 1


def test_free_pgtables_rcu_mode_no_reader_frees_at_once(make_core_machine):
    m = make_core_machine(mode=lib.PG_TABLE_FREE_RCU)
    mm = lib.pg_mm_new(m)
    map_page(m, mm, 0x200000)
    lib.pg_zap_range(m, 0, mm, 0, VA_END)
    assert lib.pg_free_pgtables(m, 0, mm, 0, VA_END) == 3
    st = core_stats(m)          # the mutator polled: nobody was reading
    assert st["table_pages_pending"] == 0 and st["table_pages_live"] == 1


@pytest.mark.parametrize("cow", [0, 1])
def test_copy_range(core_machine, cow):
    m = core_machine
    src = lib.pg_mm_new(m)
    dst = lib.pg_mm_new(m)
    anon = (1 << 2) | lib.PG_MAPPING_ANON
    a = map_page(m, src, 0x10000, PTE_RW | lib.PG_PTE_DIRTY, mapping=anon)
    lib.pg_folio_flags_update(m, a, lib.PG_F_ANON_EXCLUSIVE, 0)
    r = map_page(m, src, 0x11000, PTE_RO, mapping=anon)
    sp = lib.pg_folio_alloc(m, 0, 0)
    lib.pg_pte_set(m, src, 0x12000, pte(sp, PTE_RW | lib.PG_PTE_SPECIAL), 1)
    h = map_huge(m, src, PMD, mapping=anon)
    lib.pg_folio_flags_update(m, h + 3, lib.PG_F_ANON_EXCLUSIVE, 0)
    n = lib.pg_copy_range(m, 0, src, dst, 0, 2 * PMD, cow, 0, 0)
    assert n == 3 + 512
    ai = core_frame_info(m, a)
    assert ai.refcount == 2 and ai.mapcount == 2
    assert core_frame_info(m, r).refcount == 2
    assert core_frame_info(m, sp).refcount == 1 and core_frame_info(m, sp).mapcount == 0
    hi = core_frame_info(m, h)
    assert hi.refcount == 2 and hi.mapcount == 2
    _, s_e = lookup(m, src, 0x10000)
    _, d_e = lookup(m, dst, 0x10000)
    _, d_sp = lookup(m, dst, 0x12000)
    _, d_h = lookup(m, dst, PMD)
    if cow:
        assert s_e == pte(a, PTE_RO | lib.PG_PTE_DIRTY) == d_e
        assert d_sp == pte(sp, PTE_RO | lib.PG_PTE_SPECIAL)
        assert not d_h & lib.PG_PTE_WRITE
        assert not ai.flags & lib.PG_F_ANON_EXCLUSIVE
        assert not core_frame_info(m, h + 3).flags & lib.PG_F_ANON_EXCLUSIVE
    else:
        assert s_e == pte(a, PTE_RW | lib.PG_PTE_DIRTY) == d_e
        assert d_sp == pte(sp, PTE_RW | lib.PG_PTE_SPECIAL)
        assert ai.flags & lib.PG_F_ANON_EXCLUSIVE
    # a second copy onto the same range collides
    assert lib.pg_copy_range(m, 0, src, dst, 0, P * 17, cow, 0, 0) == -lib.PG_EEXIST
    assert lib.pg_copy_range(m, 0, src, src, 0, P, cow, 0, 0) == -lib.PG_EINVAL
    # both mms tear down cleanly: every count returns
    lib.pg_mm_destroy(m, 0, dst)
    lib.pg_mm_destroy(m, 0, src)
    assert core_frame_info(m, a).flags == lib.PG_F_FREE
    assert core_frame_info(m, h).flags == lib.PG_F_FREE
    assert core_stats(m)["table_pages_live"] == 0


def test_copy_range_cow_flushes_src_tlb(core_machine):
    m = core_machine
    src, dst = lib.pg_mm_new(m), lib.pg_mm_new(m)
    map_page(m, src, 0x10000)
    out = ffi.new("uint64_t *")
    assert lib.pg_user_access(m, 1, src, 0x10000, 1, 5, out) == 0
    assert lib.pg_tlb_probe(m, 1, src, 0x10000) == 1
    lib.pg_copy_range(m, 0, src, dst, 0, PMD, 1, 0, 0)
    assert lib.pg_tlb_probe(m, 1, src, 0x10000) == 0
    assert lib.pg_user_access(m, 1, src, 0x10000, 1, 6, out) == lib.PG_FAULT_WRITE_PROTECT


def test_change_protection(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    p1 = map_page(m, mm, 0x10000)
    map_page(m, mm, 0x11000, PTE_RO)
    h = map_huge(m, mm, PMD)
    n = lib.pg_change_protection(m, 0, mm, 0, 2 * PMD, lib.PG_PTE_WRITE, 0)
    assert n == 1 + 512                    # the RO page did not change
    assert lookup(m, mm, 0x10000)[1] == pte(p1, PTE_RO)
    assert lookup(m, mm, PMD)[1] == pte(h, PTE_RO) | lib.PG_PTE_HUGE
    # NUMA-hint style: PROTNONE
    n = lib.pg_change_protection(m, 0, mm, 0x10000, 0x12000, lib.PG_PTE_PRESENT,
                                 lib.PG_PTE_PROTNONE)
    assert n == 2
    assert lookup(m, mm, 0x10000)[1] == pte(p1, lib.PG_PTE_USER | lib.PG_PTE_PROTNONE)
    assert lib.pg_change_protection(m, 0, mm, 0, PMD, 0, 1 << 12) == -lib.PG_EINVAL
    assert lib.pg_change_protection(m, 0, mm, PMD, PMD + P, lib.PG_PTE_WRITE, 0) == -lib.PG_EINVAL
    assert lib.pg_change_protection(m, 0, mm, 0, PMD, lib.PG_PTE_WRITE, 0) == 0


def test_range_leaves(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    p1 = map_page(m, mm, 0x10000)
    p2 = map_page(m, mm, 0x30000, PTE_RO)
    h = map_huge(m, mm, PMD)
    addrs = ffi.new("uint64_t[1100]")
    ptes = ffi.new("uint64_t[1100]")
    n = lib.pg_range_leaves(m, mm, 0, 2 * PMD, addrs, ptes, 1100)
    assert n == 2 + 512
    assert list(addrs[0:3]) == [0x10000, 0x30000, PMD]
    assert ptes[0] == pte(p1) and ptes[1] == pte(p2, PTE_RO)
    assert ptes[2 + 7] == pte(h + 7) | lib.PG_PTE_HUGE and addrs[2 + 7] == PMD + 7 * P
    # clipped to the range and to max
    n = lib.pg_range_leaves(m, mm, PMD + 10 * P, PMD + 20 * P, addrs, ptes, 1100)
    assert n == 10 and addrs[0] == PMD + 10 * P and ptes[0] == pte(h + 10) | lib.PG_PTE_HUGE
    assert lib.pg_range_leaves(m, mm, 0, 2 * PMD, addrs, ptes, 5) == 5
    assert lib.pg_range_leaves(m, mm, 0, 2 * PMD, addrs, ptes, 0) == 0
    assert lib.pg_range_leaves(m, mm, 0, 2 * PMD, ffi.NULL, ptes, 5) == -lib.PG_EINVAL
    assert lib.pg_range_leaves(m, mm, 0, 2 * PMD, addrs, ptes, -1) == -lib.PG_EINVAL


def test_mkclean(core_machine):
    m = core_machine
    mm = lib.pg_mm_new(m)
    head = map_huge(m, mm, PMD)
    p = map_page(m, mm, 0x10000, PTE_RW | lib.PG_PTE_DIRTY)
    dirty = ffi.new("int *")
    assert lib.pg_pte_mkclean(m, 0, mm, 0x10000, p, dirty) == 1 and dirty[0] == 1
    assert lookup(m, mm, 0x10000)[1] == pte(p, PTE_RO)
    assert lib.pg_pte_mkclean(m, 0, mm, 0x10000, p, dirty) == 0 and dirty[0] == 0
    # the folio test is by folio: a subpage pfn of the PMD leaf matches
    assert lib.pg_pte_mkclean(m, 0, mm, PMD + 3 * P, head + 9, dirty) == 1 and dirty[0] == 0
    assert not lookup(m, mm, PMD)[1] & lib.PG_PTE_WRITE
    other = lib.pg_folio_alloc(m, 0, 0)
    lib.pg_pte_modify(m, mm, 0x10000, -1, 0, lib.PG_PTE_WRITE, ffi.NULL)
    assert lib.pg_pte_mkclean(m, 0, mm, 0x10000, other, dirty) == 0   # another folio
    assert lib.pg_pte_mkclean(m, 0, mm, 0x20000, p, dirty) == 0       # nothing mapped
    assert lib.pg_pte_mkclean(m, 0, mm, 0x10000, 4096, dirty) == -lib.PG_EINVAL
    assert lib.pg_pte_mkclean(m, 64, mm, 0x10000, p, dirty) == -lib.PG_EINVAL


def test_destroy_releases_everything(core_machine):
    m = core_machine
    free0 = core_stats(m)["nr_free"]
    mm = lib.pg_mm_new(m)
    for i in range(10):
        map_page(m, mm, 0x7f0000000000 + i * P)
    map_huge(m, mm, 0x200000)
    out = ffi.new("uint64_t *")
    assert lib.pg_user_access(m, 3, mm, 0x7f0000000000, 1, 1, out) == 0
    assert lib.pg_mm_destroy(m, 0, mm) == 0
    st = core_stats(m)
    assert st["nr_free"] == free0 and st["table_pages_live"] == 0
    assert lib.pg_tlb_probe(m, 3, mm, 0x7f0000000000) == 0


def test_freed_tables_are_unreachable_and_recycled(core_machine):
    """free_pgtables unlinks before it frees: later walks miss the tables,
    nothing is reported, and the pool reuses them without growing."""
    m = core_machine
    mm = lib.pg_mm_new(m)
    map_page(m, mm, 0x200000)
    nbytes = core_stats(m)["table_bytes"]
    for _ in range(50):
        lib.pg_zap_range(m, 0, mm, 0, VA_END)
        assert lib.pg_free_pgtables(m, 0, mm, 0, VA_END) == 3
        assert lookup(m, mm, 0x200000) == (0, 0)
        map_page(m, mm, 0x200000)
    assert core_stats(m)["table_bytes"] == nbytes
    assert lib.pg_violation_count(m) == 0
