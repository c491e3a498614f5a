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


def plot_replay(path: str, log: list[str], failure, races: list, out: str) -> str:
    with open(path) as fh:
        data = json.load(fh)
    ops = data.get("ops") or []
    verdict = (f"VIOLATION [{failure.invariant}] at step {failure.step}" if failure is not None
               else "no violation")
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

