"""The schedule explorer (pygup/tools/explore.py): every race-window switch
is found by exploration, deterministically; every built-in race is clean
without switches; a found schedule replays; the preemption bound is
honoured; pruning loses nothing the plain search finds; bad names are
errors.  Every test is bounded by the search itself, never by time."""
from __future__ import annotations

import json

import pytest

from pygup.config.mutants import MUTANTS, OVER_REFUSAL
from pygup.kernel.sched import ScheduleDiverged
from pygup.tools import explore as E
from pygup.tools.cli import main

SWITCH_RACES = [(s, r.name) for r in E.RACES.values() for s in r.switches]
# the switches that are not about a race window: they need no interleaving
# (a sequential story finds them: tests/regressions)
SEQUENTIAL = {"whitelist_inverted", "fast_secretmem", "unpin_no_bias", "force_write_any_page",
              "no_unshare"} | OVER_REFUSAL


def test_every_race_window_switch_has_a_race():
    c_switches = {name for name, (bit, _) in MUTANTS.items() if bit} - SEQUENTIAL
    assert c_switches <= {x for s, _ in SWITCH_RACES for x in s.split("+")}


def test_defence_in_depth_switches_are_harmless_alone():
    """A race that exposes switches only together ("a+b") shows each alone
    clean: that is why both fixes exist (2ba99c5e0881 and 70cbc3cc78a9)."""
    for switch, race in SWITCH_RACES:
        if "+" in switch:
            for one in switch.split("+"):
                assert E.explore(race, bound=2, mutants=[one]).failing is None, (race, one)


@pytest.mark.parametrize("switch,race", SWITCH_RACES)
def test_switch_found_deterministically(switch, race):
    a = E.explore(race, bound=2, mutants=switch.split("+"))
    b = E.explore(race, bound=2, mutants=switch.split("+"))
    assert a.failing is not None, f"{switch}: no failing schedule in {race} at bound 2"
    assert a.failing.schedule == b.failing.schedule and a.failing.detail == b.failing.detail
    assert a.explored == b.explored and a.failing_schedules == b.failing_schedules
    assert a.failing.preemptions <= 2


@pytest.mark.parametrize("race", list(E.RACES))
def test_race_clean_without_switches(race):
    res = E.explore(race, bound=2)
    assert res.failing is None, res.failing
    assert res.explored >= 2 and res.failing_schedules == 0


def test_the_seed_is_found_under_6_4():
    res = E.explore("pin-writeback", bound=2, policy="6.4")
    assert res.failing is not None and "page_mkwrite" in res.failing.detail
    assert res.failing.preemptions >= 1         # the tail alone (pin, write, unpin) is clean


def test_replay_reproduces_the_failure_and_shows_the_state():
    res = E.explore("fast-munmap", bound=2, mutants=["no_pte_recheck"])
    out = E.replay("fast-munmap", res.failing.schedule, mutants=["no_pte_recheck"])
    assert out["failed"] == res.failing.detail
    assert [[s["cpu"], s["window"]] for s in out["steps"]] == res.failing.schedule
    # the story: CPU 0 holds a grab (refcount + bias) while CPU 1's zap clears the entry
    grabbed = [s for s in out["steps"] if s["refcount"] >= 1024]
    assert grabbed and any(s["pte"] == 0 for s in grabbed)
    assert sum(s["preempt"] for s in out["steps"]) == res.failing.preemptions
    # the same schedule without the switch: the re-check backs off, so the
    # walker leaves by another window and the replay says so
    with pytest.raises(ScheduleDiverged, match="fast_rechecked"):
        E.replay("fast-munmap", res.failing.schedule)


def test_replay_against_another_path_diverges():
    res = E.explore("fast-munmap", bound=2, mutants=["no_pte_recheck"])
    bad = [[c, "zap_flushed" if p == "fast_grabbed" else p] for c, p in res.failing.schedule]
    with pytest.raises(ScheduleDiverged):
        E.replay("fast-munmap", bad, mutants=["no_pte_recheck"])


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_the_bound_is_honoured(bound, monkeypatch):
    """No schedule with more than K preemptions is ever run: count the
    preemptions of every run the explorer makes."""
    ran = []
    real = E._run

    def spy(race, policy, mutants, schedule, digests, **kw):
        run, bad = real(race, policy, mutants, schedule, digests, **kw)
        picks = [c for c, _ in run.schedule]
        masks = [mk for mk, _ in run.choices]
        ran.append(sum(E._preempts(picks, masks, i, c) for i, c in enumerate(picks)))
        return run, bad

    monkeypatch.setattr(E, "_run", spy)
    res = E.explore("fast-fork", bound=bound, mutants=["no_wp_seq"])
    # every schedule, and the replay of the shortest failing one
    assert len(ran) == res.explored + (res.failing is not None) and max(ran) <= bound
    assert bound in ran                              # and the bound is reached
    # no_wp_seq needs two switches (into fork, back to GUP-fast, ...)
    assert (res.failing is not None) == (bound >= 2)


