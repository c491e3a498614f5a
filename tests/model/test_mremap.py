"""mremap(2): the syscall's checks in order (compared with Linux 6.18),
shrink, grow in place, move (page tables moved, pins intact, anon index
and file offsets kept), MREMAP_FIXED, MREMAP_DONTUNMAP, hugetlb, and the
move's race with GUP-fast as a scheduled operation."""
import errno

import pytest

from pygup import FOLL, MAP, MREMAP, PROT, GupError, Machine
from pygup._native import C

P = 4096
RW = PROT.READ | PROT.WRITE
ANON = MAP.PRIVATE | MAP.ANONYMOUS
MOVE = MREMAP.MAYMOVE


def _err(fn, *a, **k):
    with pytest.raises(GupError) as e:
        fn(*a, **k)
    return e.value.errno


def test_argument_order(machine):                                         # live
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON)
    assert _err(p.mremap, a, P, P, 8) == errno.EINVAL
    assert _err(p.mremap, a, P, P, MREMAP.FIXED, a + 8 * P) == errno.EINVAL
    assert _err(p.mremap, a, P, 2 * P, MOVE | MREMAP.DONTUNMAP) == errno.EINVAL
    assert _err(p.mremap, a + 1, P, P, MOVE) == errno.EINVAL
    assert _err(p.mremap, a, P, 0, MOVE) == errno.EINVAL
    assert _err(p.mremap, 0x1000, P, P, MOVE) == errno.EFAULT
    assert _err(p.mremap, a, 4 * P, 8 * P, MOVE) == errno.EFAULT       # past the VMA
    assert _err(p.mremap, a, 0, P, MOVE) == errno.EINVAL               # old_len 0, private
    assert _err(p.mremap, a, 2 * P, 2 * P, MOVE | MREMAP.FIXED, a + P) == errno.EINVAL  # overlap
    assert _err(p.mremap, a, P, P, MOVE | MREMAP.FIXED, a + 8 * P + 1) == errno.EINVAL


def test_shrink_unmaps_the_tail(machine):
    p = machine.spawn()
    a = p.mmap(3 * P, RW, ANON)
    p.write(a + 2 * P, 1)
    assert p.mremap(a, 3 * P, P) == a
    assert p.mm.find_vma(a + P) is None and p.mm.find_vma(a).vm_end == a + P


def test_grow_in_place_or_enomem_without_maymove(machine):              # live
    p = machine.spawn()
    a = p.mmap(4 * P, RW, ANON)
    p.munmap(a + P, 3 * P)
    p.write(a, 5)
    assert p.mremap(a, P, 2 * P) == a and p.mm.find_vma(a).vm_end == a + 2 * P
    b = p.mmap(P, RW, ANON | MAP.FIXED, addr=a + 2 * P)                  # blocks the gap
    assert b == a + 2 * P
    assert _err(p.mremap, a, 2 * P, 3 * P) == errno.ENOMEM


def test_move_keeps_pins_and_anon_index(machine):
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON)
    p.write(a, 0x77)
    p.write(a + P, 0x78)
    p.mmap(P, RW, ANON | MAP.FIXED, addr=a + 2 * P)                      # no room to grow
    pages = p.pin(a, 2 * P, FOLL.WRITE | FOLL.LONGTERM)
    old_index = machine.folio(pages[0]).index
    n = p.mremap(a, 2 * P, 8 * P, MOVE)
    assert n != a and p.mm.find_vma(a) is None
    assert [p.mm.pte(n).pfn, p.mm.pte(n + P).pfn] == list(pages)
    assert machine.folio(pages[0]).refcount == 1024 + 1       # pin + the one mapping
    assert p.mm.find_vma(n).page_index(n) == old_index        # rmap still finds it
    pages.write(0, 0x99)
    assert p.read(n) == 0x99                                  # the pin writes the mapped page
    p.write(n + 3 * P, 1)                                     # the grown part faults fresh
    p.mm.unpin_user_pages(pages)
    assert machine.stats()["table_pages_pending"] >= 0


