"""The fuzz harness's refcount audit in C (csrc/mm/audit.c,
``pg_audit_refcounts``) against its numpy twin
(``World.check_refcounts_reference``): the same verdict, word for word, on
the states seeded sequences reach and on states with a planted error; bad
arguments refused before any work; nothing changes."""
from __future__ import annotations


import numpy as np
import pytest

from pygup.errors import GupError
from pygup.tools.fuzz.world import Violation, World

from conftest import fuzz_walk

pytestmark = pytest.mark.fuzz


def verdict(fn):
    try:
        fn()
    except Violation as v:
        return v.invariant, v.detail, v.frame
    return None


def both(world: World):
    c, ref = verdict(world.check_refcounts), verdict(world.check_refcounts_reference)
    assert c == ref
    return c


@pytest.mark.parametrize("seed", range(6))
def test_c_audit_agrees_with_the_numpy_audit_on_seeded_states(seed):
    """Every step of a sequence (THP, hugetlb, page cache, pins and gets
    held, callers' holds, forks): both clean, or both the same violation."""
    seen = 0
    for world in fuzz_walk(seed, 200):
        both(world)
        seen += 1
    assert seen > 0


def test_c_audit_agrees_where_a_switch_breaks_the_refcounts():
    """unpin_no_bias (the unpin forgets GUP_PIN_COUNTING_BIAS): the audit
    fires, in C and in numpy, with the same frame and numbers."""
    fired = 0
    for seed in range(12):
        for world in fuzz_walk(seed, 300, ["unpin_no_bias"]):
            if both(world) is not None:
                fired += 1
                break
    assert fired


def _anon_world():
    w = World("6.5")
    p = w.procs[0].p
    addr = p.mmap(4 * 4096, 3, 0x22)     # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    for i in range(4):
        p.write(addr + i * 4096, i + 1)
    return w, p, addr


def test_an_extra_reference_is_found_by_both():
    w, p, addr = _anon_world()
    assert both(w) is None
    pfn = p.mm.pte(addr + 4096).pfn
    w.m._core.folio_get(pfn)
    got = both(w)
    assert got is not None and got[0] == "refcount-balance" and got[2] == pfn
    assert "owners hold 1 (1 frames differ)" in got[1]
    w.m._core.folio_put(pfn)
    assert both(w) is None


def test_an_extra_mapcount_is_found_by_both():
    w, p, addr = _anon_world()
    pfn = p.mm.pte(addr).pfn
    w.m._core.mapcount_add(pfn, 1)
    got = both(w)
    assert got is not None and got[2] == pfn and "page tables map it 1 times" in got[1]
    w.m._core.mapcount_add(pfn, -1)
    assert both(w) is None


@pytest.mark.parametrize("pinned", [True, False])
def test_a_hold_the_harness_forgot_is_found_by_both(pinned):
    """A pin counts GUP_PIN_COUNTING_BIAS on a small folio, a get one: a
    hold the harness no longer records leaves its references unowned."""
    from pygup.flags import FOLL
    from pygup.tools.fuzz.world import Held
    w, p, addr = _anon_world()
    mm = p.mm
    n, pages = (mm.pin_user_pages(addr, 2, FOLL.WRITE) if pinned
                else mm.get_user_pages(addr, 2, FOLL.WRITE))
    assert n == 2
    w.held.append(Held(w.procs[0], None, 0, pages, int(FOLL.WRITE)))
    assert both(w) is None
    w.held.clear()
    got = both(w)
    assert got is not None and "(2 frames differ)" in got[1]
    want = 1 + (1024 if pinned else 1)
    assert f"refcount {want}, owners hold 1 " in got[1]


def test_the_audit_changes_nothing():
    w, p, addr = _anon_world()
    before = w.m._core.snapshot()
    w.m._core.folio_get(p.mm.pte(addr).pfn)
    mid = w.m._core.snapshot()
    both(w)
    after = w.m._core.snapshot()
    assert not np.array_equal(before["refcount"], mid["refcount"])
    for k in mid:
        assert np.array_equal(mid[k], after[k]), k


