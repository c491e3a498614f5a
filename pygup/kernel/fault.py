"""The page-fault handler (mm/memory.c, mm/hugetlb.c), run under the machine
lock.  Anonymous faults, file read faults, shared write faults with
``page_mkwrite``, COW in private mappings, and write-protect faults — the
write-notify path that lets a file system hear of every first write after a
clean.
"""
from __future__ import annotations

import errno

from pygup._native import C
from pygup.flags import PAGE_SIZE, PMD_SIZE, VM, GupError
from pygup.kernel import thp
from pygup.kernel.vma import (VMA, maybe_mkwrite, vm_page_prot_base, vma_is_anonymous,
                              vma_pte_writable)



def pte_pfn(pte: int) -> int:
    return (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT


def mk_pte(pfn: int, bits: int) -> int:
    return (pfn << C.PTE_PFN_SHIFT) | bits


def vma_is_accessible(vma: VMA, write: bool) -> bool:
    """x86 access_error(): a write needs VM_WRITE; a read any of R/W/X."""
    if write:
        return bool(vma.vm_flags & VM.WRITE)
    return bool(vma.vm_flags & (VM.READ | VM.WRITE | VM.EXEC))


def handle_user_fault(mm, addr: int, write: bool, cpu: int) -> None:
    """do_user_addr_fault(): find the VMA, check access, handle the fault.
    A bad access is the process's SIGSEGV, reported as EFAULT."""
    vma = mm.find_vma(addr)
    if vma is None:
        raise GupError(errno.EFAULT, f"SIGSEGV: no mapping at {addr:#x}")
    if not vma_is_accessible(vma, write):
        raise GupError(errno.EFAULT, f"SIGSEGV: {'write' if write else 'read'} "
                       f"not permitted at {addr:#x} ({vma!r})")
    handle_mm_fault(vma, addr, write, cpu)


def handle_mm_fault(vma: VMA, addr: int, write: bool, cpu: int, unshare: bool = False) -> None:
    """/* mirrors handle_mm_fault() */: make the page at addr present (and
    writable for a write, exclusive for an unshare)."""
    mm = vma.vm_mm
    core = mm.kernel.core
    if vma.is_hugetlb:
        return hugetlb_fault(vma, addr, write, cpu, unshare)
    addr &= ~(PAGE_SIZE - 1)
    level, pte = core.pte_lookup(mm.id, addr)
    if level == C.LEVEL_PMD:
        return huge_pmd_fault(vma, addr, pte, write, cpu, unshare)
    if pte == 0:
        if vma_is_anonymous(vma):
            # create_huge_pmd(): a none PMD in a THP-eligible range
            if thp.vma_thp_eligible(vma, addr) and thp.pmd_entry(mm, addr, cpu) == 0 \
                    and thp.do_huge_pmd_anonymous_page(vma, addr, write):
                return None
            return do_anonymous_page(vma, addr, write)
        return do_fault(vma, addr, write)
    if pte & C.PTE_PROTNONE and vma_is_accessible(vma, False):
        # do_numa_page(): in an accessible VMA a PROT_NONE entry is a NUMA
        # hint: make it present again.  In a PROT_NONE VMA (a FOLL_FORCE
        # GUP's fault) it is the VMA's own protection: it stays
        core.pte_modify(mm.id, addr, C.PTE_PROTNONE, C.PTE_PRESENT)
        return None
    if write or unshare:
        if not pte & C.PTE_WRITE:
            return do_wp_page(vma, addr, pte, write, unshare, cpu)
        core.pte_modify(mm.id, addr, 0, C.PTE_DIRTY | C.PTE_ACCESSED)
    else:
        core.pte_modify(mm.id, addr, 0, C.PTE_ACCESSED)
    return None


def huge_pmd_fault(vma: VMA, addr: int, pmd: int, write: bool, cpu: int, unshare: bool) -> None:
    """The PMD-leaf half of __handle_mm_fault() for a THP: NUMA hint,
    write-protect (COW / unshare), or only the accessed / dirty bits."""
    core = vma.vm_mm.kernel.core
    if pmd & C.PTE_PROTNONE and vma_is_accessible(vma, False):
        # a NUMA hint, as for a PTE (handle_mm_fault()): in a PROT_NONE VMA
        # (a FOLL_FORCE GUP's fault) PROT_NONE is the VMA's own protection
        return thp.do_huge_pmd_numa_page(vma, addr)
    if (write or unshare) and not pmd & C.PTE_WRITE:
        if thp.do_huge_pmd_wp_page(vma, addr, pmd, write, unshare, cpu) == thp.VM_FAULT_FALLBACK:
            return handle_mm_fault(vma, addr, write, cpu, unshare)   # now PTE-mapped
        return None
    # huge_pmd_set_accessed()
    core.pte_modify(vma.vm_mm.id, addr & ~(PMD_SIZE - 1), 0,
                    C.PTE_ACCESSED | (C.PTE_DIRTY if write else 0))
    return None


def _new_anon_folio(vma: VMA, addr: int, order: int = 0) -> int:
    """Allocate a folio and make it an exclusive anonymous folio of vma (a
    folio that cannot be set up goes back to the allocator)."""
    kernel = vma.vm_mm.kernel
    core = kernel.core
    huge = order > 0
    pfn = kernel.alloc_folio(order, movable=not huge)    # hugetlb pages are not movable
    try:
        av = vma.anon_vma_prepare()
        core.set_mapping(pfn, (av.id << 2) | C.MAPPING_ANON, vma.page_index(addr))
        core.flags_update(pfn, C.F_UPTODATE | (C.F_HUGETLB if huge else C.F_LRU), 0)
        core.flags_update(pfn, C.F_ANON_EXCLUSIVE, 0)
    except BaseException:
        core.folio_put(pfn, 1)
        raise
    return pfn


def set_pte_or_put_back(mm, addr: int, pfn: int, entry: int, level: int) -> None:
    """Install ``entry`` (which maps ``pfn``, its reference and mapcount
    already taken for it); if it cannot be installed (no memory for a page
    table), drop that reference and mapcount again, as a fault that fails
    after allocating does (the folio_put() on do_anonymous_page()'s and
    finish_fault()'s error paths), so nothing leaks."""
    core = mm.kernel.core
    try:
        core.pte_set(mm.id, addr, entry, level)
    except BaseException:
        core.mapcount_add(pfn, -1)
        core.folio_put(pfn, 1)
        raise


def do_anonymous_page(vma: VMA, addr: int, write: bool) -> None:
    """/* mirrors do_anonymous_page() */: a read maps the shared zero page
    (special, read-only, uncounted); a write a new exclusive anon page."""
    core = vma.vm_mm.kernel.core
    if not write:
        core.pte_set(vma.vm_mm.id, addr, mk_pte(C.ZERO_PFN, vm_page_prot_base(vma) | C.PTE_SPECIAL),
                     C.LEVEL_PTE)
        return
    pfn = _new_anon_folio(vma, addr)
    core.mapcount_add(pfn, 1)          # the allocation's reference is the mapping's
    bits = vm_page_prot_base(vma) | C.PTE_DIRTY | maybe_mkwrite(vma)
    set_pte_or_put_back(vma.vm_mm, addr, pfn, mk_pte(pfn, bits), C.LEVEL_PTE)


def anon_fault_run(vma: VMA, addr: int, nr: int) -> int:
    """How many pages from addr (at most nr) the batch may fault as
    do_anonymous_page() would, one by one: handle_mm_fault()'s choices for a
    none PTE of an anonymous VMA, made once for the run.  0: the run
    belongs to the page-at-a-time path (hugetlb, file-backed, or a THP may
    go at addr: create_huge_pmd())."""
    if not vma.vm_mm.kernel.fault_batch or vma.is_hugetlb or not vma_is_anonymous(vma) \
            or not vma_is_accessible(vma, False):
        return 0           # a PROT_NONE VMA's pages are PAGE_NONE: one at a time
    nr = min(nr, (vma.vm_end - addr) >> C.PAGE_SHIFT)
    if thp.vma_thp_eligible(vma):
        # the choice is per PMD: stay inside this one, and leave a none PMD
        # that could hold a THP to the THP path
        mm = vma.vm_mm
        if thp.transhuge_vma_suitable(vma, addr) and thp.pmd_entry(mm, addr, mm.kernel.current_cpu()) == 0:
            return 0
        nr = min(nr, ((addr | (PMD_SIZE - 1)) + 1 - addr) >> C.PAGE_SHIFT)
    return max(nr, 0)


def do_anonymous_range(vma: VMA, addr: int, nr: int, write: bool) -> tuple[int, int]:
    """do_anonymous_page() for each none PTE of [addr, addr + nr pages) in
    one C call (mm/fault.c), which stops at the first entry that is there
    already; the caller asked anon_fault_run() for nr.  (pages faulted, the
    negative errno the fault of the next page failed with (-ENOMEM:
    VM_FAULT_OOM) or 0).  (0, 0): nothing done, the page-at-a-time path
    takes over."""
    if nr <= 0:
        return 0, 0
    kernel = vma.vm_mm.kernel
    if write:
        av = vma.anon_vma_prepare()
        how = C.FAULT_WRITE | (0 if kernel.pin_scope else C.FAULT_MOVABLE)
        return kernel.core.fault_anon_range(vma.vm_mm.id, addr, nr, how,
                                            vm_page_prot_base(vma) | C.PTE_DIRTY | maybe_mkwrite(vma),
                                            (av.id << 2) | C.MAPPING_ANON, vma.page_index(addr))
    return kernel.core.fault_anon_range(vma.vm_mm.id, addr, nr, 0, vm_page_prot_base(vma) | C.PTE_SPECIAL,
                                        0, 0)


def _file_page(vma: VMA, addr: int) -> tuple[int, int]:
    """(pfn of the page-cache page behind addr, its index); SIGBUS past EOF."""
    inode = vma.vm_file
    index = vma.page_index(addr)
    if index >= inode.nr_pages():
        raise GupError(errno.EFAULT, f"SIGBUS: {addr:#x} is past the end of {inode.describe()}")
    head = inode.get_folio(index)
    return head + (index - inode.folio_start(index)), index


def do_fault(vma: VMA, addr: int, write: bool) -> None:
    """/* mirrors do_fault() */: read, COW or shared fault on a file page."""
    mm = vma.vm_mm
    core = mm.kernel.core
    inode = vma.vm_file
    pfn, index = _file_page(vma, addr)
    if not write:
        # do_read_fault(): mapped with vm_page_prot, which has the write bit
        # only where no write-notify is wanted
        core.folio_get(pfn, 1)
        core.mapcount_add(pfn, 1)
        bits = vm_page_prot_base(vma) | (C.PTE_WRITE if vma_pte_writable(vma) else 0)
        set_pte_or_put_back(mm, addr, pfn, mk_pte(pfn, bits), C.LEVEL_PTE)
        return
    if not vma.vm_flags & VM.SHARED:
        # do_cow_fault(): a private copy; the page cache is never written
        new = _new_anon_folio(vma, addr)
        core.frame_write(new, core.frame_read(pfn))
        core.mapcount_add(new, 1)
        set_pte_or_put_back(mm, addr, new, mk_pte(new, vm_page_prot_base(vma) | C.PTE_DIRTY | maybe_mkwrite(vma)),
                            C.LEVEL_PTE)
        return
    # do_shared_fault(): tell the file system first, then map writable+dirty
    notify_shared_write(vma, inode, pfn, index)
    core.folio_get(pfn, 1)
    core.mapcount_add(pfn, 1)
    set_pte_or_put_back(mm, addr, pfn, mk_pte(pfn, vm_page_prot_base(vma) | C.PTE_DIRTY | C.PTE_WRITE),
                        C.LEVEL_PTE)
    inode.fs.folio_mark_dirty(inode, pfn, index, "shared write fault")


def notify_shared_write(vma: VMA, inode, pfn: int, index: int) -> None:
    """The file system hears of a write fault on a shared mapping before the
    page becomes writable: through ->page_mkwrite where vm_ops has one
    (do_page_mkwrite()); otherwise the write-protect fault itself is the
    notification — vma_wants_writenotify() keeps the PTEs of a file system
    that writes back read-only (vma_fs_can_writeback()), and the fault
    dirties the folio (fault_dirty_shared_page()).  Either way the folio is
    marked as notified since its last clean, which invariant 3 asks of every
    write through a PTE; a write that skipped this fault is still a bypass."""
    if vma.vm_ops is not None and vma.vm_ops.page_mkwrite:
        inode.fs.page_mkwrite(inode, pfn, index)
    else:
        vma.vm_mm.kernel.core.flags_update(pfn, C.F_MKWRITE, 0)


def do_wp_page(vma: VMA, addr: int, pte: int, write: bool, unshare: bool, cpu: int) -> None:
    """/* mirrors do_wp_page() */: a write (or unshare) hit a read-only PTE."""
    mm = vma.vm_mm
    core = mm.kernel.core
    pfn = pte_pfn(pte)
    if pte & C.PTE_SPECIAL:                       # the zero page: always copy
        return wp_page_copy(vma, addr, pte, write, cpu)
    if vma.vm_flags & VM.SHARED and not unshare:
        # wp_page_shared(): write-notify — the file system hears of it
        inode = vma.vm_file
        index = vma.page_index(addr)
        if inode is not None:
            notify_shared_write(vma, inode, pfn, index)
        level, _ = core.pte_modify(mm.id, addr, 0, C.PTE_WRITE | C.PTE_DIRTY | C.PTE_ACCESSED,
                                   expect_pfn=pfn)
        if level and inode is not None:
            inode.fs.folio_mark_dirty(inode, pfn, index, "write-protect fault")
        return None
    fi = core.frame_info(pfn)
    if fi.mapping & C.MAPPING_FLAGS == C.MAPPING_ANON:
        # wp_can_reuse_anon_folio(): exclusive, or the only reference left
        if fi.flags & C.F_ANON_EXCLUSIVE or (fi.refcount == 1 and fi.mapcount == 1):
            core.flags_update(pfn, C.F_ANON_EXCLUSIVE, 0)
            if write:
                core.pte_modify(mm.id, addr, 0, maybe_mkwrite(vma) | C.PTE_DIRTY | C.PTE_ACCESSED,
                                expect_pfn=pfn)
            return None
    return wp_page_copy(vma, addr, pte, write, cpu)


def wp_page_copy(vma: VMA, addr: int, old_pte: int, write: bool, cpu: int) -> None:
    """/* mirrors wp_page_copy() */: COW into a new exclusive anon page; the
    old entry is cleared and flushed before the new one is installed."""
    mm = vma.vm_mm
    core = mm.kernel.core
    old = pte_pfn(old_pte)
    new = _new_anon_folio(vma, addr)
    if not old_pte & C.PTE_SPECIAL:
        core.frame_write(new, core.frame_read(old))
    core.mapcount_add(new, 1)
    core.pte_clear(mm.id, addr)                       # ptep_clear_flush()
    core.flush_tlb_range(cpu, mm.id, addr, addr + PAGE_SIZE)
    bits = vm_page_prot_base(vma) | C.PTE_DIRTY | (maybe_mkwrite(vma) if write else 0)
    core.pte_set(mm.id, addr, mk_pte(new, bits), C.LEVEL_PTE)
    if not old_pte & C.PTE_SPECIAL:
        core.mapcount_add(old, -1)
        core.folio_put(old, 1)


def hugetlb_fault(vma: VMA, addr: int, write: bool, cpu: int, unshare: bool) -> None:
    """/* mirrors hugetlb_fault() */ for 2 MiB pages mapped by PMD leaves."""
    mm = vma.vm_mm
    core = mm.kernel.core
    haddr = addr & ~(PMD_SIZE - 1)
    _, pmd = core.pte_lookup(mm.id, haddr)
    shared = bool(vma.vm_flags & VM.SHARED)
    huge = C.PTE_HUGE | vm_page_prot_base(vma)
    if pmd == 0:
        # hugetlb_no_page(): shared mappings use the page cache, private ones
        # get a fresh anonymous huge page
        if shared or (vma.vm_file is not None and not write
                      and vma.vm_file.find_folio(vma.page_index(haddr)) is not None):
            inode = vma.vm_file
            index = vma.page_index(haddr)
            if index >= inode.nr_pages():
                raise GupError(errno.EFAULT, f"SIGBUS: {addr:#x} past the end of {inode.describe()}")
            pfn = inode.get_folio(index)
            core.folio_get(pfn, 1)
            writable = shared and bool(vma.vm_flags & VM.WRITE)
            bits = huge | (C.PTE_WRITE | C.PTE_DIRTY if writable else 0)
            if writable and write:
                core.flags_update(pfn, C.F_DIRTY, 0)
        else:
            pfn = _new_anon_folio(vma, haddr, C.PMD_ORDER)
            bits = huge | C.PTE_DIRTY | maybe_mkwrite(vma)
        core.mapcount_add(pfn, 1)
        set_pte_or_put_back(mm, haddr, pfn, mk_pte(pfn, bits), C.LEVEL_PMD)
        return None
    if (write or unshare) and not pmd & C.PTE_WRITE:
        pfn = pte_pfn(pmd)
        fi = core.frame_info(pfn)
        anon = fi.mapping & C.MAPPING_FLAGS == C.MAPPING_ANON
        if anon and (fi.flags & C.F_ANON_EXCLUSIVE or fi.refcount == 1):
            core.flags_update(pfn, C.F_ANON_EXCLUSIVE, 0)
            if write:
                core.pte_modify(mm.id, haddr, 0, maybe_mkwrite(vma) | C.PTE_DIRTY, expect_pfn=pfn)
            return None
        # hugetlb_wp(): copy the whole huge page
        new = _new_anon_folio(vma, haddr, C.PMD_ORDER)
        core.folio_copy(new, pfn)
        core.mapcount_add(new, 1)
        core.pte_clear(mm.id, haddr)
        core.flush_tlb_range(cpu, mm.id, haddr, haddr + PMD_SIZE)
        bits = huge | C.PTE_DIRTY | (maybe_mkwrite(vma) if write else 0)
        core.pte_set(mm.id, haddr, mk_pte(new, bits), C.LEVEL_PMD)
        core.mapcount_add(pfn, -1)
        core.folio_put(pfn, 1)
        return None
    core.pte_modify(mm.id, haddr, 0, C.PTE_ACCESSED | (C.PTE_DIRTY if write else 0))
    return None
