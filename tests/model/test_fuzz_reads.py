"""The fuzz oracles' reads in bulk (csrc/mm/audit.c: ``pg_audit_frames``,
``pg_audit_counter``, ``pg_audit_anon_leaves``) against the one-at-a-time
reads they replace (``frame_info``, ``stats``, ``range_leaves``): the same
answers on the states seeded sequences reach; bad arguments refused before
any work.  And what the oracles built on them still catch: the refcount
audit's work space comes back zeroed whatever it found, ``held_heads``
sees a hold taken within the step, ``note_cows`` notes a copy no user write
made."""
from __future__ import annotations


import numpy as np
import pytest

from pygup._native import C
from pygup.errors import GupError
from pygup.flags import FOLL, MAP, PROT
from pygup.tools.fuzz.ops import apply
from pygup.tools.fuzz.world import PAGE, Held, Violation, World

from conftest import fuzz_walk

pytestmark = pytest.mark.fuzz


def anon_world(pages: int = 4):
    """A World whose first process maps ``pages`` private anonymous pages,
    each written (page i holds i + 1): (world, proc, region)."""
    world = World("6.5")
    proc = world.procs[0]
    apply(world, {"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False,
                  "prot": "rw", "pages": pages})
    region = proc.regions[0]
    for page in range(pages):
        proc.p.write(region.page_addr(page), page + 1)
    return world, proc, region


def states(seed: int, steps: int = 120, every: int = 15):
    for i, world in enumerate(fuzz_walk(seed, steps)):
        if i % every == every - 1:
            yield world


