"""``Kernel``: the emulated kernel's own state, held by every model object.

The C core, the machine lock, the CPU slots of the threads that enter the
emulator, the page allocator's entry, the policy and protection switches,
and the reverse maps from a folio's mapping word back to model objects.
``Machine`` (the user's front door) owns one ``Kernel``; a model object
(``MM``, ``VMA``, ``Inode``, ``Pages``...) reaches the core through
``self.kernel`` and never through the Machine.

Locking model (a deliberate simplification of the kernel's): every model
update that Python performs — faults, mmap/munmap/mprotect/fork, writeback,
truncate, eviction — runs under one lock (``Kernel.op()``), standing in for
mmap_lock, the PTE locks, the folio locks and i_mmap_rwsem together.  What
the kernel does *without* those locks runs in C without this one: the MMU's
user accesses through the TLB, IPI handling, RCU and GUP-fast.  Those are
the paths whose races pygup exists to study.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import threading
import weakref
from threading import get_ident
from typing import Iterator, Optional

from pygup._native import C, Core, _check
from pygup.config.mutants import Mutant
from pygup.config.policy import Policy
from pygup.flags import GupError


# the spin point a scheduled CPU parks at between tries of the machine lock
_MACHINE_LOCK_POINT = b"machine_lock"


class SchedLock:
    """The machine lock: a re-entrant lock that a scheduled CPU takes by
    trying and parking at the ``machine_lock`` spin point between tries
    (see the module docstring); anyone else blocks as on an RLock."""

    def __init__(self, core: Core) -> None:
        self._lock = threading.RLock()
        self._core = core
        self._owner: Optional[int] = None     # thread ident of the holder
        self.depth = 0                        # its nesting (written by the holder only)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return self._took()
        if not blocking:
            return False
        while self._core.sched_yield(_MACHINE_LOCK_POINT, True):
            if self._lock.acquire(blocking=False):
                return self._took()
        return self._lock.acquire(True, timeout) and self._took()

    def _took(self) -> bool:
        self._core.sched_note_model()
        self._owner = get_ident()
        self.depth += 1
        return True

    def held_once(self) -> bool:
        """Does the calling thread hold the lock, and only once?"""
        return self._owner == threading.get_ident() and self.depth == 1

    def release(self) -> None:
        # the model may have changed under the lock: a scheduled CPU tells
        # the schedule explorer's state digest (a no-op for anyone else)
        self._core.sched_note_model()
        self.depth -= 1
        if self.depth == 0:
            self._owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class Kernel:
    """One emulated kernel's state (see the module docstring)."""

    def __init__(self, core: Core, policy: Policy, mutants: frozenset[Mutant]) -> None:
        self.core = core
        self.policy = policy
        self.mutants = mutants
        # /sys/kernel/mm/transparent_hugepage/enabled (kernel/thp.py)
        self.thp = "madvise"
        # an RLock that scheduled CPUs take by trying (kernel/sched.py's docstring)
        self.lock = SchedLock(core)
        self.cpu_owner: list[Optional[int]] = [None] * core.nr_cpus  # thread ident per slot
        self._tls = threading.local()
        self.pin_scope = 0            # memalloc_pin_save() nesting (under the lock)
        # runs of anonymous faults in C (mm/fault.c); False sends every fault
        # through kernel/fault.py alone, the reference the batch is tested against
        self.fault_batch = True
        self.filesystems: list = []          # every vfs.FileSystem mounted
        self.internal_mounts: dict = {}      # shm_mnt, hugetlbfs, secretmem: preset -> FileSystem
        self.next_anon_inode = 0
        # fput()s of File handles that Python dropped (their finalizers may run
        # on any thread, at any time: they only append here)
        self.delayed_fput: collections.deque = collections.deque()
        self._op_depth = 0
        self.processes: list = []            # every process.Process, exited ones too
        self.next_pid = 1
        self.device_frames: list[int] = []   # memory behind mmap_pfn() mappings
        # reverse maps from a folio's mapping word to the model objects
        self.inodes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.anon_vmas: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # a Trace that every GUP call records into while explain's
        # trace_calls() block is open (None: calls record nothing)
        self.trace_sink = None

    @property
    def nr_cpus(self) -> int:
        return self.core.nr_cpus

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
        with self.lock:
            owner = self.cpu_owner[k]
            if owner is not None and owner != me and thread_alive(owner):
                raise GupError(errno.EBUSY, f"cpu {k} is bound to another thread")
            self.cpu_owner[k] = me
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

    def op(self) -> "_Op":
        """A model update: the machine lock, on this thread's CPU.  Like the
        kernel's might_sleep(), it refuses to run with IRQs off: it may wait
        for other CPUs' IPI acknowledgements.  ``with kernel.op() as cpu:``"""
        return _Op(self)

    def mmap_lock_break(self, point: bytes) -> None:
        """A registered Python race window (csrc/kernel/race.h) where the
        kernel holds mmap_lock only for read, or may drop it: there other
        readers — faults, GUP, MADV_DONTNEED — run beside this operation.
        pygup's one machine lock stands for mmap_lock held for write, so
        here it is released (when this thread holds it once), the CPU may
        be switched, and it is taken back; the caller looks its VMA up again,
        as the kernel does after the lock was dropped.  Where the lock is
        nested only the scheduling point remains."""
        lock = self.lock
        if not lock.held_once():
            self.core.sched_yield(point, False)
            return
        scope, self.pin_scope = self.pin_scope, 0      # memalloc_pin_save() is per task
        lock.release()
        try:
            self.core.sched_yield(point, False)
        finally:
            lock.acquire()
            self.pin_scope = scope

    def _run_delayed_fput(self) -> None:
        """/* mirrors delayed_fput() */: the File handles Python dropped since
        the last operation release their inodes, under the machine lock."""
        while self.delayed_fput:
            self.delayed_fput.popleft()()     # vfs.fput(inode)

    # -- memory ------------------------------------------------------------------
    def alloc_folio(self, order: int = 0, movable: bool = True) -> int:
        """Allocate a folio; movable allocations (GFP_HIGHUSER_MOVABLE) try
        ZONE_MOVABLE first, as the zonelist does, then ZONE_NORMAL."""
        if self.pin_scope:       # memalloc_pin_save(): no movable allocations
            movable = False
        core = self.core
        if movable:
            pfn = core.folio_alloc_or_errno(order, C.ZONE_MOVABLE)
            if pfn != -errno.ENOMEM:         # the zonelist's fallback, by value
                return _check(pfn, "folio_alloc")
        pfn = core.folio_alloc_or_errno(order, C.ZONE_NORMAL)
        if pfn == -errno.ENOMEM:
            raise GupError(errno.ENOMEM, f"no free order-{order} folio")
        return _check(pfn, "folio_alloc")

    # -- reverse maps --------------------------------------------------------------
    def inode_by_as(self, as_id: int):
        """The Inode whose address_space record is as_id, if it still exists."""
        return self.inodes.get(as_id)

    def anon_vma_by_id(self, av_id: int):
        return self.anon_vmas.get(av_id)

    def has_mutant(self, m: Mutant) -> bool:
        return m in self.mutants


