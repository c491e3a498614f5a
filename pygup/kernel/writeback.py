"""Writeback, truncate and eviction (mm/page-writeback.c, mm/rmap.c,
mm/truncate.c, mm/vmscan.c), run under the machine lock.

Writeback cleans a folio the way the kernel does: ``folio_mkclean`` walks
every *shared* VMA mapping it and write-protects + cleans each PTE with a TLB
shootdown, so the next user write faults and notifies the file system.  A
write that arrives any other way — through a GUP pin, the kernel's direct
mapping — is invisible to all of this; that is the seed's bug.

``writeback_inode`` writes back a run of folios with a few C calls
(``_writeback_batch``); the folio-by-folio path below it
(``writeback_folio``, ``Kernel.writeback_batch = False``) is the reference
the batch is tested against (tests/model/test_writeback_batch.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from pygup._native import C
from pygup.flags import VM
from pygup.kernel.vma import mapping_can_writeback

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.fs import Inode


def _cpu(inode: "Inode") -> int:
    return inode.fs.kernel.current_cpu()


# what ext4 logs when it skips a dirty folio without buffers
_SKIP_WITHOUT_PRIVATE = "dirty folio without buffers at writeback: skipped, its data is lost"


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
            fs.warn(inode, start, _SKIP_WITHOUT_PRIVATE)
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


def _mkclean_runs(inode: "Inode", starts: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """/* mirrors folio_mkclean() */ for every folio in ``starts`` (sorted):
    one C call per (shared VMA, run of adjacent folios).  The C core shoots
    down once per batch of adjacent cleaned entries, not once per entry as
    the kernel does (a deliberate difference, csrc/mm/memory.c).  Returns,
    per folio, 1 if some mapping of it was cleaned."""
    core = inode.fs.kernel.core
    cpu = _cpu(inode)
    nr = 1 << inode.order
    cleaned = np.zeros(len(starts), np.uint8)
    shared = [vma for vma in list(inode.i_mmap) if vma.vm_flags & VM.SHARED]
    if not shared:
        return cleaned
    cuts = (np.flatnonzero(np.diff(starts) != nr) + 1).tolist()
    sub = np.arange(nr, dtype=np.uint64)
    for lo, hi in zip([0, *cuts], [*cuts, len(starts)]):
        run_first = int(starts[lo])
        run_end = run_first + (hi - lo) * nr
        expected = (heads[lo:hi, None] + sub).ravel()     # the page at each index
        for vma in shared:
            a = max(run_first, vma.vm_pgoff)
            b = min(run_end, vma.vm_pgoff + ((vma.vm_end - vma.vm_start) >> C.PAGE_SHIFT))
            if a >= b:
                continue
            done = core.mkclean_range(cpu, vma.vm_mm.id, vma.address_of(a),
                                      expected[a - run_first:b - run_first])
            pages = np.flatnonzero(done)
            if len(pages):
                cleaned[lo + (a - run_first + pages) // nr] = 1
    return cleaned


def _cached_folios(inode: "Inode", first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(first page, head pfn) of every cached folio that caches a page in
    [first, last), in page order."""
    cache = inode.page_cache
    nr = 1 << inode.order
    if len(cache) <= _SMALL_CACHE:
        # a few folios (the fuzzer's files): plain Python beats numpy's
        # per-call cost several times over
        keys = sorted(k for k in cache if k + nr > first and k < last)
        return (np.array(keys, np.int64),
                np.array([cache[k] for k in keys], np.uint64))
    starts = np.fromiter(cache.keys(), np.int64, len(cache))
    heads = np.fromiter(cache.values(), np.uint64, len(cache))
    order = np.argsort(starts)
    starts, heads = starts[order], heads[order]
    inside = (starts + nr > first) & (starts < last)
    return starts[inside], heads[inside]


_SMALL_CACHE = 64


