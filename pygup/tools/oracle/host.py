"""The live-kernel oracle: the same GUP scenarios on this machine's real
kernel and on a pygup ``Machine``, compared cell by cell.

A *cell* is backing x MAP_SHARED/MAP_PRIVATE x PROT_READ|PROT_WRITE /
PROT_READ x method x variant:

* backings: anonymous memory, memfd, a tmpfs file, a file in the working
  directory's file system, loop-mounted ext2 / ext4 / xfs / btrfs images,
  ramfs, hugetlbfs (memfd MFD_HUGETLB), secretmem (memfd_secret) and a file
  opened read-only;
* methods, each a real GUP caller (csrc/host.c makes the system calls):
  io_uring buffer registration, /proc/self/mem write and read,
  process_vm_writev / readv, an O_DIRECT read into the buffer, vmsplice;
* variants: faulted in first (``memset``, then ``mprotect(PROT_READ)`` for
  the read-only cells), not faulted in, faulted in then ``msync(MS_SYNC)``.

Both sides run the same steps (``_run_steps``) and are compared on the
outcome's class: success, or which errno (and at which step: a failing
``mmap`` is an outcome too).  Setting a backing up needs root for most
(mounts, loop devices, huge pages); a backing that cannot be set up is
reported as skipped with the reason, and everything set up is torn down
again, even on failure.

Where pygup deliberately differs from the host kernel (pygup models Linux
6.5 .. 6.14; the host may be newer), the difference is listed in
``DELIBERATE`` with its reason; any other disagreement fails the oracle.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Iterable, Optional, Protocol

from pygup._native import HostProbes as H
from pygup.flags import FOLL, MAP, MS, PROT, GupError, errno_name, flag_names
from pygup.config.policy import POLICIES

PAGE = 4096
HPAGE = 2 << 20
VALUE = 0x0123456789ABCDEF          # what the write methods store

METHODS = ("io_uring", "proc_mem_write", "proc_mem_read", "process_vm_writev",
           "process_vm_readv", "o_direct_read", "vmsplice")
MAPS = ("shared", "private")
PROTS = ("rw", "r")
VARIANTS = ("prefault", "noprefault", "msync")
LOOP_FS = ("ext2", "ext4", "xfs", "btrfs")
BACKINGS: dict[str, str] = {
    "anon": "anonymous memory (MAP_ANONYMOUS)",
    "memfd": "memfd_create() (shmem)",
    "tmpfs": "a file on a tmpfs mount",
    "workdir": "a file on the working directory's file system",
    "ext2": "a file on a loop-mounted ext2 image",
    "ext4": "a file on a loop-mounted ext4 image",
    "xfs": "a file on a loop-mounted xfs image",
    "btrfs": "a file on a loop-mounted btrfs image",
    "ramfs": "a file on a ramfs mount",
    "hugetlbfs": "memfd_create(MFD_HUGETLB), one 2 MiB page",
    "secretmem": "memfd_secret()",
    "readonly": "a working-directory file opened O_RDONLY",
}
# block file systems whose O_DIRECT really is direct (tmpfs accepts
# O_DIRECT since 6.6 but copies through the page cache: no GUP)
_DIRECT_IO_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs")

# which GUP entry point and flags each method's kernel caller uses (for
# ``explain`` on a disagreement)
METHOD_GUP: dict[str, tuple[str, int]] = {
    "io_uring": ("pin_user_pages", FOLL.LONGTERM | FOLL.WRITE),
    "proc_mem_write": ("get_user_pages_remote", FOLL.FORCE | FOLL.WRITE),
    "proc_mem_read": ("get_user_pages_remote", FOLL.FORCE),
    "process_vm_writev": ("pin_user_pages_remote", FOLL.WRITE),
    "process_vm_readv": ("pin_user_pages_remote", 0),
    "o_direct_read": ("pin_user_pages_fast", FOLL.WRITE),
    "vmsplice": ("get_user_pages_fast", 0),
}


# ---------------------------------------------------------------------------
# cells, outcomes, deliberate differences

@dataclasses.dataclass(frozen=True)
class Cell:
    backing: str
    map: str
    prot: str
    method: str
    variant: str

    @property
    def key(self) -> str:
        return "/".join(dataclasses.astuple(self))


def enumerate_cells(backings: Optional[Iterable[str]] = None) -> list[Cell]:
    """Every cell of the matrix for ``backings`` (default: all), in order."""
    names = list(BACKINGS) if backings is None else list(backings)
    for name in names:
        if name not in BACKINGS:
            raise ValueError(f"backing must be one of {list(BACKINGS)}, got {name!r}")
    return [Cell(b, mp, pr, me, va) for b in names for mp in MAPS for pr in PROTS
            for me in METHODS for va in VARIANTS]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one side did: the step that ended the cell and its return
    value (``call``: the method's own return, a count or -errno)."""

    stage: str            # "mmap", "touch", "mprotect", "msync", "call"
    ret: int

    @property
    def cls(self) -> str:
        """'ok', 'EFAULT', or 'mmap:EACCES' for a failing set-up step."""
        if self.stage == "call":
            return "ok" if self.ret >= 0 else errno_name(self.ret)
        return f"{self.stage}:{errno_name(self.ret)}"