def test_more_bound_more_schedules():
    counts = [E.explore("fast-munmap-reuse", bound=k).explored for k in (0, 1, 2, 3)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


@pytest.mark.parametrize("switch,race", SWITCH_RACES + [(None, "fast-munmap-memfd")])
def test_pruning_loses_nothing(switch, race):
    """POR and state hashing against the plain search: same verdict, same
    shortest failing schedule, never more schedules."""
    muts = switch.split("+") if switch else []
    for bound in (2, 3):
        pruned = E.explore(race, bound=bound, mutants=muts)
        plain = E.explore(race, bound=bound, mutants=muts, por=False, state_hash=False)
        assert (pruned.failing is None) == (plain.failing is None)
        if plain.failing:
            assert (pruned.failing.preemptions, len(pruned.failing.schedule)) == \
                (plain.failing.preemptions, len(plain.failing.schedule))
        assert pruned.explored <= plain.explored
        assert plain.pruned_state == plain.pruned_por == 0


def test_state_hashing_prunes_a_revisited_state():
    # at bound 3 munmap / GUP-fast orders meet in equal states
    hashed = E.explore("fast-munmap-memfd", bound=3)
    plain = E.explore("fast-munmap-memfd", bound=3, state_hash=False, por=False)
    assert hashed.pruned_state > 0 and hashed.explored < plain.explored


@pytest.mark.parametrize("switch,race", SWITCH_RACES)
def test_switch_found_at_the_races_own_windows_too(switch, race):
    focused = E.explore(race, bound=2, mutants=switch.split("+"), windows="race")
    assert focused.failing is not None
    everywhere = E.explore(race, bound=2, mutants=switch.split("+"))
    assert len(focused.failing.schedule) <= len(everywhere.failing.schedule)


def test_migration_counts_references_after_unmapping():
    """What exploration found in the model (pygup/kernel/migrate.py): the
    reference count was checked on a snapshot taken before the rmap walk and
    the unmap, so a GUP-fast pin taken while migration walked the rmap
    was lost -- the pinner kept the old folio, the mapping moved to the new
    one.  mm/migrate.c unmaps first, then freezes the count.

        CPU 0: pin_user_pages_fast(a)        CPU 1: migrate_folio(F)
        walk PGD..PMD
                                             snapshot: refcount 1 = expected
                                             rmap walk (walk_entry_read x4)
        read PTE (F)
                                             (old) copy; CPU 0 grabs F and its
                                             re-check passes; remap to F': the
                                             pin holds an orphan
                                             (fixed) unmap F, flush: waits
        grab F, re-check: none -> drop;
        the slow path waits for the lock
                                             count final (1): F' mapped
        slow path: pin F', the mapped page

    Written schedule: CPU 0 to its PMD read, CPU 1 through its walk, CPU 0
    to the end, then CPU 1."""
    w = E.RACES["fast-migrate"].setup("6.5", frozenset())
    m, (pin, migrate) = w.machine, w.ops
    p = m.processes[0]
    a = w.watch[1]
    run = m.run_concurrently([pin, migrate], schedule=[0] * 6 + [1] * 5 + [0] * 6,
                             points=E._points(E.RACES["fast-migrate"], "all"))
    ret, pages = run.results[0]
    assert ret == 1 and run.results[1] is True          # migrated, then pinned
    assert p.mm.pte(a).pfn == pages[0]                  # the pin is on the mapped page
    p.mm.unpin_user_pages(pages)
    m.check()


def test_a_sample_is_a_function_of_its_seed():
    """Random schedules (sample()): the same seed runs the same schedules
    and finds the same failing one; a different seed draws others; the
    failing schedule, preemptions counted, replays with replay()."""
    a = E.sample("fast-munmap", 8, 3, mutants=["no_pte_recheck"])
    b = E.sample("fast-munmap", 8, 3, mutants=["no_pte_recheck"])
    assert a.failing is not None and a.bound is None and a.seed == 3
    assert (a.failing.schedule, a.failing.detail, a.explored) == \
        (b.failing.schedule, b.failing.detail, b.explored)
    assert a.failing.preemptions >= 1 and a.ops_run == 2 * a.explored
    assert E.replay("fast-munmap", a.failing.schedule, mutants=["no_pte_recheck"])["failed"] \
        == a.failing.detail
    clean = E.sample("fast-munmap", 8, 3, stop_at_first=False)
    assert clean.failing is None and clean.explored == 8 and clean.missed == []
    schedules = set()
    for seed in range(4):
        runs = E._run_seeds(seed, 2)
        for rs in runs:
            w = E.RACES["fast-munmap"].setup("6.5", frozenset())
            schedules.add(tuple(w.machine.run_concurrently(w.ops, seed=rs).schedule))
    assert len(schedules) > 1                   # the seeds draw different interleavings


def test_a_sample_preempts_beyond_the_bound():
    """A random schedule preempts anywhere: the fork race's missing
    write_protect_seq needs at most 2 preemptions in the search, and a
    sample finds it too, with more (no bound)."""
    found = [E.sample("fast-fork", 16, seed, mutants=["no_wp_seq"]).failing for seed in range(4)]
    assert any(f is not None for f in found)
    assert max(f.preemptions for f in found if f is not None) > 2


def test_bad_sample_arguments_are_errors():
    with pytest.raises(ValueError, match="runs"):
        E.sample("fast-munmap", 0, 1)
    with pytest.raises(ValueError, match="runs"):
        E.sample("fast-munmap", True, 1)
    with pytest.raises(ValueError, match="seed"):
        E.sample("fast-munmap", 2, -1)
    with pytest.raises(ValueError, match="unknown race"):
        E.sample("no-such-race", 2, 1)


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="unknown race"):
        E.explore("no-such-race")
    with pytest.raises(ValueError, match="unknown switch"):
        E.explore("fast-munmap", mutants=["no_such_switch"])
    with pytest.raises(ValueError, match="policy"):
        E.explore("fast-munmap", policy="9.9")
    with pytest.raises(ValueError, match="bound"):
        E.explore("fast-munmap", bound=-1)
    with pytest.raises(TypeError):
        E.explore("fast-munmap", bound="2")
    with pytest.raises(ValueError, match="unknown window"):
        E.replay("fast-munmap", [(0, "no_such_window")])
    with pytest.raises(ValueError, match="unknown window"):
        E.Race("r", "doc", lambda p, m: None, frozenset({"no_such_window"}), ())
    with pytest.raises(ValueError, match="windows"):
        E.explore("fast-munmap", windows="some")


