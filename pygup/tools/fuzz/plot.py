"""``pygup fuzz --replay FILE --plot OUT``: a picture of a reproducer.

A reproducer with a scheduled race is drawn as the race's interleaving (a
lane per CPU, a box per scheduling step named by the race window, the
windows' reasons from the registry).  Any other sequence is drawn as a
story: a lane per actor (the user process, the GUP caller, the kernel's
writeback / reclaim / truncate) with each step's operation and result, and
a lane saying whether the invariants still held after it.
"""
from __future__ import annotations

import json
import os
from pygup._native import Core
from pygup.tools.timeline import Story, plot_interleaving, plot_stories

_GUP_OPS = {"get", "pin", "pin_write", "pin_fast", "unpin", "caller", "caller_release",
            "write_pin", "put"}
_KERNEL_OPS = {"writeback", "msync", "truncate", "evict", "migrate", "stress", "race"}
MAX_STEPS = 24


def _actor(op: dict) -> str:
    name = op.get("op", "")
    if name in _GUP_OPS or name.startswith("pin") or name.startswith("get"):
        return "GUP caller"
    if name in _KERNEL_OPS:
        return "kernel"
    return f"process {op['proc']}" if "proc" in op else "user process"


STATE_FIELDS = ("pte", "pfn", "refcount", "pincount", "mapcount")


def plot_schedule(race: str, schedule, policy: str, mutants, windows: str, out: str,
                  title: str) -> str:
    """One schedule of a built-in race (tools/explore.py), replayed step by
    step: CPU lanes, the window each step resumed from, and the watched
    page-table entry and folio as that step saw them."""
    from pygup.tools import explore
    res = explore.replay(race, schedule, policy, list(mutants or ()), windows)
    steps = res["steps"]
    trace = [(s["cpu"], s["window"], s["spin"]) for s in steps]
    cpus = sorted({s["cpu"] for s in steps})
    names = [f"CPU {c}" for c in cpus]
    doc = getattr(explore.RACES.get(race), "doc", "")
    return plot_interleaving(trace, out, title=title + (f" — {doc}" if doc else ""),
                             cpu_names=names, reasons=dict(Core.race_windows()),
                             outcome=(f"FAILED: {res['failed']}" if res["failed"]
                                      else "no failure"),
                             states=steps, state_fields=STATE_FIELDS)


def plot_explore_file(path: str, out: str) -> bool:
    """``pygup explore --json`` output: plot its failing schedule (False:
    there is none)."""
    with open(path) as fh:
        data = json.load(fh)
    f = data.get("failing")
    if not f:
        return False
    sw = f" +{','.join(data['mutants'])}" if data.get("mutants") else ""
    plot_schedule(data["race"], f["schedule"], data["policy"], data.get("mutants", []),
                  data.get("windows", "all"), out,
                  f"explore {data['race']} (policy {data['policy']}{sw})")
    return True


def plot_replay(path: str, log: list[str], failure, races: list, out: str) -> str:
    with open(path) as fh:
        data = json.load(fh)
    ops = data.get("ops") or []
    verdict = (f"VIOLATION [{failure.invariant}] at step {failure.step}" if failure is not None
               else "no violation")
    explored = [op for op in ops if op.get("op") == "explore" and op.get("schedule")]
    if explored:
        op = explored[-1]
        return plot_schedule(op["race"], op["schedule"], data.get("policy", "6.5"),
                             data.get("mutants", []), op.get("windows", "all"), out,
                             f"{os.path.basename(path)}: race {op['race']} — {verdict}")
    if races:
        op, run = races[-1]
        reasons = dict(Core.race_windows())
        names = ["CPU 0: GUP-fast (pin_user_pages_fast)", f"CPU 1: {op.get('kind')}"]
        return plot_interleaving(run.trace, out, title=f"{os.path.basename(path)}: race {op.get('kind')} "
                                 f"seed {op.get('seed')}", cpu_names=names, reasons=reasons,
                                 outcome=verdict)
    story = Story(f"{os.path.basename(path)} (policy {data.get('policy')}"
                  + (f", {'+'.join(data['mutants'])}" if data.get("mutants") else "") + ")")
    results = _results(log)
    first = max(0, len(ops) - MAX_STEPS)
    for i in range(first, len(ops)):
        failed = failure is not None and i >= failure.step
        story.add(_actor(ops[i]), f"{i}: {results.get(i, ops[i].get('op'))}",
                  **{"invariants hold": not failed})
    if failure is not None and failure.step >= len(ops):
        story.add("kernel", "final check", **{"invariants hold": False})
    story.outcome = verdict + (f": {failure.detail}" if failure is not None else "")
    return plot_stories([story], out)


def _results(log: list[str]) -> dict[int, str]:
    """Step index -> "op -> result" from replay's log lines."""
    out: dict[int, str] = {}
    for line in log:
        head, _, rest = line.strip().partition(" ")
        if head.isdigit():
            _, _, what = rest.partition("-> ")
            out[int(head)] = what[:60] if what else rest[:60]
    return out

