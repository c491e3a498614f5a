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
    from pygup.kernel.gup import Pages
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
    if p.kernel.policy.io_uring_file_check:
        # up to 6.4: "don't support file backed memory" (shmem, hugetlbfs ok)
        for vma in p.mm.vmas_in(addr, addr + nr * PAGE_SIZE):
            f = vma.vm_file
            if f is not None and f.fs.fstype.kind not in ("shmem", "hugetlb"):
                p.mm.unpin_user_pages(pages)
                return -errno.EOPNOTSUPP
    _hold(p, "io_uring", pages)
    return 0


def io_uring_unregister_buffers(p: "Process") -> int:
    """IORING_UNREGISTER_BUFFERS: 0, or -ENXIO when none are registered."""
    _proc(p)
    if not p.held.get("io_uring"):
        return -errno.ENXIO
    _release(p, "io_uring")
    return 0


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


def o_direct_read(p: "Process", addr: int, length: int, value: int = 0xD1D1) -> int:
    """A direct-I/O read into [addr, addr+length): the device writes ``value``
    into each page through a short-term FOLL_PIN | FOLL_WRITE pin
    (iov_iter_extract_pages -> pin_user_pages_fast), then the bio completes
    with unpin_user_pages_dirty_lock(make_dirty).  Returns bytes read."""
    p, addr, length = _range(p, addr, length)
    value = int_arg(value, "value", 0, (1 << 64) - 1)
    if (err := _rw_range_error(addr, length)) is not None:
        return err
    ret, pages = p.mm.pin_user_pages_fast(addr & ~(PAGE_SIZE - 1), _nr_pages(addr, length),
                                          FOLL.WRITE)
    if ret <= 0:
        return ret if ret < 0 else -errno.EFAULT
    for i in range(len(pages)):
        pages.write(i, value)
    p.mm.unpin_user_pages_dirty_lock(pages, True)
    return min(length, ret * PAGE_SIZE - (addr & (PAGE_SIZE - 1)))


def o_direct_write(p: "Process", addr: int, length: int) -> int:
    """A direct-I/O write from [addr, addr+length): the device reads the
    pages through a short-term read-only pin.  Returns bytes written."""
    p, addr, length = _range(p, addr, length)
    if (err := _rw_range_error(addr, length)) is not None:
        return err
    ret, pages = p.mm.pin_user_pages_fast(addr & ~(PAGE_SIZE - 1), _nr_pages(addr, length), 0)
    if ret <= 0:
        return ret if ret < 0 else -errno.EFAULT
    for i in range(len(pages)):
        pages.read(i)
    p.mm.unpin_user_pages(pages)
    return min(length, ret * PAGE_SIZE - (addr & (PAGE_SIZE - 1)))


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
