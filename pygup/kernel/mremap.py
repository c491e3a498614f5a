"""mremap(2) (mm/mremap.c, Linux 6.5), run under the machine lock by
``Process.mremap`` after the syscall's own checks: shrink in place, grow in
place where the gap allows, or move — a new VMA (copy_vma()) at the new
address and the page tables moved there (move_page_tables(), in C:
pg_move_range, with the TLB flush of the old range), the old range
unmapped afterwards unless MREMAP_DONTUNMAP.  The pages themselves do not
move: a pinned page keeps its frame and its pin, and is mapped at the new
address; anonymous pages keep their anon_vma and index (the new VMA's
vm_pgoff is the old one's at that address), file pages their offset.
"""
from __future__ import annotations

import errno
from typing import Optional

from pygup.flags import MREMAP, PAGE_SHIFT, PMD_SIZE, TASK_SIZE, VM, GupError
from pygup.kernel.mlock import VM_LOCKED_MASK, mlock_future_ok
from pygup.kernel.thp import split_huge_pmd
from pygup.kernel.vma import VMA

# ``p`` below is a pygup.kernel.process.Process (not imported: process.py
# imports this module)


def vma_to_resize(p, addr: int, old_len: int, new_len: int, flags: int) -> VMA:
    """/* mirrors vma_to_resize() */: the VMA at addr that may be resized or
    moved, in the kernel's order of refusals."""
    vma = p.mm.find_vma(addr)
    if vma is None:
        raise GupError(errno.EFAULT, f"no mapping at {addr:#x}")
    # old_len 0 "duplicates" a shared mapping; nonsense for a private one
    if not old_len and not vma.vm_flags & (VM.SHARED | VM.MAYSHARE):
        raise GupError(errno.EINVAL, "old_len 0 needs a shared mapping")
    if flags & MREMAP.DONTUNMAP and vma.vm_flags & (VM.DONTEXPAND | VM.PFNMAP):
        raise GupError(errno.EINVAL, "MREMAP_DONTUNMAP of a VM_DONTEXPAND / VM_PFNMAP mapping")
    if old_len > vma.vm_end - addr:
        raise GupError(errno.EFAULT, "the old range crosses the end of its mapping")
    if new_len == old_len:
        return vma
    if vma.vm_flags & (VM.DONTEXPAND | VM.PFNMAP):
        raise GupError(errno.EFAULT, "a VM_DONTEXPAND / VM_PFNMAP mapping cannot grow")
    if new_len > old_len and not mlock_future_ok(p, vma.vm_flags, new_len - old_len):
        raise GupError(errno.EAGAIN, "growing a locked mapping over RLIMIT_MEMLOCK")
    return vma


def vma_expandable(p, vma: VMA, delta: int) -> bool:
    """/* mirrors vma_expandable() */: the gap above the VMA takes delta."""
    end = vma.vm_end + delta
    if end < vma.vm_end or end > TASK_SIZE:
        return False
    nxt = p.mm.vmas.first_at_or_above(vma.vm_end)
    return nxt is None or nxt.vm_start >= end


def split_huge_pmds_for_move(vma: VMA, old_addr: int, new_addr: int, length: int,
                             cpu: int) -> None:
    """/* mirrors move_page_tables() */ on a THP's PMD leaf: it moves whole
    (move_huge_pmd()) only when its extent is a whole PMD at both ends —
    the range covers it and old and new address are PMD-aligned alike;
    any other leaf is split first (split_huge_pmd()) and its PTEs move one
    by one.  The folio stays large: every page is still mapped, some at
    the new address (the C core's pg_move_range refuses a cut leaf)."""
    end = old_addr + length
    congruent = (new_addr - old_addr) % PMD_SIZE == 0
    haddr = old_addr & ~(PMD_SIZE - 1)
    while haddr < end:
        if not (congruent and haddr >= old_addr and haddr + PMD_SIZE <= end):
            split_huge_pmd(vma, max(haddr, old_addr), cpu)
        haddr += PMD_SIZE


def move_vma(p, vma: VMA, old_addr: int, old_len: int, new_len: int,
             new_addr: int, flags: int, cpu: int) -> int:
    """/* mirrors move_vma() */: copy_vma() to new_addr, move_page_tables(),
    then unmap the old range (or, with MREMAP_DONTUNMAP, keep it mapped,
    empty and unlocked)."""
    mm = p.mm
    core = p.kernel.core
    vm_flags = vma.vm_flags
    new_pgoff = vma.vm_pgoff + ((old_addr - vma.vm_start) >> PAGE_SHIFT)
    # copy_vma(): the new VMA shares the file and the anon_vmas
    new = VMA(mm, new_addr, new_addr + new_len, vm_flags, vma.vm_file, new_pgoff, vma.vm_ops)
    new.anon_vmas = list(vma.anon_vmas)
    new.own_anon_vma = vma.own_anon_vma
    new.pgprot_customised = vma.pgprot_customised
    split_huge_pmds_for_move(vma, old_addr, new_addr, old_len, cpu)
    mm.vma_link(new)
    # move_page_tables(): the entries go, the pages (and their pins) stay
    try:
        moved = core.move_range(cpu, mm.id, old_addr, new_addr, old_len)
    except GupError as e:
        if e.errno != errno.ENOMEM:
            raise
        moved = 0                      # the first extent's table: nothing moved
    if moved < old_len:
        # move_vma(): a move cut short (no page for a destination table)
        # goes back where it came from, the new VMA with it: -ENOMEM, the
        # old mapping as it was
        core.move_range(cpu, mm.id, new_addr, old_addr, moved)
        mm.vma_unlink(new)
        # free_pgtables() of the hole it leaves (between its neighbours)
        prev = mm.vmas.last_below(new_addr)
        after = mm.vmas.first_at_or_above(new_addr + new_len)
        core.free_pgtables(cpu, mm.id, prev.vm_end if prev is not None else 0,
                           after.vm_start if after is not None else TASK_SIZE)
        raise GupError(errno.ENOMEM, f"mremap: page tables for {new_addr:#x} could not be "
                       f"allocated ({moved:#x} of {old_len:#x} bytes moved, moved back)")
    if flags & MREMAP.DONTUNMAP:
        # the old range stays mapped, empty: it faults fresh pages (a new
        # anon_vma: unlink_anon_vmas()) and is never locked
        for part in mm.split_range(old_addr, old_addr + old_len):
            part.vm_flags = VM(part.vm_flags & ~VM_LOCKED_MASK)
            if part.vm_start == old_addr and part.vm_end == old_addr + old_len:
                for av in part.anon_vmas:
                    av.vmas.discard(part)
                part.anon_vmas = []
                part.own_anon_vma = None
        # locked_vm unchanged: the new range takes over the old one's count
        mm.vma_merge(new)
        return new_addr
    # the new VMA is in the file's i_mmap already: this unmap is never the
    # file's last (iput() frees nothing)
    locked = vm_flags & VM.LOCKED
    p._unmap(old_addr, old_addr + old_len, cpu)
    if locked:
        mm.locked_vm += new_len >> PAGE_SHIFT
    if new in mm.vmas:
        mm.vma_merge(new)
    return new_addr


