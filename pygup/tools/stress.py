"""Native multi-threaded race campaigns (csrc/stress.c).

GUP-fast is lockless and runs while other CPUs unmap, collapse, truncate,
write back and fork.  :func:`run_stress` runs one of those races with real
OS threads at C speed - each thread its own emulated CPU - for a time (or
iteration) budget and reports what the checks found::

    >>> r = run_stress({"mutants": ()}, scenario="unmap", seconds=0.05, seed=1)
    >>> r.clean
    True

Scenarios (pinners - ``pg_gup_fast`` over a random piece of a random range
with a random pin variant, verify, hold, unpin - against ...):

``unmap``      unmappers: clear the PTEs, flush, free the page tables, refill
``collapse``   THP collapse: the PMD entry of a full PTE table cleared, flush,
               huge PMD installed; split back
``truncate``   truncaters over shmem / dirty-tracked / secretmem files: mapping
               word cleared, address_space released (RCU), zap, new file
``writeback``  a cleaner (``pg_pte_mkclean``) against a user writer that
               faults (page_mkwrite) on write-protected PTEs
``fork``       forkers: COW ``pg_copy_range`` with copy-pinned into a scratch
               mm, check, destroy

Checks (``StressReport.failures``): ``stale_ref``, ``pin_mismatch``,
``pin_lost``, ``whitelist``, ``secretmem``, ``fork_shared``,
``not_exclusive``, ``wb_bypass``, ``balance``, ``violation`` (the core's own
use-after-free / count / write-notify checks), ``error``.  A run with no
protection switch on must report none of them; csrc/stress.c explains why
each check cannot give a false alarm.

The run owns the machine while it lasts: it builds its own mm, frames and
page tables, uses CPUs 0..threads-1, and gives everything back at the end.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping, Optional, Union

from pygup._native import C, Core
from pygup.errors import GupError

__all__ = ["SCENARIOS", "CHECKS", "OPS", "VARIANTS", "StressReport", "run_stress",
           "stress_params"]

SCENARIOS: dict[str, int] = {
    "unmap": C.STRESS_UNMAP, "collapse": C.STRESS_COLLAPSE, "truncate": C.STRESS_TRUNCATE,
    "writeback": C.STRESS_WRITEBACK, "fork": C.STRESS_FORK,
}


def _named(prefix: str) -> dict[str, int]:
    return {name[len(prefix):].lower(): getattr(C, name) for name in vars(C)
            if name.startswith(prefix)}


CHECKS: dict[str, int] = _named("STRESS_CHK_")
OPS: dict[str, int] = _named("STRESS_OP_")
VARIANTS: dict[str, int] = {k: v for k, v in _named("STRESS_V_").items() if k != "all"}

# a campaign's longest wall-clock budget (a day): long enough for any run,
# and far inside the C core's 64-bit nanosecond field
MAX_SECONDS = 86400

_KNOBS = ("ranges_per_worker", "range_pages", "max_pin_pages", "hold_spins", "dwell_spins",
          "window_spins", "stop_on_failure", "max_iters")


@dataclasses.dataclass
class StressReport:
    """What one campaign did and found."""

    scenario: str
    seed: int
    elapsed: float                     # seconds of wall time the threads ran
    threads: dict[str, int]            # pinners / workers / writers
    ops: dict[str, int]                # operations done, by kind
    failures: dict[str, int]           # failed checks, by check (zeros left out)
    first_failure: dict[str, tuple[float, int]]  # check -> (seconds, thread iteration)
    messages: list[str]                # the first few failures, in words
    violations: list[str]              # the core's violation messages (popped)
    iterations: dict[str, int]         # pinners / workers, all threads together
    params: dict[str, int]
    machine: str

    @property
    def clean(self) -> bool:
        return not self.failures

    @property
    def pins_per_second_per_pinner(self) -> float:
        """Pages taken (pinned or got, then released) per second per pinner."""
        n = self.threads.get("pinners", 0)
        if not n or self.elapsed <= 0:
            return 0.0
        return self.ops.get("pages_taken", 0) / self.elapsed / n

    @property
    def calls_per_second_per_pinner(self) -> float:
        n = self.threads.get("pinners", 0)
        if not n or self.elapsed <= 0:
            return 0.0
        return self.ops.get("fast_calls", 0) / self.elapsed / n

    def summary(self) -> str:
        found = ", ".join(f"{k}={v}" for k, v in self.failures.items()) or "clean"
        ops = ", ".join(f"{k}={v}" for k, v in self.ops.items() if v)
        return (f"{self.scenario} seed={self.seed} {self.elapsed:.2f}s {self.threads}: {found}; "
                f"{ops}; {self.pins_per_second_per_pinner:,.0f} pages/s per pinner")


def _variant_bits(variants: Union[int, Iterable[str], None]) -> int:
    if variants is None:
        return C.STRESS_V_ALL
    if isinstance(variants, int) and not isinstance(variants, bool):
        return variants
    if isinstance(variants, str):
        variants = [variants]
    bits = 0
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"variants: unknown {v!r} (known: {', '.join(VARIANTS)})")
        bits |= VARIANTS[v]
    return bits


def _policy_bits(policy) -> int:
    if isinstance(policy, int) and not isinstance(policy, bool):
        return policy
    from pygup.config.policy import resolve
    return resolve(policy).gup_fast_bits


def stress_params(scenario: str = "unmap", *, seconds: float = 1.0, seed: int = 0,
                  threads: Union[int, Mapping[str, int], None] = None,
                  variants=None, policy="6.5", **knobs) -> dict[str, int]:
    """The C parameter block of a campaign (see ``struct pg_stress_params``).

    ``threads``: an int (one worker - for writeback a cleaner and a writer -
    and the rest pinners) or ``{"pinners": n, "workers": k}``.  By default
    one worker and as many pinners as the host has cores left (1 to 4):
    more threads than cores thin the races out, since a thread that waits
    for an IPI acknowledgement then waits for a descheduled one."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, got {scenario!r}")
    p = Core.stress_defaults(SCENARIOS[scenario])
    limits = Core.stress_field_limits()
    if isinstance(threads, Mapping):
        unknown = set(threads) - {"pinners", "workers"}
        if unknown:
            raise ValueError(f"threads: unknown keys {sorted(unknown)}")
        for key, field in (("pinners", "nr_pinners"), ("workers", "nr_workers")):
            if key in threads:
                v = threads[key]
                if isinstance(v, bool) or not isinstance(v, int) or \
                        not 0 <= v <= limits[field][1]:
                    raise ValueError(f"threads[{key!r}] must be a non-negative int, got {v!r}")
                p[field] = v
    elif threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise ValueError(f"threads must be an int or a dict, got {threads!r}")
        per_worker = 2 if scenario == "writeback" else 1
        if threads < per_worker:
            raise ValueError(f"threads must be at least {per_worker} for {scenario}")
        p["nr_workers"] = 1
        p["nr_pinners"] = threads - per_worker
    else:
        per_worker = 2 if scenario == "writeback" else 1
        p["nr_workers"] = 1
        p["nr_pinners"] = max(1, min(4, (os.cpu_count() or 2) - per_worker))
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be a number in 0..{MAX_SECONDS}, got {seconds!r}")
    p["duration_ns"] = int(seconds * 1e9)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= limits["seed"][1]:
        raise ValueError(f"seed must be an int in 0..2**64-1, got {seed!r}")
    p["seed"] = seed
    p["variants"] = _variant_bits(variants)
    p["policy"] = _policy_bits(policy)
    for name, value in knobs.items():
        if name not in _KNOBS:
            raise TypeError(f"run_stress: unknown knob {name!r} (known: {', '.join(_KNOBS)})")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int) or not 0 <= value <= limits[name][1]:
            raise ValueError(f"{name} must be an int in 0..{limits[name][1]}, got {value!r}")
        p[name] = value
    if p["duration_ns"] == 0 and p.get("max_iters", 0) == 0:
        raise ValueError("give seconds > 0 or max_iters > 0")
    return p


