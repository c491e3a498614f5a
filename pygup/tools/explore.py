"""Race hunting without luck: systematic exploration of interleavings.

``explore(race, bound=K)`` runs a built-in race (two or three operations on
separate emulated CPUs, each stopping at the race windows of the C core's
registry) under *every* schedule with at most K preemptions, and reports
how many it ran, how many it pruned and why, and the shortest failing one,
replayable exactly.  ``pygup explore`` is the command.

The search (in the spirit of CHESS's iterative context bounding and loom)
-------------------------------------------------------------------------
*Stateless DFS.*  Every schedule re-runs the race from a fresh set-up (a
race's ``setup`` builds a new machine each time).  A schedule is a prefix of
picks followed by the scheduler's non-preemptive tail ("the last CPU runs
on, then the lowest runnable one": csrc/sched.c).  At every pick the C
trace records which CPUs could have been picked (waiting and not spinning:
a spinner is never an alternative, it can only re-check), so a run that
followed prefix P branches at each pick i >= len(P) to every other
runnable CPU c: the child prefix is the run's first i picks plus c.
Branching only beyond the prefix makes the search a tree: no schedule is
run twice.

*Preemption bound.*  A pick preempts when it switches away from a CPU that
was still runnable there (switching because the last CPU finished or waits
is free; the first pick is free).  A child whose prefix holds more than K
preemptions is never run (``pruned_bound``); the tail adds none.

*Partial-order reduction: sleep sets over a measured dependency relation.*
When the run's own pick p at step i has been explored, p is put to sleep
for the siblings pushed there; a sleeping CPU stays asleep across a step q
while p and q are independent, and a branch to a sleeping CPU is not taken
(``pruned_por``); once the run's own pick is asleep, the rest of the run
is a reordering of one already explored and nothing beyond it branches.
Independence is *measured*: the C core hashes its state at every pick
(frames in use, live page tables, pending frees, CPUs' IRQ / RCU state and
TLBs, write_protect_seq; plus every take and drop of the Python machine
lock, under which all model changes happen), and a step whose digest
before and after are equal wrote nothing.  Two steps that both write
nothing commute (each reads the same state either way), so they are
independent.  That is sound for what the digest sees; what it cannot see
is a step that changes only Python state outside the machine lock, or only
the C locals of the parked CPU itself (those are the CPU's own, read by no
other step, so the second case is harmless).  Known limit: sleep sets are
exact for the unbounded search; combined with a preemption bound, the
equivalent reordering of a pruned schedule may need one preemption more
than the bound allows (Musuvathi & Qadeer, 2007).  ``tests/model/
test_explore.py`` compares the pruned and the unpruned search on the
built-in races; ``por=False`` turns the reduction off.

*State hashing* (a heuristic, stated as one).  The key of a pick is its
state digest (which includes where every CPU stands and in which state),
the picks each CPU has taken so far, and the last CPU picked; a pick whose
key was met before with no more preemptions used and a sleep set no larger
has its subtree explored already: nothing beyond it branches
(``pruned_state``).  The digest covers the C core and the machine lock's
traffic, not the Python model's contents nor the parked CPUs' C locals
(the PTE a GUP-fast walker read and holds): two runs that reach equal
digests at equal positions are assumed to be in equal states.  The test
suite checks that the hashed search finds what the plain one finds;
``state_hash=False`` turns it off.

A schedule *fails* when the race's check (the invariant the bug breaks)
fails, when an operation raises pygup.InvariantError (a use-after-free the
core caught, a write-notify bypass...) or anything the race does not
expect, when the core recorded a violation, or when the run deadlocks
(SchedDeadlock) or stalls (SchedTimeout): a deadlock is a finding too.

The result names the shortest failing schedule (fewest preemptions, then
fewest picks) as (cpu, window) pairs: ``replay(race, schedule)`` re-runs it
with those pairs, so a world that no longer takes the same path raises
ScheduleDiverged instead of testing something else.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Iterable, Optional, Sequence

from pygup._native import C, Core
from pygup.config.mutants import MUTANTS, resolve_mutants
from pygup.config.policy import POLICIES
from pygup.errors import InvariantError
from pygup.flags import FOLL, MADV, MAP, MREMAP, PAGE_SIZE, PROT, GupError
from pygup.kernel.sched import (Interleaving, SchedDeadlock, SchedError, ScheduleDiverged,
                                SchedTimeout, yield_point)
from pygup.machine import Machine

__all__ = ["Race", "RACES", "ExploreResult", "Failing", "explore", "sample", "replay",
           "race_names", "window_names", "DEFAULT_BOUND"]

DEFAULT_BOUND = 2
RW = PROT.READ | PROT.WRITE
P = PAGE_SIZE
HPAGE = P << C.PMD_ORDER
LT_WRITE = FOLL.WRITE | FOLL.LONGTERM
RUN_TIMEOUT_S = 30.0      # one schedule: a stall bound, not a budget


def window_names() -> frozenset[str]:
    """The registered race windows (csrc/kernel/race.h, ``Core.race_windows``)."""
    return frozenset(name for name, *_ in Core.race_windows())


# ---------------------------------------------------------------------------
# the built-in races

@dataclasses.dataclass
class World:
    """What a race's set-up returns: a fresh machine, one op per CPU, the
    check (None or what broke), the address whose leaf and folio the
    step-by-step story shows, and the exception types an op may raise
    legitimately."""
    machine: Machine
    ops: list
    check: Callable[[Interleaving], Optional[str]]
    watch: Optional[tuple[int, int]] = None
    expected: tuple = ()


@dataclasses.dataclass(frozen=True)
class Race:
    name: str
    doc: str                   # the operations and the set-up, one line
    setup: Callable[[str, frozenset], World]
    points: frozenset          # the windows that are scheduling points
    switches: tuple            # what this race exposes: a switch, or "a+b" planted together

    def __post_init__(self) -> None:
        unknown = set(self.points) - window_names()
        if unknown:
            raise ValueError(f"race {self.name}: unknown window(s) {sorted(unknown)}")


def _machine(policy: str, mutants, cpus: int = 2, **kw) -> Machine:
    # no ZONE_MOVABLE: long-term pins stay on the fast path.  8 MiB (four
    # PMD blocks) holds every race's world, a 2 MiB hugetlb or THP folio
    # and a migration target included; each schedule builds a fresh
    # machine, and at 64 MiB first-touching its 1 MiB of frames was a
    # fifth of a schedule's cost (the same schedules are explored)
    return Machine(policy=policy, memory="8MiB", movable="0MiB", cpus=cpus,
                   mutants=mutants, **kw)


def _leaf_pfn(pte: int, addr: int) -> Optional[int]:
    if not pte & (C.PTE_PRESENT | C.PTE_PROTNONE):
        return None
    pfn = (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
    if pte & C.PTE_HUGE:
        pfn += (addr // P) % (1 << C.PMD_ORDER)
    return pfn


def _kept_over_a_changed_entry(run: Interleaving, cpu: int, addr: int, pfn: int,
                               need_write: bool = False) -> Optional[str]:
    """GUP-fast's protocol with every unmapper (mm/gup.c, gup_pte_range:
    grab, then re-read the entry): a pin it keeps was still mapped, as it
    read it, at its re-check.  The watched leaf at the pick where ``cpu``
    resumed from fast_before_recheck is what that re-check read; the pick
    after it shows whether the step dropped the grab (then any pin came from
    the slow path it fell back to, which decides under the mmap lock)."""
    steps = list(zip(run.schedule, run.watched))
    for j in range(len(steps) - 1, -1, -1):
        (c, point), seen = steps[j]
        if c != cpu or point != "fast_before_recheck":
            continue
        ok = _leaf_pfn(seen["pte"], addr) == pfn and (not need_write or seen["pte"] & C.PTE_WRITE)
        if ok:
            return None
        if j + 1 < len(steps) and steps[j + 1][1]["refcount"] < seen["refcount"]:
            return None                   # backed off: the re-check did its job
        return (f"GUP-fast kept its grab of frame {seen['pfn']:#x} although the entry at its "
                f"re-check was {seen['pte']:#x} (cleared or changed after the read)"
                + (" -- the pin returned is on that frame" if seen["pfn"] == pfn else ""))
    return None


_FAST = frozenset({"fast_wp_seq_read", "fast_pte_read", "fast_grabbed", "fast_before_recheck",
                   "fast_rechecked", "fast_mapping_read", "fast_wp_seq_recheck"})
_ZAP = frozenset({"zap_cleared", "zap_flushed", "free_pgtables_unlinked"})


def _anon(policy, mutants, **kw):
    m = _machine(policy, mutants, **kw)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    return m, p, a


def _fast_pin(p, a, flags):
    return lambda m: p.mm.pin_user_pages_fast(a, 1, int(flags))


def _unpin_if(p, result) -> Optional[int]:
    ret, pages = result
    if ret == 1:
        pfn = int(pages[0])
        p.mm.unpin_user_pages(pages)
        return pfn
    return None


def _pin_kept_its_entry(p, a: int, need_write: bool = False):
    """The check of a race whose op 0 pins ``a`` with GUP-fast: the pin it
    returns obeys GUP-fast's re-check protocol (then it is released)."""
    def check(run):
        ret, pages = run.results[0]
        if ret != 1:
            return None
        bad = _kept_over_a_changed_entry(run, 0, a, int(pages[0]), need_write=need_write)
        p.mm.unpin_user_pages(pages)
        return bad
    return check


