"""A byte-stream decoder for coverage-guided fuzzers: any bytes become a
valid operation sequence of the harness's vocabulary (the same one the
seeded driver generates), so libFuzzer/atheris mutations explore it; its
concurrent step is a built-in race explored to EXPLORE_BOUND (deterministic:
an input means one outcome).  The native stress campaigns stay out: their
outcome is timing, not data.

    python -m pygup.tools.fuzz.bytestream [--policy 6.4] [--mutants a,b] CORPUS_DIR...

(atheris installed: ``pip install 'pygup[atheris]'``).  pygup's modules are
instrumented for coverage; libFuzzer options (-max_total_time, -rss_limit_mb)
pass through.
"""
from __future__ import annotations

import sys

from pygup.tools.fuzz.ops import ADVICE, CALLERS, EDGE_APIS, EDGE_CASES

# new entries go at the end of each list, so an existing input keeps its meaning
_KINDS = ["anon", "file", "shared-anon", "huge", "secret", "thp"]
_PROTS = ["rw", "r", "none"]
_OPS = ["mmap", "munmap", "mprotect", "fork", "exit", "write", "read", "pin", "get", "pin_write",
        "unpin", "writeback", "msync", "truncate", "evict", "migrate", "caller",
        "caller_release", "explore", "collapse", "madvise", "mlock", "munlock", "mremap",
        "fallocate", "rcu_section", "gup_edge", "orphan_section"]
# a built-in race (tools/explore.py) explored to this bound: 1 keeps an input
# fast enough for a coverage fuzzer; the seeded campaign explores to 2
EXPLORE_BOUND = 1


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def byte(self) -> int:
        if self.i >= len(self.data):
            return 0
        self.i += 1
        return self.data[self.i - 1]

    def small(self, n: int) -> int:
        return self.byte() % n

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def u32(self) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(4)), "little") | 1

    @property
    def done(self) -> bool:
        return self.i >= len(self.data)


def decode(data: bytes, max_ops: int = 200) -> list[dict]:
    """Bytes -> operations (every byte string decodes to something)."""
    r = _Reader(data)
    ops: list[dict] = []
    while not r.done and len(ops) < max_ops:
        name = _OPS[r.small(len(_OPS))]
        op: dict = {"op": name}
        if name == "mmap":
            op.update(proc=r.small(8), kind=_KINDS[r.small(len(_KINDS))], file=r.small(4),
                      shared=r.flag(), prot=_PROTS[r.small(2)], pages=1 + r.small(6))
        elif name in ("munmap", "mprotect", "write", "read", "pin", "get", "migrate", "msync",
                      "collapse"):
            op.update(proc=r.small(8), region=r.small(8), page=r.small(16))
            if name in ("write", "read"):
                op["cpu"] = r.small(3)
            if name == "munmap":
                op["whole"] = r.flag()
            elif name == "mprotect":
                op["prot"] = _PROTS[r.small(3)]
            elif name == "write":
                op["value"] = r.u32()
            elif name in ("pin", "get"):
                op.update(n=1 + r.small(3), fast=r.flag(), write=r.flag(), longterm=r.flag())
                if not op["fast"]:
                    op["split_pmd"] = r.small(8) == 0
                if name == "get":
                    op["nopages"] = r.flag()
        elif name in ("fork", "exit"):
            op["proc"] = r.small(8)
        elif name == "pin_write":
            op.update(hold=r.small(8), page=r.small(4), value=r.u32())
        elif name == "unpin":
            op.update(hold=r.small(8), dirty=r.flag())
        elif name in ("truncate", "evict"):
            op["file"] = r.small(4)
            if name == "truncate":
                op["pages"] = r.small(9)
        elif name == "caller":
            op.update(name=CALLERS[r.small(len(CALLERS))], proc=r.small(8), region=r.small(8),
                      page=r.small(16), n=1 + r.small(3), value=r.u32(), writable=r.flag())
        elif name == "caller_release":
            op.update(proc=r.small(8), name=["io_uring", "rdma", "vfio", "pipe"][r.small(4)])
        elif name == "explore":
            from pygup.tools.explore import RACES
            op.update(race=list(RACES)[r.small(len(RACES))], bound=EXPLORE_BOUND)
        elif name in ("madvise", "mlock", "munlock", "mremap"):
            op.update(proc=r.small(8), region=r.small(8), page=r.small(16), n=1 + r.small(3))
            if name == "madvise":
                op["advice"] = ADVICE[r.small(len(ADVICE))]
            elif name == "mremap":
                op["grow"] = r.small(3)
        elif name == "fallocate":
            op.update(file=r.small(4), page=r.small(8), n=1 + r.small(3))
        elif name == "rcu_section":
            op.update(cpu=r.small(8), depth=1 + r.small(3), rcu=r.flag(), proc=r.small(8),
                      region=r.small(8), page=r.small(16))
        elif name == "gup_edge":
            op.update(proc=r.small(8), case=EDGE_CASES[r.small(len(EDGE_CASES))],
                      api=EDGE_APIS[r.small(len(EDGE_APIS))], region=r.small(8),
                      page=r.small(16))
        elif name == "orphan_section":
            op["wait"] = ["synchronize_rcu", "rcu_barrier", "shootdown"][r.small(3)]
        ops.append(op)
    return ops