def test_bad_arguments_are_refused_before_the_call():
    w, p, _ = _anon_world()
    core = w.m._core
    mms = [p.mm.id]
    with pytest.raises(ValueError, match="past the last frame"):
        core.audit_refcounts(mms, [core.nr_frames], [core.AUDIT_REF])
    with pytest.raises(ValueError, match="2 pfns but 1 kinds"):
        core.audit_refcounts(mms, [1, 2], [core.AUDIT_REF])
    with pytest.raises(ValueError, match="unknown owner kind"):
        core.audit_refcounts(mms, [1], [7])
    with pytest.raises(ValueError, match="flat"):
        core.audit_refcounts(mms, [[1]], [[0]])
    with pytest.raises(GupError):                  # a stale mm id: the core says EINVAL
        core.audit_refcounts([p.mm.id + 1], [], [])
    assert both(w) is None


def test_the_core_refuses_bad_arguments_itself():
    """Python's checks are a shortcut: the C entry point re-checks every
    argument and answers -EINVAL before any work."""
    from pygup._native import ffi, lib
    w, p, _ = _anon_world()
    core = w.m._core
    m = core._m
    out = ffi.new("struct pg_audit_report *")
    mms = ffi.new("uint64_t[]", [p.mm.id])
    leaves = ffi.new("int64_t[]", 1)
    n = 2 * core.nr_frames
    ws = ffi.new("int64_t[]", n)
    bad_pfn = ffi.new("uint64_t[]", [core.nr_frames])
    kind = ffi.new("uint8_t[]", [0])
    einval = -lib.PG_EINVAL
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, bad_pfn, kind, 1, ws, n, out) == einval
    bad_kind = ffi.new("uint8_t[]", [lib.PG_AUDIT_HOLD_PIN + 1])
    ok_pfn = ffi.new("uint64_t[]", [1])
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ok_pfn, bad_kind, 1, ws, n, out) == einval
    assert lib.pg_audit_refcounts(m, mms, -1, leaves, ok_pfn, kind, 1, ws, n, out) == einval
    assert lib.pg_audit_refcounts(m, ffi.NULL, 1, leaves, ok_pfn, kind, 1, ws, n, out) == einval
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ok_pfn, kind, 1, ws, n, ffi.NULL) == einval
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ffi.NULL, kind, 1, ws, n, out) == einval
    # the work space: present and large enough (two entries per frame)
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ok_pfn, kind, 1, ffi.NULL, n, out) == einval
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ok_pfn, kind, 1, ws, n - 1, out) == einval
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ok_pfn, kind, 1, ws, -1, out) == einval
    stale = ffi.new("uint64_t[]", [p.mm.id + 1])
    assert lib.pg_audit_refcounts(m, stale, 1, leaves, ok_pfn, kind, 0, ws, n, out) == einval
    ws[0] = 99          # whatever the work space held: overwritten
    assert lib.pg_audit_refcounts(m, mms, 1, leaves, ok_pfn, kind, 0, ws, n, out) == 0
    assert out.kind == lib.PG_AUDIT_OK and leaves[0] == 4


def test_pin_accounting_from_the_audit_agrees_with_its_own_count():
    """check_refcounts returns the pinned pages the holds hold (the zero
    page left out): check_pin_accounting given it, and counting itself,
    reach the same verdict on every state of seeded sequences."""
    seen = 0
    for seed in range(4):
        for world in fuzz_walk(seed, 200):
            pinned = world.check_refcounts()
            assert verdict(lambda: world.check_pin_accounting(pinned)) == \
                verdict(world.check_pin_accounting)
            seen += 1
    assert seen > 0


def test_a_pin_the_counters_missed_is_found_either_way():
    w, p, addr = _anon_world()
    from pygup.flags import FOLL
    from pygup.tools.fuzz.world import Held
    n, pages = p.mm.pin_user_pages(addr, 2, FOLL.WRITE)
    w.held.append(Held(w.procs[0], None, 0, pages, int(FOLL.WRITE)))
    pinned = w.check_refcounts()
    assert pinned == 2
    w.check_pin_accounting(pinned)
    # a third pinned page the statistics never counted
    assert verdict(lambda: w.check_pin_accounting(pinned + 1))[0] == "pin-accounting"
    pages.released = True          # released, still listed: no longer live
    assert verdict(lambda: w.check_pin_accounting(pinned))[0] == "pin-accounting"
    assert verdict(w.check_pin_accounting)[0] == "pin-accounting"
