"""The harness's operation vocabulary: every operation is plain JSON data,
generated from a seeded RNG against the current world, and executed by
``apply``.  Numbers that name things (process, region, page, hold, file) are
taken modulo what exists when the operation runs.
"""
from __future__ import annotations

import errno
import functools
import itertools
import random
from typing import Callable, Collection, Optional

from pygup import callers
from pygup.errors import GupError
from pygup.flags import FALLOC, FOLL, MADV, MAP, MREMAP, PROT
from pygup._native import C
from pygup.tools.fuzz.world import PAGE, READER_CPU, WORLD_CPUS, Held, Proc, Region, Violation, World

# op name -> weight in random generation
WEIGHTS = {
    "mmap": 6, "munmap": 2, "mprotect": 2, "fork": 2, "exit": 1,
    "write": 20, "read": 12, "pin": 8, "get": 2, "pin_write": 8, "unpin": 5,
    "writeback": 4, "msync": 2, "truncate": 2, "evict": 3, "migrate": 1,
    "caller": 8, "caller_release": 2, "collapse": 1,
    "madvise": 4, "mlock": 2, "munlock": 1, "mremap": 2, "fallocate": 2,
    "rcu_section": 2, "gup_edge": 2, "orphan_section": 1,
}
_WEIGHTS_SEEN: list = [None, None, None]     # WEIGHTS' items, names, cumulative weights


def _cum_weights() -> tuple[list, list]:
    """(names, cumulative weights) of WEIGHTS as it is now (a test may
    change it), accumulated once per change rather than per operation."""
    items = tuple(WEIGHTS.items())
    if items != _WEIGHTS_SEEN[0]:
        _WEIGHTS_SEEN[:] = [items, [k for k, _ in items],
                            list(itertools.accumulate(w for _, w in items))]
    return _WEIGHTS_SEEN[1], _WEIGHTS_SEEN[2]


# the advice the harness gives: each keeps the world's record of what a
# page holds computable (MADV_FREE's "maybe discarded" would not)
ADVICE = ["DONTNEED", "DONTNEED", "POPULATE_READ", "POPULATE_WRITE", "COLD", "PAGEOUT",
          "DONTFORK", "DOFORK", "DONTNEED_LOCKED"]
CALLERS = ["io_uring", "rdma", "vfio", "proc_mem_write", "proc_mem_read", "process_vm_writev",
           "process_vm_readv", "dio_read", "dio_write", "vmsplice"]


def generate(rng: random.Random, world: World) -> dict:
    """One random operation for the world as it is now."""
    # the cumulative weights once (random.choices accumulates the same
    # list from plain weights: the sequence a seed gives is unchanged)
    names, cum = _cum_weights()
    name = rng.choices(names, cum_weights=cum)[0]
    if not any(p.regions for p in world.procs) and name not in ("mmap", "fork", "writeback"):
        name = "mmap"
    r = lambda k: rng.randrange(k)    # noqa: E731
    op: dict = {"op": name}
    if name == "mmap":
        kind = rng.choice(["anon", "anon", "file", "file", "file", "shared-anon", "huge",
                           "secret", "thp"])
        op.update(proc=r(8), kind=kind, file=r(len(world.files)), shared=rng.random() < 0.6,
                  prot=rng.choice(["rw", "rw", "rw", "r"]), pages=rng.randint(1, 6))
    elif name in ("munmap", "mprotect", "write", "read", "pin", "get", "migrate", "msync",
                  "collapse"):
        op.update(proc=r(8), region=r(8), page=r(16))
        if name == "munmap":
            op["whole"] = rng.random() < 0.4
        elif name == "mprotect":
            op["prot"] = rng.choice(["rw", "r", "none"])
        elif name == "write":
            op["value"] = rng.getrandbits(32) | 1
        if name in ("write", "read"):
            # the CPU the access runs on: its TLB keeps the translation,
            # so every later change must shoot it down there too
            op["cpu"] = r(READER_CPU)
        elif name in ("pin", "get"):
            op.update(n=rng.randint(1, 3), fast=rng.random() < 0.5,
                      write=rng.random() < 0.6, longterm=rng.random() < 0.6)
            if not op["fast"]:
                # the slow path's FOLL_SPLIT_PMD (uprobes' way in; GUP-fast refuses it)
                op["split_pmd"] = rng.random() < 0.15
            op["trace"] = rng.random() < 0.2      # the call explained (explain.trace_calls)
            if name == "get":
                op["nopages"] = rng.random() < 0.3
    elif name in ("fork", "exit"):
        op["proc"] = r(8)
    elif name == "pin_write":
        op.update(hold=r(8), page=r(4), value=rng.getrandbits(32) | 1)
    elif name == "unpin":
        op.update(hold=r(8), dirty=rng.random() < 0.7)
    elif name in ("truncate", "evict"):
        op["file"] = r(len(world.files))
        if name == "truncate":
            op["pages"] = rng.randint(0, 8)
    elif name == "caller":
        op.update(name=rng.choice(CALLERS), proc=r(8), region=r(8), page=r(16),
                  n=rng.randint(1, 3), value=rng.getrandbits(32) | 1,
                  writable=rng.random() < 0.7)
    elif name == "caller_release":
        op.update(proc=r(8), name=rng.choice(["io_uring", "rdma", "vfio", "pipe"]))
    elif name in ("madvise", "mlock", "munlock", "mremap"):
        op.update(proc=r(8), region=r(8), page=r(16), n=rng.randint(1, 3))
        if name == "madvise":
            op["advice"] = rng.choice(ADVICE)
        elif name == "mremap":
            op["grow"] = rng.randint(0, 2)
    elif name == "fallocate":
        op.update(file=r(len(world.files)), page=r(8), n=rng.randint(1, 3))
    elif name == "rcu_section":
        op.update(cpu=r(8), depth=rng.randint(1, 3), rcu=rng.random() < 0.5, proc=r(8),
                  region=r(8), page=r(16))
    elif name == "gup_edge":
        op.update(proc=r(8), case=rng.choice(EDGE_CASES), api=rng.choice(EDGE_APIS),
                  region=r(8), page=r(16))
    elif name == "orphan_section":
        op["wait"] = rng.choice(["synchronize_rcu", "rcu_barrier", "shootdown"])
    return op


# ---------------------------------------------------------------------------
# execution

def apply(world: World, op: dict) -> str:
    """Run one operation; returns a short description of what happened.
    Raises Violation when an oracle fails."""
    fn = _OPS.get(op.get("op"))
    if fn is None:
        raise ValueError(f"unknown fuzz operation {op!r}")
    world.steps += 1
    if op["op"] in _MAY_UNSHARE:
        world.note_cows()          # before: COWs the harness already knows of
        out = fn(world, op)
        world.note_cows()
        return out
    return fn(world, op)