def interesting_pfns(world: World) -> list[int]:
    """Held pages, page-cache folios, every leaf's frame, and a spread of the rest."""
    core = world.m._core
    pfns = set(range(0, core.nr_frames, 97))
    for pages in world.holds():
        pfns.update(pages)
    for inode in list(world.m.kernel.inodes.values()):
        pfns.update(inode.page_cache.values())
    for proc in world.procs:
        _, ptes = core.range_leaves(proc.p.mm.id, 0, C.TASK_SIZE_MAX, cap=4096)
        pfns.update(int(p) for p in (ptes & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
                    if p < core.nr_frames)
    return sorted(p for p in pfns if p < core.nr_frames)


@pytest.mark.parametrize("seed", range(4))
def test_audit_frames_is_frame_info_in_bulk(seed):
    seen = 0
    for world in states(seed):
        core = world.m._core
        pfns = interesting_pfns(world)
        heads, flags, mappings, orders = core.audit_frames(pfns).tolist()
        for i, pfn in enumerate(pfns):
            fi = core.frame_info(pfn)
            assert (heads[i], flags[i], mappings[i], orders[i]) == \
                (fi.head, fi.flags, fi.mapping, fi.order), hex(pfn)
        seen += 1
    assert seen


def test_audit_frames_checks_its_argument():
    core = World("6.5").m._core
    assert core.audit_frames([]).shape == (4, 0)
    assert core.audit_frames(np.array([3, 3], np.uint64)).shape == (4, 2)
    for bad in ([core.nr_frames], [0, 2**63], [-1], [[1, 2]], ["x"]):
        with pytest.raises(ValueError, match="audit_frames"):
            core.audit_frames(bad)


@pytest.mark.parametrize("seed", range(3))
def test_audit_counter_is_the_stats_counter(seed):
    seen = 0
    for world in states(seed):
        core = world.m._core
        st = core.stats()
        assert core.audit_counter("nr_free_normal") == st["nr_free_normal"]
        assert core.audit_counter("nr_free_movable") == st["nr_free_movable"]
        assert core.audit_counter("pins_alive") == st["pins_acquired"] - st["pins_released"]
        seen += 1
    assert seen


def test_audit_counter_counts_pins_and_checks_its_argument():
    world = World("6.5")
    proc = world.procs[0].p
    addr = proc.mmap(4 * PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    proc.write(addr, 1)
    core = world.m._core
    assert core.audit_counter("pins_alive") == 0
    ret, pages = proc.mm.pin_user_pages(addr, 2, int(FOLL.WRITE))
    assert ret == 2 and core.audit_counter("pins_alive") == 2
    proc.mm.unpin_user_pages_dirty_lock(pages, False)
    assert core.audit_counter("pins_alive") == 0
    for bad in ("nr_free", "", 0, None):
        with pytest.raises(ValueError, match="audit_counter"):
            core.audit_counter(bad)


def anon_leaves_reference(core, mm: int, start: int, end: int) -> list[int]:
    """What note_cows read one leaf at a time before pg_audit_anon_leaves."""
    addrs, ptes = core.range_leaves(mm, start, end, cap=1 << 16)
    out = []
    for addr, pte in zip(addrs.tolist(), ptes.tolist()):
        if pte & C.PTE_SPECIAL:
            continue
        pfn = (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
        if core.frame_info(pfn).mapping & C.MAPPING_FLAGS == C.MAPPING_ANON:
            out.append(addr)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_audit_anon_leaves_is_range_leaves_filtered(seed):
    """Every region of every process (anon, file, THP, hugetlb, secretmem),
    each range on its own and overlapping ones in one call."""
    seen = 0
    for world in states(seed, every=10):
        core = world.m._core
        for proc in world.procs:
            mm = proc.p.mm.id
            ranges = [(r.addr, r.addr + r.pages * PAGE) for r in proc.regions]
            if not ranges:
                continue
            got = core.audit_anon_leaves(mm, ranges + ranges[:1])
            want = [anon_leaves_reference(core, mm, a, b) for a, b in ranges + ranges[:1]]
            assert got == want
            seen += sum(map(len, want))
    assert seen, "no anonymous page in any region: the comparison saw nothing"


def test_audit_anon_leaves_checks_its_arguments():
    world = World("6.5")
    core = world.m._core
    proc = world.procs[0].p
    addr = proc.mmap(2 * PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    proc.write(addr, 7)
    mm = proc.mm.id
    assert core.audit_anon_leaves(mm, []) == []
    assert core.audit_anon_leaves(mm, [(addr, addr)]) == [[]]
    assert core.audit_anon_leaves(mm, [(addr, addr + 2 * PAGE)]) == [[addr]]
    for bad in ([addr], [(addr,)], [(addr, addr + PAGE, 0)], [(-1, addr)]):
        with pytest.raises((ValueError, TypeError), match="audit_anon_leaves|start|end"):
            core.audit_anon_leaves(mm, bad)
    for bad in ([(addr + 1, addr + PAGE)], [(addr + PAGE, addr)], [(0, 2**64 - PAGE)]):
        with pytest.raises(GupError):
            core.audit_anon_leaves(mm, bad)
    # more addresses than the first buffer holds: all of them, in order
    big = proc.mmap(300 * PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(300):
        proc.write(big + i * PAGE, i)
    got = core.audit_anon_leaves(mm, [(big, big + 300 * PAGE), (0, C.TASK_SIZE_MAX)])
    assert got[0] == [big + i * PAGE for i in range(300)]
    assert got[1] == anon_leaves_reference(core, mm, 0, C.TASK_SIZE_MAX)
    child = world.m.spawn()
    stale = child.mm.id
    child.exit()
    with pytest.raises(GupError):
        core.audit_anon_leaves(stale, [(addr, addr + PAGE)])


def owned_head(world: World):
    """The head of a folio some leaf maps (not the zero page, not special)."""
    core = world.m._core
    for proc in world.procs:
        _, ptes = core.range_leaves(proc.p.mm.id, 0, C.TASK_SIZE_MAX, cap=4096)
        for pte in ptes.tolist():
            if pte & C.PTE_SPECIAL:
                continue
            fi = core.frame_info((pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT)
            if not fi.flags & C.F_ZERO:
                return fi.head
    return None


def test_the_audit_leaves_its_work_space_zeroed():
    """The audit no longer clears its 2 x nr_frames work space per call: it
    must leave it zeroed whatever it answers, or the next audit counts the
    last one's owners too (a clean state after a finding would fire)."""
    worlds = list(states(1, steps=60, every=20))
    assert worlds
    world = worlds[-1]
    core = world.m._core
    world.check_refcounts()
    assert not core._audit_scratch.any()
    # a planted extra reference: found, and the space is zeroed after
    pfn = owned_head(world)
    assert pfn is not None
    core.folio_get(pfn)
    with pytest.raises(Violation, match="refcount"):
        world.check_refcounts()
    assert not core._audit_scratch.any()
    core.folio_put(pfn)
    world.check_refcounts()                      # clean again: nothing carried over
    assert not core._audit_scratch.any()
    # a refused call (a stale mm) writes nothing
    child = world.m.spawn()
    stale = child.mm.id
    child.exit()
    with pytest.raises(GupError):
        core.audit_refcounts([stale], [], [])
    assert not core._audit_scratch.any()
    world.check_refcounts()


def test_the_audit_still_catches_an_imbalance_planted_between_steps():
    """A refcount change through the core between two steps shows at the
    next check_step, as the numpy twin sees it."""
    fired = 0
    for world in states(2, steps=90, every=30):
        core = world.m._core
        pfn = owned_head(world)
        if pfn is None:
            continue
        core.folio_get(pfn)
        with pytest.raises(Violation) as c:
            world.check_step()
        with pytest.raises(Violation) as ref:
            world.check_refcounts_reference()
        assert (c.value.invariant, c.value.detail) == (ref.value.invariant, ref.value.detail)
        core.folio_put(pfn)
        world.check_step()
        fired += 1
    assert fired


def test_held_heads_sees_a_hold_taken_and_released_within_the_step():
    """held_heads() is read once per step, but a hold taken (or dropped)
    since is never answered from the step's first read."""
    world, proc, region = anon_world()
    assert world.held_heads() == set()
    ret, pages = proc.p.mm.pin_user_pages(region.addr, 2, int(FOLL.WRITE | FOLL.LONGTERM))
    assert ret == 2
    hold = Held(proc, region, 0, pages, int(FOLL.WRITE | FOLL.LONGTERM))
    world.held.append(hold)                      # same step: no apply() in between
    want = {world.m._core.frame_info(p).head for p in pages}
    assert world.held_heads() == want
    # the over-refusal oracle no longer promises a long-term pin of those pages
    assert world.pin_must_succeed(proc, region, 0, 1, int(FOLL.LONGTERM)) is None
    assert world.pin_must_succeed(proc, region, 2, 2, int(FOLL.LONGTERM)) is not None
    world.release(hold, dirty=False)
    assert world.held_heads() == set()
    assert world.pin_must_succeed(proc, region, 0, 1, int(FOLL.LONGTERM)) is not None


def test_note_cows_notes_a_copy_no_user_write_made():
    """A read-only long-term pin of a private file page unshares it (an
    anonymous copy, gup_must_unshare()): the harness learns the copy keeps
    what the file held, so a later write to the file does not show there."""
    world = World("6.5")
    proc = world.procs[0]
    apply(world, {"op": "mmap", "proc": 0, "kind": "file", "file": 0, "shared": True,
                  "prot": "rw", "pages": 2})
    apply(world, {"op": "write", "proc": 0, "region": 0, "page": 0, "value": 0x51})
    apply(world, {"op": "mmap", "proc": 0, "kind": "file", "file": 0, "shared": False,
                  "prot": "r", "pages": 2})
    private = proc.regions[1]
    addr = private.page_addr(0)
    apply(world, {"op": "read", "proc": 0, "region": 1, "page": 0})
    assert addr not in proc.anon_truth
    apply(world, {"op": "pin", "proc": 0, "region": 1, "page": 0, "n": 1, "fast": False,
                  "write": False, "longterm": True})
    assert world.m._core.frame_info(proc.p.mm.pte(addr).pfn).mapping & C.MAPPING_FLAGS == \
        C.MAPPING_ANON, "the pin did not unshare: the test exercises nothing"
    assert proc.anon_truth.get(addr) == 0x51
    apply(world, {"op": "write", "proc": 0, "region": 0, "page": 0, "value": 0x52})
    apply(world, {"op": "read", "proc": 0, "region": 1, "page": 0})   # still 0x51: clean
    world.check_step()


def test_the_audit_counts_holds_taken_and_dropped_since_its_last_call():
    """audit_owners() reads the holds' pages again only when the holds
    changed: a pin taken or released between two audits is counted (or
    no longer), and a planted reference on a held page still shows."""
    world, proc, region = anon_world()
    world.check_refcounts()
    ret, pages = proc.p.mm.pin_user_pages(region.addr, 2, int(FOLL.WRITE))
    assert ret == 2
    hold = Held(proc, region, 0, pages, int(FOLL.WRITE))
    world.held.append(hold)
    assert world.check_refcounts() == 2          # the new hold's pins, counted
    world.check_refcounts()                      # and again, from the cached owners
    core = world.m._core
    core.folio_get(pages[0])
    with pytest.raises(Violation, match="refcount"):
        world.check_refcounts()
    core.folio_put(pages[0])
    world.release(hold, dirty=False)
    assert world.check_refcounts() == 0          # released: no longer an owner
    ret, more = proc.p.mm.get_user_pages(region.addr, 1, 0)
    assert ret == 1
    world.held.append(Held(proc, region, 0, more, 0))
    world.check_refcounts()