@dataclasses.dataclass(frozen=True)
class Deliberate:
    """A documented difference between pygup and the host kernel: the cells
    it covers (None = any) and the policies under which it applies."""

    reason: str
    backing: Optional[str] = None
    map: Optional[str] = None
    prot: Optional[str] = None
    method: Optional[str] = None
    variant: Optional[str] = None
    policies: Optional[tuple[str, ...]] = None
    host: Optional[str] = None            # the host's outcome class
    pygup: Optional[str] = None           # pygup's outcome class

    def matches(self, cell: Cell, policy: str, host: str, pygup: str) -> bool:
        for field in ("backing", "map", "prot", "method", "variant"):
            want = getattr(self, field)
            if want is not None and want != getattr(cell, field):
                return False
        return ((self.policies is None or policy in self.policies)
                and (self.host is None or self.host == host)
                and (self.pygup is None or self.pygup == pygup))


DELIBERATE: list[Deliberate] = [
    Deliberate("6.14 lets FOLL_FORCE write to private hugetlb mappings "
               "(\"mm/hugetlb: support FOLL_FORCE|FOLL_WRITE\"); 6.4/6.5 refuse",
               backing="hugetlbfs", map="private", prot="r", method="proc_mem_write",
               policies=("6.4", "6.5"), host="ok", pygup="EIO"),
    Deliberate("6.4's io_uring refused file-backed buffers itself (anything but shmem and "
               "hugetlbfs: -EOPNOTSUPP); 6.5 delegated the check to GUP, which refuses only "
               "shared writable dirty-tracked mappings (-EFAULT)",
               method="io_uring", policies=("6.4",), pygup="EOPNOTSUPP"),
]


def deliberate_for(cell: Cell, policy: str, host: str, pygup: str) -> Optional[Deliberate]:
    for d in DELIBERATE:
        if d.matches(cell, policy, host, pygup):
            return d
    return None


def nearest_policy(release: str) -> str:
    """The newest policy preset not newer than kernel ``release`` (the
    oldest preset for an older kernel): '6.18.44-x' -> '6.14'."""
    def ver(text: str) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", text)
        if not m:
            raise ValueError(f"not a kernel version: {text!r}")
        return int(m.group(1)), int(m.group(2))
    have = ver(release)
    presets = sorted(POLICIES, key=ver)
    best = presets[0]
    for name in presets:
        if ver(name) <= have:
            best = name
    return best


# ---------------------------------------------------------------------------
# the steps of a cell, shared by both sides

class Side(Protocol):
    def mmap(self, size: int, prot: int, flags: int) -> tuple[int, int]: ...
    def touch(self, addr: int, size: int, write: bool) -> int: ...
    def mprotect(self, addr: int, size: int, prot: int) -> int: ...
    def msync(self, addr: int, size: int) -> int: ...
    def call(self, method: str, addr: int, size: int) -> int: ...
    def munmap(self, addr: int, size: int) -> None: ...


