"""The pygup side of the oracle: a cell run on a fresh pygup ``Machine``
through the same callers the kernel uses."""
from __future__ import annotations

from typing import Callable, Optional

from pygup._native import C
from pygup.flags import MAP, MS, GupError

from pygup.tools.oracle.cells import (
    Cell, HPAGE, METHODS, METHOD_GUP, Outcome, PAGE, VALUE, _run_steps, backing_size)

# ---------------------------------------------------------------------------
# the pygup side

class PygupSide:
    """One cell on a fresh pygup ``Machine``.  ``explain=True`` replaces the
    method by ``pygup.explain.explain`` with the method's entry point and flags,
    keeping the formatted trace in ``self.explanation``."""

    def __init__(self, cell: Cell, policy: str, workdir_preset: str = "ext4",
                 explain: bool = False) -> None:
        from pygup.machine import Machine
        self.cell = cell
        # secretmem.enable=1: the kernel side runs the secretmem cells only
        # where memfd_secret works (guests boot with it), else skips them
        self.m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2, secretmem=True)
        self.file = self._file(cell.backing, workdir_preset)
        self.p = self.m.spawn()
        self.explain = explain
        self.explanation: Optional[str] = None

    def _file(self, backing: str, workdir_preset: str):
        m = self.m
        if backing == "anon":
            return None
        if backing == "memfd":
            return m.memfd_create("oracle", PAGE)
        if backing == "hugetlbfs":
            return m.memfd_create("oracle", HPAGE, hugetlb=True)
        if backing == "secretmem":
            return m.memfd_secret(PAGE)
        if backing == "readonly":
            fs = m.mount(workdir_preset)
            fs.create("readonly", PAGE)
            return fs.open("readonly", writable=False)
        return m.mount(workdir_preset if backing == "workdir" else backing).create("oracle", PAGE)

    @property
    def file_writable(self) -> bool:
        return self.file is None or self.file.writable

    def mmap(self, size: int, prot: int, flags: int) -> tuple[int, int]:
        if self.file is None:
            flags |= MAP.ANONYMOUS
        try:
            return 0, self.p.mmap(size, prot, flags, file=self.file)
        except GupError as e:
            return -e.errno, 0

    def _try(self, fn: Callable[[], object]) -> int:
        try:
            fn()
            return 0
        except GupError as e:
            return -e.errno

    def touch(self, addr: int, size: int, write: bool) -> int:
        def run() -> None:
            for off in range(0, size, PAGE):
                if write:
                    self.p.write(addr + off, VALUE)
                else:
                    self.p.read(addr + off)
        return self._try(run)

    def mprotect(self, addr: int, size: int, prot: int) -> int:
        return self._try(lambda: self.p.mprotect(addr, size, prot))

    def msync(self, addr: int, size: int) -> int:
        return self._try(lambda: self.p.msync(addr, size, MS.SYNC))

    def call(self, method: str, addr: int, size: int) -> int:
        from pygup import callers
        p = self.p
        if self.explain:
            from pygup.explain import explain
            api, flags = METHOD_GUP[method]
            if method == "io_uring" and self.m.policy.io_uring_pin_fast:
                api = "pin_user_pages_fast"
            ex = explain(p.mm, addr, 1, flags, api)
            self.explanation = ex.format()
            return ex.ret
        if method == "io_uring":
            ret = callers.io_uring_register_buffers(p, addr, size)
            if ret == 0:
                callers.io_uring_unregister_buffers(p)
            return ret
        if method == "proc_mem_write":
            return callers.proc_mem_write(p, addr, VALUE)
        if method == "proc_mem_read":
            ret = callers.proc_mem_read(p, addr)
            return 8 if ret >= 0 else ret
        if method == "process_vm_writev":
            return callers.process_vm_writev(p, addr, VALUE)
        if method == "process_vm_readv":
            ret = callers.process_vm_readv(p, addr)
            return 8 if ret >= 0 else ret
        if method == "o_direct_read":
            return callers.o_direct_read(p, addr, PAGE)
        if method == "vmsplice":
            ret = callers.vmsplice(p, addr, PAGE)
            callers.pipe_read(p)
            return ret
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    def munmap(self, addr: int, size: int) -> None:
        self.p.munmap(addr, size)

    def close(self) -> None:
        self.p.exit()
        self.m.check()


def run_pygup_cell(cell: Cell, policy: str, workdir_preset: str = "ext4",
                   explain: bool = False) -> tuple[Outcome, Optional[str]]:
    """The cell on a fresh pygup machine: (outcome, explain trace or None)."""
    side = PygupSide(cell, policy, workdir_preset, explain)
    out = _run_steps(side, cell, backing_size(cell.backing), side.file_writable)
    side.close()
    return out, side.explanation




# ---------------------------------------------------------------------------
# the pygup side of a multi-step scenario (scenarios.py)

