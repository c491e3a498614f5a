"""``pygup fuzz``: seeded campaigns over worker processes and shards, a
progress bar, a summary, reproducers for what is found, and ``--selftest``,
which proves the harness finds the 6.4 bug and every protection switch."""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from typing import Optional

from pygup.tools.fuzz.driver import (Failure, replay, run_explore_seed, run_seed,
                                    run_stress_seed, save, shrink)
from pygup.config.mutants import MUTANTS, OVER_REFUSAL

OPS_PER_SEED = 300
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
    failure: Optional[dict] = None       # the shrunk reproducer, as saved
    reproducer: Optional[str] = None
    found_after_ops: Optional[int] = None
    found_after_s: Optional[float] = None
    crashed: Optional[str] = None        # a worker that died: a finding, never a clean run


def _seeds(seed: int, shard: tuple[int, int], worker: int, workers: int):
    """Seeds of one worker of one shard: disjoint across both."""
    i, n = shard
    k = 0
    while True:
        yield seed + i + n * (worker + workers * k)
        k += 1


def _worker(policy, mutants, seed, shard, worker, workers, deadline, max_ops, q,
            stress=True) -> None:
    try:
        _work(policy, mutants, seed, shard, worker, workers, deadline, max_ops, q, stress)
    except BaseException as e:           # its world failed to build, the model raised...
        import traceback
        q.put(("crash", f"worker {worker}: {type(e).__name__}: {e}\n"
                        f"{traceback.format_exc(limit=8)}"))
        raise SystemExit(1)


def _work(policy, mutants, seed, shard, worker, workers, deadline, max_ops, q,
          stress=True) -> None:
    done = 0
    for s in _seeds(seed, shard, worker, workers):
        if time.monotonic() > deadline or (max_ops and done >= max_ops):
            break
        if stress and s % CONCURRENT_EVERY == CONCURRENT_EVERY - 1:
            failure, n = run_stress_seed(s, policy, mutants)
        elif s % CONCURRENT_EVERY == CONCURRENT_EVERY // 2 - 1:
            failure, n = run_explore_seed(s, policy, mutants)
        else:
            failure, n = run_seed(s, OPS_PER_SEED, policy, mutants, deadline)
        done += n
        q.put(("ops", n))
        if failure is not None:
            q.put(("failure", failure))
            return
    q.put(("done", worker))


def campaign(policy: str = "6.5", mutants=(), seconds: float = 60.0, workers: int = 1,
             seed: int = 0, shard: tuple[int, int] = (0, 1), max_ops: int = 0,
             out_dir: str = ".", progress: bool = True, shrink_s: float = 30.0,
             stress: bool = True) -> Result:
    """Run until the time budget (or max_ops in total) is spent or a
    violation is found; a violation is shrunk and saved as JSON.  ``stress``:
    include the native stress seeds (real threads: their findings depend on
    timing); without, a run bounded by max_ops is a pure function of the
    seeds."""
    start = time.monotonic()
    deadline = start + seconds
    per_worker = -(-max_ops // workers) if max_ops else 0
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(policy, list(mutants), seed, shard, w, workers,
                                               deadline, per_worker, q, stress), daemon=True)
             for w in range(workers)]
    for p in procs:
        p.start()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_ops or None, unit="op", desc=f"fuzz {policy}"
                   + (f" +{','.join(mutants)}" if mutants else ""), file=sys.stderr,
                   dynamic_ncols=True)
    ops = seeds = finished = 0
    failure: Optional[Failure] = None
    found_after = None
    crashed: Optional[str] = None
    done_workers: set = set()
    while finished < workers and failure is None and crashed is None:
        try:
            kind, val = q.get(timeout=0.5)
        except queue.Empty:
            # a worker that died without saying so (a segfault in the C
            # core, the OOM killer): a finding
            dead = [w for w, p in enumerate(procs)
                    if not p.is_alive() and w not in done_workers and p.exitcode != 0]
            if dead:
                w = dead[0]
                crashed = (f"worker {w} died with exit code {procs[w].exitcode}"
                           f"{' (signal ' + str(-procs[w].exitcode) + ')' if procs[w].exitcode < 0 else ''}"
                           f" after {ops} operations in all")
                break
            if not any(p.is_alive() for p in procs):
                break
            continue
        if kind == "crash":
            crashed = val
            break
        if kind == "ops":
            ops += val
            seeds += 1
            if bar is not None:
                bar.update(val)
                bar.set_postfix(violations=0)
        elif kind == "failure":
            failure = val
            found_after = (ops, time.monotonic() - start)
        else:
            finished += 1
            done_workers.add(val)
    for p in procs:
        p.terminate() if failure is not None or crashed is not None else None
        p.join(timeout=5)
    if bar is not None:
        bar.set_postfix(violations=int(failure is not None))
        bar.close()
    res = Result(policy, sorted(mutants), ops, seeds, time.monotonic() - start)
    res.crashed = crashed
    if failure is not None:
        small = shrink(failure, shrink_s)
        os.makedirs(out_dir, exist_ok=True)
        tag = "-".join([policy] + sorted(mutants))
        path = os.path.join(out_dir, f"pygup-repro-{tag}-{small.invariant}.json")
        save(small, path)
        res.failure = small.to_json()
        res.reproducer = path
        res.found_after_ops, res.found_after_s = found_after
    return res


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
    targets = [("6.4", ())] + [("6.5", (name,)) for name in MUTANTS if name not in OVER_REFUSAL]
    for policy, mutants in targets:
        race, planted = ("pin-writeback", ()) if not mutants else (None, mutants)
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
# the command

