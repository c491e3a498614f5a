"""Writeback a run of folios per C call (kernel/writeback.py's
``_writeback_batch`` over csrc's pg_mkclean_range, pg_folios_clear_dirty_for_io,
pg_frames_read) against the folio-by-folio path it stands for
(``Kernel.writeback_batch = False``): the same world driven twice must end
in the same state -- every writeback's answer, the disk, every frame's
flags, refcount, mapcount, mapping and content, every PTE, every CPU's TLB,
the file system's counters and warnings.  The worlds mix shared and
private mappings (two processes, overlapping windows, COW copies), pins
written through, folios stripped of their buffers by reclaim (ext4 skips
them), partial last pages, range writeback (msync) and the
mkclean_no_flush switch (stale TLB entries must survive the same way).
Regular file systems cache order-0 folios only (hugetlbfs, the one large
page cache, never writes back), so no large folio goes through either path.
Then the C core's own argument checks and the disk image."""
from __future__ import annotations

import random

import numpy as np
import pytest

from pygup import FOLL, MAP, MS, PROT, Machine
from pygup._native import C
from pygup.errors import GupError
from pygup.kernel.disk import CHUNK_PAGES, DiskImage

P = 4096
RW = PROT.READ | PROT.WRITE
FS = ("ext4", "ext4", "xfs", "nfs", "btrfs", "ext2")


def _observe(m, files, vmas, seen):
    """Everything writeback may have changed."""
    core = m._core
    out = {"seen": seen}
    snap = core.snapshot()
    out["frames"] = {k: v.tolist() for k, v in snap.items()}
    # an anonymous folio's mapping word names its anon_vma, whose ids are
    # global to the process: compare them by order of first appearance
    names: dict = {}
    out["frames"]["mapping"] = [
        ("anon", names.setdefault(w, len(names))) if w & C.MAPPING_FLAGS == C.MAPPING_ANON
        else w for w in out["frames"]["mapping"]]
    out["disk"] = [list(f.inode.disk.items()) for f in files]
    out["fs"] = [(f.fs.stats(), [(w.file, w.index, w.what) for w in f.fs.warnings])
                 for f in files]
    ptes, tlb = [], []
    for p, a, pages in vmas:
        addrs, leaves = core.range_leaves(p.mm.id, a, a + pages * P)
        ptes.append((addrs.tolist(), leaves.tolist()))
        tlb.append([core.tlb_probe(cpu, p.mm.id, a + i * P)
                    for cpu in range(m.nr_cpus) for i in range(pages)])
    out["ptes"], out["tlb"] = ptes, tlb
    stats = core.stats()
    # one shootdown (and its IPIs) per batch of adjacent entries instead of
    # one per entry: the deliberate difference
    stats.pop("tlb_shootdowns")
    stats.pop("ipis_sent")
    out["stats"] = stats
    return out


