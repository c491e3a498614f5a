"""Anonymous transparent huge pages (pygup/kernel/thp.py, csrc/mm/huge_memory.c):
one test per rule, each failing when its rule is removed."""
import errno

import pytest

from pygup import FOLL, MADV, MAP, PROT, VM, GupError, Machine
from pygup._native import C
from pygup.kernel.thp import collapse_pmd

RW = PROT.READ | PROT.WRITE
P = 4096
HPAGE = 2 << 20
A = 0x40000000
ANON = MAP.PRIVATE | MAP.ANONYMOUS


def _machine(thp="always", **kw):
    kw.setdefault("memory", "64MiB")
    kw.setdefault("movable", "16MiB")
    return Machine(thp=thp, **kw)


def _thp(m, p, addr=A, length=HPAGE):
    a = p.mmap(length, RW, ANON | MAP.FIXED_NOREPLACE, addr=addr)
    for i in (0, 5, 511):
        p.write(a + i * P, 0x1000 + i)
    return a, p.mm.pte(a).pfn


# -- the setting and eligibility -------------------------------------------------

def test_default_setting_is_madvise_and_bad_values_are_refused():
    assert Machine(memory="64MiB", movable="0MiB").thp == "madvise"
    with pytest.raises(ValueError, match="thp"):
        Machine(memory="64MiB", movable="0MiB", thp="sometimes")


@pytest.mark.parametrize("setting, vm_flag, huge", [
    ("always", 0, True), ("always", VM.NOHUGEPAGE, False),
    ("madvise", 0, False), ("madvise", VM.HUGEPAGE, True),
    ("never", VM.HUGEPAGE, False)])
def test_write_fault_maps_a_thp_per_the_setting(setting, vm_flag, huge):
    m = _machine(setting)
    p = m.spawn()
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    p.mm.find_vma(a).vm_flags |= vm_flag          # what MADV_(NO)HUGEPAGE sets
    p.write(a + 3 * P, 7)
    pte = p.mm.pte(a + 3 * P)
    assert pte.huge == huge and (pte.level == C.LEVEL_PMD) == huge
    if huge:
        f = m.folio(pte.pfn)
        assert f.order == 9 and f.head == pte.pfn - 0 and f.refcount == 1 and f.mapcount == 1
        assert not f.flags & C.F_HUGETLB and f.mapping == "anon"
        assert p.read(a + 3 * P) == 7 and m.folio(pte.pfn + 3).content == 7
    m.check()


