/*
 * mm/gup.c - GUP in C, under mm/gup.c's names: reference counting
 * (try_grab_page, try_grab_folio, gup_put_folio, unpin over arrays), the
 * per-page rules of both paths (can_follow_write_pte, gup_must_unshare),
 * the slow path's batch follow helper, and GUP-fast (lockless_pages_from_mm,
 * gup_pte_range, gup_huge_pmd, folio_fast_pin_allowed), the lockless walk
 * with IRQs disabled.  The rules are exported at the end for Python.
 *
 * The pin scheme mirrors the kernel's (SPEC §5): a small folio folds pins
 * into its refcount with GUP_PIN_COUNTING_BIAS; a large folio keeps an
 * exact pincount beside one reference per pin; the zero page is never
 * counted.
 */
#include "internal.h"
#include "lib/report.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/frames.h"
#include "mm/pgtable.h"

static inline bool pfn_valid(pg_machine *m, uint64_t pfn)
{
    return pfn < m->nr_frames;
}

/* folio_test_large(), on the head frame h */
static inline bool head_is_large(struct pg_frame *h)
{
    return pg_load_relaxed(&h->order) > 0;
}

static inline bool folio_is_large(pg_machine *m, uint64_t head)
{
    return head_is_large(&m->frames[head]);
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
    pg_count_pins(m, true, 1);
    return 0;
}

/* mirrors gup_put_folio(); the pins it drops are added to *released, for
 * the caller to count once (one atomic per call, not per folio) */
static inline int put_folio_head(pg_machine *m, uint64_t head, int refs, int pin,
                                 uint64_t *released)
{
    struct pg_frame *h = &m->frames[head];
    if (pg_is_zero_pfn(head))
        return 0;
    if (pin) {
        *released += (uint64_t)refs;
        if (folio_is_large(m, head)) {
            int32_t old = pg_fetch_add(&h->pincount, -refs);
            PG_BUG_ON(m, old < refs, "unpin of %d from folio %llu with pincount %d",
                      refs, (unsigned long long)head, old);
        } else if (!pg_mutant(m, PG_MUT_UNPIN_NO_BIAS)) {
            refs *= PG_GUP_PIN_COUNTING_BIAS;
        }
    }
    int64_t r = pg_folio_put_head(m, head, refs);
    return r < 0 ? (int)r : 0;
}

/* put_folio_head() on the folio containing pfn */
static inline int put_folio(pg_machine *m, uint64_t pfn, int refs, int pin, uint64_t *released)
{
    return put_folio_head(m, pg_frame_head(m, pfn), refs, pin, released);
}

int pg_gup_put(pg_machine *m, uint64_t pfn, int refs, int pin)
{
    if (!pfn_valid(m, pfn) || refs <= 0)
        return -PG_EINVAL;
    uint64_t released = 0;
    int rc = put_folio(m, pfn, refs, pin, &released);
    if (released)
        pg_count_pins(m, false, released);
    return rc;
}

/* The runs of an array of pages: entries in a row on one folio, which
 * unpin_user_pages() drops with one put.  Each entry's folio head is read
 * once; run_end() returns where the run from i (on folio head) ends and
 * leaves the head of the entry there in *next.  The pfns were checked. */
static inline int64_t run_end(pg_machine *m, const uint64_t *pfns, int64_t i, int64_t n,
                              uint64_t head, uint64_t *next)
{
    int64_t j = i + 1;
    for (; j < n; j++) {
        uint64_t h = pg_frame_head(m, pfns[j]);
        if (h != head) {
            *next = h;
            break;
        }
    }
    return j;
}

/* can one run of `run` entries on the folio at head drop its pins (pin)
 * or references?  The zero page always can; a free folio never */
static inline bool run_can_put(pg_machine *m, uint64_t head, int64_t run, int pin)
{
    struct pg_frame *h = &m->frames[head];
    if (pg_is_zero_pfn(head))
        return true;
    if (pg_load_relaxed(&h->flags) & PG_F_FREE)
        return false;
    int64_t ref = pg_load_acquire(&h->refcount);
    if (!pin)
        return ref >= run;
    if (folio_is_large(m, head))
        return pg_load_acquire(&h->pincount) >= run && ref >= run;
    return ref >= run * PG_GUP_PIN_COUNTING_BIAS;
}

int pg_gup_can_put(pg_machine *m, const uint64_t *pfns, int64_t n, int pin)
{
    if (n < 0 || (n > 0 && !pfns))
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++)
        if (!pfn_valid(m, pfns[i]))
            return -PG_EINVAL;
    uint64_t head = n > 0 ? pg_frame_head(m, pfns[0]) : 0;
    for (int64_t i = 0; i < n;) {
        uint64_t next = 0;
        int64_t j = run_end(m, pfns, i, n, head, &next);
        if (!run_can_put(m, head, j - i, pin))
            return 0;
        i = j;
        head = next;
    }
    return 1;
}