def _world(seed: int, batch: bool):
    rng = random.Random(seed)
    policy = rng.choice(("6.5", "6.4"))
    mutants = ("mkclean_no_flush",) if rng.random() < 0.2 else ()
    m = Machine(policy=policy, memory="48MiB", movable="0MiB", cpus=2, mutants=mutants)
    m.kernel.writeback_batch = batch
    fs = m.mount(rng.choice(FS))
    procs = [m.spawn(), m.spawn()]
    files, vmas, pins, seen = [], [], [], []
    for k in range(rng.randint(1, 2)):
        pages = rng.choice((1, 3, 17, 130, 600))
        size = pages * P - rng.choice((0, 0, 100))          # a partial last page
        f = fs.create(f"f{k}", size)
        files.append(f)
        for _ in range(rng.randint(1, 3)):
            p = rng.choice(procs)
            off = rng.randrange(pages)
            n = rng.randint(1, pages - off)
            shared = rng.random() < 0.75
            a = p.mmap(n * P, RW, MAP.SHARED if shared else MAP.PRIVATE, file=f, offset=off * P)
            vmas.append((p, a, n))
    # writes through the mappings, on either CPU (a TLB entry left on each)
    for _ in range(rng.randint(1, 40)):
        p, a, n = rng.choice(vmas)
        with m.cpu(rng.randrange(2)):
            i = rng.randrange(n)
            if rng.random() < 0.25:
                p.read(a + i * P)
            else:
                p.write(a + i * P, rng.randrange(1, 1 << 64))
    # pins, some written through behind the file system's back
    for _ in range(rng.randint(0, 3)):
        p, a, n = rng.choice(vmas)
        i = rng.randrange(n)
        flags = FOLL.WRITE | (FOLL.LONGTERM if rng.random() < 0.5 else 0)
        ret, got = p.mm.pin_user_pages(a + i * P, rng.randint(1, n - i), flags)
        seen.append(("pin", ret))
        if ret > 0:
            pins.append((p, got))
            for j in range(ret):
                if rng.random() < 0.5:
                    got.write(j, rng.randrange(1, 1 << 64))
    if rng.random() < 0.5:
        with m.cpu(0):
            seen.append(("writeback", m.writeback()))
    for f in files:
        if rng.random() < 0.4:
            seen.append(("evict", m.evict(f)))               # buffers stripped
    for p, got in pins:
        if rng.random() < 0.7:
            p.mm.unpin_user_pages_dirty_lock(got, rng.random() < 0.8)
    for _ in range(rng.randint(0, 10)):
        p, a, n = rng.choice(vmas)
        with m.cpu(rng.randrange(2)):
            i = rng.randrange(n)
            try:
                p.write(a + i * P, rng.randrange(1, 1 << 64))
            except Exception as e:          # mkclean_no_flush: the MMU's check fires
                seen.append(("write", type(e).__name__))
    # range writeback, then everything
    p, a, n = rng.choice(vmas)
    i = rng.randrange(n)
    with m.cpu(rng.randrange(2)):
        p.msync(a + i * P, rng.randint(1, n - i) * P, MS.SYNC)
        seen.append(("writeback", m.writeback()))
        seen.append(("writeback", m.writeback()))           # nothing left dirty
    return _observe(m, files, vmas, seen)


@pytest.mark.parametrize("seed", range(40))
def test_batched_writeback_matches_the_per_folio_path(seed):
    want = _world(seed, batch=False)
    got = _world(seed, batch=True)
    for key in want:
        assert got[key] == want[key], key


def _scenario(name: str, batch: bool):
    """A named world, each aimed at one case the random ones reach rarely."""
    policy = "6.4" if name == "ext4-without-buffers" else "6.5"
    mutants = ("mkclean_no_flush",) if name == "mkclean-no-flush" else ()
    m = Machine(policy=policy, memory="48MiB", movable="0MiB", cpus=2, mutants=mutants)
    m.kernel.writeback_batch = batch
    fs = m.mount("ext4")
    p, q = m.spawn(), m.spawn()
    seen: list = []
    if name == "sparse-cache":                       # runs of adjacent folios, gaps between
        f = fs.create("f", 4096 * P - 7)
        a = p.mmap(4096 * P, RW, MAP.SHARED, file=f)
        vmas = [(p, a, 4096)]
        for i in (0, 1, 2, 700, 701, 2000, 4093, 4094, 4095):
            with m.cpu(i % 2):
                p.write(a + i * P, i + 1)
        with m.cpu(1):
            p.read(a + 5 * P)                        # cached clean, in no run of dirty pages
    elif name == "ext4-without-buffers":             # BUGS #1: reclaim strips the buffers
        f = fs.create("f", 6 * P)
        a = p.mmap(6 * P, RW, MAP.SHARED, file=f)
        vmas = [(p, a, 6)]
        for i in range(6):
            p.write(a + i * P, 0x10 + i)
        ret, pages = p.mm.pin_user_pages(a + P, 3, FOLL.LONGTERM | FOLL.WRITE)
        seen.append(("pin", ret))
        seen.append(("writeback", f.writeback()))
        for j in range(3):
            pages.write(j, 0x20 + j)
        seen.append(("evict", m.evict(f)))
        p.mm.unpin_user_pages_dirty_lock(pages, True)
        p.write(a + 5 * P, 0x99)                     # one folio with its buffers again
    else:
        f = fs.create("f", 8 * P - 100)              # a partial last page
        a = p.mmap(8 * P, RW, MAP.SHARED, file=f)
        vmas = [(p, a, 8)]
        for i in range(8):
            with m.cpu(i % 2):
                p.write(a + i * P, 0x100 + i)
        if name == "shared-private-cow":
            b = q.mmap(6 * P, RW, MAP.PRIVATE, file=f, offset=2 * P)
            vmas.append((q, b, 6))
            q.write(b, 0xC0)                         # a private COW copy
            q.read(b + P)                            # a page-cache page, mapped read-only
            c = q.mmap(4 * P, RW, MAP.SHARED, file=f, offset=4 * P)
            vmas.append((q, c, 4))
            with m.cpu(1):
                q.write(c + 3 * P, 0x5A)             # the same folio in two shared VMAs
        elif name == "pinned-written-through":
            ret, pages = p.mm.pin_user_pages(a + 2 * P, 4, FOLL.WRITE)
            seen.append(("pin", ret))
            for j in range(ret):
                pages.write(j, 0x200 + j)
            p.mm.unpin_user_pages_dirty_lock(pages, True)
        elif name == "dirty-pte-clean-folio":
            # a writable, dirty PTE over a folio whose dirty flag went (no
            # public path gets there): mkclean's answer re-dirties it
            for i in (1, 2, 6):
                m._core.flags_update(f.cached(i), 0, C.F_DIRTY)
        elif name == "past-eof":
            # i_size already cut, the page cache not yet (truncate_setsize()
            # before truncate_pagecache()): pages past EOF stay off disk
            f.inode.size = 5 * P + 1
        elif name == "msync-range":
            p.msync(a + 2 * P, 3 * P, MS.SYNC)
            seen.append(("disk", [f.disk(i) for i in range(8)]))
    with m.cpu(0):
        seen.append(("writeback", m.writeback()))
        seen.append(("writeback", m.writeback()))
    return _observe(m, [f], vmas, seen)