def test_a_range_the_vma_does_not_cover_whole_gets_small_pages():
    """transhuge_vma_suitable(): the aligned 2 MiB must lie inside the VMA."""
    m = _machine()
    p = m.spawn()
    a = p.mmap(HPAGE - P, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    p.write(a, 1)
    assert p.mm.pte(a).level == C.LEVEL_PTE


def test_read_fault_maps_the_small_zero_page():
    m = _machine()
    p = m.spawn()
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    assert p.read(a) == 0
    pte = p.mm.pte(a)
    assert pte.level == C.LEVEL_PTE and pte.pfn == C.ZERO_PFN


def test_memory_figure_stays_within_64_bytes_per_page_with_thp():
    m = _machine(memory="256MiB", movable="64MiB")
    p = m.spawn()
    a = p.mmap(16 * HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    for i in range(16):
        p.write(a + i * HPAGE, i)
    assert p.mm.pte(a).huge
    assert m.stats()["bytes_per_page"] <= 64


# -- COW and fork ---------------------------------------------------------------

def test_cow_of_a_thp_splits_the_pmd_and_copies_one_page():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    c = p.fork()
    assert c.mm.pte(a).huge and c.mm.pte(a).pfn == H and not c.mm.pte(a).write
    c.write(a + 5 * P, 0xC0)
    cp = c.mm.pte(a + 5 * P)
    assert cp.level == C.LEVEL_PTE and cp.pfn != H + 5 and m.folio(cp.pfn).order == 0
    assert c.mm.pte(a + 6 * P).pfn == H + 6                     # the rest still shared
    assert p.mm.pte(a).huge and p.read(a + 5 * P) == 0x1005     # the parent unchanged
    assert c.read(a + 511 * P) == 0x1000 + 511
    c.exit()
    p.write(a + 5 * P, 0xAA)                                    # the only mapping left
    assert p.mm.pte(a).huge and p.mm.pte(a).pfn == H           # reused whole
    m.check()


def test_fork_copies_a_pinned_thp_for_the_child():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    pages = p.pin(a, P, FOLL.WRITE, fast=True)
    c = p.fork()
    assert p.mm.pte(a).pfn == H and p.mm.pte(a).write           # the pinner keeps its THP
    assert c.mm.pte(a).pfn != H and c.read(a + 5 * P) == 0x1005
    pages.write(0, 0xD)
    assert p.read(a) == 0xD and c.read(a) == 0x1000
    p.mm.unpin_user_pages(pages)
    m.check()


# -- split ------------------------------------------------------------------------

def test_partial_munmap_splits_the_folio_keeping_each_page():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    index = m.folio(H).index
    p.munmap(a + 511 * P, P)
    f = m.folio(H + 5)
    assert f.order == 0 and f.head == H + 5 and f.refcount == 1 and f.mapcount == 1
    assert f.content == 0x1005 and f.index == index + 5 and f.mapping == "anon"
    assert f.flags & C.F_ANON_EXCLUSIVE
    assert m.folio(H + 511).refcount == 0                       # the unmapped page freed
    assert p.mm.pte(a + 5 * P).level == C.LEVEL_PTE and p.read(a + 5 * P) == 0x1005
    p.exit()
    m.check()


def test_split_refuses_extra_references():
    """can_split_folio(): a FOLL_GET reference is not a mapping."""
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    ret, pages = p.mm.get_user_pages_fast(a, 1, 0)
    assert ret == 1
    p.munmap(a + 511 * P, P)
    assert m.folio(H + 5).head == H                             # still one folio
    p.mm.put_page(pages)
    m.check()


def test_partial_mprotect_splits_the_pmd_not_the_folio():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.mprotect(a + 2 * P, P, PROT.READ)
    assert p.mm.pte(a).level == C.LEVEL_PTE and not p.mm.pte(a + 2 * P).write
    assert p.mm.pte(a + 3 * P).write and m.folio(H + 3).head == H
    f = m.folio(H)
    assert f.refcount == 512 and all(m.folio(H + i).mapcount == 1 for i in (0, 1, 511))
    with pytest.raises(GupError):
        p.pin(a + 2 * P, P, FOLL.WRITE)                           # that VMA is read-only now
    m.check()


def test_whole_mprotect_keeps_the_pmd_leaf():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.mprotect(a, HPAGE, PROT.READ)
    assert p.mm.pte(a).huge and not p.mm.pte(a).write


# -- ranges that cut a THP: the PMD is split first ----------------------------------

@pytest.mark.parametrize("cut", ["mlock", "madvise-nohugepage", "split_vma"])
def test_a_vma_split_inside_a_thp_splits_its_pmd_first(cut):
    """__split_vma() -> vma_adjust_trans_huge(): no PMD leaf maps pages of
    two VMAs; the folio stays one, PTE-mapped."""
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    if cut == "mlock":
        p.mlock(a + 7 * P, P)
    elif cut == "madvise-nohugepage":
        p.madvise(a + 7 * P, P, MADV.NOHUGEPAGE)
    else:
        p.mm.find_vma(a).pgprot_customised = True                # keep it from merging back
        with m.kernel.op():
            p.mm.split_vma(p.mm.find_vma(a), a + 7 * P)
    assert [v.vm_start for v in p.mm.vmas_in(a, a + HPAGE)][:2] == [a, a + 7 * P]
    assert p.mm.pte(a).level == p.mm.pte(a + 7 * P).level == C.LEVEL_PTE
    assert m.folio(H).order == 9 and m.folio(H).refcount == 512
    assert all(m.folio(H + i).mapcount == 1 for i in (0, 7, 511))
    assert p.read(a + 5 * P) == 0x1005 and p.read(a + 511 * P) == 0x1000 + 511
    m.check()


def test_fork_after_mlock_cut_a_thp_next_to_a_pinned_thp():
    """The fuzzer's refcount-balance finding, as plain API code: mlock of
    one page left a PMD leaf across three VMAs; fork copied the pinned THP
    for the child, then failed (EINVAL) on the cut leaf and left the copy
    with a reference nobody held."""
    m = _machine(thp="madvise", movable="8MiB")
    p = m.spawn()
    b = p.mmap(HPAGE, PROT.READ, ANON | MAP.FIXED_NOREPLACE, addr=A + HPAGE)
    p.mm.find_vma(b).vm_flags |= VM.HUGEPAGE                      # MADV_HUGEPAGE
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A + 2 * HPAGE)
    p.mm.find_vma(a).vm_flags |= VM.HUGEPAGE
    held_a = p.pin(a + 11 * P, 2 * P, FOLL.WRITE | FOLL.LONGTERM)
    p.mprotect(b, HPAGE, RW)
    held_b = p.pin(b + 6 * P, P, FOLL.WRITE | FOLL.LONGTERM, fast=True)
    assert p.mm.pte(a).huge and p.mm.pte(b).huge
    p.mlock(a + 7 * P, P)
    c = p.fork()
    assert c.mm.pte(b).huge and c.mm.pte(b).pfn != p.mm.pte(b).pfn   # the pinned THP copied
    # the PTE-mapped pinned THP: every page is copied (page_needs_cow_for_dma()
    # asks folio_maybe_dma_pinned() of the whole folio), PTE by PTE
    assert c.mm.pte(a + 11 * P).pfn != held_a[0]
    assert c.mm.pte(a + 5 * P).level == C.LEVEL_PTE
    assert c.mm.pte(a + 5 * P).pfn != p.mm.pte(a + 5 * P).pfn
    m.check()
    c.exit()
    p.mm.unpin_user_pages(held_a)
    p.mm.unpin_user_pages(held_b)
    p.exit()
    m.check()
    st = m.stats()
    assert st["nr_free_normal"] + st["nr_free_movable"] == st["nr_frames"] - 1


def test_dontneed_of_part_of_a_thp_zaps_that_part_and_splits_the_folio():
    """zap_pmd_range(): the cut leaf is split, the pages inside zapped;
    the partly mapped THP is split into small folios (deferred_split_folio(),
    at once here)."""
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.madvise(a + 5 * P, 2 * P, MADV.DONTNEED)
    assert p.mm.pte(a + 5 * P).level == 0 and p.mm.pte(a + 7 * P).pfn == H + 7
    assert m.folio(H).order == 0 and m.folio(H + 5).refcount == 0       # split; page 5 freed
    assert p.read(a + 5 * P) == 0 and p.read(a) == 0x1000 and p.read(a + 511 * P) == 0x1000 + 511
    m.check()


def test_dontneed_of_part_of_a_pinned_thp_keeps_the_folio_whole():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    pages = p.pin(a + 5 * P, P, FOLL.WRITE | FOLL.LONGTERM)
    H = p.mm.pte(a).pfn                                          # migrated out of ZONE_MOVABLE
    p.madvise(a + 5 * P, P, MADV.DONTNEED)
    assert p.mm.pte(a + 5 * P).level == 0 and p.mm.pte(a).level == C.LEVEL_PTE
    f = m.folio(H)
    assert f.order == 9 and f.pincount == 1 and f.refcount == 511 + 1   # 511 PTEs + the pin
    pages.write(0, 0xEE)                                         # detached: the pin lives on
    assert p.read(a + 5 * P) == 0
    p.mm.unpin_user_pages(pages)
    m.check()


# -- GUP on PMD leaves --------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
def test_pin_of_a_pmd_leaf_counts_on_the_large_folio(fast):
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    pages = p.pin(a + 4 * P, 8 * P, FOLL.WRITE, fast=fast)
    assert list(pages) == list(range(H + 4, H + 12))
    f = m.folio(H)
    assert f.pincount == 8 and f.refcount == 1 + 8 and f.maybe_dma_pinned
    p.mm.unpin_user_pages(pages)
    assert m.folio(H).pincount == 0 and m.folio(H).refcount == 1
    assert not m.folio(H).maybe_dma_pinned
    m.check()


def test_foll_split_pmd_splits_before_pinning():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    pages = p.pin(a + 5 * P, P, FOLL.WRITE | FOLL.SPLIT_PMD)
    assert pages[0] == H + 5 and p.mm.pte(a).level == C.LEVEL_PTE
    assert m.folio(H).order == 9                                 # the folio stays one
    p.mm.unpin_user_pages(pages)
    m.check()


def test_longterm_pin_migrates_a_movable_thp_whole():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    assert m.folio(H).zone == "movable"
    pages = p.pin(a, 2 * P, FOLL.WRITE | FOLL.LONGTERM, fast=True)
    N = p.mm.pte(a).pfn
    assert N != H and p.mm.pte(a).huge and list(pages) == [N, N + 1]
    f = m.folio(N)
    assert f.zone == "normal" and f.order == 9 and f.pincount == 2
    assert m.folio(N + 511).content == 0x1000 + 511 and m.folio(H).refcount == 0
    p.mm.unpin_user_pages(pages)
    m.check()


# -- collapse ---------------------------------------------------------------------

def _base_pages(m, p):
    m.thp = "never"
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    for i in (0, 5, 300):
        p.write(a + i * P, 0x2000 + i)
    m.thp = "always"
    return a


def test_collapse_replaces_the_table_by_a_thp_with_the_same_data():
    m = _machine()
    p = m.spawn()
    a = _base_pages(m, p)
    old = p.mm.pte(a + 5 * P).pfn
    tables = m.stats()["table_pages_live"]
    assert m.collapse(p, a + 7 * P) == 0
    pte = p.mm.pte(a)
    assert pte.huge and pte.write and m.folio(pte.pfn).order == 9
    assert [p.read(a + i * P) for i in (0, 5, 300, 6)] == [0x2000, 0x2005, 0x2000 + 300, 0]
    assert m.folio(old).refcount == 0                            # the old page freed
    m.kernel.core.rcu_barrier(0)
    assert m.stats()["table_pages_live"] == tables - 1           # the old PTE table too
    assert m.collapse(p, a) == 0                                 # already a THP
    m.check()


def test_collapse_refuses_a_pinned_page_and_extra_references():
    m = _machine()
    p = m.spawn()
    a = _base_pages(m, p)
    pages = p.pin(a + 5 * P, P, FOLL.WRITE)
    assert m.collapse(p, a) == -errno.EAGAIN
    assert p.mm.pte(a).level == C.LEVEL_PTE and p.read(a + 5 * P) == 0x2005   # put back
    p.mm.unpin_user_pages(pages)
    ret, got = p.mm.get_user_pages(a + 300 * P, 1, 0)
    assert m.collapse(p, a) == -errno.EAGAIN
    p.mm.put_page(got)
    assert m.collapse(p, a) == 0
    m.check()


def test_khugepaged_follows_the_setting_madv_collapse_does_not():
    m = _machine("never")
    p = m.spawn()
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    p.write(a, 1)
    assert m.collapse(p, a) == -errno.EINVAL
    with m.kernel.op() as cpu:
        assert collapse_pmd(p.mm, a, cpu) == 0                   # MADV_COLLAPSE
    assert p.mm.pte(a).huge
    p.mm.find_vma(a).vm_flags |= VM.NOHUGEPAGE
    p.munmap(a + P, P)
    with m.kernel.op() as cpu:
        assert collapse_pmd(p.mm, a, cpu) == -errno.EINVAL


def test_collapse_needs_a_writable_anonymous_range():
    m = _machine()
    p = m.spawn()
    a = _base_pages(m, p)
    p.mprotect(a, HPAGE, PROT.READ)
    assert m.collapse(p, a) == -errno.EINVAL                     # SCAN_PAGE_RO
    q = m.spawn()
    b = q.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    assert m.collapse(q, b) == -errno.EINVAL                     # nothing mapped
    s = q.mmap(HPAGE, RW, MAP.SHARED | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=A + HPAGE)
    q.write(s, 1)                                                # shmem: not modelled as THP
    assert q.mm.pte(s).level == C.LEVEL_PTE and m.collapse(q, s) == -errno.EINVAL


def test_collapse_arguments_are_checked():
    m = _machine()
    p = m.spawn()
    with pytest.raises(TypeError):
        m.collapse("p", A)
    with pytest.raises(TypeError):
        m.collapse(p, "a")
    assert m.collapse(p, -1) == -errno.EINVAL
    assert m.collapse(p, A) == -errno.EINVAL                     # no VMA
    other = _machine().spawn()
    with pytest.raises(ValueError):
        m.collapse(other, A)


# -- the "can fail" paths (lib/fault_inject) --------------------------------------

def test_split_table_allocation_failure_changes_nothing():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    m._core.fail_nth("table", 1)
    with pytest.raises(GupError) as e:
        p.pin(a, P, FOLL.WRITE | FOLL.SPLIT_PMD)
    assert e.value.errno == errno.ENOMEM
    assert p.mm.pte(a).huge and m.folio(H).refcount == 1 and m.folio(H).pincount == 0
    assert p.read(a + 5 * P) == 0x1005
    m.check()


def test_thp_allocation_failure_falls_back_to_a_small_page():
    # one zone: an empty ZONE_MOVABLE is not in the zonelist, so the THP's
    # allocation is the 1st (injected) and the small page's the 2nd
    m = _machine(movable="0MiB")
    p = m.spawn()
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=A)
    m._core.fail_nth("folio", 1)
    p.write(a, 3)
    assert p.mm.pte(a).level == C.LEVEL_PTE and p.read(a) == 3
    with m.kernel.op() as cpu:
        m._core.fail_nth("folio", 1)
        assert collapse_pmd(p.mm, a, cpu) == -errno.ENOMEM        # SCAN_ALLOC_HUGE_PAGE_FAIL
        assert collapse_pmd(p.mm, a, cpu) == 0
    m.check()