/* mirrors unpin_user_pages(): one put per run of one folio, after every
 * run was checked (nothing is put when one holds no pin) */
int pg_gup_put_pages(pg_machine *m, const uint64_t *pfns, int64_t n, int pin)
{
    int rc = pg_gup_can_put(m, pfns, n, pin);
    if (rc <= 0)
        return rc < 0 ? rc : -PG_EINVAL;
    uint64_t released = 0;
    int r = 0;
    uint64_t head = n > 0 ? pg_frame_head(m, pfns[0]) : 0;
    for (int64_t i = 0; i < n;) {
        uint64_t next = 0;
        int64_t j = run_end(m, pfns, i, n, head, &next);
        r = put_folio_head(m, head, (int)(j - i), pin, &released);
        if (r < 0)
            break;
        i = j;
        head = next;
    }
    if (released)
        pg_count_pins(m, false, released);
    return r;
}

/* ------------------------------------------------------------------------
 * The per-page rules of the slow path and GUP-fast: one implementation
 * each, which Python asks through the pg_* entry points at the end.
 */

/* mirrors can_follow_write_pte() (6.5): may a FOLL_WRITE follow this
 * entry without a write fault?  pfn: the page, or -1 when there is no
 * normal page (a special entry).  vm_flags: the VMA's.  The soft-dirty and
 * uffd-wp tests of the kernel are not modelled. */
static bool can_follow_write_pte(pg_machine *m, uint64_t pte, int64_t pfn,
                                 uint32_t flags, uint64_t vm_flags)
{
    if (pte & PG_PTE_WRITE)
        return true;
    if (!(flags & PG_FOLL_FORCE))
        return false;
    /* FOLL_FORCE writes only private mappings that may become writable,
     * and only where a write fault is not needed anyway */
    if (vm_flags & (PG_VM_SHARED | PG_VM_MAYSHARE))
        return false;
    if (!(vm_flags & PG_VM_MAYWRITE) || (vm_flags & PG_VM_WRITE))
        return false;
    if (pg_mutant(m, PG_MUT_FORCE_WRITE_ANY_PAGE))
        return true; /* Dirty COW: the COW is not required */
    /* COW already broken: only an exclusive anonymous page may be written */
    if (pfn < 0)
        return false;
    uint64_t head = pg_frame_head(m, (uint64_t)pfn);
    return folio_test_anon(m, head) && page_anon_exclusive(m, (uint64_t)pfn, head);
}

/* mirrors gup_must_unshare() (6.5) for a read-only entry: must a FOLL_PIN
 * read fault to unshare the page first?  vma_is_cow: the VMA's
 * is_cow_mapping(), or -1 for GUP-fast, which has no VMA. */
static bool gup_must_unshare(pg_machine *m, int vma_is_cow, uint32_t flags, uint64_t pfn,
                             uint64_t head)
{
    if ((flags & (PG_FOLL_PIN | PG_FOLL_WRITE)) != PG_FOLL_PIN)
        return false;
    if (!folio_test_anon(m, head)) {
        /* a long-term R/O pin of a COW mapping's page cache page would
         * miss a later COW; without a VMA the slow path decides */
        if (!(flags & PG_FOLL_LONGTERM))
            return false;
        return vma_is_cow < 0 ? true : vma_is_cow != 0;
    }
    pg_smp_mb(); /* pairs with the sharing side's barrier (fork) */
    return !page_anon_exclusive(m, pfn, head);
}

/* follow_page_pte()'s checks for one page that needs no fault, without
 * taking it: the pfn in *pfnp when the page can be taken as `how` asks.
 * The caller holds mm->lock. */
static bool follow_page_ok(pg_machine *m, int cpu, struct pg_mm *mm, uint64_t addr,
                           uint32_t how, uint64_t *pfnp)
{
    uint64_t pte;
    int level = pg_walk_lockless(m, cpu, mm, addr, &pte, NULL);
    if (level <= 0)
        return false;
    if (!(pte & PG_PTE_PRESENT) || (pte & (PG_PTE_PROTNONE | PG_PTE_SPECIAL)) ||
        !(pte & PG_PTE_USER))
        return false;
    uint64_t pfn = pg_pte_pfn(pte);
    if (level == PG_LEVEL_PMD)
        pfn += (addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1);
    if (PG_BUG_ON(m, pfn >= m->nr_frames, "leaf at %#llx maps pfn %llu past memory",
                  (unsigned long long)addr, (unsigned long long)pfn))
        return false;
    uint64_t head = pg_frame_head(m, pfn);
    if (level == PG_LEVEL_PMD && (how & PG_FOLLOW_SPLIT_PMD) &&
        !(pg_load_relaxed(&m->frames[head].flags) & PG_F_HUGETLB))
        return false; /* FOLL_SPLIT_PMD: the split is Python's */
    /* FOLL_FORCE and faults are Python's: without FORCE the rule is
     * pte_write() */
    if ((how & PG_FOLLOW_WRITE) && !can_follow_write_pte(m, pte, pfn, PG_FOLL_WRITE, 0))
        return false;
    /* UNSHARE_FILE is FOLL_LONGTERM in a COW mapping (the caller knows
     * the VMA): gup_must_unshare() with that VMA */
    bool cow_longterm = how & PG_FOLLOW_UNSHARE_FILE;
    if ((how & PG_FOLLOW_PIN) && !(how & PG_FOLLOW_WRITE) && !(pte & PG_PTE_WRITE) &&
        !pg_mutant(m, PG_MUT_NO_UNSHARE) &&
        gup_must_unshare(m, cow_longterm, PG_FOLL_PIN | (cow_longterm ? PG_FOLL_LONGTERM : 0),
                         pfn, head))
        return false;
    if ((how & PG_FOLLOW_TOUCH) && (how & PG_FOLLOW_WRITE) && !(pte & PG_PTE_DIRTY) &&
        !(pg_load_acquire(&m->frames[head].flags) & PG_F_DIRTY))
        return false; /* set_page_dirty() goes through the file system */
    *pfnp = pfn;
    return true;
}

