"""The anonymous fault in batches (csrc/mm/fault.c) against the Python
fault path it stands for (kernel/fault.py, ``Kernel.fault_batch = False``):
the same random world driven twice -- anonymous mappings of random shapes
(read-only, read-write, PROT_NONE, MADV_HUGEPAGE under each THP setting,
forked, partly touched) faulted in by pin_user_pages, get_user_pages,
MAP_POPULATE, mlock and MADV_POPULATE_(READ|WRITE) -- must end in the same
state: every call's result, every PTE, every frame's refcount, mapcount,
flags, mapping, index and content.  Then the C core's own argument checks,
and allocation failures midway through a batch."""
from __future__ import annotations

import errno
import random

import numpy as np
import pytest

from conftest import comparable_snapshot
from pygup import FOLL, MADV, MAP, PROT, GupError, Machine
from pygup._native import C

P = 4096
ANON = MAP.PRIVATE | MAP.ANONYMOUS
PROTS = (PROT.READ | PROT.WRITE, PROT.READ | PROT.WRITE, PROT.READ, PROT.NONE)


def _world(seed: int, batch: bool, fail_at: int = 0):
    """Build and drive one world; returns what it observed."""
    rng = random.Random(seed)
    m = Machine(memory="48MiB", movable="8MiB", cpus=2)
    m.kernel.fault_batch = batch
    m.thp = rng.choice(("never", "madvise", "always"))
    p = m.spawn()
    seen: list = []
    regions = []
    for _ in range(rng.randint(2, 5)):
        pages = rng.choice((1, 3, 17, 130, 600))
        prot = rng.choice(PROTS)
        flags = ANON | (MAP.POPULATE if rng.random() < 0.2 else 0)
        a = p.mmap(pages * P, prot, flags)
        if rng.random() < 0.3:
            p.madvise(a, pages * P, MADV.HUGEPAGE)
        if prot & PROT.WRITE:
            for _ in range(rng.randint(0, 4)):        # holes and present pages mixed
                p.write(a + rng.randrange(pages) * P, rng.randrange(1, 1 << 30))
        regions.append((a, pages, prot))
    if fail_at:
        m._core.fail_nth("folio", fail_at)
    child = p.fork() if rng.random() < 0.3 else None
    pins = []
    for _ in range(rng.randint(3, 8)):
        a, pages, prot = rng.choice(regions)
        off = rng.randrange(pages)
        n = rng.randint(1, pages - off)
        lo = a + off * P
        what = rng.choice(("pin", "pin_w", "get", "populate_r", "populate_w", "mlock", "fault"))
        try:
            if what in ("pin", "pin_w"):
                got, pages_ = p.mm.pin_user_pages(lo, n, FOLL.WRITE if what == "pin_w" else 0)
                pins.append(pages_)
                seen.append((what, got, list(pages_.pfns)))
            elif what == "get":
                got, pages_ = p.mm.get_user_pages(lo, n, FOLL.WRITE if prot & PROT.WRITE else 0)
                seen.append((what, got, list(pages_.pfns)))
                p.mm.put_page(pages_)
            elif what.startswith("populate"):
                p.madvise(lo, n * P, MADV.POPULATE_WRITE if what == "populate_w"
                          else MADV.POPULATE_READ)
                seen.append((what, 0))
            elif what == "mlock":
                p.mlock(lo, n * P)
                seen.append((what, 0))
            else:
                got, _ = p.mm.get_user_pages(lo, n, 0, pages=False)
                seen.append((what, got))
        except GupError as e:
            seen.append((what, "errno", e.errno))
    seen.append(("fired", m._core.fail_fired("folio")))
    m._core.fail_nth("folio", 0)
    for mm in (p.mm,) + ((child.mm,) if child else ()):
        for vma in list(mm.vmas):
            for addr in range(vma.vm_start, vma.vm_end, P):
                seen.append((mm.id, addr, mm.kernel.core.pte_lookup(mm.id, addr)))
    snap = comparable_snapshot(m)
    used = np.nonzero(snap["refcount"])[0]
    index = [m._core.frame_info(int(pfn)).index for pfn in used]
    return m, p, child, pins, seen, snap, index


def _same(seed: int, fail_at: int = 0):
    ref = _world(seed, batch=False, fail_at=fail_at)
    bat = _world(seed, batch=True, fail_at=fail_at)
    assert bat[4] == ref[4], f"seed {seed}: calls or PTEs differ"
    for key in ref[5]:
        assert np.array_equal(bat[5][key], ref[5][key]), f"seed {seed}: frame {key} differs"
    assert bat[6] == ref[6], f"seed {seed}: folio indexes differ"
    return ref, bat


@pytest.mark.parametrize("seed", range(24))
def test_batch_matches_the_python_fault_path(seed):
    _same(seed)


def _balanced(world) -> None:
    """Every page of the world goes back when its pins and processes go."""
    m, p, child, pins, *_ = world
    for pages in pins:
        p.mm.unpin_user_pages(pages)
    for proc in (child, p):
        if proc is not None:
            proc.exit()
    st = m._core.stats()
    assert st["nr_free_normal"] + st["nr_free_movable"] == m._core.nr_frames - 1, \
        "frames leaked"            # all but the zero page
    m.check()


