"""BUGS #8 — GUP-fast vs THP split (c24d37322548 "mm/gup: fix
try_grab_compound_head() race with split_huge_page()", Jann Horn, 2021).

GUP-fast holds no lock: it reads a PTE, finds the page's folio (the
compound head), and only then takes a reference on that head.  In
between, split_huge_page() can turn the THP into 512 small folios: the page
is now its own folio, and the old head an unrelated page.  The reference
then lands on the old head; the PTE re-check still passes (the split left
the PTE as it was), so GUP-fast returns the right page with the reference
on the wrong one.  The pinned page is not pinned at all: the mapping can
go and free it while the device still writes to it, and the old head
carries a reference nobody will drop.  Jann Horn found it by reading the
code; the fix takes the reference, then looks up the page's folio again
and retries when it changed (try_get_folio()'s `goto retry`).

pygup's split freezes the refcount while it rebuilds the frames (the
kernel's folio_ref_freeze), so a grab *during* the split fails; the race is
a grab *after* it, from a folio found before it:

    process P                           P's page tables (THP already PTE-mapped
    a +-------------------------+       by an mprotect round trip):
      | anon THP, 2 MiB, RW     |       PTE[a + i] -> H + i   (folio H, order 9)
    a+2M -----------------------+

    CPU 0: pin_user_pages_fast(a + 5 pages)    CPU 1: munmap(a + 511 pages, 1 page)
    IRQs off; read PTE[a+5] -> H+5;
    its folio: H
    -- parks at fast_pte_read --
                                               zap PTE[a+511]; the folio is partly
                                               mapped: split_folio(H) (refcount 511
                                               = mapcount 511: no extra refs):
                                               H, H+1, ... H+510 order-0 folios,
                                               H+511 freed
    add a reference to H: it is a live
    order-0 folio now, so that succeeds
    look up H+5's folio again: H+5 != H ->
    drop H, retry on H+5 (the fix)
      / switch no_folio_recheck: keep it
    re-read PTE[a+5]: unchanged -> keep

How the test detects it (BUGS.md: "the reference is on the folio that
contains the page"): with the switch, the page returned (H+5) holds no pin
while H does; unpin_user_pages() refuses the array (it holds no pin), and
an munmap frees the "pinned" page.  With the fix the pin is on H+5.
Schedule [0, 1, 0] with the point fast_pte_read; tlb_flush="broadcast" so
that the munmap's flush does not wait for CPU 0 (with the IPI flush it
would, and CPU 0 would grab before the split, which then refuses).
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, GupError, Machine
from pygup._native import C

RW = PROT.READ | PROT.WRITE
P = 4096
HPAGE = 2 << 20
A = 0x40000000


def _pte_mapped_thp(**kw):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2, thp="always", **kw)
    p = m.spawn()
    a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=A)
    p.write(a + 5 * P, 0x5555)
    H = p.mm.pte(a).pfn
    assert p.mm.pte(a).huge and m.folio(H).order == 9
    p.mprotect(a, P, PROT.READ)          # splits the PMD; the folio stays one
    p.mprotect(a, P, RW)
    assert p.mm.pte(a + 5 * P).level == C.LEVEL_PTE and m.folio(H + 5).head == H
    return m, p, a, H


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_no_folio_recheck_gup_fast_vs_split(buggy):
    m, p, a, H = _pte_mapped_thp(tlb_flush="broadcast",
                                 mutants={"no_folio_recheck"} if buggy else ())
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a + 5 * P, 1, FOLL.WRITE),
                              lambda m: p.munmap(a + 511 * P, P)],
                             schedule=[0, 1, 0], points={"fast_pte_read"})
    ret, pages = run.results[0]
    assert m.folio(H + 5).head == H + 5 and m.folio(H + 5).order == 0      # it split
    assert ret == 1 and pages[0] == H + 5                                    # the right page
    if buggy:
        assert not m.folio(H + 5).maybe_dma_pinned                           # ... not pinned
        assert m.folio(H).maybe_dma_pinned and m.folio(H).refcount > 1       # H is
        with pytest.raises(GupError) as e:
            p.mm.unpin_user_pages(pages)
        assert e.value.errno == errno.EINVAL
        p.munmap(a + 5 * P, P)
        assert m.folio(H + 5).refcount == 0                                  # freed while "pinned"
    else:
        assert m.folio(H + 5).maybe_dma_pinned and not m.folio(H).maybe_dma_pinned
        p.mm.unpin_user_pages(pages)
        m.check()


def test_split_refuses_a_pinned_thp_and_keeps_it_pte_mapped():
    """The split's own rule on the other order: the pin comes first, so the
    split sees it (folio_maybe_dma_pinned) and leaves the folio whole."""
    m, p, a, H = _pte_mapped_thp()
    pages = p.pin(a + 5 * P, P, FOLL.WRITE, fast=True)
    assert m.folio(H).pincount == 1
    p.munmap(a + 511 * P, P)
    assert m.folio(H + 5).head == H and m.folio(H).order == 9
    p.mm.unpin_user_pages(pages)
    m.check()
