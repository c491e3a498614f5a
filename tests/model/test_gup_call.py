"""Small GUP calls in one C call each (csrc/mm/gup_call.c, the short ways in
kernel/gup.py) against the general way they shortcut (``Kernel.small_calls
= False``): the same random world driven twice -- anonymous and file
mappings, present pages and holes, fork (COW-shared pages GUP-fast must
leave to the slow path), IRQs off, an exited process -- with every GUP
entry point, good and bad arguments mixed (negative, huge, unaligned and
overflowing addresses, nr_pages 0 / negative / past TASK_SIZE, bits no FOLL
flag defines, internal flags, numpy integers, bools), and every release
(unpin, put_page, double releases, the wrong kind, another machine's
pages).  Both must answer alike call by call -- the return value, the
pages, the exception's type and text -- and end in the same state: every
frame's refcount, mapcount, flags, mapping and content, and the pin
counters.  Then the C entries' own checks."""
from __future__ import annotations

import errno
import random

import numpy as np
import pytest

from conftest import comparable_snapshot
from pygup import FOLL, MAP, PROT, GupError, Machine
from pygup._native import GUP_BATCH, SMALL_CALL_PAGES, C, pfn_array
from pygup.errors import IrqsDisabledError
from pygup.kernel import gup
from pygup.kernel.gup import Pages

P = 4096
ANON = MAP.PRIVATE | MAP.ANONYMOUS
RW = PROT.READ | PROT.WRITE

FLAGS = (0, FOLL.WRITE, FOLL.WRITE | FOLL.LONGTERM, FOLL.LONGTERM, FOLL.FORCE | FOLL.WRITE,
         int(FOLL.WRITE | FOLL.LONGTERM), FOLL.NOFAULT, FOLL.WRITE | FOLL.NOFAULT,
         FOLL.PIN, FOLL.GET, FOLL.TOUCH, FOLL.REMOTE, FOLL.SPLIT_PMD | FOLL.WRITE,
         FOLL.PCI_P2PDMA | FOLL.LONGTERM, FOLL.DUMP, FOLL.ANON, 1 << 40, -1,
         np.uint32(1), True)
CALLS = ("pin_user_pages_fast", "get_user_pages_fast", "get_user_pages_fast_only",
         "pin_user_pages", "get_user_pages", "pin_user_pages_remote", "pin_user_pages_unlocked",
         "get_user_pages(pages=False)")


def _outcome(fn, *args):
    """What a call answered: its result, or its exception's type and text."""
    try:
        return ("ok", fn(*args))
    except (GupError, ValueError, TypeError, IrqsDisabledError, OverflowError) as e:
        return (type(e).__name__, getattr(e, "errno", None), str(e))


