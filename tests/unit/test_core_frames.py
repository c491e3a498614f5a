"""C core: the frame table, zones, allocator, refcounts, flags, content,
address_space records (csrc/frames.c)."""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from pygup._native import ffi, lib
from conftest import core_frame_info, core_pop_violations, core_stats

NFR = 4096
NMOV = 1024


def test_machine_rejects_bad_geometry():
    assert lib.pg_machine_new(1000, 0, 1, 0) == ffi.NULL       # not x512
    assert lib.pg_machine_new(1024, 1024, 1, 0) == ffi.NULL    # no NORMAL
    assert lib.pg_machine_new(1024, 100, 1, 0) == ffi.NULL
    assert lib.pg_machine_new(1024, 0, 0, 0) == ffi.NULL
    assert lib.pg_machine_new(1024, 0, lib.PG_MAX_CPUS + 1, 0) == ffi.NULL
    assert lib.pg_machine_new(1024, 0, 1, 7) == ffi.NULL
    m = lib.pg_machine_new(1024, 512, 2, 1)
    assert m != ffi.NULL
    assert lib.pg_machine_nr_cpus(m) == 2
    lib.pg_machine_free(m)


def test_frame_struct_fits_64_bytes(core_machine):
    st = core_stats(core_machine)
    assert st["nr_frames"] == NFR
    assert st["frame_bytes"] / NFR <= 64
    # zero page taken from NORMAL
    assert st["nr_free"] == [NFR - NMOV - 1, NMOV]


def test_alloc_order0_normal(core_machine):
    m = core_machine
    pfn = lib.pg_folio_alloc(m, 0, lib.PG_ZONE_NORMAL)
    assert 0 < pfn < NFR - NMOV
    i = core_frame_info(m, pfn)
    assert (i.refcount, i.mapcount, i.pincount, i.order, i.zone) == (1, 0, 0, 0, 0)
    assert i.flags == lib.PG_F_HEAD
    assert i.head == pfn and i.content == 0 and i.mapping == 0
    assert core_stats(m)["nr_free"][0] == NFR - NMOV - 2


def test_alloc_order9_movable(core_machine):
    m = core_machine
    head = lib.pg_folio_alloc(m, 9, lib.PG_ZONE_MOVABLE)
    assert head >= NFR - NMOV and head % 512 == 0
    h = core_frame_info(m, head)
    assert h.flags == lib.PG_F_HEAD and h.order == 9 and h.zone == 1
    t = core_frame_info(m, head + 77)
    assert t.flags & lib.PG_F_TAIL and not t.flags & lib.PG_F_HEAD
    assert t.head == head and t.refcount == 1 and t.order == 9
    assert core_stats(m)["nr_free"][1] == NMOV - 512
    assert lib.pg_folio_put(m, head + 5, 1) == 0   # put via a tail frees the folio
    assert core_frame_info(m, head + 77).flags == lib.PG_F_FREE
    assert core_stats(m)["nr_free"][1] == NMOV


def test_alloc_bad_args(core_machine):
    assert lib.pg_folio_alloc(core_machine, 1, 0) == -lib.PG_EINVAL
    assert lib.pg_folio_alloc(core_machine, 0, 2) == -lib.PG_EINVAL


def test_exhaustion_then_recovery(make_core_machine):
    m = make_core_machine(nr_frames=1024, nr_movable=512, nr_cpus=1)
    normal = [lib.pg_folio_alloc(m, 0, 0) for _ in range(511)]
    assert min(normal) > 0 and len(set(normal)) == 511
    assert lib.pg_folio_alloc(m, 0, 0) == -lib.PG_ENOMEM
    assert lib.pg_folio_alloc(m, 9, 0) == -lib.PG_ENOMEM
    huge = lib.pg_folio_alloc(m, 9, 1)
    assert huge == 512
    assert lib.pg_folio_alloc(m, 9, 1) == -lib.PG_ENOMEM
    assert lib.pg_folio_alloc(m, 0, 1) == -lib.PG_ENOMEM
    assert lib.pg_folio_put(m, normal[100], 1) == 0
    assert lib.pg_folio_alloc(m, 0, 0) == normal[100]
    assert lib.pg_folio_put(m, huge, 1) == 0
    assert lib.pg_folio_alloc(m, 0, 1) >= 512          # movable usable again


