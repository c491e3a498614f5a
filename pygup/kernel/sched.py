"""Deterministic interleavings: ``Machine.run_concurrently`` over the C
scheduler (csrc/kernel/sched.c).

Real threads find races by luck.  Here each operation runs as its own
emulated CPU (op i on CPU i, on its own Python thread, kept for the next
run), but only one CPU runs at a time: the running CPU goes on until it
reaches a *scheduling point* — a named race window in the C core
(``PG_YIELD``: ``fast_pte_read``, ``zap_cleared``, ``folio_mapping_set``...),
a Python-level point (:func:`yield_point`), or any step of a wait on
another CPU — parks there, and a seeded choice (or an explicit schedule)
says which CPU takes the next step.  The same seed, or the schedule a run
returns, gives the same run::

    >>> from pygup import Machine, MAP, PROT
    >>> def world():
    ...     m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    ...     p = m.spawn()
    ...     a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    ...     p.write(a, 1)
    ...     return m, [lambda m: p.read(a), lambda m: p.write(a, 2)]
    >>> m, ops = world()
    >>> run = m.run_concurrently(ops, seed=7)
    >>> m, ops = world()
    >>> again = m.run_concurrently(ops, schedule=run.schedule)
    >>> again.schedule == run.schedule and again.results == run.results
    True

The Python machine lock: the classic trap, and the decision
---------------------------------------------------------------
Model updates run under one Python lock (``Machine._op()``).  A CPU can park
at a C yield point *while holding it* (a munmap parked between its PTE clear
and its flush).  If another CPU were then picked and blocked on that lock in
Python, nothing would ever run again: the lock holder waits for its turn,
the turn's owner waits for the lock.  So the machine lock is scheduler-aware
(``pygup.kernel.context.SchedLock``, the Kernel's lock for its whole life): it first
tries to take the lock without blocking; a scheduled CPU that fails parks
at a *spin* point named ``machine_lock`` and tries again when picked.  A
spinning CPU is picked only when no CPU is runnable, so the holder runs on
and releases it.  Spinning through the scheduler, rather than blocking, also
keeps runs deterministic: whether the try fails depends only on the
schedule.  Threads that are not scheduled CPUs (everything outside
``run_concurrently``) block on the lock as before.

The same rule covers every wait in C (IPI acknowledgement, RCU grace period,
spinlocks): each step of the wait is a spin point.  When every live CPU only
spins for ``spin_limit`` picks, nothing can change any more; the scheduler
marks the session deadlocked and :class:`SchedDeadlock` is raised (the parked
threads cannot be resumed safely, so they stay parked and the machine is kept
alive on purpose).  A CPU that blocks on something *outside* the emulator
(another Python lock, I/O) while it holds the turn stalls the run:
``timeout`` turns that into :class:`SchedTimeout`.

Rules for ops: touch only the machine (the main thread must not use it
meanwhile); CPU binding is done for you (op i is CPU i for the whole op: a
CPU the calling thread holds is lent to the op and given back).  The CPU
threads outlive the run, so a CPU of another machine that an op binds
without a ``with machine.cpu(k):`` block stays bound to that thread.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

from pygup._native import C
from pygup.flags import GupError

if TYPE_CHECKING:  # pragma: no cover
    from pygup._native import Core
    from pygup.kernel.context import Kernel

__all__ = ["Interleaving", "SchedError", "SchedDeadlock", "SchedTimeout",
           "ScheduleDiverged", "run_concurrently", "yield_point"]

# machines whose CPUs are parked forever (deadlock, timeout): their memory
# must outlive the parked threads
_KEEP_ALIVE: list = []


class _CpuThread:
    """An OS thread that runs scheduled CPU ``i``'s op, one run after
    another.  Starting and joining two fresh threads cost about as much as
    a short explored schedule itself, so a finished run's threads wait
    here for the next run (``_IDLE``).  A thread parked for good (deadlock,
    timeout) never comes back."""

    def __init__(self, i: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # set when a run left this thread in a state it cannot vouch for
        # (its CPU body raised: the detach itself failed): it ends
        self.retired = False
        threading.Thread(target=self._loop, name=f"pygup-cpu{i}", daemon=True).start()

    def _loop(self) -> None:
        while not self.retired:
            kernel, i, op, op_arg, results, finished = self._jobs.get()
            try:
                _cpu_body(kernel, i, op, op_arg, results)
            except BaseException as e:   # pragma: no cover - sched_detach failed
                if results[i] is None:
                    results[i] = e
                self.retired = True
            finally:
                # an idle thread must not keep the run's machine alive
                kernel = op = op_arg = results = None
                finished.release()

    def start(self, kernel: "Kernel", i: int, op: Callable, op_arg: Any, results: list,
              finished: threading.Lock) -> None:
        self._jobs.put((kernel, i, op, op_arg, results, finished))


# CPU index -> the threads of finished runs, ready for the next one
_IDLE: dict[int, list[_CpuThread]] = {}
_IDLE_LOCK = threading.Lock()


def _take_threads(n: int) -> list[Optional[_CpuThread]]:
    """An idle thread for each of CPUs 0..n-1, None where there is none."""
    with _IDLE_LOCK:
        return [_IDLE[i].pop() if _IDLE.get(i) else None for i in range(n)]


def _give_back(threads: list[_CpuThread]) -> None:
    with _IDLE_LOCK:
        for i, t in enumerate(threads):
            if not t.retired:
                _IDLE.setdefault(i, []).append(t)


def _forget_threads() -> None:
    # a forked child has none of its parent's threads (the fuzz campaign's
    # workers are forked)
    global _IDLE_LOCK
    _IDLE.clear()
    _IDLE_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_threads)


class SchedError(RuntimeError):
    """A scheduled run that could not finish as asked."""


class SchedDeadlock(SchedError):
    """Every live CPU only spun for ``spin_limit`` picks."""


class SchedTimeout(SchedError):
    """A CPU blocked outside the emulator while it held the turn."""


class ScheduleDiverged(SchedError):
    """A replayed schedule of (cpu, point) pairs met different points."""


@dataclasses.dataclass
class Interleaving:
    """What ``run_concurrently`` returns: ``results[i]`` is op i's return
    value or the exception it raised; ``schedule`` the picks taken, as
    (cpu, point the CPU resumed from), replayable with ``schedule=``;
    ``trace`` the same with a third field, True where the CPU was spinning.
    Unpacks as ``results, schedule``."""

    results: list
    schedule: list
    trace: list
    seed: Optional[int]
    # per pick: (mask of the CPUs that could have been picked, state digest
    # or 0): what the schedule explorer branches and hashes on
    choices: list = dataclasses.field(default_factory=list)
    # per pick, with ``watch=``: the watched leaf and its folio
    # (Core.sched_watches)
    watched: list = dataclasses.field(default_factory=list)

    def __iter__(self):
        return iter((self.results, self.schedule))

    def raised(self, i: int) -> Optional[BaseException]:
        r = self.results[i]
        return r if isinstance(r, BaseException) else None


def yield_point(machine, name: str) -> bool:
    """A scheduling point in Python code (an op's own race window, e.g.
    between two user writes).  True if the caller is a scheduled CPU.
    ``machine``: a Machine or a Kernel."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    core = getattr(machine, "kernel", machine).core
    return core.sched_yield(name.encode(), False)


