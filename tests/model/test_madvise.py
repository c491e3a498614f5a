"""madvise(2): argument checks in do_madvise()'s order, the hole rule
(ENOMEM after the rest got the advice), and one test per advice rule
(pygup/kernel/madvise.py).  The errnos and partial effects marked "live"
were compared with Linux 6.18 on the development machine."""
import errno

import pytest

from pygup import FOLL, MADV, MAP, PROT, VM, GupError
from pygup.callers import io_uring_register_buffers

P = 4096
RW = PROT.READ | PROT.WRITE
ANON = MAP.PRIVATE | MAP.ANONYMOUS


def _err(fn, *a):
    with pytest.raises(GupError) as e:
        fn(*a)
    return e.value.errno


def _anon(p, pages, values=True):
    a = p.mmap(pages * P, RW, ANON)
    if values:
        for i in range(pages):
            p.write(a + i * P, 0x100 + i)
    return a


def test_madv_values_come_from_c():
    from pygup._native import C
    assert MADV.DONTNEED == C.MADV_DONTNEED == 4 and MADV.POPULATE_WRITE == 23


def test_argument_order(machine):                                    # live
    p = machine.spawn()
    a = _anon(p, 2)
    assert _err(p.madvise, a, P, 99) == errno.EINVAL           # advice first
    assert _err(p.madvise, a + 1, P, 99) == errno.EINVAL
    assert _err(p.madvise, a + 1, P, MADV.DONTNEED) == errno.EINVAL
    assert _err(p.madvise, a + 1, 0, MADV.DONTNEED) == errno.EINVAL   # alignment before len 0
    p.madvise(a, 0, MADV.DONTNEED)                               # len 0: nothing
    assert p.read(a) == 0x100
    assert _err(p.madvise, a, (1 << 64) - a, MADV.DONTNEED) == errno.EINVAL   # wraps
    with pytest.raises(TypeError):
        p.madvise(a, P, "dontneed")


def test_dontneed_over_a_hole_is_enomem_after_zapping_the_rest(machine):    # live
    p = machine.spawn()
    a = _anon(p, 4)
    p.munmap(a + P, P)
    assert _err(p.madvise, a, 4 * P, MADV.DONTNEED) == errno.ENOMEM
    # the pages on both sides of the hole were zapped anyway
    assert p.read(a) == 0 and p.read(a + 2 * P) == 0 and p.read(a + 3 * P) == 0
    b = _anon(p, 3)
    p.munmap(b, P)                                  # the hole first
    assert _err(p.madvise, b, 3 * P, MADV.DONTNEED) == errno.ENOMEM
    assert p.read(b + P) == 0


def test_dontneed_zaps_a_pinned_page_stays_with_its_pin(machine):
    p = machine.spawn()
    a = _anon(p, 1)
    pages = p.pin(a, P, FOLL.WRITE | FOLL.LONGTERM)
    pfn = pages[0]
    p.madvise(a, P, MADV.DONTNEED)
    assert p.mm.pte(a).pfn == 0                     # refaults the zero page on read
    assert p.read(a) == 0
    assert pages.read(0) == 0x100                   # the pin holder keeps the page
    assert machine.folio(pfn).refcount == 1024 and machine.folio(pfn).mapcount == 0
    p.write(a, 7)                                   # a write: a new page, not the pinned one
    assert p.mm.pte(a).pfn != pfn
    pages.write(0, 0xAA)
    assert p.read(a) == 7
    p.mm.unpin_user_pages(pages)


def test_dontneed_of_a_private_file_mapping_drops_the_cow_copy(machine):
    fs = machine.mount("ext4")
    f = fs.create("f", P)
    w = machine.spawn()
    wa = w.mmap(P, RW, MAP.SHARED, file=f)
    w.write(wa, 0x600D)
    p = machine.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE, file=f)
    p.write(a, 0xC0)                                 # a COW copy
    p.madvise(a, P, MADV.DONTNEED)
    assert p.read(a) == 0x600D and p.mm.pte(a).pfn == f.cached(0)


def test_dontneed_locked_rules(machine):                              # live
    p = machine.spawn()
    a = _anon(p, 2)
    p.mlock(a, 2 * P)
    assert _err(p.madvise, a, 2 * P, MADV.DONTNEED) == errno.EINVAL
    assert p.read(a) == 0x100
    assert _err(p.madvise, a, 2 * P, MADV.FREE) == errno.EINVAL
    p.madvise(a, 2 * P, MADV.DONTNEED_LOCKED)
    assert p.read(a) == 0


