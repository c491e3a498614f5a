/*
 * mm/huge_memory.c - anonymous transparent huge pages in the page tables:
 * splitting a PMD leaf into a PTE table (mm/huge_memory.c's
 * __split_huge_pmd) and collapsing a PTE table into a PMD leaf
 * (mm/khugepaged.c's collapse_huge_page).  The folio split is in
 * mm/frames.c; the decisions around both (which VMA may hold THPs, when to
 * split, when to collapse) are Python's (pygup/kernel/thp.py).
 *
 * Counting convention (shared with mm/memory.c and hugetlb): a PMD leaf is
 * one mapping of its folio, counted on the head page's mapcount, holding one
 * folio reference; a PTE leaf is one mapping of its page with one folio
 * reference.
 */
#include "internal.h"
#include "lib/report.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/frames.h"
#include "mm/pgtable.h"

static bool is_anon_thp(pg_machine *m, uint64_t head)
{
    struct pg_frame *h = &m->frames[head];
    return pg_load_relaxed(&h->order) == PG_PMD_ORDER &&
           !(pg_load_acquire(&h->flags) & (PG_F_HUGETLB | PG_F_FREE)) &&
           (pg_load_acquire(&h->mapping) & PG_MAPPING_FLAGS) == PG_MAPPING_ANON;
}

/* ---- __split_huge_pmd ------------------------------------------------------- */

int pg_split_huge_pmd(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY; /* the flush would wait on ourselves */
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    uint64_t haddr = addr & ~(PG_PMD_SIZE - 1);
    struct pg_table *pmd_table;
    int err, rc = 0;
    _Atomic uint64_t *slot =
        pg_walk_to_level(m, mm, haddr, PG_LEVEL_PMD, false, &pmd_table, &err);
    uint64_t pmd = slot ? pg_load_acquire(slot) : 0;
    if (!slot || !pg_is_leaf(pmd, PG_LEVEL_PMD)) {
        rc = slot || err == 0 || err == -PG_EEXIST ? 0 : err;
        goto out;
    }
    uint64_t pfn = pg_pte_pfn(pmd);
    if (PG_BUG_ON(m, pfn + PG_PMD_NR > m->nr_frames, "PMD leaf %#llx maps past memory",
                  (unsigned long long)pmd)) {
        rc = -PG_EFAULT;
        goto out;
    }
    if (!pg_pte_maps_frame(pmd) || !is_anon_thp(m, pg_frame_head(m, pfn))) {
        rc = -PG_EINVAL; /* hugetlb PMDs never split; swap-like PMDs are not modelled */
        goto out;
    }
    /* the table first: its allocation can fail, and then nothing changed
     * (the kernel has one deposited beside every anon THP for this) */
    struct pg_table *t = pg_table_alloc(m, PG_LEVEL_PTE, mmid);
    if (!t) {
        rc = -PG_ENOMEM;
        goto out;
    }
    /* pmdp_invalidate(): no CPU may keep using the huge translation while
     * the PTEs are built; walkers see none and fault (and wait for the mm)
     * or, for GUP-fast, stop */
    pmd = pg_xchg(slot, 0);
    pg_flush_tlb_mm_range(m, cpu, mm, mmid, haddr, haddr + PG_PMD_SIZE, false);
    PG_YIELD(m, cpu, PG_W_SPLIT_PMD_CLEARED);
    uint64_t bits = pmd & ~((uint64_t)PG_PTE_PFN_MASK | PG_PTE_HUGE);
    for (uint64_t i = 0; i < PG_PMD_NR; i++)
        pg_store_relaxed(&t->e[i], ((pfn + i) << PG_PAGE_SHIFT) | bits);
    t->nr_used = PG_PMD_NR;
    /* the PMD mapping becomes 512 PTE mappings: one reference and one
     * mapcount each (the PMD's own move to page 0) */
    uint64_t head = pg_frame_head(m, pfn);
    pg_folio_try_get(m, head, PG_PMD_NR - 1);
    for (uint64_t i = 1; i < PG_PMD_NR; i++)
        pg_mapcount_add_internal(m, head + i, 1);
    /* pmd_populate() after smp_wmb(): a walker that reads the new entry
     * reads filled PTEs */
    pg_store_release(slot, pg_table_entry(t));
    rc = 1;
out:
    pg_spin_unlock(&mm->lock);
    return rc;
}