def run_stress(machine_or_params=None, *, seconds: float = 1.0, seed: int = 0,
               threads: Union[int, Mapping[str, int], None] = None,
               scenario: str = "unmap", variants=None, policy=None,
               **knobs) -> StressReport:
    """Run one native race campaign and report.

    ``machine_or_params``: a :class:`pygup.Machine` (idle: the run owns it
    while it lasts, and needs one CPU per thread), or a dict of Machine
    arguments (``memory``, ``movable``, ``table_free``, ``mutants``,
    ``policy``; ``cpus`` defaults to the threads needed), or None.
    ``policy`` (default: the machine's) decides the GUP-fast policy bits.
    Other knobs: ``ranges_per_worker``, ``range_pages``, ``max_pin_pages``,
    ``hold_spins``, ``dwell_spins``, ``window_spins``, ``stop_on_failure``,
    ``max_iters`` (per thread)."""
    from pygup.machine import Machine
    if machine_or_params is None:
        machine_or_params = {}
    if isinstance(machine_or_params, Machine):
        machine: Optional[Machine] = machine_or_params
        mpolicy = machine.policy
    elif isinstance(machine_or_params, Mapping):
        machine = None
        margs = dict(machine_or_params)
        mpolicy = margs.get("policy", "6.5")
    else:
        raise ValueError("machine_or_params must be a Machine, a dict of Machine "
                         f"arguments or None, got {machine_or_params!r}")
    p = stress_params(scenario, seconds=seconds, seed=seed, threads=threads,
                      variants=variants, policy=mpolicy if policy is None else policy, **knobs)
    need = Core.stress_nr_threads(p)
    if machine is None:
        margs.setdefault("memory", "128MiB")
        margs.setdefault("movable", "0MiB")
        margs.setdefault("cpus", max(2, need))
        machine = Machine(**margs)
    if machine.nr_cpus < need:
        raise ValueError(f"the machine has {machine.nr_cpus} CPUs; this run needs {need}")
    core = machine._core
    # nothing earlier may be mistaken for this run's findings
    machine.check()
    with machine.kernel.alone("run_stress"):
        try:
            res = core.stress_run(p)
        except GupError:
            core.violations()
            raise
    violations = core.violations()
    names_c = {v: k for k, v in CHECKS.items()}
    names_o = {v: k for k, v in OPS.items()}
    failures = {names_c[i]: n for i, n in enumerate(res["fails"]) if n and i in names_c}
    first = {names_c[i]: (res["first_fail_ns"][i] / 1e9, res["first_fail_iter"][i])
             for i, n in enumerate(res["fails"]) if n and i in names_c}
    ops = {names_o[i]: n for i, n in enumerate(res["ops"]) if i in names_o}
    nw = p["nr_workers"]
    threads_d = {"pinners": p["nr_pinners"], "workers": nw}
    if scenario == "writeback":
        threads_d["writers"] = nw
    return StressReport(
        scenario=scenario, seed=seed, elapsed=res["elapsed_ns"] / 1e9, threads=threads_d,
        ops=ops, failures=failures, first_failure=first,
        messages=[m for m in res["messages"].splitlines() if m], violations=violations,
        iterations={"pinners": res["iters_pinners"], "workers": res["iters_workers"]},
        params=p, machine=repr(machine))
