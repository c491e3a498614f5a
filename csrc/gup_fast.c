/*
 * gup_fast.c - GUP's reference counting (try_grab_page, gup_put_folio,
 * unpin over arrays).  The lockless GUP-fast walk joins it later; both
 * paths grab and release through these functions.
 *
 * The pin scheme mirrors the kernel's (SPEC §5): a small folio folds pins
 * into its refcount with GUP_PIN_COUNTING_BIAS; a large folio keeps an
 * exact pincount beside one reference per pin; the zero page is never
 * counted.
 */
#include "internal.h"

static inline bool pfn_valid(pg_machine *m, uint64_t pfn)
{
    return pfn < m->nr_frames;
}

static inline bool folio_is_large(pg_machine *m, uint64_t head)
{
    return pg_load_relaxed(&m->frames[head].order) > 0;
}

/* mirrors try_grab_page() (6.5) */
int pg_try_grab_page(pg_machine *m, uint64_t pfn, int pin)
{
    if (!pfn_valid(m, pfn))
        return -PG_EINVAL;
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    if (pg_load_relaxed(&h->flags) & PG_F_ZERO)
        return 0;
    if (PG_WARN_ON(m, pg_load_acquire(&h->refcount) <= 0,
                   "grab of folio %llu with refcount %d",
                   (unsigned long long)head, pg_load_relaxed(&h->refcount)))
        return -PG_ENOMEM;
    if (!pin)
        return pg_folio_try_get(m, pfn, 1) < 0 ? -PG_ENOMEM : 0;
    if (folio_is_large(m, head)) {
        if (pg_folio_try_get(m, pfn, 1) < 0)
            return -PG_ENOMEM;
        pg_fetch_add(&h->pincount, 1);
    } else if (pg_folio_try_get(m, pfn, PG_GUP_PIN_COUNTING_BIAS) < 0) {
        return -PG_ENOMEM;
    }
    pg_fetch_add_relaxed(&m->pins_acquired, 1);
    return 0;
}

/* mirrors gup_put_folio() */
static int put_folio(pg_machine *m, uint64_t pfn, int refs, int pin)
{
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    if (pg_load_relaxed(&h->flags) & PG_F_ZERO)
        return 0;
    if (pin) {
        pg_fetch_add_relaxed(&m->pins_released, (uint64_t)refs);
        if (folio_is_large(m, head)) {
            int32_t old = pg_fetch_add(&h->pincount, -refs);
            PG_BUG_ON(m, old < refs, "unpin of %d from folio %llu with pincount %d",
                      refs, (unsigned long long)head, old);
        } else {
            refs *= PG_GUP_PIN_COUNTING_BIAS;
        }
    }
    int64_t r = pg_folio_put_internal(m, pfn, refs);
    return r < 0 ? (int)r : 0;
}

int pg_gup_put(pg_machine *m, uint64_t pfn, int refs, int pin)
{
    if (!pfn_valid(m, pfn) || refs <= 0)
        return -PG_EINVAL;
    return put_folio(m, pfn, refs, pin);
}

/* the length of the run of entries from i on that share pfns[i]'s folio */
static int64_t folio_run(pg_machine *m, const uint64_t *pfns, int64_t i, int64_t n)
{
    uint64_t head = pg_frame_head(m, pfns[i]);
    int64_t j = i + 1;
    while (j < n && pfn_valid(m, pfns[j]) && pg_frame_head(m, pfns[j]) == head)
        j++;
    return j - i;
}

int pg_gup_can_put(pg_machine *m, const uint64_t *pfns, int64_t n, int pin)
{
    if (n < 0 || (n > 0 && !pfns))
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++)
        if (!pfn_valid(m, pfns[i]))
            return -PG_EINVAL;
    for (int64_t i = 0; i < n;) {
        int64_t run = folio_run(m, pfns, i, n);
        uint64_t head = pg_frame_head(m, pfns[i]);
        struct pg_frame *h = &m->frames[head];
        i += run;
        if (pg_load_relaxed(&h->flags) & PG_F_ZERO)
            continue;
        if (pg_load_relaxed(&h->flags) & PG_F_FREE)
            return 0;
        int64_t ref = pg_load_acquire(&h->refcount);
        if (!pin) {
            if (ref < run)
                return 0;
        } else if (folio_is_large(m, head)) {
            if (pg_load_acquire(&h->pincount) < run || ref < run)
                return 0;
        } else if (ref < run * PG_GUP_PIN_COUNTING_BIAS) {
            return 0;
        }
    }
    return 1;
}