/* ---- collapse_huge_page ----------------------------------------------------- */

/* the old page behind a PTE that collapse drops, or PG_NIL for none / zero */
static uint64_t collapse_old_pfn(uint64_t pte)
{
    if (pte == 0 || ((pte & PG_PTE_SPECIAL) && pg_pte_pfn(pte) == PG_ZERO_PFN))
        return PG_NIL;
    return pg_pte_pfn(pte);
}

/* hpage_collapse_scan_pmd()'s per-PTE checks: -PG_EINVAL if the table
 * holds something a collapse cannot take; *writable if any PTE is */
static int collapse_scan(pg_machine *m, struct pg_table *t, bool *writable)
{
    *writable = false;
    for (int i = 0; i < PG_PTRS_PER_TABLE; i++) {
        uint64_t e = pg_load_acquire(&t->e[i]);
        if (e == 0)
            continue; /* pte_none: counts against max_ptes_none only */
        if (!pg_pte_maps_frame(e))
            return -PG_EINVAL; /* swap-like */
        if (e & PG_PTE_SPECIAL) {
            if (pg_pte_pfn(e) == PG_ZERO_PFN)
                continue; /* is_zero_pfn: like none */
            return -PG_EINVAL; /* vm_normal_page() == NULL */
        }
        uint64_t pfn = pg_pte_pfn(e);
        if (pfn >= m->nr_frames)
            return -PG_EINVAL;
        uint64_t head = pg_frame_head(m, pfn);
        if ((pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_FLAGS) != PG_MAPPING_ANON ||
            (pg_load_acquire(&m->frames[head].flags) & PG_F_HUGETLB))
            return -PG_EINVAL; /* SCAN_PAGE_ANON */
        if (e & PG_PTE_WRITE)
            *writable = true;
    }
    return 0;
}

/* is_refcount_suitable() for every folio the table maps, and no pin:
 * each folio holds exactly one reference per mapping */
static bool collapse_refs_suitable(pg_machine *m, struct pg_table *t)
{
    uint64_t last = PG_NIL;
    for (int i = 0; i < PG_PTRS_PER_TABLE; i++) {
        uint64_t pfn = collapse_old_pfn(pg_load_acquire(&t->e[i]));
        if (pfn == PG_NIL)
            continue;
        uint64_t head = pg_frame_head(m, pfn);
        if (head == last)
            continue;
        last = head;
        struct pg_frame *h = &m->frames[head];
        uint64_t nr = (uint64_t)1 << pg_load_relaxed(&h->order);
        int64_t maps = 0;
        for (uint64_t j = 0; j < nr; j++)
            maps += pg_load_acquire(&m->frames[head + j].mapcount);
        if (folio_maybe_dma_pinned(m, head) || pg_load_acquire(&h->refcount) != maps)
            return false;
    }
    return true;
}

