"""Failure injection (csrc/lib/fault_inject.c): each knob makes the nth
allocation of its kind fail once, as a real allocation failure does
(-ENOMEM), and leaves the core consistent: nothing leaks, no invariant
breaks, the next allocation works."""
from __future__ import annotations

import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup._native import C, lib
from pygup.errors import GupError

RW_PTE = C.PTE_PRESENT | C.PTE_USER | C.PTE_WRITE | C.PTE_ACCESSED | C.PTE_DIRTY


@pytest.fixture
def m():
    return Machine(memory="64MiB", movable="8MiB", cpus=2)


def _enomem(fn, *args):
    with pytest.raises(GupError) as ei:
        fn(*args)
    assert ei.value.errno == errno.ENOMEM


def test_nth_folio_allocation_fails_once(m):
    core = m._core
    free0 = core.stats()["nr_free_normal"]
    core.fail_nth("folio", 3)
    a, b = core.folio_alloc(0, 0), core.folio_alloc(0, 0)
    assert core.fail_pending("folio") == 1
    _enomem(core.folio_alloc, 0, 0)
    assert core.fail_fired("folio") == 1 and core.fail_pending("folio") == 0
    c = core.folio_alloc(0, 0)                              # once only
    assert len({a, b, c}) == 3
    assert core.stats()["nr_free_normal"] == free0 - 3      # the failure took nothing
    for pfn in (a, b, c):
        core.folio_put(pfn)
    assert core.stats()["nr_free_normal"] == free0
    assert core.violations() == []


def test_nth_table_allocation_fails_once(m):
    core = m._core
    live0 = core.stats()["table_pages_live"]
    _ok = core.mm_new()
    core.fail_nth("table", 1)
    _enomem(core.mm_new)                                    # its PGD
    assert core.stats()["table_pages_live"] == live0 + 1
    mm = core.mm_new()                                      # the slot was given back
    pfn = core.folio_alloc(0, 0)
    addr = 0x7f0000000000
    core.fail_nth("table", 2)                               # PUD ok, the PMD table fails
    _enomem(core.pte_set, mm, addr, (pfn << C.PAGE_SHIFT) | RW_PTE, C.LEVEL_PTE)
    assert core.pte_lookup(mm, addr) == (0, 0)              # nothing half-installed
    core.pte_set(mm, addr, (pfn << C.PAGE_SHIFT) | RW_PTE, C.LEVEL_PTE)
    core.mapcount_add(pfn, 1)
    assert core.pte_lookup(mm, addr)[0] == C.LEVEL_PTE
    assert core.fail_fired("table") == 2
    for x in (mm, _ok):
        core.mm_destroy(0, x)
    core.rcu_barrier(0)
    st = core.stats()
    assert st["table_pages_live"] == live0 and st["table_pages_pending"] == 0
    assert core.frame_info(pfn).flags & C.F_FREE            # the zap freed the page
    assert core.violations() == []


def test_nth_address_space_allocation_fails_once(m):
    core = m._core
    live0 = core.stats()["as_live"]
    core.fail_nth("as", 2)
    one = core.as_new(C.AS_SHMEM)
    _enomem(core.as_new, C.AS_SHMEM)
    two = core.as_new(0)
    assert core.as_kind(one) == C.AS_SHMEM and core.as_kind(two) == 0
    assert core.stats()["as_live"] == live0 + 2
    assert core.fail_fired("as") == 1 and core.fail_fired() == 1


def _pinned_anon_range(core, mm, base, n):
    pfns = []
    for i in range(n):
        pfn = core.folio_alloc(0, 0)
        core.set_mapping(pfn, (3 << 2) | C.MAPPING_ANON, i)
        core.flags_update(pfn, C.F_ANON_EXCLUSIVE, 0)
        core.pte_set(mm, base + i * C.PAGE_SIZE, (pfn << C.PAGE_SHIFT) | RW_PTE, C.LEVEL_PTE)
        core.mapcount_add(pfn, 1)
        assert core.try_grab_page(pfn, True) == 0           # pinned: the child gets a copy
        pfns.append(pfn)
    return pfns


