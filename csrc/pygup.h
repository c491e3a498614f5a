/*
 * pygup.h - the one header both the C compiler and cffi read.
 *
 * build.py hands cffi only the text between the PYGUP_CDEF_BEGIN and
 * PYGUP_CDEF_END markers; everything there must be plain C that pycparser
 * understands: no _Atomic, no #include, no macros other than
 * "#define NAME <integer literal>".  Every type that holds atomics is opaque.
 *
 * Conventions
 *  - Every function that can fail returns 0 (or a count / id >= 0) on
 *    success and a negative Linux errno on failure.  Bad indices (pfn, mm id,
 *    cpu, address) coming from Python are checked and give -EINVAL (or
 *    -EFAULT for addresses), never undefined behaviour.
 *  - "cpu" is the emulated CPU the calling thread is acting as.  Python
 *    passes it explicitly; C never guesses it.
 *  - Invariant violations found inside C (PG_BUG_ON / PG_WARN_ON in
 *    internal.h) are recorded in the machine and surfaced by Python as
 *    pygup.InvariantError via pg_violation_count()/pg_violation_pop().
 */
#ifndef PYGUP_H
#define PYGUP_H
#include <stdint.h>
#include <stddef.h>

/* PYGUP_CDEF_BEGIN */

/* ---- geometry ---------------------------------------------------------- */
#define PG_PAGE_SHIFT 12
#define PG_PAGE_SIZE 4096
#define PG_PTRS_PER_TABLE 512
#define PG_PMD_SHIFT 21
#define PG_PMD_ORDER 9
#define PG_PMD_NR 512
#define PG_VA_BITS 48
#define PG_TASK_SIZE_MAX 0x7ffffffff000
#define PG_GUP_PIN_COUNTING_BIAS 1024
#define PG_MAX_CPUS 64
/* frames per machine: pfns must fit the frame's 32-bit head field */
#define PG_MAX_FRAMES 0x80000000
#define PG_TLB_ENTRIES 64
/* frame 0 is the shared zero page: PG_F_ZERO, never allocated or freed */
#define PG_ZERO_PFN 0

/* ---- gup_flags (Linux 6.5 values, SPEC §1.1) --------------------------- */
#define PG_FOLL_WRITE 0x1
#define PG_FOLL_GET 0x2
#define PG_FOLL_DUMP 0x4
#define PG_FOLL_FORCE 0x8
#define PG_FOLL_NOWAIT 0x10
#define PG_FOLL_NOFAULT 0x20
#define PG_FOLL_HWPOISON 0x40
#define PG_FOLL_ANON 0x80
#define PG_FOLL_LONGTERM 0x100
#define PG_FOLL_SPLIT_PMD 0x200
#define PG_FOLL_PCI_P2PDMA 0x400
#define PG_FOLL_INTERRUPTIBLE 0x800
#define PG_FOLL_HONOR_NUMA_FAULT 0x1000
#define PG_FOLL_TOUCH 0x10000
#define PG_FOLL_TRIED 0x20000
#define PG_FOLL_REMOTE 0x40000
#define PG_FOLL_PIN 0x80000
#define PG_FOLL_FAST_ONLY 0x100000
#define PG_FOLL_UNLOCKABLE 0x200000

/* ---- madvise(2) advice, mremap(2) / mlock2(2) / mlockall(2) / fallocate(2)
 * flags (x86-64 uapi values: asm-generic/mman-common.h, linux/mman.h,
 * linux/falloc.h) ---------------------------------------------------------- */
#define PG_MADV_NORMAL 0
#define PG_MADV_RANDOM 1
#define PG_MADV_SEQUENTIAL 2
#define PG_MADV_WILLNEED 3
#define PG_MADV_DONTNEED 4
#define PG_MADV_FREE 8
#define PG_MADV_REMOVE 9
#define PG_MADV_DONTFORK 10
#define PG_MADV_DOFORK 11
#define PG_MADV_HUGEPAGE 14
#define PG_MADV_NOHUGEPAGE 15
#define PG_MADV_DONTDUMP 16
#define PG_MADV_DODUMP 17
#define PG_MADV_WIPEONFORK 18
#define PG_MADV_KEEPONFORK 19
#define PG_MADV_COLD 20
#define PG_MADV_PAGEOUT 21
#define PG_MADV_POPULATE_READ 22
#define PG_MADV_POPULATE_WRITE 23
#define PG_MADV_DONTNEED_LOCKED 24
#define PG_MADV_COLLAPSE 25
#define PG_MREMAP_MAYMOVE 1
#define PG_MREMAP_FIXED 2
#define PG_MREMAP_DONTUNMAP 4
#define PG_MLOCK_ONFAULT 1
#define PG_MCL_CURRENT 1
#define PG_MCL_FUTURE 2
#define PG_MCL_ONFAULT 4
#define PG_FALLOC_FL_KEEP_SIZE 0x1
#define PG_FALLOC_FL_PUNCH_HOLE 0x2

/* ---- protection switches: each re-plants one historic bug (BUGS.md) ---- */
#define PG_MUT_NO_PTE_RECHECK 0x1        /* GUP-fast skips the PTE re-check */
#define PG_MUT_NO_PMD_RECHECK 0x2        /* GUP-fast skips the PMD re-check */
#define PG_MUT_WHITELIST_BEFORE_RECHECK 0x4 /* v8 review: allowed-check first */
#define PG_MUT_WHITELIST_INVERTED 0x8    /* v7 review: allowed-check inverted */
#define PG_MUT_NULL_MAPPING_OK 0x10      /* v8 review: NULL mapping accepted */
#define PG_MUT_TABLE_FREE_NO_SYNC 0x20   /* tables freed with no IPI/RCU */
#define PG_MUT_AS_FREE_NO_RCU 0x40       /* address_space freed at once */
#define PG_MUT_NO_WP_SEQ 0x80            /* fork race (57efa1fe5957) */
#define PG_MUT_MKCLEAN_NO_FLUSH 0x100    /* folio_mkclean without shootdown */
#define PG_MUT_FAST_NO_UNSHARE 0x200     /* GUP-fast skips gup_must_unshare */
#define PG_MUT_FAST_SECRETMEM 0x400      /* 65291dcfcf89: secretmem passes */
#define PG_MUT_UNPIN_NO_BIAS 0x800       /* unpin drops 1, not the bias */
#define PG_MUT_NO_UNSHARE 0x1000         /* slow path skips gup_must_unshare */
#define PG_MUT_FORCE_WRITE_ANY_PAGE 0x2000 /* Dirty COW: FOLL_FORCE writes any page */
#define PG_MUT_NO_FOLIO_RECHECK 0x4000   /* c24d37322548: ref on a stale head */
#define PG_MUT_COLLAPSE_NO_SYNC 0x8000   /* 2ba99c5e0881: no IPI sync in collapse */
#define PG_MUT_ALL 0xffff