def test_cli(tmp_path, capsys):
    assert main(["explore", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list(E.RACES)
    out = tmp_path / "r.json"
    assert main(["explore", "--race", "fast-ro-fork", "--mutant", "fast_no_unshare",
                 "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "failing" in text and "fast_pte_read" in text
    data = json.loads(out.read_text())
    assert data["failing"]["schedule"] and data["explored"] >= 1
    assert main(["explore", "--replay", str(out)]) == 1
    assert "COW shared" in capsys.readouterr().out
    assert main(["explore", "--race", "fast-ro-fork"]) == 0
    assert "0 failing" in capsys.readouterr().out
    assert main(["explore"]) == 2
    for bad in (["--race", "nope"], ["--race", "fast-fork", "--mutant", "nope"],
                ["--race", "fast-fork", "--bound", "99"], ["--race", "fast-fork", "--policy", "1"]):
        with pytest.raises(SystemExit) as e:
            main(["explore", *bad])
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_cli_sample(tmp_path, capsys):
    """--sample N --seed S: random schedules from the command line; a
    failing one is saved and replays."""
    out = tmp_path / "s.json"
    assert main(["explore", "--race", "fast-munmap", "--mutant", "no_pte_recheck",
                 "--sample", "16", "--seed", "0", "--json", str(out)]) == 1
    assert "random schedules, seed 0" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["seed"] == 0 and data["bound"] is None and data["failing"]["schedule"]
    assert main(["explore", "--replay", str(out)]) == 1
    assert main(["explore", "--race", "fast-munmap", "--sample", "4"]) == 0
    assert "0 failing" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["explore", "--race", "fast-munmap", "--sample", "0"])
    assert e.value.code == 2 and "runs must be" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["6.1", "6.5", "6.18"])
def test_every_race_reaches_its_windows(policy):
    """Coverage: a full exploration passes every scheduling point its race
    declares (but those unreached() names, each with its reason)."""
    for name in E.RACES:
        res = E.explore(name, 2, policy)
        assert res.missed == [], (name, res.missed)


def test_a_lost_window_is_a_finding(monkeypatch):
    """A window that stops firing (here: declared unreachable nowhere but
    taken out of what the runs report) shows as missed, the CLI exits 1 and
    the fuzzer's explore step is a violation."""
    from pygup.tools.fuzz import run_ops
    orig = E._run

    def lose_mkclean_flushed(*a, **k):
        run, bad = orig(*a, **k)
        if run is not None:
            run.schedule = [(c, w) for c, w in run.schedule if w != "mkclean_flushed"]
        return run, bad
    monkeypatch.setattr(E, "_run", lose_mkclean_flushed)
    res = E.explore("writeback-write", 2, "6.5")
    assert res.failing is None and res.missed == ["mkclean_flushed"]
    assert main(["explore", "--race", "writeback-write"]) == 1
    f = run_ops([{"op": "explore", "race": "writeback-write", "bound": 2}], "6.5")
    assert f is not None and f.invariant == "race-window-unreached", f
