"""``pygup fuzz``: seeded campaigns over worker processes and shards, a
progress bar, a summary, reproducers for what is found, and ``--selftest``,
which proves the harness finds the 6.4 bug and every protection switch."""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import multiprocessing as mp
import os
import queue
import re
import signal
import sys
import threading
import time
from typing import Optional

from pygup.tools.fuzz.driver import (Failure, replay, run_explore_seed, run_seed,
                                    run_stress_seed, shrink)
from pygup.config.mutants import MUTANTS

OPS_PER_SEED = 300
# a seed is a random sequence, a built-in race explored (its schedules'
# operations counted) or a native stress campaign (one operation: its
# iterations run in C, outside the harness's oracles)
SEED_KINDS = ("sequence", "race", "stress")
STRESS_SECONDS = 0.1      # each native stress seed's campaign
CONCURRENT_EVERY = 12     # seeds 12k+11: a native race campaign (stress.c, timing:
                          # throughput and TSan); seeds 12k+5: a built-in race
                          # explored to bound 2 (tools/explore.py, deterministic)


@dataclasses.dataclass
class Result:
    policy: str
    mutants: list[str]
    ops: int
    seeds: int
    seconds: float
    failure: Optional[dict] = None       # the first shrunk reproducer, as saved
    reproducer: Optional[str] = None
    found_after_ops: Optional[int] = None
    found_after_s: Optional[float] = None
    seed: int = 0
    shard: str = "0/1"
    workers: int = 1
    crashes: list[dict] = dataclasses.field(default_factory=list)   # deduplicated
    corpus: list[str] = dataclasses.field(default_factory=list)     # corpus files written
    stopped_by: Optional[str] = None     # "SIGTERM", "SIGINT" when a signal ended it
    crashed: Optional[str] = None        # a worker that died: a finding, never a clean run
    error: Optional[str] = None          # an internal error of the harness itself
    # where the workers' time went, per kind of seed (SEED_KINDS): the seeds,
    # their operations and the seconds they took
    # (and the stress campaigns' native iterations, which are not operations)
    by_kind: dict = dataclasses.field(default_factory=lambda: {
        k: {"seeds": 0, "ops": 0, "seconds": 0.0} | (
            {"native_iterations": 0} if k == "stress" else {}) for k in SEED_KINDS})

    def summary(self) -> dict:
        """The JSON a CI collects: the run's identity (shard, seed, policy,
        switches, pygup version, host) and what it found."""
        d = dataclasses.asdict(self)
        d.update(pygup_fuzz_summary=SUMMARY_FORMAT, switches=self.mutants,
                 version=_pygup_version(), host=_host(),
                 exit_status=exit_status(self))
        return d


SUMMARY_FORMAT = 1


def exit_status(r: Result) -> int:
    """0 clean, 1 a violation found (a crashed worker is one, and so is a
    run that tested nothing), 3 an internal error of the harness (2, a
    usage error, never gets this far)."""
    if r.error:
        return 3
    if r.crashes or r.crashed:
        return 1
    return 1 if r.ops == 0 and r.stopped_by is None else 0


def _pygup_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pygup")
    except PackageNotFoundError:
        return "unknown"


def _host() -> dict:
    import platform
    return {"name": platform.node(), "system": platform.platform(),
            "python": platform.python_version(), "cpus": os.cpu_count()}


def failure_site(failure: dict) -> str:
    """Where a failure fired: the failing op ("race/fork" for a scheduled
    race, "stress/unmap" for a native campaign), or the final check."""
    ops, step = failure.get("ops") or [], failure.get("step", 0)
    if not isinstance(step, int) or not 0 <= step < len(ops):
        return "final-check"
    op = ops[step]
    sub = op.get("kind") or op.get("scenario")
    return f"{op.get('op')}/{sub}" if sub else str(op.get("op"))