def _world(seed: int, small: bool, policy: str = "6.5"):
    rng = random.Random(seed)
    m = Machine(memory="32MiB", movable="4MiB", cpus=2, policy=policy)
    m.kernel.small_calls = small
    other = Machine(memory="16MiB", cpus=1)
    op = other.spawn()
    oa = op.mmap(4 * P, RW, ANON)
    op.write(oa, 5)
    foreign = op.mm.pin_user_pages_fast(oa, 1, FOLL.WRITE)[1]
    p = m.spawn()
    f = m.mount("ext4").create("f", 64 * P)
    regions = []
    for _ in range(rng.randint(2, 4)):
        pages = rng.choice((1, 3, 40, SMALL_CALL_PAGES + 6))
        a = p.mmap(pages * P, rng.choice((RW, RW, PROT.READ)), ANON)
        prot = p.mm.find_vma(a).vm_flags
        if prot & 0x2:                                      # VM_WRITE: touch some pages
            for i in range(pages):
                if rng.random() < 0.7:
                    p.write(a + i * P, rng.randrange(1, 1 << 30))
        regions.append((a, pages))
    fa = p.mmap(16 * P, RW, MAP.SHARED, file=f)
    for i in range(0, 16, 2):
        p.write(fa + i * P, i + 1)
    regions.append((fa, 16))
    child = p.fork() if rng.random() < 0.4 else None
    seen: list = []
    held: list = [foreign]
    for step in range(rng.randint(15, 40)):
        r = rng.random()
        if r < 0.55:
            a, pages = rng.choice(regions)
            off = rng.randrange(pages)
            start = a + off * P
            n = rng.randint(1, pages - off)
            if rng.random() < 0.15:
                n += rng.randint(1, 6)          # past the VMA: the next one, or a hole
            kind = rng.random()
            if kind < 0.08:
                start = rng.choice((-P, -1, 1 << 47, (1 << 64) - P, C.TASK_SIZE_MAX - P,
                                    start + 123, np.int64(start), True, 1.5))
            elif kind < 0.16:
                n = rng.choice((0, -1, 1 << 36, (C.TASK_SIZE_MAX >> 12) + 1, np.uint8(2),
                                SMALL_CALL_PAGES, SMALL_CALL_PAGES + 1, False))
            flags = rng.choice(FLAGS)
            call = rng.choice(CALLS)
            if call == "get_user_pages(pages=False)":      # fault-in only: no references
                def fn(start, n, flags, mm=p.mm):
                    return mm.get_user_pages(start, n, flags, pages=False)
            else:
                fn = getattr(p.mm, call)
            irqs_off = rng.random() < 0.06
            cpu = m.kernel.current_cpu()
            if irqs_off:
                m._core.irq_disable(cpu)
            try:
                out = _outcome(fn, start, n, flags)
            finally:
                if irqs_off:
                    m._core.irq_enable(cpu)
            if out[0] == "ok":
                ret, pg = out[1]
                seen.append((step, call, ret, list(pg.pfns), pg.pinned, pg.writable,
                             p.mm.has_pinned))
                held.append(pg)
            else:
                seen.append((step, call) + out + (p.mm.has_pinned,))
        elif r < 0.9 and held:
            pg = rng.choice(held)
            how = rng.choice(("unpin", "unpin", "put", "dirty", "clean_lock"))
            if how == "unpin":
                out = _outcome(p.mm.unpin_user_pages, pg)
            elif how == "put":
                out = _outcome(p.mm.put_page, pg)
            elif how == "dirty":
                out = _outcome(p.mm.unpin_user_pages_dirty_lock, pg, True)
            else:
                out = _outcome(p.mm.unpin_user_pages_dirty_lock, pg, False)
            seen.append((step, how, out if out[0] != "ok" else "ok", pg.released))
        elif r < 0.93:
            seen.append((step, "bad release", _outcome(p.mm.unpin_user_pages, [1, 2]),
                         _outcome(p.mm.put_page, None)))
        elif r < 0.96 and child is not None:
            a, pages = rng.choice(regions)
            out = _outcome(child.mm.pin_user_pages_fast, a, min(pages, 4), FOLL.WRITE)
            seen.append((step, "child", out[0]))
            if out[0] == "ok":
                held.append(out[1][1])
        elif r < 0.98:
            # pages that hold no pin: a Pages made by hand over a mapped frame
            pfn = p.mm.pte(regions[0][0]).pfn
            seen.append((step, "forged", _outcome(p.mm.unpin_user_pages, Pages(m.kernel, [pfn], True))))
        else:
            seen.append((step, "mm", p.mm.has_pinned))
    dead = m.spawn()
    da = dead.mmap(P, RW, ANON)
    dead.write(da, 1)
    dmm = dead.mm
    dead.exit()
    seen.append(("dead", _outcome(dmm.pin_user_pages_fast, da, 1, FOLL.WRITE),
                 _outcome(dmm.pin_user_pages, da, 1, FOLL.WRITE)))
    snap = comparable_snapshot(m)
    st = m._core.stats()
    counters = {k: v for k, v in st.items() if "pin" in k}
    return m, p, child, held, seen, snap, counters


