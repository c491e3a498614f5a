"""``Machine``: the user's front door — physical memory, CPUs, policy,
mounted file systems, processes, and inspection of frames and counters.

The emulated kernel behind it is a ``pygup.kernel.context.Kernel``
(``machine.kernel``), which every model object holds; the Machine only
builds it and offers the user's calls (the locking model is described
there).
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import re
from typing import Iterable, Iterator, Optional

from pygup._native import C, Core
from pygup.config.mutants import resolve_mutants
from pygup.config.policy import Policy, resolve
from pygup.flags import TASK_SIZE, GupError, bool_arg, int_arg
from pygup.kernel.context import Kernel
from pygup.kernel.fs import PRESETS, FsType
from pygup.kernel.process import Process
from pygup.kernel.sched import Interleaving, run_concurrently
from pygup.kernel.thp import check_thp_setting, collapse_pmd
from pygup.kernel.vfs import File, FileSystem, anon_inode_file, mount
from pygup.kernel.writeback import evict_inode, writeback_inode

FolioFlag = enum.IntFlag("FolioFlag", {name[2:]: getattr(C, name)
                                      for name in sorted(vars(C)) if name.startswith("F_")})

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30}


def parse_size(value: int | str, name: str) -> int:
    """'1GiB' / '64MiB' / 4096 -> bytes; ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a size, got {value!r}")
    if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, float)):
        n = int_arg(value, name)
    elif isinstance(value, str):
        # ASCII digits only: int() would read other scripts' digits too
        m = re.fullmatch(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*", value, re.ASCII)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must look like '1GiB' or '64MiB', got {value!r}")
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise ValueError(f"{name} must be a size, got {value!r}")
    if n < 0:
        raise ValueError(f"{name} must not be negative")
    if n > C.MAX_FRAMES * C.PAGE_SIZE:
        raise ValueError(f"{name} must be at most {C.MAX_FRAMES * C.PAGE_SIZE >> 30} GiB "
                         f"(the core numbers frames in 32 bits), got {value!r}")
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
    # folio_maybe_dma_pinned(), as the C core decides it (csrc/mm/frames.h)
    maybe_dma_pinned: bool

    @property
    def dirty(self) -> bool:
        return bool(self.flags & FolioFlag.DIRTY)

    def _repr_html_(self) -> str:
        from pygup.kernel.html import fields_table
        return fields_table(f"folio of frame {self.pfn:#x}", [
            ("head", hex(self.head)), ("order", self.order), ("zone", self.zone),
            ("refcount", self.refcount), ("pincount", self.pincount),
            ("mapcount", self.mapcount), ("maybe DMA-pinned", self.maybe_dma_pinned),
            ("flags", str(self.flags)), ("mapping", f"{self.mapping} #{self.mapping_id}"),
            ("index", self.index), ("content", hex(self.content))])


