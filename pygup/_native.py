"""The only module that touches the compiled core (``pygup._core``).

``Core`` owns one ``pg_machine`` and wraps every C entry point the model
uses: arguments go in as Python ints, results come back as ints, tuples or
numpy arrays, failures as ``GupError`` (negative errno) and invariant
violations recorded by C as ``InvariantError``.  Nothing above this module
sees cdata.
"""
from __future__ import annotations

import threading
from typing import NamedTuple, Optional

import numpy as np

from pygup._core import ffi, lib
from pygup.errors import GupError, InvariantError

__all__ = ["Core", "C", "FrameInfo", "ffi", "lib"]


class _Constants:
    """Every ``#define PG_*`` of the cdef headers (csrc/pygup.h, csrc/tools/), read from the compiled module
    (``C.PAGE_SIZE``, ``C.F_DIRTY``, ...): Python never restates them."""

    def __init__(self) -> None:
        for name in dir(lib):
            if name.startswith("PG_") and isinstance(getattr(lib, name), int):
                setattr(self, name[3:], getattr(lib, name))


C = _Constants()

# the cdata type of a pfn array, resolved once: ffi.from_buffer(_U64_ARRAY, a)
# costs a small part of ffi.from_buffer("uint64_t[]", a), which parses the name
# each time (and of ffi.cast("uint64_t *", ffi.from_buffer(a)))
_U64_ARRAY = ffi.typeof("uint64_t[]")
_U64 = np.dtype(np.uint64)
# the counters of struct pg_stats, in order (read once: the fuzz harness
# asks for them every step)
_STATS_FIELDS = tuple(name for name, _ in ffi.typeof("struct pg_stats").fields)
# pg_audit_refcounts()'s failed checks, by name
_AUDIT_KINDS = {lib.PG_AUDIT_REFCOUNT: "refcount", lib.PG_AUDIT_NEGATIVE: "negative",
                lib.PG_AUDIT_MAPCOUNT: "mapcount", lib.PG_AUDIT_LEAF_PFN: "leaf-pfn"}


class FrameInfo(NamedTuple):
    """One frame's struct page, as pg_frame_info() reads it: a named tuple,
    not a frozen dataclass (four times cheaper to build, and the harness
    builds several per operation)."""
    pfn: int
    head: int
    index: int
    mapping: int
    content: int
    refcount: int
    pincount: int
    mapcount: int
    flags: int
    order: int
    zone: int


def _out_len(nr: int) -> int:
    """Buffer length for a per-page output array; out-of-range counts get an
    empty buffer and the C core's own -EINVAL."""
    return nr if 0 <= nr <= (lib.PG_TASK_SIZE_MAX >> lib.PG_PAGE_SHIFT) + 1 else 0


def pfn_array(buf, n: int) -> np.ndarray:
    """The first ``n`` pfns of a uint64_t[] cdata (``Core.gup_fast_call``'s)
    as a numpy array over the same memory, which it keeps alive."""
    if not 0 <= n <= len(buf):
        raise ValueError(f"pfn_array: n must be in 0..{len(buf)}, got {n}")
    return np.frombuffer(ffi.buffer(buf, n * 8), _U64)


# pages a small call's batch follow writes into its CPU's reusable buffer
# (Core.follow_range_list); also the most pages a slow-path call takes in
# one C call with its checks folded (gup._gup_slow_call)
SMALL_CALL_PAGES = 64
# the most pages one C call of a walk takes: one IRQs-off section of
# GUP-fast (gup.py batches a larger call), one batch follow of the slow path
GUP_BATCH = 1 << 16

_RACE_REGISTRY: Optional[list[tuple[str, str, int]]] = None


def _race_registry() -> list[tuple[str, str, int]]:
    """(name, reason, flags) of every registered point, read from C once."""
    global _RACE_REGISTRY
    if _RACE_REGISTRY is None:
        _RACE_REGISTRY = [
            (ffi.string(lib.pg_race_window_name(i)).decode(),
             ffi.string(lib.pg_race_window_reason(i)).decode(), lib.pg_race_window_flags(i))
            for i in range(lib.pg_race_window_count())]
    return _RACE_REGISTRY


def _race_window_names() -> frozenset[str]:
    return frozenset(n for n, _, _ in _race_registry())


