"""``MM``: an mm_struct — the VMA tree, the C page tables, and the
kernel-style GUP entry points (SPEC §1.2) that act on it.  The system calls
that change an mm are ``Process``'s (process.py).
"""
from __future__ import annotations

import dataclasses
import errno
from typing import TYPE_CHECKING, Optional

from pygup._native import C
from pygup.flags import (
    FOLL_FAST_ONLY, FOLL_GET, FOLL_PIN, FOLL_REMOTE, FOLL_TOUCH, FOLL_UNLOCKABLE, PAGE_MASK,
    PAGE_SHIFT, PMD_SIZE, TASK_SIZE, VM, GupError, bool_arg, int_arg)
from pygup.kernel import gup
from pygup.kernel.fault import pte_pfn
from pygup.kernel.thp import split_huge_pmd
from pygup.kernel.vma import VMA, VmaTree

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel
    from pygup.kernel.gup import Pages

MMAP_BASE = 0x7F0000000000          # top-down allocation starts below here
MMAP_MIN_ADDR = 0x10000


@dataclasses.dataclass(frozen=True)
class PTE:
    """A decoded page-table leaf (``MM.pte``)."""

    raw: int
    level: int            # 1 = PTE, 2 = PMD leaf, 0 = nothing mapped

    @property
    def present(self) -> bool:
        return bool(self.raw & C.PTE_PRESENT)

    @property
    def write(self) -> bool:
        return bool(self.raw & C.PTE_WRITE)

    @property
    def dirty(self) -> bool:
        return bool(self.raw & C.PTE_DIRTY)

    @property
    def accessed(self) -> bool:
        return bool(self.raw & C.PTE_ACCESSED)

    @property
    def protnone(self) -> bool:
        return bool(self.raw & C.PTE_PROTNONE)

    @property
    def special(self) -> bool:
        return bool(self.raw & C.PTE_SPECIAL)

    @property
    def huge(self) -> bool:
        return bool(self.raw & C.PTE_HUGE)

    @property
    def pfn(self) -> int:
        return pte_pfn(self.raw)

    _BITS = ("present", "write", "dirty", "accessed", "protnone", "special", "huge")

    def fields(self) -> list[tuple[str, object]]:
        """The decoded entry, as (name, value) pairs."""
        if not self.level:
            return [("level", "none (nothing mapped)")]
        return ([("level", "PMD" if self.level == 2 else "PTE")]
                + [(b, getattr(self, b)) for b in self._BITS]
                + [("pfn", hex(self.pfn)), ("raw", hex(self.raw))])

    def __repr__(self) -> str:
        if not self.level:
            return "PTE(none)"
        bits = ", ".join(b for b in self._BITS if getattr(self, b))
        kind = "PMD" if self.level == 2 else "PTE"
        return f"{kind}({bits or 'not present'}, pfn={self.pfn:#x}, raw={self.raw:#x})"

    def _repr_html_(self) -> str:
        from pygup.kernel.html import fields_table
        return fields_table("page-table entry", self.fields())


