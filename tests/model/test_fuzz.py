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
# by a deterministic seed within the first few dozen (sequential targets;
# the race-window switches are found by concurrent steps, test_races.py)
TARGETS = [
    ("6.4", (), "write-notify-bypass"),
    ("6.5", ("whitelist_inverted",), "policy"),
    ("6.5", ("mkclean_no_flush",), "write-notify-bypass"),
    ("6.5", ("fast_no_unshare",), "pinned-anon-stays"),
    ("6.5", ("fast_secretmem",), "no-secretmem"),
    ("6.5", ("unpin_no_bias",), "refcount-balance"),
]


def first_failure(policy, mutants, seeds=150):
    for seed in range(seeds):
        f, _ = run_seed(seed, 300, policy, mutants)
        if f is not None:
            return f
    return None


@pytest.mark.parametrize("policy, mutants, invariant", TARGETS,
                         ids=[m[0] if m else p for p, m, _ in TARGETS])
def test_seeded_run_finds_target(policy, mutants, invariant):
    f = first_failure(policy, mutants)
    assert f is not None and f.invariant == invariant, f


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
    """The race-window switches need concurrency: a batch of scheduled races
    (deterministic) finds no_wp_seq, a native stress campaign finds
    no_pte_recheck; with no switch both are clean."""
    from pygup.tools.fuzz.driver import run_race_seed, run_stress_seed
    found = [run_race_seed(s, "6.5", ("no_wp_seq",))[0] for s in range(3)]
    f = next(f for f in found if f is not None)
    assert f.invariant == "pinned-anon-stays" and f.ops[0]["op"] == "race"
    again = run_ops(f.ops, "6.5", ["no_wp_seq"])         # a scheduled race replays exactly
    assert again is not None and again.invariant == f.invariant
    assert all(run_race_seed(s, "6.5")[0] is None for s in range(3))
    op = {"op": "stress", "scenario": "unmap", "seed": 1, "seconds": 1.0, "window_spins": 100}
    hit = run_ops([op], "6.5", ["no_pte_recheck"])
    assert hit is not None and hit.invariant == "stress:stale_ref"
    assert run_stress_seed(0, "6.5")[0] is None


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
