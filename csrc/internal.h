/*
 * internal.h - what the .c files of the C core share and Python never sees:
 * struct layouts, atomics with an explicit memory order, the lock word, and
 * inline accessors that only read or write those layouts.
 *
 * It is the ground of the core (with pygup.h): it calls no function of any
 * layer.  Each layer's functions are declared in that layer's own header
 * (lib/report.h, kernel/sched.h, arch/cpu.h, mm/frames.h, mm/pgtable.h ...),
 * and a file includes only headers of its own layer or below:
 *
 *     lib  <-  kernel  <-  arch  <-  mm  <-  machine.c  <-  tools
 *     (within kernel: race <- sched <- rcu;
 *      within mm: frames <- pgtable <- memory, mmu <- gup)
 *
 * tests/unit/test_c_layers.py checks the rule on every include and call.
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
/* smp_mb__after_atomic(): a full barrier after an atomic read-modify-write.
 * On x86-64 every RMW here is a LOCK-prefixed instruction, itself a full
 * barrier, so (as in the kernel) only the compiler must be kept from
 * moving accesses across; elsewhere it is smp_mb(). */
#if defined(__x86_64__) || defined(__i386__)
#define pg_smp_mb__after_atomic() atomic_signal_fence(memory_order_seq_cst)
#else
#define pg_smp_mb__after_atomic() pg_smp_mb()
#endif

/* ---- the lock word ------------------------------------------------------
 * Test-and-test-and-set.  Taking it is kernel/sched.h's pg_spin_lock (each
 * step of its wait is a scheduling point); the raw variant below is for
 * the ground (lib/), whose critical sections are a few stores that never
 * reach a yield point, so it needs no scheduler: it only backs off to the
 * OS (emulated CPUs may outnumber the real cores). */
typedef struct {
    _Atomic int locked;
} pg_spinlock;

static inline void pg_spin_init(pg_spinlock *l)
{
    atomic_init(&l->locked, 0);
}

static inline void pg_raw_spin_lock(pg_spinlock *l)
{
    unsigned spins = 0;
    while (atomic_exchange_explicit(&l->locked, 1, memory_order_acquire)) {
        while (pg_load_relaxed(&l->locked))
            if (++spins % 64 == 0)
                sched_yield();
    }
}

static inline void pg_raw_spin_unlock(pg_spinlock *l)
{
    pg_store_release(&l->locked, 0);
}

#define PG_VIOL_RING 64
#define PG_VIOL_MSG 256

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

/* what the scheduler records of the watched address at a pick (the
 * explorer's step-by-step story; kernel/sched.c) */
struct pg_sched_watch {
    uint64_t pte, pfn, mapping;
    int32_t ref, pin, map;
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
    _Atomic uint32_t race_amplify; /* the stress amplifier's knob (kernel/race.c) */
    /* failure injection (lib/fault_inject.c): countdowns, and how many fired */
    _Atomic int64_t fail_nth[PG_FAIL_NR];
    _Atomic uint64_t fail_fired[PG_FAIL_NR];
    /* deterministic scheduler (sched.c): PG_YIELD tests sched_on only */
    _Atomic int sched_on;
    struct pg_sched *sched;    /* the session, while sched_on */
    /* the schedule explorer's view of the machine, installed by machine.c
     * (it sees every layer; the scheduler below it does not): a digest of
     * the state, and the watched address's leaf and folio */
    uint64_t (*sched_digest)(pg_machine *m);
    void (*sched_observe)(pg_machine *m, uint64_t mmid, uint64_t addr, uint64_t *last_pfn,
                          struct pg_sched_watch *out);
    _Atomic int tlb_flush_mode; /* PG_TLB_FLUSH_IPI / _BROADCAST */

    pg_spinlock viol_lock;
    _Atomic int viol_pending; /* recorded and not popped */
    _Atomic uint64_t viol_total;
    unsigned viol_first, viol_count, viol_dropped;
    char viol_msg[PG_VIOL_RING][PG_VIOL_MSG];
};

/* ---- accessors (data only) ---------------------------------------------- */
/* is a protection switch (PG_MUT_*) on?  One predictable branch. */
static inline bool pg_mutant(pg_machine *m, uint32_t bit)
{
    return __builtin_expect(pg_load_relaxed(&m->mutants) & bit, 0) != 0;
}

static inline bool pg_cpu_ok(pg_machine *m, int cpu)
{
    return cpu >= 0 && cpu < m->nr_cpus;
}

static inline uint64_t pg_frame_head(pg_machine *m, uint64_t pfn)
{
    return pg_load_acquire(&m->frames[pfn].head);
}

static inline bool pg_cpu_irqs_off(pg_machine *m, int cpu)
{
    return pg_load_acquire(&m->cpus[cpu].irq_nesting) > 0;
}

static inline bool pg_cpu_in_rcu(pg_machine *m, int cpu)
{
    return (pg_load_acquire(&m->cpus[cpu].rcu_seq) & 1) != 0;
}

/* the id of a live mm slot: generation * PG_MM_MAX + slot */
static inline uint64_t pg_mm_id(pg_machine *m, struct pg_mm *mm)
{
    return (uint64_t)pg_load_relaxed(&mm->generation) * PG_MM_MAX +
           (uint64_t)(mm - m->mms);
}

#endif /* PYGUP_INTERNAL_H */
