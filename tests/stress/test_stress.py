"""Native race campaigns (csrc/stress.c, pygup/stress.py).

Real threads, each its own emulated CPU, run GUP-fast against munmap, THP
collapse, truncate, writeback and fork.  Two claims are tested:

* with no protection switch on, no scenario ever reports a failure - the
  checks are protocols that cannot give a false alarm, not heuristics;
* each switch that a native race can expose is caught by a targeted
  campaign.

Every campaign is bounded (about a second or less of wall time) and uses two
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
    and with more threads than cores; the operations really happened."""
    for seed, knobs in ((1, {"window_spins": 200}), (2, {"threads": 3})):
        r = _campaign(scenario, table_free=table_free, seconds=0.25, seed=seed, **knobs)
        assert r.clean, (r.failures, r.messages, r.violations)
        assert r.ops["fast_calls"] > 1000 and r.ops["pages_taken"] > 1000
        assert r.iterations["workers"] > 0


# switch -> (scenario, campaign knobs, the checks that catch it)
CAUGHT = {
    "no_pte_recheck": ("unmap", {"window_spins": 100}, {"stale_ref"}),
    "no_pmd_recheck": ("collapse", {"window_spins": 100}, {"stale_ref"}),
    "table_free_no_sync": ("unmap", {"window_spins": 1000, "ranges_per_worker": 1},
                           {"violation"}),
    "as_free_no_rcu": ("truncate", {"window_spins": 100}, {"violation"}),
    # the pinner sees its page lose exclusivity, or the forker sees it in the
    # child: whichever comes first ends the campaign
    "no_wp_seq": ("fork", {"window_spins": 100, "variants": ["pin", "pin_longterm"]},
                  {"not_exclusive", "fork_shared"}),
    "mkclean_no_flush": ("writeback", {}, {"wb_bypass"}),
    "null_mapping_ok": ("truncate", {"variants": ["pin_lt_write"]}, {"whitelist"}),
    "whitelist_inverted": ("truncate", {"variants": ["pin_lt_write"]}, {"whitelist"}),
    "fast_no_unshare": ("fork", {"variants": ["pin", "pin_longterm"]},
                        {"fork_shared", "not_exclusive"}),
    "fast_secretmem": ("truncate", {}, {"secretmem"}),
    "unpin_no_bias": ("unmap", {"max_iters": 2000}, {"balance"}),
}


@pytest.mark.parametrize("switch", sorted(CAUGHT))
def test_switch_is_caught(switch):
    """Each switch trips its check within the budget (usually within
    milliseconds: see the report in first_failure)."""
    scenario, knobs, checks = CAUGHT[switch]
    modes = ("rcu", "ipi") if switch == "table_free_no_sync" else ("rcu",)
    for mode in modes:
        for seed in (1, 2, 3):
            r = _campaign(scenario, (switch,), table_free=mode, seed=seed,
                          stop_on_failure="balance" not in checks, **knobs)
            if checks & set(r.failures):
                break
        else:
            pytest.fail(f"{switch} not caught in {mode} mode: {r.summary()}")
        if "violation" in checks:
            assert r.violations, r.summary()


def test_switch_campaigns_name_the_bug():
    """The messages say what happened, in words."""
    r = _campaign("unmap", ("no_pte_recheck",), window_spins=100, stop_on_failure=True)
    assert r.failures.get("stale_ref"), r.summary()
    assert any("taken on an unmapped page" in m for m in r.messages)
    seconds, iteration = r.first_failure["stale_ref"]
    assert 0 < seconds <= r.elapsed + 0.01 and iteration >= 0


def test_report_and_throughput():
    r = _campaign("unmap", seconds=0.2)
    assert r.clean
    assert r.pins_per_second_per_pinner > 10_000
    assert r.ops["unmaps"] > 10 and r.ops["tables_freed"] > 0
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
