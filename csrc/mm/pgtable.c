/*
 * pgtable.c - address spaces (mm) and their 4-level page tables: the
 * table-page pool and its deferred freeing, the lockless walk the MMU and
 * GUP-fast use, and the mutators (set / modify / clear / mkclean / zap /
 * free_pgtables / copy / change_protection / destroy), which serialise on a
 * per-mm spinlock.
 *
 * Locking rule: a mutator may wait for IPI acknowledgements while holding
 * the mm lock, because code running with IRQs disabled (user accesses,
 * GUP-fast) never takes an mm lock.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* bits 52..63 (NX, protection keys...) are not modelled */
#define PTE_UNMODELLED_BITS (~(uint64_t)PG_PTE_PFN_MASK & ~(uint64_t)0xfff)
/* what flag updates may not touch: the pfn and the level marker */
#define PTE_FIXED_BITS \
    ((uint64_t)PG_PTE_PFN_MASK | (uint64_t)PG_PTE_HUGE | PTE_UNMODELLED_BITS)

static inline unsigned level_shift(int level)
{
    return PG_PAGE_SHIFT + 9u * (unsigned)(level - 1);
}

static inline unsigned level_index(uint64_t addr, int level)
{
    return (unsigned)((addr >> level_shift(level)) & (PG_PTRS_PER_TABLE - 1));
}

static inline bool is_leaf(uint64_t e, int level)
{
    return e != 0 && (level == PG_LEVEL_PTE ||
                      (level == PG_LEVEL_PMD && (e & PG_PTE_HUGE)));
}

static inline uint64_t leaf_pages(int level)
{
    return level == PG_LEVEL_PMD ? PG_PMD_NR : 1;
}

/* the pfn that a leaf maps at addr (a PMD leaf maps 512 of them) */
static inline uint64_t leaf_pfn_at(uint64_t e, int level, uint64_t addr)
{
    uint64_t pfn = pg_pte_pfn(e);
    if (level == PG_LEVEL_PMD)
        pfn += (addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1);
    return pfn;
}

/* ---- the table-page pool ------------------------------------------------ */

struct pg_table *pg_table_get(pg_machine *m, uint64_t id)
{
    if (id == 0 || id / PG_TABLE_CHUNK >= PG_TABLE_MAX_CHUNKS)
        return NULL;
    struct pg_table *chunk = pg_load_acquire(&m->table_chunks[id / PG_TABLE_CHUNK]);
    return chunk ? &chunk[id % PG_TABLE_CHUNK] : NULL;
}