/* take the page follow_page_ok() answered for: the reference or pin `how`
 * asks, and FOLL_TOUCH's mark_page_accessed() */
static bool follow_page_take(pg_machine *m, uint64_t pfn, uint32_t how)
{
    if ((how & (PG_FOLLOW_GET | PG_FOLLOW_PIN)) &&
        pg_try_grab_page(m, pfn, how & PG_FOLLOW_PIN) < 0)
        return false;
    if (how & PG_FOLLOW_TOUCH)
        pg_fetch_or(&m->frames[pg_frame_head(m, pfn)].flags, PG_F_REFERENCED);
    return true;
}

/* the walks' argument checks, then the mm, locked: NULL (the caller
 * answers -PG_EINVAL) when either fails */
static struct pg_mm *follow_begin(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                                  int64_t nr, uint32_t how, const uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu) || nr < 0 || (nr > 0 && !out) || (start & (PG_PAGE_SIZE - 1)) ||
        start >= PG_VA_LIMIT || (uint64_t)nr > (PG_VA_LIMIT - start) >> PG_PAGE_SHIFT ||
        ((how & PG_FOLLOW_GET) && (how & PG_FOLLOW_PIN)))
        return NULL;
    return pg_mm_lock(m, mmid);
}

/* mirrors follow_page_pte() for the pages it can take without a fault */
int64_t pg_follow_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                        int64_t nr, uint32_t how, uint64_t *out)
{
    struct pg_mm *mm = follow_begin(m, cpu, mmid, start, nr, how, out);
    if (!mm)
        return -PG_EINVAL;
    int64_t i;
    for (i = 0; i < nr; i++) {
        uint64_t pfn;
        if (!follow_page_ok(m, cpu, mm, start + ((uint64_t)i << PG_PAGE_SHIFT), how, &pfn) ||
            !follow_page_take(m, pfn, how))
            break;
        out[i] = pfn;
    }
    pg_spin_unlock(&mm->lock);
    return i;
}

/* pg_follow_range() of all nr pages or none: the pages are taken only when
 * follow_page_ok() passes every one (and, with `longterm`, each folio is
 * long-term pinnable: check_and_migrate_movable_pages() would keep it), so
 * a call that cannot finish in C changes nothing and the caller's general
 * path decides it from the start.  Returns nr or 0.  The page tables do
 * not change between the two passes: their writers hold the machine lock,
 * as the caller does; a grab that still fails (a refcount at its limit)
 * puts back what was taken (the FOLL_TOUCH accessed marks of those stay:
 * a hint). */
int64_t pg_follow_range_all(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                            int64_t nr, uint32_t how, int longterm, uint64_t *out)
{
    struct pg_mm *mm = follow_begin(m, cpu, mmid, start, nr, how, out);
    if (!mm)
        return -PG_EINVAL;
    int64_t i;
    for (i = 0; i < nr; i++) {
        if (!follow_page_ok(m, cpu, mm, start + ((uint64_t)i << PG_PAGE_SHIFT), how, &out[i]) ||
            (longterm && pg_folio_is_longterm_pinnable(m, out[i]) != 1))
            break;
    }
    int64_t taken = 0;
    if (i == nr)
        while (taken < nr && follow_page_take(m, out[taken], how))
            taken++;
    pg_spin_unlock(&mm->lock);
    if (taken == nr)
        return nr;
    if (taken > 0 && (how & (PG_FOLLOW_GET | PG_FOLLOW_PIN)))
        pg_gup_put_pages(m, out, taken, (how & PG_FOLLOW_PIN) != 0);
    return 0;
}

/* ------------------------------------------------------------------------
 * GUP-fast
 */

