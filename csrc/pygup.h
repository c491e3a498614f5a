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
#define PG_MUT_ALL 0xfff

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

/* ---- frames / folios (frames.c) ---------------------------------------- */
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

/* ---- address_space records (frames.c) ---------------------------------- */
/* New record of the given PG_AS_* kind; returns its id (>= 1). */
int64_t pg_as_new(pg_machine *m, uint32_t kind);
/* The record stops being live now and is freed after an RCU grace period
 * (call_rcu).  A later lookup of a freed record is a use-after-free. */
int pg_as_release(pg_machine *m, uint64_t id);
/* kind of a live record, -PG_ENOENT if it is freed / pending */
int64_t pg_as_kind(pg_machine *m, uint64_t id);

/* ---- mm and page tables (pgtable.c) ------------------------------------ */
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

/* ---- GUP reference counting (gup_fast.c) ------------------------------- */
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
int64_t pg_follow_range(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                        int64_t nr, uint32_t how, uint64_t *out);

/* ---- GUP-fast (gup_fast.c) ---------------------------------------------- */
/* policy bits for pg_gup_fast */
#define PG_GUPF_WHITELIST 0x1       /* 6.5 folio_fast_pin_allowed() */
#define PG_GUPF_SECRETMEM_LRU 0x2   /* 6.5's page_is_secretmem() LRU shortcut */
/* lockless_pages_from_mm(): with IRQs disabled on cpu, walk [start, start +
 * nr pages) reading each level once, grabbing pages as the kernel does
 * (SPEC §4.2-4.6); stops at the first page it cannot take.  The pages
 * taken form a prefix, stored in out[]; returns how many (0 when a
 * FOLL_PIN walk saw fork's write_protect_seq odd or changed, after dropping
 * its pins).  Never faults, never sleeps, takes no mm lock. */
int64_t pg_gup_fast(pg_machine *m, int cpu, uint64_t mm, uint64_t start,
                    int64_t nr, uint32_t gup_flags, uint32_t policy,
                    uint64_t *out);
/* The entries on the path to addr, read once each without a lock, as a
 * walker sees them: out[0] = PGD entry ... out[3] = PTE entry (0 past the
 * leaf or the first none entry).  Returns the leaf level (1 or 2), 0 if
 * nothing is mapped.  For pygup/_reference.py, the plain-Python GUP-fast. */
int pg_walk_entries(pg_machine *m, int cpu, uint64_t mm, uint64_t addr, uint64_t *out);
/* fork's raw_write_seqcount_begin/end on mm->write_protect_seq (pg_copy_range
 * does it itself for COW ranges; exposed for tests and the scheduler) */
int64_t pg_mm_wp_seq(pg_machine *m, uint64_t mm);

/* ---- emulated CPUs, IRQs, IPIs, TLBs (cpu.c) --------------------------- */
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

/* ==== deterministic interleavings (sched.c; pygup/sched.py) ==============
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
/* Make a yield point name a scheduling point.  Before any attach; once one
 * name is given, PG_YIELD points outside the set run through. */
int pg_sched_filter(pg_machine *m, const char *name);
/* The calling thread becomes CPU cpu of the session; returns once it is
 * picked the first time (the first pick waits for all nr to attach).
 * -PG_EINVAL without a session or for a bad cpu, -PG_EBUSY if taken. */
int pg_sched_attach(pg_machine *m, int cpu);
/* The calling CPU is done: pass the turn on, leave the session. */
int pg_sched_detach(pg_machine *m);
/* A named scheduling point in code outside C (Python): 1 if the caller is
 * a scheduled CPU (it parked and was picked again), else 0 at once.  spin:
 * the caller waits on another CPU (it is retrying a try-lock). */
int pg_sched_yield(pg_machine *m, const char *name, int spin);
int pg_sched_status(pg_machine *m);
/* picks so far (the trace length) */
int64_t pg_sched_steps(pg_machine *m);
/* trace entry i: cpu, whether it was spinning, the point's name */
int pg_sched_trace(pg_machine *m, int64_t i, int32_t *cpu, int32_t *spun,
                   char *name, int namelen);
/* End the session (the trace goes with it).  -PG_EBUSY while a CPU is
 * attached and the session is not deadlocked (a deadlocked one cannot end:
 * its CPUs stay parked on it). */
int pg_sched_end(pg_machine *m);

/* ---- RCU (rcu.c) -------------------------------------------------------- */
int pg_rcu_read_lock(pg_machine *m, int cpu);
int pg_rcu_read_unlock(pg_machine *m, int cpu);
/* wait until every CPU has left the read-side section it was in (IRQs-off
 * regions count); the caller must not be in one itself (-PG_EBUSY) */
int pg_synchronize_rcu(pg_machine *m, int cpu);
/* run every callback whose grace period has ended; never waits */
int pg_rcu_poll(pg_machine *m);
/* wait for a grace period and run every callback queued before the call */
int pg_rcu_barrier(pg_machine *m, int cpu);