def _race_fast_munmap(policy, mutants):
    m, p, a = _anon(policy, mutants)
    return World(m, [_fast_pin(p, a, FOLL.WRITE), lambda m: p.munmap(a, P)],
                 _pin_kept_its_entry(p, a), (p.mm.id, a))


def _race_fast_munmap_huge(policy, mutants):
    m = _machine(policy, mutants)
    p = m.spawn()
    a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
    p.write(a, 0x2222)
    return World(m, [_fast_pin(p, a, FOLL.WRITE), lambda m: p.munmap(a, HPAGE)],
                 _pin_kept_its_entry(p, a), (p.mm.id, a))


def _race_table_free(mode):
    def setup(policy, mutants):
        m = _machine(policy, mutants, table_free=mode)
        p = m.spawn()
        f = m.mount("ext4").create("f", P)
        a = p.mmap(P, RW, MAP.SHARED, file=f)
        p.write(a, 5)
        f.truncate(0)          # the PTE table is empty: munmap's zap will not flush

        def check(run):
            ret, pages = run.results[0]
            if ret == 1:       # get_user_pages_fast: a reference, not a pin
                p.mm.put_page(pages)
            return None
        return World(m, [lambda m: p.mm.get_user_pages_fast(a, 1, 0), lambda m: p.munmap(a, P)],
                     check, (p.mm.id, a))
    return setup


def _race_fast_munmap_memfd(policy, mutants):
    m = _machine(policy, mutants, tlb_flush="broadcast")
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=m.memfd_create("buf", P))
    p.write(a, 3)

    def check(run):
        _unpin_if(p, run.results[0])
        return None
    return World(m, [_fast_pin(p, a, LT_WRITE), lambda m: p.munmap(a, P)], check, (p.mm.id, a))


def _race_fast_truncate(policy, mutants):
    m = _machine(policy, mutants, tlb_flush="broadcast")
    p = m.spawn()
    f = m.mount("ext4").create("f", P)
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    p.write(a, 3)

    def check(run):
        pfn = _unpin_if(p, run.results[0])
        if pfn is not None and m.kernel.policy.writable_file_mapping_check:
            # 6.5: never a long-term writable pin of an ext4 folio
            return f"long-term writable pin of ext4 frame {pfn:#x} (the 6.5 rule)"
        return None
    return World(m, [_fast_pin(p, a, LT_WRITE), lambda m: f.truncate(0)], check, (p.mm.id, a))


def _race_fast_munmap_reuse(policy, mutants):
    m, p, a = _anon(policy, mutants, tlb_flush="broadcast")

    def munmap_and_reuse(m):
        p.munmap(a, P)
        new = m.alloc_folio(0, movable=False)        # a kernel (slab) page now
        m._core.flags_update(new, C.F_SLAB, 0)
        return new

    def check(run):
        new = run.results[1]
        pfn = _unpin_if(p, run.results[0]) if not isinstance(run.results[0], BaseException) \
            else None
        if isinstance(new, int):
            m._core.flags_update(new, 0, C.F_SLAB)
            m._core.folio_put(new)
        if pfn is not None and pfn == new:
            return f"GUP-fast pinned frame {pfn:#x} after it was unmapped and reused as slab"
        return None
    return World(m, [_fast_pin(p, a, LT_WRITE), munmap_and_reuse], check, (p.mm.id, a))


