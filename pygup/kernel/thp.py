"""Anonymous transparent huge pages (mm/huge_memory.c, mm/khugepaged.c): the
machine's ``transparent_hugepage/enabled`` setting and which VMAs may hold
THPs, the huge anonymous fault, COW of a PMD-mapped THP, the split rules
(PMD split, folio split), and collapse.

The page-table and frame work is in C (csrc/mm/huge_memory.c:
``pg_split_huge_pmd`` / ``pg_collapse_pmd``; csrc/mm/frames.c:
``pg_split_folio``); the decisions are here.  Everything runs under the
machine lock (``Kernel.op()``).

Where pygup differs from the kernel, on purpose:

* a read fault in a THP-eligible range maps the 4 KiB zero page, not the
  huge zero page; a later write then gets a 4 KiB page, exactly as the
  kernel's write fault on the huge zero page falls back after splitting it;
* a partial munmap splits the folio at once when it can (the kernel queues
  it for the deferred-split shrinker, which does the same split later);
* collapse frees the old PTE table by the table-free rules and a split
  allocates a new one (the kernel deposits the old table beside the THP),
  so a split can fail with ENOMEM where the kernel's cannot.
"""
from __future__ import annotations

import numpy as np

import errno
from typing import TYPE_CHECKING, Optional

from pygup._native import C
from pygup.flags import PAGE_SIZE, PMD_SIZE, VM, GupError

from pygup.kernel.vma import maybe_mkwrite, vm_page_prot_base, vma_is_anonymous

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.vma import VMA

THP_SETTINGS = ("always", "madvise", "never")
HPAGE_PMD_NR = C.PMD_NR
VM_FAULT_FALLBACK = 0x800         # the fault is to be handled on PTEs instead


