"""The fuzzing harness: seeded runs find their targets, 6.5 stays clean,
failures shrink and replay, and a Hypothesis state machine drives the same
vocabulary."""
import json

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pygup.tools.fuzz import replay, run_ops, run_seed, shrink
from pygup.tools.fuzz.driver import save
from pygup.tools.fuzz.ops import apply, generate
from pygup.tools.fuzz.world import World

# (policy, mutants) -> the invariant the harness must report; each is found
# by a deterministic seed within the first 200 (sequential targets;
# the race-window switches are found by concurrent steps, test_races.py)
TARGETS = [
    ("6.4", (), "write-notify-bypass"),
    ("6.5", ("whitelist_inverted",), "policy"),
    ("6.5", ("mkclean_no_flush",), "write-notify-bypass"),
    # ... and before it writes, the TLB audit sees the entry the skipped flush left
    ("6.5", ("mkclean_no_flush",), "no-stale-tlb"),
    ("6.5", ("fast_no_unshare",), "pinned-anon-stays"),
    ("6.5", ("fast_secretmem",), "no-secretmem"),
    ("6.5", ("unpin_no_bias",), "refcount-balance"),
    # refusals are bugs too: pins the harness knows must work
    ("6.5", ("pin_or_longterm",), "over-refusal"),
    ("6.5", ("private_not_excluded",), "over-refusal"),
]


def first_failure(policy, mutants, seeds=200):
    for seed in range(seeds):
        f, _ = run_seed(seed, 300, policy, mutants)
        if f is not None:
            return f
    return None


@pytest.mark.parametrize("policy, mutants, invariant", TARGETS,
                         ids=[m[0] if m else p for p, m, _ in TARGETS])
def test_seeded_run_finds_target(policy, mutants, invariant, monkeypatch):
    """Each safety oracle on its own: the differential check of GUP-fast
    (which sees the C fast-path switches first) is off here."""
    monkeypatch.setattr(World, "check_fast_differential", lambda *a: None)
    if invariant != "no-stale-tlb":
        monkeypatch.setattr(World, "check_tlbs", lambda *a: None)
    f = first_failure(policy, mutants)
    assert f is not None and f.invariant == invariant, f


@pytest.mark.parametrize("mutant", ["whitelist_inverted", "fast_no_unshare", "fast_secretmem"])
def test_fast_path_switches_show_as_a_differential(mutant, monkeypatch):
    """A switch planted in the C fast path makes it disagree with its
    plain-Python twin (tools/reference.py) on the same state: with the
    safety oracles that see the damage switched off, the differential
    alone finds each."""
    for oracle in ("check_no_secretmem", "check_policy_pin", "check_pinned_anon_stays"):
        monkeypatch.setattr(World, oracle, lambda *a: None)
    f = first_failure("6.5", (mutant,))
    assert f is not None and f.invariant == "fast-differential", f
    assert "the C core took" in f.detail



def test_6_5_stays_clean():
    for seed in range(40):
        f, n = run_seed(seed, 300, "6.5")
        assert f is None, (seed, f.invariant, f.detail)


def test_shrink_to_the_cover_letter_scenario(tmp_path):
    """Under 6.4 the shrinker cuts a random failing sequence down to the
    seed's four steps: map shared ext4, long-term writable pin, writeback,
    write through the pin."""
    f = first_failure("6.4", ())
    small = shrink(f, budget_s=30)
    assert small.invariant == "write-notify-bypass"
    assert len(small.ops) <= len(f.ops)
    assert [op["op"] for op in small.ops] == ["mmap", "pin", "writeback", "pin_write"]
    path = tmp_path / "repro.json"
    save(small, str(path))
    data = json.loads(path.read_text())
    assert data["policy"] == "6.4" and data["ops"] == small.ops
    again = replay(str(path))
    assert again is not None and again.invariant == small.invariant and again.step == small.step
    assert run_ops(small.ops, "6.5") is None            # the 6.5 policy refuses the pin