def _same(seed: int, policy: str = "6.5"):
    ref = _world(seed, small=False, policy=policy)
    new = _world(seed, small=True, policy=policy)
    for i, (a, b) in enumerate(zip(ref[4], new[4])):
        assert a == b, f"seed {seed}: step {i} differs:\n general {a}\n one-call {b}"
    assert len(ref[4]) == len(new[4])
    for key in ref[5]:
        assert np.array_equal(ref[5][key], new[5][key]), f"seed {seed}: frame {key} differs"
    assert ref[6] == new[6], f"seed {seed}: pin counters differ"
    return ref, new


@pytest.mark.parametrize("seed", range(30))
def test_one_call_ways_match_the_general_way(seed):
    _same(seed)


@pytest.mark.parametrize("seed", range(6))
def test_one_call_ways_match_under_6_1_argument_checks(seed):
    _same(seed, policy="6.1")


def test_both_worlds_release_everything():
    for small in (False, True):
        m, p, child, held, *_ = _world(3, small)
        for pg in held:
            if not pg.released and pg._kernel is m.kernel:
                (p.mm.unpin_user_pages if pg.pinned else p.mm.put_page)(pg)
        for proc in (child, p):
            if proc is not None:
                proc.exit()
        m.check()


def _present(pages: int = 8, cpus: int = 1):
    m = Machine(memory="16MiB", cpus=cpus)
    p = m.spawn()
    a = p.mmap(pages * P, RW, ANON)
    for i in range(pages):
        p.write(a + i * P, i + 1)
    return m, p, a


def _refcount(m, pfn: int) -> int:
    return m._core.frame_info(pfn).refcount


def test_one_page_fast_pin_and_unpin_count_as_the_kernel_does():
    m, p, a = _present()
    pfn = p.mm.pte(a).pfn
    before = _refcount(m, pfn)
    ret, pages = p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE | FOLL.LONGTERM)
    assert (ret, list(pages)) == (1, [pfn]) and pages.pinned and pages.writable
    assert _refcount(m, pfn) == before + C.GUP_PIN_COUNTING_BIAS
    assert p.mm.has_pinned
    p.mm.unpin_user_pages(pages)
    assert pages.released and _refcount(m, pfn) == before
    with pytest.raises(ValueError, match="already released"):
        p.mm.unpin_user_pages(pages)
    assert _refcount(m, pfn) == before


def test_a_hole_falls_back_to_the_slow_path():
    m = Machine(memory="16MiB", cpus=1)
    p = m.spawn()
    a = p.mmap(4 * P, RW, ANON)
    p.write(a, 1)                                   # page 0 present, 1..3 holes
    ret, pages = p.mm.pin_user_pages_fast(a, 4, FOLL.WRITE)
    assert ret == 4 and len(set(pages)) == 4
    assert all(p.mm.pte(a + i * P).present for i in range(4))     # faulted in
    ret2, only = p.mm.get_user_pages_fast_only(a, 4, 0)
    assert ret2 == 4                                # now all present: no fallback needed
    p.mm.put_page(only)
    p.mm.unpin_user_pages(pages)


