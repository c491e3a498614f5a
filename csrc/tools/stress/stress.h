/*
 * tools/stress/stress.h - the native stress drivers' interface (cffi reads
 * the part between the cdef markers, after pygup.h's).  A tool, not the
 * emulator: it drives the core through its exported and internal calls;
 * nothing in the core includes this.
 */
#ifndef PYGUP_TOOLS_STRESS_H
#define PYGUP_TOOLS_STRESS_H

#include "pygup.h"

/* PYGUP_CDEF_BEGIN */

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

/* PYGUP_CDEF_END */

#endif /* PYGUP_TOOLS_STRESS_H */