int pg_collapse_pmd(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr,
                    uint64_t new_pfn, uint64_t pmd_bits)
{
    if (!pg_cpu_ok(m, cpu) || (addr & (PG_PMD_SIZE - 1)) || (new_pfn & (PG_PMD_NR - 1)) ||
        new_pfn + PG_PMD_NR > m->nr_frames ||
        (pmd_bits & ((uint64_t)PG_PTE_PFN_MASK | PG_PTE_UNMODELLED_BITS | PG_PTE_SPECIAL)) ||
        !(pmd_bits & PG_PTE_PRESENT))
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    struct pg_frame *nh = &m->frames[new_pfn];
    if (pg_frame_head(m, new_pfn) != new_pfn || !is_anon_thp(m, new_pfn) ||
        pg_load_acquire(&nh->refcount) != 1 || folio_maybe_dma_pinned(m, new_pfn))
        return -PG_EINVAL; /* not a fresh anon THP of the caller's */
    for (uint64_t i = 0; i < PG_PMD_NR; i++)
        if (pg_load_relaxed(&m->frames[new_pfn + i].mapcount) != 0)
            return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    int rc, err;
    struct pg_table *pmd_table;
    _Atomic uint64_t *slot =
        pg_walk_to_level(m, mm, addr, PG_LEVEL_PMD, false, &pmd_table, &err);
    uint64_t pmd = slot ? pg_load_acquire(slot) : 0;
    if (!slot || pmd == 0 || pg_is_leaf(pmd, PG_LEVEL_PMD)) {
        rc = err < 0 && err != -PG_EEXIST ? err : -PG_EINVAL; /* SCAN_PMD_NULL / _MAPPED */
        goto out;
    }
    struct pg_table *t = pg_child_table(m, cpu, pmd, PG_LEVEL_PTE, mmid);
    if (!t) {
        rc = -PG_EFAULT;
        goto out;
    }
    bool writable;
    rc = collapse_scan(m, t, &writable);
    if (rc == 0 && !writable)
        rc = -PG_EINVAL; /* SCAN_PAGE_RO */
    if (rc < 0)
        goto out;
    /* pmdp_collapse_flush(): from here no new walker reaches the table,
     * and no TLB keeps a translation through it */
    pg_xchg(slot, 0);
    pg_flush_tlb_mm_range(m, cpu, mm, mmid, addr, addr + PG_PMD_SIZE, false);
    /* tlb_remove_table_sync_one() (2ba99c5e0881): a GUP-fast that read the
     * old PMD is still walking with IRQs off; wait for it to finish, so
     * that its reference (if any) shows in the check below */
    if (!pg_mutant(m, PG_MUT_COLLAPSE_NO_SYNC))
        pg_ipi_sync_internal(m, cpu);
    PG_YIELD(m, cpu, PG_W_COLLAPSE_PMD_CLEARED);
    /* __collapse_huge_page_isolate(): a page with a reference nobody maps
     * (a pin, a GET, a grab in flight) cannot be copied away from */
    if (!collapse_refs_suitable(m, t)) {
        pg_store_release(slot, pmd); /* pmd_populate(): the table goes back */
        rc = -PG_EAGAIN;
        goto out;
    }
    PG_YIELD(m, cpu, PG_W_COLLAPSE_ISOLATED);
    /* __collapse_huge_page_copy(): the data moves to the new folio */
    for (int i = 0; i < PG_PTRS_PER_TABLE; i++) {
        uint64_t old = collapse_old_pfn(pg_load_acquire(&t->e[i]));
        uint64_t v = old == PG_NIL ? 0 : pg_load_acquire(&m->frames[old].content);
        pg_store_relaxed(&m->frames[new_pfn + (uint64_t)i].content, v);
        pg_fetch_or(&m->frames[new_pfn + (uint64_t)i].flags, (uint32_t)PG_F_ANON_EXCLUSIVE);
    }
    pg_mapcount_add_internal(m, new_pfn, 1); /* the caller's reference is the PMD's */
    /* set_pmd_at() after smp_wmb(): a walker that reads the leaf reads the copy */
    pg_store_release(slot, (new_pfn << PG_PAGE_SHIFT) | pmd_bits | PG_PTE_HUGE);
    /* the old pages lose this mapping; the old table goes by the table-free
     * rules (IPI sync or RCU): a walker that still holds it reads it intact
     * until then.  (The kernel deposits it for a later split instead; pygup
     * allocates a new one at split time.) */
    uint64_t olds[PG_PTRS_PER_TABLE];
    int n = 0;
    for (int i = 0; i < PG_PTRS_PER_TABLE; i++) {
        uint64_t old = collapse_old_pfn(pg_load_acquire(&t->e[i]));
        if (old != PG_NIL)
            olds[n++] = old;
    }
    t->rcu.next = NULL;
    pg_tlb_remove_tables(m, cpu, t, 1);
    for (int i = 0; i < n; i++) {
        pg_mapcount_add_internal(m, olds[i], -1);
        pg_folio_put_internal(m, olds[i], 1);
    }
    rc = 0;
out:
    pg_spin_unlock(&mm->lock);
    return rc;
}