class Machine:
    """An emulated machine.

    >>> m = Machine(memory="64MiB", cpus=2)
    >>> fs = m.mount("ext4")
    >>> f = fs.create("data", 4096)
    >>> p = m.spawn()
    >>> addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    >>> p.write(addr, 42); f.writeback(); f.disk(0)
    1
    42

    Threads: every OS thread that calls into the machine runs as one of its
    ``cpus`` emulated CPUs and keeps it until the thread ends (the main
    thread takes CPU 0 at its first call).  So a machine serves at most
    ``cpus`` threads at once: a thread beyond that gets ``GupError(EBUSY)``,
    whose message says how many CPUs to ask for.  Create the machine with
    ``cpus=`` one per thread, or let threads take turns inside
    ``with machine.cpu(k):`` blocks (a block frees its CPU when it ends).
    A thread must not leave a CPU with IRQs disabled: that is repaired with
    a ``RuntimeWarning``.
    """

    def __init__(self, policy: str | Policy = "6.5", memory: int | str = "1GiB",
                 movable: int | str = 0, cpus: int = 2, table_free: str = "rcu",
                 mutants: Iterable[str] = (), tlb_flush: str = "ipi",
                 secretmem: Optional[bool] = None, thp: str = "madvise") -> None:
        """``policy``: a kernel version from 6.1 to 6.18 ("6.8", "6.1.192") or
        a Policy.  ``movable``: the size of ZONE_MOVABLE, as ``movablecore=``
        asks for one (a default kernel has none, so long-term pins never
        migrate).  ``secretmem``: the ``secretmem.enable=`` boot parameter
        (default: the kernel's, on from 6.5).  ``thp``: the
        ``transparent_hugepage/enabled`` setting, "always", "madvise" (the
        default, as on this machine; Debian's kernels use "always") or
        "never" (kernel/thp.py)."""
        self.policy = resolve(policy)
        if secretmem is None:
            secretmem = self.policy.secretmem_enabled_by_default
        elif not isinstance(secretmem, bool):
            raise ValueError(f"secretmem must be True, False or None, got {secretmem!r}")
        self.secretmem_enabled = secretmem
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
        # /sys/kernel/mm/transparent_hugepage/enabled: "madvise" as on this
        # machine (Debian's kernels default to "always")
        thp = check_thp_setting(thp)
        self.memory = mem
        self.table_free = table_free
        self.tlb_flush = tlb_flush
        switches = resolve_mutants(mutants)
        core = Core(mem // C.PAGE_SIZE, mov // C.PAGE_SIZE, cpus, table_free == "rcu")
        core.set_mutants(sum(m.bit for m in switches))
        core.set_tlb_flush_mode(tlb_flush == "broadcast")
        self.kernel = Kernel(core, self.policy, switches)
        self.kernel.thp = thp
        self._core = core          # the C core, for tests and tools that drive it directly

    @property
    def thp(self) -> str:
        """The transparent_hugepage/enabled setting: always, madvise or never."""
        return self.kernel.thp

    @thp.setter
    def thp(self, value: str) -> None:
        self.kernel.thp = check_thp_setting(value)

    def collapse(self, process: Process, addr: int) -> int:
        """khugepaged's collapse of the 2 MiB range around addr in process
        into one PMD-mapped THP, now (kernel/thp.py collapse_pmd; the
        machine's thp setting applies, as it does to khugepaged).  Returns
        0 (collapsed, or already a THP) or a negative errno: -EINVAL the
        range cannot hold a THP, -EAGAIN a page is pinned or holds extra
        references, -ENOMEM no free 2 MiB block."""
        if not isinstance(process, Process):
            raise TypeError(f"process must be a pygup Process, got {type(process).__name__}")
        if isinstance(addr, bool) or not isinstance(addr, int):
            raise TypeError(f"addr must be an int, got {type(addr).__name__}")
        if process.kernel is not self.kernel:
            raise ValueError("process belongs to another machine")
        if not process.alive:
            raise GupError(errno.ESRCH, f"process {process.pid} has exited")
        if not 0 <= addr < TASK_SIZE:
            return -errno.EINVAL
        with self.kernel.op() as cpu:
            return collapse_pmd(process.mm, addr, cpu, enforce_sysfs=True)

    @property
    def mutants(self) -> frozenset:
        """The protection switches planted in this machine (names)."""
        return frozenset(m.value for m in self.kernel.mutants)

    @property
    def nr_cpus(self) -> int:
        return self.kernel.nr_cpus

    @property
    def filesystems(self) -> list[FileSystem]:
        return self.kernel.filesystems

    @property
    def processes(self) -> list[Process]:
        return self.kernel.processes

    @property
    def device_frames(self) -> list[int]:
        return self.kernel.device_frames

    # -- CPUs ------------------------------------------------------------------
    def cpu(self, k: int):
        """Run the calling thread as emulated CPU ``k`` inside the block (a
        context manager).  A CPU belongs to one thread at a time (EBUSY
        otherwise); the thread's previous CPU is current again after it."""
        return self.kernel.cpu(k)

    def current_cpu(self) -> int:
        """The emulated CPU of the calling thread; a thread that never chose
        one gets the lowest free slot, held until the thread ends."""
        return self.kernel.current_cpu()

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

    def run_concurrently(self, ops, seed: Optional[int] = 0, schedule=None,
                         points: Optional[Iterable[str]] = None, spin_limit: int = 0,
                         timeout: float = 60.0, digests: bool = False,
                         watch=None) -> Interleaving:
        """Run ``ops[i](machine)`` as CPU i, interleaved step by step at the
        race windows by a seeded, replayable scheduler: returns each op's
        result (or exception) and the schedule taken (``pygup.kernel.sched``)."""
        return run_concurrently(self.kernel, ops, seed=seed, schedule=schedule, points=points,
                                spin_limit=spin_limit, timeout=timeout, op_arg=self,
                                digests=digests, watch=watch)

    # -- memory ------------------------------------------------------------------
    def alloc_folio(self, order: int = 0, movable: bool = True) -> int:
        """Allocate a folio; movable allocations (GFP_HIGHUSER_MOVABLE) try
        ZONE_MOVABLE first, as the zonelist does, then ZONE_NORMAL.  Orders:
        0 or a PMD's (``PMD_ORDER``), the only sizes the core allocates."""
        order = int_arg(order, "order")
        if order not in (0, C.PMD_ORDER):
            raise ValueError(f"order must be 0 or {C.PMD_ORDER}, got {order}")
        return self.kernel.alloc_folio(order, bool_arg(movable, "movable"))

    def folio(self, pfn: int) -> Folio:
        """Inspect frame ``pfn`` and its folio."""
        if isinstance(pfn, (bool, float)) or not hasattr(pfn, "__index__"):
            raise ValueError(f"pfn must be an int, got {pfn!r}")
        pfn = int_arg(pfn, "pfn")
        if not 0 <= pfn < self._core.nr_frames:
            # the core's own answer for a frame it does not have
            raise GupError(errno.EINVAL, f"pfn {pfn} is not a frame of this machine "
                                         f"(0..{self._core.nr_frames - 1})")
        fi = self._core.frame_info(pfn)
        low = fi.mapping & C.MAPPING_FLAGS
        kind = {0: "file", C.MAPPING_ANON: "anon", C.MAPPING_MOVABLE: "movable",
                C.MAPPING_KSM: "ksm"}[low]
        if fi.mapping == 0:
            kind = "none"
        return Folio(fi.pfn, fi.head, fi.order,
                     "movable" if fi.zone == C.ZONE_MOVABLE else "normal",
                     fi.refcount, fi.pincount, fi.mapcount, FolioFlag(fi.flags), kind,
                     fi.mapping >> 2, fi.index, fi.content, self._maybe_dma_pinned(pfn))

    def _maybe_dma_pinned(self, pfn: int) -> bool:
        try:
            return self._core.folio_maybe_dma_pinned(pfn)
        except GupError:            # a free frame: no folio, no pin
            return False

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
        return mount(self.kernel, fstype, name)

    def memfd_create(self, name: str, size: int, hugetlb: bool = False) -> File:
        """memfd_create() + ftruncate(): a shmem (or hugetlbfs) file."""
        if not isinstance(name, str):
            raise ValueError(f"name must be a string, got {name!r}")
        return anon_inode_file(self.kernel, "hugetlbfs" if hugetlb else "tmpfs",
                               f"memfd:{name}", size)

    def memfd_secret(self, size: int) -> File:
        """memfd_secret() + ftruncate(): memory removed from the direct map.
        ENOSYS unless secretmem is enabled (mirrors memfd_secret()'s
        ``secretmem_enable`` test: off by default before 6.5)."""
        if not self.secretmem_enabled:
            raise GupError(errno.ENOSYS, "memfd_secret: secretmem is disabled "
                           "(boot with secretmem.enable=1: Machine(secretmem=True))")
        return anon_inode_file(self.kernel, "secretmem", "secretmem", size)

    # -- processes ---------------------------------------------------------------
    def spawn(self) -> Process:
        """A new process with an empty address space."""
        k = self.kernel
        with k.op():
            p = Process(k, k.next_pid)
            k.next_pid += 1
            k.processes.append(p)
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
        with self.kernel.op():
            return sum(writeback_inode(inode) for inode in self.all_inodes())

    def evict(self, file: File) -> int:
        """Reclaim the file's clean folios (unmapping them); pinned or otherwise
        referenced folios stay, but lose their fs-private state.  Returns
        folios evicted."""
        if not isinstance(file, File):
            raise ValueError(f"file must be a pygup File, got {file!r}")
        with self.kernel.op():
            return evict_inode(file.inode)

    def _repr_html_(self) -> str:
        from pygup.kernel.html import fields_table
        fs = ", ".join(f.name for f in self.kernel.filesystems) or "none"
        return fields_table("Machine", [
            ("policy", self.policy.name), ("memory", f"{self.memory >> 20} MiB"),
            ("cpus", self.nr_cpus), ("table_free", self.table_free),
            ("mutants", ", ".join(sorted(self.mutants)) or "none"), ("file systems", fs),
            ("processes", sum(1 for p in self.processes if p.alive))])

    def __repr__(self) -> str:
        muts = f" mutants={sorted(self.mutants)}" if self.mutants else ""
        return (f"<Machine policy={self.policy.name} memory={self.memory >> 20}MiB "
                f"cpus={self.nr_cpus} table_free={self.table_free}{muts}>")