def _writeback_batch(inode: "Inode", first: int, last: int) -> int:
    """writeback_folio() for every folio caching a page in [first, last),
    a run per C call: mkclean, then folio_clear_dirty_for_io() +
    folio_start_writeback() of every folio, then the file system's
    per-folio say (ext4 skips a folio without buffers), the copy of the
    pages inside EOF to disk, and folio_end_writeback().  Returns pages
    written."""
    fs = inode.fs
    core = fs.kernel.core
    nr = 1 << inode.order
    first, heads = _cached_folios(inode, first, last)
    if not len(first):
        return 0
    old = core.folios_clear_dirty_for_io(heads, _mkclean_runs(inode, first, heads))
    dirty = (old & C.F_DIRTY) != 0
    if not dirty.any():
        return 0
    wb_first, wb_heads, wb_old = first[dirty], heads[dirty], old[dirty]
    try:
        keep = np.ones(len(wb_heads), bool)
        if fs.fstype.skip_dirty_without_private:
            # ext4 since cc5095747edf: warn, leave it clean, skip it
            for k in np.flatnonzero((wb_old & C.F_PRIVATE) == 0).tolist():
                fs.warn(inode, int(wb_first[k]), _SKIP_WITHOUT_PRIVATE)
                keep[k] = False
        sub = np.arange(nr)
        pages = (wb_first[keep, None] + sub).ravel()
        pfns = (wb_heads[keep, None] + sub.astype(np.uint64)).ravel()
        inside = pages < inode.nr_pages()         # a folio's pages past EOF stay off disk
        pages, pfns = pages[inside], pfns[inside]
        inode.disk.write_many(pages, core.frames_read(pfns))
        fs.counters["pages_written"] += len(pages)
        return len(pages)
    finally:
        core.folios_flags_update(wb_heads, 0, C.F_WRITEBACK)     # folio_end_writeback()


def writeback_inode(inode: "Inode", first: int = 0, last: Optional[int] = None) -> int:
    """Write back the dirty folios caching pages [first, last).  File
    systems that cannot write back (shmem, ramfs, hugetlbfs) have nothing to
    do: their data lives in memory only."""
    if not mapping_can_writeback(inode):
        return 0
    last = inode.nr_pages() if last is None else last
    if inode.fs.kernel.writeback_batch:
        return _writeback_batch(inode, first, last)
    nr = 1 << inode.order
    return sum(writeback_folio(inode, inode.page_cache[start], start)
               for start in sorted(inode.page_cache) if start + nr > first and start < last)


