"""BUGS #3 — GUP-fast vs fork (57efa1fe5957, "mm/gup: prevent gup_fast from
racing with COW during fork", 2020).

Found by: Jason Gunthorpe and Peter Xu while making fork copy pinned pages
(page_needs_cow_for_dma, "mm: do early cow for pinned pages during fork"):
the copy decision is only as good as the "pinned?" answer, and GUP-fast
can pin between the answer and the write-protect.

The mechanism.  fork() shares each anon page with the child, write-protected
on both sides, unless the page may be DMA-pinned: then the child gets a
copy at once and the parent keeps its page writable.  copy_present_pte()
asks folio_maybe_dma_pinned() first and write-protects second; GUP-fast
takes no lock, so a fast pin can land in between:

    parent P                        child C (being built by fork)
    a +--------------+              a +--------------+
      | anon, RW     | PTE -> F       | (copy)       | PTE -> F  (shared,
    a+4K ------------+              a+4K ------------+            read-only)

    CPU 0: pin_user_pages_fast(a, WRITE)   CPU 1: fork()
    seq = mm->write_protect_seq (even)
    -- parks at fast_wp_seq_read --
                                           write_protect_seq odd
                                           copy_present_pte: F pinned? no
                                           -> share it: child PTE -> F
                                           -- parks at copy_before_wrprotect
    walk: PTE[a] still writable; grab F
    (FOLL_PIN), re-check the PTE: ok;
    seq changed -> unpin, fall back to the
    slow path (the fix) / switch on: keep F
                                           write-protect F in P, clear
                                           PageAnonExclusive; seq even

    After: P writes a -> F is shared, not exclusive: COW, P gets a new page
    F'; the device still writes into F, which now belongs to C.

The fix: fork makes mm->write_protect_seq odd around the copy
(raw_write_seqcount_begin in copy_page_range); a FOLL_PIN fast walk that
saw it odd, or sees it changed at the end, drops its pins and falls back
to the slow path, which takes mmap_lock and so waits for fork.  Switch
no_wp_seq ignores the sequence.

How the test detects it: after fork the parent writes a, then the device
writes through the pin.  With the fix the pin holds the parent's exclusive
page: the parent's write is visible through the pin and the device's write
is visible to the parent, the child keeps its copy.  With the switch the
pinned page is mapped in the child, the parent's write went elsewhere, and
the device's write lands in the child's memory (invariant 6).
Schedule: [0, 1, 0] with the points fast_wp_seq_read, copy_before_wrprotect.
"""
import pytest

from pygup import FOLL, MAP, PROT, Machine

RW = PROT.READ | PROT.WRITE
P = 4096


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_no_wp_seq_gup_fast_pin_during_fork(buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"no_wp_seq"} if buggy else ())
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE),
                              lambda m: p.fork()],
                             schedule=[0, 1, 0],
                             points={"fast_wp_seq_read", "copy_before_wrprotect"})
    (ret, pages), child = run.results
    assert ret == 1
    F = pages[0]
    assert (child.mm.pte(a).pfn == F) is buggy          # the child maps the pinned page

    p.write(a, 0x2222)                                  # the parent's next write
    pages.write(0, 0xD11A)                              # the device's DMA
    if buggy:
        assert p.mm.pte(a).pfn != F                     # COW took the parent away
        assert pages.read(0) == 0xD11A and p.read(a) == 0x2222
        assert child.read(a) == 0xD11A                  # DMA into the child
    else:
        assert p.mm.pte(a).pfn == F and m.folio(F).mapcount == 1
        assert m.folio(F).flags & m.folio(F).flags.ANON_EXCLUSIVE
        assert p.read(a) == 0xD11A and child.read(a) == 0x1111
    p.mm.unpin_user_pages(pages)
    m.check()
