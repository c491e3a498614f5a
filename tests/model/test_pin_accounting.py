"""Reference counting (SPEC §5): FOLL_GET adds 1, FOLL_PIN adds
GUP_PIN_COUNTING_BIAS on a small folio and 1 + pincount on a large one;
folio_maybe_dma_pinned; release; refusing to unpin what holds no pin;
long-term migration out of ZONE_MOVABLE; fork of a pinned anon page."""
import errno

import pytest

from pygup import FOLL, MAP, PROT, GupError, Machine

BIAS = 1024
RW = PROT.READ | PROT.WRITE


@pytest.fixture
def m():
    return Machine(memory="64MiB", movable="8MiB")


def anon(m, n=1):
    p = m.spawn()
    a = p.mmap(n * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(n):
        p.write(a + i * 4096, i + 1)
    return p, a


def test_get_pin_unpin_small(m):
    p, a = anon(m)
    pfn = p.mm.pte(a).pfn
    assert m.folio(pfn).refcount == 1
    ret, got = p.mm.get_user_pages(a, 1, 0)
    assert ret == 1 and got[0] == pfn and m.folio(pfn).refcount == 2
    assert not m.folio(pfn).maybe_dma_pinned
    ret, pinned = p.mm.pin_user_pages(a, 1, 0)
    assert ret == 1 and m.folio(pfn).refcount == 2 + BIAS
    assert m.folio(pfn).maybe_dma_pinned and p.mm.has_pinned
    before = m.stats()
    p.mm.unpin_user_pages(pinned)
    assert m.folio(pfn).refcount == 2 and not m.folio(pfn).maybe_dma_pinned
    assert m.stats()["pins_released"] == before["pins_released"] + 1
    p.mm.put_page(got)
    assert m.folio(pfn).refcount == 1


def test_pin_large_folio_uses_pincount(m):
    f = m.memfd_create("h", 2 << 20, hugetlb=True)
    p = m.spawn()
    a = p.mmap(2 << 20, RW, MAP.SHARED, file=f)
    p.write(a, 1)
    head = p.mm.pte(a).pfn
    ref0 = m.folio(head).refcount
    ret, pages = p.mm.pin_user_pages(a, 3, FOLL.WRITE)
    assert ret == 3 and list(pages) == [head, head + 1, head + 2]
    f0 = m.folio(head + 1)
    assert f0.pincount == 3 and f0.refcount == ref0 + 3 and f0.maybe_dma_pinned
    p.mm.unpin_user_pages(pages)
    assert m.folio(head).pincount == 0 and m.folio(head).refcount == ref0


def test_double_unpin_refused(m):
    p, a = anon(m)
    pfn = p.mm.pte(a).pfn
    ret, pages = p.mm.pin_user_pages(a, 1, 0)
    p.mm.unpin_user_pages(pages)
    with pytest.raises(ValueError, match="already released"):
        p.mm.unpin_user_pages(pages)
    assert m.folio(pfn).refcount == 1
    ret, got = p.mm.get_user_pages(a, 1, 0)
    with pytest.raises(ValueError, match="pinned"):
        p.mm.unpin_user_pages(got)                  # a GET result holds no pin
    assert m.folio(pfn).refcount == 2
    other = Machine(memory="64MiB", movable="8MiB")
    with pytest.raises(ValueError, match="another machine"):
        other.spawn().mm.put_page(got)


def test_unpin_of_a_page_without_pin_refused_by_the_core(m):
    """A forged Pages object: the C core refuses and nothing changes."""
    from pygup.kernel.gup import Pages
    p, a = anon(m)
    pfn = p.mm.pte(a).pfn
    with pytest.raises(GupError) as e:
        p.mm.unpin_user_pages(Pages(m.kernel, [pfn], pinned=True))
    assert e.value.errno == errno.EINVAL
    assert m.folio(pfn).refcount == 1


def test_partial_and_errors(m):
    p, a = anon(m, 2)
    ret, pages = p.mm.get_user_pages(a, 3, 0)           # third page unmapped
    assert ret == 2 and len(pages) == 2
    p.mm.put_page(pages)
    assert p.mm.get_user_pages(a, 1, FOLL.LONGTERM)[0] == -errno.EINVAL   # A6
    assert p.mm.pin_user_pages(a, 1, FOLL.GET)[0] == 0                    # A7
    assert p.mm.pin_user_pages_fast(a, 1, FOLL.TOUCH)[0] == -errno.EINVAL  # A8
    assert p.mm.pin_user_pages_fast(0x7FFFFFFF0000, 1 << 40, 0)[0] in (-errno.EOVERFLOW, -errno.EFAULT)
    assert p.mm.get_user_pages_fast(1 << 63, 1, 0)[0] == -errno.EFAULT
    assert p.mm.get_user_pages(a, 0, 0)[0] == 0
    with pytest.raises(ValueError, match="nr_pages"):
        p.mm.get_user_pages(a, -1, 0)
    with pytest.raises(ValueError, match="gup_flags"):
        p.mm.get_user_pages(a, 1, 1 << 40)
    with pytest.raises(TypeError, match="start"):
        p.mm.get_user_pages("a", 1, 0)
    assert m.folio(p.mm.pte(a).pfn).refcount == 1      # nothing leaked


def test_longterm_pin_migrates_out_of_movable(m):
    """A14: the anon page sat in ZONE_MOVABLE; the long-term pin migrates it
    to ZONE_NORMAL and pins the copy; the process sees the same data."""
    p, a = anon(m)
    old = p.mm.pte(a).pfn
    assert m.folio(old).zone == "movable"
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM | FOLL.WRITE)
    assert ret == 1
    new = pages[0]
    assert new != old and m.folio(new).zone == "normal"
    assert p.mm.pte(a).pfn == new and p.read(a) == 1
    assert m.folio(new).refcount == 1 + BIAS and m.folio(old).refcount == 0
    pages.write(0, 9)
    assert p.read(a) == 9
    p.mm.unpin_user_pages(pages)
    # a short-term pin does not migrate
    q, b = anon(m)
    ret, pages = q.mm.pin_user_pages(b, 1, FOLL.WRITE)
    assert m.folio(pages[0]).zone == "movable"


