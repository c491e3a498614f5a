"""The oracle's vocabulary, shared by both sides: what a cell is (backing x
MAP_SHARED/MAP_PRIVATE x PROT_READ|PROT_WRITE / PROT_READ x method x
variant), its outcome, the deliberate differences between pygup and a real
kernel (``DELIBERATE``, each with its reason), and the steps a cell runs
(``_run_steps``) on whichever side.

* backings: anonymous memory, memfd, a tmpfs file, a file in the working
  directory's file system, loop-mounted ext2 / ext4 / xfs / btrfs images,
  ramfs, hugetlbfs (memfd MFD_HUGETLB), secretmem (memfd_secret) and a file
  opened read-only;
* methods, each a real GUP caller: io_uring buffer registration,
  /proc/self/mem write and read, process_vm_writev / readv, an O_DIRECT
  read into the buffer, vmsplice;
* variants: faulted in first (``memset``, then ``mprotect(PROT_READ)`` for
  the read-only cells), not faulted in, faulted in then ``msync(MS_SYNC)``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Optional, Protocol

from pygup.config.policy import POLICIES
from pygup.flags import FOLL, MAP, PAGE_SIZE, PMD_SIZE, PROT, errno_name

PAGE = PAGE_SIZE
HPAGE = PMD_SIZE                    # one hugetlb page
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