@pytest.mark.parametrize("kind", ["folio", "table"])
def test_fork_copy_under_injected_failure_stays_consistent(m, kind):
    """fork's copy of pinned anon pages (copy_present_page) needs a folio
    per page and the child's tables.  A failed folio allocation falls back
    to the other zone, as the allocator does; a failed table allocation
    stops the copy with -ENOMEM.  Either way the parent's seqcount is closed
    and tearing both mms down gives every frame and table back."""
    core = m._core
    st0 = core.stats()
    free0 = st0["nr_free_normal"] + st0["nr_free_movable"]
    src, dst = core.mm_new(), core.mm_new()
    base, n = 0x10000000, 4
    pfns = _pinned_anon_range(core, src, base, n)
    core.fail_nth(kind, 2)
    args = (0, src, dst, base, base + n * C.PAGE_SIZE, True, True, (4 << 2) | C.MAPPING_ANON)
    if kind == "folio":
        assert core.copy_range(*args) == n                 # the fallback zone served it
        zones = sorted(core.frame_info(pfn).zone for _, pfn in
                       [(a, int(pte) >> C.PAGE_SHIFT) for a, pte in
                        zip(*core.range_leaves(dst, base, base + n * C.PAGE_SIZE))])
        assert zones.count(C.ZONE_NORMAL) == 1 and zones.count(C.ZONE_MOVABLE) == n - 1
    else:
        _enomem(core.copy_range, *args)                    # the child's PMD table
    assert core.fail_fired(kind) == 1
    assert core.mm_wp_seq(src) % 2 == 0                     # the seqcount is closed again
    for pfn in pfns:
        core.gup_put(pfn, 1, True)
    core.mm_destroy(0, dst)
    core.mm_destroy(0, src)
    core.rcu_barrier(0)
    st = core.stats()
    assert st["nr_free_normal"] + st["nr_free_movable"] == free0
    assert st["table_pages_live"] == st0["table_pages_live"]
    assert st["pins_acquired"] == st["pins_released"]
    assert core.violations() == []


def test_a_fault_that_cannot_allocate_leaves_the_machine_consistent(m):
    p = m.spawn()
    a = p.mmap(16 * C.PAGE_SIZE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    core = m._core
    for kind in ("table", "folio"):
        core.fail_nth(kind, 1)
        try:
            ret, pages = p.mm.pin_user_pages(a, 4, FOLL.WRITE)
        except GupError as e:                              # the model may give up ...
            assert e.errno == errno.ENOMEM
        else:                                              # ... or retry elsewhere
            if ret > 0:
                p.mm.unpin_user_pages(pages)
            else:
                assert ret == -errno.ENOMEM
        assert core.fail_fired(kind) == 1
        m.check()
        a += 4 * C.PAGE_SIZE


def test_knob_arguments(m):
    core = m._core
    with pytest.raises(ValueError, match="unknown kind 'page'.*folio"):
        core.fail_nth("page", 1)
    with pytest.raises(ValueError):
        core.fail_nth("folio", -1)
    with pytest.raises(TypeError):
        core.fail_nth("folio", 1.5)
    with pytest.raises(ValueError):
        core.fail_fired("nope")
    core.fail_nth("folio", 1)
    core.fail_nth("folio", 0)                               # off again
    pfn = core.folio_alloc(0, 0)
    assert core.fail_fired() == 0 and pfn > 0
    raw = core._m
    for kind in (-1, C.FAIL_NR, 2**31 - 1):
        assert lib.pg_fail_nth(raw, kind, 1) == -C.EINVAL
        assert lib.pg_fail_fired(raw, kind) == -C.EINVAL
        assert lib.pg_fail_pending(raw, kind) == -C.EINVAL
    assert lib.pg_fail_nth(raw, C.FAIL_AS, -5) == -C.EINVAL
    # a bad call does not consume the countdown
    core.fail_nth("folio", 1)
    assert lib.pg_folio_alloc(raw, 3, 0) == -C.EINVAL
    _enomem(core.folio_alloc, 0, 0)