def test_replay_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="reproducer"):
        replay(str(bad))
    assert run_ops([{"op": "nonsense"}]).invariant == "model-error"


def test_ops_are_plain_json():
    import random
    rng = random.Random(5)
    w = World()
    for _ in range(200):
        op = generate(rng, w)
        assert json.loads(json.dumps(op)) == op
        apply(w, op)


# ---------------------------------------------------------------------------
# Hypothesis drives the same vocabulary

idx = st.integers(0, 7)


class GupMachine(RuleBasedStateMachine):
    """Every rule is one harness operation; the oracles run after each."""

    def __init__(self):
        super().__init__()
        self.world = World("6.5")

    @rule(proc=idx, kind=st.sampled_from(["anon", "file", "shared-anon", "huge", "secret"]),
          file=st.integers(0, 3), shared=st.booleans(), prot=st.sampled_from(["rw", "r"]),
          pages=st.integers(1, 6))
    def mmap(self, **kw):
        apply(self.world, {"op": "mmap", **kw})

    @rule(proc=idx, region=idx, page=st.integers(0, 15), value=st.integers(1, 2**32 - 1))
    def write(self, **kw):
        apply(self.world, {"op": "write", **kw})

    @rule(proc=idx, region=idx, page=st.integers(0, 15))
    def read(self, **kw):
        apply(self.world, {"op": "read", **kw})

    @rule(proc=idx, region=idx, page=st.integers(0, 15), n=st.integers(1, 3), fast=st.booleans(),
          write=st.booleans(), longterm=st.booleans())
    def pin(self, **kw):
        apply(self.world, {"op": "pin", **kw})

    @rule(hold=idx, page=st.integers(0, 3), value=st.integers(1, 2**32 - 1))
    def pin_write(self, **kw):
        apply(self.world, {"op": "pin_write", **kw})

    @rule(hold=idx, dirty=st.booleans())
    def unpin(self, **kw):
        apply(self.world, {"op": "unpin", **kw})

    @rule(proc=idx)
    def fork(self, proc):
        apply(self.world, {"op": "fork", "proc": proc})

    @rule(proc=idx, region=idx, page=st.integers(0, 15), whole=st.booleans())
    def munmap(self, **kw):
        apply(self.world, {"op": "munmap", **kw})

    @rule()
    def writeback(self):
        apply(self.world, {"op": "writeback"})

    @rule(file=st.integers(0, 3), pages=st.integers(0, 8))
    def truncate(self, **kw):
        apply(self.world, {"op": "truncate", **kw})

    @rule(file=st.integers(0, 3))
    def evict(self, file):
        apply(self.world, {"op": "evict", "file": file})

    @invariant()
    def oracles(self):
        self.world.check_step()

    def teardown(self):
        self.world.final_check()


TestGupStateMachine = GupMachine.TestCase
TestGupStateMachine.settings = settings(max_examples=25, stateful_step_count=40, deadline=None,
                                        suppress_health_check=list(HealthCheck))


def test_concurrent_steps_find_race_switches():
    """The race-window switches need concurrency: a built-in race explored
    to bound 2 (deterministic) finds them, writes the failing schedule into
    the op, and the reproducer replays that very interleaving; with no
    switch the same seeds are clean."""
    from pygup.tools.fuzz.driver import run_explore_seed
    from pygup.tools.explore import RACES
    names = list(RACES)
    for switch in ("no_wp_seq", "no_pte_recheck"):
        seed = next(i for i, n in enumerate(names) if switch in RACES[n].switches)
        f, n = run_explore_seed(seed, "6.5", (switch,))
        # the count: every schedule's two CPU operations, up to the failing one
        assert f is not None and f.invariant == f"race:{names[seed]}" and n >= 2 and n % 2 == 0
        assert f.ops[0]["op"] == "explore" and f.ops[0]["schedule"]
        again = run_ops(f.ops, "6.5", [switch])         # the schedule replays exactly
        assert again is not None and again.invariant == f.invariant
        assert again.detail == f.detail
        # without the switch the interleaving no longer exists: clean
        assert run_ops(f.ops, "6.5", []) is None
    assert all(run_explore_seed(s, "6.5")[0] is None for s in range(len(names)))