/* ---- vm_flags bits the C rules read (Linux values, as pygup.flags.VM) -- */
#define PG_VM_WRITE 0x2
#define PG_VM_SHARED 0x8
#define PG_VM_MAYWRITE 0x20
#define PG_VM_MAYSHARE 0x80

/* ---- errno values (Linux) used across the boundary --------------------- */
#define PG_EPERM 1
#define PG_ENOENT 2
#define PG_EINTR 4
#define PG_EAGAIN 11
#define PG_ENOMEM 12
#define PG_EFAULT 14
#define PG_EBUSY 16
#define PG_EEXIST 17
#define PG_EINVAL 22
#define PG_ENOSPC 28
#define PG_EOVERFLOW 75
#define PG_EOPNOTSUPP 95

/* ---- zones and table-free modes ---------------------------------------- */
#define PG_ZONE_NORMAL 0
#define PG_ZONE_MOVABLE 1
#define PG_TABLE_FREE_IPI 0
#define PG_TABLE_FREE_RCU 1

/* ---- folio (frame) flags ----------------------------------------------- */
#define PG_F_FREE 0x1          /* on a free list */
#define PG_F_HEAD 0x2          /* first frame of a folio (order 0 too) */
#define PG_F_TAIL 0x4          /* non-first frame of a large folio */
#define PG_F_DIRTY 0x8
#define PG_F_WRITEBACK 0x10
#define PG_F_LOCKED 0x20
#define PG_F_ANON_EXCLUSIVE 0x40 /* per page, as PageAnonExclusive */
#define PG_F_REFERENCED 0x80
#define PG_F_HUGETLB 0x100
#define PG_F_LRU 0x200
#define PG_F_UPTODATE 0x400
#define PG_F_PRIVATE 0x800     /* fs private state ("buffers") attached */
#define PG_F_MKWRITE 0x1000    /* page_mkwrite called since the last clean */
#define PG_F_ZERO 0x2000       /* the shared zero page */
#define PG_F_SLAB 0x4000
/* MADV_FREE'd anon folio (the kernel's !PG_swapbacked): reclaim discards it
 * while it stays clean and no one else holds it */
#define PG_F_LAZYFREE 0x8000

/* ---- the mapping word -------------------------------------------------- */
/* 0 = none (or truncated); (id << 2) = address_space record id;
 * (anon_vma id << 2) | PG_MAPPING_ANON = anonymous. */
#define PG_MAPPING_ANON 0x1
#define PG_MAPPING_MOVABLE 0x2
#define PG_MAPPING_KSM 0x3
#define PG_MAPPING_FLAGS 0x3

/* address_space record kinds (bit flags) */
#define PG_AS_SHMEM 0x1
#define PG_AS_HUGETLB 0x2
#define PG_AS_SECRETMEM 0x4
#define PG_AS_DAX 0x8
/* its file system has page_mkwrite or writes back: every write must follow
 * a page_mkwrite since the folio's last clean (DESIGN invariant 3) */
#define PG_AS_DIRTY_TRACKED 0x10

/* ---- PTE bits (x86-like) ----------------------------------------------- */
#define PG_PTE_PRESENT 0x1
#define PG_PTE_WRITE 0x2
#define PG_PTE_USER 0x4
#define PG_PTE_ACCESSED 0x20
#define PG_PTE_DIRTY 0x40
#define PG_PTE_HUGE 0x80
#define PG_PTE_PROTNONE 0x100  /* mapped, PRESENT clear: no access (x86 protnone) */
#define PG_PTE_SPECIAL 0x200
#define PG_PTE_SOFT_DIRTY 0x800
#define PG_PTE_PFN_SHIFT 12
#define PG_PTE_PFN_MASK 0x000ffffffffff000
/* leaf levels for pg_pte_set / pg_pte_lookup */
#define PG_LEVEL_PTE 1
#define PG_LEVEL_PMD 2

/* ---- user-access results (positive: why a fault is needed) ------------- */
#define PG_FAULT_NONE 0
#define PG_FAULT_NOT_PRESENT 1
#define PG_FAULT_WRITE_PROTECT 2
#define PG_FAULT_PROTNONE 3

typedef struct pg_machine pg_machine;

struct pg_frame_info {
    uint64_t pfn;
    uint64_t head;       /* pfn of the folio's first frame */
    uint64_t index;      /* page-cache index, or linear index for anon */
    uint64_t mapping;    /* the encoded mapping word */
    uint64_t content;    /* the page's data word */
    int32_t refcount;    /* of the folio */
    int32_t pincount;    /* of the folio (large folios only) */
    int32_t mapcount;    /* of this page */
    uint32_t flags;      /* this frame's flags | head's folio-wide flags */
    int32_t order;       /* of the folio */
    int32_t zone;
};

struct pg_stats {
    uint64_t nr_frames;
    uint64_t nr_free[2];          /* per zone */
    uint64_t frame_bytes;         /* bytes of frame structs */
    uint64_t table_pages_live;
    uint64_t table_pages_pending; /* freed, waiting for IPI sync / RCU */
    uint64_t table_bytes;         /* bytes held by table pages, live or pooled */
    uint64_t as_live;
    uint64_t as_pending;          /* address_space records waiting for RCU */
    uint64_t ipis_sent;
    uint64_t tlb_shootdowns;
    uint64_t tlb_flushed_entries;
    uint64_t rcu_grace_periods;
    uint64_t rcu_callbacks_run;
    uint64_t pins_acquired;       /* nr_foll_pin_acquired */
    uint64_t pins_released;       /* nr_foll_pin_released */
    uint64_t orphans_reaped;      /* IRQs-off / RCU sections a waiter ended
                                     because their thread no longer exists */
};

/* ---- machine ------------------------------------------------------------ */
/* nr_frames: total 4 KiB frames; nr_movable: how many of them (the top of
 * physical memory) form ZONE_MOVABLE.  Both multiples of PG_PMD_NR.
 * Returns NULL on bad arguments or allocation failure. */
pg_machine *pg_machine_new(uint64_t nr_frames, uint64_t nr_movable,
                           int nr_cpus, int table_free_mode);
void pg_machine_free(pg_machine *m);
int pg_machine_nr_cpus(pg_machine *m);
void pg_stats_get(pg_machine *m, struct pg_stats *out);
/* violations recorded by PG_BUG_ON / PG_WARN_ON and not yet popped */
int pg_violation_count(pg_machine *m);
/* Set the machine's protection switches (PG_MUT_* bits); returns the old
 * set, or -PG_EINVAL for unknown bits. */
