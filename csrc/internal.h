/*
 * internal.h - what the .c files of the C core share and Python never sees:
 * struct layouts, atomics with an explicit memory order, the spinlock,
 * PG_BUG_ON / PG_WARN_ON (which record a violation in the machine instead
 * of aborting the interpreter), the PG_YIELD race-window hook, and the
 * cross-file internal functions.
 */
#ifndef PYGUP_INTERNAL_H
#define PYGUP_INTERNAL_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pygup.h"

/* ---- atomics ------------------------------------------------------------
 * Every shared word is _Atomic and every access names its memory order, so
 * a reader of the code sees which accesses publish and which consume.  The
 * wrappers are macros because C11 atomics are type-generic. */
#define pg_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define pg_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define pg_load_seqcst(p) atomic_load_explicit((p), memory_order_seq_cst)
#define pg_store_relaxed(p, v) \
    atomic_store_explicit((p), (v), memory_order_relaxed)
#define pg_store_release(p, v) \
    atomic_store_explicit((p), (v), memory_order_release)
#define pg_store_seqcst(p, v) \
    atomic_store_explicit((p), (v), memory_order_seq_cst)
/* strong CAS; *expected is updated with the current value on failure */
#define pg_cas(p, expected, desired)                                  \
    atomic_compare_exchange_strong_explicit((p), (expected), (desired), \
                                            memory_order_acq_rel,       \
                                            memory_order_acquire)
#define pg_xchg(p, v) atomic_exchange_explicit((p), (v), memory_order_acq_rel)
#define pg_fetch_add(p, v) \
    atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define pg_fetch_add_relaxed(p, v) \
    atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define pg_fetch_add_seqcst(p, v) \
    atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define pg_fetch_sub_relaxed(p, v) \
    atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)
#define pg_fetch_or(p, v) atomic_fetch_or_explicit((p), (v), memory_order_acq_rel)
#define pg_fetch_or_seqcst(p, v) \
    atomic_fetch_or_explicit((p), (v), memory_order_seq_cst)
#define pg_fetch_and(p, v) \
    atomic_fetch_and_explicit((p), (v), memory_order_acq_rel)
/* smp_mb(): orders earlier stores before later loads (Dekker patterns:
 * RCU entry vs grace-period snapshot, cpumask set vs shootdown) */
#define pg_smp_mb() atomic_thread_fence(memory_order_seq_cst)

/* ---- spinlock -----------------------------------------------------------
 * Test-and-test-and-set with sched_yield after a while: emulated CPUs are
 * OS threads that may outnumber the real cores (two on CI). */
typedef struct {
    _Atomic int locked;
} pg_spinlock;

static inline void pg_spin_init(pg_spinlock *l)
{
    atomic_init(&l->locked, 0);
}

/* ---- scheduled mode (sched.c) ---------------------------------------------
 * The thread-local machine is set only on a thread that runs as a CPU of a
 * deterministic-scheduler session; every spin-wait step of such a thread
 * hands the turn back (it cannot progress until another CPU acts). */
struct pg_machine;
extern _Thread_local struct pg_machine *pg_sched_tls_machine;
/* park the calling CPU at a yield point (spin: it is waiting, not runnable)
 * and return when the scheduler picks it again; a no-op on a thread that is
 * not a scheduled CPU of m, or a point the session's filter leaves out */
void pg_sched_hook(struct pg_machine *m, const char *name, int spin);

/* one step of a spin-wait on another CPU (IPI acknowledgement, grace
 * period, spinlock): a scheduling point in scheduled mode, else relax */
static inline void pg_cpu_wait(unsigned *spins, const char *why)
{
    if (__builtin_expect(pg_sched_tls_machine != NULL, 0)) {
        pg_sched_hook(pg_sched_tls_machine, why, 1);
        return;
    }
    if (++*spins >= 64) {
        *spins = 0;
        sched_yield();
    }
}

static inline void pg_cpu_relax(unsigned *spins)
{
    pg_cpu_wait(spins, "spin_lock");
}

static inline void pg_spin_lock(pg_spinlock *l)
{
    unsigned spins = 0;
    for (;;) {
        if (!atomic_exchange_explicit(&l->locked, 1, memory_order_acquire))
            return;
        while (pg_load_relaxed(&l->locked))
            pg_cpu_relax(&spins);
    }
}

static inline void pg_spin_unlock(pg_spinlock *l)
{
    pg_store_release(&l->locked, 0);
}