/* ==== native stress drivers (stress.c; pygup/stress.py) =================
 * pg_stress_run() builds its own mm, page tables and frames on the machine,
 * runs real threads (each its own emulated CPU: thread k is CPU k, so the
 * machine needs nr_pinners + the scenario's workers CPUs) against one
 * another for a time / iteration budget, checks what the races produced,
 * tears everything down and reports counters.  Nothing else may use the
 * machine meanwhile.  Core violations (use-after-free, negative counts,
 * write-notify bypass) stay in the machine's ring for the caller to pop;
 * the result counts them. */
/* scenarios: pinners (pg_gup_fast, verify, unpin) against ... */
#define PG_STRESS_UNMAP 0     /* unmappers: zap + flush, free_pgtables, repopulate */
#define PG_STRESS_COLLAPSE 1  /* THP collapse: detach a full PTE table, flush, huge PMD; split back */
#define PG_STRESS_TRUNCATE 2  /* truncaters: clear mapping, release the record (RCU), zap, refill */
#define PG_STRESS_WRITEBACK 3 /* mkclean loops against a user writer (+ pinners) */
#define PG_STRESS_FORK 4      /* forkers: COW copy_range into a scratch mm, check, destroy */
#define PG_STRESS_NR_SCENARIOS 5
/* pin variants the pinners rotate through (bit i = variant i) */
#define PG_STRESS_V_PIN 0x1              /* FOLL_PIN */
#define PG_STRESS_V_PIN_WRITE 0x2        /* FOLL_PIN | FOLL_WRITE */
#define PG_STRESS_V_PIN_LONGTERM 0x4     /* FOLL_PIN | FOLL_LONGTERM */
#define PG_STRESS_V_PIN_LT_WRITE 0x8     /* FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE */
#define PG_STRESS_V_GET 0x10             /* FOLL_GET */
#define PG_STRESS_V_GET_WRITE 0x20       /* FOLL_GET | FOLL_WRITE */
#define PG_STRESS_V_ALL 0x3f
/* operation counters (pg_stress_result.ops) */
#define PG_STRESS_OP_FAST_CALLS 0    /* pg_gup_fast calls */
#define PG_STRESS_OP_PAGES_TAKEN 1   /* pages pinned / got (and later released) */
#define PG_STRESS_OP_FAST_EMPTY 2    /* calls that took nothing (the slow path's turn) */
#define PG_STRESS_OP_UNMAPS 3        /* unmap cycles (zap, free tables, refill) */
#define PG_STRESS_OP_TABLES_FREED 4  /* page-table pages freed or queued */
#define PG_STRESS_OP_COLLAPSES 5     /* collapse + split cycles */
#define PG_STRESS_OP_TRUNCATES 6
#define PG_STRESS_OP_MKCLEANS 7      /* pg_pte_mkclean calls */
#define PG_STRESS_OP_WRITES 8        /* user writes that landed */
#define PG_STRESS_OP_WRITE_FAULTS 9  /* write faults handled (page_mkwrite) */
#define PG_STRESS_OP_FORKS 10
#define PG_STRESS_OP_PAGES_MAPPED 11 /* fresh frames mapped by refills */
#define PG_STRESS_OP_BACKOFFS 12     /* collapses given up (no huge folio free) */
#define PG_STRESS_NR_OPS 16
/* checks (pg_stress_result.fails / first_fail_*) */
#define PG_STRESS_CHK_STALE_REF 0     /* a reference taken after the PTE/PMD was cleared outlived the flush */
#define PG_STRESS_CHK_PIN_MISMATCH 1  /* stable range: the page taken is not the page mapped there */
#define PG_STRESS_CHK_PIN_LOST 2      /* a held pin/ref is not (any more) in the folio's counts */
#define PG_STRESS_CHK_WHITELIST 3     /* 6.5: PIN|LONGTERM|WRITE fast pin of a non-shmem file folio */
#define PG_STRESS_CHK_SECRETMEM 4     /* GUP-fast returned a secretmem folio */
#define PG_STRESS_CHK_FORK_SHARED 5   /* a pinned page is mapped (shared) in the fork's child */
#define PG_STRESS_CHK_NOT_EXCLUSIVE 6 /* a pinned anon page lost PageAnonExclusive while pinned */
#define PG_STRESS_CHK_WB_BYPASS 7     /* a write landed after mkclean without a write fault */
#define PG_STRESS_CHK_BALANCE 8       /* end of run: counts != what tables + cache hold; leaks */
#define PG_STRESS_CHK_VIOLATION 9     /* core violations recorded during the run */
#define PG_STRESS_CHK_ERROR 10        /* a core call failed unexpectedly */
#define PG_STRESS_NR_CHECKS 12
#define PG_STRESS_MSG_BYTES 4096

