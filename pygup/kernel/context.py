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
import warnings
import weakref
from threading import get_ident
from typing import Iterator, Optional

from pygup._native import C, Core, _check
from pygup.config.mutants import Mutant
from pygup.config.policy import Policy
from pygup.errors import IrqsDisabledError
from pygup.flags import GupError


# the spin point a scheduled CPU parks at between tries of the machine lock
_MACHINE_LOCK_POINT = b"machine_lock"


class SchedLock:
    """The machine lock: a re-entrant lock that a scheduled CPU takes by
    trying and parking at the ``machine_lock`` spin point between tries
    (see the module docstring); anyone else blocks as on an RLock."""

    def __init__(self, core: Core) -> None:
        self._lock = threading.RLock()
        # the RLock itself, for a caller that runs only a C entry under the
        # lock, one that declines while a scheduler session runs: it takes
        # it without waiting (acquire(False)) and without the scheduler's
        # bookkeeping (sched_note_model, the holder's ident and depth)
        self.plain = self._lock
        self._core = core
        self._owner: Optional[int] = None     # thread ident of the holder
        self.depth = 0                        # its nesting (written by the holder only)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            # _took(), inline: this runs around every model operation
            if self._core.sched_session:
                self._core.sched_note_model()
            self._owner = get_ident()
            self.depth += 1
            return True
        if not blocking:
            return False
        while self._core.sched_yield(_MACHINE_LOCK_POINT, True):
            if self._lock.acquire(blocking=False):
                return self._took()
        return self._lock.acquire(True, timeout) and self._took()

    def _took(self) -> bool:
        if self._core.sched_session:      # (a no-op without one: no C call)
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
        if self._core.sched_session:
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
        # [True] once a thread ended without leaving its CPU (set by the
        # slot's finalizer, which may not call C): the next op() repairs
        self.orphan_hint = [False]
        self.cpu_owner: list[Optional[int]] = [None] * core.nr_cpus  # thread ident per slot
        self._tls = threading.local()
        self.pin_scope = 0            # memalloc_pin_save() nesting (under the lock)
        # runs of anonymous faults in C (mm/fault.c); False sends every fault
        # through kernel/fault.py alone, the reference the batch is tested against
        self.fault_batch = True
        # writeback a run of folios per C call (kernel/writeback.py); False
        # writes back folio by folio, the reference the batch is tested against
        self.writeback_batch = True
        # small GUP calls in one C call each (gup.py, csrc/mm/gup_call.c);
        # False sends every call the general way, the reference they are
        # tested against
        self.small_calls = True
        self.filesystems: list = []          # every vfs.FileSystem mounted
        self.internal_mounts: dict = {}      # shm_mnt, hugetlbfs, secretmem: preset -> FileSystem
        self.next_anon_inode = 0
        # fput()s of File handles that Python dropped (their finalizers may run
        # on any thread, at any time: they only append here)
        self.delayed_fput: collections.deque = collections.deque()
        self._op_depth = 0
        self._op = _Op(self)                 # op()'s context: it keeps no state of its own
        self.processes: list = []            # every process.Process, exited ones too
        self.next_pid = 1
        self.device_frames: list[int] = []   # memory behind mmap_pfn() mappings
        # reverse maps from a folio's mapping word to the model objects
        self.inodes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.anon_vmas: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # a Trace that every GUP call records into while explain's
        # trace_calls() block is open (None: calls record nothing)
        self.trace_sink = None
        # gup.check_gup_args_cached(): the policy its answers hold for, and
        # the answers (pure functions of the policy and the call's flags)
        self.gup_args_policy: Optional[Policy] = None
        self.gup_args_cache: dict[int, Optional[int]] = {}

    @property
    def nr_cpus(self) -> int:
        return self.core.nr_cpus

    # -- CPUs ------------------------------------------------------------------
    def cpu(self, k: int) -> "_CpuBlock":
        """Run the calling thread as emulated CPU ``k`` inside the block.  A
        CPU belongs to one thread at a time (EBUSY otherwise); the thread's
        previous CPU stays its own and is current again after the block.
        Blocks may end in any order.  Leaving a CPU with IRQs still disabled
        is repaired with a warning (the kernel warns when it returns to user
        space with IRQs off): otherwise every shootdown aimed at it would
        wait for ever."""
        return _CpuBlock(self, k)

    def _stack(self) -> list:
        """The calling thread's CPU slots, the current one last."""
        stack = getattr(self._tls, "stack", None)
        if stack is None:
            stack = self._tls.stack = []
        return stack

    def _claim(self, k: int) -> "_Slot":
        me = threading.get_ident()
        with self.lock:
            owner = self.cpu_owner[k]
            if owner is not None and owner != me and thread_alive(owner):
                raise GupError(errno.EBUSY, f"cpu {k} is bound to another thread")
            if owner != me:
                self._repair_cpu(k)          # a dead thread may have left IRQs off
            self.cpu_owner[k] = me
        return _Slot(self, k)

    def current_cpu(self) -> int:
        """The emulated CPU of the calling thread; a thread that never chose
        one gets the lowest free slot, held until the thread ends (so a
        machine serves at most ``cpus`` threads at once: see Machine)."""
        try:
            return self._tls.stack[-1].cpu       # the common case: one look
        except (AttributeError, IndexError):
            pass
        stack = self._stack()
        if stack:
            return stack[-1].cpu
        for k in range(self.nr_cpus):
            try:
                stack.append(self._claim(k))
                return k
            except GupError:
                continue
        others = {o for o in self.cpu_owner if o is not None}
        raise GupError(errno.EBUSY,
                       f"all {self.nr_cpus} emulated CPUs are bound to other threads (each thread "
                       f"that used the machine keeps its CPU until it ends): create the Machine "
                       f"with cpus={len(others) + 1} or more for {len(others) + 1} threads, or "
                       f"let threads take turns with 'with machine.cpu(k):' blocks")

    def repair_orphaned_cpus(self) -> None:
        """A CPU whose thread ended without leaving it, with IRQs disabled,
        would make every shootdown and grace period wait for ever: enable
        its IRQs again, with a warning (the kernel's warning on returning
        to user space with IRQs off).  Run before anything that may wait
        for other CPUs."""
        for k in range(self.nr_cpus):
            if not self.core.irqs_disabled(k):
                continue
            owner = self.cpu_owner[k]
            if owner is None or not thread_alive(owner):
                self._repair_cpu(k)

    def _repair_cpu(self, k: int) -> None:
        """Enable IRQs on CPU k, which no live thread runs, with a warning."""
        n = 0
        while self.core.irqs_disabled(k) and n < 1 << 16:
            self.core.irq_enable(k)
            n += 1
        if n:
            warnings.warn(f"cpu {k} was left with IRQs disabled by a thread that ended; "
                          "they were enabled again", RuntimeWarning, stacklevel=4)

    @contextlib.contextmanager
    def alone(self, what: str) -> Iterator[None]:
        """For a run that drives the C core on every CPU itself (a native
        stress campaign): EBUSY at the start if another thread is inside the
        machine or holds a CPU, or a CPU has IRQs disabled (its IPIs would
        never be answered); else the machine lock for the whole run, so no
        other thread can start anything meanwhile."""
        if not self.lock.acquire(blocking=False):
            raise GupError(errno.EBUSY, f"{what} needs the machine alone: another thread is "
                                        "inside it")
        try:
            self.repair_orphaned_cpus()
            me = threading.get_ident()
            for k, owner in enumerate(self.cpu_owner):
                if owner is not None and owner != me and thread_alive(owner):
                    raise GupError(errno.EBUSY, f"{what} needs the machine alone: cpu {k} is "
                                                "bound to another thread")
                if self.core.irqs_disabled(k):
                    raise GupError(errno.EBUSY, f"{what} needs every CPU: cpu {k} has IRQs "
                                                "disabled, so it would never answer an IPI")
            yield
        finally:
            self.lock.release()

    def op(self) -> "_Op":
        """A model update: the machine lock, on this thread's CPU.  Like the
        kernel's might_sleep(), it refuses to run with IRQs off: it may wait
        for other CPUs' IPI acknowledgements.  ``with kernel.op() as cpu:``"""
        return self._op

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
        ZONE_MOVABLE first, as the zonelist does, then ZONE_NORMAL.  A machine
        without a movable zone (the default) has none in its zonelist."""
        if self.pin_scope:       # memalloc_pin_save(): no movable allocations
            movable = False
        core = self.core
        if movable and core.nr_movable:
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
    runs around every model call (a @contextmanager costs microseconds);
    one per Kernel, shared by nested blocks (its state is the Kernel's).
    On the way out it polls RCU and raises the C core's violations; an
    exception out of the block skips both, as it always did."""

    __slots__ = ("_k",)

    def __init__(self, kernel: Kernel) -> None:
        self._k = kernel

    def __enter__(self) -> int:
        k = self._k
        cpu = k.current_cpu()
        if k.core.irqs_disabled(cpu):
            raise IrqsDisabledError(f"a sleeping model operation was called with IRQs disabled "
                                    f"on cpu {cpu}: it would wait for itself")
        k.lock.acquire()
        if k.orphan_hint[0]:
            # a thread ended without leaving its CPU since the last look
            k.orphan_hint[0] = False
            try:
                k.repair_orphaned_cpus()
            except BaseException:
                k.lock.release()
                raise
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