/* ---- GUP-fast ------------------------------------------------------------
 * The loop's hooks -- race windows (PG_YIELD), the stress amplifier,
 * protection switches (pg_mutant) -- cost a load and a branch each, several
 * per page.  When none can fire (no scheduler session, no amplifier, no
 * switch on: read once per call) the loop runs a second copy compiled
 * without them; `hooks` is a constant in each copy.  Both copies are the
 * one source, so a mutant of a rule reaches both (bench/mutation.py);
 * tests/model/test_gup_fast_hooks.py fails if a session or a switch ever
 * meets the hook-free copy. */
#define FAST_YIELD(hooks, m, cpu, window) ((hooks) ? PG_YIELD(m, cpu, window) : (void)0)
#define FAST_AMPLIFY(hooks, m, window) ((hooks) ? PG_RACE_AMPLIFY(m, window) : (void)0)
#define FAST_MUTANT(hooks, m, bit) ((hooks) && pg_mutant(m, bit))
#define FAST_INLINE static inline __attribute__((always_inline))

static bool fast_hooks_on(pg_machine *m)
{
    return pg_load_relaxed(&m->sched_on) || pg_load_relaxed(&m->race_amplify) ||
           pg_load_relaxed(&m->mutants);
}

/* mirrors try_grab_folio() (6.5; try_grab_folio_fast from 6.11): refs on
 * the folio containing pfn, found by the caller as head before its race
 * window; returns the head of the folio the refs went to (the caller's
 * `folio`, which its checks and its undo use), or -1 (nothing taken).  A
 * split between finding the folio and taking the refs can leave them on a
 * folio that no longer contains the page: after taking them, look again
 * and retry on the page's folio (c24d37322548; switch no_folio_recheck
 * skips it).  -2 instead of -1 when only because a long-term pin may not
 * stay in ZONE_MOVABLE (explain's trace says so).  Pins taken are added to
 * *pins, for the caller to count once. */
FAST_INLINE int64_t try_grab_folio(pg_machine *m, uint64_t pfn, uint64_t head, int refs,
                                   uint32_t flags, uint64_t *pins, bool hooks)
{
    if (!(flags & (PG_FOLL_GET | PG_FOLL_PIN)))
        return -1;
    int add;
    struct pg_frame *h;
    for (;;) {
        if ((flags & PG_FOLL_PIN) && pg_is_zero_pfn(head))
            return (int64_t)head; /* the zero page is never counted */
        h = &m->frames[head];
        /* A pin of a small folio takes its whole GUP_PIN_COUNTING_BIAS in
         * the one checked add: try_get_folio() refuses a count that is not
         * positive and the add refuses to pass INT32_MAX, so repeated pins
         * fail cleanly (the slow path then says -ENOMEM) instead of
         * wrapping the count negative (BUGS #10) */
        add = ((flags & PG_FOLL_PIN) && !head_is_large(h)) ? refs * PG_GUP_PIN_COUNTING_BIAS : refs;
        if (pg_folio_try_get(m, head, add) < 0)
            return -1; /* refcount zero (being freed, frozen by a split) or no headroom */
        if (FAST_MUTANT(hooks, m, PG_MUT_NO_FOLIO_RECHECK) || pg_frame_head(m, pfn) == head)
            break;
        pg_folio_put_internal(m, head, add); /* split meanwhile: try its new folio */
        head = pg_frame_head(m, pfn);
    }
    if (!(flags & PG_FOLL_PIN))
        return (int64_t)head;
    if ((flags & PG_FOLL_LONGTERM) && !folio_is_longterm_pinnable(m, head)) {
        pg_folio_put_internal(m, head, add); /* the slow path migrates it */
        return -2;
    }
    if (add == refs)                 /* a large folio: the pins go on pincount */
        pg_fetch_add(&h->pincount, refs);
    /* the pin is visible before the PTE re-check: try_grab_folio()'s
     * smp_mb__after_atomic(), pairing with the barrier of the side that
     * write-protects and then looks for pins (fork, collapse) */
    pg_smp_mb__after_atomic();
    *pins += (uint64_t)refs;
    return (int64_t)head;
}

/* folio_set_referenced(), skipping the atomic when the bit is already set */
static inline void mark_referenced(struct pg_frame *h)
{
    if (!(pg_load_relaxed(&h->flags) & PG_F_REFERENCED))
        pg_fetch_or(&h->flags, PG_F_REFERENCED);
}

static void ungrab(pg_machine *m, uint64_t pfn, int refs, uint32_t flags)
{
    uint64_t released = 0;
    put_folio(m, pfn, refs, (flags & PG_FOLL_PIN) != 0, &released);
    if (released)
        pg_count_pins(m, false, released);
}

/* mirrors page_is_secretmem() / folio_is_secretmem(): an order-0 folio
 * whose mapping is secretmem's.  6.5's version only looked at folios on
 * the LRU (PG_GUPF_SECRETMEM_LRU), the shortcut 65291dcfcf89 removed. */
