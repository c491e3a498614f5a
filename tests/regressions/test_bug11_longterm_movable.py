"""BUGS #11 — long-term pins in movable zones.

A FOLL_LONGTERM pin of a folio in ZONE_MOVABLE (or CMA) would block memory
hot-unplug and compaction forever, so __gup_longterm_locked() unpins,
migrates the folio to ZONE_NORMAL and re-pins.  A migration that fails (a
folio someone else holds) ends the call with -ENOMEM, as in 6.5; where 6.5
would retry without bound (a folio it counted but could not isolate), pygup
stops after MAX_LONGTERM_RETRIES re-pins.
"""
import errno

from pygup import FOLL, MAP, PROT, Machine
from pygup.kernel.gup import MAX_LONGTERM_RETRIES


def test_longterm_pin_migrates():
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 7)
    assert m.folio(p.mm.pte(a).pfn).zone == "movable"
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM)
    assert ret == 1 and m.folio(pages[0]).zone == "normal" and pages.read(0) == 7


def test_unmigratable_folio_gives_up():
    """Another holder's reference makes migration fail every time: the
    long-term pin fails with ENOMEM after a bounded number of retries, and
    leaves every count as it was."""
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 7)
    pfn = p.mm.pte(a).pfn
    ret, other = p.mm.pin_user_pages(a, 1, 0)          # a short-term pin elsewhere
    assert ret == 1
    before = m.folio(pfn).refcount
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM)
    assert ret == -errno.ENOMEM and len(pages) == 0
    assert m.folio(pfn).refcount == before and p.mm.pte(a).pfn == pfn
    assert MAX_LONGTERM_RETRIES < 100