def test_order9_after_order0_churn(make_core_machine):
    m = make_core_machine(nr_frames=4096, nr_movable=2048, nr_cpus=1)
    rng = random.Random(5)
    pfns = [lib.pg_folio_alloc(m, 0, 1) for _ in range(2048)]
    assert len(set(pfns)) == 2048 and min(pfns) >= 2048
    assert lib.pg_folio_alloc(m, 9, 1) == -lib.PG_ENOMEM
    # free all but one frame of every block, in random order
    keep = {}
    for p in pfns:
        keep.setdefault(p // 512, p)
    rest = [p for p in pfns if keep[p // 512] != p]
    rng.shuffle(rest)
    for p in rest:
        assert lib.pg_folio_put(m, p, 1) == 0
    assert lib.pg_folio_alloc(m, 9, 1) == -lib.PG_ENOMEM   # every block pinned by one
    # a churn of order-0 traffic in between must not break the merge
    for _ in range(3):
        got = [lib.pg_folio_alloc(m, 0, 1) for _ in range(300)]
        for p in got:
            lib.pg_folio_put(m, p, 1)
    blk = sorted(keep)[2]
    assert lib.pg_folio_put(m, keep[blk], 1) == 0
    head = lib.pg_folio_alloc(m, 9, 1)
    assert head == blk * 512


def test_get_put_add_unless_zero(core_machine):
    m = core_machine
    pfn = lib.pg_folio_alloc(m, 0, 0)
    assert lib.pg_folio_get(m, pfn, 3) == 4
    assert lib.pg_folio_put(m, pfn, 2) == 2
    assert lib.pg_folio_put(m, pfn, 2) == 0            # last put frees
    assert core_frame_info(m, pfn).flags == lib.PG_F_FREE
    assert lib.pg_folio_get(m, pfn, 1) == -lib.PG_EINVAL   # never resurrect
    assert core_frame_info(m, pfn).refcount == 0
    assert lib.pg_folio_get(m, pfn, 0) == -lib.PG_EINVAL
    assert lib.pg_folio_put(m, pfn, -1) == -lib.PG_EINVAL


def test_put_below_zero_is_refused_and_recorded(core_machine):
    m = core_machine
    pfn = lib.pg_folio_alloc(m, 0, 0)
    assert lib.pg_folio_put(m, pfn, 2) == -lib.PG_EINVAL
    assert core_frame_info(m, pfn).refcount == 1
    assert lib.pg_violation_count(m) == 1
    msgs = core_pop_violations(m)
    assert len(msgs) == 1 and "refused" in msgs[0] and msgs[0].startswith("BUG")
    assert lib.pg_violation_count(m) == 0
    assert lib.pg_violation_total(m) == 1
    # a put on a free folio is the same bug
    assert lib.pg_folio_put(m, pfn, 1) == 0
    assert lib.pg_folio_put(m, pfn, 1) == -lib.PG_EINVAL
    assert len(core_pop_violations(m)) == 1


def test_violation_ring_overflow_is_counted(core_machine):
    m = core_machine
    pfn = lib.pg_folio_alloc(m, 0, 0)
    for _ in range(100):
        lib.pg_folio_put(m, pfn, 5)
    assert lib.pg_violation_count(m) == 100
    msgs = core_pop_violations(m)
    assert len(msgs) == 65 and "36 more" in msgs[-1]
    assert lib.pg_violation_count(m) == 0


def test_zero_page(core_machine):
    m = core_machine
    z = core_frame_info(m, lib.PG_ZERO_PFN)
    assert z.flags == lib.PG_F_HEAD | lib.PG_F_ZERO and z.refcount == 1
    assert lib.pg_folio_put(m, 0, 1) == 1
    assert lib.pg_folio_put(m, 0, 100) == 1
    assert lib.pg_folio_get(m, 0, 5) == 1
    assert lib.pg_frame_write(m, 0, 42) == -lib.PG_EPERM
    out = ffi.new("uint64_t *")
    assert lib.pg_frame_read(m, 0, out) == 0 and out[0] == 0
    assert lib.pg_folio_set_mapping(m, 0, 4, 0) == -lib.PG_EINVAL
    got = [lib.pg_folio_alloc(m, 0, 0) for _ in range(NFR - NMOV - 1)]
    assert 0 not in got
    assert lib.pg_folio_alloc(m, 0, 0) == -lib.PG_ENOMEM


def test_flags_folio_wide_and_per_page(core_machine):
    m = core_machine
    head = lib.pg_folio_alloc(m, 9, 0)
    old = lib.pg_folio_flags_update(m, head + 3, lib.PG_F_DIRTY | lib.PG_F_LRU, 0)
    assert old == lib.PG_F_TAIL
    assert core_frame_info(m, head).flags & lib.PG_F_DIRTY
    assert core_frame_info(m, head + 400).flags & lib.PG_F_DIRTY
    lib.pg_folio_flags_update(m, head + 3, lib.PG_F_ANON_EXCLUSIVE, 0)
    assert core_frame_info(m, head + 3).flags & lib.PG_F_ANON_EXCLUSIVE
    assert not core_frame_info(m, head + 4).flags & lib.PG_F_ANON_EXCLUSIVE
    assert not core_frame_info(m, head).flags & lib.PG_F_ANON_EXCLUSIVE
    old = lib.pg_folio_flags_update(m, head + 3, 0, lib.PG_F_ANON_EXCLUSIVE | lib.PG_F_DIRTY)
    assert old & lib.PG_F_ANON_EXCLUSIVE and old & lib.PG_F_DIRTY
    assert core_frame_info(m, head + 3).flags == lib.PG_F_TAIL | lib.PG_F_LRU
    for bad in (lib.PG_F_FREE, lib.PG_F_HEAD, lib.PG_F_TAIL, lib.PG_F_ZERO):
        assert lib.pg_folio_flags_update(m, head, bad, 0) == -lib.PG_EINVAL
        assert lib.pg_folio_flags_update(m, head, 0, bad) == -lib.PG_EINVAL
    free_pfn = lib.pg_folio_alloc(m, 0, 0)
    lib.pg_folio_put(m, free_pfn, 1)
    assert lib.pg_folio_flags_update(m, free_pfn, lib.PG_F_DIRTY, 0) == -lib.PG_EINVAL


def test_mapping_index_content_copy(core_machine):
    m = core_machine
    src = lib.pg_folio_alloc(m, 9, 0)
    dst = lib.pg_folio_alloc(m, 9, 0)
    assert lib.pg_folio_set_mapping(m, src + 9, (7 << 2) | lib.PG_MAPPING_ANON, 1234) == 0
    for pfn in (src, src + 9, src + 511):
        i = core_frame_info(m, pfn)
        assert i.mapping == (7 << 2) | 1 and i.index == 1234
    for k in range(512):
        assert lib.pg_frame_write(m, src + k, 1000 + k) == 0
    out = ffi.new("uint64_t *")
    assert lib.pg_frame_read(m, src + 17, out) == 0 and out[0] == 1017
    assert lib.pg_folio_copy(m, dst, src) == 0
    assert lib.pg_frame_read(m, dst + 511, out) == 0 and out[0] == 1511
    assert core_frame_info(m, dst).mapping == 0            # content only
    small = lib.pg_folio_alloc(m, 0, 0)
    assert lib.pg_folio_copy(m, small, src) == -lib.PG_EINVAL   # order differs
    assert lib.pg_folio_copy(m, dst + 1, src) == -lib.PG_EINVAL  # not a head
    # the last put scrubs content and mapping
    lib.pg_folio_put(m, src, 1)
    i = core_frame_info(m, src + 17)
    assert (i.content, i.mapping, i.index) == (0, 0, 0)
    assert lib.pg_frame_write(m, src, 1) == -lib.PG_EINVAL    # free frame
    assert lib.pg_folio_alloc(m, 9, 0) == src
    assert core_frame_info(m, src + 17).content == 0


def test_mapcount(core_machine):
    m = core_machine
    head = lib.pg_folio_alloc(m, 9, 0)
    assert lib.pg_frame_mapcount_add(m, head + 1, 2) == 2
    assert core_frame_info(m, head + 1).mapcount == 2
    assert core_frame_info(m, head).mapcount == 0          # per page
    assert lib.pg_frame_mapcount_add(m, head + 1, -3) == -lib.PG_EINVAL
    assert "below zero" in core_pop_violations(m)[0]
    assert lib.pg_frame_mapcount_add(m, head + 1, -2) == 0
    # freeing a still-mapped page is a bad page state
    p = lib.pg_folio_alloc(m, 0, 0)
    lib.pg_frame_mapcount_add(m, p, 1)
    assert lib.pg_folio_put(m, p, 1) == 0
    assert any("still mapped" in s for s in core_pop_violations(m))


@pytest.mark.parametrize("pfn", [NFR, NFR + 1, 2**63, 2**64 - 1])
def test_bounds_checks(core_machine, pfn):
    m = core_machine
    out = ffi.new("uint64_t *")
    info = ffi.new("struct pg_frame_info *")
    assert lib.pg_folio_get(m, pfn, 1) == -lib.PG_EINVAL
    assert lib.pg_folio_put(m, pfn, 1) == -lib.PG_EINVAL
    assert lib.pg_frame_info(m, pfn, info) == -lib.PG_EINVAL
    assert lib.pg_folio_flags_update(m, pfn, lib.PG_F_DIRTY, 0) == -lib.PG_EINVAL
    assert lib.pg_folio_set_mapping(m, pfn, 4, 0) == -lib.PG_EINVAL
    assert lib.pg_frame_mapcount_add(m, pfn, 1) == -lib.PG_EINVAL
    assert lib.pg_frame_read(m, pfn, out) == -lib.PG_EINVAL
    assert lib.pg_frame_write(m, pfn, 1) == -lib.PG_EINVAL
    assert lib.pg_folio_copy(m, pfn, 1) == -lib.PG_EINVAL
    assert lib.pg_folio_copy(m, 1, pfn) == -lib.PG_EINVAL


def test_snapshot_into_numpy(core_machine):
    m = core_machine
    a = lib.pg_folio_alloc(m, 0, 0)
    h = lib.pg_folio_alloc(m, 9, 1)
    lib.pg_folio_get(m, a, 2)
    lib.pg_frame_mapcount_add(m, h + 2, 1)
    lib.pg_frame_write(m, h + 3, 99)
    lib.pg_folio_set_mapping(m, h, 8, 0)
    ref = np.zeros(NFR, dtype=np.int32)
    mapc = np.zeros(NFR, dtype=np.int32)
    flags = np.zeros(NFR, dtype=np.uint32)
    mapping = np.zeros(NFR, dtype=np.uint64)
    content = np.zeros(NFR, dtype=np.uint64)
    assert lib.pg_frames_snapshot(
        m, ffi.from_buffer("int32_t[]", ref), ffi.from_buffer("int32_t[]", mapc),
        ffi.from_buffer("uint32_t[]", flags), ffi.from_buffer("uint64_t[]", mapping),
        ffi.from_buffer("uint64_t[]", content)) == 0
    assert ref[a] == 3 and ref[h] == 1 and ref[h + 1] == 0 and ref[0] == 1
    assert mapc[h + 2] == 1 and content[h + 3] == 99 and mapping[h] == 8
    assert flags[0] == lib.PG_F_HEAD | lib.PG_F_ZERO
    assert flags[h + 1] == lib.PG_F_TAIL
    assert (flags & lib.PG_F_FREE).astype(bool).sum() == NFR - 1 - 1 - 512
    # NULL skips a field
    ref2 = np.full(NFR, -7, dtype=np.int32)
    assert lib.pg_frames_snapshot(m, ffi.from_buffer("int32_t[]", ref2),
                                  ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL) == 0
    assert (ref2 == ref).all()


def test_threaded_alloc_free_stress(make_core_machine):
    """Native threads (cffi drops the GIL) allocate and free concurrently:
    no frame is ever handed out twice and every frame comes back."""
    m = make_core_machine(nr_frames=8192, nr_movable=4096, nr_cpus=4)
    before = core_stats(m)["nr_free"]
    errors = []

    def worker(tid):
        rng = random.Random(tid)
        held = []
        try:
            for it in range(3000):
                if held and (rng.random() < 0.45 or len(held) > 40):
                    pfn, order = held.pop(rng.randrange(len(held)))
                    val = ffi.new("uint64_t *")
                    lib.pg_frame_read(m, pfn, val)
                    if val[0] != (tid << 32) | it_of[pfn]:
                        errors.append(f"pfn {pfn} content changed under owner")
                    lib.pg_folio_put(m, pfn, 1)
                else:
                    order = 9 if rng.random() < 0.05 else 0
                    zone = rng.randrange(2)
                    pfn = lib.pg_folio_alloc(m, order, zone)
                    if pfn == -lib.PG_ENOMEM:
                        continue
                    if pfn < 0:
                        errors.append(f"alloc error {pfn}")
                        return
                    it_of[pfn] = it
                    lib.pg_frame_write(m, pfn, (tid << 32) | it)
                    held.append((pfn, order))
            for pfn, _ in held:
                lib.pg_folio_put(m, pfn, 1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    it_of = {}
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert core_stats(m)["nr_free"] == before
    # and the re-merge happened: every block can be a huge folio again
    heads = [lib.pg_folio_alloc(m, 9, 1) for _ in range(8)]
    assert all(h >= 0 for h in heads)


# ---- address_space records ---------------------------------------------

def test_as_records(core_machine):
    m = core_machine
    a = lib.pg_as_new(m, lib.PG_AS_SHMEM)
    b = lib.pg_as_new(m, 0)
    assert a >= 1 and b >= 1 and a != b
    assert lib.pg_as_kind(m, a) == lib.PG_AS_SHMEM
    assert lib.pg_as_kind(m, b) == 0
    assert core_stats(m)["as_live"] == 2
    assert lib.pg_as_new(m, 0x100) == -lib.PG_EINVAL
    assert lib.pg_as_release(m, a) == 0
    assert lib.pg_as_kind(m, a) == -lib.PG_ENOENT
    assert lib.pg_as_release(m, a) == -lib.PG_EINVAL    # double release
    assert core_stats(m)["as_live"] == 1
    for bad in (0, 10**6, 2**64 - 1):
        assert lib.pg_as_kind(m, bad) == -lib.PG_EINVAL
        assert lib.pg_as_release(m, bad) == -lib.PG_EINVAL
    assert lib.pg_as_kind(m, b + 5) == -lib.PG_EINVAL    # never handed out


def test_frames_mapcount_reads_a_range_and_refuses_one_past_the_end(core_machine):
    """pg_frames_mapcount: each frame's own mapcount, as pg_frame_info reads
    it; a range past the last frame is -EINVAL before anything is stored."""
    m = core_machine
    for pfn, delta in ((10, 1), (11, 3), (13, 2)):
        lib.pg_frame_mapcount_add(m, pfn, delta)
    out = ffi.new("int32_t[]", 6)
    assert lib.pg_frames_mapcount(m, 9, 6, out) == 0
    assert list(out) == [0, 1, 3, 0, 2, 0]
    assert [core_frame_info(m, p).mapcount for p in range(9, 15)] == list(out)
    out[0] = 77
    assert lib.pg_frames_mapcount(m, NFR - 2, 3, out) == -lib.PG_EINVAL
    assert lib.pg_frames_mapcount(m, NFR + 1, 0, out) == -lib.PG_EINVAL
    assert lib.pg_frames_mapcount(m, 0, -1, out) == -lib.PG_EINVAL
    assert lib.pg_frames_mapcount(m, 0, 1, ffi.NULL) == -lib.PG_EINVAL
    assert out[0] == 77
    assert lib.pg_frames_mapcount(m, NFR, 0, ffi.NULL) == 0
    for pfn, delta in ((10, -1), (11, -3), (13, -2)):
        lib.pg_frame_mapcount_add(m, pfn, delta)
