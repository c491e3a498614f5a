"""Shared fixtures, and the test tiers.

Tiers are folders, each marked by its name so ``.ci/run`` (or you) can
select them: ``unit`` (the C core and the ground, seconds), ``model`` (the
emulated kernel through its public API), ``regressions`` (one story per
historic bug), ``stress`` (native threads: throughput and ThreadSanitizer),
``host`` (the live-kernel oracle).  ``python -m pytest -m unit`` runs one.

``core_machine`` / ``make_core_machine`` create raw ``pg_machine`` objects
through ``pygup._native`` and, at teardown, fail the test if the core
recorded an invariant violation that the test did not pop itself.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pygup._native import ffi, lib

TIERS = ("unit", "model", "regressions", "stress", "host")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = Path(item.fspath).resolve().relative_to(here).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(tier)


def core_pop_violations(m) -> list[str]:
    """Drain the machine's violation ring; returns the messages."""
    out = []
    buf = ffi.new("char[512]")
    while lib.pg_violation_pop(m, buf, 512) == 1:
        out.append(ffi.string(buf).decode())
    return out


def core_stats(m) -> dict[str, int]:
    s = ffi.new("struct pg_stats *")
    lib.pg_stats_get(m, s)
    d = {name: getattr(s, name) for name, _ in ffi.typeof("struct pg_stats").fields}
    d["nr_free"] = list(s.nr_free)
    return d


def core_frame_info(m, pfn: int):
    info = ffi.new("struct pg_frame_info *")
    assert lib.pg_frame_info(m, pfn, info) == 0
    return info


@pytest.fixture
def make_core_machine():
    """Factory: make_core_machine(nr_frames=4096, nr_movable=1024,
    nr_cpus=4, mode=lib.PG_TABLE_FREE_IPI) -> pg_machine *."""
    made = []

    def make(nr_frames=4096, nr_movable=1024, nr_cpus=4,
             mode=lib.PG_TABLE_FREE_IPI):
        m = lib.pg_machine_new(nr_frames, nr_movable, nr_cpus, mode)
        assert m != ffi.NULL
        made.append(m)
        return m

    yield make
    failures = []
    for m in made:
        if lib.pg_violation_count(m):
            failures.extend(core_pop_violations(m))
        lib.pg_machine_free(m)
    assert not failures, f"unexpected invariant violations: {failures}"


@pytest.fixture
def core_machine(make_core_machine):
    """A 16 MiB machine (4096 frames, top 1024 movable), 4 CPUs, IPI mode."""
    return make_core_machine()


@pytest.fixture
def machine():
    """A small pygup Machine (64 MiB, 16 MiB movable, 4 CPUs); its C core
    must have recorded no violation by the end of the test."""
    from pygup import Machine
    m = Machine(memory="64MiB", movable="16MiB", cpus=4)
    yield m
    m.check()


@pytest.fixture
def reproducer():
    """For tests/regressions: reproducer(name) loads regressions/<name>.json
    (a reproducer the fuzzing harness shrank) and returns (data, failure with
    the bug planted, failure with it fixed: no switch, and 6.5 for 6.4)."""
    import json
    import pathlib

    from pygup.tools.fuzz import run_ops

    from pygup.tools.fuzz.world import World

    def run(name: str):
        path = pathlib.Path(__file__).parent / "regressions" / f"{name}.json"
        data = json.loads(path.read_text())
        # with the bug planted, the safety oracle the story is about: the
        # differential check of GUP-fast (which sees a C fast-path switch
        # first) stays out of it; the fixed run has every check
        differential = World.check_fast_differential
        World.check_fast_differential = lambda *a: None
        try:
            planted = run_ops(data["ops"], data["policy"], data["mutants"])
        finally:
            World.check_fast_differential = differential
        fixed_policy = "6.5" if data["policy"] == "6.4" else data["policy"]
        return data, planted, run_ops(data["ops"], fixed_policy, [])

    return run


def comparable_snapshot(m) -> dict:
    """``m._core.snapshot()`` with each anon_vma named by the order of its
    first folio: anon_vma ids count across machines, so two machines driven
    alike differ in them and in nothing else."""
    from pygup._native import C
    snap = m._core.snapshot()
    ids: dict[int, int] = {}
    for i, word in enumerate(snap["mapping"]):
        if int(word) & C.MAPPING_FLAGS == C.MAPPING_ANON:
            snap["mapping"][i] = (ids.setdefault(int(word) >> 2, len(ids)) << 2) | C.MAPPING_ANON
    return snap


def teardown_leftovers(m) -> dict[str, int]:
    """Exit every live process, close every open file handle of this
    machine, unlink every named file and let every RCU callback run; then what is still held: frames (beyond the zero page and
    device memory), table pages, address_space records, pins.  All zero
    when nothing leaked."""
    import gc

    from pygup.kernel.vfs import File
    for p in list(m.processes):
        if p.alive:
            p.exit()
    # every file handle the test still holds is closed, as at its exit
    for f in [o for o in gc.get_objects() if isinstance(o, File)]:
        if f.fs.kernel is m.kernel and not f.closed:
            f.close()
    for fs in list(m.filesystems):
        for name in list(fs.files):
            fs.unlink(name)
    m._core.rcu_barrier(m.current_cpu())
    st = m.stats()
    free = st["nr_free_normal"] + st["nr_free_movable"]
    return {"frames": st["nr_frames"] - 1 - len(m.device_frames) - free,
            "table_pages": st["table_pages_live"] + st["table_pages_pending"],
            "address_spaces": st["as_live"] + st["as_pending"],
            "pins": st["pins_acquired"] - st["pins_released"]}


def fuzz_walk(seed: int, steps: int, mutants=()):
    """The fuzz World after each step of the sequence ``seed`` generates
    (policy 6.5, ``mutants`` planted), until an oracle fires."""
    import random

    from pygup.tools.fuzz.ops import apply, generate
    from pygup.tools.fuzz.world import Violation, World
    rng = random.Random(seed)
    world = World("6.5", mutants)
    for _ in range(steps):
        try:
            apply(world, generate(rng, world))
        except Violation:
            return
        yield world