/* mirrors unpin_user_pages(): one put per run of one folio */
int pg_gup_put_pages(pg_machine *m, const uint64_t *pfns, int64_t n, int pin)
{
    int rc = pg_gup_can_put(m, pfns, n, pin);
    if (rc <= 0)
        return rc < 0 ? rc : -PG_EINVAL;
    for (int64_t i = 0; i < n;) {
        int64_t run = folio_run(m, pfns, i, n);
        int r = put_folio(m, pfns[i], (int)run, pin);
        if (r < 0)
            return r;
        i += run;
    }
    return 0;
}

/* PageAnonExclusive(), which hugetlb keeps on the head page */
static bool anon_exclusive(pg_machine *m, uint64_t pfn, uint64_t head)
{
    uint64_t which = pg_load_relaxed(&m->frames[head].flags) & PG_F_HUGETLB ? head : pfn;
    return pg_load_acquire(&m->frames[which].flags) & PG_F_ANON_EXCLUSIVE;
}

/* mirrors follow_page_pte() for the pages it can take without a fault */
int64_t pg_follow_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                        int64_t nr, uint32_t how, uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu) || nr < 0 || (nr > 0 && !out) || (start & (PG_PAGE_SIZE - 1)) ||
        start >= PG_VA_LIMIT || (uint64_t)nr > (PG_VA_LIMIT - start) >> PG_PAGE_SHIFT ||
        ((how & PG_FOLLOW_GET) && (how & PG_FOLLOW_PIN)))
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    int64_t i;
    for (i = 0; i < nr; i++) {
        uint64_t addr = start + ((uint64_t)i << PG_PAGE_SHIFT), pte;
        int level = pg_walk_lockless(m, cpu, mm, addr, &pte, NULL);
        if (level <= 0)
            break;
        if (!(pte & PG_PTE_PRESENT) || (pte & (PG_PTE_PROTNONE | PG_PTE_SPECIAL)) ||
            !(pte & PG_PTE_USER))
            break;
        uint64_t pfn = pg_pte_pfn(pte);
        if (level == PG_LEVEL_PMD)
            pfn += (addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1);
        if (PG_BUG_ON(m, pfn >= m->nr_frames, "leaf at %#llx maps pfn %llu past memory",
                      (unsigned long long)addr, (unsigned long long)pfn))
            break;
        uint64_t head = pg_frame_head(m, pfn);
        bool writable = pte & PG_PTE_WRITE;
        if ((how & PG_FOLLOW_WRITE) && !writable)
            break; /* can_follow_write_pte(): FOLL_FORCE and faults are Python's */
        if ((how & PG_FOLLOW_PIN) && !(how & PG_FOLLOW_WRITE) && !writable) {
            /* gup_must_unshare() */
            bool anon = (pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_FLAGS) ==
                        PG_MAPPING_ANON;
            if (anon ? !anon_exclusive(m, pfn, head) : (how & PG_FOLLOW_UNSHARE_FILE))
                break;
        }
        if ((how & PG_FOLLOW_TOUCH) && (how & PG_FOLLOW_WRITE) && !(pte & PG_PTE_DIRTY) &&
            !(pg_load_acquire(&m->frames[head].flags) & PG_F_DIRTY))
            break; /* set_page_dirty() goes through the file system */
        if ((how & (PG_FOLLOW_GET | PG_FOLLOW_PIN)) &&
            pg_try_grab_page(m, pfn, how & PG_FOLLOW_PIN) < 0)
            break;
        if (how & PG_FOLLOW_TOUCH)
            pg_fetch_or(&m->frames[head].flags, PG_F_REFERENCED);
        out[i] = pfn;
    }
    pg_spin_unlock(&mm->lock);
    return i;
}
