"""``Machine``: physical memory, CPUs, policy, mounted file systems, processes.

Locking model (a deliberate simplification of the kernel's): every model
update that Python performs — faults, mmap/munmap/mprotect/fork, writeback,
truncate, eviction — runs under one machine lock (``_op()``), standing in for
mmap_lock, the PTE locks, the folio locks and i_mmap_rwsem together.  What
the kernel does *without* those locks runs in C without this one: the MMU's
user accesses through the TLB, IPI handling, RCU, and (later) GUP-fast.
Those are the paths whose races pygup exists to study.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import re
import threading
import weakref
from typing import Iterable, Iterator, Optional

from pygup._native import C, Core
from pygup.flags import GupError
from pygup.kernel.fs import PRESETS, File, FileSystem, FsType
from pygup.config.mutants import mutant_bits
from pygup.config.policy import Policy, resolve
from pygup.kernel.sched import Interleaving, SchedLock

FolioFlag = enum.IntFlag("FolioFlag", {name[2:]: getattr(C, name)
                                      for name in sorted(vars(C)) if name.startswith("F_")})

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30}


def parse_size(value: int | str, name: str) -> int:
    """'1GiB' / '64MiB' / 4096 -> bytes; ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a size, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must look like '1GiB' or '64MiB', got {value!r}")
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise ValueError(f"{name} must be a size, got {value!r}")
    if n < 0:
        raise ValueError(f"{name} must not be negative")
    return n


@dataclasses.dataclass(frozen=True)
class Folio:
    """A snapshot of one frame and the folio containing it."""

    pfn: int
    head: int
    order: int
    zone: str
    refcount: int
    pincount: int
    mapcount: int
    flags: FolioFlag
    mapping: str          # "anon", "file", "none", "movable", "ksm"
    mapping_id: int       # anon_vma id or address_space id
    index: int
    content: int

    @property
    def dirty(self) -> bool:
        return bool(self.flags & FolioFlag.DIRTY)

    @property
    def maybe_dma_pinned(self) -> bool:
        """/* mirrors folio_maybe_dma_pinned() */"""
        if self.order > 0:
            return self.pincount > 0
        return (self.refcount & 0xFFFFFFFF) >= C.GUP_PIN_COUNTING_BIAS