static struct pg_table *table_alloc(pg_machine *m, int level, uint64_t mmid)
{
    uint32_t id;
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

static inline uint64_t table_entry(struct pg_table *t)
{
    return ((uint64_t)t->id << PG_PAGE_SHIFT) | PG_TABLE_FLAGS;
}

/* Follow a non-leaf entry; report a table that is not (or no longer) the
 * live child it should be.  Used by walkers and mutators alike. */
static struct pg_table *child_table(pg_machine *m, int cpu, uint64_t e,
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

static inline uint64_t mm_id(pg_machine *m, struct pg_mm *mm)
{
    return (uint64_t)pg_load_relaxed(&mm->generation) * PG_MM_MAX +
           (uint64_t)(mm - m->mms);
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

void pg_mm_cpumask_set(pg_machine *m, struct pg_mm *mm, int cpu)
{
    (void)m;
    uint64_t bit = (uint64_t)1 << cpu;
    if (!(pg_load_relaxed(&mm->cpumask) & bit))
        pg_fetch_or_seqcst(&mm->cpumask, bit);
    /* the bit before any entry read: pairs with the fence a shootdown
     * sender issues between clearing entries and reading the mask */
    pg_smp_mb();
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
    uint64_t id = mm_id(m, mm);
    struct pg_table *pgd = table_alloc(m, PG_LEVEL_PGD, id);
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
    uint64_t mmid = mm_id(m, mm);
    struct pg_table *t = pg_table_get(m, pg_load_acquire(&mm->pgd));
    w->pmd = 0;
    w->pmd_slot = NULL;
    if (PG_BUG_ON(m, !t || pg_load_acquire(&t->magic) != PG_TABLE_MAGIC_LIVE,
                  "cpu %d: walk of mm %llu found its PGD freed", cpu,
                  (unsigned long long)mmid))
        return -PG_EFAULT;
    for (int level = PG_LEVEL_PGD;; level--) {
        _Atomic uint64_t *slot = &t->e[level_index(addr, level)];
        /* READ_ONCE: each level is read exactly once */
        uint64_t e = pg_load_acquire(slot);
        PG_YIELD(m, cpu, "walk_entry_read");
        PG_STRESS_WINDOW(m);
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
        if (e == 0 || is_leaf(e, level)) {
            w->pte = e;
            w->pte_slot = slot;
            w->table = t;
            w->level = e == 0 ? 0 : level;
            return w->level;
        }
        if (level == PG_LEVEL_PTE)
            break; /* unreachable: every non-zero PTE is a leaf */
        t = child_table(m, cpu, e, level - 1, mmid);
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
    uint64_t mmid_ = mm_id(m, mm);
    struct pg_table *t = pg_table_get(m, pg_load_acquire(&mm->pgd));
    for (int i = 0; i < 4; i++)
        out[i] = 0;
    for (int level = PG_LEVEL_PGD; t; level--) {
        uint64_t e = pg_load_acquire(&t->e[level_index(addr, level)]);
        if (PG_BUG_ON(m, pg_load_acquire(&t->magic) != PG_TABLE_MAGIC_LIVE,
                      "cpu %d: use-after-free of table page %u", cpu, t->id))
            return -PG_EFAULT;
        out[PG_LEVEL_PGD - level] = e;
        if (e == 0 || is_leaf(e, level))
            return e == 0 ? 0 : level;
        if (level == PG_LEVEL_PTE)
            break;
        t = child_table(m, cpu, e, level - 1, mmid_);
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
static _Atomic uint64_t *walk_to_level(pg_machine *m, struct pg_mm *mm,
                                       uint64_t addr, int level, bool alloc,
                                       struct pg_table **tp, int *err)
{
    uint64_t mmid = mm_id(m, mm);
    struct pg_table *t = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    *err = 0;
    *tp = NULL;
    for (int l = PG_LEVEL_PGD; l > level; l--) {
        _Atomic uint64_t *slot = &t->e[level_index(addr, l)];
        uint64_t e = pg_load_acquire(slot);
        if (e == 0) {
            if (!alloc)
                return NULL;
            struct pg_table *c = table_alloc(m, l - 1, mmid);
            if (!c) {
                *err = -PG_ENOMEM;
                return NULL;
            }
            pg_store_release(slot, table_entry(c));
            t->nr_used++;
            t = c;
            continue;
        }
        if (is_leaf(e, l)) {
            *err = -PG_EEXIST;
            return NULL;
        }
        t = child_table(m, -1, e, l - 1, mmid);
        if (!t) {
            *err = -PG_EFAULT;
            return NULL;
        }
    }
    *tp = t;
    return &t->e[level_index(addr, level)];
}

/* Locked walk to whatever leaf covers addr: its slot, table and level. */
static int find_leaf(pg_machine *m, struct pg_mm *mm, uint64_t addr,
                     _Atomic uint64_t **slotp, struct pg_table **tp)
{
    int err;
    struct pg_table *t;
    _Atomic uint64_t *s = walk_to_level(m, mm, addr, PG_LEVEL_PMD, false, &t, &err);
    if (!s)
        return err < 0 ? err : 0;
    uint64_t e = pg_load_acquire(s);
    if (is_leaf(e, PG_LEVEL_PMD)) {
        *slotp = s;
        *tp = t;
        return PG_LEVEL_PMD;
    }
    if (e == 0)
        return 0;
    t = child_table(m, -1, e, PG_LEVEL_PTE, mm_id(m, mm));
    if (!t)
        return -PG_EFAULT;
    s = &t->e[level_index(addr, PG_LEVEL_PTE)];
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
                            uint64_t end, leaf_cb cb, void *ctx)
{
    unsigned shift = level_shift(level);
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
        if (is_leaf(e, level)) {
            rc = cb(m, ctx, t, &t->e[i], addr, level);
        } else {
            struct pg_table *c = child_table(m, -1, e, level - 1, mmid);
            if (!c)
                return -PG_EFAULT;
            rc = walk_range_table(m, mmid, c, level - 1, addr, start, end, cb, ctx);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int walk_range(pg_machine *m, struct pg_mm *mm, uint64_t start,
                      uint64_t end, leaf_cb cb, void *ctx)
{
    struct pg_table *pgd = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    return walk_range_table(m, mm_id(m, mm), pgd, PG_LEVEL_PGD, 0, start, end,
                            cb, ctx);
}

/* [start, end) must be page-aligned, ordered and inside the user VA */
static int check_range(uint64_t start, uint64_t end)
{
    if ((start | end) & (PG_PAGE_SIZE - 1) || start > end)
        return -PG_EINVAL;
    if (end > PG_VA_LIMIT)
        return -PG_EFAULT;
    return 0;
}

/* A PMD leaf that the range covers only in part would need a split, which
 * is the caller's (Python's) job: refuse before changing anything. */
static int check_no_partial_huge(pg_machine *m, struct pg_mm *mm,
                                 uint64_t start, uint64_t end)
{
    uint64_t probes[2] = {start, end - 1};
    if (start >= end)
        return 0;
    for (int i = 0; i < 2; i++) {
        _Atomic uint64_t *s;
        struct pg_table *t;
        int level = find_leaf(m, mm, probes[i], &s, &t);
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
    if (pte == 0 || (pte & PTE_UNMODELLED_BITS))
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
    _Atomic uint64_t *s = walk_to_level(m, mm, addr, level, true, &t, &err);
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
    if ((clear | set) & PTE_FIXED_BITS)
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    _Atomic uint64_t *s;
    struct pg_table *t;
    int level = find_leaf(m, mm, addr, &s, &t);
    if (level > 0) {
        uint64_t e = pg_load_acquire(s);
        for (;;) {
            if (e == 0 ||
                (expect_pfn >= 0 && leaf_pfn_at(e, level, addr) != (uint64_t)expect_pfn)) {
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
    int level = find_leaf(m, mm, addr, &s, &t);
    if (level > 0) {
        e = pg_xchg(s, 0); /* ptep_get_and_clear: keeps a racing A/D update */
        t->nr_used--;
    }
    pg_spin_unlock(&mm->lock);
    if (old)
        *old = e;
    return level;
}

int pg_pte_mkclean(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr,
                   uint64_t pfn, int *was_dirty)
{
    if (!pg_cpu_ok(m, cpu) || pfn >= m->nr_frames)
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY; /* the flush would wait on ourselves */
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    _Atomic uint64_t *s;
    struct pg_table *t;
    int rc = 0;
    int level = find_leaf(m, mm, addr, &s, &t);
    if (level < 0)
        rc = level;
    if (level > 0) {
        uint64_t e = pg_load_acquire(s);
        uint64_t want_head = pg_frame_head(m, pfn);
        if (pg_pte_maps_frame(e) && pg_frame_head(m, pg_pte_pfn(e)) == want_head &&
            (e & (PG_PTE_WRITE | PG_PTE_DIRTY))) {
            uint64_t size = level == PG_LEVEL_PMD ? PG_PMD_SIZE : PG_PAGE_SIZE;
            uint64_t base = addr & ~(size - 1);
            /* clear first so no CPU can refill its TLB from the old entry,
             * then shoot down cached copies, then put back a clean,
             * write-protected entry: the next write faults (page_mkwrite) */
            e = pg_xchg(s, 0);
            PG_YIELD(m, cpu, "mkclean_cleared");
            if (!pg_mutant(m, PG_MUT_MKCLEAN_NO_FLUSH))
                pg_flush_tlb_mm_range(m, cpu, mm, mmid, base, base + size, false);
            PG_YIELD(m, cpu, "mkclean_flushed");
            pg_store_release(s, e & ~(uint64_t)(PG_PTE_WRITE | PG_PTE_DIRTY));
            if (was_dirty)
                *was_dirty = (e & PG_PTE_DIRTY) != 0;
            rc = 1;
        }
    }
    pg_spin_unlock(&mm->lock);
    if (rc == 0 && was_dirty)
        *was_dirty = 0;
    return rc;
}

/* ---- zap ------------------------------------------------------------------- */

#define ZAP_BATCH 256
struct zap_ctx {
    int cpu;
    struct pg_mm *mm;
    uint64_t mmid;
    int n;
    uint64_t lo, hi; /* range the batch's leaves cover */
    int64_t pages;
    struct {
        uint64_t e;
        int level;
    } b[ZAP_BATCH];
};

/* rmap removal for one old leaf, after the TLB flush */
static void zap_release(pg_machine *m, uint64_t e, int level)
{
    uint64_t pfn = pg_pte_pfn(e);
    if (!pg_pte_maps_frame(e) || (e & PG_PTE_SPECIAL) || pfn == PG_ZERO_PFN)
        return; /* vm_normal_page() == NULL: nothing counted */
    if (PG_BUG_ON(m, pfn >= m->nr_frames, "zapped leaf %#llx maps no frame",
                  (unsigned long long)e))
        return;
    uint64_t head = pg_frame_head(m, pfn);
    uint64_t mapping = pg_load_acquire(&m->frames[head].mapping);
    if ((e & PG_PTE_DIRTY) && !(mapping & PG_MAPPING_ANON))
        pg_fetch_or(&m->frames[head].flags, (uint32_t)PG_F_DIRTY);
    /* a PMD leaf is one mapping of the folio, counted on its head */
    pg_mapcount_add_internal(m, level == PG_LEVEL_PMD ? head : pfn, -1);
    pg_folio_put_internal(m, pfn, 1);
}

static void zap_flush_batch(pg_machine *m, struct zap_ctx *z)
{
    if (z->n == 0)
        return;
    PG_YIELD(m, z->cpu, "zap_cleared");
    pg_flush_tlb_mm_range(m, z->cpu, z->mm, z->mmid, z->lo, z->hi, false);
    PG_YIELD(m, z->cpu, "zap_flushed");
    for (int i = 0; i < z->n; i++)
        zap_release(m, z->b[i].e, z->b[i].level);
    z->n = 0;
}

static int zap_cb(pg_machine *m, void *ctx, struct pg_table *t,
                  _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct zap_ctx *z = ctx;
    uint64_t e = pg_xchg(slot, 0);
    if (e == 0)
        return 0;
    t->nr_used--;
    uint64_t end = addr + (leaf_pages(level) << PG_PAGE_SHIFT);
    if (z->n == 0) {
        z->lo = addr;
        z->hi = end;
    }
    z->hi = end;
    z->b[z->n].e = e;
    z->b[z->n].level = level;
    z->n++;
    z->pages += (int64_t)leaf_pages(level);
    if (z->n == ZAP_BATCH)
        zap_flush_batch(m, z); /* the batch is full: flush, then free */
    return 0;
}

/* with mm locked */
static int64_t zap_locked(pg_machine *m, int cpu, struct pg_mm *mm,
                          uint64_t start, uint64_t end)
{
    struct zap_ctx *z = malloc(sizeof(*z));
    if (!z)
        return -PG_ENOMEM;
    z->cpu = cpu;
    z->mm = mm;
    z->mmid = mm_id(m, mm);
    z->n = 0;
    z->pages = 0;
    int rc = walk_range(m, mm, start, end, zap_cb, z);
    zap_flush_batch(m, z);
    int64_t pages = z->pages;
    free(z);
    return rc < 0 ? rc : pages;
}

int64_t pg_zap_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                     uint64_t end)
{
    int rc = check_range(start, end);
    if (rc < 0)
        return rc;
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    int64_t ret = check_no_partial_huge(m, mm, start, end);
    if (ret == 0)
        ret = zap_locked(m, cpu, mm, start, end);
    pg_spin_unlock(&mm->lock);
    pg_rcu_poll(m);
    return ret;
}

/* ---- free_pgtables ---------------------------------------------------------- */

/* Unlink every table wholly inside [start, end) that maps nothing (after
 * its own empty children went), pushing it on *list.  Returns the count. */
static int64_t unlink_tables(pg_machine *m, uint64_t mmid, struct pg_table *t,
                             int level, uint64_t base, uint64_t start,
                             uint64_t end, struct pg_table **list)
{
    unsigned shift = level_shift(level);
    uint64_t size = (uint64_t)1 << shift;
    int64_t n = 0;
    if (level == PG_LEVEL_PTE)
        return 0;
    for (unsigned i = 0; i < PG_PTRS_PER_TABLE; i++) {
        uint64_t a = base + (uint64_t)i * size;
        if (a >= end || a + size <= start)
            continue;
        uint64_t e = pg_load_acquire(&t->e[i]);
        if (e == 0 || is_leaf(e, level))
            continue;
        struct pg_table *c = child_table(m, -1, e, level - 1, mmid);
        if (!c)
            return n;
        n += unlink_tables(m, mmid, c, level - 1, a, start, end, list);
        if (a >= start && a + size <= end && c->nr_used == 0) {
            /* unlink first: no new walker can reach it after this */
            pg_store_release(&t->e[i], 0);
            t->nr_used--;
            c->rcu.next = (struct pg_rcu_head *)*list;
            *list = c;
            n++;
        }
    }
    return n;
}

/* the deferred free of unlinked tables, by the machine's mode */
static void free_unlinked(pg_machine *m, int cpu, struct pg_table *list,
                          int64_t n)
{
    if (n == 0)
        return;
    pg_fetch_add_relaxed(&m->table_pages_pending, (uint64_t)n);
    PG_YIELD(m, cpu, "free_pgtables_unlinked");
    if (m->table_free_mode == PG_TABLE_FREE_IPI ||
        pg_mutant(m, PG_MUT_TABLE_FREE_NO_SYNC)) {
        /* tlb_remove_table_sync_one: every CPU that could be walking with
         * IRQs off has acknowledged, so none still holds a pointer */
        if (!pg_mutant(m, PG_MUT_TABLE_FREE_NO_SYNC))
            pg_ipi_sync_internal(m, cpu);
        PG_YIELD(m, cpu, "free_pgtables_synced");
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

int64_t pg_free_pgtables(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                         uint64_t end)
{
    int rc = check_range(start, end);
    if (rc < 0)
        return rc;
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    struct pg_table *list = NULL;
    struct pg_table *pgd = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    int64_t n = unlink_tables(m, mmid, pgd, PG_LEVEL_PGD, 0, start, end, &list);
    free_unlinked(m, cpu, list, n);
    pg_spin_unlock(&mm->lock);
    pg_rcu_poll(m);
    return n;
}

/* ---- copy_range (fork) ------------------------------------------------------- */

struct copy_ctx {
    int cpu;
    struct pg_mm *dst;
    int cow;
    int copy_pinned;
    uint64_t child_mapping;
    int64_t pages;
    int wrprotected;
};

/* folio_maybe_dma_pinned() on a head frame */
static bool maybe_dma_pinned(pg_machine *m, uint64_t head)
{
    struct pg_frame *h = &m->frames[head];
    if (pg_load_relaxed(&h->order) > 0)
        return pg_load_acquire(&h->pincount) > 0;
    return (uint32_t)pg_load_acquire(&h->refcount) >= PG_GUP_PIN_COUNTING_BIAS;
}

/* copy_present_page(): the child gets its own copy of a pinned anonymous
 * page (page_needs_cow_for_dma), so the pinned page stays exclusive to the
 * parent, which keeps its writable entry.  Returns the child's entry or 0
 * when no memory is free. */
static uint64_t copy_pinned_page(pg_machine *m, struct copy_ctx *c, uint64_t e,
                                 uint64_t head, int level)
{
    int order = (int)pg_load_relaxed(&m->frames[head].order);
    int64_t nw = -PG_ENOMEM;
    if (order == 0)
        nw = pg_folio_alloc(m, 0, PG_ZONE_MOVABLE);
    if (nw < 0)
        nw = pg_folio_alloc(m, order, PG_ZONE_NORMAL);
    if (nw < 0)
        return 0;
    uint64_t n = (uint64_t)1 << order, src_pfn = pg_pte_pfn(e);
    for (uint64_t i = 0; i < n; i++) {
        pg_store_relaxed(&m->frames[nw + i].content,
                         pg_load_acquire(&m->frames[head + i].content));
        pg_fetch_or(&m->frames[nw + i].flags, PG_F_ANON_EXCLUSIVE);
    }
    uint32_t keep = pg_load_relaxed(&m->frames[head].flags) &
                    (PG_F_UPTODATE | PG_F_LRU | PG_F_HUGETLB | PG_F_DIRTY);
    pg_fetch_or(&m->frames[nw].flags, keep);
    pg_store_relaxed(&m->frames[nw].index, pg_load_relaxed(&m->frames[head].index));
    pg_store_release(&m->frames[nw].mapping, c->child_mapping);
    uint64_t child_pfn = (uint64_t)nw + (level == PG_LEVEL_PMD ? 0 : src_pfn - head);
    pg_mapcount_add_internal(m, child_pfn, 1); /* the alloc ref is the mapping's */
    return (child_pfn << PG_PAGE_SHIFT) | (e & ~(uint64_t)PG_PTE_PFN_MASK) |
           PG_PTE_DIRTY;
}

static int copy_cb(pg_machine *m, void *ctx, struct pg_table *t,
                   _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct copy_ctx *c = ctx;
    (void)t;
    struct pg_table *dt;
    int err;
    _Atomic uint64_t *ds = walk_to_level(m, c->dst, addr, level, true, &dt, &err);
    if (!ds)
        return err < 0 ? err : -PG_EFAULT;
    if (pg_load_acquire(ds) != 0)
        return -PG_EEXIST;

    uint64_t e = pg_load_acquire(slot);
    uint64_t pfn = pg_pte_pfn(e);
    bool maps = pg_pte_maps_frame(e);
    bool counted = maps && !(e & PG_PTE_SPECIAL) && pfn != PG_ZERO_PFN;
    if (counted && c->cow && c->copy_pinned) {
        uint64_t head = pg_frame_head(m, pfn);
        PG_YIELD(m, c->cpu, "fork_pin_check");
        if ((pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_FLAGS) ==
                PG_MAPPING_ANON && maybe_dma_pinned(m, head)) {
            uint64_t ce = copy_pinned_page(m, c, e, head, level);
            if (!ce)
                return -PG_ENOMEM;
            pg_store_release(ds, ce);
            dt->nr_used++;
            c->pages += (int64_t)leaf_pages(level);
            return 0;
        }
    }
    if (counted) {
        uint64_t head = pg_frame_head(m, pfn);
        if (PG_BUG_ON(m, pg_folio_try_get(m, pfn, 1) < 0,
                      "fork: mapped folio %llu has no reference",
                      (unsigned long long)head))
            return -PG_EFAULT;
        pg_mapcount_add_internal(m, level == PG_LEVEL_PMD ? head : pfn, 1);
    }
    if (c->cow && maps) {
        PG_YIELD(m, c->cpu, "copy_before_wrprotect");
        /* CAS: the MMU may set ACCESSED / DIRTY meanwhile */
        while ((e & PG_PTE_WRITE) && !pg_cas(slot, &e, e & ~(uint64_t)PG_PTE_WRITE))
            ;
        if (e & PG_PTE_WRITE) {
            c->wrprotected = 1;
            e &= ~(uint64_t)PG_PTE_WRITE;
        }
        if (counted) {
            uint64_t head = pg_frame_head(m, pfn);
            if (pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_ANON) {
                /* the page is shared with the child now */
                uint64_t n = leaf_pages(level);
                for (uint64_t i = 0; i < n; i++)
                    pg_fetch_and(&m->frames[pfn + i].flags,
                                 ~(uint32_t)PG_F_ANON_EXCLUSIVE);
            }
        }
    }
    pg_store_release(ds, e);
    dt->nr_used++;
    c->pages += (int64_t)leaf_pages(level);
    return 0;
}

int64_t pg_copy_range(pg_machine *m, int cpu, uint64_t src, uint64_t dst,
                      uint64_t start, uint64_t end, int cow, int copy_pinned,
                      uint64_t child_mapping)
{
    int rc = check_range(start, end);
    if (rc < 0)
        return rc;
    if (!pg_cpu_ok(m, cpu) || src == dst)
        return -PG_EINVAL;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    struct pg_mm *sm = pg_mm_get(m, src), *dm = pg_mm_get(m, dst);
    if (!sm || !dm)
        return -PG_EINVAL;
    /* lock in slot order so two forks the other way round cannot deadlock */
    struct pg_mm *first = sm < dm ? sm : dm, *second = sm < dm ? dm : sm;
    pg_spin_lock(&first->lock);
    pg_spin_lock(&second->lock);
    int64_t ret;
    if (pg_mm_get(m, src) != sm || pg_mm_get(m, dst) != dm) {
        ret = -PG_EINVAL;
    } else {
        ret = check_no_partial_huge(m, sm, start, end);
        if (ret == 0) {
            struct copy_ctx c = {.cpu = cpu, .dst = dm, .cow = cow,
                                 .copy_pinned = copy_pinned,
                                 .child_mapping = child_mapping};
            /* raw_write_seqcount_begin(&src_mm->write_protect_seq): a
             * FOLL_PIN GUP-fast that overlaps this copy backs off */
            if (cow)
                pg_fetch_add_seqcst(&sm->wp_seq, 1);
            PG_YIELD(m, cpu, "fork_wp_seq_begin");
            ret = walk_range(m, sm, start, end, copy_cb, &c);
            if (c.wrprotected)
                pg_flush_tlb_mm_range(m, cpu, sm, src, start, end, false);
            PG_YIELD(m, cpu, "fork_wp_seq_end");
            if (cow)
                pg_fetch_add_seqcst(&sm->wp_seq, 1);
            if (ret == 0)
                ret = c.pages;
        }
    }
    pg_spin_unlock(&second->lock);
    pg_spin_unlock(&first->lock);
    return ret;
}

/* ---- change_protection --------------------------------------------------------- */

struct prot_ctx {
    uint64_t clear, set;
    int64_t pages;
};

static int prot_cb(pg_machine *m, void *ctx, struct pg_table *t,
                   _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct prot_ctx *p = ctx;
    (void)m;
    (void)addr;
    uint64_t e = pg_load_acquire(slot), n;
    do {
        n = (e & ~p->clear) | p->set;
        if (n == e)
            return 0;
    } while (!pg_cas(slot, &e, n));
    if (n == 0)
        t->nr_used--;
    p->pages += (int64_t)leaf_pages(level);
    return 0;
}

int64_t pg_change_protection(pg_machine *m, int cpu, uint64_t mmid,
                             uint64_t start, uint64_t end, uint64_t clear,
                             uint64_t set)
{
    int rc = check_range(start, end);
    if (rc < 0)
        return rc;
    if (!pg_cpu_ok(m, cpu) ||
        ((clear | set) & PTE_FIXED_BITS))
        return -PG_EINVAL;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    int64_t ret = check_no_partial_huge(m, mm, start, end);
    if (ret == 0) {
        struct prot_ctx p = {.clear = clear, .set = set};
        ret = walk_range(m, mm, start, end, prot_cb, &p);
        if (p.pages)
            pg_flush_tlb_mm_range(m, cpu, mm, mmid, start, end, false);
        if (ret == 0)
            ret = p.pages;
    }
    pg_spin_unlock(&mm->lock);
    return ret;
}

/* ---- range_leaves ---------------------------------------------------------------- */

struct leaves_ctx {
    uint64_t start, end;
    uint64_t *addrs, *ptes;
    int64_t max, n;
};

static int leaves_cb(pg_machine *m, void *ctx, struct pg_table *t,
                     _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct leaves_ctx *l = ctx;
    (void)m;
    (void)t;
    uint64_t e = pg_load_acquire(slot);
    uint64_t npages = leaf_pages(level);
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t a = addr + (i << PG_PAGE_SHIFT);
        if (a < l->start)
            continue;
        if (a >= l->end)
            break;
        if (l->n >= l->max)
            return 1;
        uint64_t pfn = pg_pte_pfn(e) + i;
        l->addrs[l->n] = a;
        l->ptes[l->n] = (e & ~PG_PTE_PFN_MASK) | (pfn << PG_PAGE_SHIFT);
        l->n++;
    }
    return 0;
}

int64_t pg_range_leaves(pg_machine *m, uint64_t mmid, uint64_t start,
                        uint64_t end, uint64_t *addrs, uint64_t *ptes,
                        int64_t max)
{
    int rc = check_range(start, end);
    if (rc < 0)
        return rc;
    if (max < 0 || (max > 0 && (!addrs || !ptes)))
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    struct leaves_ctx l = {.start = start, .end = end, .addrs = addrs,
                           .ptes = ptes, .max = max};
    int64_t ret = max ? walk_range(m, mm, start, end, leaves_cb, &l) : 0;
    pg_spin_unlock(&mm->lock);
    return ret < 0 ? ret : l.n;
}

/* ---- destroy ------------------------------------------------------------------------ */

int pg_mm_destroy(pg_machine *m, int cpu, uint64_t mmid)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    /* new lookups fail from here; the id stays in the TLB tags until the
     * flush below removes them */
    pg_store_release(&mm->state, PG_MM_DYING);
    int64_t rc = zap_locked(m, cpu, mm, 0, PG_VA_LIMIT);
    /* every CPU, not only the mask: nothing tagged with this id survives */
    pg_flush_tlb_mm_range(m, cpu, mm, mmid, 0, PG_VA_LIMIT, true);

    struct pg_table *list = NULL;
    struct pg_table *pgd = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    int64_t n = unlink_tables(m, mmid, pgd, PG_LEVEL_PGD, 0, 0, PG_VA_LIMIT, &list);
    PG_WARN_ON(m, pgd->nr_used != 0, "mm %llu destroyed with %d PGD entries left",
               (unsigned long long)mmid, pgd->nr_used);
    pgd->rcu.next = (struct pg_rcu_head *)list;
    free_unlinked(m, cpu, pgd, n + 1);
    /* mm->pgd keeps the (now pending) table id: a walker that raced with
     * the destroy reads a table RCU or the IPI sync still protects */
    pg_store_relaxed(&mm->cpumask, 0);
    pg_fetch_add_relaxed(&mm->generation, 1);
    pg_store_release(&mm->state, PG_MM_FREE);
    pg_spin_unlock(&mm->lock);

    uint32_t slot = (uint32_t)(mm - m->mms);
    pg_spin_lock(&m->mm_table_lock);
    mm->free_next = m->mm_free;
    m->mm_free = slot;
    pg_spin_unlock(&m->mm_table_lock);
    pg_rcu_poll(m);
    return rc < 0 ? (int)rc : 0;
}

int64_t pg_mm_wp_seq(pg_machine *m, uint64_t mmid)
{
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    return pg_load_acquire(&mm->wp_seq);
}