def unmap_mapping_pages(inode: "Inode", first: int, last: Optional[int] = None,
                        even_cows: bool = True) -> None:
    """/* mirrors unmap_mapping_pages() */: zap every mapping of file pages
    [first, last).  even_cows (truncate): private COW copies go too;
    without it (hole punch) a private mapping loses only the page-cache
    pages it maps, its anonymous copies stay (zap_details.even_cows)."""
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
        if lo >= hi:
            continue
        if even_cows or vma.vm_flags & VM.SHARED:
            core.zap_range(cpu, vma.vm_mm.id, lo, hi)
            continue
        addrs, ptes = core.range_leaves(vma.vm_mm.id, lo, hi)
        for addr, pte in zip(addrs.tolist(), ptes.tolist()):
            if pte & C.PTE_SPECIAL or not pte & (C.PTE_PRESENT | C.PTE_PROTNONE):
                continue
            fi = core.frame_info((pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT)
            if fi.mapping & C.MAPPING_FLAGS != C.MAPPING_ANON:
                core.zap_range(cpu, vma.vm_mm.id, addr, addr + C.PAGE_SIZE)


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


def truncate_inode_pages_range(inode: "Inode", first: int, last: Optional[int] = None) -> None:
    """/* mirrors truncate_inode_pages_range() */: drop every cached folio
    wholly inside pages [first, last) from the page cache (a folio mapped
    again since the caller's unmap is unmapped first).  A folio someone
    holds — a GUP pin — leaves the cache but lives on, with its frame and
    its pin, until the holder lets go."""
    nr = 1 << inode.order
    for start in sorted(inode.page_cache):
        if start >= first and (last is None or start + nr <= last):
            unmap_mapping_pages(inode, start, start + nr, even_cows=False)
            _delete_from_page_cache(inode, start)


def truncate_inode_pages(inode: "Inode", first: int) -> None:
    """Unmap and drop every cached folio from page ``first`` on."""
    unmap_mapping_pages(inode, first)
    truncate_inode_pages_range(inode, first)


def punch_hole(inode: "Inode", first: int, last: int) -> None:
    """fallocate(PUNCH_HOLE | KEEP_SIZE) of whole pages [first, last), as
    shmem_fallocate() / ext4_punch_hole() do it: unmap the range from every
    mapping but the private COW copies (unmap_mapping_range(even_cows=0)),
    drop it from the page cache (truncate_pagecache_range()), free its
    blocks.  The size does not change."""
    if first >= last:
        return
    if mapping_can_writeback(inode):
        # ext4_punch_hole(): filemap_write_and_wait_range() first
        writeback_inode(inode, first, last)
    unmap_mapping_pages(inode, first, last, even_cows=False)
    truncate_inode_pages_range(inode, first, last)
    inode.disk.discard(first, last)


def truncate_inode(inode: "Inode", size: int) -> None:
    """truncate_setsize() + truncate_pagecache()."""
    if inode.fs.fstype.huge and size % (C.PMD_NR * C.PAGE_SIZE):
        raise ValueError("size of a hugetlbfs file must be a multiple of 2 MiB")
    old = inode.size
    inode.size = size
    if size < old:
        first = -(-size // C.PAGE_SIZE)
        truncate_inode_pages(inode, first)
        inode.disk.discard(first)


def folio_mlocked(inode: "Inode", start: int) -> bool:
    """Is the folio caching page ``start`` mapped by a VM_LOCKED VMA?  Such
    a folio is unevictable (try_to_unmap_one() stops at a VM_LOCKED VMA)."""
    core = inode.fs.kernel.core
    for vma in inode.i_mmap:
        addr = vma.address_of(start)
        if addr is not None and vma.vm_flags & VM.LOCKED:
            level, pte = core.pte_lookup(vma.vm_mm.id, addr)
            if level and ((pte & C.PTE_PFN_MASK) >> C.PTE_PFN_SHIFT) == inode.page_cache[start]:
                return True
    return False


def shrink_file_folio(inode: "Inode", start: int) -> bool:
    """shrink_folio_list() for one clean file folio: unmap it, release its
    fs-private state, free it if no one else holds it.  A pinned folio
    stays in the page cache, unmapped (Jan Kara's 2018 scenario); a dirty
    one, or one under writeback or mlocked, is kept.  True if freed."""
    core = inode.fs.kernel.core
    if not mapping_can_writeback(inode):
        return False           # shmem/ramfs/hugetlbfs: memory is the only copy (no swap)
    head = inode.page_cache[start]
    if core.frame_info(head).flags & (C.F_DIRTY | C.F_WRITEBACK) or folio_mlocked(inode, start):
        return False
    try_to_unmap(inode, head, start)
    if core.frame_info(head).flags & C.F_DIRTY:
        return False           # a dirty PTE moved to the folio: write it back first
    core.flags_update(head, 0, C.F_PRIVATE)
    if core.frame_info(head).refcount == 1:
        _delete_from_page_cache(inode, start)
        return True
    return False


def evict_inode(inode: "Inode") -> int:
    """Reclaim (shrink_folio_list) over one file's clean folios: unmap them,
    release fs-private state (try_to_release_page) and free those no one
    else holds.  A folio with extra references — a GUP pin — stays in the
    page cache, unmapped and stripped of its buffers (Jan Kara's 2018
    scenario).  Returns folios freed."""
    return sum(shrink_file_folio(inode, start) for start in sorted(inode.page_cache))
