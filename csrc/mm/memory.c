/*
 * mm/memory.c - the range operations on an mm's page tables, each under the
 * mm lock: folio_mkclean for one mapping (one entry, or a run of pages),
 * zap (unmap: clear, flush, then drop the counts), free_pgtables, fork's
 * copy_page_range, change_protection, the leaves of a range, and the mm's
 * teardown.
 */
#include <stdlib.h>

#include "internal.h"
#include "lib/report.h"
#include "kernel/rcu.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/frames.h"
#include "mm/pgtable.h"

/* ---- folio_mkclean ----------------------------------------------------------- */

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
    int level = pg_find_leaf(m, mm, addr, &s, &t);
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
            PG_YIELD(m, cpu, PG_W_MKCLEAN_CLEARED);
            if (!pg_mutant(m, PG_MUT_MKCLEAN_NO_FLUSH))
                pg_flush_tlb_mm_range(m, cpu, mm, mmid, base, base + size, false);
            PG_YIELD(m, cpu, PG_W_MKCLEAN_FLUSHED);
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

/* ---- folio_mkclean over a range ---------------------------------------------- */

/* Writeback of a run of page-cache folios write-protects every shared
 * mapping of the run with one call per (mapping, range).  The kernel's
 * folio_mkclean() shoots down once per entry it cleans (ptep_clear_flush()
 * in page_vma_mkclean_one()); here one shootdown covers a batch of cleaned
 * entries that sit next to each other (a deliberate difference: the same
 * entries leave the TLBs, with fewer shootdowns and IPIs; the kernel's own
 * wp_shared_mapping_range() flushes a write-protected range once too).  Each
 * batch keeps the single-folio order -- clear every entry, the
 * mkclean_cleared window, the shootdown, the mkclean_flushed window, then
 * reinstall each entry clean and write-protected -- so the stale-TLB race
 * and the mkclean_no_flush switch behave as they do per folio. */
#define MKCLEAN_BATCH 512
struct mkclean_ctx {
    int cpu;
    struct pg_mm *mm;
    uint64_t mmid;
    uint64_t start;
    const uint64_t *pfns;
    uint8_t *cleaned;
    int64_t nr_cleaned;
    int n;
    uint64_t lo, hi; /* range the batch's entries cover */
    struct {
        _Atomic uint64_t *slot;
        uint64_t e;
    } b[MKCLEAN_BATCH];
};

static void mkclean_flush_batch(pg_machine *m, struct mkclean_ctx *c)
{
    if (c->n == 0)
        return;
    PG_YIELD(m, c->cpu, PG_W_MKCLEAN_CLEARED);
    if (!pg_mutant(m, PG_MUT_MKCLEAN_NO_FLUSH))
        pg_flush_tlb_mm_range(m, c->cpu, c->mm, c->mmid, c->lo, c->hi, false);
    PG_YIELD(m, c->cpu, PG_W_MKCLEAN_FLUSHED);
    for (int i = 0; i < c->n; i++)
        pg_store_release(c->b[i].slot,
                         c->b[i].e & ~(uint64_t)(PG_PTE_WRITE | PG_PTE_DIRTY));
    c->n = 0;
}

static int mkclean_cb(pg_machine *m, void *ctx, struct pg_table *t,
                      _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct mkclean_ctx *c = ctx;
    (void)t;
    uint64_t e = pg_load_acquire(slot);
    /* a PMD leaf that starts before the range: the page it has in it */
    uint64_t idx = ((addr > c->start ? addr : c->start) - c->start) >> PG_PAGE_SHIFT;
    uint64_t want = c->pfns[idx];
    /* page_vma_mkclean_one()'s test: this folio's entry, writable or dirty */
    if (want == PG_ZERO_PFN || !pg_pte_maps_frame(e) || !(e & (PG_PTE_WRITE | PG_PTE_DIRTY)))
        return 0;
    uint64_t pfn = pg_pte_pfn(e);
    if (pfn >= m->nr_frames || pg_frame_head(m, pfn) != pg_frame_head(m, want))
        return 0;
    uint64_t end = addr + (pg_leaf_pages(level) << PG_PAGE_SHIFT);
    if (c->n > 0 && (addr != c->hi || c->n == MKCLEAN_BATCH))
        mkclean_flush_batch(m, c); /* not adjacent, or full: flush what is held */
    /* cleared first so no CPU can refill its TLB from the old entry */
    e = pg_xchg(slot, 0);
    if (c->n == 0)
        c->lo = addr;
    c->hi = end;
    c->b[c->n].slot = slot;
    c->b[c->n].e = e;
    c->n++;
    c->cleaned[idx] = 1;
    c->nr_cleaned++;
    return 0;
}