ScheduleArg = Optional[Sequence[Union[int, tuple]]]


def _plan(schedule: ScheduleArg, n: int
          ) -> tuple[Optional[list[int]], Optional[list[Optional[str]]]]:
    """The schedule as CPU ids (each one of the run's n CPUs) and point
    names; ValueError naming the first bad entry."""
    if schedule is None:
        return None, None
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__iter__"):
        raise TypeError(f"schedule must be a sequence of CPU ids, got {type(schedule).__name__}")
    cpus, names = [], []
    for entry in schedule:
        if isinstance(entry, tuple) and len(entry) == 2:
            cpu, name = entry
            if not isinstance(name, str):
                raise ValueError(f"schedule: the point of {entry!r} must be a str")
        else:
            cpu, name = entry, None
        if isinstance(cpu, bool) or not hasattr(cpu, "__index__"):
            raise ValueError(f"schedule entries must be CPU ids or (cpu, point) pairs, got {entry!r}")
        cpu = int(cpu.__index__())
        if not 0 <= cpu < n:
            raise ValueError(f"schedule: cpu {cpu} is not one of this run's {n} CPUs (0..{n - 1})")
        cpus.append(cpu)
        names.append(name)
    return cpus, names


def run_concurrently(kernel: "Kernel", ops: Sequence[Callable[[Any], Any]],
                     seed: Optional[int] = 0, schedule: ScheduleArg = None,
                     points: Optional[Iterable[str]] = None, spin_limit: int = 0,
                     timeout: float = 60.0, op_arg: Any = None,
                     digests: bool = False,
                     watch: Optional[tuple[int, int]] = None) -> Interleaving:
    """Run ``ops`` (each called as ``op(op_arg)``: ``Machine.run_concurrently``
    passes the machine) as CPUs 0..n-1, one step at a time (module
    docstring).  ``seed`` drives the picks; ``schedule``
    (CPU ids, or (cpu, point) pairs as a run returns them) is followed
    first, then the last CPU runs on while it can, then the lowest runnable
    one.  ``points``: if given, only these C / Python yield points are
    scheduling points (spin waits always are), which keeps schedules short
    and robust to new yield points elsewhere.  ``digests``: record a state
    digest of the C core at every pick (``Interleaving.choices``; the
    schedule explorer's state hashing).  ``watch``: (mm id, address): record
    the leaf mapping it and its folio's counts at every pick
    (``Interleaving.watched``)."""
    ops = list(ops)
    n = len(ops)
    if not 1 <= n <= kernel.nr_cpus:
        raise ValueError(f"ops: 1..{kernel.nr_cpus} callables (one per CPU), got {n}")
    if not all(callable(op) for op in ops):
        raise TypeError("ops must be callables taking the machine")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    if isinstance(spin_limit, bool) or not isinstance(spin_limit, int) or \
            not 0 <= spin_limit < 1 << 64:
        raise ValueError(f"spin_limit must be an int in 0..2**64-1 (0: the default), "
                         f"got {spin_limit!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
    names = list(points) if points is not None else []
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"points must be yield-point names (str), got {name!r}")
    plan, want_names = _plan(schedule, n)
    core = kernel.core
    me = threading.get_ident()
    # lend the CPUs the calling thread holds to the ops
    with kernel.lock:
        lent = []
        for k in range(n):
            owner = kernel.cpu_owner[k]
            if owner == me:
                kernel.cpu_owner[k] = None
                lent.append(k)
            elif owner is not None and any(t.ident == owner for t in threading.enumerate()):
                for j in lent:
                    kernel.cpu_owner[j] = me
                raise GupError(errno.EBUSY, f"cpu {k} is bound to another thread")
    stuck = False
    try:
        core.sched_begin(n, seed or 0, plan, spin_limit)
        try:
            for name in names:
                core.sched_filter(name)
            if digests:
                core.sched_explore()
            if watch is not None:
                core.sched_watch(*watch)
            results: list = [None] * n
            threads = [t or _CpuThread(i) for i, t in enumerate(_take_threads(n))]
            finished = [threading.Lock() for _ in range(n)]
            for i, (t, done) in enumerate(zip(threads, finished)):
                done.acquire()
                t.start(kernel, i, ops[i], op_arg, results, done)
            stuck = _join(core, finished, timeout)
            if not stuck:
                _give_back(threads)
            trace = core.sched_trace()
            choices = core.sched_choices()
            watched = core.sched_watches() if watch is not None else []
            status = core.sched_status()
        except BaseException:
            if core.sched_status() & C.SCHED_DONE or not core.sched_status():
                _end(core)
            raise
        if stuck:
            _KEEP_ALIVE.append((kernel, op_arg))
            tail = ", ".join(f"{c}@{p}{'~' if s else ''}" for c, p, s in trace[-12:])
            if status & C.SCHED_DEADLOCK:
                raise SchedDeadlock(f"every CPU spins, none can progress (last picks: {tail})")
            raise SchedTimeout(f"a CPU blocked outside the emulator for {timeout}s "
                               f"(last picks: {tail})")
        _end(core)
    finally:
        # a stuck run's CPUs may hold the machine lock for ever: the
        # machine is lost anyway, do not wait for it
        if not stuck:
            with kernel.lock:
                for k in lent:
                    if kernel.cpu_owner[k] is None:
                        kernel.cpu_owner[k] = me
    if status & C.SCHED_TRUNCATED:
        raise SchedError("the run outgrew the trace bound: not replayable")
    taken = [(c, p) for c, p, _ in trace]
    if want_names is not None:
        for i, (want, got) in enumerate(zip(want_names, taken)):
            if want is not None and (plan[i], want) != got:
                raise ScheduleDiverged(f"step {i}: the schedule says {(plan[i], want)}, "
                                       f"the run took {got}")
    return Interleaving(results, taken, trace, seed if schedule is None else None, choices,
                        watched)


def _end(core: "Core") -> None:
    try:
        core.sched_end()
    except GupError:
        pass


def _join(core: "Core", finished: list, timeout: float) -> bool:
    """Wait for the CPUs' ops (each releases its lock in ``finished`` when
    done); True if they cannot finish (deadlock or timeout)."""
    deadline = time.monotonic() + timeout
    for k, done in enumerate(finished):
        while not done.acquire(timeout=0.02):
            if core.sched_status() & C.SCHED_DEADLOCK or time.monotonic() > deadline:
                return not all(d.acquire(blocking=False) for d in finished[k:])
    return False


def _cpu_body(kernel: "Kernel", i: int, op: Callable, op_arg: Any, results: list) -> None:
    core = kernel.core
    try:
        core.sched_attach(i)
    except BaseException as e:  # pragma: no cover - argument errors only
        results[i] = e
        return
    try:
        with kernel.cpu(i):
            results[i] = op(op_arg)
    except BaseException as e:
        results[i] = e
    finally:
        core.sched_detach()