int64_t pg_set_mutants(pg_machine *m, uint32_t mutants);
/* copy the oldest message into buf (NUL-terminated), drop it; 0 if none.
 * The ring keeps the oldest 64 messages; once drained, one summary message
 * accounts for those that did not fit. */
int pg_violation_pop(pg_machine *m, char *buf, int buflen);
/* every violation ever recorded (popped or not) */
uint64_t pg_violation_total(pg_machine *m);

/* ---- failure injection (lib/fault_inject.c) ---------------------------
 * pg_fail_nth(kind, nth): the nth allocation of that kind from this call
 * on fails (once) as a real one does: -PG_ENOMEM from the call that needed
 * it.  nth 0 turns the knob off; -PG_EINVAL for a bad kind or nth < 0.
 * pg_fail_pending: what is left of the countdown (0: off or fired);
 * pg_fail_fired: how many injected failures of that kind ever fired. */
#define PG_FAIL_FOLIO 0   /* pg_folio_alloc (faults, fork's copy, migration) */
#define PG_FAIL_TABLE 1   /* a page-table page (pg_mm_new, pg_pte_set, fork) */
#define PG_FAIL_AS 2      /* an address_space record (pg_as_new) */
#define PG_FAIL_NR 3
int pg_fail_nth(pg_machine *m, int kind, int64_t nth);
int64_t pg_fail_pending(pg_machine *m, int kind);
int64_t pg_fail_fired(pg_machine *m, int kind);

/* ---- frames / folios (mm/frames.c) ------------------------------------- */
/* Allocate a folio of order 0 or PG_PMD_ORDER in a zone.  The new folio has
 * refcount 1, no mapping, content 0 in every frame, flags HEAD (|TAIL on the
 * rest).  Returns the head pfn or -PG_ENOMEM. */
int64_t pg_folio_alloc(pg_machine *m, int order, int zone);
/* Reference counting on the folio containing pfn.  get: -EINVAL if the
 * folio is free.  put: drops refs; the last put frees the folio (content
 * cleared, flags cleared, mapping cleared).  Returns the new refcount. */
int64_t pg_folio_get(pg_machine *m, uint64_t pfn, int refs);
int64_t pg_folio_put(pg_machine *m, uint64_t pfn, int refs);
int pg_frame_info(pg_machine *m, uint64_t pfn, struct pg_frame_info *out);
/* set/clear flags on the folio's head (folio-wide flags) and return the old
 * flags; PG_F_ANON_EXCLUSIVE acts on the frame pfn itself. */
int64_t pg_folio_flags_update(pg_machine *m, uint64_t pfn, uint32_t set,
                              uint32_t clear);
int pg_folio_set_mapping(pg_machine *m, uint64_t pfn, uint64_t mapping,
                         uint64_t index);
/* add delta to the frame's mapcount; returns the new value */
int64_t pg_frame_mapcount_add(pg_machine *m, uint64_t pfn, int delta);
/* the "direct mapping": read / write a frame's content word */
int pg_frame_read(pg_machine *m, uint64_t pfn, uint64_t *out);
int pg_frame_write(pg_machine *m, uint64_t pfn, uint64_t value);
/* copy content (and nothing else) of a whole folio to another of equal order */
int pg_folio_copy(pg_machine *m, uint64_t dst, uint64_t src);
/* snapshot of every frame into caller-owned arrays of nr_frames entries
 * (any pointer may be NULL to skip that field).  Raw per-frame words:
 * refcount and mapping of a large folio are on its head (tails read 0);
 * flags are the frame's own word (a tail shows TAIL and its own
 * ANON_EXCLUSIVE, not the head's folio-wide flags). */
int pg_frames_snapshot(pg_machine *m, int32_t *refcount, int32_t *mapcount,
                       uint32_t *flags, uint64_t *mapping, uint64_t *content);
/* Writeback of a run of folios, one call each step (kernel/writeback.py).
 * Each takes n folio heads and checks them all first: a pfn that is not
 * the head of a live folio, or is the zero page, is -PG_EINVAL before
 * anything changes.
 * pg_folios_clear_dirty_for_io: per folio, folio_clear_dirty_for_io() and
 * folio_start_writeback(): if pte_dirty (may be NULL) has a non-zero byte
 * for it, set PG_F_DIRTY (a mapping was cleaned); then clear PG_F_DIRTY
 * and PG_F_MKWRITE, and set PG_F_WRITEBACK if it was dirty.  old[i] gets
 * the folio's flags before the clear. */
int pg_folios_clear_dirty_for_io(pg_machine *m, const uint64_t *pfns, int64_t n,
                                 const uint8_t *pte_dirty, uint32_t *old);
/* set/clear folio-wide flags on each folio (folio_end_writeback: clear
 * PG_F_WRITEBACK); structural and per-page bits: -PG_EINVAL */
int pg_folios_flags_update(pg_machine *m, const uint64_t *pfns, int64_t n,
                           uint32_t set, uint32_t clear);
/* the content word of each frame (writeback's copy to disk) */
int pg_frames_read(pg_machine *m, const uint64_t *pfns, int64_t n, uint64_t *out);
/* the mapcount of each of the n frames from pfn on (a THP's pages) */
int pg_frames_mapcount(pg_machine *m, uint64_t pfn, int64_t n, int32_t *out);

/* The per-page rules, one implementation each in C (mm/frames.c, mm/gup.c),
 * for Python to ask.  Each returns 1 (true), 0 (false), or -PG_EINVAL
 * when pfn is not a frame of a live folio. */
/* PageAnonExclusive() (hugetlb: the head page's) */
int pg_page_anon_exclusive(pg_machine *m, uint64_t pfn);
/* folio_is_longterm_pinnable(): not in ZONE_MOVABLE (the zero page is) */
int pg_folio_is_longterm_pinnable(pg_machine *m, uint64_t pfn);
/* folio_maybe_dma_pinned() */
int pg_folio_maybe_dma_pinned(pg_machine *m, uint64_t pfn);
/* gup_must_unshare() for a read-only entry mapping pfn: vma_is_cow is the
 * VMA's is_cow_mapping() (0 / 1), or -1 for GUP-fast, which has no VMA.
 * With a VMA the PG_MUT_NO_UNSHARE switch (the slow path skips the rule)
 * applies, without one PG_MUT_FAST_NO_UNSHARE; either makes it 0.
 * -PG_EINVAL also for vma_is_cow outside -1..1. */