def test_a_signal_before_the_worker_is_set_up_kills_it_as_the_signal_would(monkeypatch):
    """A terminate() that reaches a worker before _worker sets its own
    handlers must not run the parent's (on_term raising in the child, which
    could then return into the parent's loop): campaign() forks with SIGTERM
    and SIGINT blocked, and the worker takes them once its own are set."""
    import os
    import signal
    from pygup.tools.fuzz import campaign as C
    real = C._worker

    def early_term(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)      # as the parent's terminate() would
        real(*a, **k)

    monkeypatch.setattr(C, "_worker", early_term)
    r = C.campaign("6.5", (), seconds=60, workers=1, max_ops=10, progress=False)
    assert r.crashed and "signal 15" in r.crashed, r.crashed
    assert r.stopped_by is None


def test_a_crashed_worker_is_a_finding(monkeypatch, capsys):
    """A worker that segfaults, or whose world fails to build, is reported
    and fails the run: never "no violation" after 0 operations."""
    import os
    import signal
    from pygup.tools.fuzz import campaign as C

    def segfault(*a, **k):
        import faulthandler
        faulthandler.disable()          # quiet: the parent reports it
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(C, "run_seed", segfault)
    r = C.campaign("6.5", (), seconds=60, workers=1, max_ops=10, progress=False)
    # SIGSEGV; under AddressSanitizer its SEGV handler reports and aborts (SIGABRT)
    assert r.crashed and ("signal 11" in r.crashed or "signal 6" in r.crashed), r.crashed
    assert r.failure is None

    def broken(*a, **k):
        raise RuntimeError("the world failed to build")

    monkeypatch.setattr(C, "run_seed", broken)
    r = C.campaign("6.5", (), seconds=60, workers=2, max_ops=10, progress=False)
    assert r.crashed and "the world failed to build" in r.crashed
    import argparse
    ap = argparse.ArgumentParser()
    C.add_arguments(ap)
    args = ap.parse_args(["--max-ops", "10", "--workers", "1", "--no-progress"])
    assert C.run(args) == 1
    assert "CRASH" in capsys.readouterr().out


def test_the_summary_says_where_the_time_went(tmp_path):
    """Each kind of seed -- sequences, explored races, stress -- has its
    seeds, operations and seconds in the summary; together they are the
    run's (a race seed counts the operations its schedules ran)."""
    import json
    from pygup.tools.fuzz import campaign as C
    r = C.campaign("6.5", (), seconds=120, workers=1, max_ops=1700, progress=False,
                   stress=False, out_dir=str(tmp_path))
    k = r.by_kind
    assert r.failure is None and set(k) == set(C.SEED_KINDS)
    assert k["race"]["seeds"] == 1 and k["race"]["ops"] > 2     # seed 5: many schedules
    assert k["sequence"]["seeds"] == r.seeds - 1 and k["stress"]["seeds"] == 0
    assert sum(v["ops"] for v in k.values()) == r.ops
    assert all(v["seconds"] > 0 for v in (k["race"], k["sequence"]))
    assert json.loads(json.dumps(r.summary()))["by_kind"] == k
    assert "race 1 seeds" in C.format_by_kind(k)
    # a stress seed: one operation, its native iterations beside it
    r = C.campaign("6.5", (), seconds=120, workers=1, max_ops=1, progress=False,
                   stress=True, stress_every=1, stress_seconds=0.05, out_dir=str(tmp_path))
    st = r.by_kind["stress"]
    assert r.failure is None and st["seeds"] == 1 and st["ops"] == 1
    assert st["native_iterations"] > 0 and "native iterations" in C.format_by_kind(r.by_kind)


