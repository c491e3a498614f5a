"""Native race campaigns (csrc/stress.c, pygup/stress.py).

Real threads, each its own emulated CPU, run GUP-fast against munmap, THP
collapse, truncate, writeback and fork.  Two claims are tested:

* with no protection switch on, no scenario ever reports a failure - the
  checks are protocols that cannot give a false alarm, not heuristics;
* each switch that needs no interleaving (the whitelist, secretmem, the pin
  bias) is caught by a targeted campaign bounded by an iteration count.

Whether real threads land in a race window is timing: a test that asserted
it would be a flaky test on a loaded machine.  The race-window switches are
found deterministically by exploration (tests/model/test_explore.py: every
schedule to a preemption bound), so nothing here asserts that a race is hit
within a time budget or that a loop reaches a call count.

Every campaign is bounded by iterations, not time, and uses two
threads - one pinner and one worker - because CI has two cores: with more
threads than cores a thread spinning on an IPI acknowledgement waits for a
descheduled one and the races thin out.  The race windows are widened by the
driver's ``window_spins`` knob (pinners spin inside GUP-fast's read-then-use
windows; timing only), and ``stop_on_failure`` ends a campaign at its first
finding, so a caught switch costs milliseconds.
"""
from __future__ import annotations

import pytest

from pygup import Machine
from pygup.tools.stress import CHECKS, SCENARIOS, run_stress, stress_params

pytestmark = pytest.mark.stress

TWO = {"pinners": 1, "workers": 1}


def _campaign(scenario, mutants=(), table_free="rcu", seconds=1.0, seed=1, **knobs):
    knobs.setdefault("threads", TWO)
    return run_stress({"mutants": tuple(mutants), "table_free": table_free, "memory": "64MiB"},
                      scenario=scenario, seconds=seconds, seed=seed, **knobs)


@pytest.mark.parametrize("table_free", ["rcu", "ipi"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_clean_without_switches(scenario, table_free):
    """No switch: every check stays silent, also with the windows widened
    and with more threads than cores; the operations really happened (an
    iteration budget, so a slow machine -- TSan, load -- runs as many)."""
    for seed, knobs in ((1, {"window_spins": 200}), (2, {"threads": 3})):
        r = _campaign(scenario, table_free=table_free, seconds=0, max_iters=200, seed=seed,
                      **knobs)
        assert r.clean, (r.failures, r.messages, r.violations)
        assert r.ops["fast_calls"] > 0 and r.ops["pages_taken"] > 0
        assert r.iterations["workers"] > 0


# switch -> (scenario, campaign knobs, the checks that catch it): the
# switches every operation trips, no interleaving needed
# Only a switch that every completed pin trips belongs here: the others
# (whitelist_inverted, fast_secretmem) need the pinner to meet a mapped file
# or secretmem page between the worker's truncates, which is timing -- they
# missed at sanitizer speed.  Their deterministic proofs are
# tests/regressions (test_bug02, test_bug09) and the fuzz selftest.
CAUGHT = {
    "unpin_no_bias": ("unmap", {}, {"balance"}),
}


@pytest.mark.parametrize("switch", sorted(CAUGHT))
def test_switch_is_caught(switch):
    """Each sequential switch trips its check within an iteration budget."""
    scenario, knobs, checks = CAUGHT[switch]
    r = _campaign(scenario, (switch,), seconds=0, max_iters=2000,
                  stop_on_failure="balance" not in checks, **knobs)
    assert checks & set(r.failures), r.summary()


def test_race_window_switches_are_left_to_exploration():
    """Every other C switch is a race window's: exploration finds it (the
    claim lives in tests/model/test_explore.py, bounded by the search)."""
    from pygup.config.mutants import MUTANTS
    from pygup.tools.explore import race_for_switch
    seq = set(CAUGHT) | {"whitelist_inverted", "fast_secretmem", "force_write_any_page",
                         "no_unshare", "pin_or_longterm", "private_not_excluded"}
    for name, (bit, _) in MUTANTS.items():
        if bit and name not in seq:
            assert race_for_switch(name)


def test_switch_campaigns_name_the_bug():
    """The messages say what happened, in words."""
    r = _campaign("unmap", ("unpin_no_bias",), seconds=0, max_iters=2000)
    assert r.failures.get("balance"), r.summary()
    assert any("after teardown" in m and "free frames" in m for m in r.messages), r.messages
    seconds, iteration = r.first_failure["balance"]
    assert seconds >= 0 and iteration >= 0


def test_report_and_throughput():
    """The report's throughput fields exist and are computed (no speed is
    asserted: that is what the benchmarks measure)."""
    r = _campaign("unmap", seconds=0, max_iters=100)
    assert r.clean
    assert r.pins_per_second_per_pinner > 0
    assert r.ops["unmaps"] > 0 and r.ops["tables_freed"] > 0
    assert "clean" in r.summary()


def test_runs_on_a_python_machine_and_leaves_it_clean():
    m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    p = m.spawn()
    before = m.stats()
    r = run_stress(m, scenario="fork", seconds=0.1, threads=2)
    assert r.clean, r.messages
    after = m.stats()
    for key in ("nr_free_normal", "nr_free_movable", "table_pages_live", "as_live"):
        assert after[key] == before[key], key
    m.check()
    assert p.alive


def test_max_iters_budget():
    r = _campaign("truncate", seconds=0, max_iters=50)
    assert r.clean
    assert r.iterations["workers"] == 50 and r.iterations["pinners"] == 50


def test_bad_arguments():
    with pytest.raises(ValueError, match="scenario"):
        stress_params("nope")
    with pytest.raises(ValueError, match="seconds"):
        stress_params(seconds=-1)
    with pytest.raises(TypeError, match="knob"):
        stress_params(bogus=1)
    with pytest.raises(ValueError, match="variants"):
        stress_params(variants=["pin_twice"])
    with pytest.raises(ValueError, match="CPUs"):
        run_stress(Machine(memory="64MiB", movable="0MiB", cpus=2), threads=3, seconds=0.01)
    with pytest.raises(ValueError, match="machine_or_params"):
        run_stress(42)
    assert set(CHECKS) >= {"stale_ref", "whitelist", "fork_shared", "wb_bypass", "balance",
                           "violation"}