int pg_gup_must_unshare(pg_machine *m, uint64_t pfn, uint32_t gup_flags, int vma_is_cow);
/* can_follow_write_pte(): may a FOLL_WRITE follow entry pte without a write
 * fault?  pfn: the normal page the entry maps, or -1 when there is none
 * (special); vm_flags: the VMA's (PG_VM_* bits are read).  Honours
 * PG_MUT_FORCE_WRITE_ANY_PAGE. */
int pg_can_follow_write_pte(pg_machine *m, uint64_t pte, int64_t pfn, uint32_t gup_flags,
                            uint64_t vm_flags);

/* ---- address_space records (mm/frames.c) ------------------------------- */
/* New record of the given PG_AS_* kind; returns its id (>= 1). */
int64_t pg_as_new(pg_machine *m, uint32_t kind);
/* The record stops being live now and is freed after an RCU grace period
 * (call_rcu).  A later lookup of a freed record is a use-after-free. */
int pg_as_release(pg_machine *m, uint64_t id);
/* kind of a live record, -PG_ENOENT if it is freed / pending */
int64_t pg_as_kind(pg_machine *m, uint64_t id);

/* ---- mm and page tables (mm/pgtable.c; range operations: mm/memory.c) */
/* New empty address space (a PGD table).  Returns the mm id (>= 0). */
int64_t pg_mm_new(pg_machine *m);
/* Tear down: zap every leaf (dropping refs / mapcounts as pg_zap_range
 * does), flush, free every table.  The id becomes invalid. */
int pg_mm_destroy(pg_machine *m, int cpu, uint64_t mm);
/* Install a leaf at addr at PG_LEVEL_PTE or PG_LEVEL_PMD (addr and the
 * pfn in the entry aligned for the level), allocating intermediate tables.
 * The previous entry must be none: -PG_EEXIST otherwise.  Does not touch
 * refcount or mapcount (the caller, the fault handler, does). */
int pg_pte_set(pg_machine *m, uint64_t mm, uint64_t addr, uint64_t pte,
               int level);
/* Walk to the leaf mapping addr.  Returns the leaf's level (1 or 2) and
 * the entry in *pte; 0 with *pte = the (none) entry if nothing is mapped. */
int pg_pte_lookup(pg_machine *m, uint64_t mm, uint64_t addr, uint64_t *pte);
/* Atomically: new = (old & ~clear) | set on the leaf mapping addr, but
 * only if the leaf is present (non-zero) and, when expect_pfn >= 0, maps
 * that pfn.  Stores the old entry.  Returns the level, or -PG_ENOENT.
 * No TLB flush: the caller flushes when it downgrades. */
int pg_pte_modify(pg_machine *m, uint64_t mm, uint64_t addr, int64_t expect_pfn,
                  uint64_t clear, uint64_t set, uint64_t *old);
/* Clear the leaf at addr and return it (ptep_get_and_clear); no flush.
 * Returns the level cleared (1 or 2), or 0 with *old = 0 if none. */
int pg_pte_clear(pg_machine *m, uint64_t mm, uint64_t addr, uint64_t *old);
/* folio_mkclean for one mapping (page_vma_mkclean_one): if the leaf at addr
 * maps pfn's folio and is writable or dirty, clear it, flush the TLB on
 * every CPU that may cache it, then reinstall it write-protected and clean.
 * Returns 1 if cleaned (and *was_dirty = the PTE's dirty bit), 0 if not. */
int pg_pte_mkclean(pg_machine *m, int cpu, uint64_t mm, uint64_t addr,
                   uint64_t pfn, int *was_dirty);
/* folio_mkclean for a run of pages of one mapping: pfns[i] is the page
 * expected at start + i pages (PG_ZERO_PFN: none, skip it).  Every leaf in
 * the range that maps the folio of its expected page and is writable or
 * dirty is cleaned as pg_pte_mkclean does, with one TLB shootdown per
 * batch of adjacent entries instead of one per entry; cleaned[i] = 1 for
 * each cleaned leaf (at its first page in the range), 0 elsewhere.
 * Returns the number of leaves cleaned.  IRQs off: -PG_EBUSY. */
int64_t pg_mkclean_range(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                         const uint64_t *pfns, int64_t nr, uint8_t *cleaned);
/* Zap [start, end): clear every leaf, flush the TLBs, then for each old
 * leaf that is not SPECIAL: transfer the PTE dirty bit to a non-anon
 * folio (PG_F_DIRTY), drop the page's mapcount and one folio reference.  A
 * PMD leaf is one mapping of its folio (as hugetlb): the head's mapcount
 * and one reference.  Returns the number of 4 KiB pages unmapped.
 * Leaves of the zero page count as SPECIAL; non-zero leaves that are
 * neither PRESENT nor PROTNONE (swap-like) are cleared without counts.
 * A PMD leaf only partly inside the range: -PG_EINVAL, nothing changed
 * (the same for pg_copy_range and pg_change_protection).  The caller's
 * IRQs must be enabled (-PG_EBUSY): every flushing call waits for IPIs. */
int64_t pg_zap_range(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                     uint64_t end);
/* mremap's move_page_tables: move every entry of [old_addr, old_addr +
 * len) to the same offset from new_addr (the ranges may not overlap:
 * -PG_EINVAL), a whole PTE table at once where both extents are
 * PMD-aligned (move_normal_pmd), else leaf by leaf (move_ptes, a PMD leaf
 * as move_huge_pmd: only to a PMD-aligned address, -PG_EINVAL).  Counts
 * do not change: the pages, and every pin on them, stay.  The destination
 * must map nothing (-PG_EEXIST; the caller unmaps it first).  The old
 * range's TLBs are flushed after the move when it moved a present entry.
 * Returns the bytes moved from old_addr on, as move_page_tables(): len,
 * or less when an extent's destination table could not be allocated (the
 * caller moves that much back: move_vma()); <0 when nothing moved. */
int64_t pg_move_range(pg_machine *m, int cpu, uint64_t mm, uint64_t old_addr,
                      uint64_t new_addr, uint64_t len);
/* Free page-table pages that map nothing any more inside [start, end)
 * (only tables wholly inside the range), deferred by the machine's
 * table_free mode.  Returns the number of tables freed or queued. */
int64_t pg_free_pgtables(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                         uint64_t end);
/* Fork's copy_page_range for [start, end) from src to dst:
 * cow != 0 (private writable mapping): every present leaf is
 *   write-protected in src and installed write-protected in dst; an
 *   anonymous page loses PG_F_ANON_EXCLUSIVE; refcount +1 and mapcount +1
 *   per mapping (a PMD leaf counts once, on its head).  The src TLBs are
 *   flushed.  SPECIAL leaves are copied without touching any count.
 * cow == 0: leaves are copied as they are (refcount / mapcount +1).
 * copy_pinned != 0 (the parent mm has MMF_HAS_PINNED) with cow: an
 *   anonymous folio that folio_maybe_dma_pinned() is not shared but copied
 *   for the child (copy_present_page): the child maps a new exclusive anon
 *   folio with mapping word child_mapping; the parent keeps its entry.
 * Returns the number of pages copied, or -PG_ENOMEM. */