def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    ap.add_argument("--policy", default="6.5", choices=["6.4", "6.5", "6.14"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="worker processes (default: every core)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--mutant", action="append", default=[], choices=sorted(MUTANTS),
                    help="re-plant a historic bug (repeatable)")
    ap.add_argument("--shard", default="0/1", help="I/N: this machine's share of the seeds")
    ap.add_argument("--max-ops", type=int, default=0, help="stop after this many operations")
    ap.add_argument("--replay", metavar="FILE", help="rerun a reproducer deterministically")
    ap.add_argument("--json", metavar="OUT", help="write the summary as JSON")
    ap.add_argument("--out-dir", default=".", help="where reproducers go")
    ap.add_argument("--selftest", action="store_true",
                    help="prove the harness finds the 6.4 bug and every protection switch")
    ap.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.replay:
        log: list[str] = []
        f = replay(args.replay, log)
        print("\n".join(log))
        if f is None:
            print("replay: no violation")
            return 0
        print(f"replay: [{f.invariant}] {f.detail} at step {f.step}")
        return 1
    if args.workers < 1:
        raise SystemExit("pygup fuzz: --workers must be >= 1")
    try:
        i, n = (int(x) for x in args.shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise SystemExit(f"pygup fuzz: --shard must be I/N with 0 <= I < N, got {args.shard!r}")
    if args.selftest:
        rows, ok = selftest(max(args.seconds, 600.0), args.max_ops or 1_000_000, args.workers,
                            args.out_dir, not args.no_progress)
        print(format_table(rows))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        return 0 if ok else 1
    r = campaign(args.policy, args.mutant, args.seconds, args.workers, args.seed, (i, n),
                 args.max_ops, args.out_dir, not args.no_progress)
    rate = r.ops / r.seconds if r.seconds else 0
    print(f"pygup fuzz: policy {r.policy}{' mutants ' + ','.join(r.mutants) if r.mutants else ''}:"
          f" {r.ops} ops over {r.seeds} seeds in {r.seconds:.1f}s ({rate:.0f} ops/s, "
          f"{args.workers} workers)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dataclasses.asdict(r), fh, indent=1)
    if r.crashed:
        print(f"CRASH: {r.crashed}")
        return 1
    if r.ops == 0:
        print("pygup fuzz: no operation ran (nothing was tested)")
        return 1
    if r.failure:
        print(f"VIOLATION [{r.failure['invariant']}] {r.failure['detail']}")
        print(f"reproducer ({len(r.failure['ops'])} ops): {r.reproducer}")
        print(f"replay with: pygup fuzz --replay {r.reproducer}")
        return 1
    print("no violation")
    return 0