def _race_fork(flags):
    def setup(policy, mutants):
        m, p, a = _anon(policy, mutants)

        def check(run):
            (ret, pages), child = run.results
            if ret != 1:
                return None
            pfn = int(pages[0])
            bad = None
            cpte = child.mm.pte(a)
            if cpte.level and cpte.pfn == pfn:
                bad = f"pinned frame {pfn:#x} is mapped in the child too (COW shared)"
            elif p.mm.pte(a).pfn != pfn:
                bad = f"pinned frame {pfn:#x} is no longer mapped in the pinner"
            p.mm.unpin_user_pages(pages)
            return bad
        return World(m, [_fast_pin(p, a, flags), lambda m: p.fork()], check, (p.mm.id, a))
    return setup


def _race_fast_mprotect(policy, mutants):
    m, p, a = _anon(policy, mutants)
    return World(m, [_fast_pin(p, a, FOLL.WRITE), lambda m: p.mprotect(a, P, PROT.READ)],
                 _pin_kept_its_entry(p, a, need_write=True), (p.mm.id, a))


def _race_fast_migrate(policy, mutants):
    from pygup.kernel.migrate import migrate_folio
    m, p, a = _anon(policy, mutants)
    old = p.mm.pte(a).pfn

    def migrate(m):
        with m.kernel.lock:
            return migrate_folio(m.kernel, old, m.current_cpu())

    def check(run):
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pfn = int(pages[0])
        bad = _kept_over_a_changed_entry(run, 0, a, pfn)
        if bad is None and p.mm.pte(a).pfn != pfn:
            bad = (f"pinned frame {pfn:#x} is no longer the one mapped at the address "
                   "(migrated under the pin)")
        p.mm.unpin_user_pages(pages)
        return bad
    return World(m, [_fast_pin(p, a, FOLL.WRITE), migrate], check, (p.mm.id, a))


def _race_remote_exit(policy, mutants):
    """A remote pinner (process_vm_*, /proc/pid/mem: pin_user_pages_remote
    under the mmap lock) against exit of the target.  Not GUP-fast: it only
    ever walks current->mm, whose mm_users its own task holds, so exit
    cannot tear that mm down under it (the model has no mm_users; a GUP-fast
    of another process's mm against its exit is no kernel race)."""
    m, p, a = _anon(policy, mutants)

    def check(run):
        if isinstance(run.results[0], GupError):
            return None                   # -ESRCH: the target had exited
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pfn = int(pages[0])
        fi = m._core.frame_info(pfn)
        if fi.refcount < C.GUP_PIN_COUNTING_BIAS:
            return f"pinned frame {pfn:#x} lost its pin at exit (refcount {fi.refcount})"
        p.mm.unpin_user_pages(pages)
        if m._core.frame_info(pfn).refcount != 0:
            return f"frame {pfn:#x} outlived its last pin after exit"
        return None
    return World(m, [lambda m: p.mm.pin_user_pages_remote(a, 1, int(FOLL.WRITE)),
                     lambda m: p.exit()], check, (p.mm.id, a), expected=(GupError,))


def _race_slow_munmap(policy, mutants):
    m, p, a = _anon(policy, mutants)

    def check(run):
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pfn = int(pages[0])
        fi = m._core.frame_info(pfn)
        bad = None
        if fi.refcount < C.GUP_PIN_COUNTING_BIAS:
            bad = f"slow-path pin of frame {pfn:#x} lost (refcount {fi.refcount})"
        p.mm.unpin_user_pages(pages)
        return bad
    return World(m, [lambda m: p.mm.pin_user_pages(a, 1, int(FOLL.WRITE)),
                     lambda m: p.munmap(a, P)], check, (p.mm.id, a))


def _race_writeback_write(policy, mutants):
    m = _machine(policy, mutants)
    p = m.spawn()
    f = m.mount("ext4").create("f", P)
    a = p.mmap(P, RW, MAP.SHARED, file=f)

    def writer(m):
        p.write(a, 1)
        yield_point(m, "between_writes")
        p.write(a, 2)

    def check(run):
        return None
    return World(m, [writer, lambda m: f.writeback()], check, (p.mm.id, a))


def _race_rcu_sync(policy, mutants):
    """synchronize_rcu() on one CPU against a reader on the other that holds
    IRQs off (GUP-fast's kind of read-side section) across a scheduling
    point: a grace period waits for every reader that was inside when it
    began (kernel/rcu/tree.c), and for no other."""
    m = _machine(policy, mutants)
    state = {"inside": False, "broke": None}

    def reader(m):
        cpu = m.current_cpu()
        m._core.irq_disable(cpu)
        state["inside"] = True
        yield_point(m, "irqs_off")
        state["inside"] = False
        m._core.irq_enable(cpu)

    def updater(m):
        began_inside = state["inside"]   # no scheduling point before the snapshot
        m._core.synchronize_rcu(m.current_cpu())
        if began_inside and state["inside"]:
            state["broke"] = ("synchronize_rcu() returned while a reader that was inside when "
                              "it began had not left")

    return World(m, [reader, updater], lambda run: state["broke"])


def _race_pin_writeback(policy, mutants):
    """The seed (BUGS #1) as a race: a long-term writable pin, a write
    through it, unpin dirty -- against writeback of the same folio."""
    m = _machine(policy, mutants)
    p = m.spawn()
    fs = m.mount("ext4")
    f = fs.create("f", P)
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    p.write(a, 0x1111)

    def device(m):
        ret, pages = p.mm.pin_user_pages_fast(a, 1, int(LT_WRITE))
        if ret != 1:
            return ret
        yield_point(m, "between_writes")
        pages.write(0, 0x2222)
        p.mm.unpin_user_pages_dirty_lock(pages, True)
        return ret

    def check(run):
        if fs.warnings:
            return f"ext4: {fs.warnings[0].what}"
        return None
    return World(m, [device, lambda m: f.writeback()], check, (p.mm.id, a))


def _race_fast_dontneed(policy, mutants):
    """MADV_DONTNEED holds mmap_lock for read only: GUP-fast and the zap
    run side by side (IPI flush, as fast-munmap)."""
    m, p, a = _anon(policy, mutants)
    old = p.mm.pte(a).pfn

    def check(run):
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pfn = int(pages[0])
        bad = _kept_over_a_changed_entry(run, 0, a, pfn)
        # the pin is on the page mapped when it was taken: the old one, or
        # (after the zap, through the slow path's fault) the new one mapped now
        if bad is None and pfn != old and p.mm.pte(a).pfn != pfn:
            bad = (f"pinned frame {pfn:#x} is neither the page zapped ({old:#x}) nor the "
                   "one mapped now")
        p.mm.unpin_user_pages(pages)
        return bad
    return World(m, [_fast_pin(p, a, FOLL.WRITE), lambda m: p.madvise(a, P, MADV.DONTNEED)],
                 check, (p.mm.id, a))