def test_longterm_migration_of_page_cache(m):
    fs = m.mount("tmpfs")
    f = fs.create("t", 4096)
    p = m.spawn()
    a = p.mmap(4096, RW, MAP.SHARED, file=f)
    p.write(a, 5)
    old = p.mm.pte(a).pfn
    assert m.folio(old).zone == "movable"
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM | FOLL.WRITE)
    assert ret == 1 and m.folio(pages[0]).zone == "normal"
    assert f.cached(0) == pages[0] and m.folio(pages[0]).mapping == "file"
    assert p.read(a) == 5


def test_fork_copies_pinned_anon_page(m):
    """A pinned anon page stays with its pinner across fork: the child gets
    a copy (page_needs_cow_for_dma), the parent keeps writing to the page
    the pin sees."""
    p, a = anon(m)
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE)
    pfn = pages[0]
    c = p.fork()
    assert c.mm.pte(a).pfn != pfn and c.read(a) == 1
    assert p.mm.pte(a).pfn == pfn
    p.write(a, 2)
    assert p.mm.pte(a).pfn == pfn and pages.read(0) == 2
    assert c.read(a) == 1
    folio = m.folio(pfn)
    assert folio.flags & folio.flags.ANON_EXCLUSIVE
    p.mm.unpin_user_pages(pages)


def test_read_only_pin_unshares_cow_shared_anon(m):
    """gup_must_unshare: a R/O pin of an anon page shared with a child after
    fork unshares it first, so the pin keeps seeing the parent's memory."""
    p, a = anon(m)
    c = p.fork()
    shared = p.mm.pte(a).pfn
    ret, pages = p.mm.pin_user_pages(a, 1, 0)
    assert ret == 1 and pages[0] != shared
    assert p.mm.pte(a).pfn == pages[0]
    p.write(a, 3)
    assert pages.read(0) == 3 and c.read(a) == 1


def test_fault_in_only_takes_no_reference(m):
    """get_user_pages() without pages (FOLL_GET not implied) faults the
    range in and holds nothing: try_grab_page() with neither GET nor PIN is a
    no-op."""
    p = m.spawn()
    a = p.mmap(4 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.mm.get_user_pages(a, 4, FOLL.WRITE, pages=False)[0] == 4
    for i in range(4):
        f = m.folio(p.mm.pte(a + i * 4096).pfn)
        assert f.refcount == 1 and f.mapcount == 1