def test_byte_stream_decoder():
    """Coverage-guided fuzzers drive the same vocabulary: any bytes decode
    to a runnable sequence; 6.5 stays clean on random bytes, and the bytes
    of the seed's scenario find the 6.4 bug."""
    import random

    from pygup.tools.fuzz.bytestream import decode, test_one_input
    rng = random.Random(3)
    for _ in range(30):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        ops = decode(data)
        assert all(json.loads(json.dumps(op)) == op for op in ops)
        test_one_input(data)                              # no violation under 6.5
    seed_bug = bytes([0, 0, 1, 0, 1, 0, 1,               # mmap: ext4 file f0, shared, rw
                      7, 0, 0, 0, 0, 1, 1, 1,            # pin: 1 page, fast, write, longterm
                      11,                                # writeback
                      9, 0, 0, 1, 2, 3, 4])              # pin_write
    assert [op["op"] for op in decode(seed_bug)] == ["mmap", "pin", "writeback", "pin_write"]
    with pytest.raises(AssertionError, match="write-notify-bypass"):
        test_one_input(seed_bug, "6.4")
    test_one_input(seed_bug, "6.5")


def test_mm_ops_seeded_run_is_clean(monkeypatch):
    """The issue-13 vocabulary (madvise, mlock, munlock, mremap, fallocate)
    weighted up: seeded runs stay clean under 6.5 and each new operation
    succeeds at least once."""
    import random
    from pygup.tools.fuzz import ops
    monkeypatch.setitem(ops.WEIGHTS, "madvise", 20)
    monkeypatch.setitem(ops.WEIGHTS, "mremap", 10)
    monkeypatch.setitem(ops.WEIGHTS, "mlock", 6)
    monkeypatch.setitem(ops.WEIGHTS, "fallocate", 8)
    done = set()
    for seed in range(6):
        rng = random.Random(seed)
        w = World()
        for _ in range(150):
            op = generate(rng, w)
            out = apply(w, op)
            w.check_step()
            if op["op"] in ("madvise", "mlock", "munlock", "mremap", "fallocate") \
                    and (out.endswith("-> 0") or "p)" in out):
                done.add(op["op"] if op["op"] != "madvise" else op["advice"])
        w.final_check()
    assert {"mlock", "munlock", "mremap", "fallocate", "DONTNEED", "POPULATE_WRITE",
            "PAGEOUT"} <= done, done


def test_dontfork_pages_are_not_in_the_childs_record():
    """The world's record of a fork: MADV_DONTFORK pages are not in the
    child, whose next mmap may take their address; a write there lands in
    that mapping (here a shared file), not in the parent's anon region."""
    ops = [{"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False, "prot": "r",
            "pages": 3},
           {"op": "madvise", "proc": 0, "region": 0, "page": 0, "n": 3, "advice": "DONTFORK"},
           {"op": "fork", "proc": 0},
           {"op": "mmap", "proc": 1, "kind": "file", "file": 2, "shared": True, "prot": "rw",
            "pages": 3},
           {"op": "write", "proc": 1, "region": 0, "page": 0, "value": 0xAE55E985}]
    assert run_ops(ops, "6.5", []) is None


def test_a_failed_dontneed_forgets_the_pages_it_zapped():
    """madvise() stops at the first VMA that refuses (EINVAL: VM_LOCKED),
    after zapping the VMAs before it: the world's record forgets those."""
    ops = [{"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False, "prot": "rw",
            "pages": 6},
           {"op": "mlock", "proc": 0, "region": 0, "page": 1, "n": 1},
           {"op": "write", "proc": 0, "region": 0, "page": 0, "value": 0x42F8AAA9},
           {"op": "madvise", "proc": 0, "region": 0, "page": 0, "n": 2, "advice": "DONTNEED"},
           {"op": "read", "proc": 0, "region": 0, "page": 0}]
    log = []
    assert run_ops(ops, "6.5", [], log=log) is None
    assert "DONTNEED" in log[3] and log[3].endswith("-> 22")          # EINVAL, page 0 zapped