FAST_INLINE bool is_secretmem(pg_machine *m, int cpu, struct pg_frame *h, uint32_t policy,
                              bool hooks)
{
    if (pg_load_relaxed(&h->order) > 0)
        return false;
    if ((policy & PG_GUPF_SECRETMEM_LRU) && !(pg_load_acquire(&h->flags) & PG_F_LRU))
        return false;
    uint64_t mapping = pg_load_acquire(&h->mapping);
    FAST_AMPLIFY(hooks, m, PG_W_FAST_SECRETMEM_MAPPING_READ);
    if (!mapping || (mapping & PG_MAPPING_FLAGS))
        return false;
    struct pg_as *a = pg_as_lookup_rcu(m, cpu, mapping >> 2);
    return a && (pg_load_acquire(&a->kind) & PG_AS_SECRETMEM);
}

/* mirrors folio_fast_pin_allowed() (6.5, patch 3 of the seed): may GUP-fast
 * take a FOLL_PIN|FOLL_LONGTERM|FOLL_WRITE pin of this folio?  Only anon,
 * shmem and hugetlb; everything else falls back to the slow path, which
 * knows the VMA.  Reading folio->mapping is safe only because IRQs are off
 * (an RCU read-side section) and address_spaces are freed by RCU. */
FAST_INLINE bool folio_fast_pin_allowed(pg_machine *m, int cpu, uint64_t head,
                                        struct pg_frame *h, uint32_t flags, bool hooks)
{
    const uint32_t all = PG_FOLL_PIN | PG_FOLL_LONGTERM | PG_FOLL_WRITE;
    if ((flags & all) != all)
        return true;
    uint32_t fflags = pg_load_acquire(&h->flags);
    if (PG_WARN_ON(m, fflags & PG_F_SLAB, "GUP-fast found slab folio %llu",
                   (unsigned long long)head))
        return false;
    if (fflags & PG_F_HUGETLB)
        return true; /* no dirty tracking */
    PG_BUG_ON(m, !pg_cpu_irqs_off(m, cpu), "folio_fast_pin_allowed with IRQs on");
    /* READ_ONCE: truncation may clear it under us; read it exactly once */
    uint64_t mapping = pg_load_acquire(&h->mapping);
    FAST_YIELD(hooks, m, cpu, PG_W_FAST_MAPPING_READ);
    if (!mapping)
        return FAST_MUTANT(hooks, m, PG_MUT_NULL_MAPPING_OK);
    if (mapping & PG_MAPPING_FLAGS)
        return (mapping & PG_MAPPING_ANON) != 0; /* anon and KSM */
    struct pg_as *a = pg_as_lookup_rcu(m, cpu, mapping >> 2);
    return a && (pg_load_acquire(&a->kind) & PG_AS_SHMEM);
}

FAST_INLINE bool whitelist_ok(pg_machine *m, int cpu, uint64_t head, struct pg_frame *h,
                              uint32_t flags, uint32_t policy, bool hooks)
{
    if (!(policy & PG_GUPF_WHITELIST))
        return true;
    bool ok = folio_fast_pin_allowed(m, cpu, head, h, flags, hooks);
    return FAST_MUTANT(hooks, m, PG_MUT_WHITELIST_INVERTED) ? !ok : ok;
}

/* GUP-fast's gup_must_unshare(NULL, ...), with its protection switch.  A
 * non-anon page needs the VMA's COW test only from 6.2 (84209e87c696,
 * PG_GUPF_UNSHARE_COW: without a VMA that means "fall back"); 6.1's
 * gup_must_unshare() passed every non-anon page. */
FAST_INLINE bool gup_fast_must_unshare(pg_machine *m, uint64_t pfn, uint64_t head,
                                       uint32_t flags, uint32_t policy, bool hooks)
{
    if (FAST_MUTANT(hooks, m, PG_MUT_FAST_NO_UNSHARE))
        return false;
    if (!(policy & PG_GUPF_UNSHARE_COW) && !folio_test_anon(m, head))
        return false;
    return gup_must_unshare(m, -1, flags, pfn, head);
}

struct fast_walk {
    pg_machine *m;
    int cpu;
    struct pg_mm *mm;
    uint32_t flags, policy;
    uint64_t *out;
    int64_t nr;
    int why; /* PG_FAST_STOP_*: why the walk stopped (explain's trace) */
    uint64_t pins; /* pins taken, counted once at the end */
};

static bool fast_stop(struct fast_walk *fw, int why)
{
    fw->why = why;
    return false;
}

/* Why GUP-fast cannot take a leaf (a PTE or a PMD), in gup_pte_range()'s
 * order of tests; PG_FAST_STOP_NONE when it can. */