struct pg_stress_params {
    int scenario;           /* PG_STRESS_* */
    int nr_pinners;         /* >= 0 */
    int nr_workers;         /* unmappers / collapsers / truncaters / cleaners (each
                               with its own writer) / forkers, >= 1 */
    int ranges_per_worker;  /* each range lives in its own 1 GiB region */
    int range_pages;        /* pages per range, 1..512 (collapse: always 512) */
    int max_pin_pages;      /* pages per pg_gup_fast call, 1..64 */
    uint32_t variants;      /* PG_STRESS_V_* mask */
    uint32_t policy;        /* PG_GUPF_* bits for pg_gup_fast */
    uint64_t seed;
    uint64_t duration_ns;   /* wall-clock budget (0: only max_iters) */
    uint64_t max_iters;     /* per thread (0: only the duration) */
    uint32_t hold_spins;    /* pinners hold what they took this long */
    uint32_t dwell_spins;   /* truncate: time a truncated folio stays mapped */
    uint32_t window_spins;  /* race amplifier: pinners spin this long inside
                               GUP-fast's read-then-use windows (entry read ->
                               check, PTE read -> grab, ->mapping read ->
                               lookup); timing only, 0 = off */
    int stop_on_failure;    /* stop every thread at the first failed check */
};

struct pg_stress_result {
    uint64_t ops[PG_STRESS_NR_OPS];
    uint64_t fails[PG_STRESS_NR_CHECKS];
    uint64_t first_fail_ns[PG_STRESS_NR_CHECKS];   /* since the start; 0 = never */
    uint64_t first_fail_iter[PG_STRESS_NR_CHECKS]; /* the detecting thread's iteration */
    uint64_t elapsed_ns;
    uint64_t iters_pinners;  /* iterations, all pinners together */
    uint64_t iters_workers;  /* iterations, all other threads together */
    int nr_threads;
    int msg_len;
    char msgs[PG_STRESS_MSG_BYTES]; /* the first few failures, one per line */
};

/* fill p with the defaults of a scenario (-PG_EINVAL for an unknown one) */
int pg_stress_defaults(struct pg_stress_params *p, int scenario);
/* the CPUs a run with these parameters needs */
int pg_stress_nr_threads(const struct pg_stress_params *p);
/* Run one campaign.  0 (whatever the checks found: see r), or -PG_EINVAL
 * for bad parameters / too few CPUs, -PG_ENOMEM when the setup does not
 * fit, -PG_EAGAIN when a thread cannot be started. */
int pg_stress_run(pg_machine *m, const struct pg_stress_params *p,
                  struct pg_stress_result *r);

/* ---- live-kernel probes (host.c; pygup/host.py, the oracle) ------------- */
/* These make real system calls on the machine running pygup; they never
 * touch an emulated machine.  Each returns what the kernel returned: 0, a
 * byte count, an fd, or -errno.  Addresses are the process's own. */
int pg_host_mmap(uint64_t len, int prot, int flags, int fd, int64_t offset,
                 uint64_t *addr);
int pg_host_munmap(uint64_t addr, uint64_t len);
int pg_host_mprotect(uint64_t addr, uint64_t len, int prot);
int pg_host_msync(uint64_t addr, uint64_t len, int flags);
/* a user load (write=0) or store of value at every 4 KiB page of the range,
 * as memset() faults pages in; a SIGSEGV gives -EFAULT, a SIGBUS -EIO */
int pg_host_touch(uint64_t addr, uint64_t len, int write, uint64_t value);
int pg_host_memfd_secret(unsigned int flags);
/* io_uring_setup(1) works: 0, or -ENOSYS / -EPERM ... */
int pg_host_io_uring_available(void);
/* IORING_REGISTER_BUFFERS of one iovec on a fresh ring, then
 * IORING_UNREGISTER_BUFFERS: FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM */
int pg_host_io_uring_register(uint64_t addr, uint64_t len);
/* register + unregister of one iovec `iterations` times on one ring, each
 * timed with CLOCK_MONOTONIC: the sum and the fastest, in ns */
int pg_host_io_uring_register_ns(uint64_t addr, uint64_t len, int iterations,
                                 uint64_t *total_ns, uint64_t *min_ns);
/* 8 bytes through /proc/self/mem (FOLL_FORCE [| FOLL_WRITE]) */
int64_t pg_host_proc_mem_write(uint64_t addr, uint64_t value);
int64_t pg_host_proc_mem_read(uint64_t addr, uint64_t *value);
/* 8 bytes with process_vm_writev / readv on this process */
int64_t pg_host_process_vm_writev(uint64_t addr, uint64_t value);
int64_t pg_host_process_vm_readv(uint64_t addr, uint64_t *value);
/* pread(fd, addr, len, offset) on an fd the caller opened O_DIRECT */
int64_t pg_host_o_direct_read(int fd, uint64_t addr, uint64_t len, int64_t offset);
/* vmsplice one iovec into a fresh (non-blocking) pipe, then close it */
int64_t pg_host_vmsplice(uint64_t addr, uint64_t len);

/* PYGUP_CDEF_END */

#endif /* PYGUP_H */