def test_dontneed_refuses_pfnmap(machine):
    p = machine.spawn()
    d = p.mmap_pfn(P, RW)
    assert _err(p.madvise, d, P, MADV.DONTNEED) == errno.EINVAL


def test_free_then_pageout_discards_clean_pages_only(machine):       # live
    p = machine.spawn()
    a = _anon(p, 2)
    p.madvise(a, 2 * P, MADV.FREE)
    from pygup._native import C
    assert machine._core.frame_info(p.mm.pte(a).pfn).flags & C.F_LAZYFREE
    p.write(a + P, 0x33)                             # written again: kept
    p.madvise(a, 2 * P, MADV.PAGEOUT)
    assert p.read(a) == 0 and p.read(a + P) == 0x33


def test_free_never_discards_a_pinned_page(machine):
    p = machine.spawn()
    a = _anon(p, 1)
    pages = p.pin(a, P, FOLL.WRITE)
    p.madvise(a, P, MADV.FREE)
    p.madvise(a, P, MADV.PAGEOUT)
    assert p.mm.pte(a).pfn == pages[0] and p.read(a) == 0x100
    p.mm.unpin_user_pages(pages)


def test_free_needs_anonymous_memory(machine):                        # live
    p = machine.spawn()
    s = p.mmap(P, RW, MAP.SHARED | MAP.ANONYMOUS)
    assert _err(p.madvise, s, P, MADV.FREE) == errno.EINVAL


def test_wipeonfork_child_gets_empty_memory(machine):
    p = machine.spawn()
    a = _anon(p, 1)
    keep = _anon(p, 1)
    p.madvise(a, P, MADV.WIPEONFORK)
    assert p.mm.find_vma(a).vm_flags & VM.WIPEONFORK
    c = p.fork()
    assert c.read(a) == 0 and c.read(keep) == 0x100 and p.read(a) == 0x100
    assert c.mm.find_vma(a) is not None                 # mapped, but empty
    p.madvise(a, P, MADV.KEEPONFORK)
    assert p.fork().read(a) == 0x100


def test_wipeonfork_needs_private_anon(machine):                      # live
    p = machine.spawn()
    s = p.mmap(P, RW, MAP.SHARED | MAP.ANONYMOUS)
    assert _err(p.madvise, s, P, MADV.WIPEONFORK) == errno.EINVAL


def test_dontfork_and_dofork(machine):
    p = machine.spawn()
    a = _anon(p, 3)
    p.madvise(a + P, P, MADV.DONTFORK)               # splits the VMA
    assert len(list(p.vmas())) == 3
    c = p.fork()
    assert c.mm.find_vma(a + P) is None and c.read(a) == 0x100
    p.madvise(a + P, P, MADV.DOFORK)                 # and merges it back
    assert len(list(p.vmas())) == 1
    d = p.mmap_pfn(P, RW)
    assert _err(p.madvise, d, P, MADV.DOFORK) == errno.EINVAL       # VM_IO


def test_hugepage_flags_and_collapse(machine):                        # live (errnos)
    p = machine.spawn()
    a = _anon(p, 1)
    p.madvise(a, P, MADV.HUGEPAGE)
    assert p.mm.find_vma(a).vm_flags & VM.HUGEPAGE
    p.madvise(a, P, MADV.NOHUGEPAGE)
    f = p.mm.find_vma(a).vm_flags
    assert f & VM.NOHUGEPAGE and not f & VM.HUGEPAGE
    assert _err(p.madvise, a, P, MADV.COLLAPSE) == errno.EINVAL


def test_remove_punches_the_shmem_file(machine):                      # live
    p = machine.spawn()
    s = p.mmap(2 * P, RW, MAP.SHARED | MAP.ANONYMOUS)
    p.write(s, 1)
    p.write(s + P, 2)
    pages = p.pin(s, P, 0)
    p.madvise(s, P, MADV.REMOVE)
    assert p.read(s) == 0 and p.read(s + P) == 2
    assert pages.read(0) == 1                       # out of the cache, alive with its pin
    p.mm.unpin_user_pages(pages)