static inline int leaf_stop_reason(uint64_t e, uint32_t flags)
{
    if (e & PG_PTE_PROTNONE) /* NUMA hinting and PROT_NONE: the slow path decides */
        return PG_FAST_STOP_PROTNONE;
    if (!(e & PG_PTE_PRESENT))
        return PG_FAST_STOP_NOT_PRESENT;
    if (!(e & PG_PTE_USER) || ((flags & PG_FOLL_WRITE) && !(e & PG_PTE_WRITE)))
        return PG_FAST_STOP_ACCESS; /* pte_access_permitted() */
    if (e & PG_PTE_SPECIAL)
        return PG_FAST_STOP_SPECIAL;
    return PG_FAST_STOP_NONE;
}

/* mirrors gup_pte_range() (6.5 order): the PTEs of one table from addr to
 * end (inside the table), w holding the first entry as the walk read it;
 * each next entry is read once from the same table, which must still be
 * live after the read.  true when every page was taken. */
FAST_INLINE bool gup_pte_range(struct fast_walk *fw, struct pg_walk *w, uint64_t addr,
                               uint64_t end, bool hooks)
{
    pg_machine *m = fw->m;
    const uint32_t flags = fw->flags, policy = fw->policy;
    const int cpu = fw->cpu;
    /* leaf_stop_reason()'s tests as one compare for the common entry:
     * present, user, writable when FOLL_WRITE asks, not PROT_NONE, not
     * special; any other entry goes to leaf_stop_reason() */
    const uint64_t want = PG_PTE_PRESENT | PG_PTE_USER | ((flags & PG_FOLL_WRITE) ? PG_PTE_WRITE : 0);
    const uint64_t tested = want | PG_PTE_PROTNONE | PG_PTE_SPECIAL;
    /* the walk's state in locals, written back on the way out: the stores
     * to out[] might alias fw and w as far as the compiler knows */
    uint64_t *const out = fw->out;
    int64_t nr = fw->nr;
    uint64_t pins = fw->pins;
    _Atomic uint64_t *ptep = w->pte_slot;
    _Atomic uint64_t *const pmdp = w->pmd_slot;
    const uint64_t pmd = w->pmd;
    const struct pg_table *const table = w->table;
    uint64_t pte = w->pte;
    int why;
    for (;;) {
        if (__builtin_expect((pte & tested) != want, 0)) {
            why = leaf_stop_reason(pte, flags);
            break;
        }
        uint64_t pfn = pg_pte_pfn(pte);
        if (PG_BUG_ON(m, pfn >= m->nr_frames, "GUP-fast: PTE at %#llx maps pfn %llu",
                      (unsigned long long)addr, (unsigned long long)pfn)) {
            why = PG_FAST_STOP_GRAB;
            break;
        }
        /* page_folio(): found before the window, used after it */
        uint64_t folio = pg_frame_head(m, pfn);
        FAST_YIELD(hooks, m, cpu, PG_W_FAST_PTE_READ);
        int64_t grabbed = try_grab_folio(m, pfn, folio, 1, flags, &pins, hooks);
        if (grabbed < 0) {
            why = grabbed == -2 ? PG_FAST_STOP_MOVABLE : PG_FAST_STOP_GRAB;
            break;
        }
        uint64_t head = (uint64_t)grabbed;
        struct pg_frame *h = &m->frames[head];
        FAST_YIELD(hooks, m, cpu, PG_W_FAST_GRABBED);
        why = PG_FAST_STOP_SECRETMEM;
        if (!FAST_MUTANT(hooks, m, PG_MUT_FAST_SECRETMEM) && is_secretmem(m, cpu, h, policy, hooks))
            goto drop;
        why = PG_FAST_STOP_WHITELIST;
        if (FAST_MUTANT(hooks, m, PG_MUT_WHITELIST_BEFORE_RECHECK) &&
            !whitelist_ok(m, cpu, head, h, flags, policy, hooks))
            goto drop;
        FAST_YIELD(hooks, m, cpu, PG_W_FAST_BEFORE_RECHECK);
        /* the PMD (THP collapse, table freeing) or the PTE changed: back off */
        why = PG_FAST_STOP_CHANGED;
        if (!FAST_MUTANT(hooks, m, PG_MUT_NO_PMD_RECHECK) && pg_load_acquire(pmdp) != pmd)
            goto drop;
        if (!FAST_MUTANT(hooks, m, PG_MUT_NO_PTE_RECHECK) && pg_load_acquire(ptep) != pte)
            goto drop;
        FAST_YIELD(hooks, m, cpu, PG_W_FAST_RECHECKED);
        why = PG_FAST_STOP_WHITELIST;
        if (!FAST_MUTANT(hooks, m, PG_MUT_WHITELIST_BEFORE_RECHECK) &&
            !whitelist_ok(m, cpu, head, h, flags, policy, hooks))
            goto drop;
        why = PG_FAST_STOP_UNSHARE;
        if (!(pte & PG_PTE_WRITE) && gup_fast_must_unshare(m, pfn, head, flags, policy, hooks))
            goto drop;
        mark_referenced(h);
        out[nr++] = pfn;

        why = PG_FAST_STOP_NONE;
        addr += PG_PAGE_SIZE;
        if (addr >= end)
            break;
        ptep++;
        pte = pg_load_acquire(ptep);
        FAST_YIELD(hooks, m, cpu, PG_W_WALK_ENTRY_READ);
        if (PG_BUG_ON(m, pg_load_acquire(&table->magic) != PG_TABLE_MAGIC_LIVE,
                      "cpu %d: use-after-free of PTE table %u in GUP-fast at %#llx",
                      cpu, table->id, (unsigned long long)addr)) {
            why = PG_FAST_STOP_GRAB;
            break;
        }
        continue; /* an empty entry (0) stops at the test on top: not present */
drop:
        ungrab(m, head, 1, flags); /* gup_put_folio(folio): where the refs went */
        break;
    }
    fw->nr = nr;
    fw->pins = pins;
    w->pte_slot = ptep;
    w->pte = pte;
    if (why == PG_FAST_STOP_NONE)
        return true;
    return fast_stop(fw, why);
}