@pytest.mark.parametrize("small", (False, True))
def test_a_call_across_two_vmas_checks_each(small):
    """An anonymous mapping right below a shared ext4 one whose pages are
    present and writable: a long-term write pin over both takes the anon
    pages and stops at the boundary, where check_vma_flags() of the file
    VMA refuses (writable_file_mapping_allowed) though its PTEs would let
    the follow take them -- whichever way the call goes."""
    m = Machine(memory="16MiB", cpus=1)
    m.kernel.small_calls = small
    p = m.spawn()
    f = m.mount("ext4").create("f", 4 * P)
    hi = p.mmap(4 * P, RW, MAP.SHARED, file=f)
    lo = p.mmap(4 * P, RW, ANON, addr=hi - 4 * P)
    assert lo + 4 * P == hi and p.mm.find_vma(hi) is not p.mm.find_vma(lo)
    for i in range(4):
        p.write(lo + i * P, i + 1)
        p.write(hi + i * P, i + 1)
    assert p.mm.pte(hi).write
    want = [p.mm.pte(lo + i * P).pfn for i in (2, 3)]
    for call in (p.mm.pin_user_pages, p.mm.pin_user_pages_fast):
        ret, pages = call(lo + 2 * P, 4, FOLL.WRITE | FOLL.LONGTERM)
        assert (ret, list(pages)) == (2, want), call
        p.mm.unpin_user_pages(pages)
    ret, pages = p.mm.pin_user_pages(hi, 1, FOLL.WRITE | FOLL.LONGTERM)
    assert ret == -errno.EFAULT
    m.check()


def test_fast_only_stops_at_a_hole_without_a_fault():
    m = Machine(memory="16MiB", cpus=1)
    p = m.spawn()
    a = p.mmap(4 * P, RW, ANON)
    p.write(a, 1)
    ret, pages = p.mm.get_user_pages_fast_only(a, 4, 0)
    assert ret == 1 and len(pages) == 1
    assert not p.mm.pte(a + P).present
    p.mm.put_page(pages)


def test_irqs_off_refuse_a_call_that_may_fall_back_and_pin_nothing():
    m, p, a = _present()
    pfn = p.mm.pte(a).pfn
    before = _refcount(m, pfn)
    cpu = m.kernel.current_cpu()
    m._core.irq_disable(cpu)
    try:
        with pytest.raises(IrqsDisabledError):
            p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE)
        assert _refcount(m, pfn) == before
        ret, got = p.mm.get_user_pages_fast_only(a, 1, 0)     # FOLL_FAST_ONLY may walk
        assert ret == 1
        with pytest.raises(IrqsDisabledError):
            p.mm.put_page(got)                      # a release is a model operation
        assert not got.released
    finally:
        m._core.irq_enable(cpu)
    p.mm.put_page(got)
    assert _refcount(m, pfn) == before


@pytest.mark.parametrize("start, nr, flags, exc", [
    (-P, 1, FOLL.WRITE, ValueError),
    (0x1000, -1, FOLL.WRITE, ValueError),
    (0x1000, 1, 1 << 40, ValueError),
    (0x1000, 1, -1, ValueError),
    (True, 1, 0, TypeError),
    (0x1000, 1.0, 0, TypeError),
])
def test_bad_arguments_raise_before_any_work(start, nr, flags, exc):
    m, p, a = _present()
    snap = m._core.snapshot()
    for call in (p.mm.pin_user_pages_fast, p.mm.pin_user_pages):
        with pytest.raises(exc):
            call(start, nr, flags)
    after = m._core.snapshot()
    assert all(np.array_equal(snap[k], after[k]) for k in snap)


def test_range_answers_are_the_kernels():
    m, p, a = _present()
    mm = p.mm
    assert mm.pin_user_pages_fast(C.TASK_SIZE_MAX - P, 2, 0)[0] == -errno.EFAULT
    assert mm.pin_user_pages_fast((1 << 64) - P, 2, 0)[0] == -errno.EOVERFLOW
    assert mm.pin_user_pages_fast(a, 0, 0)[0] == 0
    assert mm.pin_user_pages_fast(a, 1, FOLL.PIN)[0] == -errno.EINVAL      # internal flag
    assert mm.pin_user_pages_fast(a, 1, FOLL.GET)[0] == -errno.EINVAL      # GET with PIN
    assert mm.pin_user_pages_fast(a, 1, FOLL.SPLIT_PMD)[0] == -errno.EINVAL  # outside the mask
    assert mm.pin_user_pages(a, 1, FOLL.PIN)[0] == 0                       # 6.3+: 0
    ret, pages = mm.pin_user_pages_fast(a + 123, 1, FOLL.WRITE)            # unaligned: its page
    assert ret == 1 and pages[0] == mm.pte(a).pfn
    mm.unpin_user_pages(pages)