@pytest.mark.parametrize("name", ["sparse-cache", "ext4-without-buffers", "shared-private-cow",
                                  "pinned-written-through", "msync-range", "mkclean-no-flush",
                                  "dirty-pte-clean-folio", "past-eof"])
def test_batched_writeback_matches_the_per_folio_path_in_each_case(name):
    want = _scenario(name, batch=False)
    got = _scenario(name, batch=True)
    for key in want:
        assert got[key] == want[key], key
    if name == "ext4-without-buffers":               # the case happened: three folios skipped
        assert [w[1] for w in want["fs"][0][1]].count(1) == 2
        assert sum("without buffers" in w[2] for w in want["fs"][0][1]) == 3
    if name == "past-eof":
        assert [i for i, _ in want["disk"][0]] == list(range(6))
    if name == "dirty-pte-clean-folio":              # every page reached the disk
        assert [v for _, v in want["disk"][0]] == [0x100 + i for i in range(8)]


def _dirty_file(pages, mutants=()):
    m = Machine(memory="48MiB", movable="0MiB", cpus=2, mutants=mutants)
    f = m.mount("ext4").create("f", pages * P)
    p = m.spawn()
    a = p.mmap(pages * P, RW, MAP.SHARED, file=f)
    with m.cpu(1):
        for i in range(pages):
            p.write(a + i * P, 0x100 + i)
    return m, f, p, a


def test_one_shootdown_per_run_of_adjacent_cleaned_entries():
    """The batch's deliberate difference: a run of adjacent dirty pages
    costs one shootdown, not one per entry -- and CPU 1's cached writable
    entries are gone either way."""
    counts = {}
    for batch in (False, True):
        m, f, p, a = _dirty_file(64)
        m.kernel.writeback_batch = batch
        before = m._core.stats()["tlb_shootdowns"]
        assert f.writeback() == 64
        counts[batch] = m._core.stats()["tlb_shootdowns"] - before
        assert not any(m._core.tlb_probe(1, p.mm.id, a + i * P) for i in range(64))
        assert [f.disk(i) for i in range(64)] == [0x100 + i for i in range(64)]
    assert counts == {False: 64, True: 1}


def test_a_gap_splits_the_shootdown_and_keeps_the_clean_entry_cached():
    """Pages 0 and 2 dirty, page 1 only read: the clean read-only entry of
    page 1 stays in CPU 1's TLB (the per-folio path never flushes it)."""
    for batch in (False, True):
        m = Machine(memory="48MiB", movable="0MiB", cpus=2)
        m.kernel.writeback_batch = batch
        f = m.mount("ext4").create("f", 3 * P)
        p = m.spawn()
        a = p.mmap(3 * P, RW, MAP.SHARED, file=f)
        with m.cpu(1):
            p.write(a, 1)
            p.read(a + P)
            p.write(a + 2 * P, 3)
        before = m._core.stats()["tlb_shootdowns"]
        assert f.writeback() == 2
        assert m._core.stats()["tlb_shootdowns"] - before == 2
        assert [m._core.tlb_probe(1, p.mm.id, a + i * P) for i in range(3)] == [False, True, False]