int64_t pg_copy_range(pg_machine *m, int cpu, uint64_t src, uint64_t dst,
                      uint64_t start, uint64_t end, int cow, int copy_pinned,
                      uint64_t child_mapping);
/* change_protection over [start, end): on every leaf (non-zero entry)
 * new = (old & ~clear) | set, then flush the TLBs if any entry changed.
 * Returns the number of pages whose entry changed. */
int64_t pg_change_protection(pg_machine *m, int cpu, uint64_t mm,
                             uint64_t start, uint64_t end, uint64_t clear,
                             uint64_t set);
/* Every leaf (non-zero entry) in [start, end), in address order: stores up
 * to max (address, entry) pairs, one per PTE-sized page (a PMD leaf gives
 * PG_PMD_NR pairs with the entry's pfn adjusted to each subpage), and
 * returns how many it stored. */
int64_t pg_range_leaves(pg_machine *m, uint64_t mm, uint64_t start,
                        uint64_t end, uint64_t *addrs, uint64_t *ptes,
                        int64_t max);
/* The reference-count audit (mm/audit.c): every head frame's refcount
 * against what its owners hold and every page's mapcount against the leaves
 * that map it.  Owners: the page-table leaves of the nr_mms address spaces
 * in mms (leaves[i]: PTE-sized pages of mms[i]'s leaves, for the caller's
 * leaves-inside-VMAs check), and nr (pfn, kind) pairs: PG_AUDIT_REF one
 * reference on that very frame (a page-cache head, device memory),
 * PG_AUDIT_HOLD_GET / _PIN a GUP hold of the page (on its folio's head;
 * a pin of a small folio is GUP_PIN_COUNTING_BIAS; nothing on the zero
 * page).  *out: the first check that failed (kind, pfn, actual, expected;
 * differ: how many heads' refcounts differ, 1 for the other kinds) or
 * PG_AUDIT_OK, and pinned: the PIN pairs not on the zero page.  scratch:
 * the caller's work space of at least 2 * nr_frames entries, all zero on
 * entry, which the call leaves all zero again, whatever it answers (one
 * zeroed buffer reused: no allocation, no clearing pass per call; a
 * buffer that is not zero gives a wrong verdict, never a stray access).
 * -PG_EINVAL for a bad argument, before any work; nothing else changes. */
#define PG_AUDIT_REF 0
#define PG_AUDIT_HOLD_GET 1
#define PG_AUDIT_HOLD_PIN 2
#define PG_AUDIT_OK 0
#define PG_AUDIT_REFCOUNT 1      /* a head's refcount is not what its owners hold */
#define PG_AUDIT_NEGATIVE 2      /* a negative refcount */
#define PG_AUDIT_MAPCOUNT 3      /* a page's mapcount is not its leaves */
#define PG_AUDIT_LEAF_PFN 4      /* a live leaf maps a frame past the last one */
struct pg_audit_report {
    int32_t kind;
    uint64_t pfn;
    int64_t actual, expected;
    int64_t differ;
    int64_t pinned;
};
int pg_audit_refcounts(pg_machine *m, const uint64_t *mms, int64_t nr_mms,
                       int64_t *leaves, const uint64_t *pfns, const uint8_t *kinds,
                       int64_t nr, int64_t *scratch, int64_t scratch_len,
                       struct pg_audit_report *out);
/* The TLB audit: every CPU's cached translation that the page tables no
 * longer give (its mm gone; the leaf not present, not user, mapping
 * another pfn; or, for an entry that serves writes without a walk --
 * writable and dirty -- a leaf that is not writable and dirty).  Returns
 * how many, the first `max` of them in out.  Nothing changes. */
struct pg_tlb_report {
    int32_t cpu;
    uint64_t mm, addr, pfn;
    uint64_t leaf;     /* the page table's entry now (0: none) */
    uint8_t writable, dirty;
};
int64_t pg_audit_tlbs(pg_machine *m, struct pg_tlb_report *out, int64_t max);
/* The oracles' reads in bulk: for each of pfns[0..nr), the folio's head,
 * the page's flags with the head's folio-wide ones, the head's mapping and
 * order (each as pg_frame_info() gives it), in out[0..4*nr) as four rows
 * of nr (heads, flags, mappings, orders).  -PG_EINVAL for a pfn past the
 * last frame or a missing buffer, before any output; nothing changes. */
int pg_audit_frames(pg_machine *m, const uint64_t *pfns, int64_t nr, uint64_t *out);
/* One counter into *out (the rest of pg_stats_get() not built): */
#define PG_AUDIT_NR_FREE_NORMAL 0  /* free frames of ZONE_NORMAL */
#define PG_AUDIT_NR_FREE_MOVABLE 1 /* free frames of ZONE_MOVABLE */
#define PG_AUDIT_PINS_ALIVE 2      /* nr_foll_pin_acquired - nr_foll_pin_released */
int pg_audit_counter(pg_machine *m, int32_t which, int64_t *out);
/* The pages of mm's ranges (nr_ranges (start, end) pairs, page-aligned, in
 * the user VA) whose leaf -- a non-empty entry, as pg_range_leaves() lists
 * them, not special -- maps a folio with an anonymous head: their
 * addresses into addrs, range by range in address order, the first max of
 * them (the rest counted, not written), and how many each range has into
 * counts[0..nr_ranges).  Returns how many in all (more than max: call
 * again with room for them); -PG_EINVAL for a bad argument or mm before any work,
 * -PG_EFAULT when a leaf maps a frame past the last one.  Nothing changes. */
int64_t pg_audit_anon_leaves(pg_machine *m, uint64_t mmid, const uint64_t *ranges,
                             int64_t nr_ranges, uint64_t *addrs, int64_t max,
                             int64_t *counts);

/* ---- transparent huge pages (mm/huge_memory.c; the folio split: mm/frames.c) */
/* __split_huge_pmd(): replace the PMD leaf of an anonymous THP covering
 * addr by a PTE table of 512 entries with the same bits: clear the PMD,
 * flush the TLBs, fill a new table, publish it (release).  The folio stays
 * one folio, now PTE-mapped: its PMD mapping (one mapcount on the head, one
 * reference) becomes 512 PTE mappings (one mapcount per page, one
 * reference each).  Returns 1 if it split, 0 if no PMD leaf covers addr,
 * -PG_EINVAL for a hugetlb or non-anon leaf, -PG_ENOMEM when no table page
 * can be had (nothing changed).  IRQs must be on (-PG_EBUSY). */