def _run_steps(side: Side, cell: Cell, size: int, file_writable: bool = True) -> Outcome:
    """mmap; for the faulted-in variants a user access to every page
    (a store where the mapping can be writable: memset), mprotect down to
    PROT_READ for the read-only cells, msync(MS_SYNC) for that variant;
    then the method."""
    target = PROT.READ | PROT.WRITE if cell.prot == "rw" else PROT.READ
    flags = MAP.SHARED if cell.map == "shared" else MAP.PRIVATE
    prefault = cell.variant != "noprefault"
    can_write = file_writable or cell.map == "private"
    setup = PROT.READ | PROT.WRITE if prefault and can_write else target
    rc, addr = side.mmap(size, int(setup), int(flags))
    if rc:
        return Outcome("mmap", rc)
    try:
        if prefault:
            rc = side.touch(addr, size, bool(setup & PROT.WRITE))
            if rc:
                return Outcome("touch", rc)
            if setup != target:
                rc = side.mprotect(addr, size, int(target))
                if rc:
                    return Outcome("mprotect", rc)
            if cell.variant == "msync":
                rc = side.msync(addr, size)
                if rc:
                    return Outcome("msync", rc)
        return Outcome("call", side.call(cell.method, addr, size))
    finally:
        side.munmap(addr, size)


def backing_size(backing: str) -> int:
    return HPAGE if backing == "hugetlbfs" else PAGE


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
        self.m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2)
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
# the host side

def mount_table() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount, from /proc/self/mountinfo."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and right:
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                    out.append((point, right.split()[0]))
    except OSError:
        pass
    return out


def fs_type(path: str) -> Optional[str]:
    """The type of the file system holding ``path`` (longest mount prefix)."""
    path = os.path.realpath(path)
    best, kind = -1, None
    for point, t in mount_table():
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > best:
            best, kind = len(point), t
    return kind


def _run(argv: list[str]) -> str:
    """Run a set-up command; its stdout, or RuntimeError with stderr's tail."""
    try:
        # not the sanitizer runtime a test run may preload into Python
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"{argv[0]}: {e}") from None
    if r.returncode:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines()
                 if ln.strip() and "dmesg(1)" not in ln]
        why = " ".join(lines)[:200] or f"exit status {r.returncode}"
        raise RuntimeError(f"{os.path.basename(argv[0])} failed: {why}")
    return r.stdout.strip()


def io_uring_status() -> Optional[str]:
    """None when io_uring works here, else why not."""
    rc = H.available()
    return None if rc == 0 else f"io_uring_setup: {errno_name(rc)}"


def proc_mem_force_status() -> Optional[str]:
    """None when /proc/self/mem writes use FOLL_FORCE here (a forced write
    into a read-only private page works), else why not: kernels built with
    PROC_MEM_NO_FORCE / PROC_MEM_FORCE_PTRACE or booted with
    proc_mem.force_override=never|ptrace do not force."""
    rc, addr = H.mmap(PAGE, int(PROT.READ), int(MAP.PRIVATE | MAP.ANONYMOUS))
    if rc:
        return f"mmap: {errno_name(rc)}"
    try:
        ret = H.proc_mem_write(addr, VALUE)
    finally:
        H.munmap(addr, PAGE)
    if ret == 8:
        return None
    return (f"/proc/self/mem does not force writes here ({errno_name(ret)}): "
            "proc_mem.force_override / CONFIG_PROC_MEM_*")


