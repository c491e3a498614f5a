"""BUGS #5 — COW can break either way (CVE-2020-29374, found by Jann Horn
with vmsplice, 2020; closed for pins by David Hildenbrand's
PageAnonExclusive series, 6c287605fd56 "mm: remember exclusively mapped
anonymous pages with PG_anon_exclusive", 2022, and gup_must_unshare()).

The mechanism.  After fork an anon page is shared by parent and child,
read-only in both.  A read-only pin (the device only reads: O_DIRECT
write, RDMA read MR, vmsplice) of the shared page takes no fault, so
nothing unshares it.  The next write fault in either process breaks COW —
and may give the new page to the *pinner*, leaving the pin on memory the
other process now owns:

    parent P                 child C
    a +------------+         a +------------+
      | anon       | PTE -> F <- PTE | anon  |   F: shared, read-only,
    a+4K ----------+         a+4K ----------+       not AnonExclusive

    1. P writes 0x1111 at a; 2. fork: F shared with C
    3. P: pin_user_pages[_fast](a, 1, 0) — a read-only FOLL_PIN
       the fix: gup_must_unshare(): F is not exclusive -> unshare fault
       first, P gets its own exclusive copy F' and the pin holds F'
       / switch on: the pin holds F, still shared
    4. P writes 0x2222 at a: F shared -> COW: P maps a new page; the pin
       keeps F, which now belongs to C alone
    5. the device reads through the pin: 0x1111, not what P wrote

The fix: exclusivity is recorded per anon page (PageAnonExclusive), and a
read-only FOLL_PIN of a possibly shared anon page unshares first, in both
the slow path (follow_page_mask -> gup_must_unshare -> FAULT_FLAG_UNSHARE)
and GUP-fast (which backs off to the slow path).  Switches: no_unshare
(slow path), fast_no_unshare (GUP-fast).

How the test detects it: after step 4 the pinned page is not the page the
pinner maps (invariant 6), and the device reads stale data; with the fix
the pin reads the pinner's latest write.  The JSON reproducers are the
harness's shrunk forms, one per path.
"""
import pytest

from pygup import MAP, PROT, Machine

RW = PROT.READ | PROT.WRITE
P = 4096

PATHS = {"fast_no_unshare": "pin_user_pages_fast", "no_unshare": "pin_user_pages"}


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
@pytest.mark.parametrize("switch", sorted(PATHS))
def test_read_only_pin_of_a_cow_shared_page(switch, buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2, mutants={switch} if buggy else ())
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)                                           # 1
    c = p.fork()                                                 # 2
    F = p.mm.pte(a).pfn
    assert c.mm.pte(a).pfn == F

    ret, pages = getattr(p.mm, PATHS[switch])(a, 1, 0)           # 3
    assert ret == 1
    assert (pages[0] == F) is buggy                              # unshared first?

    p.write(a, 0x2222)                                           # 4
    mapped = p.mm.pte(a).pfn
    if buggy:
        assert mapped != pages[0] and c.mm.pte(a).pfn == pages[0]
        assert pages.read(0) == 0x1111                           # 5: stale
    else:
        assert mapped == pages[0] and pages.read(0) == 0x2222
        assert m.folio(mapped).flags & m.folio(mapped).flags.ANON_EXCLUSIVE
        assert c.read(a) == 0x1111
    p.mm.unpin_user_pages(pages)
    m.check()


@pytest.mark.parametrize("name", ["bug05_fast_no_unshare", "bug05_no_unshare"])
def test_cow_either_way_reproducers(reproducer, name):
    data, planted, fixed = reproducer(name)
    assert planted is not None and planted.invariant == "pinned-anon-stays"
    assert fixed is None
