"""BUGS #7 — GUP-fast vs a changed PMD (70cbc3cc78a9 "mm: gup: fix the fast
GUP race against THP collapse", Yang Shi, 2022), and the PTE re-check it
extended.

GUP-fast reads an entry, then takes a reference on the page it names; the
page may have been unmapped (and freed, and reused) in between.  The
protocol with the unmapping side: GUP-fast (1) takes its reference, then
(2) re-reads the entry and drops the reference if it changed; the zap
(1) clears the entry, then (2) looks at the page's count.  One always sees
the other.  The original bug: only the PTE was re-read, not the PMD above
it.  khugepaged collapses a PTE table into a huge PMD by clearing the PMD,
copying the data and installing the new leaf; the old PTE table is left
untouched, so the PTE re-check passed and a stale base page was pinned
after its data had moved.

The collapse itself (test_no_pmd_recheck_gup_fast_vs_collapse below), as
a deterministic scheduled race.  The collapse of 6.5 also sends an empty
IPI after clearing the PMD (tlb_remove_table_sync_one, 2ba99c5e0881, Jann
Horn, Dec 2022), which waits for every IRQs-off walker and so closes the
window on its own; the race of 2022 needs it gone (switch
collapse_no_sync) and a TLB flush that does not wait for IRQs-off CPUs
(arm64's broadcast TLBI: tlb_flush="broadcast"):

    process P (thp off while it faults: base pages)
    a +-------------------------+   PMD[a] -> PTE table T: PTE[a] -> F (data 0x7777)
      | anon, 2 MiB, RW         |
    a+2M -----------------------+

    CPU 0: pin_user_pages_fast(a)        CPU 1: m.collapse(P, a)  (thp now "always")
    IRQs off; read PMD[a] -> T,
    PTE[a] -> F
    -- parks at fast_pte_read --
                                         pmdp_collapse_flush: PMD[a] = none;
                                         broadcast flush (no wait); no IPI sync
                                         isolate: F holds 1 ref for 1 mapping: ok
                                         -- parks at collapse_isolated --
    grab F (still mapped: succeeds)
    re-read PMD[a]: none -> drop F (the fix)
      / switch no_pmd_recheck: only PTE[a] re-read; T is unlinked but not yet
        freed (RCU), PTE[a] -> F unchanged: F kept
    IRQs on
                                         copy F -> new THP N, PMD[a] = leaf -> N,
                                         T freed after a grace period, F loses its
                                         mapping and reference

With the fix GUP-fast falls back to the slow path, which waits for the
collapse and pins N.  With the switch the caller holds F: nobody maps it,
its data moved to N, and what the device writes through the pin is never
seen at a.  With the IPI sync in place (the default), the same switch is
harmless: the sync waits for CPU 0, whose pin then makes the collapse's
reference check fail (-EAGAIN) and the PMD goes back.

The same re-read protects a hugetlb PMD *leaf*, where the PMD is the entry
GUP-fast took its reference from, and an munmap of the 2 MiB page clears it:

    process P                       P's page tables
    a +-------------------------+   PGD[a] -> PUD[a] -> PMD[a] = leaf -> H
      | MAP_HUGETLB, 2 MiB, RW  |                       (2 MiB hugetlb folio)
    a+2M -----------------------+

    CPU 0: pin_user_pages_fast(a)        CPU 1: munmap(a, 2 MiB)
    IRQs off; read PMD[a]: leaf -> H
    -- parks at fast_pte_read --
                                         zap: PMD[a] cleared; flush: IPI
                                         to CPU 0, wait (CPU 0 has IRQs off)
    grab H (refcount > 0: succeeds)
    re-read PMD[a]: none -> drop H (the fix)
      / switch no_pmd_recheck: H kept
    IRQs on: acknowledge the IPI
                                         drop H's mapping and reference

Switch no_pmd_recheck skips the PMD re-read (for a leaf, and above a PTE
table); switch no_pte_recheck skips the PTE re-read, written out below on
a base page the same way (the PTE-level form of the race).

How the tests detect it: the pin holds a page that is no longer mapped at
the address it was pinned for (DESIGN conformance: "the page a pin holds is
the one mapped at that address"), and the device's writes through it reach
no one.  With the fix the fast path backs off and the slow path finds no
VMA: -EFAULT.  No JSON reproducer is stored for these two switches.
Schedule: [0, 1] with the point fast_pte_read ([0, 1, 0] with
collapse_isolated too for the collapse).
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup._native import C

RW = PROT.READ | PROT.WRITE
P = 4096
HPAGE = 2 << 20
A = 0x40000000          # a 2 MiB-aligned address for the THP range


def _base_pages_then_thp_on(**kw):
    """P with base pages in a 2 MiB-aligned anon range, F at its start;
    then the machine's THP setting becomes "always" (khugepaged may act)."""
    m = Machine(memory="64MiB", movable="0MiB", cpus=2, thp="never", **kw)
    p = m.spawn()
    a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=A)
    p.write(a, 0x7777)
    p.write(a + 7 * P, 0x8888)
    assert p.mm.pte(a).level == C.LEVEL_PTE
    m.thp = "always"
    return m, p, a, p.mm.pte(a).pfn


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_no_pmd_recheck_gup_fast_vs_collapse(buggy):
    m, p, a, F = _base_pages_then_thp_on(
        tlb_flush="broadcast",
        mutants={"collapse_no_sync"} | ({"no_pmd_recheck"} if buggy else set()))
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                              lambda m: m.collapse(p, a)],
                             schedule=[0, 1, 0], points={"fast_pte_read", "collapse_isolated"})
    (ret, pages), collapsed = run.results
    assert collapsed == 0
    now = p.mm.pte(a)
    assert now.level == C.LEVEL_PMD and now.huge and now.pfn != F      # collapsed into N
    assert p.read(a) == 0x7777 and p.read(a + 7 * P) == 0x8888          # the data moved
    assert ret == 1
    pages.write(0, 0xD11A)                                              # the device writes
    if buggy:
        assert pages[0] == F                                            # a stale base page
        assert m.folio(F).mapcount == 0 and m.folio(F).maybe_dma_pinned
        assert p.read(a) == 0x7777                                      # the write is lost
    else:
        assert pages[0] == now.pfn                                      # N's first page
        assert p.read(a) == 0xD11A
    p.mm.unpin_user_pages(pages)
    m.check()


