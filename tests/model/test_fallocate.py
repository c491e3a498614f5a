"""File.fallocate(): vfs_fallocate()'s checks in order, PUNCH_HOLE |
KEEP_SIZE (unmap but the private COW copies, drop the cache range, free the
blocks; a pinned folio leaves the cache with its pin), plain allocation."""
import errno

import pytest

from pygup import FALLOC, FOLL, MAP, PROT, GupError

P = 4096
RW = PROT.READ | PROT.WRITE
PUNCH = FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE


def _err(fn, *a):
    with pytest.raises(GupError) as e:
        fn(*a)
    return e.value.errno


def _filled(machine, preset, pages=4):
    f = machine.mount(preset).create("f", pages * P)
    p = machine.spawn()
    a = p.mmap(pages * P, RW, MAP.SHARED, file=f)
    for i in range(pages):
        p.write(a + i * P, 0x10 + i)
    return f, p, a


def test_check_order(machine):
    f, p, a = _filled(machine, "tmpfs")
    assert _err(f.fallocate, PUNCH, -1, P) == errno.EINVAL
    assert _err(f.fallocate, PUNCH, 0, 0) == errno.EINVAL
    assert _err(f.fallocate, 0x10, 0, P) == errno.EOPNOTSUPP            # ZERO_RANGE
    assert _err(f.fallocate, FALLOC.PUNCH_HOLE, 0, P) == errno.EOPNOTSUPP   # needs KEEP_SIZE
    ro = f.fs.open("f", writable=False)
    assert _err(ro.fallocate, PUNCH, 0, P) == errno.EBADF
    assert _err(f.fallocate, 0, 1 << 62, 1 << 62) == errno.EFBIG
    e2 = machine.mount("ext2").create("g", P)
    assert _err(e2.fallocate, 0, 0, P) == errno.EOPNOTSUPP


@pytest.mark.parametrize("preset", ["tmpfs", "ext4"])
def test_punch_hole_pinned_folio_lives_on(machine, preset):
    f, p, a = _filled(machine, preset)
    machine.writeback()
    pages = p.pin(a + P, P, FOLL.WRITE)
    pfn = pages[0]
    f.fallocate(PUNCH, P, 2 * P)
    assert f.size == 4 * P                              # KEEP_SIZE
    assert f.cached(1) is None and f.cached(2) is None and f.disk(1) == 0
    assert p.read(a + P) == 0 and p.read(a + 3 * P) == 0x13
    assert machine.folio(pfn).mapping == "none"         # out of the cache...
    assert pages.read(0) == 0x11                        # ...alive, with its pin
    pages.write(0, 0xDEAD)                              # the write goes nowhere
    p.mm.unpin_user_pages(pages)
    assert p.read(a + P) == 0


def test_punch_keeps_private_cow_copies(machine):
    f, p, a = _filled(machine, "tmpfs", 2)
    q = machine.spawn()
    b = q.mmap(2 * P, RW, MAP.PRIVATE, file=f)
    q.write(b, 0xC0)                                     # a COW copy of page 0
    q.read(b + P)                                        # page 1 mapped from the cache
    f.fallocate(PUNCH, 0, 2 * P)
    assert q.read(b) == 0xC0                             # even_cows=0: the copy stays
    assert q.read(b + P) == 0                            # the cache page went


def test_partial_pages_are_not_punched(machine):
    f, p, a = _filled(machine, "tmpfs", 3)
    f.fallocate(PUNCH, 100, P)                           # covers no whole page
    assert p.read(a) == 0x10 and p.read(a + P) == 0x11


def test_plain_allocation(machine):
    f = machine.mount("tmpfs").create("f", 0)
    f.fallocate(0, 0, 2 * P)
    assert f.size == 2 * P and f.cached(1) is not None    # shmem allocates folios
    f.fallocate(FALLOC.KEEP_SIZE, 0, 8 * P)
    assert f.size == 2 * P
    g = machine.mount("ext4").create("g", P)
    g.fallocate(0, P, P)
    assert g.size == 2 * P and g.cached(1) is None         # blocks only