class HostBacking:
    """How to get a fresh file (an fd) of one backing for each cell."""

    def __init__(self, name: str, fs: Optional[str], preset: Optional[str],
                 directory: Optional[str] = None) -> None:
        self.name = name
        self.fs = fs                  # host file-system type
        self.preset = preset          # the pygup preset it corresponds to
        self.directory = directory
        self._n = 0

    def open(self) -> tuple[int, bool]:
        """(fd or -1 for anonymous memory, opened writable?)."""
        size = backing_size(self.name)
        if self.name == "anon":
            return -1, True
        if self.name == "memfd":
            fd = os.memfd_create("oracle", os.MFD_CLOEXEC)
        elif self.name == "hugetlbfs":
            fd = os.memfd_create("oracle", os.MFD_CLOEXEC | os.MFD_HUGETLB)
        elif self.name == "secretmem":
            fd = H.memfd_secret(os.O_CLOEXEC)
            if fd < 0:
                raise OSError(-fd, "memfd_secret")
        else:
            assert self.directory is not None
            self._n += 1
            path = os.path.join(self.directory, f"{self.name}-{self._n}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size)
                if self.name == "readonly":
                    os.pwrite(fd, b"\xab" * size, 0)
                    os.close(fd)
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            finally:
                os.unlink(path)
            return fd, self.name != "readonly"
        os.ftruncate(fd, size)
        return fd, True


class HostSide:
    """One cell on the host: the mapping is made by csrc/host.c."""

    def __init__(self, backing: HostBacking, odirect_fd: int) -> None:
        self.backing = backing
        self.odirect_fd = odirect_fd
        self.fd, self.file_writable = backing.open()

    def mmap(self, size: int, prot: int, flags: int) -> tuple[int, int]:
        if self.fd < 0:
            flags |= MAP.ANONYMOUS
        return H.mmap(size, prot, flags, self.fd, 0)

    def touch(self, addr: int, size: int, write: bool) -> int:
        return H.touch(addr, size, write, VALUE)

    def mprotect(self, addr: int, size: int, prot: int) -> int:
        return H.mprotect(addr, size, prot)

    def msync(self, addr: int, size: int) -> int:
        return H.msync(addr, size, int(MS.SYNC))

    def call(self, method: str, addr: int, size: int) -> int:
        if method == "io_uring":
            return H.io_uring_register(addr, size)
        if method == "proc_mem_write":
            return H.proc_mem_write(addr, VALUE)
        if method == "proc_mem_read":
            return H.proc_mem_read(addr)[0]
        if method == "process_vm_writev":
            return H.process_vm_writev(addr, VALUE)
        if method == "process_vm_readv":
            return H.process_vm_readv(addr)[0]
        if method == "o_direct_read":
            return H.o_direct_read(self.odirect_fd, addr, PAGE, 0)
        if method == "vmsplice":
            return H.vmsplice(addr, PAGE)
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    def munmap(self, addr: int, size: int) -> None:
        H.munmap(addr, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


class HostEnv:
    """The host's backings, set up on entry and torn down on exit (also on
    failure): a temp dir under /tmp, tmpfs / ramfs mounts, loop-mounted
    images, reserved huge pages.  Backings that cannot be set up land in
    ``skipped`` with the reason; methods that cannot run in
    ``method_skipped``."""

    def __init__(self, backings: Optional[Iterable[str]] = None,
                 workdir: Optional[str] = None, tmp_root: Optional[str] = None) -> None:
        self.wanted = list(BACKINGS) if backings is None else list(backings)
        self.workdir = os.path.realpath(workdir or os.getcwd())
        self.tmp_root = tmp_root
        self.backings: dict[str, HostBacking] = {}
        self.skipped: dict[str, str] = {}
        self.method_skipped: dict[str, str] = {}
        self.odirect_fd = -1
        self.odirect_where: Optional[str] = None
        self._stack = contextlib.ExitStack()
        self.root = os.geteuid() == 0

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "HostEnv":
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def preset(self, backing: str) -> str:
        b = self.backings.get(backing)
        return b.preset if b is not None and b.preset else "ext4"

    def describe(self) -> dict[str, str]:
        """backing -> what it is on this host."""
        out = {}
        for name, b in self.backings.items():
            out[name] = f"{b.fs or name} (pygup {b.preset or name})"
        if self.odirect_where:
            out["O_DIRECT source"] = self.odirect_where
        return out

    # -- set-up ----------------------------------------------------------------
    def _setup(self) -> None:
        st = self._stack
        self.tmp = tempfile.mkdtemp(prefix="pygup-oracle-", dir=self.tmp_root)
        st.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        why = io_uring_status()
        if why:
            self.method_skipped["io_uring"] = why
        why = proc_mem_force_status()
        if why:
            self.method_skipped["proc_mem_write"] = why
            self.method_skipped["proc_mem_read"] = why
        self._setup_workdir()
        self._setup_odirect()
        for name in self.wanted:
            if name in self.backings or name in self.skipped:
                continue
            with contextlib.ExitStack() as each:
                try:
                    backing = self._setup_one(name, each)
                except (RuntimeError, OSError) as e:
                    self.skipped[name] = str(e)
                    continue
                self.backings[name] = backing
                st.push(each.pop_all())

    def _setup_workdir(self) -> None:
        kind = fs_type(self.workdir)
        from pygup.kernel.fs import PRESETS
        self.workdir_fs = kind
        if kind is None or kind not in PRESETS:
            reason = f"no pygup preset for the working directory's file system ({kind})"
            for name in ("workdir", "readonly"):
                self.skipped[name] = reason
            self.workdir_dir = None
            return
        if os.stat(self.tmp).st_dev == os.stat(self.workdir).st_dev:
            d = os.path.join(self.tmp, "workdir")
            os.mkdir(d)
        else:
            try:
                d = tempfile.mkdtemp(prefix=".pygup-oracle-", dir=self.workdir)
            except OSError as e:
                for name in ("workdir", "readonly"):
                    self.skipped[name] = f"cannot create files in {self.workdir}: {e}"
                self.workdir_dir = None
                return
            self._stack.callback(shutil.rmtree, d, ignore_errors=True)
        self.workdir_dir = d

    def _setup_odirect(self) -> None:
        """A 4 KiB file on a block file system, opened O_DIRECT, to read from."""
        for d in (self.tmp, self.workdir):
            if fs_type(d) not in _DIRECT_IO_FS:
                continue
            try:
                path = os.path.join(d if d == self.tmp else self.workdir_dir or d,
                                    ".pygup-oracle-odirect")
                with open(path, "wb") as f:
                    f.write(b"\x5a" * PAGE)
                    f.flush()
                    os.fsync(f.fileno())
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
                os.unlink(path)
            except OSError:
                continue
            self._stack.callback(os.close, fd)
            self.odirect_fd = fd
            self.odirect_where = f"{d} ({fs_type(d)})"
            return
        self.method_skipped["o_direct_read"] = (
            "no block file system (ext2/3/4, xfs, btrfs) under /tmp or the working "
            "directory to read from with O_DIRECT (tmpfs copies, it does not pin)")

    def _mount(self, fstype: str, source: str, each: contextlib.ExitStack) -> str:
        d = os.path.join(self.tmp, f"mnt-{fstype}")
        os.makedirs(d, exist_ok=True)
        opts = ["-o", "size=64m"] if fstype == "tmpfs" else []
        _run(["mount", "-t", fstype, *opts, source, d])
        each.callback(_run, ["umount", "-l", d])
        got = fs_type(d)
        if got != fstype:
            raise RuntimeError(f"mounted {fstype} at {d}, but it reads as {got}")
        return d

    def _setup_one(self, name: str, each: contextlib.ExitStack) -> HostBacking:
        from pygup.kernel.fs import PRESETS
        if name == "anon":
            return HostBacking(name, None, None)
        if name == "memfd":
            return HostBacking(name, "tmpfs", "tmpfs")
        if name in ("workdir", "readonly"):
            return HostBacking(name, self.workdir_fs, self.workdir_fs, self.workdir_dir)
        if name == "tmpfs":
            why = "not root"
            if self.root:
                try:
                    return HostBacking(name, "tmpfs", "tmpfs", self._mount("tmpfs", "pygup", each))
                except RuntimeError as e:
                    why = str(e)
            if fs_type("/dev/shm") == "tmpfs" and os.access("/dev/shm", os.W_OK):
                d = tempfile.mkdtemp(prefix="pygup-oracle-", dir="/dev/shm")
                each.callback(shutil.rmtree, d, ignore_errors=True)
                return HostBacking(name, "tmpfs (/dev/shm)", "tmpfs", d)
            raise RuntimeError(f"{why}, and no writable tmpfs at /dev/shm")
        if name == "ramfs":
            if not self.root:
                raise RuntimeError("mounting ramfs needs root")
            return HostBacking(name, "ramfs", "ramfs", self._mount("ramfs", "pygup", each))
        if name in LOOP_FS:
            if not self.root:
                raise RuntimeError(f"loop-mounting {name} needs root")
            mkfs = shutil.which(f"mkfs.{name}")
            if mkfs is None:
                pkg = {"xfs": "xfsprogs", "btrfs": "btrfs-progs"}.get(name, "e2fsprogs")
                raise RuntimeError(f"mkfs.{name} not installed (apt-get install {pkg})")
            if shutil.which("losetup") is None:
                raise RuntimeError("losetup not installed")
            img = os.path.join(self.tmp, f"{name}.img")
            with open(img, "wb") as f:
                f.truncate((512 if name in ("xfs", "btrfs") else 64) << 20)   # sparse
            each.callback(_unlink_quietly, img)
            force = {"xfs": "-f", "btrfs": "-f"}.get(name, "-F")
            _run([mkfs, "-q", force, img])
            dev = _run(["losetup", "--find", "--show", img])
            each.callback(_run, ["losetup", "-d", dev])
            d = self._mount(name, dev, each)
            return HostBacking(name, name, name, d)
        if name == "hugetlbfs":
            self._reserve_huge_pages(2, each)
            fd = os.memfd_create("probe", os.MFD_CLOEXEC | os.MFD_HUGETLB)
            os.close(fd)
            return HostBacking(name, "hugetlbfs", "hugetlbfs")
        if name == "secretmem":
            fd = H.memfd_secret(os.O_CLOEXEC)
            if fd < 0:
                raise RuntimeError(f"memfd_secret: {errno_name(fd)}"
                                   + (" (secretmem disabled: boot with secretmem.enable=1)"
                                      if fd == -errno.ENOSYS else ""))
            os.close(fd)
            return HostBacking(name, "secretmem", "secretmem")
        assert name in PRESETS, name       # pragma: no cover
        raise RuntimeError(f"no host set-up for {name}")  # pragma: no cover

    def _reserve_huge_pages(self, need: int, each: contextlib.ExitStack) -> None:
        """Make ``need`` 2 MiB huge pages free; restore nr_hugepages on exit."""
        info = _meminfo()
        if info.get("Hugepagesize") != HPAGE // 1024:
            raise RuntimeError(f"default huge page size is {info.get('Hugepagesize')} kB, not 2048")
        free = info.get("HugePages_Free", 0) - info.get("HugePages_Rsvd", 0)
        if free >= need:
            return
        if not self.root:
            raise RuntimeError(f"{free} free huge pages and reserving more needs root")
        knob = "/proc/sys/vm/nr_hugepages"
        with open(knob) as f:
            old = int(f.read())
        each.callback(_write_file, knob, str(old))
        _write_file(knob, str(old + need - free))
        info = _meminfo()
        if info.get("HugePages_Free", 0) - info.get("HugePages_Rsvd", 0) < need:
            raise RuntimeError("could not reserve huge pages (memory too fragmented?)")

    # -- a cell ----------------------------------------------------------------
    def run(self, cell: Cell) -> Optional[Outcome]:
        """The cell on the host; None when its method cannot run here."""
        if cell.method in self.method_skipped:
            return None
        side = HostSide(self.backings[cell.backing], self.odirect_fd)
        try:
            return _run_steps(side, cell, backing_size(cell.backing), side.file_writable)
        finally:
            side.close()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                out[key] = int(rest.split()[0])
    return out


# ---------------------------------------------------------------------------
# the comparison

@dataclasses.dataclass
class CellResult:
    cell: Cell
    host: str                     # outcome class, or "skip"
    pygup: str
    host_ret: Optional[int] = None
    pygup_ret: Optional[int] = None
    deliberate: Optional[str] = None
    explain: Optional[str] = None

    @property
    def compared(self) -> bool:
        return self.host != "skip"

    @property
    def agree(self) -> bool:
        return self.host == self.pygup

    def to_json(self) -> dict:
        d = dataclasses.asdict(self.cell)
        d.update(host=self.host, pygup=self.pygup, host_ret=self.host_ret,
                 pygup_ret=self.pygup_ret, agree=self.agree if self.compared else None,
                 deliberate=self.deliberate, explain=self.explain)
        return d


@dataclasses.dataclass
class Report:
    kernel: str
    policy: str
    results: list[CellResult]
    skipped: dict[str, str]              # backing -> reason
    method_skipped: dict[str, str]       # method -> reason
    backings: dict[str, str] = dataclasses.field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """backing -> compared / agree / deliberate / disagree."""
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            c = out.setdefault(r.cell.backing, {"compared": 0, "agree": 0, "deliberate": 0,
                                                "disagree": 0})
            if not r.compared:
                continue
            c["compared"] += 1
            if r.agree:
                c["agree"] += 1
            elif r.deliberate:
                c["deliberate"] += 1
            else:
                c["disagree"] += 1
        return out

    @property
    def disagreements(self) -> list[CellResult]:
        return [r for r in self.results if r.compared and not r.agree]

    @property
    def undocumented(self) -> list[CellResult]:
        return [r for r in self.disagreements if not r.deliberate]

    @property
    def ok(self) -> bool:
        return not self.undocumented

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "policy": self.policy, "backings": self.backings,
                "skipped": self.skipped, "method_skipped": self.method_skipped,
                "counts": self.counts(),
                "deliberate_differences": [dataclasses.asdict(d) for d in DELIBERATE],
                "cells": [r.to_json() for r in self.results]}


class HostRunner(Protocol):
    skipped: dict[str, str]
    method_skipped: dict[str, str]
    def __enter__(self) -> "HostRunner": ...
    def __exit__(self, *exc) -> None: ...
    def preset(self, backing: str) -> str: ...
    def describe(self) -> dict[str, str]: ...
    def run(self, cell: Cell) -> Optional[Outcome]: ...


def run_oracle(backings: Optional[Iterable[str]] = None, policy: Optional[str] = None,
               host: Optional[HostRunner] = None, release: Optional[str] = None,
               progress: Optional[Callable[[CellResult], None]] = None) -> Report:
    """Every cell of ``backings`` on the host (``HostEnv`` unless ``host``
    is given) and on pygup under ``policy`` (default: the preset nearest
    the host kernel)."""
    release = release or os.uname().release
    policy = policy or nearest_policy(release)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    cells = enumerate_cells(backings)
    runner = host if host is not None else HostEnv(sorted({c.backing for c in cells},
                                                          key=list(BACKINGS).index))
    results: list[CellResult] = []
    with runner as env:
        for cell in cells:
            if cell.backing in env.skipped:
                continue
            preset = env.preset(cell.backing)
            h = env.run(cell)
            g, _ = run_pygup_cell(cell, policy, preset)
            r = CellResult(cell, "skip" if h is None else h.cls, g.cls,
                           None if h is None else h.ret, g.ret)
            if r.compared and not r.agree:
                d = deliberate_for(cell, policy, r.host, r.pygup)
                r.deliberate = d.reason if d else None
                if g.stage == "call":
                    _, r.explain = run_pygup_cell(cell, policy, preset, explain=True)
            results.append(r)
            if progress:
                progress(r)
        return Report(release, policy, results, dict(env.skipped), dict(env.method_skipped),
                      env.describe())


# ---------------------------------------------------------------------------
# output

COLUMNS = (("backing", 10), ("map", 8), ("prot", 5), ("method", 18), ("variant", 11),
           ("host", 13), ("pygup", 13), ("agree", 5))


def format_row(r: CellResult) -> str:
    c = r.cell
    agree = "-" if not r.compared else "yes" if r.agree else "DELIB" if r.deliberate else "NO"
    vals = (c.backing, c.map, c.prot, c.method, c.variant, r.host, r.pygup, agree)
    return " ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, COLUMNS)).rstrip()


def format_report(rep: Report) -> str:
    lines = [f"pygup oracle: host kernel {rep.kernel}, pygup policy {rep.policy}",
             " ".join(f"{name:<{w}}" for name, w in COLUMNS).rstrip(),
             " ".join("-" * w for _, w in COLUMNS)]
    lines += [format_row(r) for r in rep.results]
    lines.append("")
    if rep.backings:
        lines.append("backings: " + ", ".join(f"{k}={v}" for k, v in rep.backings.items()))
    for name, why in rep.skipped.items():
        lines.append(f"skipped backing {name}: {why}")
    for name, why in rep.method_skipped.items():
        lines.append(f"skipped method {name}: {why}")
    lines.append("cells compared by backing:")
    total = {"compared": 0, "agree": 0, "deliberate": 0, "disagree": 0}
    for name, c in rep.counts().items():
        lines.append(f"  {name:<10} {c['compared']:>4} compared, {c['agree']:>4} agree, "
                     f"{c['deliberate']:>3} deliberate, {c['disagree']:>3} disagree")
        for k in total:
            total[k] += c[k]
    lines.append(f"  {'total':<10} {total['compared']:>4} compared, {total['agree']:>4} agree, "
                 f"{total['deliberate']:>3} deliberate, {total['disagree']:>3} disagree")
    if rep.disagreements:
        lines.append("")
        lines.append("disagreements:")
        for r in rep.disagreements:
            tag = f"deliberate: {r.deliberate}" if r.deliberate else "NOT DOCUMENTED"
            lines.append(f"  {r.cell.key}: host {r.host} ({r.host_ret}), pygup {r.pygup} "
                         f"({r.pygup_ret}) -- {tag}")
            if r.explain:
                lines += ["    " + ln for ln in r.explain.splitlines()]
    return "\n".join(lines)


def oracle_main(only: Optional[str] = None, policy: Optional[str] = None,
                json_out: Optional[str] = None, out: Callable[[str], None] = print,
                host: Optional[HostRunner] = None, release: Optional[str] = None) -> int:
    """``pygup oracle``: 0 when every disagreement is documented, else 1."""
    backings = None
    if only:
        backings = [b.strip() for b in only.split(",") if b.strip()]
    rep = run_oracle(backings, policy, host=host, release=release)
    out(format_report(rep))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rep.to_json(), f, indent=1)
    return 0 if rep.ok else 1