_MAY_UNSHARE = {"pin", "get", "caller"}


def _target(world: World, op: dict):
    """(proc, region, page, addr) or None when there is nothing to act on."""
    if not world.procs:
        return None
    proc = world.proc(op["proc"])
    region = world.region(proc, op["region"])
    if region is None:
        return None
    page = op["page"] % region.pages
    if page in region.unmapped:
        return None                # munmapped (its address may be reused)
    return proc, region, page, region.page_addr(page)


def _on_page(fn: Callable) -> Callable:
    """An operation on one page of one region: resolve op's (proc, region,
    page) first, and do nothing when there is nothing mapped to act on."""
    @functools.wraps(fn)
    def run(world: World, op: dict, *args):
        t = _target(world, op)
        if t is None:
            return "nothing mapped"
        return fn(world, op, *t, *args)
    return run


def _span(region: Region, page: int, n: int) -> int:
    """How many of n pages from `page` on are this region's and mapped (the
    pages after them may belong to another mapping now)."""
    k = 0
    while k < n and page + k < region.pages and (page + k) not in region.unmapped:
        k += 1
    return k


def _quiet(fn: Callable, *a, **k):
    """Run a model call; a kernel-style failure is an outcome, not a bug."""
    try:
        return fn(*a, **k), None
    except GupError as e:
        return None, e.errno


