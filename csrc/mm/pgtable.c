/*
 * mm/pgtable.c - address spaces (mm) and their 4-level page tables: the mm
 * table, the table-page pool and its deferred freeing, the lockless walk the
 * MMU and GUP-fast use, the locked walks, and the single-entry operations
 * (lookup / set / modify / clear).  The range operations built on them
 * (zap, free_pgtables, fork's copy, change_protection, mkclean, destroy)
 * are in mm/memory.c.
 *
 * Locking rule: a mutator may wait for IPI acknowledgements while holding
 * the mm lock, because code running with IRQs disabled (user accesses,
 * GUP-fast) never takes an mm lock.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lib/fault_inject.h"
#include "lib/report.h"
#include "kernel/rcu.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/pgtable.h"

/* ---- the table-page pool ------------------------------------------------ */

struct pg_table *pg_table_get(pg_machine *m, uint64_t id)
{
    if (id == 0 || id / PG_TABLE_CHUNK >= PG_TABLE_MAX_CHUNKS)
        return NULL;
    struct pg_table *chunk = pg_load_acquire(&m->table_chunks[id / PG_TABLE_CHUNK]);
    return chunk ? &chunk[id % PG_TABLE_CHUNK] : NULL;
}

struct pg_table *pg_table_alloc(pg_machine *m, int level, uint64_t mmid)
{
    uint32_t id;
    if (pg_should_fail(m, PG_FAIL_TABLE))
        return NULL; /* as when the pool cannot grow */
    pg_spin_lock(&m->pool_lock);
    if (m->table_free != PG_NIL) {
        id = m->table_free;
        m->table_free = pg_table_get(m, id)->free_next;
    } else {
        uint32_t c = m->table_next / PG_TABLE_CHUNK;
        if (c >= PG_TABLE_MAX_CHUNKS || !pg_load_relaxed(&m->table_chunks[c])) {
            struct pg_table *chunk =
                c < PG_TABLE_MAX_CHUNKS ? calloc(PG_TABLE_CHUNK, sizeof(*chunk)) : NULL;
            if (!chunk) {
                pg_spin_unlock(&m->pool_lock);
                return NULL;
            }
            for (uint32_t i = 0; i < PG_TABLE_CHUNK; i++)
                chunk[i].id = c * PG_TABLE_CHUNK + i;
            /* published once and never freed while the machine lives: a
             * walker holding a stale id always reads valid memory */
            pg_store_release(&m->table_chunks[c], chunk);
            m->table_nr_chunks = c + 1;
        }
        id = m->table_next++;
    }
    pg_spin_unlock(&m->pool_lock);

    struct pg_table *t = pg_table_get(m, id);
    pg_fetch_add_relaxed(&t->generation, 1); /* reuse bumps it again */
    pg_store_relaxed(&t->level, level);
    pg_store_relaxed(&t->mm, (int64_t)mmid);
    t->nr_used = 0;
    for (int i = 0; i < PG_PTRS_PER_TABLE; i++)
        pg_store_relaxed(&t->e[i], 0);
    /* LIVE last; the entry that links the table in is stored with release
     * after this, so a walker that follows it sees a clean, live table */
    pg_store_release(&t->magic, PG_TABLE_MAGIC_LIVE);
    pg_fetch_add_relaxed(&m->table_pages_live, 1);
    return t;
}

/* Poison and recycle.  The caller guarantees no walker can still reach it
 * (IPI sync or grace period); if one does, it reads FREED and reports. */
static void table_free_now(pg_machine *m, struct pg_table *t)
{
    pg_store_release(&t->magic, PG_TABLE_MAGIC_FREED);
    pg_fetch_add_relaxed(&t->generation, 1);
    for (int i = 0; i < PG_PTRS_PER_TABLE; i++)
        pg_store_release(&t->e[i], PG_TABLE_POISON);
    pg_spin_lock(&m->pool_lock);
    t->free_next = m->table_free;
    m->table_free = t->id;
    pg_spin_unlock(&m->pool_lock);
    pg_fetch_sub_relaxed(&m->table_pages_live, 1);
}