def _race_fast_mremap(policy, mutants):
    """mremap moves the page's PTE (pg_move_range: clear, flush, set at the
    new address); a pin taken at the old address must be of the page that
    is then mapped at the new one, or the pin must fail (nothing is mapped
    at the old address after the move)."""
    m, p, a = _anon(policy, mutants)
    dest = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)     # a place to move to
    p.munmap(dest, P)

    def move(m):
        return p.mremap(a, P, P, MREMAP.MAYMOVE | MREMAP.FIXED, new_addr=dest)

    def check(run):
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pages.write(0, 0xD11A)                    # the device's write through the pin
        seen = p.read(dest)
        p.mm.unpin_user_pages(pages)
        if seen != 0xD11A:
            return (f"a write through the pin on frame {int(pages[0]):#x} is not seen at the "
                    f"page's new address {dest:#x} (read {seen:#x})")
        return None
    return World(m, [_fast_pin(p, a, FOLL.WRITE), move], check, (p.mm.id, a),
                 expected=(GupError,))


def _race_forcewrite_dontneed(policy, mutants):
    """The Dirty COW pair (CVE-2016-5195, and its 2022 sequel's shape): a
    /proc/pid/mem write (FOLL_FORCE | FOLL_WRITE) into a read-only private
    file mapping whose page-cache page is mapped, against MADV_DONTNEED of
    the page (mmap_lock read-held by both).  The forced write must go to a
    private anonymous copy, whatever the order: the file never changes."""
    from pygup.callers import proc_mem_write
    m = _machine(policy, mutants)
    fs = m.mount("ext4")
    f = fs.create("passwd", P)
    f.pwrite(0, 0x600D)
    p = m.spawn()
    a = p.mmap(P, PROT.READ, MAP.PRIVATE, file=fs.open("passwd", writable=False))
    p.read(a)                                     # the page-cache page is mapped, R/O

    def check(run):
        got = f.pread(0)
        if got != 0x600D:
            return f"the read-only file changed: page 0 holds {got:#x} (Dirty COW)"
        return None
    return World(m, [lambda m: proc_mem_write(p, a, 0xBAD),
                     lambda m: p.madvise(a, P, MADV.DONTNEED)], check, (p.mm.id, a))


_THP_AT = 0x40000000            # a 2 MiB-aligned address for the THP races


def _race_fast_collapse(policy, mutants):
    """Base pages in an aligned anon range; then khugepaged may collapse it
    (m.collapse) while GUP-fast pins its first page.  Broadcast flush, so the
    collapse's PMD flush does not wait for the walker: the IPI sync
    (tlb_remove_table_sync_one) and GUP-fast's PMD re-check are what protect
    it."""
    m = _machine(policy, mutants, thp="never", tlb_flush="broadcast")
    p = m.spawn()
    a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=_THP_AT)
    p.write(a, 0x7777)
    p.write(a + 7 * P, 0x8888)
    m.thp = "always"

    def check(run):
        # the damage, not the protocol: a grab kept over the cleared PMD is
        # benign when the collapse then sees it and puts the PMD back
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pages.write(0, 0xD11A)                   # the device's write must reach the mapping
        lost = None if p.read(a) == 0xD11A else \
            f"a write through the pin on frame {int(pages[0]):#x} is not seen at {a:#x}"
        p.mm.unpin_user_pages(pages)
        return lost
    return World(m, [_fast_pin(p, a, FOLL.WRITE), lambda m: m.collapse(p, a)], check,
                 (p.mm.id, a))


def _race_fast_split(policy, mutants):
    """A PTE-mapped anon THP (an mprotect round trip split its PMD); GUP-fast
    pins page 5 while a partial munmap of page 511 splits the folio
    (broadcast flush: the zap does not wait for the walker)."""
    m = _machine(policy, mutants, thp="always", tlb_flush="broadcast")
    p = m.spawn()
    a = p.mmap(HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=_THP_AT)
    p.write(a + 5 * P, 0x5555)
    p.mprotect(a, P, PROT.READ)
    p.mprotect(a, P, RW)
    b = a + 5 * P

    def check(run):
        ret, pages = run.results[0]
        if ret != 1:
            return None
        pfn = int(pages[0])
        if not m.folio(pfn).maybe_dma_pinned:      # the pin must be on the page's own folio
            return (f"GUP-fast returned frame {pfn:#x} but its pin is on frame "
                    f"{m.folio(pfn).head:#x}'s old folio (the THP split meanwhile)")
        p.mm.unpin_user_pages(pages)
        return None
    return World(m, [_fast_pin(p, b, FOLL.WRITE), lambda m: p.munmap(a + 511 * P, P)], check,
                 (p.mm.id, b), expected=(GupError,))


