"""``pygup bench``: pygup against its plain-Python reference and against the
live kernel, in one process and one run, reported as ratios (absolute times
on shared machines are noise).

    pygup bench [--quick] [--json OUT] [--plot OUT.png]
"""
from __future__ import annotations

import argparse
import gc
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


def reps_for(pages: int, reps: int) -> int:
    """Repetitions of a ``pages``-page call: at least ``reps``, and enough
    that every size pins about the same number of pages (2**23, at most
    1,024 calls), so that neither a small call's figure is one cold call's
    nor a large one's a few calls that met another job's burst."""
    return max(reps, min(1024, (1 << 23) // pages))


def pygup_fast_ns(m: Machine, p, a: int, pages: int, reps: int) -> dict:
    """ns/page of the public ``pin_user_pages_fast(FOLL_LONGTERM |
    FOLL_WRITE)`` + ``unpin_user_pages`` over the whole range: min / median
    / max over ``reps``, after one call not counted (it warms the caches and
    the call's remembered argument checks, as a caller's first call does)."""
    mm = p.mm
    samples = []
    flags = FOLL.LONGTERM | FOLL.WRITE
    ret, got = mm.pin_user_pages_fast(a, pages, flags)
    mm.unpin_user_pages(got)
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        ret, got = mm.pin_user_pages_fast(a, pages, flags)
        mm.unpin_user_pages(got)
        samples.append((time.perf_counter_ns() - t0) / pages)
        assert ret == pages, ret
    return spread(samples)


def core_fast_ns(m: Machine, p, a: int, pages: int, reps: int) -> dict:
    """The same through the C entry points alone (no Python checks): what
    the public call adds is the difference."""
    core = m._core
    cpu = m.current_cpu()
    buf = np.empty(pages, np.uint64)
    core.gup_put_pages(core.gup_fast(cpu, p.mm.id, a, pages, LT_W, 1, buf), True)   # warm-up
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        got = core.gup_fast(cpu, p.mm.id, a, pages, LT_W, 1, buf)
        core.gup_put_pages(got, True)
        samples.append((time.perf_counter_ns() - t0) / pages)
        assert len(got) == pages
    return spread(samples)


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


def spread(samples: list[float]) -> dict:
    """min / median / max of repeated measurements (never the best alone)."""
    s = sorted(samples)
    return {"min": s[0], "median": s[len(s) // 2], "max": s[-1]}


def per_call_us(reps: int) -> dict:
    """One-page calls through the public API, in microseconds:
    ``pin_user_pages_fast`` + ``unpin_user_pages`` and ``pin_user_pages`` +
    ``unpin_user_pages`` of a present page (FOLL_LONGTERM | FOLL_WRITE).
    The flags are combined once, outside the timed loop, as a caller's hot
    loop does: an IntFlag ``|`` costs about half a microsecond in CPython
    3.11, the caller's cost, not the call's."""
    m = machine_for(64)
    p, a = mapped(m, 64)
    mm = p.mm
    out = {}
    flags = FOLL.LONGTERM | FOLL.WRITE
    for name, call in (("fast", mm.pin_user_pages_fast), ("slow", mm.pin_user_pages)):
        samples = []
        for _ in range(5):
            # as timeit does: no cyclic GC inside the timed loop (what the
            # earlier measurements left on the heap would be collected on
            # this call's clock)
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter_ns()
                for _ in range(reps):
                    ret, pages = call(a, 1, flags)
                    mm.unpin_user_pages(pages)
                samples.append((time.perf_counter_ns() - t0) / reps / 1e3)
            finally:
                gc.enable()
        assert ret == 1
        out[name] = spread(samples)
    return out


def populate_cpu_s(size: int) -> float:
    """CPU seconds of mmap(MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE) of
    ``size`` bytes in pygup."""
    m = machine_for(size // PAGE)
    p = m.spawn()
    t0 = time.process_time()
    p.mmap(size, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.POPULATE)
    return time.process_time() - t0


def writeback_ns(size: int) -> float:
    """ns/page of writing back a dirty ext4 file of ``size`` bytes mapped
    MAP_SHARED (every page dirtied through the mapping first)."""
    from pygup.flags import MADV
    pages = size // PAGE
    m = Machine(memory=f"{(size >> 20) * 2 + 64}MiB", movable="0MiB")
    f = m.mount("ext4").create("f", size)
    p = m.spawn()
    a = p.mmap(size, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    p.madvise(a, size, MADV.POPULATE_WRITE)
    t0 = time.perf_counter_ns()
    done = f.writeback()
    dt = time.perf_counter_ns() - t0
    assert done == pages, (done, pages)
    return dt / pages


def mmap_at_vmas_us(counts: tuple[int, ...], reps: int = 200) -> dict:
    """mmap + munmap of one page with ``n`` VMAs already mapped (alternating
    protections, so that none merge), in microseconds."""
    out = {}
    for n in counts:
        m = Machine(memory="64MiB", movable="0MiB")
        p = m.spawn()
        for i in range(n):
            p.mmap(PAGE, PROT.READ if i % 2 else PROT.READ | PROT.WRITE,
                   MAP.PRIVATE | MAP.ANONYMOUS)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                a = p.mmap(PAGE, PROT.NONE, MAP.PRIVATE | MAP.ANONYMOUS)
                p.munmap(a, PAGE)
            samples.append((time.perf_counter_ns() - t0) / reps / 1e3)
        out[str(n)] = spread(samples)
    return out


def fuzz_cli_ops_per_s(seconds: float) -> dict:
    """``pygup fuzz --workers 1``: every operation it executed, per second,
    as the CLI reports it, and the violation it stopped at, if any (the
    campaign ends there: the rate still counts what ran)."""
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "fuzz.json")
        rc = subprocess.run([sys.executable, "-m", "pygup", "fuzz", "--workers", "1", "--seconds",
                             str(seconds), "--no-progress", "--json", out, "--out-dir", d],
                            stdout=subprocess.DEVNULL).returncode
        if rc not in (0, 1) or not os.path.exists(out):
            raise RuntimeError(f"pygup fuzz exited {rc} without a summary")
        with open(out) as fh:
            r = json.load(fh)
    failure = r.get("failure")
    return {"ops_per_s": r["ops"] / r["seconds"], "ops": r["ops"], "seconds": r["seconds"],
            "violation": f"[{failure['invariant']}] {failure['detail']}" if failure else None,
            "by_kind": r["by_kind"]}


# ---------------------------------------------------------------------------
# the live kernel

def kernel_status() -> Optional[str]:
    try:
        from pygup.tools.oracle import host
    except Exception as e:            # the host probes did not build here
        return f"pygup.tools.oracle.host unavailable: {e}"
    return host.io_uring_status()


def kernel_fast_ns(pages: int, reps: int) -> dict:
    """io_uring IORING_REGISTER_BUFFERS + UNREGISTER of one buffer on one
    ring: pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) and unpin, plus what
    io_uring adds (the syscalls, the iovec check, the imu bvec array and
    its allocation, the accounting of locked memory).  min / median / max
    over ``reps``, each the mean of a few calls."""
    from pygup.tools.oracle import host
    size = pages * PAGE
    rc, addr = host.H.mmap(size, int(PROT.READ | PROT.WRITE), int(MAP.PRIVATE | MAP.ANONYMOUS))
    if rc:
        raise OSError(-rc, "mmap")
    try:
        host.H.touch(addr, size, 1, 1)
        samples = []
        for _ in range(reps):
            rc, total, _ = host.H.io_uring_register_ns(addr, size, 3)
            if rc:
                raise OSError(-rc, "io_uring register")
            samples.append(total / 3 / pages)
    finally:
        host.H.munmap(addr, size)
    return spread(samples)


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


def kernel_populate_cpu_s(size: int) -> float:
    """CPU seconds (user + system) of the live kernel's MAP_POPULATE."""
    from pygup.tools.oracle import host
    t0 = time.process_time()
    rc, addr = host.H.mmap(size, int(PROT.READ | PROT.WRITE),
                           int(MAP.PRIVATE | MAP.ANONYMOUS | MAP.POPULATE))
    dt = time.process_time() - t0
    if rc:
        raise OSError(-rc, "mmap")
    host.H.munmap(addr, size)
    return dt


def kernel_msync_ns(size: int) -> Optional[float]:
    """ns/page of msync(MS_SYNC) of a file of ``size`` bytes mapped
    MAP_SHARED and dirtied page by page, in the temporary directory's file
    system (None where it cannot be mapped)."""
    import tempfile
    from pygup.flags import MS
    from pygup.tools.oracle import host
    with tempfile.TemporaryFile(dir=os.environ.get("PYGUP_BENCH_DIR")) as fh:
        fh.truncate(size)
        rc, addr = host.H.mmap(size, int(PROT.READ | PROT.WRITE), int(MAP.SHARED), fh.fileno(), 0)
        if rc:
            return None
        try:
            host.H.msync(addr, size, int(MS.SYNC))
            host.H.touch(addr, size, 1, 0x5A)
            t0 = time.perf_counter_ns()
            rc = host.H.msync(addr, size, int(MS.SYNC))
            dt = time.perf_counter_ns() - t0
        finally:
            host.H.munmap(addr, size)
    return dt / (size // PAGE) if rc == 0 else None


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
    log("one-page calls through the public API (us; min / median / max):")
    res["per_call_us"] = per_call_us(200 if quick else 1000)
    for k, what in (("fast", "pin_user_pages_fast + unpin_user_pages"),
                    ("slow", "pin_user_pages + unpin_user_pages (present)")):
        s = res["per_call_us"][k]
        log(f"  {what:<46} {s['min']:8.2f} {s['median']:8.2f} {s['max']:8.2f}")
    log("fast pin+unpin of present pages, FOLL_LONGTERM|FOLL_WRITE, ns/page (median; "
        "pygup: the public pin_user_pages_fast + unpin_user_pages; core: the C entry "
        "points alone; kernel: io_uring register + unregister):")
    log(f"  {'pages':>8} {'pygup':>8} {'core':>8} {'reference':>10} {'kernel':>8} "
        f"{'pygup/kernel':>13} {'ref/pygup':>10}")
    for n in sizes:
        m = machine_for(n)
        p, a = mapped(m, n)
        row = {"pages": n, "pygup": pygup_fast_ns(m, p, a, n, reps_for(n, reps)),
               "core": core_fast_ns(m, p, a, n, reps_for(n, reps))}
        row["reference"] = reference_ns(m, p, a, n) if n <= REFERENCE_MAX_PAGES else None
        row["kernel"] = (kernel_fast_ns(n, reps_for(n, reps)) if not why and n <= KERNEL_MAX_PAGES
                         else None)
        med = row["pygup"]["median"]
        row["pygup_over_kernel"] = med / row["kernel"]["median"] if row["kernel"] else None
        row["reference_over_pygup"] = row["reference"] / med if row["reference"] else None
        res["fast"].append(row)
        log(f"  {n:>8} {med:>8.1f} {row['core']['median']:>8.1f} {_f(row['reference'], 10)} "
            f"{_f(row['kernel']['median'] if row['kernel'] else None, 8)} "
            f"{_f(row['pygup_over_kernel'], 13, 2)} {_f(row['reference_over_pygup'], 10, 0)}")
    fast = [r["pygup"]["median"] for r in res["fast"]]
    res["flatness"] = max(fast) / min(fast)
    log(f"  ns/page varies {res['flatness']:.2f}x from {sizes[0]} to {sizes[-1]} pages")
    log("with fault-in (not pre-faulted), ns/page:")
    for n in sizes[:3] if quick else sizes[:4]:
        row = {"pages": n, "pygup": pygup_faultin_ns(n),
               "kernel": kernel_faultin_ns(n) if not why else None}
        row["pygup_over_kernel"] = row["pygup"] / row["kernel"] if row["kernel"] else None
        res["faultin"].append(row)
        log(f"  {n:>8} pygup {row['pygup']:>9.1f}  kernel {_f(row['kernel'], 8)}  "
            f"pygup/kernel {_f(row['pygup_over_kernel'], 7, 2)}")
    size = (128 if quick else 1024) << 20
    pop = {"bytes": size, "pygup_s": populate_cpu_s(size), "kernel_s": kernel_populate_cpu_s(size)}
    pop["pygup_over_kernel"] = pop["pygup_s"] / pop["kernel_s"] if pop["kernel_s"] else None
    res["populate"] = pop
    log(f"MAP_POPULATE of {size >> 20} MiB, CPU s: pygup {pop['pygup_s']:.3f}  kernel "
        f"{pop['kernel_s']:.3f}  pygup/kernel {_f(pop['pygup_over_kernel'], 5, 2)}")
    size = (32 if quick else 256) << 20
    wb = {"bytes": size, "pygup_ns": writeback_ns(size), "kernel_ns": kernel_msync_ns(size)}
    wb["pygup_over_kernel"] = wb["pygup_ns"] / wb["kernel_ns"] if wb["kernel_ns"] else None
    res["writeback"] = wb
    log(f"writeback of {size >> 20} MiB dirty (ext4 in pygup; msync(MS_SYNC) in the kernel), "
        f"ns/page: pygup {wb['pygup_ns']:.0f}  kernel {_f(wb['kernel_ns'], 5, 0)}  pygup/kernel "
        f"{_f(wb['pygup_over_kernel'], 5, 2)}")
    counts = (1, 1000) if quick else (1, 10_000)
    res["mmap_at_vmas_us"] = mv = mmap_at_vmas_us(counts)
    lo, hi = mv[str(counts[0])]["median"], mv[str(counts[-1])]["median"]
    res["mmap_vma_ratio"] = hi / lo
    log("mmap + munmap of one page, us (median): " + ", ".join(
        f"{k} VMAs: {v['median']:.1f}" for k, v in mv.items())
        + f"  ({res['mmap_vma_ratio']:.2f}x)")
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
    fz = fuzz_cli_ops_per_s(5 if quick else 15)
    res["fuzz_ops_per_s"] = fz["ops_per_s"]
    res["fuzz"] = fz
    log(f"fuzz operations per second (pygup fuzz --workers 1, every operation): "
        f"{fz['ops_per_s']:.0f} ({fz['ops']} ops in {fz['seconds']:.1f} s"
        + (f"; stopped at a violation: {fz['violation']})" if fz["violation"] else ")"))
    from pygup.tools.fuzz.campaign import format_by_kind
    log("  by kind of seed: " + format_by_kind(fz["by_kind"]))
    res["targets"] = targets(res)
    log(format_targets(res["targets"]))
    return res


def targets(res: dict) -> list[dict]:
    """Issue 14's targets against this run's figures."""
    fast = {r["pages"]: r["pygup"]["median"] for r in res["fast"]}
    lo, hi = min(fast), max(fast)
    fi = res["faultin"][-1]
    rows = [
        ("one-page pin_user_pages_fast + unpin (us)", res["per_call_us"]["fast"]["median"],
         "<= 2", res["per_call_us"]["fast"]["median"] <= 2),
        ("one-page pin_user_pages + unpin, present (us)", res["per_call_us"]["slow"]["median"],
         "<= 5", res["per_call_us"]["slow"]["median"] <= 5),
        (f"fault-in per page, pygup/kernel ({fi['pages']} pages)", fi["pygup_over_kernel"],
         "<= 0.5", fi["pygup_over_kernel"] is not None and fi["pygup_over_kernel"] <= 0.5),
        (f"MAP_POPULATE {res['populate']['bytes'] >> 20} MiB, pygup/kernel CPU",
         res["populate"]["pygup_over_kernel"], "<= 1",
         res["populate"]["pygup_over_kernel"] is not None
         and res["populate"]["pygup_over_kernel"] <= 1),
        (f"writeback {res['writeback']['bytes'] >> 20} MiB per page, pygup/msync",
         res["writeback"]["pygup_over_kernel"], "<= 1",
         res["writeback"]["pygup_over_kernel"] is not None
         and res["writeback"]["pygup_over_kernel"] <= 1),
        ("mmap at many VMAs / at 1 VMA", res["mmap_vma_ratio"], "<= 2",
         res["mmap_vma_ratio"] <= 2),
        ("fuzz ops/s, one worker, CLI", res["fuzz_ops_per_s"], ">= 20000",
         res["fuzz_ops_per_s"] >= 20000),
        (f"GUP-fast pin+unpin ns/page at {1 << 14 if (1 << 14) in fast else hi} pages",
         fast.get(1 << 14, fast[hi]), "<= 20", fast.get(1 << 14, fast[hi]) <= 20),
        (f"GUP-fast drift {lo} -> {hi} pages", res["flatness"], "<= 1.3",
         res["flatness"] <= 1.3),
    ]
    return [{"target": t, "value": v, "goal": g, "met": bool(ok)} for t, v, g, ok in rows]


def format_targets(rows: list[dict]) -> str:
    lines = ["targets (issue 14):", f"  {'figure':<52} {'value':>10} {'goal':>9}  met"]
    for r in rows:
        v = "n/a" if r["value"] is None else f"{r['value']:.2f}"
        lines.append(f"  {r['target']:<52} {v:>10} {r['goal']:>9}  {'yes' if r['met'] else 'no'}")
    return "\n".join(lines)


def _f(v: Optional[float], width: int, digits: int = 1) -> str:
    return f"{v:>{width}.{digits}f}" if v is not None else f"{'n/a':>{width}}"


PLOT_HINT = "pygup bench --plot needs matplotlib: pip install 'pygup[plot]'"


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("pygup", "pygup (pin_user_pages_fast + unpin_user_pages)"),
                       ("core", "pygup C entry points alone"),
                       ("reference", "reference (plain Python)"),
                       ("kernel", "live kernel (io_uring register + unregister)")):
        pts = [(r["pages"], _median(r.get(key))) for r in res["fast"] if r.get(key)]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("pages pinned (4 KiB, present)")
    ax.set_ylabel("ns per page (pin + unpin)")
    ax.set_title("fast pin + unpin of present pages (median of the runs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _median(v):
    """A figure as saved: a number, or min / median / max."""
    return v["median"] if isinstance(v, dict) else v


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a minute or less")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    ap.add_argument("--plot", metavar="OUT.png", help="draw ns/page against pages (needs matplotlib)")
    ap.add_argument("--from", dest="from_file", metavar="FILE",
                    help="measure nothing: take the figures from a saved --json run")
    ap.add_argument("--threads", type=int, help="up to this many threads (default: cores)")


def main(args: argparse.Namespace) -> int:
    if args.plot:
        try:                           # before any time is spent measuring
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit(PLOT_HINT)
    if args.from_file:
        with open(args.from_file) as fh:
            res = json.load(fh)
        if "targets" in res:
            print(format_targets(res["targets"]))
    else:
        res = run(args.quick, args.threads)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if args.plot:
        plot(res, args.plot)
    return 0