static void table_free_rcu(pg_machine *m, struct pg_rcu_head *h)
{
    struct pg_table *t = (struct pg_table *)((char *)h - offsetof(struct pg_table, rcu));
    table_free_now(m, t);
    pg_fetch_sub_relaxed(&m->table_pages_pending, 1);
}

uint64_t pg_table_entry(struct pg_table *t)
{
    return ((uint64_t)t->id << PG_PAGE_SHIFT) | PG_TABLE_FLAGS;
}

/* Follow a non-leaf entry; report a table that is not (or no longer) the
 * live child it should be.  Used by walkers and mutators alike. */
struct pg_table *pg_child_table(pg_machine *m, int cpu, uint64_t e,
                                    int child_level, uint64_t mmid)
{
    uint64_t id = pg_pte_pfn(e);
    struct pg_table *t = pg_table_get(m, id);
    if (PG_BUG_ON(m, !t, "cpu %d: entry %#llx points at no table page", cpu,
                  (unsigned long long)e))
        return NULL;
    uint32_t magic = pg_load_acquire(&t->magic);
    if (PG_BUG_ON(m, magic != PG_TABLE_MAGIC_LIVE,
                  "cpu %d: use-after-free of table page %llu (magic %#x, gen %u) "
                  "in mm %llu", cpu, (unsigned long long)id, magic,
                  pg_load_relaxed(&t->generation), (unsigned long long)mmid))
        return NULL;
    /* a freed table reused at another level or by another mm */
    if (PG_BUG_ON(m, pg_load_relaxed(&t->level) != child_level ||
                         pg_load_relaxed(&t->mm) != (int64_t)mmid,
                  "cpu %d: table page %llu reused (level %d mm %lld, expected "
                  "level %d mm %llu)", cpu, (unsigned long long)id,
                  pg_load_relaxed(&t->level), (long long)pg_load_relaxed(&t->mm),
                  child_level, (unsigned long long)mmid))
        return NULL;
    return t;
}

/* tlb_remove_table(): the deferred free of unlinked tables, by the
 * machine's mode */
void pg_tlb_remove_tables(pg_machine *m, int cpu, struct pg_table *list, int64_t n)
{
    if (n == 0)
        return;
    pg_fetch_add_relaxed(&m->table_pages_pending, (uint64_t)n);
    PG_YIELD(m, cpu, PG_W_FREE_PGTABLES_UNLINKED);
    if (m->table_free_mode == PG_TABLE_FREE_IPI ||
        pg_mutant(m, PG_MUT_TABLE_FREE_NO_SYNC)) {
        /* tlb_remove_table_sync_one: every CPU that could be walking with
         * IRQs off has acknowledged, so none still holds a pointer */
        if (!pg_mutant(m, PG_MUT_TABLE_FREE_NO_SYNC))
            pg_ipi_sync_internal(m, cpu);
        PG_YIELD(m, cpu, PG_W_FREE_PGTABLES_SYNCED);
        while (list) {
            struct pg_table *next = (struct pg_table *)list->rcu.next;
            table_free_now(m, list);
            pg_fetch_sub_relaxed(&m->table_pages_pending, 1);
            list = next;
        }
    } else {
        while (list) {
            struct pg_table *next = (struct pg_table *)list->rcu.next;
            pg_call_rcu(m, &list->rcu, table_free_rcu);
            list = next;
        }
    }
}

/* ---- mm table ------------------------------------------------------------- */

int pg_pgtable_init(pg_machine *m)
{
    pg_spin_init(&m->pool_lock);
    m->table_free = PG_NIL;
    m->table_next = 1; /* id 0 is never a table: a zero entry is "none" */
    pg_spin_init(&m->mm_table_lock);
    m->mm_free = PG_NIL;
    m->mm_next = 0;
    for (int i = 0; i < PG_MM_MAX; i++)
        pg_spin_init(&m->mms[i].lock);
    return 0;
}

void pg_pgtable_fini(pg_machine *m)
{
    for (uint32_t c = 0; c < PG_TABLE_MAX_CHUNKS; c++) {
        struct pg_table *chunk = pg_load_relaxed(&m->table_chunks[c]);
        if (!chunk)
            break;
        free(chunk);
        pg_store_relaxed(&m->table_chunks[c], NULL);
    }
}

