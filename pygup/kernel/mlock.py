"""mlock(2), mlock2(2), munlock(2), mlockall(2), munlockall(2) (mm/mlock.c,
Linux 6.5), run under the machine lock by ``Process``: VM_LOCKED /
VM_LOCKONFAULT on the VMAs, the mm's ``locked_vm`` against the process's
RLIMIT_MEMLOCK, and populate through GUP (gup.__mm_populate).
"""
from __future__ import annotations

import errno

from pygup.flags import MCL, PAGE_SHIFT, VM, GupError
from pygup.kernel.vma import VMA, vma_is_fsdax, vma_is_secretmem

# ``p`` below is a pygup.kernel.process.Process (not imported: process.py
# imports this module)

VM_LOCKED_MASK = VM.LOCKED | VM.LOCKONFAULT
VM_SPECIAL = VM.IO | VM.DONTEXPAND | VM.PFNMAP | VM.MIXEDMAP


def can_do_mlock(p) -> bool:
    """/* mirrors can_do_mlock() */: a non-zero RLIMIT_MEMLOCK or CAP_IPC_LOCK."""
    return p.rlimit_memlock != 0 or p.cap_ipc_lock


def mlock_future_ok(p, flags: int, nbytes: int) -> bool:
    """/* mirrors mlock_future_ok() */: may a new VM_LOCKED range of nbytes
    be added (mmap(MAP_LOCKED), mremap growth)?"""
    if not flags & VM.LOCKED or p.cap_ipc_lock:
        return True
    return (nbytes >> PAGE_SHIFT) + p.mm.locked_vm <= p.rlimit_memlock >> PAGE_SHIFT


def mlock_unlockable(vma: VMA) -> bool:
    """mlock_fixup()'s early exit: VMAs that never get VM_LOCKED and are
    never counted (VM_SPECIAL, hugetlb, DAX, secretmem)."""
    return bool(vma.vm_flags & VM_SPECIAL) or vma.is_hugetlb or vma_is_fsdax(vma) \
        or vma_is_secretmem(vma)


def mlock_fixup(mm, vma: VMA, start: int, end: int, newflags: VM) -> None:
    """/* mirrors mlock_fixup() */: split to the range, set the flags,
    account locked_vm (the pages are faulted in later by __mm_populate)."""
    old = vma.vm_flags
    if newflags == old or mlock_unlockable(vma):
        return
    nr = (end - start) >> PAGE_SHIFT
    if not newflags & VM.LOCKED:
        nr = -nr
    elif old & VM.LOCKED:
        nr = 0
    mm.locked_vm += nr
    for part in mm.split_range(start, end):
        part.vm_flags = VM(newflags)
    for part in mm.vmas_in(start, end):
        if part in mm.vmas:
            mm.vma_merge(part)


def apply_vma_lock_flags(mm, start: int, length: int, flags: VM) -> None:
    """/* mirrors apply_vma_lock_flags() */: each VMA of the range gets the
    lock flags; a hole is ENOMEM — the VMAs before it keep their new flags,
    as the kernel leaves them."""
    end = start + length
    if end < start:
        raise GupError(errno.EINVAL, "range wraps")
    if end == start:
        return
    if mm.find_vma(start) is None:
        raise GupError(errno.ENOMEM, f"{start:#x} is not mapped")
    nstart = start
    tmp = start
    for vma in mm.vmas_in(start, end):
        if vma.vm_start > tmp:
            raise GupError(errno.ENOMEM, f"hole at {tmp:#x}")
        newflags = VM((vma.vm_flags & ~VM_LOCKED_MASK) | flags)
        tmp = min(vma.vm_end, end)
        mlock_fixup(mm, vma, nstart, tmp, newflags)
        nstart = tmp
    if tmp < end:
        raise GupError(errno.ENOMEM, f"hole at {tmp:#x}")


def count_mm_mlocked_page_nr(mm, start: int, length: int) -> int:
    """/* mirrors count_mm_mlocked_page_nr() */: pages of the range already
    locked (they are not counted again against the limit)."""
    end = start + length
    return sum((min(v.vm_end, end) - max(v.vm_start, start)) >> PAGE_SHIFT
               for v in mm.vmas_in(start, end) if v.vm_flags & VM.LOCKED)


def do_mlock(p, start: int, length: int, flags: VM) -> None:
    """/* mirrors do_mlock() */ up to the populate (the caller's, after the
    lock): EPERM without the right, ENOMEM over RLIMIT_MEMLOCK."""
    if not can_do_mlock(p):
        raise GupError(errno.EPERM, "RLIMIT_MEMLOCK is 0 and no CAP_IPC_LOCK")
    lock_limit = p.rlimit_memlock >> PAGE_SHIFT
    locked = (length >> PAGE_SHIFT) + p.mm.locked_vm
    if locked > lock_limit and not p.cap_ipc_lock:
        locked -= count_mm_mlocked_page_nr(p.mm, start, length)
    if locked > lock_limit and not p.cap_ipc_lock:
        raise GupError(errno.ENOMEM, f"mlock of {length:#x} bytes is over RLIMIT_MEMLOCK "
                                     f"({p.rlimit_memlock:#x})")
    apply_vma_lock_flags(p.mm, start, length, flags)


def mlock_posix_error_return(err: int) -> int:
    """/* mirrors __mlock_posix_error_return() */: populate's EFAULT is
    mlock's ENOMEM, its ENOMEM mlock's EAGAIN."""
    return {errno.EFAULT: errno.ENOMEM, errno.ENOMEM: errno.EAGAIN}.get(err, err)


def apply_mlockall_flags(p, flags: int) -> None:
    """/* mirrors apply_mlockall_flags() */: MCL_FUTURE sets the mm's
    def_flags (new mappings come locked), MCL_CURRENT locks every VMA
    (errors ignored)."""
    mm = p.mm
    mm.def_flags = VM(mm.def_flags & ~VM_LOCKED_MASK)
    if flags & MCL.FUTURE:
        mm.def_flags |= VM.LOCKED
        if flags & MCL.ONFAULT:
            mm.def_flags |= VM.LOCKONFAULT
        if not flags & MCL.CURRENT:
            return
    to_add = VM.NONE
    if flags & MCL.CURRENT:
        to_add |= VM.LOCKED
        if flags & MCL.ONFAULT:
            to_add |= VM.LOCKONFAULT
    for vma in list(mm.vmas):
        if vma in mm.vmas:
            mlock_fixup(mm, vma, vma.vm_start, vma.vm_end,
                        VM((vma.vm_flags & ~VM_LOCKED_MASK) | to_add))
