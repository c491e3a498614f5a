"""The comparison and its report: every cell on both sides, outcomes compared
by class (success, or which errno at which step), deliberate differences
set apart, every other disagreement shown with pygup's ``explain`` trace;
``pygup oracle`` is ``oracle_main``."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Iterable, Optional, Protocol

from pygup.config.policy import POLICIES

from pygup.tools.oracle.cells import (
    BACKINGS, Cell, DELIBERATE, Outcome, deliberate_for, enumerate_cells, nearest_policy)
from pygup.tools.oracle.host import HostEnv
from pygup.tools.oracle.pygup_side import run_pygup_cell, run_pygup_scenario
from pygup.tools.oracle.scenarios import SCENARIOS, Scenario

# ---------------------------------------------------------------------------
# the comparison

@dataclasses.dataclass
class CellResult:
    cell: Cell
    host: str                     # outcome class, or "skip"
    pygup: str
    host_ret: Optional[int] = None
    pygup_ret: Optional[int] = None
    deliberate: Optional[str] = None
    explain: Optional[str] = None

    @property
    def compared(self) -> bool:
        return self.host != "skip"

    @property
    def agree(self) -> bool:
        return self.host == self.pygup

    def to_json(self) -> dict:
        d = dataclasses.asdict(self.cell)
        d.update(host=self.host, pygup=self.pygup, host_ret=self.host_ret,
                 pygup_ret=self.pygup_ret, agree=self.agree if self.compared else None,
                 deliberate=self.deliberate, explain=self.explain)
        return d


@dataclasses.dataclass
class ScenarioResult:
    name: str
    host: Optional[list]          # None: not run on the kernel side
    pygup: list

    @property
    def compared(self) -> bool:
        return self.host is not None

    @property
    def agree(self) -> bool:
        return self.host == self.pygup

    def to_json(self) -> dict:
        return {"name": self.name, "host": self.host, "pygup": self.pygup,
                "agree": self.agree if self.compared else None}


@dataclasses.dataclass
class Report:
    kernel: str
    policy: str
    results: list[CellResult]
    skipped: dict[str, str]              # backing -> reason
    method_skipped: dict[str, str]       # method -> reason
    backings: dict[str, str] = dataclasses.field(default_factory=dict)
    # where the host side ran and how long it took: {"where": "host" or
    # "guest (tcg)", "boot_s": ..., "probe_s": ...}
    timing: dict[str, object] = dataclasses.field(default_factory=dict)
    scenarios: list[ScenarioResult] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """backing -> compared / agree / deliberate / disagree."""
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            c = out.setdefault(r.cell.backing, {"compared": 0, "agree": 0, "deliberate": 0,
                                                "disagree": 0})
            if not r.compared:
                continue
            c["compared"] += 1
            if r.agree:
                c["agree"] += 1
            elif r.deliberate:
                c["deliberate"] += 1
            else:
                c["disagree"] += 1
        return out

    @property
    def disagreements(self) -> list[CellResult]:
        return [r for r in self.results if r.compared and not r.agree]

    @property
    def undocumented(self) -> list[CellResult]:
        return [r for r in self.disagreements if not r.deliberate]

    @property
    def scenario_disagreements(self) -> list[ScenarioResult]:
        return [s for s in self.scenarios if s.compared and not s.agree]

    @property
    def ok(self) -> bool:
        return not self.undocumented and not self.scenario_disagreements

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "policy": self.policy, "timing": self.timing,
                "backings": self.backings,
                "skipped": self.skipped, "method_skipped": self.method_skipped,
                "counts": self.counts(),
                "deliberate_differences": [dataclasses.asdict(d) for d in DELIBERATE],
                "cells": [r.to_json() for r in self.results],
                "scenarios": [x.to_json() for x in self.scenarios]}


class HostRunner(Protocol):
    skipped: dict[str, str]
    method_skipped: dict[str, str]
    def __enter__(self) -> "HostRunner": ...
    def __exit__(self, *exc) -> None: ...
    def preset(self, backing: str) -> str: ...
    def describe(self) -> dict[str, str]: ...
    def run(self, cell: Cell) -> Optional[Outcome]: ...
    def run_scenario(self, scenario: Scenario) -> Optional[list]: ...


def run_oracle(backings: Optional[Iterable[str]] = None, policy: Optional[str] = None,
               host: Optional[HostRunner] = None, release: Optional[str] = None,
               progress: Optional[Callable[[CellResult], None]] = None,
               scenarios: bool = True) -> Report:
    """Every cell of ``backings`` on the host (``HostEnv`` unless ``host``
    is given) and on pygup under ``policy`` (default: the preset nearest
    the host kernel)."""
    release = release or os.uname().release
    policy = policy or nearest_policy(release)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    cells = enumerate_cells(backings)
    runner = host if host is not None else HostEnv(sorted({c.backing for c in cells},
                                                          key=list(BACKINGS).index))
    results: list[CellResult] = []
    with runner as env:
        for cell in cells:
            if cell.backing in env.skipped:
                continue
            preset = env.preset(cell.backing)
            h = env.run(cell)
            g, _ = run_pygup_cell(cell, policy, preset)
            r = CellResult(cell, "skip" if h is None else h.cls, g.cls,
                           None if h is None else h.ret, g.ret)
            if r.compared and not r.agree:
                d = deliberate_for(cell, policy, r.host, r.pygup)
                r.deliberate = d.reason if d else None
                if g.stage == "call":
                    _, r.explain = run_pygup_cell(cell, policy, preset, explain=True)
            results.append(r)
            if progress:
                progress(r)
        done = []
        run_scenario = getattr(env, "run_scenario", None)
        for sc in SCENARIOS.values() if scenarios and run_scenario else ():
            done.append(ScenarioResult(sc.name, run_scenario(sc), run_pygup_scenario(sc, policy)))
        return Report(release, policy, results, dict(env.skipped), dict(env.method_skipped),
                      env.describe(), scenarios=done)


# ---------------------------------------------------------------------------
# output

COLUMNS = (("backing", 10), ("map", 8), ("prot", 5), ("method", 18), ("variant", 11),
           ("host", 13), ("pygup", 13), ("agree", 5))


def format_row(r: CellResult) -> str:
    c = r.cell
    agree = "-" if not r.compared else "yes" if r.agree else "DELIB" if r.deliberate else "NO"
    vals = (c.backing, c.map, c.prot, c.method, c.variant, r.host, r.pygup, agree)
    return " ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, COLUMNS)).rstrip()


def format_report(rep: Report) -> str:
    where = str(rep.timing.get("where", "host"))
    lines = [f"pygup oracle: {where} kernel {rep.kernel}, pygup policy {rep.policy}",
             " ".join(f"{name:<{w}}" for name, w in COLUMNS).rstrip(),
             " ".join("-" * w for _, w in COLUMNS)]
    lines += [format_row(r) for r in rep.results]
    lines.append("")
    if rep.backings:
        lines.append("backings: " + ", ".join(f"{k}={v}" for k, v in rep.backings.items()))
    for name, why in rep.skipped.items():
        lines.append(f"skipped backing {name}: {why}")
    for name, why in rep.method_skipped.items():
        lines.append(f"skipped method {name}: {why}")
    lines.append("cells compared by backing:")
    total = {"compared": 0, "agree": 0, "deliberate": 0, "disagree": 0}
    for name, c in rep.counts().items():
        lines.append(f"  {name:<10} {c['compared']:>4} compared, {c['agree']:>4} agree, "
                     f"{c['deliberate']:>3} deliberate, {c['disagree']:>3} disagree")
        for k in total:
            total[k] += c[k]
    lines.append(f"  {'total':<10} {total['compared']:>4} compared, {total['agree']:>4} agree, "
                 f"{total['deliberate']:>3} deliberate, {total['disagree']:>3} disagree")
    if rep.scenarios:
        lines.append("multi-step scenarios:")
        for x in rep.scenarios:
            tag = "-" if not x.compared else "yes" if x.agree else "NO"
            lines.append(f"  {x.name:<28} {tag:<4} host {x.host}  pygup {x.pygup}")
        n = sum(x.compared for x in rep.scenarios)
        lines.append(f"  {'total':<28} {n} compared, {sum(x.compared and x.agree for x in rep.scenarios)}"
                     f" agree, {len(rep.scenario_disagreements)} disagree")
    if rep.timing:
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in rep.timing.items()
                                          if isinstance(v, float)))
    if rep.disagreements:
        lines.append("")
        lines.append("disagreements:")
        for r in rep.disagreements:
            tag = f"deliberate: {r.deliberate}" if r.deliberate else "NOT DOCUMENTED"
            lines.append(f"  {r.cell.key}: host {r.host} ({r.host_ret}), pygup {r.pygup} "
                         f"({r.pygup_ret}) -- {tag}")
            if r.explain:
                lines += ["    " + ln for ln in r.explain.splitlines()]
    return "\n".join(lines)


def oracle_main(only: Optional[str] = None, policy: Optional[str] = None,
                json_out: Optional[str] = None, out: Callable[[str], None] = print,
                host: Optional[HostRunner] = None, release: Optional[str] = None,
                kernel: Optional[str] = None) -> int:
    """``pygup oracle``: 0 when every disagreement is documented, else 1.
    ``kernel``: None or "host" for this machine's kernel; "6.1", "6.12", a
    release, a package or a vmlinuz path for a guest booted under qemu
    (GuestSetupError, before any work, when that cannot be done here)."""
    backings = None
    if only:
        backings = [b.strip() for b in only.split(",") if b.strip()]
        enumerate_cells(backings)                   # unknown backing: ValueError now
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    timing: dict[str, object] = {}
    if kernel not in (None, "host"):
        from pygup.tools.oracle.guest_side import RecordedHost, record_in_guest
        record, res, _ = record_in_guest(kernel, backings)
        host = RecordedHost(record)
        release = record["release"]
        timing = {"where": f"guest ({res.accel})", "boot_s": res.boot_seconds,
                  "probe_s": res.run_seconds}
    t0 = time.monotonic()
    rep = run_oracle(backings, policy, host=host, release=release)
    if not timing:
        timing = {"where": "host", "probe_s": time.monotonic() - t0}
    rep.timing = timing
    out(format_report(rep))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rep.to_json(), f, indent=1)
    return 0 if rep.ok else 1