struct pg_mm *pg_mm_get(pg_machine *m, uint64_t id)
{
    uint64_t gen = id / PG_MM_MAX;
    if (gen > UINT32_MAX)
        return NULL;
    struct pg_mm *mm = &m->mms[id % PG_MM_MAX];
    if (pg_load_acquire(&mm->state) != PG_MM_LIVE ||
        pg_load_acquire(&mm->generation) != gen)
        return NULL;
    return mm;
}

/* look up and lock; re-checks after locking because a destroy may have
 * won the lock meanwhile */
struct pg_mm *pg_mm_lock(pg_machine *m, uint64_t id)
{
    struct pg_mm *mm = pg_mm_get(m, id);
    if (!mm)
        return NULL;
    pg_spin_lock(&mm->lock);
    if (pg_mm_get(m, id) != mm) {
        pg_spin_unlock(&mm->lock);
        return NULL;
    }
    return mm;
}

/* The entry of an mm operation Python asks for (zap, free_pgtables, a
 * page-table move, destroy...): a valid CPU with IRQs on -- the operation's
 * TLB flush would otherwise wait on itself -- and the mm, locked.  NULL
 * with *err set (-EINVAL, -EBUSY) otherwise. */
struct pg_mm *pg_mm_lock_op(pg_machine *m, int cpu, uint64_t id, int *err)
{
    *err = -PG_EINVAL;
    if (!pg_cpu_ok(m, cpu))
        return NULL;
    if (pg_cpu_irqs_off(m, cpu)) {
        *err = -PG_EBUSY;
        return NULL;
    }
    return pg_mm_lock(m, id);
}

void pg_mm_slot_free(pg_machine *m, struct pg_mm *mm)
{
    uint32_t slot = (uint32_t)(mm - m->mms);
    pg_spin_lock(&m->mm_table_lock);
    mm->free_next = m->mm_free;
    m->mm_free = slot;
    pg_spin_unlock(&m->mm_table_lock);
}

int64_t pg_mm_new(pg_machine *m)
{
    uint32_t slot;
    pg_spin_lock(&m->mm_table_lock);
    if (m->mm_free != PG_NIL) {
        slot = m->mm_free;
        m->mm_free = m->mms[slot].free_next;
    } else if (m->mm_next < PG_MM_MAX) {
        slot = m->mm_next++;
    } else {
        pg_spin_unlock(&m->mm_table_lock);
        return -PG_ENOSPC;
    }
    pg_spin_unlock(&m->mm_table_lock);

    struct pg_mm *mm = &m->mms[slot];
    uint64_t id = pg_mm_id(m, mm);
    struct pg_table *pgd = pg_table_alloc(m, PG_LEVEL_PGD, id);
    if (!pgd) {
        pg_spin_lock(&m->mm_table_lock);
        mm->free_next = m->mm_free;
        m->mm_free = slot;
        pg_spin_unlock(&m->mm_table_lock);
        return -PG_ENOMEM;
    }
    pg_store_relaxed(&mm->cpumask, 0);
    pg_store_relaxed(&mm->wp_seq, 0);
    pg_store_relaxed(&mm->pgd, pgd->id);
    pg_store_release(&mm->state, PG_MM_LIVE);
    return (int64_t)id;
}

/* ---- walks ----------------------------------------------------------------- */