def test_an_exited_mm_answers_esrch():
    m, p, a = _present()
    mm = p.mm
    p.exit()
    for call in (mm.pin_user_pages_fast, mm.pin_user_pages):
        with pytest.raises(GupError) as e:
            call(a, 1, FOLL.WRITE)
        assert e.value.errno == errno.ESRCH


def test_releases_check_what_they_are_given():
    m, p, a = _present()
    other, op, oa = _present()
    ret, pinned = p.mm.pin_user_pages_fast(a, 2, FOLL.WRITE)
    ret, got = p.mm.get_user_pages_fast(a, 2, 0)
    ret, foreign = op.mm.pin_user_pages_fast(oa, 1, 0)
    with pytest.raises(ValueError, match="needs got"):
        p.mm.put_page(pinned)
    with pytest.raises(ValueError, match="needs pinned"):
        p.mm.unpin_user_pages(got)
    with pytest.raises(ValueError, match="another machine"):
        p.mm.unpin_user_pages(foreign)
    with pytest.raises(TypeError):
        p.mm.unpin_user_pages([1])
    forged = Pages(m.kernel, [p.mm.pte(a + 5 * P).pfn], True)
    with pytest.raises(GupError) as e:
        p.mm.unpin_user_pages(forged)
    assert e.value.errno == errno.EINVAL and not forged.released
    p.mm.unpin_user_pages(pinned)
    p.mm.put_page(got)
    op.mm.unpin_user_pages(foreign)
    m.check()


def test_a_changed_policy_is_not_answered_from_the_old_one():
    from pygup.config.policy import policy_for
    m, p, a = _present()
    k = m.kernel
    for policy in ("6.5", "6.1", "6.5"):
        k.policy = policy_for(policy)
        for gf in (0, int(FOLL.TOUCH), int(FOLL.REMOTE), int(FOLL.LONGTERM | FOLL.WRITE),
                   int(FOLL.GET)):
            for to_set, pin_api in ((gup.FOLL_PIN, True), (gup.FOLL_GET, False),
                                    (gup.FOLL_TOUCH, False)):
                assert (gup.check_gup_args_cached(k, pin_api, True, None, gf, to_set)
                        == gup.check_gup_args(k, pin_api, True, None, gf, to_set)), (policy, gf)


def test_the_c_entries_check_their_arguments():
    m, p, a = _present()
    core, mm = m._core, p.mm.id
    with pytest.raises(GupError):                               # unaligned start
        core.gup_fast_call(0, mm, a + 1, 1, C.FOLL_PIN, 0)
    with pytest.raises(GupError):                               # GET and PIN
        core.gup_fast_call(0, mm, a, 1, C.FOLL_PIN | C.FOLL_GET, 0)
    # past TASK_SIZE_MAX: declined (Python's general way answers -EFAULT)
    assert core.gup_fast_call(0, mm, 1 << C.VA_BITS, 1, C.FOLL_PIN, 0) is None
    assert core.gup_fast_call(0, mm, C.TASK_SIZE_MAX, 1, C.FOLL_PIN, 0) is None
    assert core.gup_fast_call(0, mm, (1 << 64) - P, 2, C.FOLL_PIN, 0) is None
    with pytest.raises(GupError):                               # no such mm
        core.gup_fast_call(0, mm + 12345, a, 1, C.FOLL_PIN, 0)
    with pytest.raises(GupError):                               # no such CPU
        core.gup_fast_call(7, mm, a, 1, C.FOLL_PIN, 0)
    with pytest.raises(ValueError):                             # past the one-call size
        core.gup_fast_call(0, mm, a, GUP_BATCH + 1, C.FOLL_PIN, 0)
    assert core.gup_put_call(5, np.zeros(1, np.uint64), True) == -errno.EINVAL   # bad CPU
    bad = np.array([core.nr_frames + 3], np.uint64)
    assert core.gup_put_call(0, bad, True) == -errno.EINVAL     # a pfn past memory
    assert core.gup_put_call(0, np.zeros(0, np.uint64), True) == 0
    assert core.first_unpinnable(0, [core.nr_frames + 1]) == -1
    assert core.first_unpinnable(0, []) == 0
    with pytest.raises(GupError):
        core.follow_range_list(0, mm, a + 1, 1, C.FOLLOW_PIN)
    # a mis-typed array: C reads no further than the buffer (2 bytes: no pfn at all)
    assert core.gup_put_call(0, np.zeros(1, np.uint16), True) == 0
    m.check()


