"""Folio migration (mm/migrate.c), as FOLL_LONGTERM needs it: move a folio
out of ZONE_MOVABLE before it is pinned for an unbounded time.

Migration moves content, flags, the mapping word and every PTE to a new
folio in ZONE_NORMAL, found through the reverse map (the anon_vma's VMAs or
the file's i_mmap).  Like the kernel's, it refuses a folio that holds
references it cannot account for (someone else pinned it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pygup._native import C
from pygup.flags import PAGE_SIZE
from pygup.kernel.fault import pte_pfn

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel

_MIGRATED_FLAGS = (C.F_DIRTY | C.F_UPTODATE | C.F_LRU | C.F_PRIVATE | C.F_MKWRITE
                   | C.F_REFERENCED | C.F_HUGETLB)


def _rmap_candidates(kernel: "Kernel", fi) -> list:
    """(vma, address) pairs that may map the folio's pages (rmap_walk)."""
    nr = 1 << fi.order
    out = []
    if fi.mapping & C.MAPPING_FLAGS == C.MAPPING_ANON:
        av = kernel.anon_vma_by_id(fi.mapping >> 2)
        vmas = list(av.vmas) if av is not None else []
    elif fi.mapping:
        inode = kernel.inode_by_as(fi.mapping >> 2)
        vmas = list(inode.i_mmap) if inode is not None else []
    else:
        vmas = []
    for vma in vmas:
        step = nr if vma.is_hugetlb else 1
        for i in range(0, nr, step):
            addr = vma.address_of(fi.index + i)
            if addr is not None:
                out.append((vma, addr, i))
    return out


def migrate_folio(kernel: "Kernel", head: int, cpu: int) -> bool:
    """Move the folio at ``head`` to ZONE_NORMAL.  False (nothing changed) if
    it holds unexplained references or no memory is free."""
    core = kernel.core
    fi = core.frame_info(head)
    head = fi.head
    nr = 1 << fi.order
    file_backed = fi.mapping != 0 and fi.mapping & C.MAPPING_FLAGS == 0
    # every leaf that maps this folio now
    mapped = []
    for vma, addr, i in _rmap_candidates(kernel, fi):
        level, pte = core.pte_lookup(vma.vm_mm.id, addr)
        if level and pte_pfn(pte) == head + i:
            mapped.append((vma, addr, i, level))
    expected = len(mapped) + (1 if file_backed else 0)
    if fi.refcount != expected:        # an early -EAGAIN, on a snapshot
        return False
    try:
        new = kernel.alloc_folio(fi.order, movable=False)
    except OSError:
        return False
    # try_to_migrate(): unmap every leaf and flush first.  Only then is the
    # count final: a lockless GUP-fast that read a leaf before the clear is
    # held off by the flush until its re-check fails, and nothing else can
    # take a reference without the lock this runs under.  Checking the
    # count before unmapping (as a snapshot) loses a pin taken in between:
    # the pinner keeps the old folio while the mapping moves on.
    cleared = []
    for vma, addr, i, level in mapped:
        mm = vma.vm_mm.id
        size = PAGE_SIZE << (C.PMD_ORDER if level == C.LEVEL_PMD else 0)
        old = core.pte_clear(mm, addr)                  # try_to_migrate_one()
        core.flush_tlb_range(cpu, mm, addr, addr + size)
        cleared.append((mm, addr, i, level, old))
    if core.frame_info(head).refcount != expected:
        # folio_migrate_mapping()'s freeze fails: -EAGAIN, and
        # remove_migration_ptes() maps the old folio back
        for mm, addr, i, level, old in cleared:
            core.pte_set(mm, addr, old, level)
        core.folio_put(new, 1)
        return False
    # the content is final once nobody maps it (the copy comes after the unmap)
    core.folio_copy(new, head)
    core.flags_update(new, fi.flags & _MIGRATED_FLAGS, 0)
    for i in range(nr):
        if core.frame_info(head + i).flags & C.F_ANON_EXCLUSIVE:
            core.flags_update(new + i, C.F_ANON_EXCLUSIVE, 0)
    core.set_mapping(new, fi.mapping, fi.index)
    for mm, addr, i, level, old in cleared:
        bits = old & ~C.PTE_PFN_MASK
        core.pte_set(mm, addr, ((new + i) << C.PTE_PFN_SHIFT) | bits, level)
        core.folio_get(new, 1)
        core.mapcount_add(new + i, 1)
        core.mapcount_add(head + i, -1)
        core.folio_put(head, 1)
    if file_backed:
        inode = kernel.inode_by_as(fi.mapping >> 2)
        inode.page_cache[inode.folio_start(fi.index)] = new   # the alloc ref moves here
        core.set_mapping(head, 0, fi.index)
        core.folio_put(head, 1)
    else:
        core.folio_put(new, 1)
    return True