int pg_walk_lockless_ex(pg_machine *m, int cpu, struct pg_mm *mm, uint64_t addr,
                        struct pg_walk *w)
{
    uint64_t mmid = pg_mm_id(m, mm);
    struct pg_table *t = pg_table_get(m, pg_load_acquire(&mm->pgd));
    w->pmd = 0;
    w->pmd_slot = NULL;
    if (PG_BUG_ON(m, !t || pg_load_acquire(&t->magic) != PG_TABLE_MAGIC_LIVE,
                  "cpu %d: walk of mm %llu found its PGD freed", cpu,
                  (unsigned long long)mmid))
        return -PG_EFAULT;
    for (int level = PG_LEVEL_PGD;; level--) {
        _Atomic uint64_t *slot = &t->e[pg_level_index(addr, level)];
        /* READ_ONCE: each level is read exactly once */
        uint64_t e = pg_load_acquire(slot);
        PG_YIELD(m, cpu, PG_W_WALK_ENTRY_READ);
        /* the table must still be live after the read: a read from a
         * freed table is what IRQs-off / RCU are there to prevent */
        uint32_t magic = pg_load_acquire(&t->magic);
        if (PG_BUG_ON(m, magic != PG_TABLE_MAGIC_LIVE,
                      "cpu %d: use-after-free of table page %u (level %d, "
                      "magic %#x) in mm %llu at %#llx", cpu, t->id, level, magic,
                      (unsigned long long)mmid, (unsigned long long)addr))
            return -PG_EFAULT;
        if (level == PG_LEVEL_PMD) {
            w->pmd = e;
            w->pmd_slot = slot;
        }
        if (e == 0 || pg_is_leaf(e, level)) {
            w->pte = e;
            w->pte_slot = slot;
            w->table = t;
            w->level = e == 0 ? 0 : level;
            return w->level;
        }
        if (level == PG_LEVEL_PTE)
            break; /* unreachable: every non-zero PTE is a leaf */
        t = pg_child_table(m, cpu, e, level - 1, mmid);
        if (!t)
            return -PG_EFAULT;
    }
    return -PG_EFAULT;
}

int pg_walk_entries(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr, uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu) || !out)
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    uint64_t mmid_ = pg_mm_id(m, mm);
    struct pg_table *t = pg_table_get(m, pg_load_acquire(&mm->pgd));
    for (int i = 0; i < 4; i++)
        out[i] = 0;
    for (int level = PG_LEVEL_PGD; t; level--) {
        uint64_t e = pg_load_acquire(&t->e[pg_level_index(addr, level)]);
        if (PG_BUG_ON(m, pg_load_acquire(&t->magic) != PG_TABLE_MAGIC_LIVE,
                      "cpu %d: use-after-free of table page %u", cpu, t->id))
            return -PG_EFAULT;
        out[PG_LEVEL_PGD - level] = e;
        if (e == 0 || pg_is_leaf(e, level))
            return e == 0 ? 0 : level;
        if (level == PG_LEVEL_PTE)
            break;
        t = pg_child_table(m, cpu, e, level - 1, mmid_);
    }
    return -PG_EFAULT;
}

int pg_walk_lockless(pg_machine *m, int cpu, struct pg_mm *mm, uint64_t addr,
                     uint64_t *pte, _Atomic uint64_t **slotp)
{
    struct pg_walk w;
    int level = pg_walk_lockless_ex(m, cpu, mm, addr, &w);
    if (level >= 0) {
        *pte = w.pte;
        if (slotp)
            *slotp = w.pte_slot;
    }
    return level;
}

/* Locked walk down to the slot at `level` covering addr.  With alloc, missing
 * intermediate tables are created.  Returns the slot, its table in *tp, or
 * NULL with *err: -PG_EEXIST if a leaf sits above `level` (or no error and
 * *tp = NULL when nothing is mapped there and alloc is false). */
_Atomic uint64_t *pg_walk_to_level(pg_machine *m, struct pg_mm *mm,
                                       uint64_t addr, int level, bool alloc,
                                       struct pg_table **tp, int *err)
{
    uint64_t mmid = pg_mm_id(m, mm);
    struct pg_table *t = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    *err = 0;
    *tp = NULL;
    for (int l = PG_LEVEL_PGD; l > level; l--) {
        _Atomic uint64_t *slot = &t->e[pg_level_index(addr, l)];
        uint64_t e = pg_load_acquire(slot);
        if (e == 0) {
            if (!alloc)
                return NULL;
            struct pg_table *c = pg_table_alloc(m, l - 1, mmid);
            if (!c) {
                *err = -PG_ENOMEM;
                return NULL;
            }
            pg_store_release(slot, pg_table_entry(c));
            t->nr_used++;
            t = c;
            continue;
        }
        if (pg_is_leaf(e, l)) {
            *err = -PG_EEXIST;
            return NULL;
        }
        t = pg_child_table(m, -1, e, l - 1, mmid);
        if (!t) {
            *err = -PG_EFAULT;
            return NULL;
        }
    }
    *tp = t;
    return &t->e[pg_level_index(addr, level)];
}