def content_hash(data: dict) -> str:
    """A reproducer's identity: its invariant, policy, switches and ops."""
    key = {k: data.get(k) for k in ("invariant", "policy", "mutants", "ops")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _safe(text: str) -> str:
    """File-name safe for artifact uploaders: letters, digits, . _ - only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def save_unique(data: dict, out_dir: str, prefix: str = "pygup-repro") -> str:
    """Write ``data`` as ``PREFIX-TARGET-HASH.json`` (TARGET: policy and
    switches, INVARIANT) in ``out_dir``; the name is the content, so two
    shards finding the same thing write the same file and different
    findings never overwrite each other."""
    os.makedirs(out_dir, exist_ok=True)
    target = "-".join([str(data.get("policy"))] + list(data.get("mutants") or []))
    inv = data.get("invariant") or "seq"
    name = _safe(f"{prefix}-{target}-{inv}-{content_hash(data)}") + ".json"
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    return path


def _seeds(seed: int, shard: tuple[int, int], worker: int, workers: int):
    """Seeds of one worker of one shard: disjoint across both."""
    i, n = shard
    k = 0
    while True:
        yield seed + i + n * (worker + workers * k)
        k += 1


def seed_policy(policy: str, seed: int) -> str:
    """The preset a seed runs under: ``policy`` may name several, comma
    separated ("6.1,6.5,6.18"), taken in turn per block of CONCURRENT_EVERY
    seeds (so each preset gets its sequences, races and stress runs)."""
    presets = policy.split(",")
    return presets[(seed // CONCURRENT_EVERY) % len(presets)]


# blocked while the workers are forked (campaign, _worker)
_START_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker(policy, mutants, seed, shard, worker, workers, deadline, max_ops, q,
            stress=True, keep_going=False, corpus=False, tolerate=(),
            stress_every=CONCURRENT_EVERY, stress_seconds=STRESS_SECONDS) -> None:
    # the parent decides when to stop: a Ctrl-C reaches the whole process
    # group, and a worker must not die with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # campaign() forked this process with both blocked: one that came
    # meanwhile is delivered now, to the dispositions just set
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _START_SIGNALS)
    try:
        _work(policy, mutants, seed, shard, worker, workers, deadline, max_ops, q, stress,
              keep_going, corpus, tolerate, stress_every, stress_seconds)
    except BaseException as e:           # its world failed to build, the model raised...
        import traceback
        q.put(("crash", f"worker {worker}: {type(e).__name__}: {e}\n"
                        f"{traceback.format_exc(limit=8)}"))
        raise SystemExit(1)


def _work(policy, mutants, seed, shard, worker, workers, deadline, max_ops, q,
          stress=True, keep_going=False, corpus=False, tolerate=(),
          stress_every=CONCURRENT_EVERY, stress_seconds=STRESS_SECONDS) -> None:
    done = 0
    seen: set = set()
    races_explored: set = set()       # run_explore_seed: searched clean in this worker
    presets = len(policy.split(","))
    for s in _seeds(seed, shard, worker, workers):
        if time.monotonic() > deadline or (max_ops and done >= max_ops):
            break
        features: Optional[set] = set() if corpus else None
        ops: list = []
        pol = seed_policy(policy, s)
        # a block's race and stress scenario: the next one every len(presets)
        # blocks, so each meets every preset in turn (seed_policy)
        turn = s // CONCURRENT_EVERY // presets
        t0 = time.monotonic()
        counts: dict = {}
        if s % CONCURRENT_EVERY == CONCURRENT_EVERY // 2 - 1:
            kind = "race"
            failure, n = run_explore_seed(s, pol, mutants, tolerate, index=turn,
                                          explored=races_explored)
        elif stress and stress_every and s % stress_every == stress_every - 1:
            kind = "stress"
            failure, n = run_stress_seed(s, pol, mutants, tolerate, stress_seconds,
                                         index=s // stress_every // presets, counts=counts)
        else:
            kind = "sequence"
            failure, n = run_seed(s, OPS_PER_SEED, pol, mutants, deadline,
                                  features=features, ops_out=ops, tolerate=tolerate)
        done += n
        q.put(("ops", (n, kind, time.monotonic() - t0, counts.get("stress_iterations", 0))))
        if features and not features <= seen and failure is None:
            seen |= features
            q.put(("corpus", {"invariant": None, "policy": pol, "mutants": sorted(mutants),
                              "seed": s, "features": sorted(features), "ops": ops}))
        if failure is not None:
            q.put(("failure", failure))
            if not keep_going:
                return
    q.put(("done", worker))


class _Stop(Exception):
    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def campaign(policy: str = "6.5", mutants=(), seconds: float = 60.0, workers: int = 1,
             seed: int = 0, shard: tuple[int, int] = (0, 1), max_ops: int = 0,
             out_dir: str = ".", progress: bool = True, shrink_s: float = 30.0,
             stress: bool = True, keep_going: bool = False,
             corpus_dir: Optional[str] = None, tolerate=(),
             stress_every: int = CONCURRENT_EVERY,
             stress_seconds: float = STRESS_SECONDS) -> Result:
    """Run until the time budget (or max_ops in total) is spent, a
    violation is found (every violation with ``keep_going``), a worker
    crashes, or SIGTERM / Ctrl-C arrives; each new violation is shrunk and
    saved as JSON named by its content; ``corpus_dir`` keeps sequences that
    showed a new kind of outcome.  The workers are stopped whatever happens.
    ``stress``: include the native stress seeds (real threads: their
    findings depend on timing) -- one seed in ``stress_every`` (0: none),
    each ``stress_seconds`` long; without, a run bounded by max_ops is a pure
    function of the seeds.  ``policy``: one preset or several, comma
    separated (seed_policy); ``tolerate``: known bugs every world lives
    with (World.TOLERABLE: "seed-bug" lets the pre-6.5 presets be fuzzed
    for everything but the bug 6.5 fixed)."""
    from pygup.tools.fuzz.world import World
    World.check_tolerate(tolerate)
    start = time.monotonic()
    deadline = start + seconds
    per_worker = -(-max_ops // workers) if max_ops else 0
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(policy, list(mutants), seed, shard, w, workers,
                                               deadline, per_worker, q, stress, keep_going,
                                               corpus_dir is not None, tuple(tolerate),
                                               stress_every, stress_seconds),
                            daemon=True)
             for w in range(workers)]
    res = Result(policy, sorted(mutants), 0, 0, 0.0, seed=seed, shard=f"{shard[0]}/{shard[1]}",
                 workers=workers)

    def on_term(signum, frame):
        raise _Stop(signal.Signals(signum).name)
    old_term = signal.signal(signal.SIGTERM, on_term) \
        if threading.current_thread() is threading.main_thread() else None
    bar = None
    seen_sites: set = set()
    try:
        # a forked worker runs this process's handlers (on_term, Python's
        # KeyboardInterrupt) until _worker sets its own: a terminate() or a
        # Ctrl-C in that window would raise in the child, which would then
        # return from p.start() into this function as if it were the
        # parent.  So both stay blocked across the forks (the workers
        # unblock them in _worker)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _START_SIGNALS)
        try:
            for p in procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=max_ops or None, unit="op", desc=f"fuzz {policy}"
                       + (f" +{','.join(mutants)}" if mutants else ""), file=sys.stderr,
                       dynamic_ncols=True)
        finished = 0
        done_workers: set = set()
        while finished < workers and (keep_going or not res.crashes) and res.crashed is None:
            try:
                kind, val = q.get(timeout=0.5)
            except queue.Empty:
                # a worker that died without saying so (a segfault in the C
                # core, the OOM killer): a finding
                dead = [w for w, p in enumerate(procs)
                        if not p.is_alive() and w not in done_workers and p.exitcode != 0]
                if dead:
                    w = dead[0]
                    code = procs[w].exitcode
                    res.crashed = (f"worker {w} died with exit code {code}"
                                   f"{' (signal ' + str(-code) + ')' if code < 0 else ''}"
                                   f" after {res.ops} operations in all")
                    break
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if kind == "crash":
                res.crashed = val
                break
            if kind == "ops":
                n, seed_kind, secs, native = val
                res.ops += n
                res.seeds += 1
                row = res.by_kind[seed_kind]
                row["seeds"] += 1
                row["ops"] += n
                row["seconds"] = round(row["seconds"] + secs, 3)
                if native:
                    row["native_iterations"] += native
                if bar is not None:
                    bar.update(n)
            elif kind == "failure":
                _record_failure(res, val, seen_sites, out_dir, shrink_s, start)
                if bar is not None:
                    bar.set_postfix(violations=len(res.crashes))
            elif kind == "corpus":
                if corpus_dir is not None:
                    res.corpus.append(save_unique(val, corpus_dir, "pygup-seq"))
            else:
                finished += 1
                done_workers.add(val)
    except KeyboardInterrupt:
        res.stopped_by = "SIGINT"
    except _Stop as stop:
        res.stopped_by = stop.signame
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if bar is not None:
            bar.close()
    res.seconds = time.monotonic() - start
    return res


def format_by_kind(by_kind: dict) -> str:
    """One line: each kind of seed's share of the workers' time, its
    operations and their rate."""
    total = sum(v["seconds"] for v in by_kind.values()) or 1.0
    parts = []
    for k, v in by_kind.items():
        rate = v["ops"] / v["seconds"] if v["seconds"] else 0.0
        native = f", {v['native_iterations']} native iterations" \
            if v.get("native_iterations") else ""
        parts.append(f"{k} {v['seeds']} seeds, {v['ops']} ops{native}, {v['seconds']:.1f}s "
                     f"({100 * v['seconds'] / total:.0f}%, {rate:.0f} ops/s)")
    return "; ".join(parts)


def _record_failure(res: Result, failure: Failure, seen_sites: set, out_dir: str,
                    shrink_s: float, start: float) -> None:
    """Dedup as it goes: the first failure at each (invariant, site) is
    shrunk and saved; later ones only count."""
    raw = failure.to_json()
    key = (failure.invariant, failure_site(raw))
    if key in seen_sites:
        for c in res.crashes:
            if (c["invariant"], c["site"]) == key:
                c["hits"] += 1
        return
    seen_sites.add(key)
    small = shrink(failure, shrink_s)
    data = small.to_json()
    path = save_unique(data, out_dir)
    crash = {"invariant": small.invariant, "site": failure_site(data), "detail": small.detail,
             "hash": content_hash(data), "reproducer": path, "reproducer_ops": len(small.ops),
             "found_after_ops": res.ops, "found_after_s": round(time.monotonic() - start, 3),
             "hits": 1}
    res.crashes.append(crash)
    if res.failure is None:
        res.failure = data
        res.reproducer = path
        res.found_after_ops, res.found_after_s = crash["found_after_ops"], crash["found_after_s"]


# ---------------------------------------------------------------------------
# selftest

SEQUENTIAL_OPS = 20_000    # the op budget of a sequential switch's campaign


def selftest(budget_s: float = 600.0, clean_ops: int = 1_000_000, workers: int = 1,
             out_dir: str = ".", progress: bool = False,
             seq_ops: int = SEQUENTIAL_OPS) -> tuple[list[dict], bool]:
    """For the 6.4 policy and each protection switch, a deterministic
    method, so that the verdict never depends on machine load:

    * a switch of a race window, and the 6.4 bug: its built-in race
      explored to bound 2 (tools/explore.py) until the first failing
      schedule -- the same schedules on every run;
    * a sequential switch (no interleaving needed): the seeded campaign
      without native stress, bounded by ``seq_ops`` operations (not by time);

    then every built-in race explored to bound 2 under 6.5 with no switch
    (0 failing schedules), and the 6.5 campaign for ``clean_ops`` operations
    (clean).  ``budget_s`` only bounds a stall."""
    from pygup.tools import explore
    rows = []
    ok = True
    # every switch, the over-refusing ones too (the over-refusal oracle)
    targets = [("6.4", ())] + [("6.5", (name,)) for name in MUTANTS]
    for policy, mutants in targets:
        race, planted = (explore.SEED_BUG_RACE, ()) if not mutants else (None, mutants)
        if mutants:
            try:
                race, planted = explore.exposure(mutants[0])
            except ValueError:
                race = None
        t0 = time.monotonic()
        if race is not None:
            res = explore.explore(race, 2, policy, planted, stop_at_first=True)
            found = res.failing is not None
            also = [x for x in planted if x not in mutants]
            row = {"method": f"explore {race}" + (f" (+{'+'.join(also)})" if also else ""),
                   "found": found, "schedules": res.explored,
                   "invariant": f"race:{race}" if found else "-", "ops": None,
                   "detail": res.failing.detail if found else "",
                   "reproducer_ops": len(res.failing.schedule) if found else None}
        else:
            r = campaign(policy, mutants, budget_s, workers, 0, (0, 1), seq_ops, out_dir,
                         progress, stress=False)
            found = r.failure is not None
            row = {"method": "seeded ops", "found": found, "schedules": None,
                   "invariant": r.failure["invariant"] if found else ("crash" if r.crashed
                                                                      else "-"),
                   "ops": r.found_after_ops if found else r.ops,
                   "detail": r.failure["detail"] if found else (r.crashed or ""),
                   "reproducer_ops": len(r.failure["ops"]) if found else None}
        ok &= row["found"]
        rows.append({"target": f"policy {policy}" if not mutants else mutants[0], **row,
                     "seconds": round(time.monotonic() - t0, 2)})
    # every race clean under 6.5
    t0 = time.monotonic()
    total, failing = 0, []
    for name in explore.RACES:
        res = explore.explore(name, 2, "6.5")
        total += res.explored
        if res.failing is not None:
            failing.append(f"{name}: {res.failing.detail}")
    ok &= not failing
    rows.append({"target": "policy 6.5 (every race)", "method": "explore all", "found": bool(failing),
                 "invariant": "none" if not failing else "race", "schedules": total, "ops": None,
                 "detail": "; ".join(failing), "reproducer_ops": None,
                 "seconds": round(time.monotonic() - t0, 2)})
    clean = campaign("6.5", (), 10 * 3600, workers, 10_000, (0, 1), clean_ops, out_dir, progress)
    bad = clean.failure is not None or clean.crashed is not None or clean.ops == 0
    ok &= not bad
    rows.append({"target": "policy 6.5 (clean run)", "method": "seeded ops", "found": bad,
                 "invariant": clean.failure["invariant"] if clean.failure else
                 ("crash" if clean.crashed else "none"),
                 "schedules": None, "ops": clean.ops, "detail": clean.crashed or "",
                 "seconds": round(clean.seconds, 1), "reproducer_ops": None})
    return rows, ok


def format_table(rows: list[dict]) -> str:
    widths = (26, 28, 24, 9, 8, 8, 9)
    head = (f"| {'target':<26} | {'method':<28} | {'invariant that fired':<24} | "
            f"{'schedules':>9} | {'ops':>8} | {'seconds':>8} | {'repro len':>9} |")
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [head, sep]
    for r in rows:
        clean_row = r["target"].startswith("policy 6.5 (")
        inv = r["invariant"] if r["found"] or clean_row else "NOT FOUND"
        dash = lambda v: "-" if v is None else str(v)          # noqa: E731
        lines.append(f"| {r['target']:<26} | {r['method']:<28} | {inv:<24} | "
                     f"{dash(r['schedules']):>9} | {dash(r['ops']):>8} | {r['seconds']:>8} | "
                     f"{dash(r['reproducer_ops']):>9} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# merge: the collect step of sharded runs

def merge(dirs: list[str]) -> dict:
    """Read every shard summary under ``dirs`` (recursively) and return one:
    the shards, the totals, and the crashes deduplicated by (invariant,
    site, shrunk reproducer) with the shards that found each."""
    shards, crashes = [], {}
    for d in dirs:
        if not os.path.isdir(d):
            raise ValueError(f"not a directory: {d!r}")
        for path in sorted(glob.glob(os.path.join(d, "**", "*.json"), recursive=True)):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("pygup_fuzz_summary") != SUMMARY_FORMAT:
                continue
            shards.append({k: data.get(k) for k in (
                "shard", "seed", "policy", "switches", "workers", "ops", "seeds", "seconds",
                "version", "host", "stopped_by", "error", "exit_status")} | {"summary": path})
            for c in data.get("crashes") or []:
                key = (c.get("invariant"), c.get("site"), c.get("hash"))
                entry = crashes.setdefault(key, {**c, "found_in": [], "hits": 0})
                entry["found_in"].append(data.get("shard"))
                entry["hits"] += c.get("hits", 1)
    if not shards:
        raise ValueError(f"no pygup fuzz summaries under {', '.join(dirs)}")
    status = 3 if any(s["error"] for s in shards) else (1 if crashes else 0)
    return {"pygup_fuzz_merge": SUMMARY_FORMAT, "shards": shards,
            "ops": sum(s["ops"] or 0 for s in shards),
            "seconds": max(s["seconds"] or 0 for s in shards),
            "crashes": list(crashes.values()), "exit_status": status}


def add_merge_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dirs", nargs="+", metavar="DIR", help="shard output directories")
    ap.add_argument("--json", metavar="OUT", help="write the merged summary here "
                    "(default: print it)")


def run_merge(args: argparse.Namespace) -> int:
    merged = merge(args.dirs)
    text = json.dumps(merged, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    else:
        print(text)
    n = len(merged["shards"])
    print(f"pygup fuzz merge: {n} shard{'s' if n != 1 else ''}, {merged['ops']} ops, "
          f"{len(merged['crashes'])} distinct crash{'es' if len(merged['crashes']) != 1 else ''}",
          file=sys.stderr)
    for c in merged["crashes"]:
        print(f"  [{c['invariant']}] at {c['site']}: {c['reproducer']} "
              f"(shards {', '.join(map(str, c['found_in']))})", file=sys.stderr)
    return merged["exit_status"]


# ---------------------------------------------------------------------------
# the command

def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``, or a usage error saying so."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    parse.__name__ = f"integer >= {low}"        # argparse names the type in its errors
    return parse


def _policies(text: str) -> str:
    """--policy: one preset or a comma-separated list of them."""
    from pygup.config.policy import POLICIES
    names = [t.strip() for t in text.split(",")]
    bad = [n for n in names if n not in POLICIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(bad) or text!r} "
                                         f"(presets: {', '.join(sorted(POLICIES))})")
    return ",".join(names)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"must be I/N with 0 <= I < N, got {text!r}")
    return i, n


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from pygup.config.policy import POLICIES
    ap.add_argument("--seconds", type=_positive, default=60.0,
                    help="time budget in seconds, > 0 (default 60)")
    ap.add_argument("--policy", default="6.5", type=_policies,
                    help="kernel policy, or several comma separated, taken in turn per "
                    f"block of seeds (default 6.5; presets: {', '.join(sorted(POLICIES))})")
    ap.add_argument("--tolerate", action="append", default=[], choices=["seed-bug"],
                    help="live with a known bug: seed-bug = on presets before 6.5, a write "
                    "through a long-term pin behind writeback's back (the bug 6.5 fixed) is "
                    "not a finding, everything else is checked (repeatable)")
    ap.add_argument("--workers", type=_int_at_least(1), default=os.cpu_count() or 1,
                    help="worker processes (default: every core)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--mutant", action="append", default=[], choices=sorted(MUTANTS),
                    help="re-plant a historic bug (repeatable)")
    ap.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                    help="this machine's share of the seeds (default 0/1)")
    ap.add_argument("--max-ops", type=int, default=0, help="stop after this many operations")
    ap.add_argument("--keep-going", action="store_true",
                    help="continue after a violation, deduplicating as it goes")
    ap.add_argument("--corpus", metavar="DIR",
                    help="keep sequences that showed a new kind of outcome here")
    ap.add_argument("--stress-every", type=_int_at_least(0), default=CONCURRENT_EVERY,
                    metavar="N", help="one seed in N is a native stress campaign (real "
                    f"threads: throughput and TSan, timing-dependent; default {CONCURRENT_EVERY}, "
                    "0 for none)")
    ap.add_argument("--stress-seconds", type=_positive, default=STRESS_SECONDS, metavar="S",
                    help=f"each stress campaign's length (default {STRESS_SECONDS})")
    ap.add_argument("--replay", metavar="FILE", help="rerun a reproducer deterministically")
    ap.add_argument("--plot", metavar="OUT.svg",
                    help="with --replay: draw what happened (.svg, .png, .pdf)")
    ap.add_argument("--json", metavar="OUT", help="write the summary as JSON")
    ap.add_argument("--out-dir", default=".", help="where reproducers go (default .)")
    ap.add_argument("--shrink-seconds", type=_non_negative, default=30.0,
                    help="time to shrink each violation's reproducer, >= 0 (default 30; "
                    "0 keeps the sequence as found)")
    ap.add_argument("--selftest", action="store_true",
                    help="prove the harness finds the 6.4 bug and every protection switch")
    bar = ap.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None,
                     help="show a progress bar (default: only on a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false",
                     help="never show a progress bar")
    sub = ap.add_subparsers(dest="fuzz_cmd", metavar="{merge}")
    add_merge_arguments(sub.add_parser(
        "merge", help="collect shard outputs: one summary, crashes deduplicated "
        "(exit 0 clean, 1 crashes, 3 a shard had an internal error)"))


def run(args: argparse.Namespace) -> int:
    """``pygup fuzz``: exit 0 clean, 1 a violation found, 3 an internal
    error (argparse answers usage errors with 2)."""
    try:
        return _run(args)
    except ValueError as exc:
        print(f"pygup fuzz: {exc}", file=sys.stderr)
        return 2
    except Exception:                # noqa: BLE001 - an internal error, reported
        import traceback
        traceback.print_exc()
        return 3


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "fuzz_cmd", None) == "merge":
        return run_merge(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.plot and not args.replay:
        raise ValueError("--plot goes with --replay FILE")
    if args.replay:
        return _replay(args)
    i, n = args.shard
    if args.selftest:
        rows, ok = selftest(max(args.seconds, 600.0), args.max_ops or 1_000_000, args.workers,
                            args.out_dir, progress)
        print(format_table(rows))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        return 0 if ok else 1
    r = campaign(args.policy, args.mutant, args.seconds, args.workers, args.seed, (i, n),
                 args.max_ops, args.out_dir, progress, shrink_s=args.shrink_seconds,
                 keep_going=args.keep_going, corpus_dir=args.corpus,
                 tolerate=tuple(args.tolerate), stress_every=args.stress_every,
                 stress_seconds=args.stress_seconds)
    rate = r.ops / r.seconds if r.seconds else 0
    print(f"pygup fuzz: policy {r.policy}{' mutants ' + ','.join(r.mutants) if r.mutants else ''}"
          f" shard {r.shard}: {r.ops} ops over {r.seeds} seeds in {r.seconds:.1f}s "
          f"({rate:.0f} ops/s, {args.workers} workers)"
          + (f"; stopped by {r.stopped_by}" if r.stopped_by else ""))
    print("  " + format_by_kind(r.by_kind))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(r.summary(), fh, indent=1)
    if r.error:
        print(f"INTERNAL ERROR: {r.error}", file=sys.stderr)
    if r.crashed:
        print(f"CRASH: {r.crashed}")
    if r.ops == 0 and r.stopped_by is None:
        print("pygup fuzz: no operation ran (nothing was tested)")
    for c in r.crashes:
        print(f"VIOLATION [{c['invariant']}] at {c['site']}: {c['detail']}")
        print(f"reproducer ({c['reproducer_ops']} ops): {c['reproducer']}")
        print(f"replay with: pygup fuzz --replay {c['reproducer']}")
    if r.corpus:
        print(f"corpus: {len(r.corpus)} sequences in {args.corpus}")
    if exit_status(r) == 0:
        print("no violation")
    return exit_status(r)


def _replay(args: argparse.Namespace) -> int:
    from pygup.tools.timeline import check_plot_path
    if args.plot:
        check_plot_path(args.plot)
    log: list[str] = []
    races: list = []
    f = replay(args.replay, log, races=races)
    print("\n".join(log))
    if args.plot:
        from pygup.tools.fuzz.plot import plot_replay
        plot_replay(args.replay, log, f, races, args.plot)
        print(f"timeline written to {args.plot}")
    if f is None:
        print("replay: no violation")
        return 0
    print(f"replay: [{f.invariant}] {f.detail} at step {f.step}")
    return 1
