"""GUP-fast pin + unpin throughput: pygup's C path, its plain-Python
reference, the live kernel (io_uring buffer registration), and thread
scaling.  Every figure that matters is a ratio from this one run.

    python bench/fast_pin.py [--pages 262144] [--threads 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from pygup import FOLL, MAP, PROT, Machine

PAGE = 4096


def populated_machine(pages: int, cpus: int = 2):
    """A machine whose process has ``pages`` present anon pages in ZONE_NORMAL
    (so FOLL_LONGTERM needs no migration)."""
    mem = max(64, ((pages * PAGE * 2) >> 20) + 64)
    mem += (-mem) % 2
    m = Machine(memory=f"{mem}MiB", movable="0MiB", cpus=cpus)
    p = m.spawn()
    a = p.mmap(pages * PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    ret, _ = p.mm.get_user_pages(a, pages, FOLL.WRITE, pages=False)   # fault everything in
    assert ret == pages, ret
    return m, p, a


def time_c(m, p, a, pages, flags, reps) -> float:
    """ns per page of one pg_gup_fast over the range + one unpin call."""
    core = m._core
    cpu = m.current_cpu()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        got = core.gup_fast(cpu, p.mm.id, a, pages, flags, 1)
        core.gup_put_pages(got, bool(flags & FOLL.PIN))
        dt = time.perf_counter_ns() - t0
        assert len(got) == pages
        best = min(best, dt)
    return best / pages


def time_reference(m, p, a, pages, flags) -> float:
    from pygup._reference import gup_fast_reference
    t0 = time.perf_counter_ns()
    got = gup_fast_reference(m, p.mm, a, pages, flags)
    for pfn in got:
        m._core.gup_put(pfn, 1, bool(flags & FOLL.PIN))
    assert len(got) == pages
    return (time.perf_counter_ns() - t0) / pages


def time_threads(pages: int, threads: int, flags: int, reps: int) -> tuple[float, float]:
    """(pages/s with 1 thread, pages/s with `threads` threads on disjoint ranges)."""
    m, p, a = populated_machine(pages, cpus=threads + 1)
    share = pages // threads

    def work(k: int, out: list, go: threading.Barrier):
        with m.cpu(k + 1):
            core = m._core
            start = a + k * share * PAGE
            go.wait()
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                got = core.gup_fast(k + 1, p.mm.id, start, share, flags, 1)
                core.gup_put_pages(got, True)
            out[k] = time.perf_counter_ns() - t0

    def run(n: int) -> float:
        out = [0] * n
        go = threading.Barrier(n)
        ts = [threading.Thread(target=work, args=(k, out, go)) for k in range(n)]
        t0 = time.perf_counter_ns()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter_ns() - t0
        return n * share * reps / (wall / 1e9)

    one = run(1)
    many = run(threads)
    return one, many


def kernel_ns_per_page(pages: int, reps: int):
    try:
        from pygup import host
    except ImportError:
        return None, "pygup.host is not available yet"
    fn = getattr(host, "io_uring_register_ns_per_page", None)
    if fn is None:
        return None, "pygup.host has no io_uring timing probe"
    try:
        return fn(pages * PAGE, reps), None
    except OSError as e:
        return None, f"io_uring: {e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=262144)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    flags = FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE
    m, p, a = populated_machine(args.pages)
    c_ns = time_c(m, p, a, args.pages, flags, args.reps)
    ref_ns = time_reference(m, p, a, args.pages, flags)
    k_ns, why = kernel_ns_per_page(args.pages, args.reps)
    one, many = time_threads(args.pages, args.threads, flags, args.reps)
    res = {"pages": args.pages, "pygup_ns_per_page": c_ns, "reference_ns_per_page": ref_ns,
           "reference_over_pygup": ref_ns / c_ns, "kernel_ns_per_page": k_ns,
           "pygup_over_kernel": (c_ns / k_ns) if k_ns else None, "kernel_note": why,
           "threads": args.threads, "pages_per_s_1": one, f"pages_per_s_{args.threads}": many,
           "thread_scaling": many / one, "cpus": os.cpu_count()}
    print(f"fast pin+unpin of {args.pages} present pages (FOLL_PIN|LONGTERM|WRITE):")
    print(f"  pygup C          {c_ns:8.1f} ns/page")
    print(f"  _reference.py    {ref_ns:8.1f} ns/page   reference/pygup = {ref_ns / c_ns:.0f}x")
    if k_ns:
        print(f"  kernel io_uring  {k_ns:8.1f} ns/page   pygup/kernel = {c_ns / k_ns:.2f}")
    else:
        print(f"  kernel io_uring  n/a ({why})")
    print(f"  threads 1 -> {args.threads}: {one / 1e6:.1f} -> {many / 1e6:.1f} Mpages/s "
          f"(x{many / one:.2f}) on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