/* Locked walk to whatever leaf covers addr: its slot, table and level. */
int pg_find_leaf(pg_machine *m, struct pg_mm *mm, uint64_t addr,
                     _Atomic uint64_t **slotp, struct pg_table **tp)
{
    int err;
    struct pg_table *t;
    _Atomic uint64_t *s = pg_walk_to_level(m, mm, addr, PG_LEVEL_PMD, false, &t, &err);
    if (!s)
        return err < 0 ? err : 0;
    uint64_t e = pg_load_acquire(s);
    if (pg_is_leaf(e, PG_LEVEL_PMD)) {
        *slotp = s;
        *tp = t;
        return PG_LEVEL_PMD;
    }
    if (e == 0)
        return 0;
    t = pg_child_table(m, -1, e, PG_LEVEL_PTE, pg_mm_id(m, mm));
    if (!t)
        return -PG_EFAULT;
    s = &t->e[pg_level_index(addr, PG_LEVEL_PTE)];
    if (pg_load_acquire(s) == 0)
        return 0;
    *slotp = s;
    *tp = t;
    return PG_LEVEL_PTE;
}

/* Visit every leaf in [start, end) in address order.  cb returns <0 to
 * fail, >0 to stop, 0 to go on. */
typedef int (*leaf_cb)(pg_machine *m, void *ctx, struct pg_table *t,
                       _Atomic uint64_t *slot, uint64_t addr, int level);