def test_the_c_entries_decline_with_irqs_off_and_do_nothing():
    m, p, a = _present()
    core, mm = m._core, p.mm.id
    pfn = p.mm.pte(a).pfn
    before = _refcount(m, pfn)
    core.irq_disable(0)
    try:
        assert core.gup_fast_call(0, mm, a, 1, C.FOLL_PIN, 0) is None
        assert _refcount(m, pfn) == before
        n, buf = core.gup_fast_call(0, mm, a, 1, C.FOLL_GET | C.FOLL_FAST_ONLY, 0)
        assert (n, list(pfn_array(buf, n))) == (1, [pfn])
        assert core.gup_put_call(0, None, False, buf, n) is None    # declined: still held
        assert _refcount(m, pfn) == before + 1
        assert core.gup_slow_call(0, mm, a, 1, C.FOLLOW_GET, False) is None
        assert _refcount(m, pfn) == before + 1
    finally:
        core.irq_enable(0)
    with pytest.raises(ValueError):                 # more entries than the buffer holds
        core.gup_put_call(0, None, False, buf, n + 1)
    assert core.gup_put_call(0, None, False, buf, n) == 0
    assert _refcount(m, pfn) == before


def test_the_put_entry_declines_under_a_scheduler_session():
    m, p, a = _present(cpus=2)
    core = m._core
    ret, pages = p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE)
    core.sched_begin(2, 1, None)
    try:
        assert core.gup_put_call(0, pages._pfns, True) is None
        assert not pages.released
    finally:
        core.sched_end()
    p.mm.unpin_user_pages(pages)
    assert pages.released
    m.check()


# ---- pg_gup_slow_call: a few present pages, all or nothing ---------------

def _pins(m, pfns) -> list[int]:
    return [_refcount(m, pfn) for pfn in pfns]


def test_the_slow_entry_takes_every_page_or_none():
    m, p, a = _present(pages=4)
    core, mm = m._core, p.mm.id
    pfns = [p.mm.pte(a + i * P).pfn for i in range(4)]
    before = _pins(m, pfns)
    buf = core.gup_slow_call(0, mm, a, 4, C.FOLLOW_PIN | C.FOLLOW_WRITE, False)
    assert list(pfn_array(buf, 4)) == pfns
    assert _pins(m, pfns) == [r + C.GUP_PIN_COUNTING_BIAS for r in before]
    assert core.gup_put_call(0, None, True, buf, 4) == 0
    # a page that needs a fault (never touched) at the end: nothing taken
    b = p.mmap(3 * P, RW, ANON)
    p.write(b, 1)
    p.write(b + P, 2)
    first = [p.mm.pte(b).pfn, p.mm.pte(b + P).pfn]
    held = _pins(m, first)
    assert core.gup_slow_call(0, mm, b, 3, C.FOLLOW_PIN | C.FOLLOW_WRITE, False) is None
    assert _pins(m, first) == held
    assert core.stats()["pins_acquired"] == core.stats()["pins_released"]
    m.check()


