"""The kernel's GUP callers, each with the entry point and flags it really
uses in Linux 6.5, returning what its syscall returns (0, a count, or a
negative errno).

Callers that keep pages (io_uring fixed buffers, RDMA memory regions, VFIO
DMA mappings, pipe buffers after vmsplice) hold them in ``p.held[kind]``
until the matching release function drops them.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from pygup.flags import FOLL, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, bool_arg, int_arg

if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

    from pygup.kernel.gup import Pages
    from pygup.kernel.vfs import File
    from pygup.kernel.process import Process

SZ_1G = 1 << 30


def _proc(p) -> "Process":
    """p, if it is a live pygup Process; TypeError naming it otherwise."""
    from pygup.kernel.process import Process
    if not isinstance(p, Process):
        raise TypeError(f"p must be a pygup Process, got {type(p).__name__}")
    return p


def _range(p, addr, length) -> tuple["Process", int, int]:
    """The caller's arguments checked before any work: a Process, and addr /
    length as ints (numpy integers welcome; TypeError otherwise)."""
    return _proc(p), int_arg(addr, "addr"), int_arg(length, "length")


def _user_range_ok(addr: int, length: int) -> bool:
    """access_ok(): [addr, addr+length) lies in user space (no wrap)."""
    return 0 <= addr and 0 <= length and addr + length <= TASK_SIZE


def _nr_pages(addr: int, length: int) -> int:
    return ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (addr >> PAGE_SHIFT)


def _rw_range_error(addr: int, length: int):
    """rw_verify_area() / import_iovec(): a negative or wrapping length is
    -EINVAL, a range outside user space -EFAULT (access_ok()); None if the
    range is fine.  Checked before any page array exists."""
    if length < 0 or addr < 0 or addr + length >= 1 << 64:
        return -errno.EINVAL
    if not _user_range_ok(addr, length):
        return -errno.EFAULT
    return None


def _caller_check(p: "Process", rule: str, failed: bool, err: int, **inputs) -> bool:
    """A check the caller makes itself (not GUP): recorded in the active
    trace (explain's trace_calls) so that the refusal names its rule."""
    if p.kernel.trace_sink is not None:
        p.kernel.trace_sink.check(rule, failed, err, **inputs)
    return failed


def _hold(p: "Process", kind: str, pages: "Pages") -> None:
    p.held.setdefault(kind, []).append(pages)


def _release(p: "Process", kind: str, dirty: bool = False) -> int:
    n = 0
    for pages in p.held.pop(kind, []):
        if pages.pinned:
            p.mm.unpin_user_pages_dirty_lock(pages, dirty)
        else:
            p.mm.put_page(pages)
        n += len(pages)
    return n


def io_uring_register_buffers(p: "Process", addr: int, length: int) -> int:
    """IORING_REGISTER_BUFFERS of one iovec: io_buffer_validate(), then
    io_pin_pages(): pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) under
    mmap_lock in 6.5 (pin_user_pages_fast in later kernels: the policy's
    ``io_uring_pin_fast``).  Anything short of every page is -EFAULT."""
    p, addr, length = _range(p, addr, length)
    if addr == 0:
        return -errno.EFAULT if length else 0
    if length <= 0 or length > SZ_1G:
        return -errno.EFAULT
    if addr < 0 or addr + length + PAGE_SIZE - 1 >= 1 << 64:
        return -errno.EOVERFLOW
    nr = _nr_pages(addr, length)
    flags = FOLL.WRITE | FOLL.LONGTERM
    if p.kernel.policy.io_uring_pin_fast:
        ret, pages = p.mm.pin_user_pages_fast(addr, nr, flags)
    else:
        ret, pages = p.mm.pin_user_pages(addr, nr, flags)
    if ret != nr:
        if ret > 0:
            p.mm.unpin_user_pages(pages)
        return ret if ret < 0 else -errno.EFAULT
    ret = io_pin_pages_vma_check(p, addr, nr)
    if ret:
        p.mm.unpin_user_pages(pages)
        return ret
    _hold(p, "io_uring", pages)
    return 0


def io_pin_pages_vma_check(p: "Process", addr: int, nr: int) -> int:
    """/* mirrors the per-page vmas[] loop of io_pin_pages() (io_uring/rsrc.c,
    up to 6.4) */: page by page in address order, a page whose VMA maps another
    file than page 0's is -EINVAL ("io_uring/rsrc: disallow multi-source reg
    buffers", 6.3 and 6.1.16; the policy's ``io_uring_multi_source_check``),
    then a file page that is neither shmem nor hugetlbfs is -EOPNOTSUPP
    (``io_uring_file_check``).  6.5 dropped the loop (34ed8d0dcd69): GUP's
    own check decides.  pygup compares inodes; the kernel compares struct
    file, so two open()s of one file count as one file here."""
    policy = p.kernel.policy
    if not (policy.io_uring_file_check or policy.io_uring_multi_source_check):
        return 0
    first = p.mm.find_vma(addr)
    file = first.vm_file if first is not None else None
    for i in range(nr):
        vma = p.mm.find_vma(addr + i * PAGE_SIZE)
        f = vma.vm_file if vma is not None else None
        if policy.io_uring_multi_source_check and _caller_check(
                p, "io_pin_pages: buffer from several files", f is not file, errno.EINVAL):
            return -errno.EINVAL
        if f is None:
            continue
        if policy.io_uring_file_check and _caller_check(
                p, "io_sqe_buffer_register: file-backed buffer",
                f.fs.fstype.kind not in ("shmem", "hugetlb"), errno.EOPNOTSUPP,
                fs=f.fs.name):
            return -errno.EOPNOTSUPP
    return 0


def io_uring_unregister_buffers(p: "Process") -> int:
    """IORING_UNREGISTER_BUFFERS: 0, or -ENXIO when none are registered."""
    _proc(p)
    if not p.held.get("io_uring"):
        return -errno.ENXIO
    _release(p, "io_uring")
    return 0


def _file_arg(file) -> "File":
    """file, if it is a pygup File; TypeError naming it otherwise."""
    from pygup.kernel.vfs import File
    if not isinstance(file, File):
        raise TypeError(f"file must be a pygup File, got {type(file).__name__}")
    return file


def _fixed_buffer(p: "Process", buf_page: int) -> "Optional[Pages]":
    _proc(p)
    held = p.held.get("io_uring")
    if not held or isinstance(buf_page, bool) or not isinstance(buf_page, int) \
            or not 0 <= buf_page < len(held[0]):
        return None
    return held[0]


def io_uring_read_fixed(p: "Process", file: "File", index: int, buf_page: int = 0) -> int:
    """IORING_OP_READ_FIXED of one page of ``file`` (page ``index``) into
    page ``buf_page`` of registered buffer 0: io_import_fixed() builds a
    bvec from the pages pinned at registration (no GUP now), the file's
    read copies into them — whatever is mapped at the address today.
    Bytes read (0 past the end of the file), or -EFAULT (no such buffer)."""
    _file_arg(file)
    pages = _fixed_buffer(p, buf_page)
    if pages is None:
        return -errno.EFAULT
    value = file.pread(index)
    if value is None:
        return 0
    pages.write(buf_page, value)
    return PAGE_SIZE


def io_uring_write_fixed(p: "Process", file: "File", index: int, buf_page: int = 0) -> int:
    """IORING_OP_WRITE_FIXED of page ``buf_page`` of registered buffer 0
    into page ``index`` of ``file``: the data comes from the pinned page.
    Bytes written, -EBADF (file not writable) or -EFAULT (no such buffer)."""
    _file_arg(file)
    pages = _fixed_buffer(p, buf_page)
    if pages is None:
        return -errno.EFAULT
    if not file.writable:
        return -errno.EBADF
    file.pwrite(index, pages.read(buf_page))
    return PAGE_SIZE


def process_vm_readv_range(p: "Process", addr: int, nr_pages: int) -> int:
    """process_vm_readv() of ``nr_pages`` whole pages from page-aligned
    ``addr``: process_vm_rw_single_vec() pins and copies in chunks and stops
    at the first failure, returning the bytes copied so far (-EFAULT when
    none)."""
    _proc(p)
    addr = int_arg(addr, "addr")
    nr_pages = int_arg(nr_pages, "nr_pages")
    if addr < 0 or nr_pages < 0 or addr + nr_pages * PAGE_SIZE >= 1 << 64:
        return -errno.EINVAL
    done = 0
    for i in range(nr_pages):
        ret, pages = p.mm.pin_user_pages_remote(addr + i * PAGE_SIZE, 1, 0)
        if ret <= 0:
            break
        pages.read(0)
        p.mm.unpin_user_pages(pages)
        done += PAGE_SIZE
    return done if done else -errno.EFAULT


def rdma_umem_get(p: "Process", addr: int, length: int, writable: bool = True) -> int:
    """ib_umem_get(): pin_user_pages_fast(FOLL_LONGTERM [| FOLL_WRITE]) in
    batches of 512 pages until the region is pinned; 0 or the first error."""
    p, addr, length = _range(p, addr, length)
    writable = bool_arg(writable, "writable")
    if length <= 0 or addr < 0 or addr + length >= 1 << 64:
        return -errno.EINVAL         # the region wraps (ib_umem_get())
    if not _user_range_ok(addr, length):
        return -errno.EFAULT
    flags = FOLL.LONGTERM | (FOLL.WRITE if writable else 0)
    cur = addr & ~(PAGE_SIZE - 1)
    npages = _nr_pages(addr, length)
    got: list["Pages"] = []
    while npages:
        ret, pages = p.mm.pin_user_pages_fast(cur, min(npages, PAGE_SIZE // 8), flags)
        if ret <= 0:          # 6.5 loops on 0; pygup treats it as a fault
            for held in got:
                p.mm.unpin_user_pages(held)
            return ret if ret < 0 else -errno.EFAULT
        got.append(pages)
        cur += ret * PAGE_SIZE
        npages -= ret
    for pages in got:
        _hold(p, "rdma", pages)
    return 0


def rdma_umem_release(p: "Process", dirty: bool = True) -> int:
    """ib_umem_release(): unpin, dirtying the pages if the MR was writable."""
    _proc(p)
    dirty = bool_arg(dirty, "dirty")
    return _release(p, "rdma", dirty)


def vfio_pin(p: "Process", addr: int, length: int, writable: bool = True) -> int:
    """vfio_iommu_type1 vaddr_get_pfns(): pin_user_pages_remote(FOLL_LONGTERM
    [| FOLL_WRITE]) under mmap_lock.  Returns pages pinned or an errno."""
    p, addr, length = _range(p, addr, length)
    writable = bool_arg(writable, "writable")
    if length <= 0 or addr < 0 or addr + length >= 1 << 64:
        return -errno.EINVAL         # vfio_dma_do_map(): size 0 or a wrapping range
    if not _user_range_ok(addr, length):
        return -errno.EFAULT
    flags = FOLL.LONGTERM | (FOLL.WRITE if writable else 0)
    ret, pages = p.mm.pin_user_pages_remote(addr & ~(PAGE_SIZE - 1), _nr_pages(addr, length), flags)
    if ret > 0:
        _hold(p, "vfio", pages)
    return ret


def vfio_unpin(p: "Process") -> int:
    _proc(p)
    return _release(p, "vfio", dirty=True)


def _dio_result(ret: int, nr: int, addr: int, length: int) -> int:
    """/* mirrors __iomap_dio_rw() */ without IOMAP_DIO_PARTIAL (ext4, xfs):
    a range that could not be pinned whole fails whole with the GUP error
    (-EFAULT), though the bios for the pages before the bad one were
    submitted and completed."""
    if ret < nr:
        return ret if ret < 0 else -errno.EFAULT
    return length


def o_direct_read(p: "Process", addr: int, length: int, value: int = 0xD1D1) -> int:
    """A direct-I/O read (ext4 / xfs) into [addr, addr+length): the device
    writes ``value`` into each page through a short-term FOLL_PIN |
    FOLL_WRITE pin (iov_iter_extract_pages -> pin_user_pages_fast), then the
    bio completes with unpin_user_pages_dirty_lock(make_dirty).  Returns
    bytes read, or -EFAULT if any page of the range could not be pinned."""
    return o_direct_read_pages(p, addr, length, value)[0]


def o_direct_read_pages(p: "Process", addr: int, length: int, value: int = 0xD1D1
                        ) -> tuple[int, int]:
    """``o_direct_read`` and the number of pages the device wrote: on
    -EFAULT, the pages before the bad one still got the data."""
    p, addr, length = _range(p, addr, length)
    value = int_arg(value, "value", 0, (1 << 64) - 1)
    if (err := _rw_range_error(addr, length)) is not None:
        return err, 0
    nr = _nr_pages(addr, length)
    ret, pages = p.mm.pin_user_pages_fast(addr & ~(PAGE_SIZE - 1), nr, FOLL.WRITE)
    if ret > 0:
        for i in range(len(pages)):
            pages.write(i, value)
        p.mm.unpin_user_pages_dirty_lock(pages, True)
    return _dio_result(ret, nr, addr, length), max(ret, 0)


def o_direct_write(p: "Process", addr: int, length: int) -> int:
    """A direct-I/O write (ext4 / xfs) from [addr, addr+length): the device
    reads the pages through a short-term read-only pin.  Returns bytes
    written, or -EFAULT if any page of the range could not be pinned."""
    p, addr, length = _range(p, addr, length)
    if (err := _rw_range_error(addr, length)) is not None:
        return err
    nr = _nr_pages(addr, length)
    ret, pages = p.mm.pin_user_pages_fast(addr & ~(PAGE_SIZE - 1), nr, 0)
    if ret > 0:
        for i in range(len(pages)):
            pages.read(i)
        p.mm.unpin_user_pages(pages)
    return _dio_result(ret, nr, addr, length)


def _dio_file_range(file: "File", index: int, nr: int) -> "Optional[int]":
    """The checks of a direct I/O on ``file`` at page ``index``: -EINVAL
    where the file system has no disk blocks to read or write (shmem,
    ramfs, hugetlbfs: open(O_DIRECT) refuses them), None when it may go on.
    pygup models neither extending a file nor a read past its end."""
    from pygup.kernel.writeback import mapping_can_writeback
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    if index + nr > file.inode.nr_pages():
        raise ValueError(f"index {index} + {nr} pages is past the end of {file.name} "
                         f"({file.inode.nr_pages()} pages)")
    if not mapping_can_writeback(file.inode):
        return -errno.EINVAL
    return None


def o_direct_pread(p: "Process", file: "File", index: int, addr: int, length: int) -> int:
    """pread(2) on ``file`` opened O_DIRECT (ext4 / xfs), file pages from
    ``index`` into [addr, addr+length): the dirty page cache over the range
    is written back first (kiocb_write_and_wait()), then the device writes
    the disk blocks into the pages pinned FOLL_WRITE (``o_direct_read``).
    Bytes read or -errno."""
    from pygup.kernel.writeback import writeback_inode
    nr = _nr_pages(addr, length)
    bad = _dio_file_range(file, index, nr)
    if bad is not None:
        return bad
    with p.kernel.op():
        writeback_inode(file.inode, index, index + nr)
    ret, pages = p.mm.pin_user_pages_fast(addr & ~(PAGE_SIZE - 1), nr, FOLL.WRITE)
    if ret > 0:
        for i in range(len(pages)):
            pages.write(i, file.disk(index + i))
        p.mm.unpin_user_pages_dirty_lock(pages, True)
    return _dio_result(ret, nr, addr, length)


def o_direct_pwrite(p: "Process", file: "File", index: int, addr: int, length: int) -> int:
    """pwrite(2) on ``file`` opened O_DIRECT (ext4 / xfs) from [addr,
    addr+length) to file pages from ``index``: the range's page cache is
    written back and invalidated (kiocb_invalidate_pages()), the pages are
    pinned read-only in bios (iov_iter_extract_pages ->
    pin_user_pages_fast) and their data lands on disk.  A range that stops
    being pinnable fails the call with -EFAULT (``_dio_result``), but the
    bios already built for the pages before it were submitted: that data
    is in the file.  Bytes written or -errno."""
    from pygup.kernel.writeback import writeback_inode
    nr = _nr_pages(addr, length)
    bad = _dio_file_range(file, index, nr)
    if bad is not None:
        return bad
    if not file.writable:
        return -errno.EBADF
    with p.kernel.op():
        writeback_inode(file.inode, index, index + nr)
    ret, pages = p.mm.pin_user_pages_fast(addr & ~(PAGE_SIZE - 1), nr, 0)
    if ret > 0:
        data = [pages.read(i) for i in range(len(pages))]
        p.mm.unpin_user_pages(pages)
        with p.kernel.op():
            for i, value in enumerate(data):
                file.inode.disk[index + i] = value
                # pygup keeps the (clean) cached page instead of dropping it
                # as invalidate_inode_pages2_range() would: it gets the new
                # data, which is what a later buffered read would read in
                pfn = file.cached(index + i)
                if pfn is not None:
                    p.kernel.core.frame_write(pfn, value)
    return _dio_result(ret, nr, addr, length)


def _access_remote_vm(p: "Process", addr: int, write: bool, value: int) -> int:
    """__access_remote_vm(): get_user_pages_remote(FOLL_FORCE [| FOLL_WRITE])
    of one page, copy through the kernel mapping, set_page_dirty_lock on a
    write, put_page.  Returns the value read (or 8 for a write), or -EIO."""
    _proc(p)
    addr = int_arg(addr, "addr")
    value = int_arg(value, "value", 0, (1 << 64) - 1)
    if not 0 <= addr < TASK_SIZE:
        return -errno.EIO
    flags = FOLL.FORCE | (FOLL.WRITE if write else 0)
    ret, pages = p.mm.get_user_pages_remote(addr & ~(PAGE_SIZE - 1), 1, flags)
    if ret <= 0:
        return -errno.EIO          # mem_rw(): nothing copied
    from pygup.kernel.gup import mark_folio_dirty
    try:
        if write:
            pages.write(0, value)
            with p.kernel.op():
                mark_folio_dirty(p.kernel, p.kernel.core.frame_info(pages[0]),
                                 "set_page_dirty_lock (/proc/pid/mem)")
            return 8
        return pages.read(0)
    finally:
        p.mm.put_page(pages)


def proc_mem_write(p: "Process", addr: int, value: int) -> int:
    """write(2) of 8 bytes to /proc/pid/mem (FOLL_FORCE | FOLL_WRITE)."""
    return _access_remote_vm(p, addr, True, value)


def proc_mem_write_pages(p: "Process", addr: int, values: "list[int]") -> int:
    """One write(2) to /proc/pid/mem of ``len(values)`` whole pages from
    page-aligned ``addr``, page i starting with ``values[i]``: mem_rw()
    copies a page at a time through access_remote_vm() and stops at the
    first page it cannot reach, answering the bytes written so far, or
    -EIO when the first page already fails."""
    if addr & (PAGE_SIZE - 1):
        raise ValueError(f"addr must be page-aligned, got {addr:#x}")
    if not values:
        raise ValueError("values must name at least one page")
    done = 0
    for i, value in enumerate(values):
        if _access_remote_vm(p, addr + i * PAGE_SIZE, True, value) < 0:
            break
        done += PAGE_SIZE
    return done if done else -errno.EIO


def proc_mem_read(p: "Process", addr: int) -> int:
    """read(2) of 8 bytes from /proc/pid/mem (FOLL_FORCE): the value, or -EIO."""
    return _access_remote_vm(p, addr, False, 0)


def process_vm_writev(p: "Process", addr: int, value: int) -> int:
    """process_vm_writev() of one 8-byte value: pin_user_pages_remote(
    FOLL_WRITE), copy, unpin_user_pages_dirty_lock(true).  Bytes or -EFAULT."""
    _proc(p)
    addr = int_arg(addr, "addr")
    value = int_arg(value, "value", 0, (1 << 64) - 1)
    if not 0 <= addr < TASK_SIZE:
        return -errno.EFAULT
    ret, pages = p.mm.pin_user_pages_remote(addr & ~(PAGE_SIZE - 1), 1, FOLL.WRITE)
    if ret <= 0:
        return -errno.EFAULT
    pages.write(0, value)
    p.mm.unpin_user_pages_dirty_lock(pages, True)
    return 8


def process_vm_readv(p: "Process", addr: int) -> int:
    """process_vm_readv() of one 8-byte value (pin_user_pages_remote(0)):
    the value, or -EFAULT."""
    _proc(p)
    addr = int_arg(addr, "addr")
    if not 0 <= addr < TASK_SIZE:
        return -errno.EFAULT
    ret, pages = p.mm.pin_user_pages_remote(addr & ~(PAGE_SIZE - 1), 1, 0)
    if ret <= 0:
        return -errno.EFAULT
    value = pages.read(0)
    p.mm.unpin_user_pages(pages)
    return value


def vmsplice(p: "Process", addr: int, length: int) -> int:
    """vmsplice() to a pipe: get_user_pages_fast() (FOLL_GET, no pin) via
    iov_iter_get_pages2; the pipe keeps the references.  Bytes or errno."""
    p, addr, length = _range(p, addr, length)
    if (err := _rw_range_error(addr, length)) is not None:
        return err
    ret, pages = p.mm.get_user_pages_fast(addr & ~(PAGE_SIZE - 1), _nr_pages(addr, length), 0)
    if ret <= 0:
        return ret if ret < 0 else -errno.EFAULT
    _hold(p, "pipe", pages)
    return min(length, ret * PAGE_SIZE - (addr & (PAGE_SIZE - 1)))


def pipe_read(p: "Process") -> list[int]:
    """Read the pipe filled by vmsplice: the pages' contents now (which is
    what CVE-2020-29374 is about), then drop the references."""
    _proc(p)
    values = [pages.read(i) for pages in p.held.get("pipe", []) for i in range(len(pages))]
    _release(p, "pipe")
    return values