/* ---- violations ---------------------------------------------------------
 * PG_BUG_ON / PG_WARN_ON evaluate to the truth of cond, so they can guard
 * the refusal that follows:  if (PG_BUG_ON(m, x < 0, "...", x)) return ...;
 * They never abort (CPython builds with -DNDEBUG and aborting would kill
 * the interpreter): the message goes into the machine's bounded ring and
 * Python raises pygup.InvariantError.  The format is printf-like. */
void pg_violation_record(pg_machine *m, const char *kind, const char *file,
                         int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define PG_BUG_ON(m, cond, ...)                                           \
    (__builtin_expect(!!(cond), 0)                                        \
         ? (pg_violation_record((m), "BUG", __FILE__, __LINE__, __VA_ARGS__), \
            1)                                                            \
         : 0)
#define PG_WARN_ON(m, cond, ...)                                          \
    (__builtin_expect(!!(cond), 0)                                        \
         ? (pg_violation_record((m), "WARN", __FILE__, __LINE__, __VA_ARGS__), \
            1)                                                            \
         : 0)

#define PG_VIOL_RING 64
#define PG_VIOL_MSG 256

/* ---- race-window hook ---------------------------------------------------
 * Named yield points at every window where another CPU's step changes the
 * outcome.  Outside scheduled mode one predictable branch on a relaxed load
 * of the machine's flag; in scheduled mode a scheduler step (sched.c),
 * taken by the calling thread's CPU ("cpu" is informative only and may be
 * -1 where the caller has no CPU). */
#define PG_YIELD(m, cpu, name)                                            \
    ((void)(cpu), __builtin_expect(pg_load_relaxed(&(m)->sched_on), 0)    \
                      ? pg_sched_hook((m), (name), 0)                     \
                      : (void)0)

/* ---- stress race amplifier (stress.c) -----------------------------------
 * pg_stress_run()'s window_spins knob, off (0) unless such a run is in
 * progress: a stress pinner spins at GUP-fast's read-then-use windows
 * (entry read -> next check, PTE read -> grab, ->mapping read -> record
 * lookup) so that real-thread races land in them more often.  Timing only:
 * no decision of the walk changes.  Otherwise one relaxed load. */
void pg_stress_window(struct pg_machine *m);
#define PG_STRESS_WINDOW(m)                                                    \
    (__builtin_expect(pg_load_relaxed(&(m)->stress_window) != 0, 0)            \
         ? pg_stress_window(m)                                                 \
         : (void)0)

/* ---- geometry helpers --------------------------------------------------- */
#define PG_VA_LIMIT ((uint64_t)PG_TASK_SIZE_MAX + PG_PAGE_SIZE) /* 1 << 47 */
#define PG_PMD_SIZE ((uint64_t)1 << PG_PMD_SHIFT)
#define PG_PUD_SHIFT 30
#define PG_PGD_SHIFT 39
#define PG_TABLE_FLAGS ((uint64_t)(PG_PTE_PRESENT | PG_PTE_WRITE | PG_PTE_USER))
#define PG_LEVEL_PUD 3
#define PG_LEVEL_PGD 4

static inline uint64_t pg_pte_pfn(uint64_t pte)
{
    return (pte & PG_PTE_PFN_MASK) >> PG_PAGE_SHIFT;
}

/* a leaf that maps a frame (hardware-present, or PROTNONE which keeps the
 * pfn); other non-zero leaves would be swap-like entries */
static inline bool pg_pte_maps_frame(uint64_t pte)
{
    return (pte & (PG_PTE_PRESENT | PG_PTE_PROTNONE)) != 0;
}

/* ---- RCU ----------------------------------------------------------------- */
struct pg_rcu_head;
typedef void (*pg_rcu_fn)(pg_machine *m, struct pg_rcu_head *h);
struct pg_rcu_head {
    struct pg_rcu_head *next;
    pg_rcu_fn func;
};

#define PG_RCU_NBATCH 8
struct pg_rcu_batch {
    struct pg_rcu_head *head;
    struct pg_rcu_head **tail;
    uint64_t snap[PG_MAX_CPUS]; /* each CPU's sequence when closed */
};

struct pg_rcu_state {
    pg_spinlock lock;
    struct pg_rcu_batch open;                /* still collecting */
    struct pg_rcu_batch closed[PG_RCU_NBATCH]; /* FIFO ring */
    unsigned first, count;
};

/* ---- frames --------------------------------------------------------------
 * One per 4 KiB frame.  refcount, pincount, mapping and index are the
 * folio's and live on the head; mapcount, content and ANON_EXCLUSIVE are
 * per page; the other flags are folio-wide on the head. */
struct pg_frame {
    _Atomic int32_t refcount;
    _Atomic int32_t pincount;
    _Atomic int32_t mapcount;
    _Atomic uint32_t flags;
    _Atomic uint64_t mapping;
    _Atomic uint64_t index;
    _Atomic uint64_t content;
    _Atomic uint32_t head;  /* pfn of the folio's head (self when free) */
    _Atomic uint32_t order; /* folio order, same on every frame */
    uint32_t free_next;     /* block-local free list, under the zone lock */
    uint8_t zone;           /* constant after machine creation */
};
_Static_assert(sizeof(struct pg_frame) <= 64, "frame struct must stay <= 64 B");

#define PG_F_PER_PAGE ((uint32_t)(PG_F_HEAD | PG_F_TAIL | PG_F_ANON_EXCLUSIVE))
#define PG_F_STRUCTURAL \
    ((uint32_t)(PG_F_FREE | PG_F_HEAD | PG_F_TAIL | PG_F_ZERO))
#define PG_NIL UINT32_MAX

/* A 512-frame aligned block: the unit of order-9 allocation.  A block is
 * WHOLE (on the zone's whole list), SPLIT (serving order-0 frames from its
 * own free list; on the partial list while it has some free) or HUGE
 * (allocated as one order-9 folio).  A SPLIT block whose 512 frames are all
 * free again becomes WHOLE: that is the re-merge. */
enum { PG_BLOCK_WHOLE, PG_BLOCK_SPLIT, PG_BLOCK_HUGE };
struct pg_block {
    int32_t prev, next; /* in the whole or partial list, -1 = none */
    uint32_t free_head; /* SPLIT: first free frame */
    int32_t nr_free;    /* SPLIT: free frames in the block */
    uint8_t state;
    uint8_t on_partial;
};

struct pg_zone {
    pg_spinlock lock;
    uint32_t first_block, end_block;
    int32_t whole, partial; /* list heads, -1 = empty */
    _Atomic uint64_t nr_free;
};

/* ---- address_space records ----------------------------------------------
 * Chunked and never moved or returned while the machine lives, so a
 * lockless reader of a stale id reads a poisoned record, not unmapped
 * memory. */
#define PG_AS_MAGIC_LIVE 0xa5a5f11eu
#define PG_AS_MAGIC_PENDING 0xa5a5dead /* released, RCU grace period running */
#define PG_AS_MAGIC_FREED 0x6b6b6b6bu  /* poison after the grace period */
#define PG_AS_CHUNK 1024
#define PG_AS_MAX_CHUNKS 256
struct pg_as {
    _Atomic uint32_t magic;
    _Atomic uint32_t generation;
    _Atomic uint32_t kind;
    uint32_t free_next; /* under as_lock */
    uint32_t slot;      /* id - 1, constant once the chunk exists */
    struct pg_rcu_head rcu;
};

/* ---- page tables ---------------------------------------------------------
 * Table pages come from a chunked pool that never moves or shrinks while the
 * machine lives.  A freed table is poisoned (magic FREED, entries
 * PG_TABLE_POISON) so a late walker reads poison and is caught. */
#define PG_TABLE_MAGIC_LIVE 0x7ab1e11eu
#define PG_TABLE_MAGIC_FREED 0xdead7ab1u
#define PG_TABLE_POISON ((uint64_t)0x6b6b6b6b6b6b6b6aULL) /* PRESENT clear */
#define PG_TABLE_CHUNK 64
#define PG_TABLE_MAX_CHUNKS 16384
struct pg_table {
    _Atomic uint32_t magic;
    _Atomic uint32_t generation;
    _Atomic int32_t level; /* 1 = PTE table ... 4 = PGD */
    _Atomic int64_t mm;    /* owner mm id, for messages */
    int32_t nr_used;       /* non-zero entries; under the owner's mm lock */
    uint32_t free_next;    /* pool free list, under pool_lock */
    uint32_t id;           /* constant once the chunk exists */
    struct pg_rcu_head rcu;
    _Atomic uint64_t e[PG_PTRS_PER_TABLE];
};

/* ---- mm ------------------------------------------------------------------- */
#define PG_MM_MAX 4096
enum { PG_MM_FREE, PG_MM_LIVE, PG_MM_DYING };
struct pg_mm {
    pg_spinlock lock;          /* serialises every page-table mutator */
    _Atomic uint32_t state;
    _Atomic uint32_t generation; /* id = generation * PG_MM_MAX + slot */
    _Atomic uint64_t cpumask;  /* CPUs that may cache this mm's entries */
    _Atomic uint32_t pgd;      /* table id of the PGD */
    uint32_t free_next;        /* under mm_table_lock */
    _Atomic uint32_t wp_seq;   /* write_protect_seq: odd while fork copies */
};

/* ---- CPUs ----------------------------------------------------------------- */
struct pg_tlb_entry {
    uint64_t mm_plus1; /* 0 = invalid */
    uint64_t vpn;
    uint64_t pfn;
    uint8_t writable, dirty;
};

enum { PG_IPI_FLUSH_RANGE, PG_IPI_FLUSH_MM, PG_IPI_SYNC };
struct pg_ipi_req {
    struct pg_ipi_req *next;
    int target;                /* the CPU it was queued on */
    int kind;
    uint64_t mm;
    uint64_t start_vpn, end_vpn;
    _Atomic int done;
};

struct pg_cpu {
    pg_spinlock lock;          /* guards nesting, the IPI list, the TLB */
    _Atomic int irq_nesting;   /* written under lock; read anywhere */
    int rcu_nesting;           /* rcu_read_lock depth, under lock */
    _Atomic uint64_t rcu_seq;  /* odd while in a read-side section */
    /* the OS thread (gettid) that opened the current read-side / IRQs-off
     * section, 0 outside one: a waiter that finds it gone ends the section
     * (pg_cpu_reap_orphan) instead of waiting for ever */
    _Atomic int32_t section_tid;
    struct pg_ipi_req *pending;
    struct pg_tlb_entry tlb[PG_TLB_ENTRIES];
};

/* ---- the machine ---------------------------------------------------------- */
#define PG_PIN_STAT_SHARDS 16
struct pg_machine {
    uint64_t nr_frames, nr_movable;
    int nr_cpus;
    int table_free_mode;

    struct pg_frame *frames;
    struct pg_block *blocks;
    struct pg_zone zones[2];

    pg_spinlock as_lock;
    struct pg_as *_Atomic as_chunks[PG_AS_MAX_CHUNKS];
    uint32_t as_nr_chunks, as_next, as_free; /* under as_lock */
    _Atomic uint64_t as_live, as_pending;

    pg_spinlock pool_lock;
    struct pg_table *_Atomic table_chunks[PG_TABLE_MAX_CHUNKS];
    uint32_t table_nr_chunks, table_next, table_free; /* under pool_lock */
    _Atomic uint64_t table_pages_live, table_pages_pending;

    pg_spinlock mm_table_lock;
    uint32_t mm_free;  /* free slot list head */
    uint32_t mm_next;  /* next never-used slot */
    struct pg_mm mms[PG_MM_MAX];

    struct pg_cpu cpus[PG_MAX_CPUS];
    struct pg_rcu_state rcu;

    _Atomic uint64_t ipis_sent, tlb_shootdowns, tlb_flushed_entries;
    _Atomic uint64_t orphans_reaped; /* sections ended for a vanished thread */
    _Atomic uint64_t rcu_grace_periods, rcu_callbacks_run;
    /* nr_foll_pin_acquired / _released, sharded per thread so that pinners
     * on different CPUs do not fight over one cache line */
    struct {
        _Atomic uint64_t acquired, released;
        char pad[48];
    } pin_stats[PG_PIN_STAT_SHARDS];
    _Atomic uint32_t mutants;  /* PG_MUT_* protection switches */
    _Atomic uint32_t stress_window; /* stress.c's window_spins; 0 = off */
    /* deterministic scheduler (sched.c): PG_YIELD tests sched_on only */
    _Atomic int sched_on;
    struct pg_sched *sched;    /* the session, while sched_on */
    _Atomic int tlb_flush_mode; /* PG_TLB_FLUSH_IPI / _BROADCAST */

    pg_spinlock viol_lock;
    _Atomic int viol_pending; /* recorded and not popped */
    _Atomic uint64_t viol_total;
    unsigned viol_first, viol_count, viol_dropped;
    char viol_msg[PG_VIOL_RING][PG_VIOL_MSG];
};

/* ---- cross-file internals ------------------------------------------------ */
/* is a protection switch (PG_MUT_*) on?  One predictable branch. */
static inline bool pg_mutant(pg_machine *m, uint32_t bit)
{
    return __builtin_expect(pg_load_relaxed(&m->mutants) & bit, 0) != 0;
}

/* this thread's shard of the pin statistics */
unsigned pg_stat_shard(void);
static inline void pg_count_pins(pg_machine *m, bool acquired, uint64_t n)
{
    unsigned s = pg_stat_shard();
    pg_fetch_add_relaxed(acquired ? &m->pin_stats[s].acquired : &m->pin_stats[s].released, n);
}

static inline bool pg_cpu_ok(pg_machine *m, int cpu)
{
    return cpu >= 0 && cpu < m->nr_cpus;
}

/* frames.c */
int pg_frames_init(pg_machine *m);
void pg_frames_fini(pg_machine *m);
void pg_as_fini(pg_machine *m);
static inline uint64_t pg_frame_head(pg_machine *m, uint64_t pfn)
{
    return pg_load_acquire(&m->frames[pfn].head);
}
/* drop refs on the folio containing pfn (no bounds check) */
int64_t pg_folio_put_internal(pg_machine *m, uint64_t pfn, int refs);
/* "add unless zero" on pfn's folio: new count, or -PG_EINVAL if zero */
int64_t pg_folio_try_get(pg_machine *m, uint64_t pfn, int refs);
int64_t pg_mapcount_add_internal(pg_machine *m, uint64_t pfn, int delta);
/* a record still readable under RCU (live or pending); NULL + violation
 * if it is poisoned: the lockless mapping check of GUP-fast uses it */
struct pg_as *pg_as_lookup_rcu(pg_machine *m, int cpu, uint64_t id);

/* pgtable.c */
int pg_pgtable_init(pg_machine *m);
void pg_pgtable_fini(pg_machine *m);
struct pg_mm *pg_mm_get(pg_machine *m, uint64_t id);
/* pg_mm_get + take the mm's page-table lock (NULL if the id is stale) */
struct pg_mm *pg_mm_lock(pg_machine *m, uint64_t id);
struct pg_table *pg_table_get(pg_machine *m, uint64_t id);
void pg_mm_cpumask_set(pg_machine *m, struct pg_mm *mm, int cpu);
/* Lockless walk (the MMU's and GUP-fast's): reads each level once with
 * acquire, checks every table it lands on is LIVE (violation otherwise).
 * Returns the level of the leaf (1/2) with *pte, 0 if nothing is mapped
 * (*pte = the none entry), -PG_EFAULT after a use-after-free violation. */
int pg_walk_lockless(pg_machine *m, int cpu, struct pg_mm *mm, uint64_t addr,
                     uint64_t *pte, _Atomic uint64_t **slot);
/* The same walk, also reporting the PMD-level entry and its slot (a table
 * entry or a PMD leaf), which GUP-fast re-checks after its grab. */
struct pg_walk {
    uint64_t pmd, pte;
    _Atomic uint64_t *pmd_slot, *pte_slot;
    struct pg_table *table; /* the table holding the leaf */
    int level;
};
int pg_walk_lockless_ex(pg_machine *m, int cpu, struct pg_mm *mm, uint64_t addr,
                        struct pg_walk *w);

/* cpu.c */
void pg_cpus_init(pg_machine *m);
/* flush_tlb_range to the CPUs in mask (all if all_cpus); caller checked
 * cpu and that its IRQs are enabled */
int pg_flush_tlb_mm_range(pg_machine *m, int cpu, struct pg_mm *mm,
                          uint64_t mmid, uint64_t start, uint64_t end,
                          bool all_cpus);
/* pg_ipi_sync_all for a caller that checked its arguments */
int pg_ipi_sync_internal(pg_machine *m, int cpu);
static inline bool pg_cpu_irqs_off(pg_machine *m, int cpu)
{
    return pg_load_acquire(&m->cpus[cpu].irq_nesting) > 0;
}

/* sched.c */
void pg_sched_fini(pg_machine *m);

/* rcu.c */
void pg_rcu_init(pg_machine *m);
void pg_call_rcu(pg_machine *m, struct pg_rcu_head *h, pg_rcu_fn fn);
/* entry/exit of a read-side section; called with the cpu lock held by
 * cpu.c when the combined (IRQs-off + rcu_read_lock) depth crosses 0 */
void pg_rcu_cpu_enter(pg_machine *m, int cpu);
/* every this many steps of a wait on another CPU, the waiter checks that
 * CPU's section owner still exists (one cheap system call) */
#define PG_ORPHAN_POLL 4096
bool pg_cpu_reap_orphan(pg_machine *m, int cpu);
void pg_rcu_cpu_exit(pg_machine *m, int cpu);
static inline bool pg_cpu_in_rcu(pg_machine *m, int cpu)
{
    return (pg_load_acquire(&m->cpus[cpu].rcu_seq) & 1) != 0;
}

#endif /* PYGUP_INTERNAL_H */
