"""File systems, files, the page cache and the backing store ("disk").

A file system type is, as in the kernel, two independent capabilities
(SPEC §8): does the mapping's ``vm_ops`` have ``page_mkwrite`` /
``pfn_mkwrite``, and can its backing device write back
(``BDI_CAP_WRITEBACK``) — plus what kind of memory it is (regular page
cache, shmem, hugetlb, secretmem, DAX).  The presets below follow SPEC's
table; ``Machine.mount_custom`` builds any other combination.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from pygup._native import C
from pygup.flags import GupError
from pygup.kernel.vma import HUGETLB_VM_OPS, SECRETMEM_VM_OPS, SHMEM_VM_OPS, VmOps

if TYPE_CHECKING:  # pragma: no cover
    from pygup.machine import Machine
    from pygup.kernel.vma import VMA

import errno
import itertools

_inode_numbers = itertools.count(1)

KINDS = ("regular", "shmem", "hugetlb", "secretmem", "dax")
_AS_KIND = {"regular": 0, "shmem": C.AS_SHMEM, "hugetlb": C.AS_HUGETLB,
            "secretmem": C.AS_SECRETMEM, "dax": C.AS_DAX}


@dataclasses.dataclass(frozen=True)
class FsType:
    """A file-system preset.

    page_mkwrite / pfn_mkwrite: what its mmap'ed ``vm_ops`` provide.
    writeback: its bdi has BDI_CAP_WRITEBACK (``mapping_can_writeback``).
    kind: regular page cache, shmem, hugetlb, secretmem or dax.
    attaches_private: page_mkwrite attaches fs-private state to the folio
      (ext4/ext2 buffer heads, xfs/iomap folio state, btrfs).
    skip_dirty_without_private: writeback of a dirty folio without that
      state warns, clears dirty and skips it — ext4 since commit
      cc5095747edf (before, a BUG); the data is lost.
    magic: statfs f_type.
    fsync: its file_operations have ->fsync; without one vfs_fsync_range()
      fails, so msync(MS_SYNC) of a shared mapping gives -EINVAL
      (secretmem: only .release and .mmap).
    """

    name: str
    page_mkwrite: bool
    pfn_mkwrite: bool
    writeback: bool
    kind: str = "regular"
    attaches_private: bool = False
    skip_dirty_without_private: bool = False
    magic: int = 0
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def vm_ops(self) -> VmOps:
        if self.kind == "shmem":
            return SHMEM_VM_OPS
        if self.kind == "hugetlb":
            return HUGETLB_VM_OPS
        if self.kind == "secretmem":
            return SECRETMEM_VM_OPS
        return VmOps(f"{self.name}_file_vm_ops", self.page_mkwrite, self.pfn_mkwrite)

    @property
    def huge(self) -> bool:
        return self.kind == "hugetlb"


# SPEC §8: mkwrite? / writeback bdi? per file system
PRESETS: dict[str, FsType] = {p.name: p for p in [
    FsType("ext2", True, False, True, attaches_private=True, magic=0xEF53),
    FsType("ext4", True, False, True, attaches_private=True,
           skip_dirty_without_private=True, magic=0xEF53),
    FsType("xfs", True, True, True, attaches_private=True, magic=0x58465342),
    FsType("btrfs", True, False, True, attaches_private=True, magic=0x9123683E),
    FsType("nfs", True, False, True, magic=0x6969),
    FsType("fuse", True, False, True, magic=0x65735546),
    FsType("tmpfs", False, False, False, kind="shmem", magic=0x01021994),
    # ramfs maps with generic_file_vm_ops, whose page_mkwrite is
    # filemap_page_mkwrite; its bdi is noop (no writeback)
    FsType("ramfs", True, False, False, magic=0x858458F6),
    FsType("hugetlbfs", False, False, False, kind="hugetlb", magic=0x958458F6),
    FsType("secretmem", False, False, False, kind="secretmem", magic=0x5345434D, fsync=False),
    FsType("fsdax", True, True, True, kind="dax", attaches_private=True, magic=0xEF53),
]}


@dataclasses.dataclass(frozen=True)
class FsWarning:
    """What a file system complained about."""

    file: str
    index: int
    what: str


class Inode:
    """A file: its page cache, its disk blocks and its address_space record.

    ``page_cache`` maps the first page index of each folio to its head pfn
    (hugetlb folios cover 512 indices).  The page cache holds one reference
    on each folio.  ``disk`` maps page index -> content word (absent = 0)."""

    def __init__(self, fs: "FileSystem", name: str, size: int) -> None:
        self.fs = fs
        self.name = name
        self.ino = next(_inode_numbers)     # never reused, unlike as_id
        self.size = size
        self.page_cache: dict[int, int] = {}
        self.disk: dict[int, int] = {}
        self.i_mmap: set["VMA"] = set()       # every VMA mapping this file
        self.unlinked = False
        kind = _AS_KIND[fs.fstype.kind]
        if fs.fstype.page_mkwrite or fs.fstype.writeback:
            kind |= C.AS_DIRTY_TRACKED
        self.as_id = fs.machine._core.as_new(kind)
        fs.machine._inodes[self.as_id] = self
        self.released = False

    @property
    def order(self) -> int:
        return C.PMD_ORDER if self.fs.fstype.huge else 0

    @property
    def mapping_word(self) -> int:
        return self.as_id << 2

    def describe(self) -> str:
        return f"{self.fs.name}:{self.name}"

    def nr_pages(self) -> int:
        return (self.size + C.PAGE_SIZE - 1) >> C.PAGE_SHIFT

    def folio_start(self, index: int) -> int:
        return index & ~((1 << self.order) - 1)

    def find_folio(self, index: int) -> Optional[int]:
        """The head pfn caching page ``index``, or None."""
        return self.page_cache.get(self.folio_start(index))

    def get_folio(self, index: int) -> int:
        """filemap_fault()'s lookup: the cached folio, or a new one read from
        disk (or zero-filled for memory file systems).  Returns the head pfn;
        the page cache keeps its reference."""
        start = self.folio_start(index)
        pfn = self.page_cache.get(start)
        if pfn is not None:
            return pfn
        core = self.fs.machine._core
        movable = self.fs.fstype.kind in ("regular", "shmem", "dax")
        pfn = self.fs.machine.alloc_folio(self.order, movable=movable)
        for i in range(1 << self.order):
            value = self.disk.get(start + i, 0)
            if value:
                core.frame_write(pfn + i, value)
        flags = C.F_UPTODATE | C.F_LRU
        if self.fs.fstype.huge:
            flags = C.F_UPTODATE | C.F_HUGETLB
        core.flags_update(pfn, flags, 0)
        core.set_mapping(pfn, self.mapping_word, start)
        self.page_cache[start] = pfn
        return pfn

    def release(self) -> None:
        """The inode is gone: free the address_space record by RCU."""
        if not self.released:
            self.released = True
            self.fs.machine._core.as_release(self.as_id)

    def maybe_release(self) -> None:
        if self.unlinked and not self.i_mmap:
            from pygup.kernel.writeback import truncate_inode_pages
            truncate_inode_pages(self, 0)
            self.release()


class File:
    """An open file: an inode and the mode it was opened with."""

    def __init__(self, inode: Inode, writable: bool) -> None:
        self.inode = inode
        self.writable = writable

    @property
    def fs(self) -> "FileSystem":
        return self.inode.fs

    @property
    def name(self) -> str:
        return self.inode.name

    @property
    def size(self) -> int:
        return self.inode.size

    def disk(self, index: int) -> int:
        """The content word of page ``index`` on the backing store."""
        _check_index(index)
        return self.inode.disk.get(index, 0)

    def cached(self, index: int) -> Optional[int]:
        """pfn of the page-cache page for ``index``, or None."""
        _check_index(index)
        pfn = self.inode.find_folio(index)
        return None if pfn is None else pfn + (index - self.inode.folio_start(index))

    def writeback(self) -> int:
        """Write back every dirty folio (filemap_write_and_wait).  Returns
        pages written to disk."""
        from pygup.kernel.writeback import writeback_inode
        with self.fs.machine._op():
            return writeback_inode(self.inode)

    def truncate(self, size: int) -> None:
        """ftruncate(): shrink or grow; pages past the end are unmapped and
        dropped from the page cache (their mapping word cleared)."""
        from pygup.kernel.writeback import truncate_inode
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}")
        with self.fs.machine._op():
            truncate_inode(self.inode, size)

    def __repr__(self) -> str:
        return f"<File {self.inode.describe()} size={self.size} {'rw' if self.writable else 'ro'}>"


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")


class FileSystem:
    """A mounted file system: files, counters and the warnings it logged."""

    def __init__(self, machine: "Machine", name: str, fstype: FsType) -> None:
        self.machine = machine
        self.name = name
        self.fstype = fstype
        self.files: dict[str, Inode] = {}
        self.warnings: list[FsWarning] = []
        self.counters = {"page_mkwrite": 0, "pages_written": 0, "folios_dirtied": 0}

    # -- files ---------------------------------------------------------------
    def create(self, name: str, size: int) -> File:
        """Create (or truncate) ``name`` with ``size`` bytes; opened read-write."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"name must be a non-empty file name, got {name!r}")
        _check_size(size, self.fstype.huge)
        with self.machine._op():
            inode = self.files.get(name)
            if inode is None:
                inode = Inode(self, name, size)
                self.files[name] = inode
            else:
                from pygup.kernel.writeback import truncate_inode
                truncate_inode(inode, size)
            return File(inode, writable=True)

    def open(self, name: str, writable: bool = True) -> File:
        inode = self.files.get(name)
        if inode is None:
            raise GupError(errno.ENOENT, f"{self.name}:{name}")
        return File(inode, writable=bool(writable))

    def unlink(self, name: str) -> None:
        """Remove the name; the inode (and its address_space record, by RCU)
        goes when the last mapping of it does."""
        with self.machine._op():
            inode = self.files.pop(name, None)
            if inode is None:
                raise GupError(errno.ENOENT, f"{self.name}:{name}")
            inode.unlinked = True
            inode.maybe_release()

    # -- what the file system observes ---------------------------------------
    def page_mkwrite(self, inode: Inode, pfn: int, index: int) -> None:
        """->page_mkwrite: the file system hears of the coming write: it
        reserves blocks, attaches its private state, and the folio is
        dirtied (do_page_mkwrite + fault_dirty_shared_page)."""
        core = self.machine._core
        self.counters["page_mkwrite"] += 1
        set_ = C.F_MKWRITE | (C.F_PRIVATE if self.fstype.attaches_private else 0)
        core.flags_update(pfn, set_, 0)

    def folio_mark_dirty(self, inode: Inode, pfn: int, index: int, why: str) -> None:
        """folio_mark_dirty(): a file system with page_mkwrite expects every
        dirtying to follow one since the last clean; record when not."""
        core = self.machine._core
        old = core.flags_update(pfn, C.F_DIRTY, 0)
        if not old & C.F_DIRTY:
            self.counters["folios_dirtied"] += 1
        if self.fstype.page_mkwrite and not old & C.F_MKWRITE:
            self.warn(inode, index, f"folio dirtied without page_mkwrite ({why})")

    def warn(self, inode: Inode, index: int, what: str) -> None:
        self.warnings.append(FsWarning(inode.describe(), index, what))

    def stats(self) -> dict[str, int]:
        return {**self.counters, "warnings": len(self.warnings), "files": len(self.files)}

    def __repr__(self) -> str:
        return f"<FileSystem {self.name} ({self.fstype.name})>"


def _check_size(size: int, huge: bool) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    if huge and size % (C.PMD_NR * C.PAGE_SIZE):
        raise ValueError("size of a hugetlbfs file must be a multiple of 2 MiB")