RACES: dict[str, Race] = {r.name: r for r in [
    Race("fast-munmap", "GUP-fast FOLL_WRITE pin vs munmap of an anon page (IPI flush)",
         _race_fast_munmap, _FAST | _ZAP, ("no_pte_recheck",)),
    Race("fast-munmap-hugetlb", "GUP-fast pin vs munmap of a 2 MiB hugetlb PMD leaf",
         _race_fast_munmap_huge, _FAST | _ZAP, ("no_pmd_recheck",)),
    Race("table-free-ipi", "GUP-fast walk vs munmap freeing the (empty) tables, IPI sync mode",
         _race_table_free("ipi"), frozenset({"walk_entry_read", "free_pgtables_unlinked",
                                             "free_pgtables_synced"}), ("table_free_no_sync",)),
    Race("table-free-rcu", "GUP-fast walk vs munmap freeing the (empty) tables, RCU mode",
         _race_table_free("rcu"), frozenset({"walk_entry_read", "free_pgtables_unlinked",
                                             "rcu_before_callback"}), ("table_free_no_sync",)),
    Race("fast-munmap-memfd", "GUP-fast long-term pin vs the last munmap of a memfd "
         "(broadcast flush: RCU alone keeps the address_space)",
         _race_fast_munmap_memfd, _FAST | _ZAP | {"as_release_before_call_rcu", "as_rcu_freed"},
         ("as_free_no_rcu",)),
    Race("fast-truncate", "GUP-fast long-term write pin vs truncate of an ext4 file "
         "(broadcast flush)", _race_fast_truncate,
         _FAST | {"zap_cleared", "zap_flushed", "folio_mapping_set"}, ("null_mapping_ok",)),
    Race("fast-munmap-reuse", "GUP-fast long-term pin vs munmap + the frame reused as slab "
         "(broadcast flush)", _race_fast_munmap_reuse, _FAST | {"zap_cleared", "zap_flushed"},
         ("whitelist_before_recheck",)),
    Race("fast-fork", "GUP-fast FOLL_WRITE pin vs fork of the pinner",
         _race_fork(FOLL.WRITE), _FAST | {"fork_wp_seq_begin", "fork_pin_check",
                                          "copy_before_wrprotect", "fork_wp_seq_end"},
         ("no_wp_seq",)),
    Race("fast-ro-fork", "GUP-fast read-only pin vs fork (COW sharing)",
         _race_fork(0), frozenset({"fast_pte_read", "fast_before_recheck", "fork_pin_check",
                                   "copy_before_wrprotect"}), ("fast_no_unshare",)),
    Race("fast-mprotect", "GUP-fast FOLL_WRITE pin vs mprotect(PROT_READ)",
         _race_fast_mprotect, _FAST, ()),
    Race("fast-migrate", "GUP-fast FOLL_WRITE pin vs migration of the page",
         _race_fast_migrate, _FAST | {"walk_entry_read"}, ()),
    Race("remote-exit", "remote pin (pin_user_pages_remote) vs exit of the target",
         _race_remote_exit, frozenset({"walk_entry_read"}) | _ZAP, ()),
    Race("slow-munmap", "slow-path pin_user_pages vs munmap", _race_slow_munmap,
         frozenset({"walk_entry_read"}) | _ZAP, ()),
    Race("fast-collapse", "GUP-fast FOLL_WRITE pin vs THP collapse of its range (broadcast "
         "flush)", _race_fast_collapse,
         _FAST | {"collapse_pmd_cleared", "collapse_isolated"},
         # the two fixes of 2022 together: either alone holds (the IPI sync
         # makes the collapse see the grab; the PMD re-check drops it)
         ("collapse_no_sync+no_pmd_recheck",)),
    Race("fast-split", "GUP-fast FOLL_WRITE pin vs a partial munmap splitting a PTE-mapped THP "
         "(broadcast flush)", _race_fast_split,
         _FAST | _ZAP | {"split_folio_frozen"}, ("no_folio_recheck",)),
    Race("fast-dontneed", "GUP-fast FOLL_WRITE pin vs MADV_DONTNEED of the page (IPI flush)",
         _race_fast_dontneed, _FAST | _ZAP | {"madv_dontneed_zap"}, ("no_pte_recheck",)),
    Race("fast-mremap", "GUP-fast FOLL_WRITE pin vs mremap moving the page",
         _race_fast_mremap, _FAST | {"mremap_moved", "mremap_flushed"}, ()),
    Race("forcewrite-dontneed", "/proc/pid/mem forced write vs MADV_DONTNEED of a R/O private "
         "file page (Dirty COW)", _race_forcewrite_dontneed,
         frozenset({"walk_entry_read", "gup_faulted_in", "madv_dontneed_zap", "zap_cleared",
                    "zap_flushed"}), ("force_write_any_page",)),
    Race("writeback-write", "two user writes vs writeback (folio_mkclean) of an ext4 page",
         _race_writeback_write, frozenset({"between_writes", "mkclean_cleared",
                                           "mkclean_flushed"}), ("mkclean_no_flush",)),
    Race("rcu-sync", "synchronize_rcu() vs an IRQs-off reader on the other CPU",
         _race_rcu_sync, frozenset({"irqs_off", "rcu_gp_wait"}), ()),
    Race("pin-writeback", "long-term write pin, write through it, unpin dirty vs writeback "
         "(the seed, BUGS #1: found under policy 6.4)", _race_pin_writeback,
         frozenset({"between_writes", "fast_pte_read", "mkclean_cleared", "mkclean_flushed"}),
         ()),
]}


# the race whose failing schedule is the bug 6.5 fixed: every preset before
# it fails it by design (a campaign told to tolerate the seed's bug skips it)
SEED_BUG_RACE = "pin-writeback"

# The scheduling points of a race that its set-up never passes, and why.
# Every other point must fire somewhere in a full exploration (coverage):
# a race partner that lost a window -- a yield point dropped, a path no
# longer taken -- is a finding, not a quieter proof.
_ANON = frozenset({"fast_mapping_read"})   # an anon folio passes folio_fast_pin_allowed()
                                           # on its mapping flags: ->mapping is never read
UNREACHED: dict[str, frozenset] = {
    "fast-munmap": _ANON, "fast-fork": _ANON, "fast-mprotect": _ANON,
    "fast-migrate": _ANON, "fast-mremap": _ANON, "fast-collapse": _ANON,
    # a hugetlb PMD leaf is taken whole (gup_huge_pmd()), not by the PTE loop
    "fast-munmap-hugetlb": _ANON | {"fast_grabbed", "fast_rechecked"},
    # a partial munmap / MADV_DONTNEED leaves the page table to the VMA
    "fast-split": _ANON | {"free_pgtables_unlinked"},
    "fast-dontneed": _ANON | {"free_pgtables_unlinked"},
}


def unreached(race: str, policy) -> frozenset:
    """The points of ``race`` that never fire under ``policy`` (a Policy)."""
    out = set(UNREACHED.get(race, ()))
    if not policy.fast_pin_whitelist:
        out.add("fast_mapping_read")       # before 6.5 GUP-fast never reads ->mapping
    if race == SEED_BUG_RACE and policy.writable_file_mapping_check:
        out.add("between_writes")          # 6.5 refuses the pin: nothing writes through it
    return frozenset(out)


def race_names() -> list[str]:
    return list(RACES)


def exposure(name: str) -> tuple[str, tuple]:
    """The built-in race that exposes a switch and the switches to plant for
    it (the switch alone, or with the one it is defence in depth with);
    ValueError if no race does."""
    for r in RACES.values():
        if name in r.switches:
            return r.name, (name,)
    for r in RACES.values():
        for planted in r.switches:
            if name in planted.split("+"):
                return r.name, tuple(planted.split("+"))
    raise ValueError(f"no built-in race exposes switch {name!r}")


def race_for_switch(name: str) -> str:
    """The built-in race that exposes a switch; ValueError if none does."""
    return exposure(name)[0]


# ---------------------------------------------------------------------------
# results

@dataclasses.dataclass
class Failing:
    schedule: list            # (cpu, window) pairs
    detail: str
    preemptions: int
    steps: list = dataclasses.field(default_factory=list)    # filled by replay


