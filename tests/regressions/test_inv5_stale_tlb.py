"""Invariant 5 — no stale TLB: after a shootdown returns, no CPU can write
through an old entry.

Re-planted as mkclean_no_flush: folio_mkclean() write-protects and cleans
the PTE but sends no shootdown.  Reproducer (shrunk by the harness): map an
ext4 file shared, write (the CPU caches a writable, dirty entry), writeback,
write again — the second write goes through the cached entry to a clean
folio with no page_mkwrite.  Fix: ptep_clear_flush() in page_vma_mkclean_one.
Detected: the emulated MMU's write-notify-bypass check.
"""


def test_mkclean_without_flush(reproducer):
    data, planted, fixed = reproducer("inv5_mkclean_no_flush")
    assert planted is not None and planted.invariant == "write-notify-bypass"
    assert fixed is None
