"""madvise(2) (mm/madvise.c, Linux 6.5): the advice that changes VMA
flags, that zaps (DONTNEED), frees lazily (FREE), punches holes (REMOVE),
populates through GUP (POPULATE_READ / WRITE), and deactivates or
reclaims (COLD / PAGEOUT), each run under the machine lock by
``Process.madvise`` after the syscall's own argument checks.

MADV_COLLAPSE collapses every 2 MiB-aligned extent of an anonymous VMA
into a PMD-mapped THP (pygup/kernel/thp.py's ``collapse_pmd``), whatever
the machine's ``transparent_hugepage/enabled`` says; file and shmem THPs
are not modelled, so a file VMA is EINVAL as an ineligible one is.

Advice pygup does not model (KSM's MERGEABLE, HWPOISON, the guard
regions...) is not in ``MADV`` and is refused with EINVAL, as unknown
advice is.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from pygup._native import C
from pygup.flags import FALLOC, MADV, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, VM, GupError
from pygup.kernel.gup import faultin_vma_page_range
from pygup.kernel.thp import (collapse_pmd, deferred_split_folios, is_thp_leaf, pmd_entry,
                              split_folio, split_huge_pmd_range, thp_folios_at_edges,
                              vma_thp_eligible)
from pygup.kernel.vma import VMA, vma_is_anonymous
from pygup.kernel.writeback import punch_hole, shrink_file_folio

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.mm import MM

# VM_SPECIAL (include/linux/mm.h)
VM_SPECIAL = VM.IO | VM.DONTEXPAND | VM.PFNMAP | VM.MIXEDMAP
EHWPOISON = 133                               # Linux; Python's errno lacks it
_DONTNEED_ZAP = b"madv_dontneed_zap"           # a registered window (csrc/kernel/race.h)


def madvise_behavior_valid(advice: int) -> bool:
    """/* mirrors madvise_behavior_valid() */ for the advice pygup models."""
    return advice in MADV._value2member_map_


def madvise_need_mmap_write(advice: int) -> bool:
    """/* mirrors madvise_need_mmap_write() */: advice that only reads the
    VMA tree takes mmap_lock for read (DONTNEED, FREE, REMOVE, COLD,
    PAGEOUT, WILLNEED, POPULATE): GUP and faults run beside it."""
    return advice not in (MADV.REMOVE, MADV.WILLNEED, MADV.DONTNEED, MADV.DONTNEED_LOCKED,
                          MADV.COLD, MADV.PAGEOUT, MADV.FREE, MADV.POPULATE_READ,
                          MADV.POPULATE_WRITE, MADV.COLLAPSE)


# ---------------------------------------------------------------------------
# the walk

def madvise_walk_vmas(mm: "MM", start: int, end: int,
                      visit: Callable[[VMA, int, int], None]) -> None:
    """/* mirrors madvise_walk_vmas() */: visit each VMA part of [start,
    end); a hole is remembered (ENOMEM at the end, after the VMAs beyond it
    were visited, as the kernel leaves it); an error from a visit stops the
    walk at once."""
    unmapped_error = False
    addr = start
    while addr < end:
        vmas = mm.vmas_in(addr, end)
        if not vmas:
            unmapped_error = True
            break
        vma = vmas[0]
        if addr < vma.vm_start:
            unmapped_error = True
            addr = vma.vm_start
        tmp = min(end, vma.vm_end)
        visit(vma, addr, tmp)
        addr = tmp
    if unmapped_error:
        raise GupError(errno.ENOMEM, f"[{start:#x}, {end:#x}) is not fully mapped")


def madvise_update_vma(mm: "MM", vma: VMA, start: int, end: int, new_flags: VM) -> None:
    """/* mirrors madvise_update_vma() */: split the VMA to the range, set
    the flags, merge with neighbours that now match."""
    if new_flags == vma.vm_flags:
        return
    for part in mm.split_range(start, end):
        part.vm_flags = VM(new_flags)
    for part in mm.vmas_in(start, end):
        if part in mm.vmas:
            mm.vma_merge(part)


def madvise_vma_behavior(mm: "MM", advice: int, cpu: int) -> Callable[[VMA, int, int], None]:
    """/* mirrors madvise_vma_behavior() */: what one VMA part gets."""
    def flags_advice(vma: VMA, start: int, end: int) -> None:
        f = vma.vm_flags
        if advice == MADV.NORMAL:
            f &= ~(VM.RAND_READ | VM.SEQ_READ)
        elif advice == MADV.SEQUENTIAL:
            f = (f & ~VM.RAND_READ) | VM.SEQ_READ
        elif advice == MADV.RANDOM:
            f = (f & ~VM.SEQ_READ) | VM.RAND_READ
        elif advice == MADV.DONTFORK:
            f |= VM.DONTCOPY
        elif advice == MADV.DOFORK:
            if f & VM.IO:
                raise GupError(errno.EINVAL, "MADV_DOFORK of a VM_IO mapping")
            f &= ~VM.DONTCOPY
        elif advice == MADV.WIPEONFORK:
            # only private anonymous memory can be wiped in the child
            if vma.vm_file is not None or f & VM.SHARED:
                raise GupError(errno.EINVAL, "MADV_WIPEONFORK needs private anonymous memory")
            f |= VM.WIPEONFORK
        elif advice == MADV.KEEPONFORK:
            f &= ~VM.WIPEONFORK
        elif advice == MADV.DONTDUMP:
            f |= VM.DONTDUMP
        elif advice == MADV.DODUMP:
            if not vma.is_hugetlb and f & VM_SPECIAL:
                raise GupError(errno.EINVAL, "MADV_DODUMP of a VM_SPECIAL mapping")
            f &= ~VM.DONTDUMP
        elif advice == MADV.HUGEPAGE:
            # hugepage_madvise(): only the flag; the THP side reads it
            f = (f & ~VM.NOHUGEPAGE) | VM.HUGEPAGE
        elif advice == MADV.NOHUGEPAGE:
            f = (f & ~VM.HUGEPAGE) | VM.NOHUGEPAGE
        madvise_update_vma(mm, vma, start, end, VM(f))

    table = {
        MADV.DONTNEED: lambda v, s, e: madvise_dontneed_free(mm, v, s, e, advice, cpu),
        MADV.DONTNEED_LOCKED: lambda v, s, e: madvise_dontneed_free(mm, v, s, e, advice, cpu),
        MADV.FREE: lambda v, s, e: madvise_dontneed_free(mm, v, s, e, advice, cpu),
        MADV.REMOVE: lambda v, s, e: madvise_remove(v, s, e),
        MADV.WILLNEED: lambda v, s, e: madvise_willneed(v, s, e),
        MADV.COLD: lambda v, s, e: madvise_cold_or_pageout(v, s, e, False, cpu),
        MADV.PAGEOUT: lambda v, s, e: madvise_cold_or_pageout(v, s, e, True, cpu),
        MADV.COLLAPSE: lambda v, s, e: madvise_collapse(v, s, e, cpu),
    }
    return table.get(advice, flags_advice)


# ---------------------------------------------------------------------------
# DONTNEED / DONTNEED_LOCKED / FREE

def madvise_dontneed_free_valid_vma(vma: VMA, start: int, end: int, advice: int) -> int:
    """/* mirrors madvise_dontneed_free_valid_vma() */: the end to use, or
    -1 when the VMA may not be zapped (EINVAL)."""
    if not vma.is_hugetlb:
        forbidden = VM.PFNMAP
        if advice != MADV.DONTNEED_LOCKED:
            forbidden |= VM.LOCKED
        return -1 if vma.vm_flags & forbidden else end
    if advice not in (MADV.DONTNEED, MADV.DONTNEED_LOCKED):
        return -1
    if start % PMD_SIZE:
        return -1
    # 6.5 rounds a partial huge page up; since 6.9 (b33f5c2e8bba... the
    # hugetlb "align down" fix) the end is rounded down, as here
    return end & ~(PMD_SIZE - 1)


def madvise_dontneed_free(mm: "MM", vma: VMA, start: int, end: int, advice: int,
                          cpu: int) -> None:
    """/* mirrors madvise_dontneed_free() */.  DONTNEED zaps the range
    (zap_page_range_single()): each page's mapping and reference go, a
    pinned page stays with its pin holder, and the next access faults a new
    page (or the zero page, or the page-cache page again).  FREE marks
    clean anonymous pages lazily freeable (madvise_free_single_vma())."""
    new_end = madvise_dontneed_free_valid_vma(vma, start, end, advice)
    if new_end < 0:
        raise GupError(errno.EINVAL, f"{advice.name if isinstance(advice, MADV) else advice} "
                                     f"not allowed on {vma!r}")
    end = new_end
    if start >= end:
        return
    if advice == MADV.FREE:
        return madvise_free_single_vma(vma, start, end, cpu)
    # mmap_lock is read-held: GUP and faults run beside the zap.  The
    # kernel looks the VMA up again after a lock drop (userfaultfd_remove())
    kernel = mm.kernel
    kernel.mmap_lock_break(_DONTNEED_ZAP)
    vma = mm.find_vma(start)
    if vma is None:
        raise GupError(errno.ENOMEM, f"{start:#x} was unmapped meanwhile")
    if madvise_dontneed_free_valid_vma(vma, start, end, advice) < 0:
        raise GupError(errno.EINVAL, f"{vma!r} changed meanwhile")
    end = min(end, vma.vm_end)
    # zap_pmd_range(): a THP's PMD leaf the range covers only in part is
    # split first, then its pages inside go like any others; the THP left
    # partly mapped is split (deferred_split_folio(), at once as munmap
    # does) unless it is pinned
    split_huge_pmd_range(mm, start, end, cpu)
    partial = thp_folios_at_edges(mm, start, end)
    kernel.core.zap_range(cpu, mm.id, start, end)        # zap_page_range_single()
    deferred_split_folios(kernel, partial, cpu)


def _lru_advice_leaves(vma: VMA, start: int, end: int, cpu: int):
    """The large-folio half of madvise_free_pte_range() /
    madvise_cold_or_pageout_pte_range() (6.5), then the leaves to advise.

    A THP's PMD leaf the range covers whole is advised whole (yielded
    once, at its first address, with ``whole=True``) when this is its only
    mapping; a shared one is skipped.  One the range covers in part, and a
    PTE-mapped THP met in the range, is split first (split_folio(), so its
    pages are advised one by one) when only this process maps it; a shared
    one, or one whose split fails (pinned, extra references), ends the walk
    of that PMD's range, as the kernel's ``break`` does.  Large file
    folios are not split (pygup's split_folio() is anon-only): they end
    the walk of their PMD range likewise.  Yields (addr, pte, frame info,
    whole)."""
    mm = vma.vm_mm
    kernel = mm.kernel
    core = kernel.core
    addrs, ptes = core.range_leaves(mm.id, start, end)
    skip_to = start
    for addr, pte in zip(addrs.tolist(), ptes.tolist()):
        if addr < skip_to or pte & C.PTE_SPECIAL or not pte & C.PTE_PRESENT:
            continue
        pfn = (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
        fi = core.frame_info(pfn)
        if not fi.order:
            continue
        next_pmd = (addr // PMD_SIZE + 1) * PMD_SIZE
        if pte & C.PTE_HUGE and not is_thp_leaf(core, pte):
            continue                      # hugetlb: the VMA checks refused it already
        # folio_estimated_sharers() (the first page's mapcount; a PMD
        # mapping counts on it too): only this process maps it
        whole = pte & C.PTE_HUGE and addr % PMD_SIZE == 0 and next_pmd <= end
        if whole or core.frame_info(fi.head).mapcount != 1 or \
                split_folio(kernel, fi.head, cpu) != 0:
            skip_to = next_pmd            # advised whole below, or the kernel's break
    # the walk proper, on what is mapped now
    addrs, ptes = core.range_leaves(mm.id, start, end)
    for addr, pte in zip(addrs.tolist(), ptes.tolist()):
        if pte & C.PTE_SPECIAL or not pte & C.PTE_PRESENT:
            continue
        pfn = (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
        fi = core.frame_info(pfn)
        if pte & C.PTE_HUGE:
            if is_thp_leaf(core, pte) and addr % PMD_SIZE == 0 and addr + PMD_SIZE <= end \
                    and fi.mapcount == 1:
                yield addr, pte, fi, True
            continue
        if fi.order:
            continue                      # a large folio left whole above
        yield addr, pte, fi, False


def madvise_free_single_vma(vma: VMA, start: int, end: int, cpu: int) -> None:
    """/* mirrors madvise_free_single_vma() / madvise_free_pte_range() */:
    only anonymous VMAs; each exclusively mapped anon page is made clean
    and old (the PTE cleared of DIRTY and ACCESSED, flushed) and its folio
    lazily freeable: reclaim (MADV_PAGEOUT) discards it unless it was
    written again or someone else holds it (a pin).  A THP is marked whole
    when the range covers its PMD, else split first
    (``_lru_advice_leaves``)."""
    if not vma_is_anonymous(vma):
        raise GupError(errno.EINVAL, "MADV_FREE needs anonymous memory")
    core = vma.vm_mm.kernel.core
    touched = False
    for addr, pte, fi, whole in _lru_advice_leaves(vma, start, end, cpu):
        if fi.mapping & C.MAPPING_FLAGS != C.MAPPING_ANON or fi.mapcount != 1:
            continue        # shared with a child: left alone
        pfn = fi.head if whole else (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
        # madvise_free_huge_pmd() for a whole THP: the folio clean, the PMD
        # old and clean, the folio lazily freeable, as a small page's
        core.flags_update(pfn, C.F_LAZYFREE, C.F_DIRTY | C.F_REFERENCED)
        core.pte_modify(vma.vm_mm.id, addr, C.PTE_DIRTY | C.PTE_ACCESSED, 0, expect_pfn=pfn)
        touched = True
    if touched:
        core.flush_tlb_range(cpu, vma.vm_mm.id, start, end)


# ---------------------------------------------------------------------------
# REMOVE, WILLNEED, COLD / PAGEOUT, COLLAPSE

def madvise_remove(vma: VMA, start: int, end: int) -> None:
    """/* mirrors madvise_remove() */: a hole punched in the file behind a
    shared writable mapping (vfs_fallocate(PUNCH_HOLE | KEEP_SIZE))."""
    if vma.vm_flags & VM.LOCKED:
        raise GupError(errno.EINVAL, "MADV_REMOVE of a locked mapping")
    inode = vma.vm_file
    if inode is None:
        raise GupError(errno.EINVAL, "MADV_REMOVE needs a file mapping")
    if (vma.vm_flags & (VM.SHARED | VM.MAYWRITE)) != (VM.SHARED | VM.MAYWRITE):
        raise GupError(errno.EACCES, "MADV_REMOVE needs a shared writable mapping")
    fstype = inode.fs.fstype
    if not fstype.fallocate or not fstype.punch_hole:
        raise GupError(errno.EOPNOTSUPP, f"{fstype.name} cannot punch holes")
    assert FALLOC.PUNCH_HOLE and FALLOC.KEEP_SIZE     # the mode vfs_fallocate() gets
    nr = 1 << inode.order
    first = -(-vma.page_index(start) // nr) * nr
    last = (vma.page_index(end - 1) + 1) // nr * nr
    punch_hole(inode, first, min(last, max(inode.nr_pages(), first)))


def madvise_willneed(vma: VMA, start: int, end: int) -> None:
    """/* mirrors madvise_willneed() */: read-ahead of a file on a disk
    file system into the page cache (vfs_fadvise(WILLNEED)); nothing for
    anonymous memory (no swap) or memory file systems."""
    inode = vma.vm_file
    if inode is None or not inode.fs.fstype.writeback or inode.fs.fstype.kind == "dax":
        return
    for index in range(vma.page_index(start), min(vma.page_index(end - 1) + 1, inode.nr_pages())):
        inode.get_folio(index)


def can_madv_lru_vma(vma: VMA) -> bool:
    """/* mirrors can_madv_lru_vma() */"""
    return not vma.vm_flags & (VM.LOCKED | VM.PFNMAP | VM.HUGETLB)


def madvise_cold_or_pageout(vma: VMA, start: int, end: int, pageout: bool, cpu: int) -> None:
    """/* mirrors madvise_cold() / madvise_pageout() */: every page mapped
    only here is made old (PTE ACCESSED and the folio's REFERENCED
    cleared); PAGEOUT then reclaims it (reclaim_pages()): a lazily freed
    clean anon folio nobody else holds is discarded, a clean file folio
    goes as reclaim takes it (shrink_file_folio()); a pinned folio is never
    reclaimed.  Without swap other anon folios stay.  THPs as MADV_FREE
    treats them (``_lru_advice_leaves``)."""
    if not can_madv_lru_vma(vma):
        raise GupError(errno.EINVAL, f"{'MADV_PAGEOUT' if pageout else 'MADV_COLD'} of {vma!r}")
    mm = vma.vm_mm
    core = mm.kernel.core
    files = []
    for addr, pte, fi, whole in _lru_advice_leaves(vma, start, end, cpu):
        pfn = fi.head if whole else (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
        if fi.mapcount != 1:
            continue                     # folio_maybe_mapped_shared(): skipped
        core.pte_modify(mm.id, addr, C.PTE_ACCESSED, 0, expect_pfn=pfn)
        core.flags_update(pfn, 0, C.F_REFERENCED)
        if not pageout:
            continue
        if fi.mapping & C.MAPPING_FLAGS == C.MAPPING_ANON:
            # try_to_unmap_one() for a lazyfree folio: discarded when the
            # mappings hold every reference (the kernel counts its isolation
            # reference too) and it is still clean; a whole THP goes whole
            # (reclaim splits its PMD and unmaps every page: the same end)
            dirty = pte & C.PTE_DIRTY or fi.flags & C.F_DIRTY
            if fi.flags & C.F_LAZYFREE and not dirty and fi.refcount == fi.mapcount:
                core.zap_range(cpu, mm.id, addr, addr + (PMD_SIZE if whole else PAGE_SIZE))
            elif fi.flags & C.F_LAZYFREE:
                core.flags_update(pfn, 0, C.F_LAZYFREE)   # written again or held: keep
        elif fi.mapping and vma.vm_file is not None:
            files.append(fi.index)
    inode = vma.vm_file
    for index in files:
        if inode.find_folio(index) is not None and inode.folio_start(index) in inode.page_cache:
            shrink_file_folio(inode, inode.folio_start(index))


def madvise_collapse(vma: VMA, start: int, end: int, cpu: int) -> None:
    """/* mirrors madvise_collapse() */ (mm/khugepaged.c) on one VMA part:
    EINVAL at once when the VMA may not hold a THP
    (thp_vma_allowable_order() with the sysfs setting ignored, VM_NOHUGEPAGE
    honoured); otherwise each 2 MiB-aligned extent inside [start, end) is
    collapsed (an extent a THP maps already counts as done).  The kernel
    goes on past the failures it lists as "continuing OK" and stops at any
    other; unless every extent ended as a THP the result is the errno of
    the last failure (madvise_collapse_errno()): EAGAIN for a page that is
    pinned or holds references no mapping explains (SCAN_PAGE_COUNT),
    ENOMEM for no free order-9 block (SCAN_ALLOC_HUGE_PAGE_FAIL, which
    stops the walk), EINVAL for the rest."""
    # thp_vma_allowable_order() outside a fault also asks that the VMA hold
    # one aligned 2 MiB extent (transhuge_vma_suitable() at vm_end - 2 MiB)
    if vma.vm_end - vma.vm_start < PMD_SIZE or \
            not vma_thp_eligible(vma, vma.vm_end - PMD_SIZE, enforce_sysfs=False):
        raise GupError(errno.EINVAL, f"MADV_COLLAPSE: {vma!r} cannot hold a THP")
    mm = vma.vm_mm
    hstart = -(-start // PMD_SIZE) * PMD_SIZE
    hend = end // PMD_SIZE * PMD_SIZE
    thps = 0
    last_fail = 0
    for addr in range(hstart, hend, PMD_SIZE):
        # find_pmd_or_thp_or_none(): no PMD table at all is SCAN_PMD_NULL
        # (go on); a none PMD entry in one is SCAN_PMD_NONE (stop)
        _, entries = mm.kernel.core.walk_entries(cpu, mm.id, addr)
        stop = entries[1] != 0 and pmd_entry(mm, addr, cpu) == 0
        rc = -errno.EINVAL if stop else collapse_pmd(mm, addr, cpu, enforce_sysfs=False)
        if rc == 0:
            thps += 1                          # SCAN_SUCCEED / SCAN_PMD_MAPPED
            continue
        last_fail = -rc
        # collapse_pmd()'s EAGAIN is SCAN_PAGE_COUNT and its EINVAL past the
        # PMD checks a PTE it cannot take (non-present, no normal page,
        # SCAN_PAGE_RO): all "continuing OK"; ENOMEM is not
        if stop or rc == -errno.ENOMEM:
            break
    extents = max(0, (hend - hstart) // PMD_SIZE)
    if thps != extents:
        raise GupError(last_fail, f"MADV_COLLAPSE of [{start:#x}, {end:#x}): "
                                  f"{thps} of {extents} extents collapsed")


# ---------------------------------------------------------------------------
# POPULATE_(READ|WRITE)

def madvise_populate(mm: "MM", start: int, end: int, advice: int, cpu: int) -> None:
    """/* mirrors madvise_populate() */: fault the range in through GUP with
    the VMA's own permissions; a hole is ENOMEM, a VMA GUP refuses EINVAL,
    SIGBUS / SIGSEGV EFAULT — after the pages before it were populated."""
    write = advice == MADV.POPULATE_WRITE
    while start < end:
        vma = mm.find_vma(start)
        if vma is None:
            raise GupError(errno.ENOMEM, f"{start:#x} is not mapped")
        tmp_end = min(end, vma.vm_end)
        pages = faultin_vma_page_range(vma, start, tmp_end, write, cpu)
        if pages < 0:
            err = -pages
            if err not in (errno.EINTR, errno.EINVAL, EHWPOISON, errno.EFAULT):
                err = errno.ENOMEM
            raise GupError(err, f"MADV_POPULATE at {start:#x}")
        start += pages << PAGE_SHIFT