@dataclasses.dataclass
class ExploreResult:
    race: str
    policy: str
    mutants: list
    bound: Optional[int]      # None: a random sample (sample()), no bound
    explored: int = 0
    failing_schedules: int = 0
    pruned_bound: int = 0
    pruned_por: int = 0
    pruned_state: int = 0
    seconds: float = 0.0
    failing: Optional[Failing] = None
    por: bool = True
    state_hash: bool = True
    windows: str = "all"
    # coverage, after a full exploration (empty when it stopped early): the
    # race's points that no schedule passed but should have (unreached())
    missed: list = dataclasses.field(default_factory=list)
    seed: Optional[int] = None   # a sample's seed (sample()); None: the search
    ops_run: int = 0             # the CPUs' operations its schedules ran

    @property
    def pruned(self) -> int:
        return self.pruned_bound + self.pruned_por + self.pruned_state

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["pruned"] = self.pruned
        return d


# ---------------------------------------------------------------------------
# one schedule

def _resolve(race: str, policy: str, mutants) -> tuple[Race, frozenset]:
    if race not in RACES:
        raise ValueError(f"unknown race {race!r} (known: {', '.join(RACES)})")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    return RACES[race], resolve_mutants(list(mutants))


WINDOWS = ("all", "race")


def _points(race: Race, windows: str) -> frozenset:
    """The scheduling points: every registered window ("all", the default:
    the proof covers windows nobody thought of -- the migration bug below
    sat in the rmap walk's), or the race's own ("race": shorter schedules)."""
    if windows not in WINDOWS:
        raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")
    if windows == "race":
        return race.points
    kinds = C.RACE_YIELD | C.RACE_PY      # not "start", not the amplifier-only ones
    return frozenset(n for n, f in Core.race_window_flags().items() if f & kinds)


def _run(race: Race, policy: str, mutants: frozenset, schedule, digests: bool,
         watch: bool = False, windows: str = "all", seed: int = 0
         ) -> tuple[Optional[Interleaving], Optional[str]]:
    """One schedule from a fresh world: (the run, what failed or None).
    ``schedule`` None: the scheduler's seeded random picks (``seed``)."""
    w = race.setup(policy, mutants)
    m = w.machine
    try:
        run = m.run_concurrently(w.ops, seed=seed, schedule=schedule,
                                 points=_points(race, windows),
                                 timeout=RUN_TIMEOUT_S, digests=digests,
                                 watch=w.watch if (watch or w.watch) else None)
    except SchedDeadlock as e:
        return None, f"deadlock: {e}"
    except SchedTimeout as e:
        return None, f"stalled: {e}"
    except ScheduleDiverged:
        raise
    except SchedError as e:
        return None, f"scheduler: {e}"
    for i, r in enumerate(run.results):
        if isinstance(r, InvariantError):
            return run, f"CPU {i}: {r}"
        if isinstance(r, BaseException) and not isinstance(r, w.expected):
            return run, f"CPU {i} raised {type(r).__name__}: {r}"
    try:
        bad = w.check(run)
    except InvariantError as e:
        return run, str(e)
    if bad:
        return run, bad
    try:
        m.check()
    except InvariantError as e:
        return run, str(e)
    return run, None


def _preempts(picks: Sequence[int], masks: Sequence[int], i: int, cpu: int) -> bool:
    """Is picking ``cpu`` at step i a preemption of the CPU picked before?"""
    if i == 0:
        return False
    prev = picks[i - 1]
    return cpu != prev and bool(masks[i] >> prev & 1)


def _check_bound(bound) -> int:
    if isinstance(bound, bool) or not isinstance(bound, int):
        raise TypeError(f"bound must be an int, got {bound!r}")
    if not 0 <= bound <= 16:
        raise ValueError(f"bound must be in 0..16, got {bound}")
    return bound


# ---------------------------------------------------------------------------
# the search

def explore(race: str, bound: int = DEFAULT_BOUND, policy: str = "6.5", mutants: Iterable[str] = (),
            por: bool = True, state_hash: bool = True, max_schedules: int = 0,
            stop_at_first: bool = False, windows: str = "all",
            on_schedule: Optional[Callable[[int], None]] = None) -> ExploreResult:
    """Every schedule of ``race`` with at most ``bound`` preemptions (module
    docstring).  ``max_schedules`` (0: none) caps the runs -- a result that
    hit the cap says so by ``explored == max_schedules``; ``stop_at_first``
    ends at the first failing schedule (then it is the first in DFS order,
    not necessarily the shortest).  ``windows``: "all" registered windows
    are scheduling points (default), or only the "race"'s own."""
    bound = _check_bound(bound)
    r, muts = _resolve(race, policy, mutants)
    _points(r, windows)
    if isinstance(max_schedules, bool) or not isinstance(max_schedules, int) or max_schedules < 0:
        raise ValueError(f"max_schedules must be an int >= 0, got {max_schedules!r}")
    res = ExploreResult(r.name, policy, sorted(x.value for x in muts), bound, por=por, state_hash=state_hash)
    t0 = time.monotonic()
    digests = por or state_hash
    # a node: (prefix of CPU picks, preemptions in it, sleep set at the
    # prefix's last pick: {cpu: wrote-nothing})
    stack: list[tuple[list[int], int, dict[int, bool]]] = [([], 0, {})]
    seen: dict[tuple, list[tuple[int, frozenset]]] = {}
    best: Optional[Failing] = None
    reached: set = set()
    while stack:
        if max_schedules and res.explored >= max_schedules:
            break
        prefix, pre, sleep = stack.pop()
        run, bad = _run(r, policy, muts, prefix, digests, windows=windows)
        res.explored += 1
        if run is not None:
            res.ops_run += len(run.results)
            reached.update(w for _, w in run.schedule if w)
        if on_schedule is not None:
            on_schedule(res.explored)
        if bad is not None:
            res.failing_schedules += 1
            sched = run.schedule if run is not None else [(c, None) for c in prefix]
            cand = Failing([list(x) for x in sched], bad, pre)
            if best is None or (cand.preemptions, len(cand.schedule)) < \
                    (best.preemptions, len(best.schedule)):
                best = cand
            if stop_at_first:
                break
        if run is None:
            continue
        picks = [c for c, _ in run.schedule]
        masks = [mk for mk, _ in run.choices]
        digest = [d for _, d in run.choices]
        n = len(picks)

        def wrote_nothing(i: int) -> bool:      # the step picked at i
            return digests and i + 1 < n and digest[i] == digest[i + 1]

        # the sleep set along the run: the prefix's, carried over its last pick
        L = len(prefix)
        asleep: dict[int, bool] = {}
        if L:
            last_ro = wrote_nothing(L - 1)
            asleep = {q: ro for q, ro in sleep.items() if ro and last_ro and q != prefix[-1]} \
                if por else {}
        counts = [0] * 64
        for c in picks[:L]:
            counts[c] += 1
        def cut_from(i: int) -> int:
            """The branches at picks i.. of this run that are not taken."""
            cut = 0
            for j in range(i, n):
                for c in range(64):
                    if masks[j] >> c & 1 and c != picks[j] and c not in asleep and \
                            pre + _preempts(picks, masks, j, c) <= bound:
                        cut += 1
            return cut

        for i in range(L, n):
            p_i = picks[i]
            if state_hash and digests:
                # the last pick is not in the key: a visit that came in on
                # another CPU covers this one if it had a preemption more
                # to spend (only the first switch can cost differently)
                key = (digest[i], tuple(counts[:8]))
                last = picks[i - 1] if i else -1
                slp = frozenset(asleep)
                visits = seen.setdefault(key, [])
                if any(vp + (vl != last) <= pre and vs <= slp for vp, vl, vs in visits):
                    res.pruned_state += cut_from(i)
                    break
                visits.append((pre, last, slp))
            alts = [c for c in range(64) if masks[i] >> c & 1 and c != p_i]
            redundant = por and p_i in asleep
            child_sleep = dict(asleep)
            if not redundant:
                child_sleep[p_i] = wrote_nothing(i)
            for c in alts:
                if por and c in asleep:
                    res.pruned_por += 1
                    continue
                cp = pre + _preempts(picks, masks, i, c)
                if cp > bound:
                    res.pruned_bound += 1
                    continue
                stack.append((picks[:i] + [c], cp, child_sleep if por else {}))
            if redundant:
                res.pruned_por += cut_from(i + 1)
                break
            # carry the sleep set over this step
            if por:
                ro = wrote_nothing(i)
                asleep = {q: qro for q, qro in asleep.items() if qro and ro}
            pre += _preempts(picks, masks, i, p_i)   # 0: the tail never preempts
            counts[p_i] += 1
    res.seconds = round(time.monotonic() - t0, 3)
    if not stack:                # explored in full: every point must have fired
        res.missed = sorted(r.points - unreached(r.name, POLICIES[policy]) - reached)
    if best is not None:
        best.steps = replay(r.name, best.schedule, policy, res.mutants, windows)["steps"] \
            if all(p is not None for _, p in best.schedule) else []
    res.failing = best
    return res


