/*
 * gup_fast.c - GUP in C: reference counting (try_grab_page,
 * try_grab_folio, gup_put_folio, unpin over arrays), the slow path's batch
 * follow helper, and GUP-fast, the lockless walk with IRQs disabled.
 *
 * GUP-fast (lockless_pages_from_mm and its per-PTE / PMD-leaf checks) is
 * at the end of the file.
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
    pg_count_pins(m, true, 1);
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
        pg_count_pins(m, false, (uint64_t)refs);
        if (folio_is_large(m, head)) {
            int32_t old = pg_fetch_add(&h->pincount, -refs);
            PG_BUG_ON(m, old < refs, "unpin of %d from folio %llu with pincount %d",
                      refs, (unsigned long long)head, old);
        } else if (!pg_mutant(m, PG_MUT_UNPIN_NO_BIAS)) {
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

/* ------------------------------------------------------------------------
 * GUP-fast
 */

/* mirrors folio_is_longterm_pinnable() (6.5): not in ZONE_MOVABLE */
static bool longterm_pinnable(pg_machine *m, uint64_t head)
{
    if (pg_load_relaxed(&m->frames[head].flags) & PG_F_ZERO)
        return true;
    return m->frames[head].zone != PG_ZONE_MOVABLE;
}

/* mirrors try_grab_folio() (6.5; try_grab_folio_fast from 6.11): refs on
 * the folio containing pfn, or -1 (nothing taken) */
static int grab_folio_fast(pg_machine *m, uint64_t pfn, int refs, uint32_t flags)
{
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    if (!(flags & (PG_FOLL_GET | PG_FOLL_PIN)))
        return -1;
    if ((flags & PG_FOLL_PIN) && (pg_load_relaxed(&h->flags) & PG_F_ZERO))
        return 0; /* the zero page is never counted */
    /* A pin of a small folio takes its whole GUP_PIN_COUNTING_BIAS in the
     * one checked add: try_get_folio() refuses a count that is not
     * positive, and the add refuses to pass INT32_MAX, so repeated pins
     * fail cleanly (the slow path then says -ENOMEM) instead of wrapping
     * the count negative (BUGS #10). */
    int add = refs;
    if ((flags & PG_FOLL_PIN) && !folio_is_large(m, head))
        add = refs * PG_GUP_PIN_COUNTING_BIAS;
    if (pg_folio_try_get(m, pfn, add) < 0)
        return -1; /* refcount zero (being freed) or no headroom */
    if (pg_frame_head(m, pfn) != head) { /* split meanwhile: not modelled */
        pg_folio_put_internal(m, head, add);
        return -1;
    }
    if (!(flags & PG_FOLL_PIN))
        return 0;
    if ((flags & PG_FOLL_LONGTERM) && !longterm_pinnable(m, head)) {
        pg_folio_put_internal(m, head, add); /* the slow path migrates it */
        return -1;
    }
    if (folio_is_large(m, head))
        pg_fetch_add(&h->pincount, refs);
    pg_smp_mb(); /* the pin is visible before the PTE re-check */
    pg_count_pins(m, true, (uint64_t)refs);
    return 0;
}

/* folio_set_referenced(), skipping the atomic when the bit is already set */
static inline void mark_referenced(pg_machine *m, uint64_t head)
{
    if (!(pg_load_relaxed(&m->frames[head].flags) & PG_F_REFERENCED))
        pg_fetch_or(&m->frames[head].flags, PG_F_REFERENCED);
}

static void ungrab(pg_machine *m, uint64_t pfn, int refs, uint32_t flags)
{
    put_folio(m, pfn, refs, (flags & PG_FOLL_PIN) != 0);
}

/* mirrors page_is_secretmem() / folio_is_secretmem(): an order-0 folio
 * whose mapping is secretmem's.  6.5's version only looked at folios on
 * the LRU (PG_GUPF_SECRETMEM_LRU), the shortcut 65291dcfcf89 removed. */
