"""The fuzzing harness's world: a small machine, the harness's record of
what every page should hold, the pins it holds, and the oracles — the seven
invariants of DESIGN.md, checked after every step and in full at the end.

Operations refer to things by small indices taken modulo what exists when
they run (process 3 of 2 is process 1), so a sequence stays executable after
the shrinker deletes steps from it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from pygup._native import C
from pygup.errors import GupError, InvariantError
from pygup.flags import FOLL, MAP, PROT
from pygup.machine import Machine

PAGE = C.PAGE_SIZE
FILE_PAGES = 8
WORLD_CPUS = 4
READER_CPU = WORLD_CPUS - 1      # the model's steps run on CPU 0


class Violation(Exception):
    """An invariant failed: which one, where, and what was seen."""

    def __init__(self, invariant: str, detail: str, frame: Optional[int] = None) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail
        self.frame = frame


@dataclasses.dataclass(eq=False)
class Region:
    """One mmap() the harness made, and which of its pages are still mapped."""

    addr: int
    pages: int
    kind: str              # "anon", "shared-anon", "file"
    file: Optional[int]    # index into World.files
    shared: bool
    writable: bool
    huge: bool = False
    unmapped: set = dataclasses.field(default_factory=set)
    readable: bool = True  # False after mprotect(PROT_NONE)
    origin: str = ""       # what op_mmap made: anon, shared-anon, file, huge, secret, thp
    # False once an operation on it failed part-way (the harness no longer
    # knows every page's protection): the over-refusal oracle skips it
    certain: bool = True

    def page_addr(self, page: int) -> int:
        return self.addr + (page % self.pages) * PAGE

    def runs(self):
        """(address, length) of each stretch of pages still mapped: a page
        munmapped alone may belong to a newer mapping now."""
        start = None
        for page in range(self.pages + 1):
            mapped = page < self.pages and page not in self.unmapped
            if mapped and start is None:
                start = page
            elif not mapped and start is not None:
                yield self.page_addr(start), (page - start) * PAGE
                start = None


@dataclasses.dataclass(eq=False)
class Held:
    """Pages a GUP caller keeps between steps (long-term pins, vmsplice refs)."""

    proc: "Proc"
    region: Region
    page: int              # first page of the region pinned
    pages: object          # pygup.kernel.gup.Pages
    flags: int
    # pages the kernel itself unmapped from the pinner (truncate zaps private
    # COW copies beyond EOF): the pin lives on, detached from the mapping
    detached: set = dataclasses.field(default_factory=set)


class Proc:
    def __init__(self, process, regions=None, anon_truth=None) -> None:
        self.p = process
        self.regions: list[Region] = regions or []
        # expected content of private pages (anon or COWed file), by address
        self.anon_truth: dict[int, int] = anon_truth or {}


class World:
    FILES = [("ext4", FILE_PAGES), ("tmpfs", FILE_PAGES), ("xfs", 4), ("ramfs", 4)]
    # the harness's own knowledge of its file systems (not the model's):
    # these have a page_mkwrite (ramfs too: generic_file_vm_ops'
    # filemap_page_mkwrite), so 6.5 refuses a long-term writable pin of a
    # shared mapping of theirs; tmpfs (shmem_vm_ops) has none
    DIRTY_TRACKED = frozenset({"ext4", "xfs", "ramfs"})
    # free frames below which a fault or a migration may fail for want of
    # memory: the over-refusal oracle asks nothing then
    HEADROOM = 2 * C.PMD_NR

    # the bugs a campaign may be told to live with (``tolerate``)
    TOLERABLE = frozenset({"seed-bug"})

    @classmethod
    def check_tolerate(cls, tolerate) -> None:
        bad = set(tolerate) - cls.TOLERABLE
        if isinstance(tolerate, str) or bad:
            raise ValueError(f"tolerate: unknown bug(s) {sorted(bad) or tolerate!r}; known: "
                             f"{sorted(cls.TOLERABLE)}")

    def __init__(self, policy: str = "6.5", mutants=(), table_free: str = "rcu",
                 tolerate=()) -> None:
        self.check_tolerate(tolerate)
        # secretmem.enable=1 under every policy: the vocabulary maps memfd_secret
        self.m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=WORLD_CPUS,
                         table_free=table_free, mutants=mutants, secretmem=True)
        self.races: Optional[list] = None   # a replay's record of scheduled races
        self.policy = self.m.policy
        # "seed-bug" on a kernel without 6.5's check: a write through a
        # long-term pin behind writeback's back is that kernel's known bug,
        # not a finding.  The pages it wrote are noted and left out of the
        # lost-write checks (what they hold after writeback is the bug's
        # business); every other oracle stays.
        self.tolerate_seed_bug = "seed-bug" in tolerate and \
            not self.policy.writable_file_mapping_check
        self.behind_writeback: set = set()      # (ino, index) the bug wrote
        self.fss = {}
        self.files = []
        for preset, pages in self.FILES:
            fs = self.fss.get(preset) or self.m.mount(preset)
            self.fss[preset] = fs
            self.files.append(fs.create(f"f{len(self.files)}", pages * PAGE))
        # expected content of shared pages: (inode number, index) -> value
        self.shared_truth: dict[tuple[int, int], int] = {}
        self.procs: list[Proc] = [Proc(self.m.spawn())]
        self.held: list[Held] = []
        self.steps = 0
        self.race_ops = 0    # operations run inside scheduled races (op_explore)
        self.stress_iterations = 0   # native stress campaigns' iterations (op_stress)
        # held_heads() of this step: (steps, the holds it read, the heads)
        self._held_heads_cache: Optional[tuple] = None
        # _hold_owners() of the holds last read: (the holds, pfns, kinds)
        self._hold_owners_cache: Optional[tuple] = None

    # -- lookups by index ------------------------------------------------------------
    def proc(self, i: int) -> Proc:
        return self.procs[i % len(self.procs)]

    def region(self, proc: Proc, i: int) -> Optional[Region]:
        return proc.regions[i % len(proc.regions)] if proc.regions else None

    # -- truth ----------------------------------------------------------------------
    def backing(self, proc: Proc, addr: int):
        """(inode, page index) of the file (or shmem) page behind addr."""
        vma = proc.p.mm.find_vma(addr)
        if vma is None or vma.vm_file is None:
            return None
        return vma.vm_file, vma.page_index(addr)

    def record_write(self, proc: Proc, region: Region, page: int, value: int) -> None:
        addr = region.page_addr(page)
        if region.shared:
            inode, index = self.backing(proc, addr)
            self.shared_truth[(inode.ino, index)] = value
            self.behind_writeback.discard((inode.ino, index))   # written the proper way
        else:
            proc.anon_truth[addr] = value

    def expected_read(self, proc: Proc, region: Region, page: int) -> Optional[int]:
        addr = region.page_addr(page)
        if addr in proc.anon_truth and not region.shared:
            return proc.anon_truth[addr]           # private (or COWed) memory
        b = self.backing(proc, addr)
        if b is None:
            return 0
        inode, index = b
        if index >= inode.nr_pages() or (inode.ino, index) in self.behind_writeback:
            return None                            # SIGBUS territory; the seed's bug
        return self.shared_truth.get((inode.ino, index), 0)

    def note_cows(self) -> None:
        """GUP may break COW without a user write (an unshare for a R/O long-term
        pin, a FOLL_FORCE fault): a private file page that is anonymous now
        keeps what the file held when it was copied."""
        core = self.m._core
        for proc in self.procs:
            regions = [r for r in proc.regions if r.kind == "file" and not r.shared]
            if not regions:
                continue
            # one walk of the regions' leaves: the pages whose folio is
            # anonymous now (a page with no leaf has no copy)
            anon = core.audit_anon_leaves(proc.p.mm.id, [(r.addr, r.addr + r.pages * PAGE)
                                                         for r in regions])
            for region, addrs in zip(regions, anon):
                for addr in addrs:
                    page = (addr - region.addr) // PAGE
                    if page in region.unmapped or addr in proc.anon_truth:
                        continue
                    b = self.backing(proc, addr)
                    key = (b[0].ino, b[1])
                    # copied from a page the seed's bug wrote: unknown
                    proc.anon_truth[addr] = None if key in self.behind_writeback \
                        else self.shared_truth.get(key, 0)

    def truncate_truth(self, inode, pages: int) -> None:
        for key in [k for k in self.shared_truth if k[0] == inode.ino and k[1] >= pages]:
            del self.shared_truth[key]

    # -- the oracles ----------------------------------------------------------------------
    def check_step(self) -> None:
        """Invariants 1, 4, 6, 7 after every step (4 is the C core's)."""
        try:
            self.m.check()
        except InvariantError as e:
            raise core_violation(e) from None
        pinned = self.check_refcounts()
        self.check_pinned_anon_stays()
        self.check_pin_accounting(pinned)
        self.check_tlbs()

    def check_tlbs(self) -> None:
        """Between steps no CPU caches a translation the page tables no
        longer give (invariant 5): every shootdown an operation owes was
        made before it returned (the C core's pg_audit_tlbs)."""
        with self.m.kernel.lock:           # (not op(): its RCU poll would run callbacks)
            n, bad = self.m._core.audit_tlbs(4)
        if n:
            first = bad[0]
            raise Violation("no-stale-tlb", f"{n} stale TLB entr{'y' if n == 1 else 'ies'}: CPU "
                            f"{first['cpu']} caches mm {first['mm']} {first['addr']:#x} -> pfn "
                            f"{first['pfn']:#x}{' (writable, dirty)' if first['writable'] and first['dirty'] else ''}"
                            f", the page table has {first['leaf']:#x}")

    def check_access(self, region: Region, addr: int, write: bool, err: Optional[int],
                     certain: Optional[str]) -> None:
        """A user access honours the protection the harness set: a store to
        a region mapped or mprotect()ed without PROT_WRITE, or any access to
        a PROT_NONE one, faults (SIGSEGV: -EFAULT here); one the harness
        knows can be served (pin_must_succeed's cases) succeeds."""
        if region.certain and err is None and (not region.readable or
                                               (write and not region.writable)):
            raise Violation("protection", f"a user {'store' if write else 'load'} at "
                            f"{addr:#x} succeeded, but the region is "
                            f"{'PROT_NONE' if not region.readable else 'read-only'}")
        if certain and err is not None:
            raise Violation("over-refusal", f"a user {'store' if write else 'load'} at "
                            f"{addr:#x} failed with errno {err}: {certain}")

    def check_tlb_filled(self, cpu: int, proc: "Proc", addr: int) -> None:
        """A user access that succeeded went through the CPU's TLB: the
        translation is cached there now (what every later shootdown must
        reach; the stale-TLB audit of m.check() relies on it)."""
        if not self.m._core.tlb_probe(cpu, proc.p.mm.id, addr):
            raise Violation("no-stale-tlb", f"CPU {cpu} accessed {addr:#x} but its TLB "
                            "holds no translation for it")

    def check_pin_accounting(self, pinned: Optional[int] = None) -> None:
        """/proc/vmstat's nr_foll_pin_acquired - nr_foll_pin_released is the
        pins alive (mm/gup.c counts every page a FOLL_PIN takes, the zero
        page never): here, what the harness and the callers hold pinned.
        ``pinned``: the pages of every pinned hold, the zero page's left
        out, as check_refcounts' audit counted them (None: count here);
        the holds already released are taken off either way."""
        core = self.m._core
        live = 0 if pinned is None else pinned
        # counted here: the live holds; taken off the audit's: the released
        mine = [pages.pfns for pages in self.holds() if pages.pinned and
                (not pages.released if pinned is None else pages.released)]
        if mine:
            flags = core.audit_frames(np.concatenate(mine))[1]
            n = int(np.count_nonzero(np.equal(flags & C.F_ZERO, 0)))
            live += n if pinned is None else -n
        counted = core.audit_counter("pins_alive")
        if counted != live:
            raise Violation("pin-accounting", f"nr_foll_pin_acquired - released = {counted}, "
                            f"but {live} pinned pages are held")

    def expected_refcounts(self, flags: Optional[np.ndarray] = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """What every owner holds: page cache, page-table leaves, held pins,
        device memory.  Returns (refcount per head frame, mapcount per frame).
        ``flags``: the frames' own flag words (a snapshot), to find the folio
        of a PTE-mapped page of a large folio (its reference is the head's)."""
        core = self.m._core
        n = core.nr_frames
        if flags is None:
            flags = core.snapshot()["flags"]
        # numpy's comparison functions, not operators: see the PTE loop below
        in_large = np.not_equal(flags & C.F_TAIL, 0)
        ref = np.zeros(n, np.int64)
        mapc = np.zeros(n, np.int64)
        for inode in list(self.m.kernel.inodes.values()):
            if inode.released:
                continue
            for head in inode.page_cache.values():
                ref[head] += 1
        for proc in self.procs:
            mm = proc.p.mm
            # one walk of the whole address space: every leaf must lie in a
            # VMA, so there are at most as many as the VMAs have pages
            mapped = sum((v.vm_end - v.vm_start) >> C.PAGE_SHIFT for v in mm.vmas)
            addrs, ptes = core.range_leaves(mm.id, 0, C.TASK_SIZE_MAX, cap=mapped + 1)
            _leaves_inside_vmas(proc, len(addrs), mapped)
            # array comparisons through numpy's functions, not ==/!=: a
            # coverage fuzzer (atheris) hooks every compare operator and
            # keeps its operands alive, so each operator here leaked the
            # arrays of every input
            live = np.not_equal(ptes & (C.PTE_PRESENT | C.PTE_PROTNONE), 0)
            live &= np.equal(ptes & C.PTE_SPECIAL, 0)
            pfns = ((ptes & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT).astype(np.int64)
            huge = np.not_equal(ptes & C.PTE_HUGE, 0)
            # a PMD leaf is one mapping of its folio, counted on the head
            first = huge & np.equal(addrs & ((1 << C.PMD_SHIFT) - 1), 0)
            heads = np.where(huge, pfns & ~(C.PMD_NR - 1), pfns)
            take = live & (~huge | first)
            np.add.at(mapc, heads[take], 1)
            # a PTE-mapped page of a THP: the reference is its folio's
            # (large folios are order 9, 2 MiB-aligned blocks of frames)
            tail = np.zeros(len(pfns), bool)
            ok = take & np.less(pfns, n)
            tail[ok] = in_large[pfns[ok]]
            folio = np.where(tail, pfns & ~(C.PMD_NR - 1), heads)
            np.add.at(ref, folio[take], 1)
        for proc in self.procs:
            for pages_list in proc.p.held.values():       # callers' holds
                for pages in pages_list:
                    self._count_hold(ref, pages)
        for h in self.held:
            self._count_hold(ref, h.pages)
        for pfn in self.m.device_frames:
            ref[pfn] += 1
        return ref, mapc

    def _count_hold(self, ref: np.ndarray, pages) -> None:
        core = self.m._core
        for pfn in pages:
            fi = core.frame_info(pfn)
            if fi.flags & C.F_ZERO:
                continue
            if pages.pinned and not fi.order:
                ref[fi.head] += C.GUP_PIN_COUNTING_BIAS
            else:
                ref[fi.head] += 1

    def holds(self) -> list:
        """The Pages someone holds now: the harness's holds and every
        caller's (io_uring, RDMA, VFIO, a pipe's vmsplice pages)."""
        holds = [h.pages for h in self.held]
        for proc in self.procs:
            for pages_list in proc.p.held.values():
                holds.extend(pages_list)
        return holds

    def audit_owners(self) -> tuple[list, np.ndarray]:
        """The owners the C core cannot see, as pg_audit_refcounts() takes
        them: (pfns, kinds) for every page-cache folio, device memory and
        every frame of every hold (the harness's and the callers')."""
        pfns: list = list(self.m.device_frames)
        for ref in self.m.kernel.inodes.valuerefs():   # (a weak dict: no iteration guard)
            inode = ref()
            if inode is not None and not inode.released:
                pfns.extend(inode.page_cache.values())
        kinds = bytes([self.m._core.AUDIT_REF]) * len(pfns)
        held_pfns, held_kinds = self._hold_owners()
        return pfns + held_pfns, np.frombuffer(kinds + held_kinds, np.uint8)

    def _hold_owners(self) -> tuple[list, bytes]:
        """(pfns, kinds) of every hold, read again only when the holds are
        not the ones of the last call: a hold's pages never change (a
        Pages is fixed when GUP returns it)."""
        holds = self.holds()
        cached = self._hold_owners_cache
        if cached is not None and _same_holds(cached[0], holds):
            return cached[1], cached[2]
        core = self.m._core
        pfns: list = []
        kinds = bytearray()
        for pages in holds:
            held = pages.pfns.tolist()
            pfns += held
            kinds += bytes([core.AUDIT_HOLD_PIN if pages.pinned else core.AUDIT_HOLD_GET]) * len(held)
        self._hold_owners_cache = (holds, pfns, bytes(kinds))
        return pfns, bytes(kinds)

    def check_refcounts(self) -> int:
        """Invariant 1: every frame's refcount equals what its owners hold,
        every page's mapcount the leaves that map it.  One C call
        (pg_audit_refcounts, mm/audit.c) over every frame and every address
        space; its twin in Python is check_refcounts_reference, which
        raises the same violations.  Returns the pages the pinned holds
        hold, the zero page's left out (for check_pin_accounting)."""
        pfns, kinds = self.audit_owners()
        leaves, bad, pinned = self.m._core.audit_refcounts([p.p.mm.id for p in self.procs],
                                                           pfns, kinds)
        for proc, n in zip(self.procs, leaves):
            _leaves_inside_vmas(proc, n, sum((v.vm_end - v.vm_start) >> C.PAGE_SHIFT
                                             for v in proc.p.mm.vmas))
        if bad is None:
            return pinned
        raise Violation("refcount-balance", _AUDIT_FINDINGS[bad["kind"]].format(
            last=self.m._core.nr_frames - 1, **bad), bad["pfn"])

    def check_refcounts_reference(self) -> None:
        """check_refcounts in numpy over a snapshot of every frame: the C
        audit's twin (the tests compare them), and the definition of what
        it checks."""
        snap = self.m._core.snapshot()
        ref, mapc = self.expected_refcounts(snap["flags"])
        actual = snap["refcount"].astype(np.int64)
        flags = snap["flags"]
        # numpy's comparison functions, not operators (see expected_refcounts)
        counted = np.equal(flags & C.F_ZERO, 0) & np.equal(flags & C.F_TAIL, 0)
        bad = np.nonzero(counted & np.not_equal(actual, ref))[0]
        if len(bad):
            pfn = int(bad[0])
            raise Violation("refcount-balance", f"frame {pfn:#x}: refcount {int(actual[pfn])}, "
                            f"owners hold {int(ref[pfn])} ({len(bad)} frames differ)", pfn)
        negative = np.less(actual, 0)
        if negative.any():
            pfn = int(np.nonzero(negative)[0][0])
            raise Violation("refcount-balance", f"frame {pfn:#x} has a negative refcount", pfn)
        badm = np.nonzero(np.equal(flags & C.F_ZERO, 0)
                          & np.not_equal(snap["mapcount"].astype(np.int64), mapc))[0]
        if len(badm):
            pfn = int(badm[0])
            raise Violation("refcount-balance", f"frame {pfn:#x}: mapcount "
                            f"{int(snap['mapcount'][pfn])}, page tables map it {int(mapc[pfn])} times",
                            pfn)

    def check_pinned_anon_stays(self) -> None:
        """Invariant 6: a pinned anonymous page stays mapped, exclusive, in
        its pinner (unless the pinner itself unmapped it)."""
        core = self.m._core
        for h in self.held:
            if not h.pages.pinned or not h.proc.p.alive or h.region not in h.proc.regions:
                continue
            # the hold's frames in one read: frame_info()'s head, flags, mapping
            heads, flags, mappings, _ = core.audit_frames(h.pages.pfns).tolist()
            for i, pfn in enumerate(h.pages):
                page = (h.page + i) % h.region.pages
                if page in h.region.unmapped or page in h.detached:
                    continue
                if mappings[i] & C.MAPPING_FLAGS != C.MAPPING_ANON:
                    continue
                addr = h.region.page_addr(page)
                pte = h.proc.p.mm.pte(addr)
                if pte.level == 0:
                    continue                        # reclaimed nothing: anon stays
                mapped = pte.pfn + (((addr >> C.PAGE_SHIFT) & (C.PMD_NR - 1)) if pte.huge else 0)
                if mapped != pfn:
                    raise Violation("pinned-anon-stays",
                                    f"pid {h.proc.p.pid} {addr:#x}: pinned frame {pfn:#x} but "
                                    f"maps {mapped:#x} (COW took it away)", pfn)
                # hugetlb keeps PageAnonExclusive on the head page
                excl = (core.frame_info(heads[i]).flags if flags[i] & C.F_HUGETLB
                        else flags[i]) & C.F_ANON_EXCLUSIVE
                if not excl:
                    raise Violation("pinned-anon-stays",
                                    f"pid {h.proc.p.pid} {addr:#x}: pinned frame {pfn:#x} is "
                                    "not exclusive (shared with a child)", pfn)

    def file_kind(self, pfn: int) -> int:
        """PG_AS_* kind bits of the file folio holding pfn (0 for anon/none)."""
        fi = self.m._core.frame_info(pfn)
        if not fi.mapping or fi.mapping & C.MAPPING_FLAGS:
            return 0
        return max(self.m._core.as_kind(fi.mapping >> 2), 0)

    def check_policy_pin(self, pages, flags: int) -> None:
        """Invariant 7: under the 6.5 policy no FOLL_LONGTERM|FOLL_WRITE pin
        exists on a folio of a dirty-tracked mapping."""
        if not self.policy.writable_file_mapping_check:
            return
        if (flags & (FOLL.LONGTERM | FOLL.WRITE)) != FOLL.LONGTERM | FOLL.WRITE:
            return
        for pfn in pages:
            if self.file_kind(pfn) & C.AS_DIRTY_TRACKED:
                raise Violation("policy", f"long-term writable pin of frame {pfn:#x} of a "
                                "dirty-tracked file", pfn)

    def held_heads(self) -> set:
        """The folios someone holds a reference on now: the harness's holds
        and every caller's (io_uring, RDMA, VFIO, a pipe's vmsplice pages).
        Read once per operation: asked again in the same step with the
        same holds, the answer of the first time (nothing runs between the
        over-refusal oracle's questions of one step)."""
        holds = self.holds()
        cached = self._held_heads_cache
        if cached is not None and cached[0] == self.steps and _same_holds(cached[1], holds):
            return cached[2]
        heads = set()
        if holds:
            heads = set(self.m._core.audit_frames(
                np.concatenate([pages.pfns for pages in holds]))[0].tolist())
        self._held_heads_cache = (self.steps, holds, heads)
        return heads

    def pin_must_succeed(self, proc: "Proc", region: Region, page: int, n: int,
                         gup_flags: int) -> Optional[str]:
        """Over-refusal is a bug too: the cases where the harness knows the
        kernel takes all n pages from `page` on -- private or shared
        anonymous memory, a THP range, a file mapping inside EOF -- with
        the protection the call needs, memory to spare, and (for
        FOLL_LONGTERM, which may migrate) no other reference on a folio
        that might have to move.  Returns what makes it certain, or None
        when the harness cannot tell (hugetlb's pool, secretmem's EFAULT,
        6.5's refusal of a long-term writable pin of a dirty-tracked shared
        file, a region an operation left half-changed)."""
        if n < 1 or not region.certain or not region.readable or not proc.p.alive:
            return None
        write = bool(gup_flags & FOLL.WRITE)
        longterm = bool(gup_flags & FOLL.LONGTERM)
        if write and not region.writable:
            return None
        if region.origin not in ("anon", "shared-anon", "thp", "file"):
            return None
        if self.m._core.audit_counter("nr_free_normal") < self.HEADROOM:
            return None
        what = region.origin
        for i in range(n):
            b = self.backing(proc, region.page_addr(page + i))
            if b is not None and b[1] >= b[0].nr_pages():
                return None       # past EOF (a file, or shmem grown by mremap): SIGBUS
        if region.origin == "file":
            preset = self.FILES[region.file][0]
            what = f"{'shared' if region.shared else 'private'} {preset} file"
            if region.shared and longterm and write and preset in self.DIRTY_TRACKED \
                    and self.policy.writable_file_mapping_check:
                return None                        # refused on purpose (6.5)
        if longterm:
            held = self.held_heads()
            ptes = [proc.p.mm.pte(region.page_addr(page + i)) for i in range(n)]
            mapped = [pte.pfn for pte in ptes if pte.level]
            if mapped and \
                    not held.isdisjoint(self.m._core.audit_frames(mapped)[0].tolist()):
                return None                        # migration may fail: -ENOMEM
            for i in range(n):
                b = self.backing(proc, region.page_addr(page + i))
                if b is not None:
                    pfn = b[0].find_folio(b[1])
                    if pfn is not None and pfn in held:
                        return None
        return f"{what}, {'rw' if region.writable else 'r'}, mapped, {n} page(s)"

    def pages_before_eof(self, proc: "Proc", region: Region, page: int, n: int
                         ) -> Optional[int]:
        """How many of the n pages from `page` on lie inside their file (or
        shmem object), when one of them does not: a GUP there stops at it
        (the fault is SIGBUS: -EFAULT when it is the first page).  None when
        every page is inside, or a page has no backing the harness knows."""
        for i in range(n):
            b = self.backing(proc, region.page_addr(page + i))
            if b is None:
                return None
            if b[1] >= b[0].nr_pages():
                return i
        return None

    def check_trace(self, trace, call: str, n: int, gup_flags: int, ret: int) -> None:
        """The explanation tells the truth about the call it explains: no
        check failed if every page was taken, the first failed check's
        errno is the call's answer, the flags a step reports are the
        call's, and a GUP-fast that fell back says why."""
        from pygup.kernel.gup import FAST_STOP_REASONS
        failed = [s for s in trace.steps if s.verdict == "fail"]
        lt = (gup_flags & (FOLL.PIN | FOLL.LONGTERM)) == FOLL.PIN | FOLL.LONGTERM
        bad = None
        if ret == n and failed:
            bad = f"all {n} pages taken, but check {failed[0].rule!r} failed"
        elif ret < 0 and failed and failed[0].errno != ret:
            bad = f"answer {ret}, but the failed check {failed[0].rule!r} says {failed[0].errno}"
        for s in trace.steps:
            if "longterm_pin" in s.inputs and s.inputs["longterm_pin"] != lt:
                bad = f"step {s.rule!r} says longterm_pin={s.inputs['longterm_pin']}, " \
                      f"the call's flags {gup_flags:#x} say {lt}"
            if s.rule == "lockless_pages_from_mm":
                reasons = {r for k, r in FAST_STOP_REASONS.items() if k != C.FAST_STOP_NONE}
                if s.verdict == "fallback" and s.inputs.get("why") not in reasons:
                    bad = f"GUP-fast fell back after {s.inputs.get('taken')} pages, and the " \
                          f"trace says why: {s.inputs.get('why')!r}"
                if s.verdict == "pass" and s.inputs.get("taken") != n:
                    bad = f"GUP-fast passed with {s.inputs.get('taken')} of {n} pages"
        if bad:
            raise Violation("explain", f"{call} -> {ret}: {bad}")

    def check_fast_differential(self, mm, addr: int, n: int, gup_flags: int) -> None:
        """GUP-fast in C against its plain-Python twin (tools/reference.py)
        on the same state: the same pfns taken (a prefix), then both
        released.  A fast path that falls back more than it must, or takes
        what it must not, shows here even when the slow path hides it."""
        from pygup.tools.reference import gup_fast_reference
        core = self.m._core
        cpu = self.m.current_cpu()
        pin = bool(gup_flags & FOLL.PIN)
        got = core.gup_fast(cpu, mm.id, addr, n, gup_flags, self.policy.gup_fast_bits).tolist()
        for pfn in got:
            core.gup_put(pfn, 1, pin)
        want = list(gup_fast_reference(self.m, mm, addr, n, gup_flags))
        for pfn in want:
            core.gup_put(pfn, 1, pin)
        if got != want:
            raise Violation("fast-differential",
                            f"GUP-fast {addr:#x} x{n} flags {gup_flags:#x}: the C core took "
                            f"{[hex(x) for x in got]}, the reference {[hex(x) for x in want]}",
                            (got or want)[0])

    def check_longterm_pinnable(self, pages) -> None:
        """A FOLL_LONGTERM pin never holds a page that must stay movable
        (folio_is_longterm_pinnable(): GUP migrates it out of ZONE_MOVABLE
        first, check_and_migrate_movable_pages())."""
        core = self.m._core
        for pfn in pages:
            fi = core.frame_info(pfn)
            if fi.zone == C.ZONE_MOVABLE and not fi.flags & C.F_ZERO:
                raise Violation("longterm-movable", f"a long-term pin holds frame {pfn:#x} "
                                "in ZONE_MOVABLE", pfn)

    def check_no_secretmem(self, pages) -> None:
        """BUGS #9: no GUP ever returns a secretmem folio (it is not in the
        kernel's direct map; touching it through the pin would crash)."""
        for pfn in pages:
            if self.file_kind(pfn) & C.AS_SECRETMEM:
                raise Violation("no-secretmem", f"GUP returned secretmem frame {pfn:#x}", pfn)

    def check_pin_write(self, pfn: int) -> None:
        """Invariant 3 for the direct map: a write through a pin to a clean
        folio of a dirty-tracked file, with no page_mkwrite since its clean."""
        fi = self.m._core.frame_info(pfn)
        if self.file_kind(pfn) & C.AS_DIRTY_TRACKED and not fi.flags & (C.F_DIRTY | C.F_MKWRITE):
            if self.tolerate_seed_bug:
                inode = self.m.kernel.inode_by_as(fi.mapping >> 2)
                if inode is not None:
                    self.behind_writeback.add((inode.ino, fi.index + (pfn - fi.head)))
                return
            raise Violation("write-notify-bypass", f"write through a pin to clean frame "
                            f"{pfn:#x} of a dirty-tracked file (no page_mkwrite since writeback)",
                            pfn)

    def final_check(self) -> None:
        """In full at the end: release every hold, sync, drop the page cache,
        compare every file page with the last write, exit, audit, leak check."""
        for h in list(self.held):
            self.release(h, dirty=True)
        self.check_step()
        self.m.writeback()
        for i, f in enumerate(self.files):
            self.m.evict(f)
        for i, f in enumerate(self.files):
            for page in range(f.inode.nr_pages()):
                if (f.inode.ino, page) in self.behind_writeback:
                    continue                         # the seed's bug wrote it (tolerated)
                want = self.shared_truth.get((f.inode.ino, page), 0)
                pfn = f.inode.find_folio(page)
                got = (self.m._core.frame_read(pfn + page - f.inode.folio_start(page))
                       if pfn is not None else f.disk(page))
                if got != want:
                    raise Violation("no-lost-write", f"{f.inode.describe()} page {page}: "
                                    f"last write {want:#x}, file holds {got:#x}")
        self.teardown_under_reader()
        self.check_step()
        st = self.m.stats()
        if st["table_pages_live"] or st["table_pages_pending"] or st["as_pending"]:
            raise Violation("pool-leak", f"after every process exited and the RCU barrier: "
                            f"{st['table_pages_live']} table pages live, "
                            f"{st['table_pages_pending']} waiting to be freed, "
                            f"{st['as_pending']} address_space records waiting for RCU")
        free = st["nr_free_normal"] + st["nr_free_movable"]
        want_free = st["nr_frames"] - 1 - len(self.m.device_frames)   # the zero page
        if free != want_free:
            raise Violation("refcount-balance", f"leak: {want_free - free} frames still "
                            "allocated after every process exited and every file was emptied")

    def teardown_under_reader(self) -> None:
        """Every process exits and every file is emptied while an RCU reader
        that began before any of those frees sits on another CPU: nothing
        freed by call_rcu may be released while it is inside (the grace
        period, kernel/rcu/tree.c), and everything must be once it leaves
        and rcu_barrier() has run (no callback is lost)."""
        core = self.m._core
        core.rcu_barrier(0)              # what was queued before the reader may run
        ran = core.stats()["rcu_callbacks_run"]
        core.rcu_read_lock(READER_CPU)
        try:
            for proc in list(self.procs):
                proc.p.exit()
            self.procs = []
            for f in self.files:
                f.truncate(0)
            core.rcu_poll()
            early = core.stats()["rcu_callbacks_run"] - ran
        finally:
            core.rcu_read_unlock(READER_CPU)
        if early:
            raise Violation("rcu-grace-period", f"{early} RCU callbacks queued after a reader "
                            f"entered on CPU {READER_CPU} ran before it left")
        core.rcu_barrier(0)

    # -- holds ---------------------------------------------------------------------------
    def release(self, h: Held, dirty: bool) -> None:
        self.held.remove(h)
        mm = h.proc.p.mm
        if h.pages.pinned:
            mm.unpin_user_pages_dirty_lock(h.pages, dirty)
        else:
            mm.put_page(h.pages)


# what each failed check of pg_audit_refcounts() says: the words of
# check_refcounts_reference's violations
_AUDIT_FINDINGS = {
    "refcount": "frame {pfn:#x}: refcount {actual}, owners hold {expected} ({differ} frames differ)",
    "negative": "frame {pfn:#x} has a negative refcount",
    "mapcount": "frame {pfn:#x}: mapcount {actual}, page tables map it {expected} times",
    "leaf-pfn": "a page-table leaf maps frame {pfn:#x}, past the last frame ({last:#x})",
}


def _same_holds(a: list, b: list) -> bool:
    """The same Pages objects, in the same order (a hold's pages never
    change, so what was read of them still holds)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _leaves_inside_vmas(proc: Proc, leaves: int, mapped: int) -> None:
    if leaves > mapped:
        raise Violation("refcount-balance", f"pid {proc.p.pid}: page tables map more pages "
                        f"than its VMAs cover ({mapped}): a leaf outside a VMA")


def core_violation(e: InvariantError) -> Violation:
    """Name the invariant a C-core violation message is about."""
    text = str(e)
    for needle, inv in (("write-notify bypass", "write-notify-bypass"),
                        ("zero page", "cow-isolation"),
                        ("stale TLB", "no-stale-tlb"), ("use-after-free", "no-use-after-free"),
                        ("refcount", "refcount-balance"), ("put of", "refcount-balance")):
        if needle in text:
            return Violation(inv, text)
    return Violation("core-invariant", text)


def new_region(addr: int, pages: int, kind: str, file: Optional[int], shared: bool,
               writable: bool, huge: bool = False) -> Region:
    return Region(addr, pages, kind, file, shared, writable, huge, origin=kind)


__all__ = ["World", "Region", "Held", "Proc", "Violation", "GupError", "MAP", "PROT"]
