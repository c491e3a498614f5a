/*
 * kernel/race.h - THE race-window registry: every named point where the
 * deterministic scheduler may switch CPUs, each with the one-line reason it
 * is a race window (what a racing CPU can change there).
 *
 * One list feeds everything:
 *  - the enum ids PG_YIELD (kernel/sched.h) takes, so a misspelt window is
 *    a compile error, not a point that never stops;
 *  - the names the scheduler traces and pg_sched_filter() accepts (an
 *    unknown name is -EINVAL, Python raises ValueError);
 *  - the stress amplifier (PG_RACE_AMP windows: a stress pinner spins
 *    there so that real-thread races land in them more often);
 *  - Python (pg_race_window_count / _name / _reason / _flags).
 *
 * Kinds (flags, PG_RACE_* in pygup.h):
 *  YIELD  a race window in C, marked with PG_YIELD;
 *  SPIN   a step of a wait on another CPU (always a scheduling point);
 *  PY     a fixed name Python code yields at (pygup.sched.yield_point or
 *         the machine lock); Python may still yield at other, free names,
 *         but only registered ones can be named in points=;
 *  AMP    the stress amplifier spins here (timing only: no decision of
 *         the walk changes);
 *  0      "start", where every CPU of a session stands before its first
 *         pick.
 *
 * X(id, name, flags, reason), in code order (the GUP-fast side first).
 */
#ifndef PYGUP_KERNEL_RACE_H
#define PYGUP_KERNEL_RACE_H

#include "internal.h"

