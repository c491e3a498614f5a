/*
 * mm/fault.c - the anonymous fault for a run of pages at once: what
 * do_anonymous_page() does to each none PTE of the run, in one call under
 * the mm lock.  Python keeps every decision about the VMA (that it is
 * anonymous, not hugetlb, no THP at these addresses, the access is
 * allowed, the new entries' bits, its anon_vma); kernel/fault.py's
 * do_anonymous_page() is the reference this batch is tested against.
 */
#include "internal.h"
#include "kernel/sched.h"
#include "mm/frames.h"
#include "mm/pgtable.h"

/* alloc_anon_folio() with GFP_HIGHUSER_MOVABLE: the zonelist tries
 * ZONE_MOVABLE first, then ZONE_NORMAL (Kernel.alloc_folio's order, so an
 * injected failure falls back the same way) */
static int64_t fault_alloc_page(pg_machine *m, bool movable)
{
    if (movable) {
        int64_t pfn = pg_folio_alloc(m, 0, PG_ZONE_MOVABLE);
        if (pfn != -PG_ENOMEM)
            return pfn;
    }
    return pg_folio_alloc(m, 0, PG_ZONE_NORMAL);
}

/* A new exclusive anonymous page, not yet visible to anyone: its mapping
 * and index, uptodate + LRU + PageAnonExclusive, mapped once (the
 * allocation's reference is the mapping's). */
static void fault_init_anon_page(pg_machine *m, uint64_t pfn, uint64_t mapping,
                                 uint64_t index)
{
    struct pg_frame *f = &m->frames[pfn];
    pg_store_release(&f->index, index);
    pg_store_release(&f->mapping, mapping);
    pg_fetch_or(&f->flags, (uint32_t)(PG_F_UPTODATE | PG_F_LRU | PG_F_ANON_EXCLUSIVE));
    pg_mapcount_add_internal(m, pfn, 1);
}

int64_t pg_fault_anon_range(pg_machine *m, uint64_t mmid, uint64_t start, int64_t nr,
                            uint32_t how, uint64_t pte_bits, uint64_t mapping,
                            uint64_t index, int32_t *stop_err)
{
    bool write = how & PG_FAULT_WRITE;
    /* check everything Python sent before touching anything */
    if (nr < 0 || (start & (PG_PAGE_SIZE - 1)) || start >= PG_VA_LIMIT ||
        (uint64_t)nr > (PG_VA_LIMIT - start) >> PG_PAGE_SHIFT ||
        (how & ~(uint32_t)(PG_FAULT_WRITE | PG_FAULT_MOVABLE)) || !stop_err)
        return -PG_EINVAL;
    if ((pte_bits & PG_PTE_FIXED_BITS) || (pte_bits & PG_PTE_PROTNONE) ||
        (pte_bits & (PG_PTE_PRESENT | PG_PTE_USER)) != (PG_PTE_PRESENT | PG_PTE_USER))
        return -PG_EINVAL;
    /* a write maps a counted page; a read the special, read-only zero page */
    if (write ? (pte_bits & PG_PTE_SPECIAL)
              : (pte_bits & (PG_PTE_WRITE | PG_PTE_DIRTY)) || !(pte_bits & PG_PTE_SPECIAL))
        return -PG_EINVAL;
    if (write && ((mapping & PG_MAPPING_FLAGS) != PG_MAPPING_ANON ||
                  index > UINT64_MAX - (uint64_t)nr))
        return -PG_EINVAL;
    /* a deterministic schedule switches at the reference path's points
     * (the mapping store, the fault-to-retry break): stand aside */
    *stop_err = 0;
    if (pg_load_relaxed(&m->sched_on))
        return 0;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    int64_t i;
    int err = 0;
    for (i = 0; i < nr; i++) {
        uint64_t addr = start + ((uint64_t)i << PG_PAGE_SHIFT);
        struct pg_table *t;
        /* __handle_mm_fault(): the tables first (pte_alloc), then the page */
        _Atomic uint64_t *s = pg_walk_to_level(m, mm, addr, PG_LEVEL_PTE, true, &t, &err);
        if (!s) {
            if (err == -PG_EEXIST)
                err = 0; /* a PMD leaf: not this batch's; the caller follows it */
            break;
        }
        if (pg_load_acquire(s) != 0)
            break; /* already present (or not none): the caller follows it */
        uint64_t pte;
        if (write) {
            int64_t pfn = fault_alloc_page(m, how & PG_FAULT_MOVABLE);
            if (pfn < 0) {
                err = (int)pfn; /* VM_FAULT_OOM */
                break;
            }
            fault_init_anon_page(m, (uint64_t)pfn, mapping, index + (uint64_t)i);
            pte = ((uint64_t)pfn << PG_PTE_PFN_SHIFT) | pte_bits;
        } else {
            pte = ((uint64_t)PG_ZERO_PFN << PG_PTE_PFN_SHIFT) | pte_bits;
        }
        pg_store_release(s, pte);
        t->nr_used++;
    }
    pg_spin_unlock(&mm->lock);
    *stop_err = err; /* the fault of page i failed: GUP stops there */
    return i;
}
