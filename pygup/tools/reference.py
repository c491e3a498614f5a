"""A plain-Python GUP-fast over the same C state: the same walk, the same
checks in the same order (SPEC §4.2-4.6), one page at a time through the
core's accessors.  Used only by the differential tests (C and this must
agree) and by the benchmarks as the baseline; it never plants mutants.
"""
from __future__ import annotations

from pygup._native import C
from pygup.flags import FOLL

PAGE_SHIFT = C.PAGE_SHIFT
PAGE_SIZE = C.PAGE_SIZE
_ALL3 = FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE


def _anon(fi) -> bool:
    return fi.mapping & C.MAPPING_FLAGS == C.MAPPING_ANON


class _Walk:
    def __init__(self, machine, mm, flags: int) -> None:
        self.m = machine
        self.core = machine._core
        self.cpu = machine.current_cpu()
        self.mm = mm
        self.flags = flags
        self.pin = bool(flags & FOLL.PIN)
        self.out: list[int] = []

    # -- the helpers, one per kernel function ---------------------------------
    def try_grab_folio(self, pfn: int, refs: int) -> bool:
        fi = self.core.frame_info(pfn)
        if fi.refcount <= 0:
            return False
        if self.pin and fi.flags & C.F_ZERO:
            return True
        if self.pin and self.flags & FOLL.LONGTERM and fi.zone == C.ZONE_MOVABLE \
                and not fi.flags & C.F_ZERO:
            return False                       # folio_is_longterm_pinnable()
        for i in range(refs):
            if self.core.try_grab_page(pfn + i, self.pin) < 0:
                if i:
                    self.core.gup_put(pfn, i, self.pin)
                return False
        return True

    def release(self, pfn: int, refs: int) -> None:
        self.core.gup_put(pfn, refs, self.pin)

    def is_secretmem(self, fi) -> bool:
        if fi.order > 0 or not fi.mapping or fi.mapping & C.MAPPING_FLAGS:
            return False
        if self.m.policy.secretmem_lru_shortcut and not fi.flags & C.F_LRU:
            return False
        kind = self.core.as_kind(fi.mapping >> 2)
        return kind >= 0 and bool(kind & C.AS_SECRETMEM)

    def folio_fast_pin_allowed(self, fi) -> bool:
        if not self.m.policy.fast_pin_whitelist or (self.flags & _ALL3) != _ALL3:
            return True
        if fi.flags & C.F_SLAB:
            return False
        if fi.flags & C.F_HUGETLB:
            return True
        mapping = fi.mapping
        if not mapping:
            return False
        if mapping & C.MAPPING_FLAGS:
            return bool(mapping & C.MAPPING_ANON)
        kind = self.core.as_kind(mapping >> 2)
        return kind >= 0 and bool(kind & C.AS_SHMEM)

    def must_unshare(self, fi) -> bool:
        if (self.flags & (FOLL.PIN | FOLL.WRITE)) != FOLL.PIN:
            return False
        if not _anon(fi):       # 6.1 passed every non-anon page (84209e87c696)
            return bool(self.flags & FOLL.LONGTERM) and self.m.policy.cow_ro_longterm_unshare
        flags = fi.flags
        if fi.flags & C.F_HUGETLB and fi.head != fi.pfn:
            flags = self.core.frame_info(fi.head).flags
        return not flags & C.F_ANON_EXCLUSIVE

    def permitted(self, entry: int) -> bool:
        if entry & C.PTE_PROTNONE or not entry & C.PTE_PRESENT or not entry & C.PTE_USER:
            return False
        if self.flags & FOLL.WRITE and not entry & C.PTE_WRITE:
            return False
        return not entry & C.PTE_SPECIAL

    # -- the leaves -----------------------------------------------------------------
    def pte(self, addr: int, pmd: int, pte: int) -> bool:
        if not self.permitted(pte):
            return False
        pfn = (pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT
        if not self.try_grab_folio(pfn, 1):
            return False
        fi = self.core.frame_info(pfn)
        _, again = self.core.walk_entries(self.cpu, self.mm.id, addr)
        if self.is_secretmem(fi) or again[2] != pmd or again[3] != pte \
                or not self.folio_fast_pin_allowed(fi) \
                or (not pte & C.PTE_WRITE and self.must_unshare(fi)):
            self.release(pfn, 1)
            return False
        self.core.flags_update(pfn, C.F_REFERENCED, 0)
        self.out.append(pfn)
        return True

    def pmd_leaf(self, addr: int, end: int, pmd: int) -> int:
        if not self.permitted(pmd):
            return 0
        pmd_end = (addr & ~((1 << C.PMD_SHIFT) - 1)) + (1 << C.PMD_SHIFT)
        refs = (min(end, pmd_end) - addr) >> PAGE_SHIFT
        pfn = ((pmd & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT) + ((addr >> PAGE_SHIFT) & (C.PMD_NR - 1))
        if not self.try_grab_folio(pfn, refs):
            return 0
        fi = self.core.frame_info(pfn)
        _, again = self.core.walk_entries(self.cpu, self.mm.id, addr)
        if again[2] != pmd or not self.folio_fast_pin_allowed(fi) \
                or (not pmd & C.PTE_WRITE and self.must_unshare(fi)):
            self.release(pfn, refs)
            return 0
        self.core.flags_update(pfn, C.F_REFERENCED, 0)
        self.out.extend(range(pfn, pfn + refs))
        return refs


def gup_fast_reference(machine, mm, start: int, nr_pages: int, gup_flags: int) -> list[int]:
    """lockless_pages_from_mm() in plain Python: the pfns taken (a prefix)."""
    w = _Walk(machine, mm, gup_flags)
    core = w.core
    seq = 0
    if w.pin:
        seq = core.mm_wp_seq(mm.id)
        if seq & 1:
            return []
    core.irq_disable(w.cpu)
    try:
        addr, end = start, start + (nr_pages << PAGE_SHIFT)
        while addr < end:
            level, e = core.walk_entries(w.cpu, mm.id, addr)
            if level <= 0:
                break
            if level == C.LEVEL_PMD:
                got = w.pmd_leaf(addr, end, e[2])
                if not got:
                    break
                addr += got << PAGE_SHIFT
            else:
                if not w.pte(addr, e[2], e[3]):
                    break
                addr += PAGE_SIZE
    finally:
        core.irq_enable(w.cpu)
    if w.pin and core.mm_wp_seq(mm.id) != seq:
        for pfn in w.out:
            w.release(pfn, 1)
        return []
    return w.out