# ---------------------------------------------------------------------------
# timing, for the benchmarks

def io_uring_register_timing(pages: int = 256, iterations: int = 100) -> dict[str, float]:
    """Register + unregister of an anonymous, faulted-in region of
    ``pages`` pages, timed inside C: {'ns_per_iter', 'min_ns',
    'ns_per_page'}.  OSError when io_uring is unavailable."""
    if pages <= 0 or iterations <= 0:
        raise ValueError("pages and iterations must be positive")
    size = pages * PAGE
    rc, addr = H.mmap(size, int(PROT.READ | PROT.WRITE), int(MAP.PRIVATE | MAP.ANONYMOUS))
    if rc:
        raise OSError(-rc, "mmap")
    try:
        rc = H.touch(addr, size, True, VALUE)
        if rc == 0:
            rc, total, best = H.io_uring_register_ns(addr, size, iterations)
        if rc:
            raise OSError(-rc, f"io_uring register: {errno_name(rc)}")
    finally:
        H.munmap(addr, size)
    return {"ns_per_iter": total / iterations, "min_ns": float(best),
            "ns_per_page": total / iterations / pages}


__all__ = ["BACKINGS", "METHODS", "MAPS", "PROTS", "VARIANTS", "DELIBERATE", "Cell", "Outcome",
           "Deliberate", "CellResult", "Report", "HostEnv", "enumerate_cells", "run_pygup_cell",
           "run_oracle", "format_report", "oracle_main", "nearest_policy",
           "io_uring_register_timing", "flag_names"]