# -- MADV_COLLAPSE (madvise_collapse(); each case checked on a live 6.18 kernel) --

def _faulted(m, p, extents, addr=A, faulted=None):
    """``extents`` x 2 MiB of base pages at addr (the setting "never" while
    faulting), extents listed in ``faulted`` (default all) written."""
    setting, m.thp = m.thp, "never"
    a = p.mmap(extents * HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=addr)
    for e in (range(extents) if faulted is None else faulted):
        for i in (0, 5, 300):
            p.write(a + e * HPAGE + i * P, (e << 12) + i)
    m.thp = setting
    return a


def test_madv_collapse_makes_every_aligned_extent_a_thp_whatever_the_setting():
    m = _machine("never")
    p = m.spawn()
    a = _faulted(m, p, 3)
    p.madvise(a + P, 3 * HPAGE - 2 * P, MADV.COLLAPSE)   # only the middle extent is whole
    assert [p.mm.pte(a + e * HPAGE).huge for e in range(3)] == [False, True, False]
    p.madvise(a, 3 * HPAGE, MADV.COLLAPSE)
    assert all(p.mm.pte(a + e * HPAGE).huge for e in range(3))
    assert [p.read(a + HPAGE + i * P) for i in (0, 5, 300, 7)] == [1 << 12, (1 << 12) + 5,
                                                                   (1 << 12) + 300, 0]
    p.madvise(a, 3 * HPAGE, MADV.COLLAPSE)                   # SCAN_PMD_MAPPED: done already
    m.check()


