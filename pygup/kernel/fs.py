"""File systems, files, the page cache and the backing store ("disk").

A file system type is, as in the kernel, two independent capabilities
(SPEC §8): does the mapping's ``vm_ops`` have ``page_mkwrite`` /
``pfn_mkwrite``, and can its backing device write back
(``BDI_CAP_WRITEBACK``) — plus what kind of memory it is (regular page
cache, shmem, hugetlb, secretmem, DAX).  The presets below follow SPEC's
table; ``Machine.mount_custom`` builds any other combination.

This file holds what the memory-management side sees of a file system:
its type, its ``vm_ops``, its inodes with their page cache and disk, and
the superblock that observes ``page_mkwrite`` and dirtying.  File handles
and the namespace (create, open, unlink) are ``vfs.py``.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

import itertools

from pygup._native import C
from pygup.kernel.disk import DiskImage

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel

_inode_numbers = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class VmOps:
    """What pygup needs to know of a ``vm_operations_struct``."""

    name: str
    page_mkwrite: bool = False
    pfn_mkwrite: bool = False


# the vm_ops the presets use (SPEC §8)
SHMEM_VM_OPS = VmOps("shmem_vm_ops")
HUGETLB_VM_OPS = VmOps("hugetlb_vm_ops")
SECRETMEM_VM_OPS = VmOps("secretmem_vm_ops")
DEVICE_VM_OPS = VmOps("device_vm_ops")        # a driver's remap_pfn_range() VMA

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
    fallocate / punch_hole: its file_operations have ->fallocate, and it
      takes FALLOC_FL_PUNCH_HOLE (ext2, ramfs and secretmem have no
      ->fallocate: EOPNOTSUPP).
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
    fallocate: bool = True
    punch_hole: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.writeback and self.kind in _NOOP_BDI_KINDS:
            # shmem, hugetlbfs and secretmem inodes sit on
            # noop_backing_dev_info: mapping_can_writeback() is false for them
            raise ValueError(f"writeback: a {self.kind} file system never writes back "
                             "(its backing device is noop_backing_dev_info)")

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


# kinds whose inodes have no writeback-capable backing device
_NOOP_BDI_KINDS = ("shmem", "hugetlb", "secretmem")

# SPEC §8: mkwrite? / writeback bdi? per file system
PRESETS: dict[str, FsType] = {p.name: p for p in [
    FsType("ext2", True, False, True, attaches_private=True, magic=0xEF53,
           fallocate=False, punch_hole=False),
    FsType("ext4", True, False, True, attaches_private=True,
           skip_dirty_without_private=True, magic=0xEF53),
    FsType("xfs", True, True, True, attaches_private=True, magic=0x58465342),
    FsType("btrfs", True, False, True, attaches_private=True, magic=0x9123683E),
    FsType("nfs", True, False, True, magic=0x6969),
    FsType("fuse", True, False, True, magic=0x65735546),
    FsType("tmpfs", False, False, False, kind="shmem", magic=0x01021994),
    # ramfs maps with generic_file_vm_ops, whose page_mkwrite is
    # filemap_page_mkwrite; its bdi is noop (no writeback)
    FsType("ramfs", True, False, False, magic=0x858458F6, fallocate=False, punch_hole=False),
    FsType("hugetlbfs", False, False, False, kind="hugetlb", magic=0x958458F6),
    FsType("secretmem", False, False, False, kind="secretmem", magic=0x5345434D, fsync=False,
           fallocate=False, punch_hole=False),
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
    on each folio.  ``disk`` holds page index -> content word (a hole
    reads 0; kernel/disk.py)."""

    def __init__(self, fs: "SuperBlock", name: str, size: int) -> None:
        self.fs = fs
        self.name = name
        self.ino = next(_inode_numbers)     # never reused, unlike as_id
        self.size = size
        self.page_cache: dict[int, int] = {}
        self.disk = DiskImage()
        self.i_mmap: set = set()       # every VMA mapping this file (i_mmap)
        self.i_count = 0               # open File handles (struct file references)
        self.unlinked = False
        kind = _AS_KIND[fs.fstype.kind]
        # dirty-tracked as vma_needs_dirty_tracking() sees it: the vm_ops'
        # mkwrite hooks (a kind with fixed vm_ops has none) or writeback
        ops = fs.fstype.vm_ops
        if ops.page_mkwrite or ops.pfn_mkwrite or fs.fstype.writeback:
            kind |= C.AS_DIRTY_TRACKED
        self.as_id = fs.kernel.core.as_new(kind)
        fs.kernel.inodes[self.as_id] = self
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
        kernel = self.fs.kernel
        core = kernel.core
        movable = self.fs.fstype.kind in ("regular", "shmem", "dax")
        pfn = kernel.alloc_folio(self.order, movable=movable)
        try:
            for i in range(1 << self.order):
                value = self.disk.get(start + i, 0)
                if value:
                    core.frame_write(pfn + i, value)
            flags = C.F_UPTODATE | C.F_LRU
            if self.fs.fstype.huge:
                flags = C.F_UPTODATE | C.F_HUGETLB
            core.flags_update(pfn, flags, 0)
            core.set_mapping(pfn, self.mapping_word, start)
        except BaseException:
            # filemap_add_folio() failed: the new folio goes back (folio_put)
            core.folio_put(pfn, 1)
            raise
        self.page_cache[start] = pfn
        return pfn

    def release(self) -> None:
        """The inode is gone: free the address_space record by RCU."""
        if not self.released:
            self.released = True
            self.fs.kernel.core.as_release(self.as_id)


class SuperBlock:
    """A mounted file system as mm sees it: its type, the counters of what
    it observed and the warnings it logged (vfs.FileSystem adds the
    namespace)."""

    def __init__(self, kernel: "Kernel", name: str, fstype: FsType) -> None:
        self.kernel = kernel
        self.name = name
        self.fstype = fstype
        self.warnings: list[FsWarning] = []
        self.counters = {"page_mkwrite": 0, "pages_written": 0, "folios_dirtied": 0}

    # -- what the file system observes ---------------------------------------
    def page_mkwrite(self, inode: Inode, pfn: int, index: int) -> None:
        """->page_mkwrite: the file system hears of the coming write: it
        reserves blocks, attaches its private state, and the folio is
        dirtied (do_page_mkwrite + fault_dirty_shared_page)."""
        core = self.kernel.core
        self.counters["page_mkwrite"] += 1
        set_ = C.F_MKWRITE | (C.F_PRIVATE if self.fstype.attaches_private else 0)
        core.flags_update(pfn, set_, 0)

    def folio_mark_dirty(self, inode: Inode, pfn: int, index: int, why: str) -> None:
        """folio_mark_dirty(): a file system with page_mkwrite expects every
        dirtying to follow one since the last clean; record when not."""
        core = self.kernel.core
        old = core.flags_update(pfn, C.F_DIRTY, 0)
        if not old & C.F_DIRTY:
            self.counters["folios_dirtied"] += 1
        if self.fstype.page_mkwrite and not old & C.F_MKWRITE:
            self.warn(inode, index, f"folio dirtied without page_mkwrite ({why})")

    def warn(self, inode: Inode, index: int, what: str) -> None:
        self.warnings.append(FsWarning(inode.describe(), index, what))

    def stats(self) -> dict[str, int]:
        return {**self.counters, "warnings": len(self.warnings)}