class _CpuBlock:
    """``Kernel.cpu(k)``'s context: a class rather than a generator (as
    _Op), since the harness and the callers enter one around many model
    calls.  The argument is checked on entry, as a generator's would be."""

    __slots__ = ("_k", "_cpu", "_slot", "_stack")

    def __init__(self, kernel: Kernel, k: int) -> None:
        self._k = kernel
        self._cpu = k
        self._slot: Optional[_Slot] = None

    def __enter__(self) -> int:
        kernel, k = self._k, self._cpu
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < kernel.nr_cpus:
            raise ValueError(f"cpu must be in 0..{kernel.nr_cpus - 1}, got {k!r}")
        stack = kernel._stack()
        if stack and stack[-1].cpu == k:
            return k                          # already this CPU: nothing to undo
        slot = kernel._claim(k)
        stack.append(slot)
        self._slot, self._stack = slot, stack
        return k

    def __exit__(self, *exc) -> bool:
        slot = self._slot
        if slot is None:
            return False
        self._slot = None
        stack = self._stack
        # out of order is fine: drop this block's own slot wherever it is
        if slot in stack:
            stack.remove(slot)
        if not any(s.cpu == self._cpu for s in stack):
            slot.leave(stacklevel=3)
            slot.detach()
        return False


class _Slot:
    """A thread's binding to a CPU slot; frees the slot when the thread's
    thread-local storage (and so this object) goes away."""

    def __init__(self, kernel: Kernel, cpu: int) -> None:
        self._lock = kernel.lock
        self._core = kernel.core
        self._hint = kernel.orphan_hint
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

    def leave(self, stacklevel: int = 4) -> None:
        """The thread leaves the CPU: IRQs it left disabled are enabled
        again, with a warning (the kernel's "entering user mode with IRQs
        disabled" warning), so that no shootdown or grace period waits for
        a CPU nobody runs.  ``stacklevel``: the warning's, from here to the
        user's block."""
        n = self._enable_irqs()
        if n:
            warnings.warn(f"cpu {self.cpu} was left with IRQs disabled ({n} level(s)); "
                          "they were enabled again", RuntimeWarning, stacklevel=stacklevel)

    def _enable_irqs(self) -> int:
        """Enable IRQs on the slot's CPU down to nesting 0; levels undone."""
        n = 0
        while self._core.irqs_disabled(self.cpu) and n < 1 << 16:
            self._core.irq_enable(self.cpu)
            n += 1
        return n

    def _release(self) -> None:
        if self._owners[self.cpu] == self._ident:
            self._owners[self.cpu] = None

    def __del__(self) -> None:
        # a finalizer must never block: the machine lock may be held by a
        # thread that waits on something this one holds (or is parked for
        # good by the scheduler).  One list store is atomic under the GIL,
        # and _claim() treats a slot of a dead thread as free anyway.
        # No C call here: at interpreter shutdown the core may be gone
        # already.  IRQs a dead thread left disabled are enabled by the
        # next model operation (Kernel.repair_orphaned_cpus()), told by
        # the hint; a wait already in C ends by itself (pg_cpu_reap_orphan).
        try:
            self._hint[0] = True
            self.detach(locked=False)
        except Exception:  # interpreter shutdown
            pass


def thread_alive(ident: int) -> bool:
    return any(t.ident == ident for t in threading.enumerate())