def _run_seeds(seed: int, runs: int) -> list[int]:
    """The scheduler seeds of a sample's runs: a pure function of its seed."""
    import random
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(runs)]


def sample(race: str, runs: int, seed: int, policy: str = "6.5", mutants: Iterable[str] = (),
           stop_at_first: bool = True, windows: str = "all") -> ExploreResult:
    """``runs`` schedules of ``race`` drawn at random, each from a fresh
    set-up: at every scheduling point the seeded scheduler picks any
    runnable CPU with equal odds, so a run may preempt at every point -- the
    interleavings beyond explore()'s bound, which an exhaustive search of
    the deeper bound would cost too much to reach.  No proof: what is not
    drawn is not run, and coverage is not judged (``missed`` stays empty).
    The runs are a pure function of (race, seed, runs, policy, switches); a
    failing run's schedule (``failing.schedule``, its preemptions counted)
    replays exactly with replay()."""
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= 1 << 20:
        raise ValueError(f"runs must be an int in 1..{1 << 20}, got {runs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be an int in 0..2**64-1, got {seed!r}")
    r, muts = _resolve(race, policy, mutants)
    _points(r, windows)
    res = ExploreResult(r.name, policy, sorted(x.value for x in muts), None, seed=seed,
                        windows=windows)
    t0 = time.monotonic()
    for run_seed in _run_seeds(seed, runs):
        run, bad = _run(r, policy, muts, None, digests=False, windows=windows, seed=run_seed)
        res.explored += 1
        res.ops_run += len(run.results) if run is not None else 0
        if bad is None:
            continue
        res.failing_schedules += 1
        if res.failing is None:
            if run is None:             # a deadlock or stall: no trace to replay
                res.failing = Failing([], bad, 0)
            else:
                picks = [c for c, _ in run.schedule]
                masks = [mk for mk, _ in run.choices]
                pre = sum(_preempts(picks, masks, i, c) for i, c in enumerate(picks))
                res.failing = Failing([list(x) for x in run.schedule], bad, pre)
                res.failing.steps = replay(r.name, res.failing.schedule, policy, res.mutants,
                                           windows)["steps"]
        if stop_at_first:
            break
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def replay(race: str, schedule: Sequence, policy: str = "6.5", mutants: Iterable[str] = (),
           windows: str = "all") -> dict:
    """Re-run one schedule ((cpu, window) pairs; ScheduleDiverged if the
    world takes another path): {"failed": what broke or None, "steps": per
    pick the CPU, the window it resumed from, whether it preempted, and the
    watched leaf and folio it saw, "ops_run": the CPUs' operations run}."""
    r, muts = _resolve(race, policy, mutants)
    sched = []
    for entry in schedule:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"schedule entries are (cpu, window) pairs, got {entry!r}")
        cpu, point = entry
        if point not in window_names():
            raise ValueError(f"schedule: unknown window {point!r}")
        sched.append((int(cpu), point))
    run, bad = _run(r, policy, muts, sched, digests=False, watch=True, windows=windows)
    steps = []
    if run is not None:
        picks = [c for c, _ in run.schedule]
        masks = [mk for mk, _ in run.choices]
        for i, ((cpu, point, spun), seen) in enumerate(
                zip(run.trace, run.watched or [{}] * len(run.trace))):
            steps.append({"cpu": cpu, "window": point, "spin": spun,
                          "preempt": _preempts(picks, masks, i, cpu),
                          "runnable": [c for c in range(64) if masks[i] >> c & 1], **seen})
    return {"failed": bad, "steps": steps, "ops_run": len(run.results) if run is not None else 0}


def format_steps(steps: list[dict]) -> str:
    lines = [f"{'#':>3} {'cpu':>3} {'window':<28} {'pte':>18} {'pfn':>6} {'ref':>5} {'pin':>3} "
             f"{'map':>3}  note"]
    for i, s in enumerate(steps):
        pfn = "-" if s.get("pfn") is None else f"{s['pfn']:#x}"
        note = ("PREEMPT " if s["preempt"] else "") + ("spin" if s["spin"] else "")
        lines.append(f"{i:>3} {s['cpu']:>3} {s['window']:<28} {s.get('pte', 0):>#18x} "
                     f"{pfn:>6} {s.get('refcount', 0):>5} {s.get('pincount', 0):>3} "
                     f"{s.get('mapcount', 0):>3}  {note}")
    return "\n".join(lines)