/* the two copies of the loop (see FAST_YIELD) */
static bool gup_pte_range_hooked(struct fast_walk *fw, struct pg_walk *w, uint64_t addr,
                                 uint64_t end)
{
    return gup_pte_range(fw, w, addr, end, true);
}

static bool gup_pte_range_plain(struct fast_walk *fw, struct pg_walk *w, uint64_t addr,
                                uint64_t end)
{
    return gup_pte_range(fw, w, addr, end, false);
}

/* A 2 MiB PMD leaf (mirrors gup_huge_pmd(), 6.5 order): every subpage from
 * addr to end in one grab.  Returns pages taken (0 = stop). */
static int64_t gup_huge_pmd(struct fast_walk *fw, uint64_t addr, uint64_t end,
                            const struct pg_walk *w)
{
    pg_machine *m = fw->m;
    uint64_t pmd = w->pmd;
    uint32_t flags = fw->flags;
    int stop = leaf_stop_reason(pmd, flags);
    if (stop != PG_FAST_STOP_NONE)
        return fast_stop(fw, stop);
    uint64_t pmd_end = (addr & ~(PG_PMD_SIZE - 1)) + PG_PMD_SIZE;
    if (end > pmd_end)
        end = pmd_end;
    int refs = (int)((end - addr) >> PG_PAGE_SHIFT);
    uint64_t pfn = pg_pte_pfn(pmd) + ((addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1));
    if (PG_BUG_ON(m, pfn + (uint64_t)refs > m->nr_frames, "GUP-fast: PMD maps past memory"))
        return fast_stop(fw, PG_FAST_STOP_GRAB);
    uint64_t folio = pg_frame_head(m, pfn);
    PG_YIELD(m, fw->cpu, PG_W_FAST_PTE_READ);
    int64_t grabbed = try_grab_folio(m, pfn, folio, refs, flags, &fw->pins, true);
    if (grabbed < 0)
        return fast_stop(fw, grabbed == -2 ? PG_FAST_STOP_MOVABLE : PG_FAST_STOP_GRAB);
    uint64_t head = (uint64_t)grabbed;
    PG_YIELD(m, fw->cpu, PG_W_FAST_BEFORE_RECHECK);
    int why = PG_FAST_STOP_CHANGED;
    if (!(pg_mutant(m, PG_MUT_NO_PMD_RECHECK) || pg_mutant(m, PG_MUT_NO_PTE_RECHECK)) &&
        pg_load_acquire(w->pmd_slot) != pmd)
        goto drop;
    why = PG_FAST_STOP_WHITELIST;
    if (!whitelist_ok(m, fw->cpu, head, &m->frames[head], flags, fw->policy, true))
        goto drop;
    why = PG_FAST_STOP_UNSHARE;
    if (!(pmd & PG_PTE_WRITE) && gup_fast_must_unshare(m, pfn, head, flags, fw->policy, true))
        goto drop;
    mark_referenced(&m->frames[head]);
    for (int i = 0; i < refs; i++)
        fw->out[fw->nr++] = pfn + (uint64_t)i;
    return refs;
drop:
    ungrab(m, head, refs, flags);
    return fast_stop(fw, why);
}

