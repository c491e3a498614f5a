"""BUGS #11 — long-term pins in movable zones.

ZONE_MOVABLE (and CMA) promise that every page in them can be moved away:
memory hot-unplug and CMA allocation depend on it.  A FOLL_LONGTERM pin
(RDMA, VFIO, io_uring fixed buffers) holds its page for as long as the
device wants, so a page pinned in ZONE_MOVABLE can never leave it.  The
rule (Pavel Tatashin's "prohibit pinning pages in ZONE_MOVABLE", 5.13;
check_and_migrate_movable_pages()): __gup_longterm_locked() pins, finds the
folios that folio_is_longterm_pinnable() rejects, unpins everything,
migrates those folios to ZONE_NORMAL and pins again — and gives up with
an error instead of retrying for ever when migration cannot succeed.

    process P                               zones
    a +----------------+                    ZONE_NORMAL   [.........]
      | anon, RW, 4 KiB | PTE -> F -------> ZONE_MOVABLE  [..F......]
    a+4K --------------+

    1. P writes a: the fault allocates F from ZONE_MOVABLE (user pages are
       movable allocations)
    2. pin_user_pages(a, FOLL_LONGTERM): F is in ZONE_MOVABLE -> unpin,
       migrate F to F' in ZONE_NORMAL (PTE[a] -> F'), pin F'
       (without the rule: F pinned where it is)
    3. memory offlining migrates what is left in ZONE_MOVABLE: nothing
       pinned is there, it succeeds (without the rule: F cannot be
       migrated — someone holds a pin — and the zone cannot be emptied)

No protection switch re-plants this rule (the fuzz harness has no oracle
for zones); the test was checked against it by making
folio_is_longterm_pinnable() accept every folio, which fails it.

How the test detects it: the pinned folio is in ZONE_NORMAL, P still reads
its data through the mapping, the device's writes through the pin reach P,
and the frame P used in ZONE_MOVABLE was freed.  The second test: a folio
another holder keeps (a short-term pin) cannot be migrated, so the
long-term pin fails with -ENOMEM after a bounded number of tries, leaving
every count as it was.
"""
import errno

from pygup import FOLL, MAP, PROT, Machine
from pygup.kernel.gup import MAX_LONGTERM_RETRIES
from pygup.kernel.migrate import migrate_folio

RW = PROT.READ | PROT.WRITE
P = 4096


def machine():
    return Machine(memory="64MiB", movable="16MiB", cpus=2)


def test_longterm_pin_migrates_out_of_zone_movable():
    m = machine()
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 7)                                                    # 1
    F = p.mm.pte(a).pfn
    assert m.folio(F).zone == "movable"
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM | FOLL.WRITE)  # 2
    assert ret == 1
    pinned = pages[0]
    assert m.folio(pinned).zone == "normal" and p.mm.pte(a).pfn == pinned
    assert pages.read(0) == 7 and m.folio(F).refcount == 0           # F freed
    pages.write(0, 8)
    assert p.read(a) == 8
    # 3: offlining ZONE_MOVABLE: whatever P still maps there must migrate
    left = [pfn for pfn in (p.mm.pte(a).pfn,) if m.folio(pfn).zone == "movable"]
    with m.cpu(0):
        assert all(migrate_folio(m.kernel, pfn, 0) for pfn in left)
    p.mm.unpin_user_pages(pages)
    m.check()


def test_unmigratable_folio_gives_up():
    m = machine()
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 7)
    F = p.mm.pte(a).pfn
    ret, other = p.mm.pin_user_pages(a, 1, 0)          # a short-term pin elsewhere
    assert ret == 1
    before = m.folio(F).refcount
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM)
    assert ret == -errno.ENOMEM and len(pages) == 0
    assert m.folio(F).refcount == before and p.mm.pte(a).pfn == F
    assert m.folio(F).zone == "movable" and p.read(a) == 7
    assert 0 < MAX_LONGTERM_RETRIES < 100
    p.mm.unpin_user_pages(other)
    m.check()