def check_thp_setting(value) -> str:
    """The ``transparent_hugepage/enabled`` value, or a ValueError naming ``thp``."""
    if value not in THP_SETTINGS:
        raise ValueError(f"thp must be one of {', '.join(THP_SETTINGS)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# eligibility

def transhuge_vma_suitable(vma: "VMA", addr: int) -> bool:
    """/* mirrors transhuge_vma_suitable() */: the aligned 2 MiB range around
    addr lies inside the VMA, and the VMA's page offset is aligned with its
    addresses (always so for anonymous memory)."""
    if ((vma.vm_start >> C.PAGE_SHIFT) - vma.vm_pgoff) % HPAGE_PMD_NR:
        return False
    haddr = addr & ~(PMD_SIZE - 1)
    return haddr >= vma.vm_start and haddr + PMD_SIZE <= vma.vm_end


def vma_thp_eligible(vma: "VMA", addr: Optional[int] = None, enforce_sysfs: bool = True) -> bool:
    """/* mirrors hugepage_vma_check() */ (thp_vma_allowable_order() from
    6.8) for anonymous memory: may this VMA hold a PMD-mapped THP (at addr,
    when given)?  ``enforce_sysfs`` is the fault's and khugepaged's view;
    MADV_COLLAPSE ignores the machine's setting (but not VM_NOHUGEPAGE)."""
    F = vma.vm_flags
    if F & VM.NOHUGEPAGE:
        return False
    if vma.is_hugetlb or F & (VM.IO | VM.PFNMAP | VM.MIXEDMAP) or not vma_is_anonymous(vma):
        return False                  # file and shmem THPs are not modelled
    if enforce_sysfs:
        setting = vma.vm_mm.kernel.thp
        if setting == "never" or (setting == "madvise" and not F & VM.HUGEPAGE):
            return False
    return addr is None or transhuge_vma_suitable(vma, addr)


def pmd_entry(mm, addr: int, cpu: int) -> int:
    """The PMD-level entry covering addr (0: none; a table or a leaf)."""
    _, entries = mm.kernel.core.walk_entries(cpu, mm.id, addr)
    return entries[2]


def is_thp_leaf(core, pmd: int) -> bool:
    """A PMD leaf of an anonymous THP (not hugetlb)."""
    if not pmd & C.PTE_HUGE:
        return False
    fi = core.frame_info((pmd & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT)
    return not fi.flags & C.F_HUGETLB


# ---------------------------------------------------------------------------
# faults

def _new_thp(vma: "VMA", haddr: int) -> Optional[int]:
    """vma_alloc_folio(GFP_TRANSHUGE, HPAGE_PMD_ORDER): an exclusive anon THP
    of vma (movable), or None when no order-9 block is free (the fault then
    falls back to a small page, as the kernel's does)."""
    kernel = vma.vm_mm.kernel
    core = kernel.core
    try:
        pfn = kernel.alloc_folio(C.PMD_ORDER, movable=True)
    except GupError as e:
        if e.errno == errno.ENOMEM:
            return None
        raise
    av = vma.anon_vma_prepare()
    core.set_mapping(pfn, (av.id << 2) | C.MAPPING_ANON, vma.page_index(haddr))
    core.flags_update(pfn, C.F_UPTODATE | C.F_LRU, 0)
    for i in range(HPAGE_PMD_NR):     # PageAnonExclusive: every page, kept in step
        core.flags_update(pfn + i, C.F_ANON_EXCLUSIVE, 0)
    return pfn


def do_huge_pmd_anonymous_page(vma: "VMA", addr: int, write: bool) -> bool:
    """/* mirrors do_huge_pmd_anonymous_page() */: a write fault on a none
    PMD of an eligible VMA maps a new THP by one PMD leaf.  False when the
    fault must fall back to 4 KiB pages (a read: see the module docstring;
    no order-9 block free)."""
    if not write:
        return False
    haddr = addr & ~(PMD_SIZE - 1)
    pfn = _new_thp(vma, haddr)
    if pfn is None:
        return False                  # thp_fault_fallback
    core = vma.vm_mm.kernel.core
    core.mapcount_add(pfn, 1)         # the allocation's reference is the mapping's
    bits = vm_page_prot_base(vma) | C.PTE_HUGE | C.PTE_DIRTY | maybe_mkwrite(vma)
    core.pte_set(vma.vm_mm.id, haddr, (pfn << C.PTE_PFN_SHIFT) | bits, C.LEVEL_PMD)
    return True


def do_huge_pmd_wp_page(vma: "VMA", addr: int, pmd: int, write: bool, unshare: bool,
                        cpu: int) -> int:
    """/* mirrors do_huge_pmd_wp_page() */: a write (or unshare) hit a
    read-only PMD leaf.  An exclusive THP (or the only reference left) is
    reused whole; otherwise the kernel's choice since 5.8: split the PMD and
    let the PTE-level fault copy the one 4 KiB page: VM_FAULT_FALLBACK,
    and the caller handles the fault again on the PTE."""
    mm = vma.vm_mm
    core = mm.kernel.core
    haddr = addr & ~(PMD_SIZE - 1)
    head = (pmd & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
    fi = core.frame_info(head)
    if fi.flags & C.F_ANON_EXCLUSIVE or (fi.refcount == 1 and fi.mapcount == 1):
        for i in range(HPAGE_PMD_NR):
            core.flags_update(head + i, C.F_ANON_EXCLUSIVE, 0)
        if write:
            core.pte_modify(mm.id, haddr, 0, maybe_mkwrite(vma) | C.PTE_DIRTY | C.PTE_ACCESSED,
                            expect_pfn=head)
        return 0
    split_huge_pmd(vma, haddr, cpu)
    return VM_FAULT_FALLBACK


def do_huge_pmd_numa_page(vma: "VMA", addr: int) -> None:
    """/* mirrors do_huge_pmd_numa_page() */: a PROTNONE PMD leaf in an
    accessible VMA is a NUMA hint: make it present again."""
    core = vma.vm_mm.kernel.core
    core.pte_modify(vma.vm_mm.id, addr & ~(PMD_SIZE - 1), C.PTE_PROTNONE, C.PTE_PRESENT)


# ---------------------------------------------------------------------------
# split

def split_huge_pmd(vma: "VMA", addr: int, cpu: int) -> Optional[int]:
    """/* mirrors split_huge_pmd() */: if a THP's PMD leaf covers addr,
    replace it by a PTE table mapping the same pages (the folio stays
    large, PTE-mapped).  Returns the folio's head pfn, or None if there was
    no THP leaf.  ENOMEM when no table page can be had (nothing changed)."""
    mm = vma.vm_mm
    core = mm.kernel.core
    pmd = pmd_entry(mm, addr, cpu)
    if not pmd & C.PTE_HUGE or not is_thp_leaf(core, pmd):
        return None
    if not core.split_huge_pmd(cpu, mm.id, addr):
        return None
    return (pmd & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT


def split_huge_pmd_range(mm, start: int, end: int, cpu: int) -> list[int]:
    """/* mirrors vma_adjust_trans_huge() */ (__split_vma, mprotect's
    change_pmd_range, zap_pmd_range): split every THP PMD leaf that
    [start, end) covers only in part.  Returns the heads of the folios
    split that way."""
    heads = []
    for edge in {start, end}:
        if edge % PMD_SIZE == 0:
            continue                  # a PMD-aligned edge cuts no leaf
        vma = mm.find_vma(edge) or mm.find_vma(edge - PAGE_SIZE)
        if vma is None:
            continue
        head = split_huge_pmd(vma, edge, cpu)
        if head is not None:
            heads.append(head)
    return heads


def thp_folios_at_edges(mm, start: int, end: int) -> list[int]:
    """Heads of the PTE-mapped anon THPs that [start, end) cuts: the ones
    an unmap of the range leaves partly mapped (deferred_split_folio()'s
    candidates)."""
    core = mm.kernel.core
    heads: list[int] = []
    for edge in sorted({start, end}):
        if edge % PMD_SIZE == 0:
            continue
        for addr in (edge - PAGE_SIZE, edge):
            if mm.find_vma(addr) is None:
                continue
            level, pte = core.pte_lookup(mm.id, addr)
            if level != C.LEVEL_PTE or not pte & (C.PTE_PRESENT | C.PTE_PROTNONE) \
                    or pte & C.PTE_SPECIAL:
                continue
            fi = core.frame_info((pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT)
            if fi.order == C.PMD_ORDER and not fi.flags & C.F_HUGETLB \
                    and fi.mapping & C.MAPPING_FLAGS == C.MAPPING_ANON and fi.head not in heads:
                heads.append(fi.head)
    return heads


def deferred_split_folios(kernel, heads: list[int], cpu: int) -> None:
    """/* mirrors deferred_split_folio() + deferred_split_scan() */, done at
    once: of the THPs an unmap or zap cut (``thp_folios_at_edges``, taken
    before it), each now partly mapped — a page of it no longer mapped
    anywhere, while others are — is split (split_folio(); a pinned one
    stays whole).  One whose every page is still mapped (mremap moved part
    of it: the pages are mapped at the new address) is left alone, as
    page_remove_rmap() never queues it."""
    core = kernel.core
    for head in heads:
        fi = core.frame_info(head)
        if fi.head != head or fi.order != C.PMD_ORDER:
            continue                  # freed or split meanwhile
        # np.greater, not >: a coverage fuzzer hooks compare operators and
        # keeps their operands (see World.expected_refcounts)
        mapped = np.greater(core.frames_mapcount(head, HPAGE_PMD_NR), 0)
        if mapped.any() and not mapped.all():
            split_folio(kernel, head, cpu)


def _pmd_mappings(kernel, head: int, cpu: int) -> list:
    """(vma, address) of every PMD leaf mapping the folio (the rmap walk of
    unmap_folio with TTU_SPLIT_HUGE_PMD)."""
    core = kernel.core
    fi = core.frame_info(head)
    av = kernel.anon_vma_by_id(fi.mapping >> 2) if fi.mapping & C.MAPPING_ANON else None
    out = []
    for vma in (list(av.vmas) if av is not None else []):
        addr = vma.address_of(fi.index)
        if addr is None or addr % PMD_SIZE or not vma.vm_mm.alive:
            continue
        level, pmd = core.pte_lookup(vma.vm_mm.id, addr)
        if level == C.LEVEL_PMD and (pmd & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT == head:
            out.append((vma, addr))
    return out


def split_folio(kernel, pfn: int, cpu: int) -> int:
    """/* mirrors split_folio() */ (split_huge_page_to_list) of the anon THP
    containing pfn: refused while it may be DMA-pinned or holds references
    no mapping explains (-EBUSY, nothing changed: can_split_folio());
    otherwise every PMD mapping is split first (unmap_folio) and the folio
    becomes 512 order-0 folios, each keeping its page's content, mapping,
    index and flags.  0 on success."""
    core = kernel.core
    fi = core.frame_info(pfn)
    if fi.order != C.PMD_ORDER or fi.flags & C.F_HUGETLB or not fi.mapping & C.MAPPING_ANON:
        return -errno.EINVAL
    head = fi.head
    if core.folio_maybe_dma_pinned(head):     # the C core's rule
        return -errno.EBUSY
    maps = int(core.frames_mapcount(head, HPAGE_PMD_NR).sum())
    if fi.refcount != maps:           # can_split_folio(): extra references
        return -errno.EBUSY
    for vma, addr in _pmd_mappings(kernel, head, cpu):
        core.split_huge_pmd(cpu, vma.vm_mm.id, addr)
    return core.split_folio(cpu, head)


# ---------------------------------------------------------------------------
# collapse

def collapse_pmd(mm, addr: int, cpu: int, enforce_sysfs: bool = False) -> int:
    """/* mirrors collapse_huge_page() */ (via hpage_collapse_scan_pmd), the
    collapse of the 2 MiB range around addr into one PMD-mapped THP, as
    MADV_COLLAPSE (``enforce_sysfs=False``: the machine's setting is
    ignored) and khugepaged (``True``) do it.  0 on success or when a THP
    already maps the range; -EINVAL when the range cannot hold a THP (no
    VMA, not eligible, a page that is not anonymous, nothing mapped
    writable); -EAGAIN when a page is pinned or holds references no mapping
    explains; -ENOMEM when no order-9 block is free.  Called under the
    machine lock."""
    kernel = mm.kernel
    core = kernel.core
    haddr = addr & ~(PMD_SIZE - 1)
    vma = mm.find_vma(addr)
    if vma is None or not vma_thp_eligible(vma, addr, enforce_sysfs):
        return -errno.EINVAL
    pmd = pmd_entry(mm, haddr, cpu)
    if pmd & C.PTE_HUGE:
        return 0 if is_thp_leaf(core, pmd) else -errno.EINVAL     # SCAN_PMD_MAPPED
    if pmd == 0:
        return -errno.EINVAL                                      # SCAN_PMD_NULL
    new = _new_thp(vma, haddr)
    if new is None:
        return -errno.ENOMEM                                      # SCAN_ALLOC_HUGE_PAGE_FAIL
    bits = vm_page_prot_base(vma) | C.PTE_DIRTY | maybe_mkwrite(vma)
    rc = core.collapse_pmd(cpu, mm.id, haddr, new, bits)
    if rc < 0:
        core.folio_put(new, 1)        # never mapped: back to the allocator
    return rc
