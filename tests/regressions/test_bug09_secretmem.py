"""BUGS #9 — secretmem through GUP-fast (65291dcfcf89 "mm/secretmem: fix GUP-
fast succeeding on secretmem folios", David Hildenbrand, 2024).

Found by: David Hildenbrand, reviewing folio_fast_pin_allowed()'s
successor: 6.5's page_is_secretmem() took a shortcut — a folio not on the
LRU could not be secretmem, it assumed — but a freshly faulted secretmem
folio sitting in a per-CPU LRU batch is not on the LRU either, so it
passed GUP-fast.

The mechanism.  memfd_secret() memory is removed from the kernel's direct
map; no GUP may return it (the slow path refuses the VMA; GUP-fast sees
only the folio, and must ask its mapping).  A pin holder that gets
one reads or writes it through the direct map: the secret leaks to the
kernel, or the kernel crashes touching an unmapped page.

    process P
    a +--------------------------+
      | memfd_secret, MAP_SHARED |  PTE -> S (secretmem folio, not in the
    a+4K ------------------------+          direct map)

    1. P writes its secret 0x5EC at a (faults S in)
    2. pin_user_pages_fast(a, 1, 0) / get_user_pages_fast(a, 1, 0):
       GUP-fast walks PTE[a] -> S, grabs it; the fix: the folio's mapping
       is secretmem -> drop, fall back; the slow path refuses the VMA
       (-EFAULT) / switch fast_secretmem: S returned
    3. the caller reads through the pages array: the secret

The fix: look at the mapping's a_ops regardless of the LRU bit (the check
now lives in gup_fast_folio_allowed()).  Switch fast_secretmem skips the
fast path's check.

How the test detects it: a GUP call returns the secretmem folio and the
secret is readable through it (BUGS #9: no GUP ever returns a secretmem
folio); with the fix both fast entry points fail with -EFAULT.
"""
import errno

import pytest

from pygup import MAP, PROT, Machine

P = 4096


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
@pytest.mark.parametrize("entry", ["pin_user_pages_fast", "get_user_pages_fast"])
def test_gup_fast_returns_secretmem_folio(entry, buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"fast_secretmem"} if buggy else ())
    p = m.spawn()
    a = p.mmap(P, PROT.READ | PROT.WRITE, MAP.SHARED, file=m.memfd_secret(P))
    p.write(a, 0x5EC)                                            # 1
    S = p.mm.pte(a).pfn
    ret, pages = getattr(p.mm, entry)(a, 1, 0)                   # 2
    if buggy:
        assert ret == 1 and pages[0] == S
        assert pages.read(0) == 0x5EC                            # 3: the secret
        (p.mm.unpin_user_pages if entry.startswith("pin") else p.mm.put_page)(pages)
    else:
        assert ret == -errno.EFAULT and len(pages) == 0
    assert p.mm.pin_user_pages(a, 1, 0)[0] == -errno.EFAULT      # the slow path refuses
    m.check()


def test_secretmem_reproducer(reproducer):
    data, planted, fixed = reproducer("bug09_fast_secretmem")
    assert planted is not None and planted.invariant == "no-secretmem"
    assert fixed is None