#define PG_RACE_WINDOWS(X)                                                          \
    X(PG_W_START, "start", 0,                                                       \
      "each CPU of a session stands here before its first pick (not a window)")     \
    /* ---- GUP-fast (mm/gup.c) and the lockless walk (mm/pgtable.c) ---- */       \
    X(PG_W_FAST_WP_SEQ_READ, "fast_wp_seq_read", PG_RACE_YIELD,                     \
      "GUP-fast saw fork's write_protect_seq even: a fork can begin sharing pages now") \
    X(PG_W_WALK_ENTRY_READ, "walk_entry_read", PG_RACE_YIELD | PG_RACE_AMP,         \
      "a lockless walker read a table entry: an unmapper can clear it and free the table") \
    X(PG_W_FAST_PTE_READ, "fast_pte_read", PG_RACE_YIELD | PG_RACE_AMP,             \
      "GUP-fast read a leaf and found its folio, not grabbed yet: munmap can free the folio, " \
      "a split can make the page its own folio") \
    X(PG_W_FAST_GRABBED, "fast_grabbed", PG_RACE_YIELD,                             \
      "GUP-fast holds a reference: the entry it came from can still change")        \
    X(PG_W_FAST_SECRETMEM_MAPPING_READ, "fast_secretmem_mapping_read", PG_RACE_AMP, \
      "page_is_secretmem() read ->mapping once: truncation can release the record " \
      "(amplifier only: a scheduling point here would move every seeded schedule)") \
    X(PG_W_FAST_BEFORE_RECHECK, "fast_before_recheck", PG_RACE_YIELD,               \
      "GUP-fast about to re-read PMD and PTE: a clear or collapse now must make it back off") \
    X(PG_W_FAST_RECHECKED, "fast_rechecked", PG_RACE_YIELD,                         \
      "the entry is re-validated, ->mapping not read yet: truncation can clear it") \
    X(PG_W_FAST_MAPPING_READ, "fast_mapping_read", PG_RACE_YIELD | PG_RACE_AMP,     \
      "folio_fast_pin_allowed() read ->mapping: truncation can release the record, RCU keeps it") \
    X(PG_W_FAST_WP_SEQ_RECHECK, "fast_wp_seq_recheck", PG_RACE_YIELD,               \
      "GUP-fast enabled IRQs, write_protect_seq not re-read: an overlapping fork must show") \
    /* ---- the MMU (mm/mmu.c) ---- */                                              \
    X(PG_W_WALK_AD_CAS_FAILED, "walk_ad_cas_failed", PG_RACE_YIELD,                 \
      "the MMU's accessed/dirty update lost to a change of the entry: it walks again") \
    /* ---- page-table freeing (mm/pgtable.c) ---- */                               \
    X(PG_W_FREE_PGTABLES_UNLINKED, "free_pgtables_unlinked", PG_RACE_YIELD,         \
      "tables unlinked, not freed: a walker with IRQs off may still be inside one") \
    X(PG_W_FREE_PGTABLES_SYNCED, "free_pgtables_synced", PG_RACE_YIELD,             \
      "the IPI sync returned: no IRQs-off walker may still hold an unlinked table") \
    /* ---- unmap, writeback, fork (mm/memory.c) ---- */                            \
    X(PG_W_ZAP_CLEARED, "zap_cleared", PG_RACE_YIELD,                               \
      "zap cleared the entries, no flush yet: TLBs and GUP-fast walkers see the old pages") \
    X(PG_W_ZAP_FLUSHED, "zap_flushed", PG_RACE_YIELD,                               \
      "TLBs flushed, counts not dropped: a grab that missed the clear must be gone") \
    X(PG_W_MREMAP_MOVED, "mremap_moved", PG_RACE_YIELD,                             \
      "mremap moved the entries, old TLBs not flushed: a CPU can still use the old address") \
    X(PG_W_MREMAP_FLUSHED, "mremap_flushed", PG_RACE_YIELD,                         \
      "mremap flushed the old range: a GUP-fast walk that read the old entry must back off") \
    X(PG_W_MKCLEAN_CLEARED, "mkclean_cleared", PG_RACE_YIELD,                       \
      "folio_mkclean cleared the entry, no shootdown yet: a stale writable TLB entry can write") \
    X(PG_W_MKCLEAN_FLUSHED, "mkclean_flushed", PG_RACE_YIELD,                       \
      "shootdown done, the clean entry not back yet: a user write faults meanwhile") \
    X(PG_W_FORK_WP_SEQ_BEGIN, "fork_wp_seq_begin", PG_RACE_YIELD,                   \
      "fork made write_protect_seq odd: a FOLL_PIN GUP-fast overlapping now backs off") \
    X(PG_W_FORK_PIN_CHECK, "fork_pin_check", PG_RACE_YIELD,                         \
      "fork read the folio's pins: a GUP-fast pin after this escapes the copy decision") \
    X(PG_W_COPY_BEFORE_WRPROTECT, "copy_before_wrprotect", PG_RACE_YIELD,           \
      "fork about to write-protect an entry it shares: a pin or a write can land first") \
    X(PG_W_FORK_WP_SEQ_END, "fork_wp_seq_end", PG_RACE_YIELD,                       \
      "fork's copy done, write_protect_seq still odd: GUP-fast must still back off") \
    /* ---- THP split and collapse (mm/huge_memory.c, mm/frames.c) ---- */         \
    X(PG_W_SPLIT_PMD_CLEARED, "split_pmd_cleared", PG_RACE_YIELD,                   \
      "__split_huge_pmd cleared and flushed the PMD leaf, the PTE table not in yet: walkers see none") \
    X(PG_W_SPLIT_FOLIO_FROZEN, "split_folio_frozen", PG_RACE_YIELD,                 \
      "split_folio froze the refcount at 0: a GUP-fast that found the old folio cannot take a reference") \
    X(PG_W_COLLAPSE_PMD_CLEARED, "collapse_pmd_cleared", PG_RACE_YIELD,             \
      "collapse cleared the PMD (pmdp_collapse_flush) and synced: the old PTE table is still intact") \
    X(PG_W_COLLAPSE_ISOLATED, "collapse_isolated", PG_RACE_YIELD,                   \
      "collapse checked the old pages' references, the PTEs still map them: a late grab escapes the check") \
    /* ---- folios and address_space records (mm/frames.c) ---- */                  \
    X(PG_W_FOLIO_MAPPING_SET, "folio_mapping_set", PG_RACE_YIELD,                   \
      "->mapping just changed (truncation): GUP-fast may be between re-check and read") \
    X(PG_W_AS_RELEASE_BEFORE_CALL_RCU, "as_release_before_call_rcu", PG_RACE_YIELD, \
      "an address_space is dead, its grace period not queued: readers may hold its id") \
    X(PG_W_AS_RCU_FREED, "as_rcu_freed", PG_RACE_YIELD,                             \
      "the record is poisoned after its grace period: a reader still holding it is a UAF") \
    /* ---- RCU (kernel/rcu.c) ---- */                                              \
    X(PG_W_RCU_BEFORE_CALLBACK, "rcu_before_callback", PG_RACE_YIELD,               \
      "a grace period ended, a callback is about to free what readers held")        \
    /* ---- waits on another CPU ---- */                                            \
    X(PG_W_IPI_WAIT, "ipi_wait", PG_RACE_SPIN,                                      \
      "waiting for the IPI acknowledgement of a CPU with IRQs off (arch/cpu.c)")   \
    X(PG_W_RCU_GP_WAIT, "rcu_gp_wait", PG_RACE_SPIN,                                \
      "waiting for a grace period: another CPU is in a read-side section")         \
    X(PG_W_SPIN_LOCK, "spin_lock", PG_RACE_SPIN,                                    \
      "waiting for a spinlock another CPU holds")                                   \
    /* ---- fixed Python-level points ---- */                                       \
    X(PG_W_MACHINE_LOCK, "machine_lock", PG_RACE_SPIN | PG_RACE_PY,                 \
      "waiting for the Python machine lock (pygup/sched.py SchedLock) another CPU holds") \
    X(PG_W_IRQS_OFF, "irqs_off", PG_RACE_PY,                                        \
      "an op parked inside an IRQs-off section: shootdowns and IPI syncs to it wait") \
    X(PG_W_GUP_FAULTED_IN, "gup_faulted_in", PG_RACE_PY,                            \
      "GUP faulted a page in, not looked it up again: mmap_lock is shared, MADV_DONTNEED can zap it") \
    X(PG_W_MADV_DONTNEED_ZAP, "madv_dontneed_zap", PG_RACE_PY,                      \
      "MADV_DONTNEED about to zap under mmap_lock for read: GUP and faults run beside it") \
    X(PG_W_BETWEEN_WRITES, "between_writes", PG_RACE_PY,                            \
      "an op parked between two user writes: writeback can clean the folio between")

