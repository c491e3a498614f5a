"""GUP-fast runs one of two copies of its per-page loop (csrc/mm/gup.c,
FAST_YIELD): one with the race-window hooks and the protection switches,
one without, chosen once per call.  The hook-free copy may only run when
nothing could observe the difference: these tests fail if a scheduler
session, or a switch turned on at any time, ever meets the hook-free copy."""
from pygup import FOLL, MAP, PROT, Machine
from pygup._native import C

RW = PROT.READ | PROT.WRITE
P = 4096
N = 3
LT_W = int(FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE)


def _anon(pages: int, cpus: int = 2):
    m = Machine(memory="64MiB", movable="0MiB", cpus=cpus)
    p = m.spawn()
    a = p.mmap(pages * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(pages):
        p.write(a + i * P, i + 1)
    return m, p, a


def test_a_scheduler_session_stops_every_page_at_its_windows():
    """Under a scheduler session each page of the walk is a scheduling
    point at every per-page window (the hooked copy); outside it the same
    walk takes the same pages with no session to stop in."""
    m, p, a = _anon(N)
    pfns = [p.mm.pte(a + i * P).pfn for i in range(N)]
    windows = ("fast_pte_read", "fast_grabbed", "fast_before_recheck", "fast_rechecked",
               "fast_mapping_read")
    ops = [lambda m: p.mm.pin_user_pages_fast(a, N, FOLL.LONGTERM | FOLL.WRITE),
           lambda m: p.read(a)]
    run = m.run_concurrently(ops, seed=3, points=set(windows))
    ret, pages = run.results[0]
    assert ret == N and list(pages) == pfns
    for w in windows:
        # the walk resumed once from each window per page it took
        assert sum(1 for cpu, pt in run.schedule if cpu == 0 and pt == w) == N, w
    p.mm.unpin_user_pages(pages)
    # the same call without a session: the hook-free copy, the same answer
    ret, pages = p.mm.pin_user_pages_fast(a, N, FOLL.LONGTERM | FOLL.WRITE)
    assert ret == N and list(pages) == pfns
    p.mm.unpin_user_pages(pages)
    m.check()


def test_the_next_entry_read_is_a_window_between_pages():
    """walk_entry_read: after each page the walk reads the next PTE of the
    same table, a window of its own (N - 1 of them inside one table)."""
    m, p, a = _anon(N)
    ops = [lambda m: p.mm.pin_user_pages_fast(a, N, 0), lambda m: p.read(a)]
    run = m.run_concurrently(ops, seed=5, points={"walk_entry_read"})
    ret, pages = run.results[0]
    assert ret == N
    stops = sum(1 for cpu, pt in run.schedule if cpu == 0 and pt == "walk_entry_read")
    # the walk down (PGD, PUD, PMD, PTE: 4 entries) once, then one per next PTE
    assert stops == 4 + (N - 1)
    p.mm.unpin_user_pages(pages)


def test_a_switch_turned_on_later_reaches_the_next_call():
    """The copy is chosen per call from the switches as they are then: one
    turned on after the machine was made (and after hook-free calls) acts
    on the next call, and turning it off restores the plain answer."""
    m, p, a = _anon(N)
    core, cpu, mm = m._core, m.current_cpu(), p.mm.id
    plain = core.gup_fast_why(cpu, mm, a, N, LT_W, C.GUPF_WHITELIST)
    assert len(plain[0]) == N and plain[1] == C.FAST_STOP_NONE
    core.gup_put_pages(plain[0], True)
    # whitelist_inverted: the whitelist now refuses anon memory
    core.set_mutants(C.MUT_WHITELIST_INVERTED)
    got, why = core.gup_fast_why(cpu, mm, a, N, LT_W, C.GUPF_WHITELIST)
    assert len(got) == 0 and why == C.FAST_STOP_WHITELIST
    # no_pte_recheck alone changes nothing on a quiet machine: same pages
    core.set_mutants(C.MUT_NO_PTE_RECHECK)
    got, why = core.gup_fast_why(cpu, mm, a, N, LT_W, C.GUPF_WHITELIST)
    assert len(got) == N and why == C.FAST_STOP_NONE
    core.gup_put_pages(got, True)
    core.set_mutants(0)
    got, why = core.gup_fast_why(cpu, mm, a, N, LT_W, C.GUPF_WHITELIST)
    assert list(got) == list(plain[0]) and why == C.FAST_STOP_NONE
    core.gup_put_pages(got, True)
    m.check()


def test_the_one_compare_entry_test_keeps_the_stop_reasons():
    """The hook-free copy tests a PTE with one compare; the reasons it
    stops for are still the ones of gup_pte_range()'s order: a read-only
    PTE under FOLL_WRITE is an access stop, PROT_NONE its own, an entry
    never faulted in not present, a pfn mapping's special entry special."""
    m, p, a = _anon(3)
    core, cpu, mm = m._core, m.current_cpu(), p.mm.id
    p.mprotect(a + P, P, PROT.READ)
    p.mprotect(a + 2 * P, P, PROT.NONE)
    cases = [(a, 3, int(FOLL.PIN | FOLL.WRITE), 1, C.FAST_STOP_ACCESS),
             (a + P, 2, int(FOLL.PIN), 1, C.FAST_STOP_PROTNONE)]
    b = p.mmap(2 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(b, 7)
    cases.append((b, 2, int(FOLL.PIN), 1, C.FAST_STOP_NOT_PRESENT))
    s = p.mmap_pfn(P, RW)
    cases.append((s, 1, int(FOLL.GET), 0, C.FAST_STOP_SPECIAL))
    for start, n, flags, taken, reason in cases:
        got, why = core.gup_fast_why(cpu, mm, start, n, flags, 0)
        assert len(got) == taken and why == reason, (hex(start), flags)
        if taken:
            core.gup_put_pages(got, bool(flags & FOLL.PIN))
    m.check()