def op_mmap(world: World, op: dict) -> str:
    if not world.procs:
        return "no process"
    proc = world.proc(op["proc"])
    p = proc.p
    prot = PROT.READ | (PROT.WRITE if op["prot"] == "rw" else 0)
    kind = op["kind"]
    pages = op["pages"]
    if kind == "file":
        f = world.files[op["file"] % len(world.files)]
        flags = MAP.SHARED if op["shared"] else MAP.PRIVATE
        addr, err = _quiet(p.mmap, pages * PAGE, prot, flags, file=f)
        file_idx = op["file"] % len(world.files)
    elif kind == "secret":
        addr, err = _quiet(p.mmap, pages * PAGE, prot, MAP.SHARED,
                           file=world.m.memfd_secret(pages * PAGE))
        file_idx = None
    elif kind == "huge":
        pages = 512
        addr, err = _quiet(p.mmap, pages * PAGE, prot, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
        file_idx = None
    elif kind == "thp":
        # a 2 MiB-aligned anon range that may hold a THP (MADV_HUGEPAGE)
        pages = C.PMD_NR
        addr, err = _mmap_thp(p, prot)
        file_idx = None
    else:
        flags = MAP.ANONYMOUS | (MAP.SHARED if kind == "shared-anon" else MAP.PRIVATE)
        addr, err = _quiet(p.mmap, pages * PAGE, prot, flags)
        file_idx = None
    if err:
        return f"mmap -> {errno.errorcode[err]}"
    shared = kind in ("shared-anon", "secret") or (kind == "file" and op["shared"])
    region = Region(addr, pages, {"file": "file", "huge": "anon", "secret": "shared-anon",
                                  "thp": "anon"}
                    .get(kind, kind), file_idx, shared, op["prot"] == "rw", huge=kind == "huge",
                    origin=kind)
    # fresh memory reads 0: forget what the range held (by the shorter walk:
    # a THP or hugetlb mapping is 512 pages, the truth often a handful)
    end = addr + pages * PAGE
    if len(proc.anon_truth) < pages:
        for a in [a for a in proc.anon_truth if addr <= a < end]:
            del proc.anon_truth[a]
    else:
        for i in range(pages):
            proc.anon_truth.pop(addr + i * PAGE, None)
    proc.regions.append(region)
    return f"mmap {kind} {pages}p at {addr:#x}"


def _mmap_thp(p, prot: int):
    """mmap of a 2 MiB-aligned anonymous range marked VM_HUGEPAGE: (addr, 0)
    or (None, errno)."""
    from pygup.flags import PMD_SIZE, VM
    with p.kernel.op():
        start = p.mm.get_unmapped_area(PMD_SIZE, PMD_SIZE)
    addr, err = _quiet(p.mmap, PMD_SIZE, prot, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE,
                       addr=start)
    if not err:
        with p.kernel.op():
            p.mm.find_vma(addr).vm_flags |= VM.HUGEPAGE     # what MADV_HUGEPAGE sets
    return addr, err


@_on_page
def op_collapse(world: World, op: dict, proc: Proc, region: Region, page: int,
                addr: int) -> str:
    """khugepaged's collapse of the 2 MiB around the page (kernel/thp.py):
    the data must read back the same afterwards (the world's truth does
    not change), and the refcount audit sees the old pages go."""
    rc = world.m.collapse(proc.p, addr)
    return f"collapse {addr:#x} -> {rc}"


@_on_page
def op_munmap(world: World, op: dict, proc: Proc, region: Region, page: int,
              addr: int) -> str:
    if op["whole"] or region.huge:
        for start, length in region.runs():
            _quiet(proc.p.munmap, start, length)
        proc.regions.remove(region)
        pages = [i for i in range(region.pages) if i not in region.unmapped]
    else:
        _quiet(proc.p.munmap, addr, PAGE)
        region.unmapped.add(page)
        pages = [page]
    for i in pages:
        proc.anon_truth.pop(region.page_addr(i), None)
    return f"munmap {addr:#x}"


@_on_page
def op_mprotect(world: World, op: dict, proc: Proc, region: Region, page: int,
                addr: int) -> str:
    prot = {"rw": PROT.READ | PROT.WRITE, "r": PROT.READ, "none": PROT.NONE}[op["prot"]]
    errs = [_quiet(proc.p.mprotect, start, length, prot)[1] for start, length in region.runs()]
    err = next((e for e in errs if e), None)
    if err is None:
        region.writable = op["prot"] == "rw"
        region.readable = op["prot"] != "none"
    else:
        region.certain = False         # some runs changed, some not
    return f"mprotect {region.addr:#x} {op['prot']} -> {err or 0}"


def op_fork(world: World, op: dict) -> str:
    if not world.procs or len(world.procs) >= 4:
        return "no fork"
    parent = world.proc(op["proc"])
    child, err = _quiet(parent.p.fork)
    if err:
        return f"fork -> {err}"
    # MADV_DONTFORK pages are not in the child (dup_mmap() skips VM_DONTCOPY
    # VMAs): to the child's record they are unmapped, their address free for
    # the child's next mmap
    regions, truth = [], dict(parent.anon_truth)
    spans = [(v.vm_start, v.vm_end) for v in child.mm.vmas]
    for r in parent.regions:
        gone = _uncovered(r, spans)
        for i in gone:
            truth.pop(r.page_addr(i), None)
        if len(gone | r.unmapped) < r.pages:
            regions.append(Region(r.addr, r.pages, r.kind, r.file, r.shared, r.writable,
                                  r.huge, r.unmapped | gone, r.readable, r.origin, r.certain))
    world.procs.append(Proc(child, regions, truth))
    return f"fork pid {parent.p.pid} -> {child.pid}"


def _uncovered(region: Region, spans: list) -> set:
    """The region's pages no (start, end) span covers (spans sorted)."""
    lo, hi = region.addr, region.addr + region.pages * PAGE
    covered = set()
    for start, end in spans:
        if end <= lo or start >= hi:
            continue
        first = (max(start, lo) - lo) // PAGE
        covered.update(range(first, (min(end, hi) - lo + PAGE - 1) // PAGE))
    return set(range(region.pages)) - covered


def op_exit(world: World, op: dict) -> str:
    if len(world.procs) <= 1:
        return "last process stays"
    proc = world.proc(op["proc"])
    for h in [h for h in world.held if h.proc is proc]:
        world.release(h, dirty=False)
    proc.p.exit()
    world.procs.remove(proc)
    return f"exit pid {proc.p.pid}"


@_on_page
def op_write(world: World, op: dict, proc: Proc, region: Region, page: int,
             addr: int) -> str:
    certain = world.pin_must_succeed(proc, region, page, 1, int(FOLL.WRITE))
    with world.m.cpu(op.get("cpu", 0)):
        _, err = _quiet(proc.p.write, addr, op["value"])
    world.check_access(region, addr, True, err, certain)
    if err is None:
        world.check_tlb_filled(op.get("cpu", 0), proc, addr)
        world.record_write(proc, region, page, op["value"])
    return f"write {addr:#x} -> {err or 0}"


@_on_page
def op_read(world: World, op: dict, proc: Proc, region: Region, page: int,
            addr: int) -> str:
    certain = world.pin_must_succeed(proc, region, page, 1, 0)
    with world.m.cpu(op.get("cpu", 0)):
        got, err = _quiet(proc.p.read, addr)
    world.check_access(region, addr, False, err, certain)
    if err is None:
        world.check_tlb_filled(op.get("cpu", 0), proc, addr)
        want = world.expected_read(proc, region, page)
        if want is not None and got != want:
            inv = "no-lost-write" if region.shared else "cow-isolation"
            raise Violation(inv, f"pid {proc.p.pid} read {addr:#x}: {got:#x}, expected {want:#x}")
    return f"read {addr:#x} -> {err or 0}"


@_on_page
def _gup(world: World, op: dict, proc: Proc, region: Region, page: int, addr: int,
         pin: bool) -> str:
    mm = proc.p.mm
    n = _span(region, page, op["n"])
    flags = (FOLL.WRITE if op["write"] else 0)
    if pin and op["longterm"]:
        flags |= FOLL.LONGTERM
    split = bool(op.get("split_pmd")) and not op["fast"] and not op.get("nopages")
    if split:
        flags |= FOLL.SPLIT_PMD
    if not pin and op.get("nopages"):
        # get_user_pages() with no pages array: fault in only (MADV_POPULATE)
        gup_flags = int(FOLL.WRITE if op["write"] else 0)
        certain = world.pin_must_succeed(proc, region, page, n, gup_flags)
        eof = _eof_answer(world, proc, region, page, n, gup_flags)
        ret, pages = mm.get_user_pages(addr, n, gup_flags, pages=False)
        _check_stops_at_eof(eof, ret, f"get_user_pages({addr:#x}, {n}, pages=NULL)")
        if certain and ret != n:
            raise Violation("over-refusal", f"get_user_pages({addr:#x}, {n}, {gup_flags:#x}, "
                            f"pages=NULL) -> {ret}: {certain}: every page must be faulted in")
        return f"populate {addr:#x} -> {ret}"
    if pin:
        call = mm.pin_user_pages_fast if op["fast"] else mm.pin_user_pages
    else:
        call = mm.get_user_pages_fast if op["fast"] else mm.get_user_pages
    if op["fast"]:
        world.check_fast_differential(mm, addr, n, int(flags | (FOLL.PIN if pin else FOLL.GET)))
    certain = world.pin_must_succeed(proc, region, page, n, int(flags))
    # a read-only FOLL_GET of a PMD-mapped THP follows the PMD: it faults
    # nothing, so nothing splits (follow_pmd_mask / gup_huge_pmd)
    huge_before = not pin and not flags and bool(mm.pte(addr).huge)
    eof = _eof_answer(world, proc, region, page, n, int(flags))
    if op.get("trace"):
        from pygup.explain import trace_calls
        with trace_calls(world.m.kernel) as trace:
            ret, pages = call(addr, n, int(flags))
        world.check_trace(trace, call.__name__, n, int(flags | (FOLL.PIN if pin else 0)), ret)
    else:
        ret, pages = call(addr, n, int(flags))
    _check_stops_at_eof(eof, ret, f"{call.__name__}({addr:#x}, {n}, {flags!r})")
    if huge_before and not mm.pte(addr).huge:
        raise Violation("thp-mapping", f"{call.__name__}({addr:#x}, {n}, 0) split the "
                        "PMD-mapped THP it only had to look up")
    if split and ret > 0 and not region.huge:
        for i in range(ret):
            if mm.pte(region.page_addr(page + i)).huge:
                raise Violation("thp-mapping", f"{call.__name__}({addr:#x}, {n}, "
                                f"{flags!r}) left page {i} PMD-mapped: FOLL_SPLIT_PMD "
                                "splits it (follow_pmd_mask)")
    if certain and ret != n:
        raise Violation("over-refusal", f"{call.__name__}({addr:#x}, {n}, {flags!r}) -> {ret}: "
                        f"{certain}: every page must be taken")
    if ret <= 0:
        return f"{'pin' if pin else 'get'} {addr:#x} -> {ret}"
    world.check_no_secretmem(pages)
    world.check_policy_pin(pages, (flags | FOLL.PIN) if pin else flags)
    if pin and flags & FOLL.LONGTERM:
        world.check_longterm_pinnable(pages)
    if pin and not op["longterm"]:
        # a short-term pin lives for one I/O: the device writes, then unpin
        if op["write"]:
            for i in range(len(pages)):
                world.check_pin_write(pages[i])
                pages.write(i, 0xD10 + i)
                _record_pin_write(world, proc, region, page + i, pages[i], 0xD10 + i)
        mm.unpin_user_pages_dirty_lock(pages, bool(op["write"]))
        return f"short pin {addr:#x} x{ret}"
    world.held.append(Held(proc, region, page, pages, int(flags)))
    return f"{'pin' if pin else 'get'} {addr:#x} x{ret} held"


def _eof_answer(world: World, proc: Proc, region: Region, page: int, n: int,
                gup_flags: int):
    """Where a GUP of these pages must stop for EOF, when the harness knows:
    at the first page past EOF if every page before it must be taken
    (pin_must_succeed), or at once when the first page is past EOF."""
    if not region.certain or region.huge:
        return None
    eof = world.pages_before_eof(proc, region, page, n)
    if eof is None or (eof and not world.pin_must_succeed(proc, region, page, eof, gup_flags)):
        return None
    return eof


def _check_stops_at_eof(eof, ret: int, call: str) -> None:
    """A GUP over a page past EOF stops there: the pages before it, or
    -EFAULT when it is the first (the fault is VM_FAULT_SIGBUS)."""
    if eof is None:
        return
    want = eof if eof else -errno.EFAULT
    if ret != want:
        raise Violation("errno", f"{call} -> {ret}: page {eof} of the range is past EOF, "
                        f"so the answer is {want}")


def _record_pin_write(world: World, proc: Proc, region: Region, page: int, pfn: int,
                      value: int) -> None:
    """A write through the direct map lands wherever the frame is now: in
    the page cache page of some file, or in the pinner's anon page."""
    core = world.m._core
    fi = core.frame_info(pfn)
    if fi.mapping and not fi.mapping & 3:
        inode = world.m.kernel.inode_by_as(fi.mapping >> 2)
        if inode is not None and inode.find_folio(fi.index) == fi.head:
            world.shared_truth[(inode.ino, fi.index + (pfn - fi.head))] = value
        return
    if fi.mapping & 3 == 1 and proc.p.alive and page not in region.unmapped \
            and region in proc.regions:
        addr = region.page_addr(page)
        pte = proc.p.mm.pte(addr)
        if pte.level and pte.pfn + ((addr >> 12) & 511 if pte.huge else 0) == pfn:
            proc.anon_truth[addr] = value
            if region.shared:
                b = world.backing(proc, addr)
                if b:
                    world.shared_truth[(b[0].ino, b[1])] = value


def op_pin(world: World, op: dict) -> str:
    return _gup(world, op, True)


def op_get(world: World, op: dict) -> str:
    return _gup(world, {**op, "write": op.get("nopages", False) and op["write"]}, False)


def op_pin_write(world: World, op: dict) -> str:
    holds = [h for h in world.held if h.pages.pinned and h.flags & FOLL.WRITE]
    if not holds:
        return "no writable pin"
    h = holds[op["hold"] % len(holds)]
    i = op["page"] % len(h.pages)
    world.check_pin_write(h.pages[i])
    h.pages.write(i, op["value"])
    _record_pin_write(world, h.proc, h.region, h.page + i, h.pages[i], op["value"])
    return f"pin write frame {h.pages[i]:#x}"


def op_unpin(world: World, op: dict) -> str:
    if not world.held:
        return "nothing held"
    h = world.held[op["hold"] % len(world.held)]
    dirty = op["dirty"] and bool(h.flags & FOLL.WRITE)
    world.release(h, dirty)
    return f"unpin x{len(h.pages)} dirty={dirty}"


def op_writeback(world: World, op: dict) -> str:
    """sync(), then sync() again: the second pass has nothing to write
    (nobody wrote in between; a folio written back stays clean until its
    next write: folio_clear_dirty_for_io's exact answer)."""
    written = world.m.writeback()
    again = world.m.writeback()
    if again:
        raise Violation("writeback-exact", f"a second sync() right after one that wrote "
                        f"{written} pages wrote {again} more: nothing was dirtied in between")
    return f"writeback {written} pages"


@_on_page
def op_msync(world: World, op: dict, proc: Proc, region: Region, page: int,
             addr: int) -> str:
    errs = [_quiet(proc.p.msync, start, length)[1] for start, length in region.runs()]
    return f"msync -> {next((e for e in errs if e), 0)}"


def op_truncate(world: World, op: dict) -> str:
    f = world.files[op["file"] % len(world.files)]
    pages = min(op["pages"], world.FILES[op["file"] % len(world.files)][1])
    f.truncate(pages * PAGE)
    world.truncate_truth(f.inode, pages)

    def zapped(proc: Proc, addr: int) -> bool:
        # what the mapping at addr is now decides, not the region the
        # harness first mapped there: a hole munmap left may have been
        # filled by another file's mapping since
        b = world.backing(proc, addr) if proc.p.alive else None
        return b is not None and b[0] is f.inode and b[1] >= pages
    # truncation zaps private COW copies too (unmap_mapping_range even_cows),
    # pinned or not
    for h in world.held:
        if h.region.kind == "file":
            for i in range(len(h.pages)):
                if zapped(h.proc, h.region.page_addr(h.page + i)):
                    h.detached.add((h.page + i) % h.region.pages)
    for proc in world.procs:
        for addr in [a for a in proc.anon_truth if zapped(proc, a)]:
            proc.anon_truth.pop(addr)
    return f"truncate {f.name} to {pages}p"


def op_evict(world: World, op: dict) -> str:
    f = world.files[op["file"] % len(world.files)]
    return f"evict {world.m.evict(f)}"


@_on_page
def op_migrate(world: World, op: dict, proc: Proc, region: Region, page: int,
               addr: int) -> str:
    from pygup.kernel.migrate import migrate_folio
    pte = proc.p.mm.pte(addr)
    if not pte.level or pte.special:
        return "not mapped"
    with world.m.kernel.op() as cpu:
        ok = migrate_folio(world.m.kernel, pte.pfn, cpu)
    return f"migrate {addr:#x} -> {ok}"


def _check_remote_read(world: World, proc: Proc, region: Region, page: int, got: int,
                       what: str) -> None:
    want = world.expected_read(proc, region, page)
    if got >= 0 and want is not None and got != want:
        raise Violation("cow-isolation", f"{what} {region.page_addr(page):#x}: {got:#x}, "
                        f"expected {want:#x}")


@_on_page
def op_caller(world: World, op: dict, proc: Proc, region: Region, page: int,
              addr: int) -> str:
    p = proc.p
    n = _span(region, page, op["n"])
    name = op["name"]
    value = op["value"]
    if name in ("io_uring", "rdma", "vfio"):
        if name == "io_uring" and p.held.get("io_uring"):
            return "io_uring: already registered"
        before = len(p.held.get(name, []))
        if name == "io_uring":
            ret = callers.io_uring_register_buffers(p, addr, n * PAGE)
        elif name == "rdma":
            ret = callers.rdma_umem_get(p, addr, n * PAGE, op["writable"])
        else:
            ret = callers.vfio_pin(p, addr, n * PAGE, op["writable"])
        for pages in p.held.get(name, [])[before:]:
            world.check_no_secretmem(pages)
            world.check_longterm_pinnable(pages)      # all three pin FOLL_LONGTERM
            if name == "io_uring" or op["writable"]:
                world.check_policy_pin(pages, FOLL.LONGTERM | FOLL.WRITE)
    elif name in _REMOTE:
        # access_remote_vm() / process_vm_rw(): one page through
        # get_user_pages_remote() / pin_user_pages_remote(); where the
        # harness knows that page can be had, a failure is an over-refusal
        write = name.endswith("write") or name.endswith("writev")
        certain = world.pin_must_succeed(proc, region, page, 1, int(FOLL.WRITE) if write else 0)
        ret = _REMOTE[name](p, addr, value) if write else _REMOTE[name](p, addr)
        if certain and (ret != 8 if write else ret < 0):
            raise Violation("over-refusal", f"{name}({addr:#x}) -> {ret}: {certain}: the "
                            "page must be reached")
        if write and ret == 8:
            world.record_write(proc, region, page, value)
        elif not write:
            _check_remote_read(world, proc, region, page, ret, name)
    elif name == "dio_read":
        ret, written = callers.o_direct_read_pages(p, addr, n * PAGE, value)
        for i in range(written):             # also on -EFAULT: the bios before it ran
            world.record_write(proc, region, page + i, value)
    elif name == "dio_write":
        ret = callers.o_direct_write(p, addr, n * PAGE)
    elif name == "vmsplice":
        before = len(p.held.get("pipe", []))
        ret = callers.vmsplice(p, addr, n * PAGE)
        for pages in p.held.get("pipe", [])[before:]:
            world.check_no_secretmem(pages)
    else:
        raise ValueError(f"unknown caller {name!r}")
    return f"{name} {addr:#x} -> {ret}"


_REMOTE = {"proc_mem_write": callers.proc_mem_write, "proc_mem_read": callers.proc_mem_read,
           "process_vm_writev": callers.process_vm_writev,
           "process_vm_readv": callers.process_vm_readv}


def op_caller_release(world: World, op: dict) -> str:
    if not world.procs:
        return "no process"
    p = world.proc(op["proc"]).p
    name = op["name"]
    if name == "io_uring":
        return f"io_uring unregister -> {callers.io_uring_unregister_buffers(p)}"
    if name == "rdma":
        return f"rdma release {callers.rdma_umem_release(p)}"
    if name == "vfio":
        return f"vfio unpin {callers.vfio_unpin(p)}"
    callers.pipe_read(p)
    return "pipe read"


def _forget(world: World, proc: Proc, region: Region, pages: Collection[int]) -> None:
    """The kernel dropped these pages from the process (zap): private pages
    refault from the file or as zeroes; a pin on one lives on, detached."""
    for i in pages:
        proc.anon_truth.pop(region.page_addr(i), None)
    for h in world.held:
        if h.proc is proc and h.region is region:
            h.detached.update(h.page + k for k in range(len(h.pages)) if h.page + k in pages)


@_on_page
def op_madvise(world: World, op: dict, proc: Proc, region: Region, page: int,
               addr: int) -> str:
    n = _span(region, page, op["n"])
    advice = MADV[op["advice"]]
    if region.huge and advice in (MADV.DONTNEED, MADV.DONTNEED_LOCKED):
        addr, n = region.addr, region.pages                 # whole huge pages only
        page = 0
    _, err = _quiet(proc.p.madvise, addr, n * PAGE, advice)
    if err is None and advice in (MADV.DONTNEED, MADV.DONTNEED_LOCKED) and not region.shared:
        _forget(world, proc, region, range(page, page + n))
    elif advice in (MADV.DONTNEED, MADV.DONTNEED_LOCKED) and not region.shared:
        # an error (a VM_LOCKED VMA further on) stops the walk after the
        # VMAs before it were zapped: those pages are unmapped now (a
        # written private page is never unmapped otherwise: no swap)
        _forget(world, proc, region, [i for i in range(page, page + n)
                                      if not proc.p.mm.pte(region.page_addr(i)).level])
    elif err is None and advice in (MADV.DONTNEED, MADV.DONTNEED_LOCKED):
        _forget(world, proc, region, range(0))            # shared pages stay in the file
    world.note_cows()                                      # POPULATE_WRITE breaks COW
    return f"madvise {advice.name} {addr:#x} x{n} -> {err or 0}"


@_on_page
def op_mlock(world: World, op: dict, proc: Proc, region: Region, page: int,
             addr: int) -> str:
    n = _span(region, page, op["n"])
    _, err = _quiet(proc.p.mlock, addr, n * PAGE)
    world.note_cows()                                      # populate breaks COW
    return f"mlock {addr:#x} x{n} -> {err or 0}"


@_on_page
def op_munlock(world: World, op: dict, proc: Proc, region: Region, page: int,
               addr: int) -> str:
    n = _span(region, page, op["n"])
    _, err = _quiet(proc.p.munlock, addr, n * PAGE)
    return f"munlock {addr:#x} x{n} -> {err or 0}"


@_on_page
def op_mremap(world: World, op: dict, proc: Proc, region: Region, page: int,
              addr: int) -> str:
    """Grow a whole region (moving it when there is no room), or move it as
    it is (MREMAP_FIXED to a fresh address): its pages — pinned ones too —
    must be found at the new address."""
    if region.unmapped or region.huge:
        return "mremap: region has holes"
    p = proc.p
    old, length = region.addr, region.pages * PAGE
    new_len = length + op["grow"] * PAGE
    if op["grow"]:
        new, err = _quiet(p.mremap, old, length, new_len, MREMAP.MAYMOVE)
    else:
        spot, err = _quiet(p.mmap, length, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
        new = None
        if err is None:
            new, err = _quiet(p.mremap, old, length, length, MREMAP.MAYMOVE | MREMAP.FIXED, spot)
            if err is not None:
                _quiet(p.munmap, spot, length)
    if err is not None:
        return f"mremap {old:#x} -> {errno.errorcode[err]}"
    moved = {old + i * PAGE: new + i * PAGE for i in range(region.pages)}
    truth = {moved.get(a, a): v for a, v in proc.anon_truth.items() if a in moved}
    for a in list(proc.anon_truth):
        if a in moved or new <= a < new + new_len:
            del proc.anon_truth[a]
    proc.anon_truth.update(truth)
    region.addr, region.pages = new, new_len // PAGE
    return f"mremap {old:#x} -> {new:#x} ({region.pages}p)"


def op_fallocate(world: World, op: dict) -> str:
    """Punch a hole in a world file: the pages read zero, private COW
    copies stay, a pinned folio leaves the cache with its pin."""
    i = op["file"] % len(world.files)
    f = world.files[i]
    first = op["page"] % max(f.inode.nr_pages(), 1)
    _, err = _quiet(f.fallocate, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, first * PAGE,
                    op["n"] * PAGE)
    if err is None:
        last = first + op["n"]
        for key in [k for k in world.shared_truth if k[0] == f.inode.ino and first <= k[1] < last]:
            del world.shared_truth[key]
    return f"fallocate punch f{i} {first}+{op['n']} -> {err or 0}"


def op_rcu_section(world: World, op: dict) -> str:
    """A reader on CPU 1 or 2: IRQs off ``depth`` times over (inside an
    rcu_read_lock() when ``rcu``), a GUP-fast-only of a page taken inside
    (what a driver's IRQs-off path may do).  Meanwhile CPU 0 frees an
    address_space by RCU (a tmpfs file unlinked with nothing mapping it):
    its callback must wait while the reader is in; the inner enables must
    leave IRQs off; after the outermost, synchronize_rcu() returns and
    rcu_barrier() runs it (kernel/rcu/tree.c: a grace period waits for
    every reader that began before it, and for nothing else)."""
    m = world.m
    core = m._core
    cpu = 1 + op["cpu"] % (READER_CPU - 1)
    core.rcu_barrier(0)                  # what was queued before the reader may run
    base = core.stats()
    pages = None
    fs = world.fss.get("tmpfs") or m.mount("tmpfs")
    name = f"rcu{world.steps}"
    held = {"irq": 0, "rcu": False}
    with m.cpu(cpu):
        try:
            if op["rcu"]:
                core.rcu_read_lock(cpu)
                held["rcu"] = True
            for _ in range(op["depth"]):
                core.irq_disable(cpu)
                held["irq"] += 1
            t = _target(world, op)
            if t is not None:
                proc, region, page, addr = t
                _, pages = proc.p.mm.get_user_pages_fast_only(addr, 1, 0)
            with m.cpu(0):
                fs.create(name, PAGE).close()
                fs.unlink(name)                  # iput(): call_rcu() of its address_space
                core.rcu_poll()
            inside = core.stats()
            early = inside["rcu_callbacks_run"] - base["rcu_callbacks_run"]
            if inside["as_pending"] != base["as_pending"] + 1:
                # GUP-fast may read folio->mapping with IRQs off only because
                # the address_space outlives every such section
                raise Violation("rcu-grace-period", f"the address_space of a file unlinked "
                                f"while CPU {cpu} was in an IRQs-off section did not wait for "
                                f"it ({inside['as_pending'] - base['as_pending']} records "
                                "pending)")
            if early:
                raise Violation("rcu-grace-period", f"{early} RCU callbacks queued while CPU "
                                f"{cpu} was in an IRQs-off section ran before it left")
            while held["irq"]:
                core.irq_enable(cpu)
                held["irq"] -= 1
                still = bool(core.irqs_disabled(cpu))
                if still != (held["irq"] > 0):
                    raise Violation("irq-nesting", f"CPU {cpu}: after an enable with "
                                    f"{held['irq']} disables left, irqs_disabled() says {still}")
            if held["rcu"]:
                core.rcu_read_unlock(cpu)
                held["rcu"] = False
        finally:
            # a violation leaves the section as a kernel oops would not: the
            # harness ends it, so the world stays usable for the report
            for _ in range(held["irq"]):
                core.irq_enable(cpu)
            if held["rcu"]:
                core.rcu_read_unlock(cpu)
    if pages is not None and len(pages):
        proc.p.mm.put_page(pages)
    # the batch closed while the reader was in ends with it: the next poll
    # runs its callback (a grace period ends once every CPU that was in a
    # reader at its start has left it)
    core.rcu_poll()
    if core.stats()["as_pending"] != base["as_pending"]:
        raise Violation("rcu-grace-period", f"the reader on CPU {cpu} left, but a poll after "
                        "it did not end the grace period it held up")
    core.synchronize_rcu(0)
    core.rcu_barrier(0)
    st = core.stats()
    if st["as_pending"] != base["as_pending"]:
        raise Violation("pool-leak", f"after the reader left, synchronize_rcu() and "
                        f"rcu_barrier(): {st['as_pending']} address_space records wait for RCU "
                        f"({base['as_pending']} before)")
    return f"rcu section cpu {cpu} depth {op['depth']}{' +rcu' if op['rcu'] else ''}"


def op_orphan_section(world: World, op: dict) -> str:
    """A thread that caches a translation on the reader CPU, then ends with
    that CPU's IRQs off: every wait for the CPU -- a grace period, a TLB
    shootdown's IPI -- would last for ever.  A grace period passes it (its
    thread reads nothing any more); the shootdown of that page ends the
    section (csrc/arch/cpu.c reaps it, or Python's repair, with a warning,
    gets there first): afterwards the CPU's IRQs are on and its TLB holds
    nothing of the page."""
    import threading
    import warnings
    if not world.procs:
        return "no process"
    core = world.m._core
    p = world.procs[0].p
    addr, err = _quiet(p.mmap, PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    if err:
        return f"orphan section: mmap -> {err}"

    def die_inside() -> None:
        with world.m.cpu(READER_CPU):
            p.write(addr, 1)                     # the reader CPU caches it
        core.irq_disable(READER_CPU)             # and its thread ends inside
    t = threading.Thread(target=die_inside)
    t.start()
    t.join()
    reaped = core.stats()["orphans_reaped"]
    if op["wait"] == "synchronize_rcu":
        core.synchronize_rcu(0)
    elif op["wait"] == "rcu_barrier":
        core.rcu_barrier(0)
    else:
        # the core's own shootdown, before any model op repairs the CPU:
        # the IPI queued for it must be run by the waiter (the reap)
        st = core.stats()
        core.flush_tlb_range(0, p.mm.id, addr, addr + PAGE)
        after = core.stats()
        if after["tlb_flushed_entries"] <= st["tlb_flushed_entries"] or \
                after["tlb_shootdowns"] != st["tlb_shootdowns"] + 1:
            raise Violation("no-stale-tlb", f"the shootdown of {addr:#x}, cached on CPU "
                            f"{READER_CPU}: {after['tlb_shootdowns'] - st['tlb_shootdowns']} "
                            "shootdowns and "
                            f"{after['tlb_flushed_entries'] - st['tlb_flushed_entries']} "
                            "entries flushed counted (1 and at least 1)")
        if core.stats()["orphans_reaped"] != reaped + 1:
            raise Violation("orphan-section", f"a shootdown to CPU {READER_CPU}, whose thread "
                            "ended with IRQs off, returned without reaping its section")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # Python's repair says so
        p.munmap(addr, PAGE)                     # flush_tlb_mm_range() to the reader CPU
    if core.irqs_disabled(READER_CPU) or core.tlb_probe(READER_CPU, p.mm.id, addr):
        raise Violation("orphan-section", f"a thread ended with IRQs off on CPU {READER_CPU}; "
                        f"after {op['wait']} and the shootdown its IRQs are "
                        f"{'off' if core.irqs_disabled(READER_CPU) else 'on'} and its TLB "
                        f"{'still maps' if core.tlb_probe(READER_CPU, p.mm.id, addr) else 'lost'}"
                        f" {addr:#x}")
    return f"orphan section on CPU {READER_CPU} ended ({op['wait']}, then the shootdown)"


# edge cases of a GUP call whose answer the harness knows on every kernel
# preset (is_valid_gup_args() since 6.3, is_valid_gup_flags() and the entry
# WARN_ON_ONCEs before; check_vma_flags / find_vma for the addresses)
EDGE_CASES = ["null", "kernel", "top", "nr0", "pin_get", "get_pin", "get_longterm"]
EDGE_APIS = ["get_user_pages", "get_user_pages_fast", "pin_user_pages", "pin_user_pages_fast",
             "get_user_pages_nopages"]     # get_user_pages(pages=NULL): fault in only


def op_gup_edge(world: World, op: dict) -> str:
    """One call at an edge, with the kernel's exact answer: address 0 and
    the last page below TASK_SIZE (nothing maps them here) -EFAULT, a kernel
    address -EFAULT, nr_pages 0 answers 0, FOLL_GET into
    pin_user_pages_fast() and FOLL_PIN or FOLL_LONGTERM into a get API
    -EINVAL."""
    from pygup.flags import TASK_SIZE
    if not world.procs:
        return "no process"
    proc = world.proc(op["proc"])
    mm = proc.p.mm
    case, api = op["case"], op["api"]
    pin = api.startswith("pin")
    region = world.region(proc, op["region"])
    addr = region.page_addr(op["page"] % region.pages) if region else 1 << 30
    n, flags, want = 1, 0, -errno.EFAULT
    if case == "null":
        addr = 0
    elif case == "kernel":
        addr = 0xFFFF_8880_0000_0000
    elif case == "top":
        addr = TASK_SIZE - PAGE
    elif case == "nr0":
        n, want = 0, 0
    elif case == "pin_get":
        # pin_user_pages() answers this 0 since 6.3 (-EINVAL before): only
        # the fast variant's answer is the same on every preset
        if api != "pin_user_pages_fast":
            return "gup_edge: not pin_user_pages_fast"
        flags, want = int(FOLL.GET), -errno.EINVAL
    elif case == "get_pin":
        if pin:
            return "gup_edge: not a get API"
        flags, want = int(FOLL.PIN), -errno.EINVAL
    else:
        if pin:
            return "gup_edge: not a get API"
        flags, want = int(FOLL.LONGTERM), -errno.EINVAL
    if case in ("null", "top") and any(
            r.addr <= addr < r.addr + r.pages * PAGE for p in world.procs for r in p.regions):
        return "gup_edge: the harness mapped it"
    if api == "get_user_pages_nopages":
        ret, pages = mm.get_user_pages(addr, n, flags, pages=False)
    else:
        ret, pages = getattr(mm, api)(addr, n, flags)
    if ret >= 0:
        # an empty answer is released too: unpin_user_pages(pages, 0) and a
        # put of nothing do nothing (and must not fail)
        (mm.unpin_user_pages if pages.pinned else mm.put_page)(pages)
    if ret != want:
        raise Violation("errno", f"{api}({addr:#x}, {n}, {flags:#x}) -> {ret}, the kernel "
                        f"answers {want} ({case})")
    return f"{api} {case} -> {ret}"


RACES = ["fork", "munmap_reuse", "truncate", "writeback", "collapse", "split"]


def op_race(world: World, op: dict) -> str:
    """Two operations on two CPUs under the deterministic scheduler (seeded:
    the same op replays the same interleaving), on a fresh two-CPU machine
    with the world's policy and switches: GUP-fast (CPU 0) against fork,
    munmap with the frame reused, truncate, or writeback (CPU 1).  The checks
    are the world's oracles, applied to what the race left behind."""
    from pygup.flags import FOLL
    from pygup.machine import Machine
    kind = op["kind"]
    m = Machine(policy=world.policy, memory="64MiB", movable="0MiB", cpus=2,
                mutants=world.m.mutants, tlb_flush=op.get("tlb_flush", "ipi"),
                thp="never" if kind == "collapse" else "always")
    p = m.spawn()
    flags = FOLL.WRITE | (FOLL.LONGTERM if op.get("longterm") else 0)
    if kind in ("collapse", "split"):
        # collapse: base pages, then THP on; split: a THP made PTE-mapped
        # (mprotect round trip), GUP-fast on its page 5, munmap of its last
        a, _ = _mmap_thp(p, PROT.READ | PROT.WRITE)
        p.write(a + 5 * PAGE, 0x5555)
        if kind == "collapse":
            m.thp = "always"
        else:
            p.mprotect(a, PAGE, PROT.READ)
            p.mprotect(a, PAGE, PROT.READ | PROT.WRITE)
        a += 5 * PAGE
    elif kind in ("truncate", "writeback"):
        fs = m.mount("tmpfs" if op.get("shmem") else "ext4")
        f = fs.create("f", PAGE)
        a = p.mmap(PAGE, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    else:
        a = p.mmap(PAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    pinner = (lambda m: p.mm.pin_user_pages_fast(a, 1, int(flags)))
    if kind == "fork":
        other = lambda m: p.fork()                                  # noqa: E731
    elif kind == "munmap_reuse":
        def other(m):
            p.munmap(a, PAGE)
            new = m.alloc_folio(0, movable=False)       # a kernel (slab) page now
            m._core.flags_update(new, C.F_SLAB, 0)
            return new
    elif kind == "truncate":
        other = lambda m: f.truncate(0)                             # noqa: E731
    elif kind == "collapse":
        other = lambda m: m.collapse(p, a)                          # noqa: E731
    elif kind == "split":
        other = lambda m: p.munmap(a + (C.PMD_NR - 6) * PAGE, PAGE)  # noqa: E731
    else:
        other = lambda m: f.writeback()                             # noqa: E731
    from pygup.errors import InvariantError
    run = m.run_concurrently([pinner, other], seed=op["seed"], timeout=20,
                             points=set(op.get("points") or _FAST_POINTS | _RACE_POINTS[kind]))
    if world.races is not None:
        world.races.append((op, run))
    for i in (0, 1):
        err = run.raised(i)
        if isinstance(err, InvariantError):
            from pygup.tools.fuzz.world import core_violation
            raise core_violation(err)
    ret, pages = run.results[0]
    if ret == 1:
        pfn = pages[0]
        pte = p.mm.pte(a)
        fi = m._core.frame_info(pfn)
        if kind == "fork":
            child = run.results[1]
            if child.mm.pte(a).level and child.mm.pte(a).pfn == pfn:
                raise Violation("pinned-anon-stays", f"race fork: pinned frame {pfn:#x} is "
                                "mapped in the child")
        if kind in ("collapse", "split") and (pte.pfn + ((a >> C.PAGE_SHIFT) & (C.PMD_NR - 1))
                                              if pte.huge else pte.pfn) != pfn:
            raise Violation("pinned-page-mapped", f"race {kind}: pinned frame {pfn:#x} is "
                            f"not the page mapped at {a:#x}")
        if kind == "split" and not (fi.pincount if fi.order else
                                    fi.refcount >= C.GUP_PIN_COUNTING_BIAS):
            raise Violation("refcount-balance", f"race split: pinned frame {pfn:#x} holds no "
                            "pin: the reference went to another folio")
        if kind == "munmap_reuse" and pfn == run.results[1]:
            raise Violation("pinned-page-mapped", f"race munmap: GUP-fast pinned frame "
                            f"{pfn:#x} after it was unmapped and reused")
        if fi.mapping and not fi.mapping & 3 and flags & FOLL.LONGTERM:
            kind_bits = m._core.as_kind(fi.mapping >> 2)
            if world.policy.writable_file_mapping_check and kind_bits >= 0 and \
                    kind_bits & C.AS_DIRTY_TRACKED:
                raise Violation("policy", f"race {kind}: long-term writable pin of frame "
                                f"{pfn:#x} of a dirty-tracked file")
        p.mm.unpin_user_pages(pages)
    if kind == "munmap_reuse":
        m._core.flags_update(run.results[1], 0, C.F_SLAB)
        m._core.folio_put(run.results[1])
    m.check()
    return f"race {kind} seed {op['seed']} -> {ret}"


# the scheduling points of each race: GUP-fast's windows and the other side's
_FAST_POINTS = {"fast_wp_seq_read", "fast_pte_read", "fast_grabbed", "fast_before_recheck",
                "fast_mapping_read", "fast_wp_seq_recheck"}
_RACE_POINTS = {
    "fork": {"fork_wp_seq_begin", "fork_pin_check", "copy_before_wrprotect", "fork_wp_seq_end"},
    "munmap_reuse": {"zap_cleared", "zap_flushed", "free_pgtables_unlinked"},
    "truncate": {"zap_cleared", "zap_flushed", "folio_mapping_set",
                 "as_release_before_call_rcu"},
    "writeback": {"mkclean_cleared", "mkclean_flushed"},
    "collapse": {"collapse_pmd_cleared", "collapse_isolated", "free_pgtables_unlinked"},
    "split": {"split_pmd_cleared", "split_folio_frozen", "zap_cleared", "zap_flushed"},
}


def op_explore(world: World, op: dict) -> str:
    """A built-in race (pygup/tools/explore.py) with the world's policy and
    switches, on machines of its own.  With ``schedule`` it replays that one
    interleaving exactly; with ``sample`` (a seed) it runs ``runs``
    schedules drawn at random (explore.sample: no preemption bound);
    otherwise it explores every schedule to ``bound`` preemptions.  A
    failing schedule is written into the op before raising, so the
    reproducer replays the very interleaving.  Each schedule run counts its
    CPUs' operations in ``world.race_ops`` (the set-up's are not counted)."""
    from pygup.tools import explore
    mutants = sorted(getattr(x, "value", x) for x in world.m.mutants)
    policy = world.policy.name
    if op.get("schedule"):
        from pygup.kernel.sched import ScheduleDiverged
        try:
            out = explore.replay(op["race"], op["schedule"], policy, mutants,
                                 op.get("windows", "all"))
        except ScheduleDiverged as e:
            # the world takes another path now (a fix removed the window's
            # outcome): that interleaving no longer exists
            return f"race {op['race']}: the schedule no longer applies ({e})"
        world.race_ops += out["ops_run"]
        if out["failed"]:
            raise Violation(f"race:{op['race']}", out["failed"])
        return f"race {op['race']}: the schedule replays clean"
    if "sample" in op:
        res = explore.sample(op["race"], op["runs"], op["sample"], policy, mutants)
    else:
        res = explore.explore(op["race"], op.get("bound", 2), policy, mutants,
                              stop_at_first=True)
    world.race_ops += res.ops_run
    if res.failing is not None:
        if res.failing.schedule:
            op["schedule"] = res.failing.schedule
        raise Violation(f"race:{op['race']}", res.failing.detail)
    if res.missed:
        raise Violation("race-window-unreached", f"race {op['race']}: {res.explored} schedules "
                        f"and the window(s) {', '.join(res.missed)} never fired: the race "
                        "lost a partner's step")
    how = f"{res.explored} random schedules" if "sample" in op else f"{res.explored} schedules"
    return f"race {op['race']}: {how}, 0 failing"


SAMPLE_RUNS = 16      # a sampled race seed's schedules (about one exhaustive search's tenth)


def explore_op(index: int, sample: Optional[int] = None) -> dict:
    """Race number ``index`` (mod the built-in races) explored to bound 2,
    or, with ``sample`` (a seed), SAMPLE_RUNS random schedules of it."""
    from pygup.tools.explore import RACES
    names = list(RACES)
    op: dict = {"op": "explore", "race": names[index % len(names)]}
    if sample is None:
        op["bound"] = 2
    else:
        op.update(sample=sample, runs=SAMPLE_RUNS)
    return op


STRESS_SCENARIOS = ["unmap", "collapse", "truncate", "writeback", "fork"]


def op_stress(world: World, op: dict) -> str:
    """A native race campaign (csrc/stress.c) with the world's policy and
    protection switches, on a machine of its own: GUP-fast on one CPU against
    unmap / collapse / truncate / writeback / fork on another, at C speed.
    Replaying it reruns the same campaign (same seed), but real threads do
    not promise the same interleaving."""
    from pygup.tools.stress import run_stress
    r = run_stress({"mutants": sorted(world.m.mutants), "policy": world.policy,
                    "table_free": op.get("table_free", "rcu")},
                   scenario=op["scenario"], seconds=op["seconds"], seed=op["seed"],
                   threads=2 if op["scenario"] != "writeback" else 3,
                   window_spins=op.get("window_spins", 0), stop_on_failure=1)
    world.stress_iterations += sum(r.iterations.values())
    if not r.clean:
        check = sorted(r.failures)[0] if r.failures else "violation"
        detail = (r.messages or r.violations or [str(r.failures)])[0]
        raise Violation(f"stress:{check}", f"{op['scenario']}: {detail}")
    return f"stress {op['scenario']} clean ({sum(r.iterations.values())} iterations)"


def stress_op(seed: int, seconds: float = 0.1, index: Optional[int] = None) -> dict:
    """Scenario number ``index`` (default: ``seed``), mod the scenarios."""
    rng = random.Random(seed)
    index = seed if index is None else index
    return {"op": "stress", "scenario": STRESS_SCENARIOS[index % len(STRESS_SCENARIOS)],
            "seed": seed, "seconds": seconds, "window_spins": rng.choice([0, 100, 1000]),
            "table_free": rng.choice(["rcu", "ipi"])}


_OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}
