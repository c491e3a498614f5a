"""A byte-stream decoder for coverage-guided fuzzers: any bytes become a
valid operation sequence of the harness's vocabulary (the same one the
seeded driver generates), so libFuzzer/atheris mutations explore it.  The
native stress campaigns stay out: their outcome is timing, not data.

    python -m pygup.tools.fuzz.bytestream CORPUS_DIR...   # with atheris installed
"""
from __future__ import annotations

import sys

from pygup.tools.fuzz.ops import CALLERS, RACES

_KINDS = ["anon", "file", "shared-anon", "huge", "secret"]
_PROTS = ["rw", "r", "none"]
_OPS = ["mmap", "munmap", "mprotect", "fork", "exit", "write", "read", "pin", "get", "pin_write",
        "unpin", "writeback", "msync", "truncate", "evict", "migrate", "caller",
        "caller_release", "race"]


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
        elif name in ("munmap", "mprotect", "write", "read", "pin", "get", "migrate", "msync"):
            op.update(proc=r.small(8), region=r.small(8), page=r.small(16))
            if name == "munmap":
                op["whole"] = r.flag()
            elif name == "mprotect":
                op["prot"] = _PROTS[r.small(3)]
            elif name == "write":
                op["value"] = r.u32()
            elif name in ("pin", "get"):
                op.update(n=1 + r.small(3), fast=r.flag(), write=r.flag(), longterm=r.flag())
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
        elif name == "race":
            kind = RACES[r.small(len(RACES))]
            op.update(kind=kind, seed=r.byte(), longterm=r.flag(), shmem=r.flag(),
                      tlb_flush=["ipi", "broadcast"][r.small(2)])
        ops.append(op)
    return ops


def test_one_input(data: bytes, policy: str = "6.5", mutants=()) -> None:
    """The fuzz target: raise AssertionError on any violation."""
    from pygup.tools.fuzz.driver import run_ops
    f = run_ops(decode(data), policy, mutants)
    if f is not None:
        raise AssertionError(f"[{f.invariant}] {f.detail} at step {f.step}")


def main(argv=None) -> None:          # pragma: no cover - needs atheris
    import atheris
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":            # pragma: no cover
    main()
