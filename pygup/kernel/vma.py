"""``VMA`` and the patch-1 policy layer of the seed series.

"mm/mmap: separate writenotify and dirty tracking logic" (Linux 6.5) split
``vma_needs_dirty_tracking()`` out of ``vma_wants_writenotify()``: GUP only
cares whether the *file system* must observe writes, while write-notify is
also driven by soft-dirty and userfaultfd-wp tracking.  The predicates below
mirror mm/mmap.c one for one (SPEC §2.1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

from sortedcontainers import SortedKeyList, SortedList

from pygup._native import C
from pygup.flags import (PAGE_SHIFT, PAGE_SIZE, VM, VM_HUGETLB, VM_MAYWRITE, VM_PFNMAP, VM_SHARED,
                         VM_SOFTDIRTY, VM_WRITE)
from pygup.kernel.fs import SECRETMEM_VM_OPS, VmOps

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.fs import Inode

# VM_UFFD_WP has no other use in pygup; kept out of the VM enum's hot paths.
VM_UFFD_WP = 0x1000


class AnonVma:
    """An anon_vma: the reverse-map root of anonymous folios.

    ``vmas`` is every VMA that may map a folio tagged with this anon_vma (the
    kernel's anon_vma_chain, flattened): the owner VMA, and after fork the
    children's copies of it."""

    _next_id = 1

    def __init__(self) -> None:
        self.id = AnonVma._next_id
        AnonVma._next_id += 1
        self.vmas: set[VMA] = set()


class VMA:
    """A vm_area_struct: [start, end) with flags, an optional file and an
    anon_vma chain."""

    __slots__ = ("vm_mm", "vm_start", "vm_end", "vm_flags", "vm_file", "vm_pgoff",
                 "vm_ops", "anon_vmas", "own_anon_vma", "pgprot_customised")

    def __init__(self, mm, start: int, end: int, flags: int,
                 file: "Optional[Inode]" = None, pgoff: int = 0,
                 vm_ops: Optional[VmOps] = None) -> None:
        self.vm_mm = mm
        self.vm_start = start
        self.vm_end = end
        self.vm_flags = VM(flags)
        self.vm_file = file
        self.vm_pgoff = pgoff       # in pages
        self.vm_ops = vm_ops
        # anon_vmas whose folios this VMA may map (own first, then inherited)
        self.anon_vmas: list[AnonVma] = []
        self.own_anon_vma: Optional[AnonVma] = None
        # a driver's ->mmap changed vm_page_prot (vma_wants_writenotify step 3)
        self.pgprot_customised = False

    # -- geometry -----------------------------------------------------------
    @property
    def length(self) -> int:
        return self.vm_end - self.vm_start

    def contains(self, addr: int) -> bool:
        return self.vm_start <= addr < self.vm_end

    def page_index(self, addr: int) -> int:
        """linear_page_index(): the file page (or anon index) behind addr."""
        return ((addr - self.vm_start) >> PAGE_SHIFT) + self.vm_pgoff

    def address_of(self, index: int) -> Optional[int]:
        """vma_address(): where file page ``index`` is mapped, if it is."""
        addr = self.vm_start + ((index - self.vm_pgoff) << PAGE_SHIFT)
        return addr if self.vm_start <= addr < self.vm_end else None

    def anon_vma_prepare(self) -> AnonVma:
        """The anon_vma new anonymous folios of this VMA are tagged with."""
        if self.own_anon_vma is None:
            av = AnonVma()
            self.vm_mm.kernel.anon_vmas[av.id] = av
            av.vmas.add(self)
            self.own_anon_vma = av
            self.anon_vmas.insert(0, av)
        return self.own_anon_vma

    @property
    def is_hugetlb(self) -> bool:
        return bool(int(self.vm_flags) & VM_HUGETLB)

    def __repr__(self) -> str:
        what = self.vm_file.describe() if self.vm_file is not None else "anon"
        return f"<VMA {self.vm_start:#x}-{self.vm_end:#x} {vm_flags_str(self.vm_flags)} {what}>"

    def _repr_html_(self) -> str:
        from pygup.kernel.html import fields_table
        return fields_table("VMA", [
            ("range", f"{self.vm_start:#x}-{self.vm_end:#x}"),
            ("pages", self.length >> PAGE_SHIFT), ("flags", vm_flags_str(self.vm_flags)),
            ("backing", self.vm_file.describe() if self.vm_file is not None else "anon"),
            ("pgoff", self.vm_pgoff),
            ("needs dirty tracking", vma_needs_dirty_tracking(self))])


class VmaTree:
    """The mm's VMAs in address order (the kernel's maple tree): lookup,
    range queries, neighbours and the free-gap search, all O(log n) in the
    number of VMAs.  The VMAs are a sorted list keyed by vm_start
    (sortedcontainers); callers remove a VMA before changing its vm_start or
    vm_end and insert it again after.

    The free gaps between neighbours are kept beside them, as the maple
    tree keeps its per-node largest gap: one sorted list of gap tops per
    size class (a gap of s bytes is in class s.bit_length()), so that the
    top-down search asks each class for its highest gap below ``high``
    instead of walking the VMAs (see ``unmapped_area_topdown``)."""

    def __init__(self) -> None:
        self._vmas = SortedKeyList(key=_vm_start)
        self._gap_lo: dict[int, int] = {}            # gap top -> gap bottom (between two VMAs)
        self._classes: dict[int, SortedList] = {}    # size class -> that class's gap tops

    def __len__(self) -> int:
        return len(self._vmas)

    def __iter__(self) -> Iterator[VMA]:
        return iter(self._vmas)

    def __getitem__(self, i: int) -> VMA:
        return self._vmas[i]

    def __contains__(self, vma: object) -> bool:
        return vma in self._vmas

    # -- the gaps between neighbours ---------------------------------------------
    def _add_gap(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        self._gap_lo[hi] = lo
        c = (hi - lo).bit_length()
        tops = self._classes.get(c)
        if tops is None:
            tops = self._classes[c] = SortedList()
        tops.add(hi)

    def _drop_gap(self, hi: int) -> None:
        lo = self._gap_lo.pop(hi, None)
        if lo is None:
            return                                   # an empty gap is not kept
        c = (hi - lo).bit_length()
        tops = self._classes[c]
        tops.remove(hi)
        if not tops:
            del self._classes[c]

    def insert(self, vma: VMA) -> None:
        vmas = self._vmas
        vmas.add(vma)
        i = vmas.bisect_key_left(vma.vm_start)
        prev = vmas[i - 1] if i > 0 else None
        nxt = vmas[i + 1] if i + 1 < len(vmas) else None
        if prev is not None and nxt is not None:
            self._drop_gap(nxt.vm_start)             # the gap this VMA now splits
        if prev is not None:
            self._add_gap(prev.vm_end, vma.vm_start)
        if nxt is not None:
            self._add_gap(vma.vm_end, nxt.vm_start)

    def remove(self, vma: VMA) -> None:
        vmas = self._vmas
        i = vmas.index(vma)
        prev = vmas[i - 1] if i > 0 else None
        nxt = vmas[i + 1] if i + 1 < len(vmas) else None
        vmas.remove(vma)
        if prev is not None:
            self._drop_gap(vma.vm_start)
        if nxt is not None:
            self._drop_gap(nxt.vm_start)
        if prev is not None and nxt is not None:
            self._add_gap(prev.vm_end, nxt.vm_start)

    def find(self, addr: int) -> Optional[VMA]:
        """The VMA containing addr, or None (unlike the kernel's find_vma,
        never the next one above: that is ``vma_lookup()``)."""
        i = self._vmas.bisect_key_right(addr) - 1
        if i >= 0:
            vma = self._vmas[i]            # (one lookup: each is a Python call)
            if addr < vma.vm_end:
                return vma
        return None

    def range(self, start: int, end: int) -> list[VMA]:
        """VMAs intersecting [start, end), in address order."""
        i = max(0, self._vmas.bisect_key_right(start) - 1)
        out = []
        for vma in self._vmas.islice(i):
            if vma.vm_start >= end:
                break
            if vma.vm_end > start:
                out.append(vma)
        return out

    def prev(self, vma: VMA) -> Optional[VMA]:
        i = self._vmas.index(vma)
        return self._vmas[i - 1] if i > 0 else None

    def next(self, vma: VMA) -> Optional[VMA]:
        i = self._vmas.index(vma)
        return self._vmas[i + 1] if i + 1 < len(self._vmas) else None

    def first_at_or_above(self, addr: int) -> Optional[VMA]:
        i = self._vmas.bisect_key_left(addr)
        return self._vmas[i] if i < len(self._vmas) else None

    def last_below(self, addr: int) -> Optional[VMA]:
        """The VMA ending at or below addr with the highest start."""
        i = self._vmas.bisect_key_left(addr) - 1
        return self._vmas[i] if i >= 0 else None

    def unmapped_area_topdown(self, length: int, align: int, high: int, low: int) -> Optional[int]:
        """/* mirrors unmapped_area_topdown() */: the highest aligned start
        of a free gap of ``length`` bytes below ``high`` (``align`` a power
        of two, at least a page), or None.  Only the gap below the lowest
        VMA is held to ``low``, as before.

        The gap that ``high`` cuts is tried first, then the gaps between
        VMAs below it, highest top first: a class whose every gap is at
        least ``length + align - PAGE_SIZE`` long fits for sure, so its
        highest top below ``high`` is one bisection; the one or two classes
        that may or may not fit are walked down from the top, only above
        the best sure candidate.  Last the gap below the lowest VMA."""
        mask = ~(align - 1)
        vmas = self._vmas
        i = vmas.bisect_key_left(high)               # vmas[:i] start below high
        if i == 0:                                   # nothing below high
            cand = (high - length) & mask
            return cand if cand >= low else None
        cand = (high - length) & mask                # the gap that high cuts
        if cand >= vmas[i - 1].vm_end:
            return cand
        best = -1                                    # the highest gap top that fits
        sure = length + align - PAGE_SIZE            # any gap this long fits
        maybe_from = length.bit_length()             # a smaller class never fits
        for c, tops in self._classes.items():
            if c < maybe_from:
                continue
            j = tops.bisect_left(high)               # tops below high
            if 1 << (c - 1) >= sure:
                if j and tops[j - 1] > best:
                    best = tops[j - 1]
                continue
            gap_lo = self._gap_lo
            while j:
                j -= 1
                top = tops[j]
                if top <= best:
                    break
                if (top - length) & mask >= gap_lo[top]:
                    best = top
                    break
        if best >= 0:
            return (best - length) & mask
        cand = (vmas[0].vm_start - length) & mask    # below the lowest VMA
        return cand if cand >= low else None


def _vm_start(vma: VMA) -> int:
    return vma.vm_start


def vm_flags_str(flags: int) -> str:
    f = VM(flags)
    return ("r" if f & VM.READ else "-") + ("w" if f & VM.WRITE else "-") + \
        ("x" if f & VM.EXEC else "-") + ("s" if f & VM.SHARED else "p")


# ---------------------------------------------------------------------------
# predicates (mm.h / mm/mmap.c)

def is_cow_mapping(flags: int) -> bool:
    """/* mirrors is_cow_mapping() */: private and may become writable."""
    return (int(flags) & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


def vma_is_anonymous(vma: VMA) -> bool:
    """/* mirrors vma_is_anonymous() */: no vm_ops.  Shared anonymous
    mappings are shmem files with vm_ops, so they are not anonymous."""
    return vma.vm_ops is None


def vma_is_shared_writable(vma: VMA) -> bool:
    """/* mirrors vma_is_shared_writable() */: VM_SHARED, not VM_MAYSHARE —
    a shared mapping of a read-only file has VM_MAYSHARE only."""
    return (int(vma.vm_flags) & (VM_WRITE | VM_SHARED)) == (VM_WRITE | VM_SHARED)


def vm_ops_needs_writenotify(vm_ops: Optional[VmOps]) -> bool:
    """/* mirrors vm_ops_needs_writenotify() */"""
    return vm_ops is not None and (vm_ops.page_mkwrite or vm_ops.pfn_mkwrite)


def mapping_can_writeback(inode: "Inode") -> bool:
    """/* mirrors mapping_can_writeback() */: BDI_CAP_WRITEBACK on the bdi."""
    return inode.fs.fstype.writeback


def vma_fs_can_writeback(vma: VMA) -> bool:
    """/* mirrors vma_fs_can_writeback() */"""
    if int(vma.vm_flags) & VM_PFNMAP:   # no managed pages to write back
        return False
    return vma.vm_file is not None and mapping_can_writeback(vma.vm_file)


def vma_needs_dirty_tracking(vma: VMA) -> bool:
    """/* mirrors vma_needs_dirty_tracking() */ (Linux 6.5, patch 1)."""
    if not vma_is_shared_writable(vma):
        return False
    if vm_ops_needs_writenotify(vma.vm_ops):
        return True
    return vma_fs_can_writeback(vma)


def vma_soft_dirty_enabled(vma: VMA) -> bool:
    """/* mirrors vma_soft_dirty_enabled() */: tracking is on once
    clear_refs has cleared VM_SOFTDIRTY (mmap sets it)."""
    return not (int(vma.vm_flags) & VM_SOFTDIRTY)


def vma_wants_writenotify(vma: VMA) -> bool:
    """/* mirrors vma_wants_writenotify() */: should PTEs of this VMA be
    installed read-only so that the first write faults?"""
    if not vma_is_shared_writable(vma):
        return False
    if vm_ops_needs_writenotify(vma.vm_ops):
        return True
    if vma.pgprot_customised:        # the driver's ->mmap chose the prot
        return False
    if vma_soft_dirty_enabled(vma) and not vma.is_hugetlb:
        return True
    if vma.vm_flags & VM_UFFD_WP:
        return True
    return vma_fs_can_writeback(vma)


def vma_is_secretmem(vma: VMA) -> bool:
    """/* mirrors vma_is_secretmem() */ (6.5: compares vm_ops)."""
    return vma.vm_ops is SECRETMEM_VM_OPS


def vma_is_fsdax(vma: VMA) -> bool:
    """/* mirrors vma_is_fsdax() */: a DAX file that is not device-dax."""
    return vma.vm_file is not None and vma.vm_file.fs.fstype.kind == "dax"


def vm_page_prot_base(vma: VMA) -> int:
    """/* mirrors vm_get_page_prot() */ for the bits a pygup entry has: a
    VMA with no access at all (PROT_NONE: only a FOLL_FORCE GUP faults
    pages into one) maps PAGE_NONE -- not present, PROT_NONE, so the
    owner's own loads and stores still fault -- every other one present,
    user and young."""
    base = C.PTE_USER | C.PTE_ACCESSED
    if vma.vm_flags & (VM.READ | VM.WRITE | VM.EXEC):
        return base | C.PTE_PRESENT
    return base | C.PTE_PROTNONE


def maybe_mkwrite(vma: VMA) -> int:
    """maybe_mkwrite(): the write bit only where the VMA is writable (a
    FOLL_FORCE write COWs without making the mapping writable)."""
    return C.PTE_WRITE if int(vma.vm_flags) & VM_WRITE else 0


def vma_pte_writable(vma: VMA) -> bool:
    """Does vm_page_prot carry the write bit?  Only for shared writable VMAs
    that do not want write-notify (vma_set_page_prot()); private mappings
    never do (writes COW)."""
    return vma_is_shared_writable(vma) and not vma_wants_writenotify(vma)
