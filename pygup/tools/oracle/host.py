"""The host side of the oracle: a cell run on this machine's real kernel
(raw system calls from csrc's host probes), with the backings set up —
mounts, loop devices, huge pages — and torn down again, even on failure.
Most backings need root; one that cannot be set up is skipped with the
reason."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import tempfile
from typing import Iterable, Optional

from pygup._native import HostProbes as H
from pygup.flags import MAP, MS, PROT, errno_name

from pygup.tools.oracle.cells import (
    BACKINGS, Cell, HPAGE, LOOP_FS, METHODS, Outcome, PAGE, VALUE, _DIRECT_IO_FS, _run_steps,
    backing_size)

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


def loop_mount(fstype: str, image_dir: str, mount_dir: str, stack: contextlib.ExitStack) -> str:
    """A fresh ``fstype`` file system on a sparse image in ``image_dir``,
    loop-mounted at ``mount_dir``; ``stack`` unmounts and removes it.
    RuntimeError naming the missing tool or the failing step."""
    mkfs = shutil.which(f"mkfs.{fstype}")
    if mkfs is None:
        pkg = {"xfs": "xfsprogs", "btrfs": "btrfs-progs"}.get(fstype, "e2fsprogs")
        raise RuntimeError(f"mkfs.{fstype} not installed (apt-get install {pkg})")
    if shutil.which("losetup") is None:
        raise RuntimeError("losetup not installed")
    img = os.path.join(image_dir, f"{fstype}.img")
    with open(img, "wb") as f:
        # xfs and btrfs refuse small file systems
        f.truncate((512 if fstype in ("xfs", "btrfs") else 64) << 20)   # sparse
    stack.callback(_unlink_quietly, img)
    force = {"xfs": "-f", "btrfs": "-f"}.get(fstype, "-F")
    _run([mkfs, "-q", force, img])
    dev = _run(["losetup", "--find", "--show", img])
    stack.callback(_run, ["losetup", "-d", dev])
    os.makedirs(mount_dir, exist_ok=True)
    _run(["mount", "-t", fstype, dev, mount_dir])
    stack.callback(_run, ["umount", "-l", mount_dir])
    got = fs_type(mount_dir)
    if got != fstype:
        raise RuntimeError(f"mounted {fstype} at {mount_dir}, but it reads as {got}")
    return mount_dir


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
            d = os.path.join(self.tmp, f"mnt-{name}")
            return HostBacking(name, name, name, loop_mount(name, self.tmp, d, each))
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

    def run_scenario(self, scenario) -> Optional[list]:
        """A multi-step scenario here; None when it cannot run here."""
        return run_host_scenario(self, scenario)

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





# ---------------------------------------------------------------------------
# the host side of a multi-step scenario (scenarios.py)

_PM_PRESENT, _PM_EXCLUSIVE, _PM_PFN = 1 << 63, 1 << 56, (1 << 55) - 1
_KPF_DIRTY = 1 << 4          # include/uapi/linux/kernel-page-flags.h: the folio's PG_dirty


class HostScenarioSide:
    """``scenarios.ScenarioSide`` on this machine's kernel: files made by
    ``env``'s backings, one io_uring ring with a registered buffer, a forked
    child that obeys writes over a pipe."""

    def __init__(self, env: "HostEnv") -> None:
        self.env = env
        self.fds: list[int] = []
        self.maps: list[tuple[int, int]] = []
        # the ring first: its own mappings must not land in a scenario's hole
        self.slot, self.ring_addr, self.registered = H.ring_setup(), 0, False
        if self.slot < 0:
            raise OSError(-self.slot, "io_uring_setup")
        self.child: Optional[tuple[int, int, int]] = None     # pid, cmd fd, ack fd

    def new_file(self, kind: str, words: list[int]) -> int:
        if kind == "memfd":
            fd = os.memfd_create("scenario", os.MFD_CLOEXEC)
        else:
            fd, _ = HostBacking(kind, kind, kind, self.env.backings[kind].directory).open()
        self.fds.append(fd)
        os.ftruncate(fd, len(words) * PAGE)
        for i, w in enumerate(words):
            os.pwrite(fd, w.to_bytes(8, "little"), i * PAGE)
        return fd

    def pread(self, fd: int, index: int) -> Optional[int]:
        data = os.pread(fd, 8, index * PAGE)
        return int.from_bytes(data, "little") if data else None

    def ftruncate(self, fd: int, size: int) -> int:
        try:
            os.ftruncate(fd, size)
            return 0
        except OSError as e:
            return -e.errno

    def mmap(self, npages: int, prot: int, flags: int, f: object = None,
             addr: int = 0) -> tuple[int, int]:
        if f is None:
            flags |= MAP.ANONYMOUS
        if addr:
            # MAP_FIXED over part of a mapping made here: the probe maps at addr
            rc, got = H.mmap_fixed(addr, npages * PAGE, prot, flags, -1 if f is None else f, 0), addr
        else:
            rc, got = H.mmap(npages * PAGE, prot, flags, -1 if f is None else f, 0)
            if rc == 0:
                self.maps.append((got, npages * PAGE))
        return rc, got

    def munmap(self, addr: int, npages: int) -> int:
        return H.munmap(addr, npages * PAGE)

    def mprotect(self, addr: int, npages: int, prot: int) -> int:
        return H.mprotect(addr, npages * PAGE, prot)

    def write(self, addr: int, value: int) -> int:
        return H.touch(addr, 8, True, value)

    def read(self, addr: int) -> tuple[int, int]:
        return H.load(addr)

    def ring_open(self, addr: int, npages: int) -> int:
        rc = H.ring_register(self.slot, addr, npages * PAGE)
        if rc == 0:
            self.ring_addr, self.registered = addr, True
        return rc

    def ring_rw(self, write: bool, fd: int, index: int, buf_page: int = 0) -> int:
        # the buffer's address: the registration's start plus buf_page pages
        return H.ring_rw_fixed(self.slot, write, fd, self.ring_addr + buf_page * PAGE, PAGE,
                               index * PAGE)

    def ring_close(self) -> int:
        self.registered = False
        return H.ring_unregister(self.slot)

    def proc_mem_write(self, addr: int, value: int) -> int:
        return H.proc_mem_write(addr, value)

    def process_vm_readv(self, addr: int, npages: int) -> int:
        return H.process_vm_readv_range(addr, npages * PAGE)

    def proc_mem_write_pages(self, addr: int, values: list[int]) -> int:
        data = b"".join(v.to_bytes(8, "little") + bytes(PAGE - 8) for v in values)
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            return os.pwrite(fd, data, addr)
        except OSError as e:
            return -e.errno
        finally:
            os.close(fd)

    def proc_mem_read(self, addr: int) -> tuple[int, int]:
        return H.proc_mem_read(addr)

    def vmsplice(self, addr: int, npages: int) -> int:
        return H.vmsplice(addr, npages * PAGE)

    def msync(self, addr: int, npages: int) -> int:
        return H.msync(addr, npages * PAGE, int(MS.SYNC))

    def o_direct(self, write: bool, fd: int, index: int, addr: int, npages: int) -> int:
        # the same file opened again with O_DIRECT (the magic link reopens it)
        dfd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_DIRECT)
        try:
            fn = H.o_direct_write if write else H.o_direct_read
            return fn(dfd, addr, npages * PAGE, index * PAGE)
        finally:
            os.close(dfd)

    def folio_dirty(self, addr: int) -> Optional[bool]:
        present, pfn, _ = self.pagemap(addr)
        if not present or not pfn:
            return None
        with open("/proc/kpageflags", "rb", buffering=0) as f:
            flags = int.from_bytes(os.pread(f.fileno(), 8, pfn * 8), "little")
        return bool(flags & _KPF_DIRTY)

    def pagemap(self, addr: int) -> tuple[bool, Optional[int], bool]:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            e = int.from_bytes(os.pread(f.fileno(), 8, (addr // PAGE) * 8), "little")
        if not e & _PM_PRESENT:
            return False, None, False
        return True, e & _PM_PFN, bool(e & _PM_EXCLUSIVE)

    def fork(self) -> None:
        cmd_r, cmd_w = os.pipe()
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                  # the child: obey, then leave
            try:
                os.close(cmd_w)
                os.close(ack_r)
                while True:
                    line = os.read(cmd_r, 64)
                    if not line or line.startswith(b"x"):
                        break
                    _, a, v = line.split()
                    rc = H.touch(int(a), 8, True, int(v))
                    os.write(ack_w, str(rc).encode())
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(ack_w)
        self.child = (pid, cmd_w, ack_r)

    def child_write(self, addr: int, value: int) -> int:
        assert self.child is not None
        os.write(self.child[1], f"w {addr} {value}".encode())
        return int(os.read(self.child[2], 64))

    def child_exit(self) -> None:
        if self.child is None:
            return
        pid, cmd, ack = self.child
        self.child = None
        with contextlib.suppress(OSError):
            os.write(cmd, b"x")
        os.close(cmd)
        os.close(ack)
        os.waitpid(pid, 0)

    def close(self) -> None:
        self.child_exit()
        H.ring_close(self.slot)
        for addr, length in self.maps:
            H.munmap(addr, length)
        for fd in self.fds:
            os.close(fd)


def run_host_scenario(env: "HostEnv", scenario) -> Optional[list]:
    """The scenario on this machine's kernel, or None when something it
    needs is missing here (its backing, io_uring)."""
    from pygup.tools.oracle.scenarios import normalise
    if "io_uring" in env.method_skipped or any(
            not os.access("/proc/kpageflags", os.R_OK) if b == "kpageflags"
            else b not in env.backings for b in scenario.needs):
        return None
    side = HostScenarioSide(env)
    try:
        return normalise(scenario.run(side))
    finally:
        side.close()
