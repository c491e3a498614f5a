"""``pygup bench``: pygup against its plain-Python reference and against the
live kernel, in one process and one run, reported as ratios (absolute times
on shared machines are noise).

    pygup bench [--quick] [--json OUT] [--plot OUT.png]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from typing import Optional

import numpy as np

from pygup.flags import FOLL, MAP, PROT
from pygup.machine import Machine

PAGE = 4096
LT_W = FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE
KERNEL_MAX_PAGES = 1 << 18          # io_uring: 1 GiB per buffer
REFERENCE_MAX_PAGES = 1 << 16       # the reference takes ~10 us a page


# ---------------------------------------------------------------------------
# pygup

def machine_for(pages: int, cpus: int = 2) -> Machine:
    mib = ((pages * PAGE) >> 20) + 64
    mib += mib % 2
    return Machine(memory=f"{mib}MiB", movable="0MiB", cpus=cpus)


def mapped(m: Machine, pages: int, prefault: bool = True):
    """A process with `pages` anonymous pages (faulted in, or not)."""
    p = m.spawn()
    a = p.mmap(pages * PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    if prefault:
        ret, _ = p.mm.get_user_pages(a, pages, FOLL.WRITE, pages=False)
        assert ret == pages, ret
    return p, a


def pygup_fast_ns(m: Machine, p, a: int, pages: int, reps: int) -> float:
    """Best ns/page of GUP-fast pin + unpin over the whole range (C)."""
    core = m._core
    cpu = m.current_cpu()
    buf = np.empty(pages, np.uint64)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        got = core.gup_fast(cpu, p.mm.id, a, pages, LT_W, 1, buf)
        core.gup_put_pages(got, True)
        best = min(best, time.perf_counter_ns() - t0)
        assert len(got) == pages
    return best / pages


def reference_ns(m: Machine, p, a: int, pages: int) -> float:
    from pygup.tools.reference import gup_fast_reference
    t0 = time.perf_counter_ns()
    got = gup_fast_reference(m, p.mm, a, pages, int(LT_W))
    core = m._core
    for pfn in got:
        core.gup_put(pfn, 1, True)
    assert len(got) == pages
    return (time.perf_counter_ns() - t0) / pages


def pygup_faultin_ns(pages: int) -> float:
    """pin_user_pages_fast(FOLL_LONGTERM|FOLL_WRITE) of a range never touched:
    GUP-fast finds nothing, the slow path faults every page in."""
    m = machine_for(pages)
    p, a = mapped(m, pages, prefault=False)
    t0 = time.perf_counter_ns()
    ret, pinned = p.mm.pin_user_pages_fast(a, pages, FOLL.LONGTERM | FOLL.WRITE)
    dt = time.perf_counter_ns() - t0
    assert ret == pages
    p.mm.unpin_user_pages(pinned)
    return dt / pages


def thread_scaling(pages: int, threads: int, reps: int) -> list[float]:
    """Pages/s of 1..threads CPUs pinning disjoint ranges at once."""
    m = machine_for(pages, cpus=threads + 1)
    p, a = mapped(m, pages)
    out = []
    for n in range(1, threads + 1):
        share = pages // n
        go = threading.Barrier(n)

        def work(k: int) -> None:
            with m.cpu(k + 1):
                core = m._core
                start = a + k * share * PAGE
                buf = np.empty(share, np.uint64)     # reused: no allocation per call
                go.wait()
                for _ in range(reps):
                    got = core.gup_fast(k + 1, p.mm.id, start, share, LT_W, 1, buf)
                    core.gup_put_pages(got, True)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        t0 = time.perf_counter_ns()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out.append(n * share * reps / ((time.perf_counter_ns() - t0) / 1e9))
    return out


def bytes_per_page(pages: int) -> float:
    m = Machine(memory=f"{(pages * PAGE) >> 20}MiB", movable="0MiB")
    st = m.stats()
    return (st["frame_bytes"] + st["table_bytes"]) / st["nr_frames"]


def fuzz_ops_per_s(seconds: float) -> float:
    from pygup.tools.fuzz import run_seed
    t0 = time.monotonic()
    ops = seed = 0
    while time.monotonic() - t0 < seconds:
        _, n = run_seed(seed, 300, "6.5")
        ops += n
        seed += 1
    return ops / (time.monotonic() - t0)


# ---------------------------------------------------------------------------
# the live kernel

def kernel_status() -> Optional[str]:
    try:
        from pygup.tools.oracle import host
    except Exception as e:            # the host probes did not build here
        return f"pygup.tools.oracle.host unavailable: {e}"
    return host.io_uring_status()


def kernel_fast_ns(pages: int, reps: int) -> float:
    from pygup.tools.oracle import host
    return host.io_uring_register_timing(pages, reps)["ns_per_page"]


def kernel_faultin_ns(pages: int) -> float:
    """io_uring registration of a fresh, untouched region: GUP faults it in."""
    from pygup.tools.oracle import host
    size = pages * PAGE
    rc, addr = host.H.mmap(size, int(PROT.READ | PROT.WRITE), int(MAP.PRIVATE | MAP.ANONYMOUS))
    if rc:
        raise OSError(-rc, "mmap")
    try:
        rc, total, _ = host.H.io_uring_register_ns(addr, size, 1)
        if rc:
            raise OSError(-rc, "io_uring register")
    finally:
        host.H.munmap(addr, size)
    return total / pages


# ---------------------------------------------------------------------------

def run(quick: bool = False, threads: Optional[int] = None, log=print) -> dict:
    sizes = [1 << k for k in range(10, 17 if quick else 21, 2)]
    reps = 3 if quick else 5
    cores = os.cpu_count() or 1
    threads = threads or cores
    why = kernel_status()
    res: dict = {"machine": {"cpus": cores, "python": platform.python_version(),
                             "kernel": platform.release(), "processor": platform.processor()},
                 "kernel_note": why, "fast": [], "faultin": []}
    log(f"pygup bench on {cores} cores, kernel {platform.release()}"
        + (f" (kernel column: {why})" if why else ""))
    log("fast pin+unpin, present pages, FOLL_PIN|FOLL_LONGTERM|FOLL_WRITE (ns/page):")
    log(f"  {'pages':>8} {'pygup':>8} {'reference':>10} {'kernel':>8} {'pygup/kernel':>13} "
        f"{'ref/pygup':>10}")
    for n in sizes:
        m = machine_for(n)
        p, a = mapped(m, n)
        row = {"pages": n, "pygup": pygup_fast_ns(m, p, a, n, reps)}
        row["reference"] = reference_ns(m, p, a, n) if n <= REFERENCE_MAX_PAGES else None
        row["kernel"] = kernel_fast_ns(n, reps) if not why and n <= KERNEL_MAX_PAGES else None
        row["pygup_over_kernel"] = row["pygup"] / row["kernel"] if row["kernel"] else None
        row["reference_over_pygup"] = row["reference"] / row["pygup"] if row["reference"] else None
        res["fast"].append(row)
        log(f"  {n:>8} {row['pygup']:>8.1f} {_f(row['reference'], 10)} {_f(row['kernel'], 8)} "
            f"{_f(row['pygup_over_kernel'], 13, 2)} {_f(row['reference_over_pygup'], 10, 0)}")
    fast = [r["pygup"] for r in res["fast"]]
    res["flatness"] = max(fast) / min(fast)
    log(f"  ns/page varies {res['flatness']:.2f}x from {sizes[0]} to {sizes[-1]} pages")
    log("with fault-in (not pre-faulted), ns/page:")
    for n in sizes[:3] if quick else sizes[:4]:
        row = {"pages": n, "pygup": pygup_faultin_ns(n),
               "kernel": kernel_faultin_ns(n) if not why else None}
        row["pygup_over_kernel"] = row["pygup"] / row["kernel"] if row["kernel"] else None
        res["faultin"].append(row)
        log(f"  {n:>8} pygup {row['pygup']:>9.1f}  kernel {_f(row['kernel'], 8)}  "
            f"pygup/kernel {_f(row['pygup_over_kernel'], 7, 1)}")
    scale_pages = 1 << (16 if quick else 18)
    tput = thread_scaling(scale_pages, threads, reps)
    res["threads"] = [{"threads": k + 1, "pages_per_s": t, "ratio": t / tput[0]}
                      for k, t in enumerate(tput)]
    log("threads on disjoint ranges: " + ", ".join(
        f"{r['threads']}: {r['pages_per_s'] / 1e6:.1f} Mpages/s (x{r['ratio']:.2f})"
        for r in res["threads"]))
    res["bytes_per_page"] = {str(n): bytes_per_page(n) for n in ((1 << 20, 1 << 22) if not quick
                                                               else (1 << 18,))}
    log("bytes per emulated page: " + ", ".join(f"{k} pages: {v:.1f}"
                                                for k, v in res["bytes_per_page"].items()))
    res["fuzz_ops_per_s"] = fuzz_ops_per_s(2 if quick else 5)
    log(f"fuzz operations per second (one worker): {res['fuzz_ops_per_s']:.0f}")
    return res


def _f(v: Optional[float], width: int, digits: int = 1) -> str:
    return f"{v:>{width}.{digits}f}" if v is not None else f"{'n/a':>{width}}"


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("pygup", "pygup (C)"), ("reference", "reference (plain Python)"),
                       ("kernel", "live kernel (io_uring)")):
        pts = [(r["pages"], r[key]) for r in res["fast"] if r[key]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("pages pinned (4 KiB, present)")
    ax.set_ylabel("ns per page (pin + unpin)")
    ax.set_title("fast pin + unpin: pygup vs reference vs kernel")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a minute or less")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    ap.add_argument("--plot", metavar="OUT.png", help="draw ns/page against pages (matplotlib)")
    ap.add_argument("--threads", type=int, help="up to this many threads (default: cores)")


def main(args: argparse.Namespace) -> int:
    res = run(args.quick, args.threads)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if args.plot:
        plot(res, args.plot)
    return 0