@pytest.mark.parametrize("seed", range(12))
def test_allocation_failure_midway_stops_both_alike_and_balanced(seed):
    for fail_at in (1, 2, 5, 40, 300):
        ref, bat = _same(seed, fail_at)
        _balanced(ref)
        _balanced(bat)


def _fresh():
    m = Machine(memory="16MiB", movable="4MiB", cpus=1)
    p = m.spawn()
    return m, p


def test_a_failed_page_midway_ends_gup_short_with_what_it_did():
    m, p = _fresh()
    a = p.mmap(64 * P, PROT.READ | PROT.WRITE, ANON)
    m._core.fail_nth("folio", 11)    # the 11th page's ZONE_MOVABLE try fails over to normal
    got, pages = p.mm.pin_user_pages(a, 64, FOLL.WRITE)
    assert m._core.fail_fired("folio") == 1
    assert got == 64                  # the zone fallback absorbed it, as the kernel's does
    p.mm.unpin_user_pages(pages)
    m2 = Machine(memory="16MiB", movable="0MiB", cpus=1)
    p2 = m2.spawn()
    b = p2.mmap(64 * P, PROT.READ | PROT.WRITE, ANON)
    # no movable zone: it is not in the zonelist, each page is one
    # ZONE_NORMAL allocation; the 5th fails
    m2._core.fail_nth("folio", 5)
    got, pages = p2.mm.pin_user_pages(b, 64, FOLL.WRITE)
    assert got == 4 and len(pages) == 4
    assert not p2.mm.pte(b + 4 * P).level and p2.mm.pte(b + 3 * P).level
    m3 = Machine(memory="16MiB", movable="0MiB", cpus=1)
    p3 = m3.spawn()
    c = p3.mmap(4 * P, PROT.READ | PROT.WRITE, ANON)
    m3._core.fail_nth("folio", 1)     # the first page: nothing done, -ENOMEM
    got, pages = p3.mm.pin_user_pages(c, 4, FOLL.WRITE)
    assert got == -errno.ENOMEM and len(pages) == 0 and not p3.mm.pte(c).level


def test_a_batch_maps_exclusive_anon_pages_and_zero_pages():
    m, p = _fresh()
    a = p.mmap(8 * P, PROT.READ | PROT.WRITE, ANON)
    vma = p.mm.find_vma(a)
    got, pages = p.mm.get_user_pages(a, 8, FOLL.WRITE)
    assert got == 8 and vma.own_anon_vma is not None
    for i, pfn in enumerate(pages.pfns):
        fi = m._core.frame_info(int(pfn))
        assert fi.mapping == (vma.own_anon_vma.id << 2) | C.MAPPING_ANON
        assert fi.index == vma.page_index(a + i * P) and fi.mapcount == 1
        assert fi.flags & C.F_ANON_EXCLUSIVE and fi.flags & C.F_LRU
        pte = p.mm.pte(a + i * P)
        assert pte.write and pte.dirty
    p.mm.put_page(pages)
    r = p.mmap(8 * P, PROT.READ, ANON)
    got, _ = p.mm.get_user_pages(r, 8, 0, pages=False)
    assert got == 8 and all(p.mm.pte(r + i * P).pfn == C.ZERO_PFN for i in range(8))


def test_the_c_core_checks_every_argument():
    m, p = _fresh()
    a = p.mmap(4 * P, PROT.READ | PROT.WRITE, ANON)
    core = m._core
    ok_bits = C.PTE_PRESENT | C.PTE_USER | C.PTE_ACCESSED | C.PTE_DIRTY | C.PTE_WRITE
    anon = (1 << 2) | C.MAPPING_ANON
    bad = [
        (p.mm.id, a + 1, 1, C.FAULT_WRITE, ok_bits, anon, 0),              # unaligned
        (p.mm.id, a, -1, C.FAULT_WRITE, ok_bits, anon, 0),                 # negative count
        (p.mm.id, a, 1, 0x80, ok_bits, anon, 0),                           # unknown how bit
        (p.mm.id, a, 1, C.FAULT_WRITE, ok_bits | (5 << C.PTE_PFN_SHIFT), anon, 0),  # a pfn
        (p.mm.id, a, 1, C.FAULT_WRITE, ok_bits | C.PTE_SPECIAL, anon, 0),  # special write
        (p.mm.id, a, 1, C.FAULT_WRITE, ok_bits & ~C.PTE_PRESENT, anon, 0),  # not present
        (p.mm.id, a, 1, C.FAULT_WRITE, ok_bits, 1 << 2, 0),                # not anon
        (p.mm.id, a, 1, 0, ok_bits | C.PTE_SPECIAL, 0, 0),                 # writable zero page
        (12345, a, 1, C.FAULT_WRITE, ok_bits, anon, 0),                    # no such mm
    ]
    before = core.snapshot()
    for args in bad:
        with pytest.raises(GupError) as e:
            core.fault_anon_range(*args)
        assert e.value.errno == errno.EINVAL, args
    after = core.snapshot()
    assert all(np.array_equal(before[k], after[k]) for k in before)   # nothing done
    assert not p.mm.pte(a).level
