"""``pygup fuzz`` for CI and sharded runs: reproducers named by content,
``fuzz merge`` deduplicating across shards, summaries that say who ran
what, exit codes, SIGTERM / Ctrl-C handling, progress bars only on
demand, --keep-going with a corpus."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pygup.tools.fuzz import campaign as cp

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _fuzz(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pygup", "fuzz", *args], capture_output=True,
                          text=True, env=ENV, timeout=kw.pop("timeout", 240), **kw)


def test_reproducer_names_are_content_hashes_without_colons(tmp_path):
    data = {"invariant": "stress:not_exclusive", "policy": "6.5", "mutants": ["no_wp_seq"],
            "ops": [{"op": "race", "kind": "fork", "seed": 1}]}
    p1 = cp.save_unique(data, str(tmp_path))
    name = os.path.basename(p1)
    assert ":" not in name and name.startswith("pygup-repro-6.5-no_wp_seq-stress_not_exclusive-")
    assert cp.save_unique(dict(data), str(tmp_path)) == p1       # same content, same file
    other = cp.save_unique({**data, "ops": [{"op": "race", "kind": "fork", "seed": 2}]},
                           str(tmp_path))
    assert other != p1 and len(list(tmp_path.iterdir())) == 2    # never overwritten


def _summary(shard, crashes, **kw):
    return {"pygup_fuzz_summary": cp.SUMMARY_FORMAT, "shard": shard, "seed": 0,
            "policy": "6.4", "switches": [], "workers": 1, "ops": 10, "seeds": 1,
            "seconds": 1.0, "version": "x", "host": {}, "stopped_by": None, "error": None,
            "exit_status": 1 if crashes else 0, "crashes": crashes, **kw}


def test_merge_dedups_by_invariant_site_and_reproducer(tmp_path):
    same = {"invariant": "policy", "site": "pin", "hash": "aaaa", "reproducer": "r1",
            "hits": 1}
    for i, crashes in enumerate([[same], [same, {**same, "hash": "bbbb"}], []]):
        d = tmp_path / f"shard-{i}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(_summary(f"{i}/3", crashes)))
    (tmp_path / "shard-0" / "not-a-summary.json").write_text("{}")
    merged = cp.merge([str(tmp_path / f"shard-{i}") for i in range(3)])
    assert len(merged["shards"]) == 3 and merged["ops"] == 30
    by_hash = {c["hash"]: c for c in merged["crashes"]}
    assert set(by_hash) == {"aaaa", "bbbb"}
    assert by_hash["aaaa"]["found_in"] == ["0/3", "1/3"] and by_hash["aaaa"]["hits"] == 2
    assert merged["exit_status"] == 1


def test_merge_of_nothing_is_a_usage_error(tmp_path, capsys):
    assert cp.run(_args("merge", str(tmp_path))) == 2
    assert "no pygup fuzz summaries" in capsys.readouterr().err


def _args(*argv):
    import argparse
    ap = argparse.ArgumentParser()
    cp.add_arguments(ap)
    return ap.parse_args(list(argv))


@pytest.mark.fuzz
def test_shards_as_local_processes_then_merge(tmp_path):
    """examples/fuzz/shard.sh, three shards as local processes (the way an
    Indexed Job or a Slurm array runs them), then the collect step."""
    # an operation budget, not a time one: what each shard finds depends on
    # its seeds only, whatever the machine's speed (sanitizers, load)
    env = {**ENV, "PYGUP_SHARDS": "3", "PYGUP_FUZZ_OUT": str(tmp_path), "PYGUP_FUZZ_SECONDS":
           "3600", "PYGUP_FUZZ_MAX_OPS": "9000", "PYGUP_FUZZ_SEED": "5",
           "PYGUP_FUZZ_POLICY": "6.4", "PYGUP_FUZZ_WORKERS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    procs = [subprocess.Popen(["sh", str(ROOT / "examples/fuzz/shard.sh")],
                              env={**env, "JOB_COMPLETION_INDEX": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outs = [p.communicate(timeout=1800) for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 1} and codes.count(1) >= 2, outs     # 0 clean, 1 found
    names = [f.name for f in tmp_path.glob("shard-*/pygup-repro-*.json")]
    assert len(names) >= 2 and all(":" not in n for n in names)
    r = subprocess.run([sys.executable, "-m", "pygup", "fuzz", "merge",
                        *map(str, sorted(tmp_path.glob("shard-*"))), "--json",
                        str(tmp_path / "merged.json")], capture_output=True, text=True, env=ENV)
    assert r.returncode == 1, r.stderr
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert sorted(s["shard"] for s in merged["shards"]) == ["0/3", "1/3", "2/3"]
    for s, code in zip(sorted(merged["shards"], key=lambda s: s["shard"]), codes):
        assert s["policy"] == "6.4" and s["version"] and s["host"]["python"]
        assert s["stopped_by"] is None and s["exit_status"] == code  # ran its budget
    keys = [(c["invariant"], c["site"], c["hash"]) for c in merged["crashes"]]
    assert len(keys) == len(set(keys)) and all(c["found_in"] for c in merged["crashes"])


def test_usage_errors_exit_2():
    for args in (["--seconds", "0"], ["--seconds", "-1"], ["--workers", "0"],
                 ["--shard", "3/3"], ["--policy", "5.0"], ["--shrink-seconds", "-1"],
                 ["--shrink-seconds", "soon"]):
        r = _fuzz(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "error:" in r.stderr and "Traceback" not in r.stderr
    r = _fuzz("--replay", "/nonexistent/repro.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_shrink_seconds_reaches_the_campaign(monkeypatch, tmp_path):
    """--shrink-seconds is the budget each violation's shrink gets (0: keep
    the sequence as found, what bench/mutation.py wants)."""
    import argparse
    seen = {}

    def fake(*a, **k):
        seen.update(k)
        return cp.Result("6.5", [], 0, 0, 0.0, stopped_by="SIGTERM")

    monkeypatch.setattr(cp, "campaign", fake)
    for argv, want in ((["--shrink-seconds", "0"], 0.0), ([], 30.0)):
        ap = argparse.ArgumentParser()
        cp.add_arguments(ap)
        args = ap.parse_args(argv + ["--out-dir", str(tmp_path), "--no-progress"])
        cp.run(args)
        assert seen["shrink_s"] == want


def test_crashed_worker_is_a_finding(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise RuntimeError("boom in the model")
    monkeypatch.setattr(cp, "run_seed", boom)      # the forked workers inherit it
    r = cp.campaign("6.5", (), 30, 1, 0, (0, 1), 0, str(tmp_path), False)
    assert "boom in the model" in r.crashed and cp.exit_status(r) == 1


def test_internal_error_of_the_harness_exits_3(monkeypatch, tmp_path, capsys):
    def broken(*a, **k):
        raise RuntimeError("the harness broke")
    monkeypatch.setattr(cp, "shrink", broken)      # runs in the parent
    rc = cp.run(_args("--policy", "6.4", "--seconds", "60", "--workers", "1", "--out-dir",
                      str(tmp_path), "--no-progress"))
    assert rc == 3 and "the harness broke" in capsys.readouterr().err


def test_explore_plot(tmp_path, capsys):
    from pygup.tools.cli import main
    out = tmp_path / "race.svg"
    assert main(["explore", "--race", "fast-munmap", "--mutant", "no_pte_recheck",
                 "--plot", str(out)]) == 1
    text = out.read_text()
    for lane in ("CPU 0", "CPU 1", "refcount", "mapcount", "fast_grabbed", "FAILED"):
        assert lane in text
    assert (tmp_path / "race.json").exists()       # the schedule, replayable


def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C as a terminal delivers it.  A
    non-interactive shell starts background jobs with SIGINT ignored, and an
    ignored signal stays ignored across exec -- so under `... &` the whole
    suite would hand the campaign a SIGINT it cannot receive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(tmp_path, *extra):
    corpus = tmp_path / "corpus"
    p = subprocess.Popen([sys.executable, "-m", "pygup", "fuzz", "--policy", "6.5",
                          "--seconds", "120", "--workers", "2", "--out-dir", str(tmp_path),
                          "--corpus", str(corpus), "--json", str(tmp_path / "summary.json"),
                          *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 60     # running: the parent has saved a corpus entry
    while time.monotonic() < deadline and not (corpus.exists() and any(corpus.iterdir())):
        time.sleep(0.1)
    assert corpus.exists() and any(corpus.iterdir()), "the campaign never got going"
    return p


def _workers_left(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_signal_stops_workers_and_writes_the_summary(tmp_path, sig, name):
    p = _start(tmp_path)
    os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)  # Ctrl-C: the group
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGUSR1)            # where it is stuck: every thread's stack
        time.sleep(2)
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"the campaign did not stop within 60 s of {name}; its stacks:\n{err[-6000:]}")
    assert p.returncode == 0, err             # clean so far: the run's verdict, not a crash
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == name and summary["exit_status"] == 0
    assert summary["ops"] > 0 and summary["shard"] == "0/1"
    deadline = time.monotonic() + 10
    while _workers_left(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers_left(str(tmp_path)) == []


def test_progress_bar_only_on_request(tmp_path):
    quiet = _fuzz("--seconds", "30", "--max-ops", "300", "--workers", "1",
                  "--out-dir", str(tmp_path))
    assert quiet.returncode == 0 and "op/s" not in quiet.stderr and "op [" not in quiet.stderr
    loud = _fuzz("--seconds", "30", "--max-ops", "300", "--workers", "1", "--progress",
                 "--out-dir", str(tmp_path))
    assert loud.returncode == 0 and "op" in loud.stderr and "fuzz 6.5" in loud.stderr


def test_keep_going_dedups_and_keeps_a_corpus(tmp_path):
    r = cp.campaign("6.4", (), 120, 1, 0, (0, 1), 15000, str(tmp_path), False, shrink_s=5,
                    keep_going=True, corpus_dir=str(tmp_path / "corpus"))
    assert r.crashes and r.ops >= 15000 * 0.9         # it went on after the first
    keys = [(c["invariant"], c["site"]) for c in r.crashes]
    assert len(keys) == len(set(keys))
    assert sum(c["hits"] for c in r.crashes) >= len(r.crashes)
    assert r.corpus and all(os.path.exists(c) for c in r.corpus)
    seq = json.loads(Path(r.corpus[0]).read_text())
    assert seq["ops"] and seq["invariant"] is None
    # a corpus entry is a replayable sequence
    assert _fuzz("--replay", r.corpus[0]).returncode == 0


def test_replay_plot(tmp_path):
    r = cp.campaign("6.4", (), 60, 1, 0, (0, 1), 0, str(tmp_path), False, shrink_s=5)
    out = tmp_path / "replay.svg"
    res = _fuzz("--replay", r.reproducer, "--plot", str(out))
    assert res.returncode == 1 and out.exists()
    import xml.etree.ElementTree as ET
    assert ET.parse(out).getroot().tag.endswith("svg")
    assert "VIOLATION" in out.read_text()