def test_mkclean_no_flush_leaves_the_stale_entries_in_a_batch():
    """The switch acts on the batch as on one folio: the PTEs are clean and
    read-only, CPU 1 still caches them writable, and its next write is the
    write-notify bypass the MMU's check reports."""
    from pygup import InvariantError
    m, f, p, a = _dirty_file(8, mutants=("mkclean_no_flush",))
    assert f.writeback() == 8
    assert all(m._core.tlb_probe(1, p.mm.id, a + i * P) for i in range(8))
    assert not any(p.mm.pte(a + i * P).write for i in range(8))
    with m.cpu(1), pytest.raises(InvariantError, match="write-notify bypass"):
        p.write(a + 5 * P, 0xBAD)


def test_the_explored_writeback_race_still_fails_without_the_shootdown():
    """Both mkclean windows still fire, and without the shootdown the
    explorer still finds the schedule that writes through a stale entry."""
    from pygup.tools import explore
    for mutants, fails in (((), False), (("mkclean_no_flush",), True)):
        res = explore.explore("writeback-write", 2, "6.5", mutants=mutants)
        assert (res.failing is not None) is fails and res.missed == []


# -- the C core's argument checks --------------------------------------------

@pytest.fixture
def dirty():
    return _dirty_file(4)


def test_mkclean_range_checks_its_arguments_before_any_change(dirty):
    m, f, p, a = dirty
    core = m._core
    pfns = np.array([f.cached(i) for i in range(4)], np.uint64)
    with pytest.raises(GupError):                                  # not page-aligned
        core.mkclean_range(0, p.mm.id, a + 1, pfns)
    with pytest.raises(GupError):                                  # a pfn past the frames
        core.mkclean_range(0, p.mm.id, a, np.array([pfns[0], core.nr_frames], np.uint64))
    with pytest.raises(GupError):                                  # no such mm
        core.mkclean_range(0, 10_000, a, pfns)
    with pytest.raises(GupError):                                  # past the user VA
        core.mkclean_range(0, p.mm.id, (1 << 47) - P, pfns)
    core.irq_disable(0)
    try:
        with pytest.raises(GupError):                              # the flush would wait on us
            core.mkclean_range(0, p.mm.id, a, pfns)
    finally:
        core.irq_enable(0)
    assert all(p.mm.pte(a + i * P).write for i in range(4))       # nothing changed
    assert core.mkclean_range(0, p.mm.id, a, np.zeros(0, np.uint64)).tolist() == []


def test_mkclean_range_cleans_only_the_expected_folio(dirty):
    """An expected page that is not the mapped one (or none, 0) is left
    alone, as page_vma_mkclean_one() leaves another folio's entry."""
    m, f, p, a = dirty
    pfns = np.array([f.cached(i) for i in range(4)], np.uint64)
    wrong = pfns.copy()
    wrong[1], wrong[2] = pfns[3], 0
    assert m._core.mkclean_range(0, p.mm.id, a, wrong).tolist() == [1, 0, 0, 1]
    assert [p.mm.pte(a + i * P).write for i in range(4)] == [False, True, True, False]
    assert [p.mm.pte(a + i * P).dirty for i in range(4)] == [False, True, True, False]
    assert m._core.mkclean_range(0, p.mm.id, a, pfns).tolist() == [0, 1, 1, 0]


def test_folio_batch_calls_refuse_a_tail_or_free_frame_first(dirty):
    m, f, p, a = dirty
    core = m._core
    heads = np.array([f.cached(i) for i in range(4)], np.uint64)
    free = m.alloc_folio()
    core.folio_put(free, 1)
    tail = m.alloc_folio(C.PMD_ORDER) + 1
    for bad in (free, tail, core.nr_frames, C.ZERO_PFN):
        arr = np.append(heads, np.uint64(bad))
        with pytest.raises(GupError):
            core.folios_clear_dirty_for_io(arr)
        with pytest.raises(GupError):
            core.folios_flags_update(arr, 0, C.F_WRITEBACK)
    with pytest.raises(GupError):                                  # structural bits
        core.folios_flags_update(heads, C.F_HEAD, 0)
    with pytest.raises(GupError):
        core.frames_read(np.array([core.nr_frames], np.uint64))
    with pytest.raises(ValueError, match="pte_dirty"):
        core.folios_clear_dirty_for_io(heads, np.zeros(3, np.uint8))
    assert all(m.folio(int(h)).dirty for h in heads)               # nothing changed


