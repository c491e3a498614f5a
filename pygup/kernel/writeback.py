"""Writeback, truncate and eviction (mm/page-writeback.c, mm/rmap.c,
mm/truncate.c, mm/vmscan.c), run under the machine lock.

Writeback cleans a folio the way the kernel does: ``folio_mkclean`` walks
every *shared* VMA mapping it and write-protects + cleans each PTE with a TLB
shootdown, so the next user write faults and notifies the file system.  A
write that arrives any other way — through a GUP pin, the kernel's direct
mapping — is invisible to all of this; that is the seed's bug.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from pygup._native import C
from pygup.flags import VM
from pygup.kernel.vma import mapping_can_writeback

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.fs import Inode


def _cpu(inode: "Inode") -> int:
    return inode.fs.kernel.current_cpu()


def folio_mkclean(inode: "Inode", head: int, start: int) -> int:
    """/* mirrors folio_mkclean() */: write-protect and clean every PTE that
    maps the folio in a VM_SHARED VMA (private VMAs are skipped).  Returns
    how many entries were cleaned."""
    core = inode.fs.kernel.core
    cpu = _cpu(inode)
    nr = 1 << inode.order
    cleaned = 0
    for vma in list(inode.i_mmap):
        if not vma.vm_flags & VM.SHARED:
            continue
        step = nr if vma.is_hugetlb else 1
        for i in range(0, nr, step):
            addr = vma.address_of(start + i)
            if addr is None:
                continue
            done, _ = core.pte_mkclean(cpu, vma.vm_mm.id, addr, head + i)
            cleaned += done
    return cleaned


def folio_clear_dirty_for_io(inode: "Inode", head: int, start: int) -> bool:
    """/* mirrors folio_clear_dirty_for_io() */: move PTE dirtiness to the
    folio (mkclean), then test-and-clear the folio's dirty flag.  A cleaned
    folio needs a new page_mkwrite before it may be written again."""
    core = inode.fs.kernel.core
    if mapping_can_writeback(inode):
        if folio_mkclean(inode, head, start):
            core.flags_update(head, C.F_DIRTY, 0)
    old = core.flags_update(head, 0, C.F_DIRTY | C.F_MKWRITE)
    return bool(old & C.F_DIRTY)


def writeback_folio(inode: "Inode", head: int, start: int) -> int:
    """Write one folio back if it is dirty (->writepages for one folio).
    Returns pages written to disk."""
    fs = inode.fs
    core = fs.kernel.core
    if not folio_clear_dirty_for_io(inode, head, start):
        return 0
    flags = core.flags_update(head, C.F_WRITEBACK, 0)
    try:
        if fs.fstype.skip_dirty_without_private and not flags & C.F_PRIVATE:
            # ext4 since cc5095747edf: warn, leave it clean, skip it
            fs.warn(inode, start, "dirty folio without buffers at writeback: "
                                  "skipped, its data is lost")
            return 0
        written = 0
        for i in range(1 << inode.order):
            if start + i < inode.nr_pages():
                inode.disk[start + i] = core.frame_read(head + i)
                written += 1
        fs.counters["pages_written"] += written
        return written
    finally:
        core.flags_update(head, 0, C.F_WRITEBACK)


def writeback_inode(inode: "Inode", first: int = 0, last: Optional[int] = None) -> int:
    """Write back the dirty folios caching pages [first, last).  File
    systems that cannot write back (shmem, ramfs, hugetlbfs) have nothing to
    do: their data lives in memory only."""
    if not mapping_can_writeback(inode):
        return 0
    last = inode.nr_pages() if last is None else last
    written = 0
    for start in sorted(inode.page_cache):
        if start + (1 << inode.order) > first and start < last:
            written += writeback_folio(inode, inode.page_cache[start], start)
    return written


def unmap_mapping_pages(inode: "Inode", first: int, last: Optional[int] = None) -> None:
    """/* mirrors unmap_mapping_pages() */ with even_cows: zap every mapping of
    file pages [first, last), private COW copies included."""
    core = inode.fs.kernel.core
    cpu = _cpu(inode)
    for vma in list(inode.i_mmap):
        lo = vma.address_of(max(first, vma.vm_pgoff))
        if lo is None:
            continue
        hi = vma.vm_end
        if last is not None:
            end = vma.address_of(last)
            if end is not None:
                hi = end
            elif last <= vma.vm_pgoff:
                continue
        if lo < hi:
            core.zap_range(cpu, vma.vm_mm.id, lo, hi)


def try_to_unmap(inode: "Inode", head: int, start: int) -> None:
    """/* mirrors try_to_unmap() */ for a file folio: clear every PTE that maps
    it (not the private copies made from it), with the TLB flush."""
    core = inode.fs.kernel.core
    cpu = _cpu(inode)
    nr = 1 << inode.order
    for vma in list(inode.i_mmap):
        step = nr if vma.is_hugetlb else 1
        for i in range(0, nr, step):
            addr = vma.address_of(start + i)
            if addr is None:
                continue
            level, pte = core.pte_lookup(vma.vm_mm.id, addr)
            if level and ((pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT) == head + i:
                core.zap_range(cpu, vma.vm_mm.id, addr, addr + step * C.PAGE_SIZE)


def _delete_from_page_cache(inode: "Inode", start: int) -> None:
    """filemap_remove_folio(): mapping word cleared (GUP-fast then sees a
    truncated folio), dirty cancelled, the page cache's reference dropped."""
    core = inode.fs.kernel.core
    pfn = inode.page_cache.pop(start)
    core.set_mapping(pfn, 0, start)
    core.flags_update(pfn, 0, C.F_DIRTY | C.F_LRU)
    core.folio_put(pfn, 1)


def truncate_inode_pages(inode: "Inode", first: int) -> None:
    """Unmap and drop every cached folio from page ``first`` on."""
    unmap_mapping_pages(inode, first)
    for start in sorted(inode.page_cache):
        if start >= first:
            _delete_from_page_cache(inode, start)


def truncate_inode(inode: "Inode", size: int) -> None:
    """truncate_setsize() + truncate_pagecache()."""
    if inode.fs.fstype.huge and size % (C.PMD_NR * C.PAGE_SIZE):
        raise ValueError("size of a hugetlbfs file must be a multiple of 2 MiB")
    old = inode.size
    inode.size = size
    if size < old:
        first = -(-size // C.PAGE_SIZE)
        truncate_inode_pages(inode, first)
        for index in [i for i in inode.disk if i >= first]:
            del inode.disk[index]


def evict_inode(inode: "Inode") -> int:
    """Reclaim (shrink_folio_list) over one file's clean folios: unmap them,
    release fs-private state (try_to_release_page) and free those no one
    else holds.  A folio with extra references — a GUP pin — stays in the
    page cache, unmapped and stripped of its buffers (Jan Kara's 2018
    scenario).  Returns folios freed."""
    core = inode.fs.kernel.core
    if not mapping_can_writeback(inode):
        return 0               # shmem/ramfs/hugetlbfs: memory is the only copy
    freed = 0
    for start in sorted(inode.page_cache):
        head = inode.page_cache[start]
        if core.frame_info(head).flags & (C.F_DIRTY | C.F_WRITEBACK):
            continue
        try_to_unmap(inode, head, start)
        if core.frame_info(head).flags & C.F_DIRTY:
            continue           # a dirty PTE moved to the folio: write it back first
        core.flags_update(head, 0, C.F_PRIVATE)
        if core.frame_info(head).refcount == 1:
            _delete_from_page_cache(inode, start)
            freed += 1
    return freed