def test_remove_rules(machine):                                       # live
    p = machine.spawn()
    a = _anon(p, 1)
    assert _err(p.madvise, a, P, MADV.REMOVE) == errno.EINVAL       # no file
    fs = machine.mount("tmpfs")
    f = fs.create("f", P)
    priv = p.mmap(P, RW, MAP.PRIVATE, file=f)
    assert _err(p.madvise, priv, P, MADV.REMOVE) == errno.EACCES
    ro = p.mmap(P, PROT.READ, MAP.SHARED, file=fs.open("f", writable=False))
    assert _err(p.madvise, ro, P, MADV.REMOVE) == errno.EACCES
    e2 = machine.mount("ext2").create("g", P)
    sh = p.mmap(P, RW, MAP.SHARED, file=e2)
    assert _err(p.madvise, sh, P, MADV.REMOVE) == errno.EOPNOTSUPP


def test_populate_goes_through_gup(machine):                          # live
    p = machine.spawn()
    ro = p.mmap(2 * P, PROT.READ, ANON)
    assert _err(p.madvise, ro, 2 * P, MADV.POPULATE_WRITE) == errno.EINVAL
    p.madvise(ro, 2 * P, MADV.POPULATE_READ)
    assert p.mm.pte(ro).level and p.mm.pte(ro).pfn == 0          # the zero page
    none = p.mmap(P, PROT.NONE, ANON)
    assert _err(p.madvise, none, P, MADV.POPULATE_READ) == errno.EINVAL
    h = p.mmap(3 * P, RW, ANON)
    p.munmap(h + P, P)
    assert _err(p.madvise, h, 3 * P, MADV.POPULATE_WRITE) == errno.ENOMEM
    assert p.mm.pte(h).level and p.mm.pte(h).write              # before the hole: done
    assert not p.mm.pte(h + 2 * P).level
    f = machine.mount("tmpfs").create("f", P)
    sb = p.mmap(2 * P, RW, MAP.SHARED, file=f)
    assert _err(p.madvise, sb, 2 * P, MADV.POPULATE_READ) == errno.EFAULT  # SIGBUS


def test_pageout_keeps_pinned_file_folios_and_cold_refuses_locked(machine):   # live
    fs = machine.mount("ext4")
    f = fs.create("f", 2 * P)
    p = machine.spawn()
    a = p.mmap(2 * P, PROT.READ, MAP.PRIVATE, file=f)
    p.read(a)
    p.read(a + P)
    pages = p.pin(a + P, P, 0)
    p.madvise(a, 2 * P, MADV.PAGEOUT)
    assert f.cached(0) is None                         # reclaimed
    assert f.cached(1) == pages[0]                     # pinned: never reclaimed
    p.mm.unpin_user_pages(pages)
    b = _anon(p, 1)
    p.mlock(b, P)
    assert _err(p.madvise, b, P, MADV.COLD) == errno.EINVAL
    assert _err(p.madvise, b, P, MADV.PAGEOUT) == errno.EINVAL


def test_flag_advice_on_vmas(machine):
    p = machine.spawn()
    a = _anon(p, 2)
    p.madvise(a, P, MADV.SEQUENTIAL)
    assert p.mm.find_vma(a).vm_flags & VM.SEQ_READ
    p.madvise(a, P, MADV.RANDOM)
    f = p.mm.find_vma(a).vm_flags
    assert f & VM.RAND_READ and not f & VM.SEQ_READ
    p.madvise(a, P, MADV.NORMAL)
    p.madvise(a, P, MADV.DONTDUMP)
    assert p.mm.find_vma(a).vm_flags & VM.DONTDUMP
    p.madvise(a, P, MADV.DODUMP)
    assert len(list(p.vmas())) == 1


def test_willneed_reads_the_file_in(machine):
    fs = machine.mount("ext4")
    f = fs.create("f", 2 * P)
    p = machine.spawn()
    a = p.mmap(2 * P, PROT.READ, MAP.SHARED, file=f)
    assert f.cached(1) is None
    p.madvise(a, 2 * P, MADV.WILLNEED)
    assert f.cached(1) is not None and not p.mm.pte(a + P).level


def test_dontneed_against_an_io_uring_buffer(machine):
    p = machine.spawn()
    a = _anon(p, 2)
    assert io_uring_register_buffers(p, a, 2 * P) == 0
    pfns = list(p.held["io_uring"][0])
    p.madvise(a, 2 * P, MADV.DONTNEED)
    # the registered buffer keeps the old pages; the process sees fresh ones
    p.write(a, 1)
    assert p.mm.pte(a).pfn not in pfns
    assert machine.folio(pfns[0]).content == 0x100