#define PG_RACE_ENUM_ID(id, name, flags, reason) id,
#define PG_RACE_ENUM_FLAGS(id, name, flags, reason) id##_FLAGS = (flags),
enum pg_race_window { PG_RACE_WINDOWS(PG_RACE_ENUM_ID) PG_NR_RACE_WINDOWS };
/* id##_FLAGS: a window's flags as a constant, so PG_YIELD's amplifier test
 * folds away at the windows that have no PG_RACE_AMP */
enum { PG_RACE_WINDOWS(PG_RACE_ENUM_FLAGS) };
_Static_assert(PG_NR_RACE_WINDOWS < 256, "the scheduler's name table holds 256");

/* the id of a registered name, -PG_EINVAL if there is none */
int pg_race_window_lookup(const char *name);

/* ---- the stress amplifier -----------------------------------------------
 * The knob is the machine's race_amplify word (off unless a stress run
 * turned it on) and the calling thread's spin count (0 on every thread
 * but the ones the stress driver picked).  Timing only. */
void pg_race_amplifier_set(pg_machine *m, bool on);
void pg_race_amplifier_thread(uint32_t spins);
void pg_race_amplify_spin(void);

#define PG_RACE_AMPLIFY(m, id)                                                \
    ((((id##_FLAGS) & PG_RACE_AMP) &&                                         \
      __builtin_expect(pg_load_relaxed(&(m)->race_amplify) != 0, 0))          \
         ? pg_race_amplify_spin()                                             \
         : (void)0)

#endif /* PYGUP_KERNEL_RACE_H */