static bool is_secretmem(pg_machine *m, int cpu, uint64_t head, uint32_t policy)
{
    struct pg_frame *h = &m->frames[head];
    if (pg_load_relaxed(&h->order) > 0)
        return false;
    if ((policy & PG_GUPF_SECRETMEM_LRU) && !(pg_load_acquire(&h->flags) & PG_F_LRU))
        return false;
    uint64_t mapping = pg_load_acquire(&h->mapping);
    PG_STRESS_WINDOW(m);
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
static bool fast_pin_allowed(pg_machine *m, int cpu, uint64_t head, uint32_t flags)
{
    const uint32_t all = PG_FOLL_PIN | PG_FOLL_LONGTERM | PG_FOLL_WRITE;
    if ((flags & all) != all)
        return true;
    uint32_t fflags = pg_load_acquire(&m->frames[head].flags);
    if (PG_WARN_ON(m, fflags & PG_F_SLAB, "GUP-fast found slab folio %llu",
                   (unsigned long long)head))
        return false;
    if (fflags & PG_F_HUGETLB)
        return true; /* no dirty tracking */
    PG_BUG_ON(m, !pg_cpu_irqs_off(m, cpu), "folio_fast_pin_allowed with IRQs on");
    /* READ_ONCE: truncation may clear it under us; read it exactly once */
    uint64_t mapping = pg_load_acquire(&m->frames[head].mapping);
    PG_YIELD(m, cpu, "fast_mapping_read");
    PG_STRESS_WINDOW(m);
    if (!mapping)
        return pg_mutant(m, PG_MUT_NULL_MAPPING_OK);
    if (mapping & PG_MAPPING_FLAGS)
        return (mapping & PG_MAPPING_ANON) != 0; /* anon and KSM */
    struct pg_as *a = pg_as_lookup_rcu(m, cpu, mapping >> 2);
    return a && (pg_load_acquire(&a->kind) & PG_AS_SHMEM);
}

static bool whitelist_ok(pg_machine *m, int cpu, uint64_t head, uint32_t flags,
                         uint32_t policy)
{
    if (!(policy & PG_GUPF_WHITELIST))
        return true;
    bool ok = fast_pin_allowed(m, cpu, head, flags);
    return pg_mutant(m, PG_MUT_WHITELIST_INVERTED) ? !ok : ok;
}

/* mirrors gup_must_unshare(NULL, flags, page): the fast path has no VMA */
static bool fast_must_unshare(pg_machine *m, uint64_t pfn, uint64_t head, uint32_t flags)
{
    if ((flags & (PG_FOLL_PIN | PG_FOLL_WRITE)) != PG_FOLL_PIN)
        return false;
    if (pg_mutant(m, PG_MUT_FAST_NO_UNSHARE))
        return false;
    uint64_t mapping = pg_load_acquire(&m->frames[head].mapping);
    if ((mapping & PG_MAPPING_FLAGS) != PG_MAPPING_ANON)
        return (flags & PG_FOLL_LONGTERM) != 0; /* no VMA: let the slow path see */
    pg_smp_mb(); /* pairs with the sharing side's barrier */
    return !anon_exclusive(m, pfn, head);
}

struct fast_walk {
    pg_machine *m;
    int cpu;
    struct pg_mm *mm;
    uint32_t flags, policy;
    uint64_t *out;
    int64_t nr;
};

/* One PTE (mirrors the body of gup_pte_range(), 6.5 order).  true = taken. */
static bool fast_pte(struct fast_walk *fw, uint64_t addr, const struct pg_walk *w)
{
    pg_machine *m = fw->m;
    uint64_t pte = w->pte;
    uint32_t flags = fw->flags;
    if (pte & PG_PTE_PROTNONE)
        return false; /* NUMA hinting and PROT_NONE: the slow path decides */
    if (!(pte & PG_PTE_PRESENT) || !(pte & PG_PTE_USER) ||
        ((flags & PG_FOLL_WRITE) && !(pte & PG_PTE_WRITE)))
        return false; /* pte_access_permitted() */
    if (pte & PG_PTE_SPECIAL)
        return false;
    uint64_t pfn = pg_pte_pfn(pte);
    if (PG_BUG_ON(m, pfn >= m->nr_frames, "GUP-fast: PTE at %#llx maps pfn %llu",
                  (unsigned long long)addr, (unsigned long long)pfn))
        return false;
    PG_YIELD(m, fw->cpu, "fast_pte_read");
    PG_STRESS_WINDOW(m);
    if (grab_folio_fast(m, pfn, 1, flags) < 0)
        return false;
    uint64_t head = pg_frame_head(m, pfn);
    PG_YIELD(m, fw->cpu, "fast_grabbed");
    if (!pg_mutant(m, PG_MUT_FAST_SECRETMEM) && is_secretmem(m, fw->cpu, head, fw->policy))
        goto drop;
    if (pg_mutant(m, PG_MUT_WHITELIST_BEFORE_RECHECK) &&
        !whitelist_ok(m, fw->cpu, head, flags, fw->policy))
        goto drop;
    PG_YIELD(m, fw->cpu, "fast_before_recheck");
    /* the PMD (THP collapse, table freeing) or the PTE changed: back off */
    if (!pg_mutant(m, PG_MUT_NO_PMD_RECHECK) && pg_load_acquire(w->pmd_slot) != w->pmd)
        goto drop;
    if (!pg_mutant(m, PG_MUT_NO_PTE_RECHECK) && pg_load_acquire(w->pte_slot) != pte)
        goto drop;
    PG_YIELD(m, fw->cpu, "fast_rechecked");
    if (!pg_mutant(m, PG_MUT_WHITELIST_BEFORE_RECHECK) &&
        !whitelist_ok(m, fw->cpu, head, flags, fw->policy))
        goto drop;
    if (!(pte & PG_PTE_WRITE) && fast_must_unshare(m, pfn, head, flags))
        goto drop;
    mark_referenced(m, head);
    fw->out[fw->nr++] = pfn;
    return true;
drop:
    ungrab(m, pfn, 1, flags);
    return false;
}

/* A 2 MiB PMD leaf (mirrors gup_huge_pmd(), 6.5 order): every subpage from
 * addr to end in one grab.  Returns pages taken (0 = stop). */
static int64_t fast_pmd_leaf(struct fast_walk *fw, uint64_t addr, uint64_t end,
                             const struct pg_walk *w)
{
    pg_machine *m = fw->m;
    uint64_t pmd = w->pmd;
    uint32_t flags = fw->flags;
    if ((pmd & PG_PTE_PROTNONE) || !(pmd & PG_PTE_PRESENT) || !(pmd & PG_PTE_USER) ||
        ((flags & PG_FOLL_WRITE) && !(pmd & PG_PTE_WRITE)) || (pmd & PG_PTE_SPECIAL))
        return 0;
    uint64_t pmd_end = (addr & ~(PG_PMD_SIZE - 1)) + PG_PMD_SIZE;
    if (end > pmd_end)
        end = pmd_end;
    int refs = (int)((end - addr) >> PG_PAGE_SHIFT);
    uint64_t pfn = pg_pte_pfn(pmd) + ((addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1));
    if (PG_BUG_ON(m, pfn + (uint64_t)refs > m->nr_frames, "GUP-fast: PMD maps past memory"))
        return 0;
    PG_YIELD(m, fw->cpu, "fast_pte_read");
    PG_STRESS_WINDOW(m);
    if (grab_folio_fast(m, pfn, refs, flags) < 0)
        return 0;
    uint64_t head = pg_frame_head(m, pfn);
    PG_YIELD(m, fw->cpu, "fast_before_recheck");
    if (!(pg_mutant(m, PG_MUT_NO_PMD_RECHECK) || pg_mutant(m, PG_MUT_NO_PTE_RECHECK)) &&
        pg_load_acquire(w->pmd_slot) != pmd)
        goto drop;
    if (!whitelist_ok(m, fw->cpu, head, flags, fw->policy))
        goto drop;
    if (!(pmd & PG_PTE_WRITE) && fast_must_unshare(m, pfn, head, flags))
        goto drop;
    mark_referenced(m, head);
    for (int i = 0; i < refs; i++)
        fw->out[fw->nr++] = pfn + (uint64_t)i;
    return refs;
drop:
    ungrab(m, pfn, refs, flags);
    return 0;
}

/* mirrors lockless_pages_from_mm() (6.5) */
int64_t pg_gup_fast(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                    int64_t nr, uint32_t flags, uint32_t policy, uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu) || nr < 0 || (nr > 0 && !out) || (start & (PG_PAGE_SIZE - 1)) ||
        start >= PG_VA_LIMIT || (uint64_t)nr > (PG_VA_LIMIT - start) >> PG_PAGE_SHIFT ||
        ((flags & PG_FOLL_GET) && (flags & PG_FOLL_PIN)))
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    uint32_t seq = 0;
    bool check_seq = (flags & PG_FOLL_PIN) && !pg_mutant(m, PG_MUT_NO_WP_SEQ);
    if (check_seq) {
        seq = pg_load_acquire(&mm->wp_seq);
        if (seq & 1)
            return 0; /* fork is write-protecting right now */
    }
    PG_YIELD(m, cpu, "fast_wp_seq_read");
    /* walking current->mm: this CPU has it active (shootdowns reach us) */
    pg_mm_cpumask_set(m, mm, cpu);
    pg_local_irq_disable(m, cpu);
    struct fast_walk fw = {m, cpu, mm, flags, policy, out, 0};
    uint64_t end = start + ((uint64_t)nr << PG_PAGE_SHIFT);
    for (uint64_t addr = start; addr < end;) {
        struct pg_walk w;
        int level = pg_walk_lockless_ex(m, cpu, mm, addr, &w);
        if (level <= 0)
            break;
        if (level == PG_LEVEL_PMD) {
            int64_t got = fast_pmd_leaf(&fw, addr, end, &w);
            if (!got)
                break;
            addr += (uint64_t)got << PG_PAGE_SHIFT;
            continue;
        }
        if (!w.pmd_slot || !fast_pte(&fw, addr, &w))
            break;
        addr += PG_PAGE_SIZE;
        /* the rest of this PTE table without walking down again (what
         * gup_pte_range() does): each entry read once, the table checked
         * live after every read */
        bool stop = false;
        while (addr < end && (addr & (PG_PMD_SIZE - 1))) {
            w.pte_slot++;
            w.pte = pg_load_acquire(w.pte_slot);
            PG_YIELD(m, cpu, "walk_entry_read");
            PG_STRESS_WINDOW(m);
            if (PG_BUG_ON(m, pg_load_acquire(&w.table->magic) != PG_TABLE_MAGIC_LIVE,
                          "cpu %d: use-after-free of PTE table %u in GUP-fast at %#llx",
                          cpu, w.table->id, (unsigned long long)addr) ||
                w.pte == 0 || !fast_pte(&fw, addr, &w)) {
                stop = true;
                break;
            }
            addr += PG_PAGE_SIZE;
        }
        if (stop)
            break;
    }
    pg_local_irq_enable(m, cpu);
    PG_YIELD(m, cpu, "fast_wp_seq_recheck");
    if (check_seq && pg_load_acquire(&mm->wp_seq) != seq) {
        /* a fork overlapped: its copy may have shared what we pinned */
        for (int64_t i = 0; i < fw.nr; i++)
            ungrab(m, out[i], 1, flags);
        return 0;
    }
    return fw.nr;
}