def mremap_to(p, addr: int, old_len: int, new_addr: int, new_len: int,
              flags: int, cpu: int) -> int:
    """/* mirrors mremap_to() */: MREMAP_FIXED (new_addr is where) or
    MREMAP_DONTUNMAP (new_addr is a hint)."""
    if new_addr % (1 << PAGE_SHIFT):
        raise GupError(errno.EINVAL, "new_addr must be page aligned")
    if new_len > TASK_SIZE or new_addr > TASK_SIZE - new_len:
        raise GupError(errno.EINVAL, "the new range is past the end of the address space")
    if addr + old_len > new_addr and new_addr + new_len > addr:
        raise GupError(errno.EINVAL, "the old and new ranges overlap")
    if flags & MREMAP.FIXED:
        p._unmap(new_addr, new_addr + new_len, cpu)
    if old_len > new_len:
        p._unmap(addr + new_len, addr + old_len, cpu)
        old_len = new_len
    vma = vma_to_resize(p, addr, old_len, new_len, flags)
    if flags & MREMAP.FIXED:
        target = new_addr
    else:
        target = _unmapped_area(p, vma, new_len, new_addr)
    return move_vma(p, vma, addr, old_len, new_len, target, flags, cpu)


def _unmapped_area(p, vma: VMA, length: int, hint: int = 0) -> int:
    """get_unmapped_area() for the moved VMA: the hint if it is free, else
    a top-down search (hugetlb: 2 MiB aligned)."""
    align = PMD_SIZE if vma.is_hugetlb else 1 << PAGE_SHIFT
    if hint and hint % align == 0 and hint + length <= TASK_SIZE \
            and not p.mm.vmas_in(hint, hint + length):
        return hint
    return p.mm.get_unmapped_area(length, align)


def do_mremap(p, addr: int, old_len: int, new_len: int, flags: int,
              new_addr: int, cpu: int) -> tuple[int, Optional[tuple[int, int]]]:
    """The body of mremap() under mmap_lock: (the address, the range to
    populate afterwards for a growing VM_LOCKED mapping or None)."""
    mm = p.mm
    vma = mm.find_vma(addr)
    if vma is None:
        raise GupError(errno.EFAULT, f"no mapping at {addr:#x}")
    if vma.is_hugetlb:
        # hugetlb: no growth, 2 MiB units only
        if new_len > old_len:
            raise GupError(errno.EINVAL, "a hugetlb mapping cannot grow")
        if addr % PMD_SIZE or new_addr % PMD_SIZE:
            raise GupError(errno.EINVAL, "hugetlb mremap needs 2 MiB alignment")
        old_len = -(-old_len // PMD_SIZE) * PMD_SIZE
        new_len = -(-new_len // PMD_SIZE) * PMD_SIZE
    if flags & (MREMAP.FIXED | MREMAP.DONTUNMAP):
        ret = mremap_to(p, addr, old_len, new_addr, new_len, flags, cpu)
        locked = vma.vm_flags & VM.LOCKED and new_len > old_len
        return ret, (ret + old_len, new_len - old_len) if locked else None
    # always allow a shrink: it unmaps the tail
    if old_len >= new_len:
        if old_len != new_len:
            p._unmap(addr + new_len, addr + old_len, cpu)
        return addr, None
    vma = vma_to_resize(p, addr, old_len, new_len, flags)
    delta = new_len - old_len
    if old_len == vma.vm_end - addr and vma_expandable(p, vma, delta):
        # grow in place (vma_expand())
        mm.vma_unlink(vma)
        vma.vm_end += delta
        mm.vma_link(vma)
        mm.vma_merge(vma)
        if vma.vm_flags & VM.LOCKED:
            mm.locked_vm += delta >> PAGE_SHIFT
            return addr, (addr + old_len, delta)
        return addr, None
    if not flags & MREMAP.MAYMOVE:
        raise GupError(errno.ENOMEM, "no room to grow in place and no MREMAP_MAYMOVE")
    target = _unmapped_area(p, vma, new_len)
    locked = vma.vm_flags & VM.LOCKED
    ret = move_vma(p, vma, addr, old_len, new_len, target, flags, cpu)
    return ret, (ret + old_len, delta) if locked else None