class PygupScenarioSide:
    """``scenarios.ScenarioSide`` on a fresh pygup ``Machine`` under
    ``policy``: the same steps through the Process API and the callers."""

    def __init__(self, policy: str) -> None:
        from pygup.machine import Machine
        self.m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2)
        self.p = self.m.spawn()
        self.child = None
        self._fs = None
        self._n = 0

    def _try(self, fn: Callable[[], object]) -> int:
        try:
            fn()
            return 0
        except GupError as e:
            return -e.errno

    def new_file(self, kind: str, words: list[int]):
        self._n += 1
        if kind == "memfd":
            f = self.m.memfd_create(f"scenario-{self._n}", len(words) * PAGE)
        else:
            if self._fs is None:
                self._fs = self.m.mount(kind)
            f = self._fs.create(f"scenario-{self._n}", len(words) * PAGE)
        for i, w in enumerate(words):
            f.pwrite(i, w)
        return f

    def pread(self, f, index: int) -> Optional[int]:
        return f.pread(index)

    def ftruncate(self, f, size: int) -> int:
        return self._try(lambda: f.truncate(size))

    def mmap(self, npages: int, prot: int, flags: int, f=None, addr: int = 0) -> tuple[int, int]:
        if f is None:
            flags |= MAP.ANONYMOUS
        try:
            return 0, self.p.mmap(npages * PAGE, prot, flags, file=f, addr=addr)
        except GupError as e:
            return -e.errno, 0

    def munmap(self, addr: int, npages: int) -> int:
        return self._try(lambda: self.p.munmap(addr, npages * PAGE))

    def mprotect(self, addr: int, npages: int, prot: int) -> int:
        return self._try(lambda: self.p.mprotect(addr, npages * PAGE, prot))

    def write(self, addr: int, value: int) -> int:
        return self._try(lambda: self.p.write(addr, value))

    def read(self, addr: int) -> tuple[int, int]:
        try:
            return 0, self.p.read(addr)
        except GupError as e:
            return -e.errno, 0

    def ring_open(self, addr: int, npages: int) -> int:
        from pygup import callers
        return callers.io_uring_register_buffers(self.p, addr, npages * PAGE)

    def ring_rw(self, write: bool, f, index: int, buf_page: int = 0) -> int:
        from pygup import callers
        fn = callers.io_uring_write_fixed if write else callers.io_uring_read_fixed
        return fn(self.p, f, index, buf_page)

    def ring_close(self) -> int:
        from pygup import callers
        return callers.io_uring_unregister_buffers(self.p)

    def proc_mem_write(self, addr: int, value: int) -> int:
        from pygup import callers
        return callers.proc_mem_write(self.p, addr, value)

    def process_vm_readv(self, addr: int, npages: int) -> int:
        from pygup import callers
        return callers.process_vm_readv_range(self.p, addr, npages)

    def proc_mem_write_pages(self, addr: int, values: list[int]) -> int:
        from pygup import callers
        return callers.proc_mem_write_pages(self.p, addr, values)

    def proc_mem_read(self, addr: int) -> tuple[int, int]:
        from pygup import callers
        value = callers.proc_mem_read(self.p, addr)
        return (value, 0) if value < 0 else (8, value)

    def vmsplice(self, addr: int, npages: int) -> int:
        from pygup import callers
        ret = callers.vmsplice(self.p, addr, npages * PAGE)
        callers.pipe_read(self.p)          # the pipe is closed at once
        return ret

    def msync(self, addr: int, npages: int) -> int:
        return self._try(lambda: self.p.msync(addr, npages * PAGE, MS.SYNC))

    def o_direct(self, write: bool, f, index: int, addr: int, npages: int) -> int:
        from pygup import callers
        fn = callers.o_direct_pwrite if write else callers.o_direct_pread
        return fn(self.p, f, index, addr, npages * PAGE)

    def folio_dirty(self, addr: int) -> Optional[bool]:
        present, pfn, _ = self.p.pagemap(addr)
        if not present:
            return None
        core = self.m.kernel.core
        return bool(core.frame_info(core.frame_info(pfn).head).flags & C.F_DIRTY)

    def pagemap(self, addr: int) -> tuple[bool, Optional[int], bool]:
        return self.p.pagemap(addr)

    def fork(self) -> None:
        self.child = self.p.fork()

    def child_write(self, addr: int, value: int) -> int:
        return self._try(lambda: self.child.write(addr, value))

    def child_exit(self) -> None:
        if self.child is not None:
            self.child.exit()
            self.child = None

    def close(self) -> None:
        self.child_exit()
        self.p.exit()
        self.m.check()


def run_pygup_scenario(scenario, policy: str) -> list:
    """The scenario on a fresh pygup machine: its outcome as JSON carries it."""
    from pygup.tools.oracle.scenarios import normalise
    side = PygupScenarioSide(policy)
    try:
        return normalise(scenario.run(side))
    finally:
        side.close()
