"""The VFS side of files: open file handles, a mount's namespace (create,
open, unlink), the last-reference release of an inode, and the
kernel-internal mounts behind memfd, shared anonymous memory and
memfd_secret.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Optional

from pygup.flags import MAX_LFS_FILESIZE, PMD_SIZE, GupError
from pygup.kernel.fs import PRESETS, FsType, Inode, SuperBlock
from pygup.kernel.writeback import truncate_inode, truncate_inode_pages, writeback_inode

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel


class File:
    """An open file: an inode and the mode it was opened with."""

    def __init__(self, inode: Inode, writable: bool) -> None:
        self.inode = inode
        self.writable = writable
        self.closed = False

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
        with self.fs.kernel.op():
            return writeback_inode(self.inode)

    def close(self) -> None:
        """close(2) of this handle: an unlinked file (a memfd, a removed
        name) that nothing maps any more is freed, as at the last fput();
        a named file stays.  Further calls do nothing."""
        if not self.closed:
            self.closed = True
            with self.fs.kernel.op():
                iput(self.inode)

    def truncate(self, size: int) -> None:
        """ftruncate(): shrink or grow; pages past the end are unmapped and
        dropped from the page cache (their mapping word cleared)."""
        _check_size(size, False)
        with self.fs.kernel.op():
            truncate_inode(self.inode, size)

    def __repr__(self) -> str:
        return f"<File {self.inode.describe()} size={self.size} {'rw' if self.writable else 'ro'}>"


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")


class FileSystem(SuperBlock):
    """A mounted file system: the superblock (fs.py) and its namespace."""

    def __init__(self, kernel: "Kernel", name: str, fstype: FsType) -> None:
        super().__init__(kernel, name, fstype)
        self.files: dict[str, Inode] = {}

    # -- files ---------------------------------------------------------------
    def create(self, name: str, size: int) -> File:
        """Create (or truncate) ``name`` with ``size`` bytes; opened read-write."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"name must be a non-empty file name, got {name!r}")
        _check_size(size, self.fstype.huge)
        with self.kernel.op():
            inode = self.files.get(name)
            if inode is None:
                inode = Inode(self, name, size)
                self.files[name] = inode
            else:
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
        with self.kernel.op():
            inode = self.files.pop(name, None)
            if inode is None:
                raise GupError(errno.ENOENT, f"{self.name}:{name}")
            inode.unlinked = True
            iput(inode)

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "files": len(self.files)}

    def __repr__(self) -> str:
        return f"<FileSystem {self.name} ({self.fstype.name})>"


def iput(inode: Inode) -> None:
    """/* mirrors iput() -> evict() */ for what pygup tracks: an unlinked
    inode that nothing maps any more loses its page cache, and its
    address_space record is freed by RCU."""
    if inode.unlinked and not inode.i_mmap:
        truncate_inode_pages(inode, 0)
        inode.release()


def mount(kernel: "Kernel", fstype: FsType, name: Optional[str]) -> FileSystem:
    """A new mount of ``fstype``, named uniquely within the machine."""
    base = name or fstype.name
    taken = {fs.name for fs in kernel.filesystems}
    unique, n = base, 1
    while unique in taken:
        unique, n = f"{base}-{n}", n + 1
    fs = FileSystem(kernel, unique, fstype)
    kernel.filesystems.append(fs)
    return fs


def internal_mount(kernel: "Kernel", preset: str) -> FileSystem:
    """The kernel-internal mounts: shm_mnt, hugetlbfs_vfsmount, secretmem_mnt."""
    fs = kernel.internal_mounts.get(preset)
    if fs is None:
        fs = mount(kernel, PRESETS[preset], f"[{preset}]")
        kernel.internal_mounts[preset] = fs
    return fs


def anon_inode_file(kernel: "Kernel", preset: str, name: str, size: int) -> File:
    """An unnamed file on an internal mount (shmem_file_setup(),
    hugetlb_file_setup(), secretmem_file_create()): it lives only as long as
    its mappings and handles."""
    fs = internal_mount(kernel, preset)
    kernel.next_anon_inode += 1
    file = fs.create(f"{name}#{kernel.next_anon_inode}", size)
    fs.files.pop(file.inode.name)
    file.inode.unlinked = True
    return file


def _check_size(size: int, huge: bool) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    if size > MAX_LFS_FILESIZE:
        # inode_newsize_ok(): past s_maxbytes is -EFBIG
        raise GupError(errno.EFBIG, f"size {size:#x} is past MAX_LFS_FILESIZE")
    if huge and size % PMD_SIZE:
        raise ValueError("size of a hugetlbfs file must be a multiple of 2 MiB")