def save(res: ExploreResult, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(res.to_json(), fh, indent=1)


def load(path: str) -> dict:
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "race" not in data or "policy" not in data:
        raise ValueError(f"{path}: not a pygup explore result")
    return data


# ---------------------------------------------------------------------------
# the command: pygup explore

def add_arguments(ap) -> None:
    ap.add_argument("--list", action="store_true", help="print the built-in races, one a line")
    ap.add_argument("--table", action="store_true",
                    help="explore every race with no switch to bounds 2 and 3: a markdown "
                         "table (the README's)")
    ap.add_argument("--race", choices=list(RACES), help="the race to explore")
    ap.add_argument("--mutant", action="append", default=[], choices=sorted(MUTANTS),
                    help="re-plant a historic bug (repeatable)")
    ap.add_argument("--policy", default="6.5", choices=sorted(POLICIES),
                    help="kernel policy (default 6.5)")
    ap.add_argument("--bound", type=int, default=DEFAULT_BOUND, choices=range(0, 17),
                    metavar="K", help=f"preemption bound, 0..16 (default {DEFAULT_BOUND})")
    ap.add_argument("--windows", choices=WINDOWS, default="all",
                    help="scheduling points: every registered window (default) or the "
                         "race's own (shorter schedules)")
    ap.add_argument("--no-por", action="store_true", help="turn partial-order reduction off")
    ap.add_argument("--no-state-hash", action="store_true", help="turn state hashing off")
    ap.add_argument("--sample", type=int, metavar="N",
                    help="instead of the bounded search, N schedules drawn at random (no "
                         "preemption bound; replayable; --seed picks them)")
    ap.add_argument("--seed", type=int, default=0, metavar="S",
                    help="the seed of --sample's schedules (default 0)")
    ap.add_argument("--json", metavar="OUT", help="write the result (and its failing "
                                                  "schedule) as JSON, for --replay")
    ap.add_argument("--replay", metavar="FILE", help="re-run the failing schedule of a --json "
                                                     "result, step by step")


def _print_failing(f: dict) -> None:
    print(f"shortest failing schedule: {len(f['schedule'])} picks, "
          f"{f['preemptions']} preemption(s)")
    print(f"  what broke: {f['detail']}")
    if f.get("steps"):
        print(format_steps(f["steps"]))


def print_table(policy: str = "6.5", bounds: Sequence[int] = (2, 3), windows: str = "all") -> int:
    """Every built-in race, no switch, to each bound: 0 if all are clean."""
    head = "| race | " + " | ".join(f"schedules (bound {b}) | pruned | seconds" for b in bounds) \
        + " | failing |"
    print(head)
    print("|" + "---|" * (2 + 3 * len(bounds)))
    total = {b: [0, 0.0] for b in bounds}
    bad = 0
    for name in RACES:
        cells, failing = [], 0
        for b in bounds:
            res = explore(name, b, policy, windows=windows)
            failing += res.failing_schedules
            total[b][0] += res.explored
            total[b][1] += res.seconds
            cells.append(f"{res.explored} | {res.pruned} | {res.seconds:.2f}")
        bad += failing
        print(f"| {name} | " + " | ".join(cells) + f" | {failing} |")
    rates = ", ".join(f"bound {b}: {n} schedules in {t:.1f}s ({n / t if t else 0:.0f}/s)"
                      for b, (n, t) in total.items())
    print(f"\n{rates}")
    return 1 if bad else 0


def run_cli(args) -> int:
    """0: no failing schedule; 1: one found; 2: usage error (argparse
    handles its own, exiting 2)."""
    if args.list:
        for r in RACES.values():
            sw = f" [switches: {', '.join(r.switches)}]" if r.switches else ""
            print(f"{r.name}  {r.doc}{sw}")
        return 0
    if args.table:
        return print_table(args.policy, windows=args.windows)
    if args.replay:
        try:
            data = load(args.replay)
        except (OSError, ValueError) as e:
            print(f"pygup explore: {e}")
            return 2
        f = data.get("failing")
        if not f:
            print(f"{args.replay}: race {data['race']} had no failing schedule; nothing to replay")
            return 0
        try:
            out = replay(data["race"], f["schedule"], data["policy"], data.get("mutants", []),
                         data.get("windows", "all"))
        except ScheduleDiverged as e:
            print(f"replay diverged: {e}")
            return 1
        print(f"replay of {data['race']} (policy {data['policy']}"
              f"{', switches ' + ','.join(data['mutants']) if data.get('mutants') else ''}):")
        print(format_steps(out["steps"]))
        print(f"result: {out['failed'] or 'no failure (the schedule no longer fails)'}")
        return 1 if out["failed"] else 0
    if not args.race:
        print("pygup explore: --race NAME (or --list / --replay FILE) is required")
        return 2
    sw = f" +{','.join(args.mutant)}" if args.mutant else ""
    if args.sample is not None:
        res = sample(args.race, args.sample, args.seed, args.policy, args.mutant,
                     windows=args.windows)
        rate = res.explored / res.seconds if res.seconds else 0.0
        print(f"pygup explore {res.race} (policy {res.policy}{sw}, {args.sample} random "
              f"schedules, seed {res.seed}): {res.explored} run in {res.seconds:.2f}s "
              f"({rate:.0f} schedules/s"
              f"{'; stopped at the first failing one' if res.failing else ''})")
    else:
        res = explore(args.race, args.bound, args.policy, args.mutant, por=not args.no_por,
                      state_hash=not args.no_state_hash, windows=args.windows)
        rate = res.explored / res.seconds if res.seconds else 0.0
        print(f"pygup explore {res.race} (policy {res.policy}{sw}, bound {res.bound}): "
              f"{res.explored} schedules explored, {res.pruned} pruned (bound "
              f"{res.pruned_bound}, POR {res.pruned_por}, state hash {res.pruned_state}) in "
              f"{res.seconds:.2f}s ({rate:.0f} schedules/s)")
    if args.json:
        save(res, args.json)
    if res.missed:
        # not a failing schedule, but the proof lost a race partner's window
        print(f"coverage: the race's window(s) {', '.join(res.missed)} never fired")
    if res.failing is None:
        print("0 failing")
        return 1 if res.missed else 0
    print(f"{res.failing_schedules} failing")
    _print_failing(dataclasses.asdict(res.failing))
    if args.json:
        print(f"replay with: pygup explore --replay {args.json}")
    return 1
