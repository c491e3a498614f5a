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

What pygup can reach today.  pygup has no THP collapse (nor mremap's PMD
move), the only ways to change a PMD while the PTEs under it stay as they
were; so the collapse itself is not written here.  The same re-read is
what protects a hugetlb PMD *leaf*, where the PMD is the entry GUP-fast
took its reference from, and an munmap of the 2 MiB page clears it:

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
Schedule: [0, 1] with the point fast_pte_read.
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup._native import C

RW = PROT.READ | PROT.WRITE
P = 4096
HPAGE = 2 << 20


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
