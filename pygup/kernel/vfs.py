"""The VFS side of files: open file handles, a mount's namespace (create,
open, unlink), the last-reference release of an inode, and the
kernel-internal mounts behind memfd, shared anonymous memory and
memfd_secret.
"""
from __future__ import annotations

import errno
import functools
import weakref
from typing import TYPE_CHECKING, Optional

from pygup.flags import FALLOC, MAX_LFS_FILESIZE, PAGE_SIZE, PMD_SIZE, GupError, int_arg
from pygup.kernel.fs import PRESETS, FsType, Inode, SuperBlock
from pygup.kernel.writeback import (punch_hole, truncate_inode, truncate_inode_pages,
                                    writeback_inode)

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel


class File:
    """An open file: an inode and the mode it was opened with.  Like a
    struct file, it holds its inode: an unlinked file (a memfd) keeps its
    data while the File is open, mapped or not.  ``close()`` (or dropping
    the last Python reference: then at the next model operation, as the
    kernel's delayed fput) lets it go."""

    def __init__(self, inode: Inode, writable: bool) -> None:
        self.inode = inode
        self.writable = writable
        kernel = inode.fs.kernel
        with kernel.lock:
            inode.i_count += 1
        self._fput = weakref.finalize(self, kernel.delayed_fput.append,
                                      functools.partial(fput, inode))
        self._fput.atexit = False

    @property
    def closed(self) -> bool:
        return not self._fput.alive

    def close(self) -> None:
        """close(2) of the last descriptor: fput() now.  Mappings keep the
        inode as they did; closing twice is EBADF."""
        if not self._fput.detach():
            raise GupError(errno.EBADF, f"{self.inode.describe()} is already closed")
        with self.fs.kernel.op():
            fput(self.inode)

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

    def pread(self, index: int) -> Optional[int]:
        """pread(2) of page ``index``: its content word through the page
        cache (filemap_read(): read in from disk when not cached), or None
        past the end of the file (a 0-byte read)."""
        _check_index(index)
        if index >= self.inode.nr_pages():
            return None
        with self.fs.kernel.op():
            pfn = self.inode.get_folio(index) + (index - self.inode.folio_start(index))
            return self.fs.kernel.core.frame_read(pfn)

    def pwrite(self, index: int, value: int) -> None:
        """pwrite(2) of a content word into page ``index`` (inside the file)
        through the page cache: generic_perform_write() — write_begin (the
        file system hears of the write, as page_mkwrite would tell it of a
        store through a mapping), the copy, write_end dirtying the folio."""
        _check_index(index)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise ValueError(f"value must be a 64-bit unsigned int, got {value!r}")
        if not self.writable:
            raise GupError(errno.EBADF, f"{self.name} is not open for writing")
        if index >= self.inode.nr_pages():
            raise ValueError(f"index {index} is past the end of {self.name} "
                             f"({self.inode.nr_pages()} pages)")
        kernel = self.fs.kernel
        with kernel.op():
            head = self.inode.get_folio(index)
            pfn = head + (index - self.inode.folio_start(index))
            self.fs.page_mkwrite(self.inode, head, index)
            kernel.core.frame_write(pfn, value)
            self.fs.folio_mark_dirty(self.inode, head, index, "write(2)")

    def writeback(self) -> int:
        """Write back every dirty folio (filemap_write_and_wait).  Returns
        pages written to disk."""
        with self.fs.kernel.op():
            return writeback_inode(self.inode)

    def truncate(self, size: int) -> None:
        """ftruncate(): shrink or grow; pages past the end are unmapped and
        dropped from the page cache (their mapping word cleared)."""
        _check_size(size, False)
        with self.fs.kernel.op():
            truncate_inode(self.inode, size)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """fallocate(2) as vfs_fallocate() checks it, then the file system's
        ->fallocate: FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE unmaps the range
        (private COW copies stay), drops it from the page cache and frees
        its blocks — a pinned folio leaves the cache but keeps its frame and
        its pin; mode 0 / KEEP_SIZE allocates (shmem and hugetlbfs: page
        cache folios; disk file systems: blocks) and, without KEEP_SIZE,
        extends the size.  Modes pygup does not model (ZERO_RANGE,
        COLLAPSE_RANGE...) are EOPNOTSUPP."""
        mode = int_arg(mode, "mode")
        offset = int_arg(offset, "offset")
        length = int_arg(length, "length")
        known = sum(int(f) for f in FALLOC)
        # vfs_fallocate(), in its order
        if offset < 0 or length <= 0:
            raise GupError(errno.EINVAL, "offset must be >= 0 and length > 0")
        if mode < 0 or mode & ~known:
            raise GupError(errno.EOPNOTSUPP, f"fallocate mode {mode:#x} is not modelled")
        if mode & FALLOC.PUNCH_HOLE and not mode & FALLOC.KEEP_SIZE:
            raise GupError(errno.EOPNOTSUPP, "FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE")
        if not self.writable:
            raise GupError(errno.EBADF, f"{self.inode.describe()} is not open for writing")
        if offset + length > MAX_LFS_FILESIZE:
            raise GupError(errno.EFBIG, "offset + length past the maximum file size")
        fstype = self.fs.fstype
        if not fstype.fallocate or (mode & FALLOC.PUNCH_HOLE and not fstype.punch_hole):
            raise GupError(errno.EOPNOTSUPP, f"{fstype.name} has no fallocate for mode {mode:#x}")
        inode = self.inode
        unit = PAGE_SIZE << inode.order
        with self.fs.kernel.op():
            if mode & FALLOC.PUNCH_HOLE:
                # whole pages (folios) only; a partial one is zeroed in
                # place, which the content-word model keeps as it is
                first = -(-offset // unit) * (1 << inode.order)
                last = ((offset + length) // unit) * (1 << inode.order)
                punch_hole(inode, first, min(last, max(inode.nr_pages(), first)))
                return
            end = offset + length
            if inode.fs.fstype.kind in ("shmem", "hugetlb"):
                # shmem_fallocate() / hugetlbfs_fallocate(): folios now
                if not mode & FALLOC.KEEP_SIZE and end > inode.size:
                    inode.size = -(-end // unit) * unit if fstype.huge else end
                # past EOF (KEEP_SIZE) pygup allocates nothing: a fault there is SIGBUS
                lim = -(-min(end, inode.size) // PAGE_SIZE)
                for index in range(offset // PAGE_SIZE, lim, 1 << inode.order):
                    inode.get_folio(index)
            elif not mode & FALLOC.KEEP_SIZE and end > inode.size:
                inode.size = end                 # blocks: nothing pygup keeps

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


def fput(inode: Inode) -> None:
    """/* mirrors fput() -> __fput() */: drop an open file's hold on its inode."""
    inode.i_count -= 1
    iput(inode)


def iput(inode: Inode) -> None:
    """/* mirrors iput() -> evict() */ for what pygup tracks: an unlinked
    inode that no open file holds and nothing maps any more loses its page
    cache, and its address_space record is freed by RCU."""
    if inode.unlinked and not inode.i_mmap and inode.i_count <= 0 and not inode.released:
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