def _world_with_tables_and_a_file():
    """A world whose teardown frees page tables and a file's address_space."""
    w = World()
    for op in ({"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False,
                "prot": "rw", "pages": 3},
               {"op": "write", "proc": 0, "region": 0, "page": 1, "value": 7},
               {"op": "mmap", "proc": 0, "kind": "file", "file": 1, "shared": True,
                "prot": "rw", "pages": 2},
               {"op": "write", "proc": 0, "region": 1, "page": 0, "value": 9}):
        apply(w, op)
        w.check_step()
    return w


def test_teardown_frees_under_an_rcu_reader_and_drains_after(monkeypatch):
    """final_check tears the world down with an RCU reader inside on another
    CPU: the table frees are deferred while it is (so the grace-period check
    sees real callbacks), and every pool is empty after the barrier."""
    from pygup.tools.fuzz import world as world_mod
    w = _world_with_tables_and_a_file()
    core = w.m._core
    seen = []
    real_poll = core.rcu_poll

    def poll():
        st = core.stats()
        seen.append(st["table_pages_pending"] + st["as_pending"])
        return real_poll()

    monkeypatch.setattr(core, "rcu_poll", poll)
    w.final_check()
    assert seen and max(seen) > 0          # deferred: the reader was inside
    st = core.stats()
    assert st["table_pages_live"] == st["table_pages_pending"] == st["as_pending"] == 0
    assert world_mod.READER_CPU != 0


def test_teardown_catches_a_callback_run_inside_the_grace_period(monkeypatch):
    """Remove the grace period (the poll frees whatever is pending, reader or
    not, as a dropped rcu_read_lock would): the world names it."""
    from pygup.tools.fuzz.world import Violation
    w = _world_with_tables_and_a_file()
    core = w.m._core
    real_lock, real_unlock = core.rcu_read_lock, core.rcu_read_unlock
    monkeypatch.setattr(core, "rcu_read_lock", lambda cpu: None)     # the reader never enters
    monkeypatch.setattr(core, "rcu_read_unlock", lambda cpu: None)
    with pytest.raises(Violation) as e:
        w.final_check()
    assert e.value.invariant == "rcu-grace-period"
    assert real_lock and real_unlock


def test_teardown_catches_callbacks_never_run(monkeypatch):
    """A barrier that runs nothing (lost callbacks): the deferred table and
    address_space frees are still pending at the end, a pool leak."""
    from pygup.tools.fuzz.world import Violation
    w = _world_with_tables_and_a_file()
    core = w.m._core
    monkeypatch.setattr(core, "rcu_barrier", lambda cpu: None)
    with pytest.raises(Violation) as e:
        w.final_check()
    assert e.value.invariant == "pool-leak" and "waiting to be freed" in e.value.detail


def test_byte_stream_entry_point_options():
    """--policy and --mutants are pygup's; everything else is libFuzzer's."""
    from pygup.tools.fuzz.bytestream import parse_args
    opts, rest = parse_args(["prog", "--policy", "6.4", "--mutants", "mkclean_no_flush",
                             "-max_total_time=5", "CORPUS"])
    assert opts == {"policy": "6.4", "mutants": ("mkclean_no_flush",)}
    assert rest == ["prog", "-max_total_time=5", "CORPUS"]
    assert parse_args(["prog"])[0] == {"policy": "6.5", "mutants": ()}
    with pytest.raises(ValueError):
        parse_args(["prog", "--mutants", "no_such_switch"])
    with pytest.raises(ValueError):
        parse_args(["prog", "--policy", "9.99"])


def test_byte_stream_instruments_pygup_and_only_pygup():
    """libFuzzer needs coverage of pygup's code: every loaded pygup function
    and method is instrumented, nothing of numpy or the standard library."""
    from pygup.tools.fuzz.bytestream import instrument_pygup

    class FakeAtheris:
        seen: list = []

        def instrument_func(self, f):
            self.seen.append(f)
            return f
    fake = FakeAtheris()
    n = instrument_pygup(fake)
    names = {f"{f.__module__}.{f.__qualname__}" for f in fake.seen}
    assert n == len(fake.seen) > 100
    assert all(f.__module__.startswith("pygup") for f in fake.seen)
    assert "pygup.kernel.gup.check_vma_flags" in names
    assert "pygup.kernel.process.Process.mmap" in names
    assert "pygup.tools.fuzz.world.World.check_refcounts" in names or any(
        n.endswith(".check_refcounts") for n in names)