def test_move_whole_pmd_tables(machine):
    p = machine.spawn()
    span = 2 << 20
    a = p.mmap(2 * span, RW, ANON)
    base = -(-a // span) * span                               # a 2 MiB aligned extent
    p.munmap(a, base - a) if base > a else None
    for i in range(0, span, 64 * P):
        p.write(base + i, i + 1)
    with machine.cpu(1):
        p.read(base)                                          # CPU 1 caches the translation
    assert machine._core.tlb_probe(1, p.mm.id, base)
    dst = p.mmap(2 * span, RW, ANON)
    to = -(-dst // span) * span
    got = p.mremap(base, span, span, MOVE | MREMAP.FIXED, to)
    assert got == to
    assert all(p.read(to + i) == i + 1 for i in range(0, span, 64 * P))
    assert p.mm.find_vma(base) is None or p.mm.find_vma(base).vm_start >= base + span
    # the whole table moved (move_normal_pmd()): its present entries are
    # flushed from every CPU at the old address (flush_tlb_range())
    assert not machine._core.tlb_probe(1, p.mm.id, base)


def test_move_file_mapping_keeps_offsets(machine):
    f = machine.mount("ext4").create("f", 4 * P)
    w = machine.spawn()
    wa = w.mmap(4 * P, RW, MAP.SHARED, file=f)
    for i in range(4):
        w.write(wa + i * P, 0x50 + i)
    p = machine.spawn()
    a = p.mmap(4 * P, PROT.READ, MAP.SHARED, file=f)
    n = p.mremap(a + 2 * P, 2 * P, 2 * P, MOVE | MREMAP.FIXED, a + 16 * P)
    assert p.read(n) == 0x52 and p.read(n + P) == 0x53
    assert p.mm.find_vma(n).vm_pgoff == 2 and p.read(a) == 0x50
    assert p.mm.find_vma(n) in f.inode.i_mmap


def test_dontunmap_leaves_the_old_range_empty(machine):                   # live
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON)
    p.write(a, 1)
    n = p.mremap(a, 2 * P, 2 * P, MOVE | MREMAP.DONTUNMAP)
    assert p.read(n) == 1 and p.read(a) == 0 and p.mm.find_vma(a) is not None
    p.write(a, 2)                                             # a new anon_vma, a new page
    assert p.read(n) == 1
    d = p.mmap_pfn(P, RW)
    assert _err(p.mremap, d, P, P, MOVE | MREMAP.DONTUNMAP) == errno.EINVAL


def test_locked_mapping_grows_locked(machine):
    p = machine.spawn()
    a = p.mmap(P, RW, ANON | MAP.LOCKED)
    n = p.mremap(a, P, 3 * P, MOVE)
    assert p.mm.locked_vm == 3 and p.mm.pte(n + 2 * P).level     # populated
    p.rlimit_memlock = 3 * P
    assert _err(p.mremap, n, 3 * P, 5 * P, MOVE) == errno.EAGAIN


def test_hugetlb_cannot_grow(machine):
    p = machine.spawn()
    h = p.mmap(2 << 20, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
    assert _err(p.mremap, h, 2 << 20, 4 << 20, MOVE) == errno.EINVAL


def test_pg_move_range_bounds(machine):
    core = machine._core
    p = machine.spawn()
    with pytest.raises(ValueError):
        core.move_range(0, p.mm.id, -1, 0, P)
    with pytest.raises(GupError) as e:
        core.move_range(0, p.mm.id, 0x10000, 0x10000 + P, 2 * P)   # overlap
    assert e.value.errno == errno.EINVAL
    with pytest.raises(GupError) as e:
        core.move_range(0, p.mm.id, 1 << 60, 0, P)
    assert e.value.errno == errno.EFAULT


@pytest.mark.parametrize("seed", range(12))
def test_gup_fast_against_the_move(seed):
    """GUP-fast on CPU 0 pins the page at the old address while CPU 1 moves
    it: whatever the interleaving, a pin taken is on the page that moved
    (never a stale or freed one) and the new address maps it."""
    m = Machine(memory="64MiB", movable="0MiB", cpus=2)
    p = m.spawn()
    a = p.mmap(P, RW, ANON)
    p.write(a, 0x1234)
    pfn = p.mm.pte(a).pfn
    dst = p.mmap(P, RW, ANON)
    p.munmap(dst, P)
    run = m.run_concurrently(
        [lambda m: p.mm.pin_user_pages_fast(a, 1, int(FOLL.WRITE)),
         lambda m: p.mremap(a, P, P, MOVE | MREMAP.FIXED, dst)],
        seed=seed, timeout=20,
        points={"fast_pte_read", "fast_grabbed", "fast_before_recheck",
                "mremap_moved", "mremap_flushed"})
    ret, pages = run.results[0]
    assert run.results[1] == dst and p.mm.pte(dst).pfn == pfn
    if ret == 1:
        assert pages[0] == pfn
        p.mm.unpin_user_pages(pages)
    assert m.folio(pfn).refcount == 1
    m.check()


# -- a THP in the moved range (move_page_tables()'s huge-PMD case) ------------------

HPAGE = 2 << 20
THP_AT = 0x40000000


def _thp_machine():
    m = Machine(memory="64MiB", movable="16MiB", thp="always")
    p = m.spawn()
    a = p.mmap(HPAGE, RW, ANON | MAP.FIXED_NOREPLACE, addr=THP_AT)
    for i in (0, 5, 511):
        p.write(a + i * P, 0x1000 + i)
    return m, p, a, p.mm.pte(a).pfn


def test_move_of_a_whole_thp_to_an_aligned_address_keeps_the_pmd_leaf():
    m, p, a, H = _thp_machine()
    to = THP_AT + 4 * HPAGE
    assert p.mremap(a, HPAGE, HPAGE, MOVE | MREMAP.FIXED, to) == to
    pte = p.mm.pte(to)
    assert pte.huge and pte.pfn == H and m.folio(H).refcount == 1     # moved whole
    assert p.read(to + 5 * P) == 0x1005
    m.check()


@pytest.mark.parametrize("how", ["unaligned", "part", "grow"])
def test_move_that_cuts_or_misaligns_a_thp_splits_its_pmd(how):
    """The extent is not a whole PMD at both ends: split_huge_pmd(), then
    the PTEs move; the folio stays one (every page is still mapped)."""
    m, p, a, H = _thp_machine()
    if how == "unaligned":
        to, n = THP_AT + 4 * HPAGE + P, 512
        assert p.mremap(a, HPAGE, HPAGE, MOVE | MREMAP.FIXED, to) == to
    elif how == "part":
        to, n = THP_AT + 4 * HPAGE, 8
        assert p.mremap(a, 8 * P, 8 * P, MOVE | MREMAP.FIXED, to) == to
        assert p.mm.pte(a + 8 * P).pfn == H + 8 and p.read(a + 511 * P) == 0x1000 + 511
    else:
        p.mmap(P, RW, ANON | MAP.FIXED_NOREPLACE, addr=a + HPAGE)   # no room to grow
        n = 511
        to = p.mremap(a, HPAGE - P, HPAGE + P, MOVE)
        assert p.mm.pte(a + 511 * P).pfn == H + 511                  # the tail stays behind
    assert p.mm.pte(to).level == C.LEVEL_PTE
    assert [p.mm.pte(to + i * P).pfn for i in (0, 5, n - 1)] == [H, H + 5, H + n - 1]
    assert p.read(to + 5 * P) == 0x1005
    f = m.folio(H)
    assert f.order == 9 and f.refcount == 512
    m.check()


def test_move_cut_short_by_a_table_allocation_goes_back():
    """move_vma(): when move_page_tables() cannot allocate a destination
    table part-way, what moved is moved back and mremap fails with ENOMEM,
    the old mapping (its data, its pins) as it was.  The move is misaligned
    (new - old is not a multiple of 2 MiB), so every extent needs its own
    destination PTE table: some nth allocation fails after earlier extents
    moved."""
    span = 3 << 21
    outcomes = set()
    for nth in range(1, 10):
        m = Machine(memory="64MiB", movable="0MiB")
        p = m.spawn()
        a = p.mmap(span, RW, ANON)
        for i in range(3):
            p.write(a + i * (2 << 20) + 5 * P, 0x100 + i)
        pages = p.pin(a + 5 * P, P, FOLL.WRITE | FOLL.LONGTERM)
        to = p.mmap(span + (4 << 21), RW, ANON) + (1 << 21) + 3 * P
        m.fail_nth("table", nth)
        try:
            got = p.mremap(a, span, span, MOVE | MREMAP.FIXED, to)
        except GupError as e:
            assert e.errno == errno.ENOMEM
            assert m.failures_fired("table") == 1
            outcomes.add("enomem")
            for i in range(3):
                assert p.read(a + i * (2 << 20) + 5 * P) == 0x100 + i, (nth, i)
            assert p.mm.pte(a + 5 * P).pfn == pages[0]
            assert p.mm.find_vma(a).vm_end == a + span
            assert p.mm.find_vma(to) is None or p.mm.find_vma(to).vm_start >= to + span
            assert p.mm.pte(to + 5 * P).level == 0
        else:
            assert got == to
            outcomes.add("moved")
            for i in range(3):
                assert p.read(to + i * (2 << 20) + 5 * P) == 0x100 + i
        m.fail_nth("table", 0)
        p.mm.unpin_user_pages(pages)
        m.check()
        p.exit()
        m.check()
        assert m.stats()["table_pages_live"] == 0
    assert outcomes == {"enomem", "moved"}