static int walk_range_table(pg_machine *m, uint64_t mmid, struct pg_table *t,
                            int level, uint64_t base, uint64_t start,
                            uint64_t end, pg_leaf_cb cb, void *ctx)
{
    unsigned shift = pg_level_shift(level);
    uint64_t size = (uint64_t)1 << shift;
    uint64_t lo = start > base ? start : base;
    uint64_t top = base + size * PG_PTRS_PER_TABLE;
    uint64_t hi = end < top ? end : top;
    if (lo >= hi)
        return 0;
    unsigned i0 = (unsigned)((lo - base) >> shift);
    unsigned i1 = (unsigned)((hi - base + size - 1) >> shift);
    for (unsigned i = i0; i < i1; i++) {
        uint64_t e = pg_load_acquire(&t->e[i]);
        uint64_t addr = base + (uint64_t)i * size;
        if (e == 0)
            continue;
        int rc;
        if (pg_is_leaf(e, level)) {
            rc = cb(m, ctx, t, &t->e[i], addr, level);
        } else {
            struct pg_table *c = pg_child_table(m, -1, e, level - 1, mmid);
            if (!c)
                return -PG_EFAULT;
            rc = walk_range_table(m, mmid, c, level - 1, addr, start, end, cb, ctx);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

int pg_walk_range(pg_machine *m, struct pg_mm *mm, uint64_t start,
                      uint64_t end, pg_leaf_cb cb, void *ctx)
{
    struct pg_table *pgd = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    return walk_range_table(m, pg_mm_id(m, mm), pgd, PG_LEVEL_PGD, 0, start, end,
                            cb, ctx);
}

/* [start, end) must be page-aligned, ordered and inside the user VA */
int pg_check_range(uint64_t start, uint64_t end)
{
    if ((start | end) & (PG_PAGE_SIZE - 1) || start > end)
        return -PG_EINVAL;
    if (end > PG_VA_LIMIT)
        return -PG_EFAULT;
    return 0;
}

/* A PMD leaf that the range covers only in part would need a split, which
 * is the caller's (Python's) job: refuse before changing anything. */
int pg_check_no_partial_huge(pg_machine *m, struct pg_mm *mm,
                                 uint64_t start, uint64_t end)
{
    uint64_t probes[2] = {start, end - 1};
    if (start >= end)
        return 0;
    for (int i = 0; i < 2; i++) {
        _Atomic uint64_t *s;
        struct pg_table *t;
        int level = pg_find_leaf(m, mm, probes[i], &s, &t);
        if (level < 0)
            return level;
        if (level == PG_LEVEL_PMD) {
            uint64_t a = probes[i] & ~(PG_PMD_SIZE - 1);
            if (a < start || a + PG_PMD_SIZE > end)
                return -PG_EINVAL;
        }
    }
    return 0;
}

/* ---- single-entry operations ------------------------------------------------ */

int pg_pte_lookup(pg_machine *m, uint64_t mmid, uint64_t addr, uint64_t *pte)
{
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm || !pte)
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    return pg_walk_lockless(m, -1, mm, addr, pte, NULL);
}

int pg_pte_set(pg_machine *m, uint64_t mmid, uint64_t addr, uint64_t pte,
               int level)
{
    if (level != PG_LEVEL_PTE && level != PG_LEVEL_PMD)
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    uint64_t pfn = pg_pte_pfn(pte);
    if (pte == 0 || (pte & PG_PTE_UNMODELLED_BITS))
        return -PG_EINVAL; /* none, or bits we do not model */
    if (level == PG_LEVEL_PTE) {
        if ((addr & (PG_PAGE_SIZE - 1)) || (pte & PG_PTE_HUGE) ||
            pfn >= m->nr_frames)
            return -PG_EINVAL;
    } else {
        pte |= PG_PTE_HUGE;
        if ((addr & (PG_PMD_SIZE - 1)) || (pfn & (PG_PMD_NR - 1)) ||
            pfn + PG_PMD_NR > m->nr_frames)
            return -PG_EINVAL;
    }
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    struct pg_table *t;
    int err;
    _Atomic uint64_t *s = pg_walk_to_level(m, mm, addr, level, true, &t, &err);
    if (s) {
        uint64_t old = pg_load_acquire(s);
        if (old != 0) {
            err = -PG_EEXIST;
        } else {
            pg_store_release(s, pte);
            t->nr_used++;
        }
    }
    pg_spin_unlock(&mm->lock);
    return err;
}

int pg_pte_modify(pg_machine *m, uint64_t mmid, uint64_t addr, int64_t expect_pfn,
                  uint64_t clear, uint64_t set, uint64_t *old)
{
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    /* only flag bits change; the pfn and the level marker stay */
    if ((clear | set) & PG_PTE_FIXED_BITS)
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    _Atomic uint64_t *s;
    struct pg_table *t;
    int level = pg_find_leaf(m, mm, addr, &s, &t);
    if (level > 0) {
        uint64_t e = pg_load_acquire(s);
        for (;;) {
            if (e == 0 ||
                (expect_pfn >= 0 && pg_leaf_pfn_at(e, level, addr) != (uint64_t)expect_pfn)) {
                level = -PG_ENOENT;
                break;
            }
            uint64_t n = (e & ~clear) | set;
            /* CAS: the MMU sets ACCESSED / DIRTY without the lock */
            if (pg_cas(s, &e, n)) {
                if (n == 0)
                    t->nr_used--;
                if (old)
                    *old = e;
                break;
            }
        }
    } else if (level == 0) {
        level = -PG_ENOENT;
    }
    pg_spin_unlock(&mm->lock);
    return level;
}

int pg_pte_clear(pg_machine *m, uint64_t mmid, uint64_t addr, uint64_t *old)
{
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    _Atomic uint64_t *s;
    struct pg_table *t;
    uint64_t e = 0;
    int level = pg_find_leaf(m, mm, addr, &s, &t);
    if (level > 0) {
        e = pg_xchg(s, 0); /* ptep_get_and_clear: keeps a racing A/D update */
        t->nr_used--;
    }
    pg_spin_unlock(&mm->lock);
    if (old)
        *old = e;
    return level;
}

int64_t pg_mm_wp_seq(pg_machine *m, uint64_t mmid)
{
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    return pg_load_acquire(&mm->wp_seq);
}