def test_one_input(data: bytes, policy: str = "6.5", mutants=()) -> None:
    """The fuzz target: raise AssertionError on any violation."""
    from pygup.tools.fuzz.driver import run_ops
    f = run_ops(decode(data), policy, mutants)
    if f is not None:
        raise AssertionError(f"[{f.invariant}] {f.detail} at step {f.step}")


def instrument_pygup(atheris) -> int:
    """Give every function and method of the loaded pygup modules atheris's
    coverage and comparison hooks; returns how many.  pygup is imported
    before the fuzzer starts (this module needs it), so
    ``atheris.instrument_imports()`` would come too late, and
    ``atheris.instrument_all()`` would instrument numpy and the standard
    library as well (slower, and their coverage is noise)."""
    import inspect
    done: set[int] = set()

    def visit(obj) -> int:
        n = 0
        if inspect.isfunction(obj) and id(obj.__code__) not in done:
            if obj.__module__ and obj.__module__.startswith("pygup"):
                atheris.instrument_func(obj)
                done.add(id(obj.__code__))
                n += 1
        elif isinstance(obj, (staticmethod, classmethod)):
            n += visit(obj.__func__)
        elif isinstance(obj, property):
            n += sum(visit(f) for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        return n

    count = 0
    for name, mod in list(sys.modules.items()):
        if not (name == "pygup" or name.startswith("pygup.")) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if inspect.isclass(obj) and obj.__module__ == name:
                for member in list(vars(obj).values()):
                    count += visit(member)
            else:
                count += visit(obj)
    return count


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    """pygup's own options (``--policy``, ``--mutants``); the rest goes to
    libFuzzer.  ValueError for an unknown policy or switch."""
    import argparse

    from pygup.config.mutants import resolve_mutants
    from pygup.config.policy import resolve
    ap = argparse.ArgumentParser(prog="python -m pygup.tools.fuzz.bytestream", add_help=False)
    ap.add_argument("--policy", default="6.5", help="kernel policy preset (default 6.5)")
    ap.add_argument("--mutants", default="",
                    help="comma-separated protection switches to plant (default none)")
    ns, rest = ap.parse_known_args(argv[1:])
    mutants = tuple(m for m in ns.mutants.split(",") if m)
    resolve(ns.policy)
    resolve_mutants(mutants)
    return {"policy": ns.policy, "mutants": mutants}, [argv[0]] + rest


def main(argv=None) -> None:          # pragma: no cover - needs atheris
    try:
        import atheris
    except ImportError:
        raise SystemExit("the byte-stream fuzzer needs atheris: pip install 'pygup[atheris]'")
    opts, rest = parse_args(sys.argv if argv is None else list(argv))
    n = instrument_pygup(atheris)
    print(f"pygup: {n} functions instrumented; policy {opts['policy']}, "
          f"mutants {list(opts['mutants']) or 'none'}", file=sys.stderr)

    def target(data: bytes) -> None:
        test_one_input(data, opts["policy"], opts["mutants"])
    atheris.Setup(rest, target)
    atheris.Fuzz()


if __name__ == "__main__":            # pragma: no cover
    main()