def test_refcount_audit_compares_arrays_through_numpy_functions():
    """Under atheris every compare operator is hooked and its operands kept
    alive: an ``a != b`` on the audit's frame-sized arrays leaked them for
    every input (RSS grew until libFuzzer's limit killed the run).  The
    audit compares arrays with np.equal / np.not_equal / np.less instead;
    only identity tests (``is None``) remain as operators."""
    import ast
    import inspect
    import textwrap

    from pygup.tools.fuzz.world import World
    for fn in (World.expected_refcounts, World.check_refcounts,
               World.check_refcounts_reference):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        ops = [type(op).__name__ for node in ast.walk(tree) if isinstance(node, ast.Compare)
               for op in node.ops]
        assert set(ops) <= {"Is", "IsNot"}, (fn.__name__, ops)


RCU_SECTION = [{"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False,
                "prot": "rw", "pages": 2},
               {"op": "write", "proc": 0, "region": 0, "page": 1, "value": 7, "cpu": 2},
               {"op": "rcu_section", "cpu": 1, "depth": 3, "rcu": True, "proc": 0,
                "region": 0, "page": 1}]


def test_rcu_section_is_clean_and_sees_an_eager_free():
    """The reader op: IRQs off three deep inside rcu_read_lock on CPU 2, an
    address_space freed by RCU meanwhile.  Clean on 6.5; with the
    address_space freed at once (as_free_no_rcu) it is the violation."""
    assert run_ops(RCU_SECTION, "6.5") is None
    f = run_ops(RCU_SECTION, "6.5", ["as_free_no_rcu"])
    assert f is not None and f.invariant == "rcu-grace-period", f
    assert "did not wait" in f.detail


@pytest.mark.parametrize("policy", ["6.1", "6.5", "6.18"])
def test_gup_edge_answers_are_every_presets(policy):
    """Each edge case through each API has the harness's answer on every
    preset (a wrong table would be a false finding)."""
    from pygup.tools.fuzz.ops import EDGE_APIS, EDGE_CASES
    ops = [{"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False,
            "prot": "rw", "pages": 2}]
    ops += [{"op": "gup_edge", "proc": 0, "case": c, "api": a, "region": 0, "page": 0}
            for c in EDGE_CASES for a in EDGE_APIS]
    log = []
    assert run_ops(ops, policy, log=log) is None, log
    assert sum("-> -14" in line for line in log) >= 12       # null, kernel, top: each API


def test_tolerating_the_seed_bug_checks_everything_else():
    """6.4 with the seed's bug tolerated: its reproducer is no finding, the
    bug's pages are left out of the lost-write checks, and a switch planted
    on top is still found."""
    from pygup.tools.fuzz.driver import load
    from pathlib import Path
    data = load(str(Path(__file__).parents[1] / "regressions" / "bug01_seed_6_4.json"))
    assert run_ops(data["ops"], "6.4") is not None
    assert run_ops(data["ops"], "6.4", tolerate=("seed-bug",)) is None
    assert run_ops(data["ops"], "6.5", tolerate=("seed-bug",)) is None
    f = None
    for seed in range(200):
        f, _ = run_seed(seed, 300, "6.4", ("unpin_no_bias",), tolerate=("seed-bug",))
        if f is not None:
            break
    assert f is not None and f.invariant == "refcount-balance", f
    assert f.tolerate == ["seed-bug"] and f.to_json()["tolerate"] == ["seed-bug"]
    with pytest.raises(ValueError, match="tolerate"):
        World("6.4", tolerate=("no-such-bug",))