class MM:
    """An mm_struct: the VMA tree and the C page tables."""

    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel
        self.id = kernel.core.mm_new()
        self.vmas = VmaTree()
        self.has_pinned = False           # MMF_HAS_PINNED, sticky
        self.alive = True
        self.locked_vm = 0                # pages of VM_LOCKED VMAs (mm->locked_vm)
        self.def_flags = VM.NONE          # flags every new VMA gets (mlockall(MCL_FUTURE))

    # -- GUP entry points (SPEC §1.2): (ret, Pages), ret as the kernel's ---------
    def get_user_pages(self, start: int, nr_pages: int, gup_flags: int = 0,
                       pages: bool = True) -> "tuple[int, Pages]":
        """get_user_pages(): FOLL_TOUCH; pages=False only faults the range in."""
        return gup.gup_slow(self, start, nr_pages, gup_flags, FOLL_TOUCH, False, pages)

    def get_user_pages_remote(self, start: int, nr_pages: int, gup_flags: int = 0,
                              pages: bool = True, locked: Optional[int] = None
                              ) -> "tuple[int, Pages]":
        return gup.gup_slow(self, start, nr_pages, gup_flags, FOLL_TOUCH | FOLL_REMOTE, False,
                            pages, locked)

    def get_user_pages_unlocked(self, start: int, nr_pages: int, gup_flags: int = 0
                                ) -> "tuple[int, Pages]":
        return gup.gup_slow(self, start, nr_pages, gup_flags, FOLL_TOUCH | FOLL_UNLOCKABLE, False)

    def pin_user_pages(self, start: int, nr_pages: int, gup_flags: int = 0) -> "tuple[int, Pages]":
        """pin_user_pages(): FOLL_PIN (no FOLL_TOUCH); 0 on invalid flags."""
        return gup.gup_slow(self, start, nr_pages, gup_flags, FOLL_PIN, True)

    def pin_user_pages_remote(self, start: int, nr_pages: int, gup_flags: int = 0,
                              locked: Optional[int] = None) -> "tuple[int, Pages]":
        return gup.gup_slow(self, start, nr_pages, gup_flags,
                            FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE, True, True, locked)

    def pin_user_pages_unlocked(self, start: int, nr_pages: int, gup_flags: int = 0
                                ) -> "tuple[int, Pages]":
        return gup.gup_slow(self, start, nr_pages, gup_flags,
                            FOLL_PIN | FOLL_TOUCH | FOLL_UNLOCKABLE, True)

    # (ret, Pages) of get_user_pages_fast(), get_user_pages_fast_only(),
    # pin_user_pages_fast(): functions of gup.py bound as methods, so that
    # their common call costs one Python frame
    get_user_pages_fast = gup.get_user_pages_fast
    get_user_pages_fast_only = gup.get_user_pages_fast_only
    pin_user_pages_fast = gup.pin_user_pages_fast

    unpin_user_pages = gup.unpin_user_pages_method

    def unpin_user_pages_dirty_lock(self, pages: "Pages", make_dirty: bool) -> None:
        gup.unpin_user_pages_dirty_lock(self.kernel, pages, bool_arg(make_dirty, "make_dirty"))

    def put_page(self, pages: "Pages") -> None:
        """put_page() on every page of a FOLL_GET result."""
        gup.put_pages(self.kernel, pages)

    # -- lookup --------------------------------------------------------------
    def find_vma(self, addr: int) -> Optional[VMA]:
        """The VMA containing addr, or None (unlike the kernel's find_vma,
        never the next one above)."""
        return self.vmas.find(addr)

    def vmas_in(self, start: int, end: int) -> list[VMA]:
        """VMAs intersecting [start, end), in address order."""
        return self.vmas.range(start, end)

    def pte(self, addr: int) -> PTE:
        """The page-table leaf mapping addr (level 0 if none)."""
        addr = int_arg(addr, "addr")
        if not 0 <= addr < TASK_SIZE:
            raise ValueError(f"addr must be a user address below {TASK_SIZE:#x}, got {addr:#x}")
        level, raw = self.kernel.core.pte_lookup(self.id, addr & PAGE_MASK)
        return PTE(raw, level)

    # -- tree maintenance -------------------------------------------------------
    def vma_link(self, vma: VMA) -> None:
        self.vmas.insert(vma)
        if vma.vm_file is not None:
            vma.vm_file.i_mmap.add(vma)
        for av in vma.anon_vmas:
            av.vmas.add(vma)

    def vma_unlink(self, vma: VMA) -> None:
        self.vmas.remove(vma)
        if vma.vm_file is not None:
            vma.vm_file.i_mmap.discard(vma)
        for av in vma.anon_vmas:
            av.vmas.discard(vma)

    def split_vma(self, vma: VMA, addr: int) -> VMA:
        """split_vma(): cut vma at addr; returns the upper part.  A THP's PMD
        leaf across addr becomes a PTE table first (/* mirrors __split_vma()
        -> vma_adjust_trans_huge() */): no PMD leaf maps pages of two VMAs,
        which fork, mprotect and zap, working VMA by VMA, rely on (the C
        core refuses a range that cuts a PMD leaf).  ENOMEM (nothing
        changed) when no table page can be had."""
        if vma.is_hugetlb and addr % PMD_SIZE:
            raise GupError(errno.EINVAL, "hugetlb VMAs split only at 2 MiB boundaries")
        if addr % PMD_SIZE:
            split_huge_pmd(vma, addr, self.kernel.current_cpu())
        upper = VMA(self, addr, vma.vm_end, vma.vm_flags, vma.vm_file,
                    vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT), vma.vm_ops)
        upper.anon_vmas = list(vma.anon_vmas)
        upper.own_anon_vma = vma.own_anon_vma
        upper.pgprot_customised = vma.pgprot_customised
        self.vma_unlink(vma)
        vma.vm_end = addr
        self.vma_link(vma)
        self.vma_link(upper)
        return upper

    def split_range(self, start: int, end: int) -> list[VMA]:
        """The VMAs covering [start, end), split so that none sticks out."""
        for vma in self.vmas_in(start, end):
            if vma.vm_start < start:
                self.split_vma(vma, start)
        for vma in self.vmas_in(start, end):
            if vma.vm_end > end:
                self.split_vma(vma, end)
        return self.vmas_in(start, end)

    def vma_merge(self, vma: VMA) -> None:
        """vma_merge(), reduced to its rule: neighbours with the same flags,
        file, vm_ops and anon_vmas and contiguous offsets become one."""
        prev = self._prev(vma)
        if prev is not None and self._mergeable(prev, vma):
            vma = self._merge(prev, vma)
        nxt = self._next(vma)
        if nxt is not None and self._mergeable(vma, nxt):
            self._merge(vma, nxt)

    @staticmethod
    def _mergeable(lo: VMA, hi: VMA) -> bool:
        return (lo.vm_end == hi.vm_start
                and (lo.vm_flags, lo.vm_file, lo.vm_ops, lo.pgprot_customised)
                == (hi.vm_flags, hi.vm_file, hi.vm_ops, hi.pgprot_customised)
                and lo.anon_vmas == hi.anon_vmas
                and hi.vm_pgoff == lo.vm_pgoff + ((lo.vm_end - lo.vm_start) >> PAGE_SHIFT))

    def _merge(self, lo: VMA, hi: VMA) -> VMA:
        self.vma_unlink(hi)
        self.vma_unlink(lo)
        lo.vm_end = hi.vm_end
        self.vma_link(lo)
        return lo

    def _prev(self, vma: VMA) -> Optional[VMA]:
        return self.vmas.prev(vma)

    def _next(self, vma: VMA) -> Optional[VMA]:
        return self.vmas.next(vma)

    def get_unmapped_area(self, length: int, align: int) -> int:
        """Top-down search for a free gap below MMAP_BASE."""
        addr = self.vmas.unmapped_area_topdown(length, align, MMAP_BASE, MMAP_MIN_ADDR)
        if addr is None:
            raise GupError(errno.ENOMEM, "no free virtual address range")
        return addr