int pg_split_huge_pmd(pg_machine *m, int cpu, uint64_t mm, uint64_t addr);
/* split_folio() of the anonymous THP containing pfn into 512 order-0
 * folios (see frames.c): 0, -PG_EBUSY while pinned or holding references
 * beyond one per mapping, -PG_EINVAL for anything but an anon THP.
 * cpu: the calling CPU (for the race window), or -1. */
int pg_split_folio(pg_machine *m, int cpu, uint64_t pfn);
/* collapse_huge_page() into the order-9 folio new_pfn (allocated, its
 * mapping / index / flags set by the caller, refcount 1, unmapped): the
 * PTE table under the PMD at addr (2 MiB aligned) must hold only none
 * entries, zero-page entries and anonymous pages, at least one of them
 * writable.  pmdp_collapse_flush (clear the PMD, flush), the IPI sync
 * (tlb_remove_table_sync_one), then every old folio must hold exactly one
 * reference per mapping and no pin (else the PMD is put back: -PG_EAGAIN);
 * copy the 512 pages, install the PMD leaf (pmd_bits | HUGE, the new
 * folio's pfn), free the old table by the machine's table-free mode, drop
 * the old pages' mappings and references.  0 on success, -PG_EINVAL when
 * the range cannot collapse (no table, a leaf, a swap-like / special /
 * non-anon page, nothing writable), -PG_EBUSY with IRQs off. */
int pg_collapse_pmd(pg_machine *m, int cpu, uint64_t mm, uint64_t addr,
                    uint64_t new_pfn, uint64_t pmd_bits);

/* ---- GUP reference counting (mm/gup.c) ------------------------------- */
/* try_grab_page() of the slow path on the folio containing pfn: pin == 0
 * takes a plain reference (FOLL_GET); pin != 0 a pin (FOLL_PIN): refcount
 * + PG_GUP_PIN_COUNTING_BIAS on a small folio, refcount + 1 and pincount + 1
 * on a large one; the zero page is never counted.  -PG_ENOMEM when the
 * folio's refcount is <= 0 (it is being freed). */
int pg_try_grab_page(pg_machine *m, uint64_t pfn, int pin);
/* gup_put_folio(): drop what refs grabs of the given kind took. */
int pg_gup_put(pg_machine *m, uint64_t pfn, int refs, int pin);
/* 1 if every page of pfns[0..n) holds what pg_gup_put_pages would drop
 * (consecutive pages of one folio counted together), else 0; -PG_EINVAL
 * for a bad pfn.  Nothing changes. */
int pg_gup_can_put(pg_machine *m, const uint64_t *pfns, int64_t n, int pin);
/* unpin_user_pages() / put_page() over an array, folio run by folio run. */
int pg_gup_put_pages(pg_machine *m, const uint64_t *pfns, int64_t n, int pin);

/* The slow path's batch follow_page_mask(): from start, for up to nr pages
 * of one VMA, grab every page whose leaf lets GUP take it without the
 * fault handler, under the mm's page-table lock, and store its pfn in
 * out[].  Stops at the first page that needs Python (not present, PROTNONE,
 * special, not writable for a write, an unshare, a TOUCH that must dirty a
 * clean folio through its file system).  Returns pages taken. */
#define PG_FOLLOW_WRITE 0x1
#define PG_FOLLOW_GET 0x2
#define PG_FOLLOW_PIN 0x4
#define PG_FOLLOW_TOUCH 0x8
/* a read-only FOLL_PIN|FOLL_LONGTERM in a COW mapping must unshare non-anon
 * pages too (gup_must_unshare() with a VMA) */
#define PG_FOLLOW_UNSHARE_FILE 0x10
/* stop at a PMD leaf of a THP (FOLL_SPLIT_PMD: Python splits it first) */
#define PG_FOLLOW_SPLIT_PMD 0x20
int64_t pg_follow_range(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                        int64_t nr, uint32_t how, uint64_t *out);
/* pg_follow_range() of all nr pages or none: taken only when every one can
 * be (and, with `longterm`, each folio is long-term pinnable); nr or 0 */
int64_t pg_follow_range_all(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                            int64_t nr, uint32_t how, int longterm, uint64_t *out);

/* ---- the anonymous fault in batches (mm/fault.c) ------------------------ */
/* do_anonymous_page() for each page of [start, start + nr pages) while its
 * PTE is none, under the mm lock: with PG_FAULT_WRITE a new exclusive anon
 * page (mapping, index + i, uptodate, LRU, PageAnonExclusive, mapcount 1;
 * PG_FAULT_MOVABLE: ZONE_MOVABLE first) mapped with pte_bits, else the
 * zero page mapped with pte_bits (special, neither writable nor dirty).
 * The caller has decided the VMA is anonymous, not hugetlb and holds no
 * THP there.  Stops at the first entry that is not none (a PMD leaf too).
 * Returns the pages faulted (0: none -- always so while a deterministic
 * schedule runs, which switches at the Python path's points) and sets
 * *stop_err to the error that stopped it at the next page (-ENOMEM for a
 * page or a table; 0 when it stopped at an entry already there); -EINVAL
 * for a bad argument, before anything is done. */
#define PG_FAULT_WRITE 0x1
#define PG_FAULT_MOVABLE 0x2
int64_t pg_fault_anon_range(pg_machine *m, uint64_t mm, uint64_t start, int64_t nr,
                            uint32_t how, uint64_t pte_bits, uint64_t mapping,
                            uint64_t index, int32_t *stop_err);

/* ---- GUP-fast (mm/gup.c) ---------------------------------------------- */
/* policy bits for pg_gup_fast */
#define PG_GUPF_WHITELIST 0x1       /* 6.5 folio_fast_pin_allowed() */
#define PG_GUPF_SECRETMEM_LRU 0x2   /* 6.5's page_is_secretmem() LRU shortcut */
#define PG_GUPF_UNSHARE_COW 0x4     /* 6.2 gup_must_unshare(): non-anon R/O long-term pins */
/* lockless_pages_from_mm(): with IRQs disabled on cpu, walk [start, start +
 * nr pages) reading each level once, grabbing pages as the kernel does
 * (SPEC §4.2-4.6); stops at the first page it cannot take.  The pages
 * taken form a prefix, stored in out[]; returns how many (0 when a
 * FOLL_PIN walk saw fork's write_protect_seq odd or changed, after dropping
 * its pins).  Never faults, never sleeps, takes no mm lock. */
int64_t pg_gup_fast(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                    int64_t nr, uint32_t gup_flags, uint32_t policy,
                    uint64_t *out);