def test_a_campaign_takes_its_presets_in_turn():
    from pygup.tools.fuzz.campaign import CONCURRENT_EVERY, seed_policy
    got = [seed_policy("6.1,6.5,6.18", s) for s in range(0, 4 * CONCURRENT_EVERY,
                                                           CONCURRENT_EVERY)]
    assert got == ["6.1", "6.5", "6.18", "6.1"]
    assert {seed_policy("6.5", s) for s in range(50)} == {"6.5"}


def test_byte_stream_speaks_the_whole_vocabulary():
    """Every operation of the seeded driver can be decoded from bytes (but
    the native stress campaign, whose outcome is timing, and the old seeded
    race op, which the explored races replace)."""
    from pygup.tools.fuzz import bytestream, ops
    assert set(bytestream._OPS) == set(ops._OPS) - {"stress", "race"}
    for i, name in enumerate(bytestream._OPS):
        assert bytestream.decode(bytes([i] + [1] * 12))[0]["op"] == name


@pytest.mark.parametrize("every, want", [(0, 0), (3, 3), (12, 1)])   # seed 5 explores
def test_stress_share_is_an_option(monkeypatch, every, want):
    """--stress-every N: one seed in N is a native stress campaign (0: none),
    --stress-seconds its length; the explored-race seeds stay where they are."""
    import time
    from pygup.tools.fuzz import campaign as C
    calls = []
    monkeypatch.setattr(C, "run_stress_seed",
                        lambda s, pol, mut, tol, secs, **k: calls.append((s, secs)) or (None, 1))
    monkeypatch.setattr(C, "run_explore_seed", lambda s, pol, mut, tol, **k: (None, 1))
    monkeypatch.setattr(C, "run_seed", lambda *a, **k: (None, 1))

    class Q(list):
        put = list.append
    C._work("6.5", [], 0, (0, 1), 0, 1, time.monotonic() + 60, 12, Q(), stress=True,
            stress_every=every, stress_seconds=0.25)
    assert len(calls) == want and all(secs == 0.25 for _, secs in calls)
    assert all(s % C.CONCURRENT_EVERY != C.CONCURRENT_EVERY // 2 - 1 for s, _ in calls)


def test_every_race_and_stress_scenario_meets_every_preset(monkeypatch):
    """A campaign's race seeds take the built-in races in turn, each under
    every preset of its policy list before the next race, and so do its
    stress seeds with the scenarios: in races x presets blocks every pair
    is run (a rotation by seed alone paired each race with one residue of
    the seed and one preset: 7 of 21 races ever ran from seed 0)."""
    import time
    from pygup.tools.explore import RACES
    from pygup.tools.fuzz import campaign as C
    from pygup.tools.fuzz.ops import STRESS_SCENARIOS, explore_op, stress_op
    races, scenarios = set(), set()
    monkeypatch.setattr(C, "run_explore_seed", lambda s, pol, mut, tol, index, explored:
                        races.add((explore_op(index)["race"], pol)) or (None, 1))
    monkeypatch.setattr(C, "run_stress_seed", lambda s, pol, mut, tol, secs, index, counts:
                        scenarios.add((stress_op(s, secs, index)["scenario"], pol)) or (None, 1))
    monkeypatch.setattr(C, "run_seed", lambda *a, **k: (None, 1))

    class Q(list):
        put = list.append
    presets = ["6.1", "6.5", "6.18"]
    blocks = len(RACES) * len(presets)
    C._work(",".join(presets), [], 0, (0, 1), 0, 1, time.monotonic() + 600,
            blocks * C.CONCURRENT_EVERY, Q(), stress=True)
    assert races == {(r, p) for r in RACES for p in presets}
    assert scenarios == {(x, p) for x in STRESS_SCENARIOS for p in presets}


def test_a_race_met_again_gets_random_schedules():
    """The bound-2 search is deterministic: a worker that searched a race
    clean under a preset runs its next seed of that race as random
    schedules (explore.sample) -- other interleavings, counted, and a
    finding among them replays exactly from the op."""
    from pygup.tools.explore import RACES
    from pygup.tools.fuzz.driver import run_explore_seed
    from pygup.tools.fuzz.ops import SAMPLE_RUNS
    names = list(RACES)
    i = names.index("fast-munmap")
    done: set = set()
    f, n = run_explore_seed(5, "6.5", index=i, explored=done)
    assert f is None and done == {("fast-munmap", "6.5", ())} and n > 2 * SAMPLE_RUNS
    f, n = run_explore_seed(17, "6.5", index=i, explored=done)
    assert f is None and n == 2 * SAMPLE_RUNS            # 16 random schedules of 2 CPUs
    # a switch the race exposes, met by random schedules: the op says which
    # sample, and its failing schedule replays
    hits = []
    for seed in range(8):
        done = {("fast-munmap", "6.5", ("no_pte_recheck",))}
        f, n = run_explore_seed(seed, "6.5", ("no_pte_recheck",), index=i, explored=done)
        if f is not None:
            hits.append(f)
    assert hits, "16 random schedules of fast-munmap never hit the missing PTE re-check"
    f = hits[0]
    assert f.ops[0]["sample"] is not None and f.ops[0]["schedule"]
    again = run_ops(f.ops, "6.5", ["no_pte_recheck"])
    assert again is not None and (again.invariant, again.detail) == (f.invariant, f.detail)
    assert run_ops(f.ops, "6.5", []) is None


@pytest.mark.parametrize("wait", ["synchronize_rcu", "rcu_barrier", "shootdown"])
def test_orphan_section_op_is_clean(wait):
    """A thread that ends with IRQs off on the reader CPU: grace periods
    pass it, the shootdown ends it (the core's reap, or Python's repair),
    and the world's final audit is clean afterwards."""
    assert run_ops([{"op": "orphan_section", "wait": wait}], "6.5") is None


def test_explain_oracle_checks_the_trace(monkeypatch):
    """A traced GUP call must be explained truthfully: with the fast path's
    stop reasons gone from the table, the trace of a fallback names none,
    and the fuzzer says so."""
    ops = [{"op": "mmap", "proc": 0, "kind": "anon", "file": 0, "shared": False,
            "prot": "rw", "pages": 2},
           {"op": "pin", "proc": 0, "region": 0, "page": 0, "n": 2, "fast": True,
            "write": True, "longterm": False, "trace": True}]
    assert run_ops(ops, "6.5") is None
    from pygup.kernel import gup
    monkeypatch.setattr(gup, "FAST_STOP_REASONS", {})
    f = run_ops(ops, "6.5")
    assert f is not None and f.invariant == "explain" and "says why" in f.detail, f


def test_truncate_truth_follows_the_mapping_there_now():
    """A hole munmap left in one file's private mapping, filled by another
    file's: a COW write there belongs to the second file's mapping, and
    truncating the first file (to a size that keeps the hole's old page)
    zaps nothing there.  The harness used to ask its region -- the first
    mapping -- and forgot the write (a false cow-isolation violation)."""
    ops = [{"op": "mmap", "proc": 1, "kind": "file", "file": 2, "shared": False, "prot": "rw",
            "pages": 2},
           {"op": "mmap", "proc": 2, "kind": "anon", "file": 0, "shared": False, "prot": "rw",
            "pages": 1},
           {"op": "munmap", "proc": 0, "region": 7, "page": 14, "whole": True},
           {"op": "munmap", "proc": 7, "region": 5, "page": 8, "whole": False},
           {"op": "mmap", "proc": 6, "kind": "file", "file": 0, "shared": False, "prot": "rw",
            "pages": 4},
           {"op": "write", "proc": 1, "region": 1, "page": 15, "value": 3829630079, "cpu": 2},
           {"op": "truncate", "file": 2, "pages": 2},
           {"op": "read", "proc": 5, "region": 5, "page": 7, "cpu": 0}]
    log: list = []
    assert run_ops(ops, "6.5", log=log) is None, "\n".join(log)