class _Op:
    """``Kernel.op()``'s context: a class rather than a generator, since it
    runs around every model call (a @contextmanager costs microseconds).
    On the way out it polls RCU and raises the C core's violations; an
    exception out of the block skips both, as it always did."""

    __slots__ = ("_k",)

    def __init__(self, kernel: Kernel) -> None:
        self._k = kernel

    def __enter__(self) -> int:
        k = self._k
        cpu = k.current_cpu()
        if k.core.irqs_disabled(cpu):
            raise RuntimeError("a sleeping model operation was called with IRQs disabled")
        k.lock.acquire()
        k._op_depth += 1
        if k._op_depth == 1 and k.delayed_fput:
            try:
                k._run_delayed_fput()
            except BaseException:
                k._op_depth -= 1
                k.lock.release()
                raise
        return cpu

    def __exit__(self, exc_type, exc, tb) -> bool:
        k = self._k
        k._op_depth -= 1
        if exc_type is not None:
            k.lock.release()
            return False
        try:
            k.core.rcu_poll()
        finally:
            k.lock.release()
        k.core.raise_violations()
        return False


class _Slot:
    """A thread's binding to a CPU slot; frees the slot when the thread's
    thread-local storage (and so this object) goes away."""

    def __init__(self, kernel: Kernel, cpu: int) -> None:
        self._lock = kernel.lock
        self._owners = kernel.cpu_owner
        self.cpu = cpu
        self._ident = threading.get_ident()
        self._attached = True

    def detach(self, locked: bool = True) -> None:
        if self._attached:
            self._attached = False
            if locked:
                with self._lock:
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


def thread_alive(ident: int) -> bool:
    return any(t.ident == ident for t in threading.enumerate())