/* mirrors lockless_pages_from_mm() (6.5): mm is live, [start, end) checked */
static int64_t lockless_pages_from_mm(pg_machine *m, int cpu, struct pg_mm *mm,
                                      uint64_t start, uint64_t end, uint32_t flags,
                                      uint32_t policy, uint64_t *out, int *why)
{
    *why = PG_FAST_STOP_NONE;
    uint32_t seq = 0;
    bool check_seq = (flags & PG_FOLL_PIN) && !pg_mutant(m, PG_MUT_NO_WP_SEQ);
    if (check_seq) {
        seq = pg_load_acquire(&mm->wp_seq);
        if (seq & 1) {
            *why = PG_FAST_STOP_WP_SEQ;
            return 0; /* fork is write-protecting right now */
        }
    }
    PG_YIELD(m, cpu, PG_W_FAST_WP_SEQ_READ);
    /* walking current->mm: this CPU has it active (shootdowns reach us) */
    pg_mm_cpumask_set(mm, cpu);
    pg_local_irq_disable(m, cpu);
    struct fast_walk fw = {m, cpu, mm, flags, policy, out, 0, PG_FAST_STOP_NONE, 0};
    bool (*pte_range)(struct fast_walk *, struct pg_walk *, uint64_t, uint64_t) =
        fast_hooks_on(m) ? gup_pte_range_hooked : gup_pte_range_plain;
    for (uint64_t addr = start; addr < end;) {
        struct pg_walk w;
        int level = pg_walk_lockless_ex(m, cpu, mm, addr, &w);
        if (level <= 0) {
            fw.why = PG_FAST_STOP_NOT_PRESENT; /* no table or no entry */
            break;
        }
        if (level == PG_LEVEL_PMD) {
            int64_t got = gup_huge_pmd(&fw, addr, end, &w);
            if (!got)
                break;
            addr += (uint64_t)got << PG_PAGE_SHIFT;
            continue;
        }
        /* the rest of this PTE table without walking down again */
        uint64_t next = (addr & ~(PG_PMD_SIZE - 1)) + PG_PMD_SIZE;
        if (next > end)
            next = end;
        if (!w.pmd_slot) {
            fw.why = PG_FAST_STOP_NOT_PRESENT;
            break;
        }
        if (!pte_range(&fw, &w, addr, next))
            break;
        addr = next;
    }
    pg_local_irq_enable(m, cpu);
    if (fw.pins)
        pg_count_pins(m, true, fw.pins);
    PG_YIELD(m, cpu, PG_W_FAST_WP_SEQ_RECHECK);
    if (check_seq && pg_load_acquire(&mm->wp_seq) != seq) {
        /* a fork overlapped: its copy may have shared what we pinned */
        for (int64_t i = 0; i < fw.nr; i++)
            ungrab(m, out[i], 1, flags);
        *why = PG_FAST_STOP_WP_SEQ;
        return 0;
    }
    *why = fw.why;
    return fw.nr;
}

int64_t pg_gup_fast(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                    int64_t nr, uint32_t flags, uint32_t policy, uint64_t *out)
{
    return pg_gup_fast_why(m, cpu, mmid, start, nr, flags, policy, out, NULL);
}

int64_t pg_gup_fast_why(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                        int64_t nr, uint32_t flags, uint32_t policy, uint64_t *out,
                        int *why)
{
    int ignored;
    if (!why)
        why = &ignored;
    *why = PG_FAST_STOP_NONE;
    if (!pg_cpu_ok(m, cpu) || nr < 0 || (nr > 0 && !out) || (start & (PG_PAGE_SIZE - 1)) ||
        start >= PG_VA_LIMIT || (uint64_t)nr > (PG_VA_LIMIT - start) >> PG_PAGE_SHIFT ||
        ((flags & PG_FOLL_GET) && (flags & PG_FOLL_PIN)))
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    return lockless_pages_from_mm(m, cpu, mm, start, start + ((uint64_t)nr << PG_PAGE_SHIFT),
                                  flags, policy, out, why);
}

/* ---- the rules, asked from Python (bounds-checked) ---------------------- */

/* a frame Python may ask a rule about: in memory and part of a live folio */
static bool rule_pfn_ok(pg_machine *m, uint64_t pfn)
{
    return pfn < m->nr_frames &&
           !(pg_load_acquire(&m->frames[pg_frame_head(m, pfn)].flags) & PG_F_FREE);
}

int pg_gup_must_unshare(pg_machine *m, uint64_t pfn, uint32_t gup_flags, int vma_is_cow)
{
    if (!rule_pfn_ok(m, pfn) || vma_is_cow < -1 || vma_is_cow > 1)
        return -PG_EINVAL;
    /* the slow path's switch with a VMA, GUP-fast's without */
    if (pg_mutant(m, vma_is_cow < 0 ? PG_MUT_FAST_NO_UNSHARE : PG_MUT_NO_UNSHARE))
        return 0;
    return gup_must_unshare(m, vma_is_cow, gup_flags, pfn, pg_frame_head(m, pfn));
}

int pg_can_follow_write_pte(pg_machine *m, uint64_t pte, int64_t pfn, uint32_t gup_flags,
                            uint64_t vm_flags)
{
    if (pfn < -1 || (pfn >= 0 && !rule_pfn_ok(m, (uint64_t)pfn)))
        return -PG_EINVAL;
    return can_follow_write_pte(m, pte, pfn, gup_flags, vm_flags);
}
