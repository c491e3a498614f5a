"""``Process``: a task with an ``MM`` and the system calls that change it —
mmap / mmap_pfn / munmap / mprotect / msync / madvise / mlock / mremap /
fork / exit — and user reads and writes through the emulated MMU.

Each system call checks its arguments in the kernel's order first, then
does the mm work under the machine lock; the rules are in the kernel
modules named after the kernel's files (madvise.py, mlock.py, mremap.py).
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Iterator, Optional

from pygup._native import C
from pygup.flags import (MADV, MAP, MAX_LFS_FILESIZE, MCL, MLOCK, MREMAP, MS, PAGE_MASK,
                         PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PROT, TASK_SIZE, VM, GupError,
                         check_flags, int_arg)
from pygup.kernel import madvise as madv
from pygup.kernel import mlock as mlk
from pygup.kernel import mremap as mrp
from pygup.kernel.fault import handle_user_fault
from pygup.kernel.fs import DEVICE_VM_OPS
from pygup.kernel.gup import __mm_populate as mm_populate_range
from pygup.kernel.mm import MM
from pygup.kernel.thp import deferred_split_folios, split_huge_pmd_range, thp_folios_at_edges
from pygup.kernel.vfs import File, anon_inode_file, iput
from pygup.kernel.vma import VMA, is_cow_mapping
from pygup.kernel.writeback import writeback_inode

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel
    from pygup.kernel.gup import Pages

HPAGE_SIZE = PMD_SIZE
_MAX_FAULT_RETRIES = 16
MLOCK_LIMIT = 8 << 20         # the default RLIMIT_MEMLOCK (8 MiB since 5.16)


def _page_count(length: int) -> int:
    return (length + PAGE_SIZE - 1) // PAGE_SIZE


def calc_vm_prot_bits(prot: int) -> VM:
    return VM((VM.READ if prot & PROT.READ else 0) | (VM.WRITE if prot & PROT.WRITE else 0)
              | (VM.EXEC if prot & PROT.EXEC else 0))


class Process:
    """A process: an ``MM`` and the syscalls that change it."""

    def __init__(self, kernel: "Kernel", pid: int) -> None:
        self.kernel = kernel
        self.pid = pid
        self.mm = MM(kernel)
        self.alive = True
        # pages kept by GUP callers (io_uring, rdma, vfio, pipe): see callers.py
        self.held: dict[str, list["Pages"]] = {}
        # RLIMIT_MEMLOCK in bytes, and CAP_IPC_LOCK (which lifts it): settable
        self.rlimit_memlock = MLOCK_LIMIT
        self.cap_ipc_lock = False

    def __repr__(self) -> str:
        return f"<Process {self.pid}{'' if self.alive else ' (exited)'} vmas={len(self.mm.vmas)}>"

    def _repr_html_(self) -> str:
        from pygup.kernel.html import grid_table
        from pygup.kernel.vma import vm_flags_str
        rows = [(f"{v.vm_start:#x}-{v.vm_end:#x}", vm_flags_str(v.vm_flags),
                 v.vm_file.describe() if v.vm_file is not None else "anon")
                for v in self.mm.vmas]
        held = ", ".join(f"{k}: {sum(len(p) for p in v)} pages" for k, v in self.held.items())
        title = f"process {self.pid}{'' if self.alive else ' (exited)'}" + \
            (f"; held by callers: {held}" if held else "")
        return grid_table(title, ["range", "flags", "backing"], rows)

    def _live(self) -> None:
        if not self.alive:
            raise GupError(errno.ESRCH, f"process {self.pid} has exited")

    # -- mmap ------------------------------------------------------------------
    def mmap(self, length: int, prot: int, flags: int, file: Optional[File] = None,
             offset: int = 0, addr: int = 0) -> int:
        """mmap(2); returns the address.  VMA flags are derived as do_mmap()
        does: VM_MAY* from the file's open mode, VM_SHARED only for a shared
        mapping of a writable file."""
        self._live()
        length = int_arg(length, "length")
        offset = int_arg(offset, "offset")
        addr = int_arg(addr, "addr")
        prot = check_flags(prot, PROT, "prot")
        flags = check_flags(flags, MAP, "flags")
        if file is not None and not isinstance(file, File):
            raise TypeError(f"file must be a pygup File, got {type(file).__name__}")
        if file is not None and file.fs.kernel is not self.kernel:
            # checked before anything is allocated in either machine
            raise ValueError(f"file {file.inode.describe()} belongs to another Machine")
        if offset >= 1 << 64:
            # the syscall's offset is an unsigned long; do_mmap(): a pgoff
            # that wraps is -EOVERFLOW
            raise GupError(errno.EOVERFLOW, f"offset {offset:#x} does not fit the address space")
        if length <= 0 or offset < 0 or offset % PAGE_SIZE or addr % PAGE_SIZE or addr < 0:
            raise GupError(errno.EINVAL, "length, offset and addr must be aligned and in range")
        if length > TASK_SIZE:
            # do_mmap(): checked before anything is set up
            raise GupError(errno.ENOMEM, "length past the end of the address space")
        kind = flags & (MAP.SHARED | MAP.PRIVATE)
        if kind not in (MAP.SHARED, MAP.PRIVATE):
            raise GupError(errno.EINVAL, "exactly one of MAP_SHARED and MAP_PRIVATE")
        # do_mmap(): MAP_LOCKED needs the right to lock, and room under the limit
        if flags & MAP.LOCKED and not mlk.can_do_mlock(self):
            raise GupError(errno.EPERM, "MAP_LOCKED: RLIMIT_MEMLOCK is 0 and no CAP_IPC_LOCK")
        lock_bits = VM.LOCKED if flags & MAP.LOCKED else VM.NONE
        if not mlk.mlock_future_ok(self, lock_bits | self.mm.def_flags, _page_count(length) * PAGE_SIZE):
            raise GupError(errno.EAGAIN, "a locked mapping over RLIMIT_MEMLOCK")
        k = self.kernel
        with k.op() as cpu:
            created = None
            if flags & MAP.ANONYMOUS:
                file = None
                offset = 0
                if flags & MAP.HUGETLB:
                    file = created = anon_inode_file(k, "hugetlbfs", "anon_hugepage",
                                                     -(-length // HPAGE_SIZE) * HPAGE_SIZE)
                elif kind == MAP.SHARED:
                    # shmem_zero_setup(): shared anonymous memory is a shmem file
                    file = created = anon_inode_file(k, "tmpfs", "dev-zero",
                                                     _page_count(length) * PAGE_SIZE)
            elif file is None:
                raise GupError(errno.EBADF, "a file mapping needs a file")
            try:
                huge = file is not None and file.fs.fstype.huge
                align = HPAGE_SIZE if huge else PAGE_SIZE
                length = -(-length // align) * align
                if huge and (addr % HPAGE_SIZE or offset % HPAGE_SIZE):
                    raise GupError(errno.EINVAL, "hugetlb mappings need 2 MiB alignment")
                if length > TASK_SIZE or (addr and addr + length > TASK_SIZE):
                    raise GupError(errno.ENOMEM, "range past the end of the address space")
                if file is not None and offset > MAX_LFS_FILESIZE - length:
                    # file_mmap_ok(): the mapping must end within the largest
                    # file size (MAX_LFS_FILESIZE), else do_mmap() is -EOVERFLOW
                    raise GupError(errno.EOVERFLOW, f"offset {offset:#x} + length {length:#x} "
                                                    "is past MAX_LFS_FILESIZE")
                vm_flags = calc_vm_prot_bits(prot) | VM.MAYREAD | VM.MAYWRITE | VM.MAYEXEC
                vm_flags |= VM.SOFTDIRTY                         # new VMAs start "all dirty"
                vm_flags |= self.mm.def_flags | lock_bits        # mlockall(MCL_FUTURE), MAP_LOCKED
                if file is not None:
                    if kind == MAP.SHARED:
                        if prot & PROT.WRITE and not file.writable:
                            raise GupError(errno.EACCES,
                                           "shared writable mapping of a read-only file")
                        vm_flags |= VM.SHARED | VM.MAYSHARE
                        if not file.writable:
                            vm_flags &= ~(VM.MAYWRITE | VM.SHARED)
                    if file.fs.fstype.kind == "secretmem":
                        if kind != MAP.SHARED:
                            raise GupError(errno.EINVAL, "secretmem needs MAP_SHARED")
                        vm_flags |= VM.LOCKED | VM.DONTDUMP
                    if huge:
                        vm_flags |= VM.HUGETLB
                if flags & MAP.FIXED or flags & MAP.FIXED_NOREPLACE:
                    if addr == 0 and not flags & MAP.FIXED_NOREPLACE:
                        raise GupError(errno.EPERM, "MAP_FIXED at address 0")
                    if self.mm.vmas_in(addr, addr + length):
                        if flags & MAP.FIXED_NOREPLACE:
                            raise GupError(errno.EEXIST, f"{addr:#x} is already mapped")
                        self._unmap(addr, addr + length, cpu)
                    start = addr
                else:
                    start = self.mm.get_unmapped_area(length, align)
                inode = file.inode if file is not None else None
                pgoff = offset >> PAGE_SHIFT if inode is not None else start >> PAGE_SHIFT
                vm_ops = inode.fs.fstype.vm_ops if inode is not None else None
                vma = VMA(self.mm, start, start + length, vm_flags, inode, pgoff, vm_ops)
                if vma.vm_flags & VM.LOCKED and file is not None and \
                        file.fs.fstype.kind == "secretmem":
                    pass                                         # secretmem: locked, never counted
                elif vma.vm_flags & VM.LOCKED:
                    # mmap_region(): VM_SPECIAL, hugetlb and DAX are never locked
                    if mlk.mlock_unlockable(vma):
                        vma.vm_flags = VM(vma.vm_flags & ~mlk.VM_LOCKED_MASK)
                    else:
                        self.mm.locked_vm += length >> PAGE_SHIFT
                self.mm.vma_link(vma)
                self.mm.vma_merge(vma)
            except BaseException:
                # mmap_region() failed after shmem_zero_setup() /
                # hugetlb_file_setup(): the file made for it goes now (fput)
                if created is not None:
                    created.close()
                raise
            if flags & MAP.POPULATE or vma.vm_flags & VM.LOCKED:
                # do_mmap() -> mm_populate() (errors ignored): through GUP,
                # populate_vma_page_range()'s flags — the one populate that
                # mlock and MAP_POPULATE share
                mm_populate_range(self.mm, start, length, True, cpu)
        return start

    def mmap_pfn(self, length: int, prot: int) -> int:
        """A device mapping as a driver's ->mmap makes it with
        remap_pfn_range(): VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP,
        every page mapped at once by a special PTE to device memory (frames
        the device owns; no struct-page reference counting)."""
        self._live()
        length = int_arg(length, "length")
        prot = check_flags(prot, PROT, "prot")
        if length <= 0:
            raise GupError(errno.EINVAL, "length must be positive")
        length = _page_count(length) * PAGE_SIZE
        if length > TASK_SIZE:
            raise GupError(errno.ENOMEM, "range past the end of the address space")
        k = self.kernel
        with k.op() as cpu:
            start = self.mm.get_unmapped_area(length, PAGE_SIZE)
            # the device memory first, all or nothing: a driver whose
            # ->mmap cannot back the whole range fails it, and mmap_region()
            # then leaves no VMA behind
            nr = length >> PAGE_SHIFT
            if nr > k.core.stats()["nr_free_normal"]:
                raise GupError(errno.ENOMEM, f"no device memory for {nr} pages")
            pfns: list[int] = []
            try:
                for _ in range(nr):
                    pfns.append(k.alloc_folio(0, movable=False))
            except BaseException:
                for pfn in pfns:
                    k.core.folio_put(pfn, 1)
                raise
            flags = (calc_vm_prot_bits(prot) | VM.MAYREAD | VM.MAYWRITE | VM.MAYEXEC | VM.SHARED
                     | VM.MAYSHARE | VM.IO | VM.PFNMAP | VM.DONTEXPAND | VM.DONTDUMP)
            vma = VMA(self.mm, start, start + length, flags, None, 0, DEVICE_VM_OPS)
            self.mm.vma_link(vma)
            bits = C.PTE_PRESENT | C.PTE_USER | C.PTE_SPECIAL | C.PTE_ACCESSED
            if prot & PROT.WRITE:
                bits |= C.PTE_WRITE | C.PTE_DIRTY
            try:
                for i, pfn in enumerate(pfns):
                    k.core.pte_set(self.mm.id, start + (i << PAGE_SHIFT),
                                   (pfn << C.PTE_PFN_SHIFT) | bits, C.LEVEL_PTE)
            except BaseException:
                # remap_pfn_range() failed (no memory for a page table):
                # undo the mapping and give the device memory back
                self._unmap(start, start + length, cpu)
                for pfn in pfns:
                    k.core.folio_put(pfn, 1)
                raise
            k.device_frames.extend(pfns)
        return start

    # -- munmap / mprotect -------------------------------------------------------
    def _check_range(self, addr: int, length: int) -> tuple[int, int]:
        addr = int_arg(addr, "addr")
        length = int_arg(length, "length")
        if addr % PAGE_SIZE or addr < 0 or length <= 0 or addr + length > TASK_SIZE:
            raise GupError(errno.EINVAL, "addr must be page aligned and length positive")
        return addr, addr + _page_count(length) * PAGE_SIZE

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2)."""
        self._live()
        start, end = self._check_range(addr, length)
        with self.kernel.op() as cpu:
            self._unmap(start, end, cpu)

    def _unmap(self, start: int, end: int, cpu: int) -> None:
        """do_vmi_munmap(): detach the VMAs, zap the pages, free the tables."""
        mm = self.mm
        core = self.kernel.core
        vmas = mm.split_range(start, end)
        if not vmas:
            return
        lo, hi = vmas[0].vm_start, vmas[-1].vm_end
        # a THP the range cuts: PTE-mapped first (__split_vma ->
        # vma_adjust_trans_huge), then the part inside goes like any pages
        split_huge_pmd_range(mm, lo, hi, cpu)
        partial = thp_folios_at_edges(mm, lo, hi)
        for vma in vmas:
            if vma.vm_flags & VM.LOCKED:
                mm.locked_vm -= vma.length >> PAGE_SHIFT
            mm.vma_unlink(vma)
        core.zap_range(cpu, mm.id, lo, hi)
        # a partly mapped THP becomes small folios unless it is pinned
        deferred_split_folios(self.kernel, partial, cpu)
        # free_pgtables(): tables wholly inside the hole left behind
        prev = mm.vmas.last_below(lo)
        floor = prev.vm_end if prev is not None else 0
        after = mm.vmas.first_at_or_above(hi)
        ceiling = after.vm_start if after is not None else TASK_SIZE
        core.free_pgtables(cpu, mm.id, floor, ceiling)
        for vma in vmas:
            if vma.vm_file is not None:
                iput(vma.vm_file)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """mprotect(2): new VM_READ/WRITE/EXEC; PTEs are downgraded at once
        (and flushed); upgrades happen lazily at the next fault."""
        self._live()
        start, end = self._check_range(addr, length)
        prot = check_flags(prot, PROT, "prot")
        with self.kernel.op() as cpu:
            mm = self.mm
            covered = sum(min(v.vm_end, end) - max(v.vm_start, start) for v in mm.vmas_in(start, end))
            if covered != end - start:
                raise GupError(errno.ENOMEM, "range not fully mapped")
            newbits = calc_vm_prot_bits(prot)
            for vma in mm.vmas_in(start, end):
                if newbits & VM.WRITE and not vma.vm_flags & VM.MAYWRITE:
                    raise GupError(errno.EACCES, f"{vma!r} may not become writable")
                if vma.is_hugetlb and (max(start, vma.vm_start) % HPAGE_SIZE
                                       or min(end, vma.vm_end) % HPAGE_SIZE):
                    raise GupError(errno.EINVAL, "hugetlb VMAs change only in 2 MiB units")
            core = self.kernel.core
            split_huge_pmd_range(mm, start, end, cpu)     # change_pmd_range()
            for vma in mm.split_range(start, end):
                vma.vm_flags = VM((vma.vm_flags & ~(VM.READ | VM.WRITE | VM.EXEC)) | newbits)
                if not newbits & (VM.READ | VM.WRITE | VM.EXEC):
                    # PROT_NONE: keep the mapping, make it inaccessible
                    core.change_protection(cpu, mm.id, vma.vm_start, vma.vm_end,
                                           C.PTE_PRESENT | C.PTE_WRITE, C.PTE_PROTNONE)
                else:
                    core.change_protection(cpu, mm.id, vma.vm_start, vma.vm_end,
                                           C.PTE_PROTNONE | (0 if newbits & VM.WRITE else C.PTE_WRITE),
                                           C.PTE_PRESENT)
            for vma in mm.vmas_in(start, end):
                if vma in mm.vmas:
                    mm.vma_merge(vma)

    # -- madvise -------------------------------------------------------------------
    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(2) with a ``MADV`` advice (pygup/kernel/madvise.py has the
        rules).  As do_madvise(): unknown advice, then a misaligned start,
        then a wrapping range are EINVAL; a zero length does nothing; a hole
        in the range is ENOMEM after the rest got the advice."""
        self._live()
        addr = int_arg(addr, "addr")
        length = int_arg(length, "length")
        advice = int_arg(advice, "advice")
        if not madv.madvise_behavior_valid(advice):
            raise GupError(errno.EINVAL, f"advice {advice} is not one pygup.MADV knows")
        advice = MADV(advice)
        if addr % PAGE_SIZE or addr < 0:
            raise GupError(errno.EINVAL, f"addr {addr:#x} is not page aligned")
        if length < 0:
            raise GupError(errno.EINVAL, "length must not be negative")
        end = addr + _page_count(length) * PAGE_SIZE
        if end >= 1 << 64:
            raise GupError(errno.EINVAL, "addr + length wraps")
        if end == addr:
            return
        with self.kernel.op() as cpu:
            if advice in (MADV.POPULATE_READ, MADV.POPULATE_WRITE):
                madv.madvise_populate(self.mm, addr, end, advice, cpu)
                return
            madv.madvise_walk_vmas(self.mm, addr, end,
                                   madv.madvise_vma_behavior(self.mm, advice, cpu))

    # -- mlock ----------------------------------------------------------------------
    def _mlock_range(self, addr: int, length: int) -> tuple[int, int]:
        """mlock's rounding: the start down to its page, the length up."""
        addr = int_arg(addr, "addr")
        length = int_arg(length, "length")
        if addr < 0 or length < 0:
            raise GupError(errno.EINVAL, "addr and length must not be negative")
        start = addr & PAGE_MASK
        return start, _page_count(length + (addr - start)) * PAGE_SIZE

    def mlock(self, addr: int, length: int, flags: int = 0) -> None:
        """mlock2(2) (mlock(2) with flags 0): VM_LOCKED (with MLOCK.ONFAULT
        also VM_LOCKONFAULT, nothing faulted now) on every VMA of the range,
        then the range populated through GUP.  EPERM without the right,
        ENOMEM over RLIMIT_MEMLOCK or for a hole (the VMAs before it stay
        locked), populate's EFAULT as ENOMEM and its ENOMEM as EAGAIN."""
        self._live()
        flags = int_arg(flags, "flags")
        if flags & ~int(MLOCK.ONFAULT) or flags < 0:
            raise GupError(errno.EINVAL, f"mlock2 flags {flags:#x}")
        start, length = self._mlock_range(addr, length)
        vm_flags = VM.LOCKED | (VM.LOCKONFAULT if flags & MLOCK.ONFAULT else VM.NONE)
        with self.kernel.op() as cpu:
            mlk.do_mlock(self, start, length, vm_flags)
            err = mm_populate_range(self.mm, start, length, False, cpu)
        if err < 0:
            raise GupError(mlk.mlock_posix_error_return(-err), f"mlock populate at {start:#x}")

    def munlock(self, addr: int, length: int) -> None:
        """munlock(2): VM_LOCKED and VM_LOCKONFAULT off (ENOMEM for a hole)."""
        self._live()
        start, length = self._mlock_range(addr, length)
        with self.kernel.op():
            mlk.apply_vma_lock_flags(self.mm, start, length, VM.NONE)

    def mlockall(self, flags: int) -> None:
        """mlockall(2): MCL.CURRENT locks every mapping now (and populates
        it, errors ignored), MCL.FUTURE every later one; MCL.ONFAULT with
        either locks on fault.  ENOMEM when the whole address space is over
        RLIMIT_MEMLOCK (MCL_CURRENT)."""
        self._live()
        flags = int_arg(flags, "flags")
        known = int(MCL.CURRENT | MCL.FUTURE | MCL.ONFAULT)
        if not flags or flags & ~known or flags < 0 or flags == MCL.ONFAULT:
            raise GupError(errno.EINVAL, f"mlockall flags {flags:#x}")
        if not mlk.can_do_mlock(self):
            raise GupError(errno.EPERM, "RLIMIT_MEMLOCK is 0 and no CAP_IPC_LOCK")
        with self.kernel.op() as cpu:
            total_vm = sum(v.length for v in self.mm.vmas) >> PAGE_SHIFT
            if flags & MCL.CURRENT and total_vm > self.rlimit_memlock >> PAGE_SHIFT \
                    and not self.cap_ipc_lock:
                raise GupError(errno.ENOMEM, "the address space is over RLIMIT_MEMLOCK")
            mlk.apply_mlockall_flags(self, flags)
            if flags & MCL.CURRENT:
                mm_populate_range(self.mm, 0, TASK_SIZE, True, cpu)

    def munlockall(self) -> None:
        """munlockall(2)."""
        self._live()
        with self.kernel.op():
            mlk.apply_mlockall_flags(self, 0)

    # -- mremap ---------------------------------------------------------------------
    def mremap(self, old_addr: int, old_len: int, new_len: int, flags: int = 0,
               new_addr: Optional[int] = None) -> int:
        """mremap(2); returns the (new) address.  Shrinks and grows in
        place, or with ``MREMAP.MAYMOVE`` moves the mapping — page tables
        and all: a pinned page keeps its pin and is mapped at the new
        address.  ``MREMAP.FIXED`` moves to ``new_addr`` (unmapping what was
        there), ``MREMAP.DONTUNMAP`` leaves the old range mapped and empty.
        The checks are mremap()'s, in its order."""
        self._live()
        old_addr = int_arg(old_addr, "old_addr")
        old_len = int_arg(old_len, "old_len")
        new_len = int_arg(new_len, "new_len")
        flags = int_arg(flags, "flags")
        new_addr = 0 if new_addr is None else int_arg(new_addr, "new_addr")
        known = int(MREMAP.MAYMOVE | MREMAP.FIXED | MREMAP.DONTUNMAP)
        if flags < 0 or flags & ~known:
            raise GupError(errno.EINVAL, f"mremap flags {flags:#x}")
        if flags & MREMAP.FIXED and not flags & MREMAP.MAYMOVE:
            raise GupError(errno.EINVAL, "MREMAP_FIXED needs MREMAP_MAYMOVE")
        # MREMAP_DONTUNMAP is a move and never a resize
        if flags & MREMAP.DONTUNMAP and (not flags & MREMAP.MAYMOVE or old_len != new_len):
            raise GupError(errno.EINVAL, "MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and equal lengths")
        if old_addr % PAGE_SIZE or old_addr < 0:
            raise GupError(errno.EINVAL, f"old_addr {old_addr:#x} is not page aligned")
        if old_len < 0 or new_len < 0 or new_addr < 0:
            raise GupError(errno.EINVAL, "lengths and new_addr must not be negative")
        old_len = _page_count(old_len) * PAGE_SIZE
        new_len = _page_count(new_len) * PAGE_SIZE
        if not new_len:
            raise GupError(errno.EINVAL, "new_len must not be 0")
        with self.kernel.op() as cpu:
            ret, populate = mrp.do_mremap(self, old_addr, old_len, new_len, flags, new_addr, cpu)
            if populate is not None:
                mm_populate_range(self.mm, populate[0], populate[1], True, cpu)
        return ret

    # -- fork / exit ---------------------------------------------------------------
    def fork(self) -> "Process":
        """fork(2): copy the VMAs; copy_page_range() where the kernel does
        (anonymous memory, PFN maps), write-protecting COW mappings."""
        self._live()
        k = self.kernel
        with k.op() as cpu:
            child = Process(k, k.next_pid)
            k.next_pid += 1
            child.rlimit_memlock = self.rlimit_memlock
            child.cap_ipc_lock = self.cap_ipc_lock
            child.mm.def_flags = VM(self.mm.def_flags & VM.NOHUGEPAGE)   # VM_INIT_DEF_MASK
            try:
                self._dup_mmap(child, cpu)
            except BaseException:
                # dup_mm() failed: mmput() of the half-built mm (exit_mmap())
                # frees what was copied so far; the parent keeps its pages
                child._teardown(cpu)
                raise
            k.processes.append(child)
            return child

    def _dup_mmap(self, child: "Process", cpu: int) -> None:
        """/* mirrors dup_mmap() */: each VMA copied into the child's mm and,
        where vma_needs_copy(), its page tables (copy_page_range())."""
        k = self.kernel
        core = k.core
        for vma in self.mm.vmas:
            if vma.vm_flags & VM.DONTCOPY:
                continue
            # dup_mmap(): the child's VMAs are never locked
            new = VMA(child.mm, vma.vm_start, vma.vm_end,
                      vma.vm_flags & ~(VM.LOCKED | VM.LOCKONFAULT), vma.vm_file,
                      vma.vm_pgoff, vma.vm_ops)
            new.pgprot_customised = vma.pgprot_customised
            if vma.vm_flags & VM.WIPEONFORK:
                # a clean slate: no anon_vma, no pages copied; the
                # child faults zero-filled memory
                child.mm.vma_link(new)
                continue
            new.anon_vmas = list(vma.anon_vmas)       # anon_vma_fork()
            child.mm.vma_link(new)
            # vma_needs_copy(): shared file pages fault in lazily
            if vma.anon_vmas or vma.vm_flags & (VM.PFNMAP | VM.MIXEDMAP):
                # page_needs_cow_for_dma(): with MMF_HAS_PINNED, pinned
                # anon pages are copied for the child, not shared
                copy_pinned = self.mm.has_pinned and is_cow_mapping(vma.vm_flags)
                child_mapping = 0
                if copy_pinned:
                    child_mapping = (new.anon_vma_prepare().id << 2) | C.MAPPING_ANON
                core.copy_range(cpu, self.mm.id, child.mm.id, vma.vm_start, vma.vm_end,
                                is_cow_mapping(vma.vm_flags), copy_pinned, child_mapping)

    def exit(self) -> None:
        """exit(2): close what holds pages (io_uring rings, MRs, pipes), unmap
        everything and free the page tables."""
        self._live()
        for kind in list(self.held):
            for pages in self.held.pop(kind):
                if pages.pinned:
                    self.mm.unpin_user_pages(pages)
                else:
                    self.mm.put_page(pages)
        with self.kernel.op() as cpu:
            self._teardown(cpu)

    def _teardown(self, cpu: int) -> None:
        """exit_mmap(): unmap every VMA, free the page tables and the mm."""
        if self.mm.vmas:
            self._unmap(self.mm.vmas[0].vm_start, self.mm.vmas[-1].vm_end, cpu)
        self.kernel.core.mm_destroy(cpu, self.mm.id)
        self.alive = False
        self.mm.alive = False

    # -- user memory access ----------------------------------------------------------
    def _access(self, addr: int, write: bool, value: int) -> int:
        self._live()
        addr = int_arg(addr, "addr")
        if not 0 <= addr < TASK_SIZE:
            raise GupError(errno.EFAULT, f"SIGSEGV: {addr:#x} is not a user address")
        k = self.kernel
        core = k.core
        cpu = k.current_cpu()
        for _ in range(_MAX_FAULT_RETRIES):
            code, out = core.user_access(cpu, self.mm.id, addr, write, value)
            if code == C.FAULT_NONE:
                return out
            with k.op() as cpu:
                handle_user_fault(self.mm, addr, write, cpu)
        raise RuntimeError(f"user access at {addr:#x} kept faulting")

    def read(self, addr: int) -> int:
        """A user load: the content word of the page at addr."""
        return self._access(addr, False, 0)

    def write(self, addr: int, value: int) -> None:
        """A user store of a 64-bit value into the page at addr."""
        value = int_arg(value, "value")
        if not 0 <= value < 1 << 64:
            raise ValueError(f"value must fit in 64 bits, got {value}")
        self._access(addr, True, value)

    def msync(self, addr: int, length: int, flags: int = MS.SYNC) -> None:
        """msync(2): MS_SYNC writes back the shared file pages in the range."""
        self._live()
        start, end = self._check_range(addr, length)
        flags = check_flags(flags, MS, "flags")
        if flags & MS.ASYNC and flags & MS.SYNC:
            raise GupError(errno.EINVAL, "MS_ASYNC and MS_SYNC together")
        with self.kernel.op():
            vmas = self.mm.vmas_in(start, end)
            for vma in vmas:
                if flags & MS.SYNC and vma.vm_file is not None and vma.vm_flags & VM.SHARED:
                    if not vma.vm_file.fs.fstype.fsync:
                        # vfs_fsync_range(): no ->fsync (secretmem) is -EINVAL
                        raise GupError(errno.EINVAL, f"{vma.vm_file.describe()} has no fsync")
                    first = vma.page_index(max(start, vma.vm_start))
                    last = vma.page_index(min(end, vma.vm_end) - 1)
                    writeback_inode(vma.vm_file, first, last + 1)
            covered = sum(min(v.vm_end, end) - max(v.vm_start, start) for v in vmas)
            if covered != end - start:
                raise GupError(errno.ENOMEM, "range not fully mapped")

    def pagemap(self, addr: int) -> tuple[bool, Optional[int], bool]:
        """/proc/self/pagemap's entry for ``addr``: (present, pfn or None,
        PM_MMAP_EXCLUSIVE) as pte_to_pagemap_entry() makes it: exclusive when
        the page is mapped exactly once."""
        self._live()
        pte = self.mm.pte(addr)
        if not pte.level or not (pte.present or pte.protnone):
            return False, None, False
        pfn = pte.pfn
        if pte.level == 2:
            pfn += (addr & (PMD_SIZE - 1)) >> PAGE_SHIFT
        if pte.special:
            return True, pfn, False
        info = self.kernel.core.frame_info(pfn)
        return True, pfn, info.mapcount == 1

    def vmas(self) -> Iterator[VMA]:
        return iter(list(self.mm.vmas))

    def pin(self, addr: int, length: int, gup_flags: int = 0, fast: bool = False) -> "Pages":
        """Pythonic pin_user_pages(): every page of [addr, addr+length) or a
        GupError with the errno (a partial pin is released first)."""
        self._live()
        addr = int_arg(addr, "addr")
        length = int_arg(length, "length")
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        nr = (addr + length - (addr & PAGE_MASK) + PAGE_SIZE - 1) // PAGE_SIZE
        call = self.mm.pin_user_pages_fast if fast else self.mm.pin_user_pages
        ret, pages = call(addr, nr, gup_flags)
        if ret == nr:
            return pages
        if ret > 0:
            self.mm.unpin_user_pages(pages)
        err = -ret if ret < 0 else errno.EFAULT
        raise GupError(err, f"pin of {nr} pages at {addr:#x} got {ret}")