def test_madv_collapse_refuses_a_vma_that_cannot_hold_a_thp():
    m = _machine()
    p = m.spawn()
    a = _faulted(m, p, 1)
    p.madvise(a, HPAGE, MADV.NOHUGEPAGE)
    with pytest.raises(GupError) as e:
        p.madvise(a, HPAGE, MADV.COLLAPSE)
    assert e.value.errno == errno.EINVAL and not p.mm.pte(a).huge
    small = p.mmap(64 * P, RW, ANON)                         # no aligned 2 MiB inside
    p.write(small, 1)
    with pytest.raises(GupError) as e:
        p.madvise(small, 64 * P, MADV.COLLAPSE)
    assert e.value.errno == errno.EINVAL


def test_madv_collapse_goes_on_past_a_pinned_extent_and_says_eagain():
    m = _machine()
    p = m.spawn()
    a = _faulted(m, p, 2)
    pages = p.pin(a + 5 * P, P, FOLL.WRITE)
    with pytest.raises(GupError) as e:
        p.madvise(a, 2 * HPAGE, MADV.COLLAPSE)
    assert e.value.errno == errno.EAGAIN                     # SCAN_PAGE_COUNT: go on
    assert not p.mm.pte(a).huge and p.mm.pte(a + HPAGE).huge
    p.mm.unpin_user_pages(pages)
    p.madvise(a, 2 * HPAGE, MADV.COLLAPSE)
    assert p.mm.pte(a).huge and p.read(a + 5 * P) == 5
    m.check()


