/*
 * mm/frames.h - physical memory inside the core: folio reference and map
 * counts without bounds checks (callers hold a valid pfn), and the lockless
 * lookup of an address_space record, and the per-page folio predicates
 * (inline: GUP-fast and fork ask them per page).  The exported calls are
 * in pygup.h.
 */
#ifndef PYGUP_MM_FRAMES_H
#define PYGUP_MM_FRAMES_H

#include "internal.h"
#include "lib/report.h"

int pg_frames_init(pg_machine *m);
void pg_frames_fini(pg_machine *m);
void pg_as_fini(pg_machine *m);
/* the last reference of the folio at head is gone: scrub and free it */
void pg_folio_free_internal(pg_machine *m, uint64_t head);
int64_t pg_mapcount_add_internal(pg_machine *m, uint64_t pfn, int delta);
/* a record still readable under RCU (live or pending); NULL + violation
 * if it is poisoned: the lockless mapping check of GUP-fast uses it */
struct pg_as *pg_as_lookup_rcu(pg_machine *m, int cpu, uint64_t id);

/* is_zero_pfn(): frame PG_ZERO_PFN is the shared zero page, the only frame
 * that ever carries PG_F_ZERO (set once at machine creation, never freed),
 * so a pfn compare answers what a load of its flags would */
static inline bool pg_is_zero_pfn(uint64_t pfn)
{
    return pfn == PG_ZERO_PFN;
}

/* ---- reference counting (inline: GUP-fast and unpin take and drop
 * references per page) ---- */
/* "add unless zero" on pfn's folio (folio_ref_try_add_rcu()): the new
 * count, -PG_EINVAL if it is zero (free, or frozen by a split) and
 * -PG_EOVERFLOW if refs would pass INT32_MAX; the zero page is never
 * counted.  No bounds check: pfn is valid. */
static inline int64_t pg_folio_try_get(pg_machine *m, uint64_t pfn, int refs)
{
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    if (pg_is_zero_pfn(head))
        return pg_load_relaxed(&h->refcount); /* never counted */
    int32_t old = pg_load_relaxed(&h->refcount);
    for (;;) {
        if (__builtin_expect(old <= 0, 0)) {
            PG_WARN_ON(m, old < 0, "folio %llu has refcount %d",
                       (unsigned long long)head, old);
            return -PG_EINVAL; /* free or being freed: never resurrect */
        }
        if (__builtin_expect((int64_t)old + refs > INT32_MAX, 0))
            return -PG_EOVERFLOW;
        if (__builtin_expect(pg_cas(&h->refcount, &old, old + refs), 1))
            return (int64_t)old + refs;
    }
}

/* drop refs on the folio at head (folio_put_refs()), freeing it at zero;
 * a put below zero is refused (BUG).  head: the caller's read of its page's
 * head word, with the references it drops still held (nothing can split or
 * free the folio meanwhile).  No bounds check. */
static inline int64_t pg_folio_put_head(pg_machine *m, uint64_t head, int refs)
{
    struct pg_frame *h = &m->frames[head];
    if (pg_is_zero_pfn(head))
        return pg_load_relaxed(&h->refcount);
    int32_t old = pg_load_relaxed(&h->refcount);
    for (;;) {
        if (PG_BUG_ON(m, old - refs < 0,
                      "put of %d refs on folio %llu with refcount %d refused",
                      refs, (unsigned long long)head, old))
            return -PG_EINVAL;
        if (__builtin_expect(pg_cas(&h->refcount, &old, old - refs), 1))
            break;
    }
    if (old - refs == 0)
        pg_folio_free_internal(m, head);
    return old - refs;
}

/* pg_folio_put_head() on the folio containing pfn */
static inline int64_t pg_folio_put_internal(pg_machine *m, uint64_t pfn, int refs)
{
    return pg_folio_put_head(m, pg_frame_head(m, pfn), refs);
}

/* ---- the per-page rules, one implementation each (Python asks the
 * pg_* versions in pygup.h); head is pfn's folio head ---- */
/* folio_test_anon(): the mapping word names an anon_vma */
static inline bool folio_test_anon(pg_machine *m, uint64_t head)
{
    return (pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_FLAGS) == PG_MAPPING_ANON;
}

/* mirrors PageAnonExclusive(): per page, but hugetlb keeps it on the head
 * page (6.5-rc7) */
static inline bool page_anon_exclusive(pg_machine *m, uint64_t pfn, uint64_t head)
{
    uint64_t which = pg_load_relaxed(&m->frames[head].flags) & PG_F_HUGETLB ? head : pfn;
    return pg_load_acquire(&m->frames[which].flags) & PG_F_ANON_EXCLUSIVE;
}

/* mirrors folio_is_longterm_pinnable() (6.5): not in ZONE_MOVABLE; the
 * zero page always is */
static inline bool folio_is_longterm_pinnable(pg_machine *m, uint64_t head)
{
    if (pg_is_zero_pfn(head))
        return true;
    return m->frames[head].zone != PG_ZONE_MOVABLE;
}

/* mirrors folio_maybe_dma_pinned(): a large folio counts its pins exactly;
 * a small one folds them into its refcount, so enough plain references
 * look pinned too ("maybe") */
static inline bool folio_maybe_dma_pinned(pg_machine *m, uint64_t head)
{
    struct pg_frame *h = &m->frames[head];
    if (pg_load_relaxed(&h->order) > 0)
        return pg_load_acquire(&h->pincount) > 0;
    return (uint32_t)pg_load_acquire(&h->refcount) >= PG_GUP_PIN_COUNTING_BIAS;
}

#endif /* PYGUP_MM_FRAMES_H */