/* why a pg_gup_fast walk stopped short (explain's trace says it) */
#define PG_FAST_STOP_NONE 0        /* it took every page */
#define PG_FAST_STOP_NOT_PRESENT 1 /* no table, or the entry is not present */
#define PG_FAST_STOP_PROTNONE 2    /* PROT_NONE / NUMA hinting entry */
#define PG_FAST_STOP_ACCESS 3      /* pte_access_permitted(): write-protected */
#define PG_FAST_STOP_SPECIAL 4     /* a special mapping: no struct page */
#define PG_FAST_STOP_GRAB 5        /* try_grab_folio(): refcount 0 or split */
#define PG_FAST_STOP_MOVABLE 6     /* long-term pin of a ZONE_MOVABLE folio */
#define PG_FAST_STOP_SECRETMEM 7   /* folio_is_secretmem() */
#define PG_FAST_STOP_WHITELIST 8   /* folio_fast_pin_allowed() refused */
#define PG_FAST_STOP_CHANGED 9     /* the PMD or PTE changed under the walk */
#define PG_FAST_STOP_UNSHARE 10    /* gup_must_unshare(): not exclusive anon */
#define PG_FAST_STOP_WP_SEQ 11     /* fork's write_protect_seq was odd or moved */
/* pg_gup_fast, also storing a PG_FAST_STOP_* in *why (why may be NULL) */
int64_t pg_gup_fast_why(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                        int64_t nr, uint32_t gup_flags, uint32_t policy,
                        uint64_t *out, int *why);
/* ---- one C call per small GUP call (mm/gup_call.c) ---------------------
 * Each folds the checks Python made in separate calls around the entry
 * points above, re-checking every argument.  Two answers are not errnos
 * (both above the kernel's MAX_ERRNO): -PG_CALL_DECLINED when the call must
 * take Python's ordinary path instead, before anything is done, and
 * -PG_CALL_VIOLATION in place of the result when the violation ring is not
 * empty after the call (Python raises them). */
#define PG_CALL_DECLINED 4096
#define PG_CALL_VIOLATION 4097
/* pg_gup_fast_why() (why not stored) for a call that may fall back to the
 * slow path: declined when IRQs are off on cpu, unless FOLL_FAST_ONLY */
int64_t pg_gup_fast_call(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                         int64_t nr, uint32_t gup_flags, uint32_t policy, uint64_t *out);
/* pg_gup_put_pages() by a caller holding the machine lock, then the RCU poll
 * of that lock's release when the put succeeded and recorded no violation;
 * declined while a scheduler session runs or IRQs are off on cpu */
int pg_gup_put_call(pg_machine *m, int cpu, const uint64_t *pfns, int64_t n, int pin);
/* get_user_pages() / pin_user_pages() of nr present pages of one VMA
 * whose checks Python made, all or nothing (pg_follow_range_all()), with
 * `longterm` also check_and_migrate_movable_pages()'s question: nr, or
 * -PG_CALL_DECLINED with nothing done (a page needs the general path, a
 * scheduler session, IRQs off on cpu); the RCU poll of the machine lock's
 * release after a call that took them */
int64_t pg_gup_slow_call(pg_machine *m, int cpu, uint64_t mm, uint64_t start, int64_t nr,
                         uint32_t how, int longterm, uint64_t *out);
/* pg_follow_range() */
int64_t pg_follow_call(pg_machine *m, int cpu, uint64_t mm, uint64_t start, int64_t nr,
                       uint32_t how, uint64_t *out);
/* the index of the first page of pfns[0..n) whose folio is not long-term
 * pinnable (check_and_migrate_movable_pages()'s test), n when none;
 * -PG_EINVAL for a bad or free pfn.  Nothing changes. */
int64_t pg_first_unpinnable(pg_machine *m, const uint64_t *pfns, int64_t n);

/* The entries on the path to addr, read once each without a lock, as a
 * walker sees them: out[0] = PGD entry ... out[3] = PTE entry (0 past the
 * leaf or the first none entry).  Returns the leaf level (1 or 2), 0 if
 * nothing is mapped.  For pygup/_reference.py, the plain-Python GUP-fast. */
int pg_walk_entries(pg_machine *m, int cpu, uint64_t mm, uint64_t addr, uint64_t *out);
/* fork's raw_write_seqcount_begin/end on mm->write_protect_seq (pg_copy_range
 * does it itself for COW ranges; exposed for tests and the scheduler) */
int64_t pg_mm_wp_seq(pg_machine *m, uint64_t mm);

/* ---- emulated CPUs, IRQs, IPIs, TLBs (arch/cpu.c; user access: mm/mmu.c) */
int pg_local_irq_disable(pg_machine *m, int cpu);
int pg_local_irq_enable(pg_machine *m, int cpu);
int pg_irqs_disabled(pg_machine *m, int cpu);
/* flush_tlb_range: flush cpu's own TLB for the range, then IPI every other
 * CPU that has had mm active and wait for each acknowledgement.  A CPU with
 * IRQs disabled acknowledges only when it enables them.  The caller must
 * have IRQs enabled (-PG_EBUSY otherwise: it would deadlock). */
int pg_flush_tlb_range(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                       uint64_t end);
/* An empty IPI to every other CPU, waiting for each (tlb_remove_table_sync_one). */
int pg_ipi_sync_all(pg_machine *m, int cpu);
/* A user load or store at addr on cpu, as the MMU does: IRQs off, TLB
 * lookup, page-table walk on a miss setting ACCESSED (and DIRTY on a
 * write) with a compare-and-swap, TLB fill, then the access to the frame's
 * content.  Returns PG_FAULT_NONE with *out = the value read (or written),
 * a positive PG_FAULT_* when the OS must handle a fault first, or -errno. */
int pg_user_access(pg_machine *m, int cpu, uint64_t mm, uint64_t addr,
                   int write, uint64_t value, uint64_t *out);
/* number of valid TLB entries cpu holds for mm at addr (0 or 1) */
int pg_tlb_probe(pg_machine *m, int cpu, uint64_t mm, uint64_t addr);

/* How a TLB shootdown reaches the other CPUs (pg_set_tlb_flush_mode):
 * IPI (x86): an interrupt each target acknowledges, so a CPU with IRQs off
 * (GUP-fast) holds the flush - and so the page frees after it - off;
 * BROADCAST (arm64 TLBI, paravirt flushes): the hardware invalidates every
 * TLB without interrupting anyone; it waits only for a user access in
 * flight, never for an IRQs-off section.  There only RCU (and the
 * tlb_remove_table_sync_one IPI, which stays an IPI) protects GUP-fast. */