def test_clear_dirty_for_io_moves_pte_dirtiness_and_starts_writeback(dirty):
    m, f, p, a = dirty
    core = m._core
    heads = np.array([f.cached(i) for i in range(4)], np.uint64)
    core.folios_clear_dirty_for_io(heads)                          # clean, under writeback
    core.folios_flags_update(heads, 0, C.F_WRITEBACK)
    old = core.folios_clear_dirty_for_io(heads, np.array([0, 1, 0, 1], np.uint8))
    assert [(int(o) & C.F_DIRTY) != 0 for o in old] == [False, True, False, True]
    flags = [core.frame_info(int(h)).flags for h in heads]
    assert [(fl & C.F_WRITEBACK) != 0 for fl in flags] == [False, True, False, True]
    assert not any(fl & (C.F_DIRTY | C.F_MKWRITE) for fl in flags)
    assert core.frames_read(heads).tolist() == [0x100 + i for i in range(4)]


# -- the disk image -----------------------------------------------------------

def test_disk_image_reads_holes_as_zero_and_writes_runs():
    d = DiskImage()
    assert d.get(5) == 0 and d[10 ** 9] == 0 and list(d.items()) == []
    idx = np.arange(CHUNK_PAGES - 3, CHUNK_PAGES + 3)              # across a chunk edge
    d.write_many(idx, idx.astype(np.uint64) * 2 + 1)
    d[7 * CHUNK_PAGES] = (1 << 64) - 1
    assert [d[int(i)] for i in idx] == [int(i) * 2 + 1 for i in idx]
    assert d[7 * CHUNK_PAGES] == (1 << 64) - 1
    d.discard(CHUNK_PAGES - 1, CHUNK_PAGES + 1)                    # a hole punched
    assert [d[int(i)] for i in idx] == [int(i) * 2 + 1 if not CHUNK_PAGES - 1 <= i <= CHUNK_PAGES
                                        else 0 for i in idx]
    d.discard(CHUNK_PAGES)                                         # truncated
    assert list(d.items()) == [(int(i), int(i) * 2 + 1) for i in idx[:2]]


@pytest.mark.parametrize("call, exc", [
    (lambda d: d.get(-1), ValueError), (lambda d: d.get("1"), TypeError),
    (lambda d: d.__setitem__(0, -1), ValueError), (lambda d: d.__setitem__(0, 1 << 64), ValueError),
    (lambda d: d.__setitem__(0, 1.5), TypeError),
    (lambda d: d.write_many(np.array([1, 2]), np.array([1], np.uint64)), ValueError),
    (lambda d: d.write_many(np.array([-1]), np.array([1], np.uint64)), ValueError),
    (lambda d: d.discard(-1), ValueError),
])
def test_disk_image_refuses_bad_input_unchanged(call, exc):
    d = DiskImage()
    d[3] = 9
    with pytest.raises(exc):
        call(d)
    assert list(d.items()) == [(3, 9)]


def test_cached_folios_small_and_large_caches_agree(monkeypatch):
    """_cached_folios answers a few folios in plain Python and many with
    numpy: the same (first page, head) pairs in page order either way, for
    small and PMD-sized folios and any [first, last)."""
    from pygup.kernel import writeback as W

    class Cache:            # what _cached_folios reads of an Inode
        def __init__(self, order, cache):
            self.order, self.page_cache = order, cache

    rng = random.Random(7)
    for _ in range(500):
        order = rng.choice([0, 0, C.PMD_ORDER])
        nr = 1 << order
        inode = Cache(order, {k * nr: rng.randrange(1 << 20)
                              for k in rng.sample(range(200), rng.randint(0, 90))})
        first = rng.randrange(0, 200 * nr)
        last = first + rng.randrange(0, 200 * nr)
        small = W._cached_folios(inode, first, last)
        monkeypatch.setattr(W, "_SMALL_CACHE", -1)
        large = W._cached_folios(inode, first, last)
        monkeypatch.undo()
        for a, b in zip(small, large):
            assert a.dtype == b.dtype and np.array_equal(a, b)