class Machine:
    """An emulated machine.

    >>> m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    >>> fs = m.mount("ext4")
    >>> f = fs.create("data", 4096)
    >>> p = m.spawn()
    >>> addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    >>> p.write(addr, 42); f.writeback(); f.disk(0)
    1
    42
    """

    def __init__(self, policy: str | Policy = "6.5", memory: int | str = "1GiB",
                 movable: int | str = "64MiB", cpus: int = 2, table_free: str = "rcu",
                 mutants: Iterable[str] = (), tlb_flush: str = "ipi") -> None:
        self.policy = resolve(policy)
        mem = parse_size(memory, "memory")
        mov = parse_size(movable, "movable")
        block = C.PMD_NR * C.PAGE_SIZE
        if mem <= 0 or mem % block:
            raise ValueError("memory must be a positive multiple of 2 MiB")
        if mov % block or mov >= mem:
            raise ValueError("movable must be a multiple of 2 MiB and smaller than memory")
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= C.MAX_CPUS:
            raise ValueError(f"cpus must be an int in 1..{C.MAX_CPUS}, got {cpus!r}")
        if table_free not in ("rcu", "ipi"):
            raise ValueError(f"table_free must be 'rcu' or 'ipi', got {table_free!r}")
        # "ipi": shootdowns interrupt and wait for every target (x86), so
        # IRQs-off GUP-fast holds them off; "broadcast": they invalidate
        # without waiting for IRQs-off CPUs (arm64 TLBI), and only RCU and
        # the re-checks protect GUP-fast (csrc/pygup.h PG_TLB_FLUSH_*)
        if tlb_flush not in ("ipi", "broadcast"):
            raise ValueError(f"tlb_flush must be 'ipi' or 'broadcast', got {tlb_flush!r}")
        self.memory = mem
        self.table_free = table_free
        bits = mutant_bits(mutants)
        self._core = Core(mem // C.PAGE_SIZE, mov // C.PAGE_SIZE, cpus, table_free == "rcu")
        self._core.set_mutants(bits)
        self._core.set_tlb_flush_mode(tlb_flush == "broadcast")
        self.tlb_flush = tlb_flush
        self.mutants = frozenset([mutants] if isinstance(mutants, str) else mutants)
        # an RLock that scheduled CPUs take by trying (pygup/sched.py)
        self._lock = SchedLock(self._core)
        self._cpu_owner: list[Optional[int]] = [None] * cpus   # thread ident per slot
        self._tls = threading.local()
        self.filesystems: list[FileSystem] = []
        self.processes: list = []
        self._next_pid = 1
        self._internal: dict[str, FileSystem] = {}
        self._next_anon_inode = 0
        self.device_frames: list[int] = []   # memory behind mmap_pfn() mappings
        self._pin_scope = 0        # memalloc_pin_save() nesting (under _lock)
        # reverse maps from a folio's mapping word to the model objects
        self._inodes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._anon_vmas: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    @property
    def nr_cpus(self) -> int:
        return self._core.nr_cpus

    # -- CPUs ------------------------------------------------------------------
    @contextlib.contextmanager
    def cpu(self, k: int) -> Iterator[int]:
        """Run the calling thread as emulated CPU ``k`` inside the block.  A
        CPU belongs to one thread at a time (EBUSY otherwise); the thread's
        previous CPU stays its own and is current again after the block."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.nr_cpus:
            raise ValueError(f"cpu must be in 0..{self.nr_cpus - 1}, got {k!r}")
        outer = getattr(self._tls, "slot", None)
        if outer is not None and outer.cpu == k:
            yield k
            return
        self._tls.slot = self._claim(k)
        try:
            yield k
        finally:
            self._tls.slot.detach()
            if outer is not None:
                self._tls.slot = outer
            else:
                del self._tls.slot

    def _claim(self, k: int) -> "_Slot":
        me = threading.get_ident()
        with self._lock:
            owner = self._cpu_owner[k]
            if owner is not None and owner != me and _thread_alive(owner):
                raise GupError(errno.EBUSY, f"cpu {k} is bound to another thread")
            self._cpu_owner[k] = me
        return _Slot(self, k)

    def current_cpu(self) -> int:
        """The emulated CPU of the calling thread; a thread that never chose
        one gets the lowest free slot, held until the thread ends."""
        slot = getattr(self._tls, "slot", None)
        if slot is not None:
            return slot.cpu
        for k in range(self.nr_cpus):
            try:
                self._tls.slot = self._claim(k)
                return k
            except GupError:
                continue
        raise GupError(errno.EBUSY, f"all {self.nr_cpus} emulated CPUs are bound to other threads")

    def local_irq_disable(self) -> None:
        self._core.irq_disable(self.current_cpu())

    def local_irq_enable(self) -> None:
        self._core.irq_enable(self.current_cpu())

    @contextlib.contextmanager
    def irqs_off(self) -> Iterator[None]:
        """Hold IRQs off on this thread's CPU: shootdowns (and, in IPI mode,
        table frees) aimed at it wait, and RCU grace periods cannot end."""
        cpu = self.current_cpu()
        self._core.irq_disable(cpu)
        try:
            yield
        finally:
            self._core.irq_enable(cpu)

    @contextlib.contextmanager
    def _op(self) -> Iterator[int]:
        """A model update: the machine lock, on this thread's CPU.  Like the
        kernel's might_sleep(), it refuses to run with IRQs off: it may wait
        for other CPUs' IPI acknowledgements."""
        cpu = self.current_cpu()
        if self._core.irqs_disabled(cpu):
            raise RuntimeError("a sleeping model operation was called with IRQs disabled")
        with self._lock:
            yield cpu
            self._core.rcu_poll()
        self._core.raise_violations()

    def run_concurrently(self, ops, seed: Optional[int] = 0, schedule=None,
                         points: Optional[Iterable[str]] = None, spin_limit: int = 0,
                         timeout: float = 60.0) -> Interleaving:
        """Run ``ops[i](machine)`` as CPU i, interleaved step by step at the
        race windows by a seeded, replayable scheduler: returns each op's
        result (or exception) and the schedule taken (``pygup.kernel.sched``)."""
        from pygup.kernel.sched import run_concurrently
        return run_concurrently(self, ops, seed=seed, schedule=schedule, points=points,
                                spin_limit=spin_limit, timeout=timeout)

    # -- memory ------------------------------------------------------------------
    def alloc_folio(self, order: int = 0, movable: bool = True) -> int:
        """Allocate a folio; movable allocations (GFP_HIGHUSER_MOVABLE) try
        ZONE_MOVABLE first, as the zonelist does, then ZONE_NORMAL."""
        if self._pin_scope:       # memalloc_pin_save(): no movable allocations
            movable = False
        zones = (C.ZONE_MOVABLE, C.ZONE_NORMAL) if movable else (C.ZONE_NORMAL,)
        for zone in zones:
            try:
                return self._core.folio_alloc(order, zone)
            except GupError as e:
                if e.errno != errno.ENOMEM:
                    raise
        raise GupError(errno.ENOMEM, f"no free order-{order} folio")

    def folio(self, pfn: int) -> Folio:
        """Inspect frame ``pfn`` and its folio."""
        if isinstance(pfn, bool) or not isinstance(pfn, int):
            raise ValueError(f"pfn must be an int, got {pfn!r}")
        fi = self._core.frame_info(pfn)
        low = fi.mapping & C.MAPPING_FLAGS
        kind = {0: "file", C.MAPPING_ANON: "anon", C.MAPPING_MOVABLE: "movable",
                C.MAPPING_KSM: "ksm"}[low]
        if fi.mapping == 0:
            kind = "none"
        return Folio(fi.pfn, fi.head, fi.order,
                     "movable" if fi.zone == C.ZONE_MOVABLE else "normal",
                     fi.refcount, fi.pincount, fi.mapcount, FolioFlag(fi.flags), kind,
                     fi.mapping >> 2, fi.index, fi.content)

    def _inode_by_as(self, as_id: int):
        """The Inode whose address_space record is as_id, if it still exists."""
        return self._inodes.get(as_id)

    def _anon_vma_by_id(self, av_id: int):
        return self._anon_vmas.get(av_id)

    def stats(self) -> dict[str, float]:
        """Counters of the C core plus ``bytes_per_page``: host bytes spent
        per emulated 4 KiB frame."""
        st = self._core.stats()
        st["bytes_per_page"] = st["frame_bytes"] / st["nr_frames"]
        st["processes"] = sum(1 for p in self.processes if p.alive)
        return st

    def check(self) -> None:
        """Raise InvariantError if the C core recorded a violation."""
        self._core.raise_violations()

    # -- file systems ------------------------------------------------------------
    def mount(self, preset: str, name: Optional[str] = None) -> FileSystem:
        """Mount a new file system of a preset type (``pygup.kernel.fs.PRESETS``)."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        return self._mount(PRESETS[preset], name)

    def mount_custom(self, name: str, *, page_mkwrite: bool = False, pfn_mkwrite: bool = False,
                     writeback: bool = False, kind: str = "regular",
                     attaches_private: bool = False,
                     skip_dirty_without_private: bool = False) -> FileSystem:
        """Mount a file system with capabilities of your choosing."""
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        fstype = FsType(name, bool(page_mkwrite), bool(pfn_mkwrite), bool(writeback), kind,
                        bool(attaches_private), bool(skip_dirty_without_private))
        return self._mount(fstype, name)

    def _mount(self, fstype: FsType, name: Optional[str]) -> FileSystem:
        base = name or fstype.name
        taken = {fs.name for fs in self.filesystems}
        unique, n = base, 1
        while unique in taken:
            unique, n = f"{base}-{n}", n + 1
        fs = FileSystem(self, unique, fstype)
        self.filesystems.append(fs)
        return fs

    def _internal_fs(self, preset: str) -> FileSystem:
        """The kernel-internal mounts: shm_mnt, hugetlbfs_vfsmount, secretmem_mnt."""
        fs = self._internal.get(preset)
        if fs is None:
            fs = self._mount(PRESETS[preset], f"[{preset}]")
            self._internal[preset] = fs
        return fs

    def _anon_inode(self, preset: str, name: str, size: int) -> File:
        fs = self._internal_fs(preset)
        self._next_anon_inode += 1
        file = fs.create(f"{name}#{self._next_anon_inode}", size)
        # unnamed: it lives only as long as its mappings and handles
        fs.files.pop(file.inode.name)
        file.inode.unlinked = True
        return file

    def memfd_create(self, name: str, size: int, hugetlb: bool = False) -> File:
        """memfd_create() + ftruncate(): a shmem (or hugetlbfs) file."""
        if not isinstance(name, str):
            raise ValueError(f"name must be a string, got {name!r}")
        return self._anon_inode("hugetlbfs" if hugetlb else "tmpfs", f"memfd:{name}", size)

    def memfd_secret(self, size: int) -> File:
        """memfd_secret() + ftruncate(): memory removed from the direct map."""
        return self._anon_inode("secretmem", "secretmem", size)

    # -- processes ---------------------------------------------------------------
    def spawn(self) -> "Process":
        """A new process with an empty address space."""
        from pygup.kernel.mm import Process
        with self._op():
            p = Process(self, self._next_pid)
            self._next_pid += 1
            self.processes.append(p)
            return p

    # -- writeback ---------------------------------------------------------------
    def all_inodes(self) -> list:
        seen: dict[int, object] = {}
        for fs in self.filesystems:
            for inode in fs.files.values():
                seen[id(inode)] = inode
        for p in self.processes:
            if p.alive:
                for vma in p.mm.vmas:
                    if vma.vm_file is not None:
                        seen[id(vma.vm_file)] = vma.vm_file
        return list(seen.values())

    def writeback(self) -> int:
        """sync(): write back every dirty folio of every file.  Returns pages
        written."""
        from pygup.kernel.writeback import writeback_inode
        with self._op():
            return sum(writeback_inode(inode) for inode in self.all_inodes())

    def evict(self, file: File) -> int:
        """Reclaim the file's clean folios (unmapping them); pinned or otherwise
        referenced folios stay, but lose their fs-private state.  Returns
        folios evicted."""
        from pygup.kernel.writeback import evict_inode
        if not isinstance(file, File):
            raise ValueError(f"file must be a pygup File, got {file!r}")
        with self._op():
            return evict_inode(file.inode)

    def __repr__(self) -> str:
        muts = f" mutants={sorted(self.mutants)}" if self.mutants else ""
        return (f"<Machine policy={self.policy.name} memory={self.memory >> 20}MiB "
                f"cpus={self.nr_cpus} table_free={self.table_free}{muts}>")


class _Slot:
    """A thread's binding to a CPU slot; frees the slot when the thread's
    thread-local storage (and so this object) goes away."""

    def __init__(self, machine: Machine, cpu: int) -> None:
        self._machine_lock = machine._lock
        self._owners = machine._cpu_owner
        self.cpu = cpu
        self._ident = threading.get_ident()
        self._attached = True

    def detach(self, locked: bool = True) -> None:
        if self._attached:
            self._attached = False
            if locked:
                with self._machine_lock:
                    self._release()
            else:
                self._release()

    def _release(self) -> None:
        if self._owners[self.cpu] == self._ident:
            self._owners[self.cpu] = None

    def __del__(self) -> None:
        # a finalizer must never block: the machine lock may be held by a
        # thread that waits on something this one holds (or is parked for
        # good by the scheduler).  One list store is atomic under the GIL,
        # and _claim() treats a slot of a dead thread as free anyway.
        try:
            self.detach(locked=False)
        except Exception:  # interpreter shutdown
            pass


def _thread_alive(ident: int) -> bool:
    return any(t.ident == ident for t in threading.enumerate())


from pygup.flags import MAP, PROT  # noqa: E402  (doctest names)
