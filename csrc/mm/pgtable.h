/*
 * mm/pgtable.h - page tables inside the core: the mm table, the table
 * pool and its deferred freeing, the lockless walk (the MMU's and
 * GUP-fast's) and the locked walks the mutators of mm/memory.c share.
 * The exported calls are in pygup.h.
 */
#ifndef PYGUP_MM_PGTABLE_H
#define PYGUP_MM_PGTABLE_H

#include "internal.h"

/* bits 52..63 (NX, protection keys...) are not modelled */
#define PG_PTE_UNMODELLED_BITS (~(uint64_t)PG_PTE_PFN_MASK & ~(uint64_t)0xfff)
/* what flag updates may not touch: the pfn and the level marker */
#define PG_PTE_FIXED_BITS \
    ((uint64_t)PG_PTE_PFN_MASK | (uint64_t)PG_PTE_HUGE | PG_PTE_UNMODELLED_BITS)

static inline unsigned pg_level_shift(int level)
{
    return PG_PAGE_SHIFT + 9u * (unsigned)(level - 1);
}

static inline unsigned pg_level_index(uint64_t addr, int level)
{
    return (unsigned)((addr >> pg_level_shift(level)) & (PG_PTRS_PER_TABLE - 1));
}

static inline bool pg_is_leaf(uint64_t e, int level)
{
    return e != 0 && (level == PG_LEVEL_PTE ||
                      (level == PG_LEVEL_PMD && (e & PG_PTE_HUGE)));
}

static inline uint64_t pg_leaf_pages(int level)
{
    return level == PG_LEVEL_PMD ? PG_PMD_NR : 1;
}

/* The pages of a leaf at addr (the start of its level's span) that lie
 * in [start, end): indices i in [lo, hi) of addr + i pages, both within
 * pg_leaf_pages(level) (hi == lo: none) -- a walk callback's clip of a
 * leaf to the range it was asked for, without a test per page. */
struct pg_leaf_span {
    uint64_t lo, hi;
};

static inline struct pg_leaf_span pg_leaf_clip(uint64_t addr, int level, uint64_t start,
                                               uint64_t end)
{
    uint64_t n = pg_leaf_pages(level), size = PG_PAGE_SIZE;
    uint64_t lo = start > addr ? (start - addr + size - 1) >> PG_PAGE_SHIFT : 0;
    uint64_t hi = end > addr ? (end - addr + size - 1) >> PG_PAGE_SHIFT : 0;
    if (lo > n)
        lo = n;
    if (hi > n)
        hi = n;
    return (struct pg_leaf_span){lo, hi > lo ? hi : lo};
}

/* the pfn that a leaf maps at addr (a PMD leaf maps 512 of them) */
static inline uint64_t pg_leaf_pfn_at(uint64_t e, int level, uint64_t addr)
{
    uint64_t pfn = pg_pte_pfn(e);
    if (level == PG_LEVEL_PMD)
        pfn += (addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1);
    return pfn;
}

int pg_pgtable_init(pg_machine *m);
void pg_pgtable_fini(pg_machine *m);

/* ---- mm table ---- */
struct pg_mm *pg_mm_get(pg_machine *m, uint64_t id);
/* pg_mm_get + take the mm's page-table lock (NULL if the id is stale) */
struct pg_mm *pg_mm_lock(pg_machine *m, uint64_t id);
struct pg_mm *pg_mm_lock_op(pg_machine *m, int cpu, uint64_t id, int *err);
/* give a destroyed mm's slot back (its state is FREE, its lock dropped) */
void pg_mm_slot_free(pg_machine *m, struct pg_mm *mm);

/* ---- table pool ---- */
struct pg_table *pg_table_get(pg_machine *m, uint64_t id);
/* a new, empty, live table page of a level (NULL when none can be had) */
struct pg_table *pg_table_alloc(pg_machine *m, int level, uint64_t mmid);
/* the non-leaf entry that links table t in */
uint64_t pg_table_entry(struct pg_table *t);
/* Follow a non-leaf entry; NULL + violation for a table that is not (or no
 * longer) the live child it should be. */
struct pg_table *pg_child_table(pg_machine *m, int cpu, uint64_t e,
                                int child_level, uint64_t mmid);
/* Free n unlinked tables (chained through rcu.next) once no walker can
 * hold them: after an IPI sync (tlb_remove_table_sync_one) or a grace
 * period, by the machine's table_free mode. */
void pg_tlb_remove_tables(pg_machine *m, int cpu, struct pg_table *list, int64_t n);

/* ---- lockless walk ----
 * Reads each level once with acquire, checks every table it lands on is
 * LIVE (violation otherwise).  Returns the level of the leaf (1/2) with
 * *pte, 0 if nothing is mapped (*pte = the none entry), -PG_EFAULT after a
 * use-after-free violation. */
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

/* ---- locked walks (the mm lock held) ---- */
/* Down to the slot at `level` covering addr.  With alloc, missing
 * intermediate tables are created.  Returns the slot, its table in *tp, or
 * NULL with *err: -PG_EEXIST if a leaf sits above `level` (or no error and
 * *tp = NULL when nothing is mapped there and alloc is false). */
_Atomic uint64_t *pg_walk_to_level(pg_machine *m, struct pg_mm *mm, uint64_t addr,
                                   int level, bool alloc, struct pg_table **tp,
                                   int *err);
/* whatever leaf covers addr: its slot, table and level (0: none) */
int pg_find_leaf(pg_machine *m, struct pg_mm *mm, uint64_t addr,
                 _Atomic uint64_t **slotp, struct pg_table **tp);
/* Visit every leaf in [start, end) in address order.  cb returns <0 to
 * fail, >0 to stop, 0 to go on. */
typedef int (*pg_leaf_cb)(pg_machine *m, void *ctx, struct pg_table *t,
                          _Atomic uint64_t *slot, uint64_t addr, int level);
int pg_walk_range(pg_machine *m, struct pg_mm *mm, uint64_t start, uint64_t end,
                  pg_leaf_cb cb, void *ctx);
/* [start, end) must be page-aligned, ordered and inside the user VA */
int pg_check_range(uint64_t start, uint64_t end);
/* A PMD leaf that the range covers only in part would need a split, which
 * is the caller's (Python's) job: -PG_EINVAL before anything changes. */
int pg_check_no_partial_huge(pg_machine *m, struct pg_mm *mm, uint64_t start,
                             uint64_t end);

#endif /* PYGUP_MM_PGTABLE_H */