def _u64(v, name: str, limit: int = 2**64) -> int:
    """v as a C unsigned argument: an int in [0, limit), else ValueError /
    TypeError naming the argument (cffi would raise OverflowError)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    v = int(v)
    if not 0 <= v < limit:
        raise ValueError(f"{name} out of range: {v:#x}")
    return v


def _u32(v, name: str) -> int:
    return _u64(v, name, 2**32)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise GupError(-rc, what)
    return rc


class Core:
    """One emulated machine's C state."""

    def __init__(self, nr_frames: int, nr_movable: int, nr_cpus: int, table_free_rcu: bool):
        mode = lib.PG_TABLE_FREE_RCU if table_free_rcu else lib.PG_TABLE_FREE_IPI
        ptr = lib.pg_machine_new(nr_frames, nr_movable, nr_cpus, mode)
        if ptr == ffi.NULL:
            raise MemoryError("the C core could not create the machine")
        self._m = ffi.gc(ptr, lib.pg_machine_free)
        self.nr_frames = nr_frames
        self.nr_movable = nr_movable
        self.nr_cpus = nr_cpus
        self._u64 = threading.local()
        # a scheduler session has begun and not ended (sched_begin /
        # sched_end): no thread can be one of its CPUs otherwise
        self.sched_session = False
        # one output buffer per CPU for small calls: a CPU belongs to one
        # thread at a time and no C entry calls back into Python, so a
        # buffer is never written by two calls at once
        self._small = [np.empty(SMALL_CALL_PAGES, np.uint64) for _ in range(nr_cpus)]
        self._small_ptr = [ffi.from_buffer(_U64_ARRAY, b) for b in self._small]

    # -- helpers --------------------------------------------------------------
    def _out(self, kind: str = "uint64_t *"):
        return ffi.new(kind)

    def violations(self) -> list[str]:
        """Pop every recorded violation message."""
        out = []
        buf = ffi.new("char[]", 512)
        while lib.pg_violation_count(self._m) > 0:
            if lib.pg_violation_pop(self._m, buf, 512) <= 0:
                break
            out.append(ffi.string(buf).decode(errors="replace"))
        return out

    def raise_violations(self) -> None:
        if lib.pg_violation_count(self._m) > 0:
            msgs = self.violations()
            if msgs:
                raise InvariantError("; ".join(msgs))

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct pg_stats *")
        lib.pg_stats_get(self._m, st)
        out = {}
        for name in _STATS_FIELDS:
            v = getattr(st, name)
            if name == "nr_free":
                out["nr_free_normal"] = v[0]
                out["nr_free_movable"] = v[1]
            else:
                out[name] = v
        return out

    def set_mutants(self, bits: int) -> None:
        _check(lib.pg_set_mutants(self._m, bits), "set_mutants")

    # -- failure injection (csrc/lib/fault_inject.c) ---------------------------
    FAIL_KINDS = {"folio": lib.PG_FAIL_FOLIO, "table": lib.PG_FAIL_TABLE,
                  "as": lib.PG_FAIL_AS}

    def _fail_kind(self, kind: str) -> int:
        if kind not in self.FAIL_KINDS:
            raise ValueError(f"fail_nth: unknown kind {kind!r} "
                             f"(known: {', '.join(self.FAIL_KINDS)})")
        return self.FAIL_KINDS[kind]

    def fail_nth(self, kind: str, nth: int) -> None:
        """The nth allocation of ``kind`` ("folio", "table", "as") from now
        on fails once, as a real allocation failure does (-ENOMEM); nth 0
        turns the knob off."""
        k = self._fail_kind(kind)
        if isinstance(nth, bool) or not isinstance(nth, int):
            raise TypeError(f"fail_nth: nth must be an int, got {nth!r}")
        if not 0 <= nth < 2**63:
            raise ValueError(f"fail_nth: nth must be >= 0, got {nth}")
        _check(lib.pg_fail_nth(self._m, k, nth), "fail_nth")

    def fail_pending(self, kind: str) -> int:
        """What is left of kind's countdown (0: off, or it fired)."""
        return _check(lib.pg_fail_pending(self._m, self._fail_kind(kind)), "fail_pending")

    def fail_fired(self, kind: Optional[str] = None) -> int:
        """How many injected failures fired (of one kind, or all)."""
        kinds = [kind] if kind is not None else list(self.FAIL_KINDS)
        return sum(_check(lib.pg_fail_fired(self._m, self._fail_kind(k)), "fail_fired")
                   for k in kinds)

    # -- frames ---------------------------------------------------------------
    def folio_alloc(self, order: int, zone: int) -> int:
        return _check(lib.pg_folio_alloc(self._m, order, zone), "folio_alloc")

    def folio_alloc_or_errno(self, order: int, zone: int) -> int:
        """pg_folio_alloc(): the pfn, or a negative errno without raising
        (the zone fallback asks the next zone on -ENOMEM)."""
        return lib.pg_folio_alloc(self._m, order, zone)

    def folio_get(self, pfn: int, refs: int = 1) -> int:
        return _check(lib.pg_folio_get(self._m, pfn, refs), f"folio_get({pfn:#x})")

    def folio_put(self, pfn: int, refs: int = 1) -> int:
        rc = lib.pg_folio_put(self._m, pfn, refs)
        self.raise_violations()
        return _check(rc, f"folio_put({pfn:#x})")

    def frame_info(self, pfn: int) -> FrameInfo:
        fi = ffi.new("struct pg_frame_info *")
        _check(lib.pg_frame_info(self._m, pfn, fi), f"pfn {pfn:#x}")
        return FrameInfo(fi.pfn, fi.head, fi.index, fi.mapping, fi.content, fi.refcount,
                         fi.pincount, fi.mapcount, fi.flags, fi.order, fi.zone)

    def flags_update(self, pfn: int, set_: int = 0, clear: int = 0) -> int:
        """Set/clear folio flags; returns the old flags."""
        return _check(lib.pg_folio_flags_update(self._m, pfn, set_, clear), "flags")

    def set_mapping(self, pfn: int, mapping: int, index: int) -> None:
        _check(lib.pg_folio_set_mapping(self._m, pfn, mapping, index), "set_mapping")

    def mapcount_add(self, pfn: int, delta: int) -> int:
        return lib.pg_frame_mapcount_add(self._m, pfn, delta)

    def frame_read(self, pfn: int) -> int:
        out = self._out()
        _check(lib.pg_frame_read(self._m, pfn, out), f"read pfn {pfn:#x}")
        return out[0]

    def frame_write(self, pfn: int, value: int) -> None:
        _check(lib.pg_frame_write(self._m, pfn, value), f"write pfn {pfn:#x}")

    def folio_copy(self, dst: int, src: int) -> None:
        _check(lib.pg_folio_copy(self._m, dst, src), "folio_copy")

    # -- writeback, a run of folios per call -----------------------------------
    def folios_clear_dirty_for_io(self, heads: np.ndarray,
                                  pte_dirty: Optional[np.ndarray] = None) -> np.ndarray:
        """pg_folios_clear_dirty_for_io(): each folio's flags before the
        clear (the dirty ones are now under writeback)."""
        arr, ptr = self._pfn_array(heads)
        old = np.empty(len(arr), np.uint32)
        dirty = ffi.NULL
        if pte_dirty is not None:
            mask = np.ascontiguousarray(pte_dirty, dtype=np.uint8)
            if len(mask) != len(arr):
                raise ValueError(f"pte_dirty: {len(mask)} entries for {len(arr)} folios")
            dirty = ffi.cast("uint8_t *", ffi.from_buffer(mask))
        _check(lib.pg_folios_clear_dirty_for_io(
            self._m, ptr, len(arr), dirty, ffi.cast("uint32_t *", ffi.from_buffer(old))),
            "folios_clear_dirty_for_io")
        return old

    def folios_flags_update(self, heads: np.ndarray, set_: int = 0, clear: int = 0) -> None:
        arr, ptr = self._pfn_array(heads)
        _check(lib.pg_folios_flags_update(self._m, ptr, len(arr), set_, clear),
               "folios_flags_update")

    def frames_read(self, pfns: np.ndarray) -> np.ndarray:
        """The content word of each frame."""
        arr, ptr = self._pfn_array(pfns)
        out = np.empty(len(arr), np.uint64)
        _check(lib.pg_frames_read(self._m, ptr, len(arr), ffi.cast("uint64_t *", ffi.from_buffer(out))),
               "frames_read")
        return out

    def frames_mapcount(self, pfn: int, n: int) -> np.ndarray:
        """The mapcount of each of the n frames from pfn on (one call for a
        THP's 512 pages, not 512 frame_info calls)."""
        pfn = _u64(pfn, "pfn")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.nr_frames - pfn:
            raise ValueError(f"n must be an int in 0..{max(self.nr_frames - pfn, 0)} (the "
                             f"frames from {pfn:#x} on), got {n!r}")
        out = np.empty(n, np.int32)
        _check(lib.pg_frames_mapcount(self._m, pfn, n, ffi.cast("int32_t *", ffi.from_buffer(out))),
               f"frames_mapcount({pfn:#x}, {n})")
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        n = self.nr_frames
        arrays = {
            "refcount": np.zeros(n, np.int32), "mapcount": np.zeros(n, np.int32),
            "flags": np.zeros(n, np.uint32), "mapping": np.zeros(n, np.uint64),
            "content": np.zeros(n, np.uint64),
        }
        ptr = {k: ffi.from_buffer(v) for k, v in arrays.items()}
        _check(lib.pg_frames_snapshot(
            self._m, ffi.cast("int32_t *", ptr["refcount"]), ffi.cast("int32_t *", ptr["mapcount"]),
            ffi.cast("uint32_t *", ptr["flags"]), ffi.cast("uint64_t *", ptr["mapping"]),
            ffi.cast("uint64_t *", ptr["content"])), "snapshot")
        return arrays

    # -- the per-page rules (one implementation each, in C) -----------------
    def _rule(self, rc: int, what: str) -> bool:
        return _check(rc, what) == 1

    def page_anon_exclusive(self, pfn: int) -> bool:
        """PageAnonExclusive() of the page (hugetlb: of its head page)."""
        return self._rule(lib.pg_page_anon_exclusive(self._m, _u64(pfn, "pfn")),
                          f"page_anon_exclusive({pfn:#x})")

    def folio_is_longterm_pinnable(self, pfn: int) -> bool:
        return self._rule(lib.pg_folio_is_longterm_pinnable(self._m, _u64(pfn, "pfn")),
                          f"folio_is_longterm_pinnable({pfn:#x})")

    def folio_maybe_dma_pinned(self, pfn: int) -> bool:
        return self._rule(lib.pg_folio_maybe_dma_pinned(self._m, _u64(pfn, "pfn")),
                          f"folio_maybe_dma_pinned({pfn:#x})")

    def gup_must_unshare(self, pfn: int, gup_flags: int, vma_is_cow: Optional[bool]) -> bool:
        """gup_must_unshare() for a read-only entry mapping pfn; vma_is_cow
        is the VMA's is_cow_mapping(), None for GUP-fast (no VMA).  The
        no_unshare / fast_no_unshare switches apply (C bits)."""
        cow = -1 if vma_is_cow is None else int(bool(vma_is_cow))
        return self._rule(lib.pg_gup_must_unshare(self._m, _u64(pfn, "pfn"),
                                                  _u32(gup_flags, "gup_flags"), cow),
                          f"gup_must_unshare({pfn:#x})")

    def can_follow_write_pte(self, pte: int, pfn: Optional[int], gup_flags: int,
                             vm_flags: int) -> bool:
        """can_follow_write_pte(): pfn None when the entry maps no normal
        page (special); the force_write_any_page switch applies (C bit)."""
        p = -1 if pfn is None else _u64(pfn, "pfn", limit=2**63)
        return self._rule(lib.pg_can_follow_write_pte(self._m, _u64(pte, "pte"), p,
                                                      _u32(gup_flags, "gup_flags"),
                                                      _u64(vm_flags, "vm_flags")),
                          f"can_follow_write_pte({pte:#x})")

    # -- address_space records ----------------------------------------------
    def as_new(self, kind: int) -> int:
        return _check(lib.pg_as_new(self._m, kind), "as_new")

    def as_release(self, as_id: int) -> None:
        _check(lib.pg_as_release(self._m, as_id), "as_release")

    def as_kind(self, as_id: int) -> int:
        return lib.pg_as_kind(self._m, as_id)

    # -- mm and page tables ----------------------------------------------------
    def mm_new(self) -> int:
        return _check(lib.pg_mm_new(self._m), "mm_new")

    def mm_destroy(self, cpu: int, mm: int) -> None:
        rc = lib.pg_mm_destroy(self._m, cpu, mm)
        self.raise_violations()
        _check(rc, "mm_destroy")

    def pte_set(self, mm: int, addr: int, pte: int, level: int) -> None:
        _check(lib.pg_pte_set(self._m, mm, addr, pte, level), f"pte_set {addr:#x}")

    def pte_lookup(self, mm: int, addr: int) -> tuple[int, int]:
        """(level, entry): level 0 when nothing is mapped."""
        out = self._out()
        level = lib.pg_pte_lookup(self._m, mm, addr, out)
        self.raise_violations()
        return _check(level, f"pte_lookup {addr:#x}"), out[0]

    def pte_modify(self, mm: int, addr: int, clear: int, set_: int,
                   expect_pfn: int = -1) -> tuple[int, int]:
        """(level, old entry); level 0 if nothing (matching) was there."""
        out = self._out()
        rc = lib.pg_pte_modify(self._m, mm, addr, expect_pfn, clear, set_, out)
        if rc == -lib.PG_ENOENT:
            return 0, 0
        return _check(rc, f"pte_modify {addr:#x}"), out[0]

    def pte_clear(self, mm: int, addr: int) -> int:
        out = self._out()
        rc = lib.pg_pte_clear(self._m, mm, addr, out)
        if rc == -lib.PG_ENOENT:
            return 0
        _check(rc, f"pte_clear {addr:#x}")
        return out[0]

    def pte_mkclean(self, cpu: int, mm: int, addr: int, pfn: int) -> tuple[bool, bool]:
        dirty = ffi.new("int *")
        rc = _check(lib.pg_pte_mkclean(self._m, cpu, mm, addr, pfn, dirty), "mkclean")
        return bool(rc), bool(dirty[0])

    def mkclean_range(self, cpu: int, mm: int, start: int, pfns: np.ndarray) -> np.ndarray:
        """pg_mkclean_range(): folio_mkclean over the pages from ``start``
        on, pfns[i] the page expected at page i (0: none).  Returns the
        cleaned mask (one byte per page)."""
        arr, ptr = self._pfn_array(pfns)
        cleaned = np.empty(len(arr), np.uint8)
        rc = lib.pg_mkclean_range(self._m, cpu, mm, start, ptr, len(arr),
                                  ffi.cast("uint8_t *", ffi.from_buffer(cleaned)))
        self.raise_violations()
        _check(rc, "mkclean_range")
        return cleaned

    def zap_range(self, cpu: int, mm: int, start: int, end: int) -> int:
        rc = lib.pg_zap_range(self._m, cpu, mm, start, end)
        self.raise_violations()
        return _check(rc, f"zap {start:#x}-{end:#x}")

    def move_range(self, cpu: int, mm: int, old_addr: int, new_addr: int, length: int) -> int:
        """pg_move_range(): mremap's move_page_tables; bytes moved from
        old_addr on (``length`` unless a table allocation cut it short)."""
        for name, v in (("old_addr", old_addr), ("new_addr", new_addr), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise ValueError(f"{name} must be a 64-bit unsigned int, got {v!r}")
        rc = lib.pg_move_range(self._m, cpu, mm, old_addr, new_addr, length)
        self.raise_violations()
        return _check(rc, f"move {old_addr:#x} -> {new_addr:#x} ({length:#x})")

    def free_pgtables(self, cpu: int, mm: int, start: int, end: int) -> int:
        return _check(lib.pg_free_pgtables(self._m, cpu, mm, start, end), "free_pgtables")

    def copy_range(self, cpu: int, src: int, dst: int, start: int, end: int, cow: bool,
                   copy_pinned: bool = False, child_mapping: int = 0) -> int:
        rc = lib.pg_copy_range(self._m, cpu, src, dst, start, end, int(cow), int(copy_pinned),
                               child_mapping)
        self.raise_violations()
        return _check(rc, "copy_range")

    def change_protection(self, cpu: int, mm: int, start: int, end: int,
                          clear: int, set_: int) -> int:
        return _check(lib.pg_change_protection(self._m, cpu, mm, start, end, clear, set_),
                      "change_protection")

    def range_leaves(self, mm: int, start: int, end: int,
                     cap: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(address, entry) of every present or PROT_NONE leaf in [start,
        end), one per 4 KiB page; at most ``cap`` of them (default: the
        range's page count)."""
        n = max(0, (end - start) >> lib.PG_PAGE_SHIFT)
        if cap is not None:
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ValueError(f"cap must be an int >= 0, got {cap!r}")
            n = min(n, cap)
        addrs = np.zeros(n, np.uint64)
        ptes = np.zeros(n, np.uint64)
        got = _check(lib.pg_range_leaves(
            self._m, mm, start, end, ffi.cast("uint64_t *", ffi.from_buffer(addrs)),
            ffi.cast("uint64_t *", ffi.from_buffer(ptes)), n), "range_leaves")
        return addrs[:got], ptes[:got]

    _audit_scratch: Optional[np.ndarray] = None     # audit_refcounts' work space
    _audit_lock = threading.Lock()    # guards the work space (audits are rare: one lock)

    # kinds of owner pg_audit_refcounts() counts (besides page-table leaves)
    AUDIT_REF, AUDIT_HOLD_GET, AUDIT_HOLD_PIN = (lib.PG_AUDIT_REF, lib.PG_AUDIT_HOLD_GET,
                                                 lib.PG_AUDIT_HOLD_PIN)

    def audit_tlbs(self, max_reports: int = 8) -> tuple[int, list[dict]]:
        """pg_audit_tlbs(): how many cached translations the page tables no
        longer give, and the first ``max_reports`` of them as {cpu, mm,
        addr, pfn, leaf, writable, dirty}; nothing changes.  The caller
        holds the machine lock (no table changes meanwhile)."""
        if isinstance(max_reports, bool) or not isinstance(max_reports, int) \
                or not 0 <= max_reports <= 1024:
            raise ValueError(f"max_reports must be an int in 0..1024, got {max_reports!r}")
        out = ffi.new("struct pg_tlb_report[]", max(max_reports, 1))
        n = _check(lib.pg_audit_tlbs(self._m, out, max_reports), "audit_tlbs")
        return n, [{"cpu": r.cpu, "mm": r.mm, "addr": r.addr, "pfn": r.pfn, "leaf": r.leaf,
                    "writable": bool(r.writable), "dirty": bool(r.dirty)}
                   for r in out[0:min(n, max_reports)]]

    def audit_refcounts(self, mms, pfns, kinds) -> tuple[list[int], Optional[dict], int]:
        """pg_audit_refcounts(): the reference-count audit over the page
        tables of the address spaces ``mms`` and the owners Python records,
        ``pfns[i]`` of kind ``kinds[i]`` (AUDIT_REF: one reference on that
        frame; AUDIT_HOLD_GET / AUDIT_HOLD_PIN: a GUP hold of the page).
        Returns (PTE-sized pages of each mm's leaves, the first failed
        check as {kind, pfn, actual, expected, differ} or None, the pages
        of the AUDIT_HOLD_PIN entries that are not the zero page); nothing
        changes.  ValueError for mismatched or out-of-range arguments (the
        core checks the frames and kinds before any work), GupError EINVAL
        for a stale mm id."""
        mm_arr = np.ascontiguousarray(mms, dtype=np.uint64)
        pfn_arr = np.ascontiguousarray(pfns, dtype=np.uint64)
        kind_arr = np.ascontiguousarray(kinds, dtype=np.uint8)
        if mm_arr.ndim != 1 or pfn_arr.ndim != 1 or kind_arr.ndim != 1:
            raise ValueError("audit_refcounts: mms, pfns and kinds must be flat sequences")
        if len(pfn_arr) != len(kind_arr):
            raise ValueError(f"audit_refcounts: {len(pfn_arr)} pfns but {len(kind_arr)} kinds")
        leaves = np.zeros(len(mm_arr), np.int64)
        out = ffi.new("struct pg_audit_report *")
        with self._audit_lock:           # one work space per Core, reused
            if self._audit_scratch is None:
                # zeroed once: each call leaves it zeroed (pg_audit_refcounts)
                self._audit_scratch = np.zeros(2 * self.nr_frames, np.int64)
            scratch = self._audit_scratch
            rc = lib.pg_audit_refcounts(
                self._m, ffi.from_buffer(_U64_ARRAY, mm_arr), len(mm_arr),
                ffi.cast("int64_t *", ffi.from_buffer(leaves)),
                ffi.from_buffer(_U64_ARRAY, pfn_arr), ffi.cast("uint8_t *", ffi.from_buffer(kind_arr)),
                len(pfn_arr), ffi.cast("int64_t *", ffi.from_buffer(scratch)), len(scratch), out)
        if rc < 0:
            # the core checked every argument before any work; say which
            if len(pfn_arr) and int(pfn_arr.max()) >= self.nr_frames:
                raise ValueError(f"audit_refcounts: pfn {int(pfn_arr.max()):#x} past the last "
                                 f"frame ({self.nr_frames - 1:#x})")
            if len(kind_arr) and int(kind_arr.max()) > lib.PG_AUDIT_HOLD_PIN:
                raise ValueError(f"audit_refcounts: unknown owner kind {int(kind_arr.max())}")
            _check(rc, "audit_refcounts")
        report = None
        if out.kind != lib.PG_AUDIT_OK:
            report = {"kind": _AUDIT_KINDS[out.kind], "pfn": out.pfn, "actual": out.actual,
                      "expected": out.expected, "differ": out.differ}
        return leaves.tolist(), report, out.pinned

    def audit_frames(self, pfns) -> np.ndarray:
        """pg_audit_frames(): frame_info()'s head, flags, mapping and order
        of every pfn in ``pfns`` in one call: a (4, len(pfns)) uint64 array
        whose rows are those fields, in the order given (``heads, flags,
        mappings, orders = core.audit_frames(pfns)``).  ValueError for a
        non-flat argument or a pfn past the last frame (the core's check,
        made before it writes anything)."""
        try:
            arr = np.ascontiguousarray(pfns, dtype=np.uint64)
        except (OverflowError, TypeError, ValueError):
            raise ValueError(f"audit_frames: pfns must be ints >= 0, got {pfns!r}") from None
        if arr.ndim != 1:
            raise ValueError("audit_frames: pfns must be a flat sequence")
        out = np.empty((4, len(arr)), np.uint64)
        if len(arr) and lib.pg_audit_frames(self._m, ffi.from_buffer(_U64_ARRAY, arr), len(arr),
                                            ffi.from_buffer(_U64_ARRAY, out)) < 0:
            raise ValueError(f"audit_frames: a pfn past the last frame ({self.nr_frames - 1:#x})"
                             f" in {arr.tolist()[:8]}")
        return out

    _ANON_LEAVES_ROOM = 256    # addresses audit_anon_leaves makes room for at first
    _anon_leaves_buf = None    # its address buffer, under _audit_lock

    def audit_anon_leaves(self, mm: int, ranges) -> list[list[int]]:
        """pg_audit_anon_leaves(): for each (start, end) of ``ranges`` in
        mm, the addresses of its pages whose leaf (as range_leaves() lists
        them), not special, maps a folio with an anonymous head -- a
        private file page copied on write -- in address order; one walk,
        nothing changes.  ValueError for ranges that are not (start, end)
        pairs; the core checks each range and the mm (GupError EINVAL) and
        answers EFAULT for a leaf past the last frame."""
        flat = []
        for r in ranges:
            if not isinstance(r, (tuple, list)) or len(r) != 2:
                raise ValueError(f"audit_anon_leaves: ranges must be (start, end) pairs, got {r!r}")
            flat += r
        if not flat:
            return []
        nr = len(flat) // 2
        try:
            c_ranges = ffi.new("uint64_t[]", flat)
        except (OverflowError, TypeError):
            raise ValueError(f"audit_anon_leaves: start and end must be ints >= 0, got "
                             f"{ranges!r}") from None
        mm = _u64(mm, "mm")
        counts = ffi.new("int64_t[]", nr)
        with self._audit_lock:           # the address buffer, reused (grown when short)
            while True:
                addrs = self._anon_leaves_buf
                if addrs is None:
                    addrs = self._anon_leaves_buf = ffi.new("uint64_t[]", self._ANON_LEAVES_ROOM)
                n = _check(lib.pg_audit_anon_leaves(self._m, mm, c_ranges, nr, addrs, len(addrs),
                                                    counts), "audit_anon_leaves")
                if n <= len(addrs):
                    break
                # counted past the room: again, with room for all
                self._anon_leaves_buf = ffi.new("uint64_t[]", n)
            out, at = [], 0
            for c in ffi.unpack(counts, nr):
                out.append(ffi.unpack(addrs + at, c) if c else [])
                at += c
        return out

    # the counters pg_audit_counter() reads, by name
    AUDIT_COUNTERS = {"nr_free_normal": lib.PG_AUDIT_NR_FREE_NORMAL,
                      "nr_free_movable": lib.PG_AUDIT_NR_FREE_MOVABLE,
                      "pins_alive": lib.PG_AUDIT_PINS_ALIVE}

    def audit_counter(self, name: str) -> int:
        """pg_audit_counter(): one of AUDIT_COUNTERS without the rest of
        stats() ("pins_alive": pins_acquired - pins_released, which may be
        negative).  ValueError for an unknown name."""
        which = self.AUDIT_COUNTERS.get(name) if isinstance(name, str) else None
        if which is None:
            raise ValueError(f"audit_counter: unknown counter {name!r}; known: "
                             f"{', '.join(self.AUDIT_COUNTERS)}")
        out = ffi.new("int64_t *")
        _check(lib.pg_audit_counter(self._m, which, out), "audit_counter")
        return out[0]

    # -- transparent huge pages ------------------------------------------------
    def split_huge_pmd(self, cpu: int, mm: int, addr: int) -> bool:
        """__split_huge_pmd(): True if a THP's PMD leaf at addr became a PTE
        table, False if no PMD leaf was there."""
        rc = lib.pg_split_huge_pmd(self._m, cpu, mm, addr)
        self.raise_violations()
        return _check(rc, f"split_huge_pmd {addr:#x}") == 1

    def split_folio(self, cpu: int, pfn: int) -> int:
        """split_folio(): 0, or -EBUSY (pinned, extra references)."""
        rc = lib.pg_split_folio(self._m, cpu, pfn)
        self.raise_violations()
        if rc == -lib.PG_EBUSY:
            return rc
        return _check(rc, f"split_folio {pfn:#x}")

    def collapse_pmd(self, cpu: int, mm: int, addr: int, new_pfn: int, pmd_bits: int) -> int:
        """collapse_huge_page(): 0 or a negative errno (-EINVAL: cannot
        collapse; -EAGAIN: a page holds references no mapping explains)."""
        rc = lib.pg_collapse_pmd(self._m, cpu, mm, addr, new_pfn, pmd_bits)
        self.raise_violations()
        return rc

    # -- GUP reference counting ------------------------------------------------
    def try_grab_page(self, pfn: int, pin: bool) -> int:
        """0, or a negative errno (the caller stops, as the kernel does)."""
        return lib.pg_try_grab_page(self._m, pfn, int(bool(pin)))

    def gup_put(self, pfn: int, refs: int, pin: bool) -> None:
        rc = lib.pg_gup_put(self._m, pfn, refs, int(bool(pin)))
        self.raise_violations()
        _check(rc, "gup_put")

    def _pfn_array(self, pfns: np.ndarray):
        arr = np.ascontiguousarray(pfns, dtype=np.uint64)
        return arr, ffi.from_buffer(_U64_ARRAY, arr)

    def gup_can_put(self, pfns: np.ndarray, pin: bool) -> bool:
        arr, ptr = self._pfn_array(pfns)
        return _check(lib.pg_gup_can_put(self._m, ptr, len(arr), int(bool(pin))), "gup_can_put") == 1

    def gup_put_pages(self, pfns: np.ndarray, pin: bool) -> None:
        arr, ptr = self._pfn_array(pfns)
        rc = lib.pg_gup_put_pages(self._m, ptr, len(arr), int(bool(pin)))
        self.raise_violations()
        _check(rc, "unpin_user_pages")

    def gup_put_pages_or_errno(self, pfns: np.ndarray, pin: bool) -> int:
        """pg_gup_put_pages(), which checks every page first (nothing is put
        when one holds no pin / reference): 0 or a negative errno, -EINVAL
        for pages that hold nothing to put."""
        arr, ptr = self._pfn_array(pfns)
        rc = lib.pg_gup_put_pages(self._m, ptr, len(arr), int(bool(pin)))
        self.raise_violations()
        return rc

    def _call_violation(self, what: str) -> None:
        """A pg_*_call entry answered -PG_CALL_VIOLATION: raise what C
        recorded (popped by another thread meanwhile: say so)."""
        self.raise_violations()
        raise InvariantError(f"{what}: the C core recorded a violation (reported elsewhere)")

    def gup_put_call(self, cpu: int, pfns: Optional[np.ndarray], pin: bool, buf=None,
                     n: Optional[int] = None) -> Optional[int]:
        """pg_gup_put_call(), with the machine lock held by the caller: 0 or
        a negative errno as ``gup_put_pages_or_errno``, or None when the C
        core declined (a scheduler session, IRQs off: nothing was done).
        ``pfns``: a contiguous uint64 array (C reads no further than its
        buffer, whatever it holds, and checks each pfn); or ``buf``, a
        uint64_t[] cdata (``gup_fast_call``'s), and ``n``, how many of its
        entries to put (all when None; never more than it holds)."""
        if buf is None:
            buf = ffi.from_buffer(_U64_ARRAY, pfns)
            n = len(buf)
        elif n is None:
            n = len(buf)
        elif not 0 <= n <= len(buf):
            raise ValueError(f"gup_put_call: n must be in 0..{len(buf)}, got {n}")
        rc = lib.pg_gup_put_call(self._m, cpu, buf, n, pin)
        if rc < 0:
            if rc == -lib.PG_CALL_DECLINED:
                return None
            if rc == -lib.PG_CALL_VIOLATION:
                self._call_violation("unpin_user_pages" if pin else "put_page")
        return rc

    def first_unpinnable(self, cpu: int, pfns: list[int]) -> int:
        """pg_first_unpinnable(): the index of the first pfn whose folio is
        not long-term pinnable, len(pfns) when none, -1 when a pfn is bad
        or free (``folio_is_longterm_pinnable`` says which).  A short list
        goes through the CPU's reusable buffer (the caller holds the
        machine lock or is that CPU's thread)."""
        n = len(pfns)
        if 0 < n <= SMALL_CALL_PAGES and 0 <= cpu < self.nr_cpus:
            buf = self._small_ptr[cpu]
            buf[0:n] = pfns
        else:
            buf = ffi.from_buffer(_U64_ARRAY, np.asarray(pfns, np.uint64))
        rc = lib.pg_first_unpinnable(self._m, buf, n)
        return rc if rc >= 0 else -1

    def gup_fast_call(self, cpu: int, mm: int, start: int, nr: int, gup_flags: int,
                      policy_bits: int):
        """pg_gup_fast_call() for up to GUP_BATCH pages: (how many
        were taken, a new uint64_t[nr] cdata holding their pfns first: the
        call's one allocation; ``pfn_array`` reads it), or None when the C
        core declined (IRQs off without FOLL_FAST_ONLY: nothing was done)."""
        if not 0 <= nr <= GUP_BATCH:
            raise ValueError(f"gup_fast_call: nr must be in 0..{GUP_BATCH}, got {nr}")
        buf = ffi.new(_U64_ARRAY, nr)
        got = lib.pg_gup_fast_call(self._m, cpu, mm, start, nr, gup_flags, policy_bits, buf)
        if got >= 0:
            return got, buf
        if got == -lib.PG_CALL_DECLINED:
            return None
        if got == -lib.PG_CALL_VIOLATION:
            self._call_violation("gup_fast")
        raise GupError(-got, "gup_fast")

    def gup_slow_call(self, cpu: int, mm: int, start: int, nr: int, how: int, longterm: bool):
        """pg_gup_slow_call(): a new uint64_t[nr] cdata with the nr pfns it
        took (the ``PG_FOLLOW_*`` ``how``; with ``longterm`` only folios
        that may stay long-term pinned), or None when it took nothing and
        the general path must decide."""
        if not 0 < nr <= SMALL_CALL_PAGES:
            raise ValueError(f"gup_slow_call: nr must be in 1..{SMALL_CALL_PAGES}, got {nr}")
        buf = ffi.new(_U64_ARRAY, nr)
        got = lib.pg_gup_slow_call(self._m, cpu, mm, start, nr, how, longterm, buf)
        if got == nr:
            return buf
        if got == -lib.PG_CALL_DECLINED:
            return None
        if got == -lib.PG_CALL_VIOLATION:
            self._call_violation("gup_slow")
        raise GupError(-got, "gup_slow")

    def follow_range_list(self, cpu: int, mm: int, start: int, nr: int, how: int) -> list[int]:
        """``follow_range`` as a list, through the CPU's reusable buffer
        when nr is small."""
        if not 0 <= nr <= SMALL_CALL_PAGES or not 0 <= cpu < self.nr_cpus:
            return self.follow_range(cpu, mm, start, nr, how).tolist()
        buf = self._small_ptr[cpu]
        got = lib.pg_follow_call(self._m, cpu, mm, start, nr, how, buf)
        if got > 0:
            return ffi.unpack(buf, got)
        if got == -lib.PG_CALL_VIOLATION:
            self._call_violation("follow_range")
        return [] if got == 0 else ffi.unpack(buf, _check(got, "follow_range"))

    def follow_range(self, cpu: int, mm: int, start: int, nr: int, how: int) -> np.ndarray:
        """pg_follow_range(): the pfns taken from start on (maybe none)."""
        out = np.empty(_out_len(nr), np.uint64)
        got = lib.pg_follow_range(self._m, cpu, mm, start, nr, how,
                                  ffi.from_buffer(_U64_ARRAY, out))
        self.raise_violations()
        return out[:_check(got, "follow_range")]

    def fault_anon_range(self, mm: int, start: int, nr: int, how: int, pte_bits: int,
                         mapping: int, index: int) -> tuple[int, int]:
        """pg_fault_anon_range(): (pages faulted in from start on, the
        negative errno that stopped it at the next page or 0)."""
        err = ffi.new("int32_t *")
        rc = lib.pg_fault_anon_range(self._m, mm, start, nr, how, pte_bits, mapping, index, err)
        self.raise_violations()
        return _check(rc, "fault_anon_range"), err[0]

    def gup_fast(self, cpu: int, mm: int, start: int, nr: int, gup_flags: int,
                 policy_bits: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """lockless_pages_from_mm(): the pfns GUP-fast took (a prefix), in a
        view of ``out`` when the caller passes a reusable uint64 buffer."""
        if out is None:
            out = np.empty(_out_len(nr), np.uint64)
        elif out.dtype != np.uint64 or not out.flags.c_contiguous or len(out) < _out_len(nr):
            raise ValueError("out must be a contiguous uint64 array of at least nr entries")
        got = lib.pg_gup_fast(self._m, cpu, mm, start, nr, gup_flags, policy_bits,
                              ffi.from_buffer(_U64_ARRAY, out))
        self.raise_violations()
        return out[:_check(got, "gup_fast")]

    def gup_fast_why(self, cpu: int, mm: int, start: int, nr: int, gup_flags: int,
                     policy_bits: int, out: Optional[np.ndarray] = None
                     ) -> tuple[np.ndarray, int]:
        """``gup_fast`` that also says why the walk stopped short: (pfns,
        a ``C.FAST_STOP_*`` code; ``FAST_STOP_NONE`` when it took them all),
        in a view of ``out`` when given, as ``gup_fast``."""
        if out is None:
            out = np.empty(_out_len(nr), np.uint64)
        elif out.dtype != np.uint64 or not out.flags.c_contiguous or len(out) < _out_len(nr):
            raise ValueError("out must be a contiguous uint64 array of at least nr entries")
        why = ffi.new("int *")
        got = lib.pg_gup_fast_why(self._m, cpu, mm, start, nr, gup_flags, policy_bits,
                                  ffi.from_buffer(_U64_ARRAY, out), why)
        self.raise_violations()
        return out[:_check(got, "gup_fast")], why[0]

    def walk_entries(self, cpu: int, mm: int, addr: int) -> tuple[int, list[int]]:
        """(leaf level, [pgd, pud, pmd, pte] entries) on the path to addr."""
        out = ffi.new("uint64_t[4]")
        level = lib.pg_walk_entries(self._m, cpu, mm, addr, out)
        self.raise_violations()
        return _check(level, "walk_entries"), list(out)

    def mm_wp_seq(self, mm: int) -> int:
        return _check(lib.pg_mm_wp_seq(self._m, mm), "wp_seq")

    # -- CPUs ------------------------------------------------------------------
    def irq_disable(self, cpu: int) -> None:
        _check(lib.pg_local_irq_disable(self._m, cpu), "local_irq_disable")

    def irq_enable(self, cpu: int) -> None:
        _check(lib.pg_local_irq_enable(self._m, cpu), "local_irq_enable")

    def irqs_disabled(self, cpu: int) -> bool:
        return lib.pg_irqs_disabled(self._m, cpu) > 0

    def flush_tlb_range(self, cpu: int, mm: int, start: int, end: int) -> None:
        _check(lib.pg_flush_tlb_range(self._m, cpu, mm, start, end), "flush_tlb_range")

    def user_access(self, cpu: int, mm: int, addr: int, write: bool, value: int) -> tuple[int, int]:
        """(fault code or 0, value); raises on a negative errno."""
        out = self._out()
        rc = lib.pg_user_access(self._m, cpu, mm, addr, int(write), value, out)
        self.raise_violations()
        if rc < 0:
            raise GupError(-rc, f"user access {addr:#x}")
        return rc, out[0]

    def tlb_probe(self, cpu: int, mm: int, addr: int) -> bool:
        return lib.pg_tlb_probe(self._m, cpu, mm, addr) > 0

    # -- RCU -------------------------------------------------------------------
    def rcu_read_lock(self, cpu: int) -> None:
        _check(lib.pg_rcu_read_lock(self._m, cpu), "rcu_read_lock")

    def rcu_read_unlock(self, cpu: int) -> None:
        _check(lib.pg_rcu_read_unlock(self._m, cpu), "rcu_read_unlock")

    def synchronize_rcu(self, cpu: int) -> None:
        _check(lib.pg_synchronize_rcu(self._m, cpu), "synchronize_rcu")

    def rcu_poll(self) -> int:
        rc = lib.pg_rcu_poll(self._m)
        return rc if rc >= 0 else _check(rc, "rcu_poll")

    def rcu_barrier(self, cpu: int) -> None:
        _check(lib.pg_rcu_barrier(self._m, cpu), "rcu_barrier")

    def set_tlb_flush_mode(self, broadcast: bool) -> None:
        mode = lib.PG_TLB_FLUSH_BROADCAST if broadcast else lib.PG_TLB_FLUSH_IPI
        _check(lib.pg_set_tlb_flush_mode(self._m, mode), "set_tlb_flush_mode")

    # -- deterministic scheduler (csrc/kernel/sched.c; pygup/sched.py) ----------------
    def sched_begin(self, nr: int, seed: int, schedule, spin_limit: int = 0) -> None:
        """A session of nr CPUs; schedule None (seeded picks) or CPU ids."""
        plan = ffi.NULL
        n = 0
        if schedule is not None:
            n = len(schedule)
            plan = ffi.new("int32_t[]", list(schedule) or [0])
        _check(lib.pg_sched_begin(self._m, nr, seed & (2**64 - 1), plan, n, spin_limit),
               "sched_begin")
        self.sched_session = True

    def sched_filter(self, name: str) -> None:
        """Make a registered point (``Core.race_windows()``) a scheduling
        point of the session.  ValueError for a name that is not registered
        (a misspelt window would never stop); the session, which no CPU has
        joined yet, is ended first so the machine stays usable."""
        if not isinstance(name, str):
            raise TypeError(f"points: a point name is a str, got {name!r}")
        rc = lib.pg_sched_filter(self._m, name.encode())
        if rc == -lib.PG_EINVAL and name not in _race_window_names():
            if lib.pg_sched_status(self._m):
                lib.pg_sched_end(self._m)     # -EBUSY once a CPU joined: the caller ends it
            known = ", ".join(sorted(_race_window_names()))
            raise ValueError(f"points: unknown scheduling point {name!r} (known: {known})")
        _check(rc, f"sched_filter {name!r}")

    @staticmethod
    def race_windows() -> list[tuple[str, str]]:
        """The race-window registry (csrc/kernel/race.h): (name, reason) of
        every registered scheduling point, in registry order."""
        return [(n, r) for n, r, _ in _race_registry()]

    @staticmethod
    def race_window_flags() -> dict[str, int]:
        """name -> its PG_RACE_* kind bits (C.RACE_YIELD, C.RACE_SPIN, ...)."""
        return {n: f for n, _, f in _race_registry()}

    def sched_attach(self, cpu: int) -> None:
        _check(lib.pg_sched_attach(self._m, cpu), f"sched_attach({cpu})")

    def sched_detach(self) -> None:
        _check(lib.pg_sched_detach(self._m), "sched_detach")

    def sched_yield(self, name: bytes, spin: bool) -> bool:
        """True if the calling thread is a scheduled CPU (it parked and was
        picked again), False at once otherwise."""
        return lib.pg_sched_yield(self._m, name, int(spin)) == 1

    def sched_status(self) -> int:
        return lib.pg_sched_status(self._m)

    def sched_trace(self) -> list[tuple[int, str, bool]]:
        """Every pick so far: (cpu, point it resumed from, was spinning)."""
        n = lib.pg_sched_steps(self._m)
        cpu, spun = ffi.new("int32_t *"), ffi.new("int32_t *")
        buf = ffi.new("char[]", lib.PG_SCHED_NAME_MAX)
        out = []
        for i in range(max(n, 0)):
            _check(lib.pg_sched_trace(self._m, i, cpu, spun, buf, lib.PG_SCHED_NAME_MAX),
                   "sched_trace")
            out.append((cpu[0], ffi.string(buf).decode(), bool(spun[0])))
        return out

    def sched_explore(self) -> None:
        """Record a state digest at every pick (before any attach)."""
        _check(lib.pg_sched_explore(self._m), "sched_explore")

    def sched_choices(self) -> list[tuple[int, int]]:
        """Every pick so far: (mask of the CPUs that could have been
        picked, state digest or 0)."""
        n = lib.pg_sched_steps(self._m)
        mask, digest = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        out = []
        for i in range(max(n, 0)):
            _check(lib.pg_sched_trace_choice(self._m, i, mask, digest), "sched_choices")
            out.append((int(mask[0]), int(digest[0])))
        return out

    def sched_watch(self, mmid: int, addr: int) -> None:
        """Record, at every pick, the leaf mapping addr in mm and its folio."""
        _check(lib.pg_sched_watch(self._m, mmid, addr), "sched_watch")

    def sched_watches(self) -> list[dict[str, int]]:
        """Per pick: the watched leaf, pfn, refcount, pincount, mapcount,
        mapping word (sched_watch)."""
        n = lib.pg_sched_steps(self._m)
        buf = ffi.new("uint64_t[6]")
        out = []
        for i in range(max(n, 0)):
            _check(lib.pg_sched_trace_watch(self._m, i, buf), "sched_watches")
            v = [int(x) for x in buf]
            signed = [x - (1 << 64) if x >= 1 << 63 else x for x in v[2:5]]
            out.append({"pte": v[0], "pfn": v[1] if v[1] != 2**64 - 1 else None,
                        "refcount": signed[0], "pincount": signed[1], "mapcount": signed[2],
                        "mapping": v[5]})
        return out

    def sched_note_model(self) -> None:
        """pg_sched_note_model(): a no-op but for a CPU attached to a session,
        so skipped without a C call while none has begun."""
        if self.sched_session:
            lib.pg_sched_note_model(self._m)

    def sched_end(self) -> None:
        _check(lib.pg_sched_end(self._m), "sched_end")
        self.sched_session = False

    # -- native stress drivers (csrc/tools/stress/; pygup/stress.py) ----------------
    @staticmethod
    def stress_defaults(scenario: int) -> dict[str, int]:
        """pg_stress_defaults(): the parameters of a scenario, as a dict."""
        p = ffi.new("struct pg_stress_params *")
        _check(lib.pg_stress_defaults(p, scenario), "stress_defaults")
        return {name: getattr(p, name) for name, _ in ffi.typeof("struct pg_stress_params").fields}

    @staticmethod
    def stress_field_limits() -> dict[str, tuple[int, int]]:
        """(min, max) of each field of ``struct pg_stress_params``, from its
        C type: what a value must fit before cffi sees it."""
        out = {}
        for name, field in ffi.typeof("struct pg_stress_params").fields:
            bits = ffi.sizeof(field.type) * 8
            signed = field.type.cname in ("int", "int32_t", "int64_t", "long")
            out[name] = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed \
                else (0, (1 << bits) - 1)
        return out

    @staticmethod
    def stress_nr_threads(params: dict[str, int]) -> int:
        p = ffi.new("struct pg_stress_params *", params)
        return _check(lib.pg_stress_nr_threads(p), "stress_nr_threads")

    def stress_run(self, params: dict[str, int]) -> dict:
        """pg_stress_run(): runs the campaign (the GIL is released meanwhile)
        and returns the result fields as Python values.  Violations stay in
        the ring for the caller to pop."""
        p = ffi.new("struct pg_stress_params *", params)
        r = ffi.new("struct pg_stress_result *")
        _check(lib.pg_stress_run(self._m, p, r), "stress_run")
        return {"ops": list(r.ops), "fails": list(r.fails),
                "first_fail_ns": list(r.first_fail_ns),
                "first_fail_iter": list(r.first_fail_iter), "elapsed_ns": r.elapsed_ns,
                "iters_pinners": r.iters_pinners, "iters_workers": r.iters_workers,
                "nr_threads": r.nr_threads,
                "messages": ffi.string(r.msgs, r.msg_len).decode(errors="replace")}


class HostProbes:
    """The live-kernel probes of csrc/tools/host.c (used by ``pygup.tools.oracle.host``): real
    system calls on this machine, never an emulated one.  Each returns the
    kernel's answer as an int (0, a count, or -errno); values read come back
    as (ret, value)."""

    available = staticmethod(lambda: lib.pg_host_io_uring_available())

    @staticmethod
    def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> tuple[int, int]:
        """(0, addr) or (-errno, 0)."""
        out = ffi.new("uint64_t *")
        rc = lib.pg_host_mmap(length, prot, flags, fd, offset, out)
        return rc, out[0] if rc == 0 else 0

    mmap_fixed = staticmethod(lambda addr, length, prot, flags, fd=-1, offset=0:
                              lib.pg_host_mmap_fixed(addr, length, prot, flags, fd, offset))
    munmap = staticmethod(lambda addr, length: lib.pg_host_munmap(addr, length))
    process_vm_readv_range = staticmethod(
        lambda addr, length: lib.pg_host_process_vm_readv_range(addr, length))

    @staticmethod
    def load(addr: int) -> tuple[int, int]:
        """A user load of 8 bytes: (0, value) or (-EFAULT / -EIO, 0)."""
        out = ffi.new("uint64_t *")
        rc = lib.pg_host_load(addr, out)
        return rc, out[0]
    mprotect = staticmethod(lambda addr, length, prot: lib.pg_host_mprotect(addr, length, prot))
    msync = staticmethod(lambda addr, length, flags: lib.pg_host_msync(addr, length, flags))
    touch = staticmethod(lambda addr, length, write, value=0:
                         lib.pg_host_touch(addr, length, int(bool(write)), value))
    memfd_secret = staticmethod(lambda flags=0: lib.pg_host_memfd_secret(flags))
    io_uring_register = staticmethod(lambda addr, length: lib.pg_host_io_uring_register(addr, length))
    proc_mem_write = staticmethod(lambda addr, value: lib.pg_host_proc_mem_write(addr, value))
    process_vm_writev = staticmethod(lambda addr, value: lib.pg_host_process_vm_writev(addr, value))
    o_direct_read = staticmethod(lambda fd, addr, length, offset=0:
                                 lib.pg_host_o_direct_read(fd, addr, length, offset))
    o_direct_write = staticmethod(lambda fd, addr, length, offset=0:
                                  lib.pg_host_o_direct_write(fd, addr, length, offset))
    vmsplice = staticmethod(lambda addr, length: lib.pg_host_vmsplice(addr, length))
    # a ring kept across calls (slot or -errno), its one registered buffer,
    # fixed-buffer I/O on it (write=True: the buffer into the file), its close
    ring_setup = staticmethod(lambda: lib.pg_host_ring_setup())
    ring_register = staticmethod(lambda slot, addr, length:
                                 lib.pg_host_ring_register(slot, addr, length))
    ring_unregister = staticmethod(lambda slot: lib.pg_host_ring_unregister(slot))
    ring_rw_fixed = staticmethod(lambda slot, write, fd, addr, length, offset=0:
                                 lib.pg_host_ring_rw_fixed(slot, int(bool(write)), fd, addr,
                                                           length, offset))
    ring_close = staticmethod(lambda slot: lib.pg_host_ring_close(slot))

    @staticmethod
    def proc_mem_read(addr: int) -> tuple[int, int]:
        out = ffi.new("uint64_t *")
        rc = lib.pg_host_proc_mem_read(addr, out)
        return rc, out[0]

    @staticmethod
    def process_vm_readv(addr: int) -> tuple[int, int]:
        out = ffi.new("uint64_t *")
        rc = lib.pg_host_process_vm_readv(addr, out)
        return rc, out[0]

    @staticmethod
    def io_uring_register_ns(addr: int, length: int, iterations: int) -> tuple[int, int, int]:
        """(rc, total_ns, min_ns) of `iterations` register+unregister pairs."""
        total, best = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        rc = lib.pg_host_io_uring_register_ns(addr, length, iterations, total, best)
        return rc, total[0], best[0]