int64_t pg_mkclean_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                         const uint64_t *pfns, int64_t nr, uint8_t *cleaned)
{
    if (nr < 0 || (uint64_t)nr > (PG_VA_LIMIT >> PG_PAGE_SHIFT) ||
        (nr > 0 && (!pfns || !cleaned)) || !pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (start & (PG_PAGE_SIZE - 1))
        return -PG_EINVAL;
    if (start > PG_VA_LIMIT)
        return -PG_EFAULT;
    uint64_t end = start + ((uint64_t)nr << PG_PAGE_SHIFT);
    int rc = pg_check_range(start, end);
    if (rc < 0)
        return rc;
    for (int64_t i = 0; i < nr; i++)
        if (pfns[i] >= m->nr_frames)
            return -PG_EINVAL;
    if (nr == 0)
        return 0;
    struct mkclean_ctx *c = malloc(sizeof(*c));
    if (!c)
        return -PG_ENOMEM;
    int err;
    struct pg_mm *mm = pg_mm_lock_op(m, cpu, mmid, &err);
    if (!mm) {
        free(c);
        return err;
    }
    for (int64_t i = 0; i < nr; i++)
        cleaned[i] = 0;
    c->cpu = cpu;
    c->mm = mm;
    c->mmid = mmid;
    c->start = start;
    c->pfns = pfns;
    c->cleaned = cleaned;
    c->nr_cleaned = 0;
    c->n = 0;
    rc = pg_walk_range(m, mm, start, end, mkclean_cb, c);
    mkclean_flush_batch(m, c);
    pg_spin_unlock(&mm->lock);
    int64_t ret = rc < 0 ? rc : c->nr_cleaned;
    free(c);
    return ret;
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
    PG_YIELD(m, z->cpu, PG_W_ZAP_CLEARED);
    pg_flush_tlb_mm_range(m, z->cpu, z->mm, z->mmid, z->lo, z->hi, false);
    PG_YIELD(m, z->cpu, PG_W_ZAP_FLUSHED);
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
    uint64_t end = addr + (pg_leaf_pages(level) << PG_PAGE_SHIFT);
    if (z->n == 0) {
        z->lo = addr;
        z->hi = end;
    }
    z->hi = end;
    z->b[z->n].e = e;
    z->b[z->n].level = level;
    z->n++;
    z->pages += (int64_t)pg_leaf_pages(level);
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
    z->mmid = pg_mm_id(m, mm);
    z->n = 0;
    z->pages = 0;
    int rc = pg_walk_range(m, mm, start, end, zap_cb, z);
    zap_flush_batch(m, z);
    int64_t pages = z->pages;
    free(z);
    return rc < 0 ? rc : pages;
}

int64_t pg_zap_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                     uint64_t end)
{
    int rc = pg_check_range(start, end);
    if (rc < 0)
        return rc;
    int err;
    struct pg_mm *mm = pg_mm_lock_op(m, cpu, mmid, &err);
    if (!mm)
        return err;
    int64_t ret = pg_check_no_partial_huge(m, mm, start, end);
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
    unsigned shift = pg_level_shift(level);
    uint64_t size = (uint64_t)1 << shift;
    int64_t n = 0;
    if (level == PG_LEVEL_PTE)
        return 0;
    for (unsigned i = 0; i < PG_PTRS_PER_TABLE; i++) {
        uint64_t a = base + (uint64_t)i * size;
        if (a >= end || a + size <= start)
            continue;
        uint64_t e = pg_load_acquire(&t->e[i]);
        if (e == 0 || pg_is_leaf(e, level))
            continue;
        struct pg_table *c = pg_child_table(m, -1, e, level - 1, mmid);
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

int64_t pg_free_pgtables(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                         uint64_t end)
{
    int rc = pg_check_range(start, end);
    if (rc < 0)
        return rc;
    int err;
    struct pg_mm *mm = pg_mm_lock_op(m, cpu, mmid, &err);
    if (!mm)
        return err;
    struct pg_table *list = NULL;
    struct pg_table *pgd = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    int64_t n = unlink_tables(m, mmid, pgd, PG_LEVEL_PGD, 0, start, end, &list);
    pg_tlb_remove_tables(m, cpu, list, n);
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

/* copy_present_page(): the child gets its own copy of a pinned anonymous
 * page (page_needs_cow_for_dma), so the pinned page stays exclusive to the
 * parent, which keeps its writable entry.  Returns the child's entry or 0
 * when no memory is free. */
static uint64_t copy_pinned_page(pg_machine *m, struct copy_ctx *c, uint64_t e,
                                 uint64_t head, int level)
{
    /* a PTE maps one page: the child gets a copy of that page only (a
     * PTE-mapped THP is copied page by page, as copy_present_page does);
     * a PMD leaf maps the whole folio, which is copied whole */
    int order = level == PG_LEVEL_PMD ? (int)pg_load_relaxed(&m->frames[head].order) : 0;
    uint64_t src_pfn = pg_pte_pfn(e);
    uint64_t first = level == PG_LEVEL_PMD ? head : src_pfn;
    int64_t nw = -PG_ENOMEM;
    if (order == 0)
        nw = pg_folio_alloc(m, 0, PG_ZONE_MOVABLE);
    if (nw < 0)
        nw = pg_folio_alloc(m, order, PG_ZONE_NORMAL);
    if (nw < 0)
        return 0;
    uint64_t n = (uint64_t)1 << order;
    for (uint64_t i = 0; i < n; i++) {
        pg_store_relaxed(&m->frames[nw + i].content,
                         pg_load_acquire(&m->frames[first + i].content));
        pg_fetch_or(&m->frames[nw + i].flags, PG_F_ANON_EXCLUSIVE);
    }
    uint32_t keep = pg_load_relaxed(&m->frames[head].flags) &
                    (PG_F_UPTODATE | PG_F_LRU | PG_F_HUGETLB | PG_F_DIRTY);
    pg_fetch_or(&m->frames[nw].flags, keep);
    uint64_t index = pg_load_relaxed(&m->frames[head].index) + (first - head);
    pg_store_relaxed(&m->frames[nw].index, index);
    pg_store_release(&m->frames[nw].mapping, c->child_mapping);
    uint64_t child_pfn = (uint64_t)nw;
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
    _Atomic uint64_t *ds = pg_walk_to_level(m, c->dst, addr, level, true, &dt, &err);
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
        PG_YIELD(m, c->cpu, PG_W_FORK_PIN_CHECK);
        if ((pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_FLAGS) ==
                PG_MAPPING_ANON && folio_maybe_dma_pinned(m, head)) {
            uint64_t ce = copy_pinned_page(m, c, e, head, level);
            if (!ce)
                return -PG_ENOMEM;
            pg_store_release(ds, ce);
            dt->nr_used++;
            c->pages += (int64_t)pg_leaf_pages(level);
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
        PG_YIELD(m, c->cpu, PG_W_COPY_BEFORE_WRPROTECT);
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
                uint64_t n = pg_leaf_pages(level);
                for (uint64_t i = 0; i < n; i++)
                    pg_fetch_and(&m->frames[pfn + i].flags,
                                 ~(uint32_t)PG_F_ANON_EXCLUSIVE);
            }
        }
    }
    pg_store_release(ds, e);
    dt->nr_used++;
    c->pages += (int64_t)pg_leaf_pages(level);
    return 0;
}

int64_t pg_copy_range(pg_machine *m, int cpu, uint64_t src, uint64_t dst,
                      uint64_t start, uint64_t end, int cow, int copy_pinned,
                      uint64_t child_mapping)
{
    int rc = pg_check_range(start, end);
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
        ret = pg_check_no_partial_huge(m, sm, start, end);
        if (ret == 0) {
            struct copy_ctx c = {.cpu = cpu, .dst = dm, .cow = cow,
                                 .copy_pinned = copy_pinned,
                                 .child_mapping = child_mapping};
            /* raw_write_seqcount_begin(&src_mm->write_protect_seq): a
             * FOLL_PIN GUP-fast that overlaps this copy backs off */
            if (cow)
                pg_fetch_add_seqcst(&sm->wp_seq, 1);
            PG_YIELD(m, cpu, PG_W_FORK_WP_SEQ_BEGIN);
            ret = pg_walk_range(m, sm, start, end, copy_cb, &c);
            if (c.wrprotected)
                pg_flush_tlb_mm_range(m, cpu, sm, src, start, end, false);
            PG_YIELD(m, cpu, PG_W_FORK_WP_SEQ_END);
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
    p->pages += (int64_t)pg_leaf_pages(level);
    return 0;
}

int64_t pg_change_protection(pg_machine *m, int cpu, uint64_t mmid,
                             uint64_t start, uint64_t end, uint64_t clear,
                             uint64_t set)
{
    int rc = pg_check_range(start, end);
    if (rc < 0)
        return rc;
    if ((clear | set) & PG_PTE_FIXED_BITS)
        return -PG_EINVAL;
    int err;
    struct pg_mm *mm = pg_mm_lock_op(m, cpu, mmid, &err);
    if (!mm)
        return err;
    int64_t ret = pg_check_no_partial_huge(m, mm, start, end);
    if (ret == 0) {
        struct prot_ctx p = {.clear = clear, .set = set};
        ret = pg_walk_range(m, mm, start, end, prot_cb, &p);
        if (p.pages)
            pg_flush_tlb_mm_range(m, cpu, mm, mmid, start, end, false);
        if (ret == 0)
            ret = p.pages;
    }
    pg_spin_unlock(&mm->lock);
    return ret;
}

/* ---- move_page_tables (mremap) --------------------------------------------------- */

struct move_ctx {
    struct pg_mm *mm;
    int64_t delta; /* new address - old address */
    int present;   /* a present entry moved: the old range must be flushed */
};

/* move_ptes() / move_huge_pmd() for one leaf: clear the old entry, install
 * it at the new address.  The folio's counts do not change: the mapping
 * moves, the page (and every pin on it) stays. */
static int move_cb(pg_machine *m, void *ctx, struct pg_table *t,
                   _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct move_ctx *c = ctx;
    struct pg_table *dt;
    int err;
    uint64_t to = (uint64_t)((int64_t)addr + c->delta);
    _Atomic uint64_t *ds = pg_walk_to_level(m, c->mm, to, level, true, &dt, &err);
    if (!ds)
        return err < 0 ? err : -PG_EFAULT;
    if (pg_load_acquire(ds) != 0)
        return -PG_EEXIST; /* the caller unmapped the destination first */
    uint64_t e = pg_xchg(slot, 0);
    if (e == 0)
        return 0;
    t->nr_used--;
    if (e & (PG_PTE_PRESENT | PG_PTE_PROTNONE))
        c->present = 1;
    pg_store_release(ds, e);
    dt->nr_used++;
    return 0;
}

/* move_normal_pmd(): a whole PTE table moves by moving the PMD entry that
 * points to it, when both extents are PMD-aligned and the destination has
 * no table yet.  Returns 1 when it moved one, 0 when the caller must move
 * the leaves one by one, <0 on error. */
static int move_normal_pmd(pg_machine *m, struct move_ctx *c, uint64_t from)
{
    struct pg_table *st, *dt;
    int err;
    _Atomic uint64_t *ss = pg_walk_to_level(m, c->mm, from, PG_LEVEL_PMD, false, &st, &err);
    if (!ss)
        return err == -PG_EEXIST ? 0 : err;
    uint64_t e = pg_load_acquire(ss);
    if (e == 0 || pg_is_leaf(e, PG_LEVEL_PMD))
        return 0; /* nothing, or a huge leaf: moved as a leaf */
    uint64_t to = (uint64_t)((int64_t)from + c->delta);
    _Atomic uint64_t *ds = pg_walk_to_level(m, c->mm, to, PG_LEVEL_PMD, true, &dt, &err);
    if (!ds)
        return err == -PG_EEXIST ? 0 : err;
    if (pg_load_acquire(ds) != 0)
        return 0;
    struct pg_table *pte_table = pg_child_table(m, -1, e, PG_LEVEL_PTE, pg_mm_id(m, c->mm));
    if (!pte_table)
        return -PG_EFAULT;
    /* clear first: a lockless walker that read the old entry still holds a
     * live table (nothing is freed here), and GUP-fast's PMD re-check sees
     * the entry change and backs off */
    pg_store_release(ss, 0);
    st->nr_used--;
    pg_store_release(ds, e);
    dt->nr_used++;
    if (pte_table->nr_used)
        c->present = 1;
    return 1;
}

int64_t pg_move_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t old_addr,
                      uint64_t new_addr, uint64_t len)
{
    if (old_addr > PG_VA_LIMIT || new_addr > PG_VA_LIMIT || len > PG_VA_LIMIT)
        return -PG_EFAULT;
    int rc = pg_check_range(old_addr, old_addr + len);
    if (rc == 0)
        rc = pg_check_range(new_addr, new_addr + len);
    if (rc < 0)
        return rc;
    /* the ranges may not overlap (mremap_to() refuses it before this) */
    if (len && old_addr < new_addr + len && new_addr < old_addr + len)
        return -PG_EINVAL;
    int err;
    struct pg_mm *mm = pg_mm_lock_op(m, cpu, mmid, &err);
    if (!mm)
        return err;
    int64_t ret = pg_check_no_partial_huge(m, mm, old_addr, old_addr + len);
    /* a huge leaf moves only to a PMD-aligned address */
    if (ret == 0 && ((old_addr ^ new_addr) & (PG_PMD_SIZE - 1))) {
        for (uint64_t a = (old_addr + PG_PMD_SIZE - 1) & ~(PG_PMD_SIZE - 1);
             a < old_addr + len; a += PG_PMD_SIZE) {
            _Atomic uint64_t *s;
            struct pg_table *t;
            if (pg_find_leaf(m, mm, a, &s, &t) == PG_LEVEL_PMD) {
                ret = -PG_EINVAL;
                break;
            }
        }
    }
    struct move_ctx c = {.mm = mm, .delta = (int64_t)(new_addr - old_addr)};
    /* move_page_tables(): extent by extent, a whole table where it can.  An
     * extent that fails (no table page for its destination: the first leaf
     * of an extent allocates it, so nothing of that extent moved) ends the
     * move short; the answer is then the length moved before it, as the
     * kernel's, and move_vma() moves that much back. */
    uint64_t a = old_addr, end = old_addr + len;
    int started = ret == 0;
    while (ret == 0 && a < end) {
        /* get_extent(): up to the next PMD boundary of the old address and
         * of the new one, so an extent's leaves share one destination table */
        uint64_t next = (a + PG_PMD_SIZE) & ~(PG_PMD_SIZE - 1);
        uint64_t to = new_addr + (a - old_addr);
        uint64_t to_next = (to + PG_PMD_SIZE) & ~(PG_PMD_SIZE - 1);
        if (to_next - to < next - a)
            next = a + (to_next - to);
        if (next > end)
            next = end;
        int moved = 0;
        if (!((a | (new_addr + (a - old_addr))) & (PG_PMD_SIZE - 1)) && next - a == PG_PMD_SIZE)
            moved = move_normal_pmd(m, &c, a);
        if (moved < 0)
            ret = moved;
        else if (!moved)
            ret = pg_walk_range(m, mm, a, next, move_cb, &c);
        if (ret == 0)
            a = next;
    }
    if (c.present) {
        /* the new entries are in, the old TLB entries not gone yet: a CPU
         * may still reach the pages through the old address */
        PG_YIELD(m, cpu, PG_W_MREMAP_MOVED);
        pg_flush_tlb_mm_range(m, cpu, mm, mmid, old_addr, end, false);
        PG_YIELD(m, cpu, PG_W_MREMAP_FLUSHED);
    }
    if (started && (ret == 0 || a > old_addr))
        ret = (int64_t)(a - old_addr); /* bytes moved: len unless cut short */
    pg_spin_unlock(&mm->lock);
    pg_rcu_poll(m);
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
    struct pg_leaf_span span = pg_leaf_clip(addr, level, l->start, l->end);
    for (uint64_t i = span.lo; i < span.hi; i++) {
        uint64_t a = addr + (i << PG_PAGE_SHIFT);
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
    int rc = pg_check_range(start, end);
    if (rc < 0)
        return rc;
    if (max < 0 || (max > 0 && (!addrs || !ptes)))
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    struct leaves_ctx l = {.start = start, .end = end, .addrs = addrs,
                           .ptes = ptes, .max = max};
    int64_t ret = max ? pg_walk_range(m, mm, start, end, leaves_cb, &l) : 0;
    pg_spin_unlock(&mm->lock);
    return ret < 0 ? ret : l.n;
}

/* ---- destroy ------------------------------------------------------------------------ */

int pg_mm_destroy(pg_machine *m, int cpu, uint64_t mmid)
{
    int err;
    struct pg_mm *mm = pg_mm_lock_op(m, cpu, mmid, &err);
    if (!mm)
        return err;
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
    pg_tlb_remove_tables(m, cpu, pgd, n + 1);
    /* mm->pgd keeps the (now pending) table id: a walker that raced with
     * the destroy reads a table RCU or the IPI sync still protects */
    pg_store_relaxed(&mm->cpumask, 0);
    pg_fetch_add_relaxed(&mm->generation, 1);
    pg_store_release(&mm->state, PG_MM_FREE);
    pg_spin_unlock(&mm->lock);
    pg_mm_slot_free(m, mm);
    pg_rcu_poll(m);
    return rc < 0 ? (int)rc : 0;
}
