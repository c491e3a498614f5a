"""The race-window registry (csrc/kernel/race.h): one list of named
scheduling points, each with its reason, that the C yield points, the
scheduler's filter and Python all use.  A misspelt point is an error, not a
schedule that silently never stops."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pygup import MAP, PROT, Machine
from pygup._native import C, Core, ffi, lib
from pygup.kernel.sched import yield_point

CSRC = Path(__file__).resolve().parents[2] / "csrc"
P = 4096


def _world():
    m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    p = m.spawn()
    a = p.mmap(P, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    return m, p, a


def _c_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(CSRC.rglob("*.[ch]")))


def test_registry_is_exported_with_reasons():
    wins = Core.race_windows()
    assert len(wins) == lib.pg_race_window_count() >= 30
    names = [n for n, _ in wins]
    assert len(set(names)) == len(names)
    assert names[0] == "start"
    for name, reason in wins:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert reason and "\n" not in reason and len(reason) > 20, (name, reason)
    flags = Core.race_window_flags()
    assert flags["fast_pte_read"] & C.RACE_YIELD and flags["fast_pte_read"] & C.RACE_AMP
    assert flags["ipi_wait"] == C.RACE_SPIN
    assert flags["machine_lock"] == C.RACE_SPIN | C.RACE_PY


@pytest.mark.parametrize("bad", [-1, -(2**31), 10**6])
def test_registry_lookups_are_bounds_checked(bad):
    n = lib.pg_race_window_count()
    for i in (bad, n):
        assert lib.pg_race_window_name(i) == ffi.NULL
        assert lib.pg_race_window_reason(i) == ffi.NULL
        assert lib.pg_race_window_flags(i) == -C.EINVAL


def test_every_c_yield_names_a_registered_window_and_every_window_is_used():
    """PG_YIELD / pg_cpu_wait / PG_RACE_AMPLIFY take enum ids (a misspelt one
    does not compile); conversely no registered C window is dead."""
    src = _c_sources()
    race_h = (CSRC / "kernel" / "race.h").read_text()
    ids = dict(re.findall(r'X\((PG_W_\w+), "(\w+)"', race_h))
    assert len(ids) == lib.pg_race_window_count()
    # (FAST_YIELD / FAST_AMPLIFY: GUP-fast's hook-free copy, csrc/mm/gup.c)
    used = set(re.findall(r"(?:PG_YIELD\([^;]*?|pg_cpu_wait\([^,]*,\s*|PG_RACE_AMPLIFY\([^,]*,\s*"
                          r"|FAST_YIELD\([^;]*?|FAST_AMPLIFY\([^;]*?)"
                          r"(PG_W_\w+)\)", src))
    assert used <= set(ids)
    assert not re.search(r'PG_YIELD\([^;()]*"', src), "PG_YIELD with a string"
    flags = Core.race_window_flags()
    for pid, name in ids.items():
        if flags[name] & (C.RACE_YIELD | C.RACE_AMP) or flags[name] == C.RACE_SPIN:
            assert pid in used, f"{name} is registered but no C code yields there"


def test_every_point_name_python_passes_is_registered():
    from pygup.tools.fuzz import ops
    names = {n for n, _ in Core.race_windows()}
    assert ops._FAST_POINTS <= names
    for kind, pts in ops._RACE_POINTS.items():
        assert pts <= names, kind
    from pygup.kernel import context
    assert context._MACHINE_LOCK_POINT.decode() in names
    # and every points= literal in the tests
    tests = Path(__file__).resolve().parents[1]
    for path in tests.rglob("*.py"):
        if path.name == "test_race_registry.py":
            continue                                # the misspelling below is on purpose
        for literal in re.findall(r"points=\{([^}]*)\}", path.read_text()):
            for name in re.findall(r'"(\w+)"', literal):
                assert name in names, f"{path.name}: points= names {name!r}"


def test_a_misspelt_point_is_refused_and_the_machine_stays_usable():
    m, p, a = _world()
    ops = [lambda m: p.mm.pin_user_pages_fast(a, 1, 0), lambda m: p.read(a)]
    with pytest.raises(ValueError) as ei:
        m.run_concurrently(ops, schedule=[0, 1], points={"fast_pte_raed"})
    msg = str(ei.value)
    assert "'fast_pte_raed'" in msg and "fast_pte_read" in msg and "machine_lock" in msg
    # no session was left behind
    run = m.run_concurrently([lambda m: p.read(a), lambda m: p.read(a)], seed=1)
    assert run.results == [1, 1]
    m.check()


def test_filter_on_the_core_directly():
    m, _, _ = _world()
    core = m._core
    core.sched_begin(1, 0, None)
    with pytest.raises(ValueError, match="unknown scheduling point ''"):
        core.sched_filter("")
    assert core.sched_status() == 0                 # ended for us
    core.sched_begin(1, 0, None)
    for name, _ in Core.race_windows():
        core.sched_filter(name)                     # every registered one is accepted
    with pytest.raises(TypeError):
        core.sched_filter(b"fast_pte_read")
    core.sched_end()
    assert lib.pg_sched_filter(core._m, b"fast_pte_raed") == -C.EINVAL  # no session
    assert lib.pg_sched_filter(core._m, ffi.NULL) == -C.EINVAL


def test_free_python_point_names_still_schedule_and_trace():
    m, p, a = _world()

    def op(m):
        yield_point(m, "irqs_off_1")               # not registered: fine without points=
        return p.read(a)

    run = m.run_concurrently([op, lambda m: p.read(a)], schedule=[0, 1, 0, 1])
    assert run.results == [1, 1]
    assert (0, "irqs_off_1") in run.schedule
    # a registered Python point filters as any other
    def op2(m):
        yield_point(m, "between_writes")
        p.write(a, 5)

    run = m.run_concurrently([op2, lambda m: p.write(a, 6)], schedule=[0, 1, 0],
                             points={"between_writes"})
    assert (0, "between_writes") in run.schedule and p.read(a) == 5


def test_c_windows_trace_by_name():
    m, p, a = _world()
    ops = [lambda m: p.mm.pin_user_pages_fast(a, 1, 0), lambda m: p.munmap(a, P)]
    run = m.run_concurrently(ops, schedule=[0, 1], points={"fast_pte_read"})
    assert (0, "fast_pte_read") in run.schedule and (1, "ipi_wait") in run.schedule