def test_the_slow_entry_leaves_a_movable_folio_to_the_migration():
    m = Machine(memory="16MiB", movable="8MiB", cpus=1)
    p = m.spawn()
    a = p.mmap(2 * P, RW, ANON)
    p.write(a, 1)
    p.write(a + P, 2)
    core, mm = m._core, p.mm.id
    pfns = [p.mm.pte(a + i * P).pfn for i in range(2)]
    assert not all(core.folio_is_longterm_pinnable(pfn) for pfn in pfns)   # faults go movable first
    before = _pins(m, pfns)
    assert core.gup_slow_call(0, mm, a, 2, C.FOLLOW_PIN | C.FOLLOW_WRITE, True) is None
    assert _pins(m, pfns) == before
    buf = core.gup_slow_call(0, mm, a, 2, C.FOLLOW_PIN | C.FOLLOW_WRITE, False)
    assert list(pfn_array(buf, 2)) == pfns
    assert core.gup_put_call(0, None, True, buf, 2) == 0
    # through the API: the long-term pin migrates, as the general way does
    ret, pages = p.mm.pin_user_pages(a, 2, FOLL.WRITE | FOLL.LONGTERM)
    assert ret == 2 and all(core.folio_is_longterm_pinnable(pfn) for pfn in pages)
    p.mm.unpin_user_pages(pages)
    m.check()


def test_the_slow_entry_puts_back_what_it_took_when_a_grab_fails():
    """A folio whose refcount is at its limit: the probe passes it (it is
    mapped and writable), its grab fails after the page before it was
    taken; that one is put back, so the call did nothing and the general
    way answers -- the same answer and state as without the one-call way."""
    outcomes = []
    for small in (False, True):
        m, p, a = _present(pages=2)
        m.kernel.small_calls = small
        core = m._core
        full = p.mm.pte(a + P).pfn
        while core.try_grab_page(full, True) == 0:      # pins until the refcount would overflow
            pass
        first = p.mm.pte(a).pfn
        before = _pins(m, [first, full])
        st = core.stats()
        out = _outcome(p.mm.pin_user_pages, a, 2, FOLL.WRITE)
        ret, pages = out[1] if out[0] == "ok" else (None, None)
        if small:
            buf = core.gup_slow_call(0, p.mm.id, a, 2, C.FOLLOW_PIN | C.FOLLOW_WRITE, False)
            assert buf is None
        after = core.stats()
        outcomes.append((out[0], ret, list(pages) if pages is not None else None,
                         _pins(m, [first, full]), before,
                         after["pins_acquired"] - st["pins_acquired"]
                         - (after["pins_released"] - st["pins_released"])))
    assert outcomes[0] == outcomes[1]


def test_the_slow_entry_checks_its_arguments():
    m, p, a = _present()
    core, mm = m._core, p.mm.id
    how = C.FOLLOW_PIN | C.FOLLOW_WRITE
    for bad in ((7, mm, a, 1, how),                     # no such CPU
                (0, mm, a + 1, 1, how),                 # unaligned
                (0, mm + 12345, a, 1, how),             # no such mm
                (0, mm, 1 << C.VA_BITS, 1, how),        # past the address space
                (0, mm, a, 1, C.FOLLOW_PIN | C.FOLLOW_GET)):
        with pytest.raises(GupError):
            core.gup_slow_call(*bad, False)
    for n in (0, -1, SMALL_CALL_PAGES + 1):
        with pytest.raises(ValueError):
            core.gup_slow_call(0, mm, a, n, how, False)
    assert core.stats()["pins_acquired"] == core.stats()["pins_released"]
    m.check()


def test_the_slow_entry_declines_under_a_scheduler_session():
    m, p, a = _present(cpus=2)
    core = m._core
    pfn = p.mm.pte(a).pfn
    before = _refcount(m, pfn)
    core.sched_begin(2, 1, None)
    try:
        assert core.gup_slow_call(0, p.mm.id, a, 1, C.FOLLOW_PIN, False) is None
    finally:
        core.sched_end()
    assert _refcount(m, pfn) == before