def test_madv_collapse_stops_at_an_empty_pmd():
    """SCAN_PMD_NONE is not on madvise_collapse()'s continue list: the
    faulted extent after an untouched one (same PMD table) stays small."""
    m = _machine()
    p = m.spawn()
    a = _faulted(m, p, 2, faulted=[1])
    with pytest.raises(GupError) as e:
        p.madvise(a, 2 * HPAGE, MADV.COLLAPSE)
    assert e.value.errno == errno.EINVAL and not p.mm.pte(a + HPAGE).huge
    p.write(a, 9)                                            # one page is enough
    p.madvise(a, 2 * HPAGE, MADV.COLLAPSE)
    assert p.mm.pte(a).huge and p.mm.pte(a + HPAGE).huge and p.read(a) == 9


def test_madv_collapse_of_a_range_with_a_hole_is_enomem_after_the_rest():
    m = _machine()
    p = m.spawn()
    a = _faulted(m, p, 3)
    p.munmap(a + HPAGE, HPAGE)
    with pytest.raises(GupError) as e:
        p.madvise(a, 3 * HPAGE, MADV.COLLAPSE)
    assert e.value.errno == errno.ENOMEM
    assert p.mm.pte(a).huge and p.mm.pte(a + 2 * HPAGE).huge


def test_madv_collapse_stops_when_no_huge_page_can_be_had():
    m = _machine(movable="0MiB")
    p = m.spawn()
    a = _faulted(m, p, 2)
    m._core.fail_nth("folio", 1)                             # the first extent's THP
    with pytest.raises(GupError) as e:
        p.madvise(a, 2 * HPAGE, MADV.COLLAPSE)
    assert e.value.errno == errno.ENOMEM                     # SCAN_ALLOC_HUGE_PAGE_FAIL: stop
    assert not p.mm.pte(a).huge and not p.mm.pte(a + HPAGE).huge
    m.check()