#define PG_TLB_FLUSH_IPI 0
#define PG_TLB_FLUSH_BROADCAST 1
/* returns the old mode, -PG_EINVAL for an unknown one */
int pg_set_tlb_flush_mode(pg_machine *m, int mode);

/* ==== deterministic interleavings (kernel/sched.c; pygup/sched.py) ==============
 * A session runs nr CPUs, each an OS thread that attached as CPU k, one at
 * a time: the running CPU goes on until it reaches a scheduling point (a
 * PG_YIELD race window the filter selects, a Python-level point, or any
 * step of a spin-wait on another CPU: IPI acknowledgement, grace period,
 * spinlock, the Python machine lock), parks there, and the scheduler picks
 * the next CPU.  Picks follow the explicit schedule while it lasts (entries
 * naming a finished CPU are skipped), then: with a schedule, the last CPU
 * again while it is runnable, else the lowest runnable one; without one, a
 * seeded choice among the runnable CPUs.  A spinning CPU is runnable only
 * when no other is; when every live CPU has only spun for spin_limit
 * consecutive picks the session is deadlocked: every CPU stays parked and
 * pg_sched_status() reports it.  Each pick is traced as (cpu, the point it
 * resumes from, spun); replaying the cpu column as a schedule reproduces
 * the run.  Outside a session PG_YIELD is one relaxed load and a branch. */
#define PG_SCHED_ACTIVE 0x1    /* a session exists */
#define PG_SCHED_DONE 0x2      /* every CPU attached and detached */
#define PG_SCHED_DEADLOCK 0x4  /* every live CPU spun for spin_limit picks */
#define PG_SCHED_TRUNCATED 0x8 /* the trace outgrew its bound (not replayable) */
#define PG_SCHED_NAME_MAX 64
/* Start a session of nr CPUs (0..nr-1).  schedule: NULL for seeded picks,
 * else len CPU ids to follow first.  spin_limit 0: the default (100000).
 * -PG_EBUSY if a session exists, -PG_EINVAL on bad arguments. */
int pg_sched_begin(pg_machine *m, int nr, uint64_t seed, const int32_t *schedule,
                   int64_t len, uint64_t spin_limit);
/* Make a registered point (pg_race_window_name) a scheduling point.
 * Before any attach (-PG_EBUSY after); -PG_EINVAL for a name that is not
 * registered.  Once one name is given, PG_YIELD points and Python points
 * outside the set run through (spin points always schedule). */
int pg_sched_filter(pg_machine *m, const char *name);
/* The calling thread becomes CPU cpu of the session; returns once it is
 * picked the first time (the first pick waits for all nr to attach).
 * -PG_EINVAL without a session or for a bad cpu, -PG_EBUSY if taken. */
int pg_sched_attach(pg_machine *m, int cpu);
/* The calling CPU is done: pass the turn on, leave the session. */
int pg_sched_detach(pg_machine *m);
/* A named scheduling point in code outside C (Python): 1 if the caller is
 * a scheduled CPU (it parked and was picked again), else 0 at once.  spin:
 * the caller waits on another CPU (it is retrying a try-lock).  The name
 * may be a registered one or a free one (traced as given; a filter can
 * select only registered names). */
int pg_sched_yield(pg_machine *m, const char *name, int spin);
int pg_sched_status(pg_machine *m);
/* picks so far (the trace length) */
int64_t pg_sched_steps(pg_machine *m);
/* trace entry i: cpu, whether it was spinning, the point's name */
int pg_sched_trace(pg_machine *m, int64_t i, int32_t *cpu, int32_t *spun,
                   char *name, int namelen);
/* For the schedule explorer (pygup/tools/explore.py): record, at every
 * pick, a digest of the machine's state (before any attach; -PG_EBUSY
 * after).  The runnable masks are recorded always. */
int pg_sched_explore(pg_machine *m);
/* trace entry i: the CPUs that could have been picked there (waiting and
 * not spinning; 0 when only spinners were left: nothing to choose), and
 * the state digest at the pick (0 unless pg_sched_explore) */
int pg_sched_trace_choice(pg_machine *m, int64_t i, uint64_t *runnable, uint64_t *digest);
/* Watch one address (before any attach): every pick records the leaf that
 * maps addr in mm and the folio behind it (or behind the last leaf seen
 * there); pg_sched_trace_watch fills out[6] = {leaf, pfn, refcount,
 * pincount, mapcount, mapping word} for pick i (-PG_EINVAL unless
 * watching).  The step-by-step story of a replayed schedule. */
int pg_sched_watch(pg_machine *m, uint64_t mmid, uint64_t addr);
int pg_sched_trace_watch(pg_machine *m, int64_t i, uint64_t *out);
/* A scheduled CPU took or dropped the Python machine lock: the model may
 * change under it, so the explorer's digest must change too.  Nothing for
 * other threads. */
void pg_sched_note_model(pg_machine *m);
/* End the session (the trace goes with it).  -PG_EBUSY while a CPU is
 * attached and the session is not deadlocked (a deadlocked one cannot end:
 * its CPUs stay parked on it). */
int pg_sched_end(pg_machine *m);

/* ---- the race-window registry (kernel/race.h) --------------------------
 * Every registered scheduling point, by id 0 .. count-1.  name / reason:
 * NULL for a bad id; flags: PG_RACE_* bits, -PG_EINVAL for a bad id. */
#define PG_RACE_YIELD 0x1 /* a race window in C (PG_YIELD) */
#define PG_RACE_SPIN 0x2  /* a step of a wait on another CPU */
#define PG_RACE_PY 0x4    /* a fixed name Python code yields at */
#define PG_RACE_AMP 0x8   /* the stress amplifier spins here */
int pg_race_window_count(void);
const char *pg_race_window_name(int id);
const char *pg_race_window_reason(int id);
int pg_race_window_flags(int id);

/* ---- RCU (kernel/rcu.c) ------------------------------------------------- */
int pg_rcu_read_lock(pg_machine *m, int cpu);
int pg_rcu_read_unlock(pg_machine *m, int cpu);
/* wait until every CPU has left the read-side section it was in (IRQs-off
 * regions count); the caller must not be in one itself (-PG_EBUSY) */
int pg_synchronize_rcu(pg_machine *m, int cpu);
/* run every callback whose grace period has ended; never waits */
int pg_rcu_poll(pg_machine *m);
/* wait for a grace period and run every callback queued before the call */
int pg_rcu_barrier(pg_machine *m, int cpu);

/* The tools (tools/host.h, tools/stress/stress.h) have their own headers
 * and cdef sections: the emulator never includes them. */

/* PYGUP_CDEF_END */

#endif /* PYGUP_H */