def test_collapse_ipi_sync_alone_holds_off_the_stale_pin():
    """2ba99c5e0881 without 70cbc3cc78a9: the collapse's IPI sync waits for
    CPU 0's IRQs-off walk, so the pin lands before the reference check,
    which sees it: the collapse gives up and F stays mapped and pinned."""
    m, p, a, F = _base_pages_then_thp_on(tlb_flush="broadcast", mutants={"no_pmd_recheck"})
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                              lambda m: m.collapse(p, a)],
                             schedule=[0, 1, 0], points={"fast_pte_read", "collapse_isolated"})
    (ret, pages), collapsed = run.results
    assert collapsed == -errno.EAGAIN
    assert ret == 1 and pages[0] == F and p.mm.pte(a).pfn == F
    pages.write(0, 0xD11A)
    assert p.read(a) == 0xD11A
    p.mm.unpin_user_pages(pages)
    assert m.collapse(p, a) == 0                                        # no pin: it collapses
    m.check()


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_no_pmd_recheck_gup_fast_vs_munmap_of_hugetlb_leaf(buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"no_pmd_recheck"} if buggy else ())
    p = m.spawn()
    a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
    p.write(a, 0x2222)
    assert p.mm.pte(a).level == C.LEVEL_PMD                 # a PMD leaf
    H = p.mm.pte(a).pfn
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                              lambda m: p.munmap(a, HPAGE)],
                             schedule=[0, 1], points={"fast_pte_read"})
    ret, pages = run.results[0]
    assert p.mm.pte(a).level == 0                           # a is unmapped
    if buggy:
        assert ret == 1 and pages[0] == H
        assert m.folio(H).maybe_dma_pinned and m.folio(H).mapcount == 0
        pages.write(0, 0xD11A)                              # DMA into nobody's page
        p.mm.unpin_user_pages(pages)
    else:
        assert ret == -errno.EFAULT
    m.check()


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_no_pte_recheck_gup_fast_vs_munmap(buggy):
    """The PTE-level form: PTE[a] -> F read, munmap clears it and waits for
    CPU 0's IPI acknowledgement, CPU 0 grabs F and re-reads PTE[a]."""
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"no_pte_recheck"} if buggy else ())
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    F = p.mm.pte(a).pfn
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                              lambda m: p.munmap(a, P)],
                             schedule=[0, 1], points={"fast_pte_read"})
    ret, pages = run.results[0]
    assert p.mm.pte(a).level == 0
    if buggy:
        assert ret == 1 and pages[0] == F
        assert m.folio(F).maybe_dma_pinned and m.folio(F).mapcount == 0
        p.mm.unpin_user_pages(pages)
    else:
        assert ret == -errno.EFAULT and m.folio(F).refcount == 0   # freed by munmap
    m.check()