# -- MADV_FREE / COLD / PAGEOUT on a THP (madvise_free_huge_pmd(), the split
#    in madvise_*_pte_range()) ------------------------------------------------

def _lazyfree(m, pfn):
    return bool(m._core.frame_info(pfn).flags & C.F_LAZYFREE)


def test_free_then_pageout_of_a_whole_thp_discards_it_whole():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.madvise(a, HPAGE, MADV.FREE)
    assert p.mm.pte(a).huge and _lazyfree(m, H) and not m.folio(H).dirty
    p.madvise(a, HPAGE, MADV.PAGEOUT)
    assert p.read(a + 5 * P) == 0 and m.folio(H).refcount == 0
    m.check()


def test_free_written_again_keeps_the_thp():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.madvise(a, HPAGE, MADV.FREE)
    p.write(a + 7 * P, 0x77)                     # the PMD dirty again
    p.madvise(a, HPAGE, MADV.PAGEOUT)
    assert p.mm.pte(a).pfn == H and p.read(a + 5 * P) == 0x1005 and not _lazyfree(m, H)


def test_free_of_part_of_a_thp_splits_it_and_frees_only_that_part():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.madvise(a + 4 * P, 4 * P, MADV.FREE)
    assert m.folio(H).order == 0 and p.mm.pte(a).level == C.LEVEL_PTE
    assert _lazyfree(m, H + 5) and not _lazyfree(m, H)
    p.madvise(a, HPAGE, MADV.PAGEOUT)
    assert p.read(a + 5 * P) == 0 and p.read(a) == 0x1000 and p.read(a + 511 * P) == 0x1000 + 511
    m.check()


def test_cold_of_part_of_a_thp_splits_it_too():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    p.madvise(a + 4 * P, 4 * P, MADV.COLD)
    assert m.folio(H).order == 0 and p.read(a + 5 * P) == 0x1005


def test_a_pinned_or_shared_thp_is_left_whole():
    m = _machine()
    p = m.spawn()
    a, H = _thp(m, p)
    pages = p.pin(a + 5 * P, P, FOLL.WRITE)
    p.madvise(a, 8 * P, MADV.FREE)               # the split fails: skipped
    p.madvise(a, 8 * P, MADV.PAGEOUT)
    assert p.mm.pte(a).huge and m.folio(H).order == 9 and not _lazyfree(m, H)
    p.mm.unpin_user_pages(pages)
    c = p.fork()                                 # now mapped by two
    p.madvise(a, HPAGE, MADV.FREE)
    p.madvise(a, 8 * P, MADV.COLD)
    assert m.folio(H).order == 9 and not _lazyfree(m, H) and c.read(a + 5 * P) == 0x1005
    m.check()


def test_frames_mapcount_of_a_thp_and_its_argument_checks():
    """Core.frames_mapcount (the split rules' one call for a THP's 512
    pages): a PMD-mapped THP counts on its head, its other pages 0; bad
    ranges are ValueError before the C call."""
    m = Machine(memory="16MiB", thp="always")
    p = m.spawn()
    addr = p.mmap(4 << 20, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    huge = (addr + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.write(huge, 1)
    pte = p.mm.pte(huge)
    assert pte.huge
    counts = m._core.frames_mapcount(pte.pfn, 512)
    assert counts[0] == 1 and not counts[1:].any()
    core = m._core
    for bad in ((core.nr_frames - 1, 2), (core.nr_frames + 1, 0), (0, -1), (0, True),
                (0, 1.0), (-1, 1)):
        with pytest.raises(ValueError):
            core.frames_mapcount(*bad)
    with pytest.raises(TypeError):
        core.frames_mapcount("0", 1)
